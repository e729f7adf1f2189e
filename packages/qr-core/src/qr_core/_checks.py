"""Checks of logits shared by temperature strategies and token selection."""

from __future__ import annotations

from typing import Any

from qr_core._array import Backend
from qr_core._errors import QRCoreError
from qr_core._sync import is_sync_free

__all__ = ["check_logits", "check_row_max"]


def check_logits(xp: Backend, logits: Any, *, ndim: int, error: type[QRCoreError]) -> None:
    """Reject logits of the wrong rank, a non-floating dtype, or an empty shape.

    Args:
        xp: The backend of ``logits``.
        logits: The array to check.
        ndim: 1 for ``(vocab,)``, 2 for ``(rows, vocab)``.
        error: The exception class to raise.
    """
    shape = tuple(logits.shape)
    if len(shape) != ndim:
        want = "(vocab,)" if ndim == 1 else "(rows, vocab)"
        msg = f"logits must have shape {want}; got shape {shape}"
        raise error(msg)
    if not xp.is_floating(logits):
        msg = (
            "logits must have a floating dtype (float16, bfloat16, float32, float64); "
            f"got {xp.dtype_name(logits)}"
        )
        raise error(msg)
    if 0 in shape:
        msg = f"logits must hold at least one row and one token; got shape {shape}"
        raise error(msg)


def check_row_max(xp: Backend, row_max: Any, *, error: type[QRCoreError]) -> None:
    """Reject NaN, +inf and rows with no finite logit, judged from each row's maximum.

    A row's maximum is NaN when the row holds a NaN, so one ``(rows,)`` array
    answers all three questions with a single host transfer. Skipped in sync-free
    mode (`qr_core.sync_free`), where no device value is read on the host.
    """
    if is_sync_free():
        return
    problems = {
        "contains NaN": xp.isnan(row_max),
        "contains +inf (logits must be finite, or -inf for banned tokens)": row_max == float("inf"),
        "has no finite entry (every logit is -inf)": row_max == float("-inf"),
    }
    host = xp.to_host_list(xp.stack([mask.any() for mask in problems.values()]))
    for (what, mask), is_bad in zip(problems.items(), host, strict=True):
        if is_bad:
            row = xp.to_host_list(mask).index(True)
            msg = f"logits row {row} {what}"
            raise error(msg)

"""Per-row selection parameters: checking, converting and reporting bad values.

Scalars and ``(rows,)`` arrays (numpy or torch) of temperature, top-k, top-p,
min-p and u become ``(rows,)`` arrays on the logits' device; an out-of-range
value raises an error naming the parameter, the row and what is allowed.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from qr_core._array import Backend, backend_for, host_view, is_torch_tensor
from qr_core._errors import TokenSelectionError

__all__ = [
    "RowParams",
    "bad_values",
    "check_kind",
    "host_param",
    "raise_bad_value",
    "row_param",
    "scalar",
]


@dataclass(frozen=True, slots=True)
class RowParams:
    """Per-row parameters as ``(rows,)`` arrays on the logits' device."""

    temperature: Any
    top_k: Any
    top_p: Any
    min_p: Any
    u: Any

    def take(self, xp: Backend, mask: Any) -> RowParams:
        return RowParams(
            xp.take_rows(self.temperature, mask),
            xp.take_rows(self.top_k, mask),
            xp.take_rows(self.top_p, mask),
            xp.take_rows(self.min_p, mask),
            None if self.u is None else xp.take_rows(self.u, mask),
        )


def scalar(name: str, value: object, *, integer: bool) -> float | int:
    """Check a Python scalar parameter of ``TokenSelector.select``."""
    if isinstance(value, bool) or not isinstance(
        value, numbers.Integral if integer else numbers.Real
    ):
        kind = "an integer" if integer else "a real number"
        msg = f"{name} must be {kind}; got {value!r} ({type(value).__name__})"
        raise TokenSelectionError(msg)
    return int(value) if integer else float(value)  # type: ignore[call-overload]


def check_kind(xp: Backend, name: str, arr: Any, *, integer: bool) -> None:
    """Reject a parameter array of the wrong kind of number, naming its dtype."""
    if not (xp.is_integer(arr) if integer else xp.is_real(arr)):
        kind = "integer" if integer else "real"
        msg = f"{name} must hold {kind} numbers; got dtype {xp.dtype_name(arr)}"
        raise TokenSelectionError(msg)


def host_param(name: str, value: object, *, integer: bool) -> object:
    """A CPU tensor parameter as a numpy view, its kind checked first (torch's dtype named)."""
    if is_torch_tensor(value):
        check_kind(backend_for(value), name, value, integer=integer)
    return host_view(value)


def row_param(xp: Backend, name: str, value: object, rows: int, *, integer: bool) -> Any:
    """Turn a scalar or a ``(rows,)`` array into a ``(rows,)`` array on the logits' device."""
    dtype = xp.int_dtype if integer else xp.compute_dtype
    if isinstance(value, np.ndarray) or is_torch_tensor(value):
        if is_torch_tensor(value) and xp.kind != "torch":
            msg = f"{name} is a torch tensor but the logits are a numpy array; pass one kind"
            raise TokenSelectionError(msg)
        arr: Any = value
        check_kind(xp if xp.owns(arr) else backend_for(arr), name, arr, integer=integer)
        shape = tuple(arr.shape)
        if shape not in ((), (rows,)):
            msg = f"{name} must be a scalar or have shape ({rows},); got shape {shape}"
            raise TokenSelectionError(msg)
        converted = xp.asarray(arr, dtype)
        if shape == ():
            return xp.full((rows,), 0, dtype) + converted
        return converted
    return xp.full((rows,), scalar(name, value, integer=integer), dtype)


def bad_values(params: RowParams) -> dict[str, Any]:
    """Per-parameter masks of rows with out-of-range values (NaN fails every test).

    u is checked on its own, when it arrives (``PreparedSelection.select``).
    """
    t, p, mp = params.temperature, params.top_p, params.min_p
    return {
        # T <= 0 (even -inf) is the documented greedy switch; NaN and +inf are not.
        "temperature": ~(t < float("inf")),
        "top_k": params.top_k < -1,
        "top_p": ~((p > 0) & (p <= 1)),
        "min_p": ~((mp >= 0) & (mp < 1)),
    }


_ALLOWED = {
    "temperature": "a finite number (<= 0 selects greedily)",
    "top_k": "an integer >= 1, or 0 or -1 to disable top-k",
    "top_p": "in (0, 1] (1 disables top-p)",
    "min_p": "in [0, 1) (0 disables min-p)",
    "u": "in the open interval (0, 1)",
}


def raise_bad_value(xp: Backend, name: str, mask: Any, values: Any) -> None:
    row = xp.to_host_list(mask).index(True)
    value = xp.to_host_list(values)[row]
    msg = f"{name} must be {_ALLOWED[name]}; got {value!r} at row {row}"
    raise TokenSelectionError(msg)

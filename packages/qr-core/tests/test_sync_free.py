"""Sync-free mode: the same tokens, and at most one host read per selection.

Runs on CPU tensors: inside ``qr_core.sync_free`` they take the accelerator's
code path (no numpy views), and a TorchDispatchMode counts the operations that
would make the host wait for an accelerator (``.item()``, ``nonzero``, boolean
indexing). The CPU cannot show the wait itself; the operations are what cause it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from qr_core import EDTTemperatureStrategy, TokenSelector, is_sync_free, sync_free

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

aten = torch.ops.aten
_SYNCING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default}


class SyncCounter(TorchDispatchMode):
    """Counts operations that read device values on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _SYNCING or (
            func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default)
            and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
        ):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _rows(rows: int, vocab: int, scale: float) -> Any:
    gen = torch.Generator().manual_seed(rows * vocab)
    return torch.randn(rows, vocab, generator=gen) * scale


def test_the_mode_is_per_thread_and_nests() -> None:
    assert not is_sync_free()
    with sync_free():
        with sync_free():
            assert is_sync_free()
        assert is_sync_free()
    assert not is_sync_free()


@pytest.mark.parametrize(("vocab", "scale"), [(300, 3.0), (5000, 6.0), (40000, 8.0), (5000, 0.5)])
def test_same_tokens_and_one_host_read(vocab: int, scale: float) -> None:
    rows = 12
    logits = _rows(rows, vocab, scale)
    logits[3, :10] = float("-inf")  # banned tokens
    selector = TokenSelector()
    top_k = torch.tensor([0, 5, 0, 50] * 3)
    top_p = torch.tensor([1.0, 0.9, 0.5, 1.0] * 3, dtype=torch.float64)
    min_p = torch.tensor([0.0, 0.0, 0.1, 0.0] * 3, dtype=torch.float64)
    u = torch.rand(rows, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    temperature = EDTTemperatureStrategy().compute_batch(logits).temperature
    want = selector.select_batch(
        logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, u=u
    )
    counter = SyncCounter()
    with sync_free(), counter:
        t = EDTTemperatureStrategy().compute_batch(logits).temperature
        prepared = selector.prepare_batch(
            logits,
            temperature=t,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            validate=False,
            host_top_k=top_k.numpy(),
        )
        before_select = len(counter.ops)
        got = prepared.select(u)
    assert before_select == 0, counter.ops
    # One read per round of heads: flat rows (scale 0.5) may go round once more.
    assert len(counter.ops) <= (1 if scale > 1 else 2), counter.ops
    for name in ("token_id", "token_rank", "num_candidates"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert torch.allclose(got.token_prob, want.token_prob)


def test_the_head_from_host_values() -> None:
    selector = TokenSelector(head_size=64)
    assert selector._head_from_host(np.array([0, 5])) == 64
    assert selector._head_from_host(np.array([3, 5])) == 5
    assert selector._head_from_host(np.array([100, 0])) == 100
    assert selector._head_from_host(np.array([], dtype=np.int64)) == 1

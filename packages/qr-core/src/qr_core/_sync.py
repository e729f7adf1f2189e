"""Sync-free mode: batch math that reads no device value on the host but one flag per step.

On an accelerator every value read on the host (``.tolist()``, ``.item()``,
``bool(mask.any())``) waits for all work queued before it, the forward pass
that made the logits included. Inside `sync_free` (per thread) qr_core
therefore:

* skips the logits checks (NaN, +inf, rows without a finite entry), which a
  caller in this mode must do elsewhere or accept (vLLM's logits);
* runs work it would skip when no row needs it (the tail mass, the count of
  finite logits) for every row instead of asking the device first;
* takes the torch path for small CPU tensors too (no numpy views), so a test
  on the CPU runs exactly the operations an accelerator would.

The selection still reads one flag per step: whether some row needs a wider
head (see ``TokenSelector.prepare_batch``; its head is sized from host values
with ``host_top_k``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["is_sync_free", "sync_free"]

_STATE = threading.local()


@contextmanager
def sync_free() -> Iterator[None]:
    """Run the enclosed qr_core calls of this thread in sync-free mode (nests)."""
    depth = getattr(_STATE, "depth", 0)
    _STATE.depth = depth + 1
    try:
        yield
    finally:
        _STATE.depth = depth


def is_sync_free() -> bool:
    """Whether this thread is inside `sync_free`."""
    return getattr(_STATE, "depth", 0) > 0

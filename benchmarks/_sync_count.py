"""Counting the host syncs of a block of code on the calling thread, by call site.

On CUDA torch's sync debug mode reports every synchronizing call as a warning;
on the CPU (where nothing waits) a TorchDispatchMode counts the operations that
would sync on an accelerator (``.item()``, ``nonzero``, boolean indexing) and
wrappers count ``Tensor.tolist`` / ``.numpy`` / ``.cpu`` of tensors that are not
host buffers.
"""

from __future__ import annotations

import threading
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SyncCounter"]

_aten = torch.ops.aten
_SYNCING = {_aten._local_scalar_dense.default, _aten.nonzero.default, _aten.masked_select.default}
_INDEXING = (_aten.index.Tensor, _aten.index_put_.default, _aten.index_put.default)


def _site(filename: str | None = None, lineno: int | None = None) -> str:
    if filename is not None:
        return f"{Path(filename).name}:{lineno}"
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "/qr_vllm/" in frame.filename or "/qr_core/" in frame.filename:
            return f"{Path(frame.filename).name}:{frame.lineno}"
    return "elsewhere"


class _Dispatch(TorchDispatchMode):
    def __init__(self, hit: Any) -> None:
        super().__init__()
        self._hit = hit

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _SYNCING or (
            func in _INDEXING
            and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ())
        ):
            self._hit(str(func))
        return func(*args, **(kwargs or {}))


class SyncCounter:
    """``with SyncCounter(cuda, host=[...]) as c:`` then ``c.total`` and ``c.sites``."""

    def __init__(self, cuda: bool, host: list[torch.Tensor]) -> None:
        self.cuda = cuda
        self.sites: Counter[str] = Counter()
        self._host = {t.untyped_storage().data_ptr() for t in host}
        self._thread = threading.get_ident()
        self._undo: list[Any] = []

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def _hit(self, what: str) -> None:
        if threading.get_ident() == self._thread:
            self.sites[f"{what} @ {_site()}"] += 1

    def __enter__(self) -> SyncCounter:
        if self.cuda:
            caught = warnings.catch_warnings(record=True)
            log = caught.__enter__()
            warnings.simplefilter("always")
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")

            def stop() -> None:
                torch.cuda.set_sync_debug_mode(previous)
                caught.__exit__(None, None, None)
                for w in log:
                    if "synchronizing CUDA operation" in str(w.message):
                        self.sites[f"sync @ {_site(w.filename, w.lineno)}"] += 1

            self._undo.append(stop)
            return self
        for name in ("tolist", "numpy", "cpu"):
            original = getattr(torch.Tensor, name)

            def wrapper(t: Any, *a: Any, _o: Any = original, _n: str = name, **k: Any) -> Any:
                if t.untyped_storage().data_ptr() not in self._host:
                    self._hit(f"Tensor.{_n}")
                return _o(t, *a, **k)

            setattr(torch.Tensor, name, wrapper)
            self._undo.append(lambda n=name, o=original: setattr(torch.Tensor, n, o))
        mode = _Dispatch(self._hit)
        mode.__enter__()
        self._undo.append(lambda: mode.__exit__(None, None, None))
        return self

    def __exit__(self, *exc: object) -> None:
        while self._undo:
            self._undo.pop()()

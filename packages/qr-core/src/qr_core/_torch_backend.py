"""The array shim's torch backend: `Backend`'s operations on torch tensors, on their device.

torch is imported when the first backend is built, i.e. when a tensor is
first handed to qr_core, never at module import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qr_core._array import Backend, is_torch_tensor
from qr_core._compiled import compiled

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """The same operations on torch tensors, on the tensors' own device."""

    kind = "torch"

    def __init__(self, device: Any) -> None:
        super().__init__()
        import torch  # noqa: PLC0415 - optional and heavy: imported only once a tensor arrives

        self._torch = torch
        self.device = device
        self._on_accelerator: bool = device.type != "cpu"
        # MPS has no float64; everywhere else the small per-row work runs in double.
        self.compute_dtype = torch.float32 if device.type == "mps" else torch.float64
        self.int_dtype = torch.int64

    def is_floating(self, x: Any) -> bool:
        return bool(x.dtype.is_floating_point)

    def is_integer(self, x: Any) -> bool:
        t = self._torch
        return not (x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == t.bool)

    def owns(self, value: object) -> bool:
        return is_torch_tensor(value)

    def asarray(self, value: Any, dtype: Any) -> Any:
        t = self._torch
        if isinstance(value, np.ndarray):
            value = t.from_numpy(value)
        return t.as_tensor(value, dtype=self._dtype(dtype), device=self.device)

    def _dtype(self, dtype: Any) -> Any:
        # Callers may name numpy dtypes; map the ones qr_core uses.
        t = self._torch
        mapping = {np.float64: t.float64, np.float32: t.float32, np.int64: t.int64, bool: t.bool}
        return mapping.get(dtype, dtype)

    def arange(self, n: int) -> Any:
        return self._torch.arange(n, dtype=self._torch.int64, device=self.device)

    def full(self, shape: tuple[int, ...], fill: float | int | bool, dtype: Any) -> Any:
        return self._torch.full(shape, fill, dtype=self._dtype(dtype), device=self.device)

    def to_compute(self, x: Any) -> Any:
        return x.to(self.compute_dtype)

    def to_int(self, x: Any) -> Any:
        return x.to(self._torch.int64)

    def cast(self, x: Any, dtype: Any) -> Any:
        return x.to(self._dtype(dtype))

    @property
    def on_accelerator(self) -> bool:
        return self._on_accelerator

    def work_dtype(self, x: Any) -> Any:
        t = self._torch
        return t.float64 if x.dtype == t.float64 else t.float32

    def _alloc(self, n: int, dtype: Any) -> Any:
        return self._torch.empty(n, dtype=dtype, device=self.device)

    def _scratch_context(self) -> object:
        # A tensor made under torch.inference_mode (as vLLM runs its steps) cannot
        # be updated in place outside it, so each mode keeps its own buffers.
        return bool(self._torch.is_inference_mode_enabled())

    def contiguous_rows(self, x: Any) -> Any:
        return x if x.stride(-1) == 1 else x.contiguous()

    def chunk_view(self, x: Any, groups: int, chunks: int) -> Any:
        s0, s1 = x.stride()
        return x.as_strided((x.shape[0], groups, chunks), (s0, chunks * s1, s1))

    def broadcast_rows(self, x: Any, rows: int) -> Any:
        return x.expand(rows, x.shape[-1])

    def shift_into(self, out: Any, x: Any, shift: Any, lowest: float) -> Any:
        self._torch.sub(x, shift[:, None], out=out)
        return out.clamp_(min=lowest)

    def exp_into(self, out: Any, x: Any) -> Any:
        return self._torch.exp(x, out=out)

    def mul_(self, x: Any, y: Any) -> Any:
        return x.mul_(y)

    def exp_scaled_into(self, out: Any, x: Any, shift: Any, scale: Any) -> Any:
        t = self._torch
        t.sub(x, shift[:, None], out=out)
        out.mul_(scale[:, None])
        out.exp_()
        return out

    def bucket_mass(
        self, x: Any, top: Any, inv_t: Any, width: float, buckets: int
    ) -> tuple[Any, Any]:
        fused = compiled("buckets", x, top, inv_t, width, buckets)
        if fused is not None:
            return fused  # type: ignore[no-any-return]
        t = self._torch
        d = (top[:, None] - x) * inv_t[:, None]
        z = t.exp(-d)
        bucket = d.mul_(1.0 / width).clamp_(max=buckets - 1).to(t.int64)
        mass = t.zeros((x.shape[0], buckets), dtype=z.dtype, device=self.device)
        return bucket, mass.scatter_add_(1, bucket, z)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self._torch.where(cond, a, b)

    def exp(self, x: Any) -> Any:
        return self._torch.exp(x)

    def log(self, x: Any) -> Any:
        return self._torch.log(x)

    def isnan(self, x: Any) -> Any:
        return self._torch.isnan(x)

    def minimum(self, a: Any, b: Any) -> Any:
        return self._torch.minimum(a, b)

    def maximum(self, a: Any, b: Any) -> Any:
        return self._torch.maximum(a, b)

    def clip(self, x: Any, lo: float, hi: float) -> Any:
        return self._torch.clamp(x, lo, hi)

    def amax(self, x: Any, axis: int) -> Any:
        return self._torch.amax(x, dim=axis)

    def amin(self, x: Any, axis: int) -> Any:
        return self._torch.amin(x, dim=axis)

    def sum(self, x: Any, axis: int) -> Any:
        return self._torch.sum(x, dim=axis)

    def count(self, mask: Any) -> Any:
        return self._torch.count_nonzero(mask, dim=-1)

    def any(self, mask: Any) -> bool:
        return bool(mask.any().item())

    def row_indices(self, mask: Any) -> Any:
        return self._torch.nonzero(mask).reshape(-1)

    def cumsum(self, x: Any) -> Any:
        return self._torch.cumsum(x, dim=-1)

    def concat(self, parts: list[Any]) -> Any:
        return self._torch.cat(parts, dim=-1)

    def stack(self, parts: list[Any]) -> Any:
        return self._torch.stack(parts)

    def gather(self, x: Any, index: Any) -> Any:
        return self._torch.gather(x, -1, index)

    def scatter_(self, x: Any, index: Any, src: Any) -> None:
        x.scatter_(-1, index, src)

    def topk_unordered(self, x: Any, k: int) -> tuple[Any, Any]:
        n = x.shape[-1]
        if k >= n:
            idx = self.arange(n).expand(x.shape[0], n)
            return x, idx
        values, idx = self._torch.topk(x, k, dim=-1, largest=True, sorted=False)
        return values, idx

    def argsort_desc_stable(self, x: Any) -> Any:
        return self._torch.sort(x, dim=-1, descending=True, stable=True).indices

    def argsort_asc(self, x: Any) -> Any:
        return self._torch.sort(x, dim=-1).indices

"""The batch plan on the logits' device: index tensors, step buffers, one-hot forcing.

`DevicePlan` holds the tensors of a `BatchPlan` (built with it, once per batch
change); `StepBuffers` holds the step's reusable device buffers, grown only when
the batch grows. Needs torch; vLLM only for runner V1's penalties
(`qr_vllm._penalties`, imported when a plan has any).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qr_vllm._plan import BatchPlan

if TYPE_CHECKING:
    from qr_vllm._penalties import DevicePenalties

__all__ = ["DevicePlan", "StepBuffers", "as_tensor", "force"]

_NEG_INF = float("-inf")


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """A plan's tensors on the logits' device.

    Attributes:
        plan: The host plan.
        rows: The sampled rows; None when they are every row.
        top_k, top_p, min_p: Per sampled row (None when no row is sampled).
        temperature_positions: Per temperature group, its positions (None: all rows).
        forced_rows, forced_tokens: Failed rows forced to their stop tokens.
        penalties: Runner V1's penalty tensors, None when no row has any.
    """

    plan: BatchPlan
    rows: torch.Tensor | None
    top_k: torch.Tensor | None
    top_p: torch.Tensor | None
    min_p: torch.Tensor | None
    temperature_positions: tuple[torch.Tensor | None, ...]
    forced_rows: torch.Tensor
    forced_tokens: torch.Tensor
    penalties: DevicePenalties | None

    @classmethod
    def build(cls, plan: BatchPlan, vocab: int, device: torch.device) -> DevicePlan:
        """Put ``plan`` on ``device`` (logits ``vocab`` wide)."""
        filters = plan.filters
        penalties = None
        if plan.penalties is not None:
            from qr_vllm._penalties import DevicePenalties  # noqa: PLC0415 -- needs vLLM

            penalties = DevicePenalties.build(plan.penalties, vocab, device)
        return cls(
            plan=plan,
            rows=None if plan.every_row else _index(plan.sampled.rows, device),
            top_k=None if filters is None else _index(filters.top_k, device),
            top_p=None if filters is None else torch.as_tensor(filters.top_p, device=device),
            min_p=None if filters is None else torch.as_tensor(filters.min_p, device=device),
            temperature_positions=tuple(
                None if g.positions is None else _index(g.positions, device)
                for g in plan.temperature
            ),
            forced_rows=_index(plan.forced_rows, device),
            forced_tokens=_index(plan.forced_tokens, device),
            penalties=penalties,
        )


class StepBuffers:
    """The step's device buffers: sampled rows' logits, temperatures, entropies, u.

    Args:
        device: The logits' device.
        pin_memory: Use a pinned host buffer for u (ignored on the CPU).
    """

    def __init__(self, device: torch.device, pin_memory: bool) -> None:
        self.device = device
        self.pin_memory = pin_memory and device.type != "cpu"
        self._capacity = 0
        self._sub: torch.Tensor | None = None
        self.temperature: torch.Tensor | None = None
        self.entropy: torch.Tensor | None = None
        self._u_host: torch.Tensor | None = None
        self._u_dev: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        """Rows the buffers hold now."""
        return self._capacity

    def ensure(self, rows: int, logits: torch.Tensor) -> None:
        """Make room for ``rows`` rows like ``logits`` (doubling, at least 8)."""
        vocab = int(logits.shape[1])
        if (
            rows <= self._capacity
            and self._sub is not None
            and self._sub.shape[1] == vocab
            and self._sub.dtype == logits.dtype
        ):
            return
        capacity = max(rows, 2 * self._capacity, 8)
        device = logits.device
        self._sub = torch.empty((capacity, vocab), dtype=logits.dtype, device=device)
        self.temperature = torch.empty(capacity, dtype=torch.float32, device=device)
        self.entropy = torch.empty(capacity, dtype=torch.float32, device=device)
        if device.type != "cpu":
            self._u_host = torch.empty(capacity, dtype=torch.float64, pin_memory=self.pin_memory)
            self._u_dev = torch.empty(capacity, dtype=torch.float64, device=device)
        self._capacity = capacity

    def gather(self, logits: torch.Tensor, dev: DevicePlan) -> torch.Tensor:
        """The sampled rows' logits (``logits`` itself when every row is sampled)."""
        if dev.rows is None:
            return logits
        assert self._sub is not None
        out = self._sub[: dev.plan.sampled.size]
        torch.index_select(logits, 0, dev.rows, out=out)
        return out

    def u_to_device(self, u: np.ndarray, rows: int) -> torch.Tensor:
        """u on the device (pinned, non-blocking copy where the device is not the CPU)."""
        if self.device.type == "cpu":
            return torch.from_numpy(np.ascontiguousarray(u, dtype=np.float64))
        assert self._u_host is not None
        assert self._u_dev is not None
        host = self._u_host[:rows]
        host.numpy()[:] = u
        dev = self._u_dev[:rows]
        dev.copy_(host, non_blocking=self.pin_memory)
        return dev


def force(logits: torch.Tensor, rows: torch.Tensor | None, token_ids: torch.Tensor) -> None:
    """Make ``rows`` of ``logits`` (None: every row) one-hot on ``token_ids``, in place."""
    if rows is None:
        logits.fill_(_NEG_INF)
        logits.scatter_(1, token_ids.view(-1, 1).to(torch.int64), 0.0)
    else:
        logits.index_fill_(0, rows, _NEG_INF)
        zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
        logits.index_put_((rows, token_ids.to(torch.int64)), zero)


def as_tensor(value: Any, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a tensor on ``like``'s device (itself when it is one already)."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(value, device=like.device)


def _index(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.int64, device=device)

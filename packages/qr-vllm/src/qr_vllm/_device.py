"""The batch plan on the logits' device: index tensors, step buffers, one-hot forcing.

`DevicePlan` holds the tensors of a `BatchPlan` (built with it, once per batch
change); `StepBuffers` holds the step's reusable device buffers, reserved at
start-up for the engine's largest batch and grown only if a batch is larger;
`HostRing` carries each step's record statistics to the host without a host sync;
`logits_event` marks when a step's logits exist on their device. Needs torch;
vLLM only for runner V1's penalties
(`qr_vllm._penalties`, imported when a plan has any).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from qr_core import EDTTemperatureStrategy, TokenSelector, sync_free

from qr_vllm._fetch import ALREADY_READY, ReadyEvent
from qr_vllm._plan import BatchPlan

if TYPE_CHECKING:
    from qr_vllm._penalties import DevicePenalties

__all__ = [
    "DevicePlan",
    "HostRing",
    "StepBuffers",
    "as_tensor",
    "force",
    "logits_event",
    "step_stats",
    "warm_up",
]

#: Columns of the statistics a step sends to the host for its records.
STAT_COLUMNS = 6

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
        filters_off: Every sampled row has top-k, top-p and min-p off (host knowledge).
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
    filters_off: bool = False

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
            filters_off=filters is not None
            and bool((filters.top_k <= 0).all())
            and bool((filters.top_p >= 1).all())
            and bool((filters.min_p <= 0).all()),
        )


class StepBuffers:
    """The step's device buffers: sampled rows' logits, temperatures, entropies, u.

    Args:
        device: The logits' device.
        pin_memory: Use a pinned host buffer for u (ignored on the CPU).
    """

    def __init__(
        self, device: torch.device, pin_memory: bool, *, device_path: bool = False
    ) -> None:
        self.device = device
        #: The accelerator's code path (also forced on the CPU by tests: see `BatchSampler`).
        self.device_path = device_path or device.type != "cpu"
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
        if self.device_path:
            self._u_host = torch.empty(capacity, dtype=torch.float64, pin_memory=self.pin_memory)
            self._u_dev = torch.empty(capacity, dtype=torch.float64, device=device)
        self._capacity = capacity

    def nbytes(self) -> int:
        """Bytes the buffers hold now (device and host)."""
        parts = (self._sub, self.temperature, self.entropy, self._u_host, self._u_dev)
        return sum(int(t.numel() * t.element_size()) for t in parts if t is not None)

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
        if not self.device_path:
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


def logits_event(logits: torch.Tensor) -> ReadyEvent:
    """An event that fires when ``logits`` exist: recorded on the current CUDA stream.

    Logits on the CPU exist when they are handed over: an already-complete stand-in.
    """
    if logits.device.type == "cuda":
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(torch.cuda.current_stream(logits.device))
        return event
    return ALREADY_READY


class _Pending:
    """One ring slot's statistics on their way to the host."""

    __slots__ = ("_event", "_free", "_host")

    def __init__(self, host: torch.Tensor, event: ReadyEvent, free: threading.Event) -> None:
        self._host, self._event, self._free = host, event, free

    def wait(self) -> np.ndarray:
        self._event.synchronize()
        out: np.ndarray = self._host.numpy().copy()
        self._free.set()
        return out


class HostRing:
    """Pinned host slots for the steps' record statistics, each with an event.

    A step copies its ``(rows, 6)`` statistics into the next slot without blocking
    and records the slot's event; the records thread waits for the event, copies
    the slot out and frees it. The engine thread waits only when every slot is
    still unread (the records thread far behind), never for the device.

    Args:
        device: The logits' device.
        pin_memory: Pin the slots (only where the device is an accelerator).
        slots: How many steps may be in flight.
    """

    def __init__(self, device: torch.device, pin_memory: bool, slots: int = 16) -> None:
        self.device = device
        self.pin_memory = pin_memory and device.type != "cpu"
        self._slots = slots
        self._next = 0
        self._rows = 0
        self._host: list[torch.Tensor] = []
        self._free = [threading.Event() for _ in range(slots)]
        for free in self._free:
            free.set()

    def reserve(self, rows: int) -> None:
        """Make every slot hold ``rows`` rows (allocates only when they grow)."""
        if rows <= self._rows:
            return
        rows = max(rows, 8)
        self._host = [
            torch.empty((rows, STAT_COLUMNS), dtype=torch.float64, pin_memory=self.pin_memory)
            for _ in range(self._slots)
        ]
        self._rows = rows

    def nbytes(self) -> int:
        """Bytes the slots hold."""
        return sum(int(t.numel() * t.element_size()) for t in self._host)

    def put(self, stats: torch.Tensor) -> _Pending:
        """Start the copy of ``stats`` (``(rows, 6)`` float64 on the device) to the host."""
        rows = int(stats.shape[0])
        self.reserve(rows)
        index = self._next
        self._next = (index + 1) % self._slots
        free = self._free[index]
        free.wait()
        free.clear()
        host = self._host[index][:rows]
        host.copy_(stats, non_blocking=self.pin_memory)
        return _Pending(host, logits_event(stats), free)


def step_stats(
    columns: list[torch.Tensor], out: np.ndarray, ring: HostRing | None
) -> _Pending | None:
    """The step's statistics (token id, rank, probability, candidates, temperature,
    entropy: one ``(rows,)`` tensor each) into ``out``, a ``(rows, 6)`` float64 view.

    On the CPU (``ring`` None) each column is written into ``out`` now, from a zero-copy
    view. On an accelerator they are stacked as float64 and their copy to the host is
    started through ``ring``; the returned pending copy fills ``out`` later.
    """
    if ring is None:
        for j, column in enumerate(columns):
            host = column if column.dtype != torch.bfloat16 else column.float()
            out[:, j] = host.numpy()
        return None
    return ring.put(torch.stack([c.to(torch.float64) for c in columns], dim=1))


def warm_up(selector: TokenSelector, probe: torch.Tensor) -> int:
    """Run one step's math on ``probe`` (zero logits) so qr_core's scratch exists now.

    Takes EDT's path (entropy and finite counts) and the widest first head, in
    sync-free mode. Returns the bytes the device's allocator gained (0 where it
    does not say).
    """
    device = probe.device
    before = _allocated(device)
    rows = int(probe.shape[0])
    with sync_free():
        result = EDTTemperatureStrategy(1.0, 0.0, 1.0, 1.0).compute_batch(probe)
        ones = torch.ones(rows, dtype=torch.float64, device=device)
        prepared = selector.prepare_batch(
            probe,
            temperature=as_tensor(result.temperature, probe),
            top_k=torch.zeros(rows, dtype=torch.int64, device=device),
            top_p=ones,
            min_p=ones * 0,
            validate=False,
            host_top_k=np.zeros(rows, dtype=np.int64),
        )
        prepared.select(ones * 0.5)
    return max(_allocated(device) - before, 0)


def _allocated(device: torch.device) -> int:
    """Bytes torch's allocator holds on ``device`` (0 where it does not say)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return 0


#: vLLM samples greedily below this temperature, qr-core only at T <= 0: lower ones go
#: to qr-core as 0 (see ARCHITECTURE.md, design note "Records identity and digests").
VLLM_GREEDY_BELOW = 1e-5


def greedy(temperature: torch.Tensor) -> torch.Tensor:
    """vLLM's greedy rule on qr-core's switch: T below `VLLM_GREEDY_BELOW` becomes 0."""
    return temperature.masked_fill(temperature < VLLM_GREEDY_BELOW, 0.0)

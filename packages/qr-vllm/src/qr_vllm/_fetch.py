"""The step's entropy: one fetch per source on its fetch thread, and the bytes turned into u.

The step hands each source's fetch to that source's single worker thread (one
`Fetcher` per named source, so the fetches of one step are in flight together)
and waits until the worker holds it, then does everything that does not need u
while the sources answer (see ARCHITECTURE.md, design note "One fetch per step,
just in time"). The
worker first waits for the step's logits-ready event, so on an accelerator the
bytes are requested only once the device has finished the logits, never while
the forward pass still runs (design note "Just-in-time on the device"); the
engine thread never waits for that event.
Local sources that never wait on I/O (`INLINE_SOURCES`) are read inline on
the engine thread when the logits are on the CPU (they exist already): a
hand-off to another thread costs more than their read (design note "Compiled
path").
`amplify` turns the block into one u (and its z-score and byte mean) per
sampled row, one amplifier call per group of the plan.

A step's block larger than the source's ``max_request_bytes`` is fetched as
several reads that each fit (`fetch_within`), so that the sum of the batch's
requests never fails or degrades any of them (see ARCHITECTURE.md, design note
"A step's fetch fits the source").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from qr_entropy import (
    EntropyBlock,
    EntropySource,
    EntropyUnavailableError,
    HealthStatus,
    Provenance,
)

from qr_vllm._plan import BatchPlan, EntropyPlan

__all__ = [
    "ALREADY_READY",
    "FETCH_START_WAIT_S",
    "INLINE_SOURCES",
    "Fetched",
    "Fetcher",
    "ReadyEvent",
    "SourceFetchers",
    "amplify",
    "amplify_sources",
    "apply_replay",
    "fetch_within",
    "reads_inline",
]

#: Sources read on the engine thread: local, fast, never waiting on I/O.
INLINE_SOURCES = frozenset({"system", "mock_uniform"})


def reads_inline(source: EntropySource) -> bool:
    """True when ``source`` (or, behind a fallback, its primary) is one of `INLINE_SOURCES`."""
    primary = getattr(source, "primary", source)
    return isinstance(primary, EntropySource) and primary.name in INLINE_SOURCES


#: How long a step waits for the fetch thread to pick its request up (see `Fetcher.start`).
FETCH_START_WAIT_S = 0.05


class ReadyEvent(Protocol):
    """What marks the moment the step's logits exist (a ``torch.cuda.Event`` on CUDA)."""

    def synchronize(self) -> None:
        """Return once the logits exist."""


class _AlreadyReady:
    """The CPU's stand-in: logits handed to the processor on the CPU exist already."""

    def synchronize(self) -> None:
        return None


#: The event of logits that exist when they are handed over (the CPU, tests).
ALREADY_READY: ReadyEvent = _AlreadyReady()


@dataclass(frozen=True, slots=True)
class Fetched:
    """A step's block with the monotonic times the fetch thread saw the logits and asked."""

    block: EntropyBlock
    logits_ready_ns: int
    requested_ns: int


class Fetcher:
    """Fetch each step's block on one worker thread, started on the first step.

    Args:
        source: The entropy source (already wrapped in its fallback, if any).
        name: The source's name among the engine's named sources (in the thread's name).
    """

    def __init__(self, source: EntropySource, name: str = "default") -> None:
        self.source = source
        self.name = name
        #: Read on the calling thread (see `reads_inline`), never handed to the worker.
        self.inline = reads_inline(source)
        self._executor: ThreadPoolExecutor | None = None
        self._started = threading.Event()

    def start(self, plan: EntropyPlan, ready: ReadyEvent = ALREADY_READY) -> Future[Fetched]:
        """Start the fetch of ``plan``'s block once ``ready`` fires; returns once the
        worker holds it (or soon).

        An inline source with logits that exist already (``ALREADY_READY``) is read
        here and now, and the returned future is done.
        """
        if self.inline and ready is ALREADY_READY:
            done: Future[Fetched] = Future()
            try:
                done.set_result(self._run(plan.fetch_rows, plan.fetch_count, ready))
            except Exception as exc:
                done.set_exception(exc)
            return done
        if self._executor is None:
            # One worker, started on the first step (never at import: vLLM builds the
            # processor in several processes): requests stay one at a time, in step order.
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"qr-entropy-{self.name}"
            )
        started = self._started
        started.clear()
        pending = self._executor.submit(self._run, plan.fetch_rows, plan.fetch_count, ready)
        # Wait until the worker holds the fetch: the step's own work (many small array
        # operations) never gives up the GIL by itself, so a worker merely woken up would
        # only get to run, and the fetch only overlap with nothing, once this thread
        # blocks on the result. Once the worker is inside the source, it waits in a
        # system call or on the network without the GIL. The wait is bounded: a worker
        # that does not show up in time costs overlap, never correctness.
        started.wait(FETCH_START_WAIT_S)
        return pending

    def _run(self, rows: int, count: int, ready: ReadyEvent) -> Fetched:
        self._started.set()
        # Just in time on the device's clock: the logits exist before the bytes are asked for.
        ready.synchronize()
        logits_ready = time.monotonic_ns()
        requested = time.monotonic_ns()
        block = fetch_within(self.source, rows, count)
        return Fetched(block, logits_ready, requested)

    def close(self) -> None:
        """Stop the worker (after the fetch in flight, if any); a later `start` starts one."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def fetch_within(source: EntropySource, rows: int, count: int) -> EntropyBlock:
    """A (rows, count) block read in as few fetches as fit ``source.max_request_bytes``.

    One read when the block fits. Otherwise whole rows per read when a row fits
    (a request's ``sample_count`` never exceeds the limit: the configuration
    refuses it), else equal stretches of the one-row block. The provenance is the
    most cautious of the parts: fallback when any part came from the fallback.
    """
    limit = max(1, int(source.max_request_bytes))
    if rows * count <= limit:
        return source.fetch_block(rows, count)
    parts: list[EntropyBlock] = []
    if count <= limit:
        per = limit // count
        for start in range(0, rows, per):
            parts.append(source.fetch_block(min(per, rows - start), count))
        data = np.concatenate([part.data for part in parts], axis=0)
    else:
        flat = rows * count
        for start in range(0, flat, limit):
            parts.append(source.fetch_block(1, min(limit, flat - start)))
        data = np.concatenate([part.data.reshape(-1) for part in parts]).reshape(rows, count)
    data.flags.writeable = False
    return EntropyBlock(data=data, provenance=_merged(parts, whole_rows=count <= limit))


def _merged(parts: list[EntropyBlock], *, whole_rows: bool) -> Provenance:
    provs = [part.provenance for part in parts]
    fallback = next((p for p in provs if p.is_fallback), None)
    lead = fallback if fallback is not None else provs[0]
    if all(p.health == HealthStatus.OK for p in provs):
        health = HealthStatus.OK
    elif any(p.health == HealthStatus.FAILED for p in provs):
        health = HealthStatus.FAILED
    else:
        health = HealthStatus.NOT_TESTED
    return Provenance(
        source=lead.source,
        is_fallback=fallback is not None,
        generated_at_ns=min(p.generated_at_ns for p in provs),
        health=health,
        device_id=lead.device_id,
        fetch_latency_ns=sum(p.fetch_latency_ns for p in provs),
        fallback_reason=lead.fallback_reason,
        # Whole rows per part: each row keeps its own digest and its request's ids (the
        # records and an audit log name the same rows). A row cut across parts has no
        # digest here; the records digest its bytes themselves.
        row_digests=tuple(d for p in provs for d in p.row_digests) if whole_rows else (),
        sequence_id=provs[0].sequence_id,
        generation_timestamp_ns=provs[0].generation_timestamp_ns,
        row_sequence_ids=_per_row(parts, 0) if whole_rows else (),
        row_generation_timestamps_ns=_per_row(parts, 1) if whole_rows else (),
    )


def _per_row(parts: list[EntropyBlock], which: int) -> tuple[int, ...]:
    """Each row's (sequence id, generation time)[which] across the parts, in row order."""
    return tuple(
        part.provenance.row_source_ids(i)[which]
        for part in parts
        for i in range(int(part.data.shape[0]))
    )


def amplify(data: np.ndarray, plan: EntropyPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (u, z-score, byte mean) per sampled row from the step's block ``data``."""
    if plan.uniform:
        res = plan.groups[0].amplifier.amplify_batch(data)
        return res.u, res.z_score, res.sample_mean
    rows = sum(group.positions.size for group in plan.groups)
    u = np.empty(rows, dtype=np.float64)
    z = np.empty(rows, dtype=np.float64)
    mean = np.empty(rows, dtype=np.float64)
    flat = data.reshape(-1)
    for group in plan.groups:
        count = group.positions.size
        part = flat[group.byte_offset : group.byte_offset + count * group.row_bytes]
        res = group.amplifier.amplify_batch(part.reshape(count, group.row_bytes))
        u[group.positions] = res.u
        z[group.positions] = res.z_score
        mean[group.positions] = res.sample_mean
    return u, z, mean


class SourceFetchers:
    """One `Fetcher` per named source (``default``: the engine's own), started per step.

    Args:
        default: The engine's own source.
        named: The sources of ``QR_SOURCES`` by name.
    """

    def __init__(self, default: EntropySource, named: Mapping[str, EntropySource]) -> None:
        self._fetchers = {"default": Fetcher(default)}
        for name, source in named.items():
            self._fetchers[name] = Fetcher(source, name)

    def items(self) -> list[tuple[str, Fetcher]]:
        """The fetchers by source name (``default`` first)."""
        return list(self._fetchers.items())

    def start(self, plan: BatchPlan, ready: ReadyEvent) -> list[Future[Fetched]]:
        """Start every source's fetch of the step; all are in flight together."""
        pending = []
        for group in plan.sources:
            fetcher = self._fetchers.get(group.name)
            if fetcher is None:
                # Admission refuses unknown names; an engine configured apart from its
                # API server may still see one. The step fails, not the engine.
                raise EntropyUnavailableError(
                    f"qr_source={group.name!r} is not a source of this engine; known: "
                    f"{', '.join(self._fetchers)}"
                )
            pending.append(fetcher.start(group.entropy, ready))
        return pending

    def close(self) -> None:
        """Stop every fetch thread (after its fetch in flight, if any)."""
        for fetcher in self._fetchers.values():
            fetcher.close()


def amplify_sources(
    plan: BatchPlan, blocks: list[EntropyBlock]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (u, z-score, byte mean) per sampled row from each source's block."""
    if len(blocks) == 1:
        return amplify(blocks[0].data, plan.sources[0].entropy)
    rows = plan.sampled.size
    u = np.empty(rows, dtype=np.float64)
    z = np.empty(rows, dtype=np.float64)
    mean = np.empty(rows, dtype=np.float64)
    for group, block in zip(plan.sources, blocks, strict=True):
        u[group.positions], z[group.positions], mean[group.positions] = amplify(
            block.data, group.entropy
        )
    return u, z, mean


def apply_replay(u: np.ndarray, plan: BatchPlan, positions: np.ndarray | None) -> None:
    """Put the recorded u of replayed requests in place of the source's (`qr-vllm replay`).

    ``positions`` (runner V2) is each logits row's token index from vLLM's state;
    without it the request's own count is read without moving it.
    """
    states = plan.sampled.states
    for position in plan.replay:
        state = states[position]
        recorded = state.request.config.replay_u
        if positions is not None:
            index = int(positions[plan.sampled.rows[position]])
        else:
            index = state.peek_sequence_number()
        if index < len(recorded):
            u[position] = recorded[index]

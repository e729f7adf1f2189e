"""The fetch thread hand-off and the block's amplification, without torch or vLLM."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _requests import resolver, state
from qr_core import AmplifierRegistry
from qr_entropy import EntropySource, EntropyUnavailableError
from qr_vllm import _fetch
from qr_vllm._fetch import Fetcher, amplify
from qr_vllm._plan import AmplifierGroup, EntropyPlan, build_plan
from qr_vllm._slots import SlotTable


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("QR_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


class GatedSource(EntropySource):
    """os.urandom that waits for a gate (a device answering slowly) and records its calls."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[tuple[int, str]] = []
        self.down = False

    @property
    def name(self) -> str:
        return "gated"

    def get_random_bytes(self, n: int) -> bytes:
        self.calls.append((n, threading.current_thread().name))
        self.entered.set()
        assert self.gate.wait(60)
        if self.down:
            raise EntropyUnavailableError("device unplugged")
        return os.urandom(n)


def entropy_plan(rows: int, count: int) -> EntropyPlan:
    amp = AmplifierRegistry.build("zscore_mean")
    group = AmplifierGroup(amp, count, count, np.arange(rows, dtype=np.int64), 0)
    return EntropyPlan((group,), rows, count, uniform=True)


def test_one_fetch_of_the_plans_shape_on_one_named_worker() -> None:
    source = GatedSource()
    fetcher = Fetcher(source)
    block = fetcher.start(entropy_plan(3, 16)).result(timeout=60).block
    assert block.data.shape == (3, 16)
    fetcher.start(entropy_plan(2, 8)).result(timeout=60)
    assert [n for n, _ in source.calls] == [48, 16]
    threads = {name for _, name in source.calls}
    assert len(threads) == 1
    assert threads.pop().startswith("qr-entropy")
    fetcher.close()
    fetcher.close()  # idempotent
    # A closed fetcher starts a new worker on its next step.
    assert fetcher.start(entropy_plan(1, 4)).result(timeout=60).block.data.shape == (1, 4)
    fetcher.close()


def test_start_returns_once_the_worker_holds_the_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fetch, "FETCH_START_WAIT_S", 60.0)
    source = GatedSource()
    fetcher = Fetcher(source)
    fetcher.start(entropy_plan(1, 4)).result(timeout=60)  # the worker exists now
    source.entered.clear()
    source.gate.clear()
    pending = fetcher.start(entropy_plan(1, 4))
    # The step goes on with its own work only when the fetch is under way.
    assert source.entered.is_set()
    assert not pending.done()
    source.gate.set()
    assert pending.result(timeout=60).block.data.shape == (1, 4)
    fetcher.close()


def test_a_failed_fetch_reaches_the_step_as_its_error() -> None:
    source = GatedSource()
    source.down = True
    fetcher = Fetcher(source)
    with pytest.raises(EntropyUnavailableError, match="unplugged"):
        fetcher.start(entropy_plan(2, 4)).result(timeout=60)
    source.down = False
    assert fetcher.start(entropy_plan(2, 4)).result(timeout=60).block.data.shape == (2, 4)
    fetcher.close()


@pytest.mark.parametrize("name", ["system", "mock_uniform"])
def test_local_fast_sources_are_read_inline_on_the_calling_thread(name: str) -> None:
    from qr_entropy import EntropySourceRegistry, FallbackEntropySource

    source = EntropySourceRegistry.get(name)()
    for wrapped in (source, FallbackEntropySource(source, EntropySourceRegistry.get("system")())):
        fetcher = Fetcher(wrapped)
        assert fetcher.inline
        pending = fetcher.start(entropy_plan(3, 16))
        assert pending.done()  # read before start returned: no hand-off to a worker
        assert pending.result().block.data.shape == (3, 16)
        assert fetcher._executor is None
        fetcher.close()


def test_an_inline_read_that_fails_reaches_the_step_as_its_error() -> None:
    class DownSystem(GatedSource):
        @property
        def name(self) -> str:
            return "system"

    source = DownSystem()
    source.down = True
    fetcher = Fetcher(source)
    assert fetcher.inline
    pending = fetcher.start(entropy_plan(2, 4))
    assert [name for _, name in source.calls] == [threading.current_thread().name]
    with pytest.raises(EntropyUnavailableError, match="unplugged"):
        pending.result(timeout=60)


def test_sources_that_wait_on_io_keep_the_fetch_thread() -> None:
    assert not Fetcher(GatedSource()).inline


def test_uniform_block_is_amplified_row_by_row() -> None:
    plan = entropy_plan(4, 32)
    data = np.random.default_rng(1).integers(0, 256, (4, 32), dtype=np.uint8)
    u, z, mean = amplify(data, plan)
    amp = plan.groups[0].amplifier
    for i in range(4):
        one = amp.amplify(data[i].tobytes())
        assert (u[i], z[i], mean[i]) == pytest.approx((one.u, one.z_score, one.sample_mean))


def test_mixed_groups_read_their_own_bytes_of_one_flat_block() -> None:
    res = resolver()
    counts = [16, 64, 16, 8]
    slots = SlotTable()
    for i, c in enumerate(counts):
        slots.set_slot(i, state(res, sample_count=c))
    plan = build_plan(slots, 4, 100, None, with_penalties=False).entropy
    assert plan is not None
    v = plan.groups[0].amplifier.row_bytes(0)  # the amplifier's V bytes per row
    widths = [c + v for c in counts]
    data = np.random.default_rng(2).integers(0, 256, (1, sum(widths)), dtype=np.uint8)
    u, z, mean = amplify(data, plan)
    # The block is laid out group by group (rows 0 and 2, then row 1, then row 3), each
    # row its S bytes then its V bytes.
    flat = data.reshape(-1)
    a, b, c = 16 + v, 64 + v, 8 + v
    stretches = {
        0: flat[0:a],
        2: flat[a : 2 * a],
        1: flat[2 * a : 2 * a + b],
        3: flat[2 * a + b : 2 * a + b + c],
    }
    amp = plan.groups[0].amplifier
    for row, raw in stretches.items():
        one = amp.amplify(raw.tobytes())
        assert (u[row], z[row], mean[row]) == pytest.approx((one.u, one.z_score, one.sample_mean))


class GatedEvent:
    """A fake logits-ready event: fires when the test says so; notes who waited on it."""

    def __init__(self) -> None:
        self.fired = threading.Event()
        self.waiters: list[str] = []

    def synchronize(self) -> None:
        self.waiters.append(threading.current_thread().name)
        assert self.fired.wait(60)


def test_the_fetch_waits_on_the_fetch_thread_for_the_logits_event() -> None:
    source = GatedSource()
    fetcher = Fetcher(source)
    ready = GatedEvent()
    pending = fetcher.start(entropy_plan(2, 4), ready)
    # The engine thread got control back while the event has not fired: nothing asked yet.
    assert not source.calls
    assert not pending.done()
    fired_at = time.monotonic_ns()
    ready.fired.set()
    fetched = pending.result(timeout=60)
    assert [n for n, _ in source.calls] == [8]
    assert ready.waiters
    assert all(name.startswith("qr-entropy") for name in ready.waiters)
    assert fired_at <= fetched.logits_ready_ns <= fetched.requested_ns
    fetcher.close()

"""Metrics of a real processor on CPU tensors: counted where the records are made, by source."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from qr_entropy import EntropySource, EntropyUnavailableError  # noqa: E402
from qr_vllm import QRSamplerConfig  # noqa: E402
from qr_vllm._metrics_export import collector  # noqa: E402
from qr_vllm.processor import QRSamplerLogitsProcessor  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.vllm]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The endpoint's samples by (name, sorted labels), read over HTTP."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_processor_counts_tokens_steps_and_records(tmp_path: Path) -> None:
    port = free_port()
    config = QRSamplerConfig(
        entropy_source_type="mock_uniform",
        mock_seed=3,
        sample_count=64,
        records_path=tmp_path / "r.jsonl",
        metrics_port=port,
    )
    proc = QRSamplerLogitsProcessor(None, torch.device("cpu"), False, config=config)
    added = [(i, SamplingParams(max_tokens=8), [1, 2], []) for i in range(3)]
    proc.update_state(BatchUpdate(batch_size=3, removed=[], added=added, moved=[]))
    for _ in range(4):
        proc.apply(torch.randn(3, 200))
    assert proc.sampling_logger.sink is not None
    assert proc.sampling_logger.sink.flush()
    values = scrape(port)
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 12
    src = (("qr_source", "default"), ("source", "mock_uniform"))
    assert values[("qr_sampler_tokens_total", src)] == len(lines)
    assert values[("qr_sampler_records_written_total", ())] == len(lines)
    assert values[("qr_sampler_step_seconds_count", ())] == 4
    # randomized_pit (the default) reads 7 V bytes per token beside the 64 S bytes.
    assert values[("qr_sampler_entropy_bytes_total", src)] == 12 * (64 + 7)
    z = [json.loads(line)["z_score"] for line in lines]
    lifetime = (*src, ("window", "lifetime"))
    assert values[("qr_sampler_drift_tokens", lifetime)] == 12
    assert values[("qr_sampler_drift_z", lifetime)] == pytest.approx(sum(z) / 12**0.5, abs=1e-9)
    metrics = proc._metrics
    proc.close()
    assert metrics not in collector().live()


class Unplugged(EntropySource):
    """A source whose device is gone: every fetch fails."""

    @property
    def name(self) -> str:
        return "unplugged"

    def get_random_bytes(self, n: int) -> bytes:
        raise EntropyUnavailableError("device unplugged")


def test_every_series_is_counted_by_named_source(tmp_path: Path) -> None:
    port = free_port()
    config = QRSamplerConfig(
        entropy_source_type="system",
        sources={"control": {"entropy_source_type": "mock_uniform", "mock_seed": 3}},
        fallback_mode="error",
        sample_count=64,
        records_path=tmp_path / "r.jsonl",
        metrics_port=port,
    )
    proc = QRSamplerLogitsProcessor(None, torch.device("cpu"), False, config=config)
    arms: list[dict[str, Any]] = [{}, {"qr_source": "control"}, {"qr_source": "control"},
                                  {"qr_source": "nope"}]  # fmt: skip
    added = []
    for slot, extra in enumerate(arms):
        params = SamplingParams(max_tokens=8, extra_args={"qr_label": f"r{slot}", **extra})
        params._eos_token_id = 5
        added.append((slot, params, [1, 2], []))
    # "nope" names no source of this engine: the request fails at once (counted under the
    # engine's own source, whose settings its state then holds).
    proc.update_state(BatchUpdate(batch_size=4, removed=[], added=added, moved=[]))
    for _ in range(3):
        proc.apply(torch.randn(4, 200))
    # The control arm's device goes away: the step fails every request it samples.
    for name, fetcher in proc._sampler._fetchers.items():
        if name == "control":
            fetcher.source = Unplugged()
    for _ in range(2):
        proc.apply(torch.randn(4, 200))
    assert proc.sampling_logger.sink is not None
    assert proc.sampling_logger.sink.flush()
    values = scrape(port)
    metrics = proc._metrics
    proc.close()
    assert metrics not in collector().live()

    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert {r["qr_source"] for r in rows} == {"default", "control"}
    entropy = {"default": "system", "control": "mock_uniform"}  # each arm's configured source

    def get(name: str, qr_source: str, **more: str) -> float:
        labels = {"source": entropy[qr_source], "qr_source": qr_source, **more}
        return values[(name, tuple(sorted(labels.items())))]

    for arm in ("default", "control"):
        mine = [r for r in rows if r["qr_source"] == arm]
        ok = [r for r in mine if r["status"] == "ok"]
        failed = [r for r in mine if r["status"] == "failed"]
        assert ok
        assert failed
        assert {r["entropy_source"] for r in ok} == {entropy[arm]}
        assert get("qr_sampler_tokens_total", arm) == len(ok)
        assert get("qr_sampler_fallback_tokens_total", arm) == 0
        assert get("qr_sampler_failed_tokens_total", arm) == len(failed)
        requests = {r["request_serial"] for r in failed}
        assert get("qr_sampler_failed_requests_total", arm) == len(requests)
        nbytes = sum(r["s_bytes"] + r["v_bytes"] for r in ok)
        assert get("qr_sampler_entropy_bytes_total", arm) == nbytes
        # One fetch per named source per ok step.
        steps = {r["timestamp_ns"] for r in ok}
        assert get("qr_sampler_entropy_fetch_seconds_count", arm) == len(steps)
        z = [r["z_score"] for r in ok]
        assert get("qr_sampler_drift_tokens", arm, window="lifetime") == len(z)
        assert get("qr_sampler_drift_z", arm, window="lifetime") == pytest.approx(
            sum(z) / len(z) ** 0.5, abs=1e-9
        )
        for test in ("repetition_count", "adaptive_proportion"):
            assert get("qr_sampler_health_test_failures_total", arm, test=test) == 0
    # The default arm: the request that named no source, and the one drawing from system.
    assert get("qr_sampler_failed_requests_total", "default") == 2
    assert get("qr_sampler_failed_requests_total", "control") == 2
    assert get("qr_sampler_tokens_total", "default") == 3
    assert get("qr_sampler_tokens_total", "control") == 6
    # Each apply is one step, whatever sources it served (failed ones too): no source labels.
    assert values[("qr_sampler_step_seconds_count", ())] == 5
    assert not [key for key in values if key[0].startswith("qr_sampler_breaker")]


def test_metrics_off_by_default() -> None:
    proc = QRSamplerLogitsProcessor(
        None, torch.device("cpu"), False, config=QRSamplerConfig(entropy_source_type="system")
    )
    assert proc._metrics is None
    assert proc.sampling_logger.metrics is None
    proc.close()


def test_a_tensor_parallel_follower_builds_no_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    import qr_vllm.processor as processor_module

    class Group:  # what vLLM's tensor-parallel coordinator shows the processor
        rank_in_group = 1
        world_size = 2

    monkeypatch.setattr(processor_module, "_tensor_parallel_group", Group)
    proc = QRSamplerLogitsProcessor(
        None, torch.device("cpu"), False, config=QRSamplerConfig(metrics_port=free_port())
    )
    assert proc._metrics is None  # rank 0 alone samples from entropy, so it alone counts
    assert proc.sampling_logger.metrics is None
    proc.close()

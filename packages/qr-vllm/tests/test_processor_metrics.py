"""Metrics of a real processor on CPU tensors: counted where the records are made."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from qr_vllm import QRSamplerConfig  # noqa: E402
from qr_vllm._metrics_export import collector  # noqa: E402
from qr_vllm.processor import QRSamplerLogitsProcessor  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.vllm]


def test_processor_counts_tokens_steps_and_records(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
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
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 12
    src = (("source", "mock_uniform"),)
    assert values[("qr_sampler_tokens_total", src)] == len(lines)
    assert values[("qr_sampler_records_written_total", ())] == len(lines)
    assert values[("qr_sampler_step_seconds_count", src)] == 4
    assert values[("qr_sampler_entropy_bytes_total", src)] == 12 * 64
    z = [json.loads(line)["z_score"] for line in lines]
    lifetime = (("source", "mock_uniform"), ("window", "lifetime"))
    assert values[("qr_sampler_drift_tokens", lifetime)] == 12
    assert values[("qr_sampler_drift_z", lifetime)] == pytest.approx(sum(z) / 12**0.5, abs=1e-9)
    metrics = proc._metrics
    proc.close()
    assert metrics not in collector().live()


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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    proc = QRSamplerLogitsProcessor(
        None, torch.device("cpu"), False, config=QRSamplerConfig(metrics_port=port)
    )
    assert proc._metrics is None  # rank 0 alone samples from entropy, so it alone counts
    assert proc.sampling_logger.metrics is None
    proc.close()

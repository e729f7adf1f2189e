"""What a record holds beyond the token: its writer, its bytes' digest, honest health.

Processors on CPU tensors with vLLM's real types (no engine: the integration tests
run the same through real engines and a real audit log).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from qr_core._byte_sum import byte_sum_cdf  # noqa: E402
from qr_entropy import (  # noqa: E402
    EntropyBlock,
    EntropySource,
    FallbackEntropySource,
    SystemEntropySource,
    row_digest,
)
from qr_vllm import ConfigValidationError, QRSamplerConfig  # noqa: E402
from qr_vllm.processor import QRSamplerLogitsProcessor  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.vllm]

VOCAB = 300


class KeepingSource(SystemEntropySource):
    """os.urandom that keeps each block it served, to check the records' digests."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[EntropyBlock] = []

    def fetch_block(self, rows: int, n: int) -> EntropyBlock:
        block = super().fetch_block(rows, n)
        self.blocks.append(block)
        return block


class StuckSource(EntropySource):
    """A mock device stuck on one byte value; health-tested like a physical source."""

    health_tested = True

    @property
    def name(self) -> str:
        return "stuck"

    def get_random_bytes(self, n: int) -> bytes:
        return b"\x2a" * n


def make(
    path: Path | None, source: EntropySource | None = None, vllm_config: Any = None, **settings: Any
) -> QRSamplerLogitsProcessor:
    settings.setdefault("entropy_source_type", "system")
    settings.setdefault("sample_count", 64)
    if path is not None:
        settings.setdefault("records_path", path)
    config = QRSamplerConfig(**settings)
    return QRSamplerLogitsProcessor(
        vllm_config, torch.device("cpu"), False, config=config, source=source
    )


def add(proc: QRSamplerLogitsProcessor, count: int, **extra: Any) -> None:
    params = SamplingParams(max_tokens=8, extra_args=extra or None)
    params._eos_token_id = 5
    added = [(i, params, [1, 2, 3], []) for i in range(count)]
    proc.update_state(BatchUpdate(batch_size=count, removed=[], added=added, moved=[]))


def records_of(proc: QRSamplerLogitsProcessor, path: Path) -> list[dict[str, Any]]:
    assert proc.sampling_logger.sink is not None
    assert proc.sampling_logger.sink.flush()
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_record_names_its_writer_and_digests_exactly_its_row(tmp_path: Path) -> None:
    source = KeepingSource()
    path = tmp_path / "r.jsonl"
    proc = make(path, source=source)
    add(proc, 3)
    for _ in range(2):
        proc.apply(torch.randn(3, VOCAB))
    rows = records_of(proc, path)
    proc.close()
    assert len(rows) == 6
    assert {r["engine_id"] for r in rows} == {proc.engine.engine_id}
    assert all(r["records_schema"] == 2 and r["dp_rank"] is None for r in rows)
    # randomized_pit (the default): 64 S bytes and 7 V bytes per token, all digested.
    assert all((r["signal_amplifier"], r["s_bytes"], r["v_bytes"]) == ("randomized_pit", 64, 7)
               for r in rows)  # fmt: skip
    for step, block in enumerate(source.blocks):
        assert block.data.shape == (3, 71)
        for i in range(3):
            assert rows[3 * step + i]["entropy_digest"] == row_digest(block.data[i])
    assert all(r["entropy_sequence_id"] == 0 and r["entropy_generated_ns"] == 0 for r in rows)
    assert all(r["health"] == "not_tested" for r in rows)


def test_records_path_placeholders_keep_engines_apart_and_pool_cleanly(tmp_path: Path) -> None:
    pattern = tmp_path / "rec-{engine_id}-dp{dp_rank}.jsonl"
    dp = SimpleNamespace(
        parallel_config=SimpleNamespace(data_parallel_size=2, data_parallel_rank=1)
    )
    engines = [make(pattern), make(pattern), make(pattern, vllm_config=dp)]
    for proc in engines:
        add(proc, 2)
        proc.apply(torch.randn(2, VOCAB))
    files = sorted(tmp_path.glob("rec-*.jsonl"))
    assert len(files) == 3
    assert engines[2].engine.dp_rank == 1
    assert (tmp_path / f"rec-{engines[2].engine.engine_id}-dp1.jsonl").exists()
    assert (tmp_path / f"rec-{engines[0].engine.engine_id}-dp0.jsonl").exists()
    pooled = []
    for proc in engines:
        pooled += records_of(proc, Path(str(pattern).format(
            engine_id=proc.engine.engine_id, dp_rank=proc.engine.dp_rank or 0)))  # fmt: skip
        proc.close()
    # Every engine numbers its requests from 1; engine_id keeps them apart.
    assert [r["request_serial"] for r in pooled] == [1, 2] * 3
    keys = {(r["engine_id"], r["request_serial"], r["sequence_number"]) for r in pooled}
    assert len(keys) == 6
    assert [r["dp_rank"] for r in pooled] == [None, None, None, None, 1, 1]


def test_a_stuck_source_served_by_the_fallback_records_failed_health(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    proc = make(path, source=FallbackEntropySource(StuckSource(), SystemEntropySource()))
    add(proc, 2)
    proc.apply(torch.randn(2, VOCAB))
    rows = records_of(proc, path)
    proc.close()
    assert [(r["status"], r["is_fallback"], r["health"]) for r in rows] == [
        ("ok", True, "failed")
    ] * 2
    assert all(r["fallback_reason"].startswith("HealthTestFailure") for r in rows)
    assert all(r["entropy_source"] == "system" for r in rows)


def test_a_stuck_source_without_fallback_fails_the_requests_with_failed_health(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.jsonl"
    proc = make(path, source=StuckSource())
    add(proc, 2)
    proc.apply(torch.randn(2, VOCAB))
    proc.apply(torch.randn(2, VOCAB))  # the failed requests' rows, a step later
    rows = records_of(proc, path)
    proc.close()
    assert [(r["status"], r["health"]) for r in rows] == [("failed", "failed")] * 4
    assert all(r["error"].startswith("HealthTestFailure") for r in rows)


def test_temperatures_vllm_samples_greedily_are_greedy_here_too(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    proc = make(path)
    add(proc, 1, qr_fixed_temperature=5e-6, qr_top_k=0, qr_top_p=1.0)
    logits = torch.randn(1, VOCAB)
    original = logits.clone()
    proc.apply(logits)
    assert int(logits[0].argmax()) == int(original[0].argmax())
    rows = records_of(proc, path)
    proc.close()
    assert rows[0]["temperature"] == 0.0
    assert rows[0]["num_candidates"] == 1


def test_admission_refuses_rows_the_amplifier_cannot_fetch() -> None:
    config = QRSamplerConfig(max_request_bytes=1000, sample_count=100)
    QRSamplerLogitsProcessor._admission_resolver = None
    from qr_vllm._resolve import RequestResolver

    resolver = RequestResolver(config)
    with pytest.raises(ConfigValidationError, match=r"needs 1007 bytes per token"):
        resolver.resolve({"qr_sample_count": 1000})
    # zscore_mean reads no V bytes: the same count fits.
    resolver.resolve({"qr_sample_count": 1000, "qr_signal_amplifier_type": "zscore_mean"})


def test_the_default_sample_counts_cdf_table_is_built_at_start() -> None:
    byte_sum_cdf.cache_clear()
    proc = make(None, sample_count=20480)
    info = byte_sum_cdf.cache_info()
    assert info.currsize == 1
    byte_sum_cdf(20480)
    assert byte_sum_cdf.cache_info().hits == info.hits + 1
    proc.close()
    assert np.isfinite(byte_sum_cdf(20480).at(np.array([0], dtype=np.int64))).all()

"""Named sources (``QR_SOURCES``, ``qr_source``) in one processor, on CPU tensors.

The integration tests run the same through a real engine against real servers.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from qr_entropy import EntropyBlock, EntropySource  # noqa: E402
from qr_vllm import ConfigValidationError, QRSamplerConfig  # noqa: E402
from qr_vllm.processor import QRSamplerLogitsProcessor  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.vllm]

VOCAB = 300
SOURCES = {"qrng": {"entropy_source_type": "mock_uniform", "mock_seed": 1},
           "control": {"entropy_source_type": "system"}}  # fmt: skip


class Counting(EntropySource):
    """Wraps a source; records each fetch's rows and the thread that made it."""

    def __init__(self, inner: EntropySource) -> None:
        self.inner = inner
        self.fetches: list[tuple[int, str]] = []

    @property
    def name(self) -> str:
        return self.inner.name

    def get_random_bytes(self, n: int) -> bytes:
        return self.inner.get_random_bytes(n)

    def fetch_block(self, rows: int, n: int) -> EntropyBlock:
        self.fetches.append((rows, threading.current_thread().name))
        return self.inner.fetch_block(rows, n)


def make(tmp_path: Path) -> QRSamplerLogitsProcessor:
    config = QRSamplerConfig(
        entropy_source_type="mock_uniform",
        sample_count=64,
        records_path=tmp_path / "r.jsonl",
        sources=SOURCES,
    )
    return QRSamplerLogitsProcessor(None, torch.device("cpu"), False, config=config)


def add(proc: QRSamplerLogitsProcessor, arms: list[str | None]) -> None:
    added = []
    for i, arm in enumerate(arms):
        extra: dict[str, Any] = {"qr_label": f"row{i}"}
        if arm is not None:
            extra["qr_source"] = arm
        params = SamplingParams(max_tokens=8, extra_args=extra)
        params._eos_token_id = 5
        added.append((i, params, [1, 2, 3], []))
    proc.update_state(BatchUpdate(batch_size=len(arms), removed=[], added=added, moved=[]))


def test_one_fetch_per_source_per_step_and_records_name_the_source(tmp_path: Path) -> None:
    proc = make(tmp_path)
    fetchers = proc._sampler._fetchers
    counting = {name: Counting(f.source) for name, f in fetchers.items()}
    for name, f in fetchers.items():
        f.source = counting[name]
        # Local sources are read inline on CPU logits (qr_vllm._fetch.reads_inline);
        # what this checks is that threaded fetches of several sources overlap.
        f.inline = False
    add(proc, ["qrng", "control", None, "qrng", "control"])
    for _ in range(2):
        proc.apply(torch.randn(5, VOCAB))
    assert [rows for rows, _ in counting["qrng"].fetches] == [2, 2]
    assert [rows for rows, _ in counting["control"].fetches] == [2, 2]
    assert [rows for rows, _ in counting["default"].fetches] == [1, 1]
    # Each source has its own fetch thread, so the fetches are in flight together.
    threads = {name: {t for _, t in c.fetches} for name, c in counting.items()}
    assert len(set.union(*threads.values())) == 3
    assert proc.sampling_logger.sink is not None
    assert proc.sampling_logger.sink.flush()
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    proc.close()
    assert len(rows) == 10
    expected = {"row0": "qrng", "row1": "control", "row2": "default", "row3": "qrng",
                "row4": "control"}  # fmt: skip
    for r in rows:
        assert r["qr_source"] == expected[r["label"]]
        assert r["entropy_source"] == ("system" if r["qr_source"] == "control" else "mock_uniform")
    # One step, one choosing time for every source's rows; both arms share a config hash.
    assert len({r["timestamp_ns"] for r in rows}) == 2
    assert len({r["config_hash"] for r in rows}) == 1
    assert "sources" in proc.health()


def test_unknown_source_is_refused_at_admission_naming_the_known_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QR_SOURCES", json.dumps(SOURCES))
    QRSamplerLogitsProcessor._admission_resolver = None
    try:
        bad = SamplingParams(max_tokens=4, extra_args={"qr_source": "qnrg"})
        with pytest.raises(ConfigValidationError) as error:
            QRSamplerLogitsProcessor.validate_params(bad)
        assert "qr_source='qnrg' is not a known source; known: default, qrng, control" in str(
            error.value
        )
        ok = SamplingParams(max_tokens=4, extra_args={"qr_source": "control"})
        QRSamplerLogitsProcessor.validate_params(ok)
    finally:
        QRSamplerLogitsProcessor._admission_resolver = None


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ({"default": {}}, "'default' is the engine's own source"),
        ({"a b": {}}, "letters, digits"),
        ({"x": {"entropy_sorce_type": "system"}}, "'entropy_sorce_type' is not an entropy setting"),
        ({"x": {"fallback_mode": "nope"}}, r"sources\['x'\]: fallback_mode='nope'"),
    ],
)
def test_bad_sources_name_the_problem(sources: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QRSamplerConfig(sources=sources)

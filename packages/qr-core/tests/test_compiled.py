"""The compiled fast path (QR_COMPILE): the switch, the fallback, no recompiles, same tokens.

Runs in the vLLM environment (torch with Inductor and a C++ compiler); Inductor's
cache goes to a temp dir.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
from qr_core import (
    EDTTemperatureStrategy,
    QRCoreError,
    TokenSelector,
    _compiled,
    compute_shannon_entropy,
)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def fresh(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
    # Each test starts without graphs: dynamo's caches belong to the kernels' code objects,
    # which earlier tests (other modes, other shape classes) have compiled for already.
    torch._dynamo.reset()
    _compiled.reset()
    yield
    _compiled.reset()


def _lm_like(rows: int, vocab: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=gen) * 3


def _run(logits: torch.Tensor, u: torch.Tensor, **filters: object) -> tuple[object, object]:
    with torch.inference_mode():
        temps = EDTTemperatureStrategy().compute_batch(logits).temperature
        picked = TokenSelector().select_batch(
            logits, temperature=temps, u=u, **{"top_k": 0, "top_p": 1.0, **filters}
        )
    return temps, picked


def test_the_switch_reads_auto_on_off_and_names_bad_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("QR_COMPILE", raising=False)
    assert _compiled.mode() == "off"  # opt-in
    for value in ("on", "OFF", " auto "):
        monkeypatch.setenv("QR_COMPILE", value)
        assert _compiled.mode() == value.strip().lower()
    monkeypatch.setenv("QR_COMPILE", "fast")
    with pytest.raises(QRCoreError, match=r"QR_COMPILE must be one of auto, on, off; got 'fast'"):
        _compiled.mode()


def test_off_runs_eager_and_on_runs_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _lm_like(3, 5000, 1)
    monkeypatch.setenv("QR_COMPILE", "off")
    assert _compiled.compiled("entropy", x) is None
    monkeypatch.setenv("QR_COMPILE", "on")
    fused = _compiled.compiled("entropy", x)
    assert fused is not None
    row_max, entropy, finite = fused
    monkeypatch.setenv("QR_COMPILE", "off")
    np.testing.assert_allclose(entropy.numpy(), compute_shannon_entropy(x).numpy(), rtol=1e-5)
    assert torch.equal(row_max, x.amax(1))
    assert finite.tolist() == [5000] * 3


def test_unavailable_compiler_falls_back_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("QR_COMPILE", "auto")
    monkeypatch.setattr(_compiled, "_available", lambda device_type: "no C++ compiler")
    x = _lm_like(4, 20000, 2)  # above the small-tensor numpy shortcut
    u = torch.full((4,), 1 - 1e-6, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="qr_core"):
        _, first = _run(x, u)
        _, second = _run(x, u)
    lines = [
        r.getMessage() for r in caplog.records if "compiled path unavailable" in r.getMessage()
    ]
    assert len(lines) == 1
    assert "no C++ compiler" in lines[0]
    assert torch.equal(first.token_id, second.token_id)  # type: ignore[attr-defined]


def test_a_compiler_failure_falls_back_to_eager(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("QR_COMPILE", "on")

    def broken(x: object) -> object:
        raise RuntimeError("inductor exploded")

    monkeypatch.setitem(_compiled._KERNELS, "entropy", broken)
    x = _lm_like(4, 20000, 3)
    with caplog.at_level(logging.WARNING, logger="qr_core"):
        got = compute_shannon_entropy(x)
    monkeypatch.setenv("QR_COMPILE", "off")
    np.testing.assert_allclose(got.numpy(), compute_shannon_entropy(x).numpy())  # type: ignore[union-attr]
    assert sum("compiled path unavailable" in r.getMessage() for r in caplog.records) == 1


def test_warm_up_compiles_once_per_shape_class_and_steps_never_recompile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torch._dynamo.utils import counters

    monkeypatch.setenv("QR_COMPILE", "on")
    vocab = 40000
    spent = _compiled.warm_up(torch.device("cpu"), vocab)
    assert spent > 0
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    for rows in (1, 2, 3, 5, 8, 13, 64):
        with torch.inference_mode():
            x = _lm_like(rows, vocab, rows)
            u = torch.rand(rows, dtype=torch.float64)
            _run(x, u)
            _run(x, torch.full((rows,), 1 - 1e-7, dtype=torch.float64))
    assert counters["stats"]["unique_graphs"] == graphs
    assert "failed:cpu" not in _compiled._state


@pytest.mark.parametrize("vocab", [32000, 151936])
def test_compiled_and_eager_choose_the_same_tokens(
    vocab: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = 16
    with torch.inference_mode():
        x = _lm_like(rows, vocab, vocab)
        x[3, : vocab // 2] = float("-inf")
    gen = torch.Generator().manual_seed(4)
    u = torch.rand(rows, generator=gen, dtype=torch.float64)
    u[::3] = 1 - torch.rand(len(u[::3]), generator=gen, dtype=torch.float64) * 1e-4
    results = {}
    for setting in ("off", "on"):
        monkeypatch.setenv("QR_COMPILE", setting)
        results[setting] = [_run(x, u), _run(x, u, top_k=50, top_p=0.9)]
    assert "failed:cpu" not in _compiled._state
    for (t_off, off), (t_on, on) in zip(results["off"], results["on"], strict=True):
        np.testing.assert_allclose(t_on.numpy(), t_off.numpy(), rtol=1e-5)  # type: ignore[attr-defined]
        assert torch.equal(on.num_candidates, off.num_candidates)  # type: ignore[attr-defined]
        differ = torch.nonzero(on.token_id != off.token_id).flatten().tolist()  # type: ignore[attr-defined]
        assert len(differ) <= 2
        for r in differ:  # only where u lies within the float tolerance of a CDF boundary
            for picked in (on, off):
                _assert_u_near_interval(x[r], float(t_off[r]), float(u[r]), picked, r)  # type: ignore[index]
        same = on.token_id == off.token_id  # type: ignore[attr-defined]
        np.testing.assert_allclose(
            on.token_prob[same].numpy(),  # type: ignore[attr-defined]
            off.token_prob[same].numpy(),  # type: ignore[attr-defined]
            rtol=1e-5,
        )


def _assert_u_near_interval(
    row: torch.Tensor, temp: float, u: float, picked: object, r: int
) -> None:
    """The picked token's CDF interval (float64, whole row) holds u to within 1e-6."""
    x = row.double().numpy()
    order = np.lexsort((np.arange(x.size), -x))
    z = np.exp((x[order] - x[order[0]]) / temp)
    cum = np.cumsum(z) / z.sum()
    rank = int(picked.token_rank[r])  # type: ignore[attr-defined]
    assert int(order[rank]) == int(picked.token_id[r])  # type: ignore[attr-defined]
    low = cum[rank - 1] if rank else 0.0
    assert low - 1e-6 <= u <= cum[rank] + 1e-6


def test_small_vocabularies_take_one_compiled_call_per_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qr_core import _small
    from torch._dynamo.utils import counters

    monkeypatch.setenv("QR_COMPILE", "on")
    x = _lm_like(6, 512, 9)
    u = torch.rand(6, dtype=torch.float64)
    params = {"temperature": 0.8, "top_k": torch.tensor([0, 5, 0, 50, 0, 1]), "top_p": 0.9}
    assert _small.fused_small(x)
    fused = TokenSelector().select_batch(x, u=u, **params)  # type: ignore[arg-type]
    graphs = counters["stats"]["unique_graphs"]
    again = TokenSelector().select_batch(x[:4], u=u[:4], **params | {"top_k": 3})  # type: ignore[arg-type]
    assert counters["stats"]["unique_graphs"] == graphs  # a new batch size: no recompile
    monkeypatch.setenv("QR_COMPILE", "off")
    assert not _small.fused_small(x)
    eager = TokenSelector().select_batch(x, u=u, **params)  # type: ignore[arg-type]
    assert torch.equal(fused.token_id, eager.token_id)
    assert torch.equal(fused.token_rank, eager.token_rank)
    assert torch.equal(fused.num_candidates, eager.num_candidates)
    np.testing.assert_allclose(fused.token_prob.numpy(), eager.token_prob.numpy(), rtol=1e-12)
    assert again.token_id.shape == (4,)
    assert not _small.fused_small(x[:, :1])  # a vocabulary of one is not worth a graph

"""The same selection and temperature code on torch tensors (runs in the vLLM environment)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from _qr_core_cases import (
    MIN_P_THEN_TOP_P,
    TIE_AT_TOP_K_BOUNDARY,
    TIE_AT_TOP_K_WITH_MIN_P,
    Problem,
    assert_matches_reference,
    problems,
)
from hypothesis import example, given, settings
from qr_core import (
    EDTTemperatureStrategy,
    FixedTemperatureStrategy,
    TokenSelectionError,
    TokenSelector,
    compute_shannon_entropy,
)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True, scope="module", params=["torch-ops", "compiled", "small-numpy-views"])
def host_path(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Every test runs three times: with eager torch operations throughout (small CPU
    tensors forced off the numpy shortcut, QR_COMPILE=off), the same with the compiled
    path (QR_COMPILE=on, Inductor's cache in a temp dir), and with the default shortcut
    for small CPU tensors."""
    from qr_core import _array, _compiled

    with pytest.MonkeyPatch.context() as patch:
        if request.param != "small-numpy-views":
            patch.setattr(_array, "SMALL_HOST_ELEMENTS", -1)
        patch.setenv("QR_COMPILE", "on" if request.param == "compiled" else "off")
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
        _compiled.reset()
        yield str(request.param)
        # The compiled runs must really have compiled, not fallen back to eager.
        assert "failed:cpu" not in _compiled._state, _compiled._state.get("failed:cpu")
        _compiled.reset()


def to_numpy(x: object) -> np.ndarray:
    assert isinstance(x, torch.Tensor)
    return x.detach().cpu().numpy()


def run(problem: Problem, logits: object, **extra: object) -> object:
    return TokenSelector(head_size=problem.head_size).select_batch(
        logits,  # type: ignore[arg-type]
        temperature=torch.from_numpy(problem.temperature),
        top_k=torch.from_numpy(problem.top_k),
        top_p=torch.from_numpy(problem.top_p).float(),
        u=torch.from_numpy(problem.u),
        min_p=torch.from_numpy(problem.min_p),
        **extra,
    )


@settings(max_examples=150, deadline=None)
@given(problems())
@example(TIE_AT_TOP_K_BOUNDARY)
@example(TIE_AT_TOP_K_WITH_MIN_P)
@example(MIN_P_THEN_TOP_P)
def test_float32_tensors_match_the_reference(problem: Problem) -> None:
    result = run(problem, torch.from_numpy(problem.logits))
    assert result.token_id.dtype == torch.int64
    assert result.token_prob.dtype == torch.float64
    assert_matches_reference(problem, result, to_numpy)  # type: ignore[arg-type]


@settings(max_examples=75, deadline=None)
@given(problems())
def test_bfloat16_tensors_match_the_reference_on_their_rounded_values(problem: Problem) -> None:
    logits = torch.from_numpy(problem.logits).to(torch.bfloat16)
    result = run(problem, logits, validate=False)
    assert_matches_reference(problem, result, to_numpy, logits_used=logits.float().numpy())  # type: ignore[arg-type]


def test_long_rows_agree_with_numpy_and_both_paths() -> None:
    rng = np.random.default_rng(11)
    rows, vocab = 16, 32000
    logits = (rng.standard_normal((rows, vocab)) * 4).astype(np.float32)
    logits[3, :20000] = -np.inf
    params = {
        "temperature": np.linspace(0.0, 2.0, rows),
        "top_k": np.tile([50, 0, 0, 500], 4),
        "top_p": np.tile([0.9, 1.0, 0.95, 1.0], 4),
        "u": rng.uniform(size=rows),
        "min_p": np.tile([0.0, 0.0, 0.01, 0.0], 4),
    }
    on_numpy = TokenSelector().select_batch(logits, **params)  # type: ignore[arg-type]
    tensors = {k: torch.from_numpy(v) for k, v in params.items()}
    on_torch = TokenSelector().select_batch(torch.from_numpy(logits), **tensors)  # type: ignore[arg-type]
    full_sort = TokenSelector(head_size=vocab).select_batch(torch.from_numpy(logits), **tensors)  # type: ignore[arg-type]
    np.testing.assert_array_equal(on_numpy.token_id, to_numpy(on_torch.token_id))
    np.testing.assert_array_equal(on_numpy.num_candidates, to_numpy(on_torch.num_candidates))
    np.testing.assert_array_equal(to_numpy(full_sort.token_id), to_numpy(on_torch.token_id))
    assert on_torch.token_id.device == torch.device("cpu")


def test_bad_input_on_tensors() -> None:
    logits = torch.zeros(2, 5)
    logits[1, 2] = math.nan
    with pytest.raises(TokenSelectionError, match="logits row 1 contains NaN"):
        TokenSelector().select_batch(logits, temperature=1.0, top_k=0, top_p=1.0, u=0.5)
    with pytest.raises(TokenSelectionError, match=r"top_p must be in .* got 2\.0 at row 1"):
        TokenSelector().select_batch(
            torch.zeros(2, 5), temperature=1.0, top_k=0, top_p=torch.tensor([0.5, 2.0]), u=0.5
        )
    with pytest.raises(
        TokenSelectionError, match=r"top_k must hold integer numbers; got dtype torch\.float32"
    ):
        TokenSelector().select_batch(
            torch.zeros(2, 5), temperature=1.0, top_k=torch.zeros(2), top_p=1.0, u=0.5
        )
    with pytest.raises(
        TokenSelectionError, match="u is a torch tensor but the logits are a numpy array"
    ):
        TokenSelector().select_batch(
            np.zeros((2, 5)), temperature=1.0, top_k=0, top_p=1.0, u=torch.full((2,), 0.5)
        )
    with pytest.raises(TokenSelectionError, match="floating dtype"):
        TokenSelector().select(
            torch.zeros(5, dtype=torch.int32), temperature=1.0, top_k=0, top_p=1.0, u=0.5
        )


def test_single_row_on_a_tensor() -> None:
    result = TokenSelector().select(
        torch.tensor([0.0, 2.0, 1.0]), temperature=1.0, top_k=0, top_p=1.0, u=1e-9
    )
    assert (result.token_id, result.token_rank, result.num_candidates) == (1, 0, 3)


def test_temperature_on_tensors_matches_numpy() -> None:
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 300)).astype(np.float32) * 3
    logits[2, 10:] = -np.inf
    tensor = torch.from_numpy(logits)
    entropy = compute_shannon_entropy(tensor)
    assert isinstance(entropy, torch.Tensor)
    assert entropy.dtype == torch.float32
    np.testing.assert_allclose(entropy.numpy(), compute_shannon_entropy(logits), rtol=1e-5)
    edt = EDTTemperatureStrategy().compute_batch(tensor)
    np.testing.assert_allclose(
        edt.temperature.numpy(),
        EDTTemperatureStrategy().compute_batch(logits).temperature,
        rtol=1e-6,
    )
    reused = EDTTemperatureStrategy().compute_batch(tensor, shannon_entropy=entropy)
    assert torch.equal(reused.temperature, edt.temperature)
    fixed = FixedTemperatureStrategy(0.3).compute_batch(tensor.double())
    assert fixed.temperature.dtype == torch.float64
    assert bool((fixed.temperature == 0.3).all())
    assert EDTTemperatureStrategy().compute_temperature(tensor[2]).temperature > 0


@pytest.mark.parametrize("block_elements", [300, 700, 1 << 20])
def test_entropy_in_row_blocks_on_tensors(
    block_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPU tensors go through the same reused row-block buffers as numpy, bf16 included."""
    from qr_core import _array

    rng = np.random.default_rng(8)
    logits = rng.standard_normal((5, 300)) * 3
    logits[1, 20:] = -np.inf
    expected = compute_shannon_entropy(logits)
    monkeypatch.setattr(_array.Backend, "host_block_elements", block_elements)
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        got = compute_shannon_entropy(torch.from_numpy(logits).to(dtype))
        np.testing.assert_allclose(to_numpy(got), expected, rtol=rtol)
    bf16 = torch.from_numpy(logits).to(torch.bfloat16)
    got_bf16 = compute_shannon_entropy(bf16)
    np.testing.assert_allclose(
        to_numpy(got_bf16), compute_shannon_entropy(bf16.float().numpy()), rtol=1e-5
    )


def test_scratch_buffers_survive_switching_inference_mode() -> None:
    """vLLM samples under torch.inference_mode; the same thread may later work outside it.
    Reused buffers made in one mode must not be updated in place in the other."""
    rng = np.random.default_rng(9)
    logits = torch.from_numpy(rng.standard_normal((3, 5000)).astype(np.float32))
    selector = TokenSelector()
    kwargs = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "u": 0.5}
    with torch.inference_mode():
        inside = compute_shannon_entropy(logits.clone())
        picked_inside = selector.select_batch(logits.clone(), **kwargs).token_id
    outside = compute_shannon_entropy(logits)
    picked_outside = selector.select_batch(logits, **kwargs).token_id
    np.testing.assert_allclose(to_numpy(outside), to_numpy(inside))
    assert to_numpy(picked_outside).tolist() == to_numpy(picked_inside).tolist()
    with torch.inference_mode():
        again = compute_shannon_entropy(logits.clone())
    np.testing.assert_allclose(to_numpy(again), to_numpy(inside))


def test_small_cpu_tensors_come_back_as_tensors(host_path: str) -> None:
    """Whichever path runs, a tensor in gives tensors out, with the documented dtypes."""
    logits = torch.randn(4, 100)
    result = TokenSelector().select_batch(
        logits,
        temperature=torch.full((4,), 0.8, dtype=torch.float64),
        top_k=torch.tensor([0, 5, 1, 50]),
        top_p=0.9,
        u=torch.rand(4, dtype=torch.float64),
    )
    for value, dtype in (
        (result.token_id, torch.int64),
        (result.token_rank, torch.int64),
        (result.token_prob, torch.float64),
        (result.num_candidates, torch.int64),
    ):
        assert isinstance(value, torch.Tensor)
        assert value.dtype == dtype
    entropy = compute_shannon_entropy(logits)
    assert isinstance(entropy, torch.Tensor)
    assert entropy.dtype == torch.float32
    u = torch.rand(4, dtype=torch.float64)
    prepared = TokenSelector().prepare_batch(logits, temperature=0.8, top_k=5, top_p=0.9)
    finished = prepared.select(u)
    direct = TokenSelector().select_batch(logits, temperature=0.8, top_k=5, top_p=0.9, u=u)
    assert isinstance(finished.token_id, torch.Tensor)
    assert torch.equal(finished.token_id, direct.token_id)
    assert torch.equal(finished.token_prob, direct.token_prob)

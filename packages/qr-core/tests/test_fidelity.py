"""sampling_fidelity: exact against enumeration, below 1e-9 for randomized_pit, checked by draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
from qr_core import (
    RandomizedPITAmplifier,
    SignalAmplificationError,
    TokenSelectionError,
    TokenSelector,
    ZScoreMeanAmplifier,
    sampling_fidelity,
)
from qr_core._byte_sum import byte_sum_cdf
from scipy import stats

DEFAULTS = {"top_k": 50, "top_p": 0.9}


def _vocab(kind: str) -> np.ndarray:
    rng = np.random.default_rng(2026)
    if kind == "2k":
        return rng.standard_normal(2000) * 3
    if kind == "32k zipf":
        zipf = -1.1 * np.log(np.arange(1, 32001, dtype=np.float64))
        rng.shuffle(zipf)
        return zipf
    return rng.standard_normal(151936) * 3


@pytest.mark.parametrize("n", [1, 16, 1024, 20480])
@pytest.mark.parametrize("filters", [{}, DEFAULTS], ids=["off", "defaults"])
@pytest.mark.parametrize("kind", ["2k", "32k zipf", "152k"])
def test_randomized_pit_is_within_1e9_of_the_intended_distribution(
    kind: str, filters: dict[str, float], n: int
) -> None:
    result = sampling_fidelity(_vocab(kind), sample_count=n, **filters)  # type: ignore[arg-type]
    assert result.tvd < 1e-9
    assert result.realised.sum() == pytest.approx(1.0, abs=1e-12)
    assert (result.amplifier, result.sample_count) == ("randomized_pit", n)


def test_zscore_mean_realised_law_matches_enumerating_every_byte_sum() -> None:
    # n = 2: every sum S in 0..510 with its exact weight, run through the real selector.
    logits = _vocab("2k")[:300]
    n = 2
    amp = ZScoreMeanAmplifier()
    sums = np.arange(255 * n + 1)
    weights = np.diff(byte_sum_cdf(n).cdf)
    u, _, _ = amp.u_of_sums(sums, n)
    picks = TokenSelector().select_batch(
        np.broadcast_to(logits.astype(np.float32), (len(sums), len(logits))).copy(),
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        u=u,
    )
    enumerated = np.zeros(len(logits))
    np.add.at(enumerated, np.asarray(picks.token_id), weights)
    result = sampling_fidelity(logits.astype(np.float32), sample_count=n, amplifier="zscore_mean")
    np.testing.assert_allclose(result.realised, enumerated, atol=1e-15)
    assert result.tvd > 0.01  # 511 values of u cannot follow a 300-token softmax


def test_old_amplifier_leaves_tokens_unreachable_at_20480_bytes() -> None:
    result = sampling_fidelity(
        _vocab("32k zipf"), sample_count=20480, amplifier=ZScoreMeanAmplifier()
    )
    never = (result.realised == 0) & (result.intended > 0)
    assert 0.03 < result.tvd < 0.1
    assert never.sum() > 5000


def test_draws_through_the_amplifier_and_selector_follow_the_intended_law() -> None:
    # 100,000 tokens drawn with seeded bytes, n = 16: chi-square against the intended law.
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal(64) * 1.5).astype(np.float32)
    draws, n = 100_000, 16
    amp = RandomizedPITAmplifier()
    block = rng.integers(0, 256, size=(draws, n + 7), dtype=np.uint8)
    u = amp.amplify_batch(block).u
    tokens = TokenSelector().select_batch(
        np.broadcast_to(logits, (draws, 64)).copy(), temperature=1.0, top_k=0, top_p=1.0, u=u
    )
    counts = np.bincount(np.asarray(tokens.token_id), minlength=64)
    intended = sampling_fidelity(logits, sample_count=n).intended
    assert stats.chisquare(counts, intended * draws).pvalue > 1e-3
    old = ZScoreMeanAmplifier().amplify_batch(block[:, :n].copy()).u
    old_tokens = TokenSelector().select_batch(
        np.broadcast_to(logits, (draws, 64)).copy(), temperature=1.0, top_k=0, top_p=1.0, u=old
    )
    old_counts = np.bincount(np.asarray(old_tokens.token_id), minlength=64)
    assert stats.chisquare(old_counts, intended * draws).pvalue < 1e-6
    # ... but they follow the lattice law that sampling_fidelity computes for zscore_mean.
    lattice = sampling_fidelity(logits, sample_count=n, amplifier="zscore_mean").realised
    seen = lattice > 0
    assert old_counts[~seen].sum() == 0
    expected = lattice[seen] * draws
    assert (
        stats.chisquare(old_counts[seen], expected * old_counts.sum() / expected.sum()).pvalue
        > 1e-3
    )


def test_filters_and_greedy() -> None:
    logits = np.array([3.0, 1.0, 2.0, 3.0, -np.inf])
    greedy = sampling_fidelity(logits, sample_count=4, temperature=0.0)
    assert greedy.tvd == 0.0
    assert greedy.realised.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    top1 = sampling_fidelity(logits, sample_count=4, top_k=1)  # the tie at 3.0 is kept
    np.testing.assert_allclose(top1.intended, [0.5, 0, 0, 0.5, 0])
    weights = np.exp(np.array([3.0, 1.0, 2.0, 3.0]) - 3.0)
    plain = sampling_fidelity(logits, sample_count=1)
    np.testing.assert_allclose(plain.intended[:4], weights / weights.sum(), rtol=1e-14)
    assert math.isclose(plain.realised.sum(), 1.0)


def test_bad_arguments() -> None:
    row = np.zeros(4)
    with pytest.raises(SignalAmplificationError, match="sample_count must be an integer >= 1"):
        sampling_fidelity(row, sample_count=0)
    with pytest.raises(SignalAmplificationError, match="randomized_pit or zscore_mean"):
        sampling_fidelity(row, sample_count=4, amplifier=object())  # type: ignore[arg-type]
    with pytest.raises(TokenSelectionError, match="one row"):
        sampling_fidelity(np.zeros((2, 4)), sample_count=4)
    with pytest.raises(TokenSelectionError, match="top_p"):
        sampling_fidelity(row, sample_count=4, top_p=0.0)

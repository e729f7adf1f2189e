"""mock_uniform: reproducible, exactly uniform when unbiased, a controlled mean shift."""

from __future__ import annotations

import math

import numpy as np
import pytest
from qr_entropy import EntropyConfigError, EntropySettings, MockUniformSource
from qr_entropy.sources._mock import tilted_byte_distribution
from scipy import stats


def test_same_seed_same_bytes() -> None:
    a, b = MockUniformSource(seed=42), MockUniformSource(seed=42)
    assert [a.fetch(n).data for n in (5, 0, 100, 3)] == [b.fetch(n).data for n in (5, 0, 100, 3)]
    assert a.fetch_block(3, 7).data.tobytes() == b.fetch_block(3, 7).data.tobytes()


def test_biased_stream_is_reproducible_too() -> None:
    a = MockUniformSource(seed=7, mean_shift=2.0).fetch(1000).data
    b = MockUniformSource(seed=7, mean_shift=2.0).fetch(1000).data
    assert a == b


def test_different_seeds_differ() -> None:
    assert MockUniformSource(seed=1).fetch(64).data != MockUniformSource(seed=2).fetch(64).data


def test_unseeded_sources_differ() -> None:
    assert MockUniformSource().fetch(64).data != MockUniformSource().fetch(64).data


def test_unbiased_bytes_are_uniform() -> None:
    data = np.frombuffer(MockUniformSource(seed=11).fetch(1 << 21).data, dtype=np.uint8)
    counts = np.bincount(data, minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
    assert data.min() == 0
    assert data.max() == 255


def test_unbiased_distribution_is_exactly_uniform() -> None:
    assert np.array_equal(tilted_byte_distribution(0.0), np.full(256, 1 / 256))


@pytest.mark.parametrize("shift", [-100.0, -1.0, 0.003, 0.5, 5.0, 127.0])
def test_tilted_distribution_has_the_asked_mean(shift: float) -> None:
    p = tilted_byte_distribution(shift)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert float(p @ np.arange(256)) == pytest.approx(127.5 + shift, abs=1e-9)
    # exponential tilting is monotone in the byte value
    diffs = np.diff(p)
    assert np.all(diffs > 0) if shift > 0 else np.all(diffs < 0)


@pytest.mark.parametrize("shift", [0.5, -0.5, 3.0])
def test_biased_sample_mean_is_shifted(shift: float) -> None:
    n = 1 << 21
    data = np.frombuffer(MockUniformSource(seed=5, mean_shift=shift).fetch(n).data, np.uint8)
    sem = math.sqrt((256**2 - 1) / 12) / math.sqrt(n)
    assert abs(data.mean() - (127.5 + shift)) < 5 * sem
    # and it is detectably different from the null mean
    assert abs(data.mean() - 127.5) > 5 * sem


def test_biased_bytes_follow_the_tilted_distribution() -> None:
    data = np.frombuffer(MockUniformSource(seed=9, mean_shift=10.0).fetch(1 << 20).data, np.uint8)
    expected = tilted_byte_distribution(10.0) * data.size
    assert stats.chisquare(np.bincount(data, minlength=256), expected).pvalue > 1e-4


@pytest.mark.parametrize("shift", [127.5, -127.5, 200.0, float("nan"), float("inf")])
def test_out_of_range_shift(shift: float) -> None:
    with pytest.raises(EntropyConfigError, match=r"mean_shift=.* outside the allowed range"):
        MockUniformSource(seed=0, mean_shift=shift)


@pytest.mark.parametrize("seed", [-1, True])
def test_bad_seed(seed: int) -> None:
    with pytest.raises(EntropyConfigError, match="seed"):
        MockUniformSource(seed=seed)


def test_from_settings_reads_seed_and_shift() -> None:
    source = MockUniformSource.from_settings(EntropySettings(mock_seed=4, mock_mean_shift=1.5))
    assert (source.seed, source.mean_shift) == (4, 1.5)
    assert source.fetch(32).data == MockUniformSource(seed=4, mean_shift=1.5).fetch(32).data

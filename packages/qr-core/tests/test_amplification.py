"""ZScoreMeanAmplifier: exact values, statistics under the null and under a shift, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from qr_core import (
    DEFAULT_UNIFORM_CLAMP_EPSILON,
    POPULATION_STD,
    AmplificationResult,
    AmplifierRegistry,
    SignalAmplificationError,
    ZScoreMeanAmplifier,
)
from scipy import stats


def test_population_std_is_the_discrete_uniform_value() -> None:
    assert math.isclose(POPULATION_STD, 73.90027063549903, rel_tol=1e-15)
    assert np.isclose(POPULATION_STD, np.arange(256).std())


def test_alternating_extremes_give_exactly_one_half() -> None:
    result = ZScoreMeanAmplifier().amplify(bytes([0, 255] * 512))
    assert result == AmplificationResult(
        u=0.5,
        z_score=0.0,
        sample_mean=127.5,
        sample_count=1024,
        amplifier="zscore_mean",
        s_bytes=1024,
        v_bytes=0,
    )


def test_all_255_clamps_to_one_minus_epsilon() -> None:
    result = ZScoreMeanAmplifier().amplify(b"\xff" * 64)
    assert result.u == 1 - DEFAULT_UNIFORM_CLAMP_EPSILON
    assert math.isclose(result.z_score, 127.5 / (POPULATION_STD / 8))
    assert ZScoreMeanAmplifier().amplify(b"\x00" * 64).u == DEFAULT_UNIFORM_CLAMP_EPSILON


@pytest.mark.parametrize("extra", [0, 1])
def test_byte_sums_stay_exact_past_the_32_bit_accumulator(extra: int) -> None:
    # 255 * 16,843,009 is the largest byte sum a uint32 holds; one byte more must not wrap.
    n = (2**32 - 1) // 255 + extra
    block = np.full((1, n), 255, dtype=np.uint8)
    block[0, :3] = (254, 253, 252)  # sum = 255 * n - 6, over 2**32 - 1 when extra is 1
    result = ZScoreMeanAmplifier().amplify_batch(block)
    assert result.sample_mean[0] == (255 * n - 6) / n


def test_sem_uses_the_bytes_actually_received() -> None:
    short = ZScoreMeanAmplifier().amplify(bytes([200] * 100))
    long = ZScoreMeanAmplifier().amplify(bytes([200] * 400))
    assert (short.sample_count, long.sample_count) == (100, 400)
    assert math.isclose(long.z_score, 2 * short.z_score)


def test_known_value_through_the_normal_cdf() -> None:
    data = bytes(range(256)) + bytes([128]) * 256  # mean 127.75 over 512 bytes
    result = ZScoreMeanAmplifier().amplify(data)
    z = (127.75 - 127.5) / (POPULATION_STD / math.sqrt(512))
    assert math.isclose(result.z_score, z)
    assert math.isclose(result.u, stats.norm.cdf(z), rel_tol=1e-14)


def test_every_input_kind_and_the_batch_form_agree() -> None:
    rng = np.random.default_rng(1)
    block = rng.integers(0, 256, size=(5, 300), dtype=np.uint8)
    amp = ZScoreMeanAmplifier()
    batch = amp.amplify_batch(block)
    assert batch.sample_count == 300
    assert batch.u.shape == (5,)
    for r in range(5):
        for form in (
            block[r].tobytes(),
            bytearray(block[r].tobytes()),
            memoryview(block[r].tobytes()),
            block[r],
        ):
            one = amp.amplify(form)
            assert (one.u, one.z_score, one.sample_mean) == (
                batch.u[r],
                batch.z_score[r],
                batch.sample_mean[r],
            )


def test_null_z_has_mean_zero_and_variance_one() -> None:
    rng = np.random.default_rng(20240601)
    blocks = 200_000
    block = rng.integers(0, 256, size=(blocks, 256), dtype=np.uint8)
    z = ZScoreMeanAmplifier().amplify_batch(block).z_score
    assert abs(z.mean()) < 4 / math.sqrt(blocks)
    assert abs(z.var(ddof=1) - 1) < 4 * math.sqrt(2 / (blocks - 1))


def test_z_variance_tells_the_discrete_sigma_from_the_continuous_one() -> None:
    # With 200,000 blocks the continuous σ (255/√12) inflates Var(z) to 1.0078, only about
    # 2.5 standard errors away: the test above alone would miss it most of the time. The
    # variance of a mean is σ²/n for any n, so many short blocks give the power: 4 million
    # blocks of 16 bytes put the wrong σ about 11 standard errors away.
    rng = np.random.default_rng(7)
    blocks, n = 4_000_000, 16
    block = rng.integers(0, 256, size=(blocks, n), dtype=np.uint8)
    right = ZScoreMeanAmplifier().amplify_batch(block).z_score
    wrong = ZScoreMeanAmplifier(population_std=255 / math.sqrt(12)).amplify_batch(block).z_score
    se = math.sqrt(np.var(right**2) / blocks)
    assert abs(right.var() - 1) < 4 * se
    assert wrong.var() - 1 > 8 * se


def test_null_u_is_uniform_and_a_half_unit_shift_is_detected() -> None:
    rng = np.random.default_rng(99)
    amp = ZScoreMeanAmplifier()
    null_u = amp.amplify_batch(rng.integers(0, 256, size=(20_000, 256), dtype=np.uint8)).u
    assert stats.kstest(null_u, "uniform").pvalue > 1e-4
    # Bytes uniform on 1..255 have mean 128.0: a +0.5 shift of the byte mean.
    shifted = amp.amplify_batch(rng.integers(1, 256, size=(20_000, 256), dtype=np.uint8))
    assert stats.kstest(shifted.u, "uniform").pvalue < 1e-10
    assert shifted.u.mean() > 0.5
    assert shifted.z_score.mean() > 0.05


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"", "rows >= 1 and n >= 1"),
        (np.zeros(0, dtype=np.uint8), "rows >= 1 and n >= 1"),
        (np.zeros(4, dtype=np.int16), "dtype uint8; got int16"),
        (np.zeros((2, 2), dtype=np.uint8), "must be 1-D"),
        ("abc", "got str"),
    ],
)
def test_bad_bytes(value: object, fragment: str) -> None:
    with pytest.raises(SignalAmplificationError) as info:
        ZScoreMeanAmplifier().amplify(value)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_bad_block() -> None:
    with pytest.raises(SignalAmplificationError, match="numpy uint8 array"):
        ZScoreMeanAmplifier().amplify_batch([[1, 2]])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"population_std": 0.0}, "population_std must be a finite number > 0; got 0.0"),
        ({"population_mean": math.nan}, "population_mean must be a finite number"),
        ({"uniform_clamp_epsilon": 0.5}, "uniform_clamp_epsilon must be in (0, 0.5)"),
    ],
)
def test_bad_parameters(params: dict[str, float], fragment: str) -> None:
    with pytest.raises(SignalAmplificationError) as info:
        ZScoreMeanAmplifier(**params)
    assert fragment in str(info.value)


def test_registry_builds_with_only_the_accepted_keys() -> None:
    amp = AmplifierRegistry.build("zscore_mean", population_std=70.0, fixed_temperature=0.3)
    assert isinstance(amp, ZScoreMeanAmplifier)
    assert amp.population_std == 70.0
    assert ZScoreMeanAmplifier.name == "zscore_mean"
    assert "population_std=70.0" in repr(amp)

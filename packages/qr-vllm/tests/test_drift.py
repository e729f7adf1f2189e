"""DriftMonitor: Stouffer Z over a sliding window and the lifetime, and its warning.

The bias tests run the real pipeline math: bytes from the real mock_uniform source
(exponential tilting for the mean shift), z per token from the real z-score
amplifier, fed in decode steps of 8 tokens as the processor does.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from qr_core import POPULATION_STD, ZScoreMeanAmplifier
from qr_entropy import EntropySettings, EntropySourceRegistry
from qr_vllm._drift import REARM_MARGIN, DriftMonitor

SAMPLE_COUNT = 1024
ROWS_PER_STEP = 8


def _shift_for(expected_z: float, tokens: int) -> float:
    # Each token's z has mean shift * sqrt(n) / sigma, so Stouffer's Z of T tokens has
    # mean sqrt(T) * shift * sqrt(n) / sigma.
    return expected_z * POPULATION_STD / (math.sqrt(tokens) * math.sqrt(SAMPLE_COUNT))


def _run(
    monitor: DriftMonitor, *, shift: float, tokens: int, seed: int
) -> tuple[list[float], list[float], np.ndarray]:
    settings = EntropySettings(mock_seed=seed, mock_mean_shift=shift)
    source = EntropySourceRegistry.build("mock_uniform", settings)
    amplifier = ZScoreMeanAmplifier()
    lifetime: list[float] = []
    window: list[float] = []
    all_z = []
    for _ in range(tokens // ROWS_PER_STEP):
        block = source.fetch_block(ROWS_PER_STEP, SAMPLE_COUNT)
        z = amplifier.amplify_batch(block.data).z_score
        all_z.append(z)
        monitor.observe("mock_uniform", z)
        snap = monitor.snapshot()["mock_uniform"]
        lifetime.append(snap.lifetime_z)
        window.append(snap.window_z)
    return lifetime, window, np.concatenate(all_z)


def test_a_biased_source_crosses_the_threshold_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tokens = 5_000
    shift = _shift_for(5.0, tokens)
    monitor = DriftMonitor(window=10_000, threshold=4.0)
    with caplog.at_level(logging.WARNING, logger="qr_sampler"):
        lifetime, window, z = _run(monitor, shift=shift, tokens=tokens, seed=20260101)
    # The bias really is the one asked for: the tokens' mean z is near 5 / sqrt(5000).
    assert abs(z.mean() * math.sqrt(z.size) - 5.0) < 2.5
    assert max(lifetime) > 4.0
    assert max(window) > 4.0
    assert abs(lifetime[-1] - z.sum() / math.sqrt(z.size)) < 1e-9
    warnings = [r for r in caplog.records if "entropy drift" in r.getMessage()]
    assert len(warnings) == 1
    assert "mock_uniform" in warnings[0].getMessage()


def test_an_unbiased_source_stays_inside_four_over_20000_tokens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = DriftMonitor(window=5_000, threshold=4.0)
    with caplog.at_level(logging.WARNING, logger="qr_sampler"):
        lifetime, window, z = _run(monitor, shift=0.0, tokens=20_000, seed=7)
    assert z.size == 20_000
    assert max(abs(v) for v in lifetime) < 4.0
    assert max(abs(v) for v in window) < 4.0
    assert not [r for r in caplog.records if "entropy drift" in r.getMessage()]


def test_the_window_is_exactly_the_last_tokens() -> None:
    rng = np.random.default_rng(3)
    monitor = DriftMonitor(window=100, threshold=0.0)
    seen = []
    for size in (7, 50, 93, 1, 100, 250, 13):
        z = rng.normal(size=size)
        seen.append(z)
        monitor.observe("s", z)
        everything = np.concatenate(seen)
        last = everything[-100:]
        snap = monitor.snapshot()["s"]
        assert snap.window_tokens == last.size
        assert snap.window_z == pytest.approx(last.sum() / math.sqrt(last.size), abs=1e-9)
        assert snap.lifetime_tokens == everything.size
        assert snap.lifetime_z == pytest.approx(
            everything.sum() / math.sqrt(everything.size), abs=1e-9
        )


def test_it_re_arms_only_after_coming_back_inside(caplog: pytest.LogCaptureFixture) -> None:
    monitor = DriftMonitor(window=4, threshold=2.0)
    with caplog.at_level(logging.INFO, logger="qr_sampler"):
        monitor.observe("s", np.full(4, 3.0))  # window Z = 6: out, warn
        monitor.observe("s", np.full(4, 3.0))  # still out: no second warning
        assert monitor.snapshot()["s"].outside
        # Lifetime Z stays high while the window comes back: still outside.
        monitor.observe("s", np.zeros(4))
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        # Pull the lifetime Z back below threshold - margin as well, then cross again.
        monitor.observe("s", np.full(4, -3.0))
        monitor.observe("s", np.zeros(4 * 100))
        snap = monitor.snapshot()["s"]
        assert max(abs(snap.window_z), abs(snap.lifetime_z)) < 2.0 - REARM_MARGIN
        assert not snap.outside
        monitor.observe("s", np.full(4, -3.0))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "back inside" in caplog.text


def test_threshold_zero_never_warns_and_bad_settings_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = DriftMonitor(window=10, threshold=0.0)
    with caplog.at_level(logging.WARNING, logger="qr_sampler"):
        monitor.observe("s", np.full(10, 5.0))
        monitor.observe("s", np.array([np.nan, np.inf]))  # ignored, not propagated
    assert not caplog.records
    assert monitor.snapshot()["s"].lifetime_tokens == 10
    with pytest.raises(ValueError, match="window"):
        DriftMonitor(window=0)
    with pytest.raises(ValueError, match="threshold"):
        DriftMonitor(threshold=-1.0)

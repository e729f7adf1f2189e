"""qr_entropy's battery z-score is qr_core's ``zscore_mean`` amplifier, number for number.

qr_entropy may not import qr_core, so ``qr_entropy._stats.zscore`` repeats the
amplifier's few lines; this test, outside both packages, holds the two to the
same z and u. The amplifier is taken by name through qr_core's registry, as
configuration takes it, with its default parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
from qr_core import AmplifierRegistry
from qr_entropy._stats import zscore, zscore_u

# The longest row whose byte sum fits a 32-bit accumulator in the amplifier, and one more.
UINT32_EDGE = (2**32 - 1) // 255


def _blocks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20_480)
    blocks = {
        f"random n={n}": rng.integers(0, 256, (16, n), dtype=np.uint8)
        for n in (1, 2, 3, 7, 64, 1000, 20_480)
    }
    blocks["one row"] = rng.integers(0, 256, (1, 20_480), dtype=np.uint8)
    # Every mean a single byte can have, and the extremes that saturate u at the clamp.
    blocks["every byte, n=1"] = np.arange(256, dtype=np.uint8)[:, None]
    for n in (1, 2, 13, 14, 20_480):
        blocks[f"constant 0 and 255, n={n}"] = np.array([[0] * n, [255] * n], dtype=np.uint8)
    blocks["biased by one"] = np.minimum(rng.integers(0, 256, (8, 20_480)) + 1, 255).astype(
        np.uint8
    )
    for n in (UINT32_EDGE, UINT32_EDGE + 1):
        blocks[f"accumulator edge n={n}"] = np.stack(
            [
                np.full(n, 255, dtype=np.uint8),
                np.zeros(n, dtype=np.uint8),
                rng.integers(0, 256, n, dtype=np.uint8),
            ]
        )
    return blocks


BLOCKS = _blocks()


@pytest.mark.parametrize("label", list(BLOCKS))
def test_battery_zscore_matches_the_zscore_mean_amplifier(label: str) -> None:
    block = BLOCKS[label]
    amplified = AmplifierRegistry.build("zscore_mean").amplify_batch(block)
    z, u = zscore(block)
    np.testing.assert_allclose(z, amplified.z_score, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(u, amplified.u, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(zscore_u(block), u)


def test_the_pin_can_fail() -> None:
    """A one-byte shift of a row moves z by far more than the tolerance."""
    block = BLOCKS["random n=64"]
    shifted = block.copy()
    shifted[0, 0] ^= 1
    amplified = AmplifierRegistry.build("zscore_mean").amplify_batch(block)
    z, _ = zscore(shifted)
    assert abs(z[0] - amplified.z_score[0]) > 1e-3

"""Plugin classes that test entry points load by module path."""

from __future__ import annotations

import numpy as np
from qr_core import BatchAmplificationResult, SignalAmplifier


class HalfAmplifier(SignalAmplifier):
    """Always u = 0.5; a stand-in for a third-party amplifier."""

    def __init__(self, level: float = 0.5) -> None:
        self.level = level

    def amplify_batch(self, block: np.ndarray) -> BatchAmplificationResult:
        rows = block.shape[0]
        half = np.full(rows, self.level)
        return BatchAmplificationResult(
            u=half, z_score=np.zeros(rows), sample_mean=np.zeros(rows), sample_count=block.shape[1]
        )


class NotAnAmplifier:
    pass

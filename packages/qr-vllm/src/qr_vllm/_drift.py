"""`DriftMonitor`: a live Stouffer Z of each named source's token z-scores, with a warning.

Under the null hypothesis (an unbiased source) every token's ``z_score`` is an
independent standard normal, so Stouffer's Z of n tokens, ``sum(z) / sqrt(n)``,
is standard normal too, however large n grows. A source whose bytes' mean has
drifted by d per byte moves every z by ``d / SEM``, and Stouffer's Z grows as
``sqrt(n) * d / SEM``: a bias far too small for the per-block SP 800-90B health
tests shows up here. The monitor keeps, per key, Z over a sliding window of the
last tokens and Z over the engine's lifetime; both are exported as gauges.
`qr_vllm._metrics` keys it by named source (``qr_source``), so that a study's
control and QRNG arms drift apart.

With a threshold, it logs one warning when either |Z| first exceeds it, and
re-arms only once both are back below ``threshold - REARM_MARGIN`` (one standard
deviation of the null): a Z hovering at the threshold does not flood the log.
Only tokens whose bytes came from the source itself are fed in (no fallback
bytes, no failed tokens).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

import numpy as np

__all__ = ["REARM_MARGIN", "DriftMonitor", "DriftSnapshot"]

logger = logging.getLogger("qr_sampler")

#: How far below the threshold both |Z| must come back before a new warning can fire.
REARM_MARGIN = 1.0


@dataclass(frozen=True, slots=True)
class DriftSnapshot:
    """Stouffer Z of one source, over the sliding window and over the lifetime."""

    window_z: float
    window_tokens: int
    lifetime_z: float
    lifetime_tokens: int
    outside: bool


class _SourceDrift:
    """The running sums of one source (a ring buffer of the window's z values)."""

    __slots__ = (
        "buffer",
        "lifetime_n",
        "lifetime_sum",
        "outside",
        "pos",
        "since_resum",
        "window_n",
        "window_sum",
    )

    def __init__(self, window: int) -> None:
        self.buffer = np.zeros(window, dtype=np.float64)
        self.pos = 0
        self.window_n = 0
        self.window_sum = 0.0
        self.lifetime_n = 0
        self.lifetime_sum = 0.0
        self.since_resum = 0
        self.outside = False

    def add(self, z: np.ndarray, total: float) -> None:
        """Add the finite z-scores ``z``, whose sum is ``total``."""
        k = int(z.size)
        size = self.buffer.size
        self.lifetime_n += k
        self.lifetime_sum += total
        if k >= size:
            self.buffer[:] = z[k - size :]
            self.pos = 0
            self.window_n = size
            self.window_sum = float(self.buffer.sum())
            self.since_resum = 0
            return
        end = self.pos + k
        parts: tuple[tuple[int, int, int, int], ...]
        if end <= size:
            parts = ((self.pos, end, 0, k),)
        else:
            first = size - self.pos
            parts = ((self.pos, size, 0, first), (0, end - size, first, k))
        removed = 0.0
        for start, stop, zs, ze in parts:
            # Slots not filled yet hold zeros, so they remove nothing from the sum.
            removed += float(self.buffer[start:stop].sum())
            self.buffer[start:stop] = z[zs:ze]
        self.pos = end % size
        self.window_n = min(size, self.window_n + k)
        self.since_resum += k
        if self.since_resum >= size:
            # Exact sum once per window's worth of tokens: no rounding build-up.
            self.window_sum = float(self.buffer.sum())
            self.since_resum = 0
        else:
            self.window_sum += total - removed

    def snapshot(self) -> DriftSnapshot:
        return DriftSnapshot(
            window_z=_stouffer(self.window_sum, self.window_n),
            window_tokens=self.window_n,
            lifetime_z=_stouffer(self.lifetime_sum, self.lifetime_n),
            lifetime_tokens=self.lifetime_n,
            outside=self.outside,
        )


class DriftMonitor:
    """Per-source Stouffer Z over a sliding window and the lifetime.

    Args:
        window: Tokens in the sliding window.
        threshold: |Z| that logs a warning (0: never warn; the gauges still move).
    """

    def __init__(self, window: int = 10_000, threshold: float = 4.0) -> None:
        if window < 1:
            raise ValueError(f"drift window must be >= 1 token, got {window}")
        if not (threshold >= 0.0 and math.isfinite(threshold)):
            raise ValueError(f"drift threshold must be a finite number >= 0, got {threshold}")
        self.window = window
        self.threshold = threshold
        self._sources: dict[str, _SourceDrift] = {}
        self._lock = threading.Lock()

    def observe(self, source: str, z_scores: np.ndarray) -> None:
        """Add the z-scores of one step's tokens from ``source`` (non-fallback, ok tokens)."""
        z = np.asarray(z_scores, dtype=np.float64).reshape(-1)
        total = float(z.sum())
        if not math.isfinite(total):  # rare: leave out the non-finite z-scores
            z = z[np.isfinite(z)]
            total = float(z.sum())
        if z.size == 0:
            return
        with self._lock:
            state = self._sources.get(source)
            if state is None:
                state = self._sources[source] = _SourceDrift(self.window)
            state.add(z, total)
            if self.threshold > 0.0:
                self._check(source, state)

    def _check(self, source: str, state: _SourceDrift) -> None:
        window_z = _stouffer(state.window_sum, state.window_n)
        lifetime_z = _stouffer(state.lifetime_sum, state.lifetime_n)
        largest = max(abs(window_z), abs(lifetime_z))
        if not state.outside and largest > self.threshold:
            state.outside = True
            logger.warning(
                "entropy drift on qr_source %s: Stouffer Z %+.2f over the last %d tokens, "
                "%+.2f over %d tokens since start (threshold %.2f); the source's output "
                "may be biased: check it with qr-entropy check",
                source,
                window_z,
                state.window_n,
                lifetime_z,
                state.lifetime_n,
                self.threshold,
            )
        elif state.outside and largest < self.threshold - REARM_MARGIN:
            state.outside = False
            logger.info(
                "entropy drift on qr_source %s back inside: Stouffer Z %+.2f (window), "
                "%+.2f (lifetime)",
                source,
                window_z,
                lifetime_z,
            )

    def snapshot(self) -> dict[str, DriftSnapshot]:
        """Current Z values of every source seen so far."""
        with self._lock:
            return {name: state.snapshot() for name, state in self._sources.items()}


def _stouffer(total: float, n: int) -> float:
    return total / math.sqrt(n) if n else 0.0

"""The built-in entropy sources, registered under ``qr_entropy.sources`` on import."""

from __future__ import annotations

from qr_entropy.sources._mock import MockUniformSource
from qr_entropy.sources._system import SystemEntropySource
from qr_entropy.sources._timing import TimingNoiseSource

__all__ = ["MockUniformSource", "SystemEntropySource", "TimingNoiseSource"]

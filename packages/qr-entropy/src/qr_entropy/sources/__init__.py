"""The built-in entropy sources, each declared as a ``qr_entropy.sources`` entry point."""

from __future__ import annotations

from qr_entropy.sources._mock import MockUniformSource
from qr_entropy.sources._system import SystemEntropySource
from qr_entropy.sources._timing import TimingNoiseSource

__all__ = ["MockUniformSource", "SystemEntropySource", "TimingNoiseSource"]

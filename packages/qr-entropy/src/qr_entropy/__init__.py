"""qr_entropy: entropy sources with provenance, flagged fallback and SP 800-90B health tests."""

from __future__ import annotations

from importlib.metadata import version as _version

from qr_entropy._base import EntropyBlock, EntropyFetch, EntropySource, HealthStatus, Provenance
from qr_entropy._errors import (
    EntropyConfigError,
    EntropyUnavailableError,
    HealthTestFailure,
    QREntropyError,
    SourceLoadError,
    UnknownSourceError,
)
from qr_entropy._health import HealthMonitor, HealthTestCutoffs
from qr_entropy._settings import EntropySettings

__version__ = _version("qr-entropy")

__all__ = [
    "EntropyBlock",
    "EntropyConfigError",
    "EntropyFetch",
    "EntropySettings",
    "EntropySource",
    "EntropyUnavailableError",
    "HealthMonitor",
    "HealthStatus",
    "HealthTestCutoffs",
    "HealthTestFailure",
    "Provenance",
    "QREntropyError",
    "SourceLoadError",
    "UnknownSourceError",
    "__version__",
]

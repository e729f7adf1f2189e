"""qr_entropy: entropy sources with provenance, flagged fallback and SP 800-90B health tests."""

from __future__ import annotations

from importlib.metadata import version as _version

from qr_entropy._audit_log import (
    AUDIT_FORMAT_VERSION,
    DEFAULT_FSYNC_INTERVAL_MS,
    GENESIS_HASH,
    AuditLog,
    AuditLogError,
    FsyncPolicy,
    line_hash,
)
from qr_entropy._audit_verify import FINDING_KINDS, AuditReport, Finding, LogHead, verify_audit
from qr_entropy._base import EntropyBlock, EntropyFetch, EntropySource, HealthStatus, Provenance
from qr_entropy._check import SourceCheck
from qr_entropy._digest import DIGEST_SIZE, row_digest, row_digests, split_digests
from qr_entropy._errors import (
    EntropyConfigError,
    EntropyUnavailableError,
    HealthTestFailure,
    QREntropyError,
    SourceCheckError,
    SourceLoadError,
    UnknownSourceError,
)
from qr_entropy._fallback import FallbackEntropySource
from qr_entropy._health import HealthMonitor, HealthTestCutoffs
from qr_entropy._registry import ENTRY_POINT_GROUP, EntropySourceRegistry, build_entropy_source
from qr_entropy._settings import QR_SETTINGS_CONFIG, EntropySettings
from qr_entropy.sources import MockUniformSource, SystemEntropySource, TimingNoiseSource

__version__ = _version("qr-entropy")

__all__ = [
    "AUDIT_FORMAT_VERSION",
    "DEFAULT_FSYNC_INTERVAL_MS",
    "DIGEST_SIZE",
    "ENTRY_POINT_GROUP",
    "FINDING_KINDS",
    "GENESIS_HASH",
    "QR_SETTINGS_CONFIG",
    "AuditLog",
    "AuditLogError",
    "AuditReport",
    "EntropyBlock",
    "EntropyConfigError",
    "EntropyFetch",
    "EntropySettings",
    "EntropySource",
    "EntropySourceRegistry",
    "EntropyUnavailableError",
    "FallbackEntropySource",
    "Finding",
    "FsyncPolicy",
    "HealthMonitor",
    "HealthStatus",
    "HealthTestCutoffs",
    "HealthTestFailure",
    "LogHead",
    "MockUniformSource",
    "Provenance",
    "QREntropyError",
    "SourceCheck",
    "SourceCheckError",
    "SourceLoadError",
    "SystemEntropySource",
    "TimingNoiseSource",
    "UnknownSourceError",
    "__version__",
    "build_entropy_source",
    "line_hash",
    "row_digest",
    "row_digests",
    "split_digests",
    "verify_audit",
]

"""FallbackEntropySource: a primary source with a flagged, counted fallback."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from qr_entropy._base import EntropyBlock, EntropyFetch, EntropySource, HealthStatus, Provenance
from qr_entropy._check import SourceCheck
from qr_entropy._errors import EntropyUnavailableError, HealthTestFailure

__all__ = ["FallbackEntropySource"]

logger = logging.getLogger(__name__)


class FallbackEntropySource(EntropySource):
    """Serves from ``primary``; when it raises `EntropyUnavailableError`, from ``fallback``.

    Only `EntropyUnavailableError` (including `HealthTestFailure`) engages the
    fallback; every other exception, bad arguments included, propagates. Each
    fetch served by the fallback has ``is_fallback=True`` and the primary's
    error in ``fallback_reason``; ``fallback_count`` only ever grows, so a
    later primary success never hides an earlier fallback. When the primary's
    bytes failed a health test, the fallback's provenance says so with
    ``health=FAILED``: a stuck device is never reported as healthy bytes.
    """

    def __init__(self, primary: EntropySource, fallback: EntropySource) -> None:
        """Wrap ``primary`` with ``fallback``.

        Args:
            primary: The source to use while it works.
            fallback: The source to use for a fetch the primary cannot serve.
        """
        self.primary = primary
        self.fallback = fallback
        self.max_request_bytes = primary.max_request_bytes
        self.fallback_count = 0
        self.last_fallback_reason = ""
        self.last_fallback_at_ns = 0
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """``"<primary>+fallback:<fallback>"``; each provenance names the source actually used."""
        return f"{self.primary.name}+fallback:{self.fallback.name}"

    @property
    def is_available(self) -> bool:
        """True while either source can deliver."""
        return self.primary.is_available or self.fallback.is_available

    def _record(self, error: EntropyUnavailableError) -> str:
        reason = f"{type(error).__name__}: {error}"
        with self._lock:
            self.fallback_count += 1
            self.last_fallback_reason = reason
            self.last_fallback_at_ns = time.monotonic_ns()
            count = self.fallback_count
        logger.warning(
            "entropy source %r unavailable (%s); serving from fallback %r (fallback #%d)",
            self.primary.name,
            reason,
            self.fallback.name,
            count,
        )
        return reason

    @staticmethod
    def _flag(provenance: Provenance, reason: str, error: EntropyUnavailableError) -> Provenance:
        health = HealthStatus.FAILED if isinstance(error, HealthTestFailure) else provenance.health
        return dataclasses.replace(
            provenance, is_fallback=True, fallback_reason=reason, health=health
        )

    def fetch(self, n: int) -> EntropyFetch:
        """Fetch ``n`` bytes from the primary, or flagged from the fallback."""
        self.check_request(1, n)
        try:
            return self.primary.fetch(n)
        except EntropyUnavailableError as error:
            reason = self._record(error)
            result = self.fallback.fetch(n)
            return EntropyFetch(result.data, self._flag(result.provenance, reason, error))

    def fetch_block(self, rows: int, n: int) -> EntropyBlock:
        """Fetch a (rows, n) block from the primary, or flagged from the fallback."""
        self.check_request(rows, n)
        try:
            return self.primary.fetch_block(rows, n)
        except EntropyUnavailableError as error:
            reason = self._record(error)
            result = self.fallback.fetch_block(rows, n)
            return EntropyBlock(result.data, self._flag(result.provenance, reason, error))

    def get_random_bytes(self, n: int) -> bytes:
        """``fetch(n).data``; use `fetch` to learn whether the fallback served it."""
        return self.fetch(n).data

    def check(self, timeout_s: float | None = None) -> SourceCheck:
        """The primary's check: a fallback that hides a misconfigured primary helps nobody."""
        return self.primary.check(timeout_s)

    def close(self) -> None:
        """Close both sources (the fallback even when closing the primary raises)."""
        try:
            self.primary.close()
        finally:
            self.fallback.close()

    def health_check(self) -> dict[str, object]:
        """Both sources' status and the fallback counters."""
        return {
            "source": self.name,
            "available": self.is_available,
            "fallback_count": self.fallback_count,
            "last_fallback_reason": self.last_fallback_reason,
            "last_fallback_at_ns": self.last_fallback_at_ns,
            "primary": self.primary.health_check(),
            "fallback": self.fallback.health_check(),
        }

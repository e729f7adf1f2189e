"""``system``: the operating system's cryptographic RNG."""

from __future__ import annotations

import os

from qr_entropy._base import EntropySource
from qr_entropy._registry import EntropySourceRegistry

__all__ = ["SystemEntropySource"]


@EntropySourceRegistry.register("system")
class SystemEntropySource(EntropySource):
    """Bytes from ``os.urandom``: always available, cryptographically secure, not quantum.

    It is the default fallback and the baseline to compare other sources with.
    Its output is a conditioned DRBG, not raw noise, so the SP 800-90B noise
    source health tests are not run on it.
    """

    @property
    def name(self) -> str:
        """``"system"``."""
        return "system"

    def get_random_bytes(self, n: int) -> bytes:
        """Return ``n`` bytes from ``os.urandom``."""
        return os.urandom(self.check_request(1, n))

"""The exception hierarchy of qr_entropy: one root, and one error that triggers fallback."""

from __future__ import annotations

__all__ = [
    "EntropyConfigError",
    "EntropyUnavailableError",
    "HealthTestFailure",
    "QREntropyError",
    "SourceCheckError",
    "SourceLoadError",
    "UnknownSourceError",
]


class QREntropyError(Exception):
    """Root of every error raised by qr_entropy."""


class EntropyUnavailableError(QREntropyError):
    """The source could not deliver the bytes asked for.

    This is the only error that makes `FallbackEntropySource` use its fallback:
    a device that is down, a timeout, a short or long read, a failed health test.
    """


class SourceCheckError(EntropyUnavailableError):
    """A source failed its start-up check (`EntropySource.check`).

    Attributes:
        problem: The check's short failure kind (``unreachable``, ``unauthenticated``...).
    """

    def __init__(self, message: str, *, problem: str = "") -> None:
        super().__init__(message)
        self.problem = problem


class HealthTestFailure(EntropyUnavailableError):  # noqa: N818 -- the name the contract uses
    """A continuous health test (SP 800-90B §4.4) rejected the source's output."""


class EntropyConfigError(QREntropyError, ValueError):
    """A bad argument or setting: the message names the value and what is allowed."""


class UnknownSourceError(QREntropyError, LookupError):
    """No entropy source is installed under the requested name."""


class SourceLoadError(QREntropyError, ImportError):
    """An installed entropy-source entry point failed to import or is not a source."""

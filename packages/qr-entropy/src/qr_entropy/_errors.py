"""The exception hierarchy of qr_entropy: one root, and one error that triggers fallback."""

from __future__ import annotations

from collections.abc import Iterable

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
    """No entropy source is installed under the requested name; the message lists what is.

    Attributes:
        name: The name that was asked for.
        available: Every name that could have been selected, sorted.
    """

    def __init__(self, message: str, *, name: str = "", available: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.name = name
        self.available: tuple[str, ...] = tuple(available)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), str(self), {"name": self.name, "available": self.available}))


class SourceLoadError(QREntropyError, ImportError):
    """An installed entropy-source entry point failed to import or is not a source.

    The message names the distribution, the entry point and the original error
    (also chained as ``__cause__``).

    Attributes:
        name: The source name that was selected.
        distribution: The distribution that declares the entry point.
    """

    def __init__(self, message: str, *, name: str = "", distribution: str = "") -> None:
        super().__init__(message)
        self.name = name
        self.distribution = distribution

    def __reduce__(self) -> tuple[object, ...]:
        state = {"name": self.name, "distribution": self.distribution}
        return (_rebuild, (type(self), str(self), state))


def _rebuild(cls: type[QREntropyError], message: str, state: dict[str, object]) -> QREntropyError:
    # Pickling (multiprocessing, vLLM's workers) keeps the attributes, not just the message.
    error = cls(message)
    for key, value in state.items():
        setattr(error, key, value)
    return error

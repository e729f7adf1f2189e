"""Exception hierarchy of qr_core: one root, one subclass per stage."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ComponentLoadError",
    "QRCoreError",
    "SignalAmplificationError",
    "TemperatureStrategyError",
    "TokenSelectionError",
    "UnknownComponentError",
]


class QRCoreError(ValueError):
    """Root of every error raised by qr_core.

    It derives from ValueError because every qr_core error is a bad value
    handed in by the caller (bytes, logits, parameters or a component name).
    """


class SignalAmplificationError(QRCoreError):
    """Raw entropy could not be turned into a uniform value (empty input, bad dtype)."""


class TemperatureStrategyError(QRCoreError):
    """A temperature strategy got bad parameters or bad logits."""


class TokenSelectionError(QRCoreError):
    """Token selection got bad logits or parameters (NaN, bad k/p/min-p, u outside (0, 1))."""


class UnknownComponentError(QRCoreError, LookupError):
    """A registry was asked for a name nobody registered; the message lists what is available.

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


class ComponentLoadError(QRCoreError, ImportError):
    """An installed entry point failed to import, or is not a subclass of the registry's base.

    The message names the distribution, the entry point and the original error
    (also chained as ``__cause__``).

    Attributes:
        name: The component name that was selected.
        distribution: The distribution that declares the entry point.
    """

    def __init__(self, message: str, *, name: str = "", distribution: str = "") -> None:
        super().__init__(message)
        self.name = name
        self.distribution = distribution

    def __reduce__(self) -> tuple[object, ...]:
        state = {"name": self.name, "distribution": self.distribution}
        return (_rebuild, (type(self), str(self), state))


def _rebuild(cls: type[QRCoreError], message: str, state: dict[str, object]) -> QRCoreError:
    # Pickling (multiprocessing, vLLM's workers) keeps the attributes, not just the message.
    error = cls(message)
    for key, value in state.items():
        setattr(error, key, value)
    return error

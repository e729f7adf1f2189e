"""Exception hierarchy of qr_core: one root, one subclass per stage."""

from __future__ import annotations

__all__ = [
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
    """A registry was asked for a name nobody registered; the message lists what is available."""

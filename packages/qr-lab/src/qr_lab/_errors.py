"""The exceptions qr_lab raises; each message names what is wrong and what is allowed."""

from __future__ import annotations

__all__ = ["QRLabError", "RegistrationError", "RunError", "StudyError"]


class QRLabError(Exception):
    """Base class of qr_lab's errors."""


class StudyError(QRLabError):
    """The study file is invalid: the message names the field."""


class RegistrationError(QRLabError):
    """The study is not registered, or it changed after registration."""


class RunError(QRLabError):
    """A run directory is missing, inconsistent, or the engine could not be reached."""

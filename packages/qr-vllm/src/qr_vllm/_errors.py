"""The exception hierarchy of qr_vllm: one root, one subclass per kind of failure."""

from __future__ import annotations

__all__ = [
    "ConfigValidationError",
    "QRVllmError",
    "RecordsPathError",
    "UnsupportedEngineError",
    "UnsupportedVllmError",
]


class QRVllmError(Exception):
    """Root of every error raised by qr_vllm."""


class ConfigValidationError(QRVllmError, ValueError):
    """A bad setting or per-request ``qr_*`` argument.

    It derives from ValueError because vLLM turns a ValueError raised by
    ``validate_params`` into an HTTP 400 for the client instead of an engine
    failure. The message names the key, the bad value and what is allowed.
    """


class UnsupportedVllmError(QRVllmError, RuntimeError):
    """The installed vLLM is outside the range this release supports (`SUPPORTED_VLLM`)."""


class RecordsPathError(QRVllmError, RuntimeError):
    """``QR_RECORDS_PATH`` cannot be written: the processor (and so the engine) does not start.

    The message names the path and the reason (a directory, read-only, no parent).
    """


class UnsupportedEngineError(QRVllmError, RuntimeError):
    """vLLM was started with settings the processor cannot serve (it refuses to start)."""

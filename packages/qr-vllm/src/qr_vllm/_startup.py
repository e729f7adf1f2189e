"""Start-up checks of the processor: the entropy source, and the failure stop token.

See ARCHITECTURE.md, design notes "Start-up checks" and "Visible failure".
"""

from __future__ import annotations

import logging
from typing import Any

from qr_entropy import EntropySource

from qr_vllm._config import QRSamplerConfig
from qr_vllm._errors import ConfigValidationError

logger = logging.getLogger("qr_sampler")

__all__ = ["check_failure_token", "check_source"]


def check_source(source: EntropySource, fallback_mode: str) -> None:
    """Check the source once at start (see ARCHITECTURE.md, design note "Start-up checks").

    A failed check is logged at ERROR, once, with the source's own explanation. With
    ``QR_FALLBACK_MODE=error`` it also stops the start (`SourceCheckError`): every
    token would fail. With a fallback, the engine serves from the fallback, every
    such token flagged in its record, and the primary is retried per fetch.

    Raises:
        SourceCheckError: The check failed and ``fallback_mode`` is ``error``.
    """
    result = source.check()
    if result.ok:
        logger.info("entropy source %s checked at start: %s", result.source, result.detail)
        return
    if fallback_mode == "error":
        logger.error(
            "entropy source %s failed its start-up check (%s): %s; QR_FALLBACK_MODE=error, "
            "so the engine does not start",
            result.source,
            result.problem,
            result.detail,
        )
        result.raise_for_failure()
    logger.error(
        "entropy source %s failed its start-up check (%s): %s; serving from the fallback "
        "source (QR_FALLBACK_MODE=%s), every such token flagged is_fallback in its record",
        result.source,
        result.problem,
        result.detail,
        fallback_mode,
    )


def check_failure_token(config: QRSamplerConfig, vllm_config: Any) -> None:
    """Refuse to start when ``QR_FAILURE_STOP_TOKEN_ID`` is not a token of the model.

    Raises:
        ConfigValidationError: The id is not below the model's vocabulary size.
    """
    token = config.failure_stop_token_id
    if token is None:
        return
    model_config = getattr(vllm_config, "model_config", None)
    if model_config is None:
        return  # built outside an engine (tools, tests): nothing to check against
    vocab = int(model_config.get_vocab_size())
    if token >= vocab:
        raise ConfigValidationError(
            f"QR_FAILURE_STOP_TOKEN_ID={token} is not a token of this model: the "
            f"vocabulary has ids 0..{vocab - 1}"
        )

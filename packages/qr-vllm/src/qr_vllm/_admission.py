"""Admission rules that let the plugin end a request it must fail, visibly.

A logits processor cannot end a request: it can only force the next token. vLLM
ends a request when that token is its end-of-sequence token (unless
``ignore_eos``) or one of its ``stop_token_ids``, and in the second case the
OpenAI response says ``finish_reason: "stop"`` with ``stop_reason`` set to that
token id. So (see ARCHITECTURE.md, design note "Visible failure"):

* with ``QR_FAILURE_STOP_TOKEN_ID`` set, admission adds that token to every
  qr-sampled request's ``stop_token_ids``, no request ever chooses it, and a
  failed request is ended with it: ``stop_reason`` equal to it means "the
  plugin failed this request", nothing else;
* without it, a failed request is ended with its own stop token (end of
  sequence, else its first ``stop_token_ids`` entry), and with
  ``QR_FALLBACK_MODE=error`` a request that has none (``ignore_eos`` and no
  ``stop_token_ids``) is refused at admission: it could not be ended, and vLLM's
  own sampler would choose its tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qr_vllm._config import QRSamplerConfig
from qr_vllm._errors import ConfigValidationError

if TYPE_CHECKING:
    from vllm import SamplingParams

__all__ = ["admit", "failure_token_for", "stop_token"]


def admit(params: SamplingParams, config: QRSamplerConfig) -> None:
    """Make ``params`` endable by the plugin, or refuse it (runs in ``validate_params``).

    Raises:
        ConfigValidationError: ``error`` mode, no failure token configured, and the
            request has no stop token (``ignore_eos`` without ``stop_token_ids``).
    """
    if config.bypass:
        return
    token = config.failure_stop_token_id
    if token is not None:
        if params.stop_token_ids is None:
            params.stop_token_ids = []
        if token not in params.stop_token_ids:
            # Idempotent: the same params object may be admitted for several prompts.
            params.stop_token_ids.append(token)
        # vLLM's own view of every stop token (its min_tokens rule reads it).
        params.all_stop_token_ids.add(token)
        return
    if config.fallback_mode == "error" and params.ignore_eos and not params.stop_token_ids:
        raise ConfigValidationError(
            "a request with ignore_eos=true and no stop_token_ids is refused while the "
            "qr-sampler runs with QR_FALLBACK_MODE=error: if its entropy fails, the "
            "plugin must end it by forcing a stop token, and it has none (vLLM would "
            "then choose its tokens itself). Add stop_token_ids, leave ignore_eos off, "
            "or ask the operator to set QR_FAILURE_STOP_TOKEN_ID"
        )


def failure_token_for(config: QRSamplerConfig, params: SamplingParams) -> int | None:
    """The configured failure token when admission gave it to this request, else None."""
    token = config.failure_stop_token_id
    if token is not None and token in (params.stop_token_ids or ()):
        return token
    return None


def stop_token(params: SamplingParams, failure_token: int | None) -> int:
    """The token that ends the request when it fails (-1: none; vLLM then picks tokens)."""
    if failure_token is not None:
        return failure_token
    eos = params.eos_token_id
    if eos is not None and not params.ignore_eos:
        return int(eos)
    if params.stop_token_ids:
        return int(params.stop_token_ids[0])
    return -1

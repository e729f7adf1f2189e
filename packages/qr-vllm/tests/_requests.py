"""Helpers that build real resolved requests in slots, for the hot-path unit tests.

They need neither torch nor vLLM: the components come from qr_core's registries
through the processor's own `RequestResolver`, with the defaults of a clean
environment.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from qr_vllm import QRSamplerConfig
from qr_vllm._records import RequestInfo
from qr_vllm._resolve import RequestResolver, ResolvedRequest
from qr_vllm._slots import SlotState

_serials = itertools.count(1)


def resolver(**settings: Any) -> RequestResolver:
    settings.setdefault("entropy_source_type", "mock_uniform")
    settings.setdefault("sample_count", 32)
    return RequestResolver(QRSamplerConfig(**settings))


def info(resolved: ResolvedRequest, serial: int) -> RequestInfo:
    config = resolved.config
    return RequestInfo(
        request_serial=serial,
        session=config.session,
        label=config.label,
        config_hash=resolved.config_hash,
        temperature_strategy=resolved.strategy.name,
        signal_amplifier=resolved.amplifier.name,
        source=config.source,
        sample_count=config.sample_count,
        v_bytes=resolved.amplifier.row_bytes(config.sample_count) - config.sample_count,
        top_k=max(config.top_k, 0),
        top_p=config.top_p,
        min_p=config.min_p,
        log_full=False,
        diagnostic=True,
    )


def state(
    res: RequestResolver,
    *,
    stop_token: int = 5,
    penalties: tuple[float, float, float] | None = None,
    output_ids: Sequence[int] | None = None,
    failure: str = "",
    **qr: Any,
) -> SlotState:
    """A request with the ``qr_*`` arguments ``qr`` (keys without the prefix)."""
    resolved = res.resolve({f"qr_{k}": v for k, v in qr.items()} or None)
    return SlotState(
        request=resolved,
        info=info(resolved, next(_serials)),
        stop_token=stop_token,
        prompt_ids=[1, 2, 3],
        output_ids=output_ids,
        penalties=penalties,
        failure=failure,
    )

"""Per-request resolution: ``extra_args`` → configuration + built components, cached.

Resolution runs once per distinct set of ``qr_*`` arguments (requests that send
the same arguments share the result), so a request costs nothing per step.
Components (temperature strategy, amplifier) are shared between configurations
that give them the same constructor arguments, so rows of requests that differ
only in top-k, say, still run in one batched call.

Both caches are bounded (least recently used entries are dropped): a client that
sends a new value with every request costs a resolution each time, never memory
without bound, in the API server (admission) as in the engine. See
ARCHITECTURE.md, design note "Bounded admission caches".
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qr_core import (
    AmplifierRegistry,
    QRCoreError,
    SignalAmplifier,
    TemperatureStrategy,
    TemperatureStrategyRegistry,
)

from qr_vllm._config import QRSamplerConfig, config_hash, resolve_config
from qr_vllm._errors import ConfigValidationError

logger = logging.getLogger(__name__)

__all__ = ["MAX_CACHED_COMPONENTS", "MAX_CACHED_REQUESTS", "RequestResolver", "ResolvedRequest"]

#: Distinct ``qr_*`` argument sets whose resolution is kept.
MAX_CACHED_REQUESTS = 1024
#: Distinct components (strategy or amplifier with its constructor arguments) kept.
MAX_CACHED_COMPONENTS = 256


@dataclass(frozen=True, slots=True)
class ResolvedRequest:
    """A request's configuration with the components built from it."""

    config: QRSamplerConfig
    config_hash: str
    strategy: TemperatureStrategy
    amplifier: SignalAmplifier


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    # type() keeps 1 and True and 1.0 apart: they resolve to different settings.
    return (type(value).__name__, value)


class RequestResolver:
    """Resolve and cache requests' configurations against one set of defaults.

    Args:
        defaults: The server's configuration.
        max_cached: Distinct argument sets kept (least recently used are dropped).
        max_components: Distinct components kept (least recently used are dropped;
            a request that holds one keeps it alive, it is only no longer shared).
    """

    def __init__(
        self,
        defaults: QRSamplerConfig,
        max_cached: int = MAX_CACHED_REQUESTS,
        max_components: int = MAX_CACHED_COMPONENTS,
    ) -> None:
        if max_cached < 1 or max_components < 1:
            raise ValueError(
                f"max_cached={max_cached} and max_components={max_components} must be >= 1"
            )
        self.defaults = defaults
        self._max_cached = max_cached
        self._max_components = max_components
        self._cache: OrderedDict[Any, ResolvedRequest] = OrderedDict()
        self._components: OrderedDict[Any, Any] = OrderedDict()

    def cache_sizes(self) -> tuple[int, int]:
        """(argument sets, components) held now; never above the bounds."""
        return len(self._cache), len(self._components)

    def resolve(self, extra_args: Mapping[str, Any] | None) -> ResolvedRequest:
        """The resolved request for ``extra_args``.

        Raises:
            ConfigValidationError: A bad ``qr_*`` key or value, or a component that
                is not installed or refuses its parameters.
        """
        key = _freeze({k: v for k, v in (extra_args or {}).items() if str(k).startswith("qr_")})
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        config = resolve_config(self.defaults, extra_args)
        resolved = ResolvedRequest(
            config=config,
            config_hash=config_hash(config),
            strategy=self._component(
                TemperatureStrategyRegistry,
                config.temperature_strategy,
                config,
                "temperature_strategy",
            ),
            amplifier=self._component(
                AmplifierRegistry, config.signal_amplifier_type, config, "signal_amplifier_type"
            ),
        )
        self._cache[key] = resolved
        if len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        return resolved

    def _component(self, registry: Any, name: str, config: QRSamplerConfig, field: str) -> Any:
        try:
            cls = registry.get(name)
        except QRCoreError as exc:
            raise ConfigValidationError(f"{field}={name!r} is not allowed: {exc}") from exc
        params = config.model_dump()
        accepted = inspect.signature(cls.__init__).parameters
        relevant = tuple(sorted((k, _freeze(params[k])) for k in accepted if k in params))
        key = (registry.__name__, name, relevant)
        component = self._components.get(key)
        if component is not None:
            self._components.move_to_end(key)
        else:
            try:
                component = registry.build(name, **params)
            except QRCoreError as exc:
                raise ConfigValidationError(
                    f"{field}={name!r} refused its parameters {dict(relevant)}: {exc}"
                ) from exc
            self._components[key] = component
            if len(self._components) > self._max_components:
                self._components.popitem(last=False)
        return component

"""The processor's configuration: `QRSamplerConfig` and per-request resolution.

One pydantic-settings model holds everything: the entropy settings of qr_entropy
(composed by inheritance), the sampling fields, and qr-vllm's own
infrastructure (records, logging). Values come from keyword arguments, then
``QR_*`` environment variables, then a ``.env`` file, then the defaults.

A request overrides the sampling fields only, through ``qr_*`` keys of
``SamplingParams.extra_args``. Resolution validates the merged values and
builds a new model; the defaults are never mutated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from qr_core import DEFAULT_UNIFORM_CLAMP_EPSILON, POPULATION_MEAN, POPULATION_STD
from qr_entropy import EntropySettings

from qr_vllm._errors import ConfigValidationError

__all__ = [
    "EXTRA_ARGS_PREFIX",
    "INFRASTRUCTURE_FIELDS",
    "PER_REQUEST_FIELDS",
    "TRANSPORT_PREFIXES",
    "LogLevel",
    "QRSamplerConfig",
    "config_hash",
    "request_overrides",
    "resolve_config",
]

#: Prefix of the per-request keys in ``SamplingParams.extra_args``.
EXTRA_ARGS_PREFIX = "qr_"

LogLevel = Literal["none", "summary", "full"]

#: Longest accepted ``qr_session`` / ``qr_label``: they are copied into every record.
MAX_TAG_LENGTH = 256

#: Longest rendering of a bad value in an error message: a 400 body never echoes a large input.
MAX_SHOWN_VALUE = 80

#: Most bytes one token may ask for (1 MiB): far above any useful amplification,
#: low enough that one request cannot make every step of the engine fetch gigabytes.
MAX_SAMPLE_COUNT = 1024 * 1024


class QRSamplerConfig(EntropySettings):
    """Every setting of the qr-sampler processor (environment prefix ``QR_``).

    The entropy fields (``entropy_source_type``, ``fallback_mode``, ``mock_*``,
    ``timing_*``, ``health_*``, ``max_request_bytes``) come from
    `qr_entropy.EntropySettings`; gRPC settings (``QR_GRPC_*``, ``QR_CB_*``) are
    read by the gRPC source itself. Fields in `PER_REQUEST_FIELDS` may be
    overridden per request with ``qr_<field>`` keys in ``extra_args``.
    """

    # --- sampling (per-request overridable) ---------------------------------
    signal_amplifier_type: str = Field(
        default="zscore_mean",
        min_length=1,
        max_length=MAX_TAG_LENGTH,
        description="Amplifier name in qr_core's registry.",
    )
    sample_count: int = Field(
        default=20480, ge=1, le=MAX_SAMPLE_COUNT, description="Entropy bytes fetched per token."
    )
    population_mean: float = Field(
        default=POPULATION_MEAN, gt=0.0, lt=255.0, description="Null-hypothesis mean of a byte."
    )
    population_std: float = Field(
        default=POPULATION_STD,
        gt=0.0,
        le=128.0,
        description="Null-hypothesis standard deviation of a byte: √((256² − 1)/12) = 73.9003.",
    )
    uniform_clamp_epsilon: float = Field(
        default=DEFAULT_UNIFORM_CLAMP_EPSILON,
        gt=0.0,
        lt=0.5,
        description="u is clamped to [epsilon, 1 - epsilon].",
    )
    temperature_strategy: str = Field(
        default="fixed",
        min_length=1,
        max_length=MAX_TAG_LENGTH,
        description="Temperature strategy name: fixed or edt.",
    )
    fixed_temperature: float = Field(
        default=0.7, ge=0.0, le=100.0, description="Temperature of the fixed strategy (0: greedy)."
    )
    edt_base_temp: float = Field(default=0.8, gt=0.0, le=100.0, description="EDT base temperature.")
    edt_exponent: float = Field(default=0.5, gt=0.0, le=10.0, description="EDT power-law exponent.")
    edt_min_temp: float = Field(default=0.1, ge=0.0, le=100.0, description="EDT temperature floor.")
    edt_max_temp: float = Field(
        default=2.0, gt=0.0, le=100.0, description="EDT temperature ceiling."
    )
    top_k: int = Field(
        default=50, ge=-1, le=2**31 - 1, description="Top-k filter; 0 or -1 disables it."
    )
    top_p: float = Field(
        default=0.9, gt=0.0, le=1.0, description="Nucleus (top-p) threshold; 1.0 disables it."
    )
    min_p: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Min-p filter relative to the top token; 0 off."
    )
    bypass: bool = Field(
        default=False,
        description=(
            "Leave the request to vLLM's own sampling (a control arm): no entropy, no records."
        ),
    )
    session: str = Field(
        default="", max_length=MAX_TAG_LENGTH, description="Free-form tag copied into records."
    )
    label: str = Field(
        default="", max_length=MAX_TAG_LENGTH, description="Free-form tag copied into records."
    )
    log_level: LogLevel = Field(
        default="summary",
        description="Logging: none, summary (per-step line at DEBUG), full (every token at INFO).",
    )
    diagnostic_mode: bool = Field(
        default=False, description="Keep this request's records in memory (bounded)."
    )

    # --- infrastructure (never per request) ---------------------------------
    records_path: Path | None = Field(
        default=None, description="JSON Lines file that receives one record per token; unset: off."
    )
    records_queue_steps: int = Field(
        default=4096,
        ge=1,
        le=1_000_000,
        description="Decode steps the records writer may fall behind before records are dropped.",
    )
    diagnostic_max_records: int = Field(
        default=100_000, ge=1, le=100_000_000, description="Records kept in memory at most."
    )
    failure_stop_token_id: int | None = Field(
        default=None,
        ge=0,
        description=(
            "A token the model never needs (a reserved special token): admission adds it to "
            "every qr-sampled request's stop_token_ids, no request ever chooses it, and a "
            "request the plugin must fail is ended with it, so that the response says "
            "finish_reason=stop with stop_reason equal to this id. Unset: a failed request "
            "is ended with its own stop token, and in fallback mode 'error' a request with "
            "ignore_eos and no stop_token_ids is refused at admission."
        ),
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics endpoint of the sampling process "
        "(plus vLLM's data-parallel rank); 0: metrics and the drift monitor are off.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the metrics endpoint binds to (0.0.0.0 to let another host scrape).",
    )
    metrics_drift_window: int = Field(
        default=10_000,
        ge=10,
        le=10_000_000,
        description="Tokens in the drift monitor's sliding window of Stouffer Z.",
    )
    metrics_drift_z_threshold: float = Field(
        default=4.0,
        ge=0.0,
        le=100.0,
        description="|Stouffer Z| (window or lifetime) that logs a drift warning; 0: no warning.",
    )

    @model_validator(mode="after")
    def _check_edt_range(self) -> QRSamplerConfig:
        if self.edt_min_temp > self.edt_max_temp:
            raise ValueError(
                f"edt_min_temp={self.edt_min_temp} must not exceed edt_max_temp={self.edt_max_temp}"
            )
        if self.sample_count > self.max_request_bytes:
            raise ValueError(
                f"sample_count={self.sample_count} exceeds max_request_bytes="
                f"{self.max_request_bytes}"
            )
        return self


#: The fields a request may override with ``qr_<field>``.
PER_REQUEST_FIELDS: frozenset[str] = frozenset(
    {
        "signal_amplifier_type",
        "sample_count",
        "population_mean",
        "population_std",
        "uniform_clamp_epsilon",
        "temperature_strategy",
        "fixed_temperature",
        "edt_base_temp",
        "edt_exponent",
        "edt_min_temp",
        "edt_max_temp",
        "top_k",
        "top_p",
        "min_p",
        "bypass",
        "session",
        "label",
        "log_level",
        "diagnostic_mode",
    }
)

#: Fields of `QRSamplerConfig` that configure the server (the entropy source and
#: its fallback and guards, records, logging): refused per request.
INFRASTRUCTURE_FIELDS: frozenset[str] = frozenset(
    set(QRSamplerConfig.model_fields) - PER_REQUEST_FIELDS
)

#: Prefixes of the settings that transport plugins read from their own ``QR_*``
#: variables (qr-grpc: ``QR_GRPC_*`` and its circuit breaker's ``QR_CB_*``). qr-vllm
#: does not know their fields (it never imports a transport); a request key with
#: one of these prefixes is refused as infrastructure, whatever the plugin adds.
TRANSPORT_PREFIXES: tuple[str, ...] = ("grpc_", "cb_")


def is_infrastructure(field: str) -> bool:
    """Whether ``field`` (a ``qr_`` key without the prefix) is a server-side setting."""
    return field in INFRASTRUCTURE_FIELDS or field.startswith(TRANSPORT_PREFIXES)


# Per-request fields that hold a number (int or float): a JSON boolean is refused for them.
_NUMBER_FIELDS: frozenset[str] = frozenset(
    name
    for name in PER_REQUEST_FIELDS
    if QRSamplerConfig.model_fields[name].annotation in (int, float)
)

# Fields that do not change how a token is chosen; left out of the hash so that
# records of one study share a config hash across sessions, labels and log files.
_HASH_EXCLUDED = frozenset(
    {
        "session",
        "label",
        "log_level",
        "diagnostic_mode",
        "records_path",
        "records_queue_steps",
        "diagnostic_max_records",
        "max_request_bytes",
        "metrics_port",
        "metrics_host",
        "metrics_drift_window",
        "metrics_drift_z_threshold",
    }
)


def request_overrides(extra_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``qr_*`` items of ``extra_args`` with the prefix stripped; other keys are ignored.

    Keys without the prefix belong to other plugins and are left alone.

    Raises:
        ConfigValidationError: A ``qr_`` key names an infrastructure field or no
            field at all (the message lists the allowed keys).
    """
    if not extra_args:
        return {}
    overrides: dict[str, Any] = {}
    for key, value in extra_args.items():
        if not isinstance(key, str) or not key.startswith(EXTRA_ARGS_PREFIX):
            continue
        field = key[len(EXTRA_ARGS_PREFIX) :]
        if field in PER_REQUEST_FIELDS:
            overrides[field] = value
        elif is_infrastructure(field):
            raise ConfigValidationError(
                f"extra_args key {shown(key)} is not allowed per request: {_env_name(field)} "
                f"is an infrastructure setting, set it with the environment variable "
                f"{_env_name(field, 'QR_')} on the server"
            )
        else:
            allowed = ", ".join(sorted(EXTRA_ARGS_PREFIX + name for name in PER_REQUEST_FIELDS))
            raise ConfigValidationError(
                f"unknown extra_args key {shown(key)} (value {shown(value)}); "
                f"allowed qr_ keys: {allowed}"
            )
    return overrides


def resolve_config(
    defaults: QRSamplerConfig, extra_args: Mapping[str, Any] | None
) -> QRSamplerConfig:
    """Build the configuration of one request: the defaults with its ``qr_*`` overrides.

    Args:
        defaults: The server's configuration; it is not modified.
        extra_args: ``SamplingParams.extra_args`` of the request (may be None).

    Returns:
        ``defaults`` itself when the request overrides nothing, else a new,
        validated `QRSamplerConfig`.

    Raises:
        ConfigValidationError: A bad key or value; the message names the key,
            the value and what is allowed.
    """
    overrides = request_overrides(extra_args)
    if not overrides:
        return defaults
    for field, value in overrides.items():
        # pydantic would accept a float for an int field if it is integral and a
        # string for a bool; a list or dict is never a valid setting.
        if isinstance(value, list | dict | tuple):
            raise ConfigValidationError(
                f"extra_args key {EXTRA_ARGS_PREFIX}{field!s}={shown(value)} is not allowed: "
                "expected a single value, not a collection"
            )
        # JSON true/false is a bool, and a bool is an int in Python: pydantic would take
        # qr_sample_count=true as 1 byte. A number field wants a JSON number.
        if isinstance(value, bool) and field in _NUMBER_FIELDS:
            raise ConfigValidationError(
                f"extra_args key {EXTRA_ARGS_PREFIX}{field}={value!r} is not allowed: "
                f"expected a number, not a boolean"
            )
    merged = defaults.model_dump()
    merged.update(overrides)
    try:
        # Validated without the settings sources: the defaults already hold the
        # environment, and reading it (and .env) again per request cost ~15 ms.
        checked = _RequestConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigValidationError(_describe(exc, overrides)) from exc
    return QRSamplerConfig.model_construct(
        _fields_set=set(checked.model_fields_set), **dict(checked)
    )


class _RequestConfig(QRSamplerConfig):
    """`QRSamplerConfig` validated from its arguments only (no environment, no .env)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _describe(exc: ValidationError, overrides: Mapping[str, Any]) -> str:
    problems = []
    for error in exc.errors():
        loc = error.get("loc") or ()
        field = str(loc[0]) if loc else ""
        if field in overrides:
            problems.append(
                f"extra_args key {EXTRA_ARGS_PREFIX}{field}={shown(overrides[field])} is not "
                f"allowed: {error['msg']}"
            )
        else:
            # A cross-field rule (edt range, sample_count vs max_request_bytes).
            given = ", ".join(f"{EXTRA_ARGS_PREFIX}{k}={shown(v)}" for k, v in overrides.items())
            problems.append(f"extra_args {given} are not allowed together: {error['msg']}")
    return "; ".join(problems)


def _env_name(field: str, prefix: str = "") -> str:
    name = prefix + (field.upper() if prefix else field)
    return name if len(name) <= MAX_SHOWN_VALUE else shown(name)


def shown(value: Any) -> str:
    """``repr(value)``, cut to `MAX_SHOWN_VALUE` characters for error messages."""
    text = repr(value)
    if len(text) <= MAX_SHOWN_VALUE:
        return text
    return f"{text[: MAX_SHOWN_VALUE - 3]}... ({len(text)} characters)"


def config_hash(config: QRSamplerConfig) -> str:
    """A short, stable hash of every field that influences how a token is chosen."""
    payload = config.model_dump(mode="json", exclude=set(_HASH_EXCLUDED))
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]

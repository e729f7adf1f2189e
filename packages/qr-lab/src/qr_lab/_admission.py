"""Check a condition's ``qr_*`` request arguments the way the engine will admit them.

When qr-vllm is installed its own admission rules (``qr_vllm.resolve_config``)
decide, so the study is refused for exactly what the engine would refuse. On a
laptop without qr-vllm, `KNOWN_KEYS` (kept equal to qr-vllm's per-request
fields by a test) checks the key names and value ranges.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["KNOWN_KEYS", "RESERVED_KEYS", "KeyRule", "check_request_args", "engine_rules"]


@dataclass(frozen=True, slots=True)
class KeyRule:
    """What one ``qr_<field>`` key accepts.

    Attributes:
        kind: ``int``, ``float``, ``bool`` or ``str``.
        low: Lower bound (None: none); ``low_open`` makes it exclusive.
        high: Upper bound (None: none); ``high_open`` makes it exclusive.
        choices: For strings, the allowed values (empty: any non-empty string).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused, or None when it is accepted."""
        if self.kind == "bool":
            return None if isinstance(value, bool) or value in (0, 1) else "expected a boolean"
        if self.kind == "str":
            if not isinstance(value, str) or not value:
                return "expected a non-empty string"
            if self.choices and value not in self.choices:
                return f"expected one of {', '.join(self.choices)}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected a number ({self.kind})"
        if self.kind == "int" and not float(value).is_integer():
            return "expected an integer"
        if not math.isfinite(value):
            return "expected a finite number"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {'<' if self.high_open else '<='} {self.high:g}"
        return None


#: qr-vllm's per-request fields (``qr_<field>``) and their ranges, for machines
#: without qr-vllm. ``source`` is the named entropy source of a request.
KNOWN_KEYS: dict[str, KeyRule] = {
    "signal_amplifier_type": KeyRule("str"),
    "sample_count": KeyRule("int", 1, 1024 * 1024),
    "population_mean": KeyRule("float", 0.0, 255.0, low_open=True, high_open=True),
    "population_std": KeyRule("float", 0.0, 128.0, low_open=True),
    "uniform_clamp_epsilon": KeyRule("float", 0.0, 0.5, low_open=True, high_open=True),
    "temperature_strategy": KeyRule("str"),
    "fixed_temperature": KeyRule("float", 0.0, 100.0),
    "edt_base_temp": KeyRule("float", 0.0, 100.0, low_open=True),
    "edt_exponent": KeyRule("float", 0.0, 10.0, low_open=True),
    "edt_min_temp": KeyRule("float", 0.0, 100.0),
    "edt_max_temp": KeyRule("float", 0.0, 100.0, low_open=True),
    "top_k": KeyRule("int", -1, 2**31 - 1),
    "top_p": KeyRule("float", 0.0, 1.0, low_open=True),
    "min_p": KeyRule("float", 0.0, 1.0, high_open=True),
    "bypass": KeyRule("bool"),
    "session": KeyRule("str"),
    "label": KeyRule("str"),
    "log_level": KeyRule("str", choices=("none", "summary", "full")),
    "diagnostic_mode": KeyRule("bool"),
    "source": KeyRule("str"),
}

#: Keys qr-lab sets itself on every request: a condition may not set them.
RESERVED_KEYS = frozenset({"session", "label"})


def engine_rules() -> Any | None:
    """qr-vllm's configuration module when qr-vllm is installed, else None.

    Imported by name at call time: qr_lab itself never imports qr_vllm, so it
    installs and runs without it (qr_vllm's configuration needs no vLLM).
    """
    try:
        return importlib.import_module("qr_vllm._config")
    except ImportError:
        return None


def check_request_args(args: dict[str, Any]) -> list[str]:
    """The problems of one condition's ``qr_*`` arguments (empty: all accepted).

    Each problem names the key, the value and what is allowed.
    """
    problems = []
    for key, value in args.items():
        field = key[3:]
        if field in RESERVED_KEYS:
            problems.append(
                f"{key} is set by qr-lab on every request (trial id / condition code); "
                "remove it from the condition"
            )
        elif field not in KNOWN_KEYS:
            allowed = ", ".join(f"qr_{k}" for k in sorted(set(KNOWN_KEYS) - RESERVED_KEYS))
            problems.append(f"unknown key {key!r}; allowed qr_ keys: {allowed}")
        elif (why := KNOWN_KEYS[field].problem(value)) is not None:
            problems.append(f"{key}={value!r} is refused: {why}")
    if problems:
        return problems
    config = engine_rules()
    if config is None:
        return []
    engine_args = dict(args)
    if "qr_source" in engine_args and "source" not in config.PER_REQUEST_FIELDS:
        return [
            "qr_source is refused: the installed qr-vllm has no named sources "
            "(upgrade qr-vllm, or remove qr_source)"
        ]
    try:
        defaults = config.QRSamplerConfig()
    except Exception:
        defaults = config.QRSamplerConfig.model_construct()
    try:
        config.resolve_config(defaults, engine_args)
    except Exception as exc:
        return [f"refused by the engine's rules: {exc}"]
    return []

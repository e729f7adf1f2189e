"""How configuration errors show values: reprs cut to a length, request overrides' errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

__all__ = ["MAX_SHOWN_VALUE", "describe_overrides", "shown"]

#: Longest rendering of a bad value in an error message: a 400 body never echoes a large input.
MAX_SHOWN_VALUE = 80


def describe_overrides(exc: ValidationError, overrides: Mapping[str, Any], prefix: str) -> str:
    """The problems of a request's ``qr_*`` overrides, each naming the key and value."""
    problems = []
    for error in exc.errors():
        loc = error.get("loc") or ()
        field = str(loc[0]) if loc else ""
        if field in overrides:
            problems.append(
                f"extra_args key {prefix}{field}={shown(overrides[field])} is not "
                f"allowed: {error['msg']}"
            )
        else:
            # A cross-field rule (edt range, sample_count vs max_request_bytes).
            given = ", ".join(f"{prefix}{k}={shown(v)}" for k, v in overrides.items())
            problems.append(f"extra_args {given} are not allowed together: {error['msg']}")
    return "; ".join(problems)


def shown(value: Any) -> str:
    """``repr(value)``, cut to `MAX_SHOWN_VALUE` characters for error messages."""
    text = repr(value)
    if len(text) <= MAX_SHOWN_VALUE:
        return text
    return f"{text[: MAX_SHOWN_VALUE - 3]}... ({len(text)} characters)"

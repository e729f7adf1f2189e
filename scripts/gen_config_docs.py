#!/usr/bin/env python3
"""Generate the README's configuration reference from the settings models.

The tables between ``<!-- config-table:start -->`` and ``<!-- config-table:end -->``
in README.md are written from the pydantic-settings models themselves (field
names, environment variables, defaults, one-line descriptions, and which
fields a request may override through ``vllm_xargs``), so the reference cannot
drift from the code. tests-repo/test_readme_config.py fails when they are stale.

Usage:
    python scripts/gen_config_docs.py           # rewrite the tables in README.md
    python scripts/gen_config_docs.py --check   # exit 1 if README.md is stale
    python scripts/gen_config_docs.py --print   # print the tables

Run it in an environment where the four packages are installed (the uv
workspace environment or the vLLM environment); it imports no vLLM or torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"


@dataclass(frozen=True, slots=True)
class Section:
    """One table: the fields a settings model adds to the one it extends."""

    title: str
    intro: str
    model_path: str  # "module:ClassName"
    base_path: str | None = None  # fields of this model are left out (documented above)
    per_request: Callable[[], Iterable[str]] | None = None


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _per_request_fields() -> Iterable[str]:
    return _load("qr_vllm:PER_REQUEST_FIELDS")  # type: ignore[no-any-return]


SECTIONS = (
    Section(
        title="Entropy source and fallback (qr-entropy, `EntropySettings`)",
        intro="Read by every process that fetches entropy: vLLM, `qr-entropy`, the entropy server.",
        model_path="qr_entropy:EntropySettings",
    ),
    Section(
        title="gRPC transport (qr-grpc, `GrpcSettings`)",
        intro="Read when `QR_ENTROPY_SOURCE_TYPE=quantum_grpc`.",
        model_path="qr_grpc:GrpcSettings",
    ),
    Section(
        title="Sampling in vLLM (qr-vllm, `QRSamplerConfig`)",
        intro=(
            "`QRSamplerConfig` extends `EntropySettings` with these fields. A field with a "
            "`vllm_xargs` key can be overridden per request; the others are fixed when vLLM starts."
        ),
        model_path="qr_vllm:QRSamplerConfig",
        base_path="qr_entropy:EntropySettings",
        per_request=_per_request_fields,
    ),
)


def _env_name(model: Any, field_name: str, field: Any) -> str:
    prefix = str(model.model_config.get("env_prefix", ""))
    alias = field.validation_alias if isinstance(field.validation_alias, str) else None
    return (alias or f"{prefix}{field_name}").upper()


def _format_default(field: Any) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default
    secret = getattr(value, "get_secret_value", None)
    if callable(secret):
        value = secret()
    if isinstance(value, Enum):
        value = value.value
    if value is None:
        return "*(unset)*"
    if value == "":
        return "*(empty)*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e7):
        return f"`{value:.6g}`"
    if isinstance(value, (list, tuple, set, frozenset)):
        return "`" + ",".join(str(v) for v in value) + "`" if value else "*(empty)*"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_section(section: Section) -> str:
    """Render one section's table as Markdown."""
    model = _load(section.model_path)
    inherited = set(_load(section.base_path).model_fields) if section.base_path else set()
    per_request = set(section.per_request()) if section.per_request else set()
    unknown = per_request - set(model.model_fields)
    if unknown:
        raise SystemExit(f"per-request fields {sorted(unknown)} are not fields of {model.__name__}")
    lines = [f"#### {section.title}", "", section.intro, ""]
    if section.per_request:
        lines += [
            "| Environment variable | `vllm_xargs` key | Default | Description |",
            "|---|---|---|---|",
        ]
    else:
        lines += ["| Environment variable | Default | Description |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in inherited:
            continue
        description = field.description
        if not description:
            raise SystemExit(
                f"{model.__name__}.{name} has no description: add Field(description=...)"
            )
        env = f"`{_env_name(model, name, field)}`"
        row = [env]
        if section.per_request:
            row.append(f"`qr_{name}`" if name in per_request else "—")
        row += [_format_default(field), _cell(description)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render() -> str:
    """All sections, as they appear between the README markers."""
    return "\n\n".join(render_section(s) for s in SECTIONS)


def splice(text: str, tables: str) -> str:
    """Return the README text with the tables replaced between the markers."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise SystemExit(f"README.md must hold exactly one {START} and one {END}")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    note = "<!-- generated by scripts/gen_config_docs.py; do not edit by hand -->"
    return f"{head}{START}\n{note}\n\n{tables}\n\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    mode.add_argument("--print", action="store_true", help="print the tables to stdout")
    parser.add_argument("--readme", type=Path, default=README, help="the file to update")
    args = parser.parse_args(argv)

    tables = render()
    if args.print:
        sys.stdout.write(tables + "\n")
        return 0
    current = args.readme.read_text(encoding="utf-8")
    updated = splice(current, tables)
    if args.check:
        if updated != current:
            sys.stderr.write(f"{args.readme} is stale: run `python scripts/gen_config_docs.py`\n")
            return 1
        return 0
    if updated != current:
        args.readme.write_text(updated, encoding="utf-8")
        sys.stderr.write(f"updated {args.readme}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

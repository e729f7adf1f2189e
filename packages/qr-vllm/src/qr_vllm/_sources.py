"""Named entropy sources of one engine: ``QR_SOURCES``, each source's settings, building them.

``QR_SOURCES`` maps names to settings, for example
``{"qrng": {"entropy_source_type": "quantum_grpc", "grpc_server_address": "unix:///run/q.sock"},
"control": {"entropy_source_type": "system"}}``. Each named source is built like the
engine's own (`qr_entropy.build_entropy_source`) from the engine's entropy settings
with the entry's fields on top, so it has its own fallback, health tests and (for
gRPC) breaker. The engine's own source is named ``default``. A request picks one
with ``qr_source``. See ARCHITECTURE.md, design note "Named sources".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict
from qr_entropy import QR_SETTINGS_CONFIG, EntropySettings, EntropySource, build_entropy_source

__all__ = [
    "DEFAULT_SOURCE",
    "HASH_EXCLUDED_NAMED",
    "HELP",
    "build_named_sources",
    "check_named",
    "check_sources",
    "known_sources",
    "source_settings",
]

#: The name of the engine's own source (``QR_ENTROPY_SOURCE_TYPE`` and friends).
DEFAULT_SOURCE = "default"

#: Descriptions of the configuration fields this module and the records work add.
HELP = {
    "signal_amplifier_type": "Amplifier name in qr_core's registry (randomized_pit, "
    "zscore_mean, ...).",
    "sample_count": "Entropy bytes summed per token (S bytes); the amplifier may fetch more "
    "(randomized_pit: 7 V bytes per token).",
    "records_path": "JSON Lines file that receives one record per token; unset: off. "
    "{engine_id} and {dp_rank} in it are filled in per engine.",
    "sources": "Named entropy sources besides the engine's own ('default'), as JSON: "
    "name -> entropy settings (and grpc_* / cb_* transport settings); requests pick one "
    "with qr_source.",
    "replay_u": "Replay: the u of the request's tokens, in order (from its records); they "
    "choose the tokens instead of the source's bytes (qr-vllm replay sets it).",
    "source": "Which named source chooses this request's tokens ('default': the engine's "
    "own; else a name of QR_SOURCES).",
}

#: Left out of the config hash: where the bytes come from, not how they choose (both
#: arms of a study share a hash), and a replay's u (it replays the original rule).
HASH_EXCLUDED_NAMED = ("source", "sources", "replay_u")

#: Longest source name: it is copied into every record.
MAX_NAME_LENGTH = 64

# Settings a transport plugin reads itself (qr-grpc: grpc_*, cb_*); allowed in an entry.
_TRANSPORT_PREFIXES = ("grpc_", "cb_")


class _NamedSourceSettings(EntropySettings):
    """Entropy settings that keep an entry's transport fields for the source to read."""

    model_config = SettingsConfigDict(**{**QR_SETTINGS_CONFIG, "extra": "allow"})


def check_sources(sources: Mapping[str, Mapping[str, Any]]) -> None:
    """Check names and keys of ``QR_SOURCES`` (values are checked when a source is built).

    Raises:
        ValueError: A bad name or a key that is no entropy or transport setting.
    """
    allowed = sorted(EntropySettings.model_fields)
    for name, entry in sources.items():
        if (
            not name
            or len(name) > MAX_NAME_LENGTH
            or not name.replace("_", "").replace("-", "").isalnum()
        ):
            raise ValueError(
                f"sources: name {name!r} must be 1-{MAX_NAME_LENGTH} letters, digits, '_' or '-'"
            )
        if name == DEFAULT_SOURCE:
            raise ValueError(
                f"sources: {DEFAULT_SOURCE!r} is the engine's own source (QR_ENTROPY_SOURCE_TYPE "
                "and its settings); give the other sources other names"
            )
        for key in entry:
            if key not in EntropySettings.model_fields and not key.startswith(_TRANSPORT_PREFIXES):
                raise ValueError(
                    f"sources[{name!r}]: {key!r} is not an entropy setting; allowed: "
                    f"{', '.join(allowed)}, or a transport's grpc_* / cb_* setting"
                )
        try:
            source_settings(EntropySettings(), entry)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}={e.get('input')!r}: {e['msg']}"
                for e in error.errors()
            )
            raise ValueError(f"sources[{name!r}]: {problems}") from None


def known_sources(sources: Mapping[str, Any]) -> tuple[str, ...]:
    """Every name a request may pick: ``default`` first, then ``QR_SOURCES`` in order."""
    return (DEFAULT_SOURCE, *sources)


def source_settings(base: EntropySettings, entry: Mapping[str, Any]) -> EntropySettings:
    """The settings of a named source: ``base``'s explicit entropy fields, ``entry`` on top.

    Fields neither sets come from ``QR_*`` variables and defaults, as for ``base``.
    """
    inherited = {
        name: getattr(base, name)
        for name in EntropySettings.model_fields
        if name in base.model_fields_set
    }
    return _NamedSourceSettings(**{**inherited, **entry})


def build_named_sources(
    base: EntropySettings, sources: Mapping[str, Mapping[str, Any]]
) -> dict[str, EntropySource]:
    """Build every source of ``QR_SOURCES`` (closing those built when one fails)."""
    built: dict[str, EntropySource] = {}
    try:
        for name, entry in sources.items():
            built[name] = build_entropy_source(source_settings(base, entry))
    except BaseException:
        for source in built.values():
            source.close()
        raise
    return built


def check_named(
    sources: Mapping[str, Mapping[str, Any]], source: str, replay_u: tuple[float, ...]
) -> None:
    """The configuration's named-source and replay rules.

    Raises:
        ValueError: A bad ``QR_SOURCES``, a ``source`` it does not name, or a replayed u
            outside (0, 1).
    """
    check_sources(sources)
    if source not in known_sources(sources):
        raise ValueError(
            f"source={source!r} is not a known source; known: {', '.join(known_sources(sources))}"
        )
    if len(source) > MAX_NAME_LENGTH:
        raise ValueError(f"source: at most {MAX_NAME_LENGTH} characters")
    if any(not 0.0 < u < 1.0 for u in replay_u):
        raise ValueError("replay_u: every u must lie in (0, 1)")

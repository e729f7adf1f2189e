"""Registration: freeze a study (content hash, time, package versions) and refuse later edits."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from qr_lab._errors import RegistrationError
from qr_lab._study import Study

__all__ = ["check_registered", "content_hash", "differences", "register", "registration_path"]

_PACKAGES = ("qr-lab", "qr-core", "qr-entropy", "qr-grpc", "qr-vllm", "vllm", "duckdb", "scipy")


def content_hash(study: Study) -> str:
    """SHA-256 of the normalized study (prompts from files included)."""
    text = json.dumps(study.normalized(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def registration_path(study_path: Path) -> Path:
    """Where the registrations of ``study_path`` are kept: beside it."""
    return study_path.with_name(study_path.name + ".registration.json")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RegistrationError(f"cannot read the registration {path}: {exc}") from None
    return list(data["registrations"])


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{path} (added)")
            elif key not in new:
                out.append(f"{path} (removed)")
            else:
                out.extend(differences(old[key], new[key], path))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out.extend(differences(a, b, f"{prefix}[{i}]"))
        return out
    if old != new:
        return [f"{prefix}: {json.dumps(old)} -> {json.dumps(new)}"]
    return []


def register(study_path: Path, study: Study, *, new: bool = False) -> dict[str, Any]:
    """Register the study; returns the registration.

    Registering an unchanged study again returns the existing registration. A
    changed study is refused unless ``new`` (then a new registration is added,
    pointing at the one it supersedes).

    Raises:
        RegistrationError: The study changed since its registration and ``new`` is False.
    """
    path = registration_path(study_path)
    history = _load(path)
    digest = content_hash(study)
    if history and history[-1]["hash"] == digest:
        return history[-1]
    if history and not new:
        raise _changed(study_path, history[-1], study)
    entry = {
        "hash": digest,
        "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
        "supersedes": history[-1]["hash"] if history else None,
        "study": study.normalized(),
    }
    history.append(entry)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"registrations": history}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return entry


def _changed(study_path: Path, entry: dict[str, Any], study: Study) -> RegistrationError:
    changes = differences(entry["study"], study.normalized())
    listed = "\n".join(f"  {c}" for c in changes) or "  (the content hash differs)"
    return RegistrationError(
        f"{study_path} changed after its registration of {entry['registered_at']} "
        f"(hash {entry['hash'][:16]}):\n{listed}\n"
        f"Restore it, or register it anew: qr-lab register --new {study_path}"
    )


def check_registered(study_path: Path, study: Study) -> dict[str, Any]:
    """The study's current registration.

    Raises:
        RegistrationError: Not registered, or changed since (naming what changed).
    """
    history = _load(registration_path(study_path))
    if not history:
        raise RegistrationError(
            f"{study_path} is not registered; freeze it first: qr-lab register {study_path}"
        )
    if history[-1]["hash"] != content_hash(study):
        raise _changed(study_path, history[-1], study)
    return history[-1]

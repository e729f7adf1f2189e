"""Placeholder: the HTML report (written next)."""

from __future__ import annotations

from pathlib import Path


def write_report(run_dir: Path, out: Path) -> None:
    """Write the report."""
    raise NotImplementedError

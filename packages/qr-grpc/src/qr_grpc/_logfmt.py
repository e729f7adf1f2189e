"""Structured log lines for the entropy server: logfmt (key=value) or JSON lines."""

from __future__ import annotations

import json
import logging
import time
from typing import Literal

__all__ = ["LogFormat", "configure_logging"]

LogFormat = Literal["logfmt", "json"]


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class _LogfmtFormatter(logging.Formatter):
    """``ts=... level=... logger=... <message>``; server messages are key=value already."""

    def __init__(self) -> None:
        super().__init__(
            "ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s logger=%(name)s %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
        self.converter = time.gmtime  # UTC, as the trailing Z says


def configure_logging(level: str, fmt: LogFormat) -> None:
    """Send the root logger's records to stderr in the chosen structured format.

    Args:
        level: Logging level name (``DEBUG``, ``INFO``...).
        fmt: ``logfmt`` or ``json``.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

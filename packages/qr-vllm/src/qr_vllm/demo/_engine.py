"""Running an in-process vLLM engine: environment overrides, clean shutdown, the records file.

Shared by the demo, the end-to-end benchmark and the integration tests. Nothing
here imports vLLM; the engine object is whatever ``vllm.LLM`` returned.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["closing_engine", "environment", "read_records"]


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block; restore (or remove) them after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def closing_engine(llm: Any) -> Iterator[Any]:
    """Yield ``llm``; afterwards shut its engine core down (and its processes) and collect it."""
    try:
        yield llm
    finally:
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def read_records(
    path: Path, expected: int | None = None, timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    """The JSON Lines records file, waiting (up to ``timeout_s``) for ``expected`` rows.

    The records writer runs beside the engine, so the last step's rows may land a
    moment after ``generate`` returns. With ``expected`` None the file is read once.
    """
    deadline = time.monotonic() + timeout_s
    rows: list[dict[str, Any]] = []
    while True:
        if path.exists():
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if expected is None or len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)

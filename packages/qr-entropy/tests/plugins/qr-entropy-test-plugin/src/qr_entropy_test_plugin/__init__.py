"""Test-only entropy sources: a working deterministic one and a non-source object."""

from __future__ import annotations

import hashlib

from qr_entropy import EntropySource

__all__ = ["NOT_A_SOURCE", "CounterSource"]

NOT_A_SOURCE = "this entry point is a string, not an EntropySource subclass"


class CounterSource(EntropySource):
    """SHA-256 of a running counter: deterministic, so tests can check the bytes."""

    def __init__(self) -> None:
        self.counter = 0

    @property
    def name(self) -> str:
        return "plugin_counter"

    def get_random_bytes(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
        return bytes(out[:n])

"""Events a test plugin's module waits on while it is being imported (see test_registries)."""

from __future__ import annotations

import threading

entered = threading.Event()
release = threading.Event()


def reset() -> None:
    """Clear both events before a test uses them."""
    entered.clear()
    release.clear()

"""Shared fixtures of the qr-lab tests."""

from __future__ import annotations

import sys
from pathlib import Path

# The simulation helpers live beside the tests (they need qr_core and qr_entropy,
# which qr-lab itself does not depend on).
sys.path.insert(0, str(Path(__file__).parent))

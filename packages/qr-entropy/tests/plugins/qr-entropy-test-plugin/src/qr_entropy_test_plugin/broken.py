"""A plugin module that fails on import, as a plugin with a missing dependency would."""

from __future__ import annotations

raise ImportError("qr_entropy_test_plugin.broken needs the 'imaginary-qrng-driver' package")

"""qr_core."""

from importlib.metadata import version as _version

__version__ = _version("qr-core")

__all__ = ["__version__"]

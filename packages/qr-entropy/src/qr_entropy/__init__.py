"""qr_entropy."""

from importlib.metadata import version as _version

__version__ = _version("qr-entropy")

__all__ = ["__version__"]

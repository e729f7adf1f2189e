"""qr_grpc."""

from importlib.metadata import version as _version

__version__ = _version("qr-grpc")

__all__ = ["__version__"]

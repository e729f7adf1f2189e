"""qr_vllm."""

from importlib.metadata import version as _version

__version__ = _version("qr-vllm")

__all__ = ["__version__"]

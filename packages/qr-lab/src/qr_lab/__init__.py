"""qr_lab: pre-registered qr-sampler studies, from the study file to the HTML report.

Importing this package imports no torch, no vLLM and no gRPC: records are read
and analyzed with DuckDB, numpy and scipy alone. Only ``qr-lab run --embedded``
needs qr-vllm (and vLLM), and it starts that engine in a separate process.
"""

from __future__ import annotations

from importlib.metadata import version as _version

from qr_lab._analyze import analyze_run
from qr_lab._errors import QRLabError, RegistrationError, RunError, StudyError
from qr_lab._study import Study, load_study

__version__ = _version("qr-lab")

__all__ = [
    "QRLabError",
    "RegistrationError",
    "RunError",
    "Study",
    "StudyError",
    "__version__",
    "analyze_run",
    "load_study",
]

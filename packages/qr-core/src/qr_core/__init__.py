"""qr_core: the math of qr-sampler.

Signal amplifiers turn raw random bytes into a uniform value u, temperature
strategies choose a temperature from the logits, and the token selector maps
u through the filtered, probability-ordered CDF to a token. Pure numpy;
torch tensors (CPU or GPU) are accepted too, and torch is imported only when
one is handed in.
"""

from __future__ import annotations

from importlib.metadata import version as _version

from qr_core._compiled import COMPILE_ENV
from qr_core._compiled import warm_up as warm_up_compiled
from qr_core._errors import (
    ComponentLoadError,
    QRCoreError,
    SignalAmplificationError,
    TemperatureStrategyError,
    TokenSelectionError,
    UnknownComponentError,
)
from qr_core._selection import (
    DEFAULT_HEAD_SIZE,
    BatchSelectionResult,
    PreparedSelection,
    SelectionResult,
    TokenSelector,
)
from qr_core._sync import is_sync_free, sync_free
from qr_core.amplification import (
    DEFAULT_UNIFORM_CLAMP_EPSILON,
    POPULATION_MEAN,
    POPULATION_STD,
    AmplificationResult,
    AmplifierRegistry,
    BatchAmplificationResult,
    SignalAmplifier,
    ZScoreMeanAmplifier,
)
from qr_core.fidelity import FidelityResult, sampling_fidelity
from qr_core.randomized_pit import (
    DEFAULT_AMPLIFIER,
    PIT_EDGE,
    V_BYTES,
    RandomizedPITAmplifier,
)
from qr_core.temperature import (
    BatchTemperatureResult,
    EDTTemperatureStrategy,
    FixedTemperatureStrategy,
    TemperatureResult,
    TemperatureStrategy,
    TemperatureStrategyRegistry,
    compute_shannon_entropy,
)

__version__ = _version("qr-core")

__all__ = [
    "COMPILE_ENV",
    "DEFAULT_AMPLIFIER",
    "DEFAULT_HEAD_SIZE",
    "DEFAULT_UNIFORM_CLAMP_EPSILON",
    "PIT_EDGE",
    "POPULATION_MEAN",
    "POPULATION_STD",
    "V_BYTES",
    "AmplificationResult",
    "AmplifierRegistry",
    "BatchAmplificationResult",
    "BatchSelectionResult",
    "BatchTemperatureResult",
    "ComponentLoadError",
    "EDTTemperatureStrategy",
    "FidelityResult",
    "FixedTemperatureStrategy",
    "PreparedSelection",
    "QRCoreError",
    "RandomizedPITAmplifier",
    "SelectionResult",
    "SignalAmplificationError",
    "SignalAmplifier",
    "TemperatureResult",
    "TemperatureStrategy",
    "TemperatureStrategyError",
    "TemperatureStrategyRegistry",
    "TokenSelectionError",
    "TokenSelector",
    "UnknownComponentError",
    "ZScoreMeanAmplifier",
    "__version__",
    "compute_shannon_entropy",
    "is_sync_free",
    "sampling_fidelity",
    "sync_free",
    "warm_up_compiled",
]

"""Temperature strategies: fixed, and entropy-dependent (EDT); both report Shannon entropy.

The module path is public because the ``qr_core.temperature_strategies``
entry points name it; import the names from ``qr_core`` itself.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np

from qr_core._array import Backend, backend_for, is_torch_tensor, small_host_view
from qr_core._checks import check_logits, check_row_max
from qr_core._compiled import compiled
from qr_core._errors import TemperatureStrategyError
from qr_core._registry import ComponentRegistry

if TYPE_CHECKING:
    from qr_core._array import Array

__all__ = [
    "BatchTemperatureResult",
    "EDTTemperatureStrategy",
    "FixedTemperatureStrategy",
    "TemperatureResult",
    "TemperatureStrategy",
    "TemperatureStrategyRegistry",
    "compute_shannon_entropy",
]


def _backend(logits: object) -> Backend:
    if not (isinstance(logits, np.ndarray) or is_torch_tensor(logits)):
        msg = f"logits must be a numpy array or a torch tensor; got {type(logits).__name__}"
        raise TemperatureStrategyError(msg)
    return backend_for(logits)


# Per-thread host backends, whose scratch buffers hold the entropy's
# full-vocabulary temporaries between calls (see _entropy_rows).
_HOST_SCRATCH = threading.local()


def _host_scratch(xp: Backend) -> Backend:
    backends: dict[str, Backend] = _HOST_SCRATCH.__dict__.setdefault("backends", {})
    return backends.setdefault(xp.kind, xp)


def _entropy_and_finite(xp: Backend, logits: Any) -> tuple[Any, Any | None]:
    """Each row's entropy and, from the compiled path, its finite count (else None).

    On torch tensors outside the small-host shortcut one fused pass
    (qr_core._compiled) gives the maximum, the entropy and the count.
    """
    if xp.kind == "torch" and small_host_view(logits) is None:
        fused = compiled("entropy", logits)
        if fused is not None:
            row_max, entropy, finite = fused
            check_row_max(xp, row_max, error=TemperatureStrategyError)
            return entropy, finite
    return _entropy_rows(xp, logits), None


def _entropy_rows(xp: Backend, logits: Any) -> Any:
    """Natural-log entropy of softmax(row) for each row of a checked 2-D array.

    On the host the rows go in blocks of about a million elements through two
    reused per-thread buffers: every temporary stays in cache, and no decode
    step page-faults fresh memory (a fresh ``(64, 151936)`` temporary costs
    more than the arithmetic done in it). Accelerators take all rows at once
    through their caching allocator.
    """
    small = small_host_view(logits)
    if small is not None:
        # The same arithmetic on a zero-copy numpy view (see SMALL_HOST_ELEMENTS).
        import torch  # noqa: PLC0415 - only reached with a torch tensor in hand

        return torch.from_numpy(_host_entropy(small))
    rows, vocab = tuple(logits.shape)
    work = xp.work_dtype(logits)
    step = xp.row_block(rows, vocab)
    cache = xp if xp.on_accelerator else _host_scratch(xp)
    shifted = cache.scratch("entropy_shifted", (step, vocab), work)
    weights = cache.scratch("entropy_weights", (step, vocab), work)
    parts = []
    for start in range(0, rows, step):
        block = logits[start : start + step]
        n = int(block.shape[0])
        parts.append(_entropy_block(xp, block, shifted[:n], weights[:n]))
    return parts[0] if len(parts) == 1 else xp.concat(parts)


def _entropy_block(xp: Backend, logits: Any, shifted: Any, weights: Any) -> Any:
    """Entropy of each row of ``logits``, using ``shifted`` and ``weights`` as scratch."""
    row_max = xp.amax(logits, 1)
    check_row_max(xp, row_max, error=TemperatureStrategyError)
    row_max = xp.cast(row_max, weights.dtype)
    with np.errstate(all="ignore"):  # exp underflow is expected
        # -inf entries (banned tokens) become the lowest finite value: their
        # weight is still exactly 0, and 0 * lowest is 0 where 0 * -inf is NaN.
        xp.shift_into(shifted, logits, row_max, float(np.finfo(_np_dtype(weights)).min))
        xp.exp_into(weights, shifted)
        mass = xp.sum(weights, 1)
        weighted = xp.sum(xp.mul_(shifted, weights), 1)
        entropy = xp.log(mass) - weighted / mass
    # Rounding can leave a one-hot row at -1e-8; entropy is never negative.
    return xp.maximum(entropy, xp.full((1,), 0.0, entropy.dtype))


def _host_entropy(x: np.ndarray) -> np.ndarray:
    """`_entropy_block` on a small float32/float64 numpy array, in plain numpy calls.

    The same operations in the same dtype, without the backend's scratch buffers:
    for a step's few thousand logits the calls, not the arithmetic, are the cost.
    A row that fails the checks goes through `_entropy_block`, which names it.
    """
    row_max = np.max(x, axis=1)
    if not np.isfinite(row_max).all():
        checked: np.ndarray = _entropy_block(Backend(), x, np.empty_like(x), np.empty_like(x))
        return checked  # not reached: the checks raise
    with np.errstate(all="ignore"):  # exp underflow is expected
        shifted = np.subtract(x, row_max[:, None])
        np.maximum(shifted, _LOWEST[x.dtype.itemsize], out=shifted)  # -inf: weight 0, not NaN
        weights = np.exp(shifted)
        mass = np.sum(weights, axis=1)
        weighted = np.sum(np.multiply(shifted, weights, out=shifted), axis=1)
        entropy = np.log(mass) - weighted / mass
    result: np.ndarray = np.maximum(entropy, 0.0)
    return result


#: The lowest finite value of float32 and float64, by item size.
_LOWEST = {4: np.finfo(np.float32).min, 8: np.finfo(np.float64).min}


def _np_dtype(x: Any) -> Any:
    """The numpy dtype matching ``x``'s (float32 or float64) for finfo."""
    return np.float64 if "64" in str(x.dtype) else np.float32


def compute_shannon_entropy(logits: Array) -> Array | float:
    """Shannon entropy (natural log) of softmax(logits), per row.

    Computed in the logits' precision, at least single; ``-inf`` entries
    (banned tokens) contribute nothing.

    Args:
        logits: ``(vocab,)`` or ``(rows, vocab)``, floating dtype.

    Returns:
        A float for 1-D input; an array of shape ``(rows,)`` of the same kind
        and device for 2-D input.

    Raises:
        TemperatureStrategyError: Wrong shape or dtype, NaN, +inf, or a row with no finite entry.
    """
    xp = _backend(logits)
    one_row = len(tuple(logits.shape)) == 1
    check_logits(xp, logits, ndim=1 if one_row else 2, error=TemperatureStrategyError)
    if one_row:
        return float(xp.to_host_list(_entropy_and_finite(xp, logits[None])[0])[0])
    return cast("Array", _entropy_and_finite(xp, logits)[0])


@dataclass(frozen=True, slots=True)
class TemperatureResult:
    """The temperature for one row.

    Attributes:
        temperature: The temperature to sample at.
        shannon_entropy: Shannon entropy (natural log) of softmax(logits).
    """

    temperature: float
    shannon_entropy: float


@dataclass(frozen=True, slots=True)
class BatchTemperatureResult:
    """Temperatures for each row; ``(rows,)`` float arrays of the logits' kind and device.

    Attributes:
        temperature: Per-row temperatures.
        shannon_entropy: Per-row Shannon entropies (natural log).
    """

    temperature: Array
    shannon_entropy: Array


class TemperatureStrategy(ABC):
    """Chooses a sampling temperature from the logits; always reports their Shannon entropy."""

    #: The name the class is selected by (its entry-point name).
    name: ClassVar[str] = ""

    def compute_temperature(self, logits: Array) -> TemperatureResult:
        """Temperature and entropy for one 1-D row of logits.

        Args:
            logits: Shape ``(vocab,)``, floating dtype.

        Returns:
            The temperature and the row's Shannon entropy.

        Raises:
            TemperatureStrategyError: Bad logits.
        """
        xp = _backend(logits)
        check_logits(xp, logits, ndim=1, error=TemperatureStrategyError)
        batch = self.compute_batch(logits[None])
        return TemperatureResult(
            temperature=float(xp.to_host_list(batch.temperature)[0]),
            shannon_entropy=float(xp.to_host_list(batch.shannon_entropy)[0]),
        )

    @abstractmethod
    def compute_batch(
        self, logits: Array, shannon_entropy: Array | None = None
    ) -> BatchTemperatureResult:
        """Temperatures and entropies for each row of ``(rows, vocab)`` logits.

        Args:
            logits: Shape ``(rows, vocab)``, floating dtype, numpy or torch.
            shannon_entropy: The rows' entropies if the caller already has
                them (shape ``(rows,)``, same kind); computed when None.

        Returns:
            ``(rows,)`` arrays of the logits' kind and device.

        Raises:
            TemperatureStrategyError: Bad logits or a precomputed entropy of the wrong shape.
        """

    @staticmethod
    def _prepare(logits: Array, shannon_entropy: Array | None) -> tuple[Backend, Any, Any]:
        """Check the logits; return their backend, the rows' entropy and (when the
        compiled path computed it alongside) their finite counts, else None."""
        xp = _backend(logits)
        check_logits(xp, logits, ndim=2, error=TemperatureStrategyError)
        rows = logits.shape[0]
        if shannon_entropy is None:
            return xp, *_entropy_and_finite(xp, logits)
        if not xp.owns(shannon_entropy) or tuple(shannon_entropy.shape) != (rows,):
            msg = (
                f"shannon_entropy must be an array of the logits' kind with shape ({rows},); "
                f"got {type(shannon_entropy).__name__} of shape "
                f"{tuple(getattr(shannon_entropy, 'shape', ()))}"
            )
            raise TemperatureStrategyError(msg)
        return xp, shannon_entropy, None


class TemperatureStrategyRegistry(ComponentRegistry[TemperatureStrategy]):
    """Temperature strategies by name, from the ``qr_core.temperature_strategies`` entry
    points (built-ins included)."""

    group = "qr_core.temperature_strategies"
    kind = "temperature strategy"
    base = TemperatureStrategy


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        msg = f"{name} must be a finite number; got {value!r}"
        raise TemperatureStrategyError(msg)
    return float(value)


class FixedTemperatureStrategy(TemperatureStrategy):
    """The same temperature for every row (entry point ``fixed``).

    Args:
        fixed_temperature: The temperature, >= 0 (0 selects greedily).

    Raises:
        TemperatureStrategyError: A negative or non-finite temperature.
    """

    name: ClassVar[str] = "fixed"

    def __init__(self, fixed_temperature: float = 0.7) -> None:
        value = _finite("fixed_temperature", fixed_temperature)
        if value < 0:
            msg = f"fixed_temperature must be >= 0 (0 selects greedily); got {fixed_temperature!r}"
            raise TemperatureStrategyError(msg)
        self.fixed_temperature = value

    def compute_batch(
        self, logits: Array, shannon_entropy: Array | None = None
    ) -> BatchTemperatureResult:
        """Constant temperatures, with each row's entropy (see the base class)."""
        xp, entropy, _ = self._prepare(logits, shannon_entropy)
        temperature = xp.full(tuple(entropy.shape), self.fixed_temperature, entropy.dtype)
        return BatchTemperatureResult(temperature=temperature, shannon_entropy=entropy)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fixed_temperature={self.fixed_temperature!r})"


class EDTTemperatureStrategy(TemperatureStrategy):
    """Entropy-dependent temperature: ``T = clamp(base · (H / ln V)^exponent, min, max)``.

    Selected as ``edt`` (its entry point). H is the row's Shannon entropy and V
    the number of finite logits in the row, so ``H / ln V`` is in [0, 1]:
    confident rows get low temperatures, uncertain ones high. A row with a
    single finite logit has ``H / ln V = 0``.

    Args:
        edt_base_temp: base, > 0.
        edt_exponent: exponent, >= 0 (0 gives a constant ``base``).
        edt_min_temp: Lower clamp, >= 0.
        edt_max_temp: Upper clamp, >= ``edt_min_temp``.

    Raises:
        TemperatureStrategyError: A parameter outside those ranges or not finite.
    """

    name: ClassVar[str] = "edt"

    def __init__(
        self,
        edt_base_temp: float = 0.8,
        edt_exponent: float = 0.5,
        edt_min_temp: float = 0.1,
        edt_max_temp: float = 2.0,
    ) -> None:
        base = _finite("edt_base_temp", edt_base_temp)
        exponent = _finite("edt_exponent", edt_exponent)
        low = _finite("edt_min_temp", edt_min_temp)
        high = _finite("edt_max_temp", edt_max_temp)
        if base <= 0:
            msg = f"edt_base_temp must be > 0; got {edt_base_temp!r}"
            raise TemperatureStrategyError(msg)
        if exponent < 0:
            msg = f"edt_exponent must be >= 0 (a negative one inverts EDT); got {edt_exponent!r}"
            raise TemperatureStrategyError(msg)
        if not 0 <= low <= high:
            msg = (
                "edt_min_temp and edt_max_temp must satisfy 0 <= min <= max; "
                f"got min={edt_min_temp!r}, max={edt_max_temp!r}"
            )
            raise TemperatureStrategyError(msg)
        self.edt_base_temp = base
        self.edt_exponent = exponent
        self.edt_min_temp = low
        self.edt_max_temp = high

    def compute_batch(
        self, logits: Array, shannon_entropy: Array | None = None
    ) -> BatchTemperatureResult:
        """EDT temperatures, with each row's entropy (see the class docstring)."""
        xp, entropy, finite = self._prepare(logits, shannon_entropy)
        if finite is None:
            finite = xp.count_finite(logits)
        log_v = xp.log(xp.asarray(finite, entropy.dtype))
        with np.errstate(all="ignore"):  # 0 / 0 for single-token rows is replaced just below
            normalised = xp.where(finite > 1, entropy / log_v, 0.0)
        normalised = xp.clip(normalised, 0.0, 1.0)
        raw = self.edt_base_temp * normalised**self.edt_exponent
        temperature = xp.clip(raw, self.edt_min_temp, self.edt_max_temp)
        return BatchTemperatureResult(temperature=temperature, shannon_entropy=entropy)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(edt_base_temp={self.edt_base_temp!r}, "
            f"edt_exponent={self.edt_exponent!r}, edt_min_temp={self.edt_min_temp!r}, "
            f"edt_max_temp={self.edt_max_temp!r})"
        )

"""The EntropySource contract: what every source does, and what each fetch reports."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import numpy.typing as npt

from qr_entropy._check import SourceCheck
from qr_entropy._digest import row_digest, row_digests
from qr_entropy._errors import EntropyConfigError, EntropyUnavailableError
from qr_entropy._health import HealthMonitor, HealthTestCutoffs
from qr_entropy._settings import DEFAULT_MAX_REQUEST_BYTES, EntropySettings

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["EntropyBlock", "EntropyFetch", "EntropySource", "HealthStatus", "Provenance"]

logger = logging.getLogger(__name__)

# 2**-53: float64 has a 53-bit significand, so (u64 >> 11) * 2**-53 is every
# representable multiple of 2**-53 in [0, 1) with equal probability.
_FLOAT53_SCALE = 1.0 / (1 << 53)


class HealthStatus(str, Enum):
    """Outcome of the continuous health tests for the bytes of one fetch."""

    OK = "ok"
    FAILED = "failed"
    NOT_TESTED = "not_tested"


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where the bytes of one fetch came from.

    Attributes:
        source: Name of the source that actually produced the bytes.
        is_fallback: True when a fallback source produced them because the
            primary was unavailable.
        generated_at_ns: ``time.monotonic_ns()`` when the bytes were produced
            or received.
        health: Health-test outcome for these bytes (``NOT_TESTED`` for
            sources that are not physical noise sources); with ``is_fallback``,
            ``FAILED`` says the primary's bytes failed a health test.
        device_id: The producing device, when the source knows it (for
            example the gRPC server's device_id).
        fetch_latency_ns: Wall time of the fetch in nanoseconds.
        fallback_reason: The primary's error message when ``is_fallback``.
        row_digests: `qr_entropy.row_digest` of each row of the bytes, in row order
            (one for `EntropySource.fetch`), computed where the bytes were received.
        sequence_id: The server's echo of the request's sequence id (0: none); of
            the first request when the fetch was split into several.
        generation_timestamp_ns: The server's clock (Unix ns) when it generated the
            bytes (0: the source reports none); of the first request when split.
        row_sequence_ids: The sequence id of the request that served each row, in row
            order (empty: the source reports none). A fetch split into several
            requests splits at row boundaries, so each row has exactly one.
        row_generation_timestamps_ns: The server's generation time of each row's
            request, in row order (empty: the source reports none).
    """

    source: str
    is_fallback: bool
    generated_at_ns: int
    health: HealthStatus
    device_id: str = ""
    fetch_latency_ns: int = 0
    fallback_reason: str = ""
    row_digests: tuple[str, ...] = ()
    sequence_id: int = 0
    generation_timestamp_ns: int = 0
    row_sequence_ids: tuple[int, ...] = ()
    row_generation_timestamps_ns: tuple[int, ...] = ()

    def row_source_ids(self, row: int) -> tuple[int, int]:
        """``(sequence_id, generation_timestamp_ns)`` of the request that served ``row``."""
        if row < len(self.row_sequence_ids):
            return self.row_sequence_ids[row], self.row_generation_timestamps_ns[row]
        return self.sequence_id, self.generation_timestamp_ns


@dataclass(frozen=True, slots=True)
class EntropyFetch:
    """Bytes of one fetch and their provenance."""

    data: bytes
    provenance: Provenance


@dataclass(frozen=True, slots=True)
class EntropyBlock:
    """A (rows, n) block of bytes from one underlying read, and its provenance.

    Attributes:
        data: C-contiguous, read-only ``uint8`` array of shape (rows, n).
        provenance: Provenance of the whole block.
    """

    data: npt.NDArray[np.uint8]
    provenance: Provenance


class EntropySource(ABC):
    """A source of random bytes.

    Subclasses implement `name` and `get_random_bytes`. `fetch` and
    `fetch_block` wrap one call of `get_random_bytes` with the guards every
    source shares: the request size is checked against `max_request_bytes`, a
    read of the wrong length is an `EntropyUnavailableError`, the SP 800-90B
    continuous health tests run on the bytes when `health_tested` is set, and
    the result carries its `Provenance`.

    A subclass that must override `fetch_block` (for example to read a device id
    from the response) should call `check_request` first and `seal_block` last,
    so the guards and the health tests still apply.
    """

    #: True for physical noise sources: SP 800-90B health tests run on every fetch.
    health_tested: ClassVar[bool] = False
    #: Largest fetch in bytes; `configure` sets it from the settings.
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    @property
    @abstractmethod
    def name(self) -> str:
        """Registry name of the source, recorded in every provenance."""

    @property
    def is_available(self) -> bool:
        """Whether the source can deliver bytes now."""
        return True

    @property
    def device_id(self) -> str:
        """Identifier of the producing device, recorded in provenance; empty if unknown."""
        return ""

    @abstractmethod
    def get_random_bytes(self, n: int) -> bytes:
        """Return exactly ``n`` random bytes or raise.

        Args:
            n: Number of bytes, ``0 <= n <= max_request_bytes``.

        Raises:
            EntropyUnavailableError: the source cannot deliver now.
            EntropyConfigError: ``n`` is out of range.
        """

    # -- settings -------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: EntropySettings) -> Self:
        """Build the source from settings; the default calls ``cls()`` and `configure`."""
        source = cls()
        source.configure(settings)
        return source

    def configure(self, settings: EntropySettings) -> None:
        """Apply the settings every source shares: the size guard and the health cutoffs."""
        self.max_request_bytes = settings.max_request_bytes
        self._health_monitor = HealthMonitor(
            HealthTestCutoffs.derive(
                settings.health_false_alarm_rate, settings.health_min_entropy_per_byte
            )
        )

    @property
    def health_monitor(self) -> HealthMonitor:
        """The continuous health tests of this source (created on first use)."""
        monitor: HealthMonitor | None = getattr(self, "_health_monitor", None)
        if monitor is None:
            monitor = HealthMonitor()
            self._health_monitor = monitor
        return monitor

    # -- fetching -------------------------------------------------------------

    def check_request(self, rows: int, n: int) -> int:
        """Validate a request for ``rows`` rows of ``n`` bytes and return ``rows * n``.

        Raises:
            EntropyConfigError: a negative or non-integer count, or a total
                above `max_request_bytes`.
        """
        for label, value in (("rows", rows), ("n", n)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise EntropyConfigError(
                    f"{label}={value!r} must be an int in [0, {self.max_request_bytes}]"
                )
            if value < 0:
                raise EntropyConfigError(
                    f"{label}={value} is negative; allowed range is [0, {self.max_request_bytes}]"
                )
        total = int(rows) * int(n)
        if total > self.max_request_bytes:
            raise EntropyConfigError(
                f"request of rows={rows} x n={n} = {total} bytes exceeds max_request_bytes="
                f"{self.max_request_bytes} (allowed range [0, {self.max_request_bytes}]; "
                f"raise QR_MAX_REQUEST_BYTES if this is intended)"
            )
        return total

    def _checked(self, data: bytes, expected: int) -> tuple[int, HealthStatus]:
        """Check the length of ``data`` and health-test it; when it was received, and the
        health of its bytes."""
        received_ns = time.monotonic_ns()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise EntropyUnavailableError(
                f"source {self.name!r} returned {type(data).__name__}, not bytes"
            )
        if len(data) != expected:
            raise EntropyUnavailableError(
                f"source {self.name!r} returned {len(data)} bytes for a request of {expected}; "
                f"a wrong-length read is a source failure"
            )
        health = HealthStatus.NOT_TESTED
        if self.health_tested:
            # HealthTestFailure propagates: it is an EntropyUnavailableError, so a
            # FallbackEntropySource engages and flags the fetch.
            self.health_monitor.test_block(np.frombuffer(data, dtype=np.uint8))
            health = HealthStatus.OK
        return received_ns, health

    def seal_block(
        self,
        data: bytes,
        rows: int,
        n: int,
        *,
        started_ns: int,
        device_id: str = "",
        sequence_id: int = 0,
        generation_timestamp_ns: int = 0,
        row_sequence_ids: tuple[int, ...] = (),
        row_generation_timestamps_ns: tuple[int, ...] = (),
    ) -> EntropyBlock:
        """Check the length of ``data``, health-test it and wrap it as a (rows, n) block.

        Args:
            data: What the underlying read returned for ``rows * n`` bytes.
            rows: Rows of the block.
            n: Bytes per row.
            started_ns: ``time.monotonic_ns()`` before the read, for the latency.
            device_id: The producing device, if known.
            sequence_id: The server's sequence id of the response, if any.
            generation_timestamp_ns: The server's generation time (Unix ns), if any.
            row_sequence_ids: Per row, the sequence id of the request that served it
                (a fetch split into several requests); empty: ``sequence_id`` for all.
            row_generation_timestamps_ns: Per row, that request's generation time.

        Raises:
            EntropyUnavailableError: ``data`` has the wrong length.
            HealthTestFailure: the bytes failed a continuous health test.
        """
        received_ns, health = self._checked(data, rows * n)
        array = np.frombuffer(bytes(data), dtype=np.uint8).reshape(rows, n)
        # Digested after the length and health checks, from the array the caller gets.
        provenance = Provenance(
            source=self.name,
            is_fallback=False,
            generated_at_ns=received_ns,
            health=health,
            device_id=device_id,
            fetch_latency_ns=received_ns - started_ns,
            row_digests=row_digests(array),
            sequence_id=sequence_id,
            generation_timestamp_ns=generation_timestamp_ns,
            row_sequence_ids=row_sequence_ids,
            row_generation_timestamps_ns=row_generation_timestamps_ns,
        )
        return EntropyBlock(data=array, provenance=provenance)

    def fetch(self, n: int) -> EntropyFetch:
        """Fetch ``n`` bytes with their provenance.

        Raises:
            EntropyConfigError: ``n`` is negative or above `max_request_bytes`.
            EntropyUnavailableError: the source failed, returned the wrong
                number of bytes, or failed a health test.
        """
        total = self.check_request(1, n)
        started_ns = time.monotonic_ns()
        data = self.get_random_bytes(total)
        received_ns, health = self._checked(data, total)
        provenance = Provenance(
            source=self.name,
            is_fallback=False,
            generated_at_ns=received_ns,
            health=health,
            device_id=self.device_id,
            fetch_latency_ns=received_ns - started_ns,
            row_digests=(row_digest(data),),
        )
        return EntropyFetch(data=bytes(data), provenance=provenance)

    def fetch_block(self, rows: int, n: int) -> EntropyBlock:
        """Fetch a (rows, n) uint8 block with ONE underlying read of ``rows * n`` bytes.

        Raises:
            EntropyConfigError: a negative count or a total above `max_request_bytes`.
            EntropyUnavailableError: the source failed, returned the wrong
                number of bytes, or failed a health test.
        """
        total = self.check_request(rows, n)
        started_ns = time.monotonic_ns()
        data = self.get_random_bytes(total)
        return self.seal_block(data, rows, n, started_ns=started_ns, device_id=self.device_id)

    def get_random_float64(
        self,
        shape: int | tuple[int, ...],
        out: npt.NDArray[np.float64] | None = None,
    ) -> npt.NDArray[np.float64]:
        """Uniform floats in [0, 1), each from 53 bits of this source.

        Args:
            shape: Shape of the result.
            out: Optional float64 array of that shape to fill in place.

        Returns:
            ``out`` when given, else a new array.

        Raises:
            EntropyConfigError: a negative dimension, or ``out`` of the wrong
                shape or dtype.
        """
        dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        if any(int(d) < 0 for d in dims):
            raise EntropyConfigError(f"shape={shape!r} has a negative dimension")
        dims = tuple(int(d) for d in dims)
        if out is not None and (out.shape != dims or out.dtype != np.float64):
            raise EntropyConfigError(
                f"out has shape {out.shape} and dtype {out.dtype}; "
                f"expected shape {dims} and dtype float64"
            )
        count = int(np.prod(dims, dtype=np.int64))
        words = np.frombuffer(self.fetch(8 * count).data, dtype="<u8")
        values: npt.NDArray[np.float64] = (words >> np.uint64(11)).astype(np.float64)
        values *= _FLOAT53_SCALE
        if out is None:
            return values.reshape(dims)
        out[...] = values.reshape(dims)
        return out

    def check(self, timeout_s: float | None = None) -> SourceCheck:
        """Check at start-up that the source can serve, and say clearly why not.

        Callers (the vLLM plugin when its processor starts) run it once, so that a wrong
        address or credential is reported then, not as a failure of every token. It
        never raises for a problem of the source: the result says what is wrong; call
        ``raise_for_failure()`` on it to turn a failure into `SourceCheckError`.

        The default has nothing to check and reports ok; sources that reach a server or
        a device override it with a real request.

        Args:
            timeout_s: Budget of the check; None uses the source's own timeout.
        """
        del timeout_s  # nothing to wait for
        return SourceCheck(ok=True, source=self.name, detail="nothing to check")

    def close(self) -> None:  # noqa: B027 -- a no-op default that sources with resources override
        """Release the source's resources (channels, devices); the default holds none."""

    def health_check(self) -> dict[str, object]:
        """Status of the source for dashboards and ``qr-entropy list``."""
        status: dict[str, object] = {
            "source": self.name,
            "available": self.is_available,
            "health_tested": self.health_tested,
        }
        if self.health_tested:
            monitor = self.health_monitor
            status["health"] = (
                HealthStatus.NOT_TESTED.value
                if monitor.last_block_passed is None
                else (HealthStatus.OK if monitor.last_block_passed else HealthStatus.FAILED).value
            )
            status.update(monitor.snapshot())
        else:
            status["health"] = HealthStatus.NOT_TESTED.value
        return status

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""`SamplingLogger`: where each step's records go (log, memory, records file)."""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

from qr_vllm._config import LogLevel
from qr_vllm._metrics import SamplerMetrics
from qr_vllm._records import StepRecords, TokenSamplingRecord
from qr_vllm._sink import JsonlRecordSink

__all__ = ["SamplingLogger"]

# The product's log: one name to configure, whatever module writes.
_log = logging.getLogger("qr_sampler")

_LEVELS: tuple[str, ...] = ("none", "summary", "full")


class SamplingLogger:
    """Routes the records of every step to the log, to memory and to the records file.

    Levels (``QR_LOG_LEVEL``, per request ``qr_log_level``): ``none`` logs only
    failures and fallbacks; ``summary`` adds one DEBUG line per step; ``full``
    adds one INFO line per token of requests that ask for it. Failures and
    fallbacks are always logged at WARNING/ERROR through ``qr_sampler``.

    Args:
        level: The server's default level.
        records_path: JSON Lines file (None: no file).
        max_pending_steps: Queue bound of the file writer.
        diagnostic_max_records: Records kept in memory for requests in diagnostic mode.
    """

    def __init__(
        self,
        level: LogLevel = "summary",
        records_path: Path | None = None,
        max_pending_steps: int = 4096,
        diagnostic_max_records: int = 100_000,
    ) -> None:
        if level not in _LEVELS:
            raise ValueError(f"log level {level!r} is not allowed; allowed: {', '.join(_LEVELS)}")
        self.level: LogLevel = level
        self.sink = (
            JsonlRecordSink(records_path, max_pending_steps) if records_path is not None else None
        )
        self._diagnostic: deque[TokenSamplingRecord] = deque(maxlen=diagnostic_max_records)
        self.tokens = 0
        self.failed_tokens = 0
        self.fallback_tokens = 0
        self.steps = 0
        self._fallback_logged = False
        #: Set by the processor when metrics are on (QR_METRICS_PORT).
        self.metrics: SamplerMetrics | None = None

    def log_step(self, step: StepRecords) -> None:
        """Take the records of one group of rows of one step."""
        n = len(step)
        if n == 0:
            return
        self.steps += 1
        self.tokens += n
        if self.metrics is not None:
            self.metrics.observe_step(step)
        if step.status == "failed":
            self.failed_tokens += n
        if step.is_fallback:
            self.fallback_tokens += n
            if not self._fallback_logged:
                _log.warning(
                    "entropy from the fallback source %s (primary failed: %s); every such "
                    "token is flagged is_fallback in its record",
                    step.entropy_source,
                    step.fallback_reason,
                )
                self._fallback_logged = True
        elif self._fallback_logged and step.status == "ok":
            _log.warning("entropy from the primary source %s again", step.entropy_source)
            self._fallback_logged = False
        if self.sink is not None:
            self.sink.write(step)
        if self.level != "none" and _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "step: %d tokens (%s) from %s, fetch %.3f ms, fallback=%s, health=%s",
                n,
                step.status,
                step.entropy_source,
                step.fetch_latency_ns / 1e6,
                step.is_fallback,
                step.health,
            )
        wants_full = any(info.log_full for info in step.requests)
        wants_memory = any(info.diagnostic for info in step.requests)
        if not (wants_full or wants_memory):
            return
        for info, record in zip(step.requests, step.records(), strict=True):
            if info.log_full:
                _log.info(
                    "token: request=%d seq=%d token=%d rank=%s prob=%s u=%s T=%s source=%s "
                    "fallback=%s status=%s",
                    record.request_serial,
                    record.sequence_number,
                    record.token_id,
                    record.token_rank,
                    record.token_prob,
                    record.u,
                    record.temperature,
                    record.entropy_source,
                    record.is_fallback,
                    record.status,
                )
            if info.diagnostic:
                self._diagnostic.append(record)

    @property
    def diagnostic_records(self) -> list[TokenSamplingRecord]:
        """Records kept in memory for requests in diagnostic mode (oldest first)."""
        return list(self._diagnostic)

    def summary(self) -> dict[str, object]:
        """Counters since start, with the records file's counters."""
        out: dict[str, object] = {
            "steps": self.steps,
            "tokens": self.tokens,
            "failed_tokens": self.failed_tokens,
            "fallback_tokens": self.fallback_tokens,
            "diagnostic_records": len(self._diagnostic),
        }
        if self.sink is not None:
            out["records"] = self.sink.stats()
        return out

    def record_counts(self) -> dict[str, int]:
        """Records written, dropped, steps queued and write errors of the records file.

        All zero when no records file is configured (see `JsonlRecordSink.counts`).
        """
        if self.sink is None:
            return {"written": 0, "dropped": 0, "queued": 0, "write_errors": 0}
        return self.sink.counts()

    def close(self) -> None:
        """Flush and close the records file."""
        if self.sink is not None:
            self.sink.close()

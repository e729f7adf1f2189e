"""Failure policy: what a step does when it cannot sample its rows.

Nothing may take the shared engine down (see ARCHITECTURE.md, design note
"Failing requests, not the engine"): with no fallback (``QR_FALLBACK_MODE=error``)
an unavailable source fails the step's requests. A failed request keeps its
slot; from then on each of its rows is forced to the request's stop token (when
it has one) so that vLLM ends it, and the engine keeps serving the others. The
stop token is ``QR_FAILURE_STOP_TOKEN_ID`` when admission gave it to the request,
so that the response shows the failure (see `qr_vllm._admission`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from qr_entropy import EntropyUnavailableError

from qr_vllm._slots import SlotState

logger = logging.getLogger("qr_sampler")

__all__ = [
    "LEADER_FAILED",
    "FailedRequests",
    "describe",
    "fail_requests",
    "is_expected",
    "stop_rows",
    "stop_tokens",
]

#: A follower's error for the requests of a step its leader failed.
LEADER_FAILED = "the tensor-parallel leader (rank 0) failed this step's requests"


def describe(exc: BaseException) -> str:
    """The error recorded for a failed request: the exception's type and message."""
    return f"{type(exc).__name__}: {exc}"


def is_expected(exc: BaseException) -> bool:
    """True for the failures a step expects (no entropy); others are logged with a trace."""
    return isinstance(exc, EntropyUnavailableError)


class FailedRequests:
    """The requests failed so far, by the named source each drew from (its ``qr_source``).

    Counted on the engine thread; a metrics scrape reads a `snapshot` from another.
    """

    __slots__ = ("_by_source",)

    def __init__(self) -> None:
        self._by_source: dict[str, int] = {}

    def count(self, source: str) -> None:
        """One more failed request of the named source ``source``."""
        self._by_source[source] = self._by_source.get(source, 0) + 1

    def snapshot(self) -> dict[str, int]:
        """The counts by named source (a copy)."""
        return dict(self._by_source)

    def total(self) -> int:
        """Failed requests of every named source."""
        return sum(self.snapshot().values())


def fail_requests(
    states: Sequence[SlotState], error: str, failed: FailedRequests | None = None
) -> int:
    """Mark the requests failed (those not failed already) and log each; returns how many.

    Each newly failed request is also counted in ``failed`` under its named source.
    """
    count = 0
    for state in states:
        if state.failure:
            continue
        state.failure = error
        count += 1
        if failed is not None:
            failed.count(state.info.source)
        if state.stop_token >= 0:
            logger.error(
                "request %d (session=%r label=%r) failed: no entropy for its token (%s); "
                "ending it with stop token %d",
                state.info.request_serial,
                state.info.session,
                state.info.label,
                error,
                state.stop_token,
            )
        else:
            logger.error(
                "request %d (session=%r label=%r) failed: no entropy for its token (%s); "
                "it has no stop token, so vLLM's own sampler chooses its remaining tokens, "
                "each recorded as failed with token_id null (set QR_FAILURE_STOP_TOKEN_ID "
                "to end such requests)",
                state.info.request_serial,
                state.info.session,
                state.info.label,
                error,
            )
    return count


def stop_tokens(states: Sequence[SlotState]) -> np.ndarray:
    """Each request's stop token (-1: none known), as recorded for a failed row."""
    return np.fromiter((s.stop_token for s in states), dtype=np.int64, count=len(states))


def stop_rows(rows: np.ndarray, states: Sequence[SlotState]) -> tuple[np.ndarray, np.ndarray]:
    """The rows to force to a stop token, and those tokens; rows without one are left to vLLM."""
    tokens = stop_tokens(states)
    known = tokens >= 0
    return np.asarray(rows, dtype=np.int64)[known], tokens[known]

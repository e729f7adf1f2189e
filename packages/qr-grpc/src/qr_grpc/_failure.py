"""How one failed attempt is classified, so the source knows what to do next.

A timeout feeds the breaker a latency sample, a transport failure rebuilds the channel and
may be retried, a rejection or protocol error is final for this fetch.
"""

from __future__ import annotations

from typing import Literal

import grpc
import grpc.aio

from qr_grpc._proto.entropy_service_pb2 import EntropyResponse

__all__ = ["FailureKind", "FetchFailure", "check_length", "classify"]

FailureKind = Literal["timeout", "transport", "rejected", "protocol"]

# Details grpc.aio gives a call whose write failed inside the library (not a server status).
_CORE_WRITE_ERROR = "Internal error from Core"
# Codes that mean the connection, not the server's judgement, failed: rebuild the channel.
# CANCELLED is what a call in flight sees when another fetch rebuilt the channel under it.
_TRANSPORT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


class FetchFailure(Exception):  # noqa: N818 -- internal signal, converted by the source
    """One failed attempt, classified.

    Attributes:
        kind: ``timeout``, ``transport`` (rebuild channel, may retry), ``rejected`` (the
            server said no) or ``protocol`` (the answer was wrong, e.g. its length).
        detail: Human-readable cause, never containing credentials.
        code: The gRPC status name when the server or library gave one
            (``UNAUTHENTICATED``, ``UNAVAILABLE``...), else empty.
    """

    def __init__(self, kind: FailureKind, detail: str, code: str = "") -> None:
        super().__init__(detail)
        self.kind: FailureKind = kind
        self.detail = detail
        self.code = code

    def copy(self) -> FetchFailure:
        """A new exception with the same classification (one per waiter that gets it)."""
        return FetchFailure(self.kind, self.detail, self.code)


def check_length(response: EntropyResponse, n: int) -> None:
    """Raise a protocol failure unless the payload has exactly n bytes."""
    if len(response.data) != n:
        # A wrong length is a failure of the source, not a short sample (see
        # ARCHITECTURE.md, design note "Payload length").
        raise FetchFailure(
            "protocol", f"server returned {len(response.data)} bytes for a request of {n} bytes"
        )


def classify(error: grpc.aio.AioRpcError, what: str) -> FetchFailure:
    """Turn a failed call into a `FetchFailure` whose kind says what the source does next."""
    code = error.code()
    detail = f"{what}: {code.name} {error.details() or ''}".rstrip()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return FetchFailure("timeout", detail, code.name)
    if code in _TRANSPORT_CODES:
        return FetchFailure("transport", detail, code.name)
    if code == grpc.StatusCode.INTERNAL and (error.details() or "").startswith(_CORE_WRITE_ERROR):
        # grpc.aio's own marker for a write that failed because the call had already
        # ended (e.g. the server closed the stream as the request went out): the
        # server's status is lost, the stream is gone, a new one may well work.
        return FetchFailure("transport", detail, code.name)
    return FetchFailure("rejected", detail, code.name)

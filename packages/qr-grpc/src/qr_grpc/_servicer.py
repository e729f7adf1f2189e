"""The EntropyService servicer of the reference server: authorize a call, then serve bytes."""

from __future__ import annotations

import hmac
import logging
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from qr_entropy import AuditLog, EntropySource, EntropyUnavailableError, QREntropyError

from qr_grpc._audit import check_rows, log_served
from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse

__all__ = ["EntropyServicer"]

# The server's events share one logger name, whichever module logs them.
logger = logging.getLogger("qr_grpc.server")


class EntropyServicer:
    """GetEntropy and StreamEntropy over one source, generating bytes per request.

    Bytes are produced when a request arrives, never ahead (just in time). The source is
    used under a lock because sources need not be thread-safe and a hardware device
    serves one read at a time anyway.
    """

    def __init__(
        self,
        source: EntropySource,
        *,
        max_bytes: int,
        api_key: str,
        api_key_header: str,
        device_id: str,
        delay_s: float,
        jitter_s: float = 0.0,
        audit: AuditLog | None = None,
    ) -> None:
        self._audit = audit
        self._source = source
        self._max_bytes = max_bytes
        self._api_key = api_key.encode()
        self._api_key_header = api_key_header
        self._device_id = device_id
        self._delay_s = delay_s
        self._jitter_s = jitter_s
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    def _authorize(self, context: Any) -> None:
        if not self._api_key:
            return
        presented = b""
        for key, value in context.invocation_metadata() or ():
            if key == self._api_key_header:
                presented = value.encode() if isinstance(value, str) else bytes(value)
                break
        # compare_digest: the time taken must not tell an attacker how much of a key matched.
        if not hmac.compare_digest(presented, self._api_key):
            logger.warning(
                "event=rejected reason=%s header=%s peer=%s",
                "missing_api_key" if not presented else "wrong_api_key",
                self._api_key_header,
                context.peer(),
            )
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing or wrong API key in metadata header {self._api_key_header!r}",
            )

    def _generate(self, request: EntropyRequest, context: Any) -> EntropyResponse:
        n = request.bytes_needed
        if n <= 0 or n > self._max_bytes:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"bytes_needed={n} is outside the allowed range 1..{self._max_bytes}",
            )
        check_rows(request, context)
        if self._delay_s or self._jitter_s:
            # A test aid, not entropy: the jitter's randomness does not need to be good.
            delay = self._delay_s + random.uniform(0.0, self._jitter_s)
            # An Event, not time.sleep: stopping the server cuts the simulated delay short.
            self.stopping.wait(delay)
        try:
            with self._lock:
                fetched = self._source.fetch(n)
        except EntropyUnavailableError as error:
            logger.warning("event=source_unavailable bytes=%d error=%r", n, str(error))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"entropy source unavailable: {error}")
        except QREntropyError as error:
            logger.error("event=source_error bytes=%d error=%r", n, str(error))
            context.abort(grpc.StatusCode.INTERNAL, f"entropy source error: {error}")
        generated_ns = time.time_ns()
        device_id = self._device_id or fetched.provenance.device_id or self._source.name
        if self._audit is not None:
            log_served(
                self._audit,
                request,
                fetched.data,
                time_ns=generated_ns,
                device_id=device_id,
                context=context,
            )
        return EntropyResponse(
            data=fetched.data,
            sequence_id=request.sequence_id,
            generation_timestamp_ns=generated_ns,
            device_id=device_id,
        )

    def GetEntropy(self, request: EntropyRequest, context: Any) -> EntropyResponse:  # noqa: N802
        """Unary RPC: one request, one response."""
        self._authorize(context)
        return self._generate(request, context)

    def StreamEntropy(  # noqa: N802
        self, request_iterator: Iterator[EntropyRequest], context: Any
    ) -> Iterator[EntropyResponse]:
        """Bidi RPC: one response per request, same sequence_id, until the client stops."""
        authorized = False
        for request in request_iterator:
            # Checked on the first request rather than at stream start: a refusal sent
            # while the client is still writing that request races the write, and the
            # client may then see "internal error" instead of UNAUTHENTICATED.
            if not authorized:
                self._authorize(context)
                authorized = True
            yield self._generate(request, context)

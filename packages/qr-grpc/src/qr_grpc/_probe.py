"""The start-up check of `QuantumGrpcSource`: one real request, and what its failure means."""

from __future__ import annotations

import time

from qr_entropy import SourceCheck

from qr_grpc._address import GrpcAddress
from qr_grpc._failure import FetchFailure
from qr_grpc._fetcher import Fetcher, hint_for
from qr_grpc._settings import GrpcSettings

__all__ = ["probe"]

_NAME = "quantum_grpc"


def probe(
    fetcher: Fetcher, settings: GrpcSettings, address: GrpcAddress, timeout_s: float
) -> SourceCheck:
    """Ask the server for 1 byte on the configured mode, method, credentials and TLS.

    A real entropy request, not the health service: the health service answers without
    the API key, so only a real request shows a wrong key. The byte is discarded. The
    circuit breaker is left alone (this is not a fetch).
    """
    method = (
        settings.grpc_method_path
        if settings.grpc_mode == "unary"
        else settings.grpc_stream_method_path
    )
    started = time.monotonic()
    try:
        fetcher.attempt(1, timeout_s)
    except FetchFailure as failure:
        return _failed(failure, settings, address, method, timeout_s)
    elapsed_ms = (time.monotonic() - started) * 1000.0
    return SourceCheck(
        ok=True,
        source=_NAME,
        detail=(
            f"{address} answered a 1-byte {settings.grpc_mode} request on {method} "
            f"in {elapsed_ms:.1f} ms"
        ),
    )


def _failed(
    failure: FetchFailure,
    settings: GrpcSettings,
    address: GrpcAddress,
    method: str,
    timeout_s: float,
) -> SourceCheck:
    where = f"the entropy server at {address} (QR_GRPC_SERVER_ADDRESS)"
    if failure.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        problem = "unauthenticated"
        detail = f"{where} refused the credentials: {failure.detail}"
    elif failure.kind == "timeout":
        problem = "timeout"
        detail = (
            f"{where} did not answer a 1-byte request within {timeout_s * 1000:.0f} ms; "
            "check that the server process is running and not stopped, or raise "
            "QR_GRPC_TIMEOUT_MS for a slow server"
        )
    elif failure.kind == "transport":
        problem = "unreachable"
        detail = f"cannot reach {where}: {failure.detail}; start the server or fix the address" + (
            ", and check the QR_GRPC_TLS_* settings against the server's"
            if failure.code == "UNAVAILABLE"
            else ""
        )
    elif failure.kind == "protocol":
        problem = "bad_response"
        detail = f"{where} answered wrongly: {failure.detail}"
    else:
        problem = "misconfigured"
        detail = f"{where} refused a 1-byte request on {method}: {failure.detail}"
    return SourceCheck(
        ok=False,
        source=_NAME,
        detail=detail + hint_for(failure, settings),
        problem=problem,
    )

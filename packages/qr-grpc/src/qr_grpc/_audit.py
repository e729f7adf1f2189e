"""The server's side of auditing: the request's row split, the log line, the CLI options.

`qr-entropy-server --audit-log PATH` writes one `qr_entropy.AuditLog` line per
request served, before the response is sent. See ARCHITECTURE.md, design note
"Audit chain".
"""

from __future__ import annotations

import argparse
from typing import Any

import grpc
from qr_entropy import DEFAULT_FSYNC_INTERVAL_MS, AuditLog, AuditLogError

from qr_grpc._errors import GrpcConfigError
from qr_grpc._proto.entropy_service_pb2 import EntropyRequest

__all__ = ["add_audit_arguments", "check_rows", "log_served", "open_audit_log"]


def check_rows(request: EntropyRequest, context: Any) -> None:
    """Refuse (INVALID_ARGUMENT) a request whose ``rows`` does not divide its bytes."""
    rows = request.rows
    if rows and (request.bytes_needed <= 0 or request.bytes_needed % rows):
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"rows={rows} must divide bytes_needed={request.bytes_needed} "
            "(rows of equal size; 0 means one row)",
        )


def log_served(
    audit: AuditLog,
    request: EntropyRequest,
    data: bytes,
    *,
    time_ns: int,
    device_id: str,
    context: Any,
) -> None:
    """Write the audit line of one response, or refuse (UNAVAILABLE) to send it."""
    try:
        audit.append(
            data,
            time_ns=time_ns,
            sequence_id=request.sequence_id,
            rows=max(request.rows, 1),
            device_id=device_id,
        )
    except AuditLogError as error:
        # Bytes that are not in the log are never served.
        context.abort(grpc.StatusCode.UNAVAILABLE, f"audit log unavailable: {error}")


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--audit-*`` options of ``qr-entropy-server``."""
    group = parser.add_argument_group("audit log")
    group.add_argument(
        "--audit-log",
        metavar="PATH",
        help="append a hash-chained JSON Lines line per request served (time, sequence_id, "
        "bytes, a BLAKE2b-128 digest per row, previous line's SHA-256); reopening continues "
        "the chain",
    )
    group.add_argument(
        "--audit-fsync",
        choices=("always", "interval"),
        default="interval",
        help="always: a response waits until its line is on stable storage; interval "
        "(default): it waits until the line is written to the OS (survives a server crash) "
        "and lines reach stable storage within --audit-fsync-interval-ms",
    )
    group.add_argument(
        "--audit-fsync-interval-ms",
        type=float,
        default=DEFAULT_FSYNC_INTERVAL_MS,
        help=f"period of the interval policy (default: {DEFAULT_FSYNC_INTERVAL_MS:g})",
    )
    group.add_argument(
        "--audit-raw", action="store_true", help="also store the served bytes (base64)"
    )


def open_audit_log(args: argparse.Namespace) -> AuditLog | None:
    """Open the log the options ask for (None without ``--audit-log``).

    Raises:
        GrpcConfigError: The log cannot be opened, is locked by another server, or
            cannot be continued; or the interval is not positive.
    """
    if not args.audit_log:
        return None
    try:
        return AuditLog(
            args.audit_log,
            fsync=args.audit_fsync,
            fsync_interval_ms=args.audit_fsync_interval_ms,
            raw=args.audit_raw,
        )
    except AuditLogError as error:
        raise GrpcConfigError(f"--audit-log {args.audit_log}: {error}") from None

"""`verify_audit`: check per-token records against server audit logs, finding by finding.

A record is covered when its ``entropy_digest`` names exactly one row of one audit
log line, that line sits in an unbroken hash chain, and the record is not older
than the line. Every other case is a `Finding`. The record fields read here and the
log format are described in ARCHITECTURE.md, design note "Audit chain".
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qr_entropy._audit_log import GENESIS_HASH, line_hash
from qr_entropy._digest import split_digests

__all__ = ["FINDING_KINDS", "AuditReport", "Finding", "LogHead", "verify_audit"]

#: Every kind of finding, with what it means.
FINDING_KINDS: dict[str, str] = {
    "chain_break": "a log line's prev is not the hash of the line before it "
    "(a line deleted, reordered or edited)",
    "bad_index": "a log line's index does not follow the previous line's",
    "bad_line": "a log line that is not an audit line",
    "raw_mismatch": "a log line's raw bytes do not match its digests or byte count",
    "missing": "a record's digest is in no audit log",
    "duplicate": "the same bytes chose two tokens, or were served twice",
    "too_early": "a record is older than the bytes it claims",
    "mismatch": "a record's device id differs from its log line, or its sequence id or "
    "generation time is before the line's",
    "fallback": "the bytes came from the fallback source, which the audit log does not cover",
    "no_digest": "a record of a sampled token carries no entropy_digest",
    "bad_record": "a records line that is not a JSON object",
    "unused": "a served row that no record claims (only with all_served)",
    "head_missing": "an expected head hash is not the hash of any line of the logs",
}
_LOG_FIELDS = {"v": int, "index": int, "time_ns": int, "sequence_id": int, "bytes": int}


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: its kind (a key of `FINDING_KINDS`), where (``file:line``), why."""

    kind: str
    where: str
    detail: str


@dataclass(frozen=True, slots=True)
class LogHead:
    """The last whole line of one audit log: publish ``hash`` to pin the log's history."""

    path: str
    lines: int
    index: int
    hash: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Outcome of `verify_audit`; ``ok`` when there is no finding (``notes`` do not count)."""

    findings: tuple[Finding, ...]
    notes: tuple[str, ...]
    records: int
    tokens_verified: int
    log_lines: int
    log_rows: int
    heads: tuple[LogHead, ...]

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``ok`` included)."""
        return {"ok": self.ok, **asdict(self)}


@dataclass(slots=True)
class _Row:
    where: str
    row: int
    time_ns: int
    sequence_id: int
    device_id: str
    claimed_by: list[str] = field(default_factory=list)


def _read_log(
    path: Path,
    findings: list[Finding],
    rows: dict[str, list[_Row]],
    hashes: set[str],
    notes: list[str],
) -> LogHead:
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines[-1]:
        # The server was killed inside write(): the response of that line was never
        # sent (lines are written first), so it names no served bytes. Not a finding:
        # cutting a log's tail is undetectable by the chain anyway (see the design note).
        notes.append(
            f"{path}:{len(lines)}: partial last line of {len(lines[-1])} bytes ignored (the "
            "server stopped inside a write, before its response; reopening the log drops it)"
        )
    lines = lines[:-1]
    expected_prev, last_index, last_hash = GENESIS_HASH, -1, GENESIS_HASH
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        this_hash = line_hash(line)
        hashes.add(this_hash)
        try:
            entry = json.loads(line)
            problem = _log_entry_problem(entry)
        except ValueError as error:
            entry, problem = None, f"not JSON ({error})"
        if problem or not isinstance(entry, dict):
            findings.append(Finding("bad_line", where, problem))
            expected_prev, last_hash = this_hash, this_hash
            continue
        index = entry["index"]
        if entry["prev"] != expected_prev:
            previous = "the genesis value" if number == 1 else f"line {number - 1}'s hash"
            findings.append(
                Finding(
                    "chain_break",
                    where,
                    f"prev {entry['prev'][:16]}... is not {previous} {expected_prev[:16]}... "
                    f"(index {index} after index {last_index}: a line deleted, reordered or "
                    "edited before this one)",
                )
            )
        elif index != last_index + 1:
            findings.append(
                Finding("bad_index", where, f"index {index} follows index {last_index}")
            )
        _check_raw(entry, where, findings)
        for row, digest in enumerate(entry["digests"]):
            rows[digest].append(
                _Row(where, row, entry["time_ns"], entry["sequence_id"], entry["device_id"])
            )
        expected_prev, last_index, last_hash = this_hash, index, this_hash
    return LogHead(str(path), len(lines), last_index, last_hash)


def _log_entry_problem(entry: object) -> str:
    if not isinstance(entry, dict):
        return "not a JSON object"
    for name, kind in _LOG_FIELDS.items():
        if not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool):
            return f"field {name!r} is missing or not an integer"
    if not isinstance(entry.get("prev"), str) or not isinstance(entry.get("device_id"), str):
        return "field 'prev' or 'device_id' is missing or not a string"
    digests = entry.get("digests")
    if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
        return "field 'digests' is missing or not a list of strings"
    return ""


def _check_raw(entry: dict[str, Any], where: str, findings: list[Finding]) -> None:
    raw = entry.get("raw")
    if raw is None:
        return
    try:
        data = base64.b64decode(raw, validate=True)
        ok = len(data) == entry["bytes"] and list(
            split_digests(data, max(len(entry["digests"]), 1))
        ) == list(entry["digests"])
    except (binascii.Error, ValueError, TypeError):
        ok = False
    if not ok:
        findings.append(
            Finding("raw_mismatch", where, "raw bytes do not match the line's digests or bytes")
        )


def _token(record: dict[str, Any]) -> str:
    parts = [
        f"{name}={record[name]}"
        for name in ("engine_id", "request_serial", "sequence_number")
        if name in record
    ]
    return " ".join(parts)


def verify_audit(
    records: Sequence[str | Path],
    logs: Sequence[str | Path],
    *,
    clock_skew_ns: int = 0,
    all_served: bool = False,
    expected_heads: Sequence[str] = (),
) -> AuditReport:
    """Check records files against audit logs and report every finding.

    Args:
        records: Per-token records files (JSON Lines), pooled.
        logs: Audit logs (each its own hash chain), pooled.
        clock_skew_ns: Tolerance for "record older than its bytes" when the records'
            and the server's clocks differ (0: the same clock).
        all_served: Also report every served row no record claims (when the records
            are everything the server served to, e.g. one engine alone).
        expected_heads: Line hashes published earlier (a `LogHead.hash`); each must
            still be in the logs, which pins their history up to that line.

    Raises:
        OSError: A file cannot be read.
    """
    findings: list[Finding] = []
    served: dict[str, list[_Row]] = defaultdict(list)
    hashes: set[str] = set()
    notes: list[str] = []
    heads = [_read_log(Path(log), findings, served, hashes, notes) for log in logs]
    for head in expected_heads:
        if head not in hashes:
            findings.append(
                Finding("head_missing", head, "no line of the logs hashes to this head")
            )
    claims: dict[str, list[str]] = defaultdict(list)
    total = 0
    verified: set[str] = set()
    for path in records:
        for number, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except ValueError as error:
                findings.append(Finding("bad_record", where, f"not JSON ({error})"))
                continue
            if not isinstance(record, dict):
                findings.append(Finding("bad_record", where, "not a JSON object"))
                continue
            total += 1
            if record.get("status", "ok") != "ok":
                continue  # a failed request's record: no bytes chose its token
            who = _token(record)
            if record.get("is_fallback"):
                findings.append(
                    Finding(
                        "fallback",
                        where,
                        f"{who}: bytes from fallback source {record.get('entropy_source')!r} "
                        f"({record.get('fallback_reason', '')}); not covered by the audit log",
                    )
                )
                continue
            digest = record.get("entropy_digest")
            if not isinstance(digest, str) or not digest:
                findings.append(Finding("no_digest", where, f"{who}: no entropy_digest"))
                continue
            claims[digest].append(where)
            matches = served.get(digest)
            if not matches:
                findings.append(
                    Finding("missing", where, f"{who}: digest {digest} is in no audit log")
                )
                continue
            if len(matches) > 1:
                places = ", ".join(f"{m.where} row {m.row}" for m in matches[:4])
                findings.append(
                    Finding("duplicate", where, f"{who}: these bytes were served at {places}")
                )
            row = matches[0]
            row.claimed_by.append(where)
            problems = _record_problems(record, row, clock_skew_ns)
            for kind, detail in problems:
                findings.append(Finding(kind, where, f"{who}: {detail}"))
            if len(matches) == 1 and not problems:
                verified.add(where)
    for digest, wheres in claims.items():
        if len(wheres) > 1:
            verified.difference_update(wheres)
            for where in wheres:
                others = ", ".join(w for w in wheres if w != where)
                findings.append(
                    Finding("duplicate", where, f"digest {digest} also chose tokens at {others}")
                )
    if all_served:
        for digest_rows in served.values():
            for row in digest_rows:
                if not row.claimed_by:
                    findings.append(
                        Finding("unused", row.where, f"row {row.row} is claimed by no record")
                    )
    return AuditReport(
        findings=tuple(findings),
        notes=tuple(notes),
        records=total,
        tokens_verified=len(verified),
        log_lines=sum(h.lines for h in heads),
        log_rows=sum(len(v) for v in served.values()),
        heads=tuple(heads),
    )


def _record_problems(record: dict[str, Any], row: _Row, skew_ns: int) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    chosen = record.get("timestamp_ns")
    claimed = record.get("entropy_generated_ns") or 0
    if isinstance(chosen, int):
        newest = max(row.time_ns, claimed if isinstance(claimed, int) else 0)
        if chosen + skew_ns < newest:
            problems.append(
                (
                    "too_early",
                    f"chosen at {chosen} ns, before its bytes were generated at {newest} ns "
                    f"(by {(newest - chosen) / 1e6:.3f} ms)",
                )
            )
    # A fetch served in several requests reports its last request's id and time, so a
    # record may name a later request than its row's line, never an earlier one.
    for name, logged in (
        ("entropy_sequence_id", row.sequence_id),
        ("entropy_generated_ns", row.time_ns),
    ):
        value = record.get(name)
        if isinstance(value, int) and value and value < logged:
            problems.append(
                ("mismatch", f"{name}={value} is before the log line's {logged} for these bytes")
            )
    device = record.get("device_id")
    if device and device != row.device_id:
        problems.append(
            ("mismatch", f"device_id={device!r} but the log line has {row.device_id!r}")
        )
    return problems

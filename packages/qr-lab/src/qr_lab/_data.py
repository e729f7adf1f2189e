"""The records of a run in DuckDB: one table of its tokens, with every exclusion flagged.

Records are read from JSON Lines and Parquet files alike (any mix, any number),
with the columns qr-lab uses named explicitly: fields it does not know are
ignored, fields an older engine did not write are NULL.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

__all__ = ["COLUMNS", "RunTable", "all_fields", "load_tokens", "record_files"]

#: The record fields qr-lab reads, with their DuckDB types.
COLUMNS: dict[str, str] = {
    "request_serial": "BIGINT",
    "sequence_number": "BIGINT",
    "session": "VARCHAR",
    "label": "VARCHAR",
    "status": "VARCHAR",
    "u": "DOUBLE",
    "z_score": "DOUBLE",
    "token_prob": "DOUBLE",
    "shannon_entropy": "DOUBLE",
    "is_fallback": "BOOLEAN",
    "health": "VARCHAR",
    "entropy_source": "VARCHAR",
    "entropy_fetch_ms": "DOUBLE",
    "timestamp_ns": "BIGINT",
    "engine_id": "VARCHAR",
}


def record_files(paths: Sequence[Path]) -> tuple[list[str], list[str]]:
    """JSON Lines and Parquet files under ``paths`` (files or directories), sorted."""
    jsonl: list[str] = []
    parquet: list[str] = []
    for path in paths:
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in candidates:
            if f.suffix in (".jsonl", ".json") and f.is_file():
                jsonl.append(str(f.resolve()))
            elif f.suffix == ".parquet" and f.is_file():
                parquet.append(str(f.resolve()))
    return jsonl, parquet


def _select(con: duckdb.DuckDBPyConnection, jsonl: list[str], parquet: list[str]) -> str:
    parts = []
    cols = ", ".join(COLUMNS)
    if jsonl:
        spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in COLUMNS.items()) + "}"
        files = "[" + ", ".join(_quote(f) for f in jsonl) + "]"
        parts.append(
            f"SELECT {cols}, filename FROM read_json({files}, format='newline_delimited', "
            f"columns={spec}, filename=true, ignore_errors=true)"
        )
    if parquet:
        files = "[" + ", ".join(_quote(f) for f in parquet) + "]"
        source = f"read_parquet({files}, union_by_name=true, filename=true)"
        present = {row[0] for row in con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        exprs = [
            f"CAST({k} AS {v}) AS {k}" if k in present else f"CAST(NULL AS {v}) AS {k}"
            for k, v in COLUMNS.items()
        ]
        # Parquet written by `qr-lab export` keeps the original file in `source_file`.
        origin = "source_file" if "source_file" in present else "filename"
        parts.append(f"SELECT {', '.join(exprs)}, {origin} AS filename FROM {source}")
    if not parts:
        return (
            "SELECT "
            + ", ".join(f"CAST(NULL AS {v}) AS {k}" for k, v in COLUMNS.items())
            + ", CAST(NULL AS VARCHAR) AS filename WHERE false"
        )
    return " UNION ALL BY NAME ".join(parts)


def all_fields(con: duckdb.DuckDBPyConnection, jsonl: list[str], parquet: list[str]) -> str:
    """A query of every field of every record (any schema), the file kept as ``source_file``."""
    parts = []
    if jsonl:
        files = "[" + ", ".join(_quote(f) for f in jsonl) + "]"
        parts.append(
            f"SELECT * RENAME (filename AS source_file) FROM read_json({files}, "
            "format='newline_delimited', union_by_name=true, filename=true)"
        )
    if parquet:
        files = "[" + ", ".join(_quote(f) for f in parquet) + "]"
        source = f"read_parquet({files}, union_by_name=true, filename=true)"
        present = {row[0] for row in con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        if "source_file" in present:  # a qr-lab export: keep the original file
            parts.append(f"SELECT * EXCLUDE (filename) FROM {source}")
        else:
            parts.append(f"SELECT * RENAME (filename AS source_file) FROM {source}")
    return " UNION ALL BY NAME ".join(parts)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class RunTable:
    """A DuckDB connection holding ``tok``: one row per record of the run's trials.

    Columns: the record fields the analysis uses, ``filename``, ``cond``
    (condition), ``ord`` (trial order), and the flags: ``other_attempt`` (a
    request of a trial that did not finish, superseded by its retry),
    ``superseded`` (a chunked-prefill record replaced by a later one with the
    same sequence number), ``failed``, ``fallback`` and ``unhealthy``.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def sql(self, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a query; all rows."""
        return self.con.execute(query, params or []).fetchall()


def load_tokens(
    files: Sequence[Path], trials: list[dict[str, Any]], run_dir: Path | None = None
) -> RunTable:
    """Build the ``tok`` table from record files and the run's finished trials.

    ``trials`` are dicts with ``trial_id``, ``condition``, ``order`` and
    ``records_file`` (the engine file that served the trial's finished attempt,
    relative to ``run_dir``, or None when unknown).
    """
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    jsonl, parquet = record_files(files)
    con.execute(
        "CREATE TEMP TABLE trials (trial_id VARCHAR, cond VARCHAR, ord BIGINT, rec_file VARCHAR)"
    )
    rows = [
        (
            t["trial_id"],
            t["condition"],
            int(t["order"]),
            str((run_dir / t["records_file"]).resolve())
            if t.get("records_file") and run_dir is not None
            else None,
        )
        for t in trials
    ]
    if rows:
        con.executemany("INSERT INTO trials VALUES (?, ?, ?, ?)", rows)
    source = _select(con, jsonl, parquet)
    # One pass over the records; every flag after it is computed per request (a few
    # rows per trial), never with a window over all the tokens.
    con.execute(
        f"""
        CREATE TEMP TABLE raw AS
        SELECT s.session, s.request_serial, s.sequence_number, s.timestamp_ns, s.u, s.z_score,
            s.token_prob, s.shannon_entropy, s.entropy_fetch_ms, s.filename,
            coalesce(s.engine_id, '') AS engine_id, t.cond, t.ord,
            coalesce(s.status, 'ok') <> 'ok' AS failed,
            coalesce(s.is_fallback, false) AS fallback,
            coalesce(s.health, 'ok') = 'failed' AS unhealthy
        FROM ({source}) s JOIN trials t ON s.session = t.trial_id
        """
    )
    con.execute(
        """
        CREATE TEMP TABLE req AS
        SELECT session, filename, engine_id, request_serial,
               count(*) AS n, max(sequence_number) AS top
        FROM raw GROUP BY ALL
        """
    )
    # The finished attempt of a trial: its last request in the engine that finished it.
    con.execute(
        """
        CREATE TEMP TABLE finished AS
        SELECT r.session, arg_max(r.filename, r.request_serial) AS filename,
            arg_max(r.engine_id, r.request_serial) AS engine_id, max(r.request_serial) AS rs
        FROM req r JOIN trials t ON r.session = t.trial_id
        WHERE t.rec_file IS NULL OR r.filename = t.rec_file
        GROUP BY r.session
        """
    )
    # Chunked prefill: a request with more records than sequence numbers holds records
    # that a later one with the same number superseded (the last one by time is kept).
    con.execute(
        """
        CREATE TEMP TABLE sup AS
        WITH dup AS (
            SELECT r.* FROM raw r SEMI JOIN (SELECT * FROM req WHERE n > top + 1) q
                ON r.filename = q.filename AND r.engine_id = q.engine_id
                AND r.request_serial = q.request_serial
        )
        SELECT filename, engine_id, request_serial, sequence_number, timestamp_ns FROM (
            SELECT *, row_number() OVER (
                PARTITION BY filename, engine_id, request_serial, sequence_number
                ORDER BY timestamp_ns DESC
            ) AS k FROM dup
        ) WHERE k > 1
        """
    )
    con.execute(
        """
        CREATE TEMP TABLE tok AS
        SELECT r.*,
            f.session IS NULL AS other_attempt,
            s.filename IS NOT NULL AS superseded
        FROM raw r
        LEFT JOIN finished f
            ON r.session = f.session AND r.filename = f.filename
            AND r.engine_id = f.engine_id AND r.request_serial = f.rs
        LEFT JOIN sup s
            ON r.filename = s.filename AND r.engine_id = s.engine_id
            AND r.request_serial = s.request_serial
            AND r.sequence_number = s.sequence_number AND r.timestamp_ns = s.timestamp_ns
        """
    )
    con.execute("DROP TABLE raw")
    return RunTable(con)

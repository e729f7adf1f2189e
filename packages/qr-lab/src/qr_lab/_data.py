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

__all__ = ["COLUMNS", "RunTable", "load_tokens", "record_files"]

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


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class RunTable:
    """A DuckDB connection holding ``tok``: one row per record of the run's trials.

    Columns: the record fields, ``filename``, ``cond`` (condition), ``ord`` (trial
    order), and the flags ``other_attempt`` (a request of a trial that did not
    finish, superseded by its retry), ``superseded`` (a chunked-prefill record
    replaced by a later one with the same sequence number), ``failed``,
    ``fallback`` and ``unhealthy``.
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
    con.execute(
        f"""
        CREATE TEMP TABLE tok AS
        WITH r AS (
            SELECT s.*, t.cond, t.ord, t.rec_file
            FROM ({source}) s JOIN trials t ON s.session = t.trial_id
        ),
        attempt AS (
            SELECT session, coalesce(engine_id, filename) AS eng, max(request_serial) AS last
            FROM r WHERE rec_file IS NULL OR filename = rec_file
            GROUP BY ALL
        )
        SELECT r.* EXCLUDE (rec_file),
            a.last IS NULL OR r.request_serial <> a.last AS other_attempt,
            coalesce(
                lead(r.timestamp_ns) OVER (
                    PARTITION BY coalesce(r.engine_id, r.filename), r.request_serial,
                        r.sequence_number
                    ORDER BY r.timestamp_ns
                ) IS NOT NULL,
                false
            ) AS superseded,
            coalesce(r.status, 'ok') <> 'ok' AS failed,
            coalesce(r.is_fallback, false) AS fallback,
            coalesce(r.health, 'ok') = 'failed' AS unhealthy
        FROM r LEFT JOIN attempt a
            ON r.session = a.session AND coalesce(r.engine_id, r.filename) = a.eng
        """
    )
    return RunTable(con)

"""The records of a run in DuckDB: one table of its tokens, with every exclusion flagged.

Records are read from JSON Lines and Parquet files alike (any mix, any number),
with the columns qr-lab uses named explicitly: fields it does not know are
ignored, fields an older engine did not write are NULL.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

__all__ = ["COLUMNS", "RunTable", "all_fields", "insert_rows", "load_tokens", "record_files"]

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
            f"SELECT * EXCLUDE (filename), filename AS source_file FROM read_json({files}, "
            "format='newline_delimited', union_by_name=true, filename=true)"
        )
    if parquet:
        files = "[" + ", ".join(_quote(f) for f in parquet) + "]"
        source = f"read_parquet({files}, union_by_name=true, filename=true)"
        present = {row[0] for row in con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        if "source_file" in present:  # a qr-lab export: keep the original file
            parts.append(f"SELECT * EXCLUDE (filename) FROM {source}")
        else:
            parts.append(f"SELECT * EXCLUDE (filename), filename AS source_file FROM {source}")
    return " UNION ALL BY NAME ".join(parts)


def insert_rows(
    con: duckdb.DuckDBPyConnection, table: str, types: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert many rows in one statement (lists as parameters; executemany is per row)."""
    if not rows:
        return
    columns = [list(col) for col in zip(*rows, strict=True)]
    unnest = ", ".join(f"unnest(?::{t}[])" for t in types)
    con.execute(f"INSERT INTO {table} SELECT {unnest}", columns)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class RunTable:
    """A DuckDB connection over a run's records, read where they lie (no copy of the tokens).

    Views: ``tok``, one row per record of the run's trials, with the record
    fields the analysis uses, ``filename``, ``cond`` / ``cix`` (condition name
    and index), ``ord`` (trial order) and the flags ``other_attempt`` (a request
    of a trial that did not finish: its retry counts), ``superseded`` (a
    chunked-prefill record replaced by a later one with the same sequence
    number), ``failed``, ``fallback``, ``unhealthy`` and ``valid`` (z and u
    present); ``grp``, the same counted per request and flag combination
    (``n``, ``sz`` = Σz, ``szz`` = Σz²), small enough for every count of the
    analysis. See ARCHITECTURE.md, design note "Trials, attempts and superseded
    records in qr-lab".
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def sql(self, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a query; all rows."""
        return self.con.execute(query, params or []).fetchall()


_KEY = "session, filename, engine_id, request_serial"
_FLAGS = "failed, fallback, unhealthy, valid"


def load_tokens(
    files: Sequence[Path],
    trials: list[dict[str, Any]],
    run_dir: Path | None = None,
    conditions: Sequence[str] = (),
) -> RunTable:
    """Read the records of the run's finished trials.

    ``trials`` are dicts with ``trial_id``, ``condition``, ``order`` and
    ``records_file`` (the engine file that served the trial's finished attempt,
    relative to ``run_dir``, or None when unknown). One pass over the records
    builds ``grp``; the other views read them again when queried.
    """
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    jsonl, parquet = record_files(files)
    table = RunTable(con)
    if jsonl:
        # JSON is parsed once, into a temporary Parquet file of the columns used: every
        # later query then reads that (the records are read several times).
        scratch = Path(tempfile.mkdtemp(prefix="qr-lab-"))
        weakref.finalize(table, shutil.rmtree, scratch, ignore_errors=True)
        converted = scratch / "records.parquet"
        con.execute(
            "COPY (SELECT * EXCLUDE (filename), filename AS source_file "
            f"FROM ({_select(con, jsonl, [])})) TO {_quote(str(converted))} (FORMAT PARQUET)"
        )
        parquet = [*parquet, str(converted)]
    names = list(conditions) or sorted({t["condition"] for t in trials})
    con.execute(
        "CREATE TEMP TABLE trials (trial_id VARCHAR, cond VARCHAR, cix INTEGER, ord BIGINT, "
        "rec_file VARCHAR)"
    )
    rows = [
        (
            t["trial_id"],
            t["condition"],
            names.index(t["condition"]),
            int(t["order"]),
            str((run_dir / t["records_file"]).resolve())
            if t.get("records_file") and run_dir is not None
            else None,
        )
        for t in trials
        if t["condition"] in names
    ]
    insert_rows(con, "trials", ["VARCHAR", "VARCHAR", "INTEGER", "BIGINT", "VARCHAR"], rows)
    con.execute(
        f"""
        CREATE TEMP VIEW src AS
        SELECT s.session, s.request_serial, s.sequence_number, s.timestamp_ns, s.u, s.z_score,
            s.token_prob, s.shannon_entropy, s.entropy_fetch_ms, s.filename,
            coalesce(s.engine_id, '') AS engine_id, t.cond, t.cix, t.ord,
            coalesce(s.status, 'ok') <> 'ok' AS failed,
            coalesce(s.is_fallback, false) AS fallback,
            coalesce(s.health, 'ok') = 'failed' AS unhealthy,
            s.z_score IS NOT NULL AND s.u IS NOT NULL AS valid
        FROM ({_select(con, [], parquet)}) s JOIN trials t ON s.session = t.trial_id
        """
    )
    # The one pass over every record: counts and sums per request and flag combination.
    con.execute(
        f"""
        CREATE TEMP TABLE grp AS
        SELECT {_KEY}, cond, cix, ord, false AS superseded, {_FLAGS},
            count(*) AS n, sum(z_score) AS sz, sum(z_score * z_score) AS szz,
            max(sequence_number) AS top
        FROM src GROUP BY ALL
        """
    )
    con.execute(
        f"CREATE TEMP TABLE req AS SELECT {_KEY}, sum(n) AS n, max(top) AS top "
        "FROM grp GROUP BY ALL"
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
    # Chunked prefill: only a request with more records than sequence numbers holds
    # superseded records (the last record of a number, by time, is kept).
    con.execute(f"CREATE TEMP TABLE suspect AS SELECT {_KEY} FROM req WHERE n > top + 1")
    clean = con.execute("SELECT count(*) FROM suspect").fetchone() == (0,)
    con.execute(
        f"""
        CREATE TEMP TABLE sup AS
        SELECT {_KEY}, sequence_number, timestamp_ns FROM (
            SELECT s.*, row_number() OVER (
                PARTITION BY s.filename, s.engine_id, s.request_serial, s.sequence_number
                ORDER BY s.timestamp_ns DESC
            ) AS k
            FROM src s SEMI JOIN suspect q USING ({_KEY})
            {"WHERE false" if clean else ""}
        ) WHERE k > 1
        """
    )
    con.execute(
        """
        CREATE TEMP VIEW tok AS
        SELECT s.*, f.session IS NULL AS other_attempt, p.session IS NOT NULL AS superseded
        FROM src s
        LEFT JOIN finished f ON s.session = f.session AND s.filename = f.filename
            AND s.engine_id = f.engine_id AND s.request_serial = f.rs
        LEFT JOIN sup p ON s.filename = p.filename AND s.engine_id = p.engine_id
            AND s.request_serial = p.request_serial AND s.sequence_number = p.sequence_number
            AND s.timestamp_ns = p.timestamp_ns AND s.session = p.session
        """
    )
    if not clean:
        con.execute(
            "DELETE FROM grp USING suspect q WHERE grp.session = q.session AND "
            "grp.filename = q.filename AND grp.engine_id = q.engine_id AND "
            "grp.request_serial = q.request_serial"
        )
        con.execute(
            f"""
            INSERT INTO grp
            SELECT {_KEY}, cond, cix, ord, superseded, {_FLAGS},
                count(*), sum(z_score), sum(z_score * z_score), max(sequence_number)
            FROM tok SEMI JOIN suspect USING ({_KEY}) GROUP BY ALL
            """
        )
    con.execute(
        """
        CREATE TEMP VIEW grpf AS
        SELECT g.*, f.session IS NULL AS other_attempt FROM grp g
        LEFT JOIN finished f ON g.session = f.session AND g.filename = f.filename
            AND g.engine_id = f.engine_id AND g.request_serial = f.rs
        """
    )
    return table

"""``qr-lab export``: a run's records, every field, as Hive-partitioned Parquet."""

from __future__ import annotations

from pathlib import Path

import duckdb

from qr_lab._analyze import finished_trials
from qr_lab._data import all_fields, insert_rows, record_files
from qr_lab._errors import RunError
from qr_lab._plan import RECORDS_DIR

__all__ = ["export_parquet"]


def export_parquet(run_dir: Path, out_dir: Path) -> int:
    """Write ``out_dir/cond=<condition>/*.parquet``: every record of the run's trials.

    Every record field is kept (the exclusions are the reader's to apply, as
    ``qr-lab analyze`` does), with ``trial_order`` and the file the record came
    from as ``source_file``; ``qr-lab analyze`` reads the export back as well.
    Returns the number of rows written.
    """
    jsonl, parquet = record_files([run_dir / RECORDS_DIR])
    if not jsonl and not parquet:
        raise RunError(f"{run_dir} holds no records to export")
    con = duckdb.connect()
    con.execute("CREATE TEMP TABLE trials (trial_id VARCHAR, cond VARCHAR, trial_order BIGINT)")
    rows = [(t["trial_id"], t["condition"], int(t["order"])) for t in finished_trials(run_dir)]
    insert_rows(con, "trials", ["VARCHAR", "VARCHAR", "BIGINT"], rows)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    target = str(out_dir).replace("'", "''")
    query = (
        f"SELECT s.*, t.cond, t.trial_order FROM ({all_fields(con, jsonl, parquet)}) s "
        "JOIN trials t ON s.session = t.trial_id"
    )
    con.execute(f"CREATE TEMP VIEW export AS {query}")
    con.execute(
        f"COPY export TO '{target}' (FORMAT PARQUET, PARTITION_BY (cond), OVERWRITE_OR_IGNORE true)"
    )
    return int(con.execute("SELECT count(*) FROM export").fetchone()[0])  # type: ignore[index]

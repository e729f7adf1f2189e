"""``qr-lab export``: a run's usable and excluded tokens as Hive-partitioned Parquet."""

from __future__ import annotations

from pathlib import Path

from qr_lab._analyze import finished_trials
from qr_lab._data import load_tokens
from qr_lab._plan import RECORDS_DIR

__all__ = ["export_parquet"]


def export_parquet(run_dir: Path, out_dir: Path) -> int:
    """Write ``out_dir/cond=<condition>/*.parquet`` with every record of the run's trials.

    The exclusion flags travel as columns, so Spark or Trino can apply the
    study's exclusions themselves; the source file is kept as ``source_file``.
    Returns the number of rows written.
    """
    table = load_tokens([run_dir / RECORDS_DIR], finished_trials(run_dir), run_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    target = str(out_dir).replace("'", "''")
    table.con.execute(
        "COPY (SELECT * EXCLUDE (filename), filename AS source_file FROM tok) "
        f"TO '{target}' (FORMAT PARQUET, PARTITION_BY (cond), OVERWRITE_OR_IGNORE true)"
    )
    return int(table.sql("SELECT count(*) FROM tok")[0][0])

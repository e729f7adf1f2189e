"""A tiny fixed-width table printer shared by the benchmark scripts.

Usage::

    from _table import print_table
    print_table(["case", "ms", "ratio"], [["B=1", "0.12", "1.0x"]])

Cells are converted with ``str``; columns are right-aligned except the first.
Scripts run as ``python benchmarks/<name>.py``, so this module is importable
by its bare name.
"""

from __future__ import annotations

from collections.abc import Sequence


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print ``rows`` under ``header`` as an aligned plain-text table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))

"""The report: one HTML file, six inline PNG plots, the registration hash and the verdict."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

from _simulate import simulate_run, study_file
from qr_lab._report import write_report


def test_the_report_is_self_contained_with_six_plots(tmp_path: Path) -> None:
    run = simulate_run(study_file(tmp_path), tmp_path / "run", seed=12, fallback_every=5,
                       superseded_every=9, failed_trials=2)  # fmt: skip
    out = tmp_path / "report.html"
    result = write_report(run, out)
    text = out.read_text()
    images = re.findall(
        r"<img class='plot' id='plot-(\w+)' alt='[^']*' src='data:image/png;base64,([^']+)'>", text
    )
    assert [i[0] for i in images] == ["cumulative", "u", "z", "position", "health", "latency"]
    for _, data in images:
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert width > 0
        assert height > 0
    assert result["run"]["registration"]["hash"] in text
    assert result["primary"]["verdict"] in text
    # Nothing is fetched from anywhere: no external URL, script or stylesheet.
    assert not re.search(r"(src|href)=['\"](?!data:)", text)
    assert "<script" not in text

"""Headless Chromium for the report tests: which images loaded, and a screenshot.

No driver and no CDP: the report is copied with a script appended that writes
every image's load state into the page, and ``--dump-dom`` prints the page
after it loaded (``--virtual-time-budget`` lets the load finish first).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

_CHECK = """<script>
window.addEventListener('load', () => {
  const out = [...document.images].map(i => ({id: i.id, complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight, src: i.src.slice(0, 22)}));
  const pre = document.createElement('pre');
  pre.id = 'qr-lab-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str | None:
    """The Chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if (path := shutil.which(name)) is not None:
            return path
    return None


def _flags(profile: Path) -> list[str]:
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}",
    ]  # fmt: skip


def image_states(binary: str, report: Path, tmp: Path) -> list[dict[str, Any]]:
    """Every image of the report as loaded by Chromium: id, complete, natural width/height."""
    page = tmp / "report-check.html"
    page.write_text(report.read_text().replace("</body>", _CHECK + "</body>"))
    out = subprocess.run(
        [binary, *_flags(tmp / "profile"), "--virtual-time-budget=20000", "--dump-dom",
         page.as_uri()],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    found = re.search(r'<pre id="qr-lab-check">(.*?)</pre>', out, re.S)
    assert found is not None, "the check script did not run:\n" + out[-2000:]
    return list(json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")))


def screenshot(binary: str, report: Path, png: Path, tmp: Path) -> None:
    """A full-length screenshot of the report."""
    subprocess.run(
        [binary, *_flags(tmp / "profile-shot"), "--window-size=1200,4000",
         f"--screenshot={png}", report.as_uri()],
        capture_output=True, timeout=300, check=True,
    )  # fmt: skip

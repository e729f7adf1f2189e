"""The README's commands work as shown.

Every shell block in README.md carries a marker on the line before it:

- ``<!-- test: run -->``: the block runs here, unchanged, with ``bash -euo
  pipefail`` in a fresh temporary folder, with the test environment's commands
  (``qr-entropy``, ``qr-entropy-server``, ``qr-vllm``...) first on PATH.
  Options after ``run``: ``in=repo`` runs it from the repository root instead;
  ``setup=NAME`` prepares the folder first (see `SETUPS`).
- ``<!-- test: skip (reason) -->``: the block needs what this machine lacks (a
  GPU, a Docker engine, the Hugging Face hub, a running vLLM server); the reason
  is required.

Python blocks may carry the same markers. Background processes a block starts
are killed with its process group when it ends, failed or not. A block whose
``qr-entropy check`` rejects its fresh random bytes (about 0.4% of runs for a
sound source at the default alpha) runs once more.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from repo_support import REPO_ROOT

README = REPO_ROOT / "README.md"
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
_MARKER = re.compile(r"<!-- test: (run(?P<opts>(?: [a-z]+=[a-z0-9_-]+)*)|skip \((?P<why>.+)\)) -->")
# The "Two commands" block is kept exactly as written: ./scripts/test is the command
# that runs this test (running it here would recurse), and ./scripts/demo runs in the
# Quick start block below it, with a short --max-tokens.
UNMARKED_ALLOWED = {"./scripts/demo    # set up, then serve"}
BLOCK_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    line: int
    language: str
    code: str
    marker: str | None

    @property
    def action(self) -> str:
        match = _MARKER.fullmatch(self.marker or "")
        if not match:
            return "none"
        return "run" if match.group(0).startswith("<!-- test: run") else "skip"

    @property
    def options(self) -> dict[str, str]:
        match = _MARKER.fullmatch(self.marker or "")
        opts = (match.group("opts") or "") if match else ""
        return dict(item.split("=", 1) for item in opts.split())

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language})"


def parse_blocks(text: str) -> list[Block]:
    """Every fenced block with its language and the marker on the line before it."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        previous = lines[start - 1].strip() if start > 0 else ""
        marker = previous if previous.startswith("<!-- test:") else None
        blocks.append(Block(start + 1, fence.group(1), "\n".join(lines[start + 1 : j]), marker))
        i = j + 1
    return blocks


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))
RUN_BLOCKS = [b for b in BLOCKS if b.action == "run"]


def test_every_shell_block_is_marked() -> None:
    """Each shell block says whether it runs here, or why not."""
    shell = [b for b in BLOCKS if b.language in SHELL_LANGUAGES]
    assert shell, "the README has no shell block?"
    unmarked = [
        str(b)
        for b in shell
        if b.action == "none" and not any(b.code.startswith(a) for a in UNMARKED_ALLOWED)
    ]
    assert not unmarked, f"shell blocks without <!-- test: run/skip (...) -->: {unmarked}"
    malformed = [str(b) for b in BLOCKS if b.marker and b.action == "none"]
    assert not malformed, f"unreadable markers: {malformed}"
    for block in RUN_BLOCKS:
        assert set(block.options) <= {"in", "setup"}, f"{block}: unknown option"
        assert block.options.get("setup", "template") in SETUPS, f"{block}: unknown setup"


def test_guide_blocks_that_must_run_do_run() -> None:
    """The quick start and the entropy-source guide keep their runnable examples."""
    joined = "\n".join(b.code for b in RUN_BLOCKS)
    for needle in (
        'qr-entropy-server --address "unix://',
        "--source quantum_grpc",
        "qr-entropy check",
        "qr-entropy sample",
        "./scripts/demo",
        "my_qrng_server.py",
    ):
        assert needle in joined, f"no runnable README block contains {needle!r}"


def _fill_template(folder: Path) -> None:
    """What a device owner does first: copy the template and fill its TODO (here: os.urandom)."""
    from template_fill import fill_template

    source = REPO_ROOT / "examples" / "servers" / "qrng_template_server.py"
    (folder / "my_qrng_server.py").write_text(fill_template(source.read_text()))


def _records(folder: Path) -> None:
    """Real records to analyse: the demo's tiny model with bytes from a local gRPC server."""
    result = subprocess.run(
        ["qr-vllm", "demo", "--max-tokens", "8", "--records", "tokens.jsonl"],
        cwd=folder,
        env=_environment(),
        capture_output=True,
        text=True,
        check=False,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert result.returncode == 0, f"qr-vllm demo failed:\n{result.stdout}\n{result.stderr}"
    assert (folder / "tokens.jsonl").stat().st_size > 0


SETUPS: dict[str, Callable[[Path], None]] = {"template": _fill_template, "records": _records}


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QR_")}
    # The commands the README names come from the environment running the tests.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.mark.timeout(BLOCK_TIMEOUT_S + 30)
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=str)
def test_readme_block_runs(block: Block, tmp_path: Path) -> None:
    """The block exits 0 when run as shown."""
    cwd = REPO_ROOT if block.options.get("in") == "repo" else tmp_path
    # What a block run from the repository root writes there (the demo's records) goes
    # again afterwards, unless it was there before.
    before = set(REPO_ROOT.iterdir()) if cwd == REPO_ROOT else set()
    if "setup" in block.options:
        SETUPS[block.options["setup"]](tmp_path)
    if block.language == "python":
        command = [sys.executable, "-c", block.code]
    else:
        shutil.which("bash") or pytest.fail("bash is needed to run the README's blocks")
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    try:
        returncode, output = _run(command, cwd, block)
        if returncode != 0 and STATISTICAL_FAIL in output:
            # `qr-entropy check` judges fresh random bytes at alpha = 0.001 per test, so a
            # sound source fails it in about 0.4% of runs: one rerun on new bytes. A source
            # that is really biased fails both.
            returncode, output = _run(command, cwd, block)
    finally:
        if cwd == REPO_ROOT:
            for path in set(REPO_ROOT.iterdir()) - before:
                if path.is_file() and not _tracked(path):
                    path.unlink()
    assert returncode == 0, f"{block} failed ({returncode}):\n{output[-6000:]}"


#: What `qr-entropy check` prints when one of its statistical tests rejects.
STATISTICAL_FAIL = "overall: FAIL"


def _run(command: list[str], cwd: Path, block: Block) -> tuple[int, str]:
    """Run ``command`` in its own process group; its exit status and output.

    The output goes to a file, not a pipe: a background job the block started and did
    not stop (it failed before its ``kill``) would hold a pipe open and keep the
    test waiting for its end. The group is ended as soon as the block's shell exits.
    """
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: background jobs die with it
        )
        try:
            returncode = process.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            log.seek(0)
            pytest.fail(f"{block} did not finish in {BLOCK_TIMEOUT_S} s:\n{log.read()[-4000:]}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        log.seek(0)
        return returncode, log.read()


def _tracked(path: Path) -> bool:
    """Whether git tracks ``path`` (a new file a block should leave stays)."""
    result = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


@pytest.mark.timeout(120)  # the background job below would hold a pipe for 300 s
def test_a_failed_block_does_not_wait_for_its_background_jobs(tmp_path: Path) -> None:
    # The block fails before it stops its server: its output comes back at once and
    # the server goes with the block's process group (it would hold a pipe for 300 s).
    block = Block(0, "bash", "sleep 300 &\necho started\nfalse\nkill %1", "<!-- test: run -->")
    command = ["bash", "-euo", "pipefail", "-c", block.code]
    returncode, output = _run(command, tmp_path, block)
    assert returncode == 1
    assert output == "started\n"

"""The repository stands alone: nothing in it cites a file outside it.

A fact the code relies on lives in ARCHITECTURE.md under "## Design notes"; a
comment points there (``See ARCHITECTURE.md, design note "<title>".``). These
tests fail on:

- citations of documents that are not in the repository: the original
  requirements and their errata, the drafts, the folder they were kept in;
- paths that leave the repository: ``../`` out of the root, this machine's
  absolute paths, and vLLM ``file.py:line`` references used as the authority;
- markdown links to relative paths that do not resolve to a file or folder inside
  the repository;
- a ``design note "<title>"`` reference with no such note, and two notes of one title.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from repo_support import REPO_ROOT

# Split so that this file does not match its own patterns.
_E = "ERR" + "ATA"
FORBIDDEN: dict[str, re.Pattern[str]] = {
    "the errata of the original requirements": re.compile(rf"\b{_E}\b|{_E}\.md", re.IGNORECASE),
    "the original requirements": re.compile(r"\bPRD\.md\b|\bPRD\s*§"),
    "the original drafts": re.compile(r"\b(?:ARCHITECTURE|README)-draft\b"),
    "the folder the requirements were kept in": re.compile(r"(?:\.\./)+shared/|\bshared/spec\b"),
    "an absolute path on a development machine": re.compile(r"(?<![\w.])/work/\w"),
    "a vLLM source line as the authority": re.compile(r"\bvllm/[\w/]+\.py:\d+"),
}

TEXT_SUFFIXES = {
    ".py", ".md", ".toml", ".yml", ".yaml", ".cfg", ".ini", ".txt", ".sh", ".proto",
    ".env", ".service", ".json", ".jsonl", ".html", ".j2", ".pyi",
}  # fmt: skip
SKIP_PARTS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}


def repository_files() -> list[Path]:
    """Every file of the checkout that git tracks or would track (not ignored)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout.decode()
        paths = [REPO_ROOT / name for name in listed.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist, say)
        paths = []
        for folder, dirs, files in os.walk(REPO_ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_PARTS and not d.startswith(".")]
            paths += [Path(folder) / name for name in files]
    return sorted(p for p in paths if p.is_file())


def is_text(path: Path) -> bool:
    name = path.name
    return (
        path.suffix in TEXT_SUFFIXES
        or name.startswith(("Dockerfile", ".env"))
        or name in {"LICENSE", "Makefile", ".gitignore", ".dockerignore"}
        or (path.parent.name == "scripts" and "." not in name)
    )


# This file names what it forbids, so it is the one file not scanned.
TEXT_FILES = [
    p
    for p in repository_files()
    if is_text(p) and p.name != "uv.lock" and p.resolve() != Path(__file__).resolve()
]
MARKDOWN = [p for p in TEXT_FILES if p.suffix == ".md"]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def test_the_scan_sees_the_repository() -> None:
    names = {p.relative_to(REPO_ROOT).as_posix() for p in TEXT_FILES}
    for expected in ("ARCHITECTURE.md", "README.md", "scripts/vllm-env", "pyproject.toml"):
        assert expected in names
    assert any(n.startswith("packages/qr-core/src/") for n in names)
    assert any(n.startswith("examples/docker/Dockerfile") for n in names)


def test_no_citation_of_a_file_outside_the_repository() -> None:
    found = []
    for path in TEXT_FILES:
        for number, line in enumerate(_read(path).splitlines(), 1):
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    where = f"{path.relative_to(REPO_ROOT)}:{number}"
                    found.append(f"{where}: cites {what}: {line.strip()[:120]}")
    assert not found, (
        "Move the fact into ARCHITECTURE.md under '## Design notes' and point there "
        '(See ARCHITECTURE.md, design note "<title>".):\n' + "\n".join(found)
    )


_PARENT_PATH = re.compile(r"(?<![\w./-])((?:\.\./)+[\w.-]*)")


def test_relative_paths_do_not_climb_out_of_the_repository() -> None:
    """``../`` in any file (compose contexts, docs, scripts) resolves inside the checkout."""
    root = REPO_ROOT.resolve()
    outside = []
    for path in TEXT_FILES:
        for number, line in enumerate(_read(path).splitlines(), 1):
            for relative in _PARENT_PATH.findall(line):
                if not (path.parent / relative).resolve().is_relative_to(root):
                    outside.append(f"{path.relative_to(REPO_ROOT)}:{number}: {relative}")
    assert not outside, "paths that leave the repository:\n" + "\n".join(outside)


_INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_HTML_LINK = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)=["']([^"']+)["']""", re.IGNORECASE)
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _link_targets(text: str) -> list[str]:
    text = _FENCE.sub("", text)  # code blocks show syntax, they do not link
    text = re.sub(r"`[^`\n]*`", "", text)
    return [
        *_INLINE_LINK.findall(text),
        *_REFERENCE_LINK.findall(text),
        *_HTML_LINK.findall(text),
    ]


def test_markdown_links_resolve_inside_the_repository() -> None:
    root = REPO_ROOT.resolve()
    broken = []
    for path in MARKDOWN:
        for target in _link_targets(_read(path)):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL (https:, mailto:) or an anchor in the same page
            relative = target.split("#", 1)[0].split("?", 1)[0]
            if not relative:
                continue
            base = root if relative.startswith("/") else path.parent
            resolved = (base / relative.lstrip("/")).resolve()
            where = path.relative_to(REPO_ROOT)
            if not resolved.is_relative_to(root):
                broken.append(f"{where}: {target} leaves the repository")
            elif not resolved.exists():
                broken.append(f"{where}: {target} does not exist")
    assert not broken, "\n".join(broken)


def design_note_titles() -> list[str]:
    text = _read(REPO_ROOT / "ARCHITECTURE.md")
    section = re.search(r"^## Design notes\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert section is not None, "ARCHITECTURE.md has no '## Design notes' section"
    return re.findall(r"^### (.+?)\s*$", section.group(1), re.MULTILINE)


# A reference may wrap across comment lines: `design notes "A", "B" and\n# "C"`.
_WRAP = re.compile(r"\s*\n\s*(?:#+|//|\*|<!--)?\s*")
_REFERENCE = re.compile(r'design notes?\s+((?:"[^"\n]{1,80}"(?:\s*,\s*|\s+and\s+|\s*)?)+)')


def cited_design_notes() -> list[tuple[str, str]]:
    cited = []
    for path in TEXT_FILES:
        text = _read(path)
        if "design note" not in text:
            continue
        flat = _WRAP.sub(" ", text)
        for group in _REFERENCE.findall(flat):
            for title in re.findall(r'"([^"]+)"', group):
                if not title.startswith("<"):  # the convention's own placeholder
                    cited.append((str(path.relative_to(REPO_ROOT)), title))
    return cited


def test_design_notes_have_unique_titles() -> None:
    titles = design_note_titles()
    assert titles, "no design notes"
    duplicates = sorted({t for t in titles if titles.count(t) > 1})
    assert not duplicates, f"design notes with one title: {duplicates}"


def test_every_cited_design_note_exists() -> None:
    titles = set(design_note_titles())
    cited = cited_design_notes()
    assert cited, "no comment cites a design note; the scan is broken"
    missing = [f'{where}: design note "{title}"' for where, title in cited if title not in titles]
    assert not missing, "no such note in ARCHITECTURE.md:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("# See " + _E + " §3 for the order.", "the errata of the original requirements"),
        ("see ../shared/spec/PRD.md", "the folder the requirements were kept in"),
        ("as the README-draft says", "the original drafts"),
        ("(vllm/v1/sample/sampler.py:407)", "a vLLM source line as the authority"),
        ("cd /work/main && make", "an absolute path on a development machine"),
    ],
)
def test_the_patterns_catch_what_they_name(line: str, what: str) -> None:
    assert FORBIDDEN[what].search(line)


def test_the_parent_path_scan_finds_paths() -> None:
    assert _PARENT_PATH.findall("context: ../.. and see ../../shared/x, not a/../b") == [
        "../..",
        "../../shared",
    ]


def test_the_link_scan_finds_links() -> None:
    text = (
        "[a](CONTRIBUTING.md) [b](../outside.md#x) ![c](docs/x.png)\n"
        '[ref]: ./LICENSE "title"\n<a href="examples/">x</a> `[not](a-link.md)`\n'
        "```\n[also](not-a-link.md)\n```\n"
    )
    assert sorted(_link_targets(text)) == sorted(
        ["CONTRIBUTING.md", "../outside.md#x", "docs/x.png", "./LICENSE", "examples/"]
    )


def test_the_reference_scan_reads_wrapped_lists() -> None:
    flat = _WRAP.sub(" ", 'See ARCHITECTURE.md, design notes "A", "B" and\n# "C d".')
    assert [re.findall(r'"([^"]+)"', g) for g in _REFERENCE.findall(flat)] == [["A", "B", "C d"]]

"""ARCHITECTURE.md's module map is the tree, and every source module is small and says its job.

The map has one ``### <distribution>`` table per package under
``## Module map``, one ``| `module` | job |`` row per module of
``packages/<distribution>/src/``; a package's ``__init__.py`` is the package's
own row and generated code (``_proto``) is one row.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from repo_support import REPO_ROOT

MAX_LINES = 400
#: Folders of generated code: one row in the map, and exempt from the size and docstring rules.
GENERATED = {"_proto"}


def source_modules() -> dict[str, dict[str, Path]]:
    """``{distribution: {dotted module: file}}`` for every .py under packages/*/src."""
    tree: dict[str, dict[str, Path]] = {}
    for src in sorted((REPO_ROOT / "packages").glob("*/src")):
        modules: dict[str, Path] = {}
        for path in sorted(src.rglob("*.py")):
            parts = list(path.relative_to(src).with_suffix("").parts)
            generated = next((i for i, part in enumerate(parts) if part in GENERATED), None)
            if generated is not None:
                modules[".".join(parts[: generated + 1])] = path.parent
                continue
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
        tree[src.parent.name] = modules
    return tree


def module_map() -> dict[str, dict[str, str]]:
    """``{distribution: {dotted module: job}}`` as ARCHITECTURE.md's module map states it."""
    text = (REPO_ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = re.search(r"^## Module map\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert section is not None, "ARCHITECTURE.md has no '## Module map' section"
    tables: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in section.group(1).splitlines():
        heading = re.match(r"^### (\S+)\s*$", line)
        if heading:
            current = tables.setdefault(heading.group(1), {})
            continue
        row = re.match(r"^\|\s*`([\w.]+)`\s*\|\s*(.*?)\s*\|\s*$", line)
        if row and current is not None:
            assert row.group(1) not in current, f"{row.group(1)} is in the map twice"
            current[row.group(1)] = row.group(2)
    return tables


def test_the_map_and_the_tree_name_the_same_modules() -> None:
    tree = source_modules()
    mapped = module_map()
    assert set(mapped) == set(tree), (
        f"packages without a table: {sorted(set(tree) - set(mapped))}; "
        f"tables without a package: {sorted(set(mapped) - set(tree))}"
    )
    problems = []
    for distribution, modules in tree.items():
        table = mapped[distribution]
        problems += [f"{distribution}: {m} has no row" for m in sorted(set(modules) - set(table))]
        problems += [
            f"{distribution}: {m} is not in the tree" for m in sorted(set(table) - set(modules))
        ]
        problems += [f"{distribution}: {m} has no job" for m, job in table.items() if not job]
    assert not problems, "update ARCHITECTURE.md's module map:\n" + "\n".join(problems)


def _hand_written() -> list[Path]:
    return [
        path
        for modules in source_modules().values()
        for path in modules.values()
        if path.is_file()  # a generated folder is a directory here
    ]


def test_source_modules_stay_under_the_size_limit() -> None:
    files = _hand_written()
    assert len(files) > 30, "the scan found too few modules"
    too_long = []
    for path in files:
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            too_long.append(f"{path.relative_to(REPO_ROOT)}: {lines} lines")
    assert not too_long, f"split by job, at most {MAX_LINES} lines each:\n" + "\n".join(too_long)


def test_every_source_module_starts_with_a_docstring() -> None:
    missing = []
    for path in _hand_written():
        module = ast.parse(path.read_text(encoding="utf-8"))
        first = module.body[0] if module.body else None
        docstring = ast.get_docstring(module)
        if not (isinstance(first, ast.Expr) and docstring and docstring.strip()):
            missing.append(str(path.relative_to(REPO_ROOT)))
    assert not missing, "each module starts with a docstring saying its one job:\n" + "\n".join(
        missing
    )


def test_the_map_parser_reads_rows() -> None:
    mapped = module_map()
    assert mapped["qr-core"]["qr_core._registry"].startswith("`ComponentRegistry`")
    assert "qr_grpc._proto" in mapped["qr-grpc"]

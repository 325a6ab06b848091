"""The arrows of docs/ARCHITECTURE.md hold: `lint-imports` keeps pyproject.toml's contracts, and
breaks when a lower layer imports an upper one (even inside a function)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"  # import-linter comes with the `test` extras


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    if not LINT.exists():
        pytest.fail(f"lint-imports is not installed beside {sys.executable}: pip install -e '.[test]'")
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # the tree in `cwd`, not the installed package
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_import_contracts_are_kept() -> None:
    """`lint-imports` under pyproject.toml's [tool.importlinter] keeps every contract."""
    proc = _lint(ROOT)
    contracts = len(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"])
    assert (0, f"Contracts: {contracts} kept, 0 broken.") == (proc.returncode, proc.stdout.strip().splitlines()[-1]), proc.stdout


def test_a_wrong_import_inside_a_function_breaks_the_layers(tmp_path: Path) -> None:
    """The tracker importing the worker, hidden in a function body, breaks the layers contract."""
    shutil.copytree(ROOT / "mailtrack", tmp_path / "mailtrack")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    model = tmp_path / "mailtrack" / "tracker" / "model.py"
    model.write_text(model.read_text() + "\n\ndef _sneaky() -> None:\n    from mailtrack.worker import pipeline  # noqa: F401\n")
    proc = _lint(tmp_path)
    assert 1 == proc.returncode
    assert "mailtrack.tracker is not allowed to import mailtrack.worker" in proc.stdout
    assert "mailtrack.tracker.model -> mailtrack.worker.pipeline" in proc.stdout


def _function_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of each import of mailtrack's own modules inside a function body."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("mailtrack"):
                    found.append((inner.lineno, inner.module or ""))
    return found


def test_imports_inside_functions_say_why() -> None:
    """An import of the package's own modules inside a function says why, on its line or above its block."""
    unexplained = []
    for path in sorted((ROOT / "mailtrack").rglob("*.py")):
        lines = path.read_text().splitlines()
        for lineno, module in _function_imports(path):
            above = lineno - 2  # the comment may stand above the block of imports the line is in
            while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
                above -= 1
            if "#" not in lines[lineno - 1] and not lines[above].strip().startswith("#"):
                unexplained.append(f"{path.relative_to(ROOT)}:{lineno}: {module}")
    assert [] == unexplained

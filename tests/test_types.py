"""The package passes `mypy --strict` and the code base passes `ruff check`, with pyproject.toml's settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin/: mypy and ruff come with the `test` extras

def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed beside {sys.executable}: pip install -e '.[test]'")
    return str(path)


@pytest.mark.slow  # ~2.5 s: mypy over the package
def test_mypy_strict_finds_nothing_in_the_package() -> None:
    """`mypy --strict mailtrack` under pyproject.toml's [tool.mypy] says Success."""
    proc = subprocess.run([_tool("mypy"), "--strict", "mailtrack"], cwd=ROOT, capture_output=True, text=True, check=False)
    out = proc.stdout + proc.stderr
    assert ("Success: no issues found", 0) == (out.partition(" in ")[0], proc.returncode), out


def test_ruff_finds_nothing_in_the_code_or_the_tests() -> None:
    """`ruff check mailtrack tests` under pyproject.toml's [tool.ruff] exits 0 and prints nothing."""
    proc = subprocess.run(
        [_tool("ruff"), "check", "--quiet", "mailtrack", "tests"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert (0, "") == (proc.returncode, proc.stdout + proc.stderr)

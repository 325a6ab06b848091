"""benchmarks/run.py at its tiny size, so that the benchmark of issue 14 cannot rot: every row printed.

Nothing here looks at a figure: speed is never asserted in a test, only that each row was measured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.mark.network  # it runs `mailtrack serve` on a free loopback port
@pytest.mark.slow
def test_the_benchmark_prints_every_row(tmp_path: Path) -> None:
    sys.path.insert(0, str(RUN.parent))
    try:
        import run as bench  # benchmarks/ is no package: its rows are read from the script itself
    finally:
        sys.path.remove(str(RUN.parent))
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, str(RUN), "--tiny", "--keep", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout.split("\nmailtrack at ", 1)[1].splitlines()
    for row in bench.ROWS:
        assert any(line.startswith(row + " ") for line in table), f"no row '{row}' in\n{done.stdout}"
    assert "targets met:" in table[-1]

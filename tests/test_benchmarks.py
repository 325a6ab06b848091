"""benchmarks/run.py at its tiny size, so that the benchmark of issue 14 cannot rot: every row printed.

Nothing here looks at a figure: speed is never asserted in a test, only that each row was measured and
can be read. public-inbox and Roundup are not required: a row whose anchor is missing says why."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RUN = BENCHMARKS / "run.py"
COLUMNS = re.compile(r"\s{2,}")  # Row.line(): columns apart by two spaces or more


def script(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        # benchmarks/ is no package: its rows are read from the script itself
        return __import__(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def cells(line: str) -> dict[str, str]:
    """A row of the table by column; the target may be followed by `[n/a: why]`."""
    what, figure, anchor, ratio, rss, met, *rest = COLUMNS.split(line.strip())
    return {"what": what, "figure": figure, "anchor": anchor, "ratio": ratio, "rss": rss, "met": met,
            "target": rest[0] if rest else "", "why": " ".join(rest[1:])}


def check_row(line: str) -> dict[str, str]:
    row = cells(line)
    assert re.fullmatch(r"\d+(\.\d+)?x|-", row["ratio"]), line
    assert re.fullmatch(r"\d+|-", row["rss"]), line
    assert row["met"] in {"yes", "NO", "n/a", "-"}, line
    if row["met"] == "n/a":
        assert re.fullmatch(r"\[n/a: \S.*\]", row["why"]), f"an n/a row that does not say why: {line}"
    return row


@pytest.mark.network  # it runs `mailtrack serve` on a free loopback port
@pytest.mark.slow
def test_the_benchmark_prints_every_row(tmp_path: Path) -> None:
    bench = script("run")
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, str(RUN), "--tiny", "--keep", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    table, imports, summary = done.stdout.split("\nmailtrack at ", 1)[1].split("\n\n")
    lines = table.splitlines()[2:]
    assert list(bench.ROWS) == [cells(line)["what"] for line in lines], table
    judged = [check_row(line) for line in lines]
    assert 5 == len(imports.splitlines()[1:]), imports
    for line in imports.splitlines()[1:]:
        assert re.fullmatch(r"\s+\d+\.\d ms cumulative\s+\d+\.\d ms own  \S+", line), line
    met = re.match(r"targets met: (\d+) of (\d+)", summary)
    assert met is not None, summary
    assert sum(r["met"] in {"yes", "NO"} for r in judged) == int(met[2])
    assert sum(r["met"] == "yes" for r in judged) == int(met[1])
    assert (tmp_path / "work" / "pycache").is_dir()  # the children's bytecode, of this run


def test_a_missing_anchor_prints_n_a_and_why(tmp_path: Path) -> None:
    anchors, bench = script("anchors"), script("run")
    why = anchors.public_inbox_missing(path=str(tmp_path))  # an empty PATH: none of its programs
    assert why is not None
    assert why.startswith("public-inbox not installed (perl not found")
    row = check_row(bench.skipped("deliver alone", "300 ms/mail", 35.0, "<= 0.75x public-inbox-mda", why).line())
    assert ("n/a", "n/a", f"[n/a: {why}]") == (row["anchor"], row["met"], row["why"])
    # an anchor that fails is an n/a too, its error on one line, not the end of the benchmark
    failed = bench.failed("roundup-mailgw", SystemExit("roundup-mailgw: exit 1\nTraceback  (most recent call last)"))
    assert "roundup-mailgw failed: roundup-mailgw: exit 1 Traceback (most recent call last)" == failed

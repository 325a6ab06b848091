"""The two command lines: `git issues` run in-process, `mailtrack` run in a process of its own.

Neither reads the terminal: `run_cli` gives the CLI a stdin of its own, and `mailtrack` gives the
child the bytes it is told to, or /dev/null.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailtrack.app import git_issues


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(repo: Path, *args: str, stdin: str = "") -> Result:
    """`git issues ARGS` in-process, in `repo`."""
    out, err = io.StringIO(), io.StringIO()
    old_cwd, old_stdin = os.getcwd(), sys.stdin
    os.chdir(repo)
    sys.stdin = io.StringIO(stdin)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = git_issues.main(list(args))
            except SystemExit as e:
                code = int(e.code or 0)
    finally:
        os.chdir(old_cwd)
        sys.stdin = old_stdin
    return Result(code, out.getvalue(), err.getvalue())


def mailtrack_command(*args: str) -> list[str]:
    """The command line of `mailtrack ARGS` run by this Python (the venv's, with the package installed)."""
    return [sys.executable, "-m", "mailtrack.app.mailtrack", *args]


def mailtrack(*args: str, repo: Path | None = None, config: Path | None = None, input: bytes | str | None = None,
              text: bool = False, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess[Any]:
    """`mailtrack [--repo REPO] [--config CONFIG] ARGS` in a process of its own, as an MTA or a cron job
    runs it; stdin is `input` (or /dev/null), stdout and stderr are captured (as text if `text`);
    `check`: a non-zero exit raises CalledProcessError."""
    options = [*(["--repo", str(repo)] if repo else []), *(["--config", str(config)] if config else [])]
    if text and isinstance(input, bytes):
        input = input.decode()
    return subprocess.run(mailtrack_command(*options, *args), input=input, stdin=subprocess.DEVNULL if input is None else None,
                          capture_output=True, text=text, check=check, cwd=cwd)


def deliver(repo: Path, raw: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`mailtrack --repo REPO deliver ARGS` with the mail `raw` on stdin, as an MTA pipes it."""
    return mailtrack("deliver", *args, repo=repo, input=raw)

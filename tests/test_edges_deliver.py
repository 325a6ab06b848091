"""`mailtrack deliver` before the mail is kept: every failure is a temporary one (75) for the MTA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

MAIL = b"From: a@example.org\nTo: issues@localhost\nSubject: s\nMessage-ID: <d1@example.org>\n\nbody\n"


def deliver(*args: str, stdin: bytes = MAIL, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailtrack.app.mailtrack", *args], input=stdin.decode(), capture_output=True,
                          text=True, check=False, cwd=cwd)


@pytest.mark.parametrize("problem", ["no repository", "bad toml", "bad value", "missing config"])
def test_a_config_or_repository_error_before_keeping_is_a_tempfail(tmp_path: Path, problem: str) -> None:
    """A broken repository or configuration exits 75 (the MTA retries, not bounces) with one line on stderr."""
    config = tmp_path / "mailtrack.toml"
    config.write_text({"bad toml": "[gateway\n", "bad value": "[[listen]]\nprotocol = \"x400\"\n"}.get(problem, ""))
    args = {
        "no repository": ["--repo", str(tmp_path / "nonexistent")],
        "bad toml": ["--repo", str(tmp_path), "--config", str(config)],
        "bad value": ["--repo", str(tmp_path), "--config", str(config)],
        "missing config": ["--repo", str(tmp_path), "--config", str(tmp_path / "missing.toml")],
    }[problem]
    r = deliver(*args, "deliver", cwd=tmp_path)
    lines = r.stderr.splitlines()
    assert (75, 1) == (r.returncode, len(lines)), r.stderr
    assert lines[0].startswith("mailtrack: mail not kept: ")


def test_usage_errors_stay_64() -> None:
    """A bad option is still EX_USAGE: a mistake in the MTA's command line, not in the mail."""
    assert 64 == deliver("deliver", "--bogus").returncode

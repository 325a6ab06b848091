"""`mailtrack deliver` runs once per mail (an MTA pipe, issue 14): it loads dkimpy and dnspython only where
`access.verify_dkim` asks for our own DKIM check. The modules a real `deliver` process imported are read
from `python -X importtime`; the same run with verify_dkim on shows that the check sees them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers.mail import make_mail
from helpers.repos import issues_repo, read_names
from mailtrack.config import AccessConfig, Config
from mailtrack.queue.layout import default_root
from mailtrack.queue.spool import Spool
from mailtrack.tracker.store import Store
from mailtrack.worker.pipeline import Gateway

HEAVY = {"dkim", "dns"}  # dkimpy and dnspython: a tenth of a second of deliver's start


def _imported(tmp_path: Path, repo: Path, config: str, raw: bytes) -> set[str]:
    """The top-level packages a `mailtrack deliver` of `raw` imported (it must exit 0)."""
    toml = tmp_path / "mailtrack.toml"
    toml.write_text(config)
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "mailtrack.app.mailtrack", "--repo", str(repo),
                        "--config", str(toml), "deliver"], input=raw, capture_output=True, check=False, timeout=120)
    assert 0 == r.returncode, r.stderr.decode()
    lines = [line.split("|")[-1].strip() for line in r.stderr.decode().splitlines() if line.startswith("import time:")]
    assert "mailtrack.worker.pipeline" in lines  # the mail was processed, not only kept
    return {name.split(".")[0] for name in lines}


def test_deliver_loads_no_dkim_unless_verify_dkim(tmp_path: Path) -> None:
    """verify_dkim off (the default): deliver files the mail without importing dkim or dns; on: it imports
    both (so the reading of -X importtime does see them)."""
    repo = issues_repo(tmp_path / "repo")
    off = _imported(tmp_path, repo, '[gateway]\nproject = "proj"\n', make_mail(message_id="<lean1@example.org>"))
    assert set() == off & HEAVY
    assert 1 == len(read_names(repo))
    on = _imported(tmp_path, repo, '[gateway]\nproject = "proj"\n[access]\nverify_dkim = true\n',
                   make_mail(subject="Printer still on fire", message_id="<lean2@example.org>"))
    assert HEAVY <= on
    assert 2 == len(read_names(repo))


def test_verify_dkim_without_a_check_is_an_error(tmp_path: Path) -> None:
    """A Gateway made with verify_dkim on but given no DKIM check refuses to start, rather than vouch for no one."""
    repo = issues_repo(tmp_path / "repo")
    with Store.open(repo) as store, pytest.raises(ValueError, match="verify_dkim"):
        Gateway(Config(access=AccessConfig(verify_dkim=True)), store, Spool(default_root(Path(store.repo.controldir()))))

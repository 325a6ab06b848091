"""`mailtrack import` run twice over an archive that holds mail the gateway keeps aside."""

from __future__ import annotations

import mailbox
import subprocess
import sys
from pathlib import Path

from conftest import make_gateway
from test_gateway import make_mail
from tracker import Tracker


def test_a_held_mail_is_kept_once_however_often_the_import_runs(repo: Path, tmp_path: Path) -> None:
    """A mail held on import (no sender) goes to failed once: a second run counts it but keeps no second copy."""
    box = mailbox.mbox(str(tmp_path / "archive.mbox"))
    box.add(make_mail(subject="Fine", message_id="<ok@x>"))
    box.add(b"To: issues@localhost\nSubject: nobody sent this\nMessage-ID: <nofrom@x>\n\ntext\n")
    box.add(b"To: issues@localhost\nSubject: no id and no sender\n\ntext\n")
    box.close()
    run = [sys.executable, "-m", "mailtrack.app.mailtrack", "--repo", str(repo), "import", str(tmp_path / "archive.mbox")]
    status = [sys.executable, "-m", "mailtrack.app.mailtrack", "--repo", str(repo), "status"]
    outputs = [subprocess.run(run, capture_output=True, text=True, check=False).stdout for _ in range(2)]
    assert ["created 1, held 2\n", "duplicate 1, held 2\n"] == outputs
    failed = [ln for ln in subprocess.run(status, capture_output=True, text=True, check=True).stdout.splitlines()
              if "the mail has no sender address" in ln]
    assert 2 == len(failed)


def test_live_mail_during_an_import_is_notified_the_imported_is_not(tracker: Tracker) -> None:
    """An imported commit and a live change in the same range: the notifier tells the live one only."""
    g = make_gateway(tracker.repo)
    try:
        old = make_mail(subject="Old report", frm="Carol <carol@example.org>", message_id="<old@x>", Cc="Dave <dave@example.org>")
        assert "created" == g.handle(old, imported=True).action
        live = tracker.new_issue("Live one")  # Cc Bob, assignee Dan, ... as the tracker files it
        assert "created" == g.handle(make_mail(subject="Old 2", message_id="<old2@x>", Cc="Erin <erin@example.org>"),
                                     imported=True).action
    finally:
        g.close()
        g.store.close()
    tracker.notify()
    issues = {m["X-Mailtrack-Issue"] for m in tracker.caught()}
    assert {live[:7]} == issues

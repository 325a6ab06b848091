"""`mailtrack import` run twice over an archive that holds mail the gateway keeps aside."""

from __future__ import annotations

import mailbox
import subprocess
import sys
from pathlib import Path

from test_gateway import make_mail


def test_a_held_mail_is_kept_once_however_often_the_import_runs(repo: Path, tmp_path: Path) -> None:
    """A mail held on import (no sender) goes to failed once: a second run counts it but keeps no second copy."""
    box = mailbox.mbox(str(tmp_path / "archive.mbox"))
    box.add(make_mail(subject="Fine", message_id="<ok@x>"))
    box.add(b"To: issues@localhost\nSubject: nobody sent this\nMessage-ID: <nofrom@x>\n\ntext\n")
    box.add(b"To: issues@localhost\nSubject: no id and no sender\n\ntext\n")
    box.close()
    run = [sys.executable, "-m", "mailtrack.serve", "--repo", str(repo), "import", str(tmp_path / "archive.mbox")]
    status = [sys.executable, "-m", "mailtrack.serve", "--repo", str(repo), "status"]
    outputs = [subprocess.run(run, capture_output=True, text=True, check=False).stdout for _ in range(2)]
    assert ["created 1, held 2\n", "duplicate 1, held 2\n"] == outputs
    failed = [ln for ln in subprocess.run(status, capture_output=True, text=True, check=True).stdout.splitlines()
              if "the mail has no sender address" in ln]
    assert 2 == len(failed)

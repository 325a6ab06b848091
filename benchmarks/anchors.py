"""The anchors of issue 14's table that are other programs: public-inbox (Debian `public-inbox`) and Roundup's
mail gateway (PyPI `roundup`, the `bench` extra). benchmarks/install.sh installs both.

Each is looked for first (`public_inbox_missing`, `roundup_missing`): when it is absent, the reason is a
string that run.py prints in the row instead of a figure, never a crash. The set-up steps here are not
measured; run.py times the commands they return (`import_cmd`, `mda_cmd`, `mailgw_cmd`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

INSTALL = "benchmarks/install.sh"

# public-inbox's own import of an mbox into an inbox: PublicInbox::InboxWritable::import_mbox, what its
# scripts/import_vger_from_mbox calls (the Debian package installs the library, not that script): one
# V2Writable->add per mail (git fast-import, msgmap, over.sqlite3, Xapian), done() at the end.
IMPORT_PL = r"""
use strict;
use PublicInbox::Config;
use PublicInbox::InboxWritable;
my ($name, $variant) = @ARGV;
my $ibx = PublicInbox::Config->new->lookup_name($name) or die "no inbox $name in $ENV{PI_CONFIG}\n";
PublicInbox::InboxWritable->new($ibx)->import_mbox(\*STDIN, $variant);
"""


def _perl_has(module: str, env: dict[str, str] | None = None) -> bool:
    done = subprocess.run(["perl", f"-M{module}", "-e", "1"], capture_output=True, env=env, check=False)
    return done.returncode == 0


def public_inbox_missing(path: str | None = None) -> str | None:
    """Why public-inbox cannot be run here (`path`: the PATH to look in), or None when it can."""
    for program in ("perl", "public-inbox-init", "public-inbox-mda"):
        if shutil.which(program, path=path) is None:
            return f"public-inbox not installed ({program} not found; {INSTALL})"
    env = {**os.environ, "PATH": path} if path is not None else None
    if not _perl_has("PublicInbox::InboxWritable", env):
        return f"public-inbox's Perl library not found (PublicInbox::InboxWritable; {INSTALL})"
    return None


class PublicInbox:
    """A V2 inbox with its own config, HOME and emergency Maildir under `root`, at the indexlevel public-inbox
    picks as its best here (full with Xapian, else basic); the spam check off (no spamc in a benchmark) and
    every mail accepted (the Mirror filter), as mailtrack accepts every mail of the corpus."""

    NAME = "bench"

    def __init__(self, root: Path, address: str) -> None:
        self.root, self.address = root, address
        self.inbox, self.config, self.emergency = root / "inbox", root / "pi.config", root / "emergency"
        self.env = {**os.environ, "HOME": str(root), "PI_CONFIG": str(self.config), "PI_EMERGENCY": str(self.emergency),
                    "ORIGINAL_RECIPIENT": address}
        self.level = "full" if _perl_has("Search::Xapian") else "basic"

    def init(self) -> None:
        for sub in ("new", "cur", "tmp"):
            (self.emergency / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(["public-inbox-init", "-V2", "-L", self.level, self.NAME, str(self.inbox), "http://localhost/bench/",
                        self.address], env=self.env, check=True, capture_output=True)
        subprocess.run(["git", "config", "-f", str(self.config), "publicinboxmda.spamcheck", "none"], check=True)
        # public-inbox-mda's default filter (Filter::Base) refuses HTML-only mail, which the corpus has and mailtrack
        # takes; Filter::Mirror accepts all (its import's scrub is the same no-op as with no filter)
        subprocess.run(["git", "config", "-f", str(self.config), f"publicinbox.{self.NAME}.filter", "PublicInbox::Filter::Mirror"],
                       check=True)

    def import_cmd(self) -> list[str]:
        """The import of an mbox on stdin; Python's mailbox module writes mboxo (">From " quoting)."""
        return ["perl", "-e", IMPORT_PL, self.NAME, "mboxo"]

    @staticmethod
    def mda_cmd() -> list[str]:
        return ["public-inbox-mda"]

    def count(self) -> int:
        """Messages in the inbox (its article numbers)."""
        with sqlite3.connect(self.inbox / "msgmap.sqlite3") as db:
            return int(db.execute("SELECT COUNT(*) FROM msgmap").fetchone()[0])

    def emergencies(self) -> int:
        """Mails public-inbox-mda could not deliver and kept in its emergency Maildir."""
        return sum(1 for _ in (self.emergency / "new").iterdir())


def roundup_missing() -> str | None:
    """Why Roundup cannot be run here, or None when it can (it is imported by this Python's children)."""
    if importlib.util.find_spec("roundup") is None:
        return f"roundup not installed (pip install -e '.[bench]'; {INSTALL})"
    return None


def _roundup(script: str) -> list[str]:
    return [sys.executable, "-c", f"from roundup.scripts.{script} import run; run()"]


class Roundup:
    """A stock Roundup tracker (classic template, sqlite backend) made by `roundup-admin install`, non-interactively.
    Two changes from the stock tracker, both options Roundup documents: anonymous senders may use the mail
    gateway (the classic schema's own commented-out line: they are then registered automatically, as mailtrack
    takes mail from anyone), and HTML-only mail is converted to text (`dehtml`, Roundup's own) instead of
    rejected. The mail Roundup sends (nosy notices) goes to a file, not to an SMTP server."""

    def __init__(self, home: Path, domain: str) -> None:
        self.home, self.domain, self.sent = home, domain, home.parent / "roundup-sent.txt"

    def init(self) -> None:
        options = ",".join((f"tracker_web=http://localhost/{self.home.name}/", f"mail_domain={self.domain}",
                            "mail_host=localhost", f"mail_debug={self.sent}", "mailgw_convert_htmltotext=dehtml"))
        admin = _roundup("roundup_admin")
        subprocess.run([*admin, "-i", str(self.home), "install", "classic", "sqlite", options],
                       stdin=subprocess.DEVNULL, capture_output=True, check=True)
        subprocess.run([*admin, "-i", str(self.home), "initialise", "admin"], stdin=subprocess.DEVNULL,
                       capture_output=True, check=True)
        schema = self.home / "schema.py"
        stock = "#db.security.addPermissionToRole('Anonymous', 'Email Access')"
        text = schema.read_text()
        if stock not in text:
            raise RuntimeError(f"{schema}: no line {stock!r} to enable (a new Roundup template?)")
        schema.write_text(text.replace(stock, stock[1:]))

    def mailgw_cmd(self, mbox: Path) -> list[str]:
        """roundup-mailgw's mailbox mode: every mail of the file, which it empties when done (give it a copy)."""
        return [*_roundup("roundup_mailgw"), str(self.home), "mailbox", str(mbox)]

    def count(self) -> int:
        """Messages the tracker holds (msg items)."""
        listed = subprocess.run([*_roundup("roundup_admin"), "-i", str(self.home), "list", "msg"], stdin=subprocess.DEVNULL,
                                capture_output=True, check=True).stdout
        return len(listed.splitlines())  # one line per item: '  1: <its date>'

    def refusals(self) -> int:
        """Mails the gateway refused: it answers each with a 'Failed issue tracker submission' mail."""
        if not self.sent.exists():
            return 0
        return self.sent.read_bytes().count(b"\nSubject: Failed issue tracker submission")

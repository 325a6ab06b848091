"""Who a mail is from, and who made a commit: a From must be exactly one RFC 5322 mailbox or the mail
is held; the identities we write read back the same under every parser, Debian's hardened
email.utils (CVE-2023-27043) too. CI runs this file under Debian's /usr/bin/python3 as well."""

from __future__ import annotations

import email.utils
import subprocess
from email.headerregistry import Address
from pathlib import Path

import pytest

from helpers.cli import deliver
from helpers.mail import make_mail, outbox
from helpers.repos import git
from mailtrack.tracker.model import Person

# --- the duplicate notification (issue 13): a sender with no display name -----------------------


def test_sender_without_a_name_hears_only_the_acknowledgement(repo: Path) -> None:
    """`From: alice@example.net` (swaks, scripts, many MTAs) opens an issue by `mailtrack deliver`: she gets
    the acknowledgement and no "someone opened issue" of her own; Bob (Cc) gets the notification."""
    r = deliver(repo, make_mail(frm="alice@example.net", Cc="Bob <bob@example.org>"))
    assert (0, b"") == (r.returncode, r.stderr)
    got = sorted((m["To"].addresses[0].addr_spec, m["Auto-Submitted"]) for m in outbox(repo))
    assert [("alice@example.net", "auto-replied"), ("bob@example.org", "auto-generated")] == got
    [notice] = [m for m in outbox(repo) if m["Auto-Submitted"] == "auto-generated"]
    assert "someone" not in notice.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_commit_author_without_a_name_reads_the_same_under_every_parser(repo: Path) -> None:
    """The commit of a nameless sender names her so that this Python's email.utils, the RFC 5322 parser
    and Person.parse all read her address back (never `addr <addr>`, which Debian's parseaddr reads as nobody)."""
    deliver(repo, make_mail(frm="alice@example.net"))
    ident = git(repo, "log", "-1", "--format=%an <%ae>", "issues").strip()
    assert "alice <alice@example.net>" == ident
    header = Address(addr_spec="alice@example.net")  # what the stdlib's strict parser makes of the same text
    assert ("alice", "alice@example.net") == email.utils.parseaddr(ident)
    assert [("alice", "alice@example.net")] == email.utils.getaddresses([ident])
    assert ("alice@example.net", Person("alice", "alice@example.net")) == (header.addr_spec, Person.parse(ident))


@pytest.mark.parametrize("text, expected", [
    ("alice@example.net <alice@example.net>", Person("", "alice@example.net")),  # what older versions wrote
    ("alice <alice@example.net>", Person("alice", "alice@example.net")),
    ("Smith, John <john@example.org>", Person("Smith, John", "john@example.org")),  # git writes names unquoted
    ('"Smith, John" <john@example.org>', Person("Smith, John", "john@example.org")),
    ('"Jo \\"JJ\\" Smith" <jo@example.org>', Person('Jo "JJ" Smith', "jo@example.org")),
    ("jane@example.org", Person("", "jane@example.org")),
    ("<jane@example.org>", Person("", "jane@example.org")),
    ('Mallory <"alice@example.net"@evil.example>', Person("Mallory", '"alice@example.net"@evil.example')),
    ("Just A Name", Person("Just A Name", "")),
    ("", Person("", "")),
])  # fmt: skip
def test_person_parse_needs_no_email_utils(text: str, expected: Person) -> None:
    """Person.parse, the one reader of identities, reads every form we or git ever wrote, by itself."""
    assert expected == Person.parse(text)


@pytest.mark.parametrize("person", [
    Person("", "alice@example.net"), Person("Alice", "alice@example.net"), Person("Smith, John", "john@example.org"),
    Person('Jo "JJ" Smith', "jo@example.org"), Person("Dr. Who", "who@example.org"), Person("Jörg", "j@example.org"),
])  # fmt: skip
def test_a_written_mailbox_reads_back_the_same_under_every_parser(person: Person) -> None:
    """Person.mailbox (the people lists of issue.xml) reads back as the same person by Person.parse and by
    this Python's email.utils (Debian's strict one under /usr/bin/python3)."""
    assert person == Person.parse(person.mailbox)
    assert (person.name, person.email) == email.utils.parseaddr(person.mailbox)


def test_debian_python_reads_our_identities(repo: Path) -> None:
    """Debian's own python3 (its hardened email.utils) reads the commit author we wrote as the sender.
    It fails, not skips, where there is none."""
    debian = Path("/usr/bin/python3")
    if not debian.exists():
        pytest.fail("no /usr/bin/python3 (Debian's python3): apt-get install python3")
    deliver(repo, make_mail(frm="alice@example.net"))
    ident = git(repo, "log", "-1", "--format=%an <%ae>", "issues").strip()
    r = subprocess.run([str(debian), "-c", "import email.utils, sys; print(email.utils.parseaddr(sys.argv[1])[1])", ident],
                       capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
    assert "alice@example.net" == r.stdout.strip()

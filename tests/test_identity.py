"""Who a mail is from, and who made a commit: a From must be exactly one RFC 5322 mailbox or the mail
is held; the identities we write read back the same under every parser, Debian's hardened
email.utils (CVE-2023-27043) too. CI runs this file under Debian's /usr/bin/python3 as well."""

from __future__ import annotations

import email.utils
import subprocess
from email.headerregistry import Address
from pathlib import Path

import pytest

from helpers.cli import deliver, mailtrack
from helpers.mail import make_mail, outbox, spool_path
from helpers.repos import git, read_comments, read_issue, read_names
from helpers.tracker import ANYONES_CC
from mailtrack.mail.parse import parse
from mailtrack.tracker.model import Person


def deliver_with_cc(repo: Path, raw: bytes) -> subprocess.CompletedProcess[bytes]:
    """`mailtrack deliver` of a stranger's first mail whose Cc the test is about: taken (access.cc_from)."""
    (repo / "mailtrack.toml").write_text(ANYONES_CC)
    return mailtrack("deliver", repo=repo, config=repo / "mailtrack.toml", input=raw)

REPORT = "<report@example.net>"


def _report(repo: Path, frm: str = "Alice <alice@example.net>") -> str:
    """Alice files an issue by `mailtrack deliver`; its name. The outbox is emptied."""
    r = deliver(repo, make_mail(frm=frm, message_id=REPORT, Cc="Bob <bob@example.org>"))
    assert (0, b"") == (r.returncode, r.stderr)
    for p in (spool_path(repo) / "outbox" / "new").iterdir():
        p.unlink()
    [name] = read_names(repo)
    return name


def _failed(repo: Path) -> list[str]:
    """The reasons (first lines) of the mails in the spool's failed queue."""
    return sorted(p.read_text().splitlines()[0] for p in (spool_path(repo) / "failed").glob("*.reason"))


def _commits(repo: Path) -> int:
    return int(git(repo, "rev-list", "--count", "issues").strip())


# --- the duplicate notification (issue 13): a sender with no display name -----------------------


def test_sender_without_a_name_hears_only_the_acknowledgement(repo: Path) -> None:
    """`From: alice@example.net` (swaks, scripts, many MTAs) opens an issue by `mailtrack deliver`: she gets
    the acknowledgement and no "someone opened issue" of her own; Bob (Cc) gets the notification."""
    r = deliver_with_cc(repo, make_mail(frm="alice@example.net", Cc="Bob <bob@example.org>"))
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


def test_a_cc_name_with_a_comma_stays_one_person(repo: Path) -> None:
    """`Cc: "Smith, John" <john@example.org>` is one carbon, written quoted (it was two: "Smith" and
    "John <john@example.org>"), and the notification reaches him under his whole name."""
    deliver_with_cc(repo, make_mail(frm="alice@example.net", Cc='"Smith, John" <john@example.org>, Bob <bob@example.org>'))
    [name] = read_names(repo)
    assert ['"Smith, John" <john@example.org>', "Bob <bob@example.org>"] == read_issue(repo, name).carbons
    to = sorted(str(m["To"]) for m in outbox(repo) if m["Auto-Submitted"] == "auto-generated")
    assert ['"Smith, John" <john@example.org>', "Bob <bob@example.org>"] == to


# --- forged From (issue 12) -------------------------------------------------------------------


def test_quoted_local_part_is_not_the_address_inside_it(repo: Path) -> None:
    """`From: "alice@example.net"@evil.example` is a mailbox at evil.example: its `Status: closed` on Alice's
    issue is refused as a stranger's, and its comment is signed with its own address."""
    name = _report(repo)
    attack = make_mail(frm='"alice@example.net"@evil.example', subject="Re: Printer on fire", message_id="<q1@evil.example>",
                       In_Reply_To=REPORT, body="Status: closed\n\nDone, closing.\n")
    assert 0 == deliver(repo, attack).returncode
    [comment] = read_comments(repo, name)
    assert ("new", '"alice@example.net"@evil.example') == (read_issue(repo, name).status, comment.author.email)
    [reply] = [m for m in outbox(repo) if m["Auto-Submitted"] == "auto-replied"]
    assert '"alice@example.net"@evil.example' == reply["To"].addresses[0].addr_spec
    assert "refused" in reply.get_body(("plain",)).get_content()  # type: ignore[union-attr]


@pytest.mark.parametrize("frm", [
    "alice@example.net <mallory@evil.example>",  # an address as the display name, unquoted: no mailbox
    "alice@example.net, mallory@evil.example",  # two mailboxes
    "Friends: alice@example.net;",  # a group
    "alice",  # no domain
    "Alice <alice@example.net",  # no closing bracket
])  # fmt: skip
def test_a_from_that_is_not_exactly_one_mailbox_is_held(repo: Path, frm: str) -> None:
    """Commands from a From that does not parse (strict RFC 5322) to exactly one mailbox change nothing: the
    mail is held in failed with the reason, and nobody is mailed."""
    name = _report(repo)
    before = _commits(repo)
    attack = make_mail(frm="placeholder@evil.example", subject="Re: Printer on fire", message_id="<f1@evil.example>",
                       In_Reply_To=REPORT, body="Status: closed\n\nDone, closing.\n")
    attack = attack.replace(b"From: placeholder@evil.example", b"From: " + frm.encode(), 1)  # as sent, not tidied by EmailMessage
    assert 0 == deliver(repo, attack).returncode
    assert (before, "new", [], []) == (_commits(repo), read_issue(repo, name).status, read_comments(repo, name), outbox(repo))
    [reason] = _failed(repo)
    assert reason.startswith("the From field is not one mailbox") and frm in reason


def test_two_from_fields_are_held(repo: Path) -> None:
    """A mail with two From fields (one alice's) is held: it has no one sender."""
    name = _report(repo)
    attack = make_mail(frm="mallory@evil.example", subject="Re: Printer on fire", message_id="<f2@evil.example>",
                       In_Reply_To=REPORT, body="Status: closed\n\nx\n").replace(b"From: ", b"From: alice@example.net\nFrom: ", 1)
    assert 0 == deliver(repo, attack).returncode
    assert ("new", ["the From field is not one mailbox: the mail has 2 From fields"]) == (read_issue(repo, name).status, _failed(repo))


def test_a_well_formed_from_is_read_by_the_rfc_5322_parser() -> None:
    """Names are decoded by the strict parser (encoded words, quotes); an encoded word cannot smuggle an address."""
    cases = {
        b'From: "\'Jane Doe\'" <Jane@X.example>': ("Jane Doe", "jane@x.example"),
        b"From: =?utf-8?q?J=C3=B6rg?= <j@x.example>": ("J\u00f6rg", "j@x.example"),
        b"From: =?utf-8?q?alice=40example.net_=3Cmallory=40evil=3E?= <z@q.example>": ("alice@example.net <mallory@evil>", "z@q.example"),
        b"From: John Q. Public <jqp@x.example>": ("John Q. Public", "jqp@x.example"),  # obsolete phrase: still one mailbox
        b"From: alice@example.net (Alice)": ("Alice", "alice@example.net"),  # the old form: the comment names her
    }
    got = {raw: (m.from_name, m.from_addr) for raw in cases if (m := parse(raw + b"\nSubject: s\n\nx\n"))}
    assert cases == got


def test_dry_run_names_the_held_from(repo: Path) -> None:
    """`mailtrack deliver --dry-run` says why such a mail would be held."""
    r = mailtrack("deliver", "--dry-run", repo=repo, input=make_mail(frm="alice@example.net <mallory@evil.example>"), text=True)
    assert 0 == r.returncode, r.stderr
    assert "the From field is not one mailbox" in r.stdout


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

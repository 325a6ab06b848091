"""The second round of attacks on issue 12's gateway: what one hostile mail may cost when its
header and body lines are long, through the real `mailtrack deliver`.

A line may be of any length (the listener keeps it whole, as Postfix does): every pattern run on it
must cost time linear in it. The subprocess timeouts below are no speed measure: they only stop a
run that would otherwise take hours (the quadratic forms took 23 s for 100 KB, about 40 minutes a
megabyte)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.cli import mailtrack, mailtrack_command
from helpers.repos import read_issue, read_names
from mailtrack.mail.parse import ADDR_RE, LIST_PREFIX_RE, REPLY_PREFIX_RE, clean_subject
from mailtrack.mail.quotes import PSEUDO_HEADER_RE

MEGABYTE = 1 << 20
HANG = 300  # seconds: far more than any linear run takes, far less than the quadratic forms did


def deliver_in_time(repo: Path, raw: bytes) -> subprocess.CompletedProcess[bytes]:
    """`mailtrack deliver` of `raw`, stopped (a failure) if it hangs."""
    return subprocess.run(mailtrack_command("--repo", str(repo), "deliver"), input=raw, capture_output=True, timeout=HANG, check=False)


def test_address_headers_a_megabyte_long_are_read(repo: Path) -> None:
    """Return-Path, Delivered-To, To, Cc and Reply-To, each holding a word of a megabyte with no "@": the
    address pattern searched every position of the word to its end (O(n^2): 23 s for 100 KB). The
    mail is an issue like any other."""
    word = "a" * MEGABYTE
    head = f"Return-Path: {word} <alice@example.org>\n"  # an address after it: no null path, no bounce
    head += "".join(f"{name}: {word}\n" for name in ("Delivered-To", "Reply-To", "Cc"))
    raw = (f"From: Alice <alice@example.org>\nTo: issues@tracker.localhost, {word}\n{head}"
           "Subject: Long words\nMessage-ID: <long-words@example.org>\n\nIt is on fire.\n").encode()
    r = deliver_in_time(repo, raw)
    assert (0, b"") == (r.returncode, r.stderr)
    [name] = read_names(repo)
    assert "Long words" == read_issue(repo, name).title


SLOW_ADDR_RE = re.compile(r"[^\s<>()\[\]\\,;:\"]+@[^\s<>()\[\]\\,;:\"]+")  # the pattern before, unanchored


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='ab@ <>"\\,;:()[].\t\u00e9', max_size=30))
def test_the_address_pattern_finds_what_it_always_found(text: str) -> None:
    """Searched from word starts only, the pattern finds the same address as the old one did."""
    old, new = SLOW_ADDR_RE.search(text), ADDR_RE.search(text)
    assert (old and old.group(0)) == (new and new.group(0))


def test_a_pseudo_header_a_megabyte_long_is_read(repo: Path) -> None:
    """A first line `Tags: b<a megabyte of spaces>c`: the value was matched lazily before `\\s*$`,
    which read the rest of the spaces again at each one (O(n^2)). It is one command, refused (no
    tag holds a space) with the transcript's reason, and the issue is made."""
    raw = (b"From: Alice <alice@example.org>\nTo: issues@tracker.localhost\nSubject: Long value\n"
           b"Message-ID: <long-value@example.org>\n\nTags: b" + b" " * MEGABYTE + b"c\n\nIt is on fire.\n")
    r = deliver_in_time(repo, raw)
    assert (0, b"") == (r.returncode, r.stderr)
    [name] = read_names(repo)
    assert "Long value" == read_issue(repo, name).title


SLOW_PSEUDO_HEADER_RE = re.compile(r"^([A-Za-z][A-Za-z-]*):[ \t]+(\S.*?)\s*$")  # the pattern before


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="Tags:- \t\x0b\rb\u00a0\u2028", max_size=20))
def test_pseudo_headers_are_what_they_always_were(line: str) -> None:
    """On a stripped line (split_pseudo_headers strips each), the greedy value is the lazy value
    that stopped before trailing space: the same field and value, or no match for both."""
    old, new = SLOW_PSEUDO_HEADER_RE.match(line.strip()), PSEUDO_HEADER_RE.match(line.strip())
    assert (old and old.groups()) == (new and new.groups())


def test_a_subject_of_a_million_prefixes_is_read(repo: Path) -> None:
    """A subject of a million `Re: ` and `[list] ` prefixes (6 MB): each prefix stripped copied the
    rest of the subject (O(n^2): 9 s a megabyte, and the subject is cleaned several times a mail).
    The issue is made, its title what follows the prefixes."""
    subject = "Re: [list] " * (1 << 19) + "Printer on fire"
    raw = (f"From: Alice <alice@example.org>\nTo: issues@tracker.localhost\nSubject: {subject}\n"
           "Message-ID: <prefixes@example.org>\n\nIt is on fire.\n").encode()
    r = deliver_in_time(repo, raw)
    assert (0, b"") == (r.returncode, r.stderr)
    [name] = read_names(repo)
    assert "Printer on fire" == read_issue(repo, name).title


def slow_clean_subject(subject: str) -> str:
    """clean_subject as it was: strip one prefix of each kind, copy, again."""
    text = " ".join(subject.split())
    while True:
        shorter = LIST_PREFIX_RE.sub("", REPLY_PREFIX_RE.sub("", text, count=1), count=1)
        if shorter == text:
            break
        text = shorter
    return re.sub(r"\s*\(fwd\)\s*$", "", text, flags=re.IGNORECASE).strip()


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(["Re:", "re :", "AW: ", "Re[2]:", "Fwd:", "[list]", "[a b]", "[proj #abcd]", "[x=y]", " ", "x",
                                 "(fwd)", "回复：", "[", "]", ":", "Re"]), max_size=8).map("".join))
def test_subjects_are_cleaned_as_they_always_were(subject: str) -> None:
    """Prefixes stripped by position give what stripping and copying gave."""
    assert slow_clean_subject(subject) == clean_subject(subject)


def test_a_body_of_many_attributions_is_read(repo: Path) -> None:
    """320,000 `On Mon, Jane wrote:` lines each above a quote (7.7 MB): each attribution looked for
    the next line that is not blank in a copy of all the lines after it (O(n^2): 4.7 s a megabyte,
    twice a mail). The issue is made, its text the sender's own (the attributions and quotes cut)."""
    body = "On Mon, Jane wrote:\n> x\n" * 320_000 + "\nIt is on fire.\n"
    raw = (f"From: Alice <alice@example.org>\nTo: issues@tracker.localhost\nSubject: Attributions\n"
           f"Message-ID: <attributions@example.org>\n\n{body}").encode()
    r = deliver_in_time(repo, raw)
    assert (0, b"") == (r.returncode, r.stderr)
    [name] = read_names(repo)
    issue = read_issue(repo, name)
    assert ("Attributions", "It is on fire.") == (issue.title, issue.description.strip().splitlines()[-1])


# --- To, Cc and Reply-To read as strictly as the From ---------------------------------------------

ANYONES_CC = '[access]\ncc_from = ["anyone"]\n'


@pytest.mark.parametrize(("cc", "carbons"), [
    ('"bob@example.net"@evil.example', ['"bob@example.net"@evil.example']),  # a mailbox at evil.example, not bob
    ("bob@example.net <mallory@evil.example>", []),  # no mailbox: neither bob nor mallory
    ("=?utf-8?b?Ym9iQGV4YW1wbGUubmV0?= <m@evil.example>", ['"bob@example.net" <m@evil.example>']),  # a name, not an address
    ("carol@example.org, dan@example.org <eve@evil.example>, frank@example.org", ["carol@example.org", "frank@example.org"]),
    ('"Smith, J" <j@example.org>, Team: k@example.org, l@example.org;', ['"Smith, J" <j@example.org>', "k@example.org", "l@example.org"]),
    ("m@example.org <m@example.org>", ["m@example.org"]),  # the old nameless form: one mailbox, no doubt which
])  # fmt: skip
def test_cc_tricks_put_on_the_cc_list_only_the_mailboxes_the_field_holds(repo: Path, cc: str, carbons: list[str]) -> None:
    """The Cc was split by email.utils.getaddresses and searched for anything like an address: the
    quoted local part `"bob@example.net"@evil.example` put bob on the issue's Cc list (and so on
    every notice) although the mail went to evil.example, and `bob@example.net <mallory@...>` put on
    both. Read with the strict RFC 5322 parser, as the From is, each element is the mailbox it is
    or nothing."""
    (repo / "mailtrack.toml").write_text(ANYONES_CC)
    raw = (f"From: Mallory <mallory@evil.example>\nTo: issues@tracker.localhost\nCc: {cc}\nSubject: Cc trick\n"
           "Message-ID: <cc-trick@evil.example>\n\nIt is on fire.\n").encode()
    r = mailtrack("deliver", repo=repo, config=repo / "mailtrack.toml", input=raw)
    assert (0, b"") == (r.returncode, r.stderr)
    [name] = read_names(repo)
    assert carbons == read_issue(repo, name).carbons


def test_a_cc_of_a_million_hostile_elements_is_read_in_bounded_time(repo: Path) -> None:
    """The strict parser costs some 10 us a character and copies the rest of its input at each step
    (32 KB of `(a),`: 9 s): 4 MB of `(a),` in each of To, Cc and Reply-To is split linearly and read
    only up to its first MAX_LIST_PARSED characters. The issue is made, its Cc the one address first."""
    (repo / "mailtrack.toml").write_text(ANYONES_CC)
    junk = "(a)," * MEGABYTE
    raw = (f"From: Alice <alice@example.org>\nTo: issues@tracker.localhost, {junk}\nCc: Bob <bob@example.org>, {junk}\n"
           f"Reply-To: {junk}\nSubject: Junk lists\nMessage-ID: <junk-lists@example.org>\n\nIt is on fire.\n").encode()
    r = subprocess.run(mailtrack_command("--repo", str(repo), "--config", str(repo / "mailtrack.toml"), "deliver"), input=raw,
                       capture_output=True, timeout=HANG, check=False)
    assert (0, b"") == (r.returncode, r.stderr)
    [name] = read_names(repo)
    assert ["Bob <bob@example.org>"] == read_issue(repo, name).carbons

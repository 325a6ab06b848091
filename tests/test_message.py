"""mailtrack.mail.parse (with decode and quotes): a corpus of real clients' mails, helpers, fuzzing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import unicodedata
from datetime import UTC, datetime
from email import message_from_bytes, policy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.corpus import EXPECTED, MAIL
from helpers.mail import make_mail
from mailtrack.mail.addresses import Ours
from mailtrack.mail.decode import decode_base64, decode_text, decode_words, header_text
from mailtrack.mail.parse import (
    RESERVED_NAME_RE,
    ParsedMail,
    clean_subject,
    parse,
    safe_filename,
    split_pseudo_headers,
    strip_subject_tag,
    subject_tag,
    unique_filename,
)
from mailtrack.mail.quotes import trim_reply, unflow


def load(name: str, **kwargs: object) -> ParsedMail:
    return parse((MAIL / name).read_bytes(), **kwargs)  # type: ignore[arg-type]


def test_every_corpus_file_has_expectations() -> None:
    """Each .eml in tests/data/mail has a row in EXPECTED, and each row a file."""
    assert sorted(EXPECTED) == sorted(p.name for p in MAIL.glob("*.eml"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_headers(name: str) -> None:
    """Subject, sender name and sender address of each corpus mail are decoded."""
    mail, exp = load(name), EXPECTED[name]
    assert (exp.subject, exp.from_name, exp.from_addr) == (
        mail.subject,
        mail.from_name,
        mail.from_addr,
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_reply_text(name: str) -> None:
    """The reply text keeps the sender's own words and drops what the table says it drops."""
    mail, exp = load(name), EXPECTED[name]
    kept = tuple(f for f in exp.reply_has if f in mail.reply_text)
    dropped = tuple(f for f in exp.reply_lacks if f not in mail.reply_text)
    assert (exp.reply_has, exp.reply_lacks) == (kept, dropped)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_attachments(name: str) -> None:
    """Each corpus mail keeps exactly the attachments the table names, in mail order."""
    assert EXPECTED[name].attachments == tuple(a.filename for a in load(name).attachments)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_machine(name: str) -> None:
    """Machine mail is recognised with the right kind of reason; human mail is not."""
    reason = load(name).machine
    assert EXPECTED[name].machine == (reason.split(":")[0] if reason else None)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_body_contains_reply(name: str) -> None:
    """The body holds everything the reply text keeps (the reply only ever removes)."""
    mail = load(name)
    missing = [line for line in mail.reply_text.split("\n") if line not in mail.body]
    assert [line for line in missing if line != "> [...]"] == []


# --- whole-mail details -----------------------------------------------------------------------


def test_gmail_ids_date_and_recipients() -> None:
    """Message-ID, threading headers, date, recipients and auth results of a Gmail reply."""
    mail = load("gmail_toppost.eml")
    expected = (
        "<CAJx1Lr+8kq=Yh5vH9d2Xb0wQ@mail.gmail.com>",
        "<20240603080000.GA1234@tracker.example.org>",
        ("<20240603080000.GA1234@tracker.example.org>",),
        datetime(2024, 6, 3, 8, 12, 33, tzinfo=UTC),
        (("mailtrack issues", "issues@tracker.example.org"),),
        (("Bob Smith", "bob@example.org"),),
        ("issues@tracker.example.org",),
        "jane.doe@gmail.com",
        1,
        "mx.tracker.example.org; dkim=pass",
    )
    assert expected == (
        mail.message_id, mail.in_reply_to, mail.references, mail.date, mail.to, mail.cc,
        mail.delivered_to, mail.return_path, len(mail.auth_results),
        " ".join(mail.auth_results[0].split())[:33],
    )  # fmt: skip


def test_gmail_exact_reply_text() -> None:
    """The top-posted Gmail reply is exactly the two paragraphs above the wrapped attribution."""
    expected = (
        "Thanks, that fixed it for me — the empty file is now accepted.\n\n"
        "I still see a warning in the log, but that is a separate issue."
    )
    assert expected == load("gmail_toppost.eml").reply_text


def test_mutt_interleaved_exact_reply_text() -> None:
    """Interleaved quotes followed by answers stay; the trailing quote and signature go."""
    expected = (
        "> Thanks, that fixed it for me - the empty file is now accepted.\n\n"
        "Good to hear.\n\n"
        "> I still see a warning in the log, but that is a separate issue.\n\n"
        "Which warning? Please paste the exact line, then I will open a new\n"
        "issue for it."
    )
    assert expected == load("mutt_signed.eml").reply_text


def test_references_in_order_and_folded() -> None:
    """References spread over folded lines come out in order, with brackets."""
    expected = (
        "<20240603080000.GA1234@tracker.example.org>",
        "<20240603120000.GB5678@tracker.example.org>",
    )
    assert expected == load("outlook_de_inline_image.eml").references


def test_missing_message_id_is_a_hash_of_the_raw_mail() -> None:
    """A mail without Message-ID gets <sha1(its LF bytes less the mbox line and trace fields on top)@mailtrack.invalid>."""
    raw = (MAIL / "broken_headers.eml").read_bytes()
    mbox_from, return_path, untraced = raw.replace(b"\r\n", b"\n").split(b"\n", 2)
    assert (b"From ", b"Return-Path:") == (mbox_from[:5], return_path[:12])
    expected = "<" + hashlib.sha1(untraced).hexdigest() + "@mailtrack.invalid>"
    assert expected == parse(raw).message_id


def test_broken_date_and_in_reply_to_are_none() -> None:
    """An unparsable Date and an In-Reply-To without a msg-id give None."""
    mail = load("broken_headers.eml")
    assert (None, None) == (mail.date, mail.in_reply_to)


def test_return_path() -> None:
    """Return-Path: <> is "", a missing one is None, an address is lowercased."""
    expected = ("", None, "j.schmidt@contoso.com")
    actual = tuple(load(n).return_path for n in ("bounce_dsn.eml", "raw_8bit_headers.eml",
                                                  "outlook_reply.eml"))  # fmt: skip
    assert expected == actual


def test_header_accessor() -> None:
    """header() is case-insensitive, decoded, unfolded, and None for a missing header."""
    mail = load("outlook_de_inline_image.eml")
    expected = ("de-DE", "AW: AW: [mailtrack #d14142c] Absturz beim Start mit leerer "
                "Konfigurationsdatei", None)  # fmt: skip
    assert expected == (
        mail.header("content-language"),
        mail.header("SUBJECT"),
        mail.header("X-Nope"),
    )


def test_empty_input() -> None:
    """Empty bytes give an empty mail with a hash Message-ID."""
    mail = parse(b"")
    expected = ("<" + hashlib.sha1(b"").hexdigest() + "@mailtrack.invalid>", "", "", (), None)
    assert expected == (mail.message_id, mail.body, mail.reply_text, mail.attachments, mail.date)


def test_winmail_dat_is_kept_as_a_file() -> None:
    """Outlook's winmail.dat is stored byte for byte as application/ms-tnef."""
    [att] = load("outlook_reply.eml").attachments
    assert ("application/ms-tnef", b"\x78\x9f\x3e\x22", 204) == (
        att.content_type,
        att.data[:4],
        len(att.data),
    )


def test_inline_image_is_a_png() -> None:
    """An inline (cid) image of a multipart/related is kept with its bytes."""
    [att] = load("gmail_inline_image.eml").attachments
    assert ("image/png", b"\x89PNG") == (att.content_type, att.data[:4])


def test_forwarded_message_is_a_readable_eml() -> None:
    """A message/rfc822 part becomes a .eml attachment that parses back to the original."""
    [att] = load("forwarded_rfc822.eml").attachments
    inner = message_from_bytes(att.data, policy=policy.default)
    assert ("message/rfc822", "Crash report from the field", "<original.42@client.example>") == (
        att.content_type,
        inner["Subject"],
        inner["Message-ID"],
    )


def test_html_only_mail_keeps_its_html() -> None:
    """HTML-only mail: body via html2text and the HTML itself as message.html."""
    mail = load("html_only_blockquote.eml")
    [att] = mail.attachments
    assert ("text/html", True, False) == (
        att.content_type,
        att.data.startswith(b"<html>"),
        "<div" in mail.body,
    )


def test_alternative_html_is_not_kept() -> None:
    """In multipart/alternative the text/plain wins and the HTML rendering is not stored."""
    mail = load("gmail_toppost.eml")
    assert ((), False) == (mail.attachments, "<div" in mail.body)


def test_alternative_with_empty_text_uses_html() -> None:
    """An empty text/plain alternative falls back to the HTML rendering."""
    raw = (
        b"From: a@b.example\nSubject: x\nContent-Type: multipart/alternative; boundary=B\n\n"
        b"--B\nContent-Type: text/plain\n\n \n--B\nContent-Type: text/html\n\n"
        b"<p>Only <b>here</b></p>\n--B--\n"
    )
    mail = parse(raw)
    assert ("Only **here**", ("message.html",)) == (
        mail.body,
        tuple(a.filename for a in mail.attachments),
    )


def test_pgp_signature_is_not_stored() -> None:
    """The application/pgp-signature part of a PGP/MIME mail is dropped without a note."""
    mail = load("mutt_signed.eml")
    assert ((), ()) == (mail.attachments, mail.skipped)


def test_oversized_attachment_is_skipped_with_a_note() -> None:
    """A part over max_attachment_size is not kept, and `skipped` names it and its size."""
    mail = load("outlook_reply.eml", max_attachment_size=100)
    assert ((), ("winmail.dat (204 bytes) over the 100 bytes limit",)) == (
        mail.attachments,
        mail.skipped,
    )


def test_oversized_note_in_megabytes() -> None:
    """Sizes in the note are in MB when they are large."""
    data = b"x" * (3 * 1024 * 1024 // 2)
    raw = (
        b"From: a@b.example\nContent-Type: multipart/mixed; boundary=B\n\n--B\n\nhi\n--B\n"
        b"Content-Type: application/octet-stream\nContent-Disposition: attachment; "
        b'filename="huge.iso"\n\n' + data + b"\n--B--\n"
    )
    expected = ("huge.iso (1.5 MB) over the 1 MB limit",)
    assert expected == parse(raw, max_attachment_size=1024 * 1024).skipped


def test_html2text_is_imported_only_for_html() -> None:
    """A plain-text mail does not import html2text (one process per mail stays lean)."""
    code = (
        "import sys, pathlib; from mailtrack.mail.parse import parse; "
        f"parse(pathlib.Path({str(MAIL / 'mutt_signed.eml')!r}).read_bytes()); "
        "print('html2text' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "False" == out.stdout.strip()


def test_charset_label_with_a_nul_byte() -> None:
    """An 8-bit text part whose charset label holds a NUL byte still decodes (fuzz find)."""
    raw = (
        b'From: a@b.example\nContent-Type: text/plain; charset="u\x00tf-8"\n'
        b"Content-Transfer-Encoding: 8bit\n\ncaf\xc3\xa9\n"
    )
    assert "café" == parse(raw).body


def test_garbage_content_type_gives_a_safe_name() -> None:
    """Control characters in a content type are dropped, and the name is safe (fuzz find)."""
    raw = (
        b"From: a@b.example\nContent-Type: multipart/mixed; boundary=B\n\n--B\n\nhi\n--B\n"
        b"Content-Type: message/rfc82\x04\n\nSubject: x\n\nbody\n--B--\n"
    )
    [att] = parse(raw).attachments
    assert ("message/rfc82", "rfc82.txt") == (att.content_type, att.filename)


def _nested(depth: int) -> bytes:
    head = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth)
    )
    tail = b"".join(b"\n--b%d--\n" % i for i in reversed(range(depth)))
    return b"From: a@b.example\n" + head + b"Content-Type: text/plain\n\ndeep\n" + tail


def test_too_many_parts_are_cut_off_with_a_note() -> None:
    """Parts past MAX_PARTS are not read, and `skipped` says so once."""
    part = b"--B\nContent-Type: application/octet-stream\nContent-Disposition: attachment\n\nx\n"
    raw = b"From: a@b.example\nContent-Type: multipart/mixed; boundary=B\n\n" + part * 1200
    mail = parse(raw + b"--B--\n")
    assert (999, ("parts after the first 1000",)) == (len(mail.attachments), mail.skipped)


def test_display_name_that_repeats_the_address_is_dropped() -> None:
    """Outlook's "a@b" <a@b> and quoted 'names' give clean (name, address) pairs."""
    raw = b'From: "\'Jane Doe\'" <jane@x.example>\nTo: "a@b.example" <A@b.example>\n\nhi\n'
    mail = parse(raw)
    assert (("Jane Doe", "jane@x.example"), (("", "a@b.example"),)) == (
        (mail.from_name, mail.from_addr),
        mail.to,
    )


def test_deep_nesting_is_cut_off_with_a_note() -> None:
    """Parts nested deeper than MAX_DEPTH are not followed, and `skipped` says so."""
    mail = parse(_nested(40))
    assert ("", ("parts nested deeper than 30 levels",)) == (mail.body, mail.skipped)


def test_absurd_nesting_still_gives_headers() -> None:
    """Nesting the parser itself cannot take still yields the headers and the raw body text."""
    mail = parse(_nested(1000))
    assert ("a@b.example", True) == (mail.from_addr, "deep" in mail.body)


# --- machine mail -----------------------------------------------------------------------------

HUMAN = b"From: Jane <jane@example.org>\nSubject: Help\nMessage-ID: <h@x>\n\nHello\n"


@pytest.mark.parametrize(
    ("extra", "kind"),
    [
        (b"X-Mailtrack-Loop: tracker.example.org\n", "loop"),
        (b"Return-Path: <>\n", "bounce"),
        (b"X-Failed-Recipients: gone@example.com\n", "bounce"),
        (b"Auto-Submitted: auto-generated\n", "auto-reply"),
        (b"Auto-Submitted: no\n", None),
        (b"X-Autoreply: yes\n", "auto-reply"),
        (b"X-Autorespond: yes\n", "auto-reply"),
        (b"Precedence: bulk\n", "bulk"),
        (b"Precedence: junk\n", "bulk"),
        (b"Precedence: list\n", "list"),
        (b"List-Id: <dev.lists.example.org>\n", None),
        (b"", None),
    ],
)
def test_machine_headers(extra: bytes, kind: str | None) -> None:
    """Each machine-mail header gives its kind of reason; a List-Id alone does not."""
    reason = parse(extra + HUMAN).machine
    assert kind == (reason.split(":")[0] if reason else None)


def test_machine_own_address() -> None:
    """Mail From one of own_addresses is our own loop."""
    raw = HUMAN.replace(b"jane@example.org", b"Issues@Tracker.example.org")
    assert (
        "loop: from our own address issues@tracker.example.org"
        == parse(raw, ours=Ours(extra=("issues@tracker.example.org",))).machine
    )


def test_machine_custom_loop_header() -> None:
    """The loop header's name is a parameter."""
    assert (
        "loop: our own X-Other-Loop header"
        == parse(b"X-Other-Loop: 1\n" + HUMAN, loop_header="X-Other-Loop").machine
    )


@pytest.mark.parametrize(
    ("subject", "machine"),
    [
        ("Out of Office: Help", True),
        ("Out of Office AutoReply: Help", True),
        ("Automatic reply: Help", True),
        ("AUTO: Jane Doe is out of the office (returning 24.06.2024)", True),
        ("Abwesenheitsnotiz: Help", True),
        ("Automatische Antwort: Help", True),
        ("Réponse automatique : Help", True),
        ("Absence du bureau", True),
        ("Absence", True),
        ("Respuesta automática: Help", True),
        ("Afwezig: Help", True),
        ("Automatisch antwoord: Help", True),
        ("Autosvar: Help", True),
        ("Absence of logs in debug mode", False),
        ("Automatic replies break the build", False),
        ("Auto-save loses data", False),
        ("Out of memory on start", False),
        ("Re: Out of Office: Help", False),
    ],
)
def test_out_of_office_subjects(subject: str, machine: bool) -> None:
    """Out-of-office subjects in several languages are machine mail; look-alikes are not."""
    raw = HUMAN.replace(b"Subject: Help", b"Subject: " + subject.encode())
    assert machine == (parse(raw).machine is not None)


# --- subjects ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: Crash", "Crash"),
        ("RE: re: Fwd: FW: Crash", "Crash"),
        ("AW: WG: SV: VS: Antw: Crash", "Crash"),
        ("Re[2]: Re(3): Crash", "Crash"),
        ("Réf. : TR : Crash", "Crash"),
        ("RE : Crash", "Crash"),
        ("[dev-list] Re: [mailtrack #abc1234] Crash", "[mailtrack #abc1234] Crash"),
        ("Re: [EXTERNAL] [dev] Crash (fwd)", "Crash"),
        ("  Re:   Crash   when\tempty ", "Crash when empty"),
        ("Crash in Re: module", "Crash in Re: module"),
        ("", ""),
    ],
)
def test_clean_subject(subject: str, expected: str) -> None:
    """Reply/forward and list prefixes go, in any case and repetition; tags and inner text stay."""
    assert expected == clean_subject(subject)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("[proj #abc1234] Crash", ("abc1234", [])),
        ("Re: AW: [proj#ABC1234] Crash", ("abc1234", [])),
        ("[PROJ  #abc1234 ] Crash", ("abc1234", [])),
        ("Crash [proj #" + "a" * 40 + "]", ("a" * 40, [])),
        ("[proj #abc1234] Crash [status=closed] [severity = minor]",
         ("abc1234", ["status=closed", "severity=minor"])),
        ("[proj #abc1234] [status=closed;priority=high] Crash [urgent]",
         ("abc1234", ["status=closed", "priority=high"])),
        ("[status=closed] [proj #abc1234] Crash", ("abc1234", [])),
        ("[other #abc1234] Crash", None),
        ("[proj #abc] Crash", None),
        ("[proj #xyz1234] Crash", None),
        ("proj #abc1234 Crash", None),
    ],
)  # fmt: skip
def test_subject_tag(subject: str, expected: tuple[str, list[str]] | None) -> None:
    """The tag is found through prefixes and mangling; commands are the brackets after it."""
    assert expected == subject_tag(subject, "proj")


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: [proj #abc1234] Crash on start", "Crash on start"),
        ("AW: [dev] [proj#abc1234] Crash [status=closed]", "Crash"),
        ("Re: [proj #abc1234] Re: Crash", "Crash"),
        ("Crash [proj #abc1234] in the parser", "Crash in the parser"),
        ("Re: Crash", "Crash"),
    ],
)
def test_strip_subject_tag(subject: str, expected: str) -> None:
    """The title left over has no prefixes, no tag and no commands."""
    assert expected == strip_subject_tag(subject, "proj")


def test_subject_tag_with_regex_characters_in_project() -> None:
    """A project name with regex characters is matched literally."""
    assert ("abcd", []) == subject_tag("[c++ #abcd] x", "c++")


# --- pseudo-headers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Status: closed\nSeverity: minor\n\nFixed.", ([("Status", "closed"),
                                                         ("Severity", "minor")], "Fixed.")),
        ("\n\nX-Tag: a b\n", ([("X-Tag", "a b")], "")),
        ("Status: closed\nthanks\n\nFixed.", ([], "Status: closed\nthanks\n\nFixed.")),
        ("https://example.org/x\n\nsee", ([], "https://example.org/x\n\nsee")),
        ("Note:\n\nx", ([], "Note:\n\nx")),
        ("Hello world\n\nStatus: closed", ([], "Hello world\n\nStatus: closed")),
        ("", ([], "")),
    ],
)  # fmt: skip
def test_split_pseudo_headers(text: str, expected: tuple[list[tuple[str, str]], str]) -> None:
    """Only a first paragraph made wholly of "Field: value" lines is split off."""
    assert expected == split_pseudo_headers(text)


def test_pseudo_headers_from_a_corpus_reply() -> None:
    """Pseudo-headers at the top of a real reply come off its reply text."""
    pairs, rest = split_pseudo_headers(load("pseudo_headers.eml").reply_text)
    expected = ([("Severity", "minor"), ("Milestone", "0.4"), ("Tags", "config, startup")],
                "Fixed by falling back to the defaults when the file is empty.")  # fmt: skip
    assert expected == (pairs, rest)


# --- reply trimming ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Yes.\n\nOn Mon, 3 Jun 2024 at 10:00, Jane <j@x.org> wrote:\n> q\n", "Yes."),
        ("Yes.\n\nAm 03.06.2024 um 10:00 schrieb Jane Doe <j@x.org>:\n> q\n", "Yes."),
        ("Oui.\n\nLe 3 juin 2024 à 10:00, Jane <j@x.org> a écrit :\n> q\n", "Oui."),
        ("Sí.\n\nEl lun, 3 jun 2024 a las 10:00, Jane (<j@x.org>)\nescribió:\n> q\n", "Sí."),
        ("Ja.\n\nOp ma 3 jun. 2024 om 10:00 schreef Jane <j@x.org>:\n\n> q\n", "Ja."),
        ("Yes.\n\n* Jane Doe <j@x.org> [2024-06-03 10:00]:\n> q\n", "Yes."),
        ("Yes.\n-- \nJane\n> q", "Yes."),
        ("Yes.\n--\nJane", "Yes."),
        ("Yes.\n\nSent from my iPhone", "Yes."),
        ("Yes.\n\nGet Outlook for Android\n", "Yes."),
        ("Yes.\n\nGet Outlook for iOS<https://aka.ms/o0ukef>\n", "Yes."),
        ("Yes.\n\nSent from my Samsung Galaxy smartphone.\n", "Yes."),
        ("Ja.\n\nVon meinem iPhone gesendet\n", "Ja."),
        ("Yes.\n\n-----Original Message-----\nFrom: x\nold", "Yes."),
        ("Ja.\n\n-----Ursprüngliche Nachricht-----\nVon: x\nalt", "Ja."),
        ("Yes.\n\nFrom: Jane <j@x.org>\nSent: Monday\nTo: Bob\nSubject: Re: x\n\nold", "Yes."),
        ("Yes.\n\n________________________________\nFrom: Jane\nold", "Yes."),
        ("> q\n> q2\n\nanswer\n\n> trailing\n", "> q\n> q2\n\nanswer"),
        ("Yes.\r\n\r\n> q\r\n", "Yes."),
        ("> only\n> quotes\n", "> only\n> quotes"),
        ("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSigned.\n- -- \nme\n"
         "-----BEGIN PGP SIGNATURE-----\n\niQ\n-----END PGP SIGNATURE-----\n", "Signed."),
        ("-- \nJust a signature\n", "-- \nJust a signature"),
        ("  indented first line\nsecond   \n\n\n\n", "  indented first line\nsecond"),
        ("On second thought, it works.\nJane wrote:\n> q\n", "On second thought, it works."),
        ("I wrote this:\n\nsome text", "I wrote this:\n\nsome text"),
        ("", ""),
    ],
)  # fmt: skip
def test_trim_reply(body: str, expected: str) -> None:
    """Attribution, quotes below, signatures, footers and Outlook headers are trimmed."""
    assert expected == trim_reply(body)


def test_trim_reply_cuts_a_long_quote_to_its_end() -> None:
    """A long quote above an answer keeps only its last lines, after a "> [...]" mark."""
    body = "\n".join(f"> line {i}" for i in range(30)) + "\n\nanswer"
    expected = "> [...]\n" + "\n".join(f"> line {i}" for i in range(20, 30)) + "\n\nanswer"
    assert expected == trim_reply(body)


@pytest.mark.parametrize(
    ("text", "delsp", "expected"),
    [
        ("a \nb\n", False, "a b\n"),
        ("a  \nb", True, "a b"),
        ("> q \n> r\nown", False, "> q r\nown"),
        (" >not a quote", False, ">not a quote"),
        ("sig\n-- \nme", False, "sig\n-- \nme"),
        ("> a \nb", False, "> a \nb"),
    ],
)
def test_unflow(text: str, delsp: bool, expected: str) -> None:
    """format=flowed soft breaks join, space-stuffing goes, quotes and "-- " stay."""
    assert expected == unflow(text, delsp)


# --- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "charset", "expected"),
    [
        ("Grüße".encode(), "utf-8", "Grüße"),
        ("Grüße".encode("latin-1"), "iso-8859-1", "Grüße"),
        ("Grüße".encode(), "iso-8859-1", "Grüße"),  # UTF-8 labelled Latin-1
        ("5 €".encode("cp1252"), "us-ascii", "5 €"),
        ("Grüße".encode("latin-1"), "utf-8", "Grüße"),
        ("Grüße".encode("latin-1"), "x-no-such-charset", "Grüße"),
        ("Grüße".encode("latin-1"), None, "Grüße"),
        (b"\\u0041", "unicode_escape", "\\u0041"),
        ("日本語".encode("shift_jis") + b"\x81", "shift_jis", "日本語\ufffd"),  # cut short
        ("łódź".encode("iso-8859-2"), "ISO-8859-2", "łódź"),
        ("ハ".encode("cp932"), '"Shift_JIS"', "ハ"),
        (b"\x81\x8d", "us-ascii", "\x81\x8d"),
    ],
)
def test_decode_text(data: bytes, charset: str | None, expected: str) -> None:
    """The declared charset, then UTF-8, then cp1252/Latin-1; never an exception."""
    assert expected == decode_text(data, charset)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=?utf-8?q?J=C3=B6rg?= <j@x>", "Jörg <j@x>"),
        ("=?utf-8?b?w6Q=?= =?utf-8?b?w7Y=?=", "äö"),
        ("=?utf-8?b?4oI=?= =?utf-8?b?rA==?=", "€"),  # one character split over two words
        ("=?utf-8?b?w6Q?=", "ä"),  # missing padding
        ("Re:=?utf-8?q?_caf=C3=A9?=", "Re: café"),
        ("=?iso-8859-1?q?a?= b =?utf-8?q?c?=", "a b c"),
        ("=?bogus?q?caf=E9?=", "café"),
        ("=?utf-8*de?q?x?=", "x"),
        ("plain text", "plain text"),
    ],
)
def test_decode_words(value: str, expected: str) -> None:
    """RFC 2047 words decode leniently; whitespace between adjacent words is dropped."""
    assert expected == decode_words(value)


def test_header_text_raw_8bit_and_folding() -> None:
    """Raw 8-bit header bytes (surrogate-escaped) decode as UTF-8; folding goes."""
    raw = "Gr\udcc3\udcbc\udcc3\udc9fe\r\n =?utf-8?q?aus_K=C3=B6ln?="
    assert "Grüße aus Köln" == header_text(raw)


def test_decode_base64_drops_bad_lines() -> None:
    """A garbage line in base64 is dropped instead of garbling everything after it."""
    assert b"hello world" == decode_base64("aGVsbG8g\n!!! junk !!!\nd29ybGQ=\n")


# --- file names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\evil.exe", "evil.exe"),
        ("issue.xml", "attachment-issue.xml"),
        ("Project.XML", "attachment-Project.XML"),
        ("comment_2024_abc.xml", "attachment-comment_2024_abc.xml"),
        ("comment.xml", "comment.xml"),
        (".hidden", "hidden"),
        ("..", "attachment.bin"),
        ("", "attachment.bin"),
        (None, "attachment.bin"),
        ("a\x00b\x1b[0m\u202e.txt", "ab[0m.txt"),
        ('what?<is>:"this"|*.txt', "what__is___this___.txt"),
        ("x" * 300 + ".tar.gz", "x" * 97 + ".gz"),
        ("名" * 150 + ".pdf", "名" * 65 + ".pdf"),
        ("Prüfbericht März.pdf", "Prüfbericht März.pdf"),
        ("-rf", "rf"),
    ],
)  # fmt: skip
def test_safe_filename(name: str | None, expected: str) -> None:
    """Path parts, dots, control and format characters, reserved names and length are handled."""
    assert expected == safe_filename(name)


def test_unique_filename() -> None:
    """Duplicates get -1, -2 before the extension, case-insensitively, within the length limit."""
    taken = {"a.txt", "a-1.txt"}
    long = "y" * 96 + ".txt"
    assert ("A-2.txt", "b.txt", "y" * 94 + "-1.txt") == (
        unique_filename("A.txt", taken),
        unique_filename("b.txt", taken),
        unique_filename(long, {long}),
    )


# --- never raises -----------------------------------------------------------------------------

CORPUS = [p.read_bytes() for p in sorted(MAIL.glob("*.eml"))]


def _safe_name(name: str) -> bool:
    return (
        bool(name)
        and "/" not in name
        and "\\" not in name
        and not name.startswith((".", "-", " "))
        and len(name) <= 100
        and len(name.encode("utf-8")) <= 200
        and not RESERVED_NAME_RE.match(name)
        and all(unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn") for c in name)
    )


def check_invariants(mail: ParsedMail) -> list[str]:
    """The promises parse makes for any input; the names of those broken."""
    names = [a.filename for a in mail.attachments]
    checks = {
        "message-id": mail.message_id.startswith("<") and mail.message_id.endswith(">")
        and not any(c.isspace() for c in mail.message_id),
        "names safe": all(_safe_name(n) for n in names),
        "names unique": len({n.casefold() for n in names}) == len(names),
        "reply not empty": bool(mail.reply_text) or not mail.body.strip(),
        "date utc": mail.date is None or mail.date.utcoffset() is not None,
        "from lowercase": mail.from_addr == mail.from_addr.lower(),
    }  # fmt: skip
    return [name for name, ok in checks.items() if not ok]


@st.composite
def mutated_mails(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate-header"]))
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[at] = draw(st.integers(0, 255))
        elif op == "insert":
            raw[at:at] = draw(st.sampled_from([b"=?", b"?=", b"\n", b"\r\n", b"--", b";",
                                               b'"', b"\x00", b"\xff", b"=", b"*0*="]))  # fmt: skip
        elif op == "delete":
            del raw[at : at + draw(st.integers(1, 50))]
        elif op == "truncate":
            del raw[at:]
        else:
            head, sep, body = bytes(raw).partition(b"\n\n")
            lines = head.split(b"\n")
            line = lines[draw(st.integers(0, len(lines) - 1))]
            lines.insert(draw(st.integers(0, len(lines))), line)
            raw = bytearray(b"\n".join(lines) + sep + body)
    return bytes(raw)


FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


@FUZZ
@given(st.binary(max_size=4000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    """Any bytes parse, and the result keeps every promise."""
    assert [] == check_invariants(parse(raw))


@FUZZ
@given(mutated_mails())
def test_mutated_corpus_never_raises(raw: bytes) -> None:
    """Corpus mails with flipped bytes, truncation and duplicated headers parse safely."""
    assert [] == check_invariants(parse(raw, max_attachment_size=200))


@FUZZ
@given(st.text(max_size=300))
def test_helpers_never_raise(text: str) -> None:
    """The text helpers take any string and return their documented shapes."""
    _, rest = split_pseudo_headers(text)
    results = (trim_reply(text), clean_subject(text), strip_subject_tag(text, "p"),
               subject_tag(text, "p"), decode_words(text), safe_filename(text), rest)  # fmt: skip
    assert (True, True) == (
        all(isinstance(r, str) or r is None or isinstance(r, tuple) for r in results),
        _safe_name(safe_filename(text)),
    )


@pytest.mark.parametrize("body,expected", [
    ("Thanks.\n\nOn Mon, Bob wrote:\n> Status: closed\n", False),
    ("On Mon, Bob wrote:\n> Status: closed\n> It broke.\n", True),
    ("From: Bob <bob@example.org>\nSent: Monday\nTo: issues@tracker.localhost\nSubject: x\n\nold\n", True),
    ("", False),
])
def test_parse_says_when_a_reply_is_all_quote(body: str, expected: bool) -> None:
    """ParsedMail.all_quote is set when nothing of the sender's own is left and reply_text is the whole body."""
    mail = parse(make_mail(body=body))
    assert (expected, body.strip() if expected else mail.reply_text) == (mail.all_quote, mail.reply_text)


def test_a_display_name_the_parser_chokes_on_is_no_address_not_a_crash() -> None:
    """`"a b".<c@d>` (found by test_mutated_corpus_never_raises): the standard library's token tree
    raises an AttributeError when asked for its display name; that mailbox gives nothing, the rest stay."""
    raw = (b'From: Jane <jane@example.org>\nTo: "mailtrack issues".<issues@tracker.example.org>\n'
           b"Cc: Bob Smith <bob@example.org>\nSubject: x\nMessage-ID: <dot@example.org>\n\nhi\n")
    mail = parse(raw)
    assert ((), (("Bob Smith", "bob@example.org"),), "jane@example.org") == (mail.to, mail.cc, mail.from_addr)

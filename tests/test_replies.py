"""Replies to the sender: the acknowledgement of a new issue, the transcript of their commands (its
subject counts errors and refusals), and a refusal with the original mail attached."""

from __future__ import annotations

from pathlib import Path

from helpers.mail import filed, make_mail, replies, text_of
from helpers.repos import git, read_issue
from mailtrack.worker.pipeline import Gateway


def test_ack_body_reads_well_at_72_columns(gw: Gateway, repo: Path) -> None:
    """The acknowledgement, exactly: no line over 72 columns, the subject tag never split over two lines."""
    out = gw.handle(make_mail(message_id="<ack@x>"))
    [ack] = [m for m in replies(repo) if m["Subject"].startswith("[proj")]
    short = out.short
    expected = (
        f"Thank you for your report. It is now issue {short} of proj:\n"
        "\n"
        "    Printer on fire\n"
        "\n"
        "To add to it, do any of these:\n"
        "\n"
        "  - reply to this mail;\n"
        f"  - write to <issues+{short}@tracker.localhost>;\n"
        f"  - keep [proj #{short}] in the subject of your mail.\n"
        "\n"
        "To close it, reply with this line at the very top of your mail:\n"
        "\n"
        "    Status: closed\n"
        "\n"
        "-- \n"
        "proj issue tracker <issues@tracker.localhost>\n"
    )
    assert expected == text_of(ack)
    assert [] == [ln for ln in expected.splitlines() if len(ln) > 72]


def test_transcript_subject_counts_refused_lines(gw: Gateway, repo: Path) -> None:
    """Every command refused: the subject says how many ("with 1 refusal"), as it says "with N errors"."""
    name = filed(gw, repo)
    gw.handle(make_mail(to="control@tracker.localhost", frm="mallory@example.net", message_id="<evil@x>", body=f"close {name[:7]}\n"))
    [t] = replies(repo)
    assert "Processed (with 1 refusal): Printer on fire" == t["Subject"]


def test_transcript_subject_counts_errors_and_refusals(gw: Gateway, repo: Path) -> None:
    """An illegal value and a refused line in one mail: both are counted in the subject."""
    name = filed(gw, repo)
    tip = git(repo, "rev-parse", "issues")
    gw.handle(make_mail(to="control@tracker.localhost", frm="mallory@example.net", message_id="<evil@x>",
                        body=f"close {name[:7]}\nstatus deadbeef open\n"))
    [t] = replies(repo)
    assert ("Processed (with 1 error, 1 refusal): Printer on fire", tip) == (t["Subject"], git(repo, "rev-parse", "issues"))


def test_refused_command_transcript_attaches_the_original(gw: Gateway, repo: Path) -> None:
    """A command refused to a stranger gets a transcript with the mail attached and the forged-address line."""
    name = filed(gw, repo)
    raw = make_mail(message_id="<s@x>", In_Reply_To="<filed@x>", frm="mallory@evil.example", body="Status: closed\n\nI think this is done.\n")
    out = gw.handle(raw)
    assert ("commented", "new") == (out.action, read_issue(repo, name).status)
    [t] = replies(repo)
    assert ("Processed (with 1 refusal): Printer on fire", "<s@x>") == (t["Subject"], t["In-Reply-To"])
    assert (
        "Your commands were processed:\n\n> Status: closed\n"
        f"refused: mallory@evil.example may not change issue {name[:7]} (allowed:\nreporter, assignee, owner, maintainer)\n\n"
        "Refused commands were not applied; the rest of your mail was.\n\n"
        "Your mail is attached as it arrived. If you did not send it, someone forged\n"
        "your address: you may ignore this message.\n"
    ) in text_of(t)
    [attached] = list(t.iter_attachments())
    assert "message/rfc822" == attached.get_content_type()
    assert raw.replace(b"\r\n", b"\n").strip() in bytes(attached.get_payload(0)).replace(b"\r\n", b"\n")  # type: ignore[index]

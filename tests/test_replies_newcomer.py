"""A newcomer's reports: control records per issue, transcript subjects, the ack's text, the dry
run's route and text, `outbox retry`'s line, `requeue` by a prefix of the spool ID."""

from __future__ import annotations

import email
import subprocess
import sys
from email import policy
from pathlib import Path

from conftest import git, read_comments, read_names
from mailtrack.config import Config, GatewayConfig
from mailtrack.outbound.notifier import Notifier
from mailtrack.worker.pipeline import Gateway
from test_commands import filed, replies, text_of
from test_gateway import deliver, make_mail


def two_issues(gw: Gateway, repo: Path) -> tuple[str, str]:
    """Issues A ("Printer on fire") and B ("Second"), both reported by alice; the replies cleared."""
    a = filed(gw, repo)
    gw.handle(make_mail(subject="Second", message_id="<two@x>"))
    replies(repo)
    b = [n for n in read_names(repo) if n != a][0]
    return a, b


def test_control_record_on_each_issue_holds_only_its_own_lines(gw: Gateway, repo: Path) -> None:
    """A control mail over issues A and B: A's comment carries the Message-ID and only A's lines, B's
    comment only B's lines and no Message-ID; a repeat of the mail is a duplicate."""
    a, b = two_issues(gw, repo)
    body = f"severity {a[:7]} minor\ntag {b[:7]} +ui\nclose {a[:7]} wontfix\nretitle {b[:7]} A new title\n"
    out = gw.handle(make_mail(to="control@localhost", frm="boss@example.org", message_id="<ctl@x>", body=body))
    assert "changed" == out.action
    [ca], [cb] = read_comments(repo, a), read_comments(repo, b)
    head = "Commands by mail to the control address:\n\n"
    assert (head + f"severity {a[:7]} minor\nclose {a[:7]} wontfix", "<ctl@x>") == (ca.text.strip("\n"), ca.message_id)
    assert (head + f"tag {b[:7]} +ui\nretitle {b[:7]} A new title", "") == (cb.text.strip("\n"), cb.message_id)
    replies(repo)
    again = gw.handle(make_mail(to="control@localhost", frm="boss@example.org", message_id="<ctl@x>", body=body))
    assert "duplicate" == again.action


def test_notification_per_issue_quotes_only_that_issues_lines(gw: Gateway, repo: Path) -> None:
    """The notifications of a control mail over A and B: each quotes only the lines about its own issue."""
    a, b = two_issues(gw, repo)
    old = git(repo, "rev-parse", "issues").strip().encode()
    body = f"severity {a[:7]} minor\ntag {b[:7]} +ui\n"
    gw.handle(make_mail(to="control@localhost", frm="boss@example.org", message_id="<ctl@x>", body=body))
    new = git(repo, "rev-parse", "issues").strip().encode()
    notifier = Notifier(Config(gateway=GatewayConfig(project="proj")), gw.spool, project="proj")
    bodies = {}
    for m in notifier.mails(gw.store, old, new):
        msg = email.message_from_bytes(m.raw, policy=policy.default)
        bodies[msg["X-Mailtrack-Issue"]] = text_of(msg)  # type: ignore[arg-type]
    assert [a[:7], b[:7]] == sorted(bodies, key=lambda s: s != a[:7])
    assert (True, False) == (f"> severity {a[:7]} minor" in bodies[a[:7]], b[:7] in bodies[a[:7]]), bodies[a[:7]]
    assert (True, False) == (f"> tag {b[:7]} +ui" in bodies[b[:7]], a[:7] in bodies[b[:7]]), bodies[b[:7]]


def test_transcript_subject_counts_refused_lines(gw: Gateway, repo: Path) -> None:
    """Every command refused: the subject says how many ("with 1 refusal"), as it says "with N errors"."""
    name = filed(gw, repo)
    gw.handle(make_mail(to="control@localhost", frm="mallory@example.net", message_id="<evil@x>", body=f"close {name[:7]}\n"))
    [t] = replies(repo)
    assert "Processed (with 1 refusal): Printer on fire" == t["Subject"]


def test_transcript_subject_counts_errors_and_refusals(gw: Gateway, repo: Path) -> None:
    """An illegal value and a refused line in one mail: both are counted in the subject."""
    name = filed(gw, repo)
    tip = git(repo, "rev-parse", "issues")
    gw.handle(make_mail(to="control@localhost", frm="mallory@example.net", message_id="<evil@x>",
                        body=f"close {name[:7]}\nstatus deadbeef open\n"))
    [t] = replies(repo)
    assert ("Processed (with 1 error, 1 refusal): Printer on fire", tip) == (t["Subject"], git(repo, "rev-parse", "issues"))


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
        f"  - write to <issues+{short}@localhost>;\n"
        f"  - keep [proj #{short}] in the subject of your mail.\n"
        "\n"
        "To close it, reply with this line at the very top of your mail:\n"
        "\n"
        "    Status: closed\n"
        "\n"
        "-- \n"
        "proj issue tracker <issues@localhost>\n"
    )
    assert expected == text_of(ack)
    assert [] == [ln for ln in expected.splitlines() if len(ln) > 72]


def test_dry_run_says_the_name_is_not_final_and_shows_the_text(repo: Path) -> None:
    """--dry-run of a new issue: the Route line says its name comes from the time of receipt, and a
    Text block shows the first eight lines of the description, then how many more there are."""
    body = "Severity: minor\n\n" + "\n".join(f"line {i} of the report" for i in range(1, 11)) + "\n"
    out = deliver(repo, make_mail(body=body), "--dry-run").stdout.decode().splitlines()
    route = out.index("Route:      new (its name comes from the time of receipt; no issue named by address, thread or subject)")
    text = out.index("Text:")
    expected = ["Text:", *[f"  line {i} of the report" for i in range(1, 9)], "  (2 more line(s))"]
    assert (True, expected) == (route < text, out[text:text + 10])


def test_dry_run_of_a_reply_shows_the_comment_text(repo: Path) -> None:
    """--dry-run of a reply: the Text block is the comment's text, without the quote."""
    assert 0 == deliver(repo, make_mail(message_id="<first@example.org>")).returncode
    reply = make_mail(message_id="<r@example.org>", In_Reply_To="<first@example.org>",
                      body="Still burning.\nNow the desk too.\n\nOn Mon, Alice wrote:\n> It is on fire.\n")
    out = deliver(repo, reply, "--dry-run").stdout.decode()
    assert "\nText:\n  Still burning.\n  Now the desk too.\nWould:      commented: " in out, out


def mailtrack(repo: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--config", str(config)] if config else []
    return subprocess.run([sys.executable, "-m", "mailtrack.app.mailtrack", "--repo", str(repo), *extra, *args],
                          capture_output=True, text=True, check=False)


def test_requeue_takes_a_unique_prefix_of_a_spool_id(repo: Path) -> None:
    """`requeue` by a unique prefix of a failed mail's ID; an ambiguous prefix names the candidates, an
    unknown one says there is none; neither moves anything."""
    for n in (1, 2):
        assert 0 == deliver(repo, f"Subject: no sender {n}\nMessage-ID: <nofrom{n}@x>\n\nbody\n".encode()).returncode
    status = mailtrack(repo, "status").stdout
    ids = sorted(ln.split()[0] for ln in status.splitlines() if "the mail has no sender address" in ln)
    assert 2 == len(ids), status
    common = next(i for i, (x, y) in enumerate(zip(ids[0], ids[1], strict=True)) if x != y)  # the shared prefix
    ambiguous = mailtrack(repo, "requeue", ids[0][:common])
    assert (64, f"mailtrack: ambiguous spool ID '{ids[0][:common]}': 2 failed mails start with it: {ids[0]}, {ids[1]}\n") == (
        ambiguous.returncode, ambiguous.stderr)
    unknown = mailtrack(repo, "requeue", "19990101")
    assert (64, "mailtrack: no failed mail with id '19990101'\n") == (unknown.returncode, unknown.stderr)
    done = mailtrack(repo, "requeue", ids[1][:common + 1])
    assert (0, f"requeued {ids[1]}\n") == (done.returncode, done.stdout)
    assert [ids[0]] == [ln.split()[0] for ln in mailtrack(repo, "status").stdout.splitlines() if "no sender address" in ln]

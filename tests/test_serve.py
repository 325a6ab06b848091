"""`mailtrack serve` end to end: real SMTP clients, the real git, SIGTERM under load, its log."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import threading
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest

from helpers.cli import mailtrack, mailtrack_command, run_cli
from helpers.dovecot import PASSWORD
from helpers.ports import free_port, refused, wait_for
from helpers.repos import git, make_repo, read_comments, read_issue, read_names, titles
from helpers.servers import Server
from mailtrack.config import Config, ListenConfig, load

pytestmark = pytest.mark.network  # every test here starts `mailtrack serve` (or holds a port)


def test_swaks_mail_becomes_an_issue_and_a_reply_a_comment(server: Server) -> None:
    """A mail sent with swaks shows up in `git issues list`; a reply to it shows up in `git issues show`."""
    r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(server.port), "--from", "alice@example.org",
                        "--to", "issues@tracker.localhost", "--header", "Subject: Disk full", "--header", "Message-Id: <swaks1@example.org>",
                        "--body", "The disk is full."], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    assert 0 == r.returncode, r.stdout
    listed = wait_for(lambda: run_cli(server.repo, "list").out, what="the issue in git issues list")
    assert listed.rstrip().endswith("Disk full")
    short = listed.split()[0]
    reply = EmailMessage()
    reply["From"], reply["To"], reply["Subject"] = "Bob <bob@example.org>", "issues@tracker.localhost", "Re: Disk full"
    reply["Message-ID"], reply["In-Reply-To"] = "<reply1@example.org>", "<swaks1@example.org>"
    reply.set_content("Deleted the logs, try again.\n\nOn Mon, Alice wrote:\n> The disk is full.\n")
    with smtplib.SMTP("127.0.0.1", server.port) as smtp:
        smtp.send_message(reply)
    shown = wait_for(lambda: "Deleted the logs" in run_cli(server.repo, "show", short).out and run_cli(server.repo, "show", short).out,
                     what="the comment in git issues show")
    assert "    Deleted the logs, try again." in shown and "> The disk is full." not in shown
    assert 0 == server.stop()
    git(server.repo, "fsck", "--strict", "--no-dangling")


@pytest.mark.slow  # ~10 s: the worker looks at the branch every daemon.IDLE_SECONDS
def test_cli_change_in_the_gateway_repo_is_notified_once(server: Server) -> None:
    """A change made with the CLI in the gateway's repository is noticed and queued for notification once."""
    outbox = server.repo / ".git" / "mailtrack" / "spool" / "outbox" / "new"
    assert 0 == run_cli(server.repo, "new", "Filed offline", "-m", "x", "--cc", "carol@example.org").code
    wait_for(lambda: len(list(outbox.iterdir())) == 1, timeout=30, what="one notification in the outbox")
    assert 0 == server.stop()
    server.start()
    assert 0 == server.stop()
    assert 1 == len(list(outbox.iterdir()))


def test_sigterm_under_load_loses_nothing(tmp_path: Path) -> None:
    """A bounded burst from several clients (one of them sending no Message-ID), SIGTERM in the
    middle: after serve is started again, every mail that got 250 is on the branch, once."""
    repo = make_repo(tmp_path / "gw")
    server = Server(repo, free_port())
    server.start()
    accepted: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(15):
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = f"c{n}@example.org", "issues@tracker.localhost", f"Load {n}-{i}"
            if n != 2:  # client 2 sends none: the listener gives its mail a stable one
                msg["Message-ID"] = f"<load{n}.{i}@example.org>"
            msg.set_content("load\n")
            try:
                with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
                    smtp.send_message(msg)
            except (OSError, smtplib.SMTPException):
                return  # the server stopped accepting
            with lock:
                accepted.append(f"Load {n}-{i}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(accepted) >= 10, timeout=30, what="ten accepted mails")
    assert 0 == server.stop()
    for t in threads:
        t.join(timeout=30)
    again = Server(repo, free_port())
    again.start()
    try:
        wait_for(lambda: set(accepted) <= {read_issue(repo, n).title for n in read_names(repo)}, timeout=60,
                 what="every accepted mail on the branch after the restart")
    finally:
        assert 0 == again.stop()
    titles = [read_issue(repo, n).title for n in read_names(repo)]
    assert sorted(accepted) == sorted(t for t in titles if t in accepted)
    assert len(titles) == len(set(titles))
    assert [] == [c for n in read_names(repo) for c in read_comments(repo, n)]
    git(repo, "fsck", "--strict", "--no-dangling")


def test_serve_polls_imap_into_the_branch_and_files_failures(tmp_path: Path, dovecot, imap_user: str) -> None:  # type: ignore[no-untyped-def]
    """serve polls a real Dovecot: a mail becomes an issue and goes to Archive; a held one goes to Failed."""
    repo = make_repo(tmp_path / "gw")
    imap = (f'[access]\nunknown_senders = "hold"\nopen = ["anyone"]\nmaintainers = ["boss@example.org"]\n'
            f'[[imap]]\nhost = "127.0.0.1"\nport = {dovecot.imap_port}\nsecurity = "plain"\nusername = "{imap_user}"\n'
            f'password = "{PASSWORD}"\nidle_timeout = 0.5\npoll_interval = 1.0\n')
    server = Server(repo, free_port(), extra=imap)
    for i, sender in enumerate(["boss@example.org", "stranger@example.org"]):
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = sender, "issues@tracker.localhost", f"Polled {i}", f"<polled{i}@x>"
        msg.set_content("from IMAP\n")
        dovecot.append(imap_user, msg.as_bytes())
    server.start()
    assert f"; polling IMAP {imap_user}@127.0.0.1:{dovecot.imap_port}/INBOX; no relay" in server.first_line
    try:
        wait_for(lambda: dovecot.subjects(imap_user, "Failed") == ["Polled 1"], timeout=30, what="the held mail in Failed")
        assert (["Polled 0"], []) == (dovecot.subjects(imap_user, "Archive"), dovecot.subjects(imap_user))
        assert ["Polled 0"] == [read_issue(repo, n).title for n in read_names(repo)]
    finally:
        assert 0 == server.stop()


def send(port: int, subject: str, mid: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = "alice@example.org", "issues@tracker.localhost", subject, mid
    msg.set_content("text\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(msg)


FAIL_FIRST_DONE = """
from mailtrack.queue.spool import Queue
real_done, calls = Queue.done, []
def done(self, claim):
    calls.append(claim.id)
    if len(calls) == 1:
        raise OSError(28, "No space left on device")
    return real_done(self, claim)
Queue.done = done
"""


@pytest.mark.slow  # ~1.5 s: the worker backs off
def test_worker_survives_an_oserror_from_the_spool(tmp_path: Path) -> None:
    """The incoming queue's done() fails once with ENOSPC: the worker logs, backs off and processes the next mail."""
    repo = make_repo(tmp_path / "gw")
    server = Server(repo, free_port(), inject=FAIL_FIRST_DONE)
    server.start()
    assert server.proc is not None
    send(server.port, "First", "<first@example.org>")
    wait_for(lambda: titles(repo) == ["First"], timeout=30, what="the first mail on the branch")
    send(server.port, "Second", "<second@example.org>")
    wait_for(lambda: titles(repo) == ["First", "Second"], timeout=30, what="the second mail, after the failure")
    assert None is server.proc.poll()
    assert 0 == server.stop()
    assert any("No space left on device" in line for line in server.log), server.log  # the fault did happen
    r = mailtrack("process", repo=repo)
    assert (0, ["First", "Second"]) == (r.returncode, titles(repo))  # the first, recovered, is not filed twice


BLOCK_IN_HANDLE = """
import os, time
from mailtrack.worker.pipeline import Gateway
real_handle = Gateway.handle
def handle(self, raw, **kw):
    open(os.environ["MT_BUSY"], "w").close()
    while not os.path.exists(os.environ["MT_GO"]):
        time.sleep(0.02)
    return real_handle(self, raw, **kw)
Gateway.handle = handle
"""


def test_sigterm_stops_accepting_at_once_and_lets_data_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM while the worker is busy: new connections are refused at once, a new MAIL in an open
    session gets 421, a session already in DATA gets its 250; then serve finishes the mail and exits 0."""
    busy, go = tmp_path / "busy", tmp_path / "go"
    monkeypatch.setenv("MT_BUSY", str(busy))
    monkeypatch.setenv("MT_GO", str(go))
    repo = make_repo(tmp_path / "gw")
    server = Server(repo, free_port(), inject=BLOCK_IN_HANDLE)
    server.start()
    assert server.proc is not None
    send(server.port, "At hand", "<athand@example.org>")
    wait_for(busy.exists, timeout=30, what="the worker busy with the first mail")
    in_data, idle = smtplib.SMTP("127.0.0.1", server.port, timeout=10), smtplib.SMTP("127.0.0.1", server.port, timeout=10)
    try:
        in_data.ehlo()
        in_data.mail("alice@example.org")
        in_data.rcpt("issues@tracker.localhost")
        assert 354 == in_data.docmd("DATA")[0]
        idle.ehlo()
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(server.port), timeout=5, what="the listening socket closed")
        assert None is server.proc.poll()  # still busy with the mail at hand
        assert 421 == idle.docmd("MAIL FROM:<bob@example.org>")[0]
        in_data.send(b"From: carol@example.org\r\nSubject: In DATA\r\nMessage-ID: <indata@example.org>\r\n\r\nx\r\n.\r\n")
        assert 250 == in_data.getreply()[0]
    finally:
        in_data.close()
        idle.close()
    go.touch()
    code = server.finish()
    assert (0, ["At hand"]) == (code, titles(repo))
    r = mailtrack("process", repo=repo)
    assert (0, ["At hand", "In DATA"]) == (r.returncode, titles(repo))


@pytest.mark.slow  # ~5 s (pytest --durations)
def test_a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    """serve on a port another process listens on exits 71 (EX_OSERR) with one line, no traceback,
    that says how to choose another port."""
    repo = make_repo(tmp_path / "gw")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (repo / "mailtrack.toml").write_text(f"[[listen]]\nport = {port}\n")
        r = subprocess.run(mailtrack_command("--repo", str(repo), "--config", str(repo / "mailtrack.toml"), "serve"),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, timeout=60)
    expected = (71, [f"mailtrack: cannot listen on smtp 127.0.0.1:{port}: Address already in use;"
                     " to listen on another port, set port in a [[listen]] table of a --config file"])
    assert expected == (r.returncode, r.stderr.splitlines())


def test_serve_on_the_embedded_default_but_the_port_prints_one_line(tmp_path: Path) -> None:
    """The README's first command: `mailtrack serve` in a repository, with the embedded default but for
    the port (8025 may be taken by a gateway the user runs): SMTP on 127.0.0.1 for issues@tracker.localhost,
    one line on stderr, and a mail to it becomes an issue (and one log line). That the default itself
    is 127.0.0.1:8025 is test_docs.py's test_the_embedded_default_listens_on_127_0_0_1_8025."""
    port = free_port()
    config = tmp_path / "port.toml"
    config.write_text(f"[[listen]]\nport = {port}\n")
    assert replace(Config(), listen=[ListenConfig(port=port)]) == load(config)  # the embedded default, but the port
    repo = make_repo(tmp_path / "gw")
    env = {k: v for k, v in os.environ.items() if k != "MAILTRACK_CONFIG"}
    proc = subprocess.Popen(mailtrack_command("--config", str(config), "serve"), cwd=repo, env=env,
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    try:
        line = proc.stderr.readline()
        assert f"listening on smtp 127.0.0.1:{port} for issues@tracker.localhost" in line, line
        send(port, "Default", "<default@example.org>")
        wait_for(lambda: titles(repo) == ["Default"], timeout=30, what="the mail on the branch")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        rest = proc.stderr.read()
        proc.stderr.close()
    short = read_names(repo)[0][:7]
    expected = [f"INFO mailtrack.worker.pipeline: <default@example.org>: created {short} (no issue named by address, thread or subject)"]
    assert (0, expected) == (code, [ln.split(" ", 2)[2] for ln in rest.splitlines()])


def without_time(lines: list[str]) -> list[str]:
    """Log lines without their date and time (the first two words)."""
    return [ln.split(" ", 2)[2] for ln in lines if ln.count(" ") >= 2]


def test_serve_logs_one_info_line_per_mail_and_a_hold_as_a_warning(tmp_path: Path) -> None:
    """At its default level serve logs one INFO line per mail (Message-ID, what became of it, the
    issue's short name); a mail held by policy is a WARNING, not an ERROR; nothing else is logged."""
    repo = make_repo(tmp_path / "gw")
    server = Server(repo, free_port(), extra='[access]\nunknown_senders = "hold"\nmaintainers = ["alice@example.org"]\n')
    server.start()
    try:
        send(server.port, "Logged", "<logged@example.org>")
        wait_for(lambda: titles(repo) == ["Logged"], timeout=30, what="the mail on the branch")
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = "stranger@example.net", "issues@tracker.localhost", "Hi", "<held@x>"
        msg.set_content("who am I\n")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
            smtp.send_message(msg)
        wait_for(lambda: len(server.log) >= 3, timeout=30, what="the log lines of the held mail")
    finally:
        assert 0 == server.stop()
    short = read_names(repo)[0][:7]
    spool_id = server.log[-1].split()[4]
    expected = [
        f"INFO mailtrack.worker.pipeline: <logged@example.org>: created {short} (no issue named by address, thread or subject)",
        "INFO mailtrack.worker.pipeline: <held@x>: held (stranger@example.net is not known to proj)",
        f"WARNING mailtrack.queue.spool: {spool_id} (Message-ID <held@x>) moved to failed: stranger@example.net is not known to proj",
    ]
    assert expected == without_time(server.log)

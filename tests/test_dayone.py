"""Day one at a site, as a new user follows the README: the quick-start address reaches the gateway
with `git send-email`, the suite runs on a terminal, `mailtrack outbox` in pipes and cron, dropping
a refused series with `git issues reset`, log lines that say what happened, the package metadata."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tomllib
from email.message import EmailMessage
from pathlib import Path

import pytest

from helpers.cli import deliver, mailtrack, mailtrack_command, run_cli
from helpers.mail import make_mail, outbox, spool_path
from helpers.ports import free_port, wait_for
from helpers.repos import git, issues_repo, make_gateway, new_issue, read_names, tip, tree
from helpers.servers import Server, clone, git_send_email
from helpers.sink import Sink
from mailtrack.config import GatewayConfig
from mailtrack.queue.spool import Spool

ROOT = Path(__file__).parent.parent
DEFAULT = GatewayConfig().address  # the embedded default, as the quick start serves it


# --- the default address and git send-email -------------------------------------------------------


def test_git_send_email_takes_the_default_address_and_refused_the_old_one(tmp_path: Path) -> None:
    """git send-email's own address check (Email::Valid or its regex: a dot in the domain) takes the
    default address and the control one; `issues@localhost`, the old default, it refuses."""
    patch = tmp_path / "0001-x.patch"
    patch.write_text("From: Carol <carol@example.org>\nSubject: [PATCH] x\nDate: Fri, 4 Dec 2026 00:00:00 +0000\n\nx\n---\n")
    answers = {}
    for to in (DEFAULT, GatewayConfig().control_address, "issues@localhost"):
        r = git_send_email("--dry-run", "--no-validate", "--smtp-server=127.0.0.1", "--from=carol@example.org", f"--to={to}",
                           "--suppress-cc=all", str(patch))
        answers[to] = "refused" if "unable to extract a valid address" in r.stderr else r.returncode
    assert {DEFAULT: 0, GatewayConfig().control_address: 0, "issues@localhost": "refused"} == answers


@pytest.mark.network  # mailtrack serve
def test_git_send_email_to_the_quick_start_gateway_lands(tmp_path: Path) -> None:
    """The README's patch workflow against the quick-start gateway (the embedded default address):
    `git issues push --mail -o DIR`, then the real `git send-email --to <default>`; the issue lands."""
    repo = issues_repo(tmp_path / "gw")
    server = Server(repo, free_port())  # its configuration names no address: the embedded default
    assert DEFAULT == server.address
    server.start()
    try:
        c = clone(repo, tmp_path / "clone")
        name = new_issue(c, "Sent to the default address")
        r = run_cli(c, "push", "--mail", "-o", str(tmp_path / "out"))
        [patch] = [Path(p) for p in r.out.split()]
        sent = git_send_email("--smtp-server=127.0.0.1", f"--smtp-server-port={server.port}", "--smtp-encryption=none",
                              "--smtp-domain=localhost", "--from=Carol Clone <carol@example.org>", f"--to={DEFAULT}",
                              "--suppress-cc=all", "--quiet", str(patch), cwd=c)
        assert (0, "") == (sent.returncode, sent.stderr)
        wait_for(lambda: tree(repo) == tree(c), timeout=30, what="the patch applied")
        assert "Sent to the default address" in run_cli(repo, "show", name[:7]).out
    finally:
        assert 0 == server.stop()
    assert f"listening on smtp 127.0.0.1:{server.port} for {DEFAULT}" in server.first_line


# --- the suite on a terminal --------------------------------------------------------------------


@pytest.mark.slow  # a pytest run of its own, on a pseudo-terminal
def test_the_send_email_tests_pass_on_a_terminal(tmp_path: Path) -> None:
    """The tests that run git send-email pass with a terminal as stdin, stdout and controlling
    terminal (as `bash .ci/run` typed at a shell): nothing prompts. git send-email writes its
    questions to the terminal, where `script` catches them (and answers EOF: nothing waits forever)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_SEND_EMAIL", "GIT_TERMINAL"))}  # the suite's own guards only
    inner = (f"{sys.executable} -m pytest -q -p no:cacheprovider -k '(send_email or default_address) and not on_a_terminal' "
             "tests/test_patches.py tests/test_dayone.py")
    # `script` (util-linux) runs the command on a new pseudo-terminal, which becomes its controlling terminal
    r = subprocess.run(["script", "-qec", inner, "/dev/null"], cwd=ROOT, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240, check=False)
    prompts = [q for q in ("To whom should the emails be sent", "In-Reply-To for the first email", "Send this email?")
               if q in r.stdout]
    assert (0, True, []) == (r.returncode, " passed" in r.stdout, prompts), r.stdout[-2000:]


# --- .ci/run and the machine's services ---------------------------------------------------------------

FAKES = {  # stand-ins for the system's tools, keeping "enabled at boot" as files in $STATE
    "dpkg-query": "exit 1",  # nothing is installed: .ci/run installs every package
    "apt-get": '[ "$1" != install ] || touch "$STATE/dovecot"',  # like dovecot-core's postinst: enabled at boot
    "systemctl": 'case "$1" in is-enabled) [ -e "$STATE/$2" ] && echo enabled || echo disabled;;\n'
                 '  disable) echo "disable $3" >> "$STATE/log"; rm -f "$STATE/$3";; esac',
    "sudo": 'exec "$@"',
    "python3": "exit 3",  # stops .ci/run where the venv would be made
}


@pytest.mark.parametrize("before", [False, True])
def test_ci_run_leaves_dovecot_at_boot_as_it_found_it(tmp_path: Path, before: bool) -> None:
    """`.ci/run` installing Dovecot disables at boot what the package enabled, and leaves alone a
    Dovecot that was enabled before (systemd's `systemctl`, faked here as the system's tools are)."""
    state, bin_dir = tmp_path / "state", tmp_path / "bin"
    state.mkdir()
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    if before:
        (state / "dovecot").touch()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STATE": str(state), "HOME": str(tmp_path)}
    r = subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60, check=False)
    log = (state / "log").read_text() if (state / "log").exists() else ""
    assert (3, before, "" if before else "disable dovecot\n") == (r.returncode, (state / "dovecot").exists(), log), r.stderr
    assert ("disabled dovecot at boot" in r.stdout) != before


# --- mailtrack outbox in pipes and cron -------------------------------------------------------------


def queued(repo: Path, n: int, to: tuple[str, ...] = ("ann@example.org",)) -> list[str]:
    """`n` outgoing mails in the outbox of the gateway on `repo`, as the notifier queues them; their ids."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = f"proj <{DEFAULT}>", ", ".join(to), "A notification"
    msg.set_content("Something changed.\n")
    spool = Spool(spool_path(repo))
    ids = []
    for i in range(n):
        del msg["Message-ID"]
        msg["Message-ID"] = f"<note{i}@tracker.localhost>"
        ids.append(spool.queue_out(bytes(msg), sender=DEFAULT, recipients=list(to)))
    return ids


@pytest.mark.slow  # a shell pipeline over 400 queued mails
def test_outbox_list_into_head_is_quiet(repo: Path) -> None:
    """`mailtrack outbox list | head -1` (more than a pipe holds) exits 0 with nothing on stderr,
    as git does when its reader goes away: no BrokenPipeError traceback."""
    queued(repo, 400)
    command = " ".join(map(shlex.quote, mailtrack_command("--repo", str(repo), "outbox", "list")))
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | head -1"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, check=False, timeout=120)
    assert (0, "", 1) == (r.returncode, r.stderr, len(r.stdout.splitlines()))


def relay_config(tmp_path: Path, sink: Sink) -> Path:
    config = tmp_path / "relay.toml"
    config.write_text(f'[relay]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\n')
    return config


def test_outbox_send_exit_codes_tell_cron_what_happened(repo: Path, tmp_path: Path, sink: Sink) -> None:
    """`outbox send` exits 78 without a relay, 75 when the relay defers, 69 when it refuses for
    good, 0 once all went out: a cron job can tell them apart (sysexits.h)."""
    [refused] = queued(repo, 1, ("ann@example.org", "bob@example.org"))
    config = relay_config(tmp_path, sink)
    codes = {"no relay": mailtrack("outbox", "send", repo=repo, text=True)}
    sink.handler.data_reply = "451 4.3.0 Try again later"
    codes["deferred"] = mailtrack("outbox", "retry", repo=repo, config=config, text=True)
    sink.handler.data_reply, sink.handler.refuse["bob@example.org"] = "", "550 5.1.1 No such user"
    codes["refused"] = mailtrack("outbox", "retry", repo=repo, config=config, text=True)
    sink.handler.refuse.clear()
    shown = mailtrack("outbox", "show", refused, repo=repo)  # from outbox-failed now
    assert (0, (spool_path(repo) / "outbox-failed" / refused).read_bytes()) == (shown.returncode, shown.stdout)
    queued(repo, 1)
    codes["sent"] = mailtrack("outbox", "send", repo=repo, config=config, text=True)
    codes["nothing due"] = mailtrack("outbox", "send", repo=repo, config=config, text=True)
    assert {
        "no relay": (78, ""),
        "deferred": (75, "0 delayed mail(s) made due now; sent 0, deferred 1, failed 0\n"),
        "refused": (69, "1 delayed mail(s) made due now; sent 0, deferred 0, failed 1\n"),
        "sent": (0, "sent 1, deferred 0, failed 0\n"),
        "nothing due": (0, "sent 0, deferred 0, failed 0\n"),
    } == {k: (r.returncode, r.stdout) for k, r in codes.items()}
    assert "mailtrack: no relay is configured ([relay] host): nothing sent; 1 mail(s) wait\n" == codes["no relay"].stderr
    assert [["ann@example.org"], ["ann@example.org"]] == [r.recipients for r in sink.received]


def test_outbox_help_documents_the_exit_codes() -> None:
    """`mailtrack outbox --help` names every exit status of send and retry."""
    text = mailtrack("outbox", "--help", text=True).stdout
    assert [True] * 5 == [f" {code} " in " ".join(text.split()) for code in (0, 75, 69, 78, 64)]


def test_outbox_show_prints_the_mail_text(repo: Path) -> None:
    """`outbox show ID` (or a unique prefix) prints the waiting mail's text byte for byte, failed ones
    too; an unknown, ambiguous or missing ID is a usage error (64) naming it."""
    first, second = queued(repo, 2)
    kept = (spool_path(repo) / "outbox" / "new" / first).read_bytes()
    shown = mailtrack("outbox", "show", first[:-3], repo=repo)
    unknown = mailtrack("outbox", "show", "nosuchid", repo=repo, text=True)
    common = next(i for i in range(len(first)) if first[i] != second[i])
    ambiguous = mailtrack("outbox", "show", first[:common], repo=repo, text=True)
    missing = mailtrack("outbox", "show", repo=repo, text=True)
    assert (0, kept, b"") == (shown.returncode, shown.stdout, shown.stderr)
    assert b"Message-ID: <note0@tracker.localhost>" in shown.stdout
    assert (64, "mailtrack: no mail in the outbox with id 'nosuchid'\n") == (unknown.returncode, unknown.stderr)
    assert (64, True) == (ambiguous.returncode, ambiguous.stderr.startswith(f"mailtrack: ambiguous spool ID {first[:common]!r}: 2 "))
    assert (64, "mailtrack: outbox show takes one ID\n") == (missing.returncode, missing.stderr)


# --- dropping a refused series ------------------------------------------------------------------------


def test_refused_series_reply_names_reset_and_reset_drops_the_commits(tmp_path: Path) -> None:
    """The refusal report tells the sender `git issues reset`; run in the clone, it moves the issues
    branch back to the gateway's (as of the last pull), keeps the old tip as a backup ref and in
    the reflog, and `push --mail` has nothing left to send; `reset --to BACKUP` brings it back."""
    repo = issues_repo(tmp_path / "gw")
    gw = make_gateway(repo)
    try:
        a = new_issue(repo, "Jane's issue")
        c = clone(repo, tmp_path / "clone")
        assert 0 == run_cli(c, "set", a[:7], "status=closed").code  # carol may not: refused
        assert 0 == run_cli(c, "comment", a[:7], "-m", "and a comment").code
        refused = tip(c)
        assert 0 == run_cli(c, "push", "-o", str(tmp_path / "out")).code
        outs = [gw.handle(f.read_bytes()) for f in sorted((tmp_path / "out").iterdir())]
    finally:
        gw.close()
        gw.store.close()
    body = " ".join(outbox(repo)[-1].get_content().split())
    assert ("rejected", True) == (outs[-1].action, "Your clone still has the refused commits." in body)
    assert "run in the clone: git issues reset" in body
    r = run_cli(c, "reset")
    [backup] = git(c, "for-each-ref", "--format=%(refname)", "refs/backup/").split()
    assert (0, "") == (r.code, r.err)
    assert [f"issues {refused[:7]}..{tip(repo)[:7]}: dropped 2 commit(s), back at origin's at the last pull",
            f"the old tip is kept as {backup}: 'git issues reset --to {backup}' brings it back"] == r.out.splitlines()
    assert (tip(repo), refused) == (tip(c), git(c, "rev-parse", backup).strip())
    assert "git issues reset: moving to origin's at the last pull" in git(c, "reflog", "show", "issues")
    assert (0, "", "nothing to send\n") == tuple(vars(run_cli(c, "push", "--mail", "-o", str(tmp_path / "again"))).values())
    git(c, "fsck", "--strict", "--no-dangling")
    back = run_cli(c, "reset", "--to", backup)
    nothing = run_cli(c, "reset", "--to", backup)
    assert (0, refused, f"nothing to drop: issues is at {backup} ({refused[:7]})\n") == (back.code, tip(c), nothing.out)
    never_pulled = run_cli(repo, "reset")  # the gateway's own repository has no origin to go back to
    assert (1, "to REV") == (never_pulled.code, never_pulled.err.rstrip()[-6:])


# --- log lines that say what happened --------------------------------------------------------------


def logged(repo: Path, raw: bytes) -> str:
    """The line `mailtrack deliver -v` (a real run) logs for one mail: what became of it."""
    r = deliver(repo, raw, "-v")
    assert 0 == r.returncode, r.stderr
    [line] = [ln for ln in r.stderr.decode().splitlines() if ln.startswith("<")]  # printed as it is, after the log's own
    return line


def test_log_lines_say_what_happened(repo: Path, tmp_path: Path) -> None:
    """From real runs: a long refusal reason is cut at a word's end, a comment whose commands were
    refused says so, an unsubscribe that took effect is not `nothing`, and a repeated one is."""
    lines = {"new": logged(repo, make_mail(frm="alice@example.org", message_id="<new@example.org>"))}
    [name] = read_names(repo)
    short = name[:7]
    lines["refused command"] = logged(repo, make_mail(
        frm="mallory@example.net", to=f"issues+{short}@tracker.localhost", message_id="<cmd@example.org>",
        subject="Re: Printer on fire", body="Status: closed\n\nIt is not on fire any more.\n"))
    unsubscribe = {"frm": "alice@example.org", "to": GatewayConfig().control_address, "body": f"unsubscribe {short}\n"}
    lines["unsubscribe"] = logged(repo, make_mail(message_id="<unsub1@example.org>", **unsubscribe))
    lines["unsubscribe again"] = logged(repo, make_mail(message_id="<unsub2@example.org>", **unsubscribe))
    c = clone(repo, tmp_path / "clone")
    assert 0 == run_cli(c, "set", short, "status=closed", "priority=low", "severity=minor", "type=feature").code
    assert 0 == run_cli(c, "push", "-o", str(tmp_path / "out")).code
    [patch] = sorted((tmp_path / "out").iterdir())
    lines["series"] = logged(repo, patch.read_bytes())
    assert (f"<unsub1@example.org>: changed (control mail; unsubscribe {short})", "<unsub2@example.org>: nothing (control mail)") == (
        lines["unsubscribe"], lines["unsubscribe again"])
    assert (f"<cmd@example.org>: commented {short}", True) == (
        lines["refused command"].split(" (")[0], lines["refused command"].endswith("; 1 command(s) refused)"))
    reason = lines["series"].split(": rejected (patch series refused: ", 1)[1]
    words = {w.strip(";,") for w in outbox(repo)[-1].get_content().split()}  # the report gives every reason whole
    assert (True, True) == (reason.endswith(" ...)"), reason[: -len(" ...)")].split()[-1] in words), lines["series"]


# --- package metadata -----------------------------------------------------------------------------


def test_license_is_an_spdx_string_for_a_setuptools_that_reads_it() -> None:
    """project.license is an SPDX expression (the table form stops working in setuptools in 2027-02),
    and the build asks for a setuptools that reads it (77, PEP 639)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert ("MIT", ["setuptools>=77"]) == (meta["project"]["license"], meta["build-system"]["requires"])

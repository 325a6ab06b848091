"""`mailtrack deliver` hands its mail to a running `mailtrack serve` (issue 14): it only spools the mail
and wakes the worker, importing nothing of the branch, the templates or the worker; alone (no serve, or
one killed with -9) it processes the mail itself. Real serve, real deliver processes, the real spool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers.cli import deliver, mailtrack
from helpers.mail import make_mail, spool_path
from helpers.ports import free_port, wait_for
from helpers.repos import git, issues_repo, read_names, titles
from helpers.servers import Server
from mailtrack.app.mailtrack import _deliver_args, _git_dir, _where, build_parser
from mailtrack.config import load
from mailtrack.queue.handoff import Advert, wake, worker_alive
from mailtrack.queue.layout import Layout
from mailtrack.queue.spool import Spool
from mailtrack.tracker.store import Store

# What a handoff may import of mailtrack: the command line, the spool's paths, its durable write and the handoff;
# nothing else (not mailtrack.config: it reads where the spool is with tomllib alone; not queue.spool).
HANDOFF_MODULES = {"mailtrack", "mailtrack.app", "mailtrack.queue", "mailtrack.queue.layout", "mailtrack.queue.handoff",
                   "mailtrack.queue.durable"}
# The heavy parts the worker needs and a handoff must not load (dulwich, jinja2, dkimpy and dnspython, the mail
# parser's email.policy...), and the standard library's slowest to import that it does without.
HEAVY = {"dulwich", "jinja2", "dkim", "dns", "email", "aiosmtpd", "imapclient", "html2text", "defusedxml", "authres", "sqlite3",
         "logging", "dataclasses", "socket", "json", "argparse"}


def _deliver_importing(repo: Path, raw: bytes, *args: str) -> tuple[subprocess.CompletedProcess[bytes], set[str]]:
    """`mailtrack --repo REPO ARGS deliver` of `raw` under `python -X importtime`: the run and the modules it imported."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "mailtrack.app.mailtrack", "--repo", str(repo), *args, "deliver"],
                       input=raw, capture_output=True, check=False, timeout=120)
    names = {line.split("|")[-1].strip() for line in r.stderr.decode().splitlines() if line.startswith("import time:")}
    return r, names


def _incoming(repo: Path) -> dict[str, int]:
    queue = spool_path(repo) / "incoming"
    return {d: len(list((queue / d).iterdir())) for d in ("new", "cur")}


@pytest.fixture
def advert(tmp_path: Path) -> Iterator[tuple[Path, Advert]]:
    """A repository whose spool this test advertises as a live serve worker would (the lock held, the pipe read)."""
    repo = issues_repo(tmp_path / "repo")
    root = Spool(spool_path(repo)).root  # made as serve makes it
    a = Advert(Layout(root))
    assert a.hold()
    yield repo, a
    a.close()


def test_a_handoff_only_spools_the_mail_and_wakes_the_worker(advert: tuple[Path, Advert]) -> None:
    """With a worker advertised on its spool, deliver exits 0 with the mail in incoming/new, the worker's pipe
    woken, nothing committed, and nothing imported of mailtrack but the command line, the config and the spool
    (no dulwich, jinja2, dkim, email...)."""
    repo, a = advert
    raw = make_mail(message_id="<handoff1@example.org>")
    r, imported = _deliver_importing(repo, raw)
    assert (0, b"") == (r.returncode, b"".join(ln + b"\n" for ln in r.stderr.splitlines() if not ln.startswith(b"import time:")))
    assert HANDOFF_MODULES == {m for m in imported if m.split(".")[0] == "mailtrack"}
    assert set() == {m.split(".")[0] for m in imported} & HEAVY
    assert {"new": 1, "cur": 0} == _incoming(repo)
    assert [raw] == [p.read_bytes() for p in (spool_path(repo) / "incoming" / "new").iterdir()]
    assert a.wait(0)
    assert [] == read_names(repo)


def test_without_a_worker_deliver_processes_the_mail_itself(tmp_path: Path) -> None:
    """The lock file and the pipe a serve killed with -9 leaves behind mislead no one: deliver finds no live
    worker and files the issue itself (importing the worker, as before)."""
    repo = issues_repo(tmp_path / "repo")
    root = Spool(spool_path(repo)).root  # made as serve makes it
    left = Advert(Layout(root))  # as a dead serve left them: the files stay, the lock goes with the process
    assert left.hold()
    left.close()
    assert (root / "serve.lock").exists() and (root / "wake.fifo").exists()
    assert not worker_alive(Layout(root))
    assert not wake(Layout(root))  # no reader: nothing written, nothing blocks
    r, imported = _deliver_importing(repo, make_mail(message_id="<alone1@example.org>"))
    assert 0 == r.returncode, r.stderr.decode()
    assert "mailtrack.worker.runner" in imported
    assert ["Printer on fire"] == titles(repo)
    assert {"new": 0, "cur": 0} == _incoming(repo)


HOLDER = """
import sys, time
from pathlib import Path
from mailtrack.queue.handoff import Advert
from mailtrack.queue.layout import Layout
advert = Advert(Layout(Path(sys.argv[1])))
assert advert.hold()
print("held", flush=True)
time.sleep(120)
"""
# Run in deliver before mailtrack.main: the worker (the holder process, $HOLDER) is killed with -9 right after deliver
# woke it, and deliver goes on only once the kernel has dropped its lock: the race the handoff's second look is for.
DIES_AFTER_WAKE = """
import os, signal, sys, time
from mailtrack.queue import handoff
real_wake = handoff.wake
def wake(layout):
    woken = real_wake(layout)
    os.kill(int(os.environ["HOLDER"]), signal.SIGKILL)
    while handoff.worker_alive(layout):
        time.sleep(0.01)
    return woken
handoff.wake = wake
from mailtrack.app import mailtrack
sys.exit(mailtrack.main(sys.argv[1:]))
"""


def test_a_worker_that_dies_as_the_mail_is_kept_leaves_it_to_deliver(tmp_path: Path) -> None:
    """The worker is alive when deliver looks, and killed (-9) right after deliver kept the mail and woke it:
    deliver sees it gone when it looks again and files the mail itself, once."""
    repo = issues_repo(tmp_path / "repo")
    root = Spool(spool_path(repo)).root
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and "held\n" == holder.stdout.readline()
        assert worker_alive(Layout(root))
        r = subprocess.run([sys.executable, "-c", DIES_AFTER_WAKE, "--repo", str(repo), "deliver"], input=make_mail(),
                           env={**os.environ, "HOLDER": str(holder.pid)}, capture_output=True, check=False, timeout=120)
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert (0, b"") == (r.returncode, r.stderr)
    assert ["Printer on fire"] == titles(repo)
    assert {"new": 0, "cur": 0} == _incoming(repo)
    assert 1 == len(list((root / "processed").iterdir()))
    git(repo, "fsck", "--strict", "--no-dangling")


@pytest.mark.network
def test_mail_handed_to_serve_is_filed_once_by_its_worker(tmp_path: Path) -> None:
    """Five delivers at once while serve runs: each hands its mail over (no dulwich in any of them), serve's
    worker files each once (five issues, nothing left in the spool, git fsck clean)."""
    repo = issues_repo(tmp_path / "gw")
    server = Server(repo, free_port())
    server.start()
    try:
        wait_for(lambda: worker_alive(Layout(spool_path(repo))), what="serve advertising its worker")
        mails = [make_mail(subject=f"Handed over {i}", message_id=f"<served{i}@example.org>") for i in range(5)]
        with ThreadPoolExecutor(5) as pool:
            runs = list(pool.map(lambda raw: _deliver_importing(repo, raw, "--config", str(server.config)), mails))
        assert [0] * 5 == [r.returncode for r, _ in runs]
        assert [set()] * 5 == [{m.split(".")[0] for m in imported} & HEAVY for _, imported in runs]
        wait_for(lambda: len(read_names(repo)) == 5 and _incoming(repo) == {"new": 0, "cur": 0}, what="five issues filed by serve")
        assert 0 == server.stop()
    finally:
        if server.proc and server.proc.poll() is None:
            server.stop()
    assert [f"Handed over {i}" for i in range(5)] == titles(repo)
    assert 5 == len(list((spool_path(repo) / "processed").iterdir()))
    assert [] == list((spool_path(repo) / "failed").iterdir())
    git(repo, "fsck", "--strict", "--no-dangling")


@pytest.mark.network
def test_after_serve_is_killed_deliver_files_the_mail_itself_and_serve_starts_again(tmp_path: Path) -> None:
    """kill -9 of serve leaves its lock file and pipe: the next deliver sees no worker and files the mail itself;
    a new serve starts on the same spool, advertises again, and takes the next handoff."""
    repo = issues_repo(tmp_path / "gw")
    server = Server(repo, free_port())
    server.start()
    layout = Layout(spool_path(repo))
    wait_for(lambda: worker_alive(layout), what="serve advertising its worker")
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)
    assert -signal.SIGKILL == server.finish()
    assert not worker_alive(layout)
    r = deliver(repo, make_mail(subject="After the kill", message_id="<killed1@example.org>"), "--config", str(server.config))
    assert 0 == r.returncode, r.stderr.decode()
    assert ["After the kill"] == titles(repo)  # filed by deliver, before any serve runs again
    server.start()
    try:
        wait_for(lambda: worker_alive(layout), what="the new serve advertising its worker")
        r, imported = _deliver_importing(repo, make_mail(subject="To the new serve", message_id="<killed2@example.org>"),
                                         "--config", str(server.config))
        assert (0, set()) == (r.returncode, {m.split(".")[0] for m in imported} & HEAVY)
        wait_for(lambda: len(read_names(repo)) == 2, what="the handed-over mail filed")
        assert 0 == server.stop()
    finally:
        if server.proc and server.proc.poll() is None:
            server.stop()
    assert not worker_alive(layout)  # a stopped serve advertises nothing
    assert ["After the kill", "To the new serve"] == titles(repo)
    git(repo, "fsck", "--strict", "--no-dangling")


@pytest.mark.network
def test_a_second_serve_on_the_spool_takes_the_handoffs_over_when_the_first_stops(tmp_path: Path) -> None:
    """Two serves on one spool: one advertises; when it stops, the other takes serve.lock over, and a deliver
    after that hands its mail to it (filed once, by the serve still running)."""
    repo = issues_repo(tmp_path / "gw")
    layout = Layout(spool_path(repo))
    first = Server(repo, free_port())
    first.start()
    try:
        wait_for(lambda: worker_alive(layout), what="the first serve advertising its worker")
        second = Server(repo, free_port())  # its own port, written to the same config file: the first has read it
        second.start()
        try:
            assert 0 == first.stop()
            wait_for(lambda: worker_alive(layout), what="the second serve taking the handoffs over")
            r, imported = _deliver_importing(repo, make_mail(message_id="<second1@example.org>"), "--config", str(second.config))
            assert (0, set()) == (r.returncode, {m.split(".")[0] for m in imported} & HEAVY)
            wait_for(lambda: read_names(repo) and _incoming(repo) == {"new": 0, "cur": 0}, what="the mail filed by the second serve")
            assert 0 == second.stop()
        finally:
            if second.proc and second.proc.poll() is None:
                second.stop()
    finally:
        if first.proc and first.proc.poll() is None:
            first.stop()
    assert ["Printer on fire"] == titles(repo)
    git(repo, "fsck", "--strict", "--no-dangling")


def test_deliver_finds_the_repository_dulwich_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control directory deliver's handoff finds without dulwich is the one Store.open finds: a path, a
    bare repository, $GIT_DIR, upwards from a subdirectory, a linked worktree (a `.git` file); none for no repository."""
    main = issues_repo(tmp_path / "main")
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(main, "worktree", "add", "-q", str(tmp_path / "linked"))
    (main / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "plain").mkdir()

    def dulwich(path: str | None) -> str:
        with Store.open(path) as store:
            return store.repo.controldir()

    for path in (str(main), str(bare), str(tmp_path / "linked"), os.path.relpath(main)):
        assert dulwich(path) == _git_dir(path)
    monkeypatch.chdir(main / "sub" / "deeper")
    assert dulwich(None) == _git_dir(None)
    monkeypatch.setenv("GIT_DIR", str(bare))
    assert dulwich(None) == _git_dir(None)
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.chdir(tmp_path / "plain")
    assert (None, None) == (_git_dir(str(tmp_path / "plain")), _git_dir(str(tmp_path / "missing")))
    assert 75 == mailtrack("deliver", repo=tmp_path / "plain", input=make_mail()).returncode  # dulwich says so; the MTA retries


def test_a_plain_deliver_command_line_is_read_as_the_parser_reads_it() -> None:
    """The command lines an MTA gives deliver are read without the parser into what the parser makes of them;
    anything else (help, abbreviations, other commands, a value like an option) is left to the parser."""
    for argv in (["deliver"], ["--repo", "R", "deliver"], ["deliver", "--repo", "R"], ["--config", "C", "deliver", "--config", "D", "-v"],
                 ["--config=C", "deliver", "--dry-run"], ["-v", "deliver", "--verbose", "--repo=x=y"], ["--repo", "", "deliver"]):
        assert vars(build_parser().parse_args(argv)) == vars(_deliver_args(argv) or {}), argv
    for argv in (["--dry-run", "deliver"], ["deliver", "deliver"], ["--conf", "C", "deliver"], ["deliver", "-h"], ["process"], [],
                 ["--repo", "-x", "deliver"], ["deliver", "--repo"], ["-vv", "deliver"], ["deliver", "--", "x"]):
        assert _deliver_args(argv) is None, argv


def test_where_the_spool_is_reads_as_the_configuration_does(tmp_path: Path) -> None:
    """gateway.spool and gateway.repo as deliver's handoff reads them with tomllib alone are config.load's; a file
    that does not plainly say (not TOML, not strings, missing) is left to config.load."""
    toml = tmp_path / "mailtrack.toml"
    for text in ('[gateway]\nspool = "/var/spool/x"\nrepo = "rel/repo"\n', '[gateway]\nproject = "p"\n', "", "[relay]\nhost = 'h'\n"):
        toml.write_text(text)
        g = load(str(toml)).gateway
        assert (g.spool, g.repo) == _where(str(toml)), text
    assert ("", "") == _where(None)
    for text in ("[gateway\n", "[gateway]\nspool = 1\n", "gateway = 3\n"):
        toml.write_text(text)
        assert _where(str(toml)) is None, text
    assert _where(str(tmp_path / "missing.toml")) is None

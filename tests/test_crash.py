"""kill -9 at the wrong moment, then the real next run: nothing jams, nothing is lost or doubled.

Each test starts a real `mailtrack deliver`, `process`, `import` or `git issues` process with a
pause injected at one instant (the ref lock held, an object half-written, the ref just moved...),
kills it with SIGKILL there, runs the real next command, and checks the branch with the real
`git fsck --strict` and `git log issues`.
"""

from __future__ import annotations

import email
import mailbox
import os
import signal
import smtplib
import subprocess
import sys
import time
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from helpers.cli import deliver, mailtrack
from helpers.mail import make_mail, spool_path
from helpers.ports import free_port, wait_for
from helpers.repos import git, tip, titles
from helpers.servers import Server
from mailtrack.queue.spool import MAX_ATTEMPTS
from mailtrack.tracker.store import BATCH_COMMITS, STALE_LOCK

pytestmark = pytest.mark.slow

PAUSE = """
import os, sys, time
def pause(where):
    print("PAUSED " + where, flush=True)
    time.sleep(600)
"""

# The ref lock held: dulwich writes the reflog inside its `with GitFile(refs/heads/issues)` (call N).
REF_LOCKED = PAUSE + """
import dulwich.refs
calls = [0]
real_log = dulwich.refs.DiskRefsContainer._log
def _log(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == int(os.environ.get("PAUSE_AT", "1")):
        pause("ref-locked")
    return real_log(self, *args, **kwargs)
dulwich.refs.DiskRefsContainer._log = _log
"""

# An object half-written, as dulwich's add_object leaves it: objects/xx/<sha>.lock, open, not renamed.
OBJECT_LOCKED = PAUSE + """
from dulwich.file import GitFile
from dulwich.object_store import DiskObjectStore
real_add = DiskObjectStore.add_object
def add_object(self, obj):
    if getattr(obj, "data", None) == os.environb[b"PAUSE_DATA"]:
        path = self._get_shafile_path(obj.id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = GitFile(path, "wb", mask=0o444)
        f.write(obj.as_legacy_object())
        f.flush()
        pause("object-locked")
    return real_add(self, obj)
DiskObjectStore.add_object = add_object
"""

# Around the compare-and-swap of the ref, and the publishing of the replies held with the commit.
BEFORE_MOVE = PAUSE + """
from mailtrack.tracker.store import Store
real_move = Store._move
def move(self, old, new):
    pause("before-move")
Store._move = move
"""
AFTER_MOVE = PAUSE + """
from mailtrack.tracker.store import Store
real_move = Store._move
def move(self, old, new):
    moved = real_move(self, old, new)
    pause("after-move")
Store._move = move
"""
AFTER_PUBLISH = PAUSE + """
from mailtrack.worker.replies import HeldReplies
real_publish = HeldReplies.publish
def publish(self):
    real_publish(self)
    pause("after-publish")
HeldReplies.publish = publish
"""

# In the middle of processing one mail (nothing written yet): any kill of the worker.
PROCESSING = PAUSE + """
from mailtrack.worker.pipeline import Gateway
def handle(self, raw, **kwargs):
    pause("processing")
Gateway.handle = handle
"""


def killed(command: list[str], inject: str, *, input: bytes = b"", cwd: Path | None = None,
           env: dict[str, str] | None = None) -> tuple[str, str]:
    """Run `command` (`mailtrack ...` or `git-issues ...`) with `inject` run first, wait until it
    pauses, kill it with SIGKILL there; (where it paused, its stderr). Fails if it never pauses."""
    main = ("from mailtrack.app import git_issues as m" if command[0] == "git-issues"
            else "from mailtrack.app import mailtrack as m")
    script = f"{inject}\n{main}\nsys.exit(m.main(sys.argv[1:]))\n"
    proc = subprocess.Popen([sys.executable, "-c", script, *command[1:]], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                            env={**os.environ, **(env or {})})
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(input)
    proc.stdin.close()
    line = proc.stdout.readline().decode()  # "" when it exited without pausing
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    if not line.startswith("PAUSED "):
        pytest.fail(f"{command} never paused (exit {proc.returncode}): {err}")
    return line.split()[1], err


def lock_files(repo: Path) -> list[str]:
    """The git lock files under refs/ and objects/ (dulwich's and git's), relative to .git."""
    git_dir = repo / ".git"
    return sorted(str(p.relative_to(git_dir)) for d in ("refs", "objects") for p in (git_dir / d).rglob("*.lock"))


def failed(repo: Path) -> list[str]:
    return sorted(p.name for p in (spool_path(repo) / "failed").iterdir())


def outgoing(repo: Path) -> list[EmailMessage]:
    """Every mail in the outbox, waiting or held."""
    box = spool_path(repo) / "outbox"
    return [email.message_from_bytes(p.read_bytes(), policy=policy.default)  # type: ignore[misc]
            for d in ("new", "cur", "tmp") for p in sorted((box / d).iterdir())]


def acks(repo: Path) -> list[str]:
    """The In-Reply-To of each acknowledgement in the outbox (held ones too), sorted."""
    return sorted(str(m["In-Reply-To"]) for m in outgoing(repo) if ".ack." in str(m["Message-ID"]))


def waiting_ids(repo: Path) -> list[str]:
    """The file names of the incoming mail waiting in new/ or claimed in cur/."""
    inc = spool_path(repo) / "incoming"
    return sorted(p.name for d in ("new", "cur") for p in (inc / d).iterdir())


def log_subjects(repo: Path) -> list[str]:
    return sorted(git(repo, "log", "--format=%s", "issues").splitlines())


def check_branch(repo: Path, expected_titles: list[str]) -> None:
    """Every title exactly once on the branch, no lock file left, the real git finds nothing wrong."""
    assert sorted(expected_titles) == titles(repo)
    assert [] == lock_files(repo)
    git(repo, "fsck", "--strict", "--no-dangling")
    new = [s for s in log_subjects(repo) if s.startswith("new ")]
    assert len(expected_titles) == len(new), new


def mail(n: int, **headers: str) -> bytes:
    return make_mail(subject=f"Crash {n}", body=f"Mail {n}.\n", message_id=f"<crash{n}@example.org>", **headers)


def with_attachment(n: int, data: bytes) -> bytes:
    msg = email.message_from_bytes(mail(n), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename="dump.bin")
    return msg.as_bytes()


# --- a stale lock left by a killed writer ---------------------------------------------------------


def test_a_deliver_killed_holding_the_ref_lock_stops_nothing(repo: Path) -> None:
    """A deliver killed while dulwich holds refs/heads/issues.lock: the next deliver removes it (a
    WARNING names it) and lands; `process` lands the killed one; no mail fails, none is doubled."""
    before = tip(repo)
    where, _ = killed(["mailtrack", "--repo", str(repo), "deliver"], REF_LOCKED, input=mail(1))
    assert ("ref-locked", ["refs/heads/issues.lock"], before) == (where, lock_files(repo), tip(repo))
    r = deliver(repo, mail(2))
    assert 0 == r.returncode
    assert f"removed {repo / '.git' / 'refs/heads/issues.lock'}" in r.stderr.decode()
    assert 0 == mailtrack("process", repo=repo).returncode
    check_branch(repo, ["Crash 1", "Crash 2"])
    assert ([], []) == (failed(repo), waiting_ids(repo))
    assert ["<crash1@example.org>", "<crash2@example.org>"] == acks(repo)


def test_a_deliver_killed_writing_an_object_stops_no_mail_with_the_same_bytes(repo: Path) -> None:
    """A deliver killed half-way through an attachment's blob leaves objects/xx/<sha>.lock; a mail
    with the same attachment lands at once (the lock is provably stale: removed, with a WARNING)."""
    data = b"core dump 0123456789abcdef\n" * 200
    where, _ = killed(["mailtrack", "--repo", str(repo), "deliver"], OBJECT_LOCKED, input=with_attachment(1, data),
                      env={"PAUSE_DATA": data.decode("ascii")})
    (left,) = lock_files(repo)
    assert ("object-locked", "objects/") == (where, left[:8])
    r = deliver(repo, with_attachment(2, data))
    assert 0 == r.returncode
    assert f"removed the stale lock {repo / '.git' / left}" in r.stderr.decode()
    assert 0 == mailtrack("process", repo=repo).returncode
    check_branch(repo, ["Crash 1", "Crash 2"])
    assert ([], []) == (failed(repo), waiting_ids(repo))


def test_git_issues_new_after_a_killed_writer_works_at_once(repo: Path) -> None:
    """`git issues new` killed holding the ref lock: the next `git issues new` removes it, says so on
    stderr as git does ("warning: ..."), and commits."""
    where, _ = killed(["git-issues", "new", "Killed", "-m", "x"], REF_LOCKED, cwd=repo)
    assert ("ref-locked", ["refs/heads/issues.lock"]) == (where, lock_files(repo))
    r = subprocess.run([sys.executable, "-m", "mailtrack.app.git_issues", "new", "Next", "-m", "y"], cwd=repo,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    assert 0 == r.returncode, r.stderr
    assert "warning: removed " + str(repo / ".git" / "refs/heads/issues.lock") in r.stderr
    check_branch(repo, ["Next"])


def plant_ref_lock(repo: Path, age: float = 0.0) -> Path:
    """refs/heads/issues.lock as git or dulwich leaves it (the new sha written), by no writer of ours."""
    lock = repo / ".git" / "refs" / "heads" / "issues.lock"
    lock.write_text(tip(repo) + "\n")
    if age:
        then = time.time() - age
        os.utime(lock, (then, then))
    return lock


def test_a_ref_lock_we_cannot_prove_stale_is_named_then_removed_once_old(repo: Path) -> None:
    """A ref lock no writer of ours left (git may hold one): `git issues new` names the exact file to
    remove; a mail waits for it (interrupted, not failed); past STALE_LOCK it is removed and both land."""
    lock = plant_ref_lock(repo)
    r = subprocess.run([sys.executable, "-m", "mailtrack.app.git_issues", "new", "Blocked", "-m", "y"], cwd=repo,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    assert (1, f"error: could not update issues: {lock} exists; if no git process is updating the branch,"
               " remove that file\n") == (r.returncode, r.stderr)
    assert 0 == deliver(repo, mail(1)).returncode
    (name,) = waiting_ids(repo)
    assert ([], name.endswith(":1,0,1"), []) == (failed(repo), True, titles(repo))
    os.utime(lock, (time.time() - STALE_LOCK - 1,) * 2)  # time passes: the lock is older than the bound
    (waiting,) = (spool_path(repo) / "incoming" / "new").iterdir()
    os.utime(waiting, (time.time() - 1,) * 2)  # ... and the mail's delay is over
    r2 = mailtrack("process", repo=repo, text=True)
    assert 0 == r2.returncode
    assert f"removed the stale lock {lock}" in r2.stderr
    check_branch(repo, ["Crash 1"])
    assert [] == failed(repo)


# --- kills that are not the mail's fault ----------------------------------------------------------


def test_unrelated_kills_never_put_a_good_mail_in_failed(repo: Path) -> None:
    """A mail whose worker is killed MAX_ATTEMPTS + 2 times while processing it (deliver, then
    `process` again and again) is still taken by the next run: kills are not the mail's failures."""
    killed(["mailtrack", "--repo", str(repo), "deliver"], PROCESSING, input=mail(1))
    for _ in range(MAX_ATTEMPTS + 1):
        assert "processing" == killed(["mailtrack", "--repo", str(repo), "process"], PROCESSING)[0]
    assert [] == failed(repo)
    assert 0 == mailtrack("process", repo=repo).returncode
    check_branch(repo, ["Crash 1"])
    assert ([], [], ["<crash1@example.org>"]) == (failed(repo), waiting_ids(repo), acks(repo))


# --- acknowledgements across a crash --------------------------------------------------------------


@pytest.mark.parametrize("inject", [BEFORE_MOVE, AFTER_MOVE, AFTER_PUBLISH], ids=["before-move", "after-move", "after-publish"])
def test_the_ack_is_sent_exactly_once_whenever_the_worker_is_killed(repo: Path, inject: str) -> None:
    """Killed just before the ref moves, just after (the commit landed, the ack not yet queued), or
    just after the ack is queued: after the next run the issue is on the branch once and its
    acknowledgement is in the outbox exactly once."""
    killed(["mailtrack", "--repo", str(repo), "deliver"], inject, input=mail(1))
    assert 0 == mailtrack("process", repo=repo).returncode
    check_branch(repo, ["Crash 1"])
    assert ([], [], ["<crash1@example.org>"]) == (failed(repo), waiting_ids(repo), acks(repo))
    assert [] == list((spool_path(repo) / "outbox" / "tmp").iterdir())


def test_a_deliver_running_beside_the_killed_one_queues_its_ack(repo: Path) -> None:
    """The ack held by a deliver killed after its commit landed is queued by the next process that
    writes (here another deliver), not only at a `process` run."""
    killed(["mailtrack", "--repo", str(repo), "deliver"], AFTER_MOVE, input=mail(1))
    assert ["Crash 1"] == titles(repo)
    outbox = spool_path(repo) / "outbox"
    assert (1, []) == (len(list((outbox / "tmp").iterdir())), list((outbox / "new").iterdir()))  # the ack, held
    assert 0 == deliver(repo, mail(2)).returncode
    new = [email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in (outbox / "new").iterdir()]
    assert ["<crash1@example.org>", "<crash2@example.org>"] == sorted(str(m["In-Reply-To"]) for m in new)


# --- an interrupted import ------------------------------------------------------------------------


def make_mbox(path: Path, n: int) -> Path:
    box = mailbox.mbox(str(path))
    for i in range(1, n + 1):
        box.add(mail(i, Date=f"Mon, 0{i} Jun 2025 10:00:00 +0000"))
    box.close()
    return path


def test_an_import_killed_mid_commit_is_resumed_fully(repo: Path, tmp_path: Path) -> None:
    """`mailtrack import` killed holding the ref lock as it moves the ref to its second batch (its
    pack written, the index told of it): the first batch is on the branch, the second not; running
    it again puts every mail on the branch exactly once, and none in failed."""
    n = BATCH_COMMITS + 6
    box = make_mbox(tmp_path / "old.mbox", n)
    where, _ = killed(["mailtrack", "--repo", str(repo), "import", str(box)], REF_LOCKED, env={"PAUSE_AT": "2"})
    assert ("ref-locked", ["refs/heads/issues.lock"], BATCH_COMMITS) == (where, lock_files(repo), len(titles(repo)))
    r = mailtrack("import", str(box), repo=repo, text=True)
    assert 0 == r.returncode, r.stderr
    check_branch(repo, [f"Crash {i}" for i in range(1, n + 1)])
    assert [] == failed(repo)


def test_an_import_stopped_by_a_lock_not_ours_names_it_and_resumes(repo: Path, tmp_path: Path) -> None:
    """An import that meets a ref lock it cannot prove stale stops at once (exit 75) naming the file,
    keeps nothing in failed; once the lock is gone the same command imports everything once."""
    box = make_mbox(tmp_path / "old.mbox", 3)
    lock = plant_ref_lock(repo)
    r = mailtrack("import", str(box), repo=repo, text=True)
    assert 75 == r.returncode
    assert f"mailtrack: import stopped: could not update issues: {lock} exists" in r.stderr
    assert ([], []) == (failed(repo), titles(repo))
    lock.unlink()
    assert 0 == mailtrack("import", str(box), repo=repo).returncode
    check_branch(repo, ["Crash 1", "Crash 2", "Crash 3"])
    assert [] == failed(repo)


@pytest.mark.network
def test_a_serve_worker_killed_after_its_commit_acks_once_after_the_restart(repo: Path) -> None:
    """`mailtrack serve` killed right after the ref moved for a mail it received over SMTP: the
    restarted serve queues the held acknowledgement once, and takes the mail as the duplicate it is."""
    before = tip(repo)
    server = Server(repo, free_port(), inject=AFTER_MOVE)
    server.start()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
        smtp.sendmail("alice@example.org", ["issues@tracker.localhost"], mail(1))
    wait_for(lambda: tip(repo) != before, timeout=30, what="the commit of the mail")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.finish()
    assert ([], ["Crash 1"]) == (list((spool_path(repo) / "outbox" / "new").iterdir()), titles(repo))  # ack held
    again = Server(repo, free_port())
    again.start()
    try:
        wait_for(lambda: waiting_ids(repo) == [] and acks(repo) != [], timeout=30, what="the mail recovered and its ack")
    finally:
        assert 0 == again.stop()
    check_branch(repo, ["Crash 1"])
    assert ([], ["<crash1@example.org>"]) == (failed(repo), acks(repo))


FAIL_ON_MAIL_2 = """
import sys
from mailtrack.worker.pipeline import Gateway
real_handle = Gateway.handle
def handle(self, raw, **kwargs):
    if b"<crash2@example.org>" in raw:
        raise OSError(28, "No space left on device")
    return real_handle(self, raw, **kwargs)
Gateway.handle = handle
"""


def test_a_mail_an_earlier_import_kept_in_failed_leaves_failed_once_imported(repo: Path, tmp_path: Path) -> None:
    """An import during which one mail fails (the disk was full) keeps it in failed; running the import
    again puts it on the branch and deletes that copy: no mail is both on the branch and in failed."""
    box = make_mbox(tmp_path / "old.mbox", 3)
    script = f"{FAIL_ON_MAIL_2}\nfrom mailtrack.app import mailtrack as m\nsys.exit(m.main(sys.argv[1:]))\n"
    first = subprocess.run([sys.executable, "-c", script, "--repo", str(repo), "import", str(box)],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    assert (0, ["Crash 1", "Crash 3"]) == (first.returncode, titles(repo)), first.stderr
    assert 2 == len(failed(repo))  # the mail and its reason
    assert 0 == mailtrack("import", str(box), repo=repo).returncode
    check_branch(repo, ["Crash 1", "Crash 2", "Crash 3"])
    assert [] == failed(repo)

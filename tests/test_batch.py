"""Store.batch: commits written as one pack, fsynced once, the ref moved once; what waits for it."""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers.mail import make_mail
from helpers.repos import git, make_gateway, new_issue, read_comments, tip
from mailtrack.queue.spool import Spool
from mailtrack.tracker import store as store_module
from mailtrack.tracker.changes import edit_issue
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import BATCH_COMMITS, PACKS_KEPT, Snapshot, Store
from mailtrack.worker import runner

pytestmark = pytest.mark.offline
ME = Person("Me", "me@example.org")


@dataclass
class Marker:
    """A tracker.store.Held that records what became of it."""

    log: list[str] = field(default_factory=list)

    def publish(self) -> None:
        self.log.append("published")

    def discard(self) -> None:
        self.log.append("discarded")


def comment(name: str, text: str):  # type: ignore[no-untyped-def]
    return lambda snap: edit_issue(snap, name, ME, comment=text)[1]


def packs(repo: Path) -> list[Path]:
    return sorted((repo / ".git" / "objects" / "pack").glob("*.pack"))


def loose(repo: Path) -> list[Path]:
    return [p for d in (repo / ".git" / "objects").iterdir() if len(d.name) == 2 for p in d.iterdir()]


def test_a_batch_is_one_pack_and_one_ref_move_each_change_its_own_commit(repo: Path) -> None:
    name = new_issue(repo, "Batched")
    before, n_packs, n_loose = tip(repo), len(packs(repo)), len(loose(repo))
    held = Marker()
    with Store.open(repo, durable=True) as store, store.batch():
        for i in range(5):
            commit, _ = store.update(comment(name, f"c{i}"), ME)
            assert commit is not None
        store.when_durable(held)
        assert (before, []) == (tip(repo), held.log)  # nothing on the branch before the flush
        assert store.snapshot().commit == commit  # but the next change goes on the batch's last commit
    assert ["published"] == held.log
    assert (n_packs + 1, n_loose) == (len(packs(repo)), len(loose(repo)))
    assert [f"c{i}" for i in range(5)] == [c.text for c in read_comments(repo, name)]
    assert 5 == int(git(repo, "rev-list", "--count", f"{before}..issues"))
    git(repo, "fsck", "--strict", "--no-dangling")


def test_a_batch_flushes_every_batch_commits(repo: Path) -> None:
    name = new_issue(repo, "Long batch")
    with Store.open(repo) as store, store.batch():
        for i in range(BATCH_COMMITS + 1):
            store.update(comment(name, f"c{i}"), ME)
        assert BATCH_COMMITS == len(read_comments(repo, name))  # the first BATCH_COMMITS are on the branch
    assert BATCH_COMMITS + 1 == len(read_comments(repo, name))
    git(repo, "fsck", "--strict", "--no-dangling")


def test_leaving_a_batch_by_an_exception_writes_nothing_and_discards_what_waits(repo: Path) -> None:
    name = new_issue(repo, "Dropped")
    before, held, prepared = tip(repo), Marker(), Marker()
    with pytest.raises(RuntimeError), Store.open(repo) as store, store.batch():
        store.update(comment(name, "lost"), ME, prepare=lambda commit: prepared)
        store.when_durable(held)
        raise RuntimeError("the disk")
    assert (before, [], ["discarded"], ["discarded"]) == (tip(repo), read_comments(repo, name), held.log, prepared.log)
    with Store.open(repo) as store:  # the next writer starts clean
        store.update(comment(name, "kept"), ME)
    assert ["kept"] == [c.text for c in read_comments(repo, name)]
    git(repo, "fsck", "--strict")


def test_a_ref_moved_by_git_meanwhile_gets_the_batch_done_again_on_top(repo: Path) -> None:
    name = new_issue(repo, "Raced by git")
    held = Marker()
    with Store.open(repo) as store, store.batch():
        store.update(comment(name, "ours"), ME, prepare=lambda commit: held)
        # git itself commits on the branch (as a push into this repository would), not our flock
        blob = git(repo, "hash-object", "-w", "--stdin", input=b"theirs\n").strip()
        git(repo, "read-tree", "issues")
        git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},theirs.txt")
        tree_id = git(repo, "write-tree").strip()
        theirs = git(repo, "commit-tree", tree_id, "-p", "issues", "-m", "theirs").strip()
        git(repo, "update-ref", "refs/heads/issues", theirs)
    assert ["discarded", "published"] == held.log  # prepared again for the commit done again
    assert theirs == git(repo, "rev-parse", "issues~1").strip()
    assert ["ours"] == [c.text for c in read_comments(repo, name)]
    assert "theirs\n" == git(repo, "show", "issues:theirs.txt")
    git(repo, "fsck", "--strict")


@pytest.mark.parametrize("with_git", [True, False])
def test_small_packs_are_made_fewer(repo: Path, monkeypatch: pytest.MonkeyPatch, with_git: bool) -> None:
    """Past PACKS_KEPT packs, git's geometric repack (or, without git, our own copy) makes them fewer;
    every object stays readable, by git and by us."""
    if not with_git:
        monkeypatch.setattr(store_module.shutil, "which", lambda name: None)
    name = new_issue(repo, "Many packs")
    with Store.open(repo) as store:
        for i in range(PACKS_KEPT + 2):
            with store.batch():
                store.update(comment(name, f"c{i}"), ME)
    assert len(packs(repo)) <= PACKS_KEPT
    assert [f"c{i}" for i in range(PACKS_KEPT + 2)] == [c.text for c in read_comments(repo, name)]
    git(repo, "fsck", "--strict", "--no-dangling")


def test_the_drain_takes_the_spool_a_batch_at_a_time_each_mail_done_once_committed(repo: Path) -> None:
    gw = make_gateway(repo)
    for i in range(3):
        gw.spool.accept(make_mail(subject=f"Drained {i}", message_id=f"<drained{i}@example.org>"))
    before = len(packs(repo))
    assert 3 == runner.drain(gw)
    counts = Spool(gw.spool.root).counts()
    assert (0, 0, 3) == (counts["incoming/new"], counts["incoming/cur"], counts["processed"])
    assert before + 1 == len(packs(repo))
    assert 3 == int(git(repo, "rev-list", "--count", "issues")) - 1
    git(repo, "fsck", "--strict", "--no-dangling")
    gw.close()
    gw.store.close()


def test_a_snapshot_of_the_batch_reads_its_objects_before_they_are_on_disk(repo: Path) -> None:
    name = new_issue(repo, "Read back")
    with Store.open(repo) as store, store.batch():
        store.update(comment(name, "first"), ME)
        snap: Snapshot = store.snapshot()
        assert ["first"] == [c.text for c in snap.comments(name)]
        assert snap.short(name) == name[:7]
        assert snap.resolve(name[:8]) == name


def flock_free(store: Store) -> bool:
    """Whether another process could take the writers' flock now."""
    fd = os.open(store.lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_the_writers_flock_is_held_from_a_batchs_first_commit_to_its_flush(repo: Path) -> None:
    """So a `git issues` beside a long import waits for one batch at most, and no settle judges the
    replies a batch holds."""
    name = new_issue(repo, "Locked by batches")
    with Store.open(repo) as store, store.batch():
        assert flock_free(store)  # nothing written yet
        store.update(comment(name, "one"), ME)
        assert not flock_free(store)
        store.flush()
        assert flock_free(store)
        store.update(comment(name, "two"), ME)
        assert not flock_free(store)
        # a writer that does not batch (a patch series, a merge) flushes first, in any nesting
        with store.writing():
            snap = store.snapshot()
            commit = store.write_commit([snap.commit or b""], snap.tree, {"note.txt": b"x\n"}, "note", ME)
            assert store.move(snap.commit, commit)
        assert flock_free(store)
    assert flock_free(store)
    assert ["one", "two"] == [c.text for c in read_comments(repo, name)]
    assert "x\n" == git(repo, "show", "issues:note.txt")
    git(repo, "fsck", "--strict", "--no-dangling")


def test_a_flush_that_failed_is_tried_again_and_a_writer_meanwhile_is_not_lost(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack that could not be written (a full disk) leaves the batch's commits in memory and lets go
    of the flock; another writer commits meanwhile; the next flush does the batch again on top of it."""
    name = new_issue(repo, "Flaky disk")
    real, calls = store_module.write_pack, []

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module, "write_pack", flaky)
    with Store.open(repo) as store, store.batch():
        store.update(comment(name, "one"), ME)
        with pytest.raises(OSError):
            store.flush()
        assert flock_free(store)
        with Store.open(repo) as other:
            other.update(comment(name, "other"), ME)
        store.update(comment(name, "two"), ME)
    assert ["one", "other", "two"] == sorted(c.text for c in read_comments(repo, name))
    git(repo, "fsck", "--strict")

"""Several gateways, one tracker: the issues branch shared through an ordinary git remote.

Each gateway commits locally first (it keeps taking mail while the remote is away), then a round
(`sync_round`) pushes; a push the remote refuses because it moved (not a fast-forward) fetches,
merges field-wise (`merge.merge_commits`: duplicates of one mail dropped in the merge) and pushes
again, after a jittered backoff. There is no coordinator: the remote's compare-and-swap of its ref
(git receive-pack checks the old value under its lock) is the only one.

A remote on a path is pushed to and fetched from by the real `git receive-pack`/`upload-pack`
(dulwich's SubprocessGitClient), as over SSH: a gateway killed mid-push leaves no lock file in the
shared repository, git cleans up after its own processes. Other URLs go through dulwich's client.

What the notifier needs to tell exactly once across gateways is kept in `<git dir>/mailtrack/sync.json`
(`SyncState`): `level`, the last commit of ours the remote is known to hold (notifications wait
until a change is there, where a duplicate of it has been dropped or kept), `fetched`, the last
remote tip merged that brought others' commits (an unmarked commit in its history came from
elsewhere: not ours to tell), and the last round's time and error for `mailtrack status`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from dulwich.client import GitClient, LocalGitClient, SubprocessGitClient, get_transport_and_path
from dulwich.objects import ObjectID
from dulwich.refs import Ref

from mailtrack.tracker.merge import is_ancestor, merge_commits
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Store, StoreError

log = logging.getLogger(__name__)

TRIES = 12  # pushes refused as non-fast-forward before a round gives up (the next round tries again)
BACKOFF = (0.05, 2.0)  # seconds before the next push after a refusal: first, at most (jittered, doubled)


class Unreachable(StoreError):
    """The remote could not be read or written (network, path, permissions)."""


@dataclass
class SyncState:
    level: str | None = None  # the last commit of ours the remote holds
    fetched: str | None = None  # the last remote tip merged that brought others' commits
    last_sync: float | None = None  # when a round last ended level with the remote
    last_try: float | None = None  # when a round last ended
    last_error: str = ""  # why the last round did not end level ("" when it did)

    @staticmethod
    def path(store: Store) -> Path:
        return Path(store.repo.controldir()) / "mailtrack" / "sync.json"

    @classmethod
    def read(cls, store: Store) -> SyncState:
        try:
            data = json.loads(cls.path(store).read_text("utf-8"))
        except (FileNotFoundError, ValueError):
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__} if isinstance(data, dict) else {}
        return cls(**known)

    def write(self, store: Store) -> None:
        """Write-fsync-rename: a crash leaves the old state or the new one."""
        path = self.path(store)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


@dataclass
class Round:
    """What one round did."""

    level: bool  # the remote and we hold the same tip
    pushed: int = 0  # pushes the remote took
    refused: int = 0  # pushes refused as non-fast-forward
    merged: int = 0  # merges of the remote's tip into ours (fast-forwards included)
    tip: bytes | None = None

    def __str__(self) -> str:
        tip = (self.tip or b"(none)")[:10].decode()
        return f"{'level' if self.level else 'not level'} with the remote at {tip}: {self.pushed} push(es), {self.refused} refused, {self.merged} merge(s)"


def _client(url: str) -> tuple[GitClient, str]:
    client, path = get_transport_and_path(url)
    if isinstance(client, LocalGitClient):  # real git on a path: a kill -9 of ours leaves the remote clean
        return SubprocessGitClient(), path
    return client, path


def fetch(store: Store, url: str) -> ObjectID | None:
    """The remote's tip of our branch, its objects fetched into our repository (None: no branch there)."""
    client, path = _client(url)
    wanted: list[ObjectID | None] = [None]

    def wants(refs: Mapping[Ref, ObjectID], depth: int | None = None) -> list[ObjectID]:
        tip = refs.get(store.ref)
        wanted[0] = tip
        return [tip] if tip is not None and tip not in store.repo.object_store else []

    try:
        client.fetch(path, store.repo, determine_wants=wants)
    except Exception as e:  # network, path, permissions, a remote git that died: one line
        raise Unreachable(f"cannot fetch from {url}: {_one_line(e)}") from None
    return wanted[0]


def _push(store: Store, url: str, ours: ObjectID) -> tuple[bool, ObjectID | None]:
    """Push `ours` when it is a fast-forward of the remote's tip: (taken, the tip the remote had)."""
    client, path = _client(url)
    seen: list[ObjectID | None] = [None]
    refused = [False]

    def update_refs(refs: dict[Ref, ObjectID]) -> dict[Ref, ObjectID]:
        theirs = refs.get(store.ref)
        seen[0] = theirs
        if theirs == ours:
            return refs
        if theirs is not None and not is_ancestor(store, theirs, ours):
            refused[0] = True  # the remote moved: fetch and merge first
            return refs
        return {**refs, store.ref: ours}

    try:
        result = client.send_pack(path.encode(), update_refs,  # dulwich's own Repo method, typed a little apart
                                  generate_pack_data=store.repo.generate_pack_data)  # type: ignore[arg-type]
    except Exception as e:
        raise Unreachable(f"cannot push to {url}: {_one_line(e)}") from None
    if refused[0]:
        return False, seen[0]
    status = (result.ref_status or {}).get(store.ref) if result is not None else None
    if status is not None:  # the remote's receive-pack refused: it moved between its refs and our pack
        log.info("push to %s refused: %s", url, status)
        return False, seen[0]
    return True, seen[0]


def _merge(store: Store, theirs: ObjectID, author: Person, url: str) -> bool:
    """Merge the remote's tip into our branch (retried when a local writer moves it meanwhile)."""
    for _ in range(50):
        ours = store.tip()
        commit, how = merge_commits(store, ours, theirs, author, f"{url} into {store.branch}")
        if commit == ours:
            return False
        if store.move(ours, commit):
            log.info("sync: %s: %s..%s", how, (ours or b"(none)")[:10].decode(), commit[:10].decode())
            return True
    raise StoreError("the branch kept moving during the merge; the next round tries again")


def sync_round(store: Store, url: str, author: Person, *, tries: int = TRIES,
               sleep: Callable[[float], None] = time.sleep) -> Round:
    """Push our branch, fetching and merging on refusal, until we are level with the remote.

    Unreachable when the remote cannot be read or written; the state records the error either way."""
    state = SyncState.read(store)
    result = Round(level=False)
    delay = BACKOFF[0]
    try:
        for attempt in range(tries):
            ours = store.tip()
            if ours is None:  # a new gateway: start from the remote's branch
                theirs = fetch(store, url)
                if theirs is None:
                    raise StoreError(f"neither this repository nor {url} has the {store.branch} branch")
                result.merged += _merge(store, theirs, author, url)
                state.fetched = theirs.decode()
                continue
            taken, theirs = _push(store, url, ours)
            if taken:
                result.pushed += theirs != ours
                state.level = ours.decode()
                result.level, result.tip = True, ours
                break
            result.refused += 1
            theirs = fetch(store, url)
            if theirs is not None:
                if is_ancestor(store, ours, theirs):  # only theirs moved: we are level once we take it
                    state.level = theirs.decode()
                state.fetched = theirs.decode()
                result.merged += _merge(store, theirs, author, url)
            if attempt:  # others push too: step aside for a random while before the next try
                sleep(random.uniform(0, delay))
                delay = min(delay * 2, BACKOFF[1])
        state.last_error = "" if result.level else f"still not level after {tries} pushes (others kept pushing)"
    except StoreError as e:
        state.last_error = str(e)
        raise
    finally:
        now = time.time()
        state.last_try = now
        if result.level:
            state.last_sync = now
        with contextlib.suppress(OSError):
            state.write(store)
    return result


def ahead_behind(store: Store, state: SyncState) -> tuple[int, int]:
    """Commits of ours the remote lacks, and of the remote's (as last fetched) we lack."""
    tip = store.tip()
    level = ObjectID(state.level.encode()) if state.level else None
    fetched = ObjectID(state.fetched.encode()) if state.fetched else None
    objects = store.repo.object_store

    def count(include: ObjectID | None, exclude: list[ObjectID | None]) -> int:
        if include is None:
            return 0
        ex = [e for e in exclude if e is not None and e in objects]
        return sum(1 for _ in store.repo.get_walker(include=[include], exclude=ex or None))

    ahead = count(tip, [level, fetched])
    behind = count(fetched if fetched in objects else None, [tip]) if fetched else 0
    return ahead, behind


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]

"""`git issues pull` and `push`: the issues branch over ordinary git remotes, merged field-wise."""

from __future__ import annotations

import io
from collections.abc import Mapping

from dulwich.objects import ZERO_SHA, ObjectID
from dulwich.refs import Ref

from mailtrack.tracker.merge import is_ancestor, merge_commits
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Store, StoreError


def remote_location(store: Store, remote: str | None) -> tuple[str | None, str]:
    """(configured name or None, location) of a remote given by name, path or URL (default: origin)."""
    from dulwich.porcelain import get_remote_repo

    try:
        name, url = get_remote_repo(store.repo, remote or "origin")
    except Exception as e:  # dulwich raises bare errors for a missing origin
        raise StoreError(f"no remote '{remote or 'origin'}': {e}") from None
    return name, url


def _remote_tip(store: Store, url: str) -> ObjectID | None:
    from dulwich.client import get_transport_and_path

    client, path = get_transport_and_path(url)
    try:
        refs = client.get_refs(path.encode() if isinstance(path, str) else path)
    except Exception as e:  # network, path, permissions: a one-line reason
        raise StoreError(f"cannot read {url}: {e}") from None
    return refs.refs.get(store.ref)  # dulwich >= 1.2 (our floor): an LsRemoteResult, not a dict


def pull(store: Store, remote: str | None, author: Person) -> str:
    """Fetch the remote's issues branch and merge it into ours. Returns what happened."""
    from dulwich.porcelain import fetch

    remote_name, url = remote_location(store, remote)
    name = remote_name or url
    try:
        result = fetch(store.repo, url, outstream=io.StringIO(), errstream=io.BytesIO(), quiet=True)
    except Exception as e:
        raise StoreError(f"cannot fetch from {url}: {e}") from None
    theirs = result.refs.get(store.ref)
    if theirs is None:
        return f"{name} has no {store.branch} branch"
    if remote_name:  # like git: remember where the remote was, for `push --mail` to start from
        store.repo.refs[Ref(f"refs/remotes/{remote_name}/{store.branch}".encode())] = theirs
    for _ in range(20):
        ours = store.tip()
        commit, how = merge_commits(store, ours, theirs, author, f"{name} into {store.branch}")
        if commit == ours or store.move(ours, commit):
            return f"{how}: {store.branch} {(ours or b'0000000')[:7].decode()}..{commit[:7].decode()}"
    raise StoreError("the branch kept moving during the merge; try again")


def _push_local(store: Store, url: str, theirs: ObjectID | None, ours: ObjectID) -> bool:
    """Push to a repository on this machine: copy the objects, then compare-and-swap its ref.

    Returns False for a remote that is not a local path (dulwich's client pushes those).
    """
    from dulwich.client import LocalGitClient, get_transport_and_path
    from dulwich.repo import Repo

    client, path = get_transport_and_path(url)
    if not isinstance(client, LocalGitClient):
        return False
    def wants(refs: Mapping[Ref, ObjectID], depth: int | None = None) -> list[ObjectID]:
        return [ours]

    with Repo(path) as target:
        store.repo.fetch(target, determine_wants=wants)
        if not target.refs.set_if_equals(store.ref, theirs or ZERO_SHA, ours):
            raise StoreError(f"{url} moved while pushing; run 'git issues pull' and push again")
    return True


def push(store: Store, remote: str | None) -> str:
    """Send our issues branch to the remote; never overwrite a remote that has diverged."""
    remote_name, url = remote_location(store, remote)
    name = remote_name or url
    store.require()  # or a one-line hint: init, or pull in a fresh clone
    ours = store.tip()
    assert ours is not None
    theirs = _remote_tip(store, url)
    if theirs == ours:
        return "Everything up-to-date"
    if theirs is not None:
        if not is_ancestor(store, theirs, ours):
            raise StoreError(f"{name} has issues this clone lacks; run 'git issues pull{' ' + remote if remote else ''}' first")
    if not _push_local(store, url, theirs, ours):
        from dulwich.porcelain import push as dulwich_push

        spec = store.ref + b":" + store.ref
        try:
            dulwich_push(store.repo, url, spec, outstream=io.BytesIO(), errstream=io.BytesIO())
        except Exception as e:
            raise StoreError(f"push to {url} failed: {e}") from None
    return f"{(theirs or b'0000000')[:7].decode()}..{ours[:7].decode()}  {store.branch} -> {store.branch}"

"""Several gateways, one remote (issue 15): tracker/sync.py's rounds against real bare repositories on
disk, the duplicate of one mail dropped in the merge, `mailtrack sync` and `status`, checked with git."""

from __future__ import annotations

import contextlib
import email
import os
import platform
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from helpers.cli import mailtrack, run_cli
from helpers.mail import make_mail
from helpers.repos import git, issues_repo, make_repo, tip, tree
from mailtrack.config import Config, ConfigError, GatewayConfig, NotifyConfig, SyncConfig
from mailtrack.mail.ids import gateway_of, gateway_trailer
from mailtrack.outbound.notifier import Notifier
from mailtrack.queue.spool import Spool
from mailtrack.tracker.lookup import Index
from mailtrack.tracker.merge import survived
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Store
from mailtrack.tracker.sync import SyncState, ahead_behind, sync_round
from mailtrack.worker.pipeline import Gateway

BOT = Person("mailtrack", "issues@tracker.localhost")


OPENED: list[Gateway] = []


@pytest.fixture(autouse=True)
def _close() -> Iterator[None]:
    yield
    while OPENED:
        g = OPENED.pop()
        g.close()
        g.store.close()


def gateway(repo: Path, remote: Path, gid: str) -> Gateway:
    """A gateway on `repo` sharing `remote`, its commits marked `gid` (closed after the test)."""
    store = Store.open(repo, durable=True)
    store.trailers = (gateway_trailer(gid),)
    config = Config(gateway=GatewayConfig(project="proj"), sync=SyncConfig(remote=str(remote), gateway_id=gid))
    OPENED.append(Gateway(config, store, Spool(repo / ".git" / "mailtrack" / "spool")))
    return OPENED[-1]


def three(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A bare remote holding the issues branch and two gateway repositories cloned from it."""
    first = issues_repo(tmp_path / "first")
    remote = make_repo(tmp_path / "remote.git", bare=True)
    git(first, "push", "-q", str(remote), "issues")
    repos = []
    for name in ("a", "b"):
        r = make_repo(tmp_path / name)
        git(r, "fetch", "-q", str(remote), "issues:issues")
        repos.append(r)
    return remote, repos


def test_a_round_pushes_local_commits_and_a_refused_push_merges_first(tmp_path: Path) -> None:
    """Two gateways commit apart; each round ends level; git sees one history with both, fsck clean."""
    remote, (a, b) = three(tmp_path)
    ga, gb = gateway(a, remote, "gw-a"), gateway(b, remote, "gw-b")
    assert ga.handle(make_mail("From A", message_id="<a1@example.org>")).commit
    assert gb.handle(make_mail("From B", message_id="<b1@example.org>")).commit
    first = sync_round(ga.store, str(remote), BOT)
    assert (True, 1, 0) == (first.level, first.pushed, first.refused)
    second = sync_round(gb.store, str(remote), BOT)  # refused once, merged, pushed
    assert (True, 1, 1, 1) == (second.level, second.pushed, second.refused, second.merged)
    third = sync_round(ga.store, str(remote), BOT)  # a fast-forward, nothing to push
    assert (True, 0) == (third.level, third.pushed)
    assert tree(a) == tree(b) == tree(remote)
    assert tip(a) == tip(b) == tip(remote)
    git(remote, "fsck", "--strict")
    log = git(remote, "log", "--format=%s%n%b", "issues")
    assert "Gateway-Id: gw-a" in log and "Gateway-Id: gw-b" in log
    merge = git(remote, "log", "--merges", "--format=%B", "-1", "issues")
    assert "gw-b" == gateway_of(merge.encode())
    assert SyncState.read(ga.store).last_error == ""
    assert (0, 0) == ahead_behind(ga.store, SyncState.read(ga.store))


def test_the_same_mail_on_two_gateways_is_kept_once(tmp_path: Path) -> None:
    """One mail to both gateways: after the merge one issue carries its Message-ID, on both sides
    the same, the other dropped in the merge commit; a reply that went to the dropped issue moves
    over; the index of either side finds the one record."""
    remote, (a, b) = three(tmp_path)
    ga, gb = gateway(a, remote, "gw-a"), gateway(b, remote, "gw-b")
    mail = make_mail("Printer on fire", message_id="<dup@example.org>")
    first = ga.handle(mail)
    second = gb.handle(mail)
    assert first.commit and second.commit
    reply = make_mail("Re: Printer on fire", "Still burning.\n", message_id="<r1@example.org>", In_Reply_To="<dup@example.org>")
    assert gb.handle(reply).commit
    sync_round(ga.store, str(remote), BOT)
    sync_round(gb.store, str(remote), BOT)
    sync_round(ga.store, str(remote), BOT)
    assert tree(a) == tree(b) == tree(remote)
    git(remote, "fsck", "--strict")
    names = git(remote, "ls-tree", "-r", "--name-only", "issues").split()
    records = [p for p in names if p.endswith("issue.xml")]
    assert 1 == len(records)
    kept = records[0].rsplit("/", 1)[0]
    assert 1 == sum(1 for p in names if p.startswith(kept + "/comment_"))  # the reply, moved over
    assert "duplicate <dup@example.org>" in git(remote, "log", "--merges", "--format=%B", "issues")
    for g in (ga, gb):
        snap = g.store.snapshot()
        with contextlib.closing(Index.for_snapshot(snap)) as index:  # the gateway's own, which saw its side first
            assert kept.replace("/", "") == index.lookup(snap, "<dup@example.org>")
            assert kept.replace("/", "") == index.lookup(snap, "<r1@example.org>")


@pytest.mark.slow  # five mailtrack processes
def test_mailtrack_sync_exits_75_while_the_remote_is_away_and_0_once_level(tmp_path: Path) -> None:
    """`mailtrack sync`: 75 with the remote renamed away (the error kept for status), 0 when it is back."""
    remote, (a, _b) = three(tmp_path)
    config = tmp_path / "a.toml"
    config.write_text(f'[gateway]\nproject = "proj"\n[sync]\nremote = "{remote}"\ngateway_id = "gw-a"\n')
    away = remote.with_name("away.git")
    remote.rename(away)
    r = mailtrack("deliver", repo=a, config=config, input=make_mail("Offline", message_id="<o1@example.org>"), text=True)
    assert 0 == r.returncode, r.stderr
    r = mailtrack("sync", repo=a, config=config, text=True)
    assert 75 == r.returncode, r.stderr
    assert "cannot push to" in r.stderr
    status = mailtrack("status", repo=a, config=config, text=True).stdout
    assert "cannot push to" in status and "ahead          2" in status  # never level yet: all of its history
    away.rename(remote)
    r = mailtrack("sync", repo=a, config=config, text=True)
    assert 0 == r.returncode, r.stderr
    assert tip(a) == tip(remote)
    status = mailtrack("status", repo=a, config=config, text=True).stdout
    assert "last error     (none)" in status and "ahead          0" in status
    assert "Gateway-Id: gw-a" in git(remote, "log", "-1", "--format=%B", "issues")


def test_each_gateway_notifies_its_own_commits_and_unmarked_local_ones_once_on_the_remote(tmp_path: Path) -> None:
    """A notifies its mail and a CLI commit in its repository, B only its mail; neither before the remote holds it."""
    remote, (a, b) = three(tmp_path)
    ga, gb = gateway(a, remote, "gw-a"), gateway(b, remote, "gw-b")
    notifiers = {}
    for g, gid in ((ga, "gw-a"), (gb, "gw-b")):
        config = Config(gateway=GatewayConfig(project="proj"), notify=NotifyConfig(watchers=["watch@example.org"]),
                        sync=SyncConfig(remote=str(remote), gateway_id=gid))
        notifiers[gid] = Notifier(config, g.spool)
        notifiers[gid].begin(g.store)
    assert gb.handle(make_mail("From B", message_id="<b1@example.org>")).commit
    assert 0 == notifiers["gw-b"].notify(gb.store)  # not on the remote yet
    sync_round(gb.store, str(remote), BOT)
    assert 0 == run_cli(a, "new", "From the CLI", "-m", "typed in").code  # unmarked, in A's own repository
    assert ga.handle(make_mail("From A", message_id="<a1@example.org>")).commit
    sync_round(ga.store, str(remote), BOT)
    sync_round(gb.store, str(remote), BOT)

    def titles(gid: str, g: Gateway) -> list[str]:
        before = {p.name for p in g.spool.outbox.new.iterdir()} if g.spool.outbox.new.exists() else set()
        notifiers[gid].notify(g.store)
        new = [p for p in g.spool.outbox.new.iterdir() if p.name not in before]
        return sorted(m.split("] ", 1)[-1] for m in (email.message_from_bytes(p.read_bytes())["Subject"] for p in new)
                      if "From" in m)

    assert ["From A", "From the CLI"] == titles("gw-a", ga)
    assert ["From B"] == titles("gw-b", gb)
    assert [] == titles("gw-a", ga) == titles("gw-b", gb)  # once


def test_an_unmarked_commit_pushed_straight_to_the_remote_is_told_by_the_gateway_named_for_it(tmp_path: Path) -> None:
    """A `git issues new` pushed by hand into the shared remote (no Gateway-Id) is told once: by the
    gateway with sync.notify_unmarked, not by the other one."""
    remote, (a, b) = three(tmp_path)
    ga, gb = gateway(a, remote, "gw-a"), gateway(b, remote, "gw-b")
    notifiers = {}
    for g, gid, tells in ((ga, "gw-a", True), (gb, "gw-b", False)):
        config = Config(gateway=GatewayConfig(project="proj"), notify=NotifyConfig(watchers=["watch@example.org"]),
                        sync=SyncConfig(remote=str(remote), gateway_id=gid, notify_unmarked=tells))
        notifiers[gid] = Notifier(config, g.spool)
        notifiers[gid].begin(g.store)
    by_hand = make_repo(tmp_path / "by-hand")
    git(by_hand, "fetch", "-q", str(remote), "issues:issues")
    assert 0 == run_cli(by_hand, "new", "Pushed by hand", "-m", "straight to the remote").code
    git(by_hand, "push", "-q", str(remote), "issues")
    for g in (ga, gb):
        sync_round(g.store, str(remote), BOT)

    def subjects(gid: str, g: Gateway) -> list[str]:
        notifiers[gid].notify(g.store)
        new = g.spool.outbox.new
        return [str(email.message_from_bytes(p.read_bytes())["Subject"]) for p in new.iterdir()] if new.exists() else []

    told_a, told_b = subjects("gw-a", ga), subjects("gw-b", gb)
    assert (1, []) == (len(told_a), told_b), (told_a, told_b)
    assert "Pushed by hand" in told_a[0]
    assert [told_a, []] == [subjects("gw-a", ga), subjects("gw-b", gb)]  # once


def test_a_new_gateway_starts_from_the_remotes_branch(tmp_path: Path) -> None:
    """`mailtrack sync` in a repository without the issues branch takes the remote's: level, one root."""
    remote, _ = three(tmp_path)
    fresh = make_repo(tmp_path / "fresh")
    config = tmp_path / "fresh.toml"
    config.write_text(f'[sync]\nremote = "{remote}"\ngateway_id = "gw-new"\n')
    r = mailtrack("sync", repo=fresh, config=config, text=True)
    assert 0 == r.returncode, r.stderr
    assert tip(fresh) == tip(remote)
    assert 1 == len(git(fresh, "rev-list", "--max-parents=0", "issues").split())


def test_sync_config_is_checked() -> None:
    """gateway_id defaults to the host name and must be one word; interval must be positive."""
    assert SyncConfig().gateway_id == (platform.node() or "gateway")
    with pytest.raises(ConfigError, match="one word"):
        SyncConfig(gateway_id="two words")
    with pytest.raises(ConfigError, match="interval"):
        SyncConfig(interval=0)


def test_mailtrack_sync_without_a_remote_is_a_configuration_error(tmp_path: Path) -> None:
    """No [sync] remote: exit 78 and a one-line reason."""
    repo = issues_repo(tmp_path / "repo")
    r = mailtrack("sync", repo=repo, text=True)
    assert (78, "mailtrack: no [sync] remote is configured: this gateway shares its branch with no other\n") == (r.returncode, r.stderr)


def acks(repo: Path, message_id: str) -> list[Path]:
    """The replies queued in the outbox of `repo`'s gateway to the mail `message_id`."""
    new = Spool(repo / ".git" / "mailtrack" / "spool").outbox.new
    return [p for p in new.iterdir() if email.message_from_bytes(p.read_bytes())["In-Reply-To"] == message_id]


@pytest.mark.slow  # four mailtrack processes
def test_a_mail_on_two_gateways_is_acknowledged_once_when_the_remote_kept_its_record(tmp_path: Path) -> None:
    """`deliver` on both gateways holds the ack; `sync` on A (first on the remote) queues A's; `sync`
    on B, whose record the merge dropped, deletes B's: one ack in all, nothing left held."""
    remote, (a, b) = three(tmp_path)
    configs = {}
    for repo, gid in ((a, "gw-a"), (b, "gw-b")):
        configs[repo] = tmp_path / f"{gid}.toml"
        configs[repo].write_text(f'[gateway]\nproject = "proj"\n[sync]\nremote = "{remote}"\ngateway_id = "{gid}"\n')
    mail = make_mail("Printer on fire", message_id="<dup@example.org>")
    for repo in (a, b):
        r = mailtrack("deliver", repo=repo, config=configs[repo], input=mail)
        assert 0 == r.returncode, r.stderr
        assert [] == acks(repo, "<dup@example.org>")  # held until the remote holds its commit
    for repo in (a, b):
        r = mailtrack("sync", repo=repo, config=configs[repo], text=True)
        assert 0 == r.returncode, r.stderr
    assert 1 == len(acks(a, "<dup@example.org>"))  # the remote kept A's record: A answers
    assert [] == acks(b, "<dup@example.org>")  # B's was dropped in the merge
    assert 1 == git(remote, "ls-tree", "-r", "--name-only", "issues").count("issue.xml")  # one record kept
    for repo in (a, b):
        assert [] == Spool(repo / ".git" / "mailtrack" / "spool").outbox.held()
        assert 0 == mailtrack("sync", repo=repo, config=configs[repo]).returncode  # again: nothing more
    assert (1, 0) == (len(acks(a, "<dup@example.org>")), len(acks(b, "<dup@example.org>")))


def test_held_acks_wait_for_the_remote_and_a_settle_after_a_kill_decides_the_same(tmp_path: Path) -> None:
    """With [sync], an ack stays held past the local commit, whatever settle runs meanwhile (as after
    a kill -9, a fresh process); once level it is queued, once; a reply to the dropped issue whose
    record moved over in the merge is still B's to answer (merge.survived)."""
    remote, (a, b) = three(tmp_path)
    ga, gb = gateway(a, remote, "gw-a"), gateway(b, remote, "gw-b")
    mail = make_mail("Printer on fire", message_id="<dup@example.org>")
    first, second = ga.handle(mail), gb.handle(mail)
    reply = gb.handle(make_mail("Re: Printer on fire", "Still.\n", message_id="<r1@example.org>", In_Reply_To="<dup@example.org>"))
    assert 1 == len(ga.spool.outbox.held()) and 0 == ga.replier.settle()  # not on the remote yet: waits
    sync_round(ga.store, str(remote), BOT)
    sync_round(gb.store, str(remote), BOT)
    again = gateway(a, remote, "gw-a")  # a new process on A's spool settles at start
    assert ([], 1) == (again.spool.outbox.held(), len(acks(a, "<dup@example.org>")))
    assert 0 == ga.replier.settle() == again.replier.settle()  # nothing twice
    gb.replier.settle()
    assert ([], []) == (gb.spool.outbox.held(), acks(b, "<dup@example.org>"))
    tip_b = gb.store.tip()
    assert tip_b is not None
    assert survived(gb.store, first.commit.encode(), tip_b) and not survived(gb.store, second.commit.encode(), tip_b)
    assert survived(gb.store, reply.commit.encode(), tip_b)  # its comment moved to the issue kept


def test_the_same_mail_in_the_same_instant_on_two_gateways_is_acknowledged_once(tmp_path: Path) -> None:
    """Both gateways name the issue alike (one path: the merge makes one record of the two) and B
    has a commit of its own besides, so a real merge joins them: only A, first on the remote, acks."""
    remote, (a, b) = three(tmp_path)
    ga, gb = gateway(a, remote, "gw-a"), gateway(b, remote, "gw-b")
    mail = make_mail("Printer on fire", message_id="<dup@example.org>")
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first, second = ga.handle(mail, received=when), gb.handle(mail, received=when)
    assert first.files == second.files  # one path on both sides
    assert gb.handle(make_mail("Other", message_id="<other@example.org>")).commit
    for g in (ga, gb, ga):
        sync_round(g.store, str(remote), BOT)
        g.replier.settle()
    assert "merge" in git(remote, "log", "-1", "--format=%s", "issues")
    assert (1, 0) == (len(acks(a, "<dup@example.org>")), len(acks(b, "<dup@example.org>")))
    assert 1 == len(acks(b, "<other@example.org>"))  # B's own mail is B's to answer
    assert [] == ga.spool.outbox.held() == gb.spool.outbox.held()


def test_a_held_ack_outlives_the_age_rule_of_tmp(tmp_path: Path) -> None:
    """The remote away for days: recover() leaves a held ack older than the Maildir rule alone (only
    settle decides about it), and the envelope beside it."""
    remote, (a, _b) = three(tmp_path)
    ga = gateway(a, remote, "gw-a")
    assert ga.handle(make_mail("Printer on fire", message_id="<p1@example.org>")).commit
    (held,) = ga.spool.outbox.held()
    old = time.time() - 40 * 3600
    for path in (ga.spool.outbox.tmp / held, ga.spool.outbox.attachment(held)):
        os.utime(path, (old, old))
    ga.spool.recover()
    assert [held] == ga.spool.outbox.held() and ga.spool.outbox.attachment(held).exists()
    sync_round(ga.store, str(remote), BOT)
    assert (1, []) == (ga.replier.settle(), ga.spool.outbox.held())

"""Issue 15, "How it will be checked": three `mailtrack serve` processes (three repositories, one shared
bare remote), each fed a share of the mail over SMTP plus duplicates across gateways, the remote gone
for a while, one gateway killed -9 and restarted; after they settle, the same tree everywhere, every
mail once, `git fsck --strict` clean, and the relay sink caught each notification and each ack once."""

from __future__ import annotations

import collections
import signal
import smtplib
import time
from pathlib import Path

import pytest

from helpers.cli import mailtrack
from helpers.mail import make_mail
from helpers.ports import free_port, wait_for
from helpers.repos import git, issues_repo, make_repo, tip, tree
from helpers.servers import Server
from helpers.sink import Sink
from mailtrack.tracker.store import Store

MAILS = 60  # per gateway
DUPLICATES = 6  # mails sent to two gateways each
WATCHER = "watch@example.org"
# Gateway 1 kills itself (-9) in the middle of its second push, its pack half sent to git receive-pack.
KILL_MID_PUSH = """
import os, signal, dulwich.repo
_generate, _pushes = dulwich.repo.Repo.generate_pack_data, [0]
def _cut(self, *args, **kwargs):
    _pushes[0] += 1
    count, objects = _generate(self, *args, **kwargs)
    if _pushes[0] < 2:
        return count, objects
    def some():
        for obj in objects:
            yield obj
            os.kill(os.getpid(), signal.SIGKILL)
    return count, some()
dulwich.repo.Repo.generate_pack_data = _cut
"""


def send(port: int, n: str) -> None:
    # one sender a mail: each is acknowledged within the reply rate limit
    raw = make_mail(f"Mail {n}", f"Body of {n}.\n", frm=f"u{n}@example.org", message_id=f"<m{n}@example.org>")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail(f"u{n}@example.org", ["issues@tracker.localhost"], raw)


def message_ids(repo: Path) -> list[str]:
    """The Message-ID of every issue record on the branch."""
    with Store.open(repo) as store:
        return sorted(i.message_id for i in store.snapshot().issues())


@pytest.mark.slow
@pytest.mark.network
def test_three_gateways_one_remote(tmp_path: Path) -> None:
    """Every mail once, one tree, fsck clean, each notification and ack once, through an outage and a kill -9."""
    first = issues_repo(tmp_path / "first")
    remote = make_repo(tmp_path / "remote.git", bare=True)
    git(first, "push", "-q", str(remote), "issues")
    sink = Sink().start()
    servers: list[Server] = []
    extras: list[str] = []
    killed: list[int | None] = []

    def send_to(i: int, n: str) -> None:
        """Send to gateway i; one that died (the kill) is restarted, without the fault, and sent to again."""
        for _ in range(3):
            proc = servers[i].proc
            assert proc is not None
            if proc.poll() is not None:
                killed.append(servers[i].finish())
                servers[i] = Server(servers[i].repo, servers[i].port, extras[i])
                servers[i].start()
            try:
                return send(servers[i].port, n)
            except (OSError, smtplib.SMTPException):
                wait_for(lambda p=proc: p.poll() is not None, timeout=30, what="the gateway that failed us to be gone")
        pytest.fail(f"gateway {i} did not take mail {n}")

    try:
        for i in range(3):
            repo = make_repo(tmp_path / f"gw{i}")
            git(repo, "fetch", "-q", str(remote), "issues:issues")
            extra = (f'[relay]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\nretry_initial = 1\n'
                     f'[notify]\nwatchers = ["{WATCHER}"]\n'
                     f'[sync]\nremote = "{remote}"\ninterval = 0.5\ngateway_id = "gw{i}"\n')
            extras.append(extra)
            servers.append(Server(repo, free_port(), extra, inject=KILL_MID_PUSH if i == 1 else ""))
            servers[-1].start()
        sent: list[str] = []
        for k in range(MAILS):
            for i in range(3):
                send_to(i, f"{i}-{k}")
                sent.append(f"<m{i}-{k}@example.org>")
            if k == MAILS // 3:  # the remote goes away for a while
                remote.rename(tmp_path / "away.git")
            if k == MAILS // 2:
                time.sleep(1.5)  # a few sync rounds fail meanwhile
                (tmp_path / "away.git").rename(remote)
        for d in range(DUPLICATES):  # the same mail through two gateways (both MX hosts got it)
            send_to(d % 3, f"dup-{d}")
            send_to((d + 1) % 3, f"dup-{d}")
            sent.append(f"<mdup-{d}@example.org>")
        for n in range(30):  # it took all its mail in fewer pushes: one more mail each, until it pushes again
            if killed:
                break
            send_to(1, f"more-{n}")
            sent.append(f"<mmore-{n}@example.org>")
            time.sleep(0.5)
        if not killed:  # it died after the last mail: the restart happens here
            send_to(1, "last")
            sent.append("<mlast@example.org>")
        assert [-signal.SIGKILL] == killed

        def settled() -> bool:
            tips = {tip(s.repo) for s in servers} | {tip(remote)}
            return len(tips) == 1 and len(message_ids(remote)) == len(sent) and len(sink.received) >= 2 * len(sent)

        wait_for(settled, timeout=120, what="the gateways to settle")
        time.sleep(2)  # anything more would show now
        assert sorted(sent) == message_ids(remote)  # every mail once
        assert 1 == len({tree(s.repo) for s in servers} | {tree(remote)})
        for repo in [remote, *(s.repo for s in servers)]:
            git(repo, "fsck", "--strict")
        assert [] == sorted(str(p) for p in remote.rglob("*.lock"))  # the kill left no lock in the shared remote
        for s in servers:
            status = mailtrack("status", repo=s.repo, config=s.config, text=True).stdout
            assert ("ahead          0", "behind         0") == tuple(line.split("  (")[0].strip() for line in status.splitlines()[1:3])
        notices = [r.message for r in sink.received if WATCHER in r.recipients]
        per_issue = collections.Counter(m["Message-ID"] for m in notices)
        assert len(sent) == len(per_issue)  # one notification per mail's issue...
        assert [] == [mid for mid, n in per_issue.items() if n > 1]  # ...each caught once
        acked = collections.Counter(r.message["In-Reply-To"] for r in sink.received if r.message["Auto-Submitted"] == "auto-replied")
        assert sorted(sent) == sorted(acked)  # every mail acknowledged...
        assert [] == [mid for mid, n in acked.items() if n > 1]  # ...once, the duplicates too
        assert any("sync with" in line for s in servers for line in s.log)  # the outage was seen
        print("merges:", git(remote, "log", "--merges", "--oneline", "issues").count("\n"),
              "duplicates dropped:", git(remote, "log", "--format=%B", "issues").count("conflict duplicate"),
              "notices:", len(notices), "acks:", sum(acked.values()), "sync errors:", sum("sync with" in line for s in servers for line in s.log))
    finally:
        for s in servers:
            if s.proc is not None and s.proc.poll() is None:
                s.stop()
        sink.stop()

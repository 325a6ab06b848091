"""Push contention: N gateways racing on one bare remote (issue 15's benchmark row).

    python benchmarks/bench_sync.py [MAILS_PER_GATEWAY]

Each gateway is a process of its own with its own repository: it takes a mail (Gateway.handle: a
new issue, one commit) and pushes at once (tracker/sync.py:sync_round), as `serve` does under load.
Prints, for 1, 2 and 3 gateways, the mails per second the whole site takes, the pushes per second
the remote took, the refusals (non-fast-forward, then fetch and merge), and the ratio to one gateway.
"""

from __future__ import annotations

import logging
import multiprocessing
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

from mailtrack.config import Config, GatewayConfig, SyncConfig
from mailtrack.mail.ids import gateway_trailer
from mailtrack.queue.spool import Spool
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Store
from mailtrack.tracker.sync import sync_round
from mailtrack.worker.pipeline import Gateway

BOT = Person("mailtrack", "issues@localhost")


def mail(gw: int, i: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"User {i % 50} <user{i % 50}@example.org>"
    msg["To"] = "issues@localhost"
    msg["Subject"] = f"Issue {gw}-{i}"
    msg["Message-ID"] = f"<bench-{gw}-{i}@example.org>"
    msg.set_content(f"Text of issue {gw}-{i}.\n")
    return msg.as_bytes()


def git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, capture_output=True)


def one(repo: Path, remote: Path, gw: int, n: int, start: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = Store.open(repo, durable=True)
    store.trailers = (gateway_trailer(f"gw{gw}"),)
    config = Config(gateway=GatewayConfig(project="bench", address="issues@localhost"), sync=SyncConfig(remote=str(remote)))
    gateway = Gateway(config, store, Spool(repo / ".git" / "mailtrack" / "spool"))
    while time.time() < start:
        time.sleep(0.001)
    pushed = refused = 0
    for i in range(n):
        gateway.handle(mail(gw, i))
        r = sync_round(store, str(remote), BOT, tries=100)
        pushed, refused = pushed + r.pushed, refused + r.refused
    out.put((pushed, refused, time.time()))


def run(gateways: int, n: int, tmp: Path) -> tuple[float, float, int]:
    base = tmp / f"n{gateways}"
    seed = base / "seed"
    seed.mkdir(parents=True)
    git("-C", str(seed), "init", "-q")
    with Store.open(seed) as s:
        from mailtrack.tracker.model import Project  # noqa: PLC0415  (a benchmark script, not the package)

        s.init(Project(closed_statuses=["closed"]), BOT)
    remote = base / "remote.git"
    git("init", "-q", "--bare", str(remote))
    git("-C", str(seed), "push", "-q", str(remote), "issues")
    repos = []
    for g in range(gateways):
        r = base / f"gw{g}"
        git("init", "-q", str(r))
        git("-C", str(r), "fetch", "-q", str(remote), "issues:issues")
        repos.append(r)
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    start = time.time() + 0.5
    procs = [multiprocessing.Process(target=one, args=(r, remote, g, n, start, out)) for g, r in enumerate(repos)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = max(t for _, _, t in results) - start
    pushes = sum(p for p, _, _ in results)
    refused = sum(r for _, r, _ in results)
    return gateways * n / elapsed, pushes / elapsed, refused


def main() -> None:
    logging.disable(logging.WARNING)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as d:
        rows = [(g, *run(g, n, Path(d))) for g in (1, 2, 3)]
    one_rate = rows[0][1]
    print(f"{'gateways':>8} {'mails/s':>8} {'pushes/s':>9} {'refused':>8} {'ratio':>6}")
    for g, rate, pushes, refused in rows:
        print(f"{g:>8} {rate:>8.1f} {pushes:>9.1f} {refused:>8} {rate / one_rate:>6.2f}")


if __name__ == "__main__":
    main()

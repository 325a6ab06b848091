"""Mail ingest: N mails through the gateway's whole path, against a baseline from the same run.

    python benchmarks/bench_ingest.py [N]

Prints mails per second for new issues and for replies (comments), and the ratio to the
baseline: the store committing one file per mail with fsync on (the floor of any durable
ingest on this machine), so the figure says what parsing, routing, the index and validation cost.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

from mailtrack.config import Config
from mailtrack.queue.spool import Spool
from mailtrack.tracker.model import Person, Project
from mailtrack.tracker.store import Change, Store
from mailtrack.worker.pipeline import Gateway


def mail(i: int, reply_to: int | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"User {i % 50} <user{i % 50}@example.org>"
    msg["To"] = "issues@localhost"
    msg["Subject"] = f"Re: Problem {reply_to}" if reply_to is not None else f"Problem {i}"
    msg["Message-ID"] = f"<bench{i}@example.org>"
    if reply_to is not None:
        msg["In-Reply-To"] = f"<bench{reply_to}@example.org>"
    msg.set_content(f"Line one of mail {i}.\n\nOn Mon, someone wrote:\n> quoted\n" * 3)
    return msg.as_bytes()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    logging.basicConfig(level=logging.ERROR)  # the replies' rate limit warns on every mail past it
    who = Person("Bench", "bench@example.org")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("base", "gw"):
            subprocess.run(["git", "init", "-q", "--bare", f"{tmp}/{name}"], check=True)
        with Store.open(f"{tmp}/base", durable=True) as base:
            start = time.perf_counter()
            for i in range(n):
                base.update(lambda s, i=i: Change(f"mail {i}", {f"{i % 256:02x}/{i:038x}/issue.xml": mail(i)}), who)
            t_base = time.perf_counter() - start
        with Store.open(f"{tmp}/gw", durable=True) as store:
            store.init(Project(), who)
            gateway = Gateway(Config(), store, Spool(Path(tmp) / "spool"))
            start = time.perf_counter()
            for i in range(n):
                gateway.handle(mail(i))
            t_new = time.perf_counter() - start
            start = time.perf_counter()
            for i in range(n):
                gateway.handle(mail(n + i, reply_to=i))
            t_reply = time.perf_counter() - start
            gateway.close()
    print(f"mails: {n} new + {n} replies")
    print(f"baseline (durable commit of one file): {n / t_base:7.1f} /s")
    print(f"new issues:  {n / t_new:7.1f} mails/s   ratio to baseline {t_new / t_base:5.2f}x")
    print(f"comments:    {n / t_reply:7.1f} mails/s   ratio to baseline {t_reply / t_base:5.2f}x")


if __name__ == "__main__":
    main()

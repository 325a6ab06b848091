"""The web view under load: pages per second, an issue page against `git issues show`, the list page.

    python benchmarks/bench_web.py [N]

Makes N issues (one commit, so that large N is quick), each with a comment, then serves them with
`mailtrack.web` on waitress on a free loopback port. Baselines, measured here and now:
- an issue page (`/<id>/`, HTTP included) against `git issues show <id>` run in-process;
- pages per second with 20 concurrent clients against a WSGI "hello" on the same waitress (the
  server's own ceiling on this machine);
- the list page's 50 rows, the first one for a new tip (records loaded from the index) and later ones.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from mailtrack.app import git_issues
from mailtrack.config import Config, WebConfig
from mailtrack.tracker.lookup import Index
from mailtrack.tracker.model import Comment, Issue, Person
from mailtrack.tracker.store import Store, issue_dir
from mailtrack.web.app import WebApp
from mailtrack.web.server import WebServer

CLIENTS = 20
SECONDS = 3.0


def make_issues(store: Store, n: int) -> list[str]:
    who = Person("Bench", "bench@example.org")
    start = datetime(2020, 1, 1, tzinfo=UTC)
    files: dict[str, bytes | None] = {"project.xml": store.snapshot().project().to_bytes()}
    names = []
    for i in range(n):
        created = start + timedelta(minutes=i)
        name = f"{random.getrandbits(160):040x}"
        issue = Issue(created=created, author=who, title=f"Issue number {i}", description="Some description\n" * 5,
                      status=("new", "open", "closed")[i % 3], name=name)
        comment = Comment.new(who, f"A comment on issue {i}, with the word zebra{i}.\n", created=created + timedelta(seconds=5))
        files[f"{issue_dir(name)}/issue.xml"] = issue.to_bytes()
        files[f"{issue_dir(name)}/{comment.filename}"] = comment.to_bytes()
        names.append(name)
    commit = store.write_commit([], None, files, "bench issues", who)
    assert store.move(None, commit)
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str, conn: http.client.HTTPConnection | None = None) -> int:
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    if conn is None:
        c.close()
    return r.status


def per_second(port: int, paths: list[str]) -> float:
    """Requests per second of CLIENTS threads, each on its own keep-alive connection, for SECONDS."""
    done = [0] * CLIENTS
    stop = time.monotonic() + SECONDS

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = k
        while time.monotonic() < stop:
            assert 200 == get(port, paths[i % len(paths)], conn)
            done[k] += 1
            i += CLIENTS
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - began)


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def mean(fn: Callable[[], object], times: int) -> float:
    began = time.perf_counter()
    for _ in range(times):
        fn()
    return (time.perf_counter() - began) / times


def main() -> None:
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # 20 clients on 4 threads: queued, as meant
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["git", "init", "-q", "--bare", f"{tmp}/repo"], check=True)
        store = Store.open(f"{tmp}/repo")
        began = time.perf_counter()
        names = make_issues(store, n)
        print(f"{n} issues with a comment each, in {time.perf_counter() - began:.1f}s")
        began = time.perf_counter()
        with Index.for_snapshot(store.snapshot()) as index:  # the gateway keeps it up to date as mail comes
            index.sync(store.snapshot())
        print(f"the index built from nothing in {time.perf_counter() - began:.1f}s (tracker/lookup.py)")
        port = free_port()
        config = Config(web=WebConfig(port=port))
        server = WebServer(WebApp(config, f"{tmp}/repo"), config.web)
        server.start()
        hello_port = free_port()
        hello_server = WebServer.__new__(WebServer)  # the same waitress, serving a constant
        WebServer.__init__(hello_server, WebApp(config, f"{tmp}/repo"), WebConfig(port=hello_port))
        hello_server.server.application = hello
        hello_server.start()
        try:
            sample = random.sample(names, min(250, n))
            shorts = {name: store.snapshot().short(name) for name in sample}
            fresh, sample = sample[:50], sample[50:]  # pages seen once only: made, not cached
            pages = [f"/{shorts[name]}/" for name in sample]

            began = time.perf_counter()
            assert 200 == get(port, "/")
            cold_list = time.perf_counter() - began
            warm_list = mean(lambda: get(port, "/?page=2"), 50)

            def show(name: str) -> None:
                with contextlib.redirect_stdout(io.StringIO()):
                    assert 0 == git_issues.main(["--repo", f"{tmp}/repo", "show", shorts[name]])

            cli_show = mean(lambda: show(random.choice(sample)), 50)
            unseen = iter(fresh)
            web_show = mean(lambda: get(port, f"/{shorts[next(unseen)]}/"), len(fresh))
            ours = per_second(port, pages)
            ceiling = per_second(hello_port, ["/"])
        finally:
            server.stop()
            hello_server.stop()
    print(f"{'what':<44} {'figure':>12} {'baseline':>12} {'ratio':>7}")
    print(f"{'issue page (first view) vs git issues show, ms':<44} {web_show * 1e3:>12.2f} {cli_show * 1e3:>12.2f} {web_show / cli_show:>7.2f}")
    print(f"{'list page 2 vs the first for a new tip, ms':<44} {warm_list * 1e3:>12.2f} {cold_list * 1e3:>12.2f} "
          f"{warm_list / cold_list:>7.3f}")
    print(f"{f'{len(pages)} issue pages/s, {CLIENTS} clients, vs hello/s':<44} {ours:>12.0f} {ceiling:>12.0f} {ours / ceiling:>7.2f}")


if __name__ == "__main__":
    main()

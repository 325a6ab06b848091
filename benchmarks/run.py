"""Issue 14's table, measured: mailtrack at 10k and 100k issues against baselines run in the same invocation.

    python benchmarks/run.py            # bases of 10,000 and 100,000 issues, 2,000 mails (tens of minutes)
    python benchmarks/run.py --quick    # bases of 1,000 and 10,000 issues, 300 mails (a few minutes)
    python benchmarks/run.py --tiny     # a smoke run (seconds): what tests/test_benchmarks.py runs

Everything is built here, from a seed (`--seed`): a corpus of mails (new reports and threaded
replies, some HTML-only, some with attachments, some with RFC 2047 headers) written to an mbox, and
bases of issues written with `git fast-import` in one commit (that write is the first baseline).
Every mailtrack figure is a child process, its peak RSS read from wait4(2) (see LAUNCH). The baselines:
- `git fast-import` of the same commits (one per mail, the raw mail as one file) for ingest;
- one `git fast-import` process per mail for `deliver`;
- `git ls-tree` + `git cat-file --batch` of every issue.xml for `list`, of one issue's files for `show`.
public-inbox and Roundup are not run here (not installed on the machine these figures came from);
their targets are printed as such. Times are medians where a row repeats a step.
"""

from __future__ import annotations

import argparse
import contextlib
import mailbox
import os
import random
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from mailtrack.tracker.model import Issue, Person, Project
from mailtrack.tracker.store import issue_dir

SIZES = {  # small base, large base, mails in the corpus, mails over SMTP, deliver processes, shows
    "full": (10_000, 100_000, 2_000, 1_000, 30, 20),
    "quick": (1_000, 10_000, 300, 200, 10, 10),
    "tiny": (20, 60, 8, 10, 2, 2),
}
CLIENTS = 20
ADDRESS = "issues@tracker.localhost"  # the gateway's default address (config.example.toml)
MIB = 1024  # ru_maxrss is in KiB on Linux
ROWS = ("import into the empty branch", "import into the small base", "import into the large base",
        "growth 0 -> large, cost per mail", "deliver, one process per mail", "deliver's imports (-X importtime)",
        "SMTP, 20 clients", "SMTP p99 to the 250", "worker drain after the burst",
        "list, cold index, small base", "list, warm index, small base", "show, small base",
        "list, cold index, large base", "list, warm index, large base", "show, large base")


# --- running things -----------------------------------------------------------------------------


@dataclass
class Ran:
    seconds: float
    rss_mib: float
    out: bytes


# Linux keeps a process's peak RSS across exec, and a child made by vfork (subprocess) starts from its
# parent's: this benchmark's own memory would show as every child's. So each child is forked from
# this small launcher, which writes the child's peak RSS (KiB) to the file named by argv[1].
LAUNCH = """
import os, signal, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda n, f: os.kill(pid, n))
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def launched(cmd: list[str], rss_file: Path) -> list[str]:
    return [sys.executable, "-S", "-c", LAUNCH, str(rss_file), *cmd]


def read_rss(rss_file: Path) -> float:
    return int(rss_file.read_text()) / MIB


def run(cmd: list[str], stdin: bytes | None = None, cwd: str | None = None) -> Ran:
    """Run `cmd` to completion: wall time, peak RSS, stdout. Fails loudly on a non-zero exit."""
    with tempfile.TemporaryFile() as inp, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryDirectory() as scratch:
        if stdin is not None:
            inp.write(stdin)
            inp.seek(0)
        rss_file = Path(scratch) / "rss"
        began = time.perf_counter()
        p = subprocess.run(launched(cmd, rss_file), stdin=inp, stdout=out, stderr=err, cwd=cwd, check=False)
        seconds = time.perf_counter() - began
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}\n{err.read().decode(errors='replace')[-3000:]}")
        return Ran(seconds, read_rss(rss_file), out.read())


def mailtrack(repo: Path, *args: str, config: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "mailtrack.app.mailtrack", *(["--config", str(config)] if config else []), "--repo", str(repo), *args]


def git_issues(repo: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mailtrack.app.git_issues", "--repo", str(repo), *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the corpus and the bases -------------------------------------------------------------------

WORDS = ("crash", "login", "timeout", "printer", "widget", "parser", "cache", "export", "font", "render",
         "socket", "upload", "theme", "locale", "backup", "sync", "quota", "index", "search", "mail")
NAMES = ("Alice Martin", "Bob Li", "Chloé Dupré", "Đorđe Petrović", "Eve Ng", "Fiona Ó Briain", "Günter Weiß", "Hana Sato")


def corpus(rng: random.Random, n: int, tag: str, start: datetime) -> list[bytes]:
    """n mails: about 30% new reports, the rest replies to an earlier mail of the corpus (In-Reply-To and
    References), one in 8 HTML-only, one in 10 with an attachment, the non-ASCII names and subjects in RFC 2047."""
    mails: list[bytes] = []
    heads: list[tuple[str, str, str]] = []  # (Message-ID, subject, references) of each mail so far
    for i in range(n):
        msg = EmailMessage()
        who = rng.choice(NAMES)
        msg["From"] = f"{who} <user{rng.randrange(200)}@example.org>"
        msg["To"] = ADDRESS
        mid = f"<{tag}.{i}.{rng.getrandbits(32):08x}@bench.example.org>"
        if heads and rng.random() < 0.7:
            parent, subject, refs = rng.choice(heads[-200:])
            subject = subject if subject.startswith("Re: ") else f"Re: {subject}"
            msg["In-Reply-To"] = parent
            refs = f"{refs} {parent}".strip()
            msg["References"] = refs
        else:
            subject = f"{rng.choice(WORDS)} {rng.choice(WORDS)} fails ({rng.choice(('é', 'ß', 'ø', ''))}{i})"
            refs = ""
        msg["Subject"] = subject
        msg["Message-ID"] = mid
        msg["Date"] = format_datetime(start + timedelta(minutes=i))
        text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(rng.randrange(3, 20)))
        if i % 8 == 7:
            msg.set_content(f"<html><body><p>{text.replace(chr(10), '</p><p>')}</p></body></html>", subtype="html")
        else:
            msg.set_content(text + "\n\nOn Mon, someone wrote:\n> quoted line\n> another\n")
        if i % 10 == 9:
            msg.add_attachment(rng.randbytes(rng.randrange(500, 20_000)), maintype="application",
                               subtype="octet-stream", filename=f"trace-{i}.bin")
        mails.append(msg.as_bytes())
        heads.append((mid, subject, refs[-500:]))
    return mails


def write_mbox(path: Path, mails: list[bytes]) -> None:
    box = mailbox.mbox(str(path))
    for m in mails:
        box.add(m)
    box.close()


def _data(payload: bytes) -> bytes:
    return b"data %d\n%s\n" % (len(payload), payload)


def base_stream(rng: random.Random, n: int) -> tuple[bytes, list[str]]:
    """A fast-import stream of one commit holding project.xml and n issues; the issues' names."""
    who = Person("Bench", "bench@example.org")
    start = datetime(2015, 1, 1, tzinfo=UTC)
    parts = [b"commit refs/heads/issues\ncommitter Bench <bench@example.org> 1420070400 +0000\n", _data(b"bench base"),
             b"M 100644 inline project.xml\n", _data(Project().to_bytes())]
    names = []
    for i in range(n):
        name = f"{rng.getrandbits(160):040x}"
        created = start + timedelta(minutes=i)
        issue = Issue(created=created, author=Person(NAMES[i % len(NAMES)], f"user{i % 200}@example.org"),
                      title=f"{WORDS[i % 20]} {WORDS[(i * 7) % 20]} fails in case {i}", description="Steps:\n1. do it\n" * 4,
                      status=("new", "open", "closed")[i % 3], modified=created, name=name,
                      reporters=[who.mailbox]).with_message_id(f"<base.{i}@bench.example.org>")
        parts += [f"M 100644 inline {issue_dir(name)}/issue.xml\n".encode(), _data(issue.to_bytes())]
        names.append(name)
    return b"".join(parts), names


def ingest_stream(mails: list[bytes], tag: str) -> bytes:
    """One commit per mail onto refs/heads/issues, each the raw mail as one new file: what fast-import
    does for the same commits (the floor of an ingest that writes each mail to git)."""
    parts = []
    for i, m in enumerate(mails):
        parts += [b"commit refs/heads/issues\n", f"committer Bench <bench@example.org> {1600000000 + i} +0000\n".encode(),
                  _data(f"mail {i}".encode())]
        if i == 0:
            parts.append(b"from refs/heads/issues^0\n")
        parts += [f"M 100644 inline {tag}/{i:02x}/mail-{i}.eml\n".encode(), _data(m)]
    return b"".join(parts)


def fast_import(repo: Path, stream: bytes) -> Ran:
    return run(["git", "-C", str(repo), "fast-import", "--quiet", "--force"], stdin=stream)


def copy_repo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# --- the rows --------------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    figure: str
    anchor: str
    ratio: float | None
    rss: float | None
    target: str
    met: bool | None

    def line(self) -> str:
        ratio = f"{self.ratio:.2f}x" if self.ratio is not None else "-"
        rss = f"{self.rss:.0f}" if self.rss is not None else "-"
        met = {True: "yes", False: "NO", None: "n/a"}[self.met]
        return f"{self.what:<36} {self.figure:>18} {self.anchor:>22} {ratio:>8} {rss:>7}  {met:<4} {self.target}"


def list_baseline(repo: Path) -> float:
    """Seconds for git to read every issue.xml of the branch: ls-tree -r, then cat-file --batch of their ids."""
    began = time.perf_counter()
    listed = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "issues"], capture_output=True, check=True).stdout
    batch = b"".join(line.split()[2] + b"\n" for line in listed.splitlines() if line.endswith(b"/issue.xml"))
    subprocess.run(["git", "-C", str(repo), "cat-file", "--batch"], input=batch, capture_output=True, check=True)
    return time.perf_counter() - began


def show_baseline(repo: Path, name: str) -> float:
    began = time.perf_counter()
    listed = subprocess.run(["git", "-C", str(repo), "ls-tree", "--name-only", f"issues:{issue_dir(name)}"],
                            capture_output=True, check=True).stdout.split()
    batch = b"".join(b"issues:%s/%s\n" % (issue_dir(name).encode(), p) for p in listed)
    subprocess.run(["git", "-C", str(repo), "cat-file", "--batch"], input=batch, capture_output=True, check=True)
    return time.perf_counter() - began


def list_rows(repo: Path, label: str, names: list[str], shows: int) -> list[Row]:
    index = repo / "mailtrack" / "index.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    base = min(list_baseline(repo) for _ in range(3))
    cold = run(git_issues(repo, "list", "--all", "--format", "id"))
    listed = len(cold.out.split())
    assert listed == len(names), f"list printed {listed} of {len(names)} issues"
    warm = [run(git_issues(repo, "list", "--all", "--format", "id")) for _ in range(3)]
    w = min(warm, key=lambda r: r.seconds)
    rows = [Row(f"list, cold index, {label}", f"{cold.seconds:.2f} s", f"cat-file {base:.3f} s", cold.seconds / base,
                cold.rss_mib, "<= 2x, <= 100 MiB", cold.seconds / base <= 2 and cold.rss_mib <= 100),
            Row(f"list, warm index, {label}", f"{w.seconds:.3f} s", f"cat-file {base:.3f} s", w.seconds / base,
                max(r.rss_mib for r in warm), "<= 0.1x, <= 100 MiB", w.seconds / base <= 0.1 and w.rss_mib <= 100)]
    picked = random.Random(len(names)).sample(names, min(shows, len(names)))
    ours = [run(git_issues(repo, "show", n[:12])) for n in picked]
    theirs = statistics.median(show_baseline(repo, n) for n in picked)
    s = statistics.median(r.seconds for r in ours)
    rows.append(Row(f"show, {label}", f"{s * 1e3:.0f} ms", f"ls-tree+cat-file {theirs * 1e3:.0f} ms", s / theirs,
                    max(r.rss_mib for r in ours), "<= 2x", s / theirs <= 2))
    return rows


def import_row(what: str, repo: Path, mbox: Path, mails: list[bytes], tag: str, anchor_repo: Path) -> tuple[Row, float, float]:
    ran = run(mailtrack(repo, "import", str(mbox)))
    counts = dict(part.rsplit(" ", 1) for part in ran.out.decode().strip().split(", ") if " " in part)
    on_branch = sum(int(counts.get(k, 0)) for k in ("created", "commented", "changed"))
    assert on_branch == len(mails), f"import: {ran.out.decode().strip()} (of {len(mails)} mails)"
    anchor = fast_import(anchor_repo, ingest_stream(mails, tag))
    rate = len(mails) / ran.seconds
    row = Row(what, f"{rate:.0f} mails/s", f"fast-import {len(mails) / anchor.seconds:.0f}/s", ran.seconds / anchor.seconds,
              ran.rss_mib, ">= public-inbox's rate (not installed here), <= 100 MiB", None if ran.rss_mib <= 100 else False)
    return row, ran.seconds / len(mails), anchor.seconds / len(mails)


def deliver_rows(repo: Path, anchor_repo: Path, mails: list[bytes]) -> list[Row]:
    ours = [run(mailtrack(repo, "deliver"), stdin=m) for m in mails]
    theirs = [fast_import(anchor_repo, ingest_stream([m], f"d{i}")) for i, m in enumerate(mails)]
    o, t = statistics.median(r.seconds for r in ours), statistics.median(r.seconds for r in theirs)
    profiled = subprocess.run([sys.executable, "-X", "importtime", *mailtrack(repo, "deliver")[1:]],
                              input=mails[0].replace(b"Message-ID: <", b"Message-ID: <again."), capture_output=True, check=True)
    imports = sum(int(line.split(b"|")[0].split(b":")[1]) for line in profiled.stderr.splitlines()
                  if line.startswith(b"import time:") and line.split(b"|")[0].split(b":")[1].strip().isdigit()) / 1e6
    return [Row("deliver, one process per mail", f"{o * 1e3:.0f} ms/mail", f"fast-import {t * 1e3:.0f} ms", o / t,
                max(r.rss_mib for r in ours), "<= 0.75x public-inbox-mda (not installed here)", None),
            Row("deliver's imports (-X importtime)", f"{imports * 1e3:.0f} ms", f"of {o * 1e3:.0f} ms", imports / o,
                None, "lean", None)]


def spool_busy(spool: Path) -> int:
    """Mails not yet processed: in incoming/new, incoming/cur, or waiting for their parent."""
    def count(d: Path) -> int:
        with contextlib.suppress(FileNotFoundError):
            return sum(1 for e in os.scandir(d) if not e.name.startswith(".") and not e.name.endswith(".json"))
        return 0
    return count(spool / "incoming" / "new") + count(spool / "incoming" / "cur") + count(spool / "waiting")


def smtp_rows(repo: Path, mails: list[bytes], tmp: Path) -> list[Row]:
    port = free_port()
    config = tmp / "serve.toml"
    # reply_wait = 0: a reply that overtakes its parent (20 clients at once) is taken at once, not held for
    # minutes, so that the drain measures the worker's pace, not the wait
    config.write_text(f'[gateway]\nreply_wait = 0\n\n[[listen]]\nhost = "127.0.0.1"\nport = {port}\n'
                      f"max_messages_per_session = {len(mails) + 1}\nmax_sessions_per_client = 0\n")
    with tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        server = subprocess.Popen(launched(mailtrack(repo, "serve", config=config), tmp / "serve.rss"),
                                  stdout=subprocess.DEVNULL, stderr=err)
        try:
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if server.poll() is not None or time.perf_counter() - began > 120:
                    err.seek(0)
                    raise SystemExit(f"serve did not start: {err.read().decode(errors='replace')[-2000:]}")
                time.sleep(0.05)
            latencies: list[float] = []
            lock = threading.Lock()
            clients = min(CLIENTS, len(mails))

            def client(k: int) -> None:
                with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
                    for m in mails[k::clients]:
                        t0 = time.perf_counter()
                        s.sendmail("bench@example.org", [ADDRESS], m)
                        with lock:
                            latencies.append(time.perf_counter() - t0)

            threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
            began = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            accepted = time.perf_counter() - began
            spool = repo / "mailtrack" / "spool"
            while spool_busy(spool) and time.perf_counter() - began < 3600:
                time.sleep(0.02)
            drained = time.perf_counter() - began
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait()
    assert len(latencies) == len(mails), "SMTP: not every mail was accepted"
    rate, drain = len(mails) / accepted, len(mails) / drained
    p99 = sorted(latencies)[max(0, int(len(latencies) * 0.99) - 1)]
    rss = read_rss(tmp / "serve.rss")
    return [Row("SMTP, 20 clients", f"{rate:.0f} mails/s", "", None, rss, ">= 500/s", rate >= 500),
            Row("SMTP p99 to the 250", f"{p99 * 1e3:.0f} ms", "", None, None, "< 50 ms", p99 < 0.05),
            Row("worker drain after the burst", f"{drain:.0f} mails/s", f"acceptance {rate:.0f}/s", rate / drain,
                rss, "keeps up with acceptance", drain >= rate * 0.95)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="size", const="quick", help="bases of 1k and 10k issues, 300 mails")
    size.add_argument("--tiny", action="store_const", dest="size", const="tiny", help="a smoke run of a few seconds")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--keep", metavar="DIR", help="build in DIR and leave it there (default: a temporary directory)")
    args = p.parse_args()
    small, large, n_mails, n_smtp, n_deliver, shows = SIZES[args.size or "full"]
    rng = random.Random(args.seed)
    with contextlib.ExitStack() as stack:
        tmp = Path(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mtbench-")))
        tmp.mkdir(parents=True, exist_ok=True)
        mails = corpus(rng, n_mails, "imp", datetime(2024, 1, 1, tzinfo=UTC))
        write_mbox(tmp / "corpus.mbox", mails)
        print(f"corpus: {n_mails} mails, seed {args.seed}; bases of 0, {small} and {large} issues; "
              f"{n_smtp} mails over SMTP; {n_deliver} deliver processes", flush=True)
        bases, names = {}, {}
        for n in (0, small, large):
            repo = tmp / f"base-{n}"
            subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
            stream, names[n] = base_stream(rng, n)
            built = fast_import(repo, stream)
            del stream
            bases[n] = repo
            print(f"base of {n} issues: git fast-import {built.seconds:.1f} s, {built.rss_mib:.0f} MiB", flush=True)
        rows: list[Row] = []
        for n, label in ((small, "small base"), (large, "large base")):  # the cold list builds each base's index
            rows += list_rows(bases[n], label, names[n], shows)
            print(*(r.line() for r in rows[-3:]), sep="\n", flush=True)
        per_mail = {}
        for n, what in ((0, "import into the empty branch"), (small, "import into the small base"), (large, "import into the large base")):
            repo, anchor = copy_repo(bases[n], tmp / f"import-{n}"), copy_repo(bases[n], tmp / f"anchor-{n}")
            row, ours, theirs = import_row(what, repo, tmp / "corpus.mbox", mails, "imp", anchor)
            per_mail[n] = (ours, theirs)
            rows.append(row)
            print(row.line(), flush=True)
        growth, anchor_growth = per_mail[large][0] / per_mail[0][0], per_mail[large][1] / per_mail[0][1]
        rows.append(Row("growth 0 -> large, cost per mail", f"{growth:.2f}x", f"fast-import {anchor_growth:.2f}x",
                        growth / anchor_growth, None, "<= 1.2x", growth <= 1.2))
        print(rows[-1].line(), flush=True)
        live = corpus(rng, n_deliver, "dlv", datetime(2025, 1, 1, tzinfo=UTC))
        rows += deliver_rows(copy_repo(bases[large], tmp / "deliver"), copy_repo(bases[large], tmp / "anchor-deliver"), live)
        print(*(r.line() for r in rows[-2:]), sep="\n", flush=True)
        burst = corpus(rng, n_smtp, "smtp", datetime(2026, 1, 1, tzinfo=UTC))
        rows += smtp_rows(copy_repo(bases[large], tmp / "smtp"), burst, tmp)
        print(*(r.line() for r in rows[-3:]), sep="\n", flush=True)
    by_name = {r.what: r for r in rows}
    print(f"\nmailtrack at {small} and {large} issues, {n_mails} mails (ratio: ours / anchor; RSS: peak MiB of our process)")
    print(f"{'work':<36} {'mailtrack':>18} {'anchor, same run':>22} {'ratio':>8} {'RSS':>7}  met  target")
    for what in ROWS:
        print(by_name[what].line())
    met = [r.what for r in rows if r.met]
    print(f"targets met: {len(met)} of {sum(r.met is not None for r in rows)}: {', '.join(met) or 'none'}")


if __name__ == "__main__":
    main()

"""Issue 14's table, measured: mailtrack at 10k and 100k issues against anchors run in the same invocation.

    python benchmarks/run.py            # bases of 10,000 and 100,000 issues, 2,000 mails (tens of minutes)
    python benchmarks/run.py --quick    # bases of 1,000 and 10,000 issues, 300 mails (a few minutes)
    python benchmarks/run.py --tiny     # a smoke run (seconds): what tests/test_benchmarks.py runs

Everything is built here, from a seed (`--seed`): a corpus of mails (new reports and threaded
replies, some HTML-only, some with attachments, some with RFC 2047 headers) written to an mbox, and
bases of issues written with `git fast-import` in one commit. Every figure is a child process, its
peak RSS read from wait4(2) (see LAUNCH). The anchors, run in the same invocation:
- `git fast-import` of the same commits (one per mail, the raw mail as one file) for ingest and its growth;
- public-inbox (anchors.py): its V2 import of the same mbox, for the import's rate and peak RSS;
  `public-inbox-mda`, one process per mail, for `deliver`;
- Roundup's `roundup-mailgw` on a stock tracker, the same mbox, for the import's rate;
- `git ls-tree` + `git cat-file --batch` of every issue.xml for `list`, of one issue's files for `show`.
An anchor that is not installed (benchmarks/install.sh installs them) prints its rows as n/a, with why;
`--without` leaves one out on purpose. Times are medians where a row repeats a step.

The children run with bytecode as an installed package has it: PYTHONDONTWRITEBYTECODE unset, and
PYTHONPYCACHEPREFIX a directory of this run, filled first (own_pycache, warm_up), so no timed child compiles
what it imports.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import anchors  # benchmarks/anchors.py, beside this script

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
        "import, large base, vs public-inbox", "import, large base, vs roundup-mailgw",
        "growth 0 -> large, cost per mail",
        "deliver while serve runs", "deliver alone", "deliver's imports (-X importtime)",
        "SMTP, 20 clients", "SMTP p99 to the 250", "worker drain after the burst",
        "list, cold index, small base", "list, warm index, small base", "show, small base",
        "list, cold index, large base", "list, warm index, large base", "list as a table, warm, large base",
        "show, large base",
        "peak RSS, import, large base, cold index")
ANCHORS = ("public-inbox", "roundup")


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


def run(cmd: list[str], stdin: bytes | None = None, cwd: str | None = None, env: dict[str, str] | None = None) -> Ran:
    """Run `cmd` to completion: wall time, peak RSS, stdout. Fails loudly on a non-zero exit."""
    with tempfile.TemporaryFile() as inp, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryDirectory() as scratch:
        if stdin is not None:
            inp.write(stdin)
            inp.seek(0)
        rss_file = Path(scratch) / "rss"
        began = time.perf_counter()
        p = subprocess.run(launched(cmd, rss_file), stdin=inp, stdout=out, stderr=err, cwd=cwd, env=env, check=False)
        seconds = time.perf_counter() - began
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}\n{err.read().decode(errors='replace')[-3000:]}")
        return Ran(seconds, read_rss(rss_file), out.read())


# Imported by the children, so compiled before the first one is timed: every module of mailtrack (and so what
# they import of the standard library and the dependencies), and Roundup's mail gateway when it is installed.
WARM = """
import importlib, pkgutil, mailtrack
for m in pkgutil.walk_packages(mailtrack.__path__, "mailtrack."):
    importlib.import_module(m.name)
try:
    import roundup.scripts.roundup_mailgw, roundup.scripts.roundup_admin, roundup.backends.back_sqlite
except ImportError:
    pass
"""


def own_pycache(root: Path) -> Path:
    """Give every child of this run the bytecode a real install has. The environment may set
    PYTHONDONTWRITEBYTECODE=1 (then each child compiles all it imports, every time) and the source tree
    may hold no __pycache__: so that variable is dropped, PYTHONPYCACHEPREFIX points to `root` (this run's),
    the installed package (and Roundup's) is byte-compiled there (compileall) and the rest of what children
    import is compiled by importing it once."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(root)
    packages = [*importlib.import_module("mailtrack").__path__]
    roundup = importlib.util.find_spec("roundup")  # an anchor, compiled as it would be installed too
    packages += roundup.submodule_search_locations or [] if roundup is not None else []
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *packages], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-c", WARM], check=True)
    return root


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


def warm_up(tmp: Path, empty: Path, mails: list[bytes]) -> None:
    """The import path run once on a throwaway copy of the empty branch, untimed: what the children import only
    when they work (html.parser for an HTML-only mail, _strptime, dulwich's lazy modules) is compiled too."""
    repo, mbox = copy_repo(empty, tmp / "warm-up"), tmp / "warm-up.mbox"
    write_mbox(mbox, mails)
    run(mailtrack(repo, "import", str(mbox)))
    run(git_issues(repo, "list", "--all"))
    shutil.rmtree(repo)
    mbox.unlink()


# --- the rows --------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table. `met`: True or False against the target; None when there is no target (`-`)
    or when the anchor could not be run (`n/a`, and `why` says why)."""

    what: str
    figure: str
    anchor: str
    ratio: float | None
    rss: float | None
    target: str
    met: bool | None
    why: str = ""

    def line(self) -> str:
        """Columns apart by two spaces or more, and none holds two spaces in a row: re.split(r"\\s{2,}") reads it."""
        ratio = f"{self.ratio:.2f}x" if self.ratio is not None else "-"
        rss = f"{self.rss:.0f}" if self.rss is not None else "-"
        met = "n/a" if self.why else "-" if self.met is None else "yes" if self.met else "NO"
        why = f"  [n/a: {self.why}]" if self.why else ""
        return (f"{self.what:<40}  {self.figure:>16}  {self.anchor or '-':>26}  {ratio:>7}  {rss:>5}  {met:<4} "
                f" {self.target or '-'}{why}")


def skipped(what: str, figure: str, rss: float | None, target: str, why: str) -> Row:
    return Row(what, figure, "n/a", None, rss, target, None, why)


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


def drop_index(repo: Path) -> None:
    index = repo / "mailtrack" / "index.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)


def list_rows(repo: Path, label: str, names: list[str], shows: int) -> list[Row]:
    drop_index(repo)
    base = min(list_baseline(repo) for _ in range(3))
    cold = run(git_issues(repo, "list", "--all", "--format", "id"))
    listed = len(cold.out.split())
    assert listed == len(names), f"list printed {listed} of {len(names)} issues"
    warm = [run(git_issues(repo, "list", "--all", "--format", "id")) for _ in range(3)]
    w = min(warm, key=lambda r: r.seconds)
    w_rss = max(r.rss_mib for r in warm)
    rows = [Row(f"list, cold index, {label}", f"{cold.seconds:.2f} s", f"cat-file {base:.3f} s", cold.seconds / base,
                cold.rss_mib, "<= 2x", cold.seconds / base <= 2),
            Row(f"list, warm index, {label}", f"{w.seconds:.3f} s", f"cat-file {base:.3f} s", w.seconds / base,
                w_rss, "<= 0.1x, <= 100 MiB", w.seconds / base <= 0.1 and w_rss <= 100)]
    if label == "large base":  # what a user types: the open issues as a table (short IDs, the fields)
        table = [run(git_issues(repo, "list")) for _ in range(3)]
        t = min(table, key=lambda r: r.seconds)
        t_rss = max(r.rss_mib for r in table)
        rows.append(Row(f"list as a table, warm, {label}", f"{t.seconds:.3f} s", f"cat-file {base:.3f} s", t.seconds / base,
                        t_rss, "<= 0.1x, <= 100 MiB", t.seconds / base <= 0.1 and t_rss <= 100))
    picked = random.Random(len(names)).sample(names, min(shows, len(names)))
    ours = [run(git_issues(repo, "show", n[:12])) for n in picked]
    theirs = statistics.median(show_baseline(repo, n) for n in picked)
    s = statistics.median(r.seconds for r in ours)
    rows.append(Row(f"show, {label}", f"{s * 1e3:.0f} ms", f"ls-tree+cat-file {theirs * 1e3:.0f} ms", s / theirs,
                    max(r.rss_mib for r in ours), "<= 2x", s / theirs <= 2))
    return rows


def mailtrack_import(repo: Path, mbox: Path, mails: list[bytes]) -> Ran:
    """`mailtrack import` of the corpus, checked: every mail on the branch."""
    ran = run(mailtrack(repo, "import", str(mbox)))
    counts = dict(part.rsplit(" ", 1) for part in ran.out.decode().strip().split(", ") if " " in part)
    on_branch = sum(int(counts.get(k, 0)) for k in ("created", "commented", "changed"))
    assert on_branch == len(mails), f"import: {ran.out.decode().strip()} (of {len(mails)} mails)"
    return ran


def import_row(what: str, repo: Path, mbox: Path, mails: list[bytes], tag: str, anchor_repo: Path) -> tuple[Row, Ran, float]:
    ran = mailtrack_import(repo, mbox, mails)
    anchor = fast_import(anchor_repo, ingest_stream(mails, tag))
    rate = len(mails) / ran.seconds
    row = Row(what, f"{rate:.0f} mails/s", f"fast-import {len(mails) / anchor.seconds:.0f}/s", ran.seconds / anchor.seconds,
              ran.rss_mib, "", None)
    return row, ran, anchor.seconds / len(mails)


@dataclass
class Anchors:
    """What the other programs measured: public-inbox's import (seconds, peak RSS) and Roundup's; or why not."""

    pi: anchors.PublicInbox | None
    pi_import: Ran | None
    pi_why: str
    roundup: Ran | None
    roundup_why: str


def failed(program: str, e: BaseException) -> str:
    """An anchor that could not be run is a row's n/a, not the end of the benchmark: why, on one line."""
    text = " ".join(str(e).split())
    return f"{program} failed: {text[:200]}" if text else f"{program} failed: {type(e).__name__}"


def run_anchors(tmp: Path, mbox: Path, n: int, without: set[str]) -> Anchors:
    """public-inbox's V2 import of the corpus into a new inbox (its fastest case: nothing in the inbox yet), and
    roundup-mailgw of the same mbox into a new tracker; each checked to hold every mail."""
    pi = pi_import = roundup = None
    pi_why = "skipped (--without public-inbox)" if "public-inbox" in without else anchors.public_inbox_missing() or ""
    if not pi_why:
        try:
            pi = anchors.PublicInbox(tmp / "public-inbox", ADDRESS)
            pi.init()
            pi_import = run(pi.import_cmd(), stdin=mbox.read_bytes(), env=pi.env)
            assert pi.count() == n, f"{pi.count()} of {n} mails in the inbox"
        except (Exception, SystemExit) as e:
            pi, pi_import, pi_why = None, None, failed("public-inbox's import", e)
    roundup_why = "skipped (--without roundup)" if "roundup" in without else anchors.roundup_missing() or ""
    if not roundup_why:
        try:
            tracker = anchors.Roundup(tmp / "roundup", ADDRESS.split("@")[1])
            tracker.init()
            copy = shutil.copy(mbox, tmp / "roundup.mbox")  # the mailbox mode empties the file it read
            roundup = run(tracker.mailgw_cmd(Path(copy)))
            kept, refused = tracker.count(), tracker.refusals()
            assert kept == n, f"{kept} of {n} mails kept, {refused} refused"
        except (Exception, SystemExit) as e:
            roundup, roundup_why = None, failed("roundup-mailgw", e)
    return Anchors(pi, pi_import, pi_why, roundup, roundup_why)


def anchor_rows(ours: Ran, n: int, a: Anchors) -> list[Row]:
    """The import at the large base against public-inbox's rate and Roundup's (ratio: our time per mail / theirs)."""
    figure = f"{n / ours.seconds:.0f} mails/s"
    rows = []
    what, target = "import, large base, vs public-inbox", "<= 1x (at least public-inbox's rate)"
    if a.pi_import is None:
        rows.append(skipped(what, figure, ours.rss_mib, target, a.pi_why))
    else:
        ratio = ours.seconds / a.pi_import.seconds
        rows.append(Row(what, figure, f"public-inbox {n / a.pi_import.seconds:.0f}/s", ratio, ours.rss_mib, target, ratio <= 1))
    what, target = "import, large base, vs roundup-mailgw", "<= 0.1x (>= 10x Roundup's rate)"
    if a.roundup is None:
        rows.append(skipped(what, figure, ours.rss_mib, target, a.roundup_why))
    else:
        ratio = ours.seconds / a.roundup.seconds
        rows.append(Row(what, figure, f"roundup-mailgw {n / a.roundup.seconds:.1f}/s", ratio, ours.rss_mib, target,
                        ratio <= 0.1))
    return rows


def cold_import_row(repo: Path, mbox: Path, mails: list[bytes], a: Anchors) -> Row:
    """Peak RSS of `mailtrack import` at the large base with no index: it is rebuilt from the branch first."""
    drop_index(repo)
    ran = mailtrack_import(repo, mbox, mails)
    what, figure, target = "peak RSS, import, large base, cold index", f"{ran.rss_mib:.0f} MiB", "<= 100 MiB"
    if a.pi_import is None:
        return Row(what, figure, "-", None, ran.rss_mib, target, ran.rss_mib <= 100)
    pi = a.pi_import.rss_mib
    return Row(what, figure, f"public-inbox {pi:.0f} MiB", ran.rss_mib / pi, ran.rss_mib, target, ran.rss_mib <= 100)


@contextlib.contextmanager
def serving(repo: Path, tmp: Path, name: str, max_messages: int) -> Iterator[tuple[int, Path]]:
    """`mailtrack serve` on `repo` with an SMTP listener on a free port, until the block ends (then SIGTERM).
    Yields the port and the file its peak RSS is written to when it has stopped."""
    port = free_port()
    config = tmp / f"{name}.toml"
    # reply_wait = 0: a reply that overtakes its parent (20 clients at once) is taken at once, not held for
    # minutes, so that the drain measures the worker's pace, not the wait
    config.write_text(f'[gateway]\nreply_wait = 0\n\n[[listen]]\nhost = "127.0.0.1"\nport = {port}\n'
                      f"max_messages_per_session = {max_messages + 1}\nmax_sessions_per_client = 0\n")
    rss = tmp / f"{name}.rss"
    with tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        server = subprocess.Popen(launched(mailtrack(repo, "serve", config=config), rss), stdout=subprocess.DEVNULL, stderr=err)
        try:
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if server.poll() is not None or time.perf_counter() - began > 120:
                    err.seek(0)
                    raise SystemExit(f"serve did not start: {err.read().decode(errors='replace')[-2000:]}")
                time.sleep(0.05)
            yield port, rss
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait()


def wait_drained(spool: Path, deadline: float) -> None:
    while spool_busy(spool):
        if time.perf_counter() > deadline:
            raise SystemExit(f"{spool}: {spool_busy(spool)} mails still unprocessed")
        time.sleep(0.01)


def deliver_rows(tmp: Path, large: Path, mails: list[bytes], pi: anchors.PublicInbox | None, pi_why: str) -> tuple[list[Row], list[str]]:
    """`deliver`, one process per mail, while `serve` runs on the same repo and alone on another copy of the
    large base, against `public-inbox-mda` one process per mail into the inbox of the import. Interleaved,
    mail by mail, so that the three see the same load; after each delivery to the served repo, the next waits
    until serve has processed it. Then `python -X importtime` of one more deliver: its total and the top 5."""
    served, alone = copy_repo(large, tmp / "deliver-serve"), copy_repo(large, tmp / "deliver-alone")
    with_serve: list[Ran] = []
    by_itself: list[Ran] = []
    mda: list[Ran] = []
    before = pi.count() if pi is not None else 0
    with serving(served, tmp, "deliver-serve", len(mails)):
        for m in mails:
            if pi is not None:
                try:
                    mda.append(run(pi.mda_cmd(), stdin=m, env=pi.env))
                except SystemExit as e:
                    pi, pi_why, mda = None, failed("public-inbox-mda", e), []
            by_itself.append(run(mailtrack(alone, "deliver"), stdin=m))
            with_serve.append(run(mailtrack(served, "deliver"), stdin=m))
            wait_drained(served / "mailtrack" / "spool", time.perf_counter() + 300)
    if pi is not None and (pi.count() != before + len(mails) or pi.emergencies()):
        pi_why = f"public-inbox-mda failed: {pi.count() - before} of {len(mails)} mails in the inbox, {pi.emergencies()} emergencies"
        mda = []
    rows = []
    for what, ran, share in (("deliver while serve runs", with_serve, 0.25), ("deliver alone", by_itself, 0.75)):
        o = statistics.median(r.seconds for r in ran)
        figure, rss, target = f"{o * 1e3:.0f} ms/mail", max(r.rss_mib for r in ran), f"<= {share}x public-inbox-mda"
        if not mda:
            rows.append(skipped(what, figure, rss, target, pi_why))
            continue
        t = statistics.median(r.seconds for r in mda)
        rows.append(Row(what, figure, f"public-inbox-mda {t * 1e3:.0f} ms", o / t, rss, target, o / t <= share))
    profiled = subprocess.run([sys.executable, "-X", "importtime", *mailtrack(alone, "deliver")[1:]],
                              input=mails[0].replace(b"Message-ID: <", b"Message-ID: <again."), capture_output=True, check=True)
    total, top = importtime(profiled.stderr)
    alone_median = statistics.median(r.seconds for r in by_itself)
    rows.append(Row("deliver's imports (-X importtime)", f"{total * 1e3:.0f} ms", f"of deliver alone {alone_median * 1e3:.0f} ms",
                    total / alone_median, None, "", None))
    return rows, top


def importtime(stderr: bytes) -> tuple[float, list[str]]:
    """The seconds of all imports (the sum of each module's own time) and the 5 modules of the greatest
    cumulative time (a package's includes what it imports), as lines."""
    modules = []
    for line in stderr.decode(errors="replace").splitlines():
        if not line.startswith("import time:"):
            continue
        own, cumulative, name = line[len("import time:"):].split("|", 2)
        if own.strip().isdigit():
            modules.append((int(own) / 1e6, int(cumulative) / 1e6, name.strip()))
    top = sorted(modules, key=lambda m: -m[1])[:5]
    return sum(m[0] for m in modules), [f"  {c * 1e3:7.1f} ms cumulative  {o * 1e3:6.1f} ms own  {name}" for o, c, name in top]


def spool_busy(spool: Path) -> int:
    """Mails not yet processed: in incoming/new, incoming/cur, or waiting for their parent."""
    def count(d: Path) -> int:
        with contextlib.suppress(FileNotFoundError):
            return sum(1 for e in os.scandir(d) if not e.name.startswith(".") and not e.name.endswith(".json"))
        return 0
    return count(spool / "incoming" / "new") + count(spool / "incoming" / "cur") + count(spool / "waiting")


def smtp_rows(repo: Path, mails: list[bytes], tmp: Path) -> list[Row]:
    with serving(repo, tmp, "smtp", len(mails)) as (port, serve_rss):
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
        wait_drained(repo / "mailtrack" / "spool", began + 3600)
        drained = time.perf_counter() - began
    assert len(latencies) == len(mails), "SMTP: not every mail was accepted"
    rate, drain = len(mails) / accepted, len(mails) / drained
    p99 = sorted(latencies)[max(0, int(len(latencies) * 0.99) - 1)]
    rss = read_rss(serve_rss)
    return [Row("SMTP, 20 clients", f"{rate:.0f} mails/s", "", None, rss, ">= 500/s", rate >= 500),
            Row("SMTP p99 to the 250", f"{p99 * 1e3:.0f} ms", "", None, None, "< 50 ms", p99 < 0.05),
            Row("worker drain after the burst", f"{drain:.0f} mails/s", f"acceptance {rate:.0f}/s", rate / drain,
                rss, "keeps up with acceptance (>= its rate)", drain >= rate)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="size", const="quick", help="bases of 1k and 10k issues, 300 mails")
    size.add_argument("--tiny", action="store_const", dest="size", const="tiny", help="a smoke run of a few seconds")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--keep", metavar="DIR", help="build in DIR and leave it there (default: a temporary directory)")
    p.add_argument("--without", metavar="ANCHOR", action="append", default=[], choices=ANCHORS,
                   help="leave out an anchor (public-inbox, roundup): its rows print n/a; may be repeated")
    args = p.parse_args()
    small, large, n_mails, n_smtp, n_deliver, shows = SIZES[args.size or "full"]
    rng = random.Random(args.seed)
    with contextlib.ExitStack() as stack:
        tmp = Path(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mtbench-")))
        tmp.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        own_pycache(tmp / "pycache")
        print(f"bytecode compiled into {tmp / 'pycache'} (PYTHONPYCACHEPREFIX) in {time.perf_counter() - began:.1f} s", flush=True)
        mails = corpus(rng, n_mails, "imp", datetime(2024, 1, 1, tzinfo=UTC))
        mbox = tmp / "corpus.mbox"
        write_mbox(mbox, mails)
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
        warm_up(tmp, bases[0], mails[:8])  # the corpus's eighth mail is HTML-only
        rows: list[Row] = []

        def show(k: int) -> None:
            print(*(r.line() for r in rows[-k:]), sep="\n", flush=True)

        for n, label in ((small, "small base"), (large, "large base")):  # the cold list builds each base's index
            listed = list_rows(bases[n], label, names[n], shows)
            rows += listed
            show(len(listed))
        per_mail, ran = {}, {}
        for n, what in ((0, "import into the empty branch"), (small, "import into the small base"), (large, "import into the large base")):
            repo, anchor = copy_repo(bases[n], tmp / f"import-{n}"), copy_repo(bases[n], tmp / f"anchor-{n}")
            row, ran[n], theirs = import_row(what, repo, mbox, mails, "imp", anchor)
            per_mail[n] = (ran[n].seconds / n_mails, theirs)
            rows.append(row)
            show(1)
        others = run_anchors(tmp, mbox, n_mails, set(args.without))
        rows += anchor_rows(ran[large], n_mails, others)
        show(2)
        growth, anchor_growth = per_mail[large][0] / per_mail[0][0], per_mail[large][1] / per_mail[0][1]
        rows.append(Row("growth 0 -> large, cost per mail", f"{growth:.2f}x", f"fast-import {anchor_growth:.2f}x",
                        growth / anchor_growth, None, "<= 1.2x", growth <= 1.2))
        show(1)
        live = corpus(rng, n_deliver, "dlv", datetime(2025, 1, 1, tzinfo=UTC))
        delivered, top = deliver_rows(tmp, bases[large], live, others.pi, others.pi_why)
        rows += delivered
        show(3)
        burst = corpus(rng, n_smtp, "smtp", datetime(2026, 1, 1, tzinfo=UTC))
        rows += smtp_rows(copy_repo(bases[large], tmp / "smtp"), burst, tmp)
        show(3)
        rows.append(cold_import_row(copy_repo(bases[large], tmp / "import-cold"), mbox, mails, others))
        show(1)
    by_name = {r.what: r for r in rows}
    print(f"\nmailtrack at {small} and {large} issues, {n_mails} mails (ratio: ours / anchor, in time; RSS: peak MiB of our process)")
    print(f"{'work':<40}  {'mailtrack':>16}  {'anchor, same run':>26}  {'ratio':>7}  {'RSS':>5}  met   target")
    for what in ROWS:
        print(by_name[what].line())
    print("\ndeliver's imports, the 5 modules of the greatest cumulative time (python -X importtime):")
    print(*top, sep="\n")
    judged = [r for r in rows if r.met is not None]
    met = [r.what for r in judged if r.met]
    unknown = [r.what for r in rows if r.why]
    print(f"\ntargets met: {len(met)} of {len(judged)}"
          + (f" ({len(unknown)} more n/a: {', '.join(unknown)})" if unknown else "") + f": {', '.join(met) or 'none'}")


if __name__ == "__main__":
    main()

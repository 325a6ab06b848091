"""`mailtrack`: the gateway's command line (deliver, process, import, requeue, status, outbox, serve, web).

Exit codes follow sysexits.h, which is what MTAs read: `deliver` exits 0 once the mail is kept,
whatever became of it, and 75 (EX_TEMPFAIL: the MTA retries) on any failure before it is kept
(a broken configuration or repository too: 78 would make the MTA bounce the mail).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, NoReturn, cast

if TYPE_CHECKING:  # only for the types: the commands import what they need, when they need it
    import argparse
    import logging

    from mailtrack.config import Config
    from mailtrack.outbound.notifier import Notifier
    from mailtrack.queue.spool import Spool
    from mailtrack.tracker.store import Store
    from mailtrack.worker.admission import Verifier
    from mailtrack.worker.pipeline import Gateway

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_TEMPFAIL = 75
EX_CONFIG = 78

MAIL_LOGGERS = ("mailtrack.worker.pipeline", "mailtrack.worker.patchmail")  # the loggers of the line per mail (Outcome.line)


class Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _config(args: argparse.Namespace) -> Config:
    """The configuration `--config` names (or the embedded one), or Exit(EX_CONFIG)."""
    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.config import ConfigError, load

    try:
        return load(args.config)
    except ConfigError as e:
        raise Exit(EX_CONFIG, str(e)) from None


def _open(args: argparse.Namespace, durable: bool = True, config: Config | None = None) -> tuple[Config, Store, Spool]:
    """(config, store, spool) for a command (`config`: read already), or Exit with the sysexits code that fits."""
    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.queue.layout import default_root
    from mailtrack.queue.spool import Spool
    from mailtrack.tracker.store import Store, StoreError

    if config is None:
        config = _config(args)
    try:
        store = Store.open(args.repo or config.gateway.repo or None, durable=durable)
    except StoreError as e:
        raise Exit(EX_CONFIG, str(e)) from None
    spool_dir = Path(config.gateway.spool) if config.gateway.spool else default_root(Path(store.repo.controldir()))
    try:
        spool = Spool(spool_dir)
    except OSError as e:
        raise Exit(EX_TEMPFAIL, f"cannot use the spool {spool_dir}: {e.strerror}") from None
    if config.sync.remote:  # several gateways share the branch: each commit names the gateway that made it
        # imported here, not at the top: each command loads only what it needs (deliver starts lean)
        from mailtrack.mail.ids import gateway_trailer

        store.trailers = (gateway_trailer(config.sync.gateway_id),)
    return config, store, spool


def _gateway(config: Config, store: Store, spool: Spool) -> Gateway:
    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.worker.pipeline import Gateway

    return Gateway(config, store, spool, dkim=_dkim_check(config))


def _dkim_check(config: Config) -> Verifier | None:
    """Our own DKIM check where `access.verify_dkim` asks for it, else None."""
    if not config.access.verify_dkim:
        return None
    # imported here, and only when verify_dkim is on: dkimpy and dnspython are a tenth of deliver's start
    from mailtrack.worker.dkimcheck import signed_by

    return signed_by


def _one_line(text: str) -> str:
    return " ".join(text.split())


def cmd_deliver(args: argparse.Namespace) -> int:
    """Keep the mail on stdin, then process it, or leave it to the `mailtrack serve` worker that
    runs on the same spool (queue/handoff.py): then the mail is only spooled and the worker woken,
    and nothing of the branch, the templates or the worker is even imported. Should that worker
    die just after we saw it alive, the mail waits in the incoming queue for the next `serve` or
    `process`; we look again once it is kept, and process it here if the worker is gone by then."""
    try:
        raw = sys.stdin.buffer.read()
    except OSError as e:
        raise Exit(EX_TEMPFAIL, f"cannot read the mail on standard input: {e.strerror or e}") from None
    if not raw.strip():
        raise Exit(EX_DATAERR, "no message on standard input")
    if args.dry_run:
        _configure_logging(args)
        return _dry_run(args, raw)
    # Until the mail is kept, every failure is temporary for the MTA: it keeps the mail and retries.
    try:
        handed = _hand_over(args, raw)
        if handed is not None and handed[1]:
            return EX_OK  # a live worker has it
    except Exception as e:
        raise Exit(EX_TEMPFAIL, f"mail not kept: {_one_line(f'{type(e).__name__}: {e}')}") from None
    kept = handed[0] if handed is not None else None  # kept, but the worker went away meanwhile
    _configure_logging(args)  # here, not in main(): a handoff logs nothing and imports no logging
    try:
        config, store, spool = _open(args)
    except Exception as e:
        if kept is not None:  # in the spool: `mailtrack process` or the next `serve` takes it
            _log().error("%s: processing deferred: %s", kept, _one_line(str(e)))
            return EX_OK
        if isinstance(e, Exit):
            raise Exit(EX_TEMPFAIL, f"mail not kept: {_one_line(str(e))}") from None
        raise Exit(EX_TEMPFAIL, f"mail not kept: {_one_line(f'{type(e).__name__}: {e}')}") from None
    spool_id = kept if kept is not None else _keep(spool, raw)
    # Kept: from here on the answer to the MTA is 0, whatever happens to the processing.
    try:
        gateway = _gateway(config, store, spool)
        notifier = _notifier(config, spool, gateway)
        notifier.begin(store)  # a first mail on a fresh installation: its change is notified too
        claim = spool.incoming.claim_id(spool_id)
        if claim is not None:  # else a running `mailtrack serve` took it first
            from mailtrack.worker import runner  # here, not at start: deliver's start-up stays lean

            out = runner.work(gateway, claim)
            if out is not None and args.verbose:
                print(out.line(), file=sys.stderr)
        notifier.notify(store)  # queued only: the MTA does not wait on the relay
    except Exception as e:  # kept in the spool; `mailtrack process` picks it up again
        _log().error("%s: processing deferred: %s", spool_id, e)
    return EX_OK


def _keep(spool: Spool, raw: bytes) -> str:
    """`Spool.accept` for deliver: the spool id, or Exit(EX_TEMPFAIL) when the mail could not be kept."""
    try:
        return spool.accept(raw, source="deliver")
    except OSError as e:
        raise Exit(EX_TEMPFAIL, f"cannot keep the mail in {spool.root}: {e.strerror or e}") from None
    except Exception as e:
        raise Exit(EX_TEMPFAIL, f"cannot keep the mail in {spool.root}: {_one_line(str(e))}") from None


def _hand_over(args: argparse.Namespace, raw: bytes) -> tuple[str, bool] | None:
    """When a `mailtrack serve` worker runs on our spool: keep the mail there, wake the worker, and
    return (spool id, whether the worker is still alive now that the mail is kept). None: no
    worker, or the spool is not plainly found this way, or the mail could not be kept this way:
    the caller does the work (and says what is wrong).

    Lean on purpose (tests/test_handoff.py): of the configuration it reads only where the spool is
    (`_where`), since the worker that takes the mail works under its own; the repository is found
    without dulwich (`_git_dir`); the mail is kept by `handoff.keep` (the spool's own durable
    write, without logging or dataclasses)."""
    where = _where(args.config)
    if where is None:
        return None
    spool_dir, repo = where
    # imported here, not at the top: only the spool's own modules, so that a handoff stays lean
    from mailtrack.queue import handoff
    from mailtrack.queue.layout import Layout, default_root

    if spool_dir:
        root = Path(spool_dir)
    else:
        git_dir = _git_dir(args.repo or repo or None)
        if git_dir is None:
            return None
        root = default_root(Path(git_dir))
    layout = Layout(root)
    if not handoff.worker_alive(layout):
        return None
    try:
        spool_id = handoff.keep(layout, raw)
    except OSError:  # not kept: the spool as a whole then tries (and says why it cannot)
        return None
    handoff.wake(layout)
    if args.verbose:
        print(f"mailtrack: {spool_id}: kept in {root} for the serve worker", file=sys.stderr)
    return spool_id, handoff.worker_alive(layout)


def _where(config: str | None) -> tuple[str, str] | None:
    """`gateway.spool` and `gateway.repo` of the configuration file `config` ("" each when not set,
    as config.GatewayConfig has them), read with tomllib alone: importing mailtrack.config costs
    more than all the rest of a handoff. None when the file does not plainly say (unreadable, not
    TOML, not strings): `config.load` then decides, and says what is wrong."""
    if not config:
        return "", ""
    import tomllib

    try:
        with open(config, "rb") as f:
            table = tomllib.load(f)
    except (OSError, ValueError):  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return None
    gateway = table.get("gateway", {})
    if not isinstance(gateway, dict):
        return None
    spool, repo = gateway.get("spool", ""), gateway.get("repo", "")
    return (spool, repo) if isinstance(spool, str) and isinstance(repo, str) else None


class _NotPlain(Exception):
    """A `.git` file we do not read as dulwich would: let dulwich decide."""


def _git_dir(path: str | None) -> str | None:
    """The control directory `Store.open(path)` opens (tracker/store.py's find_repo: `path`, else
    $GIT_DIR, else found upwards from the current directory), found as dulwich's Repo finds it but
    without importing dulwich; None when there is none or it is not plain (dulwich then decides).
    tests/test_handoff.py checks that both find the same."""
    try:
        if path is not None:
            return _control_dir(path)
        env = os.environ.get("GIT_DIR")
        if env:
            return _control_dir(env)
        here = os.path.realpath(os.getcwd())
        while (found := _control_dir(here)) is None:
            parent = os.path.dirname(here)
            if parent == here:
                return None
            here = parent
        return found
    except (_NotPlain, OSError, ValueError):
        return None


def _control_dir(root: str) -> str | None:
    """dulwich's Repo(root).controldir(): `root/.git` (a directory with objects/, or a `gitdir:`
    file), else `root` itself when bare (objects/ and refs/); None when `root` is no repository."""
    hidden = os.path.join(root, ".git")
    if os.path.isfile(hidden):
        with open(hidden, "rb") as f:
            text = f.read()
        if not text.startswith(b"gitdir: "):
            raise _NotPlain(hidden)
        return os.path.join(root, text[len(b"gitdir: "):].rstrip(b"\r\n").decode("utf-8"))
    if os.path.isdir(os.path.join(hidden, "objects")):
        return hidden
    if os.path.isdir(os.path.join(root, "objects")) and os.path.isdir(os.path.join(root, "refs")):
        return root
    return None


def _dry_run(args: argparse.Namespace, raw: bytes) -> int:
    """What `deliver` would do with this mail, written to nothing: the spool is a scratch folder,
    the index a copy in memory, the commit and the replies only described."""
    import tempfile

    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.config import ConfigError, load
    from mailtrack.queue.spool import Spool
    from mailtrack.tracker.model import Person
    from mailtrack.tracker.store import Store, StoreError
    from mailtrack.worker.pipeline import Gateway

    try:
        config = load(args.config)
        store = Store.open(args.repo or config.gateway.repo or None)
    except (ConfigError, StoreError) as e:
        raise Exit(EX_CONFIG, str(e)) from None
    with tempfile.TemporaryDirectory(prefix="mailtrack-dry-run-") as scratch:
        gateway = Gateway(config, store, Spool(Path(scratch)), read_only=True, dkim=_dkim_check(config))
        try:
            mail = gateway.parse(raw)
            out = gateway.handle(raw, dry_run=True)
        finally:
            gateway.close()
    r = out.route
    lines = [
        f"Message-ID: {mail.message_id}",
        f"From:       {Person(mail.from_name, mail.from_addr).mailbox or '(none)'}",
        f"Subject:    {mail.subject}",
        f"Machine:    {mail.machine or 'no'}",
        f"Body:       {len(mail.body)} characters, reply text {len(mail.reply_text)}",
        f"Attachments: {', '.join(f'{a.filename} ({len(a.data)} bytes)' for a in mail.attachments) or 'none'}",
    ]
    if mail.skipped:
        lines.append(f"Skipped:    {'; '.join(mail.skipped)}")
    if r is not None and r.kind == "new":  # the name hashes the time of receipt: a real delivery makes another
        lines.append(f"Route:      new (its name comes from the time of receipt; {r.reason})")
    else:
        lines.append(f"Route:      {r.kind if r else '?'}{' ' + out.short if out.short else ''} ({r.reason if r else ''})")
    if out.commands is not None:
        lines.append("Commands:")
        lines += [f"  > {ln.text}\n    {ln.status}" for ln in out.commands.lines]
    text = _text(out.written, out.action == "created")
    if text:
        lines.append("Text:")
        lines += [f"  {ln}".rstrip() for ln in text[:TEXT_LINES]]
        if len(text) > TEXT_LINES:
            lines.append(f"  ({len(text) - TEXT_LINES} more line(s))")
    lines.append(f"Would:      {out.action}" + (f": {out.message}" if out.message else f" ({out.reason})" if out.reason else ""))
    if out.stage:
        lines.append(f"Decided in: {out.stage}")  # the pipeline stage (worker.pipeline.PIPELINE) that decided
    for path in out.files:
        lines.append(f"  write {path}")
        if path.endswith("/issue.xml") and path in out.written:
            lines += [f"    {ln}" for ln in _fields(out.written[path], path)]
    lines += [f"  reply {t} to {to}" for t, to in out.replies]
    print("\n".join(lines))
    return EX_OK


TEXT_LINES = 8  # of the text a dry run shows


def _text(written: dict[str, bytes], created: bool) -> list[str]:
    """The lines of the text a mail would leave: a new issue's description, else its (first) comment's."""
    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.tracker.model import Comment, Issue, is_comment_filename
    from mailtrack.tracker.store import issue_of

    for path, data in sorted(written.items()):
        directory, _, filename = path.rpartition("/")
        if created and filename == "issue.xml":
            return Issue.from_bytes(data, issue_of(path)).description.strip("\n").splitlines()
        if not created and is_comment_filename(filename):
            return Comment.from_bytes(data, filename).text.strip("\n").splitlines()
    return []


def _fields(data: bytes, path: str) -> list[str]:
    """`field: value` lines of an issue.xml that would be written."""
    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.fields import ISSUE_FIELDS
    from mailtrack.tracker.model import Issue
    from mailtrack.tracker.store import issue_of

    issue = Issue.from_bytes(data, issue_of(path))
    out = []
    for f in ISSUE_FIELDS:
        if f in ("description", "created", "modified"):
            continue
        value = issue.get(f)
        text = ", ".join(value) if isinstance(value, list) else str(value)
        if text:
            out.append(f"{f}: {text}")
    return out


def cmd_process(args: argparse.Namespace) -> int:
    config, store, spool = _open(args)
    spool.recover()
    gateway = _gateway(config, store, spool)
    notifier = _notifier(config, spool, gateway)
    notifier.begin(store)  # a fresh installation: the changes of the mail about to be processed are notified
    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.worker import runner  # the commands import what they need (see the top)

    n = runner.drain(gateway)
    runner.housekeeping(gateway)
    from datetime import timedelta

    spool.prune(timedelta(days=config.gateway.processed_retention_days))
    queued = notifier.notify(store)
    print(f"processed {n} mail(s), queued {queued} notification(s)", file=sys.stderr)
    return EX_OK


def _notifier(config: Config, spool: Spool, gateway: Gateway) -> Notifier:
    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.outbound.notifier import Notifier

    return Notifier(config, spool, project=gateway.project)


def cmd_outbox(args: argparse.Namespace) -> int:
    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.outbound.sender import OutboxSender, outbox_listing, outbox_message, retry_now, waiting

    config, _, spool = _open(args, durable=False)
    if (args.action == "show") != bool(args.id):
        raise Exit(EX_USAGE, "outbox show takes one ID" if args.action == "show" else f"outbox {args.action} takes no ID")
    if args.action == "show":
        spool_id = _spool_id(args.id, [w.id for w in waiting(spool)], "mail in the outbox")
        raw = outbox_message(spool, spool_id)
        if raw is None:
            raise Exit(EX_USAGE, f"{spool_id} left the outbox while we looked (sent?)")
        sys.stdout.buffer.write(raw)
        return EX_OK
    if args.action == "send" and not config.relay.host:
        raise Exit(EX_CONFIG, f"no relay is configured ([relay] host): nothing sent; {spool.counts()['outbox/new']} mail(s) wait")
    if args.action in ("retry", "send"):
        head = f"{retry_now(spool)['released']} delayed mail(s) made due now; " if args.action == "retry" else ""
        if not config.relay.host:
            print(f"{head}no relay is configured ([relay] host): nothing sent")
            return EX_CONFIG
        counts = OutboxSender(config.relay, spool).send_pending()
        print(head + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("sent", "deferred", "failed")))
        return _send_status(counts)
    print("\n".join(outbox_listing(spool)) or "the outbox is empty")
    if not config.relay.host and spool.counts()["outbox/new"]:
        print("no relay is configured ([relay] host): outgoing mail waits here")
    return EX_OK


def _send_status(counts: dict[str, int]) -> int:
    """The exit status of a pass of `outbox send`/`retry`, for cron: refused for good (69, someone
    must look) before deferred (75, it tries again by itself) before all sent (0)."""
    if counts.get("failed"):
        return EX_UNAVAILABLE
    if counts.get("deferred"):
        return EX_TEMPFAIL
    return EX_OK


def cmd_serve(args: argparse.Namespace) -> int:
    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.app.daemon import ListenError, serve
    from mailtrack.config import ConfigError

    config, store, spool = _open(args)
    try:
        return serve(config, store, spool, dkim=_dkim_check(config))
    except ListenError as e:
        raise Exit(EX_OSERR, str(e)) from None
    except ConfigError as e:  # what only the listeners can check (gateway.postmaster_forward)
        raise Exit(EX_CONFIG, str(e)) from None


def cmd_web(args: argparse.Namespace) -> int:
    """The read-only web view in the foreground, until SIGTERM or SIGINT."""
    import dataclasses
    import signal
    import threading

    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.config import ConfigError, load
    from mailtrack.tracker.store import StoreError
    from mailtrack.web.app import WebApp
    from mailtrack.web.server import WebServer

    try:
        config = load(args.config)
        web = dataclasses.replace(config.web, **{k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    except ConfigError as e:
        raise Exit(EX_CONFIG, str(e)) from None
    try:
        app = WebApp(config, args.repo)
    except StoreError as e:
        raise Exit(EX_CONFIG, str(e)) from None
    try:
        server = WebServer(app, web)
    except OSError as e:
        raise Exit(EX_OSERR, f"cannot listen on {web.host}:{web.port}: {e.strerror or e}") from None

    def on_signal(signum: int, frame: object) -> None:
        threading.Thread(target=server.stop, name="stop web", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"mailtrack: the web view of {app.project} on {server.url}", file=sys.stderr, flush=True)
    server.run()
    return EX_OK


def cmd_requeue(args: argparse.Namespace) -> int:
    _, _, spool = _open(args)
    failed = [i for queue in spool.queues for i, _ in queue.failures()]
    for given in args.ids:
        spool_id = _failed_id(given, failed)
        try:
            spool.requeue(spool_id)
        except KeyError as e:
            raise Exit(EX_USAGE, str(e.args[0])) from None
        print(f"requeued {spool_id}")
    return EX_OK


def _failed_id(given: str, failed: list[str]) -> str:
    """The failed mail's spool ID that `given` is, or a unique prefix of; Exit when it is neither."""
    return _spool_id(given, failed, "failed mail")


def _spool_id(given: str, ids: list[str], what: str) -> str:
    """The spool ID among `ids` that `given` is, or a unique prefix of; Exit when it is neither."""
    if given in ids:
        return given
    candidates = [i for i in ids if i.startswith(given)] if given else []
    if len(candidates) > 1:
        raise Exit(EX_USAGE, f"ambiguous spool ID {given!r}: {len(candidates)} {what}s start with it: {', '.join(candidates)}")
    if not candidates:
        raise Exit(EX_USAGE, f"no {what} with id {given!r}")
    return candidates[0]


def cmd_sync(args: argparse.Namespace) -> int:
    """One sync round with [sync] remote: 0 when level with it, 75 when it could not be reached."""
    config, store, spool = _open(args)
    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.outbound.notifier import Notifier
    from mailtrack.tracker.model import Person
    from mailtrack.tracker.store import StoreError
    from mailtrack.tracker.sync import sync_round
    from mailtrack.worker.replies import settle

    if not config.sync.remote:
        raise Exit(EX_CONFIG, "no [sync] remote is configured: this gateway shares its branch with no other")
    gw = config.gateway
    notifier = Notifier(config, spool)
    notifier.begin(store)
    try:
        result = sync_round(store, config.sync.remote, Person(gw.name or "mailtrack", gw.address))
    except StoreError as e:
        raise Exit(EX_TEMPFAIL, f"sync with {config.sync.remote}: {_one_line(str(e))}") from None
    notifier.notify(store)  # what the remote now holds; `serve` or `outbox send` sends it
    settle(config, store, spool)  # and the acks of the mails whose record the remote kept
    print(f"sync with {config.sync.remote}: {result}")
    return EX_OK if result.level else EX_TEMPFAIL


def _sync_status(config: Config, store: Store) -> None:
    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.tracker.sync import SyncState, ahead_behind

    state = SyncState.read(store)
    ahead, behind = ahead_behind(store, state)

    def when(t: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "never"

    print(f"sync {config.sync.remote} as {config.sync.gateway_id}")
    print(f"  {'ahead':<14} {ahead}  (commits of ours the remote lacks)")
    print(f"  {'behind':<14} {behind}  (commits of the remote's, as last fetched, we lack)")
    print(f"  {'last sync':<14} {when(state.last_sync)}")
    print(f"  {'last error':<14} {state.last_error or '(none)'}")


def cmd_status(args: argparse.Namespace) -> int:
    config, store, spool = _open(args, durable=False)
    if config.sync.remote:
        _sync_status(config, store)
    counts = spool.counts()
    print(f"spool {spool.root}")
    for queue, n in counts.items():
        print(f"  {queue:<14} {n}")
    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.queue.waiting import Waiting

    print(f"  {'waiting':<14} {Waiting(spool.layout).count()}  (replies waiting for their parent, at most {config.gateway.reply_wait}s)")
    if counts["outbox/new"] and not config.relay.host:
        print(f"  (no relay is configured: the {counts['outbox/new']} outgoing mail(s) wait in the outbox)")
    postmaster = spool.postmaster_mail()
    if any(postmaster.values()):
        forward = f"; forwarded to {config.gateway.postmaster_forward}" if config.gateway.postmaster_forward else ""
        print(f"postmaster: {postmaster['new']} new, {postmaster['cur']} read, in the Maildir {spool.layout.postmaster}{forward}")
    failures = spool.incoming.failures()
    if failures:
        print("failed:")
        for spool_id, reason in failures:
            print(f"  {spool_id}  {reason}")
    out_failures = spool.outbox.failures()
    if out_failures:
        print("outbox failed:")
        for spool_id, reason in out_failures:
            print(f"  {spool_id}  {reason}")
    recent = spool.recent(5)
    if recent:
        print("last processed:")
        for spool_id, mid in recent:
            print(f"  {spool_id}  {mid}")
    return EX_OK


def cmd_import(args: argparse.Namespace) -> int:
    # imported here, not at the top: each command loads only what it needs (deliver starts lean)
    from mailtrack.app.importer import import_path
    from mailtrack.tracker.store import StoreError

    config, store, spool = _open(args)
    gateway = _gateway(config, store, spool)
    try:
        counts = import_path(gateway, Path(args.path), progress=sys.stderr)  # its commits are never notified
    except FileNotFoundError:
        raise Exit(EX_NOINPUT, f"no such mbox or Maildir: {args.path}") from None
    except StoreError as e:  # a lock file that stops every write: the message names it
        raise Exit(EX_TEMPFAIL, f"import stopped: {e}") from None
    _notifier(config, spool, gateway).notify(store)  # what others changed meanwhile, as usual
    print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return EX_OK


OUTBOX_EXIT_CODES = ("exit status of retry and send (sysexits.h): 0 every mail due was sent (or none was due); "
                     "75 some were deferred (a temporary failure: a later pass tries again); 69 some were refused "
                     "for good (see `outbox` and `status`); 78 no relay is configured ([relay] host); 64 usage")


def build_parser() -> argparse.ArgumentParser:
    import argparse  # here, not at the top: a plain `deliver` is read without it (_deliver_args)

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            self.print_usage(sys.stderr)
            print(f"mailtrack: error: {message}", file=sys.stderr)
            raise SystemExit(EX_USAGE)

    p = Parser(prog="mailtrack", description="The mail gateway of an issues branch.")
    common = Parser(add_help=False)  # also after the command: `mailtrack deliver --repo R`
    for parser, default in ((p, None), (common, argparse.SUPPRESS)):
        parser.add_argument("--config", metavar="FILE", default=default, help="a TOML configuration (default: the embedded one)")
        parser.add_argument("--repo", metavar="PATH", default=default, help="the git repository (default: the one around the current directory)")
        parser.add_argument("-v", "--verbose", action="store_true", default=default or False, help="log what happens to each mail")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    sp = sub.add_parser("deliver", parents=[common], help="take one mail on stdin (for an MTA pipe), keep it, process it")
    sp.add_argument("--dry-run", action="store_true", help="print what would happen; write nothing")
    sp.set_defaults(func=cmd_deliver)
    sp = sub.add_parser("process", parents=[common], help="process every mail waiting in the spool")
    sp.set_defaults(func=cmd_process)
    sp = sub.add_parser("import", parents=[common], help="run every mail of an mbox or a Maildir through the gateway")
    sp.add_argument("path")
    sp.set_defaults(func=cmd_import)
    sp = sub.add_parser("requeue", parents=[common], help="put failed mail back in its queue")
    sp.add_argument("ids", nargs="+", metavar="ID", help="a failed mail's spool ID (as `status` lists it), or a unique prefix of one")
    sp.set_defaults(func=cmd_requeue)
    sp = sub.add_parser("status", parents=[common], help="what the spool and the outbox hold")
    sp.set_defaults(func=cmd_status)
    sp = sub.add_parser("outbox", parents=[common], help="list outgoing mail and why it waits; retry: send now",
                        description="list (default): each mail waiting to be sent, and why; show ID: its mail text; "
                        "retry: make delayed mail due and send it now; send: send what is due, once (cron, without serve).",
                        epilog=OUTBOX_EXIT_CODES)
    sp.add_argument("action", nargs="?", choices=["list", "show", "retry", "send"], default="list")
    sp.add_argument("id", nargs="?", metavar="ID", help="show: a spool ID (as the listing gives it), or a unique prefix of one")
    sp.set_defaults(func=cmd_outbox)
    sp = sub.add_parser("sync", parents=[common], help="one round with [sync] remote: push, fetch and merge, push again",
                        epilog="exit status: 0 level with the remote; 75 the remote could not be reached (or kept moving); 78 no [sync] remote")
    sp.set_defaults(func=cmd_sync)
    sp = sub.add_parser("serve", parents=[common], help="run the listeners, pollers, spool worker and outbox sender")
    sp.set_defaults(func=cmd_serve)
    sp = sub.add_parser("web", parents=[common], help="serve the read-only web view ([web] host and port)")
    sp.add_argument("--host", help="listen on this address instead of [web] host")
    sp.add_argument("--port", type=int, help="listen on this port instead of [web] port (0: any free one)")
    sp.set_defaults(func=cmd_web)
    return p


def _deliver_args(argv: Sequence[str]) -> argparse.Namespace | None:
    """The arguments build_parser() would make of a plain `deliver` command line, as an MTA gives it
    (`[--config F] [--repo R] [-v] deliver [the same]`, `--dry-run`), without building the parser:
    that costs a tenth of a handoff. None for anything else (help, abbreviations, a value that
    looks like an option, other commands): build_parser() then reads it, and says what is wrong."""
    values: dict[str, object] = {"config": None, "repo": None, "verbose": False, "dry_run": False}
    command = False
    words = iter(argv)
    for word in words:
        name, eq, value = word.partition("=")
        if name in ("--config", "--repo"):
            if not eq:
                value = next(words, "-")
                if value.startswith("-"):
                    return None
            values[name[2:]] = value
        elif word in ("-v", "--verbose"):
            values["verbose"] = True
        elif word == "--dry-run" and command:
            values["dry_run"] = True
        elif word == "deliver" and not command:
            command = True
        else:
            return None
    if not command:
        return None
    # what argparse.Namespace is, an attribute bag, without importing argparse
    return cast("argparse.Namespace", SimpleNamespace(**values, command="deliver", func=cmd_deliver))


def _log() -> logging.Logger:
    import logging

    return logging.getLogger("mailtrack")


def _configure_logging(args: argparse.Namespace) -> None:
    """Log to stderr, with -v what happens to each mail; by main() for every command but deliver,
    which does it once it knows it is not handing its mail over (a handoff imports no logging)."""
    import logging

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve" and not args.verbose:
        # A daemon's log, as Postfix keeps one: a line per mail (its Message-ID, what became of it,
        # the issue's short name). `deliver` stays quiet: an MTA may mail its stderr back.
        for name in MAIL_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _deliver_args(argv) or build_parser().parse_args(argv)
    if args.func is not cmd_deliver:
        _configure_logging(args)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, so that a reader gone away (`| head`) is seen below, not at exit
        return code
    except BrokenPipeError:  # `mailtrack outbox | head`: the reader has what it wanted, as with git
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK
    except Exit as e:
        print(f"mailtrack: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

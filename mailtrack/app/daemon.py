"""`mailtrack serve`: listeners, pollers, the spool worker, the notifier and the outbox sender.

The network edges only keep mail and wake the worker; the worker (this thread) processes the
spool, then the notifier turns the new commits into mail and the sender carries it out. SIGTERM
(or SIGINT) closes the listening sockets at once (from a helper thread: the worker may be busy
with a mail), stops the pollers, lets sessions already in DATA get their reply and the worker
finish the mail at hand, and exits 0; whatever is still spooled is processed on the next start.
With [sync] remote, the worker also pushes new commits and fetches every `interval` (`Syncer`:
tracker/sync.py does the round), and notifies once the remote holds the change.
The worker never dies on an error of its environment (a full disk, a vanished file): it logs,
backs off and goes on.
While the worker loop runs, serve advertises it on the spool (queue/handoff.py: the flock on
`serve.lock`, which no kill can leave stale) and listens on `wake.fifo` (`_handoffs`): a
`mailtrack deliver` that sees the worker alive only spools its mail and wakes it there, and the
worker takes the mail at once.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType

from mailtrack.config import Config, ListenConfig
from mailtrack.inbound.imap import ImapPoller
from mailtrack.inbound.smtp import SmtpListener
from mailtrack.mail.addresses import Ours
from mailtrack.outbound.notifier import Notifier
from mailtrack.outbound.sender import OutboxSender
from mailtrack.queue.handoff import Advert
from mailtrack.queue.spool import Claim, Spool
from mailtrack.tracker.model import Person, Project
from mailtrack.tracker.store import Store, StoreError
from mailtrack.tracker.sync import SyncState, sync_round
from mailtrack.web.app import WebApp
from mailtrack.web.server import WebServer
from mailtrack.worker import runner
from mailtrack.worker.admission import Verifier
from mailtrack.worker.pipeline import Gateway

log = logging.getLogger(__name__)

IDLE_SECONDS = 10.0  # how often the worker looks at the branch when no mail wakes it (CLI pushes, merges)
ERROR_BACKOFF = (1.0, 30.0)  # seconds the worker waits after a failed round: first, at most
DRAIN_SECONDS = 30.0  # how long a stopping listener waits for sessions in DATA
HANDOFF_TICK = 1.0  # how often the handoff thread looks at `stop`, and tries for serve.lock when another serve holds it
HANDOFF_RETRY = 60.0  # after an error of the handoff (serve.lock or wake.fifo unusable): a lasting fault, not a line a second


class ListenError(Exception):
    """A listener could not start (the port is in use, the socket path is not writable)."""


def where(lc: ListenConfig) -> str:
    return f"{lc.protocol} {'unix:' + lc.socket if lc.socket else f'{lc.host}:{lc.port}'}"


class Syncer:
    """When `serve` runs a sync round: new commits of ours at once, else every `interval`; after a
    failed round, again after a backoff (doubled up to the interval)."""

    def __init__(self, config: Config, store: Store, author: Person) -> None:
        self.config, self.store, self.author = config, store, author
        self.next_fetch = 0.0
        self.retry_at = 0.0
        self.backoff = ERROR_BACKOFF[0]

    def due(self) -> bool:
        if not self.config.sync.remote:
            return False
        now = time.monotonic()
        if now < self.retry_at:
            return False
        tip = self.store.tip()
        return now >= self.next_fetch or (tip is not None and tip.decode() != SyncState.read(self.store).level)

    def run(self) -> bool:
        """One round; True when it ended level. Errors are logged (and kept for `mailtrack status`)."""
        interval = self.config.sync.interval
        try:
            result = sync_round(self.store, self.config.sync.remote, self.author)
        except StoreError as e:
            log.warning("sync with %s: %s; again in %.0fs", self.config.sync.remote, e, self.backoff)
            self.retry_at = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, interval)
            return False
        log.info("sync: %s", result)
        self.backoff = ERROR_BACKOFF[0]
        self.next_fetch = time.monotonic() + interval
        self.retry_at = 0.0 if result.level else time.monotonic() + self.backoff
        return result.level


def serve(config: Config, store: Store, spool: Spool, *, dkim: Verifier | None = None) -> int:
    gw = config.gateway
    author = Person(gw.name or "mailtrack", gw.address)
    syncer = Syncer(config, store, author)
    if store.tip() is None and syncer.due():  # a new gateway of several: start from the shared branch
        syncer.run()
    if store.tip() is None:
        store.init(Project(closed_statuses=["closed"]), author)
        log.info("created the %s branch", store.branch)
    spool.recover()
    gateway = Gateway(config, store, spool, dkim=dkim)  # dkim: our own DKIM check, where verify_dkim asks for it
    notifier = Notifier(config, spool, project=gateway.project)
    notifier.begin(store)  # before any mail is taken: the first one's change is notified too
    sender = OutboxSender(config.relay, spool, helo=gw.address.rpartition("@")[2] or "localhost")
    stop, wake = threading.Event(), threading.Event()
    addresses = Ours.of(gw)
    listeners = [SmtpListener(lc, spool, addresses, on_accept=lambda _id: wake.set(), postmaster_forward=gw.postmaster_forward)
                 for lc in config.listen]

    def stop_accepting() -> None:
        for listener in listeners:
            try:
                listener.stop_accepting()
            except Exception:  # stop() in the finally closes it anyway
                log.exception("could not close the %s listener", where(listener.config))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        if not stop.is_set():
            threading.Thread(target=stop_accepting, name="stop accepting", daemon=True).start()
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    threads: list[threading.Thread] = []
    web: WebServer | None = None
    advert: Advert | None = None
    handoffs: threading.Thread | None = None
    try:
        for listener in listeners:
            try:
                listener.start()
            except OSError as e:
                reason = os.strerror(e.errno) if e.errno else str(e)  # asyncio's strerror repeats the address
                if e.errno == errno.EADDRINUSE and not listener.config.socket:
                    reason += "; to listen on another port, set port in a [[listen]] table of a --config file"
                elif e.errno == errno.EADDRINUSE:  # clear_stale_socket() found it alive, or bind() lost a race
                    reason = "the socket is in use: a listener answers on it (another mailtrack serve?)"
                elif e.errno == errno.EEXIST and listener.config.socket:
                    reason = "the path exists and is not a socket (left as it is)"
                raise ListenError(f"cannot listen on {where(listener.config)}: {reason}") from None
        pollers = [ImapPoller(ic, spool, on_accept=lambda _id: wake.set()) for ic in config.imap]
        for poller in pollers:
            t = threading.Thread(target=poller.run, args=(stop,), name=f"imap {poller.config.label}", daemon=True)
            t.start()
            threads.append(t)
        out_thread = threading.Thread(target=sender.run, args=(stop,), name="outbox", daemon=True)
        out_thread.start()
        threads.append(out_thread)
        listening = ", ".join(where(lc) for lc in config.listen)
        relay = f"relay {config.relay.host}:{config.relay.port}" if config.relay.host else "no relay: outgoing mail waits in the outbox"
        polling = "".join(f"; polling IMAP {ic.label}" for ic in config.imap)
        print(f"mailtrack: {gateway.project} on {store.branch} of {store.repo.path}: listening on {listening or 'nothing'}"
              f" for {gw.address} (commands: {gw.control_address}){polling}; {relay}", file=sys.stderr, flush=True)
        if config.web.enabled:  # the read-only web view ([web] enabled), in threads of its own, after the start line
            try:
                web = WebServer(WebApp(config, store.repo.path), config.web)
            except OSError as e:
                raise ListenError(f"cannot serve the web view on {config.web.host}:{config.web.port}: {e.strerror or e}") from None
            web.start()
            print(f"mailtrack: the web view on {web.url}", file=sys.stderr, flush=True)
        retention = timedelta(days=gw.processed_retention_days)
        backoff = ERROR_BACKOFF[0]
        try:  # the worker is about to run: `mailtrack deliver` may hand it its mail from now on
            advert = Advert(spool.layout)
        except OSError as e:  # no pipe to be woken by: deliver goes on processing its own mail
            log.warning("no handoff from mailtrack deliver: cannot open %s: %s", spool.layout.wake_fifo, e.strerror or e)
        else:
            try:
                advert.hold()
            except OSError as e:  # the handoff thread tries again each tick; deliver works alone meanwhile
                log.warning("no handoff from mailtrack deliver yet: %s: %s", spool.layout.serve_lock, e.strerror or e)
            handoffs = threading.Thread(target=_handoffs, args=(advert, stop, wake), name="handoffs", daemon=True)
            handoffs.start()
        while not stop.is_set():
            try:
                with store.batch():  # their commits a pack at a time (tracker.store.Store.batch)
                    for claim in spool.incoming.claims():
                        work(gateway, claim, pollers)
                        if stop.is_set():  # finish the mail at hand, leave the rest spooled
                            break
                if syncer.due():
                    syncer.run()
                    if gateway.replier.settle():  # the acks held until the remote holds their commit
                        sender.wake()
                try:
                    if notifier.notify(store):
                        sender.wake()
                except Exception:  # the notified tip is not advanced: it is tried again next time
                    log.exception("notification failed")
                runner.housekeeping(gateway)
                spool.prune(retention)
            except Exception:  # the worker never dies: what is claimed is recovered on the next start
                log.exception("worker: the round failed; going on in %.0fs", backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, ERROR_BACKOFF[1])
                continue
            backoff = ERROR_BACKOFF[0]
            wake.wait(min(IDLE_SECONDS, config.sync.interval) if config.sync.remote else IDLE_SECONDS)
            wake.clear()
    finally:
        stop.set()
        if advert is not None:  # a deliver from now on processes its mail itself
            advert.poke()  # the handoff thread sees `stop` at once
            if handoffs is not None:
                handoffs.join(timeout=30)
            advert.close()
        stop_accepting()  # at once, also when we stop for another reason than a signal
        for listener in listeners:
            if not listener.drain(DRAIN_SECONDS):
                log.warning("%s: sessions still in DATA after %.0fs: cut", where(listener.config), DRAIN_SECONDS)
            listener.stop()
        if web is not None:
            web.stop()
        for t in threads:
            t.join(timeout=30)
        gateway.close()
    log.info("stopped")
    return 0


def _handoffs(advert: Advert, stop: threading.Event, wake: threading.Event) -> None:
    """The worker's ear for `mailtrack deliver`: a wake on the pipe wakes the worker loop at once.
    While another serve on the same spool holds serve.lock, it is tried again each tick."""
    while not stop.is_set():
        try:
            if not advert.holding:
                advert.hold()
            if advert.wait(HANDOFF_TICK) and not stop.is_set():
                wake.set()
        except Exception as e:  # never dies: the worker still looks at the spool at each round meanwhile
            log.warning("handoffs: %s; again in %.0fs", e, HANDOFF_RETRY)
            stop.wait(HANDOFF_RETRY)


def work(gateway: Gateway, claim: Claim, pollers: list[ImapPoller]) -> None:
    """Process one mail; the folders of the mailbox it was fetched from (the source the spool
    recorded; none for other mail) follow the verdict: Failed when it ends in failed, back to the
    processed folder when it is processed after a requeue."""
    source = gateway.spool.source(claim.id) if pollers else ""
    runner.work(gateway, claim)
    owners = [p for p in pollers if p.owns(source)]
    if owners:  # once the verdict is on the disk: in a batch, when it is flushed
        gateway.store.when_durable(_Follow(owners, claim.id))


@dataclass
class _Follow:
    """The folders of the IMAP mailboxes a mail came from follow its verdict (tracker.store.Held)."""

    pollers: list[ImapPoller]
    spool_id: str

    def publish(self) -> None:
        for poller in self.pollers:
            try:
                poller.follow_spool([self.spool_id])
            except Exception as e:  # the spool has the verdict either way; the poller looks again at its next poll
                log.warning("%s: the folders of %s could not follow: %s", self.spool_id, poller.config.label, e)

    def discard(self) -> None:
        pass  # not processed after all: the mail is back in the queue, its folders stay

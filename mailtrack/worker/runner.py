"""The runner: takes kept mail from the spool and never dies on one (Mailman's runner).

A mail the gateway decided about leaves the incoming queue (`done`), goes to failed when the
decision was to hold it, or waits for its parent (queue.waiting) when it replies to a mail not
seen yet; an exception is our fault or our environment's, not a decision: the mail
is retried later and quarantined in failed after MAX_ATTEMPTS, with the traceback. A locked or
contended repository, a full or failing disk, is not the mail's fault: that attempt is counted as
interrupted (queue.spool), and the mail is tried again after ENVIRONMENT_DELAY.
"""

from __future__ import annotations

import errno
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from mailtrack.queue.spool import Claim
from mailtrack.tracker.store import ConcurrentUpdate, Locked
from mailtrack.worker.outcome import Action, Outcome
from mailtrack.worker.pipeline import Gateway

log = logging.getLogger(__name__)

ENVIRONMENT_DELAY = timedelta(seconds=30)  # before a mail stopped by a locked repository is tried again
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})  # the disk, not the mail


def environmental(e: BaseException) -> bool:
    """Whether an error is our environment's (a locked repository, a full disk), not the mail's."""
    return isinstance(e, (Locked, ConcurrentUpdate)) or (isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS)


def work(gateway: Gateway, claim: Claim) -> Outcome | None:
    """Process one claimed mail, then the waiting replies its commit threads (queue.waiting); never
    raises for a problem with the mail or with us. Returns what became of the claimed mail."""
    out = _work(gateway, claim)
    woken = gateway.woken_by(out.message_id) if out is not None and out.commit else []
    _take_again(gateway, woken)
    return out


def _take_again(gateway: Gateway, spool_ids: list[str]) -> int:
    """Put waiting mails back in the incoming queue and process them now, and those their commits
    thread in turn; return how many were taken (each at most once per release)."""
    todo, taken = list(spool_ids), 0
    while todo:
        spool_id = todo.pop(0)
        if not gateway.waiting.release(spool_id):
            continue  # another process took it back first
        claim = gateway.spool.incoming.claim_id(spool_id)
        if claim is None:  # a concurrent worker has it
            continue
        out = _work(gateway, claim)
        taken += 1
        if out is not None and out.commit:
            todo += [i for i in gateway.woken_by(out.message_id) if i not in todo]
    return taken


def _work(gateway: Gateway, claim: Claim) -> Outcome | None:
    try:
        out = gateway.handle(claim.read(), spool_id=claim.id)
    except Exception as e:
        if environmental(e):  # the repository or the disk, not the mail
            log.warning("%s: not processed, trying again in %ds: %s: %s", claim.id, ENVIRONMENT_DELAY.seconds, type(e).__name__, e)
            gateway.spool.incoming.interrupted(claim, f"{type(e).__name__}: {e}", delay=ENVIRONMENT_DELAY)
            return None
        error = traceback.format_exc()
        log.error("%s: processing failed: %s", claim.id, error.strip().splitlines()[-1])
        gateway.spool.incoming.retry_later(claim, error)
        return None
    if out.action == Action.HELD:
        # a decision about the mail, not a failure: logged as a warning (ERROR is for retries exhausted)
        gateway.spool.incoming.fail(claim, f"{out.reason}\nMessage-ID: {out.message_id}", level=logging.WARNING)
    elif out.action == Action.WAITING:
        gateway.park(claim, out)
    else:  # done once its commit is on the disk: in a batch, when the batch is flushed
        gateway.store.when_durable(Done(gateway, claim))
    return out


@dataclass
class Done:
    """A claimed mail whose effect is committed, or will be once the batch it is in is flushed
    (tracker.store.Held); `then` is called after it left the incoming queue."""

    gateway: Gateway
    claim: Claim
    then: Callable[[str], None] | None = None

    def publish(self) -> None:
        self.gateway.spool.incoming.done(self.claim)
        if self.then is not None:
            self.then(self.claim.id)

    def discard(self) -> None:  # the batch was not written: the mail is tried again
        self.gateway.spool.incoming.interrupted(self.claim, "its batch of commits was not written", delay=ENVIRONMENT_DELAY)


def drain(gateway: Gateway) -> int:
    """Process every waiting mail, their commits a batch at a time (tracker.store.Store.batch: one
    pack, one fsync, one ref move for up to BATCH_COMMITS mails); a mail leaves the incoming queue
    once its commit is on the disk. Return how many were taken."""
    n = 0
    try:
        with gateway.store.batch():
            for claim in gateway.spool.incoming.claims():
                work(gateway, claim)
                n += 1
    except Exception as e:  # the flush: its mails are back in the queue (Done.discard)
        if not environmental(e):
            raise
        log.warning("a batch of %d mails was not written, tried again in %ds: %s: %s", n, ENVIRONMENT_DELAY.seconds, type(e).__name__, e)
    return n


def housekeeping(gateway: Gateway) -> None:
    """Periodic work: report the partial patch series that waited past their timeout; queue (or
    delete) the replies a crashed writer left held (worker.replies); take the waiting replies
    whose parent is on the branch now (committed by another process) or whose gateway.reply_wait
    is over (they become what they would have been without waiting)."""
    from mailtrack.worker import patchmail  # here: `deliver` imports the runner, and only this needs the patches' code

    patchmail.expire(gateway)
    gateway.replier.settle()
    _take_again(gateway, gateway.due())

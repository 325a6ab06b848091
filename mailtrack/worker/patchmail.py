"""The worker's path for patch mails: admit, keep the part until its series is complete, apply the
series whole or not at all, and tell the sender what became of each patch.

The patches package does the work and returns results; the decisions about the mail (`Outcome`)
and the replies are made here, by the same admission and rights as any other mail.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from mailtrack.mail.parse import ParsedMail
from mailtrack.patches.detect import MAX_PATCHES, patch_numbers
from mailtrack.patches.series import Applier, PatchResult, PatchStatus, apply_series
from mailtrack.patches.staging import Staging
from mailtrack.tracker.rights import Sender
from mailtrack.worker import admission
from mailtrack.worker.outcome import Action, Outcome, Reply

if TYPE_CHECKING:  # the gateway hands itself in; pipeline imports this module
    from mailtrack.worker.pipeline import Gateway

log = logging.getLogger(__name__)


def staging(gw: Gateway) -> Staging:
    return Staging(gw.spool.layout.patches, gw.parse)


def applier(gw: Gateway) -> Applier:
    cfg = gw.config
    return Applier(gw.store, cfg.access, gw.identity, gw.parse,
                   max_series=cfg.gateway.max_patch_series_size, max_file=cfg.gateway.max_attachment_size)


def _report(gw: Gateway, mail: ParsedMail, out: Outcome, dry_run: bool, results: list[PatchResult], refused: bool,
            total: int = 0) -> None:
    """What became of each patch (`total`: of how many, when not all of them are in `results`)."""
    gw.replier.send(mail, Reply.PATCHES, out, dry_run, patches=results, refused=refused,
                    total=total or len(results), error=out.reason, hint="")


def _refuse_one(gw: Gateway, mail: ParsedMail, out: Outcome, dry_run: bool, n: int = 0) -> Outcome:
    _report(gw, mail, out, dry_run, [PatchResult(n, mail.subject, PatchStatus.REFUSED, [out.reason])], True)
    return out


def handle(gw: Gateway, mail: ParsedMail, *, dry_run: bool = False) -> Outcome:
    """Keep one patch mail with its series; apply the series once it is complete."""
    out = Outcome(Action.NOTHING, message_id=mail.message_id, stage="patches")
    if mail.machine:
        out.decide(gw.machine_action(), f"machine mail: {mail.machine}")
        return out
    if (problem := admission.sender_problem(mail)) is not None:
        out.decide(Action.HELD, problem)
        return out
    snap = gw.store.snapshot()
    vouched = admission.verified_by(mail, gw.config.access, gw.dkim)
    who = admission.sender(mail, vouched, snap, gw.index, gw.config.access)
    refusal = admission.patch_refusal(who, len(mail.raw), gw.config.gateway.max_patch_series_size, snap, gw.config.access, gw.project)
    if refusal is not None:
        out.decide(*refusal)
        return _refuse_one(gw, mail, out, dry_run) if out.action == Action.REJECTED else out
    n, m = patch_numbers(mail.subject) or (1, 1)
    if not (0 <= n <= m <= MAX_PATCHES) or m == 0:
        out.decide(Action.REJECTED, f"[PATCH {n}/{m}] is no part of a series of 1 to {MAX_PATCHES} patches")
        return _refuse_one(gw, mail, out, dry_run, n)
    if m == 1 and n == 1:
        return _apply(gw, mail, [mail.raw], who, dry_run, out)
    stage = staging(gw)
    folder = stage.slot(mail, n, m)
    if folder is None:
        out.decide(Action.DUPLICATE, f"patch {n}/{m} of that series was received already")
        return out
    if not stage.have(folder):  # the first mail of a new partial series: within the caps?
        gw_cfg = gw.config.gateway
        why = stage.over_cap(mail.from_addr, gw_cfg.max_pending_series_per_sender, gw_cfg.max_pending_series)
        if why:
            out.decide(Action.REJECTED, why)
            return _refuse_one(gw, mail, out, dry_run, n)
    if dry_run:
        out.decide(Action.PENDING, f"patch {n}/{m} of a series")
        return out
    stage.keep(folder, n, mail.raw, mail.from_addr)
    expire(gw, keep=folder)
    held = stage.held_bytes(folder)
    limit = gw.config.gateway.max_patch_series_size
    if m > MAX_PATCHES or held > limit:  # refuse now: a partial series may not fill the disk
        _refuse_partial(gw, stage, folder, mail, m, f"the series is too large ({m} patches, {held} bytes so far; "
                                                     f"at most {MAX_PATCHES} patches and {limit} bytes)", out)
        return out
    missing = set(range(1, m + 1)) - stage.have(folder)
    if missing:
        out.decide(Action.PENDING, f"patch {n}/{m}: waiting for {', '.join(str(i) for i in sorted(missing))}")
        return out
    out = _apply(gw, stage.first(folder, mail), stage.parts(folder, m), who, dry_run, out)
    stage.finish(folder, out.line(), refused=out.action == Action.REJECTED)
    return out


def _apply(gw: Gateway, reply_to: ParsedMail, raws: list[bytes], who: Sender, dry_run: bool, out: Outcome) -> Outcome:
    if dry_run:
        out.decide(Action.PENDING, "a patch series (not applied in a dry run)")
        return out
    results, tip = apply_series(applier(gw), raws, who)
    refused = any(r.status == PatchStatus.REFUSED for r in results)
    if refused:
        why = "; ".join(x for r in results for x in r.reasons if r.status == PatchStatus.REFUSED)
        cut = why if len(why) <= 300 else why[:300].rsplit(" ", 1)[0].rstrip(";,") + " ..."  # at a word's end
        out.decide(Action.REJECTED, "patch series refused: " + cut)
    elif tip is not None:
        out.decide(Action.CHANGED, f"patch series of {len(results)} applied")
        out.commit, out.message = tip.decode(), f"{len(results)} patch(es)"
    else:
        out.decide(Action.DUPLICATE, "every patch of the series was applied already")
    _report(gw, reply_to, out, dry_run, results, refused)
    return out


def _refuse_partial(gw: Gateway, stage: Staging, folder: Path, mail: ParsedMail, total: int, reason: str, out: Outcome) -> None:
    """Refuse a partial series: tell its sender, keep its mails in the spool's failed queue."""
    out.decide(Action.REJECTED, reason)
    first = stage.first(folder, mail)
    _report(gw, first, out, False, [PatchResult(0, first.subject, PatchStatus.REFUSED, [reason])], True, total)
    for raw in stage.kept(folder):
        gw.spool.hold(raw, f"{reason}\nMessage-ID: {gw.parse(raw).message_id}")
    stage.finish(folder, out.line(), refused=True)


def expire(gw: Gateway, keep: Path | None = None) -> None:
    """Report partial series that waited longer than gateway.patch_series_timeout, and keep their
    mails in failed; forget finished ones after the spool's retention."""
    stage = staging(gw)
    if not stage.root.is_dir():
        return
    timeout = gw.config.gateway.patch_series_timeout
    retention = gw.config.gateway.processed_retention_days * 86400
    for waiting in list(stage.expired(timeout, retention, keep=keep)):
        out = Outcome(Action.REJECTED, message_id=waiting.first.message_id, stage="patches")
        have = ", ".join(map(str, waiting.have))
        missing = ", ".join(str(n) for n in range(1, waiting.total + 1) if n not in waiting.have)
        _refuse_partial(gw, stage, waiting.folder, waiting.first, waiting.total,
                        f"incomplete patch series: got {have} of {waiting.total} within {timeout} s; missing {missing}"
                        " (send the series again; its mails are kept in failed, `mailtrack requeue` takes them back)", out)
        log.info("%s", out.line())

"""In: the parts of a patch series kept in the spool until the series is complete.

One folder per sender, thread and series length (`<spool>/patches/<key>/`), with one numbered
folder per attempt at the series (a generation): a v2 sent in reply to an unfinished v1 never mixes
with it. A generation holds its parts as `<n>.eml`; once taken it keeps only a `done` file naming
the Message-IDs it took (so a redelivery or a late cover letter is known) and what they answer.
A generation that was refused (timed out, too large, refused by the rights) claims none of its
Message-IDs: its mails, sent again or requeued from failed after a fix, make a new attempt.
Partial series are capped in number, in total and per sender (`over_cap`): each mail's work here
grows with what waits, so what waits is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mailtrack.mail.parse import ParsedMail
from mailtrack.patches.detect import patch_numbers, thread_root
from mailtrack.queue.spool import write_durably

REFUSED = "refused"  # the line in a `done` file that marks a refused attempt
SENDER = "sender"  # the file of a generation naming who sends it (for the per-sender cap)


@dataclass
class _Generation:
    """One attempt at a series in a series folder: the parts it holds (or took, once done)."""

    folder: Path
    done: bool
    numbers: set[int]  # the parts it holds, while pending
    ids: set[str]  # the Message-IDs of its parts
    replied_to: set[str]  # what its parts answer (In-Reply-To): its cover letter, or patch 1


@dataclass(frozen=True)
class Waiting:
    """A partial series: its folder, its first mail, the parts it has and how many it needs."""

    folder: Path
    first: ParsedMail
    have: list[int]
    total: int


class Staging:
    def __init__(self, root: Path, parse: Callable[[bytes], ParsedMail]) -> None:
        self.root, self.parse = root, parse

    def _base(self, mail: ParsedMail, total: int) -> Path:
        key = f"{mail.from_addr.lower()} {thread_root(mail)} {total}"
        return self.root / hashlib.sha1(key.encode()).hexdigest()[:20]

    def _generations(self, base: Path) -> list[_Generation]:
        if not base.is_dir():
            return []
        out = []
        for folder in sorted((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
            if (folder / "done").exists():
                lines = (folder / "done").read_text("utf-8", "replace").splitlines()[1:]
                if REFUSED in lines:  # a refused attempt: its mails may come again
                    continue
                ids = {ln[5:] for ln in lines if ln.startswith("part ")}
                out.append(_Generation(folder, True, set(), ids, {ln[6:] for ln in lines if ln.startswith("reply ")}))
                continue
            parts = {int(p.stem): self.parse(p.read_bytes()) for p in folder.glob("*.eml")}
            out.append(_Generation(folder, False, set(parts), {m.message_id for m in parts.values()},
                                   {m.in_reply_to for m in parts.values() if m.in_reply_to}))
        return out

    def slot(self, mail: ParsedMail, n: int, total: int) -> Path | None:
        """The generation folder this part goes to; None when it was received already.

        The thread decides: a part joins the generation holding the mail it answers, or whose parts
        answer it (a cover letter arriving after its patches), or whose parts answer the same mail as
        it does (shallow threading). A part that fits none, or whose number is taken there, opens a
        new generation: a second series of the same sender in the same thread (a v2 sent in reply to
        v1) never mixes with the first or replaces what is kept.
        """
        base = self._base(mail, total)
        gens = self._generations(base)
        mid, answers = mail.message_id, mail.in_reply_to
        if any(mid in g.ids or (g.done and mid in g.replied_to) for g in gens):
            return None  # a redelivery, or the late cover letter of a series applied already
        best, best_score = None, 0.0
        for g in reversed([g for g in gens if not g.done and n not in g.numbers]):  # the newest first
            score = (3.0 if answers in g.ids else 2.0 if mid in g.replied_to else 1.0 if answers and answers in g.replied_to
                     else 0.5 if not answers and not g.replied_to else 0.0)  # no threading at all: by number
            if score > best_score:
                best, best_score = g, score
        if best is not None:
            return best.folder
        return base / str(int(gens[-1].folder.name) + 1 if gens else 0)

    @staticmethod
    def keep(folder: Path, n: int, raw: bytes, sender: str = "") -> None:
        """Keep part `n` in its generation; the first part also records who sends the series."""
        folder.mkdir(parents=True, exist_ok=True)
        if sender and not (folder / SENDER).exists():
            write_durably(folder / SENDER, sender.lower().encode() + b"\n")
        write_durably(folder / f"{n:04d}.eml", raw)

    def _pending(self) -> Iterator[Path]:
        """The generations waiting for parts: not done, holding at least one."""
        for folder in self.root.glob("*/*"):
            if folder.is_dir() and not (folder / "done").exists() and next(folder.glob("*.eml"), None) is not None:
                yield folder

    def _sender_of(self, folder: Path) -> str:
        try:
            return (folder / SENDER).read_text("utf-8").strip()
        except OSError:  # kept by a version that did not record it: its first part says
            first = next(iter(sorted(folder.glob("*.eml"))), None)
            return self.parse(first.read_bytes()).from_addr.lower() if first is not None else ""

    def over_cap(self, sender: str, per_sender: int, total: int) -> str:
        """Why a new partial series from `sender` may not be kept ("" when it may): at most `total`
        partial series wait at once, and `per_sender` of one sender."""
        pending = list(self._pending())
        if len(pending) >= total:
            return (f"too many partial patch series are waiting for their parts ({len(pending)}; at most {total}):"
                    " send this series again later")
        mine = sum(1 for f in pending if self._sender_of(f) == sender.lower())
        if mine >= per_sender:
            return (f"{mine} partial patch series of yours are waiting for their parts (at most {per_sender}):"
                    " send their missing parts (or wait until they time out), then this series again")
        return ""

    @staticmethod
    def held_bytes(folder: Path) -> int:
        return sum(p.stat().st_size for p in folder.glob("*.eml"))

    @staticmethod
    def have(folder: Path) -> set[int]:
        return {int(p.stem) for p in folder.glob("*.eml")}

    @staticmethod
    def parts(folder: Path, total: int) -> list[bytes]:
        return [(folder / f"{i:04d}.eml").read_bytes() for i in range(1, total + 1)]

    @staticmethod
    def kept(folder: Path) -> list[bytes]:
        """Every mail the generation holds, the cover letter too."""
        return [p.read_bytes() for p in sorted(folder.glob("*.eml"))]

    def first(self, folder: Path, fallback: ParsedMail) -> ParsedMail:
        """The mail a report answers: the cover letter, else patch 1, else the mail at hand."""
        for name in ("0000.eml", "0001.eml"):
            if (folder / name).exists():
                return self.parse((folder / name).read_bytes())
        return fallback

    def finish(self, folder: Path, summary: str, *, refused: bool = False) -> None:
        """Mark a generation done with the Message-IDs it took (none, when it was `refused`), and let its mails go."""
        parts = sorted(folder.glob("*.eml"))
        mails = [self.parse(p.read_bytes()) for p in parts]
        lines = [f"part {m.message_id}" for m in mails] + [f"reply {m.in_reply_to}" for m in mails if m.in_reply_to]
        write_durably(folder / "done", "\n".join([summary, *([REFUSED] if refused else []), *lines]).encode() + b"\n")
        for p in parts:
            p.unlink()

    def expired(self, timeout: float, retention: float, keep: Path | None = None) -> Iterator[Waiting]:
        """The partial series that waited longer than `timeout` seconds (for the caller to refuse and
        `finish`); finished ones are forgotten after `retention` seconds."""
        now = time.time()
        for folder in sorted(self.root.glob("*/*")):
            if folder == keep or not folder.is_dir():
                continue
            if (folder / "done").exists():
                if now - (folder / "done").stat().st_mtime > retention:
                    (folder / "done").unlink()
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                        folder.parent.rmdir()
                continue
            parts = sorted(folder.glob("*.eml"))
            if not parts or now - max(p.stat().st_mtime for p in parts) < timeout:
                continue
            first = self.parse(parts[0].read_bytes())
            _, m = patch_numbers(first.subject) or (1, 1)
            yield Waiting(folder, first, sorted(int(p.stem) for p in parts), m)

"""Is this mail a patch of the issues branch? Cheap: a `[PATCH n/m]` subject and a diff touching
issue paths (or the cover letter of such a series), read before anything heavy is imported.

The rest of the patch path: `diff` (one mail as `git am` reads it), `staging` (a partial series
kept in the spool until it is complete), `series` (checked and applied whole or not at all),
`format` (out: `git issues push --mail` writes the branch's commits as a series).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from dulwich.patch import _parse_git_diff_header_paths

from mailtrack.mail.ids import SERIES_HEADER
from mailtrack.tracker.model import NAME_RE

if TYPE_CHECKING:
    from mailtrack.mail.parse import ParsedMail

MAX_PATCHES = 100  # patches in one series (its size in bytes is gateway.max_patch_series_size)
FILE_MODE = b"100644"

SUBJECT_TAG = re.compile(r"\[(?:RFC\s+)?PATCH\b([^\]]*)\]", re.I)
_NUMBERS = re.compile(r"(\d+)/(\d+)")
_DIFF_PATH = re.compile(rb"^diff --git (.*)$", re.M)
_STAT_LINE = re.compile(r"^\s*(?:\.\.\.)?\S*(?:issue\.xml|comment_\S*\.xml|project\.xml)\s*\|", re.M)


# --- in: recognising and gathering patch mails -----------------------------------------------


def patch_numbers(subject: str) -> tuple[int, int] | None:
    """(n, m) of a `[PATCH n/m]` subject, (1, 1) for `[PATCH]`; None when it is no patch subject."""
    found = SUBJECT_TAG.search(subject or "")
    if not found:
        return None
    nm = _NUMBERS.search(found.group(1))
    return (int(nm.group(1)), int(nm.group(2))) if nm else (1, 1)


def _diff_paths(body: bytes) -> list[str]:
    out = []
    for m in _DIFF_PATH.finditer(body):
        try:
            old, new = _parse_git_diff_header_paths(b"diff --git " + m.group(1).rstrip(b"\r"))
        except ValueError:  # a malformed quoted path: what it names is for the parser to refuse
            old, new = None, None
        for p in (old, new) if old is not None else (m.group(1).split(b" ")[0],):
            if p is not None:
                out.append(p.decode("utf-8", "replace").partition("/")[2])
    return out


def _touches_issues(path: str) -> bool:
    """A path of the issues branch's layout (an issue directory, project.xml) or an attempt on its
    `.git`: a diff of some other tree (`.github/`, `db/schema.sql`) is no patch of ours."""
    parts = path.split("/")
    return (path == "project.xml" or parts[0].lower() == ".git"
            or (len(parts) > 1 and len(parts[0]) == 2 and bool(NAME_RE.match(parts[0] + parts[1]))))


def is_patch_mail(mail: ParsedMail) -> bool:
    """A patch mail of the issues branch: a `[PATCH]` subject and a diff touching issue paths
    (or the cover letter of such a series)."""
    nm = patch_numbers(mail.subject)
    if nm is None:
        return False
    if nm[0] == 0:
        return mail.header(SERIES_HEADER) is not None or bool(_STAT_LINE.search(mail.body))
    if mail.header(SERIES_HEADER) is not None:  # written by `git issues push --mail`
        return True
    return any(_touches_issues(p) for p in _diff_paths(mail.body.encode("utf-8", "replace")))


def thread_root(mail: ParsedMail) -> str:
    if mail.references:
        return mail.references[0]
    return mail.in_reply_to or mail.message_id

"""Names git itself refuses in a tree never reach the branch: not by mail, not by patch, not by the CLI.

Each hostile name is one `git fsck --strict` flags (checked here with the real git, so the list
cannot go stale), and after each attack the branch passes the real `git fsck --strict`.
"""

from __future__ import annotations

import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest

from helpers.cli import deliver, run_cli
from helpers.mail import patch_mail, replies, text_of
from helpers.repos import git, make_repo, new_issue, read_comments, read_names, tip
from mailtrack.patches.format import file_diff
from mailtrack.tracker.gitnames import tree_name_problem
from mailtrack.tracker.model import attachment_name_problem
from mailtrack.tracker.store import issue_dir

# .git in any case, as the NTFS 8.3 short name, with trailing dots and spaces, an NTFS stream, a
# backslash; HFS+ ignorable code points; the .gitmodules/.gitattributes/.gitignore/.mailmap look-alikes.
HOSTILE = [
    ".git", ".GIT", ".Git", "GIT~1", "git~1", "Git~1.", "git~1 ", "git~1 . .", ".git.", ".git ..",
    ".git::$INDEX_ALLOCATION", "git~1:stream", "x\\.git", "x\\GIT~1", ".g\u200cit", "\ufeff.git", ".gi\u200dt\u206f",
    ".gitmodules", ".GITMODULES", ".gitmodules .", "gitmod~1", "GITMOD~4", "gi7eba~1", "GI7EBA~9", "gi7eb~12", "~1234567",
    ".git\u200cmodules", "x\\.gitmodules", "x\\gitmod~2",
    ".gitattributes", "gitatt~1", "gi7d29~3", ".gitignore", "gitign~2", "gi250a~1", ".mailmap", "mailma~1", "maba30~1",
]
# Names git takes: nothing here may be refused for looking like one of the above.
ORDINARY = ["notes.txt", "git~2", "GIT~1a", "gitmod~5", "gi7eba~0", ".github", "gitmodules", "git", "git~1x.txt", "~123456",
            "a.gitmodules", "report (1).pdf", "\u00e9t\u00e9.png"]

GITMODULES = b'[submodule "x"]\n\tpath = x\n\turl = -oops\n'  # fsck refuses it as a .gitmodules
GITATTRIBUTES = b"x" * 3000 + b" text\n"  # fsck refuses it as a .gitattributes (a line too long)


def fsck_complaints(repo: Path) -> list[str]:
    """What the real `git fsck --strict` says is wrong in `repo` (errors and warnings)."""
    r = subprocess.run(["git", "-C", str(repo), "fsck", "--strict", "--no-dangling"], capture_output=True, text=True, check=False)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith(("error", "warning", "fatal"))] + (
        [f"exit {r.returncode}"] if r.returncode else [])


def git_flags(tmp_path: Path, name: str) -> bool:
    """Whether the real git flags a tree holding `name`: as a file with hostile content, or as a symlink."""
    for mode, data in (("100644", GITMODULES), ("100644", GITATTRIBUTES), ("120000", b"target")):
        repo = make_repo(tmp_path / f"probe-{len(list(tmp_path.iterdir()))}")
        blob = git(repo, "hash-object", "-w", "--stdin", input=data).strip()
        tree = git(repo, "mktree", input=f"{mode} blob {blob}\t{name}\n".encode()).strip()
        commit = git(repo, "-c", "user.name=t", "-c", "user.email=t@x", "commit-tree", "-m", "x", tree).strip()
        git(repo, "update-ref", "refs/heads/main", commit)
        if fsck_complaints(repo):
            return True
    return False


def test_every_hostile_name_is_one_git_flags_and_the_rule_refuses(tmp_path: Path) -> None:
    """Each HOSTILE name makes the real `git fsck --strict` complain, and tree_name_problem refuses
    it; each ORDINARY name passes both (as an attachment too, unless it is a hidden file)."""
    flagged = {n: git_flags(tmp_path, n) for n in HOSTILE + ORDINARY}
    assert ({n: True for n in HOSTILE}, {n: False for n in ORDINARY}) == (
        {n: flagged[n] for n in HOSTILE}, {n: flagged[n] for n in ORDINARY})
    assert [] == [n for n in HOSTILE if not tree_name_problem(n)]
    assert [] == [n for n in ORDINARY if tree_name_problem(n) or (attachment_name_problem(n) and not n.startswith("."))]


def test_attachments_by_mail_with_hostile_names_leave_a_clean_branch(repo: Path) -> None:
    """A new issue by `mailtrack deliver` carrying one attachment under every hostile name: the
    issue is filed with all of them, under names an attachment may take, and the branch passes
    `git fsck --strict`."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = "Mallory <mallory@example.org>", "issues@tracker.localhost", "Names", "<n@x>"
    msg.set_content("See the attachments.\n")
    for i, name in enumerate(HOSTILE):
        msg.add_attachment(GITMODULES + f"# {i}\n".encode(), maintype="application", subtype="octet-stream", filename=name)
    r = deliver(repo, msg.as_bytes())
    assert (0, b"") == (r.returncode, r.stderr)
    [name] = read_names(repo)
    [comment] = [c for c in read_comments(repo, name) if c.attachments]
    assert (len(HOSTILE), []) == (len(comment.attachments), [a for a in comment.attachments if attachment_name_problem(a)])
    assert [] == fsck_complaints(repo)


def quote_path(path: str) -> bytes:
    """A path as git writes it in a diff header when it must be quoted: C escapes, octal bytes."""
    named = {ord("\n"): "\\n", ord("\t"): "\\t", ord('"'): '\\"', ord("\\"): "\\\\"}
    return ('"' + "".join(named.get(b) or (chr(b) if 32 <= b < 127 else f"\\{b:03o}") for b in path.encode()) + '"').encode()


def patch_adding(path: str, data: bytes, mid: str) -> bytes:
    """A `[PATCH]` mail from Mallory adding the file `path` to the issues branch, its paths quoted as git quotes them."""
    diff = file_diff("P", None, data)
    diff = diff.replace(b"a/P", quote_path("a/" + path)).replace(b"b/P", quote_path("b/" + path))
    return patch_mail(diff, "[PATCH] add a file", mid=mid)


@pytest.mark.parametrize("leaf", ["GIT~1", "gitmod~1", "~1234567", ".git", ".gitmodules", "x\\.git", ".g\u200cit", "gi7d29~3"])
def test_a_patch_adding_a_hostile_name_is_refused_with_a_reason(repo: Path, leaf: str) -> None:
    """A patch mail (by `mailtrack deliver`) adding an attachment under a hostile name to an issue:
    refused, the sender told why, the branch unchanged and clean. The same patch with an ordinary
    name is applied (the refusal is about the name)."""
    name = new_issue(repo, "Printer on fire")
    before = tip(repo)
    r = deliver(repo, patch_adding(f"{issue_dir(name)}/{leaf}", GITMODULES, "<p1@x>"))
    assert (0, before) == (r.returncode, tip(repo))
    [reply] = replies(repo)
    said = " ".join(text_of(reply).split())
    assert (True, True) == ("was refused" in said, f"{issue_dir(name)}/{leaf}:" in said), said
    assert [] == fsck_complaints(repo)
    assert 0 == deliver(repo, patch_adding(f"{issue_dir(name)}/notes.txt", b"fine\n", "<p2@x>")).returncode
    assert before != tip(repo)


def test_a_quoted_patch_path_holding_a_newline_is_refused(repo: Path) -> None:
    """`diff --git "a/xx/.../x\\ny" "b/..."`: git quotes a newline in a path; such a patch is refused
    with a reason, and nothing is written."""
    name = new_issue(repo, "Printer on fire")
    before = tip(repo)
    r = deliver(repo, patch_adding(f"{issue_dir(name)}/x\ny", b"x\n", "<nl@x>"))
    assert (0, before) == (r.returncode, tip(repo))
    [reply] = replies(repo)
    assert "a control character in the path" in " ".join(text_of(reply).split())
    assert [] == fsck_complaints(repo)


@pytest.mark.parametrize("leaf", HOSTILE)
def test_the_cli_refuses_to_attach_a_hostile_name(repo: Path, tmp_path: Path, leaf: str) -> None:
    """`git issues comment ID --attach FILE` with FILE under a hostile name: exit 1, one line saying
    why, nothing written; the branch passes `git fsck --strict`."""
    name = new_issue(repo, "Printer on fire")
    before = tip(repo)
    f = tmp_path / "files" / leaf
    f.parent.mkdir(exist_ok=True)
    f.write_bytes(GITMODULES)
    r = run_cli(repo, "comment", name[:7], "-m", "see attached", "--attach", str(f))
    assert (1, before) == (r.code, tip(repo))
    assert "cannot be an attachment's name" in r.err
    assert [] == fsck_complaints(repo)


def test_a_comment_attachment_named_git_tilde_1_is_kept_renamed(repo: Path) -> None:
    """A plain mail attachment named `GIT~1` on a comment: kept as `attachment-GIT~1`."""
    name = new_issue(repo, "Printer on fire")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = "Alice <alice@example.org>", "issues@tracker.localhost", f"[repo #{name[:7]}] x", "<g@x>"
    msg.set_content("Attached.\n")
    msg.add_attachment(b"data\n", maintype="application", subtype="octet-stream", filename="GIT~1")
    assert 0 == deliver(repo, msg.as_bytes()).returncode
    assert ["attachment-GIT~1"] == [a for c in read_comments(repo, name) for a in c.attachments]
    assert [] == fsck_complaints(repo)

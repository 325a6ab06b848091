"""Who may change what, one answer for every way in: a stranger's patch mail is judged as the same
change by mail would be, and what no mail can change (someone's comment or attachment, an issue's
<author>) is refused to all but maintainers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from helpers.cli import run_cli
from helpers.repos import git, make_gateway, new_issue, read_comments, read_issue, tip
from mailtrack.config import AccessConfig, ConfigError
from mailtrack.worker.pipeline import Gateway

MALLORY = ("Mallory", "mallory@example.net")
BOSS = ("The Boss", "boss@example.org")  # a maintainer of the `gw` fixture


def _issue_with_comment(repo: Path) -> tuple[str, str, str]:
    """Jane's issue with Jane's comment and attachment: (issue, comment path, attachment path)."""
    name = new_issue(repo, "Jane's issue")
    (repo / "log.txt").write_text("jane's log\n")
    assert 0 == run_cli(repo, "comment", name[:7], "-m", "Jane's own words", "--attach", str(repo / "log.txt")).code
    files = git(repo, "ls-tree", "--name-only", f"issues:{name[:2]}/{name[2:]}").split()
    [comment] = [f for f in files if f.startswith("comment_") and "Jane's own words" in git(repo, "show", f"issues:{name[:2]}/{name[2:]}/{f}")]
    return name, f"{name[:2]}/{name[2:]}/{comment}", f"{name[:2]}/{name[2:]}/log.txt"


def _patch_mail(repo: Path, tmp: Path, who: tuple[str, str], edit: dict[str, bytes]) -> bytes:
    """A patch mail from `who` of one commit writing `edit` (path -> content) on the issues branch,
    made with the real git in a clone, as `git format-patch` mails it."""
    work = tmp / f"clone-{who[1]}"
    subprocess.run(["git", "clone", "-q", "-b", "issues", str(repo), str(work)], check=True, capture_output=True)
    for path, data in edit.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(data)
        git(work, "add", path)
    git(work, "-c", f"user.name={who[0]}", "-c", f"user.email={who[1]}", "commit", "-q", "-m", "an edit")
    return subprocess.run(["git", "-C", str(work), "format-patch", "-1", "--stdout"], capture_output=True, check=True).stdout


def test_a_strangers_patch_may_not_rewrite_someone_elses_comment(gw: Gateway, repo: Path, tmp_path: Path) -> None:
    """Mallory's patch rewriting Jane's comment is refused with the reason, and the comment stays Jane's words."""
    name, comment, _ = _issue_with_comment(repo)
    text = git(repo, "show", f"issues:{comment}").replace("Jane's own words", "Jane admits it was her fault")
    before = tip(repo)
    out = gw.handle(_patch_mail(repo, tmp_path, MALLORY, {comment: text.encode()}))
    assert ("rejected", before) == (out.action, tip(repo))
    assert f"{comment}: mallory@example.net may not rewrite a comment on issue {name[:7]}" in out.reason
    assert ["Jane's own words"] == [c.text for c in read_comments(repo, name) if "words" in c.text]


def test_a_strangers_patch_may_not_replace_someone_elses_attachment(gw: Gateway, repo: Path, tmp_path: Path) -> None:
    """Mallory's patch replacing Jane's attachment is refused, and the attachment keeps its bytes."""
    name, _, attachment = _issue_with_comment(repo)
    before = tip(repo)
    out = gw.handle(_patch_mail(repo, tmp_path, MALLORY, {attachment: b"malware\n"}))
    assert ("rejected", before) == (out.action, tip(repo))
    assert f"{attachment}: mallory@example.net may not rewrite an attachment on issue {name[:7]}" in out.reason
    assert "jane's log\n" == git(repo, "show", f"issues:{attachment}")


def test_a_strangers_patch_may_not_change_an_issues_author(gw: Gateway, repo: Path, tmp_path: Path) -> None:
    """Mallory's patch naming himself the author of Jane's issue is refused: no mail can change <author>."""
    name, _, _ = _issue_with_comment(repo)
    path = f"{name[:2]}/{name[2:]}/issue.xml"
    xml = git(repo, "show", f"issues:{path}").replace("jane@example.org", "mallory@example.net")
    before = tip(repo)
    out = gw.handle(_patch_mail(repo, tmp_path, MALLORY, {path: xml.encode()}))
    assert ("rejected", before) == (out.action, tip(repo))
    assert f"issue {name[:7]}: mallory@example.net may not change its <author>" in out.reason
    assert "jane@example.org" == read_issue(repo, name).author.email


def test_a_strangers_patch_may_not_comment_in_someone_elses_name(gw: Gateway, repo: Path, tmp_path: Path) -> None:
    """A new comment whose <author> is not the patch's sender is refused, as a mail always comments as its sender."""
    name, comment, _ = _issue_with_comment(repo)
    forged = git(repo, "show", f"issues:{comment}").replace("Jane's own words", "I withdraw this report")
    leaf = re.sub(r"_[0-9a-f]{40}\.xml$", "_" + "e" * 40 + ".xml", comment.rpartition("/")[2])  # another comment file
    before = tip(repo)
    out = gw.handle(_patch_mail(repo, tmp_path, MALLORY, {f"{name[:2]}/{name[2:]}/{leaf}": forged.encode()}))
    assert ("rejected", before) == (out.action, tip(repo))
    assert "mallory@example.net may not write a comment in the name of Jane Doe <jane@example.org>" in out.reason


def test_a_maintainers_patch_may_correct_a_comment(gw: Gateway, repo: Path, tmp_path: Path) -> None:
    """The same rewrite by a maintainer lands: what no mail can change is theirs to change."""
    name, comment, _ = _issue_with_comment(repo)
    text = git(repo, "show", f"issues:{comment}").replace("Jane's own words", "Jane's own words (typo fixed)")
    out = gw.handle(_patch_mail(repo, tmp_path, BOSS, {comment: text.encode()}))
    assert "changed" == out.action, out.reason
    assert "Jane's own words (typo fixed)" in git(repo, "show", f"issues:{comment}")


def test_a_comment_by_patch_is_allowed_as_a_comment_by_mail_is(gw: Gateway, repo: Path, tmp_path: Path) -> None:
    """A stranger's own new comment (author = sender) lands, as the same comment by mail would."""
    name, comment, _ = _issue_with_comment(repo)
    own = (git(repo, "show", f"issues:{comment}").replace("Jane Doe", "Mallory").replace("jane@example.org", "mallory@example.net")
           .replace("Jane's own words", "Me too"))
    leaf = re.sub(r"_[0-9a-f]{40}\.xml$", "_" + "e" * 40 + ".xml", comment.rpartition("/")[2])
    out = gw.handle(_patch_mail(repo, tmp_path, MALLORY, {f"{name[:2]}/{name[2:]}/{leaf}": own.encode()}))
    assert "changed" == out.action, out.reason
    assert "Me too" in [c.text for c in read_comments(repo, name)]


def test_every_alias_of_a_field_names_it_in_access_fields(repo: Path) -> None:
    """`[access.fields] assign` is `assigned`, as `Assign:` is in a mail; an unknown name is still an error."""
    access = AccessConfig(fields={"assign": ["anyone"], "cc": ["known"]})
    assert {"assigned": ["anyone"], "carbons": ["known"]} == access.fields
    try:
        AccessConfig(fields={"assignment": ["anyone"]})
    except ConfigError as e:
        assert "unknown field 'assignment'" in str(e)
    else:
        raise AssertionError("an unknown field name was taken")
    g = make_gateway(repo, fields={"assign": ["anyone"]})
    try:
        assert ("access.fields.assigned", ["anyone"]) == g.config.access.rules_for("assigned")
    finally:
        g.close()
        g.store.close()

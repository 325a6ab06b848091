"""Issue commits as patch mails: `git format-patch` + `git send-email` and `git issues push --mail` into the gateway."""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.mail import make_mail, outbox
from helpers.ports import wait_for
from helpers.repos import (
    default_spool,
    git,
    git_bytes,
    issues_repo,
    make_gateway,
    new_issue,
    read_comments,
    read_issue,
    read_names,
    tip,
    titles,
    tree,
)
from helpers.servers import ADDRESS, Served, clone, git_send_email, send_email
from mailtrack.config import AccessConfig, Config, GatewayConfig
from mailtrack.patches.format import file_diff
from mailtrack.queue.spool import Spool
from mailtrack.tracker.store import Store
from mailtrack.worker import runner
from mailtrack.worker.pipeline import Gateway

MAX_SERIES_BYTES = GatewayConfig().max_patch_series_size


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    """An in-process gateway (project "proj", as shipped) on a repository with an issues branch."""
    g = make_gateway(issues_repo(tmp_path / "gw"), reply_rate_limit=GatewayConfig().reply_rate_limit)
    yield g
    g.close()
    g.store.close()


def gw_path(g: Gateway) -> Path:
    return Path(g.store.repo.path)


def test_format_patch_series_via_git_send_email_lands_on_the_gateway(served: Served, tmp_path: Path) -> None:
    """A series made with `git format-patch` and sent with `git send-email` leaves the gateway's branch with the clone's tree."""
    repo, server, c = served.repo, served.server, served.clone
    a = new_issue(c, "Offline one")
    b = new_issue(c, "Offline two")
    assert 0 == run_cli(c, "comment", a[:7], "-m", "a comment written on a train").code
    files = sorted(Path(p) for p in git(c, "format-patch", "-o", str(tmp_path / "out"), "origin/issues..issues").split())
    assert 3 == len(files)
    send_email(files, server.port)
    wait_for(lambda: read_names(repo) == sorted([a, b]) and tree(repo) == tree(c), timeout=30, what="the series applied")
    assert (sorted([a, b]), tree(c)) == (read_names(repo), tree(repo))
    assert f"Carol Clone <carol@example.org>|proj <{ADDRESS}>" == git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", "issues").strip()
    # git send-email dates each mail when it sends it, so only subjects and authors travel unchanged
    assert git(c, "log", "-3", "--format=%s|%an <%ae>", "issues") == git(repo, "log", "-3", "--format=%s|%an <%ae>", "issues")
    git(repo, "fsck", "--strict", "--no-dangling")


def test_push_mail_sends_issues_comments_attachments_and_fields(served: Served, tmp_path: Path) -> None:
    """`git issues push --mail` brings new issues, a binary attachment and field changes; a pull then levels the clone."""
    repo, server, c = served.repo, served.server, served.clone
    git(c, "config", "sendemail.smtpServer", "127.0.0.1")
    git(c, "config", "sendemail.smtpServerPort", str(server.port))
    a = new_issue(c, "Crash on start")
    png = tmp_path / "shot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\0\0" + bytes(range(256)) * 40)
    assert 0 == run_cli(c, "comment", a[:7], "-m", "screenshot attached", "--attach", str(png)).code
    assert 0 == run_cli(c, "set", a[:7], "status=open", "priority=high").code
    r = run_cli(c, "push", "--mail", "--to", ADDRESS)
    assert (0, f"sent 3 commit(s) as 4 mail(s) to {ADDRESS}\n") == (r.code, r.out)
    wait_for(lambda: tree(repo) == tree(c), timeout=30, what="the pushed series")
    assert git(c, "log", "-3", "--format=%s|%an|%ad", "issues") == git(repo, "log", "-3", "--format=%s|%an|%ad", "issues")
    issue = read_issue(repo, a)
    [comment] = read_comments(repo, a)
    assert ("open", "high", ["shot.png"]) == (issue.status, issue.priority, comment.attachments)
    assert png.read_bytes() == git_bytes(repo, "show", f"issues:{a[:2]}/{a[2:]}/shot.png")
    assert 0 == run_cli(c, "pull").code
    assert (tree(repo), tip(repo)) == (tree(c), tip(c))  # level: the same tip, so nothing is sent twice
    again = run_cli(c, "push", "--mail", "--to", ADDRESS)
    assert (0, "", "nothing to send\n") == (again.code, again.out, again.err)
    # the report is queued just after the branch moves: wait for it as well
    [patch_reply] = wait_for(lambda: [m for m in outbox(repo) if "Re: [PATCH 0/3]" in str(m["Subject"])], what="the report")
    assert 3 == patch_reply.get_content().count("    applied as ")
    git(repo, "fsck", "--strict", "--no-dangling")


def test_push_mail_output_is_accepted_by_git_am(tmp_path: Path) -> None:
    """`git issues push --stdout` writes a series, binary attachment included, that the real `git am` applies to the same tree."""
    repo = issues_repo(tmp_path / "gw")
    c = clone(repo, tmp_path / "clone")
    a = new_issue(c, "Binary please")
    blob = tmp_path / "data.bin"
    blob.write_bytes(os.urandom(3000) + b"\0")
    assert 0 == run_cli(c, "comment", a[:7], "-m", "with data", "--attach", str(blob)).code
    assert 0 == run_cli(c, "close", a[:7]).code
    r = run_cli(c, "push", "--stdout")
    assert 0 == r.code, r.err
    assert "Subject: [PATCH 0/3] issues: 3 commits" in r.out
    mbox = r.out[re.search(r"^From [0-9a-f]{40} ", r.out[1:], re.M).start() + 1 :]  # type: ignore[union-attr]  # git am stops at a cover letter
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(repo), str(other))
    git(other, "checkout", "-q", "-b", "issues", "origin/issues")
    git(other, "am", "-q", input=mbox.encode())
    assert tree(c) == tree(other)
    assert git(c, "log", "-3", "--format=%s|%an|%ad", "issues") == git(other, "log", "-3", "--format=%s|%an|%ad", "issues")


def test_series_on_an_old_tip_merges_field_wise(gw: Gateway, tmp_path: Path) -> None:
    """A series made before someone else changed the same issue keeps both changes, field by field."""
    repo = gw_path(gw)
    a = new_issue(repo, "Shared issue")  # by Jane, who may change it from her clone
    c = clone(repo, tmp_path / "clone", ("Jane Doe", "jane@example.org"))
    assert 0 == run_cli(repo, "set", a[:7], "priority=high").code
    assert 0 == run_cli(c, "set", a[:7], "status=open").code
    out_dir = tmp_path / "out"
    assert 0 == run_cli(c, "push", "-o", str(out_dir)).code
    [f] = sorted(out_dir.iterdir())
    out = gw.handle(f.read_bytes())
    issue = read_issue(repo, a)
    assert ("changed", "high", "open") == (out.action, issue.priority, issue.status)
    before = tip(repo)
    again = gw.handle(f.read_bytes())
    assert ("duplicate", before) == (again.action, tip(repo))


def test_change_by_someone_without_the_right_is_refused(gw: Gateway, tmp_path: Path) -> None:
    """A field change mailed by someone who is neither reporter, assignee, owner nor maintainer is refused."""
    repo = gw_path(gw)
    a = new_issue(repo, "Jane's issue")
    c = clone(repo, tmp_path / "clone")
    assert 0 == run_cli(c, "set", a[:7], "status=closed").code
    d = tmp_path / "out"
    assert 0 == run_cli(c, "push", "-o", str(d)).code
    before = tip(repo)
    [f] = sorted(d.iterdir())
    out = gw.handle(f.read_bytes())
    assert ("rejected", before, "new") == (out.action, tip(repo), read_issue(repo, a).status)
    assert (f"carol@example.org may not change the status of issue {a[:7]} (allowed by access.change: reporter,"
            " assignee, owner, maintainer)") in " ".join(outbox(repo)[-1].get_content().split())


def test_access_fields_rule_the_fields_a_patch_changes(tmp_path: Path) -> None:
    """[access.fields] holds for patch mails too: a stranger may tag (tags = anyone) but not close."""
    repo = issues_repo(tmp_path / "gw")
    a = new_issue(repo, "Jane's issue")
    store = Store.open(repo, durable=True)
    config = Config(gateway=GatewayConfig(project="proj"), access=AccessConfig(fields={"tags": ["anyone"]}))
    g = Gateway(config, store, Spool(default_spool(store)))
    try:
        c = clone(repo, tmp_path / "clone")
        assert 0 == run_cli(c, "tag", a[:7], "+offline").code
        assert 0 == run_cli(c, "push", "-o", str(tmp_path / "tag")).code
        assert 0 == run_cli(c, "close", a[:7]).code
        assert 0 == run_cli(c, "push", "--since", "issues^", "-o", str(tmp_path / "close")).code
        [tagged], [closed] = (list((tmp_path / d).iterdir()) for d in ("tag", "close"))
        assert "changed" == g.handle(tagged.read_bytes()).action
        out = g.handle(closed.read_bytes())
        assert ("rejected", ["offline"], "new") == (out.action, read_issue(repo, a).tags, read_issue(repo, a).status)
    finally:
        g.close()
        store.close()


def test_same_series_twice_changes_nothing(gw: Gateway, tmp_path: Path) -> None:
    """Sending the same series a second time (new Message-IDs) leaves the branch as it was."""
    repo = gw_path(gw)
    c = clone(repo, tmp_path / "clone")
    new_issue(c, "First")
    new_issue(c, "Second")
    for attempt in ("one", "two"):
        d = tmp_path / attempt
        assert 0 == run_cli(c, "push", "-o", str(d)).code
        for f in sorted(d.iterdir()):
            gw.handle(f.read_bytes())
        if attempt == "one":
            after_first = tip(repo)
    assert (tree(c), after_first) == (tree(repo), tip(repo))


# --- hostile series -------------------------------------------------------------------------

NAME = "ab" + "c" * 38


def patch_mail(subject: str, diff: bytes, frm: str = "Mallory <mallory@example.org>", mid: str = "<evil1@example.org>") -> bytes:
    head = (f"From {'0' * 40} Mon Sep 17 00:00:00 2001\nFrom: {frm}\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n"
            f"Subject: [PATCH] {subject}\nMessage-ID: {mid}\nTo: issues@tracker.localhost\n"
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\n---\n")
    return head.encode() + diff + b"-- \n2.39.5\n"


def _project_forgery(g: Gateway) -> bytes:
    with Store.open(gw_path(g)) as s:
        old = s.snapshot().read("project.xml") or b""
    return file_diff("project.xml", old, old.replace(b"<item>\nhigh\n</item>", b"<item>\nhigh\n</item>\n<item>\nurgent\n</item>"))


def _illegal_status(g: Gateway) -> bytes:
    with Store.open(gw_path(g)) as s:
        name = next(iter(s.snapshot().issue_names()), None)
    assert name is None
    from mailtrack.tracker.changes import new_issue as make
    from mailtrack.tracker.model import Person

    with Store.open(gw_path(g)) as s:
        issue, change = make(s.snapshot(), Person("Mallory", "mallory@example.org"), "Evil", "text", [])
    [(path, data)] = [(p, d) for p, d in change.files.items() if p.endswith("issue.xml")]
    assert data is not None
    return file_diff(path, None, data.replace(b"<status>\nnew\n</status>", b"<status>\nexploded\n</status>"))


HOSTILE = {
    "garbage": (lambda g: file_diff(f"ab/{NAME[2:]}/issue.xml", None, b"<issue><title>unclosed\n"), "does not parse"),
    "illegal": (_illegal_status, "status"),
    "outside": (lambda g: file_diff(f"ab/{NAME[2:]}/deeper/x.txt", None, b"x\n"), "outside the layout"),
    "dotdot": (lambda g: file_diff(f"ab/{NAME[2:]}/../../../etc/passwd", None, b"root::0:0\n"), "not a plain path"),
    "dotgit": (lambda g: file_diff(".git/hooks/post-update", None, b"#!/bin/sh\nrm -rf /\n"), "touches .git"),
    "symlink": (lambda g: file_diff(f"ab/{NAME[2:]}/issue.xml", None, b"/etc/passwd").replace(b"new file mode 100644", b"new file mode 120000"),
                "mode 120000 (a symlink)"),
    "huge": (lambda g: file_diff(f"ab/{NAME[2:]}/big.bin", None, os.urandom(MAX_SERIES_BYTES)), "the series is too large"),
    "project": (_project_forgery, "may not change the project"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_series_is_refused_with_a_report(gw: Gateway, kind: str) -> None:
    """A hostile patch is refused whole, the branch is unchanged, and the sender's report says why."""
    repo = gw_path(gw)
    before = tip(repo)
    make, reason = HOSTILE[kind]
    out = gw.handle(patch_mail(f"hostile {kind}", make(gw)))
    [reply] = outbox(repo)
    body = reply.get_content()
    assert ("rejected", before, "mallory@example.org") == (out.action, tip(repo), reply["To"])
    assert reason in " ".join(body.split()), body
    assert "nothing was changed" in body


def test_partial_series_is_held_until_complete(gw: Gateway, tmp_path: Path) -> None:
    """Patches arriving out of order wait in the spool and are applied once the series is complete."""
    repo = gw_path(gw)
    c = clone(repo, tmp_path / "clone")
    new_issue(c, "One")
    new_issue(c, "Two")
    d = tmp_path / "out"
    assert 0 == run_cli(c, "push", "-o", str(d)).code
    cover, first, second = sorted(d.iterdir())
    actions = [gw.handle(f.read_bytes()).action for f in (second, cover, first)]
    assert (["pending", "pending", "changed"], tree(c)) == (actions, tree(repo))


def test_oversized_partial_series_is_refused_at_once(gw: Gateway) -> None:
    """A series announcing more patches than allowed is refused on its first mail; nothing is kept."""
    repo = gw_path(gw)
    raw = patch_mail("one", file_diff(f"ab/{NAME[2:]}/note.txt", None, b"x\n")).replace(b"[PATCH]", b"[PATCH 1/500]")
    out = gw.handle(raw)
    held = default_spool(gw.store) / "patches"
    assert ("rejected", [], 1) == (out.action, list(held.rglob("*.eml")) if held.exists() else [], len(outbox(repo)))


def test_push_mail_needs_a_starting_point(tmp_path: Path) -> None:
    """Without a recorded pull or --since, `push --mail` says what to do instead of sending the whole history."""
    c = issues_repo(tmp_path / "lonely")
    r = run_cli(c, "push", "--mail", "--to", ADDRESS)
    assert (1, "error: no refs/remotes/origin/issues: run 'git issues pull' first, or give --since REV\n") == (r.code, r.err)


def test_push_since_a_revision_writes_only_the_later_commits(tmp_path: Path) -> None:
    """`push -o DIR --since issues~1` writes one patch, for the last commit only."""
    c = issues_repo(tmp_path / "solo")
    new_issue(c, "Older")
    newer = new_issue(c, "Newer")
    r = run_cli(c, "push", "--since", "issues~1", "-o", str(tmp_path / "out"))
    assert (0, [f"0001-new-{newer[:7]}-Newer.patch"]) == (r.code, sorted(os.listdir(tmp_path / "out")))


def test_push_mail_uses_sendemail_to(served: Served, tmp_path: Path) -> None:
    """`push --mail` without --to sends to git config sendemail.to, through sendemail.smtpServer/Port."""
    repo, server, c = served.repo, served.server, served.clone
    for key, value in (("smtpServer", "127.0.0.1"), ("smtpServerPort", str(server.port)), ("to", ADDRESS)):
        git(c, "config", f"sendemail.{key}", value)
    a = new_issue(c, "Via config")
    r = run_cli(c, "push", "--mail")
    assert (0, f"sent 1 commit(s) as 1 mail(s) to {ADDRESS}\n") == (r.code, r.out)
    wait_for(lambda: tree(repo) == tree(c), timeout=30, what="the pushed patch")
    assert [a] == read_names(repo)


def test_partial_series_past_its_timeout_is_reported_and_kept(gw: Gateway, tmp_path: Path) -> None:
    """`mailtrack process` reports a series still incomplete past gateway.patch_series_timeout and keeps its mail in failed."""
    from mailtrack.app.mailtrack import main as mailtrack

    repo = gw_path(gw)
    part = patch_mail("two of three", file_diff(f"ab/{NAME[2:]}/note.txt", None, b"x\n"), mid="<p2@example.org>")
    part = part.replace(b"[PATCH]", b"[PATCH 2/3]").replace(b"To: ", b"In-Reply-To: <p1@example.org>\nReferences: <p1@example.org>\nTo: ")
    assert "pending" == gw.handle(part).action
    assert [] == outbox(repo)
    config = tmp_path / "timeout.toml"
    config.write_text('[gateway]\nproject = "proj"\npatch_series_timeout = 0\n')
    assert 0 == mailtrack(["--repo", str(repo), "--config", str(config), "process"])
    [report] = outbox(repo)
    text = " ".join(report.get_content().split())
    assert ("Re: [PATCH 2/3] two of three", True) == (report["Subject"], "incomplete patch series: got 2 of 3" in text)
    [(_, reason)] = gw.spool.incoming.failures()
    assert reason.startswith("incomplete patch series: got 2 of 3")
    [kept] = [p for p in (gw.spool.root / "failed").iterdir() if not p.name.endswith(".reason")]
    assert part == kept.read_bytes()


def test_push_mail_files_are_addressed_and_go_out_with_git_send_email(served: Served, tmp_path: Path) -> None:
    """`push --mail -o DIR --to ADDR` writes files with `To:` ADDR, so `git send-email --suppress-cc=all DIR/*`
    (as the README says) needs no --to; the gateway applies them."""
    repo, server, c = served.repo, served.server, served.clone
    new_issue(c, "Sent by hand")
    out = tmp_path / "out"
    r = run_cli(c, "push", "--mail", "-o", str(out), "--to", ADDRESS)
    [patch] = [Path(p) for p in r.out.split()]
    assert f"\nTo: {ADDRESS}\n" in patch.read_text()
    sent = git_send_email("--smtp-server=127.0.0.1", f"--smtp-server-port={server.port}", "--smtp-encryption=none",
                          "--smtp-domain=localhost", "--suppress-cc=all", "--quiet", str(patch), cwd=c)
    assert (0, "") == (sent.returncode, sent.stderr)
    wait_for(lambda: tree(repo) == tree(c), timeout=30, what="the series applied")


# --- the second reader's cases --------------------------------------------------------------


def _part(n: int, m: int, frm: str, mid: str, root: str, path: str) -> bytes:
    raw = patch_mail(f"part {n}", file_diff(path, None, f"{mid}\n".encode()), frm=frm, mid=mid)
    return raw.replace(b"[PATCH]", f"[PATCH {n}/{m}]".encode()).replace(
        b"To: ", f"In-Reply-To: {root}\nReferences: {root}\nTo: ".encode())


def test_two_senders_series_in_one_thread_are_kept_apart(tmp_path: Path) -> None:
    """Alice's and Bob's [PATCH 1/2] in the same thread never replace each other: each series is
    applied with its own parts, and a v2 sent later in the same thread is applied too."""
    repo = issues_repo(tmp_path / "gw")
    a = new_issue(repo, "Shared")
    g = make_gateway(repo, unknown_senders="accept")
    try:
        d = f"{a[:2]}/{a[2:]}"
        for who in ("alice", "bob"):
            assert "pending" == g.handle(_part(1, 2, f"{who}@example.org", f"<{who}1@x>", "<thread@x>", f"{d}/{who}1.txt")).action
        for who in ("alice", "bob"):
            assert "changed" == g.handle(_part(2, 2, f"{who}@example.org", f"<{who}2@x>", "<thread@x>", f"{d}/{who}2.txt")).action
        v2 = [g.handle(_part(n, 2, "alice@example.org", f"<alice-v2-{n}@x>", "<thread@x>", f"{d}/v2-{n}.txt")).action for n in (1, 2)]
        assert ["pending", "changed"] == v2
        files = sorted(git(repo, "ls-tree", "--name-only", f"issues:{d}").split())
        assert ["alice1.txt", "alice2.txt", "bob1.txt", "bob2.txt", "issue.xml", "v2-1.txt", "v2-2.txt"] == files
    finally:
        g.close()
        g.store.close()


def test_patch_mails_obey_the_senders_rules(tmp_path: Path) -> None:
    """A patch is a change: with require_auth_for_commands it needs a vouched sender, and an unknown
    sender is held (in failed) when unknown_senders = "hold"."""
    repo = issues_repo(tmp_path / "gw")
    a = new_issue(repo, "Jane's issue")
    diff = file_diff(f"{a[:2]}/{a[2:]}/note.txt", None, b"forged\n")
    tip0 = tip(repo)
    strict = make_gateway(repo, require_auth_for_commands=True, maintainers=["boss@example.org"])
    try:
        out = strict.handle(patch_mail("forged", diff, frm="Boss <boss@example.org>", mid="<forged@x>"))
        assert ("rejected", tip0) == (out.action, tip(repo))
        assert "vouches for" in out.reason
    finally:
        strict.close()
        strict.store.close()
    holding = make_gateway(repo, unknown_senders="hold")
    try:
        out = holding.handle(patch_mail("stranger", diff, frm="Eve <eve@example.net>", mid="<eve@x>"))
        assert ("held", tip0) == (out.action, tip(repo))
    finally:
        holding.close()
        holding.store.close()


def test_a_small_mail_cannot_inflate_into_a_huge_file(gw: Gateway) -> None:
    """A GIT binary patch whose zlib data inflates past max_attachment_size is refused before it is inflated whole."""
    from mailtrack.patches.format import _b85_lines

    repo = gw_path(gw)
    a = new_issue(repo, "Target")
    bomb = zlib.compress(b"\0" * (GatewayConfig().max_attachment_size + 1), 9)
    path = f"{a[:2]}/{a[2:]}/bomb.bin"
    diff = (f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex {'0' * 40}..{'1' * 40}\nGIT binary patch\n"
            f"literal {GatewayConfig().max_attachment_size + 1}\n").encode() + _b85_lines(bomb) + b"\nliteral 0\nHcmV?d00001\n\n"
    assert len(diff) < 100_000
    before = tip(repo)
    out = gw.handle(patch_mail("bomb", diff, frm="Jane Doe <jane@example.org>"))
    assert ("rejected", before) == (out.action, tip(repo))
    assert "too large" in out.reason


def test_a_code_patch_is_an_issue_not_a_patch_of_ours(gw: Gateway) -> None:
    """A [PATCH] for another tree (.github/, db/) is no patch of the issues branch: it opens an issue."""
    diff = file_diff(".github/workflows/ci.yml", b"on: push\n", b"on: [push, pull_request]\n") + file_diff(
        "db/schema.sql", None, b"create table t (x int);\n")
    out = gw.handle(patch_mail("ci: fix workflow", diff, frm="Jane Doe <jane@example.org>"))
    assert ("created", "ci: fix workflow") == (out.action, read_issue(gw_path(gw), out.issue).title)


def test_a_malformed_diff_header_is_refused_not_a_crash(gw: Gateway) -> None:
    """A quoted path that does not decode is a refusal with a report, not an exception."""
    repo = gw_path(gw)
    before = tip(repo)
    diff = f'diff --git "a/ab/{NAME[2:]}/\\303" "b/ab/{NAME[2:]}/\\3"\nnew file mode 100644\n'.encode()
    out = gw.handle(patch_mail("broken", diff, frm="Jane Doe <jane@example.org>"))
    assert ("rejected", before) == (out.action, tip(repo))


def _series(tmp_path: Path, *args: str) -> tuple[Path, Path, list[bytes]]:
    """A gateway, a clone with two new commits, and their `git format-patch ARGS` mails (cover letter first)."""
    repo = issues_repo(tmp_path / "gw")
    c = clone(repo, tmp_path / "clone")
    new_issue(c, "First offline")
    new_issue(c, "Second offline")
    out = tmp_path / "out"
    git(c, "format-patch", "-q", "-o", str(out), *args, "origin/issues..issues")
    mails = [p.read_bytes() for p in sorted(out.iterdir())]
    return repo, c, mails


def _thread(mails: list[bytes], deep: bool) -> list[bytes]:
    """Thread the mails as git send-email does: each answers the first (shallow) or the one before (deep)."""
    ids = [f"<part{i}@example.org>" for i in range(len(mails))]
    out = []
    for i, raw in enumerate(mails):
        head = f"Message-ID: {ids[i]}\n"
        if i:
            parent = ids[i - 1] if deep else ids[0]
            head += f"In-Reply-To: {parent}\nReferences: {' '.join(ids[:i]) if deep else ids[0]}\n"
        out.append(raw.replace(b"\nSubject: ", ("\n" + head + "Subject: ").encode(), 1))
    return out


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("order", ["in order", "cover last", "reversed"])
def test_a_series_applies_whatever_order_its_mails_arrive_in(tmp_path: Path, deep: bool, order: str) -> None:
    """A cover letter and two patches, threaded shallow or deep, arriving in order, with the cover
    last, or backwards: the series is applied once, and no mail is left waiting or refused."""
    repo, c, mails = _series(tmp_path, "--cover-letter")
    threaded = _thread(mails, deep)
    arrival = {"in order": threaded, "cover last": threaded[1:] + threaded[:1], "reversed": threaded[::-1]}[order]
    g = make_gateway(repo)
    try:
        actions = [g.handle(raw).action for raw in arrival]
        runner.housekeeping(g)
    finally:
        g.close()
        g.store.close()
    assert (1, tree(c)) == (actions.count("changed"), tree(repo)), actions
    assert set(actions) - {"changed", "pending", "duplicate"} == set(), actions
    assert [] == [p for p in (repo / ".git" / "mailtrack" / "spool" / "patches").rglob("*.eml")]


def test_a_v2_does_not_fill_the_gaps_of_an_unfinished_v1(tmp_path: Path) -> None:
    """v1 1/2 arrives, its 2/2 is lost; v2 1/2 and 2/2 (new Message-IDs, in reply to v1) make a series of their own."""
    repo, c, mails = _series(tmp_path)
    v1 = _thread(mails, deep=False)
    v2 = [raw.replace(b"<part", b"<v2part") for raw in _thread(mails, deep=False)]
    # sent with --in-reply-to=<v1's first mail>: the thread's root leads v2's References
    v2[0] = v2[0].replace(b"\nSubject: ", b"\nIn-Reply-To: <part0@example.org>\nReferences: <part0@example.org>\nSubject: ", 1)
    v2[1] = v2[1].replace(b"References: <v2part0@example.org>", b"References: <part0@example.org> <v2part0@example.org>")
    g = make_gateway(repo)
    try:
        assert ["pending", "pending", "changed"] == [g.handle(raw).action for raw in (v1[0], v2[0], v2[1])]
    finally:
        g.close()
        g.store.close()
    assert tree(c) == tree(repo)


@pytest.mark.parametrize("numbers", ["5/0", "3/2", "1/1000"])
def test_impossible_patch_numbers_are_refused_before_anything_is_kept(gw: Gateway, numbers: str) -> None:
    """[PATCH 5/0], [PATCH 3/2] and a series over the limit are refused with a report; nothing waits."""
    raw = patch_mail("odd", file_diff(f"ab/{NAME[2:]}/note.txt", None, b"x\n")).replace(b"[PATCH]", f"[PATCH {numbers}]".encode())
    out = gw.handle(raw)
    held = default_spool(gw.store) / "patches"
    assert ("rejected", [], 1) == (out.action, list(held.rglob("*.eml")) if held.exists() else [], len(outbox(gw_path(gw))))


def test_a_timed_out_series_requeued_from_failed_is_applied(tmp_path: Path) -> None:
    """A series refused for its timeout keeps its parts in failed; `mailtrack requeue` of each after
    the missing part came puts the whole series on the branch, nothing dropped as a duplicate."""
    from mailtrack.app.mailtrack import main as mailtrack

    repo, c, mails = _series(tmp_path, "--cover-letter")
    cover, first, second = _thread(mails, deep=False)
    g = make_gateway(repo)
    try:
        assert ["pending", "pending"] == [g.handle(raw).action for raw in (cover, first)]
        config = tmp_path / "timeout.toml"
        config.write_text('[gateway]\nproject = "proj"\npatch_series_timeout = 0\n')
        assert 0 == mailtrack(["--repo", str(repo), "--config", str(config), "process"])  # cover and 1/2 to failed
        held = [spool_id for spool_id, _reason in g.spool.incoming.failures()]
        assert 2 == len(held)
        assert "pending" == g.handle(second).action  # 2/2 comes late: a new attempt, waiting for 1/2
        for spool_id in held:
            g.spool.requeue(spool_id)
        actions = [runner.work(g, claim) for claim in g.spool.incoming.claims()]
    finally:
        g.close()
        g.store.close()
    assert "changed" in [a.action for a in actions if a is not None], actions
    assert tree(c) == tree(repo)


def test_a_series_drained_between_plain_mails_lands_with_them(tmp_path: Path) -> None:
    """The worker's drain commits a batch at a time (tracker.store.Store.batch); a patch series met
    in the middle of one is applied on the batch's commits, and the mails after it go on top."""
    repo, _, mails = _series(tmp_path, "--cover-letter")
    g = make_gateway(repo)
    try:
        g.spool.accept(make_mail(subject="Plain before", message_id="<plain1@example.org>"))
        for raw in _thread(mails, deep=False):
            g.spool.accept(raw)
        g.spool.accept(make_mail(subject="Plain after", message_id="<plain2@example.org>"))
        assert 2 + len(mails) == runner.drain(g)
    finally:
        g.close()
        g.store.close()
    assert ["First offline", "Plain after", "Plain before", "Second offline"] == titles(repo)
    counts = Spool(repo / ".git" / "mailtrack" / "spool").counts()
    assert (0, 0, 0) == (counts["incoming/new"], counts["incoming/cur"], counts["failed"])
    git(repo, "fsck", "--strict", "--no-dangling")

"""When things happened: an imported mail keeps its own Date (on its records and as its commit's
author date, as `git log` and `git show` read them), an insane Date gives way to the time of the
import, and a patch series keeps its commits' author dates through the gateway."""

from __future__ import annotations

import mailbox
import smtplib
import time
from datetime import UTC, datetime
from pathlib import Path

from helpers.cli import mailtrack
from helpers.mail import make_mail
from helpers.ports import wait_for
from helpers.repos import git, read_comments, read_issue, read_names, tree
from helpers.servers import ADDRESS, Served, send_email
from mailtrack.tracker.changes import edit_issue, new_issue
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Change, Snapshot, Store


def imported_box(tmp_path: Path) -> Path:
    """An archive: a report of 2018 and its reply, a report dated next century, one dated 1900."""
    box = mailbox.mbox(str(tmp_path / "archive.mbox"))
    box.add(make_mail(subject="Old bug", message_id="<d1@x>", Date="Mon, 01 Jan 2018 10:00:00 +0100"))
    box.add(make_mail(subject="Re: Old bug", message_id="<d2@x>", In_Reply_To="<d1@x>", body="Me too.\n",
                      frm="Bob <bob@example.org>", Date="Tue, 02 Jan 2018 11:30:05 +0000"))
    box.add(make_mail(subject="From the future", message_id="<d3@x>", Date="Sat, 01 Jan 2150 00:00:00 +0000"))
    box.add(make_mail(subject="From the past", message_id="<d4@x>", Date="Mon, 01 Jan 1900 00:00:00 +0000"))
    box.close()
    return tmp_path / "archive.mbox"


def by_title(repo: Path, title: str) -> str:
    [name] = [n for n in read_names(repo) if read_issue(repo, n).title == title]
    return name


def test_import_keeps_each_mails_date_on_the_branch_and_in_git_log(repo: Path, tmp_path: Path) -> None:
    """`mailtrack import`: issue.xml's created, the comment's file name and each commit's author date
    are the mail's Date; the commit date is the import's; Dates in the future or before 1971 give the
    time of the import."""
    archive = imported_box(tmp_path)
    start = int(time.time())
    r = mailtrack("import", str(archive), repo=repo, text=True)
    end = int(time.time())
    assert (0, "commented 1, created 3\n") == (r.returncode, r.stdout)
    old = by_title(repo, "Old bug")
    shown = git(repo, "show", f"issues:{old[:2]}/{old[2:]}/issue.xml")
    assert "<created>\n<datetime>\n20180101T090000Z\n</datetime>\n</created>" in shown
    [comment] = read_comments(repo, old)
    assert datetime(2018, 1, 2, 11, 30, 5, tzinfo=UTC) == comment.created
    files = git(repo, "ls-tree", "-r", "--name-only", "issues", f"{old[:2]}/{old[2:]}/").split()
    assert [f"{old[:2]}/{old[2:]}/comment_20180102T113005.000000Z_{comment.name}.xml"] == [f for f in files if "comment_" in f]
    log = [line.split("|") for line in git(repo, "log", "--format=%at|%ct|%s", "issues").splitlines()]
    dated = {subject: (int(at), int(ct)) for at, ct, subject in log}
    assert 1514797200 == dated[f"new {old[:7]}: Old bug"][0]  # 2018-01-01T09:00:00Z
    assert 1514892605 == dated[f"comment {old[:7]} by bob@example.org"][0]
    assert all(start <= ct <= end for _, ct in dated.values()), dated  # committed now
    for title in ("From the future", "From the past"):
        name = by_title(repo, title)
        created = read_issue(repo, name).created.timestamp()
        assert start <= created <= end + 1, (title, created)
        assert start <= dated[f"new {name[:7]}: {title}"][0] <= end, title
    git(repo, "fsck", "--strict", "--no-dangling")


def test_live_mail_is_dated_when_it_arrives(repo: Path) -> None:
    """Live mail (`mailtrack deliver`) is dated by its arrival, whatever its Date says."""
    start = time.time()
    r = mailtrack("deliver", repo=repo, input=make_mail(message_id="<live@x>", Date="Mon, 01 Jan 2018 10:00:00 +0000"))
    assert 0 == r.returncode, r.stderr
    [name] = read_names(repo)
    assert start - 1 <= read_issue(repo, name).created.timestamp() <= time.time()


def offline_commits(c: Path) -> str:
    """Two commits in the clone as `git issues` makes them, authored in 2019: a new issue, then a
    comment on it (each records its own time in its files). The issue's full name."""
    author = Person("Carol Clone", "carol@example.org")
    opened, commented = datetime(2019, 3, 4, 5, 6, 7, tzinfo=UTC), datetime(2019, 3, 5, 8, 9, 10, tzinfo=UTC)
    with Store.open(c) as store:
        made: list[str] = []

        def open_it(snap: Snapshot) -> Change:
            issue, ch = new_issue(snap, author, "Written on a train", "offline", created=opened)
            made.append(issue.name)
            return ch

        store.update(open_it, author, when=opened)
        store.update(lambda snap: edit_issue(snap, made[0], author, comment="still offline", when=commented)[1],
                     author, when=commented)
    return made[0]


def test_a_series_sent_by_git_send_email_keeps_its_author_dates(served: Served, tmp_path: Path) -> None:
    """Real `git format-patch`, real `git send-email` (which dates each mail when it sends it): the
    gateway's commits keep the clone's author dates, and its subjects and authors."""
    repo, c = served.repo, served.clone
    name = offline_commits(c)
    files = sorted(Path(p) for p in git(c, "format-patch", "-o", str(tmp_path / "out"), "origin/issues..issues").split())
    assert "Date: Mon, 4 Mar 2019 05:06:07 +0000" in files[0].read_text()  # format-patch carries it...
    send_email(files, served.server.port)
    wait_for(lambda: tree(repo) == tree(c), timeout=30, what="the series applied")
    log = "--format=%at %ad|%an <%ae>|%s"
    assert git(c, "log", "-2", log, "issues") == git(repo, "log", "-2", log, "issues")
    assert ["1551773350", "1551675967"] == [ln.split()[0] for ln in git(repo, "log", "-2", "--format=%at", "issues").splitlines()]
    assert 1 == len(read_comments(repo, name))
    git(repo, "fsck", "--strict", "--no-dangling")


def test_a_format_patch_file_mailed_as_it_is_keeps_a_hand_made_commits_date(served: Served, tmp_path: Path) -> None:
    """A commit made by hand with the real git (a title edited, no time in its files) and its real
    `git format-patch --thread` files mailed as they are: the author date is the file's Date, as `git am` takes it."""
    repo, c = served.repo, served.clone
    name = offline_commits(c)
    git(c, "checkout", "-q", "issues")
    path = c / name[:2] / name[2:] / "issue.xml"
    path.write_text(path.read_text().replace("Written on a train", "Written on a slow train"))
    git(c, "commit", "-q", "-am", "retitle by hand", "--date=2020-02-02T02:02:02+01:00")
    files = sorted(Path(p) for p in git(c, "format-patch", "--thread", "-o", str(tmp_path / "out"), "origin/issues..issues").split())
    with smtplib.SMTP("127.0.0.1", served.server.port, timeout=30) as s:
        for f in files:
            s.sendmail("carol@example.org", [ADDRESS], f.read_bytes().split(b"\n", 1)[1].replace(b"\n", b"\r\n"))
    wait_for(lambda: tree(repo) == tree(c), timeout=30, what="the series applied")
    log = "--format=%at|%an <%ae>|%s"
    assert git(c, "log", "-3", log, "issues") == git(repo, "log", "-3", log, "issues")
    assert "1580605322" == git(repo, "log", "-1", "--format=%at", "issues").strip()

"""`git issues`: the issue tracker on the issues branch, from the command line, offline.

Each command reads or writes through the store; errors from the library become one line on
stderr and exit status 1 here, at the edge.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from dulwich.objects import ObjectID
from dulwich.refs import Ref

from mailtrack.tracker.changes import (
    Edit,
    close_edits,
    edit_issue,
    new_issue,
    parse_assignment,
    reopen_edits,
)
from mailtrack.tracker.model import Issue, Person, Project, is_comment_filename
from mailtrack.tracker.query import FILTERS, TABLE_FIELDS, fields_needed, listing, select
from mailtrack.tracker.query import shortest_names as shortest_names  # moved there; still importable from here
from mailtrack.tracker.store import Change, Snapshot, Store, StoreError, issue_dir
from mailtrack.tracker.xmlformat import FormatError


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error with exit status 1, like every other error here."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1)


# --- helpers ----------------------------------------------------------------------------------


def identity(store: Store) -> Person:
    """The acting person, as git would name the author of a commit."""
    name = os.environ.get("GIT_AUTHOR_NAME")
    email = os.environ.get("GIT_AUTHOR_EMAIL")
    config = store.repo.get_config_stack()
    for key, current in (("name", name), ("email", email)):
        if current is None:
            try:
                value = config.get((b"user",), key.encode()).decode()
            except KeyError:
                value = os.environ.get("EMAIL", "") if key == "email" else ""
            if key == "name":
                name = value
            else:
                email = value
    if not email:
        raise StoreError("who are you? set git config user.name and user.email")
    return Person(name or "", email)


def edit_text(store: Store, template: str) -> str:
    """Text from the user's editor, as git gets a commit message; '#' lines are dropped."""
    editor = os.environ.get("GIT_EDITOR")
    if not editor:
        try:
            editor = store.repo.get_config_stack().get((b"core",), b"editor").decode()
        except KeyError:
            editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w+", suffix=".txt", prefix="ISSUE_EDITMSG", delete=False) as f:
        f.write(template)
        path = f.name
    try:
        if subprocess.call(f"{editor} {shlex.quote(path)}", shell=True) != 0:
            raise StoreError(f"the editor '{editor}' failed")
        text = Path(path).read_text(encoding="utf-8")
    finally:
        os.unlink(path)
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    return "\n".join(lines).strip("\n")


def message_arg(store: Store, args: argparse.Namespace, what: str) -> str:
    if args.message == "-":
        return sys.stdin.read()
    if args.message is not None:
        return str(args.message)
    text = edit_text(store, f"\n# Write the {what} above. Lines starting with '#' are ignored;\n# an empty text aborts.\n")
    if not text.strip():
        raise StoreError(f"aborting: empty {what}")
    return text


def _value(v: object) -> str:
    return ", ".join(v) if isinstance(v, list) else str(v)


# --- commands ---------------------------------------------------------------------------------


def cmd_init(store: Store, args: argparse.Namespace) -> int:
    if store.tip() is not None:
        raise StoreError(f"the {store.branch} branch exists already")
    if store.first_step() != "git issues init":  # a clone: a second root would never merge sensibly
        raise StoreError(f"a remote has the {store.branch} branch already: run '{store.first_step()}' to get it")
    if args.project:
        data = Path(args.project).read_bytes()
        project = Project.from_bytes(data)  # refuses what it cannot read
    else:
        project = Project(closed_statuses=["closed"])
    commit_id = store.init(project, identity(store))
    print(f"Initialized the {store.branch} branch ({commit_id[:7].decode()})")
    return 0


def _field_edits(args: argparse.Namespace) -> list[Edit]:
    edits = []
    for opt, fieldname in (
        ("status", "status"), ("type", "type"), ("severity", "severity"), ("priority", "priority"),
        ("milestone", "milestone"), ("version", "version"), ("resolution", "resolution"),
    ):  # fmt: skip
        value = getattr(args, opt, None)
        if value is not None:
            edits.append(Edit(fieldname, "=", value))
    for opt, fieldname in (("component", "components"), ("assign", "assigned"), ("cc", "carbons"), ("tag", "tags")):
        for value in getattr(args, opt, None) or []:
            edits.append(Edit(fieldname, "+", value))
    return edits


def cmd_new(store: Store, args: argparse.Namespace) -> int:
    author = identity(store)
    store.require()
    text = args.message if args.message is not None else None
    if text == "-":
        text = sys.stdin.read()
    elif text is None:
        text = edit_text(store, f"\n# Describe: {args.title}\n# Lines starting with '#' are ignored; an empty text aborts.\n")
        if not text.strip():  # as git commit: an editor that leaves nothing means "do not"
            raise StoreError("aborting: empty description")
    made: list[Issue] = []

    def change(snap: Snapshot) -> Change:
        issue, ch = new_issue(snap, author, args.title, text or "", _field_edits(args))
        made[:] = [issue]
        return ch

    store.update(change, author)
    print(f"Created issue {store.snapshot().short(made[0].name)}: {made[0].title}")
    return 0


def branch_records(snap: Snapshot) -> tuple[list[tuple[str, dict[str, object]]], list[str]]:
    """(name, record) of every readable issue, read from the branch itself, in no order, and a line
    for each issue.xml that does not parse: where the index cannot be kept (a read-only repository)."""
    records, bad = [], []
    for name in snap.issue_names():
        try:
            records.append((name, snap.issue(name).record()))
        except FormatError as e:
            bad.append(f"{issue_dir(name)}/issue.xml: {e}")
    return records, bad


def list_rows(snap: Snapshot, project: Project, filters: list[tuple[str, str]], sort: str, include_closed: bool,
              fields: tuple[str, ...] | None) -> tuple[list[dict[str, object]], list[str]]:
    """The rows `list` shows (tracker.query.listing: filtered and sorted by the index, in SQL) and a line
    for each file that does not parse. Where the index cannot be kept (a read-only repository),
    tracker.query.select over the branch's records."""
    import sqlite3

    from mailtrack.tracker.lookup import Index  # only the commands that list: sqlite3 stays out of the others

    try:
        with Index.for_snapshot(snap) as index:
            _, rows = listing(index, snap, project, filters, sort, include_closed, fields=fields)
            return rows, [f"{path}: {why}" for path, why in index.unreadable(snap)]
    except (OSError, sqlite3.Error):
        records, bad = branch_records(snap)
        return select(project, records, filters, sort, include_closed=include_closed), bad


def cmd_list(store: Store, args: argparse.Namespace) -> int:
    snap = store.require()
    project = snap.project()
    filters = [(f, getattr(args, f"filter_{opt}")) for opt, f in FILTERS.items() if getattr(args, f"filter_{opt}")]
    include_closed = args.all or args.filter_status is not None
    # the index answers with the open issues only, and only the fields the table or the IDs need
    shown = {None: TABLE_FIELDS, "table": TABLE_FIELDS, "id": ()}.get(args.format)
    fields = fields_needed(filters, args.sort or "", shown) if shown is not None else None
    rows, unreadable = list_rows(snap, project, filters, args.sort or "", include_closed, fields)
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=1, ensure_ascii=False)
        print()
    elif args.format in (None, "table"):
        for r in rows:
            print(f"{r['short']}  {r['status']:<8} {r['severity']:<8} {_value(r['components']) or '-':<12} "
                  f"{_short_people(r['assigned']) or '-':<12} {r['title']}")  # type: ignore[arg-type]
    elif args.format == "id":
        for r in rows:
            print(r["id"])
    else:
        for r in rows:
            try:
                print(args.format.format(**{k: _value(v) for k, v in r.items()}))
            except (KeyError, ValueError, IndexError) as e:
                raise StoreError(f"bad --format: {e}; fields are: {', '.join(rows[0])}") from None
    for line in unreadable:  # listed after the rest, as git reports a bad object and goes on
        print(f"error: {line}", file=sys.stderr)
    return 1 if unreadable else 0


def _short_people(people: list[str]) -> str:
    return ",".join(Person.parse(p).email.split("@")[0] or p for p in people)


def cmd_show(store: Store, args: argparse.Namespace) -> int:
    snap = store.require()
    name = snap.resolve(args.id)
    issue = snap.issue(name)
    out = [f"issue {name}"]
    labels = [("title", "Title"), ("status", "Status"), ("resolution", "Resolution"), ("type", "Type"),
              ("severity", "Severity"), ("priority", "Priority"), ("components", "Components"),
              ("milestone", "Milestone"), ("version", "Version"), ("assigned", "Assigned"),
              ("reporters", "Reporters"), ("owners", "Owners"), ("carbons", "Cc"), ("tags", "Tags"),
              ("summary", "Summary")]  # fmt: skip
    out.append(f"Author:     {issue.author.mailbox}")
    out.append(f"Created:    {_when(issue.created)}")
    out.append(f"Modified:   {_when(issue.modified or issue.created)}")
    for f, label in labels:
        v = _value(issue.get(f))
        if v or f in ("title", "status"):
            out.append(f"{label + ':':<11} {v}")
    if issue.message_id:
        out.append(f"Message-ID: {issue.message_id}")
    if issue.description.strip():
        out += ["", *("    " + ln if ln else "" for ln in issue.description.splitlines())]
    for c in snap.comments(name):
        out += ["", f"comment {c.name[:7]}", f"Author: {c.author.mailbox}", f"Date:   {_when(c.created)}"]
        for a in c.attachments:
            data = snap.attachment(name, a)
            out.append(f"Attachment: {a} ({len(data) if data is not None else 'missing'} bytes)")
        out += ["", *("    " + ln if ln else "" for ln in c.text.splitlines())]
    print("\n".join(out))
    return 0


def _when(d: datetime) -> str:
    return d.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _edit(store: Store, args: argparse.Namespace, edits: Callable[[Snapshot], list[Edit]], comment: str | None = None,
          attachments: list[tuple[str, bytes]] | None = None) -> int:
    author = identity(store)
    store.require()

    def change(snap: Snapshot) -> Change:
        name = snap.resolve(args.id)
        return edit_issue(snap, name, author, edits(snap), comment, attachments)[1]

    commit_id, ch = store.update(change, author)
    if commit_id is None:
        print("nothing to change")
    else:
        print(f"[{store.branch} {commit_id[:7].decode()}] {ch.message if ch else ''}")
    return 0


def cmd_comment(store: Store, args: argparse.Namespace) -> int:
    store.require().resolve(args.id)  # an unknown ID fails before the editor opens
    attachments = [(Path(p).name, Path(p).read_bytes()) for p in args.attach or []]
    text = message_arg(store, args, "comment")
    return _edit(store, args, lambda s: [], text, attachments)


def cmd_set(store: Store, args: argparse.Namespace) -> int:
    edits = [parse_assignment(a) for a in args.assignments]
    return _edit(store, args, lambda s: edits)


def cmd_close(store: Store, args: argparse.Namespace) -> int:
    snap = store.require()
    name = snap.resolve(args.id)
    issue = snap.issue(name)
    if issue.status in snap.project().closed and not args.resolution:  # as reopen: not even the comment
        print(f"nothing to change: issue {snap.short(name)} is already closed ({issue.resolution or issue.status})")
        return 0
    return _edit(store, args, lambda s: close_edits(s, args.resolution or "", s.issue(s.resolve(args.id))), args.message)


def cmd_reopen(store: Store, args: argparse.Namespace) -> int:
    snap = store.require()
    name = snap.resolve(args.id)
    issue = snap.issue(name)
    if issue.status not in snap.project().closed:  # not even the comment: the command does nothing
        print(f"nothing to change: issue {snap.short(name)} is not closed ({issue.status})")
        return 0
    return _edit(store, args, lambda s: reopen_edits(s, s.issue(s.resolve(args.id))), args.message)


def cmd_assign(store: Store, args: argparse.Namespace) -> int:
    return _edit(store, args, lambda s: [Edit("assigned", "=", ",".join(args.who))])


def _plus_minus(fieldname: str, tokens: list[str]) -> list[Edit]:
    edits = []
    for t in tokens:
        op, value = (t[0], t[1:]) if t[:1] in "+-" and len(t) > 1 else ("+", t)
        edits.append(Edit(fieldname, op, value))
    return edits


def cmd_tag(store: Store, args: argparse.Namespace) -> int:
    return _edit(store, args, lambda s: _plus_minus("tags", args.changes))


def cmd_cc(store: Store, args: argparse.Namespace) -> int:
    return _edit(store, args, lambda s: _plus_minus("carbons", args.changes))


def cmd_dump(store: Store, args: argparse.Namespace) -> int:
    snap = store.require()
    name = snap.resolve(args.id)
    paths = ["issue.xml"] + (snap.comment_files(name) if args.comments else [])
    for p in paths:
        data = snap.read(f"{issue_dir(name)}/{p}") or b""
        if args.comments:
            sys.stdout.write(f"==> {issue_dir(name)}/{p} <==\n")
            sys.stdout.flush()
        sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return 0


def cmd_attachment(store: Store, args: argparse.Namespace) -> int:
    snap = store.require()
    name = snap.resolve(args.id)
    data = snap.attachment(name, args.name)
    if data is None or args.name == "issue.xml" or is_comment_filename(args.name):
        names = [f for f in snap.files(name) if f != "issue.xml" and not is_comment_filename(f)]
        raise StoreError(f"issue {snap.short(name)} has no attachment '{args.name}'; it has: {', '.join(names) or '(none)'}")
    if args.output and args.output != "-":
        Path(args.output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def cmd_pull(store: Store, args: argparse.Namespace) -> int:
    from mailtrack.tracker.remote import pull  # dulwich's network client, only for pull and push

    print(pull(store, args.remote, identity(store)))
    return 0


def cmd_push(store: Store, args: argparse.Namespace) -> int:
    if args.mail or args.stdout or args.output_dir:
        return _push_mail(store, args)
    from mailtrack.tracker.remote import push  # dulwich's network client, only for pull and push

    print(push(store, args.remote))
    return 0


def _push_mail(store: Store, args: argparse.Namespace) -> int:
    """`push --mail`: the commits the gateway lacks, as a patch series, sent or written out."""
    from mailtrack.patches import format as patches  # smtplib and the patch writer, only for push --mail

    since = patches.resolve_rev(store, args.since) if args.since else patches.last_pulled(store, args.remote)
    commits = patches.series_commits(store, since)
    if not commits:
        print("nothing to send", file=sys.stderr)
        return 0
    me = identity(store)
    settings = patches.smtp_settings(store)
    to = list(args.to or settings.to)
    mails = patches.format_series(store, commits, me, me.email.rpartition("@")[2] or "localhost", to)
    if args.stdout:
        for p in mails:
            sys.stdout.write(p.data.decode("utf-8", "replace"))
        return 0
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for p in mails:
            (out / patches.patch_filename(p)).write_bytes(p.data)
            print(out / patches.patch_filename(p))
        return 0
    patches.send_series(mails, me, to, settings)
    print(f"sent {len(commits)} commit(s) as {len(mails)} mail(s) to {', '.join(to)}")
    print("if the gateway refuses them, 'git issues reset' drops them here", file=sys.stderr)
    return 0


def cmd_reset(store: Store, args: argparse.Namespace) -> int:
    """`reset [REMOTE] [--to REV]`: drop the local commits the gateway lacks (a refused `push --mail`).

    The branch moves back to where REMOTE's issues branch was at the last `pull` (what `push --mail`
    sends starts there), or to REV; the old tip stays under refs/backup/ and in the reflog."""
    from mailtrack.patches import format as patches  # the revision and last-pull lookups push --mail uses

    store.require()
    old = store.tip()
    assert old is not None
    try:
        target = patches.resolve_rev(store, args.to) if args.to else patches.last_pulled(store, args.remote)
    except StoreError as e:  # last_pulled's hint names push's --since
        raise StoreError(str(e).replace("give --since REV", "give --to REV")) from None
    where = args.to or f"{args.remote or 'origin'}'s at the last pull"
    if target == old:
        print(f"nothing to drop: {store.branch} is at {where} ({old[:7].decode()})")
        return 0
    dropped = len(patches.series_commits(store, target))
    me = identity(store)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    committer = f"{me.name} <{me.email}>".encode()
    for n in range(100):  # a new name, never over an older backup (two resets within a second)
        backup = Ref(f"refs/backup/{store.branch}/{stamp}{f'-{n}' if n else ''}".encode())
        if store.repo.refs.add_if_new(backup, old, committer=committer, message=b"git issues reset: the tip before"):
            break
    else:
        raise StoreError(f"too many backups named refs/backup/{store.branch}/{stamp}: try again in a second")
    if not store.repo.refs.set_if_equals(store.ref, old, ObjectID(target), committer=committer,
                                         message=f"git issues reset: moving to {where}".encode()):
        raise StoreError(f"{store.branch} moved meanwhile; run 'git issues reset' again")
    done = f"dropped {dropped} commit(s), back at {where}" if dropped else f"moved to {where}"
    print(f"{store.branch} {old[:7].decode()}..{target[:7].decode()}: {done}")
    print(f"the old tip is kept as {backup.decode()}: 'git issues reset --to {backup.decode()}' brings it back")
    return 0


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="git issues", description="Issues kept on the issues branch of a git repository.")
    p.add_argument("--repo", help="the repository (default: found from the current directory, as git does)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def cmd(name: str, fn: Callable[[Store, argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=fn)
        return sp

    sp = cmd("init", cmd_init, "create the issues branch with a project.xml")
    sp.add_argument("--project", metavar="FILE", help="start from this project.xml instead of the defaults")

    sp = cmd("new", cmd_new, "file a new issue")
    sp.add_argument("title")
    sp.add_argument("-m", "--message", help="the description ('-' reads stdin; default: $EDITOR)")
    for opt in ("status", "type", "severity", "priority", "milestone", "version"):
        sp.add_argument(f"--{opt}")
    for opt, what in (("component", "a component"), ("assign", "an assignee"), ("cc", "a Cc address"), ("tag", "a tag")):
        sp.add_argument(f"--{opt}", action="append", metavar=opt.upper(), help=f"{what} (repeatable)")

    sp = cmd("list", cmd_list, "list issues (open ones unless --all)")
    sp.add_argument("-a", "--all", action="store_true", help="include closed issues")
    for f in FILTERS:
        sp.add_argument(f"--{f}", dest=f"filter_{f}", metavar="VALUE", help=f"only issues whose {f} matches")
    sp.add_argument("--sort", help="fields to sort by, comma-separated, '-' for descending (default: created); "
                    "status, severity and the like in project.xml's order")
    sp.add_argument("--format", help="table (default), json, id, or a template such as '{short} {title}'")

    sp = cmd("show", cmd_show, "show an issue and its comments")
    sp.add_argument("id")

    sp = cmd("comment", cmd_comment, "comment on an issue")
    sp.add_argument("id")
    sp.add_argument("-m", "--message", help="the text ('-' reads stdin; default: $EDITOR)")
    sp.add_argument("--attach", action="append", metavar="FILE", help="attach a file (repeatable)")

    sp = cmd("set", cmd_set, "set fields: FIELD=VALUE, FIELD+=VALUE, FIELD-=VALUE")
    sp.add_argument("id")
    sp.add_argument("assignments", nargs="+", metavar="FIELD=VALUE")

    sp = cmd("close", cmd_close, "close an issue")
    sp.add_argument("id")
    sp.add_argument("-r", "--resolution", help="the resolution (default: the project's first)")
    sp.add_argument("-m", "--message", help="a closing comment")

    sp = cmd("reopen", cmd_reopen, "reopen a closed issue")
    sp.add_argument("id")
    sp.add_argument("-m", "--message", help="a comment")

    sp = cmd("assign", cmd_assign, "assign an issue to one or more people")
    sp.add_argument("id")
    sp.add_argument("who", nargs="+")

    sp = cmd("tag", cmd_tag, "add (+tag) and remove (-tag) tags")
    sp.add_argument("id")
    sp.add_argument("changes", nargs="+", metavar="+TAG|-TAG")

    sp = cmd("cc", cmd_cc, "add (+addr) and remove (-addr) people on the Cc list")
    sp.add_argument("id")
    sp.add_argument("changes", nargs="+", metavar="+ADDR|-ADDR")

    sp = cmd("dump", cmd_dump, "print an issue's raw issue.xml")
    sp.add_argument("id")
    sp.add_argument("--comments", action="store_true", help="the comment files too")

    sp = cmd("attachment", cmd_attachment, "write an attachment to stdout or a file")
    sp.add_argument("id")
    sp.add_argument("name")
    sp.add_argument("-o", "--output", metavar="FILE")

    sp = cmd("pull", cmd_pull, "fetch a remote's issues and merge them field by field")
    sp.add_argument("remote", nargs="?", help="a remote name, path or URL (default: origin)")

    sp = cmd("push", cmd_push, "send the issues branch to a remote (never over a diverged one)")
    sp.add_argument("remote", nargs="?", help="a remote name, path or URL (default: origin)")
    sp.add_argument("--mail", action="store_true", help="send the commits the remote lacks as patch mails")
    sp.add_argument("--to", action="append", metavar="ADDR", help="the gateway's address (default: git config sendemail.to)")
    sp.add_argument("--since", metavar="REV", help="send the commits after REV (default: the last pull from the remote)")
    sp.add_argument("--stdout", action="store_true", help="write the series to stdout instead of sending it")
    sp.add_argument("-o", dest="output_dir", metavar="DIR", help="write the series as files in DIR instead of sending it")

    sp = cmd("reset", cmd_reset, "drop the local commits the gateway lacks (a refused push --mail): back to the remote's "
             "issues branch as of the last pull, or to REV; the old tip is kept under refs/backup/")
    sp.add_argument("remote", nargs="?", help="a remote name, path or URL (default: origin)")
    sp.add_argument("--to", metavar="REV", help="move the branch to REV instead (a backup ref, a commit)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, word in enumerate(argv):  # `tag ID -old`: a removal is not an option
        if word in ("tag", "cc") and "--" not in argv and not {"-h", "--help"} & set(argv):
            argv.insert(min(i + 2, len(argv)), "--")
            break
        if not word.startswith("-") and word not in ("tag", "cc") and (i == 0 or argv[i - 1] != "--repo"):
            break
    args = parser.parse_args(argv)
    # the store's warnings (a stale lock removed) as git prints them: "warning: ..." on stderr
    warnings = logging.StreamHandler(sys.stderr)
    warnings.setLevel(logging.WARNING)
    warnings.setFormatter(logging.Formatter("warning: %(message)s"))
    logging.getLogger("mailtrack").addHandler(warnings)
    try:
        with Store.open(args.repo) as store:
            code = int(args.func(store, args))
            sys.stdout.flush()
            return code
    except BrokenPipeError:  # `git issues list | head`: the reader has what it wanted, as with git
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (StoreError, FormatError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    finally:
        logging.getLogger("mailtrack").removeHandler(warnings)


if __name__ == "__main__":
    sys.exit(main())

"""`git issues`: the issue tracker on the issues branch, from the command line, offline.

Each command reads or writes through the store; errors from the library become one line on
stderr and exit status 1 here, at the edge.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from mailtrack.fields import FILTERS

if TYPE_CHECKING:  # the store and the records load dulwich: each command imports what it uses (a warm list, show: none)
    from mailtrack.tracker.changes import Edit
    from mailtrack.tracker.model import Issue, Person, Project
    from mailtrack.tracker.store import Change, Snapshot, Store


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
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.model import Person
    from mailtrack.tracker.store import StoreError

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
    import shlex
    import subprocess
    import tempfile

    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.store import StoreError

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
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.store import StoreError

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
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.model import Project
    from mailtrack.tracker.store import StoreError

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
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.changes import Edit

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
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.changes import new_issue
    from mailtrack.tracker.store import StoreError

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
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.store import issue_dir
    from mailtrack.tracker.xmlformat import FormatError

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

    # only the commands that list: sqlite3 stays out of the others
    from mailtrack.tracker.lookup import Index
    from mailtrack.tracker.query import listing, select

    try:
        with Index.for_snapshot(snap) as index:
            _, rows = listing(index, snap, project, filters, sort, include_closed, fields=fields)
            return rows, [f"{path}: {why}" for path, why in index.unreadable(snap)]
    except (OSError, sqlite3.Error):
        records, bad = branch_records(snap)
        return select(project, records, filters, sort, include_closed=include_closed), bad


def cmd_list(store: Store, args: argparse.Namespace) -> int:
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.query import TABLE_FIELDS, fields_needed

    snap = store.require()
    if _index_made(snap):  # now served as a warm list is, streamed, when it can be
        code = served_list(args)
        if code is not None:
            return code
    project = snap.project()
    filters = _filters(args)
    include_closed = args.all or args.filter_status is not None
    # the index answers with the open issues only, and only the fields the table or the IDs need
    shown = {None: TABLE_FIELDS, "table": TABLE_FIELDS, "id": ()}.get(args.format)
    fields = fields_needed(filters, args.sort or "", shown) if shown is not None else None
    rows, unreadable = list_rows(snap, project, filters, args.sort or "", include_closed, fields)
    return _print_list(rows, args.format, unreadable)


def _index_made(snap: Snapshot) -> bool:
    """Bring the index up to the snapshot (built, when there is none); False where it cannot be kept."""
    import sqlite3

    from mailtrack.tracker.lookup import Index  # only the commands that list: sqlite3 stays out of the others

    try:
        with Index.for_snapshot(snap) as index:
            index.sync(snap)
    except (OSError, sqlite3.Error):
        return False
    return True


def _filters(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [(f, getattr(args, f"filter_{opt}")) for opt, f in FILTERS.items() if getattr(args, f"filter_{opt}")]


def served_list(args: argparse.Namespace) -> int | None:
    """`list` with no filter and the default order, from an index that describes the tip already (lookup.served):
    rows streamed from SQLite, no store, no record parsed. None when it cannot be served so (then cmd_list)."""
    if _filters(args) or (args.sort or "") not in ("", "created"):
        return None
    from mailtrack.tracker.lookup import served  # the index alone: nothing of dulwich or the store is loaded

    index = served(args.repo)
    if index is None:
        return None
    with index:
        closed = index.closed()
        if closed is None:
            return None
        covered = [] if args.all else closed  # the issues a list leaves out: query's rule (tracker.query._covered)
        if args.format == "id":  # the names alone, as _print_list writes them: no short names, no fields, no rows
            for names in index.listed(covered):
                sys.stdout.write("".join(f"{n}\n" for n in names))
            return _print_list([], "id", [f"{path}: {why}" for path, why in index.unreadable()])
        else:
            from mailtrack.tracker.query import TABLE_FIELDS, fields_needed, shortest_names  # the table's fields, short names

            fields = fields_needed([], "", TABLE_FIELDS) if args.format in (None, "table") else None
            shorts = shortest_names(index.names())
            rows: Iterable[dict[str, object]] = (
                {"id": n, "short": shorts[n], **r, "open": st not in closed} for n, st, r in index.rows(covered, fields))
        return _print_list(rows, args.format, [f"{path}: {why}" for path, why in index.unreadable()])


def _print_list(rows: Iterable[dict[str, object]], form: str | None, unreadable: list[str]) -> int:
    """Write the rows as `list --format` asks, each as it comes, then a line on stderr for each file that does not parse."""
    write = sys.stdout.write
    if form == "json":  # json.dump(rows, indent=1) written a row at a time: a row's lines one space in
        count = 0
        for r in rows:
            write(("[\n " if not count else ",\n ") + json.dumps(r, indent=1, ensure_ascii=False).replace("\n", "\n "))
            count += 1
        write("\n]\n" if count else "[]\n")
    elif form in (None, "table"):
        for chunk in _chunks(rows):
            write("".join(f"{r['short']}  {r['status']:<8} {r['severity']:<8} {_value(r['components']) or '-':<12} "
                          f"{_short_people(r['assigned']) or '-':<12} {r['title']}\n" for r in chunk))  # type: ignore[arg-type]
    elif form == "id":
        for chunk in _chunks(rows):
            write("".join(f"{r['id']}\n" for r in chunk))
    else:
        for r in rows:
            try:
                line = form.format(**{k: _value(v) for k, v in r.items()})
            except (KeyError, ValueError, IndexError) as e:
                raise UsageError(f"bad --format: {e}; fields are: {', '.join(r)}") from None
            write(line + "\n")
    for line in unreadable:  # listed after the rest, as git reports a bad object and goes on
        print(f"error: {line}", file=sys.stderr)
    return 1 if unreadable else 0


def _chunks(rows: Iterable[dict[str, object]], size: int = 512) -> Iterator[list[dict[str, object]]]:
    """The rows a few hundred at a time: one write each, not one per line."""
    chunk = []
    for r in rows:
        chunk.append(r)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _short_people(people: list[str]) -> str:
    from mailtrack.tracker.model import Person  # the one reader of identities (no dulwich in it)

    return ",".join(Person.parse(p).email.split("@")[0] or p for p in people)


SHOWN = [("title", "Title"), ("status", "Status"), ("resolution", "Resolution"), ("type", "Type"),
         ("severity", "Severity"), ("priority", "Priority"), ("components", "Components"),
         ("milestone", "Milestone"), ("version", "Version"), ("assigned", "Assigned"),
         ("reporters", "Reporters"), ("owners", "Owners"), ("carbons", "Cc"), ("tags", "Tags"),
         ("summary", "Summary")]  # fmt: skip  # what `show` prints of an issue's fields, in this order


def cmd_show(store: Store, args: argparse.Namespace) -> int:
    snap = store.require()
    name = snap.resolve(args.id)
    issue = snap.issue(name)
    comments = []
    for c in snap.comments(name):
        sizes = []
        for a in c.attachments:
            data = snap.attachment(name, a)
            sizes.append((a, len(data) if data is not None else None))
        comments.append((c.name, c.author.mailbox, _when(c.created), sizes, c.text))
    print(_show_text(name, issue.author.mailbox, _when(issue.created), _when(issue.modified or issue.created),
                     issue.record(), comments))
    return 0


def served_show(args: argparse.Namespace) -> int | None:
    """`show` from an index that describes the tip already (lookup.served): the issue's record and its comments
    as the index keeps them, no store. None when it cannot be served so (then cmd_show, which words any error)."""
    from mailtrack.tracker.lookup import served  # the index alone: nothing of dulwich or the store is loaded

    index = served(args.repo)
    if index is None:
        return None
    with index:
        found = index.issue(args.id)
        if found is None:
            return None
        name, record = found
        created, modified = _stamp_shown(record["created"]), _stamp_shown(record["modified"] or record["created"])
        comments = []
        for when, cname, author, text, attachments in index.comments(name):
            shown = _stamp_shown(when)
            if shown is None:
                return None
            comments.append((cname, author, shown, [(a, index.size(name, a)) for a in attachments], text))
        if created is None or modified is None:
            return None
    print(_show_text(name, str(record["author"]), created, modified, record, comments))
    return 0


def _stamp_shown(stamp: object) -> str | None:
    """_when of a time kept as text (TIME_FORMAT or STAMP_FORMAT, in UTC), by its digits; None for any other text."""
    t = str(stamp)
    if len(t) not in (16, 23) or t[8] != "T" or not (t[:8] + t[9:15]).isdigit() or not t.isascii() or t[0] == "0":
        return None
    return f"{t[:4]}-{t[4:6]}-{t[6:8]} {t[9:11]}:{t[11:13]}:{t[13:15]} UTC"


def _show_text(name: str, author: str, created: str, modified: str, record: dict[str, object],
               comments: list[tuple[str, str, str, list[tuple[str, int | None]], str]]) -> str:
    """What `show` prints: the issue (`record`: Issue.record()) and its comments (name, author, date, attachments
    and their sizes, text), whether read from the branch or from the index."""
    out = [f"issue {name}", f"Author:     {author}", f"Created:    {created}", f"Modified:   {modified}"]
    for f, label in SHOWN:
        v = _value(record[f])
        if v or f in ("title", "status"):
            out.append(f"{label + ':':<11} {v}")
    if record["message_id"]:
        out.append(f"Message-ID: {record['message_id']}")
    description = str(record["description"])
    if description.strip():
        out += ["", *("    " + ln if ln else "" for ln in description.splitlines())]
    for cname, who, when, attachments, text in comments:
        out += ["", f"comment {cname[:7]}", f"Author: {who}", f"Date:   {when}"]
        for a, size in attachments:
            out.append(f"Attachment: {a} ({size if size is not None else 'missing'} bytes)")
        out += ["", *("    " + ln if ln else "" for ln in text.splitlines())]
    return "\n".join(out)


def _when(d: datetime) -> str:
    return d.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _edit(store: Store, args: argparse.Namespace, edits: Callable[[Snapshot], list[Edit]], comment: str | None = None,
          attachments: list[tuple[str, bytes]] | None = None) -> int:
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.changes import edit_issue

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
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.changes import parse_assignment

    edits = [parse_assignment(a) for a in args.assignments]
    return _edit(store, args, lambda s: edits)


def cmd_close(store: Store, args: argparse.Namespace) -> int:
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.changes import close_edits

    snap = store.require()
    name = snap.resolve(args.id)
    issue = snap.issue(name)
    if issue.status in snap.project().closed and not args.resolution:  # as reopen: not even the comment
        print(f"nothing to change: issue {snap.short(name)} is already closed ({issue.resolution or issue.status})")
        return 0
    return _edit(store, args, lambda s: close_edits(s, args.resolution or "", s.issue(s.resolve(args.id))), args.message)


def cmd_reopen(store: Store, args: argparse.Namespace) -> int:
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.changes import reopen_edits

    snap = store.require()
    name = snap.resolve(args.id)
    issue = snap.issue(name)
    if issue.status not in snap.project().closed:  # not even the comment: the command does nothing
        print(f"nothing to change: issue {snap.short(name)} is not closed ({issue.status})")
        return 0
    return _edit(store, args, lambda s: reopen_edits(s, s.issue(s.resolve(args.id))), args.message)


def cmd_assign(store: Store, args: argparse.Namespace) -> int:
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.changes import Edit

    return _edit(store, args, lambda s: [Edit("assigned", "=", ",".join(args.who))])


def _plus_minus(fieldname: str, tokens: list[str]) -> list[Edit]:
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.changes import Edit

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
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.store import issue_dir

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
    # the store and the records load dulwich: each command imports what it uses
    from mailtrack.tracker.model import is_comment_filename
    from mailtrack.tracker.store import StoreError

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
    from dulwich.objects import ObjectID
    from dulwich.refs import Ref

    # the revision and last-pull lookups push --mail uses, and the store's errors
    from mailtrack.patches import format as patches
    from mailtrack.tracker.store import StoreError

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
    sp.set_defaults(served=served_list)
    sp.add_argument("-a", "--all", action="store_true", help="include closed issues")
    for f in FILTERS:
        sp.add_argument(f"--{f}", dest=f"filter_{f}", metavar="VALUE", help=f"only issues whose {f} matches")
    sp.add_argument("--sort", help="fields to sort by, comma-separated, '-' for descending (default: created); "
                    "status, severity and the like in project.xml's order")
    sp.add_argument("--format", help="table (default), json, id, or a template such as '{short} {title}'")

    sp = cmd("show", cmd_show, "show an issue and its comments")
    sp.set_defaults(served=served_show)
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
    try:
        served = getattr(args, "served", None)  # list, show: from the index alone, when it describes the tip
        code = served(args) if served is not None else None
        if code is None:
            code = _with_store(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # `git issues list | head`: the reader has what it wanted, as with git
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UsageError as e:  # a served list's bad --format (the store's errors: _with_store)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


def _with_store(args: argparse.Namespace) -> int:
    """The command, on the store; its errors as one line on stderr."""
    import logging

    # every command that the index alone did not answer: the store, and its errors
    from mailtrack.tracker.store import Store, StoreError
    from mailtrack.tracker.xmlformat import FormatError

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
    except (StoreError, FormatError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        logging.getLogger("mailtrack").removeHandler(warnings)


if __name__ == "__main__":
    sys.exit(main())

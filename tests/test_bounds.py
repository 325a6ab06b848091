"""What one hostile mail may cost: commands per mail, the transcript's size, Cc addresses taken,
pending patch series, XML depth; each attack through the real `mailtrack deliver`."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.cli import deliver, mailtrack
from helpers.mail import make_mail, outbox, patch_mail, replies, spool_path, text_of
from helpers.repos import git, new_issue, read_comments, read_issue, read_names
from mailtrack.config import AccessConfig
from mailtrack.fields import PEOPLE_FIELDS
from mailtrack.patches.format import file_diff
from mailtrack.tracker.changes import Edit, apply_edits
from mailtrack.tracker.model import Issue, Person, dedupe
from mailtrack.tracker.store import issue_dir
from mailtrack.tracker.xmlformat import MAX_DEPTH
from mailtrack.worker.commands import MAX_COMMANDS, MAX_SHOWN, MAX_VALUES

MAX_CC = AccessConfig().max_cc_per_mail


def tags_mail(lines: int, **kw: str) -> bytes:
    """A new issue whose first paragraph is `lines` lines `Tags: +tN`."""
    return make_mail(subject="Tags bomb", body="".join(f"Tags: +t{i}\n" for i in range(lines)) + "\nIt is on fire.\n", **kw)


def transcript(repo: Path) -> str:
    """The text of the one reply in the outbox: the transcript of a mail's commands."""
    [reply] = [m for m in replies(repo) if m["Subject"].strip().startswith("Processed")]
    return text_of(reply)


def test_ten_thousand_pseudo_headers_cost_one_bounded_transcript(repo: Path) -> None:
    """10,000 `Tags: +tN` lines (the 129 KB mail that took 180 s and 5.8 GB, and queued a 679 MB
    transcript): the first MAX_COMMANDS are read, the rest is one error line, nothing is applied
    (all or none), and the transcript quotes MAX_COMMANDS + 1 lines in a few kilobytes."""
    raw = tags_mail(10_000)
    assert len(raw) > 120_000
    r = deliver(repo, raw)
    assert (0, b"") == (r.returncode, r.stderr)
    assert [] == read_names(repo)
    text = transcript(repo)
    quoted = [ln for ln in text.splitlines() if ln.startswith("> ")]
    assert MAX_COMMANDS + 1 == len(quoted)
    assert f"> ({10_000 - MAX_COMMANDS} more command lines)" == quoted[-1]
    assert f"error: at most {MAX_COMMANDS} commands a mail" in text
    assert len(text) < 20_000


def test_transcript_does_not_grow_with_the_mail(repo: Path) -> None:
    """The same attack at twice the size queues a transcript of the same size: what a mail's
    commands cost is bounded by MAX_COMMANDS, not by the square of the mail."""
    sizes = []
    for lines, mid in ((10_000, "<a@x>"), (20_000, "<b@x>")):
        assert 0 == deliver(repo, tags_mail(lines, message_id=mid)).returncode
        text = transcript(repo)
        sizes.append(len(text) - len(str(lines - MAX_COMMANDS)))
    assert sizes[0] == sizes[1]


def test_one_long_command_line_is_applied_and_quoted_short(repo: Path) -> None:
    """One `Tags:` line with MAX_VALUES tags is one command: applied, and the transcript quotes the
    line and its result cut to MAX_SHOWN characters each."""
    tags = " ".join(f"+t{i}" for i in range(MAX_VALUES))
    r = deliver(repo, make_mail(body=f"Tags: {tags}\n\nIt is on fire.\n"))
    assert 0 == r.returncode
    [name] = read_names(repo)
    assert MAX_VALUES == len(read_issue(repo, name).tags)
    text = transcript(repo)
    assert "more characters)" in text
    assert all(len(ln) <= MAX_SHOWN + 80 for ln in text.splitlines()), max(map(len, text.splitlines()))
    assert len(text) < 5_000


def test_values_past_the_cap_change_nothing(repo: Path) -> None:
    """100 lines of 500 alternating `+x -y` values each (the 446 KB mail that took 254 s before the
    edits of a list were made linear): past MAX_VALUES values a mail, each line is an error, and
    nothing is applied."""
    body = "".join("Tags: " + " ".join(f"+t{j}x{i}" if i % 2 else f"-u{j}x{i}" for i in range(500)) + "\n" for j in range(100))
    r = deliver(repo, make_mail(body=body + "\nIt is on fire.\n"))
    assert (0, []) == (r.returncode, read_names(repo))
    text = transcript(repo)
    assert 100 - MAX_VALUES // 500 == text.count(f"error: at most {MAX_VALUES} values a mail")


def test_commands_past_the_cap_on_a_comment_change_nothing(repo: Path) -> None:
    """MAX_COMMANDS + 1 commands in a reply to an issue: nothing is applied, the comment is not kept
    either (the mail is refused whole, as for any command error), one summary line says why."""
    name = new_issue(repo, "Printer on fire")
    before = (read_issue(repo, name), read_comments(repo, name))
    (repo / "mailtrack.toml").write_text('[access]\nmaintainers = ["alice@example.org"]\n')
    body = "".join(f"Tags: +t{i}\n" for i in range(MAX_COMMANDS + 1)) + "\nMore tags.\n"
    mail = make_mail(subject=f"[repo #{name[:7]}] Printer on fire", body=body, message_id="<c@x>")
    assert 0 == mailtrack("deliver", repo=repo, config=repo / "mailtrack.toml", input=mail).returncode
    assert before == (read_issue(repo, name), read_comments(repo, name))
    text = transcript(repo)
    assert ("> (1 more command lines)" in text, "refused" in text) == (True, False)


# --- Cc: who makes us write to third parties -------------------------------------------------


def cc_mail(n: int, **kw: str) -> bytes:
    return make_mail(Cc=", ".join(f"p{i}@third.example" for i in range(n)), **kw)


def third_parties(repo: Path) -> set[str]:
    """Everyone the outbox writes to at third.example."""
    return {a.addr_spec for m in outbox(repo) for h in ("To", "Cc", "Bcc") if m[h] for a in m[h].addresses
            if a.addr_spec.endswith("@third.example")}


def test_a_strangers_cc_is_not_taken(repo: Path) -> None:
    """A stranger's new issue with 500 Cc addresses: the issue is filed with no Cc, and no mail goes
    to any of the 500 (access.cc_from = ["known"] by default)."""
    r = deliver(repo, cc_mail(500))
    assert (0, b"") == (r.returncode, r.stderr)
    [name] = read_names(repo)
    assert [] == read_issue(repo, name).carbons
    assert set() == third_parties(repo)


def test_a_known_senders_cc_is_capped(repo: Path) -> None:
    """A maintainer's new issue with 500 Cc addresses: the first max_cc_per_mail go on the Cc list,
    the issue says how many were left out, and only those are written to."""
    (repo / "mailtrack.toml").write_text('[access]\nmaintainers = ["alice@example.org"]\n')
    r = mailtrack("deliver", repo=repo, config=repo / "mailtrack.toml", input=cc_mail(500))
    assert (0, b"") == (r.returncode, r.stderr)
    [name] = read_names(repo)
    issue = read_issue(repo, name)
    assert [f"p{i}@third.example" for i in range(MAX_CC)] == issue.carbons
    assert f"{500 - MAX_CC} addresses of the mail's Cc: at most {MAX_CC} are taken" in issue.description
    assert third_parties(repo) <= set(issue.carbons)


def test_cc_from_anyone_takes_a_strangers_cc_within_the_cap(repo: Path) -> None:
    """access.cc_from = ["anyone"]: a stranger's Cc is taken, max_cc_per_mail of them."""
    (repo / "mailtrack.toml").write_text('[access]\ncc_from = ["anyone"]\nmax_cc_per_mail = 3\n')
    assert 0 == mailtrack("deliver", repo=repo, config=repo / "mailtrack.toml", input=cc_mail(5)).returncode
    [name] = read_names(repo)
    assert ["p0@third.example", "p1@third.example", "p2@third.example"] == read_issue(repo, name).carbons


def test_cc_commands_past_the_cap_change_nothing(repo: Path) -> None:
    """`Cc:` commands adding more than max_cc_per_mail addresses (from the reporter of a new issue,
    who may change its Cc): the mail is refused with one error line, no issue, nobody written to."""
    body = "Cc: " + " ".join(f"+p{i}@third.example" for i in range(MAX_CC + 1)) + "\n\nIt is on fire.\n"
    assert 0 == deliver(repo, make_mail(body=body)).returncode
    assert [] == read_names(repo)
    assert set() == third_parties(repo)
    assert f"at most {MAX_CC} addresses a mail go on Cc lists" in transcript(repo)


def test_branch_stays_clean(repo: Path) -> None:
    """After the attacks above the branch passes the real `git fsck --strict`."""
    assert 0 == deliver(repo, tags_mail(MAX_COMMANDS + 5)).returncode
    assert 0 == deliver(repo, cc_mail(50, message_id="<cc@x>")).returncode
    git(repo, "fsck", "--strict")


# --- XML depth -----------------------------------------------------------------------------------


def test_deeply_nested_xml_in_a_patch_is_refused_with_a_reason(repo: Path) -> None:
    """A patch mail whose issue.xml nests 50,000 elements (it crashed the worker with RecursionError,
    three times, into failed, and the sender heard nothing): refused at once, the sender told
    why, nothing written, nothing in failed."""
    name = "ab" + "c" * 38
    deep = b"<issue>\n" + b"<x>" * 50_000 + b"</x>" * 50_000 + b"\n</issue>\n"
    raw = patch_mail(file_diff(f"{name[:2]}/{name[2:]}/issue.xml", None, deep), "[PATCH] deep", mid="<deep@x>")
    before = git(repo, "rev-parse", "issues").strip()
    r = deliver(repo, raw)
    assert (0, b"", before) == (r.returncode, r.stderr, git(repo, "rev-parse", "issues").strip())
    [reply] = replies(repo)
    assert f"elements nested more than {MAX_DEPTH} deep" in " ".join(text_of(reply).split())
    assert 0 == sum(1 for p in (spool_path(repo) / "failed").rglob("*") if p.is_file())


# --- partial patch series ------------------------------------------------------------------------


def series_part(n: int, m: int, frm: str, mid: str, root: str, path: str) -> bytes:
    """Part n/m of a series from `frm` in the thread of `root` ("" = it starts its own), adding `path`."""
    thread = f"In-Reply-To: {root}\nReferences: {root}\n" if root else ""
    return patch_mail(file_diff(path, None, f"{mid}\n".encode()), f"[PATCH {n}/{m}] part {n}", frm, mid, thread)


def test_partial_series_are_capped_per_sender_and_in_total(repo: Path) -> None:
    """Partial series (the attack held 2,000, each mail slower than the last): past
    max_pending_series_per_sender of one sender, or max_pending_series in all, the first mail of
    one more is refused and its sender told why; the parts of a series already waiting are still
    taken, and it is applied once complete."""
    name = new_issue(repo, "Printer on fire")
    (repo / "mailtrack.toml").write_text("[gateway]\nmax_pending_series = 4\nmax_pending_series_per_sender = 2\n")

    def send(frm: str, mid: str, n: int = 1, root: str = "") -> str:
        raw = series_part(n, 2, frm, mid, root, f"{issue_dir(name)}/{mid.strip('<>').replace('@', '-')}.txt")
        r = mailtrack("deliver", repo=repo, config=repo / "mailtrack.toml", input=raw)
        assert (0, b"") == (r.returncode, r.stderr)
        return " ".join(" ".join(text_of(m).split()) for m in replies(repo))

    mallory, eve, trent = "Mallory <mallory@example.org>", "Eve <eve@example.org>", "Trent <trent@example.org>"
    assert ["", ""] == [send(mallory, f"<m{i}@x>") for i in range(2)]
    said = send(mallory, "<m2@x>")
    assert "2 partial patch series of yours are waiting for their parts (at most 2)" in said
    assert ["", ""] == [send(eve, f"<e{i}@x>") for i in range(2)]
    said = send(trent, "<t0@x>")
    assert "too many partial patch series are waiting for their parts (4; at most 4)" in said
    pending = [p for p in (spool_path(repo) / "patches").glob("*/*") if not (p / "done").exists()]
    assert 4 == len(pending)
    before = git(repo, "rev-parse", "issues").strip()
    said = send(mallory, "<m0b@x>", n=2, root="<m0@x>")  # completes a series that waits: taken and applied
    assert ("processed", True) == ("processed" if "was processed" in said else said, before != git(repo, "rev-parse", "issues").strip())
    assert "" == send(trent, "<t1@x>")  # one series fewer waits: room again


def test_show_asked_many_times_sends_the_issue_once(repo: Path) -> None:
    """`show ID` fifty times to the control address: one copy of the issue, one transcript."""
    name = new_issue(repo, "Printer on fire")
    body = f"show {name[:7]}\n" * 50
    assert 0 == deliver(repo, make_mail(to="control@tracker.localhost", body=body, message_id="<show@x>")).returncode
    subjects = sorted(m["Subject"].strip() for m in replies(repo))
    assert ["Processed: Printer on fire", f"[repo #{name[:7]}] Printer on fire"] == subjects


# --- list edits: linear, and what they always meant ---------------------------------------------

POOL = ["a", "A", "b", "x@y.org", "X@Y.org", "Bob <x@y.org>", "Bob", "bob", "c@d", "Carol <C@D>", "e f"]


def spelled_out(issue: Issue, edits: list[Edit]) -> Issue:
    """What list edits mean, applied the slow way: each edit on the whole list, deduplicated after it."""
    values: dict[str, list[str]] = {}
    for e in edits:
        cur = values.get(e.field, list(getattr(issue, e.field)))
        items = [Person.parse(v).mailbox if e.field in PEOPLE_FIELDS and Person.parse(v).email else v.strip()
                 for v in e.value.split(",") if v.strip()]
        if e.op == "=":
            new = items
        elif e.op == "+":
            new = cur + items
        else:
            gone = {Person.parse(i).email.lower() or i for i in items} if e.field in PEOPLE_FIELDS else set(items)
            new = [v for v in cur if (Person.parse(v).email.lower() or v) not in gone and v not in gone]
        values[e.field] = dedupe(new)
    return replace(issue, **values)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["tags", "carbons", "components", "assigned"]), st.lists(st.sampled_from(POOL), max_size=5),
       st.lists(st.tuples(st.sampled_from("=+-"), st.lists(st.sampled_from(POOL), max_size=3)), min_size=1, max_size=6))
def test_list_edits_mean_what_they_always_meant(field: str, start: list[str], ops: list[tuple[str, list[str]]]) -> None:
    """apply_edits (a value added or removed in constant time) gives what each edit applied to the
    whole list and deduplicated gives, duplicates in the file and people by address included."""
    issue = replace(Issue(created=datetime(2024, 1, 1, tzinfo=UTC), author=Person("A", "a@b"), title="t", name="0" * 40),
                    **{field: start})
    edits = [Edit(field, op, ",".join(vals)) for op, vals in ops]
    assert getattr(spelled_out(issue, edits), field) == getattr(apply_edits(issue, edits), field)

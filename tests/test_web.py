"""The read-only web view over a real waitress server on a free loopback port, driven with http.client:
the pages, their headers, the mbox read back with `mailbox`, the feeds parsed as XML, the redirects."""

from __future__ import annotations

import http.client
import json
import mailbox
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.mail import make_mail
from helpers.ports import free_port, note_listener
from helpers.repos import git, make_gateway, new_issue
from mailtrack.config import Config, GatewayConfig, WebConfig
from mailtrack.tracker.lookup import default_path
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Store
from mailtrack.web.app import WebApp
from mailtrack.web.server import WebServer

pytestmark = pytest.mark.network  # every test here starts the web server on loopback

ATOM = "{http://www.w3.org/2005/Atom}"
HOSTILE = "<script>alert('x')</script>"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class Site:
    repo: Path
    port: int
    issue: str  # the full name of the issue the mails made
    short: str

    def get(self, path: str, method: str = "GET", **headers: str) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, headers=headers)
            r = conn.getresponse()
            return Reply(r.status, r.headers, r.read())
        finally:
            conn.close()


def _comment(body: str, message_id: str, in_reply_to: str, frm: str = "Bob <bob@example.org>",
             files: list[tuple[str, str, bytes]] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = frm, "issues@tracker.localhost", "Re: the report"
    msg["Message-ID"], msg["In-Reply-To"] = message_id, in_reply_to
    msg.set_content(body)
    for name, ctype, data in files or []:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


def serve(repo: Path, **web: object) -> Iterator[int]:
    port = free_port()
    note_listener(f"the web view on 127.0.0.1:{port}")
    config = Config(gateway=GatewayConfig(project="proj"), web=WebConfig(port=port, **web))  # type: ignore[arg-type]
    server = WebServer(WebApp(config, str(repo)), config.web)
    server.start()
    try:
        yield port
    finally:
        server.stop()


@pytest.fixture
def site(repo: Path) -> Iterator[Site]:
    """An issue opened by a hostile mail, with two comments (one quoting, one with hostile attachments), served."""
    gw = make_gateway(repo)
    try:
        assert "created" == gw.handle(make_mail(subject=f"{HOSTILE} printer", body=f"It burns: {HOSTILE}\n",
                                                message_id="<report@example.org>")).action.value
        quoting = "Same here, the zebra printer too.\n\n> It burns\n> badly\n\nAnd the fax.\n"
        assert "commented" == gw.handle(_comment(quoting, "<c1@example.org>", "<report@example.org>")).action.value
        files = [(f"{HOSTILE}.html", "text/html", b"<html><script>alert(1)</script></html>"),
                 ("logo.svg", "image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>')]
        assert "commented" == gw.handle(_comment("Attached the page.\n", "<c2@example.org>", "<c1@example.org>",
                                                 frm="Carol <carol@example.org>", files=files)).action.value
    finally:
        gw.close()
        gw.store.close()
    with Store.open(repo) as store:
        snap = store.snapshot()
        (name,) = list(snap.issue_names())
        short = snap.short(name)
    for port in serve(repo):
        yield Site(repo, port, name, short)


def test_list_page_lists_the_issue_with_counts_per_status(site: Site) -> None:
    """`/` lists the open issue, escaped, with a count per status and a link to its page."""
    r = site.get("/")
    assert 200 == r.status
    assert "text/html; charset=utf-8" == r.headers["Content-Type"]
    assert f'<a href="/{site.short}/">&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; printer</a>' in r.text
    assert re.search(r'status-new">new <span class="n">1</span>', r.text)


def test_every_page_is_escaped_and_carries_a_strict_policy(site: Site) -> None:
    """No page has a script element, however hostile the mail; each has a CSP without scripts, and nosniff."""
    for path in ("/", f"/{site.short}/", "/search?q=script", "/nothing-here", f"/search?q={HOSTILE}"):
        r = site.get(path.replace(" ", "%20").replace("'", "%27").replace("<", "%3C").replace(">", "%3E"))
        assert "<script" not in r.text.lower(), path
        assert "onload" not in r.text, path
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe" not in csp, path
        assert "nosniff" == r.headers["X-Content-Type-Options"], path
        assert "DENY" == r.headers["X-Frame-Options"], path


def test_issue_page_has_fields_description_and_comments_in_order(site: Site) -> None:
    """`/<id>/` by a 4-digit prefix: the fields, the description, each comment with its author and time,
    anchored by its Message-ID, quoted text folded but kept, attachments linked."""
    r = site.get(f"/{site.issue[:4]}/")
    assert 200 == r.status
    page = r.text
    assert f"<h1><span class=\"id\">#{site.short}</span> &lt;script&gt;" in page
    assert "It burns: &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert '<section class="description" id="report@example.org">' in page
    first, second = page.index('id="c1@example.org"'), page.index('id="c2@example.org"')
    assert first < second
    assert "<span class=\"author\">Bob</span> wrote on" in page[first:second]
    assert '<details class="quote"><summary>Quoted text (2 lines)</summary><pre>&gt; It burns\n&gt; badly</pre></details>' in page
    assert "And the fax." in page[first:second]
    assert f'href="/{site.short}/logo.svg" download>logo.svg</a>' in page[second:]
    assert f"mailto:issues+{site.short}@tracker.localhost" in page


def test_an_issue_id_without_the_slash_redirects(site: Site) -> None:
    """`/<full id>` redirects to the page at its short name."""
    r = site.get(f"/{site.issue}")
    assert (302, f"/{site.short}/") == (r.status, r.headers["Location"])


def test_attachments_are_downloads_never_rendered(site: Site) -> None:
    """An HTML or SVG attachment comes as application/octet-stream, Content-Disposition attachment,
    nosniff and a sandboxing policy: the browser saves it, it never runs in our origin."""
    with Store.open(site.repo) as store:
        names = [f for f in store.snapshot().files(site.issue) if f.endswith((".html", ".svg"))]
    assert 2 == len(names)
    for name in names:
        r = site.get(f"/{site.short}/{name.replace('<', '%3C').replace('>', '%3E').replace(chr(39), '%27')}")
        assert 200 == r.status, name
        assert "application/octet-stream" == r.headers["Content-Type"]
        assert r.headers["Content-Disposition"].startswith("attachment; ")
        assert "nosniff" == r.headers["X-Content-Type-Options"]
        assert "sandbox" in r.headers["Content-Security-Policy"]
        with Store.open(site.repo) as store:
            assert store.snapshot().attachment(site.issue, name) == r.body


def test_message_id_permalinks_redirect_to_the_comment_or_the_issue(site: Site) -> None:
    """`/m/<Message-ID>` redirects to the comment that mail became, or to the issue it opened."""
    comment = site.get("/m/%3Cc2@example.org%3E")
    assert (302, f"/{site.short}/#c2@example.org") == (comment.status, comment.headers["Location"])
    opened = site.get("/m/report@example.org")
    assert (302, f"/{site.short}/") == (opened.status, opened.headers["Location"])
    assert 404 == site.get("/m/%3Cnever@example.org%3E").status


def test_mbox_reads_back_and_replies_come_to_the_issue(site: Site, tmp_path: Path) -> None:
    """`/<id>.mbox` is the thread as mail: Python's mailbox reads three messages with their
    Message-IDs, In-Reply-To and our issue address to reply to; the attachment is there."""
    r = site.get(f"/{site.short}.mbox")
    assert 200 == r.status and "application/mbox" == r.headers["Content-Type"]
    path = tmp_path / "thread.mbox"
    path.write_bytes(r.body)
    box = mailbox.mbox(str(path))
    try:
        messages = list(box)
    finally:
        box.close()
    assert ["<report@example.org>", "<c1@example.org>", "<c2@example.org>"] == [m["Message-ID"] for m in messages]
    assert [None, "<report@example.org>", "<c1@example.org>"] == [m["In-Reply-To"] for m in messages]
    assert {f"issues+{site.short}@tracker.localhost"} == {m["Reply-To"] for m in messages}
    assert f"[proj #{site.short}] {HOSTILE} printer" == messages[0]["Subject"]
    assert "Carol <carol@example.org>" == messages[2]["From"]
    parts = [p.get_filename() for p in messages[2].walk() if p.get_filename()]
    assert 2 == len(parts) and "logo.svg" in parts


def test_raw_xml_and_json(site: Site) -> None:
    """`/<id>.xml` is issue.xml as on the branch; `/<id>.json` and `/?format=json` the same fields as data."""
    xml = site.get(f"/{site.short}.xml")
    assert git(site.repo, "show", f"issues:{site.issue[:2]}/{site.issue[2:]}/issue.xml").encode() == xml.body
    assert "sandbox" in xml.headers["Content-Security-Policy"]
    data = json.loads(site.get(f"/{site.short}.json").body)
    assert (site.issue, f"{HOSTILE} printer") == (data["id"], data["title"])
    assert ["<c1@example.org>", "<c2@example.org>"] == [c["message_id"] for c in data["comments"]]
    listing = json.loads(site.get("/?format=json").body)
    assert (1, {"new": 1}, [site.issue]) == (listing["total"], listing["counts"], [i["id"] for i in listing["issues"]])


def test_feeds_parse_as_atom(site: Site) -> None:
    """`/new.atom` and `/<id>/atom` are Atom documents whose titles hold the hostile text as text."""
    new = ET.fromstring(site.get("/new.atom").body)
    assert f"{ATOM}feed" == new.tag
    (entry,) = new.findall(f"{ATOM}entry")
    assert f"#{site.short} {HOSTILE} printer" == entry.findtext(f"{ATOM}title")
    issue = ET.fromstring(site.get(f"/{site.short}/atom").body)
    links = [e.find(f"{ATOM}link").get("href") for e in issue.findall(f"{ATOM}entry")]  # type: ignore[union-attr]
    assert 3 == len(links)
    assert links[0].endswith(f"/{site.short}/#c2@example.org")  # newest first


def test_search_finds_a_word_of_a_comment(site: Site) -> None:
    """`/search?q=` finds the issue by a word only a comment has; FTS syntax in a query is just words."""
    r = site.get("/search?q=zebra")
    assert 200 == r.status
    assert f'<a href="/{site.short}/"><code>{site.short}</code>' in r.text
    assert "<mark>zebra</mark>" in r.text
    assert "Nothing matches" in site.get("/search?q=unicorn").text
    for nasty in ("%22", "AND%20(", "NEAR(a%20b", "*", "a%22b%20OR", "%00", "zebra%00%01", "%E2%80%AE"):
        assert 200 == site.get(f"/search?q={nasty}").status, nasty


def test_etag_answers_304_until_the_branch_moves(site: Site) -> None:
    """The ETag is the branch tip's: the same again is 304 with no body; a new comment changes it."""
    first = site.get(f"/{site.short}/")
    etag = first.headers["ETag"]
    assert git(site.repo, "rev-parse", "issues").strip() in etag
    again = site.get(f"/{site.short}/", **{"If-None-Match": etag})
    assert (304, b"") == (again.status, again.body)
    assert 0 == run_cli(site.repo, "comment", site.short, "-m", "one more").code
    after = site.get(f"/{site.short}/", **{"If-None-Match": etag})
    assert 200 == after.status and after.headers["ETag"] != etag and "one more" in after.text


@pytest.mark.parametrize("path", [
    "/zz/", "/12345678/", "/abc/", "/%ff%fe/", "/m/", "/nothing", "/style.css/x", "/?page=99", "/?page=x",
    "/{short}/issue.xml", "/{short}/no-such-file", "/{short}/..%2f..%2fproject.xml", "/{short}/a/b", "/search?page=-1",
])  # fmt: skip
def test_bad_urls_get_a_404_page_never_a_traceback(site: Site, path: str) -> None:
    """A bad address is a 404 HTML page that says so, with no traceback in it."""
    r = site.get(path.format(short=site.short))
    assert 404 == r.status
    assert "<h1>404 Not Found</h1>" in r.text and "Traceback" not in r.text


def test_bad_queries_and_writes_are_refused(site: Site) -> None:
    """An illegal filter value is a 400 naming the legal ones; any method but GET and HEAD is a 405."""
    r = site.get("/?status=bogus")
    assert 400 == r.status and "legal values are" in r.text
    for method in ("POST", "PUT", "DELETE"):
        refused = site.get("/", method=method)
        assert (405, "GET, HEAD") == (refused.status, refused.headers["Allow"])
    head = site.get(f"/{site.short}/", method="HEAD")
    assert (200, b"") == (head.status, head.body)


def test_list_filters_and_sort_as_git_issues_list(repo: Path) -> None:
    """The list's query parameters filter and sort as `git issues list` does, page by page."""
    for title, severity in (("alpha", "minor"), ("beta", "blocker"), ("gamma", "minor"), ("delta", "critical")):
        new_issue(repo, title, "--severity", severity)
    assert 0 == run_cli(repo, "close", run_cli(repo, "list", "--format", "{short}", "--title", "gamma").out.strip()).code
    for port in serve(repo, page_size=2):
        site = Site(repo, port, "", "")
        for query, args in (("", ()), ("?all=1&sort=-severity", ("--all", "--sort=-severity")),
                            ("?severity=minor&all=1", ("--severity", "minor", "--all")), ("?sort=title", ("--sort", "title"))):
            expected = run_cli(repo, "list", "--format", "id", *args).out.split()
            data = json.loads(site.get(f"/{query}{'&' if query else '?'}format=json").body)
            pages = [json.loads(site.get(f"/{query}{'&' if query else '?'}format=json&page={n}").body)
                     for n in range(2, data["pages"] + 1)]
            shown = [i["id"] for d in [data, *pages] for i in d["issues"]]
            assert expected == shown, query
        page = site.get("/?sort=title")
        assert '<a rel="next" href="/?sort=title&amp;page=2">Next</a>' in page.text


def test_search_index_is_rebuilt_from_the_branch(site: Site) -> None:
    """Delete the index: the next search builds it again from the branch and finds the same."""
    with Store.open(site.repo) as store:
        path = default_path(store.snapshot())
    for port in serve(site.repo):  # a fresh process's view: its own connection to the index
        path.unlink()
        for extra in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            extra.unlink(missing_ok=True)
        assert "<mark>zebra</mark>" in Site(site.repo, port, "", "").get("/search?q=zebra").text


CHROMIUM = "/usr/bin/chromium"  # Debian's package; .ci/run installs it


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium; .ci/run does)")
    # as root it runs only with --no-sandbox; its stderr has harmless dbus noise
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)


class _Dom(HTMLParser):
    """What a rendered page holds: each element's tag, the text of the h1, whether a details element is open."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.h1 = ""
        self.open_details = 0
        self._in_h1 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_h1 = self._in_h1 or tag == "h1"
        self.open_details += tag == "details" and any(k == "open" for k, _ in attrs)

    def handle_endtag(self, tag: str) -> None:
        self._in_h1 = self._in_h1 and tag != "h1"

    def handle_data(self, data: str) -> None:
        if self._in_h1:
            self.h1 += data


@pytest.mark.slow  # a browser start is about a second
def test_a_real_browser_renders_the_hostile_title_as_text(site: Site, tmp_path: Path) -> None:
    """Headless Chromium loads the issue page: the hostile title is the h1's text, no script element
    exists in the DOM, the quoted text is folded; the page renders to a screenshot."""
    url = f"http://127.0.0.1:{site.port}/{site.short}/"
    dom = _Dom()
    dom.feed(_chromium("--dump-dom", url).stdout)
    assert f"#{site.short} {HOSTILE} printer" == " ".join(dom.h1.split())
    assert "script" not in dom.tags and "details" in dom.tags and 0 == dom.open_details
    shot = tmp_path / "issue.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,900", url)
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_unreadable_files_are_pages_that_say_so(site: Site) -> None:
    """A comment file that does not parse is shown in its place, the rest of the issue with it; an
    issue.xml that does not parse is a 500 page naming the file, and the list names it: no traceback."""
    with Store.open(site.repo) as store:
        folder = f"{site.issue[:2]}/{site.issue[2:]}"
        other = "ab" + "c" * 38
        files: dict[str, bytes | None] = {
            f"{folder}/comment_20300101T000000.000000Z_{'d' * 40}.xml": b"<comment><broken",
            f"ab/{'c' * 38}/issue.xml": b"<issue><title>no created time</title></issue>",
        }
        snap = store.snapshot()
        commit = store.write_commit([snap.commit] if snap.commit else [], snap.tree, files, "broken files",
                                    Person("Mallory", "mallory@example.org"))
        assert store.move(snap.commit, commit)
    page = site.get(f"/{site.short}/")
    assert 200 == page.status
    assert "cannot be read" in page.text and 'id="c2@example.org"' in page.text
    broken = site.get(f"/{other[:8]}/")
    assert 500 == broken.status
    assert "issue.xml" in broken.text and "Traceback" not in broken.text
    listing = site.get("/?all=1")
    assert 200 == listing.status and f"ab/{'c' * 38}/issue.xml" in listing.text

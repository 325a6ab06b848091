"""The read-only web view as a WSGI application: routes, headers, ETags, errors.

Nothing here writes to the branch, and no page needs JavaScript. Every response carries a strict
Content-Security-Policy and `nosniff`; attachments are always downloads; a bad URL is a 404 page and
an error of ours a 500 page, never a traceback. An ETag made of the branch's tip answers a repeated
request with 304 before any page is made.

A site can serve it with gunicorn or uWSGI: `gunicorn 'mailtrack.web.app:create()'` (the
configuration and repository from MAILTRACK_CONFIG and MAILTRACK_REPO); `mailtrack web` serves it
with waitress (`mailtrack.web.server`).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
from markupsafe import Markup, escape

from mailtrack import __version__
from mailtrack.config import Config, load
from mailtrack.mail.addresses import Ours
from mailtrack.mail.compose import builtin_templates
from mailtrack.tracker.lookup import Index
from mailtrack.tracker.model import parse_time
from mailtrack.tracker.query import FILTERS, records_of
from mailtrack.tracker.store import Snapshot, Store, StoreError, issue_dir
from mailtrack.tracker.xmlformat import FormatError
from mailtrack.web import exports
from mailtrack.web.views import Catalog, IssueView, anchor, fragment, issue_view

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

SECURITY_HEADERS = [
    # no script, no frame, no plugin; the stylesheet and nothing else from ourselves
    ("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                "base-uri 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
]  # fmt: skip
SANDBOX = ("Content-Security-Policy", "default-src 'none'; sandbox")  # what is not our HTML: raw XML, downloads
MAX_QUERY = 4096  # bytes of a query string; a longer one is a 400
CACHED_PAGES = 512  # responses kept for the current tip...
CACHED_BYTES = 32 * 1024 * 1024  # ...up to this much in all
CACHED_PAGE_SIZE = 512 * 1024  # a bigger one (an attachment, a long mbox) is made again each time
ID = r"#?[0-9a-fA-F]{4,40}"
ISSUE_URL = re.compile(rf"^/({ID})(/|\.mbox|\.xml|\.json|/atom|/[^/]+)?$")
TEMPLATES = ("web-list.html", "web-issue.html", "web-search.html", "web-error.html")


class HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Response:
    status: HTTPStatus
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    etag: bool = True  # the body depends on the branch tip alone


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    root: str  # SCRIPT_NAME: where the application is mounted
    origin: str  # scheme://host of the request, for absolute links when base_url is unset
    if_none_match: str


def _request(environ: dict[str, Any]) -> Request:
    raw_path = environ.get("PATH_INFO", "") or "/"
    try:  # WSGI hands the path over as latin-1 of its bytes
        path = raw_path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise HTTPError(HTTPStatus.NOT_FOUND, "not a valid address") from None
    qs = environ.get("QUERY_STRING", "")
    if len(qs) > MAX_QUERY:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "the query is too long")
    try:
        pairs = parse_qsl(qs.encode("latin-1").decode("utf-8"), keep_blank_values=False, max_num_fields=64)
    except (UnicodeError, ValueError):
        raise HTTPError(HTTPStatus.BAD_REQUEST, "the query cannot be read") from None
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '80')}"
    return Request(environ.get("REQUEST_METHOD", "GET"), path, dict(pairs), environ.get("SCRIPT_NAME", "").rstrip("/"),
                   f"{scheme}://{host}", environ.get("HTTP_IF_NONE_MATCH", ""))


def _templates(override: str) -> jinja2.Environment:
    root = builtin_templates()

    def load(name: str) -> str | None:
        try:
            return (root / name).read_text("utf-8")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(override)] if override else []
    env = jinja2.Environment(loader=jinja2.ChoiceLoader([*loaders, jinja2.FunctionLoader(load)]),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = _when
    env.filters["size"] = _size
    env.filters["fragment"] = fragment
    return env


def _when(value: datetime | str) -> str:
    """A time as the pages show it; a record's text form (`20261204T022821Z`) is read first."""
    try:
        d = value if isinstance(value, datetime) else parse_time(value)
    except FormatError:
        return str(value)
    return d.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _size(n: int | None) -> str:
    if n is None:
        return "missing"
    return f"{n} bytes" if n < 1024 else f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MB"


def marked(snippet: str) -> Markup:
    """A search snippet escaped, with the words FTS5 matched (between char(1) and char(2)) in <mark>."""
    return Markup(str(escape(snippet)).replace("\x01", "<mark>").replace("\x02", "</mark>"))


class WebApp:
    """The WSGI application: one per process, safe to call from many threads."""

    def __init__(self, config: Config, repo: str | None = None) -> None:
        self.config = config
        self.repo = repo or config.gateway.repo or None
        with Store.open(self.repo) as store:  # StoreError now, at start, when it is no repository
            self.project = store.project_name(config.gateway.project)
            self.repo_path = store.repo.path
        self.ours = Ours.of(config.gateway)
        self.env = _templates(config.gateway.templates)
        self.catalog = Catalog()
        self._local = threading.local()
        self._pages = PageCache()
        self.stylesheet = (builtin_templates() / "web-style.css").read_bytes()

    # --- per-thread state: a repository and an index connection each --------------------------

    def _snapshot(self) -> Snapshot:
        """The branch at its tip; the same Snapshot (project.xml read once) while the tip stays."""
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store.open(self.repo_path)
        tip = store.tip()
        snap: Snapshot | None = getattr(self._local, "snap", None)
        if snap is None or snap.commit != tip:
            snap = self._local.snap = store.snapshot(tip)
        return snap

    def _index(self, snap: Snapshot) -> Index:
        index: Index | None = getattr(self._local, "index", None)
        if index is None:
            try:
                index = Index.for_snapshot(snap)
            except (OSError, sqlite3.Error):  # a repository we may not write: an index in memory
                index = Index.for_snapshot(snap, read_only=True)
            self._local.index = index
        return index

    # --- WSGI -------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        req: Request | None = None
        try:
            req = _request(environ)
            if req.method not in ("GET", "HEAD"):
                raise HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, "this view is read-only: GET and HEAD only")
            response = self.respond(req)
        except HTTPError as e:
            response = self.error(req, e.status, str(e))
        except Exception:  # the edge: logged here, a plain 500 page there, never a traceback
            log.exception("web: %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            response = self.error(req, HTTPStatus.INTERNAL_SERVER_ERROR, "something went wrong on our side; it is logged")
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body)))]
        own = {k for k, _ in response.headers}
        headers += [h for h in SECURITY_HEADERS if h[0] not in own]  # a download's sandbox replaces the page policy
        headers += response.headers
        if response.status == HTTPStatus.METHOD_NOT_ALLOWED:
            headers.append(("Allow", "GET, HEAD"))
        start_response(f"{response.status.value} {response.status.phrase}", headers)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [response.body]

    def respond(self, req: Request) -> Response:
        if req.path == "/style.css":
            return Response(HTTPStatus.OK, self.stylesheet, "text/css; charset=utf-8",
                            [("Cache-Control", "max-age=3600"), ("ETag", f'"{__version__}-css"')], etag=False)
        snap = self._snapshot()
        etag = f'"{(snap.commit or b"none").decode()}-{__version__}"'
        if etag in [t.strip().removeprefix("W/") for t in req.if_none_match.split(",")]:
            return Response(HTTPStatus.NOT_MODIFIED, b"", headers=[("ETag", etag)], etag=False)
        key = (req.path, tuple(sorted(req.query.items())), req.root, req.origin)
        cached = self._pages.get(snap.commit, key)
        if cached is not None:
            return cached
        response = self.route(req, snap)
        if response.etag and response.status == HTTPStatus.OK:
            response.headers += [("ETag", etag), ("Cache-Control", "no-cache")]
            self._pages.put(snap.commit, key, response)
        return response

    def route(self, req: Request, snap: Snapshot) -> Response:
        path = req.path
        if path == "/":
            return self.listing(req, snap)
        if path == "/new.atom":
            return self.new_feed(req, snap)
        if path == "/search":
            return self.search(req, snap)
        if path.startswith("/m/"):
            return self.permalink(req, snap, path[3:])
        m = ISSUE_URL.match(path)
        if m is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, "there is no such page")
        view = self.view(snap, m.group(1))
        rest = m.group(2)
        if rest is None or m.group(1).startswith("#"):
            return self.redirect(req, f"/{view.short}/")
        if rest == "/":
            return self.page("web-issue.html", req, view=view, title=f"#{view.short} {view.issue.title}",
                             reply_to=self.ours.issue_address(view.short))
        if rest == ".mbox":
            thread = exports.Thread(self.project, self.ours)
            return Response(HTTPStatus.OK, exports.mbox(exports.thread_mails(snap, view, thread)), "application/mbox",
                            [("Content-Disposition", f'attachment; filename="{view.short}.mbox"'), SANDBOX])
        if rest == ".xml":
            data = snap.read(f"{issue_dir(view.name)}/issue.xml") or b""
            return Response(HTTPStatus.OK, data, "application/xml", [SANDBOX])
        if rest == ".json":
            return Response(HTTPStatus.OK, exports.issue_json(view, self.url(req, f"/{view.short}/")), "application/json")
        if rest == "/atom":
            url = self.url(req, f"/{view.short}/")
            feed = exports.atom(self.url(req, f"/{view.short}/atom"), f"#{view.short} {view.issue.title}", url,
                                exports.issue_entries(view, url))
            return Response(HTTPStatus.OK, feed, "application/atom+xml; charset=utf-8")
        return self.attachment(snap, view, rest[1:])

    # --- pages ------------------------------------------------------------------------------

    def view(self, snap: Snapshot, ident: str) -> IssueView:
        try:
            name = snap.resolve(ident)
            return issue_view(snap, name)
        except StoreError as e:  # unknown, ambiguous
            raise HTTPError(HTTPStatus.NOT_FOUND, str(e)) from None
        except FormatError as e:
            raise HTTPError(HTTPStatus.INTERNAL_SERVER_ERROR, f"this issue cannot be read: {e}") from None

    def listing(self, req: Request, snap: Snapshot) -> Response:
        index = self._index(snap)
        state = self.catalog.state(snap, index)
        filters = [(f, req.query[opt]) for opt, f in FILTERS.items() if req.query.get(opt)]
        include_closed = req.query.get("all") in ("1", "yes", "true", "on") or "status" in req.query
        sort = req.query.get("sort", "")
        size = self.config.web.page_size
        try:
            total, shown = self.catalog.page(snap, index, state, filters, sort, include_closed, size)
            pages = max(1, -(-total // size))
            page = _page(req.query.get("page"), pages)
            if page > 1:
                total, shown = self.catalog.page(snap, index, state, filters, sort, include_closed, size, (page - 1) * size)
        except StoreError as e:  # an illegal filter value, an unknown sort field
            raise HTTPError(HTTPStatus.BAD_REQUEST, str(e)) from None
        if req.query.get("format") == "json":
            data = {"total": total, "page": page, "pages": pages, "counts": dict(state.counts),
                    "issues": [{**r, "url": self.url(req, f"/{r['short']}/")} for r in shown]}
            return Response(HTTPStatus.OK, exports.dumps(data), "application/json")
        keep = {k: v for k, v in req.query.items() if k != "page"}
        return self.page("web-list.html", req, title=self.project, rows=shown, total=total, page=page, pages=pages,
                         counts=state.counts, unreadable=state.unreadable, filters=filters, sort=sort,
                         include_closed=include_closed, query=keep, page_url=lambda n: self._query_url(req, "/", {**keep, "page": n}),
                         filter_url=lambda q=None, **kw: self._query_url(req, "/", {**(q or {}), **kw}))

    def search(self, req: Request, snap: Snapshot) -> Response:
        q = req.query.get("q", "").strip()
        index = self._index(snap)
        size = self.config.web.page_size
        page = _page(req.query.get("page"), 1000)
        hits = index.search(snap, q, limit=size + 1, offset=(page - 1) * size) if q else []
        records = records_of(index, snap, snap.project(), list(dict.fromkeys(h.issue for h in hits[:size])), ("title", "status"))
        results = []
        for hit in hits[:size]:
            record = records.get(hit.issue)
            if record is None:
                continue
            comment = hit.path.rpartition("/")[2]
            results.append({"short": record["short"], "title": record["title"], "status": record["status"],
                            "snippet": marked(hit.snippet), "comment": comment != "issue.xml"})
        more = self._query_url(req, "/search", {"q": q, "page": page + 1}) if len(hits) > size else ""
        return self.page("web-search.html", req, title=f"Search: {q}" if q else "Search", q=q, results=results,
                         more=more, page=page)

    def permalink(self, req: Request, snap: Snapshot, message_id: str) -> Response:
        found = self._index(snap).where(snap, message_id) if message_id.strip() else None
        if found is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"no issue or comment came from the mail {message_id}")
        name, path = found
        short = snap.short(name)
        target = f"/{short}/" if path.endswith("/issue.xml") else f"/{short}/#{fragment(anchor(message_id, ''))}"
        return self.redirect(req, target)

    def new_feed(self, req: Request, snap: Snapshot) -> Response:
        index = self._index(snap)
        state = self.catalog.state(snap, index)
        _, rows = self.catalog.page(snap, index, state, [], "-modified", True, self.config.web.page_size)
        entries = []
        for r in rows:
            link = self.url(req, f"/{r['short']}/")
            stamp = parse_time(str(r["modified"]))
            text = f"{r['status']} {r['severity']}: {r['title']}\n\n{r['description']}"
            entries.append(exports.Entry(f"{link}#{r['modified']}", f"#{r['short']} {r['title']}", link, stamp,
                                         str(r["author"]), text))
        feed = exports.atom(self.url(req, "/new.atom"), f"{self.project}: changes", self.url(req, "/"), entries)
        return Response(HTTPStatus.OK, feed, "application/atom+xml; charset=utf-8")

    def attachment(self, snap: Snapshot, view: IssueView, filename: str) -> Response:
        known = {f.name for f in view.other_files} | {f.name for c in view.comments for f in c.files}
        data = snap.attachment(view.name, filename) if filename in known else None
        if data is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"issue {view.short} has no file {filename}")
        fallback = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in filename) or "attachment"
        disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
        return Response(HTTPStatus.OK, data, "application/octet-stream", [("Content-Disposition", disposition), SANDBOX])

    # --- helpers ----------------------------------------------------------------------------

    def page(self, template: str, req: Request | None, **context: Any) -> Response:
        root = req.root if req is not None else ""
        body = self.env.get_template(template).render(project=self.project, root=root, address=self.config.gateway.address,
                                                      **context)
        return Response(HTTPStatus.OK, body.encode())

    def error(self, req: Request | None, status: HTTPStatus, message: str) -> Response:
        try:
            response = self.page("web-error.html", req, title=f"{status.value} {status.phrase}", status=status,
                                 message=message)
        except Exception:  # a broken override template: the error still gets a page
            log.exception("web: the error page could not be rendered")
            response = Response(status, f"{status.value} {status.phrase}\n".encode(), "text/plain; charset=utf-8")
        response.status, response.etag = status, False
        return response

    def redirect(self, req: Request, target: str) -> Response:
        return Response(HTTPStatus.FOUND, b"", "text/plain", [("Location", req.root + target)], etag=False)

    def url(self, req: Request, path: str) -> str:
        """An absolute URL: under base_url when it is set, else under the address the request came to."""
        base = self.config.web.base_url.rstrip("/") if self.config.web.base_url else req.origin + req.root
        return base + path

    def _query_url(self, req: Request, path: str, query: dict[str, object]) -> str:
        """`path` under the application's root with the query; page 1 and empty values left out."""
        kept = {k: str(v) for k, v in query.items() if v not in (None, "") and not (k == "page" and str(v) == "1")}
        return f"{req.root}{path}?{urlencode(kept)}" if kept else f"{req.root}{path}"


class PageCache:
    """The last responses made for the current tip, shared by the threads; a new tip empties it.
    Pages are made from the tip alone, so a cached one is the page that would be made again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tip: bytes | None = None
        self._pages: OrderedDict[tuple[object, ...], Response] = OrderedDict()
        self._bytes = 0

    def get(self, tip: bytes | None, key: tuple[object, ...]) -> Response | None:
        with self._lock:
            if tip != self._tip:
                return None
            found = self._pages.get(key)
            if found is not None:
                self._pages.move_to_end(key)
            return found

    def put(self, tip: bytes | None, key: tuple[object, ...], response: Response) -> None:
        if len(response.body) > CACHED_PAGE_SIZE:
            return
        with self._lock:
            if tip != self._tip:
                self._tip, self._pages, self._bytes = tip, OrderedDict(), 0
            old = self._pages.pop(key, None)
            self._bytes += len(response.body) - (len(old.body) if old is not None else 0)
            self._pages[key] = response
            while len(self._pages) > CACHED_PAGES or self._bytes > CACHED_BYTES:
                _, dropped = self._pages.popitem(last=False)
                self._bytes -= len(dropped.body)


def _page(value: str | None, pages: int) -> int:
    if value is None:
        return 1
    if not value.isdigit() or not 1 <= int(value) <= pages:
        raise HTTPError(HTTPStatus.NOT_FOUND, f"there is no page {value}")
    return int(value)


def create(config_path: str | None = None, repo: str | None = None) -> WebApp:
    """The application for a WSGI server (gunicorn, uWSGI): the configuration and repository given,
    else those in MAILTRACK_CONFIG and MAILTRACK_REPO, else the defaults."""
    return WebApp(load(config_path or os.environ.get("MAILTRACK_CONFIG") or None), repo or os.environ.get("MAILTRACK_REPO"))


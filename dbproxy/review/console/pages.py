"""The console's pages, as aiohttp handlers added to the admin server's application.

    GET  /                                  -> /console/
    GET  /console/                          the queue (live: server-sent events refresh its rows)
    GET  /console/queue/rows                the queue's rows alone (what the live page fetches)
    GET  /console/events                    server-sent events: held, decided, undone, request, grant, ...
    GET  /console/tx/{id}?offset=&limit=&table=   one transaction; the diff paged per table
    POST /console/tx/{id}/commit|rollback   form: csrf, reason; a commit's `grant` (session or
                                            permanent) also grants the agent what it did
    POST /console/tx/{id}/undo|redo         form: csrf, preview (dry run), force
    POST /console/tx/{id}/verify            form: csrf
    GET  /console/journal?agent=&outcome=&table=&q=&since=&until=&before=
    /console/requests, /console/grants      approval requests and grants (`policy_pages`)
    GET  /console/signin, POST /console/signin (token), POST /console/signout
    GET  /console/static/{console.css,console.js}

Every page but sign-in and the static files needs a signed-in session (see `auth`); without
one a page redirects to sign-in and nothing is done. Every POST needs the session's CSRF token.
Responses forbid framing and inline scripts (Content-Security-Policy), and every value from an
agent or the database reaches the page through jinja2's autoescaping (the script sets text, never
HTML, except the queue rows it fetches from the server, which were escaped there).

Decisions go through `ReviewService` with the session's reviewer name; a decision on something
already decided shows the service's message with its status (409) and changes nothing. Other page
sets (`policy_pages`) add their routes next to these and render through `render`, with the same
sessions, CSRF checks and headers; `waiting` (set by them) gives the navigation its count of
requests waiting for approval.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal, get_args
from urllib.parse import urlencode, urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web

from dbproxy.config import log
from dbproxy.journal.records import FINAL_OUTCOMES, Outcome, StatementRecord, TransactionRecord
from dbproxy.review.console.auth import SESSION_COOKIE, SIGNIN_COOKIE, ConsoleSession, Sessions, same
from dbproxy.review.events import EventHub
from dbproxy.review.models import RowChange, TableDiff
from dbproxy.review.present import age, aware, duration, policy_short
from dbproxy.review.service import DIFF_PAGE, MAX_DIFF_PAGE, ReviewError, ReviewService
from inverse.undo_plan import Step

PREFIX = "/console"
STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
MAX_REASON = 2000
JOURNAL_PAGE = 50
KEEPALIVE = 15.0
#: Seconds a transaction page waits for a model's summary (with a model configured); one not
#: written by then is shown as being written, and the next load of the page has it.
SUMMARY_WAIT = 2
_OUTCOMES: tuple[str, ...] = get_args(Outcome)
_OPEN = frozenset({f"{PREFIX}/signin", *(f"{PREFIX}/static/{n}" for n in STATIC)})
#: Requests made by the page's script: answered 401 rather than redirected to sign-in.
_SCRIPTED = frozenset({f"{PREFIX}/events", f"{PREFIX}/queue/rows"})
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_GRANT_SCOPES: dict[str, Literal["session", "permanent"]] = {"session": "session", "permanent": "permanent"}
_SESSION = web.RequestKey("console_session", ConsoleSession)
_SID = web.RequestKey("console_sid", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refused(Exception):
    """A request the console refuses with a page: status and message (also raised by other page
    sets)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- formatting helpers for the templates ------------------------------------------------------


def when(t: datetime | None) -> str:
    return "-" if t is None else aware(t).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def cell(v: Any) -> str:
    """A value as text for a table cell (None is shown by the template as NULL)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, dict | list):
        return json.dumps(v, ensure_ascii=False, default=str)
    return str(v)


def update_cells(rc: RowChange) -> list[tuple[str, Any, Any]]:
    """An update's changed columns: (name, before, after)."""
    before, after = rc.before or {}, rc.after or {}
    return [(c, before.get(c), after.get(c)) for c in dict.fromkeys([*before, *after])]


def readable_steps(doc: dict[str, Any]) -> list[tuple[str, bool]]:
    """The inverse's steps as readable SQL, and whether a model proposed each."""
    out = []
    for s in doc.get("steps") or []:
        try:
            sql = Step(**{**s, "params": tuple(s["params"])}).readable() + ";"
        except Exception:  # an entry from another version: show what is there
            sql = str(s.get("sql", s))
        out.append((sql, s.get("origin") == "llm"))
    return out


def by_agent_transaction(statements: list[StatementRecord]) -> list[tuple[int, list[StatementRecord]]]:
    groups: dict[int, list[StatementRecord]] = {}
    for s in sorted(statements, key=lambda s: (s.tx_no, s.seq)):
        groups.setdefault(s.tx_no, []).append(s)
    return sorted(groups.items())


def undo_state(r: TransactionRecord) -> str | None:
    """'undone', 'committed with an inverse', or None (not committed with one: undo mode, or an
    allow rule in any mode, commit with one)."""
    doc = r.undo or {}
    if doc.get("action"):
        return f"{doc['action']} of #" + ", #".join(map(str, doc.get("of", [])))
    if r.outcome != "committed" or not doc.get("direction"):
        return None
    history = doc.get("history") or []
    if doc.get("undone"):
        return "undone"
    return "redone" if history and history[-1].get("action") == "redo" else "undoable"


def verdict_of(r: TransactionRecord) -> dict[str, Any] | str | None:
    v = (r.undo or {}).get("verification")
    return v if isinstance(v, dict | str) else None


def reversible(r: TransactionRecord) -> str:
    doc = r.undo
    if doc is None:
        return "-"
    return "no" if doc.get("irreversible") else "yes"


def clean_text(raw: str, *, limit: int, what: str) -> str | None:
    """A reason from a form: whitespace collapsed, None when empty, refused when too long."""
    text = " ".join(raw.split())
    if not text:
        return None
    if len(text) > limit:
        raise Refused(400, f"{what} is too long (at most {limit} characters)")
    return text


# --- the console -------------------------------------------------------------------------------


class Console:
    """The console's state (sessions) and handlers; `add_to(app)` registers them."""

    def __init__(self, service: ReviewService, who: Callable[[str], str | None], events: EventHub) -> None:
        self.service = service
        self.who = who  # token -> reviewer name (None: not a reviewer's token)
        self.events = events
        self.sessions = Sessions()
        self.scripted = set(_SCRIPTED)  # paths the page's script fetches: 401 rather than a redirect
        self.waiting: Callable[[], int] | None = None  # requests waiting for approval (None: no policy)

    def add_to(self, app: web.Application) -> None:
        env = aiohttp_jinja2.setup(
            app, loader=jinja2.PackageLoader("dbproxy.review.console", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, default_helpers=False)
        env.globals.update(when=when, since=age, duration=duration, cell=cell, steps=readable_steps,
                           update_cells=update_cells, redact=log.redact_sql,
                           by_agent_transaction=by_agent_transaction, undo_state=undo_state, verdict_of=verdict_of,
                           reversible=reversible, final=FINAL_OUTCOMES, prefix=PREFIX, policy_short=policy_short)
        app.middlewares.append(self._middleware)
        r = app.router
        r.add_get("/", self._root)
        r.add_get(f"{PREFIX}", self._root)
        r.add_get(f"{PREFIX}/", self._queue)
        r.add_get(f"{PREFIX}/queue/rows", self._queue_rows)
        r.add_get(f"{PREFIX}/events", self._events)
        r.add_get(PREFIX + "/tx/{id}", self._transaction)
        for action in ("commit", "rollback", "undo", "redo", "verify"):
            r.add_post(PREFIX + "/tx/{id}/" + action, self._action)
        r.add_get(f"{PREFIX}/journal", self._journal)
        r.add_get(f"{PREFIX}/signin", self._signin_form)
        r.add_post(f"{PREFIX}/signin", self._signin)
        r.add_post(f"{PREFIX}/signout", self._signout)
        r.add_get(PREFIX + "/static/{name}", self._static)

    @staticmethod
    def owns(path: str) -> bool:
        return path == "/" or path == PREFIX or path.startswith(PREFIX + "/")

    # -- middleware: headers, sessions, CSRF, errors ---------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.owns(request.path):
            return await handler(request)
        try:
            response = await self._checked(request, handler)
        except web.HTTPException as e:
            if e.status < 400:
                raise  # redirects
            response = self._page(request, "error.html", {"message": e.reason}, status=e.status)
        except Refused as e:
            response = self._page(request, "error.html", {"message": e.message}, status=e.status)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as e:
            log.event("console.error", level=logging.ERROR, exc_info=True, method=request.method,
                      path=request.path, error=type(e).__name__)
            response = self._page(request, "error.html",
                                  {"message": "internal error in the console (details are in the proxy's log)"},
                                  status=500)
        if not response.prepared:
            h = response.headers
            h.setdefault("Content-Security-Policy", _CSP)
            h.setdefault("X-Frame-Options", "DENY")
            h.setdefault("X-Content-Type-Options", "nosniff")
            h.setdefault("Referrer-Policy", "same-origin")
            h.setdefault("Cache-Control", "no-store")
        return response

    async def _checked(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _OPEN or request.path in ("/", PREFIX):
            return await handler(request)
        sid = request.cookies.get(SESSION_COOKIE)
        session = self.sessions.get(sid)
        if session is not None and self.who(session.token) != session.reviewer:
            self.sessions.drop(sid)  # the reviewer was removed (or the token changed) since sign-in
            session = None
        if session is None:
            if request.path in self.scripted:
                raise web.HTTPUnauthorized(reason="not signed in")
            target = request.path_qs if request.method == "GET" else f"{PREFIX}/"
            query = {"next": target, **({"expired": "1"} if sid else {})}
            raise web.HTTPSeeOther(f"{PREFIX}/signin?" + urlencode(query))
        if request.method == "POST":
            await self._check_form(request, session.csrf)
        request[_SESSION] = session
        request[_SID] = sid or ""
        return await handler(request)

    async def _check_form(self, request: web.Request, expected: str | None) -> None:
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
            log.event("console.csrf_refused", path=request.path, reason="origin", remote=request.remote,
                      level=logging.WARNING)
            raise Refused(403, "this form was sent from another site; nothing was done")
        form = await request.post()
        if not same(str(form.get("csrf", "")), expected):
            log.event("console.csrf_refused", path=request.path, reason="token", remote=request.remote,
                      level=logging.WARNING)
            raise Refused(403, "the form's security token is missing or stale; reload the page and try again "
                           "(nothing was done)")

    def _page(self, request: web.Request, template: str, context: dict[str, Any], *,
              status: int = 200) -> web.Response:
        session = request.get(_SESSION)
        flash = list(session.flash) if session is not None else []
        if session is not None:
            session.flash.clear()
        base = {"reviewer": session.reviewer if session else None, "csrf": session.csrf if session else "",
                "flash": flash, "nav": context.pop("nav", ""),
                "waiting": self.waiting() if self.waiting is not None and session is not None else None}
        return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)

    render = _page

    @staticmethod
    def session(request: web.Request) -> ConsoleSession:
        """The signed-in session of a request that passed the middleware."""
        return request[_SESSION]

    # -- sign-in -----------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{PREFIX}/")

    async def _signin_form(self, request: web.Request, *, message: str | None = None,
                           status: int = 200) -> web.Response:
        nonce = request.cookies.get(SIGNIN_COOKIE) or ""
        if len(nonce) < 20:
            nonce = secrets.token_urlsafe(24)
        nxt = request.query.get("next", "") if request.method == "GET" else (await request.post()).get("next", "")
        if request.query.get("expired") == "1" and message is None:
            message = "Your session has expired or is no longer valid; sign in again."
        response = self._page(request, "signin.html", {"nonce": nonce, "next": _safe_next(str(nxt)),
                                                       "message": message, "nav": "signin"}, status=status)
        response.set_cookie(SIGNIN_COOKIE, nonce, httponly=True, samesite="Strict", path=f"{PREFIX}/signin")
        return response

    async def _signin(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not same(str(form.get("nonce", "")), request.cookies.get(SIGNIN_COOKIE)):
            raise Refused(403, "the sign-in form's security token is missing or stale; reload the page")
        token = str(form.get("token", "")).strip()
        reviewer = self.who(token) if token else None
        if reviewer is None:
            log.event("console.signin_failed", remote=request.remote, level=logging.WARNING)
            return await self._signin_form(request, message="That token was not accepted.", status=401)
        self.sessions.drop(request.cookies.get(SESSION_COOKIE))
        sid, _ = self.sessions.create(reviewer, token)
        log.event("console.signin", reviewer=reviewer, remote=request.remote)
        response = web.HTTPSeeOther(_safe_next(str(form.get("next", ""))) or f"{PREFIX}/")
        response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Strict", path="/")
        response.del_cookie(SIGNIN_COOKIE, path=f"{PREFIX}/signin")
        raise response

    async def _signout(self, request: web.Request) -> web.Response:
        self.sessions.drop(request[_SID])
        response = web.HTTPSeeOther(f"{PREFIX}/signin")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    # -- queue ------------------------------------------------------------------------------

    async def _queue(self, request: web.Request) -> web.Response:
        entries = await self._entries()
        return self._page(request, "queue.html", {"entries": entries, "nav": "queue"})

    async def _queue_rows(self, request: web.Request) -> web.Response:
        entries = await self._entries()
        return aiohttp_jinja2.render_template("queue_rows.html", request, {"entries": entries})

    async def _entries(self) -> list[Any]:
        entries = await self.service.queue()
        # Newest activity first.
        return sorted(entries, key=lambda e: e.last_activity or e.transaction.held_at or e.transaction.started_at,
                      reverse=True)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"})
        await response.prepare(request)
        await response.write(b"retry: 3000\n\n")
        sid = request[_SID]
        async with self.events.subscribe() as queue:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    if self.sessions.get(sid) is None:
                        break  # signed out or expired: the page reloads into sign-in
                    await response.write(b": keep-alive\n\n")
                    continue
                if event is None:
                    break
                data = {"kind": event.kind, "id": event.tx_id,
                        **{k: event.fields.get(k) for k in ("outcome", "decided_by", "applied", "waiting", "state")
                           if k in event.fields}}
                for key in ("request", "grant"):  # policy events name their request or grant, no more
                    record = event.fields.get(key)
                    if isinstance(record, dict):
                        data[key] = record.get("id")
                await response.write(f"data: {json.dumps(data)}\n\n".encode())
        return response

    # -- transaction ---------------------------------------------------------------------------

    async def _transaction(self, request: web.Request, **extra: Any) -> web.Response:
        tx_id = _tx_id(request)
        offset = _int(request.query.get("offset"), "offset", default=0, hi=2**62)
        limit = _int(request.query.get("limit"), "limit", default=DIFF_PAGE, lo=1, hi=MAX_DIFF_PAGE)
        table = request.query.get("table") or None
        try:
            # With `table`, that table alone, paged; without, every table's first page.
            detail = await self.service.show(tx_id, offset=offset if table else 0, limit=limit, table=table,
                                             summary_wait=SUMMARY_WAIT)
        except ReviewError as e:
            raise Refused(e.status, e.message) from None
        context = {"d": detail, "t": detail.transaction, "limit": limit, "pages": _pages(detail.diff, limit),
                   "only_table": table, "grants": self.waiting is not None,
                   "nav": "queue" if detail.transaction.outcome not in FINAL_OUTCOMES else "journal",
                   "error": None, "preview": None, **extra}
        return self._page(request, "transaction.html", context, status=extra.get("status_code", 200))

    async def _action(self, request: web.Request) -> web.Response:
        tx_id = _tx_id(request)
        action = request.path.rsplit("/", 1)[1]
        session = request[_SESSION]
        form = await request.post()
        reviewer = session.reviewer
        try:
            if action in ("commit", "rollback"):
                reason = clean_text(str(form.get("reason", "")), limit=MAX_REASON, what="the reason")
                raw = str(form.get("grant", ""))
                grant = _GRANT_SCOPES.get(raw)
                if raw and (grant is None or action != "commit"):
                    raise Refused(400, "only a commit can add a grant, for the session or permanently")
                if action == "commit":
                    decision = await asyncio.shield(self.service.commit(tx_id, reviewer, reason=reason, grant=grant))
                else:
                    decision = await asyncio.shield(self.service.rollback(tx_id, reviewer, reason=reason))
                log.event("console.decision", id=tx_id, action=action, reviewer=reviewer, outcome=decision.outcome,
                          grant=decision.grant)
                session.flash.append(("ok", f"#{tx_id} {decision.outcome} by {decision.decided_by}"
                                      + (f"; grant #{decision.grant} ({grant}) covers what it did"
                                         if decision.grant is not None else "")))
            elif action in ("undo", "redo"):
                preview = form.get("preview") == "1"
                force = form.get("force") == "1"
                if action == "undo":
                    outcome = await asyncio.shield(self.service.undo(tx_id, reviewer, force=force, dry_run=preview))
                else:
                    outcome = await asyncio.shield(self.service.redo(tx_id, reviewer, force=force, dry_run=preview))
                log.event("console.undo", id=tx_id, action=action, reviewer=reviewer, applied=outcome.applied,
                          dry_run=preview, conflicts=len(outcome.conflicts))
                if preview or outcome.conflicts:
                    status = 409 if outcome.conflicts and not preview else 200
                    return await self._transaction(request, preview=outcome, status_code=status)
                session.flash.append(("ok", f"{action} of #{', #'.join(map(str, outcome.ids))} done by {reviewer}: "
                                            f"{outcome.done} changes, {outcome.skipped} already in place"
                                      + (f"; journaled as #{outcome.journal_id}" if outcome.journal_id else "")))
            else:
                verdict = await asyncio.shield(self.service.verify(tx_id))
                session.flash.append(("ok" if verdict.status == "verified" else "warn",
                                      f"verification of #{tx_id}: {verdict.status}"
                                      + (f": {verdict.reason}" if verdict.reason else "")))
        except ReviewError as e:
            return await self._transaction(request, error=e.message, status_code=e.status)
        raise web.HTTPSeeOther(f"{PREFIX}/tx/{tx_id}")

    # -- journal ------------------------------------------------------------------------------

    async def _journal(self, request: web.Request) -> web.Response:
        q = request.query
        outcome = q.get("outcome") or None
        if outcome is not None and outcome not in _OUTCOMES:
            raise Refused(400, f"outcome must be one of {', '.join(_OUTCOMES)}")
        filters = {"agent": (q.get("agent") or "").strip() or None, "outcome": outcome,
                   "table": (q.get("table") or "").strip() or None, "search": (q.get("q") or "").strip() or None,
                   "since": _date(q.get("since"), "since"), "until": _date(q.get("until"), "until")}
        before = _int(q.get("before"), "before", default=None, lo=1, hi=2**63 - 1)
        try:
            records = await self.service.log(limit=JOURNAL_PAGE + 1, before_id=before, **filters)
        except ReviewError as e:
            raise Refused(e.status, e.message) from None
        more = len(records) > JOURNAL_PAGE
        records = records[:JOURNAL_PAGE]
        form = {k: q.get(k, "") for k in ("agent", "outcome", "table", "q", "since", "until")}
        next_qs = urlencode({**{k: v for k, v in form.items() if v}, "before": records[-1].id}) if more else None
        return self._page(request, "journal.html", {"records": records, "form": form, "outcomes": _OUTCOMES,
                                                    "next_qs": next_qs, "nav": "journal"})

    # -- static files ------------------------------------------------------------------------

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound(reason="no such file")
        body = resources.files("dbproxy.review.console").joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=STATIC[name], headers={"Cache-Control": "max-age=300"})


def _safe_next(target: str) -> str:
    """Only paths inside the console (no other hosts, no scheme-relative tricks)."""
    if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return ""


def _tx_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise Refused(404, f"no transaction {raw!r}: ids are positive integers")
    return int(raw)


def _int(raw: str | None, name: str, *, default: int | None, lo: int = 0, hi: int) -> int | Any:
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or not lo <= int(raw) <= hi:
        raise Refused(400, f"{name} must be an integer from {lo} to {hi}")
    return int(raw)


def _date(raw: str | None, name: str) -> datetime | None:
    if not raw:
        return None
    try:
        t = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise Refused(400, f"{name} must be a date or time like 2026-11-20 or 2026-11-20T09:30 (UTC)") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _pages(diff: list[TableDiff] | None, limit: int) -> dict[str, dict[str, int | None]]:
    """Per table: first and last row shown (1-based), total, and the offsets of the pages around."""
    out: dict[str, dict[str, int | None]] = {}
    for d in diff or []:
        total = d.inserted + d.updated + d.deleted
        shown = len(d.rows)
        out[d.table] = {
            "first": d.offset + 1 if shown else 0, "last": d.offset + shown, "total": total,
            "prev": max(0, d.offset - limit) if d.offset > 0 else None,
            "next": d.offset + shown if d.offset + shown < total and shown else None,
        }
    return out

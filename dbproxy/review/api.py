"""The admin HTTP API: the reviewer's door into a running proxy.

`dbproxy serve` runs an `AdminServer` on the `admin` address (default `127.0.0.1:6433`) next to the
agent listener, on the same event loop. It serves a `dbproxy.review.ReviewService` (the proxy's
live held transactions and its journal) as JSON over HTTP; the `dbproxy pending|show|commit|
rollback|log` commands (`dbproxy.review.cli`) and any other tool a reviewer likes talk to it.

    GET  /v1/health                         {"status": "ok"}, or 503 {"status": "degraded", "reasons": [...]}
                                            when the upstream or the journal is unreachable (no token needed)
    GET  /v1/pending                        [TransactionRecord]   waiting for a decision, oldest first
    GET  /v1/transactions?outcome=&agent=&limit=&before=
                                            [TransactionRecord]   the journal, newest first
    GET  /v1/transactions/{id}?offset=&limit=&table=
                                            TransactionDetail     statements, row diff (paged per table),
                                                                  blocked sessions
    POST /v1/transactions/{id}/commit       Decision              body {"reason": TEXT, "grant": G}, optional;
                                                                  G (session|permanent) covers what it wrote
    POST /v1/transactions/{id}/rollback     Decision              (the reason is journaled and told to the agent)
    POST /v1/transactions/{id}/undo         UndoOutcome           body {"reason", "force", "dry_run", "since"}
    POST /v1/transactions/{id}/redo         UndoOutcome           body {"reason", "force", "dry_run"}
    POST /v1/transactions/{id}/verify       VerifyOutcome         (no body) sandbox verification again
    /v1/grants, /v1/requests, /v1/reload    the policy: grants, paused statements, reloading the settings
                                            (`dbproxy.review.policy_api`)
    GET  /openapi.json                      OpenAPI 3.1 description of all of the above
    GET  /metrics                           Prometheus text format (no token needed; counts and agent
                                            names only, see `dbproxy.review.metrics`)
    /console/...                            the review console's pages (`dbproxy.review.console`;
                                            signed in with a session cookie, not the bearer token)

Bodies are the pydantic models of `dbproxy.review.models` as `model_dump(mode="json")`, written by
`dbproxy.review.jsonio` (numbers in row diffs keep PostgreSQL's digits: `27.00`); statements are
shown through `dbproxy.review.present` (secrets redacted, read-only ones marked). Every
endpoint but the health check needs `Authorization: Bearer TOKEN`; the token comes from the
`admin_token` setting or, by default, from `DATA_DIR/admin-token`, created (mode 0600) at the
first start by `load_or_create_token`. Errors are JSON too: `{"error": MESSAGE, "sqlstate": ...}`
with the `ReviewError`'s (or `PolicyError`'s) status (404 unknown id, 409 wrong state, 422 refused
by the rules of permanence, 502 upstream failure, 503 journal unavailable), 400 for malformed ids
and parameters, 401 for a missing or wrong token, 404 for unknown routes and 500, with a generic
message and the details only in the proxy's log, for anything unexpected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import JsonSchemaMode

from dbproxy.auth.reviewers import Reviewers
from dbproxy.config import log
from dbproxy.journal.records import Outcome, TransactionRecord
from dbproxy.policy.service import Policy, PolicyError
from dbproxy.review import jsonio, present
from dbproxy.review.console.pages import Console
from dbproxy.review.console.policy_pages import PolicyPages
from dbproxy.review.events import EventHub
from dbproxy.review.metrics import CONTENT_TYPE, ProxyMetrics
from dbproxy.review.models import Decision, TransactionDetail, UndoOutcome, UndoRequest, VerifyOutcome
from dbproxy.review.policy_api import PolicyRoutes, Reloader, openapi_paths
from dbproxy.review.service import DIFF_PAGE, MAX_DIFF_PAGE, ReviewError, ReviewService

TOKEN_FILE = "admin-token"
REVIEWER_HEADER = "X-Dbproxy-Reviewer"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_REVIEWER_LENGTH = 200
MAX_REASON_LENGTH = 2000
_MAX_ID = 2**63 - 1  # journal ids are bigints
_OUTCOMES: tuple[str, ...] = get_args(Outcome)
_OPEN_PATHS = frozenset({"/v1/health", "/metrics"})
MAX_TABLE_LENGTH = 1000
#: Seconds `show` waits for a model's summary (when one is configured) unless asked otherwise; a
#: summary not written by then is "pending" and finishes in the background.
SUMMARY_WAIT = 5
MAX_SUMMARY_WAIT = 30
#: The reviewer a request's token belongs to (set by the auth middleware).
REVIEWER = web.RequestKey("reviewer", str)


# --- the admin token ---------------------------------------------------------------------------


def load_or_create_token(data_dir: Path, configured: str | None) -> str:
    """The bearer token the admin API accepts.

    A configured token wins. Otherwise it is read from `data_dir/admin-token`, which is created at
    the first start with a fresh random token, readable by its owner only (mode 0600). The file
    appears whole or not at all (written under a temporary name, then hard-linked into place), so
    two proxies starting together agree on one token. An existing file that group or others can
    read is refused: anyone who can read it can commit agent writes.
    """
    if configured is not None:
        if not configured.strip():
            raise ValueError("the admin token must not be empty")
        return configured
    path = data_dir / TOKEN_FILE
    existing = read_token_file(path)
    if existing is not None:
        return existing
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    tmp = data_dir / f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            # Another process created it first: use theirs.
            existing = read_token_file(path)
            if existing is None:
                raise ValueError(f"admin token file {path} vanished while it was being created") from None
            return existing
        except OSError:
            # No hard links on this file system: create the file in place, exclusively.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(token + "\n")
                f.flush()
                os.fsync(f.fileno())
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return token


def read_token_file(path: Path) -> str | None:
    """The token stored in `path`, or None when there is no such file. Raises ValueError when the
    file is readable by group or others, or empty."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"cannot read admin token file {path}: {e.strerror}") from None
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as f:
        mode = os.fstat(f.fileno()).st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(
                f"admin token file {path} is accessible by group or others (mode {stat.filemode(mode)}); "
                f"anyone who can read it can commit agent writes. Run: chmod 600 {path}"
            )
        token = f.read().strip()
    if not token:
        raise ValueError(f"admin token file {path} is empty; delete it to have a new token generated")
    return token


# --- request and error bodies ------------------------------------------------------------------


class DecisionRequest(BaseModel):
    """Body of a commit or rollback request (optional)."""

    model_config = ConfigDict(extra="forbid")

    reviewer: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REVIEWER_LENGTH,
        description="must be the reviewer the token belongs to when given (decisions are recorded under it)",
    )
    reason: str | None = Field(default=None, max_length=MAX_REASON_LENGTH,
                               description="why; journaled with the decision, shown by show and log and told "
                               "to the agent")
    grant: Literal["session", "permanent"] | None = Field(
        default=None, description="commit only: also grant the agent what this transaction did (its operation "
        "classes on the objects it wrote), for the rest of its session or permanently (refused with 422 for what "
        "has no exact inverse)")


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, for people")
    sqlstate: str | None = Field(default=None, description="SQLSTATE when the upstream database refused or failed")


#: A health check waits this long for its answer before reporting the check itself as failing.
HEALTH_TIMEOUT = 5.0


class Health(BaseModel):
    status: Literal["ok", "degraded"] = "ok"
    reasons: list[str] | None = Field(default=None, description="degraded: what is unreachable (upstream, journal)")


class _BadRequest(Exception):
    pass


def _error(status: int, message: str, *, sqlstate: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(ErrorBody(error=message, sqlstate=sqlstate).model_dump(mode="json"),
                             status=status, headers=headers)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=jsonio.dumps)


def _dump_list(items: list[BaseModel]) -> list[dict[str, Any]]:
    return [item.model_dump(mode="json") for item in items]


def _parse_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) <= _MAX_ID:
        raise _BadRequest(f"transaction id must be a positive integer, got {raw!r}")
    return int(raw)


def _int_param(request: web.Request, name: str, *, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or not lo <= int(raw) <= hi:
        raise _BadRequest(f"{name} must be an integer from {lo} to {hi}, got {raw!r}")
    return int(raw)


def _clean_reason(raw: str | None) -> str | None:
    """A reason as one line of printable text (whitespace runs become one space)."""
    reason = " ".join(raw.split()) if raw is not None else ""
    if any(not c.isprintable() for c in reason):
        raise _BadRequest("reason must be printable text")
    return reason or None


def _clean_reviewer(raw: str, *, source: str) -> str:
    name = raw.strip()
    if not name or len(name) > MAX_REVIEWER_LENGTH or any(not c.isprintable() for c in name):
        raise _BadRequest(f"{source} must be 1 to {MAX_REVIEWER_LENGTH} printable characters")
    return name


# --- the server --------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminServer:
    """The admin HTTP API over a ReviewService. `start()` binds (port 0 picks a free port) and
    returns the bound address; `stop()` closes it. Runs on whatever event loop is running."""

    def __init__(self, service: ReviewService, token: str, *, host: str, port: int,
                 events: EventHub | None = None, metrics: ProxyMetrics | None = None,
                 reviewers: Reviewers | None = None, policy: Policy | None = None,
                 reload: Reloader | None = None) -> None:
        if not token:
            raise ValueError("the admin API needs a non-empty token")
        self._service = service
        # The admin token is the reviewer `admin`; more reviewers, with tokens of their own, come
        # from the store (`dbproxy reviewer add`). The console signs in with the same tokens.
        self._reviewers = reviewers or Reviewers(None, token)
        self.events = events if events is not None else EventHub()
        self.metrics = metrics
        self.console = Console(service, self._reviewers.who, self.events)
        self.policy_pages = PolicyPages(self.console, policy) if policy is not None else None
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None
        self._openapi_doc: dict[str, Any] | None = None
        self.policy = policy
        self._reload = reload

    # lifecycle

    async def start(self) -> tuple[str, int]:
        if self._runner is not None:
            raise RuntimeError("the admin server is already running")
        runner = web.AppRunner(self.make_app(), handle_signals=False, access_log=None, shutdown_timeout=10.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    def make_app(self) -> web.Application:
        """The aiohttp application: the JSON API, /metrics and the console (tests serve it with
        aiohttp's test server)."""
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=64 * 1024)
        self.console.add_to(app)
        if self.policy_pages is not None:
            self.policy_pages.add_to(app)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/v1/pending", self._pending)
        app.router.add_get("/v1/transactions", self._log)
        app.router.add_get("/v1/transactions/{id}", self._show)
        app.router.add_post("/v1/transactions/{id}/commit", self._commit)
        app.router.add_post("/v1/transactions/{id}/rollback", self._rollback)
        app.router.add_post("/v1/transactions/{id}/undo", self._undo)
        app.router.add_post("/v1/transactions/{id}/redo", self._redo)
        app.router.add_post("/v1/transactions/{id}/verify", self._verify)
        app.router.add_get("/openapi.json", self._openapi)
        if self.policy is not None:
            PolicyRoutes(self.policy, reviewer=lambda r: self._claimed(r, None), reload=self._reload).add_to(app)
        return app

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        self.events.close()  # live console pages end their event streams
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> AdminServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # middlewares

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if Console.owns(request.path):
            return await handler(request)  # the console answers with pages of its own
        try:
            return await handler(request)
        except ReviewError as e:
            status = e.status if isinstance(e.status, int) and 400 <= e.status <= 599 else 500
            return _error(status, e.message, sqlstate=e.sqlstate)
        except PolicyError as e:
            return _error(e.status if 400 <= e.status <= 599 else 500, e.message)
        except _BadRequest as e:
            return _error(400, str(e))
        except web.HTTPNotFound:
            return _error(404, f"no such endpoint: {request.method} {request.path}")
        except web.HTTPMethodNotAllowed as e:
            allowed = ", ".join(sorted(e.allowed_methods))
            return _error(405, f"{request.method} is not allowed on {request.path} (allowed: {allowed})",
                          headers={"Allow": allowed})
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "request body too large")
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _error(e.status, e.reason)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as e:
            log.event("admin.error", level=logging.ERROR, exc_info=True, method=request.method,
                      path=request.path, error=type(e).__name__)
            return _error(500, "internal error in the review API (details are in the proxy's log)")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _OPEN_PATHS or Console.owns(request.path):
            return await handler(request)  # the console checks its own session cookie
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _error(401, "missing bearer token (Authorization: Bearer TOKEN)",
                          headers={"WWW-Authenticate": 'Bearer realm="dbproxy"'})
        reviewer = self._reviewers.who(given)
        if reviewer is None:
            log.event("admin.auth_failed", level=logging.WARNING, remote=request.remote, path=request.path)
            return _error(401, "the token was refused (unknown, or its reviewer was removed)",
                          headers={"WWW-Authenticate": 'Bearer realm="dbproxy", error="invalid_token"'})
        request[REVIEWER] = reviewer
        return await handler(request)

    # endpoints

    async def _health(self, request: web.Request) -> web.Response:
        try:
            reasons = await asyncio.wait_for(self._service.health(), HEALTH_TIMEOUT)
        except TimeoutError:
            reasons = [f"the health check did not finish within {HEALTH_TIMEOUT:g} s"]
        if not reasons:
            return _json(Health().model_dump(mode="json", exclude_none=True))
        return _json(Health(status="degraded", reasons=reasons).model_dump(mode="json"), status=503)

    async def _pending(self, request: web.Request) -> web.Response:
        return _json(_dump_list(await self._service.pending()))

    async def _log(self, request: web.Request) -> web.Response:
        outcome = request.query.get("outcome") or None
        if outcome is not None and outcome not in _OUTCOMES:
            raise _BadRequest(f"outcome must be one of {', '.join(_OUTCOMES)}; got {outcome!r}")
        agent = request.query.get("agent") or None
        limit = _int_param(request, "limit", default=DEFAULT_LIMIT, lo=1, hi=MAX_LIMIT)
        before = _int_param(request, "before", default=None, lo=1, hi=_MAX_ID)
        assert limit is not None
        filters: dict[str, Any] = {k: request.query.get(q) or None for k, q in (("table", "table"), ("search", "q"))}
        for name in ("since", "until"):
            raw = request.query.get(name)
            if raw:
                try:
                    t = datetime.fromisoformat(raw)
                except ValueError:
                    raise _BadRequest(f"{name} must be an ISO 8601 date or time, got {raw!r}") from None
                filters[name] = t if t.tzinfo is not None else t.replace(tzinfo=UTC)
        records = await self._service.log(outcome=outcome, agent=agent, limit=limit, before_id=before, **filters)
        return _json(_dump_list(records))

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics is None:
            raise web.HTTPNotFound()
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _show(self, request: web.Request) -> web.Response:
        offset = _int_param(request, "offset", default=0, lo=0, hi=2**62)
        limit = _int_param(request, "limit", default=DIFF_PAGE, lo=1, hi=MAX_DIFF_PAGE)
        table = request.query.get("table") or None
        if table is not None and len(table) > MAX_TABLE_LENGTH:
            raise _BadRequest(f"table must be at most {MAX_TABLE_LENGTH} characters")
        wait = _int_param(request, "summary_wait", default=SUMMARY_WAIT, lo=0, hi=MAX_SUMMARY_WAIT)
        assert offset is not None and limit is not None and wait is not None
        detail = await self._service.show(_parse_id(request), offset=offset, limit=limit, table=table,
                                          summary_wait=wait)
        return _json(present.detail_data(detail))

    async def _commit(self, request: web.Request) -> web.Response:
        return await self._decide(request, "commit")

    async def _rollback(self, request: web.Request) -> web.Response:
        return await self._decide(request, "rollback")

    async def _decide(self, request: web.Request, action: str) -> web.Response:
        tx_id = _parse_id(request)
        reviewer, reason, grant = await self._reviewer(request)
        if grant is not None and action != "commit":
            raise _BadRequest("only a commit can add a grant")
        # A reviewer hanging up must not cut a COMMIT or ROLLBACK off half way.
        if action == "commit":
            decision = await asyncio.shield(self._service.commit(tx_id, reviewer, reason=reason, grant=grant))
        else:
            decision = await asyncio.shield(self._service.rollback(tx_id, reviewer, reason=reason))
        log.event("admin.decision", id=tx_id, action=action, reviewer=reviewer, outcome=decision.outcome,
                  remote=request.remote, sqlstate=decision.sqlstate)
        return _json(decision.model_dump(mode="json"))

    async def _undo(self, request: web.Request) -> web.Response:
        return await self._undo_redo(request, "undo")

    async def _redo(self, request: web.Request) -> web.Response:
        return await self._undo_redo(request, "redo")

    async def _verify(self, request: web.Request) -> web.Response:
        tx_id = _parse_id(request)
        outcome = await asyncio.shield(self._service.verify(tx_id))
        log.event("admin.verify", id=tx_id, status=outcome.status, remote=request.remote)
        return _json(outcome.model_dump(mode="json"))

    async def _undo_redo(self, request: web.Request, action: str) -> web.Response:
        tx_id = _parse_id(request)
        raw = await request.read()
        try:
            body = UndoRequest.model_validate_json(raw) if raw.strip() else UndoRequest()
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                                 for err in e.errors())
            raise _BadRequest(f"bad {action} request ({problems})") from None
        if body.since and action == "redo":
            raise _BadRequest("redo takes one transaction at a time (no since)")
        reviewer = self._claimed(request, body.reviewer)
        reason = _clean_reason(body.reason)
        if action == "undo":
            call = self._service.undo(tx_id, reviewer, force=body.force, dry_run=body.dry_run, since=body.since,
                                      reason=reason)
        else:
            call = self._service.redo(tx_id, reviewer, force=body.force, dry_run=body.dry_run, reason=reason)
        outcome = await asyncio.shield(call)
        log.event("admin.undo", id=tx_id, action=action, reviewer=reviewer, applied=outcome.applied,
                  dry_run=body.dry_run, force=body.force, conflicts=len(outcome.conflicts), remote=request.remote)
        return _json(outcome.model_dump(mode="json"))

    async def _reviewer(self, request: web.Request) -> tuple[str, str | None, Literal["session", "permanent"] | None]:
        """Who decides (the token's reviewer), why (optional) and what it grants along (optional)."""
        raw = await request.read()
        body = DecisionRequest()
        if raw.strip():
            try:
                body = DecisionRequest.model_validate_json(raw)
            except ValidationError as e:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()
                )
                raise _BadRequest(f'the body must be empty or {{"reason": TEXT}} ({problems})') from None
        return self._claimed(request, body.reviewer), _clean_reason(body.reason), body.grant

    @staticmethod
    def _claimed(request: web.Request, named: str | None) -> str:
        """The token's reviewer; a body or header naming someone else is refused, not believed."""
        reviewer = request[REVIEWER]
        header = request.headers.get(REVIEWER_HEADER)
        for claim, source in ((named, "reviewer"), (header, f"the {REVIEWER_HEADER} header")):
            if claim is not None and _clean_reviewer(claim, source=source) != reviewer:
                raise ReviewError(403, f"this token belongs to reviewer {reviewer!r}: decisions are recorded under "
                                  "the reviewer whose token makes them (each reviewer has a token of their own: "
                                  "dbproxy reviewer add NAME)")
        return reviewer

    async def _openapi(self, request: web.Request) -> web.Response:
        if self._openapi_doc is None:
            self._openapi_doc = openapi_document()
        return _json(self._openapi_doc)


# --- the OpenAPI document ----------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    """An OpenAPI 3.1 description of the admin API, with its schemas generated from the models."""
    from dbproxy import __version__

    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> dict[str, str]:
        name = model.__name__
        if name not in schemas:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
            schemas.update(schema.pop("$defs", {}))
            schemas[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    def body(schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    def errors(*statuses: int) -> dict[str, Any]:
        what = {
            400: "malformed id, parameter or body",
            401: "missing or wrong bearer token",
            403: "the body or header names a reviewer other than the token's",
            404: "no transaction with this id",
            409: "the transaction is not in a state that allows this",
            422: "refused: a permanent grant for what has no exact inverse",
            500: "unexpected error (details in the proxy's log)",
            502: "the upstream database refused or failed; `sqlstate` says how",
            503: "the journal is unavailable",
        }
        return {str(s): body(ref(ErrorBody), what[s]) for s in (401, *statuses, 500, 503)}

    id_param = {
        "name": "id", "in": "path", "required": True, "description": "transaction id",
        "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_ID},
    }
    records = {"type": "array", "items": ref(TransactionRecord)}

    def decision(action: str, verb: str) -> dict[str, Any]:
        return {
            "post": {
                "operationId": action,
                "summary": f"{verb} a pending transaction upstream",
                "parameters": [
                    id_param,
                    {"name": REVIEWER_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
                     "description": "if given, must be the reviewer the token belongs to (else 403)"},
                ],
                "requestBody": {"required": False,
                                "content": {"application/json": {"schema": ref(DecisionRequest, "validation")}}},
                "responses": {"200": body(ref(Decision), "the decision and the resulting outcome"),
                              **errors(400, 403, 404, 409, 422, 502)},
            }
        }

    def undo_redo(action: str, summary: str) -> dict[str, Any]:
        return {
            "post": {
                "operationId": action, "summary": summary, "parameters": [id_param],
                "requestBody": {"required": False,
                                "content": {"application/json": {"schema": ref(UndoRequest, "validation")}}},
                "responses": {"200": body(ref(UndoOutcome), "what was applied, or the conflicts (nothing applied)"),
                              **errors(400, 404, 409, 502)},
            }
        }

    paths: dict[str, Any] = {
        "/v1/health": {
            "get": {
                "operationId": "health", "summary": "health check (no token needed)", "security": [],
                "responses": {"200": body(ref(Health), "the API is up, the upstream and the journal reachable"),
                              "503": body(ref(Health), "degraded: the upstream or the journal is unreachable "
                                          "(`reasons` says which)")},
            }
        },
        "/v1/pending": {
            "get": {
                "operationId": "pending", "summary": "transactions waiting for a decision, oldest first",
                "responses": {"200": body(records, "pending (and open, write-holding) transactions"), **errors()},
            }
        },
        "/v1/transactions": {
            "get": {
                "operationId": "log", "summary": "the journal, newest first",
                "parameters": [
                    {"name": "outcome", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": list(_OUTCOMES)}},
                    {"name": "agent", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
                    {"name": "before", "in": "query", "required": False, "description": "only ids below this",
                     "schema": {"type": "integer", "minimum": 1}},
                    {"name": "table", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "a statement mentions this text (case-insensitive)"},
                    {"name": "q", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "a statement, the reason or the decider mentions this text"},
                    {"name": "since", "in": "query", "required": False, "description": "started at or after (ISO 8601)",
                     "schema": {"type": "string", "format": "date-time"}},
                    {"name": "until", "in": "query", "required": False, "description": "started before (ISO 8601)",
                     "schema": {"type": "string", "format": "date-time"}},
                ],
                "responses": {"200": body(records, "journal entries"), **errors(400)},
            }
        },
        "/v1/transactions/{id}": {
            "get": {
                "operationId": "show", "summary": "statements, row-level diff and blocked sessions",
                "parameters": [
                    id_param,
                    {"name": "offset", "in": "query", "required": False, "description": "diff rows to skip per table",
                     "schema": {"type": "integer", "minimum": 0, "default": 0}},
                    {"name": "limit", "in": "query", "required": False, "description": "diff rows per table",
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_DIFF_PAGE, "default": DIFF_PAGE}},
                    {"name": "table", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "only this table's diff (as TableDiff.table names it)"},
                    {"name": "summary_wait", "in": "query", "required": False,
                     "description": "seconds to wait for a model's summary when a model is configured (a summary "
                     "not ready by then is 'pending'); ignored without one",
                     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SUMMARY_WAIT,
                                "default": SUMMARY_WAIT}},
                ],
                "responses": {"200": body(ref(TransactionDetail), "one transaction"), **errors(400, 404)},
            }
        },
        "/v1/transactions/{id}/commit": decision("commit", "Commit"),
        "/v1/transactions/{id}/rollback": decision("rollback", "Roll back"),
        "/v1/transactions/{id}/undo": undo_redo("undo", "Undo a transaction committed with its inverse (or a range)"),
        "/v1/transactions/{id}/redo": undo_redo("redo", "Apply an undone transaction again"),
        "/v1/transactions/{id}/verify": {
            "post": {
                "operationId": "verify", "summary": "Prove the transaction's inverse in the sandbox again",
                "parameters": [id_param],
                "responses": {"200": body(ref(VerifyOutcome), "the verdict (also journaled)"),
                              **errors(400, 404, 409, 502)},
            }
        },
        **openapi_paths(ref, body, errors),
        "/openapi.json": {
            "get": {
                "operationId": "openapi", "summary": "this document",
                "responses": {"200": {"description": "OpenAPI 3.1 document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              **errors()},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dbproxy review API",
            "version": __version__,
            "description": "Review what AI agents wrote through dbproxy: list held transactions, "
            "inspect their statements and row changes, commit or roll them back.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "the admin token (DATA_DIR/admin-token)"}},
        },
    }

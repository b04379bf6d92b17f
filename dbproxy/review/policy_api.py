"""The admin API's policy endpoints: grants, paused requests, and reloading the settings.

    GET  /v1/grants?agent=&all=1             [GrantRecord]     active grants (all=1: also ended ones)
    POST /v1/grants                          GrantRecord (201) body GrantBody: session or permanent
    POST /v1/grants/{id}/revoke              GrantRecord       body {"reason": TEXT}
    GET  /v1/requests?agent=&all=1           [RequestRecord]   waiting requests (all=1: also decided ones)
    POST /v1/requests/{id}/approve           RequestRecord     body {"scope": once|session|permanent, "reason"}
    POST /v1/requests/{id}/reject            RequestRecord     body {"reason": TEXT}
    POST /v1/reload                          ReloadReport      read the config again (as SIGHUP does)

Every decision is recorded under the reviewer whose token makes it. `PolicyError`s become their
HTTP status (400, 403, 404, 409, 422, 503) in `dbproxy.review.api`'s error middleware. Mounted by
`AdminServer` when the proxy has a policy; its paths go into the same OpenAPI document.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from dbproxy.config import log
from dbproxy.policy.models import ApproveBody, GrantBody, GrantRecord, ReasonBody, RequestRecord
from dbproxy.policy.service import Policy, PolicyError
from dbproxy.review import jsonio

_MAX_ID = 2**63 - 1


class ReloadReport(BaseModel):
    """What `dbproxy reload` (or SIGHUP) changed."""

    agents_added: list[str] = Field(default_factory=list)
    agents_removed: list[str] = Field(default_factory=list, description="their sessions carry on until they end")
    agents_changed: list[str] = Field(default_factory=list, description="password, databases, mode or rules")
    rules: int = Field(description="rules in effect now (every agent's and the default ones)")
    restart_needed: list[str] = Field(default_factory=list,
                                      description="settings that changed but take effect only after a restart")


Reloader = Callable[[], Awaitable[ReloadReport]]
Claim = Callable[[web.Request, str | None], str]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=jsonio.dumps)


def _id(request: web.Request, what: str) -> int:
    raw = request.match_info["id"]
    if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) <= _MAX_ID:
        raise PolicyError(400, f"{what} id must be a positive integer, got {raw!r}")
    return int(raw)


async def _body(request: web.Request, model: type[BaseModel], what: str) -> Any:
    raw = await request.read()
    try:
        return model.model_validate_json(raw) if raw.strip() else model()
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())
        raise PolicyError(400, f"bad {what} request ({problems})") from None


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "") in ("1", "true", "yes")


class PolicyRoutes:
    def __init__(self, policy: Policy, *, reviewer: Callable[[web.Request], str],
                 reload: Reloader | None = None) -> None:
        self.policy = policy
        self.reviewer = reviewer
        self.reload = reload

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/grants", self._grants)
        app.router.add_post("/v1/grants", self._grant)
        app.router.add_post("/v1/grants/{id}/revoke", self._revoke)
        app.router.add_get("/v1/requests", self._requests)
        app.router.add_post("/v1/requests/{id}/approve", self._approve)
        app.router.add_post("/v1/requests/{id}/reject", self._reject)
        app.router.add_post("/v1/reload", self._reload)

    async def _grants(self, request: web.Request) -> web.Response:
        grants = await self.policy.list_grants(agent=request.query.get("agent") or None,
                                               include_ended=_flag(request, "all"))
        return _json([g.model_dump(mode="json") for g in grants])

    async def _grant(self, request: web.Request) -> web.Response:
        body: GrantBody = await _body(request, GrantBody, "grant")
        reviewer = self.reviewer(request)
        g = await asyncio.shield(self.policy.grant(
            agent=body.agent, ops=body.ops, objects=body.objects, scope=body.scope, reviewer=reviewer,
            session=body.session, max_rows=body.max_rows, reason=body.reason))
        log.event("admin.grant", id=g.id, agent=g.agent, scope=g.scope, reviewer=reviewer, remote=request.remote)
        return _json(g.model_dump(mode="json"), status=201)

    async def _revoke(self, request: web.Request) -> web.Response:
        grant_id = _id(request, "grant")
        body: ReasonBody = await _body(request, ReasonBody, "revoke")
        g = await asyncio.shield(self.policy.revoke(grant_id, self.reviewer(request), reason=body.reason))
        return _json(g.model_dump(mode="json"))

    async def _requests(self, request: web.Request) -> web.Response:
        found = await self.policy.list_requests(waiting_only=not _flag(request, "all"),
                                                agent=request.query.get("agent") or None)
        return _json([r.model_dump(mode="json") for r in found])

    async def _approve(self, request: web.Request) -> web.Response:
        request_id = _id(request, "request")
        body: ApproveBody = await _body(request, ApproveBody, "approve")
        r = await asyncio.shield(self.policy.approve(request_id, self.reviewer(request), scope=body.scope,
                                                     reason=body.reason))
        return _json(r.model_dump(mode="json"))

    async def _reject(self, request: web.Request) -> web.Response:
        request_id = _id(request, "request")
        body: ReasonBody = await _body(request, ReasonBody, "reject")
        r = await asyncio.shield(self.policy.reject(request_id, self.reviewer(request), reason=body.reason))
        return _json(r.model_dump(mode="json"))

    async def _reload(self, request: web.Request) -> web.Response:
        if self.reload is None:
            raise PolicyError(409, "this proxy cannot reload its settings (it was not started by dbproxy serve)")
        report = await asyncio.shield(self.reload())
        log.event("admin.reload", reviewer=self.reviewer(request), remote=request.remote)
        return _json(report.model_dump(mode="json"))


def openapi_paths(ref: Callable[..., dict[str, str]], body: Callable[[dict[str, Any], str], dict[str, Any]],
                  errors: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The policy endpoints for the OpenAPI document (`ref`, `body`, `errors` as there)."""
    def id_param(what: str) -> dict[str, Any]:
        return {"name": "id", "in": "path", "required": True, "description": f"{what} id",
                "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_ID}}

    def listing(op: str, summary: str, model: type[BaseModel], what: str) -> dict[str, Any]:
        return {"get": {"operationId": op, "summary": summary, "parameters": [
            {"name": "agent", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "all", "in": "query", "required": False, "schema": {"type": "boolean"},
             "description": f"also {what}"}],
            "responses": {"200": body({"type": "array", "items": ref(model)}, summary), **errors(400)}}}

    def post(op: str, summary: str, what: str, request: type[BaseModel] | None, answer: type[BaseModel],
             statuses: tuple[int, ...], status: int = 200) -> dict[str, Any]:
        doc: dict[str, Any] = {"operationId": op, "summary": summary,
                               "responses": {str(status): body(ref(answer), summary), **errors(*statuses)}}
        if what:
            doc["parameters"] = [id_param(what)]
        if request is not None:
            doc["requestBody"] = {"required": False,
                                  "content": {"application/json": {"schema": ref(request, "validation")}}}
        return {"post": doc}

    grants = listing("grants", "grants (active ones unless all=1)", GrantRecord, "revoked, consumed and ended ones")
    grants.update(post("grant", "grant an agent permission for its session or permanently", "", GrantBody,
                       GrantRecord, (400, 403, 404, 422), 201))
    return {
        "/v1/grants": grants,
        "/v1/grants/{id}/revoke": post("revoke", "revoke a grant", "grant", ReasonBody, GrantRecord, (400, 404, 409)),
        "/v1/requests": listing("requests", "statements waiting for approval (waiting ones unless all=1)",
                                RequestRecord, "decided, expired and cancelled ones"),
        "/v1/requests/{id}/approve": post("approve", "let a paused statement run (scope once, session or "
                                          "permanent)", "request", ApproveBody, RequestRecord,
                                          (400, 403, 404, 409, 422)),
        "/v1/requests/{id}/reject": post("reject", "refuse a paused statement; the agent gets 42501 with the "
                                         "reason", "request", ReasonBody, RequestRecord, (400, 403, 404, 409)),
        "/v1/reload": post("reload", "read the config file and environment again (agents, rules, timeouts)", "",
                           None, ReloadReport, (409, 422)),
    }

"""The console's policy pages: statements waiting for approval, and grants.

    GET  /console/requests                  waiting requests (live) with approve and reject; the
                                            latest decided ones below
    GET  /console/requests/rows             the waiting requests alone (what the live page fetches)
    POST /console/requests/{id}/approve     form: csrf, scope (once|session|permanent), reason
    POST /console/requests/{id}/reject      form: csrf, reason (required: the agent is told it)
    GET  /console/grants                    active grants with revoke; ended ones; every agent's rules
    POST /console/grants/{id}/revoke        form: csrf, reason

Every decision goes through the proxy's `Policy` (`approve`, `reject`, `revoke`) with the
signed-in reviewer's name, as the admin API's do; its refusals (403 the agent's own request, 404,
409 already decided or expired, 422 a permanent grant for what has no exact inverse) are shown on
the page with their status, and nothing changes. The pages share the console's sessions, CSRF
checks, headers and templates (`pages.Console`); they exist only when the proxy has a policy
(it needs the journal).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from dbproxy.config import log
from dbproxy.policy.models import GrantRecord, Scope
from dbproxy.policy.service import Policy, PolicyError
from dbproxy.review.console.pages import MAX_REASON, PREFIX, Console, Refused, clean_text
from dbproxy.review.present import grant_state

DECIDED_SHOWN = 50
ENDED_SHOWN = 100
_SCOPES: dict[str, Scope] = {"once": "once", "session": "session", "permanent": "permanent"}


class PolicyPages:
    def __init__(self, console: Console, policy: Policy) -> None:
        self.console = console
        self.policy = policy
        console.waiting = lambda: len(policy.waiting_requests())
        console.scripted.add(f"{PREFIX}/requests/rows")

    def add_to(self, app: web.Application) -> None:
        r = app.router
        r.add_get(f"{PREFIX}/requests", self._requests)
        r.add_get(f"{PREFIX}/requests/rows", self._rows)
        r.add_post(PREFIX + "/requests/{id}/approve", self._decide)
        r.add_post(PREFIX + "/requests/{id}/reject", self._decide)
        r.add_get(f"{PREFIX}/grants", self._grants)
        r.add_post(PREFIX + "/grants/{id}/revoke", self._revoke)

    # -- requests -------------------------------------------------------------------------------

    def _waiting(self) -> list[Any]:
        return sorted(self.policy.waiting_requests(), key=lambda r: r.id)

    async def _requests(self, request: web.Request, *, error: str | None = None, status: int = 200) -> web.Response:
        try:
            recent = [r for r in await self.policy.list_requests(waiting_only=False) if r.state != "waiting"]
        except Exception as e:  # the journal is away: the waiting ones are in memory anyway
            log.event("console.requests_unreadable", reason=str(e))
            recent = []
        return self.console.render(request, "requests.html", {
            "requests": self._waiting(), "recent": recent[:DECIDED_SHOWN], "error": error, "nav": "requests",
            "timeout": self.policy.settings.approval_timeout}, status=status)

    async def _rows(self, request: web.Request) -> web.Response:
        # Rendered alone (not through `render`, which would take the session's flash messages).
        return aiohttp_jinja2.render_template("request_rows.html", request, {
            "requests": self._waiting(), "csrf": self.console.session(request).csrf})

    async def _decide(self, request: web.Request) -> web.Response:
        request_id = _id(request, "request")
        action = request.path.rsplit("/", 1)[1]
        session = self.console.session(request)
        form = await request.post()
        reason = clean_text(str(form.get("reason", "")), limit=MAX_REASON, what="the reason")
        try:
            if action == "approve":
                scope = _SCOPES.get(str(form.get("scope", "once")))
                if scope is None:
                    raise Refused(400, "approve once, for the session or permanently")
                done = await asyncio.shield(self.policy.approve(request_id, session.reviewer, scope=scope,
                                                                reason=reason))
                said = f"request #{request_id} approved by {session.reviewer} ({scope})"
                if done.grant is not None and scope != "once":
                    until = "for the rest of the session" if scope == "session" else "until revoked"
                    said += f"; grant #{done.grant} covers what it does {until}"
            else:
                if reason is None:
                    raise PolicyError(400, f"request #{request_id} was not rejected: give a reason (the agent is "
                                      "told it)")
                await asyncio.shield(self.policy.reject(request_id, session.reviewer, reason=reason))
                said = f"request #{request_id} rejected by {session.reviewer}: the agent was told why"
        except PolicyError as e:
            done = "approved" if action == "approve" else "rejected"
            why = e.message if f"#{request_id}" in e.message else f"request #{request_id} was not {done}: {e.message}"
            return await self._requests(request, error=why, status=e.status)
        log.event("console.request_decided", id=request_id, action=action, reviewer=session.reviewer)
        session.flash.append(("ok", said))
        raise web.HTTPSeeOther(f"{PREFIX}/requests")

    # -- grants ---------------------------------------------------------------------------------

    async def _grants(self, request: web.Request, *, error: str | None = None, status: int = 200) -> web.Response:
        try:
            grants = await self.policy.list_grants(include_ended=True)
        except Exception as e:
            raise Refused(503, f"the grants cannot be read now: {e}") from None
        active = [g for g in grants if grant_state(g) == "active"]
        ended = [g for g in grants if grant_state(g) != "active"][:ENDED_SHOWN]
        rules = {name: self.policy.rules(name) for name in sorted(self.policy.registry.agents)}
        modes = {name: a.mode or self.policy.settings.mode for name, a in self.policy.registry.agents.items()}
        return self.console.render(request, "grants.html", {
            "active": active, "ended": ended, "rules": rules, "modes": modes, "error": error, "nav": "grants",
            "state": grant_state, "describe": describe}, status=status)

    async def _revoke(self, request: web.Request) -> web.Response:
        grant_id = _id(request, "grant")
        session = self.console.session(request)
        form = await request.post()
        reason = clean_text(str(form.get("reason", "")), limit=MAX_REASON, what="the reason")
        try:
            await asyncio.shield(self.policy.revoke(grant_id, session.reviewer, reason=reason))
        except PolicyError as e:
            return await self._grants(request, error=e.message, status=e.status)
        log.event("console.revoke", id=grant_id, reviewer=session.reviewer)
        session.flash.append(("ok", f"grant #{grant_id} revoked by {session.reviewer}"))
        raise web.HTTPSeeOther(f"{PREFIX}/grants")


def describe(g: GrantRecord) -> str:
    what = f"{', '.join(g.ops)} on {', '.join(g.objects)}"
    return what + (f" up to {g.max_rows} rows" if g.max_rows is not None else "")


def _id(request: web.Request, what: str) -> int:
    raw = request.match_info["id"]
    if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise Refused(404, f"no {what} {raw!r}: ids are positive integers")
    return int(raw)

"""The running proxy's policy: rules (reloadable), grants, and statements paused for approval.

`Policy` is shared by every session and by the review API:

- **Rules** come from the settings (`rules_for`), compiled once per agent and replaced whole on
  reload (`configure`): a session sees either the old set or the new one, never a mix.
- **Grants**: permanent ones are cached from `dbproxy.grants` (loaded at start, changed only
  through this object); session grants live with their session and end when it ends; once grants
  belong to the request they approved and are consumed when its transaction ends.
- **Requests**: a paused statement becomes a row in `dbproxy.requests` and a future its session
  waits on (`ask` / `wait`), outside any lock, so reviewers keep working on the session's held
  transactions meanwhile. `approve`, `reject`, expiry after `approval_timeout` and the agent
  leaving each end it exactly once (the row's `state = 'waiting'` guard decides races).
- **What may never be permanent**: nothing without an exact inverse (`permanent_refusal`), decided
  from what capture is installed where the agent works (`CaptureProbe`, asked when needed).

Errors for the review API are `PolicyError` with the HTTP status to answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from dbproxy.auth.agents import AgentRegistry
from dbproxy.config import log
from dbproxy.config.settings import Settings
from dbproxy.policy import engine
from dbproxy.policy.engine import Verdict
from dbproxy.policy.models import GrantRecord, RequestRecord, Scope
from dbproxy.policy.rules import Rule, contradictions, permanent_refusal, rules_for
from dbproxy.policy.store import PolicyStore
from inverse.opclass import OP_CLASSES, Action

#: (capture installed, DDL capture installed) in a database.
CaptureProbe = Callable[[str], Awaitable[tuple[bool, bool]]]
#: What the policy tells the review side about (kind, fields): "request" waiting, "request_decided", "grant", "revoke".
PolicyEvent = Callable[[str, dict[str, object]], None]


class PolicyError(Exception):
    """A policy request that cannot be done; `status` is the HTTP status: 400 malformed, 403 not
    this reviewer's to do, 404 unknown agent/grant/request/session, 409 already decided or
    ended, 422 refused by the rules of permanence (the reason says why)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Answer:
    """How a paused request ended."""

    state: Literal["approved", "rejected", "expired", "cancelled"]
    by: str
    reason: str | None = None
    scope: Scope | None = None
    grant: GrantRecord | None = None


@dataclass
class Waiting:
    """A paused request and the future its session waits on."""

    record: RequestRecord
    future: asyncio.Future[Answer]
    session: int


@dataclass
class SessionInfo:
    agent: str
    database: str
    grants: list[GrantRecord] = field(default_factory=list)


def statements_sha256(statements: Sequence[str]) -> str:
    """What a once grant is bound to: the exact statements (and their parameters) approved."""
    h = hashlib.sha256()
    for s in statements:
        h.update(s.encode())
        h.update(b"\x00")
    return h.hexdigest()


class Policy:
    def __init__(self, settings: Settings, store: PolicyStore | None, *, capture_probe: CaptureProbe,
                 default_database: str, registry: AgentRegistry) -> None:
        self.store = store
        self.registry = registry  # the agents (from the settings and the agent store), kept current on reload
        self.capture_probe = capture_probe
        self.default_database = default_database
        self.listeners: list[PolicyEvent] = []
        self._rules: dict[str, list[Rule]] = {}
        self._default: list[Rule] = []
        self.settings = settings
        self.configure(settings)
        self._permanent: dict[str, list[GrantRecord]] = {}
        self._sessions: dict[int, SessionInfo] = {}
        self._waiting: dict[int, Waiting] = {}

    # -- configuration ----------------------------------------------------------------------

    def configure(self, settings: Settings) -> None:
        """Take rules and timeouts from `settings` (at start and on reload). Raises ValueError,
        changing nothing, when rules contradict each other."""
        problems = contradictions([*settings.agents, ""], settings)
        if problems:
            raise ValueError("; ".join(problems))
        self._rules = {name: rules_for(settings, name) for name in settings.agents}
        self._default = rules_for(settings, "")
        self.settings = settings

    def rules(self, agent: str) -> list[Rule]:
        return self._rules.get(agent, self._default)

    def active(self, agent: str, session: int) -> bool:
        """Does anything decide for this agent (rules or grants)? When not, the mode alone does,
        and sessions skip the policy's work entirely."""
        info = self._sessions.get(session)
        return bool(self.rules(agent) or self._permanent.get(agent) or (info is not None and info.grants))

    def any_permanent(self) -> bool:
        """Are there permanent grants (which let transactions commit with their inverses)?"""
        return any(self._permanent.values())

    def grants(self, agent: str, session: int) -> list[GrantRecord]:
        """The standing grants (permanent and this session's) that apply to `agent` now."""
        info = self._sessions.get(session)
        return [*(info.grants if info is not None else ()), *self._permanent.get(agent, ())]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Create or migrate the tables; what a previous run left waiting or session-scoped ended
        with its sessions; load the permanent grants."""
        if self.store is None:
            return
        await self.store.ensure_schema()
        await self.store.cancel_waiting(reason="the proxy restarted; the agent's session was gone")
        await self.store.end_all_session_grants(reason="the proxy restarted; the session ended")
        self._permanent = {}
        for g in await self.store.active_permanent():
            self._permanent.setdefault(g.agent, []).append(g)

    def session_started(self, session: int, agent: str, database: str) -> None:
        self._sessions[session] = SessionInfo(agent, database)

    async def session_ended(self, session: int) -> None:
        """The agent's session is gone: its session grants end, its waiting request is cancelled."""
        info = self._sessions.pop(session, None)
        for w in [w for w in self._waiting.values() if w.session == session]:
            await self._finish(w, Answer("cancelled", "proxy", "the agent's session ended"))
        if info is not None and info.grants and self.store is not None:
            try:
                await self.store.end_session_grants(session, reason="the agent's session ended")
            except Exception as e:  # the session is gone either way; the journal may be away
                log.event("policy.session_grants_not_ended", session=session, reason=str(e), level=logging.WARNING)

    # -- decisions ---------------------------------------------------------------------------

    def at_statement(self, agent: str, session: int, actions: Iterable[Action]) -> Verdict:
        return engine.at_statement(self.rules(agent), self.grants(agent, session), actions)

    def at_commit(self, agent: str, session: int, rows: Mapping[Action, int | None],
                  once: Sequence[GrantRecord] = ()) -> Verdict:
        return engine.at_commit(self.rules(agent), [*once, *self.grants(agent, session)], rows)

    # -- paused requests ---------------------------------------------------------------------

    async def ask(self, *, agent: str, session: int, database: str, statements: list[str],
                  actions: Sequence[Action], rule: str) -> Waiting:
        """Record a request for the paused `statements` (already redacted) and return it with
        the future its session waits on."""
        if self.store is None:
            raise PolicyError(503, "the journal is unavailable, so nothing can wait for approval")
        record = await self.store.add_request(agent=agent, session=session, database=database, statements=statements,
                                              statements_sha256=statements_sha256(statements),
                                              actions=[str(a) for a in actions], rule=rule)
        waiting = Waiting(record, asyncio.get_running_loop().create_future(), session)
        self._waiting[record.id] = waiting
        log.event("policy.request", id=record.id, agent=agent, session=session, actions=record.actions, rule=rule)
        self._emit("request", {"request": record.model_dump(mode="json")})
        return waiting

    async def wait(self, waiting: Waiting, gone: asyncio.Future[None] | None = None) -> Answer:
        """Wait for the reviewer (or `approval_timeout`, or the agent leaving: `gone`)."""
        timeout = self.settings.approval_timeout
        watch: set[asyncio.Future[object]] = {waiting.future}  # type: ignore[arg-type]
        if gone is not None:
            watch.add(gone)  # type: ignore[arg-type]
        await asyncio.wait(watch, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if waiting.future.done():
            return waiting.future.result()
        if gone is not None and gone.done():
            await self._finish(waiting, Answer("cancelled", "proxy", "the agent's session ended"))
        else:
            await self._finish(waiting, Answer("expired", "expiry", f"no reviewer decided within {timeout:g} s "
                                                                    "(approval_timeout)"))
        return waiting.future.result()

    async def _finish(self, waiting: Waiting, answer: Answer) -> RequestRecord | None:
        """End a request once: in the store (whose `waiting` guard settles races) and its future."""
        if waiting.future.done():
            return None
        record: RequestRecord | None = None
        if self.store is not None:
            record = await self.store.end_request(waiting.record.id, state=answer.state, by=answer.by,
                                                  reason=answer.reason, scope=answer.scope,
                                                  grant=answer.grant.id if answer.grant else None)
        if waiting.future.done():
            return None
        self._waiting.pop(waiting.record.id, None)
        waiting.future.set_result(answer)
        log.event("policy.request_ended", id=waiting.record.id, state=answer.state, by=answer.by)
        self._emit("request_decided", {"request": (record or waiting.record).model_dump(mode="json"),
                                       "state": answer.state, "by": answer.by, "reason": answer.reason})
        return record

    async def _waiting_or_error(self, request_id: int, reviewer: str) -> Waiting:
        waiting = self._waiting.get(request_id)
        if waiting is None:
            known = await self.store.request(request_id) if self.store is not None else None
            if known is None:
                raise PolicyError(404, f"no request #{request_id}")
            raise PolicyError(409, f"request #{request_id} is not waiting any more: it was {known.state}"
                              + (f" by {known.decided_by}" if known.decided_by else ""))
        if reviewer == waiting.record.agent:
            raise PolicyError(403, f"request #{request_id} is agent {waiting.record.agent}'s own: an agent's "
                              "identity may not approve or reject its own requests")
        return waiting

    async def approve(self, request_id: int, reviewer: str, *, scope: Scope = "once",
                      reason: str | None = None) -> RequestRecord:
        """Let a paused request run; `scope` also grants its actions for the session or for good."""
        waiting = await self._waiting_or_error(request_id, reviewer)
        rec = waiting.record
        actions = [Action(*a.split(" ", 1)) if " " in a else Action(a, "") for a in rec.actions]
        ops = sorted({a.op for a in actions})
        objects = sorted({a.object or "*" for a in actions})
        if scope == "permanent":
            await self._check_permanent(rec.agent, ops, [rec.database])
        grant = await self._add_grant(agent=rec.agent, ops=ops, objects=objects, scope=scope, granted_by=reviewer,
                                      session=rec.session if scope != "permanent" else None,
                                      statements_sha256=rec.statements_sha256 if scope == "once" else None,
                                      request=rec.id, reason=reason)
        done = await self._finish(waiting, Answer("approved", reviewer, reason, scope, grant))
        if done is None:
            if grant.scope != "once":
                await self._end_grant(grant, by="proxy", reason="the request had ended before the approval")
            raise PolicyError(409, f"request #{request_id} ended before the approval arrived")
        return done

    async def reject(self, request_id: int, reviewer: str, *, reason: str | None) -> RequestRecord:
        waiting = await self._waiting_or_error(request_id, reviewer)
        done = await self._finish(waiting, Answer("rejected", reviewer, reason))
        if done is None:
            raise PolicyError(409, f"request #{request_id} ended before the rejection arrived")
        return done

    def waiting_requests(self, agent: str | None = None, session: int | None = None) -> list[RequestRecord]:
        return [w.record for w in self._waiting.values()
                if (agent is None or w.record.agent == agent) and (session is None or w.session == session)]

    # -- grants ------------------------------------------------------------------------------

    async def check_grant(self, *, agent: str, ops: list[str], scope: Scope, reviewer: str,
                          session: int | None = None, database: str | None = None) -> None:
        """Would this grant be given? Raises PolicyError when not: 404 unknown agent or session,
        403 the reviewer is the agent, 400 unknown class, 422 permanent for what has no exact inverse."""
        if self.registry.get(agent) is None:
            raise PolicyError(404, f"no agent {agent!r} (agents: {', '.join(sorted(self.registry.agents)) or 'none'})")
        if reviewer == agent:
            raise PolicyError(403, f"agent {agent}'s identity may not grant itself permissions")
        bad = [o for o in ops if o not in OP_CLASSES]
        if bad or not ops:
            raise PolicyError(400, f"unknown operation class {bad[0]!r}; the classes are {', '.join(OP_CLASSES)}"
                              if bad else "name at least one operation class")
        if scope == "session":
            info = self._sessions.get(session) if session is not None else None
            if info is None or info.agent != agent:
                live = sorted(s for s, i in self._sessions.items() if i.agent == agent)
                now = f" (its sessions now: {', '.join(map(str, live))})" if live else " (it has none now)"
                raise PolicyError(404, (f"agent {agent} has no session {session}" if session is not None
                                        else "a session grant names the agent's session") + now)
        elif scope == "once":
            raise PolicyError(400, "a once grant comes only with an approval (dbproxy approve REQUEST)")
        if scope == "permanent":
            await self._check_permanent(agent, ops, [database] if database else None)

    async def grant(self, *, agent: str, ops: list[str], objects: list[str], scope: Scope, reviewer: str,
                    session: int | None = None, max_rows: int | None = None, reason: str | None = None,
                    transaction: int | None = None, database: str | None = None) -> GrantRecord:
        """A reviewer's grant to `agent` (refused as `check_grant` says)."""
        await self.check_grant(agent=agent, ops=ops, scope=scope, reviewer=reviewer, session=session,
                               database=database)
        return await self._add_grant(agent=agent, ops=ops, objects=objects, scope=scope, granted_by=reviewer,
                                     session=session if scope == "session" else None, max_rows=max_rows,
                                     reason=reason, transaction=transaction)

    async def _check_permanent(self, agent: str, ops: Iterable[str], databases: list[str] | None) -> None:
        """IsolateGPT's rule: no permanent permission for what cannot be undone."""
        if databases is None:
            known = self.registry.get(agent)
            databases = [d for d in (known.databases if known else ()) if d != "*"] or [self.default_database]
        for db in databases:
            capture, ddl = await self.capture_probe(db)
            why = permanent_refusal(ops, capture=capture, ddl_capture=ddl)
            if why is not None:
                raise PolicyError(422, f"a permanent grant is refused: {why} (database {db}). Grant it once or "
                                  "for the session instead")

    async def _add_grant(self, **fields: object) -> GrantRecord:
        if self.store is None:
            raise PolicyError(503, "the journal is unavailable, so grants cannot be recorded")
        g = await self.store.add_grant(**fields)  # type: ignore[arg-type]
        if g.scope == "permanent":
            self._permanent.setdefault(g.agent, []).append(g)
        elif g.scope == "session" and g.session is not None and g.session in self._sessions:
            self._sessions[g.session].grants.append(g)
        log.event("policy.grant", id=g.id, agent=g.agent, scope=g.scope, ops=g.ops, objects=g.objects, by=g.granted_by)
        self._emit("grant", {"grant": g.model_dump(mode="json")})
        return g

    async def revoke(self, grant_id: int, reviewer: str, *, reason: str | None) -> GrantRecord:
        if self.store is None:
            raise PolicyError(503, "the journal is unavailable")
        known = await self.store.grant(grant_id)
        if known is None:
            raise PolicyError(404, f"no grant #{grant_id}")
        ended = await self._end_grant(known, by=reviewer, reason=reason)
        if ended is None:
            raise PolicyError(409, f"grant #{grant_id} has ended already"
                              + (f" (revoked by {known.revoked_by})" if known.revoked_by else " (consumed)"))
        return ended

    async def _end_grant(self, g: GrantRecord, *, by: str, reason: str | None,
                         consumed: bool = False) -> GrantRecord | None:
        assert self.store is not None
        ended = await self.store.end_grant(g.id, by=by, reason=reason, consumed=consumed)
        self._permanent[g.agent] = [x for x in self._permanent.get(g.agent, []) if x.id != g.id]
        if g.session is not None and g.session in self._sessions:
            info = self._sessions[g.session]
            info.grants = [x for x in info.grants if x.id != g.id]
        if ended is not None and not consumed:
            log.event("policy.revoke", id=g.id, agent=g.agent, by=by)
            self._emit("revoke", {"grant": ended.model_dump(mode="json")})
        return ended

    async def consume(self, grants: Sequence[GrantRecord], *, committed: bool) -> None:
        """Once grants end with the transaction they were given for (committed or not)."""
        for g in grants:
            try:
                if committed:
                    await self._end_grant(g, by="proxy", reason=None, consumed=True)
                else:
                    await self._end_grant(g, by="proxy", reason="its transaction was rolled back")
            except Exception as e:
                log.event("policy.consume_failed", id=g.id, reason=str(e), level=logging.WARNING)

    async def list_grants(self, *, agent: str | None = None, include_ended: bool = False) -> list[GrantRecord]:
        if self.store is None:
            return []
        return await self.store.grants(agent=agent, include_ended=include_ended)

    async def list_requests(self, *, waiting_only: bool = True, agent: str | None = None) -> list[RequestRecord]:
        if self.store is None:
            return []
        return await self.store.requests(waiting_only=waiting_only, agent=agent)

    # -- what the review side hears -----------------------------------------------------------

    def _emit(self, kind: str, fields: dict[str, object]) -> None:
        for listener in list(self.listeners):
            try:
                listener(kind, fields)
            except Exception as e:  # a listener's failure never fails a decision
                log.event("policy.listener_failed", kind=kind, reason=str(e), level=logging.WARNING)


def age(since: datetime) -> float:
    return (datetime.now(UTC) - since).total_seconds()

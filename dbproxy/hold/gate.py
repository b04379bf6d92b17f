"""The policy at an agent's session: what runs, what waits for a person, what is refused, and
what the agent is told about where it stands.

`PolicyGate` serves one hold-mode (or undo-mode) session. Before each request cycle, outside the
connection's lock:

- it finds the statements the cycle will execute (a simple query's statements; the SQL of each
  Execute's portal, with its parameters, also for statements prepared in earlier cycles);
- it answers `SHOW dbproxy.status` and `SHOW dbproxy.rules` from the proxy's own state (the
  planner sends them nowhere, `dbproxy.hold.protocol.proxy_show`);
- when a rule says `ask` with `ask = "pause"` for one of them and no grant covers it, the cycle
  waits: a request is recorded, the agent gets a NOTICE `waiting for approval as request #N`, and
  nothing of the cycle is sent upstream until a reviewer answers. Approved: the cycle runs (a
  once approval covers exactly those statements' actions at their COMMIT). Rejected, expired or
  cancelled: the cycle runs with those statements refused with `42501` and the reason.

While planning, `refusal` (installed as the hold state's `policy_refusal`) refuses statements a
`deny` rule names, and those a reviewer rejected.

At the agent's COMMIT, `at_commit` gives the verdict over everything the transaction did: the
parsed statements' actions with row counts from their command tags, and, with capture, what
capture saw (cascades, trigger writes, writes hidden in functions) with its row counts.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from dbproxy.config import log
from dbproxy.hold.protocol import (
    PROXY_COLUMNS,
    PreparedStatements,
    ProxyResult,
    classify_cached,
    notice,
    proxy_show,
)
from dbproxy.journal.params import journal_params
from dbproxy.journal.records import StatementRecord
from dbproxy.journal.tags import tag_rows
from dbproxy.policy.engine import Verdict
from dbproxy.policy.models import GrantRecord
from dbproxy.policy.service import Policy
from dbproxy.protocol.framing import Frame
from dbproxy.protocol.messages import Bind, ErrorResponse, Execute, Parse, Query, decode_frontend
from inverse.images import CAPTURE_LIMIT, Change, TableInfo
from inverse.lexer import split_cached
from inverse.opclass import Action, actions, captured_actions

_MENTIONS_PROXY = re.compile(rb"[dD][bB][pP][rR][oO][xX][yY]\.")
_Q, _P, _B, _E = ord("Q"), ord("P"), ord("B"), ord("E")
#: Operation classes a statement `classify` calls read-only can still have (`inverse.opclass`).
_READ_OPS = frozenset({"read", "update", "function"})


@dataclass(frozen=True)
class Executed:
    """A statement a cycle executes: its SQL and, with parameters, its Bind and their types."""

    sql: str
    bind: Bind | None = None
    types: tuple[int, ...] = ()

    def shown(self) -> str:
        """As a reviewer sees it in a request: credentials redacted, parameters listed."""
        text = log.redact_sql(self.sql)
        if self.bind is None:
            return text
        values = journal_params(self.sql, self.bind, self.types) or []
        return text + "\n-- " + ", ".join(f"${i} = {'NULL' if v is None else repr(v)}"
                                           for i, v in enumerate(values, 1))


class PendingView:
    """What `SHOW dbproxy.status` lists of a held transaction."""

    def __init__(self, tx_id: int, held_at: datetime | None, statements: int, policy: str | None) -> None:
        self.tx_id, self.held_at, self.statements, self.policy = tx_id, held_at, statements, policy


class PolicyGate:
    def __init__(self, policy: Policy | None, *, agent: str, session: int, database: str, mode: str,
                 pending: Callable[[], Sequence[PendingView]], write: Callable[[bytes], None]) -> None:
        self.policy = policy
        self.agent, self.session, self.database, self.mode = agent, session, database, mode
        self.prepared = PreparedStatements()  # the session's own, once it is attached
        self.pending = pending
        self.write = write
        self.refused: dict[str, ErrorResponse] = {}  # statements refused in this cycle (a reviewer said no)
        self.once: list[GrantRecord] = []  # approvals of this agent transaction's statements
        self.gone: asyncio.Future[None] | None = None
        self._rules_seen: object = None  # the rule list `reads_free` was computed for (rules reload)
        self._reads_free = True

    # -- before a cycle -----------------------------------------------------------------------

    def executed(self, cycle: Sequence[bytes | Frame]) -> list[Executed]:
        """The SQL each statement of the cycle executes, with its Bind and parameter types when it
        has parameters."""
        frames = [f for f in cycle if isinstance(f, Frame)]
        if frames and frames[-1].type == _Q:
            msg = decode_frontend(frames[-1])
            assert isinstance(msg, Query)
            return [Executed(s) for s in split_cached(msg.sql)]
        prepared = self.prepared
        statements = {name: (c.sql, prepared.types.get(name, ())) for name, c in prepared.statements.items()
                      if c is not None}
        portals: dict[str, Executed] = {}
        for name, c in prepared.portals.items():
            if c is not None:
                bound = prepared.binds.get(name)
                portals[name] = Executed(c.sql, *bound) if bound else Executed(c.sql)
        out: list[Executed] = []
        for f in frames:
            if f.type not in (_P, _B, _E):
                continue
            m = decode_frontend(f)
            if isinstance(m, Parse):
                statements[m.name] = (m.sql, m.param_types)
            elif isinstance(m, Bind):
                known = statements.get(m.statement)
                if known is not None:
                    portals[m.portal] = Executed(known[0], m, known[1]) if m.params else Executed(known[0])
                else:
                    portals.pop(m.portal, None)
            elif isinstance(m, Execute) and m.portal in portals:
                out.append(portals[m.portal])
        return out

    def mentions_proxy(self, cycle: Sequence[bytes | Frame]) -> bool:
        if self.prepared.proxy_portals or self.prepared.proxy:
            return True
        return any(isinstance(f, Frame) and f.type in (_Q, _P) and _MENTIONS_PROXY.search(f.raw) for f in cycle)

    def answers(self) -> dict[str, ProxyResult]:
        return {"status": self.status(), "rules": self.rules()}

    async def before(self, cycle: Sequence[bytes | Frame]) -> dict[str, ProxyResult]:
        """Run before the cycle is planned: returns the proxy's answers to its own SHOWs, and waits
        while a statement is paused for approval."""
        self.refused = {}
        answers = self.answers() if self.mentions_proxy(cycle) else {}
        policy = self.policy
        if policy is None or not policy.active(self.agent, self.session):
            return answers
        executed = self.executed(cycle)
        paused: list[tuple[Executed, Verdict]] = []
        for ex in executed:
            if proxy_show(ex.sql) is not None:
                continue
            verdict = policy.at_statement(self.agent, self.session, actions(ex.sql))
            if verdict.decision == "ask" and verdict.ask == "pause":
                paused.append((ex, verdict))
        if paused:
            await self._pause(executed, paused)
            if self.refused:
                answers = self.answers() if answers else answers
        return answers

    async def _pause(self, executed: list[Executed], paused: list[tuple[Executed, Verdict]]) -> None:
        assert self.policy is not None
        shown = [ex.shown() for ex in executed]
        acts = sorted({a for _, v in paused for a in v.actions})
        rule = "; ".join(dict.fromkeys(r for _, v in paused for r in v.reasons))
        waiting = await self.policy.ask(agent=self.agent, session=self.session, database=self.database,
                                        statements=shown, actions=acts, rule=rule)
        n = waiting.record.id
        self.write(notice(
            f"dbproxy: waiting for approval as request #{n}",
            detail=f"{rule}. Nothing of this request has run; the session waits until a reviewer decides "
            f"(at most {self.policy.settings.approval_timeout:g} s).",
            hint=f"dbproxy approve {n}; dbproxy reject {n} --reason TEXT"))
        answer = await self.policy.wait(waiting, self.gone)
        if answer.state == "approved":
            if answer.grant is not None and answer.grant.scope == "once":
                self.once.append(answer.grant)
            self.write(notice(f"dbproxy: request #{n} approved by {answer.by} ({answer.scope})"
                              + (f": {answer.reason}" if answer.reason else "")))
            return
        why = {"rejected": f"rejected by {answer.by}", "expired": "not decided in time",
               "cancelled": "cancelled"}[answer.state]
        error = ErrorResponse.make(
            "42501", f"dbproxy: request #{n} was {why}" + (f": {answer.reason}" if answer.reason else ""),
            detail=f"{rule}. The statement did not run.",
            hint="SHOW dbproxy.status lists what waits for a reviewer; SHOW dbproxy.rules the rules.")
        for ex, _ in paused:
            self.refused[ex.sql] = error
        log.event("policy.refused_request", session=self.session, id=n, state=answer.state)

    # -- while planning ----------------------------------------------------------------------

    def refusal(self, sql: str) -> ErrorResponse | None:
        """A statement's refusal by the policy (see `HoldState.policy_refusal`)."""
        refused = self.refused.get(sql)
        if refused is not None:
            return refused
        policy = self.policy
        if policy is None or not policy.active(self.agent, self.session):
            return None
        verdict = policy.at_statement(self.agent, self.session, actions(sql))
        if verdict.decision != "deny":
            return None
        return ErrorResponse.make("42501", f"dbproxy denied this statement: {verdict.reasons[0]}",
                                  detail="A deny rule decides before anything runs; no grant overrides it.",
                                  hint="SHOW dbproxy.rules lists this agent's rules.")

    def reads_free(self) -> bool:
        """May a read-only cycle skip the policy (the read-only fast path of
        `dbproxy.hold.session`)? Yes unless a deny or ask rule could match what a read-only
        statement does (`read`; `update` for rows locked FOR UPDATE/SHARE; `function`), or
        approvals or refusals of this agent transaction are in play. Grants only allow."""
        if self.once or self.refused:
            return False
        policy = self.policy
        if policy is None:
            return True
        rules = policy.rules(self.agent)
        if rules is not self._rules_seen:
            self._rules_seen = rules
            self._reads_free = not any(r.decision != "allow" and not r.ops.isdisjoint(_READ_OPS) for r in rules)
        return self._reads_free

    # -- at the agent's COMMIT ---------------------------------------------------------------

    def applies(self) -> bool:
        """Does the policy have a say on this session's transactions (rules, grants, approvals)?"""
        return self.policy is not None and (self.policy.active(self.agent, self.session) or bool(self.once))

    def at_commit(self, statements: Sequence[StatementRecord], changes: Sequence[Change] | None,
                  tables: dict[int, TableInfo], *, complete: bool = True) -> Verdict | None:
        """The verdict over the agent transaction (None: no policy applies, the mode decides).
        `changes`: what capture saw (None without capture); not `complete`: there were more than
        could be fetched, so every row count it gives is taken as above the fetch limit."""
        policy = self.policy
        if policy is None or not self.applies():
            return None
        rows: dict[Action, int | None] = {}
        for rec in statements:
            if rec.sqlstate is not None or rec.tag in (None, "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"):
                continue
            if classify_cached(rec.sql).read_only:
                continue
            n = tag_rows(rec.tag)
            for a in actions(rec.sql):
                if a.op == "read":
                    continue
                rows[a] = (rows.get(a) or 0) + n if n is not None else rows.get(a)
        if changes is not None:
            seen = captured_actions(changes, tables)
            for a in list(rows):  # capture's counts (cascades and trigger writes included) win
                if a.op in ("insert", "update", "delete", "truncate") and any(
                        c.op == a.op and _same_object(c.object, a.object) for c in seen):
                    del rows[a]
            if not complete:
                seen = {a: (max(n, CAPTURE_LIMIT + 1) if n is not None else None) for a, n in seen.items()}
            rows.update(seen)
        return policy.at_commit(self.agent, self.session, rows, self.once)

    async def transaction_ended(self, *, committed: bool) -> None:
        """Once approvals end with the agent transaction they were given for."""
        if self.once and self.policy is not None:
            once, self.once = self.once, []
            await self.policy.consume(once, committed=committed)

    # -- what the agent can ask ----------------------------------------------------------------

    def status(self) -> ProxyResult:
        now = datetime.now(UTC)
        rows: list[tuple[str | None, ...]] = []
        policy = self.policy
        n_rules = len(policy.rules(self.agent)) if policy is not None else 0
        rows.append(("session", str(self.session), self.mode, None, None,
                     f"agent {self.agent}, database {self.database}, {self.mode} mode, {n_rules} rule"
                     f"{'' if n_rules == 1 else 's'}", None))
        for p in self.pending():
            rows.append(("transaction", str(p.tx_id), "pending", _iso(p.held_at), _age(p.held_at, now),
                         f"held for review ({p.statements} statements)" + (f": {p.policy}" if p.policy else ""),
                         f"a reviewer decides: dbproxy commit {p.tx_id} or dbproxy rollback {p.tx_id}"))
        if policy is not None:
            for r in policy.waiting_requests(agent=self.agent):
                rows.append(("request", str(r.id), r.state, _iso(r.created_at), _age(r.created_at, now),
                             f"{', '.join(r.actions)}: {r.rule}",
                             f"a reviewer decides: dbproxy approve {r.id} or dbproxy reject {r.id}"))
            for g in policy.grants(self.agent, self.session):
                rows.append(("grant", str(g.id), g.scope, _iso(g.granted_at), _age(g.granted_at, now),
                             f"{', '.join(g.ops)} on {', '.join(g.objects)}"
                             + (f" up to {g.max_rows} rows" if g.max_rows is not None else "")
                             + f", granted by {g.granted_by}" + (f": {g.reason}" if g.reason else ""),
                             f"dbproxy revoke {g.id}"))
        return ProxyResult(PROXY_COLUMNS["status"], rows)

    def rules(self) -> ProxyResult:
        rows: list[tuple[str | None, ...]] = []
        rules = self.policy.rules(self.agent) if self.policy is not None else []
        for i, r in enumerate(rules, 1):
            rows.append((str(i), r.source, r.decision, r.ask if r.decision == "ask" else None,
                         ", ".join(sorted(r.ops)), ", ".join(r.objects),
                         str(r.max_rows) if r.max_rows is not None else None))
        rows.append((str(len(rules) + 1), "(no rule matches)", f"{self.mode} mode decides", None, "*", "*", None))
        return ProxyResult(PROXY_COLUMNS["rules"], rows)


def _same_object(a: str, b: str) -> bool:
    def norm(n: str) -> str:
        n = n.lower().replace('"', "")
        return n if "." in n else f"public.{n}"
    return norm(a) == norm(b)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") if t is not None else None


def _age(t: datetime | None, now: datetime) -> str | None:
    return f"{(now - t).total_seconds():.1f}" if t is not None else None

"""Undo mode at the agent's COMMIT: commit with an exact inverse, or hold for a person.

The agent's transaction has run on the upstream with capture on; its COMMIT plan (see
`inverse.images.CAPTURE_FETCH_SQL`) brought back the captured changes in the same round trip as
the guard. Here, still inside the upstream transaction, `choose` decides:

1. the tables touched are looked up in the catalog (cached per database; DDL clears the cache);
2. `inverse.undo_plan.build` synthesizes the inverse and classifies what has none;
3. DDL the rules cannot invert goes to the model, when one is configured (`Verification.complete`);
4. the inverse is proved in a sandbox (`dbproxy.undo.verification`); only a verified one commits;
5. the answer is `Commit` (the caller writes the undo marker, `MARK_SQL`, and COMMIT in one round
   trip, so the row images, the marker and the agent's writes commit atomically, then journals the
   inverse) or `Hold` (the caller holds the transaction for review, as in hold mode, with the
   reasons).

The fetched rows' seventh column is the schema version (`dbproxy.ddl_epoch`), the key under which
verified results are cached; when it moves, the cached catalog facts are dropped too. This module
runs the proxy's statements through an `Injector` (in the proxy, `dbproxy.hold.connection.
HeldConnection`), so it knows nothing of sessions or chains.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from dbproxy.config import log
from dbproxy.journal.records import StatementRecord
from dbproxy.protocol.messages import ErrorResponse
from dbproxy.undo.verification import Verification
from inverse.images import (
    CAPTURE_DDL_FETCH_SQL,
    CAPTURE_LIMIT,
    TABLE_INFO_SQL,
    Change,
    TableInfo,
    change_from_row,
    table_info_from_row,
)
from inverse.undo_plan import Plan, build
from sandbox.verdict import Verdict

_TABLE_INFO_JSON_SQL = f"SELECT pg_catalog.to_json(x)::text FROM ({TABLE_INFO_SQL}) x"
MARK_SQL = "SELECT dbproxy.mark_committed($1, $2, $3)"
NOT_VERIFIED = "not done (sandbox = off)"
NOTHING_TO_VERIFY = "not done: the inverse is incomplete, so there is nothing to verify"
LLM_OFF = ("off: no llm.api_key (or OPENAI_API_KEY) is set; a model could have proposed the DDL inverse the rules "
           "lack, for the sandbox to verify")


def _table_from_json(text: str) -> TableInfo:
    """A TABLE_INFO_SQL row that came as JSON text (the proxy's own statements return text): its
    keys are the query's columns, in order."""
    return table_info_from_row(tuple(json.loads(text).values()))


class InjectResult(Protocol):
    """The answer to the proxy's own statements: rows of each, and the first error."""

    rows: list[list[tuple[str | None, ...]]]
    error: ErrorResponse | None


class Injector(Protocol):
    """Runs the proxy's own statements inside the agent's upstream transaction."""

    database: str

    async def inject(self, *sqls: str | tuple[str, list[str | None]]) -> InjectResult: ...


@dataclass
class TableCache:
    """Catalog facts per database and table oid, shared by all sessions."""

    by_db: dict[str, dict[int, TableInfo]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # last schema version seen per database

    def of(self, database: str) -> dict[int, TableInfo]:
        return self.by_db.setdefault(database, {})

    def forget(self, database: str) -> None:
        self.by_db.pop(database, None)

    def moved(self, database: str, version: object) -> bool:
        """Has the schema version moved since the last call (DDL by anyone)?"""
        if version is None:
            return False
        last = self.versions.get(database)
        self.versions[database] = str(version)
        return last is not None and last != str(version)


@dataclass
class Decision:
    xid: int
    plan: Plan
    complete: bool  # every change was fetched (else the inverse is rendered from the log on demand)
    synth_ms: float
    changes: list[Change] = field(default_factory=list)
    tables: dict[int, TableInfo] = field(default_factory=dict)
    schema_version: str | None = None  # dbproxy.ddl_epoch (None: DDL event triggers not installed)

    @property
    def reversible(self) -> bool:
        return self.plan.reversible

    def journal_json(self, verdict: Verdict | None = None, llm: dict[str, Any] | str | None = None) -> str:
        """The journal's `undo` column. `llm`: the model's attempts at the rules' gaps, or why no
        model was asked (absent when the rules needed no help)."""
        unverified = NOT_VERIFIED if self.plan.reversible else NOTHING_TO_VERIFY
        d: dict[str, Any] = {"verification": verdict.to_json() if verdict is not None else unverified,
                             "synthesis_ms": round(self.synth_ms, 3), "complete": self.complete,
                             **self.plan.to_json()}
        if llm is not None:
            d["llm"] = llm
        if not self.complete:
            d["steps"] = []
        return json.dumps(d)


async def decide(held: Injector, xid: int, rows: list[tuple[str | None, ...]], cache: TableCache,
                 limit: int) -> Decision:
    """Build the inverse of the transaction whose captured rows (up to `limit` + 1) are `rows`."""
    changes = [change_from_row(r[:6]) for r in rows]
    version = rows[0][6] if rows and len(rows[0]) > 6 else None
    complete = len(changes) <= limit
    if not complete:
        # Too many to carry: decide on the DDL events only (every row change has an exact inverse
        # in the log); the steps are built from the log when someone asks for them.
        r = await held.inject(CAPTURE_DDL_FETCH_SQL)
        changes = sorted([c for c in changes if c.op != "X"][:limit] + [change_from_row(x) for x in r.rows[0]],
                         key=lambda c: c.seq)
    tables = cache.of(held.database)
    if any(c.op == "X" for c in changes) or cache.moved(held.database, version):
        tables.clear()  # the catalog changed (this transaction's DDL, or anyone's since the last commit)
    missing = {c.rel for c in changes if c.rel is not None and c.rel not in tables}
    if missing:
        r = await held.inject((_TABLE_INFO_JSON_SQL, ["{" + ",".join(str(o) for o in sorted(missing)) + "}"]))
        for (text,) in r.rows[0] if r.rows else []:
            if text is not None:
                info = _table_from_json(text)
                tables[info.oid] = info
    start = time.perf_counter()
    plan = build(changes, tables)
    touched = {c.rel: tables[c.rel] for c in changes if c.rel is not None and c.rel in tables}
    return Decision(xid, plan, complete, (time.perf_counter() - start) * 1000, changes, touched,
                    str(version) if version is not None else None)


@dataclass
class Hold:
    """Hold the transaction for a person: `why` it cannot commit, and the undo document so far."""

    why: list[str]
    because: str = "it cannot be undone exactly"
    undo: str | None = None


@dataclass
class Commit:
    """Commit with this inverse (`llm`: the model's attempts, when the rules needed its help)."""

    decision: Decision
    verdict: Verdict | None
    llm: dict[str, Any] | str | None = None


async def choose(tx: Injector, *, xid: int | None, rows: list[tuple[str | None, ...]], capture: bool,
                 chained: bool, statements: list[StatementRecord], tables: TableCache,
                 verification: Verification | None, session: int, decision: Decision | None = None) -> Hold | Commit:
    """What undo mode does with a transaction that wrote (or notified) at its COMMIT. `rows`: what
    `CAPTURE_FETCH_SQL` returned; `chained`: the agent's COMMIT AND CHAIN left its next transaction
    open in the same upstream one; `decision`: the inverse, when the caller built it already (the
    policy counts rows from the same captured changes)."""
    if xid is None:
        return Hold(["NOTIFY cannot be taken back once delivered"])
    if not capture:
        return Hold([f"capture is not installed in database {tx.database}, "
                     "or is from an older dbproxy (run `dbproxy install`)"])
    if chained:
        return Hold(["COMMIT AND CHAIN keeps the transaction open"])
    if decision is None:
        decision = await decide(tx, xid, rows, tables, CAPTURE_LIMIT)
    if not decision.reversible:
        log.event("undo.irreversible", session=session, reasons=decision.plan.irreversible)
        return await _irreversible(tx, decision, statements, verification, session)
    verdict = None
    if verification is not None:
        verdict = await verification.at_commit(
            tx.database, statements, decision.plan, decision.changes, decision.tables,
            complete=decision.complete, schema_version=decision.schema_version)
    if verdict is not None and not verdict.verified:
        log.event("undo.unverified", session=session, verdict=verdict.summary())
        return Hold([f"sandbox verification: {verdict.summary()}"],
                    because="its inverse was not verified in the sandbox", undo=decision.journal_json(verdict))
    return Commit(decision, verdict)


async def _irreversible(tx: Injector, decision: Decision, statements: list[StatementRecord],
                        verification: Verification | None, session: int) -> Hold | Commit:
    """The rules left something without an exact inverse. DDL they cannot invert goes to the
    model, when one is configured; its proposal commits only once the sandbox verified the whole
    plan with it. Anything else is held for a person, with every attempt journaled."""
    why = list(decision.plan.irreversible)
    if not decision.plan.gaps:
        return Hold(why, undo=decision.journal_json())
    if verification is None or verification.llm is None:
        return Hold(why, undo=decision.journal_json(llm=LLM_OFF))
    done = await verification.complete(tx.database, statements, decision.plan, decision.changes, decision.tables)
    record: dict[str, object] | str = done.outcome.to_json() if done.outcome else f"not asked: {done.reason}"
    if done.trusted:
        log.event("undo.llm_inverse", session=session, attempts=len(done.outcome.attempts) if done.outcome else 0)
        return Commit(replace(decision, plan=done.plan), done.verdict, record)
    log.event("undo.llm_untrusted", session=session, reason=done.reason)
    return Hold([*why, f"no trusted model-proposed inverse: {done.reason}"],
                because="the rules cannot undo it exactly and no model-proposed inverse verified",
                undo=decision.journal_json(done.verdict, llm=record))


def mark(agent: str, session: int, decision: Decision) -> tuple[str, list[str | None]]:
    """The undo marker, sent with the COMMIT: it commits only with the agent's writes (the
    transaction id is the session's own, `dbproxy.mark_committed` takes no other)."""
    return MARK_SQL, [agent, str(session), str(decision.plan.changes)]

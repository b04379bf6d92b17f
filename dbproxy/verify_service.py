"""`dbproxy verify ID`: run sandbox verification again, on demand, and journal the verdict.

- A transaction committed in undo mode: its changes come from `dbproxy.capture_log`, the plan is
  rebuilt from the catalog as it is now, the sample is taken from the database as it is now
  (affected rows as their captured before-images). One whose DDL has committed cannot be
  verified any more (the schema from before it is gone), and says so.
- A held transaction: its captured changes are read inside its own upstream transaction (where
  they are visible), between the agent's statements. Held hold-mode transactions have no capture,
  so the verdict says they will not be undoable once committed.
The verdict replaces `verification` in the entry's undo document.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import asyncpg

from dbproxy import undo
from dbproxy.hold_protocol import CAPTURE_FETCH_SQL, CAPTURE_LIMIT, AgentTx
from dbproxy.review import ReviewError
from dbproxy.undo_commit import decide
from dbproxy.verification import transaction
from inverse.undo_plan import build
from sandbox.verdict import Verdict
from sandbox.verify import Candidate

if TYPE_CHECKING:
    from dbproxy.hold import HeldConnection
    from dbproxy.pending import PendingRegistry

LOCK_WAIT = 10.0


async def run(registry: PendingRegistry, tx_id: int) -> dict[str, Any]:
    verification = registry.verification
    if verification is None or not verification.enabled:
        raise ReviewError(409, "sandbox verification is off (setting sandbox = off)")
    held = registry.live.get(tx_id)
    if held is not None:
        verdict = await _held(registry, held, tx_id)
        doc = dict(held.undo or {})
        held.undo = doc
    else:
        verdict, doc = await _committed(registry, tx_id)
    doc["verification"] = verdict.to_json()
    try:
        await registry.journal.update(tx_id, undo=json.dumps(doc))
    except Exception as e:
        raise ReviewError(503, f"verified, but the journal is unavailable to record it: {e}") from None
    return {"id": tx_id, **verdict.to_json()}


async def _held(registry: PendingRegistry, held: HeldConnection, tx_id: int) -> Verdict:
    assert registry.verification is not None
    if held.mode != "undo" or not held.state.capture:
        return Verdict.could_not(f"held in {held.mode} mode, which does not capture row images: once committed "
                                 "it cannot be undone (agents in undo mode get verified inverses)")
    try:
        await asyncio.wait_for(held.lock.acquire(), LOCK_WAIT)
    except TimeoutError:
        raise ReviewError(409, f"the agent is running a statement on #{tx_id}; try again") from None
    try:
        if held.state.agent_tx is not AgentTx.NONE:
            raise ReviewError(409, f"the agent is inside a transaction on #{tx_id}; verify between its transactions")
        r = await held.inject(CAPTURE_FETCH_SQL)
        if r.error is not None:
            raise ReviewError(502, f"could not read the captured changes: {r.error.message}")
        assert held.xid is not None
        decision = await decide(held, held.xid, r.rows[0] if r.rows else [], registry.tables, CAPTURE_LIMIT)
        if not decision.reversible:
            return Verdict.could_not("no inverse to verify: " + "; ".join(decision.plan.irreversible))
        if not decision.complete:
            return Verdict.could_not(f"more than {CAPTURE_LIMIT} row changes: too many to verify")
        statements = list(held.statements)
    finally:
        held.lock.release()
    return await registry.verification.verify(held.database, transaction(statements, decision.changes,
                                                                         decision.tables), Candidate(decision.plan))


async def _committed(registry: PendingRegistry, tx_id: int) -> tuple[Verdict, dict[str, Any]]:
    assert registry.verification is not None
    record, statements = await registry.journal_get(tx_id)
    doc = dict(record.undo or {})
    if record.mode != "undo" or record.outcome != "committed" or record.xid is None or doc.get("action"):
        raise ReviewError(409, f"#{tx_id} is not a transaction committed in undo mode (mode {record.mode}, "
                          f"outcome {record.outcome}); only those and held transactions can be verified")
    try:
        con = await asyncpg.connect(registry.dsn_for(record.database), timeout=10)
    except (OSError, asyncpg.PostgresError) as e:
        raise ReviewError(502, f"the upstream is unreachable: {e}") from None
    try:
        changes = await undo.load_changes(con, record.xid)
        tables = await undo.load_tables(con, {c.rel for c in changes if c.rel is not None})
        undone = await con.fetchval("SELECT undone_at IS NOT NULL FROM dbproxy.undo_records WHERE xid = $1",
                                    record.xid)
    finally:
        await con.close()
    if not changes:
        return Verdict.could_not("its captured changes are no longer in dbproxy.capture_log"), doc
    if undone:
        return Verdict.could_not("it has been undone: verify it again after a redo"), doc
    if any(c.op == "X" for c in changes):
        return Verdict.could_not("it changed the schema and has committed: the schema from before it no longer "
                                 "exists to copy"), doc
    plan = build(changes, tables)
    if plan.irreversible:
        return Verdict.could_not("no inverse to verify: " + "; ".join(plan.irreversible)), doc
    verdict = await registry.verification.verify(record.database, transaction(statements, changes, tables),
                                                 Candidate(plan))
    return verdict, doc

"""`dbproxy verify ID` for a transaction committed with its inverse: run sandbox verification again.

Its changes come from `dbproxy.capture_log`, the plan is rebuilt from the catalog as it is now, the
sample is taken from the database as it is now (affected rows as their captured before-images).
One whose DDL has committed cannot be verified any more (the schema from before it is gone), and
says so. Held transactions are verified inside their own upstream transaction instead
(`dbproxy.hold.reverify`); the review queue journals either verdict.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from dbproxy.journal.records import StatementRecord, TransactionRecord
from dbproxy.review.service import ReviewError
from dbproxy.undo import apply as undo
from dbproxy.undo.verification import Verification, transaction
from inverse.undo_plan import build
from sandbox.verdict import Verdict
from sandbox.verify import Candidate


async def committed(record: TransactionRecord, statements: list[StatementRecord], dsn_for: Callable[[str], str],
                    verification: Verification) -> Verdict:
    doc = record.undo or {}
    if record.outcome != "committed" or record.xid is None or not doc.get("direction") or doc.get("action"):
        raise ReviewError(409, f"#{record.id} was not committed with an inverse (mode {record.mode}, "
                          f"outcome {record.outcome}); only those and held transactions can be verified")
    try:
        con = await asyncpg.connect(dsn_for(record.database), timeout=10)
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
        return Verdict.could_not("its captured changes are no longer in dbproxy.capture_log")
    if undone:
        return Verdict.could_not("it has been undone: verify it again after a redo")
    if any(c.op == "X" for c in changes):
        return Verdict.could_not("it changed the schema and has committed: the schema from before it no longer "
                                 "exists to copy")
    plan = build(changes, tables)
    if plan.irreversible:
        return Verdict.could_not("no inverse to verify: " + "; ".join(plan.irreversible))
    return await verification.verify(record.database, transaction(statements, changes, tables), Candidate(plan))

"""The reviewer's undo and redo, as the running proxy serves them (`ReviewService.undo/redo`).

Finds the journal entries, runs `dbproxy.undo.apply.run` on a fresh upstream connection with the
proxy's own credentials, and journals the result: each undone transaction's `undo` document gets
a history entry, and the undo itself becomes a journal entry (mode `undo`, agent
`reviewer:NAME`, its statements the SQL that ran), so it can be found, shown and redone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg

from dbproxy.journal.records import StatementRecord, TransactionRecord
from dbproxy.journal.store import FinishedTransaction, Journal
from dbproxy.review.models import UndoConflict, UndoOutcome
from dbproxy.review.service import ReviewError
from dbproxy.undo import apply as undo


async def _targets(journal: Journal, tx_id: int, *, since: bool,
                   direction: undo.Direction) -> list[TransactionRecord]:
    try:
        if since:
            records = await journal.undoable_since(tx_id)
        else:
            found = await journal.get(tx_id)
            records = [found[0]] if found is not None else []
            doc = (records[0].undo or {}) if records else {}
            if direction == "redo" and doc.get("action") == "undo":
                # The journal entry of an undo: redo what it undid.
                got = [await journal.get(int(i)) for i in doc.get("of", [])]
                records = sorted((g[0] for g in got if g is not None), key=lambda r: r.id, reverse=True)
    except Exception as e:
        raise ReviewError(503, f"the journal is unavailable: {e}") from None
    if not records:
        if since:
            raise ReviewError(409, f"no transaction committed with an undo from #{tx_id} on")
        raise ReviewError(404, f"no transaction #{tx_id}")
    for r in records:
        if r.outcome != "committed" or r.xid is None or not (r.undo or {}).get("direction"):
            raise ReviewError(409, f"transaction #{r.id} was not committed with an undo (mode {r.mode}, "
                              f"outcome {r.outcome}); only transactions committed with their inverse (undo "
                              "mode, or allowed by a rule) can be undone")
    databases = {r.database for r in records}
    if len(databases) > 1:
        raise ReviewError(409, f"the range spans several databases ({', '.join(sorted(databases))}); "
                          "undo each database's transactions separately")
    return records


async def run(journal: Journal, dsn_for: Callable[[str], str], tx_id: int, reviewer: str, *, direction: undo.Direction,
              force: bool, dry_run: bool, since: bool = False, reason: str | None = None,
              act_as: str | None = None) -> UndoOutcome:
    """`act_as`: the role user tables are changed as (the agents' own: an undo must not run code
    an agent planted, such as a CHECK constraint's function, with the proxy's privileges)."""
    records = await _targets(journal, tx_id, since=since, direction=direction)
    try:
        con = await asyncpg.connect(dsn_for(records[0].database), timeout=10)
    except (OSError, asyncpg.PostgresError) as e:
        raise ReviewError(502, f"cannot connect to the upstream database: {e}") from None
    try:
        if since:
            # Only those not undone yet (undo_records knows); newest first.
            records = await _still_committed(con, records)
            if not records:
                raise ReviewError(409, f"every transaction from #{tx_id} on is undone already")
        by_xid = {r.xid: r.id for r in records if r.xid is not None}
        xids = list(by_xid)
        # DDL inverses a model proposed (and the sandbox verified) live in the journal, not the
        # capture log: the rules rebuild every other step from the log.
        proposed = {r.xid: {int(s["seq"]): str(s["sql"]) for s in (r.undo or {}).get("steps", [])
                            if s.get("origin") == "llm"} for r in records if r.xid is not None}
        result = await undo.run(con, xids, direction=direction, force=force, dry_run=dry_run, by=reviewer,
                                act_as=act_as,
                                proposed={x: p for x, p in proposed.items() if p})
    except undo.UndoError as e:
        raise ReviewError(409, str(e)) from None
    except asyncpg.PostgresError as e:
        raise ReviewError(502, f"the upstream refused the {direction}: {e}",
                          sqlstate=getattr(e, "sqlstate", None)) from None
    finally:
        await con.close()
    outcome = UndoOutcome(
        direction=direction, ids=[by_xid[x] for x in xids], applied=result.applied, dry_run=dry_run,
        steps=result.steps, done=result.done, skipped=result.skipped, forced=result.forced,
        conflicts=[_conflict(c, records) for c in result.conflicts],
        overridden=[_conflict(c, records) for c in result.overridden],
        triggers=result.triggers, sql=result.sql, notes=result.notes)
    if result.applied:
        outcome.journal_id = await _journal(journal, records, reviewer, direction, result, reason)
    return outcome


async def _still_committed(con: asyncpg.Connection, records: list[TransactionRecord]) -> list[TransactionRecord]:
    undone = {int(r[0]) for r in await con.fetch(
        "SELECT xid FROM dbproxy.undo_records WHERE xid = ANY($1::bigint[]) AND undone_at IS NOT NULL",
        [r.xid for r in records])}
    return [r for r in records if r.xid not in undone]


def _conflict(c: undo.Conflict, records: list[TransactionRecord]) -> UndoConflict:
    return UndoConflict(transaction=records[0].id if len(records) == 1 else None, table=c.table, step=c.step,
                        expected=c.expected, current=c.current, message=c.message)


async def _journal(journal: Journal, records: list[TransactionRecord], reviewer: str,
                   direction: undo.Direction, result: undo.Result, reason: str | None) -> int | None:
    now = datetime.now(UTC)
    ids = [r.id for r in records]
    for r in records:
        doc = dict(r.undo or {})
        entry_doc = {"action": direction, "by": reviewer, "at": now.isoformat()}
        if reason:
            entry_doc["reason"] = reason
        doc["history"] = [*doc.get("history", []), entry_doc]
        doc["undone"] = direction == "undo"
        await journal.update(r.id, undo=json.dumps(doc))
    summary = (f"-- {direction} of #{', #'.join(map(str, ids))} by {reviewer}: {result.done} changes applied, "
               f"{result.skipped} already in place, {result.forced} forced; triggers: {result.triggers}")
    records_out = [StatementRecord(seq=1, tx_no=1, sql=summary, at=now)]
    tx = FinishedTransaction(f"reviewer:{reviewer}", 0, records[0].database, "undo", None, now, now, "committed", 1,
                             None, json.dumps({"action": direction, "of": ids, **result.to_json(), "sql": []}),
                             decided_by=reviewer)
    try:
        (entry,) = await journal.insert_finished([tx])
        await journal.update(entry, decided_by=reviewer, reason=reason)
    except Exception:
        return None
    for rec in records_out:
        journal.record_statement(entry, tx_no=rec.tx_no, sql=rec.sql, tag=rec.tag, rows=rec.rows,
                                 sqlstate=rec.sqlstate, error=rec.error)
    return int(entry)

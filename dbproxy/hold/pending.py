"""The review queue: held transactions that are waiting for a person, and the decisions on them.

`PendingRegistry` implements `dbproxy.review.ReviewService` for the running proxy. It knows the
live `HeldConnection`s by journal id, writes every step to the journal, expires transactions
that waited too long, and carries out commits and rollbacks on the held upstream connection
itself (the only connection that can commit that transaction). Finished transactions are read
back from the journal.

Commit protocol (so that a crash never loses track of a commit): the journal says `committing`
before the upstream COMMIT is sent and `committed` or `failed` after; a `committing` row found at
start-up is resolved from the upstream's own record of the transaction id (`txid_status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

from dbproxy.backend.upstream import UpstreamTarget
from dbproxy.config import log
from dbproxy.hold.connection import HeldConnection
from dbproxy.hold.gate import PendingView
from dbproxy.hold.lockwatch import LockWatch
from dbproxy.hold.protocol import AgentTx, notice
from dbproxy.hold.reverify import verify_held
from dbproxy.journal.records import StatementRecord, TransactionRecord
from dbproxy.journal.store import BATCH_CHARS, BATCH_RECORDS, LINGER, FinishedTransaction, Journal
from dbproxy.net.endpoint import ConnectionClosed
from dbproxy.policy.engine import write_actions
from dbproxy.policy.service import Policy, PolicyError
from dbproxy.protocol.errors import SQLState
from dbproxy.review import diff
from dbproxy.review.events import EventHub, ReviewEvent
from dbproxy.review.image_diff import image_diff
from dbproxy.review.models import Decision, QueueEntry, TableDiff, TransactionDetail, UndoOutcome, VerifyOutcome
from dbproxy.review.service import DIFF_PAGE, ReviewError
from dbproxy.review.summaries import Summaries
from dbproxy.undo import reverify
from dbproxy.undo import service as undo_service
from dbproxy.undo.commit import TableCache
from dbproxy.undo.commit import decide as undo_decide
from dbproxy.undo.commit import mark as undo_mark
from dbproxy.undo.install import event_triggers_installed, installed_version
from dbproxy.undo.verification import Verification
from inverse.capture_schema import CAPTURE_VERSION
from inverse.images import CAPTURE_FETCH_SQL, CAPTURE_LIMIT

#: How long a reviewer's request waits for the agent's current statement to finish.
LOCK_WAIT = 10.0
DIFF_LOCK_WAIT = 2.0
DIFF_WORK_MEM = "64MB"
JOURNAL_WAIT = 10.0
#: Finished pass-through transactions waiting for the journal beyond this are dropped (and logged).
MAX_FINISHED_BACKLOG = 100_000
#: `/v1/health` reuses a check this many seconds old, and each check waits this long at most.
HEALTH_EVERY = 2.0
HEALTH_TIMEOUT = 3.0


def _finished_batch(finished: list[tuple[FinishedTransaction, list[StatementRecord]]]
                    ) -> list[tuple[FinishedTransaction, list[StatementRecord]]]:
    """The first finished transactions that go into one journal write: at least one, and then no
    more than the journal's batch limits in statements and characters of SQL."""
    records = chars = 0
    for n, (_, stmts) in enumerate(finished):
        records += len(stmts)
        chars += sum(len(r.sql) for r in stmts)
        if n and (records > BATCH_RECORDS or chars > BATCH_CHARS):
            return finished[:n]
    return finished[:]


class PendingRegistry:
    def __init__(self, journal: Journal, *, target_for: Callable[[str], UpstreamTarget],
                 dsn_for: Callable[[str], str], hold_timeout: float, diff_rows: int = DIFF_PAGE,
                 agent_role: str | None = None, database: str = "postgres") -> None:
        self.journal = journal
        self.database = database  # the upstream URL's database, which the health check connects to
        self.target_for = target_for
        self.dsn_for = dsn_for
        self.hold_timeout = hold_timeout
        self.diff_rows = diff_rows
        self.agent_role = agent_role  # undo and redo change user tables as this role, never as the proxy's
        self.tables = TableCache()  # undo mode: catalog facts per database
        self.verification: Verification | None = None  # undo mode: the sandbox gate (None: not configured)
        self.summaries: Summaries | None = None  # a model's summaries for `show` (None: no model configured)
        self.policy: Policy | None = None  # rules and grants (a commit may add a grant)
        self.lock_watch: LockWatch | None = None  # agents' statements stuck behind pending chains fail
        self._capture: dict[str, bool] = {}  # database -> capture installed (positives are kept)
        self.live: dict[int, HeldConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.Task[None] | None = None
        self._finished: list[tuple[FinishedTransaction, list[StatementRecord]]] = []
        self._finished_task: asyncio.Task[None] | None = None
        self._finished_dropped = 0
        #: what happens to transactions under review, for metrics, notifications and live pages
        self.events = EventHub()
        self._health: tuple[float, list[str]] | None = None  # (monotonic time, reasons) of the last check
        self._health_check: asyncio.Task[list[str]] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._expiry = asyncio.get_running_loop().create_task(self._expire_loop())

    async def stop(self) -> None:
        """Shutdown: held transactions are rolled back by the upstream when their connections
        close; the journal says so."""
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        for tx_id, held in list(self.live.items()):
            with contextlib.suppress(Exception):
                await self.journal.update(tx_id, outcome="rolled back", decided_by="restart",
                                          reason="the proxy shut down; the upstream rolled the transaction back")
            held.close()
        self.live.clear()
        if self.lock_watch is not None:
            await self.lock_watch.close()
        if self._finished_task is not None:
            await asyncio.wait({self._finished_task}, timeout=5)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    def _background(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- called by hold sessions ----------------------------------------------------------------

    async def hold(self, held: HeldConnection, *, undo: str | None = None) -> int:
        """A chain's first agent transaction was committed by the agent: it becomes pending.
        `undo`: in undo mode, the inverse and why it was not enough (JSON), for the reviewer."""
        tx_id = await self.journal.start(agent=held.agent, session=held.session_id, database=held.database,
                                         mode=held.mode, backend_pid=held.backend_pid, pending=True,
                                         pending_xid=held.xid, policy=held.policy)
        if undo is not None:
            held.undo = json.loads(undo)
            await self._quiet_update(tx_id, undo=undo)
        held.id = tx_id
        held.held_at = datetime.now(UTC)
        held.held_monotonic = time.monotonic()
        for rec in held.statements:
            self.journal_statement(tx_id, rec)
        self.live[tx_id] = held
        log.event("hold.pending", id=tx_id, agent=held.agent, session=held.session_id, statements=len(held.statements))
        self._announce(held, "statements", tx_id, statements=len(held.statements))
        doc = held.undo or {}
        verification = doc.get("verification")
        self._announce(held, "held", tx_id, statements=len(held.statements),
                       irreversible=list(doc.get("irreversible") or []),
                       verification=verification if isinstance(verification, dict) else None,
                       llm=doc.get("llm") if isinstance(doc.get("llm"), dict) else None)
        return tx_id

    def _announce(self, held: HeldConnection | None, kind: str, tx_id: int | None, *, agent: str = "",
                  database: str = "", mode: str = "", **fields: object) -> None:
        if held is not None:
            agent, database, mode = held.agent, held.database, held.mode
        self.events.publish(ReviewEvent(kind, tx_id, agent, database, mode, fields=fields))  # type: ignore[arg-type]

    async def capture_ready(self, database: str) -> bool:
        """Is `dbproxy install` done in `database`? (Asked once per database until it is.)"""
        if self._capture.get(database):
            return True
        try:
            conn = await asyncpg.connect(self.dsn_for(database), timeout=10)
            try:
                version = await installed_version(conn)
                # An older install lacks what the COMMIT fetch calls: treat it as not installed
                # (undo mode holds) rather than fail agents' commits; `dbproxy install` upgrades.
                ready = version is not None and version >= CAPTURE_VERSION
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError) as e:
            log.event("undo.capture_check_failed", database=database, reason=str(e), level=logging.WARNING)
            ready = False
        self._capture[database] = ready
        return ready

    async def capture_state(self, database: str) -> tuple[bool, bool]:
        """(row capture, DDL capture) installed in `database`: what decides whether an operation
        has an exact inverse there, and so whether it may be granted permanently."""
        if not await self.capture_ready(database):
            return False, False
        try:
            conn = await asyncpg.connect(self.dsn_for(database), timeout=10)
            try:
                return True, await event_triggers_installed(conn)
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError) as e:
            log.event("undo.capture_check_failed", database=database, reason=str(e), level=logging.WARNING)
            return True, False

    def journal_finished(self, held: HeldConnection, records: list[StatementRecord], outcome: str, *,
                         xid: int | None = None, undo: str | None = None, decided_by: str = "agent") -> None:
        """A chain that was never held (the agent rolled it back, a rule denied it, undo mode or an
        allow rule committed it with its inverse) is journaled too, with what decided it."""
        self.journal_passthrough(agent=held.agent, session=held.session_id, database=held.database,
                                 backend_pid=held.backend_pid, records=records, outcome=outcome, mode=held.mode,
                                 xid=xid, undo=undo, decided_by=decided_by, policy=held.policy)

    def held_by(self, agent: str) -> list[PendingView]:
        """The agent's transactions waiting for a reviewer (for `SHOW dbproxy.status`)."""
        return [PendingView(tx_id, h.held_at, len(h.statements), h.policy)
                for tx_id, h in sorted(self.live.items()) if h.agent == agent]

    def journal_passthrough(self, *, agent: str, session: int, database: str, backend_pid: int,
                            records: list[StatementRecord], outcome: str, mode: str = "passthrough",
                            xid: int | None = None, undo: str | None = None, decided_by: str = "agent",
                            policy: str | None = None) -> None:
        """An agent transaction that wrote has ended: record it (after the fact, in batches, so
        that a busy trusted agent costs the journal one round trip per batch)."""
        if not records:
            return
        if len(self._finished) >= MAX_FINISHED_BACKLOG:
            self._finished_dropped += 1
            return
        tx = FinishedTransaction(agent, session, database, mode, backend_pid, records[0].at, records[-1].at,
                                 outcome, max(r.tx_no for r in records), xid, undo, decided_by, policy)
        self._finished.append((tx, records))
        self._announce(None, "statements", None, agent=agent, database=database, mode=mode, statements=len(records))
        if undo is not None and outcome == "committed":
            self._announce(None, "committed", None, agent=agent, database=database, mode=mode, undo=undo)
        if self._finished_task is None or self._finished_task.done():
            self._finished_task = asyncio.get_running_loop().create_task(self._write_finished())

    async def _write_finished(self) -> None:
        await asyncio.sleep(LINGER)  # gather a batch
        while self._finished:
            batch = _finished_batch(self._finished)
            del self._finished[:len(batch)]
            redacted = [(tx, [rec.model_copy(update={"sql": log.redact_sql(rec.sql)}) for rec in records])
                        for tx, records in batch]
            try:
                await self.journal.insert_finished_with_statements(redacted)
                continue
            except Exception as e:
                # Something in the batch the database refuses (or the database is away): the
                # statement-by-statement path keeps what it can and counts what it drops.
                log.event("journal.passthrough_batch_refused", transactions=len(batch), reason=str(e),
                          level=logging.WARNING)
            try:
                ids = await self.journal.insert_finished([tx for tx, _ in batch])
            except Exception as e:
                log.event("journal.passthrough_failed", transactions=len(batch), reason=str(e), level=logging.ERROR)
                continue
            for tx_id, (_, records) in zip(ids, batch, strict=True):
                for rec in records:
                    self.journal_statement(tx_id, rec)
        if self._finished_dropped:
            log.event("journal.passthrough_dropped", transactions=self._finished_dropped, level=logging.ERROR)
            self._finished_dropped = 0

    def journal_statement(self, tx_id: int, rec: StatementRecord) -> None:
        held = self.live.get(tx_id)
        if held is not None:
            self._announce(held, "statements", tx_id, statements=1)
        # Credentials in statements never reach the journal (nor `show`, which reads it back).
        self.journal.record_statement(tx_id, tx_no=rec.tx_no, sql=log.redact_sql(rec.sql), tag=rec.tag,
                                      rows=rec.rows, sqlstate=rec.sqlstate, error=rec.error, params=rec.params)

    def chain_grew(self, held: HeldConnection) -> None:
        if held.id is not None:
            self._background(self._quiet_update(held.id, agent_transactions=held.state.held))

    def agent_left(self, held: HeldConnection) -> None:
        log.event("hold.agent_left", id=held.id, agent=held.agent)

    def upstream_lost(self, held: HeldConnection) -> None:
        if held.id is not None and self.live.pop(held.id, None) is not None:
            tx_id = held.id
            log.event("hold.upstream_lost", id=tx_id, level=logging.WARNING)
            self._announce(held, "decided", tx_id, outcome="failed", decided_by="upstream")
            self._background(self._quiet_update(
                tx_id, outcome="failed", decided_by="upstream",
                reason="the upstream connection was lost; PostgreSQL rolled the transaction back"))
            held.reset_chain()

    async def chain_broken(self, held: HeldConnection, reason: str) -> None:
        tx_id = held.id
        with contextlib.suppress(ConnectionClosed):
            await held.inject("ROLLBACK")
        if tx_id is not None:
            self.live.pop(tx_id, None)
            await self._quiet_update(tx_id, outcome="failed", decided_by="proxy", reason=reason)
            self._announce(held, "decided", tx_id, outcome="failed", decided_by="proxy", reason=reason)
        held.reset_chain()

    async def _quiet_update(self, tx_id: int, **fields: object) -> None:
        try:
            await self.journal.update(tx_id, **fields)  # type: ignore[arg-type]
        except Exception as e:
            log.event("journal.update_failed", id=tx_id, reason=str(e), level=logging.ERROR)

    async def restart_notices(self, agent: str) -> list[TransactionRecord]:
        try:
            return await self.journal.restart_notices(agent)
        except Exception as e:
            log.event("journal.notices_failed", agent=agent, reason=str(e), level=logging.WARNING)
            return []

    # -- ReviewService ----------------------------------------------------------------------------

    async def pending(self) -> list[TransactionRecord]:
        return [self._record(h) for _, h in sorted(self.live.items())]

    async def queue(self) -> list[QueueEntry]:
        entries = [QueueEntry(transaction=self._record(h), rows=sum(s.rows or 0 for s in h.statements
                                                                      if s.sqlstate is None and s.tag != "SELECT"
                                                                      and not (s.tag or "").startswith("SELECT ")),
                              last_activity=h.statements[-1].at if h.statements else h.held_at)
                   for _, h in sorted(self.live.items())]
        by_db: dict[str, list[QueueEntry]] = {}
        for e in entries:
            by_db.setdefault(e.transaction.database, []).append(e)
        for database, group in by_db.items():
            pids = [e.transaction.backend_pid for e in group if e.transaction.backend_pid is not None]
            try:
                conn = await asyncpg.connect(self.dsn_for(database), timeout=10)
            except Exception as e:
                log.event("review.queue_facts_failed", database=database, reason=str(e), level=logging.WARNING)
                continue
            try:
                tables, blocking = await diff.queue_facts(conn, pids)
            except Exception as e:
                log.event("review.queue_facts_failed", database=database, reason=str(e), level=logging.WARNING)
                continue
            finally:
                await conn.close()
            for e in group:
                pid = e.transaction.backend_pid
                e.tables = tables.get(pid, []) if pid is not None else []
                e.blocking = blocking.get(pid, 0) if pid is not None else 0
        return entries

    async def health(self) -> list[str]:
        """The upstream and the journal answer? Checked at most every HEALTH_EVERY seconds (the
        endpoint needs no token, so asking often must not mean connecting often), one check at a
        time."""
        now = time.monotonic()
        if self._health is not None and now - self._health[0] < HEALTH_EVERY:
            return self._health[1]
        if self._health_check is None or self._health_check.done():
            self._health_check = asyncio.get_running_loop().create_task(self._check_health())
        reasons = await asyncio.shield(self._health_check)
        self._health = (time.monotonic(), reasons)
        return reasons

    async def _check_health(self) -> list[str]:
        async def upstream() -> str | None:
            display = self.target_for(self.database).display
            try:
                conn = await asyncpg.connect(self.dsn_for(self.database), timeout=HEALTH_TIMEOUT)
            except Exception as e:
                what = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
                return f"the upstream at {display} is unreachable: {what}"
            await conn.close()
            return None

        found = await asyncio.gather(upstream(), self.journal.ping(HEALTH_TIMEOUT))
        return [r for r in found if r]

    async def log(self, *, outcome: str | None = None, agent: str | None = None, limit: int = 100,
                  before_id: int | None = None, table: str | None = None, search: str | None = None,
                  since: datetime | None = None, until: datetime | None = None) -> list[TransactionRecord]:
        try:
            records = await self.journal.list(outcome=outcome, agent=agent, limit=limit, before_id=before_id,
                                              table=table, search=search, since=since, until=until)
        except Exception as e:
            raise ReviewError(503, f"the journal is unavailable: {e}") from None
        # Live facts (statement counts) are fresher in memory than in the journal.
        return [self._record(self.live[r.id]) if r.id in self.live else r for r in records]

    async def show(self, tx_id: int, *, offset: int = 0, limit: int | None = None,
                   table: str | None = None, summary_wait: float = 0.0) -> TransactionDetail:
        detail = await self._detail(tx_id, offset=offset, limit=limit, table=table)
        if self.summaries is not None:  # no model configured: nothing asked, nothing awaited
            detail.summary = await self.summaries.for_detail(detail, wait=summary_wait)
        return detail

    async def _detail(self, tx_id: int, *, offset: int, limit: int | None, table: str | None) -> TransactionDetail:
        limit = self.diff_rows if limit is None else limit
        held = self.live.get(tx_id)
        if held is None:
            found = await self.journal_get(tx_id)
            record, statements = found
            detail = TransactionDetail(transaction=record, statements=statements)
            if record.outcome == "committed" and record.xid is not None \
                    and (record.undo or {}).get("direction"):
                detail.diff, detail.diff_note = await self._image_diff(record, offset=offset, limit=limit,
                                                                        table=table)
            else:
                detail.diff_note = ("the transaction has ended; row-level diffs exist only while it is held, "
                                    "and afterwards for transactions committed with their inverse")
            return detail
        detail = TransactionDetail(
            transaction=self._record(held),
            statements=[r.model_copy(update={"sql": log.redact_sql(r.sql)}) for r in held.statements],
            agent_connected=held.session is not None,
            agent_in_transaction=held.state.agent_tx is not AgentTx.NONE,
            expires_at=held.held_at + timedelta(seconds=self.hold_timeout) if held.held_at else None,
        )
        try:
            # row_security off: an agent's policy function must never run as the proxy (fail instead).
            conn = await asyncpg.connect(self.dsn_for(held.database), timeout=10,
                                         server_settings={"row_security": "off"})
        except Exception as e:
            detail.diff_note = f"could not connect to compute the diff: {e}"
            return detail
        try:
            detail.blocking = await diff.blocked_by(conn, held.backend_pid)
            detail.diff, detail.diff_note = await self._diff(held, conn, offset=offset, limit=limit, table=table)
        finally:
            await conn.close()
        return detail

    async def _image_diff(self, record: TransactionRecord, *, offset: int, limit: int,
                          table: str | None) -> tuple[list[TableDiff] | None, str | None]:
        """A committed undo-mode transaction's diff, from the row images captured at its commit."""
        assert record.xid is not None
        notes = ["computed from the row images captured at its commit"]
        if (record.undo or {}).get("undone"):
            notes.append("it has been undone since, so these changes are no longer in the database")
        try:
            conn = await asyncpg.connect(self.dsn_for(record.database), timeout=10)
        except Exception as e:
            return None, f"could not connect to compute the diff: {e}"
        try:
            tables = await image_diff(conn, record.xid, offset=offset, limit=limit, table=table, notes=notes)
        except asyncpg.UndefinedTableError:
            return None, "the captured row images are gone (`dbproxy uninstall` removed them)"
        except Exception as e:
            return None, f"could not compute the diff: {e}"
        finally:
            await conn.close()
        return tables, "; ".join(notes)

    async def _diff(self, held: HeldConnection, conn: asyncpg.Connection, *, offset: int = 0,
                    limit: int | None = None, table: str | None = None) -> tuple[list[TableDiff] | None, str | None]:
        try:
            await asyncio.wait_for(held.lock.acquire(), DIFF_LOCK_WAIT)
        except TimeoutError:
            return None, "the agent is running a statement right now; ask again in a moment"
        try:
            if held.id not in self.live:
                return None, "the transaction ended while the diff was being computed"
            if held.state.agent_tx is not AgentTx.NONE:
                return None, ("the agent is inside a transaction; the diff is computed between its "
                              "transactions")
            # The diff hashes every changed row: room for that in memory (undone with the savepoint).
            r = await held.inject("SAVEPOINT dbproxy_review", f"SET LOCAL work_mem = '{DIFF_WORK_MEM}'")
            if r.error is not None:
                return None, f"could not compute the diff: {r.error.message}"
            notes: list[str] = []
            try:
                tables = await diff.compute_diff(_HeldQuery(held), conn, held.backend_pid,
                                                 limit=self.diff_rows if limit is None else limit, offset=offset,
                                                 table=table, notes=notes)
                return tables, " ".join(notes) or None
            except Exception as e:
                return None, f"could not compute the diff: {e}"
            finally:
                await held.inject("ROLLBACK TO SAVEPOINT dbproxy_review", "RELEASE SAVEPOINT dbproxy_review")
        finally:
            held.lock.release()

    async def commit(self, tx_id: int, reviewer: str, *, reason: str | None = None,
                     grant: Literal["session", "permanent"] | None = None) -> Decision:
        if grant is not None:
            return await self._commit_granting(tx_id, reviewer, reason=reason, scope=grant)
        held = await self._live_or_explain(tx_id, "commit")
        await self._acquire(held, tx_id)
        try:
            if self.live.get(tx_id) is not held:
                raise ReviewError(409, f"#{tx_id} was decided while this request waited")
            if held.state.agent_tx is not AgentTx.NONE:
                raise ReviewError(409, f"the agent is inside a transaction on #{tx_id}; commit when it ends "
                                  "(or roll back now)")
            try:
                # The journal must hold the statements and say "committing" before the COMMIT.
                await asyncio.wait_for(self.journal.flush(), JOURNAL_WAIT)
                await self.journal.update(tx_id, outcome="committing", decided_by=reviewer, reason=reason)
            except Exception as e:
                raise ReviewError(503, f"the journal is unavailable, so #{tx_id} was not committed: {e}") from None
            undo_doc = await self._undo_marker(held, tx_id)
            try:
                r = await held.inject("COMMIT")
            except ConnectionClosed:
                outcome = await self._resolve_lost(held)
                self.live.pop(tx_id, None)
                held.reset_chain()
                if outcome == "committed":
                    await self._quiet_update(tx_id, outcome="committed", decided_by=reviewer,
                                             reason="the upstream connection closed right after COMMIT; "
                                             "the server reports the transaction committed")
                    self._announce(held, "decided", tx_id, outcome="committed", decided_by=reviewer)
                    return Decision(id=tx_id, outcome="committed", decided_by=reviewer)
                reason = ("the upstream connection was lost during COMMIT; the server reports the transaction "
                          f"{outcome or 'unknown'}")
                await self._quiet_update(tx_id, outcome="failed", decided_by=reviewer, reason=reason)
                self._announce(held, "decided", tx_id, outcome="failed", decided_by=reviewer, reason=reason)
                raise ReviewError(502, f"#{tx_id} was not committed: {reason}",
                                  sqlstate=SQLState.CONNECTION_FAILURE) from None
            tag = r.tags[0] if r.tags else ""
            held_count = held.state.held
            self.live.pop(tx_id, None)
            held.reset_chain()
            if r.error is not None or tag != "COMMIT":
                why = r.error.message if r.error is not None else f"the server answered {tag or 'nothing'}"
                sqlstate = r.error.sqlstate if r.error is not None else None
                failure = f"COMMIT failed: {why}" + (f" (SQLSTATE {sqlstate})" if sqlstate else "")
                await self._quiet_update(tx_id, outcome="failed", decided_by=reviewer, reason=failure)
                self._announce(held, "decided", tx_id, outcome="failed", decided_by=reviewer, reason=failure)
                self._tell_agent(held, f"dbproxy: held transaction #{tx_id} could not be committed: {why}")
                self._release_if_detached(held)
                raise ReviewError(502, f"#{tx_id} was not committed: {why}", sqlstate=sqlstate)
            await self._quiet_update(tx_id, outcome="committed", decided_by=reviewer, agent_transactions=held_count,
                                     reason=reason, **({"undo": undo_doc} if undo_doc is not None else {}))
            log.event("hold.committed", id=tx_id, reviewer=reviewer)
            self._announce(held, "decided", tx_id, outcome="committed", decided_by=reviewer, reason=reason)
            self._tell_agent(held, f"dbproxy: held transaction #{tx_id} was committed by {reviewer}"
                             + (f": {reason}" if reason else ""))
            self._release_if_detached(held)
            return Decision(id=tx_id, outcome="committed", decided_by=reviewer, reason=reason)
        finally:
            held.lock.release()

    async def _undo_marker(self, held: HeldConnection, tx_id: int) -> str | None:
        """Hold mode with capture: right before a reviewer's COMMIT, the inverse of everything the
        chain captured, and the undo marker written into it (so it commits with it): the
        transaction is then undoable like an undo-mode one. Returns its journal document (None:
        nothing captured). Never fails the commit: a problem is journaled instead."""
        if not held.state.ddl_capture or held.xid is None:
            return None
        try:
            r = await held.inject(CAPTURE_FETCH_SQL)
            if r.error is not None:
                return json.dumps({"irreversible": [f"the captured changes could not be read: {r.error.message}"]})
            decision = await undo_decide(held, held.xid, r.rows[0] if r.rows else [], self.tables, CAPTURE_LIMIT)
            if not decision.reversible:
                return decision.journal_json()
            sql, params = undo_mark(held.agent, held.session_id, decision)
            r = await held.inject("SAVEPOINT dbproxy_mark", (sql, params), "RELEASE SAVEPOINT dbproxy_mark")
            if r.error is not None:
                await held.inject("ROLLBACK TO SAVEPOINT dbproxy_mark", "RELEASE SAVEPOINT dbproxy_mark")
                return json.dumps({"irreversible": [f"the undo record could not be written: {r.error.message}"]})
            doc = json.loads(decision.journal_json())
            earlier = (held.undo or {}).get("verification")  # `dbproxy verify ID` while it was held
            doc["verification"] = earlier if isinstance(earlier, dict) else (
                "not done: committed by a reviewer (`dbproxy verify ID` proves its inverse)")
            return json.dumps(doc)
        except ConnectionClosed:
            raise
        except Exception as e:  # a bug here must not cost the reviewer's commit
            log.event("hold.undo_marker_failed", id=tx_id, reason=repr(e), level=logging.ERROR, exc_info=True)
            return json.dumps({"irreversible": [f"internal error while building the inverse: {e!r}"]})

    async def _commit_granting(self, tx_id: int, reviewer: str, *, reason: str | None,
                               scope: Literal["session", "permanent"]) -> Decision:
        """Commit, and grant the agent what the transaction did (its operation classes on the
        objects it wrote) for its session or permanently. The grant is checked first: one that
        would be refused leaves the transaction pending."""
        held = await self._live_or_explain(tx_id, "commit")
        if self.policy is None:
            raise ReviewError(409, "this proxy keeps no grants (its journal is unavailable)")
        acts = write_actions(r.sql for r in held.statements if r.sqlstate is None)
        if not acts:
            raise ReviewError(409, f"#{tx_id} wrote nothing a grant could name")
        ops = sorted({a.op for a in acts})
        objects = sorted({a.object or "*" for a in acts})
        agent, session, database = held.agent, held.session_id, held.database
        try:
            await self.policy.check_grant(agent=agent, ops=ops, scope=scope, reviewer=reviewer, session=session,
                                          database=database)
        except PolicyError as e:
            raise ReviewError(e.status, f"#{tx_id} was not committed: {e.message}") from None
        decision = await self.commit(tx_id, reviewer, reason=reason)
        try:
            g = await self.policy.grant(agent=agent, ops=ops, objects=objects, scope=scope, reviewer=reviewer,
                                        session=session, reason=reason, transaction=tx_id, database=database)
        except PolicyError as e:
            raise ReviewError(e.status, f"#{tx_id} was committed, but the grant was refused: {e.message}") from None
        return decision.model_copy(update={"grant": g.id})

    async def rollback(self, tx_id: int, reviewer: str, *, reason: str | None = None) -> Decision:
        held = await self._live_or_explain(tx_id, "roll back")
        await self._end(held, tx_id, outcome="rolled back", decided_by=reviewer, reason=reason,
                        message=f"held transaction #{tx_id} was rolled back by {reviewer}"
                        + (f": {reason}" if reason else ""))
        return Decision(id=tx_id, outcome="rolled back", decided_by=reviewer, reason=reason)

    # -- helpers ------------------------------------------------------------------------------------

    async def _end(self, held: HeldConnection, tx_id: int, *, outcome: str, decided_by: str, message: str,
                   reason: str | None = None) -> None:
        """Roll a held transaction back, even while the agent is busy or inside a transaction."""
        if held.router is not None:
            with contextlib.suppress(Exception):
                await held.cancel()
        await self._acquire(held, tx_id)
        try:
            if self.live.get(tx_id) is not held:
                raise ReviewError(409, f"#{tx_id} was decided while this request waited")
            mid_tx = held.state.agent_tx is not AgentTx.NONE
            try:
                await held.inject("ROLLBACK")
            except ConnectionClosed:
                pass  # the server rolls back a transaction whose connection is gone
            self.live.pop(tx_id, None)
            held.reset_chain()
            await self._quiet_update(tx_id, outcome=outcome, decided_by=decided_by, reason=reason)
            log.event("hold.ended", id=tx_id, outcome=outcome, decided_by=decided_by)
            self._announce(held, "decided", tx_id, outcome=outcome, decided_by=decided_by, reason=reason)
            if mid_tx and held.session is not None:
                # The agent's open transaction is gone: end its session rather than let it
                # believe it is still inside it.
                held.session.terminate(SQLState.ADMIN_SHUTDOWN, f"terminating connection: {message}")
            else:
                self._tell_agent(held, f"dbproxy: {message}")
            self._release_if_detached(held)
        finally:
            held.lock.release()

    async def _acquire(self, held: HeldConnection, tx_id: int) -> None:
        try:
            await asyncio.wait_for(held.lock.acquire(), LOCK_WAIT)
        except TimeoutError:
            raise ReviewError(409, f"the agent has been running a statement on #{tx_id} for over "
                              f"{LOCK_WAIT:.0f} s; try again") from None

    async def _live_or_explain(self, tx_id: int, what: str) -> HeldConnection:
        held = self.live.get(tx_id)
        if held is not None:
            return held
        record, _ = await self.journal_get(tx_id)
        raise ReviewError(409, f"cannot {what} #{tx_id}: it is {record.outcome}"
                          + (f" ({record.decided_by})" if record.decided_by else ""))

    async def undo(self, tx_id: int, reviewer: str, *, force: bool = False, dry_run: bool = False,
                   since: bool = False, reason: str | None = None) -> UndoOutcome:
        outcome = await undo_service.run(self.journal, self.dsn_for, tx_id, reviewer, direction="undo", force=force,
                                         dry_run=dry_run, since=since, reason=reason, act_as=self.agent_role)
        self._announce_undo(tx_id, reviewer, outcome)
        return outcome

    async def redo(self, tx_id: int, reviewer: str, *, force: bool = False, dry_run: bool = False,
                   reason: str | None = None) -> UndoOutcome:
        outcome = await undo_service.run(self.journal, self.dsn_for, tx_id, reviewer, direction="redo", force=force,
                                         dry_run=dry_run, reason=reason, act_as=self.agent_role)
        self._announce_undo(tx_id, reviewer, outcome)
        return outcome

    def _announce_undo(self, tx_id: int, reviewer: str, outcome: UndoOutcome) -> None:
        self._announce(None, outcome.direction, tx_id, agent=f"reviewer:{reviewer}", mode="undo", reviewer=reviewer,
                       applied=outcome.applied, dry_run=outcome.dry_run, ids=outcome.ids,
                       conflicts=len(outcome.conflicts), journal_id=outcome.journal_id,
                       first_conflict=outcome.conflicts[0].message if outcome.conflicts else None)

    async def verify(self, tx_id: int) -> VerifyOutcome:
        """`dbproxy verify ID`: prove the inverse of a held or committed undo-mode transaction in the
        sandbox again; the verdict replaces `verification` in its undo document."""
        verification = self.verification
        if verification is None or not verification.enabled:
            raise ReviewError(409, "sandbox verification is off (setting sandbox = off)")
        held = self.live.get(tx_id)
        if held is not None:
            verdict = await verify_held(held, tx_id, verification, self.tables)
            doc = dict(held.undo or {})
            held.undo = doc
        else:
            record, statements = await self.journal_get(tx_id)
            doc = dict(record.undo or {})
            verdict = await reverify.committed(record, statements, self.dsn_for, verification)
        doc["verification"] = verdict.to_json()
        try:
            await self.journal.update(tx_id, undo=json.dumps(doc))
        except Exception as e:
            raise ReviewError(503, f"verified, but the journal is unavailable to record it: {e}") from None
        if held is not None:
            self._announce(held, "verified", tx_id, verification=verdict.to_json())
        else:
            self._announce(None, "verified", tx_id, agent=record.agent, database=record.database, mode=record.mode,
                           verification=verdict.to_json())
        return VerifyOutcome.model_validate({"id": tx_id, **verdict.to_json()})

    async def journal_get(self, tx_id: int) -> tuple[TransactionRecord, list[StatementRecord]]:
        try:
            found = await self.journal.get(tx_id)
        except Exception as e:
            raise ReviewError(503, f"the journal is unavailable: {e}") from None
        if found is None:
            raise ReviewError(404, f"no transaction #{tx_id}")
        return found

    async def _resolve_lost(self, held: HeldConnection) -> str | None:
        if held.xid is None:
            return None
        try:
            return await self.xact_status(held.database, held.xid)
        except Exception:
            return None

    async def xact_status(self, database: str, xid: int) -> str | None:
        conn = await asyncpg.connect(self.dsn_for(database), timeout=10)
        try:
            return await conn.fetchval("SELECT txid_status($1)", xid)
        finally:
            await conn.close()

    def _tell_agent(self, held: HeldConnection, message: str) -> None:
        if held.sink is not None and held.session is not None:
            held.sink(notice(message))

    def _release_if_detached(self, held: HeldConnection) -> None:
        if held.session is None:
            held.close()

    def _record(self, held: HeldConnection) -> TransactionRecord:
        assert held.id is not None
        now = datetime.now(UTC)
        return TransactionRecord(
            id=held.id, agent=held.agent, session=held.session_id, database=held.database,
            mode=held.mode,  # type: ignore[arg-type]
            backend_pid=held.backend_pid, xid=held.xid, started_at=held.started_at or now, held_at=held.held_at,
            outcome="pending", statements=len(held.statements), agent_transactions=held.state.held,
            undo=held.undo, policy=held.policy)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.hold_timeout / 4))
            now = time.monotonic()
            for tx_id, held in list(self.live.items()):
                if now - held.held_monotonic >= self.hold_timeout:
                    try:
                        await self._end(held, tx_id, outcome="expired", decided_by="expiry",
                                        message=f"held transaction #{tx_id} expired after {self.hold_timeout:g} s "
                                        "without a decision and was rolled back",
                                        reason=f"no decision within {self.hold_timeout:g} s")
                    except ReviewError:
                        pass
                    except Exception:
                        log.event("hold.expiry_failed", id=tx_id, level=logging.ERROR, exc_info=True)


class _HeldQuery:
    """`diff.HeldQuery` over a held connection (the caller holds its lock)."""

    def __init__(self, held: HeldConnection) -> None:
        self.held = held

    async def query(self, sql: str, params: object = ()) -> list[tuple[str | None, ...]]:
        r = await self.held.inject((sql, list(params)))  # type: ignore[call-overload]
        if r.error is not None:
            raise RuntimeError(r.error.message)
        return r.rows[0] if r.rows else []

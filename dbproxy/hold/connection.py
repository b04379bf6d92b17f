"""Hold mode's upstream side: one upstream connection and the chain of agent transactions held on it.

`HeldConnection` owns one upstream connection, its `HoldState` and the chain being built on it
(statements, journal id). It outlives the agent's session when the chain is pending, so a
reviewer can still commit or roll it back. One cycle at a time runs on it (`lock`): the agent's
cycles (`dbproxy.hold.session`) and the reviewer's actions (`dbproxy.hold.pending`) take turns,
never interleave.

It reports to the review queue through `ReviewQueue`, a Protocol defined here and implemented by
`dbproxy.hold.pending.PendingRegistry`, and to the agent's session, while one is attached,
through `Attached` (implemented by `dbproxy.hold.session.HoldSession`): neither module is
imported here, so the three can be read, and tested, from the bottom up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from dbproxy.backend.upstream import UpstreamTarget, send_cancel
from dbproxy.config import log
from dbproxy.hold.protocol import (
    IDENTITY_COUNT_SQL,
    AgentTx,
    HoldState,
    Plan,
    Router,
    StatementResult,
    injected_script,
    synthetic_ready,
)
from dbproxy.journal.params import journal_params
from dbproxy.journal.passlog import DISCONNECTED
from dbproxy.journal.records import StatementRecord
from dbproxy.journal.tags import tag_rows, wrote_by_tag
from dbproxy.net.endpoint import ConnectionClosed, Endpoint
from dbproxy.protocol.errors import ProtocolViolation
from dbproxy.protocol.framing import BACKEND_TYPES, PG_MAX_MESSAGE, Frame, FrameScanner, scan_whole

if TYPE_CHECKING:
    from dbproxy.undo.commit import TableCache
    from dbproxy.undo.verification import Verification

#: Upstream frames decoded in hold mode; DataRow and CopyData stream through as bytes.
_UPSTREAM_DECODE = frozenset(BACKEND_TYPES - {ord("D"), ord("d")})
_UPSTREAM_DECODE_ROWS = frozenset(BACKEND_TYPES - {ord("d")})
_TX_TAGS = frozenset({"BEGIN", "COMMIT", "ROLLBACK"})
_READY_SET = frozenset({ord("Z")})


class LockWatcher(Protocol):
    """Looks at a client cycle that runs long (`dbproxy.hold.lockwatch.LockWatch`)."""

    def arm(self, held: HeldConnection, router: Router) -> asyncio.TimerHandle: ...


class ReviewQueue(Protocol):
    """What a held connection and its session need of the review queue."""

    verification: Verification | None  # undo mode: the sandbox gate (None: not configured)
    tables: TableCache  # undo mode: catalog facts per database
    lock_watch: LockWatcher | None  # cycles stuck behind a pending chain's locks fail (55P03)

    def target_for(self, database: str) -> UpstreamTarget: ...
    def upstream_lost(self, held: HeldConnection) -> None: ...
    def journal_statement(self, tx_id: int, rec: StatementRecord) -> None: ...
    def journal_finished(self, held: HeldConnection, records: list[StatementRecord], outcome: str, *,
                         xid: int | None = None, undo: str | None = None, decided_by: str = "agent") -> None: ...
    async def hold(self, held: HeldConnection, *, undo: str | None = None) -> int: ...
    def chain_grew(self, held: HeldConnection) -> None: ...
    async def chain_broken(self, held: HeldConnection, reason: str) -> None: ...
    def agent_left(self, held: HeldConnection) -> None: ...


class Attached(Protocol):
    """The agent's session while it is attached to its held connection."""

    def copy_in_started(self) -> None: ...
    def terminate(self, sqlstate: str, message: str) -> None: ...


class HeldConnection:
    """An upstream connection in hold mode and the chain on it (see module docstring)."""

    def __init__(self, registry: ReviewQueue, endpoint: Endpoint, scanner: FrameScanner, *, agent: str,
                 session_id: int, database: str, mode: str, backend_pid: int, upstream_secret: bytes,
                 login_role: str = "", run_as: str = "") -> None:
        self.registry = registry
        self.endpoint = endpoint
        self.scanner = scanner
        self.agent = agent
        self.session_id = session_id
        self.database = database
        self.mode = mode
        self.backend_pid = backend_pid
        self.upstream_secret = upstream_secret
        # The guard checks the session keeps the identity it logged in with (`login_role`) and
        # acts as the agents' role (`run_as`).
        self.state = HoldState(read_only_agent=mode == "read-only",
                               login_role=login_role or registry.target_for(database).user, run_as=run_as)
        self.lock = asyncio.Lock()
        self.sink: Callable[[bytes], None] | None = None  # the agent's client, while attached
        self.session: Attached | None = None
        self.router: Router | None = None
        self.tail = b""  # the client's last answer of a cycle, not sent yet (see `run`)
        self._hold_tail = False
        self._waiter: asyncio.Future[None] | None = None
        self._fast_done: Callable[[], None] | None = None  # a read-only fast cycle is running (`run_fast`)
        self.fast_cycles = 0  # cycles that took the read-only fast path
        self.lock_timer: asyncio.TimerHandle | None = None  # see LockWatcher
        self.lost = False
        # The chain: journal id once held, statements so far, timestamps.
        self.id: int | None = None
        self.xid: int | None = None
        self.statements: list[StatementRecord] = []
        self.undo: dict[str, object] | None = None  # undo mode: the inverse and why it was not enough
        self.policy: str | None = None  # which rule or grant decided the chain at the agent's COMMIT
        self.started_at: datetime | None = None
        self.held_at: datetime | None = None
        self.held_monotonic = 0.0

    # -- upstream I/O -----------------------------------------------------------------------

    def attach(self) -> None:
        self.scanner.set_decode(_UPSTREAM_DECODE)
        self.scanner.set_valid(None)
        self.endpoint.relay_to(self._from_upstream, self._upstream_lost)

    def _from_upstream(self, data: bytes) -> None:
        if self._fast_done is not None:
            self._fast_answer(data)
            return
        try:
            items = self.scanner.feed(data)
        except ProtocolViolation as e:
            log.event("hold.upstream_protocol_violation", session=self.session_id, reason=str(e), level=logging.ERROR)
            self.endpoint.abort()
            return
        router = self.router
        if router is None:
            # Between cycles: notifications, ParameterStatus, notices go straight to the agent.
            if self.sink is not None:
                out = b"".join(i.raw if isinstance(i, Frame) else i for i in items)
                if out:
                    self.sink(out)
            return
        was_copying = router.copy_in
        out = router.feed(items)
        if out and self.sink is not None:
            if router.done and self._hold_tail:
                self.tail += out  # sent with what the session adds (ReadyForQuery): one write
            else:
                self.sink(out)
        if router.copy_in and not was_copying and self.session is not None:
            self.session.copy_in_started()
        if router.done and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _upstream_lost(self, ep: Endpoint) -> None:
        self.lost = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionClosed("the upstream server closed the connection"))
        self.registry.upstream_lost(self)
        if self._fast_done is not None:
            self._end_fast()

    # -- the read-only fast path (`dbproxy.hold.fastpath`) ----------------------------------------

    @property
    def fast_busy(self) -> bool:
        """A read-only fast cycle is running: nothing else may start on the connection."""
        return self._fast_done is not None

    def run_fast(self, data: bytes, on_done: Callable[[], None]) -> None:
        """Send a cycle that passes through untouched (`dbproxy.hold.fastpath`) without waiting for
        it: its answers, ReadyForQuery included, go straight to the agent, then `on_done` runs.
        The caller made sure the connection is idle (no cycle, lock free, no chain)."""
        router = Router(Plan(b"", [], passthrough=True), self.state)
        self.router = router
        self._fast_done = on_done
        self.fast_cycles += 1
        self.endpoint.write(data)
        watch = self.registry.lock_watch
        if watch is not None:
            self.lock_timer = watch.arm(self, router)  # a read stuck behind a held lock fails too

    def _fast_answer(self, data: bytes) -> None:
        router = self.router
        assert router is not None
        scanner = self.scanner
        if scanner.at_boundary and router.lock_error is None:
            # The common case, as in the pass-through relay: whole frames, at most one
            # ReadyForQuery and only at the end: forwarded as they are, in one write.
            whole = scan_whole(data, BACKEND_TYPES, _READY_SET, PG_MAX_MESSAGE)
            if whole is not None and (whole[0] == 0 or (whole[0] == 1 and whole[1] == len(data) - 6)):
                if self.sink is not None:
                    self.sink(data)
                if whole[0]:
                    router.ready_status = chr(data[-1])
                    router.done = True
                    self._end_fast()
                return
        try:
            items = scanner.feed(data)
        except ProtocolViolation as e:
            log.event("hold.upstream_protocol_violation", session=self.session_id, reason=str(e), level=logging.ERROR)
            self.endpoint.abort()
            return
        out = router.feed(items)
        if router.done:
            out += synthetic_ready(router.ready_status or "I")  # the router keeps the server's for itself
        if out and self.sink is not None:
            self.sink(out)
        if router.done:
            self._end_fast()

    def _end_fast(self) -> None:
        if self.lock_timer is not None:
            self.lock_timer.cancel()
            self.lock_timer = None
        self.router = None
        done, self._fast_done = self._fast_done, None
        if done is not None:
            done()

    async def run(self, plan: Plan, *, to_client: bool = True, hold_tail: bool = False) -> Router:
        """Send a plan and wait for its last answer. The caller holds `lock`. `hold_tail`: keep the
        client's last answer bytes in `tail` for the caller to send together with its own (each
        write is a system call, and they cost more than the rest of a cycle)."""
        if self.lost:
            raise ConnectionClosed("the upstream connection is gone")
        router = Router(plan, self.state)
        self._hold_tail = hold_tail
        wants_rows = any(s.action.name == "CAPTURE" for s in plan.steps)
        self.scanner.set_decode(_UPSTREAM_DECODE_ROWS if wants_rows else _UPSTREAM_DECODE)
        sink = self.sink if to_client else None
        saved_sink = self.sink
        self.sink = sink
        self.router = router
        try:
            first = router.start()
            if first and sink is not None:
                sink(first)
            if plan.upstream:
                self._waiter = asyncio.get_running_loop().create_future()
                self.endpoint.write(plan.upstream)
                if not router.done:
                    watch = self.registry.lock_watch if to_client else None
                    if watch is not None:
                        self.lock_timer = watch.arm(self, router)
                    await self._waiter
            else:
                router.done = True
        except BaseException:
            if self.tail and sink is not None:
                sink(self.take_tail())
            raise
        finally:
            if self.lock_timer is not None:
                self.lock_timer.cancel()
                self.lock_timer = None
            self.router = None
            self._waiter = None
            self.sink = saved_sink
            self._hold_tail = False
        return router

    def take_tail(self) -> bytes:
        tail, self.tail = self.tail, b""
        return tail

    async def inject(self, *sqls: str | tuple[str, list[str | None]]) -> Router:
        """Run the proxy's own statements (between cycles; the caller holds `lock`)."""
        return await self.run(injected_script(list(sqls)), to_client=False)

    async def cancel(self) -> None:
        await send_cancel(self.registry.target_for(self.database), self.backend_pid, self.upstream_secret)

    def close(self) -> None:
        if not self.endpoint.is_closing():
            self.endpoint.write(b"X\x00\x00\x00\x04")
            self.endpoint.close()

    # -- the chain ----------------------------------------------------------------------------

    def record(self, results: list[StatementResult]) -> None:
        now = datetime.now(UTC)
        if self.started_at is None:
            self.started_at = now
        for r in results:
            rec = StatementRecord(
                seq=len(self.statements) + 1, tx_no=r.tx_no, sql=r.sql, tag=r.tag, rows=tag_rows(r.tag),
                sqlstate=r.error.sqlstate if r.error else None, error=r.error.message if r.error else None, at=now,
                params=journal_params(r.sql, *r.bind) if r.bind is not None else None)
            self.statements.append(rec)
            if self.id is not None:
                self.registry.journal_statement(self.id, rec)

    def note_disconnect(self) -> None:
        """The agent left inside a transaction, which the proxy is about to roll back: say so in its
        statement list, where a reviewer would otherwise take its statements for held ones."""
        self.record([StatementResult(DISCONNECTED, self.state.tx_no, tag="ROLLBACK")])

    def end_unheld(self, outcome: str) -> None:
        """A chain ended before anything in it was held: journal it if it tried to write, then
        start afresh. (Read-only chains are not journaled.)"""
        if any(wrote_by_tag(r.tag or "", r.sql) or r.error for r in self.statements if r.tag not in _TX_TAGS):
            self.registry.journal_finished(self, list(self.statements), outcome)
        self.reset_chain()

    def reset_chain(self) -> None:
        """The chain ended (committed, rolled back, expired): the connection is clean again."""
        st = self.state
        st.chain, st.held, st.agent_tx, st.failed, st.wrote, st.tx_no = False, 0, AgentTx.NONE, False, False, 0
        st.error_pending, st.identity_baseline = False, None
        self.id, self.xid, self.statements, self.undo, self.policy = None, None, [], None, None
        self.started_at = self.held_at = None

    @property
    def pending(self) -> bool:
        return self.id is not None

    async def rollback_agent_tx(self) -> None:
        """Undo the agent's unfinished transaction, keeping what the chain already holds."""
        st = self.state
        if not st.chain:
            st.agent_tx, st.failed, st.wrote = AgentTx.NONE, False, False
            return
        if st.held == 0:
            await self.inject("ROLLBACK")
            self.end_unheld("rolled back")
            return
        if st.agent_tx is not AgentTx.NONE:
            r = await self.inject("ROLLBACK TO SAVEPOINT dbproxy_tx", "RELEASE SAVEPOINT dbproxy_tx",
                                  IDENTITY_COUNT_SQL)
            if r.error is not None:
                raise ConnectionClosed(f"could not roll back the agent's transaction: {r.error.message}")
            # What the rolled-back work wrote to the role catalogs still counts (see guard_sql).
            count = r.captured[-1] if r.captured else None
            st.identity_baseline = int(count) if count is not None else st.identity_baseline
        st.agent_tx, st.failed, st.wrote = AgentTx.NONE, False, False



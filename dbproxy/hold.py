"""Hold mode, the waiting part: a session's client loop and the upstream connection that may
outlive it while its transaction is held.

`HeldConnection` owns one upstream connection, its `HoldState` and the chain being built on it
(statements, journal id). It outlives the agent's session when the chain is pending, so a
reviewer can still commit or roll it back. One cycle at a time runs on it (`lock`): the agent's
cycles and the reviewer's actions take turns, never interleave.

`HoldSession` is the agent side: it reads client messages into an inbox, cuts them into cycles,
asks `hold_protocol` for a plan, runs it on the `HeldConnection`, and finishes each cycle with
the journal, the "held for review" notice and a ReadyForQuery computed from the agent's own
transaction state. All protocol decisions are in `hold_protocol`; this module only waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from dbproxy import log, undo_commit
from dbproxy.endpoint import ConnectionClosed, Endpoint
from dbproxy.hold_protocol import (
    CAPTURE_LIMIT,
    AgentTx,
    HoldState,
    Plan,
    PreparedStatements,
    Router,
    StatementResult,
    injected_script,
    plan_extended,
    plan_query,
    synthetic_ready,
)
from dbproxy.protocol.errors import ProtocolViolation, SQLState
from dbproxy.protocol.framing import BACKEND_TYPES, FRONTEND_TYPES, Frame, FrameScanner
from dbproxy.protocol.messages import CopyFail, ErrorResponse, NoticeResponse, Query, decode_frontend
from dbproxy.review_models import StatementRecord
from dbproxy.tags import tag_rows, wrote_by_tag
from dbproxy.upstream import send_cancel

if TYPE_CHECKING:
    from dbproxy.pending import PendingRegistry
    from dbproxy.session import Session
    from sandbox.verdict import Verdict

_CYCLE_END = frozenset(b"SHQFX")
_COPY_FROM_CLIENT = frozenset(b"cf")
#: Upstream frames decoded in hold mode; DataRow and CopyData stream through as bytes.
_UPSTREAM_DECODE = frozenset(BACKEND_TYPES - {ord("D"), ord("d")})
_UPSTREAM_DECODE_ROWS = frozenset(BACKEND_TYPES - {ord("d")})
_TX_TAGS = frozenset({"BEGIN", "COMMIT", "ROLLBACK"})


def notice(message: str, *, detail: str | None = None, hint: str | None = None) -> bytes:
    fields = {"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": message}
    if detail:
        fields["D"] = detail
    if hint:
        fields["H"] = hint
    return NoticeResponse(fields).encode()


class HeldConnection:
    """An upstream connection in hold mode and the chain on it (see module docstring)."""

    def __init__(self, registry: PendingRegistry, endpoint: Endpoint, scanner: FrameScanner, *, agent: str,
                 session_id: int, database: str, mode: str, backend_pid: int, upstream_secret: bytes) -> None:
        self.registry = registry
        self.endpoint = endpoint
        self.scanner = scanner
        self.agent = agent
        self.session_id = session_id
        self.database = database
        self.mode = mode
        self.backend_pid = backend_pid
        self.upstream_secret = upstream_secret
        self.state = HoldState(read_only_agent=mode == "read-only", login_role=registry.target_for(database).user)
        self.lock = asyncio.Lock()
        self.sink: Callable[[bytes], None] | None = None  # the agent's client, while attached
        self.session: HoldSession | None = None
        self.router: Router | None = None
        self.tail = b""  # the client's last answer of a cycle, not sent yet (see `run`)
        self._hold_tail = False
        self._waiter: asyncio.Future[None] | None = None
        self.lost = False
        # The chain: journal id once held, statements so far, timestamps.
        self.id: int | None = None
        self.xid: int | None = None
        self.statements: list[StatementRecord] = []
        self.undo: dict[str, object] | None = None  # undo mode: the inverse and why it was not enough
        self.started_at: datetime | None = None
        self.held_at: datetime | None = None
        self.held_monotonic = 0.0

    # -- upstream I/O -----------------------------------------------------------------------

    def attach(self) -> None:
        self.scanner.set_decode(_UPSTREAM_DECODE)
        self.scanner.set_valid(None)
        self.endpoint.relay_to(self._from_upstream, self._upstream_lost)

    def _from_upstream(self, data: bytes) -> None:
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
                    await self._waiter
            else:
                router.done = True
        except BaseException:
            if self.tail and sink is not None:
                sink(self.take_tail())
            raise
        finally:
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
                sqlstate=r.error.sqlstate if r.error else None, error=r.error.message if r.error else None, at=now)
            self.statements.append(rec)
            if self.id is not None:
                self.registry.journal_statement(self.id, rec)

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
        st.error_pending = False
        self.id, self.xid, self.statements, self.undo = None, None, [], None
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
            r = await self.inject("ROLLBACK TO SAVEPOINT dbproxy_tx", "RELEASE SAVEPOINT dbproxy_tx")
            if r.error is not None:
                raise ConnectionClosed(f"could not roll back the agent's transaction: {r.error.message}")
        st.agent_tx, st.failed, st.wrote = AgentTx.NONE, False, False


class HoldSession:
    """The agent side of a hold-mode session (see module docstring)."""

    def __init__(self, session: Session, held: HeldConnection) -> None:
        self.session = session
        self.held = held
        self.client = session.client
        self.scanner = FrameScanner(FRONTEND_TYPES - {ord("d")}, valid=FRONTEND_TYPES,
                                    max_decoded=session.server.settings.max_message_bytes)
        self.inbox: list[bytes | Frame] = []
        self.prepared = PreparedStatements()
        self._wake: asyncio.Future[None] | None = None
        self._gone = False
        self._copy_forwarding = False  # COPY FROM STDIN under way: client data goes upstream at once
        self.first_notices = b""

    # -- client input -------------------------------------------------------------------------

    def feed_client(self, data: bytes) -> None:
        try:
            items = self.scanner.feed(data)
        except ProtocolViolation as e:
            self.session.protocol_violation(str(e))
            self._gone = True
            self._poke()
            return
        for item in items:
            if self._copy_forwarding:
                if type(item) is bytes:
                    self.held.endpoint.write(item)
                    continue
                assert isinstance(item, Frame)
                if item.type in _COPY_FROM_CLIENT:
                    self.held.endpoint.write(item.raw)
                    self._copy_forwarding = False
                    continue
                self._copy_forwarding = False
            self.inbox.append(item)
        self._poke()

    def copy_in_started(self) -> None:
        """The server asked for COPY data. Clients may have sent it already, with the COPY
        itself (asyncpg does): what waits at the head of the inbox goes upstream now."""
        while self.inbox:
            item = self.inbox[0]
            if type(item) is bytes:
                self.held.endpoint.write(item)
            elif isinstance(item, Frame) and item.type in _COPY_FROM_CLIENT:
                self.held.endpoint.write(item.raw)
                self.inbox.pop(0)
                return  # CopyDone/CopyFail: the rest belongs to later cycles
            else:
                return
            self.inbox.pop(0)
        self._copy_forwarding = True  # the rest of the data is still to come

    def client_lost(self) -> None:
        self._gone = True
        self._poke()
        router = self.held.router
        if router is not None and router.copy_in:
            # A backend waiting for COPY data ignores a cancel: end the COPY instead.
            self.held.endpoint.write(CopyFail("the client disconnected during COPY").encode())
            self._copy_forwarding = False
        elif router is not None:
            # The agent left mid-statement: stop it, the way PostgreSQL does for a lost client.
            asyncio.get_running_loop().create_task(self._cancel_quietly())

    async def _cancel_quietly(self) -> None:
        try:
            await self.held.cancel()
        except Exception as e:  # best effort; the cycle ends either way
            log.event("hold.cancel_failed", session=self.session.id, reason=str(e), level=logging.DEBUG)

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _next_cycle(self) -> list[bytes | Frame] | None:
        while True:
            if self._gone:
                return None
            for i, item in enumerate(self.inbox):
                if isinstance(item, Frame) and item.type in _CYCLE_END:
                    if item.type == ord("Q") and i > 0:
                        i -= 1  # extended messages before a Query: run them as their own cycle first
                        cycle, self.inbox = self.inbox[: i + 1], self.inbox[i + 1:]
                        return cycle
                    cycle, self.inbox = self.inbox[: i + 1], self.inbox[i + 1:]
                    return cycle
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
            self._wake = None

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> str:
        """Serve the agent until it leaves; returns why the session ended."""
        held = self.held
        held.sink = self.client.write
        held.session = self
        self.client.relay_to(self.feed_client, lambda ep: self.client_lost())
        reason = "client disconnected"
        try:
            while True:
                cycle = await self._next_cycle()
                if cycle is None:
                    break
                last = cycle[-1]
                if isinstance(last, Frame) and last.type == ord("X"):
                    if len(cycle) > 1:
                        async with held.lock:
                            await self._cycle(cycle[:-1])
                    reason = "client terminated"
                    break
                async with held.lock:
                    await self._cycle(cycle)
        except ConnectionClosed:
            reason = "upstream disconnected"
            if not self._gone:
                self.client.write(ErrorResponse.make(
                    SQLState.CONNECTION_FAILURE, "the upstream server closed the connection unexpectedly",
                    severity="FATAL").encode())
        except ProtocolViolation as e:
            self.session.protocol_violation(str(e))
            reason = "protocol violation"
        finally:
            held.sink = None
            held.session = None
        return reason

    async def _cycle(self, cycle: list[bytes | Frame]) -> None:
        held = self.held
        state = held.state
        # CopyData/CopyDone/CopyFail outside COPY (left over from a COPY that failed before the
        # server asked for data): PostgreSQL ignores them, and so does the proxy.
        frames = [i for i in cycle if isinstance(i, Frame) and i.type not in _COPY_FROM_CLIENT]
        if not frames:
            return
        last = frames[-1]
        if last.type == ord("F"):
            self.client.write(ErrorResponse.make(
                SQLState.FEATURE_NOT_SUPPORTED,
                "the fast-path function call interface is not available in hold mode").encode()
                + synthetic_ready(state.agent_status))
            return
        if last.type == ord("Q"):
            msg = decode_frontend(last)
            assert isinstance(msg, Query)
            plan = plan_query(state, msg.sql)
        else:
            plan = plan_extended(state, self.prepared, frames)
        if self.first_notices:
            self.client.write(self.first_notices)
            self.first_notices = b""
        chain_before = state.chain
        router = await held.run(plan, hold_tail=True)
        if plan.passthrough:
            tail = held.take_tail()
            if router.ready_status is not None:
                tail += synthetic_ready(router.ready_status)
            if tail:
                self.client.write(tail)
            return
        if chain_before or state.chain:
            held.record(router.results)
        if chain_before and not state.chain and held.id is None:
            held.end_unheld("rolled back")  # the agent rolled back a chain with nothing held yet
        if not plan.ends_with_sync:
            if router.error is not None:
                state.error_pending = True
            if held.tail:
                self.client.write(held.take_tail())
            return
        failed = router.error is not None or state.error_pending
        state.error_pending = False
        if state.agent_tx is AgentTx.EXPLICIT and router.ready_status is not None:
            # The server knows best whether the agent's transaction is failed: an error marks it,
            # and the agent's own ROLLBACK TO SAVEPOINT recovers it.
            state.failed = router.ready_status == "E"
        extra = b""
        if failed:
            if state.agent_tx is AgentTx.IMPLICIT:
                await held.rollback_agent_tx()
            elif state.agent_tx is AgentTx.EXPLICIT:
                pass
            elif state.chain and router.ready_status == "E":
                # Cannot happen by construction (every cycle in a chain runs in a savepoint);
                # if it does, the chain is lost: say so rather than pretend.
                await held.registry.chain_broken(held, "an error aborted the held transaction")
        elif router.committed_any:
            extra = await self._after_commit(router)
        elif state.chain and not state.held and state.agent_tx is AgentTx.NONE:
            await held.inject("COMMIT")  # a chain with nothing in it (e.g. a SET outside BEGIN)
            held.reset_chain()
        self.client.write(held.take_tail() + extra + synthetic_ready(state.agent_status))

    async def _after_commit(self, router: Router) -> bytes:
        """An agent transaction ended with COMMIT: hold it, or really commit when it wrote nothing."""
        held = self.held
        state = held.state
        if not state.chain:
            return b""
        if state.held == 0:
            # With capture, the guard's xid is followed by the captured changes.
            xid_at = -2 if state.capture else -1
            xid = router.captured[xid_at] if len(router.captured) >= -xid_at else None
            if xid is None and not router.notified:
                if state.agent_tx is AgentTx.NONE:
                    r = await held.inject("COMMIT")  # nothing was written: nothing to hold or undo
                    held.reset_chain()
                    if r.error is not None:
                        return ErrorResponse.make(r.error.sqlstate, r.error.message).encode()
                return b""
            held.xid = int(xid) if xid is not None else None
            if held.mode == "undo":
                return await self._commit_with_undo(router)
            return await self._hold(router)
        if router.committed_writes:
            state.held += router.committed_writes
            held.registry.chain_grew(held)
            return notice(f"dbproxy: transaction held for review as #{held.id} "
                          f"({state.held} agent transactions held together)")
        return b""

    async def _hold(self, router: Router, *, why: list[str] | None = None, undo: str | None = None,
                    because: str = "it cannot be undone exactly") -> bytes:
        """The chain's first agent transaction becomes pending, for a reviewer (`why`: the
        reasons undo mode could not commit it)."""
        held = self.held
        try:
            tx_id = await held.registry.hold(held, undo=undo)
        except Exception as e:
            log.event("hold.journal_failed", session=self.session.id, reason=str(e), level=logging.ERROR)
            await held.inject("ROLLBACK")
            held.reset_chain()
            return ErrorResponse.make(
                "58000", "dbproxy could not record this transaction in its journal, so it was rolled back",
                detail=str(e)).encode()
        held.state.held = max(1, router.committed_writes)
        reasons = "; ".join(why) + ". " if why else ""
        return notice(f"dbproxy: transaction held for review as #{tx_id}" + (f" because {because}" if why else ""),
                      detail=reasons + "Nothing is committed until a reviewer decides; later transactions of this "
                      "session join it and see its changes.",
                      hint=f"dbproxy show {tx_id}; dbproxy commit {tx_id}; dbproxy rollback {tx_id}")

    async def _commit_with_undo(self, router: Router) -> bytes:
        """Undo mode: commit the agent's transaction (which wrote, or notified) with its inverse, or
        hold it (`undo_commit`)."""
        held = self.held
        state = held.state
        if held.xid is None:
            return await self._hold(router, why=["NOTIFY cannot be taken back once delivered"])
        if not state.capture:
            return await self._hold(router, why=[f"capture is not installed in database {held.database}, "
                                                 "or is from an older dbproxy (run `dbproxy install`)"])
        if state.agent_tx is not AgentTx.NONE:
            # COMMIT AND CHAIN: the next agent transaction already runs in this upstream one.
            return await self._hold(router, why=["COMMIT AND CHAIN keeps the transaction open"])
        registry = held.registry
        decision = await undo_commit.decide(held, held.xid, router.rows[-1] if router.rows else [],
                                            registry.tables, CAPTURE_LIMIT)
        if not decision.reversible:
            log.event("undo.irreversible", session=self.session.id, reasons=decision.plan.irreversible)
            return await self._irreversible(router, decision)
        verdict = None
        if registry.verification is not None:
            verdict = await registry.verification.at_commit(
                held.database, held.statements, decision.plan, decision.changes, decision.tables,
                complete=decision.complete, schema_version=decision.schema_version)
        if verdict is not None and not verdict.verified:
            log.event("undo.unverified", session=self.session.id, verdict=verdict.summary())
            return await self._hold(router, why=[f"sandbox verification: {verdict.summary()}"],
                                    because="its inverse was not verified in the sandbox",
                                    undo=decision.journal_json(verdict))
        return await self._commit_decided(router, decision, verdict)

    async def _irreversible(self, router: Router, decision: undo_commit.Decision) -> bytes:
        """The rules left something without an exact inverse. DDL they cannot invert goes to the
        model, when one is configured; its proposal commits only once the sandbox verified the
        whole plan with it. Anything else is held for a person, with every attempt journaled."""
        held = self.held
        verification = held.registry.verification
        why = list(decision.plan.irreversible)
        if not decision.plan.gaps:
            return await self._hold(router, why=why, undo=decision.journal_json())
        if verification is None or verification.llm is None:
            return await self._hold(router, why=why, undo=decision.journal_json(llm=undo_commit.LLM_OFF))
        done = await verification.complete(held.database, held.statements, decision.plan, decision.changes,
                                           decision.tables)
        record: dict[str, object] | str = done.outcome.to_json() if done.outcome else f"not asked: {done.reason}"
        if done.trusted:
            log.event("undo.llm_inverse", session=self.session.id,
                      attempts=len(done.outcome.attempts) if done.outcome else 0)
            return await self._commit_decided(router, replace(decision, plan=done.plan), done.verdict, record)
        log.event("undo.llm_untrusted", session=self.session.id, reason=done.reason)
        return await self._hold(router, why=[*why, f"no trusted model-proposed inverse: {done.reason}"],
                                because="the rules cannot undo it exactly and no model-proposed inverse verified",
                                undo=decision.journal_json(done.verdict, llm=record))

    async def _commit_decided(self, router: Router, decision: undo_commit.Decision, verdict: Verdict | None,
                              llm: dict[str, object] | str | None = None) -> bytes:
        """Commit the agent's transaction with its undo marker; journal the inverse."""
        held = self.held
        state = held.state
        registry = held.registry
        r = await held.inject((undo_commit.MARK_SQL, [str(held.xid), held.agent, str(held.session_id),
                                                     str(decision.plan.changes)]), "COMMIT")
        if r.error is not None:
            if state.chain:
                with contextlib.suppress(ConnectionClosed):
                    await held.inject("ROLLBACK")
            held.reset_chain()
            return ErrorResponse.make(r.error.sqlstate, r.error.message,
                                      detail="dbproxy: the transaction was not committed").encode()
        registry.journal_finished(held, list(held.statements), "committed", xid=held.xid,
                                  undo=decision.journal_json(verdict, llm=llm))
        held.reset_chain()
        if registry.verification is not None and any(c.op == "X" for c in decision.changes):
            registry.verification.schema_moved(held.database)
        return b""

    async def detach(self) -> bool:
        """The agent left. Returns True when the upstream connection stays open for review."""
        held = self.held
        if held.lost:
            return False
        async with held.lock:
            try:
                if held.state.agent_tx is not AgentTx.NONE or (held.state.chain and not held.state.held):
                    await held.rollback_agent_tx()
            except ConnectionClosed:
                return False
            if held.pending:
                held.registry.agent_left(held)
                return True
        return False

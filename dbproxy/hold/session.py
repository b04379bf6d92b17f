"""Hold mode's agent side: a session's client loop over its `HeldConnection`.

`HoldSession` reads client messages into an inbox, cuts them into cycles, asks
`dbproxy.hold.protocol` for a plan, runs it on the `HeldConnection`, and finishes each cycle with
the journal, the "held for review" notice and a ReadyForQuery computed from the agent's own
transaction state. Before a cycle, the policy (`dbproxy.hold.gate`) may pause it for a reviewer's
approval and answers `SHOW dbproxy.*`. At an agent COMMIT that wrote, the policy's verdict decides:
deny rolls it back, ask holds it, allow commits it with its inverse (`dbproxy.undo.commit`, in hold
mode too), and with no rule the mode decides as before (hold: held; undo: committed with its
inverse when it has a verified one). All protocol decisions are in `dbproxy.hold.protocol`; this
module only waits.

The client session that owns it (`dbproxy.frontend.session`) is reached through `SessionHost`, a
Protocol defined here, so hold mode does not import the frontend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from dbproxy.config import log
from dbproxy.hold.connection import HeldConnection
from dbproxy.hold.fastpath import read_only_cycle
from dbproxy.hold.gate import PolicyGate
from dbproxy.hold.protocol import (
    GUARD_ERROR,
    AgentTx,
    PreparedStatements,
    Router,
    notice,
    plan_extended,
    plan_query,
    synthetic_ready,
)
from dbproxy.net.endpoint import ConnectionClosed, Endpoint
from dbproxy.policy.engine import Verdict
from dbproxy.protocol.errors import ProtocolViolation, SQLState
from dbproxy.protocol.framing import FRONTEND_TYPES, Frame, FrameScanner
from dbproxy.protocol.messages import CopyFail, ErrorResponse, Query, decode_frontend
from dbproxy.undo import commit as undo_commit
from inverse.images import CAPTURE_LIMIT

_CYCLE_END = frozenset(b"SHQFX")
_COPY_FROM_CLIENT = frozenset(b"cf")


class SessionHost(Protocol):
    """The client session a hold session serves."""

    id: int
    client: Endpoint

    def protocol_violation(self, reason: str) -> None: ...
    def terminate(self, sqlstate: str, message: str) -> None: ...


class HoldSession:
    """The agent side of a hold-mode session (see module docstring)."""

    def __init__(self, session: SessionHost, held: HeldConnection, *, max_message_bytes: int,
                 log_statements: bool = False, gate: PolicyGate | None = None) -> None:
        self.session = session
        self.prepared = PreparedStatements()
        self.gate = gate
        if gate is not None:
            held.state.policy_refusal = gate.refusal
            gate.prepared = self.prepared  # the gate reads which statement each portal runs
        self.log_statements = log_statements
        self.held = held
        self.client = session.client
        self.scanner = FrameScanner(FRONTEND_TYPES - {ord("d")}, valid=FRONTEND_TYPES,
                                    max_decoded=max_message_bytes)
        self.inbox: list[bytes | Frame] = []
        self._wake: asyncio.Future[None] | None = None
        self._gone = False
        self._copy_forwarding = False  # COPY FROM STDIN under way: client data goes upstream at once
        self.first_notices = b""
        self.max_message = max_message_bytes
        self._upstream_gone = False  # the upstream went away during a fast cycle

    # -- client input -------------------------------------------------------------------------

    def feed_client(self, data: bytes) -> None:
        if self._fast_path(data):
            return
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

    def terminate(self, sqlstate: str, message: str) -> None:
        """End the agent's session from the proxy side (a reviewer rolled back its open transaction)."""
        self.session.terminate(sqlstate, message)

    def client_lost(self) -> None:
        self._gone = True
        self._poke()
        if self.gate is not None and self.gate.gone is not None and not self.gate.gone.done():
            self.gate.gone.set_result(None)  # a request waiting for approval is cancelled
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

    def _fast_path(self, data: bytes) -> bool:
        """Run `data` as a read-only fast cycle (`dbproxy.hold.fastpath`) when it is one and the
        session is idle: its loop waiting for the next cycle, nothing queued, no agent
        transaction or chain, nothing the policy must see. Returns whether it did."""
        held = self.held
        st = held.state
        wake = self._wake
        if (wake is None or wake.done() or self.inbox or held.router is not None or held.lost or st.chain
                or st.agent_tx is not AgentTx.NONE or st.error_pending or self.log_statements or self.first_notices
                or self._copy_forwarding or held.lock.locked() or not self.scanner.at_boundary
                or (self.gate is not None and not self.gate.reads_free())):
            return False
        if not read_only_cycle(data, st, self.prepared, self.max_message):
            return False
        held.run_fast(data, self._fast_finished)
        return True

    def _fast_finished(self) -> None:
        if self.held.lost:
            self._upstream_gone = True
        if self.inbox or self._upstream_gone:
            self._poke()  # what the client sent meanwhile runs now

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _next_cycle(self) -> list[bytes | Frame] | None:
        while True:
            if self._gone:
                return None
            if self._upstream_gone:
                raise ConnectionClosed("the upstream server closed the connection")
            for i, item in enumerate(self.inbox if not self.held.fast_busy else ()):
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
        if self.gate is not None:
            self.gate.gone = asyncio.get_running_loop().create_future()
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
                        await self._before(cycle[:-1])
                        async with held.lock:
                            await self._cycle(cycle[:-1])
                    reason = "client terminated"
                    break
                await self._before(cycle)
                if self._gone:
                    break  # the agent left while its request waited for approval: nothing of it runs
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

    async def _before(self, cycle: list[bytes | Frame]) -> None:
        """The policy's turn before a cycle, outside the connection's lock: a statement it pauses
        waits here for a reviewer, while reviewers can still decide this session's held work."""
        if self.gate is not None:
            self.held.state.answers = await self.gate.before(cycle)

    async def _cycle(self, cycle: list[bytes | Frame]) -> None:
        try:
            await self._run_cycle(cycle)
        finally:
            self.held.state.answers = {}
            if self.gate is not None:
                self.gate.refused = {}

    async def _run_cycle(self, cycle: list[bytes | Frame]) -> None:
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
        if plan.ddl:
            await self._before_ddl()
        router = await held.run(plan, hold_tail=True)
        # Parameter types the server named (clients such as asyncpg leave them to it): the journal
        # shows binary values by their type.
        self.prepared.types.update(router.described)
        if plan.passthrough:
            tail = held.take_tail()
            if router.ready_status is not None:
                tail += synthetic_ready(router.ready_status)
            if tail:
                self.client.write(tail)
            return
        if chain_before or state.chain:
            held.record(router.results)
        if self.log_statements:
            for r in router.results:
                log.event("statement", session=self.session.id, agent=held.agent, sql=log.redact_sql(r.sql),
                          tag=r.tag, sqlstate=r.error.sqlstate if r.error else None)
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
        if self.gate is not None and self.gate.once and state.agent_tx is AgentTx.NONE:
            await self.gate.transaction_ended(committed=router.committed_any and not failed)
        self.client.write(held.take_tail() + extra + synthetic_ready(state.agent_status))

    async def _before_ddl(self) -> None:
        """With capture on (undo mode, or hold mode where installed): the schema copy this
        transaction will be verified against is taken before its DDL locks anything (see
        `Verification.ready_for_ddl`)."""
        held = self.held
        verification = held.registry.verification
        if held.state.ddl_capture and verification is not None:
            await verification.ready_for_ddl(held.database)

    async def _after_commit(self, router: Router) -> bytes:
        """An agent transaction ended with COMMIT: hold it, or really commit when it wrote nothing."""
        held = self.held
        state = held.state
        if not state.chain:
            return b""
        if state.held == 0:
            if self._identity_changed(router):
                return await self._refuse_chain(router)
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
            return await self._decide(router)
        if router.committed_writes:
            state.held += router.committed_writes
            held.registry.chain_grew(held)
            return notice(f"dbproxy: transaction held for review as #{held.id} "
                          f"({state.held} agent transactions held together)")
        return b""

    async def _decide(self, router: Router) -> bytes:
        """The policy's verdict on the agent's transaction at its COMMIT, carried out."""
        held = self.held
        state = held.state
        chained = state.agent_tx is not AgentTx.NONE
        decision: undo_commit.Decision | None = None
        verdict: Verdict | None = None
        if self.gate is not None and self.gate.applies():
            changes = None
            complete = True
            if state.capture and held.xid is not None and not chained:
                decision = await undo_commit.decide(held, held.xid, router.rows[-1] if router.rows else [],
                                                    held.registry.tables, CAPTURE_LIMIT)
                changes, complete = decision.changes, decision.complete
            verdict = self.gate.at_commit(held.statements, changes, decision.tables if decision else {},
                                          complete=complete)
        if verdict is None or verdict.decision == "mode":
            held.policy = verdict.by if verdict is not None else None
            if held.mode == "undo":
                return await self._commit_with_undo(router, decision)
            return await self._hold(router)
        held.policy = f"{verdict.decision}: {verdict.by}"
        if verdict.decision == "deny":
            return await self._deny(verdict)
        if verdict.decision == "ask":
            return await self._hold(router, why=verdict.reasons, because="a rule asks a reviewer first")
        # What a person approved statement by statement (pause, approve once) commits even without
        # an exact inverse: that approval was the ask. Rules and standing grants cover only what can
        # be undone.
        approved = bool(verdict.grants) and all(g.scope == "once" for g in verdict.grants) \
            and all(src.startswith("grant #") for src in verdict.sources)
        return await self._commit_with_undo(router, decision, allowed=verdict, approved=approved)

    async def _deny(self, verdict: Verdict) -> bytes:
        """A deny rule matched what the transaction did (seen by capture, e.g. inside a function):
        it is rolled back, and the agent is told which rule."""
        held = self.held
        log.event("policy.denied", session=self.session.id, agent=held.agent, reason=verdict.reasons[0])
        await held.inject("ROLLBACK")
        # Journaled whatever its command tags say: what it did was seen by capture.
        held.registry.journal_finished(held, list(held.statements), "rolled back",
                                       decided_by=verdict.rule.source if verdict.rule is not None else "policy")
        held.reset_chain()
        return ErrorResponse.make("42501", f"dbproxy denied this transaction: {verdict.reasons[0]}",
                                  detail="It was rolled back; nothing of it was committed.",
                                  hint="SHOW dbproxy.rules lists this agent's rules.").encode()

    def _identity_changed(self, router: Router) -> bool:
        """The chain began in this cycle, so the guard could not compare the role-catalog count
        itself (`guard_sql`): compare it here, before anything is held or committed."""
        now = router.named.get("identity_now")
        base = self.held.state.identity_baseline
        return now is not None and base is not None and int(now) > base

    async def _refuse_chain(self, router: Router) -> bytes:
        """Roll back the chain (it holds only this agent transaction) and tell the agent why."""
        held = self.held
        log.event("hold.guard_refused", session=self.session.id, agent=held.agent)
        await held.inject("ROLLBACK")
        held.end_unheld("rolled back")
        return GUARD_ERROR.encode()

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

    async def _commit_with_undo(self, router: Router, decision: undo_commit.Decision | None = None, *,
                                allowed: Verdict | None = None, approved: bool = False) -> bytes:
        """Commit the agent's transaction (which wrote, or notified) with its inverse, or hold it
        (`dbproxy.undo.commit` decides): undo mode, and what a rule or grant allows in any mode."""
        held = self.held
        state = held.state
        choice = await undo_commit.choose(
            held, xid=held.xid, rows=router.rows[-1] if router.rows else [], capture=state.capture,
            # COMMIT AND CHAIN: the next agent transaction already runs in this upstream one.
            chained=state.agent_tx is not AgentTx.NONE,
            statements=held.statements, tables=held.registry.tables, verification=held.registry.verification,
            session=self.session.id, decision=decision)
        if isinstance(choice, undo_commit.Hold):
            if approved and allowed is not None:
                return await self._commit_approved(allowed, choice)
            if allowed is not None:
                # Allowed, but without an exact verified inverse: an allow covers only what can be undone.
                held.policy = f"ask: {allowed.by}, but {choice.because}: {'; '.join(choice.why)}"
                return await self._hold(router, why=choice.why, undo=choice.undo,
                                        because=f"a rule or grant allows it, but {choice.because}")
            return await self._hold(router, why=choice.why, because=choice.because, undo=choice.undo)
        return await self._commit_decided(choice, allowed=allowed)

    async def _commit_approved(self, verdict: Verdict, choice: undo_commit.Hold) -> bytes:
        """Commit what a reviewer approved statement by statement, though it has no exact inverse
        (journaled with why not, so nobody takes it for undoable)."""
        held = self.held
        r = await held.inject("COMMIT")
        if r.error is not None:
            held.reset_chain()
            return ErrorResponse.make(r.error.sqlstate, r.error.message,
                                      detail="dbproxy: the transaction was not committed").encode()
        by = ", ".join(f"{g.granted_by} (request #{g.request})" for g in verdict.grants)
        held.policy = f"allow: approved by {by}; no exact inverse: {'; '.join(choice.why)}"
        held.registry.journal_finished(held, list(held.statements), "committed", xid=held.xid, undo=choice.undo,
                                       decided_by=", ".join(g.granted_by for g in verdict.grants))
        held.reset_chain()
        return notice("dbproxy: committed as approved; it cannot be undone exactly",
                      detail="; ".join(choice.why))

    async def _commit_decided(self, choice: undo_commit.Commit, *, allowed: Verdict | None = None) -> bytes:
        """Commit the agent's transaction with its undo marker; journal the inverse (and, when a rule
        or grant allowed it, which)."""
        held = self.held
        state = held.state
        registry = held.registry
        decision = choice.decision
        assert held.xid is not None
        r = await held.inject(undo_commit.mark(held.agent, held.session_id, decision), "COMMIT")
        if r.error is not None:
            if state.chain:
                with contextlib.suppress(ConnectionClosed):
                    await held.inject("ROLLBACK")
            held.reset_chain()
            return ErrorResponse.make(r.error.sqlstate, r.error.message,
                                      detail="dbproxy: the transaction was not committed").encode()
        registry.journal_finished(held, list(held.statements), "committed", xid=held.xid,
                                  undo=decision.journal_json(choice.verdict, llm=choice.llm),
                                  decided_by=", ".join(allowed.sources) if allowed is not None else "agent")
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
                    if held.state.agent_tx is not AgentTx.NONE and held.state.chain:
                        held.note_disconnect()
                    await held.rollback_agent_tx()
            except ConnectionClosed:
                return False
            if held.pending:
                held.registry.agent_left(held)
                return True
        return False

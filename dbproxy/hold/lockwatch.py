"""Statements stuck behind a held transaction fail after `held_lock_timeout` instead of hanging.

A pending chain keeps its row and table locks until a reviewer decides, which can take an hour.
Agents pool connections, so the agent's own second connection (or another agent) touching a held
row would wait that long with no word. `LockWatch` arms a timer for every request cycle a hold-
or undo-mode session sends upstream; when a cycle is still running after `held_lock_timeout`, it
asks the server which backends block the session's (`pg_blocking_pids`). If one of them is a
pending chain's, the proxy cancels the statement, and the agent gets `55P03` naming the pending
`#N` and who must decide instead of "canceling statement due to user request" (`Router.lock_error`).
A cycle waiting on anything else (a lock of an ordinary transaction, a slow query) is left alone
and looked at again after another period.

The check runs on one connection of the proxy's own role, opened when first needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import asyncpg

from dbproxy.config import log
from dbproxy.hold.connection import HeldConnection
from dbproxy.hold.protocol import Router
from dbproxy.protocol.messages import ErrorResponse

LOCK_NOT_AVAILABLE = "55P03"


class LockWatch:
    def __init__(self, live: Mapping[int, HeldConnection], dsn: Callable[[], str], timeout: float) -> None:
        self.live = live  # journal id -> pending chain
        self.dsn = dsn
        self.timeout = timeout
        self._conn: asyncpg.Connection | None = None
        self._conn_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def arm(self, held: HeldConnection, router: Router) -> asyncio.TimerHandle:
        """Look at `held`'s cycle once `timeout` has passed (the caller cancels the handle when the
        cycle ends first, which is almost always)."""
        loop = asyncio.get_running_loop()
        return loop.call_later(self.timeout, self._fire, held, router)

    def _fire(self, held: HeldConnection, router: Router) -> None:
        task = asyncio.get_running_loop().create_task(self._check(held, router))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, held: HeldConnection, router: Router) -> None:
        if router.done or held.router is not router:
            return
        chains = {h.backend_pid: tx for tx, h in list(self.live.items()) if h is not held}
        if chains:
            try:
                blockers = await self._blockers(held.backend_pid)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
                log.event("hold.lock_check_failed", session=held.session_id, reason=str(e), level=logging.WARNING)
                blockers = []
            hit = next((chains[p] for p in blockers if p in chains), None)
            if hit is not None and not router.done and held.router is router:
                chain = self.live.get(hit)
                router.lock_error = self.error(hit, chain)
                log.event("hold.lock_wait_cancelled", session=held.session_id, agent=held.agent, blocked_by=hit)
                try:
                    await held.cancel()
                except Exception as e:  # the statement goes on waiting; say why in the log
                    log.event("hold.cancel_failed", session=held.session_id, reason=str(e), level=logging.WARNING)
                return
        if not router.done and held.router is router:
            handle = self.arm(held, router)
            held.lock_timer = handle

    def error(self, tx_id: int, chain: HeldConnection | None) -> ErrorResponse:
        whose = f" (agent {chain.agent}, {len(chain.statements)} statements)" if chain is not None else ""
        return ErrorResponse.make(
            LOCK_NOT_AVAILABLE,
            f"dbproxy: this statement waited {self.timeout:g} s for a lock held by transaction #{tx_id}, which is "
            "held for review",
            detail=f"#{tx_id}{whose} keeps its locks until a reviewer commits or rolls it back; the statement "
            "was cancelled rather than left waiting.",
            hint=f"A reviewer decides: dbproxy commit {tx_id} or dbproxy rollback {tx_id}. SHOW dbproxy.status "
            "lists this agent's held transactions.")

    async def _blockers(self, pid: int) -> list[int]:
        async with self._conn_lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self.dsn(), timeout=10)
            pids = await self._conn.fetchval("SELECT pg_catalog.pg_blocking_pids($1)", pid, timeout=10)
        return list(pids or [])

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
        self._conn = None

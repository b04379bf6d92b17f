"""Waiting for what the proxy does in the background, without timing assumptions.

Much of what a test checks happens after the event it can observe: the journal writes a
pass-through transaction after the agent got its answer, a psycopg notice handler runs on the
connection's reader, a closed client is noticed by the proxy a moment later. A test that asserts
such a thing at once (or after a fixed sleep) fails when the machine is busy. `wait_until` polls
with a generous deadline instead, and fails with the last value it saw, so a broken
implementation still fails (only later). A fixed sleep remains fine to show that something did
*not* happen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Long enough for a loaded 2-core CI machine; a passing test waits only as long as it needs.
TIMEOUT = 20.0


def wait_until(check: Callable[[], T], *, within: float = TIMEOUT, interval: float = 0.05,
               what: str = "the condition") -> T:
    """Call `check` until it returns something true, and return that; fail after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}; last seen: {value!r}")
        time.sleep(interval)


async def await_until(check: Callable[[], Awaitable[T]] | Callable[[], T], *, within: float = TIMEOUT,
                      interval: float = 0.05, what: str = "the condition") -> T:
    """`wait_until` for async tests: `check` may be a plain function or a coroutine function, and
    the event loop keeps running (asyncpg log listeners, the proxy under test) while it waits."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}; last seen: {value!r}")
        await asyncio.sleep(interval)


def wait_running(dsn: str, query: str, *, pid: int | None = None, within: float = TIMEOUT) -> None:
    """Wait until the server at `dsn` runs a statement whose text contains `query` (in backend
    `pid`, if given): a cancel or a signal sent before that finds nothing to interrupt."""
    import psycopg

    sql = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND strpos(query, %s) > 0 " \
          "AND pid <> pg_backend_pid() AND (%s::int IS NULL OR pid = %s::int)"
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as c:
        wait_until(lambda: c.execute(sql, (query, pid, pid)).fetchone()[0] > 0,  # type: ignore[index]
                   within=within, what=f"the server to run {query!r}")

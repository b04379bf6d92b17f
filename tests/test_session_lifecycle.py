"""Session life: cancel routing, clients vanishing mid-query and mid-COPY, many sessions at once,
graceful shutdown, and what the proxy reveals (never the upstream credentials)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import threading
import time

import asyncpg
import psycopg
import pytest

from tests.conftest import AGENT, AGENT_PASSWORD
from tests.waiting import wait_running


def _wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _activity(pg, pid: int) -> tuple | None:
    with psycopg.connect(pg.url, autocommit=True) as d:
        return d.execute("select state, query from pg_stat_activity where pid = %s", (pid,)).fetchone()


def test_cancel_request_is_routed_to_the_right_backend(proxy, pg):
    # cancel_safe(), not cancel(): libpq's legacy PQcancel blocks while holding the GIL, which
    # would freeze the in-process proxy under test (psql below covers the legacy path).
    with psycopg.connect(proxy.url()) as victim, psycopg.connect(proxy.url()) as bystander:
        bystander.execute("select 1")
        pid = victim.info.backend_pid

        def cancel_once_running() -> None:
            wait_running(pg.url, "pg_sleep(20)", pid=pid)  # an earlier cancel finds nothing to cancel
            victim.cancel_safe()

        canceller = threading.Thread(target=cancel_once_running)
        canceller.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            victim.execute("select pg_sleep(20)")
        assert time.monotonic() - started < 19  # canceled, not run to its end
        canceller.join()
        victim.rollback()
        assert victim.execute("select 'still usable'").fetchone() == ("still usable",)
        assert bystander.execute("select 'untouched'").fetchone() == ("untouched",)


def test_psql_ctrl_c_cancels_through_the_proxy(proxy, pg, pg_bin):
    """psql sends a legacy CancelRequest on SIGINT; the query stops with 57014."""
    proc = subprocess.Popen([str(pg_bin / "psql"), "-X", "-c", "select pg_sleep(30)"], env=proxy.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Before its query runs, psql is still connecting, and SIGINT would just end it.
    wait_running(pg.url, "select pg_sleep(30)")
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert time.monotonic() - started < 10
    assert "canceling statement due to user request" in err


def test_backend_key_pid_matches_server_pid(proxy):
    """The pid the client is given is the real backend's, so pg_backend_pid(), notifications and
    pg_stat_activity agree with what the driver reports; only the secret is the proxy's."""
    with psycopg.connect(proxy.url()) as conn:
        assert conn.info.backend_pid == conn.execute("select pg_backend_pid()").fetchone()[0]


def test_cancel_with_wrong_secret_does_nothing(proxy, pg):
    from tests.rawclient import RawClient, int32

    with psycopg.connect(proxy.url()) as conn:
        pid = conn.info.backend_pid
        t = threading.Thread(target=lambda: conn.execute("select pg_sleep(1.5)"))
        t.start()
        time.sleep(0.3)
        c = RawClient(proxy.host, proxy.port)
        c.send(int32(16) + int32(80877102) + int32(pid) + b"\x00\x00\x00\x00")
        assert c.closed()
        t.join(10)  # completes normally: the forged cancel was ignored
        assert not t.is_alive()
        assert conn.execute("select 1").fetchone() == (1,)


async def test_client_vanishing_mid_query_cancels_and_rolls_back(proxy, pg, unique_name):
    async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as d:
        await d.execute(f"create table {unique_name} (id int)")
    conn = await asyncpg.connect(proxy.url())
    pid = conn.get_server_pid()
    await conn.execute("begin")
    await conn.execute(f"insert into {unique_name} values (1)")
    await conn.execute(f"lock table {unique_name} in access exclusive mode")
    query = asyncio.ensure_future(conn.fetch("select pg_sleep(60)"))
    await asyncio.sleep(0.5)
    conn.terminate()  # the socket just goes away
    with pytest.raises(Exception):  # noqa: B017 - whatever asyncpg raises for a dead connection
        await query
    assert await asyncio.to_thread(_wait_until, lambda: _activity(pg, pid) is None, 10), _activity(pg, pid)
    async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as d:
        await d.execute("set lock_timeout = '2s'")
        cur = await d.execute(f"select count(*) from {unique_name}")  # the lock is gone too
        assert await cur.fetchone() == (0,)
        await d.execute(f"drop table {unique_name}")


def test_client_vanishing_mid_copy_rolls_back(proxy, pg, pg_bin, unique_name):
    with psycopg.connect(pg.url, autocommit=True) as d:
        d.execute(f"create table {unique_name} (id int, payload text)")
    proc = subprocess.Popen(
        [str(pg_bin / "psql"), "-X", "-c", f"\\copy {unique_name} from stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=proxy.env(),
    )
    assert proc.stdin is not None
    for i in range(20000):
        proc.stdin.write(f"{i}\tsome payload for row {i}\n".encode())
    proc.stdin.flush()

    def copy_running() -> bool:
        with psycopg.connect(pg.url, autocommit=True) as d:
            return d.execute("select count(*) from pg_stat_activity where query ilike %s and state = 'active'",
                             (f"copy %{unique_name} from stdin%",)).fetchone()[0] == 1

    assert _wait_until(copy_running, 10)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert _wait_until(lambda: not copy_running(), 10)
    with psycopg.connect(pg.url, autocommit=True) as d:
        assert d.execute(f"select count(*) from {unique_name}").fetchone() == (0,)
        d.execute(f"drop table {unique_name}")


async def test_fifty_concurrent_sessions_without_cross_talk(proxy):
    async def one(i: int) -> tuple[int, int, list[int]]:
        conn = await asyncpg.connect(proxy.url(), server_settings={"application_name": f"agent-{i}"})
        try:
            await conn.execute("create temp table mine (v int)")
            await conn.executemany("insert into mine values ($1)", [(i * 1000 + k,) for k in range(50)])
            await asyncio.sleep(0.01 * (i % 5))
            app = await conn.fetchval("show application_name")
            assert app == f"agent-{i}"
            values = [r[0] for r in await conn.fetch("select v from mine order by v")]
            big = await conn.fetchval(
                "select string_agg(md5(($1::int * g)::text), '') from generate_series(1, 300) g", i)
            assert len(big) == 32 * 300
            return i, conn.get_server_pid(), values
        finally:
            await conn.close()

    results = await asyncio.gather(*(one(i) for i in range(50)))
    assert len({pid for _, pid, _ in results}) == 50
    for i, _, values in results:
        assert values == [i * 1000 + k for k in range(50)]


def _logged(caplog) -> str:
    """Everything the proxy logged, with the structured fields of each event."""
    return "\n".join(f"{r.getMessage()} {getattr(r, 'fields', {})}" for r in caplog.records)


async def test_application_name_is_the_clients_and_credentials_stay_hidden(proxy, pg, caplog):
    caplog.set_level(logging.DEBUG, logger="dbproxy")
    conn = await asyncpg.connect(proxy.url(), server_settings={"application_name": "my-agent"})
    try:
        pid = conn.get_server_pid()
        async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as d:
            cur = await d.execute("select application_name, usename from pg_stat_activity where pid = %s", (pid,))
            app, user = await cur.fetchone()
        assert app == "my-agent"
        # Upstream the agent has its own login role: never the proxy's (and never the agent name
        # it logs in to the proxy with, which is the proxy's business).
        assert user == "dbproxy_agent_agent" and user != pg.user
        settings = await conn.fetch("select name, setting from pg_settings")
        dump = " ".join(f"{n}={s}" for n, s in settings)
        assert pg.password not in dump
    finally:
        await conn.close()
    assert "session.start" in _logged(caplog)
    assert pg.password not in _logged(caplog)
    assert AGENT_PASSWORD not in _logged(caplog)


async def test_statement_log_redacts_passwords(make_proxy, caplog):
    caplog.set_level(logging.INFO, logger="dbproxy")
    p = make_proxy(log_statements=True, log_level="info")
    conn = await asyncpg.connect(p.url())
    try:
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute("alter role nosuchrole password 'hunter2-secret'")
        await conn.execute("select 'visible-marker'")
    finally:
        await conn.close()
    assert "visible-marker" in _logged(caplog)
    assert "hunter2-secret" not in _logged(caplog)


async def test_graceful_shutdown_lets_running_work_finish_then_ends_the_rest(make_proxy):
    p = make_proxy()
    busy = await asyncpg.connect(p.url())
    idle = await psycopg.AsyncConnection.connect(p.url(), autocommit=True)
    running = asyncio.ensure_future(busy.fetchval("select pg_sleep(1.0)::text || 'done'"))
    await asyncio.sleep(0.2)
    stopping = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(p.server.shutdown(3.0), p.loop))
    # The proxy's loop runs what it is given in order: once this no-op has run there, so has the
    # shutdown's first step, which closes the listener (a fixed sleep did not promise that).
    await asyncio.to_thread(p.call, asyncio.sleep(0))
    # No new sessions once shutdown has begun.
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(p.url(), timeout=2)
    assert await running == "done"  # the in-flight query was not interrupted
    await busy.close()
    await stopping
    # The idle session outlived the grace period and was told why it ends (57P01's message).
    with pytest.raises(psycopg.OperationalError, match="terminating connection due to administrator command"):
        await idle.execute("select 1")


def test_agent_identity_is_not_the_upstream_user(proxy, pg):
    """The agent never acts as the proxy's upstream role: it acts as the agents' role, logged in
    upstream as a login role of its own."""
    with psycopg.connect(proxy.url()) as conn:
        assert conn.info.user == AGENT
        assert conn.execute("select current_user, session_user, current_setting('is_superuser')").fetchone() == (
            "dbproxy_agents", "dbproxy_agent_agent", "off")
        assert pg.user not in conn.execute("select current_user, session_user").fetchone()


def test_slow_client_backpressure_bounds_proxy_memory(make_proxy):
    """A client that stops reading a 200 MB result must not make the proxy buffer it: the
    upstream side stops reading instead, and the rows still arrive intact when the client reads."""
    from dbproxy.protocol.messages import Query
    from tests.rawclient import RawClient

    p = make_proxy(agent_auth="password")
    c = RawClient(p.host, p.port, timeout=30)
    c.login(AGENT, AGENT_PASSWORD)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.send(Query("select g, repeat('x', 1000) from generate_series(1, 200000) g").encode())
    time.sleep(2.0)

    async def buffered() -> list[int]:
        return [s.client.transport.get_write_buffer_size() for s in p.server.sessions if s.client.transport]

    sizes = p.call(buffered())
    assert sizes and max(sizes) < 1_000_000, sizes
    frames = c.until("Z")
    rows = [f for f in frames if f.type_char == "D"]
    assert len(rows) == 200000
    assert frames[-2].body == b"SELECT 200000\x00"


def test_client_vanishing_after_execute_flush_without_sync_cancels(make_proxy, pg):
    """Execute + Flush (no Sync) never earns a ReadyForQuery; the proxy must still cancel the
    running query when the client disappears, or pg_sleep(60) would run on for a minute."""
    from dbproxy.protocol.messages import Bind, Execute, Flush, Parse
    from tests.rawclient import RawClient

    p = make_proxy(agent_auth="password")
    c = RawClient(p.host, p.port)
    frames = c.login(AGENT, AGENT_PASSWORD)
    pid = next(int.from_bytes(f.body[:4], "big") for f in frames if f.type_char == "K")
    c.send(Parse("", "select pg_sleep(60)").encode() + Bind("", "").encode() + Execute("").encode()
           + Flush().encode())
    assert _wait_until(lambda: (_activity(pg, pid) or ("", ""))[0] == "active", 10)
    c.close()
    assert _wait_until(lambda: _activity(pg, pid) is None, 10), _activity(pg, pid)

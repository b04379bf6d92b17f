"""The journal against a real PostgreSQL: schema set-up, statements, outcomes, recovery after a
restart, and statements recorded while the journal database is away."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import psycopg
import pytest

from dbproxy.journal.records import StatementRecord
from dbproxy.journal.store import (
    MAX_SQL_CHARS,
    RESTART_REASON,
    SCHEMA_VERSION,
    UNKNOWN_COMMIT_REASON,
    FinishedTransaction,
    Journal,
    JournalError,
)
from sandbox.pgcluster import free_port
from tests.conftest import Postgres
from tests.waiting import await_until


@dataclass
class JournalDb:
    """A fresh database for one test, and a superuser connection to it for looking inside."""

    name: str
    dsn: str
    admin: asyncpg.Connection


@pytest.fixture(scope="module")
def journal_database(pg: Postgres) -> Iterator[str]:
    """One database for this module; each test starts from it without a `dbproxy` schema."""
    name = f"journal_tests_{os.getpid()}"
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as server:
        server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as server:
        server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def jdb(pg: Postgres, journal_database: str) -> AsyncIterator[JournalDb]:
    name = journal_database
    server = await asyncpg.connect(pg.dsn("postgres"))
    try:
        await server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await server.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
    finally:
        await server.close()
    admin = await asyncpg.connect(pg.dsn(name))
    try:
        await admin.execute("DROP SCHEMA IF EXISTS dbproxy CASCADE")
        yield JournalDb(name, pg.dsn(name), admin)
    finally:
        await admin.close()


@pytest.fixture
async def journal(jdb: JournalDb) -> AsyncIterator[Journal]:
    j = await Journal.open(jdb.dsn, instance="me")
    yield j
    await j.close()


def status_via(con: asyncpg.Connection) -> Callable[[int], Awaitable[str | None]]:
    """The xact_status the proxy passes to recover: ask the server."""

    async def xact_status(xid: int) -> str | None:
        return await con.fetchval("SELECT txid_status($1)", xid)

    return xact_status


async def new_tx(j: Journal, agent: str = "coder", mode: str = "hold") -> int:
    return await j.start(agent=agent, session=7, database="app", mode=mode, backend_pid=4242)


# -- schema --------------------------------------------------------------------------------------


async def test_schema_is_created_once_and_reopening_keeps_data(jdb: JournalDb):
    j = await Journal.open(jdb.dsn, instance="first")
    tx = await new_tx(j)
    await j.close()
    tables = await jdb.admin.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'dbproxy' ORDER BY 1")
    assert [r[0] for r in tables] == ["instances", "schema_version", "statements", "transactions"]
    j2 = await Journal.open(jdb.dsn, instance="second")
    try:
        assert await jdb.admin.fetch("SELECT component, version FROM dbproxy.schema_version") == [
            ("journal", SCHEMA_VERSION)]
        got = await j2.get(tx)
        assert got is not None and got[0].agent == "coder"
        instances = await jdb.admin.fetch("SELECT id, pid, hostname FROM dbproxy.instances ORDER BY id")
        assert [r["id"] for r in instances] == ["first", "second"]
        assert all(r["pid"] == os.getpid() and r["hostname"] for r in instances)
    finally:
        await j2.close()


async def test_concurrent_opens_on_a_fresh_database(jdb: JournalDb):
    journals = await asyncio.gather(*(Journal.open(jdb.dsn, instance=f"i{n}") for n in range(4)))
    try:
        assert await jdb.admin.fetchval("SELECT count(*) FROM dbproxy.schema_version") == 1
        ids = [await new_tx(j) for j in journals]
        assert len(set(ids)) == 4
    finally:
        for j in journals:
            await j.close()


async def test_a_newer_schema_is_refused(jdb: JournalDb):
    await (await Journal.open(jdb.dsn, instance="a")).close()
    await jdb.admin.execute("UPDATE dbproxy.schema_version SET version = 99 WHERE component = 'journal'")
    with pytest.raises(JournalError, match="schema version 99"):
        await Journal.open(jdb.dsn, instance="b")


async def test_unreachable_database_error_names_host_and_port_only():
    port = free_port()
    with pytest.raises(JournalError) as info:
        await Journal.open(f"postgresql://someone:s3cret-pw@127.0.0.1:{port}/db?connect_timeout=3", instance="x")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "s3cret-pw" not in str(info.value) and "someone" not in str(info.value)


async def test_open_with_a_unix_socket_url_and_client_only_libpq_parameters(pg: Postgres, jdb: JournalDb):
    if pg.cluster is None:
        pytest.skip("needs the local test cluster (DBPROXY_TEST_DSN names a server without its socket)")
    url = pg.cluster.url(jdb.name, tcp=False) + "&sslmode=disable&connect_timeout=5&keepalives=1"
    j = await Journal.open(url, instance="socket")
    try:
        assert j.display.startswith("socket /") and str(pg.cluster.port) in j.display
        assert await new_tx(j) >= 1
    finally:
        await j.close()


# -- statements ----------------------------------------------------------------------------------


async def test_statements_round_trip_in_order_with_seq_per_transaction(journal: Journal):
    a, b = await new_tx(journal), await new_tx(journal, agent="other", mode="undo")
    assert b > a
    # Interleaved, more than one write batch; seq counts per transaction in call order.
    for i in range(1200):
        journal.record_statement(a, tx_no=1 + i // 600, sql=f"insert into t values ({i})", tag="INSERT 0 1", rows=1)
        if i % 3 == 0:
            journal.record_statement(b, tx_no=1, sql=f"select {i}", tag="SELECT 1", rows=1)
    journal.record_statement(b, tx_no=2, sql="insert into nope values (1)", tag=None, rows=None,
                             sqlstate="42P01", error='relation "nope" does not exist')
    await journal.flush()

    got = await journal.get(a)
    assert got is not None
    rec, stmts = got
    assert (rec.id, rec.agent, rec.session, rec.database, rec.mode, rec.backend_pid, rec.outcome) == (
        a, "coder", 7, "app", "hold", 4242, "open")
    assert rec.statements == 1200 and rec.statements_lost == 0
    assert rec.started_at.tzinfo is not None and rec.ended_at is None and rec.held_at is None
    assert [s.seq for s in stmts] == list(range(1, 1201))
    assert [s.sql for s in stmts] == [f"insert into t values ({i})" for i in range(1200)]
    assert [s.tx_no for s in stmts] == [1] * 600 + [2] * 600
    assert all(s.tag == "INSERT 0 1" and s.rows == 1 and s.at.tzinfo is not None for s in stmts)
    assert [s.at for s in stmts] == sorted(s.at for s in stmts)

    rec_b, stmts_b = await journal.get(b)  # type: ignore[misc]
    assert rec_b.mode == "undo" and rec_b.statements == 401
    assert [s.seq for s in stmts_b] == list(range(1, 402))
    assert [s.sql for s in stmts_b[:-1]] == [f"select {i}" for i in range(0, 1200, 3)]
    last = stmts_b[-1]
    assert (last.tx_no, last.tag, last.rows, last.sqlstate, last.error) == (
        2, None, None, "42P01", 'relation "nope" does not exist')

    assert await journal.get(a + b + 1000) is None


async def test_odd_statements_are_stored_and_a_bad_record_does_not_block_others(journal: Journal, jdb: JournalDb):
    tx = await new_tx(journal)
    huge = "select '" + "x" * (MAX_SQL_CHARS + 5000) + "'"
    journal.record_statement(tx, tx_no=1, sql="select 1", tag="SELECT 1", rows=1)
    journal.record_statement(tx, tx_no=1, sql=huge, tag="SELECT 1", rows=1)
    journal.record_statement(tx, tx_no=1, sql="select 'a\udcff'", tag=None, rows=None, error="nul\x00here")
    journal.record_statement(999_999_999, tx_no=1, sql="select 'orphan'", tag=None, rows=None)  # no such transaction
    journal.record_statement(tx, tx_no=1, sql="select 4", tag="SELECT 1", rows=1)
    await asyncio.wait_for(journal.flush(), 20)

    rec, stmts = await journal.get(tx)  # type: ignore[misc]
    assert [s.seq for s in stmts] == [1, 2, 3, 4]
    assert stmts[0].sql == "select 1" and stmts[3].sql == "select 4"
    assert stmts[1].sql.startswith(huge[:1000]) and len(huge) > len(stmts[1].sql) >= MAX_SQL_CHARS
    assert f"the original had {len(huge)}" in stmts[1].sql
    assert stmts[2].sql.startswith("select 'a") and stmts[2].error is not None and "here" in stmts[2].error
    assert rec.statements == 4
    assert await jdb.admin.fetchval("SELECT count(*) FROM dbproxy.statements WHERE tx_id = 999999999") == 0


async def test_finished_transactions_and_their_statements_are_written_together(journal: Journal, jdb: JournalDb):
    """Pass-through transactions that already ended go in with their statements in one write: ids
    in order, statements numbered per transaction and counted, odd text stored as the one-by-one
    path stores it."""
    t0 = datetime.now().astimezone()
    huge = "select '" + "x" * (MAX_SQL_CHARS + 5000) + "'"

    def finished(agent: str, n: int) -> FinishedTransaction:
        return FinishedTransaction(agent, 3, "app", "passthrough", 77, t0, t0, "committed", n)

    def stmt(sql: str, tx_no: int = 1, **kw: object) -> StatementRecord:
        return StatementRecord(seq=0, tx_no=tx_no, sql=sql, at=t0, **kw)  # type: ignore[arg-type]

    before = await new_tx(journal)
    batch = [
        (finished("a", 1), [stmt("insert into t values (1)", tag="INSERT 0 1", rows=1),
                            stmt("update t set v = $1", params=["4\x002", None], tag="UPDATE 2", rows=2)]),
        (finished("b", 2), [stmt(huge, tag="SELECT 1", rows=1), stmt("select 'a\udcff'", tx_no=2, error="nul\x00here",
                                                                     sqlstate="22000")]),
        (finished("c", 1), [stmt("delete from t")]),
    ]
    ids = await journal.insert_finished_with_statements(batch)
    assert len(ids) == 3 and before < ids[0] < ids[1] < ids[2]
    got = [await journal.get(i) for i in ids]
    assert [(r.agent, r.statements, r.outcome, r.mode, r.agent_transactions) for r, _ in got] == [  # type: ignore[misc]
        ("a", 2, "committed", "passthrough", 1), ("b", 2, "committed", "passthrough", 2),
        ("c", 1, "committed", "passthrough", 1)]
    (_, a), (_, b), (_, c) = got  # type: ignore[misc]
    assert [(s.seq, s.sql, s.tag, s.rows) for s in a] == [(1, "insert into t values (1)", "INSERT 0 1", 1),
                                                          (2, "update t set v = $1", "UPDATE 2", 2)]
    assert a[1].params == ["4\\02", None]  # jsonb has no NUL: written as in SQL text
    assert b[0].seq == 1 and f"the original had {len(huge)}" in b[0].sql and len(b[0].sql) < len(huge)
    assert (b[1].seq, b[1].tx_no, b[1].sqlstate) == (2, 2, "22000") and "here" in (b[1].error or "")
    assert [s.sql for s in c] == ["delete from t"]
    journal.record_statement(ids[2], tx_no=1, sql="-- later", tag=None, rows=None)
    await journal.flush()
    rec_c, c = await journal.get(ids[2])  # type: ignore[misc]
    assert [(s.seq, s.sql) for s in c] == [(1, "delete from t"), (2, "-- later")] and rec_c.statements == 2
    assert await journal.insert_finished_with_statements([]) == []


async def test_buffer_overflow_drops_oldest_and_records_the_gap(jdb: JournalDb):
    j = await Journal.open(jdb.dsn, instance="small", max_buffer=10)
    try:
        tx = await new_tx(j)
        for i in range(25):  # no await in between: the writer cannot drain the buffer meanwhile
            j.record_statement(tx, tx_no=1, sql=f"select {i}", tag="SELECT 1", rows=1)
        await asyncio.wait_for(j.flush(), 20)
        rec, stmts = await j.get(tx)  # type: ignore[misc]
        assert [s.seq for s in stmts] == list(range(16, 26))
        assert [s.sql for s in stmts] == [f"select {i}" for i in range(15, 25)]
        assert (rec.statements, rec.statements_lost) == (10, 15)
        # Later statements carry on numbering after the gap.
        j.record_statement(tx, tx_no=2, sql="select 'after'", tag="SELECT 1", rows=1)
        await j.flush()
        rec, stmts = await j.get(tx)  # type: ignore[misc]
        assert stmts[-1].seq == 26 and rec.statements == 11
    finally:
        await j.close()


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(record.getMessage())


async def test_statements_recorded_while_the_database_is_away_are_written_after(
        pg: Postgres, jdb: JournalDb):
    logger = logging.getLogger("dbproxy")
    capture, old_level = _Capture(), logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    j = await Journal.open(jdb.dsn, instance="me")
    server = await asyncpg.connect(pg.dsn("postgres"))
    try:
        tx = await new_tx(j)
        j.record_statement(tx, tx_no=1, sql="select 'before'", tag="SELECT 1", rows=1)
        await j.flush()

        # Cut the journal off: no new connections to its database, and its open ones killed.
        await server.execute(f'ALTER DATABASE "{jdb.name}" ALLOW_CONNECTIONS false')
        killed = await server.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND application_name = 'dbproxy journal'", jdb.name)
        assert killed >= 1

        for i in range(3):
            j.record_statement(tx, tx_no=1, sql=f"select 'during {i}'", tag="SELECT 1", rows=1)  # must not raise
        with pytest.raises(TimeoutError):  # not durable while the database is away
            await asyncio.wait_for(j.flush(), 0.5)
        with pytest.raises(JournalError, match=r"127\.0\.0\.1:\d+"):
            await new_tx(j)
        # Logged by the background writer at its first failed batch, whenever it got to run.
        await await_until(lambda: "journal_unavailable" in capture.events, what="the writer to log the outage")

        await server.execute(f'ALTER DATABASE "{jdb.name}" ALLOW_CONNECTIONS true')
        await asyncio.wait_for(j.flush(), 20)
        # Killed again, without notice: the next call reconnects.
        await server.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = $1 AND application_name = 'dbproxy journal'", jdb.name)
        await j.update(tx, agent_transactions=1)
        j.record_statement(tx, tx_no=1, sql="select 'after'", tag="SELECT 1", rows=1)
        await asyncio.wait_for(j.flush(), 20)
        rec, stmts = await j.get(tx)  # type: ignore[misc]
        assert [(s.seq, s.sql) for s in stmts] == [
            (1, "select 'before'"), (2, "select 'during 0'"), (3, "select 'during 1'"), (4, "select 'during 2'"),
            (5, "select 'after'")]
        assert rec.statements == 5 and rec.statements_lost == 0 and rec.agent_transactions == 1
        assert "journal_available" in capture.events
    finally:
        await server.execute(f'ALTER DATABASE "{jdb.name}" ALLOW_CONNECTIONS true')
        await server.close()
        await j.close()
        logger.removeHandler(capture)
        logger.setLevel(old_level)


async def test_close_writes_what_is_buffered_and_marks_the_instance_stopped(jdb: JournalDb):
    j = await Journal.open(jdb.dsn, instance="leaving")
    tx = await new_tx(j)
    for i in range(5):
        j.record_statement(tx, tx_no=1, sql=f"select {i}", tag="SELECT 1", rows=1)
    await j.close()
    assert await jdb.admin.fetchval("SELECT count(*) FROM dbproxy.statements WHERE tx_id = $1", tx) == 5
    assert await jdb.admin.fetchval("SELECT stopped_at IS NOT NULL FROM dbproxy.instances WHERE id = 'leaving'")
    with pytest.raises(JournalError):
        await j.flush()


async def test_heartbeat_keeps_last_seen_fresh(jdb: JournalDb):
    j = await Journal.open(jdb.dsn, instance="beating", heartbeat_interval=0.1)
    try:
        first = await jdb.admin.fetchval("SELECT last_seen FROM dbproxy.instances WHERE id = 'beating'")

        async def refreshed() -> bool:
            return await jdb.admin.fetchval("SELECT last_seen FROM dbproxy.instances WHERE id = 'beating'") > first

        # Every 0.1 s, but on a busy machine the heartbeat task may run late: wait, do not sleep.
        await await_until(refreshed, what="a heartbeat")
    finally:
        await j.close()


# -- outcomes ------------------------------------------------------------------------------------


async def test_update_sets_fields_and_never_overwrites_a_final_outcome(journal: Journal):
    tx = await new_tx(journal)
    assert await journal.update(tx, xid=123456, held=True, outcome="pending", agent_transactions=2)
    rec = (await journal.get(tx))[0]  # type: ignore[index]
    assert (rec.outcome, rec.xid, rec.agent_transactions, rec.ended_at) == ("pending", 123456, 2, None)
    held_at = rec.held_at
    assert isinstance(held_at, datetime) and held_at.tzinfo is not None

    assert await journal.update(tx, held=True, agent_transactions=3)  # held_at is set only once
    rec = (await journal.get(tx))[0]  # type: ignore[index]
    assert rec.held_at == held_at and rec.agent_transactions == 3 and rec.outcome == "pending"

    assert await journal.update(tx, outcome="committing", decided_by="alice")
    assert (await journal.get(tx))[0].ended_at is None  # type: ignore[index]
    assert await journal.update(tx, outcome="committed", reason="looks right")
    rec = (await journal.get(tx))[0]  # type: ignore[index]
    assert rec.outcome == "committed" and rec.ended_at is not None and rec.ended_at >= held_at
    assert (rec.decided_by, rec.reason) == ("alice", "looks right")

    for other in ("rolled back", "committed", "open", "pending"):
        assert await journal.update(tx, outcome=other, decided_by="bob", reason="too late") is False
    again = (await journal.get(tx))[0]  # type: ignore[index]
    assert again == rec

    with pytest.raises(JournalError, match="no journal transaction"):
        await journal.update(tx + 1000, outcome="rolled back")
    with pytest.raises(ValueError):
        await journal.update(tx, outcome="maybe")


async def test_statements_after_the_outcome_continue_the_numbering(journal: Journal):
    tx = await new_tx(journal)
    journal.record_statement(tx, tx_no=1, sql="begin", tag="BEGIN", rows=None)
    journal.record_statement(tx, tx_no=1, sql="delete from t", tag="DELETE 3", rows=3)
    assert await journal.update(tx, outcome="rolled back", decided_by="agent")
    journal.record_statement(tx, tx_no=1, sql="rollback", tag="ROLLBACK", rows=None)
    await journal.flush()
    rec, stmts = await journal.get(tx)  # type: ignore[misc]
    assert [(s.seq, s.sql) for s in stmts] == [(1, "begin"), (2, "delete from t"), (3, "rollback")]
    assert rec.statements == 3


async def test_list_filters_and_orders_newest_first(journal: Journal):
    ids = {}
    for name, agent, outcome in [("a1", "ann", "committed"), ("b1", "bob", "pending"), ("a2", "ann", "pending"),
                                 ("b2", "bob", "rolled back"), ("a3", "ann", None)]:
        ids[name] = await new_tx(journal, agent=agent)
        if outcome:
            await journal.update(ids[name], outcome=outcome)
    everything = await journal.list()
    assert [t.id for t in everything] == sorted(ids.values(), reverse=True)
    assert [t.id for t in await journal.list(agent="ann")] == [ids["a3"], ids["a2"], ids["a1"]]
    assert [t.id for t in await journal.list(outcome="pending")] == [ids["a2"], ids["b1"]]
    assert [t.id for t in await journal.list(outcome="pending", agent="bob")] == [ids["b1"]]
    assert [t.id for t in await journal.list(limit=2)] == [ids["a3"], ids["b2"]]
    assert [t.id for t in await journal.list(before_id=ids["b2"], limit=2)] == [ids["a2"], ids["b1"]]
    assert [t.id for t in await journal.list(agent="ann", before_id=ids["a2"])] == [ids["a1"]]
    assert await journal.list(agent="nobody") == []


# -- recovery ------------------------------------------------------------------------------------


async def test_recover_ends_open_and_pending_transactions_of_gone_instances(jdb: JournalDb, journal: Journal):
    ghost = await Journal.open(jdb.dsn, instance="ghost")  # will look crashed: heartbeat far in the past
    alive = await Journal.open(jdb.dsn, instance="alive")
    stopped = await Journal.open(jdb.dsn, instance="stopped")
    try:
        g_open, g_pending, g_done = await new_tx(ghost), await new_tx(ghost), await new_tx(ghost)
        await ghost.update(g_pending, outcome="pending", held=True)
        await ghost.update(g_done, outcome="committed", decided_by="alice")
        a_pending = await new_tx(alive)
        await alive.update(a_pending, outcome="pending")
        s_open = await new_tx(stopped)
        nobody = await new_tx(stopped)
        await jdb.admin.execute("UPDATE dbproxy.transactions SET instance = 'never-registered' WHERE id = $1", nobody)
        mine = await new_tx(journal)
        await stopped.close()
        # 'me' looks stale too (say its heartbeat failed for a while): still never its own rows.
        await jdb.admin.execute(
            "UPDATE dbproxy.instances SET last_seen = now() - interval '1 hour' WHERE id IN ('ghost', 'me')")

        async def no_status(xid: int) -> str | None:
            raise AssertionError("no xid here, nothing to ask")

        changed = await journal.recover(no_status)
        assert sorted(changed) == sorted([g_open, g_pending, s_open, nobody])
        for tx in changed:
            rec = (await journal.get(tx))[0]  # type: ignore[index]
            assert (rec.outcome, rec.decided_by, rec.reason) == ("rolled back", "restart", RESTART_REASON)
            assert rec.ended_at is not None
        assert (await journal.get(g_done))[0].decided_by == "alice"  # type: ignore[index]
        assert (await journal.get(a_pending))[0].outcome == "pending"  # type: ignore[index]
        assert (await journal.get(mine))[0].outcome == "open"  # type: ignore[index]
        assert await journal.recover(no_status) == []  # nothing left to do
    finally:
        await ghost.close()
        await alive.close()


async def test_recover_instance_resolves_commits_from_the_upstream_transaction_status(
        pg: Postgres, jdb: JournalDb, journal: Journal):
    upstream = await asyncpg.connect(pg.dsn("postgres"))
    holder = await asyncpg.connect(pg.dsn("postgres"))
    prev = await Journal.open(jdb.dsn, instance="prev")  # its heartbeat is fresh: only recover_instance may act
    try:
        async with upstream.transaction():
            committed_xid = await upstream.fetchval("SELECT txid_current()")
        tr = upstream.transaction()
        await tr.start()
        aborted_xid = await upstream.fetchval("SELECT txid_current()")
        await tr.rollback()
        hold = holder.transaction()
        await hold.start()
        running_xid = await holder.fetchval("SELECT txid_current()")

        rows = {}
        for name, xid in [("committed", committed_xid), ("aborted", aborted_xid), ("running", running_xid),
                          ("no_xid", None)]:
            rows[name] = await new_tx(prev)
            await prev.update(rows[name], outcome="pending", held=True, xid=xid)
            await prev.update(rows[name], outcome="committing", decided_by="alice")
        relayed = await new_tx(prev, mode="passthrough")  # a COMMIT relayed but never recorded
        await prev.update(relayed, xid=committed_xid)
        held = await new_tx(prev)
        await prev.update(held, outcome="pending", xid=running_xid)

        assert await journal.recover(status_via(upstream)) == []  # prev's heartbeat is fresh
        changed = await journal.recover_instance("prev", status_via(upstream))
        assert sorted(changed) == sorted([rows["committed"], rows["aborted"], rows["no_xid"], relayed, held])

        async def rec(tx: int):
            return (await journal.get(tx))[0]  # type: ignore[index]

        r = await rec(rows["committed"])
        assert (r.outcome, r.decided_by) == ("committed", "alice") and r.ended_at is not None
        r = await rec(rows["aborted"])
        assert (r.outcome, r.decided_by) == ("failed", "alice") and r.reason and "rolled" in r.reason
        r = await rec(rows["no_xid"])
        assert (r.outcome, r.reason) == ("failed", UNKNOWN_COMMIT_REASON)
        r = await rec(rows["running"])
        assert r.outcome == "committing" and r.ended_at is None  # still in progress upstream: left alone
        r = await rec(relayed)
        assert (r.outcome, r.decided_by) == ("committed", "restart")
        r = await rec(held)
        assert (r.outcome, r.decided_by, r.reason) == ("rolled back", "restart", RESTART_REASON)
        assert await jdb.admin.fetchval("SELECT stopped_at IS NOT NULL FROM dbproxy.instances WHERE id = 'prev'")

        await hold.rollback()  # now the upstream knows: aborted
        assert await journal.recover(status_via(upstream)) == [rows["running"]]  # prev is marked stopped
        assert (await rec(rows["running"])).outcome == "failed"
        with pytest.raises(ValueError):
            await journal.recover_instance("me", status_via(upstream))
    finally:
        await prev.close()
        await holder.close()
        await upstream.close()


async def test_restart_notices_are_given_once_per_agent(jdb: JournalDb, journal: Journal):
    old = await Journal.open(jdb.dsn, instance="old")
    try:
        ann1, ann2, bob1 = await new_tx(old, "ann"), await new_tx(old, "ann"), await new_tx(old, "bob")
        ann_done = await new_tx(old, "ann")
        await old.update(ann_done, outcome="rolled back", decided_by="agent")
        ann_mine = await new_tx(journal, "ann")
        await journal.update(ann_mine, outcome="expired", decided_by="expiry")

        async def unused(xid: int) -> str | None:
            return None

        assert sorted(await journal.recover_instance("old", unused)) == [ann1, ann2, bob1]
        notices = await journal.restart_notices("ann")
        assert [t.id for t in notices] == [ann1, ann2]
        assert all(t.outcome == "rolled back" and t.decided_by == "restart" and t.agent == "ann" for t in notices)
        assert await journal.restart_notices("ann") == []
        assert [t.id for t in await journal.restart_notices("bob")] == [bob1]
        assert await journal.restart_notices("bob") == []
    finally:
        await old.close()

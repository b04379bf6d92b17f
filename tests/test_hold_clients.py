"""Hold mode through each real client: psql, psycopg 3, asyncpg, SQLAlchemy, pgbench.

Every write test runs twice (`decision`): before the reviewer decides, a second *direct*
connection sees nothing while the agent sees its own writes; after a commit through the review
API the direct connection sees everything, after a rollback nothing. Read-only work is never
held, and NOTIFY is delivered only when the reviewer commits.

The `review` and `table` fixtures are the escape tests' own, imported (hence F811: pytest passes
fixtures as arguments of the same name).
"""
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import io
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors as pgerrors
from psycopg.pq import TransactionStatus
from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine, insert, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tests.conftest import Postgres, RunningProxy, run_tool
from tests.test_hold_escapes import INITIAL, Review, agent, agent_ids, direct

# isort: split
from tests.test_hold_escapes import review, table  # noqa: F401

ROWS = [(1, "a"), (2, "b"), (3, "c")]
DECISIONS = pytest.mark.parametrize("decision", ["commit", "rollback"])


def rows(pg: Postgres, table: str) -> list[tuple[int, str | None]]:
    return [tuple(r) for r in direct(pg, f"SELECT id, v FROM {table} ORDER BY id")]  # type: ignore[misc]


def decide(review: Review, tx: int, decision: str) -> None:
    if decision == "commit":
        review.commit(tx)
    else:
        review.rollback(tx)
    assert tx not in review.new()


def check_decision(pg: Postgres, review: Review, table: str, tx: int, decision: str,
                   expected: list[tuple[int, str | None]]) -> None:
    """Before: nothing visible directly. After commit: `expected`. After rollback: the initial rows."""
    assert rows(pg, table) == ROWS
    decide(review, tx, decision)
    assert rows(pg, table) == (expected if decision == "commit" else ROWS)


# -- psql -----------------------------------------------------------------------------------------------


def psql(pg_bin: Path, hp: RunningProxy, *args: str, input: str | None = None) -> Any:
    return run_tool(pg_bin, "psql", ["-X", "-At", "-v", "ON_ERROR_STOP=1", *args], hp.env(), input=input)


@DECISIONS
def test_psql_script(pg, pg_bin, hold_proxy, table, review, decision):
    script = f"""
INSERT INTO {table} VALUES (10, 'psql');
BEGIN;
UPDATE {table} SET v = 'psql-upd' WHERE id = 1;
DELETE FROM {table} WHERE id = 2;
COMMIT;
SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM {table};
"""
    res = psql(pg_bin, hold_proxy, input=script)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "1:psql-upd,3:c,10:psql"  # the agent sees its writes
    tx = review.only()
    assert f"held for review as #{tx}" in res.stderr
    check_decision(pg, review, table, tx, decision, [(1, "psql-upd"), (3, "c"), (10, "psql")])


@DECISIONS
def test_psql_multi_statement_command(pg, pg_bin, hold_proxy, table, review, decision):
    res = psql(pg_bin, hold_proxy, "-c", f"INSERT INTO {table} VALUES (10, 'x'); UPDATE {table} SET v = 'y' "
               f"WHERE id = 10; SELECT v FROM {table} WHERE id = 10")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines() == ["INSERT 0 1", "UPDATE 1", "y"]  # psql prints every result
    tx = review.only()
    check_decision(pg, review, table, tx, decision, [*ROWS, (10, "y")])


def test_psql_on_error_stop(pg, pg_bin, hold_proxy, table, review):
    script = f"""
\\set ON_ERROR_STOP on
INSERT INTO {table} VALUES (10, 'before');
VACUUM {table};
INSERT INTO {table} VALUES (11, 'after');
"""
    res = run_tool(pg_bin, "psql", ["-X", "-At"], hold_proxy.env(), input=script)  # ON_ERROR_STOP from the script
    assert res.returncode == 3, res.stdout + res.stderr
    assert "dbproxy refused this statement" in res.stderr
    tx = review.only()
    sqls = [s["sql"] for s in review.show(tx)["statements"]]
    assert not any("'after'" in s for s in sqls), sqls  # psql stopped at the error
    check_decision(pg, review, table, tx, "commit", [*ROWS, (10, "before")])


def test_psql_explicit_rollback_is_not_held(pg, pg_bin, hold_proxy, table, review):
    res = psql(pg_bin, hold_proxy, input=f"BEGIN;\nDELETE FROM {table};\nROLLBACK;\nSELECT count(*) FROM {table};\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "3"
    assert "held for review" not in res.stderr
    assert review.new() == set()
    assert rows(pg, table) == ROWS


# -- psycopg 3 -----------------------------------------------------------------------------------------


@DECISIONS
def test_psycopg_autocommit(pg, hold_proxy, table, review, decision):
    with agent(hold_proxy) as a:
        a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (10, "ten"))
        a.execute(f"UPDATE {table} SET v = %s WHERE id = %s", ("uno", 1))
        a.execute(f"DELETE FROM {table} WHERE id = %s", (2,))
        assert a.rows(f"SELECT id, v FROM {table} ORDER BY id") == [(1, "uno"), (3, "c"), (10, "ten")]
        tx = review.only()
        assert a.held_ids() and set(a.held_ids()) == {tx}  # every implicit transaction joined one chain
        assert len(review.show(tx)["statements"]) >= 3
        assert rows(pg, table) == ROWS
    check_decision(pg, review, table, tx, decision, [(1, "uno"), (3, "c"), (10, "ten")])


@DECISIONS
def test_psycopg_non_autocommit(pg, hold_proxy, table, review, decision):
    with agent(hold_proxy, autocommit=False) as a:
        a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (10, "ten"))
        assert a.conn.info.transaction_status == TransactionStatus.INTRANS
        assert review.new() == set()  # not held until the agent commits
        a.conn.commit()
        tx = review.only()
        assert a.held_ids() == [tx]
        a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (11, "discarded"))
        a.conn.rollback()  # only this agent transaction
        a.execute(f"UPDATE {table} SET v = 'tres' WHERE id = 3")
        a.conn.commit()
        assert agent_ids(a, table) == [*INITIAL, 10]
        a.conn.commit()
        assert review.new() == {tx}
        assert rows(pg, table) == ROWS
    check_decision(pg, review, table, tx, decision, [(1, "a"), (2, "b"), (3, "tres"), (10, "ten")])


@DECISIONS
def test_psycopg_transaction_block(pg, hold_proxy, table, review, decision):
    with agent(hold_proxy) as a:
        with a.conn.transaction():
            a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (10, "ten"))
            with a.conn.transaction():  # a savepoint of the agent's own
                a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (11, "eleven"))
        with pytest.raises(ZeroDivisionError), a.conn.transaction():
            a.execute(f"DELETE FROM {table}")
            raise ZeroDivisionError
        with a.conn.transaction():
            a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (12, "twelve"))
            with pytest.raises(pgerrors.UniqueViolation), a.conn.transaction():
                a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, "duplicate"))
        assert a.conn.info.transaction_status == TransactionStatus.IDLE
        assert agent_ids(a, table) == [*INITIAL, 10, 11, 12]
        tx = review.only()
        assert rows(pg, table) == ROWS
    check_decision(pg, review, table, tx, decision, [*ROWS, (10, "ten"), (11, "eleven"), (12, "twelve")])


def test_rollback_to_savepoint_after_an_error_recovers_the_transaction(pg, hold_proxy, table, review):
    """PostgreSQL: after ROLLBACK TO SAVEPOINT the transaction is healthy again and COMMIT commits
    (the pattern ORMs use for "insert, or on conflict carry on")."""
    with agent(hold_proxy) as a:
        a.execute("BEGIN")
        a.execute(f"INSERT INTO {table} VALUES (10, 'kept')")
        a.execute("SAVEPOINT s")
        with pytest.raises(pgerrors.UniqueViolation):
            a.execute(f"INSERT INTO {table} VALUES (1, 'duplicate')")
        assert a.conn.info.transaction_status == TransactionStatus.INERROR
        a.execute("ROLLBACK TO SAVEPOINT s")
        assert a.conn.info.transaction_status == TransactionStatus.INTRANS
        a.execute(f"INSERT INTO {table} VALUES (11, 'after the savepoint')")
        assert a.execute("COMMIT").statusmessage == "COMMIT"
        assert agent_ids(a, table) == [*INITIAL, 10, 11]
        tx = review.only()
    check_decision(pg, review, table, tx, "commit", [*ROWS, (10, "kept"), (11, "after the savepoint")])


@DECISIONS
def test_psycopg_pipeline(pg, hold_proxy, table, review, decision):
    with agent(hold_proxy) as a:
        with a.conn.pipeline():
            a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (10, "p1"))
            a.execute(f"UPDATE {table} SET v = %s WHERE id = %s", ("p2", 2))
            cur = a.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone() == (4,)
        with a.conn.pipeline() as p:
            a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (11, "p3"))
            p.sync()
            a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (12, "p4"))
        assert agent_ids(a, table) == [*INITIAL, 10, 11, 12]
        tx = review.only()
        assert rows(pg, table) == ROWS
    check_decision(pg, review, table, tx, decision, [(1, "a"), (2, "p2"), (3, "c"), (10, "p1"), (11, "p3"),
                                                     (12, "p4")])


def test_psycopg_pipeline_error_discards_its_implicit_transaction(pg, hold_proxy, table, review):
    """Statements up to a Sync form one implicit transaction: an error rolls all of them back."""
    with agent(hold_proxy) as a:
        with pytest.raises(pgerrors.UniqueViolation), a.conn.pipeline():
            a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (10, "lost"))
            a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, "duplicate"))
            a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (11, "never ran"))
        assert a.conn.info.transaction_status == TransactionStatus.IDLE
        assert agent_ids(a, table) == INITIAL
        assert review.new() == set()
    assert rows(pg, table) == ROWS


@DECISIONS
def test_psycopg_executemany(pg, hold_proxy, table, review, decision):
    new = [(i, f"many{i}") for i in range(10, 30)]
    with agent(hold_proxy) as a:
        with a.conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} (id, v) VALUES (%s, %s)", new)
            cur.executemany(f"UPDATE {table} SET v = %s WHERE id = %s", [("x1", 1), ("x2", 2)])
        assert a.rows(f"SELECT count(*) FROM {table}") == [(23,)]
        tx = review.only()
        assert rows(pg, table) == ROWS
    check_decision(pg, review, table, tx, decision, [(1, "x1"), (2, "x2"), (3, "c"), *new])


@DECISIONS
def test_psycopg_binding_styles(pg, hold_proxy, table, review, decision):
    """Server-side binding (the default), named prepared statements, and client-side binding."""
    with agent(hold_proxy) as a:
        a.execute(f"INSERT INTO {table} VALUES (%s, %s)", (10, "server-side"))
        for i in range(11, 14):  # prepare=True: a named statement, parsed once, executed three times
            a.conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, "prepared"), prepare=True)
        with psycopg.ClientCursor(a.conn) as cur:
            cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (14, "client-side"))
            cur.execute(f"UPDATE {table} SET v = %s WHERE id = %s", ("o'quote", 1))
        with a.conn.cursor(binary=True) as cur:
            cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (15, "binary"))
        assert a.rows(f"SELECT v FROM {table} WHERE id = 1") == [("o'quote",)]
        assert agent_ids(a, table) == [*INITIAL, 10, 11, 12, 13, 14, 15]
        tx = review.only()
        assert rows(pg, table) == ROWS
    check_decision(pg, review, table, tx, decision,
                   [(1, "o'quote"), (2, "b"), (3, "c"), (10, "server-side"), (11, "prepared"), (12, "prepared"),
                    (13, "prepared"), (14, "client-side"), (15, "binary")])


@DECISIONS
def test_psycopg_copy_from_stdin(pg, hold_proxy, table, review, decision):
    new = [(i, f"copy\t{i}\\") for i in range(10, 110)]
    with agent(hold_proxy) as a:
        with a.conn.cursor() as cur:
            with cur.copy(f"COPY {table} (id, v) FROM STDIN") as cp:
                for r in new[:50]:
                    cp.write_row(r)
            assert cur.rowcount == 50
            with cur.copy(f"COPY {table} (id, v) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int4", "text"])
                for r in new[50:]:
                    cp.write_row(r)
        assert a.rows(f"SELECT count(*) FROM {table}") == [(103,)]
        tx = review.only()
        assert rows(pg, table) == ROWS
    check_decision(pg, review, table, tx, decision, [*ROWS, *new])


def test_agent_killed_during_copy_from_stdin_releases_the_upstream(pg, pg_bin, hold_proxy, table, review):
    """A client that dies in the middle of COPY FROM STDIN must not leave the upstream backend
    waiting for COPY data forever (holding its locks, invisible to review)."""
    proc = subprocess.Popen([str(pg_bin / "psql"), "-X", "-c", f"COPY {table} FROM STDIN"], env=hold_proxy.env(),
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"10\tcopied\n")
        proc.stdin.flush()
        in_copy = f"SELECT pid FROM pg_stat_activity WHERE query LIKE '%COPY {table} FROM STDIN%' " \
            "AND pid <> pg_backend_pid()"
        deadline = time.monotonic() + 10
        while not direct(pg, in_copy) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert direct(pg, in_copy), "the COPY never started upstream"
    finally:
        proc.kill()
        proc.wait()
    # The proxy sees the dead client on its own time; a loaded machine may need seconds.
    deadline = time.monotonic() + 20
    while direct(pg, in_copy) and time.monotonic() < deadline:
        time.sleep(0.1)
    stuck = direct(pg, in_copy)
    if stuck:  # do not leave it for the next tests
        direct(pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)",
               ([r[0] for r in stuck],))
    assert not stuck, "the upstream backend is still in COPY 20 s after the agent died"
    assert review.new() == set()
    assert rows(pg, table) == ROWS


def test_psycopg_agent_continues_after_the_reviewer_decides(pg, hold_proxy, table, review):
    """A decision while the agent is connected: its next write starts a new pending transaction."""
    with agent(hold_proxy) as a:
        a.execute(f"INSERT INTO {table} VALUES (10, 'first')")
        first = review.only()
        review.commit(first)
        assert rows(pg, table) == [*ROWS, (10, "first")]
        a.execute(f"INSERT INTO {table} VALUES (11, 'second')")
        second = review.only()
        assert second != first
        assert agent_ids(a, table) == [*INITIAL, 10, 11]
        assert rows(pg, table) == [*ROWS, (10, "first")]
        review.rollback(second)
        assert agent_ids(a, table) == [*INITIAL, 10]
        assert any(f"#{first} was committed" in n for n in a.notices), a.notices
    assert rows(pg, table) == [*ROWS, (10, "first")]


# -- asyncpg ---------------------------------------------------------------------------------------------


@asynccontextmanager
async def aagent(hp: RunningProxy, limit: float = 20) -> AsyncIterator[tuple[asyncpg.Connection, list[str]]]:
    """An asyncpg agent connection and the notices it got; a proxy that stops answering fails the
    test after `limit` seconds instead of hanging it."""
    conn = await asyncpg.connect(hp.url(), timeout=10)
    notices: list[str] = []
    conn.add_log_listener(lambda _c, msg: notices.append(msg.message))
    try:
        async with asyncio.timeout(limit):
            yield conn, notices
    finally:
        try:
            await asyncio.wait_for(conn.close(), 5)
        except (TimeoutError, asyncpg.PostgresError, OSError):
            conn.terminate()


async def aids(conn: asyncpg.Connection, table: str) -> list[int]:
    return [r[0] for r in await conn.fetch(f"SELECT id FROM {table} ORDER BY id")]


@DECISIONS
async def test_asyncpg_execute_with_params(pg, hold_proxy, table, review, decision):
    async with aagent(hold_proxy) as (conn, notices):
        tag = await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", 10, "ten")
        assert tag == "INSERT 0 1"
        assert await conn.execute(f"UPDATE {table} SET v = $1 WHERE id = $2", "uno", 1) == "UPDATE 1"
        await conn.execute(f"DELETE FROM {table} WHERE id = 2")  # simple protocol (no arguments)
        assert await aids(conn, table) == [1, 3, 10]
        await asyncio.sleep(0.05)  # log listeners are called soon, not synchronously
        tx = review.only()
        assert any(f"held for review as #{tx}" in n for n in notices), notices
        assert rows(pg, table) == ROWS
    check_decision(pg, review, table, tx, decision, [(1, "uno"), (3, "c"), (10, "ten")])


@DECISIONS
async def test_asyncpg_executemany(pg, hold_proxy, table, review, decision):
    new = [(i, f"many{i}") for i in range(10, 40)]
    async with aagent(hold_proxy) as (conn, _):
        await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2)", new)
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 33
        tx = review.only()
        assert rows(pg, table) == ROWS
    check_decision(pg, review, table, tx, decision, [*ROWS, *new])


@DECISIONS
async def test_asyncpg_transaction(pg, hold_proxy, table, review, decision):
    async with aagent(hold_proxy) as (conn, _):
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", 10, "ten")
            async with conn.transaction():  # nested: a savepoint
                await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", 11, "eleven")
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute(f"DELETE FROM {table}")
                raise RuntimeError("the agent changes its mind")
        async with conn.transaction(isolation="repeatable_read"):
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", 1, "duplicate")
            await conn.execute(f"UPDATE {table} SET v = 'c!' WHERE id = 3")
        assert not conn.is_in_transaction()
        assert await aids(conn, table) == [*INITIAL, 10, 11]
        tx = review.only()
        assert rows(pg, table) == ROWS
    check_decision(pg, review, table, tx, decision, [(1, "a"), (2, "b"), (3, "c!"), (10, "ten"), (11, "eleven")])


@DECISIONS
async def test_asyncpg_prepared_statements(pg, hold_proxy, table, review, decision):
    async with aagent(hold_proxy) as (conn, _):
        ins = await conn.prepare(f"INSERT INTO {table} VALUES ($1, $2) RETURNING id")
        for i in range(10, 15):
            assert await ins.fetchval(i, f"prep{i}") == i
        upd = await conn.prepare(f"UPDATE {table} SET v = $1 WHERE id = $2")
        await upd.fetch("u", 1)
        count = await conn.prepare(f"SELECT count(*) FROM {table}")
        assert await count.fetchval() == 8
        tx = review.only()
        assert rows(pg, table) == ROWS
    check_decision(pg, review, table, tx, decision,
                   [(1, "u"), (2, "b"), (3, "c"), *[(i, f"prep{i}") for i in range(10, 15)]])


@DECISIONS
async def test_asyncpg_copy_records_to_table(pg, hold_proxy, table, review, decision):
    new = [(i, f"rec{i}") for i in range(10, 210)]
    async with aagent(hold_proxy) as (conn, _):
        res = await conn.copy_records_to_table(table, records=new, columns=["id", "v"])
        assert res == "COPY 200"
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 203
        tx = review.only()
        assert rows(pg, table) == ROWS
    check_decision(pg, review, table, tx, decision, [*ROWS, *new])


@DECISIONS
async def test_asyncpg_copy_to_table_from_a_file(pg, hold_proxy, table, review, decision):
    """asyncpg sends the COPY data right after the Query, without waiting for CopyInResponse."""
    data = "".join(f"{i}\tfile{i}\n" for i in range(10, 60)).encode()
    async with aagent(hold_proxy) as (conn, _):
        res = await conn.copy_to_table(table, source=io.BytesIO(data), columns=["id", "v"])
        assert res == "COPY 50"
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 53
        tx = review.only()
        assert rows(pg, table) == ROWS
    check_decision(pg, review, table, tx, decision, [*ROWS, *[(i, f"file{i}") for i in range(10, 60)]])


@pytest.mark.parametrize("in_chain", [False, True], ids=["nothing-held", "inside-a-held-chain"])
async def test_asyncpg_failed_copy_leaves_the_session_usable(pg, hold_proxy, table, review, in_chain):
    """asyncpg sends COPY data with the COPY statement. When the COPY fails before the server asks
    for data (unknown table), that data is left over: it must not disturb the next statements."""
    async with aagent(hold_proxy, limit=10) as (conn, _):
        expected = list(INITIAL)
        if in_chain:
            await conn.execute(f"INSERT INTO {table} VALUES (20, 'held')")
            expected.append(20)
        with pytest.raises(asyncpg.UndefinedTableError):
            await conn.copy_to_table(f"{table}_missing", source=io.BytesIO(b"1\tx\n2\ty\n"))
        assert await conn.execute("SELECT 1") == "SELECT 1"  # a simple query next
        with pytest.raises(asyncpg.UndefinedTableError):
            await conn.copy_to_table(f"{table}_missing", source=io.BytesIO(b"1\tx\n"))
        assert await conn.fetchval("SELECT 41 + 1") == 42  # an extended query next
        with pytest.raises(asyncpg.UniqueViolationError):  # fails after the data was asked for
            await conn.copy_records_to_table(table, records=[(11, "new"), (1, "duplicate")], columns=["id", "v"])
        assert await conn.execute("SELECT 1") == "SELECT 1"
        assert await aids(conn, table) == expected
        if in_chain:
            tx = review.only()
        else:
            assert review.new() == set()
    if in_chain:
        check_decision(pg, review, table, tx, "commit", [*ROWS, (20, "held")])
    assert rows(pg, table) == ([*ROWS, (20, "held")] if in_chain else ROWS)


async def test_asyncpg_large_copy(pg, hold_proxy, table, review):
    new = [(i, "x" * 50) for i in range(10, 30010)]
    async with aagent(hold_proxy) as (conn, _):
        assert await conn.copy_records_to_table(table, records=new, columns=["id", "v"]) == "COPY 30000"
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 30003
        tx = review.only()
    assert rows(pg, table) == ROWS
    review.commit(tx)
    assert direct(pg, f"SELECT count(*) FROM {table}") == [(30003,)]


# -- SQLAlchemy ------------------------------------------------------------------------------------------


def sa_engine(hp: RunningProxy) -> Engine:
    url = hp.url().replace("postgresql://", "postgresql+psycopg://", 1)
    return create_engine(url, pool_size=1, max_overflow=0)


def orm_model(table: str) -> Any:
    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        v: Mapped[str | None]

    return Item


@DECISIONS
def test_sqlalchemy_engine_begin(pg, hold_proxy, table, review, decision):
    t = Table(table, MetaData(), Column("id", Integer, primary_key=True, autoincrement=False), Column("v", Text))
    engine = sa_engine(hold_proxy)
    try:
        with engine.begin() as conn:
            conn.execute(insert(t), [{"id": 10, "v": "core"}, {"id": 11, "v": "core2"}])
            conn.execute(update(t).where(t.c.id == 1).values(v="core-upd"))
        with engine.connect() as conn:
            assert conn.execute(select(t.c.id).order_by(t.c.id)).scalars().all() == [*INITIAL, 10, 11]
        tx = review.only()
        assert rows(pg, table) == ROWS
    finally:
        engine.dispose()
    check_decision(pg, review, table, tx, decision, [(1, "core-upd"), (2, "b"), (3, "c"), (10, "core"),
                                                     (11, "core2")])


@DECISIONS
def test_sqlalchemy_orm_session(pg, hold_proxy, table, review, decision):
    Item = orm_model(table)
    engine = sa_engine(hold_proxy)
    try:
        with Session(engine) as s:  # a session that rolls back leaves nothing
            s.add(Item(id=20, v="rolled back"))
            s.get(Item, 1).v = "rolled back too"
            s.flush()
            assert s.get(Item, 20) is not None
            s.rollback()
        assert review.new() == set()
        with Session(engine) as s, s.begin():
            s.add_all([Item(id=10, v="orm"), Item(id=11, v="orm2")])
            s.get(Item, 1).v = "orm-upd"
            s.delete(s.get(Item, 2))
        with Session(engine) as s:
            assert s.scalars(select(Item.id).order_by(Item.id)).all() == [1, 3, 10, 11]
            assert s.execute(text(f"SELECT v FROM {table} WHERE id = 1")).scalar_one() == "orm-upd"
        tx = review.only()
        assert rows(pg, table) == ROWS
    finally:
        engine.dispose()
    check_decision(pg, review, table, tx, decision, [(1, "orm-upd"), (3, "c"), (10, "orm"), (11, "orm2")])


# -- pgbench ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
@DECISIONS
def test_pgbench(pg, pg_bin, hold_proxy, table, review, tmp_path, mode, decision):
    script = tmp_path / "insert.sql"
    script.write_text(f"INSERT INTO {table} (id, v) SELECT max(id) + 1, 'pgbench' FROM {table};\n")
    res = run_tool(pg_bin, "pgbench", ["-n", "-c", "1", "-t", "20", "-M", mode, "-f", str(script)],
                   hold_proxy.env())
    assert res.returncode == 0, res.stdout + res.stderr
    assert "number of transactions actually processed: 20/20" in res.stdout, res.stdout
    tx = review.only()
    assert review.show(tx)["transaction"]["agent_transactions"] == 20
    check_decision(pg, review, table, tx, decision, [*ROWS, *[(i, "pgbench") for i in range(4, 24)]])


# -- read-only work is not held ----------------------------------------------------------------------------


def backend_state(pg: Postgres, pid: int) -> tuple[str, Any]:
    (state, xid), = direct(pg, "SELECT state, backend_xid FROM pg_stat_activity WHERE pid = %s", (pid,))
    return state, xid


def test_read_only_transactions_are_not_held(pg, pg_bin, hold_proxy, table, review):
    with agent(hold_proxy) as a:
        (pid,), = a.rows("SELECT pg_backend_pid()")
        assert a.rows(f"SELECT count(*) FROM {table}") == [(3,)]
        assert a.rows(f"SELECT v FROM {table} WHERE id = %s", (2,)) == [("b",)]
        a.execute("BEGIN")
        a.rows(f"SELECT * FROM {table}")
        a.execute("COMMIT")
        with a.conn.transaction():
            a.rows(f"SELECT * FROM {table} WHERE id = %s", (1,))
        with a.conn.pipeline():
            a.execute(f"SELECT * FROM {table}")
            a.execute("SELECT now()")
        a.execute("BEGIN READ ONLY")
        a.rows(f"SELECT * FROM {table}")
        a.execute("ROLLBACK")
        assert backend_state(pg, pid) == ("idle", None)  # no upstream transaction left open
        assert a.notices == []
    with agent(hold_proxy, autocommit=False) as a:
        a.rows(f"SELECT * FROM {table}")
        a.conn.commit()
        assert a.notices == []
    res = run_tool(pg_bin, "psql", ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", f"SELECT count(*) FROM {table}"],
                   hold_proxy.env())
    assert res.returncode == 0 and res.stdout.strip() == "3", res.stderr
    assert "NOTICE" not in res.stderr
    assert review.new() == set()


async def test_asyncpg_read_only_is_not_held(pg, hold_proxy, table, review):
    async with aagent(hold_proxy) as (conn, notices):
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 3
        async with conn.transaction():
            assert await conn.fetchval(f"SELECT v FROM {table} WHERE id = $1", 1) == "a"
        async with conn.transaction(readonly=True):
            await conn.fetch(f"SELECT * FROM {table}")
        await asyncio.sleep(0.05)
        assert notices == []
        assert review.new() == set()


def test_read_only_transaction_inside_a_chain_does_not_grow_it(pg, hold_proxy, table, review):
    with agent(hold_proxy) as a:
        a.execute(f"INSERT INTO {table} VALUES (10, 'held')")
        tx = review.only()
        assert len(a.notices) == 1
        a.rows(f"SELECT * FROM {table}")
        with a.conn.transaction():
            a.rows(f"SELECT * FROM {table}")
        assert len(a.notices) == 1, a.notices  # no new "held" notice for reads
        assert review.show(tx)["transaction"]["agent_transactions"] == 1
    check_decision(pg, review, table, tx, "rollback", [])


# -- LISTEN / NOTIFY -------------------------------------------------------------------------------------------


@DECISIONS
def test_notify_is_held_until_the_reviewer_commits(pg, hold_proxy, review, decision):
    channel = f"dbproxy_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.dsn(), autocommit=True) as listener:
        listener.execute(f"LISTEN {channel}")
        with agent(hold_proxy) as a:
            a.execute(f"NOTIFY {channel}, 'from agent'")
            a.execute("SELECT pg_notify(%s, %s)", (channel, "via function"))
            tx = review.only()
        assert [n.payload for n in listener.notifies(timeout=0.5)] == [], "NOTIFY escaped the hold"
        decide(review, tx, decision)
        if decision == "commit":
            got = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
            assert got == ["from agent", "via function"]
        else:
            assert [n.payload for n in listener.notifies(timeout=0.5)] == []


@DECISIONS
def test_notify_with_a_write_is_held_until_the_reviewer_commits(pg, hold_proxy, table, review, decision):
    channel = f"dbproxy_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.dsn(), autocommit=True) as listener:
        listener.execute(f"LISTEN {channel}")
        with agent(hold_proxy) as a:
            with a.conn.transaction():
                a.execute(f"INSERT INTO {table} VALUES (10, 'notified')")
                a.execute(f"NOTIFY {channel}, 'row 10'")
            tx = review.only()
        assert [n.payload for n in listener.notifies(timeout=0.5)] == [], "NOTIFY escaped the hold"
        check_decision(pg, review, table, tx, decision, [*ROWS, (10, "notified")])
        got = [n.payload for n in listener.notifies(timeout=2 if decision == "commit" else 0.3, stop_after=1)]
        assert got == (["row 10"] if decision == "commit" else [])


def test_notify_alone_in_read_only_looking_select_is_held(pg, hold_proxy, review):
    """pg_notify in a SELECT looks like a read: it must still be held, not delivered at once."""
    channel = f"dbproxy_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.dsn(), autocommit=True) as listener:
        listener.execute(f"LISTEN {channel}")
        with agent(hold_proxy) as a:
            a.execute(f"SELECT pg_notify('{channel}', 'simple')")
        assert [n.payload for n in listener.notifies(timeout=0.5)] == [], "pg_notify escaped the hold"
        tx = review.only()
        review.rollback(tx)
        assert [n.payload for n in listener.notifies(timeout=0.3)] == []

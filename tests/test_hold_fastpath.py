"""The read-only fast path of hold and undo mode (`dbproxy.hold.fastpath`): reads outside a
transaction go straight through, and nothing it skips was needed.

Each test checks both sides: that the reads took the fast path (the held connection counts its
fast cycles) and that what the slow path guarantees still holds: results, errors and transaction
status as PostgreSQL gives them; writes, also a write hidden in a function that a SELECT calls,
still held; a read stuck behind a held transaction's lock still fails with 55P03 naming it; a deny
rule on reads still refuses them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors as pgerrors

from tests.conftest import Postgres, RunningProxy


def direct(pg: Postgres, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("SET lock_timeout = '5s'")
        cur = c.execute(sql)
        return cur.fetchall() if cur.description else []


def fast_cycles(proxy: RunningProxy) -> int:
    """Fast cycles of the proxy's live agent sessions, read on the proxy's own loop."""
    def count() -> int:
        return sum(s._hold.held.fast_cycles for s in list(proxy.server.sessions) if s._hold is not None)
    box: list[int] = []
    done = threading.Event()
    proxy.loop.call_soon_threadsafe(lambda: (box.append(count()), done.set()))
    assert done.wait(10)
    return box[0]


def pending(proxy: RunningProxy) -> list[int]:
    _, rows = proxy.review_request("GET", "/v1/pending")
    return [r["id"] for r in rows or []]


@pytest.fixture
def table(pg: Postgres, unique_name: str) -> Iterator[str]:
    direct(pg, f"CREATE TABLE {unique_name} (id int PRIMARY KEY, v text)")
    direct(pg, f"INSERT INTO {unique_name} VALUES (1, 'one'), (2, 'two')")
    yield unique_name
    direct(pg, f"DROP TABLE IF EXISTS {unique_name} CASCADE")
    direct(pg, f"DROP FUNCTION IF EXISTS {unique_name}_sneak()")


@pytest.mark.parametrize("mode", ["hold", "undo"])
def test_reads_take_the_fast_path_and_stay_exact(make_proxy: Any, pg: Postgres, table: str, mode: str) -> None:
    proxy = make_proxy(mode=mode)
    with psycopg.connect(proxy.url(), autocommit=True) as conn:
        before = fast_cycles(proxy)
        assert conn.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == ("one",)  # simple
        assert conn.execute(f"SELECT v FROM {table} WHERE id = %s", (2,)).fetchone() == ("two",)  # extended
        for _ in range(3):  # prepared: Bind/Execute/Sync of a statement parsed once
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE id > %s", (0,), prepare=True).fetchone() == (2,)
        cur = conn.execute("SELECT 1; SELECT 2")  # two statements, one string
        assert cur.fetchone() == (1,) and cur.nextset() and cur.fetchone() == (2,)
        with pytest.raises(pgerrors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 'still fine'").fetchone() == ("still fine",)
        assert fast_cycles(proxy) - before >= 9
    assert pending(proxy) == []


async def test_asyncpg_reads_on_the_fast_path(make_proxy: Any, table: str) -> None:
    proxy = make_proxy(mode="undo")
    conn = await asyncpg.connect(proxy.url())
    try:
        stmt = await conn.prepare(f"SELECT v FROM {table} WHERE id = $1")
        assert [await stmt.fetchval(i) for i in (1, 2, 3)] == ["one", "two", None]
        rows = await conn.fetch(f"SELECT id, v FROM {table} ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "one"), (2, "two")]
        assert fast_cycles(proxy) >= 4
    finally:
        await conn.close()


def test_writes_and_a_write_hidden_in_a_function_still_hold(make_proxy: Any, pg: Postgres, table: str) -> None:
    """A SELECT of a function that writes is not read-only to the classifier: it runs in the chain
    and is held, as is a plain UPDATE; reads in the chain that follows see the held work (they are
    not fast: the chain is open)."""
    direct(pg, f"CREATE FUNCTION {table}_sneak() RETURNS int LANGUAGE sql VOLATILE "
               f"AS $$ UPDATE {table} SET v = 'sneaked' WHERE id = 1 RETURNING id $$")
    proxy = make_proxy(mode="hold")
    with psycopg.connect(proxy.url(), autocommit=True) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        assert conn.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == ("one",)
        fast = fast_cycles(proxy)
        assert conn.execute(f"SELECT {table}_sneak()").fetchone() == (1,)
        assert any("held for review as #" in n for n in notices), notices
        assert direct(pg, f"SELECT v FROM {table} WHERE id = 1") == [("one",)]  # nothing committed
        # Inside the chain now: the read sees the held change, and it did not take the fast path.
        assert conn.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == ("sneaked",)
        conn.execute(f"UPDATE {table} SET v = 'updated' WHERE id = 2")
        assert fast_cycles(proxy) == fast
        [tx_id] = pending(proxy)
        assert proxy.review_request("POST", f"/v1/transactions/{tx_id}/rollback", {})[0] == 200
    assert direct(pg, f"SELECT id, v FROM {table} ORDER BY id") == [(1, "one"), (2, "two")]


def test_a_fast_read_behind_a_held_lock_fails_with_55P03(make_proxy: Any, pg: Postgres, table: str) -> None:
    proxy = make_proxy(mode="hold", held_lock_timeout=1)
    with psycopg.connect(proxy.url(), autocommit=True) as writer, \
            psycopg.connect(proxy.url(), autocommit=True) as reader:
        writer.execute(f"TRUNCATE {table}")  # held, with its ACCESS EXCLUSIVE lock
        [tx_id] = pending(proxy)
        before = fast_cycles(proxy)
        started = time.monotonic()
        with pytest.raises(pgerrors.LockNotAvailable) as e:
            reader.execute(f"SELECT v FROM {table} WHERE id = 1")
        assert time.monotonic() - started < 10
        assert f"transaction #{tx_id}" in str(e.value) and f"dbproxy commit {tx_id}" in str(e.value)
        assert fast_cycles(proxy) == before + 1
        assert reader.execute("SELECT 'next'").fetchone() == ("next",)
        assert proxy.review_request("POST", f"/v1/transactions/{tx_id}/rollback", {})[0] == 200
        assert reader.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == ("one",)


def test_reads_stay_on_the_policy_path_while_a_rule_denies_reads(make_proxy: Any, pg: Postgres, table: str,
                                                                  unique_name: str) -> None:
    rules = [{"ops": ["read"], "objects": [f"{table}"], "decision": "deny"},
             {"ops": ["read"], "objects": ["*"], "decision": "allow"}]
    proxy = make_proxy(mode="undo", rules=rules)
    with psycopg.connect(proxy.url(), autocommit=True) as conn:
        with pytest.raises(pgerrors.InsufficientPrivilege, match=r"rules\[0\]: deny read"):
            conn.execute(f"SELECT v FROM {table} WHERE id = 1")
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
        assert fast_cycles(proxy) == 0
    # Rules that only allow reads (and say nothing of them) leave reads fast.
    allowing = make_proxy(mode="undo", rules=[{"ops": ["read"], "objects": ["*"], "decision": "allow"},
                                              {"ops": ["delete"], "objects": ["*"], "decision": "deny"}])
    with psycopg.connect(allowing.url(), autocommit=True) as conn:
        for _ in range(2):  # (the first answer may carry notices, which take the general way)
            assert conn.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == ("one",)
        assert fast_cycles(allowing) >= 1
        with pytest.raises(pgerrors.InsufficientPrivilege, match="deny delete"):
            conn.execute(f"DELETE FROM {table} WHERE id = 1")
    assert direct(pg, f"SELECT count(*) FROM {table}") == [(2,)]

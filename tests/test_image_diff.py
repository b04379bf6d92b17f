"""The diff of committed transactions from their captured row images (`dbproxy.review.image_diff`),
on a real PostgreSQL with `dbproxy install` done: each scenario commits a captured transaction and
checks exact counts, netting per key, paging and the rows listed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from dbproxy.review.image_diff import image_diff
from dbproxy.review.models import TableDiff


@pytest.fixture
async def db(capture_db: str) -> AsyncIterator[asyncpg.Connection]:
    con = await asyncpg.connect(capture_db)
    yield con
    await con.close()


async def captured(url: str, *sql: str) -> int:
    """Run `sql` in one captured transaction; its xid."""
    con = await asyncpg.connect(url, server_settings={"dbproxy.capture": "on"})
    try:
        async with con.transaction():
            for s in sql:
                await con.execute(s)
            return int(await con.fetchval("select txid_current()"))
    finally:
        await con.close()


def by_table(diffs: list[TableDiff]) -> dict[str, TableDiff]:
    return {d.table.removeprefix("public."): d for d in diffs}


async def test_net_changes_per_key(db: asyncpg.Connection, capture_db: str) -> None:
    await db.execute("create table t (id int primary key, v text, n numeric(6,2)); "
                     "insert into t select i, 'v' || i, i from generate_series(1, 10) i")
    xid = await captured(
        capture_db,
        "update t set v = 'changed' where id = 1",
        "update t set v = 'again' where id = 1",            # twice: one update, first before, last after
        "insert into t values (11, 'new', 0)",
        "delete from t where id = 11",                      # inserted then deleted: nothing
        "update t set v = v where id = 2",                  # changed nothing: nothing
        "update t set v = 'tmp' where id = 3", "update t set v = 'v3' where id = 3",  # and back: nothing
        "delete from t where id = 4",
        "update t set id = 40 where id = 5",                # a key change: delete 5, insert 40
        "update t set n = 6.50 where id = 6",
    )
    d = by_table(await image_diff(db, xid))["t"]
    assert (d.inserted, d.updated, d.deleted) == (1, 2, 2)
    rows = {(r.kind, tuple(r.key.values()) if r.key else None): r for r in d.rows}
    assert rows[("update", (1,))].before == {"v": "v1"} and rows[("update", (1,))].after == {"v": "again"}
    assert rows[("update", (6,))].before == {"n": 6} and rows[("update", (6,))].after == {"n": 6.5}
    assert rows[("delete", (4,))].before == {"id": 4, "v": "v4", "n": 4}
    assert rows[("delete", (5,))].before is not None and rows[("insert", (40,))].after == {"id": 40, "v": "v5", "n": 5}
    assert not d.truncated and d.offset == 0
    ids = [r.key["id"] for r in d.rows if r.key]
    assert ids == sorted(ids) == [1, 4, 5, 6, 40]


async def test_paging_keyless_tables_truncate_and_long_values(db: asyncpg.Connection, capture_db: str) -> None:
    await db.execute("create table big (id int primary key, body text); "
                     "insert into big select i, 'x' from generate_series(1, 130) i; "
                     "create table bag (a int, b text); insert into bag values (1, 'one'), (1, 'one'), (2, 'two'); "
                     "create table gone (id int primary key); insert into gone select generate_series(1, 5)")
    xid = await captured(capture_db, "update big set body = repeat('y', 500) where id <= 120",
                         "update bag set b = 'uno' where a = 1", "insert into bag values (3, 'three')",
                         "truncate gone")
    tables = by_table(await image_diff(db, xid, limit=50))
    big = tables["big"]
    assert big.updated == 120 and len(big.rows) == 50 and big.truncated
    assert big.rows[0].key == {"id": 1} and big.rows[-1].key == {"id": 50}
    cut = big.rows[0].after["body"]  # type: ignore[index]
    assert cut.startswith("y" * 200 + "…") and cut.endswith("(500 bytes)")
    page3 = by_table(await image_diff(db, xid, limit=50, offset=100, table="public.big"))
    assert list(page3) == ["big"] and page3["big"].offset == 100
    assert [r.key for r in page3["big"].rows] == [{"id": i} for i in range(101, 121)]
    assert by_table(await image_diff(db, xid, offset=500, table="public.big"))["big"].rows == []
    # Without a key: every captured change as it happened, updates with key None.
    bag = tables["bag"]
    assert (bag.inserted, bag.updated, bag.deleted) == (1, 2, 0)
    assert [r.kind for r in bag.rows] == ["update", "update", "insert"]
    assert bag.rows[0].key is None and bag.rows[0].before == {"b": "one"} and bag.rows[0].after == {"b": "uno"}
    # TRUNCATE: its rows are deletes.
    assert (tables["gone"].deleted, len(tables["gone"].rows)) == (5, 5)


async def test_nothing_captured_is_no_diff(db: asyncpg.Connection) -> None:
    assert await image_diff(db, 123456789) == []

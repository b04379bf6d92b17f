"""Undo of what changes a materialized view's contents, against real PostgreSQL.

PostgreSQL cannot write rows into a materialized view, only recompute it from its query, so an
undo restores its contents exactly only where the capture knows they were what the query gave
("fresh", `dbproxy.keep_matview`) or that it had none (unpopulated):

- a table rebuilt to put a dropped column back in its place drops and re-makes the materialized
  views on it: fresh ones come back with the same contents, stale ones are refused;
- REFRESH of an unpopulated view is undone by `REFRESH ... WITH NO DATA`; REFRESH ... WITH NO
  DATA of a fresh one by REFRESH;
- REFRESH of a view made stale only by the same transaction's earlier writes is undone by
  recomputing it once those writes are undone, checked against the kept contents' digest: a view
  that was stale before the transaction is refused (nothing captured says what it held).

Each case: setup as the superuser (not captured), one captured transaction committed with its
undo marker (`tests.undo_helpers.forward`), then `dbproxy.undo.run`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from dbproxy.undo import apply as undo
from dbproxy.undo.apply import Result, UndoError
from tests.undo_helpers import digest, forward, shape

SETUP = """
CREATE TABLE item (id int PRIMARY KEY, note text, grp int NOT NULL, amount numeric(10, 2) NOT NULL);
CREATE TABLE line (id int PRIMARY KEY, item_id int NOT NULL REFERENCES item, qty int NOT NULL);
INSERT INTO item SELECT g, 'note ' || g, g % 4, g * 1.25 FROM generate_series(1, 40) g;
INSERT INTO line SELECT g, 1 + g % 40, g % 7 FROM generate_series(1, 120) g;
CREATE MATERIALIZED VIEW per_grp AS SELECT grp, count(*) AS n, sum(amount) AS total FROM item GROUP BY grp;
"""
TABLES = ("item", "line")


@pytest.fixture
async def db(capture_db: str) -> AsyncIterator[asyncpg.Connection]:
    con = await asyncpg.connect(capture_db)
    try:
        await con.execute(SETUP)
        yield con
    finally:
        await con.close()


async def _state(con: asyncpg.Connection) -> tuple[object, ...]:
    populated = await con.fetchval("SELECT relispopulated FROM pg_class WHERE oid = 'per_grp'::regclass")
    contents = await digest(con, ["per_grp"]) if populated else None
    return await digest(con, TABLES), populated, contents, await shape(con)


def _clean(res: Result) -> None:
    assert res.applied, res.to_json()
    assert not res.conflicts and not res.overridden and not res.irreversible, res.to_json()


async def _undone_exactly(con: asyncpg.Connection, url: str, sql: str) -> None:
    before = await _state(con)
    xid = await forward(url, sql)
    assert await _state(con) != before, "the forward changed nothing"
    _clean(await undo.run(con, [xid], by="tester"))
    assert await _state(con) == before


async def test_rebuild_remakes_a_fresh_materialized_view(db: asyncpg.Connection, capture_db: str) -> None:
    # note is in the middle of item: putting it back rebuilds item, which drops per_grp with it
    await _undone_exactly(db, capture_db, "ALTER TABLE item DROP COLUMN note")


async def test_rebuild_remakes_an_unpopulated_materialized_view(db: asyncpg.Connection, capture_db: str) -> None:
    await db.execute("REFRESH MATERIALIZED VIEW per_grp WITH NO DATA")
    await _undone_exactly(db, capture_db, "ALTER TABLE item DROP COLUMN note")


async def test_rebuild_refuses_a_stale_materialized_view(db: asyncpg.Connection, capture_db: str) -> None:
    await db.execute("UPDATE item SET amount = amount + 1 WHERE id = 3")  # per_grp no longer what its query gives
    xid = await forward(capture_db, "ALTER TABLE item DROP COLUMN note")
    after = await _state(db)
    with pytest.raises(UndoError, match=r"materialized view public\.per_grp depends on public\.item"):
        await undo.run(db, [xid], by="tester")
    assert await _state(db) == after


async def test_refresh_of_an_unpopulated_view_is_emptied_again(db: asyncpg.Connection, capture_db: str) -> None:
    await db.execute("REFRESH MATERIALIZED VIEW per_grp WITH NO DATA")
    await _undone_exactly(db, capture_db, "REFRESH MATERIALIZED VIEW per_grp")


async def test_emptying_a_fresh_view_is_refreshed_back(db: asyncpg.Connection, capture_db: str) -> None:
    await _undone_exactly(db, capture_db, "REFRESH MATERIALIZED VIEW per_grp WITH NO DATA")


async def test_refresh_after_the_transactions_own_update(db: asyncpg.Connection, capture_db: str) -> None:
    await _undone_exactly(db, capture_db, "UPDATE item SET amount = amount * 2 WHERE grp = 1; "
                                          "DELETE FROM line WHERE item_id = 5; DELETE FROM item WHERE id = 5; "
                                          "REFRESH MATERIALIZED VIEW per_grp")


async def test_refresh_of_a_view_stale_before_is_refused(db: asyncpg.Connection, capture_db: str) -> None:
    await db.execute("UPDATE item SET amount = amount + 1 WHERE id = 3")
    xid = await forward(capture_db, "REFRESH MATERIALIZED VIEW per_grp")
    after = await _state(db)
    with pytest.raises(UndoError, match=r"REFRESH MATERIALIZED VIEW replaced contents of public\.per_grp"):
        await undo.run(db, [xid], by="tester")
    assert await _state(db) == after


async def test_refresh_after_an_update_of_a_view_stale_before_stops_at_the_check(db: asyncpg.Connection,
                                                                                  capture_db: str) -> None:
    # Stale before the transaction too: undoing the UPDATE does not make the query give the old
    # contents, and the digest check says so instead of leaving other contents behind.
    await db.execute("UPDATE item SET amount = amount + 1 WHERE id = 3")
    xid = await forward(capture_db, "UPDATE item SET amount = amount * 2 WHERE grp = 1; "
                                    "REFRESH MATERIALIZED VIEW per_grp")
    after = await _state(db)
    res = await undo.run(db, [xid], by="tester")
    assert not res.applied
    assert any("does not hold the contents it had before the REFRESH" in c.message for c in res.conflicts), \
        res.to_json()
    assert await _state(db) == after

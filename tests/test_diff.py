"""Row-level diff of a held transaction (dbproxy.diff) against a real PostgreSQL.

`held` is an asyncpg connection with an open transaction standing in for the proxy's upstream
connection; `committed` is a second connection. Every scenario checks exact counts and listed rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg
import pytest

from dbproxy.review.diff import blocked_by, compute_diff, held_xids
from dbproxy.review.models import RowChange, TableDiff


class Held:
    """The held transaction: runs SQL on `conn`, which has a transaction open."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.calls = 0

    async def query(self, sql: str, params: Sequence[str | None] = ()) -> list[tuple[str | None, ...]]:
        self.calls += 1
        return [tuple(r) for r in await self.conn.fetch(sql, *params)]


@dataclass
class Env:
    schema: str
    held_conn: asyncpg.Connection
    held: Held
    pid: int
    committed: asyncpg.Connection

    def t(self, name: str) -> str:
        return f"{self.schema}.{name}"

    async def setup(self, sql: str) -> None:
        """Run DDL/DML on the committed side (autocommit), before the held transaction writes."""
        await self.committed.execute(sql.replace("S.", self.schema + "."))

    async def write(self, sql: str) -> None:
        """Run SQL in the held transaction."""
        await self.held_conn.execute(sql.replace("S.", self.schema + "."))

    async def diff(self, limit: int = 50, notes: list[str] | None = None) -> dict[str, TableDiff]:
        diffs = await asyncio.wait_for(compute_diff(self.held, self.committed, self.pid, limit=limit, notes=notes),
                                       20)
        return {d.table.removeprefix(self.schema + "."): d for d in diffs}


@pytest.fixture
async def env(pg, unique_name) -> AsyncIterator[Env]:
    schema = unique_name
    committed = await asyncpg.connect(pg.dsn("postgres"))
    held_conn = await asyncpg.connect(pg.dsn("postgres"))
    await committed.execute(f"drop schema if exists {schema} cascade; create schema {schema}")
    await held_conn.execute("begin")
    pid = await held_conn.fetchval("select pg_backend_pid()")
    try:
        yield Env(schema, held_conn, Held(held_conn), pid, committed)
    finally:
        if held_conn.is_in_transaction():
            await held_conn.execute("rollback")
        await held_conn.close()
        await committed.execute(f"drop schema if exists {schema} cascade")
        await committed.close()


def by_kind(d: TableDiff, kind: str) -> list[RowChange]:
    return [r for r in d.rows if r.kind == kind]


async def test_insert_update_delete(env: Env):
    await env.setup("create table S.t (id int primary key, name text, n int, ts timestamptz);"
                    "insert into S.t select i, 'row ' || i, i, '2024-05-01 12:00+00' from generate_series(1, 5) i")
    await env.write("insert into S.t values (6, 'six', 6, null)")
    await env.write("update S.t set n = 20 where id = 2")
    await env.write("delete from S.t where id = 3")
    await env.write("update S.t set n = n where id = 4")  # a new row version that changes nothing
    await env.setup('''create table S."Odd ""Name""" ("Key Col" text primary key, "v;" int);
                       insert into S."Odd ""Name""" values ('k''1', 1)''')
    await env.write('''update S."Odd ""Name""" set "v;" = 2''')
    diffs = await env.diff()
    assert diffs['"Odd ""Name"""'].rows == [RowChange(kind="update", key={"Key Col": "k'1"}, before={"v;": 1},
                                                       after={"v;": 2})]
    d = diffs["t"]
    assert (d.inserted, d.updated, d.deleted, d.truncated) == (1, 1, 1, False)
    assert list(d.rows[1].before or {}) == ["id", "name", "n", "ts"]  # table order, not jsonb's
    assert d.rows == [
        RowChange(kind="update", key={"id": 2}, before={"n": 2}, after={"n": 20}),
        RowChange(kind="delete", key={"id": 3}, before={"id": 3, "name": "row 3", "n": 3,
                                                        "ts": "2024-05-01T12:00:00+00:00"}),
        RowChange(kind="insert", key={"id": 6}, after={"id": 6, "name": "six", "n": 6, "ts": None}),
    ]
    # round trips on the agent's connection: catalog, then one statement for all tables
    assert env.held.calls == 2
    # the committed connection is left as it was found (no transaction, default settings)
    assert not env.committed.is_in_transaction()
    assert await env.committed.fetchval("show lock_timeout") == "0"
    # ... and it still sees the committed rows: nothing was applied
    assert await env.committed.fetchval(f"select count(*) from {env.t('t')} where n = 20 or id = 6") == 0


async def test_settings_follow_the_held_session(env: Env):
    """Values that render per session (timestamptz) compare in the held session's settings."""
    await env.setup("create table S.t (id int primary key, ts timestamptz, n int);"
                    "insert into S.t values (1, '2024-05-01 12:00+00', 1), (2, '2024-05-01 12:00+00', 2)")
    await env.committed.execute("set timezone = 'UTC'")
    await env.write("set local timezone = 'Asia/Tokyo'")
    await env.write("update S.t set n = 10 where id = 1")
    await env.write("update S.t set ts = ts where id = 2")
    d = (await env.diff())["t"]
    assert (d.inserted, d.updated, d.deleted) == (0, 1, 0)
    assert d.rows == [RowChange(kind="update", key={"id": 1}, before={"n": 1}, after={"n": 10})]
    assert await env.committed.fetchval("show timezone") == "UTC"
    # the committed side needs a transaction of its own
    async with env.committed.transaction():
        with pytest.raises(ValueError, match="must not be inside a transaction"):
            await env.diff()


async def test_savepoints_released_and_rolled_back(env: Env):
    await env.setup("create table S.t (id int primary key, v text);"
                    "insert into S.t select i, 'v' || i from generate_series(1, 4) i;"
                    "create table S.other (id int primary key)")
    top = await env.held_conn.fetchval("select pg_current_xact_id()::xid::text")
    await env.write("savepoint a; insert into S.t values (10, 'ten'); release savepoint a")
    await env.write("savepoint b; update S.t set v = 'one' where id = 1; release savepoint b")
    await env.write("savepoint c; delete from S.t where id = 2; insert into S.t values (11, 'eleven');"
                    "update S.t set v = 'three' where id = 3; insert into S.other values (1)")
    aborted = await env.held_conn.fetchval(f"select xmin::text from {env.t('t')} where id = 11")
    await env.write("rollback to savepoint c; release savepoint c")
    await env.write("savepoint d; savepoint e; update S.t set v = 'uno' where id = 1; release savepoint e;"
                    "savepoint f; update S.t set v = 'cuatro' where id = 4; rollback to savepoint f;"
                    "release savepoint d")
    # Released subtransactions give up their xid lock (PostgreSQL 16): the locks name only the top
    # level and open savepoints, which is why compute_diff does not go by them.
    assert await held_xids(env.held, env.pid) == [top]
    await env.write("savepoint g; insert into S.other values (2)")
    g = await env.held_conn.fetchval(f"select xmin::text from {env.t('other')} where id = 2")
    assert sorted(await held_xids(env.held, env.pid)) == sorted([top, g]) and aborted not in [top, g]
    await env.write("rollback to savepoint g; release savepoint g")
    await env.write("savepoint h; delete from S.t where id = 2; release savepoint h")  # a delete, nothing new
    diffs = await env.diff()
    assert set(diffs) == {"t"}  # S.other was written only in the rolled-back savepoint
    d = diffs["t"]
    assert (d.inserted, d.updated, d.deleted) == (1, 1, 1)
    assert d.rows == [
        RowChange(kind="update", key={"id": 1}, before={"v": "v1"}, after={"v": "uno"}),
        RowChange(kind="delete", key={"id": 2}, before={"id": 2, "v": "v2"}),
        RowChange(kind="insert", key={"id": 10}, after={"id": 10, "v": "ten"}),
    ]


async def test_other_sessions_changes_are_not_ours(env: Env, pg):
    """Rows that other running transactions (younger than the held one) delete or lock are no
    changes of the held transaction: not when such a delete commits while the diff runs, and not
    under REPEATABLE READ, where the held snapshot does not see rows committed after it."""
    await env.setup("create table S.t (id int primary key, v int); insert into S.t values (1, 1), (2, 2), (3, 3)")
    other = await asyncpg.connect(pg.dsn("postgres"))
    original = env.held.query
    race = [True]

    async def commit_other_first(sql: str, params: Sequence[str | None] = ()) -> list[tuple[str | None, ...]]:
        if race[0] and "jsonb_array_elements" in sql:  # after the committed side's reads
            await other.execute("commit")
        return await original(sql, params)

    env.held.query = commit_other_first  # type: ignore[method-assign]
    expected = [RowChange(kind="update", key={"id": 1}, before={"v": 1}, after={"v": 10})]
    try:
        await env.write("update S.t set v = 10 where id = 1")
        await other.execute(f"insert into {env.t('t')} values (60, 60)")  # younger than the held xid, committed
        await other.execute(f"begin; delete from {env.t('t')} where id = 3")
        assert (await env.diff())["t"].rows == expected
        assert not other.is_in_transaction()

        race[0] = False
        await env.held_conn.execute("rollback; begin isolation level repeatable read")
        await env.write("update S.t set v = 10 where id = 1")
        await other.execute(f"insert into {env.t('t')} values (50, 50)")  # after the held snapshot
        await other.execute(f"begin; select * from {env.t('t')} where id = 50 for update")
        d = (await env.diff())["t"]
        assert d.rows == expected and (d.inserted, d.updated, d.deleted) == (0, 1, 0)
    finally:
        await other.close()


async def test_no_writes_no_diff(env: Env):
    await env.setup("create table S.t (id int primary key); insert into S.t values (1)")
    await env.write("select * from S.t for update")
    assert await held_xids(env.held, env.pid) != []  # a row lock assigns an xid ...
    assert await env.diff() == {}  # ... but changes nothing


async def test_primary_key_change_and_composite_key(env: Env):
    await env.setup("create table S.t (a int, b text, v int, primary key (a, b));"
                    "insert into S.t values (1, 'x', 1), (1, 'y', 2), (2, 'x', 3)")
    await env.write("update S.t set b = 'z' where a = 1 and b = 'x'")
    await env.write("update S.t set v = 30 where a = 2")
    await env.setup("create table S.num (k numeric primary key, v int); insert into S.num values (1.50, 1), (2, 2)")
    await env.write("update S.num set v = 10 where k = 1.5")
    await env.write("delete from S.num where k = 2")
    diffs = await env.diff()
    assert diffs["num"].rows == [RowChange(kind="update", key={"k": 1.5}, before={"v": 1}, after={"v": 10}),
                                 RowChange(kind="delete", key={"k": 2}, before={"k": 2, "v": 2})]
    d = diffs["t"]
    assert (d.inserted, d.updated, d.deleted) == (1, 1, 1)
    assert d.rows == [
        RowChange(kind="delete", key={"a": 1, "b": "x"}, before={"a": 1, "b": "x", "v": 1}),
        RowChange(kind="insert", key={"a": 1, "b": "z"}, after={"a": 1, "b": "z", "v": 1}),
        RowChange(kind="update", key={"a": 2, "b": "x"}, before={"v": 3}, after={"v": 30}),
    ]


async def test_table_without_primary_key_with_duplicates(env: Env):
    await env.setup("create table S.t (x int, y text);"
                    "insert into S.t values (1, 'a'), (1, 'a'), (1, 'a'), (2, 'b'), (3, 'c')")
    await env.write("delete from S.t where ctid = (select min(ctid) from S.t where x = 1)")
    await env.write("update S.t set y = 'B' where x = 2")
    await env.write("update S.t set y = y where x in (1, 3)")  # identical rewrites of the rest
    await env.write("insert into S.t values (3, 'c')")  # a new duplicate of an unchanged row
    d = (await env.diff())["t"]
    assert (d.inserted, d.updated, d.deleted) == (2, 0, 2)
    deletes = sorted(by_kind(d, "delete"), key=lambda r: (r.before or {})["x"])
    assert deletes == [RowChange(kind="delete", before={"x": 1, "y": "a"}),
                       RowChange(kind="delete", before={"x": 2, "y": "b"})]
    assert sorted(((r.after or {})["x"], (r.after or {})["y"]) for r in by_kind(d, "insert")) == [(2, "B"), (3, "c")]
    assert all(r.key is None for r in d.rows)


async def test_cascade_and_multixact(env: Env):
    """ON DELETE CASCADE shows the child rows; a parent row first locked FOR KEY SHARE (by a child
    insert) in one savepoint and deleted in another gets a MultiXact xmax and is still found, and so
    is a row locked FOR UPDATE in one savepoint and updated in another."""
    await env.setup("create table S.parent (id int primary key, v text);"
                    "create table S.child (id int primary key, parent_id int references S.parent on delete cascade);"
                    "insert into S.parent select i, 'p' || i from generate_series(1, 4) i;"
                    "insert into S.child values (1, 1), (2, 1), (3, 2), (4, 3)")
    await env.write("delete from S.parent where id = 1")
    await env.write("savepoint a; insert into S.child values (5, 2); release savepoint a")
    await env.write("savepoint b; delete from S.parent where id = 2; release savepoint b")
    await env.write("savepoint c; select * from S.parent where id = 4 for update; release savepoint c")
    await env.write("savepoint d; update S.parent set v = 'four' where id = 4; release savepoint d")
    diffs = await env.diff()
    p, c = diffs["parent"], diffs["child"]
    assert (p.inserted, p.updated, p.deleted) == (0, 1, 2)
    assert [(r.kind, r.key) for r in p.rows] == [("delete", {"id": 1}), ("delete", {"id": 2}), ("update", {"id": 4})]
    assert p.rows[2].before == {"v": "p4"} and p.rows[2].after == {"v": "four"}
    assert (c.inserted, c.updated, c.deleted) == (0, 0, 3)  # child 5 came and went inside the transaction
    assert [r.before for r in c.rows] == [{"id": 1, "parent_id": 1}, {"id": 2, "parent_id": 1},
                                          {"id": 3, "parent_id": 2}]


async def test_partitions_are_reported_one_by_one(env: Env):
    await env.setup("create table S.m (id int, region text, primary key (id, region)) partition by list (region);"
                    "create table S.m_a partition of S.m for values in ('a');"
                    "create table S.m_b partition of S.m for values in ('b');"
                    "insert into S.m values (1, 'a'), (2, 'b')")
    await env.write("insert into S.m values (3, 'a')")
    await env.write("update S.m set region = 'b' where id = 1")  # moves the row to the other partition
    diffs = await env.diff()
    assert set(diffs) == {"m_a", "m_b"}  # the partitioned parent holds no rows of its own
    assert [(r.kind, r.key) for r in diffs["m_a"].rows] == [("delete", {"id": 1, "region": "a"}),
                                                            ("insert", {"id": 3, "region": "a"})]
    assert diffs["m_b"].rows == [RowChange(kind="insert", key={"id": 1, "region": "b"},
                                           after={"id": 1, "region": "b"})]


async def test_trigger_side_effects(env: Env):
    await env.setup("""create table S.t (id int primary key, v int);
        create table S.audit (seq serial primary key, op text, id int);
        create function S.log() returns trigger language plpgsql as $$
        begin insert into S.audit (op, id) values (tg_op, coalesce(new.id, old.id)); return null; end $$;
        create trigger t_log after insert or update or delete on S.t for each row execute function S.log();
        insert into S.t values (1, 1)""")
    await env.write("update S.t set v = 2 where id = 1")
    await env.write("insert into S.t values (2, 2)")
    diffs = await env.diff()
    a = diffs["audit"]
    assert (a.inserted, a.updated, a.deleted) == (2, 0, 0)
    assert [r.after for r in a.rows] == [{"seq": 2, "op": "UPDATE", "id": 1}, {"seq": 3, "op": "INSERT", "id": 2}]
    assert (diffs["t"].inserted, diffs["t"].updated) == (1, 1)


async def test_locked_rows_are_not_changes(env: Env):
    await env.setup("create table S.t (id int primary key, v int);"
                    "insert into S.t select i, i from generate_series(1, 6) i;"
                    "create table S.nopk (x int); insert into S.nopk values (1), (2), (3)")
    await env.write("select * from S.t where id in (1, 2) for update")
    await env.write("savepoint a; select * from S.t where id = 3 for share; release savepoint a")
    await env.write("select * from S.t where id = 4 for key share")
    await env.write("update S.t set v = 50 where id = 5")
    await env.write("select * from S.nopk where x < 3 for no key update")
    await env.write("insert into S.nopk values (4)")
    diffs = await env.diff()
    assert [(r.kind, r.key) for r in diffs["t"].rows] == [("update", {"id": 5})]
    assert (diffs["t"].updated, diffs["t"].deleted) == (1, 0)
    n = diffs["nopk"]
    assert (n.inserted, n.updated, n.deleted) == (1, 0, 0)
    assert n.rows == [RowChange(kind="insert", after={"x": 4})]


async def test_table_created_in_held_transaction(env: Env):
    await env.write("create table S.fresh (id int primary key, v text); insert into S.fresh values (2, 'b'), (1, 'a')")
    await env.write("create table S.empty (id int)")
    await env.write("create temporary table scratch (id int); insert into scratch values (1)")
    # the proxy's own schema is not the agent's doing (rolled back with the held transaction)
    await env.write(f"create schema if not exists dbproxy; create table dbproxy.{env.schema} (id int);"
                    f"insert into dbproxy.{env.schema} values (1)")
    notes: list[str] = []
    diffs = await env.diff(notes=notes)
    assert set(diffs) == {"fresh", "empty"}  # nor are temporary tables part of the database's state
    f = diffs["fresh"]
    assert (f.inserted, f.updated, f.deleted) == (2, 0, 0)
    assert f.rows == [RowChange(kind="insert", key={"id": 1}, after={"id": 1, "v": "a"}),
                      RowChange(kind="insert", key={"id": 2}, after={"id": 2, "v": "b"})]
    assert (diffs["empty"].inserted, diffs["empty"].rows) == (0, [])
    assert any("fresh" in n and "created" in n for n in notes)


async def test_truncate_drop_and_exclusive_lock(env: Env):
    """Tables locked ACCESS EXCLUSIVE cannot be read on the committed side: the diff must neither
    wait nor fail, and says what it knows."""
    await env.setup("create table S.tr (id int primary key, v text);"
                    "insert into S.tr select i, 'v' || i from generate_series(1, 10) i;"
                    "create table S.dropped (id int); insert into S.dropped select generate_series(1, 7);"
                    "create table S.altered (id int primary key, v int); insert into S.altered values (1, 1), (2, 2);"
                    "analyze S.tr; analyze S.dropped; analyze S.altered")
    await env.write("truncate S.tr; insert into S.tr values (100, 'new')")
    await env.write("drop table S.dropped")
    await env.write("alter table S.altered add column w int; update S.altered set w = 5 where id = 2")
    notes: list[str] = []
    diffs = await env.diff(notes=notes)
    tr = diffs["tr"]
    assert (tr.inserted, tr.updated, tr.deleted, tr.truncated) == (1, 0, 10, True)
    assert tr.rows == [RowChange(kind="insert", key={"id": 100}, after={"id": 100, "v": "new"})]
    dr = diffs["dropped"]
    assert (dr.inserted, dr.deleted, dr.rows, dr.truncated) == (0, 7, [], True)
    al = diffs["altered"]
    assert al.rows == [RowChange(kind="update", key={"id": 2}, before=None, after={"id": 2, "v": 2, "w": 5})]
    assert any("tr:" in n and "truncated" in n for n in notes)
    assert any("dropped:" in n and "dropped" in n for n in notes)
    assert any("altered:" in n and "ACCESS EXCLUSIVE" in n for n in notes)


async def test_limit_with_exact_counts(env: Env):
    await env.setup("create table S.t (id int primary key, n int);"
                    "insert into S.t select i, i from generate_series(1000, 1, -1) i")  # ctids in reverse key order
    await env.write("update S.t set n = n + 1")
    await env.write("delete from S.t where id > 997")
    await env.write("insert into S.t values (1001, 0), (1002, 0)")
    await env.write("create table S.nopk as select generate_series(1, 30) x")
    d = (await env.diff(limit=5))["t"]
    assert (d.inserted, d.updated, d.deleted, d.truncated) == (2, 997, 3, True)
    assert d.rows == [RowChange(kind="update", key={"id": i}, before={"n": i}, after={"n": i + 1})
                      for i in range(1, 6)]
    d = (await env.diff(limit=0))["nopk"]
    assert (d.inserted, d.rows, d.truncated) == (30, [], True)
    d = (await env.diff(limit=1000))["t"]
    assert (len(d.rows), d.truncated) == (1000, True)
    assert [(r.kind, r.key) for r in d.rows[-5:]] == [("update", {"id": 996}), ("update", {"id": 997}),
                                                       ("delete", {"id": 998}), ("delete", {"id": 999}),
                                                       ("delete", {"id": 1000})]


async def test_large_values_are_shortened(env: Env):
    await env.setup("create table S.t (id int primary key, doc text, blob bytea, small text);"
                    "insert into S.t values (1, repeat('a', 5000), null, 's'), (2, repeat('é', 300), null, 's')")
    await env.write("update S.t set doc = repeat('a', 4999) || 'b' where id = 1")  # same length, same start
    await env.write("update S.t set small = 'S' where id = 2")  # the large value is unchanged
    await env.write("insert into S.t values (3, 'short', decode(repeat('ff', 1000), 'hex'), null)")
    d = (await env.diff())["t"]
    assert (d.inserted, d.updated) == (1, 2)
    u1, u2, ins = d.rows
    cut = "a" * 200 + "… (5000 bytes)"
    assert u1 == RowChange(kind="update", key={"id": 1}, before={"doc": cut}, after={"doc": cut})
    assert u2 == RowChange(kind="update", key={"id": 2}, before={"small": "s"}, after={"small": "S"})
    assert ins.after == {"id": 3, "doc": "short", "blob": "\\x" + "ff" * 99 + "… (1000 bytes)", "small": None}
    # long values are cut before they leave the server, not after
    await env.write("insert into S.t values (4, repeat('z', 5000000), null, null)")
    sent: list[int] = []
    original = env.held.query

    async def measuring(sql: str, params: Sequence[str | None] = ()) -> list[tuple[str | None, ...]]:
        rows = await original(sql, params)
        sent.append(sum(len(v or "") for r in rows for v in r))
        return rows

    env.held.query = measuring  # type: ignore[method-assign]
    d = (await env.diff())["t"]
    assert d.rows[-1].after and d.rows[-1].after["doc"] == "z" * 200 + "… (5000000 bytes)"
    assert max(sent) < 20000


async def test_blocked_sessions(env: Env, pg):
    await env.setup("create table S.t (id int primary key, v int); insert into S.t values (1, 1), (2, 2)")
    await env.write("update S.t set v = 10 where id = 1")
    assert await blocked_by(env.committed, env.pid) == []
    writer = await asyncpg.connect(pg.dsn("postgres"), server_settings={"application_name": "blocked-writer"})
    locker = await asyncpg.connect(pg.dsn("postgres"))
    reader = await asyncpg.connect(pg.dsn("postgres"))
    tasks: list[asyncio.Task] = []
    try:
        pids = [await c.fetchval("select pg_backend_pid()") for c in (writer, locker, reader)]
        # waits for the row lock of the held transaction
        tasks.append(asyncio.create_task(writer.execute(f"update {env.t('t')} set v = 11 where id = 1")))
        await wait_for_lock(env.committed, pids[0])
        [b] = await blocked_by(env.committed, env.pid)
        assert (b.pid, b.application_name, b.state, b.user) == (pids[0], "blocked-writer", "active", "postgres")
        assert b.query and "set v = 11" in b.query
        assert b.waiting_seconds is not None and 0 <= b.waiting_seconds < 60
        # waits for the table lock; the reader then queues behind it (blocked only indirectly)
        tasks.append(asyncio.create_task(locker.execute(f"begin; lock table {env.t('t')} in access exclusive mode")))
        await wait_for_lock(env.committed, pids[1])
        tasks.append(asyncio.create_task(reader.fetch(f"select * from {env.t('t')}")))
        await wait_for_lock(env.committed, pids[2])
        assert sorted(b.pid for b in await blocked_by(env.committed, env.pid)) == sorted(pids[:2])
        assert sorted(b.pid for b in await blocked_by(env.committed, env.pid, indirect=True)) == sorted(pids)
        # reading the table on the committed side would queue too: the diff degrades instead of waiting
        notes: list[str] = []
        d = (await env.diff(notes=notes))["t"]
        assert d.rows == [RowChange(kind="update", key={"id": 1}, after={"id": 1, "v": 10})]
        assert len(notes) == 1 and "queued" in notes[0]
        await env.held_conn.execute("rollback")
        await asyncio.wait_for(tasks[0], 10)
        await asyncio.wait_for(tasks[1], 10)
        await locker.execute("rollback")
        assert len(await asyncio.wait_for(tasks[2], 10)) == 2
        assert await blocked_by(env.committed, env.pid) == []
    finally:
        for t in tasks:
            t.cancel()
        for c in (writer, locker, reader):
            c.terminate()


async def wait_for_lock(conn: asyncpg.Connection, pid: int) -> None:
    for _ in range(200):
        if await conn.fetchval("select wait_event_type = 'Lock' from pg_stat_activity where pid = $1", pid):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"backend {pid} never waited for a lock")

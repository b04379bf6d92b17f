"""The schema copy's catalog fingerprint (`sandbox.schema_copy.fingerprint`) against real PostgreSQL.

The sandbox makes a new schema copy only when the fingerprint changes, so every DDL statement
whose effect the copy holds must change it, or verifications run on a stale copy and fail for
the wrong reason (found by the inverse-SQL benchmark: a committed COMMENT left the copy without
it). Data operations must not change it, or every write would make a new copy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from sandbox.schema_copy import fingerprint

SETUP = """
CREATE TABLE parent (id int PRIMARY KEY, v text, w int);
CREATE TABLE child (id int NOT NULL, v text, w int, extra int);
CREATE SEQUENCE counter;
CREATE VIEW pv AS SELECT id, v FROM parent;
CREATE FUNCTION f(x int) RETURNS int LANGUAGE sql AS 'SELECT x + 1';
COMMENT ON TABLE parent IS 'before';
INSERT INTO parent SELECT g, 'v' || g, g FROM generate_series(1, 20) g;
"""

#: Each statement changes only what it names, and what it changes is in the schema copy.
DDL = [
    ("comment_on_table", "COMMENT ON TABLE parent IS 'after'"),
    ("comment_removed", "COMMENT ON TABLE parent IS NULL"),
    ("comment_on_column", "COMMENT ON COLUMN parent.v IS 'a value'"),
    ("comment_on_view", "COMMENT ON VIEW pv IS 'a view'"),
    ("comment_on_function", "COMMENT ON FUNCTION f(int) IS 'adds one'"),
    ("comment_on_sequence", "COMMENT ON SEQUENCE counter IS 'counts'"),
    ("sequence_options", "ALTER SEQUENCE counter INCREMENT BY 5"),
    ("inheritance", "ALTER TABLE child INHERIT parent"),
    ("extended_statistics", "CREATE STATISTICS parent_vw ON v, w FROM parent"),
]


@pytest.fixture
async def db(capture_db: str) -> AsyncIterator[asyncpg.Connection]:
    con = await asyncpg.connect(capture_db)
    try:
        await con.execute(SETUP)
        yield con
    finally:
        await con.close()


@pytest.mark.parametrize("sql", [s for _, s in DDL], ids=[i for i, _ in DDL])
async def test_ddl_changes_the_fingerprint(db: asyncpg.Connection, sql: str) -> None:
    before = await fingerprint(db)
    await db.execute(sql)
    assert await fingerprint(db) != before


async def test_data_operations_keep_the_fingerprint(db: asyncpg.Connection) -> None:
    before = await fingerprint(db)
    for sql in ("INSERT INTO parent VALUES (100, 'new', 1)", "UPDATE parent SET v = 'x' WHERE id < 5",
                "SELECT nextval('counter')", "SELECT setval('counter', 42)", "TRUNCATE child", "VACUUM FULL parent",
                "ANALYZE parent"):
        await db.execute(sql)
    assert await fingerprint(db) == before

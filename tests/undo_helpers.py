"""Helpers for undo tests: digests of table contents and catalog shape, and a captured forward
transaction committed with its undo marker (what the proxy does for an agent in undo mode).

Stable API (the property tests import it):
- `digest(con, tables)` -> {table: (row count, md5 of the sorted row texts) or None if absent};
  a name may be "ONLY parent" (an inheritance parent without its children's rows)
- `shape(con, schema)` -> the catalog shape of a schema (relations, columns, functions, types,
  indexes, privileges, comments), as a sorted tuple of strings
- `forward(url, sql, settings=..., announce=...)` -> the transaction id of a committed, captured
  transaction (DDL announced as the proxy does, unless `announce=False`)
- `capture_count(con, xid)` -> how many capture_log rows that transaction has
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg

from inverse.ddl_targets import Limits, prepared

CAPTURE_ON = {"dbproxy.capture": "on"}
MARKER_SQL = "INSERT INTO dbproxy.undo_records (xid, agent, changes) VALUES (txid_current(), 'test', 0) RETURNING xid"

_ROW = "digest_row"  # the row alias (a column named like the alias would shadow it)
Digest = dict[str, tuple[int, str | None] | None]
Forward = str | Callable[[asyncpg.Connection], Awaitable[Any]]


async def digest(con: asyncpg.Connection, tables: Iterable[str]) -> Digest:
    """Row count and md5 of the sorted row texts (`row::text`) of each table (None: no such table).
    Every type's own output function: it tells 1.0 from 1.00, keeps json text as written, array
    bounds, and SQL NULL apart from JSON null (which `to_json` images cannot)."""
    out: Digest = {}
    for name in tables:
        # "ONLY parent": an inheritance parent's own rows, without its children's
        if await con.fetchval("SELECT to_regclass($1)", name.removeprefix("ONLY ")) is None:
            out[name] = None
            continue
        row = await con.fetchrow(
            f"SELECT count(*), md5(string_agg({_ROW}::text, E'\\n' ORDER BY {_ROW}::text COLLATE \"C\")) "
            f"FROM {name} AS {_ROW}")
        assert row is not None
        out[name] = (int(row[0]), row[1])
    return out


_SHAPE_SQL = """
SELECT 'rel ' || c.relname || ' ' || c.relkind::text || ' acl='
       || array(SELECT i::text FROM unnest(coalesce(c.relacl, acldefault(CASE c.relkind WHEN 'S' THEN 's'
                ELSE 'r' END::"char", c.relowner))) i ORDER BY 1)::text
       || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '-')
       || ' view=' || coalesce(pg_get_viewdef(c.oid), '-') || ' owner=' || pg_get_userbyid(c.relowner)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
UNION ALL
SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(k.oid) FROM pg_constraint k
JOIN pg_namespace n ON n.oid = k.connamespace WHERE n.nspname = $1
UNION ALL
SELECT 'seq ' || c.relname || ' ' || s.seqstart || ' ' || s.seqincrement || ' ' || s.seqmax
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1
UNION ALL
SELECT 'col ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || ' #' || row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum) || ' notnull=' || a.attnotnull
       || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
       || ' comment=' || coalesce(col_description(c.oid, a.attnum), '-')
       || ' acl=' || array(SELECT i::text FROM unnest(a.attacl) i ORDER BY 1)::text
       || ' identity=' || a.attidentity::text || ' generated=' || a.attgenerated::text
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = $1 AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'fn ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc) || ' acl='
       || array(SELECT i::text FROM unnest(coalesce(p.proacl, acldefault('f', p.proowner))) i ORDER BY 1)::text
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = $1
UNION ALL
SELECT 'type ' || t.typname || ' ' || t.typtype::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = $1
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
UNION ALL
SELECT 'trigger ' || t.tgname || ' on ' || t.tgrelid::regclass::text || ' ' || t.tgenabled::text
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND NOT t.tgisinternal
"""


async def shape(con: asyncpg.Connection, schema: str = "public") -> tuple[str, ...]:
    """The catalog shape of `schema`: what DDL changes and its undo must put back."""
    return tuple(sorted(r[0] for r in await con.fetch(_SHAPE_SQL, schema)))


async def forward(url: str, sql: Forward, *, settings: dict[str, str] | None = None, announce: bool = True,
                  limits: Limits | None = None) -> int:
    """Run `sql` (text, possibly several statements, or an async callable given the connection) in
    one transaction of a captured session, with the undo marker written inside it, and commit.
    Text runs as the proxy sends it (`announce`): each DDL statement preceded by its
    `dbproxy.before_ddl` call; `announce=False` runs it as one query string, as DDL hidden from the
    proxy arrives (inside a function or DO block). Returns the transaction id."""
    con = await asyncpg.connect(url, server_settings={**CAPTURE_ON, **(settings or {})})
    try:
        async with con.transaction():
            if isinstance(sql, str) and announce:
                for statement in prepared(sql, limits):
                    await con.execute(statement)
            elif isinstance(sql, str):
                await con.execute(sql)
            else:
                await sql(con)
            xid = await con.fetchval(MARKER_SQL)
        return int(xid)
    finally:
        await con.close()


async def capture_count(con: asyncpg.Connection, xid: int) -> int:
    return int(await con.fetchval("SELECT count(*) FROM dbproxy.capture_log WHERE xid = $1", xid))

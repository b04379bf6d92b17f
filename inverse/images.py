"""Captured changes as Python values: what `dbproxy.capture_log` holds for one transaction.

A `Change` is one row change (insert, update, delete, or a row removed by TRUNCATE) with its row
images as the exact JSON text the capture trigger wrote, or one DDL event. Images stay text: they
are compared and turned back into rows by PostgreSQL (`to_json` / `json_populate_record`), never
re-encoded in Python, so nothing is lost on the way. `TableInfo` is what inverse synthesis needs
to know about a table, read from the catalog with `TABLE_INFO_SQL`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

#: I/U/D: a row inserted, updated, deleted; T: a row removed by TRUNCATE; X: a DDL event; R, C, S:
#: state kept before a DDL statement (a dropped table's row, a dropped or retyped column's values, a
#: sequence position or materialized view digest: `inverse.ddl_state`).
Op = Literal["I", "U", "D", "T", "X", "R", "C", "S"]
SNAPSHOT_OPS = frozenset({"R", "C", "S"})


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    op: Op
    rel: int | None  # table oid (None for DDL events without one)
    old: str | None = None  # JSON text of the row before (U, D, T)
    new: str | None = None  # JSON text of the row after (I, U)
    ddl: dict[str, Any] | None = None  # op X: event, group, tag, object_type, identity, query

    @property
    def is_row(self) -> bool:
        """A row change of the transaction itself (not a DDL event, not state kept before DDL)."""
        return self.op in ("I", "U", "D", "T")


#: Columns selected from `dbproxy.capture_log`, in the order `change_from_row` expects.
CAPTURE_COLUMNS = "seq, rel, op, old, new, ddl"
#: Read inside the agent's transaction at its COMMIT (undo mode): its captured changes, a bounded
#: number (more means the inverse is built from the log when needed, see `dbproxy.undo.commit`).
CAPTURE_LIMIT = 1000
#: A seventh column carries the schema version the verification cache is keyed by: the DDL
#: epoch, or NULL (no caching) when the DDL event triggers that advance it are not installed.
#: Agents cannot read the log itself: `dbproxy.captured_changes` returns their own transaction's.
CAPTURE_FETCH_SQL = f"SELECT {CAPTURE_COLUMNS}, epoch FROM dbproxy.captured_changes({CAPTURE_LIMIT + 1}, false)"
#: Only the DDL events of the current transaction (when it has too many row changes to fetch).
CAPTURE_DDL_FETCH_SQL = f"SELECT {CAPTURE_COLUMNS} FROM dbproxy.captured_changes(2147483647, true)"
#: How many changes the current transaction captured in all.
CAPTURE_COUNT_SQL = "SELECT dbproxy.captured_count()"


def change_from_row(row: tuple[Any, ...] | Any) -> Change:
    """A capture_log row (text or asyncpg values) -> Change."""
    seq, rel, op, old, new, ddl = tuple(row)
    if isinstance(op, bytes):
        op = op.decode()
    if isinstance(ddl, str):
        ddl = json.loads(ddl)
    return Change(int(seq), op, int(rel) if rel is not None else None, old, new, ddl)


@dataclass(frozen=True, slots=True)
class TableInfo:
    oid: int
    name: str  # schema-qualified, quoted where needed (regclass text with schema)
    schema: str
    table: str
    columns: tuple[str, ...]  # live columns in order
    writable: tuple[str, ...]  # columns an INSERT may set (not generated)
    identity_always: tuple[str, ...]
    key: tuple[str, ...]  # primary-key columns; empty: rows are matched by their whole image
    sequences: tuple[str, ...] = field(default=())  # sequences feeding column defaults
    relkind: str = "r"
    # NOT NULL json/jsonb columns: an image's `null` there can only be JSON null (`to_json` writes
    # SQL NULL and JSON null alike, and `json_populate_record` reads both back as SQL NULL).
    json_not_null: tuple[str, ...] = field(default=())

    @property
    def updatable(self) -> tuple[str, ...]:
        """Columns an UPDATE may set: identity ALWAYS columns only accept DEFAULT."""
        return tuple(c for c in self.writable if c not in self.identity_always)


TABLE_INFO_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind,
       array(SELECT a.attname FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) AS columns,
       array(SELECT a.attname FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum) AS writable,
       array(SELECT a.attname FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity = 'a'
             ORDER BY a.attnum) AS identity_always,
       array(SELECT a.attname FROM pg_catalog.pg_index i
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord) AS key,
       array(SELECT DISTINCT s.oid::regclass::text FROM pg_catalog.pg_depend d
             JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid = c.oid AND d.deptype IN ('a', 'i')) AS sequences,
       array(SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
               AND a.attnotnull
               AND (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END)
                   IN ('pg_catalog.json'::pg_catalog.regtype, 'pg_catalog.jsonb'::pg_catalog.regtype)
             ORDER BY a.attnum) AS json_not_null
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY($1::oid[])
"""


def quote_ident(name: str) -> str:
    """PostgreSQL identifier quoting (always quoted: exact and never ambiguous)."""
    return '"' + name.replace('"', '""') + '"'


def table_info_from_row(row: tuple[Any, ...] | Any) -> TableInfo:
    oid, schema, table, relkind, columns, writable, identity, key, sequences, json_not_null = tuple(row)
    return TableInfo(int(oid), f"{quote_ident(schema)}.{quote_ident(table)}", schema, table,
                     tuple(columns), tuple(writable), tuple(identity), tuple(key), tuple(sequences),
                     relkind.decode() if isinstance(relkind, bytes) else relkind, tuple(json_not_null))

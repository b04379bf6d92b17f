"""Row-level diff of a *held* transaction (still open upstream) against the committed state, and the
sessions its locks block. `dbproxy show ID` prints both.

Method
------
Two connections look at the same database: `held` runs SQL inside the held transaction (on the
agent's upstream connection, inside a savepoint the caller manages), `committed` is a separate,
idle connection that sees only committed data (read in one REPEATABLE READ READ ONLY transaction).

1. **Which transaction ids are ours.** Not the `transactionid` locks: PostgreSQL drops a
   subtransaction's xid lock at RELEASE SAVEPOINT (the lock only names the top level and the
   savepoints still open, see `held_xids`), and agents' transactions run as savepoints. Instead: the
   held transaction's subtransaction xids are all assigned after its top-level xid
   (`pg_current_xact_id_if_assigned()`, read in the held transaction) and before the next xid
   (`age(top)` on the committed side, in a transaction without an xid, counts up to it). A row
   version the held transaction *sees* whose xmin is in that window and still `in progress`
   (`pg_xact_status`) was made by the held transaction: other running transactions' rows are
   invisible to it; rows of transactions that committed meanwhile are not `in progress`.
2. **Which tables.** Relations the held backend has locked in RowExclusiveLock or a stronger mode
   (relation locks do survive RELEASE SAVEPOINT and go at ROLLBACK TO), kept when they are ordinary
   tables (relkind `r`: partitions are reported one by one, the partitioned parent holds no rows)
   outside `pg_catalog`, `information_schema`, `pg_toast`, temporary schemas and the proxy's own
   `dbproxy` schema. This catches cascades and trigger side effects.
3. **Which rows.** New versions: rows seen in `held` whose xmin is ours (1). Old versions: rows seen
   in `committed` whose xmax, or a member of their MultiXact xmax (a row locked in one savepoint and
   changed in another, or locked FOR KEY SHARE by a foreign-key check, gets one), is a running xid
   of the window; of those, the held side keeps the ones it does not see any more at that ctid,
   whose xmin its snapshot does see, and with one of those xids still running. That drops rows the
   transaction only locked (SELECT ... FOR UPDATE, foreign-key checks: still visible, unchanged, at
   the same ctid), rows other running transactions lock or delete (visible to the held side), rows
   whose deleter committed during the diff, and rows a REPEATABLE READ snapshot never saw. Rows are
   compared as `to_jsonb(row)` with the held session's output settings (TimeZone, IntervalStyle,
   bytea_output, extra_float_digits, lc_monetary) copied to the committed side. Old and new versions
   are paired by primary key: both → update (only the changed columns are shown; an update that
   changed nothing is not counted), only old → delete, only new → insert. Without a primary key
   (`RowChange.key` is None) deletes and inserts are paired by equal content, so an update shows as
   a delete plus an insert and rewriting identical rows shows nothing.
4. **Bounds.** Counts are exact and computed in SQL; at most `limit` changes per table are listed,
   from `offset` on (ordered by key, then kind), and `TableDiff.truncated` says when there are more. Values longer
   than 200 characters (text, json, bytea, anything) are cut in SQL before they are sent, to the
   first 200 characters plus "… (N bytes)" (bytes of the text form; of the binary value for bytea).
   Two cut values still compare by an md5 of their full text. Numbers keep the digits PostgreSQL
   printed (`Decimal`: a numeric(10,2) shows `27.00`, not `27.0`; see `dbproxy.review.jsonio`).

Round trips: held 2 (catalog, locks and settings; then one statement for every table), committed 4
or 5 (BEGIN with settings, catalog, old versions, before images of listed rows when there are any,
ROLLBACK). The old versions' keys, ctids, xids and md5s (of the row's text form) travel committed →
held (some 70 bytes plus the key per changed row, as five array literals per table, passed on
untouched); only counts and the listed rows come back from the held side, and only the listed rows
are turned into JSON. Paging (`offset`, `limit`) is per table, in key order; `table` diffs one
table only. A 100,000-row UPDATE of a 200,000-row table takes about 1.2–1.8 s for one page on the
2-core development VM under load (`python -m benchmarks.diff_page`).

Limits
------
- Every affected table is scanned sequentially on both connections (there is no index on
  xmin/xmax); the held-side scan runs on the agent's connection. About 3 s for a 1M-row table with
  110k changed rows on a laptop, of which 2 s on the held side.
- Reads in a SERIALIZABLE held transaction take predicate locks, and these whole-table scans then
  raise the chance of a serialization failure for it (a savepoint rollback does not drop them).
- A primary-key change shows as a delete of the old key and an insert of the new one.
- A table the transaction locked ACCESS EXCLUSIVE (TRUNCATE, DROP, ALTER TABLE, LOCK TABLE) cannot
  be read on the committed side until the transaction ends (the read would wait for the lock), and
  neither can a table another session is queued for ACCESS EXCLUSIVE on. Then:
  - dropped: `deleted` is the estimate of its committed rows (`pg_stat` live tuples or `reltuples`);
  - truncated or rewritten (its relfilenode differs: TRUNCATE, ALTER TABLE ... TYPE, CLUSTER): that
    estimate as deleted, every current row as inserted;
  - otherwise (e.g. ALTER TABLE ADD COLUMN plus UPDATE): the row versions the transaction wrote are
    listed as updates with unknown before-values (`before=None`, the whole row after); deleted rows
    are not seen.
  Each such table, and each table created in the transaction, gets a sentence in `notes` (pass a
  list to collect them); `TableDiff` has no field for it.
- A table the agent only locked (LOCK TABLE, SELECT FOR UPDATE) shows no rows; DDL without data
  changes (CREATE INDEX, ADD CONSTRAINT) shows nothing; a new table is listed with all its rows.
- Temporary tables, views, materialized views, foreign tables and sequences are not diffed.
- The committed side reads with `lock_timeout` 2 s: a lock queue that forms between its catalog
  look and its reads raises `asyncpg.LockNotAvailableError` instead of hanging.
- Races and wraparound corners: a row whose xmin was frozen more than 2^32 xids ago and whose raw
  value equals a running xid can fail the snapshot test; a MultiXact id numerically equal to a
  running xid of the window is taken for that xid.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

import asyncpg

from dbproxy.review.models import BlockedSession, RowChange, TableDiff

#: characters of a long value kept in listings
CUT = 200
#: how long committed-side reads may wait for a lock before giving up
LOCK_TIMEOUT = "2s"
#: session settings that change how values render as text, copied from the held session
_OUTPUT_SETTINGS = ("TimeZone", "IntervalStyle", "bytea_output", "extra_float_digits", "lc_monetary", "DateStyle")
#: What old and new row versions are compared by: an md5 of the row's text form (cheaper than of its
#: jsonb), the same on both sides since their output settings are the same.
_ROW_HASH = "md5({t}::text)"
_WRITE_LOCK_MODES = ("RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock",
                     "ExclusiveLock", "AccessExclusiveLock")
_USER_TABLE = ("{c}.relkind = 'r' and {c}.relpersistence <> 't' "
               "and {n}.nspname not in ('pg_catalog', 'information_schema', 'dbproxy') "
               "and {n}.nspname !~ '^pg_(toast|temp_)'")


class HeldQuery(Protocol):
    async def query(self, sql: str, params: Sequence[str | None] = ()) -> list[tuple[str | None, ...]]: ...


_XIDS_SQL = """select l.transactionid::text from pg_catalog.pg_locks l
where l.pid = $1::text::int and l.locktype = 'transactionid' and l.mode = 'ExclusiveLock' and l.granted"""


async def held_xids(held: HeldQuery, held_pid: int) -> list[str]:
    """The xids the held transaction holds locks on, as text: its top-level xid and those of its
    subtransactions that are still open. Released savepoints' xids are *not* among them (PostgreSQL
    drops a subtransaction's xid lock when it commits into its parent), so this does not tell which
    rows the transaction wrote; `compute_diff` does not use it."""
    return [r[0] for r in await held.query(_XIDS_SQL, (str(held_pid),)) if r[0] is not None]


# --- round trip 1 (held): our top-level xid, the tables we write-locked, the output settings -----

_PK_SQL = """(select pg_catalog.json_agg(pg_catalog.json_build_array(a.attname, pg_catalog.quote_ident(a.attname))
             order by k.ord)
       from pg_catalog.pg_index i
       cross join unnest(i.indkey::int2[]) with ordinality as k(attnum, ord)
       join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
       where i.indrelid = c.oid and i.indisprimary)::text"""

_HELD_CATALOG_SQL = f"""with locks as (
  select l.relation, bool_or(l.mode = 'AccessExclusiveLock') as ae
  from pg_catalog.pg_locks l
  where l.pid = $1::text::int and l.locktype = 'relation' and l.granted
    and l.database = (select d.oid from pg_catalog.pg_database d where d.datname = pg_catalog.current_database())
    and l.mode in ({", ".join(f"'{m}'" for m in _WRITE_LOCK_MODES)})
  group by l.relation)
select 'top', pg_catalog.pg_current_xact_id_if_assigned()::text, null, null, null, null, null
union all
select 'rel', k.relation::text, k.ae::text,
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), c.relfilenode::text, {_PK_SQL},
       (select pg_catalog.json_agg(a.attname order by a.attnum) from pg_catalog.pg_attribute a
        where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped)::text
  from locks k
  left join pg_catalog.pg_class c on c.oid = k.relation
  left join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  where c.oid is null or ({_USER_TABLE.format(c="c", n="n")})
union all
select 'set', s.name, pg_catalog.current_setting(s.name), null, null, null, null
  from unnest(array[{", ".join(f"'{s}'" for s in _OUTPUT_SETTINGS)}]) as s(name)"""

# --- committed side: catalog of the same relations ------------------------------------------------

_COMMITTED_CATALOG_SQL = f"""select c.oid::text,
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
       c.relfilenode::text, ({_USER_TABLE.format(c="c", n="n")})::text,
       coalesce(nullif(pg_catalog.pg_stat_get_live_tuples(c.oid), 0), greatest(c.reltuples, 0)::bigint)::text,
       exists (select 1 from pg_catalog.pg_locks l
               where l.locktype = 'relation' and l.relation = c.oid and l.mode = 'AccessExclusiveLock'
                 and l.pid <> $2::text::int
                 and l.database = (select d.oid from pg_catalog.pg_database d
                                   where d.datname = pg_catalog.current_database()))::text
from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where c.oid = any($1::text::oid[])
union all
select 'age', pg_catalog.age($3::text::xid)::text, null, null, null, null"""

TableKind = Literal["normal", "new", "rewritten", "dropped", "locked"]


@dataclass
class _Table:
    idx: int
    oid: str
    name: str  # quoted, schema-qualified
    kind: TableKind
    pk: list[tuple[str, str]] | None = None  # (name, quoted name) in key order
    estimate: int = 0  # committed rows, estimated (dropped / rewritten)
    columns: list[str] = field(default_factory=list)  # in table order
    note: str | None = None

    def key_sql(self, alias: str) -> str:
        if not self.pk:
            return "null::jsonb"
        return "pg_catalog.jsonb_build_array(" + ", ".join(f"{alias}.{q}" for _, q in self.pk) + ")"


def _dist(xid: str) -> str:
    """How many xids before the committed side's next xid ($1, xid8 as text) the 32-bit `xid` is."""
    return f"((($1::text::bigint % 4294967296) - ({xid})::text::bigint + 4294967296) % 4294967296)"


def _xid8(xid: str) -> str:
    """The 32-bit `xid` widened to xid8, taking it as at most 2^32 - 1 xids old."""
    return f"($1::text::bigint - {_dist(xid)})::text::xid8"


def _ours(xid: str) -> str:
    """`xid` was assigned at or after the held transaction's top-level xid ($2 xids ago) and is still
    running: in the held transaction, a visible row version made by such an xid was made by it."""
    return (f"({_dist(xid)} between 1 and $2::text::bigint "
            f"and pg_catalog.pg_xact_status({_xid8(xid)}) = 'in progress')")


def _long_values_sql(row: str, oid: str) -> str:
    """A jsonb object {column: [first CUT characters, size in bytes, md5 of the full text]} of the long
    values in `row` (a jsonb object of a row of table `oid`)."""
    return f"""select coalesce(pg_catalog.jsonb_object_agg(e.key, pg_catalog.jsonb_build_array(
         left(e.s, {CUT}),
         case when e.b and left(e.s, 2) = chr(92) || 'x' then (octet_length(e.s) - 2) / 2 else octet_length(e.s) end,
         md5(e.value::text))), '{{}}'::jsonb)
  from (select x.key, x.value,
               case when pg_catalog.jsonb_typeof(x.value) = 'string' then x.value #>> '{{}}'
                    else x.value::text end as s,
               pg_catalog.jsonb_typeof(x.value) = 'string' and exists (
                 select 1 from pg_catalog.pg_attribute a
                 where a.attrelid = {oid}::oid and a.attname = x.key and a.atttypid = 'bytea'::regtype) as b
        from pg_catalog.jsonb_each({row}) as x) as e
  where length(e.s) > {CUT}"""


def _held_table_sql(t: _Table, limit: int, offset: int = 0, param: int = 3) -> str:
    """One table's part of the held-side statement: a `ch` of changes (k key, kind, r new row, c old
    ctid, nc new ctid), then a count row and the first `limit` changes with long values cut. The
    table's old versions come as five array parameters from `$param` on (see `_old_versions_sql`)."""
    name, key = t.name, t.key_sql("t")
    mine = _ours("t.xmin")
    if t.kind in ("new", "rewritten"):
        ch = (f"ch as (select {key} as k, 'insert'::text as kind, null::tid as c, t.ctid as nc "
              f"from only {name} as t)")
    elif t.kind == "locked":
        ch = (f"ch as (select {key} as k, 'update'::text as kind, null::tid as c, t.ctid as nc "
              f"from only {name} as t where {mine})")
    else:
        p = param
        old = f"""o as (
    select u.k::jsonb as k, u.c, u.h, u.xmin, u.running::jsonb as running
    from unnest(${p}::text::text[], ${p + 1}::text::tid[], ${p + 2}::text::text[], ${p + 3}::text::text[],
                ${p + 4}::text::text[]) as u(k, c, h, xmin, running)),
  old as (select o.* from o
          where not exists (select 1 from only {name} as x where x.ctid = o.c)
            and pg_catalog.pg_visible_in_snapshot({_xid8("o.xmin")}, pg_catalog.pg_current_snapshot())
            and exists (select 1 from pg_catalog.jsonb_array_elements_text(o.running) as x(xid)
                        where pg_catalog.pg_xact_status({_xid8("x.xid")}) = 'in progress'))"""
        if t.pk:
            ch = f"""{old},
  new as (select {key} as k, {_ROW_HASH.format(t="t")} as h, t.ctid as nc from only {name} as t where {mine}),
  ch as (
    select coalesce(new.k, old.k) as k,
           case when old.c is null then 'insert' when new.nc is null then 'delete' else 'update' end as kind,
           old.c, new.nc
    from new full join old on new.k = old.k
    where old.c is null or new.nc is null or new.h is distinct from old.h)"""
        else:
            ch = f"""{old},
  new as (select {_ROW_HASH.format(t="t")} as h, t.ctid as nc from only {name} as t where {mine}),
  new3 as (select new.*, row_number() over (partition by new.h order by new.nc) as rn from new),
  old2 as (select old.*, row_number() over (partition by old.h order by old.c) as rn from old),
  ch as (
    select null::jsonb as k, case when old2.c is null then 'insert' else 'delete' end as kind,
           old2.c, new3.nc
    from new3 full join old2 on new3.h = old2.h and new3.rn = old2.rn
    where new3.h is null or old2.h is null)"""
    i = t.idx
    return f"""(with {ch}
select '{i}', 'n', null, count(*) filter (where kind = 'insert')::text, count(*) filter (where kind = 'update')::text,
       count(*) filter (where kind = 'delete')::text, null
  from ch
union all
select '{i}', l.kind, l.ord::text, l.k::text, (l.r - array(select jsonb_object_keys(lv.big)))::text, lv.big::text,
       l.c::text
  from (select f.*, row_number() over () as ord,  -- in the order of f (a top-N sort, not a full one)
               (select to_jsonb(x.*) from only {name} as x where x.ctid = f.nc) as r  -- listed rows only
        from (select ch.* from ch order by ch.k, ch.kind, ch.c, ch.nc offset {offset} limit {limit}) as f) as l
  cross join lateral ({_long_values_sql("l.r", t.oid)}) as lv(big))"""


def _old_versions_sql(t: _Table) -> str:
    """One table's part of the committed-side statement: key, ctid, md5, xmin and the running xids
    of the window (its xmax, or its MultiXact's members) of every committed row version that a
    running transaction no older than the held one deletes, updates or locks. The held side then
    keeps those it no longer sees."""
    return f"""select '{t.idx}', array_agg(v.k)::text, array_agg(v.c)::text, array_agg(v.h)::text,
       array_agg(v.xmin)::text, array_agg(v.running)::text
from (select {t.key_sql("t")}::text as k, t.ctid as c, {_ROW_HASH.format(t="t")} as h, t.xmin::text as xmin,
       r.running::text as running
  from only {t.name} as t
  cross join lateral (select case
    when {_ours("t.xmax")} then pg_catalog.jsonb_build_array(t.xmax::text)
    when pg_catalog.mxid_age(t.xmax) between 1 and (
           select pg_catalog.mxid_age(d.datminmxid) from pg_catalog.pg_database d
           where d.datname = pg_catalog.current_database())
      then (select pg_catalog.jsonb_agg(m.xid::text) from pg_catalog.pg_get_multixact_members(t.xmax) m
            where {_ours("m.xid")})
    end) as r(running)
  where t.xmax <> '0'::xid and r.running is not null) as v"""


def _params(sql: str, *values: str) -> tuple[str, ...]:
    """The leading `values` the statement refers to ($1..$n): unused parameters make the server fail."""
    n = len(values)
    while n and f"${n}" not in sql:
        n -= 1
    return values[:n]


def _literal(s: str) -> str:
    return "E'" + s.replace("\\", "\\\\").replace("'", "''") + "'"


def _array_literal(items: Sequence[str]) -> str:
    return "{" + ",".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in items) + "}"


def _decode(text: str | None) -> Any:
    return None if text is None else json.loads(text, parse_float=Decimal)


def _canon(v: Any) -> Any:
    """A comparable form of a decoded JSON value that keeps numeric scale (1.0 differs from 1)."""
    if isinstance(v, dict):
        return ("o", tuple(sorted((k, _canon(x)) for k, x in v.items())))
    if isinstance(v, list):
        return ("a", tuple(_canon(x) for x in v))
    if isinstance(v, bool) or v is None:
        return ("l", v)
    if isinstance(v, int | Decimal):
        return ("n", str(v))
    return ("s", v)


def _in_order(r: RowChange, columns: list[str]) -> RowChange:
    """Columns in table order (jsonb sorts its keys by length, then bytes)."""
    rank = {c: i for i, c in enumerate(columns)}

    def order(values: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if values is None else dict(sorted(values.items(), key=lambda kv: rank.get(kv[0], len(rank))))

    return r.model_copy(update={"before": order(r.before), "after": order(r.after)})


@dataclass
class _Row:
    """A listed row: values with long ones cut, and the md5 of each cut value's full text."""

    values: dict[str, Any]
    md5: dict[str, str]

    @classmethod
    def parse(cls, row: str | None, long: str | None) -> _Row | None:
        values = _decode(row)
        if values is None:
            return None
        md5: dict[str, str] = {}
        for col, (head, size, digest) in (_decode(long) or {}).items():
            values[col] = f"{head}… ({size} bytes)"
            md5[col] = digest
        return cls(values, md5)

    def same(self, other: _Row, col: str) -> bool:
        return (col in self.values) == (col in other.values) and self.md5.get(col) == other.md5.get(col) \
            and _canon(self.values.get(col)) == _canon(other.values.get(col))


class _Committed:
    """The committed connection inside one read-only repeatable-read transaction, with the held
    session's output settings and a lock timeout; rolled back at the end."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        if conn.is_in_transaction():
            raise ValueError("the committed connection must not be inside a transaction")
        self.conn = conn

    async def __aenter__(self) -> _Committed:
        return self

    async def begin(self, settings: dict[str, str]) -> None:
        sets = "".join(f"; SET LOCAL {json.dumps(k)} = {_literal(v)}" for k, v in settings.items())
        await self.conn.execute(f"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                                f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'{sets}")

    async def __aexit__(self, *exc: object) -> None:
        if not self.conn.is_closed() and self.conn.is_in_transaction():
            await self.conn.execute("ROLLBACK")

    async def fetch(self, sql: str, *params: Any) -> list[tuple[str | None, ...]]:
        return [tuple(r) for r in await self.conn.fetch(sql, *params)]


async def compute_diff(held: HeldQuery, committed: asyncpg.Connection, held_pid: int, *, limit: int = 50,
                       offset: int = 0, table: str | None = None, notes: list[str] | None = None) -> list[TableDiff]:
    """The row-level changes of the held transaction of backend `held_pid`, one TableDiff per table
    with changes, in table-name order. Each table lists its changes `offset` to `offset + limit`
    (in key order); counts are always whole. `table` (as `TableDiff.table` names it) limits the
    work to that one table. Sentences about tables that could not be diffed row by row (created,
    dropped, truncated, locked) are appended to `notes` when given."""
    limit = max(0, int(limit))
    offset = max(0, int(offset))
    top: str | None = None
    rels: dict[str, tuple[bool, str | None, str | None, str | None, str | None]] = {}
    settings: dict[str, str] = {}
    for tag, a, b, c, d, e, f in await held.query(_HELD_CATALOG_SQL, (str(held_pid),)):
        if tag == "top":
            top = a
        elif tag == "rel" and a:
            if table is None or c is None or c == table:
                rels[a] = (b == "true", c, d, e, f)
        elif tag == "set" and a and b is not None:
            settings[a] = b
    if top is None or not rels:
        return []

    async with _Committed(committed) as cm:
        await cm.begin(settings)
        rows = await cm.fetch(_COMMITTED_CATALOG_SQL, "{" + ",".join(rels) + "}", str(held_pid),
                              str(int(top) % 2**32))
        cat = {r[0]: r for r in rows if r[0] != "age"}
        # Our xids lie in [top, next): age() in a transaction without an xid counts from the next xid.
        # (Not the snapshot's xmax: that is only past the last *completed* xid.)
        width = int(next(str(r[1]) for r in rows if r[0] == "age"))
        window = (str(int(top) + width), str(width))
        tables: list[_Table] = []
        for oid, (ae, name, filenode, pk, cols) in rels.items():
            crow = cat.get(oid)
            idx = len(tables)
            if name is None:  # not in the held catalog: dropped by the held transaction
                if crow is None or crow[3] != "true" or (table is not None and crow[1] != table):
                    continue
                est = int(crow[4] or 0)
                tables.append(_Table(idx, oid, str(crow[1]), "dropped", estimate=est, note=(
                    f"{crow[1]}: dropped in the held transaction; about {est} committed rows (estimated, "
                    "they cannot be read until the transaction ends)")))
                continue
            keys = [(k, q) for k, q in json.loads(pk)] if pk else None
            t = _Table(idx, oid, name, "normal", keys, columns=json.loads(cols) if cols else [])
            if crow is None:
                t.kind, t.note = "new", f"{name}: created in the held transaction; all its rows are new"
            elif crow[2] != filenode:
                t.kind, t.estimate = "rewritten", int(crow[4] or 0)
                t.note = (f"{name}: truncated or rewritten (TRUNCATE, ALTER TABLE ... TYPE, CLUSTER) in the held "
                          f"transaction; its committed rows cannot be read until the transaction ends: about "
                          f"{t.estimate} rows (estimated) counted as deleted, every current row as inserted")
            elif ae or crow[5] == "true":
                why = ("the held transaction holds an ACCESS EXCLUSIVE lock on it (ALTER TABLE, LOCK TABLE)" if ae
                       else "another session is queued for an ACCESS EXCLUSIVE lock on it")
                t.kind = "locked"
                t.note = (f"{name}: {why}, so its committed rows cannot be read now; the row versions the "
                          "transaction wrote are listed as updates with unknown before-values, and deleted rows "
                          "are not shown")
            tables.append(t)
        if not tables:
            return []

        # committed: key, ctid and md5 of every old version in the normal tables
        normal = [t for t in tables if t.kind == "normal"]
        # Five array literals per table (keys, ctids, md5s, xmins, running xids), passed on to the held
        # side as they came: no per-row work here, and arrays parse much faster than JSON.
        old: dict[int, list[str]] = {}
        if normal:
            sql = "\nunion all\n".join(_old_versions_sql(t) for t in normal)
            for idx, *arrays in await cm.fetch(sql, *window):
                old[int(str(idx))] = [str(a) if a is not None else "{}" for a in arrays]

        # held: counts and listings of every table in one statement
        diffs: dict[int, TableDiff] = {}
        listed: dict[int, list[tuple[int, str, str | None, _Row | None, str | None]]] = {}
        queried = [t for t in tables if t.kind != "dropped"]
        if queried:
            params: list[str] = list(window)
            parts = []
            for t in queried:
                parts.append(_held_table_sql(t, limit, offset, param=len(params) + 1))
                if t.kind == "normal":
                    params += old.get(t.idx, ["{}"] * 5)
            sql = "\nunion all\n".join(parts)
            for idx_s, tag, ord_s, k, r, big, c in await held.query(sql, _params(sql, *params)):
                idx = int(str(idx_s))
                if tag == "n":
                    diffs[idx] = TableDiff(table=tables[idx].name, inserted=int(k or 0), updated=int(r or 0),
                                           deleted=int(big or 0))
                else:
                    listed.setdefault(idx, []).append((int(str(ord_s)), str(tag), k, _Row.parse(r, big), c))

        # committed: before images of the listed updates and deletes
        wanted = {t.idx: [c for *_, c in listed.get(t.idx, []) if c] for t in normal}
        wanted = {i: cs for i, cs in wanted.items() if cs}
        before: dict[tuple[int, str], _Row | None] = {}
        if wanted:
            parts, params = [], []
            for n, (i, cs) in enumerate(wanted.items(), start=1):
                t = tables[i]
                params.append(_array_literal(cs))
                parts.append(f"""select '{i}', t.ctid::text, (t.r - array(select jsonb_object_keys(lv.big)))::text,
       lv.big::text
  from (select x.ctid, to_jsonb(x.*) as r from only {t.name} as x where x.ctid = any(${n}::text::tid[])) as t
  cross join lateral ({_long_values_sql("t.r", t.oid)}) as lv(big)""")
            for i, c, r, big in await cm.fetch("\nunion all\n".join(parts), *params):
                before[(int(str(i)), str(c))] = _Row.parse(r, big)

    result: list[TableDiff] = []
    for t in tables:
        d = diffs.get(t.idx) or TableDiff(table=t.name)
        if t.kind in ("dropped", "rewritten"):
            d.deleted = t.estimate
        rows: list[RowChange] = []
        for _, kind, k, new, c in sorted(listed.get(t.idx, []), key=lambda x: x[0]):
            key = dict(zip([n for n, _ in t.pk], _decode(k), strict=False)) if t.pk and k else None
            old_row = before.get((t.idx, c)) if c else None
            if kind == "insert":
                rows.append(RowChange(kind="insert", key=key, after=new.values if new else None))
            elif kind == "delete":
                rows.append(RowChange(kind="delete", key=key, before=old_row.values if old_row else None))
            elif new is not None and old_row is None:  # "locked": before unknown
                rows.append(RowChange(kind="update", key=key, after=new.values))
            elif new is not None and old_row is not None:
                cols = [col for col in dict.fromkeys([*old_row.values, *new.values]) if not old_row.same(new, col)]
                rows.append(RowChange(kind="update", key=key,
                                      before={col: old_row.values.get(col) for col in cols},
                                      after={col: new.values.get(col) for col in cols}))
        d.rows = [_in_order(r, t.columns) for r in rows]
        d.offset = offset
        d.truncated = d.inserted + d.updated + d.deleted > len(rows)
        if d.inserted or d.updated or d.deleted or t.note:
            result.append(d)
            if t.note and notes is not None:
                notes.append(t.note)
    result.sort(key=lambda d: d.table)
    return result


#: Sessions waiting for a lock, found from pg_locks and pg_blocking_pids, which every role may read.
#: (pg_stat_activity's wait_event_type would hide other roles' waits from a role without
#: pg_read_all_stats.) Their user and application come from pg_stat_activity, which shows those
#: for every session; their state and query only where the role may see them (else NULL).
_BLOCKED_SQL = """with recursive waiting as (
  select distinct l.pid from pg_catalog.pg_locks l where not l.granted and l.pid is not null
), blocked(pid) as (
  select w.pid from waiting w where w.pid <> $1::int and $1::int = any(pg_catalog.pg_blocking_pids(w.pid))
  union
  select w.pid from waiting w join blocked b on b.pid = any(pg_catalog.pg_blocking_pids(w.pid))
  where $2::bool and w.pid <> $1::int
)
select b.pid, a.usename::text, a.application_name, a.state, nullif(a.query, '<insufficient privilege>'),
       extract(epoch from clock_timestamp() - coalesce(
         (select min(l.waitstart) from pg_catalog.pg_locks l where l.pid = b.pid and not l.granted),
         a.state_change, a.query_start))::float8
from blocked b left join pg_catalog.pg_stat_activity a on a.pid = b.pid
order by 6 desc nulls last, b.pid"""


async def blocked_by(conn: asyncpg.Connection, held_pid: int, *, indirect: bool = False) -> list[BlockedSession]:
    """Sessions waiting for a lock the held transaction holds (pg_blocking_pids contains held_pid),
    of any role, longest-waiting first. With `indirect`, also those queued behind such a waiter."""
    rows = await conn.fetch(_BLOCKED_SQL, held_pid, indirect)
    return [BlockedSession(pid=r[0], user=r[1], application_name=r[2], state=r[3], query=r[4],
                           waiting_seconds=r[5]) for r in rows]


_QUEUE_FACTS_SQL = f"""select 't', l.pid, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
from pg_catalog.pg_locks l
join pg_catalog.pg_class c on c.oid = l.relation
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where l.pid = any($1::int[]) and l.locktype = 'relation' and l.granted
  and l.database = (select d.oid from pg_catalog.pg_database d where d.datname = pg_catalog.current_database())
  and l.mode in ({", ".join(f"'{m}'" for m in _WRITE_LOCK_MODES)})
  and {_USER_TABLE.format(c="c", n="n")}
union all
select 'b', b.pid, count(*)::text
from pg_catalog.pg_stat_activity a cross join unnest(pg_catalog.pg_blocking_pids(a.pid)) as b(pid)
where a.wait_event_type = 'Lock' and b.pid = any($1::int[])
group by b.pid"""


async def queue_facts(conn: asyncpg.Connection, held_pids: list[int]) -> tuple[dict[int, list[str]], dict[int, int]]:
    """For the review queue, in one round trip: the tables each held backend holds write locks on
    (what it wrote, cascades included; by name, sorted) and how many sessions wait on its locks."""
    tables: dict[int, list[str]] = {}
    blocking: dict[int, int] = {}
    if not held_pids:
        return tables, blocking
    for kind, pid, value in await conn.fetch(_QUEUE_FACTS_SQL, held_pids):
        if kind == "t":
            tables.setdefault(int(pid), []).append(str(value))
        else:
            blocking[int(pid)] = int(value)
    return {p: sorted(set(ts)) for p, ts in tables.items()}, blocking


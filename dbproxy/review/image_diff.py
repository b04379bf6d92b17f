"""Row-level diff of a *committed* undo-mode transaction, from the row images captured at its commit.

Undo mode keeps every changed row's before- and after-image in `dbproxy.capture_log` (see
`inverse.capture_schema`), so what a transaction changed can be shown long after it committed, and
after it was undone or redone: `dbproxy show ID` and the console page of a committed undo-mode
transaction use this where a held one uses `dbproxy.review.diff`.

The result has the held diff's shape (`TableDiff`, `RowChange`) and meaning:

- Tables with a primary key: changes are netted per key, as the held diff pairs old and new
  versions. For each key, the first captured event says what the row was before (an old image
  with that key: it existed; a new image: it did not) and the last one what it is after; both →
  update (only changed columns listed; an update that changed nothing is not counted), only
  before → delete, only after → insert. A primary-key change shows as a delete plus an insert.
- Tables without a primary key, and tables whose columns the same transaction changed with DDL
  (their images need not share columns): each captured row change is listed as it happened, in
  order, an UPDATE as an update with key None. A row changed twice appears twice.
- TRUNCATE's removed rows are deletes; DDL events are not rows and are not listed.

Counts are exact and computed in SQL; one page (`offset`, `limit`, in key order, or capture order
without a key) is read per table, so a 100,000-row update costs one pass over its images on the
server and sends back only the page. Long values are cut to `diff.CUT` characters plus "… (N
bytes)" (bytes of the JSON text form) after they are compared.

Round trips: 3 (tables touched and a sample image each; the catalog; every table's counts and page
in one statement). Tables dropped since the commit are named by the DDL that dropped them when the
log has it, else listed as "a table dropped since".
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import asyncpg

from dbproxy.review.diff import CUT, _canon, _decode, _in_order, _literal
from dbproxy.review.models import RowChange, TableDiff

_TABLES_SQL = """select r.rel::text, r.ddl::text,
       (select coalesce(l.new, l.old)::text from dbproxy.capture_log l
        where l.xid = $1 and l.rel = r.rel and l.op <> 'X' order by l.seq limit 1)
from (select rel, bool_or(op = 'X') as ddl from dbproxy.capture_log
      where xid = $1 and rel is not null group by rel) as r"""

_CATALOG_SQL = """select c.oid::text, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
       (select pg_catalog.json_agg(a.attname order by k.ord)
        from pg_catalog.pg_index i
        cross join unnest(i.indkey::int2[]) with ordinality as k(attnum, ord)
        join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
        where i.indrelid = c.oid and i.indisprimary)::text,
       (select pg_catalog.json_agg(a.attname order by a.attnum) from pg_catalog.pg_attribute a
        where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped)::text
from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where c.oid = any($1::oid[])"""


def _netted_sql(i: int, oid: int, key: list[str], offset: int, limit: int) -> str:
    """Counts and one page of a keyed table's net changes (columns: idx, kind, key, old, new, ord).

    Only keys and positions are grouped (position = 2 * seq, + 1 for a new image): the first
    position of a key is even when the row existed before, the last one odd when it exists after.
    Images are read back by seq (the `(xid, seq)` index) for the listed page, and for the rare key
    changed by more than one statement, to see whether its net update changed anything."""
    def k(img: str) -> str:
        return "pg_catalog.jsonb_build_array(" + ", ".join(f"{img} -> {_literal(c)}" for c in key) + ")"

    def image(side: str, pos: str) -> str:
        return f"(select x.{side} from dbproxy.capture_log x where x.xid = $1 and x.seq = {pos} / 2)"

    return f"""(with c as (select l.seq, l.old, l.new, (l.op = 'U' and l.old::text = l.new::text) as noop
                from dbproxy.capture_log l where l.xid = $1 and l.rel = {oid}::oid and l.op <> 'X'),
  ev as (select {k("c.old")} as k, c.seq * 2 as pos, c.noop from c where c.old is not null
         union all
         select {k("c.new")}, c.seq * 2 + 1, c.noop from c where c.new is not null),
  g as (select ev.k, min(ev.pos) as f, max(ev.pos) as l, bool_and(ev.noop) as noop from ev group by ev.k),
  ch as (select g.k, g.f, g.l,
                case when g.f % 2 = 1 then 'insert' when g.l % 2 = 0 then 'delete' else 'update' end as kind
         from g
         where (g.f % 2 = 0) <> (g.l % 2 = 1)
            or (g.f % 2 = 0 and g.l % 2 = 1
                and case when g.f / 2 = g.l / 2 then not g.noop
                         else {image("old", "g.f")}::text <> {image("new", "g.l")}::text end))
select '{i}', 'n', (count(*) filter (where kind = 'insert'))::text, (count(*) filter (where kind = 'update'))::text,
       (count(*) filter (where kind = 'delete'))::text, null from ch
union all
select '{i}', p.kind, p.k::text,
       case when p.f % 2 = 0 then {image("old", "p.f")}::text end,
       case when p.l % 2 = 1 then {image("new", "p.l")}::text end, p.ord::text
from (select ch.*, row_number() over (order by ch.k) as ord from ch
      order by ch.k offset {offset} limit {limit}) as p)"""


def _events_sql(i: int, oid: int, offset: int, limit: int) -> str:
    """Counts and one page of a table's captured row changes in capture order."""
    return f"""(with c as (select l.seq, l.op, l.old, l.new from dbproxy.capture_log l
                where l.xid = $1 and l.rel = {oid}::oid and l.op <> 'X'
                  and not (l.op = 'U' and l.old::text = l.new::text)),
  ch as (select c.seq, case c.op when 'I' then 'insert' when 'U' then 'update' else 'delete' end as kind,
                c.old, c.new from c)
select '{i}', 'n', (count(*) filter (where kind = 'insert'))::text, (count(*) filter (where kind = 'update'))::text,
       (count(*) filter (where kind = 'delete'))::text, null from ch
union all
select '{i}', p.kind, null, p.old::text, p.new::text, p.seq::text
from (select ch.* from ch order by ch.seq offset {offset} limit {limit}) as p)"""


def _cut(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col, v in values.items():
        text = v if isinstance(v, str) else None if v is None or isinstance(v, bool | int | float | Decimal) \
            else json.dumps(v, default=str)
        if text is not None and len(text) > CUT:
            out[col] = f"{text[:CUT]}… ({len(text.encode())} bytes)"
        else:
            out[col] = v
    return out


def _change(kind: str, key_cols: list[str] | None, k: str | None, old: str | None, new: str | None) -> RowChange:
    before = _decode(old)
    after = _decode(new)
    key = dict(zip(key_cols, _decode(k), strict=False)) if key_cols and k else None
    if kind == "insert":
        return RowChange(kind="insert", key=key, after=_cut(after or {}))
    if kind == "delete":
        return RowChange(kind="delete", key=key, before=_cut(before or {}))
    before, after = before or {}, after or {}
    cols = [c for c in dict.fromkeys([*before, *after])
            if (c in before) != (c in after) or _canon(before.get(c)) != _canon(after.get(c))]
    return RowChange(kind="update", key=key, before=_cut({c: before.get(c) for c in cols}),
                     after=_cut({c: after.get(c) for c in cols}))


async def image_diff(con: asyncpg.Connection, xid: int, *, limit: int = 50, offset: int = 0,
                     table: str | None = None, notes: list[str] | None = None) -> list[TableDiff]:
    """The row-level changes of committed transaction `xid` from its captured images, one TableDiff
    per table in table-name order (`table`: only that one, as `TableDiff.table` names it)."""
    limit, offset = max(0, int(limit)), max(0, int(offset))
    rels: dict[int, tuple[bool, str | None]] = {}
    for rel, ddl, sample in await con.fetch(_TABLES_SQL, xid):
        rels[int(rel)] = (ddl == "true", sample)
    if not rels:
        return []
    catalog = {int(r[0]): r for r in await con.fetch(_CATALOG_SQL, sorted(rels))}
    plan: list[tuple[int, str, list[str] | None, list[str]]] = []  # oid, name, key columns (None: events), columns
    for oid, (ddl, sample) in sorted(rels.items()):
        if sample is None:
            continue  # only DDL events: no rows to show
        cat = catalog.get(oid)
        if cat is None:
            name = "a table dropped since"
            key: list[str] | None = None
            columns: list[str] = []
        else:
            name = str(cat[1])
            key = json.loads(cat[2]) if cat[2] else None
            columns = json.loads(cat[3]) if cat[3] else []
        if table is not None and name != table:
            continue
        image = json.loads(sample)
        if ddl or not key or not all(c in image for c in key):
            if key and notes is not None:
                notes.append(f"{name}: its columns changed in the same transaction, so its row changes are listed "
                             "one by one as captured rather than netted per key")
            key = None
        plan.append((oid, name, key, columns))
    if not plan:
        return []
    sql = "\nunion all\n".join(
        _netted_sql(i, oid, key, offset, limit) if key else _events_sql(i, oid, offset, limit)
        for i, (oid, _, key, _) in enumerate(plan))
    diffs = [TableDiff(table=name, offset=offset) for _, name, _, _ in plan]
    listed: dict[int, list[tuple[int, RowChange]]] = {}
    for idx_s, tag, k, o, n, ord_s in await con.fetch(sql, xid):
        i = int(idx_s)
        if tag == "n":
            diffs[i].inserted, diffs[i].updated, diffs[i].deleted = int(k or 0), int(o or 0), int(n or 0)
        else:
            listed.setdefault(i, []).append((int(ord_s), _change(str(tag), plan[i][2], k, o, n)))
    result = []
    for i, d in enumerate(diffs):
        d.rows = [_in_order(rc, plan[i][3]) for _, rc in sorted(listed.get(i, []), key=lambda x: x[0])]
        total = d.inserted + d.updated + d.deleted
        d.truncated = total > len(d.rows)
        if total:
            result.append(d)
    result.sort(key=lambda d: d.table)
    return result

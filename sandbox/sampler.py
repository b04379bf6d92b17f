"""Which rows go into a sandbox: a small, faithful neighbourhood of one agent transaction.

For each table the transaction touched, the sample holds
- its affected rows as they were *before* the transaction, computed from the captured images
  (`before_images`), so the sample is right even after the transaction committed;
- context rows read from the upstream in one consistent snapshot: rows that reference the
  affected rows (children, bounded per foreign key), a random sample of other rows (so an inverse
  that changes too much shows up), and, for every row in the sample, the rows it references
  (parents, followed up to `parent_depth` levels, so foreign keys hold in the sandbox);
- the same context for tables the statements only read, and for foreign-key neighbours.

Context rows never share a key with an affected row: those exist in the sample only as their
before-images. Tables listed in `SampleOptions.mask` have their context rows' non-key values
replaced by stand-ins before they leave the upstream (keys, unique and foreign-key columns keep
their values so the rows still join). Affected rows are never masked: the inverse must restore
exactly those values, and it carries them anyway.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg

from inverse.capture_schema import IMAGE_SETTINGS
from inverse.classify import tables_referenced
from inverse.images import TABLE_INFO_SQL, Change, TableInfo, quote_ident, table_info_from_row

_FKS_SQL = """
SELECT k.conrelid::bigint, k.confrelid::bigint,
       array(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, o)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.o),
       array(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY u(n, o)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.o)
FROM pg_catalog.pg_constraint k WHERE k.contype = 'f'
"""
_SIZE_SQL = "SELECT c.oid::bigint, c.reltuples, c.relpages FROM pg_catalog.pg_class c WHERE c.oid = ANY($1::oid[])"
_LOCKED_SQL = ("SELECT DISTINCT l.relation::bigint FROM pg_catalog.pg_locks l WHERE l.relation = ANY($1::oid[]) "
               "AND l.granted AND l.mode = 'AccessExclusiveLock' AND l.pid <> pg_catalog.pg_backend_pid()")
_UNIQUE_COLS_SQL = """
SELECT DISTINCT i.indrelid::bigint, a.attname FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indisunique AND i.indrelid = ANY($1::oid[])
"""


@dataclass(frozen=True)
class SampleOptions:
    random_rows: int = 50  # other rows per table, at random
    neighbours: int = 50  # referencing rows per foreign key of an affected table
    parent_depth: int = 4  # how far referenced rows are followed
    max_rows: int = 50_000  # context rows in all, at most
    read_whole: int = 5_000  # a table the statements only read is copied whole up to this many rows
    mask: frozenset[str] = frozenset()  # tables ("schema.table" or "table") whose context rows are masked

    def widened(self) -> SampleOptions:
        """The second try after a sample proved not representative: ten times the context."""
        return replace(self, random_rows=self.random_rows * 10, neighbours=self.neighbours * 10,
                       parent_depth=self.parent_depth * 2, read_whole=self.read_whole * 10)


@dataclass(frozen=True)
class ForeignKey:
    child: int
    parent: int
    child_cols: tuple[str, ...]
    parent_cols: tuple[str, ...]


@dataclass
class TableSample:
    info: TableInfo
    before: list[str] = field(default_factory=list)  # affected rows, as before the transaction
    context: list[str] = field(default_factory=list)  # neighbours and random rows
    locked: bool = False  # held ACCESS EXCLUSIVE upstream: no context rows could be read
    masked: bool = False

    @property
    def rows(self) -> list[str]:
        return self.before + self.context


@dataclass
class Sample:
    tables: dict[int, TableSample]  # by upstream oid
    sequences: dict[str, tuple[int, bool]]  # name -> (last_value, is_called)
    options: SampleOptions

    def counts(self) -> dict[str, int]:
        return {t.info.name: len(t.rows) for t in self.tables.values()}


def before_images(changes: list[Change]) -> dict[int, list[str]]:
    """Per table, the rows the transaction changed, as they were before it: every image it
    removed (old image of an update, delete or truncate) that it had not produced itself."""
    produced: dict[int, Counter[str]] = defaultdict(Counter)
    before: dict[int, list[str]] = defaultdict(list)
    for c in changes:
        if c.rel is None or c.op == "X":
            continue
        if c.old is not None:
            if produced[c.rel][c.old] > 0:
                produced[c.rel][c.old] -= 1
            else:
                before[c.rel].append(c.old)
        if c.new is not None:
            produced[c.rel][c.new] += 1
    return dict(before)


def _key(image: str, cols: tuple[str, ...]) -> str:
    d = json.loads(image)
    return json.dumps([d.get(c) for c in cols]) if isinstance(d, dict) else image


def _mask_value(v: Any) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, str):
        digest = hashlib.sha256(v.encode()).hexdigest()
        return ("m" + digest)[: max(1, len(v))]
    if isinstance(v, int | float):
        return 0
    if isinstance(v, list):
        return []
    if isinstance(v, dict):
        return {}
    return v


def mask_row(image: str, keep: set[str]) -> str:
    d = json.loads(image)
    return json.dumps({k: (v if k in keep else _mask_value(v)) for k, v in d.items()})


def is_masked(info: TableInfo, mask: frozenset[str]) -> bool:
    return f"{info.schema}.{info.table}" in mask or info.table in mask or info.name in mask


async def _json_rows(con: asyncpg.Connection, sql: str, *args: Any) -> list[str]:
    """Rows of one sampling query; none when its table is locked (ACCESS EXCLUSIVE, typically by
    the very transaction being verified, whose DDL waits at COMMIT): the affected rows' images
    are the sample then, without context rows from that table."""
    try:
        async with con.transaction():
            return [r[0] for r in await con.fetch(sql, *args)]
    except asyncpg.LockNotAvailableError:
        return []


def _in_list(alias: str, cols: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"{alias}.{quote_ident(c)}" for c in cols) + ")"


async def collect(con: asyncpg.Connection, changes: list[Change], *, read_tables: frozenset[int] = frozenset(),
                  options: SampleOptions = SampleOptions()) -> Sample:
    """The sample for one transaction. `con` is an upstream connection with the proxy's own
    role, outside the agent's transaction; reads run in one REPEATABLE READ, READ ONLY snapshot."""
    async with con.transaction(isolation="repeatable_read", readonly=True):
        for k, v in IMAGE_SETTINGS.items():
            await con.execute("SELECT pg_catalog.set_config($1, $2, true)", k, v)
        return await _collect(con, changes, set(read_tables), options)


async def _collect(con: asyncpg.Connection, changes: list[Change], read_tables: set[int],
                   options: SampleOptions) -> Sample:
    before = before_images(changes)
    touched = {c.rel for c in changes if c.rel is not None and c.op != "X"}
    fks = [ForeignKey(int(r[0]), int(r[1]), tuple(r[2]), tuple(r[3])) for r in await con.fetch(_FKS_SQL)]
    # Which tables: touched, read, and their foreign-key neighbours (parents transitively).
    wanted = set(touched) | set(read_tables)
    wanted |= {fk.child for fk in fks if fk.parent in touched}
    for _ in range(options.parent_depth + 1):
        more = {fk.parent for fk in fks if fk.child in wanted} - wanted
        if not more:
            break
        wanted |= more
    # Catalog facts as of this snapshot, by oid: names and columns from before the transaction
    # when it renamed or altered a table and has not committed; tables it created are not here.
    tables = {int(r[0]): table_info_from_row(r) for r in await con.fetch(TABLE_INFO_SQL, sorted(wanted))}
    touched &= set(tables)
    # The first image of a keyed row is how it was before: a row kept whole before DDL (a dropped
    # or retyped column) and changed again after it appears twice, the second time without what
    # the DDL took.
    for oid, images in before.items():
        key = tables[oid].key if oid in tables else ()
        if key:
            seen: set[str] = set()
            before[oid] = [img for img in images if not (_key(img, key) in seen or seen.add(_key(img, key)))]
    wanted = {oid for oid in wanted if oid in tables and tables[oid].relkind in ("r", "p")}
    samples = {oid: TableSample(tables[oid], before=list(before.get(oid, [])),
                                masked=is_masked(tables[oid], options.mask)) for oid in wanted}

    # Keys the context must not repeat: every image's key (or whole image, for keyless tables).
    taken: dict[int, set[str]] = defaultdict(set)
    for c in changes:
        if c.rel in samples:
            info = tables[c.rel]
            for img in (c.old, c.new):
                if img is not None:
                    taken[c.rel].add(_key(img, info.key) if info.key else img)
    budget = [options.max_rows]

    def add(oid: int, rows: list[str]) -> int:
        s, info = samples[oid], tables[oid]
        seen = taken[oid]
        n = 0
        for img in rows:
            if budget[0] <= 0:
                break
            k = _key(img, info.key) if info.key else img
            if k in seen:
                continue
            seen.add(k)
            s.context.append(img)
            budget[0] -= 1
            n += 1
        return n

    # Tables held ACCESS EXCLUSIVE (by the DDL of the very transaction being verified, waiting at
    # its COMMIT): sampling them would wait out the lock timeout, query after query.
    locked = {int(r[0]) for r in await con.fetch(_LOCKED_SQL, sorted(samples))}
    for oid in locked:
        samples[oid].locked = True

    images_of: dict[int, list[str]] = defaultdict(list)
    for c in changes:
        if c.rel in samples:
            images_of[c.rel] += [i for i in (c.old, c.new) if i is not None]
    types = await _column_types(con, set(samples))

    def values_of(images_table: int, cols: tuple[str, ...], as_of: int, as_cols: tuple[str, ...]) -> str:
        """The values of `cols` in images of `images_table`, typed as `as_cols` of `as_of`. A
        locked table's row type cannot be looked up (that waits for the lock): read them from
        the JSON then."""
        if images_table not in locked:
            return (f"SELECT {', '.join('dbproxy_i.' + quote_ident(x) for x in cols)} FROM "
                    f"pg_catalog.json_populate_recordset(NULL::{tables[images_table].name}, $1::json) dbproxy_i")
        return ("SELECT " + ", ".join(f"(dbproxy_i->>{_literal(x)})::{types[as_of][y]}" for x, y in zip(
            cols, as_cols, strict=True)) + " FROM pg_catalog.json_array_elements($1::json) dbproxy_i")

    # Children of affected rows.
    for fk in fks:
        if fk.parent in touched and fk.child in samples and images_of.get(fk.parent) and fk.child not in locked:
            child = tables[fk.child]
            add(fk.child, await _json_rows(
                con, f"SELECT pg_catalog.to_json(dbproxy_c)::text FROM ONLY {child.name} dbproxy_c "
                f"WHERE {_in_list('dbproxy_c', fk.child_cols)} "
                f"IN ({values_of(fk.parent, fk.parent_cols, fk.child, fk.child_cols)}) "
                f"LIMIT {options.neighbours}",
                "[" + ",".join(images_of[fk.parent]) + "]"))

    # Random rows.
    sizes = {int(r[0]): (float(r[1]), int(r[2])) for r in await con.fetch(_SIZE_SQL, sorted(samples))}
    for oid, s in samples.items():
        if s.info.relkind != "r" or options.random_rows <= 0 or oid in locked:
            continue
        tuples, pages = sizes.get(oid, (-1.0, 0))
        n = options.random_rows
        if oid in read_tables and oid not in touched and max(tuples, pages * 50.0) <= options.read_whole:
            # Rows an INSERT ... SELECT or UPDATE ... FROM reads: a random few would make its
            # replay change other rows than upstream ("not representative"), so take them all.
            add(oid, await _json_rows(con, f"SELECT pg_catalog.to_json(dbproxy_t)::text FROM ONLY "
                                           f"{s.info.name} dbproxy_t LIMIT {options.read_whole}"))
            continue
        if pages > 100:
            est = max(tuples, pages * 50.0)
            pct = min(100.0, max(0.001, 100.0 * n * 4 / est))
            how = f"TABLESAMPLE SYSTEM ({pct:.4f})"
        else:
            how = ""
        # The alias is unusual on purpose: a column named like it would shadow the row.
        order = "" if how else " ORDER BY random()"
        add(oid, await _json_rows(con, f"SELECT pg_catalog.to_json(dbproxy_t)::text FROM ONLY {s.info.name} "
                                       f"dbproxy_t {how}{order} LIMIT {n}"))

    # Parents of everything sampled so far (and of the rows the transaction wrote), transitively.
    frontier: dict[int, list[str]] = {oid: s.rows + images_of.get(oid, []) for oid, s in samples.items()}
    for _ in range(options.parent_depth):
        nxt: dict[int, list[str]] = defaultdict(list)
        for fk in fks:
            rows = frontier.get(fk.child)
            if not rows or fk.parent not in samples or fk.parent in locked:
                continue
            parent = tables[fk.parent]
            got = await _json_rows(
                con, f"SELECT pg_catalog.to_json(dbproxy_p)::text FROM ONLY {parent.name} dbproxy_p WHERE "
                f"{_in_list('dbproxy_p', fk.parent_cols)} IN "
                f"({values_of(fk.child, fk.child_cols, fk.parent, fk.parent_cols)})",
                "[" + ",".join(rows) + "]")
            before_n = len(samples[fk.parent].context)
            if add(fk.parent, got):
                nxt[fk.parent] += samples[fk.parent].context[before_n:]
        if not nxt:
            break
        frontier = nxt

    await _mask(con, samples, fks)
    sequences: dict[str, tuple[int, bool]] = {}
    for seq in sorted({q for s in samples.values() for q in s.info.sequences}):
        try:
            async with con.transaction():
                row = await con.fetchrow(f"SELECT last_value, is_called FROM {seq}")
        except asyncpg.LockNotAvailableError:
            continue  # dropped with its table by the transaction being verified: its copy's value stays
        if row is not None:
            sequences[seq] = (int(row[0]), bool(row[1]))
    return Sample(samples, sequences, options)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def _column_types(con: asyncpg.Connection, oids: set[int]) -> dict[int, dict[str, str]]:
    """Column types (format_type) per table, from the catalog: no lock on the tables."""
    out: dict[int, dict[str, str]] = defaultdict(dict)
    for oid, name, typ in await con.fetch(
            "SELECT a.attrelid::bigint, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) "
            "FROM pg_catalog.pg_attribute a WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 "
            "AND NOT a.attisdropped", sorted(oids)):
        out[int(oid)][str(name)] = str(typ)
    return out


async def _mask(con: asyncpg.Connection, samples: dict[int, TableSample], fks: list[ForeignKey]) -> None:
    masked = [oid for oid, s in samples.items() if s.masked and s.context]
    if not masked:
        return
    keep: dict[int, set[str]] = {oid: set(samples[oid].info.key) for oid in masked}
    for r in await con.fetch(_UNIQUE_COLS_SQL, masked):
        keep[int(r[0])].add(r[1])
    for fk in fks:
        if fk.child in keep:
            keep[fk.child].update(fk.child_cols)
        if fk.parent in keep:
            keep[fk.parent].update(fk.parent_cols)
    for oid in masked:
        s = samples[oid]
        s.context = [mask_row(img, keep[oid]) for img in s.context]


async def read_tables(con: asyncpg.Connection, statements: list[str]) -> frozenset[int]:
    """Oids of the tables the statements mention, so the sample holds rows an `INSERT ... SELECT`
    or `UPDATE ... FROM` reads. Names resolve with the proxy's own search_path (the agent's is
    not known here); a name that does not resolve is left out, and replaying on a sample without
    its rows then shows a different effect: "not representative", never a false "verified"."""
    names = sorted({n for s in statements for n in tables_referenced(s)})
    out: set[int] = set()
    for name in names:
        try:
            oid = await con.fetchval("SELECT pg_catalog.to_regclass($1)::oid", name)
        except asyncpg.PostgresError:  # an improper name (too many dots): not a table we can sample
            continue
        if oid is not None:
            out.add(int(oid))
    return frozenset(out)

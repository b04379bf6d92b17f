"""SQL that moves one row from one captured image to another, built with sqlglot.

Every statement here is a *template*: identifiers come from the catalog (`TableInfo`) and are
quoted by sqlglot; row images are bind parameters (`$1`, `$2`), never spliced into the text. A row
"equals an image" when `to_json(row)::text` is that image's exact text (the capture trigger wrote
it with the same function under the same output settings, `IMAGE_SETTINGS`), so the comparison
works for every column type, including those without an equality operator, and tells `1.0` from
`1.00`. With a primary key the row is found by key first (an index scan), then compared.

Three moves, used by undo (newest change first, images swapped) and redo (oldest first):
- `remove`: delete the one row equal to $1 (one of several identical rows, without a key);
- `restore`: insert $1 (identity ALWAYS values kept, generated columns recomputed); with a key,
  only if no row has that key;
- `revert`: set the row equal to $1 to image $2.
`probe_*` statements tell "already in the target state" (e.g. a cascade did it) from a conflict,
and `current_sql` fetches what the row looks like now, for the conflict report.
Templates are built once per table shape and cached; rendering is ~0.3 ms, a cache hit ~1 µs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from inverse.images import TableInfo

_ROW = "dbproxy_row"  # alias of the table's row in lookups
_IMG = "dbproxy_img"  # alias of the image turned back into a row


@dataclass(frozen=True, slots=True)
class RowTemplates:
    remove: str
    restore: str
    revert: str
    probe_absent: str | None  # $1: true when no row has $1's key (None: no key, cannot tell)
    probe_equal: str  # $1: true when a row equal to $1 exists
    current: str | None  # $1: the rows (as JSON text) that have $1's key
    force_remove: str | None  # $1: delete the row with $1's key, whatever it holds now
    force_revert: str | None  # $1, $2: set the row with $1's key to $2, whatever it holds now


def _ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _table(info: TableInfo, alias: str | None = None, *, only: bool = False) -> exp.Table:
    # only: row lookups say FROM ONLY. A row image belongs to this very table; through an
    # inheritance parent a lookup also sees its children's rows (projected to the parent's
    # columns) and could match, update or delete a child's row that happens to look the same.
    # (remove/revert keep a plain target: the (tableoid, ctid) they match comes from an ONLY
    # lookup, so it is this table's row.)
    t = exp.Table(this=_ident(info.table), db=_ident(info.schema), only=only or None)
    return t.as_(alias) if alias else t  # type: ignore[return-value]


def _rows(info: TableInfo) -> exp.Table:
    """ONLY table AS dbproxy_row: where row lookups look."""
    return _table(info, _ROW, only=True)


def _col(name: str, table: str | None = None) -> exp.Column:
    return exp.column(_ident(name), table=exp.to_identifier(table) if table else None)


def _param(n: int) -> exp.Expression:
    """$n, always as text: images are JSON text, compared as text and cast to json once."""
    return exp.cast(exp.Parameter(this=exp.Literal.number(n)), "text")


def _populate(info: TableInfo, n: int) -> exp.Expression:
    """pg_catalog.json_populate_record(NULL::table, $n::json) AS dbproxy_img"""
    rowtype = exp.DataType.build(info.name, dialect="postgres", udt=True)
    call = exp.Anonymous(this="json_populate_record",
                         expressions=[exp.cast(exp.Null(), rowtype), exp.cast(_param(n), "json")])
    return exp.Table(this=exp.Dot(this=exp.to_identifier("pg_catalog"), expression=call), alias=exp.TableAlias(
        this=exp.to_identifier(_IMG)))


def _image_text(alias: str) -> exp.Expression:
    """pg_catalog.to_json(alias)::text"""
    to_json = exp.Dot(this=exp.to_identifier("pg_catalog"),
                      expression=exp.Anonymous(this="to_json", expressions=[exp.column(exp.to_identifier(alias))]))
    return exp.cast(to_json, "text")


def _tuple(names: tuple[str, ...], table: str | None) -> exp.Expression:
    cols = [_col(c, table) for c in names]
    return cols[0] if len(cols) == 1 else exp.Tuple(expressions=cols)


def _key_match(info: TableInfo, n: int) -> exp.Expression | None:
    """(row.key) = (SELECT img.key FROM json_populate_record(..., $n))"""
    if not info.key:
        return None
    img = exp.select(*[_col(c, _IMG) for c in info.key]).from_(_populate(info, n))
    return exp.EQ(this=_tuple(info.key, _ROW), expression=exp.Subquery(this=img))


def _equal_rows(info: TableInfo, n: int) -> exp.Select:
    """SELECT ... FROM table AS dbproxy_row WHERE [key match AND] to_json(dbproxy_row)::text = $n"""
    cond: exp.Expression = exp.EQ(this=_image_text(_ROW), expression=_param(n))
    key = _key_match(info, n)
    if key is not None:
        cond = exp.and_(key, cond)
    return exp.select(_col("tableoid", _ROW), _col("ctid", _ROW)).from_(_rows(info)).where(cond)


def _one_equal_row(info: TableInfo, n: int) -> exp.Expression:
    """(tableoid, ctid) = (SELECT ... LIMIT 1): exactly one physical row, also in a partitioned table
    and among duplicates."""
    return exp.EQ(this=exp.Tuple(expressions=[exp.column("tableoid"), exp.column("ctid")]),
                  expression=exp.Subquery(this=_equal_rows(info, n).limit(1)))


def _img_value(info: TableInfo, name: str) -> exp.Expression:
    """dbproxy_img.col, the value a restore or revert writes. For NOT NULL json/jsonb columns,
    COALESCE(..., 'null'): the image's `null` was JSON null there, which json_populate_record
    turns into SQL NULL."""
    col = _col(name, _IMG)
    if name in info.json_not_null:
        return exp.Coalesce(this=col, expressions=[exp.Literal.string("null")])
    return col


def _sql(e: exp.Expression) -> str:
    return e.sql(dialect="postgres")


@functools.lru_cache(maxsize=1024)
def templates(info: TableInfo) -> RowTemplates:
    remove = exp.Delete(this=_table(info), where=exp.Where(this=_one_equal_row(info, 1)))

    cols = info.writable
    source = exp.select(*[_img_value(info, c) for c in cols]).from_(_populate(info, 1))
    if info.key:
        exists = exp.select("1").from_(_rows(info)).where(
            exp.EQ(this=_tuple(info.key, _ROW), expression=_tuple(info.key, _IMG)))
        source = source.where(exp.Not(this=exp.Exists(this=exists)))
    columns = exp.Schema(this=_table(info), expressions=[_ident(c) for c in cols])
    restore = _sql(exp.Insert(this=columns, expression=source))
    # sqlglot has no node for OVERRIDING SYSTEM VALUE: it goes between the column list and the
    # query, which is where the generator puts the query's leading SELECT.
    restore = restore.replace(") SELECT ", _OVERRIDING, 1) if info.identity_always else restore

    upd = info.updatable
    target = exp.select(*[_img_value(info, c) for c in upd]).from_(_populate(info, 2))
    lhs = _tuple(upd, None)
    revert = exp.Update(this=_table(info),
                        expressions=[exp.EQ(this=lhs if isinstance(lhs, exp.Tuple) else exp.Tuple(expressions=[lhs]),
                                            expression=exp.Subquery(this=target))],
                        where=exp.Where(this=_one_equal_row(info, 1)))

    key = _key_match(info, 1)
    absent = (_sql(exp.select(exp.Not(this=exp.Exists(this=exp.select("1").from_(_rows(info)).where(key)))))
              if key is not None else None)
    equal = _sql(exp.select(exp.Exists(this=_equal_rows(info, 1))))
    current = (_sql(exp.select(_image_text(_ROW)).from_(_rows(info)).where(key).limit(3))
               if key is not None else None)
    force_remove = force_revert = None
    if key is not None:
        force_remove = _sql(exp.Delete(this=_rows(info), where=exp.Where(this=key)))
        force_revert = _sql(exp.Update(this=_rows(info), expressions=[e.copy() for e in revert.expressions],
                                       where=exp.Where(this=key.copy())))
    return RowTemplates(_sql(remove), restore, _sql(revert), absent, equal, current, force_remove, force_revert)


def render(sql: str, params: tuple[str, ...]) -> str:
    """A template with its parameters written in as quoted literals: for people to read (`show`,
    `undo --dry-run`). The proxy itself always executes the template with bind parameters."""
    tree = _parse(sql)

    def sub(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Parameter) and isinstance(node.this, exp.Literal) \
                and 0 < int(node.this.this) <= len(params):
            return exp.Literal.string(params[int(node.this.this) - 1])
        return node  # a value the executor adds itself (e.g. the transactions being undone)

    text = tree.transform(sub).sql(dialect="postgres")
    return text.replace(") SELECT ", _OVERRIDING, 1) if _OVERRIDING in sql else text


_OVERRIDING = ") OVERRIDING SYSTEM VALUE SELECT "


@functools.lru_cache(maxsize=1024)
def _parse(sql: str) -> exp.Expression:
    return sqlglot.parse_one(sql.replace(_OVERRIDING, ") SELECT ", 1), read="postgres")

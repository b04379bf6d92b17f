"""Inverses of DDL commands, from the events the capture event triggers logged.

Statements the proxy announced (`dbproxy.before_ddl`, see `inverse.ddl_state`) come with the
state from before them and are inverted by `inverse.ddl_groups` (`invert_all` routes them there).
DDL nobody announced (run inside a function or DO block, where the proxy never sees its text) has
only what the event trigger records per command: the command tag, the object's type and identity
(schema-qualified and quoted by PostgreSQL itself), and the query text. That is enough for the
commands whose inverse needs no state from before:

- `CREATE TABLE / VIEW / MATERIALIZED VIEW / INDEX / SEQUENCE / FUNCTION / PROCEDURE / TYPE /
  DOMAIN / SCHEMA` -> `DROP <kind> <identity>` (a table's serial sequences and key indexes are
  part of the same command and go with it);
- `ALTER TABLE ... ADD COLUMN` (without IF NOT EXISTS) -> `DROP COLUMN`;
  `RENAME COLUMN a TO b` -> `RENAME COLUMN b TO a`; `RENAME TO b` -> `RENAME TO a`;
- an object created and dropped again in the same transaction: nothing to undo.

Everything else unannounced (DROP of an existing object, ALTER COLUMN TYPE, SET/DROP DEFAULT or
NOT NULL, constraints, COMMENT, GRANT/REVOKE, ...) would need the object's state from before the
command; those are classified irreversible with the reason, so the transaction is held for a
person instead of committed with an incomplete undo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from inverse.capture_schema import ROW_TRIGGER, TRUNCATE_TRIGGER
from inverse.classify import split_statements
from inverse.ddl_groups import DdlStep, groups, invert_group, redo_group
from inverse.images import SNAPSHOT_OPS, Change, quote_ident

_DROP_KIND = {
    "CREATE TABLE": "TABLE", "CREATE TABLE AS": "TABLE", "SELECT INTO": "TABLE", "CREATE VIEW": "VIEW",
    "CREATE MATERIALIZED VIEW": "MATERIALIZED VIEW", "CREATE INDEX": "INDEX", "CREATE SEQUENCE": "SEQUENCE",
    "CREATE FUNCTION": "FUNCTION", "CREATE PROCEDURE": "PROCEDURE", "CREATE TYPE": "TYPE",
    "CREATE DOMAIN": "DOMAIN", "CREATE SCHEMA": "SCHEMA",
}
_OWN_TRIGGERS = frozenset({ROW_TRIGGER, TRUNCATE_TRIGGER})
_PG_CLASS = 1259  # pg_class's oid: relations in DDL event keys
#: Kinds whose CREATE OR REPLACE may overwrite an existing definition.
_REPLACEABLE = frozenset({"FUNCTION", "PROCEDURE", "VIEW"})
_OR_REPLACE = re.compile(r"\bor\s+replace\b", re.IGNORECASE)
#: Object types that a CREATE of another kind makes as a side part (dropped with the main object).
_PART_TAGS = frozenset({"CREATE SEQUENCE", "CREATE INDEX", "ALTER SEQUENCE", "CREATE TRIGGER"})


@dataclass(frozen=True, slots=True)
class DdlInverse:
    seq: int  # where it goes in the newest-first order
    sql: str | None  # None: irreversible
    reason: str | None = None  # why irreversible
    created: int | None = None  # oid of a table this command created (its rows need no undo)
    # For an irreversible command, what another source of inverses (an LLM) needs to propose one:
    query: str = ""  # the query text that ran it
    objects: tuple[tuple[str, str], ...] = ()  # (object type, identity) of everything the command touched
    steps: tuple[DdlStep, ...] = ()  # an announced statement's inverse (instead of `sql`)
    created_tables: frozenset[int] = frozenset()  # oids of tables it created (their rows go with them)


def invert_all(changes: list[Change], *, direction: str = "undo") -> list[DdlInverse]:
    """Inverses (or redos) of every DDL statement among a transaction's captured changes (all of
    them, rows too: whether anything came before a statement matters to some), oldest first:
    announced statements from the state kept before them, the rest by `invert_ddl`."""
    first_seq = min((c.seq for c in changes), default=0)
    announced, loose = groups([c for c in changes if c.op == "X" or c.op in SNAPSHOT_OPS])
    out: list[DdlInverse] = []
    if loose:
        if direction == "undo":
            out += invert_ddl(loose)
        else:
            loose_out = invert_ddl(loose)
            for d in loose_out:
                if d.sql is not None or d.reason is not None:
                    out.append(DdlInverse(d.seq, None, "redo of DDL run inside a function or DO block is not "
                                          "possible: its statement text was not kept", created=d.created))
    # Objects made and dropped again within the transaction: nothing of them remains to undo.
    first: dict[str, object] = {}
    last: dict[str, object] = {}
    for g in announced:
        for k in dict.fromkeys([*g.before, *g.after]):
            before = (g.before.get(k) or {}).get("desc")
            first.setdefault(k, before)
            last[k] = g.after[k] if k in g.after else before
    transient = {k for k in first if first[k] is None and last.get(k) is None}
    # Their rows went with them too.
    gone = frozenset(int(k.split("/")[1]) for k in transient if k.startswith(f"{_PG_CLASS}/"))
    for g in announced:
        inv = invert_group(g, created_before=transient, changed_before=first_seq < g.first) \
            if direction == "undo" else redo_group(g)
        if direction == "undo":
            inv.created_tables |= gone
        reason = "; ".join(inv.reasons) if inv.reasons else None
        out.append(DdlInverse(g.last, None, reason, query=g.statement, objects=inv.objects,
                              steps=tuple(inv.steps) if reason is None else (),
                              created_tables=frozenset(inv.created_tables)))
    return sorted(out, key=lambda d: d.seq)


def _sourced(inv: DdlInverse, group: list[Change]) -> DdlInverse:
    if inv.reason is None:
        return inv
    ds = [e.ddl or {} for e in group]
    objects = tuple(dict.fromkeys((str(d.get("object_type")), str(d.get("identity"))) for d in ds if d.get("identity")))
    return replace(inv, query=str(ds[0].get("query") or ""), objects=objects)


def _groups(events: list[Change]) -> list[list[Change]]:
    out: dict[object, list[Change]] = {}
    for e in events:
        assert e.ddl is not None
        out.setdefault((e.ddl.get("event"), e.ddl.get("group", e.seq)), []).append(e)
    return sorted(out.values(), key=lambda g: g[0].seq)


def _is_own_trigger(e: Change) -> bool:
    d = e.ddl or {}
    # identity: "<trigger> on <table>"
    return d.get("object_type") == "trigger" and str(d.get("identity", "")).split(" on ", 1)[0] in _OWN_TRIGGERS


def invert_ddl(events: list[Change]) -> list[DdlInverse]:
    """One DdlInverse per top-level command (oldest first)."""
    out: list[DdlInverse] = []
    created: dict[str, int] = {}  # identity -> index in out
    groups = _groups([e for e in events if not _is_own_trigger(e)])
    # ALTER TABLE commands per query text, in the order they ran: a simple query with several
    # ALTER TABLE statements reports the same `current_query()` for each of them.
    alters: dict[str, list[int]] = {}
    for k, group in enumerate(groups):
        if all((e.ddl or {}).get("tag") == "ALTER TABLE" for e in group):
            alters.setdefault(str((group[0].ddl or {}).get("query") or ""), []).append(k)
    for k, group in enumerate(groups):
        first = group[0]
        d = first.ddl or {}
        if d.get("event") == "drop":
            idents = [str((e.ddl or {}).get("identity")) for e in group if (e.ddl or {}).get("original")]
            if idents and all(i in created for i in idents):
                for i in idents:  # created and dropped within the transaction: nothing remains
                    k = created.pop(i)
                    out[k] = DdlInverse(out[k].seq, None, None, created=out[k].created)
                continue
            what = ", ".join(f"{(e.ddl or {}).get('object_type')} {(e.ddl or {}).get('identity')}"
                             for e in group if (e.ddl or {}).get("original")) or "objects"
            out.append(_sourced(DdlInverse(first.seq, None, f"{d.get('tag')} destroyed {what} without "
                                           "dbproxy keeping it first (DDL run inside a function or DO block, "
                                           "or by a session the proxy does not announce DDL for)"), group))
            continue
        main = next((e for e in group if (e.ddl or {}).get("tag") in _DROP_KIND
                     and (e.ddl or {}).get("tag") not in _PART_TAGS), None) \
            or next((e for e in group if (e.ddl or {}).get("tag") in _DROP_KIND), None)
        m = (main.ddl or {}) if main is not None else {}
        ident = str(m.get("identity"))
        # CREATE TABLE with a REFERENCES clause (or a CHECK added later in the same command) also
        # reports an ALTER TABLE of the new table itself: part of the table, dropped with it.
        if main is not None and all((e.ddl or {}).get("tag") in _DROP_KIND or (e.ddl or {}).get("tag") in _PART_TAGS
                                    or ((e.ddl or {}).get("tag") == "ALTER TABLE"
                                        and str((e.ddl or {}).get("identity")) == ident
                                        and _DROP_KIND.get(str(m.get("tag"))) == "TABLE")
                                    for e in group):
            if m.get("in_extension"):
                out.append(_sourced(DdlInverse(main.seq, None, f"{m.get('tag')} {ident} is part of an extension"),
                                    group))
                continue
            if _DROP_KIND[str(m.get("tag"))] in _REPLACEABLE and _OR_REPLACE.search(str(m.get("query") or "")):
                # CREATE OR REPLACE reports the same tag whether it created the object or replaced
                # one; dropping it would destroy the user's original definition.
                out.append(_sourced(DdlInverse(main.seq, None, f"{m.get('tag')} {ident} used OR REPLACE: the "
                                               "definition it may have replaced was not kept"), group))
                continue
            created[ident] = len(out)
            out.append(DdlInverse(main.seq, f"DROP {_DROP_KIND[str(m.get('tag'))]} {ident}",
                                  created=main.rel if _DROP_KIND[str(m.get("tag"))] == "TABLE" else None))
            continue
        if all((e.ddl or {}).get("tag") == "ALTER TABLE" for e in group):
            same = alters[str(d.get("query") or "")]
            out.append(_sourced(_alter_table(group, same.index(k), len(same)), group))
            continue
        tags = sorted({str((e.ddl or {}).get("tag")) for e in group})
        out.append(_sourced(DdlInverse(first.seq, None, f"no exact inverse for {', '.join(tags)} yet "
                                       "(it needs the object's state from before the command)"), group))
    return out


def _identity_parts(identity: str) -> list[str]:
    """Split an object identity as PostgreSQL writes it (`s.t`, `"a.b".t`) at the dots outside
    double quotes; each part keeps its quoting."""
    parts: list[str] = []
    cur, quoted = "", False
    for ch in identity:
        if ch == '"':
            quoted = not quoted  # a doubled "" toggles twice: still inside
        if ch == "." and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def _unquote(part: str) -> str:
    """One part of an object identity -> the name (identities quote exactly the names that need it)."""
    return part[1:-1].replace('""', '"') if part.startswith('"') else part


def _pg_name(node: exp.Expression | None) -> str | None:
    """The name an identifier in a statement denotes: quoted as written, unquoted folded to lower
    case (ASCII only, as PostgreSQL's downcase_identifier does for UTF-8)."""
    ident = node if isinstance(node, exp.Identifier) else node.this if node is not None else None
    if isinstance(ident, exp.Column | exp.Table):
        ident = ident.this
    if not isinstance(ident, exp.Identifier):
        return None
    name = str(ident.this)
    return name if ident.quoted else name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ALTER_TABLE = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*alter\s+table\b", re.IGNORECASE | re.DOTALL)


def _alter_table(group: list[Change], ordinal: int = 0, total: int = 1) -> DdlInverse:
    """The inverse of the `ordinal`-th of `total` ALTER TABLE commands that ran with this query text."""
    d = group[0].ddl or {}
    ident = str(d.get("identity"))
    if d.get("object_type") == "table column":
        # RENAME COLUMN reports the column (`s.t.col`), not the table the inverse must name.
        ident = ".".join(_identity_parts(ident)[:-1])
    seq = group[0].seq
    stmts = [s for s in split_statements(str(d.get("query") or "")) if _ALTER_TABLE.match(s)]
    # One ALTER TABLE statement: it is this command (also when the same text ran more than once).
    # Several: the k-th command that ran with this text is the k-th statement, but only when the
    # counts agree (an ALTER hidden in a function, or IF EXISTS on a missing table, breaks that).
    stmt = stmts[0] if len(stmts) == 1 else stmts[ordinal] if len(stmts) == total else None
    if stmt is None:
        return DdlInverse(seq, None, f"ALTER TABLE {ident}: could not tell which statement ran "
                          "(run ALTER TABLE as a statement of its own, not inside a function)")
    try:
        tree = sqlglot.parse_one(stmt, read="postgres")
    except SqlglotError:
        tree = None
    if not isinstance(tree, exp.Alter) or not tree.args.get("actions"):
        return DdlInverse(seq, None, f"ALTER TABLE {ident}: statement not understood")
    # The statement must name the table the command reported (for RENAME TO: its new name), or
    # it is not the statement that ran (e.g. an ALTER hidden in a function in the same query).
    renamed = [a for a in tree.args["actions"] if isinstance(a, exp.AlterRename)]
    named = _pg_name(renamed[0].this if renamed else tree.this)
    if named is None or named != _unquote(_identity_parts(ident)[-1]):
        return DdlInverse(seq, None, f"ALTER TABLE {ident}: could not tell which statement ran "
                          "(run ALTER TABLE as a statement of its own, not inside a function)")
    undo: list[str] = []
    for a in tree.args["actions"]:
        # Names as PostgreSQL stored them: unquoted identifiers are folded to lower case.
        if isinstance(a, exp.ColumnDef) and not a.args.get("exists") and _pg_name(a) is not None:
            undo.append(f"DROP COLUMN {quote_ident(str(_pg_name(a)))}")
        elif isinstance(a, exp.RenameColumn) and not a.args.get("exists") \
                and _pg_name(a.args.get("to")) is not None and _pg_name(a) is not None:
            undo.append(f"RENAME COLUMN {quote_ident(str(_pg_name(a.args.get('to'))))} TO "
                        f"{quote_ident(str(_pg_name(a)))}")
        elif isinstance(a, exp.AlterRename) and _pg_name(tree.this) is not None:
            undo.append(f"RENAME TO {quote_ident(str(_pg_name(tree.this)))}")
        else:
            return DdlInverse(seq, None, f"ALTER TABLE {ident}: no exact inverse for "
                              f"{a.sql(dialect='postgres')[:80]!r} yet (it needs the state from before)")
    if len(undo) > 1 and any(u.startswith("RENAME") for u in undo):
        return DdlInverse(seq, None, f"ALTER TABLE {ident}: RENAME cannot be combined with other actions")
    return DdlInverse(seq, f"ALTER TABLE {ident} " + ", ".join(reversed(undo)))

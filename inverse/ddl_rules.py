"""Inverses of DDL commands, from the events the capture event triggers logged.

The event trigger records, per DDL command an agent session ran: the command tag, the object's
type and identity (schema-qualified and quoted by PostgreSQL itself), and the query text. That is
enough for the commands whose inverse needs no state from before:

- `CREATE TABLE / VIEW / MATERIALIZED VIEW / INDEX / SEQUENCE / FUNCTION / PROCEDURE / TYPE /
  DOMAIN / SCHEMA` -> `DROP <kind> <identity>` (a table's serial sequences and key indexes are
  part of the same command and go with it);
- `ALTER TABLE ... ADD COLUMN` (without IF NOT EXISTS) -> `DROP COLUMN`;
  `RENAME COLUMN a TO b` -> `RENAME COLUMN b TO a`; `RENAME TO b` -> `RENAME TO a`;
- an object created and dropped again in the same transaction: nothing to undo.

Everything else (DROP of an existing object, ALTER COLUMN TYPE, SET/DROP DEFAULT or NOT NULL,
constraints, COMMENT, GRANT/REVOKE, ...) would need the object's state from before the command;
those are classified irreversible with the reason, so the transaction is held for a person
instead of committed with an incomplete undo.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from inverse.classify import split_statements
from inverse.images import Change, quote_ident

_DROP_KIND = {
    "CREATE TABLE": "TABLE", "CREATE TABLE AS": "TABLE", "SELECT INTO": "TABLE", "CREATE VIEW": "VIEW",
    "CREATE MATERIALIZED VIEW": "MATERIALIZED VIEW", "CREATE INDEX": "INDEX", "CREATE SEQUENCE": "SEQUENCE",
    "CREATE FUNCTION": "FUNCTION", "CREATE PROCEDURE": "PROCEDURE", "CREATE TYPE": "TYPE",
    "CREATE DOMAIN": "DOMAIN", "CREATE SCHEMA": "SCHEMA",
}
#: Object types that a CREATE of another kind makes as a side part (dropped with the main object).
_PART_TAGS = frozenset({"CREATE SEQUENCE", "CREATE INDEX", "ALTER SEQUENCE", "CREATE TRIGGER"})


@dataclass(frozen=True, slots=True)
class DdlInverse:
    seq: int  # where it goes in the newest-first order
    sql: str | None  # None: irreversible
    reason: str | None = None  # why irreversible
    created: int | None = None  # oid of a table this command created (its rows need no undo)


def _groups(events: list[Change]) -> list[list[Change]]:
    out: dict[object, list[Change]] = {}
    for e in events:
        assert e.ddl is not None
        out.setdefault((e.ddl.get("event"), e.ddl.get("group", e.seq)), []).append(e)
    return sorted(out.values(), key=lambda g: g[0].seq)


def _is_own_trigger(e: Change) -> bool:
    d = e.ddl or {}
    return d.get("object_type") == "trigger" and str(d.get("identity", "")).startswith("dbproxy_capture")


def invert_ddl(events: list[Change]) -> list[DdlInverse]:
    """One DdlInverse per top-level command (oldest first)."""
    out: list[DdlInverse] = []
    created: dict[str, int] = {}  # identity -> index in out
    for group in _groups([e for e in events if not _is_own_trigger(e)]):
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
            out.append(DdlInverse(first.seq, None, f"{d.get('tag')} destroyed {what}; dbproxy cannot restore "
                                  "dropped objects yet"))
            continue
        main = next((e for e in group if (e.ddl or {}).get("tag") in _DROP_KIND
                     and (e.ddl or {}).get("tag") not in _PART_TAGS), None) \
            or next((e for e in group if (e.ddl or {}).get("tag") in _DROP_KIND), None)
        if main is not None and all((e.ddl or {}).get("tag") in _DROP_KIND or (e.ddl or {}).get("tag") in _PART_TAGS
                                    for e in group):
            m = main.ddl or {}
            ident = str(m.get("identity"))
            if m.get("in_extension"):
                out.append(DdlInverse(main.seq, None, f"{m.get('tag')} {ident} is part of an extension"))
                continue
            created[ident] = len(out)
            out.append(DdlInverse(main.seq, f"DROP {_DROP_KIND[str(m.get('tag'))]} {ident}",
                                  created=main.rel if _DROP_KIND[str(m.get("tag"))] == "TABLE" else None))
            continue
        if all((e.ddl or {}).get("tag") == "ALTER TABLE" for e in group):
            out.append(_alter_table(group))
            continue
        tags = sorted({str((e.ddl or {}).get("tag")) for e in group})
        out.append(DdlInverse(first.seq, None, f"no exact inverse for {', '.join(tags)} yet "
                              "(it needs the object's state from before the command)"))
    return out


def _alter_table(group: list[Change]) -> DdlInverse:
    d = group[0].ddl or {}
    ident = str(d.get("identity"))
    seq = group[0].seq
    stmts = [s for s in split_statements(str(d.get("query") or "")) if s.lstrip()[:5].lower() == "alter"]
    if len(stmts) != 1:
        return DdlInverse(seq, None, f"ALTER TABLE {ident}: could not tell which statement ran "
                          "(run ALTER TABLE as a statement of its own, not inside a function)")
    try:
        tree = sqlglot.parse_one(stmts[0], read="postgres")
    except SqlglotError:
        tree = None
    if not isinstance(tree, exp.Alter) or not tree.args.get("actions"):
        return DdlInverse(seq, None, f"ALTER TABLE {ident}: statement not understood")
    undo: list[str] = []
    for a in tree.args["actions"]:
        if isinstance(a, exp.ColumnDef) and not a.args.get("exists"):
            undo.append(f"DROP COLUMN {quote_ident(a.name)}")
        elif isinstance(a, exp.RenameColumn) and not a.args.get("exists"):
            undo.append(f"RENAME COLUMN {quote_ident(a.args['to'].name)} TO {quote_ident(a.this.name)}")
        elif isinstance(a, exp.AlterRename):
            old = tree.this.name
            undo.append(f"RENAME TO {quote_ident(old)}")
        else:
            return DdlInverse(seq, None, f"ALTER TABLE {ident}: no exact inverse for "
                              f"{a.sql(dialect='postgres')[:80]!r} yet (it needs the state from before)")
    if len(undo) > 1 and any(u.startswith("RENAME") for u in undo):
        return DdlInverse(seq, None, f"ALTER TABLE {ident}: RENAME cannot be combined with other actions")
    return DdlInverse(seq, f"ALTER TABLE {ident} " + ", ".join(reversed(undo)))

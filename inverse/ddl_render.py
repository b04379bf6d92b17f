"""SQL that brings objects to a captured definition (`dbproxy.describe`'s jsonb, `inverse.ddl_state`).

Three moves per object (a table with its columns, constraints, indexes, triggers, policies, rules
and statistics; a view, materialized view, sequence, function, procedure, type or schema; the
default privileges of a role):

- `create(desc)`: statements that make it again from nothing (the inverse of a DROP);
- `drop(desc)`: the statement that removes it (the inverse of a CREATE);
- `alter(now, target)`: statements that turn the object as it is (`now`) into `target`: renames,
  column types, defaults, NOT NULL, identity, constraints, indexes, triggers, policies, rules,
  options, comments, privileges, owner; view and function bodies (CREATE OR REPLACE).

Every move returns `Parts`: statements that run before the object's rows come back (`pre`),
after (`post`, each with a phase so several objects' statements interleave correctly: unique
keys before foreign keys, tables before the views on them), and `columns_back` (columns that
need their values restored). The definitions themselves are PostgreSQL's (`pg_get_*`,
`format_type`); only the statement around them is assembled here. What cannot be put back
exactly (an enum value added, an aggregate, a stale materialized view's contents) is a `reason`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

Desc = dict[str, Any]

# Phases of statements before the data comes back...
PRE_SURVIVOR = 0  # changes to objects that stay (rename back, drop what the command added, column types)
PRE_SCHEMA, PRE_TYPE, PRE_FUNCTION, PRE_SEQUENCE, PRE_TABLE, PRE_VIEW = 10, 20, 30, 40, 50, 60
# ... and after it.
POST_KEY, POST_INDEX, POST_FOREIGN, POST_DEPENDENT, POST_MATVIEW, POST_LAST = 10, 20, 30, 40, 50, 60

_PRIV = {"r": "SELECT", "w": "UPDATE", "a": "INSERT", "d": "DELETE", "D": "TRUNCATE", "x": "REFERENCES",
         "t": "TRIGGER", "X": "EXECUTE", "U": "USAGE", "C": "CREATE", "c": "CONNECT", "T": "TEMPORARY",
         "m": "MAINTAIN", "s": "SET", "A": "ALTER SYSTEM"}


_PRIVILEGES = re.compile(r"^(GRANT |REVOKE |ALTER DEFAULT PRIVILEGES |ALTER .* OWNER TO )", re.DOTALL)


def is_privileges(sql: str) -> bool:
    """Owner and privilege statements: no user code runs in them, so an undo acting as the agents'
    role may run them as the proxy's own when the agents' role may not (another owner)."""
    return bool(_PRIVILEGES.match(sql))


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str | None) -> str:
    if text is None:
        return "NULL"
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass
class Parts:
    pre: list[tuple[int, str]] = field(default_factory=list)
    post: list[tuple[int, str]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    # (attnum, column description) whose values must come back from the captured data
    columns_back: list[Desc] = field(default_factory=list)
    rebuild: bool = False  # the table must be rebuilt (a column comes back in the middle)

    def extend(self, other: Parts) -> None:
        self.pre += other.pre
        self.post += other.post
        self.reasons += other.reasons
        self.columns_back += other.columns_back
        self.rebuild = self.rebuild or other.rebuild


def _list(d: Desc | None, key: str) -> list[Any]:
    v = (d or {}).get(key)
    return list(v) if isinstance(v, list) else []


# -- privileges ------------------------------------------------------------------------------

def parse_acl(items: list[str] | None) -> dict[str, set[str]]:
    """aclitem texts -> {grantee ("" = PUBLIC): {privilege letters, "r*" for WITH GRANT OPTION}}."""
    out: dict[str, set[str]] = {}
    for item in items or []:
        m = re.match(r'^((?:"(?:[^"]|"")*"|[^=]*))=([^/]*)/', item)
        if m is None:
            continue
        grantee = m.group(1)
        if grantee.startswith('"'):
            grantee = grantee[1:-1].replace('""', '"')
        privs: set[str] = set()
        letters = m.group(2)
        i = 0
        while i < len(letters):
            ch = letters[i]
            star = i + 1 < len(letters) and letters[i + 1] == "*"
            privs.add(ch + ("*" if star else ""))
            i += 2 if star else 1
        out.setdefault(grantee, set()).update(privs)
    return out


def _grantee(name: str) -> str:
    return "PUBLIC" if name == "" else ident(name)


def acl_statements(on: str, now: list[str] | None, target: list[str] | None, *, columns: str = "") -> list[str]:
    """GRANT and REVOKE that turn ACL `now` into `target` (`on`: e.g. `TABLE public.t`)."""
    a, b = parse_acl(now), parse_acl(target)
    out: list[str] = []
    cols = f" ({columns})" if columns else ""
    for grantee in sorted(set(a) | set(b)):
        have, want = a.get(grantee, set()), b.get(grantee, set())
        plain_have = {p[0] for p in have}
        plain_want = {p[0] for p in want}
        opt_have = {p[0] for p in have if p.endswith("*")}
        opt_want = {p[0] for p in want if p.endswith("*")}
        revoke = sorted(plain_have - plain_want)
        revoke_opt = sorted((opt_have - opt_want) & plain_want)
        grant = sorted(plain_want - plain_have - opt_want)
        grant_opt = sorted(opt_want - opt_have)
        if revoke:
            out.append(f"REVOKE {', '.join(_PRIV[p] + cols for p in revoke)} ON {on} FROM {_grantee(grantee)} CASCADE")
        if revoke_opt:
            out.append(f"REVOKE GRANT OPTION FOR {', '.join(_PRIV[p] + cols for p in revoke_opt)} ON {on} FROM "
                       f"{_grantee(grantee)} CASCADE")
        if grant:
            out.append(f"GRANT {', '.join(_PRIV[p] + cols for p in grant)} ON {on} TO {_grantee(grantee)}")
        if grant_opt:
            out.append(f"GRANT {', '.join(_PRIV[p] + cols for p in grant_opt)} ON {on} TO {_grantee(grantee)} "
                       "WITH GRANT OPTION")
    return out


# -- what an object is called in statements ---------------------------------------------------

def _rel_keyword(d: Desc) -> str:
    return {"table": "TABLE", "view": "VIEW", "matview": "MATERIALIZED VIEW", "sequence": "SEQUENCE",
            "index": "INDEX", "foreign table": "FOREIGN TABLE"}.get(str(d.get("kind")), "TABLE")


def _routine_keyword(d: Desc) -> str:
    """PROCEDURE for a procedure; FUNCTION for every other routine (aggregates and window
    functions included), as GRANT, COMMENT ON, OWNER TO and DROP name them here."""
    return "PROCEDURE" if d.get("kind") == "procedure" else "FUNCTION"


def _routine(d: Desc) -> str:
    return f"{_routine_keyword(d)} {d['signature']}"


def _grant_on(d: Desc) -> str:
    kind = d.get("kind")
    if kind in ("table", "view", "matview", "foreign table"):
        return f"TABLE {d['qualified']}"
    if kind == "sequence":
        return f"SEQUENCE {d['qualified']}"
    if kind in ("function", "procedure", "aggregate", "window function"):
        return _routine(d)
    if kind == "schema":
        return f"SCHEMA {d['qualified']}"
    if kind == "domain":
        return f"DOMAIN {d['qualified']}"
    return f"TYPE {d['qualified']}"


def _object(d: Desc) -> str:
    """How COMMENT ON and ALTER ... OWNER TO name the object `d`."""
    kind = d.get("kind")
    if kind in ("function", "procedure", "aggregate", "window function"):
        return _routine(d)
    if kind == "schema":
        return f"SCHEMA {d['qualified']}"
    if kind in ("enum", "composite", "range", "multirange", "base type"):
        return f"TYPE {d['qualified']}"
    if kind == "domain":
        return f"DOMAIN {d['qualified']}"
    return f"{_rel_keyword(d)} {d['qualified']}"


def common_post(now: Desc | None, target: Desc, *, created_by: str | None = None) -> list[tuple[int, str]]:
    """Owner, comment and privileges of `target` (from `now`'s, or from a freshly created
    object's: its creator owns it, no comment, default privileges, `created_by`)."""
    out: list[tuple[int, str]] = []
    if (now or {}).get("comment") != target.get("comment"):
        out.append((POST_LAST, f"COMMENT ON {_object(target)} IS {literal(target.get('comment'))}"))
    # The owner before the privileges: a new owner's default privileges are the base they start from.
    if target.get("kind") == "sequence" and target.get("owned_by"):
        pass  # a sequence linked to a column follows its table's owner; PostgreSQL refuses it alone
    elif now is None:
        if created_by is None or target.get("owner") != created_by:
            out.append((POST_LAST, f"ALTER {_object(target)} OWNER TO {ident(str(target['owner']))}"))
    elif now.get("owner") != target.get("owner"):
        out.append((POST_LAST, f"ALTER {_object(target)} OWNER TO {ident(str(target['owner']))}"))
    cur_acl = now.get("acl") if now is not None else None
    if now is not None and cur_acl is None:
        cur_acl = now.get("acl_default")
    tgt_acl = target.get("acl") if target.get("acl") is not None else target.get("acl_default")
    if now is None:
        cur_acl = target.get("acl_default")
    if (cur_acl or []) != (tgt_acl or []) and tgt_acl is not None:
        out += [(POST_LAST, s) for s in acl_statements(_grant_on(target), cur_acl, tgt_acl)]
    return out


# -- tables ------------------------------------------------------------------------------------

def _identity_clause(c: Desc) -> str:
    kind = "ALWAYS" if c.get("identity") == "a" else "BY DEFAULT"
    s = c.get("identity_sequence") or {}
    opts = []
    if s.get("name"):
        opts.append(f"SEQUENCE NAME {s['name']}")
    for key, word in (("start", "START WITH"), ("increment", "INCREMENT BY"), ("min", "MINVALUE"),
                      ("max", "MAXVALUE"), ("cache", "CACHE")):
        if s.get(key) is not None:
            opts.append(f"{word} {s[key]}")
    if s.get("cycle"):
        opts.append("CYCLE")
    return f"GENERATED {kind} AS IDENTITY" + (f" ({' '.join(opts)})" if opts else "")


def column_def(c: Desc, *, plain: bool = False) -> str:
    """A column as in CREATE TABLE. `plain`: without default, identity and NOT NULL (values come
    back first; those follow in `column_finish`)."""
    out = f"{ident(c['name'])} {c['type']}"
    if c.get("compression"):
        out += f" COMPRESSION {'pglz' if c['compression'] == 'p' else 'lz4'}"
    if c.get("collation"):
        out += f" COLLATE {c['collation']}"
    if c.get("generated") == "s":
        return out + f" GENERATED ALWAYS AS ({c['default']}) STORED" + (" NOT NULL" if c.get("notnull") else "")
    if plain:
        return out
    if c.get("identity"):
        out += " " + _identity_clause(c)
    elif c.get("default") is not None:
        out += f" DEFAULT {c['default']}"
    if c.get("notnull"):
        out += " NOT NULL"
    return out


def column_finish(table: str, c: Desc) -> list[tuple[int, str]]:
    """What `column_def(plain=True)` left out, once the values are back."""
    col = f"ALTER TABLE {table} ALTER COLUMN {ident(c['name'])}"
    out: list[tuple[int, str]] = []
    if c.get("generated") == "s":
        return out
    if c.get("identity"):
        out.append((POST_KEY, f"{col} SET NOT NULL"))
        out.append((POST_KEY, f"{col} ADD {_identity_clause(c)}"))
        return out
    if c.get("default") is not None:
        out.append((POST_KEY, f"{col} SET DEFAULT {c['default']}"))
    if c.get("notnull"):
        out.append((POST_KEY, f"{col} SET NOT NULL"))
    return out


def _column_extras(table: str, c: Desc) -> list[tuple[int, str]]:
    col = f"ALTER TABLE {table} ALTER COLUMN {ident(c['name'])}"
    out: list[tuple[int, str]] = []
    if c.get("storage"):
        word = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}[c["storage"]]
        out.append((POST_LAST, f"{col} SET STORAGE {word}"))
    if c.get("stattarget") is not None:
        out.append((POST_LAST, f"{col} SET STATISTICS {c['stattarget']}"))
    if c.get("options"):
        out.append((POST_LAST, f"{col} SET ({', '.join(c['options'])})"))
    if c.get("comment") is not None:
        out.append((POST_LAST, f"COMMENT ON COLUMN {table}.{ident(c['name'])} IS {literal(c['comment'])}"))
    if c.get("acl"):
        out += [(POST_LAST, s) for s in acl_statements(f"TABLE {table}", None, c["acl"], columns=ident(c["name"]))]
    return out


def _constraint_phase(k: Desc) -> int:
    return POST_FOREIGN if k.get("type") == "f" else POST_KEY


def _sub_objects(table: str, d: Desc, *, only: set[str] | None = None) -> list[tuple[int, str]]:
    """Constraints, indexes, triggers, policies, rules, statistics of table `d` (named `table`);
    `only`: just those whose "kind:name" is listed."""
    out: list[tuple[int, str]] = []

    def wanted(kind: str, name: str) -> bool:
        return only is None or f"{kind}:{name}" in only

    for k in _list(d, "constraints"):
        if k.get("cloned") or not k.get("local", True) or not wanted("constraint", k["name"]):
            continue
        out.append((_constraint_phase(k), f"ALTER TABLE {table} ADD CONSTRAINT {ident(k['name'])} {k['def']}"))
        if k.get("comment") is not None:
            out.append((POST_LAST, f"COMMENT ON CONSTRAINT {ident(k['name'])} ON {table} IS {literal(k['comment'])}"))
    for i in _list(d, "indexes"):
        if i.get("cloned") or not wanted("index", i["name"]):
            continue
        if not i.get("constraint"):
            out.append((POST_INDEX, str(i["def"])))
        if i.get("comment") is not None:
            schema = table.rsplit(".", 1)[0] if "." in table else ""
            name = f"{schema}.{ident(i['name'])}" if schema else ident(i["name"])
            out.append((POST_LAST, f"COMMENT ON INDEX {name} IS {literal(i['comment'])}"))
        if i.get("clustered"):
            out.append((POST_LAST, f"ALTER TABLE {table} CLUSTER ON {ident(i['name'])}"))
        if i.get("replident"):
            out.append((POST_LAST, f"ALTER TABLE {table} REPLICA IDENTITY USING INDEX {ident(i['name'])}"))
    for t in _list(d, "triggers"):
        if t.get("cloned") or not wanted("trigger", t["name"]):
            continue
        out.append((POST_DEPENDENT, str(t["def"])))
        out += _trigger_state(table, t)
        if t.get("comment") is not None:
            out.append((POST_LAST, f"COMMENT ON TRIGGER {ident(t['name'])} ON {table} IS {literal(t['comment'])}"))
    for p in _list(d, "policies"):
        if wanted("policy", p["name"]):
            out.append((POST_DEPENDENT, _policy_sql(table, p)))
            if p.get("comment") is not None:
                out.append((POST_LAST, f"COMMENT ON POLICY {ident(p['name'])} ON {table} IS {literal(p['comment'])}"))
    for r in _list(d, "rules"):
        if wanted("rule", r["name"]):
            out.append((POST_DEPENDENT, str(r["def"]).rstrip(";")))
            if r.get("enabled") and r["enabled"] != "O":
                out.append((POST_LAST, f"ALTER TABLE {table} {_ENABLE[r['enabled']]} RULE {ident(r['name'])}"))
            if r.get("comment") is not None:
                out.append((POST_LAST, f"COMMENT ON RULE {ident(r['name'])} ON {table} IS {literal(r['comment'])}"))
    for s in _list(d, "statistics"):
        if wanted("statistics", s["name"]):
            out.append((POST_DEPENDENT, str(s["def"])))
    return out


_ENABLE = {"O": "ENABLE", "D": "DISABLE", "A": "ENABLE ALWAYS", "R": "ENABLE REPLICA"}


def _trigger_state(table: str, t: Desc) -> list[tuple[int, str]]:
    if t.get("enabled", "O") == "O":
        return []
    return [(POST_LAST, f"ALTER TABLE {table} {_ENABLE[t['enabled']]} TRIGGER {ident(t['name'])}")]


def _policy_sql(table: str, p: Desc) -> str:
    cmd = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}[p.get("cmd", "*")]
    roles = ", ".join(p.get("roles") or ["public"])
    kind = "PERMISSIVE" if p.get("permissive", True) else "RESTRICTIVE"
    out = f"CREATE POLICY {ident(p['name'])} ON {table} AS {kind} FOR {cmd} TO {roles}"
    if p.get("using") is not None:
        out += f" USING ({p['using']})"
    if p.get("check") is not None:
        out += f" WITH CHECK ({p['check']})"
    return out


def _table_options(d: Desc) -> str:
    out = ""
    if d.get("partkey"):
        out += f" PARTITION BY {d['partkey']}"
    if d.get("am") and d["am"] != "heap":
        out += f" USING {ident(d['am'])}"
    if d.get("options"):
        out += f" WITH ({', '.join(d['options'])})"
    if d.get("tablespace"):
        out += f" TABLESPACE {d['tablespace']}"
    return out


def create_table(d: Desc, *, plain: set[str] | None = None, created_by: str | None = None) -> Parts:
    """CREATE TABLE `d`, its parts after the data. `plain`: columns created without default,
    identity and NOT NULL, finished after their values are back (`column_finish`)."""
    parts = Parts()
    table = str(d["qualified"])
    if d.get("children") or d.get("partition_of") or d.get("inherits") or d.get("of_type"):
        parts.reasons.append(f"table {table} is part of an inheritance or partition tree, or typed; dbproxy does not "
                             "re-create those yet")
        return parts
    plain = plain or set()
    cols = [column_def(c, plain=c["name"] in plain) for c in _list(d, "columns")]
    unlogged = "UNLOGGED " if d.get("persistence") == "u" else ""
    parts.pre.append((PRE_TABLE, f"CREATE {unlogged}TABLE {table} ({', '.join(cols)}){_table_options(d)}"))
    for c in _list(d, "columns"):
        if c["name"] in plain:
            parts.post += column_finish(table, c)
        parts.post += _column_extras(table, c)
    # The primary key before the rows come back: values are matched to rows by it.
    rest = _sub_objects(table, d)
    pkey = {k["name"] for k in _list(d, "constraints") if k.get("type") == "p"}
    if set(d.get("primary_key") or []) & plain:
        pkey = set()  # its columns get their values after the rows: the key follows them
    for phase, stmt in rest:
        if any(stmt.startswith(f"ALTER TABLE {table} ADD CONSTRAINT {ident(n)} ") for n in pkey):
            parts.pre.append((PRE_TABLE + 2, stmt))
        else:
            parts.post.append((phase, stmt))
    parts.post += _relation_flags(table, None, d)
    parts.post += common_post(None, d, created_by=created_by)
    return parts


def _relation_flags(table: str, now: Desc | None, d: Desc) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    n = now or {"rls": False, "force_rls": False, "replident": "d" if d.get("kind") == "table" else "n"}
    if bool(n.get("rls")) != bool(d.get("rls")):
        rls = "ENABLE" if d.get("rls") else "DISABLE"
        out.append((POST_DEPENDENT, f"ALTER TABLE {table} {rls} ROW LEVEL SECURITY"))
    if bool(n.get("force_rls")) != bool(d.get("force_rls")):
        out.append((POST_DEPENDENT, f"ALTER TABLE {table} {'FORCE' if d.get('force_rls') else 'NO FORCE'} ROW LEVEL "
                                    "SECURITY"))
    if n.get("replident") != d.get("replident") and d.get("replident") in ("d", "f", "n"):
        word = {"d": "DEFAULT", "f": "FULL", "n": "NOTHING"}[d["replident"]]
        out.append((POST_LAST, f"ALTER TABLE {table} REPLICA IDENTITY {word}"))
    return out


def insert_sql(d: Desc) -> str:
    """INSERT of captured row images ($1: a JSON array) into table `d`, every writable column."""
    table = str(d["qualified"])
    cols = [c for c in _list(d, "columns") if c.get("generated") != "s"]
    names = ", ".join(ident(c["name"]) for c in cols)
    values = ", ".join(_value_expr(c, "v") for c in cols)
    override = " OVERRIDING SYSTEM VALUE" if any(c.get("identity") for c in cols) else ""
    return (f"INSERT INTO {table} ({names}){override} SELECT {values} FROM "
            f"pg_catalog.json_populate_recordset(NULL::{table}, $1::pg_catalog.json) AS v")


def _value_expr(c: Desc, alias: str) -> str:
    """An image's value of column `c`: for NOT NULL json/jsonb columns an image's `null` is JSON
    null, which json_populate_record reads as SQL NULL."""
    ref = f"{alias}.{ident(c['name'])}"
    if c.get("notnull") and str(c.get("type")) in ("json", "jsonb"):
        return f"COALESCE({ref}, 'null')"
    return ref


def update_values_sql(d: Desc, columns: list[str], key: list[str]) -> str:
    """UPDATE of `columns` from captured images ($1: a JSON array of key + columns), row by key."""
    table = str(d["qualified"])
    by_name = {c["name"]: c for c in _list(d, "columns")}
    sets = [c for c in columns if c in by_name and by_name[c].get("generated") != "s"]
    lhs = ", ".join(ident(c) for c in sets)
    rhs = ", ".join(_value_expr(by_name[c], "v") for c in sets)
    match = " AND ".join(f"x.{ident(k)} = v.{ident(k)}" for k in key)
    if len(sets) == 1:
        return (f"UPDATE ONLY {table} AS x SET {lhs} = {rhs} FROM pg_catalog.json_populate_recordset(NULL::{table}, "
                f"$1::pg_catalog.json) AS v WHERE {match}")
    return (f"UPDATE ONLY {table} AS x SET ({lhs}) = ROW({rhs}) FROM pg_catalog.json_populate_recordset(NULL::{table}, "
            f"$1::pg_catalog.json) AS v WHERE {match}")


def same_rows_check_sql(d: Desc, without: list[str]) -> str:
    """NULL when the table's rows, every column but `without`, are the images' ($1) as a
    multiset; else why not. For tables without a key, whose rows come back whole."""
    table = str(d["qualified"])
    cols = [c["name"] for c in _list(d, "columns") if c["name"] not in without]
    row = lambda a: "ROW(" + ", ".join(f"{a}.{ident(c)}" for c in cols) + ")::text"  # noqa: E731
    return (f"SELECT CASE WHEN (SELECT array_agg({row('x')} ORDER BY {row('x')} COLLATE \"C\") FROM ONLY {table} x) "
            f"IS NOT DISTINCT FROM (SELECT array_agg({row('v')} ORDER BY {row('v')} COLLATE \"C\") FROM "
            f"pg_catalog.json_populate_recordset(NULL::{table}, $1::pg_catalog.json) v) THEN NULL ELSE "
            f"{literal(f'the rows of {table} changed since, so their captured values cannot be matched to them')} END")


def matview_digest_check_sql(name: str) -> str:
    """NULL when materialized view `name` holds the contents whose digest is $1 (as
    `dbproxy.keep_matview` took it, under the same output settings); else why not."""
    why = (f"materialized view {name}: recomputed, it does not hold the contents it had before the REFRESH (its "
           "query gives them only over the rows it read then, not over rows changed since or a sample of them)")
    return (f"SELECT CASE WHEN pg_catalog.md5(COALESCE(pg_catalog.string_agg(dbproxy_row::text, E'\\n' ORDER BY "
            f"dbproxy_row::text COLLATE \"C\"), '')) = $1::text THEN NULL ELSE {literal(why)} END "
            f"FROM {name} dbproxy_row")


# -- views, sequences, functions, types, schemas ------------------------------------------------

def create_view(d: Desc, *, created_by: str | None = None) -> Parts:
    parts = Parts()
    name = str(d["qualified"])
    opts = f" WITH ({', '.join(d['options'])})" if d.get("options") else ""
    body = str(d.get("view") or "").strip().rstrip(";")
    if d.get("kind") == "matview":
        am = f" USING {ident(d['am'])}" if d.get("am") and d["am"] != "heap" else ""
        ts = f" TABLESPACE {d['tablespace']}" if d.get("tablespace") else ""
        data = "" if d.get("populated", True) else " WITH NO DATA"
        parts.post.append((POST_MATVIEW, f"CREATE MATERIALIZED VIEW {name}{am}{opts}{ts} AS {body}{data}"))
        parts.post += [(POST_MATVIEW + 1, s) for _, s in _sub_objects(name, {"indexes": d.get("indexes")})]
    else:
        parts.pre.append((PRE_VIEW, f"CREATE VIEW {name}{opts} AS {body}"))
        for c in _list(d, "columns"):
            if c.get("default") is not None:
                parts.post.append((POST_DEPENDENT, f"ALTER VIEW {name} ALTER COLUMN {ident(c['name'])} SET DEFAULT "
                                                   f"{c['default']}"))
        parts.post += _sub_objects(name, {"triggers": d.get("triggers"), "rules": d.get("rules")})
    for c in _list(d, "columns"):
        if c.get("comment") is not None:
            parts.post.append((POST_LAST, f"COMMENT ON COLUMN {name}.{ident(c['name'])} IS {literal(c['comment'])}"))
        if c.get("acl"):
            parts.post += [(POST_LAST, s) for s in acl_statements(f"TABLE {name}", None, c["acl"],
                                                                  columns=ident(c["name"]))]
    parts.post += common_post(None, d, created_by=created_by)
    return parts


def _sequence_options(s: Desc) -> str:
    out = []
    if s.get("type"):
        out.append(f"AS {s['type']}")
    for key, word in (("increment", "INCREMENT BY"), ("min", "MINVALUE"), ("max", "MAXVALUE"),
                      ("start", "START WITH"), ("cache", "CACHE")):
        if s.get(key) is not None:
            out.append(f"{word} {s[key]}")
    out.append("CYCLE" if s.get("cycle") else "NO CYCLE")
    return " ".join(out)


def create_sequence(d: Desc, *, created_by: str | None = None) -> Parts:
    parts = Parts()
    name = str(d["qualified"])
    parts.pre.append((PRE_SEQUENCE, f"CREATE {'UNLOGGED ' if d.get('persistence') == 'u' else ''}SEQUENCE {name} "
                                     f"{_sequence_options(d.get('sequence') or {})}"))
    if d.get("owned_by"):
        parts.post.append((POST_KEY, f"ALTER SEQUENCE {name} OWNED BY {d['owned_by']}"))
    parts.post += common_post(None, d, created_by=created_by)
    return parts


def setval_sql(name: str, last_value: object, is_called: object) -> str:
    return f"SELECT pg_catalog.setval({literal(name)}, {int(str(last_value))}, {'true' if is_called else 'false'})"


def create_function(d: Desc, *, created_by: str | None = None) -> Parts:
    parts = Parts()
    if not d.get("def"):
        parts.reasons.append(f"{d.get('kind')} {d.get('signature')} cannot be re-created from the catalog "
                             "(pg_get_functiondef does not cover it)")
        return parts
    parts.pre.append((PRE_FUNCTION, str(d["def"]).strip()))
    parts.post += common_post(None, d, created_by=created_by)
    return parts


def create_type(d: Desc, *, created_by: str | None = None) -> Parts:
    parts = Parts()
    name = str(d["qualified"])
    kind = d.get("kind")
    if kind == "enum":
        labels = ", ".join(literal(x) for x in _list(d, "labels"))
        parts.pre.append((PRE_TYPE, f"CREATE TYPE {name} AS ENUM ({labels})"))
    elif kind == "composite":
        attrs = ", ".join(f"{ident(a['name'])} {a['type']}" + (f" COLLATE {a['collation']}" if a.get("collation")
                                                                 else "") for a in _list(d, "attributes"))
        parts.pre.append((PRE_TYPE, f"CREATE TYPE {name} AS ({attrs})"))
        for a in _list(d, "attributes"):
            if a.get("comment") is not None:
                parts.post.append((POST_LAST,
                                   f"COMMENT ON COLUMN {name}.{ident(a['name'])} IS {literal(a['comment'])}"))
    elif kind == "domain":
        sql = f"CREATE DOMAIN {name} AS {d['base']}"
        if d.get("collation"):
            sql += f" COLLATE {d['collation']}"
        if d.get("default") is not None:
            sql += f" DEFAULT {d['default']}"
        if d.get("notnull"):
            sql += " NOT NULL"
        parts.pre.append((PRE_TYPE + 1, sql))
        for k in _list(d, "constraints"):
            parts.post.append((POST_KEY, f"ALTER DOMAIN {name} ADD CONSTRAINT {ident(k['name'])} {k['def']}"))
    elif kind == "range":
        r = d.get("range") or {}
        opts = [f"SUBTYPE = {r.get('subtype')}"]
        for key, word in (("opclass", "SUBTYPE_OPCLASS"), ("collation", "COLLATION"), ("canonical", "CANONICAL"),
                          ("subdiff", "SUBTYPE_DIFF"), ("multirange", "MULTIRANGE_TYPE_NAME")):
            if r.get(key):
                opts.append(f"{word} = {r[key]}")
        parts.pre.append((PRE_TYPE, f"CREATE TYPE {name} AS RANGE ({', '.join(opts)})"))
    else:
        parts.reasons.append(f"{kind} {name} cannot be re-created from the catalog by dbproxy")
        return parts
    parts.post += common_post(None, d, created_by=created_by)
    return parts


def create_schema(d: Desc, *, created_by: str | None = None) -> Parts:
    parts = Parts(pre=[(PRE_SCHEMA, f"CREATE SCHEMA {d['qualified']}")])
    parts.post += common_post(None, d, created_by=created_by)
    return parts


def create(d: Desc, *, created_by: str | None = None, plain: set[str] | None = None) -> Parts:
    """The statements that make object `d` again."""
    kind = d.get("kind")
    if d.get("unsupported") or d.get("extension"):
        return Parts(reasons=[f"{kind} {d.get('qualified')} cannot be re-created by dbproxy"])
    if kind == "table":
        return create_table(d, plain=plain, created_by=created_by)
    if kind in ("view", "matview"):
        return create_view(d, created_by=created_by)
    if kind == "sequence":
        if d.get("identity_of"):
            return Parts()  # made by its identity column
        return create_sequence(d, created_by=created_by)
    if kind in ("function", "procedure", "aggregate", "window function"):
        return create_function(d, created_by=created_by)
    if kind in ("enum", "composite", "domain", "range", "multirange", "base type"):
        if kind == "multirange":
            return Parts()  # made by its range type
        return create_type(d, created_by=created_by)
    if kind == "schema":
        return create_schema(d, created_by=created_by)
    return Parts(reasons=[f"{kind} {d.get('qualified')} cannot be re-created by dbproxy"])


def drop(d: Desc) -> str | None:
    """The statement that removes object `d` (None: nothing to drop, e.g. an identity sequence)."""
    kind = d.get("kind")
    if kind in ("table", "view", "matview", "sequence", "index", "foreign table"):
        if kind == "sequence" and d.get("identity_of"):
            return None
        return f"DROP {_rel_keyword(d)} {d['qualified']}"
    if kind in ("function", "procedure", "aggregate", "window function"):
        return f"DROP {_routine(d)}"
    if kind == "domain":
        return f"DROP DOMAIN {d['qualified']}"
    if kind in ("enum", "composite", "range", "base type"):
        return f"DROP TYPE {d['qualified']}"
    if kind == "schema":
        return f"DROP SCHEMA {d['qualified']}"
    return None


# -- alter: from `now` to `target` ---------------------------------------------------------------

def alter(now: Desc, target: Desc) -> Parts:
    """Statements that turn the object as it is now into `target` (same object: same key)."""
    kind = target.get("kind")
    parts = Parts()
    if kind != now.get("kind") or target.get("unsupported"):
        if now != target:
            parts.reasons.append(f"{kind} {target.get('qualified')} changed in a way dbproxy cannot reverse")
        return parts
    if kind == "table":
        return _alter_table(now, target)
    if kind in ("view", "matview"):
        return _alter_view(now, target)
    if kind == "sequence":
        return _alter_sequence(now, target)
    if kind in ("function", "procedure"):
        return _alter_function(now, target)
    if kind in ("enum", "composite", "domain", "range"):
        return _alter_type(now, target)
    if kind == "schema":
        parts.pre += _rename(now, target, "SCHEMA")
        parts.post += common_post(now, target)
        return parts
    if kind == "default privileges":
        return _alter_defacl(now, target)
    if now != target:
        parts.reasons.append(f"{kind} {target.get('qualified')} changed in a way dbproxy cannot reverse")
    return parts


def _rename(now: Desc, target: Desc, keyword: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    name = str(now["qualified"])
    if now.get("schema") != target.get("schema") and target.get("schema") is not None:
        out.append((PRE_SURVIVOR, f"ALTER {keyword} {name} SET SCHEMA {ident(str(target['schema']))}"))
        name = f"{ident(str(target['schema']))}.{ident(str(now['name']))}"
    if now.get("name") != target.get("name"):
        if keyword == "SCHEMA":
            out.append((PRE_SURVIVOR, f"ALTER SCHEMA {name} RENAME TO {ident(str(target['name']))}"))
        else:
            out.append((PRE_SURVIVOR, f"ALTER {keyword} {name} RENAME TO {ident(str(target['name']))}"))
    return out


def _by(items: list[Desc], key: str = "name") -> dict[str, Desc]:
    return {str(i[key]): i for i in items}


_NAME = r'(?:"(?:[^"]|"")*"|[^\s."(]+)'
_QNAME = rf"{_NAME}(?:\.{_NAME})?"
_HEADS = {
    "index": re.compile(rf"^CREATE (?:UNIQUE )?INDEX {_NAME} ON (?:ONLY )?{_QNAME} "),
    "trigger": re.compile(rf"^CREATE (?:CONSTRAINT )?TRIGGER {_NAME} "),
    "rule": re.compile(rf"^CREATE RULE {_NAME} AS"),
    "statistics": re.compile(rf"^CREATE STATISTICS {_QNAME}"),
}
_TRIGGER_ON = re.compile(rf" ON {_QNAME} ")


def _normal(kind: str, item: Desc) -> Any:
    """What must be equal for two differently named or numbered parts to be the same: the
    definition without the part's own name and table (renames do not change what it does)."""
    if kind == "constraint":
        return (item.get("def"), item.get("validated"))
    if kind == "policy":
        return (item.get("permissive"), item.get("cmd"), item.get("roles"), item.get("using"), item.get("check"))
    text = str(item.get("def") or "")
    head = _HEADS.get(kind)
    if head is not None:
        text = head.sub("", text, count=1)
    if kind == "trigger":
        text = _TRIGGER_ON.sub(" ON ", text, count=1)
    return text


_PARTS = (("constraint", "constraints"), ("index", "indexes"), ("trigger", "triggers"), ("policy", "policies"),
          ("rule", "rules"), ("statistics", "statistics"))


def _drop_part(kind: str, table: str, schema: str, item: Desc) -> str:
    name = ident(str(item["name"]))
    if kind == "constraint":
        return f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}"
    if kind == "index":
        return f"DROP INDEX IF EXISTS {schema}.{name}"
    if kind == "statistics":
        return f"DROP STATISTICS IF EXISTS {schema}.{name}"
    return f"DROP {kind.upper()} IF EXISTS {name} ON {table}"


def _rename_part(kind: str, table: str, schema: str, old: str, new: str) -> str:
    if kind == "constraint":
        return f"ALTER TABLE {table} RENAME CONSTRAINT {ident(old)} TO {ident(new)}"
    if kind == "index":
        return f"ALTER INDEX {schema}.{ident(old)} RENAME TO {ident(new)}"
    if kind == "statistics":
        return f"ALTER STATISTICS {schema}.{ident(old)} RENAME TO {ident(new)}"
    return f"ALTER {kind.upper()} {ident(old)} ON {table} RENAME TO {ident(new)}"


def _skip_part(kind: str, item: Desc) -> bool:
    if item.get("cloned"):
        return True
    if kind == "constraint" and not item.get("local", True):
        return True
    return kind == "index" and bool(item.get("constraint"))


def _diff_parts(table: str, schema: str, now: Desc, target: Desc, parts: Parts) -> None:
    """Constraints, indexes, triggers, policies, rules and statistics: the same object (same
    oid) is renamed or changed in place; one with the same name and the same definition was
    re-made by PostgreSQL (ALTER TYPE re-creates indexes): left alone; the rest dropped or made."""
    only: set[str] = set()
    for kind, key in _PARTS:
        nows = [x for x in _list(now, key) if not _skip_part(kind, x)]
        wants = [x for x in _list(target, key) if not _skip_part(kind, x)]
        by_oid = {int(x["oid"]): x for x in nows if x.get("oid") is not None}
        by_name = {str(x["name"]): x for x in nows}
        matched: set[int] = set()
        for want in wants:
            cur = by_oid.get(int(want.get("oid") or 0))
            same_object = cur is not None
            if cur is None:
                cur = by_name.get(str(want["name"]))
            if cur is None or id(cur) in matched:
                only.add(f"{kind}:{want['name']}")
                continue
            matched.add(id(cur))
            if same_object:
                if cur["name"] != want["name"]:
                    parts.pre.append((PRE_SURVIVOR, _rename_part(kind, table, schema, str(cur["name"]),
                                                                 str(want["name"]))))
                if kind == "policy" and _normal(kind, cur) != _normal(kind, want):
                    parts.post.append((POST_DEPENDENT, _alter_policy(table, want)))
                elif kind == "constraint" and cur.get("def") != want.get("def"):
                    parts.pre.append((PRE_SURVIVOR, _drop_part(kind, table, schema, want)))
                    only.add(f"{kind}:{want['name']}")
                    continue
                elif kind == "constraint" and want.get("validated") and not cur.get("validated"):
                    parts.post.append((POST_FOREIGN, f"ALTER TABLE {table} VALIDATE CONSTRAINT {ident(want['name'])}"))
                elif kind == "constraint" and cur.get("validated") and not want.get("validated"):
                    parts.pre.append((PRE_SURVIVOR, _drop_part(kind, table, schema, want)))
                    only.add(f"{kind}:{want['name']}")
                    continue
            elif _normal(kind, cur) != _normal(kind, want):
                parts.pre.append((PRE_SURVIVOR, _drop_part(kind, table, schema, cur)))
                only.add(f"{kind}:{want['name']}")
                continue
            if kind == "trigger" and cur.get("enabled") != want.get("enabled"):
                parts.post.append((POST_LAST, f"ALTER TABLE {table} {_ENABLE[want['enabled']]} TRIGGER "
                                              f"{ident(want['name'])}"))
            if kind == "rule" and cur.get("enabled") != want.get("enabled"):
                parts.post.append((POST_LAST, f"ALTER TABLE {table} {_ENABLE[want['enabled']]} RULE "
                                              f"{ident(want['name'])}"))
            if cur.get("comment") != want.get("comment") and kind != "statistics":
                on = {"constraint": f"CONSTRAINT {ident(want['name'])} ON {table}",
                      "index": f"INDEX {schema}.{ident(want['name'])}",
                      "trigger": f"TRIGGER {ident(want['name'])} ON {table}",
                      "policy": f"POLICY {ident(want['name'])} ON {table}",
                      "rule": f"RULE {ident(want['name'])} ON {table}"}[kind]
                parts.post.append((POST_LAST, f"COMMENT ON {on} IS {literal(want.get('comment'))}"))
        for cur in nows:
            if id(cur) not in matched:
                parts.pre.append((PRE_SURVIVOR, _drop_part(kind, table, schema, cur)))
        for want in _list(target, "indexes") if kind == "index" else []:
            if want.get("constraint"):
                cur = next((x for x in _list(now, "indexes") if x.get("constraint") == want.get("constraint")), None)
                if cur is not None and cur.get("comment") != want.get("comment"):
                    parts.post.append((POST_LAST, f"COMMENT ON INDEX {schema}.{ident(want['name'])} IS "
                                                  f"{literal(want.get('comment'))}"))
    if only:
        parts.post += _sub_objects(table, target, only=only)


def _alter_policy(table: str, p: Desc) -> str:
    out = f"ALTER POLICY {ident(p['name'])} ON {table} TO {', '.join(p.get('roles') or ['public'])}"
    if p.get("using") is not None:
        out += f" USING ({p['using']})"
    if p.get("check") is not None:
        out += f" WITH CHECK ({p['check']})"
    return out


def _alter_table(now: Desc, target: Desc) -> Parts:
    parts = Parts()
    parts.pre += _rename(now, target, _rel_keyword(target))
    table = str(target["qualified"])
    schema = ident(str(target["schema"]))
    ncols = {int(c["attnum"]): c for c in _list(now, "columns")}
    tcols = {int(c["attnum"]): c for c in _list(target, "columns")}
    kept = [a for a in tcols if a in ncols]
    back = sorted(a for a in tcols if a not in ncols)
    _diff_parts(table, schema, now, target, parts)
    # Columns: added by the command -> dropped; renamed, retyped, default, NOT NULL, identity.
    for a, c in ncols.items():
        if a not in tcols:
            parts.pre.append((PRE_SURVIVOR, f"ALTER TABLE {table} DROP COLUMN {ident(c['name'])}"))
    for a in kept:
        parts.extend(_alter_column(table, ncols[a], tcols[a]))
    if back:
        if kept and min(back) < max(kept):
            parts.rebuild = True
        else:
            for a in back:
                c = tcols[a]
                parts.pre.append((PRE_SURVIVOR, f"ALTER TABLE {table} ADD COLUMN {column_def(c, plain=True)}"))
                if c.get("generated") != "s":
                    parts.columns_back.append(c)
                    parts.post += column_finish(table, c)
                parts.post += _column_extras(table, c)
    parts.post += _relation_flags(table, now, target)
    if (now.get("options") or []) != (target.get("options") or []):
        gone = [o.split("=", 1)[0] for o in now.get("options") or [] if o not in (target.get("options") or [])]
        if gone:
            parts.post.append((POST_LAST, f"ALTER TABLE {table} RESET ({', '.join(gone)})"))
        if target.get("options"):
            parts.post.append((POST_LAST, f"ALTER TABLE {table} SET ({', '.join(target['options'])})"))
    if now.get("persistence") != target.get("persistence") and target.get("persistence") in ("p", "u"):
        logged = "UNLOGGED" if target["persistence"] == "u" else "LOGGED"
        parts.post.append((POST_LAST, f"ALTER TABLE {table} SET {logged}"))
    if now.get("tablespace") != target.get("tablespace"):
        parts.post.append((POST_LAST, f"ALTER TABLE {table} SET TABLESPACE {target.get('tablespace') or 'pg_default'}"))
    if any(now.get(k) != target.get(k) for k in ("partkey", "partition_of", "partbound", "inherits", "of_type")):
        parts.reasons.append(f"the inheritance or partitioning of {table} changed; dbproxy cannot reverse that yet")
    if not any(i.get("clustered") for i in _list(target, "indexes")) and any(i.get("clustered")
                                                                           for i in _list(now, "indexes")):
        parts.post.append((POST_LAST, f"ALTER TABLE {table} SET WITHOUT CLUSTER"))
    parts.post += common_post(now, target)
    return parts


def _alter_column(table: str, now: Desc, target: Desc) -> Parts:
    parts = Parts()
    name = ident(str(target["name"]))
    if now["name"] != target["name"]:
        parts.pre.append((PRE_SURVIVOR, f"ALTER TABLE {table} RENAME COLUMN {ident(now['name'])} TO {name}"))
    col = f"ALTER TABLE {table} ALTER COLUMN {name}"
    if now.get("generated") != target.get("generated"):
        parts.reasons.append(f"column {name} of {table} changed between generated and not; dbproxy cannot reverse that")
        return parts
    retyped = now.get("type") != target.get("type") or now.get("collation") != target.get("collation")
    if now.get("identity") and not target.get("identity"):
        parts.pre.append((PRE_SURVIVOR, f"{col} DROP IDENTITY"))
    if retyped:
        if now.get("default") is not None and not now.get("identity") and now.get("generated") != "s":
            parts.pre.append((PRE_SURVIVOR, f"{col} DROP DEFAULT"))
        collate = f" COLLATE {target['collation']}" if target.get("collation") else ""
        if target.get("generated") == "s":
            parts.pre.append((PRE_SURVIVOR, f"{col} TYPE {target['type']}{collate}"))
        elif target.get("in_key"):
            # Keys must keep their values (foreign keys point at them): cast back.
            parts.pre.append((PRE_SURVIVOR, f"{col} TYPE {target['type']}{collate} USING "
                                            f"{name}::{target['type']}"))
            parts.columns_back.append(target)
        else:
            # Every value comes back from the rows kept before the change: no cast is needed
            # (one back from the new type may not exist), NULL for now.
            if now.get("notnull"):
                parts.pre.append((PRE_SURVIVOR, f"{col} DROP NOT NULL"))
                if target.get("notnull"):
                    parts.post.append((POST_KEY, f"{col} SET NOT NULL"))
            parts.pre.append((PRE_SURVIVOR, f"{col} TYPE {target['type']}{collate} USING NULL"))
            parts.columns_back.append(target)
    if target.get("generated") != "s" and not target.get("identity"):
        if (now.get("default") != target.get("default")) or (retyped and now.get("default") is not None):
            if target.get("default") is None:
                if not retyped:
                    parts.post.append((POST_KEY, f"{col} DROP DEFAULT"))
            else:
                parts.post.append((POST_KEY, f"{col} SET DEFAULT {target['default']}"))
    if bool(now.get("notnull")) != bool(target.get("notnull")) and not (retyped and not target.get("in_key")
                                                                      and target.get("generated") != "s"):
        if target.get("notnull"):
            parts.post.append((POST_KEY, f"{col} SET NOT NULL"))
        else:
            parts.pre.append((PRE_SURVIVOR, f"{col} DROP NOT NULL"))
    if target.get("identity"):
        if not now.get("identity"):
            if now.get("default") is not None:
                parts.pre.append((PRE_SURVIVOR, f"{col} DROP DEFAULT"))
            parts.post.append((POST_KEY, f"{col} ADD {_identity_clause(target)}"))
        else:
            if now.get("identity") != target.get("identity"):
                how = "ALWAYS" if target["identity"] == "a" else "BY DEFAULT"
                parts.post.append((POST_KEY, f"{col} SET GENERATED {how}"))
            ns, ts = now.get("identity_sequence") or {}, target.get("identity_sequence") or {}
            opts = [f"{word} {ts[key]}" for key, word in (("increment", "SET INCREMENT BY"), ("min", "SET MINVALUE"),
                                                          ("max", "SET MAXVALUE"), ("start", "SET START WITH"),
                                                          ("cache", "SET CACHE"))
                    if ts.get(key) is not None and ns.get(key) != ts.get(key)]
            if ns.get("cycle") != ts.get("cycle"):
                opts.append("SET CYCLE" if ts.get("cycle") else "SET NO CYCLE")
            if opts:
                parts.post.append((POST_KEY, f"{col} {' '.join(opts)}"))
    for key, stmt in (("storage", "SET STORAGE"), ("compression", "SET COMPRESSION"), ("stattarget", "SET STATISTICS")):
        if now.get(key) != target.get(key):
            value = target.get(key)
            if key == "storage":
                value = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED", None: "DEFAULT"}.get(value)
                if value == "DEFAULT":
                    continue
            elif key == "compression":
                value = {"p": "pglz", "l": "lz4", None: "DEFAULT"}.get(value)
            elif value is None:
                value = -1
            parts.post.append((POST_LAST, f"{col} {stmt} {value}"))
    if (now.get("options") or []) != (target.get("options") or []):
        gone = [o.split("=", 1)[0] for o in now.get("options") or [] if o not in (target.get("options") or [])]
        if gone:
            parts.post.append((POST_LAST, f"{col} RESET ({', '.join(gone)})"))
        if target.get("options"):
            parts.post.append((POST_LAST, f"{col} SET ({', '.join(target['options'])})"))
    if now.get("comment") != target.get("comment"):
        parts.post.append((POST_LAST, f"COMMENT ON COLUMN {table}.{name} IS {literal(target.get('comment'))}"))
    if (now.get("acl") or []) != (target.get("acl") or []):
        parts.post += [(POST_LAST, s) for s in acl_statements(f"TABLE {table}", now.get("acl"), target.get("acl"),
                                                              columns=name)]
    return parts


def _alter_view(now: Desc, target: Desc) -> Parts:
    parts = Parts()
    keyword = _rel_keyword(target)
    parts.pre += _rename(now, target, keyword)
    name = str(target["qualified"])
    if now.get("view") != target.get("view") or (now.get("options") or []) != (target.get("options") or []):
        if target.get("kind") == "matview":
            parts.reasons.append(f"materialized view {name} was redefined; dbproxy re-creates materialized views only "
                                 "when dropped")
        else:
            shape = [(c["name"], c["type"]) for c in _list(now, "columns")]
            wanted = [(c["name"], c["type"]) for c in _list(target, "columns")]
            if wanted[:len(shape)] != shape:
                # CREATE OR REPLACE VIEW may only add columns at the end: drop it and make it anew.
                again = create_view(target)
                parts.pre.append((PRE_SURVIVOR, f"DROP VIEW {now['qualified']}"))
                parts.pre += again.pre
                parts.post += again.post
                return parts
            body = str(target.get("view") or "").strip().rstrip(";")
            opts = f" WITH ({', '.join(target['options'])})" if target.get("options") else ""
            parts.pre.append((PRE_VIEW, f"CREATE OR REPLACE VIEW {name}{opts} AS {body}"))
            gone = [o.split("=", 1)[0] for o in now.get("options") or [] if o not in (target.get("options") or [])]
            if gone:
                parts.pre.append((PRE_VIEW, f"ALTER VIEW {name} RESET ({', '.join(gone)})"))
    if target.get("kind") == "matview" and bool(now.get("populated")) != bool(target.get("populated")):
        # Unpopulated before: emptied again exactly. Populated before (REFRESH ... WITH NO DATA):
        # recomputed from its query, which gives the earlier contents only if they were fresh;
        # the caller knows (`inverse.ddl_groups`) and says so when they were not.
        data = "" if target.get("populated") else " WITH NO DATA"
        parts.post.append((POST_MATVIEW, f"REFRESH MATERIALIZED VIEW {name}{data}"))
    ncols, tcols = _by(_list(now, "columns"), "attnum"), _by(_list(target, "columns"), "attnum")
    for a, c in tcols.items():
        cur = ncols.get(a)
        if cur is None:
            continue
        if cur["name"] != c["name"]:
            parts.pre.append((PRE_SURVIVOR, f"ALTER {keyword} {name} RENAME COLUMN {ident(cur['name'])} TO "
                                            f"{ident(c['name'])}"))
        if cur.get("default") != c.get("default") and target.get("kind") == "view":
            parts.post.append((POST_DEPENDENT, f"ALTER VIEW {name} ALTER COLUMN {ident(c['name'])} " +
                               (f"SET DEFAULT {c['default']}" if c.get("default") is not None else "DROP DEFAULT")))
        if cur.get("comment") != c.get("comment"):
            parts.post.append((POST_LAST,
                               f"COMMENT ON COLUMN {name}.{ident(c['name'])} IS {literal(c.get('comment'))}"))
        if (cur.get("acl") or []) != (c.get("acl") or []):
            parts.post += [(POST_LAST, s) for s in acl_statements(f"TABLE {name}", cur.get("acl"), c.get("acl"),
                                                                  columns=ident(c["name"]))]
    if target.get("kind") == "matview":
        sub = _alter_table({"qualified": name, "schema": target.get("schema"), "name": target.get("name"),
                            "indexes": now.get("indexes"), "kind": "table"},
                           {"qualified": name, "schema": target.get("schema"), "name": target.get("name"),
                            "indexes": target.get("indexes"), "kind": "table"})
        parts.pre += sub.pre
        parts.post += [p for p in sub.post if p[0] != POST_LAST or "OWNER" not in p[1]]
    else:
        sub = _alter_table({"qualified": name, "schema": target.get("schema"), "name": target.get("name"),
                            "triggers": now.get("triggers"), "rules": now.get("rules"), "kind": "table"},
                           {"qualified": name, "schema": target.get("schema"), "name": target.get("name"),
                            "triggers": target.get("triggers"), "rules": target.get("rules"), "kind": "table"})
        parts.pre += sub.pre
        parts.post += [p for p in sub.post if "OWNER" not in p[1]]
    parts.post += common_post(now, target)
    return parts


def _alter_sequence(now: Desc, target: Desc) -> Parts:
    parts = Parts()
    parts.pre += _rename(now, target, "SEQUENCE")
    name = str(target["qualified"])
    ns, ts = now.get("sequence") or {}, target.get("sequence") or {}
    if ns != ts:
        parts.post.append((POST_KEY, f"ALTER SEQUENCE {name} {_sequence_options(ts)}"))
    if now.get("owned_by") != target.get("owned_by"):
        parts.post.append((POST_KEY, f"ALTER SEQUENCE {name} OWNED BY {target.get('owned_by') or 'NONE'}"))
    parts.post += common_post(now, target)
    return parts


def _alter_function(now: Desc, target: Desc) -> Parts:
    parts = Parts()
    keyword = _routine_keyword(target)
    sig = str(now["signature"])
    if now.get("schema") != target.get("schema"):
        parts.pre.append((PRE_SURVIVOR, f"ALTER {keyword} {sig} SET SCHEMA {ident(str(target['schema']))}"))
        sig = f"{ident(str(target['schema']))}.{sig.split('.', 1)[1] if '.' in sig else sig}"
    if now.get("name") != target.get("name"):
        parts.pre.append((PRE_SURVIVOR, f"ALTER {keyword} {sig} RENAME TO {ident(str(target['name']))}"))
    if now.get("def") != target.get("def") and target.get("def"):
        if now.get("result") != target.get("result"):
            parts.pre.append((PRE_FUNCTION, f"DROP {keyword} {target['signature']}"))
        parts.pre.append((PRE_FUNCTION, str(target["def"]).strip()))
    parts.post += common_post(now, target)
    return parts


def _alter_type(now: Desc, target: Desc) -> Parts:
    parts = Parts()
    kind = target.get("kind")
    keyword = "DOMAIN" if kind == "domain" else "TYPE"
    parts.pre += _rename(now, target, keyword)
    name = str(target["qualified"])
    if kind == "enum" and now.get("labels") != target.get("labels"):
        nl, tl = _list(now, "labels"), _list(target, "labels")
        if len(nl) == len(tl):
            for a, b in zip(nl, tl, strict=True):
                if a != b:
                    parts.pre.append((PRE_SURVIVOR, f"ALTER TYPE {name} RENAME VALUE {literal(a)} TO {literal(b)}"))
        else:
            parts.reasons.append(f"values were added to enum {name}; PostgreSQL cannot remove an enum value")
    if kind == "domain":
        if now.get("default") != target.get("default"):
            parts.post.append((POST_KEY, f"ALTER DOMAIN {name} " + (f"SET DEFAULT {target['default']}"
                                                                      if target.get("default") is not None
                                                                      else "DROP DEFAULT")))
        if bool(now.get("notnull")) != bool(target.get("notnull")):
            parts.post.append((POST_KEY, f"ALTER DOMAIN {name} {'SET' if target.get('notnull') else 'DROP'} NOT NULL"))
        nk, tk = _by(_list(now, "constraints")), _by(_list(target, "constraints"))
        for cname, k in nk.items():
            if cname not in tk or tk[cname].get("def") != k.get("def"):
                parts.pre.append((PRE_SURVIVOR, f"ALTER DOMAIN {name} DROP CONSTRAINT IF EXISTS {ident(cname)}"))
        for cname, k in tk.items():
            if cname not in nk or nk[cname].get("def") != k.get("def"):
                parts.post.append((POST_KEY, f"ALTER DOMAIN {name} ADD CONSTRAINT {ident(cname)} {k['def']}"))
    if kind == "composite" and now.get("attributes") != target.get("attributes"):
        na, ta = _list(now, "attributes"), _list(target, "attributes")
        if [a["name"] for a in na] == [a["name"] for a in ta] or len(na) != len(ta):
            parts.reasons.append(f"the attributes of type {name} changed; dbproxy cannot reverse that yet")
        else:
            for a, b in zip(na, ta, strict=True):
                if a["name"] != b["name"]:
                    parts.pre.append((PRE_SURVIVOR, f"ALTER TYPE {name} RENAME ATTRIBUTE {ident(a['name'])} TO "
                                                    f"{ident(b['name'])}"))
    if kind == "range" and now.get("range") != target.get("range"):
        parts.reasons.append(f"range type {name} changed; dbproxy cannot reverse that")
    parts.post += common_post(now, target)
    return parts


_DEFACL_OBJ = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES", "n": "SCHEMAS"}


def _alter_defacl(now: Desc, target: Desc) -> Parts:
    parts = Parts()
    prefix = f"ALTER DEFAULT PRIVILEGES FOR ROLE {ident(str(target['role']))}"
    if target.get("schema"):
        prefix += f" IN SCHEMA {target['schema']}"
    on = _DEFACL_OBJ.get(str(target.get("objtype")), "TABLES")
    for s in acl_statements(on, now.get("acl_effective"), target.get("acl_effective")):
        verb, rest = s.split(" ", 1)
        parts.post.append((POST_LAST, f"{prefix} {verb} {rest}"))
    return parts

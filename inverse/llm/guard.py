"""Check a model's proposed inverse before it goes anywhere near a database, even a sandbox.

The sandbox decides whether an inverse is *right* (README, design decision 6); this module decides
whether it is *admissible* at all. An inverse that reads a file, opens a connection, changes the
session's role or touches a table it was not given is rejected unseen: the sandbox is a real
PostgreSQL on a real host, and what a statement leaks there (say, `pg_read_file` output in an
error message) would be fed straight back to the model.

`check(statements, allowed)` returns problems, one line each, naming the statement and the rule
(empty: admissible). Each string may hold several statements; they are split the way PostgreSQL
splits them (`inverse.lexer`) and checked one by one. Two readings must both pass:

- **Lexical** (our PostgreSQL-faithful tokens, plus `inverse.classify`): no transaction control,
  no SET/RESET of settings, no DO, CALL, COPY, LOCK, VACUUM and other maintenance, no prepared
  statements or cursors, no ALTER SYSTEM, no CREATE/ALTER/DROP of roles, databases, extensions,
  schemas and other cluster-level objects, no GRANT/REVOKE of role membership, no CASCADE (it
  reaches objects nobody named), no enabling/disabling of all triggers, no file, program or
  network functions (`pg_read_file`, `lo_export`, `dblink*`, `set_config`, ...) spelled anywhere,
  and nothing of the proxy's own (`dbproxy` schema, capture triggers).
- **Structural** (sqlglot, postgres dialect): the statement must parse into a statement form an
  inverse may use (DML, SELECT for `setval`, CREATE/ALTER/DROP of tables, views, indexes,
  sequences, types, triggers, COMMENT, GRANT/REVOKE on objects, TRUNCATE). sqlglot's generic
  `Command` fallback counts as unparseable, except for a few forms read token by token here
  (`ALTER <object> name ...` without parentheses, `REFRESH MATERIALIZED VIEW`, `SET CONSTRAINTS`,
  and `CREATE FUNCTION` when allowed, see below). Every table, view, sequence, index, function and
  user type named anywhere (subqueries, CTEs, joins, foreign-key references, `'x'::regclass`,
  `nextval('x')`, casts) must be in `allowed`.

Names in `allowed` and in the SQL compare the way PostgreSQL resolves them: unquoted identifiers
fold to lower case, quoted ones keep their case (`public."T"` is not `public.t`). A qualified
reference must match an allowed name exactly; an unqualified reference `x` matches an allowed `x`
or `<default_schema>.x` (`public` by default: an inverse runs with the default `search_path`),
never `other.x`, which `x` would not resolve to. Conversely an allowed unqualified `x` admits
`public.x`. Built-in functions known to be read-only (`inverse.classify`'s list) may be called;
other functions only when allowed by name. `nextval`/`setval`/`currval` need a literal sequence
name that is allowed. Column, constraint and trigger names are not checked: they live inside an
allowed table.

Server-side programs: `CREATE [OR REPLACE] FUNCTION/PROCEDURE name` is admissible only when
`allowed` holds `"function:<name>"` (same matching rules). The caller adds that entry only when
the forward statement itself was a CREATE OR REPLACE FUNCTION of that function, whose old
definition the inverse must put back. Even then the language must be `sql` or `plpgsql`, the body
is scanned for the same forbidden functions, and SET clauses may not touch role-like settings.

Limits: the check sees text. Triggers, rules and foreign-key actions on allowed tables still run
whatever they run (the undo executor suppresses triggers, and the sandbox verification sees the
result); a function body is scanned for names, not understood.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from inverse.capture_schema import ROW_TRIGGER, TRUNCATE_TRIGGER
from inverse.classify import (
    _BUILTIN_TYPES,
    _ESCAPE_FUNCTIONS,
    _READ_ONLY_FUNCTIONS,
    Kind,
    _guc_escape,
    _normalized_for_sqlglot,
    _Stmt,
    classify,
)
from inverse.lexer import Tok, fold_identifier, lex, split_statements

__all__ = ["DEFAULT_SCHEMA", "FUNCTION_PREFIX", "check", "normalize_name"]

DEFAULT_SCHEMA = "public"
FUNCTION_PREFIX = "function:"

# Functions that reach files, programs, other servers or other sessions, or change settings:
# rejected wherever their name appears (even as text inside a function body).
_FORBIDDEN_FUNCTIONS = frozenset({
    *_ESCAPE_FUNCTIONS, "pg_execute_server_program", "set_config", "pg_reload_conf", "pg_terminate_backend",
    "pg_cancel_backend", "pg_sleep", "pg_sleep_for", "pg_sleep_until", "pg_notify", "query_to_xml",
    "query_to_xml_and_xmlschema", "cursor_to_xml", "table_to_xml", "database_to_xml", "schema_to_xml",
    "pg_import_system_collations", "dblink", "lo_import", "lo_export", "lo_unlink", "lo_from_bytea", "lo_put",
})
# Families of such functions, recognised by prefix where a name is called (`lo_x(`): a column may
# well be called lo_price.
_FORBIDDEN_PREFIXES = ("lo_", "dblink", "pg_read_", "pg_ls_", "pg_file_", "pg_stat_reset", "pg_advisory",
                       "pg_try_advisory", "pg_replication_", "pg_logical_", "pg_create_", "pg_drop_", "pg_backup_",
                       "pg_wal_", "pg_execute_")
# Types that may appear in a function signature without naming an object.
_PSEUDO_TYPES = frozenset({"trigger", "event_trigger", "void", "record", "anyelement", "anyarray", "anynonarray",
                           "anyenum", "anyrange", "anymultirange", "anycompatible", "anycompatiblearray"})
_SEQUENCE_FUNCTIONS = frozenset({"nextval", "setval", "currval"})

_TX_WORDS = frozenset({"begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release"})
_VERB_PROBLEMS: dict[str, str] = {
    "do": "DO blocks run server-side code",
    "call": "CALL runs a server-side procedure",
    "copy": "COPY reads or writes files, programs or the client stream",
    "lock": "LOCK is not part of an inverse",
    "vacuum": "maintenance commands (VACUUM) are not part of an inverse",
    "analyze": "maintenance commands (ANALYZE) are not part of an inverse",
    "analyse": "maintenance commands (ANALYZE) are not part of an inverse",
    "cluster": "maintenance commands (CLUSTER) are not part of an inverse",
    "reindex": "maintenance commands (REINDEX) are not part of an inverse",
    "checkpoint": "maintenance commands (CHECKPOINT) are not part of an inverse",
    "execute": "EXECUTE of prepared statements runs SQL the check cannot see",
    "prepare": "PREPARE of statements is not part of an inverse",
    "deallocate": "DEALLOCATE is a session command",
    "listen": "LISTEN is a session command",
    "unlisten": "UNLISTEN is a session command",
    "notify": "NOTIFY signals other sessions",
    "load": "LOAD loads a shared library into the server",
    "discard": "DISCARD is a session command",
    "declare": "cursors are not part of an inverse",
    "fetch": "cursors are not part of an inverse",
    "move": "cursors are not part of an inverse",
    "close": "cursors are not part of an inverse",
    "explain": "EXPLAIN (ANALYZE) is not part of an inverse",
    "import": "IMPORT FOREIGN SCHEMA reaches another server",
    "security": "SECURITY LABEL is not part of an inverse",
    "reassign": "REASSIGN OWNED acts on every object of a role",
}
# Object kinds after CREATE/ALTER/DROP that are cluster-level, or run code on events, or are
# otherwise beyond an inverse of an agent's transaction.
_FORBIDDEN_KINDS = frozenset({
    "role", "user", "group", "database", "extension", "schema", "tablespace", "server", "foreign", "publication",
    "subscription", "event", "language", "rule", "policy", "access", "cast", "conversion", "operator",
    "aggregate", "collation", "text", "statistics", "transform", "default", "system", "owned", "large",
})
_CREATE_MODIFIERS = frozenset({"or", "replace", "temp", "temporary", "unlogged", "global", "local", "unique",
                               "materialized", "recursive", "constraint", "trusted", "procedural", "if", "not",
                               "exists"})
_STATEMENT_TYPES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Select, exp.SetOperation, exp.Values,
                    exp.Alter, exp.Create, exp.Drop, exp.Comment, exp.Grant, exp.Revoke, exp.TruncateTable)
_CREATE_KINDS = frozenset({"TABLE", "VIEW", "INDEX", "SEQUENCE", "TYPE", "FUNCTION", "PROCEDURE", "TRIGGER"})
_DROP_KINDS = _CREATE_KINDS | {"MATERIALIZED VIEW", "CONSTRAINT"}
_ALTER_KINDS = frozenset({"TABLE", "VIEW", "INDEX", "SEQUENCE", "MATERIALIZED VIEW"})
_GRANT_KINDS = frozenset({"", "TABLE", "SEQUENCE", "FUNCTION", "PROCEDURE", "ROUTINE", "TYPE"})
_COMMAND_ALTER_KINDS = frozenset({"table", "view", "index", "sequence", "type"})
_TRUSTED_LANGUAGES = frozenset({"sql", "plpgsql"})
_PROXY_TRIGGERS = frozenset({ROW_TRIGGER, TRUNCATE_TRIGGER})

Name = tuple[str, ...]


def check(statements: list[str], allowed: set[str] | frozenset[str], *,
          default_schema: str = DEFAULT_SCHEMA) -> list[str]:
    """Problems with a proposed inverse (empty: admissible). See the module docstring for the rules."""
    names = _Allowed.of(allowed, default_schema)
    problems: list[str] = []
    for text in statements:
        try:
            pieces = split_statements(text)
        except Exception as e:  # the splitter must never take the caller down: reject instead
            problems.append(f"{_short(text)}: unparseable SQL ({type(e).__name__})")
            continue
        for sql in pieces:
            try:
                found = _check_one(sql, names)
            except Exception as e:
                found = [f"the check could not read it ({type(e).__name__}: {e})"]
            problems += [f"{_short(sql)}: {p}" for p in dict.fromkeys(found)]
    return problems


def normalize_name(name: str) -> str:
    """A qualified name as `check` compares it: unquoted parts folded, quoted parts kept, dotted."""
    return ".".join(_quote_part(p) for p in _parse_name(name))


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def _quote_part(part: str) -> str:
    if part and part == fold_identifier(part) and all(c.isalnum() or c == "_" for c in part) \
            and not part[0].isdigit():
        return part
    return '"' + part.replace('"', '""') + '"'


def _parse_name(text: str) -> Name:
    """`public."My T"` -> ("public", "My T"), read with PostgreSQL's lexical rules."""
    parts: list[str] = []
    expect_part = True
    for tok in lex(text.strip()).tokens:
        if expect_part and tok.kind in ("word", "ident"):
            parts.append(fold_identifier(tok.value) if tok.kind == "word" else tok.value)
            expect_part = False
        elif not expect_part and tok.kind == "punct" and tok.text == ".":
            expect_part = True
        else:
            return (text.strip(),)  # not a plain dotted name: it can only match itself
    return tuple(parts) if parts and not expect_part else (text.strip(),)


@dataclass(frozen=True)
class _Allowed:
    names: frozenset[Name]
    functions: frozenset[Name]
    default_schema: str

    @classmethod
    def of(cls, allowed: Iterable[str], default_schema: str) -> _Allowed:
        names: set[Name] = set()
        functions: set[Name] = set()
        for entry in allowed:
            if entry.lower().startswith(FUNCTION_PREFIX):
                functions.add(_parse_name(entry[len(FUNCTION_PREFIX):]))
            else:
                names.add(_parse_name(entry))
        return cls(frozenset(names), frozenset(functions), default_schema)

    def _in(self, name: Name, pool: frozenset[Name]) -> bool:
        if not name or (len(name) > 1 and name[0] == "dbproxy"):
            return False  # the proxy's own schema, whatever the caller allowed
        if name in pool:
            return True
        if len(name) == 1:
            return (self.default_schema, name[0]) in pool
        return len(name) == 2 and name[0] == self.default_schema and (name[1],) in pool

    def has(self, name: Name) -> bool:
        return self._in(name, self.names)

    def may_define(self, name: Name) -> bool:
        return self._in(name, self.functions)


def _ident(node: exp.Expression | str | None) -> str | None:
    if isinstance(node, str):
        return fold_identifier(node)
    if isinstance(node, exp.Identifier):
        return node.this if node.quoted else fold_identifier(node.this)
    if isinstance(node, exp.Var):
        return fold_identifier(node.this)
    return None


def _dotted(node: exp.Expression | None) -> Name | None:
    """The name parts of an Identifier / Dot / Column / Table / Var, or None when it is not a name."""
    if node is None:
        return None
    if isinstance(node, (exp.Identifier, exp.Var)):
        part = _ident(node)
        return (part,) if part is not None else None
    if isinstance(node, exp.Dot):
        left, right = _dotted(node.this), _dotted(node.expression)
        return left + right if left is not None and right is not None else None
    if isinstance(node, exp.Column):
        parts = [node.args.get(k) for k in ("catalog", "db", "table", "this")]
        names = [_ident(p) for p in parts if p is not None]
        return tuple(n for n in names if n is not None) if all(n is not None for n in names) else None
    if isinstance(node, exp.Table):
        if not isinstance(node.this, exp.Identifier):
            return None
        parts = [node.args.get(k) for k in ("catalog", "db", "this")]
        names = [_ident(p) for p in parts if p is not None]
        return tuple(n for n in names if n is not None) if all(n is not None for n in names) else None
    return None


def _show(name: Name) -> str:
    return ".".join(_quote_part(p) for p in name)


def _short(sql: str, limit: int = 80) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _forbidden_function(name: str, *, called: bool = True) -> bool:
    n = name.lower()
    return n in _FORBIDDEN_FUNCTIONS or (called and n.startswith(_FORBIDDEN_PREFIXES))


def _forbidden_tokens(toks: list[Tok]) -> list[str]:
    """Forbidden function names among the tokens: exact names anywhere, families where called."""
    found: list[str] = []
    for i, tok in enumerate(toks):
        if tok.kind in ("word", "ident"):
            called = i + 1 < len(toks) and toks[i + 1].kind == "punct" and toks[i + 1].text == "("
            if _forbidden_function(tok.value, called=called):
                found.append(tok.value)
    return found


# --------------------------------------------------------------------------------------------
# One statement
# --------------------------------------------------------------------------------------------


def _check_one(sql: str, allowed: _Allowed) -> list[str]:
    lexed = lex(sql)
    if lexed.error:
        return [f"unparseable SQL ({lexed.error})"]
    st = _Stmt(sql, lexed)
    problems = _lexical(st, allowed)
    if problems:
        return problems  # one clear reason is enough; the structural reading might only add noise
    normalized = _normalized_for_sqlglot(st)
    if st.word(0) == "comment":
        # COMMENT ... IS NULL drops a comment (the inverse of adding one); sqlglot only reads a string there,
        # and PostgreSQL treats '' the same as NULL.
        normalized = re.sub(r"\bis\s+null\s*$", "IS ''", normalized, flags=re.IGNORECASE)
    try:
        tree = sqlglot.parse_one(normalized, read="postgres")
    except SqlglotError as e:
        return [f"unparseable SQL ({str(e).splitlines()[0][:120]})"]
    if tree is None:
        return ["unparseable SQL (empty)"]
    if isinstance(tree, exp.Command):
        return _command(st, allowed)
    if not isinstance(tree, _STATEMENT_TYPES):
        return [f"unparseable SQL (not a statement an inverse may run: {type(tree).__name__})"]
    if isinstance(tree, exp.Update) and not tree.expressions:
        return ["unparseable SQL (UPDATE without SET)"]  # sqlglot is lenient here; PostgreSQL is not
    return _structural(tree, allowed)


def _words_at_depth0(st: _Stmt) -> list[tuple[int, str]]:
    return [(i, t.value) for i, t in enumerate(st.toks) if t.kind == "word" and t.depth == 0]


def _object_kind(st: _Stmt, start: int) -> tuple[str, int]:
    """The object kind word after CREATE/ALTER/DROP (skipping OR REPLACE, TEMP, UNIQUE, ...)."""
    i = start
    while st.word(i) in _CREATE_MODIFIERS and st.word(i):
        i += 1
    return st.word(i), i


def _lexical(st: _Stmt, allowed: _Allowed) -> list[str]:
    problems: list[str] = []
    w0, w1 = st.word(0), st.word(1)
    # Anything of the proxy's own, and forbidden functions, wherever their names appear.
    if any(t.kind in ("word", "ident") and (t.value == "dbproxy" or t.value in _PROXY_TRIGGERS) for t in st.toks):
        problems.append("touches the proxy's own objects (the dbproxy schema or its capture triggers)")
    for name in dict.fromkeys(_forbidden_tokens(st.toks)):
        problems.append(f"uses {name}, which reaches files, programs, other servers or sessions, or settings")
    if w0 in _TX_WORDS or (w0 == "prepare" and w1 == "transaction") or (
            w0 == "set" and (w1 == "transaction" or st.words(1, 3) == ["session", "characteristics", "as"])):
        problems.append(f"transaction control ({w0.upper()}) is not allowed: the inverse runs inside a transaction "
                        "the caller opens and closes")
    elif w0 == "set" and w1 == "constraints":
        pass  # SET CONSTRAINTS ... DEFERRED: transaction-local and harmless (ordering of FK checks)
    elif w0 in ("set", "reset"):
        name, _ = st.name_at(2 if w1 in ("local", "session") else 1)
        problems.append(f"SET/RESET of settings ({name or '?'}) is not allowed in an inverse")
    elif w0 in _VERB_PROBLEMS:
        problems.append(_VERB_PROBLEMS[w0])
    elif w0 == "alter" and w1 == "system":
        problems.append("ALTER SYSTEM changes the server's configuration")
    elif w0 in ("create", "alter", "drop", "comment"):
        kind, _ = _object_kind(st, 1 if w0 != "comment" else 2)
        if w0 == "comment" and w1 != "on":
            problems.append("unparseable SQL (COMMENT without ON)")
        elif kind in _FORBIDDEN_KINDS:
            problems.append(f"{w0.upper()} {kind.upper()} acts beyond the objects of the transaction")
        elif w0 == "create" and kind in ("function", "procedure"):
            problems += _function_definition(st, allowed)
    elif w0 in ("grant", "revoke"):
        depth0 = [w for _, w in _words_at_depth0(st)]
        if "on" not in depth0:
            problems.append(f"{w0.upper()} of role membership is not allowed in an inverse")
        else:
            on = depth0.index("on")
            if depth0[on + 1:on + 2] == ["all"]:
                problems.append(f"{w0.upper()} ON ALL ... IN SCHEMA reaches objects not listed")

    for i, w in _words_at_depth0(st):
        if w == "cascade" and st.word(i - 1) not in ("delete", "update"):  # ON DELETE CASCADE is an FK action
            problems.append("CASCADE reaches objects that nobody named")
            break
    for i, t in enumerate(st.toks):
        if t.kind == "word" and t.value in ("enable", "disable"):
            j = i + 1 + (st.word(i + 1) in ("replica", "always"))
            if st.word(j) == "trigger" and st.word(j + 1) in ("all", "user"):
                problems.append(f"{t.value.upper()} TRIGGER {st.word(j + 1).upper()} would switch the proxy's "
                                "capture triggers too")

    c = classify(st.text)
    if c.tx is not None and not any("transaction control" in p for p in problems):
        problems.append("transaction control is not allowed: the inverse runs inside the caller's transaction")
    if c.kind is Kind.SESSION and not problems and not (w0 == "set" and w1 == "constraints"):
        problems.append(f"session commands ({w0.upper()}) are not allowed in an inverse")
    if c.escape and not problems:
        problems.append(c.escape)
    if c.non_transactional and not problems:
        problems.append(f"cannot run inside the undo's transaction: {c.non_transactional}")
    return problems


def _function_definition(st: _Stmt, allowed: _Allowed) -> list[str]:
    """CREATE [OR REPLACE] FUNCTION/PROCEDURE: only a function the forward replaced, in a trusted language."""
    kind, i = _object_kind(st, 1)
    name, _ = st.name_at(i + 1)
    parsed = _parse_name(name) if name else ()
    if not parsed or not allowed.may_define(parsed):
        return [f"CREATE {kind.upper()} {name or '?'} defines a server-side program; only a function the "
                f"transaction itself replaced may be restored (allowed as '{FUNCTION_PREFIX}<name>')"]
    problems: list[str] = []
    language = None
    for j, w in _words_at_depth0(st):
        if w == "language" and j + 1 < len(st.toks):
            language = st.toks[j + 1].value.lower()
        elif w == "set" and st.word(j - 1) != "reset":
            setting, _ = st.name_at(j + 1)
            why = _guc_escape(setting or "", None, resetting=True) if setting else "a computed setting"
            if why:
                problems.append(f"the function's SET clause: {why}")
    if language not in _TRUSTED_LANGUAGES:
        problems.append(f"functions in language {language or '(none given)'} are not allowed (only sql, plpgsql)")
    # The body is a string: scan its words for the same forbidden names as the statement's.
    for tok in st.toks:
        if tok.kind == "string":
            body = lex(tok.value).tokens
            for name in dict.fromkeys(_forbidden_tokens(body)):
                problems.append(f"the function body uses {name}")
            if any(t.kind in ("word", "ident") and t.value == "dbproxy" for t in body):
                problems.append("the function body touches the proxy's own objects")
    return problems


def _command(st: _Stmt, allowed: _Allowed) -> list[str]:
    """Statements sqlglot cannot parse: a few safe forms, read token by token; everything else is unparseable."""
    w0, w1 = st.word(0), st.word(1)
    if w0 == "set" and w1 == "constraints":
        if all(t.kind in ("word", "ident") or (t.kind == "punct" and t.text in (".", ",")) for t in st.toks):
            return []
        return ["unparseable SQL (SET CONSTRAINTS takes names and DEFERRED/IMMEDIATE only)"]
    if w0 == "create" and _object_kind(st, 1)[0] in ("function", "procedure"):
        return []  # already checked lexically (_function_definition); sqlglot misses many valid forms
    if w0 == "refresh" and st.words(1, 2) == ["materialized", "view"]:
        i = st.skip_words(3, "concurrently")
        name, end = st.name_at(i)
        rest = st.words(end, 3)
        if name is None or not all(w in ("with", "no", "data", "") for w in rest) or end + 3 < len(st.toks):
            return ["unparseable SQL (REFRESH MATERIALIZED VIEW name [WITH [NO] DATA])"]
        return [] if allowed.has(_parse_name(name)) else [_not_allowed(_parse_name(name), "materialized view")]
    if w0 == "alter":
        kind = w1
        i = 2
        if kind == "materialized" and st.word(2) == "view":
            kind, i = "view", 3
        if kind in _COMMAND_ALTER_KINDS:
            return _alter_command(st, allowed, kind, i)
    return [f"unparseable SQL (sqlglot cannot parse this {w0.upper() or 'statement'} form, and only known "
            "forms are accepted)"]


def _alter_command(st: _Stmt, allowed: _Allowed, kind: str, i: int) -> list[str]:
    """ALTER <kind> [IF EXISTS] [ONLY] name <options without parentheses>: OWNER TO, ENABLE/DISABLE TRIGGER x,
    ROW LEVEL SECURITY, sequence options, RENAME, SET SCHEMA, enum values."""
    i = st.skip_if_exists(i)
    i = st.skip_words(i, "only")
    name, end = st.name_at(i)
    if name is None:
        return ["unparseable SQL (ALTER without an object name)"]
    target = _parse_name(name)
    problems = [] if allowed.has(target) else [_not_allowed(target, kind)]
    for t in st.toks[end:]:
        if (t.kind == "punct" and t.text not in (".", ",")) or t.kind in ("param", "other") or (
                t.kind == "op" and t.text not in ("=", "+", "-")):
            return [*problems, f"unparseable SQL (ALTER {kind.upper()} form with '{t.text}' is not accepted)"]
    words = st.words(end, len(st.toks) - end)
    schema = target[:-1]
    for k, w in enumerate(words):
        j = end + k
        if w == "owned" and st.word(j + 1) == "by" and st.word(j + 2) != "none":
            column, _ = st.name_at(j + 2)
            table = _parse_name(column)[:-1] if column else ()
            if not table or not allowed.has(table):
                problems.append(_not_allowed(table or ("?",), "table"))
        elif w == "rename" and st.word(j + 1) == "to":
            new, _ = st.name_at(j + 2)
            if new is not None and not allowed.has(schema + _parse_name(new)):
                problems.append(_not_allowed(schema + _parse_name(new), kind))
        elif w == "schema" and st.word(j - 1) == "set":
            dest, _ = st.name_at(j + 1)
            moved = (*_parse_name(dest or "?"), target[-1])
            if not allowed.has(moved):
                problems.append(_not_allowed(moved, kind))
    return problems


def _not_allowed(name: Name, kind: str) -> str:
    if len(name) > 1 and name[0] == "dbproxy":
        return f"{kind} {_show(name)} belongs to the proxy"
    return f"{kind} {_show(name)} is not among the objects this inverse may touch"


# --------------------------------------------------------------------------------------------
# The structural reading
# --------------------------------------------------------------------------------------------


def _kind(node: exp.Expression) -> str:
    kind = node.args.get("kind")
    text = (kind if isinstance(kind, str) else "").upper()
    if text == "VIEW" and (node.args.get("materialized") or any(
            isinstance(p, exp.MaterializedProperty) for p in node.find_all(exp.MaterializedProperty))):
        return "MATERIALIZED VIEW"
    return text


def _structural(tree: exp.Expression, allowed: _Allowed) -> list[str]:
    problems: list[str] = []
    if isinstance(tree, exp.Create) and _kind(tree) not in _CREATE_KINDS | {"MATERIALIZED VIEW"}:
        problems.append(f"CREATE {_kind(tree) or '?'} is not allowed in an inverse")
    elif isinstance(tree, exp.Drop) and _kind(tree) not in _DROP_KINDS:
        problems.append(f"DROP {_kind(tree) or '?'} is not allowed in an inverse")
    elif isinstance(tree, exp.Alter) and _kind(tree) not in _ALTER_KINDS:
        problems.append(f"ALTER {_kind(tree) or '?'} is not allowed in an inverse")
    elif isinstance(tree, (exp.Grant, exp.Revoke)) and _kind(tree) not in _GRANT_KINDS:
        problems.append(f"{type(tree).__name__.upper()} ON {_kind(tree)} is not allowed in an inverse")
    if isinstance(tree, (exp.Drop, exp.TruncateTable)) and (tree.args.get("cascade") or str(
            tree.args.get("option") or "").upper() == "CASCADE"):
        problems.append("CASCADE reaches objects that nobody named")
    if problems:
        return problems

    ctes = {_ident(c.args["alias"].this) for c in tree.find_all(exp.CTE)
            if isinstance(c.args.get("alias"), exp.TableAlias) and c.args["alias"].this is not None}
    dml_targets = {id(n.this if not isinstance(n.this, exp.Schema) else n.this.this)
                   for n in tree.find_all(exp.Insert, exp.Update, exp.Delete, exp.Merge)}

    def need(name: Name | None, kind: str, node: exp.Expression) -> None:
        if name is None:
            problems.append(f"a {kind} name the check cannot read ({node.sql('postgres')[:60]})")
        elif not allowed.has(name):
            problems.append(_not_allowed(name, kind))

    for table in tree.find_all(exp.Table):
        parent = table.parent
        if not isinstance(table.this, exp.Identifier):
            continue  # a function in FROM (checked below as a call) or ROWS FROM (...)
        if isinstance(parent, exp.Drop) and _kind(parent) in ("CONSTRAINT", "TRIGGER"):
            continue  # constraint and trigger names live inside their (checked) table
        if isinstance(parent, exp.UserDefinedFunction):
            fn = _dotted(table)
            creating = isinstance(parent.parent, exp.Create)
            if creating and (fn is None or not allowed.may_define(fn)):
                problems.append(f"CREATE FUNCTION {_show(fn or ('?',))} needs '{FUNCTION_PREFIX}<name>' in allowed")
            elif not creating:
                need(fn, "function", table)
            continue
        name = _dotted(table)
        if name is not None and len(name) == 1 and name[0] in ctes and id(table) not in dml_targets:
            continue  # a reference to a WITH query of this statement
        if isinstance(parent, exp.AlterRename) and isinstance(parent.parent, exp.Alter):
            # RENAME TO takes an unqualified name in the altered object's schema.
            owner = _dotted(parent.parent.this) or ()
            if name is not None and len(name) == 1:
                name = owner[:-1] + name
        need(name, "table" if not isinstance(parent, exp.Drop) else _kind(parent).lower() or "object", table)

    for index in tree.find_all(exp.Index):
        if isinstance(index.this, exp.Identifier):
            on = _dotted(index.args.get("table")) or ()
            need((*on[:-1], _ident(index.this) or "?"), "index", index)  # an index lives in its table's schema

    if isinstance(tree, exp.Comment) and isinstance(tree.this, exp.Column):
        column = _dotted(tree.this)
        need(column[:-1] if column and len(column) > 1 else None, "table", tree.this)

    for func in tree.find_all(exp.Func):
        if isinstance(func, exp.Anonymous):
            problems += _call(func, allowed)
        elif isinstance(func.parent, exp.Dot) and func.parent.expression is func:
            # sqlglot knows the name as a built-in, but a schema other than pg_catalog makes it a user function.
            qualifier = _dotted(func.parent.this) or ("?",)
            if qualifier != ("pg_catalog",):
                need((*qualifier, func.sql_name().lower()), "function", func)

    for dtype in tree.find_all(exp.DataType):
        if dtype.this == exp.DataType.Type.USERDEFINED:
            tname = _dotted(dtype.args.get("kind"))
            if tname is not None and len(tname) == 1 and tname[0] in _BUILTIN_TYPES | _PSEUDO_TYPES:
                continue
            if tname is not None and len(tname) == 2 and tname[0] == "pg_catalog" and tname[1] in _BUILTIN_TYPES:
                continue
            need(tname, "type", dtype)

    for cast in tree.find_all(exp.Cast):
        to = cast.args.get("to")
        if isinstance(to, exp.ObjectIdentifier) and str(to.this).upper() in ("REGCLASS", "REGPROC", "REGPROCEDURE"):
            literal = cast.this
            if isinstance(literal, exp.Literal) and literal.is_string:
                need(_parse_name(literal.this), "object", cast)
            else:
                what = str(to.this).lower()
                problems.append(f"a computed {what} ({cast.sql('postgres')[:60]}) could name any object")
    return list(dict.fromkeys(problems))


def _call(func: exp.Anonymous, allowed: _Allowed) -> list[str]:
    """A call sqlglot does not know as a built-in: read-only built-ins, allowed sequences, allowed functions."""
    name = _ident(func.this) if isinstance(func.this, (str, exp.Identifier)) else None
    if name is None:
        return [f"a function call the check cannot read ({func.sql('postgres')[:60]})"]
    qualifier: Name = ()
    parent = func.parent
    if isinstance(parent, exp.Dot) and parent.expression is func:
        qualifier = _dotted(parent.this) or ("?",)
    full = (*qualifier, name)
    if _forbidden_function(name):
        return [f"calls {_show(full)}(), which reaches files, programs, other servers or sessions, or settings"]
    builtin = qualifier in ((), ("pg_catalog",))
    if builtin and name in _SEQUENCE_FUNCTIONS:
        args = func.expressions
        first = args[0] if args else None
        if isinstance(first, exp.Cast):
            first = first.this
        if isinstance(first, exp.Literal) and first.is_string:
            seq = _parse_name(first.this)
            return [] if allowed.has(seq) else [_not_allowed(seq, "sequence")]
        return [f"{name}() with a computed sequence name could change any sequence"]
    if builtin and name in _READ_ONLY_FUNCTIONS:
        return []
    if allowed.has(full):
        return []
    return [f"calls {_show(full)}(), which is neither a known read-only built-in nor among the objects this "
            "inverse may touch"]

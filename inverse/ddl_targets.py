"""Which objects a DDL statement acts on, read with PostgreSQL's own parser (pglast), as the call
that keeps their state before it runs (`dbproxy.before_ddl`, see `inverse.ddl_state`).

`before_ddl_sql(statement)` returns `SELECT dbproxy.before_ddl(info, targets)` for a DDL
statement (None for anything else), to be run right before it, in the same transaction and
session. Object names are not resolved here: they go into the call as `to_regclass('...')`,
`to_regprocedure('...')`, `to_regtype`, `to_regnamespace`, `to_regrole`, evaluated in the agent's
session, so they resolve exactly as the statement's own names will (its `search_path`), and a
missing object is NULL (the statement then fails, or skips it with IF EXISTS) rather than an error.

`prepared(sql)` is the same for a whole query string: its statements, each DDL one preceded by its
`before_ddl` call. The proxy plans statement by statement; the sandbox, the benchmark and tests use
this to run what the proxy would have run.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pglast
from pglast import ast, enums
from pglast.stream import RawStream

from inverse.classify import split_statements

#: `ddl_snapshot_limit` defaults: rows and bytes of data kept per transaction.
DEFAULT_LIMIT_ROWS = 1_000_000
DEFAULT_LIMIT_BYTES = 1 << 30

_OT = enums.ObjectType
_RELATIONS = {_OT.OBJECT_TABLE, _OT.OBJECT_VIEW, _OT.OBJECT_MATVIEW, _OT.OBJECT_INDEX, _OT.OBJECT_SEQUENCE,
              _OT.OBJECT_FOREIGN_TABLE}
_FUNCTIONS = {_OT.OBJECT_FUNCTION, _OT.OBJECT_PROCEDURE, _OT.OBJECT_ROUTINE, _OT.OBJECT_AGGREGATE}
_TYPES = {_OT.OBJECT_TYPE, _OT.OBJECT_DOMAIN}
_SUBS = {_OT.OBJECT_TRIGGER: "trigger", _OT.OBJECT_POLICY: "policy", _OT.OBJECT_RULE: "rule",
         _OT.OBJECT_TABCONSTRAINT: "constraint"}
#: Default privileges' object type codes (pg_default_acl.defaclobjtype).
_DEFACL = {_OT.OBJECT_TABLE: "r", _OT.OBJECT_SEQUENCE: "S", _OT.OBJECT_FUNCTION: "f", _OT.OBJECT_ROUTINE: "f",
           _OT.OBJECT_PROCEDURE: "f", _OT.OBJECT_TYPE: "T", _OT.OBJECT_SCHEMA: "n"}
_CASCADE = enums.DropBehavior.DROP_CASCADE
_AT = enums.AlterTableType
#: Statements that are not DDL (no state to keep): DML, queries, transaction control, settings.
_NOT_DDL = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt, ast.CopyStmt,
            ast.TransactionStmt, ast.VariableSetStmt, ast.VariableShowStmt, ast.ExplainStmt, ast.PrepareStmt,
            ast.ExecuteStmt, ast.DeallocateStmt, ast.DeclareCursorStmt, ast.FetchStmt, ast.ClosePortalStmt,
            ast.NotifyStmt, ast.ListenStmt, ast.UnlistenStmt, ast.LockStmt, ast.DiscardStmt, ast.CallStmt,
            ast.DoStmt, ast.CheckPointStmt, ast.VacuumStmt, ast.LoadStmt, ast.ConstraintsSetStmt, ast.PLAssignStmt,
            ast.ReturnStmt)


@dataclass(frozen=True)
class Limits:
    rows: int = DEFAULT_LIMIT_ROWS
    bytes: int = DEFAULT_LIMIT_BYTES


def literal(text: str) -> str:
    """A string literal that means `text` whatever `standard_conforming_strings` is."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _names(nodes: Iterable[object]) -> list[str]:
    return [n.sval for n in nodes if isinstance(n, ast.String)]


def _qualified(parts: Sequence[str]) -> str:
    return ".".join(_ident(p) for p in parts)


def _rangevar(rv: ast.RangeVar) -> str:
    return _qualified([p for p in (rv.catalogname, rv.schemaname, rv.relname) if p])


def _rel(name: str) -> str:
    return f"pg_catalog.to_regclass({literal(name)})::pg_catalog.oid"


def _typename(tn: ast.TypeName) -> str:
    return str(RawStream()(tn))


def _function(owa: ast.ObjectWithArgs) -> str:
    name = _qualified(_names(owa.objname or ()))
    if owa.args_unspecified:
        return f"pg_catalog.to_regproc({literal(name)})::pg_catalog.oid"
    args = ", ".join(_typename(a) for a in owa.objargs or ())
    return f"pg_catalog.to_regprocedure({literal(f'{name}({args})')})::pg_catalog.oid"


def _type(node: object) -> str | None:
    if isinstance(node, ast.TypeName):
        return f"pg_catalog.to_regtype({literal(_typename(node))})::pg_catalog.oid"
    if isinstance(node, tuple | list):
        return f"pg_catalog.to_regtype({literal(_qualified(_names(node)))})::pg_catalog.oid"
    return None


def _obj(op: str, cls: str, oid_sql: str, **extra: object) -> str:
    parts = [f"'op', {literal(op)}", f"'cls', '{cls}'::pg_catalog.regclass::pg_catalog.oid", f"'obj', {oid_sql}"]
    parts += [f"{literal(k)}, {_value(v)}" for k, v in extra.items()]
    return f"pg_catalog.jsonb_build_object({', '.join(parts)})"


def _on_rel(op: str, rel_sql: str, **extra: object) -> str:
    parts = [f"'op', {literal(op)}", f"'rel', {rel_sql}"] + [f"{literal(k)}, {_value(v)}" for k, v in extra.items()]
    return f"pg_catalog.jsonb_build_object({', '.join(parts)})"


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, _Sql):
        return v.sql
    return literal(str(v))


@dataclass(frozen=True)
class _Sql:
    sql: str


def _object_target(op: str, objtype: object, obj: object, *, cascade: bool = False) -> str | None:
    """A target for one object of a DROP, COMMENT, GRANT, RENAME, ... in the parse tree's form."""
    if objtype in _RELATIONS:
        names = _names(obj) if isinstance(obj, tuple | list) else None
        if isinstance(obj, ast.RangeVar):
            return _obj(op, "pg_class", _rel(_rangevar(obj)), cascade=cascade)
        return _obj(op, "pg_class", _rel(_qualified(names)), cascade=cascade) if names else None
    if objtype in _FUNCTIONS and isinstance(obj, ast.ObjectWithArgs):
        return _obj(op, "pg_proc", _function(obj), cascade=cascade)
    if objtype in _TYPES:
        t = _type(obj)
        return _obj(op, "pg_type", t, cascade=cascade) if t else None
    if objtype == _OT.OBJECT_SCHEMA:
        name = obj.sval if isinstance(obj, ast.String) else obj if isinstance(obj, str) else None
        return (_obj(op, "pg_namespace", f"pg_catalog.to_regnamespace({literal(_ident(name))})::pg_catalog.oid",
                     cascade=cascade) if name else None)
    if objtype in _SUBS and isinstance(obj, tuple | list):
        names = _names(obj)
        if len(names) < 2:
            return None
        rel = _rel(_qualified(names[:-1]))
        if op == "drop":
            return _on_rel("drop_sub", rel, what=_SUBS[objtype], name=names[-1], cascade=cascade)
        return _obj("describe", "pg_class", rel)
    if objtype == _OT.OBJECT_COLUMN and isinstance(obj, tuple | list):
        names = _names(obj)
        return _obj("describe", "pg_class", _rel(_qualified(names[:-1]))) if len(names) >= 2 else None
    if objtype == _OT.OBJECT_DOMCONSTRAINT and isinstance(obj, tuple | list) and obj:
        t = _type(obj[0])
        return _obj("describe", "pg_type", t) if t else None
    return None


def targets(stmt: ast.Node) -> tuple[str, list[str]] | None:
    """(kind, target expressions) of a DDL statement; None when it is not DDL."""
    if isinstance(stmt, _NOT_DDL):
        return None
    out: list[str] = []
    kind = type(stmt).__name__
    if isinstance(stmt, ast.DropStmt):
        cascade = stmt.behavior == _CASCADE
        for obj in stmt.objects or ():
            t = _object_target("drop", stmt.removeType, obj, cascade=cascade)
            if t is not None:
                out.append(t)
    elif isinstance(stmt, ast.AlterTableStmt) and stmt.relation is not None:
        rel = _rel(_rangevar(stmt.relation))
        recurse = bool(stmt.relation.inh)
        out.append(_obj("describe", "pg_class", rel, recurse=recurse))
        for cmd in stmt.cmds or ():
            if not isinstance(cmd, ast.AlterTableCmd):
                continue
            cascade = cmd.behavior == _CASCADE
            if cmd.subtype == _AT.AT_DropColumn and cmd.name:
                out.append(_on_rel("drop_column", rel, column=cmd.name, cascade=cascade, recurse=recurse))
            elif cmd.subtype == _AT.AT_AlterColumnType and cmd.name:
                out.append(_on_rel("alter_type", rel, column=cmd.name, recurse=recurse))
            elif cmd.subtype == _AT.AT_DropConstraint and cmd.name:
                out.append(_on_rel("drop_sub", rel, what="constraint", name=cmd.name, cascade=cascade))
            elif cmd.subtype in (_AT.AT_AddIdentity, _AT.AT_SetIdentity, _AT.AT_DropIdentity) and cmd.name:
                out.append(_obj("describe", "pg_class", rel, column=cmd.name))
            elif cmd.subtype in (_AT.AT_AttachPartition, _AT.AT_DetachPartition) \
                    and isinstance(cmd.def_, ast.PartitionCmd) and cmd.def_.name is not None:
                out.append(_obj("describe", "pg_class", _rel(_rangevar(cmd.def_.name)), recurse=True))
    elif isinstance(stmt, ast.RenameStmt):
        if stmt.relation is not None:
            out.append(_obj("describe", "pg_class", _rel(_rangevar(stmt.relation))))
        elif stmt.renameType == _OT.OBJECT_SCHEMA and stmt.subname:
            out.append(_object_target("describe", _OT.OBJECT_SCHEMA, stmt.subname) or "NULL")
        elif stmt.object is not None:
            kind_of = stmt.renameType if stmt.renameType != _OT.OBJECT_DOMCONSTRAINT else _OT.OBJECT_DOMCONSTRAINT
            t = _object_target("describe", kind_of, stmt.object)
            if t is not None:
                out.append(t)
    elif isinstance(stmt, ast.AlterObjectSchemaStmt | ast.AlterOwnerStmt):
        obj = stmt.relation if getattr(stmt, "relation", None) is not None else stmt.object
        t = _object_target("describe", stmt.objectType, obj)
        if t is not None:
            out.append(t)
    elif isinstance(stmt, ast.CommentStmt | ast.SecLabelStmt):
        t = _object_target("describe", stmt.objtype, stmt.object)
        if t is not None:
            out.append(t)
    elif isinstance(stmt, ast.GrantStmt):
        out += _grant_targets(stmt)
    elif isinstance(stmt, ast.AlterDefaultPrivilegesStmt):
        out += _defacl_targets(stmt)
    elif isinstance(stmt, ast.ViewStmt) and stmt.view is not None:
        out.append(_obj("describe", "pg_class", _rel(_rangevar(stmt.view))))
    elif isinstance(stmt, ast.CreateFunctionStmt):
        params = [p for p in stmt.parameters or () if isinstance(p, ast.FunctionParameter)
                  and p.mode not in (enums.FunctionParameterMode.FUNC_PARAM_OUT,
                                     enums.FunctionParameterMode.FUNC_PARAM_TABLE)]
        sig = f"{_qualified(_names(stmt.funcname or ()))}({', '.join(_typename(p.argType) for p in params)})"
        out.append(_obj("describe", "pg_proc", f"pg_catalog.to_regprocedure({literal(sig)})::pg_catalog.oid"))
    elif isinstance(stmt, ast.CreateTrigStmt | ast.RuleStmt | ast.CreatePolicyStmt | ast.AlterPolicyStmt
                    | ast.IndexStmt) and getattr(stmt, "relation", None) is not None:
        out.append(_obj("describe", "pg_class", _rel(_rangevar(stmt.relation)), recurse=True))
    elif isinstance(stmt, ast.CreateStatsStmt):
        for r in stmt.relations or ():
            if isinstance(r, ast.RangeVar):
                out.append(_obj("describe", "pg_class", _rel(_rangevar(r))))
    elif isinstance(stmt, ast.TruncateStmt):
        if not stmt.restart_seqs:
            return None  # the BEFORE TRUNCATE trigger keeps the rows; nothing else changes
        kind = "truncate_restart"
        for rv in stmt.relations or ():
            out.append(_on_rel("restart_identity", _rel(_rangevar(rv)), cascade=stmt.behavior == _CASCADE))
    elif isinstance(stmt, ast.RefreshMatViewStmt) and stmt.relation is not None:
        out.append(_on_rel("matview", _rel(_rangevar(stmt.relation))))
    elif isinstance(stmt, ast.AlterSeqStmt) and stmt.sequence is not None:
        rel = _rel(_rangevar(stmt.sequence))
        out.append(_obj("describe", "pg_class", rel))
        out.append(f"pg_catalog.jsonb_build_object('op', 'sequence', 'obj', {rel})")
    elif isinstance(stmt, ast.AlterEnumStmt | ast.AlterDomainStmt):
        names = stmt.typeName
        t = _type(names)
        if t is not None:
            out.append(_obj("describe", "pg_type", t))
    elif isinstance(stmt, ast.AlterFunctionStmt) and stmt.func is not None:
        out.append(_obj("describe", "pg_proc", _function(stmt.func)))
    elif isinstance(stmt, ast.DropOwnedStmt):
        for role in stmt.roles or ():
            name = getattr(role, "rolename", None)
            if name:
                out.append(f"pg_catalog.jsonb_build_object('op', 'acl_of_role', 'role', "
                           f"pg_catalog.to_regrole({literal(_ident(name))})::pg_catalog.oid)")
    return kind, out


def _grant_targets(stmt: ast.GrantStmt) -> list[str]:
    out: list[str] = []
    if stmt.targtype == enums.GrantTargetType.ACL_TARGET_ALL_IN_SCHEMA:
        for s in stmt.objects or ():
            if isinstance(s, ast.String):
                out.append(f"pg_catalog.jsonb_build_object('op', 'in_schema', 'schema', pg_catalog.to_regnamespace("
                           f"{literal(_ident(s.sval))})::pg_catalog.oid, 'objtype', "
                           f"{literal(_DEFACL.get(stmt.objtype, 'r'))})")
        return out
    for obj in stmt.objects or ():
        objtype = stmt.objtype
        if objtype == _OT.OBJECT_TABLE and isinstance(obj, ast.RangeVar):
            out.append(_obj("describe", "pg_class", _rel(_rangevar(obj))))
            continue
        t = _object_target("describe", objtype, obj)
        if t is not None:
            out.append(t)
    return out


def _defacl_targets(stmt: ast.AlterDefaultPrivilegesStmt) -> list[str]:
    roles: list[str] = []
    schemas: list[str] = []
    for opt in stmt.options or ():
        if not isinstance(opt, ast.DefElem):
            continue
        if opt.defname == "roles":
            roles += [r.rolename for r in opt.arg or () if getattr(r, "rolename", None)]
        elif opt.defname == "schemas":
            schemas += _names(opt.arg or ())
    action = stmt.action
    objtype = _DEFACL.get(action.objtype) if action is not None else None
    if objtype is None:
        return []
    role_sql = [f"pg_catalog.to_regrole({literal(_ident(r))})::pg_catalog.oid" for r in roles] or ["NULL"]
    schema_sql = [f"pg_catalog.to_regnamespace({literal(_ident(s))})::pg_catalog.oid" for s in schemas] or ["0"]
    return [f"pg_catalog.jsonb_build_object('op', 'defacl', 'role', {r}, 'schema', {s}, 'objtype', '{objtype}')"
            for r in role_sql for s in schema_sql]


@functools.lru_cache(maxsize=2048)
def _parse(statement: str) -> ast.Node | None:
    try:
        parsed = pglast.parse_sql(statement)
    except pglast.parser.ParseError:
        return None
    if len(parsed) != 1 or not isinstance(parsed[0], ast.RawStmt):
        return None
    return parsed[0].stmt


def _role_names(node: object, out: set[str]) -> None:
    if isinstance(node, dict):
        if node.get("@") == "RoleSpec" and node.get("rolename"):
            out.add(str(node["rolename"]))
        for v in node.values():
            _role_names(v, out)
    elif isinstance(node, list | tuple):
        for v in node:
            _role_names(v, out)


@functools.lru_cache(maxsize=2048)
def roles_named(sql: str) -> frozenset[str]:
    """Roles a statement names (GRANT ... TO, OWNER TO, policies' TO, DEFAULT PRIVILEGES FOR)."""
    try:
        parsed = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return frozenset()
    out: set[str] = set()
    for raw in parsed:
        _role_names(raw.stmt(skip_none=True), out)
    return frozenset(out)


def is_ddl(statement: str) -> bool:
    stmt = _parse(statement)
    return stmt is not None and targets(stmt) is not None


def before_ddl_sql(statement: str, limits: Limits | None = None) -> str | None:
    """The call that keeps the state `statement` changes, or None when it is not DDL (or does not
    parse: PostgreSQL will refuse it too)."""
    stmt = _parse(statement)
    if stmt is None:
        return None
    found = targets(stmt)
    if found is None:
        return None
    kind, exprs = found
    limits = limits or Limits()
    info = (f"pg_catalog.jsonb_build_object('statement', {literal(statement)}, 'kind', {literal(kind)}, "
            f"'search_path', pg_catalog.current_setting('search_path'), 'limit_rows', {int(limits.rows)}, "
            f"'limit_bytes', {int(limits.bytes)})")
    return f"SELECT dbproxy.before_ddl({info}, pg_catalog.jsonb_build_array({', '.join(exprs)}))"


def prepared(sql: str, limits: Limits | None = None) -> list[str]:
    """The statements of a query string, each DDL statement preceded by its `before_ddl` call."""
    out: list[str] = []
    for statement in split_statements(sql):
        call = before_ddl_sql(statement, limits)
        if call is not None:
            out.append(call)
        out.append(statement)
    return out


def describe(statement: str) -> str:
    """The targets of a statement as JSON-ish text, for debugging and tests."""
    found = targets(s) if (s := _parse(statement)) is not None else None
    return json.dumps(found)

"""What a statement does, as operation classes on objects: the vocabulary of the proxy's rules.

`actions(sql)` reads PostgreSQL's own parse tree (`pglast`) and returns `Action(op, object)` pairs:

    read        tables and views a statement reads (FROM, JOIN, subqueries, COPY ... TO)
    insert      INSERT (and MERGE ... INSERT) targets
    update      UPDATE, ON CONFLICT DO UPDATE, MERGE ... UPDATE targets, rows locked FOR UPDATE/SHARE, LOCK
    delete      DELETE (and MERGE ... DELETE) targets
    truncate    TRUNCATE targets
    ddl-create  CREATE of tables, views, sequences, functions, types, schemas, ...; indexes, triggers,
                rules and policies count on the table they are made on
    ddl-alter   ALTER, RENAME, COMMENT, REFRESH MATERIALIZED VIEW, maintenance (VACUUM, CLUSTER, ...)
    ddl-drop    DROP of anything
    privilege   GRANT/REVOKE (on objects; of roles: refused anyway)
    function    calls of functions that are not known read-only built-ins, CALL, DO, and anything
                that could not be parsed (conservatively: code whose effects are known only after running)
    notify      NOTIFY and pg_notify()
    copy-in     COPY ... FROM

Objects are names as the statement spells them, folded like PostgreSQL folds them:
`schema.name` when qualified, else `name` (the caller decides what an unqualified name means;
the proxy takes it as `public.name`). Statements with no effect on objects (SET, SHOW,
transaction control) have no actions. Pure: no I/O, cached by text.

`captured_actions(changes, tables)` says the same of what capture saw a transaction do (row
changes by table, cascades and trigger writes included, with row counts; DDL events), which is
what a rule's `max_rows` counts and what finds writes hidden in functions.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pglast import ast, parse_sql
from pglast.enums import CmdType, ObjectType
from pglast.parser import ParseError
from pglast.visitors import Ancestor, Visitor

from inverse.classify import _READ_ONLY_FUNCTIONS
from inverse.images import Change, TableInfo
from inverse.lexer import number_shape

OP_CLASSES = ("read", "insert", "update", "delete", "truncate", "ddl-create", "ddl-alter", "ddl-drop", "privilege",
              "function", "notify", "copy-in")
#: The classes a transaction can have only by writing (everything but `read`).
WRITES = frozenset(OP_CLASSES) - {"read"}


@dataclass(frozen=True, order=True)
class Action:
    op: str
    object: str  # "" when there is no object to name (DO, NOTIFY of a computed channel, unparsable SQL)

    def __str__(self) -> str:
        return f"{self.op} {self.object}" if self.object else self.op


UNKNOWN = frozenset({Action("function", "")})


@functools.lru_cache(maxsize=8192)
def actions(sql: str) -> frozenset[Action]:
    """The operation classes and objects of every statement in `sql`. Agents repeat statements that
    differ only in numbers (`... WHERE id = 17`), which never change what a statement does to which
    object: those are parsed once per shape (`number_shape`)."""
    shape = number_shape(sql)
    if shape is None:
        return _parsed_actions(sql)
    found = _by_shape.get(shape)
    if found is None:
        found = _by_shape[shape] = _parsed_actions(sql)
        if len(_by_shape) > 8192:
            _by_shape.pop(next(iter(_by_shape)))
    return found


_by_shape: dict[str, frozenset[Action]] = {}


def _parsed_actions(sql: str) -> frozenset[Action]:
    try:
        statements = parse_sql(sql)
    except ParseError:
        return UNKNOWN
    found: set[Action] = set()
    for raw in statements:
        _Walker(found)(raw.stmt)
    return frozenset(found)


def _name(rv: ast.RangeVar) -> str:
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname else (rv.relname or "")


def _dotted(parts: object) -> str:
    """A qualified name given as a list of String nodes (DROP, COMMENT, functions)."""
    names = []
    for p in parts if isinstance(parts, list | tuple) else (parts,):
        if isinstance(p, ast.String):
            names.append(p.sval)
        elif isinstance(p, ast.ObjectWithArgs):
            names.append(_dotted(p.objname))
        elif isinstance(p, ast.TypeName):
            names.append(_dotted(p.names))
        elif isinstance(p, str):
            names.append(p)
    return ".".join(n for n in names if n)


#: Where a RangeVar is written, by (parent node type, attribute): everything else is read.
_WRITE_TARGETS: dict[tuple[type, str], str] = {
    (ast.InsertStmt, "relation"): "insert",
    (ast.UpdateStmt, "relation"): "update",
    (ast.DeleteStmt, "relation"): "delete",
    (ast.TruncateStmt, "relations"): "truncate",
    (ast.LockStmt, "relations"): "update",
    (ast.CreateStmt, "relation"): "ddl-create",
    (ast.IntoClause, "rel"): "ddl-create",  # CREATE TABLE AS, SELECT INTO
    (ast.ViewStmt, "view"): "ddl-create",
    (ast.CreateSeqStmt, "sequence"): "ddl-create",
    (ast.IndexStmt, "relation"): "ddl-create",
    (ast.CreateTrigStmt, "relation"): "ddl-create",
    (ast.RuleStmt, "relation"): "ddl-create",
    (ast.CreatePolicyStmt, "table"): "ddl-create",
    (ast.CreateStatsStmt, "relations"): "ddl-create",
    (ast.AlterTableStmt, "relation"): "ddl-alter",
    (ast.AlterSeqStmt, "sequence"): "ddl-alter",
    (ast.RenameStmt, "relation"): "ddl-alter",
    (ast.AlterObjectSchemaStmt, "relation"): "ddl-alter",
    (ast.RefreshMatViewStmt, "relation"): "ddl-alter",
    (ast.ClusterStmt, "relation"): "ddl-alter",
    (ast.ReindexStmt, "relation"): "ddl-alter",
    (ast.VacuumRelation, "relation"): "ddl-alter",
    (ast.AlterPolicyStmt, "table"): "ddl-alter",
    (ast.GrantStmt, "objects"): "privilege",
    (ast.CompositeTypeStmt, "typevar"): "ddl-create",
}
#: RangeVars a statement's own visitor accounts for.
_HANDLED = frozenset({(ast.MergeStmt, "relation"), (ast.CopyStmt, "relation")})
_CREATES = (ast.CreateFunctionStmt, ast.CompositeTypeStmt, ast.CreateEnumStmt, ast.CreateRangeStmt,
            ast.CreateDomainStmt, ast.DefineStmt, ast.CreateSchemaStmt, ast.CreateExtensionStmt,
            ast.CreateCastStmt, ast.CreateConversionStmt, ast.CreateOpClassStmt, ast.CreateOpFamilyStmt,
            ast.CreateEventTrigStmt, ast.CreatePLangStmt, ast.CreateForeignServerStmt, ast.CreateFdwStmt,
            ast.CreateForeignTableStmt, ast.CreatePublicationStmt, ast.CreateSubscriptionStmt,
            ast.CreateTableSpaceStmt, ast.CreatedbStmt, ast.CreateUserMappingStmt, ast.CreateTransformStmt,
            ast.CreateAmStmt, ast.CreateRoleStmt)
_ALTERS = (ast.AlterFunctionStmt, ast.AlterEnumStmt, ast.AlterDomainStmt, ast.AlterTypeStmt, ast.CommentStmt,
           ast.AlterOwnerStmt, ast.AlterExtensionStmt, ast.AlterExtensionContentsStmt, ast.AlterStatsStmt,
           ast.AlterDefaultPrivilegesStmt, ast.SecLabelStmt, ast.AlterTSDictionaryStmt,
           ast.AlterTSConfigurationStmt, ast.AlterCollationStmt, ast.AlterDatabaseStmt,
           ast.AlterDatabaseSetStmt, ast.AlterRoleStmt, ast.AlterRoleSetStmt, ast.AlterEventTrigStmt,
           ast.AlterForeignServerStmt, ast.AlterFdwStmt, ast.AlterPublicationStmt, ast.AlterSubscriptionStmt,
           ast.AlterUserMappingStmt, ast.AlterTableSpaceOptionsStmt, ast.AlterOperatorStmt,
           ast.AlterObjectDependsStmt, ast.ImportForeignSchemaStmt, ast.CheckPointStmt, ast.AlterSystemStmt,
           ast.LoadStmt)


class _Walker(Visitor):  # type: ignore[misc]
    def __init__(self, found: set[Action]) -> None:
        super().__init__()
        self.found = found
        self.ctes: set[str] = set()

    def add(self, op: str, obj: str = "") -> None:
        self.found.add(Action(op, obj))

    # -- statements whose main object is not a RangeVar -----------------------------------------

    def visit_WithClause(self, ancestors: Ancestor, node: ast.WithClause) -> None:
        for cte in node.ctes or ():
            if isinstance(cte, ast.CommonTableExpr) and cte.ctename:
                self.ctes.add(cte.ctename)

    def visit_CreateFunctionStmt(self, ancestors: Ancestor, node: ast.CreateFunctionStmt) -> None:
        self.add("ddl-create", _dotted(node.funcname))

    def visit_DropStmt(self, ancestors: Ancestor, node: ast.DropStmt) -> None:
        for obj in node.objects or ():
            self.add("ddl-drop", _dotted(obj))

    def visit_CreateSchemaStmt(self, ancestors: Ancestor, node: ast.CreateSchemaStmt) -> None:
        self.add("ddl-create", node.schemaname or "")

    def visit_RenameStmt(self, ancestors: Ancestor, node: ast.RenameStmt) -> None:
        if node.relation is None:
            self.add("ddl-alter", _dotted(node.object) if node.object is not None else (node.subname or ""))

    def visit_AlterObjectSchemaStmt(self, ancestors: Ancestor, node: ast.AlterObjectSchemaStmt) -> None:
        if node.relation is None and node.object is not None:
            self.add("ddl-alter", _dotted(node.object))

    def visit_CommentStmt(self, ancestors: Ancestor, node: ast.CommentStmt) -> None:
        self.add("ddl-alter", _dotted(node.object) if node.object is not None else "")

    def visit_GrantStmt(self, ancestors: Ancestor, node: ast.GrantStmt) -> None:
        for obj in node.objects or ():
            if not isinstance(obj, ast.RangeVar):  # tables come as RangeVars (see _WRITE_TARGETS)
                self.add("privilege", _dotted(obj) if not isinstance(obj, ast.String) else obj.sval)
        if not node.objects:
            self.add("privilege", "")

    def visit_GrantRoleStmt(self, ancestors: Ancestor, node: ast.GrantRoleStmt) -> None:
        self.add("privilege", "")

    def visit_CopyStmt(self, ancestors: Ancestor, node: ast.CopyStmt) -> None:
        if node.relation is not None:
            self.add("copy-in" if node.is_from else "read", _name(node.relation))

    def visit_MergeStmt(self, ancestors: Ancestor, node: ast.MergeStmt) -> None:
        target = _name(node.relation) if node.relation is not None else ""
        for when in node.mergeWhenClauses or ():
            kind = getattr(when, "commandType", None)
            if kind == CmdType.CMD_INSERT:
                self.add("insert", target)
            elif kind == CmdType.CMD_UPDATE:
                self.add("update", target)
            elif kind == CmdType.CMD_DELETE:
                self.add("delete", target)

    def visit_InsertStmt(self, ancestors: Ancestor, node: ast.InsertStmt) -> None:
        clause = node.onConflictClause
        if clause is not None and node.relation is not None and getattr(clause, "targetList", None):
            self.add("update", _name(node.relation))  # ON CONFLICT DO UPDATE

    def visit_SelectStmt(self, ancestors: Ancestor, node: ast.SelectStmt) -> None:
        if node.lockingClause:
            for rel in _from_relations(node.fromClause):
                self.add("update", rel)  # FOR UPDATE/SHARE marks the rows

    def visit_NotifyStmt(self, ancestors: Ancestor, node: ast.NotifyStmt) -> None:
        self.add("notify", node.conditionname or "")

    def visit_DoStmt(self, ancestors: Ancestor, node: ast.DoStmt) -> None:
        self.add("function", "")

    def visit_CallStmt(self, ancestors: Ancestor, node: ast.CallStmt) -> None:
        call = node.funccall
        self.add("function", _dotted(call.funcname) if call is not None else "")

    def visit_FuncCall(self, ancestors: Ancestor, node: ast.FuncCall) -> None:
        if isinstance(ancestors.node, ast.CallStmt):
            return
        name = _dotted(node.funcname)
        bare = name.removeprefix("pg_catalog.").lower()
        if bare == "pg_notify":
            self.add("notify", "")
        elif bare not in _READ_ONLY_FUNCTIONS or "." in name.removeprefix("pg_catalog."):
            self.add("function", name)

    # -- every relation -----------------------------------------------------------------------

    def visit_RangeVar(self, ancestors: Ancestor, node: ast.RangeVar) -> None:
        name = _name(node)
        parent, member = ancestors.node, ancestors.member
        # A RangeVar in a list sits one level deeper: look through the list to its owner.
        if isinstance(parent, tuple | list) and ancestors.parent is not None:
            parent, member = ancestors.parent.node, ancestors.parent.member
        if (type(parent), member) in _HANDLED:
            return
        op = _WRITE_TARGETS.get((type(parent), member)) if parent is not None else None
        if op is None and isinstance(parent, ast.ViewStmt | ast.CreateTableAsStmt):
            op = "ddl-create"
        if op is None:
            if not node.schemaname and node.relname in self.ctes:
                return  # a CTE, not a table
            op = "read"
        self.add(op, name)

    # -- everything else that changes the catalog -----------------------------------------------

    def visit(self, ancestors: Ancestor, node: ast.Node) -> None:
        if isinstance(node, _CREATES) and not isinstance(node, ast.CreateFunctionStmt | ast.CreateSchemaStmt):
            self.add("ddl-create", _object_of(node))
        elif isinstance(node, _ALTERS) and not isinstance(node, ast.CommentStmt):
            self.add("ddl-alter", _object_of(node))


def _object_of(node: ast.Node) -> str:
    for attr in ("typeName", "typevar", "defnames", "domainname", "extname", "servername", "fdwname",
                 "pubname", "subname", "tablespacename", "dbname", "trigname", "conversion_name", "opclassname",
                 "opfamilyname", "amname", "func", "object", "role"):
        value = getattr(node, attr, None)
        if value is None:
            continue
        if isinstance(value, ast.RangeVar):
            return _name(value)
        if isinstance(value, ast.RoleSpec):
            return value.rolename or ""
        if isinstance(value, str):
            return value
        return _dotted(value)
    return ""


def _from_relations(from_clause: object) -> list[str]:
    out: list[str] = []

    def walk(n: object) -> None:
        if isinstance(n, ast.RangeVar):
            out.append(_name(n))
        elif isinstance(n, ast.JoinExpr):
            walk(n.larg)
            walk(n.rarg)
        elif isinstance(n, list | tuple):
            for x in n:
                walk(x)
    walk(from_clause)
    return out


_ROW_OPS = {"I": "insert", "U": "update", "D": "delete", "T": "truncate"}


def _ddl_op(tag: str) -> str:
    tag = tag.upper()
    if tag.startswith("CREATE"):
        return "ddl-create"
    if tag.startswith("DROP"):
        return "ddl-drop"
    if tag in ("GRANT", "REVOKE"):
        return "privilege"
    return "ddl-alter"


def captured_actions(changes: Iterable[Change], tables: Mapping[int, TableInfo]) -> dict[Action, int | None]:
    """What captured changes did, as actions with the rows each changed (None for DDL)."""
    out: dict[Action, int | None] = {}
    for c in changes:
        if c.op == "X":
            d = c.ddl or {}
            if d.get("event") == "end" or d.get("event") == "drop":
                out.setdefault(Action(_ddl_op(str(d.get("tag") or "")), str(d.get("identity") or "")), None)
            continue
        info = tables.get(c.rel) if c.rel is not None else None
        name = f"{info.schema}.{info.table}" if info is not None else ""
        action = Action(_ROW_OPS.get(c.op, "update"), name)
        out[action] = (out.get(action) or 0) + 1
    return out


__all__ = ["OP_CLASSES", "UNKNOWN", "WRITES", "Action", "ObjectType", "actions", "captured_actions"]

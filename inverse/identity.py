"""Statements that change who someone is or what a role may do: agents may never run them.

`identity_change(sql)` says why a statement changes identities or privileges of roles, from
PostgreSQL's own parse tree (`pglast`), or None. What counts:

- roles: `CREATE/ALTER/DROP ROLE|USER|GROUP` (passwords, attributes, per-role settings, renames);
- role membership: `GRANT role TO ...`, `REVOKE role FROM ...`;
- ownership: `ALTER ... OWNER TO`, `REASSIGN OWNED`, `DROP OWNED`, `CREATE SCHEMA ... AUTHORIZATION`
  for another role;
- code that runs as its owner: `CREATE/ALTER FUNCTION|PROCEDURE ... SECURITY DEFINER`;
- default privileges of another role: `ALTER DEFAULT PRIVILEGES FOR ROLE other` (an agent's own
  default privileges, `own_roles`, stay allowed);
- switching identity: `SET/RESET ROLE`, `SET/RESET SESSION AUTHORIZATION`.

Table-level `GRANT/REVOKE` on objects is ordinary DDL and is not listed here. Only the statement
text is seen: the same changes inside functions or DO blocks are the proxy's server-side guard's
job (and, first of all, the agents' roles have no privilege to make them).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from pglast import ast, parse_sql
from pglast.enums import AlterTableType, ObjectType, RoleSpecType, RoleStmtType, VariableSetKind
from pglast.parser import ParseError

#: First words of the statements above: everything else is not parsed at all (the hot path).
_FIRST_WORDS = ("create", "alter", "drop", "grant", "revoke", "reassign", "set", "reset", "comment")
_ROLE_KINDS = {RoleStmtType.ROLESTMT_ROLE: "ROLE", RoleStmtType.ROLESTMT_USER: "USER",
               RoleStmtType.ROLESTMT_GROUP: "GROUP"}


def identity_change(sql: str, own_roles: Iterable[str] = ()) -> str | None:
    """Why `sql` changes identities or role privileges (a short phrase), or None."""
    head = sql.lstrip(" \t\r\n(").split(None, 1)[0].lower() if sql.strip() else ""
    if head not in _FIRST_WORDS:
        return None
    return _parsed(sql, frozenset(r.lower() for r in own_roles))


@functools.lru_cache(maxsize=4096)
def _parsed(sql: str, own: frozenset[str]) -> str | None:
    try:
        statements = parse_sql(sql)
    except ParseError:
        return None  # PostgreSQL refuses it too
    for raw in statements:
        why = _why(raw.stmt, own)
        if why is not None:
            return why
    return None


def _why(stmt: ast.Node, own: frozenset[str]) -> str | None:
    if isinstance(stmt, ast.CreateRoleStmt):
        return f"CREATE {_ROLE_KINDS.get(stmt.stmt_type, 'ROLE')} creates a database role"
    if isinstance(stmt, ast.AlterRoleStmt | ast.AlterRoleSetStmt):
        return "ALTER ROLE changes a database role"
    if isinstance(stmt, ast.DropRoleStmt):
        return "DROP ROLE removes a database role"
    if isinstance(stmt, ast.RenameStmt) and stmt.renameType == ObjectType.OBJECT_ROLE:
        return "ALTER ROLE ... RENAME renames a database role"
    if isinstance(stmt, ast.GrantRoleStmt):
        return f"{'GRANT' if stmt.is_grant else 'REVOKE'} of role membership changes what roles may do"
    if isinstance(stmt, ast.AlterOwnerStmt):
        return "ALTER ... OWNER TO gives an object to another role"
    if isinstance(stmt, ast.AlterTableStmt):
        for cmd in stmt.cmds or ():
            if isinstance(cmd, ast.AlterTableCmd) and cmd.subtype == AlterTableType.AT_ChangeOwner:
                return "ALTER ... OWNER TO gives an object to another role"
    if isinstance(stmt, ast.ReassignOwnedStmt):
        return "REASSIGN OWNED gives objects to another role"
    if isinstance(stmt, ast.DropOwnedStmt):
        return "DROP OWNED removes every object a role owns and its privileges"
    if isinstance(stmt, ast.CreateSchemaStmt) and stmt.authrole is not None and not _is_own(stmt.authrole, own):
        return "CREATE SCHEMA ... AUTHORIZATION makes another role its owner"
    if isinstance(stmt, ast.CreateFunctionStmt) and _security_definer(stmt.options):
        return "SECURITY DEFINER makes the function run with its owner's privileges"
    if isinstance(stmt, ast.AlterFunctionStmt) and _security_definer(stmt.actions):
        return "SECURITY DEFINER makes the function run with its owner's privileges"
    if isinstance(stmt, ast.AlterDefaultPrivilegesStmt):
        for opt in stmt.options or ():
            if isinstance(opt, ast.DefElem) and opt.defname == "roles":
                others = [r for r in opt.arg or () if not _is_own(r, own)]
                if others:
                    return "ALTER DEFAULT PRIVILEGES FOR ROLE changes the default privileges of another role"
    if isinstance(stmt, ast.VariableSetStmt) and (stmt.name or "").lower() in ("role", "session_authorization"):
        verb = "SET" if stmt.kind in (VariableSetKind.VAR_SET_VALUE, VariableSetKind.VAR_SET_CURRENT,
                                      VariableSetKind.VAR_SET_DEFAULT) else "RESET"
        what = "ROLE" if stmt.name.lower() == "role" else "SESSION AUTHORIZATION"
        return f"{verb} {what} changes the identity the agent acts as"
    return None


def _security_definer(options: Iterable[object] | None) -> bool:
    for opt in options or ():
        if isinstance(opt, ast.DefElem) and opt.defname == "security":
            arg = opt.arg
            return bool(getattr(arg, "boolval", getattr(arg, "ival", False)))
    return False


def _is_own(spec: object, own: frozenset[str]) -> bool:
    if not isinstance(spec, ast.RoleSpec):
        return False
    if spec.roletype in (RoleSpecType.ROLESPEC_CURRENT_USER, RoleSpecType.ROLESPEC_CURRENT_ROLE):
        return True
    return (spec.rolename or "").lower() in own

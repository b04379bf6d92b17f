"""Each agent's own upstream role, and the line between the agents and the proxy's state.

Agents never act as the proxy's upstream role (the role of the `upstream` URL, which owns the
journal, the capture log and the undo records). Each agent logs in as a login role of its own,
`dbproxy_agent_<name>` by default (`[agents.NAME] upstream_role` to name it), created and managed
by the proxy: `LOGIN NOINHERIT`, a member of the agents' common role (`agent_role`, default
`dbproxy_agents`, `NOLOGIN`), which holds the table privileges. Sessions start with `role` set to
that common role, so everything agents create is owned by it and shared between them as before,
while `pg_stat_activity`, `pg_cancel_backend` and `pg_terminate_backend` (which go by the session's
login role) do not cross agents.

The login roles' passwords are never stored: each is derived from a key in the data directory
(`upstream-roles.key`, owner-only) with HMAC-SHA-256, so proxies that share the key agree, and
`provision` sets it again at every start (an agent that changed its own password gains nothing
after the next start, and the proxy repairs a login that fails).

`boundary_problems` lists why the agents' roles could reach the proxy's state or each other's
sessions: superuser, membership in the proxy's role or in predefined roles that read all data or
signal backends, privileges on or ownership of anything in the `dbproxy` schema. `serve` refuses to
start while there is any, naming the privilege.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

import asyncpg

DEFAULT_GROUP = "dbproxy_agents"
LOGIN_PREFIX = "dbproxy_agent_"
KEY_FILE = "upstream-roles.key"
#: Predefined roles an agents' role must not be a member of, and why.
FORBIDDEN_MEMBERSHIPS = {
    "pg_read_all_data": "reads every table, the proxy's journal included",
    "pg_write_all_data": "writes every table, the proxy's journal included",
    "pg_signal_backend": "may cancel or terminate other agents' sessions",
    "pg_read_all_stats": "sees other agents' statements in pg_stat_activity",
    "pg_monitor": "sees other agents' statements in pg_stat_activity",
    "pg_execute_server_program": "runs programs on the database server (COPY ... PROGRAM)",
    "pg_read_server_files": "reads files on the database server",
    "pg_write_server_files": "writes files on the database server",
}


class RoleError(Exception):
    """The agents' roles cannot be set up, or could reach the proxy's state."""


def login_role(agent: str, configured: str | None = None) -> str:
    """The upstream login role of `agent`: its configured `upstream_role`, else dbproxy_agent_<name>
    with the name folded to what needs no quoting (PostgreSQL names are at most 63 bytes)."""
    if configured:
        return configured
    folded = re.sub(r"[^a-z0-9_]", "_", agent.lower())
    name = LOGIN_PREFIX + folded
    if name != LOGIN_PREFIX + agent or len(name.encode()) > 63:
        # Folding made names collide-able (or it is too long): keep them apart with a short hash.
        digest = hashlib.sha256(agent.encode()).hexdigest()[:8]
        name = (LOGIN_PREFIX + folded)[:54] + "_" + digest
    return name


def load_key(data_dir: Path) -> bytes:
    """The HMAC key passwords are derived from, created (mode 0600) at the first start."""
    path = Path(data_dir) / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


def password_for(key: bytes, role: str) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, role.encode(), hashlib.sha256).digest()).decode().rstrip("=")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def provision(con: asyncpg.Connection, *, group: str, logins: Iterable[str], key: bytes) -> list[str]:
    """Create or repair the agents' common role and login roles through `con` (the proxy's own
    role, which needs CREATEROLE). Returns what it did, as lines for the log."""
    done: list[str] = []
    g = quote_ident(group)
    exists = await con.fetchval("SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = $1", group)
    try:
        if exists is None:
            await con.execute(f"CREATE ROLE {g} NOLOGIN NOINHERIT")
            done.append(f"created role {group}")
        elif exists:
            # An earlier dbproxy logged in as it: it is only a group now.
            await con.execute(f"ALTER ROLE {g} NOLOGIN")
            done.append(f"role {group} may no longer log in")
        me, superuser, version = await con.fetchrow(
            "SELECT current_user, rolsuper, pg_catalog.current_setting('server_version_num')::int "
            "FROM pg_catalog.pg_roles WHERE rolname = current_user")
        member = "SET" if version >= 160000 else "MEMBER"
        if not superuser and not await con.fetchval(f"SELECT pg_catalog.pg_has_role(current_user, $1, '{member}')",
                                                    group):
            # To run undo with the agents' privileges (never its own), the proxy must be able to
            # SET ROLE to the agents' role; it need not inherit its privileges.
            grant = f"GRANT {g} TO {quote_ident(me)}"
            await con.execute(grant + (" WITH INHERIT FALSE, SET TRUE" if version >= 160000 else ""))
        for role in logins:
            r = quote_ident(role)
            password = _literal(password_for(key, role))
            if await con.fetchval("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1", role) is None:
                await con.execute(f"CREATE ROLE {r} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
                                  f"NOREPLICATION NOBYPASSRLS PASSWORD {password}")
                done.append(f"created login role {role}")
            else:
                await con.execute(f"ALTER ROLE {r} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
                                  f"NOREPLICATION NOBYPASSRLS PASSWORD {password}")
                # Per-role settings an agent may have left for its own next sessions.
                await con.execute(f"ALTER ROLE {r} RESET ALL")
            if not await con.fetchval(f"SELECT pg_catalog.pg_has_role($1, $2, '{member}')", role, group):
                await con.execute(f"GRANT {g} TO {r}")
    except asyncpg.InsufficientPrivilegeError as e:
        who = await con.fetchval("SELECT current_user")
        raise RoleError(
            f"the upstream role {who} cannot set up the agents' roles ({e}): it needs CREATEROLE (and ADMIN "
            f"OPTION on {group} if someone else created it), or create {group} and the dbproxy_agent_* login "
            "roles yourself and let it manage them") from None
    return done


async def repair(con: asyncpg.Connection, role: str, key: bytes) -> None:
    """Set a login role's password again (it failed to log in: someone changed it)."""
    await con.execute(f"ALTER ROLE {quote_ident(role)} PASSWORD {_literal(password_for(key, role))}")


#: For one role ($1): each object in the dbproxy schema it owns (or has the owner's privileges
#: of) or has any privilege on.
_STATE_REACH = """
SELECT c.relname,
       pg_catalog.pg_has_role($1, c.relowner, 'MEMBER') AS owner,
       pg_catalog.array_remove(ARRAY[
           CASE WHEN c.relkind = 'S' THEN
               CASE WHEN pg_catalog.has_sequence_privilege($1, c.oid, 'SELECT,UPDATE,USAGE')
                    THEN 'SELECT/UPDATE/USAGE' END
           ELSE CASE WHEN pg_catalog.has_table_privilege($1, c.oid, 'SELECT') THEN 'SELECT' END END,
           CASE WHEN c.relkind <> 'S' AND pg_catalog.has_table_privilege($1, c.oid, 'INSERT') THEN 'INSERT' END,
           CASE WHEN c.relkind <> 'S' AND pg_catalog.has_table_privilege($1, c.oid, 'UPDATE') THEN 'UPDATE' END,
           CASE WHEN c.relkind <> 'S' AND pg_catalog.has_table_privilege($1, c.oid, 'DELETE') THEN 'DELETE' END,
           CASE WHEN c.relkind <> 'S' AND pg_catalog.has_table_privilege($1, c.oid, 'TRUNCATE') THEN 'TRUNCATE' END,
           CASE WHEN c.relkind <> 'S' AND pg_catalog.has_table_privilege($1, c.oid, 'REFERENCES,TRIGGER')
                THEN 'REFERENCES/TRIGGER' END], NULL) AS granted
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'dbproxy' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
ORDER BY c.relname
"""


async def lock_down(con: asyncpg.Connection, roles: Iterable[str]) -> None:
    """Take from `roles` and PUBLIC whatever they were granted on the proxy's state in this
    database (default privileges of the creating role can hand them table privileges the moment
    the journal is created). Only the state's owner can; what it cannot take away,
    `boundary_problems` reports."""
    if await con.fetchval("SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'dbproxy'") is None:
        return
    grantees = ", ".join(["PUBLIC", *(quote_ident(r) for r in roles)])
    for sql in (f"REVOKE ALL ON ALL TABLES IN SCHEMA dbproxy FROM {grantees}",
                f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA dbproxy FROM {grantees}",
                f"REVOKE CREATE ON SCHEMA dbproxy FROM {grantees}"):
        try:
            async with con.transaction():
                await con.execute(sql)
        except (asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedObjectError):
            pass  # not the owner of all of it: the check says what is left


async def boundary_problems(con: asyncpg.Connection, roles: Iterable[str], *,
                            proxy_role: str | None = None) -> list[str]:
    """Why `roles` (the agents' common role and login roles) could reach the proxy's state in the
    database `con` is connected to, or other agents' sessions. Empty when they cannot."""
    problems: list[str] = []
    proxy_role = proxy_role or await con.fetchval("SELECT current_user")
    schema = await con.fetchval("SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'dbproxy'")
    for role in roles:
        row = await con.fetchrow("SELECT rolsuper, rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = $1", role)
        if row is None:
            continue
        if row["rolsuper"]:
            problems.append(f"role {role} is a superuser")
            continue
        if row["rolcreaterole"]:
            problems.append(f"role {role} has CREATEROLE (it could make itself other roles)")
        if role == proxy_role or await con.fetchval("SELECT pg_catalog.pg_has_role($1, $2, 'MEMBER')", role,
                                                     proxy_role):
            problems.append(f"role {role} is (a member of) the proxy's own role {proxy_role}, which owns the proxy's "
                            "state (agents need a role of their own; REVOKE the membership)")
        for predefined, why in FORBIDDEN_MEMBERSHIPS.items():
            if await con.fetchval("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $2) AND "
                                  "pg_catalog.pg_has_role($1, $2, 'MEMBER')", role, predefined):
                problems.append(f"role {role} is a member of {predefined}, which {why}")
        if schema is None:
            continue
        if await con.fetchval("SELECT pg_catalog.has_schema_privilege($1, 'dbproxy', 'CREATE')", role):
            problems.append(f"role {role} may CREATE in schema dbproxy (REVOKE CREATE ON SCHEMA dbproxy FROM ...)")
        for name, owner, granted in await con.fetch(_STATE_REACH, role):
            if owner:
                problems.append(f"role {role} owns (or has the privileges of the owner of) dbproxy.{name}")
            elif granted:
                problems.append(f"role {role} has {', '.join(granted)} on dbproxy.{name}")
    return problems


def login_roles(agents: Mapping[str, str | None]) -> dict[str, str]:
    """Agent name -> login role, for agents with their configured `upstream_role` (or None)."""
    return {name: login_role(name, configured) for name, configured in agents.items()}

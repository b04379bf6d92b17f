"""Who runs what in a sandbox: model-proposed and agent SQL never runs as a superuser.

A sandbox server's admin role (the local cluster's superuser, the container's, or the one in
`sandbox_server`) creates the schema copies. The SQL under test (the agent's statements replayed,
and the inverse, which a model may have written) runs on connections that *log in* as
`RUNNER`, an ordinary role: no superuser, no `pg_read_server_files`, `pg_write_server_files` or
`pg_execute_server_program`, so `pg_read_file`, `COPY ... TO PROGRAM`, `lo_export` and friends
fail with PostgreSQL's own "permission denied". Logging in as the runner (rather than `SET ROLE`
on a superuser's connection) matters: `RESET ROLE` or `SET SESSION AUTHORIZATION` inside the SQL
cannot climb back, because the session user itself is unprivileged.

For the runner to do everything a verification needs without more privilege:

- schema copies are loaded as `LOADER` (a superuser role nobody logs in as: event triggers and
  untrusted-language functions need one) and then handed to the runner with `REASSIGN OWNED`, so
  the runner owns every table, sequence and function of the copy (loading rows, quieting
  triggers and DDL in the forward or the inverse all need ownership), and the database itself;
  event triggers stay with the admin (PostgreSQL requires a superuser owner);
- `session_replication_role` (superuser-only to set) is set through
  `HELPER_SCHEMA.replication_role(boolean)`, a SECURITY DEFINER function owned by the admin
  that sets only that one setting, for the current transaction;
- `temp_file_limit` (also superuser-only) is the runner's role default, so the SQL under test
  cannot raise it.

An admin role that is not a superuser (a `sandbox_server` URL with CREATEDB only) cannot create
roles: then everything runs as that role, as before, and `prepare` returns None.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import asyncpg

RUNNER = "dbproxy_sandbox_runner"
LOADER = "dbproxy_sandbox_loader"
HELPER_SCHEMA = "dbproxy_sandbox"
#: Limits the runner cannot change (superuser-only settings), as its role defaults.
ROLE_LIMITS = {"temp_file_limit": "1GB"}


@dataclass(frozen=True)
class Runner:
    name: str
    password: str


def runner_password(secret: str) -> str:
    """Derived from the admin's own password: every proxy that shares a sandbox server (and the
    same proxy after a restart) arrives at the same one, and no file has to keep it."""
    return hmac.new(secret.encode(), b"dbproxy sandbox runner", hashlib.sha256).hexdigest()[:32]


async def prepare(admin: asyncpg.Connection, secret: str) -> Runner | None:
    """Create or refresh the runner and loader roles (idempotent); None when the admin role is
    not a superuser and so cannot."""
    if not await admin.fetchval("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"):
        return None
    password = runner_password(secret)
    limits = "; ".join(f"ALTER ROLE {RUNNER} SET {k} = '{v}'" for k, v in ROLE_LIMITS.items())
    async with admin.transaction():
        # Several proxies may share a sandbox server: one at a time (roles are cluster-wide, and
        # concurrent ALTER ROLE of the same role fails).
        await admin.execute("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('dbproxy sandbox roles'))")
        await _create(admin, password, limits)
    return Runner(RUNNER, password)


async def _create(admin: asyncpg.Connection, password: str, limits: str) -> None:
    # Role DDL takes no bind parameters; the password is hex, the names are ours.
    await admin.execute(f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{RUNNER}') THEN
                CREATE ROLE {RUNNER};
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{LOADER}') THEN
                CREATE ROLE {LOADER};
            END IF;
        END $$;
        ALTER ROLE {RUNNER} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
            PASSWORD '{password}';
        ALTER ROLE {LOADER} WITH NOLOGIN SUPERUSER;
        {limits};
    """)
    # A runner that was granted more by someone loses it: it must be exactly an ordinary role.
    granted = await admin.fetch("SELECT r.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles r "
                                "ON r.oid = m.roleid WHERE m.member = $1::regrole", RUNNER)
    for (role,) in granted:
        await admin.execute(f'REVOKE "{role}" FROM {RUNNER}')


async def adopt(copy: asyncpg.Connection) -> None:
    """In a schema copy just loaded as `LOADER`, by the admin: the runner takes it over, and the
    replication-role helper is added (see the module docstring)."""
    await copy.execute(f"""
        DO $$ DECLARE e record; BEGIN
            FOR e IN SELECT evtname FROM pg_catalog.pg_event_trigger WHERE evtowner = '{LOADER}'::regrole LOOP
                EXECUTE pg_catalog.format('ALTER EVENT TRIGGER %I OWNER TO %I', e.evtname, current_user);
            END LOOP;
        END $$;
        REASSIGN OWNED BY {LOADER} TO {RUNNER};
        GRANT USAGE ON SCHEMA {HELPER_SCHEMA} TO {RUNNER};
        GRANT EXECUTE ON FUNCTION {HELPER_SCHEMA}.replication_role(boolean) TO {RUNNER};
    """)


#: Run by the admin in every new schema copy, before it is loaded. Without a runner the helper
#: runs with its creator's rights, which is what the admin could do anyway.
HELPER_SQL = f"""
CREATE SCHEMA {HELPER_SCHEMA};
CREATE FUNCTION {HELPER_SCHEMA}.replication_role(replica boolean) RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
    SELECT pg_catalog.set_config('session_replication_role', CASE WHEN replica THEN 'replica' ELSE 'origin' END, true)
$fn$;
REVOKE ALL ON FUNCTION {HELPER_SCHEMA}.replication_role(boolean) FROM PUBLIC;
"""

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
  cannot raise it;
- a foreign key an inverse adds back, which the few sampled rows may not satisfy, is added NOT
  VALID and marked valid by `HELPER_SCHEMA.validate_foreign_key(regclass, name)`, SECURITY
  DEFINER and owned by the admin: a fixed catalog update (that one flag of one foreign key of a
  table the caller owns), no text of the caller's;
- roles the replayed statements and the inverse name (owners, grantees) are made by the admin
  as NOLOGIN roles before the replay (`grant_named`), and the runner is made a member of those
  that are ordinary (NOLOGIN, no superuser, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS, no
  predefined `pg_` role, none of these through membership): as the agents' role upstream would,
  it may give an object to them. A named role it may not become (the sandbox's own superuser,
  say, which upstream may well own the tables) is never granted: the rule-made owner and
  privilege steps naming one are not run in the sandbox, and the verdict says so.

The runner is one role per sandbox server, shared by every proxy that uses the server. `prepare`
(each proxy's first use of the server) takes away only memberships that make the runner more than
an ordinary role; a membership in an ordinary role is what `grant_named` gives, and another
proxy's replay may be about to use it (taking it away failed that replay's owner changes).

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
#: Taken by whoever changes these roles or their memberships (they are cluster-wide).
_ROLES_LOCK = "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('dbproxy sandbox roles'))"


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
        await admin.execute(_ROLES_LOCK)
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
    # A runner that was granted more by someone loses it. Memberships in ordinary roles stay: they
    # are `grant_named`'s, maybe for a replay another proxy sharing this server is running now.
    for (role,) in await admin.fetch(_MORE_THAN_ORDINARY_SQL, RUNNER):
        await admin.execute(f"REVOKE {_ident(role)} FROM {RUNNER}")


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
        GRANT EXECUTE ON FUNCTION {HELPER_SCHEMA}.validate_foreign_key(regclass, name) TO {RUNNER};
    """)


#: Role `r` is ordinary (see the module docstring): one the runner may be a member of.
_ORDINARY = f"""r.rolname !~ '^pg_' AND r.rolname NOT IN ('{RUNNER}', '{LOADER}') AND NOT r.rolcanlogin
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles s
                  WHERE pg_catalog.pg_has_role(r.oid, s.oid, 'MEMBER')
                    AND (s.rolsuper OR s.rolcreaterole OR s.rolcreatedb OR s.rolreplication OR s.rolbypassrls
                         OR s.rolname ~ '^pg_' OR s.rolcanlogin))"""

#: Named roles that exist, are ordinary and of which `$2` is no member yet.
_GRANTABLE_SQL = f"""
SELECT r.rolname FROM pg_catalog.pg_roles r
WHERE r.rolname = ANY($1::text[]) AND NOT pg_catalog.pg_has_role($2, r.oid, 'MEMBER') AND {_ORDINARY}
"""

#: Roles `$1` is a direct member of that are not ordinary (which `grant_named` never gives).
_MORE_THAN_ORDINARY_SQL = f"""
SELECT r.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles r ON r.oid = m.roleid
WHERE m.member = $1::regrole AND NOT ({_ORDINARY})
"""


async def grant_named(admin: asyncpg.Connection, names: set[str], runner: str | None) -> frozenset[str]:
    """Before a replay, by the admin: make the roles in `names` that do not exist (NOLOGIN, no
    privileges), make `runner` a member of the ordinary ones (see the module docstring), and
    return those the SQL under test still cannot act as. Without a runner, the admin runs the
    SQL under test itself: nothing is granted."""
    if not names:
        return frozenset()
    ordered = sorted(names)
    missing = [n for n in ordered if not await admin.fetchval(
        "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1", n)]
    for name in missing:
        try:
            async with admin.transaction():
                await admin.execute(f"CREATE ROLE {_ident(name)} NOLOGIN")
        except asyncpg.PostgresError:
            continue  # another verification made it meanwhile, a reserved name, or no CREATEROLE
    who = runner or str(await admin.fetchval("SELECT current_user"))
    if runner is not None:
        grantable = [r[0] for r in await admin.fetch(_GRANTABLE_SQL, ordered, runner)]
        if grantable:
            async with admin.transaction():
                # Concurrent grants of the same membership fail: one verification at a time.
                await admin.execute(_ROLES_LOCK)
                for name in grantable:
                    await admin.execute(f"GRANT {_ident(name)} TO {RUNNER}")
    cannot = await admin.fetch("SELECT n FROM unnest($1::text[]) AS u(n) WHERE NOT EXISTS (SELECT 1 FROM "
                               "pg_catalog.pg_roles r WHERE r.rolname = u.n AND pg_catalog.pg_has_role($2, r.oid, "
                               "'MEMBER'))", ordered, who)
    return frozenset(r[0] for r in cannot)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


#: Run by the admin in every new schema copy, before it is loaded. Without a runner the helper
#: runs with its creator's rights, which is what the admin could do anyway.
HELPER_SQL = f"""
CREATE SCHEMA {HELPER_SCHEMA};
CREATE FUNCTION {HELPER_SCHEMA}.replication_role(replica boolean) RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
    SELECT pg_catalog.set_config('session_replication_role', CASE WHEN replica THEN 'replica' ELSE 'origin' END, true)
$fn$;
REVOKE ALL ON FUNCTION {HELPER_SCHEMA}.replication_role(boolean) FROM PUBLIC;
CREATE FUNCTION {HELPER_SCHEMA}.validate_foreign_key(rel regclass, constraint_name name) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
    UPDATE pg_catalog.pg_constraint k SET convalidated = true
    WHERE k.conrelid = rel AND k.conname = constraint_name AND k.contype = 'f'
      AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = rel
                  AND pg_catalog.pg_has_role(session_user, c.relowner, 'USAGE'))
$fn$;
REVOKE ALL ON FUNCTION {HELPER_SCHEMA}.validate_foreign_key(regclass, name) FROM PUBLIC;
"""

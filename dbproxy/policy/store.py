"""Grants and approval requests in the state database, next to the journal.

Component `policy` of the `dbproxy` schema (its own row in `dbproxy.schema_version`), owned by the
proxy's role like the journal, so agents can neither read nor change it:

- `dbproxy.grants`: every grant a reviewer gave (once, session, permanent), who, when, why, and
  its end: revoked (by whom, why), consumed (a once grant, when its transaction committed), or
  ended with its session. Permanent grants are the ones still active after a restart.
- `dbproxy.requests`: every paused statement: what would run (credentials redacted), the rule
  that asked, and how it ended (approved with which grant, rejected with the reason, expired,
  cancelled because the agent left), by whom.

Together with the journal's transactions (whose `decision` says which rule or grant decided each
one) this is the record of everything the policy did.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from dbproxy.journal.store import Journal
from dbproxy.policy.models import GrantRecord, RequestRecord

COMPONENT = "policy"
SCHEMA_VERSION = 1
_LOCK = 0x6462_7078_706F_6C31  # "dbpxpol1"

_DDL = """
CREATE TABLE IF NOT EXISTS dbproxy.grants (
    id bigserial PRIMARY KEY,
    agent text NOT NULL,
    ops text[] NOT NULL,
    objects text[] NOT NULL,
    scope text NOT NULL CHECK (scope IN ('once', 'session', 'permanent')),
    max_rows integer,
    session bigint,
    statements_sha256 text,
    request bigint,
    transaction bigint,
    granted_by text NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    reason text,
    expires_at timestamptz,
    revoked_at timestamptz,
    revoked_by text,
    revoke_reason text,
    consumed_at timestamptz
);
CREATE INDEX IF NOT EXISTS grants_active ON dbproxy.grants (agent) WHERE revoked_at IS NULL AND consumed_at IS NULL;
CREATE TABLE IF NOT EXISTS dbproxy.requests (
    id bigserial PRIMARY KEY,
    agent text NOT NULL,
    session bigint NOT NULL,
    database text NOT NULL,
    statements text[] NOT NULL,
    statements_sha256 text NOT NULL,
    actions text[] NOT NULL,
    rule text NOT NULL,
    state text NOT NULL DEFAULT 'waiting'
        CHECK (state IN ('waiting', 'approved', 'rejected', 'expired', 'cancelled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    decided_at timestamptz,
    decided_by text,
    reason text,
    scope text,
    "grant" bigint
);
CREATE INDEX IF NOT EXISTS requests_waiting ON dbproxy.requests (id) WHERE state = 'waiting';
"""
_GRANT_COLUMNS = ("id, agent, ops, objects, scope, max_rows, session, statements_sha256, request, transaction, "
                  "granted_by, granted_at, reason, expires_at, revoked_at, revoked_by, revoke_reason, consumed_at")
_REQUEST_COLUMNS = ("id, agent, session, database, statements, statements_sha256, actions, rule, state, created_at, "
                    'decided_at, decided_by, reason, scope, "grant"')


def _grant(row: asyncpg.Record) -> GrantRecord:
    return GrantRecord(**{**dict(row), "ops": list(row["ops"]), "objects": list(row["objects"])})


def _request(row: asyncpg.Record) -> RequestRecord:
    d = dict(row)
    d["grant"] = d.pop("grant")
    return RequestRecord(**{**d, "statements": list(d["statements"]), "actions": list(d["actions"])})


class PolicyStore:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def ensure_schema(self) -> None:
        async def run(con: asyncpg.Connection) -> None:
            version = await con.fetchval("SELECT version FROM dbproxy.schema_version WHERE component = $1",
                                         COMPONENT)
            if version == SCHEMA_VERSION:
                return
            async with con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
                await con.execute(_DDL)
                await con.execute("INSERT INTO dbproxy.schema_version (component, version) VALUES ($1, $2) "
                                  "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, "
                                  "updated_at = now()", COMPONENT, SCHEMA_VERSION)

        await self.journal.run("policy schema", run)

    # -- grants ---------------------------------------------------------------------------------

    async def add_grant(self, *, agent: str, ops: list[str], objects: list[str], scope: str, granted_by: str,
                        max_rows: int | None = None, session: int | None = None,
                        statements_sha256: str | None = None, request: int | None = None,
                        transaction: int | None = None, reason: str | None = None) -> GrantRecord:
        row = await self.journal.run("add grant", lambda con: con.fetchrow(
            f"INSERT INTO dbproxy.grants (agent, ops, objects, scope, max_rows, session, statements_sha256, request, "
            f"transaction, granted_by, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
            f"RETURNING {_GRANT_COLUMNS}",
            agent, ops, objects, scope, max_rows, session, statements_sha256, request, transaction, granted_by, reason),
            idempotent=False)
        return _grant(row)

    async def active_permanent(self) -> list[GrantRecord]:
        rows = await self.journal.run("read grants", lambda con: con.fetch(
            f"SELECT {_GRANT_COLUMNS} FROM dbproxy.grants WHERE scope = 'permanent' AND revoked_at IS NULL "
            "ORDER BY id"))
        return [_grant(r) for r in rows]

    async def grants(self, *, agent: str | None = None, include_ended: bool = False,
                     limit: int = 500) -> list[GrantRecord]:
        where = ["($1::text IS NULL OR agent = $1)"]
        if not include_ended:
            where.append("revoked_at IS NULL AND consumed_at IS NULL")
        rows = await self.journal.run("read grants", lambda con: con.fetch(
            f"SELECT {_GRANT_COLUMNS} FROM dbproxy.grants WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT $2",
            agent, limit))
        return [_grant(r) for r in rows]

    async def grant(self, grant_id: int) -> GrantRecord | None:
        row = await self.journal.run("read grant", lambda con: con.fetchrow(
            f"SELECT {_GRANT_COLUMNS} FROM dbproxy.grants WHERE id = $1", grant_id))
        return _grant(row) if row is not None else None

    async def end_grant(self, grant_id: int, *, by: str, reason: str | None,
                        consumed: bool = False) -> GrantRecord | None:
        """Revoke a grant (or mark a once grant consumed); None when it had ended already."""
        column = "consumed_at" if consumed else "revoked_at"
        row = await self.journal.run("end grant", lambda con: con.fetchrow(
            f"UPDATE dbproxy.grants SET {column} = now(), revoked_by = CASE WHEN $4 THEN revoked_by ELSE $2 END, "
            "revoke_reason = CASE WHEN $4 THEN revoke_reason ELSE $3 END "
            f"WHERE id = $1 AND revoked_at IS NULL AND consumed_at IS NULL RETURNING {_GRANT_COLUMNS}",
            grant_id, by, reason, consumed))
        return _grant(row) if row is not None else None

    async def end_session_grants(self, session: int, *, reason: str) -> None:
        await self.journal.run("end session grants", lambda con: con.execute(
            "UPDATE dbproxy.grants SET revoked_at = now(), revoked_by = 'proxy', revoke_reason = $2 "
            "WHERE scope = 'session' AND session = $1 AND revoked_at IS NULL", session, reason))

    async def end_all_session_grants(self, *, reason: str) -> None:
        """At start: session grants of earlier runs ended with their sessions."""
        await self.journal.run("end session grants", lambda con: con.execute(
            "UPDATE dbproxy.grants SET revoked_at = now(), revoked_by = 'proxy', revoke_reason = $1 "
            "WHERE scope IN ('session', 'once') AND revoked_at IS NULL AND consumed_at IS NULL", reason))

    # -- requests -------------------------------------------------------------------------------

    async def add_request(self, *, agent: str, session: int, database: str, statements: list[str],
                          statements_sha256: str, actions: list[str], rule: str) -> RequestRecord:
        row = await self.journal.run("add request", lambda con: con.fetchrow(
            f"INSERT INTO dbproxy.requests (agent, session, database, statements, statements_sha256, actions, rule) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_REQUEST_COLUMNS}",
            agent, session, database, statements, statements_sha256, actions, rule), idempotent=False)
        return _request(row)

    async def end_request(self, request_id: int, *, state: str, by: str, reason: str | None,
                          scope: str | None = None, grant: int | None = None) -> RequestRecord | None:
        """End a waiting request; None when it was not waiting any more."""
        row = await self.journal.run("end request", lambda con: con.fetchrow(
            f"UPDATE dbproxy.requests SET state = $2, decided_at = now(), decided_by = $3, reason = $4, scope = $5, "
            f'"grant" = $6 WHERE id = $1 AND state = \'waiting\' RETURNING {_REQUEST_COLUMNS}',
            request_id, state, by, reason, scope, grant))
        return _request(row) if row is not None else None

    async def request(self, request_id: int) -> RequestRecord | None:
        row = await self.journal.run("read request", lambda con: con.fetchrow(
            f"SELECT {_REQUEST_COLUMNS} FROM dbproxy.requests WHERE id = $1", request_id))
        return _request(row) if row is not None else None

    async def requests(self, *, waiting_only: bool = True, agent: str | None = None,
                       limit: int = 200) -> list[RequestRecord]:
        rows = await self.journal.run("read requests", lambda con: con.fetch(
            f"SELECT {_REQUEST_COLUMNS} FROM dbproxy.requests WHERE (NOT $1 OR state = 'waiting') "
            "AND ($2::text IS NULL OR agent = $2) ORDER BY id DESC LIMIT $3", waiting_only, agent, limit))
        return [_request(r) for r in rows]

    async def cancel_waiting(self, *, reason: str) -> None:
        """At start: requests of earlier runs cannot be answered any more (their sessions are gone)."""
        await self.journal.run("cancel requests", lambda con: con.execute(
            "UPDATE dbproxy.requests SET state = 'cancelled', decided_at = now(), decided_by = 'proxy', reason = $1 "
            "WHERE state = 'waiting'", reason))


def dumps(value: Any) -> str:
    return json.dumps(value, default=lambda o: o.isoformat() if isinstance(o, datetime) else str(o))

"""`dbproxy install` / `dbproxy uninstall`: put exact capture into a target database, or take it out.

Runs `inverse.capture_schema`'s SQL with asyncpg and reports, in words, what it did and what it
could not do and why (the privileges each part needs):

- the `dbproxy` schema, log tables and capture functions: CREATE on the database;
- capture triggers: ownership of each table (tables owned by other roles are listed as skipped);
- DDL event triggers: superuser (without them DDL inside functions goes unseen, so undo mode
  holds every transaction that ran DDL for review, and tables created later need `install` again).

Run it as the proxy's own role (the `upstream` URL's role): that role then owns the log, and the
agents' roles reach it only through `dbproxy.captured_changes` and `dbproxy.mark_committed`.

Idempotent: running it again attaches triggers to new tables and replaces the functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from inverse.capture_schema import (
    CAPTURABLE_TABLES_SQL,
    EVENT_TRIGGERS_SQL,
    INSTALL_SQL,
    INSTALLED_VERSION_SQL,
    UNINSTALL_SQL,
)

_LOCK = 0x6462_7078_696E_7374  # "dbpxinst": one install at a time


@dataclass
class InstallReport:
    database: str = ""
    role: str = ""
    superuser: bool = False
    attached: list[str] = field(default_factory=list)  # tables that got capture triggers now
    already: list[str] = field(default_factory=list)  # tables that had them
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (table, why)
    event_triggers: bool = False
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"capture installed in database {self.database} as role {self.role}"]
        out.append(f"  tables captured: {len(self.attached) + len(self.already)} "
                   f"({len(self.attached)} new, {len(self.already)} already)")
        for t, why in self.skipped:
            out.append(f"  NOT captured: {t}: {why}")
        if self.event_triggers:
            out.append("  DDL event triggers: installed (DDL is logged; new tables are captured automatically)")
        out += [f"  {p}" for p in self.problems]
        return out


async def installed_version(con: asyncpg.Connection) -> int | None:
    return await con.fetchval(INSTALLED_VERSION_SQL)


async def event_triggers_installed(con: asyncpg.Connection) -> bool:
    """Are the DDL event triggers there (and enabled)? Without them DDL is not captured."""
    return bool(await con.fetchval(
        "SELECT count(*) = 2 FROM pg_catalog.pg_event_trigger "
        "WHERE evtname IN ('dbproxy_ddl', 'dbproxy_drop') AND evtenabled <> 'D'"))


async def install(con: asyncpg.Connection) -> InstallReport:
    """Install capture through `con`, as the proxy's own role (or a superuser): that role owns the
    capture log and undo records; agents' sessions reach them only through the two functions
    `INSTALL_SQL` grants to PUBLIC."""
    rep = InstallReport()
    rep.database, rep.role, rep.superuser = await con.fetchrow(
        "SELECT current_database(), current_user, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user")
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        await con.execute(INSTALL_SQL)
        if rep.superuser:
            await con.execute(EVENT_TRIGGERS_SQL)
            rep.event_triggers = True
        else:
            rep.problems.append(
                "DDL event triggers: NOT installed (they need a superuser). DDL run inside functions is not "
                "seen, so undo mode holds every transaction that runs DDL; run `dbproxy install` again after "
                "creating tables outside the proxy.")
    for name, oid, owned, attached in await con.fetch(CAPTURABLE_TABLES_SQL):
        if attached:
            rep.already.append(name)
            continue
        if not owned and not rep.superuser:
            rep.skipped.append((name, "owned by another role (adding a trigger needs ownership)"))
            continue
        try:
            async with con.transaction():
                await con.execute("SELECT dbproxy.attach($1::oid::regclass)", oid)
            rep.attached.append(name)
        except asyncpg.PostgresError as e:
            rep.skipped.append((name, str(e)))
    return rep


async def uninstall(con: asyncpg.Connection) -> list[str]:
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        await con.execute(UNINSTALL_SQL)
    return ["capture removed: triggers, event triggers, functions, capture log and undo records "
            "(the journal, if it lives here, is kept)"]

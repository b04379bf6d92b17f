"""Prove an inverse on a sampled copy of the schema before anyone trusts it.

`Verifier.verify(upstream, upstream_url, tx, candidate)` returns a `Verdict`:

1. **Schema.** The upstream's catalog fingerprint names a sandbox database holding its schema
   (`schema_copy`); it is built once per schema version and reused. Objects that did not load are
   remembered, so a verification that needs one says "could not verify" and names it.
2. **Sample.** `sampler.collect` reads the affected rows' before-images (from the capture),
   their foreign-key neighbourhood and a random sample, in one upstream snapshot.
3. **One sandbox transaction, always rolled back:** load the sample (triggers and foreign-key
   checks off, as a restore would), set sequences, digest every sampled table.
4. **Forward.** The agent's statements run on the sample with capture on, triggers and foreign
   keys live. Their effect must match what was captured upstream: the same rows changed (same
   before-images per table and operation, same number of inserts), else the sample is not
   representative: it is widened once and the whole verification tried again. When the new
   values differ only because they are not deterministic (`now()`, sequences, random), the
   forward is rolled back and the captured after-images are applied instead, so the inverse meets
   exactly the rows it will meet upstream. Statements that cannot be replayed (bind parameters,
   which the journal does not keep, or COPY data) are replaced the same way, and the verdict says so.
5. **Inverse**, run as undo runs it (triggers and foreign-key actions suppressed), then digest
   again. Equal digests (and catalog shape, for DDL) mean verified; otherwise failed, with the
   rows that differ.

What no sample holds cannot be verified: a transaction that refreshed or dropped a materialized
view, or changed a column's type or dropped a column without captured row images of that table
(`unseen_contents`), is "could not verify" whatever the inverse, as are foreign tables.

Steps 3 to 5 run on a connection that logs in as an unprivileged role (`sandbox.roles`): the
agent's statements and the inverse, which a model may have written, cannot reach the sandbox
server's files or programs, nor climb back to a superuser. Which connection runs what:

- **the runner's connection** (one transaction, rolled back): everything whose text an agent or
  a model wrote, or that re-runs it (the statements, the captured DDL re-run when the forward
  goes by images, the inverse), and the proxy's own row loading, digests and catalog reads;
- **the admin's connection**, only for the proxy's own fixed statements: building the schema copy,
  and before the replay, making the roles the statements and the inverse name (`roles.grant_named`:
  NOLOGIN, values quoted) and the runner's membership in the ordinary ones;
- **admin-owned SECURITY DEFINER helpers**, called from the runner's transaction where a fixed
  statement must see its uncommitted state: setting `session_replication_role`, and marking a
  foreign key the inverse re-adds valid (`_foreign_key`).

A statement that fails on the sample for lack of privilege (it reads a server file, say) makes
the verdict "could not verify" with PostgreSQL's error: the sample is not to blame, so it is
neither widened nor replaced by the captured changes. Rule-made owner and privilege steps that
name a role the runner may not become (the sandbox's superuser), or that fail for lack of a
privilege the copy does not have (it is loaded without the upstream's privileges), are not run;
the verdict lists them in `not_run` (the digest compares neither owners nor privileges).

A sandbox that dies is brought back (`Backend.recover`; a replaced container gets the schema
copied again) and the verification tried once more; one that hangs is stopped by the statement
timeout and an overall deadline. Either way the verdict is "could not verify", never "verified".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

import asyncpg

from inverse.capture_schema import IMAGE_SETTINGS
from inverse.ddl_targets import before_ddl_sql, roles_named
from inverse.images import (
    CAPTURE_COLUMNS,
    TABLE_INFO_SQL,
    Change,
    TableInfo,
    change_from_row,
    quote_ident,
    table_info_from_row,
)
from inverse.lexer import lex
from inverse.undo_plan import Plan, Step, build, rebuild
from sandbox import digest, roles, schema_copy
from sandbox.backends import LIMITS, Backend, BackendUnavailable, with_login
from sandbox.sampler import Sample, SampleOptions, collect
from sandbox.verdict import Verdict

_ROW_KINDS = frozenset({"remove", "restore", "revert"})
_LOST = (OSError, asyncpg.ConnectionDoesNotExistError, asyncpg.CannotConnectNowError,
         asyncpg.InterfaceError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError)
#: Part of every schema copy's name: copies made before the runner role existed are not reused.
COPY_FORMAT = "3"
#: High half of the advisory lock key a schema copy is built under ("dbsx"); the low half is the
#: upstream's identity digest.
_BUILD_LOCK = 0x6462_7378 << 32
_DML_VERBS = {"insert", "update", "delete", "merge", "truncate", "select", "with", "values", "table", "copy", "set",
              "reset", "savepoint", "release", "rollback", "show", "lock", "explain", "call", "do", "prepare",
              "execute", "deallocate", "declare", "fetch", "close", "move", "discard", "notify", "listen", "unlisten"}


@dataclass(frozen=True)
class Transaction:
    """What the agent did: the captured changes, the catalog facts of the tables they touch (the
    upstream's, by oid), and its statements when they can be replayed as text."""

    changes: list[Change]
    tables: dict[int, TableInfo]
    statements: list[str] | None = None
    not_replayable: str = ""  # why `statements` is None
    read_tables: frozenset[int] = frozenset()  # upstream oids of tables the statements read

    @property
    def has_ddl(self) -> bool:
        if any(c.op == "X" for c in self.changes):
            return True
        return any(_verb(s) not in _DML_VERBS for s in self.statements or [])


@dataclass(frozen=True)
class Candidate:
    """An inverse to prove: a rule-made plan, or plain SQL statements (an LLM's, a person's)."""

    plan: Plan | None = None
    statements: tuple[str, ...] = ()
    source: str = "rules"


class _Unrepresentative(Exception):
    pass


class _CouldNot(Exception):
    pass


@dataclass
class _Schema:
    database: str
    problems: list[str] = field(default_factory=list)  # load errors and objects left out


def _verb(sql: str) -> str:
    for tok in lex(sql).tokens:
        if tok.kind == "word":
            return tok.value
        if tok.kind != "punct":
            break
    return ""


def upstream_identity(url: str) -> str:
    """Which upstream database a URL names, without its credentials."""
    p = urlsplit(url)
    return f"{p.hostname}:{p.port}/{p.path.lstrip('/')}?{p.query}"


class Verifier:
    """Verifications against one backend; schema copies and connection pools are reused."""

    def __init__(self, backend: Backend, *, options: SampleOptions | None = None, timeout: float = 60.0) -> None:
        self.backend = backend
        self.options = options or SampleOptions()
        self.timeout = timeout
        self._schemas: dict[str, _Schema] = {}
        self._pools: dict[str, asyncpg.Pool] = {}
        self._build_lock = asyncio.Lock()
        self._ddl: dict[str, str] = {}
        self._runner: roles.Runner | None = None
        self._runner_known = False  # `_runner` was looked up on the current server

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        for p in pools.values():
            await p.close()
        await self.backend.close()

    async def verify(self, upstream: asyncpg.Connection, upstream_url: str, tx: Transaction,
                     candidate: Candidate) -> Verdict:
        start = time.perf_counter()
        try:
            verdict = await asyncio.wait_for(self._verify(upstream, upstream_url, tx, candidate), self.timeout)
        except TimeoutError:
            verdict = Verdict.could_not(f"the sandbox did not answer within {self.timeout:.0f}s")
        except BackendUnavailable as e:
            verdict = Verdict.could_not(str(e))
        except schema_copy.SchemaError as e:
            verdict = Verdict.could_not(f"the schema could not be copied: {e}")
        except asyncpg.LockNotAvailableError as e:
            verdict = Verdict.could_not(f"a table the sample needs is locked (by this transaction's own DDL?): {e}")
        except (asyncpg.PostgresError, OSError) as e:
            verdict = Verdict.could_not(f"{type(e).__name__}: {e}")
        verdict.backend = self.backend.name
        verdict.source = candidate.source
        verdict.timings_ms["total"] = round((time.perf_counter() - start) * 1000, 3)
        return verdict

    async def _verify(self, upstream: asyncpg.Connection, upstream_url: str, tx: Transaction,
                      candidate: Candidate) -> Verdict:
        timings: dict[str, float] = {}
        if candidate.plan is not None and candidate.plan.irreversible:
            return Verdict.could_not("the inverse is incomplete: " + "; ".join(candidate.plan.irreversible))
        foreign = [t.name for t in tx.tables.values() if t.relkind == "f"]
        if foreign:
            return Verdict.could_not(f"foreign table {', '.join(foreign)} has no rows a sandbox can copy")
        unseen = unseen_contents(tx.changes, tx.tables)
        if unseen:
            return Verdict.could_not(unseen)
        options = self.options
        for attempt in range(2):
            t0 = time.perf_counter()
            schema = await self._schema(upstream, upstream_url)
            timings["schema"] = _ms(t0)
            t0 = time.perf_counter()
            sample = await collect(upstream, tx.changes, read_tables=tx.read_tables, options=options)
            timings["sample"] = _ms(t0)
            try:
                verdict = await self._in_sandbox(schema, tx, candidate, sample, timings,
                                                 lambda: self._schema(upstream, upstream_url))
            except _Unrepresentative as e:
                if attempt == 0:
                    options = options.widened()
                    continue
                if tx.statements is None:
                    return Verdict.could_not(f"sample not representative, even widened: {e}", widened=True,
                                             sample=sample.counts(), timings_ms=timings)
                # The statements need rows the sample lacks (a self-join over duplicates, a cascade
                # through rows not sampled): bring the sample to the captured after-state instead,
                # which is what the inverse must undo.
                tx = replace(tx, statements=None, not_replayable=f"the statements changed other rows on the "
                             f"sample than upstream ({e}): the captured changes were applied instead")
                try:
                    verdict = await self._in_sandbox(schema, tx, candidate, sample, timings,
                                                     lambda: self._schema(upstream, upstream_url))
                except _Unrepresentative as e2:
                    return Verdict.could_not(f"sample not representative, even widened: {e2}", widened=True,
                                             sample=sample.counts(), timings_ms=timings)
                except _CouldNot as e2:
                    return Verdict.could_not(str(e2), sample=sample.counts(), timings_ms=timings, widened=True)
            except _CouldNot as e:
                return Verdict.could_not(str(e), sample=sample.counts(), timings_ms=timings, widened=attempt > 0)
            verdict.widened = attempt > 0
            verdict.sample = sample.counts()
            verdict.masked = sorted(s.info.name for s in sample.tables.values() if s.masked and s.context)
            verdict.timings_ms.update(timings)
            return verdict
        raise AssertionError("unreachable")

    # -- schema copies ------------------------------------------------------------------------

    async def schema_ddl(self, upstream: asyncpg.Connection, upstream_url: str) -> str:
        """The upstream's schema as it is outside any open transaction (the "before" of one being
        verified), as plain DDL read from its copy in the sandbox."""
        schema = await self._schema(upstream, upstream_url)
        text = self._ddl.get(schema.database)
        if text is None:
            text = await schema_copy.ddl_text(self.backend.url(schema.database), self.backend.bin_dir,
                                              exclude_schema=roles.HELPER_SCHEMA)
            self._ddl = {schema.database: text}  # older copies' text is stale
        return text

    async def prepare(self, upstream: asyncpg.Connection, upstream_url: str) -> str:
        """Copy the upstream's current schema into the sandbox now, unless a copy of this version
        exists; returns the copy's database name. Run ahead of time (at start, after DDL), so a
        transaction that runs DDL finds the schema from before it ready: at its COMMIT, pg_dump
        would wait on the transaction's own locks."""
        return (await self._schema(upstream, upstream_url)).database

    async def _schema(self, upstream: asyncpg.Connection, upstream_url: str) -> _Schema:
        await self.backend.start()
        fp = await schema_copy.fingerprint(upstream)
        ident = hashlib.md5(upstream_identity(upstream_url).encode()).hexdigest()[:8]
        name = f"dbproxy_sbx_{ident}_{hashlib.md5((fp + COPY_FORMAT).encode()).hexdigest()[:16]}"
        known = self._schemas.get(name)
        if known is not None:
            return known
        async with self._build_lock:
            if name in self._schemas:
                return self._schemas[name]
            admin = await self._admin()
            try:
                # Other proxies may share this sandbox server and upstream: one builds the copy
                # (they would share its `_new` name and drop each other's), the others wait and
                # find it done. Released with the connection.
                await admin.execute("SELECT pg_catalog.pg_advisory_lock($1)", _BUILD_LOCK | int(ident, 16))
                if not self._runner_known:
                    self._runner = await roles.prepare(admin, self._secret())
                    self._runner_known = True
                comment = await admin.fetchval(
                    "SELECT pg_catalog.shobj_description(d.oid, 'pg_database') FROM pg_catalog.pg_database d "
                    "WHERE d.datname = $1", name)
                if comment is not None:
                    schema = _Schema(name, json.loads(comment))
                else:
                    schema = await self._build(admin, name, upstream_url, ident)
            finally:
                await admin.close()
            self._schemas[name] = schema
            return schema

    async def _admin(self) -> asyncpg.Connection:
        """A connection as the backend's admin role; a server found dead is brought back first."""
        try:
            return await asyncpg.connect(self.backend.url("postgres"), timeout=10)
        except _LOST:
            await self._forget_server()
            await self.backend.recover()
            return await asyncpg.connect(self.backend.url("postgres"), timeout=10)

    def _secret(self) -> str:
        return unquote(urlsplit(self.backend.url("postgres")).password or "")

    async def _build(self, admin: asyncpg.Connection, name: str, upstream_url: str, ident: str) -> _Schema:
        available = {r[0] for r in await admin.fetch("SELECT name FROM pg_catalog.pg_available_extensions")}
        dump = await schema_copy.dump(upstream_url, self.backend.bin_dir, available_extensions=available)
        building = name[:50] + "_new"
        owner = f" OWNER {self._runner.name}" if self._runner else ""
        await admin.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{building}"{owner} TEMPLATE template0 ENCODING \'UTF8\' LOCALE \'C\'')
        copy = await asyncpg.connect(self.backend.url(building), timeout=10)
        try:
            await copy.execute(roles.HELPER_SQL)
            errors = await schema_copy.load(self.backend.url(building), self.backend.bin_dir, dump,
                                            role=roles.LOADER if self._runner else None)
            if self._runner:
                await roles.adopt(copy)
        finally:
            await copy.close()
        problems = [f"left out: {x}" for x in dump.left_out] + errors
        text = json.dumps(problems).replace("'", "''")
        await admin.execute(f"COMMENT ON DATABASE \"{building}\" IS '{text}'")
        # Older copies of this upstream's schema are stale now: drop them (and their pools).
        for (old,) in await admin.fetch("SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE $1",
                                        f"dbproxy_sbx_{ident}_%"):
            if old != building:
                pool = self._pools.pop(old, None)
                if pool is not None:
                    await pool.close()
                self._schemas.pop(old, None)
                await admin.execute(f'DROP DATABASE IF EXISTS "{old}" WITH (FORCE)')
        await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        return _Schema(name, problems)

    async def _pool(self, database: str) -> asyncpg.Pool:
        """Connections for the SQL under test: as the runner role when there is one."""
        pool = self._pools.get(database)
        if pool is None:
            url, limits = self.backend.url(database), LIMITS
            if self._runner is not None:
                url = with_login(url, self._runner.name, self._runner.password)
                limits = {k: v for k, v in LIMITS.items() if k not in roles.ROLE_LIMITS}
            pool = await asyncpg.create_pool(url, min_size=1, max_size=4, server_settings=limits, timeout=10)
            self._pools[database] = pool
        return pool

    async def _named_roles(self, tx: Transaction, candidate: Candidate) -> tuple[frozenset[str], frozenset[str]]:
        """Roles the statements and the inverse name, made in the sandbox server by the admin
        (the schema copy has no roles of its own, and a statement naming a missing role fails
        where it did not upstream); returns them, and those the SQL under test may not act as."""
        names = _roles_named(tx, candidate)
        if not names:
            return frozenset(), frozenset()
        admin = await self._admin()
        try:
            return frozenset(names), await roles.grant_named(admin, names, self._runner.name if self._runner else None)
        finally:
            await admin.close()

    async def _forget_server(self) -> None:
        pools, self._pools = self._pools, {}
        for p in pools.values():
            p.terminate()
        self._schemas.clear()
        self._runner_known = False  # a replaced server has no roles yet

    # -- one verification in the sandbox ------------------------------------------------------

    async def _in_sandbox(self, schema: _Schema, tx: Transaction, candidate: Candidate, sample: Sample,
                          timings: dict[str, float], again: Callable[[], Awaitable[_Schema]]) -> Verdict:
        for attempt in range(2):
            try:
                named, strangers = await self._named_roles(tx, candidate)
                pool = await self._pool(schema.database)
                async with pool.acquire() as con:
                    return await _run(con, schema, tx, candidate, sample, timings, named, strangers)
            except (*_LOST, asyncpg.InvalidCatalogNameError) as e:
                # The sandbox died under us, or its schema copy is gone (a crash-restarted cluster
                # without it, or another process dropped it): bring the server back and retry; a
                # copy that is missing is made again (`again`).
                await self._forget_server()
                if attempt == 1:
                    what = "schema copy" if isinstance(e, asyncpg.InvalidCatalogNameError) else "server"
                    raise _CouldNot(f"the sandbox {what} was lost during verification: {e}") from e
                await self.backend.recover()
                try:
                    schema = await again()
                except schema_copy.SchemaError as err:
                    raise _CouldNot(f"the sandbox server was re-created and the schema could not be copied "
                                    f"again: {err}") from err
        raise AssertionError("unreachable")


#: ALTER TABLE ... ALTER [COLUMN] c [SET DATA] TYPE: PostgreSQL rewrites every row, firing no row trigger.
_TYPE_CHANGE = re.compile(r"\balter\s+(?:column\s+)?(?:\"[^\"]+\"|\S+)\s+(?:set\s+data\s+)?type\b", re.IGNORECASE)


def _bare_name(identity: str) -> str:
    return identity.replace('"', "").lower()


def unseen_contents(changes: list[Change], tables: dict[int, TableInfo] | None = None) -> str:
    """Why the sandbox cannot check this transaction's inverse ("" when it can): it changed data
    that no row image and no sample holds, so a digest of the sampled tables and the catalog would
    call a wrong inverse right. Such changes (all found by a real model's answers):

    - a materialized view refreshed or dropped: its old contents are gone (a model's `REFRESH`
      brings back fresh contents, not the stale ones that were there);
    - a column's type changed (`ALTER COLUMN ... TYPE`, `USING ...`) on a table of which no row
      change was captured: the rewrite fires no row trigger, and the sampler cannot read the
      table while the transaction holds its ACCESS EXCLUSIVE lock, so the sample holds none of
      the rows the rewrite changed (a model's inverse that repeats the lossy rewrite verified);
    - a column dropped from such a table (also from inside a function): its values are gone with
      it, and an inverse that adds the column back, even `NOT NULL`, succeeds on a sample without
      the table's rows and leaves the same catalog."""
    captured = {_bare_name(t.name) for oid, t in (tables or {}).items()
                if any(c.rel == oid and c.op != "X" for c in changes)}
    views: list[str] = []
    rewritten: list[str] = []
    dropped: list[str] = []
    for c in changes:
        d = c.ddl or {}
        kind, identity = d.get("object_type"), str(d.get("identity") or "")
        if kind == "materialized view" and (d.get("tag") == "REFRESH MATERIALIZED VIEW" or d.get("event") == "drop"):
            views.append(f"{identity} ({'REFRESH' if d.get('event') != 'drop' else 'DROP'})")
        elif (kind == "table" and d.get("event") != "drop" and d.get("tag") == "ALTER TABLE"
              and _TYPE_CHANGE.search(str(d.get("query") or "")) and _bare_name(identity) not in captured):
            rewritten.append(identity)
        elif kind == "table column" and d.get("event") == "drop":
            table = identity.rsplit(".", 1)[0]  # "schema.table.column": the table's identity
            if _bare_name(table) not in captured:
                dropped.append(identity)
    if views:
        return (f"the transaction replaced or dropped the contents of materialized view "
                f"{', '.join(dict.fromkeys(views))}: no sample holds them, so the sandbox cannot check that an "
                "inverse brings them back")
    if rewritten:
        return (f"the transaction changed a column type of {', '.join(dict.fromkeys(rewritten))}, rewriting its rows "
                "without row images, and the sample cannot hold them: the sandbox cannot check that an inverse "
                "brings them back")
    if dropped:
        return (f"the transaction dropped column {', '.join(dict.fromkeys(dropped))} with its values, of which no "
                "row image and no sample holds any: the sandbox cannot check that an inverse brings them back")
    return ""


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


async def _sandbox_oids(con: asyncpg.Connection, sample: Sample, schema: _Schema) -> dict[int, int]:
    """Upstream oid -> sandbox oid of every sampled table (found by its name before the
    transaction; oids then follow it through renames)."""
    ups = list(sample.tables)
    found = await con.fetch("SELECT u.oid, pg_catalog.to_regclass(u.name)::oid FROM "
                            "unnest($1::bigint[], $2::text[]) AS u(oid, name)",
                            ups, [sample.tables[o].info.name for o in ups])
    local = {int(r[0]): r[1] for r in found}
    lost = [sample.tables[o].info.name for o, sb in local.items() if sb is None]
    if lost:
        related = [p for p in schema.problems if any(_bare(n) in p for n in lost)] or schema.problems[:3]
        raise _CouldNot(f"{', '.join(sorted(lost))} could not be reproduced in the sandbox"
                        + (": " + "; ".join(related) if related else ""))
    return {up: int(sb) for up, sb in local.items()}


async def _infos(con: asyncpg.Connection, oids: dict[int, int], tx: Transaction,
                 wanted: set[int]) -> dict[int, TableInfo]:
    """Sandbox catalog facts as they are now, keyed by upstream oid, for `wanted` upstream oids.
    Tables the transaction created are found by their name (and remembered in `oids`)."""
    for up in wanted - set(oids):
        info = tx.tables.get(up)
        sb = await con.fetchval("SELECT pg_catalog.to_regclass($1)::oid", info.name) if info else None
        if sb is not None:
            oids[up] = int(sb)
    back = {oids[up]: up for up in wanted if up in oids}
    rows = await con.fetch(TABLE_INFO_SQL, sorted(back)) if back else []
    return {back[int(r[0])]: table_info_from_row(r) for r in rows}


def _bare(name: str) -> str:
    return name.split(".")[-1].strip('"')


async def _load(con: asyncpg.Connection, sample: Sample, infos: dict[int, TableInfo]) -> None:
    for oid, s in sample.tables.items():
        if not s.rows:
            continue
        info = infos[oid]
        cols = ", ".join(quote_ident(c) for c in info.writable)
        # An image's `null` in a NOT NULL json column is JSON null (json_populate reads it as SQL NULL).
        values = ", ".join(f"COALESCE({quote_ident(c)}, 'null')" if c in info.json_not_null else quote_ident(c)
                           for c in info.writable)
        override = " OVERRIDING SYSTEM VALUE" if info.identity_always else ""
        sql = (f"INSERT INTO {info.name} ({cols}){override} SELECT {values} FROM "
               f"pg_catalog.json_populate_recordset(NULL::{info.name}, $1::json)")
        try:
            async with con.transaction():
                await con.execute(sql, "[" + ",".join(s.rows) + "]")
        except asyncpg.PostgresError as e:
            if not s.masked:
                raise _CouldNot(f"the sample of {info.name} does not load into the sandbox: {e}") from e
            # Masked stand-in values can break CHECK constraints: keep the rows that load.
            async with con.transaction():
                await con.execute(sql, "[" + ",".join(s.before) + "]")
            for img in s.context:
                try:
                    async with con.transaction():
                        await con.execute(sql, "[" + img + "]")
                except asyncpg.PostgresError:
                    continue
    for seq, (value, called) in sample.sequences.items():
        await con.execute("SELECT pg_catalog.setval($1::regclass, $2, $3)", seq, value, called)


def _roles_named(tx: Transaction, candidate: Candidate) -> set[str]:
    """Roles named (GRANT ... TO, OWNER TO, policies) by the statements, the DDL the forward may
    re-run from the capture, and the inverse."""
    texts = list(tx.statements or [])
    texts += [str(c.ddl["query"]) for c in tx.changes if c.op == "X" and c.ddl and c.ddl.get("query")]
    if candidate.plan is not None:
        texts += [s.sql for s in candidate.plan.steps if s.kind in ("ddl", "privileges")]
    texts += list(candidate.statements)
    return {n for t in texts for n in roles_named(t)}


async def _may_create(con: asyncpg.Connection, friends: frozenset[str]) -> None:
    """Upstream, a role objects are given to may create in their schema (PostgreSQL requires it
    of a new owner); the copy was loaded without privileges. For this transaction only, named
    roles the runner may act as get CREATE on the copy's schemas (the runner owns them)."""
    if not friends:
        return
    schemas = [r[0] for r in await con.fetch(
        "SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE n.nspname !~ '^pg_' AND n.nspname NOT IN "
        "('information_schema', 'dbproxy', $1) AND pg_catalog.has_schema_privilege(n.oid, 'CREATE WITH GRANT OPTION')",
        roles.HELPER_SCHEMA)]
    if schemas:
        await con.execute(f"GRANT CREATE ON SCHEMA {', '.join(quote_ident(x) for x in schemas)} TO "
                          + ", ".join(quote_ident(r) for r in sorted(friends)))


def _strange(step: Step, strangers: frozenset[str]) -> bool:
    """A rule-made owner or privilege step naming a role the runner may not become."""
    return step.kind == "privileges" and step.origin == "rules" and bool(strangers & roles_named(step.sql))


async def _settings(con: asyncpg.Connection, *, replica: bool, capture: bool) -> None:
    # session_replication_role is a superuser's setting: the copy's helper sets it for the runner.
    await con.execute(f"SELECT {roles.HELPER_SCHEMA}.replication_role($1), "
                      "pg_catalog.set_config('dbproxy.capture', $2, true)", replica, "on" if capture else "off")


async def _run(con: asyncpg.Connection, schema: _Schema, tx: Transaction, candidate: Candidate, sample: Sample,
               timings: dict[str, float], named: frozenset[str] = frozenset(),
               strangers: frozenset[str] = frozenset()) -> Verdict:
    t_all = time.perf_counter()
    outer = con.transaction()
    await outer.start()
    try:
        for k, v in IMAGE_SETTINGS.items():
            await con.execute("SELECT pg_catalog.set_config($1, $2, true)", k, v)
        await _settings(con, replica=True, capture=False)
        oids = await _sandbox_oids(con, sample, schema)
        infos = await _infos(con, oids, tx, set(oids))
        await _may_create(con, named - strangers)
        not_run: list[str] = []
        t0 = time.perf_counter()
        loud = await _quiet(con, oids)  # loading rows fires no trigger
        await _load(con, sample, infos)
        await _loud(con, loud)
        timings["load"] = _ms(t0)
        names = sorted({infos[oid].name for oid in sample.tables})
        t0 = time.perf_counter()
        before = await digest.table_digests(con, names)
        shape_before = await digest.shape_lines(con) if tx.has_ddl else []
        timings["digest"] = _ms(t0)
        loaded = con.transaction()  # a savepoint: the diff goes back here to read the "before" rows
        await loaded.start()

        t0 = time.perf_counter()
        forward = await _forward(con, tx, oids, strangers, not_run)
        timings["forward"] = _ms(t0)

        t0 = time.perf_counter()
        await _settings(con, replica=True, capture=False)
        loud = await _quiet(con, oids)
        failure = await _apply_inverse(con, candidate, tx, oids, strangers, not_run)
        await _loud(con, loud)
        timings["inverse"] = _ms(t0)
        if failure is not None:  # the error aborted the sandbox transaction: nothing more reads in it
            return Verdict("failed", failure, forward=forward, timings_ms=timings, not_run=not_run)

        t0 = time.perf_counter()
        after = await digest.table_digests(con, names)
        shape_after = await digest.shape_lines(con) if tx.has_ddl else []
        timings["digest"] += _ms(t0)
        changed = [n for n in names if before.get(n) != after.get(n)]
        if not changed and shape_before == shape_after:
            return Verdict("verified", forward=forward, timings_ms=timings, not_run=not_run)
        after_rows = {n: await digest.rows(con, n) for n in changed}
        await loaded.rollback()
        lines: list[str] = []
        for n in changed:
            lines += digest.diff_lines(n, await digest.rows(con, n), after_rows[n])
        lost_shape = sorted(set(shape_before) - set(shape_after))
        new_shape = sorted(set(shape_after) - set(shape_before))
        lines += [f"catalog: missing after the inverse: {x}" for x in lost_shape[:20]]
        lines += [f"catalog: not there before the transaction: {x}" for x in new_shape[:20]]
        what = ", ".join(changed) if changed else "the catalog"
        return Verdict("failed", f"the inverse left {what} different from before the transaction", diff=lines,
                       forward=forward, timings_ms=timings, not_run=not_run)
    finally:
        timings["sandbox"] = _ms(t_all)
        if not con.is_closed():
            await outer.rollback()


async def _forward(con: asyncpg.Connection, tx: Transaction, oids: dict[int, int], strangers: frozenset[str],
                   not_run: list[str]) -> str:
    """Bring the sample to the transaction's after-state; returns how (see the module docstring)."""
    if tx.statements is None:
        await _forward_images(con, tx, oids, strangers, not_run)
        return f"images ({tx.not_replayable or 'statements not available'})"
    fwd = con.transaction()
    await fwd.start()
    await _settings(con, replica=False, capture=True)
    try:
        for sql in tx.statements:
            # As the proxy runs it: DDL announced, so the state it destroys is kept here too.
            call = before_ddl_sql(sql)
            if call is not None:
                await con.execute(call)
            await con.execute(sql)
    except asyncpg.InsufficientPrivilegeError as e:
        # Not the sample's fault: the statement does what the runner may not (reads a server file,
        # names a role it may not become). No other sample, nor the captured changes, would
        # show what it did.
        await fwd.rollback()
        raise _CouldNot(f"the statements fail in the sandbox, which runs them without privileges: "
                        f"{type(e).__name__}: {e}") from e
    except asyncpg.PostgresError as e:
        await fwd.rollback()
        raise _Unrepresentative(f"the statements fail on the sample: {type(e).__name__}: {e}") from e
    rows = await con.fetch(f"SELECT {CAPTURE_COLUMNS} FROM dbproxy.capture_log "
                           "WHERE xid = pg_catalog.txid_current() ORDER BY seq")
    sandbox_changes = [change_from_row(r) for r in rows]
    # Tables the statements dropped are gone from the sandbox's catalog: named as upstream.
    local_names = {sb: f"{tx.tables[up].schema}.{tx.tables[up].table}" for up, sb in oids.items() if up in tx.tables}
    local_names.update({int(r[0]): f"{r[1]}.{r[2]}" for r in await con.fetch(
        "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY($1::oid[])",
        sorted({c.rel for c in sandbox_changes if c.rel is not None}))})
    real = _effect(tx.changes, {oid: f"{t.schema}.{t.table}" for oid, t in tx.tables.items()})
    seen = _effect(sandbox_changes, local_names)
    if real[0] != seen[0]:
        await fwd.rollback()
        raise _Unrepresentative(_describe_mismatch(real[0], seen[0]))
    if real[1] == seen[1]:
        await fwd.commit()
        return "statements"
    await fwd.rollback()
    await _forward_images(con, tx, oids, strangers, not_run)
    return "images (the statements' new values are not deterministic: the captured after-images were applied)"


def _effect(changes: list[Change], names: dict[int, str]) -> tuple[Counter[tuple[str, str, str]], Counter[str]]:
    """(rows removed or changed, by table, operation and before-image; rows written, by table and image)."""
    old: Counter[tuple[str, str, str]] = Counter()
    new: Counter[str] = Counter()
    for c in changes:
        if c.rel is None or not c.is_row:
            continue  # DDL events and the state kept before DDL are not effects
        name = names.get(c.rel, str(c.rel))
        if c.op == "I":
            old[(name, "I", "")] += 1
        elif c.old is not None:
            old[(name, c.op, c.old)] += 1
        if c.new is not None:
            new[f"{name} {c.new}"] += 1
    return old, new


def _describe_mismatch(real: Counter[tuple[str, str, str]], seen: Counter[tuple[str, str, str]]) -> str:
    ops = {"I": "inserted", "U": "updated", "D": "deleted", "T": "truncated"}

    def per_table(c: Counter[tuple[str, str, str]]) -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter()
        for (t, op, _), n in c.items():
            out[(t, op)] += n
        return out

    up, sb = per_table(real), per_table(seen)
    parts = [f"{t}: {sb[(t, op)]} rows {ops.get(op, op)} on the sample, {up[(t, op)]} upstream"
             for t, op in sorted(set(up) | set(sb)) if up[(t, op)] != sb[(t, op)]]
    return "; ".join(parts) or "the statements changed other rows on the sample than upstream"


async def _quiet(con: asyncpg.Connection, oids: dict[int, int]) -> list[tuple[str, str, str]]:
    """As undo does upstream: ALWAYS and REPLICA triggers would still fire under the replica role,
    so they are disabled (inside this transaction) while the sample loads and while images or the
    inverse are applied."""
    loud = await con.fetch("SELECT t.tgrelid::regclass::text, t.tgname, t.tgenabled::text "
                           "FROM pg_catalog.pg_trigger t WHERE t.tgrelid = ANY($1::oid[]) "
                           "AND NOT t.tgisinternal AND t.tgenabled IN ('A', 'R')", list(oids.values()))
    for rel, name, _ in loud:
        await con.execute(f"ALTER TABLE {rel} DISABLE TRIGGER {quote_ident(name)}")
    return [(r[0], r[1], r[2]) for r in loud]


async def _loud(con: asyncpg.Connection, loud: list[tuple[str, str, str]]) -> None:
    for rel, name, mode in loud:
        with contextlib.suppress(asyncpg.PostgresError):
            async with con.transaction():
                how = "ENABLE ALWAYS" if mode == "A" else "ENABLE REPLICA"
                await con.execute(f"ALTER TABLE {rel} {how} TRIGGER {quote_ident(name)}")


_NAME = r'(?:"(?:[^"]|"")*"|[^\s."]+)'
_FOREIGN_KEY = re.compile(rf"^ALTER TABLE ({_NAME}(?:\.{_NAME})?) ADD CONSTRAINT ({_NAME}) FOREIGN KEY ")


async def _foreign_key(con: asyncpg.Connection, sql: str) -> None:
    """A foreign key the inverse adds back. A sample holds some rows of each table, so checking
    every row against it says nothing here (upstream, undo checks it for real): on a violation
    it is added NOT VALID and then marked valid, so the catalog is what the statement makes. The
    runner may not update the catalog: the copy's admin-owned helper does (`sandbox.roles`)."""
    try:
        async with con.transaction():
            await con.execute(sql)
    except asyncpg.ForeignKeyViolationError:
        m = _FOREIGN_KEY.match(sql)
        assert m is not None
        name = m.group(2)
        name = name[1:-1].replace('""', '"') if name.startswith('"') else name
        await con.execute(sql.rstrip() + " NOT VALID")
        try:
            async with con.transaction():
                await con.execute(f"SELECT {roles.HELPER_SCHEMA}.validate_foreign_key(pg_catalog.to_regclass($1), $2)",
                                  m.group(1), name)
        except asyncpg.InsufficientPrivilegeError as e:  # an admin that is no superuser cannot either
            raise _CouldNot(f"a foreign key the inverse adds back does not hold on the sample, and the sandbox "
                            f"may not mark it valid: {e}") from e


async def _privileges(con: asyncpg.Connection, sql: str, not_run: list[str]) -> None:
    """A rule-made owner or privilege step (no user code runs in it). The copy has none of the
    upstream's privileges (the named owner may lack CREATE on the schema, say): one that fails
    for lack of them is left out and listed, as the digest compares neither owners nor privileges."""
    try:
        async with con.transaction():
            await con.execute(sql)
    except asyncpg.InsufficientPrivilegeError as e:
        not_run.append(f"{sql} ({e})")


async def _forward_images(con: asyncpg.Connection, tx: Transaction, oids: dict[int, int], strangers: frozenset[str],
                          not_run: list[str]) -> None:
    """The captured effect applied exactly (the redo plan: DDL statements run again as they ran,
    rows set to their captured images), each row step checked to find its row."""
    plan = build(tx.changes, tx.tables, direction="redo")
    if plan.irreversible:
        raise _CouldNot("the forward cannot be applied from images: " + "; ".join(plan.irreversible))
    await _settings(con, replica=True, capture=False)
    loud = await _quiet(con, oids)  # trigger side effects were captured upstream as changes of their own
    steps = [s for s in plan.steps if s.kind not in ("check", "written_since")]
    i = 0
    while i < len(steps):
        if i == 0 or steps[i - 1].kind == "ddl":
            wanted = {s.rel for s in steps[i:] if s.rel is not None and s.kind in _ROW_KINDS}
            steps[i:] = rebuild(steps[i:], await _infos(con, oids, tx, wanted))
        step = steps[i]
        i += 1
        if _strange(step, strangers):
            not_run.append(step.sql)
            continue
        if step.kind == "privileges" and step.origin == "rules":
            await _privileges(con, step.sql, not_run)
            continue
        try:
            if step.kind == "remap":
                new = await con.fetchval(step.sql, *step.params)
                if new is not None and step.rel is not None:
                    oids[step.rel] = int(new)
                continue
            n = _rows(await con.execute(step.sql, *step.params))
        except asyncpg.PostgresError as e:
            raise _CouldNot(f"the captured changes do not apply to the sample ({step.table or step.sql[:80]}): "
                            f"{e}") from e
        if step.kind in _ROW_KINDS and n != 1:
            raise _Unrepresentative(f"{step.table}: the captured {step.kind} did not find its row in the sample")
    await _loud(con, loud)


def _rows(status: str) -> int:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def _apply_inverse(con: asyncpg.Connection, candidate: Candidate, tx: Transaction, oids: dict[int, int],
                         strangers: frozenset[str], not_run: list[str]) -> str | None:
    """Run the candidate; returns why it failed outright (an error), else None. Plan steps are
    re-made for the sandbox's catalog, and again after each DDL step (as undo does upstream)."""
    try:
        if candidate.plan is None:
            for sql in candidate.statements:
                await con.execute(sql)
            return None
        steps: list[Step] = [s for s in candidate.plan.steps if s.kind != "written_since"]
        i = 0
        while i < len(steps):
            if i == 0 or steps[i - 1].kind == "ddl":
                wanted = {s.rel for s in steps[i:] if s.rel is not None and s.kind in _ROW_KINDS}
                steps[i:] = rebuild(steps[i:], await _infos(con, oids, tx, wanted))
            if _strange(steps[i], strangers):
                not_run.append(steps[i].sql)
                i += 1
                continue
            if steps[i].kind == "privileges" and steps[i].origin == "rules":
                await _privileges(con, steps[i].sql, not_run)
                i += 1
                continue
            if steps[i].kind == "remap":
                # A table the inverse made again: later row steps address it under its new oid,
                # and it is captured again (as undo does upstream).
                new = await con.fetchval(steps[i].sql, *steps[i].params)
                if new is not None and steps[i].rel is not None:
                    oids[steps[i].rel] = int(new)
                    await con.execute("SELECT dbproxy.attach($1::oid::regclass)", int(new))
                i += 1
                continue
            if steps[i].kind == "ddl" and _FOREIGN_KEY.match(steps[i].sql):
                await _foreign_key(con, steps[i].sql)
                i += 1
                continue
            if steps[i].kind == "check":
                problem = await con.fetchval(steps[i].sql, *steps[i].params)
                if problem is not None:
                    return f"the inverse's check failed on the sample: {problem}"
                i += 1
                continue
            # A run of row steps with the same SQL goes in one pipelined round trip; the digest
            # afterwards, not each step's row count, is what decides.
            j = i + 1
            while j < len(steps) and steps[i].kind != "ddl" and steps[j].sql == steps[i].sql:
                j += 1
            if j - i > 1:
                await con.executemany(steps[i].sql, [s.params for s in steps[i:j]])
            else:
                await con.execute(steps[i].sql, *steps[i].params)
            i = j
        return None
    except asyncpg.PostgresError as e:
        return f"the inverse failed on the sample: {type(e).__name__}: {e}"

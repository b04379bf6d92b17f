"""Sandbox verification against real PostgreSQL: every kind of forward transaction verifies with
its rule-made inverse; wrong inverses fail with a diff naming the table; SQL under test cannot
reach the sandbox server's files or programs; samples that cannot show the effect say "could not
verify"; masked tables keep their secrets upstream; backends that are down, slow or foreign say
"could not verify" and never "verified"; the local backend survives reuse, a killed server and a
ruined data directory. The coverage list, the wrong inverses and the privilege checks run on the
local backend and on the testcontainers backend (a warm container on a real Docker engine).

Most verifications run the way the proxy runs them at commit time: the agent's transaction is
open (capture on), its changes and table facts are read inside it, and the verifier samples the
committed state (the "before") through a separate connection. The coverage cases whose forward
is plain DML are committed first and verified after the fact, as `dbproxy verify ID` does.

The coverage cases (`tests.test_undo_coverage.CASES`) share one upstream database, each in a
schema of its own, so the suite builds one schema copy in the sandbox rather than one per case;
their statements start with `SET LOCAL search_path` to that schema, as an agent's could.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest

from dbproxy.undo.apply import load_changes, load_tables
from dbproxy.undo.install import install
from inverse.ddl_targets import prepared
from inverse.images import CAPTURE_COLUMNS, TABLE_INFO_SQL, Change, TableInfo, change_from_row, table_info_from_row
from inverse.undo_plan import Plan, Step, build
from sandbox import cache, roles
from sandbox.backends import Backend, LocalBackend, ServerBackend
from sandbox.sampler import SampleOptions, collect
from sandbox.verdict import Verdict
from sandbox.verify import Candidate, Transaction, Verifier, upstream_identity
from tests.conftest import Postgres, _admin_run
from tests.test_undo_coverage import CASES, Case
from tests.undo_helpers import forward


@pytest.fixture(scope="module")
def backend(sandbox_dir: Path) -> LocalBackend:
    """The suite's warm sandbox cluster (stopped by the session fixture, not here)."""
    return LocalBackend(sandbox_dir)


@contextlib.asynccontextmanager
async def verifier_on(backend: LocalBackend, *, options: SampleOptions | None = None,
                      deadline: float = 60) -> AsyncIterator[Verifier]:
    v = Verifier(backend, options=options, timeout=deadline)
    try:
        yield v
    finally:
        await v.close()


@pytest.fixture
async def verifier(backend: LocalBackend) -> AsyncIterator[Verifier]:
    async with verifier_on(backend, deadline=60) as v:
        yield v


@pytest.fixture(scope="module", params=["local", "testcontainers"])
def any_backend(request: pytest.FixtureRequest, backend: LocalBackend) -> Backend:
    """Each backend in turn: the suite's local cluster, then the session's warm container."""
    if request.param == "local":
        return backend
    return request.getfixturevalue("container_backend")


@pytest.fixture
async def any_verifier(any_backend: Backend) -> AsyncIterator[Verifier]:
    async with verifier_on(any_backend, deadline=60) as v:  # type: ignore[arg-type]
        yield v


def _new_database(pg: Postgres, prefix: str, setup: str) -> str:
    name = f"{prefix}_{os.urandom(3).hex()}"
    _admin_run(pg.url, f'CREATE DATABASE "{name}"')
    url = pg.dsn(name)

    async def go() -> None:
        con = await asyncpg.connect(url)
        try:
            await con.execute(setup)
            await install(con)
        finally:
            await con.close()

    asyncio.run(go())
    return name


@contextlib.contextmanager
def database(pg: Postgres, prefix: str, setup: str) -> Iterator[str]:
    """A database with `setup` run and capture installed; its superuser URL."""
    name = _new_database(pg, prefix, setup)
    try:
        yield pg.dsn(name)
    finally:
        _admin_run(pg.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def upstream(url: str) -> AsyncIterator[asyncpg.Connection]:
    """The verifier's own upstream connection (the proxy's sampler uses a short lock timeout too)."""
    con = await asyncpg.connect(url, server_settings={"lock_timeout": "300ms"})
    try:
        yield con
    finally:
        await con.close()


async def _open_tx_changes(con: asyncpg.Connection) -> tuple[list[Change], dict[int, TableInfo]]:
    """The captured changes of `con`'s open transaction, and its view of their tables."""
    rows = await con.fetch(f"SELECT {CAPTURE_COLUMNS} FROM dbproxy.capture_log WHERE xid = txid_current() "
                           "ORDER BY seq")
    changes = [change_from_row(r) for r in rows]
    rels = sorted({c.rel for c in changes if c.rel is not None})
    tables = {int(r[0]): table_info_from_row(r) for r in await con.fetch(TABLE_INFO_SQL, rels)}
    return changes, tables


@dataclass
class Agent:
    """An agent transaction, still open: what the proxy has in hand at COMMIT."""

    sql: str
    changes: list[Change]
    tables: dict[int, TableInfo]
    plan: Plan

    def tx(self, *, statements: list[str] | None = None, read: frozenset[int] = frozenset()) -> Transaction:
        return Transaction(self.changes, self.tables, statements=[self.sql] if statements is None else statements,
                           read_tables=read)

    def oid(self, name: str) -> int:
        return next(o for o, t in self.tables.items() if t.table == name)


@contextlib.asynccontextmanager
async def agent_tx(url: str, sql: str, *, settings: dict[str, str] | None = None) -> AsyncIterator[Agent]:
    con = await asyncpg.connect(url, server_settings=settings or None)
    tx = con.transaction()
    await tx.start()
    try:
        await con.execute("SET LOCAL dbproxy.capture = on")
        for statement in prepared(sql):  # as the proxy sends it: DDL announced first
            await con.execute(statement)
        changes, tables = await _open_tx_changes(con)
        assert changes, "the agent's transaction changed nothing"
        yield Agent(sql, changes, tables, build(changes, tables))
    finally:
        await tx.rollback()
        await con.close()


async def _oid(con: asyncpg.Connection, name: str) -> int:
    return int(await con.fetchval("SELECT $1::regclass::oid", name))


# --- 1. the coverage list: the rule-made inverse of every kind of write verifies -----------------

def _usable(case: Case) -> bool:
    # Cases that name their own schemas ("My Schema", public.T, app.items) do not fit one schema per
    # case, and a case must change rows of some table (the sample is made of them).
    return '"My Schema"' not in case.setup and not (isinstance(case.fwd, str) and "public." in case.fwd) \
        and bool(case.tables) and all("." not in t for t in case.tables) and case.schema == "public"


COVERAGE = [c for c in CASES if _usable(c)]
#: Cases the verifier cannot verify yet: they must say "could not verify" (for this reason), never
#: "failed" (the inverse is right: `test_undo_coverage` proves it upstream) nor a wrong "verified".
CANNOT_VERIFY = {
    # Row images taken after ALTER TABLE on the same table have its new shape: the row updated
    # before and after ADD COLUMN counts as two before-images (same key), and an image with a
    # renamed column loads into the sample with that column NULL.
    "update_then_add_column": "does not load into the sandbox",
    "rename_column": "sample not representative",
    # The view's digest is of all its rows upstream; a sample's view matches it only when the
    # sample holds every row.
    "update_then_refresh_fresh_matview": "cannot check that an inverse brings them back",
}
#: Cases whose statements change other rows on the sample than upstream (two of three identical
#: keyless rows, chosen by ctid): the sample is brought forward by the captured changes instead.
IMAGES_INSTEAD = {"update_no_key_duplicates"}
WARM = "CREATE SCHEMA warm; CREATE TABLE warm.w (id int PRIMARY KEY, v int); INSERT INTO warm.w VALUES (1, 1);"


def _schema(case: Case) -> str:
    return f"c_{case.id}"


@pytest.fixture(scope="module")
def coverage_db(pg: Postgres, any_backend: Backend) -> Iterator[str]:
    """The coverage cases' database, one per backend (the row-change cases commit their forward)."""
    setup = WARM + "".join(f"CREATE SCHEMA {_schema(c)}; SET search_path = {_schema(c)}; {c.setup}; "
                           "RESET search_path;\n" for c in COVERAGE)
    with database(pg, "sbx_cov", setup) as url:
        # Build the schema copy now, while nothing holds a lock pg_dump would wait for (the
        # ALTER TABLE cases hold one while they are verified).
        async def warm() -> Verdict:
            async with upstream(url) as up, verifier_on(any_backend) as v, agent_tx(  # type: ignore[arg-type]
                    url, "UPDATE warm.w SET v = 2") as agent:
                return await v.verify(up, url, agent.tx(), Candidate(agent.plan))

        verdict = asyncio.run(warm())
        assert verdict.verified, verdict.summary()
        yield url


async def _oids(con: asyncpg.Connection, schema: str, names: tuple[str, ...]) -> frozenset[int]:
    found = [await con.fetchval("SELECT to_regclass($1)::oid", f"{schema}.{n.removeprefix('ONLY ')}") for n in names]
    return frozenset(int(o) for o in found if o is not None)


@pytest.mark.parametrize("case", COVERAGE, ids=[c.id for c in COVERAGE])
async def test_rule_inverse_verifies(coverage_db: str, any_verifier: Verifier, case: Case) -> None:
    verifier = any_verifier
    schema = _schema(case)
    path = f"SET LOCAL search_path = {schema}"
    async with upstream(coverage_db) as up:
        read = await _oids(up, schema, case.tables)
        statements: list[str] | None
        if case.ddl:
            # DDL: verified at commit time, the forward still open (once committed, the schema
            # from before it is gone, and the copy would already have it).
            assert isinstance(case.fwd, str)
            async with agent_tx(coverage_db, f"{path}; {case.fwd}", settings=case.settings) as agent:
                plan, statements = agent.plan, [path, case.fwd]
                verdict = await verifier.verify(up, coverage_db, agent.tx(statements=statements, read=read),
                                                Candidate(plan))
        else:
            # Row changes: committed with capture, then verified after the fact (`dbproxy verify`):
            # the sample's affected rows are the captured before-images.
            fwd = case.fwd
            if isinstance(fwd, str):
                xid = await forward(coverage_db, f"{path}; {fwd}", settings=case.settings)
                statements = [path, fwd]
            else:
                async def run(con: asyncpg.Connection) -> None:
                    await con.execute(path)
                    await fwd(con)

                xid = await forward(coverage_db, run, settings=case.settings)
                statements = None  # COPY data and bind values are not kept: the images are replayed
            changes = await load_changes(up, xid)
            tables = await load_tables(up, {c.rel for c in changes if c.rel is not None})
            plan = build(changes, tables)
            verdict = await verifier.verify(up, coverage_db, Transaction(
                changes, tables, statements=statements, not_replayable="" if statements else "no statement text",
                read_tables=read), Candidate(plan))
    assert plan.reversible and plan.steps
    assert verdict.backend == verifier.backend.name and verdict.source == "rules"
    if case.id in CANNOT_VERIFY and not verdict.verified:
        assert verdict.status == "could not verify", verdict.summary()
        assert CANNOT_VERIFY[case.id] in verdict.reason, verdict.summary()
        return
    assert verdict.status == "verified", (verdict.reason, verdict.diff)
    assert not verdict.diff and verdict.sample
    assert set(verdict.timings_ms) >= {"schema", "sample", "load", "forward", "inverse", "total"}
    if statements is None:
        assert verdict.forward == "images (no statement text)"
    elif case.id in IMAGES_INSTEAD:
        assert verdict.forward.startswith("images (the statements changed other rows on the sample"), verdict.forward
    else:
        # Statements replay as text; new values that differ (sequences already advanced upstream,
        # now(), random(), session settings) fall back to the captured after-images.
        assert verdict.forward == "statements" or verdict.forward.startswith(
            "images (the statements' new values are not deterministic"), verdict.forward


async def test_add_column_at_commit_verifies_and_a_plan_without_its_ddl_fails(capture_db: str,
                                                                              verifier: Verifier) -> None:
    """ALTER TABLE ... ADD COLUMN in the open transaction: the altered table is locked against the
    sampler until COMMIT, yet the verification must still say verified (from the images); the same
    plan without its DDL step leaves the column behind: failed, with the catalog difference."""
    async with upstream(capture_db) as up:
        await up.execute("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); "
                         "CREATE TABLE other (id int PRIMARY KEY, note text); "
                         "INSERT INTO t SELECT g, g FROM generate_series(1, 30) g; "
                         "INSERT INTO other SELECT g, 'n' || g FROM generate_series(1, 30) g")
        # A first verification builds the schema copy (pg_dump must not wait for the ALTER's lock).
        async with agent_tx(capture_db, "UPDATE t SET v = -v WHERE id <= 3") as agent:
            first = await verifier.verify(up, capture_db, agent.tx(), Candidate(agent.plan))
        assert first.verified, first.summary()
        sql = ("ALTER TABLE other ADD COLUMN flag boolean NOT NULL DEFAULT true; UPDATE t SET v = 0 WHERE id = 7; "
               "UPDATE other SET flag = false, note = 'x' WHERE id = 2")
        async with agent_tx(capture_db, sql) as agent:
            tx = agent.tx()
            assert tx.has_ddl
            kinds = [s.kind for s in agent.plan.steps]
            assert "ddl" in kinds
            ok = await verifier.verify(up, capture_db, tx, Candidate(agent.plan))
            rows_only = Plan(agent.plan.direction, steps=[s for s in agent.plan.steps if s.kind != "ddl"])
            bad = await verifier.verify(up, capture_db, tx, Candidate(rows_only))
    assert ok.verified, (ok.summary(), ok.diff)
    assert ok.forward == "statements"
    assert bad.status == "failed", bad.summary()
    assert any(line.startswith("catalog: not there before the transaction: column public.other.flag")
               for line in bad.diff), bad.diff


async def test_agent_search_path_does_not_fake_a_catalog_difference(capture_db: str, verifier: Verifier) -> None:
    """The agent's own `SET search_path` changes how definitions print (REFERENCES parent vs
    app.parent): the catalog shapes before and after must be read the same way."""
    async with upstream(capture_db) as up:
        await up.execute("CREATE SCHEMA app; CREATE TABLE app.parent (id int PRIMARY KEY); "
                         "CREATE TABLE app.child (id int PRIMARY KEY, pid int REFERENCES app.parent, v int); "
                         "INSERT INTO app.parent VALUES (1), (2); INSERT INTO app.child VALUES (1, 1, 0), (2, 2, 0)")
        statements = ["SET search_path = app", "CREATE INDEX child_v ON child (v)",
                      "UPDATE child SET v = 5 WHERE id = 1"]
        async with agent_tx(capture_db, "; ".join(["SET LOCAL search_path = app", *statements[1:]])) as agent:
            verdict = await verifier.verify(up, capture_db, agent.tx(statements=statements), Candidate(agent.plan))
    assert verdict.verified, (verdict.summary(), verdict.diff)


# --- 2. wrong inverses fail, with a diff naming the table ------------------------------------------

SHOP = """
CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, w int NOT NULL, category text NOT NULL);
INSERT INTO acct SELECT g, g, g * 10, CASE WHEN g % 2 = 0 THEN 'x' ELSE 'y' END FROM generate_series(1, 2000) g;
CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE child (id int PRIMARY KEY, pid int NOT NULL REFERENCES parent ON DELETE CASCADE, v text);
INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 20) g;
INSERT INTO child SELECT g, 1 + g % 20, 'c' || g FROM generate_series(1, 100) g;
CREATE TABLE small_t (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO small_t SELECT g, 0 FROM generate_series(1, 101) g;
CREATE TABLE small_u (id int PRIMARY KEY, ref int NOT NULL);
INSERT INTO small_u SELECT g, g FROM generate_series(1, 101) g WHERE g <> 50;
CREATE TABLE big_t (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO big_t SELECT g, 0 FROM generate_series(1, 1000) g;
CREATE TABLE big_u (id int PRIMARY KEY, ref int NOT NULL);
INSERT INTO big_u SELECT g, g FROM generate_series(1, 1000) g WHERE g <> 500;
CREATE TABLE ev (id int PRIMARY KEY, at timestamptz, r float8, v int);
INSERT INTO ev SELECT g, '2024-01-01', 0.5, g FROM generate_series(1, 10) g;
ANALYZE;
"""


@pytest.fixture(scope="module")
def shop_db(pg: Postgres) -> Iterator[str]:
    """Nothing here commits: every transaction is verified open and rolled back."""
    with database(pg, "sbx_shop", SHOP) as url:
        yield url


def _drop_table_steps(plan: Plan, table: str) -> Candidate:
    steps = [s for s in plan.steps if s.table != table]
    assert len(steps) < len(plan.steps)
    return Candidate(plan=Plan(plan.direction, steps=steps), source="test")


WRONG = {
    # forward, the wrong inverse, the table the diff must name
    "off_by_one_where": ("UPDATE acct SET v = v + 1 WHERE id >= 10 AND id < 20",
                         lambda plan: Candidate(statements=("UPDATE acct SET v = v - 1 WHERE id > 10 AND id < 20",),
                                                source="test"),
                         '"public"."acct"', "(10,11,100,x)"),
    "missing_cascade_restore": ("DELETE FROM parent WHERE id = 1",
                                lambda plan: _drop_table_steps(plan, '"public"."child"'),
                                '"public"."child"', "(20,1,c20)"),
    "wrong_column": ("UPDATE acct SET v = 0 WHERE id = 3",
                     lambda plan: Candidate(statements=("UPDATE acct SET w = 3 WHERE id = 3",), source="test"),
                     '"public"."acct"', "(3,0,3,y)"),
    "deletes_too_much": ("DELETE FROM acct WHERE id IN (2, 4)",
                         lambda plan: Candidate(statements=(
                             "DELETE FROM acct WHERE category = 'x'",
                             "INSERT INTO acct VALUES (2, 2, 20, 'x'), (4, 4, 40, 'x')"), source="test"),
                         '"public"."acct"', "missing after the inverse"),
}


@pytest.mark.parametrize("name", list(WRONG))
async def test_wrong_inverse_fails(shop_db: str, any_verifier: Verifier, name: str) -> None:
    verifier = any_verifier
    sql, wrong, table, evidence = WRONG[name]
    async with upstream(shop_db) as up, agent_tx(shop_db, sql) as agent:
        right = await verifier.verify(up, shop_db, agent.tx(), Candidate(agent.plan))
        verdict = await verifier.verify(up, shop_db, agent.tx(), wrong(agent.plan))
    assert right.verified, (right.summary(), right.diff)  # the same sample proves the right inverse
    assert verdict.status == "failed", verdict.summary()
    assert verdict.source == "test" and verdict.backend == verifier.backend.name
    assert table in verdict.reason
    assert verdict.diff and all(line.startswith(table + ":") for line in verdict.diff), verdict.diff
    assert any(evidence in line for line in verdict.diff), verdict.diff
    if name == "deletes_too_much":
        # The random sample held other 'x' rows, and the over-broad DELETE took them.
        missing = [line for line in verdict.diff if "missing after the inverse" in line]
        assert missing and all(line.endswith(",x)") for line in missing), verdict.diff
        assert verdict.sample['"public"."acct"'] > 10


async def test_inverse_that_raises_fails_with_the_error(shop_db: str, verifier: Verifier) -> None:
    async with upstream(shop_db) as up, agent_tx(shop_db, "UPDATE acct SET v = 1 WHERE id = 1") as agent:
        verdict = await verifier.verify(up, shop_db, agent.tx(), Candidate(
            statements=("UPDATE acct SET v = 1 WHERE id = 1", "UPDATE acct SET nosuch = 1"), source="llm"))
    assert verdict.status == "failed", verdict.summary()
    assert "UndefinedColumnError" in verdict.reason and "nosuch" in verdict.reason
    assert verdict.source == "llm"


# --- 2b. SQL under test runs unprivileged ----------------------------------------------------------

#: Inverses (as a model might propose them) that would reach the sandbox server's files or
#: programs, or climb back to a superuser, and the error each must end in.
ESCAPES = {
    "pg_read_file": ("SELECT pg_read_file('/etc/passwd')", "permission denied for function pg_read_file"),
    "copy_to_program": ("COPY (SELECT 1) TO PROGRAM 'touch {marker}'",
                        "permission denied to COPY to or from an external program"),
    "copy_to_file": ("COPY acct TO '{marker}'", "permission denied to COPY to a file"),
    "lo_export": ("SELECT lo_export(lo_from_bytea(0, 'x'), '{marker}')", "permission denied for function lo_export"),
    "reset_role": ("RESET ROLE; COPY (SELECT 1) TO PROGRAM 'touch {marker}'",
                   "permission denied to COPY to or from an external program"),
    "session_authorization": ("SET SESSION AUTHORIZATION DEFAULT; DO $$ BEGIN EXECUTE format("
                              "'SET SESSION AUTHORIZATION %I', (SELECT min(rolname) FROM pg_roles WHERE rolsuper)); "
                              "END $$", "permission denied to set session authorization"),
    "raise_limits": ("SET temp_file_limit = -1", 'permission denied to set parameter "temp_file_limit"'),
}


@pytest.mark.parametrize("name", list(ESCAPES))
async def test_sql_under_test_cannot_reach_server_files_or_programs(shop_db: str, any_verifier: Verifier,
                                                                      name: str) -> None:
    """The inverse runs as a role that is no superuser: each escape fails with PostgreSQL's own
    error, the verdict is "failed", and nothing happened on the server's machine."""
    where = tempfile.mkdtemp(prefix="dbproxy-escape-")
    os.chmod(where, 0o777)  # were the local sandbox server (another OS user) to write here, it could
    marker = os.path.join(where, name)
    sql, error = ESCAPES[name]
    try:
        async with upstream(shop_db) as up, agent_tx(shop_db, "UPDATE acct SET v = 5 WHERE id = 1") as agent:
            inverse = (sql.format(marker=marker), "UPDATE acct SET v = 1 WHERE id = 1")
            verdict = await any_verifier.verify(up, shop_db, agent.tx(), Candidate(statements=inverse, source="llm"))
            right = await any_verifier.verify(up, shop_db, agent.tx(), Candidate(
                statements=("UPDATE acct SET v = 1 WHERE id = 1",), source="llm"))
        escaped = os.listdir(where)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    assert right.verified, right.summary()  # the same proposal without the escape is fine
    assert verdict.status == "failed", verdict.summary()
    assert "InsufficientPrivilegeError" in verdict.reason and error in verdict.reason, verdict.reason
    assert escaped == []


async def test_agent_statements_replay_unprivileged(shop_db: str, any_verifier: Verifier) -> None:
    """The agent's own statements run as the same role: a statement that reads a server file
    (which worked upstream, where this test's role is a superuser) cannot run in the sandbox,
    and the verdict says so instead of "verified"."""
    sql = "UPDATE acct SET w = length(pg_read_file('/etc/hostname')) WHERE id = 2"
    async with upstream(shop_db) as up, agent_tx(shop_db, sql) as agent:
        verdict = await any_verifier.verify(up, shop_db, agent.tx(), Candidate(agent.plan))
    assert verdict.status == "could not verify", verdict.summary()
    assert "permission denied for function pg_read_file" in verdict.reason, verdict.reason


async def test_sandbox_roles(shop_db: str, any_verifier: Verifier) -> None:
    """Who the sandbox connections are: the runner logs in as itself (no superuser, no server
    file or program roles, even if someone granted it one) and owns the schema copy it verifies on."""
    backend = any_verifier.backend
    async with upstream(shop_db) as up, agent_tx(shop_db, "UPDATE acct SET v = 7 WHERE id = 4") as agent:
        first = await any_verifier.verify(up, shop_db, agent.tx(), Candidate(agent.plan))
        admin = await asyncpg.connect(backend.url("postgres"))
        try:
            await admin.execute("GRANT pg_execute_server_program TO dbproxy_sandbox_runner")
        finally:
            await admin.close()
        async with verifier_on(backend) as again:  # type: ignore[arg-type]
            verdict = await again.verify(up, shop_db, agent.tx(), Candidate(agent.plan))
            copy = await again.prepare(up, shop_db)
            pool = await again._pool(copy)
            who = await pool.fetchrow(
                "SELECT session_user::text AS s, current_user::text AS c, r.rolsuper, "
                "pg_has_role(session_user, 'pg_read_server_files', 'USAGE') OR "
                "pg_has_role(session_user, 'pg_write_server_files', 'USAGE') OR "
                "pg_has_role(session_user, 'pg_execute_server_program', 'USAGE') AS files, "
                "(SELECT d.datdba::regrole::text FROM pg_database d WHERE d.datname = current_database()) AS db_owner, "
                "(SELECT c.relowner::regrole::text FROM pg_class c WHERE c.oid = 'public.acct'::regclass) "
                "AS table_owner, current_setting('temp_file_limit') AS temp_limit "
                "FROM pg_roles r WHERE r.rolname = session_user")
    assert first.verified and verdict.verified, verdict.summary()
    assert dict(who) == {"s": "dbproxy_sandbox_runner", "c": "dbproxy_sandbox_runner", "rolsuper": False,
                         "files": False, "db_owner": "dbproxy_sandbox_runner",
                         "table_owner": "dbproxy_sandbox_runner", "temp_limit": "1GB"}


async def test_a_proxy_preparing_the_runner_keeps_memberships_another_replay_needs(backend: LocalBackend) -> None:
    """Proxies sharing a sandbox server share its runner role. One starting (`roles.prepare`)
    while another is between `grant_named` and its replay must leave the membership that replay
    needs (it used to revoke every membership, and the replay's owner change then failed); what
    makes the runner more than an ordinary role still goes."""
    await backend.start()
    named = f"sbx_named_{os.urandom(3).hex()}"
    secret = unquote(urlsplit(backend.url("postgres")).password or "")  # the Verifier's own, so logins still work
    admin = await asyncpg.connect(backend.url("postgres"))
    try:
        runner = await roles.prepare(admin, secret)
        assert runner is not None
        assert await roles.grant_named(admin, {named}, runner.name) == frozenset()  # proxy A, before its replay
        await admin.execute(f"GRANT pg_read_server_files TO {roles.RUNNER}")
        await roles.prepare(admin, secret)  # proxy B starts meanwhile
        member = await admin.fetchval("SELECT pg_has_role($1, $2, 'MEMBER')", roles.RUNNER, named)
        files = await admin.fetchval("SELECT pg_has_role($1, 'pg_read_server_files', 'MEMBER')", roles.RUNNER)
    finally:
        await admin.execute(f'REVOKE "{named}" FROM {roles.RUNNER}; DROP ROLE "{named}"')
        await admin.close()
    assert member is True, "proxy A's replay may no longer act as the role it names"
    assert files is False


async def test_roles_an_inverse_names(shop_db: str, any_verifier: Verifier) -> None:
    """Owner steps of a rule-made inverse: a role the sandbox does not have is made (NOLOGIN) and
    the runner, a member of it, gives the table to it; one naming the sandbox's superuser is not
    run (the runner never becomes a superuser's member) and the verdict lists it. The same owner
    change in a model's statements is run as written, and fails."""
    ordinary = f"sbx_owner_{os.urandom(3).hex()}"
    admin_role = urlsplit(any_verifier.backend.url("postgres")).username
    assert admin_role
    async with upstream(shop_db) as up, agent_tx(shop_db, "UPDATE acct SET v = 9 WHERE id = 6") as agent:
        plan = agent.plan
        owner = [Step(10**9, "privileges", f'ALTER TABLE acct OWNER TO "{ordinary}"'),
                 Step(10**9 + 1, "privileges", f'ALTER TABLE acct OWNER TO "{admin_role}"')]
        verdict = await any_verifier.verify(up, shop_db, agent.tx(), Candidate(
            plan=Plan(plan.direction, steps=[*plan.steps, *owner]), source="test"))
        model = await any_verifier.verify(up, shop_db, agent.tx(), Candidate(
            statements=("UPDATE acct SET v = 6 WHERE id = 6", f'ALTER TABLE acct OWNER TO "{admin_role}"'),
            source="llm"))
    admin = await asyncpg.connect(any_verifier.backend.url("postgres"))
    try:
        made = await admin.fetchrow("SELECT rolcanlogin, rolsuper, pg_has_role('dbproxy_sandbox_runner', oid, "
                                    "'MEMBER') AS member FROM pg_roles WHERE rolname = $1", ordinary)
        above = await admin.fetchval("SELECT pg_has_role('dbproxy_sandbox_runner', $1, 'MEMBER')", admin_role)
        await admin.execute(f'REVOKE "{ordinary}" FROM dbproxy_sandbox_runner; DROP ROLE "{ordinary}"')
    finally:
        await admin.close()
    assert verdict.verified, verdict.summary()
    assert verdict.not_run == [f'ALTER TABLE acct OWNER TO "{admin_role}"'], verdict.not_run
    assert dict(made) == {"rolcanlogin": False, "rolsuper": False, "member": True}
    assert above is False
    assert model.status == "failed" and "InsufficientPrivilegeError" in model.reason, model.summary()


# --- 3. representativeness ------------------------------------------------------------------------

#: Random rows only for the tables statements read (not copied whole), to exercise widening.
NO_WHOLE = SampleOptions(read_whole=0)


async def test_effect_on_unsampled_rows_is_not_verified(shop_db: str, backend: LocalBackend) -> None:
    """Which big_t row goes depends on all of big_u: a sample of big_u deletes many more."""
    sql = "DELETE FROM big_t WHERE id NOT IN (SELECT ref FROM big_u)"
    async with verifier_on(backend, options=NO_WHOLE) as verifier, upstream(shop_db) as up, \
            agent_tx(shop_db, sql) as agent:
        assert len(agent.changes) == 1
        read = frozenset({await _oid(up, "big_u")})
        verdict = await verifier.verify(up, shop_db, agent.tx(read=read), Candidate(agent.plan))
    assert verdict.widened
    if not verdict.verified:
        assert verdict.status == "could not verify"
        assert "sample not representative" in verdict.reason and "public.big_t: " in verdict.reason


async def test_widened_sample_verifies(shop_db: str, backend: LocalBackend) -> None:
    """50 random rows of small_u do not show which small_t row is unreferenced; 500 (all) do."""
    sql = "DELETE FROM small_t WHERE id NOT IN (SELECT ref FROM small_u)"
    async with verifier_on(backend, options=NO_WHOLE) as verifier, upstream(shop_db) as up, \
            agent_tx(shop_db, sql) as agent:
        read = frozenset({await _oid(up, "small_u")})
        verdict = await verifier.verify(up, shop_db, agent.tx(read=read), Candidate(agent.plan))
    assert verdict.verified, verdict.summary()
    assert verdict.widened
    assert verdict.sample == {'"public"."small_t"': 101, '"public"."small_u"': 100}


async def test_tables_only_read_are_copied_whole(shop_db: str, verifier: Verifier) -> None:
    """By default a table the statement only reads comes whole (up to `read_whole` rows), so the
    replay meets the same rows at once: no widening needed."""
    sql = "DELETE FROM small_t WHERE id NOT IN (SELECT ref FROM small_u)"
    async with upstream(shop_db) as up, agent_tx(shop_db, sql) as agent:
        read = frozenset({await _oid(up, "small_u")})
        verdict = await verifier.verify(up, shop_db, agent.tx(read=read), Candidate(agent.plan))
    assert verdict.verified, verdict.summary()
    assert not verdict.widened
    assert verdict.sample['"public"."small_u"'] == 100, verdict.sample


async def test_sample_without_the_read_rows_goes_forward_by_images(shop_db: str, backend: LocalBackend) -> None:
    """No random rows, not even widened: small_u is empty in the sandbox, the UPDATE meets no row
    there. The statements cannot be replayed, so the captured changes bring the sample (which
    holds the rows they changed) to the after-state, and the inverse is proved against that; the
    verdict says how. A wrong inverse still fails there."""
    sql = "UPDATE small_t SET v = v + 1 WHERE id IN (SELECT ref FROM small_u WHERE ref <= 10)"
    async with verifier_on(backend, options=SampleOptions(random_rows=0, neighbours=0, read_whole=0)) as v, \
            upstream(shop_db) as up, agent_tx(shop_db, sql) as agent:
        read = frozenset({await _oid(up, "small_u")})
        verdict = await v.verify(up, shop_db, agent.tx(read=read), Candidate(agent.plan))
        wrong = replace(agent.plan, steps=agent.plan.steps[1:])
        failed = await v.verify(up, shop_db, agent.tx(read=read), Candidate(wrong))
    assert verdict.verified, verdict.summary()
    assert verdict.forward.startswith("images (the statements changed other rows on the sample than upstream")
    assert 'public.small_t: 0 rows updated on the sample, 10 upstream' in verdict.forward
    assert verdict.widened
    assert failed.status == "failed", failed.summary()


async def test_not_deterministic_values_verify_from_images(shop_db: str, verifier: Verifier) -> None:
    sql = "UPDATE ev SET at = clock_timestamp(), r = random() WHERE id <= 3"
    async with upstream(shop_db) as up, agent_tx(shop_db, sql) as agent:
        verdict = await verifier.verify(up, shop_db, agent.tx(), Candidate(agent.plan))
        wrong = await verifier.verify(up, shop_db, agent.tx(), Candidate(
            statements=("UPDATE ev SET at = '2024-01-01', r = 0.5 WHERE id <= 2",), source="test"))
    assert verdict.verified, verdict.summary()
    assert verdict.forward.startswith("images (the statements' new values are not deterministic")
    # The images are the real new values: an inverse that misses a row still fails.
    assert wrong.status == "failed" and any(line.startswith('"public"."ev": missing') for line in wrong.diff)


async def test_not_deterministic_values_with_ddl_verify_from_images(shop_db: str, verifier: Verifier) -> None:
    """Announced DDL runs again as it ran (the redo plan), the rows go to their captured images."""
    sql = "CREATE TABLE ev_copy (a int); UPDATE ev SET r = random() WHERE id = 1"
    async with upstream(shop_db) as up, agent_tx(shop_db, sql) as agent:
        verdict = await verifier.verify(up, shop_db, agent.tx(), Candidate(agent.plan))
    assert verdict.verified, verdict.summary()
    assert verdict.forward.startswith("images (the statements' new values are not deterministic"), verdict.forward


# --- 4. masking ------------------------------------------------------------------------------------

PEOPLE = """
CREATE TABLE teams (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE NOT NULL, team int REFERENCES teams,
                    secret text NOT NULL, pin int, tags text[]);
INSERT INTO teams SELECT g, 'team-' || g FROM generate_series(1, 5) g;
INSERT INTO users SELECT g, 'u' || g || '@example.com', 1 + g % 5, 'secret-' || g, 1000 + g, ARRAY['t' || g]
FROM generate_series(1, 40) g;
"""


async def test_masked_context_rows_carry_no_secrets(capture_db: str, backend: LocalBackend) -> None:
    options = SampleOptions(mask=frozenset({"public.users"}))
    async with upstream(capture_db) as up:
        await up.execute(PEOPLE)
        rows = await up.fetch("SELECT id, to_json(u)::text AS j FROM users u")
        original = {r["id"]: json.loads(r["j"]) for r in rows}
        async with verifier_on(backend, options=options) as v, agent_tx(
                capture_db, "UPDATE users SET secret = 'rotated', pin = 0 WHERE id = 5") as agent:
            verdict = await v.verify(up, capture_db, agent.tx(), Candidate(agent.plan))
            sample = await collect(up, agent.changes, options=options)
            bare = await collect(up, agent.changes, options=SampleOptions(mask=frozenset({"users"})))
            plain = await collect(up, agent.changes)
    assert verdict.verified, verdict.summary()
    assert verdict.masked == ['"public"."users"']

    users = sample.tables[agent.oid("users")]
    assert users.masked
    assert [json.loads(r) for r in users.before] == [original[5]]  # the affected row, intact
    assert len(users.context) >= 30
    for row in map(json.loads, users.context):
        real = original[row["id"]]
        assert row["id"] != 5
        # Key, unique and foreign-key columns keep their values, so the rows still join.
        assert (row["email"], row["team"]) == (real["email"], real["team"])
        assert "secret" not in row["secret"] and row["secret"] != real["secret"]
        assert row["pin"] != real["pin"] and row["tags"] == []
    assert "secret-" not in json.dumps(users.context)
    # The referenced teams are not masked.
    teams = next(s for s in sample.tables.values() if s.info.table == "teams")
    assert not teams.masked and teams.context and all("team-" in r for r in teams.context)
    # A bare table name masks too; no mask keeps the values.
    assert bare.tables[agent.oid("users")].masked
    assert "secret-" not in json.dumps(bare.tables[agent.oid("users")].context)
    assert "secret-" in json.dumps(plain.tables[agent.oid("users")].context)


# --- 5. could not verify ----------------------------------------------------------------------------

async def test_foreign_tables_and_credentials_stay_out(capture_db: str, verifier: Verifier,
                                                       backend: LocalBackend) -> None:
    async with upstream(capture_db) as up:
        await up.execute("CREATE FOREIGN DATA WRAPPER dummy; CREATE SERVER elsewhere FOREIGN DATA WRAPPER dummy "
                         "OPTIONS (host 'db.example.com'); "
                         "CREATE USER MAPPING FOR CURRENT_USER SERVER elsewhere OPTIONS (password 'hunter2'); "
                         "CREATE FOREIGN TABLE remote (id int, v text) SERVER elsewhere; "
                         "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        # The dummy wrapper cannot write: the changes are what capture would have recorded.
        remote = await _oid(up, "remote")
        tables = await load_tables(up, {remote})
        assert tables[remote].relkind == "f"
        changes = [Change(1, "U", remote, '{"id":1,"v":"a"}', '{"id":1,"v":"b"}')]
        on_foreign = await verifier.verify(up, capture_db, Transaction(
            changes, tables, statements=["UPDATE remote SET v = 'b' WHERE id = 1"]), Candidate(build(changes, tables)))
        # A local table's transaction in the same database verifies: the schema copy left the
        # foreign objects (and the credentials in them) out.
        async with agent_tx(capture_db, "UPDATE t SET v = 'c' WHERE id = 1") as agent:
            local = await verifier.verify(up, capture_db, agent.tx(), Candidate(agent.plan))
    assert on_foreign.status == "could not verify", on_foreign.summary()
    assert 'foreign table "public"."remote"' in on_foreign.reason
    assert local.verified, local.summary()
    ident = hashlib.md5(upstream_identity(capture_db).encode()).hexdigest()[:8]
    [copy] = [d for d in await _sandbox_databases(backend) if d.startswith(f"dbproxy_sbx_{ident}_")]
    con = await asyncpg.connect(backend.url(copy))
    try:
        found = await con.fetchval("SELECT (SELECT count(*) FROM pg_foreign_data_wrapper) + "
                                   "(SELECT count(*) FROM pg_foreign_server) + "
                                   "(SELECT count(*) FROM pg_user_mapping) + (SELECT count(*) FROM pg_foreign_table)")
        assert await con.fetchval("SELECT to_regclass('public.t') IS NOT NULL")
        problems = json.loads(await con.fetchval(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()"))
    finally:
        await con.close()
    assert found == 0
    assert any("FOREIGN TABLE public remote" in p for p in problems), problems  # named as left out
    assert "hunter2" not in json.dumps(problems)


async def test_deadline_gives_could_not_verify(shop_db: str, backend: LocalBackend) -> None:
    async with upstream(shop_db) as up, agent_tx(shop_db, "UPDATE acct SET v = 0 WHERE id = 1") as agent:
        async with verifier_on(backend, deadline=0.001) as v:
            instant = await v.verify(up, shop_db, agent.tx(), Candidate(agent.plan))
        # A forward that hangs in the sandbox is stopped by the overall deadline.
        async with verifier_on(backend, deadline=1.5) as v:
            t0 = time.monotonic()
            hung = await v.verify(up, shop_db, agent.tx(statements=[agent.sql, "SELECT pg_sleep(30)"]),
                                  Candidate(agent.plan))
            took = time.monotonic() - t0
        sandbox = await asyncpg.connect(backend.url("postgres"))
        try:  # the hung statement was cancelled, not left to run into the statement timeout
            sleeping = await sandbox.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' "
                                              "AND state = 'active' AND pid <> pg_backend_pid()")
        finally:
            await sandbox.close()
        async with verifier_on(backend) as v:
            after = await v.verify(up, shop_db, agent.tx(), Candidate(agent.plan))
    assert instant.status == "could not verify" and "did not answer within" in instant.reason
    assert hung.status == "could not verify" and "did not answer within 2s" in hung.reason, hung.summary()
    assert took < 10 and sleeping == 0
    assert after.verified, after.summary()  # the sandbox is not left stuck


async def test_unreachable_server_backend(shop_db: str) -> None:
    v = Verifier(ServerBackend("postgresql://nobody:x@127.0.0.1:1/db"), timeout=20)
    try:
        async with upstream(shop_db) as up, agent_tx(shop_db, "UPDATE acct SET v = 0 WHERE id = 1") as agent:
            verdict = await v.verify(up, shop_db, agent.tx(), Candidate(agent.plan))
    finally:
        await v.close()
    assert verdict.status == "could not verify"
    assert verdict.reason.startswith("the sandbox server is unreachable"), verdict.reason
    assert "x@" not in verdict.reason  # no credentials in what reviewers read
    assert verdict.backend == "server"


# --- 6. the local backend's lifecycle ---------------------------------------------------------------

async def test_local_backend_reuse_crash_and_rebuild(capture_db: str, tmp_path: Path) -> None:
    data = tmp_path / "sbx"
    first = LocalBackend(data, stop_on_close=True)
    try:
        async with upstream(capture_db) as up:
            await up.execute("CREATE TABLE t (id int PRIMARY KEY, v int); "
                             "INSERT INTO t SELECT g, g FROM generate_series(1, 20) g")
            async with agent_tx(capture_db, "UPDATE t SET v = 0 WHERE id = 3") as agent:
                tx, candidate = agent.tx(), Candidate(agent.plan)
                # start: a cluster of its own, running, reachable
                v1 = Verifier(first)
                cold = await v1.verify(up, capture_db, tx, candidate)
                assert cold.verified, cold.summary()
                assert first.cluster is not None and first.cluster.is_running()
                cluster = first.cluster
                pid, port = cluster.postmaster_pid(), cluster.port
                version_mtime = (cluster.data_dir / "PG_VERSION").stat().st_mtime_ns
                copies = await _sandbox_databases(first)
                assert len(copies) == 1

                # reuse: another backend on the same directory (a proxy restart) finds the same
                # running cluster and the schema copy the first one built
                second = LocalBackend(data)
                v2 = Verifier(second)
                warm = await v2.verify(up, capture_db, tx, candidate)
                assert warm.verified, warm.summary()
                assert second.cluster is not None and second.cluster.port == port
                assert second.cluster.postmaster_pid() == pid
                assert (second.cluster.data_dir / "PG_VERSION").stat().st_mtime_ns == version_mtime
                assert await _sandbox_databases(second) == copies
                assert warm.timings_ms["schema"] < cold.timings_ms["schema"] / 2

                # crash: the server is killed under a verifier holding pooled connections
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                await _wait_gone(pid)
                crashed = await v2.verify(up, capture_db, tx, candidate)
                assert crashed.verified, crashed.summary()
                assert second.cluster.is_running() and second.cluster.postmaster_pid() != pid
                assert await _sandbox_databases(second) == copies  # crash recovery kept the copy
                await v2.close()

                # ruined: a data directory that will not start is rebuilt from scratch
                cluster.stop()
                (cluster.data_dir / "global" / "pg_control").unlink()
                third = LocalBackend(data, stop_on_close=True)
                v3 = Verifier(third)
                rebuilt = await v3.verify(up, capture_db, tx, candidate)
                assert rebuilt.verified, rebuilt.summary()
                assert third.cluster is not None and third.cluster.is_running()
                assert (third.cluster.data_dir / "PG_VERSION").stat().st_mtime_ns != version_mtime
                assert len(await _sandbox_databases(third)) == 1
                await v3.close()
                assert not third.cluster.is_running()  # stop_on_close
                await v1.close()
    finally:
        if first.cluster is not None:
            first.cluster.stop(mode="immediate")


async def _sandbox_databases(backend: LocalBackend) -> list[str]:
    con = await asyncpg.connect(backend.url("postgres"))
    try:
        found = await con.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'dbproxy_sbx_%'")
        return sorted(r[0] for r in found)
    finally:
        await con.close()


async def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} did not exit")


# --- 8. the verdict cache ------------------------------------------------------------------------------

def test_statement_shape() -> None:
    shape = cache.statement_shape
    a = shape(["UPDATE t SET v = 1 WHERE id = 10", "DELETE FROM t WHERE name = 'x'"])
    assert a == shape(["UPDATE t SET v = 2 WHERE id = 99", "DELETE FROM t WHERE name = 'it''s'"])
    assert a == shape(["UPDATE t SET v = $1 WHERE id = $2", "DELETE FROM t WHERE name = $3"])
    assert a != shape(["UPDATE t SET w = 1 WHERE id = 10", "DELETE FROM t WHERE name = 'x'"])
    assert a != shape(["UPDATE t SET v = 1 WHERE id > 10", "DELETE FROM t WHERE name = 'x'"])
    assert a != shape(["DELETE FROM t WHERE name = 'x'", "UPDATE t SET v = 1 WHERE id = 10"])  # order counts
    assert a != shape(["UPDATE t SET v = 1 WHERE id = 10; DELETE FROM t WHERE name = 'x'"])
    # A number inside a string is part of that one literal; a literal cannot fake SQL either.
    assert shape(["SELECT 'abc 123'"]) == shape(["SELECT 'x'"]) != shape(["SELECT 'x', 1"])
    assert shape(["UPDATE t SET v = 'a'' OR id = 1 --'"]) == shape(["UPDATE t SET v = 'b'"])
    # Texts without quotes go through the cheap number shape: the digest is the one the lexer gives.
    for sql in ["UPDATE t1 SET v = v + -5000 WHERE id = 1.5e3 AND x2 = .5", "SELECT 0x1F, 1_000, $1, t.c3 FROM t",
                "INSERT INTO h (a, b) VALUES (12, 3.25), (4e-2, 99)"]:
        assert shape([sql]) == hashlib.sha256(cache._normalized(sql).encode() + b"\x00").hexdigest(), sql


def test_verdict_cache() -> None:
    c = cache.VerdictCache(size=2)
    shape = cache.statement_shape(["UPDATE t SET v = 1"])
    ok = Verdict("verified", forward="statements")
    c.put("db", shape, "fp1", ok)
    c.put("db", shape, "fp2", Verdict("failed", "wrong"))
    c.put("db", shape, "fp3", Verdict.could_not("no sandbox"))
    c.put("db", shape, None, ok)  # no fingerprint: never cached
    assert c.get("db", shape, "fp1") is ok
    assert c.get("db", shape, "fp2") is None and c.get("db", shape, "fp3") is None
    assert c.get("db", shape, "other fingerprint") is None
    assert c.get("other db", shape, "fp1") is None
    assert c.get("db", cache.statement_shape(["UPDATE t SET w = 1"]), "fp1") is None
    assert c.get("db", shape, None) is None
    assert (c.hits, c.misses) == (1, 5)
    # Bounded, least recently used out first.
    c.put("db", shape, "fp4", ok)
    c.get("db", shape, "fp1")
    c.put("db", shape, "fp5", ok)
    assert c.get("db", shape, "fp1") is ok and c.get("db", shape, "fp4") is None


async def test_verifiers_sharing_a_sandbox_server_build_one_schema_copy(capture_db: str, tmp_path: Path) -> None:
    """Two proxies (two verifiers, each with its own in-process lock) on one sandbox server copy
    the same upstream schema at the same moment: one builds, the other waits and reuses it; neither
    drops the other's half-built copy, and both verify."""
    backend = LocalBackend(tmp_path / "sbx", stop_on_close=True)
    other = LocalBackend(tmp_path / "sbx")
    try:
        async with upstream(capture_db) as up, upstream(capture_db) as up2:
            await up.execute("CREATE TABLE t (id int PRIMARY KEY, v int); "
                             "INSERT INTO t SELECT g, g FROM generate_series(1, 20) g")
            await backend.start()
            v1, v2 = Verifier(backend), Verifier(other)
            try:
                names = await asyncio.gather(v1.prepare(up, capture_db), v2.prepare(up2, capture_db))
                assert names[0] == names[1]
                assert await _sandbox_databases(backend) == [names[0]]
                async with agent_tx(capture_db, "UPDATE t SET v = 0 WHERE id = 3") as agent:
                    tx, candidate = agent.tx(), Candidate(agent.plan)
                    verdicts = await asyncio.gather(v1.verify(up, capture_db, tx, candidate),
                                                    v2.verify(up2, capture_db, tx, candidate))
                    assert all(v.verified for v in verdicts), [v.summary() for v in verdicts]
            finally:
                await v2.close()
                await v1.close()
    finally:
        if backend.cluster is not None:
            backend.cluster.stop(mode="immediate")

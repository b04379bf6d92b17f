"""Hold mode: every way an agent could escape the hold, each through a real client (psycopg 3, psql).

For each escape the test asserts, from a second *direct* connection to PostgreSQL, that nothing the
agent did became visible or committed, and for refusals the proxy's SQLSTATE and message, and that
the agent's session is still usable afterwards. Every test releases what it held (rollback via
the review API) so the session-scoped `hold_proxy` stays clean for the next one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pgerrors
from psycopg.pq import TransactionStatus

from tests.conftest import AGENTS_ROLE, Postgres, RunningProxy, run_tool

HELD = re.compile(r"held for review as #(\d+)")
#: The agent still acts as the agents' role, logged in as its own login role.
SAME_IDENTITY = "SELECT current_user = 'dbproxy_agents' AND session_user = 'dbproxy_agent_agent'"
REFUSED = "dbproxy refused this statement"

# -- helpers (shared with test_hold_clients.py) -------------------------------------------------


def api(hp: RunningProxy, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One review-API request; returns (HTTP status, decoded JSON body). A body's "reviewer" picks
    whose token makes it."""
    return hp.review_request(method, path, body)


def pending_ids(hp: RunningProxy) -> set[int]:
    status, body = api(hp, "GET", "/v1/pending")
    assert status == 200, body
    return {int(t["id"]) for t in body}


class Review:
    """The reviewer's side: what became pending during this test, decisions, and cleanup."""

    def __init__(self, hp: RunningProxy) -> None:
        self.hp = hp
        self.before = pending_ids(hp)

    def new(self) -> set[int]:
        return pending_ids(self.hp) - self.before

    def only(self) -> int:
        ids = self.new()
        assert len(ids) == 1, f"expected exactly one new pending transaction, got {sorted(ids)}"
        return ids.pop()

    def show(self, tx_id: int) -> dict[str, Any]:
        status, body = api(self.hp, "GET", f"/v1/transactions/{tx_id}")
        assert status == 200, body
        return body

    def commit(self, tx_id: int) -> dict[str, Any]:
        status, body = api(self.hp, "POST", f"/v1/transactions/{tx_id}/commit", {"reviewer": "pytest"})
        assert status == 200, body
        assert body["outcome"] == "committed", body
        return body

    def rollback(self, tx_id: int) -> dict[str, Any]:
        status, body = api(self.hp, "POST", f"/v1/transactions/{tx_id}/rollback", {"reviewer": "pytest"})
        assert status == 200, body
        assert body["outcome"] == "rolled back", body
        return body

    def release_all(self) -> None:
        """Roll back everything this test left pending (its locks would block other tests)."""
        for tx_id in sorted(self.new()):
            api(self.hp, "POST", f"/v1/transactions/{tx_id}/rollback", {"reviewer": "pytest-cleanup"})


@dataclass
class Agent:
    """A psycopg connection through the hold proxy, with the notices it received."""

    conn: psycopg.Connection[Any]
    notices: list[str] = field(default_factory=list)  # primary messages (a Diagnostic dies with its handler)

    def execute(self, sql: str, params: Any = None) -> psycopg.Cursor[Any]:
        return self.conn.execute(sql, params)  # type: ignore[arg-type]

    def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.execute(sql, params).fetchall()

    def held_ids(self) -> list[int]:
        return [int(m.group(1)) for n in self.notices if (m := HELD.search(n))]


@contextmanager
def agent(hp: RunningProxy, *, autocommit: bool = True, **kw: Any) -> Iterator[Agent]:
    conn = psycopg.connect(hp.url(), autocommit=autocommit, connect_timeout=10, **kw)
    a = Agent(conn)
    conn.add_notice_handler(lambda d: a.notices.append(d.message_primary or ""))
    try:
        yield a
    finally:
        conn.close()


def direct(pg: Postgres, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """One statement on a second, direct superuser connection (autocommit): the outside view."""
    with psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=10) as conn:
        conn.execute("SET lock_timeout = '5s'")
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def ids(pg: Postgres, table: str) -> list[int]:
    return [r[0] for r in direct(pg, f"SELECT id FROM {table} ORDER BY id")]


def agent_ids(a: Agent, table: str) -> list[int]:
    return [r[0] for r in a.rows(f"SELECT id FROM {table} ORDER BY id")]


INITIAL = [1, 2, 3]


@pytest.fixture
def review(hold_proxy: RunningProxy) -> Iterator[Review]:
    r = Review(hold_proxy)
    try:
        yield r
    finally:
        r.release_all()


@pytest.fixture
def table(pg: Postgres, unique_name: str, review: Review) -> Iterator[str]:
    """A fresh table (id int primary key, v text) with rows 1, 2, 3, created directly."""
    direct(pg, f"DROP TABLE IF EXISTS {unique_name}")
    direct(pg, f"CREATE TABLE {unique_name} (id int PRIMARY KEY, v text)")
    direct(pg, f"INSERT INTO {unique_name} VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    try:
        yield unique_name
    finally:
        review.release_all()  # before the DROP: a held transaction would block it
        direct(pg, f"DROP TABLE IF EXISTS {unique_name}")


@pytest.fixture
def marker_dir() -> Iterator[Path]:
    """A directory the database server's OS user can write to (pytest's tmp_path is private to
    the test's user), so that a program or file write that escaped would leave a file here."""
    d = Path(tempfile.mkdtemp(prefix="dbproxy-escape-"))
    os.chmod(d, 0o777)  # the point: the server's OS user can write here
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def assert_usable(a: Agent) -> None:
    """The agent's session still works and is outside any transaction."""
    assert a.rows("SELECT 41 + 1") == [(42,)]
    assert a.conn.info.transaction_status in (TransactionStatus.IDLE, TransactionStatus.INTRANS)


def assert_refused(exc: pytest.ExceptionInfo[psycopg.Error], sqlstate: str, *words: str) -> None:
    diag = exc.value.diag
    assert diag.sqlstate == sqlstate, (diag.sqlstate, diag.message_primary)
    message = diag.message_primary or ""
    for w in words:
        assert w.lower() in message.lower(), message


# -- COMMIT in a query string, COMMIT AND CHAIN, END ----------------------------------------------


def test_commit_then_delete_in_one_query_string(pg, hold_proxy, table, review):
    with agent(hold_proxy) as a:
        a.execute("BEGIN")
        a.execute(f"INSERT INTO {table} VALUES (10, 'agent')")
        a.execute(f"COMMIT; DELETE FROM {table}")
        assert a.conn.info.transaction_status == TransactionStatus.IDLE
        assert agent_ids(a, table) == []  # the agent sees its own chain: insert, then delete
        assert ids(pg, table) == INITIAL  # neither the insert nor the delete escaped
        tx = review.only()
        assert tx in a.held_ids()
    assert ids(pg, table) == INITIAL  # disconnecting commits nothing either
    review.rollback(tx)
    assert ids(pg, table) == INITIAL
    assert review.new() == set()


def test_begin_insert_commit_delete_in_one_query_string(pg, hold_proxy, table, review):
    with agent(hold_proxy) as a:
        a.execute(f"BEGIN; INSERT INTO {table} VALUES (10, 'agent'); COMMIT; DELETE FROM {table} WHERE id <= 2")
        assert agent_ids(a, table) == [3, 10]
        assert ids(pg, table) == INITIAL
        tx = review.only()
        assert a.held_ids() and set(a.held_ids()) == {tx}
        statements = [s["sql"] for s in review.show(tx)["statements"]]
        assert any("DELETE" in s.upper() for s in statements), statements
    review.rollback(tx)
    assert ids(pg, table) == INITIAL


def test_end_then_delete_in_one_query_string(pg, hold_proxy, table, review):
    with agent(hold_proxy) as a:
        a.execute("BEGIN")
        a.execute(f"UPDATE {table} SET v = 'changed' WHERE id = 1")
        a.execute(f"END; DELETE FROM {table} WHERE id = 2")
        assert agent_ids(a, table) == [1, 3]
        assert a.rows(f"SELECT v FROM {table} WHERE id = 1") == [("changed",)]
        assert ids(pg, table) == INITIAL
        assert direct(pg, f"SELECT v FROM {table} WHERE id = 1") == [("a",)]
        tx = review.only()
    review.rollback(tx)
    assert ids(pg, table) == INITIAL
    assert direct(pg, f"SELECT v FROM {table} WHERE id = 1") == [("a",)]


def test_commit_and_chain(pg, hold_proxy, table, review):
    with agent(hold_proxy) as a:
        a.execute("BEGIN")
        a.execute(f"INSERT INTO {table} VALUES (10, 'first')")
        a.execute("COMMIT AND CHAIN")
        assert a.conn.info.transaction_status == TransactionStatus.INTRANS  # a new agent transaction
        assert ids(pg, table) == INITIAL
        a.execute(f"INSERT INTO {table} VALUES (11, 'second')")
        a.execute("COMMIT")
        assert a.conn.info.transaction_status == TransactionStatus.IDLE
        assert agent_ids(a, table) == [*INITIAL, 10, 11]
        assert ids(pg, table) == INITIAL
        tx = review.only()
        assert set(a.held_ids()) == {tx}
    review.rollback(tx)
    assert ids(pg, table) == INITIAL


def test_commit_and_chain_then_rollback_keeps_only_the_first(pg, hold_proxy, table, review):
    with agent(hold_proxy) as a:
        a.execute("BEGIN")
        a.execute(f"INSERT INTO {table} VALUES (10, 'first')")
        a.execute("COMMIT AND CHAIN")
        a.execute(f"INSERT INTO {table} VALUES (11, 'second')")
        a.execute("ROLLBACK")  # only the chained transaction
        assert agent_ids(a, table) == [*INITIAL, 10]
        assert ids(pg, table) == INITIAL
        tx = review.only()
    review.commit(tx)
    assert ids(pg, table) == [*INITIAL, 10]


def test_end(pg, hold_proxy, table, review):
    with agent(hold_proxy) as a:
        a.execute("BEGIN")
        a.execute(f"INSERT INTO {table} VALUES (10, 'agent')")
        a.execute("END")
        assert a.conn.info.transaction_status == TransactionStatus.IDLE
        assert agent_ids(a, table) == [*INITIAL, 10]
        assert ids(pg, table) == INITIAL
        tx = review.only()
        assert a.held_ids() == [tx]
    review.rollback(tx)
    assert ids(pg, table) == INITIAL


# -- two-phase commit -------------------------------------------------------------------------------


def test_prepare_transaction_is_refused(pg, hold_proxy, table, review):
    gid = f"dbproxy-test-{uuid.uuid4().hex[:8]}"
    with agent(hold_proxy) as a:
        a.execute("BEGIN")
        a.execute(f"INSERT INTO {table} VALUES (10, 'agent')")
        with pytest.raises(psycopg.Error) as exc:
            a.execute(f"PREPARE TRANSACTION '{gid}'")
        assert_refused(exc, "42501", REFUSED, "PREPARE TRANSACTION")
        assert direct(pg, "SELECT gid FROM pg_prepared_xacts") == []
        assert ids(pg, table) == INITIAL
        assert a.conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(pgerrors.InFailedSqlTransaction):
            a.execute("SELECT 1")
        a.execute("ROLLBACK")
        assert agent_ids(a, table) == INITIAL
        assert_usable(a)
    assert direct(pg, "SELECT gid FROM pg_prepared_xacts") == []
    assert ids(pg, table) == INITIAL
    assert review.new() == set()


def test_prepare_transaction_after_held_work_is_refused(pg, hold_proxy, table, review):
    gid = f"dbproxy-test-{uuid.uuid4().hex[:8]}"
    with agent(hold_proxy) as a:
        a.execute(f"INSERT INTO {table} VALUES (10, 'held')")  # held: the chain is open upstream
        tx = review.only()
        a.execute("BEGIN")
        with pytest.raises(psycopg.Error) as exc:
            a.execute(f"PREPARE TRANSACTION '{gid}'")
        assert_refused(exc, "42501", REFUSED)
        a.execute("ROLLBACK")
        assert agent_ids(a, table) == [*INITIAL, 10]  # the held chain survived
        assert direct(pg, "SELECT gid FROM pg_prepared_xacts") == []
        assert ids(pg, table) == INITIAL
    review.rollback(tx)
    assert ids(pg, table) == INITIAL


def test_commit_prepared_is_refused(pg, hold_proxy, table, review):
    with agent(hold_proxy) as a:
        with pytest.raises(psycopg.Error) as exc:
            a.execute("COMMIT PREPARED 'dbproxy-nonexistent'")
        assert_refused(exc, "42501", REFUSED, "COMMIT PREPARED")
        with pytest.raises(psycopg.Error) as exc:
            a.execute("ROLLBACK PREPARED 'dbproxy-nonexistent'")
        assert_refused(exc, "42501", REFUSED, "ROLLBACK PREPARED")
        assert_usable(a)
    assert review.new() == set()


# -- procedures that COMMIT ----------------------------------------------------------------------


@pytest.fixture
def committing_procedure(pg: Postgres, table: str) -> Iterator[str]:
    name = f"{table}_proc"
    direct(pg, f"""CREATE PROCEDURE {name}() LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO {table} VALUES (20, 'before commit');
            COMMIT;
            INSERT INTO {table} VALUES (21, 'after commit');
        END $$""")
    try:
        yield name
    finally:
        direct(pg, f"DROP PROCEDURE IF EXISTS {name}()")


def test_procedure_that_commits_fails(pg, hold_proxy, table, committing_procedure, review):
    with agent(hold_proxy) as a:
        with pytest.raises(psycopg.Error) as exc:
            a.execute(f"CALL {committing_procedure}()")
        assert exc.value.diag.sqlstate == "2D000", exc.value.diag.message_primary
        assert ids(pg, table) == INITIAL
        assert agent_ids(a, table) == INITIAL
        assert_usable(a)
    assert ids(pg, table) == INITIAL
    assert review.new() == set()


def test_procedure_that_commits_fails_inside_a_held_chain(pg, hold_proxy, table, committing_procedure, review):
    with agent(hold_proxy) as a:
        a.execute(f"INSERT INTO {table} VALUES (10, 'held')")
        tx = review.only()
        with pytest.raises(psycopg.Error) as exc:
            a.execute(f"CALL {committing_procedure}()")
        assert exc.value.diag.sqlstate == "2D000", exc.value.diag.message_primary
        assert ids(pg, table) == INITIAL
        assert agent_ids(a, table) == [*INITIAL, 10]  # the chain survives the failed CALL
        a.execute("BEGIN")
        with pytest.raises(psycopg.Error) as exc:
            a.execute(f"CALL {committing_procedure}()")
        assert exc.value.diag.sqlstate == "2D000", exc.value.diag.message_primary
        a.execute("ROLLBACK")
        assert agent_ids(a, table) == [*INITIAL, 10]
        assert ids(pg, table) == INITIAL
        assert review.new() == {tx}
    review.rollback(tx)
    assert ids(pg, table) == INITIAL


# -- identity and replication role -------------------------------------------------------------


SESSION_ESCAPES = [
    pytest.param("SET SESSION AUTHORIZATION postgres", "SESSION AUTHORIZATION", id="set-session-authorization"),
    pytest.param("SET ROLE postgres", "SET ROLE", id="set-role"),
    pytest.param("SET LOCAL ROLE postgres", "ROLE", id="set-local-role"),
    pytest.param("RESET ROLE", "RESET ROLE", id="reset-role"),
    pytest.param("RESET SESSION AUTHORIZATION", "SESSION AUTHORIZATION", id="reset-session-authorization"),
    pytest.param("SET session_replication_role = replica", "session_replication_role", id="replication-role"),
    pytest.param("SET LOCAL session_replication_role TO replica", "session_replication_role",
                 id="local-replication-role"),
    pytest.param("SELECT set_config('session_replication_role', 'replica', false)", "session_replication_role",
                 id="set-config-replication-role"),
    pytest.param("SELECT set_config('role', 'postgres', false)", "role", id="set-config-role"),
    pytest.param("ALTER SYSTEM SET work_mem = '77MB'", "ALTER SYSTEM", id="alter-system"),
]


@pytest.mark.parametrize(("sql", "word"), SESSION_ESCAPES)
def test_session_escape_is_refused(pg, hold_proxy, table, review, sql, word):
    with agent(hold_proxy) as a:
        user, srr = a.rows("SELECT current_user, current_setting('session_replication_role')")[0]
        with pytest.raises(psycopg.Error) as exc:
            a.execute(sql)
        assert_refused(exc, "42501", REFUSED, word)
        assert exc.value.diag.message_hint, "the refusal should say why"
        # Nothing changed: not the agent's identity, not the replication role, not the server config.
        assert a.rows("SELECT current_user, current_setting('session_replication_role')") == [(user, srr)]
        assert srr == "origin"
        assert direct(pg, "SELECT count(*) FROM pg_file_settings WHERE name = 'work_mem' "
                      "AND sourcefile LIKE '%postgresql.auto.conf'") == [(0,)]
        a.execute(f"INSERT INTO {table} VALUES (10, 'after')")  # still usable, still held
        tx = review.only()
        assert ids(pg, table) == INITIAL
    review.rollback(tx)
    assert ids(pg, table) == INITIAL


def test_session_replication_role_refused_inside_held_chain(pg, hold_proxy, table, review):
    """With something already held, turning triggers off for later statements must still fail."""
    with agent(hold_proxy) as a:
        a.execute(f"INSERT INTO {table} VALUES (10, 'held')")
        tx = review.only()
        with pytest.raises(psycopg.Error) as exc:
            a.execute(f"SET session_replication_role = replica; DELETE FROM {table}")
        assert_refused(exc, "42501", REFUSED, "session_replication_role")
        assert a.rows("SHOW session_replication_role") == [("origin",)]
        assert agent_ids(a, table) == [*INITIAL, 10]
        assert ids(pg, table) == INITIAL
    review.rollback(tx)
    assert ids(pg, table) == INITIAL


# -- other connections: dblink, postgres_fdw -------------------------------------------------------


REMOTE_ESCAPES = [
    pytest.param("SELECT dblink_exec('dbname=postgres', 'delete from {table}')", id="dblink-exec"),
    pytest.param("SELECT * FROM dblink('dbname=postgres', 'delete from {table} returning id') AS t(id int)",
                 id="dblink"),
    pytest.param("SELECT dblink_connect('c', 'dbname=postgres')", id="dblink-connect"),
    pytest.param("CREATE SERVER {table}_srv FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'postgres')",
                 id="create-server-postgres-fdw"),
    pytest.param("CREATE USER MAPPING FOR CURRENT_USER SERVER {table}_srv OPTIONS (user 'postgres')",
                 id="create-user-mapping"),
    pytest.param("IMPORT FOREIGN SCHEMA public FROM SERVER {table}_srv INTO public", id="import-foreign-schema"),
]


@pytest.mark.parametrize("sql", REMOTE_ESCAPES)
def test_remote_connection_is_refused_by_the_proxy(pg, hold_proxy, table, review, sql):
    """Refused by the proxy itself (its 42501 and message), whether or not the extension exists."""
    with agent(hold_proxy) as a:
        with pytest.raises(psycopg.Error) as exc:
            a.execute(sql.format(table=table))
        assert_refused(exc, "42501", REFUSED)
        assert_usable(a)
    assert ids(pg, table) == INITIAL
    assert direct(pg, "SELECT srvname FROM pg_foreign_server WHERE srvname = %s", (f"{table}_srv",)) == []
    assert review.new() == set()


# -- server files and programs: large objects, COPY ------------------------------------------------


def test_lo_import_is_refused(pg, hold_proxy, table, review):
    before = direct(pg, "SELECT count(*) FROM pg_largeobject_metadata")
    with agent(hold_proxy) as a:
        with pytest.raises(psycopg.Error) as exc:
            a.execute("SELECT lo_import('/etc/hostname')")
        assert_refused(exc, "42501", REFUSED, "lo_import")
        assert_usable(a)
    assert direct(pg, "SELECT count(*) FROM pg_largeobject_metadata") == before
    assert review.new() == set()


def test_lo_export_is_refused(pg, hold_proxy, table, review, marker_dir):
    (oid,) = direct(pg, "SELECT lo_from_bytea(0, 'secret'::bytea)")[0]
    target = marker_dir / "exported"
    try:
        with agent(hold_proxy) as a:
            with pytest.raises(psycopg.Error) as exc:
                a.execute(f"SELECT lo_export({oid}, '{target}')")
            assert_refused(exc, "42501", REFUSED, "lo_export")
            assert_usable(a)
        assert not target.exists()
    finally:
        direct(pg, "SELECT lo_unlink(%s)", (oid,))
    assert review.new() == set()


COPY_ESCAPES = [
    pytest.param("COPY {table} TO PROGRAM 'touch {marker}'", "PROGRAM", id="to-program"),
    pytest.param("COPY {table} FROM PROGRAM 'touch {marker}; echo 99'", "PROGRAM", id="from-program"),
    pytest.param("COPY (SELECT 1) TO PROGRAM 'touch {marker}'", "PROGRAM", id="query-to-program"),
    pytest.param("COPY {table} TO '{marker}'", "server file", id="to-file"),
    pytest.param("COPY {table} FROM '/etc/hostname'", "server file", id="from-file"),
    pytest.param("COPY (SELECT 1) TO '{marker}'", "server file", id="query-to-file"),
]


@pytest.mark.parametrize(("sql", "word"), COPY_ESCAPES)
def test_copy_program_and_server_files_are_refused(pg, hold_proxy, table, review, marker_dir, sql, word):
    marker = marker_dir / "marker"
    with agent(hold_proxy) as a:
        with pytest.raises(psycopg.Error) as exc:
            a.execute(sql.format(table=table, marker=marker))
        assert_refused(exc, "42501", REFUSED, word)
        assert_usable(a)
    assert not marker.exists(), "the program ran or the file was written"
    assert ids(pg, table) == INITIAL
    assert review.new() == set()


def test_copy_from_stdin_is_not_refused(pg, hold_proxy, table, review):
    """The refusals above are about the server side only: COPY FROM STDIN is held like any write."""
    with agent(hold_proxy) as a:
        with a.conn.cursor() as cur, cur.copy(f"COPY {table} (id, v) FROM STDIN") as cp:
            cp.write_row((10, "copied"))
        assert agent_ids(a, table) == [*INITIAL, 10]
        tx = review.only()
    assert ids(pg, table) == INITIAL
    review.rollback(tx)
    assert ids(pg, table) == INITIAL


# -- statements that cannot run inside a transaction block -------------------------------------------


@dataclass
class NonTx:
    sql: str
    sqlstates: tuple[str, ...]
    word: str


NON_TRANSACTIONAL = [
    pytest.param(NonTx("VACUUM {table}", ("25001",), "VACUUM"), id="vacuum"),
    pytest.param(NonTx("VACUUM", ("25001",), "VACUUM"), id="vacuum-all"),
    pytest.param(NonTx("VACUUM (ANALYZE) {table}", ("25001",), "VACUUM"), id="vacuum-analyze"),
    pytest.param(NonTx("CREATE INDEX CONCURRENTLY {table}_v_idx ON {table} (v)", ("25001",),
                       "CREATE INDEX CONCURRENTLY"), id="create-index-concurrently"),
    pytest.param(NonTx("CREATE DATABASE {table}_db", ("25001",), "CREATE DATABASE"), id="create-database"),
    pytest.param(NonTx("DROP DATABASE {table}_keep", ("25001",), "DROP DATABASE"), id="drop-database"),
    pytest.param(NonTx("DROP DATABASE IF EXISTS {table}_keep", ("25001",), "DROP DATABASE"),
                 id="drop-database-if-exists"),
    pytest.param(NonTx("ALTER SYSTEM SET work_mem = '77MB'", ("25001", "42501"), "ALTER SYSTEM"),
                 id="alter-system"),
    pytest.param(NonTx("ALTER SYSTEM RESET ALL", ("25001", "42501"), "ALTER SYSTEM"), id="alter-system-reset"),
    pytest.param(NonTx("REINDEX TABLE CONCURRENTLY {table}", ("25001",), "REINDEX CONCURRENTLY"),
                 id="reindex-concurrently"),
    pytest.param(NonTx("DROP INDEX CONCURRENTLY IF EXISTS {table}_pkey", ("25001",), "DROP INDEX CONCURRENTLY"),
                 id="drop-index-concurrently"),
]


@pytest.fixture
def keep_database(pg: Postgres, table: str) -> Iterator[str]:
    """A database created directly, which an agent's DROP DATABASE must not touch."""
    name = f"{table}_keep"
    direct(pg, f"DROP DATABASE IF EXISTS {name}")
    direct(pg, f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        direct(pg, f"DROP DATABASE IF EXISTS {name}")
        direct(pg, f"DROP DATABASE IF EXISTS {table}_db")


@pytest.mark.parametrize("case", NON_TRANSACTIONAL)
def test_non_transactional_statement_is_refused(pg, hold_proxy, table, keep_database, review, case):
    databases = direct(pg, "SELECT datname FROM pg_database ORDER BY datname")
    indexes = direct(pg, "SELECT indexname FROM pg_indexes WHERE tablename = %s ORDER BY 1", (table,))
    with agent(hold_proxy) as a:
        with pytest.raises(psycopg.Error) as exc:
            a.execute(case.sql.format(table=table))
        diag = exc.value.diag
        assert diag.sqlstate in case.sqlstates, (diag.sqlstate, diag.message_primary)
        assert REFUSED in (diag.message_primary or ""), diag.message_primary
        assert case.word.lower() in (diag.message_primary or "").lower(), diag.message_primary
        assert diag.message_hint, "the refusal should tell the agent what to do instead"
        assert_usable(a)
        assert a.conn.info.transaction_status == TransactionStatus.IDLE
        # Also refused inside an explicit transaction (where PostgreSQL would refuse it too).
        a.execute("BEGIN")
        with pytest.raises(psycopg.Error) as exc:
            a.execute(case.sql.format(table=table))
        assert exc.value.diag.sqlstate in case.sqlstates
        a.execute("ROLLBACK")
        assert_usable(a)
    assert direct(pg, "SELECT datname FROM pg_database ORDER BY datname") == databases
    assert direct(pg, "SELECT indexname FROM pg_indexes WHERE tablename = %s ORDER BY 1", (table,)) == indexes
    assert direct(pg, "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables WHERE relname = %s",
                  (table,)) == [(None, None)]
    assert direct(pg, "SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'") \
        == [(0,)]
    assert review.new() == set()


# -- escapes inside explicit transactions, reserved savepoints, multi-statement strings ---------------


def test_escape_inside_explicit_transaction_fails_it(pg, hold_proxy, table, review):
    with agent(hold_proxy) as a:
        a.execute("BEGIN")
        a.execute(f"INSERT INTO {table} VALUES (10, 'agent')")
        with pytest.raises(psycopg.Error) as exc:
            a.execute("SET ROLE postgres")
        assert_refused(exc, "42501", REFUSED)
        assert a.conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(pgerrors.InFailedSqlTransaction) as exc2:
            a.execute(f"INSERT INTO {table} VALUES (11, 'agent')")
        assert exc2.value.diag.sqlstate == "25P02"
        with pytest.raises(pgerrors.InFailedSqlTransaction):
            a.execute("SELECT 1")
        a.execute("ROLLBACK")
        assert a.conn.info.transaction_status == TransactionStatus.IDLE
        assert agent_ids(a, table) == INITIAL
        assert_usable(a)
    assert ids(pg, table) == INITIAL
    assert review.new() == set()


def test_commit_of_failed_transaction_rolls_back(pg, hold_proxy, table, review):
    """COMMIT after a refused statement is a ROLLBACK, exactly as in PostgreSQL."""
    with agent(hold_proxy) as a:
        a.execute("BEGIN")
        a.execute(f"INSERT INTO {table} VALUES (10, 'agent')")
        with pytest.raises(psycopg.Error):
            a.execute("COPY (SELECT 1) TO PROGRAM 'true'")
        cur = a.execute("COMMIT")
        assert cur.statusmessage == "ROLLBACK"
        assert agent_ids(a, table) == INITIAL
        assert a.held_ids() == []
    assert ids(pg, table) == INITIAL
    assert review.new() == set()


def test_escape_inside_explicit_transaction_keeps_earlier_held_work(pg, hold_proxy, table, review):
    with agent(hold_proxy) as a:
        a.execute(f"INSERT INTO {table} VALUES (10, 'held')")
        tx = review.only()
        a.execute("BEGIN")
        a.execute(f"INSERT INTO {table} VALUES (11, 'doomed')")
        with pytest.raises(psycopg.Error) as exc:
            a.execute("SELECT lo_import('/etc/hostname')")
        assert_refused(exc, "42501", REFUSED)
        with pytest.raises(pgerrors.InFailedSqlTransaction):
            a.execute("SELECT 1")
        a.execute("ROLLBACK")
        assert agent_ids(a, table) == [*INITIAL, 10]
        assert ids(pg, table) == INITIAL
        assert review.new() == {tx}
    review.commit(tx)
    assert ids(pg, table) == [*INITIAL, 10]


@pytest.mark.parametrize("sql", [
    "SAVEPOINT dbproxy_tx",
    "SAVEPOINT DBPROXY_TX",
    "SAVEPOINT dbproxy_mine",
    "RELEASE SAVEPOINT dbproxy_tx",
    "ROLLBACK TO SAVEPOINT dbproxy_tx",
    "ROLLBACK TO dbproxy_tx",
])
def test_reserved_savepoint_name_is_refused(pg, hold_proxy, table, review, sql):
    with agent(hold_proxy) as a:
        a.execute(f"INSERT INTO {table} VALUES (10, 'held')")  # a chain is open: dbproxy_tx exists upstream
        tx = review.only()
        a.execute("BEGIN")
        a.execute(f"INSERT INTO {table} VALUES (11, 'in tx')")
        with pytest.raises(psycopg.Error) as exc:
            a.execute(sql)
        assert exc.value.diag.sqlstate == "42939", exc.value.diag.message_primary
        assert "reserved" in (exc.value.diag.message_primary or "")
        assert a.conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(pgerrors.InFailedSqlTransaction):
            a.execute("SELECT 1")
        a.execute("ROLLBACK")
        assert agent_ids(a, table) == [*INITIAL, 10]
        # Ordinary savepoints work.
        a.execute("BEGIN")
        a.execute("SAVEPOINT mine")
        a.execute(f"INSERT INTO {table} VALUES (12, 'sp')")
        a.execute("ROLLBACK TO SAVEPOINT mine")
        a.execute("RELEASE SAVEPOINT mine")
        a.execute("COMMIT")
        assert agent_ids(a, table) == [*INITIAL, 10]
        assert ids(pg, table) == INITIAL
    review.rollback(tx)
    assert ids(pg, table) == INITIAL


@pytest.mark.parametrize("escape", [
    "SET ROLE postgres",
    "SELECT dblink_exec('dbname=postgres', 'select 1')",
    "COPY (SELECT 1) TO PROGRAM 'true'",
    "PREPARE TRANSACTION 'dbproxy-x'",
    "VACUUM",
])
def test_multi_statement_string_with_escape_runs_nothing(pg, hold_proxy, table, review, escape):
    with agent(hold_proxy) as a:
        with pytest.raises(psycopg.Error) as exc:
            a.execute(f"INSERT INTO {table} VALUES (10, 'first'); UPDATE {table} SET v = 'second'; {escape}; "
                      f"DELETE FROM {table}")
        assert exc.value.diag.sqlstate in ("42501", "25001"), exc.value.diag.message_primary
        assert REFUSED in (exc.value.diag.message_primary or "")
        assert a.conn.info.transaction_status == TransactionStatus.IDLE
        # Not even the agent sees the first two statements.
        assert a.rows(f"SELECT id, v FROM {table} ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]
        assert a.held_ids() == []
    assert direct(pg, f"SELECT id, v FROM {table} ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]
    assert review.new() == set()


def test_multi_statement_string_with_escape_after_commit_escapes_nothing(pg, hold_proxy, table, review):
    """`BEGIN; INSERT; COMMIT; <escape>`: whatever ran before the escape stays held, never committed."""
    with agent(hold_proxy) as a:
        with pytest.raises(psycopg.Error) as exc:
            a.execute(f"BEGIN; INSERT INTO {table} VALUES (10, 'first'); COMMIT; SET ROLE postgres; "
                      f"DELETE FROM {table}")
        assert_refused(exc, "42501", REFUSED)
        assert a.conn.info.transaction_status == TransactionStatus.IDLE
        assert a.rows(SAME_IDENTITY) == [(True,)]
        assert 1 in agent_ids(a, table)  # the DELETE after the refusal never ran
    assert ids(pg, table) == INITIAL
    review.release_all()
    assert ids(pg, table) == INITIAL


EXTENDED_ESCAPES = [
    pytest.param("SET ROLE postgres", "42501", id="set-role"),
    pytest.param("SET session_replication_role = replica", "42501", id="replication-role"),
    pytest.param("SELECT lo_import('/etc/hostname')", "42501", id="lo-import"),
    pytest.param("COPY (SELECT 1) TO PROGRAM 'true'", "42501", id="copy-to-program"),
    pytest.param("PREPARE TRANSACTION 'dbproxy-x'", "42501", id="prepare-transaction"),
    pytest.param("VACUUM", "25001", id="vacuum"),
    pytest.param("SAVEPOINT dbproxy_tx", "42939", id="reserved-savepoint"),
]


@pytest.mark.parametrize(("sql", "sqlstate"), EXTENDED_ESCAPES)
def test_escape_over_the_extended_protocol_is_refused(pg, hold_proxy, table, review, sql, sqlstate):
    """The same refusals when the statement comes as Parse/Bind/Execute (a named prepared statement)."""
    with agent(hold_proxy) as a:
        a.execute(f"INSERT INTO {table} VALUES (10, 'held')")
        tx = review.only()
        a.execute("BEGIN")
        with pytest.raises(psycopg.Error) as exc:
            a.conn.execute(sql, prepare=True)
        assert exc.value.diag.sqlstate == sqlstate, exc.value.diag.message_primary
        assert a.conn.info.transaction_status == TransactionStatus.INERROR
        a.execute("ROLLBACK")
        with pytest.raises(psycopg.Error) as exc:  # and outside an explicit transaction
            a.conn.execute(sql, prepare=True)
        assert exc.value.diag.sqlstate == sqlstate, exc.value.diag.message_primary
        assert a.rows(f"{SAME_IDENTITY}, current_setting('session_replication_role')") == [(True, "origin")]
        assert agent_ids(a, table) == [*INITIAL, 10]
        assert direct(pg, "SELECT gid FROM pg_prepared_xacts") == []
        assert review.new() == {tx}
    assert ids(pg, table) == INITIAL


def test_refusal_over_the_extended_protocol_keeps_the_session_and_the_chain(pg, hold_proxy, table, review):
    """One refused statement sent as Parse/Bind/Execute must not break what follows: neither the
    agent's next statements nor the chain it already holds."""
    with agent(hold_proxy) as a:
        a.execute(f"INSERT INTO {table} VALUES (%s, 'held')", (10,))
        tx = review.only()
        with pytest.raises(psycopg.Error) as exc:
            a.conn.execute("SET ROLE postgres", prepare=True)
        assert exc.value.diag.sqlstate == "42501", exc.value.diag.message_primary
        a.execute(f"INSERT INTO {table} VALUES (%s, 'after the refusal')", (11,))
        with pytest.raises(psycopg.Error) as exc:
            a.conn.execute("SET ROLE postgres", prepare=True)
        assert exc.value.diag.sqlstate == "42501", exc.value.diag.message_primary
        assert agent_ids(a, table) == [*INITIAL, 10, 11]
        assert review.new() == {tx}
    assert ids(pg, table) == INITIAL
    review.commit(tx)
    assert ids(pg, table) == [*INITIAL, 10, 11]


def test_commit_then_delete_in_one_pipeline_sync(pg, hold_proxy, table, review):
    """Extended protocol: BEGIN, INSERT, COMMIT, DELETE under one Sync: still nothing escapes."""
    with agent(hold_proxy) as a:
        with a.conn.pipeline():
            a.conn.execute("BEGIN", prepare=True)
            a.execute(f"INSERT INTO {table} VALUES (%s, 'piped')", (10,))
            a.conn.execute("COMMIT", prepare=True)
            a.execute(f"DELETE FROM {table} WHERE id <> %s", (10,))
        assert agent_ids(a, table) == [10]
        assert ids(pg, table) == INITIAL
        tx = review.only()
    assert ids(pg, table) == INITIAL
    review.rollback(tx)
    assert ids(pg, table) == INITIAL


@pytest.mark.parametrize("sql", ["ROLLBACK AND CHAIN", "ABORT AND CHAIN"])
def test_rollback_and_chain(pg, hold_proxy, table, review, sql):
    with agent(hold_proxy) as a:
        a.execute(f"INSERT INTO {table} VALUES (10, 'held')")
        tx = review.only()
        a.execute("START TRANSACTION")
        a.execute(f"INSERT INTO {table} VALUES (11, 'rolled back')")
        a.execute(sql)
        assert a.conn.info.transaction_status == TransactionStatus.INTRANS
        a.execute(f"INSERT INTO {table} VALUES (12, 'chained')")
        a.execute("COMMIT")
        assert agent_ids(a, table) == [*INITIAL, 10, 12]
        assert ids(pg, table) == INITIAL
        assert review.new() == {tx}
    review.commit(tx)
    assert ids(pg, table) == [*INITIAL, 10, 12]


# -- the fast-path function call interface --------------------------------------------------------------


def test_fast_path_function_call_is_refused(pg, pg_bin: Path, hold_proxy, review, tmp_path):
    """psycopg and asyncpg do not expose PQfn, but libpq's large-object functions use it: psql's
    client-side `\\lo_import` goes through the fast-path FunctionCall message."""
    source = tmp_path / "blob.txt"
    source.write_text("fast path payload\n")
    before = direct(pg, "SELECT count(*) FROM pg_largeobject_metadata")
    res = run_tool(pg_bin, "psql", ["-X", "-v", "ON_ERROR_STOP=1", "-c", f"\\lo_import '{source}'"],
                   hold_proxy.env())
    assert res.returncode != 0, res.stdout + res.stderr
    assert "fast-path function call interface" in res.stderr, res.stderr
    assert direct(pg, "SELECT count(*) FROM pg_largeobject_metadata") == before
    # The session is usable after the refusal (same psql session, ON_ERROR_STOP off).
    res = run_tool(pg_bin, "psql", ["-X", "-At"], hold_proxy.env(),
                   input=f"\\lo_import '{source}'\nSELECT 'still' || ' alive';\n")
    assert "still alive" in res.stdout, res.stdout + res.stderr
    assert direct(pg, "SELECT count(*) FROM pg_largeobject_metadata") == before
    assert review.new() == set()


# -- escapes the statement text does not show: dynamic SQL, the agent's own functions ----------------
#
# The statements above are refused by reading their text. The same effects can be reached through
# SQL the classifier never sees: EXECUTE in a DO block, or a function the agent creates (held DDL)
# and then calls. Role and replication-role changes are caught by the proxy before the agent's
# transaction joins the chain. Server programs and files act at once, so the defence is that
# agents never act as the proxy's own role (here a superuser): they act as the agents' role
# (`dbproxy_agents`), which has no such privilege, through login roles of their own.

HIDDEN_SERVER_SIDE_EFFECTS = [
    pytest.param(["DO $$BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {marker}'''; END$$"],
                 id="do-execute-copy-to-program"),
    pytest.param(["DO $$BEGIN EXECUTE 'CO' || 'PY (SELECT 1) TO ''{marker}'''; END$$"],
                 id="do-execute-copy-to-file"),
    pytest.param(["CREATE FUNCTION {fn}() RETURNS void LANGUAGE plpgsql AS "
                  "$f$BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {marker}'''; END$f$",
                  "SELECT {fn}()"], id="function-copy-to-program"),
    pytest.param(["CREATE FUNCTION {fn}() RETURNS void LANGUAGE sql AS $f$ COPY (SELECT 1) TO '{marker}' $f$",
                  "SELECT {fn}()"], id="sql-function-copy-to-file"),
    pytest.param(["CREATE FUNCTION {fn}(o oid) RETURNS int LANGUAGE sql AS "
                  "$f$ SELECT lo_export(o, '{marker}') $f$",
                  "SELECT lo_from_bytea({oid}, 'x')", "SELECT {fn}({oid})"], id="sql-function-lo-export"),
]


@pytest.mark.parametrize("statements", HIDDEN_SERVER_SIDE_EFFECTS)
def test_hidden_program_or_server_file_does_not_run(pg, hold_proxy, unique_name, marker_dir, statements):
    proxy = hold_proxy  # its own upstream role is the superuser; its agents' is not
    r = Review(proxy)
    marker = marker_dir / "marker"
    oid = 1_000_000 + uuid.uuid4().int % 1_000_000_000  # a large object the agent creates (held)
    errors: list[str | None] = []
    try:
        with agent(proxy) as a:
            assert a.rows("SELECT current_user, session_user") == [(AGENTS_ROLE, "dbproxy_agent_agent")]
            for sql in statements:
                try:
                    a.execute(sql.format(fn=f"{unique_name}_f", marker=marker, oid=oid))
                except psycopg.Error as e:
                    errors.append(e.diag.sqlstate)
            assert_usable(a)
        assert not marker.exists(), (
            f"a held agent session ran a program / wrote a server file outside any transaction (errors: {errors})")
        assert "42501" in errors, errors  # permission denied, by the server or the proxy
    finally:
        r.release_all()
    assert direct(pg, "SELECT count(*) FROM pg_proc WHERE proname = %s", (f"{unique_name}_f",)) == [(0,)]


HIDDEN_SESSION_CHANGES = [
    pytest.param(["DO $$BEGIN EXECUTE 'SET session_replication_role = replica'; END$$"],
                 id="do-execute-replication-role"),
    pytest.param(["DO $$BEGIN EXECUTE 'SET ROLE pg_monitor'; END$$"], id="do-execute-set-role"),
    pytest.param(["DO $$BEGIN PERFORM set_config('session_replication_role', 'replica', false); END$$"],
                 id="do-perform-set-config"),
    pytest.param(["CREATE FUNCTION {table}_f() RETURNS text LANGUAGE sql AS "
                  "$f$ SELECT set_config('session_replication_role', 'replica', false) $f$",
                  "SELECT {table}_f()"], id="function-set-config-replication-role"),
    pytest.param(["CREATE FUNCTION {table}_f() RETURNS void LANGUAGE plpgsql AS "
                  "$f$BEGIN EXECUTE 'SET ROLE pg_monitor'; END$f$",
                  "SELECT {table}_f()"], id="function-set-role"),
]


@pytest.mark.parametrize("statements", HIDDEN_SESSION_CHANGES)
def test_hidden_role_or_replication_role_change_has_no_effect(pg, hold_proxy, table, review, statements):
    errors: list[str | None] = []
    with agent(hold_proxy) as a:
        for sql in statements:
            try:
                a.execute(sql.format(table=table))
            except psycopg.Error as e:
                errors.append(e.diag.sqlstate)
        state = a.rows(f"{SAME_IDENTITY}, current_setting('session_replication_role')")
        assert state == [(True, "origin")], f"the agent changed its role or replication role (errors: {errors})"
    assert ids(pg, table) == INITIAL

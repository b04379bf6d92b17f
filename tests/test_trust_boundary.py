"""The trust boundary: an agent can neither see nor change the proxy's own state, nor another
agent's work; statements that change identities or privileges are for people; credentials stay
out of the journal, `show` and the logs; reviewers are people with names, and a proxy whose
agents could reach its state does not start.

Every attack is what a prompt-injected agent would try, through real clients (psycopg, psql, the
`dbproxy` CLI) against a real PostgreSQL, with two agents, and with three kinds of upstream: the
suite's superuser upstream, an ordinary role with CREATEROLE that owns its database, and the
embedded default.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest

from dbproxy import cli
from dbproxy.backend.agent_roles import RoleError
from tests.conftest import Postgres, RunningProxy, grant_agents, run_tool
from tests.test_cli_and_settings import Served
from tests.waiting import wait_until

PW = {"alice": "alice-pw", "bob": "bob-pw"}
TWO_AGENTS = {name: {"password": pw, "databases": ["*"]} for name, pw in PW.items()}
SECRETS = ("hunter2-role-secret", "mapping-secret", "dblink-secret", "url-secret")


def direct(url: str, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as c:
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description else []


@dataclass
class Setup:
    """A proxy with agents alice and bob, the superuser URL of its database, and how agents connect."""

    proxy: RunningProxy
    admin_url: str  # superuser, the same database
    database: str
    logins: dict[str, str]  # agent -> upstream login role
    agents_role: str

    def connect(self, agent: str, **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.proxy.url(self.database, user=agent, password=PW[agent]), autocommit=True, **kw)

    def pending(self) -> list[int]:
        status, body = self.proxy.review_request("GET", "/v1/pending")
        assert status == 200
        return [t["id"] for t in body]

    def journal(self) -> list[tuple[Any, ...]]:
        """Every journal row, as the superuser sees it (the attacks must leave it alone)."""
        return direct(self.admin_url, "SELECT t.id, t.agent, t.outcome, count(s.seq) FROM dbproxy.transactions t "
                      "LEFT JOIN dbproxy.statements s ON s.tx_id = t.id GROUP BY t.id ORDER BY t.id")


@pytest.fixture
def name(unique_name: str) -> str:
    """A table name unique to this test *and* its parameters."""
    return f"{unique_name[:40]}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(params=["superuser-upstream", "ordinary-upstream"])
def boundary(request: pytest.FixtureRequest, pg: Postgres, make_proxy: Callable[..., RunningProxy]) -> Iterator[Setup]:
    """Hold mode, two agents. `superuser-upstream`: the suite's cluster superuser is the proxy's own
    role. `ordinary-upstream`: an ordinary role with CREATEROLE that owns its own database is."""
    if request.param == "superuser-upstream":
        yield Setup(make_proxy(mode="hold", agents=TWO_AGENTS), pg.dsn("postgres"), "postgres",
                    {a: f"dbproxy_agent_{a}" for a in PW}, "dbproxy_agents")
        return
    yield from _ordinary(pg, make_proxy, mode="hold")


def _ordinary(pg: Postgres, make_proxy: Callable[..., RunningProxy], *, mode: str) -> Iterator[Setup]:
    tag = uuid.uuid4().hex[:8]
    owner, database, group = f"app_owner_{tag}", f"app_{tag}", f"app_agents_{tag}"
    password = uuid.uuid4().hex
    direct(pg.url, f"CREATE ROLE {owner} LOGIN CREATEROLE NOSUPERUSER PASSWORD '{password}'")
    direct(pg.url, f"CREATE DATABASE {database} OWNER {owner} TEMPLATE template0")
    parts = urlsplit(pg.url)
    owner_url = urlunsplit(parts._replace(netloc=f"{owner}:{quote(password)}@{parts.hostname}:{parts.port}",
                                          path=f"/{database}"))
    # What an operator does once: the agents' role may create tables in the app's schema.
    direct(owner_url, f"CREATE ROLE {group} NOLOGIN NOINHERIT")
    direct(owner_url, f"GRANT USAGE, CREATE ON SCHEMA public TO {group}")
    logins = {a: f"app_{a}_{tag}" for a in PW}
    agents = {a: {**cfg, "upstream_role": logins[a]} for a, cfg in TWO_AGENTS.items()}
    proxy = make_proxy(upstream=owner_url, mode=mode, agents=agents, agent_role=group)
    try:
        yield Setup(proxy, pg.dsn(database), database, logins, group)
    finally:
        proxy.stop()
        direct(pg.url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        for role in (*logins.values(), group, owner):
            direct(pg.url, f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
def undo_boundary(capture_db: str, make_proxy: Callable[..., RunningProxy]) -> Setup:
    """Undo mode, two agents, capture installed (by the superuser, the proxy's own role)."""
    database = urlsplit(capture_db).path.lstrip("/")
    return Setup(make_proxy(capture_db, mode="undo", agents=TWO_AGENTS), capture_db, database,
                 {a: f"dbproxy_agent_{a}" for a in PW}, "dbproxy_agents")


def _sqlstate(conn: psycopg.Connection[Any], sql: str) -> tuple[str | None, str]:
    """Run `sql`; return (SQLSTATE, message + hint) of its error, or (None, "") when it ran."""
    try:
        conn.execute(sql)
    except psycopg.Error as e:
        return e.diag.sqlstate, f"{e.diag.message_primary} {e.diag.message_hint or ''}"
    return None, ""


# --- the proxy's state is out of the agents' reach -----------------------------------------------


STATE_READS = [
    "SELECT * FROM dbproxy.statements",
    "SELECT agent, outcome FROM dbproxy.transactions",
    "SELECT * FROM dbproxy.instances",
]


def test_agents_cannot_read_the_journal_directly_or_through_views_and_functions(boundary: Setup, name: str):
    with boundary.connect("alice") as a:
        a.execute(f"CREATE TABLE {name} (id int)")  # something in the journal
    with boundary.connect("bob") as b:
        for sql in STATE_READS:
            assert _sqlstate(b, sql)[0] == "42501", sql
        # A view or a function the agent creates runs with the agent's privileges: still nothing
        # (refused when it is used, or already when it is made, where the agents may not even
        # look into the schema).
        for make, use in ((f"CREATE VIEW {name}_v AS SELECT sql FROM dbproxy.statements", f"SELECT * FROM {name}_v"),
                          (f"CREATE FUNCTION {name}_f() RETURNS bigint LANGUAGE plpgsql AS "
                           "$$BEGIN RETURN (SELECT count(*) FROM dbproxy.statements); END$$", f"SELECT {name}_f()")):
            b.execute("BEGIN")
            state = _sqlstate(b, make)[0]
            if state is None:
                state = _sqlstate(b, use)[0]
            assert state == "42501", make
            b.execute("ROLLBACK")
        # ... and code that would run as its owner is not the agents' to create.
        state, said = _sqlstate(b, f"CREATE FUNCTION {name}_d() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
                                   "AS 'SELECT count(*) FROM dbproxy.statements'")
        assert state == "42501" and "SECURITY DEFINER" in said and "person must run it" in said
    for pid in boundary.pending():
        boundary.proxy.review_request("POST", f"/v1/transactions/{pid}/rollback")


@pytest.mark.parametrize("attack", [
    "DO $$BEGIN DELETE FROM dbproxy.statements; END$$",
    "DO $$BEGIN UPDATE dbproxy.transactions SET agent = 'alice'; END$$",
    "DO $$BEGIN EXECUTE 'TRUNCATE dbproxy.transactions CASCADE'; END$$",
    "DELETE FROM dbproxy.statements",
])
def test_agents_cannot_rewrite_the_journal(boundary: Setup, name: str, attack: str):
    with boundary.connect("alice") as a:
        a.execute(f"CREATE TABLE {name} (id int)")
        a.execute(f"INSERT INTO {name} VALUES (1)")
    [held] = boundary.pending()
    boundary.proxy.review_request("POST", f"/v1/transactions/{held}/commit", {"reason": "setup"})
    before = boundary.journal()
    with boundary.connect("bob") as b:
        state, _ = _sqlstate(b, attack)
        assert state == "42501"
        assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert boundary.pending() == []  # nothing held for bob
    after = boundary.journal()
    assert after[:len(before)] == before  # not a row of the journal changed
    assert all(row[2] != "committed" for row in after[len(before):])  # nothing of bob's committed


def test_undo_mode_agents_cannot_rewrite_the_journal_or_the_capture_log(undo_boundary: Setup, name: str):
    s = undo_boundary
    direct(s.admin_url, f"CREATE TABLE {name} (id int PRIMARY KEY)")
    with s.connect("alice") as a:
        a.execute(f"INSERT INTO {name} VALUES (1)")  # committed with its undo
    # Undo mode journals after the fact: the transaction's row first, its statement in a later
    # batch. Take "before" once both are there, or the statement's arrival would look like a change.
    before = wait_until(lambda: (j := s.journal()) and any(r[1] == "alice" and r[3] == 1 for r in j) and j,
                        what="alice's insert and its statement in the journal")
    undo_rows = direct(s.admin_url, "SELECT count(*) FROM dbproxy.undo_records")
    with s.connect("bob") as b:
        for attack in ("SELECT * FROM dbproxy.capture_log", "SELECT * FROM dbproxy.undo_records",
                       "DO $$BEGIN DELETE FROM dbproxy.capture_log; END$$",
                       "DO $$BEGIN UPDATE dbproxy.undo_records SET agent = 'bob'; END$$",
                       "DO $$BEGIN UPDATE dbproxy.transactions SET agent = 'bob'; END$$"):
            assert _sqlstate(b, attack)[0] == "42501", attack
        # The two functions agents may call see and mark only their own current transaction.
        assert b.execute("SELECT count(*) FROM dbproxy.captured_changes(100, false)").fetchone() == (0,)
    assert s.journal()[:len(before)] == before
    assert direct(s.admin_url, "SELECT count(*) FROM dbproxy.undo_records") == undo_rows
    assert direct(s.admin_url, "SELECT agent FROM dbproxy.undo_records") == [("alice",)]


# --- identities and privileges are for people ---------------------------------------------------


IDENTITY_STATEMENTS = [
    "ALTER ROLE current_user PASSWORD 'x-secret'",
    "CREATE ROLE dbproxy_evil LOGIN",
    "GRANT pg_read_all_data TO current_user",
    "ALTER TABLE {t} OWNER TO postgres",
    "CREATE FUNCTION {t}_sd() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'",
    "ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT ON TABLES TO PUBLIC",
    "SET ROLE postgres",
]


@pytest.mark.parametrize("mode", ["hold", "undo", "passthrough", "read-only"])
def test_identity_and_privilege_statements_are_refused_in_every_mode(pg: Postgres, make_proxy, name: str,
                                                                      mode: str):
    p = make_proxy(mode=mode, agents=TWO_AGENTS)
    direct(pg.url, f"CREATE TABLE {name} (id int)")
    url = p.url("postgres", user="alice", password=PW["alice"])
    for template in IDENTITY_STATEMENTS:
        sql = template.format(t=name)
        with psycopg.connect(url, autocommit=True) as a:
            state, said = _sqlstate(a, sql)
            assert state == "42501", (sql, said)
            assert "dbproxy refused" in said and "person must run it directly" in said, (sql, said)
        with psycopg.connect(url, autocommit=True) as a:  # the extended protocol, too
            try:
                a.execute(sql, prepare=True)
                raise AssertionError(f"{sql} ran over the extended protocol")
            except psycopg.Error as e:
                assert e.diag.sqlstate == "42501", (sql, e.diag.message_primary)
    assert p.review_request("GET", "/v1/pending") == (200, [])
    assert direct(pg.url, "SELECT count(*) FROM pg_roles WHERE rolname = 'dbproxy_evil'") == [(0,)]
    assert direct(pg.url, "SELECT tableowner FROM pg_tables WHERE tablename = %s", (name,)) == [(pg.user,)]


def _password_hash(pg: Postgres, role: str) -> str:
    return direct(pg.url, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))[0][0]


HIDDEN_IDENTITY_CHANGES = [
    pytest.param("DO $$BEGIN SET LOCAL ROLE NONE; EXECUTE format('ALTER ROLE %I PASSWORD ''owned''', session_user); "
                 "RESET ROLE; END$$", id="own-password-in-do"),
    pytest.param("DO $$BEGIN SET LOCAL ROLE NONE; EXECUTE format('ALTER ROLE %I SET work_mem = ''1GB''', "
                 "session_user); RESET ROLE; END$$", id="own-settings-in-do"),
    pytest.param("DO $$BEGIN EXECUTE 'CREATE FUNCTION {t}_sd() RETURNS int LANGUAGE sql SECURITY DEFINER "
                 "AS ''SELECT 1'''; END$$", id="security-definer-in-do"),
]


@pytest.mark.parametrize("explicit", [False, True], ids=["implicit", "explicit"])
@pytest.mark.parametrize("attack", HIDDEN_IDENTITY_CHANGES)
def test_identity_changes_hidden_in_code_are_refused_by_the_guard(boundary: Setup, pg: Postgres, name: str,
                                                                  attack: str, explicit: bool):
    login = boundary.logins["alice"]
    before = _password_hash(pg, login)
    with boundary.connect("alice") as a:
        sql = attack.format(t=name)
        if explicit:
            a.execute("BEGIN")
            a.execute(sql)
            state, said = _sqlstate(a, "COMMIT")
        else:
            state, said = _sqlstate(a, sql)
        assert state == "42501" and "dbproxy refused this transaction" in said, said
        # The session goes on, as itself.
        if a.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            a.execute("ROLLBACK")
        assert a.execute("SELECT current_user, session_user").fetchone() == (boundary.agents_role, login)
    assert boundary.pending() == []
    assert _password_hash(pg, login) == before
    assert direct(pg.url, "SELECT rolconfig FROM pg_roles WHERE rolname = %s", (login,)) == [(None,)]
    assert direct(boundary.admin_url, "SELECT count(*) FROM pg_proc WHERE proname = %s",
                  (f"{name}_sd",)) == [(0,)]


def test_hidden_role_creation_and_ownership_changes_fail_on_privileges(boundary: Setup, name: str):
    """Without statement inspection at all, the agents' roles cannot create roles or give objects
    away: PostgreSQL itself says no."""
    with boundary.connect("alice") as a:
        a.execute("BEGIN")
        a.execute(f"CREATE TABLE {name} (id int)")
        a.execute(f"CREATE FUNCTION {name}_r() RETURNS void LANGUAGE plpgsql AS "
                  "$$BEGIN EXECUTE 'CREATE ROLE dbproxy_evil2'; END$$")
        a.execute(f"CREATE FUNCTION {name}_o() RETURNS void LANGUAGE plpgsql AS "
                  f"$$BEGIN EXECUTE 'ALTER TABLE {name} OWNER TO postgres'; END$$")
        a.execute("COMMIT")
        assert _sqlstate(a, f"SELECT {name}_r()")[0] == "42501"
        assert _sqlstate(a, f"SELECT {name}_o()")[0] == "42501"
    for pid in boundary.pending():
        boundary.proxy.review_request("POST", f"/v1/transactions/{pid}/rollback")
    assert direct(boundary.admin_url, "SELECT count(*) FROM pg_roles WHERE rolname = 'dbproxy_evil2'") == [(0,)]


# --- agents are isolated from each other ---------------------------------------------------------


def test_agents_cannot_see_or_signal_each_others_sessions(boundary: Setup, name: str):
    with boundary.connect("alice") as a, boundary.connect("bob") as b:
        a.execute(f"CREATE TABLE {name} (id int)")
        a.execute(f"INSERT INTO {name} VALUES (42)")
        [held] = boundary.pending()
        alice_pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        query, user = b.execute("SELECT query, usename FROM pg_stat_activity WHERE pid = %s",
                                (alice_pid,)).fetchone()
        assert query == "<insufficient privilege>" and user == boundary.logins["alice"]
        for signal_fn in ("pg_cancel_backend", "pg_terminate_backend"):
            state, said = _sqlstate(b, f"SELECT {signal_fn}({alice_pid})")
            assert state == "42501", said
        # Alice's held work and her session are untouched.
        assert a.execute(f"SELECT id FROM {name}").fetchall() == [(42,)]
        assert boundary.pending() == [held]
        assert _sqlstate(b, f"SELECT * FROM {name}")[0] == "42P01"  # her pending table is hers until decided
    boundary.proxy.review_request("POST", f"/v1/transactions/{held}/rollback")


# --- secrets at rest ------------------------------------------------------------------------------


def test_credentials_never_reach_the_journal_show_or_logs(pg: Postgres, make_proxy, name: str,
                                                           caplog: pytest.LogCaptureFixture,
                                                           capsys: pytest.CaptureFixture[str]):
    caplog.set_level(logging.INFO, logger="dbproxy")
    p = make_proxy(mode="hold", agents=TWO_AGENTS, log_statements=True)
    direct(pg.url, f"CREATE TABLE {name} (id int, conn text)")
    with psycopg.connect(p.url("postgres", user="alice", password=PW["alice"]), autocommit=True) as a:
        for sql in (f"ALTER ROLE current_user PASSWORD '{SECRETS[0]}'",
                    f"CREATE USER MAPPING FOR current_user SERVER nowhere OPTIONS (user 'u', password '{SECRETS[1]}')",
                    f"SELECT dblink_connect('host=h dbname=d password={SECRETS[2]}')"):
            with pytest.raises(psycopg.Error):
                a.execute(sql)
        a.execute(f"INSERT INTO {name} VALUES (1, 'postgresql://bot:{SECRETS[3]}@db.internal/app')")
    [held] = [t["id"] for t in p.review_request("GET", "/v1/pending")[1]]
    p.call(p.server.journal.flush())
    stored = "\n".join(r[0] for r in direct(pg.url, "SELECT sql FROM dbproxy.statements"))
    assert "postgresql://bot:***@db.internal/app" in stored
    common = ["--admin", f"{p.server.admin_address[0]}:{p.server.admin_address[1]}", "--admin-token", p.token()]
    assert cli.main(["show", str(held), "--json", *common]) == 0
    assert cli.main(["log", "--json", *common]) == 0
    shown = capsys.readouterr().out
    assert "***" in shown
    logged = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', {})}" for r in caplog.records)
    assert "ALTER ROLE current_user PASSWORD '***'" in logged
    for secret in SECRETS:
        assert secret not in stored and secret not in logged, secret
    # `show` prints statements as journaled; its row diff shows the data the agent wrote (a URL in
    # a row is data for the reviewer to see), but never a credential clause of a statement.
    for secret in SECRETS[:3]:
        assert secret not in shown, secret
    assert "postgresql://bot:***@db.internal/app" in shown
    p.review_request("POST", f"/v1/transactions/{held}/rollback")


# --- reviewers are people with names --------------------------------------------------------------


def test_reviewer_tokens_name_the_reviewer_and_a_removed_one_is_refused(pg: Postgres, make_proxy, name: str,
                                                                        capsys: pytest.CaptureFixture[str]):
    p = make_proxy(mode="hold", agents=TWO_AGENTS)
    direct(pg.url, f"CREATE TABLE {name} (id int)")
    data = ["--data-dir", str(p.data_dir)]
    assert cli.main(["reviewer", "add", "dana", *data]) == 0
    token = re.search(r"^\s+(dbpr_\S+)$", capsys.readouterr().out, re.M)
    assert token, "the token is printed once"
    stored = (p.data_dir / "reviewers.json").read_text()
    assert token.group(1) not in stored  # only its hash is kept
    assert oct((p.data_dir / "reviewers.json").stat().st_mode & 0o777) == "0o600"
    with psycopg.connect(p.url("postgres", user="alice", password=PW["alice"]), autocommit=True) as a:
        a.execute(f"INSERT INTO {name} VALUES (7)")
    [held] = [t["id"] for t in p.review_request("GET", "/v1/pending")[1]]
    admin = ["--admin", f"{p.server.admin_address[0]}:{p.server.admin_address[1]}"]
    assert cli.main(["commit", str(held), "--reason", "reviewed the insert", *admin,
                     "--admin-token", token.group(1)]) == 0
    assert f"#{held} committed by dana: reviewed the insert" in capsys.readouterr().out
    assert direct(pg.url, "SELECT decided_by, reason FROM dbproxy.transactions WHERE id = %s", (held,)) == [
        ("dana", "reviewed the insert")]
    assert cli.main(["show", str(held), *admin, "--admin-token", p.token()]) == 0
    assert "decided by dana: reviewed the insert" in capsys.readouterr().out
    assert cli.main(["reviewer", "remove", "dana", *data]) == 0
    assert cli.main(["pending", *admin, "--admin-token", token.group(1)]) == 2
    assert "refused" in capsys.readouterr().err
    assert cli.main(["reviewer", "remove", "dana", *data]) == 2  # one line, no traceback
    assert "no reviewer 'dana'" in capsys.readouterr().err


# --- a proxy whose agents could reach its state does not start ---------------------------------


@pytest.mark.parametrize("grant", ["GRANT pg_read_all_data TO {role}", "GRANT {proxy} TO {role}",
                                   "GRANT pg_signal_backend TO {role}", "ALTER ROLE {role} SUPERUSER"])
def test_serve_refuses_agents_that_could_reach_the_state(pg: Postgres, make_proxy, grant: str):
    role = f"leaky_{uuid.uuid4().hex[:8]}"
    direct(pg.url, f"CREATE ROLE {role} NOLOGIN")
    direct(pg.url, grant.format(role=role, proxy=pg.user))
    try:
        with pytest.raises(RoleError) as info:
            make_proxy(mode="hold", agent_role=role)
        said = str(info.value)
        assert f"role {role}" in said and "could reach the proxy's own state" in said
        assert any(word in said for word in ("pg_read_all_data", pg.user, "pg_signal_backend", "superuser")), said
    finally:
        direct(pg.url, f"DROP ROLE {role}")


def test_serve_takes_privileges_on_the_state_away_from_the_agents(pg: Postgres, make_proxy):
    """Default privileges can hand the agents' role the journal's tables the moment they are made:
    `serve` takes them away before it listens (and the check then passes)."""
    first = make_proxy(mode="hold")
    first.stop()
    direct(pg.url, "GRANT SELECT, DELETE ON dbproxy.transactions TO dbproxy_agents")
    direct(pg.url, "GRANT CREATE ON SCHEMA dbproxy TO dbproxy_agents")
    make_proxy(mode="hold")
    assert direct(pg.url, "SELECT has_table_privilege('dbproxy_agents', 'dbproxy.transactions', 'SELECT'), "
                          "has_table_privilege('dbproxy_agents', 'dbproxy.transactions', 'DELETE'), "
                          "has_schema_privilege('dbproxy_agents', 'dbproxy', 'CREATE')") == [(False, False, False)]


def test_serve_cli_refuses_with_one_line_and_exit_code_2(pg: Postgres, tmp_path: Path):
    role = f"leaky_{uuid.uuid4().hex[:8]}"
    direct(pg.url, f"CREATE ROLE {role} NOLOGIN IN ROLE pg_read_all_data")
    try:
        env = {**os.environ, "DBPROXY_UPSTREAM": pg.url, "DBPROXY_AGENT": "bot=bot-pw", "DBPROXY_AGENT_ROLE": role}
        proc = subprocess.run([str(Path(os.sys.executable).with_name("dbproxy")), "serve", "--data-dir",
                               str(tmp_path / "d"), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "pg_read_all_data" in proc.stderr and "Traceback" not in proc.stderr
        assert pg.password not in proc.stderr
    finally:
        direct(pg.url, f"DROP ROLE {role}")


# --- the embedded default -------------------------------------------------------------------------


def test_embedded_default_keeps_agents_out_of_the_journal(tmp_path: Path, pg_bin: Path):
    served = Served(tmp_path / "embedded")
    try:
        match = re.search(r"postgresql://agent:(\S+)@127\.0\.0\.1:(\d+)/postgres\n", served.output)
        assert match, served.output
        env = {**os.environ, "PGPASSWORD": match.group(1), "PGHOST": "127.0.0.1", "PGPORT": str(served.port),
               "PGUSER": "agent", "PGDATABASE": "postgres"}
        ident = run_tool(pg_bin, "psql", ["-X", "-At", "-c", "SELECT current_user, session_user"], env)
        assert ident.stdout.strip() == "dbproxy_agents|dbproxy_agent_agent", ident.stderr
        for sql in ("SELECT count(*) FROM dbproxy.statements",
                    "DO $$BEGIN DELETE FROM dbproxy.transactions; END$$",
                    "ALTER ROLE current_user PASSWORD 'x'"):
            r = run_tool(pg_bin, "psql", ["-X", "-v", "ON_ERROR_STOP=1", "-c", sql], env)
            assert r.returncode != 0 and ("permission denied" in r.stderr or "dbproxy refused" in r.stderr), (sql, r)
    finally:
        code, err = served.stop()
    assert code == 0, err


def test_grant_agents_helper_is_what_the_suite_uses(pg: Postgres) -> None:
    """The suite's setup gives the agents' role nothing in the dbproxy schema (a sanity check on
    the fixtures the other tests rely on)."""
    grant_agents(pg.url, "postgres")
    assert direct(pg.url, "SELECT count(*) FROM information_schema.role_table_grants "
                          "WHERE grantee = 'dbproxy_agents' AND table_schema = 'dbproxy'") == [(0,)]

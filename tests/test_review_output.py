"""What `dbproxy show` and `dbproxy log` print, through the real CLI against a real proxy.

- `show` numbers an agent transaction's BEGIN with the statements it begins, marks read-only and
  SET statements as having changed nothing, marks an agent transaction rolled back because the
  agent disconnected, lists bind parameter values (secrets redacted, in the journal too), and
  prints numbers in the diff as PostgreSQL does (`27.00`, not `27.0`).
- `show` finds sessions of any role blocked by a held transaction, also when the proxy's own
  role may not read other roles' wait events.
- `log` has columns for who decided (an undo's own entry: the reviewer), undone/redone and the
  sandbox's verdict.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.conftest import ADMIN_TOKEN, AGENT, AGENT_PASSWORD, Postgres, RunningProxy
from tests.test_hold import Agent, decide
from tests.test_undo_proxy import Agent as UndoAgent
from tests.test_undo_proxy import dbname, direct, journal_undo
from tests.waiting import wait_until

CLI = [sys.executable, "-m", "dbproxy"]


def cli(proxy: RunningProxy, tmp_path: Path, *args: str,
        reviewer: str | None = None) -> subprocess.CompletedProcess[str]:
    """`dbproxy ARGS` against this proxy's review API, its address given as a URL, signed in as
    `reviewer` (by that reviewer's own token) or with the admin token."""
    token = proxy.token(reviewer) if reviewer else ADMIN_TOKEN
    env = {**os.environ, "DBPROXY_ADMIN_TOKEN": token, "COLUMNS": "200"}
    return subprocess.run([*CLI, *args, "--admin", proxy.admin_url + "/", "--data-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def show_json(proxy: RunningProxy, tmp_path: Path, tx_id: int) -> dict[str, Any]:
    r = cli(proxy, tmp_path, "show", str(tx_id), "--json")
    assert r.returncode == 0, r.stderr
    data: dict[str, Any] = json.loads(r.stdout)
    return data


@pytest.fixture
def prices(pg: Postgres, unique_name: str) -> Iterator[str]:
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"create table {unique_name} (id int primary key, price numeric(10,2), note text)")
        c.execute(f"insert into {unique_name} values (1, 26.50, 'a'), (2, 3.10, 'b')")
    yield unique_name
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("set lock_timeout = '5s'")
        c.execute(f"drop table if exists {unique_name}")


def test_show_numbers_begin_marks_reads_and_settings_and_keeps_numeric_scale(
        hold_proxy: RunningProxy, prices: str, pg_bin: Path, tmp_path: Path) -> None:
    script = (f"begin;\nselect count(*) from {prices};\nset search_path = public;\n"
              f"update {prices} set price = 27.00 where id = 1;\ncommit;\n")
    run = subprocess.run([str(pg_bin / "psql"), "-X", "-v", "ON_ERROR_STOP=1", hold_proxy.url()], input=script,
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    tx_id = int(re.search(r"held for review as #(\d+)", run.stderr).group(1))  # type: ignore[union-attr]
    try:
        out = cli(hold_proxy, tmp_path, "show", str(tx_id))
        assert out.returncode == 0, out.stderr
        text = out.stdout
        # One agent transaction, counted the same in the summary and in the listing; BEGIN is in it.
        assert "5 statements in 1 agent transaction" in text
        assert re.findall(r"agent transaction (\d+)", text) == ["1"], text
        assert re.search(r"1\s+BEGIN\s+BEGIN", text), text
        assert "select count(*)" in text and "-- read-only: changed nothing" in text
        assert "set search_path = public  -- session setting: changed no data" in text
        update_line = next(line for line in text.splitlines() if "update " in line)
        assert "changed" not in update_line  # the write is not marked
        # The diff prints the numeric as PostgreSQL does: its scale kept.
        assert "price: 26.50 → 27.00" in text, text

        data = show_json(hold_proxy, tmp_path, tx_id)
        assert [s["tx_no"] for s in data["statements"]] == [1, 1, 1, 1, 1]
        assert [s["effect"] for s in data["statements"]] == [None, "read-only", "setting", None, None]
        raw = cli(hold_proxy, tmp_path, "show", str(tx_id), "--json").stdout
        assert re.search(r'"price": 26\.50\b', raw) and re.search(r'"price": 27\.00\b', raw), raw
    finally:
        assert decide(hold_proxy, tx_id, "rollback")[0] == 200


def test_parameter_values_are_shown_and_secrets_redacted(hold_proxy: RunningProxy, proxy: RunningProxy,
                                                         prices: str, pg: Postgres, tmp_path: Path) -> None:
    secret = "s3cret-" + os.urandom(4).hex()
    held: list[int] = []
    try:
        # psycopg: text values, and binary ones with their types named in the Parse.
        a = Agent(hold_proxy)
        a.conn.execute(f"insert into {prices} values (%s, %s, %s)", (3, 5, f"postgresql://app:{secret}@db:5432/x"))
        a.conn.execute(f"update {prices} set note = %s where id = %b", (f"host=db password={secret} user=app", 2))
        a.conn.execute("select set_config('app.password', %s, false)", (secret,))
        held = a.held_ids()[:1]
        a.close()

        # asyncpg: binary values, their types named by the server (Describe), not in the Parse; a
        # type without a known binary format (bytea here) is shown as hex, cut.
        async def with_asyncpg() -> None:
            con = await asyncpg.connect(hold_proxy.url())
            try:
                await con.execute(f"update {prices} set note = $1 where id = $2 and $3::bytea is not null",
                                  "from asyncpg", 1, b"\x00\xff" * 100)
            finally:
                await con.close()

        asyncio.run(with_asyncpg())
        ids = sorted({*held, *(r["id"] for r in json.loads(cli(hold_proxy, tmp_path, "pending", "--json").stdout)
                               if r["agent"] == "agent")})
        out = "\n".join(cli(hold_proxy, tmp_path, "show", str(i)).stdout for i in ids)
        assert f"insert into {prices} values ($1, $2, $3)" in out
        assert "$1 = '3', $2 = '5', $3 = 'postgresql://app:***@db:5432/x'" in out, out
        assert "$1 = 'host=db password=*** user=app', $2 = '2'" in out, out
        assert "$1 = '***'" in out, out  # bound where a password goes
        assert "$1 = 'from asyncpg', $2 = '1', $3 = '\\x00ff00ff" in out, out
        # (The row diff shows the data as written: what is under review. Statements and values do not.)
        assert all(secret not in part.split("Changes")[0] for part in out.split("Statements")[1:])
        statements = [s for i in ids for s in show_json(hold_proxy, tmp_path, i)["statements"]]
        assert ["3", "5", "postgresql://app:***@db:5432/x"] in [s["params"] for s in statements]
        assert ["from asyncpg", "1", "\\x" + "00ff" * 32 + "… (200 bytes)"] in [s["params"] for s in statements]
        # What the journal stores has no secret either.
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            stored = c.execute("select count(*) from dbproxy.statements where tx_id = any(%s) and params is not null",
                               (ids,)).fetchone()
            leaked = c.execute("select count(*) from dbproxy.statements where params::text like %s",
                               (f"%{secret}%",)).fetchone()
        assert stored is not None and stored[0] >= 4 and leaked == (0,)
    finally:
        for i in json.loads(cli(hold_proxy, tmp_path, "pending", "--json").stdout):
            decide(hold_proxy, i["id"], "rollback")

    # Pass-through agents' statements keep their values too (a big one cut at once).
    with psycopg.connect(proxy.url()) as c:
        c.execute(f"insert into {prices} values (%s, %s, %s)", (7, "1.25", "passthrough value"))
        c.execute(f"insert into {prices} values (%s, %s, %s)", (8, "2", "x" * 10_000))
    deadline = time.monotonic() + 10
    found: list[Any] = []
    while time.monotonic() < deadline and not found:
        log = json.loads(cli(proxy, tmp_path, "log", "--json", "--limit", "10").stdout)
        for r in (r for r in log if r["mode"] == "passthrough"):
            statements = show_json(proxy, tmp_path, r["id"])["statements"]
            found += [s for s in statements if s["sql"].startswith(f"insert into {prices}")]
        time.sleep(0.1)
    assert [s["params"] for s in found][:2] == [["7", "1.25", "passthrough value"],
                                                ["8", "2", "x" * 200 + "… (10000 bytes)"]], found


def test_rollback_by_disconnect_is_marked(hold_proxy: RunningProxy, proxy: RunningProxy, prices: str,
                                          tmp_path: Path) -> None:
    a = Agent(hold_proxy)
    a.conn.execute(f"update {prices} set note = 'kept' where id = 1")
    [tx_id] = a.held_ids()
    try:
        a.conn.execute("begin")
        a.conn.execute(f"update {prices} set note = 'lost' where id = 2")
        a.conn.pgconn.finish()  # the agent goes away inside its second transaction
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            statements = show_json(hold_proxy, tmp_path, tx_id)["statements"]
            if any(s["tag"] == "ROLLBACK" for s in statements):
                break
            time.sleep(0.1)
        out = cli(hold_proxy, tmp_path, "show", str(tx_id)).stdout
        assert re.search(r"agent transaction 2\s+rolled back: the agent disconnected inside it", out), out
        assert "(the agent disconnected inside this transaction; it was rolled back)" in out
        assert "agent transaction 1  rolled back" not in out
        # The row diff agrees: only the first transaction's change is held.
        assert "note: 'a' → 'kept'" in out and "'lost'" not in out.split("Changes")[1]
    finally:
        decide(hold_proxy, tx_id, "rollback")

    # Pass-through: the transaction the agent left open is journaled as rolled back, marked.
    c = psycopg.connect(proxy.url())
    c.execute(f"update {prices} set note = 'never' where id = 2")
    pid = c.info.backend_pid
    c.pgconn.finish()
    deadline = time.monotonic() + 10
    entry = None
    while time.monotonic() < deadline and entry is None:
        log = json.loads(cli(proxy, tmp_path, "log", "--json", "--outcome", "rolled back").stdout)
        entry = next((r for r in log if r["backend_pid"] == pid), None)
        time.sleep(0.1)
    assert entry is not None
    # Its row is written first, its statements (which `show` reads the marking from) in a later batch.
    wait_until(lambda: show_json(proxy, tmp_path, entry["id"])["statements"],
               what=f"the statements of #{entry['id']} in the journal")
    out = cli(proxy, tmp_path, "show", str(entry["id"])).stdout
    assert "rolled back: the agent disconnected inside it" in out, out


@pytest.fixture
def roles(pg: Postgres, prices: str) -> Iterator[tuple[str, str, str]]:
    """An ordinary role for the proxy (CREATEROLE for its agents' roles, no pg_read_all_stats), the
    agents' role it manages, and another role that works directly."""
    tag = f"{os.getpid()}_{os.urandom(2).hex()}"
    proxy_role, other, agents = f"proxyrole_{tag}", f"other_{tag}", f"agents_{tag}"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"create role {proxy_role} login createrole password 'pw'")
        c.execute(f"create role {other} login password 'pw'")
        c.execute(f"create role {agents} nologin noinherit")
        c.execute(f"grant {agents} to {proxy_role} with admin option")
        for r in (other, agents):
            c.execute(f"grant select, update on {prices} to {r}")
    yield proxy_role, other, agents
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        for r in (proxy_role, other, f"agent_{tag}"):
            c.execute(f"select pg_terminate_backend(pid) from pg_stat_activity where usename = '{r}'")
        for r in (other, agents):
            c.execute(f"revoke all on {prices} from {r}")
        for r in (f"agent_{tag}", proxy_role, other, agents):
            c.execute(f"drop role if exists {r}")


def test_blocked_session_of_another_role_is_listed(make_proxy: Callable[..., RunningProxy], pg: Postgres,
                                                   prices: str, roles: tuple[str, str, str], tmp_path: Path) -> None:
    proxy_role, other, agents = roles
    upstream = f"postgresql://{proxy_role}:pw@{pg.host}:{pg.port}/postgres"
    held_proxy = make_proxy(upstream, mode="hold", state_database=pg.dsn(), agent_role=agents,  # journal as superuser
                            agents={AGENT: {"password": AGENT_PASSWORD, "databases": ["*"],
                                            "upstream_role": f"agent_{proxy_role.removeprefix('proxyrole_')}"}})
    a = Agent(held_proxy)
    done: list[int] = []
    try:
        a.conn.execute(f"update {prices} set note = 'held' where id = 1")
        [tx_id] = a.held_ids()

        def blocked() -> None:
            with psycopg.connect(f"postgresql://{other}:pw@{pg.host}:{pg.port}/postgres", autocommit=True,
                                 application_name="other-role-writer") as c:
                done.append(c.execute(f"update {prices} set note = 'later' where id = 1").rowcount)

        t = threading.Thread(target=blocked)
        t.start()
        blocking: list[dict[str, Any]] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not blocking:
            time.sleep(0.2)
            blocking = show_json(held_proxy, tmp_path, tx_id)["blocking"]
        assert [(b["user"], b["application_name"]) for b in blocking] == [(other, "other-role-writer")], blocking
        assert blocking[0]["query"] is None  # the proxy's role may not read it, and says so
        out = cli(held_proxy, tmp_path, "show", str(tx_id)).stdout
        assert re.search(rf"blocking: pid {blocking[0]['pid']} \({other}, other-role-writer\) \(waiting \d+ s\): "
                         r"\(its query is not visible to the proxy's database role\)", out), out
        assert done == []
        assert decide(held_proxy, tx_id, "rollback")[0] == 200
        t.join(15)
        assert done == [1]
    finally:
        a.close()


def test_log_columns_show_decider_undo_state_and_verdict(capture_db: str, make_proxy: Callable[..., RunningProxy],
                                                         tmp_path: Path) -> None:
    undo_proxy = make_proxy(capture_db, mode="undo")
    direct(capture_db, "CREATE TABLE acct (id int PRIMARY KEY, balance numeric(8,2) NOT NULL)")
    direct(capture_db, "INSERT INTO acct SELECT i, 100 FROM generate_series(1, 5) i")
    agent = UndoAgent(undo_proxy, dbname(capture_db))
    agent.conn.execute("UPDATE acct SET balance = balance - 1.50 WHERE id = 1")
    xid = int(direct(capture_db, "SELECT max(xid) FROM dbproxy.undo_records")[0][0])
    tx_id = journal_undo(undo_proxy, xid)["id"]
    agent.close()

    def log_row(i: int) -> list[str]:
        out = cli(undo_proxy, tmp_path, "log", "--limit", "10")
        assert out.returncode == 0, out.stderr
        assert "DECIDED BY" in out.stdout and "POLICY" in out.stdout and "UNDO" in out.stdout, out.stdout
        assert "VERIFIED" in out.stdout, out.stdout
        line = next(line for line in out.stdout.splitlines() if re.match(rf"\s*{i}\s", line))
        return line.split()

    row = log_row(tx_id)
    assert row[-4:] == ["agent", "-", "-", "verified"], row  # no rule or grant: no policy decided

    undone = cli(undo_proxy, tmp_path, "undo", str(tx_id), reviewer="dana")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    undo_id = int(re.search(r"journaled as #(\d+)", undone.stdout).group(1))  # type: ignore[union-attr]
    assert log_row(tx_id)[-4:] == ["agent", "-", "undone", "verified"]
    undo_row = log_row(undo_id)
    assert undo_row[1] == "reviewer:dana" and undo_row[-6:-1] == ["dana", "-", "undo", "of", f"#{tx_id}"], undo_row
    records = json.loads(cli(undo_proxy, tmp_path, "log", "--json").stdout)
    assert next(r for r in records if r["id"] == undo_id)["decided_by"] == "dana"

    redone = cli(undo_proxy, tmp_path, "redo", str(tx_id), reviewer="erin")
    assert redone.returncode == 0, redone.stdout + redone.stderr
    assert log_row(tx_id)[-4:] == ["agent", "-", "redone", "verified"]


def test_admin_address_forms(hold_proxy: RunningProxy, tmp_path: Path) -> None:
    """HOST:PORT, http://HOST:PORT and http://HOST:PORT/ work, on the command line and in the
    environment; anything else is one line and exit code 2."""
    host, port = hold_proxy.admin_url.removeprefix("http://").rsplit(":", 1)
    base = {**os.environ, "DBPROXY_ADMIN_TOKEN": ADMIN_TOKEN}
    base.pop("DBPROXY_ADMIN", None)
    for how, value in (("--admin", f"{host}:{port}"), ("--admin", f"http://{host}:{port}"),
                       ("env", f"http://{host}:{port}/"), ("env", f"{host}:{port}")):
        env = {**base, "DBPROXY_ADMIN": value} if how == "env" else base
        extra = ["--admin", value] if how == "--admin" else []
        r = subprocess.run([*CLI, "pending", *extra, "--data-dir", str(tmp_path)], env=env, capture_output=True,
                           text=True, timeout=60, check=False)
        assert r.returncode == 0, (value, r.stderr)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    for value, message in ((f"https://{host}:{port}", "speaks plain http://"),
                           (f"http://{host}", "must name a host and a port"),
                           (f"http://{host}:{port}/v1", "must be just http://HOST:PORT"),
                           ("http://[::1", "not a valid URL"),
                           (f"http://127.0.0.1:{closed}", f"cannot reach the review API at 127.0.0.1:{closed}")):
        r = subprocess.run([*CLI, "pending", "--data-dir", str(tmp_path)], env={**base, "DBPROXY_ADMIN": value},
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 2 and message in r.stderr, (value, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr

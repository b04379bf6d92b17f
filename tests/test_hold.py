"""Hold mode end to end: agents write through the proxy, a reviewer decides through the admin API.

Every test checks visibility from a second, direct connection: nothing before the reviewer
commits, everything after a commit, nothing after a rollback. Tables are created directly (not
through the proxy, which would hold the CREATE) and every test releases what it holds, so the
session-wide proxy stays clean.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import ADMIN_TOKEN, Postgres, RunningProxy
from tests.waiting import wait_running, wait_until


def api(proxy: RunningProxy, path: str, method: str = "GET", body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """A review-API request; a body's "reviewer" picks whose token makes it."""
    return proxy.review_request(method, path, body)


def pending_ids(proxy: RunningProxy) -> set[int]:
    status, body = api(proxy, "/v1/pending")
    assert status == 200
    return {t["id"] for t in body}


def decide(proxy: RunningProxy, tx_id: int, what: str, reviewer: str = "alice") -> tuple[int, Any]:
    return api(proxy, f"/v1/transactions/{tx_id}/{what}", "POST", {"reviewer": reviewer})


class Agent:
    """A psycopg agent connection that collects the notices it receives."""

    def __init__(self, proxy: RunningProxy, *, autocommit: bool = True) -> None:
        self.conn = psycopg.connect(proxy.url(), autocommit=autocommit)
        self.notices: list[str] = []
        self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))

    def held_ids(self) -> list[int]:
        return [int(n.split("#")[1].split()[0]) for n in self.notices if "held for review as #" in n]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def table(pg: Postgres, unique_name: str) -> Iterator[str]:
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"create table {unique_name} (id int primary key, v text)")
        c.execute(f"insert into {unique_name} values (1, 'one'), (2, 'two')")
    yield unique_name
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("set lock_timeout = '5s'")
        c.execute(f"drop table if exists {unique_name}")


@pytest.fixture
def direct(pg: Postgres) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        yield c


@pytest.fixture
def cleanup(hold_proxy: RunningProxy) -> Iterator[list[int]]:
    """Ids to roll back at the end if a test did not decide them."""
    ids: list[int] = []
    yield ids
    for tx_id in ids:
        decide(hold_proxy, tx_id, "rollback", "cleanup")


def statements_of(proxy: RunningProxy, tx_id: int) -> dict[str, Any]:
    """An ended transaction's detail once its statements are in the journal: a transaction that was
    never held is written after the fact, its row first and its statements in a later batch."""
    return wait_until(lambda: (d := api(proxy, f"/v1/transactions/{tx_id}")[1])["statements"] and d,
                      what=f"the statements of #{tx_id} in the journal")


def rows(conn: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    return conn.execute(f"select * from {table} order by id").fetchall()


def test_implicit_write_is_held_until_a_reviewer_commits(hold_proxy: RunningProxy, table: str,
                                                         direct: psycopg.Connection[Any], cleanup: list[int]) -> None:
    a = Agent(hold_proxy)
    try:
        cur = a.conn.execute(f"insert into {table} values (3, 'three')")
        assert cur.statusmessage == "INSERT 0 1"
        assert a.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        [tx_id] = a.held_ids()
        cleanup.append(tx_id)
        assert rows(a.conn, table)[-1] == (3, "three")  # the agent reads its own write
        assert rows(direct, table) == [(1, "one"), (2, "two")]  # nobody else does
        assert tx_id in pending_ids(hold_proxy)

        status, detail = api(hold_proxy, f"/v1/transactions/{tx_id}")
        assert status == 200
        assert detail["transaction"]["outcome"] == "pending"
        assert detail["agent_connected"] is True
        # Everything the agent ran on the chain is listed, reads included.
        assert [s["sql"] for s in detail["statements"]] == [f"insert into {table} values (3, 'three')",
                                                            f"select * from {table} order by id"]
        assert detail["statements"][0]["tag"] == "INSERT 0 1" and detail["statements"][0]["rows"] == 1
        [tdiff] = [d for d in detail["diff"] if table in d["table"]]
        assert (tdiff["inserted"], tdiff["updated"], tdiff["deleted"]) == (1, 0, 0)
        assert tdiff["rows"][0]["after"] == {"id": 3, "v": "three"}

        status, decision = decide(hold_proxy, tx_id, "commit")
        assert (status, decision["outcome"], decision["decided_by"]) == (200, "committed", "alice")
        assert rows(direct, table)[-1] == (3, "three")
        assert tx_id not in pending_ids(hold_proxy)
        a.conn.execute("select 1")  # an idle client reads the proxy's notice with its next answer
        assert any(f"#{tx_id} was committed by alice" in n for n in a.notices)
        # The journal keeps the decision.
        _, log = api(hold_proxy, "/v1/transactions?outcome=committed&limit=1000")
        assert any(t["id"] == tx_id and t["decided_by"] == "alice" for t in log)
        # The session goes on with a fresh chain.
        a.conn.execute(f"update {table} set v = 'uno' where id = 1")
        [_, second] = a.held_ids()
        cleanup.append(second)
        assert second != tx_id
        assert rows(direct, table)[0] == (1, "one")
    finally:
        a.close()


def test_chain_of_agent_transactions_and_agent_rollback(hold_proxy: RunningProxy, table: str,
                                                       direct: psycopg.Connection[Any], cleanup: list[int]) -> None:
    a = Agent(hold_proxy)
    try:
        with a.conn.transaction():
            a.conn.execute(f"update {table} set v = 'ONE' where id = 1")
        [tx_id] = a.held_ids()
        cleanup.append(tx_id)
        with pytest.raises(psycopg.errors.UniqueViolation), a.conn.transaction():
            a.conn.execute(f"insert into {table} values (4, 'four')")
            a.conn.execute(f"insert into {table} values (1, 'dup')")
        a.conn.execute("begin")
        a.conn.execute(f"delete from {table} where id = 2")
        a.conn.execute("rollback")  # only this agent transaction goes
        with a.conn.transaction():
            a.conn.execute(f"insert into {table} values (5, 'five')")
        assert a.held_ids() == [tx_id, tx_id]  # the same pending chain
        assert rows(a.conn, table) == [(1, "ONE"), (2, "two"), (5, "five")]
        assert rows(direct, table) == [(1, "one"), (2, "two")]
        _, detail = api(hold_proxy, f"/v1/transactions/{tx_id}")
        assert detail["transaction"]["agent_transactions"] == 2
        assert {s["tag"] for s in detail["statements"]} >= {"BEGIN", "COMMIT", "ROLLBACK"}
        assert decide(hold_proxy, tx_id, "commit")[0] == 200
        assert rows(direct, table) == [(1, "ONE"), (2, "two"), (5, "five")]
    finally:
        a.close()


def test_read_only_transactions_are_not_held(hold_proxy: RunningProxy, table: str) -> None:
    before = pending_ids(hold_proxy)
    a = Agent(hold_proxy, autocommit=False)
    try:
        assert rows(a.conn, table) == [(1, "one"), (2, "two")]
        a.conn.commit()
        a.conn.execute("set search_path = public")  # session settings are not writes
        a.conn.commit()
        a.conn.autocommit = True
        a.conn.execute(f"select count(*) from {table}")
        a.conn.execute(f"update {table} set v = v where id = 999")  # matches nothing: wrote nothing
        assert a.held_ids() == []
        assert pending_ids(hold_proxy) == before
    finally:
        a.close()


def test_reviewer_rollback_discards_everything(hold_proxy: RunningProxy, table: str,
                                               direct: psycopg.Connection[Any]) -> None:
    a = Agent(hold_proxy)
    try:
        a.conn.execute(f"delete from {table}")
        [tx_id] = a.held_ids()
        status, decision = decide(hold_proxy, tx_id, "rollback", "bob")
        assert (status, decision["outcome"]) == (200, "rolled back")
        assert rows(direct, table) == [(1, "one"), (2, "two")]
        assert rows(a.conn, table) == [(1, "one"), (2, "two")]
        assert any(f"#{tx_id} was rolled back by bob" in n for n in a.notices)
        status, again = decide(hold_proxy, tx_id, "commit")
        assert status == 409 and "rolled back" in again["error"]
        assert api(hold_proxy, "/v1/transactions/987654321")[0] == 404
    finally:
        a.close()


def test_disconnect_leaves_the_chain_pending(hold_proxy: RunningProxy, table: str,
                                             direct: psycopg.Connection[Any], cleanup: list[int]) -> None:
    a = Agent(hold_proxy)
    a.conn.execute(f"insert into {table} values (7, 'seven')")
    [tx_id] = a.held_ids()
    cleanup.append(tx_id)
    a.conn.execute("begin")
    a.conn.execute(f"insert into {table} values (8, 'unfinished')")
    a.close()  # the unfinished transaction goes, the held one stays
    # The proxy notices the closed socket on its own time (the session's reader ends, then detaches).
    wait_until(lambda: api(hold_proxy, f"/v1/transactions/{tx_id}")[1]["agent_connected"] is False,
               what="the proxy to see the agent leave")
    assert tx_id in pending_ids(hold_proxy)
    assert rows(direct, table) == [(1, "one"), (2, "two")]
    assert decide(hold_proxy, tx_id, "commit")[0] == 200
    assert rows(direct, table) == [(1, "one"), (2, "two"), (7, "seven")]


def test_several_agents_hold_at_once(hold_proxy: RunningProxy, table: str,
                                     direct: psycopg.Connection[Any], cleanup: list[int]) -> None:
    agents = [Agent(hold_proxy) for _ in range(4)]
    try:
        for i, a in enumerate(agents):
            a.conn.execute(f"insert into {table} values ({10 + i}, 'agent {i}')")
        ids = [a.held_ids()[0] for a in agents]
        cleanup.extend(ids)
        assert len(set(ids)) == 4 and set(ids) <= pending_ids(hold_proxy)
        assert decide(hold_proxy, ids[1], "commit")[0] == 200
        assert decide(hold_proxy, ids[2], "rollback")[0] == 200
        assert [r[0] for r in rows(direct, table)] == [1, 2, 11]
        assert decide(hold_proxy, ids[0], "commit")[0] == 200
        assert [r[0] for r in rows(direct, table)] == [1, 2, 10, 11]
    finally:
        for a in agents:
            a.close()


def test_sessions_blocked_by_a_held_lock_show_up(hold_proxy: RunningProxy, table: str, pg: Postgres,
                                                 direct: psycopg.Connection[Any], cleanup: list[int]) -> None:
    a = Agent(hold_proxy)
    result: list[Any] = []
    try:
        a.conn.execute(f"update {table} set v = 'held' where id = 1")
        [tx_id] = a.held_ids()
        cleanup.append(tx_id)

        def blocked_update() -> None:
            with psycopg.connect(pg.dsn(), autocommit=True, application_name="waiting-writer") as c:
                result.append(c.execute(f"update {table} set v = 'later' where id = 1").rowcount)

        t = threading.Thread(target=blocked_update)
        t.start()
        deadline = time.monotonic() + 10
        blocking: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not blocking:
            time.sleep(0.1)
            blocking = api(hold_proxy, f"/v1/transactions/{tx_id}")[1]["blocking"]
        assert [b["application_name"] for b in blocking] == ["waiting-writer"]
        assert "update" in blocking[0]["query"]
        assert result == []  # still waiting
        assert decide(hold_proxy, tx_id, "rollback")[0] == 200
        t.join(10)
        assert result == [1]
        assert rows(direct, table)[0] == (1, "later")
    finally:
        a.close()


def test_errors_inside_a_pending_chain_keep_it(hold_proxy: RunningProxy, table: str,
                                               direct: psycopg.Connection[Any], cleanup: list[int]) -> None:
    a = Agent(hold_proxy)
    try:
        a.conn.execute(f"insert into {table} values (20, 'kept')")
        [tx_id] = a.held_ids()
        cleanup.append(tx_id)
        with pytest.raises(psycopg.errors.DivisionByZero):
            a.conn.execute("select 1/0")
        with pytest.raises(psycopg.errors.UniqueViolation):  # the whole query string goes, not just the failing part
            a.conn.execute(f"insert into {table} values (21, 'gone'); insert into {table} values (20, 'dup')")
        with pytest.raises(psycopg.errors.SyntaxError):
            a.conn.execute("selec 1")
        assert rows(a.conn, table)[-1] == (20, "kept")
        assert a.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert decide(hold_proxy, tx_id, "commit")[0] == 200
        assert [r[0] for r in rows(direct, table)] == [1, 2, 20]
    finally:
        a.close()


def test_commit_waits_for_the_agents_transaction_to_end(hold_proxy: RunningProxy, table: str,
                                                       direct: psycopg.Connection[Any], cleanup: list[int]) -> None:
    a = Agent(hold_proxy)
    try:
        a.conn.execute(f"insert into {table} values (30, 'first')")
        [tx_id] = a.held_ids()
        cleanup.append(tx_id)
        a.conn.execute("begin")
        a.conn.execute(f"insert into {table} values (31, 'in progress')")
        status, body = decide(hold_proxy, tx_id, "commit")
        assert status == 409 and "inside a transaction" in body["error"]
        a.conn.execute("commit")
        assert decide(hold_proxy, tx_id, "commit")[0] == 200
        assert [r[0] for r in rows(direct, table)] == [1, 2, 30, 31]
    finally:
        a.close()


def test_reviewer_rollback_mid_transaction_ends_the_agent_session(hold_proxy: RunningProxy, table: str,
                                                                  direct: psycopg.Connection[Any]) -> None:
    a = Agent(hold_proxy)
    try:
        a.conn.execute(f"insert into {table} values (40, 'x')")
        [tx_id] = a.held_ids()
        a.conn.execute("begin")
        a.conn.execute(f"insert into {table} values (41, 'y')")
        assert decide(hold_proxy, tx_id, "rollback")[0] == 200
        with pytest.raises(psycopg.OperationalError, match=f"#{tx_id} was rolled back"):
            a.conn.execute("select 1")
        assert rows(direct, table) == [(1, "one"), (2, "two")]
    finally:
        a.close()


def test_failed_reviewer_commit_is_reported_and_journaled(hold_proxy: RunningProxy, pg: Postgres, unique_name: str,
                                                         direct: psycopg.Connection[Any]) -> None:
    parent, child = f"{unique_name}_p", f"{unique_name}_c"
    direct.execute(f"create table {parent} (id int primary key)")
    direct.execute(f"create table {child} (id int primary key, p int references {parent} "
                   "deferrable initially deferred)")
    a = Agent(hold_proxy)
    try:
        a.conn.execute(f"insert into {child} values (1, 999)")  # violates the FK, checked at COMMIT
        [tx_id] = a.held_ids()
        status, body = decide(hold_proxy, tx_id, "commit")
        assert status == 502 and body["sqlstate"] == "23503"
        assert direct.execute(f"select count(*) from {child}").fetchone() == (0,)
        _, detail = api(hold_proxy, f"/v1/transactions/{tx_id}")
        assert detail["transaction"]["outcome"] == "failed"
        assert "23503" in detail["transaction"]["reason"]
        assert tx_id not in pending_ids(hold_proxy)
        assert a.conn.execute("select 1").fetchone() == (1,)  # the agent's session carries on
    finally:
        a.close()
        direct.execute(f"drop table {child}, {parent}")


def test_pending_transactions_expire(make_proxy: Any, table: str, direct: psycopg.Connection[Any]) -> None:
    proxy = make_proxy(mode="hold", hold_timeout=1)
    a = Agent(proxy)
    try:
        a.conn.execute(f"insert into {table} values (50, 'expires')")
        [tx_id] = a.held_ids()
        # Expiry takes the transaction off the live list before the journal says so.
        detail = wait_until(lambda: (d := api(proxy, f"/v1/transactions/{tx_id}")[1])["transaction"]["outcome"]
                            != "pending" and d, what=f"#{tx_id} to expire")
        assert tx_id not in pending_ids(proxy)
        assert (detail["transaction"]["outcome"], detail["transaction"]["decided_by"]) == ("expired", "expiry")
        assert rows(direct, table) == [(1, "one"), (2, "two")]
        assert rows(a.conn, table) == [(1, "one"), (2, "two")]
        assert any(f"#{tx_id} expired" in n for n in a.notices)
    finally:
        a.close()


def test_restart_rolls_back_and_tells_the_agent(make_proxy: Any, pg: Postgres, tmp_path: Any, table: str,
                                                direct: psycopg.Connection[Any]) -> None:
    from tests.conftest import start_proxy

    state = tmp_path / "restart-state"
    first = start_proxy(pg.url, state, mode="hold")
    a = Agent(first)
    a.conn.execute(f"insert into {table} values (60, 'lost on restart')")
    [tx_id] = a.held_ids()
    a.close()
    first.stop()
    assert rows(direct, table) == [(1, "one"), (2, "two")]
    second = start_proxy(pg.url, state, mode="hold")
    try:
        _, detail = api(second, f"/v1/transactions/{tx_id}")
        assert (detail["transaction"]["outcome"], detail["transaction"]["decided_by"]) == ("rolled back", "restart")
        b = Agent(second)
        b.conn.execute("select 1")
        assert any(f"#{tx_id} was rolled back because the proxy restarted" in n for n in b.notices)
        b.close()
        c = Agent(second)  # told once
        assert not any(f"#{tx_id}" in n for n in c.notices)
        c.close()
    finally:
        second.stop()


def test_read_only_agent_cannot_write(make_proxy: Any, table: str, direct: psycopg.Connection[Any]) -> None:
    proxy = make_proxy(mode="read-only")
    with psycopg.connect(proxy.url(), autocommit=True) as c:
        assert len(rows(c, table)) == 2
        for sql in (f"insert into {table} values (70, 'x')", f"update {table} set v = 'x'",
                    f"create table {table}_2 (a int)", f"select * from {table} for update", "notify x"):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                c.execute(sql)
        with c.transaction():
            assert len(rows(c, table)) == 2
    assert rows(direct, table) == [(1, "one"), (2, "two")]


def test_reviewer_cli(hold_proxy: RunningProxy, table: str, direct: psycopg.Connection[Any],
                     capsys: pytest.CaptureFixture[str]) -> None:
    from dbproxy.cli import main

    host, port = hold_proxy.server.admin_address or ("", 0)
    common = ["--admin", f"{host}:{port}", "--admin-token", ADMIN_TOKEN]
    a = Agent(hold_proxy)
    try:
        a.conn.execute(f"update {table} set v = 'changed by cli test' where id = 2")
        [tx_id] = a.held_ids()
        capsys.readouterr()
        assert main(["pending", "--json", *common]) == 0
        assert tx_id in {t["id"] for t in json.loads(capsys.readouterr().out)}
        assert main(["show", str(tx_id), *common]) == 0
        out = capsys.readouterr().out
        assert "changed by cli test" in out and table in out
        # The token says who decides: carol's own.
        assert main(["commit", str(tx_id), "--reason", "cli test", "--admin", f"{host}:{port}",
                     "--admin-token", hold_proxy.token("carol")]) == 0
        assert f"#{tx_id} committed by carol: cli test" in capsys.readouterr().out
        assert rows(direct, table)[1] == (2, "changed by cli test")
        assert main(["rollback", str(tx_id), *common]) == 1
        assert main(["log", "--json", *common]) == 0
        assert any(t["id"] == tx_id and t["outcome"] == "committed" for t in json.loads(capsys.readouterr().out))
    finally:
        a.close()


def test_passthrough_agents_are_journaled(proxy: RunningProxy, table: str, direct: psycopg.Connection[Any]) -> None:
    """Pass-through (the default `proxy` fixture) relays unchanged but still records what was written."""
    with psycopg.connect(proxy.url(), autocommit=True, application_name=table) as c:
        c.execute(f"insert into {table} values (80, 'passes')")
        c.execute(f"select * from {table}")  # read-only: not journaled
        with pytest.raises(psycopg.errors.UniqueViolation), c.transaction():
            c.execute(f"update {table} set v = 'x' where id = 1")
            c.execute(f"insert into {table} values (80, 'dup')")
        c.execute(f"insert into {table} values (81, 'a'); insert into {table} values (82, 'b')")
        pid = c.info.backend_pid
    assert [r[0] for r in rows(direct, table)] == [1, 2, 80, 81, 82]  # nothing held
    deadline = time.monotonic() + 10
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(mine) < 3:
        time.sleep(0.1)
        mine = [t for t in api(proxy, "/v1/transactions?limit=1000")[1] if t["backend_pid"] == pid]
    assert [(t["mode"], t["outcome"]) for t in reversed(mine)] == [
        ("passthrough", "committed"), ("passthrough", "rolled back"), ("passthrough", "committed")]
    detail = statements_of(proxy, mine[-1]["id"])
    assert [(s["sql"], s["tag"], s["rows"]) for s in detail["statements"]] == [
        (f"insert into {table} values (80, 'passes')", "INSERT 0 1", 1)]
    failed = statements_of(proxy, mine[1]["id"])
    assert [s["sqlstate"] for s in failed["statements"]] == [None, None, "23505", None]
    assert failed["statements"][-1]["tag"] == "ROLLBACK"
    assert api(proxy, "/v1/pending")[1] == []


def test_cancel_inside_a_pending_chain(hold_proxy: RunningProxy, table: str, pg: Postgres,
                                       direct: psycopg.Connection[Any], cleanup: list[int]) -> None:
    a = Agent(hold_proxy)
    try:
        a.conn.execute(f"insert into {table} values (90, 'kept')")
        [tx_id] = a.held_ids()
        cleanup.append(tx_id)
        pid = a.conn.info.backend_pid

        def cancel_once_running() -> None:
            wait_running(pg.dsn(), "pg_sleep(30)", pid=pid)
            a.conn.cancel_safe()

        canceller = threading.Thread(target=cancel_once_running)
        canceller.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            a.conn.execute(f"update {table} set v = 'slow' where id = 1 and pg_sleep(30) is not null")
        canceller.join()
        assert rows(a.conn, table)[0] == (1, "one") and rows(a.conn, table)[-1] == (90, "kept")
        assert decide(hold_proxy, tx_id, "commit")[0] == 200
        assert [r[0] for r in rows(direct, table)] == [1, 2, 90]
    finally:
        a.close()


def test_journal_outage_rolls_back_instead_of_holding_unrecorded(make_proxy: Any, pg: Postgres, table: str,
                                                                 direct: psycopg.Connection[Any],
                                                                 unique_name: str) -> None:
    state_db = f"{unique_name}_state"[:60]
    direct.execute(f"create database {state_db}")
    proxy = None
    try:
        proxy = make_proxy(mode="hold", state_database=pg.dsn(state_db))
        a = Agent(proxy)
        direct.execute(f"alter database {state_db} allow_connections false")
        direct.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (state_db,))
        with pytest.raises(psycopg.errors.SystemError, match="could not record this transaction"):
            a.conn.execute(f"insert into {table} values (95, 'unrecorded')")
        assert rows(a.conn, table) == [(1, "one"), (2, "two")]  # rolled back, not held
        assert rows(direct, table) == [(1, "one"), (2, "two")]
        assert api(proxy, "/v1/pending")[1] == []
        a.close()
    finally:
        direct.execute(f"alter database {state_db} allow_connections true")
        if proxy is not None:
            proxy.stop()
        direct.execute(f"drop database {state_db} with (force)")


def test_agent_rollback_of_an_unheld_chain_is_journaled(hold_proxy: RunningProxy, table: str,
                                                        direct: psycopg.Connection[Any]) -> None:
    with psycopg.connect(hold_proxy.url(), autocommit=True) as c:
        pid = c.info.backend_pid
        c.execute("begin")
        c.execute(f"delete from {table} where id = 1")
        c.execute("rollback")
        c.execute(f"insert into {table} values (96, 'then held')")
        [tx_id] = [t["id"] for t in api(hold_proxy, "/v1/pending")[1] if t["backend_pid"] == pid]
        # The held chain starts afresh: the rolled-back delete is not part of it.
        _, detail = api(hold_proxy, f"/v1/transactions/{tx_id}")
        assert [s["sql"] for s in detail["statements"]] == [f"insert into {table} values (96, 'then held')"]
        assert decide(hold_proxy, tx_id, "rollback")[0] == 200
    deadline = time.monotonic() + 10
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not mine:
        time.sleep(0.1)
        mine = [t for t in api(hold_proxy, "/v1/transactions?outcome=rolled%20back&limit=1000")[1]
                if t["backend_pid"] == pid and t["decided_by"] == "agent"]
    assert [(t["mode"], t["outcome"]) for t in mine] == [("hold", "rolled back")]
    detail = statements_of(hold_proxy, mine[0]["id"])
    assert [s["tag"] for s in detail["statements"]] == ["BEGIN", "DELETE 1", "ROLLBACK"]
    assert rows(direct, table) == [(1, "one"), (2, "two")]


def test_lost_upstream_connection_fails_the_pending_transaction(hold_proxy: RunningProxy, table: str,
                                                                direct: psycopg.Connection[Any]) -> None:
    a = Agent(hold_proxy)
    try:
        a.conn.execute(f"insert into {table} values (97, 'lost')")
        [tx_id] = a.held_ids()
        pid = a.conn.info.backend_pid
        direct.execute("select pg_terminate_backend(%s)", (pid,))
        # The lost connection takes #tx_id off the live list first; the journal says "failed" after.
        wait_until(lambda: api(hold_proxy, f"/v1/transactions/{tx_id}")[1]["transaction"]["outcome"] == "failed",
                   what=f"#{tx_id} to fail")
        assert tx_id not in pending_ids(hold_proxy)
        status, body = decide(hold_proxy, tx_id, "commit")
        assert status == 409 and "failed" in body["error"]
        _, detail = api(hold_proxy, f"/v1/transactions/{tx_id}")
        assert "connection was lost" in detail["transaction"]["reason"]
        assert rows(direct, table) == [(1, "one"), (2, "two")]
        with pytest.raises(psycopg.OperationalError):
            a.conn.execute("select 1")  # the agent is told its session is gone
    finally:
        a.close()

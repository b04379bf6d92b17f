"""Policies end to end: rules (allow, ask by holding or pausing, deny), grants once / for the session /
permanently, what the agent is told (`SHOW dbproxy.*`, 55P03 behind a held lock), and reloading.

Real proxies on a real PostgreSQL, agents through psycopg (also pipelined), asyncpg, SQLAlchemy and
psql; a second, direct connection checks what is visible. Reviewers act through the admin API.
Databases come with capture installed (`capture_db`) where an allowed transaction must commit with
its inverse.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import sqlalchemy

from tests.conftest import AGENT, AGENT_PASSWORD, CommandResult, Postgres, RunningProxy, run_tool
from tests.waiting import wait_until

MakeProxy = Callable[..., RunningProxy]

ALLOW_INSERT = {"ops": ["insert"], "objects": ["orders"], "decision": "allow"}
PAUSE_DELETE = {"ops": ["delete"], "objects": ["*"], "decision": "ask", "ask": "pause"}
DENY_DROP = {"ops": ["ddl-drop"], "objects": ["*"], "decision": "deny"}


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?")[0]


def direct(url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as c:
        cur = c.execute(sql, args or None)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def shop(capture_db: str) -> str:
    """`orders` and `customers` in a database with capture installed; returns its URL."""
    direct(capture_db, "CREATE TABLE orders (id int PRIMARY KEY, item text)")
    direct(capture_db, "CREATE TABLE customers (id int PRIMARY KEY, name text, credit int)")
    direct(capture_db, "INSERT INTO orders VALUES (1, 'apple'), (2, 'pear')")
    direct(capture_db, "INSERT INTO customers SELECT i, 'c' || i, 100 FROM generate_series(1, 20) i")
    return capture_db


class Agent:
    """A psycopg agent session (autocommit) that keeps the notices it gets. `later` runs a statement
    in a thread; the connection is never used by two threads at once (closing waits for it)."""

    def __init__(self, proxy: RunningProxy, database: str, user: str = AGENT, password: str = AGENT_PASSWORD,
                 **kw: Any) -> None:
        self.proxy = proxy
        self.conn = psycopg.connect(proxy.url(database, user=user, password=password), autocommit=True, **kw)
        self.notices: list[str] = []
        self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))
        self.thread: threading.Thread | None = None

    def run(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(sql, args or None)
        return cur.fetchall() if cur.description else []

    def later(self, sql: str, *args: object) -> Future[Any]:
        """Run `sql` in a thread (it may wait for a reviewer); the future has its rows or error."""
        fut: Future[Any] = Future()

        def go() -> None:
            try:
                fut.set_result(self.run(sql, *args))
            except BaseException as e:
                fut.set_exception(e)
        self.thread = threading.Thread(target=go, daemon=True)
        self.thread.start()
        return fut

    def in_thread(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Future[Any]:
        """Run `fn(connection)` in a thread, like `later`."""
        fut: Future[Any] = Future()

        def go() -> None:
            try:
                fut.set_result(fn(self.conn))
            except BaseException as e:
                fut.set_exception(e)
        self.thread = threading.Thread(target=go, daemon=True)
        self.thread.start()
        return fut

    def close(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            # A test failed while the statement waited for approval: reject what waits, then wait
            # for the thread to finish with the connection.
            for r in requests(self.proxy):
                decide(self.proxy, r["id"], "reject", reason="the test is over")
            self.thread.join(15)
        self.conn.close()


def requests(proxy: RunningProxy, **query: str) -> list[dict[str, Any]]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    status, body = proxy.review_request("GET", "/v1/requests" + (f"?{qs}" if qs else ""))
    assert status == 200, body
    return list(body)


def wait_request(proxy: RunningProxy, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = requests(proxy)
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("no request waited for approval")


def wait_notice(agent: Agent, text: str) -> None:
    """Wait until the agent has a notice containing `text`. The request is visible to reviewers a
    moment before the agent's client has read the NOTICE sent right after recording it."""
    wait_until(lambda: any(text in n for n in agent.notices), what=f"a notice containing {text!r}")


def decide(proxy: RunningProxy, request_id: int, what: str, **body: Any) -> tuple[int, Any]:
    body.setdefault("reviewer", "rita")
    return proxy.review_request("POST", f"/v1/requests/{request_id}/{what}", body)


def held_ids(notices: list[str]) -> list[int]:
    return [int(m.group(1)) for n in notices if (m := re.search(r"held for review as #(\d+)", n))]


def journal(proxy: RunningProxy, tx_id: int) -> dict[str, Any]:
    status, body = proxy.review_request("GET", f"/v1/transactions/{tx_id}")
    assert status == 200, body
    return dict(body["transaction"])


def last_journaled(proxy: RunningProxy, *, outcome: str, after: int = 0, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = proxy.review_request("GET", f"/v1/transactions?outcome={outcome.replace(' ', '%20')}&limit=20")
        assert status == 200
        found = [t for t in body if t["id"] > after]
        if found:
            return dict(found[0])
        time.sleep(0.05)
    raise AssertionError(f"no journal entry with outcome {outcome}")


def rollback_all(proxy: RunningProxy) -> None:
    _, pending = proxy.review_request("GET", "/v1/pending")
    for t in pending or []:
        proxy.review_request("POST", f"/v1/transactions/{t['id']}/rollback", {})


# --- allow -------------------------------------------------------------------------------------


def test_allowed_insert_commits_at_once_and_is_undoable(make_proxy: MakeProxy, shop: str) -> None:
    proxy = make_proxy(shop, mode="hold", rules=[ALLOW_INSERT])
    agent = Agent(proxy, dbname(shop))
    try:
        agent.run("INSERT INTO orders VALUES (3, 'plum')")
        assert direct(shop, "SELECT item FROM orders WHERE id = 3") == [("plum",)]  # visible at once
        assert not held_ids(agent.notices)
        # Not covered: the mode (hold) decides.
        agent.run("UPDATE orders SET item = 'fig' WHERE id = 1")
        assert held_ids(agent.notices)
        assert direct(shop, "SELECT item FROM orders WHERE id = 1") == [("apple",)]
    finally:
        agent.close()
        rollback_all(proxy)
    tx = last_journaled(proxy, outcome="committed")
    assert tx["decided_by"] == "rules[0]" and "rules[0]: allow insert on orders" in tx["policy"], tx
    assert tx["undo"]["verification"]["status"] == "verified"
    status, body = proxy.review_request("POST", f"/v1/transactions/{tx['id']}/undo", {"reviewer": "rita"})
    assert status == 200 and body["applied"], body
    assert direct(shop, "SELECT count(*) FROM orders WHERE id = 3") == [(0,)]


def test_max_rows_exceeded_falls_back_to_ask(make_proxy: MakeProxy, shop: str) -> None:
    rule = {"ops": ["update"], "objects": ["public.customers"], "decision": "allow", "max_rows": 3}
    proxy = make_proxy(shop, mode="undo", agents={AGENT: {"password": AGENT_PASSWORD, "databases": ["*"],
                                                          "rules": [rule]}})
    agent = Agent(proxy, dbname(shop))
    try:
        agent.run("UPDATE customers SET credit = credit - 1 WHERE id <= 3")  # 3 rows: allowed
        assert not held_ids(agent.notices)
        assert direct(shop, "SELECT sum(credit) FROM customers WHERE id <= 3") == [(297,)]
        agent.run("UPDATE customers SET credit = 0 WHERE id <= 10")  # 10 rows: above max_rows
        [tx_id] = held_ids(agent.notices)
        assert direct(shop, "SELECT count(*) FROM customers WHERE credit = 0") == [(0,)]
        policy = journal(proxy, tx_id)["policy"]
        assert "allows at most 3 rows" in policy and "changed 10" in policy, policy
    finally:
        agent.close()
        rollback_all(proxy)


def test_max_rows_counts_cascades_seen_by_capture(make_proxy: MakeProxy, shop: str) -> None:
    """A one-row DELETE whose ON DELETE CASCADE removes many more rows is counted by what capture
    saw, not by the command tag's 1."""
    direct(shop, "CREATE TABLE lines (id int PRIMARY KEY, order_id int REFERENCES orders ON DELETE CASCADE)")
    direct(shop, "INSERT INTO lines SELECT i, 1 FROM generate_series(1, 8) i")
    rule = {"ops": ["delete"], "objects": ["*"], "decision": "allow", "max_rows": 5}
    proxy = make_proxy(shop, mode="hold", rules=[rule])
    agent = Agent(proxy, dbname(shop))
    try:
        agent.run("DELETE FROM orders WHERE id = 1")
        [tx_id] = held_ids(agent.notices)
        assert "public.lines changed 8" in journal(proxy, tx_id)["policy"]
        assert direct(shop, "SELECT count(*) FROM lines") == [(8,)]
    finally:
        agent.close()
        rollback_all(proxy)


def test_allow_in_undo_mode_still_asks_for_what_cannot_be_undone(make_proxy: MakeProxy, shop: str) -> None:
    proxy = make_proxy(shop, mode="undo", rules=[{"ops": ["notify", "insert"], "objects": ["*"], "decision": "allow"}])
    agent = Agent(proxy, dbname(shop))
    try:
        agent.run("INSERT INTO orders VALUES (4, 'kiwi')")
        assert not held_ids(agent.notices)
        agent.run("NOTIFY orders_changed")
        [tx_id] = held_ids(agent.notices)
        assert "cannot be taken back" in " ".join([*agent.notices, str(journal(proxy, tx_id)["policy"])])
    finally:
        agent.close()
        rollback_all(proxy)


def test_allow_in_hold_mode_without_capture_holds(make_proxy: MakeProxy, pg: Postgres, unique_name: str) -> None:
    direct(pg.dsn(), f"CREATE TABLE {unique_name} (id int PRIMARY KEY)")
    proxy = make_proxy(pg.url, mode="hold", rules=[{"ops": ["insert"], "objects": ["*"], "decision": "allow"}])
    agent = Agent(proxy, "postgres")
    try:
        agent.run(f"INSERT INTO {unique_name} VALUES (1)")
        [tx_id] = held_ids(agent.notices)
        assert direct(pg.dsn(), f"SELECT count(*) FROM {unique_name}") == [(0,)]
        assert "capture is not installed" in journal(proxy, tx_id)["policy"]
    finally:
        agent.close()
        rollback_all(proxy)
        direct(pg.dsn(), f"DROP TABLE {unique_name}")


# --- deny --------------------------------------------------------------------------------------


def test_deny_refuses_naming_the_rule_and_runs_nothing(make_proxy: MakeProxy, shop: str) -> None:
    proxy = make_proxy(shop, mode="undo", rules=[DENY_DROP, {"ops": ["read"], "objects": ["customers"],
                                                             "decision": "deny"}])
    agent = Agent(proxy, dbname(shop))
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"rules\[0\]: deny ddl-drop"):
            agent.run("DROP TABLE orders")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"rules\[1\]: deny read on customers"):
            agent.run("SELECT * FROM customers")
        assert agent.run("SELECT count(*) FROM orders") == [(2,)]  # other reads are fine, the session too
        assert direct(shop, "SELECT to_regclass('orders') IS NOT NULL") == [(True,)]
    finally:
        agent.close()


def test_deny_catches_writes_hidden_in_a_function(make_proxy: MakeProxy, shop: str) -> None:
    direct(shop, "CREATE FUNCTION wipe() RETURNS void LANGUAGE sql AS 'DELETE FROM customers'")
    rules = [{"ops": ["delete"], "objects": ["customers"], "decision": "deny"},
             {"ops": ["function"], "objects": ["*"], "decision": "allow"}]
    proxy = make_proxy(shop, mode="undo", rules=rules)
    agent = Agent(proxy, dbname(shop))
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match=r"denied this transaction.*delete public\.customers"):
            agent.run("SELECT wipe()")
        assert direct(shop, "SELECT count(*) FROM customers") == [(20,)]
    finally:
        agent.close()
    tx = last_journaled(proxy, outcome="rolled back")
    assert tx["policy"].startswith("deny:"), tx


# --- ask: hold ----------------------------------------------------------------------------------


def test_ask_hold_holds_and_commit_grant_session_covers_the_rest_of_the_session(make_proxy: MakeProxy,
                                                                               shop: str) -> None:
    proxy = make_proxy(shop, mode="undo", rules=[{"ops": ["update"], "objects": ["orders"], "decision": "ask"}])
    agent = Agent(proxy, dbname(shop))
    try:
        agent.run("UPDATE orders SET item = 'fig' WHERE id = 1")
        [tx_id] = held_ids(agent.notices)
        assert "rules[0]" in journal(proxy, tx_id)["policy"]
        status, body = proxy.review_request("POST", f"/v1/transactions/{tx_id}/commit",
                                            {"reviewer": "rita", "grant": "session", "reason": "fine today"})
        assert status == 200 and body["outcome"] == "committed" and body["grant"], body
        agent.run("UPDATE orders SET item = 'date' WHERE id = 2")  # covered by the session grant
        assert len(held_ids(agent.notices)) == 1
        assert direct(shop, "SELECT item FROM orders ORDER BY id") == [("fig",), ("date",)]
        status, grants = proxy.review_request("GET", "/v1/grants")
        assert [(g["scope"], g["ops"], g["objects"], g["granted_by"]) for g in grants] == \
            [("session", ["update"], ["public.orders"], "rita")]
    finally:
        agent.close()
    # The session ended: so did its grant, and a new session asks again.
    again = Agent(proxy, dbname(shop))
    try:
        again.run("UPDATE orders SET item = 'lime' WHERE id = 1")
        assert held_ids(again.notices)
    finally:
        again.close()
        rollback_all(proxy)
    # The grant ends when the proxy has seen the first session go (`Policy.session_ended`), which
    # runs after the client closed, on the proxy's time.
    grants = wait_until(lambda: (g := proxy.review_request("GET", "/v1/grants?all=1")[1])[0]["revoked_at"] and g,
                        what="the session grant to end with its session")
    assert grants[0]["revoked_at"] and grants[0]["revoke_reason"] == "the agent's session ended"


# --- ask: pause ---------------------------------------------------------------------------------


def test_pause_approve_once_runs_it_and_the_next_one_waits_again(make_proxy: MakeProxy, shop: str) -> None:
    proxy = make_proxy(shop, mode="hold", rules=[PAUSE_DELETE], approval_timeout=30)
    agent = Agent(proxy, dbname(shop))
    try:
        result = agent.later("DELETE FROM orders WHERE id = 1")
        req = wait_request(proxy)
        assert req["statements"] == ["DELETE FROM orders WHERE id = 1"] and req["actions"] == ["delete public.orders"]
        wait_notice(agent, f"waiting for approval as request #{req['id']}")
        time.sleep(0.3)
        assert not result.done()  # nothing ran: the row is still there
        assert direct(shop, "SELECT count(*) FROM orders WHERE id = 1") == [(1,)]
        status, body = decide(proxy, req["id"], "approve", scope="once", reason="ok")
        assert status == 200 and body["state"] == "approved", body
        result.result(timeout=10)
        # Approved once: it ran and committed (the once approval covers it at COMMIT).
        assert direct(shop, "SELECT count(*) FROM orders WHERE id = 1") == [(0,)]
        assert not held_ids(agent.notices)
        # Consumed: the same statement again (and a different one) waits again.
        second = agent.later("DELETE FROM orders WHERE id = 2")
        req2 = wait_request(proxy)
        assert req2["id"] != req["id"]
        decide(proxy, req2["id"], "reject", reason="not this one")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"request #{req2['id']} was rejected by "
                                                                        "rita: not this one"):
            second.result(timeout=10)
        assert direct(shop, "SELECT count(*) FROM orders WHERE id = 2") == [(1,)]
        assert agent.run("SELECT 1") == [(1,)]  # the session carries on
    finally:
        agent.close()
    status, grants = proxy.review_request("GET", "/v1/grants?all=1")
    assert [(g["scope"], bool(g["consumed_at"])) for g in grants] == [("once", True)]


def test_an_approved_statement_commits_even_without_an_inverse(make_proxy: MakeProxy, pg: Postgres,
                                                               unique_name: str) -> None:
    """A once approval is the person's decision: without capture (no inverse) the approved DELETE
    still commits, and the journal says it cannot be undone; a rule's allow would have held it."""
    direct(pg.dsn(), f"CREATE TABLE {unique_name} (id int PRIMARY KEY)")
    direct(pg.dsn(), f"INSERT INTO {unique_name} VALUES (1), (2)")
    proxy = make_proxy(pg.url, mode="hold", rules=[PAUSE_DELETE], approval_timeout=30)
    # Earlier tests' entries share this journal: only what is journaled from here on counts
    # (the commit is journaled in the background, and may land after a look at the newest).
    _, newest = proxy.review_request("GET", "/v1/transactions?limit=1")
    after = newest[0]["id"] if newest else 0
    agent = Agent(proxy, "postgres")
    try:
        done = agent.later(f"DELETE FROM {unique_name} WHERE id = 1")
        decide(proxy, wait_request(proxy)["id"], "approve", scope="once")
        done.result(timeout=10)
        assert direct(pg.dsn(), f"SELECT id FROM {unique_name}") == [(2,)]
        assert not held_ids(agent.notices)
        assert any("cannot be undone exactly" in n for n in agent.notices), agent.notices
    finally:
        agent.close()
        direct(pg.dsn(), f"DROP TABLE {unique_name}")
    tx = last_journaled(proxy, outcome="committed", after=after)
    assert tx["decided_by"] == "rita" and tx["policy"].startswith("allow: approved by rita (request #"), tx


def test_pause_approve_session_covers_that_session_only(make_proxy: MakeProxy, shop: str) -> None:
    proxy = make_proxy(shop, mode="hold", rules=[PAUSE_DELETE], approval_timeout=30)
    agent = Agent(proxy, dbname(shop))
    try:
        first = agent.later("DELETE FROM orders WHERE id = 1")
        decide(proxy, wait_request(proxy)["id"], "approve", scope="session")
        first.result(timeout=10)
        # Later deletes of this session run without asking: the session grant covers them (the
        # mode still decides the COMMIT: hold mode holds what no rule allows).
        agent.run("DELETE FROM orders WHERE id = 2")
        assert not requests(proxy)
        assert direct(shop, "SELECT count(*) FROM orders") == [(0,)]
    finally:
        agent.close()
    other = Agent(proxy, dbname(shop))
    try:
        waiting = other.later("DELETE FROM customers WHERE id = 1")
        req = wait_request(proxy)
        decide(proxy, req["id"], "reject", reason="new session")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            waiting.result(timeout=10)
    finally:
        other.close()


def test_pause_approve_permanent_survives_a_restart_and_can_be_revoked(make_proxy: MakeProxy, shop: str) -> None:
    proxy = make_proxy(shop, mode="hold", rules=[PAUSE_DELETE], approval_timeout=30)
    agent = Agent(proxy, dbname(shop))
    try:
        first = agent.later("DELETE FROM customers WHERE id = 1")
        status, body = decide(proxy, wait_request(proxy)["id"], "approve", scope="permanent", reason="cleanup job")
        assert status == 200, body
        first.result(timeout=10)
    finally:
        agent.close()
    proxy.stop()
    again = make_proxy(shop, mode="hold", rules=[PAUSE_DELETE], approval_timeout=30)
    agent = Agent(again, dbname(shop))
    try:
        agent.run("DELETE FROM customers WHERE id = 2")  # the permanent grant: no pause, commits
        assert not requests(again)
        assert direct(shop, "SELECT count(*) FROM customers WHERE id <= 2") == [(0,)]
        status, [grant] = again.review_request("GET", "/v1/grants")
        assert grant["scope"] == "permanent" and grant["reason"] == "cleanup job"
        status, body = again.review_request("POST", f"/v1/grants/{grant['id']}/revoke",
                                            {"reviewer": "rita", "reason": "job done"})
        assert status == 200 and body["revoked_by"] == "rita"
        status, body = again.review_request("POST", f"/v1/grants/{grant['id']}/revoke", {"reviewer": "rita"})
        assert status == 409
        waiting = agent.later("DELETE FROM customers WHERE id = 3")
        decide(again, wait_request(again)["id"], "reject", reason="revoked")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            waiting.result(timeout=10)
    finally:
        agent.close()


def test_pause_times_out_with_42501(make_proxy: MakeProxy, shop: str) -> None:
    proxy = make_proxy(shop, mode="hold", rules=[PAUSE_DELETE], approval_timeout=1)
    agent = Agent(proxy, dbname(shop))
    try:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="was not decided in time"):
            agent.run("DELETE FROM orders")
        assert time.monotonic() - started < 10
        assert direct(shop, "SELECT count(*) FROM orders") == [(2,)]
        [req] = requests(proxy, all="1")
        assert req["state"] == "expired"
        status, body = decide(proxy, req["id"], "approve")
        assert status == 409 and "expired" in body["error"]
    finally:
        agent.close()


def test_disconnect_cancels_the_waiting_request(make_proxy: MakeProxy, shop: str, pg_bin: Path) -> None:
    import subprocess

    proxy = make_proxy(shop, mode="hold", rules=[PAUSE_DELETE], approval_timeout=30)
    psql = subprocess.Popen([str(pg_bin / "psql"), "-X", "-c", "DELETE FROM orders"], env=proxy.env(dbname(shop)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        req = wait_request(proxy)
    finally:
        psql.kill()  # the agent goes away while it waits
        psql.wait(10)
    deadline = time.monotonic() + 10
    while requests(proxy) and time.monotonic() < deadline:
        time.sleep(0.05)
    [ended] = requests(proxy, all="1")
    assert ended["id"] == req["id"] and ended["state"] == "cancelled"
    assert direct(shop, "SELECT count(*) FROM orders") == [(2,)]
    assert decide(proxy, req["id"], "approve")[0] == 409


def test_pause_in_a_multi_statement_query_and_a_pipeline(make_proxy: MakeProxy, shop: str, pg_bin: Path) -> None:
    proxy = make_proxy(shop, mode="hold", rules=[ALLOW_INSERT, PAUSE_DELETE], approval_timeout=30)
    database = dbname(shop)
    # psql sends the three statements as one simple query: the request lists them all, and nothing
    # of it runs before the approval.
    env = proxy.env(database)
    done: Future[CommandResult] = Future()
    threading.Thread(target=lambda: done.set_result(run_tool(
        pg_bin, "psql", ["-X", "-c", "INSERT INTO orders VALUES (5, 'a'); DELETE FROM orders WHERE id = 1; "
                                     "INSERT INTO orders VALUES (6, 'b')"], env)), daemon=True).start()
    req = wait_request(proxy)
    assert len(req["statements"]) == 3 and req["actions"] == ["delete public.orders"]
    assert direct(shop, "SELECT count(*) FROM orders WHERE id IN (5, 6)") == [(0,)]
    decide(proxy, req["id"], "approve")
    out = done.result(timeout=20)
    assert out.returncode == 0, out.stderr
    assert direct(shop, "SELECT id FROM orders ORDER BY id") == [(2,), (5,), (6,)]

    # A psycopg pipeline: Parse/Bind/Execute for each statement, one Sync; the paused DELETE is
    # refused (rejected) and so, by PostgreSQL's rules, is the rest of that batch.
    agent = Agent(proxy, database)
    try:
        def pipeline(conn: psycopg.Connection[Any]) -> None:
            with conn.pipeline():
                conn.execute("INSERT INTO orders VALUES (%s, %s)", (7, "c"))
                conn.execute("DELETE FROM orders WHERE id = %s", (2,))
        fut = agent.in_thread(pipeline)
        req = wait_request(proxy)
        assert req["statements"][1].startswith("DELETE FROM orders WHERE id = $1") and "$1 = '2'" in \
            req["statements"][1], req
        decide(proxy, req["id"], "reject", reason="keep order 2")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="keep order 2"):
            fut.result(timeout=10)
        assert direct(shop, "SELECT count(*) FROM orders WHERE id IN (2, 7)") == [(1,)]
        assert direct(shop, "SELECT count(*) FROM orders WHERE id = 7") == [(0,)]
    finally:
        agent.close()


def test_a_statement_prepared_earlier_is_paused_when_executed(make_proxy: MakeProxy, shop: str) -> None:
    """asyncpg prepares first and executes later: the pause happens at the Execute, with the
    statement's text and its parameters in the request."""
    proxy = make_proxy(shop, mode="hold", rules=[PAUSE_DELETE], approval_timeout=30)

    async def main() -> None:
        con = await asyncpg.connect(proxy.url(dbname(shop)))
        try:
            stmt = await con.prepare("DELETE FROM orders WHERE id = $1")
            task = asyncio.ensure_future(stmt.fetch(1))
            req = await asyncio.to_thread(wait_request, proxy)
            assert "$1 = '1'" in req["statements"][0] or "$1 = " in req["statements"][0], req
            await asyncio.to_thread(decide, proxy, req["id"], "approve")
            await asyncio.wait_for(task, 10)
        finally:
            await con.close()
    asyncio.run(main())
    assert direct(shop, "SELECT id FROM orders") == [(2,)]


# --- permanence -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ops, why", [(["notify"], "notification"),
                                      (["function"], "function"), (["delete", "notify"], "notification")])
def test_permanent_grants_refused_for_what_cannot_be_undone(make_proxy: MakeProxy, shop: str, ops: list[str],
                                                            why: str) -> None:
    proxy = make_proxy(shop, mode="hold")
    status, body = proxy.review_request("POST", "/v1/grants", {"reviewer": "rita", "agent": AGENT, "ops": ops,
                                                               "objects": ["*"], "scope": "permanent"})
    assert status == 422 and why in body["error"] and "permanent grant is refused" in body["error"], body
    status, grants = proxy.review_request("GET", "/v1/grants?all=1")
    assert grants == []


@pytest.mark.parametrize("ops, why", [(["truncate"], "capture is not installed"),
                                      (["ddl-drop"], "ddl-drop: DDL capture (event triggers"),
                                      (["privilege"], "privilege: DDL capture (event triggers")])
def test_permanent_grants_refused_without_capture_allowed_with_it(make_proxy: MakeProxy, pg: Postgres, shop: str,
                                                                  ops: list[str], why: str) -> None:
    """Row changes need capture; drops and GRANT/REVOKE need DDL capture too (the state before them
    is kept by it): where it is installed, their inverse is exact and a permanent grant is allowed."""
    without = make_proxy(pg.url, mode="hold")  # the suite's database: no capture installed
    status, body = without.review_request("POST", "/v1/grants", {"reviewer": "rita", "agent": AGENT,
                                                                 "ops": ops, "scope": "permanent"})
    assert status == 422 and why in body["error"], body
    with_capture = make_proxy(shop, mode="hold", agents={AGENT: {"password": AGENT_PASSWORD,
                                                                 "databases": [dbname(shop)]}})
    status, body = with_capture.review_request("POST", "/v1/grants", {"reviewer": "rita", "agent": AGENT,
                                                                      "ops": ops, "scope": "permanent"})
    assert status == 201 and body["scope"] == "permanent" and body["ops"] == ops, body


def test_grant_and_approval_mistakes(make_proxy: MakeProxy, shop: str) -> None:
    agents = {AGENT: {"password": AGENT_PASSWORD, "databases": ["*"]},
              "bot": {"password": "bot-secret", "databases": ["*"]}}
    proxy = make_proxy(shop, mode="hold", rules=[PAUSE_DELETE], approval_timeout=30, agents=agents)
    status, body = proxy.review_request("POST", "/v1/grants", {"reviewer": "rita", "agent": "nobody",
                                                               "ops": ["insert"], "scope": "permanent"})
    assert status == 404 and "no agent 'nobody'" in body["error"]
    status, body = proxy.review_request("POST", "/v1/grants", {"reviewer": "rita", "agent": AGENT,
                                                               "ops": ["smash"], "scope": "permanent"})
    assert status == 400 and "unknown operation class" in body["error"]
    status, body = proxy.review_request("POST", "/v1/grants", {"reviewer": "rita", "agent": AGENT,
                                                               "ops": ["insert"], "scope": "session", "session": 999})
    assert status == 404 and "no session 999" in body["error"]
    assert decide(proxy, 12345, "approve")[0] == 404
    agent = Agent(proxy, dbname(shop), user="bot", password="bot-secret")
    try:
        waiting = agent.later("DELETE FROM orders")
        req = wait_request(proxy)
        # A reviewer with the agent's own name (same identity) may not approve it, nor grant it.
        status, body = decide(proxy, req["id"], "approve", reviewer="bot")
        assert status == 403 and "its own" in body["error"]
        status, body = proxy.review_request("POST", "/v1/grants", {"reviewer": "bot", "agent": "bot",
                                                                   "ops": ["delete"], "scope": "permanent"})
        assert status == 403 and "may not grant itself" in body["error"]
        status, body = decide(proxy, req["id"], "approve", scope="permanent")  # delete: fine with capture
        assert status == 200, body
        waiting.result(timeout=10)
        status, body = decide(proxy, req["id"], "reject", reason="too late")
        assert status == 409 and "approved by rita" in body["error"]
    finally:
        agent.close()


# --- what the agent knows -------------------------------------------------------------------------


def test_show_status_and_rules_through_every_client(make_proxy: MakeProxy, shop: str, pg_bin: Path) -> None:
    proxy = make_proxy(shop, mode="hold", rules=[ALLOW_INSERT, PAUSE_DELETE])
    database = dbname(shop)
    holder = Agent(proxy, database)
    try:
        holder.run("UPDATE orders SET item = 'x' WHERE id = 1")
        [tx_id] = held_ids(holder.notices)

        def check(rows: list[tuple[Any, ...]]) -> None:
            kinds = {(r[0], r[1]) for r in rows}
            assert ("transaction", str(tx_id)) in kinds, rows
            [tx] = [r for r in rows if r[0] == "transaction"]
            assert tx[2] == "pending" and f"dbproxy commit {tx_id}" in tx[6]

        # psycopg (extended protocol)
        check(holder.run("SHOW dbproxy.status"))
        rules = holder.run("show DBPROXY.rules;")
        assert [r[1:3] for r in rules] == [("rules[0]", "allow"), ("rules[1]", "ask"), ("(no rule matches)",
                                                                                         "hold mode decides")]
        # psql (simple protocol)
        out = run_tool(pg_bin, "psql", ["-X", "-A", "-t", "-F", "|", "-c", "SHOW dbproxy.status"], proxy.env(database))
        assert out.returncode == 0, out.stderr
        check([tuple(line.split("|")) for line in out.stdout.splitlines()])

        # asyncpg (prepares, describes, then executes)
        async def via_asyncpg() -> list[tuple[Any, ...]]:
            con = await asyncpg.connect(proxy.url(database))
            try:
                return [tuple(r) for r in await con.fetch("SHOW dbproxy.status")]
            finally:
                await con.close()
        check(asyncio.run(via_asyncpg()))

        # SQLAlchemy (psycopg driver), which drops notices
        engine = sqlalchemy.create_engine(proxy.url(database).replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as c:
                check([tuple(r) for r in c.execute(sqlalchemy.text("SHOW dbproxy.status"))])
        finally:
            engine.dispose()
        # Nothing of it went upstream: the server never saw the statement.
        assert direct(shop, "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'show dbproxy%'") == [(0,)]
    finally:
        holder.close()
        rollback_all(proxy)


def test_pooled_connection_behind_a_held_row_gets_55P03(make_proxy: MakeProxy, shop: str) -> None:
    proxy = make_proxy(shop, mode="hold", held_lock_timeout=1)
    engine = sqlalchemy.create_engine(proxy.url(dbname(shop)).replace("postgresql://", "postgresql+psycopg://"),
                                      pool_size=5)
    try:
        with engine.connect() as first:
            first.execute(sqlalchemy.text("UPDATE orders SET item = 'held' WHERE id = 1"))
            first.commit()  # held for review (SQLAlchemy drops the notice)
            _, [pending] = proxy.review_request("GET", "/v1/pending")
            tx_id = pending["id"]
            with engine.connect() as second:
                started = time.monotonic()
                with pytest.raises(sqlalchemy.exc.OperationalError) as e:
                    second.execute(sqlalchemy.text("UPDATE orders SET item = 'other' WHERE id = 1"))
                waited = time.monotonic() - started
                assert isinstance(e.value.orig, psycopg.errors.LockNotAvailable)
                assert f"transaction #{tx_id}" in str(e.value.orig) and f"dbproxy commit {tx_id}" in str(e.value.orig)
                assert waited < 10
                second.rollback()
                # Other rows are not blocked, and the pool's connection still works.
                second.execute(sqlalchemy.text("UPDATE orders SET item = 'free' WHERE id = 2"))
                second.commit()
        assert direct(shop, "SELECT item FROM orders ORDER BY id") == [("apple",), ("pear",)]  # all held
    finally:
        engine.dispose()
        rollback_all(proxy)


# --- settings and reload -------------------------------------------------------------------------


def test_contradicting_rules_stop_serve_naming_both(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "dbproxy.toml"
    config.write_text('[[rules]]\nops = ["*"]\nobjects = ["*"]\ndecision = "allow"\n\n'
                      '[[rules]]\nops = ["delete"]\nobjects = ["orders"]\ndecision = "deny"\n')
    out = subprocess.run([sys.executable, "-m", "dbproxy", "serve", "--config", str(config), "--data-dir",
                          str(tmp_path / "d")], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "rules[1]" in out.stderr and "rules[0]" in out.stderr and "comes first" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    config.write_text('[[rules]]\nops = ["drop"]\ndecision = "deny"\n')
    out = subprocess.run([sys.executable, "-m", "dbproxy", "serve", "--config", str(config), "--data-dir",
                          str(tmp_path / "d")], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "rules" in out.stderr and "unknown operation class 'drop'" in out.stderr
    config.write_text('[[rules]]\nops = ["delete"]\nobjects = ["a.b.c"]\ndecision = "deny"\n')
    out = subprocess.run([sys.executable, "-m", "dbproxy", "serve", "--config", str(config), "--data-dir",
                          str(tmp_path / "d")], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "malformed object pattern 'a.b.c'" in out.stderr
    # A pass-through agent's statements are relayed unchanged: its own rules would be ignored silently.
    config.write_text('[agents.trusted]\npassword = "pw"\nmode = "passthrough"\n\n[[agents.trusted.rules]]\n'
                      'ops = ["delete"]\ndecision = "deny"\n')
    config.chmod(0o600)
    out = subprocess.run([sys.executable, "-m", "dbproxy", "serve", "--config", str(config), "--data-dir",
                          str(tmp_path / "d")], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "agents.trusted.rules: rules do not apply to a pass-through agent" in out.stderr
    assert "Traceback" not in out.stderr


def test_default_rules_over_pass_through_agents_are_a_warning() -> None:
    from dbproxy.config.settings import Settings
    from dbproxy.policy.rules import contradictions, overlaps

    settings = Settings.model_validate({"agents": {"a": {"password": "pw", "mode": "passthrough"},
                                                   "b": {"password": "pw"}},
                                        "rules": [{"ops": ["delete"], "decision": "deny"}]})
    assert contradictions([*settings.agents, ""], settings) == []
    assert overlaps([*settings.agents, ""], settings) == [
        "the default rules do not apply to pass-through agents (a): their statements are relayed unchanged"]


def test_a_read_prepared_before_a_reload_is_denied_when_run_after_it(make_proxy: MakeProxy, shop: str) -> None:
    settings: dict[str, Any] = {"agents": {AGENT: {"password": AGENT_PASSWORD, "databases": ["*"]}}, "rules": []}
    proxy = make_proxy(shop, mode="hold", reload_settings=settings, **settings)
    with psycopg.connect(proxy.url(dbname(shop), user=AGENT, password=AGENT_PASSWORD), autocommit=True) as c:
        query = "SELECT item FROM orders WHERE id = %s"
        assert c.execute(query, (1,), prepare=True).fetchall() == [("apple",)]  # Parse once; later runs Bind it
        settings["rules"] = [{"ops": ["read"], "objects": ["public.orders"], "decision": "deny"}]
        assert proxy.review_request("POST", "/v1/reload", {})[0] == 200
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="deny read"):
            c.execute(query, (1,), prepare=True)
        assert c.execute("SELECT 1").fetchall() == [(1,)]  # the session carries on


def test_reload_adds_an_agent_and_a_rule_keeping_pending_transactions(make_proxy: MakeProxy, shop: str) -> None:
    settings: dict[str, Any] = {"agents": {AGENT: {"password": AGENT_PASSWORD, "databases": ["*"]}}, "rules": []}
    proxy = make_proxy(shop, mode="hold", reload_settings=settings, **settings)
    database = dbname(shop)
    agent = Agent(proxy, database)
    try:
        agent.run("UPDATE orders SET item = 'pending' WHERE id = 1")
        [tx_id] = held_ids(agent.notices)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.url(database, user="newbie", password="newbie-secret")).close()
        settings["agents"]["newbie"] = {"password": "newbie-secret", "databases": ["*"]}
        settings["rules"] = [{"ops": ["delete"], "objects": ["*"], "decision": "deny"}]
        status, report = proxy.review_request("POST", "/v1/reload", {})
        assert status == 200 and report["agents_added"] == ["newbie"] and report["rules"] == 1, report
        with psycopg.connect(proxy.url(database, user="newbie", password="newbie-secret"), autocommit=True) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="deny delete"):
                c.execute("DELETE FROM orders")
        # The pending transaction and its session carry on; a reviewer can still commit it.
        status, pending = proxy.review_request("GET", "/v1/pending")
        assert [t["id"] for t in pending] == [tx_id]
        agent.run("UPDATE orders SET item = 'more' WHERE id = 2")
        status, body = proxy.review_request("POST", f"/v1/transactions/{tx_id}/commit", {"reviewer": "rita"})
        assert status == 200 and body["outcome"] == "committed"
        assert direct(shop, "SELECT item FROM orders ORDER BY id") == [("pending",), ("more",)]
        # Bad settings: nothing changes, and the reviewer learns why.
        settings["rules"] = [{"ops": ["*"], "objects": ["*"], "decision": "allow"},
                             {"ops": ["delete"], "objects": ["*"], "decision": "deny"}]
        status, body = proxy.review_request("POST", "/v1/reload", {})
        assert status == 422 and "never applies" in body["error"]
        with psycopg.connect(proxy.url(database, user="newbie", password="newbie-secret"), autocommit=True) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("DELETE FROM orders")
    finally:
        agent.close()
        rollback_all(proxy)


def test_sighup_reloads_a_served_proxy(tmp_path: Path, pg: Postgres) -> None:
    import os
    import signal

    from tests.test_cli_and_settings import Served

    config = tmp_path / "dbproxy.toml"
    config.write_text('mode = "hold"\n[agents.bot]\npassword = "bot-secret"\ndatabases = ["*"]\n')
    config.chmod(0o600)
    env = {**os.environ, "DBPROXY_UPSTREAM": pg.url, "DBPROXY_SANDBOX": "local"}
    served = Served(tmp_path / "data", "--config", str(config), env=env)
    try:
        url = f"postgresql://bot:bot-secret@127.0.0.1:{served.port}/postgres"
        with psycopg.connect(url, autocommit=True) as c:
            assert c.execute("SHOW dbproxy.rules").fetchall()[-1][1] == "(no rule matches)"
            config.write_text(config.read_text() + '[[agents.bot.rules]]\nops = ["read"]\nobjects = ["pg_class"]\n'
                              'decision = "deny"\n')
            served.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                rules = c.execute("SHOW dbproxy.rules").fetchall()
                if rules[0][1] == "agents.bot.rules[0]":
                    break
                time.sleep(0.1)
            assert rules[0][1:3] == ("agents.bot.rules[0]", "deny"), rules
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT count(*) FROM pg_class")
    finally:
        served.stop()

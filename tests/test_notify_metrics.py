"""Webhook notifications and Prometheus metrics of a real proxy: agents write through it with
psycopg, a local HTTP listener started by the test receives the webhooks, and `/metrics` is
scraped and parsed with prometheus-client's own parser. Holds and statements paused for approval
are notified; decisions, approval requests and grants are counted."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AGENT, AGENT_PASSWORD, Postgres, RunningProxy
from tests.test_hold import Agent, decide

OTHER = "other"


class Listener:
    """A webhook receiver on 127.0.0.1: records every POST body; answers with the scripted statuses
    (then 200), and can hold its answers until released."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.statuses = list(statuses or [])
        self.release = threading.Event()
        self.release.set()
        self.arrived = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.arrived:
                    outer.bodies.append(body)
                    outer.arrived.notify_all()
                outer.release.wait(30)
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook?secret=s3cr3t"

    def wait_for(self, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.bodies) >= n, timeout)
        return list(self.bodies)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listeners() -> Iterator[Callable[..., Listener]]:
    made: list[Listener] = []

    def make(statuses: list[int] | None = None) -> Listener:
        made.append(Listener(statuses))
        return made[-1]

    yield make
    for listener in made:
        listener.close()


@pytest.fixture
def table(pg: Postgres, unique_name: str) -> Iterator[str]:
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"create table {unique_name} (id int primary key, v text)")
        c.execute(f"insert into {unique_name} values (1, 'one'), (2, 'two')")
    yield unique_name
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("set lock_timeout = '5s'")
        c.execute(f"drop table if exists {unique_name}")


def agents() -> dict[str, Any]:
    return {AGENT: {"password": AGENT_PASSWORD, "databases": ["*"]},
            OTHER: {"password": AGENT_PASSWORD, "databases": ["*"]}}


def scrape(proxy: RunningProxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=10) as r:  # no token needed
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_webhooks_for_holds_with_per_agent_urls_and_links(table: str, make_proxy: Callable[..., RunningProxy],
                                                          listeners: Callable[..., Listener]) -> None:
    default, own = listeners(), listeners()
    proxy = make_proxy(mode="hold", agents=agents(),
                       notify={"webhook_url": default.url, "agents": {OTHER: own.url}, "retry_delay": 0.05})
    a = Agent(proxy)
    b = Agent.__new__(Agent)
    b.conn = psycopg.connect(proxy.url(user=OTHER), autocommit=True)
    b.notices = []
    b.conn.add_notice_handler(lambda d: b.notices.append(d.message_primary or ""))
    try:
        a.conn.execute(f"insert into {table} values (3, '<b>three</b>')")
        [tx] = a.held_ids()
        [body] = default.wait_for(1)
        assert body["event"] == "held" and body["id"] == tx and body["agent"] == AGENT
        assert body["database"] == "postgres" and body["mode"] == "hold" and body["statements"] == 1
        link = f"{proxy.admin_url}/console/tx/{tx}"
        assert body["url"] == link
        assert body["text"] == (f"dbproxy: transaction #{tx} of agent {AGENT} is held for review "
                                f"(database postgres, 1 statement). Review: {link}")
        b.conn.execute(f"update {table} set v = 'x' where id = 2")
        [tx_b] = b.held_ids()
        [body_b] = own.wait_for(1)
        assert body_b["id"] == tx_b and body_b["agent"] == OTHER
        decide(proxy, tx, "rollback")  # decisions are not notified
        decide(proxy, tx_b, "rollback")
        time.sleep(0.3)
        assert len(default.bodies) == 1 and len(own.bodies) == 1
    finally:
        a.close()
        b.conn.close()


def test_webhook_retries_are_bounded_and_never_block_the_agent(table: str, make_proxy: Callable[..., RunningProxy],
                                                              listeners: Callable[..., Listener]) -> None:
    flaky = listeners([503, 500])  # then 200
    proxy = make_proxy(mode="hold", notify={"webhook_url": flaky.url, "retry_delay": 0.05, "max_attempts": 4,
                                            "timeout": 5})
    a = Agent(proxy)
    try:
        a.conn.execute(f"update {table} set v = 'a' where id = 1")
        [tx] = a.held_ids()
        bodies = flaky.wait_for(3)
        assert len(bodies) == 3 and all(b == bodies[0] for b in bodies) and bodies[0]["id"] == tx
        decide(proxy, tx, "rollback")
    finally:
        a.close()

    down = listeners([500] * 10)
    proxy = make_proxy(mode="hold", notify={"webhook_url": down.url, "retry_delay": 0.05, "max_attempts": 3})
    a = Agent(proxy)
    try:
        down.release.clear()  # the webhook hangs: the agent must not notice
        a.conn.execute(f"update {table} set v = 'b' where id = 1")
        [tx] = a.held_ids()
        assert down.wait_for(1) and not down.release.is_set()  # the agent got its answer meanwhile
        down.release.set()
        down.wait_for(3)
        deadline = time.monotonic() + 20
        while scrape(proxy).get(("dbproxy_notifications_total", (("result", "failed"),))) != 1.0:
            assert time.monotonic() < deadline, scrape(proxy)
            time.sleep(0.05)
        time.sleep(0.3)
        assert len(down.bodies) == 3  # max_attempts, then it gives up
        assert scrape(proxy)[("dbproxy_notifications_total", (("result", "retried"),))] == 2.0
        decide(proxy, tx, "rollback")
    finally:
        a.close()


def test_metrics_follow_sessions_holds_and_decisions(table: str, make_proxy: Callable[..., RunningProxy]) -> None:
    proxy = make_proxy(mode="hold")
    other = make_proxy(mode="hold")  # its own registry: nothing of the first shows here
    a = Agent(proxy)
    try:
        m = scrape(proxy)
        assert m[("dbproxy_agent_sessions", (("agent", AGENT), ("mode", "hold")))] == 1.0
        a.conn.execute(f"update {table} set v = 'm' where id = 1")
        a.conn.execute("select 1")
        [tx] = a.held_ids()
        m = scrape(proxy)
        assert m[("dbproxy_pending_transactions", (("agent", AGENT), ("mode", "hold")))] == 1.0
        assert m[("dbproxy_pending_oldest_seconds", (("agent", AGENT), ("mode", "hold")))] >= 0
        assert m[("dbproxy_held_transactions_total", (("agent", AGENT), ("mode", "hold")))] == 1.0
        assert m[("dbproxy_statements_total", (("agent", AGENT), ("mode", "hold")))] == 2.0
        assert ("dbproxy_journal_lag_seconds", ()) in m and ("dbproxy_journal_backlog_statements", ()) in m
        status, _ = decide(proxy, tx, "commit")
        assert status == 200
        m = scrape(proxy)
        assert m[("dbproxy_decisions_total", (("outcome", "committed"),))] == 1.0
        assert ("dbproxy_pending_transactions", (("agent", AGENT), ("mode", "hold"))) not in m
        o = scrape(other)
        assert not [k for k in o if k[0] in ("dbproxy_decisions_total", "dbproxy_held_transactions_total")]
        assert ("dbproxy_agent_sessions", (("agent", AGENT), ("mode", "hold"))) not in o
    finally:
        a.close()


def test_a_paused_statement_is_notified_and_counted(table: str, make_proxy: Callable[..., RunningProxy],
                                                   listeners: Callable[..., Listener]) -> None:
    hook = listeners()
    proxy = make_proxy(mode="hold", approval_timeout=60, notify={"webhook_url": hook.url, "retry_delay": 0.05},
                       rules=[{"ops": ["delete"], "objects": ["*"], "decision": "ask", "ask": "pause"}])
    a = Agent(proxy)
    errors: list[BaseException] = []

    def run(sql: str) -> threading.Thread:
        def go() -> None:
            try:
                a.conn.execute(sql)
            except BaseException as e:
                errors.append(e)
        t = threading.Thread(target=go, daemon=True)
        t.start()
        return t

    try:
        waiter = run(f"delete from {table} where v = 'secret value'")
        [body] = hook.wait_for(1)
        req = body["id"]
        link = f"{proxy.admin_url}/console/requests#request-{req}"
        rule = f"rules[0]: ask (pause) delete on * asks before delete public.{table}"
        assert (body["event"], body["agent"], body["database"], body["mode"], body["url"]) == (
            "request", AGENT, "postgres", "hold", link)
        assert (body["actions"], body["rule"], body["statements"]) == ([f"delete public.{table}"], rule, 1)
        assert body["text"] == (f"dbproxy: agent {AGENT} waits for approval as request #{req} (database postgres, "
                                f"session {body['session']}): delete public.{table}. {rule}. Review: {link}")
        assert "secret value" not in json.dumps(body)  # what it would run stays in the console
        m = scrape(proxy)
        assert m[("dbproxy_requests_waiting", (("agent", AGENT),))] == 1.0
        assert m[("dbproxy_requests_oldest_seconds", (("agent", AGENT),))] >= 0
        assert m[("dbproxy_approval_requests_total", (("agent", AGENT),))] == 1.0

        status, _ = proxy.review_request("POST", f"/v1/requests/{req}/reject", {"reason": "no"})
        assert status == 200
        waiter.join(20)
        assert isinstance(errors[-1], psycopg.errors.InsufficientPrivilege)
        m = scrape(proxy)
        assert ("dbproxy_requests_waiting", (("agent", AGENT),)) not in m
        assert m[("dbproxy_request_decisions_total", (("scope", "none"), ("state", "rejected")))] == 1.0

        waiter = run(f"delete from {table} where id = 2")
        [_, second] = hook.wait_for(2)
        status, approved = proxy.review_request("POST", f"/v1/requests/{second['id']}/approve", {"scope": "session"})
        assert status == 200, approved
        waiter.join(20)
        m = scrape(proxy)
        assert m[("dbproxy_request_decisions_total", (("scope", "session"), ("state", "approved")))] == 1.0
        assert m[("dbproxy_grants_total", (("scope", "session"),))] == 1.0
        status, _ = proxy.review_request("POST", f"/v1/grants/{approved['grant']}/revoke", {})
        assert status == 200
        assert scrape(proxy)[("dbproxy_grants_revoked_total", ())] == 1.0
        # Decisions are not notified; the approved delete was held after it ran (no capture in this
        # database, so it cannot be undone), and that is.
        bodies = hook.wait_for(3)
        time.sleep(0.3)
        assert [b["event"] for b in hook.bodies] == ["request", "request", "held"], bodies
    finally:
        a.close()
        for tx in [t["id"] for t in proxy.review_request("GET", "/v1/pending")[1]]:
            decide(proxy, tx, "rollback")  # approved, but without capture here it was held

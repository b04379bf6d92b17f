"""The review console's pages (`dbproxy.review.console`), served by aiohttp's test server from the
admin application of a real proxy over a real PostgreSQL; agents write through the proxy with
psycopg. Covers sign-in and sessions, CSRF refusal, framing and escaping, decisions (with their
409), the paginated diff of held and of committed undo-mode transactions, undo with a preview,
the journal's filters and the live event stream.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import markupsafe
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from dbproxy.auth import reviewers
from dbproxy.backend.upstream import UpstreamTarget
from dbproxy.config.settings import load_settings
from dbproxy.frontend.server import ProxyServer, build_registry
from dbproxy.review.console.auth import SESSION_COOKIE
from sandbox.pgcluster import free_port
from tests.conftest import ADMIN_TOKEN, AGENT, AGENT_PASSWORD, SANDBOX_DIR, Postgres
from tests.waiting import await_until

EVIL = "<script>alert('x')</script>"
EVIL_ATTR = '"><img src=x onerror=alert(1)>'


@dataclass
class Console:
    server: ProxyServer
    client: TestClient
    host: str
    port: int

    def agent_url(self, database: str) -> str:
        return f"postgresql://{AGENT}:{AGENT_PASSWORD}@{self.host}:{self.port}/{database}"

    async def agent(self, database: str = "postgres") -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self.agent_url(database), autocommit=True)
        conn.notices = []  # type: ignore[attr-defined]
        conn.add_notice_handler(lambda d: conn.notices.append(d.message_primary or ""))  # type: ignore[attr-defined]
        return conn

    async def sign_in(self, token: str = ADMIN_TOKEN) -> str:
        form = await self.client.get("/console/signin")
        nonce = re.search(r'name="nonce" value="([^"]+)"', await form.text())
        assert nonce is not None
        r = await self.client.post("/console/signin", data={"nonce": nonce.group(1), "token": token,
                                                             "next": "/console/"}, allow_redirects=False)
        assert r.status == 303, await r.text()
        return self.csrf(await (await self.client.get("/console/")).text())

    @staticmethod
    def csrf(page: str) -> str:
        m = re.search(r'name="csrf" value="([^"]+)"', page)
        assert m is not None, page[:500]
        return m.group(1)

    async def page(self, path: str, status: int = 200) -> str:
        r = await self.client.get(path)
        text = await r.text()
        assert r.status == status, text[:2000]
        return text

    async def post(self, path: str, data: dict[str, str], status: int = 303) -> tuple[int, str]:
        r = await self.client.post(path, data=data, allow_redirects=False)
        text = await r.text()
        assert r.status == status, text[:2000]
        return r.status, text


async def start_console(upstream: str, data_dir: Path, **overrides: Any) -> tuple[ProxyServer, TestClient]:
    cli: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}", "data_dir": str(data_dir), "log_level": "warning",
        "admin": "127.0.0.1:0", "admin_token": ADMIN_TOKEN, "mode": "hold",
        "agents": {AGENT: {"password": AGENT_PASSWORD, "databases": ["*"]}},
    }
    if "path" in SANDBOX_DIR:
        cli["sandbox_dir"] = str(SANDBOX_DIR["path"])
    cli.update(overrides)
    settings = load_settings(None, cli, environ={})
    server = ProxyServer(settings, UpstreamTarget.parse(upstream), build_registry(settings, announce=False))
    await server.start()
    assert server.admin is not None
    client = TestClient(TestServer(server.admin.make_app()))
    await client.start_server()
    return server, client


@pytest.fixture
async def console(pg: Postgres, tmp_path: Path) -> AsyncIterator[Console]:
    server, client = await start_console(pg.url, tmp_path / "state")
    host, port = server.settings.listen_address
    try:
        yield Console(server, client, host, port)
    finally:
        await client.close()
        await server.shutdown(0.5)


@pytest.fixture
def table(pg: Postgres, unique_name: str) -> Any:
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"create table {unique_name} (id int primary key, v text)")
        c.execute(f"insert into {unique_name} select i, 'row ' || i from generate_series(1, 200) i")
    yield unique_name
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("set lock_timeout = '5s'")
        c.execute(f"drop table if exists {unique_name}")


def held_id(conn: Any) -> int:
    ids = [int(n.split("#")[1].split()[0]) for n in conn.notices if "held for review as #" in n]
    assert ids, conn.notices
    return ids[-1]


async def test_sign_in_exchanges_the_token_for_a_session_cookie(console: Console) -> None:
    c = console.client
    r = await c.get("/console/", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"].startswith("/console/signin?next=")
    r = await c.get("/", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/console/"
    form = await console.page("/console/signin")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form)
    assert nonce is not None
    # A wrong token: no session.
    r = await c.post("/console/signin", data={"nonce": nonce.group(1), "token": "wrong"}, allow_redirects=False)
    assert r.status == 401 and "not accepted" in await r.text()
    assert SESSION_COOKIE not in r.cookies
    # The sign-in form is CSRF-protected too (double-submit cookie).
    r = await c.post("/console/signin", data={"nonce": "forged-forged-forged-forged", "token": ADMIN_TOKEN},
                     allow_redirects=False)
    assert r.status == 403 and SESSION_COOKIE not in r.cookies
    r = await c.post("/console/signin", data={"nonce": nonce.group(1), "token": ADMIN_TOKEN,
                                              "next": "//evil.example/x"}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/console/"  # never sent to another host
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    r = await c.get("/console/")
    page = await r.text()
    assert r.status == 200 and "signed in as <strong>admin</strong>" in page
    # Never framed, no inline script, nothing cached.
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["Cache-Control"] == "no-store"
    assert "<script>" not in page.replace('<script src="/console/static/console.js" defer></script>', "")
    # The JSON API still wants its bearer token; the cookie is not enough.
    r = await c.get("/v1/pending")
    assert r.status == 401
    # Sign out ends the session (a form, with its CSRF token).
    csrf = console.csrf(page)
    r = await c.post("/console/signout", data={"csrf": csrf}, allow_redirects=False)
    assert r.status == 303
    r = await c.get("/console/", allow_redirects=False)
    assert r.status == 303 and "/console/signin" in r.headers["Location"]


async def test_reviewers_sign_in_with_their_own_tokens(table: str, console: Console, pg: Postgres) -> None:
    """A reviewer's own token signs them in under their name; decisions carry it; removing the
    reviewer signs them out at once (nothing done after)."""
    token = reviewers.add(console.server.settings.data_dir, "dana")
    csrf = await console.sign_in(token)
    assert "signed in as <strong>dana</strong>" in await console.page("/console/")
    agent = await console.agent()
    try:
        await agent.execute(f"update {table} set v = 'by dana' where id = 2")
        first = held_id(agent)
        await console.post(f"/console/tx/{first}/commit", {"csrf": csrf, "reason": "fine"})
        with psycopg.connect(pg.dsn(), autocommit=True) as direct:
            assert direct.execute("select decided_by, reason from dbproxy.transactions where id = %s",
                                  (first,)).fetchone() == ("dana", "fine")
        await agent.execute(f"update {table} set v = 'again' where id = 3")
        second = held_id(agent)
        assert reviewers.remove(console.server.settings.data_dir, "dana")
        r = await console.client.post(f"/console/tx/{second}/commit", data={"csrf": csrf}, allow_redirects=False)
        assert r.status == 303 and "/console/signin" in r.headers["Location"]
        assert second in {t.transaction.id for t in await console.server.pending.queue()}  # type: ignore[union-attr]
    finally:
        await agent.close()


async def test_escaping_csrf_and_decisions(table: str, console: Console, pg: Postgres) -> None:
    csrf = await console.sign_in()
    agent = await console.agent()
    try:
        await agent.execute(f"insert into {table} values (1000, %s), (1001, %s)", (EVIL, EVIL_ATTR))
        await agent.execute(f"update {table} set v = %s where id = 1", (EVIL,))
        tx = held_id(agent)
        for path in ("/console/", f"/console/tx/{tx}", "/console/queue/rows",
                     f"/console/journal?q={EVIL}"):
            page = await console.page(path)
            assert "<script>alert" not in page and "<img src=x" not in page, path
        page = await console.page(f"/console/tx/{tx}")
        assert str(markupsafe.escape(EVIL)) in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page
        # The row diff: counts, the inserted values and the updated cell with its old value.
        assert re.search(r"1 inserted|2 inserted", page) and "1 updated" in page
        assert "row 1" in page  # before of the update
        # Queue: the table it writes, rows from the tags, waiting agent.
        rows = await console.page("/console/queue/rows")
        assert f"#{tx}" in rows and table in rows and '<td class="num">3</td>' in rows

        # CSRF: no token, a wrong token, another site's Origin: refused, nothing done.
        await console.post(f"/console/tx/{tx}/commit", {}, status=403)
        await console.post(f"/console/tx/{tx}/commit", {"csrf": "x" * 43}, status=403)
        r = await console.client.post(f"/console/tx/{tx}/commit", data={"csrf": csrf},
                                      headers={"Origin": "http://evil.example"}, allow_redirects=False)
        assert r.status == 403
        assert tx in {t.transaction.id for t in await console.server.pending.queue()}  # type: ignore[union-attr]

        await console.post(f"/console/tx/{tx}/commit", {"csrf": csrf, "reason": "  looks   right "})
        page = await console.page(f"/console/tx/{tx}")
        assert "committed by admin" in page  # the flash after the redirect
        assert '<dd class="reason">looks right</dd>' in page
        with psycopg.connect(pg.dsn(), autocommit=True) as direct:
            assert direct.execute(f"select v from {table} where id = 1000").fetchone() == (EVIL,)
        # Deciding again: the page says so (409), nothing applied twice.
        _, again = await console.post(f"/console/tx/{tx}/commit", {"csrf": csrf}, status=409)
        assert f"cannot commit #{tx}: it is committed" in again
        await console.post(f"/console/tx/{tx}/rollback", {"csrf": csrf}, status=409)
    finally:
        await agent.close()


async def test_rollback_with_a_reason_the_agent_hears(table: str, console: Console, pg: Postgres) -> None:
    csrf = await console.sign_in()
    agent = await console.agent()
    try:
        await agent.execute(f"delete from {table} where id <= 3")
        tx = held_id(agent)
        await console.post(f"/console/tx/{tx}/rollback", {"csrf": csrf, "reason": "deletes customer rows"})
        await agent.execute("select 1")  # an idle client reads the notice with its next answer
        assert any(f"#{tx} was rolled back by admin: deletes customer rows" in n for n in agent.notices), \
            agent.notices  # type: ignore[attr-defined]
        with psycopg.connect(pg.dsn(), autocommit=True) as direct:
            assert direct.execute(f"select count(*) from {table} where id <= 3").fetchone() == (3,)
        assert console.server.journal is not None
        await console.server.journal.flush()
        journal = await console.page(f"/console/journal?outcome=rolled+back&table={table}")
        assert f"#{tx}" in journal and "deletes customer rows" in journal
        assert "#" + str(tx) not in await console.page("/console/journal?outcome=committed&limit=5&agent=nobody")
    finally:
        await agent.close()


async def test_expired_or_wrong_session_redirects_and_does_nothing(table: str, console: Console) -> None:
    csrf = await console.sign_in()
    agent = await console.agent()
    try:
        await agent.execute(f"update {table} set v = 'x' where id = 2")
        tx = held_id(agent)
        sid = console.client.session.cookie_jar.filter_cookies(console.client.make_url("/"))[SESSION_COOKIE].value
        assert console.server.admin is not None
        console.server.admin.console.sessions.drop(sid)  # as if it expired
        r = await console.client.get(f"/console/tx/{tx}", allow_redirects=False)
        assert r.status == 303 and "expired=1" in r.headers["Location"]
        assert "session has expired" in await (await console.client.get(r.headers["Location"])).text()
        r = await console.client.post(f"/console/tx/{tx}/commit", data={"csrf": csrf}, allow_redirects=False)
        assert r.status == 303 and "/console/signin" in r.headers["Location"]
        assert (await console.client.get("/console/events")).status == 401
        assert tx in {t.transaction.id for t in await console.server.pending.queue()}  # type: ignore[union-attr]
        # A made-up cookie is no session either.
        console.client.session.cookie_jar.update_cookies({SESSION_COOKIE: "made-up"})
        r = await console.client.get("/console/journal", allow_redirects=False)
        assert r.status == 303
        csrf = await console.sign_in()
        await console.post(f"/console/tx/{tx}/rollback", {"csrf": csrf})
    finally:
        await agent.close()


async def test_held_diff_is_paginated(table: str, console: Console) -> None:
    await console.sign_in()
    agent = await console.agent()
    try:
        await agent.execute(f"update {table} set v = v || '!' where id <= 120")
        tx = held_id(agent)
        page = await console.page(f"/console/tx/{tx}")
        assert "120 updated" in page and "rows 1–50 of 120" in page
        assert page.count('<tr class="update">') == 50
        nxt = re.search(r'href="(/console/tx/\d+\?[^"]*offset=50[^"]*)">next 50', page)
        assert nxt is not None
        page = await console.page(html.unescape(nxt.group(1)))
        assert "rows 51–100 of 120" in page and "row 51!" in page and "row 50!" not in page
        page = await console.page(f"/console/tx/{tx}?table=public.{table}&offset=100&limit=50")
        assert "rows 101–120 of 120" in page and page.count('<tr class="update">') == 20 and "next 50" not in page
        assert "previous 50" in page
        await console.page(f"/console/tx/{tx}?limit=0", status=400)
        await console.page("/console/tx/999999999", status=404)
        await console.page("/console/tx/abc", status=404)
    finally:
        await agent.close()


async def test_live_events_announce_holds_and_decisions(table: str, console: Console) -> None:
    csrf = await console.sign_in()
    agent = await console.agent()
    try:
        r = await console.client.get("/console/events")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")

        async def next_event() -> dict[str, Any]:
            while True:
                line = (await asyncio.wait_for(r.content.readline(), 10)).decode().strip()
                if line.startswith("data: "):
                    return json.loads(line[6:])

        await agent.execute(f"update {table} set v = 'live' where id = 5")
        tx = held_id(agent)
        assert await next_event() == {"kind": "held", "id": tx}
        await console.post(f"/console/tx/{tx}/rollback", {"csrf": csrf})
        assert await next_event() == {"kind": "decided", "id": tx, "outcome": "rolled back", "decided_by": "admin"}
        r.close()
    finally:
        await agent.close()


@pytest.fixture
async def undo_console(capture_db: str, tmp_path: Path) -> AsyncIterator[Console]:
    server, client = await start_console(capture_db, tmp_path / "state", mode="undo", sandbox="off")
    host, port = server.settings.listen_address
    try:
        yield Console(server, client, host, port)
    finally:
        await client.close()
        await server.shutdown(0.5)


async def test_committed_undo_mode_transaction_keeps_its_diff_and_undoes(undo_console: Console,
                                                                        capture_db: str) -> None:
    con = undo_console
    with psycopg.connect(capture_db, autocommit=True) as direct:
        direct.execute("create table acct (id int primary key, owner text, balance numeric(10,2))")
        direct.execute("insert into acct select i, 'owner ' || i, 100 from generate_series(1, 80) i")
    csrf = await con.sign_in()
    database = capture_db.rsplit("/", 1)[1]
    agent = await con.agent(database)
    try:
        async with agent.transaction():
            await agent.execute("update acct set balance = balance - 1 where id <= 60")
            await agent.execute("insert into acct values (81, %s, 5)", (EVIL,))
            await agent.execute("delete from acct where id = 80")
        assert not [n for n in agent.notices if "held" in n], agent.notices  # type: ignore[attr-defined]
        assert con.server.journal is not None
        await con.server.journal.flush()

        async def journaled() -> list[Any]:
            # Undo mode journals after the fact (a batch a moment after the agent's COMMIT returned).
            records = await con.server.pending.log(agent=AGENT, limit=1)  # type: ignore[union-attr]
            return records if records and records[0].mode == "undo" else []

        tx = (await await_until(journaled, what="the undo-mode commit in the journal"))[0].id
        page = await con.page(f"/console/tx/{tx}")
        assert "computed from the row images captured at its commit" in page
        assert "1 inserted" in page and "60 updated" in page and "1 deleted" in page
        assert "rows 1–50 of 62" in page and "<script>alert" not in page
        assert "<del>100.00</del>" in page and "<ins>99.00</ins>" in page  # changed cell, before and after
        assert "Preview undo (dry run)" in page and "Inverse SQL" in page

        _, preview = await con.post(f"/console/tx/{tx}/undo", {"csrf": csrf, "preview": "1"}, status=200)
        assert "Dry run: undo of #" in preview and "nothing was changed" in preview
        assert 'DELETE FROM "public"."acct"' in html.unescape(preview)
        with psycopg.connect(capture_db, autocommit=True) as direct:
            assert direct.execute("select balance from acct where id = 1").fetchone()[0] == 99  # type: ignore[index]
            # Someone changes an affected row: the undo must conflict and apply nothing.
            direct.execute("update acct set balance = 7 where id = 2")
        _, refused = await con.post(f"/console/tx/{tx}/undo", {"csrf": csrf, "preview": "0"}, status=409)
        assert "Refused: undo of #" in refused and "the row was changed since" in refused
        with psycopg.connect(capture_db, autocommit=True) as direct:
            assert direct.execute("select balance from acct where id = 1").fetchone()[0] == 99  # type: ignore[index]
            direct.execute("update acct set balance = 99 where id = 2")
        await con.post(f"/console/tx/{tx}/undo", {"csrf": csrf, "preview": "0"})
        page = await con.page(f"/console/tx/{tx}")
        assert "undo of #" in page and "done by admin" in page
        assert "it has been undone since" in page and "60 updated" in page  # the diff survives the undo
        assert "Redo" in page
        with psycopg.connect(capture_db, autocommit=True) as direct:
            assert direct.execute("select balance from acct where id = 1").fetchone()[0] == 100  # type: ignore[index]
        await con.post(f"/console/tx/{tx}/redo", {"csrf": csrf, "preview": "0"})
        with psycopg.connect(capture_db, autocommit=True) as direct:
            assert direct.execute("select balance from acct where id = 1").fetchone()[0] == 99  # type: ignore[index]
        journal = await con.page("/console/journal?agent=" + AGENT)
        assert "redone" in journal
    finally:
        await agent.close()

"""The console's policy pages (`dbproxy.review.console.policy_pages`) and the policy on the
transaction page, served by aiohttp's test server from the admin application of a real proxy over
a real PostgreSQL, with psycopg agents:

- requests: a paused statement is listed (escaped) with its rule and actions, the navigation
  counts it, the live stream announces it; a permanent approval of what has no exact inverse is
  refused with the reason (422) and the agent still waits; approve once runs it; reject needs a
  reason and the agent hears it; a decided request answers 409; the agent's own identity is
  refused (403); forms need the CSRF token;
- grants: listed with the rules, revoked with a reason, a second revoke answers 409;
- a held transaction shows which rule asked, and "commit and grant for the session" commits it
  and grants what it did, while "permanently" is refused (422) and leaves it pending.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import markupsafe
import psycopg
import pytest

from tests.conftest import ADMIN_TOKEN, Postgres
from tests.test_console import EVIL, Console, held_id, start_console

PAUSE_DELETES = {"ops": ["delete"], "objects": ["*"], "decision": "ask", "ask": "pause"}
ASK_UPDATES = {"ops": ["update"], "objects": ["*"], "decision": "ask", "ask": "hold"}


@pytest.fixture
async def console(pg: Postgres, tmp_path: Path) -> AsyncIterator[Console]:
    server, client = await start_console(pg.url, tmp_path / "state", rules=[PAUSE_DELETES, ASK_UPDATES],
                                         approval_timeout=60)
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
        c.execute(f"insert into {unique_name} select i, 'row ' || i from generate_series(1, 5) i")
    yield unique_name
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("set lock_timeout = '5s'")
        c.execute(f"drop table if exists {unique_name}")


async def waiting(console: Console, after: int = 0) -> int:
    assert console.server.policy is not None
    for _ in range(200):
        found = [r.id for r in console.server.policy.waiting_requests() if r.id > after]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no request waits")


def rows_left(pg: Postgres, table: str, where: str) -> int:
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        row = c.execute(f"select count(*) from {table} where {where}").fetchone()
        assert row is not None
        return int(row[0])


async def test_requests_are_approved_and_rejected_from_the_page(table: str, console: Console, pg: Postgres) -> None:
    csrf = await console.sign_in()
    page = await console.page("/console/requests")
    assert "No statement is waiting for approval." in page
    assert 'id="nav-waiting" data-count="0"' in page
    events = await console.client.get("/console/events")
    assert events.status == 200

    async def next_event(kind: str) -> dict[str, Any]:
        while True:
            line = (await asyncio.wait_for(events.content.readline(), 10)).decode().strip()
            if line.startswith("data: ") and (data := json.loads(line[6:]))["kind"] == kind:
                return dict(data)

    agent = await console.agent()
    try:
        task = asyncio.create_task(agent.execute(f"delete from {table} where v = %s or id = 1", (EVIL,)))
        req = await waiting(console)
        assert await next_event("request") == {"kind": "request", "id": None, "waiting": 1, "request": req}
        page = await console.page("/console/requests")
        assert f'id="request-{req}"' in page and 'id="nav-waiting" data-count="1"' in page
        assert f"delete public.{table}" in page
        assert f"rules[0]: ask (pause) delete on * asks before delete public.{table}" in page
        assert "<script>alert" not in page and str(markupsafe.escape(EVIL)) in page  # the bound value, escaped
        assert f"/console/requests/{req}/approve" in page and "Approve permanently" in page
        assert 'id="nav-waiting" data-count="1"' in await console.page("/console/journal")
        assert f'data-id="{req}"' in await console.page("/console/requests/rows")

        # Forms need the CSRF token; the agent's own identity may not decide.
        await console.post(f"/console/requests/{req}/approve", {"scope": "once"}, status=403)
        # Permanently: refused (no capture in this database, so no exact inverse); it still waits.
        _, refused = await console.post(f"/console/requests/{req}/approve", {"csrf": csrf, "scope": "permanent"},
                                        status=422)
        assert "a permanent grant is refused: delete: capture is not installed" in refused
        assert f'id="request-{req}"' in refused
        await asyncio.sleep(0.2)
        assert not task.done() and rows_left(pg, table, "id = 1") == 1
        await console.post(f"/console/requests/{req}/approve", {"csrf": csrf, "scope": "forever"}, status=400)

        await console.post(f"/console/requests/{req}/approve", {"csrf": csrf, "scope": "once",
                                                                "reason": "only   the test row"})
        cur = await asyncio.wait_for(task, 20)
        assert cur.statusmessage == "DELETE 1"
        assert f"dbproxy: request #{req} approved by admin (once): only the test row" in agent.notices  # type: ignore[attr-defined]
        decided = await next_event("request_decided")
        assert decided == {"kind": "request_decided", "id": None, "waiting": 0, "state": "approved", "request": req}
        page = await console.page("/console/requests")
        assert f"request #{req} approved by admin (once)" in page  # the flash after the redirect
        assert "No statement is waiting for approval." in page
        assert re.search(rf"<td>#{req}</td>.*?approved.*?only the test row", page, re.S)

        # Reject: a reason is required, and the agent is told it.
        task = asyncio.create_task(agent.execute(f"delete from {table} where id = 2"))
        req2 = await waiting(console, after=req)
        _, page = await console.post(f"/console/requests/{req2}/reject", {"csrf": csrf, "reason": "  "}, status=400)
        assert "give a reason" in page and f'id="request-{req2}"' in page
        await console.post(f"/console/requests/{req2}/reject", {"csrf": csrf, "reason": "ask the owner"})
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="rejected by admin: ask the owner"):
            await asyncio.wait_for(task, 20)
        assert rows_left(pg, table, "id = 2") == 1
        _, page = await console.post(f"/console/requests/{req2}/approve", {"csrf": csrf, "scope": "once"},
                                     status=409)
        assert f"request #{req2} is not waiting any more: it was rejected by admin" in page
        await console.post("/console/requests/999999/reject", {"csrf": csrf, "reason": "x"}, status=404)
    finally:
        events.close()
        await agent.close()
    # Approved, but without capture here it could not be undone, so it was held: roll it back.
    assert console.server.pending is not None
    for tx in list(console.server.pending.live):
        await console.server.pending.rollback(tx, "cleanup")


async def test_agent_identity_may_not_decide_its_own_request(pg: Postgres, tmp_path: Path, table: str) -> None:
    from dbproxy.auth import reviewers

    server, client = await start_console(pg.url, tmp_path / "state", rules=[PAUSE_DELETES], approval_timeout=60,
                                         agents={"bot": {"password": "bot-pw", "databases": ["*"]}})
    host, port = server.settings.listen_address
    console = Console(server, client, host, port)
    try:
        csrf = await console.sign_in(reviewers.add(tmp_path / "state", "bot"))
        agent = await psycopg.AsyncConnection.connect(f"postgresql://bot:bot-pw@{host}:{port}/postgres",
                                                      autocommit=True)
        try:
            task = asyncio.create_task(agent.execute(f"delete from {table} where id = 3"))
            req = await waiting(console)
            _, page = await console.post(f"/console/requests/{req}/approve", {"csrf": csrf, "scope": "once"},
                                         status=403)
            assert str(markupsafe.escape(f"request #{req} is agent bot's own")) in page
            assert not task.done()
            csrf = await console.sign_in(ADMIN_TOKEN)
            await console.post(f"/console/requests/{req}/reject", {"csrf": csrf, "reason": "not now"})
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await asyncio.wait_for(task, 20)
        finally:
            await agent.close()
    finally:
        await client.close()
        await server.shutdown(0.5)


async def test_grants_page_lists_and_revokes(table: str, console: Console) -> None:
    csrf = await console.sign_in()
    agent = await console.agent()
    try:
        session = int((await (await agent.execute("show dbproxy.status")).fetchone())[1])  # type: ignore[index]
        r = await console.client.post("/v1/grants", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, json={
            "agent": "agent", "ops": ["insert"], "objects": [f"public.{table}"], "scope": "session",
            "session": session, "max_rows": 3, "reason": "<b>seed</b> data"})
        assert r.status == 201, await r.text()
        grant = (await r.json())["id"]
        page = await console.page("/console/grants")
        assert re.search(rf'<tr data-id="{grant}">\s*<td>#{grant}</td>\s*<td>agent</td>\s*<td>session \(session '
                         rf'{session}\)</td>\s*<td>insert on public\.{table} up to 3 rows</td>', page), page
        assert "&lt;b&gt;seed&lt;/b&gt; data" in page and "<b>seed" not in page
        assert "<code>rules[0]</code>" in page and "ask (pause)" in page and "hold mode decides" in page
        assert f"/console/grants/{grant}/revoke" in page

        await console.post(f"/console/grants/{grant}/revoke", {"reason": "done"}, status=403)  # no CSRF token
        await console.post(f"/console/grants/{grant}/revoke", {"csrf": csrf, "reason": "seeding  is done"})
        page = await console.page("/console/grants")
        assert f"grant #{grant} revoked by admin" in page and "No grant is active." in page
        assert re.search(rf'<tr data-id="{grant}">.*?revoked</span> by admin</td>\s*<td class="reason">seeding is '
                         r"done</td>", page, re.S), page
        _, page = await console.post(f"/console/grants/{grant}/revoke", {"csrf": csrf}, status=409)
        assert f"grant #{grant} has ended already (revoked by admin)" in page
        await console.post("/console/grants/abc/revoke", {"csrf": csrf}, status=404)
    finally:
        await agent.close()


async def test_held_transaction_shows_its_rule_and_commits_with_a_grant(table: str, console: Console,
                                                                         pg: Postgres) -> None:
    csrf = await console.sign_in()
    agent = await console.agent()
    try:
        await agent.execute(f"update {table} set v = 'asked' where id = 4")
        tx = held_id(agent)
        page = await console.page(f"/console/tx/{tx}")
        assert (f'<dt>Policy</dt><dd class="policy">ask: rules[1]: ask (hold) update on * asks before update '
                f"public.{table}</dd>") in page
        assert 'name="grant" value="session"' in page and "Commit and grant permanently" in page

        _, page = await console.post(f"/console/tx/{tx}/commit", {"csrf": csrf, "grant": "permanent"}, status=422)
        assert f"#{tx} was not committed: a permanent grant is refused: update: capture is not installed" in page
        assert rows_left(pg, table, "v = 'asked'") == 0
        await console.post(f"/console/tx/{tx}/rollback", {"csrf": csrf, "grant": "session"}, status=400)

        await console.post(f"/console/tx/{tx}/commit", {"csrf": csrf, "grant": "session", "reason": "fine"})
        page = await console.page(f"/console/tx/{tx}")
        grant = int(re.search(r"grant #(\d+) \(session\) covers what it did", page).group(1))  # type: ignore[union-attr]
        assert rows_left(pg, table, "v = 'asked'") == 1
        grants = await console.page("/console/grants")
        assert re.search(rf'<tr data-id="{grant}">.*?<td>update on public\.{table}</td>.*?<a href="/console/tx/{tx}">',
                         grants, re.S), grants
        assert console.server.journal is not None
        await console.server.journal.flush()
        journal = await console.page(f"/console/journal?table={table}")
        assert re.search(r'<td class="policy" title="ask: rules\[1\]: [^"]*">ask rules\[1\]</td>', journal), journal
    finally:
        await agent.close()

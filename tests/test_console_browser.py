"""The review console in a real browser: headless Chromium from the system packages (`apt-get
install chromium`; `.ci/run` installs it), driven by Playwright, against a real proxy and
PostgreSQL. An agent writes while the reviewer watches the queue; the hold appears without a
reload; the reviewer opens it, sees the diff and commits. A second run rolls back with a reason
the agent hears; a third finds its transaction decided elsewhere and gets the 409.

Screenshots are saved as test artefacts in `test-artifacts/console/` (or `$DBPROXY_TEST_ARTIFACTS`),
never committed.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from tests.conftest import ADMIN_TOKEN, Postgres, RunningProxy
from tests.test_hold import Agent, decide

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("DBPROXY_TEST_ARTIFACTS") or Path(__file__).resolve().parent.parent
                 / "test-artifacts") / "console"
EVIL = "<img src=x onerror=alert(1)>"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (see .ci/run)"
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def table(pg: Postgres, unique_name: str) -> Iterator[str]:
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"create table {unique_name} (id int primary key, item text, qty int)")
        c.execute(f"insert into {unique_name} select i, 'item ' || i, i from generate_series(1, 5) i")
    yield unique_name
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("set lock_timeout = '5s'")
        c.execute(f"drop table if exists {unique_name}")


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def sign_in(page: Page, proxy: RunningProxy) -> None:
    page.goto(proxy.admin_url + "/console/")
    expect(page).to_have_url(re.compile(r"/console/signin"))
    page.fill("#token", "not the token")
    page.click("button[type=submit]")
    expect(page.locator(".flash.error")).to_contain_text("not accepted")
    page.fill("#token", ADMIN_TOKEN)
    page.click("button[type=submit]")
    expect(page.locator(".who")).to_contain_text("admin")
    expect(page.locator("#live")).to_have_attribute("data-state", "on")  # following the queue


def test_review_in_a_real_browser(table: str, browser: BrowserContext, make_proxy: Any, pg: Postgres) -> None:
    proxy = make_proxy(mode="hold")
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    sign_in(page, proxy)
    expect(page.locator("#queue-rows")).to_contain_text("Nothing is waiting")
    page.evaluate("window.__notReloaded = true")

    # 1. The agent writes; the hold appears in the open queue without a reload.
    agent = Agent(proxy)
    try:
        agent.conn.execute(f"insert into {table} values (6, %s, 1)", (EVIL,))
        agent.conn.execute(f"update {table} set qty = qty + 10 where id <= 2")
        [tx] = agent.held_ids()[-1:]
        row = page.locator(f'#queue-rows tr[data-id="{tx}"]')
        expect(row).to_be_visible()
        expect(row).to_contain_text(table)
        assert page.evaluate("window.__notReloaded") is True
        shot(page, "queue.png")

        page.click(f'a[href="/console/tx/{tx}"]')
        expect(page.locator("h1")).to_contain_text(f"#{tx}")
        diff = page.locator(".table-diff")
        expect(diff).to_contain_text("1 inserted")
        expect(diff).to_contain_text("2 updated")
        expect(diff.locator("tr.insert ins").filter(has_text=EVIL)).to_have_count(1)  # shown as text
        expect(diff.locator("tr.update .col.changed del").first).to_have_text("1")
        expect(diff.locator("tr.update .col.changed ins").first).to_have_text("11")
        assert page.locator("img[src=x]").count() == 0 and dialogs == []
        shot(page, "transaction.png")
        page.fill("form[action$=commit] input[name=reason]", "reviewed in the browser")
        page.click("form[action$=commit] button")
        expect(page.locator(".flash.ok")).to_contain_text(f"#{tx} committed by admin")
        with psycopg.connect(pg.dsn(), autocommit=True) as direct:
            assert direct.execute(f"select item from {table} where id = 6").fetchone() == (EVIL,)

        # 2. A second run: rolled back with a reason, which the agent hears.
        page.goto(proxy.admin_url + "/console/")
        expect(page.locator("#live")).to_have_attribute("data-state", "on")
        agent.conn.execute(f"delete from {table} where id = 3")
        [tx2] = agent.held_ids()[-1:]
        assert tx2 != tx
        page.locator(f'#queue-rows tr[data-id="{tx2}"] a').click()
        expect(page.locator(".table-diff")).to_contain_text("1 deleted")
        page.fill("form[action$=rollback] input[name=reason]", "deleting orders needs a ticket")
        page.click("form[action$=rollback] button")
        expect(page.locator(".flash.ok")).to_contain_text(f"#{tx2} rolled back by admin")
        expect(page.locator(".reason")).to_contain_text("deleting orders needs a ticket")
        agent.conn.execute("select 1")
        assert any(f"#{tx2} was rolled back by admin: deleting orders needs a ticket" in n for n in agent.notices)
        with psycopg.connect(pg.dsn(), autocommit=True) as direct:
            assert direct.execute(f"select count(*) from {table} where id = 3").fetchone() == (1,)

        # 3. Decided elsewhere while the page is open: the page says so, and a commit gets the 409.
        agent.conn.execute(f"update {table} set qty = 0 where id = 4")
        [tx3] = agent.held_ids()[-1:]
        page.goto(f"{proxy.admin_url}/console/tx/{tx3}")
        expect(page.locator("body")).to_have_attribute("data-live", "on")  # its event stream is open
        status, _ = decide(proxy, tx3, "rollback", "bob")
        assert status == 200
        expect(page.locator("#decided-elsewhere")).to_contain_text(f"#{tx3} was just rolled back by bob")
        page.click("form[action$=commit] button")
        expect(page.locator(".flash.error")).to_contain_text(f"cannot commit #{tx3}: it is rolled back")
        shot(page, "conflict.png")
        with psycopg.connect(pg.dsn(), autocommit=True) as direct:
            assert direct.execute(f"select qty from {table} where id = 4").fetchone() == (4,)
    finally:
        agent.close()


class _Running:
    """A statement run in a thread (it may wait for a reviewer's approval)."""

    def __init__(self, conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> None:
        self.status: str | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.status = conn.execute(sql, params or None).statusmessage
            except BaseException as e:
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def done(self) -> _Running:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the agent still waits"
        return self


def test_requests_and_grants_in_a_real_browser(table: str, browser: BrowserContext, make_proxy: Any,
                                               pg: Postgres) -> None:
    """Statements paused for approval appear live (a reason typed into one stays while another
    arrives), a permanent approval is refused with the reason while the agent waits, approve once
    and reject with a reason reach the agent, and a grant is revoked from the grants page."""
    proxy = make_proxy(mode="hold", approval_timeout=120,
                       rules=[{"ops": ["delete"], "objects": ["*"], "decision": "ask", "ask": "pause"}])
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    sign_in(page, proxy)
    expect(page.locator("#nav-waiting")).to_have_text("0")
    page.click("nav a[href='/console/requests']")
    expect(page.locator("#request-list")).to_contain_text("No statement is waiting for approval")
    expect(page.locator("#live")).to_have_attribute("data-state", "on")
    page.evaluate("window.__notReloaded = true")
    agent, other = Agent(proxy), Agent(proxy)
    try:
        first = _Running(agent.conn, f"delete from {table} where item = %s or id = 1", (EVIL,))
        card = page.locator("article.request").first
        expect(card).to_contain_text(f"delete public.{table}")
        expect(card).to_contain_text(EVIL)  # the bound value, as text
        expect(page.locator("#nav-waiting")).to_have_text("1")
        req1 = int(card.get_attribute("data-id") or 0)
        card.locator("form.approve input[name=reason]").fill("typed before the next one arrived")
        second = _Running(other.conn, f"delete from {table} where id = 5")
        expect(page.locator("article.request")).to_have_count(2)
        expect(page.locator("#nav-waiting")).to_have_text("2")
        expect(page.locator(f"#request-{req1} form.approve input[name=reason]")).to_have_value(
            "typed before the next one arrived")
        req2 = int(page.locator("article.request").nth(1).get_attribute("data-id") or 0)
        assert page.evaluate("window.__notReloaded") is True
        assert page.locator("img[src=x]").count() == 0 and dialogs == []
        shot(page, "requests.png")

        # Permanently: refused with the reason (no capture here, so no exact inverse); it still waits.
        page.locator(f"#request-{req1} button[value=permanent]").click()
        expect(page.locator(".flash.error")).to_contain_text(
            "a permanent grant is refused: delete: capture is not installed")
        expect(page.locator(f"#request-{req1}")).to_be_visible()
        assert first.thread.is_alive()
        shot(page, "request-refused.png")

        page.locator(f"#request-{req1} form.approve input[name=reason]").fill("the test row")
        page.locator(f"#request-{req1} button[value=once]").click()
        expect(page.locator(".flash.ok")).to_contain_text(f"request #{req1} approved by admin (once)")
        assert first.done().status == "DELETE 1", first.error
        assert f"dbproxy: request #{req1} approved by admin (once): the test row" in agent.notices

        page.locator(f"#request-{req2} form.reject input[name=reason]").fill("row 5 stays")
        page.locator(f"#request-{req2} form.reject button").click()
        expect(page.locator(".flash.ok")).to_contain_text(f"request #{req2} rejected by admin")
        assert isinstance(second.done().error, psycopg.errors.InsufficientPrivilege)
        assert "row 5 stays" in str(second.error)
        expect(page.locator("#nav-waiting")).to_have_text("0")
        expect(page.locator("table.requests-decided")).to_contain_text("row 5 stays")
        with psycopg.connect(pg.dsn(), autocommit=True) as direct:
            assert direct.execute(f"select count(*) from {table} where id = 5").fetchone() == (1,)

        # Grants: one for the other agent session, revoked from the page.
        row = other.conn.execute("show dbproxy.status").fetchone()
        assert row is not None
        status, grant = proxy.review_request("POST", "/v1/grants", {
            "agent": "agent", "ops": ["insert"], "objects": [table], "scope": "session", "session": int(row[1])})
        assert status == 201, grant
        page.click("nav a[href='/console/grants']")
        active = page.locator(f'table.grants tr[data-id="{grant["id"]}"]')
        expect(active).to_contain_text(f"insert on {table}")
        expect(page.locator("table.rules")).to_contain_text("rules[0]")
        shot(page, "grants.png")
        active.locator("input[name=reason]").fill("not needed any more")
        active.locator("button").click()
        expect(page.locator(".flash.ok")).to_contain_text(f"grant #{grant['id']} revoked by admin")
        expect(page.locator(f'table.grants-ended tr[data-id="{grant["id"]}"]')).to_contain_text("not needed any more")
    finally:
        agent.close()
        other.close()
        for tx in [t["id"] for t in proxy.review_request("GET", "/v1/pending")[1]]:
            decide(proxy, tx, "rollback")  # the approved delete was held: no capture in this database

"""LLM-proposed inverses through the running proxy, in undo mode.

The agent runs DDL the rules cannot invert (a `SET DEFAULT` run through EXECUTE, which the proxy
cannot see before it runs, so the default from before is not kept). With a
model configured, the proxy asks it (a scripted local endpoint, `tests.fake_llm`), verifies the
proposal in the sandbox, and commits only with a verified one; the journal keeps every attempt
and marks the steps as the model's. A wrong proposal is rejected by the sandbox, a malicious one
by the guard before it reaches any database, and an endpoint that is down or no key at all leaves
the transaction held for a person. What is sent to the model never holds credentials or rows of
unrelated tables. Real PostgreSQL, a psycopg agent, the CLI as a reviewer runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, AGENT_PASSWORD, RunningProxy
from tests.fake_llm import FakeLlm, answer, raw, status
from tests.test_hold import api
from tests.test_undo_proxy import Agent, dbname, direct, journal_undo
from tests.test_verify_proxy import cli, entry, last_xid

SECRET = "s3cr3t-row-value-4242"
#: DDL hidden in EXECUTE: the proxy does not see it before it runs, so no state is kept before it
#: and the rules cannot invert it (a plain SET DEFAULT they now can).
DDL = "DO $$ BEGIN EXECUTE 'ALTER TABLE acct ALTER COLUMN balance SET DEFAULT 5'; END $$"
RIGHT = "ALTER TABLE acct ALTER COLUMN balance DROP DEFAULT"


def setup_tables(url: str) -> None:
    direct(url, "CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL)")
    direct(url, "INSERT INTO acct SELECT i, 100 FROM generate_series(1, 20) i")
    direct(url, "CREATE TABLE vault (id int PRIMARY KEY, secret text)")
    direct(url, "INSERT INTO vault VALUES (1, %s)", SECRET)
    # The agents change acct's schema: their role owns it (as it would own what agents created).
    direct(url, "ALTER TABLE acct OWNER TO dbproxy_agents")


def default_of(url: str) -> Any:
    return direct(url, "SELECT column_default FROM information_schema.columns "
                       "WHERE table_name = 'acct' AND column_name = 'balance'")[0][0]


def llm_proxy(make_proxy: Callable[..., RunningProxy], url: str, fake: FakeLlm, **llm: Any) -> RunningProxy:
    # Summaries off: `show` would ask the same scripted endpoint (tests/test_llm_summary.py has them).
    proxy = make_proxy(url, mode="undo", llm={"base_url": fake.base_url, "api_key": "test-key", "model": "scripted",
                                              "timeout": 5, "max_retries": 1, "summaries": False, **llm})
    return settled(proxy)


def settled(proxy: RunningProxy) -> RunningProxy:
    """Wait for the schema copy the proxy makes at start: an agent's DDL right after start would
    otherwise race it (and be held, as "could not verify", which other tests cover)."""
    verification = proxy.server.pending.verification
    assert verification is not None
    proxy.call(verification.settled(), timeout=60)
    return proxy


def held_entry(proxy: RunningProxy, agent: Agent) -> dict[str, Any]:
    ids = agent.held_ids()
    assert len(ids) == 1, agent.notices
    return entry(proxy, ids[0])


def test_verified_proposal_commits_and_undoes(capture_db: str, make_proxy: Callable[..., RunningProxy],
                                              fake_llm: FakeLlm, tmp_path: Path) -> None:
    setup_tables(capture_db)
    proxy = llm_proxy(make_proxy, capture_db, fake_llm)
    fake_llm.script(answer([RIGHT], assumptions=["balance had no default before"]))
    agent = Agent(proxy, dbname(capture_db))
    before = last_xid(capture_db)
    with agent.conn.transaction():
        agent.conn.execute("UPDATE acct SET balance = 1 WHERE id = 1")
        agent.conn.execute(DDL)
    assert not agent.held_ids(), agent.notices
    xid = last_xid(capture_db)
    assert xid != before
    assert default_of(capture_db) == "5"

    e = journal_undo(proxy, xid)
    undo = entry(proxy, e["id"])["undo"]
    assert undo["verification"]["status"] == "verified" and undo["verification"]["source"] == "llm", undo
    llm_steps = [s for s in undo["steps"] if s.get("origin") == "llm"]
    assert [s["sql"] for s in llm_steps] == [RIGHT], undo["steps"]
    assert undo["irreversible"] == [], undo
    record = undo["llm"]
    assert record["statements"] == [RIGHT] and len(record["attempts"]) == 1, record
    call = record["attempts"][0]["call"]
    assert call["model"] == "scripted" and call["outcome"] == "answer" and call["latency_ms"] > 0, call

    # What went to the model: the statement and the table's DDL from before (no default yet);
    # never credentials, never the unrelated table's rows.
    assert len(fake_llm.requests) == 1
    sent = fake_llm.requests[0].text
    assert "SET DEFAULT 5" in sent and "CREATE TABLE public.acct" in sent, sent[:2000]
    assert "DEFAULT 5" not in sent.split("CREATE TABLE public.acct", 1)[1].split(";", 1)[0]
    for secret in (SECRET, AGENT_PASSWORD, ADMIN_TOKEN, "postgresql://", "test-key"):
        assert secret not in sent, secret
    assert fake_llm.requests[0].headers["authorization"] == "Bearer test-key"

    show = cli(proxy, tmp_path, "show", str(e["id"]))
    assert show.returncode == 0, show.stderr
    assert "model-proposed inverse (generated): verified, used" in show.stdout, show.stdout
    assert "proposed by a model" in show.stdout and RIGHT in show.stdout, show.stdout

    status_code, body = api(proxy, f"/v1/transactions/{e['id']}/undo", "POST", {"reviewer": "carol"})
    assert status_code == 200, body
    assert default_of(capture_db) is None
    assert direct(capture_db, "SELECT balance FROM acct WHERE id = 1") == [(100,)]


def test_wrong_and_malicious_proposals_are_held(capture_db: str, make_proxy: Callable[..., RunningProxy],
                                                fake_llm: FakeLlm, tmp_path: Path) -> None:
    setup_tables(capture_db)
    proxy = llm_proxy(make_proxy, capture_db, fake_llm, max_attempts=3)
    fake_llm.script(answer(["ALTER TABLE acct ALTER COLUMN balance SET DEFAULT 0"]),  # wrong: the sandbox says so
                    answer(["DELETE FROM vault", RIGHT]),  # touches another table: the guard says so
                    raw("I think you should drop the default."))  # not the JSON asked for
    agent = Agent(proxy, dbname(capture_db))
    agent.conn.execute(DDL)
    e = held_entry(proxy, agent)
    undo = e["undo"]
    record = undo["llm"]
    assert record["statements"] is None and record["reason"], record
    assert [a["status"] for a in record["attempts"]] == ["failed", "rejected", "no answer"], record
    assert "vault" in record["attempts"][1]["detail"], record["attempts"][1]
    # The failure was fed back: the second request carries the first attempt's verdict.
    assert len(fake_llm.requests) == 3
    assert "SET DEFAULT 0" in fake_llm.requests[1].text
    # Nothing of it reached the real database: the agent's DDL waits, vault is intact.
    assert default_of(capture_db) is None
    assert direct(capture_db, "SELECT secret FROM vault") == [(SECRET,)]
    assert any("no model-proposed inverse verified" in n for n in agent.notices), agent.notices

    show = cli(proxy, tmp_path, "show", str(e["id"]))
    assert "none trusted" in show.stdout and "attempt 2: rejected" in show.stdout, show.stdout
    assert api(proxy, f"/v1/transactions/{e['id']}/rollback", "POST", {})[0] == 200
    assert default_of(capture_db) is None


@pytest.mark.parametrize("why", ["down", "overloaded"])
def test_endpoint_trouble_holds(capture_db: str, make_proxy: Callable[..., RunningProxy], fake_llm: FakeLlm,
                                why: str) -> None:
    setup_tables(capture_db)
    if why == "down":
        fake_llm.stop()
    else:
        fake_llm.script(status(503), status(503), status(503))
    proxy = llm_proxy(make_proxy, capture_db, fake_llm)
    agent = Agent(proxy, dbname(capture_db))
    agent.conn.execute(DDL)
    record = held_entry(proxy, agent)["undo"]["llm"]
    assert record["statements"] is None and record["reason"], record
    outcome = record["attempts"][0]["call"]["outcome"]
    assert outcome == ("unreachable" if why == "down" else "http 503"), record
    assert default_of(capture_db) is None


def test_without_a_key_the_reviewer_is_told(capture_db: str, make_proxy: Callable[..., RunningProxy],
                                            tmp_path: Path) -> None:
    setup_tables(capture_db)
    proxy = settled(make_proxy(capture_db, mode="undo"))
    agent = Agent(proxy, dbname(capture_db))
    agent.conn.execute(DDL)
    e = held_entry(proxy, agent)
    assert str(e["undo"]["llm"]).startswith("off: no llm.api_key"), e["undo"]
    # The sandbox is on; there is just no complete inverse for it to verify.
    assert e["undo"]["verification"] == "not done: the inverse is incomplete, so there is nothing to verify"
    show = cli(proxy, tmp_path, "show", str(e["id"]))
    assert "model-proposed inverse: off: no llm.api_key" in show.stdout, show.stdout

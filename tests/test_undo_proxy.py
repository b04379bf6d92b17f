"""Undo mode end to end: an agent writes through the proxy, its transactions really commit with
their inverse (or are held when they have none), and a reviewer undoes and redoes them through
the admin API and the CLI. Digests are taken from a second, direct connection."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ADMIN_TOKEN, RunningProxy
from tests.test_hold import Agent as HoldAgent
from tests.test_hold import api


class Agent(HoldAgent):
    """A psycopg agent on the capture database (the proxy's upstream is that database)."""

    def __init__(self, proxy: RunningProxy, database: str) -> None:
        self.conn = psycopg.connect(proxy.url(database), autocommit=True)
        self.notices: list[str] = []
        self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?")[0]


@pytest.fixture
def undo_proxy(capture_db: str, make_proxy: Callable[..., RunningProxy]) -> Iterator[RunningProxy]:
    yield make_proxy(capture_db, mode="undo")


def direct(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as c:
        cur = c.execute(sql, args or None)
        return cur.fetchall() if cur.description else []


def digest(url: str, table: str) -> str:
    return str(direct(url, f"SELECT count(*)::text || md5(coalesce(string_agg(to_json(t)::text, ',' "
                           f"ORDER BY to_json(t)::text), '')) FROM {table} t")[0][0])


def journal_undo(proxy: RunningProxy, xid: int, timeout: float = 10) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = api(proxy, "/v1/transactions?limit=50")
        assert status == 200
        for t in body:
            if t.get("xid") == xid and t.get("mode") == "undo":
                return t
        time.sleep(0.05)
    raise AssertionError(f"no journal entry for xid {xid}")


def test_commit_with_undo_then_undo(capture_db: str, undo_proxy: RunningProxy) -> None:
    direct(capture_db, "CREATE TABLE acct (id int PRIMARY KEY, balance numeric NOT NULL)")
    direct(capture_db, "INSERT INTO acct SELECT i, 100 FROM generate_series(1, 5) i")
    before = digest(capture_db, "acct")
    agent = Agent(undo_proxy, dbname(capture_db))
    with agent.conn.transaction():
        agent.conn.execute("UPDATE acct SET balance = balance - 30 WHERE id = 1")
        agent.conn.execute("UPDATE acct SET balance = balance + 30 WHERE id = 2")
        agent.conn.execute("DELETE FROM acct WHERE id = 5")
        agent.conn.execute("INSERT INTO acct VALUES (6, 1)")
    assert not agent.held_ids(), agent.notices
    after = digest(capture_db, "acct")
    assert after != before  # committed, visible to others at once
    xid = int(direct(capture_db, "SELECT max(xid) FROM dbproxy.undo_records")[0][0])
    entry = journal_undo(undo_proxy, xid)
    assert entry["outcome"] == "committed"

    verdict = entry["undo"]["verification"]
    assert verdict["status"] == "verified", verdict
    # Literal statements replay on the sample; the sample holds the affected rows as they were.
    assert verdict["forward"] == "statements" and verdict["sample"]['"public"."acct"'] >= 4, verdict
    assert [s["kind"] for s in entry["undo"]["steps"]] == ["remove", "restore", "revert", "revert"]

    status, shown = api(undo_proxy, f"/v1/transactions/{entry['id']}")
    assert status == 200 and shown["transaction"]["undo"]["steps"]

    status, dry = api(undo_proxy, f"/v1/transactions/{entry['id']}/undo", "POST", {"dry_run": True})
    assert status == 200, dry
    assert dry["dry_run"] and not dry["applied"] and len(dry["sql"]) == 4
    assert any(q.startswith('DELETE FROM "public"."acct"') for q in dry["sql"])
    assert digest(capture_db, "acct") == after  # a dry run changes nothing

    status, done = api(undo_proxy, f"/v1/transactions/{entry['id']}/undo", "POST", {"reviewer": "carol"})
    assert status == 200, done
    assert done["applied"] and done["done"] == 4 and not done["conflicts"]
    assert digest(capture_db, "acct") == before

    status, again = api(undo_proxy, f"/v1/transactions/{entry['id']}/undo", "POST", {})
    assert status == 409 and "already undone" in again["error"]
    status, undo_entry = api(undo_proxy, f"/v1/transactions/{done['journal_id']}")
    assert status == 200 and undo_entry["transaction"]["agent"] == "reviewer:carol"
    assert undo_entry["transaction"]["undo"]["of"] == [entry["id"]]

    # Redo, named by the undo's own journal entry.
    status, redone = api(undo_proxy, f"/v1/transactions/{done['journal_id']}/redo", "POST", {})
    assert status == 200 and redone["applied"], redone
    assert digest(capture_db, "acct") == after
    status, shown = api(undo_proxy, f"/v1/transactions/{entry['id']}")
    assert [h["action"] for h in shown["transaction"]["undo"]["history"]] == ["undo", "redo"]
    assert shown["transaction"]["undo"]["history"][0]["by"] == "carol"
    agent.close()


def test_conflict_force_and_range(capture_db: str, undo_proxy: RunningProxy) -> None:
    direct(capture_db, "CREATE TABLE item (id int PRIMARY KEY, qty int NOT NULL)")
    direct(capture_db, "INSERT INTO item SELECT i, 10 FROM generate_series(1, 4) i")
    before = digest(capture_db, "item")
    agent = Agent(undo_proxy, dbname(capture_db))
    agent.conn.execute("UPDATE item SET qty = qty - 1 WHERE id IN (1, 2)")
    first = int(direct(capture_db, "SELECT max(xid) FROM dbproxy.undo_records")[0][0])
    agent.conn.execute("UPDATE item SET qty = 0 WHERE id = 3")
    second = int(direct(capture_db, "SELECT max(xid) FROM dbproxy.undo_records")[0][0])
    e1, e2 = journal_undo(undo_proxy, first), journal_undo(undo_proxy, second)
    # Someone else changes row 2 after the agent's commit: undoing the first transaction conflicts.
    direct(capture_db, "UPDATE item SET qty = 42 WHERE id = 2")
    changed = digest(capture_db, "item")
    status, body = api(undo_proxy, f"/v1/transactions/{e1['id']}/undo", "POST", {})
    assert status == 200 and not body["applied"], body
    assert len(body["conflicts"]) == 1
    c = body["conflicts"][0]
    assert c["table"] == '"public"."item"' and '"qty":42' in c["current"][0] and '"qty":9' in c["expected"]
    assert digest(capture_db, "item") == changed  # nothing applied

    # The range from the first on, newest first, as one transaction: still the same conflict.
    status, body = api(undo_proxy, f"/v1/transactions/{e1['id']}/undo", "POST", {"since": True})
    assert status == 200 and not body["applied"] and body["ids"] == [e2["id"], e1["id"]]
    assert digest(capture_db, "item") == changed

    status, body = api(undo_proxy, f"/v1/transactions/{e1['id']}/undo", "POST", {"since": True, "force": True})
    assert status == 200 and body["applied"] and body["forced"] == 1 and len(body["overridden"]) == 1, body
    assert digest(capture_db, "item") == before
    agent.close()


def test_cli_undo_and_show(capture_db: str, undo_proxy: RunningProxy, tmp_path: Path) -> None:
    direct(capture_db, "CREATE TABLE note (id serial PRIMARY KEY, body text)")
    before = digest(capture_db, "note")
    agent = Agent(undo_proxy, dbname(capture_db))
    agent.conn.execute("INSERT INTO note (body) VALUES ('it''s'), (NULL)")
    xid = int(direct(capture_db, "SELECT max(xid) FROM dbproxy.undo_records")[0][0])
    tx_id = journal_undo(undo_proxy, xid)["id"]
    host, port = undo_proxy.admin_url.removeprefix("http://").rsplit(":", 1)
    env = {**os.environ, "DBPROXY_ADMIN": f"{host}:{port}", "DBPROXY_ADMIN_TOKEN": ADMIN_TOKEN,
           "DBPROXY_DATA_DIR": str(tmp_path)}
    cli = [sys.executable, "-m", "dbproxy"]
    shown = subprocess.run([*cli, "show", str(tx_id)], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "Inverse (undo)" in shown.stdout and 'DELETE FROM "public"."note"' in shown.stdout
    assert "sequences not rewound" in shown.stdout
    undone = subprocess.run([*cli, "undo", str(tx_id), "--reason", "cli test"],
                            env={**env, "DBPROXY_ADMIN_TOKEN": undo_proxy.token("dana")}, capture_output=True,
                            text=True, timeout=60)
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert "undo done" in undone.stdout
    assert digest(capture_db, "note") == before
    again = subprocess.run([*cli, "undo", str(tx_id)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already undone" in again.stderr
    agent.close()


def test_irreversible_is_held(capture_db: str, undo_proxy: RunningProxy) -> None:
    direct(capture_db, "CREATE TABLE gone (id int PRIMARY KEY)")
    direct(capture_db, "INSERT INTO gone VALUES (1)")
    agent = Agent(undo_proxy, dbname(capture_db))
    # Inside a DO block the proxy never sees the DROP's text: nothing kept its rows.
    agent.conn.execute("DO $$ BEGIN EXECUTE 'DROP TABLE gone'; END $$")
    ids = agent.held_ids()
    assert len(ids) == 1, agent.notices
    assert "cannot be undone" in agent.notices[-1]
    assert direct(capture_db, "SELECT to_regclass('public.gone') IS NOT NULL")[0][0]  # still there for others
    status, body = api(undo_proxy, f"/v1/transactions/{ids[0]}")
    assert status == 200
    assert body["transaction"]["undo"]["irreversible"], body["transaction"]
    status, _ = api(undo_proxy, f"/v1/transactions/{ids[0]}/rollback", "POST", {"reviewer": "bob"})
    assert status == 200
    agent.close()


def test_drop_table_commits_and_undo_brings_rows_back(capture_db: str, undo_proxy: RunningProxy,
                                                      tmp_path: Path) -> None:
    """DROP TABLE ... CASCADE through the proxy commits with a verified inverse; the CLI's undo
    brings back the table with its rows, the view and foreign key that went with it, its
    comment and owner; redo drops them again."""
    # Made as the agents' role (as an agent would have made them), so the undo, acting as that
    # role, may make them again.
    direct(capture_db, "SET ROLE dbproxy_agents; "
                       "CREATE TABLE parent_t (id int PRIMARY KEY, name text NOT NULL); "
                       "CREATE TABLE child_t (id int PRIMARY KEY, pid int REFERENCES parent_t); "
                       "INSERT INTO parent_t SELECT i, 'p' || i FROM generate_series(1, 20) i; "
                       "INSERT INTO child_t SELECT i, i % 20 + 1 FROM generate_series(1, 40) i; "
                       "CREATE VIEW parent_names AS SELECT name FROM parent_t; "
                       "COMMENT ON TABLE parent_t IS 'the parents'")
    before = digest(capture_db, "parent_t")
    agent = Agent(undo_proxy, dbname(capture_db))
    agent.conn.execute("DROP TABLE parent_t CASCADE")
    assert not agent.held_ids(), agent.notices
    assert direct(capture_db, "SELECT to_regclass('public.parent_t')")[0][0] is None  # really dropped
    xid = int(direct(capture_db, "SELECT max(xid) FROM dbproxy.undo_records")[0][0])
    entry = journal_undo(undo_proxy, xid)
    assert entry["undo"]["verification"]["status"] == "verified", entry["undo"]["verification"]
    tx_id = entry["id"]
    host, port = undo_proxy.admin_url.removeprefix("http://").rsplit(":", 1)
    env = {**os.environ, "DBPROXY_ADMIN": f"{host}:{port}", "DBPROXY_ADMIN_TOKEN": ADMIN_TOKEN,
           "DBPROXY_DATA_DIR": str(tmp_path)}
    cli = [sys.executable, "-m", "dbproxy"]
    dry = subprocess.run([*cli, "undo", str(tx_id), "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "CREATE TABLE public.parent_t" in dry.stdout and "CREATE VIEW public.parent_names" in dry.stdout
    done = subprocess.run([*cli, "undo", str(tx_id)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert digest(capture_db, "parent_t") == before
    assert direct(capture_db, "SELECT count(*) FROM parent_names")[0][0] == 20
    assert direct(capture_db, "SELECT obj_description('parent_t'::regclass, 'pg_class')")[0][0] == "the parents"
    assert direct(capture_db, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'child_t'::regclass "
                              "AND contype = 'f'")[0][0] == 1
    # The table made again is captured again: a later agent write to it is undoable.
    assert direct(capture_db, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'parent_t'::regclass "
                              "AND tgname = '_dbproxy_capture'")[0][0] == 1
    redone = subprocess.run([*cli, "redo", str(tx_id)], env=env, capture_output=True, text=True, timeout=60)
    assert redone.returncode == 0, redone.stdout + redone.stderr
    assert direct(capture_db, "SELECT to_regclass('public.parent_t')")[0][0] is None
    agent.close()


def test_undo_of_create_table_refuses_when_written_since(capture_db: str, undo_proxy: RunningProxy) -> None:
    agent = Agent(undo_proxy, dbname(capture_db))
    agent.conn.execute("CREATE TABLE fresh (id int PRIMARY KEY, v text)")
    first = journal_undo(undo_proxy, int(direct(capture_db, "SELECT max(xid) FROM dbproxy.undo_records")[0][0]))
    agent.conn.execute("INSERT INTO fresh VALUES (1, 'written later')")
    second = journal_undo(undo_proxy, int(direct(capture_db, "SELECT max(xid) FROM dbproxy.undo_records")[0][0]))
    status, body = api(undo_proxy, f"/v1/transactions/{first['id']}/undo", "POST", {})
    assert status == 200 and not body["applied"], body
    assert any(f"#{second['id']}" in c["message"] and "fresh" in c["message"] for c in body["conflicts"]), body
    assert direct(capture_db, "SELECT count(*) FROM fresh")[0][0] == 1  # nothing applied
    status, body = api(undo_proxy, f"/v1/transactions/{first['id']}/undo", "POST", {"force": True})
    assert status == 200 and body["applied"] and body["overridden"], body
    assert direct(capture_db, "SELECT to_regclass('public.fresh')")[0][0] is None
    agent.close()


def test_snapshot_limit_holds(capture_db: str, make_proxy: Callable[..., RunningProxy]) -> None:
    proxy = make_proxy(capture_db, mode="undo", ddl_snapshot_limit="10 rows, 1GiB")
    direct(capture_db, "CREATE TABLE big_t (id int PRIMARY KEY)")
    direct(capture_db, "INSERT INTO big_t SELECT generate_series(1, 11)")
    direct(capture_db, "CREATE TABLE small_t (id int PRIMARY KEY)")
    direct(capture_db, "INSERT INTO small_t SELECT generate_series(1, 10)")
    agent = Agent(proxy, dbname(capture_db))
    agent.conn.execute("DROP TABLE small_t")  # ten rows: within the limit
    assert not agent.held_ids(), agent.notices
    agent.conn.execute("DROP TABLE big_t")  # eleven: over it
    ids = agent.held_ids()
    assert len(ids) == 1 and "cannot be undone" in agent.notices[-1], agent.notices
    status, body = api(proxy, f"/v1/transactions/{ids[0]}")
    assert any("ddl_snapshot_limit" in r for r in body["transaction"]["undo"]["irreversible"]), body
    assert direct(capture_db, "SELECT to_regclass('public.big_t') IS NOT NULL")[0][0]  # not committed
    status, _ = api(proxy, f"/v1/transactions/{ids[0]}/rollback", "POST", {})
    assert status == 200
    agent.close()


def test_hold_mode_captures_and_a_reviewer_commit_is_undoable(capture_db: str,
                                                               make_proxy: Callable[..., RunningProxy]) -> None:
    """Where capture is installed, hold mode captures too: the held transaction verifies for real,
    and once a reviewer commits it, it is undone like an undo-mode one, its dropped column too."""
    proxy = make_proxy(capture_db, mode="hold")
    direct(capture_db, "SET ROLE dbproxy_agents; CREATE TABLE acct (id int PRIMARY KEY, owner text, balance int); "
                       "INSERT INTO acct SELECT i, 'o' || i, i * 10 FROM generate_series(1, 8) i")
    before = digest(capture_db, "acct")
    agent = Agent(proxy, dbname(capture_db))
    agent.conn.execute("UPDATE acct SET balance = 0 WHERE id <= 3")
    agent.conn.execute("ALTER TABLE acct DROP COLUMN owner")
    ids = agent.held_ids()
    assert ids and len(set(ids)) == 1, agent.notices
    status, verdict = api(proxy, f"/v1/transactions/{ids[0]}/verify", "POST", {})
    assert status == 200 and verdict["status"] == "verified", verdict
    status, _ = api(proxy, f"/v1/transactions/{ids[0]}/commit", "POST", {"reviewer": "dana"})
    assert status == 200
    assert direct(capture_db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'acct' "
                              "AND column_name = 'owner'")[0][0] == 0
    status, shown = api(proxy, f"/v1/transactions/{ids[0]}")
    undo_doc = shown["transaction"]["undo"]
    assert undo_doc["direction"] == "undo" and not undo_doc["irreversible"], undo_doc
    status, done = api(proxy, f"/v1/transactions/{ids[0]}/undo", "POST", {"reviewer": "dana"})
    assert status == 200 and done["applied"], [c["message"] for c in done["conflicts"]]
    assert digest(capture_db, "acct") == before
    agent.close()

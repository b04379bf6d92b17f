"""Sandbox verification end to end: undo mode commits an agent's transaction only when its inverse
was proved in the sandbox, reuses verified results for the same statement shape until the touched
tables' catalog changes, holds the transaction for a reviewer otherwise, and `dbproxy verify ID`
proves an inverse again on demand. Real PostgreSQL, psycopg agents through the proxy, the CLI as a
subprocess; what the agent committed is checked from a second, direct connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dbproxy.undo.verification import VERIFY_LIMIT
from sandbox.pgcluster import LocalCluster, free_port
from tests.conftest import Postgres, RunningProxy
from tests.test_hold import api
from tests.test_undo_proxy import Agent, dbname, digest, direct, journal_undo

TABLE = '"public"."acct"'


@pytest.fixture
def undo_proxy(capture_db: str, make_proxy: Callable[..., RunningProxy]) -> Iterator[RunningProxy]:
    yield make_proxy(capture_db, mode="undo")


def last_xid(url: str) -> int:
    """The xid of the newest transaction undo mode committed (its undo marker), 0 if none."""
    return int(direct(url, "SELECT coalesce(max(xid), 0) FROM dbproxy.undo_records")[0][0])


def cli(proxy: RunningProxy, tmp_path: Path, *args: str, reviewer: str = "admin") -> subprocess.CompletedProcess[str]:
    """`dbproxy ARGS` as `reviewer` runs it (with their token), against this proxy's admin API."""
    host, port = proxy.admin_url.removeprefix("http://").rsplit(":", 1)
    env = {**os.environ, "DBPROXY_ADMIN": f"{host}:{port}", "DBPROXY_ADMIN_TOKEN": proxy.token(reviewer),
           "DBPROXY_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "dbproxy", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def entry(proxy: RunningProxy, tx_id: int) -> dict[str, Any]:
    status, body = api(proxy, f"/v1/transactions/{tx_id}")
    assert status == 200, body
    return body["transaction"]


def make_acct(url: str, rows: int = 20) -> None:
    direct(url, "CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL)")
    direct(url, f"INSERT INTO acct SELECT i, 100 FROM generate_series(1, {rows}) i")


def commit_one(proxy: RunningProxy, url: str, agent: Agent, sql: str) -> dict[str, Any]:
    """Run one autocommit statement as the agent; it must commit (not be held). Its journal entry."""
    before = last_xid(url)
    agent.conn.execute(sql)
    assert not agent.held_ids(), agent.notices
    xid = last_xid(url)
    assert xid != before, f"no undo marker for {sql!r}"
    e = journal_undo(proxy, xid)
    assert e["outcome"] == "committed", e
    return e


def test_verified_commit_and_cache(capture_db: str, undo_proxy: RunningProxy) -> None:
    make_acct(capture_db)
    agent = Agent(undo_proxy, dbname(capture_db))

    # 1. A multi-statement transaction: verified in the sandbox, then committed for everyone.
    with agent.conn.transaction():
        agent.conn.execute("UPDATE acct SET balance = balance - 30 WHERE id = 1")
        agent.conn.execute("UPDATE acct SET balance = balance + 30 WHERE id = 2")
        agent.conn.execute("DELETE FROM acct WHERE id = 3")
        agent.conn.execute("INSERT INTO acct VALUES (100, 1)")
    assert not agent.held_ids(), agent.notices
    assert direct(capture_db, "SELECT id, balance FROM acct WHERE id IN (1, 2, 3, 100) ORDER BY id") == [
        (1, 70), (2, 130), (100, 1)]
    first = journal_undo(undo_proxy, last_xid(capture_db))
    v = first["undo"]["verification"]
    assert isinstance(v, dict), v
    assert v["status"] == "verified" and not v["cached"], v
    assert v["forward"] == "statements", v
    assert v["reason"] == "" and v["diff"] == [], v
    # The sample holds at least the three affected rows that existed before (1, 2, 3).
    assert v["sample"][TABLE] >= 3, v
    assert v["timings_ms"]["total"] > 0 and "forward" in v["timings_ms"], v

    # 2. Same statement shape, other literals: the verified result is reused.
    e1 = commit_one(undo_proxy, capture_db, agent, "UPDATE acct SET balance = 7 WHERE id = 4")
    assert e1["undo"]["verification"]["status"] == "verified" and not e1["undo"]["verification"]["cached"]
    e2 = commit_one(undo_proxy, capture_db, agent, "UPDATE acct SET balance = 8 WHERE id = 5")
    v2 = e2["undo"]["verification"]
    assert v2["status"] == "verified" and v2["cached"] is True, v2
    assert v2["timings_ms"] == {}, v2  # nothing ran in the sandbox for it
    assert direct(capture_db, "SELECT balance FROM acct WHERE id = 5") == [(8,)]
    # A different shape is verified on its own.
    e3 = commit_one(undo_proxy, capture_db, agent, "DELETE FROM acct WHERE id = 6")
    v3 = e3["undo"]["verification"]
    assert v3["status"] == "verified" and v3["cached"] is False, v3
    assert direct(capture_db, "SELECT count(*) FROM acct WHERE id = 6") == [(0,)]

    # DDL on the touched table, outside the proxy: the schema version (DDL epoch) moves, so the same
    # shape is verified afresh (and that fresh result is cached under the new catalog).
    direct(capture_db, "ALTER TABLE acct ADD COLUMN note text")
    e4 = commit_one(undo_proxy, capture_db, agent, "UPDATE acct SET balance = 9 WHERE id = 7")
    v4 = e4["undo"]["verification"]
    assert v4["status"] == "verified" and v4["cached"] is False, v4
    assert v4["timings_ms"]["total"] > 0, v4
    e5 = commit_one(undo_proxy, capture_db, agent, "UPDATE acct SET balance = 10 WHERE id = 8")
    assert e5["undo"]["verification"]["cached"] is True, e5["undo"]["verification"]
    assert direct(capture_db, "SELECT id, balance, note FROM acct WHERE id IN (7, 8) ORDER BY id") == [
        (7, 9, None), (8, 10, None)]

    # Each verified inverse really undoes its transaction.
    before = digest(capture_db, "acct")
    status, done = api(undo_proxy, f"/v1/transactions/{e5['id']}/undo", "POST", {"reviewer": "carol"})
    assert status == 200 and done["applied"], done
    assert direct(capture_db, "SELECT balance FROM acct WHERE id = 8") == [(100,)]
    assert digest(capture_db, "acct") != before
    agent.close()


def test_unreachable_sandbox_holds(capture_db: str, make_proxy: Callable[..., RunningProxy],
                                   tmp_path: Path) -> None:
    make_acct(capture_db, 5)
    before = digest(capture_db, "acct")
    closed = free_port()  # nothing listens there
    proxy = make_proxy(capture_db, mode="undo", sandbox="server",
                       sandbox_server=f"postgresql://x:y@127.0.0.1:{closed}/z")
    agent = Agent(proxy, dbname(capture_db))
    with agent.conn.transaction():
        agent.conn.execute("UPDATE acct SET balance = 1 WHERE id = 1")
        agent.conn.execute("INSERT INTO acct VALUES (6, 6)")
    ids = agent.held_ids()
    assert len(ids) == 1, agent.notices
    assert "not verified in the sandbox" in agent.notices[-1], agent.notices
    held = ids[0]
    assert digest(capture_db, "acct") == before  # nothing committed for anyone else
    assert direct(capture_db, "SELECT count(*) FROM dbproxy.undo_records") == [(0,)]

    t = entry(proxy, held)
    v = t["undo"]["verification"]
    assert t["outcome"] == "pending" and v["status"] == "could not verify", t
    assert "unreachable" in v["reason"], v
    assert t["undo"]["steps"], t["undo"]  # the inverse itself was built

    shown = cli(proxy, tmp_path, "show", str(held))
    assert shown.returncode == 0, shown.stderr
    assert "could not verify" in shown.stdout and "sandbox server is unreachable" in shown.stdout, shown.stdout

    # Verifying again on demand cannot do better while the sandbox is down (the held path).
    again = cli(proxy, tmp_path, "verify", str(held))
    assert again.returncode == 1, again.stdout + again.stderr
    assert "could not verify" in again.stdout and "unreachable" in again.stdout, again.stdout
    assert digest(capture_db, "acct") == before

    # A reviewer still decides: this one is committed...
    done = cli(proxy, tmp_path, "commit", str(held), reviewer="erin")
    assert done.returncode == 0, done.stdout + done.stderr
    assert direct(capture_db, "SELECT id, balance FROM acct WHERE id IN (1, 6) ORDER BY id") == [(1, 1), (6, 6)]
    committed = digest(capture_db, "acct")

    # ... and the next one, held the same way, is rolled back.
    other = Agent(proxy, dbname(capture_db))
    other.conn.execute("DELETE FROM acct WHERE id = 2")
    (second,) = other.held_ids()
    assert second != held
    assert direct(capture_db, "SELECT count(*) FROM acct WHERE id = 2") == [(1,)]
    undone = cli(proxy, tmp_path, "rollback", str(second), reviewer="erin")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert digest(capture_db, "acct") == committed
    assert entry(proxy, second)["outcome"] == "rolled back"
    agent.close()
    other.close()


def test_sandbox_off_commits_unverified(capture_db: str, make_proxy: Callable[..., RunningProxy],
                                       tmp_path: Path) -> None:
    make_acct(capture_db, 3)
    proxy = make_proxy(capture_db, mode="undo", sandbox="off")
    agent = Agent(proxy, dbname(capture_db))
    e = commit_one(proxy, capture_db, agent, "UPDATE acct SET balance = 0 WHERE id = 1")
    assert e["undo"]["verification"] == "not done (sandbox = off)", e["undo"]
    assert direct(capture_db, "SELECT balance FROM acct WHERE id = 1") == [(0,)]
    shown = cli(proxy, tmp_path, "show", str(e["id"]))
    assert shown.returncode == 0 and "not done (sandbox = off)" in shown.stdout, shown.stdout + shown.stderr
    r = cli(proxy, tmp_path, "verify", str(e["id"]))
    assert r.returncode == 1 and "sandbox = off" in r.stderr, r.stdout + r.stderr
    agent.close()


def test_cli_verify(capture_db: str, undo_proxy: RunningProxy, make_proxy: Callable[..., RunningProxy],
                    tmp_path: Path) -> None:
    make_acct(capture_db, 10)
    agent = Agent(undo_proxy, dbname(capture_db))
    commit_one(undo_proxy, capture_db, agent, "UPDATE acct SET balance = 1 WHERE id = 1")
    e = commit_one(undo_proxy, capture_db, agent, "UPDATE acct SET balance = 2 WHERE id = 2")
    assert e["undo"]["verification"]["cached"] is True, e["undo"]  # journaled from the cache
    after = digest(capture_db, "acct")

    r = cli(undo_proxy, tmp_path, "verify", str(e["id"]))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"#{e['id']}" in r.stdout and "verification: verified" in r.stdout, r.stdout
    assert "forward from statements" in r.stdout and f"{TABLE} " in r.stdout, r.stdout
    # The journal now holds the fresh verdict, not the cached one.
    v = entry(undo_proxy, e["id"])["undo"]["verification"]
    assert v["status"] == "verified" and v["cached"] is False and v["timings_ms"]["total"] > 0, v
    assert v["sample"][TABLE] >= 1, v
    assert digest(capture_db, "acct") == after  # verification never touches the upstream's rows

    j = cli(undo_proxy, tmp_path, "verify", str(e["id"]), "--json")
    assert j.returncode == 0, j.stdout + j.stderr
    body = json.loads(j.stdout)
    assert body["id"] == e["id"] and body["status"] == "verified" and body["forward"] == "statements", body

    missing = cli(undo_proxy, tmp_path, "verify", "987654")
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "no transaction #987654" in missing.stderr, missing.stderr

    # Undone: nothing left to prove until it is redone.
    status, done = api(undo_proxy, f"/v1/transactions/{e['id']}/undo", "POST", {"reviewer": "carol"})
    assert status == 200 and done["applied"], done
    r = cli(undo_proxy, tmp_path, "verify", str(e["id"]))
    assert r.returncode == 1 and "could not verify" in r.stdout and "undone" in r.stdout, r.stdout

    # Held in hold mode where capture is installed: captured too, so verified for real.
    hold = make_proxy(capture_db, mode="hold")
    holder = Agent(hold, dbname(capture_db))
    holder.conn.execute("UPDATE acct SET balance = 3 WHERE id = 3")
    (held,) = holder.held_ids()
    r = cli(hold, tmp_path, "verify", str(held))
    assert r.returncode == 0 and "verification: verified" in r.stdout, r.stdout + r.stderr
    assert direct(capture_db, "SELECT balance FROM acct WHERE id = 3") == [(100,)]
    status, _ = api(hold, f"/v1/transactions/{held}/rollback", "POST", {"reviewer": "carol"})
    assert status == 200
    agent.close()
    holder.close()


def test_hold_mode_without_capture_cannot_verify(pg: Postgres, make_proxy: Callable[..., RunningProxy],
                                                 unique_name: str, tmp_path: Path) -> None:
    """Where `dbproxy install` was not run, hold mode captures nothing: its verdict says why."""
    direct(pg.url, f"CREATE TABLE {unique_name} (id int PRIMARY KEY, v int)")
    direct(pg.url, f"INSERT INTO {unique_name} VALUES (1, 1)")
    hold = make_proxy(mode="hold")
    holder = Agent(hold, "postgres")
    holder.conn.execute(f"UPDATE {unique_name} SET v = 2")
    (held,) = holder.held_ids()
    r = cli(hold, tmp_path, "verify", str(held))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "could not verify" in r.stdout and "without capture" in r.stdout, r.stdout
    j = cli(hold, tmp_path, "verify", str(held), "--json")
    assert j.returncode == 1 and json.loads(j.stdout)["status"] == "could not verify", j.stdout
    status, _ = api(hold, f"/v1/transactions/{held}/rollback", "POST", {"reviewer": "carol"})
    assert status == 200
    holder.close()


def test_bulk_changes_commit_verified_on_a_sample(capture_db: str, undo_proxy: RunningProxy) -> None:
    direct(capture_db, "CREATE TABLE big (id int PRIMARY KEY, v int)")
    agent = Agent(undo_proxy, dbname(capture_db))
    # Exactly at the limit: verified whole.
    e = commit_one(undo_proxy, capture_db, agent,
                   f"INSERT INTO big SELECT g, 0 FROM generate_series(1, {VERIFY_LIMIT}) g")
    assert e["undo"]["verification"]["status"] == "verified", e["undo"]["verification"]
    assert not e["undo"]["verification"]["sampled"]

    # Far more than the limit: committed, not held for its size; verified on a sample, which it says.
    n = 5 * VERIFY_LIMIT
    e = commit_one(undo_proxy, capture_db, agent, f"UPDATE big SET v = v + 1; INSERT INTO big SELECT g, 1 "
                                                  f"FROM generate_series({VERIFY_LIMIT + 1}, {n}) g")
    v = e["undo"]["verification"]
    assert v["status"] == "verified" and v["sampled"] == f"{VERIFY_LIMIT} of {n} captured changes", v
    assert not e["undo"]["complete"] and not e["undo"]["steps"]  # built from the log when undone
    assert direct(capture_db, "SELECT count(*), sum(v) FROM big") == [(n, n)]
    status, done = api(undo_proxy, f"/v1/transactions/{e['id']}/undo", "POST", {"reviewer": "carol"})
    assert status == 200 and done["applied"] and done["done"] == n, done
    assert direct(capture_db, "SELECT count(*), sum(v) FROM big") == [(VERIFY_LIMIT, 0)]
    agent.close()


def test_reads_of_other_tables_and_ddl_verify_at_commit(capture_db: str, undo_proxy: RunningProxy) -> None:
    """Statements that read another table (INSERT ... SELECT, UPDATE ... FROM) replay on a sample
    holding the rows they read; DDL verifies at its own COMMIT (its ACCESS EXCLUSIVE lock held)
    because the schema copy was made ahead of time, after the previous DDL committed."""
    make_acct(capture_db, rows=3000)  # more rows than a widened random sample (500) would hold
    direct(capture_db, "CREATE TABLE archive (id int PRIMARY KEY, balance int NOT NULL)")
    direct(capture_db, "ALTER TABLE archive OWNER TO dbproxy_agents")  # the agents change its schema
    agent = Agent(undo_proxy, dbname(capture_db))

    def verified(sql: str) -> dict[str, Any]:
        v = commit_one(undo_proxy, capture_db, agent, sql)["undo"]["verification"]
        assert v["status"] == "verified", (sql, v)
        return v

    v = verified("INSERT INTO archive SELECT id, balance FROM acct WHERE id % 100 = 0")
    assert v["forward"] == "statements", v
    assert v["sample"][TABLE] >= 3000, v  # the table it read, whole
    assert direct(capture_db, "SELECT count(*) FROM archive") == [(30,)]
    v = verified("UPDATE archive a SET balance = c.balance + a.id FROM acct c WHERE c.id = a.id AND c.id <= 1500")
    assert v["forward"] == "statements", v
    assert direct(capture_db, "SELECT sum(balance) FROM archive WHERE id <= 1500") == [(15 * 100 + 12000,)]

    verification = undo_proxy.server.pending.verification
    assert verification is not None
    for ddl in ("ALTER TABLE archive ADD COLUMN note text", "ALTER TABLE archive RENAME COLUMN note TO remark",
                "CREATE INDEX archive_balance ON archive (balance)"):
        undo_proxy.call(verification.settled())  # the copy that the previous DDL's commit started
        v = verified(ddl)
        # Had the copy or the sample waited on the DDL's own ACCESS EXCLUSIVE lock, pg_dump (2 s)
        # or the sampler (1 s) would have given up: "could not verify". The statement itself
        # replayed on the sample, at the first try.
        assert v["reason"] == "" and v["forward"] == "statements" and not v["widened"], v
    assert [r[0] for r in direct(capture_db, "SELECT column_name FROM information_schema.columns "
                                             "WHERE table_name = 'archive' ORDER BY ordinal_position")] == [
        "id", "balance", "remark"]


def test_ddl_right_after_start_commits_verified(capture_db: str, make_proxy: Callable[..., RunningProxy],
                                               tmp_path: Path) -> None:
    """The start-up race: DDL and TRUNCATE sent the moment `serve` accepts agents (the sandbox still
    starting, its first schema copy not made) commit with a verified inverse. The copy they are
    verified against is taken before their DDL locks anything, never behind their own locks.
    A sandbox directory of its own: its cluster is made at start (initdb), so the sandbox is
    surely still starting when the agent's first statement arrives."""
    cold = tmp_path / "cold-sandbox"
    try:
        _ddl_right_after_start(capture_db, make_proxy, cold)
    finally:
        for data in cold.glob("pg*"):
            if (data / "PG_VERSION").exists():
                LocalCluster(data).stop(mode="immediate")


def _ddl_right_after_start(capture_db: str, make_proxy: Callable[..., RunningProxy], cold: Path) -> None:
    make_acct(capture_db, rows=50)
    direct(capture_db, "CREATE TABLE scratch (id int PRIMARY KEY, v text); "
                       "INSERT INTO scratch SELECT i, 'v' || i FROM generate_series(1, 30) i; "
                       "ALTER TABLE acct OWNER TO dbproxy_agents; ALTER TABLE scratch OWNER TO dbproxy_agents")
    before = digest(capture_db, "scratch")
    proxy = make_proxy(capture_db, mode="undo", sandbox_dir=str(cold))  # returns as soon as it listens
    agent = Agent(proxy, dbname(capture_db))
    verification = proxy.server.pending.verification
    assert verification is not None and verification._warm is not None and not verification._warm.done()
    first = commit_one(proxy, capture_db, agent, "DROP TABLE scratch")
    assert first["undo"]["verification"]["status"] == "verified", first["undo"]["verification"]
    second = commit_one(proxy, capture_db, agent, "TRUNCATE acct")
    assert second["undo"]["verification"]["status"] == "verified", second["undo"]["verification"]
    assert direct(capture_db, "SELECT count(*) FROM acct") == [(0,)]
    for tx in (second, first):
        status, done = api(proxy, f"/v1/transactions/{tx['id']}/undo", "POST", {"reviewer": "carol"})
        assert status == 200 and done["applied"], done
    assert digest(capture_db, "scratch") == before
    assert direct(capture_db, "SELECT count(*), sum(balance) FROM acct") == [(50, 5000)]
    agent.close()

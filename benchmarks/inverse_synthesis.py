"""How long does inverse synthesis take per DML statement?

Run:  python -m benchmarks.inverse_synthesis [--transactions N] [--upstream URL]

Starts a throw-away PostgreSQL (bundled binaries) unless `--upstream` names one (a superuser URL;
a scratch database `dbproxy_synth_bench` is created there and dropped), runs `dbproxy install`,
then N agent-like transactions in a captured session (pgbench's TPC-B-like statements, and a mix
of multi-row UPDATE/DELETE/INSERT ... ON CONFLICT on a table with jsonb and arrays), and times
`inverse.undo_plan.build` on each transaction's captured changes, exactly as the proxy does at an
agent's COMMIT (catalog facts already cached, as they are after the first transaction). Reports
p50/p95 per transaction and per DML statement, with the first (cold template cache) call apart.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from dbproxy.undo.apply import load_changes, load_tables
from dbproxy.undo.install import install
from inverse.undo_plan import build
from sandbox.pgcluster import LocalCluster, free_port

SCHEMA = """
CREATE TABLE branches (bid int PRIMARY KEY, bbalance int, filler char(88));
CREATE TABLE tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
CREATE TABLE history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
CREATE TABLE docs (id int PRIMARY KEY, tags text[], body jsonb, n numeric(12, 2));
INSERT INTO branches SELECT i, 0, '' FROM generate_series(1, 10) i;
INSERT INTO tellers SELECT i, (i - 1) / 10 + 1, 0, '' FROM generate_series(1, 100) i;
INSERT INTO accounts SELECT i, (i - 1) / 100000 + 1, 0, '' FROM generate_series(1, 100000) i;
INSERT INTO docs SELECT i, ARRAY['a', 'b'], jsonb_build_object('k', i), i FROM generate_series(1, 1000) i;
"""


def tpcb(r: random.Random) -> list[str]:
    aid, tid, bid, delta = r.randint(1, 100000), r.randint(1, 100), r.randint(1, 10), r.randint(-5000, 5000)
    return [f"UPDATE accounts SET abalance = abalance + {delta} WHERE aid = {aid}",
            f"UPDATE tellers SET tbalance = tbalance + {delta} WHERE tid = {tid}",
            f"UPDATE branches SET bbalance = bbalance + {delta} WHERE bid = {bid}",
            f"INSERT INTO history VALUES ({tid}, {bid}, {aid}, {delta}, now(), '')"]


def mixed(r: random.Random) -> list[str]:
    lo = r.randint(1, 990)
    return [f"UPDATE docs SET body = body || '{{\"x\": 1}}', tags = tags || 'c'::text "
            f"WHERE id BETWEEN {lo} AND {lo + 5}",
            f"INSERT INTO docs VALUES ({lo}, '{{z}}', '{{}}', 1) ON CONFLICT (id) DO UPDATE SET n = docs.n + 1",
            f"DELETE FROM docs WHERE id = {lo + 7}",
            f"INSERT INTO docs VALUES ({lo + 7}, '{{}}', 'null', 0)"]


async def measure(url: str, n: int) -> None:
    admin = await asyncpg.connect(url)
    await admin.execute(SCHEMA)
    await install(admin)
    agent = await asyncpg.connect(url, server_settings={"dbproxy.capture": "on"})
    r = random.Random(7)
    xids: list[tuple[int, int]] = []
    for i in range(n):
        stmts = tpcb(r) if i % 2 == 0 else mixed(r)
        async with agent.transaction():
            for s in stmts:
                await agent.execute(s)
            xids.append((await agent.fetchval("SELECT txid_current()"), len(stmts)))
    tables = await load_tables(admin, {oid for (oid,) in await admin.fetch(
        "SELECT DISTINCT rel FROM dbproxy.capture_log WHERE rel IS NOT NULL")})
    per_tx: list[float] = []
    per_stmt: list[float] = []
    cold = None
    changes_total = 0
    for xid, k in xids:
        changes = await load_changes(admin, xid)
        changes_total += len(changes)
        t0 = time.perf_counter()
        plan = build(changes, tables)
        ms = (time.perf_counter() - t0) * 1000
        assert plan.reversible and plan.steps
        if cold is None:
            cold = ms
            continue
        per_tx.append(ms)
        per_stmt.append(ms / k)
    await agent.close()
    await admin.close()

    def q(v: list[float], p: float) -> float:
        return statistics.quantiles(v, n=100)[int(p) - 1]

    print(f"{len(xids)} transactions, {changes_total} captured row changes")
    print(f"first transaction (templates built): {cold:.3f} ms")
    print(f"per transaction: p50 {statistics.median(per_tx):.3f} ms, p95 {q(per_tx, 95):.3f} ms")
    print(f"per DML statement: p50 {statistics.median(per_stmt):.4f} ms, p95 {q(per_stmt, 95):.4f} ms "
          "(target p50 <= 1 ms)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.inverse_synthesis", description=__doc__.splitlines()[0])
    p.add_argument("--transactions", type=int, default=2000)
    p.add_argument("--upstream", help="superuser URL of an existing server")
    args = p.parse_args(argv)
    if args.upstream:
        return _on_server(args.upstream, args.transactions)
    root = Path(tempfile.mkdtemp(prefix="dbproxy-synth-"))
    cluster = LocalCluster(root / "data", host="127.0.0.1", port=free_port())
    cluster.init()
    cluster.start()
    try:
        asyncio.run(measure(cluster.url(), args.transactions))
    finally:
        cluster.stop(mode="immediate")
        cluster.destroy()
    return 0


def _on_server(url: str, n: int) -> int:
    async def go() -> None:
        c = await asyncpg.connect(url)
        await c.execute("DROP DATABASE IF EXISTS dbproxy_synth_bench")
        await c.execute("CREATE DATABASE dbproxy_synth_bench")
        try:
            await measure(url.rsplit("/", 1)[0] + "/dbproxy_synth_bench", n)
        finally:
            await c.execute("DROP DATABASE IF EXISTS dbproxy_synth_bench WITH (FORCE)")
            await c.close()

    asyncio.run(go())
    return 0


if __name__ == "__main__":
    sys.exit(main())

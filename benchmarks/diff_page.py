"""How long the first page of a big transaction's row diff takes, end to end: through a running
proxy, an agent updates N rows (100,000 by default) of a wider table; a reviewer then asks for
the transaction (`GET /v1/transactions/ID`, what `dbproxy show ID` prints) and for its console
page, each `--rounds` times; the median and the worst are printed.

Two cases: a *held* transaction (hold mode: the diff is computed live, inside the held
transaction, see `dbproxy.review.diff`) and a *committed* undo-mode transaction (its diff comes
from the row images captured at commit, see `dbproxy.review.image_diff`; the sandbox is off,
since verification stops at 1,000 row changes and would hold it).

    python -m benchmarks.diff_page [--rows 100000] [--table-rows 200000] [--rounds 5]

Runs its own PostgreSQL from the bundled binaries in a temporary directory; prints one line per
measurement. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from dbproxy.backend.upstream import UpstreamTarget
from dbproxy.config.settings import load_settings
from dbproxy.frontend.server import ProxyServer, build_registry
from dbproxy.undo.install import install
from sandbox.pgcluster import LocalCluster, free_port

TOKEN = "bench-admin-token"


async def _proxy(upstream: str, data_dir: Path, **overrides: Any) -> ProxyServer:
    cli: dict[str, Any] = {"listen": f"127.0.0.1:{free_port()}", "data_dir": str(data_dir), "log_level": "error",
                           "admin": "127.0.0.1:0", "admin_token": TOKEN,
                           "agents": {"agent": {"password": "agent-pw", "databases": ["*"]}}, **overrides}
    settings = load_settings(None, cli, environ={})
    server = ProxyServer(settings, UpstreamTarget.parse(upstream), build_registry(settings, announce=False))
    await server.start()
    return server


async def _time(label: str, rounds: int, fn: Any) -> None:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    print(f"{label}: median {statistics.median(times) * 1000:.0f} ms, worst {max(times) * 1000:.0f} ms "
          f"({rounds} rounds)", flush=True)


async def _reviewer(server: ProxyServer, tx_id: int, rounds: int, case: str, rows: int) -> None:
    assert server.admin_address is not None
    base = f"http://{server.admin_address[0]}:{server.admin_address[1]}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async def api() -> None:
            async with http.get(f"{base}/v1/transactions/{tx_id}",
                                headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                body = await r.json()
                assert r.status == 200, body
                [d] = body["diff"]
                assert d["updated"] == rows and len(d["rows"]) == 50, (d["updated"], len(d["rows"]))

        form = await (await http.get(f"{base}/console/signin")).text()
        nonce = re.search(r'name="nonce" value="([^"]+)"', form)
        assert nonce is not None
        await http.post(f"{base}/console/signin", data={"nonce": nonce.group(1), "token": TOKEN})

        async def page() -> None:
            async with http.get(f"{base}/console/tx/{tx_id}") as r:
                text = await r.text()
                assert r.status == 200 and f"rows 1–50 of {rows}" in text, text[:300]

        await _time(f"{case}, {rows} updated rows: API first page", rounds, api)
        await _time(f"{case}, {rows} updated rows: console page", rounds, page)


async def _setup_table(url: str, table_rows: int) -> None:
    con = await asyncpg.connect(url)
    try:
        await con.execute("create table big (id int primary key, name text, qty int, price numeric(10,2), "
                          "note text, updated_at timestamptz default now())")
        await con.execute("insert into big (id, name, qty, price, note) select i, 'name ' || i, i % 100, i * 1.5, "
                          f"repeat('x', 40) from generate_series(1, {table_rows}) i")
        await con.execute("vacuum analyze big")
    finally:
        await con.close()


async def run(rows: int, table_rows: int, rounds: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="dbproxy-diff-bench-"))
    cluster = LocalCluster(root / "data", host="127.0.0.1", port=free_port())
    cluster.init()
    cluster.start()
    try:
        # Held (hold mode).
        await _setup_table(cluster.url(), table_rows)
        server = await _proxy(cluster.url(), root / "hold", mode="hold")
        try:
            host, port = server.settings.listen_address
            agent = await asyncpg.connect(f"postgresql://agent:agent-pw@{host}:{port}/postgres")
            await agent.execute(f"update big set qty = qty + 1 where id <= {rows}")
            [tx_id] = list(server.pending.live)  # type: ignore[union-attr]
            await _reviewer(server, tx_id, rounds, "held", rows)
            await agent.close()
        finally:
            await server.shutdown(0.5)

        # Committed in undo mode (images captured).
        admin = await asyncpg.connect(cluster.url())
        await admin.execute("create database undo_bench")
        await admin.close()
        url = cluster.url().rsplit("/", 1)[0] + "/undo_bench"
        con = await asyncpg.connect(url)
        await install(con)
        await con.close()
        await _setup_table(url, table_rows)
        server = await _proxy(url, root / "undo", mode="undo", sandbox="off")
        try:
            host, port = server.settings.listen_address
            agent = await asyncpg.connect(f"postgresql://agent:agent-pw@{host}:{port}/undo_bench")
            await agent.execute(f"update big set qty = qty + 1 where id <= {rows}")
            await agent.close()
            assert server.journal is not None and server.pending is not None
            tx_id = None
            for _ in range(200):
                await server.journal.flush()
                found = await server.pending.log(agent="agent", limit=1)
                if found and found[0].mode == "undo":
                    tx_id = found[0].id
                    break
                await asyncio.sleep(0.05)
            assert tx_id is not None, "the undo-mode transaction was not journaled"
            await _reviewer(server, tx_id, rounds, "committed (undo mode)", rows)
        finally:
            await server.shutdown(0.5)
    finally:
        cluster.stop(mode="immediate")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="rows the agent updates")
    p.add_argument("--table-rows", type=int, default=200_000, help="rows in the table")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    asyncio.run(run(args.rows, args.table_rows, args.rounds))


if __name__ == "__main__":
    main()

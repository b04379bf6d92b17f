"""How long does sandbox verification take, by transaction size, with a warm sandbox, per backend?

Run:  python -m benchmarks.verification [--rounds N] [--upstream URL] [--backends local,testcontainers]

Starts a throw-away upstream PostgreSQL (bundled binaries) unless `--upstream` names one (a
superuser URL; a scratch database `dbproxy_verify_bench` is created there and dropped), creates
an e-commerce schema (customers, orders with ON DELETE CASCADE items, a trigger keeping order
totals, products) with seed data, runs `dbproxy install`, and starts each sandbox backend asked
for (`local`: a cluster in a temporary directory; `testcontainers`: a container on the Docker
engine, needs one). Then, for each transaction size, N times: the agent's statements run in an
open, captured upstream transaction; its changes and catalog facts are read there; the inverse
is built; and `sandbox.verify` proves it on every backend in turn (the same statements, so the
backends are compared on the same work, interleaved), sampling through a second connection,
exactly as the proxy does at an agent's COMMIT. The transaction is then rolled back, so every
round starts from the same data. The first verification per backend (server started, schema
copied) is reported apart.

Reports p50/p95 per size and backend and the time split (schema lookup, sampling upstream, load,
forward, inverse, digests). Targets (issue 5): p50 <= 100 ms and p95 <= 500 ms for transactions
of up to 10 statements and 1,000 rows. For scale: GoEx's reversibility check takes >= 10 s per
dry run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from dbproxy.undo.apply import load_changes, load_tables
from dbproxy.undo.install import install
from inverse.undo_plan import build
from sandbox.auto import make_backend
from sandbox.pgcluster import LocalCluster, free_port
from sandbox.verify import Candidate, Transaction, Verifier

SCHEMA = """
CREATE TABLE customers (id serial PRIMARY KEY, email text UNIQUE NOT NULL, name text, tier text DEFAULT 'basic');
CREATE TABLE products (id serial PRIMARY KEY, sku text UNIQUE NOT NULL, price numeric(10, 2) NOT NULL,
                       stock int NOT NULL CHECK (stock >= 0));
CREATE TABLE orders (id serial PRIMARY KEY, customer int NOT NULL REFERENCES customers ON DELETE CASCADE,
                     status text NOT NULL DEFAULT 'new', total numeric(12, 2) NOT NULL DEFAULT 0);
CREATE TABLE order_items (order_id int REFERENCES orders ON DELETE CASCADE, product int REFERENCES products,
                          qty int NOT NULL, PRIMARY KEY (order_id, product));
CREATE FUNCTION order_total() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE orders o SET total = (SELECT coalesce(sum(i.qty * p.price), 0) FROM order_items i
                               JOIN products p ON p.id = i.product WHERE i.order_id = o.id)
  WHERE o.id = coalesce(NEW.order_id, OLD.order_id);
  RETURN NULL;
END $$;
CREATE TRIGGER items_total AFTER INSERT OR UPDATE OR DELETE ON order_items FOR EACH ROW EXECUTE FUNCTION order_total();
INSERT INTO customers (email, name)
  SELECT 'c' || i || '@example.com', 'Customer ' || i FROM generate_series(1, 20000) i;
INSERT INTO products (sku, price, stock) SELECT 'SKU-' || i, (i % 97) + 0.99, 1000 FROM generate_series(1, 2000) i;
INSERT INTO orders (customer, status) SELECT 1 + (i * 7) % 20000, 'new' FROM generate_series(1, 50000) i;
INSERT INTO order_items SELECT o, 1 + (o * 13) % 2000, 1 + o % 5 FROM generate_series(1, 50000) o;
INSERT INTO order_items SELECT o, 1 + (o * 17 + 5) % 2000, 2 FROM generate_series(1, 50000) o
  ON CONFLICT DO NOTHING;
ANALYZE;
"""

Size = tuple[str, Callable[[random.Random], list[str]]]


def one_row(r: random.Random) -> list[str]:
    return [f"UPDATE customers SET tier = 'gold' WHERE id = {r.randint(1, 20000)}"]


def small(r: random.Random) -> list[str]:
    o = r.randint(1, 50000)
    return [f"UPDATE orders SET status = 'shipped' WHERE id = {o}",
            f"UPDATE order_items SET qty = qty + 1 WHERE order_id = {o}",
            f"INSERT INTO customers (email, name) VALUES ('new{o}@example.com', 'New {o}')"]


def ten_statements(r: random.Random) -> list[str]:
    c = r.randint(1, 19000)
    out = [f"UPDATE customers SET tier = 'silver' WHERE id BETWEEN {c} AND {c + 9}",
           f"DELETE FROM orders WHERE id = {r.randint(1, 50000)}"]  # cascades to items
    for k in range(8):
        p = r.randint(1, 2000)
        out.append(f"UPDATE products SET stock = stock - {k + 1} WHERE id = {p}")
    return out


def hundred_rows(r: random.Random) -> list[str]:
    c = r.randint(1, 19000)
    return [f"UPDATE customers SET tier = 'bronze' WHERE id BETWEEN {c} AND {c + 59}",
            f"DELETE FROM order_items WHERE order_id BETWEEN {c} AND {c + 19}",
            f"INSERT INTO products (sku, price, stock) SELECT 'NEW-{c}-' || i, 5, 1 FROM generate_series(1, 10) i"]


def thousand_rows(r: random.Random) -> list[str]:
    c = r.randint(1, 18000)
    return [f"UPDATE customers SET name = upper(name) WHERE id BETWEEN {c} AND {c + 599}",
            f"UPDATE products SET price = price * 1.1 WHERE id BETWEEN {c % 1500} AND {c % 1500 + 199}",
            f"DELETE FROM order_items WHERE order_id BETWEEN {c} AND {c + 99}"]


SIZES: list[Size] = [("1 statement, 1 row", one_row), ("3 statements, ~5 rows", small),
                     ("10 statements, ~15 rows", ten_statements), ("3 statements, ~100 rows", hundred_rows),
                     ("3 statements, ~1000 rows", thousand_rows)]


Result = tuple[float, int, dict[str, float]]  # ms, row changes, the verdict's time split


async def one(agent: asyncpg.Connection, sampler: asyncpg.Connection, url: str, verifiers: dict[str, Verifier],
              stmts: list[str]) -> dict[str, Result]:
    """The statements in one open upstream transaction, verified on each backend in turn."""
    tx = agent.transaction()
    await tx.start()
    out: dict[str, Result] = {}
    try:
        for s in stmts:
            await agent.execute(s)
        changes = await load_changes(agent, int(await agent.fetchval("SELECT txid_current()")))
        tables = await load_tables(agent, {c.rel for c in changes if c.rel is not None})
        plan = build(changes, tables)
        for name, verifier in verifiers.items():
            t0 = time.perf_counter()
            verdict = await verifier.verify(sampler, url, Transaction(changes, tables, statements=stmts),
                                            Candidate(plan))
            ms = (time.perf_counter() - t0) * 1000
            if not verdict.verified:
                raise SystemExit(f"verification on {name} did not pass: {verdict.summary()} {verdict.diff[:3]}")
            out[name] = (ms, len(changes), verdict.timings_ms)
    finally:
        await tx.rollback()
    return out


def q95(v: list[float]) -> float:
    return statistics.quantiles(v, n=20)[-1] if len(v) >= 2 else v[0]


async def measure(url: str, rounds: int, sandbox_dir: Path, backends: list[str]) -> None:
    admin = await asyncpg.connect(url)
    await admin.execute(SCHEMA)
    await install(admin)
    agent = await asyncpg.connect(url, server_settings={"dbproxy.capture": "on"})
    major = int(await admin.fetchval("SHOW server_version_num")) // 10000
    verifiers = {name: Verifier(make_backend(name, data_dir=sandbox_dir / name, upstream_major=major,
                                             stop_on_close=True)) for name in backends}
    r = random.Random(5)
    try:
        for name, verifier in verifiers.items():
            t0 = time.perf_counter()
            cold = (await one(agent, admin, url, {name: verifier}, one_row(r)))[name]
            print(f"{name}: first verification (sandbox server started, schema copied): {cold[0]:.0f} ms "
                  f"(schema {cold[2].get('schema', 0):.0f} ms); wall {time.perf_counter() - t0:.1f} s; "
                  f"{verifier.backend.describe()}")
        print()
        print("| transaction | backend | row changes (median) | p50 ms | p95 ms | sample / load / forward / inverse / "
              "digests (median ms) |")
        print("|---|---|---:|---:|---:|---|")
        all_ms: dict[str, list[float]] = {name: [] for name in verifiers}
        for label, make in SIZES:
            results: dict[str, list[Result]] = {name: [] for name in verifiers}
            for _ in range(rounds):
                for name, res in (await one(agent, admin, url, verifiers, make(r))).items():
                    results[name].append(res)
            for name, rs in results.items():
                times = [ms for ms, _, _ in rs]
                all_ms[name] += times

                def med(k: str, rs: list[Result] = rs) -> float:
                    return statistics.median(t.get(k, 0.0) for _, _, t in rs)

                print(f"| {label} | {name} | {statistics.median(n for _, n, _ in rs):.0f} | "
                      f"{statistics.median(times):.1f} | {q95(times):.1f} | {med('sample'):.1f} / {med('load'):.1f} / "
                      f"{med('forward'):.1f} / {med('inverse'):.1f} / {med('digest'):.1f} |")
        print()
        for name, ms in all_ms.items():
            print(f"{name}: all sizes p50 {statistics.median(ms):.1f} ms, p95 {q95(ms):.1f} ms "
                  "(targets: p50 <= 100 ms, p95 <= 500 ms; GoEx: >= 10,000 ms per dry run)")
    finally:
        for verifier in verifiers.values():
            await verifier.close()
        await agent.close()
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.verification", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30, help="verifications per transaction size")
    p.add_argument("--upstream", help="superuser URL of an existing server")
    p.add_argument("--backends", default="local", help="comma-separated sandbox backends to compare in the same "
                   "run: local, testcontainers (needs a Docker engine), auto (default: local)")
    args = p.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    root = Path(tempfile.mkdtemp(prefix="dbproxy-verify-"))
    if args.upstream:
        async def go() -> None:
            c = await asyncpg.connect(args.upstream)
            await c.execute("DROP DATABASE IF EXISTS dbproxy_verify_bench WITH (FORCE)")
            await c.execute("CREATE DATABASE dbproxy_verify_bench")
            try:
                await measure(args.upstream.rsplit("/", 1)[0] + "/dbproxy_verify_bench", args.rounds, root / "sbx",
                              backends)
            finally:
                await c.execute("DROP DATABASE IF EXISTS dbproxy_verify_bench WITH (FORCE)")
                await c.close()

        asyncio.run(go())
        return 0
    cluster = LocalCluster(root / "data", host="127.0.0.1", port=free_port())
    cluster.init()
    cluster.start()
    try:
        asyncio.run(measure(cluster.url(), args.rounds, root / "sbx", backends))
    finally:
        cluster.stop(mode="immediate")
        cluster.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

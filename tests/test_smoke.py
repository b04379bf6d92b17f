"""First contact: each kind of client logs in through the proxy and gets an answer."""

import asyncpg


async def test_asyncpg_roundtrip(proxy):
    conn = await asyncpg.connect(proxy.url())
    try:
        assert await conn.fetchval("select $1::int + 1", 41) == 42
    finally:
        await conn.close()


def test_psql_multi_statement(psql):
    r = psql("-At", "-c", "select 1; select 'two'")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "two"]

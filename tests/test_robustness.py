"""Robustness: random bytes after login never crash the proxy or disturb other sessions, and the
proxy works on the standard asyncio loop too (uvloop is optional)."""

from __future__ import annotations

import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbproxy.protocol.framing import Frame
from dbproxy.protocol.messages import ErrorResponse, Query, decode_backend
from tests.conftest import AGENT, AGENT_PASSWORD, start_proxy
from tests.rawclient import RawClient

frontend_types = st.sampled_from(list(b"BCdcfDEHFPQSX!\x00\xff"))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Mostly well-framed messages with random bodies (so PostgreSQL, not just the framer, sees
    garbage), plus some raw junk."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=64))
    t = draw(frontend_types)
    body = draw(st.binary(max_size=64))
    length = len(body) + 4 if draw(st.integers(0, 4)) else draw(st.integers(-5, 200))
    return bytes([t]) + length.to_bytes(4, "big", signed=True) + body


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(frames(), min_size=1, max_size=6))
def test_random_messages_after_login(raw_fuzz_proxy, witness, chunks):
    c = RawClient(raw_fuzz_proxy.host, raw_fuzz_proxy.port, timeout=5)
    try:
        c.login(AGENT, AGENT_PASSWORD)
        try:
            c.send(b"".join(chunks) + Query("select 'alive'").encode())
            _drain_until_quiet(c)
        except (ConnectionError, TimeoutError, OSError):
            pass
    finally:
        c.close()
    # Whatever happened to that session, another one is unaffected and the proxy still serves.
    assert witness.execute("select 'witness ok'").fetchone() == ("witness ok",)
    with psycopg.connect(raw_fuzz_proxy.url()) as fresh:
        assert fresh.execute("select 1").fetchone() == (1,)


def _drain_until_quiet(c: RawClient) -> None:
    """Read until the session ends or goes quiet; every proxy-made error must be well formed."""
    c.sock.settimeout(0.3)
    while True:
        try:
            f = c.next()
        except TimeoutError:
            return
        assert isinstance(f, Frame)
        if f.type_char == "E":
            err = decode_backend(f)
            assert isinstance(err, ErrorResponse) and len(err.sqlstate) == 5


@pytest.fixture(scope="module")
def raw_fuzz_proxy(pg, tmp_path_factory):
    p = start_proxy(pg.url, tmp_path_factory.mktemp("fuzz"), agent_auth="password", max_message_bytes=4096)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def witness(raw_fuzz_proxy):
    conn = psycopg.connect(raw_fuzz_proxy.url())
    conn.execute("begin")
    yield conn
    conn.close()


async def test_standard_asyncio_loop(make_proxy):
    p = make_proxy(use_uvloop=False)
    conn = await asyncpg.connect(p.url())
    try:
        rows = await conn.fetch("select g, md5(g::text) from generate_series(1, 5000) g")
        assert len(rows) == 5000 and rows[-1][0] == 5000
        await conn.execute("create temp table plain_loop (a int, b text)")
        await conn.copy_records_to_table("plain_loop", records=[(i, str(i)) for i in range(3000)])
        assert await conn.fetchval("select sum(a) from plain_loop") == sum(range(3000))
    finally:
        await conn.close()
    with psycopg.connect(p.url()) as sync_conn:
        with sync_conn.cursor() as cur, cur.copy("copy (select generate_series(1, 1000)) to stdout") as copy:
            assert sum(1 for _ in copy.rows()) == 1000

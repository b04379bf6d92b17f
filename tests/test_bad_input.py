"""Bad input gets a PostgreSQL-style error with the right SQLSTATE, and nothing else breaks:
wrong passwords, unknown agents, malformed and oversized frames, upstream failures."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import psycopg
import pytest

from dbproxy.backend.agent_roles import RoleError
from dbproxy.backend.upstream import UpstreamError, UpstreamTarget, connect
from dbproxy.protocol.framing import frame
from dbproxy.protocol.messages import NegotiateProtocolVersion, Query, decode_backend
from dbproxy.protocol.startup import GSSENCRequest
from sandbox.pgcluster import LocalCluster, free_port
from tests.conftest import AGENT, AGENT_PASSWORD
from tests.rawclient import RawClient, error_of, int32
from tests.waiting import await_until


async def _connect_error(url: str) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as info:
        conn = await asyncpg.connect(url)
        await conn.close()
    return info.value


async def test_wrong_password_is_28P01(proxy):
    err = await _connect_error(proxy.url(password="nope"))
    assert err.sqlstate == "28P01"
    assert str(err) == f'password authentication failed for user "{AGENT}"'


async def test_unknown_agent_is_indistinguishable_from_wrong_password(proxy):
    err = await _connect_error(proxy.url(user="nobody", password="nope"))
    assert err.sqlstate == "28P01"
    assert str(err) == 'password authentication failed for user "nobody"'


def test_wrong_password_with_libpq(proxy):
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "agent"'):
        psycopg.connect(proxy.url(password="wrong"))


async def test_database_not_allowed_for_agent(make_proxy):
    p = make_proxy(agents={"limited": {"password": "pw", "databases": ["postgres"]}})
    ok = await asyncpg.connect(p.url(user="limited", password="pw"))
    assert await ok.fetchval("select current_database()") == "postgres"
    await ok.close()
    err = await _connect_error(p.url("template1", user="limited", password="pw"))
    assert err.sqlstate == "42501"
    assert 'permission denied for database "template1"' in str(err)


async def test_missing_database_is_relayed(proxy):
    err = await _connect_error(proxy.url("no_such_db"))
    assert err.sqlstate == "3D000"


@pytest.fixture
def raw_proxy(make_proxy):
    return make_proxy(agent_auth="password", max_message_bytes=64 * 1024)


def test_cleartext_password_auth(raw_proxy):
    c = RawClient(raw_proxy.host, raw_proxy.port)
    frames = c.login(AGENT, AGENT_PASSWORD)
    assert frames[-1].type_char == "Z"
    assert [f.type_char for f in frames if f.type_char in "RK"] == ["R", "K"]
    c.close()
    bad = RawClient(raw_proxy.host, raw_proxy.port)
    err = error_of(bad.login(AGENT, "wrong"))
    assert err.sqlstate == "28P01"


@pytest.mark.parametrize(
    ("garbage", "message"),
    [
        (b"!\x00\x00\x00\x04", "invalid message type '!'"),
        (b"Q\x00\x00\x00\x02", "invalid message length 2"),
        (b"Q" + int32(10_000_000) + b"select 1", "over the limit"),
    ],
)
async def test_malformed_frame_closes_only_that_session(raw_proxy, garbage, message):
    other = await asyncpg.connect(raw_proxy.url())
    await other.execute("begin")
    await other.execute("create temp table keep(x int)")
    c = RawClient(raw_proxy.host, raw_proxy.port)
    c.login(AGENT, AGENT_PASSWORD)
    c.send(garbage)
    err = error_of(c.until("E"))
    assert err.sqlstate == "08P01"
    assert err.fields["S"] == "FATAL"
    assert message in err.message
    assert c.closed()
    # The other session, mid-transaction, is untouched.
    await other.execute("insert into keep values (1)")
    assert await other.fetchval("select count(*) from keep") == 1
    await other.execute("commit")
    await other.close()


def test_oversized_query_within_limit_works_and_over_limit_fails(raw_proxy):
    c = RawClient(raw_proxy.host, raw_proxy.port)
    c.login(AGENT, AGENT_PASSWORD)
    c.send(Query("select '" + "a" * 60_000 + "' as v").encode())
    frames = c.until("Z")
    assert [f.type_char for f in frames] == ["T", "D", "C", "Z"]
    c.send(Query("select '" + "a" * 70_000 + "'").encode())
    err = error_of(c.until("E"))
    assert err.sqlstate == "08P01"
    assert "over the limit of 65536" in err.message
    assert c.closed()


def test_malformed_startup_packet(raw_proxy):
    c = RawClient(raw_proxy.host, raw_proxy.port)
    c.send(int32(5) + b"x")
    err = error_of([c.next()])
    assert err.sqlstate == "08P01"
    assert "invalid length of startup packet" in err.message
    assert c.closed()


def test_unsupported_protocol_version(raw_proxy):
    c = RawClient(raw_proxy.host, raw_proxy.port)
    c.startup(AGENT, version=2 << 16)
    err = error_of([c.next()])
    assert err.sqlstate == "0A000"
    assert "unsupported frontend protocol 2.0" in err.message


def test_protocol_3_2_is_negotiated_down(raw_proxy):
    c = RawClient(raw_proxy.host, raw_proxy.port)
    c.startup(AGENT, version=(3 << 16) | 2, **{"_pq_.some_option": "on"})
    nego = decode_backend(c.next())
    assert nego == NegotiateProtocolVersion(0, ("_pq_.some_option",))
    auth = c.next()
    assert auth.type_char == "R"
    c.send(b"p" + int32(4 + len(AGENT_PASSWORD) + 1) + AGENT_PASSWORD.encode() + b"\0")
    frames = c.until("Z")
    keys = [f for f in frames if f.type_char == "K"]
    assert len(keys) == 1 and len(keys[0].body) == 8  # a 3.0 BackendKeyData: pid + 4-byte secret
    c.send(Query("select 1").encode())
    assert [f.type_char for f in c.until("Z")] == ["T", "D", "C", "Z"]


def test_gssenc_request_is_refused_and_login_continues(raw_proxy):
    c = RawClient(raw_proxy.host, raw_proxy.port)
    c.send(GSSENCRequest().encode())
    assert c.recv_exact(1) == b"N"
    frames = c.login(AGENT, AGENT_PASSWORD)
    assert frames[-1].type_char == "Z"


def test_ssl_request_without_tls_answers_N(raw_proxy):
    c = RawClient(raw_proxy.host, raw_proxy.port)
    c.send(int32(8) + int32(80877103))
    assert c.recv_exact(1) == b"N"
    assert c.login(AGENT, AGENT_PASSWORD)[-1].type_char == "Z"
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        psycopg.connect(raw_proxy.url(sslmode="require"))


def test_function_call_is_relayed(raw_proxy):
    c = RawClient(raw_proxy.host, raw_proxy.port)
    c.login(AGENT, AGENT_PASSWORD)
    # int4pl (OID 177) with two text-format arguments, text result.
    body = int32(177) + b"\x00\x01\x00\x00" + b"\x00\x02" + int32(2) + b"40" + int32(1) + b"2" + b"\x00\x00"
    c.send(frame(b"F", body))
    frames = c.until("Z")
    assert frames[0].type_char == "V"
    assert frames[0].body == int32(2) + b"42"


async def test_upstream_rejecting_proxy_credentials(pg, make_proxy):
    """Wrong upstream credentials: the proxy does not start (it must set up the agents' roles
    first), and says why without the password."""
    bad_url = pg.url.replace(f":{pg.password}@", ":definitely-wrong-secret@")
    with pytest.raises(RoleError) as info:
        make_proxy(upstream=bad_url)
    assert f"cannot connect to the upstream as {pg.user} at 127.0.0.1:{pg.port}" in str(info.value)
    assert "password authentication failed" in str(info.value)
    assert "definitely-wrong-secret" not in str(info.value)


async def test_upstream_down_then_back(make_proxy, tmp_path: Path):
    """Unreachable upstream: 08001 naming the host; live sessions get 08006 or 57P01; the proxy
    keeps running and serves again once the upstream is back."""
    cluster = LocalCluster(tmp_path / "up", host="127.0.0.1", port=free_port())
    cluster.init()
    cluster.start()
    try:
        p = make_proxy(upstream=cluster.url())
        live = await asyncpg.connect(p.url())
        assert await live.fetchval("select 1") == 1
        cluster.stop(mode="immediate")
        with pytest.raises((asyncpg.PostgresError, asyncpg.exceptions.ConnectionDoesNotExistError,
                            ConnectionError)) as info:
            await live.fetchval("select 1")
        # Either PostgreSQL's own farewell (57P01) or the proxy's FATAL about the lost upstream.
        said = str(info.value)
        assert "upstream server closed the connection" in said or getattr(info.value, "sqlstate", "") == "57P01", said
        err = await _connect_error(p.url())
        assert err.sqlstate == "08001"
        assert f"127.0.0.1:{cluster.port}" in str(err)
        assert cluster.password not in str(err)
        cluster.start()
        again = await asyncpg.connect(p.url())
        assert await again.fetchval("select 2") == 2
        await again.close()
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(tmp_path / "up", ignore_errors=True)


async def test_upstream_connect_timeout(make_proxy):
    """An upstream that accepts TCP but never answers: the proxy refuses to start after the
    timeout, naming host and port; an agent's session would get 08001."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(RoleError, match=f"at 127.0.0.1:{port}: no answer within 0.5 s"):
            await asyncio.to_thread(make_proxy, upstream=f"postgresql://u:p@127.0.0.1:{port}/db?sslmode=disable",
                                    connect_timeout=0.5)
        target = UpstreamTarget.parse(f"postgresql://u:p@127.0.0.1:{port}/db?sslmode=disable")
        with pytest.raises(UpstreamError, match="timed out") as err:
            await connect(target, {}, within=0.5)
        assert err.value.sqlstate == "08001"
    finally:
        server.close()


async def test_too_many_sessions(make_proxy):
    p = make_proxy(max_sessions=2)
    a = await asyncpg.connect(p.url())
    b = await asyncpg.connect(p.url())
    err = await _connect_error(p.url())
    assert err.sqlstate == "53300"
    await a.close()

    async def connect_once_a_slot_is_free() -> asyncpg.Connection | None:
        # The proxy frees a's slot when its session ends, a moment after the client closed.
        try:
            return await asyncpg.connect(p.url())
        except asyncpg.TooManyConnectionsError:
            return None

    c = await await_until(connect_once_a_slot_is_free, what="a session slot to be freed")
    assert await c.fetchval("select 3") == 3
    await b.close()
    await c.close()

"""TLS between client and proxy: a self-signed certificate made here, libpq sslmodes, SCRAM
channel binding (SCRAM-SHA-256-PLUS), and asyncpg over TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import asyncpg
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dbproxy.backend.agent_roles import RoleError
from dbproxy.backend.upstream import UpstreamError, UpstreamTarget, connect


def make_self_signed(d: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = d / "server.crt", d / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_proxy(make_proxy, cert_files):
    cert, key = cert_files
    return make_proxy(tls_cert=str(cert), tls_key=str(key))


def test_libpq_sslmode_require(tls_proxy):
    with psycopg.connect(tls_proxy.url(sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 'over tls'").fetchone() == ("over tls",)


def test_libpq_verify_full_against_our_cert(tls_proxy, cert_files):
    cert, _ = cert_files
    url = tls_proxy.url(sslmode="verify-full", sslrootcert=str(cert)).replace("127.0.0.1", "localhost")
    with psycopg.connect(url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_verify_full_with_another_root_fails(tls_proxy, tmp_path):
    other_cert, _ = make_self_signed(tmp_path)
    url = tls_proxy.url(sslmode="verify-full", sslrootcert=str(other_cert)).replace("127.0.0.1", "localhost")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(url)


def test_scram_channel_binding_required(tls_proxy):
    """channel_binding=require makes libpq insist on SCRAM-SHA-256-PLUS bound to our certificate."""
    with psycopg.connect(tls_proxy.url(sslmode="require", channel_binding="require")) as conn:
        assert conn.execute("select 2").fetchone() == (2,)


def test_channel_binding_with_wrong_password_fails(tls_proxy):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(tls_proxy.url(password="bad", sslmode="require", channel_binding="require"))


def test_plain_client_still_allowed_when_tls_configured(tls_proxy):
    with psycopg.connect(tls_proxy.url(sslmode="disable")) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select 3").fetchone() == (3,)


async def test_asyncpg_over_tls(tls_proxy):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = await asyncpg.connect(tls_proxy.url(), ssl=ctx)
    try:
        assert await conn.fetchval("select $1::text", "tls") == "tls"
        rows = await conn.fetch("select g, repeat('x', 1000) from generate_series(1, 2000) g")
        assert len(rows) == 2000 and rows[-1][0] == 2000
    finally:
        await conn.close()


def test_upstream_tls_sslmode_require_fails_cleanly_when_upstream_has_no_tls(pg, make_proxy):
    """The test upstream has no TLS: with sslmode=require the proxy cannot reach it and refuses to
    start, saying why, with host and port but never the password."""
    with pytest.raises(RoleError, match="SSL") as info:
        make_proxy(upstream=pg.url + "?sslmode=require")
    assert pg.password not in str(info.value) and str(pg.port) in str(info.value)
    with pytest.raises(UpstreamError, match="does not support SSL") as err:  # and an agent's session would see
        asyncio.run(_upstream(pg.url + "?sslmode=require"))
    assert err.value.sqlstate == "08001"


# The bundled PostgreSQL is built without SSL, so the TLS-speaking upstream in these tests is a
# proxy with a certificate in front of the real server. The code under test is the proxy's upstream
# connector (`dbproxy.backend.upstream.connect`, what every agent session uses): it connects to
# that proxy exactly as it would to a TLS-enabled PostgreSQL (SSLRequest, handshake, SCRAM). (A
# whole second proxy cannot sit in front of the first: it would need to manage the agents' roles
# through it, which agents may never do.)


def _upstream_url(tls_proxy, host: str, **query: str) -> str:
    return tls_proxy.url(**query).replace("127.0.0.1", host)


async def _upstream(url: str) -> int:
    """Connect and log in upstream as an agent session does; returns the backend pid."""
    target = UpstreamTarget.parse(url)
    up = await connect(target, {"application_name": "tls-test"}, within=10)
    try:
        return up.backend_pid
    finally:
        up.endpoint.write(b"X\x00\x00\x00\x04")
        up.endpoint.close()


def _tls_sessions(tls_proxy) -> list[bool]:
    # The proxy's own journal connection is a session too; only the upstream connector's counts.
    return [s.login.tls for s in list(tls_proxy.server.sessions)
            if s.login is not None and s.login.forward_params.get("application_name") == "tls-test"]


async def _connected_over(tls_proxy, url: str) -> list[bool]:
    """Connect upstream through `url`, and report while connected whether the session used TLS."""
    target = UpstreamTarget.parse(url)
    up = await connect(target, {"application_name": "tls-test"}, within=10)
    try:
        for _ in range(50):
            seen = _tls_sessions(tls_proxy)
            if seen:
                return seen
            await asyncio.sleep(0.05)
        return []
    finally:
        up.endpoint.write(b"X\x00\x00\x00\x04")
        up.endpoint.close()


@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "verify-full", "prefer"])
async def test_upstream_tls_modes(tls_proxy, cert_files, sslmode):
    cert, _ = cert_files
    url = _upstream_url(tls_proxy, "localhost", sslmode=sslmode, sslrootcert=str(cert))
    assert await _connected_over(tls_proxy, url) == [True]


async def test_upstream_verify_full_rejects_wrong_host(make_proxy, tmp_path):
    cert, key = make_self_signed(tmp_path, names=("db.example.com",))
    upstream = make_proxy(tls_cert=str(cert), tls_key=str(key))
    with pytest.raises(UpstreamError, match="certificate verify failed: IP address mismatch") as err:
        await _upstream(_upstream_url(upstream, "127.0.0.1", sslmode="verify-full", sslrootcert=str(cert)))
    assert err.value.sqlstate == "08001"
    # verify-ca checks the chain, not the name
    assert await _upstream(_upstream_url(upstream, "127.0.0.1", sslmode="verify-ca", sslrootcert=str(cert))) > 0


async def test_upstream_verify_ca_rejects_unknown_root(tls_proxy, tmp_path):
    other, _ = make_self_signed(tmp_path)
    with pytest.raises(UpstreamError, match="certificate verify failed"):
        await _upstream(_upstream_url(tls_proxy, "localhost", sslmode="verify-ca", sslrootcert=str(other)))


async def test_upstream_sslmode_disable_is_plain(tls_proxy):
    assert await _connected_over(tls_proxy, _upstream_url(tls_proxy, "127.0.0.1", sslmode="disable")) == [False]


async def test_require_tls_refuses_plain_clients(make_proxy, cert_files):
    cert, key = cert_files
    p = make_proxy(tls_cert=str(cert), tls_key=str(key), require_tls=True)
    with pytest.raises(asyncpg.PostgresError, match="connection without TLS refused") as info:
        await asyncpg.connect(p.url(), ssl=False)
    assert info.value.sqlstate == "28000"
    with psycopg.connect(p.url(sslmode="require")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


async def test_upstream_sslmode_allow_retries_with_tls(make_proxy, cert_files):
    """libpq's allow: plain first, TLS when the server refuses plain text."""
    cert, key = cert_files
    tls_only = make_proxy(tls_cert=str(cert), tls_key=str(key), require_tls=True)
    assert await _connected_over(tls_only, _upstream_url(tls_only, "127.0.0.1", sslmode="allow")) == [True]
    with pytest.raises(UpstreamError, match="connection without TLS refused"):
        await _upstream(_upstream_url(tls_only, "127.0.0.1", sslmode="disable"))

"""Connecting to the real PostgreSQL server with credentials only the proxy holds.

`UpstreamTarget.parse(url)` reads a libpq-style URL (`postgresql://USER:PASS@HOST:PORT/DB?
sslmode=...&host=/socket/dir`), and `connect()` opens a connection, negotiates TLS with libpq's
`sslmode` semantics, sends the start-up packet and authenticates (trust, password, MD5,
SCRAM-SHA-256). It returns once the server has sent ReadyForQuery, with the ParameterStatus and
BackendKeyData the client is to see.

Errors never carry the password: `UpstreamError` messages name the host and port only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from scramp import ScramClient, ScramException

from dbproxy.net.endpoint import ConnectionClosed, Endpoint, MessageReader
from dbproxy.protocol.errors import SQLState
from dbproxy.protocol.framing import BACKEND_TYPES, FrameScanner
from dbproxy.protocol.messages import (
    Authentication,
    BackendKeyData,
    ErrorResponse,
    Message,
    NegotiateProtocolVersion,
    PasswordMessage,
    decode_backend,
)
from dbproxy.protocol.startup import CancelRequest, SSLRequest, StartupMessage

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class UpstreamError(Exception):
    """Connecting or authenticating upstream failed. `sqlstate` and `message` are safe to show."""

    def __init__(self, sqlstate: str, message: str, *, fields: dict[str, str] | None = None,
                 server_sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.fields = fields
        self.server_sqlstate = server_sqlstate  # what the upstream itself said, when it said something

    def to_error_response(self) -> ErrorResponse:
        if self.fields is not None:
            return ErrorResponse(dict(self.fields))
        return ErrorResponse.make(self.sqlstate, self.message, severity="FATAL")


@dataclass(frozen=True)
class UpstreamTarget:
    host: str
    port: int
    user: str
    password: str | None = field(repr=False)
    database: str
    sslmode: str = "prefer"
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None

    @classmethod
    def parse(cls, url: str) -> UpstreamTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("upstream must be a postgresql:// URL")
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        host = q.get("host") or (unquote(parts.hostname) if parts.hostname else "") or "/tmp"
        port = int(q.get("port") or parts.port or 5432)
        user = unquote(parts.username) if parts.username else (q.get("user") or os.environ.get("USER", "postgres"))
        password = unquote(parts.password) if parts.password is not None else q.get("password")
        database = unquote(parts.path.lstrip("/")) or q.get("dbname") or user
        sslmode = q.get("sslmode", "prefer")
        if sslmode not in SSLMODES:
            raise ValueError(f"unknown sslmode {sslmode!r}; expected one of {', '.join(SSLMODES)}")
        return cls(host, port, user, password, database, sslmode,
                   q.get("sslrootcert"), q.get("sslcert"), q.get("sslkey"))

    def url(self) -> str:
        """This target as a libpq URL (with the password), for libraries such as asyncpg."""
        q = {"sslmode": self.sslmode, "sslrootcert": self.sslrootcert, "sslcert": self.sslcert,
             "sslkey": self.sslkey}
        auth = quote(self.user, safe="") + (":" + quote(self.password, safe="") if self.password else "")
        if self.is_unix:
            q = {"host": self.host, "port": str(self.port)}
            netloc = auth + "@"
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
            netloc = f"{auth}@{host}:{self.port}"
        query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in q.items() if v)
        return f"postgresql://{netloc}/{quote(self.database, safe='')}" + (f"?{query}" if query else "")

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/")

    @property
    def display(self) -> str:
        """Where the upstream is, safe to log and to show to agents (no user, no password)."""
        if self.is_unix:
            return f"socket {self.host}/.s.PGSQL.{self.port}"
        return f"{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.sslmode == "disable" or self.is_unix:
            return None
        verify = self.sslmode in ("verify-ca", "verify-full")
        root = self.sslrootcert
        if root is None and self.sslmode == "require":
            default_root = Path.home() / ".postgresql" / "root.crt"
            if default_root.exists():  # libpq: require with a root cert behaves as verify-ca
                root, verify = str(default_root), True
        if verify:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            if root and root != "system":
                ctx.load_verify_locations(cafile=root)
            elif root is None:
                default_root = Path.home() / ".postgresql" / "root.crt"
                if not default_root.exists():
                    raise UpstreamError(
                        SQLState.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                        f"sslmode={self.sslmode} needs a root certificate (sslrootcert)",
                    )
                ctx.load_verify_locations(cafile=str(default_root))
            ctx.check_hostname = self.sslmode == "verify-full"
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.sslcert:
            ctx.load_cert_chain(self.sslcert, self.sslkey)
        return ctx


@dataclass
class UpstreamConnection:
    endpoint: Endpoint
    reader: MessageReader
    parameters: list[bytes]  # raw ParameterStatus frames, in order
    backend_pid: int
    backend_secret: bytes
    ready_status: str


async def open_socket(target: UpstreamTarget, name: str = "upstream") -> Endpoint:
    loop = asyncio.get_running_loop()
    endpoint = Endpoint(name)
    try:
        if target.is_unix:
            path = os.path.join(target.host, f".s.PGSQL.{target.port}")
            await loop.create_unix_connection(lambda: endpoint, path)
        else:
            _, _ = await loop.create_connection(lambda: endpoint, target.host, target.port)
    except OSError as e:
        raise UpstreamError(
            SQLState.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            f"could not connect to upstream server at {target.display}: {e.strerror or e}",
        ) from None
    return endpoint


async def _negotiate_tls(endpoint: Endpoint, target: UpstreamTarget, *, allow_retry: bool = False) -> None:
    """Send SSLRequest unless the mode says not to, and upgrade as libpq would. `allow` first
    tries without TLS; `allow_retry` is its second attempt, with TLS."""
    ctx = target.ssl_context()
    if ctx is None or (target.sslmode == "allow" and not allow_retry):
        return
    endpoint.write(SSLRequest().encode())
    answer = await endpoint.read()
    if answer[:1] == b"S":
        if len(answer) > 1:  # bytes after 'S' before the handshake: CVE-2021-23222
            raise UpstreamError(SQLState.PROTOCOL_VIOLATION,
                                f"upstream server at {target.display} sent unencrypted data after SSL response")
        await endpoint.start_tls(ctx, server_side=False,
                                 server_hostname=None if target.sslmode != "verify-full" else target.host)
    elif answer[:1] == b"N":
        if target.sslmode in ("require", "verify-ca", "verify-full"):
            raise UpstreamError(SQLState.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                                f"upstream server at {target.display} does not support SSL, "
                                f"but sslmode={target.sslmode} requires it")
        if len(answer) > 1:
            endpoint.unread(answer[1:])
    else:
        raise UpstreamError(SQLState.PROTOCOL_VIOLATION,
                            f"upstream server at {target.display} answered the SSL request with {answer[:1]!r}")


async def connect(target: UpstreamTarget, params: dict[str, str], *, within: float) -> UpstreamConnection:
    """Open, authenticate and start a session upstream within `within` seconds; raise
    UpstreamError on any failure."""
    try:
        async with asyncio.timeout(within):
            try:
                return await _connect(target, params)
            except UpstreamError as e:
                # libpq's sslmode=allow: a server that refuses the plain connection gets a TLS one.
                if target.sslmode != "allow" or e.server_sqlstate != SQLState.INVALID_AUTHORIZATION_SPECIFICATION:
                    raise
                return await _connect(target, params, tls_retry=True)
    except TimeoutError:
        raise UpstreamError(SQLState.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                            f"timed out after {within:g}s connecting to upstream server at {target.display}") from None
    except ssl.SSLCertVerificationError as e:
        raise UpstreamError(SQLState.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                            f"TLS with upstream server at {target.display} failed: certificate verify failed: "
                            f"{e.verify_message}") from None
    except ssl.SSLError as e:
        raise UpstreamError(SQLState.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                            f"TLS with upstream server at {target.display} failed: {e.reason or e}") from None
    except ConnectionClosed:
        raise UpstreamError(SQLState.CONNECTION_FAILURE,
                            f"upstream server at {target.display} closed the connection during start-up") from None


async def _connect(target: UpstreamTarget, params: dict[str, str], *, tls_retry: bool = False) -> UpstreamConnection:
    endpoint = await open_socket(target)
    try:
        await _negotiate_tls(endpoint, target, allow_retry=tls_retry)
        startup = {"user": target.user, "database": target.database, **params}
        endpoint.write(StartupMessage(params=startup).encode())
        reader = MessageReader(endpoint, FrameScanner(None, valid=BACKEND_TYPES, max_decoded=1 << 20))
        await _authenticate(reader, target)
        parameters: list[bytes] = []
        pid, secret = 0, b""
        while True:
            f = await reader.next()
            t = f.type_char
            if t == "S":
                parameters.append(f.raw)
            elif t == "K":
                key = decode_backend(f)
                assert isinstance(key, BackendKeyData)
                pid, secret = key.pid, key.secret
            elif t == "Z":
                return UpstreamConnection(endpoint, reader, parameters, pid, secret, chr(f.raw[5]))
            elif t == "E":
                raise _server_error(decode_backend(f), target)
            elif t in "NvA":
                continue  # notices during start-up are not relayed
            else:
                raise UpstreamError(SQLState.PROTOCOL_VIOLATION,
                                    f"unexpected message {t!r} from upstream at {target.display} during start-up")
    except BaseException:
        endpoint.abort()
        raise


async def _authenticate(reader: MessageReader, target: UpstreamTarget) -> None:
    endpoint = reader.endpoint
    scram: ScramClient | None = None
    while True:
        f = await reader.next()
        msg: Message = decode_backend(f)
        if isinstance(msg, ErrorResponse):
            raise _server_error(msg, target)
        if isinstance(msg, NegotiateProtocolVersion):
            continue
        if not isinstance(msg, Authentication):
            raise UpstreamError(SQLState.PROTOCOL_VIOLATION,
                                f"unexpected message {f.type_char!r} from upstream at {target.display} "
                                "during authentication")
        if msg.code == Authentication.OK:
            return
        if msg.code != Authentication.SASL_FINAL and target.password is None:
            raise UpstreamError(SQLState.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                                f"upstream server at {target.display} asks for a password, "
                                "but the upstream URL has none")
        if msg.code == Authentication.CLEARTEXT:
            assert target.password is not None
            endpoint.write(PasswordMessage.make_password(target.password).encode())
        elif msg.code == Authentication.MD5:
            assert target.password is not None
            inner = hashlib.md5((target.password + target.user).encode()).hexdigest()
            outer = hashlib.md5(inner.encode() + msg.payload).hexdigest()
            endpoint.write(PasswordMessage.make_password("md5" + outer).encode())
        elif msg.code == Authentication.SASL:
            if "SCRAM-SHA-256" not in msg.mechanisms():
                raise UpstreamError(SQLState.FEATURE_NOT_SUPPORTED,
                                    f"upstream server at {target.display} offers only {msg.mechanisms()}")
            assert target.password is not None
            scram = ScramClient(["SCRAM-SHA-256"], target.user, target.password)
            first = scram.get_client_first().encode()
            endpoint.write(PasswordMessage.make_sasl_initial("SCRAM-SHA-256", first).encode())
        elif msg.code == Authentication.SASL_CONTINUE and scram is not None:
            try:
                scram.set_server_first(msg.payload.decode())
                endpoint.write(PasswordMessage(scram.get_client_final().encode()).encode())
            except ScramException as e:
                raise UpstreamError(SQLState.PROTOCOL_VIOLATION, f"SCRAM with upstream failed: {e}") from None
        elif msg.code == Authentication.SASL_FINAL and scram is not None:
            try:
                scram.set_server_final(msg.payload.decode())
            except ScramException:
                raise UpstreamError(SQLState.CONNECTION_FAILURE,
                                    f"upstream server at {target.display} failed SCRAM server verification") from None
        else:
            raise UpstreamError(SQLState.FEATURE_NOT_SUPPORTED,
                                f"upstream server at {target.display} asks for unsupported authentication "
                                f"(code {msg.code})")


def _server_error(msg: Message, target: UpstreamTarget) -> UpstreamError:
    assert isinstance(msg, ErrorResponse)
    if msg.sqlstate in (SQLState.INVALID_PASSWORD, SQLState.INVALID_AUTHORIZATION_SPECIFICATION):
        # The agent cannot fix the proxy's credentials; do not make it look like the agent's fault.
        return UpstreamError(SQLState.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                             f"upstream server at {target.display} rejected the proxy's connection "
                             f"({msg.message}); the proxy operator must fix the upstream URL",
                             server_sqlstate=msg.sqlstate)
    return UpstreamError(msg.sqlstate, msg.message, fields=msg.fields, server_sqlstate=msg.sqlstate)


async def send_cancel(target: UpstreamTarget, pid: int, secret: bytes) -> None:
    """Deliver a CancelRequest for an upstream backend (best effort, like libpq)."""
    endpoint = await open_socket(target, "upstream-cancel")
    try:
        await _negotiate_tls(endpoint, target)
        endpoint.write(CancelRequest(pid, secret).encode())
        try:
            await asyncio.wait_for(endpoint.read(), 5)
        except (ConnectionClosed, TimeoutError):
            pass
    finally:
        endpoint.close()

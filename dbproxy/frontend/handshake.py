"""The client side of connection start-up: TLS negotiation, protocol version, agent login.

`client_handshake()` reads the first packets of a new client connection and either
- returns a `ClientLogin` (an authenticated agent, the database it asked for, the parameters to
  forward upstream), or
- returns None after serving a CancelRequest, or
- raises `ClientRejected` carrying the ErrorResponse to send before closing.

Authentication is the proxy's own: SCRAM-SHA-256 (SCRAM-SHA-256-PLUS with channel binding when
the client is on TLS; see `dbproxy.auth.scram`) or, if configured, cleartext `password` checked
against the verifier. The upstream is not contacted until the agent has proved who it is.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dbproxy.auth.agents import Agent, AgentRegistry, Verifier
from dbproxy.auth.scram import ScramFailed, ScramServerExchange
from dbproxy.net.endpoint import Endpoint, MessageReader
from dbproxy.protocol.errors import ProtocolViolation, SQLState
from dbproxy.protocol.framing import FrameScanner
from dbproxy.protocol.messages import (
    Authentication,
    ErrorResponse,
    NegotiateProtocolVersion,
    PasswordMessage,
)
from dbproxy.protocol.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    read_startup_packet,
)

#: Start-up parameters never forwarded upstream: identity is the proxy's, and physical or logical
#: replication connections would bypass everything the proxy stands for.
_NOT_FORWARDED = frozenset({"user", "database", "replication"})


class ClientRejected(Exception):
    def __init__(self, error: ErrorResponse) -> None:
        super().__init__(error.message)
        self.error = error

    @classmethod
    def fatal(cls, sqlstate: str, message: str, **kw: str) -> ClientRejected:
        return cls(ErrorResponse.make(sqlstate, message, severity="FATAL", **kw))


@dataclass
class ClientLogin:
    agent: Agent
    database: str
    forward_params: dict[str, str]
    reader: MessageReader
    tls: bool


@dataclass
class HandshakeConfig:
    registry: AgentRegistry
    default_database: str
    auth_method: str = "scram-sha-256"
    tls_context: ssl.SSLContext | None = None
    tls_cert_binding: bytes | None = None
    require_tls: bool = False
    max_message_bytes: int = 1 << 20
    on_cancel: Callable[[CancelRequest], Awaitable[None]] | None = None


async def client_handshake(ep: Endpoint, cfg: HandshakeConfig) -> ClientLogin | None:
    tls = False
    buf = b""
    while True:
        packet = None
        while packet is None:
            buf += await ep.read()
            packet = read_startup_packet(buf)
        pkt, used = packet
        buf = buf[used:]
        if isinstance(pkt, SSLRequest):
            if tls:
                raise ClientRejected.fatal(SQLState.PROTOCOL_VIOLATION,
                                           "SSL request on an already encrypted connection")
            if buf:  # data pipelined after SSLRequest would bypass TLS (CVE-2021-23214)
                raise ClientRejected.fatal(SQLState.PROTOCOL_VIOLATION, "received unencrypted data after SSL request")
            if cfg.tls_context is None:
                ep.write(b"N")
                continue
            ep.write(b"S")
            await ep.start_tls(cfg.tls_context, server_side=True)
            tls = True
            continue
        if isinstance(pkt, GSSENCRequest):
            ep.write(b"N")  # GSSAPI encryption is not offered; the client falls back
            continue
        if isinstance(pkt, CancelRequest):
            if cfg.on_cancel is not None:
                await cfg.on_cancel(pkt)
            return None
        assert isinstance(pkt, StartupMessage)
        if buf:
            ep.unread(buf)
        return await _login(ep, pkt, cfg, tls)


async def _login(ep: Endpoint, startup: StartupMessage, cfg: HandshakeConfig, tls: bool) -> ClientLogin:
    if startup.major != 3:
        raise ClientRejected.fatal(
            SQLState.FEATURE_NOT_SUPPORTED,
            f"unsupported frontend protocol {startup.major}.{startup.minor}: server supports 3.0",
        )
    if cfg.require_tls and not tls:
        raise ClientRejected.fatal(SQLState.INVALID_AUTHORIZATION_SPECIFICATION,
                                   "connection without TLS refused: this proxy requires TLS",
                                   hint="Connect with sslmode=require (or stricter).")
    params = startup.params
    unknown_options = tuple(k for k in params if k.startswith("_pq_."))
    if startup.minor > 0 or unknown_options:
        # We speak 3.0; say so, and list protocol options we do not understand (3.2 clients
        # then fall back, as they would with an older server).
        ep.write(NegotiateProtocolVersion(0, unknown_options).encode())
    user = params.get("user", "")
    if not user:
        raise ClientRejected.fatal(SQLState.INVALID_AUTHORIZATION_SPECIFICATION,
                                   "no PostgreSQL user name specified in startup packet")
    if params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
        raise ClientRejected.fatal(SQLState.FEATURE_NOT_SUPPORTED,
                                   "replication connections are not supported through dbproxy")
    reader = MessageReader(ep, FrameScanner(None, valid=b"p", max_decoded=cfg.max_message_bytes))
    agent = cfg.registry.get(user)
    verifier = agent.verifier if agent else cfg.registry.mock_verifier(user)
    if cfg.auth_method == "password":
        ok = await _password_auth(ep, reader, verifier)
    else:
        ok = await _scram_auth(ep, reader, verifier, tls, cfg.tls_cert_binding)
    if not ok or agent is None:
        raise ClientRejected.fatal(SQLState.INVALID_PASSWORD, f'password authentication failed for user "{user}"')
    database = params.get("database") or cfg.default_database
    if not agent.may_open(database, cfg.default_database):
        raise ClientRejected.fatal(
            "42501", f'permission denied for database "{database}"',
            detail=f'Agent "{agent.name}" is not allowed to open this database through dbproxy.',
        )
    forward = {k: v for k, v in params.items() if k not in _NOT_FORWARDED and not k.startswith("_pq_.")}
    return ClientLogin(agent, database, forward, reader, tls)


async def _next_password(reader: MessageReader) -> PasswordMessage:
    f = await reader.next()
    if f.type_char != "p":
        raise ProtocolViolation(f"expected a password response, got message type {f.type_char!r}")
    return PasswordMessage(f.body)


async def _password_auth(ep: Endpoint, reader: MessageReader, verifier: Verifier) -> bool:
    ep.write(Authentication(Authentication.CLEARTEXT).encode())
    msg = await _next_password(reader)
    try:
        return verifier.check_password(msg.password())
    except ProtocolViolation:
        return False


async def _scram_auth(ep: Endpoint, reader: MessageReader, verifier: Verifier, tls: bool,
                      cert_binding: bytes | None) -> bool:
    mechanisms = ["SCRAM-SHA-256"]
    if tls and cert_binding is not None:
        mechanisms.insert(0, "SCRAM-SHA-256-PLUS")
    ep.write(Authentication.sasl(mechanisms).encode())
    mech, first = (await _next_password(reader)).sasl_initial()
    if mech not in mechanisms or first is None:
        raise ClientRejected.fatal(SQLState.PROTOCOL_VIOLATION,
                                   f"client selected an invalid SASL authentication mechanism {mech!r}")
    exchange = ScramServerExchange(verifier, binding=cert_binding if mech.endswith("-PLUS") else None,
                                   offered_plus=len(mechanisms) > 1)
    try:
        server_first = exchange.first(first.decode("utf-8"))
        ep.write(Authentication(Authentication.SASL_CONTINUE, server_first.encode()).encode())
        server_final = exchange.final((await _next_password(reader)).data.decode("utf-8"))
    except (ScramFailed, UnicodeDecodeError):
        return False
    ep.write(Authentication(Authentication.SASL_FINAL, server_final.encode()).encode())
    return True

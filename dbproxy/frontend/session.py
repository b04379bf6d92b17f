"""One client session: handshake, one upstream connection, then the relay until either side ends.

The relay is synchronous callbacks on both endpoints (see `dbproxy.net.endpoint`): bytes from the client
go through a `FrameScanner` that decodes frontend control messages (never CopyData), bytes from
the upstream through one that decodes only what the proxy tracks (ReadyForQuery); everything else
is forwarded as untouched byte runs, one write per arrival.

What the session tracks, and why:
- `outstanding`: requests (Query, Sync, FunctionCall) sent upstream whose ReadyForQuery has not
  come back, and `unanswered`: whether anything was sent since the last ReadyForQuery (an
  Execute followed only by Flush gets no ReadyForQuery). If the client vanishes while either
  says the backend may be busy, the upstream query is cancelled before the upstream connection
  is closed (closing alone leaves a long query running until it next talks to the socket).
  Closing then rolls back any open transaction.
- `status`: the last ReadyForQuery status, so it stays truthful and later policy can use it.

What it needs of the listening server (settings, the review queue, upstream targets, the table of
live sessions) it gets through `ProxyHost`, a Protocol defined here that
`dbproxy.frontend.server.ProxyServer` implements: the server imports sessions, never the reverse.

Agents in `hold` and `read-only` mode do not use this relay: after the greeting their session is
run by `dbproxy.hold.session.HoldSession`, and the upstream connection may outlive the session while a
transaction on it waits for review (`keep_upstream`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import struct
import time
from collections.abc import Callable
from typing import Protocol

from dbproxy.backend.upstream import UpstreamConnection, UpstreamError, UpstreamTarget, connect, send_cancel
from dbproxy.config import log
from dbproxy.config.settings import Settings
from dbproxy.frontend.handshake import ClientLogin, ClientRejected, HandshakeConfig, client_handshake
from dbproxy.hold.connection import HeldConnection
from dbproxy.hold.gate import PolicyGate
from dbproxy.hold.pending import PendingRegistry
from dbproxy.hold.protocol import identity_refusal, notice, refusal_sql
from dbproxy.hold.session import HoldSession
from dbproxy.journal.passlog import CLIENT_TYPES, SERVER_TYPES, PassthroughLog
from dbproxy.journal.records import StatementRecord
from dbproxy.net.endpoint import ConnectionClosed, Endpoint
from dbproxy.protocol.errors import ProtocolViolation, SQLState
from dbproxy.protocol.framing import BACKEND_TYPES, FRONTEND_TYPES, PG_MAX_MESSAGE, Frame, FrameScanner, scan_whole
from dbproxy.protocol.messages import (
    Authentication,
    BackendKeyData,
    ErrorResponse,
    Parse,
    Query,
    decode_frontend,
)
from inverse.capture_schema import CAPTURE_SETTING
from inverse.ddl_targets import Limits
from inverse.lexer import split_cached

_ids = itertools.count(1)
_I32 = struct.Struct("!i")

#: Frontend types decoded in the relay; CopyData ('d') streams through undecoded.
_CLIENT_DECODE = frozenset(FRONTEND_TYPES - {ord("d")})
#: Frontend messages that ask the server for a ReadyForQuery.
_REQUESTS = frozenset(b"QSF")
_READY = ord("Z")
_TERMINATE = ord("X")
#: Fast-path sets (see `scan_whole`): Terminate and anything unusual take the general path.
_CLIENT_FAST = frozenset(FRONTEND_TYPES - {_TERMINATE})
_READY_SET = frozenset({_READY})
#: Statements that change roles or privileges all contain one of these words (`inverse.identity`):
#: only client bytes with one of them are decoded and screened on the pass-through path.
_IDENTITY_WORDS = re.compile(
    rb"(?i)\b(?:role|user|group|owner|authorization|definer|owned|grant|revoke|privileges)\b")
_SCREENED = frozenset(b"QP")


class ProxyHost(Protocol):
    """What a session needs of the server that accepted it."""

    settings: Settings
    handshake_config: HandshakeConfig
    pending: PendingRegistry | None  # None: no journal (pass-through agents only)
    agent_role: str  # the role agents act as upstream

    def target_for(self, database: str) -> UpstreamTarget: ...
    def agent_target(self, agent: str, database: str) -> UpstreamTarget: ...
    async def repair_agent_login(self, agent: str) -> None: ...
    def admit(self) -> bool: ...
    def register(self, session: Session) -> None: ...
    def unregister(self, session: Session) -> None: ...


class Session:
    def __init__(self, server: ProxyHost, client: Endpoint, peer: str) -> None:
        self.id = next(_ids)
        self.server = server
        self.client = client
        self.peer = peer
        self.upstream: Endpoint | None = None
        self.login: ClientLogin | None = None
        self.backend_pid = 0
        self.upstream_secret = b""
        self.cancel_secret = secrets.token_bytes(4)
        self.status = "I"
        self.outstanding = 0
        self.unanswered = False
        self.started = time.monotonic()
        self._client_scanner: FrameScanner | None = None
        self._server_scanner: FrameScanner | None = None
        self._done = asyncio.get_running_loop().create_future()
        self._end_reason = "client closed"
        self._log_statements = server.settings.log_statements
        self._max_message = server.settings.max_message_bytes
        self.mode = "passthrough"
        self._passlog: PassthroughLog | None = None
        self.keep_upstream = False
        self._hold: HoldSession | None = None
        self.capture = False  # undo or hold mode with `dbproxy install` done in the database

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._start()
        except ClientRejected as e:
            log.event("session.rejected", session=self.id, peer=self.peer, sqlstate=e.error.sqlstate,
                      reason=e.error.message, level=logging.WARNING)
            self._send_error(e.error)
            self.client.close()
            return
        except UpstreamError as e:
            log.event("session.upstream_failed", session=self.id, peer=self.peer, sqlstate=e.sqlstate,
                      reason=e.message, level=logging.WARNING)
            self._send_error(e.to_error_response())
            self.client.close()
            return
        except ProtocolViolation as e:
            log.event("session.protocol_violation", session=self.id, peer=self.peer, reason=str(e),
                      level=logging.WARNING)
            self._send_error(ErrorResponse.make(SQLState.PROTOCOL_VIOLATION, str(e), severity="FATAL"))
            self.client.close()
            return
        except (ConnectionClosed, OSError, TimeoutError) as e:  # OSError covers ssl.SSLError
            reason = "authentication timed out" if isinstance(e, TimeoutError) else f"client left during start-up: {e}"
            log.event("session.abandoned", session=self.id, peer=self.peer, reason=reason, level=logging.DEBUG)
            self.client.close()
            return
        if self.upstream is None:
            return  # a CancelRequest connection
        try:
            await self._done
        finally:
            await self._cleanup()

    async def _start(self) -> None:
        login = await asyncio.wait_for(
            client_handshake(self.client, self.server.handshake_config), self.server.settings.auth_timeout
        )
        if login is None:
            self.client.close()
            return
        self.login = login
        if not self.server.admit():
            raise ClientRejected.fatal(SQLState.TOO_MANY_CONNECTIONS, "sorry, too many clients already")
        params = dict(login.forward_params)
        params["database"] = login.database
        self.mode = login.agent.mode or self.server.settings.mode
        if self.mode != "passthrough" and self.server.pending is None:
            raise ClientRejected.fatal(SQLState.CANNOT_CONNECT_NOW,
                                       f"the review journal is unavailable, so {self.mode} mode cannot run")
        self.capture = False
        if self.mode in ("undo", "hold"):
            assert self.server.pending is not None
            # In the startup packet, so RESET ALL and DISCARD ALL return to it. Hold mode captures
            # too: what a rule allows commits at once, with its inverse.
            params[CAPTURE_SETTING] = "on"
            self.capture = await self.server.pending.capture_ready(login.database)
        # The agent's own login role, acting as the agents' common role (in the startup packet, so
        # RESET ROLE returns to it): see dbproxy.backend.agent_roles.
        params["role"] = self.server.agent_role
        target = self.server.agent_target(login.agent.name, login.database)
        try:
            up = await connect(target, params, within=self.server.settings.connect_timeout)
        except UpstreamError as e:
            if e.server_sqlstate != SQLState.INVALID_PASSWORD:
                raise
            await self.server.repair_agent_login(login.agent.name)  # someone changed its password
            up = await connect(target, params, within=self.server.settings.connect_timeout)
        self.upstream = up.endpoint
        self.backend_pid, self.upstream_secret = up.backend_pid, up.backend_secret
        self.server.register(self)
        notices = await self._restart_notices(login) if self.mode != "passthrough" else []
        self._greet(up)
        log.event("session.start", session=self.id, peer=self.peer, agent=login.agent.name,
                  database=login.database, tls=login.tls, backend_pid=self.backend_pid, mode=self.mode,
                  application_name=login.forward_params.get("application_name", ""))
        if self.mode == "passthrough":
            if self.server.pending is not None and self.server.settings.journal_passthrough:
                self._passlog = PassthroughLog(self._journal_passthrough)
            self._start_relay(up, login)
        else:
            self._start_hold(up, login, notices)

    async def _restart_notices(self, login: ClientLogin) -> list[bytes]:
        registry = self.server.pending
        if registry is None:
            return []
        return [notice(f"dbproxy: held transaction #{r.id} was rolled back because the proxy restarted",
                       detail=f"It held {r.statements} statements from {r.started_at:%Y-%m-%d %H:%M:%S %Z}; "
                       "nothing of it was committed.")
                for r in await registry.restart_notices(login.agent.name)]

    def _greet(self, up: UpstreamConnection) -> None:
        """AuthenticationOk, the upstream's ParameterStatus, our own cancel key, ReadyForQuery."""
        out = [Authentication(Authentication.OK).encode(), *up.parameters,
               BackendKeyData(self.backend_pid, self.cancel_secret).encode(),
               b"Z\x00\x00\x00\x05" + up.ready_status.encode()]
        self.status = up.ready_status
        self.client.write(b"".join(out))

    def _start_hold(self, up: UpstreamConnection, login: ClientLogin, notices: list[bytes]) -> None:
        assert self.upstream is not None and self.server.pending is not None
        self.client.peer, self.upstream.peer = self.upstream, self.client
        held = HeldConnection(self.server.pending, self.upstream, up.reader.scanner, agent=login.agent.name,
                              session_id=self.id, database=login.database, mode=self.mode,
                              backend_pid=self.backend_pid, upstream_secret=self.upstream_secret,
                              login_role=self.server.agent_target(login.agent.name, login.database).user,
                              run_as=self.server.agent_role)
        held.state.capture = self.capture
        held.state.ddl_capture = self.capture
        held.state.ddl_limits = Limits(*self.server.settings.ddl_limits)
        leftover = up.reader.leftover()
        if leftover:
            self.client.write(b"".join(f.raw for f in leftover))
        held.attach()
        policy = self.server.policy
        gate = None
        if policy is not None:
            registry = self.server.pending
            assert registry is not None
            agent = login.agent.name
            policy.session_started(self.id, agent, login.database)
            gate = PolicyGate(policy, agent=agent, session=self.id, database=login.database, mode=self.mode,
                              pending=lambda: registry.held_by(agent), write=self.client.write)
        self._hold = HoldSession(self, held, max_message_bytes=self.server.settings.max_message_bytes,
                                 log_statements=self._log_statements, gate=gate)
        # Told with the first answer rather than during login, when most drivers have no notice
        # handler installed yet.
        self._hold.first_notices = b"".join(notices)
        pending = login.reader.leftover()
        if pending:
            self._hold.inbox.extend(pending)
        asyncio.get_running_loop().create_task(self._run_hold(self._hold))

    async def _run_hold(self, hold: HoldSession) -> None:
        try:
            reason = await hold.run()
            self.keep_upstream = await hold.detach()
        except Exception:
            log.event("session.hold_crashed", session=self.id, level=logging.ERROR, exc_info=True)
            reason = "internal error"
        self._finish(reason, hold_done=True)

    def _start_relay(self, up: UpstreamConnection, login: ClientLogin) -> None:
        assert self.upstream is not None
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self._client_scanner = FrameScanner(_CLIENT_DECODE, valid=FRONTEND_TYPES,
                                            max_decoded=self.server.settings.max_message_bytes)
        self._server_scanner = up.reader.scanner
        self._server_scanner.set_decode(SERVER_TYPES if self._passlog is not None else b"Z")
        self._server_scanner.set_valid(None)
        # Frames already read past ReadyForQuery on either side go first, in order.
        for f in up.reader.leftover():
            self._from_server_items([f])
        pending = login.reader.leftover()
        if pending:
            self._from_client_items(pending)
        self.upstream.relay_to(self._from_server, self._lost)
        self.client.relay_to(self._from_client, self._lost)

    # -- relay: client -> upstream --------------------------------------------------------

    def _from_client(self, data: bytes) -> None:
        scanner = self._client_scanner
        assert scanner is not None and self.upstream is not None
        if scanner.at_boundary and not self._log_statements and not _IDENTITY_WORDS.search(data):
            whole = scan_whole(data, _CLIENT_FAST, _REQUESTS, self._max_message)
            if whole is not None:
                if self._passlog is not None:
                    _observe(data, CLIENT_TYPES, self._passlog.client_raw)
                self.outstanding += whole[0]
                self.unanswered = True
                self.upstream.write(data)
                return
        try:
            items = scanner.feed(data)
        except ProtocolViolation as e:
            self.protocol_violation(str(e))
            return
        self._from_client_items(items)

    def _from_client_items(self, items: list[bytes | Frame]) -> None:
        assert self.upstream is not None
        out: list[bytes] = []
        for item in items:
            if type(item) is bytes:
                out.append(item)
                continue
            assert isinstance(item, Frame)
            t = item.type
            if t in _REQUESTS:
                self.outstanding += 1
            elif t == _TERMINATE:
                # Forward what came before; the upstream gets its own Terminate at cleanup.
                if out:
                    self.upstream.write(b"".join(out))
                self._finish("client terminated")
                return
            if self._log_statements and t in b"QP":
                self._log_statement(item)
            if self._passlog is not None and t in CLIENT_TYPES:
                self._passlog.client(item)
            out.append(self._screened(item) if t in _SCREENED and _IDENTITY_WORDS.search(item.raw) else item.raw)
        if out:
            self.unanswered = True
            self.upstream.write(out[0] if len(out) == 1 else b"".join(out))

    def _screened(self, f: Frame) -> bytes:
        """A Query or Parse that may change roles or privileges (`_IDENTITY_WORDS` matched): such
        statements are for people in every mode, also for trusted pass-through agents. The
        upstream gets a statement that fails with the proxy's 42501 instead (so the server's state
        follows PostgreSQL's error rules), and none of a multi-statement string runs."""
        try:
            msg = decode_frontend(f)
        except ProtocolViolation:
            return f.raw  # the upstream answers a malformed message itself
        sql = msg.sql if isinstance(msg, Query | Parse) else ""
        for stmt in split_cached(sql):
            error = identity_refusal(stmt, self.server.agent_role)
            if error is None:
                continue
            log.event("session.refused", session=self.id, agent=self.login.agent.name if self.login else "",
                      reason=error.message)
            refused = refusal_sql(error)
            return Query(refused).encode() if isinstance(msg, Query) else Parse(msg.name, refused).encode()
        return f.raw

    def _journal_passthrough(self, records: list[StatementRecord], outcome: str) -> None:
        assert self.server.pending is not None and self.login is not None
        self.server.pending.journal_passthrough(agent=self.login.agent.name, session=self.id,
                                                database=self.login.database, backend_pid=self.backend_pid,
                                                records=records, outcome=outcome)

    def _log_statement(self, f: Frame) -> None:
        try:
            msg = decode_frontend(f)
        except ProtocolViolation:
            return
        sql = msg.sql if isinstance(msg, Query | Parse) else ""
        log.event("statement", session=self.id, agent=self.login.agent.name if self.login else "",
                  sql=log.redact_sql(sql))

    # -- relay: upstream -> client --------------------------------------------------------

    def _from_server(self, data: bytes) -> None:
        scanner = self._server_scanner
        assert scanner is not None
        if scanner.at_boundary:
            whole = scan_whole(data, BACKEND_TYPES, _READY_SET, PG_MAX_MESSAGE)
            if whole is not None:
                if self._passlog is not None:
                    _observe(data, SERVER_TYPES, self._passlog.server_raw)
                count, last = whole
                if count:
                    self._ready(data[last + 5], count)
                self.client.write(data)
                return
        try:
            items = scanner.feed(data)
        except ProtocolViolation as e:
            log.event("session.upstream_protocol_violation", session=self.id, reason=str(e), level=logging.ERROR)
            self._finish("upstream protocol violation")
            return
        self._from_server_items(items)

    def _from_server_items(self, items: list[bytes | Frame]) -> None:
        out: list[bytes] = []
        for item in items:
            if type(item) is bytes:
                out.append(item)
                continue
            assert isinstance(item, Frame)
            if self._passlog is not None:
                self._passlog.server(item)
            if item.type == _READY:
                self._ready(item.raw[5], 1)
            out.append(item.raw)
        if out:
            self.client.write(out[0] if len(out) == 1 else b"".join(out))

    def _ready(self, status: int, count: int) -> None:
        """`count` ReadyForQuery messages arrived, the last with transaction status `status`."""
        self.status = chr(status)
        self.outstanding = max(0, self.outstanding - count)
        self.unanswered = self.outstanding > 0

    # -- endings --------------------------------------------------------------------------

    def _lost(self, ep: Endpoint) -> None:
        if ep is self.client:
            self._finish("client disconnected")
        else:
            if self._server_scanner is None or self._server_scanner.at_boundary:
                self._send_error(ErrorResponse.make(
                    SQLState.CONNECTION_FAILURE, "the upstream server closed the connection unexpectedly",
                    severity="FATAL"))
            self._finish("upstream disconnected")

    def protocol_violation(self, reason: str) -> None:
        log.event("session.protocol_violation", session=self.id, reason=reason, level=logging.WARNING)
        self._send_error(ErrorResponse.make(SQLState.PROTOCOL_VIOLATION, reason, severity="FATAL"))
        self._finish("protocol violation")

    def terminate(self, sqlstate: str, message: str) -> None:
        """End the session from the proxy side (shutdown, admin), telling the client why."""
        self._send_error(ErrorResponse.make(sqlstate, message, severity="FATAL"))
        self._finish(message)

    def _send_error(self, error: ErrorResponse) -> None:
        """Send an ErrorResponse only where it cannot land inside a half-forwarded message."""
        if self._server_scanner is None or self._server_scanner.at_boundary:
            self.client.write(error.encode())

    def _finish(self, reason: str, *, hold_done: bool = False) -> None:
        if self._hold is not None and not hold_done:
            # Hold mode ends through its own loop (which decides whether the upstream stays open
            # for review); closing the client makes that loop finish.
            self._end_reason = reason
            self.client.close()
            self._hold.client_lost()
            return
        if not self._done.done():
            self._end_reason = reason
            self._done.set_result(None)

    async def _cleanup(self) -> None:
        self.server.unregister(self)
        if self._hold is not None and self.server.policy is not None:
            await self.server.policy.session_ended(self.id)  # session grants end, a waiting request is cancelled
        if self._passlog is not None and self.status in ("T", "E") and not (self.outstanding or self.unanswered):
            self._passlog.disconnected()  # what it wrote is rolled back as the connection closes
        up = self.upstream
        if up is not None and not up.is_closing() and not self.keep_upstream and self._hold is not None:
            self._hold.held.close()
        elif up is not None and not up.is_closing() and not self.keep_upstream:
            if (self.outstanding or self.unanswered) and self.login is not None:
                # The client left mid-request: stop the query before dropping the connection.
                try:
                    await send_cancel(self.server.target_for(self.login.database), self.backend_pid,
                                      self.upstream_secret)
                except (UpstreamError, OSError):
                    pass
            up.write(b"X\x00\x00\x00\x04")
            up.close()
        self.client.close()
        log.event("session.end", session=self.id, reason=self._end_reason, status=self.status,
                  seconds=round(time.monotonic() - self.started, 3))

    async def cancel_upstream(self) -> None:
        if self.login is not None:
            await send_cancel(self.server.target_for(self.login.database), self.backend_pid, self.upstream_secret)


def _observe(data: bytes, types: frozenset[int], see: Callable[[int, bytes], None]) -> None:
    """Show the journal the messages of `types` in `data`, a run of whole frames (`scan_whole`
    said so), without building a frame object for the others."""
    unpack = _I32.unpack_from
    pos, n = 0, len(data)
    while pos < n:
        t = data[pos]
        end = pos + 1 + unpack(data, pos + 1)[0]
        if t in types:
            see(t, data[pos:end])
        pos = end

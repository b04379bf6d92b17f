"""A deliberately dumb blocking protocol client for tests that must send what no driver sends:
malformed frames, oversized messages, protocol 3.2 start-ups, GSSENCRequest, FunctionCall.

It logs in with cleartext `password` auth (the proxy under test is configured with
`agent_auth="password"`), so no SCRAM code is needed here.
"""

from __future__ import annotations

import socket
import struct

from dbproxy.protocol.framing import Frame, FrameScanner
from dbproxy.protocol.messages import Authentication, ErrorResponse, PasswordMessage, decode_backend
from dbproxy.protocol.startup import PROTOCOL_3_0, StartupMessage


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.scanner = FrameScanner(None)
        self.frames: list[Frame] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def next(self) -> Frame:
        while not self.frames:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.frames.extend(f for f in self.scanner.feed(chunk) if isinstance(f, Frame))
        return self.frames.pop(0)

    def until(self, type_char: str) -> list[Frame]:
        out = []
        while True:
            f = self.next()
            out.append(f)
            if f.type_char == type_char:
                return out
            if f.type_char == "E" and type_char != "E":
                err = decode_backend(f)
                assert isinstance(err, ErrorResponse)
                if err.fields.get("S") == "FATAL":
                    return out

    def startup(self, user: str, database: str = "postgres", version: int = PROTOCOL_3_0, **extra: str) -> None:
        self.send(StartupMessage(version, {"user": user, "database": database, **extra}).encode())

    def login(self, user: str, password: str, database: str = "postgres") -> list[Frame]:
        self.startup(user, database)
        auth = decode_backend(self.next())
        assert isinstance(auth, Authentication) and auth.code == Authentication.CLEARTEXT, auth
        self.send(PasswordMessage.make_password(password).encode())
        return self.until("Z")

    def closed(self, timeout: float = 5) -> bool:
        """True if the server closes the connection (after any pending messages)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def error_of(frames: list[Frame]) -> ErrorResponse:
    for f in frames:
        if f.type_char == "E":
            e = decode_backend(f)
            assert isinstance(e, ErrorResponse)
            return e
    raise AssertionError(f"no ErrorResponse in {frames}")


def int32(n: int) -> bytes:
    return struct.pack("!i", n)

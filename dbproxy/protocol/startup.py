"""The untyped first packet of a connection: StartupMessage and its special request codes.

`length:int32, code:int32, payload`. The code is a protocol version (3.0 = 196608) or one of the
magic request numbers. `read_startup_packet(buf)` returns the decoded packet and the bytes it used,
or `None` while the packet is incomplete.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from dbproxy.protocol.errors import ProtocolViolation

_I32 = struct.Struct("!i")
_II = struct.Struct("!ii")

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3_0 = 3 << 16

#: PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
MAX_STARTUP_PACKET = 10000


@dataclass(frozen=True)
class SSLRequest:
    def encode(self) -> bytes:
        return _II.pack(8, SSL_REQUEST_CODE)


@dataclass(frozen=True)
class GSSENCRequest:
    def encode(self) -> bytes:
        return _II.pack(8, GSSENC_REQUEST_CODE)


@dataclass(frozen=True)
class CancelRequest:
    pid: int
    secret: bytes

    def encode(self) -> bytes:
        body = _I32.pack(CANCEL_REQUEST_CODE) + _I32.pack(self.pid) + self.secret
        return _I32.pack(len(body) + 4) + body


@dataclass(frozen=True)
class StartupMessage:
    version: int = PROTOCOL_3_0
    params: dict[str, str] = field(default_factory=dict)

    @property
    def major(self) -> int:
        return self.version >> 16

    @property
    def minor(self) -> int:
        return self.version & 0xFFFF

    def encode(self) -> bytes:
        parts = [_I32.pack(self.version)]
        for k, v in self.params.items():
            parts.append(k.encode() + b"\0" + v.encode() + b"\0")
        parts.append(b"\0")
        body = b"".join(parts)
        return _I32.pack(len(body) + 4) + body


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def read_startup_packet(buf: bytes | bytearray) -> tuple[StartupPacket, int] | None:
    """Decode the first packet in `buf`, or return None if more bytes are needed."""
    if len(buf) < 4:
        return None
    length = _I32.unpack_from(buf, 0)[0]
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise ProtocolViolation(f"invalid length of startup packet: {length}")
    if len(buf) < length:
        return None
    code = _I32.unpack_from(buf, 4)[0]
    body = bytes(buf[8:length])
    if code == SSL_REQUEST_CODE:
        _expect_empty(body, "SSLRequest")
        return SSLRequest(), length
    if code == GSSENC_REQUEST_CODE:
        _expect_empty(body, "GSSENCRequest")
        return GSSENCRequest(), length
    if code == CANCEL_REQUEST_CODE:
        if not 8 <= len(body) <= 260:
            raise ProtocolViolation("invalid length of cancel request packet")
        return CancelRequest(_I32.unpack_from(body, 0)[0], body[4:]), length
    return StartupMessage(code, _parse_params(body)), length


def _expect_empty(body: bytes, what: str) -> None:
    if body:
        raise ProtocolViolation(f"invalid length of {what} packet")


def _parse_params(body: bytes) -> dict[str, str]:
    if body == b"\0":
        return {}
    if not body.endswith(b"\0\0"):
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    items = body[:-2].split(b"\0")
    if len(items) % 2:
        raise ProtocolViolation("invalid startup packet layout: parameter without a value")
    params: dict[str, str] = {}
    for i in range(0, len(items), 2):
        key = items[i].decode("utf-8", "replace")
        if not key:
            raise ProtocolViolation("invalid startup packet layout: empty parameter name")
        params[key] = items[i + 1].decode("utf-8", "replace")
    return params

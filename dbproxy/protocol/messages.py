"""Typed protocol messages, and their encoding and decoding.

Only the messages the proxy needs to understand are typed here; everything else stays raw bytes
in a `framing.Frame`. Decoding is strict: a body that does not match its type's layout raises
`ProtocolViolation` (truncated strings, trailing bytes, negative counts).

`decode_frontend(frame)` and `decode_backend(frame)` map a frame to its message class; every
class has `encode() -> bytes` producing the complete frame, so `decode(encode(m)) == m`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

from dbproxy.protocol.errors import ProtocolViolation
from dbproxy.protocol.framing import Frame, frame

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")  # type OIDs are unsigned


class _Reader:
    """Cursor over a message body; every read checks bounds."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.what = what

    def _fail(self, why: str) -> ProtocolViolation:
        return ProtocolViolation(f"malformed {self.what} message: {why}")

    def int16(self) -> int:
        if self.pos + 2 > len(self.buf):
            raise self._fail("truncated")
        v = _I16.unpack_from(self.buf, self.pos)[0]
        self.pos += 2
        return v

    def int32(self) -> int:
        if self.pos + 4 > len(self.buf):
            raise self._fail("truncated")
        v = _I32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def count(self) -> int:
        n = self.int16()
        if n < 0:
            raise self._fail("negative count")
        return n

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise self._fail("truncated")
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def bytes_(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise self._fail("truncated")
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return v

    def cstr_bytes(self) -> bytes:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise self._fail("unterminated string")
        v = self.buf[self.pos : end]
        self.pos = end + 1
        return v

    def cstr(self) -> str:
        return self.cstr_bytes().decode("utf-8", "replace")

    def rest(self) -> bytes:
        v = self.buf[self.pos :]
        self.pos = len(self.buf)
        return v

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise self._fail(f"{len(self.buf) - self.pos} unexpected trailing bytes")


def _cstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    if b"\0" in b:
        raise ValueError("protocol strings cannot contain NUL bytes")
    return b + b"\0"


class Message:
    """Base class: `type` is the message's type byte; `encode()` returns the whole frame."""

    type: ClassVar[bytes]

    def body(self) -> bytes:
        return b""

    def encode(self) -> bytes:
        return frame(self.type, self.body())

    @classmethod
    def decode_body(cls, r: _Reader) -> Message:
        return cls()


# --- frontend messages ---------------------------------------------------------------------


@dataclass(frozen=True)
class Query(Message):
    type: ClassVar[bytes] = b"Q"
    sql: str

    def body(self) -> bytes:
        return _cstr(self.sql)

    @classmethod
    def decode_body(cls, r: _Reader) -> Query:
        return cls(r.cstr())


@dataclass(frozen=True)
class Parse(Message):
    type: ClassVar[bytes] = b"P"
    name: str
    sql: str
    param_types: tuple[int, ...] = ()

    def body(self) -> bytes:
        types = b"".join(_U32.pack(t) for t in self.param_types)
        return _cstr(self.name) + _cstr(self.sql) + _I16.pack(len(self.param_types)) + types

    @classmethod
    def decode_body(cls, r: _Reader) -> Parse:
        name, sql = r.cstr(), r.cstr()
        types = tuple(r.int32() & 0xFFFFFFFF for _ in range(r.count()))
        return cls(name, sql, types)


@dataclass(frozen=True)
class Bind(Message):
    type: ClassVar[bytes] = b"B"
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def body(self) -> bytes:
        parts = [_cstr(self.portal), _cstr(self.statement), _I16.pack(len(self.param_formats))]
        parts += [_I16.pack(f) for f in self.param_formats]
        parts.append(_I16.pack(len(self.params)))
        for p in self.params:
            parts.append(_I32.pack(-1) if p is None else _I32.pack(len(p)) + p)
        parts.append(_I16.pack(len(self.result_formats)))
        parts += [_I16.pack(f) for f in self.result_formats]
        return b"".join(parts)

    @classmethod
    def decode_body(cls, r: _Reader) -> Bind:
        portal, stmt = r.cstr(), r.cstr()
        pformats = tuple(r.int16() for _ in range(r.count()))
        params: list[bytes | None] = []
        for _ in range(r.count()):
            n = r.int32()
            params.append(None if n == -1 else r.bytes_(n))
        rformats = tuple(r.int16() for _ in range(r.count()))
        return cls(portal, stmt, pformats, tuple(params), rformats)


@dataclass(frozen=True)
class Describe(Message):
    type: ClassVar[bytes] = b"D"
    kind: str  # "S" statement or "P" portal
    name: str

    def body(self) -> bytes:
        return self.kind.encode() + _cstr(self.name)

    @classmethod
    def decode_body(cls, r: _Reader) -> Describe:
        kind = chr(r.byte())
        if kind not in "SP":
            raise r._fail(f"invalid target {kind!r}")
        return cls(kind, r.cstr())


@dataclass(frozen=True)
class Close(Message):
    type: ClassVar[bytes] = b"C"
    kind: str
    name: str

    def body(self) -> bytes:
        return self.kind.encode() + _cstr(self.name)

    @classmethod
    def decode_body(cls, r: _Reader) -> Close:
        kind = chr(r.byte())
        if kind not in "SP":
            raise r._fail(f"invalid target {kind!r}")
        return cls(kind, r.cstr())


@dataclass(frozen=True)
class Execute(Message):
    type: ClassVar[bytes] = b"E"
    portal: str
    max_rows: int = 0

    def body(self) -> bytes:
        return _cstr(self.portal) + _I32.pack(self.max_rows)

    @classmethod
    def decode_body(cls, r: _Reader) -> Execute:
        return cls(r.cstr(), r.int32())


@dataclass(frozen=True)
class Sync(Message):
    type: ClassVar[bytes] = b"S"


@dataclass(frozen=True)
class Flush(Message):
    type: ClassVar[bytes] = b"H"


@dataclass(frozen=True)
class Terminate(Message):
    type: ClassVar[bytes] = b"X"


@dataclass(frozen=True)
class CopyData(Message):
    type: ClassVar[bytes] = b"d"
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, r: _Reader) -> CopyData:
        return cls(r.rest())


@dataclass(frozen=True)
class CopyDone(Message):
    type: ClassVar[bytes] = b"c"


@dataclass(frozen=True)
class CopyFail(Message):
    type: ClassVar[bytes] = b"f"
    reason: str

    def body(self) -> bytes:
        return _cstr(self.reason)

    @classmethod
    def decode_body(cls, r: _Reader) -> CopyFail:
        return cls(r.cstr())


@dataclass(frozen=True)
class FunctionCall(Message):
    type: ClassVar[bytes] = b"F"
    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def body(self) -> bytes:
        parts = [_I32.pack(self.function_oid), _I16.pack(len(self.arg_formats))]
        parts += [_I16.pack(f) for f in self.arg_formats]
        parts.append(_I16.pack(len(self.args)))
        for a in self.args:
            parts.append(_I32.pack(-1) if a is None else _I32.pack(len(a)) + a)
        parts.append(_I16.pack(self.result_format))
        return b"".join(parts)

    @classmethod
    def decode_body(cls, r: _Reader) -> FunctionCall:
        oid = r.int32()
        formats = tuple(r.int16() for _ in range(r.count()))
        args: list[bytes | None] = []
        for _ in range(r.count()):
            n = r.int32()
            args.append(None if n == -1 else r.bytes_(n))
        return cls(oid, formats, tuple(args), r.int16())


@dataclass(frozen=True)
class PasswordMessage(Message):
    """'p': a password, SASLInitialResponse or SASLResponse; which one depends on the exchange."""

    type: ClassVar[bytes] = b"p"
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, r: _Reader) -> PasswordMessage:
        return cls(r.rest())

    def password(self) -> str:
        r = _Reader(self.data, "PasswordMessage")
        pw = r.cstr_bytes()
        r.done()
        return pw.decode("utf-8", "replace")

    def sasl_initial(self) -> tuple[str, bytes | None]:
        r = _Reader(self.data, "SASLInitialResponse")
        mech = r.cstr()
        n = r.int32()
        data = None if n == -1 else r.bytes_(n)
        r.done()
        return mech, data

    @staticmethod
    def make_sasl_initial(mechanism: str, data: bytes) -> PasswordMessage:
        return PasswordMessage(_cstr(mechanism) + _I32.pack(len(data)) + data)

    @staticmethod
    def make_password(password: str) -> PasswordMessage:
        return PasswordMessage(_cstr(password))


# --- backend messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class Authentication(Message):
    """'R': `code` 0 ok, 3 cleartext, 5 md5 (payload = salt), 10 SASL (payload = mechanisms),
    11 SASL continue, 12 SASL final (payload = data)."""

    type: ClassVar[bytes] = b"R"
    code: int
    payload: bytes = b""

    OK: ClassVar[int] = 0
    CLEARTEXT: ClassVar[int] = 3
    MD5: ClassVar[int] = 5
    SASL: ClassVar[int] = 10
    SASL_CONTINUE: ClassVar[int] = 11
    SASL_FINAL: ClassVar[int] = 12

    def body(self) -> bytes:
        return _I32.pack(self.code) + self.payload

    @classmethod
    def decode_body(cls, r: _Reader) -> Authentication:
        return cls(r.int32(), r.rest())

    def mechanisms(self) -> list[str]:
        return [m.decode() for m in self.payload.split(b"\0") if m]

    @staticmethod
    def sasl(mechanisms: list[str]) -> Authentication:
        return Authentication(10, b"".join(_cstr(m) for m in mechanisms) + b"\0")


@dataclass(frozen=True)
class ParameterStatus(Message):
    type: ClassVar[bytes] = b"S"
    name: str
    value: str

    def body(self) -> bytes:
        return _cstr(self.name) + _cstr(self.value)

    @classmethod
    def decode_body(cls, r: _Reader) -> ParameterStatus:
        return cls(r.cstr(), r.cstr())


@dataclass(frozen=True)
class BackendKeyData(Message):
    type: ClassVar[bytes] = b"K"
    pid: int
    secret: bytes

    def body(self) -> bytes:
        return _I32.pack(self.pid) + self.secret

    @classmethod
    def decode_body(cls, r: _Reader) -> BackendKeyData:
        pid = r.int32()
        secret = r.rest()
        if not 4 <= len(secret) <= 256:
            raise r._fail(f"secret key of {len(secret)} bytes")
        return cls(pid, secret)


@dataclass(frozen=True)
class ReadyForQuery(Message):
    type: ClassVar[bytes] = b"Z"
    status: str  # "I" idle, "T" in transaction, "E" failed transaction

    def body(self) -> bytes:
        return self.status.encode()

    @classmethod
    def decode_body(cls, r: _Reader) -> ReadyForQuery:
        s = chr(r.byte())
        if s not in "ITE":
            raise r._fail(f"invalid transaction status {s!r}")
        return cls(s)


@dataclass(frozen=True)
class ParameterDescription(Message):
    """The parameter type OIDs of a statement, the server's answer to Describe (statement)."""

    type: ClassVar[bytes] = b"t"
    types: tuple[int, ...] = ()

    def body(self) -> bytes:
        return _I16.pack(len(self.types)) + b"".join(_U32.pack(t) for t in self.types)

    @classmethod
    def decode_body(cls, r: _Reader) -> ParameterDescription:
        return cls(tuple(r.int32() & 0xFFFFFFFF for _ in range(r.count())))


@dataclass(frozen=True)
class RowDescription(Message):
    """The columns of a result, as the proxy describes its own answers: `(name, type OID)` pairs,
    text format, no table of origin (what a server sends for computed columns)."""

    type: ClassVar[bytes] = b"T"
    columns: tuple[tuple[str, int], ...] = ()

    def body(self) -> bytes:
        out = [_I16.pack(len(self.columns))]
        for name, oid in self.columns:
            # table oid, column number, type oid, type size, type modifier, format code (text)
            out.append(_cstr(name) + _U32.pack(0) + _I16.pack(0) + _U32.pack(oid) + _I16.pack(-1)
                       + _I32.pack(-1) + _I16.pack(0))
        return b"".join(out)

    @classmethod
    def decode_body(cls, r: _Reader) -> RowDescription:
        columns = []
        for _ in range(r.count()):
            name = r.cstr()
            r.int32()
            r.int16()
            oid = r.int32() & 0xFFFFFFFF
            r.int16()
            r.int32()
            r.int16()
            columns.append((name, oid))
        return cls(tuple(columns))


@dataclass(frozen=True)
class DataRow(Message):
    """One result row; None is SQL NULL. Values are text (the proxy's own answers)."""

    type: ClassVar[bytes] = b"D"
    values: tuple[str | None, ...] = ()

    def body(self) -> bytes:
        out = [_I16.pack(len(self.values))]
        for v in self.values:
            if v is None:
                out.append(_I32.pack(-1))
            else:
                b = v.encode()
                out.append(_I32.pack(len(b)) + b)
        return b"".join(out)

    @classmethod
    def decode_body(cls, r: _Reader) -> DataRow:
        values: list[str | None] = []
        for _ in range(r.count()):
            n = r.int32()
            values.append(None if n < 0 else r.bytes_(n).decode())
        return cls(tuple(values))


@dataclass(frozen=True)
class CommandComplete(Message):
    type: ClassVar[bytes] = b"C"
    tag: str

    def body(self) -> bytes:
        return _cstr(self.tag)

    @classmethod
    def decode_body(cls, r: _Reader) -> CommandComplete:
        return cls(r.cstr())


@dataclass(frozen=True)
class ErrorResponse(Message):
    """'E'; `fields` maps field codes ('S' severity, 'V', 'C' SQLSTATE, 'M' message...)."""

    type: ClassVar[bytes] = b"E"
    fields: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        parts = [k.encode() + _cstr(v) for k, v in self.fields.items()]
        return b"".join(parts) + b"\0"

    @classmethod
    def decode_body(cls, r: _Reader) -> ErrorResponse:
        fields: dict[str, str] = {}
        while True:
            code = r.byte()
            if code == 0:
                break
            fields[chr(code)] = r.cstr()
        return cls(fields)

    @classmethod
    def make(
        cls, sqlstate: str, message: str, *, severity: str = "ERROR", detail: str | None = None,
        hint: str | None = None,
    ) -> ErrorResponse:
        fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
        if detail:
            fields["D"] = detail
        if hint:
            fields["H"] = hint
        return cls(fields)

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


@dataclass(frozen=True)
class NoticeResponse(ErrorResponse):
    type: ClassVar[bytes] = b"N"


@dataclass(frozen=True)
class NotificationResponse(Message):
    type: ClassVar[bytes] = b"A"
    pid: int
    channel: str
    payload: str

    def body(self) -> bytes:
        return _I32.pack(self.pid) + _cstr(self.channel) + _cstr(self.payload)

    @classmethod
    def decode_body(cls, r: _Reader) -> NotificationResponse:
        return cls(r.int32(), r.cstr(), r.cstr())


@dataclass(frozen=True)
class NegotiateProtocolVersion(Message):
    type: ClassVar[bytes] = b"v"
    newest_minor: int
    unrecognized: tuple[str, ...] = ()

    def body(self) -> bytes:
        names = b"".join(_cstr(o) for o in self.unrecognized)
        return _I32.pack(self.newest_minor) + _I32.pack(len(self.unrecognized)) + names

    @classmethod
    def decode_body(cls, r: _Reader) -> NegotiateProtocolVersion:
        minor = r.int32()
        n = r.int32()
        if n < 0:
            raise r._fail("negative count")
        return cls(minor, tuple(r.cstr() for _ in range(n)))


FRONTEND: dict[int, type[Message]] = {
    m.type[0]: m
    for m in (Query, Parse, Bind, Describe, Close, Execute, Sync, Flush, Terminate, CopyData,
              CopyDone, CopyFail, FunctionCall, PasswordMessage)
}
BACKEND: dict[int, type[Message]] = {
    m.type[0]: m
    for m in (Authentication, ParameterStatus, BackendKeyData, ReadyForQuery, CommandComplete,
              ErrorResponse, NoticeResponse, NotificationResponse, NegotiateProtocolVersion,
              CopyData, CopyDone, ParameterDescription, RowDescription, DataRow)
}


def _decode(table: dict[int, type[Message]], f: Frame, side: str) -> Message:
    cls = table.get(f.type)
    if cls is None:
        raise ProtocolViolation(f"no typed {side} message for type {f.type_char!r}")
    r = _Reader(f.body, cls.__name__)
    msg = cls.decode_body(r)
    r.done()
    return msg


def decode_frontend(f: Frame) -> Message:
    """Decode a frame sent by a client."""
    return _decode(FRONTEND, f, "frontend")


def decode_backend(f: Frame) -> Message:
    """Decode a frame sent by a server."""
    return _decode(BACKEND, f, "backend")

"""Splitting a v3 protocol byte stream into frames.

Every regular message is `type:1 byte, length:int32 (including itself), body`. `FrameScanner` is
fed whatever bytes arrived and returns, in order, a mix of

- `bytes` runs: whole or partial frames of types the caller did not ask to decode. They are to be
  forwarded untouched. This is the hot path: a result set of a million DataRows costs one header
  read per row and no per-row objects, and a 1 GB DataRow is never held in memory.
- `Frame` objects: complete frames of the types the caller asked for (`decode`), buffered until
  whole and bounded by `max_decoded` so that a peer cannot make the proxy hold arbitrary memory.

The scanner never waits and never does I/O: the caller feeds it and acts on what comes back.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from dbproxy.protocol.errors import ProtocolViolation

_HEADER = struct.Struct("!ci")
_INT32 = struct.Struct("!i")

#: PostgreSQL refuses any message longer than this (PQ_LARGE_MESSAGE_LIMIT, 1 GB - 1).
PG_MAX_MESSAGE = 0x3FFFFFFF

#: Message types a frontend may send once the session is established (after authentication).
FRONTEND_TYPES = frozenset(b"BCdcfDEHFPQSX")
#: Message types a backend may send.
BACKEND_TYPES = frozenset(b"RKSZCDTtnI12s3EeNAGHWcdfvV")


class Frame:
    """One complete message: its type byte and its raw bytes (header included)."""

    __slots__ = ("raw", "type")

    def __init__(self, type_: int, raw: bytes) -> None:
        self.type = type_
        self.raw = raw

    @property
    def body(self) -> bytes:
        return self.raw[5:]

    @property
    def type_char(self) -> str:
        return chr(self.type)

    def __repr__(self) -> str:
        return f"Frame({self.type_char!r}, {len(self.raw) - 5} bytes)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frame) and other.type == self.type and other.raw == self.raw

    __hash__ = None  # type: ignore[assignment]


def frame(type_char: bytes, body: bytes = b"") -> bytes:
    """Encode one regular message."""
    return _HEADER.pack(type_char, len(body) + 4) + body


class FrameScanner:
    """Incremental, copy-avoiding splitter of a message stream (see module docstring).

    `decode`: the type bytes to return as `Frame` objects; `None` means all of them.
    `valid`: the type bytes allowed at all; anything else raises `ProtocolViolation`.
    `max_decoded`: the largest body accepted for a decoded frame.
    """

    __slots__ = ("_decode", "_max_decoded", "_pending", "_skip", "_valid", "_want")

    def __init__(
        self,
        decode: Iterable[int] | None = None,
        *,
        valid: Iterable[int] | None = None,
        max_decoded: int = PG_MAX_MESSAGE,
    ) -> None:
        self._decode = None if decode is None else frozenset(decode)
        self._valid = None if valid is None else frozenset(valid)
        self._max_decoded = max_decoded
        self._skip = 0  # bytes of a passed-through frame still to come
        self._pending = bytearray()  # a partial header or a partial decoded frame
        self._want = 0  # total size of the decoded frame in _pending, 0 while only a header

    @property
    def at_boundary(self) -> bool:
        """True when everything returned so far ended on a frame boundary."""
        return self._skip == 0 and not self._pending

    def set_decode(self, decode: Iterable[int] | None) -> None:
        """Change which types are decoded (e.g. after authentication)."""
        self._decode = None if decode is None else frozenset(decode)

    def set_valid(self, valid: Iterable[int] | None) -> None:
        self._valid = None if valid is None else frozenset(valid)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | Frame]:
        out: list[bytes | Frame] = []
        if not data:
            return out
        data = bytes(data)
        n = len(data)
        pos = 0
        if self._skip:
            take = self._skip if self._skip < n else n
            self._skip -= take
            out.append(data[:take] if take < n else data)
            pos = take
            if pos == n:
                return out
        if self._pending:
            if self._want:
                need = self._want - len(self._pending)
                self._pending += data[pos : pos + need]
                pos += need
                if len(self._pending) < self._want:
                    return out
                out.append(Frame(self._pending[0], bytes(self._pending)))
                self._pending = bytearray()
                self._want = 0
                if pos >= n:
                    return out
            else:
                # Only a partial header was kept: join it with what follows and start over.
                data = bytes(self._pending) + data[pos:]
                self._pending = bytearray()
                n = len(data)
                pos = 0
        run_start = pos
        decode = self._decode
        valid = self._valid
        unpack = _INT32.unpack_from
        while pos < n:
            if n - pos < 5:
                if pos > run_start:
                    out.append(data[run_start:pos])
                self._pending = bytearray(data[pos:])
                return out
            t = data[pos]
            length = unpack(data, pos + 1)[0]
            if valid is not None and t not in valid:
                raise ProtocolViolation(f"invalid message type {_describe(t)}")
            if length < 4:
                raise ProtocolViolation(f"invalid message length {length} for type {_describe(t)}")
            end = pos + 1 + length
            if decode is None or t in decode:
                if length - 4 > self._max_decoded:
                    raise ProtocolViolation(
                        f"message of type {_describe(t)} is {length - 4} bytes, "
                        f"over the limit of {self._max_decoded}"
                    )
                if pos > run_start:
                    out.append(data[run_start:pos])
                if end <= n:
                    out.append(Frame(t, data[pos:end]))
                    pos = end
                    run_start = pos
                    continue
                self._pending = bytearray(data[pos:])
                self._want = 1 + length
                return out
            if length > PG_MAX_MESSAGE:
                raise ProtocolViolation(f"invalid message length {length} for type {_describe(t)}")
            if end <= n:
                pos = end
                continue
            self._skip = end - n
            pos = n
        if pos > run_start:
            out.append(data[run_start:pos] if run_start or pos < n else data)
        return out


def scan_whole(data: bytes, allowed: frozenset[int], watch: frozenset[int], max_len: int) -> tuple[int, int] | None:
    """Fast path for a chunk that holds only whole frames (the common case for small messages).

    Returns `(count, last)`: how many frames of a `watch` type the chunk holds and where the last
    one starts (-1 if none). Returns None as soon as anything needs the general scanner: a type
    outside `allowed`, a length below 4 or above `max_len`, or a frame cut at the chunk's end.
    The caller then feeds the same bytes to `FrameScanner.feed`, which gives the precise error.
    """
    unpack = _INT32.unpack_from
    n = len(data)
    pos = 0
    count = 0
    last = -1
    while pos < n:
        if n - pos < 5:
            return None
        t = data[pos]
        if t not in allowed:
            return None
        length = unpack(data, pos + 1)[0]
        if length < 4 or length - 4 > max_len:
            return None
        if t in watch:
            count += 1
            last = pos
        pos += 1 + length
    if pos != n:
        return None
    return count, last


def _describe(t: int) -> str:
    ch = chr(t)
    return repr(ch) if ch.isprintable() else f"0x{t:02x}"

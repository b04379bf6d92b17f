"""One side of a session's byte pipe: an asyncio Protocol with two modes.

- *await mode* (start-up and authentication): `await read()` returns whatever arrived; the
  session feeds it to a sans-IO scanner and talks step by step.
- *relay mode* (the rest of the session): `relay_to(callback)` makes every arrival call the
  callback synchronously, with no task switch and no await per packet. This is the hot path.

Flow control: when this side's outgoing buffer fills up (`pause_writing`), the peer endpoint stops
reading, so a fast upstream cannot make the proxy buffer a whole result set for a slow client.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import cast

from dbproxy.protocol.framing import Frame, FrameScanner


class ConnectionClosed(Exception):
    """The other end closed the connection (or it broke) while we were reading."""


class Endpoint(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.peer: Endpoint | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._sink: Callable[[bytes], None] | None = None
        self._on_lost: Callable[[Endpoint], None] | None = None
        self.on_made: Callable[[Endpoint], None] | None = None
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.closed = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence the cast.
        self.transport = cast(asyncio.Transport, transport)
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink(data)
            return
        self._buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        if self._on_lost is not None:
            self._on_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.peer is not None and self.peer.transport is not None and not self.peer.is_closing():
            self.peer.transport.resume_reading()
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()

    # -- await mode -----------------------------------------------------------------------

    async def read(self) -> bytes:
        """Everything received so far, waiting for at least one byte; raises at EOF."""
        while not self._buffer:
            if self._eof:
                raise ConnectionClosed(f"{self.name} closed the connection")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of the buffer (read too far during start-up)."""
        self._buffer[:0] = data

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- relay mode -----------------------------------------------------------------------

    def relay_to(self, sink: Callable[[bytes], None], on_lost: Callable[[Endpoint], None]) -> None:
        """Switch to relay mode; bytes already buffered are delivered at once."""
        self._sink = sink
        self._on_lost = on_lost
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            sink(data)
        if self._eof and self.closed.done():
            on_lost(self)

    # -- writing --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if self._write_paused and not self.is_closing():
            fut = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(fut)
            await fut

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def start_tls(self, context: ssl.SSLContext, *, server_side: bool,
                        server_hostname: str | None = None, handshake_timeout: float = 30) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        new = await loop.start_tls(
            self.transport, self, context, server_side=server_side,
            server_hostname=server_hostname, ssl_handshake_timeout=handshake_timeout,
        )
        if new is None:
            raise ConnectionClosed(f"{self.name} closed the connection during the TLS handshake")
        self.transport = new

    def ssl_object(self) -> ssl.SSLObject | None:
        if self.transport is None:
            return None
        return self.transport.get_extra_info("ssl_object")


class MessageReader:
    """Await-mode message reading: an endpoint plus a sans-IO scanner that decodes every frame."""

    def __init__(self, endpoint: Endpoint, scanner: FrameScanner) -> None:
        self.endpoint = endpoint
        self.scanner = scanner
        self._frames: list[Frame] = []

    async def next(self) -> Frame:
        """The next complete frame (the scanner must decode every type in await mode)."""
        while not self._frames:
            for item in self.scanner.feed(await self.endpoint.read()):
                if not isinstance(item, Frame):
                    raise TypeError("MessageReader needs a scanner that decodes every frame")
                self._frames.append(item)
        return self._frames.pop(0)

    def leftover(self) -> list[Frame]:
        """Frames read but not consumed, to hand over to relay mode."""
        out, self._frames = self._frames, []
        return out

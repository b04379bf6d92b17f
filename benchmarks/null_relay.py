"""The floor for any Python proxy: a TCP relay with no logic at all, written the way dbproxy's
relay is (uvloop, asyncio Protocols, one write per arrival), for the overhead benchmark.

    python -m benchmarks.null_relay UPSTREAM_HOST UPSTREAM_PORT LISTEN_PORT

It does not parse, authenticate or track anything, so the gap between its row and dbproxy's row
in `proxy_overhead` is what dbproxy's protocol work costs, and the gap between it and direct is
the price of the extra hop itself.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class _Side(asyncio.Protocol):
    def __init__(self) -> None:
        self.peer: _Side | None = None
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


def main() -> None:
    host, port, listen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    class Client(_Side):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            asyncio.get_running_loop().create_task(self._open_upstream())

        async def _open_upstream(self) -> None:
            _, up = await asyncio.get_running_loop().create_connection(_Side, host, port)
            up.peer, self.peer = self, up
            for chunk in self.early:
                assert up.transport is not None
                up.transport.write(chunk)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", listen)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()

"""Which sandbox backend runs, from the `sandbox` setting: `make_backend`, and `auto`.

`auto` (the default) verifies in a container when a Docker engine answers and a PostgreSQL
image can be had (pulled, or built here by `dbproxy sandbox build-image`), else in the local
cluster; `choice` says which and why, for the log. If the container backend later fails for
good (the engine went away), it falls back to the local cluster at the next recovery.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sandbox.backends import Backend, BackendUnavailable, LocalBackend, ServerBackend
from sandbox.container import ContainerBackend, owner_id

KINDS = ("auto", "local", "server", "testcontainers")


class AutoBackend(Backend):
    """A container backend when one can start, else the local one; behaves as the one chosen."""

    def __init__(self, container: ContainerBackend, local: LocalBackend) -> None:
        self.container = container
        self.local = local
        self.chosen: Backend | None = None
        self.choice = ""  # "<backend>: <why>", once chosen
        self._lock = asyncio.Lock()

    @property  # type: ignore[override]
    def name(self) -> str:  # what verdicts record: the backend that verified
        return self.chosen.name if self.chosen is not None else "auto"

    @property  # type: ignore[override]
    def bin_dir(self) -> Path:
        assert self.chosen is not None, "start() first"
        return self.chosen.bin_dir

    @property  # type: ignore[override]
    def major(self) -> int:
        return self.chosen.major if self.chosen is not None else 0

    async def start(self) -> None:
        if self.chosen is None:
            async with self._lock:
                if self.chosen is None:
                    await self._choose()
        assert self.chosen is not None
        await self.chosen.start()

    async def _choose(self) -> None:
        try:
            await self.container.start()
        except BackendUnavailable as e:
            self.chosen = self.local
            self.choice = f"local: the testcontainers backend is not available ({e})"
            return
        self.chosen = self.container
        self.choice = "testcontainers: a Docker engine answers"

    async def recover(self) -> None:
        assert self.chosen is not None
        try:
            await self.chosen.recover()
        except BackendUnavailable as e:
            if self.chosen is not self.container:
                raise
            await self.container.remove()
            self.chosen = self.local
            self.choice = f"local: the container could not be brought back ({e})"
            await self.local.start()

    def url(self, database: str = "postgres") -> str:
        assert self.chosen is not None, "start() first"
        return self.chosen.url(database)

    async def close(self) -> None:
        await self.container.close()
        await self.local.close()

    def describe(self) -> str:
        return self.chosen.describe() if self.chosen is not None else "auto (not started)"


def make_backend(kind: str, *, data_dir: Path, server_url: str | None = None, upstream_major: int | None = None,
                 stop_on_close: bool = False, image: str | None = None) -> Backend:
    """The backend `kind` names. `data_dir`: the local cluster's directory, whose path also names
    the container (one per proxy)."""
    if kind == "local":
        return LocalBackend(data_dir, upstream_major=upstream_major, stop_on_close=stop_on_close)
    if kind == "server":
        if not server_url:
            raise BackendUnavailable("sandbox backend `server` needs the sandbox_server setting")
        return ServerBackend(server_url)
    container = ContainerBackend(upstream_major=upstream_major, image=image, owner=owner_id(str(data_dir.absolute())),
                                 stop_on_close=stop_on_close)
    if kind == "testcontainers":
        return container
    if kind == "auto":
        return AutoBackend(container, LocalBackend(data_dir, upstream_major=upstream_major,
                                                   stop_on_close=stop_on_close))
    raise BackendUnavailable(f"unknown sandbox backend {kind!r} ({', '.join(KINDS)})")

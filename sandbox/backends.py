"""Where sandboxes run: PostgreSQL servers that hold sampled copies and nothing else.

A backend gives the verifier a server to create sandbox databases on (`url(database)`), the
client binaries that fit it (`bin_dir`: psql to load schemas, pg_dump/pg_restore to take them),
and a way back after a crash (`recover`). Three kinds, chosen by configuration:

- `local` (default): a cluster of our own in a data directory, from binaries matching the
  upstream's major version when some are installed (PATH, /usr/lib/postgresql/N/bin), else the
  bundled ones. Started on first use, kept warm, reused across proxy restarts; `recover` starts it
  again after a crash, or re-creates it when its data directory is beyond repair. With
  `stop_on_close` (the proxy's way) it is also tied to the process: a watchdog stops it when the
  process dies, and a start that finds one left running by a dead process stops that first.
- `server`: scratch databases on a PostgreSQL server you name (its URL needs CREATEDB).
- `testcontainers`: a `postgres:<major>` container on a Docker engine (`sandbox.container`).

`sandbox.auto` picks one (`auto`: a container when a Docker engine answers, else local) and makes it.

Sandboxes never receive the upstream's credentials: only schema text and sampled rows go in.
`url` is the backend's admin role; the SQL under test runs as an unprivileged role the verifier
sets up with it (`sandbox.roles`). Every sandbox connection runs with `LIMITS` (statement
timeout, memory for sorts and temporary files), and servers we start are small (`LOCAL_SETTINGS`).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from sandbox.pgcluster import ClusterError, LocalCluster, bin_dir, free_port

#: Per-connection limits for everything run in a sandbox (values are PostgreSQL settings).
LIMITS = {"statement_timeout": "10s", "lock_timeout": "5s", "work_mem": "16MB", "temp_file_limit": "1GB",
          "idle_in_transaction_session_timeout": "60s"}
#: A sandbox cluster is scratch space: durability is not needed, and it stays small.
LOCAL_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                  "shared_buffers": "'64MB'", "max_connections": "40", "max_locks_per_transaction": "256",
                  "maintenance_work_mem": "'64MB'", "log_min_messages": "fatal", "log_min_error_statement": "panic"}


class BackendUnavailable(Exception):
    """The backend cannot run sandboxes here (no binaries, no Docker, server down); the message
    says what is missing."""


def _major_of(bin_path: Path) -> int | None:
    try:
        out = subprocess.run([str(bin_path / "postgres"), "--version"], capture_output=True, text=True,
                             check=False, timeout=10).stdout
    except OSError:
        return None
    m = re.search(r"\s(\d+)(?:\.\d+|beta|rc|devel)", out)
    return int(m.group(1)) if m else None


def candidate_bins() -> list[Path]:
    """PostgreSQL bin/ directories on this machine: the bundled one first, then PATH and the
    usual system locations."""
    found: list[Path] = []
    try:
        found.append(bin_dir())
    except ClusterError:
        pass
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d and (Path(d) / "pg_ctl").exists():
            found.append(Path(d))
    for root in (Path("/usr/lib/postgresql"), Path("/usr/local/pgsql")):
        if root.is_dir():
            found += sorted(p / "bin" for p in root.iterdir() if (p / "bin" / "pg_ctl").exists())
            if (root / "bin" / "pg_ctl").exists():
                found.append(root / "bin")
    unique: list[Path] = []
    for p in found:
        if p.resolve() not in {u.resolve() for u in unique}:
            unique.append(p)
    return unique


def pick_bins(major: int | None) -> tuple[Path, int]:
    """Binaries of `major` when installed, else the newest available (bundled first on ties)."""
    versions = [(p, v) for p in candidate_bins() if (v := _major_of(p)) is not None]
    if not versions:
        raise BackendUnavailable("no PostgreSQL binaries found (install the pgserver package, or put pg_ctl on PATH)")
    for p, v in versions:
        if v == major:
            return p, v
    return max(versions, key=lambda pv: pv[1])


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def with_login(url: str, user: str, password: str) -> str:
    """`url` with another role's name and password (host, port, database and query kept)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


class Backend(ABC):
    name: str = ""
    bin_dir: Path
    major: int = 0

    @abstractmethod
    async def start(self) -> None:
        """Make the server available (idempotent); raises BackendUnavailable."""

    @abstractmethod
    def url(self, database: str = "postgres") -> str: ...

    async def recover(self) -> None:
        """After a lost connection: bring the server back if this backend can."""
        await self.start()

    async def close(self) -> None:  # noqa: B027 - most backends have nothing to stop
        """Stop what this backend started (the local cluster stays warm unless asked)."""

    def describe(self) -> str:
        return f"{self.name} (PostgreSQL {self.major})"


class LocalBackend(Backend):
    """A cluster of our own, kept warm in `data_dir` (see the module docstring)."""

    name = "local"

    def __init__(self, data_dir: Path, *, upstream_major: int | None = None, stop_on_close: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.upstream_major = upstream_major
        self.stop_on_close = stop_on_close
        self.cluster: LocalCluster | None = None
        self._started_here = False  # stop it on close only if this backend started it
        self._starting: asyncio.Future[None] | None = None  # a start under way in a thread
        self._lock = asyncio.Lock()

    def _make(self) -> LocalCluster:
        bins, major = pick_bins(self.upstream_major)
        self.bin_dir, self.major = bins, major
        # One data directory per major version: a cluster only runs with its own binaries.
        data = self.data_dir / f"pg{major}"
        port_file = self.data_dir / f"pg{major}.port"
        port = int(port_file.read_text()) if port_file.exists() else free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port_file.write_text(str(port))
        return LocalCluster(data, host=None, port=port, settings=LOCAL_SETTINGS, bin=bins)

    async def start(self) -> None:
        async with self._lock:
            if self.cluster is None:
                self.cluster = await asyncio.to_thread(self._make)
            if self.stop_on_close and self.cluster.is_running() and not self.cluster.owner_alive():
                # Left running by a proxy that was killed: stop it, and start one tied to us.
                await asyncio.to_thread(self.cluster.stop)
            if not self.cluster.is_running():
                self._started_here = True
                # Shielded: a start cancelled half way (the proxy stopping) still finishes in its
                # thread, and `close` waits for it before stopping what it started.
                self._starting = asyncio.ensure_future(
                    asyncio.to_thread(self._start_or_rebuild, self.cluster, self.stop_on_close))
                await asyncio.shield(self._starting)

    @staticmethod
    def _start_or_rebuild(cluster: LocalCluster, watchdog: bool = False) -> None:
        # watchdog: a cluster that stops with its owner must not outlive it either (kill -9).
        try:
            cluster.init()
            cluster.start(watchdog=watchdog)
            return
        except ClusterError:
            pass
        # A data directory that will not start (crash mid-initdb, disk trouble): it only ever held
        # scratch copies, so start over.
        cluster.destroy()
        try:
            cluster.init()
            cluster.start(watchdog=watchdog)
        except ClusterError as e:
            raise BackendUnavailable(f"the local sandbox cluster in {cluster.data_dir} will not start: {e}") from e

    def url(self, database: str = "postgres") -> str:
        assert self.cluster is not None, "start() first"
        return self.cluster.url(database)

    async def close(self) -> None:
        if self._starting is not None and not self._starting.done():
            await asyncio.wait([self._starting])
        if self.stop_on_close and self._started_here and self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
            self._started_here = False


class ServerBackend(Backend):
    """Scratch databases on a server you run (`url` with a role that may CREATEDB)."""

    name = "server"

    def __init__(self, url: str) -> None:
        self._url = url
        self.bin_dir = bin_dir()

    async def start(self) -> None:
        if not self.major:  # checked once; a lost server is found by `recover`
            await self.recover()

    async def recover(self) -> None:
        import asyncpg

        try:
            con = await asyncpg.connect(self._url, timeout=10)
        except (OSError, asyncpg.PostgresError) as e:
            raise BackendUnavailable(f"the sandbox server is unreachable: {e}") from e
        try:
            self.major = int(await con.fetchval("SHOW server_version_num")) // 10000
        finally:
            await con.close()

    def url(self, database: str = "postgres") -> str:
        return with_database(self._url, database)

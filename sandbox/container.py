"""The `testcontainers` sandbox backend: a warm PostgreSQL container on a Docker engine.

One container per proxy, started on first use (in the background when the proxy starts) and
reused for every verification; its schema copies are databases inside it, as with the local
backend. If it dies, `recover` replaces it and the verifier copies the schema again. `close`
removes it when the backend was made with `stop_on_close` (the proxy's is: the container stops
with the proxy). It is named after its owner (`dbproxy-sandbox-<owner>`), so a container left
behind by a proxy that crashed is removed when the next one starts.

The image is `postgres:<major>` (the upstream's major version), or the `sandbox_image` setting
(`{major}` in it is replaced). When that image is neither present nor pullable (no registry, as on
air-gapped hosts), the backend uses the image `dbproxy sandbox build-image` built locally from
the bundled binaries (`sandbox.image`), of the same major version if there is one, else the newest.

Networking: with a local engine the container uses the host's network and its server listens
on 127.0.0.1 only, on a free port; nothing travels over a bridge network. A remote engine
(`DOCKER_HOST=tcp://...`) publishes the port on that engine's host instead.

The container has no access to the proxy's files or credentials: only schema text and sampled
rows go in, and the SQL under test runs as an unprivileged role inside it (`sandbox.roles`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import time
from typing import Any

from sandbox.backends import LOCAL_SETTINGS, Backend, BackendUnavailable, pick_bins
from sandbox.pgcluster import free_port

#: What `dbproxy sandbox build-image` tags its images as (`:<major>`), and the label with the major.
BUILT_REPOSITORY = "dbproxy-sandbox-postgres"
MAJOR_LABEL = "org.dbproxy.postgres-major"
DEFAULT_IMAGE = "postgres:{major}"
DEFAULT_MAJOR = 16
ADMIN_USER = "dbproxy"
#: Seconds to wait for a new container's server to accept connections (first start runs initdb).
START_TIMEOUT = 120


def owner_id(text: str) -> str:
    """A short, stable name part for whatever owns the container (a proxy's data directory)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def docker_client(timeout: float = 10) -> Any:
    """A Docker SDK client for the engine the environment names; raises BackendUnavailable."""
    try:
        import docker
    except ImportError as e:
        raise BackendUnavailable("the testcontainers backend needs `pip install testcontainers[postgres]`") from e
    address = _engine_address()
    socket = address.removeprefix("unix://") if address.startswith("unix://") else None
    if socket is not None and not os.path.exists(socket):
        raise BackendUnavailable(f"no Docker engine answers at {address}: there is no socket (is dockerd running?)")
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as e:
        raise BackendUnavailable(f"no Docker engine answers at {address}: {_short(e)}") from None
    return client


def docker_problem() -> str | None:
    """Why no Docker engine can be used here (None: one answers)."""
    try:
        docker_client(timeout=5).close()
    except BackendUnavailable as e:
        return str(e)
    return None


def _engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def local_engine() -> bool:
    """The engine runs on this machine (a Unix socket): containers can share our network."""
    host = os.environ.get("DOCKER_HOST", "")
    return not host or host.startswith("unix://")


def _short(e: BaseException) -> str:
    """One line of an error; the Docker SDK's own explanation when it has one (not its URL)."""
    text = str(getattr(e, "explanation", None) or e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def built_images(client: Any) -> dict[int, str]:
    """Images `dbproxy sandbox build-image` made here: major version -> tag."""
    found: dict[int, str] = {}
    for img in client.images.list(name=BUILT_REPOSITORY):
        major = (img.labels or {}).get(MAJOR_LABEL)
        tags = [t for t in img.tags if t.startswith(BUILT_REPOSITORY + ":")]
        if major and major.isdigit() and tags:
            found[int(major)] = next((t for t in tags if t.endswith(f":{major}")), tags[0])
    return found


def _has_image(client: Any, name: str) -> bool:
    import docker

    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def _pull(client: Any, name: str) -> None:
    from docker.utils import parse_repository_tag

    repository, tag = parse_repository_tag(name)
    client.images.pull(repository, tag=tag or "latest")


def choose_image(client: Any, wanted: str, major: int) -> tuple[str, str]:
    """The image to run and, when it is not `wanted`, why. Raises BackendUnavailable."""
    if _has_image(client, wanted):
        return wanted, ""
    try:
        _pull(client, wanted)
        return wanted, ""
    except Exception as e:
        pull_error = _short(e)
    built = built_images(client)
    why = f"{wanted} could not be pulled ({pull_error})"
    if major in built:
        return built[major], f"{why}; using {built[major]}, built here"
    if built:
        newest = built[max(built)]
        return newest, f"{why}; using {newest}, built here (PostgreSQL {max(built)}, not {major})"
    raise BackendUnavailable(f"no PostgreSQL image: {why}, and none was built here; "
                             "build one without a registry with `dbproxy sandbox build-image`")


class ContainerBackend(Backend):
    """A `postgres:<major>` container through testcontainers (see the module docstring)."""

    name = "testcontainers"

    def __init__(self, *, upstream_major: int | None = None, image: str | None = None,
                 owner: str = "default", stop_on_close: bool = False) -> None:
        self.upstream_major = upstream_major
        self.stop_on_close = stop_on_close
        self.major = upstream_major or DEFAULT_MAJOR
        self.wanted = (image or DEFAULT_IMAGE).replace("{major}", str(self.major))
        self.container_name = f"dbproxy-sandbox-{owner}"
        self.image = ""
        self.note = ""  # why another image than `wanted` runs
        self._container: Any = None
        self._url = ""
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if self._container is not None:  # checked per verification: no Docker call on the warm path
            return
        async with self._lock:
            if self._container is None:
                await self._start_new()

    async def recover(self) -> None:
        """After a lost connection: a container that is gone or stopped is replaced; a running one
        is waited for (its server may be restarting)."""
        async with self._lock:
            if self._container is None or not await asyncio.to_thread(self._running):
                await asyncio.to_thread(self._remove)
                await self._start_new()
            else:
                await asyncio.to_thread(self._container._connect)

    async def _start_new(self) -> None:
        try:
            await asyncio.to_thread(self._run)
            await self._read_major()
        except BackendUnavailable:
            raise
        except Exception as e:  # the engine's own errors (API, connection) say "could not verify" too
            await asyncio.to_thread(self._remove)
            raise BackendUnavailable(f"the Docker engine could not run the sandbox container: {_short(e)}") from e

    def url(self, database: str = "postgres") -> str:
        assert self._url, "start() first"
        return f"{self._url}/{database}"

    async def close(self) -> None:
        if self.stop_on_close:
            await self.remove()

    async def remove(self) -> None:
        """Stop and remove the container now."""
        async with self._lock:
            await asyncio.to_thread(self._remove)

    def describe(self) -> str:
        note = f"; {self.note}" if self.note else ""
        return f"{self.name} (PostgreSQL {self.major}, image {self.image or self.wanted}{note})"

    @property
    def container_id(self) -> str | None:
        """The running container's id (tests and logs)."""
        return self._container.get_wrapped_container().id if self._container is not None else None

    # -- in a worker thread: the Docker SDK blocks --------------------------------------------------

    def _run(self) -> None:
        try:
            from testcontainers.core.config import testcontainers_config
        except ImportError as e:
            raise BackendUnavailable("the testcontainers backend needs `pip install testcontainers[postgres]`") from e
        # The reaper container would come from a registry; this backend removes its own container.
        testcontainers_config.ryuk_disabled = True
        client = docker_client()
        self.bin_dir, _ = pick_bins(self.upstream_major)
        self.image, self.note = choose_image(client, self.wanted, self.major)
        with contextlib.suppress(Exception):  # left by a proxy that crashed
            client.containers.get(self.container_name).remove(force=True)
        password = secrets.token_urlsafe(24)
        container = _container(self.image, password, local_engine())
        container.with_name(self.container_name)
        try:
            container.start()
        except Exception as e:
            with contextlib.suppress(Exception):
                container.stop()
            raise BackendUnavailable(f"could not start a {self.image} container: {_short(e)}") from e
        self._container = container
        if local_engine():
            self._url = f"postgresql://{ADMIN_USER}:{password}@127.0.0.1:{container.host_port}"
        else:
            host = container.get_container_host_ip()
            self._url = f"postgresql://{ADMIN_USER}:{password}@{host}:{container.get_exposed_port(5432)}"

    def _running(self) -> bool:
        try:
            wrapped = self._container.get_wrapped_container()
            wrapped.reload()
            return bool(wrapped.status == "running")
        except Exception:
            return False

    def _remove(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.stop()
            self._container = None
            self._url = ""

    async def _read_major(self) -> None:
        import asyncpg

        con = await asyncpg.connect(self.url("postgres"), timeout=30)
        try:
            self.major = int(await con.fetchval("SHOW server_version_num")) // 10000
        finally:
            await con.close()


def _container(image: str, password: str, host_network: bool) -> Any:
    try:
        from testcontainers.community.postgres import PostgresContainer  # type: ignore[import-untyped]
    except ImportError:  # testcontainers before 4.14
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

    class SandboxContainer(PostgresContainer):  # type: ignore[misc]
        host_port = 0

        def _connect(self) -> None:
            # As testcontainers does (psql inside the container), polling faster: a start takes ~1 s.
            probe = ["sh", "-c", f"PGPASSWORD='{password}' psql -U {ADMIN_USER} -d postgres -h 127.0.0.1 -c 'select 1'"]
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                result = self.exec(probe)
                if result.exit_code == 0:
                    return
                self.get_wrapped_container().reload()
                if self.get_wrapped_container().status not in ("created", "running"):
                    raise BackendUnavailable(f"the container exited: {_short(Exception(self._tail()))}")
                if time.monotonic() > deadline:
                    raise BackendUnavailable(f"the container's server did not answer in {START_TIMEOUT} s: "
                                             f"{self._tail()}")
                time.sleep(0.2)

        def _tail(self) -> str:
            out, err = self.get_logs()
            lines = (out + err).decode(errors="replace").strip().splitlines()
            return " / ".join(lines[-3:]) or "(no output)"

    c = SandboxContainer(image, username=ADMIN_USER, password=password, dbname="postgres", driver=None)
    c.image = image  # exactly this one (no TESTCONTAINERS_HUB_IMAGE_NAME_PREFIX: `sandbox_image` is for mirrors)
    settings = [f"{k}={v.strip(chr(39))}" for k, v in LOCAL_SETTINGS.items()]
    args = ["postgres", *[a for s in settings for a in ("-c", s)]]
    kwargs: dict[str, Any] = {"security_opt": ["no-new-privileges"], "shm_size": "256m"}
    if host_network:
        port = free_port()
        c.host_port = port
        c.ports = {}  # nothing to publish: the server is on the host's loopback
        c.with_env("PGPORT", str(port))
        args += ["-c", "listen_addresses=127.0.0.1", "-c", f"port={port}"]
        kwargs["network_mode"] = "host"
    c.with_command(args)
    c.with_kwargs(**kwargs)
    return c

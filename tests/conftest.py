"""Shared fixtures: a real PostgreSQL and a real proxy in front of it.

- `pg`: a PostgreSQL cluster for the whole test session, started from the bundled binaries on a
  free TCP port (or the server named by `DBPROXY_TEST_DSN`, which must be a superuser URL).
- `proxy`: a `dbproxy` server in front of `pg`, running on its own event loop in a background
  thread, so that blocking clients (psql, pgbench, psycopg) and async ones can both use it.
  Agent `agent` / password `agent-pw` may open any database.
- `make_proxy(**settings)`: the same with other settings (TLS, limits, another upstream).

Tests talk to PostgreSQL only through real clients; nothing here mocks the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from dbproxy.auth import reviewers
from dbproxy.backend.upstream import UpstreamTarget
from dbproxy.config.settings import load_settings
from dbproxy.frontend.server import ProxyServer, build_registry
from sandbox.pgcluster import LocalCluster, bin_dir, free_port

#: The scripted OpenAI-compatible endpoint (`fake_llm` fixture), the suite's only test double; the
#: Docker engine, images and warm sandbox container of the container tests (`docker_fixtures`).
pytest_plugins = ["tests.fake_llm", "tests.docker_fixtures"]

AGENT = "agent"


def pytest_configure(config: pytest.Config) -> None:
    # `timeout`/CI send SIGTERM: turn it into KeyboardInterrupt so fixtures still stop the
    # PostgreSQL clusters they started instead of leaving them running.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)

AGENT_PASSWORD = "agent-pw"
ADMIN_TOKEN = "test-admin-token"


@dataclass
class Postgres:
    """The server under test: a superuser URL and where its client binaries are."""

    url: str
    cluster: LocalCluster | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 5432

    @property
    def user(self) -> str:
        return urlsplit(self.url).username or "postgres"

    @property
    def password(self) -> str:
        return urlsplit(self.url).password or ""

    def dsn(self, database: str = "postgres") -> str:
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def pg_bin() -> Path:
    """Directory with psql and pgbench (bundled with the pgserver wheel)."""
    return bin_dir()


#: The role agents act as upstream (the proxy's `agent_role` default). The proxy creates it if it
#: is missing; the suite creates it first, to give it what agents need on the test server.
AGENTS_ROLE = "dbproxy_agents"

#: What the suite's agents may do on the test server, as an operator would grant it: own the
#: `public` schema of `postgres` and of `template1` (so databases the tests create inherit it),
#: create schemas, and use whatever the superuser creates directly in tests (default privileges,
#: copied with template1). Never anything in the `dbproxy` schema.
_AGENTS_SETUP = f"""
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{AGENTS_ROLE}') AS missing \\gset
\\if :missing
CREATE ROLE {AGENTS_ROLE} NOLOGIN NOINHERIT;
\\endif
ALTER ROLE {AGENTS_ROLE} CREATEDB;
"""
_AGENTS_PER_DATABASE = f"""
ALTER SCHEMA public OWNER TO {AGENTS_ROLE};
GRANT CREATE, TEMPORARY ON DATABASE :"DBNAME" TO {AGENTS_ROLE};
ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO {AGENTS_ROLE};
ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO {AGENTS_ROLE};
ALTER DEFAULT PRIVILEGES GRANT ALL ON SCHEMAS TO {AGENTS_ROLE};
"""


def grant_agents(url: str, database: str) -> None:
    """Give the agents' role what agents need in `database` (see `_AGENTS_PER_DATABASE`)."""
    dsn = urlunsplit(urlsplit(url)._replace(path="/" + database))
    subprocess.run([str(bin_dir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", dsn],
                   input=_AGENTS_PER_DATABASE, text=True, check=True, capture_output=True, timeout=60)


def _prepare(url: str) -> None:
    subprocess.run([str(bin_dir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", url],
                   input=_AGENTS_SETUP, text=True, check=True, capture_output=True, timeout=60)
    for database in ("template1", "postgres"):
        grant_agents(url, database)


@pytest.fixture(scope="session")
def pg() -> Iterator[Postgres]:
    dsn = os.environ.get("DBPROXY_TEST_DSN")
    if dsn:
        _prepare(dsn)
        yield Postgres(dsn)
        return
    root = Path(tempfile.mkdtemp(prefix="dbproxy-test-pg-"))
    cluster = LocalCluster(root / "data", host="127.0.0.1", port=free_port())
    cluster.init()
    cluster.start()
    try:
        _prepare(cluster.url())
        yield Postgres(cluster.url(), cluster)
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


class RunningProxy:
    """A ProxyServer on a private event loop in a daemon thread."""

    def __init__(self, server: ProxyServer, loop: asyncio.AbstractEventLoop, thread: threading.Thread,
                 host: str, port: int, data_dir: Path) -> None:
        self.server = server
        self.loop = loop
        self.thread = thread
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self._tokens: dict[str, str] = {"admin": ADMIN_TOKEN}

    def token(self, reviewer: str = "admin") -> str:
        """The admin API token of `reviewer` (added to this proxy's reviewers on first use)."""
        if reviewer not in self._tokens:
            self._tokens[reviewer] = reviewers.add(self.data_dir, reviewer)
        return self._tokens[reviewer]

    def review_request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One admin-API request; a body's "reviewer" picks whose token makes it (and is not sent)."""
        body = dict(body) if body is not None else None
        reviewer = body.pop("reviewer", "admin") if body is not None else "admin"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.admin_url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token(reviewer)}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None

    @property
    def admin_url(self) -> str:
        assert self.server.admin_address is not None
        host, port = self.server.admin_address
        return f"http://{host}:{port}"

    def url(self, database: str = "postgres", user: str = AGENT, password: str | None = AGENT_PASSWORD,
            **query: str) -> str:
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}" + (f"?{q}" if q else "")

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        """Run a coroutine on the proxy's loop (to inspect or drive the server)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 1.0) -> None:
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.call(self.server.shutdown(grace), timeout=grace + 15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def env(self, database: str = "postgres", user: str = AGENT, password: str = AGENT_PASSWORD) -> dict[str, str]:
        """Environment for libpq tools (psql, pgbench) to reach the proxy."""
        return {**os.environ, "PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": user,
                "PGPASSWORD": password, "PGDATABASE": database, "PGSSLMODE": "prefer",
                "PGCONNECT_TIMEOUT": "10"}


#: One warm sandbox cluster for every proxy the suite starts (see the `sandbox_dir` fixture).
SANDBOX_DIR: dict[str, Path] = {}


@pytest.fixture(scope="session", autouse=True)
def sandbox_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the suite's local sandbox cluster lives; stopped at the end of the session."""
    d = tmp_path_factory.mktemp("sandbox")
    SANDBOX_DIR["path"] = d
    yield d
    for data in d.glob("pg*"):
        if data.is_dir() and (data / "PG_VERSION").exists():
            with contextlib.suppress(Exception):
                LocalCluster(data).stop(mode="immediate")


#: One key for the agents' upstream login passwords in every proxy the suite starts: proxies that
#: share an upstream must share it (as several production instances would), or each start would
#: reset the passwords the others use (they would repair their logins, slowly).
ROLE_KEY = os.urandom(32).hex()


def start_proxy(upstream_url: str, data_dir: Path, *, use_uvloop: bool = True, **overrides: Any) -> RunningProxy:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = data_dir / "upstream-roles.key"
    if not key.exists():
        key.write_text(ROLE_KEY + "\n")
        key.chmod(0o600)
    cli: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}",
        "data_dir": str(data_dir),
        "agent": [f"{AGENT}={AGENT_PASSWORD}"],
        "log_level": "warning",
        "admin": "127.0.0.1:0",
        "admin_token": ADMIN_TOKEN,
        # Existing suites test the transparent relay; hold-mode tests ask for mode="hold".
        "mode": "passthrough",
        # The suite's warm local sandbox; tests of `auto` and containers ask for them.
        "sandbox": "local",
    }
    if "path" in SANDBOX_DIR:
        cli["sandbox_dir"] = str(SANDBOX_DIR["path"])
    # `reload_settings`: a dict the test changes; the proxy's reload reads it (with the rest of
    # these settings) as `dbproxy serve` reads its config file again.
    reload_settings: dict[str, Any] | None = overrides.pop("reload_settings", None)
    cli.update(overrides)
    if "agents" in overrides:
        del cli["agent"]
    else:
        cli["agents"] = {AGENT: {"password": AGENT_PASSWORD, "databases": ["*"]}}
        del cli["agent"]
    settings = load_settings(None, cli, environ={})
    target = UpstreamTarget.parse(upstream_url)
    registry = build_registry(settings, announce=False)

    def reloader() -> Any:
        return load_settings(None, {**cli, **(reload_settings or {})}, environ={})

    server = ProxyServer(settings, target, registry, reloader=reloader if reload_settings is not None else None)
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        loop: asyncio.AbstractEventLoop
        try:
            import uvloop

            loop = uvloop.new_event_loop() if use_uvloop else asyncio.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        box["loop"] = loop
        try:
            box["addr"] = loop.run_until_complete(server.start())
        except BaseException as e:
            box["error"] = e
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name="dbproxy-test", daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in box:
        raise box["error"]
    host, port = box["addr"]
    return RunningProxy(server, box["loop"], thread, host, port, data_dir)


@pytest.fixture(scope="session")
def proxy(pg: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    p = start_proxy(pg.url, tmp_path_factory.mktemp("proxy-state"))
    yield p
    p.stop()


@pytest.fixture(scope="session")
def hold_proxy(pg: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    """A proxy whose agent is in hold mode (the product's default)."""
    p = start_proxy(pg.url, tmp_path_factory.mktemp("hold-state"), mode="hold")
    yield p
    p.stop()


@pytest.fixture
def make_proxy(pg: Postgres, tmp_path: Path) -> Iterator[Callable[..., RunningProxy]]:
    started: list[RunningProxy] = []

    def make(upstream: str | None = None, *, use_uvloop: bool = True, **overrides: Any) -> RunningProxy:
        p = start_proxy(upstream or pg.url, tmp_path / f"state{len(started)}", use_uvloop=use_uvloop, **overrides)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str
    args: list[str] = field(default_factory=list)


def run_tool(pg_bin: Path, tool: str, args: list[str], env: dict[str, str], *, input: str | None = None,
             timeout: float = 120) -> CommandResult:
    """Run psql/pgbench/... from the bundled binaries and capture its output."""
    cmd = [str(pg_bin / tool), *args]
    proc = subprocess.run(cmd, env=env, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    return CommandResult(proc.returncode, proc.stdout, proc.stderr, cmd)


@pytest.fixture
def psql(pg_bin: Path, proxy: RunningProxy) -> Callable[..., CommandResult]:
    """psql through the default proxy: psql("-c", "select 1") or psql(input=script)."""

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> CommandResult:
        return run_tool(pg_bin, "psql", ["-X", "-v", "ON_ERROR_STOP=1", *args], env or proxy.env(), input=input)

    return run


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A table name unique to this test (tests share one server)."""
    base = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]
    return f"t_{base}_{os.getpid()}"


def _admin_run(url: str, *sql: str) -> None:
    async def go() -> None:
        import asyncpg

        con = await asyncpg.connect(url)
        try:
            for s in sql:
                await con.execute(s)
        finally:
            await con.close()

    asyncio.run(go())


@pytest.fixture
def capture_db(pg: Postgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database with `dbproxy install` done (capture triggers, DDL event triggers), so
    that event triggers never touch the databases other tests use. Yields its superuser URL;
    sessions that connect with `server_settings={"dbproxy.capture": "on"}` are captured."""
    import asyncpg

    from dbproxy.undo.install import install

    name = "undo_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name.lower())[:40] \
        + "_" + os.urandom(3).hex()
    _admin_run(pg.url, f'CREATE DATABASE "{name}"')
    url = pg.dsn(name)

    async def do_install() -> None:
        con = await asyncpg.connect(url)
        try:
            await install(con)
        finally:
            await con.close()

    asyncio.run(do_install())
    try:
        yield url
    finally:
        _admin_run(pg.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

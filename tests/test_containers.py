"""Containers against a real Docker engine: the testcontainers sandbox backend's lifecycle (warm,
reused, replaced when it dies, removed with the proxy), `sandbox = "auto"` choosing it (and the
local cluster when no engine answers), the image it falls back to when the registry image cannot
be pulled, `dbproxy sandbox build-image`, and docker/Dockerfile with docker/compose.yaml: an
agent's write through the composed proxy is held, a reviewer commits it, and undo mode verifies
in the composed sandbox.

The verification cases themselves (the coverage list, wrong inverses, escapes) run on the
container backend in tests/test_sandbox_verify.py. Every container here uses the host's network
and listens on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from sandbox.container import BUILT_REPOSITORY, ContainerBackend, choose_image, docker_client, owner_id
from sandbox.image import BUILD_LABEL, VERSION_LABEL, Built, build_postgres, bundled_postgres, debian_mirror
from sandbox.pgcluster import free_port
from sandbox.verify import Candidate, Verifier
from tests.conftest import RunningProxy
from tests.docker_fixtures import BASE
from tests.test_sandbox_verify import agent_tx, upstream
from tests.test_undo_proxy import Agent, dbname, direct, journal_undo
from tests.test_verify_proxy import cli, make_acct

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def dbproxy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "dbproxy", *args, env=env)


# --- the backend's lifecycle ---------------------------------------------------------------------

async def test_dead_or_removed_container_is_replaced(capture_db: str, sandbox_images: list[Built]) -> None:
    """Killed under a verifier holding pooled connections, then removed outright: each time the
    next verification starts a new container, copies the schema into it again and verifies."""
    client = docker_client()
    backend = ContainerBackend(upstream_major=16, owner=f"pytest-dead-{os.getpid()}", stop_on_close=True)
    v = Verifier(backend, timeout=120)
    try:
        async with upstream(capture_db) as up:
            await up.execute("CREATE TABLE t (id int PRIMARY KEY, v int); "
                             "INSERT INTO t SELECT g, g FROM generate_series(1, 20) g")
            async with agent_tx(capture_db, "UPDATE t SET v = 0 WHERE id = 3") as agent:
                tx, candidate = agent.tx(), Candidate(agent.plan)
                first = await v.verify(up, capture_db, tx, candidate)
                warm = await v.verify(up, capture_db, tx, candidate)
                first_id = backend.container_id
                assert first_id is not None and warm.verified
                assert warm.timings_ms["schema"] < first.timings_ms["schema"] / 2  # reused, not copied again

                client.containers.get(first_id).kill()
                after_kill = await v.verify(up, capture_db, tx, candidate)
                second_id = backend.container_id

                client.containers.get(second_id).remove(force=True)
                after_remove = await v.verify(up, capture_db, tx, candidate)
                third_id = backend.container_id
    finally:
        await v.close()
    assert first.verified and after_kill.verified and after_remove.verified, (after_kill.summary(),
                                                                            after_remove.summary())
    assert after_kill.backend == after_remove.backend == "testcontainers"
    assert len({first_id, second_id, third_id}) == 3
    # The dead one was cleared away, and close() removed the last one: nothing is left running.
    assert client.containers.list(all=True, filters={"name": backend.container_name}) == []


def test_image_choice(sandbox_images: list[Built]) -> None:
    """The registry image when it is here; the one built here when it cannot be pulled."""
    client = docker_client()
    built = f"{BUILT_REPOSITORY}:16"
    assert choose_image(client, built, 16) == (built, "")
    image, why = choose_image(client, "registry.invalid/postgres:16", 16)
    assert image == built
    assert why.startswith("registry.invalid/postgres:16 could not be pulled (") and "built here" in why
    # The setting's {major} is the upstream's major version.
    assert ContainerBackend(upstream_major=15, image="mirror.example/pg:{major}-alpine").wanted == \
        "mirror.example/pg:15-alpine"
    assert ContainerBackend(upstream_major=14).wanted == "postgres:14"


# --- the proxy: auto, journal, stopped with it ---------------------------------------------------

def _verified_commit(proxy: RunningProxy, url: str, sql: str) -> dict[str, Any]:
    agent = Agent(proxy, dbname(url))
    try:
        before = int(direct(url, "SELECT coalesce(max(xid), 0) FROM dbproxy.undo_records")[0][0])
        agent.conn.execute(sql)
        assert not agent.held_ids(), agent.notices
    finally:
        agent.close()
    xid = int(direct(url, "SELECT max(xid) FROM dbproxy.undo_records")[0][0])
    assert xid != before
    return journal_undo(proxy, xid)


def _sandbox_containers(data_dir: Path) -> list[Any]:
    name = f"dbproxy-sandbox-{owner_id(str(data_dir.absolute()))}"
    return docker_client().containers.list(all=True, filters={"name": name})


def test_auto_verifies_in_a_container_and_stops_it_with_the_proxy(
        capture_db: str, make_proxy: Callable[..., RunningProxy], tmp_path: Path, sandbox_images: list[Built],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dbproxy")
    sandbox_dir = tmp_path / "sbx"
    make_acct(capture_db)
    proxy = make_proxy(capture_db, mode="undo", sandbox="auto", sandbox_dir=str(sandbox_dir))
    first = _verified_commit(proxy, capture_db, "UPDATE acct SET balance = 1 WHERE id = 1")
    [running] = _sandbox_containers(sandbox_dir)
    second = _verified_commit(proxy, capture_db, "DELETE FROM acct WHERE id = 2")
    assert [c.id for c in _sandbox_containers(sandbox_dir)] == [running.id]  # warm: the same container

    for e in (first, second):
        verdict = e["undo"]["verification"]  # type: ignore[index]
        assert verdict["status"] == "verified" and verdict["backend"] == "testcontainers", verdict
    chose = [r for r in caplog.records if r.getMessage() == "sandbox.auto"]
    assert chose and chose[0].fields["chose"] == "testcontainers", [r.getMessage() for r in caplog.records]
    shown = cli(proxy, tmp_path, "show", str(first["id"]))
    assert shown.returncode == 0 and "on testcontainers" in shown.stdout, shown.stdout + shown.stderr

    proxy.stop()
    assert _sandbox_containers(sandbox_dir) == []


def test_auto_without_a_docker_engine_uses_the_local_cluster(
        capture_db: str, make_proxy: Callable[..., RunningProxy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dbproxy")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    make_acct(capture_db)
    proxy = make_proxy(capture_db, mode="undo", sandbox="auto")
    e = _verified_commit(proxy, capture_db, "UPDATE acct SET balance = 2 WHERE id = 3")
    verdict = e["undo"]["verification"]  # type: ignore[index]
    assert verdict["status"] == "verified" and verdict["backend"] == "local", verdict
    [chose] = [r for r in caplog.records if r.getMessage() == "sandbox.auto"]
    assert chose.fields["chose"] == "local"
    assert "no Docker engine answers at unix://" in chose.fields["why"], chose.fields


# --- dbproxy sandbox build-image ------------------------------------------------------------------

def test_build_image(sandbox_images: list[Built]) -> None:
    """The PostgreSQL image builds from the bundled binaries (from scratch, no layer cache), its
    labels say what is in it, and its server runs; the base is Debian from this system's mirror;
    the command reuses what is built and reports mistakes in one line."""
    client = docker_client()
    _, _, version = bundled_postgres()
    built = build_postgres(client, base=BASE, rebuild=True, cache=False, say=lambda _: None)
    assert built.action == "built" and built.tag == f"{BUILT_REPOSITORY}:16"
    labels = client.images.get(built.tag).labels
    assert labels[VERSION_LABEL] == version and labels["org.dbproxy.postgres-major"] == "16" and labels[BUILD_LABEL]
    assert client.images.get(f"{BUILT_REPOSITORY}:{version}").id == client.images.get(built.tag).id
    out = client.containers.run(built.tag, ["postgres", "--version"], remove=True, network_mode="none")
    assert f"PostgreSQL) {version}" in out.decode()
    os_release = client.containers.run(BASE, ["sh", "-c", "cat /etc/os-release /etc/apt/sources.list"], remove=True,
                                       network_mode="none").decode()
    assert "bookworm" in os_release and debian_mirror() in os_release

    again = dbproxy("sandbox", "build-image")
    assert again.returncode == 0, again.stderr
    assert f"{BASE}: already there" in again.stdout and f"{BUILT_REPOSITORY}:16: already there" in again.stdout
    wrong = dbproxy("sandbox", "build-image", "--base", "nosuch/base:1")
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr.strip() == ("dbproxy: the base image nosuch/base:1 is not here; build it (without --base) "
                                    "or pull it first"), wrong.stderr


def test_build_image_without_an_engine(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    r = dbproxy("sandbox", "build-image", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("dbproxy: no Docker engine answers at unix://") and r.stderr.count("\n") == 1


# --- docker/Dockerfile and docker/compose.yaml ------------------------------------------------------

def _compose_command() -> list[str]:
    if run("docker-compose", "version").returncode == 0:
        return ["docker-compose"]
    return ["docker", "compose"]


class Compose:
    """`docker-compose -p NAME -f docker/compose.yaml` with free loopback ports and fresh secrets."""

    def __init__(self, proxy_image: str) -> None:
        self.project = f"dbproxytest{secrets.token_hex(4)}"
        self.ports = {k: free_port() for k in ("DB_PORT", "SANDBOX_PORT", "PROXY_PORT", "ADMIN_PORT")}
        self.secrets = {k: secrets.token_hex(12)
                        for k in ("POSTGRES_PASSWORD", "SANDBOX_PASSWORD", "AGENT_PASSWORD", "ADMIN_TOKEN")}
        self.env = {**os.environ, **{k: str(v) for k, v in self.ports.items()}, **self.secrets,
                    "POSTGRES_IMAGE": f"{BUILT_REPOSITORY}:16", "DBPROXY_IMAGE": proxy_image}

    def __call__(self, *args: str, mode: str = "hold", timeout: float = 180) -> subprocess.CompletedProcess[str]:
        cmd = [*_compose_command(), "-p", self.project, "-f", str(ROOT / "docker" / "compose.yaml"), *args]
        return run(*cmd, env={**self.env, "DBPROXY_MODE": mode}, timeout=timeout)

    def url(self, service: str, user: str, password_key: str, database: str = "app") -> str:
        port = self.ports[{"proxy": "PROXY_PORT", "db": "DB_PORT"}[service]]
        return f"postgresql://{user}:{self.secrets[password_key]}@127.0.0.1:{port}/{database}"

    def wait_for_proxy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url("proxy", "agent", "AGENT_PASSWORD"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise AssertionError("the composed proxy did not accept agents:\n" + self("logs").stdout) from None
                time.sleep(0.3)

    def review(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DBPROXY_ADMIN_TOKEN": self.secrets["ADMIN_TOKEN"], "COLUMNS": "200"}
        return dbproxy(*args, "--admin", f"127.0.0.1:{self.ports['ADMIN_PORT']}", env=env)


@pytest.fixture
def compose(proxy_image: str) -> Iterator[Compose]:
    c = Compose(proxy_image)
    try:
        yield c
    finally:
        c("down", "-v", "--timeout", "5")


def test_compose_holds_and_commits_then_verifies_undo_in_its_sandbox(compose: Compose, tmp_path: Path) -> None:
    up = compose("up", "-d", "--no-build")
    assert up.returncode == 0, up.stdout + up.stderr
    compose.wait_for_proxy()

    # An agent's write through the composed proxy is held: the database does not have it yet.
    notices: list[str] = []
    with psycopg.connect(compose.url("proxy", "agent", "AGENT_PASSWORD"), autocommit=True) as agent:
        agent.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        agent.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        agent.execute("INSERT INTO notes VALUES (1, 'from the agent')")
    assert any("held for review as #1" in n for n in notices), notices
    owner = compose.url("db", "postgres", "POSTGRES_PASSWORD")
    assert direct(owner, "SELECT to_regclass('public.notes') IS NULL") == [(True,)]

    # A reviewer commits it through the admin port on 127.0.0.1.
    pending = compose.review("pending")
    assert pending.returncode == 0 and "agent" in pending.stdout, pending.stdout + pending.stderr
    committed = compose.review("commit", "1")
    assert committed.returncode == 0 and "#1 committed by admin" in committed.stdout, \
        committed.stdout + committed.stderr
    assert direct(owner, "SELECT id, body FROM notes") == [(1, "from the agent")]

    # Undo mode: capture installed by the proxy's own role (db's superuser), the proxy restarted in
    # undo mode; an agent's UPDATE commits only after the inverse was verified in the composed
    # sandbox service.
    install = dbproxy("install", "--upstream", owner)
    assert install.returncode == 0, install.stdout + install.stderr
    again = compose("up", "-d", "--no-build", mode="undo")
    assert again.returncode == 0, again.stdout + again.stderr
    time.sleep(1)  # the old proxy container is being replaced
    compose.wait_for_proxy()
    with psycopg.connect(compose.url("proxy", "agent", "AGENT_PASSWORD"), autocommit=True) as agent:
        agent.execute("UPDATE notes SET body = 'changed' WHERE id = 1")
    assert direct(owner, "SELECT body FROM notes") == [("changed",)]
    shown = compose.review("show", "2")
    assert shown.returncode == 0, shown.stderr
    assert "verification: verified" in shown.stdout and "on server" in shown.stdout, shown.stdout
    undone = compose.review("undo", "2", "--reason", "trying undo")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert direct(owner, "SELECT body FROM notes") == [("from the agent",)]

    # The proxy ran as its unprivileged user, and nothing listens beyond 127.0.0.1.
    labels = [f"com.docker.compose.project={compose.project}", "com.docker.compose.service=dbproxy"]
    [proxy_container] = docker_client().containers.list(filters={"label": labels})
    assert proxy_container.attrs["Config"]["User"] == "dbproxy"
    assert proxy_container.attrs["HostConfig"]["NetworkMode"] == "host"


async def test_container_server_listens_on_loopback_only(container_backend: ContainerBackend) -> None:
    con = await asyncpg.connect(container_backend.url("postgres"))
    try:
        assert await con.fetchval("SHOW listen_addresses") == "127.0.0.1"
    finally:
        await con.close()
    inspect = docker_client().containers.get(container_backend.container_id).attrs
    assert inspect["HostConfig"]["NetworkMode"] == "host"

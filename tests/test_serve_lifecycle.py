"""`dbproxy serve` as a process: one proxy per data directory, no sandbox cluster outliving the
proxy, and a health check that says when the upstream or the journal is gone.

- A second `serve` on a data directory in use exits at once with code 2, naming the process that
  holds it, having touched nothing: the first keeps serving, nothing is installed, started or
  stopped, and no process is left behind.
- A lock file left by a proxy killed with `kill -9` does not block the next start (flock).
- The local sandbox cluster dies with its proxy, even a `kill -9`ed one; a start that finds one
  still running for a dead proxy stops it and starts its own.
- `/v1/health` answers 503 `degraded` with reasons while the upstream (and the journal in it) is
  down, and `ok` again once it is back.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sandbox.backends import LOCAL_SETTINGS
from sandbox.pgcluster import LocalCluster, free_port
from sandbox.watchdog import process_start_time
from tests.conftest import RunningProxy
from tests.test_cli_and_settings import DBPROXY, Served

#: These tests are about the clusters a proxy runs itself, so the sandbox is the local cluster
#: (the default `auto` would pick a container when a Docker engine answers).
LOCAL_SANDBOX = {**os.environ, "DBPROXY_SANDBOX": "local"}


def alive(pid: int | None) -> bool:
    return pid is not None and process_start_time(pid) is not None and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2:][:1] == "Z"


def wait_until(what: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.1)
    return what()


def sandbox_cluster(data: Path) -> LocalCluster:
    """The local sandbox cluster a proxy keeps in DATA_DIR/sandbox (PostgreSQL 16, the bundled one);
    the proxy starts it in the background, so this waits for it to be made."""
    root = data / "sandbox"
    assert wait_until(lambda: (root / "pg16.port").exists()), "no sandbox cluster was made"
    port = int((root / "pg16.port").read_text())
    return LocalCluster(root / "pg16", host=None, port=port, settings=LOCAL_SETTINGS)


def our_processes() -> set[int]:
    """The proxies, PostgreSQL servers and watchdogs of this test's data directories (their command
    lines name the directory)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    procs = [(int(pid), args) for pid, _, args in (line.strip().partition(" ") for line in out.splitlines())]
    return {pid for pid, args in procs if "dbproxy-lifecycle-" in args
            and any(k in args for k in (" serve ", "postgres -D ", "watchdog.py "))}


@pytest.fixture
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("dbproxy-lifecycle-")
    yield d / "state"
    for sub in ("postgres", "sandbox/pg16"):
        c = LocalCluster(d / "state" / sub)
        if c.is_running():
            c.stop(mode="immediate")


def test_second_serve_on_the_same_data_directory_is_refused(data: Path) -> None:
    first = Served(data, "--mode", "undo", env=LOCAL_SANDBOX)  # embedded upstream, capture installed, sandbox started
    try:
        sandbox = sandbox_cluster(data)
        assert wait_until(sandbox.is_running), "the sandbox cluster did not start"
        embedded_pid = LocalCluster(data / "postgres").postmaster_pid()
        sandbox_pid = sandbox.postmaster_pid()
        store = (data / "agents.json").stat().st_mtime_ns
        before = our_processes()

        second = subprocess.run([*DBPROXY, "serve", "--data-dir", str(data), "--mode", "undo",
                                 "--listen", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}"],
                                capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip() == (f"dbproxy: {data} is in use by process {first.proc.pid} (dbproxy serve, "
                                         f"started {_started(data)})"), second.stderr
        assert second.stdout == ""
        # Touched nothing: same clusters, same agent store, no new process.
        assert LocalCluster(data / "postgres").postmaster_pid() == embedded_pid and alive(embedded_pid)
        assert sandbox.postmaster_pid() == sandbox_pid and alive(sandbox_pid)
        assert (data / "agents.json").stat().st_mtime_ns == store
        assert our_processes() <= before
        # The first keeps serving.
        password = re.search(r"postgresql://agent:(\S+)@127\.0\.0\.1:\d+/postgres\n", first.output).group(1)  # type: ignore[union-attr]
        with psycopg.connect(f"postgresql://agent:{password}@127.0.0.1:{first.port}/postgres") as c:
            assert c.execute("select 1").fetchone() == (1,)
    finally:
        code, err = first.stop()
    assert code == 0, err
    # Stopped with the proxy: both clusters and their watchdogs.
    assert not LocalCluster(data / "postgres").is_running() and not sandbox_cluster(data).is_running()
    assert wait_until(lambda: not our_processes(), 15), our_processes()


def _started(data: Path) -> str:
    return next(line.split("=", 1)[1] for line in (data / "dbproxy.lock").read_text().splitlines()
                if line.startswith("started="))


def test_kill_9_leaves_no_sandbox_and_no_lock_behind(pg: Any, data: Path) -> None:
    env = {**LOCAL_SANDBOX, "DBPROXY_UPSTREAM": pg.url, "DBPROXY_AGENT": "bot=bot-secret"}
    first = Served(data, "--mode", "undo", env=env)
    sandbox = sandbox_cluster(data)
    assert wait_until(sandbox.is_running), "the sandbox cluster did not start"
    orphan = sandbox.postmaster_pid()
    first.proc.kill()  # kill -9: no chance to stop anything
    first.proc.communicate(timeout=30)
    assert wait_until(lambda: not alive(orphan), 40), "the sandbox cluster outlived its proxy"
    assert f"pid={first.proc.pid}" in (data / "dbproxy.lock").read_text()  # the stale lock file is still there

    second = Served(data, "--mode", "undo", env=env)  # ... and does not block a restart
    try:
        assert wait_until(lambda: sandbox_cluster(data).is_running())
        assert (data / "sandbox" / "pg16.owner").read_text().split()[0] == str(second.proc.pid)
    finally:
        code, err = second.stop()
    assert code == 0, err
    assert wait_until(lambda: not sandbox_cluster(data).is_running(), 40)


def test_a_stale_sandbox_cluster_is_stopped_at_start(pg: Any, data: Path) -> None:
    env = {**LOCAL_SANDBOX, "DBPROXY_UPSTREAM": pg.url, "DBPROXY_AGENT": "bot=bot-secret"}
    first = Served(data, "--mode", "undo", env=env)  # creates the sandbox cluster
    assert wait_until(sandbox_cluster(data).is_running)
    assert first.stop()[0] == 0
    stale = sandbox_cluster(data)
    assert not stale.is_running()
    # Started by a process that then ends without stopping it (as a killed proxy of an older
    # version, or one killed while its watchdog could not act, leaves it).
    start = ("import sys; from pathlib import Path; from sandbox.backends import LOCAL_SETTINGS; "
             "from sandbox.pgcluster import LocalCluster; "
             "LocalCluster(Path(sys.argv[1]), host=None, port=int(sys.argv[2]), settings=LOCAL_SETTINGS).start()")
    subprocess.run([sys.executable, "-c", start, str(stale.data_dir), str(stale.port)], check=True, timeout=120)
    assert stale.is_running() and not stale.owner_alive()
    stale_pid = stale.postmaster_pid()
    second = Served(data, "--mode", "undo", env=env)
    try:
        assert wait_until(lambda: not alive(stale_pid)), "the stale sandbox cluster was not stopped"
        assert wait_until(lambda: sandbox_cluster(data).is_running())
        assert sandbox_cluster(data).postmaster_pid() != stale_pid
    finally:
        assert second.stop()[0] == 0
    assert wait_until(lambda: not sandbox_cluster(data).is_running(), 40)


def health(proxy: RunningProxy) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(proxy.admin_url + "/v1/health", timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.fixture
def own_upstream(tmp_path: Path) -> Iterator[LocalCluster]:
    """A PostgreSQL of this test's own, to stop and start again."""
    cluster = LocalCluster(tmp_path / "upstream", host="127.0.0.1", port=free_port())
    cluster.init()
    cluster.start()
    yield cluster
    cluster.stop(mode="immediate")


def test_health_is_degraded_while_the_upstream_is_down(own_upstream: LocalCluster,
                                                       make_proxy: Callable[..., RunningProxy]) -> None:
    proxy = make_proxy(own_upstream.url(), mode="hold")
    assert health(proxy) == (200, {"status": "ok"})
    own_upstream.stop(mode="immediate")
    time.sleep(2.5)  # past the check's reuse window
    status, body = health(proxy)
    assert status == 503 and body["status"] == "degraded", body
    reasons = " | ".join(body["reasons"])
    assert f"the upstream at 127.0.0.1:{own_upstream.port} is unreachable" in reasons, reasons
    assert f"the journal database at 127.0.0.1:{own_upstream.port}" in reasons, reasons
    assert own_upstream.password not in json.dumps(body)
    own_upstream.start()
    assert wait_until(lambda: health(proxy) == (200, {"status": "ok"}), 20)


def test_a_clean_stop_leaves_a_lock_file_that_blocks_nothing(data: Path, pg: Any) -> None:
    """The lock file stays after a clean stop too; only the kernel's flock counts."""
    env = {**LOCAL_SANDBOX, "DBPROXY_UPSTREAM": pg.url, "DBPROXY_AGENT": "bot=bot-secret"}
    first = Served(data, env=env)
    assert first.stop()[0] == 0
    assert (data / "dbproxy.lock").exists()
    second = Served(data, env=env)
    second.proc.send_signal(signal.SIGINT)
    assert second.proc.wait(60) == 0

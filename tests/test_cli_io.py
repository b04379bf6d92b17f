"""The command line as a newcomer meets it: what `serve` writes where, the password file, one-line
errors for every input mistake, reading the journal with the proxy stopped, and `dbproxy psql`.

All through the real `dbproxy` command, against real proxies and real PostgreSQL.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sandbox.pgcluster import LocalCluster, free_port
from tests.conftest import ADMIN_TOKEN, Postgres, RunningProxy
from tests.test_cli_and_settings import DBPROXY, Served
from tests.test_hold import Agent, decide


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DBPROXY, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env=env if env is not None else _clean_env())


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("DBPROXY_"):
            del env[k]
    return env


def serve_on_a_terminal(data: Path, *extra: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """`dbproxy serve` with its stderr on a pseudo-terminal; returns the process and what it wrote
    there until it was listening."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*DBPROXY, "serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{free_port()}",
                             "--admin", f"127.0.0.1:{free_port()}", *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while b"proxy.listening" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
    finally:
        os.close(master)
    return proc, seen.decode(errors="replace")


def stop(proc: subprocess.Popen[Any]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def test_logs_are_text_on_a_terminal_and_json_otherwise(pg: Postgres, tmp_path: Path) -> None:
    env = {**_clean_env(), "DBPROXY_UPSTREAM": pg.url, "DBPROXY_AGENT": "bot=bot-secret", "DBPROXY_MODE": "passthrough"}
    proc, seen = serve_on_a_terminal(tmp_path / "a", env=env)
    try:
        lines = [line for line in seen.replace("\r", "").splitlines() if "proxy.listening" in line]
        assert lines, seen
        assert re.match(r"\d\d:\d\d:\d\d info\s+proxy\.listening address=127\.0\.0\.1:\d+ ", lines[0]), lines
        assert "{" not in seen  # no JSON on a terminal
    finally:
        assert stop(proc) == 0
    # Asked for JSON, a terminal gets JSON.
    proc, seen = serve_on_a_terminal(tmp_path / "b", "--log-format", "json", env=env)
    try:
        listening = next(line for line in seen.replace("\r", "").splitlines() if "proxy.listening" in line)
        assert json.loads(listening)["event"] == "proxy.listening"
    finally:
        assert stop(proc) == 0
    # Not a terminal (a pipe, a service manager): JSON lines.
    served = Served(tmp_path / "c", "--log-format", "auto", env=env)
    code, err = served.stop()
    assert code == 0
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "proxy.stopped" in events, err


def test_password_file_keeps_the_password_out_of_the_output(pg: Postgres, tmp_path: Path) -> None:
    data = tmp_path / "state"
    secret_file = tmp_path / "agent.password"
    env = {**_clean_env(), "DBPROXY_UPSTREAM": pg.url}
    served = Served(data, "--password-file", str(secret_file), env=env)
    try:
        password = secret_file.read_text().strip()
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert len(password) >= 20 and password not in served.output
        assert f"Its password is in {secret_file} (mode 600" in served.output, served.output
        with psycopg.connect(f"postgresql://agent:{password}@127.0.0.1:{served.port}/postgres") as c:
            assert c.execute("select 1").fetchone() == (1,)
    finally:
        code, err = served.stop()
    assert code == 0 and password not in err
    # `agent add` too; an existing file others could read becomes the owner's alone.
    other = tmp_path / "bot.password"
    other.write_text("old\n")
    other.chmod(0o644)
    added = run("agent", "add", "bot", "--password-file", str(other), "--data-dir", str(data))
    assert added.returncode == 0, added.stderr
    bot = other.read_text().strip()
    assert bot != "old" and bot not in added.stdout and stat.S_IMODE(other.stat().st_mode) == 0o600
    # A file that cannot be written: one line, exit 2, and no agent was created.
    bad = run("agent", "add", "nobody", "--password-file", str(tmp_path / "missing" / "pw"), "--data-dir", str(data))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert "nobody" not in run("agent", "list", "--data-dir", str(data)).stdout


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["pending", "--admin", "http://127.0.0.1"], {}, "must name a host and a port"),
    (["log"], {"DBPROXY_ADMIN": "ftp://127.0.0.1:6433"}, "speaks plain http://"),
    (["show", "1"], {"DBPROXY_ADMIN": "http://[::1"}, "not a valid URL"),
    (["show", "abc"], {}, "transaction id must be a positive integer"),
    (["log", "--limit", "0"], {}, "limit must be an integer from 1 to 1000"),
    (["serve", "--listen", "nonsense"], {}, "listen: address must look like HOST:PORT"),
    (["serve", "--max-sessions", "many"], {}, "argument --max-sessions: invalid int value"),
    (["pending"], {"DBPROXY_MAX_SESSIONS": "many", "DBPROXY_LISTEN": "x"},
     "invalid settings: listen: address must look like HOST:PORT, got 'x'; max_sessions:"),
    (["serve", "--upstream", "mysql://x@y/z"], {}, "upstream: must be a postgresql:// URL"),
    (["serve", "--data-dir", "/proc/dbproxy-cannot-be-here"], {}, "cannot use the data directory"),
    (["agent", "add", "x", "--data-dir", "/proc/dbproxy-cannot-be-here"], {}, "dbproxy: /proc/dbproxy-cannot-be-here"),
    (["install", "--upstream", "postgresql://u@127.0.0.1:notaport/db"], {}, "cannot connect to the upstream"),
    (["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    (["psql", "--data-dir", "/nonexistent/dbproxy"], {}, "has no embedded PostgreSQL"),
])
def test_input_errors_are_one_line_and_exit_2(argv: list[str], env: dict[str, str], message: str,
                                              tmp_path: Path) -> None:
    if "--data-dir" not in argv and argv[0] not in ("frobnicate",):
        argv = [*argv, "--data-dir", str(tmp_path)]
    r = run(*argv, env={**_clean_env(), **env})
    assert r.returncode == 2, (argv, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in r.stderr, r.stderr


def test_reading_the_journal_with_the_proxy_stopped_and_psql(tmp_path: Path) -> None:
    """Embedded PostgreSQL: `log` and `show` read the journal directly once the proxy is stopped
    (starting the embedded cluster for the read and stopping it after), refuse while a proxy holds
    the data directory, and `dbproxy psql` opens the embedded database either way."""
    data = tmp_path / "state"
    env = _clean_env()
    served = Served(data, env=env)
    admin = ["--admin", served.admin]
    try:
        password = re.search(r"postgresql://agent:(\S+)@127\.0\.0\.1:\d+/postgres\n", served.output).group(1)  # type: ignore[union-attr]
        with psycopg.connect(f"postgresql://agent:{password}@127.0.0.1:{served.port}/postgres", autocommit=True) as c:
            notices: list[str] = []
            c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            c.execute("create table kept (id int primary key, note text)")
            c.execute("insert into kept values (%s, %s)", (1, "postgresql://me:hunter2@db/x"))
        tx_id = int(re.search(r"#(\d+)", notices[0]).group(1))  # type: ignore[union-attr]
        assert run("commit", str(tx_id), *admin, "--data-dir", str(data), env=env).returncode == 0
        # While the proxy runs, `dbproxy psql` uses its cluster.
        q = run("psql", "--data-dir", str(data), "--", "-XAtc", "select note from kept", env=env)
        assert (q.returncode, q.stdout.strip()) == (0, "postgresql://me:hunter2@db/x"), q.stderr
        # A reader that cannot reach the API refuses to read behind a running proxy's back.
        closed = f"127.0.0.1:{free_port()}"
        busy = run("log", "--admin", closed, "--data-dir", str(data), env=env)
        assert busy.returncode == 2, busy.stdout
        assert f"{data} is in use by process {served.proc.pid}" in busy.stderr, busy.stderr
        assert "read through its review API" in busy.stderr and len(busy.stderr.strip().splitlines()) == 1
    finally:
        assert served.stop()[0] == 0
    embedded = LocalCluster(data / "postgres")
    assert not embedded.is_running()

    closed = f"127.0.0.1:{free_port()}"
    log = run("log", "--admin", closed, "--data-dir", str(data), env=env)
    assert log.returncode == 0, log.stderr
    assert re.search(rf"^\s*{tx_id}\s+agent\s+postgres\s+hold\s+committed\s", log.stdout, re.M), log.stdout
    assert f"cannot reach the review API at {closed}" in log.stderr and "directly (read-only)" in log.stderr
    shown = run("show", str(tx_id), "--admin", closed, "--data-dir", str(data), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "insert into kept values ($1, $2)" in shown.stdout
    assert "$1 = '1', $2 = 'postgresql://me:***@db/x'" in shown.stdout, shown.stdout
    assert "read from the journal directly" in shown.stdout
    as_json = json.loads(run("show", str(tx_id), "--json", "--admin", closed, "--data-dir", str(data),
                             env=env).stdout)
    assert as_json["transaction"]["outcome"] == "committed" and as_json["statements"][1]["params"][0] == "1"
    missing = run("show", "999", "--admin", closed, "--data-dir", str(data), env=env)
    assert missing.returncode == 1 and "no transaction #999" in missing.stderr
    assert not embedded.is_running()  # started for each read, stopped again
    assert not (data / "postgres.owner").exists()

    # With the proxy stopped, `dbproxy psql` starts the cluster for the session and stops it after.
    q = run("psql", "--data-dir", str(data), "--", "-XAtc", "select count(*) from dbproxy.transactions", env=env)
    assert q.returncode == 0 and int(q.stdout.strip()) >= 1, q.stderr
    assert not embedded.is_running()

    # The next proxy starts as usual: the readers left the data directory free.
    again = Served(data, env=env)
    assert again.stop()[0] == 0


def test_state_database_option_reads_a_journal_directly(hold_proxy: RunningProxy, pg: Postgres,
                                                        tmp_path: Path) -> None:
    a = Agent(hold_proxy)
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("create table if not exists direct_read (id int)")
    try:
        a.conn.execute("insert into direct_read values (%s)", (41,))
        [tx_id] = a.held_ids()
        env = {**_clean_env(), "DBPROXY_ADMIN_TOKEN": ADMIN_TOKEN}
        r = run("show", str(tx_id), "--state-database", pg.dsn(), "--data-dir", str(tmp_path / "none"), env=env)
        assert r.returncode == 0, r.stderr
        assert "insert into direct_read values ($1)" in r.stdout and "$1 = '41'" in r.stdout
        assert "pending" in r.stdout and "the journal says it is still pending" in r.stdout
        assert not (tmp_path / "none").exists()  # nothing created
        log = run("log", "--json", "--state-database", pg.dsn(), "--limit", "5", "--data-dir", str(tmp_path), env=env)
        assert tx_id in [t["id"] for t in json.loads(log.stdout)], log.stderr
        bad = run("log", "--state-database", "postgresql://nobody:x@127.0.0.1:1/db", "--data-dir", str(tmp_path),
                  env=env)
        assert bad.returncode == 2 and "cannot connect to the journal database at 127.0.0.1:1" in bad.stderr
        assert "x@" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    finally:
        a.close()
        decide(hold_proxy, tx_id, "rollback")
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute("drop table if exists direct_read")

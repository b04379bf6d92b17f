"""The `dbproxy` command as users run it, and the settings it reads.

`dbproxy serve` with no upstream runs the embedded PostgreSQL: the first start creates an agent
and prints its password once, data survives a restart, SIGTERM stops everything cleanly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from dbproxy.auth.agents import Verifier, load_store
from dbproxy.config.settings import SettingsError, load_settings
from sandbox.pgcluster import free_port

DBPROXY = [sys.executable, "-m", "dbproxy"]


class Served:
    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.admin = f"127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [*DBPROXY, "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{self.port}",
             "--admin", self.admin, "--log-format", "text", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or os.environ.copy(),
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"dbproxy exited early: {self.proc.stderr.read() if self.proc.stderr else ''}")
            self.lines.append(line)
            if "agent URL:" in line:
                return
        raise AssertionError("dbproxy did not start in time")

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


def test_serve_embedded_default_survives_restart(tmp_path: Path):
    data = tmp_path / "state"
    first = Served(data)
    try:
        match = re.search(r"postgresql://agent:(\S+)@127\.0\.0\.1:(\d+)/postgres\n", first.output)
        assert match, first.output
        password = match.group(1)
        url = f"postgresql://agent:{password}@127.0.0.1:{first.port}/postgres"
        notices: list[str] = []
        with psycopg.connect(url, autocommit=True) as conn:
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            conn.execute("create table kept (v text)")
            conn.execute("insert into kept values ('still here')")
            assert conn.execute("select version()").fetchone()[0].startswith("PostgreSQL 16")
        # Hold is the default mode: both statements wait in one pending transaction until a
        # reviewer commits it with the CLI (which finds the admin token in the data directory).
        held = {n.split("#")[1].split()[0] for n in notices if "held for review as #" in n}
        assert len(held) == 1, notices
        review = subprocess.run([*DBPROXY, "commit", held.pop(), "--data-dir", str(data), "--admin", first.admin],
                                capture_output=True, text=True, timeout=60, check=False)
        assert review.returncode == 0, review.stderr
        assert "committed" in review.stdout
    finally:
        code, err = first.stop()
    assert code == 0, err
    assert "proxy.stopped" in err
    assert password not in err  # never logged
    # Passwords are stored only as SCRAM verifiers, owner-only.
    store = data / "agents.json"
    assert oct(store.stat().st_mode & 0o777) == "0o600"
    assert password not in store.read_text()
    assert isinstance(load_store(data)["agent"], Verifier)
    # The embedded server listens on no TCP port; its socket directory is owner-only.
    conf = (data / "postgres" / "dbproxy.conf").read_text()
    assert "listen_addresses = ''" in conf

    second = Served(data)
    try:
        assert "password" not in second.output.lower()  # shown only on first start
        with psycopg.connect(url.replace(f":{first.port}/", f":{second.port}/")) as conn:
            assert conn.execute("select v from kept").fetchone() == ("still here",)
    finally:
        code, _ = second.stop()
    assert code == 0


def test_serve_with_upstream_from_environment(pg, tmp_path: Path):
    env = {**os.environ, "DBPROXY_UPSTREAM": pg.url, "DBPROXY_AGENT": "bot=bot-secret\nother=x"}
    served = Served(tmp_path / "s", env=env)
    try:
        assert "agents: bot, other" in served.output
        assert pg.password not in served.output
        with psycopg.connect(f"postgresql://bot:bot-secret@127.0.0.1:{served.port}/postgres") as conn:
            # Never as the proxy's own role: as the agents' role, logged in as the agent's own role.
            assert conn.execute("select current_user, session_user").fetchone() == ("dbproxy_agents",
                                                                                    "dbproxy_agent_bot")
    finally:
        code, err = served.stop()
    assert code == 0
    assert pg.password not in err


def test_serve_bad_settings_exit_2_with_a_readable_message(tmp_path: Path):
    proc = subprocess.run([*DBPROXY, "serve", "--listen", "nonsense", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "listen: address must look like HOST:PORT, got 'nonsense'" in proc.stderr


def test_agent_add_prints_password_once_and_stores_verifier(tmp_path: Path):
    proc = subprocess.run([*DBPROXY, "agent", "add", "reporter", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=True)
    password = re.search(r"password \(shown only this once\): (\S+)", proc.stdout).group(1)
    assert load_store(tmp_path)["reporter"].check_password(password)
    listed = subprocess.run([*DBPROXY, "agent", "list", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, check=True)
    assert "reporter" in listed.stdout
    subprocess.run([*DBPROXY, "agent", "remove", "reporter", "--data-dir", str(tmp_path)], check=True,
                   capture_output=True, timeout=60)
    assert "reporter" not in load_store(tmp_path)


# -- settings ----------------------------------------------------------------------------------


def test_precedence_file_then_env_then_cli(tmp_path: Path):
    cfg = tmp_path / "dbproxy.toml"
    cfg.write_text('listen = "127.0.0.1:7000"\nadmin = "127.0.0.1:7001"\nmax_sessions = 5\n')
    s = load_settings(cfg, {}, environ={"DBPROXY_ADMIN": "127.0.0.1:8001"})
    assert (s.listen, s.admin, s.max_sessions) == ("127.0.0.1:7000", "127.0.0.1:8001", 5)
    s = load_settings(cfg, {"listen": "0.0.0.0:9000"}, environ={"DBPROXY_LISTEN": "127.0.0.1:8000"})
    assert s.listen_address == ("0.0.0.0", 9000)


def test_config_file_with_credentials_must_be_private(tmp_path: Path):
    cfg = tmp_path / "dbproxy.toml"
    cfg.write_text('upstream = "postgresql://u:topsecret@db:5432/app"\n')
    cfg.chmod(0o644)
    with pytest.raises(SettingsError, match=r"chmod 600") as info:
        load_settings(cfg, {}, environ={})
    assert "topsecret" not in str(info.value)
    cfg.chmod(0o600)
    s = load_settings(cfg, {}, environ={})
    assert s.upstream is not None and "topsecret" not in repr(s)


def test_llm_settings_sources(tmp_path: Path):
    """`[llm]` in the file, `DBPROXY_LLM_*` over it, `OPENAI_*` only where neither says; a key in
    the file makes it a credentials file; the key never shows in repr."""
    assert load_settings(None, {}, environ={}).llm.api_key is None  # feature off by default
    s = load_settings(None, {}, environ={"OPENAI_API_KEY": "sk-env", "OPENAI_BASE_URL": "http://local:1/v1"})
    assert s.llm.api_key is not None and s.llm.api_key.get_secret_value() == "sk-env"
    assert s.llm.base_url == "http://local:1/v1" and "sk-env" not in repr(s)
    cfg = tmp_path / "dbproxy.toml"
    cfg.write_text('[llm]\nmodel = "llama3"\napi_key = "sk-file"\nmax_attempts = 2\n')
    cfg.chmod(0o644)
    with pytest.raises(SettingsError, match=r"chmod 600"):
        load_settings(cfg, {}, environ={})
    cfg.chmod(0o600)
    s = load_settings(cfg, {}, environ={"OPENAI_API_KEY": "sk-env", "DBPROXY_LLM_MODEL": "qwen"})
    assert s.llm.api_key is not None and s.llm.api_key.get_secret_value() == "sk-file"
    assert (s.llm.model, s.llm.max_attempts) == ("qwen", 2)
    with pytest.raises(SettingsError, match=r"llm.max_attempts"):
        load_settings(None, {}, environ={"DBPROXY_LLM_MAX_ATTEMPTS": "0"})


def test_sandbox_settings():
    """`auto` is the default; the container image comes from the environment; a backend name
    that does not exist is refused with the choices."""
    s = load_settings(None, {}, environ={})
    assert (s.sandbox, s.sandbox_image) == ("auto", None)
    s = load_settings(None, {}, environ={"DBPROXY_SANDBOX": "testcontainers",
                                         "DBPROXY_SANDBOX_IMAGE": "mirror.example/postgres:{major}"})
    assert (s.sandbox, s.sandbox_image) == ("testcontainers", "mirror.example/postgres:{major}")
    with pytest.raises(SettingsError, match=re.escape("sandbox: Input should be 'auto', 'local', 'server', "
                                                      "'testcontainers' or 'off'")):
        load_settings(None, {}, environ={"DBPROXY_SANDBOX": "docker"})


def test_agents_from_file_and_cli(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agents.a]\nverifier = "{Verifier.from_password("pw-a")}"\ndatabases = ["app"]\n')
    s = load_settings(cfg, {"agent": ["b=pw-b"]}, environ={})
    assert set(s.agents) == {"a", "b"}
    assert s.agents["a"].databases == ["app"]
    assert s.agents["b"].password is not None and s.agents["b"].password.get_secret_value() == "pw-b"


@pytest.mark.parametrize(
    ("cli", "env", "message"),
    [
        ({"listen": "localhost"}, {}, "listen: address must look like HOST:PORT"),
        ({"listen": "1.2.3.4:99999"}, {}, "port 99999 is out of range"),
        ({}, {"DBPROXY_MAX_SESSIONS": "zero"}, "max_sessions: Input should be a valid integer"),
        ({"upstream": "mysql://x@y/z"}, {}, "upstream: must be a postgresql:// URL"),
        ({"agent": ["justaname"]}, {}, "--agent expects NAME=PASSWORD"),
        ({}, {"DBPROXY_AGENT": "=pw"}, "DBPROXY_AGENT expects NAME=PASSWORD"),
        ({"log_level": "loud"}, {}, "log_level: Input should be"),
    ],
)
def test_validation_errors_are_readable(cli, env, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(None, cli, environ=env)


def test_unknown_config_key_is_named(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("lissten = '127.0.0.1:1'\n")
    with pytest.raises(SettingsError, match="lissten: unknown setting"):
        load_settings(cfg, {}, environ={})


def test_invalid_toml_is_reported(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("listen = \n")
    with pytest.raises(SettingsError, match="is not valid TOML"):
        load_settings(cfg, {}, environ={})


def test_serve_on_a_busy_port_exits_2(pg, tmp_path: Path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [*DBPROXY, "serve", "--upstream", pg.url, "--agent", "a=b", "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"cannot start on 127.0.0.1:{port}" in proc.stderr
    assert pg.password not in proc.stderr + proc.stdout


def test_killed_proxy_loses_nothing_held_and_says_so(pg, tmp_path: Path):
    """kill -9 with a transaction held: the upstream rolls it back (its connection is gone), the
    next start journals it as rolled back by restart, and the agent's next session is told."""
    data = tmp_path / "state"
    env = {**os.environ, "DBPROXY_UPSTREAM": pg.url, "DBPROXY_AGENT": "bot=bot-secret", "DBPROXY_MODE": "hold",
           "DBPROXY_ADMIN_TOKEN": "t0ken"}
    table = f"killed_{os.getpid()}"
    with psycopg.connect(pg.url, autocommit=True) as direct:
        direct.execute(f"create table {table} (v text)")
        first = Served(data, env=env)
        notices: list[str] = []
        with psycopg.connect(f"postgresql://bot:bot-secret@127.0.0.1:{first.port}/postgres", autocommit=True) as c:
            c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            c.execute(f"insert into {table} values ('held when killed')")
            held = re.search(r"held for review as #(\d+)", " ".join(notices))
            assert held, notices
            first.proc.kill()
            first.proc.communicate(timeout=30)
        tx_id = held.group(1)
        # The held transaction's backend sees its client gone and rolls back, releasing its locks.
        locks = "select count(*) from pg_locks where relation = %s::regclass"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and direct.execute(locks, (table,)).fetchone()[0]:
            time.sleep(0.1)
        assert direct.execute(locks, (table,)).fetchone() == (0,)
        assert direct.execute(f"select count(*) from {table}").fetchone() == (0,)
        second = Served(data, env=env)
        try:
            shown = subprocess.run([*DBPROXY, "show", tx_id, "--json", "--data-dir", str(data), "--admin",
                                    second.admin, "--admin-token", "t0ken"],
                                   capture_output=True, text=True, timeout=60, check=False)
            assert shown.returncode == 0, shown.stderr
            record = json.loads(shown.stdout)["transaction"]
            assert (record["outcome"], record["decided_by"]) == ("rolled back", "restart")
            told: list[str] = []
            with psycopg.connect(f"postgresql://bot:bot-secret@127.0.0.1:{second.port}/postgres") as c:
                c.add_notice_handler(lambda d: told.append(d.message_primary or ""))
                c.execute("select 1")
            assert any(f"#{tx_id} was rolled back because the proxy restarted" in n for n in told), told
        finally:
            second.stop()
            direct.execute(f"drop table {table}")

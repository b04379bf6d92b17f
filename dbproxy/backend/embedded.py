"""The embedded default upstream: a PostgreSQL cluster in the proxy's data directory.

`dbproxy serve` without `--upstream` runs one from the bundled binaries (`sandbox.pgcluster`).
It listens on a Unix socket only (no TCP port an agent could reach around the proxy) and requires
SCRAM with generated passwords that only the proxy reads. Data survives restarts.

Agents' sessions do not run as the cluster's superuser: functions and DO blocks run by a
superuser could act outside any transaction (server programs, server files), which hold mode
cannot stop. The proxy logs in as `dbproxy_agents`, an ordinary role that owns the `postgres`
database and its `public` schema; the superuser is used only to set that role up.

The cluster is tied to the process that starts it (`LocalCluster.start(watchdog=True)`): a proxy
that is killed does not leave it running. `running_for_people` gives a person (`dbproxy psql`, the
offline journal reader) the cluster while no proxy runs: under the data directory's lock, started
for as long as they need it and stopped again.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from dbproxy.config.datadir import DataDirBusy, DataDirLock, holder_of
from sandbox.pgcluster import ClusterError, LocalCluster, bin_dir

AGENT_ROLE = "dbproxy_agents"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.cluster = LocalCluster(Path(data_dir) / "postgres", host=None, port=5432)
        self.role_password_file = Path(data_dir) / "postgres.role.password"

    def start(self) -> None:
        self.cluster.init()
        self.cluster.start(watchdog=True)
        self._ensure_role()

    def exists(self) -> bool:
        return self.cluster.is_initialized()

    def stop(self) -> None:
        self.cluster.stop()

    def url(self) -> str:
        """Where the proxy sends agent sessions (the unprivileged role, never the superuser)."""
        pw = quote(self.role_password_file.read_text().strip(), safe="")
        return (f"postgresql://{AGENT_ROLE}:{pw}@/postgres?host={quote(str(self.cluster.socket_dir))}"
                f"&port={self.cluster.port}")

    def superuser_url(self) -> str:
        """For setting the cluster up (the agents' role, `dbproxy install`), never for agents."""
        return self.cluster.url()

    def _ensure_role(self) -> None:
        if not self.role_password_file.exists():
            fd = os.open(self.role_password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24) + "\n")
        password = self.role_password_file.read_text().strip()
        literal = "'" + password.replace("'", "''") + "'"
        sql = f"""
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{AGENT_ROLE}') AS missing \\gset
\\if :missing
CREATE ROLE {AGENT_ROLE} LOGIN NOSUPERUSER NOCREATEROLE NOREPLICATION;
\\endif
ALTER ROLE {AGENT_ROLE} PASSWORD {literal};
ALTER DATABASE postgres OWNER TO {AGENT_ROLE};
ALTER SCHEMA public OWNER TO {AGENT_ROLE};
"""
        proc = subprocess.run([str(bin_dir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", self.cluster.url()],
                              input=sql, capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode != 0:
            raise ClusterError(f"could not set up the {AGENT_ROLE} role: {proc.stderr.strip()}")


class NoEmbedded(Exception):
    """The data directory has no embedded PostgreSQL, or it cannot be reached; the message says why."""


@contextlib.contextmanager
def running_for_people(data_dir: Path, command: str, *, while_proxy_runs: bool) -> Iterator[EmbeddedPostgres]:
    """The embedded cluster of `data_dir`, running, for a person's command (`command` names it in
    the data directory's lock).

    While a proxy holds the data directory its cluster is running: with `while_proxy_runs` it is
    used as it is, otherwise DataDirBusy is raised (the proxy's API is the way then). With no proxy,
    the data directory's lock is taken for the duration; a cluster that is not running is started
    (tied to this process: it stops if this process is killed) and stopped again at the end."""
    embedded = EmbeddedPostgres(data_dir)
    if not embedded.exists():
        raise NoEmbedded(f"{data_dir} has no embedded PostgreSQL (it is created by the first `dbproxy serve` "
                         "without an upstream)")
    busy = holder_of(data_dir)
    lock = DataDirLock(data_dir, command)
    if busy is None:
        try:
            lock.acquire()
        except DataDirBusy as e:  # a proxy started just now
            busy = e
    if busy is not None:
        if not while_proxy_runs:
            raise busy
        if not embedded.cluster.is_running():
            raise NoEmbedded(f"{busy}, but its embedded PostgreSQL is not running (is it still starting?)")
        yield embedded
        return
    started = False
    try:
        if not embedded.cluster.is_running():
            embedded.cluster.start(watchdog=True)
            started = True
        yield embedded
    finally:
        if started:
            embedded.cluster.stop()
        lock.release()

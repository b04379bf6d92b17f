"""The embedded default upstream: a PostgreSQL cluster in the proxy's data directory.

`dbproxy serve` without `--upstream` runs one from the bundled binaries (`sandbox.pgcluster`).
It listens on a Unix socket only (no TCP port an agent could reach around the proxy) and requires
SCRAM with generated passwords that only the proxy reads. Data survives restarts.

Roles: the cluster's superuser is the proxy's own role (it owns the journal, the capture log and
the undo records, and installs capture). Agents never act as it: they act as `dbproxy_agents`, an
ordinary role that owns the `postgres` database and its `public` schema, through login roles of
their own (`dbproxy.backend.agent_roles`). Functions and DO blocks run by a superuser could act
outside any transaction (server programs, server files), which hold mode cannot stop.

Earlier versions logged agents in as `dbproxy_agents` itself, which then created and owned the
journal: `start` gives whatever `dbproxy_agents` owns in the `dbproxy` schema to the superuser, so
an upgraded data directory keeps its journal and the agents lose access to it.

The cluster is tied to the process that starts it (`LocalCluster.start(watchdog=True)`): a proxy
that is killed does not leave it running. `running_for_people` gives a person (`dbproxy psql`, the
offline journal reader) the cluster while no proxy runs: under the data directory's lock, started
for as long as they need it and stopped again.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from dbproxy.config.datadir import DataDirBusy, DataDirLock, holder_of
from sandbox.pgcluster import ClusterError, LocalCluster, bin_dir

AGENT_ROLE = "dbproxy_agents"

_SETUP_SQL = """
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {literal}) AS missing \\gset
\\if :missing
CREATE ROLE {ident} NOLOGIN NOINHERIT NOSUPERUSER NOCREATEROLE NOREPLICATION;
\\endif
ALTER ROLE {ident} NOLOGIN PASSWORD NULL;
ALTER DATABASE postgres OWNER TO {ident};
ALTER SCHEMA public OWNER TO {ident};
DO $adopt$
DECLARE o record;
BEGIN
    IF EXISTS (SELECT FROM pg_namespace WHERE nspname = 'dbproxy'
               AND nspowner = (SELECT oid FROM pg_roles WHERE rolname = {literal})) THEN
        EXECUTE format('ALTER SCHEMA dbproxy OWNER TO %I', current_user);
    END IF;
    FOR o IN SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'dbproxy' AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
               AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = {literal}) LOOP
        EXECUTE format('ALTER %s dbproxy.%I OWNER TO %I',
                       CASE o.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                      WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, o.relname, current_user);
    END LOOP;
    IF EXISTS (SELECT FROM pg_namespace WHERE nspname = 'dbproxy') THEN
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA dbproxy FROM %I', {literal});
        EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA dbproxy FROM %I', {literal});
        EXECUTE format('REVOKE CREATE ON SCHEMA dbproxy FROM %I', {literal});
    END IF;
END
$adopt$;
"""


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, agent_role: str = AGENT_ROLE) -> None:
        self.agent_role = agent_role
        self.cluster = LocalCluster(Path(data_dir) / "postgres", host=None, port=5432)
        # Where earlier versions kept the password of the agents' role, which no longer logs in.
        self._old_role_password = Path(data_dir) / "postgres.role.password"

    def start(self) -> None:
        self.cluster.init()
        self.cluster.start(watchdog=True)
        self._set_up_roles()

    def exists(self) -> bool:
        return self.cluster.is_initialized()

    def stop(self) -> None:
        self.cluster.stop()

    def url(self) -> str:
        """The proxy's own role (the cluster's superuser): never given to agents, who log in as
        roles of their own (`dbproxy.backend.agent_roles`)."""
        return self.cluster.url()

    def _set_up_roles(self) -> None:
        role = self.agent_role
        sql = _SETUP_SQL.format(role=role, ident='"' + role.replace('"', '""') + '"',
                                literal="'" + role.replace("'", "''") + "'")
        proc = subprocess.run([str(bin_dir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", self.cluster.url()],
                              input=sql, capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode != 0:
            raise ClusterError(f"could not set up the {role} role: {proc.stderr.strip()}")
        self._old_role_password.unlink(missing_ok=True)


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

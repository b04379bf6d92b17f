"""The embedded default upstream: a PostgreSQL cluster in the proxy's data directory.

`dbproxy serve` without `--upstream` runs one from the bundled binaries (`sandbox.pgcluster`).
It listens on a Unix socket only (no TCP port an agent could reach around the proxy) and requires
SCRAM with generated passwords that only the proxy reads. Data survives restarts.

Agents' sessions do not run as the cluster's superuser: functions and DO blocks run by a
superuser could act outside any transaction (server programs, server files), which hold mode
cannot stop. The proxy logs in as `dbproxy_agents`, an ordinary role that owns the `postgres`
database and its `public` schema; the superuser is used only to set that role up.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path
from urllib.parse import quote

from sandbox.pgcluster import ClusterError, LocalCluster, bin_dir

AGENT_ROLE = "dbproxy_agents"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.cluster = LocalCluster(Path(data_dir) / "postgres", host=None, port=5432)
        self.role_password_file = Path(data_dir) / "postgres.role.password"

    def start(self) -> None:
        self.cluster.init()
        self.cluster.start()
        self._ensure_role()

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

"""The embedded default upstream: a PostgreSQL cluster in the proxy's data directory.

`dbproxy serve` without `--upstream` runs one from the bundled binaries (`sandbox.pgcluster`).
It listens on a Unix socket only (no TCP port an agent could reach around the proxy) and requires
SCRAM with a generated superuser password that only the proxy reads. Data survives restarts.
"""

from __future__ import annotations

from pathlib import Path

from sandbox.pgcluster import LocalCluster


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.cluster = LocalCluster(Path(data_dir) / "postgres", host=None, port=5432)

    def start(self) -> None:
        self.cluster.init()
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()

    def url(self) -> str:
        return self.cluster.url("postgres", tcp=False)

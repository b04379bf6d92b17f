"""A local PostgreSQL cluster run from bundled binaries.

One small class, `LocalCluster`, that can `initdb`, start, stop and describe a cluster in a data
directory. It is what the proxy's embedded default runs on, what the `local` sandbox backend will
keep warm, and what the test suite starts. The binaries come from the `pgserver` wheel (PostgreSQL
16, no system install needed); `DBPROXY_PG_BIN` points at another `bin/` directory instead.

PostgreSQL refuses to run as root. When we are root (containers, CI), the cluster runs as a
dedicated system user (`dbproxy-pg`), created on first use, and the data directory is owned by it.

The process that starts a cluster is written to `<data_dir>.owner`. A cluster started with
`watchdog=True` does not outlive that process: a small watchdog process (`sandbox/watchdog.py`),
started just before the postmaster, stops it when the process ends, however it ends. Such a start
that finds the cluster already running for a process that is gone (a stale cluster) stops it and
starts afresh; one running for a live process (another user of a shared sandbox) is used as it is.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from sandbox.watchdog import STAND_DOWN, process_start_time

SYSTEM_USER = "dbproxy-pg"
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.NNNNN"


class ClusterError(RuntimeError):
    """initdb, start or stop failed; the message includes the server log's tail."""


def bin_dir() -> Path:
    """Directory holding initdb, pg_ctl, postgres, psql and pgbench."""
    override = os.environ.get("DBPROXY_PG_BIN")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError("the pgserver package is not installed and DBPROXY_PG_BIN is not set")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LocalCluster:
    """A PostgreSQL cluster in `data_dir`.

    `host`: TCP address to listen on, or None for Unix socket only. The superuser's password is
    generated at init and kept in `data_dir/../superuser.password` (owner-only); the server
    requires SCRAM for every connection, local ones included.
    """

    data_dir: Path
    host: str | None = None
    port: int = 5432
    superuser: str = "postgres"
    settings: dict[str, str] | None = None
    bin: Path | None = None  # another PostgreSQL's bin/ (e.g. to match a server's major version)
    _watchdog: tuple[subprocess.Popen[bytes], int] | None = field(default=None, init=False, repr=False)
    _owner_token: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        self._run_as = _service_user()

    # -- paths and identity ---------------------------------------------------------------

    @property
    def password_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.password"

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    @property
    def socket_dir(self) -> Path:
        preferred = self.data_dir.parent / f"{self.data_dir.name}.run"
        if len(str(preferred)) <= _SOCKET_PATH_MAX:
            return preferred
        link = self.data_dir.parent / f"{self.data_dir.name}.sockdir"
        if link.exists():
            return Path(link.read_text().strip())
        short = Path(tempfile.mkdtemp(prefix="dbproxy-pg-"))
        link.write_text(str(short))
        return short

    def url(self, database: str = "postgres", *, tcp: bool | None = None) -> str:
        """A libpq-style URL with the superuser's password (never give this to an agent)."""
        user = quote(self.superuser, safe="")
        pw = quote(self.password, safe="")
        db = quote(database, safe="")
        if tcp or (tcp is None and self.host):
            return f"postgresql://{user}:{pw}@{self.host}:{self.port}/{db}"
        return f"postgresql://{user}:{pw}@/{db}?host={quote(str(self.socket_dir))}&port={self.port}"

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    # -- lifecycle ------------------------------------------------------------------------

    def init(self) -> None:
        """initdb with SCRAM everywhere and a generated superuser password (idempotent)."""
        if self.is_initialized():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            _allow_traversal(self.data_dir.parent)
            _allow_traversal(self.bin or bin_dir())
        password = secrets.token_urlsafe(24)
        self.password_file.write_text(password + "\n")
        os.chmod(self.password_file, 0o600)
        self._own(self.data_dir)
        with tempfile.NamedTemporaryFile("w", delete=False, dir=self.data_dir.parent) as pw:
            pw.write(password + "\n")
        try:
            self._own(Path(pw.name), mode=0o600)
            self._run(
                "initdb", "-D", str(self.data_dir), "-U", self.superuser, "--pwfile", pw.name,
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
            )
        finally:
            os.unlink(pw.name)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\ninclude_if_exists = 'dbproxy.conf'\n")

    @property
    def owner_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.owner"

    def owner_alive(self) -> bool:
        """Is the process that started the running cluster still there? (False when no start
        recorded one: a cluster left by an older version, or by a process that is gone.)"""
        try:
            pid_s, start, *_ = self.owner_file.read_text().split()
            return process_start_time(int(pid_s)) == start
        except (OSError, ValueError):
            return False

    def start(self, timeout: float = 60, *, watchdog: bool = False, options: str | None = None) -> None:
        """Start the server (no-op when it runs); this process is recorded as its owner. `watchdog`:
        tie its life to this process (see the module docstring); a running cluster whose owner is
        gone is stopped first. `options`: extra `postgres` command-line options for this run only
        (never written to the configuration)."""
        if watchdog and self.is_running() and not self.owner_alive():
            self.stop()  # stale: left by a process that died without stopping it
        if self.is_running():
            return
        sock = self.socket_dir
        sock.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            _allow_traversal(sock.parent)
        self._own(sock, mode=0o700)
        conf = {
            "listen_addresses": f"'{self.host or ''}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{sock}'",
            "max_connections": "200",
            "fsync": "on",
        }
        conf.update(self.settings or {})
        conf_path = self.data_dir / "dbproxy.conf"
        conf_path.write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
        self._own(conf_path, mode=0o600)
        log = self.data_dir / "server.log"
        self._own_it(watchdog)  # first: a death while the server starts is covered too
        try:
            self._run(
                "pg_ctl", "start", "-w", "-t", str(int(timeout)), "-D", str(self.data_dir),
                "-l", str(log), *(("-o", options) if options else ()),
            )
        except ClusterError as e:
            self._disown()
            raise ClusterError(f"{e}\n--- server log ---\n{self.log_tail()}") from None

    def _own_it(self, watchdog: bool) -> None:
        """Record this process as the owner (and, with `watchdog`, start the watchdog)."""
        me = process_start_time(os.getpid())
        if me is None:
            return  # no /proc: no owner to record; the cluster is stopped by `stop()` only
        self._disown()
        if watchdog:
            read_end, write_end = os.pipe()  # not inheritable: no other child of ours holds the write end
            try:
                proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).with_name("watchdog.py")), str(self.data_dir)],
                    stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True, close_fds=True)
            except OSError:
                os.close(write_end)
                raise
            finally:
                os.close(read_end)
            self._watchdog = (proc, write_end)
        # The token tells this start from another one of the same process (one cluster shared by
        # several users in one process): only the start that wrote the file removes it.
        self._owner_token = secrets.token_hex(8)
        self.owner_file.write_text(f"{os.getpid()} {me} {self._owner_token}\n")

    def _disown(self) -> None:
        """The cluster was stopped here (or never started): the watchdog stands down, the owner
        record goes."""
        watched, self._watchdog = self._watchdog, None
        if watched is not None:
            proc, write_end = watched
            with contextlib.suppress(OSError):
                os.write(write_end, STAND_DOWN)
            os.close(write_end)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        token, self._owner_token = self._owner_token, None
        if token is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                if self.owner_file.read_text().split()[2] == token:
                    self.owner_file.unlink()

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data_dir))
        self._disown()

    def is_running(self) -> bool:
        pid = self.postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (FileNotFoundError, ValueError):
            return None

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.password_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.data_dir / "server.log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [str((self.bin or bin_dir()) / "pg_isready"), "-q", "-h", str(self.socket_dir), "-p", str(self.port)],
                check=False,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        raise ClusterError(f"server did not become ready in {timeout}s\n{self.log_tail()}")

    # -- helpers --------------------------------------------------------------------------

    def _run(self, program: str, *args: str) -> None:
        cmd = [str((self.bin or bin_dir()) / program), *args]
        identity: dict[str, object] = {}
        if self._run_as is not None:
            # Again each time: something may have taken the search bit away since (pytest, for one,
            # resets /tmp/pytest-of-USER to 0700 whenever a session starts).
            _allow_traversal(self.data_dir.parent)
            # Drop root's groups too: a process left in group root gets a directory's group
            # bits (often none) instead of the "others" search bit we granted.
            entry = pwd.getpwnam(self._run_as)
            identity = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=False, cwd=self.data_dir.parent,
            env={**os.environ, "LC_ALL": "C"}, **identity,  # type: ignore[call-overload]
        )
        if proc.returncode != 0:
            out = (proc.stderr or proc.stdout).strip()
            raise ClusterError(f"{program} failed (exit {proc.returncode}): {out}")

    def _own(self, path: Path, mode: int | None = None) -> None:
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        if mode is not None:
            os.chmod(path, mode)
        elif path.is_dir():
            os.chmod(path, 0o700)


def _service_user() -> str | None:
    """The OS user PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True, capture_output=True,
        )
    return SYSTEM_USER


def _allow_traversal(path: Path) -> None:
    """Give others the search (x) bit on `path` and its parents so the service user can reach
    the binaries and the data directory; read permission is not granted."""
    for p in [path, *path.parents]:
        try:
            st = p.stat()
        except OSError:
            continue
        if not st.st_mode & 0o001:
            os.chmod(p, st.st_mode | 0o001)

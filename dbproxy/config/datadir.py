"""One data directory, one proxy: the lock on `DATA_DIR/dbproxy.lock`.

Two proxies on one data directory would fight over its embedded PostgreSQL, its sandbox cluster
and its agent store, and each would "recover" the other's held transactions as rolled back. So
`dbproxy serve` takes an exclusive `flock` on a lock file in the data directory and holds it for
the life of the process; so does every command that starts the embedded PostgreSQL without a
proxy (the offline journal reader, `dbproxy psql` while the proxy is stopped). The kernel drops
the lock when its process ends, however it ends: a lock file left behind by a killed process does
not block the next start (no pid-file guessing).

The holder writes its pid, start time and command into the file, so the one refused can say who
holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

LOCK_FILE = "dbproxy.lock"


class DataDirBusy(Exception):
    """Another process holds the data directory; the message names it."""

    def __init__(self, data_dir: Path, holder: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.pid = int(holder["pid"]) if holder.get("pid", "").isdigit() else None
        self.command = holder.get("command") or None
        who = f"process {self.pid}" if self.pid is not None else "another process"
        facts = [x for x in (holder.get("command"), f"started {holder['started']}" if holder.get("started") else None)
                 if x]
        super().__init__(f"{data_dir} is in use by {who}" + (f" ({', '.join(facts)})" if facts else ""))


class DataDirLock:
    """An exclusive, non-blocking flock on the data directory (see the module docstring).

    `acquire()` creates the directory (mode 700) when it does not exist, and raises DataDirBusy
    at once when another process holds the lock. Released by `release()`, by leaving the `with`
    block, or by the process ending."""

    def __init__(self, data_dir: Path, command: str) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        if self._fd is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.read(fd, 4096))
            os.close(fd)
            raise DataDirBusy(self.data_dir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()}\nstarted={started}\ncommand={self.command}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the only descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def holder_of(data_dir: Path) -> DataDirBusy | None:
    """Who holds the data directory's lock right now (None: nobody; the directory is free)."""
    path = Path(data_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        try:
            # A shared lock is enough to ask: it is refused while someone holds the exclusive one.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return DataDirBusy(Path(data_dir), _parse(os.read(fd, 4096)))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _parse(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out

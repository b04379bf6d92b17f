"""Stop a PostgreSQL cluster when the process that started it ends, however it ends.

    python watchdog.py DATA_DIR        (stdin: the read end of a pipe)

`LocalCluster.start(watchdog=True)` runs this script, in a session of its own, *before* it starts
the postmaster, with its stdin the read end of a pipe whose only write end the starting process
keeps. That process stops the cluster itself when it can and then writes `STAND_DOWN` to the
pipe: this script exits. When instead it dies (`kill -9`, an OOM kill, a supervisor's hard stop)
the kernel closes the write end, the read here returns end-of-file without `STAND_DOWN`, and the
postmaster of DATA_DIR gets SIGINT (PostgreSQL's fast shutdown: open transactions roll back, a
checkpoint is written), then SIGQUIT if it is still there after `GRACE` seconds. Only a postmaster
started after this script (so: the one it was started for) is signalled; one still starting is
waited for a few seconds. No PostgreSQL feature does this on its own: a postmaster whose parent
dies simply carries on.

Standard library only, and run as a file (not a module), so it needs nothing on `sys.path`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

GRACE = 30.0
#: How long a postmaster that is still starting (no postmaster.pid yet) is waited for.
STARTING = 10.0
STAND_DOWN = b"x"


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or parentheses.
    return stat[stat.rfind(")") + 2:].split()


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot, /proc/PID/stat field 22), or None
    when there is no such process. It tells a pid apart from a later process given the same pid."""
    fields = _stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def running(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting to be reaped has)."""
    fields = _stat(pid)
    return fields is not None and fields[:1] != ["Z"]


def _postmaster(data_dir: Path, since: int) -> int | None:
    """The pid of DATA_DIR's postmaster when it is a postgres process started at or after `since`."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            program = f.read().split(b"\0", 1)[0]
    except (OSError, ValueError):
        return None
    start = process_start_time(pid)
    if not program.endswith(b"postgres") or start is None or int(start) < since:
        return None
    return pid


def main(argv: list[str]) -> int:
    data_dir = Path(argv[1])
    me = process_start_time(os.getpid())
    since = int(me) if me is not None else 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the proxy, not for us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        try:
            chunk = os.read(0, 64)
        except InterruptedError:
            continue
        except OSError:
            break
        if not chunk:
            break
        if STAND_DOWN in chunk:
            return 0  # the owner stopped the cluster itself
    deadline = time.monotonic() + STARTING
    pid = _postmaster(data_dir, since)
    while pid is None and time.monotonic() < deadline:
        time.sleep(0.1)  # the owner died while the postmaster was starting: let it write its pid file
        pid = _postmaster(data_dir, since)
    if pid is None:
        return 0
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline and running(pid):
        time.sleep(0.1)
    if running(pid):
        os.kill(pid, signal.SIGQUIT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

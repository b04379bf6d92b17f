"""How much throughput does putting dbproxy between a client and PostgreSQL cost?

Run:  python -m benchmarks.proxy_overhead [--duration SECONDS] [--scale N] [--clients 1,8]
          [--modes simple,prepared] [--workloads select-only,tpcb] [--rounds N] [--out DIR]
          [--targets direct,proxy,hold,null-relay,pgbouncer] [--upstream URL]
          [--pgbouncer/--no-pgbouncer] [--null-relay/--no-null-relay] [--reviewer-poll-ms MS]

What it does: starts a throw-away PostgreSQL 16 (the pgserver wheel's binaries, TCP on 127.0.0.1)
unless `--upstream URL` names one, fills it with `pgbench -i -s SCALE`, starts `dbproxy serve` as
a separate process in front of it in pass-through mode, a second one in hold mode, and, when
`pgbouncer` is installed, a PgBouncer in session pool mode in front of the same server. Then, for
every combination of workload, protocol and client count, it runs pgbench for `--duration`
seconds against each target:

- direct:     pgbench -> PostgreSQL
- proxy:      pgbench -> dbproxy (mode = "passthrough") -> PostgreSQL; writing transactions are
              journaled (the default)
- proxy-unjournaled: the same with `journal_passthrough = false` (the relay's own cost)
- hold:       pgbench -> dbproxy (mode = "hold") -> PostgreSQL, with a scripted reviewer
              (`benchmarks.reviewer`) committing every held transaction through the review API
              as soon as the proxy lets it
- undo:       pgbench -> dbproxy (mode = "undo") -> PostgreSQL after `dbproxy install`: every
              transaction commits with its captured row images and its inverse, verified in the
              sandbox (the verification cache makes a repeated statement shape cheap). Once
              capture is installed, the other targets' sessions run with its (inactive) triggers
- policy:     an undo-mode proxy with rules allowing `insert, update` on `pgbench_*` and `read`
              on `*`: every pgbench transaction commits through the policy gate with its inverse
- null-relay: pgbench -> a no-logic uvloop TCP relay -> PostgreSQL (the floor for a Python hop)
- pgbouncer:  pgbench -> PgBouncer -> PostgreSQL (a reference point: what a mature C proxy costs)

Hold mode: every agent transaction that wrote is held (its upstream transaction stays open) until
a reviewer commits it, and the session's next transactions join the same pending chain until
then. The reviewer polls `GET /v1/pending` and POSTs `/v1/transactions/{id}/commit` for every id;
a commit is only possible between two agent transactions of that session (409 otherwise, and the
reviewer asks again). So one reviewer commit carries a chain of agent transactions, and with more
than one client the held chains' row locks (TPC-B updates one of only `--scale` pgbench_branches
rows per transaction) make the clients wait for each other until the reviewer commits; since a
chain's own agent is usually waiting too, these waits become deadlocks that PostgreSQL breaks
after `deadlock_timeout`. The hold rows' extra table has the reviewer's commits, agent
transactions per commit (pgbench transactions / commits, and the same read back from the
journal), 409 answers and pgbench's failed (deadlocked) transactions, which hold runs tolerate
(pgbench runs with `--failures-detailed` there) and report instead of stopping the benchmark.

pgbench always runs with `-n`: before every run the benchmark itself does what pgbench would
(VACUUM pgbench_branches and pgbench_tellers, TRUNCATE pgbench_history) over a direct
connection, so every target starts from the same state. (Through the hold proxy pgbench could
not do it: VACUUM is refused in hold mode and the TRUNCATE would be held with an ACCESS EXCLUSIVE
lock.) After a hold run, the benchmark waits until the reviewer has committed every chain the
disconnected clients left pending, so no held lock outlives the run.

Workloads: `select-only` is `pgbench -S`, one primary-key SELECT per transaction, so almost all
of its time is round trips and the proxy's per-message cost dominates: the worst case for a proxy.
`tpcb` is pgbench's default TPC-B-like script (three UPDATEs, a SELECT and an INSERT in a
transaction), where the server does more work per round trip and the proxy matters less.
Protocols: `-M simple` (one Query message per statement) and `-M prepared` (extended protocol
with statements prepared once: Bind/Execute/Sync per statement). `-j` is min(clients, 2).

The targets run interleaved, round after round (`--rounds`, default 2; the order is reversed
every other round), and each row reports the median over the rounds, so machine drift (caches,
CPU frequency, noisy neighbours) hits all targets alike.

How to read the table: `TPS` is pgbench's "tps ... (without initial connection time)", `±` half
the range of the rounds' TPS around their median (if it is large, use more `--rounds` or a longer
`--duration`), `latency ms` pgbench's "latency average", `vs direct` the row's TPS divided by the
direct TPS of the same workload/mode/clients, `vs proxy` (hold rows) divided by the pass-through
proxy's TPS of the same case. Proxy rows are checked against goals, whatever the
workload: >= 80% of direct with one client (latency-bound: every round trip pays the extra hop)
and >= 60% with more clients (the proxy then also competes with PostgreSQL and pgbench for CPU),
marked PASS or MISS. The PgBouncer rows calibrate those goals: what any extra hop costs on this
machine. Numbers are only comparable on the same machine; the ratios are what matters. The table
is printed and written to `--out` (default `benchmarks/results/`) as `results.md`, with the raw
per-round numbers and machine details in `results.json`.

Secrets (the superuser password, the benchmark agent's password, the hold proxy's admin token)
reach the proxy through its environment (`DBPROXY_UPSTREAM`, `DBPROXY_AGENT`,
`DBPROXY_ADMIN_TOKEN`) rather than its command line, so they do not
show in `ps`. With `--upstream`, note that `pgbench -i` drops and recreates the pgbench_* tables
in that database. Every process the benchmark starts is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sandbox.pgcluster import SYSTEM_USER, ClusterError, LocalCluster, bin_dir, free_port

from . import results_dir
from .reviewer import Reviewer

WORKLOADS: dict[str, list[str]] = {"select-only": ["-S"], "tpcb": []}
WORKLOAD_ALIASES = {"tpcb-like": "tpcb"}  # pgbench's own name for its default script
MODES = ("simple", "extended", "prepared")
TARGETS = ("direct", "proxy", "proxy-unjournaled", "hold", "undo", "policy", "null-relay", "pgbouncer")
#: Targets whose rows are compared with the pass-through proxy (`vs proxy`).
AGENT_MODES = ("hold", "undo", "policy")
#: Share of the pass-through proxy's TPS the agent modes should reach. Reads (select-only) should
#: cost hold and undo mode little more than pass-through; with writes, undo mode (trigger-based
#: capture tools report about -47%) and the policy target >= 70%, hold mode (a scripted reviewer
#: commits every chain) >= 60%.
VS_PROXY_GOALS: dict[tuple[str, str], float] = {
    ("hold", "select-only"): 0.85, ("undo", "select-only"): 0.85, ("policy", "select-only"): 0.85,
    ("hold", "tpcb"): 0.60, ("undo", "tpcb"): 0.70, ("policy", "tpcb"): 0.70,
}
#: The policy target's rules (an undo-mode proxy): what pgbench's transactions do is allowed, so
#: they commit with their inverse through the policy gate rather than by the mode's own decision.
POLICY_RULES = """\
[[rules]]
ops = ["insert", "update"]
objects = ["pgbench_*"]
decision = "allow"

[[rules]]
ops = ["read"]
objects = ["*"]
decision = "allow"
"""
#: What pgbench does before a run unless -n; the benchmark does it itself, directly (see docstring).
RESET_SQL = ("VACUUM pgbench_branches", "VACUUM pgbench_tellers", "TRUNCATE pgbench_history",
             # Undo runs: start every run with an empty capture log (when capture is installed).
             "DO $$BEGIN IF to_regclass('dbproxy.capture_log') IS NOT NULL THEN "
             "TRUNCATE dbproxy.capture_log, dbproxy.undo_records; END IF; END$$")
DRAIN_TIMEOUT = 60.0  # after a hold run: how long the reviewer may take to commit what is left
HOLD_STALL_TIMEOUT = 120.0  # a hold run's pgbench still running this long after --duration is stuck
PG_SETTINGS = {"max_connections": "100", "shared_buffers": "128MB"}
DEFAULT_OUT = results_dir()
DBPROXY = Path(sys.executable).with_name("dbproxy")
BENCH_AGENT = "bench"
AGENTS_ROLE = "dbproxy_agents"  # the proxy's default `agent_role`, which holds agents' table privileges
SINGLE_CLIENT_GOAL = 0.80
MULTI_CLIENT_GOAL = 0.60
START_TIMEOUT = 30.0
HELD_LOCK_TIMEOUT = 120.0


class BenchmarkError(RuntimeError):
    """Something the benchmark depends on failed; the message says what and shows the output."""


# -- what we measure ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where pgbench connects, as libpq environment variables."""

    name: str
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    sslmode: str = "disable"

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return {**base, "PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
                "PGPASSWORD": self.password, "PGDATABASE": self.database, "PGSSLMODE": self.sslmode,
                "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": f"proxy_overhead-{self.name}"}


@dataclass(frozen=True)
class Case:
    workload: str
    mode: str
    clients: int

    @property
    def label(self) -> str:
        return f"{self.workload} {self.mode} c={self.clients}"

    def pgbench_args(self, duration: int) -> list[str]:
        return [*WORKLOADS[self.workload], "-n", "-M", self.mode, "-c", str(self.clients),
                "-j", str(min(self.clients, 2)), "-T", str(duration)]


@dataclass(frozen=True)
class Run:
    """One pgbench run's summary (hold runs add the reviewer's side)."""

    tps: float
    latency_ms: float
    transactions: int
    p50_ms: float | None = None  # transaction latency percentiles from pgbench --log (select-only: one
    p99_ms: float | None = None  # statement per transaction, so per statement)
    failed: int = 0  # pgbench's failed (deadlock/serialization) transactions; only hold runs allow any
    deadlocks: int | None = None  # of those, deadlock failures (hold runs use --failures-detailed)
    reviewer: dict[str, Any] | None = None  # ReviewerStats.as_json() plus the journal's count

    @property
    def commits(self) -> int | None:
        return self.reviewer["commits"] if self.reviewer else None

    @property
    def tx_per_commit(self) -> float | None:
        """pgbench's (successful) transactions per reviewer commit."""
        return self.transactions / self.commits if self.commits else None

    @property
    def journal_tx_per_commit(self) -> float | None:
        """The same from the journal: agent transactions recorded in the committed chains."""
        held = self.reviewer.get("journal_agent_transactions") if self.reviewer else None
        return held / self.commits if held is not None and self.commits else None

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tps": self.tps, "latency_ms": self.latency_ms, "p50_ms": self.p50_ms,
                             "p99_ms": self.p99_ms, "transactions": self.transactions,
                             "failed": self.failed, "deadlocks": self.deadlocks}
        if self.reviewer is not None:
            d["reviewer"] = self.reviewer
            d["tx_per_commit"] = round(self.tx_per_commit, 2) if self.tx_per_commit else None
        return d


def _median(values: Iterable[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Row:
    """One line of the results table: a target's median over the rounds of one case."""

    case: Case
    target: str
    runs: list[Run] = field(default_factory=list)
    status: str = "measured"  # or "not installed" for PgBouncer when it is not installed
    ratio: float | None = None
    ratio_proxy: float | None = None  # agent-mode rows: TPS relative to the pass-through proxy
    added_p99_ms: float | None = None  # p99 latency above the direct row's

    @property
    def tps(self) -> float | None:
        return statistics.median(r.tps for r in self.runs) if self.runs else None

    @property
    def latency_ms(self) -> float | None:
        return statistics.median(r.latency_ms for r in self.runs) if self.runs else None

    @property
    def p50_ms(self) -> float | None:
        return _median(r.p50_ms for r in self.runs)

    @property
    def p99_ms(self) -> float | None:
        return _median(r.p99_ms for r in self.runs)

    @property
    def spread(self) -> float | None:
        """Half the range of the rounds' TPS relative to the median: how noisy this row is."""
        if len(self.runs) < 2 or not self.tps:
            return None
        values = [r.tps for r in self.runs]
        return (max(values) - min(values)) / 2 / self.tps

    @property
    def commits(self) -> float | None:
        return _median(r.commits for r in self.runs)

    @property
    def tx_per_commit(self) -> float | None:
        return _median(r.tx_per_commit for r in self.runs)

    @property
    def journal_tx_per_commit(self) -> float | None:
        return _median(r.journal_tx_per_commit for r in self.runs)

    def reviewer_median(self, key: str) -> float | None:
        return _median(r.reviewer.get(key) if r.reviewer else None for r in self.runs)

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.runs)

    @property
    def deadlocks(self) -> int | None:
        counts = [r.deadlocks for r in self.runs if r.deadlocks is not None]
        return sum(counts) if counts else None

    @property
    def goal(self) -> float | None:
        if self.target in AGENT_MODES:
            return VS_PROXY_GOALS.get((self.target, self.case.workload))  # of the pass-through proxy
        if self.target != "proxy":
            return None
        return SINGLE_CLIENT_GOAL if self.case.clients == 1 else MULTI_CLIENT_GOAL

    @property
    def verdict(self) -> str:
        ratio = self.ratio_proxy if self.target in AGENT_MODES else self.ratio
        if self.goal is None or ratio is None:
            return ""
        return "PASS" if ratio >= self.goal else "MISS"

    def as_json(self) -> dict[str, Any]:
        return {"workload": self.case.workload, "mode": self.case.mode, "clients": self.case.clients,
                "target": self.target, "status": self.status, "tps": self.tps, "tps_spread": self.spread,
                "latency_ms": self.latency_ms, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
                "added_p99_ms": self.added_p99_ms, "ratio_vs_direct": self.ratio,
                "ratio_vs_passthrough": self.ratio_proxy, "goal": self.goal,
                "verdict": self.verdict or None, "runs": [r.as_json() for r in self.runs]}


# -- child processes ----------------------------------------------------------------------


class Service:
    """A long-running child process (proxy, PgBouncer); its stderr (the log) goes to `log_dir/NAME.log`,
    its stdout (banners) to `log_dir/NAME.out`."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, **popen: Any) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        with open(log_dir / f"{name}.out", "ab") as out, open(self.log, "ab") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True, **popen)  # Ctrl-C reaches us, not it

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return "\n".join(text) or "(log is empty)"

    def death_note(self) -> str | None:
        """None while running; otherwise how it ended and the end of its log."""
        if self.alive():
            return None
        return f"{self.name} exited with code {self.proc.returncode}; its log ends:\n{self.log_tail()}"

    def ensure_alive(self) -> None:
        note = self.death_note()
        if note is not None:
            raise BenchmarkError(note)

    def stop(self, timeout: float = 10) -> None:
        if not self.alive():
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def tool(name: str) -> str:
    return str(bin_dir() / name)


def run_tool(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run a client program; its stdout, or BenchmarkError with both outputs when it fails."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        shown = " ".join(Path(cmd[0]).name if i == 0 else a for i, a in enumerate(cmd))
        raise BenchmarkError(f"`{shown}` exited with code {proc.returncode}:\n"
                             f"{_tail(proc.stderr)}\n{_tail(proc.stdout)}".rstrip())
    return proc.stdout


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def psql_value(target: Target, sql: str) -> str:
    return run_tool([tool("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql], target.env(), 60).strip()


def wait_until_serving(service: Service, target: Target, timeout: float = START_TIMEOUT) -> None:
    """Wait for the port to accept connections, then check that a real login and query work."""
    deadline = time.monotonic() + timeout
    while True:
        service.ensure_alive()
        try:
            with socket.create_connection((target.host, target.port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{service.name} did not listen on {target.host}:{target.port} within "
                                     f"{timeout:.0f}s; its log ends:\n{service.log_tail()}") from None
            time.sleep(0.1)
    try:
        psql_value(target, "select 1")
    except BenchmarkError as e:
        raise BenchmarkError(f"{service.name} accepts connections but a query through it failed: {e}\n"
                             f"its log ends:\n{service.log_tail()}") from None


# -- the targets --------------------------------------------------------------------------


def target_from_url(name: str, url: str, default_sslmode: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise BenchmarkError("--upstream must be a postgresql:// URL")
    q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    user = unquote(parts.username) if parts.username else q.get("user", "postgres")
    return Target(
        name=name,
        host=q.get("host") or (unquote(parts.hostname) if parts.hostname else "localhost"),
        port=int(q.get("port") or parts.port or 5432),
        user=user,
        password=unquote(parts.password) if parts.password is not None else q.get("password", ""),
        database=unquote(parts.path.lstrip("/")) or q.get("dbname") or user,
        sslmode=q.get("sslmode", default_sslmode),
    )


def start_postgres(root: Path, stack: contextlib.ExitStack) -> tuple[str, Target]:
    """A fresh cluster on a free TCP port; returns its superuser URL and the direct target."""
    cluster = LocalCluster(root / "pg", host="127.0.0.1", port=free_port(), settings=PG_SETTINGS)
    stack.callback(_quietly, "stop PostgreSQL", cluster.destroy)
    cluster.init()
    cluster.start()
    url = cluster.url(tcp=True)
    return url, target_from_url("direct", url, default_sslmode="disable")


@dataclass(frozen=True)
class Proxy:
    """A running `dbproxy serve`, its agent target and its review API."""

    service: Service
    target: Target
    admin_url: str
    admin_token: str = field(repr=False)


def start_proxy(upstream_url: str, upstream: Target, root: Path, stack: contextlib.ExitStack, *,
                mode: str = "passthrough", name: str = "proxy", journal: bool = True, config: str = "") -> Proxy:
    """`dbproxy serve` as its own process in `mode` (passthrough, hold or undo), with one agent
    allowed into the upstream's database and an explicit admin token for the review API; `config`:
    TOML for its config file (the policy target's rules)."""
    port, admin_port = free_port(), free_port()
    password, token = secrets.token_urlsafe(18), secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBPROXY_") or k == "DBPROXY_PG_BIN"}
    env.update(DBPROXY_UPSTREAM=upstream_url, DBPROXY_AGENT=f"{BENCH_AGENT}={password}", DBPROXY_SHUTDOWN_GRACE="2",
               DBPROXY_MODE=mode, DBPROXY_ADMIN_TOKEN=token, DBPROXY_JOURNAL_PASSTHROUGH=str(journal).lower(),
               # A statement behind a held chain's row lock waits for the reviewer's commit (as
               # before the lock watch existed) instead of failing with 55P03 after 5 s, which
               # aborts a pgbench client; PostgreSQL's deadlock detection still breaks cycles.
               DBPROXY_HELD_LOCK_TIMEOUT=str(HELD_LOCK_TIMEOUT))
    data_dir = root / f"dbproxy-{name}"
    data_dir.mkdir(mode=0o700)
    # One key for every proxy of the run: they derive the same password for the agent's upstream
    # login role, instead of each resetting it at start and repairing it at the next login.
    key = root / "upstream-roles.key"
    if not key.exists():
        key.write_text(secrets.token_hex(32) + "\n")
    (data_dir / "upstream-roles.key").write_text(key.read_text())
    (data_dir / "upstream-roles.key").chmod(0o600)
    cmd = [str(DBPROXY), "serve", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin_port}",
           "--data-dir", str(data_dir), "--log-level", "warning"]
    if config:
        path = root / f"dbproxy-{name}.toml"
        path.write_text(config)
        cmd += ["--config", str(path)]
    service = Service(f"dbproxy-{name}", cmd, root, env=env)
    stack.callback(_quietly, f"stop dbproxy ({mode})", service.stop)
    target = Target(name, "127.0.0.1", port, BENCH_AGENT, password, upstream.database)
    wait_until_serving(service, target)
    return Proxy(service, target, f"http://127.0.0.1:{admin_port}", token)


def start_null_relay(upstream: Target, root: Path, stack: contextlib.ExitStack) -> tuple[Service, Target]:
    """`benchmarks.null_relay`: the same hop with no protocol work, the floor for dbproxy."""
    port = free_port()
    cmd = [sys.executable, "-m", f"{__package__}.null_relay", upstream.host, str(upstream.port), str(port)]
    service = Service("null-relay", cmd, root, cwd=Path(__file__).resolve().parent.parent)
    stack.callback(_quietly, "stop null relay", service.stop)
    target = Target("null-relay", "127.0.0.1", port, upstream.user, upstream.password, upstream.database)
    wait_until_serving(service, target)
    return service, target


def find_pgbouncer() -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return shutil.which("pgbouncer", path=path)


def start_pgbouncer(exe: str, upstream: Target, root: Path, stack: contextlib.ExitStack) -> tuple[Service, Target]:
    """PgBouncer in session pool mode for the upstream's database, as an unprivileged user."""
    home = root / "pgbouncer"
    home.mkdir(mode=0o700)  # the auth file holds the upstream password
    port = free_port()
    userlist = home / "userlist.txt"
    userlist.write_text(f"{_quote(upstream.user)} {_quote(upstream.password)}\n")
    ini = home / "pgbouncer.ini"
    ini.write_text(pgbouncer_ini(upstream, port, userlist))
    identity = unprivileged_identity()
    for path in (home, userlist, ini):
        if identity:
            os.chown(path, identity["user"], identity["group"])
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    if identity:
        os.chmod(root, os.stat(root).st_mode | 0o001)  # let it reach its directory, nothing more
    service = Service("pgbouncer", [exe, str(ini)], root, cwd=home, **identity)
    stack.callback(_quietly, "stop pgbouncer", service.stop)
    target = Target("pgbouncer", "127.0.0.1", port, upstream.user, upstream.password, upstream.database)
    wait_until_serving(service, target)
    return service, target


def pgbouncer_ini(upstream: Target, port: int, userlist: Path) -> str:
    return "\n".join([
        "[databases]",
        f"{upstream.database} = host={upstream.host} port={upstream.port} dbname={upstream.database}",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = scram-sha-256",
        f"auth_file = {userlist}",
        "pool_mode = session",
        "max_client_conn = 200",
        "default_pool_size = 50",
        f"server_tls_sslmode = {upstream.sslmode}",
        "ignore_startup_parameters = extra_float_digits",
        "",
    ])


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def unprivileged_identity() -> dict[str, Any]:
    """Popen arguments that drop root (PgBouncer refuses to run as root); empty when not root."""
    if os.geteuid() != 0:
        return {}
    for name in (SYSTEM_USER, "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    raise BenchmarkError(f"running as root and there is no {SYSTEM_USER!r} or 'nobody' user to run pgbouncer as")


def _quietly(what: str, fn: Callable[[], object]) -> None:
    """Clean-up step that reports its failure instead of hiding the original error."""
    try:
        fn()
    except Exception as e:
        print(f"warning: could not {what}: {e}", file=sys.stderr)


# -- pgbench ------------------------------------------------------------------------------

_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_DEADLOCKS = re.compile(r"^number of deadlock failures: (\d+)", re.MULTILINE)


def pgbench_init(target: Target, scale: int) -> None:
    print(f"pgbench -i -s {scale} ...", file=sys.stderr, flush=True)
    run_tool([tool("pgbench"), "-i", "-q", "-s", str(scale)], target.env(), timeout=3600)


def reset_tables(direct: Target) -> None:
    """What pgbench does before a run without -n, done over a direct connection."""
    cmd = [tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    for sql in RESET_SQL:
        cmd += ["-c", sql]
    run_tool(cmd, direct.env(), 300)


def run_pgbench(target: Target, case: Case, duration: int, *, allow_failed: bool = False,
                timeout: float = 300) -> Run:
    with tempfile.TemporaryDirectory(prefix="pgbench-log-") as logs:
        prefix = Path(logs) / "tx"
        cmd = [tool("pgbench"), *case.pgbench_args(duration), "--log", f"--log-prefix={prefix}",
               *(["--failures-detailed"] if allow_failed else [])]
        try:
            out = run_tool(cmd, target.env(), timeout=duration + timeout)
        except BenchmarkError as e:
            raise BenchmarkError(f"pgbench {case.label} against {target.name} failed: {e}") from None
        run = parse_pgbench(out, f"{case.label} against {target.name}", allow_failed=allow_failed)
        p50, p99 = latency_percentiles(Path(logs).glob("tx.*"))
    return replace(run, p50_ms=p50, p99_ms=p99)


def latency_percentiles(logs: Iterable[Path]) -> tuple[float | None, float | None]:
    """p50 and p99 transaction latency (ms) from pgbench's per-transaction logs (`--log`: the third
    field is the latency in microseconds; failed transactions say `failed` there and are skipped)."""
    values: list[int] = []
    for path in logs:
        with open(path, "rb") as f:
            for line in f:
                field = line.split(b" ", 3)[2]
                if field.isdigit():
                    values.append(int(field))
    if not values:
        return None, None
    values.sort()
    def at(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] / 1000
    return at(0.50), at(0.99)


def parse_pgbench(out: str, where: str, *, allow_failed: bool = False) -> Run:
    failed = _FAILED.search(out)
    n_failed = int(failed.group(1)) if failed else 0
    if n_failed and not allow_failed:
        raise BenchmarkError(f"pgbench {where} reported {n_failed} failed transactions:\n{_tail(out)}")
    tps, latency, processed = _TPS.search(out), _LATENCY.search(out), _PROCESSED.search(out)
    if not (tps and latency and processed) or not int(processed.group(1)):
        raise BenchmarkError(f"cannot read tps/latency from pgbench {where} output:\n{_tail(out)}")
    deadlocks = _DEADLOCKS.search(out)
    return Run(float(tps.group(1)), float(latency.group(1)), int(processed.group(1)), failed=n_failed,
               deadlocks=int(deadlocks.group(1)) if deadlocks else None)


def run_hold(proxy: Proxy, direct: Target, case: Case, duration: int, poll_interval: float) -> Run:
    """pgbench through the hold proxy while a scripted reviewer commits every held chain; then
    wait until the chains the disconnected clients left are committed too."""
    # The admin token is the reviewer `admin`'s: decisions are recorded under the token's reviewer.
    reviewer = Reviewer(proxy.admin_url, proxy.admin_token, poll_interval=poll_interval, name="admin")
    reviewer.start()
    try:
        try:
            run = run_pgbench(proxy.target, case, duration, allow_failed=True, timeout=HOLD_STALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(
                f"pgbench {case.label} against hold was still running {HOLD_STALL_TIMEOUT:.0f} s after its "
                f"{duration} s; reviewer: {reviewer.stats.as_json()}; pending: {reviewer.pending_ids()}; "
                f"sessions:\n{_activity(direct)}") from None
        drained = reviewer.drain(DRAIN_TIMEOUT)
    finally:
        stats = reviewer.stop()
    if not drained:
        left = ", ".join(f"#{i}" for i in reviewer.pending_ids()) or "(unknown)"
        raise BenchmarkError(f"hold {case.label}: transactions still pending {DRAIN_TIMEOUT:.0f} s after pgbench "
                             f"ended: {left}; reviewer: {stats.as_json()}; sessions:\n{_activity(direct)}")
    journal = reviewer.journal_agent_transactions(stats.committed_ids)
    return replace(run, reviewer={**stats.as_json(), "journal_agent_transactions": journal})


def _activity(direct: Target) -> str:
    """What the upstream's client sessions are doing, for a stuck hold run's error message."""
    sql = ("SELECT pid, state, wait_event_type, wait_event, now() - xact_start AS xact_age, "
           "left(regexp_replace(query, '\\s+', ' ', 'g'), 80) FROM pg_stat_activity "
           "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() ORDER BY pid")
    try:
        return psql_value(direct, sql)
    except (BenchmarkError, subprocess.TimeoutExpired) as e:
        return f"(could not read pg_stat_activity: {e})"


def _reviewer_note(stats: dict[str, Any] | None) -> str:
    if not stats:
        return ""
    note = f" | {stats['commits']} commits, {stats['conflicts']} 409s"
    if stats["errors"]:
        note += f", {stats['errors']} errors (last: {stats['last_error']})"
    return note


def run_matrix(targets: list[Target], cases: list[Case], duration: int, rounds: int,
               services: list[Service], direct: Target, hold: Proxy | None = None,
               poll_interval: float = 0.002) -> dict[tuple[Case, str], list[Run]]:
    """Every case against every target, targets interleaved, order reversed every other round."""
    runs: dict[tuple[Case, str], list[Run]] = {}
    total, done = len(cases) * rounds * len(targets), 0
    for case in cases:
        for rnd in range(rounds):
            for target in targets if rnd % 2 == 0 else targets[::-1]:
                try:
                    reset_tables(direct)
                    if hold is not None and target is hold.target:
                        run = run_hold(hold, direct, case, duration, poll_interval)
                    else:
                        run = run_pgbench(target, case, duration)
                except BenchmarkError as e:
                    notes = [n for n in (s.death_note() for s in services) if n]
                    raise BenchmarkError("\n".join([str(e), *notes])) from None
                runs.setdefault((case, target.name), []).append(run)
                done += 1
                failed = f" ({run.failed} failed)" if run.failed else ""
                print(f"[{done:>3}/{total}] {case.label:<26} {target.name:<10} {run.tps:>10.1f} tps "
                      f"{run.latency_ms:>8.3f} ms{failed}{_reviewer_note(run.reviewer)}", file=sys.stderr, flush=True)
    return runs


def build_rows(cases: list[Case], runs: dict[tuple[Case, str], list[Run]], absent: dict[str, str],
               selected: Iterable[str] = TARGETS) -> list[Row]:
    rows: list[Row] = []
    for case in cases:
        direct = Row(case, "direct", runs[(case, "direct")])
        passthrough = Row(case, "proxy", runs.get((case, "proxy"), []))
        for name in TARGETS:
            if name not in selected:
                continue
            if name in absent:
                rows.append(Row(case, name, status=absent[name]))
                continue
            row = Row(case, name, runs[(case, name)])
            if row.tps is not None and direct.tps:
                row.ratio = row.tps / direct.tps
            if name in AGENT_MODES and row.tps is not None and passthrough.tps:
                row.ratio_proxy = row.tps / passthrough.tps
            if name != "direct" and row.p99_ms is not None and direct.p99_ms is not None:
                row.added_p99_ms = row.p99_ms - direct.p99_ms
            rows.append(row)
    return rows


# -- reporting ----------------------------------------------------------------------------


def machine_info(direct: Target, pgbouncer: str | None, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # others' work skews results
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": psql_value(direct, "show server_version"),
        "pgbench": run_tool([tool("pgbench"), "--version"]).strip(),
        "pgbouncer": _first_line(run_tool([pgbouncer, "--version"])) if pgbouncer else None,
        "dbproxy": _first_line(run_tool([str(DBPROXY), "version"])),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "scale": args.scale,
        "targets": args.targets,
        "reviewer_poll_ms": args.reviewer_poll_ms if "hold" in args.targets else None,
        "upstream": "--upstream" if args.upstream else "local cluster, " + ", ".join(f"{k}={v}" for k, v in
                                                                              PG_SETTINGS.items()),
    }


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def render_markdown(rows: list[Row], info: dict[str, Any]) -> str:
    lines = [
        "# dbproxy overhead (pgbench)",
        "",
        f"{info['date']} · {info['cpu_count']} CPUs (load average {info['load_average_at_start'][0]} at start) · "
        f"PostgreSQL {info['postgresql']} · {info['pgbench']} · {info['pgbouncer'] or 'no PgBouncer'} · "
        f"{info['dbproxy']}",
        f"scale {info['scale']}, {info['duration_s']} s per run, median of {info['rounds']} interleaved rounds, "
        "-j = min(clients, 2)",
        "",
        f"Goals for the proxy: >= {SINGLE_CLIENT_GOAL:.0%} of direct TPS with 1 client, "
        f">= {MULTI_CLIENT_GOAL:.0%} with more clients. "
        "`±`: half the range of the rounds' TPS around their median (run-to-run noise).",
        "",
        "`p50`/`p99`: transaction latency percentiles from pgbench's per-transaction log (select-only "
        "runs one statement per transaction, so per statement); `+p99`: above the direct row's p99. "
        "Goals of the agent modes (hold, undo, policy) are of the pass-through proxy's TPS (`vs proxy`).",
        "",
        "| workload | mode | clients | target | TPS | ± | latency ms | p50 ms | p99 ms | +p99 ms | vs direct "
        "| vs proxy | goal |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        goal = f">= {r.goal:.0%}: {r.verdict}" if r.goal is not None and r.verdict else ""
        tps = _num(r.tps, ".0f") if r.status == "measured" else r.status
        lines.append(f"| {r.case.workload} | {r.case.mode} | {r.case.clients} | {r.target} | {tps} | "
                     f"{_num(r.spread, '.0%')} | {_num(r.latency_ms, '.3f')} | {_num(r.p50_ms, '.3f')} | "
                     f"{_num(r.p99_ms, '.3f')} | {_num(r.added_p99_ms, '+.3f')} | {_num(r.ratio, '.0%')} | "
                     f"{_num(r.ratio_proxy, '.0%')} | {goal} |")
    hold = [r for r in rows if r.target == "hold" and r.runs]
    if hold:
        lines += [
            "",
            "Hold mode (`proxy` = the same dbproxy in pass-through mode): a scripted reviewer commits every "
            "held chain through the review API as soon as the proxy lets it (medians over the rounds; "
            "`failed tx` is the total over the rounds, with the deadlock failures among them in parentheses).",
            "",
            "| workload | mode | clients | TPS | vs direct | vs proxy | pgbench tx | reviewer commits | "
            "agent tx per commit | journal tx per commit | 409s | commit wait ms | reviewer errors | failed tx |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in hold:
            lines.append(
                f"| {r.case.workload} | {r.case.mode} | {r.case.clients} | {_num(r.tps, '.0f')} | "
                f"{_num(r.ratio, '.0%')} | {_num(r.ratio_proxy, '.0%')} | "
                f"{_num(_median(x.transactions for x in r.runs), '.0f')} | {_num(r.commits, '.0f')} | "
                f"{_num(r.tx_per_commit, '.1f')} | {_num(r.journal_tx_per_commit, '.1f')} | "
                f"{_num(r.reviewer_median('conflicts'), '.0f')} | {_num(r.reviewer_median('mean_wait_ms'), '.1f')} | "
                f"{_num(r.reviewer_median('errors'), '.0f')} | {r.failed}"
                f"{f' ({r.deadlocks})' if r.deadlocks is not None and r.failed else ''} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, markdown: str, rows: list[Row], info: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown)
    goals = {"single_client": SINGLE_CLIENT_GOAL, "multi_client": MULTI_CLIENT_GOAL,
             "vs_passthrough": {f"{t} {w}": g for (t, w), g in VS_PROXY_GOALS.items()}}
    doc = {"machine": info, "goals": goals, "results": [r.as_json() for r in rows]}
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")


# -- main ---------------------------------------------------------------------------------


def _csv(choices: Iterable[str] | None = None, cast: Callable[[str], Any] = str,
         alias: dict[str, str] | None = None) -> Callable[[str], list[Any]]:
    allowed = list(choices) if choices is not None else None

    def parse(value: str) -> list[Any]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        if allowed is not None and (bad := [v for v in items if v not in allowed]):
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
        try:
            return [cast((alias or {}).get(v, v)) for v in items]
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _positive_ints(value: str) -> list[int]:
    counts = _csv(cast=int)(value)
    if any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError("client counts must be >= 1")
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.proxy_overhead",
                                description="pgbench through dbproxy vs. directly (and vs. PgBouncer).")
    p.add_argument("--duration", type=int, default=15, help="seconds per pgbench run (default 15)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor (default 10)")
    p.add_argument("--clients", type=_positive_ints, default=[1, 8], help="client counts (default 1,8)")
    p.add_argument("--modes", type=_csv(MODES), default=["simple", "prepared"],
                   help="pgbench -M protocols (default simple,prepared)")
    p.add_argument("--workloads", type=_csv([*WORKLOADS, *WORKLOAD_ALIASES], alias=WORKLOAD_ALIASES),
                   default=list(WORKLOADS), help="select-only and/or tpcb (alias tpcb-like) (default both)")
    p.add_argument("--targets", type=_csv(TARGETS), default=list(TARGETS),
                   help=f"what to measure (default all: {','.join(TARGETS)}); direct is always "
                   "measured, as the reference")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions per target (default 2)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results.md/json go (default %(default)s)")
    p.add_argument("--upstream", help="benchmark this server (superuser URL) instead of starting one; "
                   "pgbench -i recreates the pgbench_* tables there")
    p.add_argument("--pgbouncer", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure PgBouncer when it is installed (default on)")
    p.add_argument("--null-relay", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure a no-logic uvloop relay, the floor for a Python proxy (default on)")
    p.add_argument("--reviewer-poll-ms", type=float, default=2.0,
                   help="hold target: the scripted reviewer asks for pending transactions every N ms (default 2)")
    args = p.parse_args(argv)
    if args.duration < 1 or args.scale < 1 or args.rounds < 1:
        p.error("--duration, --scale and --rounds must be >= 1")
    if args.reviewer_poll_ms <= 0:
        p.error("--reviewer-poll-ms must be > 0")
    args.workloads = list(dict.fromkeys(args.workloads))
    args.targets = [t for t in TARGETS if t in {"direct", *args.targets}]  # table order, direct always
    if not args.pgbouncer and "pgbouncer" in args.targets:
        args.targets.remove("pgbouncer")
    if not args.null_relay and "null-relay" in args.targets:
        args.targets.remove("null-relay")
    return args


def benchmark(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    cases = [Case(w, m, c) for w in args.workloads for m in args.modes for c in args.clients]
    wanted = set(args.targets)
    pgbouncer = find_pgbouncer() if "pgbouncer" in wanted else None
    absent = {"pgbouncer": "not installed"} if "pgbouncer" in wanted and not pgbouncer else {}
    with contextlib.ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="dbproxy-bench-"))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        if args.upstream:
            upstream_url, direct = args.upstream, target_from_url("direct", args.upstream, default_sslmode="prefer")
        else:
            print("starting PostgreSQL ...", file=sys.stderr, flush=True)
            upstream_url, direct = start_postgres(root, stack)
        pgbench_init(direct, args.scale)
        services: list[Service] = []
        targets, proxies, hold = [direct], [], None
        if "proxy" in wanted:
            proxies.append(start_proxy(upstream_url, direct, root, stack, mode="passthrough", name="proxy"))
        if "proxy-unjournaled" in wanted:
            proxies.append(start_proxy(upstream_url, direct, root, stack, mode="passthrough",
                                       name="proxy-unjournaled", journal=False))
        if "hold" in wanted:
            hold = start_proxy(upstream_url, direct, root, stack, mode="hold", name="hold")
            proxies.append(hold)
        if wanted & {"undo", "policy"}:
            print("dbproxy install ...", file=sys.stderr, flush=True)
            run_tool([str(DBPROXY), "install"], {**os.environ, "DBPROXY_UPSTREAM": upstream_url}, timeout=300)
        if "undo" in wanted:
            proxies.append(start_proxy(upstream_url, direct, root, stack, mode="undo", name="undo"))
        if "policy" in wanted:
            proxies.append(start_proxy(upstream_url, direct, root, stack, mode="undo", name="policy",
                                       config=POLICY_RULES))
        if proxies:
            # Agents act as the agents' common role (created by the first proxy's start), which
            # needs privileges on pgbench's tables like any agent's tables.
            psql_value(direct, f"GRANT SELECT, INSERT, UPDATE, DELETE ON pgbench_accounts, pgbench_branches, "
                       f"pgbench_tellers, pgbench_history TO {AGENTS_ROLE}")
        for proxy in proxies:
            services.append(proxy.service)
            targets.append(proxy.target)
        if "null-relay" in wanted:
            relay_service, relay = start_null_relay(direct, root, stack)
            services.append(relay_service)
            targets.append(relay)
        if pgbouncer:
            bouncer_service, bouncer = start_pgbouncer(pgbouncer, direct, root, stack)
            services.append(bouncer_service)
            targets.append(bouncer)
        info = machine_info(direct, pgbouncer, args)
        runs_total = len(cases) * args.rounds * len(targets)
        print(f"{runs_total} pgbench runs of {args.duration} s (about {runs_total * (args.duration + 2) // 60 + 1} "
              "min) ...", file=sys.stderr, flush=True)
        runs = run_matrix(targets, cases, args.duration, args.rounds, services, direct, hold,
                          args.reviewer_poll_ms / 1000)
        for proxy in proxies:
            _report_proxy_log(proxy.service)
    return build_rows(cases, runs, absent, args.targets), info


def _report_proxy_log(service: Service) -> None:
    """At --log-level warning the proxy's log should be empty after a clean benchmark."""
    tail = service.log_tail(10)
    if tail != "(log is empty)":
        print(f"note: {service.name} logged warnings or errors; last lines:\n{tail}", file=sys.stderr)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # clean up on `kill` as on Ctrl-C
    try:
        rows, info = benchmark(args)
    except KeyboardInterrupt:
        print("interrupted; stopped everything the benchmark started", file=sys.stderr)
        return 130
    except (BenchmarkError, ClusterError, subprocess.TimeoutExpired) as e:
        print(f"proxy_overhead: {e}", file=sys.stderr)
        return 1
    markdown = render_markdown(rows, info)
    write_outputs(args.out, markdown, rows, info)
    sys.stdout.write(markdown)
    print(f"wrote {args.out / 'results.md'} and {args.out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`dbproxy bench inverse`: run the inverse-SQL corpus on a server and write the report.

Starts a throw-away PostgreSQL from the bundled binaries (TCP on 127.0.0.1, durability off: it
only holds scratch copies) unless `upstream` names a server (a superuser URL: the benchmark's
databases there are called `dbproxy_bench_<pid>_*` and dropped afterwards), and a local sandbox
cluster in a temporary directory, warm for the whole run. Both are stopped and removed at the end,
on errors and Ctrl-C too. Every case's result is saved in `OUT/cases.jsonl` as soon as it exists;
after an interruption, `--resume` runs only the cases not done yet. Exit status: 0, or 1 when any
inverse was falsely verified (the sandbox said verified, the ground truth said wrong), or 2 when
the benchmark could not run, 130 when interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from dbproxy.config.log import quiet_sqlglot
from sandbox.backends import LocalBackend
from sandbox.pgcluster import ClusterError, LocalCluster, free_port
from sandbox.verify import Verifier

from .. import results_dir
from . import report
from .metrics import false_verified
from .resume import CaseLog, ResumeError
from .runner import RunResult, run_cases
from .strategies import LlmEndpoint, Strategy, make

DEFAULT_OUT = results_dir("inverse")
#: The throw-away server holds nothing worth keeping.
SCRATCH = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "50",
           "log_min_messages": "fatal", "log_min_error_statement": "panic"}


@dataclass
class Options:
    strategies: list[str] = field(default_factory=lambda: ["rules"])
    cases: str | None = None  # corpus.select pattern
    sample: int = 1  # every N-th selected case only
    out: Path = DEFAULT_OUT
    upstream: str | None = None
    llm: LlmEndpoint = field(default_factory=LlmEndpoint)
    quiet: bool = False
    resume: bool = False  # keep the results already in out/cases.jsonl, run only the other cases


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _check_upstream(url: str) -> str | None:
    try:
        con = await asyncpg.connect(url, timeout=30)
    except (OSError, asyncpg.PostgresError) as e:
        return f"cannot connect to --upstream: {e}"
    try:
        if not await con.fetchval("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"):
            return "--upstream must be a superuser URL (the benchmark creates databases and DDL event triggers)"
    finally:
        await con.close()
    return None


async def _server_major(url: str) -> int:
    con = await asyncpg.connect(url, timeout=30)
    try:
        return int(await con.fetchval("SHOW server_version_num")) // 10000
    finally:
        await con.close()


def _stop_sandboxes(sandbox_dir: Path) -> None:
    """The verifier stops its sandbox cluster on close; this is for a run cut short (Ctrl-C)."""
    for data in sandbox_dir.glob("pg*"):
        if (data / "PG_VERSION").exists():
            with contextlib.suppress(ClusterError, OSError):
                LocalCluster(data).stop(mode="immediate")


def benchmark(admin_url: str, schemas: Mapping[str, Any], cases: Sequence[Any], strategies: Sequence[Strategy],
              sandbox_dir: Path, *, quiet: bool = False, log: CaseLog | None = None) -> RunResult:
    """`run_cases` with a local sandbox cluster of the server's major version, warm for the run."""
    async def go() -> RunResult:
        major = await _server_major(admin_url)
        verifier = Verifier(LocalBackend(sandbox_dir, upstream_major=major, stop_on_close=True), timeout=60)
        try:
            return await run_cases(admin_url, schemas, cases, strategies, verifier, progress=None if quiet else _say,
                                   done=log.done if log is not None else (),
                                   on_result=log.add if log is not None else None)
        finally:
            await verifier.close()
            for s in strategies:  # model clients live on this loop
                endpoint = getattr(s, "endpoint", None)
                if endpoint is not None:
                    await endpoint.close()

    return asyncio.run(go())


def _open_log(options: Options, strategies: Sequence[Strategy], cases: Sequence[Any]) -> CaseLog:
    asks_a_model = options.llm.configured and any(s.name in ("llm", "hybrid") for s in strategies)
    model = (options.llm.model or "default") if asks_a_model else None
    log = CaseLog.open(options.out, {"model": model}, resume=options.resume)
    if options.resume:
        wanted = {(s.name, c.name) for s in strategies for c in cases}
        kept = {(r.strategy, r.case) for r in log.done if r.status == "ran"} & wanted
        _say(f"resuming: {len(kept)} of {len(wanted)} cases already done in {log.path}" if log.done
             else f"resuming: nothing saved in {options.out} yet, starting from the first case")
    return log


def _interrupted(log: CaseLog | None) -> int:
    saved = ""
    if log is not None:
        saved = f"; the cases done are saved in {log.path}: run the same command with --resume to continue"
    _say("interrupted; stopped everything the benchmark started" + saved)
    return 130


def run(options: Options, schemas: Mapping[str, Any] | None = None, cases: Sequence[Any] | None = None) -> int:
    """The whole command. `schemas`/`cases` default to the bundled corpus (`--cases` selects)."""
    quiet_sqlglot()
    if schemas is None or cases is None:
        try:
            from .. import inverse_corpus
        except ImportError as e:
            _say(f"dbproxy bench inverse: the corpus (benchmarks/inverse_corpus) cannot be loaded: {e}")
            return 2
        schemas = inverse_corpus.SCHEMAS
        cases = inverse_corpus.select(options.cases)[::max(1, options.sample)]
    if not cases:
        _say(f"dbproxy bench inverse: no case matches {options.cases!r}")
        return 2
    strategies = [make(s, options.llm) for s in options.strategies]
    if all(s.unavailable() for s in strategies):  # nothing to run: no server needed to say so
        return _finish(asyncio.run(run_cases("", schemas, cases, strategies, None)), options)
    try:
        log = _open_log(options, strategies, cases)
    except (ResumeError, OSError) as e:
        _say(f"dbproxy bench inverse: {e}")
        return 2
    root = Path(tempfile.mkdtemp(prefix="dbproxy-bench-inverse-"))
    cluster: LocalCluster | None = None
    try:
        if options.upstream:
            problem = asyncio.run(_check_upstream(options.upstream))
            if problem:
                _say(f"dbproxy bench inverse: {problem}")
                return 2
            admin_url = options.upstream
        else:
            _say("starting a throw-away PostgreSQL ...")
            cluster = LocalCluster(root / "data", host="127.0.0.1", port=free_port(), settings=SCRATCH)
            cluster.init()
            cluster.start()
            admin_url = cluster.url()
        _say(f"{len(cases)} cases x {', '.join(options.strategies)} ...")
        result = benchmark(admin_url, schemas, cases, strategies, root / "sandbox", quiet=options.quiet, log=log)
    except KeyboardInterrupt:
        return _interrupted(log)
    except (ClusterError, OSError, asyncpg.PostgresError) as e:
        _say(f"dbproxy bench inverse: {type(e).__name__}: {e}")
        return 2
    finally:
        log.close()
        if cluster is not None:
            cluster.destroy()
        _stop_sandboxes(root / "sandbox")
        shutil.rmtree(root, ignore_errors=True)
    return _finish(result, options)


def _finish(result: RunResult, options: Options) -> int:
    paths, notes = report.write(result, options.out)
    sys.stdout.write(report.markdown(result) + "\n")
    for n in notes:
        _say(f"note: {n}")
    _say("wrote " + ", ".join(str(p) for p in paths))
    bad = false_verified(result.results)
    if bad:
        _say(f"FALSE VERIFIED: {len(bad)} inverse(s) the sandbox verified were wrong on the real database: "
             + ", ".join(f"{r.case} ({r.strategy})" for r in bad))
        return 1
    return 0

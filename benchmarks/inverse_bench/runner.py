"""The inverse-SQL benchmark's procedure: every case, per strategy, on its own copy of a seeded database.

Per schema, once: a template database with the schema's DDL, its seed and `dbproxy install`.
Per case and strategy (independent of every other case):

1. `CREATE DATABASE <case> TEMPLATE <schema's template>`; the case's `setup` statements run, each
   committed on its own; the ground-truth snapshot is taken (`truth.snapshot`: all user rows and
   the catalog shape).
2. The sandbox's schema copy is made ready for the database as it is now (`Verifier.prepare`),
   as a running proxy keeps it; its time is not counted as verification time.
3. The forward statements run in ONE transaction of a captured session (`dbproxy.capture = on`);
   the captured changes and the touched tables' catalog facts are read inside it.
4. The strategy makes its inverse (timed: synthesis). Inside the still-open transaction, the
   sandbox verifies it, sampling through a second connection that sees the database as it was
   before the forward: what the proxy does at an agent's COMMIT (`Verifier.verify`, one warm
   `Verifier` for the whole run). Then the undo marker is written and the forward COMMITs.
5. The inverse is applied to the case database. The rules' plan goes through the product's own
   undo (`dbproxy.undo.run`, which rebuilds the plan from the capture log); any other plan runs
   its steps as given, and SQL statements run as they are, both in one transaction the way undo
   and the sandbox run an inverse (`session_replication_role = replica`, ALWAYS/REPLICA user
   triggers disabled for the transaction, the capture's output settings, capture off).
6. Ground truth: the snapshot again. Equal to step 1's means the inverse is correct; otherwise a
   short diff is kept (the rows from before are read from a fresh copy of the template + setup).
   An inverse the strategy held back (the hybrid's verification gate) is applied and checked the
   same way, and counted apart: it tells what the gate costs. The case database is dropped.

Names: everything this creates is called `<prefix>_...` (`dbproxy_bench_<pid>` by default), and
is dropped at the end, also on errors. One case database name is reused for every case, on
purpose: the sandbox keys its schema copies by database and catalog fingerprint, and template
copies share the fingerprint, so one copy per schema serves all its cases.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from dbproxy.undo import apply as undo
from dbproxy.undo.commit import MARK_SQL
from dbproxy.undo.install import install
from inverse.capture_schema import IMAGE_SETTINGS
from inverse.ddl_groups import table_infos
from inverse.ddl_targets import before_ddl_sql
from inverse.llm.client import Usage
from inverse.undo_plan import Plan, build
from sandbox.backends import with_database
from sandbox.sampler import read_tables
from sandbox.verdict import Verdict
from sandbox.verify import Candidate, Transaction, Verifier

from . import truth
from .strategies import CaseContext, Inverse, SandboxHandle, Strategy

CAPTURE_ON = {"dbproxy.capture": "on", "application_name": "dbproxy bench agent"}
#: The sampler's settings. The proxy's sampler waits up to 1 s for a lock; here a table the open
#: forward transaction locked stays locked until it commits, so waiting longer changes nothing.
SAMPLER = {"application_name": "dbproxy bench sampler", "lock_timeout": "200ms", "statement_timeout": "20s"}
AGENT = "dbproxy-bench"


@dataclass
class CaseResult:
    """One case under one strategy. `status`: "ran", or "error" (the case itself failed: its
    setup or forward raised, a corpus problem, reported apart and left out of the metrics)."""

    case: str
    schema: str
    category: str
    expected: str
    strategy: str
    status: str = "ran"
    produced: bool = False  # the strategy offered an inverse
    source: str = ""  # who made it: "rules" or "llm"
    reason: str = ""  # why there was none (or a note)
    withheld: bool = False  # an inverse existed but the verification gate did not offer it
    withheld_correct: bool | None = None  # ground truth for that withheld inverse (the gate's cost)
    verdict: str | None = None  # sandbox: "verified" | "failed" | "could not verify" | None (nothing to verify)
    verdict_reason: str = ""
    verdict_diff: list[str] = field(default_factory=list)
    correct: bool | None = None  # ground truth (None: no inverse to check)
    diff: list[str] = field(default_factory=list)  # ground truth: how the database differed
    applied_by: str = ""  # "undo" (dbproxy.undo.run), "plan steps" or "statements"
    inverse_sql: list[str] = field(default_factory=list)
    changes: int = 0  # captured row changes and DDL events
    synth_ms: float | None = None
    verify_ms: float | None = None
    error: str = ""
    case_ms: float | None = None  # the whole case: copy, setup, forward, inverse, verification, apply, compare
    model_calls: int = 0  # questions to the model for this case (each may take several HTTP requests)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def false_verified(self) -> bool:
        return self.verdict == "verified" and self.correct is False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CaseResult:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class RunResult:
    results: list[CaseResult] = field(default_factory=list)
    strategies: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"ran", "reason", "notes"}
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "strategies": self.strategies, "cases": [r.to_json() for r in self.results]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunResult:
        return cls([CaseResult.from_json(c) for c in d.get("cases", [])], dict(d.get("strategies", {})),
                   dict(d.get("meta", {})))


Progress = Callable[[str], None]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


class Bench:
    """Templates and case databases on one server (`admin_url`: a superuser URL)."""

    def __init__(self, admin_url: str, verifier: Verifier, *, prefix: str | None = None) -> None:
        self.admin_url = admin_url
        self.verifier = verifier
        self.prefix = prefix or f"dbproxy_bench_{os.getpid()}"
        self.case_db = f"{self.prefix}_case"
        self.diff_db = f"{self.prefix}_diff"
        self.templates: dict[str, str] = {}  # schema name -> template database
        self.broken: dict[str, str] = {}  # schema name -> why its template could not be made
        self._admin: asyncpg.Connection | None = None

    def url(self, database: str) -> str:
        return with_database(self.admin_url, database)

    async def admin(self) -> asyncpg.Connection:
        if self._admin is None or self._admin.is_closed():
            self._admin = await asyncpg.connect(self.admin_url, timeout=30)
        return self._admin

    async def drop(self, database: str) -> None:
        await (await self.admin()).execute(f"DROP DATABASE IF EXISTS {_q(database)} WITH (FORCE)")

    async def close(self) -> None:
        """Drop everything this created."""
        for db in [self.case_db, self.diff_db, *self.templates.values()]:
            try:
                await self.drop(db)
            except (OSError, asyncpg.PostgresError):
                continue
        if self._admin is not None:
            await self._admin.close()

    # -- templates -------------------------------------------------------------------------

    async def template(self, schema: Any) -> str:
        """The seeded template of `schema` (ddl + seed + dbproxy install), made on first use."""
        if schema.name in self.templates:
            return self.templates[schema.name]
        if schema.name in self.broken:
            raise RuntimeError(self.broken[schema.name])
        name = f"{self.prefix}_tpl_{re.sub(r'[^a-z0-9_]', '_', schema.name.lower())}"[:63]
        await self.drop(name)
        await (await self.admin()).execute(f"CREATE DATABASE {_q(name)}")
        self.templates[schema.name] = name
        con = await asyncpg.connect(self.url(name), timeout=30)
        try:
            await con.execute(schema.ddl)
            await con.execute(schema.seed)
            await install(con)
            await con.execute("ANALYZE")
        except asyncpg.PostgresError as e:
            self.broken[schema.name] = f"schema {schema.name} does not load: {type(e).__name__}: {e}"
            raise RuntimeError(self.broken[schema.name]) from e
        finally:
            await con.close()
        return name

    async def copy(self, template: str, database: str) -> None:
        await self.drop(database)
        await (await self.admin()).execute(f"CREATE DATABASE {_q(database)} TEMPLATE {_q(template)}")

    # -- one case ----------------------------------------------------------------------------

    async def run_case(self, case: Any, schema: Any, strategy: Strategy) -> CaseResult:
        r = CaseResult(case.name, case.schema, case.category, case.expected, strategy.name)
        try:
            template = await self.template(schema)
            await self.copy(template, self.case_db)
        except (RuntimeError, asyncpg.PostgresError, OSError) as e:
            r.status, r.error = "error", str(e)
            return r
        try:
            await self._case(r, case, schema, strategy, template)
        except _CaseError as e:
            r.status, r.error = "error", str(e)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
            # Not the case's fault as far as we know, but one case must not end the run: reported.
            r.status, r.error = "error", f"benchmark error: {type(e).__name__}: {e}"
        finally:
            await self.drop(self.case_db)
        return r

    async def _case(self, r: CaseResult, case: Any, schema: Any, strategy: Strategy, template: str) -> None:
        url = self.url(self.case_db)
        con = await asyncpg.connect(url, timeout=30)
        try:
            try:
                for sql in case.setup:  # each committed on its own (VACUUM, CONCURRENTLY are allowed)
                    await con.execute(sql)
            except asyncpg.PostgresError as e:
                raise _CaseError(f"setup failed: {type(e).__name__}: {e}") from e
            before = await truth.snapshot(con)
            inverse, xid, rules_plan = await self._forward(r, case, schema, strategy, url)
            if inverse.produced:
                r.applied_by, problem = await _apply(con, inverse, xid, rules_plan)
                after = await truth.snapshot(con)
                r.correct = problem is None and before.same_as(after)
                if not r.correct:
                    r.diff = [problem] if problem else []
                    if not before.same_as(after):
                        r.diff += await self._diff(con, before, after, case, template)
            elif inverse.held is not None and inverse.held.produced:
                # Not offered, so not counted as an inverse; but was the gate right to keep it back?
                _, problem = await _apply(con, inverse.held, xid, rules_plan)
                r.withheld_correct = problem is None and before.same_as(await truth.snapshot(con))
        finally:
            await con.close()

    async def _forward(self, r: CaseResult, case: Any, schema: Any, strategy: Strategy,
                       url: str) -> tuple[Inverse, int, Plan]:
        """Forward in one captured transaction, inverse made and verified inside it, then COMMIT."""
        agent = await asyncpg.connect(url, server_settings=CAPTURE_ON, timeout=30)
        sampler = await asyncpg.connect(url, server_settings=SAMPLER, timeout=30)
        try:
            try:
                await self.verifier.prepare(sampler, url)
            except Exception:  # the verification itself reports what is wrong
                pass
            tx = agent.transaction()
            await tx.start()
            try:
                try:
                    for sql in case.forward:
                        # What the proxy sends: DDL announced, so the state it destroys is kept.
                        call = before_ddl_sql(sql)
                        if call is not None:
                            await agent.execute(call)
                        await agent.execute(sql)
                except asyncpg.PostgresError as e:
                    raise _CaseError(f"forward failed: {type(e).__name__}: {e}") from e
                xid = int(await agent.fetchval("SELECT pg_catalog.txid_current()"))
                changes = await undo.load_changes(agent, xid)
                tables = {**table_infos(changes),
                          **await undo.load_tables(agent, {c.rel for c in changes if c.rel is not None and c.is_row})}
                r.changes = len(changes)
                statements = list(case.forward)
                transaction = Transaction(changes, tables, statements=statements,
                                          read_tables=await read_tables(sampler, statements))

                async def verify(candidate: Candidate) -> Verdict:
                    return await self.verifier.verify(sampler, url, transaction, candidate)

                ctx = CaseContext(case, schema, tuple(case.forward), changes, tables, agent, verify,
                                  sandbox=SandboxHandle(self.verifier, sampler, url, transaction))
                t0 = time.perf_counter()
                try:
                    inverse = await strategy.inverse(ctx)
                except Exception as e:  # a strategy's bug is its "no inverse", with the reason
                    inverse = Inverse(reason=f"the strategy raised {type(e).__name__}: {e}")
                r.synth_ms = round(max(_ms(t0) - ctx.verify_ms, 0.0), 3)
                verdict = inverse.verdict
                if inverse.produced and verdict is None:
                    verdict = await ctx.verify(inverse.candidate())
                r.verify_ms = round(ctx.verify_ms, 3) if ctx.verdicts else None
                _record(r, inverse, verdict)
                await agent.execute(MARK_SQL, AGENT, None, len(changes))
                try:
                    await tx.commit()
                except asyncpg.PostgresError as e:  # a deferred constraint, say: the forward did not happen
                    raise _CaseError(f"forward failed at COMMIT: {type(e).__name__}: {e}") from e
            except BaseException:
                if not agent.is_closed() and agent.is_in_transaction():
                    await tx.rollback()
                raise
            return inverse, xid, build(changes, tables)
        finally:
            await agent.close()
            await sampler.close()

    async def _diff(self, con: asyncpg.Connection, before: truth.Snapshot, after: truth.Snapshot, case: Any,
                    template: str) -> list[str]:
        """The rows from before come from a fresh copy of the template with the setup run again
        (kept only when a case is wrong, so correct cases pay nothing for it)."""
        names = before.changed_tables(after)
        after_rows = await truth.rows(con, names)
        before_rows: dict[str, Any] = {}
        try:
            await self.copy(template, self.diff_db)
            other = await asyncpg.connect(self.url(self.diff_db), timeout=30)
            try:
                for sql in case.setup:
                    await other.execute(sql)
                before_rows = await truth.rows(other, names)
            finally:
                await other.close()
        except (asyncpg.PostgresError, OSError):
            pass
        finally:
            await self.drop(self.diff_db)
        return truth.diff(before, after, before_rows, after_rows)


class _CaseError(Exception):
    """The case itself failed (setup or forward): a corpus problem, not a strategy's."""


def _record(r: CaseResult, inverse: Inverse, verdict: Verdict | None) -> None:
    r.produced, r.source, r.reason, r.withheld = inverse.produced, inverse.source, inverse.reason, inverse.withheld
    r.inverse_sql = [_cut(s) for s in inverse.readable()[:20]]
    if verdict is not None and inverse.produced:
        r.verdict, r.verdict_reason, r.verdict_diff = verdict.status, verdict.reason, verdict.diff[:8]
    elif inverse.held is not None and inverse.held.verdict is not None:
        v = inverse.held.verdict  # the verdict that kept it back
        r.verdict_reason, r.verdict_diff = f"withheld: {v.status}: {v.reason}", v.diff[:8]
        r.inverse_sql = [_cut(s) for s in inverse.held.readable()[:20]]


def _cut(text: str, width: int = 400) -> str:
    return text if len(text) <= width else text[:width] + "..."


def _same_plan(a: Plan, b: Plan) -> bool:
    return a.to_json() == b.to_json()


async def _apply(con: asyncpg.Connection, inverse: Inverse, xid: int, rules_plan: Plan) -> tuple[str, str | None]:
    """Apply the inverse to the case database; returns (how, why it did not apply or None)."""
    if inverse.plan is not None and _same_plan(inverse.plan, rules_plan):
        try:
            result = await undo.run(con, [xid], by=AGENT)
        except (undo.UndoError, asyncpg.PostgresError) as e:
            return "undo", f"undo refused or failed: {type(e).__name__}: {e}"
        if not result.applied:
            why = "; ".join(f"{c.table}: {c.message}" for c in result.conflicts[:3]) or "not applied"
            return "undo", f"undo found conflicts and rolled back: {why}"
        return "undo", None
    how = "plan steps" if inverse.plan is not None else "statements"
    try:
        async with con.transaction():
            for k, v in IMAGE_SETTINGS.items():
                await con.execute("SELECT pg_catalog.set_config($1, $2, true)", k, v)
            await con.execute("SELECT pg_catalog.set_config('dbproxy.capture', 'off', true)")
            # Triggers quieted exactly as undo quiets them (replica role, ALWAYS/REPLICA disabled).
            tables = {r[0] for r in await con.fetch(_TRIGGERED_TABLES_SQL)}
            _, enable = await undo.quiet_triggers(con, tables)
            if inverse.plan is not None:
                for step in inverse.plan.steps:
                    await con.execute(step.sql, *step.params)
            else:
                for sql in inverse.statements:
                    await con.execute(sql)
            await undo.enable_triggers(con, enable)
    except (undo.UndoError, asyncpg.PostgresError) as e:
        return how, f"the inverse failed: {type(e).__name__}: {e}"
    return how, None


#: Tables with user triggers, outside the system schemas and dbproxy's own.
_TRIGGERED_TABLES_SQL = (
    "SELECT DISTINCT t.tgrelid::regclass::text FROM pg_catalog.pg_trigger t "
    "JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE NOT t.tgisinternal AND n.nspname !~ '^pg_' AND n.nspname NOT IN ('information_schema', 'dbproxy')")


def _line(r: CaseResult, done: int, total: int) -> str:
    if r.status == "error":
        what = f"ERROR {r.error}"
    elif not r.produced:
        what = "no inverse" + (" (withheld)" if r.withheld else "")
    else:
        what = ("correct" if r.correct else "INCORRECT") + f", sandbox: {r.verdict}"
        if r.false_verified:
            what += "  <-- FALSE VERIFIED"
    ms = f" {r.synth_ms:.0f}+{r.verify_ms or 0:.0f} ms" if r.synth_ms is not None else ""
    return f"[{done}/{total}] {r.strategy:<6} {r.case} ({r.expected}): {what}{ms}"


async def run_cases(admin_url: str, schemas: Mapping[str, Any], cases: Sequence[Any], strategies: Sequence[Strategy],
                    verifier: Verifier | None, *, prefix: str | None = None,
                    progress: Progress | None = None, done: Sequence[CaseResult] = (),
                    on_result: Callable[[CaseResult], None] | None = None) -> RunResult:
    """Every case under every strategy that can run. `admin_url`: a superuser URL of the server
    the case databases go on; `verifier`: the sandbox (shared by all cases; not closed here).
    When no strategy can run, neither is touched (both may be empty/None).

    Resuming: results in `done` (an interrupted run's, see `resume.py`) that ran are kept as they
    are and their cases not run again; `on_result` sees each new result as soon as it exists."""
    t0 = time.perf_counter()
    out = RunResult()
    runnable: list[Strategy] = []
    for s in strategies:
        why = s.unavailable()
        out.strategies[s.name] = {"ran": why is None, "reason": why or "", "notes": s.notes()}
        if why is None:
            runnable.append(s)
    out.meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cases": len(cases),
                "schemas": sorted({c.schema for c in cases}), "cpus": os.cpu_count()}
    if runnable:
        assert verifier is not None, "strategies that run need a verifier"
        bench = Bench(admin_url, verifier, prefix=prefix)
        kept = _kept(done, runnable, cases)
        tracker = Tracker(len(cases) * len(runnable), len(kept))
        try:
            out.meta["postgresql"] = await (await bench.admin()).fetchval("SHOW server_version")
            for s in runnable:
                for case in cases:
                    r = kept.get((s.name, case.name))
                    if r is None:
                        r = await _measured(bench, case, schemas.get(case.schema), s)
                        if on_result is not None:
                            on_result(r)
                        if progress is not None:
                            progress(tracker.line(r))
                    out.results.append(r)
        finally:
            await bench.close()
        out.meta["sandbox"] = verifier.backend.describe()
        if kept:
            out.meta["resumed"] = len(kept)
    out.meta["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def _kept(done: Sequence[CaseResult], runnable: Sequence[Strategy],
          cases: Sequence[Any]) -> dict[tuple[str, str], CaseResult]:
    """The earlier results to keep: of this run's strategies and cases, and that ran (an error may
    have been the interruption itself: it is run again)."""
    names = {s.name for s in runnable}
    wanted = {c.name for c in cases}
    return {(r.strategy, r.case): r for r in done if r.status == "ran" and r.strategy in names and r.case in wanted}


def _usage(strategy: Strategy) -> Usage | None:
    endpoint = getattr(strategy, "endpoint", None)
    return endpoint.usage() if endpoint is not None else None


async def _measured(bench: Bench, case: Any, schema: Any, strategy: Strategy) -> CaseResult:
    """`bench.run_case`, with the case's wall time and what it cost in model calls and tokens."""
    if schema is None:
        return CaseResult(case.name, case.schema, case.category, case.expected, strategy.name,
                          status="error", error=f"unknown schema {case.schema!r}")
    before = _usage(strategy)
    t0 = time.perf_counter()
    r = await bench.run_case(case, schema, strategy)
    r.case_ms = _ms(t0)
    after = _usage(strategy)
    if before is not None and after is not None:
        used = after.since(before)
        r.model_calls, r.prompt_tokens, r.completion_tokens = used.calls, used.prompt_tokens, used.completion_tokens
    return r


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Tracker:
    """Progress over a long run: cases done of all, model calls, elapsed, and an estimate of the
    time left (the mean time of the cases run so far in this process, times the cases left)."""

    def __init__(self, total: int, resumed: int = 0) -> None:
        self.total = total
        self.done = resumed
        self.ran = 0  # in this process (the estimate's basis)
        self.calls = 0
        self.tokens = 0
        self.t0 = time.perf_counter()

    def line(self, r: CaseResult) -> str:
        self.done += 1
        self.ran += 1
        self.calls += r.model_calls
        self.tokens += r.prompt_tokens + r.completion_tokens
        elapsed = time.perf_counter() - self.t0
        left = self.total - self.done
        eta = _duration(elapsed / self.ran * left) if left else "0s"
        model = f"{self.calls} model calls ({self.tokens} tokens), " if self.calls else ""
        return f"{_line(r, self.done, self.total)}  | {model}{_duration(elapsed)} elapsed, ~{eta} left"


def run_sync(admin_url: str, schemas: Mapping[str, Any], cases: Sequence[Any], strategies: Sequence[Strategy],
             verifier_factory: Callable[[], Verifier], **kw: Any) -> RunResult:
    """`run_cases` on a fresh event loop, with a verifier made and closed there."""
    async def go() -> RunResult:
        verifier = verifier_factory()
        try:
            return await run_cases(admin_url, schemas, cases, strategies, verifier, **kw)
        finally:
            await verifier.close()
            for s in strategies:  # model clients live on this loop
                endpoint = getattr(s, "endpoint", None)
                if endpoint is not None:
                    await endpoint.close()

    return asyncio.run(go())

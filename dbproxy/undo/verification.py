"""Sandbox verification as the running proxy uses it.

One `Verification` per proxy holds the sandbox backend (started in the background when an agent
may use undo mode, so the first commit does not pay for it; with `sandbox = "auto"` the log says
which backend it chose and why), a small pool of upstream
connections per database for sampling (the proxy's own credentials; the sandbox never sees
them), and the cache of verified results (`sandbox.cache`).

- `at_commit`: undo mode's gate. The inverse commits only if this says verified.
- `transaction`: an agent transaction's journal statements and captured changes as sandbox input.
  Statements replay as text unless they used bind parameters (the journal keeps the text, not
  the values) or COPY data; then the sandbox applies the captured images instead, and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import asyncpg

from dbproxy.config import log
from dbproxy.config.settings import LlmSettings
from dbproxy.journal.records import StatementRecord
from inverse.images import SNAPSHOT_OPS, Change, TableInfo
from inverse.lexer import lex
from inverse.llm.cache import AnswerCache
from inverse.llm.client import LlmClient
from inverse.llm.config import LlmConfig
from inverse.undo_plan import Plan, build
from sandbox.auto import AutoBackend, make_backend
from sandbox.backends import BackendUnavailable
from sandbox.cache import VerdictCache, statement_shape
from sandbox.hybrid import Completed, askable, complete
from sandbox.sampler import SampleOptions, read_tables
from sandbox.schema_copy import SchemaError
from sandbox.verdict import Verdict
from sandbox.verify import Candidate, Transaction, Verifier

#: Row changes a verification takes on; a larger transaction is verified on its first ones (and
#: says so), it is not held for its size.
VERIFY_LIMIT = 1000
_TX_CONTROL = {"begin", "start", "commit", "end", "abort"}


def replayable(statements: list[StatementRecord]) -> tuple[list[str] | None, str]:
    """The agent's statements that ran without error, as text a sandbox can replay, or None and why."""
    out: list[str] = []
    for st in statements:
        if st.sqlstate is not None:
            continue  # failed: its savepoint was rolled back, it changed nothing
        toks = lex(st.sql).tokens
        words = [t.value for t in toks if t.kind == "word"][:2]
        if not words:
            continue
        if words[0] in _TX_CONTROL or (words[0] == "rollback" and words[1:2] != ["to"]) or words[:2] == [
                "prepare", "transaction"]:
            continue
        if any(t.kind == "param" for t in toks):
            return None, "the statements used bind parameters, whose values the journal does not keep"
        if words[0] == "copy":
            return None, "COPY data is not kept in the journal"
        out.append(st.sql)
    return out, ""


def transaction(statements: list[StatementRecord], changes: list[Change], tables: dict[int, TableInfo]) -> Transaction:
    texts, why = replayable(statements)
    return Transaction(changes, tables, statements=texts, not_replayable=why)


def llm_client(settings: LlmSettings) -> LlmClient | None:
    """The model client the settings describe, or None while no API key is set (feature off)."""
    config = LlmConfig(base_url=settings.base_url, model=settings.model,
                       api_key=settings.api_key.get_secret_value() if settings.api_key else None,
                       timeout=settings.timeout, max_attempts=settings.max_attempts,
                       max_retries=settings.max_retries, max_tokens=settings.max_tokens)
    if not config.enabled:
        return None
    log.event("llm.configured", endpoint=config.describe())
    return LlmClient(config)


class Verification:
    def __init__(self, *, backend: str, data_dir: Path, server_url: str | None, dsn_for: Callable[[str], str],
                 options: SampleOptions, timeout: float, cache: bool, llm: LlmClient | None = None,
                 llm_attempts: int = 3, image: str | None = None) -> None:
        self.kind = backend
        self.image = image
        self.data_dir = data_dir
        self.server_url = server_url
        self.dsn_for = dsn_for
        self.options = options
        self.timeout = timeout
        self.cache = VerdictCache() if cache else None
        self._verifier: Verifier | None = None
        self.llm = llm
        self.llm_attempts = llm_attempts
        self.answers = AnswerCache() if cache else None
        self._pools: dict[str, asyncpg.Pool] = {}
        self._lock = asyncio.Lock()
        self._warm: asyncio.Task[None] | None = None
        self._copying: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._epoch: dict[str, str] = {}
        self._announced = ""

    @property
    def enabled(self) -> bool:
        return self.kind != "off"

    def warm(self, database: str) -> None:
        """Start the sandbox now, in the background (a failure is reported at the first verification)."""
        if self.enabled and self._warm is None:
            self._warm = asyncio.get_running_loop().create_task(self._start(database))

    async def _start(self, database: str) -> None:
        try:
            verifier = await self._get(database)
            await verifier.backend.start()
            self._announce()
            log.event("sandbox.ready", backend=verifier.backend.describe())
        except Exception as e:
            log.event("sandbox.unavailable", reason=str(e), level=logging.WARNING)
            return
        self.schema_moved(database)

    def _announce(self) -> None:
        """Log `auto`'s choice, once per choice (it falls back to local if containers fail later)."""
        backend = self._verifier.backend if self._verifier is not None else None
        if isinstance(backend, AutoBackend) and backend.choice and backend.choice != self._announced:
            self._announced = backend.choice
            log.event("sandbox.auto", chose=backend.name, why=backend.choice.split(": ", 1)[1])

    def schema_moved(self, database: str) -> None:
        """Copy `database`'s schema into the sandbox again, in the background (at most one copy
        at a time per database; a move during a copy runs one more). Called at start, after a
        transaction with DDL committed, and when a commit sees another session's DDL."""
        if not self.enabled:
            return
        task = self._copying.get(database)
        if task is not None and not task.done():
            self._again.add(database)
            return
        self._copying[database] = asyncio.get_running_loop().create_task(self._copy(database))

    async def ready_for_ddl(self, database: str) -> None:
        """An agent's DDL is about to run: make sure the schema copy it will be verified against
        (the schema as it is now) exists first. At its COMMIT the transaction holds its tables
        ACCESS EXCLUSIVE, and pg_dump would wait on those very locks; taken now, nothing of it
        locks anything yet. Waits at most `timeout`; a failure shows at verification."""
        if not self.enabled:
            return
        try:
            async with asyncio.timeout(self.timeout):
                if self._warm is not None and not self._warm.done():
                    await asyncio.shield(self._warm)
                verifier = await self._get(database)
                pool = await self._pool(database)
                async with pool.acquire() as con:
                    await verifier.prepare(con, self.dsn_for(database))
        except TimeoutError:
            log.event("sandbox.schema_copy_slow", database=database, level=logging.WARNING)
        except Exception as e:
            log.event("sandbox.schema_copy_failed", database=database, reason=str(e), level=logging.WARNING)

    async def settled(self) -> None:
        """Wait for the schema copies under way (tests, and callers that want a copy ready)."""
        if self._warm is not None:
            await asyncio.wait([self._warm])
        while any(not t.done() for t in self._copying.values()):
            await asyncio.wait([t for t in self._copying.values() if not t.done()])

    async def _copy(self, database: str) -> None:
        while True:
            self._again.discard(database)
            try:
                verifier = await self._get(database)
                pool = await self._pool(database)
                async with pool.acquire() as con:
                    name = await verifier.prepare(con, self.dsn_for(database))
                log.event("sandbox.schema_copied", database=database, copy=name, level=logging.DEBUG)
            except Exception as e:  # the next verification tries again and reports it in its verdict
                log.event("sandbox.schema_copy_failed", database=database, reason=str(e), level=logging.WARNING)
            if database not in self._again:
                return

    async def _pool(self, database: str) -> asyncpg.Pool:
        pool = self._pools.get(database)
        if pool is None:
            pool = await asyncpg.create_pool(self.dsn_for(database), min_size=0, max_size=2, timeout=10,
                                             server_settings={"application_name": "dbproxy sandbox sampler",
                                                              "lock_timeout": "1s", "statement_timeout": "20s",
                                                              # An agent's policy function must never run
                                                              # as the proxy: fail instead.
                                                              "row_security": "off"})
            self._pools[database] = pool
        return pool

    async def _get(self, database: str) -> Verifier:
        async with self._lock:
            if self._verifier is None:
                major = None
                with contextlib.suppress(Exception):
                    pool = await self._pool(database)
                    major = int(await pool.fetchval("SHOW server_version_num")) // 10000
                # The proxy stops the sandbox cluster it started when it shuts down; its data
                # directory stays, so the next start is quick and reuses the schema copies.
                backend = make_backend(self.kind, data_dir=self.data_dir, server_url=self.server_url,
                                       upstream_major=major, stop_on_close=True, image=self.image)
                self._verifier = Verifier(backend, options=self.options, timeout=self.timeout)
            return self._verifier

    @contextlib.asynccontextmanager
    async def _sampling(self, database: str,
                        tx: Transaction) -> AsyncIterator[tuple[Verifier, asyncpg.Connection, Transaction]]:
        """The verifier, a sampler connection to `database`, and `tx` with the tables it reads."""
        verifier = await self._get(database)
        pool = await self._pool(database)
        async with pool.acquire() as con:
            if tx.statements and not tx.read_tables:
                tx = replace(tx, read_tables=await read_tables(con, tx.statements))
            yield verifier, con, tx

    async def verify(self, database: str, tx: Transaction, candidate: Candidate) -> Verdict:
        try:
            async with self._sampling(database, tx) as (verifier, con, tx):
                verdict = await verifier.verify(con, self.dsn_for(database), tx, candidate)
            self._announce()
            return verdict
        except BackendUnavailable as e:
            return Verdict.could_not(str(e), backend=self.backend_name)
        except (OSError, asyncpg.PostgresError) as e:
            return Verdict.could_not(f"the upstream could not be read for the sample: {e}", backend=self.backend_name)

    @property
    def backend_name(self) -> str:
        """The backend verifications run on (`auto`'s choice once made)."""
        return self._verifier.backend.name if self._verifier is not None else self.kind

    async def verify_sample(self, database: str, plan: Plan, changes: list[Change], tables: dict[int, TableInfo],
                            total: int | None) -> Verdict:
        """A transaction with more changes than are fetched at its COMMIT, verified on those."""
        return await self._sample(database, plan, changes, tables, total)

    async def _sample(self, database: str, plan: Plan, changes: list[Change], tables: dict[int, TableInfo],
                      total: int | None) -> Verdict:
        """Bulk changes: the inverse of the first changes (and all DDL), built from them alone, on
        a sample holding their rows; the captured after-images bring it forward (a replay of the
        statements would change rows the sample does not hold). The verdict says so."""
        rows = [c for c in changes if c.is_row or c.op in SNAPSHOT_OPS]
        if len(rows) > VERIFY_LIMIT:
            rows = rows[:VERIFY_LIMIT]
            keep = {c.seq for c in rows}
            changes = [c for c in changes if c.seq in keep or not (c.is_row or c.op in SNAPSHOT_OPS)]
            plan = build(changes, tables)
        of = f" of {total}" if total else ""
        tx = Transaction(changes, tables, statements=None,
                         not_replayable=f"verified on a sample: the first {len(rows)}{of} captured changes")
        verdict = await self.verify(database, tx, Candidate(plan))
        verdict.sampled = f"{len(rows)}{of} captured changes"
        return verdict

    async def at_commit(self, database: str, statements: list[StatementRecord], plan: Plan, changes: list[Change],
                        tables: dict[int, TableInfo], *, complete: bool, schema_version: str | None,
                        total: int | None = None) -> Verdict | None:
        """The gate's verdict for an inverse about to be committed (None: sandbox off)."""
        if not self.enabled:
            return None
        has_ddl = any(c.op == "X" for c in changes)
        if schema_version is not None and not has_ddl and self._epoch.get(database) != schema_version:
            # Someone's DDL committed since we last looked (the epoch moves before commit, so a
            # transaction's own DDL is left to `schema_moved` after its commit).
            if database in self._epoch:
                self.schema_moved(database)
            self._epoch[database] = schema_version
        if not complete or len(changes) > VERIFY_LIMIT:
            return await self._sample(database, plan, changes, tables, total)
        # The cache is consulted before anything else is parsed: a hit must cost little (one lexing
        # pass over the statements). DDL in the transaction moves the version, so never hits.
        shape = None
        if self.cache is not None and schema_version is not None and not has_ddl:
            shape = statement_shape(s.sql for s in statements if s.sqlstate is None)
            hit = self.cache.get(database, shape, schema_version)
            if hit is not None:
                return replace(hit, cached=True, timings_ms={})
        verdict = await self.verify(database, transaction(statements, changes, tables), Candidate(plan))
        if self.cache is not None and shape is not None:
            self.cache.put(database, shape, schema_version, verdict)
        return verdict

    async def complete(self, database: str, statements: list[StatementRecord], plan: Plan, changes: list[Change],
                       tables: dict[int, TableInfo]) -> Completed:
        """Undo mode, when the rules left DDL they cannot invert: a model's proposal for it, which
        counts only once the sandbox verified the whole plan with it (`sandbox.hybrid`)."""
        assert self.llm is not None
        why = askable(plan)
        if why:
            return Completed(plan, None, None, why)
        if not self.enabled:
            return Completed(plan, None, None, "a proposal needs the sandbox to verify it, and sandbox = off")
        tx = transaction(statements, changes, tables)
        try:
            async with self._sampling(database, tx) as (verifier, con, tx):
                url = self.dsn_for(database)
                # Cached by statement shape and the schema before the transaction (its copy's name
                # is the catalog fingerprint): the same DDL on the same schema gets the same answer.
                key = None
                if self.answers is not None and tx.statements is not None:
                    copy = await verifier.prepare(con, url)
                    key = (database, statement_shape(tx.statements), copy)
                return await complete(verifier, con, url, tx, plan, self.llm, max_attempts=self.llm_attempts,
                                      mask=self.options.mask, cache=self.answers, cache_key=key)
        except BackendUnavailable as e:
            return Completed(plan, None, None, f"the sandbox is unavailable: {e}")
        except SchemaError as e:
            return Completed(plan, None, None, f"the schema could not be copied to the sandbox: {e}")
        except (OSError, asyncpg.PostgresError) as e:
            return Completed(plan, None, None, f"the upstream could not be read for the sample: {e}")
        except Exception as e:  # a bug must hold the transaction for a person, not end the session
            log.event("llm.complete_failed", database=database, reason=repr(e), level=logging.ERROR, exc_info=True)
            return Completed(plan, None, None, f"internal error while asking for an inverse: {e!r}")

    async def close(self) -> None:
        if self.llm is not None:
            await self.llm.close()
        for task in [self._warm, *self._copying.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._verifier is not None:
            await self._verifier.close()
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()

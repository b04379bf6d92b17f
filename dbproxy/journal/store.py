"""The journal: the durable record of every agent transaction, in PostgreSQL.

It lives in a `dbproxy` schema (in the upstream database or a separate state database), so several
proxy instances can share it and nothing is lost when one restarts. Tables (schema version 4):

- `dbproxy.schema_version (component, version, updated_at)`: one row per component that keeps
  tables in the schema (`journal` here), so later versions can migrate.
- `dbproxy.instances (id, started_at, last_seen, stopped_at, pid, hostname, heartbeat_seconds)`:
  one row per proxy process. `last_seen` is refreshed every `heartbeat_seconds`; an instance whose
  heartbeat is older than three periods, or that stopped cleanly, is *gone*.
- `dbproxy.transactions`: one row per unit a reviewer decides on (see `dbproxy.journal.records`).
- `dbproxy.statements (tx_id, seq, tx_no, sql, tag, rows, sqlstate, error, at, params)`: what ran
  in it; `params` (version 3) is a JSON array of its bind parameter values as text, secrets
  redacted (`dbproxy.journal.params`), or NULL for a statement without any.

Version 2 added `transactions.undo`, version 3 `statements.params`, version 4 `transactions.policy`
(which rule or grant decided the transaction at the agent's COMMIT); `Journal.open` migrates an
older schema under an advisory lock. `fetch_transactions` and `fetch_transaction` read it over
any connection, so the offline reader (`dbproxy log` with the proxy stopped) shares the queries.

Hot path: `record_statement` only appends to a bounded in-memory buffer; a background task writes
batches in order (one round trip per batch) and retries with backoff while the database is away.
If the buffer overflows the oldest records are dropped and the loss is counted on their
transactions (`statements_lost`), so a reviewer can see the statement list has a gap.

Transaction times and heartbeats come from the database clock (`now()`), so instances on different
hosts agree; a statement's `at` is the proxy's clock when it was recorded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from dbproxy.config.log import event
from dbproxy.journal.records import FINAL_OUTCOMES, Mode, Outcome, StatementRecord, TransactionRecord

SCHEMA_VERSION = 4
COMPONENT = "journal"
#: Key of the advisory lock held while creating or migrating the schema.
_SCHEMA_LOCK = 0x6462_7078_6A6E_6C31  # "dbpxjnl1"

#: Statement SQL longer than this is stored cut, with a marker saying how long it was.
MAX_SQL_CHARS = 1_000_000
#: Error messages longer than this are stored cut.
MAX_ERROR_CHARS = 65_536
#: Records held in memory at most (and characters of SQL at most) before the oldest are dropped.
DEFAULT_MAX_BUFFER = 10_000
MAX_BUFFER_CHARS = 64 * 1024 * 1024
#: One write carries at most this many records (or about this many characters of SQL).
BATCH_RECORDS = 1000
BATCH_CHARS = 4 * 1024 * 1024
DEFAULT_HEARTBEAT = 10.0
#: Seq counters of finished transactions kept, for statements recorded after the outcome.
_FINISHED_SEQ_KEPT = 10_000

_OUTCOMES = frozenset(get_args(Outcome))
_MODES = frozenset(get_args(Mode))
_UNFINISHED = ("open", "pending", "committing")
RESTART_REASON = "the proxy restarted; the upstream rolled the transaction back"
UNKNOWN_COMMIT_REASON = "commit result unknown after restart"

#: libpq URL parameters that are client-side only; asyncpg would send them to the server as settings.
_CLIENT_ONLY_PARAMS = frozenset({
    "connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "tcp_user_timeout", "sslcompression", "requirepeer", "gssencmode", "channel_binding",
    "fallback_application_name", "gssdelegation", "load_balance_hosts",
})

_DDL_V1 = f"""
CREATE TABLE IF NOT EXISTS dbproxy.instances (
    id text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz,
    pid integer,
    hostname text,
    heartbeat_seconds double precision NOT NULL DEFAULT {DEFAULT_HEARTBEAT}
);
CREATE TABLE IF NOT EXISTS dbproxy.transactions (
    id bigserial PRIMARY KEY,
    instance text NOT NULL,
    agent text NOT NULL,
    session bigint NOT NULL,
    database text NOT NULL,
    mode text NOT NULL,
    backend_pid integer,
    xid bigint,
    started_at timestamptz NOT NULL DEFAULT now(),
    held_at timestamptz,
    ended_at timestamptz,
    outcome text NOT NULL CHECK (outcome IN ({", ".join(f"'{o}'" for o in sorted(_OUTCOMES))})),
    decided_by text,
    reason text,
    statements integer NOT NULL DEFAULT 0,
    statements_lost integer NOT NULL DEFAULT 0,
    agent_transactions integer NOT NULL DEFAULT 0,
    restart_notified boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS transactions_unfinished ON dbproxy.transactions (instance)
    WHERE outcome IN ('open', 'pending', 'committing');
CREATE INDEX IF NOT EXISTS transactions_outcome ON dbproxy.transactions (outcome, id);
CREATE INDEX IF NOT EXISTS transactions_agent ON dbproxy.transactions (agent, id);
CREATE INDEX IF NOT EXISTS transactions_restart_unnotified ON dbproxy.transactions (agent)
    WHERE decided_by = 'restart' AND NOT restart_notified;
CREATE TABLE IF NOT EXISTS dbproxy.statements (
    tx_id bigint NOT NULL REFERENCES dbproxy.transactions (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    tx_no integer NOT NULL,
    sql text NOT NULL,
    tag text,
    rows bigint,
    sqlstate text,
    error text,
    at timestamptz NOT NULL,
    PRIMARY KEY (tx_id, seq)
);
"""

_TX_COLUMNS = (
    "id, agent, session, database, mode, backend_pid, xid, started_at, held_at, ended_at, outcome, "
    "decided_by, reason, statements, statements_lost, agent_transactions, undo::text AS undo, policy"
)


def _tx_columns(version: int) -> str:
    """The transaction columns a journal of schema `version` has (the offline reader reads old ones)."""
    return _TX_COLUMNS if version >= 4 else _TX_COLUMNS.removesuffix(", policy")
#: Version 2 (undo mode): the inverse, its verification and undo/redo history, as JSON.
_DDL_V2 = "ALTER TABLE dbproxy.transactions ADD COLUMN IF NOT EXISTS undo jsonb;"
#: Version 3: bind parameter values of each statement (JSON array of text, NULL for none).
_DDL_V3 = "ALTER TABLE dbproxy.statements ADD COLUMN IF NOT EXISTS params jsonb;"
#: Version 4: which rule or grant decided the transaction (`dbproxy.policy`), in words.
_DDL_V4 = "ALTER TABLE dbproxy.transactions ADD COLUMN IF NOT EXISTS policy text;"
_STMT_COLUMNS = "seq, tx_no, sql, tag, rows, sqlstate, error, at"

# One round trip per batch: insert the statements (a retried batch skips rows already there) and
# bump the per-transaction statement and lost counters.
_WRITE_BATCH = """
WITH ins AS (
    INSERT INTO dbproxy.statements (tx_id, seq, tx_no, sql, tag, rows, sqlstate, error, at, params)
    SELECT t, s, n, q, g, r, st, e, a, p::jsonb
    FROM unnest($1::bigint[], $2::integer[], $3::integer[], $4::text[], $5::text[],
                $6::bigint[], $7::text[], $8::text[], $9::timestamptz[], $10::text[])
         AS u(t, s, n, q, g, r, st, e, a, p)
    ON CONFLICT DO NOTHING
    RETURNING tx_id
), per_tx AS (
    SELECT tx_id, sum(n)::integer AS n, sum(lost)::integer AS lost FROM (
        SELECT tx_id, 1 AS n, 0 AS lost FROM ins
        UNION ALL
        SELECT l.tx_id, 0, l.lost FROM unnest($11::bigint[], $12::integer[]) AS l(tx_id, lost)
    ) c GROUP BY tx_id
), upd AS (
    UPDATE dbproxy.transactions t
    SET statements = t.statements + p.n, statements_lost = t.statements_lost + p.lost
    FROM per_tx p WHERE t.id = p.tx_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins) AS inserted
"""


_FINISHED_ROWS = """
SELECT $1, a, s, d, m, p, st, en, o, b, n, x, j::jsonb, pol{count}
FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::integer[], $7::timestamptz[], $8::timestamptz[],
            $9::text[], $10::integer[], $11::bigint[], $12::text[], $13::text[], $14::text[]{count_array})
     WITH ORDINALITY AS u(a, s, d, m, p, st, en, o, n, x, j, b, pol{count_name}, ord)
ORDER BY ord"""
_FINISHED_COLUMNS = ("INSERT INTO dbproxy.transactions (instance, agent, session, database, mode, backend_pid, "
                     "started_at, ended_at, outcome, decided_by, agent_transactions, xid, undo, policy{count})")
_INSERT_FINISHED = (_FINISHED_COLUMNS.format(count="") + _FINISHED_ROWS.format(count="", count_array="", count_name="")
                    + " RETURNING id")

#: Finished transactions and their statements at once: the statements' `$16` says which of the
#: transactions (1-based, in order) each belongs to. The foreign key is checked at the end of the
#: statement, when the transactions' rows exist.
_INSERT_FINISHED_WITH_STATEMENTS = f"""
WITH tx AS (
    {_FINISHED_COLUMNS.format(count=", statements")}
    {_FINISHED_ROWS.format(count=", c", count_array=", $15::integer[]", count_name=", c")}
    RETURNING id
), numbered AS (
    SELECT id, row_number() OVER (ORDER BY id) AS ordinal FROM tx
), st AS (
    INSERT INTO dbproxy.statements (tx_id, seq, tx_no, sql, tag, rows, sqlstate, error, at, params)
    SELECT numbered.id, v.seq, v.n, v.q, v.g, v.r, v.st, v.e, v.a, v.p::jsonb
    FROM unnest($16::bigint[], $17::integer[], $18::integer[], $19::text[], $20::text[], $21::bigint[],
                $22::text[], $23::text[], $24::timestamptz[], $25::text[]) AS v(o, seq, n, q, g, r, st, e, a, p)
    JOIN numbered ON numbered.ordinal = v.o
)
SELECT id FROM numbered
"""


#: Seconds the writer waits after the first new record, so that records written close together
#: share one batch (and one WAL flush) instead of each paying a round trip.
LINGER = 0.02


class FinishedTransaction(NamedTuple):
    agent: str
    session: int
    database: str
    mode: str
    backend_pid: int | None
    started_at: datetime
    ended_at: datetime
    outcome: str
    agent_transactions: int
    xid: int | None = None
    undo: str | None = None  # JSON text (undo mode: the inverse)
    decided_by: str = "agent"  # the reviewer, for the journal entry of an undo or redo
    policy: str | None = None  # which rule or grant decided it (dbproxy.policy)


class JournalError(Exception):
    """The journal database could not be reached or refused an operation. Messages name the
    database's host and port, never its credentials."""


class _Record(NamedTuple):
    num: int  # position in recording order, over all transactions
    tx_id: int
    seq: int
    tx_no: int
    sql: str
    tag: str | None
    rows: int | None
    sqlstate: str | None
    error: str | None
    at: datetime
    params: str | None = None  # JSON array text


class _Batch:
    """What the writer is trying to make durable: records in order plus lost-record counts."""

    __slots__ = ("drop_mark", "lost", "records")

    def __init__(self, records: list[_Record], lost: dict[int, int], drop_mark: int) -> None:
        self.records = records
        self.lost = lost
        self.drop_mark = drop_mark


async def _no_reset(con: asyncpg.Connection) -> None:
    """Pool reset hook: the journal leaves no session state behind, so skip the RESET ALL round trip."""


def display_of(dsn: str) -> str:
    """host:port (or the socket) of a libpq URL, safe to show."""
    try:
        parts = urlsplit(dsn)
        q = dict(parse_qsl(parts.query))
        host = q.get("host") or parts.hostname or "localhost"
        port = q.get("port") or parts.port or 5432
    except ValueError:
        return "(unparseable URL)"
    if host.startswith("/"):
        return f"socket {host}/.s.PGSQL.{port}"
    return f"{host}:{port}"


def asyncpg_dsn(dsn: str) -> tuple[str, float]:
    """Drop libpq client-only URL parameters asyncpg would send to the server as settings; return
    the URL and the connect timeout (`connect_timeout`, default 10 s)."""
    parts = urlsplit(dsn)
    if not parts.query:
        return dsn, 10.0
    timeout = 10.0
    kept = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k == "connect_timeout":
            try:
                timeout = float(v) if float(v) > 0 else 10.0
            except ValueError:
                pass
        elif k not in _CLIENT_ONLY_PARAMS:
            kept.append((k, v))
    return urlunsplit(parts._replace(query=urlencode(kept))), timeout


def _password(dsn: str) -> str | None:
    try:
        parts = urlsplit(dsn)
        return parts.password or dict(parse_qsl(parts.query)).get("password")
    except ValueError:
        return None


def _describe(e: BaseException, secret: str | None = None) -> str:
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if isinstance(e, asyncpg.PostgresError) and getattr(e, "sqlstate", None):
        text += f" (SQLSTATE {e.sqlstate})"
    if secret:
        text = text.replace(secret, "***")
    return text


def _transient(e: BaseException) -> bool:
    """An error worth retrying later: the connection or the server, not this data."""
    if isinstance(e, asyncpg.DataError):  # a client-side encoding problem with the data itself
        return False
    if isinstance(e, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        return True
    if isinstance(e, asyncpg.PostgresError):
        state = getattr(e, "sqlstate", None) or ""
        return state[:2] in ("08", "40", "53", "57", "58") or state in ("25006", "55P03")
    return False


def _connection_lost(e: BaseException) -> bool:
    """The connection broke (rather than the statement failing or timing out): the statement did not
    run, or was rolled back with its session, except in the rare case of a network failure after
    the commit and before its acknowledgement."""
    if isinstance(e, asyncpg.DataError):
        return False
    if isinstance(e, asyncpg.InterfaceError | asyncpg.PostgresConnectionError | ConnectionError):
        return True
    return isinstance(e, asyncpg.PostgresError) and getattr(e, "sqlstate", "") in ("57P01", "57P02", "57P03")


def _clean(s: str | None) -> str | None:
    """Text PostgreSQL can store: no NUL characters, no lone surrogates."""
    if s is None:
        return None
    if "\x00" in s:
        s = s.replace("\x00", "\\0")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = s.encode("utf-8", "replace").decode("utf-8")
    return s


def _params_json(params: list[str | None]) -> str:
    """Bind values as the JSON array text stored in `statements.params`. jsonb has no NUL
    character (a value the server refused may have one), so it is written `\\0` as in SQL text."""
    return json.dumps([p.replace("\x00", "\\0") if p is not None and "\x00" in p else p for p in params],
                      ensure_ascii=False)


def _chars(rec: _Record) -> int:
    """What a buffered record counts against the buffer's and a batch's character budget."""
    return len(rec.sql) + (len(rec.params) if rec.params is not None else 0)


async def schema_version(con: asyncpg.Connection) -> int | None:
    """The journal's schema version in the database `con` is connected to (None: no journal)."""
    if not await con.fetchval("SELECT to_regclass('dbproxy.schema_version') IS NOT NULL"):
        return None
    return await con.fetchval("SELECT version FROM dbproxy.schema_version WHERE component = $1", COMPONENT)


async def fetch_transaction(con: asyncpg.Connection, tx_id: int, *,
                            version: int = SCHEMA_VERSION) -> tuple[TransactionRecord, list[StatementRecord]] | None:
    """A transaction and its statements in order, read in one read-only snapshot, or None.
    `version`: the schema version of the journal read (older ones lack some columns)."""
    columns = _STMT_COLUMNS + (", params::text AS params" if version >= 3 else "")
    async with con.transaction(isolation="repeatable_read", readonly=True):
        tx = await con.fetchrow(f"SELECT {_tx_columns(version)} FROM dbproxy.transactions WHERE id = $1", tx_id)
        if tx is None:
            return None
        stmts = await con.fetch(f"SELECT {columns} FROM dbproxy.statements WHERE tx_id = $1 ORDER BY seq", tx_id)
    return TransactionRecord(**dict(tx)), [StatementRecord(**dict(s)) for s in stmts]


async def fetch_transactions(con: asyncpg.Connection, *, outcome: str | None = None, agent: str | None = None,
                             limit: int = 100, before_id: int | None = None, table: str | None = None,
                             search: str | None = None, since: datetime | None = None,
                             until: datetime | None = None, version: int = SCHEMA_VERSION) -> list[TransactionRecord]:
    """Transactions, newest first; `before_id` pages on (ids smaller than it). `table`: one of its
    statements mentions that text; `search`: a statement, the reason or the decider does
    (case-insensitive); `since`/`until`: it started in that time."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    where, args = [], []
    for column, value, op in (("outcome", outcome, "="), ("agent", agent, "="), ("id", before_id, "<"),
                              ("started_at", since, ">="), ("started_at", until, "<")):
        if value is not None:
            args.append(value)
            where.append(f"{column} {op} ${len(args)}")
    for text, also in ((table, ""), (search, " OR t.reason ILIKE $N OR t.decided_by ILIKE $N")):
        if text:
            args.append("%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
            n = f"${len(args)}"
            where.append(f"(EXISTS (SELECT 1 FROM dbproxy.statements s WHERE s.tx_id = t.id AND s.sql ILIKE {n})"
                         + also.replace("$N", n) + ")")
    args.append(limit)
    sql = (f"SELECT {_tx_columns(version)} FROM dbproxy.transactions t"
           + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY id DESC LIMIT ${len(args)}")
    return [TransactionRecord(**dict(r)) for r in await con.fetch(sql, *args)]


def _cap(s: str, limit: int) -> str:
    if len(s) <= limit:
        return s
    return s[:limit] + f"\n/* dbproxy: cut at {limit} characters; the original had {len(s)} */"


class Journal:
    """Durable record of agent transactions in the `dbproxy` schema. One per proxy process."""

    def __init__(self, pool: asyncpg.Pool, *, instance: str, display: str, max_buffer: int,
                 heartbeat_interval: float) -> None:
        self.instance = instance
        self.display = display
        self.heartbeat_interval = heartbeat_interval
        self._pool = pool
        self._max_buffer = max_buffer
        self._closed = False
        # statement buffer
        self._buf: collections.deque[_Record] = collections.deque()
        self._buf_chars = 0
        self._recorded = 0  # records numbered so far
        self._drops = 0  # records dropped so far (overflow, or refused by the database)
        self._drops_applied = 0  # drops whose counts are durable
        self._lost: dict[int, int] = {}  # tx_id -> dropped records not yet counted in the database
        self._batch: _Batch | None = None
        self._seq: dict[int, int] = {}
        self._finished_seq: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._overflow_logged = 0.0
        self._writer: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()
        self._heartbeat: asyncio.Task[None] | None = None

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, dsn: str, *, instance: str, max_buffer: int = DEFAULT_MAX_BUFFER,
                   heartbeat_interval: float = DEFAULT_HEARTBEAT) -> Journal:
        """Connect, create or check the schema, register this instance and start the background
        writer and heartbeat. Raises JournalError (naming host and port only) on failure."""
        if not instance:
            raise ValueError("instance must be a non-empty id")
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        display = display_of(dsn)
        secret = _password(dsn)
        try:
            url, timeout = asyncpg_dsn(dsn)
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=4, reset=_no_reset, timeout=timeout, command_timeout=30,
                max_inactive_connection_lifetime=300,
                # Journal writes do not wait for their own WAL flush: the one write that must be
                # durable before anything commits upstream, a reviewer's 'committing' mark, turns
                # it back on (`update`), and its flush covers every journal write before it.
                server_settings={"application_name": "dbproxy journal", "synchronous_commit": "off"})
        except Exception as e:
            raise JournalError(f"cannot connect to the journal database at {display}: {_describe(e, secret)}") from None
        journal = cls(pool, instance=instance, display=display, max_buffer=max_buffer,
                      heartbeat_interval=heartbeat_interval)
        try:
            async with pool.acquire() as con:
                await journal._ensure_schema(con)
                await con.execute(
                    "INSERT INTO dbproxy.instances (id, pid, hostname, heartbeat_seconds) VALUES ($1, $2, $3, $4) "
                    "ON CONFLICT (id) DO UPDATE SET started_at = now(), last_seen = now(), stopped_at = NULL, "
                    "pid = EXCLUDED.pid, hostname = EXCLUDED.hostname, heartbeat_seconds = EXCLUDED.heartbeat_seconds",
                    instance, os.getpid(), socket.gethostname(), heartbeat_interval)
        except JournalError:
            pool.terminate()
            raise
        except Exception as e:
            pool.terminate()
            raise JournalError(f"cannot set up the journal at {display}: {_describe(e, secret)}") from None
        journal._writer = asyncio.create_task(journal._write_loop(), name="dbproxy-journal-writer")
        journal._heartbeat = asyncio.create_task(journal._heartbeat_loop(), name="dbproxy-journal-heartbeat")
        event("journal_open", database=display, instance=instance)
        return journal

    async def _ensure_schema(self, con: asyncpg.Connection) -> None:
        version_sql = "SELECT version FROM dbproxy.schema_version WHERE component = $1"
        if await con.fetchval("SELECT to_regclass('dbproxy.schema_version') IS NOT NULL"):
            # The usual case: nothing to create, and no CREATE privilege needed.
            if await con.fetchval(version_sql, COMPONENT) == SCHEMA_VERSION:
                return
        async with con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await con.execute(
                "CREATE SCHEMA IF NOT EXISTS dbproxy;"
                "CREATE TABLE IF NOT EXISTS dbproxy.schema_version ("
                " component text PRIMARY KEY, version integer NOT NULL,"
                " updated_at timestamptz NOT NULL DEFAULT now())")
            version = await con.fetchval(version_sql, COMPONENT)
            if version is not None and version > SCHEMA_VERSION:
                raise JournalError(
                    f"the journal at {self.display} has schema version {version}; this dbproxy knows "
                    f"only up to {SCHEMA_VERSION} (upgrade dbproxy)")
            if version is None:
                await con.execute(_DDL_V1)
                await con.execute(_DDL_V2)
                await con.execute(_DDL_V3)
                await con.execute(_DDL_V4)
                await con.execute("INSERT INTO dbproxy.schema_version (component, version) VALUES ($1, $2)",
                                  COMPONENT, SCHEMA_VERSION)
                event("journal_schema_created", database=self.display, version=SCHEMA_VERSION)
            elif version < SCHEMA_VERSION:
                if version < 2:
                    await con.execute(_DDL_V2)
                if version < 3:
                    await con.execute(_DDL_V3)
                if version < 4:
                    await con.execute(_DDL_V4)
                await con.execute("UPDATE dbproxy.schema_version SET version = $2, updated_at = now() "
                                  "WHERE component = $1", COMPONENT, SCHEMA_VERSION)
                event("journal_schema_migrated", database=self.display, version=SCHEMA_VERSION, was=version)

    async def close(self, grace: float = 5.0) -> None:
        """Write what is buffered (waiting at most `grace` seconds), mark this instance stopped
        and disconnect. Records still unwritten after that are lost (and logged)."""
        if self._closed:
            return
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        try:
            await asyncio.wait_for(self.flush(), grace)
        except TimeoutError:
            pass
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
        await asyncio.gather(*(t for t in (self._writer, self._heartbeat) if t is not None), return_exceptions=True)
        unwritten = len(self._buf) + (len(self._batch.records) if self._batch else 0)
        if unwritten:
            event("journal_records_lost_at_close", level=logging.WARNING, records=unwritten, database=self.display)
        try:
            await asyncio.wait_for(self._pool.execute(
                "UPDATE dbproxy.instances SET stopped_at = now(), last_seen = now() WHERE id = $1",
                self.instance), grace)
        except Exception as e:
            event("journal_stop_not_recorded", level=logging.WARNING, error=_describe(e), database=self.display)
        try:
            await asyncio.wait_for(self._pool.close(), grace)
        except Exception:
            self._pool.terminate()
        event("journal_closed", instance=self.instance)

    async def ping(self, within: float = 3.0) -> str | None:
        """None when the journal database answers within `within` seconds, else why not (no credentials)."""
        if self._closed:
            return "the journal is closed"
        try:
            await asyncio.wait_for(self._pool.fetchval("SELECT 1"), within)
        except TimeoutError:
            return f"the journal database at {self.display} did not answer within {within:g} s"
        except Exception as e:
            return f"the journal database at {self.display} is unreachable: {_describe(e)}"
        return None

    # -- transactions -------------------------------------------------------------------------

    async def start(self, *, agent: str, session: int, database: str, mode: str, backend_pid: int | None,
                    pending_xid: int | None = None, pending: bool = False, policy: str | None = None) -> int:
        """Record a new transaction; returns its id. One round trip. Its outcome is 'open', or with
        `pending` 'pending' at once (held_at now, `pending_xid`, one agent transaction): a hold
        needs no second round trip."""
        if mode not in _MODES:
            raise ValueError(f"unknown mode {mode!r}")
        return await self._call(
            "start",
            lambda con: con.fetchval(
                "INSERT INTO dbproxy.transactions (instance, agent, session, database, mode, backend_pid, outcome, "
                "xid, held_at, agent_transactions, policy) VALUES ($1, $2, $3, $4, $5, $6, "
                "CASE WHEN $7 THEN 'pending' ELSE 'open' END, $8, CASE WHEN $7 THEN now() END, "
                "CASE WHEN $7 THEN 1 ELSE 0 END, $9) RETURNING id",
                self.instance, agent, session, database, mode, backend_pid, pending, pending_xid, policy),
            idempotent=False)

    async def insert_finished(self, txs: list[FinishedTransaction]) -> list[int]:
        """Several transactions that already ended (pass-through agents), in one round trip;
        returns their ids in the same order. Their statements go through `record_statement`."""
        if not txs:
            return []
        return await self._call("insert_finished", lambda con: self._insert_finished(con, txs, None),
                                idempotent=False)

    async def insert_finished_with_statements(
            self, batch: list[tuple[FinishedTransaction, list[StatementRecord]]]) -> list[int]:
        """Transactions that already ended together with their statements (SQL already redacted),
        in one statement: one round trip and one commit for both, and no second pass over the
        transactions to count their statements (the writer's path for statements recorded one by
        one). Returns the ids in the same order. Callers keep a batch within the writer's limits
        (`BATCH_RECORDS`, `BATCH_CHARS`)."""
        if not batch:
            return []
        ids = await self._call("insert_finished", lambda con: self._insert_finished(
            con, [tx for tx, _ in batch], [records for _, records in batch]), idempotent=False)
        for tx_id, (_, records) in zip(ids, batch, strict=True):
            # A statement recorded on it later continues its numbering, as after `record_statement`.
            self._seq[tx_id] = len(records)
            self._finish_seq(tx_id)
        return ids

    async def _insert_finished(self, con: asyncpg.Connection, txs: list[FinishedTransaction],
                               statements: list[list[StatementRecord]] | None) -> list[int]:
        for t in txs:
            if t.mode not in _MODES or t.outcome not in FINAL_OUTCOMES:
                raise ValueError(f"bad finished transaction {t!r}")
        cols = list(zip(*((t.agent, t.session, t.database, t.mode, t.backend_pid, t.started_at, t.ended_at,
                           t.outcome, t.agent_transactions, t.xid, t.undo, t.decided_by, t.policy) for t in txs),
                        strict=True))
        if statements is None:
            rows = await con.fetch(_INSERT_FINISHED, self.instance, *(list(c) for c in cols))
        else:
            counts = [len(records) for records in statements]
            stmt_cols: list[list[Any]] = [[] for _ in range(10)]
            for ordinal, records in enumerate(statements, 1):
                for seq, r in enumerate(records, 1):
                    for i, v in enumerate((ordinal, seq, r.tx_no, _clean(_cap(r.sql, MAX_SQL_CHARS)), _clean(r.tag),
                                           r.rows, _clean(r.sqlstate),
                                           _clean(_cap(r.error, MAX_ERROR_CHARS)) if r.error is not None else None,
                                           r.at,
                                           _clean(_params_json(r.params)) if r.params is not None else None)):
                        stmt_cols[i].append(v)
            rows = await con.fetch(_INSERT_FINISHED_WITH_STATEMENTS, self.instance, *(list(c) for c in cols), counts,
                                   *stmt_cols)
        # Ids come from one sequence in row order, so sorted ids line up with `txs`.
        return sorted(r["id"] for r in rows)

    async def update(self, tx_id: int, *, outcome: str | None = None, xid: int | None = None, held: bool = False,
                     decided_by: str | None = None, reason: str | None = None,
                     agent_transactions: int | None = None, undo: str | None = None,
                     policy: str | None = None) -> bool:
        """Change a transaction. Fields left None are kept. `held` sets held_at (once); a final
        outcome sets ended_at. Returns False, changing nothing, when an outcome is given but the
        transaction already has a final one. Raises JournalError for an unknown id."""
        if outcome is not None and outcome not in _OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        sets: list[str] = []
        args: list[Any] = [tx_id]

        def put(column: str, value: Any) -> None:
            args.append(value)
            sets.append(f"{column} = ${len(args)}")

        if outcome is not None:
            put("outcome", outcome)
            if outcome in FINAL_OUTCOMES:
                sets.append("ended_at = now()")
        if xid is not None:
            put("xid", xid)
        if held:
            sets.append("held_at = coalesce(held_at, now())")
        if decided_by is not None:
            put("decided_by", decided_by)
        if reason is not None:
            put("reason", reason)
        if agent_transactions is not None:
            put("agent_transactions", agent_transactions)
        if policy is not None:
            put("policy", policy)
        if undo is not None:
            args.append(undo)
            sets.append(f"undo = ${len(args)}::jsonb")
        guard = ""
        if outcome is not None:
            guard = " AND outcome NOT IN (" + ", ".join(f"'{o}'" for o in sorted(FINAL_OUTCOMES)) + ")"
        if not sets:
            sets.append("id = id")
        sql = f"UPDATE dbproxy.transactions SET {', '.join(sets)} WHERE id = $1{guard} RETURNING id"

        async def run(con: asyncpg.Connection) -> bool:
            if outcome == "committing":
                async with con.transaction():
                    await con.execute("SET LOCAL synchronous_commit = on")
                    done = await con.fetchval(sql, *args) is not None
            else:
                done = await con.fetchval(sql, *args) is not None
            if done:
                return True
            if await con.fetchval("SELECT 1 FROM dbproxy.transactions WHERE id = $1", tx_id) is None:
                raise JournalError(f"no journal transaction {tx_id}")
            return False

        changed = await self._call("update", run)
        if changed and outcome in FINAL_OUTCOMES:
            self._finish_seq(tx_id)
        return changed

    def _finish_seq(self, tx_id: int) -> None:
        last = self._seq.pop(tx_id, None)
        if last is not None:
            self._finished_seq[tx_id] = last
            while len(self._finished_seq) > _FINISHED_SEQ_KEPT:
                self._finished_seq.popitem(last=False)

    # -- statements (hot path) ----------------------------------------------------------------

    def record_statement(self, tx_id: int, *, tx_no: int, sql: str, tag: str | None, rows: int | None,
                         sqlstate: str | None = None, error: str | None = None,
                         params: list[str | None] | None = None) -> None:
        """Queue a statement for the journal (`params`: its bind parameter values as text, already
        cut and redacted). Never blocks and never raises: the background writer makes it durable
        (see `flush`)."""
        try:
            if self._closed:
                return
            seq = self._seq.get(tx_id)
            if seq is None:
                seq = self._finished_seq.pop(tx_id, 0)
            seq += 1
            self._seq[tx_id] = seq
            if len(sql) > MAX_SQL_CHARS:
                sql = _cap(sql, MAX_SQL_CHARS)
            if error is not None and len(error) > MAX_ERROR_CHARS:
                error = _cap(error, MAX_ERROR_CHARS)
            self._recorded += 1
            rec = _Record(self._recorded, tx_id, seq, tx_no, sql, tag, rows, sqlstate, error, datetime.now(UTC),
                          _params_json(params) if params is not None else None)
            self._buf.append(rec)
            self._buf_chars += _chars(rec)
            if len(self._buf) > self._max_buffer or self._buf_chars > MAX_BUFFER_CHARS:
                self._overflow()
            self._wake.set()
        except Exception as e:  # a bug here must not break the agent's session
            event("journal_record_failed", level=logging.ERROR, error=_describe(e), tx_id=tx_id)

    def _overflow(self) -> None:
        dropped = 0
        while len(self._buf) > 1 and (len(self._buf) > self._max_buffer or self._buf_chars > MAX_BUFFER_CHARS):
            old = self._buf.popleft()
            self._buf_chars -= _chars(old)
            self._lost[old.tx_id] = self._lost.get(old.tx_id, 0) + 1
            dropped += 1
        self._drops += dropped
        now = time.monotonic()
        if now - self._overflow_logged > 10:
            self._overflow_logged = now
            event("journal_buffer_overflow", level=logging.WARNING, dropped_total=self._drops,
                  buffered=len(self._buf), database=self.display)

    async def flush(self) -> None:
        """Wait until every statement recorded so far is durable (or known lost and counted)."""
        if self._closed:
            raise JournalError("the journal is closed")
        target, drop_mark = self._recorded, self._drops
        if not self._durable(target, drop_mark):
            self._hurry.set()  # someone is waiting: no lingering
        async with self._progress:
            await self._progress.wait_for(lambda: self._durable(target, drop_mark))

    def _durable(self, target: int, drop_mark: int) -> bool:
        if self._batch is not None and self._batch.records:
            pending = self._batch.records[0].num
        elif self._buf:
            pending = self._buf[0].num
        else:
            pending = target + 1
        if pending <= target:
            return False
        return self._drops_applied >= drop_mark

    async def _write_loop(self) -> None:
        failures = 0
        first_failure = last_logged = 0.0
        while True:
            try:
                if self._batch is None:
                    if not self._buf and not self._lost:
                        self._wake.clear()
                        await self._wake.wait()
                        # Let a burst gather: one batch instead of a round trip per statement
                        # (unless `flush` is waiting).
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._hurry.wait(), LINGER)
                        self._hurry.clear()
                        continue
                    self._batch = self._take_batch()
                await self._write_batch(self._batch)
                drop_mark = self._batch.drop_mark
                self._batch = None
                self._drops_applied = max(self._drops_applied, drop_mark)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failures += 1
                now = time.monotonic()
                if failures == 1:
                    first_failure = last_logged = now
                    event("journal_unavailable", level=logging.WARNING, database=self.display, error=_describe(e),
                          buffered=len(self._buf))
                elif now - last_logged > 30:
                    last_logged = now
                    event("journal_still_unavailable", level=logging.WARNING, database=self.display,
                          error=_describe(e), seconds=round(now - first_failure), buffered=len(self._buf),
                          dropped_total=self._drops)
                await asyncio.sleep(min(0.05 * 2 ** min(failures, 7), 5.0))
                continue
            if failures:
                event("journal_available", database=self.display, attempts=failures,
                      seconds=round(time.monotonic() - first_failure, 1))
                failures = 0
            async with self._progress:
                self._progress.notify_all()

    def _take_batch(self) -> _Batch:
        records: list[_Record] = []
        chars = 0
        while self._buf and len(records) < BATCH_RECORDS and (not records or chars < BATCH_CHARS):
            rec = self._buf.popleft()
            self._buf_chars -= _chars(rec)
            chars += _chars(rec)
            records.append(rec)
        lost, self._lost = self._lost, {}
        return _Batch(records, lost, self._drops)

    async def _write_batch(self, batch: _Batch) -> None:
        """Write the batch; transient errors propagate (the caller retries the same batch), records
        the database refuses for good are dropped one by one."""
        con = await self._pool.acquire()
        try:
            try:
                await self._insert(con, batch.records, batch.lost)
                return
            except Exception as e:
                if _transient(e):
                    raise
                event("journal_batch_refused", level=logging.WARNING, error=_describe(e),
                      records=len(batch.records), database=self.display)
            # Something in the batch is bad: write record by record, dropping only the bad ones.
            while batch.records:
                rec = batch.records[0]
                try:
                    await self._insert(con, [rec._replace(sql=_clean(rec.sql) or "", tag=_clean(rec.tag),
                                                          error=_clean(rec.error), sqlstate=_clean(rec.sqlstate),
                                                          params=_clean(rec.params))],
                                       {})
                except Exception as e:
                    if _transient(e):
                        raise
                    event("journal_statement_dropped", level=logging.ERROR, tx_id=rec.tx_id, seq=rec.seq,
                          error=_describe(e), database=self.display)
                    self._lost[rec.tx_id] = self._lost.get(rec.tx_id, 0) + 1
                    self._drops += 1
                batch.records.pop(0)
            if batch.lost:
                try:
                    await self._insert(con, [], batch.lost)
                except Exception as e:
                    if _transient(e):
                        raise
                    event("journal_gap_not_recorded", level=logging.ERROR, error=_describe(e), lost=batch.lost)
                batch.lost = {}
        finally:
            with contextlib.suppress(Exception):  # a broken connection is replaced on the next acquire
                await self._pool.release(con)

    async def _insert(self, con: asyncpg.Connection, records: list[_Record], lost: dict[int, int]) -> None:
        cols: list[list[Any]] = [[] for _ in range(10)]
        for r in records:
            sql, error = r.sql, r.error
            if "\x00" in sql:
                sql = sql.replace("\x00", "\\0")
            if error is not None and "\x00" in error:
                error = error.replace("\x00", "\\0")
            for i, v in enumerate((r.tx_id, r.seq, r.tx_no, sql, r.tag, r.rows, r.sqlstate, error, r.at, r.params)):
                cols[i].append(v)
        inserted = await con.fetchval(_WRITE_BATCH, *cols, list(lost), list(lost.values()), timeout=60)
        if inserted != len(records):
            event("journal_statements_skipped", level=logging.WARNING, skipped=len(records) - inserted,
                  database=self.display)

    # -- instances and recovery ---------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self._pool.execute(
                    "INSERT INTO dbproxy.instances (id, pid, hostname, heartbeat_seconds) VALUES ($1, $2, $3, $4) "
                    "ON CONFLICT (id) DO UPDATE SET last_seen = now()",
                    self.instance, os.getpid(), socket.gethostname(), self.heartbeat_interval,
                    timeout=max(self.heartbeat_interval, 5.0))
                if failing:
                    failing = False
                    event("journal_heartbeat_resumed", database=self.display)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not failing:
                    failing = True
                    event("journal_heartbeat_failed", level=logging.WARNING, database=self.display,
                          error=_describe(e))

    async def recover(self, xact_status: Callable[[int], Awaitable[str | None]]) -> list[int]:
        """End the unfinished transactions of instances that are gone (stopped, or heartbeat older
        than three of their periods; never this one). Open and pending ones are marked rolled back
        (or committed, if the upstream says their xid committed); committing ones get their result
        from `xact_status(xid)` ('committed' | 'aborted' | 'in progress' | None, as from
        `SELECT txid_status($1)` on the upstream). Returns the ids changed."""
        rows = await self._call("recover", lambda con: con.fetch(
            "SELECT t.id, t.outcome, t.xid FROM dbproxy.transactions t "
            "WHERE t.outcome IN ('open', 'pending', 'committing') AND t.instance <> $1 "
            "AND NOT EXISTS (SELECT 1 FROM dbproxy.instances i WHERE i.id = t.instance AND i.stopped_at IS NULL "
            "  AND i.last_seen > now() - make_interval(secs => 3 * i.heartbeat_seconds)) "
            "ORDER BY t.id", self.instance))
        return await self._resolve(rows, xact_status)

    async def recover_instance(self, instance_id: str,
                               xact_status: Callable[[int], Awaitable[str | None]]) -> list[int]:
        """Like `recover`, for one instance known to be gone (the previous process on the same data
        directory) without waiting for its heartbeat to age. Marks that instance stopped."""
        if instance_id == self.instance:
            raise ValueError("an instance cannot recover itself")

        async def fetch(con: asyncpg.Connection) -> list[asyncpg.Record]:
            await con.execute("UPDATE dbproxy.instances SET stopped_at = coalesce(stopped_at, now()) WHERE id = $1",
                              instance_id)
            return await con.fetch(
                "SELECT id, outcome, xid FROM dbproxy.transactions "
                "WHERE outcome IN ('open', 'pending', 'committing') AND instance = $1 ORDER BY id", instance_id)

        return await self._resolve(await self._call("recover", fetch), xact_status)

    async def _resolve(self, rows: list[asyncpg.Record],
                       xact_status: Callable[[int], Awaitable[str | None]]) -> list[int]:
        changed: list[int] = []
        for row in rows:
            tx_id, old, xid = row["id"], row["outcome"], row["xid"]
            status: str | None = None
            if xid is not None:
                try:
                    status = await xact_status(xid)
                except Exception as e:
                    event("journal_recover_status_unknown", level=logging.WARNING, tx_id=tx_id, xid=xid,
                          error=_describe(e))
                    continue  # try again at the next start rather than guess
            if old == "committing":
                if status == "in progress":
                    event("journal_recover_commit_in_progress", tx_id=tx_id, xid=xid)
                    continue
                if status == "committed":
                    new, reason = "committed", None
                elif status == "aborted":
                    new, reason = "failed", "the commit did not complete; the upstream rolled the transaction back"
                else:
                    new, reason = "failed", UNKNOWN_COMMIT_REASON
                decided_by_sql = "coalesce(decided_by, 'restart')"
            else:
                if status == "committed":  # e.g. a relayed COMMIT whose result the proxy never recorded
                    new, reason = "committed", "the proxy restarted; the upstream had committed the transaction"
                else:
                    new, reason = "rolled back", RESTART_REASON
                decided_by_sql = "'restart'"
            sql = (f"UPDATE dbproxy.transactions SET outcome = $3, decided_by = {decided_by_sql}, "
                   "reason = coalesce($4, reason), ended_at = now() WHERE id = $1 AND outcome = $2 RETURNING id")
            done = await self._call("recover", lambda con, sql=sql, a=(tx_id, old, new, reason): con.fetchval(sql, *a))
            if done is not None:
                changed.append(tx_id)
                event("journal_recovered", tx_id=tx_id, was=old, outcome=new, xid=xid)
        return changed

    async def restart_notices(self, agent: str) -> list[TransactionRecord]:
        """Transactions of `agent` ended by a restart that it has not been told about; each is
        returned once."""
        rows = await self._call("restart_notices", lambda con: con.fetch(
            f"UPDATE dbproxy.transactions SET restart_notified = true "
            f"WHERE agent = $1 AND decided_by = 'restart' AND NOT restart_notified RETURNING {_TX_COLUMNS}", agent))
        return sorted((TransactionRecord(**dict(r)) for r in rows), key=lambda t: t.id)

    # -- reading ------------------------------------------------------------------------------

    async def get(self, tx_id: int) -> tuple[TransactionRecord, list[StatementRecord]] | None:
        """A transaction and its durable statements in order (call `flush` first to include
        statements still buffered), or None."""
        return await self._call("get", lambda con: fetch_transaction(con, tx_id))

    async def list(self, *, outcome: str | None = None, agent: str | None = None, limit: int = 100,
                   before_id: int | None = None, table: str | None = None, search: str | None = None,
                   since: datetime | None = None, until: datetime | None = None) -> list[TransactionRecord]:
        """Transactions, newest first (see `fetch_transactions`)."""
        return await self._call("list", lambda con: fetch_transactions(
            con, outcome=outcome, agent=agent, limit=limit, before_id=before_id, table=table, search=search,
            since=since, until=until))

    def backlog(self) -> tuple[int, float]:
        """Statements recorded but not yet durable, and the age in seconds of the oldest of them
        (the journal's lag; 0 when it has caught up)."""
        pending = list(self._batch.records[:1]) if self._batch else []
        if self._buf:
            pending.append(self._buf[0])
        count = len(self._buf) + (len(self._batch.records) if self._batch else 0)
        if not pending:
            return count, 0.0
        oldest = min(r.at for r in pending)
        return count, max(0.0, (datetime.now(UTC) - oldest).total_seconds())

    async def undoable_since(self, tx_id: int) -> list[TransactionRecord]:
        """Transactions committed with an undo from `tx_id` on, newest first (whether they were
        undone already is known upstream, in `dbproxy.undo_records`): undo-mode ones, and hold-mode
        ones a reviewer committed with capture on."""
        rows = await self._call("undoable_since", lambda con: con.fetch(
            f"SELECT {_TX_COLUMNS} FROM dbproxy.transactions WHERE id >= $1 "
            "AND outcome = 'committed' AND xid IS NOT NULL AND undo ? 'direction' ORDER BY id DESC", tx_id))
        return [TransactionRecord(**dict(r)) for r in rows]

    async def ids_of_xids(self, database: str, xids: list[int]) -> dict[int, int]:
        """Journal ids of committed transactions by their upstream transaction ids (to name them
        #N in messages)."""
        rows = await self._call("ids_of_xids", lambda con: con.fetch(
            "SELECT xid, max(id) FROM dbproxy.transactions WHERE database = $1 AND xid = ANY($2::bigint[]) "
            "AND outcome = 'committed' GROUP BY xid", database, xids))
        return {int(r[0]): int(r[1]) for r in rows}

    # -- plumbing -----------------------------------------------------------------------------

    async def run(self, what: str, fn: Callable[[asyncpg.Connection], Awaitable[Any]], *,
                  idempotent: bool = True) -> Any:
        """Run `fn` on a connection to the state database, with the journal's retry rules: for
        other components that keep state there (`dbproxy.policy.store`)."""
        return await self._call(what, fn, idempotent=idempotent)

    async def _call(self, what: str, fn: Callable[[asyncpg.Connection], Awaitable[Any]], *,
                    idempotent: bool = True) -> Any:
        """Run fn on a pooled connection. Retry once on a transient error if fn is idempotent, or
        if the connection was lost (`start`: at worst a duplicate 'open' row, should the network
        fail between the commit and its acknowledgement)."""
        if self._closed:
            raise JournalError("the journal is closed")
        for attempt in (1, 2):
            try:
                con = await self._pool.acquire()
            except Exception as e:
                if attempt == 1 and _transient(e):
                    continue
                raise JournalError(f"journal {what}: cannot reach {self.display}: {_describe(e)}") from None
            try:
                return await fn(con)
            except JournalError:
                raise
            except Exception as e:
                if attempt == 1 and _transient(e) and (idempotent or _connection_lost(e)):
                    continue
                raise JournalError(f"journal {what} failed at {self.display}: {_describe(e)}") from e
            finally:
                with contextlib.suppress(Exception):  # a broken connection is replaced on the next acquire
                    await self._pool.release(con)
        raise AssertionError("unreachable")

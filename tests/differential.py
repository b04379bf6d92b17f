"""Differential harness: the same scripted session, directly against PostgreSQL and through the proxy.

A transparent proxy must be invisible. This module runs a *script* (a list of `Step`s) on a fresh
connection and records a *transcript* of everything a client can observe; running it once on the
direct URL and once on the proxy URL, the two transcripts must be equal.

Drivers (`DRIVERS`):
- `psycopg-text`: psycopg 3 with text results. Steps without parameters go through the simple
  query protocol (so one string may hold several statements); steps with parameters, or
  `prepare=True`, through the extended protocol.
- `psycopg-binary`: psycopg 3 with binary results (always the extended protocol).
- `asyncpg`: asyncpg, extended protocol with binary formats, named prepared statements; steps
  marked `simple=True` use its simple-query path (`Connection.execute` without arguments).

Step SQL uses `$1`-style placeholders, understood by both drivers as written (psycopg runs it with
a `RawCursor`); `pyformat=True` switches psycopg to its `%s`/`%b`/`%t` placeholders (asyncpg cannot
run such steps).

A transcript is a list of dicts, one per step:
- `results`: per result set (psycopg returns one per statement of a multi-statement string): the
  result status, command tag, columns (name, type OID, size, modifier, format, source column
  number), rows as canonical Python values (see `canon`), a digest of the raw wire bytes of every
  cell, and the row count; COPY steps record the COPY data instead of rows.
- `error`: for a failing step, the SQLSTATE, severity and every other diagnostic field the server
  sent (message, detail, hint, position, context, schema/table/column/constraint, source location);
  for an error raised by the driver itself, its class and text.
- `notices`: every NoticeResponse received during the step, with all its fields (psycopg: and
  NotificationResponses, in arrival order).
- `tx`: the transaction status after the step (psycopg: IDLE/INTRANS/INERROR; asyncpg: whether in a
  transaction).
- `params`: the reported run-time parameters (`ParameterStatus`) that are tracked, after the step.

Nothing is compared fuzzily. What legitimately differs between two connections (backend pid,
now(), OIDs of objects a run creates) must simply not be selected by a script. To make that easy,
each run starts in a freshly created schema of the *same* name (dropped and recreated between the
two runs), so names in messages agree; types a script needs to *select* (enums, composites) are
created once in the script's `setup`, in a shared schema on the search_path, so their OIDs are the
same in both runs. `ftable` (the OID of a result column's table) is not recorded for that reason.

`compare()` does all of this and raises an `AssertionError` naming the first differing step and the
fields that differ; it also checks each step's `error` expectation against the direct run, so a
script that no longer does what it says fails too.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import hashlib
import io
import ipaddress
import reprlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import asyncpg
import psycopg
import psycopg.pq
import psycopg.types.range

#: Run-time parameters the server reports with ParameterStatus, recorded after every step. Not
#: `session_authorization`: through the proxy the session user is the agent's own login role, by
#: design (the direct run acts as the same role, `as_role`, but logs in as the superuser).
TRACKED_PARAMS = (
    "application_name", "client_encoding", "DateStyle", "default_transaction_read_only", "in_hot_standby",
    "integer_datetimes", "IntervalStyle", "is_superuser", "scram_iterations", "search_path", "server_encoding",
    "server_version", "standard_conforming_strings", "TimeZone",
)

DRIVERS = ("psycopg-text", "psycopg-binary", "asyncpg")

#: `Step.error` value meaning "must fail, any SQLSTATE" (for errors the driver raises itself).
ANY_ERROR = "*"


@dataclass(frozen=True)
class Step:
    """One statement (or several, for the simple protocol) of a script.

    `error`: None if the step must succeed, else the SQLSTATE it must fail with (`ANY_ERROR`: any
    failure). `copy`: the step is a COPY ... TO STDOUT, or FROM STDIN with `copy_in` as its data.
    `simple`: asyncpg runs it with the simple query protocol (needed for several statements).
    `prepare`: psycopg `prepare=` (True forces a named prepared statement).
    `many`: run `sql` once per parameter tuple (psycopg `executemany(returning=True)`, which pipelines;
    asyncpg `executemany`). `pipeline`: psycopg only, these (sql, params) queries inside one
    `conn.pipeline()` block, each result or error recorded (`sql` is then only a label).
    `drivers`: restrict the step to these drivers (others record it as skipped).
    """

    sql: str
    params: Sequence[Any] | None = None
    error: str | None = None
    copy: bool = False
    copy_in: bytes | None = None
    simple: bool = False
    prepare: bool | None = None
    pyformat: bool = False
    many: Sequence[Sequence[Any]] | None = None
    pipeline: Sequence[tuple[str, Sequence[Any] | None]] | None = None
    drivers: tuple[str, ...] = DRIVERS


@dataclass(frozen=True)
class Script:
    name: str
    steps: list[Step]
    #: SQL run once (simple protocol, superuser) in the shared schema before both runs.
    setup: str = ""
    drivers: tuple[str, ...] = DRIVERS
    extra: dict[str, Any] = field(default_factory=dict)


def S(sql: str, *params: Any, **kw: Any) -> Step:
    """`S("select $1::int", 1, error="22012")`."""
    return Step(sql, params if params else None, **kw)


# -- canonical values ------------------------------------------------------------------------

_SCALARS = (str, bytes, int, bool, type(None))
_REPR_TYPES = (
    datetime.date, datetime.time, datetime.datetime, datetime.timedelta, uuid.UUID,
    ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network,
    ipaddress.IPv4Interface, ipaddress.IPv6Interface, psycopg.types.range.Range, asyncpg.Range,
    asyncpg.BitString, asyncpg.Point, asyncpg.Box, asyncpg.Circle, asyncpg.Line, asyncpg.LineSegment,
    asyncpg.Path, asyncpg.Polygon,
)


def canon(v: Any) -> Any:
    """A value that compares equal exactly when the two values are the same to a client.

    Python's `==` is too lenient here: NaN != NaN, 1 == True == 1.0, -0.0 == 0.0, Decimal('1.0') ==
    Decimal('1.00'), equal instants in different time zones compare equal. So scalars are tagged
    with their type, and floats, decimals and temporal values are compared by their repr.
    """
    t = type(v)
    if t in _SCALARS:
        return v if t in (str, bytes) or v is None else (t.__name__, v)
    if t is memoryview or t is bytearray:
        return bytes(v)
    if t is float:
        return ("float", repr(v))
    if t is decimal.Decimal:
        return ("Decimal", str(v))
    if t is list or t is tuple:
        return (t.__name__, tuple(canon(x) for x in v))
    if t is dict:
        return ("dict", tuple((canon(k), canon(x)) for k, x in v.items()))
    if isinstance(v, asyncpg.Record):
        return ("Record", tuple((k, canon(x)) for k, x in v.items()))
    if isinstance(v, _REPR_TYPES):
        return (t.__name__, repr(v))
    r = repr(v)
    if " at 0x" in r:
        raise TypeError(f"differential.canon: no canonical form for {t.__qualname__}; add a rule")
    return (t.__qualname__, r)


def _digest_cells(cells: Sequence[Sequence[bytes | None]]) -> str:
    h = hashlib.sha256()
    for row in cells:
        for c in row:
            if c is None:
                h.update(b"N")
            else:
                h.update(b"V%d:" % len(c))
                h.update(c)
        h.update(b"|")
    return h.hexdigest()


def _diag(d: psycopg.errors.Diagnostic) -> dict[str, Any]:
    names = ("sqlstate", "severity", "severity_nonlocalized", "message_primary", "message_detail",
             "message_hint", "statement_position", "internal_position", "internal_query", "context",
             "schema_name", "table_name", "column_name", "datatype_name", "constraint_name", "source_file",
             "source_line", "source_function")
    return {n: getattr(d, n) for n in names}


def _asyncpg_fields(m: Any) -> dict[str, Any]:
    return dict(sorted(m.as_dict().items()))


# -- psycopg ---------------------------------------------------------------------------------

def _psycopg_resultset(cur: psycopg.Cursor[Any]) -> dict[str, Any]:
    res = cur.pgresult
    assert res is not None
    cols = None
    rows = raw = None
    if cur.description is not None:
        cols = [(c.name, c.type_code, res.fsize(i), res.fmod(i), res.fformat(i), res.ftablecol(i))
                for i, c in enumerate(cur.description)]
        raw = _digest_cells([[res.get_value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)])
        rows = [canon(tuple(r)) for r in cur.fetchall()]
    return {"status": psycopg.pq.ExecStatus(res.status).name, "tag": cur.statusmessage, "columns": cols,
            "rows": rows, "raw": raw, "rowcount": cur.rowcount}


def _psycopg_pipeline(conn: psycopg.Connection[Any], queries: Sequence[tuple[str, Sequence[Any] | None]],
                      binary: bool) -> list[dict[str, Any]]:
    """Run queries in one pipeline; record each cursor's result and the server errors raised.

    Where psycopg raises an error (at execute, sync or block exit) depends on when replies arrive,
    so only which errors were raised is recorded, not where.
    """
    errors: list[tuple[str, str | None]] = []

    def note(e: psycopg.Error) -> None:
        if not isinstance(e, psycopg.errors.PipelineAborted) and (type(e).__name__, e.sqlstate) not in errors:
            errors.append((type(e).__name__, e.sqlstate))

    curs: list[psycopg.RawCursor[Any]] = []
    try:
        with conn.pipeline() as p:
            for sql, params in queries:
                c = psycopg.RawCursor(conn)
                c.format = psycopg.pq.Format.BINARY if binary else psycopg.pq.Format.TEXT
                curs.append(c)
                try:
                    c.execute(sql, params)
                except psycopg.Error as e:
                    note(e)
            try:
                p.sync()
            except psycopg.Error as e:
                note(e)
    except psycopg.Error as e:
        note(e)
    out: list[dict[str, Any]] = []
    for c in curs:
        res = c.pgresult
        if res is None:
            out.append({"status": None})
        elif res.status in (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.COMMAND_OK):
            out.append(_psycopg_resultset(c))
        else:
            out.append({"status": psycopg.pq.ExecStatus(res.status).name})
        c.close()
    out.append({"pipeline_errors": errors})
    return out


def psycopg_step(conn: psycopg.Connection[Any], step: Step, *, binary: bool,
                 notices: list[dict[str, Any]]) -> dict[str, Any]:
    """Run one step on an open psycopg connection and return its transcript record."""
    rec: dict[str, Any] = {"sql": reprlib.repr(step.sql)}
    cls = psycopg.Cursor if step.pyformat else psycopg.RawCursor
    cur = cls(conn)
    cur.format = psycopg.pq.Format.BINARY if binary else psycopg.pq.Format.TEXT
    results: list[dict[str, Any]] = []
    try:
        if step.copy:
            with cur.copy(step.sql) as cp:
                if step.copy_in is not None:
                    cp.write(step.copy_in)
                    data = None
                else:
                    data = b"".join(bytes(b) for b in cp)
            results.append({"tag": cur.statusmessage, "rowcount": cur.rowcount, "copy_data": data})
        elif step.many is not None:
            cur.executemany(step.sql, step.many, returning=True)
            while True:
                results.append(_psycopg_resultset(cur))
                if not cur.nextset():
                    break
        elif step.pipeline is not None:
            results.extend(_psycopg_pipeline(conn, step.pipeline, binary))
        else:
            cur.execute(step.sql, step.params, prepare=step.prepare)
            while True:
                results.append(_psycopg_resultset(cur))
                if not cur.nextset():
                    break
        rec["error"] = None
    except psycopg.Error as e:
        if cur.pgresult is not None and cur.pgresult.status != psycopg.pq.ExecStatus.FATAL_ERROR:
            # Results before the failing statement of a multi-statement string.
            results.append({"status": psycopg.pq.ExecStatus(cur.pgresult.status).name, "tag": cur.statusmessage})
        rec["error"] = _diag(e.diag) if e.sqlstate else {"client_error": type(e).__name__, "text": str(e)}
    except (ValueError, TypeError, OverflowError) as e:  # raised by psycopg's adapters, before sending
        rec["error"] = {"client_error": type(e).__name__, "text": str(e)}
    finally:
        cur.close()
    rec["results"] = results
    rec["notices"] = list(notices)
    notices.clear()
    rec["tx"] = conn.info.transaction_status.name
    rec["params"] = {p: conn.info.parameter_status(p) for p in TRACKED_PARAMS}
    return rec


def psycopg_connect(url: str) -> tuple[psycopg.Connection[Any], list[dict[str, Any]]]:
    conn = psycopg.connect(url, autocommit=True)
    notices: list[dict[str, Any]] = []
    conn.add_notice_handler(lambda d: notices.append(_diag(d)))
    # NotificationResponse (LISTEN/NOTIFY): the sender pid differs per connection, so record only
    # whether it is the pid the session announced in BackendKeyData (true for self-notifications).
    conn.add_notify_handler(lambda n: notices.append(
        {"notify": n.channel, "payload": n.payload, "from_self": n.pid == conn.info.backend_pid}))
    return conn, notices


def run_psycopg(url: str, steps: Sequence[Step], *, binary: bool, prelude: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run `steps` on a fresh psycopg connection to `url` (after the unrecorded `prelude`)."""
    driver = "psycopg-binary" if binary else "psycopg-text"
    conn, notices = psycopg_connect(url)
    try:
        for sql in prelude:
            conn.execute(sql)
        notices.clear()
        out = [{"skipped": True} if driver not in s.drivers else psycopg_step(conn, s, binary=binary, notices=notices)
               for s in steps]
    finally:
        conn.close()
    return out


# -- asyncpg ---------------------------------------------------------------------------------

async def _asyncpg_step(conn: asyncpg.Connection, step: Step, notices: list[dict[str, Any]]) -> dict[str, Any]:
    rec: dict[str, Any] = {"sql": reprlib.repr(step.sql)}
    results: list[dict[str, Any]] = []
    try:
        if step.copy:
            if step.copy_in is not None:
                tag = await conn._copy_in(step.sql, io.BytesIO(step.copy_in), None)
                results.append({"tag": tag, "copy_data": None})
            else:
                chunks: list[bytes] = []

                async def writer(data: bytes) -> None:
                    chunks.append(bytes(data))

                tag = await conn._copy_out(step.sql, writer, None)
                results.append({"tag": tag, "copy_data": b"".join(chunks)})
        elif step.many is not None:
            results.append({"tag": await conn.executemany(step.sql, step.many)})
        elif step.pipeline is not None:
            raise ValueError("pipeline steps are psycopg-only")
        elif step.simple:
            if step.params:
                raise ValueError("asyncpg's simple protocol takes no parameters")
            results.append({"tag": await conn.execute(step.sql)})
        else:
            stmt = await conn.prepare(step.sql)
            cols = [(a.name, a.type.oid, a.type.name, a.type.kind) for a in stmt.get_attributes()]
            params = [(p.oid, p.name) for p in stmt.get_parameters()]
            rows = await stmt.fetch(*(step.params or ()))
            results.append({"tag": stmt.get_statusmsg(), "columns": cols, "param_types": params,
                            "rows": [canon(tuple(r.values())) for r in rows]})
        rec["error"] = None
    except asyncpg.PostgresError as e:
        rec["error"] = _asyncpg_fields(e)
    except (asyncpg.InterfaceError, ValueError, TypeError, OverflowError) as e:
        rec["error"] = {"client_error": type(e).__name__, "text": str(e)}
    # Log listeners are called with loop.call_soon: let them run.
    for _ in range(3):
        await asyncio.sleep(0)
    rec["results"] = results
    rec["notices"] = list(notices)
    notices.clear()
    rec["tx"] = "in transaction" if conn.is_in_transaction() else "idle"
    settings = conn.get_settings()
    rec["params"] = {p: getattr(settings, p, None) for p in TRACKED_PARAMS}
    return rec


async def run_asyncpg(url: str, steps: Sequence[Step], *, prelude: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run `steps` on a fresh asyncpg connection to `url` (after the unrecorded `prelude`)."""
    conn = await asyncpg.connect(url, statement_cache_size=0)
    notices: list[dict[str, Any]] = []
    conn.add_log_listener(lambda _c, m: notices.append(_asyncpg_fields(m)))
    try:
        for sql in prelude:
            await conn.execute(sql)
        for _ in range(3):
            await asyncio.sleep(0)
        notices.clear()
        return [{"skipped": True} if "asyncpg" not in s.drivers else await _asyncpg_step(conn, s, notices)
                for s in steps]
    finally:
        await conn.close()


def run(driver: str, url: str, steps: Sequence[Step], prelude: Sequence[str] = ()) -> list[dict[str, Any]]:
    if driver == "asyncpg":
        return asyncio.run(run_asyncpg(url, steps, prelude=prelude))
    if driver in ("psycopg-text", "psycopg-binary"):
        return run_psycopg(url, steps, binary=driver == "psycopg-binary", prelude=prelude)
    raise ValueError(driver)


# -- comparison ------------------------------------------------------------------------------

_short = reprlib.Repr()
_short.maxstring = 300
_short.maxother = 300
_short.maxlist = _short.maxtuple = _short.maxdict = 12
_short.maxlevel = 8


def first_difference(direct: list[dict[str, Any]], proxied: list[dict[str, Any]]) -> str | None:
    """None if equal, else a readable description of the first differing step."""
    if direct == proxied:
        return None
    for i, (a, b) in enumerate(zip(direct, proxied, strict=False)):
        if a != b:
            keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
            lines = [f"step {i} ({a.get('sql')}) differs in {keys}:"]
            for k in keys:
                lines.append(f"  {k}:\n    direct: {_short.repr(a.get(k))}\n    proxy:  {_short.repr(b.get(k))}")
                if k == "results" and isinstance(a.get(k), list) and isinstance(b.get(k), list):
                    lines.extend(_result_diff(a[k], b[k]))
            return "\n".join(lines)
    return f"transcripts differ in length: direct {len(direct)} steps, proxy {len(proxied)}"


def _result_diff(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[str]:
    out = []
    for j, (ra, rb) in enumerate(zip(a, b, strict=False)):
        for k in dict.fromkeys([*ra, *rb]):
            if ra.get(k) != rb.get(k):
                out.append(f"  result {j} field {k!r}:\n    direct: {_short.repr(ra.get(k))}\n"
                           f"    proxy:  {_short.repr(rb.get(k))}")
    if len(a) != len(b):
        out.append(f"  direct has {len(a)} result sets, proxy {len(b)}")
    return out


def check_expectations(steps: Sequence[Step], transcript: list[dict[str, Any]], where: str) -> None:
    """Each step failed exactly when (and how) the script says it should."""
    for i, (s, rec) in enumerate(zip(steps, transcript, strict=True)):
        if rec.get("skipped"):
            continue
        err = rec["error"]
        if s.error is None:
            assert err is None, f"{where}: step {i} ({s.sql[:200]!r}) failed unexpectedly: {err}"
        elif s.error == ANY_ERROR:
            assert err is not None, f"{where}: step {i} ({s.sql[:200]!r}) should have failed"
        else:
            got = err and err.get("sqlstate")
            assert got == s.error, f"{where}: step {i} ({s.sql[:200]!r}) expected SQLSTATE {s.error}, got {err}"


def _admin(url: str, *sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        for q in sql:
            c.execute(q)


def as_role(url: str, role: str) -> str:
    """`url` with the session acting as `role` from the start (libpq's and asyncpg's `options`),
    as the proxy's agents do upstream."""
    return url + ("&" if "?" in url else "?") + "options=" + quote(f"-c role={role}")


def compare(script: Script, driver: str, direct_url: str, proxy_url: str, schema: str,
            direct_role: str | None = "dbproxy_agents") -> list[dict[str, Any]]:
    """Run `script` with `driver` directly and through the proxy; assert identical transcripts.

    `direct_url` must be a superuser URL of the same database `proxy_url` leads to; the direct run
    acts as `direct_role` (None: as the superuser), the role the proxy's agents act as, so both have
    the same privileges.
    Objects live in schema `schema` (recreated for each run) and `schema_shared` (the script's
    setup). Returns the direct transcript.
    """
    shared = f"{schema}_shared"
    fresh = (f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', f'CREATE SCHEMA "{schema}"')
    prelude = (f'SET search_path TO "{schema}", "{shared}"',)
    _admin(direct_url, f'DROP SCHEMA IF EXISTS "{shared}" CASCADE', f'CREATE SCHEMA "{shared}"')
    try:
        if script.setup:
            _admin(direct_url, f'SET search_path TO "{shared}"', script.setup)
        _admin(direct_url, *fresh)
        direct = run(driver, as_role(direct_url, direct_role) if direct_role else direct_url, script.steps, prelude)
        _admin(direct_url, *fresh)
        proxied = run(driver, proxy_url, script.steps, prelude)
    finally:
        _admin(direct_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', f'DROP SCHEMA IF EXISTS "{shared}" CASCADE')
    check_expectations(script.steps, direct, f"{script.name} [{driver}] direct")
    diff = first_difference(direct, proxied)
    assert diff is None, f"{script.name} [{driver}]: proxy transcript differs from direct\n{diff}"
    return direct

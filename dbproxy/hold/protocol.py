"""Hold mode as a sans-IO state machine: what to send upstream for one client request cycle, and
how to turn the upstream's answers back into what the agent must see.

Everything that affects the hold state lives in this file (the h11 rule); `dbproxy.hold.session` only
does the waiting. The model:

- The **chain** is one upstream transaction, opened by the proxy (`BEGIN`) at the agent's first
  write and kept open until a reviewer decides. Every agent transaction inside it is a savepoint
  (`SAVEPOINT dbproxy_tx`): agent `BEGIN` becomes `SAVEPOINT`, `COMMIT` becomes `RELEASE` (the
  work stays in the chain, held), `ROLLBACK` becomes `ROLLBACK TO` + `RELEASE` (or a real
  `ROLLBACK` while nothing in the chain is held yet). Statements the agent sends outside an
  explicit transaction are an *implicit* agent transaction, wrapped the same way, so that an
  error can never abort the chain itself.
- A **cycle** is what a client sends up to and including a Sync, a simple Query, or a Flush. The
  proxy runs one cycle at a time, so the statements it adds never interleave with the client's.
- A **plan** is the bytes to send upstream plus one `Step` per expected answer: the client's own
  messages (forwarded, or re-tagged: the upstream says `RELEASE`, the agent sees `COMMIT`), the
  proxy's statements (swallowed), refusals (the upstream runs a `DO` block that raises, so the
  server's own state follows PostgreSQL's error rules, and the agent sees the proxy's message),
  and synthetic answers with no upstream message at all (`WARNING: there is no transaction in
  progress`). `Router` walks the steps as the answers arrive.

The agent sees ReadyForQuery statuses computed from its own transaction state, never the chain's.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from dbproxy.protocol.framing import Frame, frame
from dbproxy.protocol.messages import (
    Bind,
    Close,
    CommandComplete,
    DataRow,
    Describe,
    ErrorResponse,
    Execute,
    Flush,
    NoticeResponse,
    ParameterDescription,
    Parse,
    Query,
    RowDescription,
    Sync,
    decode_backend,
    decode_frontend,
)
from inverse.classify import Classification, Kind, classify
from inverse.ddl_targets import Limits, before_ddl_sql
from inverse.identity import identity_change
from inverse.images import CAPTURE_FETCH_SQL
from inverse.lexer import lex, number_shape, split_cached

#: A portal's Bind and the parameter type OIDs of its statement's Parse (for the journal).
BoundValues = tuple[Bind, tuple[int, ...]]

SAVEPOINT = "dbproxy_tx"
_STMT = "dbproxy_stmt"
_PORTAL = "dbproxy_portal"
#: Run before each agent COMMIT into the chain: fails if the transaction changed what the agent
#: acts as or may do (possible from inside a function or DO block, where the classifier cannot
#: see), else returns the chain's transaction id. The division is not constant, so PostgreSQL
#: cannot fold it into an error at plan time. What it checks:
#: - the session's replication role, current and session user (the agent's own roles);
#: - undo mode: capture still on (a function could have turned it off and left it off);
#: - roles, memberships and per-role settings (`pg_authid`, `pg_auth_members`,
#:   `pg_db_role_setting`) untouched since the chain began: the transaction's own statistics count
#:   every row it wrote there (aborted attempts too, so the proxy re-reads the count after
#:   rollbacks, see `IDENTITY_COUNT_SQL`);
#: - no SECURITY DEFINER function owned by the agent's role, once the transaction wrote `pg_proc`.
_GUARD_SQL = ("SELECT CASE WHEN pg_catalog.current_setting('session_replication_role') <> 'origin' "
              "{identity}{login}{capture}{roles}{definer} THEN (0 / (pg_catalog.pg_backend_pid() * 0))::text "
              "ELSE pg_catalog.txid_current_if_assigned()::text END")
_CAPTURE_ON = " OR pg_catalog.current_setting('dbproxy.capture', true) IS DISTINCT FROM 'on'"
_ROLE_CATALOGS = ("pg_authid", "pg_auth_members", "pg_db_role_setting")
#: Rows this transaction (and, until they are flushed, earlier ones of the session) wrote to the
#: role catalogs. A transaction block never flushes them, so within a chain it only grows.
IDENTITY_CHANGES = " + ".join(f"pg_catalog.pg_stat_get_xact_tuples_{what}('pg_catalog.{cat}'::pg_catalog.regclass)"
                              for cat in _ROLE_CATALOGS for what in ("inserted", "updated", "deleted"))
IDENTITY_COUNT_SQL = f"SELECT ({IDENTITY_CHANGES})::text"
_DEFINER = (" OR CASE WHEN pg_catalog.pg_stat_get_xact_tuples_inserted('pg_catalog.pg_proc'::pg_catalog.regclass)"
            " + pg_catalog.pg_stat_get_xact_tuples_updated('pg_catalog.pg_proc'::pg_catalog.regclass) > 0"
            " THEN EXISTS (SELECT 1 FROM pg_catalog.pg_proc p WHERE p.prosecdef AND p.proowner ="
            " (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)) ELSE false END")
GUARD_ERROR = ErrorResponse.make(
    "42501", "dbproxy refused this transaction: code in it changed the session's role, "
    "session_replication_role or dbproxy.capture, changed database roles or role membership, or "
    "created SECURITY DEFINER code",
    detail="Such changes can hide in functions and DO blocks; agents may not make them. The transaction "
    "was not committed.",
    hint="A person must run such statements directly on the database.")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def guard_sql(login_role: str, *, run_as: str = "", capture: bool = False, baseline: int | None = None) -> str:
    """The guard for a session that logs in as `login_role` and acts as `run_as` (empty: as
    itself). `baseline`: the role-catalog count at the start of the chain, when known (else the
    proxy compares it after the answer, `IDENTITY_COUNT_SQL`)."""
    identity = f" OR current_user <> {_literal(run_as)}" if run_as else " OR current_user <> session_user"
    login = f" OR session_user <> {_literal(login_role)}" if login_role else ""
    roles = f" OR ({IDENTITY_CHANGES}) > {int(baseline)}" if baseline is not None else ""
    return _GUARD_SQL.format(identity=identity, login=login, capture=_CAPTURE_ON if capture else "", roles=roles,
                             definer=_DEFINER)


T_PARSE_COMPLETE, T_BIND_COMPLETE, T_CLOSE_COMPLETE = ord("1"), ord("2"), ord("3")
T_COMMAND, T_EMPTY, T_SUSPENDED = ord("C"), ord("I"), ord("s")
T_ROWDESC, T_NODATA, T_ERROR, T_NOTICE, T_READY = ord("T"), ord("n"), ord("E"), ord("N"), ord("Z")
T_PARAMDESC = ord("t")
T_DATAROW, T_COPY_IN = ord("D"), ord("G")

_AFTER_EXECUTE = frozenset({T_COMMAND, T_EMPTY, T_SUSPENDED})
_AFTER_STATEMENT = frozenset({T_COMMAND, T_EMPTY})
_AFTER_DESCRIBE = frozenset({T_ROWDESC, T_NODATA})


class SQLSTATE:
    ACTIVE_SQL_TRANSACTION = "25001"
    NO_ACTIVE_SQL_TRANSACTION = "25P01"
    READ_ONLY_SQL_TRANSACTION = "25006"
    INSUFFICIENT_PRIVILEGE = "42501"
    RESERVED_NAME = "42939"
    FEATURE_NOT_SUPPORTED = "0A000"


@functools.lru_cache(maxsize=8192)
def classify_cached(sql: str) -> Classification:
    """Classification is pure but costs ~0.3 ms (sqlglot); agents repeat their statements, and
    their DML mostly differs only in numbers (`... WHERE id = 17`), so the result is also cached
    by shape: the tokens with every numeric literal replaced. Numbers never decide a DML
    statement's class (they do in `SET x = 0`, which is why only DML is keyed by shape)."""
    # A regex finds the numbers of most agent statements ~15 times faster than the lexer; the
    # lexer's key serves texts with quotes or comments (`number_shape` says which).
    quick = number_shape(sql)
    if quick is not None:
        first = _FIRST_WORD.match(quick)
        if first is None or first.group(1).lower() not in _SHAPE_FIRST:
            quick = None
        elif (hit := _by_quick_shape.get(quick)) is not None:
            return _for_text(hit, sql)
    lexed = lex(sql)
    toks = lexed.tokens
    if lexed.error or not toks or toks[0].kind != "word" or toks[0].value not in _SHAPE_FIRST:
        return classify(sql)
    key = " ".join("0" if t.kind == "number" else t.text for t in toks)
    hit = _by_shape.get(key)
    if hit is None:
        hit = _remember(_by_shape, key, classify(sql))
        if quick is not None:
            _remember(_by_quick_shape, quick, hit)
        return hit
    if quick is not None:
        _remember(_by_quick_shape, quick, hit)
    return _for_text(hit, sql)


def _for_text(hit: Classification, sql: str) -> Classification:
    text = sql.strip()
    return replace(hit, sql=text[:-1].rstrip() if text.endswith(";") else text)


def _remember(cache: dict[str, Classification], key: str, c: Classification) -> Classification:
    cache[key] = c
    if len(cache) > 8192:
        cache.pop(next(iter(cache)))
    return c


_SHAPE_FIRST = frozenset({"select", "insert", "update", "delete", "with", "values", "merge", "table"})
_FIRST_WORD = re.compile(r"\s*([A-Za-z_]+)")
_by_shape: dict[str, Classification] = {}
_by_quick_shape: dict[str, Classification] = {}  # keyed by `number_shape` (whitespace kept)


# --------------------------------------------------------------------------------------------
# Policy: which statements are refused, and why
# --------------------------------------------------------------------------------------------

_CALL_ESCAPE = "CALL runs a procedure"
_TRUNCATE = re.compile(r"\s*truncate\b", re.IGNORECASE)
#: NOTIFY and pg_notify() take no transaction id, yet their effect happens at COMMIT: such a
#: transaction is held like one that wrote. (Text match: a mention in a literal just holds.)
_NOTIFY = re.compile(r"\bnotify\b|\bpg_notify\b", re.IGNORECASE)


def refusal(c: Classification, state: HoldState, *, policy: bool = True) -> ErrorResponse | None:
    """The error the agent gets instead of running `c`, or None when it may run. `policy=False`:
    without asking the policy (the caller knows no rule of it can refuse `c`)."""
    if c.tx is not None and c.tx.action in ("savepoint", "release", "rollback_to") and c.tx.name \
            and c.tx.name.lower().startswith("dbproxy_"):
        return ErrorResponse.make(SQLSTATE.RESERVED_NAME,
                                  f'savepoint name "{c.tx.name}" is reserved: names starting with dbproxy_ '
                                  "belong to the proxy")
    if any(t.lower().lstrip('"').startswith("dbproxy.") for t in c.tables):
        return ErrorResponse.make(SQLSTATE.INSUFFICIENT_PRIVILEGE,
                                  "the dbproxy schema holds the proxy's journal; agents may not write to it")
    identity = identity_refusal(c.sql, state.run_as)
    if identity is not None:
        return identity
    if policy and state.policy_refusal is not None and c.tx is None:
        denied = state.policy_refusal(c.sql)
        if denied is not None:
            return denied
    if c.escape and not c.escape.startswith(_CALL_ESCAPE):
        # A CALL is let through: hold mode runs it inside a transaction block, where PostgreSQL
        # itself refuses a procedure's COMMIT/ROLLBACK (2D000), so it cannot end the chain.
        return ErrorResponse.make(SQLSTATE.INSUFFICIENT_PRIVILEGE,
                                  f"dbproxy refused this statement: {c.escape}",
                                  hint="Writes are held for review; statements that could bypass the "
                                  "hold are not allowed for agents.")
    if c.non_transactional:
        return ErrorResponse.make(SQLSTATE.ACTIVE_SQL_TRANSACTION,
                                  f"dbproxy refused this statement: {c.non_transactional}, so it "
                                  "could not be held for review",
                                  hint="Ask a person to run it directly on the database.")
    if state.read_only_agent and not c.read_only and c.tx is None:
        return ErrorResponse.make(SQLSTATE.READ_ONLY_SQL_TRANSACTION,
                                  "this agent is read-only: dbproxy refused a statement that may write")
    return None


def identity_refusal(sql: str, run_as: str = "") -> ErrorResponse | None:
    """Statements that change identities or privileges of roles are for people, in every mode."""
    why = identity_change(sql, (run_as,) if run_as else ())
    if why is None:
        return None
    return ErrorResponse.make(SQLSTATE.INSUFFICIENT_PRIVILEGE,
                              f"dbproxy refused this statement: {why}",
                              detail="Agents may not change roles, role membership, ownership or who code runs as.",
                              hint="A person must run it directly on the database.")


def refusal_sql(error: ErrorResponse) -> str:
    """A statement that fails with `error`'s SQLSTATE, message, detail and hint, raised by the
    server itself (for paths that forward the server's answers unchanged)."""
    def lit(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"
    fields = [f"ERRCODE = {lit(error.sqlstate)}", f"MESSAGE = {lit(error.message)}"]
    if error.fields.get("D"):
        fields.append(f"DETAIL = {lit(error.fields['D'])}")
    if error.fields.get("H"):
        fields.append(f"HINT = {lit(error.fields['H'])}")
    return f"DO $dbproxy$BEGIN RAISE EXCEPTION USING {', '.join(fields)}; END$dbproxy$"


_ISOLATION = re.compile(r"isolation\s+level\s+(serializable|repeatable\s+read|read\s+committed|read\s+uncommitted)",
                        re.IGNORECASE)


def _chain_begin(agent_begin: str) -> str:
    """The chain keeps the isolation level of the agent's first BEGIN. READ ONLY and DEFERRABLE
    are not carried over: the chain outlives this agent transaction."""
    m = _ISOLATION.search(agent_begin)
    return "BEGIN ISOLATION LEVEL " + " ".join(m.group(1).upper().split()) if m else "BEGIN"


def _raise_sql(sqlstate: str) -> str:
    """A statement that fails with `sqlstate` (its message is replaced by the proxy's)."""
    return (f"DO $dbproxy$BEGIN RAISE EXCEPTION USING ERRCODE = '{sqlstate}', "
            "MESSAGE = 'refused by dbproxy'; END$dbproxy$")


# --------------------------------------------------------------------------------------------
# State and plans
# --------------------------------------------------------------------------------------------


_PROXY_SHOW = re.compile(r"\s*show\s+dbproxy\.(status|rules)\s*;?\s*", re.IGNORECASE)


def proxy_show(sql: str) -> str | None:
    """`status` or `rules` for `SHOW dbproxy.status` / `SHOW dbproxy.rules`, which the proxy answers
    itself (never sent upstream), else None."""
    if "dbproxy" not in sql and "DBPROXY" not in sql.upper():
        return None
    m = _PROXY_SHOW.fullmatch(sql)
    return m.group(1).lower() if m else None


@dataclass
class ProxyResult:
    """A result the proxy answers itself: text columns and rows."""

    columns: tuple[str, ...]
    rows: list[tuple[str | None, ...]] = field(default_factory=list)

    def description(self) -> bytes:
        return RowDescription(tuple((c, 25) for c in self.columns)).encode()  # 25: text

    def data(self) -> bytes:
        return b"".join(DataRow(r).encode() for r in self.rows) + _cc("SHOW")


#: The columns of the proxy's answers, known before the rows are (a Describe comes first).
PROXY_COLUMNS = {
    "status": ("kind", "id", "state", "since", "age_seconds", "detail", "next"),
    "rules": ("position", "source", "decision", "ask", "ops", "objects", "max_rows"),
}


class AgentTx(enum.Enum):
    NONE = 0
    IMPLICIT = 1  # statements outside BEGIN, until Sync / end of the simple query
    EXPLICIT = 2


@dataclass
class HoldState:
    """What the proxy knows about the agent's transaction and the chain it runs in."""

    chain: bool = False  # the proxy's upstream transaction is open
    held: int = 0  # agent transactions of this chain already held (0: nothing held yet)
    agent_tx: AgentTx = AgentTx.NONE
    failed: bool = False  # the agent's explicit transaction hit an error ('E')
    wrote: bool = False  # the current agent transaction ran a statement that may write
    tx_no: int = 0  # agent transactions begun in this chain
    error_pending: bool = False  # an error in a Flush-ended cycle: upstream skips to the next Sync
    read_only_agent: bool = False
    login_role: str = ""  # the agent's upstream login role, which the session must keep (session_user)
    run_as: str = ""  # the role the agent acts as (current_user; "" : the login role itself)
    capture: bool = False  # undo mode with capture installed: fetch the changes at each COMMIT
    # Capture is on in this session (undo mode, or hold mode where capture is installed): DDL is
    # announced to the server first (`announce`), and the guard checks capture stays on.
    ddl_capture: bool = False
    ddl_limits: Limits = field(default_factory=Limits)
    identity_baseline: int | None = None  # role-catalog writes counted when the chain began (see guard_sql)
    # The policy's say on a statement before it runs (a deny rule, or a reviewer's rejection):
    # the error the agent gets instead, or None. Set by the session when a policy applies.
    policy_refusal: Callable[[str], ErrorResponse | None] | None = None
    # The proxy's own answers to `SHOW dbproxy.status|rules` in the cycle being planned.
    answers: dict[str, ProxyResult] = field(default_factory=dict)

    @property
    def agent_status(self) -> str:
        if self.agent_tx is AgentTx.EXPLICIT:
            return "E" if self.failed else "T"
        return "I"


class Action(enum.Enum):
    FORWARD = 1  # the client's message: answers go to the client
    RETAG = 2  # forwarded, with CommandComplete replaced by `tag`
    SWALLOW = 3  # the proxy's own message: answers dropped
    CAPTURE = 4  # the proxy's xid probe: the first value is kept, answers dropped
    REFUSE = 5  # the proxy's raise: the client sees `error` instead of the upstream's


class Effect(enum.Enum):
    CHAIN_OPEN = 1
    CHAIN_CLOSED = 2
    TX_BEGIN_IMPLICIT = 3
    TX_BEGIN_EXPLICIT = 4
    TX_COMMIT = 5  # the agent's transaction ended with COMMIT (released into the chain)
    TX_ROLLBACK = 6
    WROTE = 7
    NOTIFY = 8  # a notification is queued: delivered at COMMIT, though no transaction id is taken


@dataclass(slots=True)
class Step:
    """One expected answer (or a synthetic one). `terminal` answers finish it."""

    terminal: frozenset[int]
    action: Action = Action.FORWARD
    tag: str | None = None
    error: ErrorResponse | None = None
    synthetic: bytes = b""  # sent to the client when the step is reached; no upstream answer
    effects: tuple[Effect, ...] = ()
    sql: str | None = None  # a client statement, for the journal
    bind: BoundValues | None = None  # ... and its portal's Bind with the Parse's parameter types
    describe: str | None = None  # a Describe of this statement name: learn its parameter types
    final: bool = False  # the ReadyForQuery step
    skipped: bool = False  # upstream will not answer (it is skipping to Sync after an error)
    name: str | None = None  # a named CAPTURE: its value goes to `Router.named`, not `captured`
    store: str | None = None  # ... and, as an int, to this attribute of the hold state


@dataclass
class Plan:
    upstream: bytes
    steps: list[Step]
    passthrough: bool = False  # forward every answer unchanged until ReadyForQuery
    ends_with_sync: bool = True  # False: Flush-ended, done when every step is answered
    refused: bool = False
    ddl: bool = False  # it announces DDL (the undo-mode session first readies the schema copy)


def _cc(tag: str) -> bytes:
    return CommandComplete(tag).encode()


def _warning(sqlstate: str, message: str) -> bytes:
    return NoticeResponse({"S": "WARNING", "V": "WARNING", "C": sqlstate, "M": message}).encode()


def _injected(sql: str, action: Action = Action.SWALLOW, *, tag: str | None = None,
              error: ErrorResponse | None = None, effects: tuple[Effect, ...] = (),
              sql_record: str | None = None, params: Sequence[str | None] = ()) -> tuple[bytes, list[Step]]:
    """A proxy statement over the extended protocol with its own named statement and portal,
    closed again, so the client's unnamed statement and portal are never touched."""
    bind = Bind(_PORTAL, _STMT, (), tuple(None if p is None else p.encode() for p in params))
    # Closed first, not after: when the statement fails, the server skips everything up to Sync,
    # a trailing Close included, and the next Parse of the same name would fail. Closing a name
    # that does not exist is not an error.
    out = b"".join((Close("P", _PORTAL).encode(), Close("S", _STMT).encode(), Parse(_STMT, sql).encode(),
                    bind.encode(), Execute(_PORTAL).encode()))
    steps = [Step(frozenset({T_CLOSE_COMPLETE}), Action.SWALLOW),
             Step(frozenset({T_CLOSE_COMPLETE}), Action.SWALLOW),
             Step(frozenset({T_PARSE_COMPLETE}), Action.SWALLOW),
             Step(frozenset({T_BIND_COMPLETE}), Action.SWALLOW),
             Step(_AFTER_EXECUTE, action, tag=tag, error=error, effects=effects, sql=sql_record)]
    return out, steps


def injected_script(sqls: Sequence[str | tuple[str, Sequence[str | None]]]) -> Plan:
    """Proxy statements run between client cycles (commit, rollback, probes), ending in Sync.
    Each is SQL text or (SQL, text parameters); their rows are collected (`Router.rows`)."""
    out: list[bytes] = []
    steps: list[Step] = []
    for item in sqls:
        sql, params = (item, ()) if isinstance(item, str) else item
        b, s = _injected(sql, Action.CAPTURE, params=params)
        out.append(b)
        steps += s
    out.append(Sync().encode())
    steps.append(Step(frozenset({T_READY}), Action.SWALLOW, final=True))
    return Plan(b"".join(out), steps)


# --------------------------------------------------------------------------------------------
# Planning one cycle
# --------------------------------------------------------------------------------------------


Emit = Callable[[Action, str | None, tuple[Effect, ...]], None]


class _Builder:
    """Accumulates upstream statements (as simple-query text or extended messages) and steps,
    simulating the hold state as it goes (the real state follows the steps' effects)."""

    def __init__(self, state: HoldState, simple: bool) -> None:
        self.sim = HoldState(**vars(state))
        self.simple = simple
        self.sql: list[str] = []
        self.out: list[bytes] = []
        self.steps: list[Step] = []
        self.committed = False
        self.refused = False
        self.ddl = False

    # -- emitting -----------------------------------------------------------------------------

    def stmt(self, sql: str, action: Action = Action.SWALLOW, *, tag: str | None = None,
             error: ErrorResponse | None = None, effects: tuple[Effect, ...] = (),
             record: str | None = None, name: str | None = None, store: str | None = None) -> None:
        if self.simple:
            self.sql.append(sql)
            self.steps.append(Step(_AFTER_STATEMENT, action, tag=tag, error=error, effects=effects, sql=record,
                                   name=name, store=store))
        else:
            b, s = _injected(sql, action, tag=tag, error=error, effects=effects, sql_record=record)
            s[-1].name, s[-1].store = name, store
            self.out.append(b)
            self.steps += s

    def synthetic(self, data: bytes, effects: tuple[Effect, ...] = ()) -> None:
        self.steps.append(Step(frozenset(), Action.FORWARD, synthetic=data, effects=effects))

    # -- hold bookkeeping ---------------------------------------------------------------------

    def ensure_chain(self) -> None:
        if not self.sim.chain:
            self.stmt("BEGIN", effects=(Effect.CHAIN_OPEN,))
            self.sim.chain, self.sim.held, self.sim.tx_no = True, 0, 0
            self.identity_base()

    def identity_base(self) -> None:
        """Right after the chain's BEGIN: the role-catalog count the guard compares against."""
        self.stmt(IDENTITY_COUNT_SQL, Action.CAPTURE, name="identity_base", store="identity_baseline")
        self.sim.identity_baseline = None  # known once answered

    def ensure_agent_tx(self) -> None:
        """Any statement run while the chain is open must be inside an agent savepoint."""
        if self.sim.chain and self.sim.agent_tx is AgentTx.NONE:
            self.stmt(f"SAVEPOINT {SAVEPOINT}", effects=(Effect.TX_BEGIN_IMPLICIT,))
            self.sim.agent_tx, self.sim.wrote = AgentTx.IMPLICIT, False
            self.sim.tx_no += 1

    def refuse(self, error: ErrorResponse, record: str) -> None:
        self.ensure_agent_tx()
        self.stmt(_raise_sql(error.sqlstate), Action.REFUSE, error=error, record=record)
        self.refused = True

    def _end_agent_tx(self, *, commit: bool, tag: str, chain_after: bool) -> None:
        """COMMIT/ROLLBACK of the agent's transaction (explicit or implicit)."""
        sim = self.sim
        if commit and not sim.failed:
            self.guard()
            self.stmt(f"RELEASE SAVEPOINT {SAVEPOINT}", Action.RETAG, tag=tag, effects=(Effect.TX_COMMIT,),
                      record=tag)
            self.committed = True
            sim.agent_tx = AgentTx.NONE
        elif sim.held == 0:
            # Nothing held yet: end the whole upstream transaction, releasing its locks.
            self.stmt("ROLLBACK", Action.RETAG, tag="ROLLBACK",
                      effects=(Effect.TX_ROLLBACK, Effect.CHAIN_CLOSED), record=tag)
            sim.chain, sim.agent_tx = False, AgentTx.NONE
        else:
            self.stmt(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
            self.stmt(f"RELEASE SAVEPOINT {SAVEPOINT}", Action.RETAG, tag="ROLLBACK",
                      effects=(Effect.TX_ROLLBACK,), record=tag)
            # What the rolled-back work wrote to the role catalogs still counts: take a new baseline.
            self.stmt(IDENTITY_COUNT_SQL, Action.CAPTURE, name="identity_base", store="identity_baseline")
            sim.agent_tx = AgentTx.NONE
        sim.failed = sim.wrote = False
        if chain_after:
            self.ensure_chain()
            self.stmt(f"SAVEPOINT {SAVEPOINT}", effects=(Effect.TX_BEGIN_EXPLICIT,))
            sim.agent_tx = AgentTx.EXPLICIT
            sim.tx_no += 1

    def client_statement(self, c: Classification, emit: Emit) -> None:
        """Plan one client statement. `emit` sends the client's own statement with an action."""
        sim = self.sim
        error = refusal(c, sim)
        if error is not None:
            self.refuse(error, c.sql)
            return
        tx = c.tx
        if tx is None:
            if c.read_only and not sim.chain:
                emit(Action.FORWARD, None, ())
                return
            if not c.read_only:
                self.ensure_chain()
            self.ensure_agent_tx()
            self.announce(c)
            wrote = not c.read_only
            sim.wrote = sim.wrote or wrote
            effects = (Effect.WROTE,) if wrote else ()
            if wrote and _NOTIFY.search(c.sql):
                effects += (Effect.NOTIFY,)
            emit(Action.FORWARD, None, effects)
            return
        action = tx.action
        if action == "begin":
            if sim.agent_tx is AgentTx.EXPLICIT:
                self.synthetic(_warning(SQLSTATE.ACTIVE_SQL_TRANSACTION, "there is already a transaction in progress")
                               + _cc("BEGIN"))
            elif sim.agent_tx is AgentTx.IMPLICIT:
                # PostgreSQL turns the implicit block into an explicit one.
                sim.agent_tx = AgentTx.EXPLICIT
                self.synthetic(_cc("BEGIN"), effects=(Effect.TX_BEGIN_EXPLICIT,))
            else:
                if not sim.chain:
                    # The agent's own BEGIN (with its isolation level) opens the chain.
                    self.stmt(_chain_begin(c.sql), Action.SWALLOW, effects=(Effect.CHAIN_OPEN,))
                    sim.chain, sim.held, sim.tx_no = True, 0, 0
                    self.identity_base()
                self.stmt(f"SAVEPOINT {SAVEPOINT}", Action.RETAG, tag="BEGIN",
                          effects=(Effect.TX_BEGIN_EXPLICIT,), record="BEGIN")
                sim.agent_tx, sim.wrote, sim.failed = AgentTx.EXPLICIT, False, False
                sim.tx_no += 1
        elif action in ("commit", "rollback"):
            tag = "COMMIT" if action == "commit" else "ROLLBACK"
            if sim.agent_tx is AgentTx.NONE:
                if tx.chain:
                    self.refuse(ErrorResponse.make(SQLSTATE.NO_ACTIVE_SQL_TRANSACTION,
                                                   f"{tag} AND CHAIN can only be used in transaction blocks"), c.sql)
                else:
                    self.synthetic(_warning(SQLSTATE.NO_ACTIVE_SQL_TRANSACTION, "there is no transaction in progress")
                                   + _cc(tag))
            else:
                if sim.failed and action == "commit":
                    tag = "ROLLBACK"  # PostgreSQL: COMMIT of a failed transaction rolls back
                self._end_agent_tx(commit=action == "commit", tag=tag, chain_after=tx.chain)
        elif action in ("savepoint", "release", "rollback_to"):
            if sim.agent_tx is not AgentTx.EXPLICIT:
                what = {"savepoint": "SAVEPOINT", "release": "RELEASE SAVEPOINT",
                        "rollback_to": "ROLLBACK TO SAVEPOINT"}[action]
                self.refuse(ErrorResponse.make(SQLSTATE.NO_ACTIVE_SQL_TRANSACTION,
                                               f"{what} can only be used in transaction blocks"), c.sql)
            else:
                emit(Action.FORWARD, None, ())
        else:  # prepare / commit_prepared / rollback_prepared: refusal() has caught them
            self.refuse(ErrorResponse.make(SQLSTATE.FEATURE_NOT_SUPPORTED,
                                           "two-phase commit is not available to agents"), c.sql)

    def announce(self, c: Classification) -> None:
        """With capture on, DDL is preceded by `dbproxy.before_ddl`, which keeps the state it
        changes and the data it destroys (`inverse.ddl_state`), swallowed like the guard."""
        if not self.sim.ddl_capture or c.read_only:
            return
        if c.kind is Kind.WRITE and not _TRUNCATE.match(c.sql):
            return  # DML: its rows are captured by the row triggers
        call = before_ddl_sql(c.sql, self.sim.ddl_limits)
        if call is not None:
            self.stmt(call)
            self.ddl = True

    def guard(self) -> None:
        """Check the agent's transaction before it joins the chain; captures the xid (see _GUARD_SQL)
        and, in undo mode while nothing is held, the transaction's captured changes."""
        sim = self.sim
        baseline = sim.identity_baseline
        if baseline is None and sim.held:
            baseline = 0  # the chain's count never arrived: fail closed rather than check nothing
        self.stmt(guard_sql(sim.login_role, run_as=sim.run_as, capture=sim.capture or sim.ddl_capture,
                            baseline=baseline),
                  Action.CAPTURE, error=GUARD_ERROR)
        if baseline is None:
            # The chain began in this very cycle: the proxy compares the counts itself afterwards
            # (nothing but this agent transaction is in the chain, so refusing rolls back just it).
            self.stmt(IDENTITY_COUNT_SQL, Action.CAPTURE, name="identity_now")
        if sim.capture and sim.held == 0:
            self.stmt(CAPTURE_FETCH_SQL, Action.CAPTURE)

    def finish_implicit(self) -> None:
        """End of a simple query or Sync: an implicit agent transaction commits (into the chain)."""
        if self.sim.agent_tx is AgentTx.IMPLICIT:
            self.guard()
            self.stmt(f"RELEASE SAVEPOINT {SAVEPOINT}", effects=(Effect.TX_COMMIT,))
            self.sim.agent_tx = AgentTx.NONE
            self.committed = True


def passthrough_query(state: HoldState, sql: str, *, policy: bool = True) -> bool:
    """May this simple query pass through untouched? Outside any transaction, when every statement
    in it is positively read-only (`classify`), allowed, and none is one the proxy answers itself.
    (`policy`: see `refusal`.)"""
    if state.chain or state.agent_tx is not AgentTx.NONE:
        return False
    for s in split_cached(sql):
        if proxy_show(s) is not None:
            return False
        c = classify_cached(s)
        if not c.read_only or c.tx is not None or refusal(c, state, policy=policy) is not None:
            return False
    return True


def plan_query(state: HoldState, sql: str) -> Plan:
    """A simple Query: statements split and planned one by one, sent as one query string."""
    if passthrough_query(state, sql):
        return Plan(Query(sql).encode(), [], passthrough=True)
    statements = split_cached(sql)
    classes = [classify_cached(s) for s in statements]
    shows = [proxy_show(s) for s in statements]
    b = _Builder(state, simple=True)
    prefix = b""
    if b.sim.chain and b.sim.agent_tx is AgentTx.NONE:
        # The savepoint goes first, in a query string of its own: PostgreSQL parses a whole string
        # before running any of it, so a syntax error in the client's SQL would otherwise hit the
        # chain itself.
        prefix = Query(f"SAVEPOINT {SAVEPOINT}").encode()
        b.steps += [Step(_AFTER_STATEMENT, Action.SWALLOW, effects=(Effect.TX_BEGIN_IMPLICIT,)),
                    Step(frozenset({T_READY}), Action.SWALLOW)]
        b.sim.agent_tx, b.sim.wrote = AgentTx.IMPLICIT, False
        b.sim.tx_no += 1
    for c, show in zip(classes, shows, strict=True):
        if show is not None:
            answer = state.answers.get(show) or ProxyResult(PROXY_COLUMNS[show])
            b.synthetic(answer.description() + answer.data())
            continue

        def emit(action: Action, tag: str | None, effects: tuple[Effect, ...], c: Classification = c) -> None:
            b.stmt(c.sql, action, tag=tag, effects=effects, record=c.sql)
        b.client_statement(c, emit)
    b.finish_implicit()
    if prefix and not b.sql:
        b.stmt("")  # an empty query: its ReadyForQuery ends the cycle after the synthetic answers
    steps = b.steps
    steps.append(Step(frozenset({T_READY}), Action.SWALLOW, final=True))
    upstream = prefix + (Query("\n;\n".join(b.sql)).encode() if b.sql else b"")
    return Plan(upstream, steps, refused=b.refused, ddl=b.ddl)


@dataclass
class PreparedStatements:
    """Client statement and portal names -> their classification (None: refused at Parse)."""

    statements: dict[str, Classification | None] = field(default_factory=dict)
    portals: dict[str, Classification | None] = field(default_factory=dict)
    types: dict[str, tuple[int, ...]] = field(default_factory=dict)  # statement -> its Parse's parameter types
    binds: dict[str, BoundValues] = field(default_factory=dict)  # portal -> its values, when it had any
    # Statements and portals the proxy answers itself (`SHOW dbproxy.status`): name -> what they show.
    # They never exist upstream.
    proxy: dict[str, str] = field(default_factory=dict)
    proxy_portals: dict[str, str] = field(default_factory=dict)

    def names_proxy(self, m: object) -> bool:
        """Does this message name something the proxy answers itself?"""
        if isinstance(m, Parse):
            return proxy_show(m.sql) is not None
        if isinstance(m, Bind):
            return m.statement in self.proxy
        if isinstance(m, Describe | Close):
            return m.name in (self.proxy if m.kind == "S" else self.proxy_portals)
        if isinstance(m, Execute):
            return m.portal in self.proxy_portals
        return False


_UNKNOWN_PORTAL = Classification("", Kind.UNKNOWN, False, None, None, None, frozenset())


def passthrough_extended(state: HoldState, prepared: PreparedStatements, msgs: list[object], *,
                         policy: bool = True) -> bool:
    """May this extended-protocol cycle pass through untouched? Outside any transaction, ending in
    Sync (a passthrough plan finishes at ReadyForQuery), when every statement it parses or runs is
    positively read-only and allowed and names nothing the proxy answers itself. When it may,
    `prepared` is updated as the server will see the cycle."""
    if state.chain or state.agent_tx is not AgentTx.NONE or state.error_pending or not isinstance(msgs[-1], Sync) \
            or any(prepared.names_proxy(m) for m in msgs):
        return False
    after = _read_only_cycle(state, prepared, msgs, policy=policy)
    if after is None:
        return False
    prepared.statements, prepared.portals = after.statements, after.portals
    for m in msgs:  # what these messages name no longer carries earlier values or types
        if isinstance(m, Bind):
            prepared.binds.pop(m.portal, None)
            prepared.proxy_portals.pop(m.portal, None)
        elif isinstance(m, Parse):
            prepared.proxy.pop(m.name, None)
            prepared.types.pop(m.name, None)
            if m.param_types:
                prepared.types[m.name] = m.param_types
        elif isinstance(m, Close):
            (prepared.types if m.kind == "S" else prepared.binds).pop(m.name, None)
    return True


def plan_extended(state: HoldState, prepared: PreparedStatements, frames: list[Frame]) -> Plan:
    """Parse/Bind/Describe/Execute/Close/Sync/Flush messages of one cycle."""
    msgs = [decode_frontend(f) for f in frames]  # ProtocolViolation ends the session
    if passthrough_extended(state, prepared, msgs):
        return Plan(b"".join(f.raw for f in frames), [], passthrough=True)
    b = _Builder(state, simple=False)
    if b.sim.chain and not state.error_pending:
        b.ensure_agent_tx()
    skipping = state.error_pending
    ends_with_sync = False
    for f, m in zip(frames, msgs, strict=True):
        start = len(b.steps)
        if prepared.names_proxy(m):
            _proxy_message(b, prepared, state, m)
        elif isinstance(m, Parse):
            c = classify_cached(m.sql)
            prepared.proxy.pop(m.name, None)
            error = refusal(c, b.sim)
            if m.param_types:
                prepared.types[m.name] = m.param_types
            else:
                prepared.types.pop(m.name, None)
            if error is not None:
                prepared.statements[m.name] = None
                b.refuse(error, m.sql)
            else:
                prepared.statements[m.name] = c
                b.out.append(f.raw)
                b.steps.append(Step(frozenset({T_PARSE_COMPLETE})))
        elif isinstance(m, Bind):
            prepared.portals[m.portal] = prepared.statements.get(m.statement, _UNKNOWN_PORTAL)
            prepared.proxy_portals.pop(m.portal, None)
            if m.params:
                prepared.binds[m.portal] = (m, prepared.types.get(m.statement, ()))
            else:
                prepared.binds.pop(m.portal, None)
            b.out.append(f.raw)
            b.steps.append(Step(frozenset({T_BIND_COMPLETE})))
        elif isinstance(m, Describe):
            b.out.append(f.raw)
            b.steps.append(Step(_AFTER_DESCRIBE, describe=m.name if m.kind == "S" else None))
        elif isinstance(m, Close):
            (prepared.statements if m.kind == "S" else prepared.portals).pop(m.name, None)
            (prepared.types if m.kind == "S" else prepared.binds).pop(m.name, None)
            b.out.append(f.raw)
            b.steps.append(Step(frozenset({T_CLOSE_COMPLETE})))
        elif isinstance(m, Execute):
            c = prepared.portals.get(m.portal, _UNKNOWN_PORTAL)
            if c is None:  # its statement was refused at Parse: the upstream has no such portal
                b.out.append(f.raw)
                b.steps.append(Step(_AFTER_EXECUTE))
            else:
                portal_bind = prepared.binds.get(m.portal)

                def emit(action: Action, tag: str | None, effects: tuple[Effect, ...],
                         raw: bytes = f.raw, sql: str = c.sql, bind: BoundValues | None = portal_bind) -> None:
                    b.out.append(raw)
                    b.steps.append(Step(_AFTER_EXECUTE, action, tag=tag, effects=effects, sql=sql, bind=bind))
                b.client_statement(c, emit)
        elif isinstance(m, Sync):
            b.finish_implicit()
            b.out.append(f.raw)
            b.steps.append(Step(frozenset({T_READY}), Action.SWALLOW, final=True))
            ends_with_sync = True
            skipping = False
        else:  # Flush, stray CopyData/CopyDone/CopyFail: no answer
            b.out.append(f.raw)
        if skipping:
            for s in b.steps[start:]:
                s.skipped = not s.final
    if not isinstance(msgs[-1], Sync | Flush):
        # Cut short by a Query that follows: the server sends nothing without a Sync or Flush.
        b.out.append(Flush().encode())
    return Plan(b"".join(b.out), b.steps, ends_with_sync=ends_with_sync, refused=b.refused, ddl=b.ddl)


_PARSE_COMPLETE, _BIND_COMPLETE, _CLOSE_COMPLETE = frame(b"1", b""), frame(b"2", b""), frame(b"3", b"")


def _proxy_message(b: _Builder, prepared: PreparedStatements, state: HoldState, m: object) -> None:
    """A message about a statement the proxy answers itself: answered here, never sent upstream."""
    if isinstance(m, Parse):
        kind = proxy_show(m.sql)
        assert kind is not None
        prepared.proxy[m.name] = kind
        prepared.statements.pop(m.name, None)
        b.synthetic(_PARSE_COMPLETE)
    elif isinstance(m, Bind):
        prepared.proxy_portals[m.portal] = prepared.proxy[m.statement]
        prepared.portals.pop(m.portal, None)
        prepared.binds.pop(m.portal, None)
        b.synthetic(_BIND_COMPLETE)
    elif isinstance(m, Describe):
        kind = (prepared.proxy if m.kind == "S" else prepared.proxy_portals)[m.name]
        columns = ProxyResult(PROXY_COLUMNS[kind]).description()
        b.synthetic((ParameterDescription(()).encode() if m.kind == "S" else b"") + columns)
    elif isinstance(m, Close):
        (prepared.proxy if m.kind == "S" else prepared.proxy_portals).pop(m.name, None)
        b.synthetic(_CLOSE_COMPLETE)
    elif isinstance(m, Execute):
        kind = prepared.proxy_portals[m.portal]
        b.synthetic((state.answers.get(kind) or ProxyResult(PROXY_COLUMNS[kind])).data())


def _read_only_cycle(state: HoldState, prepared: PreparedStatements, msgs: list[object], *,
                     policy: bool = True) -> PreparedStatements | None:
    """The statement and portal names after `msgs` when every statement they parse or run is
    read-only and allowed (the cycle may pass through untouched), else None."""
    trial = PreparedStatements(dict(prepared.statements), dict(prepared.portals))
    for m in msgs:
        _track(trial, m)
        if isinstance(m, Parse):
            c = trial.statements[m.name]
            if c is not None and refusal(c, state, policy=policy) is not None:
                return None
        elif isinstance(m, Execute):
            c = trial.portals.get(m.portal, _UNKNOWN_PORTAL)
            # Checked again when run: a rule reloaded since its Parse may deny it now.
            if c is not None and refusal(c, state, policy=policy) is not None:
                return None
        else:
            continue
        if c is None or not c.read_only or c.tx is not None:
            return None
    return trial


def _track(prepared: PreparedStatements, m: object) -> None:
    if isinstance(m, Parse):
        prepared.statements[m.name] = classify_cached(m.sql)
    elif isinstance(m, Bind):
        prepared.portals[m.portal] = prepared.statements.get(m.statement, _UNKNOWN_PORTAL)
    elif isinstance(m, Close):
        (prepared.statements if m.kind == "S" else prepared.portals).pop(m.name, None)


# --------------------------------------------------------------------------------------------
# Routing the answers
# --------------------------------------------------------------------------------------------


@dataclass
class StatementResult:
    sql: str
    tx_no: int
    tag: str | None = None
    error: ErrorResponse | None = None
    bind: BoundValues | None = None


class Router:
    """Walks a plan's steps as upstream answers arrive; returns what the client must get.

    `on_effect` applies each finished step's effects to the real state, so that after an error
    the state is exactly what the upstream did before it."""

    def __init__(self, plan: Plan, state: HoldState) -> None:
        self.plan = plan
        self.state = state
        self.i = 0
        self.error: ErrorResponse | None = None
        self.captured: list[str | None] = []  # first value of each CAPTURE step (None: no row / NULL)
        self.rows: list[list[tuple[str | None, ...]]] = []  # all rows of each CAPTURE step
        self.tags: list[str] = []  # command tags of CAPTURE steps
        self.named: dict[str, str | None] = {}  # values of named CAPTURE steps
        self.results: list[StatementResult] = []
        self.ready_status: str | None = None
        self.copy_in = False
        self.done = False
        self.committed_any = False  # an agent transaction ended with COMMIT in this cycle
        self.committed_writes = 0  # ... of which this many had statements that may write
        self.notified = False  # NOTIFY / pg_notify ran: worth holding even without a transaction id
        self.described: dict[str, tuple[int, ...]] = {}  # statement name -> parameter types the server named
        # Set when the proxy cancelled a statement that waited on a lock of a held transaction: the
        # agent gets this instead of the server's "canceling statement due to user request".
        self.lock_error: ErrorResponse | None = None
        self._rows: list[bytes] = []

    def start(self) -> bytes:
        """Synthetic answers due before any upstream answer (a plan may have no upstream part)."""
        out: list[bytes] = []
        self._advance(out)
        return b"".join(out)

    @property
    def step(self) -> Step | None:
        return self.plan.steps[self.i] if self.i < len(self.plan.steps) else None

    def feed(self, items: list[bytes | Frame]) -> bytes:
        out: list[bytes] = []
        for item in items:
            if self.plan.passthrough:
                self._passthrough(item, out)
                continue
            step = self.step
            if type(item) is bytes:  # DataRows / CopyData streaming through
                if step is not None and step.action in (Action.FORWARD, Action.RETAG):
                    out.append(item)
                continue
            assert isinstance(item, Frame)
            self._frame(item, step, out)
        return b"".join(out)

    def _passthrough(self, item: bytes | Frame, out: list[bytes]) -> None:
        if type(item) is bytes:
            out.append(item)
            return
        assert isinstance(item, Frame)
        t = item.type
        if t == T_READY:
            self.ready_status = chr(item.raw[5])
            self.done = True
            return  # the relay sends its own ReadyForQuery
        if t == T_COPY_IN:
            self.copy_in = True
        elif t in (T_COMMAND, T_ERROR):
            self.copy_in = False
            if t == T_ERROR and self.lock_error is not None:
                # The proxy cancelled a read stuck behind a held transaction's lock: say so.
                err = decode_backend(item)
                if isinstance(err, ErrorResponse) and err.sqlstate == "57014":
                    out.append(self.lock_error.encode())
                    return
        out.append(item.raw)

    def _frame(self, f: Frame, step: Step | None, out: list[bytes]) -> None:
        t = f.type
        if step is None:
            out.append(f.raw)  # nothing expected: pass it on rather than lose it
            return
        if t == T_READY and not step.final and t in step.terminal:
            self.i += 1  # the end of a query string the proxy sent ahead of the client's
            self._advance(out)
            return
        if t == T_READY:
            self.ready_status = chr(f.raw[5])
            # Skip anything left (after an error the server skips to Sync); finish.
            while self.i < len(self.plan.steps) and not self.plan.steps[self.i].final:
                self.i += 1
            self.i += 1
            self.done = True
            return
        if t == T_ERROR:
            err = decode_backend(f)
            assert isinstance(err, ErrorResponse)
            self.copy_in = False
            shown = step.error if step.error is not None else err
            if self.lock_error is not None and err.sqlstate == "57014":
                shown = self.lock_error
            if self.error is None:
                self.error = shown
            out.append(shown.encode())
            if step.sql is not None:
                self.results.append(StatementResult(step.sql, self.state.tx_no, error=shown, bind=step.bind))
            # The server skips the rest until Sync (extended) or the end of the query (simple).
            self.i += 1
            steps = self.plan.steps
            while self.i < len(steps) and not steps[self.i].final and T_READY not in steps[self.i].terminal:
                steps[self.i].skipped = True
                self.i += 1
            self._advance(out)
            return
        if t == T_NOTICE:
            if step.action is not Action.SWALLOW and step.action is not Action.CAPTURE:
                out.append(f.raw)
            return
        if t in (ord("S"), ord("A")):  # ParameterStatus, NotificationResponse: always the client's
            out.append(f.raw)
            return
        if t == T_COPY_IN:
            self.copy_in = True
        if t == T_DATAROW:
            if step.action is Action.CAPTURE:
                self._rows.append(f.raw)
            elif step.action in (Action.FORWARD, Action.RETAG):
                out.append(f.raw)
            return
        if t in step.terminal:
            tag: str | None = None
            if t == T_COMMAND:
                self.copy_in = False
                cc = decode_backend(f)
                assert isinstance(cc, CommandComplete)
                tag = step.tag if step.action is Action.RETAG and step.tag else cc.tag
            if step.action is Action.FORWARD:
                out.append(f.raw)
            elif step.action is Action.RETAG:
                out.append(_cc(tag) if t == T_COMMAND and tag else f.raw)
            elif step.action is Action.CAPTURE:
                rows = [_values(r) for r in self._rows]
                first = rows[0][0] if rows and rows[0] else None
                if step.name is not None:
                    self.named[step.name] = first
                    if step.store is not None and first is not None:
                        setattr(self.state, step.store, int(first))
                else:
                    self.rows.append(rows)
                    self.captured.append(first)
                    self.tags.append(tag or "")
                self._rows.clear()
            # Effects first: an agent BEGIN belongs to the transaction it begins (its number).
            self._apply(step)
            if step.sql is not None and t != T_SUSPENDED:
                self.results.append(StatementResult(step.sql, self.state.tx_no, tag=tag, bind=step.bind))
            self.i += 1
            self._advance(out)
            return
        # Non-terminal answers of the current step (RowDescription, ParameterDescription, CopyIn...).
        if t == T_PARAMDESC and step.describe is not None:
            desc = decode_backend(f)
            assert isinstance(desc, ParameterDescription)
            self.described[step.describe] = desc.types
        if step.action in (Action.FORWARD, Action.RETAG):
            out.append(f.raw)

    def _advance(self, out: list[bytes]) -> None:
        """Emit synthetic steps now due, and skip steps the upstream will not answer."""
        steps = self.plan.steps
        while self.i < len(steps):
            s = steps[self.i]
            if s.skipped:
                pass
            elif s.synthetic:
                out.append(s.synthetic)
                self._apply(s)
            else:
                break
            self.i += 1
        if not self.plan.ends_with_sync and self.i >= len(steps) and not self.plan.passthrough:
            self.done = True

    def _apply(self, step: Step) -> None:
        st = self.state
        for e in step.effects:
            if e is Effect.CHAIN_OPEN:
                st.chain, st.held, st.tx_no = True, 0, 0
                st.identity_baseline = None
            elif e is Effect.CHAIN_CLOSED:
                st.chain, st.held = False, 0
                st.identity_baseline = None
                st.agent_tx, st.failed, st.wrote = AgentTx.NONE, False, False
            elif e is Effect.TX_BEGIN_IMPLICIT:
                st.agent_tx, st.wrote, st.failed = AgentTx.IMPLICIT, False, False
                st.tx_no += 1
            elif e is Effect.TX_BEGIN_EXPLICIT:
                if st.agent_tx is not AgentTx.IMPLICIT:
                    st.tx_no += 1
                    st.wrote = False
                st.agent_tx, st.failed = AgentTx.EXPLICIT, False
            elif e is Effect.TX_COMMIT:
                self.committed_writes += 1 if st.wrote else 0
                self.committed_any = True
                st.agent_tx, st.wrote, st.failed = AgentTx.NONE, False, False
            elif e is Effect.TX_ROLLBACK:
                st.agent_tx, st.wrote, st.failed = AgentTx.NONE, False, False
            elif e is Effect.WROTE:
                st.wrote = True
            elif e is Effect.NOTIFY:
                st.wrote = True
                self.notified = True


def _values(raw: bytes) -> tuple[str | None, ...]:
    """A text-format DataRow's values."""
    count = int.from_bytes(raw[5:7], "big")
    pos, out = 7, []
    for _ in range(count):
        n = int.from_bytes(raw[pos:pos + 4], "big", signed=True)
        pos += 4
        if n < 0:
            out.append(None)
        else:
            out.append(raw[pos:pos + n].decode())
            pos += n
    return tuple(out)


def synthetic_ready(status: str) -> bytes:
    return frame(b"Z", status.encode())


def notice(message: str, *, detail: str | None = None, hint: str | None = None) -> bytes:
    """A NOTICE from the proxy to the agent (held for review, committed by a reviewer, ...)."""
    fields = {"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": message}
    if detail:
        fields["D"] = detail
    if hint:
        fields["H"] = hint
    return NoticeResponse(fields).encode()

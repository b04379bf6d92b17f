"""The journal of pass-through sessions: trusted agents are not intercepted, but what they write
is still recorded.

`PassthroughLog` is sans-IO: the relay shows it the client's Query/Parse/Bind/Execute/Sync and
the server's CommandComplete/EmptyQuery/Error/ReadyForQuery frames (as raw bytes: `client_raw`,
`server_raw`), and it calls `on_done` with
the statements of every agent transaction that wrote, when the server reports the transaction
over, with its outcome. Statements are matched to their answers in protocol order: a simple
query's statements (split like PostgreSQL does) one answer each, an Execute one answer (with the
values of the Bind that made its portal, `dbproxy.journal.params`). A client that disconnects
inside a transaction that wrote (`disconnected`) has it journaled as rolled back, with a marker.

Observing is on the relay's hot path, so it decodes as little as it can: Bind, Execute, Describe
and Close are read from their names only (a Bind's values are decoded only for a transaction
that wrote, or at once for a big Bind, whose values are cut), CommandComplete from its tag, and
ReadyForQuery from its status byte; only Query and Parse (their SQL) are decoded whole.

Pass-through journaling is written after the fact: a proxy crash between the upstream COMMIT and
the journal write loses that entry (hold mode journals before anything commits).
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from dbproxy.journal.params import journal_params
from dbproxy.journal.records import StatementRecord
from dbproxy.journal.tags import tag_rows, wrote_by_tag
from dbproxy.protocol.errors import ProtocolViolation
from dbproxy.protocol.framing import Frame
from dbproxy.protocol.messages import (
    Bind,
    ErrorResponse,
    ParameterDescription,
    Parse,
    decode_backend,
    decode_frontend,
)
from inverse.lexer import split_cached

Done = Callable[[list[StatementRecord], str], None]

_T_COMMAND, _T_EMPTY, _T_ERROR, _T_READY, _T_PARAMDESC = ord("C"), ord("I"), ord("E"), ord("Z"), ord("t")
_F_QUERY, _F_PARSE, _F_BIND, _F_EXECUTE, _F_DESCRIBE, _F_CLOSE, _F_SYNC = (ord(c) for c in "QPBEDCS")
_I16 = struct.Struct("!h")
CLIENT_TYPES = frozenset(b"QPBDECS")
SERVER_TYPES = frozenset(b"CIEZt")
#: The marker statement of an agent transaction rolled back because the agent disconnected inside it.
DISCONNECTED = "-- dbproxy: the agent disconnected inside this transaction; it was rolled back"
#: A statement's SQL, and the Bind of its portal (raw bytes) with the parameter types of its Parse.
_Bound = tuple[bytes, tuple[int, ...]]
_Stmt = tuple[str, _Bound | None]
#: A statement whose values are bigger than this (bytes) keeps them cut at once, not whole until its
#: transaction ends (a long bulk load must not hold every value it sent in memory).
KEEP_BIND_BYTES = 4096


class PassthroughLog:
    def __init__(self, on_done: Done) -> None:
        self.on_done = on_done
        self._statements: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._portals: dict[str, _Stmt] = {}
        self._open: list[_Stmt] = []  # Executes since the last Sync
        self._cycles: deque[list[_Stmt]] = deque()  # statements still to be answered, per cycle
        self._records: list[tuple[int, str, str | None, ErrorResponse | None, float,
                                  _Bound | list[str | None] | None]] = []
        self._wrote = False
        self._failed = False
        self._tx_no = 1
        self._described: deque[str] = deque()  # statements Described since the last ReadyForQuery

    def client(self, f: Frame) -> None:
        self.client_raw(f.type, f.raw)

    def client_raw(self, t: int, raw: bytes) -> None:
        """One whole client message of a type in `CLIENT_TYPES` (header included)."""
        try:
            self._client(t, raw)
        except (ValueError, IndexError, struct.error, ProtocolViolation):
            pass  # malformed: the server refuses it and says so to the client

    def _client(self, t: int, raw: bytes) -> None:
        if t == _F_SYNC:
            self._cycles.append(self._open)
            self._open = []
        elif t == _F_BIND:
            end = raw.index(0, 5)
            stmt_end = raw.index(0, end + 1)
            sql, types = self._statements.get(raw[end + 1:stmt_end].decode("utf-8", "replace"), ("", ()))
            nformats = _I16.unpack_from(raw, stmt_end + 1)[0]
            has_values = _I16.unpack_from(raw, stmt_end + 3 + 2 * nformats)[0] > 0
            self._portals[raw[5:end].decode("utf-8", "replace")] = (sql, (raw, types) if has_values else None)
        elif t == _F_EXECUTE:
            self._open.append(self._portals.get(raw[5:raw.index(0, 5)].decode("utf-8", "replace"), ("", None)))
        elif t == _F_QUERY:
            sql = raw[5:-1].decode("utf-8", "replace")
            # Splitting costs a lexer pass; a string without a second ';' is one statement.
            single = ";" not in sql.rstrip().rstrip(";")
            self._cycles.append([(sql, None)] if single else [(s, None) for s in split_cached(sql)] or [("", None)])
        elif t == _F_PARSE:
            m = decode_frontend(Frame(t, raw))
            assert isinstance(m, Parse)
            self._statements[m.name] = (m.sql, m.param_types)
        elif t == _F_DESCRIBE:
            if raw[5] == ord("S"):
                self._described.append(raw[6:-1].decode("utf-8", "replace"))
        elif t == _F_CLOSE:
            name = raw[6:-1].decode("utf-8", "replace")
            if raw[5] == ord("S"):
                self._statements.pop(name, None)
            else:
                self._portals.pop(name, None)

    def server(self, f: Frame) -> None:
        self.server_raw(f.type, f.raw)

    def server_raw(self, t: int, raw: bytes) -> None:
        """One whole server message of a type in `SERVER_TYPES` (header included)."""
        if t == _T_PARAMDESC:
            # Parameter types the server named for a Described statement (asyncpg leaves them to it).
            desc = decode_backend(Frame(t, raw))
            if self._described and isinstance(desc, ParameterDescription):
                name = self._described.popleft()
                if name in self._statements:
                    self._statements[name] = (self._statements[name][0], desc.types)
            return
        if t == _T_READY:
            self._described.clear()
            if self._cycles:
                self._cycles.popleft()
            if raw[5] == ord("I"):
                self._end()
            return
        cycle = self._cycles[0] if self._cycles else self._open
        sql, bind = cycle.pop(0) if cycle else ("", None)
        if t == _T_EMPTY:
            return
        if t == _T_ERROR:
            err = decode_backend(Frame(t, raw))
            assert isinstance(err, ErrorResponse)
            self._add(sql, None, err, bind)
            self._failed = True
            cycle.clear()  # the server skips the rest of the query string / until Sync
            return
        tag = raw[5:-1].decode("utf-8", "replace")
        if wrote_by_tag(tag, sql):
            self._wrote = True
        self._add(sql, tag, None, bind)
        if tag in ("COMMIT", "ROLLBACK"):
            self._tx_no += 1

    def _add(self, sql: str, tag: str | None, err: ErrorResponse | None, bind: _Bound | None) -> None:
        # Plain tuples on the hot path; records are built only for transactions that wrote.
        values: _Bound | list[str | None] | None = bind
        if bind is not None and len(bind[0]) > KEEP_BIND_BYTES:
            values = _values(sql, bind)
        self._records.append((self._tx_no, sql, tag, err, time.time(), values))

    def disconnected(self) -> None:
        """The client left while the server was idle (nothing in flight): a transaction it had
        open is rolled back by the server when the connection closes. Journal it as such."""
        if self._wrote and self._records:
            self._add(DISCONNECTED, "ROLLBACK", None, None)
            self._failed = True
        self._end()

    def _end(self) -> None:
        """The server says no transaction is open: the last one committed or rolled back."""
        if self._wrote and self._records:
            last_tag = next((r[2] for r in reversed(self._records) if r[2]), None)
            outcome = "rolled back" if self._failed or last_tag == "ROLLBACK" else "committed"
            self.on_done([
                StatementRecord(seq=i, tx_no=tx_no, sql=sql, tag=tag, rows=tag_rows(tag),
                                sqlstate=err.sqlstate if err else None, error=err.message if err else None,
                                at=datetime.fromtimestamp(at, UTC),
                                params=_values(sql, bind) if isinstance(bind, tuple) else bind)
                for i, (tx_no, sql, tag, err, at, bind) in enumerate(self._records, 1)], outcome)
        if self._records:
            self._records = []
        self._wrote = self._failed = False
        self._tx_no = 1


def _values(sql: str, bound: _Bound) -> list[str | None] | None:
    """The journal's form of a portal's values, decoded from its Bind's bytes."""
    try:
        bind = decode_frontend(Frame(_F_BIND, bound[0]))
    except ProtocolViolation:
        return None  # the server refused the Bind as well
    assert isinstance(bind, Bind)
    return journal_params(sql, bind, bound[1])

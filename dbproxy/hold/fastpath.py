"""The read-only fast path of hold and undo mode: reads outside any transaction go straight through.

Most of what agents send are reads, and a read outside a transaction has nothing to hold, undo or
guard. The planner (`dbproxy.hold.protocol`) already lets such a cycle pass through untouched
(a `passthrough` plan); this module lets the session skip the rest of the cycle machinery too:
no inbox, no task switch, no plan, no lock wait. When a client chunk is exactly one whole
request cycle (a simple Query, or extended-protocol messages ending in their only Sync) and the
planner's own test says it may pass through (`passthrough_query` / `passthrough_extended`:
outside any agent transaction and chain, every statement positively read-only by `classify`,
allowed, and nothing the proxy answers itself), the session writes it upstream at once from the
client's data callback (`dbproxy.hold.session.HoldSession`), and the upstream's answers,
ReadyForQuery included, go straight back (`HeldConnection.run_fast`).

Guarantees kept: only statements `classify` knows not to write take this path (a function call
it cannot vouch for, a volatile function hiding a write, is not read-only and runs through the
chain, where the guard's assigned-xid check is the backstop); the policy is skipped only while no
deny or ask rule could match a read (`PolicyGate.reads_free`); a read stuck behind a held
transaction's lock still fails after `held_lock_timeout` (the lock watch is armed as for any
cycle).
"""

from __future__ import annotations

import struct

from dbproxy.hold.protocol import (
    AgentTx,
    HoldState,
    PreparedStatements,
    passthrough_extended,
    passthrough_query,
    refusal,
)
from dbproxy.protocol.errors import ProtocolViolation
from dbproxy.protocol.framing import Frame, scan_whole
from dbproxy.protocol.messages import Query, decode_frontend

_I32 = struct.Struct("!i")
_Q, _S, _B, _E, _D = ord("Q"), ord("S"), ord("B"), ord("E"), ord("D")
#: Messages a fast cycle may hold: Flush-ended, function calls, COPY data and Terminate go the
#: general way.
_FAST_TYPES = frozenset(b"PBDECSQ")
_ENDS = frozenset(b"QS")


def read_only_cycle(data: bytes, state: HoldState, prepared: PreparedStatements, max_message: int) -> bool:
    """Is `data` exactly one whole request cycle that may pass through untouched? When it is an
    extended-protocol cycle, `prepared` is updated as the server will see it."""
    whole = scan_whole(data, _FAST_TYPES, _ENDS, max_message)
    if whole is None:
        return False
    count, last = whole
    if count != 1:
        return False
    try:
        if data[last] == _Q:
            if last != 0 or 1 + _I32.unpack_from(data, 1)[0] != len(data):
                return False
            msg = decode_frontend(Frame(_Q, data))
            assert isinstance(msg, Query)
            return passthrough_query(state, msg.sql, policy=False)
        if last != len(data) - 5:
            return False
        if data[0] == _B:
            known = _run_prepared(data, state, prepared)
            if known is not None:
                return known
        msgs = []
        pos = 0
        while pos < len(data):
            end = pos + 1 + _I32.unpack_from(data, pos + 1)[0]
            msgs.append(decode_frontend(Frame(data[pos], data[pos:end])))
            pos = end
        return passthrough_extended(state, prepared, msgs, policy=False)
    except (ProtocolViolation, ValueError, IndexError, struct.error):
        return False  # malformed: the general path reports it


def _run_prepared(data: bytes, state: HoldState, prepared: PreparedStatements) -> bool | None:
    """The most common read cycle of drivers with prepared statements: Bind (of a statement parsed
    earlier), Describe of its portal, Execute, Sync. Read from the names alone, without decoding the
    values: the same answer `passthrough_extended` gives, with the same bookkeeping. None: not
    this shape, ask `passthrough_extended`."""
    if state.chain or state.agent_tx is not AgentTx.NONE or state.error_pending:
        return False
    unpack = _I32.unpack_from
    portal_end = data.index(0, 5)
    portal = data[5:portal_end]
    statement = data[portal_end + 1:data.index(0, portal_end + 1)].decode("utf-8", "replace")
    pos = 1 + unpack(data, 1)[0]
    executed = False
    while pos < len(data) - 5:
        t = data[pos]
        end = pos + 1 + unpack(data, pos + 1)[0]
        if t == _E and not executed and data[pos + 5:data.index(0, pos + 5)] == portal:
            executed = True
        elif not (t == _D and data[pos + 5] == ord("P") and data[pos + 6:end - 1] == portal):
            return None
        pos = end
    name = portal.decode("utf-8", "replace")
    c = prepared.statements.get(statement)
    if not executed or c is None or statement in prepared.proxy or name in prepared.proxy_portals:
        return None
    if not c.read_only or c.tx is not None or refusal(c, state, policy=False) is not None:
        return False
    prepared.portals[name] = c
    prepared.binds.pop(name, None)
    return True

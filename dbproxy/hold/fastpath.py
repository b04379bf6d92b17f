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

from dbproxy.hold.protocol import HoldState, PreparedStatements, passthrough_extended, passthrough_query
from dbproxy.protocol.errors import ProtocolViolation
from dbproxy.protocol.framing import Frame, scan_whole
from dbproxy.protocol.messages import Query, decode_frontend

_I32 = struct.Struct("!i")
_Q, _S = ord("Q"), ord("S")
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
        msgs = []
        pos = 0
        while pos < len(data):
            end = pos + 1 + _I32.unpack_from(data, pos + 1)[0]
            msgs.append(decode_frontend(Frame(data[pos], data[pos:end])))
            pos = end
        return passthrough_extended(state, prepared, msgs, policy=False)
    except ProtocolViolation:
        return False  # the general path reports it

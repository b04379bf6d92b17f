"""`dbproxy verify ID` for a held transaction: run sandbox verification again, inside it.

Its captured changes are read inside its own upstream transaction (where they are visible),
between the agent's statements: undo mode's, and hold mode's where capture is installed (a
reviewer's commit of it writes its undo marker). Without capture the verdict says it will not be
undoable once committed. Committed transactions are verified by
`dbproxy.undo.reverify`; the review queue journals either verdict.
"""

from __future__ import annotations

import asyncio

from dbproxy.hold.connection import HeldConnection
from dbproxy.hold.protocol import AgentTx
from dbproxy.review.service import ReviewError
from dbproxy.undo.commit import TableCache, decide
from dbproxy.undo.verification import Verification, transaction
from inverse.images import CAPTURE_FETCH_SQL, CAPTURE_LIMIT
from sandbox.verdict import Verdict
from sandbox.verify import Candidate

#: How long the request waits for the agent's current statement to finish.
LOCK_WAIT = 10.0


async def verify_held(held: HeldConnection, tx_id: int, verification: Verification, tables: TableCache) -> Verdict:
    if not (held.state.capture or held.state.ddl_capture):
        return Verdict.could_not(f"held in {held.mode} mode without capture (`dbproxy install` was not run in "
                                 f"database {held.database}): once committed it cannot be undone")
    try:
        await asyncio.wait_for(held.lock.acquire(), LOCK_WAIT)
    except TimeoutError:
        raise ReviewError(409, f"the agent is running a statement on #{tx_id}; try again") from None
    try:
        if held.state.agent_tx is not AgentTx.NONE:
            raise ReviewError(409, f"the agent is inside a transaction on #{tx_id}; verify between its transactions")
        r = await held.inject(CAPTURE_FETCH_SQL)
        if r.error is not None:
            raise ReviewError(502, f"could not read the captured changes: {r.error.message}")
        assert held.xid is not None
        decision = await decide(held, held.xid, r.rows[0] if r.rows else [], tables, CAPTURE_LIMIT)
        if not decision.reversible:
            return Verdict.could_not("no inverse to verify: " + "; ".join(decision.plan.irreversible))
        statements = list(held.statements)
    finally:
        held.lock.release()
    if not decision.complete:
        return await verification.verify_sample(held.database, decision.plan, decision.changes, decision.tables,
                                                decision.total)
    return await verification.verify(held.database, transaction(statements, decision.changes, decision.tables),
                                     Candidate(decision.plan))

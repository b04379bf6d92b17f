"""The reviewer's side of the proxy, as one interface: list, show, commit, roll back, read the log.

The admin HTTP API (`dbproxy.review.api`) serves this interface; the running proxy implements it
(`dbproxy.hold.pending.PendingRegistry`) over its live held transactions and the journal. Keeping the
interface here lets the API and the CLI be written and tested against it without a session.
"""

from __future__ import annotations

from typing import Protocol

from dbproxy.journal.records import TransactionRecord
from dbproxy.review.models import Decision, TransactionDetail, UndoOutcome, VerifyOutcome


class ReviewError(Exception):
    """A reviewer request that cannot be done. `status` is the HTTP status the API answers with:
    404 unknown id, 409 not in a state that allows it (already decided, agent mid-transaction),
    502 the upstream refused or failed (then `sqlstate` says how), 503 the journal is unavailable."""

    def __init__(self, status: int, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.sqlstate = sqlstate


class ReviewService(Protocol):
    async def pending(self) -> list[TransactionRecord]:
        """Transactions waiting for a decision (and open ones that already hold writes), oldest first."""
        ...

    async def show(self, tx_id: int) -> TransactionDetail:
        """Statements, row-level diff and blocked sessions of one transaction (any outcome)."""
        ...

    async def commit(self, tx_id: int, reviewer: str) -> Decision:
        """Commit a pending transaction upstream. Failures raise ReviewError(502) and are journaled."""
        ...

    async def rollback(self, tx_id: int, reviewer: str) -> Decision:
        """Roll back a pending (or open) transaction upstream."""
        ...

    async def undo(self, tx_id: int, reviewer: str, *, force: bool = False, dry_run: bool = False,
                   since: bool = False) -> UndoOutcome:
        """Undo a transaction committed in undo mode (or, `since`, it and every later one, newest
        first) in one upstream transaction. Conflicts: nothing applied, listed in the outcome."""
        ...

    async def redo(self, tx_id: int, reviewer: str, *, force: bool = False, dry_run: bool = False) -> UndoOutcome:
        """Apply an undone transaction's changes again."""
        ...

    async def verify(self, tx_id: int) -> VerifyOutcome:
        """Prove the transaction's inverse in the sandbox again; the verdict is journaled."""
        ...

    async def log(self, *, outcome: str | None = None, agent: str | None = None, limit: int = 100,
                  before_id: int | None = None) -> list[TransactionRecord]:
        """The journal, newest first."""
        ...

    async def health(self) -> list[str]:
        """What is wrong, for `/v1/health`: empty when the upstream and the journal answer, else
        one sentence per problem (naming hosts and ports, never credentials)."""
        ...

"""The reviewer's side of the proxy, as one interface: list, show, commit, roll back, read the log.

The admin HTTP API (`dbproxy.review.api`) serves this interface; the running proxy implements it
(`dbproxy.hold.pending.PendingRegistry`) over its live held transactions and the journal. Keeping the
interface here lets the API and the CLI be written and tested against it without a session.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol

from dbproxy.journal.records import TransactionRecord
from dbproxy.review.models import Decision, QueueEntry, TransactionDetail, UndoOutcome, VerifyOutcome

#: Rows of each table's diff listed per page unless asked otherwise, and the most a page may ask for.
DIFF_PAGE = 50
MAX_DIFF_PAGE = 1000


class ReviewError(Exception):
    """A reviewer request that cannot be done. `status` is the HTTP status the API answers with:
    404 unknown id, 409 not in a state that allows it (already decided, agent mid-transaction),
    403 not this reviewer's to do, 502 the upstream refused or failed (then `sqlstate` says how), 503 the
    journal is unavailable."""

    def __init__(self, status: int, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.sqlstate = sqlstate


class ReviewService(Protocol):
    async def pending(self) -> list[TransactionRecord]:
        """Transactions waiting for a decision (and open ones that already hold writes), oldest first."""
        ...

    async def queue(self) -> list[QueueEntry]:
        """Pending transactions with the tables they write, rows written and sessions they block."""
        ...

    async def show(self, tx_id: int, *, offset: int = 0, limit: int = DIFF_PAGE,
                   table: str | None = None, summary_wait: float = 0.0) -> TransactionDetail:
        """Statements, row-level diff and blocked sessions of one transaction (any outcome). The diff
        lists each table's changes `offset` to `offset + limit` (`table`: only that table). With a
        model configured, also its generated summary, waited for at most `summary_wait` seconds."""
        ...

    async def commit(self, tx_id: int, reviewer: str, *, reason: str | None = None,
                     grant: Literal["session", "permanent"] | None = None) -> Decision:
        """Commit a pending transaction upstream. Failures raise ReviewError(502) and are journaled.
        `reviewer` is who the token belongs to; `reason` is kept in the journal; `grant` also grants
        the agent what the transaction did, for its session or permanently (checked before the
        commit: a grant that would be refused leaves the transaction pending)."""
        ...

    async def rollback(self, tx_id: int, reviewer: str, *, reason: str | None = None) -> Decision:
        """Roll back a pending (or open) transaction upstream; `reason` is journaled and told to the agent."""
        ...

    async def undo(self, tx_id: int, reviewer: str, *, force: bool = False, dry_run: bool = False,
                   since: bool = False, reason: str | None = None) -> UndoOutcome:
        """Undo a transaction committed with its inverse (or, `since`, it and every later one, newest
        first) in one upstream transaction. Conflicts: nothing applied, listed in the outcome."""
        ...

    async def redo(self, tx_id: int, reviewer: str, *, force: bool = False, dry_run: bool = False,
                   reason: str | None = None) -> UndoOutcome:
        """Apply an undone transaction's changes again."""
        ...

    async def verify(self, tx_id: int) -> VerifyOutcome:
        """Prove the transaction's inverse in the sandbox again; the verdict is journaled."""
        ...

    async def log(self, *, outcome: str | None = None, agent: str | None = None, limit: int = 100,
                  before_id: int | None = None, table: str | None = None, search: str | None = None,
                  since: datetime | None = None, until: datetime | None = None) -> list[TransactionRecord]:
        """The journal, newest first; `table` and `search`: a statement mentions it; `since`/`until`:
        started in that time."""
        ...

    async def health(self) -> list[str]:
        """What is wrong, for `/v1/health`: empty when the upstream and the journal answer, else
        one sentence per problem (naming hosts and ports, never credentials)."""
        ...

"""What the review API shows beyond the journal's records (`dbproxy.journal.records`): row-level
diffs, blocked sessions, decisions, undo and verification outcomes. Pydantic models shared by the
review service, the admin HTTP API and the CLI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from dbproxy.journal.records import Outcome, StatementRecord, TransactionRecord


class RowChange(BaseModel):
    kind: Literal["insert", "update", "delete"]
    key: dict[str, Any] | None = Field(default=None, description="primary-key values, when the table has one")
    before: dict[str, Any] | None = Field(
        default=None, description="changed columns before (update; None when unknown), whole row (delete)")
    after: dict[str, Any] | None = Field(default=None, description="changed columns after (update), whole row (insert)")


class TableDiff(BaseModel):
    table: str = Field(description="schema-qualified, quoted where needed")
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    rows: list[RowChange] = Field(default_factory=list)
    offset: int = Field(default=0, description="rows skipped before the first listed one (paging)")
    truncated: bool = Field(default=False, description="more rows changed than are listed (before or after this page)")


class QueueEntry(BaseModel):
    """A pending transaction as the console's queue lists it: the record plus what is cheap to know
    without computing its diff."""

    transaction: TransactionRecord
    tables: list[str] = Field(default_factory=list, description="tables it holds write locks on")
    rows: int = Field(default=0, description="rows written, from the statements' command tags")
    blocking: int = Field(default=0, description="sessions waiting on its locks")
    last_activity: datetime | None = Field(default=None, description="when its last statement ran")


class BlockedSession(BaseModel):
    pid: int
    user: str | None = None
    application_name: str | None = None
    state: str | None = None
    query: str | None = None
    waiting_seconds: float | None = None


class GeneratedSummary(BaseModel):
    """A model's plain-language account of a transaction: GENERATED, never verified."""

    status: Literal["ready", "pending", "failed"]
    generated: Literal[True] = Field(default=True, description="always true: written by a model, not checked")
    model: str = Field(description="the model that wrote (or is writing) it")
    text: str | None = Field(default=None, description="the summary (ready)")
    risk: str | None = Field(default=None, description="the model's word: low, medium, high or unknown (ready)")
    label: str | None = Field(default=None, description="one line that says it is generated and not verified")
    note: str | None = Field(default=None, description="why there is none yet (pending) or at all (failed)")


class TransactionDetail(BaseModel):
    transaction: TransactionRecord
    statements: list[StatementRecord]
    diff: list[TableDiff] | None = Field(default=None, description="row-level changes, when they could be computed")
    diff_note: str | None = Field(default=None, description="why the diff is missing or stale")
    blocking: list[BlockedSession] = Field(default_factory=list, description="sessions waiting on its locks")
    agent_connected: bool = False
    agent_in_transaction: bool = False
    expires_at: datetime | None = None
    summary: GeneratedSummary | None = Field(
        default=None, description="a model's summary (generated, not verified); absent when no model is configured")


class Decision(BaseModel):
    """The result of a reviewer's commit or rollback."""

    id: int
    outcome: Outcome
    decided_by: str
    reason: str | None = Field(default=None, description="the reviewer's reason, when given")
    error: str | None = None
    sqlstate: str | None = None
    grant: int | None = Field(default=None, description="the grant the commit added (`grant`: session or permanent)")


class UndoRequest(BaseModel):
    """Body of POST /v1/transactions/{id}/undo and /redo."""

    reviewer: str | None = Field(default=None, description="must be the token's reviewer when given")
    reason: str | None = Field(default=None, max_length=2000, description="why, kept in the journal")
    force: bool = Field(default=False, description="apply even over rows changed since (rows with a primary key)")
    dry_run: bool = Field(default=False, description="show the SQL and the conflicts; change nothing")
    since: bool = Field(default=False, description="undo: this transaction and every later undoable one, newest first")


class UndoConflict(BaseModel):
    transaction: int | None = Field(default=None, description="journal id of the transaction the row belongs to")
    table: str | None = None
    step: str = Field(description="remove, restore, revert or ddl")
    expected: str | None = Field(default=None, description="the row image the undo expected (JSON text)")
    current: list[str] = Field(default_factory=list, description="what the row with that key holds now (JSON text)")
    message: str


class UndoOutcome(BaseModel):
    """What an undo or redo did (or, dry run / conflicts, would do)."""

    direction: Literal["undo", "redo"]
    ids: list[int] = Field(description="journal ids covered, in the order applied")
    applied: bool = Field(description="committed upstream")
    dry_run: bool = False
    steps: int = 0
    done: int = 0
    skipped: int = Field(default=0, description="rows already in the target state (e.g. restored by a cascade)")
    forced: int = 0
    conflicts: list[UndoConflict] = Field(default_factory=list)
    overridden: list[UndoConflict] = Field(default_factory=list)
    triggers: str = Field(default="", description="how user triggers were kept from firing")
    sql: list[str] = Field(default_factory=list, description="the plan as readable SQL (dry runs)")
    notes: list[str] = Field(default_factory=list)
    journal_id: int | None = Field(default=None, description="the journal entry recording this undo/redo")


class VerifyOutcome(BaseModel):
    """A sandbox verification's verdict (`dbproxy verify ID`), as journaled in the undo document."""

    id: int
    status: Literal["verified", "failed", "could not verify"]
    reason: str = ""
    diff: list[str] = Field(default_factory=list, description="rows (and catalog entries) the inverse got wrong")
    forward: str = Field(default="", description="how the forward ran on the sample: statements, or images (why)")
    sample: dict[str, int] = Field(default_factory=dict, description="rows per sampled table")
    masked: list[str] = Field(default_factory=list, description="tables whose context rows were masked")
    widened: bool = False
    cached: bool = False
    backend: str = ""
    source: str = Field(default="rules", description="who made the inverse")
    timings_ms: dict[str, float] = Field(default_factory=dict)
    at: str = ""

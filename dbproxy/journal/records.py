"""What the journal stores: one record per agent transaction (the unit a reviewer decides on) and
one per statement in it. Pydantic models, so the journal, the review API and the CLI read and
write the same shapes.

A *transaction* here is the unit a reviewer decides on. In hold mode that is a chain of agent
transactions held in one upstream transaction (`agent_transactions` counts them); in pass-through
mode it is one agent transaction. Statements keep the agent-transaction number (`tx_no`) they ran
in, so the chain can be read back transaction by transaction.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

#: open: the agent is still working on it; pending: held, waiting for a reviewer; committing: a
#: reviewer's COMMIT was sent and its result is not known yet (a crash here is resolved from the
#: upstream's own transaction status at the next start); the rest are final.
Outcome = Literal["open", "pending", "committing", "committed", "rolled back", "expired", "failed"]
FINAL_OUTCOMES = frozenset({"committed", "rolled back", "expired", "failed"})

Mode = Literal["hold", "undo", "passthrough", "read-only"]


class StatementRecord(BaseModel):
    seq: int = Field(description="order within the transaction, from 1")
    tx_no: int = Field(description="agent transaction within the chain, from 1")
    sql: str
    tag: str | None = Field(default=None, description="command tag the agent saw, e.g. 'INSERT 0 3'")
    rows: int | None = Field(default=None, description="row count from the command tag, when it has one")
    sqlstate: str | None = Field(default=None, description="SQLSTATE when the statement failed")
    error: str | None = None
    at: datetime
    params: list[str | None] | None = Field(
        default=None, description="bind parameter values ($1, $2, ...) as text: binary ones as \\x hex, long ones "
        "cut, secrets redacted; None for a statement without parameters")
    effect: Literal["read-only", "setting"] | None = Field(
        default=None, description="when shown for review: 'read-only' (changed nothing) or 'setting' (a session "
        "setting, changed no data); None when it may have written, or for transaction control. Not stored")

    @field_validator("params", mode="before")
    @classmethod
    def _params_json(cls, v: object) -> object:
        return json.loads(v) if isinstance(v, str) else v


class TransactionRecord(BaseModel):
    id: int
    agent: str
    session: int
    database: str
    mode: Mode
    backend_pid: int | None = None
    xid: int | None = Field(default=None, description="upstream transaction id (epoch-extended), once assigned")
    started_at: datetime
    held_at: datetime | None = Field(default=None, description="when it first became pending")
    ended_at: datetime | None = None
    outcome: Outcome
    decided_by: str | None = Field(default=None, description="reviewer name, 'agent', 'expiry' or 'restart'")
    reason: str | None = Field(default=None, description="why it ended this way (errors, expiry, restart)")
    statements: int = 0
    statements_lost: int = Field(default=0, description="statements recorded but lost before the journal could "
                                 "store them (the statement list has gaps)")
    agent_transactions: int = 0
    policy: str | None = Field(default=None, description="which rule or grant decided it at the agent's COMMIT "
                               "(allowed, asked, denied), or that no rule matched and the agent's mode decided")
    undo: dict[str, Any] | None = Field(
        default=None, description="undo mode: the inverse (steps, irreversible reasons, notes), its verification, "
        "and undo/redo history")

    @field_validator("undo", mode="before")
    @classmethod
    def _json_text(cls, v: object) -> object:
        return json.loads(v) if isinstance(v, str) else v

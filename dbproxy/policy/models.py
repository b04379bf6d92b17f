"""Grants and approval requests: as stored in the state database and shown by the review API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dbproxy.config.settings import object_patterns
from dbproxy.policy.rules import matches
from inverse.opclass import OP_CLASSES, Action

Scope = Literal["once", "session", "permanent"]
RequestState = Literal["waiting", "approved", "rejected", "expired", "cancelled"]


class GrantRecord(BaseModel):
    """A reviewer's permission: `ops` on `objects` for `agent`, once (one transaction or request,
    bound to the exact statements approved), for one session, or permanently (until revoked)."""

    id: int
    agent: str
    ops: list[str]
    objects: list[str]
    scope: Scope
    max_rows: int | None = None
    session: int | None = Field(default=None, description="the agent session a session grant belongs to")
    statements_sha256: str | None = Field(default=None, description="once: the statements it was given for")
    request: int | None = Field(default=None, description="the approval request it came from")
    transaction: int | None = Field(default=None, description="the held transaction it came with")
    granted_by: str
    granted_at: datetime
    reason: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    consumed_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and self.consumed_at is None

    def covers(self, action: Action, rows: int | None) -> bool:
        if action.op not in self.ops or not any(matches(p, action.object) for p in self.objects):
            return False
        return self.max_rows is None or rows is None or rows <= self.max_rows

    def __str__(self) -> str:
        what = (f"grant #{self.id} ({self.scope}, by {self.granted_by}): {', '.join(self.ops)} "
                f"on {', '.join(self.objects)}")
        return what + (f" up to {self.max_rows} rows" if self.max_rows is not None else "")


class RequestRecord(BaseModel):
    """A paused statement (or cycle of statements) waiting for a reviewer's approval."""

    id: int
    agent: str
    session: int
    database: str
    statements: list[str] = Field(description="what would run, credentials redacted")
    statements_sha256: str
    actions: list[str] = Field(description="operation class and object of each action, e.g. 'delete public.orders'")
    rule: str = Field(description="the rule that asks")
    state: RequestState
    created_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    reason: str | None = None
    scope: Scope | None = Field(default=None, description="what the approval granted")
    grant: int | None = None


class GrantBody(BaseModel):
    """Body of POST /v1/grants."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1)
    ops: list[str] = Field(min_length=1)
    objects: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    scope: Literal["session", "permanent"] = "permanent"
    session: int | None = Field(default=None, description="scope session: which of the agent's sessions")
    max_rows: int | None = Field(default=None, ge=0)
    reason: str | None = Field(default=None, max_length=2000)

    @field_validator("ops")
    @classmethod
    def _ops(cls, v: list[str]) -> list[str]:
        ops = [o.strip().lower() for o in v]
        bad = [o for o in ops if o != "*" and o not in OP_CLASSES]
        if bad:
            raise ValueError(f"unknown operation class {bad[0]!r}; the classes are {', '.join(OP_CLASSES)}")
        return list(OP_CLASSES) if "*" in ops else list(dict.fromkeys(ops))

    @field_validator("objects")
    @classmethod
    def _objects(cls, v: list[str]) -> list[str]:
        # As a rule's: a malformed glob, or one with capitals, would never match anything.
        return object_patterns([o.strip() for o in v])


class ApproveBody(BaseModel):
    """Body of POST /v1/requests/{id}/approve."""

    model_config = ConfigDict(extra="forbid")

    scope: Scope = "once"
    reason: str | None = Field(default=None, max_length=2000)


class ReasonBody(BaseModel):
    """Body of POST /v1/requests/{id}/reject and /v1/grants/{id}/revoke."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2000)

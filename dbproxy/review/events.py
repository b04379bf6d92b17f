"""What happens to transactions under review, as events for whoever listens.

The review queue (`dbproxy.hold.pending.PendingRegistry`) publishes a `ReviewEvent` when a
transaction is held, decided, committed with an inverse, verified again, undone or redone, and
when statements are journaled; the policy's events (a statement waits for approval, a request is
decided, a grant is given or revoked) are bridged in by the proxy server (`tx_id` is None for
them: `fields` names the request or grant). Listeners are plain callables, called synchronously and in order:
the metrics (`dbproxy.review.metrics`), the webhook notifier (`dbproxy.review.notify`), which only
queues, and each console page following the queue live (`subscribe`: a bounded queue per page, for
server-sent events). `publish` never blocks and never raises, so nothing here can slow down or
break an agent's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from dbproxy.config import log

#: held: a transaction waits for a reviewer; decided: it ended (committed, rolled back, expired,
#: failed); committed: undo mode committed it with its inverse; verified: `dbproxy verify` ran
#: again; undo / redo: a reviewer's undo or redo ran (or was refused for conflicts); statements:
#: statements were journaled; request: a paused statement waits for approval (fields: `request`,
#: the RequestRecord as JSON, and `waiting`, how many wait now); request_decided: it was approved,
#: rejected, expired or cancelled (also `state`, `by`, `reason`); grant / revoke: a grant was
#: given or revoked (`grant`, the GrantRecord as JSON).
Kind = Literal["held", "decided", "committed", "verified", "undo", "redo", "statements", "request",
               "request_decided", "grant", "revoke"]
#: What a console page following the queue (or the requests and grants) is told about.
LIVE_KINDS = frozenset({"held", "decided", "committed", "undo", "redo", "request", "request_decided", "grant",
                        "revoke"})
SUBSCRIBER_QUEUE = 100


@dataclass(frozen=True)
class ReviewEvent:
    kind: Kind
    tx_id: int | None = None
    agent: str = ""
    database: str = ""
    mode: str = ""
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: kind-specific facts: outcome, decided_by, reason, statements, verification, conflicts, ...
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.tx_id, "agent": self.agent, "database": self.database,
                "mode": self.mode, "at": self.at.isoformat(), **self.fields}


Listener = Callable[[ReviewEvent], None]


class EventHub:
    """Fan-out of review events to listeners and to live subscribers."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._subscribers: set[asyncio.Queue[ReviewEvent | None]] = set()
        self._closed = False

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, event: ReviewEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a listener's bug must not reach the agent's session
                log.event("events.listener_failed", kind=event.kind, level=logging.ERROR, exc_info=True)
        if event.kind not in LIVE_KINDS:
            return
        for q in list(self._subscribers):
            if q.full():
                # A page that does not read loses the oldest news; it reloads the whole queue anyway.
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[ReviewEvent | None]]:
        """A queue of live events until the block ends; None in it means the hub closed."""
        q: asyncio.Queue[ReviewEvent | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        if self._closed:
            q.put_nowait(None)
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """Tell every subscriber to stop (the admin server is shutting down)."""
        self._closed = True
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueEmpty):
                while q.full():
                    q.get_nowait()
            q.put_nowait(None)

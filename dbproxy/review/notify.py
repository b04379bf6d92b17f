"""Webhook notifications: tell people when something waits for them.

A `Notifier` listens to the review events (`dbproxy.review.events`) and POSTs JSON to
`notify.webhook_url` (or the agent's own URL from `notify.agents`) when

- a transaction is held for review (`held`; undo mode says why: irreversible, or its inverse was
  not verified),
- a sandbox verification run by a reviewer (`dbproxy verify`) did not verify (`verification_failed`),
- a reviewer's undo or redo was refused because rows changed since (`undo_conflict`),
- a statement waits for approval (`request`: a rule paused it before it ran; the agent's session
  waits until a reviewer approves or rejects it, or `approval_timeout` passes). Its `id` is the
  request's, and the link goes to the console's requests page.

The body is Slack-compatible (`text`, one line with a link to the console page) plus structured
fields (`event`, `id`, `agent`, `database`, `mode`, `at`, `url`, and the event's facts), so a Slack
incoming webhook and a program can both take it.

Delivery never blocks anything: `__call__` only queues (a bounded queue; overflow is dropped and
logged), and a background task sends, at most `CONCURRENCY` at a time. Connection errors,
timeouts, 429 and 5xx answers are retried after `retry_delay`, doubled each time up to 60 s, at
most `max_attempts` times; other answers are final. Every failure is logged with the webhook's
host only (webhook URLs carry credentials), and counted in the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from dbproxy.config import log
from dbproxy.config.settings import NotifySettings
from dbproxy.review.events import ReviewEvent
from dbproxy.review.metrics import ProxyMetrics

QUEUE = 1000
CONCURRENCY = 4
MAX_DELAY = 60.0


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


class Notifier:
    def __init__(self, settings: NotifySettings, console_url: str, *, metrics: ProxyMetrics | None = None) -> None:
        self.settings = settings
        self.console_url = console_url.rstrip("/")
        self.metrics = metrics
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(QUEUE)
        self._worker: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.webhook_url is not None or any(u.get_secret_value() for u in self.settings.agents.values())

    def url_for(self, agent: str) -> str | None:
        own = self.settings.agents.get(agent)
        if own is not None:
            return own.get_secret_value() or None
        return self.settings.webhook_url.get_secret_value() if self.settings.webhook_url else None

    # -- what to say --------------------------------------------------------------------------

    def message(self, e: ReviewEvent) -> dict[str, Any] | None:
        """The JSON body for an event, or None when it is not worth a notification."""
        f = e.fields
        link = f"{self.console_url}/tx/{e.tx_id}" if e.tx_id is not None else f"{self.console_url}/"
        if e.kind == "request":
            return self._request(e)
        if e.kind == "held":
            why = ""
            v = f.get("verification")
            if isinstance(v, dict) and v.get("status") not in (None, "verified"):
                why = f" because its inverse was not verified in the sandbox ({v.get('status')}: {v.get('reason')})"
            elif f.get("irreversible"):
                why = " because it cannot be undone exactly: " + "; ".join(map(str, f["irreversible"]))
            n = int(f.get("statements") or 0)
            text = (f"dbproxy: transaction #{e.tx_id} of agent {e.agent} is held for review{why} "
                    f"(database {e.database}, {n} statement{'s' if n != 1 else ''}). Review: {link}")
            event = "held"
        elif e.kind == "verified":
            v = f.get("verification") or {}
            if not isinstance(v, dict) or v.get("status") == "verified":
                return None
            text = (f"dbproxy: the inverse of transaction #{e.tx_id} (agent {e.agent}) was not verified in the "
                    f"sandbox: {v.get('status')}" + (f": {v.get('reason')}" if v.get("reason") else "")
                    + f". Review: {link}")
            event = "verification_failed"
        elif e.kind in ("undo", "redo"):
            if f.get("dry_run") or f.get("applied") or not f.get("conflicts"):
                return None
            n = int(f["conflicts"])
            first = f": {f['first_conflict']}" if f.get("first_conflict") else ""
            text = (f"dbproxy: {e.kind} of transaction #{e.tx_id} by {f.get('reviewer')} was refused: {n} row"
                    f"{'s' if n != 1 else ''} changed since{first}; nothing was applied. Review: {link}")
            event = "undo_conflict"
        else:
            return None
        facts = {k: v for k, v in f.items() if k not in ("llm", "undo")}
        return {"text": text, "event": event, "id": e.tx_id, "agent": e.agent, "database": e.database,
                "mode": e.mode, "at": e.at.isoformat(), "url": link, **facts}

    def _request(self, e: ReviewEvent) -> dict[str, Any] | None:
        """A paused statement waits: what it would do and which rule asks, never its SQL (values
        in it may be anything; the console shows it to signed-in reviewers)."""
        r = e.fields.get("request")
        if not isinstance(r, dict) or r.get("id") is None:
            return None
        n = int(r["id"])
        link = f"{self.console_url}/requests#request-{n}"
        actions = [str(a) for a in r.get("actions") or []]
        statements = len(r.get("statements") or [])
        text = (f"dbproxy: agent {e.agent} waits for approval as request #{n} (database {e.database}, session "
                f"{r.get('session')}): {', '.join(actions) or 'a statement'}. {r.get('rule')}. Review: {link}")
        return {"text": text, "event": "request", "id": n, "agent": e.agent, "database": e.database, "mode": e.mode,
                "at": e.at.isoformat(), "url": link, "session": r.get("session"), "actions": actions,
                "rule": r.get("rule"), "statements": statements}

    # -- queueing and sending -----------------------------------------------------------------

    def __call__(self, e: ReviewEvent) -> None:
        """EventHub listener: queue the notification, if any; never blocks."""
        if e.kind not in ("held", "verified", "undo", "redo", "request"):
            return
        url = self.url_for(e.agent)
        if url is None:
            return
        body = self.message(e)
        if body is None:
            return
        try:
            self._queue.put_nowait((url, body))
        except asyncio.QueueFull:
            log.event("notify.dropped", event=body["event"], id=e.tx_id, reason="queue full", level=logging.ERROR)
            self._count("dropped")

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="dbproxy-notify")

    async def stop(self, grace: float = 2.0) -> None:
        """Give queued and running deliveries `grace` seconds, then stop."""
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), grace)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for t in list(self._sending):
            t.cancel()
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=1)
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run(self) -> None:
        slots = asyncio.Semaphore(CONCURRENCY)
        while True:
            url, body = await self._queue.get()
            await slots.acquire()
            task = asyncio.get_running_loop().create_task(self._deliver(url, body))
            self._sending.add(task)

            def done(t: asyncio.Task[None]) -> None:
                self._sending.discard(t)
                slots.release()
                self._queue.task_done()

            task.add_done_callback(done)

    async def _deliver(self, url: str, body: dict[str, Any]) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        attempts = self.settings.max_attempts
        why = ""
        for attempt in range(1, attempts + 1):
            try:
                async with self._http.post(url, json=body, headers={"User-Agent": "dbproxy"}) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        log.event("notify.sent", event=body["event"], id=body["id"], host=_host(url), attempt=attempt)
                        self._count("sent")
                        return
                    why = f"HTTP {resp.status}"
                    if resp.status != 429 and resp.status < 500:
                        break  # the webhook refused this body: trying again will not help
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if attempt < attempts:
                self._count("retried")
                await asyncio.sleep(min(MAX_DELAY, self.settings.retry_delay * 2 ** (attempt - 1)))
        log.event("notify.failed", event=body["event"], id=body["id"], host=_host(url), attempts=attempt,
                  reason=why.replace(url, _host(url)), level=logging.WARNING)
        self._count("failed")

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.notifications.labels(result).inc()

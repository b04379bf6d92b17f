"""A model's plain-language summary of a transaction, for `dbproxy show` and the console.

Optional and on demand. With a model configured (`[llm]`, and `llm.summaries` left on), showing a
transaction asks the model (`inverse.llm.synthesize.summarize`) for a few sentences and a risk
word, from what the reviewer is shown anyway: the statements as `present.for_people` gives them
(secrets redacted) and the first page of the row diff. The text is GENERATED: never verified,
never used to decide anything, and labelled so wherever it appears (`Summary.label()`).

Why on demand, in memory, instead of at COMMIT into the journal: held transactions (the ones a
reviewer reads before deciding) have no undo document to keep it in and can grow while held; and
a model call per agent transaction would cost every agent, read or not. So a `show` starts the
call and waits for it at most `wait` seconds (the API's `summary_wait`); a call still running then
is reported "pending" and finishes in the background, and the next `show` finds it. Results are
kept per transaction and content (statements and diff counts: a held transaction that grows gets
a new summary), a bounded number of them; one model call runs at a time. A failed call is kept
for a minute, then asked again. Without a model nothing here runs: `show` is exactly as fast as
before, and its `summary` is absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from typing import Any

from dbproxy.review.models import GeneratedSummary, TransactionDetail
from dbproxy.review.present import for_people
from inverse.llm.client import LlmClient
from inverse.llm.synthesize import summarize
from inverse.lru import Lru

__all__ = ["FAILED_TTL", "Summaries"]

FAILED_TTL = 60.0  # seconds a failed summary is shown before the model is asked again
_OPS = {"insert": "I", "update": "U", "delete": "D"}


def _inputs(detail: TransactionDetail) -> tuple[list[str], list[dict[str, Any]], int]:
    """(statements, row images, how many rows changed in all) as the model is shown them."""
    statements = [s.sql for s in for_people(detail.statements) if not s.sql.startswith("-- dbproxy:")]
    images: list[dict[str, Any]] = []
    total = 0
    for td in detail.diff or []:
        total += td.inserted + td.updated + td.deleted
        for rc in td.rows:
            old = {**(rc.key or {}), **(rc.before or {})} if rc.before is not None else None
            new = {**(rc.key or {}), **(rc.after or {})} if rc.after is not None else None
            images.append({"table": td.table, "op": _OPS[rc.kind], "old": old, "new": new})
    return statements, images, total


def _key(detail: TransactionDetail, statements: list[str]) -> tuple[int, str]:
    counts = [(td.table, td.inserted, td.updated, td.deleted) for td in detail.diff or []]
    digest = hashlib.sha256(json.dumps([statements, counts], default=str).encode()).hexdigest()
    return detail.transaction.id, digest


class Summaries:
    """Summaries by transaction and content; `for_detail` is what `show` calls."""

    def __init__(self, client: LlmClient, *, size: int = 256) -> None:
        self.client = client
        self._done: Lru[tuple[int, str], tuple[float, GeneratedSummary]] = Lru(size)
        self._running: dict[tuple[int, str], asyncio.Task[GeneratedSummary]] = {}
        self._one_at_a_time = asyncio.Semaphore(1)

    @property
    def model(self) -> str:
        return self.client.config.model

    async def for_detail(self, detail: TransactionDetail, *, wait: float) -> GeneratedSummary:
        statements, images, total = _inputs(detail)
        if not statements:
            return GeneratedSummary(status="failed", model=self.model, note="no statements to summarize")
        key = _key(detail, statements)
        hit = self._done.get(key)
        if hit is not None and (hit[1].status == "ready" or time.monotonic() - hit[0] < FAILED_TTL):
            return hit[1]
        task = self._running.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._ask(key, statements, images, total))
            self._running[key] = task
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(task), wait)
        elif task.done():
            return task.result()
        return GeneratedSummary(status="pending", model=self.model,
                                note="the model is still writing it; show the transaction again in a moment")

    async def _ask(self, key: tuple[int, str], statements: list[str], images: list[dict[str, Any]],
                   total: int) -> GeneratedSummary:
        try:
            async with self._one_at_a_time:
                summary, call = await summarize(self.client, statements, images, total_images=total)
            if summary is None:
                result = GeneratedSummary(status="failed", model=self.model,
                                          note=f"the model gave no summary ({call.outcome}: {call.error or '-'})"[:500])
            else:
                result = GeneratedSummary(status="ready", model=summary.model or self.model, text=summary.summary,
                                          risk=summary.risk, label=summary.label())
        except Exception as e:  # a summary is never worth an error in `show`
            result = GeneratedSummary(status="failed", model=self.model, note=f"{type(e).__name__}: {e}"[:500])
        finally:
            self._running.pop(key, None)
        self._done.put(key, (time.monotonic(), result))
        return result

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        await self.client.close()

"""A scripted reviewer for hold-mode benchmarks: commits every pending transaction as soon as it can.

    python -m benchmarks.reviewer --admin 127.0.0.1:6433 --token TOKEN [--poll-ms 2] [--seconds N]

or, from another benchmark, in a background thread:

    reviewer = Reviewer("http://127.0.0.1:6433", token)
    reviewer.start()
    ...                                 # run the workload through the proxy in hold mode
    reviewer.drain(timeout=60)          # wait until nothing is pending any more
    stats = reviewer.stop()             # ReviewerStats: commits, 409s, errors, ...

How it works. One asyncio loop (in its own thread) with one keep-alive aiohttp session to the
proxy's review API. A poller asks `GET /v1/pending` every `poll_interval` seconds and starts one
committer task per pending id it has not seen yet. Each committer POSTs
`/v1/transactions/{id}/commit` until the answer is final:

- 200: committed (counted in `commits`);
- 409 while the agent is inside an agent transaction on that chain (or still running a statement):
  asked again at once (`retry_delay`, default 0). The proxy makes the request wait for the agent's
  current statement, so the retry is answered right after the agent's next statement, and the
  request that finds the agent between two transactions commits the chain: that is the earliest
  moment a chain can be committed at all. Counted in `conflicts`;
- 409 because the chain ended some other way (rolled back, expired, failed), 404: the id is gone
  (`gone`), nothing to do;
- anything else (5xx, a connection error, a timeout): counted in `errors`, retried after a
  back-off, until the id leaves the pending list.

Commits run concurrently, one task per id. They have to: a commit request can wait (up to the
proxy's 10 s lock wait) while its agent is blocked on a row lock that another held chain keeps, and
committing that other chain is exactly what unblocks it. A reviewer that committed one id after
the other would stall the whole run behind such a wait.

Nothing raises out of the loop: every failure is counted (and the last one kept in
`last_error`), so a misbehaving proxy shows in the numbers instead of crashing the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

REVIEWER_NAME = "bench-reviewer"
#: 409 messages that mean "not now, ask again" (the agent is mid-transaction or mid-statement);
#: any other 409 means the chain already ended.
_RETRY_409 = ("inside a transaction", "running a statement")


@dataclass
class ReviewerStats:
    commits: int = 0  # 200 answers: chains committed
    conflicts: int = 0  # 409 "agent inside a transaction, try later" answers
    gone: int = 0  # ids that ended otherwise (409 already decided/rolled back, 404)
    errors: int = 0  # other HTTP statuses, connection errors, timeouts, unexpected exceptions
    polls: int = 0  # GET /v1/pending requests answered
    commit_ms_total: float = 0.0  # time from first seeing an id to its commit, summed over commits
    last_error: str | None = None
    committed_ids: list[int] = field(default_factory=list, repr=False)

    @property
    def mean_wait_ms(self) -> float | None:
        """Mean time from the poller first seeing a pending id to its commit being answered."""
        return self.commit_ms_total / self.commits if self.commits else None

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("committed_ids")
        d.pop("commit_ms_total")
        d["mean_wait_ms"] = round(self.mean_wait_ms, 3) if self.mean_wait_ms is not None else None
        return d


class Reviewer:
    """Commits every pending transaction of one proxy; see the module docstring."""

    def __init__(self, base_url: str, token: str, *, poll_interval: float = 0.002, retry_delay: float = 0.0,
                 error_backoff: float = 0.05, request_timeout: float = 30.0, name: str = REVIEWER_NAME) -> None:
        self.base_url = base_url.rstrip("/")
        self.poll_interval = poll_interval
        self.retry_delay = retry_delay
        self.error_backoff = error_backoff
        self.request_timeout = request_timeout
        self._headers = {"Authorization": f"Bearer {token}", "X-Dbproxy-Reviewer": name}
        self.stats = ReviewerStats()
        self._mutex = threading.Lock()  # guards stats for readers in other threads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._first_seen: dict[int, float] = {}
        self._pending: set[int] = set()  # the last poll's answer
        self._idle_polls = 0  # polls in a row that saw nothing pending and no committer running

    # -- running in a background thread -----------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the reviewer is already running")
        self._thread = threading.Thread(target=self._thread_main, name="reviewer", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.run())
        except BaseException as e:  # never let the thread die silently
            self._count("errors", f"reviewer loop ended: {type(e).__name__}: {e}")

    def drain(self, timeout: float) -> bool:
        """Wait until a poll found nothing pending and no commit is in flight (after the
        workload ended); False when that did not happen within `timeout` seconds."""
        with self._mutex:
            start_idle = self._idle_polls = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._mutex:
                if self._idle_polls > start_idle + 1:  # two clean polls: nothing is left
                    return True
            if self._thread is None or not self._thread.is_alive():
                return False
            time.sleep(0.01)
        return False

    def pending_ids(self) -> list[int]:
        with self._mutex:
            return sorted(self._pending)

    def stop(self, timeout: float = 15.0) -> ReviewerStats:
        """Stop the loop (commits in flight are abandoned) and return the counts."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may just have ended
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
        with self._mutex:
            return ReviewerStats(**{**asdict(self.stats), "committed_ids": list(self.stats.committed_ids)})

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, seconds: float | None = None) -> ReviewerStats:
        """Poll and commit until `stop()` (or for `seconds`)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)  # one connection per concurrent commit
        async with aiohttp.ClientSession(self.base_url, headers=self._headers, timeout=timeout,
                                         connector=connector) as http:
            poller = asyncio.get_running_loop().create_task(self._poll_forever(http))
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), seconds)
            finally:
                self._stop.set()
                tasks = [poller, *self._tasks.values()]
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=5)
        return self.stats

    async def _poll_forever(self, http: aiohttp.ClientSession) -> None:
        while True:
            delay = await self._poll(http)
            await asyncio.sleep(delay)

    async def _poll(self, http: aiohttp.ClientSession) -> float:
        """One GET /v1/pending; starts committers for new ids. Returns how long to wait next."""
        try:
            async with http.get("/v1/pending") as resp:
                if resp.status != 200:
                    self._count("errors", f"GET /v1/pending answered {resp.status}: {await _message(resp)}")
                    return self.error_backoff
                records = await resp.json()
            ids = {int(r["id"]) for r in records}
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._count("errors", f"GET /v1/pending failed: {type(e).__name__}: {e}")
            return self.error_backoff
        now = time.monotonic()
        with self._mutex:
            self.stats.polls += 1
            self._pending = ids
            if not ids and not self._tasks:
                self._idle_polls += 1
        for tx_id in sorted(ids):
            if tx_id not in self._tasks:
                self._first_seen.setdefault(tx_id, now)
                task = asyncio.get_running_loop().create_task(self._commit(http, tx_id))
                self._tasks[tx_id] = task
                task.add_done_callback(lambda t, i=tx_id: self._tasks.pop(i, None))
        return self.poll_interval

    async def _commit(self, http: aiohttp.ClientSession, tx_id: int) -> None:
        """Commit one id, retrying while the answer says "not now"."""
        path = f"/v1/transactions/{tx_id}/commit"
        while not self._stop_requested():
            try:
                async with http.post(path) as resp:
                    status = resp.status
                    message = await _message(resp) if status != 200 else ""
                    if status == 200:
                        await resp.read()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._count("errors", f"POST {path} failed: {type(e).__name__}: {e}")
                await asyncio.sleep(self.error_backoff)
                continue
            if status == 200:
                waited = (time.monotonic() - self._first_seen.pop(tx_id, time.monotonic())) * 1000
                with self._mutex:
                    self.stats.commits += 1
                    self.stats.commit_ms_total += waited
                    self.stats.committed_ids.append(tx_id)
                return
            if status == 409 and any(m in message for m in _RETRY_409):
                self._count("conflicts")
                if self.retry_delay:
                    await asyncio.sleep(self.retry_delay)
                else:
                    await asyncio.sleep(0)
                continue
            if status in (404, 409):
                self._first_seen.pop(tx_id, None)
                self._count("gone", f"#{tx_id}: {status} {message}")
                return
            self._count("errors", f"POST {path} answered {status}: {message}")
            await asyncio.sleep(self.error_backoff)
            with self._mutex:
                still_pending = tx_id in self._pending
            if not still_pending:
                return

    def _stop_requested(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _count(self, what: str, error: str | None = None) -> None:
        with self._mutex:
            setattr(self.stats, what, getattr(self.stats, what) + 1)
            if error is not None and what == "errors":
                self.stats.last_error = error[:500]

    # -- afterwards -------------------------------------------------------------------------

    def journal_agent_transactions(self, ids: list[int], timeout: float = 60.0) -> int | None:
        """Sum of `agent_transactions` over these (committed) ids, read back from the journal:
        how many agent transactions the commits carried. None when it cannot be read."""
        if not ids:
            return 0
        try:
            return asyncio.run(asyncio.wait_for(self._journal_sum(set(ids)), timeout))
        except Exception as e:
            self._count("errors", f"reading the journal failed: {type(e).__name__}: {e}")
            return None

    async def _journal_sum(self, ids: set[int]) -> int | None:
        lowest, total, found = min(ids), 0, 0
        before: int | None = max(ids) + 1
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        async with aiohttp.ClientSession(self.base_url, headers=self._headers, timeout=timeout) as http:
            while before is not None and before > lowest:
                params = {"outcome": "committed", "limit": "1000", "before": str(before)}
                async with http.get("/v1/transactions", params=params) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"GET /v1/transactions answered {resp.status}: {await _message(resp)}")
                    page = await resp.json()
                if not page:
                    break
                for r in page:
                    if int(r["id"]) in ids:
                        total += int(r.get("agent_transactions") or 0)
                        found += 1
                before = min(int(r["id"]) for r in page)
        return total if found == len(ids) else None


async def _message(resp: aiohttp.ClientResponse) -> str:
    try:
        body = await resp.json(content_type=None)
        return str(body.get("error", body)) if isinstance(body, dict) else str(body)
    except Exception:
        with contextlib.suppress(Exception):
            return (await resp.text())[:300]
        return ""


# -- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reviewer",
                                description="Commit every pending dbproxy transaction as soon as possible.")
    p.add_argument("--admin", default="127.0.0.1:6433", help="the proxy's review API HOST:PORT")
    p.add_argument("--token", help="admin token (default: $DBPROXY_ADMIN_TOKEN)")
    p.add_argument("--poll-ms", type=float, default=2.0, help="GET /v1/pending every N ms (default 2)")
    p.add_argument("--retry-ms", type=float, default=0.0, help="pause after a 409 before asking again (default 0)")
    p.add_argument("--seconds", type=float, help="stop after N seconds (default: until Ctrl-C or SIGTERM)")
    args = p.parse_args(argv)
    token = args.token or os.environ.get("DBPROXY_ADMIN_TOKEN")
    if not token:
        p.error("give --token or set DBPROXY_ADMIN_TOKEN")
    reviewer = Reviewer(f"http://{args.admin}", token, poll_interval=args.poll_ms / 1000,
                        retry_delay=args.retry_ms / 1000)

    async def run() -> ReviewerStats:
        loop = asyncio.get_running_loop()
        task = loop.create_task(reviewer.run(args.seconds))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: reviewer._stop.set() if reviewer._stop else task.cancel())
        return await task

    stats = asyncio.run(run())
    print(json.dumps(stats.as_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

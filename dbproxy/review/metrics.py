"""Prometheus metrics of one proxy, served as `GET /metrics` on the admin address.

Each proxy has a `CollectorRegistry` of its own (never prometheus-client's global one), so several
proxies in one process do not share or clash. Two sources feed it:

- review events (`dbproxy.review.events`), counted as they happen: statements journaled, holds,
  decisions, sandbox verdicts and their latency, model calls, undo and redo runs and conflicts,
  webhook deliveries, approval requests and how they ended, grants given and revoked;
- the live state, read at scrape time through `LiveState` (implemented by the proxy server):
  agent sessions, pending transactions and their ages, requests waiting for approval and their
  ages, the journal's backlog.

Labels are agent names, modes and small fixed vocabularies (outcomes, verdicts); never SQL,
values or reviewer input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dbproxy.review.events import ReviewEvent

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_VERIFY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class LiveState(Protocol):
    """What the proxy knows right now, read at each scrape."""

    def sessions_by_agent(self) -> dict[tuple[str, str], int]:
        """Connected agent sessions by (agent, mode)."""
        ...

    def pending_ages(self) -> list[tuple[str, str, float]]:
        """(agent, mode, seconds held) of every pending transaction."""
        ...

    def journal_backlog(self) -> tuple[int, float]:
        """Statements not yet durable in the journal, and the oldest one's age in seconds."""
        ...

    def requests_waiting(self) -> list[tuple[str, float]]:
        """(agent, seconds waited) of every paused statement waiting for approval."""
        ...


class _Live(Collector):
    def __init__(self, state: LiveState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sessions = GaugeMetricFamily("dbproxy_agent_sessions", "Connected agent sessions", labels=["agent", "mode"])
        for (agent, mode), n in sorted(self.state.sessions_by_agent().items()):
            sessions.add_metric([agent, mode], n)
        yield sessions
        count = GaugeMetricFamily("dbproxy_pending_transactions", "Transactions waiting for a reviewer",
                                  labels=["agent", "mode"])
        oldest = GaugeMetricFamily("dbproxy_pending_oldest_seconds",
                                   "How long the oldest pending transaction has waited", labels=["agent", "mode"])
        by: dict[tuple[str, str], list[float]] = {}
        for agent, mode, age in self.state.pending_ages():
            by.setdefault((agent, mode), []).append(age)
        for (agent, mode), ages in sorted(by.items()):
            count.add_metric([agent, mode], len(ages))
            oldest.add_metric([agent, mode], max(ages))
        yield count
        yield oldest
        waiting = GaugeMetricFamily("dbproxy_requests_waiting", "Paused statements waiting for a reviewer's approval",
                                    labels=["agent"])
        waited = GaugeMetricFamily("dbproxy_requests_oldest_seconds",
                                   "How long the oldest request waiting for approval has waited", labels=["agent"])
        asked: dict[str, list[float]] = {}
        for agent, age in self.state.requests_waiting():
            asked.setdefault(agent, []).append(age)
        for agent, ages in sorted(asked.items()):
            waiting.add_metric([agent], len(ages))
            waited.add_metric([agent], max(ages))
        yield waiting
        yield waited
        backlog, lag = self.state.journal_backlog()
        yield GaugeMetricFamily("dbproxy_journal_backlog_statements",
                                "Statements recorded but not yet written to the journal", value=backlog)
        yield GaugeMetricFamily("dbproxy_journal_lag_seconds",
                                "Age of the oldest statement not yet written to the journal", value=lag)


class ProxyMetrics:
    """The proxy's registry; `observe` is an `EventHub` listener."""

    def __init__(self, state: LiveState | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.statements = Counter("dbproxy_statements", "Statements of agent transactions the proxy journaled",
                                  ["agent", "mode"], registry=r)
        self.held = Counter("dbproxy_held_transactions", "Transactions held for a reviewer", ["agent", "mode"],
                            registry=r)
        self.decisions = Counter("dbproxy_decisions", "Held transactions ended, by outcome",
                                 ["outcome"], registry=r)
        self.verdicts = Counter("dbproxy_verifications", "Sandbox verdicts on inverses (cached ones included)",
                                ["status", "cached"], registry=r)
        self.verify_seconds = Histogram("dbproxy_verification_seconds", "Sandbox verification time (not cached)",
                                        buckets=_VERIFY_BUCKETS, registry=r)
        self.model_calls = Counter("dbproxy_model_calls", "Inverses proposed by a model, by the sandbox's answer",
                                   ["status"], registry=r)
        self.undo_runs = Counter("dbproxy_undo_runs", "Reviewer undo and redo runs",
                                 ["direction", "result"], registry=r)
        self.undo_conflicts = Counter("dbproxy_undo_conflicts", "Rows an undo or redo found changed since",
                                      ["direction"], registry=r)
        self.notifications = Counter("dbproxy_notifications", "Webhook notifications, by result",
                                     ["result"], registry=r)
        self.requests = Counter("dbproxy_approval_requests", "Statements paused for a reviewer's approval",
                                ["agent"], registry=r)
        self.request_decisions = Counter("dbproxy_request_decisions", "Approval requests ended, by how (approved, "
                                         "rejected, expired, cancelled) and what an approval granted",
                                         ["state", "scope"], registry=r)
        self.grants = Counter("dbproxy_grants", "Grants given (approvals included), by scope", ["scope"], registry=r)
        self.revocations = Counter("dbproxy_grants_revoked", "Grants revoked before their end", registry=r)
        if state is not None:
            r.register(_Live(state))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe(self, e: ReviewEvent) -> None:
        f = e.fields
        if e.kind == "statements":
            self.statements.labels(e.agent, e.mode).inc(int(f.get("statements") or 0))
        elif e.kind == "held":
            self.held.labels(e.agent, e.mode).inc()
            self._verdict(f.get("verification"))
            self._model(f.get("llm"))
        elif e.kind == "decided":
            self.decisions.labels(str(f.get("outcome"))).inc()
        elif e.kind == "committed":
            doc = _doc(f.get("undo"))
            self._verdict(doc.get("verification"))
            self._model(doc.get("llm"))
        elif e.kind == "verified":
            self._verdict(f.get("verification"))
        elif e.kind == "request":
            self.requests.labels(e.agent).inc()
        elif e.kind == "request_decided":
            scope = _doc(f.get("request")).get("scope") if f.get("state") == "approved" else None
            self.request_decisions.labels(str(f.get("state")), str(scope or "none")).inc()
        elif e.kind == "grant":
            self.grants.labels(str(_doc(f.get("grant")).get("scope"))).inc()
        elif e.kind == "revoke":
            self.revocations.inc()
        elif e.kind in ("undo", "redo"):
            result = "dry run" if f.get("dry_run") else "applied" if f.get("applied") else \
                "conflict" if f.get("conflicts") else "not applied"
            self.undo_runs.labels(e.kind, result).inc()
            if f.get("conflicts"):
                self.undo_conflicts.labels(e.kind).inc(int(f["conflicts"]))

    def _verdict(self, v: Any) -> None:
        if not isinstance(v, dict) or not v.get("status"):
            return
        cached = bool(v.get("cached"))
        self.verdicts.labels(str(v["status"]), "true" if cached else "false").inc()
        total = (v.get("timings_ms") or {}).get("total")
        if not cached and isinstance(total, int | float):
            self.verify_seconds.observe(total / 1000)

    def _model(self, record: Any) -> None:
        if not isinstance(record, dict):
            return
        for attempt in record.get("attempts") or []:
            if isinstance(attempt, dict):
                self.model_calls.labels(str(attempt.get("status") or "unknown")).inc()


def _doc(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        doc = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}

"""Who makes the inverse: the strategies the inverse-SQL benchmark compares.

A strategy gets a `CaseContext` (the case, its schema's DDL, the forward statements, the captured
changes and table facts, read inside the still-open forward transaction, and a `verify` function
that proves a candidate in the sandbox) and returns an `Inverse`: a rule-made `Plan`, plain SQL
statements, or nothing with the reason. The runner (`runner.py`) times the call (synthesis time =
wall time minus the time spent in `ctx.verify`), verifies what came back unless the strategy
already did, and checks it against the ground truth on a full copy of the database.

- `rules`: row images + rules (`inverse.undo_plan.build`), exactly what undo mode commits with.
- `llm`: a GoEx-style baseline. The model sees the schema and the statements only, no row images,
  and gets one attempt. Runs only with an endpoint (`LlmEndpoint.configured`); see `llm_inverse`.
- `hybrid`: our full pipeline. The rules first; the LLM for the gaps they leave (an irreversible
  plan, or a plan the sandbox did not verify); and only sandbox-verified inverses are offered.
  Without an endpoint it runs as rules + the verification gate, and says so in its notes.

The LLM parts use the `inverse.llm` library (`llm_inverse`) and the proxy's own pipeline
(`sandbox.hybrid.complete`, in `hybrid_llm_inverse`), with one client per run.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from inverse.classify import tables_referenced
from inverse.images import Change, TableInfo
from inverse.llm.client import LlmClient, Usage
from inverse.llm.config import LlmConfig
from inverse.llm.prompt import Request
from inverse.llm.synthesize import Verify, synthesize
from inverse.undo_plan import Plan, build
from sandbox.hybrid import complete
from sandbox.verdict import Verdict
from sandbox.verify import Candidate, Transaction, Verifier

NO_ENDPOINT = "not run (no endpoint configured)"


@dataclass(frozen=True)
class LlmEndpoint:
    """Where an OpenAI-compatible model is, as given on the command line or in the environment.
    The key itself is only ever read from the environment variable `api_key_env`."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"

    max_attempts: int = 3
    timeout: float = 30.0  # seconds per HTTP request (a local model on a small machine needs minutes)
    temperature: float | None = None  # None: the endpoint's default
    _clients: list[LlmClient] = field(default_factory=list, compare=False, repr=False)

    @property
    def configured(self) -> bool:
        return bool(os.environ.get(self.api_key_env))

    def client(self) -> LlmClient:
        """One client per run (made on the run's event loop, on first use; `close` ends it)."""
        if not self._clients:
            config = LlmConfig.from_env(base_url=self.base_url, model=self.model,
                                        api_key=os.environ.get(self.api_key_env), max_attempts=self.max_attempts,
                                        timeout=self.timeout, temperature=self.temperature)
            self._clients.append(LlmClient(config))
        return self._clients[0]

    def usage(self) -> Usage:
        """Model calls and tokens so far in this run (zero before the first call)."""
        return self._clients[0].usage.copy() if self._clients else Usage()

    async def close(self) -> None:
        while self._clients:
            await self._clients.pop().close()

    def unavailable(self) -> str | None:
        """Why LLM synthesis cannot run here (None: it can)."""
        return None if self.configured else NO_ENDPOINT

    def describe(self) -> str:
        if not self.configured:
            return "none"
        temperature = "" if self.temperature is None else f", temperature {self.temperature:g}"
        return f"{self.base_url or 'default base URL'}, model {self.model or 'default'}{temperature}"


@dataclass(frozen=True)
class SandboxHandle:
    verifier: Verifier
    sampler: asyncpg.Connection  # outside the forward transaction: sees the "before"
    url: str
    transaction: Transaction


@dataclass
class CaseContext:
    """One case, prepared: the forward transaction has run and is still open on `con`."""

    case: Any  # benchmarks.inverse_corpus.Case (or a test's stand-in with the same fields)
    schema: Any  # benchmarks.inverse_corpus.Schema
    statements: tuple[str, ...]
    changes: list[Change]
    tables: dict[int, TableInfo]
    con: asyncpg.Connection  # the agent's connection, inside the open forward transaction: read only
    verifier: Callable[[Candidate], Awaitable[Verdict]]
    sandbox: SandboxHandle | None = None  # what `sandbox.hybrid.complete` needs (the hybrid's LLM part)
    verify_ms: float = 0.0  # time spent in `verify` so far (not synthesis time)
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def ddl(self) -> str:
        """The schema as the model is told it: the schema's DDL, then the case's setup statements."""
        if not self.case.setup:
            return self.schema.ddl
        return self.schema.ddl + "\n-- then:\n" + ";\n".join(self.case.setup) + ";"

    async def verify(self, candidate: Candidate) -> Verdict:
        verdict = await self.verifier(candidate)
        self.verify_ms += verdict.timings_ms.get("total", 0.0)
        self.verdicts.append(verdict)
        return verdict


@dataclass
class Inverse:
    """What a strategy offers: a plan, or SQL statements, or neither (then `reason` says why)."""

    plan: Plan | None = None
    statements: tuple[str, ...] = ()
    reason: str = ""  # why there is no inverse (or a note about the one there is)
    source: str = ""  # "rules" or "llm"
    verdict: Verdict | None = None  # the sandbox's verdict, when the strategy verified it itself
    held: Inverse | None = None  # an inverse the verification gate kept back (checked against the truth too)

    @property
    def withheld(self) -> bool:
        return self.held is not None and self.held.produced

    @property
    def produced(self) -> bool:
        return self.plan is not None or bool(self.statements)

    def candidate(self) -> Candidate:
        return Candidate(plan=self.plan, statements=self.statements, source=self.source or "rules")

    def readable(self) -> list[str]:
        """The inverse as SQL text, for the report."""
        if self.plan is not None:
            return [s.readable() for s in self.plan.steps]
        return list(self.statements)


class Strategy(Protocol):
    name: str

    def unavailable(self) -> str | None:
        """Why this strategy does not run at all (reported as "not run"); None: it runs."""

    def notes(self) -> list[str]:
        """Facts about how it ran, for the report (e.g. the hybrid without its LLM part)."""

    async def inverse(self, ctx: CaseContext) -> Inverse: ...


def rules_inverse(ctx: CaseContext) -> Inverse:
    plan = build(ctx.changes, ctx.tables)
    if plan.irreversible:
        return Inverse(reason="; ".join(plan.irreversible), source="rules")
    return Inverse(plan=plan, source="rules")


def _verify_callback(ctx: CaseContext, proposals: list[tuple[list[str], Verdict]]) -> Verify:
    async def verify(statements: list[str]) -> tuple[str, str]:
        v = await ctx.verify(Candidate(statements=tuple(statements), source="llm"))
        proposals.append((statements, v))
        return v.status, "\n".join([v.reason, *v.diff[:20]]).strip() or v.status
    return verify


async def llm_inverse(ctx: CaseContext, endpoint: LlmEndpoint) -> Inverse:
    """GoEx-style: the model gets the schema (`ctx.ddl`) and the statements only, no row images,
    no facts, and one attempt. Its answer is offered whether or not the sandbox verified it (GoEx
    has no such gate); the runner checks it against the ground truth either way."""
    client = endpoint.client()
    names = {n for s in ctx.statements for n in tables_referenced(s)} | {t.name for t in ctx.tables.values()}
    allowed = names | {t.table for t in ctx.tables.values()} | {f"{t.schema}.{t.table}" for t in ctx.tables.values()}
    req = Request(statements=list(ctx.statements), ddl=ctx.ddl, images=[], facts=[], objects=sorted(allowed))
    proposals: list[tuple[list[str], Verdict]] = []
    outcome = await synthesize(client, req, _verify_callback(ctx, proposals), allowed=allowed, max_attempts=1)
    if proposals:
        statements, verdict = proposals[-1]
        return Inverse(statements=tuple(statements), source="llm", verdict=verdict)
    return Inverse(reason=f"LLM: {outcome.reason or 'no answer'}", source="llm")


async def hybrid_llm_inverse(ctx: CaseContext, endpoint: LlmEndpoint, gap: str) -> Inverse:
    """The hybrid's LLM part, exactly as undo mode runs it (`sandbox.hybrid.complete`): the DDL the
    rules could not invert goes to the model with the schema from before, the row images and the
    rules' reasons; each failed verification is fed back; only a verified plan comes back. Its
    sandbox rounds count as synthesis time (they are part of how the inverse is made)."""
    plan = build(ctx.changes, ctx.tables)
    if ctx.sandbox is None:
        return Inverse(reason=f"{gap}; LLM: no sandbox to verify a proposal", source="llm")
    done = await complete(ctx.sandbox.verifier, ctx.sandbox.sampler, ctx.sandbox.url, ctx.sandbox.transaction,
                          plan, endpoint.client(), max_attempts=endpoint.max_attempts)
    if done.trusted:
        return Inverse(plan=done.plan, source="llm", verdict=done.verdict)
    return Inverse(reason=f"{gap}; LLM: {done.reason}", source="llm")


@dataclass
class RulesStrategy:
    name: str = "rules"

    def unavailable(self) -> str | None:
        return None

    def notes(self) -> list[str]:
        return []

    async def inverse(self, ctx: CaseContext) -> Inverse:
        return rules_inverse(ctx)


@dataclass
class LlmStrategy:
    endpoint: LlmEndpoint = field(default_factory=LlmEndpoint)
    name: str = "llm"

    def unavailable(self) -> str | None:
        return self.endpoint.unavailable()

    def notes(self) -> list[str]:
        return [f"endpoint: {self.endpoint.describe()}; schema and statements only, one attempt"]

    async def inverse(self, ctx: CaseContext) -> Inverse:
        return await llm_inverse(ctx, self.endpoint)


@dataclass
class HybridStrategy:
    endpoint: LlmEndpoint = field(default_factory=LlmEndpoint)
    name: str = "hybrid"

    def unavailable(self) -> str | None:
        return None

    @property
    def with_llm(self) -> bool:
        return self.endpoint.unavailable() is None

    def notes(self) -> list[str]:
        if self.with_llm:
            return [f"rules, then the LLM ({self.endpoint.describe()}) for the gaps; only verified inverses offered"]
        why = (self.endpoint.unavailable() or "").removeprefix("not run ").strip("()")
        return [f"ran WITHOUT its LLM part ({why}): rules + the sandbox verification gate only"]

    async def inverse(self, ctx: CaseContext) -> Inverse:
        rules = rules_inverse(ctx)
        held: Inverse | None = None
        if rules.produced:
            verdict = await ctx.verify(rules.candidate())
            rules.verdict = verdict
            if verdict.verified:
                return rules
            held = rules
            gap = f"the rules' inverse was not verified ({verdict.summary()})"
        else:
            gap = f"rules: {rules.reason}"
        if not self.with_llm:
            return Inverse(reason=gap, source="rules", held=held)
        llm = await hybrid_llm_inverse(ctx, self.endpoint, gap)
        if not llm.produced:
            return Inverse(reason=llm.reason or gap, source="llm", held=held)
        verdict = await ctx.verify(llm.candidate())
        llm.verdict = verdict
        if verdict.verified:
            return llm
        return Inverse(reason=f"{gap}; the LLM's inverse was not verified ({verdict.summary()})", source="llm",
                       held=llm)


STRATEGIES = ("rules", "llm", "hybrid")


def make(name: str, endpoint: LlmEndpoint) -> Strategy:
    if name == "rules":
        return RulesStrategy()
    if name == "llm":
        return LlmStrategy(endpoint)
    if name == "hybrid":
        return HybridStrategy(endpoint)
    raise ValueError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")

"""Rules first, a model for the gaps, the sandbox as the judge.

The rules (`inverse.undo_plan`) invert row changes and common DDL exactly; the DDL commands they
cannot invert are the plan's `gaps`. `complete` asks a model (`inverse.llm`) for the SQL that
undoes those commands, puts its answer in the gaps' places of the plan, and proves the whole plan
in the sandbox (`sandbox.verify`). A failed verification goes back to the model with its error
or diff, for up to `max_attempts` rounds. Only a verified plan is returned as trusted; the
attempts are returned either way, for the journal and the reviewer.

What the model is shown: the gap commands' text, the DDL of the objects they touch as it was
before the transaction (read from the sandbox's schema copy, so never a credential), bounded row
images of the transaction's changes to those objects (masked as the sample would be), the
rules' reason for each command, and an instruction with one example to do the opposite of each
(`OPPOSITE`). Nothing from other tables. An answer that runs a gap command again is rejected
before the sandbox with that reason (`repeats_forward`): the most common mistake of a small model.

The proxy runs this at an undo-mode COMMIT; the inverse-SQL benchmark runs it as its `hybrid`
strategy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import asyncpg

from inverse.images import TableInfo
from inverse.llm.cache import AnswerCache
from inverse.llm.client import LlmClient
from inverse.llm.prompt import MAX_IMAGES, Request
from inverse.llm.synthesize import Outcome, repeats_forward, synthesize
from inverse.undo_plan import Gap, Plan, fill
from sandbox.sampler import is_masked, mask_row
from sandbox.schema_copy import ddl_for
from sandbox.verdict import Verdict
from sandbox.verify import Candidate, Transaction, Verifier


@dataclass
class Completed:
    plan: Plan  # the filled plan when trusted, else the rules' plan as it was
    verdict: Verdict | None  # the filled plan's verdict (verified when trusted)
    outcome: Outcome | None  # the model's attempts; None when it was not asked
    reason: str  # why no trusted inverse ("" when trusted)

    @property
    def trusted(self) -> bool:
        return not self.reason


def askable(plan: Plan) -> str:
    """Why a model cannot help this plan ("" when it can): only DDL gaps are its to fill; a row
    change without an exact inverse (an identity ALWAYS column set to DEFAULT, a dropped table's
    rows) needs values no one kept."""
    if not plan.gaps:
        return "the rules left nothing for a model to propose"
    other = list(plan.irreversible)
    for g in plan.gaps:
        other.remove(g.reason)
    return "; ".join(other)


def _names(gaps: list[Gap]) -> tuple[set[str], set[str]]:
    """(bare names to find DDL for, qualified and bare names the inverse may use)."""
    bare: set[str] = set()
    allowed: set[str] = set()
    for g in gaps:
        for kind, identity in g.objects:
            identity = identity.split(" on ", 1)[-1]  # "t on s.tab" (trigger, constraint, rule): the table
            identity = identity.split("(", 1)[0]  # functions: "s.f(integer)"
            parts = [p.strip('"') for p in identity.split(".")]
            if kind.endswith("column") and len(parts) >= 2:
                parts = parts[:-1]  # "table column" s.t.c: the table
            allowed.add(".".join(parts))
            allowed.add(parts[-1])
            bare.add(parts[-1])
    return bare, allowed


def _images(tx: Transaction, bare: set[str], mask: frozenset[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for c in tx.changes:
        info: TableInfo | None = tx.tables.get(c.rel) if c.rel is not None else None
        if c.op == "X" or info is None or info.table not in bare:
            continue
        masked = is_masked(info, mask)
        keep = set(info.key)

        def image(x: str | None, masked: bool = masked, keep: set[str] = keep) -> Any:
            if x is None:
                return None
            return json.loads(mask_row(x, keep) if masked else x)

        out.append({"table": info.name, "op": c.op, "old": image(c.old), "new": image(c.new)})
        if len(out) > MAX_IMAGES:  # the prompt says how many it left out; no need to build more
            break
    return out


#: What a small model gets wrong most (measured with Qwen2.5-Coder-1.5B on the inverse-SQL corpus):
#: it runs the forward statement again. Said once, with an example of the opposite.
OPPOSITE = ("Your inverse does the opposite of each statement above, using the definitions from before "
            "the transaction: for example, if the definitions show column c of table t without a default and "
            "the statement was ALTER TABLE t ALTER COLUMN c SET DEFAULT 5, the inverse is ALTER TABLE t ALTER "
            "COLUMN c DROP DEFAULT. Never repeat a statement above.")


def _facts(gaps: list[Gap]) -> list[str]:
    """The rules' reason next to the statement it is about (not in a list of their own), then how
    the inverse is placed, then what to do."""
    facts = [f"statement {n}: the rules could not invert it: {g.reason}" for n, g in enumerate(gaps, 1)]
    facts.append("the inverse runs inside the undo, after the transaction's later row changes were undone and "
                 "before its earlier ones are; rows are restored from captured images, not by you")
    facts.append(OPPOSITE)
    return facts


def _detail(v: Verdict) -> str:
    parts = [v.reason] if v.reason else []
    parts += v.diff[:20]
    return "\n".join(parts) or v.status


async def complete(verifier: Verifier, upstream: asyncpg.Connection, upstream_url: str, tx: Transaction,
                   plan: Plan, client: LlmClient, *, max_attempts: int, mask: frozenset[str] = frozenset(),
                   cache: AnswerCache | None = None, cache_key: tuple[str, ...] | None = None) -> Completed:
    """Fill `plan`'s gaps with a model's proposal that the sandbox verified, or say why not."""
    why = askable(plan)
    if why:
        return Completed(plan, None, None, why)
    gaps = sorted(plan.gaps, key=lambda g: g.seq)
    bare, allowed = _names(gaps)
    try:
        ddl = ddl_for(await verifier.schema_ddl(upstream, upstream_url), bare)
    except Exception as e:  # no schema copy: the model would guess blind, and nothing could verify it
        return Completed(plan, None, None, f"the schema from before the transaction could not be read: {e}")
    req = Request(statements=[g.query for g in gaps], ddl=ddl, images=_images(tx, bare, mask), facts=_facts(gaps),
                  objects=sorted(allowed))
    # Several gaps take one answer, placed where the newest gap was (undo runs newest first).
    newest = gaps[-1].seq

    def candidate(statements: list[str]) -> Plan:
        sql = ";\n".join(s.rstrip().rstrip(";") for s in statements)
        return fill(plan, {g.seq: (sql if g.seq == newest else None) for g in gaps})

    verdicts: list[Verdict] = []

    async def verify(statements: list[str]) -> tuple[str, str]:
        v = await verifier.verify(upstream, upstream_url, tx, Candidate(plan=candidate(statements), source="llm"))
        verdicts.append(v)
        return v.status, _detail(v)

    outcome = await synthesize(client, req, verify, allowed=allowed, max_attempts=max_attempts, cache=cache,
                               cache_key=cache_key, precheck=repeats_forward(req.statements))
    if not outcome.trusted or outcome.statements is None:
        return Completed(plan, verdicts[-1] if verdicts else None, outcome, outcome.reason or "no trusted inverse")
    if outcome.cached:
        # A cached answer was verified for another transaction of this shape: prove it on this one.
        status, detail = await verify(outcome.statements)
        if status != "verified":
            return Completed(plan, verdicts[-1], outcome, f"the cached model answer did not verify here: {detail}")
    verdict = replace(verdicts[-1], source="llm")
    return Completed(candidate(outcome.statements), verdict, outcome, "")

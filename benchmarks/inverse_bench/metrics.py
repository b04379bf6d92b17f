"""The inverse-SQL benchmark's numbers, per strategy and category, from the per-case results.

For a group of cases (one category, or all), counting only cases that ran (`status == "ran"`;
errors are corpus problems, listed apart):

- coverage: the strategy offered an inverse;
- correct: an offered inverse restored the whole database (ground truth, `truth.py`);
- verified: the sandbox verified the offered inverse;
- **false verified**: verified but not correct. Must be zero: it is the one outcome that would
  let a wrong inverse through the proxy's gate;
- irreversible flagged: expected irreversible, and no inverse was offered;
- false irreversible: expected reversible, and no inverse was offered;
- exact (reversible): expected reversible and a correct inverse offered (the headline rate);
- withheld: an inverse existed but the verification gate kept it back (hybrid); of those,
  withheld correct: the ground truth says it would have been right (what the gate costs);
- synthesis / verification time: p50 and p95 over the cases that have one;
- model calls and tokens (prompt + completion) over the group, and the mean wall time per case
  (all of it: copy, forward, synthesis, verification, apply, compare).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .runner import CaseResult

OVERALL = "overall"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[k - 1]


@dataclass
class Metrics:
    cases: int = 0
    errors: int = 0
    produced: int = 0
    correct: int = 0
    incorrect: int = 0
    verified: int = 0
    failed: int = 0  # the sandbox said the inverse failed
    could_not_verify: int = 0
    false_verified: int = 0
    expected_reversible: int = 0
    exact: int = 0  # expected reversible, correct inverse offered
    false_irreversible: int = 0
    expected_irreversible: int = 0
    flagged: int = 0  # expected irreversible, no inverse offered
    unexpected_inverse: int = 0  # expected irreversible, an inverse offered anyway
    withheld: int = 0
    withheld_correct: int = 0  # withheld, but the ground truth says it was right (the gate's cost)
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    synth_ms: list[float] = field(default_factory=list)
    verify_ms: list[float] = field(default_factory=list)
    case_ms: list[float] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, r: CaseResult) -> None:
        if r.status != "ran":
            self.errors += 1
            return
        self.cases += 1
        self.model_calls += r.model_calls
        self.prompt_tokens += r.prompt_tokens
        self.completion_tokens += r.completion_tokens
        if r.case_ms is not None:
            self.case_ms.append(r.case_ms)
        reversible = r.expected == "reversible"
        self.expected_reversible += reversible
        self.expected_irreversible += not reversible
        self.withheld += r.withheld
        self.withheld_correct += r.withheld_correct is True
        if r.synth_ms is not None:
            self.synth_ms.append(r.synth_ms)
        if r.verify_ms is not None:
            self.verify_ms.append(r.verify_ms)
        if not r.produced:
            if reversible:
                self.false_irreversible += 1
            else:
                self.flagged += 1
            return
        self.produced += 1
        self.correct += r.correct is True
        self.incorrect += r.correct is not True
        self.verified += r.verdict == "verified"
        self.failed += r.verdict == "failed"
        self.could_not_verify += r.verdict == "could not verify"
        self.false_verified += r.false_verified
        self.exact += reversible and r.correct is True
        self.unexpected_inverse += not reversible

    def times(self) -> dict[str, float | None]:
        return {"synth_p50_ms": percentile(self.synth_ms, 50), "synth_p95_ms": percentile(self.synth_ms, 95),
                "verify_p50_ms": percentile(self.verify_ms, 50), "verify_p95_ms": percentile(self.verify_ms, 95),
                "case_mean_ms": sum(self.case_ms) / len(self.case_ms) if self.case_ms else None}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("synth_ms")
        d.pop("verify_ms")
        d.pop("case_ms")
        return {**d, "tokens": self.tokens, **self.times()}


def summarize(results: Iterable[CaseResult]) -> dict[str, dict[str, Metrics]]:
    """strategy -> category (and `OVERALL`) -> Metrics; categories in first-seen order."""
    out: dict[str, dict[str, Metrics]] = {}
    for r in results:
        per = out.setdefault(r.strategy, {OVERALL: Metrics()})
        per.setdefault(r.category, Metrics()).add(r)
        per[OVERALL].add(r)
    for name, per in out.items():  # overall last
        out[name] = {**{k: v for k, v in per.items() if k != OVERALL}, OVERALL: per[OVERALL]}
    return out


def pct(n: int, d: int) -> str:
    """"n/d (p%)", or "-" when there is nothing to count."""
    if d == 0:
        return "-"
    return f"{n}/{d} ({100 * n / d:.0f}%)"


def false_verified(results: Iterable[CaseResult]) -> list[CaseResult]:
    return [r for r in results if r.false_verified]

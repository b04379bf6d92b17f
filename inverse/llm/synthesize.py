"""The loop that turns a model's proposals into a trusted inverse, or into a reason there is none.

README, design decision 6, "the LLM proposes, the sandbox disposes". Per attempt:

1. **ask** the model (`LlmClient.ask`) with the request and the earlier failures as feedback;
2. **check** the proposal with `guard.check` against the objects the inverse may touch (and the
   caller's `precheck`, e.g. `repeats_forward`); a rejected proposal never reaches `verify`;
3. **verify** it with the injected callback (the proxy passes the sandbox; `inverse` imports
   neither `sandbox` nor `dbproxy`), which answers "verified", "failed" or "could not verify".

Only "verified" makes a trusted `Outcome`. "failed" (the sandbox's error or row diff), "rejected"
(the guard's problems) and "no answer" (an unreadable reply) are shown to the model in the next
attempt, up to `max_attempts`. Two things stop early, because another attempt cannot help:
"could not verify" (the sandbox cannot decide this transaction, whatever the inverse), and an
endpoint that is down, rate-limited or timing out after the client's own retries. A model that
answers with no statements and says what it cannot restore has given up: that stops too.

Every attempt is recorded (statements, answer, problems, verdict, the model call's tokens and
latency) for the journal: `Outcome.to_json()` / `from_json()`.

Cache: a trusted outcome is stored under `cache_key`, and a later call with the same key returns
it with `cached=True` and no model call. It is not verified again here: the caller decides. The
statements carry literal values from *that* transaction's row images, so a key must pin the
request's content, not only its statement shape; `request_key` builds one from a database name, a
schema version and a digest of the request. A caller that keys by shape alone must re-verify a
hit before trusting it.

`summarize` (optional, separate from the loop) asks for a plain-language account of a transaction
for the reviewer. It is GENERATED text: never verified, never used to decide anything, and
labelled as such (`Summary.label()`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from inverse.llm import guard
from inverse.llm.answer import InverseAnswer, Summary
from inverse.llm.client import Call, LlmClient
from inverse.llm.prompt import Request, messages, summary_messages

if TYPE_CHECKING:
    from inverse.llm.cache import AnswerCache

__all__ = ["Attempt", "Outcome", "Precheck", "Verify", "repeats_forward", "request_key", "summarize", "synthesize"]

#: (status, detail): status is "verified" | "failed" | "could not verify"; detail the error or diff.
Verify = Callable[[list[str]], Awaitable[tuple[str, str]]]

_VERDICTS = ("verified", "failed", "could not verify")


@dataclass
class Attempt:
    n: int
    statements: list[str]
    answer: InverseAnswer | None
    problems: list[str]  # the guard's (empty unless "rejected")
    status: str  # "verified" | "failed" | "could not verify" | "rejected" | "no answer"
    detail: str  # the error, the diff, the guard's problems, the call's error
    call: Call | None

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "statements": list(self.statements),
            "answer": self.answer.model_dump() if self.answer is not None else None,
            "problems": list(self.problems),
            "status": self.status,
            "detail": self.detail,
            "call": self.call.to_json() if self.call is not None else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Attempt:
        return cls(
            n=int(d["n"]),
            statements=list(d.get("statements") or []),
            answer=InverseAnswer.model_validate(d["answer"]) if d.get("answer") is not None else None,
            problems=list(d.get("problems") or []),
            status=str(d["status"]),
            detail=str(d.get("detail") or ""),
            call=Call.from_json(d["call"]) if d.get("call") is not None else None,
        )


@dataclass
class Outcome:
    statements: list[str] | None  # the verified inverse, or None
    attempts: list[Attempt] = field(default_factory=list)
    reason: str = ""  # "" when trusted; else why there is no trusted inverse
    cached: bool = False  # returned from an AnswerCache without asking the model (not verified again)

    @property
    def trusted(self) -> bool:
        return self.statements is not None and not self.reason

    @property
    def answer(self) -> InverseAnswer | None:
        """The verified attempt's answer (its assumptions and what it cannot restore), if any."""
        for a in reversed(self.attempts):
            if a.status == "verified":
                return a.answer
        return None

    @property
    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens over every attempt, where the endpoint reported them."""
        calls = [a.call for a in self.attempts if a.call is not None]
        return (sum(c.prompt_tokens or 0 for c in calls), sum(c.completion_tokens or 0 for c in calls))

    def to_json(self) -> dict[str, Any]:
        return {
            "statements": list(self.statements) if self.statements is not None else None,
            "attempts": [a.to_json() for a in self.attempts],
            "reason": self.reason,
            "cached": self.cached,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Outcome:
        statements = d.get("statements")
        return cls(
            statements=list(statements) if statements is not None else None,
            attempts=[Attempt.from_json(a) for a in d.get("attempts") or []],
            reason=str(d.get("reason") or ""),
            cached=bool(d.get("cached", False)),
        )


def request_key(database: str, schema_version: str, req: Request) -> tuple[str, ...]:
    """A key that pins the request's content: (database, schema version, digest of the request)."""
    h = hashlib.sha256()
    h.update(json.dumps([req.statements, req.ddl, req.images, req.facts, sorted(req.objects)],
                        sort_keys=True, default=str, ensure_ascii=False).encode())
    return (database, schema_version, h.hexdigest())


def _short(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _summary(attempts: list[Attempt]) -> str:
    if not attempts:
        return "no attempt was made"
    counts = Counter(a.status for a in attempts)
    tally = ", ".join(f"{k} {v}" for k, v in counts.items())
    last = attempts[-1]
    n = len(attempts)
    return f"{n} attempt{'s' if n != 1 else ''}, none verified ({tally}); last: {last.status}: {_short(last.detail)}"


#: More checks before the sandbox, on top of the guard's (which always runs): problems, one line each.
Precheck = Callable[[list[str]], list[str]]


def repeats_forward(forward: list[str]) -> Precheck:
    """A check that rejects an answer running one of the `forward` statements again (small models
    often do): it cannot undo them, and saying so is more use to the model than the sandbox's diff."""
    seen = {_normalized(f): n for n, f in enumerate(forward, 1)}

    def check(statements: list[str]) -> list[str]:
        out = []
        for s in statements:
            n = seen.get(_normalized(s))
            if n is not None:
                out.append(f"{_short(s, 120)}: this is forward statement {n} itself; the inverse must undo it "
                           "(do the opposite), not run it again")
        return out

    return check


def _normalized(sql: str) -> str:
    return " ".join(sql.strip().rstrip(";").split()).lower()


async def synthesize(client: LlmClient, req: Request, verify: Verify, *, allowed: set[str], max_attempts: int,
                     cache: AnswerCache | None = None, cache_key: tuple[str, ...] | None = None,
                     precheck: Precheck | None = None) -> Outcome:
    """Ask, check, verify, feed failures back; a trusted Outcome only from a "verified" attempt.
    `precheck` adds problems of the caller's to the guard's (it can only reject, never admit)."""
    if cache is not None and cache_key is not None:
        hit = cache.get(cache_key)
        if hit is not None:
            return replace(hit, attempts=list(hit.attempts), cached=True)

    attempts: list[Attempt] = []
    feedback: list[Attempt] = []
    stop = ""
    for n in range(1, max(1, max_attempts) + 1):
        answer, call = await client.ask(messages(req, feedback))
        if answer is None:
            attempt = Attempt(n, [], None, [], "no answer", call.error or call.outcome, call)
            attempts.append(attempt)
            if call.endpoint_failed:
                tries = f" after {call.http_attempts} HTTP request{'s' if call.http_attempts != 1 else ''}"
                stop = f"the model endpoint failed ({call.outcome}{tries}): {call.error or call.outcome}"
                break
            feedback.append(attempt)
            continue

        statements = list(answer.inverse)
        if not statements:
            problems = ["the answer proposes no statements"]
            detail = problems[0] + (": it cannot restore " + "; ".join(answer.cannot_restore)
                                    if answer.cannot_restore else "")
            attempt = Attempt(n, [], answer, problems, "rejected", detail, call)
            attempts.append(attempt)
            if answer.cannot_restore:
                stop = "the model proposes no inverse; it cannot restore: " + "; ".join(answer.cannot_restore)
                break
            feedback.append(attempt)
            continue

        problems = guard.check(statements, allowed)
        if precheck is not None:
            problems += precheck(statements)
        if problems:
            attempt = Attempt(n, statements, answer, problems, "rejected", "\n".join(problems), call)
            attempts.append(attempt)
            feedback.append(attempt)
            continue

        try:
            status, detail = await verify(statements)
        except Exception as e:  # a broken verifier is "cannot decide", never "verified"
            status, detail = "could not verify", f"the verification raised {type(e).__name__}: {e}"
        if status not in _VERDICTS:
            status, detail = "could not verify", f"unknown verdict {status!r}: {detail}"
        attempt = Attempt(n, statements, answer, [], status, detail, call)
        attempts.append(attempt)
        if status == "verified":
            outcome = Outcome(statements, attempts, "")
            if cache is not None and cache_key is not None:
                cache.put(cache_key, outcome)
            return outcome
        if status == "could not verify":
            stop = f"the sandbox could not verify attempt {n}: {_short(detail)}"
            break
        feedback.append(attempt)

    return Outcome(None, attempts, "no trusted inverse: " + (stop or _summary(attempts)))


async def summarize(client: LlmClient, statements: list[str], images: list[dict[str, Any]],
                    *, total_images: int | None = None) -> tuple[Summary | None, Call]:
    """A GENERATED, unverified summary of a transaction for the reviewer (None, with the reason in Call)."""
    summary, call = await client.ask_for(summary_messages(statements, images, total_images), Summary)
    if summary is not None:
        summary = summary.model_copy(update={"model": call.model, "generated": True})
    return summary, call

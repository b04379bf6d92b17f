"""What the model is shown: the forward statements, the DDL from before, bounded row images, facts.

A `Request` holds exactly what the caller chose to show, and `messages` renders only that: no
connection string, password or API key is ever part of a Request, so none can reach a prompt.
Everything is bounded (images, DDL, statement text), and the prompt says what was left out, so a
huge transaction costs a bounded prompt and the model knows its view is partial.

Earlier failed attempts come back as conversation turns: the model's own answer, then what went
wrong with it (the sandbox's error or row diff, the guard's problems, why the answer could not be
read), so the next attempt can correct it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from inverse.redact import redact

if TYPE_CHECKING:
    from inverse.llm.synthesize import Attempt

__all__ = ["MAX_DDL_CHARS", "MAX_IMAGES", "Request", "messages", "summary_messages"]

MAX_IMAGES = 50
MAX_DDL_CHARS = 20_000
MAX_STATEMENT_CHARS = 20_000  # all forward statements together
MAX_IMAGE_CHARS = 4_000  # one row image's JSON
MAX_FEEDBACK = 3  # earlier attempts shown (the most recent ones)
MAX_DETAIL_CHARS = 2_000  # of one attempt's error / diff

SYSTEM = """\
You write the inverse ("undo") of a PostgreSQL transaction that an AI agent ran and committed.
Run right after that transaction, your inverse must return every row and object it touched to \
its exact state from before: the same rows with the same values, the same columns, types, \
defaults, constraints and indexes.

Answer with one JSON object and nothing else:
{"inverse": ["<SQL statement>", ...], "assumptions": ["..."], "cannot_restore": ["..."]}

- "inverse": plain SQL statements, in the order to run them. They run together in one \
transaction that the caller opens and closes: no BEGIN, COMMIT, ROLLBACK or SAVEPOINT.
- Use INSERT, UPDATE, DELETE, TRUNCATE and DDL (ALTER, CREATE, DROP, COMMENT, GRANT, REVOKE) \
only on the objects listed under "Objects the inverse may touch"; do not read or write any \
other table, not even in a subquery.
- Never use SET or RESET, DO blocks, CALL, COPY, LOCK, VACUUM, CASCADE, functions that read \
files or reach other servers, or roles, databases, extensions and schemas: such an inverse is \
rejected unseen.
- Take values from the row images: "old" is a row before a statement, "new" after it; \
"I" inserted, "U" updated, "D" deleted. Write them as literals; identify rows by primary key \
where there is one.
- "cannot_restore": what your inverse cannot bring back (for example values missing from the \
images, sequence positions). "assumptions": what you assumed.

Your inverse is tested on a copy of the database before anyone trusts it; if it fails you are \
shown the error and asked again."""


@dataclass
class Request:
    statements: list[str]  # the forward statements to invert
    ddl: str  # DDL of the touched objects as it was BEFORE the transaction (may be "")
    images: list[dict[str, Any]]  # {"table": "public.t", "op": "I"|"U"|"D", "old": {...}|None, "new": {...}|None}
    facts: list[str] = field(default_factory=list)  # catalog facts, and why the rules could not invert it
    objects: list[str] = field(default_factory=list)  # qualified names the inverse may touch
    total_images: int | None = None  # when the caller already cut `images`: how many there were


def _bounded(text: str, limit: int, what: str) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({what} cut: {len(text) - limit} more characters left out)"


def _statements(req: Request) -> str:
    out: list[str] = []
    used = 0
    for n, sql in enumerate(req.statements, 1):
        text = redact(sql).strip()  # credentials never leave for a model
        if used + len(text) > MAX_STATEMENT_CHARS:
            left = len(req.statements) - n + 1
            out.append(f"... ({left} more statement{'s' if left != 1 else ''} or their remainder left out: "
                       "the prompt is bounded)")
            break
        used += len(text)
        out.append(f"{n}. {text}")
    return "\n".join(out) or "(none given)"


def _image_line(image: dict[str, Any]) -> str:
    text = json.dumps(image, ensure_ascii=False, default=str, separators=(", ", ": "))
    if len(text) > MAX_IMAGE_CHARS:
        return text[:MAX_IMAGE_CHARS] + f" ... (this image is cut: {len(text) - MAX_IMAGE_CHARS} more characters)"
    return text


def _images(req: Request) -> tuple[str, str]:
    total = max(req.total_images or 0, len(req.images))
    shown = req.images[:MAX_IMAGES]
    left = total - len(shown)
    head = f"Row images ({total} captured"
    head += f", {len(shown)} shown, {left} more left out)" if left else ")"
    body = "\n".join(_image_line(i) for i in shown) or "(none: no row changed, or none was captured)"
    if left:
        body += f"\n... {left} more row image{'s' if left != 1 else ''} left out"
    return head, body


def user_message(req: Request) -> str:
    """The first user turn: everything the model may know about the transaction."""
    head, images = _images(req)
    ddl = _bounded(req.ddl.strip(), MAX_DDL_CHARS, "DDL") if req.ddl.strip() else "(not available)"
    facts = "\n".join(f"- {f}" for f in req.facts) or "(none)"
    objects = "\n".join(f"- {o}" for o in req.objects) or "(none listed: the inverse may touch nothing)"
    # The definitions first: they change least from one request to the next, so an endpoint that
    # caches prompt prefixes (llama.cpp, vLLM, OpenAI) evaluates only what follows them again.
    return "\n\n".join([
        "Definitions of the touched objects before the transaction:\n" + ddl,
        "Forward transaction (the statements to invert, in the order they ran):\n" + _statements(req),
        f"{head}:\n{images}",
        "Facts:\n" + facts,
        "Objects the inverse may touch:\n" + objects,
        "Answer with the JSON object only.",
    ])


def _feedback(attempt: Attempt) -> list[dict[str, str]]:
    if attempt.answer is not None:
        said = json.dumps(attempt.answer.model_dump(), ensure_ascii=False, indent=1)
    else:
        said = "(no usable answer)"
    detail = _bounded(attempt.detail.strip() or "(no detail)", MAX_DETAIL_CHARS, "detail")
    what = {
        "failed": "was tested on a copy of the database and failed",
        "rejected": "was rejected before testing",
        "no answer": "could not be read",
        "could not verify": "could not be tested",
    }.get(attempt.status, attempt.status)
    hint = {
        "no answer": 'Reply with exactly one JSON object: {"inverse": [...], "assumptions": [...], '
                     '"cannot_restore": [...]}.',
        "rejected": "Fix every problem listed; use only the objects listed.",
    }.get(attempt.status, "Correct the inverse.")
    return [
        {"role": "assistant", "content": said},
        {"role": "user", "content": f"Attempt {attempt.n} {what}:\n{detail}\n\n{hint} Answer with the JSON object "
                                    "only."},
    ]


def messages(req: Request, feedback: Sequence[Attempt] = ()) -> list[dict[str, str]]:
    """System and user turns for one attempt, with the most recent failed attempts as feedback."""
    out = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_message(req)}]
    for attempt in list(feedback)[-MAX_FEEDBACK:]:
        out += _feedback(attempt)
    return out


SUMMARY_SYSTEM = """\
You explain to a person reviewing an AI agent's database work what one PostgreSQL transaction \
did. Be factual and brief: at most three sentences, naming the tables and how many rows changed, \
and anything destructive (deleted rows, dropped objects, overwritten values).

Answer with one JSON object and nothing else: {"summary": "...", "risk": "low" | "medium" | "high"}
- "risk": high for lost data or dropped objects, medium for overwritten values or schema changes, \
low otherwise."""


def summary_messages(statements: list[str], images: list[dict[str, Any]],
                     total_images: int | None = None) -> list[dict[str, str]]:
    """System and user turns asking for a reviewer's summary of a transaction (bounded like `messages`)."""
    req = Request(statements=statements, ddl="", images=images, total_images=total_images)
    head, shown = _images(req)
    user = "\n\n".join([
        "Statements, in the order they ran:\n" + _statements(req),
        f"{head}:\n{shown}",
        "Answer with the JSON object only.",
    ])
    return [{"role": "system", "content": SUMMARY_SYSTEM}, {"role": "user", "content": user}]

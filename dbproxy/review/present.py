"""What a reviewer is shown of a transaction's statements, by the API and by the offline reader.

Two things happen on the way out, here and nowhere else: the statement text and its bind
parameter values pass through `dbproxy.config.log.redact_statement` (the one place secrets are
taken out), and a statement that changed no data says so (`StatementRecord.effect`: 'read-only'
for reads, 'setting' for SET/RESET and the like), so that the statements of a held transaction
are not all taken for writes. The classification is the proxy's own (`inverse.classify`),
conservative: what is not known to be read-only is left unmarked.

Also here, for the CLI and the console alike: `policy_short`, the few words of a journal entry's
`policy` for a column, `grant_state`, what became of a grant, and how times read (`aware`,
`duration`, `age`).
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from typing import Any

from dbproxy.config.log import redact_statement
from dbproxy.journal.records import StatementRecord
from dbproxy.policy.models import GrantRecord
from dbproxy.review.models import TransactionDetail
from inverse.classify import Kind, classify


@functools.lru_cache(maxsize=4096)
def _effect(sql: str) -> str | None:
    try:
        c = classify(sql)
    except Exception:  # an unparseable statement may have written: no mark
        return None
    if c.tx is not None or not c.read_only:
        return None
    return "setting" if c.kind is Kind.SESSION else "read-only"


def for_people(statements: list[StatementRecord]) -> list[StatementRecord]:
    """The statements as a reviewer sees them (see the module docstring)."""
    out = []
    for s in statements:
        sql, params = redact_statement(s.sql, s.params)
        effect = None if s.sqlstate or s.error or s.sql.startswith("-- dbproxy:") else _effect(s.sql)
        out.append(s.model_copy(update={"sql": sql, "params": params, "effect": effect}))
    return out


def detail_data(detail: TransactionDetail) -> dict[str, Any]:
    """A transaction's detail as the API sends it (write it with `jsonio.dumps`): statements for
    people, and the diff's numbers as `Decimal`s with PostgreSQL's digits (pydantic's JSON mode
    would make strings of them)."""
    shown = detail.model_copy(update={"statements": for_people(detail.statements)})
    data = shown.model_dump(mode="json", exclude={"diff"})
    data["diff"] = None if detail.diff is None else [td.model_dump() for td in detail.diff]
    return data


#: Where a rule or grant that decided is named in `TransactionRecord.policy`: `agents.NAME.rules[i]`,
#: `rules[i]` (the settings' rules, by position) or `grant #N`.
_SOURCE = re.compile(r"(?:\bagents\.\S+?\.)?\brules\[\d+\]|\bgrant #\d+")


def policy_short(text: str | None) -> str:
    """The journal's `policy` (which rule or grant decided, in words) in a few words for a column:
    `allow rules[0]`, `allow grant #3`, `ask agents.bot.rules[1]`, `deny rules[2]`, `mode` (no rule
    matched: the agent's mode decided), `ask (grant #3 but not undoable)` (allowed, but without an
    exact verified inverse, so held), `-` (no policy applied)."""
    if not text:
        return "-"
    decision, _, rest = text.partition(":")
    if decision not in ("allow", "ask", "deny"):
        return "mode"
    sources = list(dict.fromkeys(_SOURCE.findall(rest)))
    shown = ", ".join(sources[:2]) + (f" +{len(sources) - 2}" if len(sources) > 2 else "")
    if decision == "ask" and " allows " in rest and ", but " in rest:
        return f"ask ({shown} but not undoable)"
    return f"{decision} {shown}".strip()


def grant_state(g: GrantRecord) -> str:
    """active, consumed (a once grant whose transaction committed), ended (with its session or
    its transaction, by the proxy), or revoked (by a reviewer)."""
    if g.consumed_at is not None:
        return "consumed"
    if g.revoked_at is not None:
        return "ended" if g.revoked_by == "proxy" else "revoked"
    return "active"


def aware(t: datetime) -> datetime:
    """Times from the API or the journal carry their zone; one without is taken as UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def duration(seconds: float | None) -> str:
    """A duration in the two largest units (`42s`, `3m 05s`, `2h 07m`, `1d 4h`)."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def age(t: datetime | None) -> str:
    """How long ago `t` was, as a duration."""
    return "-" if t is None else duration((datetime.now(UTC) - aware(t)).total_seconds())

"""What a reviewer is shown of a transaction's statements, by the API and by the offline reader.

Two things happen on the way out, here and nowhere else: the statement text and its bind
parameter values pass through `dbproxy.config.log.redact_statement` (the one place secrets are
taken out), and a statement that changed no data says so (`StatementRecord.effect`: 'read-only'
for reads, 'setting' for SET/RESET and the like), so that the statements of a held transaction
are not all taken for writes. The classification is the proxy's own (`inverse.classify`),
conservative: what is not known to be read-only is left unmarked.
"""

from __future__ import annotations

import functools
from typing import Any

from dbproxy.config.log import redact_statement
from dbproxy.journal.records import StatementRecord
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

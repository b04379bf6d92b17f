"""Undo mode at the agent's COMMIT: commit with an exact inverse, or hold for a person.

The agent's transaction has run on the upstream with capture on; its COMMIT plan (see
`hold_protocol.CAPTURE_FETCH_SQL`) brought back the captured changes in the same round trip as
the guard. Here, still inside the upstream transaction:

1. the tables touched are looked up in the catalog (cached per database; DDL clears the cache);
2. `inverse.undo_plan.build` synthesizes the inverse and classifies what has none;
3. reversible: the undo marker (`dbproxy.undo_records`) is written and COMMIT sent in one round
   trip, so the row images, the marker and the agent's writes commit atomically; the journal
   entry with the inverse follows in the background (batched);
4. irreversible: the transaction is held for review as in hold mode, with the reasons.

Between 2 and 3 the inverse is proved in a sandbox (`dbproxy.verification`); only a verified one
commits. The fetched rows' seventh column is the schema version (`dbproxy.ddl_epoch`), the key
under which verified results are cached; when it moves, the cached catalog facts are dropped too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from inverse.images import CAPTURE_COLUMNS, TABLE_INFO_SQL, Change, TableInfo, change_from_row, table_info_from_row
from inverse.undo_plan import Plan, build
from sandbox.verdict import Verdict

if TYPE_CHECKING:
    from dbproxy.hold import HeldConnection

_TABLE_INFO_JSON_SQL = f"SELECT pg_catalog.to_json(x)::text FROM ({TABLE_INFO_SQL}) x"
_DDL_EVENTS_SQL = (f"SELECT {CAPTURE_COLUMNS} FROM dbproxy.capture_log "
                   "WHERE xid = pg_catalog.txid_current_if_assigned() AND op = 'X' ORDER BY seq")
MARK_SQL = "INSERT INTO dbproxy.undo_records (xid, agent, session, changes) VALUES ($1, $2, $3, $4)"
NOT_VERIFIED = "not done (sandbox = off)"
NOTHING_TO_VERIFY = "not done: the inverse is incomplete, so there is nothing to verify"
LLM_OFF = ("off: no llm.api_key (or OPENAI_API_KEY) is set; a model could have proposed the DDL inverse the rules "
           "lack, for the sandbox to verify")


def _table_from_json(text: str) -> TableInfo:
    """A TABLE_INFO_SQL row that came as JSON text (the proxy's own statements return text): its
    keys are the query's columns, in order."""
    return table_info_from_row(tuple(json.loads(text).values()))


@dataclass
class TableCache:
    """Catalog facts per database and table oid, shared by all sessions."""

    by_db: dict[str, dict[int, TableInfo]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # last schema version seen per database

    def of(self, database: str) -> dict[int, TableInfo]:
        return self.by_db.setdefault(database, {})

    def forget(self, database: str) -> None:
        self.by_db.pop(database, None)

    def moved(self, database: str, version: object) -> bool:
        """Has the schema version moved since the last call (DDL by anyone)?"""
        if version is None:
            return False
        last = self.versions.get(database)
        self.versions[database] = str(version)
        return last is not None and last != str(version)


@dataclass
class Decision:
    xid: int
    plan: Plan
    complete: bool  # every change was fetched (else the inverse is rendered from the log on demand)
    synth_ms: float
    changes: list[Change] = field(default_factory=list)
    tables: dict[int, TableInfo] = field(default_factory=dict)
    schema_version: str | None = None  # dbproxy.ddl_epoch (None: DDL event triggers not installed)

    @property
    def reversible(self) -> bool:
        return self.plan.reversible

    def journal_json(self, verdict: Verdict | None = None, llm: dict[str, Any] | str | None = None) -> str:
        """The journal's `undo` column. `llm`: the model's attempts at the rules' gaps, or why no
        model was asked (absent when the rules needed no help)."""
        unverified = NOT_VERIFIED if self.plan.reversible else NOTHING_TO_VERIFY
        d: dict[str, Any] = {"verification": verdict.to_json() if verdict is not None else unverified,
                             "synthesis_ms": round(self.synth_ms, 3), "complete": self.complete,
                             **self.plan.to_json()}
        if llm is not None:
            d["llm"] = llm
        if not self.complete:
            d["steps"] = []
        return json.dumps(d)


async def decide(held: HeldConnection, xid: int, rows: list[tuple[str | None, ...]], cache: TableCache,
                 limit: int) -> Decision:
    """Build the inverse of the transaction whose captured rows (up to `limit` + 1) are `rows`."""
    changes = [change_from_row(r[:6]) for r in rows]
    version = rows[0][6] if rows and len(rows[0]) > 6 else None
    complete = len(changes) <= limit
    if not complete:
        # Too many to carry: decide on the DDL events only (every row change has an exact inverse
        # in the log); the steps are built from the log when someone asks for them.
        r = await held.inject(_DDL_EVENTS_SQL)
        changes = sorted([c for c in changes if c.op != "X"][:limit] + [change_from_row(x) for x in r.rows[0]],
                         key=lambda c: c.seq)
    tables = cache.of(held.database)
    if any(c.op == "X" for c in changes) or cache.moved(held.database, version):
        tables.clear()  # the catalog changed (this transaction's DDL, or anyone's since the last commit)
    missing = {c.rel for c in changes if c.rel is not None and c.rel not in tables}
    if missing:
        r = await held.inject((_TABLE_INFO_JSON_SQL, ["{" + ",".join(str(o) for o in sorted(missing)) + "}"]))
        for (text,) in r.rows[0] if r.rows else []:
            if text is not None:
                info = _table_from_json(text)
                tables[info.oid] = info
    start = time.perf_counter()
    plan = build(changes, tables)
    touched = {c.rel: tables[c.rel] for c in changes if c.rel is not None and c.rel in tables}
    return Decision(xid, plan, complete, (time.perf_counter() - start) * 1000, changes, touched,
                    str(version) if version is not None else None)

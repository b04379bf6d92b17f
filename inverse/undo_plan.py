"""From captured changes to an undo (or redo) plan: ordered steps of SQL with bind parameters.

Undo reverses the transaction's changes newest first, each step moving one row from its captured
after-image back to its before-image (`inverse.row_sql`), or reversing one DDL command
(`inverse.ddl_rules`). Redo replays them oldest first, before-image to after-image. Each step
carries what the executor needs to detect a conflict (the image the row must still equal).

A plan is *irreversible* when any change has no exact inverse; `irreversible` then says why, for
the reviewer, and no step list is trusted. `notes` are true facts that do not block the undo
(sequences keep their advanced values: PostgreSQL never rolls back `nextval`).
Plans serialize to JSON for the journal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from inverse.ddl_groups import table_infos
from inverse.ddl_rules import invert_all
from inverse.images import SNAPSHOT_OPS, Change, TableInfo
from inverse.row_sql import render, templates

#: remove/restore/revert: one row from one image to another (`inverse.row_sql`); ddl: a statement;
#: data: a statement with bind parameters that puts back rows or values kept before DDL; check /
#: written_since: conflict checks (a non-NULL answer is a conflict; `written_since` runs as the
#: proxy's role, since it reads the capture log); remap: the table re-created under a new oid;
#: privileges: owner and privilege statements (no user code runs in them: an undo acting as the
#: agents' role runs them as the proxy's role when the agents' role may not).
StepKind = Literal["remove", "restore", "revert", "ddl", "privileges", "data", "check", "written_since", "remap"]


@dataclass(frozen=True, slots=True)
class Step:
    seq: int  # capture sequence number of the change this step reverses (or replays)
    kind: StepKind
    sql: str
    params: tuple[str, ...] = ()
    rel: int | None = None
    table: str | None = None
    origin: str = "rules"  # who wrote the SQL: "rules", or "llm" (proposed, then verified in a sandbox)

    @property
    def expect(self) -> str | None:
        """The image the row must equal before the step (None: the row must not exist / DDL)."""
        return self.params[0] if self.kind in ("remove", "revert") else None

    @property
    def target(self) -> str | None:
        """The image the row has after the step (None: the row is gone / DDL)."""
        if self.kind == "restore":
            return self.params[0]
        return self.params[1] if self.kind == "revert" else None

    def readable(self) -> str:
        return render(self.sql, self.params) if self.params else self.sql


@dataclass(frozen=True, slots=True)
class Gap:
    """A DDL command the rules cannot invert: where its inverse would go, and what a proposer
    (an LLM, a person) needs to write one. Filled by `fill`; the result must still be verified."""

    seq: int
    reason: str
    query: str
    objects: tuple[tuple[str, str], ...]  # (object type, identity), as the event trigger reported them


@dataclass
class Plan:
    direction: Literal["undo", "redo"]
    steps: list[Step] = field(default_factory=list)
    irreversible: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changes: int = 0  # row changes and DDL commands covered
    gaps: list[Gap] = field(default_factory=list)  # the irreversible DDL commands, for a proposer

    @property
    def reversible(self) -> bool:
        return not self.irreversible

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction,
                "steps": [{"seq": s.seq, "kind": s.kind, "sql": s.sql, "params": s.params, "rel": s.rel,
                           "table": s.table, **({"origin": s.origin} if s.origin != "rules" else {})}
                          for s in self.steps],
                "irreversible": self.irreversible, "notes": self.notes, "changes": self.changes}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        return cls(d["direction"], [Step(**{**s, "params": tuple(s["params"])}) for s in d.get("steps", [])],
                   list(d.get("irreversible", [])), list(d.get("notes", [])), int(d.get("changes", 0)))


def _row_step(c: Change, info: TableInfo, *, undo: bool) -> Step:
    """Undo moves a row from its after-image (now) back to its before-image; redo the other way."""
    t = templates(info)
    now, target = (c.new, c.old) if undo else (c.old, c.new)
    if now is None:
        assert target is not None
        return Step(c.seq, "restore", t.restore, (target,), c.rel, info.name)
    if target is None:
        return Step(c.seq, "remove", t.remove, (now,), c.rel, info.name)
    return Step(c.seq, "revert", t.revert, (now, target), c.rel, info.name)


def _identity_always_changed(c: Change, info: TableInfo) -> list[str]:
    """Identity ALWAYS columns whose value this UPDATE changed (`SET id = DEFAULT`). The revert
    leaves them out of its SET list (PostgreSQL refuses any value but DEFAULT there), so without
    this check the undo would report success and leave the new value."""
    if c.op != "U" or not info.identity_always or c.old is None or c.new is None:
        return []
    old, new = json.loads(c.old), json.loads(c.new)
    return [col for col in info.identity_always if old.get(col) != new.get(col)]


def build(changes: list[Change], tables: dict[int, TableInfo], *, direction: Literal["undo", "redo"] = "undo") -> Plan:
    """The plan for one transaction's changes (in capture order). `tables` must describe every
    table the row changes touch, as the catalog is now."""
    undo = direction == "undo"
    plan = Plan(direction, changes=len([c for c in changes if c.op not in SNAPSHOT_OPS]))
    ddl = invert_all(changes, direction=direction)
    created = {d.created for d in ddl if d.created is not None}
    for d in ddl:
        created |= d.created_tables
    steps: list[Step] = []
    for d in ddl:
        if d.reason:
            plan.irreversible.append(d.reason)
            plan.gaps.append(Gap(d.seq, d.reason, d.query, d.objects))
        elif d.steps:
            steps += [Step(s.seq, s.kind, s.sql, s.params, s.rel, s.table) for s in d.steps]  # type: ignore[arg-type]
        elif d.sql:
            if not undo:
                plan.irreversible.append("redo of DDL run inside a function or DO block is not possible: its "
                                         "statement text was not kept")
            steps.append(Step(d.seq, "ddl", d.sql))
    missing: set[int] = set()
    advanced: set[str] = set()
    described = table_infos(changes)
    for c in changes:
        if c.op == "X" or c.op in SNAPSHOT_OPS or (undo and c.rel in created):
            continue  # rows of a table the transaction created go with the table (a redo re-creates it first)
        info = tables.get(c.rel) if c.rel is not None else None
        if info is None and c.rel is not None:
            # A table the transaction dropped (its undo makes it again before these rows come
            # back), or created (a redo makes it again): as its DDL events described it.
            info = described.get(c.rel)
        if info is None:
            missing.add(c.rel or 0)
            continue
        if c.op == "I" and info.sequences:
            advanced.update(info.sequences)
        if _identity_always_changed(c, info):
            # An UPDATE may set an identity ALWAYS column only to DEFAULT: the row goes back by
            # deleting it and inserting its image with OVERRIDING SYSTEM VALUE (undo runs with
            # foreign-key actions off, so nothing cascades).
            t = templates(info)
            now, target = (c.new, c.old) if undo else (c.old, c.new)
            assert now is not None and target is not None
            steps.append(Step(c.seq, "remove", t.remove, (now,), c.rel, info.name))
            steps.append(Step(c.seq, "restore", t.restore, (target,), c.rel, info.name))
            continue
        steps.append(_row_step(c, info, undo=undo))
    for oid in sorted(missing):
        plan.irreversible.append(f"rows of {_table_name(changes, oid)} were captured, but the table no longer exists")
    if advanced:
        plan.notes.append(f"sequences not rewound: {', '.join(sorted(advanced))} (PostgreSQL never rolls back "
                          "nextval; undo restores rows, not sequence positions)")
    steps.sort(key=lambda s: s.seq, reverse=undo)
    plan.steps = steps
    return plan


def _table_name(changes: list[Change], oid: int) -> str:
    """A table's name for people, from what the capture kept about it (never its oid alone)."""
    for c in changes:
        d = c.ddl or {}
        desc = d.get("desc") or {}
        if c.rel == oid and desc.get("qualified"):
            return f"table {desc['qualified']}"
        if c.rel == oid and d.get("identity") and d.get("object_type") == "table":
            return f"table {d['identity']}"
    return "a table that no longer exists (it was dropped since, outside what this transaction captured)"


def fill(plan: Plan, inverses: dict[int, str | None], *, origin: str = "llm") -> Plan:
    """`plan` with its gaps (by seq) filled by proposed DDL, in their newest-first places (None:
    the gap is covered by another gap's SQL). The result claims reversibility only when every gap
    was filled and nothing else blocked it; it is a candidate for the sandbox, never trusted as it
    stands."""
    filled = [g for g in plan.gaps if g.seq in inverses]
    steps = [*plan.steps, *(Step(g.seq, "ddl", sql, origin=origin) for g in filled
                            if (sql := inverses[g.seq]) is not None)]
    steps.sort(key=lambda s: s.seq, reverse=plan.direction == "undo")
    left = list(plan.irreversible)
    for g in filled:
        left.remove(g.reason)
    return replace(plan, steps=steps, irreversible=left, gaps=[g for g in plan.gaps if g.seq not in inverses])


def rebuild(steps: list[Step], tables: dict[int, TableInfo]) -> list[Step]:
    """Row steps re-made for the catalog as it is now (`tables`, by oid). Undoing DDL (a RENAME,
    an ADD COLUMN) changes the shape of tables that older steps address; an executor calls this
    after each DDL step so the remaining row steps name the table and columns as they now are."""
    out: list[Step] = []
    for s in steps:
        info = tables.get(s.rel) if s.rel is not None and s.kind in ("remove", "restore", "revert") else None
        if info is not None:
            t = templates(info)
            s = replace(s, sql={"remove": t.remove, "restore": t.restore, "revert": t.revert}[s.kind], table=info.name)
        out.append(s)
    return out

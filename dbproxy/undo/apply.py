"""Undo and redo of committed agent transactions, on the real database, in one transaction.

Given transaction ids whose changes `dbproxy.capture_log` holds, `run` builds the plan
(`inverse.undo_plan`) from the images and the catalog as it is *now*, then applies it in a single
upstream transaction:

1. Output settings fixed to the capture's (`IMAGE_SETTINGS`), so row images compare exactly.
2. User triggers suppressed: `session_replication_role = replica` when the role may set it (this
   also suspends foreign-key checks, which the newest-first order makes consistent again);
   user triggers set ENABLE ALWAYS / ENABLE REPLICA still fire under it, so those are disabled
   for the transaction as well. Otherwise each affected table's enabled user triggers are
   disabled for the transaction (`ALTER TABLE ... DISABLE TRIGGER`, needs ownership; re-enabled
   before commit). If neither is possible the undo is refused: triggers firing during an undo
   would write new changes.
3. Each step in a savepoint. A step that finds its row in the expected image applies; one that
   finds the row already in the target state (e.g. a cascade during this undo did it) is skipped;
   anything else is a **conflict**: the row was changed since, by someone. Without a replica role,
   a step failing on a foreign key (a child restored before its parent) is retried after the
   others. After a DDL step (an undone RENAME or ADD COLUMN) the remaining row steps are rebuilt
   from the catalog as it is then.
4. DDL kept with its state from before (`inverse.ddl_groups`) adds steps of its own: statements
   that re-create or alter objects, data steps that put back rows and column values (bind
   parameters), checks (a later transaction wrote to a table the undo would drop: a conflict),
   and remaps: a table re-created under a new oid is recorded in `dbproxy.relation_map`, so the
   row steps of older transactions still find it.
5. Conflicts roll everything back and are reported with the row as it is now, unless `force`
   (then rows with a primary key are set to the target image anyway and listed as overridden;
   rows without one cannot be forced, and still roll everything back). `dry_run` always rolls
   back and reports the SQL and the conflicts.
6. `dbproxy.undo_records` notes the undo/redo in the same transaction.

Messages name transactions through `label` (the service passes one that says `#N`, the journal's
number) and tables by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import asyncpg

from dbproxy.journal.tags import tag_rows
from inverse.capture_schema import IMAGE_SETTINGS, ROW_TRIGGER, TRUNCATE_TRIGGER
from inverse.images import CAPTURE_COLUMNS, TABLE_INFO_SQL, Change, TableInfo, change_from_row, table_info_from_row
from inverse.row_sql import RowTemplates, templates
from inverse.undo_plan import Plan, Step, build, fill, rebuild

Direction = Literal["undo", "redo"]
_FK_VIOLATION = "23503"


class UndoError(Exception):
    """The undo could not be attempted (nothing was changed)."""


@dataclass
class Conflict:
    seq: int
    table: str | None
    step: str
    expected: str | None  # image the row should have had (None: the row should not exist)
    current: list[str] = field(default_factory=list)  # what the row(s) with that key hold now
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "table": self.table, "step": self.step, "expected": self.expected,
                "current": self.current, "message": self.message}


@dataclass
class Result:
    direction: Direction
    xids: list[int]
    applied: bool = False  # committed
    dry_run: bool = False
    steps: int = 0
    done: int = 0  # steps that changed a row or object
    skipped: int = 0  # steps whose row was already in the target state
    forced: int = 0
    conflicts: list[Conflict] = field(default_factory=list)  # unresolved: nothing was applied
    overridden: list[Conflict] = field(default_factory=list)  # conflicts `force` wrote over
    triggers: str = ""  # how user triggers were kept quiet
    sql: list[str] = field(default_factory=list)  # the plan, readable (dry runs)
    irreversible: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "xids": self.xids, "applied": self.applied, "dry_run": self.dry_run,
                "steps": self.steps, "done": self.done, "skipped": self.skipped, "forced": self.forced,
                "conflicts": [c.to_json() for c in self.conflicts],
                "overridden": [c.to_json() for c in self.overridden], "triggers": self.triggers, "sql": self.sql,
                "irreversible": self.irreversible, "notes": self.notes}


Label = Callable[[int], str]


def xid_label(xid: int) -> str:
    """How a transaction is named when nothing better is known (the service names them #N)."""
    return f"the transaction with upstream id {xid}"


async def load_changes(con: asyncpg.Connection, xid: int) -> list[Change]:
    rows = await con.fetch(f"SELECT {CAPTURE_COLUMNS} FROM dbproxy.capture_log WHERE xid = $1 ORDER BY seq", xid)
    return [change_from_row(r) for r in rows]


#: Tables re-created by an undo (of DROP TABLE, or a rebuild) live on under a new oid: old -> newest.
REMAP_SQL = """
WITH RECURSIVE m(old_oid, new_oid, depth) AS (
    SELECT r.old_oid, r.new_oid, 1 FROM dbproxy.relation_map r WHERE r.old_oid = ANY($1::oid[])
    UNION ALL SELECT m.old_oid, r.new_oid, m.depth + 1 FROM m JOIN dbproxy.relation_map r ON r.old_oid = m.new_oid
    WHERE m.depth < 100)
SELECT DISTINCT ON (old_oid) old_oid, new_oid FROM m ORDER BY old_oid, depth DESC
"""


async def load_tables(con: asyncpg.Connection, oids: set[int],
                      remap: dict[int, int] | None = None) -> dict[int, TableInfo]:
    """Catalog facts of tables by the oid their changes were captured under (a table an undo
    re-created is found by its new oid: `remap`, else `dbproxy.relation_map`, which only the
    proxy's role reads)."""
    if not oids:
        return {}
    rows = await con.fetch(TABLE_INFO_SQL, sorted(oids))
    out = {int(r[0]): table_info_from_row(r) for r in rows}
    missing = oids - set(out)
    if missing:
        moved: dict[int, int] = {}
        if remap is None and await _may_read_map(con):
            moved = {int(r[0]): int(r[1]) for r in await con.fetch(REMAP_SQL, sorted(missing))}
        for old, new in (remap or {}).items():
            if old in missing:
                moved[old] = new
        if moved:
            rows = await con.fetch(TABLE_INFO_SQL, sorted(set(moved.values())))
            by_new = {int(r[0]): table_info_from_row(r) for r in rows}
            out.update({old: by_new[new] for old, new in moved.items() if new in by_new})
    return out


async def _may_read_map(con: asyncpg.Connection) -> bool:
    """Whether the relation map exists and this connection's role may read it (a table's owner
    running undo directly is granted capture_log and undo_records; it needs the map only once an
    earlier undo re-created a table)."""
    return bool(await con.fetchval(
        "SELECT pg_catalog.to_regclass('dbproxy.relation_map') IS NOT NULL AND "
        "pg_catalog.has_table_privilege('dbproxy.relation_map', 'SELECT')"))


async def plan_for(con: asyncpg.Connection, xids: list[int], direction: Direction,
                   proposed: dict[int, dict[int, str]] | None = None, label: Label = xid_label) -> Plan:
    """One plan covering `xids` (given newest first for undo): their steps in order. `proposed`:
    per xid, verified model-made SQL for the DDL the rules cannot invert, by capture seq."""
    per_tx = {x: await load_changes(con, x) for x in xids}
    tables = await load_tables(con, {c.rel for cs in per_tx.values() for c in cs if c.rel is not None and c.is_row})
    merged = Plan(direction)
    order = xids if direction == "undo" else list(reversed(xids))
    for x in order:
        p = build(per_tx[x], tables, direction=direction)
        fills = proposed.get(x) if proposed and direction == "undo" else None
        if fills and p.gaps and max(g.seq for g in p.gaps) in fills and set(fills) <= {g.seq for g in p.gaps}:
            # One proposal covers every gap, placed at the newest (as verified at commit): the
            # others need no step. A proposal that does not match the gaps is not used.
            p = fill(p, {g.seq: fills.get(g.seq) for g in p.gaps})
        merged.steps += p.steps
        merged.irreversible += [f"{label(x)}: {r}" for r in p.irreversible]
        merged.notes += [n for n in p.notes if n not in merged.notes]
        merged.changes += p.changes
    return merged


def _count(status: str) -> int:
    """Rows a statement changed, from its command tag (0 for DDL)."""
    return tag_rows(status) or 0


async def _replica(con: asyncpg.Connection) -> bool:
    """`session_replication_role = replica` for this transaction, when the role may set it."""
    try:
        async with con.transaction():
            await con.execute("SET LOCAL session_replication_role = replica")
        return True
    except asyncpg.PostgresError:
        return False


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def quiet_triggers(con: asyncpg.Connection, tables: set[str], *,
                         replica: bool | None = None) -> tuple[str, list[tuple[int, str, str]]]:
    """Suppress user triggers for this transaction; returns (how, (table oid, trigger, tgenabled)
    to re-enable). `replica`: whether `_replica` already set the replication role (else tried here)."""
    if replica is None:
        replica = await _replica(con)
    if not tables:
        return ("session_replication_role = replica" if replica else "no tables with triggers"), []
    # Under replica, triggers set ENABLE ALWAYS ('A') or ENABLE REPLICA ('R') still fire: those
    # must be disabled too. Without it, the ordinary ('O') and ALWAYS ones fire.
    states = ["A", "R"] if replica else ["O", "A"]
    rows = await con.fetch(
        "SELECT t.tgrelid::regclass::text, t.tgname, t.tgrelid, t.tgenabled::text FROM pg_catalog.pg_trigger t "
        "WHERE t.tgrelid = ANY($1::regclass[]) AND NOT t.tgisinternal AND t.tgenabled::text = ANY($2::text[]) "
        "AND t.tgname <> ALL($3::text[])", sorted(tables), states, [ROW_TRIGGER, TRUNCATE_TRIGGER])
    enable: list[tuple[int, str, str]] = []
    for rel, name, oid, mode in rows:
        ident = '"' + name.replace('"', '""') + '"'
        try:
            async with con.transaction():
                await con.execute(f"ALTER TABLE {rel} DISABLE TRIGGER {ident}")
        except asyncpg.PostgresError as e:
            raise UndoError(f"cannot keep trigger {name} on {rel} from firing during the undo: {e}. "
                            "Run undo as the table owner or a role that may set session_replication_role.") from e
        enable.append((int(oid), name, mode))
    if replica:
        return "session_replication_role = replica" + (
            f", and disabled {len(rows)} ALWAYS/REPLICA user trigger(s) for the transaction" if rows else ""), enable
    return (f"disabled {len(rows)} user trigger(s) for the transaction" if rows else "no user triggers"), enable


_ENABLE = {"O": "ENABLE", "A": "ENABLE ALWAYS", "R": "ENABLE REPLICA"}


async def enable_triggers(con: asyncpg.Connection, enable: list[tuple[int, str, str]]) -> None:
    """Re-enable what `quiet_triggers` disabled. By oid, not by the name at the time: an undone
    RENAME may have renamed the table meanwhile. Each gets its own mode back (ALWAYS, REPLICA)."""
    for oid, name, mode in enable:
        rel = await con.fetchval("SELECT c.oid::regclass::text FROM pg_catalog.pg_class c WHERE c.oid = $1", oid)
        if rel is not None:
            ident = '"' + name.replace('"', '""') + '"'
            await con.execute(f"ALTER TABLE {rel} {_ENABLE[mode]} TRIGGER {ident}")


async def _probe(con: asyncpg.Connection, step: Step, t: RowTemplates) -> bool:
    """Is the row already in the step's target state?"""
    if step.kind == "remove":
        return bool(t.probe_absent and await con.fetchval(t.probe_absent, step.params[0]))
    assert step.target is not None
    return bool(await con.fetchval(t.probe_equal, step.target))


async def _current(con: asyncpg.Connection, step: Step, t: RowTemplates) -> list[str]:
    img = step.expect or step.target
    if t.current is None or img is None:
        return []
    return [r[0] for r in await con.fetch(t.current, img)]


async def _force(con: asyncpg.Connection, step: Step, t: RowTemplates) -> bool:
    if t.force_remove is None or t.force_revert is None:
        return False
    if step.kind == "remove":
        return _count(await con.execute(t.force_remove, step.params[0])) > 0
    if step.kind == "revert":
        if _count(await con.execute(t.force_revert, *step.params)) > 0:
            return True
        # The row was deleted since: forcing means "make it the target image", so put it back
        # (unless another row holds the target's key: that stays a conflict).
        return _count(await con.execute(t.restore, step.params[1])) > 0
    await con.execute(t.force_remove, step.params[0])
    return _count(await con.execute(t.restore, step.params[0])) > 0


async def run(con: asyncpg.Connection, xids: list[int], *, direction: Direction = "undo", force: bool = False,
              dry_run: bool = False, by: str = "", proposed: dict[int, dict[int, str]] | None = None,
              act_as: str | None = None, label: Label = xid_label) -> Result:
    """Undo (newest first) or redo `xids` in one transaction on `con` (`proposed`: see plan_for).
    `act_as`: change the user tables as this role (`SET LOCAL ROLE`), reading and marking the
    proxy's own state as the connection's role: code a table carries (constraints, index
    expressions, generated columns) then runs with the privileges of the role that owns the data,
    never with the proxy's."""
    result = Result(direction, list(xids), dry_run=dry_run)
    tx = con.transaction()
    await tx.start()
    try:
        for k, v in IMAGE_SETTINGS.items():
            await con.execute(f"SELECT pg_catalog.set_config('{k}', $1, true)", v)
        await con.execute("SELECT pg_catalog.set_config('dbproxy.capture', 'off', true)")
        marks = await con.fetch("SELECT xid, undone_at IS NOT NULL AS undone FROM dbproxy.undo_records "
                                "WHERE xid = ANY($1::bigint[]) FOR UPDATE", xids)
        state = {int(r[0]): bool(r[1]) for r in marks}
        for x in xids:
            if x not in state:
                raise UndoError(f"{label(x)} was not committed with an undo record")
            if state[x] != (direction == "redo"):
                raise UndoError(f"{label(x)} is {'already undone' if state[x] else 'not undone'}; "
                                f"nothing to {direction}")
        plan = await plan_for(con, xids, direction, proposed, label)
        result.irreversible, result.notes, result.steps = plan.irreversible, plan.notes, len(plan.steps)
        if plan.irreversible:
            raise UndoError("no exact " + direction + ": " + "; ".join(plan.irreversible))
        tables = await load_tables(con, {s.rel for s in plan.steps if s.rel is not None and s.kind in _ROW_KINDS})
        # Tables earlier undos made again, read now: later, acting as the agents' role, it cannot.
        may_read = await _may_read_map(con)
        known = {int(r[0]): int(r[1]) for r in await con.fetch(
            REMAP_SQL, sorted({s.rel for s in plan.steps if s.rel is not None}))} if may_read else {}
        lost = sorted({s.table or str(s.rel) for s in plan.steps if s.kind in _ROW_KINDS and s.rel not in tables})
        if lost and not may_read:
            raise UndoError(f"{', '.join(lost)} not found: an earlier undo may have made them again, which "
                            "dbproxy.relation_map records, and this role may not read it")
        replica = await _replica(con)
        if act_as:
            await con.execute(f"SET LOCAL ROLE {_ident(act_as)}")
        result.triggers, enable = await quiet_triggers(con, {t.name for t in tables.values()}, replica=replica)
        run_ = _Run(con, result, force=force, act_as=act_as, xids=xids, label=label, remap=dict(known))
        await _apply(run_, plan.steps, tables)
        await enable_triggers(con, enable)
        if act_as:
            await con.execute("RESET ROLE")
        for old, new in run_.remap.items():
            if known.get(old) == new:
                continue
            try:
                await con.execute("INSERT INTO dbproxy.relation_map (old_oid, new_oid) VALUES ($1, $2) ON CONFLICT "
                                  "(old_oid) DO UPDATE SET new_oid = excluded.new_oid, at = now()", old, new)
            except asyncpg.InsufficientPrivilegeError as e:
                raise UndoError(f"{await _name(con, new)} was made again, and this role may not record that in "
                                f"dbproxy.relation_map ({e}): run the undo through the proxy, or grant SELECT, "
                                "INSERT, UPDATE on dbproxy.relation_map") from e
            # Made again under the replication role, where event triggers do not fire: capture it
            # (as the proxy's role; a table it may not put triggers on stays uncaptured, as at install).
            try:
                async with con.transaction():
                    await con.execute("SELECT dbproxy.attach($1::oid::regclass)", new)
            except asyncpg.PostgresError as e:
                result.notes.append(f"{await _name(con, new)} was made again but is not captured: {e}")
        if result.conflicts or dry_run:
            await tx.rollback()
            return result
        if direction == "undo":
            await con.execute("UPDATE dbproxy.undo_records SET undone_at = now(), undone_by = $2 "
                              "WHERE xid = ANY($1::bigint[])", xids, by or None)
        else:
            await con.execute("UPDATE dbproxy.undo_records SET undone_at = NULL, undone_by = NULL, redone_at = now() "
                              "WHERE xid = ANY($1::bigint[])", xids)
        await tx.commit()
        result.applied = True
        return result
    except BaseException:
        if not con.is_closed() and con.is_in_transaction():
            await tx.rollback()
        raise


_ROW_KINDS = frozenset({"remove", "restore", "revert"})


@dataclass
class _Run:
    """One undo or redo being applied: where, how, and what it learned on the way."""

    con: asyncpg.Connection
    result: Result
    force: bool = False
    act_as: str | None = None
    xids: list[int] = field(default_factory=list)
    label: Label = xid_label
    remap: dict[int, int] = field(default_factory=dict)  # old table oid -> its re-created table's
    later: list[int] = field(default_factory=list)  # transactions found writing since (written_since)


async def _name(con: asyncpg.Connection, oid: int) -> str:
    return str(await con.fetchval("SELECT pg_catalog.format('%s', $1::oid::regclass)", oid))


async def _refresh(run: _Run, steps: list[Step], tables: dict[int, TableInfo]) -> list[Step]:
    """Row steps rebuilt from the catalog as it is now (after a DDL step)."""
    fresh = await load_tables(run.con, {s.rel for s in steps if s.rel is not None and s.kind in _ROW_KINDS},
                              run.remap)
    tables.update(fresh)
    return rebuild(steps, fresh)


async def _check(run: _Run, step: Step) -> str | None:
    """A conflict check: None when fine, else what is wrong. `written_since` reads the capture
    log, so it runs as the connection's (the proxy's) role; plain checks as the agents'."""
    con = run.con
    if step.kind == "written_since":
        if run.act_as:
            await con.execute("RESET ROLE")
        try:
            found = await con.fetchval(step.sql, *step.params, run.xids)
        finally:
            if run.act_as:
                await con.execute(f"SET LOCAL ROLE {_ident(run.act_as)}")
        if not found:
            return None
        run.later = [int(x) for x in found]
        who = ", ".join(run.label(int(x)) for x in found)
        return f"{step.table} would be lost: written since by {who} (undo those first, or use --force)"
    answer = await con.fetchval(step.sql, *step.params)
    return None if answer is None else str(answer)


async def _privileges(run: _Run, step: Step) -> str | None:
    """An owner or privilege statement (`ALTER ... OWNER TO`, GRANT, REVOKE): as the agents' role
    when it may (it owns what it made again), else as the proxy's own role, which owns the undo.
    No user code runs in these statements, so the proxy's role runs nothing an agent wrote.
    Returns why it failed, or None."""
    con = run.con
    try:
        async with con.transaction():
            await con.execute(step.sql)
        return None
    except asyncpg.InsufficientPrivilegeError as e:
        if not run.act_as:
            return f"the statement {step.sql!r} failed: {e}"
    try:
        await con.execute("RESET ROLE")
        async with con.transaction():
            await con.execute(step.sql)
        return None
    except asyncpg.PostgresError as e:
        return (f"the statement {step.sql!r} failed, as the agents' role and as the proxy's: {e} (restoring "
                "an owner other than the agents' role needs a proxy role that may SET ROLE to it)")
    finally:
        await con.execute(f"SET LOCAL ROLE {_ident(run.act_as)}")


async def _apply(run: _Run, steps: list[Step], tables: dict[int, TableInfo]) -> None:
    con, result, force = run.con, run.result, run.force
    queue = list(steps)
    shown: set[int] = set()

    def show(step: Step) -> None:
        """Dry runs list each step's SQL once, in the order it ran, as rebuilt after DDL."""
        if result.dry_run and (step.seq not in shown or step.kind not in _ROW_KINDS):
            shown.add(step.seq)
            if step.kind not in ("check", "written_since", "remap"):
                result.sql.append(step.readable())

    while queue:
        deferred: list[tuple[Step, str]] = []
        i = 0
        while i < len(queue):
            step = queue[i]
            i += 1
            if step.kind in ("check", "written_since"):
                problem = await _check(run, step)
                if problem is not None:
                    conflict = Conflict(step.seq, step.table, step.kind, None, [str(x) for x in run.later], problem)
                    run.later = []
                    if force:
                        result.overridden.append(replace(conflict, message="overridden (--force): " + problem))
                        result.forced += 1
                    else:
                        result.conflicts.append(conflict)
                continue
            if step.kind == "remap":
                new = await con.fetchval(step.sql, *step.params)
                if new is not None and step.rel is not None:
                    run.remap[step.rel] = int(new)
                continue
            if step.kind == "privileges":
                problem = await _privileges(run, step)
                show(step)
                if problem is None:
                    result.done += 1
                    continue
                result.conflicts.append(Conflict(step.seq, step.table, step.kind, None, [], problem))
                return
            try:
                async with con.transaction():
                    n = _count(await con.execute(step.sql, *step.params))
                    show(step)
                    if step.kind in ("ddl", "data"):
                        result.done += 1
                        if step.kind == "ddl":
                            rest = await _refresh(run, [s for s, _ in deferred] + queue[i:], tables)
                            deferred = [(s, m) for s, (_, m) in zip(rest, deferred, strict=False)]
                            queue[i:] = rest[len(deferred):]
                        continue
                    if n > 0:
                        result.done += 1
                        continue
                    t = templates(tables[step.rel]) if step.rel is not None and step.rel in tables else None
                    if t is not None and await _probe(con, step, t):
                        result.skipped += 1
                        continue
                    current = await _current(con, step, t) if t is not None else []
                    if force and t is not None and await _force(con, step, t):
                        result.forced += 1
                        result.overridden.append(Conflict(step.seq, step.table, step.kind, step.expect, current,
                                                          "overridden (--force): " + _conflict_message(step, current)))
                        continue
                    result.conflicts.append(Conflict(step.seq, step.table, step.kind, step.expect, current,
                                                     _conflict_message(step, current)))
            except asyncpg.PostgresError as e:
                if getattr(e, "sqlstate", "") == _FK_VIOLATION and step.kind in _ROW_KINDS:
                    deferred.append((step, str(e)))
                    continue
                show(step)
                what = f"{type(e).__name__}: {e}"
                if step.kind in ("ddl", "data"):
                    what = f"the statement {step.sql[:200]!r} failed: {e}"
                result.conflicts.append(Conflict(step.seq, step.table, step.kind, step.expect, [], what))
                if step.kind in ("ddl", "data"):
                    return  # later steps depend on it: stop here (everything is rolled back)
        if len(deferred) == len(queue):
            for step, msg in deferred:
                show(step)
                result.conflicts.append(Conflict(step.seq, step.table, step.kind, step.expect, [], msg))
            return
        queue = [s for s, _ in deferred]


def _conflict_message(step: Step, current: list[str]) -> str:
    if step.kind == "restore":
        return "a row with this key exists again, with other values" if current else "could not restore the row"
    if not current:
        return "the row no longer exists (deleted since)" if step.rel else "not found"
    return "the row was changed since"

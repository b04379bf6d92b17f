"""Inverses of announced DDL statements, from the state kept before them (`inverse.ddl_state`).

A statement the proxy announced with `dbproxy.before_ddl` leaves a *group* in the capture log:
its header (text, `search_path`), the definition of every object it could change from before
(`before` events) and after (`after` events, written when the command ended; none for what it
dropped), the rows, column values and sequence positions it destroys (`R`, `C`, `S` changes),
and `limit` / `uncaptured` events when some of that could not be kept.

`invert_group` turns one group into steps, in the places undo's newest-first order runs them:

1. at the group's last seq: the statements that bring the objects back before their data
   (rename back, drop what the statement added, change column types back, re-add columns,
   re-create dropped schemas, types, functions, sequences, tables and views);
2. at the data's own seqs: the rows of dropped tables and the values of dropped or retyped
   columns, as bind parameters (JSON arrays of row images, 1,000 rows per step);
3. at the header's seq: what goes after the data (keys, indexes, foreign keys, triggers,
   policies, materialized views, sequence positions, comments, privileges, owners);
4. at seq 0, once the whole transaction is undone: a materialized view the statement refreshed
   when only the transaction's earlier writes had made it stale, recomputed and checked against
   the digest of the contents it had.

A redo re-runs the statement itself under the `search_path` it ran with. Undo of objects the
statement created drops them, after checking that no later transaction wrote to them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from inverse import ddl_render as render
from inverse.images import Change, TableInfo

#: Row images per data step.
CHUNK = 1000
_PG_CLASS = 1259  # pg_class's oid: relations in object keys


@dataclass(frozen=True)
class DdlStep:
    seq: int
    kind: str  # "ddl" | "privileges" | "data" | "check" | "written_since" | "remap" (see inverse.undo_plan)
    sql: str
    params: tuple[str, ...] = ()
    table: str | None = None
    rel: int | None = None


@dataclass
class Group:
    """What one announced statement left in the capture log."""

    id: int
    header: Change
    statement: str = ""
    kind: str = ""
    search_path: str | None = None
    before: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> before event
    after: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # key -> desc (None: gone)
    events: list[Change] = field(default_factory=list)  # end/drop/after/data/limit/uncaptured events
    rows: list[Change] = field(default_factory=list)  # R / C / S changes

    @property
    def first(self) -> int:
        return self.header.seq

    @property
    def last(self) -> int:
        seqs = [e.seq for e in self.events] + [r.seq for r in self.rows] + [self.header.seq]
        return max(seqs)

    def dropped_identities(self) -> list[str]:
        return [str((e.ddl or {}).get("identity")) for e in self.events
                if (e.ddl or {}).get("event") == "drop" and (e.ddl or {}).get("original")]


def key_of(k: Any) -> str:
    """A root's key as text: "classid/objid" (default privileges: "classid/role/schema/type")."""
    if isinstance(k, list):
        parts = [str(x) for x in k]
        if len(parts) == 4:
            return "/".join(parts)
        return "/".join(parts[:2])
    return str(k)


def groups(changes: list[Change]) -> tuple[list[Group], list[Change]]:
    """The announced groups among `changes`, and the DDL events that belong to none (DDL run
    where the proxy could not announce it: inside functions, or by older clients)."""
    by_id: dict[int, Group] = {}
    loose: list[Change] = []
    for c in changes:
        d = c.ddl or {}
        if c.op == "X" and d.get("event") == "before_ddl":
            g = Group(int(d["group"]), c, str(d.get("statement") or ""), str(d.get("kind") or ""),
                      d.get("search_path"))
            by_id[g.id] = g
    for c in changes:
        d = c.ddl or {}
        if c.op in ("R", "C", "S"):
            g = by_id.get(int(d.get("group", -1)))
            if g is not None:
                g.rows.append(c)
            continue
        if c.op != "X" or d.get("event") == "before_ddl":
            continue
        event = d.get("event")
        if event == "before":
            g = by_id.get(int(d.get("group", -1)))
            if g is not None:
                g.before[key_of(d.get("key"))] = d
            continue
        if event in ("data", "limit", "uncaptured"):
            g = by_id.get(int(d.get("group", -1)))
            if g is not None:
                g.events.append(c)
            continue
        owner = d.get("before_group")
        g = by_id.get(int(owner)) if owner is not None else None
        if g is None:
            if event != "after":
                loose.append(c)
            continue
        g.events.append(c)
        if event == "after":
            g.after[key_of(d.get("key"))] = d.get("desc")
    return sorted(by_id.values(), key=lambda g: g.first), loose


@dataclass
class GroupInverse:
    steps: list[DdlStep] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    created_tables: set[int] = field(default_factory=set)  # oids of tables the statement created
    objects: tuple[tuple[str, str], ...] = ()  # (type, identity) of what it touched, for a proposer


def _desc_oid(d: dict[str, Any] | None) -> int:
    try:
        return int((d or {}).get("oid") or 0)
    except (TypeError, ValueError):
        return 0


def _images(rows: list[Change]) -> list[str]:
    return [r.old for r in sorted(rows, key=lambda r: r.seq) if r.old is not None]


def _chunks(images: list[str]) -> list[str]:
    return ["[" + ",".join(images[i:i + CHUNK]) + "]" for i in range(0, len(images), CHUNK)]


def invert_group(g: Group, *, created_before: set[str], created_by: str | None = None,
                 changed_before: bool = False) -> GroupInverse:
    """The undo of one announced statement. `created_before`: keys of objects the transaction
    both created and dropped again (nothing of them needs undoing); `changed_before`: the
    transaction changed something before this statement."""
    out = GroupInverse()
    for e in g.events:
        d = e.ddl or {}
        if d.get("event") == "limit":
            what = d.get("what", "data")
            size = f"{d['rows']} rows" if d.get("rows") is not None else f"{d.get('bytes')} bytes"
            out.reasons.append(f"{g.statement or 'a DDL statement'}: the {what} it destroys ({size} of "
                               f"{d.get('name') or 'a table'}) exceed ddl_snapshot_limit, so they were not kept")
        elif d.get("event") == "uncaptured":
            out.reasons.append(f"{g.statement or 'a DDL statement'}: the state before it could not be kept: "
                               f"{d.get('reason')}")
    if out.reasons:
        return out
    rows_by_rel: dict[int, list[Change]] = defaultdict(list)
    seq_state: dict[int, dict[str, Any]] = {}
    matview_state: dict[int, dict[str, Any]] = {}
    for r in g.rows:
        if r.op == "S" and r.rel is not None and r.old is not None:
            state = json.loads(r.old)
            if (r.ddl or {}).get("kind") == "matview":
                matview_state[r.rel] = state
            else:
                seq_state[r.rel] = state
        elif r.rel is not None:
            rows_by_rel[r.rel].append(r)
    pre: list[tuple[int, str]] = []
    post: list[tuple[int, str]] = []
    data: list[DdlStep] = []
    checks: list[DdlStep] = []
    remaps: list[DdlStep] = []
    drops: list[tuple[int, str]] = []  # (seq of creation, statement) of what the statement created
    last: list[DdlStep] = []  # what runs once the whole transaction is undone
    objects: list[tuple[str, str]] = []
    keys = list(dict.fromkeys([*g.before, *g.after]))
    skip: set[str] = set()
    for key in keys:
        before = (g.before.get(key) or {}).get("desc")
        after = g.after[key] if key in g.after else before
        if before and after and before.get("kind") == "table" and before != after \
                and (g.before.get(key) or {}).get("role") != "context" and render.alter(after, before).rebuild:
            skip |= _rebuild(key, before, after, g, rows_by_rel, matview_state, pre, post, data, checks, remaps,
                             out)
    for key in keys:
        if key in skip or key in created_before:
            continue
        ev = g.before.get(key) or {}
        if ev.get("role") == "context":
            continue  # only needed to rebuild a table
        before = ev.get("desc") if ev else None
        # Described before but not after: the command never ended (TRUNCATE fires no DDL
        # event), so it did not change the object.
        after = g.after[key] if key in g.after else before
        target = before or after or {}
        objects.append((str(target.get("kind")), str(target.get("qualified"))))
        if before is None and after is None:
            continue
        if before is None:
            # Created by the statement.
            assert after is not None
            if after.get("kind") == "table":
                out.created_tables.add(_desc_oid(after))
            if after.get("kind") == "sequence" and (after.get("owned_by") or after.get("identity_of")):
                continue
            stmt = render.drop(after)
            if stmt is not None:
                drops.append((_desc_oid(after), stmt))
                if after.get("kind") == "table":
                    checks.append(_not_written_check(after, g.last, f"table {after.get('qualified')}"))
            continue
        if after is None:
            # Dropped by the statement.
            parts = _recreate(before, rows_by_rel, seq_state, matview_state, created_by, data, g)
            out.reasons += parts.reasons
            pre += parts.pre
            post += parts.post
            if before.get("kind") == "table":
                remaps.append(DdlStep(g.last, "remap", "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
                                      (str(before["qualified"]),), table=str(before["qualified"]),
                                      rel=_desc_oid(before)))
            continue
        has_values = any(r.op == "C" for r in rows_by_rel.get(_desc_oid(before), []))
        if before == after and not has_values:
            continue
        parts = render.alter(after, before)
        out.reasons += parts.reasons
        had = {int(c["attnum"]) for c in render._list(before, "columns")}
        added = sorted(str(c["name"]) for c in render._list(after, "columns") if int(c["attnum"]) not in had)
        if added and after.get("kind") == "table":
            what = f"column(s) {', '.join(added)} of {after.get('qualified')}"
            checks.append(_not_written_check(after, g.last, what))
        if parts.rebuild:
            out.reasons.append(f"a column of {before.get('qualified')} comes back in the middle of the table, which "
                               "needs the table rebuilt (not supported yet)")
            continue
        pre += parts.pre
        post += parts.post
        back = list(parts.columns_back)
        # Values kept for an ALTER COLUMN TYPE come back even when the type stayed the same
        # (`TYPE jsonb USING payload - 'n'` rewrites every value).
        kept_columns = {str(x) for r in rows_by_rel.get(_desc_oid(before), []) if r.op == "C"
                        for x in ((r.ddl or {}).get("columns") or [])}
        for col in render._list(before, "columns"):
            if str(col["name"]) in kept_columns and all(c["name"] != col["name"] for c in back) \
                    and col.get("generated") != "s" \
                    and any(int(a["attnum"]) == int(col["attnum"]) for a in render._list(after, "columns")):
                back.append(col)
        if back:
            data += _column_data(before, back, rows_by_rel.get(_desc_oid(before), []), g, out, checks)
        oid = _desc_oid(before)
        if before.get("kind") == "sequence" and oid in seq_state:
            post.append((render.POST_LAST, render.setval_sql(str(before["qualified"]), seq_state[oid]["last_value"],
                                                             seq_state[oid]["is_called"])))
        for col in render._list(before, "columns"):
            s = col.get("identity_sequence") or {}
            if s.get("oid") is not None and int(s["oid"]) in seq_state:
                st = seq_state[int(s["oid"])]
                post.append((render.POST_LAST, render.setval_sql(str(s["name"]), st["last_value"], st["is_called"])))
    if g.kind == "truncate_restart":
        for r in g.rows:
            if r.op == "S" and r.old is not None and (r.ddl or {}).get("name"):
                st = json.loads(r.old)
                post.append((render.POST_LAST, render.setval_sql(str((r.ddl or {})["name"]), st["last_value"],
                                                                 st["is_called"])))
    if g.kind == "RefreshMatViewStmt":
        for mv, st in matview_state.items():
            if not st.get("populated") or st.get("fresh"):
                continue
            desc = (g.before.get(f"{_PG_CLASS}/{mv}") or {}).get("desc") or {}
            name = str(desc.get("qualified") or st.get("name"))
            if not changed_before:
                # Nothing in the transaction came before: the view was stale before it.
                out.reasons.append(f"REFRESH MATERIALIZED VIEW replaced contents of {name} that its query no longer "
                                   "gives; PostgreSQL can only recompute a materialized view, not write rows into it")
                continue
            # Stale only because of what the transaction changed before: once all of it is undone
            # (seq 0 runs last), its query may give the old contents again. Recompute, and check
            # the contents are the ones kept (their digest); if not, the undo stops there.
            post = [p for p in post if not p[1].startswith(f"REFRESH MATERIALIZED VIEW {name}")]
            last.append(DdlStep(0, "ddl", f"REFRESH MATERIALIZED VIEW {name}"))
            last.append(DdlStep(0, "check", render.matview_digest_check_sql(name), (str(st.get("digest")),),
                                table=f"materialized view {name}"))
    for e in g.events:
        d = e.ddl or {}
        if d.get("event") == "drop" and d.get("original"):
            k = key_of(d.get("key"))
            if k not in g.before and not _covered(d, g):
                out.reasons.append(f"{d.get('tag')} dropped {d.get('object_type')} {d.get('identity')}, whose "
                                   "definition was not kept")
    out.objects = tuple(dict.fromkeys(objects))
    if out.reasons:
        return out
    top, bottom = g.last, g.first
    pre.sort(key=lambda p: p[0])
    post.sort(key=lambda p: p[0])
    drops.sort(key=lambda d: -d[0])
    steps: list[DdlStep] = [*checks]
    steps += [DdlStep(top, "ddl", s) for _, s in drops]
    if pre or post or data:
        steps.append(DdlStep(top, "ddl", "SELECT pg_catalog.set_config('check_function_bodies', 'off', true)"))
    steps += [DdlStep(top, "ddl", s) for _, s in pre]
    steps += remaps
    steps += data
    steps += [DdlStep(bottom, "privileges" if render.is_privileges(s) else "ddl", s) for _, s in post]
    out.steps = steps + last
    return out


def _rebuild(key: str, before: dict[str, Any], after: dict[str, Any], g: Group,
             rows_by_rel: dict[int, list[Change]], matview_state: dict[int, dict[str, Any]],
             pre: list[tuple[int, str]], post: list[tuple[int, str]],
             data: list[DdlStep], checks: list[DdlStep], remaps: list[DdlStep], out: GroupInverse) -> set[str]:
    """A column comes back in the middle of a table: PostgreSQL only adds columns at the end, so
    the table is made again from its definition. Its rows are copied aside, the table dropped
    with everything that depends on it (`context`: described before the statement), then all of
    it made again, the rows put back with the kept column values, sequences where they were.
    Returns the keys of objects this re-creates (the regular inverse leaves them alone)."""
    oid = _desc_oid(before)
    now_name = str(after["qualified"])
    keep = render.ident(f"dbproxy_keep_{oid}")
    done = {key}
    context = {k: ev for k, ev in g.before.items() if str(ev.get("rebuild_of")) == str(oid) and k != key}
    pre.append((render.PRE_SURVIVOR - 5,
                f"CREATE TEMPORARY TABLE {keep} ON COMMIT DROP AS SELECT * FROM ONLY {now_name}"))
    sequences: list[tuple[str, str]] = []  # (temp table, sequence name afterwards)
    for col in render._list(after, "columns"):
        s = col.get("identity_sequence") or {}
        target = next((c for c in render._list(before, "columns") if c.get("attnum") == col.get("attnum")), None)
        if s.get("name") and target is not None and target.get("identity"):
            temp = render.ident(f"dbproxy_seq_{s['oid']}")
            pre.append((render.PRE_SURVIVOR - 5, f"CREATE TEMPORARY TABLE {temp} ON COMMIT DROP AS SELECT last_value, "
                                                 f"is_called FROM {s['name']}"))
            sequences.append((temp, str((target.get("identity_sequence") or {}).get("name") or s["name"])))
    recreate: list[dict[str, Any]] = []
    for k, ev in context.items():
        desc = ev.get("desc") or {}
        now = g.after.get(k, desc)
        if desc.get("kind") == "sequence" and desc.get("identity_of"):
            continue  # kept with its identity column above
        parts = [p for p in (ev.get("parts") or []) if isinstance(p, list)]
        whole = any(str(p[0]) == str(desc.get("key", [None])[0]) and str(p[1]) == str(_desc_oid(desc))
                    and int(p[2]) == 0 for p in parts)
        if now is None:
            continue  # the statement dropped it: the regular inverse makes it again
        if whole:
            if desc.get("kind") == "table":
                out.reasons.append(f"table {desc.get('qualified')} depends on {before['qualified']}, which must be "
                                   "rebuilt; its rows would be lost")
                continue
            if desc.get("kind") == "matview":
                # Made again from its query once the table is back: exact when its contents were
                # what the query gave (fresh) or it had none (unpopulated).
                st = matview_state.get(_desc_oid(desc))
                if st is None or (st.get("populated") and not st.get("fresh")):
                    why = "were not checked" if st is None else "are from an earlier REFRESH that its query no " \
                                                                "longer gives"
                    out.reasons.append(f"materialized view {desc.get('qualified')} depends on {before['qualified']}, "
                                       f"which must be rebuilt; its contents {why}, so they would be lost")
                    continue
            if desc.get("kind") == "sequence":
                temp = render.ident(f"dbproxy_seq_{_desc_oid(desc)}")
                pre.append((render.PRE_SURVIVOR - 5, f"CREATE TEMPORARY TABLE {temp} ON COMMIT DROP AS SELECT "
                                                     f"last_value, is_called FROM {now['qualified']}"))
                sequences.append((temp, str(desc["qualified"])))
            recreate.append(desc)
            done.add(k)
            continue
        # A part of an object that stays (a foreign key of another table, a trigger, a policy):
        # dropped with the table, made again from the object's definition.
        only: set[str] = set()
        for p in parts:
            part_oid, sub = int(p[1]), int(p[2])
            if sub > 0 and str(_desc_oid(now)) == str(part_oid):
                out.reasons.append(f"column {sub} of {desc.get('qualified')} depends on {before['qualified']}; "
                                   "rebuilding it would lose its values")
                continue
            for kind, field_ in (("constraint", "constraints"), ("index", "indexes"), ("trigger", "triggers"),
                                 ("policy", "policies"), ("rule", "rules"), ("statistics", "statistics")):
                for item in render._list(now, field_):
                    if int(item.get("oid") or 0) == part_oid:
                        want = next((x for x in render._list(desc, field_) if x.get("name") == item.get("name")), item)
                        only.add(f"{kind}:{want['name']}")
        if only:
            post.extend(render._sub_objects(str(desc["qualified"]), desc, only=only))
    pre.append((render.PRE_SURVIVOR - 4, f"DROP TABLE {now_name} CASCADE"))
    back = [c for c in render._list(before, "columns")
            if not any(a.get("attnum") == c.get("attnum") for a in render._list(after, "columns"))]
    parts = render.create_table(before, plain={str(c["name"]) for c in back if c.get("generated") != "s"})
    out.reasons += parts.reasons
    pre += parts.pre
    post += parts.post
    for desc in recreate:
        more = render.create(desc)
        out.reasons += more.reasons
        pre += more.pre
        post += more.post
    kept = [(a, c) for c in render._list(before, "columns") if c.get("generated") != "s"
            for a in render._list(after, "columns") if a.get("attnum") == c.get("attnum")]
    override = " OVERRIDING SYSTEM VALUE" if any(c.get("identity") for _, c in kept) else ""
    into = ", ".join(render.ident(c["name"]) for _, c in kept)
    source = ", ".join(render.ident(a["name"]) for a, _ in kept)
    pre.append((render.PRE_TABLE + 1,
                f"INSERT INTO {before['qualified']} ({into}){override} SELECT {source} FROM {keep}"))
    data += _column_data(before, [c for c in back if c.get("generated") != "s"], rows_by_rel.get(oid, []), g, out,
                         checks)
    for temp, name in sequences:
        post.append((render.POST_LAST, f"SELECT pg_catalog.setval({render.literal(name)}, last_value, is_called) "
                                       f"FROM {temp}"))
    remaps.append(DdlStep(g.last, "remap", "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
                          (str(before["qualified"]),), table=str(before["qualified"]), rel=oid))
    return done


def _covered(drop_event: dict[str, Any], g: Group) -> bool:
    """Is a dropped object part of something described before (a table's constraint, ...)?"""
    identity = str(drop_event.get("identity") or "")
    for ev in g.before.values():
        desc = ev.get("desc") or {}
        q = str(desc.get("qualified") or "")
        if q and (identity == q or identity.endswith(" on " + q) or identity.startswith(q + ".")):
            return True
    return drop_event.get("object_type") in ("toast table", "index", "type", "default value", "table constraint",
                                              "trigger", "rule", "policy", "table column", "sequence")


#: A check the executor runs as the proxy's role (it reads the capture log), with the transaction
#: ids being undone in this run appended as the last parameter.
WRITTEN_SINCE_SQL = (
    "SELECT pg_catalog.array_agg(DISTINCT l.xid) FROM dbproxy.capture_log l "
    "JOIN dbproxy.undo_records u ON u.xid = l.xid WHERE l.rel = $1::text::pg_catalog.oid AND l.seq > $2::text::bigint "
    "AND l.op IN ('I', 'U', 'D', 'T') AND u.undone_at IS NULL AND l.xid <> ALL($3::bigint[])")


def _not_written_check(desc: dict[str, Any], since: int, what: str) -> DdlStep:
    """Undoing a CREATE TABLE or ADD COLUMN destroys what others wrote there since: refuse when a
    later transaction wrote to the table (its changes are in the capture log under another
    transaction id, not undone since). `what` names what would be lost."""
    oid = _desc_oid(desc)
    return DdlStep(0, "written_since", WRITTEN_SINCE_SQL, (str(oid), str(since)), table=what, rel=oid)


def _recreate(before: dict[str, Any], rows_by_rel: dict[int, list[Change]], seq_state: dict[int, dict[str, Any]],
              matview_state: dict[int, dict[str, Any]], created_by: str | None, data: list[DdlStep],
              g: Group) -> render.Parts:
    parts = render.create(before, created_by=created_by)
    kind = before.get("kind")
    oid = _desc_oid(before)
    name = str(before.get("qualified"))
    if kind == "table":
        images = _images([r for r in rows_by_rel.get(oid, []) if r.op == "R"])
        if not any((e.ddl or {}).get("event") == "data" and (e.ddl or {}).get("rel") in (oid, str(oid))
                   and (e.ddl or {}).get("op") == "R" for e in g.events):
            parts.reasons.append(f"the rows of {name} were not kept before it was dropped")
        insert = render.insert_sql(before)
        rows = [r for r in rows_by_rel.get(oid, []) if r.op == "R"]
        for i, chunk in enumerate(_chunks(images)):
            data.append(DdlStep(rows[i * CHUNK].seq, "data", insert, (chunk,), table=name))
        for col in render._list(before, "columns"):
            s = col.get("identity_sequence") or {}
            if s.get("oid") is not None and int(s["oid"]) in seq_state:
                st = seq_state[int(s["oid"])]
                parts.post.append((render.POST_LAST, render.setval_sql(str(s["name"]), st["last_value"],
                                                                       st["is_called"])))
    elif kind == "sequence" and not before.get("identity_of"):
        st = seq_state.get(oid)
        if st is None:
            parts.reasons.append(f"the position of sequence {name} was not kept before it was dropped")
        else:
            parts.post.append((render.POST_LAST, render.setval_sql(name, st["last_value"], st["is_called"])))
    elif kind == "matview":
        st = matview_state.get(oid)
        if st is None:
            parts.reasons.append(f"the contents of materialized view {name} were not checked before it was dropped")
        elif st.get("populated") and not st.get("fresh"):
            parts.reasons.append(f"materialized view {name} held contents from an earlier REFRESH that its query no "
                                 "longer gives; PostgreSQL can only recompute a materialized view, not write rows "
                                 "into it")
    return parts


def _column_data(before: dict[str, Any], columns: list[dict[str, Any]], rows: list[Change], g: Group,
                 out: GroupInverse, checks: list[DdlStep]) -> list[DdlStep]:
    """Steps that put back the captured values of `columns` of table `before`."""
    name = str(before["qualified"])
    values = [r for r in rows if r.op == "C"]
    wanted = {str(c["name"]) for c in columns}
    kept: set[str] = set()
    key: list[str] = []
    for r in values:
        d = r.ddl or {}
        kept.update(d.get("columns") or [])
        key = list(d.get("key") or [])
    have_event = any((e.ddl or {}).get("event") == "data" and (e.ddl or {}).get("op") == "C"
                     and str((e.ddl or {}).get("rel")) == str(_desc_oid(before)) for e in g.events)
    missing = sorted(wanted - kept) if values or not have_event else []
    if not have_event and not values:
        missing = sorted(wanted)
    if missing:
        out.reasons.append(f"the values of column(s) {', '.join(missing)} of {name} were not kept")
        return []
    if not values:
        return []
    images = _images(values)
    steps: list[DdlStep] = []
    if key and not set(key) & wanted:
        sql = render.update_values_sql(before, sorted(wanted), key)
        for i, chunk in enumerate(_chunks(images)):
            steps.append(DdlStep(values[i * CHUNK].seq, "data", sql, (chunk,), table=name))
        return steps
    # Without a key the images are whole rows: the table's rows must be those images but for
    # the columns coming back; then they are replaced by the images.
    whole = "[" + ",".join(images) + "]"
    checks_sql = render.same_rows_check_sql(before, sorted(wanted))
    steps.append(DdlStep(values[0].seq, "check", checks_sql, (whole,), table=name))
    steps.append(DdlStep(values[0].seq, "data", f"DELETE FROM ONLY {name}", (), table=name))
    insert = render.insert_sql(before)
    # All at one seq: undo's newest-first order must keep check, delete and inserts in this order.
    steps += [DdlStep(values[0].seq, "data", insert, (chunk,), table=name) for chunk in _chunks(images)]
    return steps


def table_infos(changes: list[Change]) -> dict[int, TableInfo]:
    """Catalog facts of the tables described in a transaction's DDL events, by the oid they had
    then: what a redo needs for rows of tables it will create again."""
    out: dict[int, TableInfo] = {}
    for c in changes:
        d = c.ddl or {}
        desc = d.get("desc")
        if c.op != "X" or not isinstance(desc, dict) or desc.get("kind") != "table":
            continue
        cols = render._list(desc, "columns")
        writable = tuple(str(x["name"]) for x in cols if x.get("generated") != "s")
        out[_desc_oid(desc)] = TableInfo(
            _desc_oid(desc), str(desc["qualified"]), str(desc["schema"]), str(desc["name"]),
            tuple(str(x["name"]) for x in cols), writable,
            tuple(str(x["name"]) for x in cols if x.get("identity") == "a"), tuple(desc.get("primary_key") or ()),
            relkind=str(desc.get("relkind") or "r"),
            json_not_null=tuple(str(x["name"]) for x in cols if x.get("notnull") and x.get("generated") != "s"
                                and str(x.get("type")) in ("json", "jsonb")))
    return out


def redo_group(g: Group) -> GroupInverse:
    """Redo of an announced statement: run it again, as it ran."""
    out = GroupInverse()
    if not g.statement:
        out.reasons.append("the statement's text was not kept, so it cannot be run again")
        return out
    steps = []
    if g.search_path is not None:
        steps.append(DdlStep(g.first, "data", "SELECT pg_catalog.set_config('search_path', $1, true)",
                             (str(g.search_path),)))
    steps.append(DdlStep(g.first, "ddl", g.statement))
    for key, desc in g.after.items():
        if key not in g.before and desc is not None and desc.get("kind") == "table":
            out.created_tables.add(_desc_oid(desc))
            steps.append(DdlStep(g.first, "remap", "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
                                 (str(desc["qualified"]),), table=str(desc["qualified"]), rel=_desc_oid(desc)))
    out.steps = steps
    return out

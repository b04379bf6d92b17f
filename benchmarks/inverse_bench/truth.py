"""Ground truth for the inverse-SQL benchmark: is a whole database back as it was?

Independent of the sandbox on purpose (its digest is what is being checked): a `Snapshot` of a
database is every user table's rows (count and md5 of the sorted row texts, `ONLY` each, so
partitions and inheritance children count as themselves; materialized views too, since their
contents are state a REFRESH destroys) and the catalog shape of the user schemas, read with its
own query, which is stricter than the sandbox's: it also sees privileges (GRANT/REVOKE, default
privileges), owners, comments, view and rule definitions, sequence parameters (not positions:
PostgreSQL never rolls back `nextval`), policies, column order, identity/generated kinds and
whole function definitions. Schemas `pg_*`, `information_schema` and `dbproxy` are left out, and
so are dbproxy's own capture triggers (plumbing, not the user's state: a table an inverse
re-creates would not get them back, since event triggers are quiet while an undo runs).

Row texts are read with the capture's output settings (`IMAGE_SETTINGS`), so they do not depend
on the session. `diff` turns two snapshots into short readable lines for the report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import asyncpg

from inverse.capture_schema import IMAGE_SETTINGS, ROW_TRIGGER, TRUNCATE_TRIGGER

_ALIAS = "dbproxy_bench_row"  # a column named like the alias would shadow the row

#: Relations with rows, in the user schemas: (quoted name, relkind, populated).
RELATIONS_SQL = r"""
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), c.relkind::text, c.relispopulated
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm') AND c.relpersistence <> 't'
  AND n.nspname !~ '^pg_' AND n.nspname NOT IN ('information_schema', 'dbproxy')
ORDER BY 1
"""



def _acl(acl: str, default: str) -> str:
    """An ACL as sorted text, NULL read as what it means (the owner's defaults): after a GRANT and
    the REVOKE that undoes it, PostgreSQL keeps an explicit list equal to the default, and grants
    restored in another order are the same privileges."""
    return (f"ARRAY(SELECT i::text FROM pg_catalog.unnest(COALESCE({acl}, {default})) AS u(i) "
            "ORDER BY i::text COLLATE \"C\")::text")


#: The catalog shape of the user schemas, one line per fact. $1: dbproxy's own trigger names.
CATALOG_SQL = r"""
WITH ns AS (SELECT oid, nspname FROM pg_catalog.pg_namespace
            WHERE nspname !~ '^pg_' AND nspname NOT IN ('information_schema', 'dbproxy')),
rel AS (SELECT c.*, ns.nspname FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
        WHERE c.relpersistence <> 't')
SELECT x FROM (
  SELECT pg_catalog.format('schema %I owner=%s acl=%s comment=%s', nspname, pg_catalog.pg_get_userbyid(n.nspowner),
                           {acl_n}, pg_catalog.obj_description(n.oid, 'pg_namespace'))
         FROM pg_catalog.pg_namespace n JOIN ns USING (oid, nspname)
  UNION ALL SELECT pg_catalog.format('relation %I.%I kind=%s owner=%s acl=%s options=%s rls=%s/%s identity=%s '
                                     'comment=%s bound=%s', r.nspname, r.relname, r.relkind,
                                     pg_catalog.pg_get_userbyid(r.relowner), {acl_r}, r.reloptions,
                                     r.relrowsecurity, r.relforcerowsecurity, r.relreplident,
                                     pg_catalog.obj_description(r.oid, 'pg_class'),
                                     pg_catalog.pg_get_expr(r.relpartbound, r.oid))
         FROM rel r
  UNION ALL SELECT pg_catalog.format('inherits %s from %s #%s', i.inhrelid::regclass, i.inhparent::regclass,
                                     i.inhseqno)
         FROM pg_catalog.pg_inherits i JOIN rel r ON r.oid = i.inhrelid
  UNION ALL SELECT pg_catalog.format('column %I.%I #%s %I %s notnull=%s default=%s identity=%s generated=%s '
                                     'collation=%s acl=%s comment=%s', r.nspname, r.relname,
                                     pg_catalog.row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
                                     a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
                                     pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
                                     a.attcollation, {acl_a}, pg_catalog.col_description(a.attrelid, a.attnum))
         FROM pg_catalog.pg_attribute a JOIN rel r ON r.oid = a.attrelid
         LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attnum > 0 AND NOT a.attisdropped
  UNION ALL SELECT pg_catalog.format('view %I.%I %s', r.nspname, r.relname, pg_catalog.pg_get_viewdef(r.oid))
         FROM rel r WHERE r.relkind IN ('v', 'm')
  UNION ALL SELECT pg_catalog.format('sequence %I.%I %s start=%s inc=%s min=%s max=%s cache=%s cycle=%s',
                                     r.nspname, r.relname, s.seqtypid::regtype, s.seqstart, s.seqincrement,
                                     s.seqmin, s.seqmax, s.seqcache, s.seqcycle)
         FROM pg_catalog.pg_sequence s JOIN rel r ON r.oid = s.seqrelid
  UNION ALL SELECT pg_catalog.format('constraint %I on %s %s comment=%s', k.conname,
                                     COALESCE(k.conrelid::regclass::text, k.contypid::regtype::text),
                                     pg_catalog.pg_get_constraintdef(k.oid),
                                     pg_catalog.obj_description(k.oid, 'pg_constraint'))
         FROM pg_catalog.pg_constraint k JOIN ns ON ns.oid = k.connamespace
  UNION ALL SELECT pg_catalog.format('index %s comment=%s', pg_catalog.pg_get_indexdef(i.indexrelid),
                                     pg_catalog.obj_description(i.indexrelid, 'pg_class'))
         FROM pg_catalog.pg_index i JOIN rel r ON r.oid = i.indexrelid
  UNION ALL SELECT pg_catalog.format('trigger %s enabled=%s comment=%s', pg_catalog.pg_get_triggerdef(t.oid),
                                     t.tgenabled, pg_catalog.obj_description(t.oid, 'pg_trigger'))
         FROM pg_catalog.pg_trigger t JOIN rel r ON r.oid = t.tgrelid
         WHERE NOT t.tgisinternal AND t.tgname <> ALL($1::text[])
  UNION ALL SELECT pg_catalog.format('rule %s', pg_catalog.pg_get_ruledef(w.oid))
         FROM pg_catalog.pg_rewrite w JOIN rel r ON r.oid = w.ev_class WHERE w.rulename <> '_RETURN'
  UNION ALL SELECT pg_catalog.format('policy %I on %s %s', p.polname, p.polrelid::regclass,
                                     pg_catalog.md5(pg_catalog.concat_ws('|', p.polcmd, p.polpermissive,
                                     p.polroles::text, pg_catalog.pg_get_expr(p.polqual, p.polrelid),
                                     pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))))
         FROM pg_catalog.pg_policy p JOIN rel r ON r.oid = p.polrelid
  UNION ALL SELECT pg_catalog.format('function %I.%I(%s) kind=%s owner=%s acl=%s comment=%s def=%s', ns.nspname,
                                     p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid), p.prokind,
                                     pg_catalog.pg_get_userbyid(p.proowner), {acl_p},
                                     pg_catalog.obj_description(p.oid, 'pg_proc'),
                                     CASE WHEN p.prokind IN ('f', 'p')
                                          THEN pg_catalog.md5(pg_catalog.pg_get_functiondef(p.oid))
                                          ELSE pg_catalog.md5(p.prosrc) END)
         FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
  UNION ALL SELECT pg_catalog.format('type %I.%I kind=%s owner=%s acl=%s base=%s default=%s notnull=%s comment=%s',
                                     ns.nspname, t.typname, t.typtype, pg_catalog.pg_get_userbyid(t.typowner),
                                     {acl_t}, NULLIF(t.typbasetype, 0)::regtype, t.typdefault, t.typnotnull,
                                     pg_catalog.obj_description(t.oid, 'pg_type'))
         FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace WHERE t.typtype IN ('e', 'd', 'r', 'm', 'b')
  UNION ALL SELECT pg_catalog.format('enum %s #%s %s', e.enumtypid::regtype,
                                     pg_catalog.row_number() OVER (PARTITION BY e.enumtypid ORDER BY e.enumsortorder),
                                     e.enumlabel)
         FROM pg_catalog.pg_enum e JOIN pg_catalog.pg_type t ON t.oid = e.enumtypid JOIN ns ON ns.oid = t.typnamespace
  UNION ALL SELECT pg_catalog.format('default privileges for %s in %s on %s: %s',
                                     pg_catalog.pg_get_userbyid(a.defaclrole),
                                     COALESCE(a.defaclnamespace::regnamespace::text, '(all schemas)'),
                                     a.defaclobjtype, {acl_d})
         FROM pg_catalog.pg_default_acl a
  UNION ALL SELECT pg_catalog.format('extension %I %s in %s', x.extname, x.extversion, x.extnamespace::regnamespace)
         FROM pg_catalog.pg_extension x
) s(x) ORDER BY x COLLATE "C"
""".format(
    acl_n=_acl("n.nspacl", "pg_catalog.acldefault('n', n.nspowner)"),
    acl_r=_acl("r.relacl",
               "pg_catalog.acldefault((CASE r.relkind WHEN 'S' THEN 's' ELSE 'r' END)::\"char\", r.relowner)"),
    acl_a=_acl("a.attacl", "'{}'::pg_catalog.aclitem[]"),
    acl_p=_acl("p.proacl", "pg_catalog.acldefault('f', p.proowner)"),
    acl_t=_acl("t.typacl", "pg_catalog.acldefault('T', t.typowner)"),
    acl_d=_acl("a.defaclacl", "'{}'::pg_catalog.aclitem[]"))


@dataclass
class Snapshot:
    """What "the database as it was" means for the ground truth."""

    tables: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # name -> (rows, md5)
    catalog: list[str] = field(default_factory=list)

    def same_as(self, other: Snapshot) -> bool:
        return self.tables == other.tables and self.catalog == other.catalog

    def changed_tables(self, other: Snapshot) -> list[str]:
        return sorted(n for n in set(self.tables) | set(other.tables) if self.tables.get(n) != other.tables.get(n))


async def _settings(con: asyncpg.Connection) -> None:
    # Fixed output settings and search_path (definitions print names relative to it), for this
    # transaction only.
    for k, v in {**IMAGE_SETTINGS, "search_path": "pg_catalog"}.items():
        await con.execute("SELECT pg_catalog.set_config($1, $2, true)", k, v)


async def snapshot(con: asyncpg.Connection) -> Snapshot:
    """The database's user rows and catalog shape, in one repeatable-read snapshot."""
    async with con.transaction(isolation="repeatable_read", readonly=True):
        await _settings(con)
        out = Snapshot()
        for name, kind, populated in await con.fetch(RELATIONS_SQL):
            if kind == "m" and not populated:
                out.tables[name] = (-1, "not populated")
                continue
            only = "" if kind == "m" else "ONLY "
            row = await con.fetchrow(
                f"SELECT count(*), pg_catalog.md5(pg_catalog.string_agg({_ALIAS}::text, E'\\n' "
                f"ORDER BY {_ALIAS}::text COLLATE \"C\")) FROM {only}{name} AS {_ALIAS}")
            assert row is not None
            out.tables[name] = (int(row[0]), row[1])
        out.catalog = [r[0] for r in await con.fetch(CATALOG_SQL, [ROW_TRIGGER, TRUNCATE_TRIGGER])]
        return out


async def rows(con: asyncpg.Connection, names: list[str]) -> dict[str, Counter[str]]:
    """Row texts of `names` (tables that do not exist: empty), for a diff."""
    out: dict[str, Counter[str]] = {}
    async with con.transaction(isolation="repeatable_read", readonly=True):
        await _settings(con)
        present = {r[0]: r[1] for r in await con.fetch(RELATIONS_SQL)}
        for n in names:
            if n not in present:
                out[n] = Counter()
                continue
            only = "" if present[n] == "m" else "ONLY "
            try:
                async with con.transaction():
                    out[n] = Counter(r[0] for r in await con.fetch(f"SELECT {_ALIAS}::text FROM {only}{n} AS {_ALIAS}"))
            except asyncpg.PostgresError:  # an unpopulated materialized view
                out[n] = Counter()
    return out


def _cut(text: str, width: int = 200) -> str:
    return text if len(text) <= width else text[:width] + "..."


def diff(before: Snapshot, after: Snapshot, before_rows: dict[str, Counter[str]],
         after_rows: dict[str, Counter[str]], *, limit: int = 4) -> list[str]:
    """Short readable lines: what the inverse failed to bring back, and what it left or made."""
    lines: list[str] = []
    for n in before.changed_tables(after):
        b, a = before.tables.get(n), after.tables.get(n)
        if b is None or a is None:
            lines.append(f"{n}: {'dropped' if a is None else 'created'} by forward + inverse")
            continue
        missing = list((before_rows.get(n, Counter()) - after_rows.get(n, Counter())).elements())
        extra = list((after_rows.get(n, Counter()) - before_rows.get(n, Counter())).elements())
        lines.append(f"{n}: {b[0]} rows before, {a[0]} after; {len(missing)} missing, {len(extra)} unexpected")
        lines += [f"  missing: {_cut(r)}" for r in missing[:limit]]
        lines += [f"  unexpected: {_cut(r)}" for r in extra[:limit]]
    lost = sorted((Counter(before.catalog) - Counter(after.catalog)).elements())
    new = sorted((Counter(after.catalog) - Counter(before.catalog)).elements())
    lines += [f"catalog missing: {_cut(x)}" for x in lost[:limit * 2]]
    lines += [f"catalog unexpected: {_cut(x)}" for x in new[:limit * 2]]
    if len(lost) > limit * 2 or len(new) > limit * 2:
        lines.append(f"catalog: {len(lost)} facts missing and {len(new)} unexpected in all")
    return lines

"""What "the sample is back as it was" means, measured inside a sandbox.

A table's digest is its row count and the md5 of its sorted row texts (`row::text`: each type's
own output, so 1.0 and 1.00, JSON null and SQL NULL, array bounds all differ). The catalog shape
(relations, columns and their order, constraints, indexes, triggers, functions, types, views,
sequences, policies and comments of the user schemas) is compared too when the transaction ran
DDL. Privileges and owners are not: the schema copy has neither (one role owns everything).
`rows` and `shape_lines` give the detail for a readable diff when digests differ.
"""

from __future__ import annotations

from collections import Counter

import asyncpg

_ALIAS = "dbproxy_row"  # a column named like the alias would shadow the row

SHAPE_SQL = r"""
WITH ns AS (SELECT oid, nspname FROM pg_catalog.pg_namespace
            WHERE nspname !~ '^pg_' AND nspname NOT IN ('information_schema', 'dbproxy'))
SELECT x FROM (
  SELECT format('relation %I.%I %s comment=%s', ns.nspname, c.relname, c.relkind,
                pg_catalog.obj_description(c.oid, 'pg_class')) FROM pg_catalog.pg_class c
         JOIN ns ON ns.oid = c.relnamespace WHERE c.relkind <> 'i' AND c.relpersistence <> 't'
  UNION ALL SELECT format('column %I.%I.%I #%s %s%s%s identity=%s generated=%s comment=%s', ns.nspname, c.relname,
                          a.attname, pg_catalog.row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
                          pg_catalog.format_type(a.atttypid, a.atttypmod),
                          CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                          COALESCE(' default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), ''),
                          a.attidentity, a.attgenerated, pg_catalog.col_description(a.attrelid, a.attnum))
         FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
         JOIN ns ON ns.oid = c.relnamespace
         LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
  UNION ALL SELECT format('constraint %I.%I %s', ns.nspname, k.conname, pg_catalog.pg_get_constraintdef(k.oid))
         FROM pg_catalog.pg_constraint k JOIN ns ON ns.oid = k.connamespace
  UNION ALL SELECT 'index ' || pg_catalog.pg_get_indexdef(i.indexrelid) FROM pg_catalog.pg_index i
         JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid JOIN ns ON ns.oid = c.relnamespace
  UNION ALL SELECT 'trigger ' || pg_catalog.pg_get_triggerdef(t.oid) FROM pg_catalog.pg_trigger t
         JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid JOIN ns ON ns.oid = c.relnamespace
         WHERE NOT t.tgisinternal
  UNION ALL SELECT format('function %I.%I(%s) %s', ns.nspname, p.proname,
                          pg_catalog.pg_get_function_identity_arguments(p.oid), pg_catalog.md5(p.prosrc))
         FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
  UNION ALL SELECT format('type %I.%I %s', ns.nspname, t.typname, t.typtype) FROM pg_catalog.pg_type t
         JOIN ns ON ns.oid = t.typnamespace WHERE t.typtype IN ('e', 'd', 'r', 'm')
  UNION ALL SELECT format('enum %s %s', e.enumtypid::regtype, e.enumlabel) FROM pg_catalog.pg_enum e
         JOIN pg_catalog.pg_type t ON t.oid = e.enumtypid JOIN ns ON ns.oid = t.typnamespace
  UNION ALL SELECT format('schema %I comment=%s', nspname, pg_catalog.obj_description(oid, 'pg_namespace')) FROM ns
  UNION ALL SELECT format('view %I.%I %s', ns.nspname, c.relname, pg_catalog.pg_get_viewdef(c.oid))
         FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace WHERE c.relkind IN ('v', 'm')
  UNION ALL SELECT format('sequence %I.%I %s %s %s %s %s %s', ns.nspname, c.relname, q.seqtypid::regtype,
                          q.seqstart, q.seqincrement, q.seqmin, q.seqmax, q.seqcycle)
         FROM pg_catalog.pg_sequence q JOIN pg_catalog.pg_class c ON c.oid = q.seqrelid
         JOIN ns ON ns.oid = c.relnamespace
  UNION ALL SELECT format('policy %I on %I.%I %s', p.polname, ns.nspname, c.relname,
                          pg_catalog.concat_ws('|', p.polcmd, p.polpermissive,
                                               pg_catalog.pg_get_expr(p.polqual, p.polrelid),
                                               pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)))
         FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
         JOIN ns ON ns.oid = c.relnamespace
  UNION ALL SELECT format('function comment %I.%I(%s) %s', ns.nspname, p.proname,
                          pg_catalog.pg_get_function_identity_arguments(p.oid),
                          pg_catalog.obj_description(p.oid, 'pg_proc'))
         FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
         WHERE pg_catalog.obj_description(p.oid, 'pg_proc') IS NOT NULL
) s(x) ORDER BY x COLLATE "C"
"""


async def table_digests(con: asyncpg.Connection, names: list[str]) -> dict[str, tuple[int, str | None]]:
    """(row count, md5 of sorted row texts) per table, `ONLY` each (partitions and inheritance
    children are sampled as tables of their own). Tables that no longer exist are left out."""
    present = [n for n in names if await con.fetchval("SELECT pg_catalog.to_regclass($1) IS NOT NULL", n)]
    if not present:
        return {}
    parts = [f"SELECT {i}, count(*), pg_catalog.md5(pg_catalog.string_agg({_ALIAS}::text, E'\\n' "
             f"ORDER BY {_ALIAS}::text COLLATE \"C\")) FROM ONLY {n} AS {_ALIAS}" for i, n in enumerate(present)]
    rows = await con.fetch(" UNION ALL ".join(parts))
    return {present[int(r[0])]: (int(r[1]), r[2]) for r in rows}


async def rows(con: asyncpg.Connection, name: str) -> Counter[str]:
    if not await con.fetchval("SELECT pg_catalog.to_regclass($1) IS NOT NULL", name):
        return Counter()
    return Counter(r[0] for r in await con.fetch(f"SELECT {_ALIAS}::text FROM ONLY {name} AS {_ALIAS}"))


async def shape_lines(con: asyncpg.Connection) -> list[str]:
    # Definitions name objects relative to search_path, which the agent's statements may have
    # changed (`SET search_path`) between the "before" and "after" shapes: read with a fixed one.
    saved = await con.fetchval("SELECT pg_catalog.current_setting('search_path')")
    await con.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog', true)")
    lines = [r[0] for r in await con.fetch(SHAPE_SQL)]
    await con.execute("SELECT pg_catalog.set_config('search_path', $1, true)", saved)
    return lines


def diff_lines(table: str, before: Counter[str], after: Counter[str], *, limit: int = 10) -> list[str]:
    """Readable lines: rows the inverse failed to bring back, and rows it left or made."""
    missing = list((before - after).elements())
    extra = list((after - before).elements())
    out = [f"{table}: missing after the inverse: {r}" for r in missing[:limit]]
    out += [f"{table}: not there before the transaction: {r}" for r in extra[:limit]]
    if len(missing) > limit or len(extra) > limit:
        out.append(f"{table}: ... {len(missing)} missing and {len(extra)} unexpected rows in all")
    return out

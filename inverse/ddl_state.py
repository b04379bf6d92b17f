"""The SQL that keeps the state from before every DDL command, installed with the capture.

Row triggers see every row an agent's DML changes, but DDL changes rows and objects without firing
them: `DROP TABLE` takes its rows along, `DROP COLUMN` its values, a lossy `ALTER COLUMN TYPE`
rewrites them, `DROP ... CASCADE` removes whatever depends on the target. So, right before the
proxy sends an agent's DDL statement upstream, it runs `dbproxy.before_ddl(info, targets)` in the
same transaction (`inverse.ddl_targets` reads the statement with PostgreSQL's own parser and
names the objects in it; the names are resolved in the agent's session by `to_regclass` and its
siblings). `before_ddl` keeps, in `dbproxy.capture_log`:

- one **header** event (`op X`, event `before_ddl`) per statement: its text, `search_path`;
- one **before** event per object the statement may change, and per object that depends on it
  (what `DROP ... CASCADE` also drops, found by walking `pg_depend`): its definition as
  `dbproxy.describe` reads it from the catalog, with the catalog functions PostgreSQL provides
  (`pg_get_viewdef`, `pg_get_functiondef`, `pg_get_indexdef`, `pg_get_constraintdef`,
  `pg_get_triggerdef`, `pg_get_ruledef`, `pg_get_expr`, `format_type`, ...). Sub-objects
  (columns, constraints, indexes, triggers, policies, rules) are described with their table;
- the **data** the statement destroys: every row of a table it drops (`op R`, the row's image),
  the values of a column it drops or retypes (`op C`: primary key and column, or the whole row
  without a key), sequence positions and a materialized view's digest (`op S`); a `data` event
  per relation says how many rows and bytes were kept;
- a `limit` event instead of the data when `ddl_snapshot_limit` (rows and bytes per transaction,
  passed by the proxy in `info`) would be exceeded: the proxy then holds the transaction.

When the command ends, the DDL event trigger describes each of those objects again (`after`
events, NULL when dropped) and every object the command created, so an inverse is the way from
the after- to the before-definition, and a redo the way back.

Who may do what (the trust boundary of `inverse.capture_schema` holds): `before_ddl` runs as the
caller (SECURITY INVOKER), so it reads only rows the agent itself may read; what it keeps goes in
through `dbproxy.snapshot_begin/_object/_rows/_event`, SECURITY DEFINER functions owned by the
proxy's role with `search_path` pinned, that write to the caller's own current transaction only.
Definitions are computed by `snapshot_object` itself from the catalog (never taken from the
caller), so an inverse's DDL is never text an agent supplied; rows, values and positions come
from the caller's own reads (an agent can only claim data it could have written itself, and undo
writes as the agents' role). Agents still cannot read any of it: the log is not theirs, and
`dbproxy.captured_changes` returns their own current transaction's changes only.
"""

from __future__ import annotations

#: Definitions as jsonb, read from the catalog with a search_path of pg_catalog only, so every
#: name PostgreSQL prints is schema-qualified.
DESCRIBE_SQL = r"""
CREATE OR REPLACE FUNCTION dbproxy.describe_relation(rel oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
SELECT jsonb_build_object(
  'kind', CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'matview'
          WHEN 'S' THEN 'sequence' WHEN 'i' THEN 'index' WHEN 'I' THEN 'index' WHEN 'f' THEN 'foreign table'
          ELSE 'relation ' || c.relkind::text END,
  'relkind', c.relkind::text, 'oid', c.oid, 'schema', n.nspname, 'name', c.relname,
  'qualified', quote_ident(n.nspname) || '.' || quote_ident(c.relname),
  'owner', pg_get_userbyid(c.relowner), 'acl', c.relacl::text[], 'comment', obj_description(c.oid, 'pg_class'),
  'acl_default', acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner)::text[],
  'persistence', c.relpersistence::text, 'options', c.reloptions,
  'rls', c.relrowsecurity, 'force_rls', c.relforcerowsecurity, 'replident', c.relreplident::text,
  'tablespace', (SELECT quote_ident(s.spcname) FROM pg_tablespace s WHERE s.oid = c.reltablespace),
  'am', CASE WHEN c.relkind IN ('r', 'm') THEN (SELECT a.amname FROM pg_am a WHERE a.oid = c.relam) END,
  'partkey', CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
  'partition_of', (SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid AND c.relispartition),
  'partbound', pg_get_expr(c.relpartbound, c.oid),
  'inherits', (SELECT jsonb_agg(i.inhparent::regclass::text ORDER BY i.inhseqno) FROM pg_inherits i
               WHERE i.inhrelid = c.oid AND NOT c.relispartition),
  'children', (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid),
  'of_type', CASE WHEN c.reloftype <> 0 THEN c.reloftype::regtype::text END,
  'populated', c.relispopulated,
  'primary_key', (SELECT jsonb_agg(a.attname ORDER BY u.ord) FROM pg_index i
          CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS u(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum
          WHERE i.indrelid = c.oid AND i.indisprimary),
  'view', CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
  'columns', (SELECT jsonb_agg(jsonb_build_object(
        'attnum', a.attnum, 'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
        'notnull', a.attnotnull, 'default', pg_get_expr(d.adbin, d.adrelid),
        'in_key', EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisunique
                          AND a.attnum = ANY(i.indkey)),
        'identity', NULLIF(a.attidentity::text, ''), 'generated', NULLIF(a.attgenerated::text, ''),
        'collation', CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN
            (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) FROM pg_collation co
             JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation) END,
        'storage', CASE WHEN a.attstorage <> t.typstorage THEN a.attstorage::text END,
        'compression', NULLIF(a.attcompression::text, ''),
        'stattarget', CASE WHEN a.attstattarget >= 0 THEN a.attstattarget END,
        'options', a.attoptions, 'acl', a.attacl::text[], 'comment', col_description(a.attrelid, a.attnum),
        'local', a.attislocal, 'inhcount', a.attinhcount,
        'identity_sequence', (SELECT jsonb_build_object(
              'oid', s.oid, 'name', s.oid::regclass::text, 'type', format_type(q.seqtypid, NULL), 'start', q.seqstart,
              'increment', q.seqincrement, 'min', q.seqmin, 'max', q.seqmax, 'cache', q.seqcache, 'cycle', q.seqcycle)
            FROM pg_depend dp JOIN pg_class s ON s.oid = dp.objid JOIN pg_sequence q ON q.seqrelid = s.oid
            WHERE dp.classid = 'pg_class'::regclass AND dp.refclassid = 'pg_class'::regclass
              AND dp.refobjid = a.attrelid AND dp.refobjsubid = a.attnum AND dp.deptype = 'i' AND s.relkind = 'S'
            LIMIT 1)
      ) ORDER BY a.attnum)
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  'constraints', (SELECT jsonb_agg(jsonb_build_object(
        'oid', k.oid, 'name', k.conname, 'type', k.contype::text, 'def', pg_get_constraintdef(k.oid),
        'local', k.conislocal, 'inhcount', k.coninhcount, 'validated', k.convalidated,
        'comment', obj_description(k.oid, 'pg_constraint'), 'cloned', k.conparentid <> 0,
        'index', CASE WHEN k.contype IN ('p', 'u', 'x') AND k.conindid <> 0 THEN k.conindid::regclass::text END)
      ORDER BY CASE k.contype WHEN 'p' THEN 0 WHEN 'u' THEN 1 WHEN 'x' THEN 2 WHEN 'c' THEN 3 WHEN 'f' THEN 5
                              ELSE 4 END,
               k.conname)
      FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype <> 'n'),
  'indexes', (SELECT jsonb_agg(jsonb_build_object(
        'oid', i.indexrelid, 'name', ic.relname, 'def', pg_get_indexdef(i.indexrelid),
        'constraint', (SELECT k.conname FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = c.oid
                       AND k.contype IN ('p', 'u', 'x') LIMIT 1),
        'comment', obj_description(i.indexrelid, 'pg_class'), 'clustered', i.indisclustered,
        'replident', i.indisreplident, 'cloned', ic.relispartition) ORDER BY ic.relname)
      FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid),
  'triggers', (SELECT jsonb_agg(jsonb_build_object(
        'oid', g.oid, 'name', g.tgname, 'def', pg_get_triggerdef(g.oid), 'enabled', g.tgenabled::text,
        'comment', obj_description(g.oid, 'pg_trigger'), 'cloned', g.tgparentid <> 0) ORDER BY g.tgname)
      FROM pg_trigger g WHERE g.tgrelid = c.oid AND NOT g.tgisinternal
        AND g.tgname NOT IN ('_dbproxy_capture', '_dbproxy_capture_truncate')),
  'policies', (SELECT jsonb_agg(jsonb_build_object(
        'oid', p.oid, 'name', p.polname, 'permissive', p.polpermissive, 'cmd', p.polcmd::text,
        'roles', (SELECT jsonb_agg(CASE WHEN r = 0 THEN 'public' ELSE quote_ident(pg_get_userbyid(r)) END ORDER BY r)
                  FROM unnest(p.polroles) r),
        'using', pg_get_expr(p.polqual, p.polrelid), 'check', pg_get_expr(p.polwithcheck, p.polrelid),
        'comment', obj_description(p.oid, 'pg_policy')) ORDER BY p.polname)
      FROM pg_policy p WHERE p.polrelid = c.oid),
  'rules', (SELECT jsonb_agg(jsonb_build_object(
        'oid', w.oid, 'name', w.rulename, 'def', pg_get_ruledef(w.oid), 'enabled', w.ev_enabled::text,
        'comment', obj_description(w.oid, 'pg_rewrite')) ORDER BY w.rulename)
      FROM pg_rewrite w WHERE w.ev_class = c.oid AND w.rulename <> '_RETURN'),
  'statistics', (SELECT jsonb_agg(jsonb_build_object(
        'oid', s.oid, 'name', s.stxname, 'def', pg_get_statisticsobjdef(s.oid),
        'comment', obj_description(s.oid, 'pg_statistic_ext')) ORDER BY s.stxname)
      FROM pg_statistic_ext s WHERE s.stxrelid = c.oid),
  'sequence', (SELECT jsonb_build_object('type', format_type(q.seqtypid, NULL), 'start', q.seqstart,
        'increment', q.seqincrement, 'min', q.seqmin, 'max', q.seqmax, 'cache', q.seqcache, 'cycle', q.seqcycle)
      FROM pg_sequence q WHERE q.seqrelid = c.oid),
  'owned_by', (SELECT dp.refobjid::regclass::text || '.' || quote_ident(a.attname) FROM pg_depend dp
      JOIN pg_attribute a ON a.attrelid = dp.refobjid AND a.attnum = dp.refobjsubid
      WHERE c.relkind = 'S' AND dp.classid = 'pg_class'::regclass AND dp.objid = c.oid
        AND dp.refclassid = 'pg_class'::regclass AND dp.deptype = 'a' AND dp.refobjsubid > 0 LIMIT 1),
  'identity_of', (SELECT dp.refobjid::regclass::text || '.' || quote_ident(a.attname) FROM pg_depend dp
      JOIN pg_attribute a ON a.attrelid = dp.refobjid AND a.attnum = dp.refobjsubid
      WHERE c.relkind = 'S' AND dp.classid = 'pg_class'::regclass AND dp.objid = c.oid
        AND dp.refclassid = 'pg_class'::regclass AND dp.deptype = 'i' LIMIT 1),
  'index', CASE WHEN c.relkind IN ('i', 'I') THEN (SELECT jsonb_build_object(
        'table', i.indrelid::regclass::text, 'def', pg_get_indexdef(i.indexrelid),
        'constraint', (SELECT k.conname FROM pg_constraint k WHERE k.conindid = i.indexrelid
                       AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x') LIMIT 1))
      FROM pg_index i WHERE i.indexrelid = c.oid) END
)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel
$fn$;

CREATE OR REPLACE FUNCTION dbproxy.describe_function(fn oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
SELECT jsonb_build_object(
  'kind', CASE p.prokind WHEN 'f' THEN 'function' WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate'
          ELSE 'window function' END,
  'oid', p.oid, 'schema', n.nspname, 'name', p.proname,
  'qualified', quote_ident(n.nspname) || '.' || quote_ident(p.proname),
  'signature', quote_ident(n.nspname) || '.' || quote_ident(p.proname) || '(' ||
               pg_get_function_identity_arguments(p.oid) || ')',
  'result', pg_get_function_result(p.oid),
  'def', CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) END,
  'owner', pg_get_userbyid(p.proowner), 'acl', p.proacl::text[], 'comment', obj_description(p.oid, 'pg_proc'),
  'acl_default', acldefault('f', p.proowner)::text[],
  'extension', EXISTS (SELECT 1 FROM pg_depend dp WHERE dp.classid = 'pg_proc'::regclass AND dp.objid = p.oid
                       AND dp.deptype = 'e'))
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = fn
$fn$;

CREATE OR REPLACE FUNCTION dbproxy.describe_type(typ oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
SELECT jsonb_build_object(
  'kind', CASE t.typtype WHEN 'e' THEN 'enum' WHEN 'c' THEN 'composite' WHEN 'd' THEN 'domain' WHEN 'r' THEN 'range'
          WHEN 'm' THEN 'multirange' WHEN 'b' THEN 'base type' ELSE 'type ' || t.typtype::text END,
  'oid', t.oid, 'schema', n.nspname, 'name', t.typname,
  'qualified', quote_ident(n.nspname) || '.' || quote_ident(t.typname),
  'owner', pg_get_userbyid(t.typowner), 'acl', t.typacl::text[], 'comment', obj_description(t.oid, 'pg_type'),
  'acl_default', acldefault('T', t.typowner)::text[],
  'labels', CASE WHEN t.typtype = 'e' THEN (SELECT jsonb_agg(e.enumlabel ORDER BY e.enumsortorder)
                                             FROM pg_enum e WHERE e.enumtypid = t.oid) END,
  'attributes', CASE WHEN t.typtype = 'c' THEN (SELECT jsonb_agg(jsonb_build_object(
        'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
        'collation', CASE WHEN a.attcollation <> 0 AND a.attcollation <> at.typcollation THEN
            (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) FROM pg_collation co
             JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation) END,
        'comment', col_description(a.attrelid, a.attnum)) ORDER BY a.attnum)
      FROM pg_attribute a JOIN pg_type at ON at.oid = a.atttypid
      WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) END,
  'base', CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
  'default', CASE WHEN t.typtype = 'd' THEN pg_get_expr(t.typdefaultbin, 0) END,
  'notnull', t.typnotnull,
  'collation', CASE WHEN t.typtype = 'd' AND t.typcollation <> 0 AND t.typcollation <>
                         (SELECT b.typcollation FROM pg_type b WHERE b.oid = t.typbasetype) THEN
      (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) FROM pg_collation co
       JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = t.typcollation) END,
  'constraints', CASE WHEN t.typtype = 'd' THEN (SELECT jsonb_agg(jsonb_build_object(
        'oid', k.oid, 'name', k.conname, 'def', pg_get_constraintdef(k.oid), 'validated', k.convalidated,
        'comment', obj_description(k.oid, 'pg_constraint')) ORDER BY k.conname)
      FROM pg_constraint k WHERE k.contypid = t.oid AND k.contype <> 'n') END,
  'range', CASE WHEN t.typtype = 'r' THEN (SELECT jsonb_build_object(
        'subtype', format_type(r.rngsubtype, NULL),
        'opclass', (SELECT quote_ident(on_.nspname) || '.' || quote_ident(o.opcname) FROM pg_opclass o
                    JOIN pg_namespace on_ ON on_.oid = o.opcnamespace WHERE o.oid = r.rngsubopc AND NOT o.opcdefault),
        'collation', (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) FROM pg_collation co
                      JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = r.rngcollation
                      AND r.rngcollation <> (SELECT s.typcollation FROM pg_type s WHERE s.oid = r.rngsubtype)),
        'canonical', NULLIF(r.rngcanonical, 0)::regproc::text, 'subdiff', NULLIF(r.rngsubdiff, 0)::regproc::text,
        'multirange', format_type(r.rngmultitypid, NULL))
      FROM pg_range r WHERE r.rngtypid = t.oid) END)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = typ
$fn$;

CREATE OR REPLACE FUNCTION dbproxy.describe_schema(nsp oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
SELECT jsonb_build_object('kind', 'schema', 'oid', n.oid, 'name', n.nspname, 'qualified', quote_ident(n.nspname),
                          'owner', pg_get_userbyid(n.nspowner), 'acl', n.nspacl::text[],
                          'acl_default', acldefault('n', n.nspowner)::text[],
                          'comment', obj_description(n.oid, 'pg_namespace'))
FROM pg_namespace n WHERE n.oid = nsp
$fn$;

-- Default privileges are keyed by (role, schema or 0, object type); the entry may not exist yet.
CREATE OR REPLACE FUNCTION dbproxy.describe_defacl(role oid, nsp oid, objtype "char") RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
SELECT jsonb_build_object('kind', 'default privileges', 'role', pg_get_userbyid(role),
                          'schema', (SELECT quote_ident(n.nspname) FROM pg_namespace n WHERE n.oid = nsp),
                          'objtype', objtype::text,
                          'qualified', pg_get_userbyid(role) || '/' || COALESCE((SELECT n.nspname FROM pg_namespace n
                                       WHERE n.oid = nsp), '') || '/' || objtype::text,
                          'acl', (SELECT a.defaclacl::text[] FROM pg_default_acl a WHERE a.defaclrole = role
                                  AND a.defaclnamespace = nsp AND a.defaclobjtype = objtype),
                          -- what applies: an entry for all schemas replaces the built-in defaults;
                          -- a schema's entry only adds to them
                          'acl_effective', COALESCE((SELECT a.defaclacl::text[] FROM pg_default_acl a
                                  WHERE a.defaclrole = role AND a.defaclnamespace = nsp AND a.defaclobjtype = objtype),
                                  CASE WHEN nsp = 0 THEN acldefault(CASE objtype WHEN 'S' THEN 's' ELSE objtype END,
                                                                    role)::text[] ELSE '{}'::text[] END))
$fn$;

-- Any object, by its catalog address; NULL when it does not exist (any more).
CREATE OR REPLACE FUNCTION dbproxy.describe(cls oid, obj oid, sub integer) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    d jsonb;
    ident record;
BEGIN
    IF cls = 'pg_class'::regclass THEN
        d := dbproxy.describe_relation(obj);
    ELSIF cls = 'pg_proc'::regclass THEN
        d := dbproxy.describe_function(obj);
    ELSIF cls = 'pg_type'::regclass THEN
        d := dbproxy.describe_type(obj);
    ELSIF cls = 'pg_namespace'::regclass THEN
        d := dbproxy.describe_schema(obj);
    ELSIF cls = 'pg_default_acl'::regclass THEN
        -- (an object id of 0 with sub = objtype code: see key_defacl)
        RETURN NULL;
    ELSE
        BEGIN
            SELECT * INTO ident FROM pg_identify_object(cls, obj, sub);
        EXCEPTION WHEN OTHERS THEN
            RETURN NULL;
        END;
        IF ident.identity IS NULL THEN
            RETURN NULL;
        END IF;
        d := jsonb_build_object('kind', ident.type, 'qualified', ident.identity, 'unsupported', true);
    END IF;
    IF d IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN d || jsonb_build_object('key', jsonb_build_array(cls, obj, sub));
END
$fn$;

-- The object a part belongs to, the unit definitions are kept and restored in: a table for its
-- columns, defaults, constraints, indexes, triggers, policies, rules, statistics and row type;
-- a view for its rewrite rule; a domain for its constraints; a type for its array type.
CREATE OR REPLACE FUNCTION dbproxy.root_of(cls oid, obj oid, OUT rcls oid, OUT robj oid)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    k "char";
    x oid;
BEGIN
    rcls := cls;
    robj := obj;
    IF cls = 'pg_class'::regclass THEN
        SELECT c.relkind INTO k FROM pg_class c WHERE c.oid = obj;
        IF k IN ('i', 'I') THEN
            SELECT i.indrelid INTO x FROM pg_index i WHERE i.indexrelid = obj;
            IF x IS NOT NULL THEN
                SELECT r.rcls, r.robj INTO rcls, robj FROM dbproxy.root_of('pg_class'::regclass, x) r;
            END IF;
        ELSIF k = 't' THEN
            SELECT c.oid INTO x FROM pg_class c WHERE c.reltoastrelid = obj;
            robj := COALESCE(x, obj);
        ELSIF k = 'c' THEN
            rcls := 'pg_type'::regclass;
            SELECT c.reltype INTO robj FROM pg_class c WHERE c.oid = obj;
        END IF;
    ELSIF cls = 'pg_type'::regclass THEN
        SELECT t.typrelid INTO x FROM pg_type t WHERE t.oid = obj;
        IF x <> 0 AND (SELECT c.relkind FROM pg_class c WHERE c.oid = x) <> 'c' THEN
            rcls := 'pg_class'::regclass;
            robj := x;
        ELSE
            SELECT e.oid INTO x FROM pg_type e WHERE e.typarray = obj;
            IF x IS NOT NULL THEN
                SELECT r.rcls, r.robj INTO rcls, robj FROM dbproxy.root_of('pg_type'::regclass, x) r;
            END IF;
        END IF;
    ELSIF cls = 'pg_attrdef'::regclass THEN
        rcls := 'pg_class'::regclass;
        SELECT d.adrelid INTO robj FROM pg_attrdef d WHERE d.oid = obj;
    ELSIF cls = 'pg_constraint'::regclass THEN
        SELECT CASE WHEN k2.conrelid <> 0 THEN 'pg_class'::regclass ELSE 'pg_type'::regclass END,
               CASE WHEN k2.conrelid <> 0 THEN k2.conrelid ELSE k2.contypid END
        INTO rcls, robj FROM pg_constraint k2 WHERE k2.oid = obj;
    ELSIF cls = 'pg_trigger'::regclass THEN
        rcls := 'pg_class'::regclass;
        SELECT g.tgrelid INTO robj FROM pg_trigger g WHERE g.oid = obj;
    ELSIF cls = 'pg_policy'::regclass THEN
        rcls := 'pg_class'::regclass;
        SELECT p.polrelid INTO robj FROM pg_policy p WHERE p.oid = obj;
    ELSIF cls = 'pg_rewrite'::regclass THEN
        rcls := 'pg_class'::regclass;
        SELECT w.ev_class INTO robj FROM pg_rewrite w WHERE w.oid = obj;
    ELSIF cls = 'pg_statistic_ext'::regclass THEN
        rcls := 'pg_class'::regclass;
        SELECT s.stxrelid INTO robj FROM pg_statistic_ext s WHERE s.oid = obj;
    END IF;
    rcls := COALESCE(rcls, cls);
    robj := COALESCE(robj, obj);
END
$fn$;

-- Everything that depends on the given objects, transitively: what DROP ... CASCADE would also
-- drop (`cascade`), or only what goes with them without CASCADE (automatic, internal, partition
-- and extension dependencies). A whole relation (sub = 0) takes the dependants of its columns too.
CREATE OR REPLACE FUNCTION dbproxy.dependents(objs jsonb, cascade boolean)
RETURNS TABLE (classid oid, objid oid, objsubid integer)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
WITH RECURSIVE dep(classid, objid, objsubid) AS (
    SELECT (o->>0)::oid, (o->>1)::oid, (o->>2)::int FROM jsonb_array_elements(objs) o
    UNION
    SELECT x.classid, x.objid, x.objsubid FROM dep, LATERAL (
        SELECT d.classid, d.objid, d.objsubid FROM pg_depend d
        WHERE d.refclassid = dep.classid AND d.refobjid = dep.objid
          AND (dep.objsubid = 0 OR d.refobjsubid = dep.objsubid)
          AND (cascade OR d.deptype IN ('a', 'i', 'P', 'S', 'e', 'x'))
        -- a part dropped takes the object it is part of (a view's rewrite rule: the view)
        UNION ALL SELECT d.refclassid, d.refobjid, d.refobjsubid FROM pg_depend d
        WHERE d.classid = dep.classid AND d.objid = dep.objid AND d.deptype = 'i') x
)
SELECT * FROM dep
$fn$;
"""

#: Writers (SECURITY DEFINER, the proxy's role): they write to the caller's current transaction
#: only. `snapshot_object` describes the object itself; the others take what the caller read.
WRITERS_SQL = r"""
CREATE OR REPLACE FUNCTION dbproxy.snapshot_begin(info jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    g bigint := nextval('dbproxy.capture_log_seq_seq');
BEGIN
    INSERT INTO dbproxy.capture_log (op, ddl) VALUES ('X', jsonb_build_object(
        'event', 'before_ddl', 'group', g, 'statement', info->'statement', 'kind', info->'kind',
        'search_path', info->'search_path'));
    PERFORM set_config('dbproxy.snapshot_open', g::text, true);
    RETURN g;
END
$fn$;

CREATE OR REPLACE FUNCTION dbproxy.snapshot_object(g bigint, cls oid, obj oid, role text, extra jsonb)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    d jsonb := dbproxy.describe(cls, obj, 0);
BEGIN
    IF d IS NULL THEN
        RETURN false;
    END IF;
    INSERT INTO dbproxy.capture_log (rel, op, ddl) VALUES (
        CASE WHEN cls = 'pg_class'::regclass::oid THEN obj END, 'X',
        jsonb_build_object('event', 'before', 'group', g, 'role', role, 'key', jsonb_build_array(cls, obj, 0),
                           'desc', d) || COALESCE(extra, '{}'::jsonb));
    RETURN true;
END
$fn$;

CREATE OR REPLACE FUNCTION dbproxy.snapshot_defacl(g bigint, role oid, nsp oid, objtype "char") RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    INSERT INTO dbproxy.capture_log (op, ddl) VALUES ('X', jsonb_build_object(
        'event', 'before', 'group', g, 'role', 'target',
        'key', jsonb_build_array('pg_default_acl'::regclass::oid, role, nsp, objtype::text),
        'desc', dbproxy.describe_defacl(role, nsp, objtype)));
END
$fn$;

CREATE OR REPLACE FUNCTION dbproxy.snapshot_rows(g bigint, rel oid, op "char", info jsonb, images text[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    n bigint;
BEGIN
    IF op NOT IN ('R', 'C', 'S') THEN
        RAISE EXCEPTION 'dbproxy.snapshot_rows: op must be R, C or S';
    END IF;
    INSERT INTO dbproxy.capture_log (rel, op, old, ddl)
    SELECT rel, op, i::json, jsonb_build_object('group', g) || COALESCE(info, '{}'::jsonb) FROM unnest(images) i;
    SELECT COALESCE(sum(octet_length(i)), 0) INTO n FROM unnest(images) i;
    RETURN n;
END
$fn$;

CREATE OR REPLACE FUNCTION dbproxy.snapshot_event(g bigint, ddl jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF ddl->>'event' NOT IN ('data', 'limit', 'uncaptured') THEN
        RAISE EXCEPTION 'dbproxy.snapshot_event: not an event it writes';
    END IF;
    INSERT INTO dbproxy.capture_log (rel, op, ddl)
        VALUES ((ddl->>'rel')::oid, 'X', ddl || jsonb_build_object('group', g));
END
$fn$;

-- Forget the data kept for one relation of a group (it went over the snapshot limit midway).
CREATE OR REPLACE FUNCTION dbproxy.snapshot_discard(g bigint, rel oid) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    DELETE FROM dbproxy.capture_log l WHERE l.xid = txid_current() AND l.rel = snapshot_discard.rel
      AND l.op IN ('R', 'C', 'S') AND (l.ddl->>'group')::bigint = g
$fn$;
"""

#: The caller's side: which objects, which data. Runs as the caller (its privileges decide what
#: rows it can keep), never raises (a failure is recorded as an `uncaptured` event instead, and
#: makes the transaction's inverse incomplete).
BEFORE_DDL_SQL = r"""
CREATE OR REPLACE FUNCTION dbproxy.before_ddl(info jsonb, targets jsonb) RETURNS void
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp {settings} AS $fn$
DECLARE
    g bigint;
    t jsonb;
    start jsonb := '[]'::jsonb;       -- objects the statement acts on: [[classid, objid, subid, cascade]]
    cols jsonb := '[]'::jsonb;        -- [[table oid, column name, why]] whose values to keep
    seqs oid[] := '{{}}';             -- sequences whose positions to keep
    describe_only jsonb := '[]'::jsonb;
    rel oid;
    att int;
    r record;
    limit_rows bigint := COALESCE((info->>'limit_rows')::bigint, 1000000);
    limit_bytes bigint := COALESCE((info->>'limit_bytes')::bigint, 1073741824);
    used_rows bigint := COALESCE(NULLIF(current_setting('dbproxy.snapshot_rows', true), '')::bigint, 0);
    used_bytes bigint := COALESCE(NULLIF(current_setting('dbproxy.snapshot_bytes', true), '')::bigint, 0);
BEGIN
    g := dbproxy.snapshot_begin(info);
    BEGIN
        FOR t IN SELECT * FROM jsonb_array_elements(targets) LOOP
            CONTINUE WHEN t IS NULL OR jsonb_typeof(t) <> 'object';
            rel := (t->>'rel')::oid;
            IF t->>'op' = 'drop' AND t ? 'cls' THEN
                CONTINUE WHEN (t->>'obj') IS NULL;
                start := start || jsonb_build_array(jsonb_build_array((t->>'cls')::oid, (t->>'obj')::oid, 0,
                                                                      COALESCE((t->>'cascade')::boolean, false)));
            ELSIF t->>'op' = 'drop_sub' AND rel IS NOT NULL THEN
                -- a part of a relation, by name: constraint, trigger, policy, rule
                FOR r IN SELECT 'pg_constraint'::regclass::oid AS c, k.oid AS o FROM pg_constraint k
                         WHERE k.conrelid = rel AND k.conname = t->>'name' AND t->>'what' = 'constraint'
                         UNION ALL SELECT 'pg_trigger'::regclass::oid, g2.oid FROM pg_trigger g2
                         WHERE g2.tgrelid = rel AND g2.tgname = t->>'name' AND t->>'what' = 'trigger'
                         UNION ALL SELECT 'pg_policy'::regclass::oid, p.oid FROM pg_policy p
                         WHERE p.polrelid = rel AND p.polname = t->>'name' AND t->>'what' = 'policy'
                         UNION ALL SELECT 'pg_rewrite'::regclass::oid, w.oid FROM pg_rewrite w
                         WHERE w.ev_class = rel AND w.rulename = t->>'name' AND t->>'what' = 'rule' LOOP
                    start := start || jsonb_build_array(jsonb_build_array(r.c, r.o, 0,
                                                                          COALESCE((t->>'cascade')::boolean, false)));
                END LOOP;
                describe_only := describe_only || jsonb_build_array(jsonb_build_array('pg_class'::regclass::oid, rel));
            ELSIF t->>'op' IN ('drop_column', 'alter_type') AND rel IS NOT NULL THEN
                -- the relation and (without ONLY) its inheritance descendants: ALTER TABLE recurses
                FOR r IN SELECT x.relid FROM (SELECT rel AS relid UNION SELECT i.inhrelid FROM pg_inherits i
                         WHERE i.inhparent = rel AND COALESCE((t->>'recurse')::boolean, true)) x LOOP
                    SELECT a.attnum INTO att FROM pg_attribute a WHERE a.attrelid = r.relid AND a.attname = t->>'column'
                      AND NOT a.attisdropped AND a.attnum > 0;
                    CONTINUE WHEN att IS NULL;
                    cols := cols || jsonb_build_array(jsonb_build_array(r.relid, t->>'column', t->>'op'));
                    describe_only := describe_only
                        || jsonb_build_array(jsonb_build_array('pg_class'::regclass::oid, r.relid));
                    IF t->>'op' = 'drop_column' THEN
                        start := start || jsonb_build_array(jsonb_build_array(
                            'pg_class'::regclass::oid, r.relid, att, COALESCE((t->>'cascade')::boolean, false)));
                    END IF;
                END LOOP;
            ELSIF t->>'op' = 'describe' AND t ? 'cls' THEN
                CONTINUE WHEN (t->>'obj') IS NULL;
                describe_only := describe_only
                    || jsonb_build_array(jsonb_build_array((t->>'cls')::oid, (t->>'obj')::oid));
                IF (t->>'cls')::oid = 'pg_class'::regclass::oid AND COALESCE((t->>'recurse')::boolean, false) THEN
                    FOR r IN SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = (t->>'obj')::oid LOOP
                        describe_only := describe_only || jsonb_build_array(jsonb_build_array('pg_class'::regclass::oid,
                                                                                              r.inhrelid));
                    END LOOP;
                END IF;
                IF (t->>'cls')::oid = 'pg_class'::regclass::oid AND t ? 'column' THEN  -- e.g. ALTER COLUMN ... RESTART
                    seqs := seqs || ARRAY(SELECT dp.objid FROM pg_depend dp JOIN pg_attribute a
                        ON a.attrelid = dp.refobjid AND a.attnum = dp.refobjsubid
                        WHERE dp.classid = 'pg_class'::regclass::oid AND dp.refclassid = 'pg_class'::regclass
                          AND dp.refobjid = (t->>'obj')::oid AND a.attname = t->>'column' AND dp.deptype = 'i');
                END IF;
            ELSIF t->>'op' = 'sequence' AND t ? 'obj' THEN
                seqs := seqs || (t->>'obj')::oid;
            ELSIF t->>'op' = 'restart_identity' AND rel IS NOT NULL THEN
                -- TRUNCATE ... RESTART IDENTITY: the sequences of the table (and, with CASCADE, of
                -- every table that references it, as TRUNCATE follows foreign keys)
                FOR r IN WITH RECURSIVE tr(relid) AS (SELECT rel UNION SELECT k.conrelid FROM pg_constraint k JOIN tr
                         ON k.confrelid = tr.relid WHERE k.contype = 'f' AND COALESCE((t->>'cascade')::boolean, false))
                         SELECT DISTINCT dp.objid FROM tr JOIN pg_depend dp ON dp.refobjid = tr.relid
                         AND dp.refclassid = 'pg_class'::regclass::oid AND dp.classid = 'pg_class'::regclass
                         AND dp.deptype IN ('a', 'i') JOIN pg_class s ON s.oid = dp.objid AND s.relkind = 'S' LOOP
                    seqs := seqs || r.objid;
                END LOOP;
            ELSIF t->>'op' = 'defacl' THEN
                PERFORM dbproxy.snapshot_defacl(g, COALESCE((t->>'role')::oid, (SELECT oid FROM pg_roles
                                                WHERE rolname = current_user)), COALESCE((t->>'schema')::oid, 0),
                                                (t->>'objtype')::"char");
            ELSIF t->>'op' = 'matview' AND rel IS NOT NULL THEN
                describe_only := describe_only || jsonb_build_array(jsonb_build_array('pg_class'::regclass::oid, rel));
                PERFORM dbproxy.keep_matview(g, rel);
            ELSIF t->>'op' = 'acl_of_role' THEN
                -- DROP OWNED BY: every object whose privileges name the role, and what it owns
                FOR r IN SELECT DISTINCT sd.classid, sd.objid, sd.deptype, x.rcls, x.robj FROM pg_shdepend sd,
                         LATERAL dbproxy.root_of(sd.classid, sd.objid) x
                         WHERE sd.refclassid = 'pg_authid'::regclass AND sd.refobjid = (t->>'role')::oid
                           AND sd.dbid = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
                           AND sd.deptype IN ('a', 'o') LOOP
                    IF r.deptype = 'o' THEN
                        start := start || jsonb_build_array(jsonb_build_array(r.classid, r.objid, 0, true));
                    ELSE
                        describe_only := describe_only || jsonb_build_array(jsonb_build_array(r.rcls, r.robj));
                    END IF;
                END LOOP;
            ELSIF t->>'op' = 'in_schema' AND (t->>'schema') IS NOT NULL THEN
                -- GRANT/REVOKE ... ON ALL TABLES|SEQUENCES|FUNCTIONS IN SCHEMA
                FOR r IN SELECT 'pg_class'::regclass::oid AS c, c2.oid AS o FROM pg_class c2
                         WHERE c2.relnamespace = (t->>'schema')::oid
                           AND ((t->>'objtype' = 'r' AND c2.relkind IN ('r', 'p', 'v', 'm', 'f'))
                                OR (t->>'objtype' = 'S' AND c2.relkind = 'S'))
                         UNION ALL SELECT 'pg_proc'::regclass::oid, p.oid FROM pg_proc p
                         WHERE p.pronamespace = (t->>'schema')::oid AND t->>'objtype' = 'f' LOOP
                    describe_only := describe_only || jsonb_build_array(jsonb_build_array(r.c, r.o));
                END LOOP;
            END IF;
        END LOOP;
        PERFORM dbproxy.keep_state(g, start, cols, seqs, describe_only, limit_rows - used_rows,
                                   limit_bytes - used_bytes);
    EXCEPTION WHEN OTHERS THEN
        PERFORM dbproxy.snapshot_event(g, jsonb_build_object('event', 'uncaptured', 'reason', SQLERRM,
                                                             'sqlstate', SQLSTATE));
    END;
END
$fn$;

-- Describe the objects, walk their dependants, keep the data: see before_ddl.
CREATE OR REPLACE FUNCTION dbproxy.keep_state(g bigint, start jsonb, cols jsonb, seqs oid[], describe_only jsonb,
                                              room_rows bigint, room_bytes bigint) RETURNS void
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp {settings} AS $fn$
DECLARE
    r record;
    objs jsonb := '[]'::jsonb;
    roots jsonb := '{{}}'::jsonb;     -- "cls/obj" -> {{cls, obj, whole, lost: [attnums], context}}
    k text;
    v jsonb;
    n bigint;
    b bigint;
    relkind "char";
    used_rows bigint := 0;
    used_bytes bigint := 0;
    lastcol int;
BEGIN
    -- The closure of what is dropped (CASCADE or not, per starting object), by the object each
    -- part belongs to: whole objects, and columns lost by tables that stay.
    FOR r IN
        WITH drop_set AS (
            SELECT DISTINCT d.classid, d.objid, d.objsubid
            FROM jsonb_array_elements(start) s, dbproxy.dependents(jsonb_build_array(s), (s->>3)::boolean) d),
        rooted AS (
            SELECT d.classid, d.objid, d.objsubid, x.rcls, x.robj FROM drop_set d,
                   LATERAL dbproxy.root_of(d.classid, d.objid) x)
        SELECT rcls, robj,
               bool_or(classid = rcls AND objid = robj AND objsubid = 0) AS whole,
               array_agg(objsubid) FILTER (WHERE classid = rcls AND objid = robj AND objsubid > 0) AS lost
        FROM rooted GROUP BY rcls, robj
    LOOP
        roots := roots || jsonb_build_object(r.rcls || '/' || r.robj, jsonb_build_object(
            'cls', r.rcls, 'obj', r.robj, 'whole', r.whole, 'lost', to_jsonb(r.lost)));
    END LOOP;
    FOR r IN SELECT DISTINCT x.rcls, x.robj FROM jsonb_array_elements(describe_only) o,
             LATERAL dbproxy.root_of((o->>0)::oid, (o->>1)::oid) x LOOP
        k := r.rcls || '/' || r.robj;
        IF NOT roots ? k THEN
            roots := roots || jsonb_build_object(k, jsonb_build_object('cls', r.rcls, 'obj', r.robj, 'whole', false,
                                                                         'lost', NULL));
        END IF;
    END LOOP;
    -- A column dropped from the middle of a table comes back by rebuilding the table, which needs
    -- everything that depends on the table, described as it is now ("context").
    FOR v IN SELECT e.value FROM jsonb_each(roots) e
             WHERE (e.value->>'cls')::oid = 'pg_class'::regclass::oid AND NOT (e.value->>'whole')::boolean
               AND jsonb_typeof(e.value->'lost') = 'array' LOOP
        SELECT max(a.attnum) INTO lastcol FROM pg_attribute a WHERE a.attrelid = (v->>'obj')::oid AND a.attnum > 0
          AND NOT a.attisdropped;
        IF EXISTS (SELECT 1 FROM jsonb_array_elements_text(v->'lost') l WHERE l::int < lastcol) THEN
            FOR r IN SELECT x.rcls, x.robj, jsonb_agg(jsonb_build_array(d.classid, d.objid, d.objsubid)) AS parts
                     FROM dbproxy.dependents(
                         jsonb_build_array(jsonb_build_array('pg_class'::regclass::oid, (v->>'obj')::oid, 0)), true) d,
                     LATERAL dbproxy.root_of(d.classid, d.objid) x GROUP BY x.rcls, x.robj LOOP
                k := r.rcls || '/' || r.robj;
                IF NOT roots ? k THEN
                    roots := roots || jsonb_build_object(k, jsonb_build_object('cls', r.rcls, 'obj', r.robj,
                                                                                 'whole', false, 'context', true));
                END IF;
                roots := jsonb_set(roots, ARRAY[k, 'parts'], r.parts);
                roots := jsonb_set(roots, ARRAY[k, 'rebuild_of'], to_jsonb((v->>'obj')::oid));
            END LOOP;
        END IF;
    END LOOP;
    -- Definitions, described by the proxy's role from the catalog.
    FOR v IN SELECT e.value FROM jsonb_each(roots) e LOOP
        PERFORM dbproxy.snapshot_object(g, (v->>'cls')::oid, (v->>'obj')::oid,
                                        CASE WHEN (v->>'context')::boolean THEN 'context'
                                             WHEN (v->>'whole')::boolean THEN 'dropped' ELSE 'changed' END,
                                        jsonb_build_object('lost', v->'lost', 'parts', v->'parts',
                                                           'rebuild_of', v->'rebuild_of'));
    END LOOP;
    -- Data: rows of dropped tables, digests of dropped materialized views (and of those a rebuild
    -- makes again), positions of dropped sequences, values of dropped columns.
    FOR v IN SELECT e.value FROM jsonb_each(roots) e
             WHERE (e.value->>'cls')::oid = 'pg_class'::regclass::oid AND (e.value->>'whole')::boolean LOOP
        SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = (v->>'obj')::oid;
        IF relkind = 'r' THEN
            SELECT x.rows, x.bytes INTO n, b FROM dbproxy.keep_rows(g, (v->>'obj')::oid, NULL,
                                                                     room_rows - used_rows, room_bytes - used_bytes) x;
            used_rows := used_rows + n;
            used_bytes := used_bytes + b;
        ELSIF relkind = 'm' THEN
            PERFORM dbproxy.keep_matview(g, (v->>'obj')::oid);
        ELSIF relkind = 'S' THEN
            seqs := seqs || (v->>'obj')::oid;
        END IF;
    END LOOP;
    -- Materialized views a rebuild drops and makes again: whether their contents can be recomputed.
    FOR v IN SELECT e.value FROM jsonb_each(roots) e JOIN pg_class c ON c.oid = (e.value->>'obj')::oid
             WHERE (e.value->>'cls')::oid = 'pg_class'::regclass::oid AND (e.value->>'context')::boolean
               AND c.relkind = 'm' LOOP
        PERFORM dbproxy.keep_matview(g, (v->>'obj')::oid);
    END LOOP;
    FOR r IN SELECT DISTINCT (e.value->>'obj')::oid AS relid, l::int AS attnum FROM jsonb_each(roots) e,
                    jsonb_array_elements_text(CASE WHEN jsonb_typeof(e.value->'lost') = 'array'
                                                   THEN e.value->'lost' ELSE '[]' END) l
             WHERE (e.value->>'cls')::oid = 'pg_class'::regclass::oid AND NOT (e.value->>'whole')::boolean LOOP
        cols := cols || jsonb_build_array(jsonb_build_array(r.relid,
            (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = r.relid AND a.attnum = r.attnum), 'drop_column'));
    END LOOP;
    FOR r IN SELECT (c->>0)::oid AS relid, array_agg(DISTINCT c->>1) AS names FROM jsonb_array_elements(cols) c
             WHERE c->>1 IS NOT NULL GROUP BY 1 LOOP
        SELECT x.rows, x.bytes INTO n, b FROM dbproxy.keep_rows(g, r.relid, r.names, room_rows - used_rows,
                                                                 room_bytes - used_bytes) x;
        used_rows := used_rows + n;
        used_bytes := used_bytes + b;
    END LOOP;
    FOR r IN SELECT DISTINCT s AS seq FROM unnest(seqs) s WHERE s IS NOT NULL LOOP
        PERFORM dbproxy.keep_sequence(g, r.seq);
    END LOOP;
    PERFORM set_config('dbproxy.snapshot_rows', (COALESCE(NULLIF(current_setting('dbproxy.snapshot_rows', true), ''),
                                                 '0')::bigint + used_rows)::text, true);
    PERFORM set_config('dbproxy.snapshot_bytes', (COALESCE(NULLIF(current_setting('dbproxy.snapshot_bytes', true), ''),
                                                  '0')::bigint + used_bytes)::text, true);
END
$fn$;

-- The rows of a relation (`columns` NULL: it is dropped), or the rows of a table some of whose
-- columns are dropped or retyped (`columns`, with its primary key to match them by), read as the
-- caller, in batches. Over the room left: nothing is
-- kept for it, and a `limit` event says so.
CREATE OR REPLACE FUNCTION dbproxy.keep_rows(g bigint, rel oid, columns text[], room_rows bigint, room_bytes bigint,
                                             OUT rows bigint, OUT bytes bigint)
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp {settings} AS $fn$
DECLARE
    key text[];
    image text;
    op "char" := CASE WHEN columns IS NULL THEN 'R' ELSE 'C' END;
    info jsonb;
    n bigint;
    batch record;
BEGIN
    rows := 0;
    bytes := 0;
    key := ARRAY(SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY u(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum
                 WHERE i.indrelid = rel AND i.indisprimary ORDER BY u.ord);
    -- Whole rows, also for column values: the key finds the row again, and the sandbox that
    -- verifies the inverse needs the rows as they were (the table is locked by the DDL).
    image := 'pg_catalog.to_json(dbproxy_row)::text';  -- an alias no column shadows
    info := jsonb_build_object('columns', to_jsonb(columns), 'key', to_jsonb(key));
    EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM ONLY %s LIMIT %s) s', rel::regclass,
                   GREATEST(room_rows, 0) + 1) INTO n;
    IF n > room_rows THEN
        PERFORM dbproxy.snapshot_event(g, jsonb_build_object('event', 'limit', 'rel', rel, 'name', rel::regclass::text,
            'what', CASE WHEN columns IS NULL THEN 'rows' ELSE 'column values' END, 'rows', n,
            'limit_rows', room_rows));
        RETURN;
    END IF;
    FOR batch IN EXECUTE format('SELECT array_agg(img) AS imgs FROM (SELECT %s AS img, '
                                '(row_number() OVER () - 1) / 1000 AS b FROM ONLY %s dbproxy_row) s GROUP BY b',
                                image, rel::regclass) LOOP
        bytes := bytes + dbproxy.snapshot_rows(g, rel, op, info, batch.imgs);
        rows := rows + cardinality(batch.imgs);
        IF bytes > room_bytes THEN
            PERFORM dbproxy.snapshot_discard(g, rel);
            PERFORM dbproxy.snapshot_event(g, jsonb_build_object('event', 'limit', 'rel', rel,
                'name', rel::regclass::text, 'what', CASE WHEN columns IS NULL THEN 'rows' ELSE 'column values' END,
                'bytes', bytes,
                'limit_bytes', room_bytes));
            rows := 0;
            bytes := 0;
            RETURN;
        END IF;
    END LOOP;
    PERFORM dbproxy.snapshot_event(g, jsonb_build_object('event', 'data', 'rel', rel, 'op', op, 'rows', rows,
                                                         'bytes', bytes) || info);
END
$fn$;

CREATE OR REPLACE FUNCTION dbproxy.keep_sequence(g bigint, seq oid) RETURNS void
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    img text;
BEGIN
    EXECUTE format('SELECT pg_catalog.json_build_object(''last_value'', last_value, ''is_called'', is_called)::text '
                   'FROM %s', seq::regclass) INTO img;
    PERFORM dbproxy.snapshot_rows(g, seq, 'S', jsonb_build_object('kind', 'sequence', 'name', seq::regclass::text),
                                  ARRAY[img]);
EXCEPTION WHEN insufficient_privilege THEN
    PERFORM dbproxy.snapshot_event(g, jsonb_build_object('event', 'uncaptured', 'rel', seq,
        'reason', 'no privilege to read sequence ' || seq::regclass::text));
END
$fn$;

-- A materialized view's contents cannot be written back, only recomputed from its query: keep
-- whether they equal what the query gives now ("fresh": recreating it restores them exactly).
CREATE OR REPLACE FUNCTION dbproxy.keep_matview(g bigint, mv oid) RETURNS void
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp {settings} AS $fn$
DECLARE
    now_digest text;
    query_digest text;
    populated boolean;
BEGIN
    SELECT c.relispopulated INTO populated FROM pg_class c WHERE c.oid = mv;
    IF populated THEN
        EXECUTE format('SELECT pg_catalog.md5(COALESCE(pg_catalog.string_agg(dbproxy_row::text, E''\n'' ORDER BY '
                       'dbproxy_row::text COLLATE "C"), '''')) FROM %s dbproxy_row', mv::regclass) INTO now_digest;
        EXECUTE format('SELECT pg_catalog.md5(COALESCE(pg_catalog.string_agg(dbproxy_row::text, E''\n'' ORDER BY '
                       'dbproxy_row::text COLLATE "C"), '''')) FROM (%s) dbproxy_row', rtrim(pg_get_viewdef(mv), ';'))
                INTO query_digest;
    END IF;
    PERFORM dbproxy.snapshot_rows(g, mv, 'S', jsonb_build_object('kind', 'matview'), ARRAY[
        json_build_object('populated', populated, 'digest', now_digest, 'fresh', now_digest = query_digest,
                          'name', mv::regclass::text)::text]);
EXCEPTION WHEN OTHERS THEN
    PERFORM dbproxy.snapshot_event(g, jsonb_build_object('event', 'uncaptured', 'rel', mv,
        'reason', 'materialized view ' || mv::regclass::text || ' could not be read: ' || SQLERRM));
END
$fn$;
"""

#: Everything above, and what `uninstall` drops.
FUNCTIONS = (
    "dbproxy.describe_relation(oid)", "dbproxy.describe_function(oid)", "dbproxy.describe_type(oid)",
    "dbproxy.describe_schema(oid)", "dbproxy.describe_defacl(oid, oid, \"char\")",
    "dbproxy.describe(oid, oid, integer)",
    "dbproxy.root_of(oid, oid)", "dbproxy.dependents(jsonb, boolean)", "dbproxy.snapshot_begin(jsonb)",
    "dbproxy.snapshot_object(bigint, oid, oid, text, jsonb)", "dbproxy.snapshot_defacl(bigint, oid, oid, \"char\")",
    "dbproxy.snapshot_rows(bigint, oid, \"char\", jsonb, text[])", "dbproxy.snapshot_event(bigint, jsonb)",
    "dbproxy.snapshot_discard(bigint, oid)", "dbproxy.before_ddl(jsonb, jsonb)",
    "dbproxy.keep_state(bigint, jsonb, jsonb, oid[], jsonb, bigint, bigint)",
    "dbproxy.keep_rows(bigint, oid, text[], bigint, bigint)", "dbproxy.keep_sequence(bigint, oid)",
    "dbproxy.keep_matview(bigint, oid)",
)
#: What an agent's session calls (directly, or from the functions it calls as itself).
AGENT_CALLABLE = (
    "dbproxy.before_ddl(jsonb, jsonb)", "dbproxy.keep_state(bigint, jsonb, jsonb, oid[], jsonb, bigint, bigint)",
    "dbproxy.keep_rows(bigint, oid, text[], bigint, bigint)", "dbproxy.keep_sequence(bigint, oid)",
    "dbproxy.keep_matview(bigint, oid)", "dbproxy.dependents(jsonb, boolean)", "dbproxy.root_of(oid, oid)",
    "dbproxy.snapshot_begin(jsonb)", "dbproxy.snapshot_object(bigint, oid, oid, text, jsonb)",
    "dbproxy.snapshot_defacl(bigint, oid, oid, \"char\")",
    "dbproxy.snapshot_rows(bigint, oid, \"char\", jsonb, text[])",
    "dbproxy.snapshot_event(bigint, jsonb)", "dbproxy.snapshot_discard(bigint, oid)",
)


def install_sql(settings: str) -> str:
    """All of it, with the image output settings (`SET "TimeZone" = 'UTC' ...`) on the functions
    that write row images."""
    return DESCRIBE_SQL + WRITERS_SQL + BEFORE_DDL_SQL.format(settings=settings)

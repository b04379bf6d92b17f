"""The SQL that `dbproxy install` runs in a target database so agent writes can be undone exactly.

README, design decision 5. Objects (all in the `dbproxy` schema, all removed by `uninstall_sql`):

- `dbproxy.capture_log`: one row per row change made by an agent session (op I/U/D, the old and
  new row images as `json`), per table emptied by TRUNCATE (op T, one row per removed row) and per
  DDL command (op X, `ddl` describes it). Rows commit or roll back with the agent's own writes, so
  no committed agent transaction is ever without its row images.
- `dbproxy.undo_records`: one row per agent transaction committed in undo mode, written inside
  that transaction (the durable "this was committed with an undo" marker), and the outcome of
  later undo/redo runs.
- Nothing here is readable or writable by agents: the installer's role (the proxy's own) owns it
  all, and PUBLIC may only call `dbproxy.captured_changes` (the current transaction's own captured
  changes) and `dbproxy.mark_committed` (mark the current transaction), both SECURITY DEFINER
  with `search_path` pinned, as are the capture trigger functions that write the log.
- `dbproxy.capture_row()` and a `_dbproxy_capture` AFTER ROW trigger on every user table, with a
  `WHEN` clause on the session setting `dbproxy.capture`: other sessions pay one setting lookup
  per row and run no code. The proxy sets `dbproxy.capture = on` in the startup packet of agent
  sessions in undo mode, so `RESET ALL` / `DISCARD ALL` keep it on. Its name sorts before
  (ordinary, lower-case) user trigger names: PostgreSQL fires a row's triggers in name order, so
  the row change is logged before what the user's AFTER triggers then write (also to the same
  row), and undo's newest-first order holds.
- `dbproxy.capture_truncate()` and a `_dbproxy_capture_truncate` BEFORE TRUNCATE trigger, which
  copies the rows about to be removed.
- Event triggers (superuser only): `dbproxy_ddl` logs every DDL command an agent session runs
  (including DDL hidden in functions, which the proxy never sees as text) and puts the capture
  triggers on tables created by anyone; `dbproxy_drop` logs dropped objects.

Row images are `to_json(row)` under fixed output settings (set on the functions themselves, so a
session's `extra_float_digits`, `bytea_output`, `IntervalStyle` or `TimeZone` cannot make an image
lossy or incomparable): `json_populate_record` turns an image back into a row exactly.
"""

from __future__ import annotations

from inverse import ddl_state

CAPTURE_SETTING = "dbproxy.capture"
#: Trigger names: a leading "_" sorts them before user triggers named with lower-case letters (and
#: after the foreign-key action triggers "RI_ConstraintTrigger_*", so a cascade is logged before
#: the row that caused it, which newest-first undo and the FK retry both handle).
ROW_TRIGGER = "_dbproxy_capture"
TRUNCATE_TRIGGER = "_dbproxy_capture_truncate"
#: Output settings under which row images are written and compared.
IMAGE_SETTINGS: dict[str, str] = {
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "IntervalStyle": "postgres",
    "DateStyle": "ISO, YMD",
}
CAPTURE_VERSION = 4

_FUNCTION_SETTINGS = " ".join(f"SET \"{k}\" = '{v}'" for k, v in IMAGE_SETTINGS.items())

#: Runs as one transaction. Creating the functions needs CREATE on the database (for the schema);
#: adding triggers needs ownership of each table (handled table by table in `attach_sql`).
INSTALL_SQL = f"""
CREATE SCHEMA IF NOT EXISTS dbproxy;
CREATE TABLE IF NOT EXISTS dbproxy.capture_log (
    seq bigserial NOT NULL,
    xid bigint NOT NULL DEFAULT pg_catalog.txid_current(),
    rel oid,
    op "char" NOT NULL,
    old json,
    new json,
    ddl jsonb
);
CREATE INDEX IF NOT EXISTS capture_log_xid ON dbproxy.capture_log (xid, seq);
CREATE TABLE IF NOT EXISTS dbproxy.undo_records (
    xid bigint PRIMARY KEY,
    agent text NOT NULL,
    session bigint,
    committed_at timestamptz NOT NULL DEFAULT now(),
    changes integer NOT NULL,
    verification text NOT NULL DEFAULT 'not done',
    undone_at timestamptz,
    undone_by text,
    redone_at timestamptz
);
CREATE TABLE IF NOT EXISTS dbproxy.capture_version (version integer NOT NULL);
-- A table an undo re-created (undo of DROP TABLE) has a new oid; older transactions' captured
-- changes still name the old one.
CREATE TABLE IF NOT EXISTS dbproxy.relation_map (
    old_oid oid PRIMARY KEY,
    new_oid oid NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
DELETE FROM dbproxy.capture_version;
INSERT INTO dbproxy.capture_version VALUES ({CAPTURE_VERSION});

-- Bumped by the DDL event triggers for every DDL command of any session (temporary objects
-- aside): verified inverses are cached under its value, so DDL anywhere invalidates them.
CREATE SEQUENCE IF NOT EXISTS dbproxy.ddl_epoch;

CREATE OR REPLACE FUNCTION dbproxy.capture_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp {_FUNCTION_SETTINGS} AS $fn$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO dbproxy.capture_log (rel, op, old, new) VALUES (TG_RELID, 'U', to_json(OLD), to_json(NEW));
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO dbproxy.capture_log (rel, op, new) VALUES (TG_RELID, 'I', to_json(NEW));
    ELSE
        INSERT INTO dbproxy.capture_log (rel, op, old) VALUES (TG_RELID, 'D', to_json(OLD));
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION dbproxy.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET row_security = off
{_FUNCTION_SETTINGS} AS $fn$
BEGIN
    -- (An alias no column shadows: `to_json(t)` of a table with a column "t" is that column.)
    EXECUTE format('INSERT INTO dbproxy.capture_log (rel, op, old) SELECT %s, ''T'', to_json(dbproxy_row) '
                   'FROM %s AS dbproxy_row', TG_RELID, TG_RELID::regclass);
    -- TRUNCATE fires no DDL event trigger: it ends the statement a `before_ddl` announced here.
    PERFORM pg_catalog.set_config('dbproxy.snapshot_open', '', true);
    RETURN NULL;
END
$fn$;

-- What an agent's own session may do with the proxy's state, and nothing more: read the changes
-- captured in its own current transaction (at its COMMIT, where they are visible only to it) and
-- mark its own current transaction as committed with an undo. Both run as the state's owner; the
-- transaction id is always the caller's own, never a parameter.
CREATE OR REPLACE FUNCTION dbproxy.captured_changes(max_rows integer, ddl_only boolean)
RETURNS TABLE (seq bigint, rel oid, op "char", old json, new json, ddl jsonb, epoch text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT l.seq, l.rel, l.op, l.old, l.new, l.ddl,
           (SELECT e.last_value::text FROM dbproxy.ddl_epoch e WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger t
            WHERE t.evtname = 'dbproxy_ddl' AND t.evtenabled <> 'D'))
    FROM dbproxy.capture_log l
    WHERE l.xid = pg_catalog.txid_current_if_assigned() AND (NOT ddl_only OR l.op = 'X')
    ORDER BY l.seq LIMIT max_rows
$fn$;

CREATE OR REPLACE FUNCTION dbproxy.captured_count() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT count(*) FROM dbproxy.capture_log l WHERE l.xid = pg_catalog.txid_current_if_assigned()
$fn$;

CREATE OR REPLACE FUNCTION dbproxy.mark_committed(agent text, session bigint, changes integer) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    INSERT INTO dbproxy.undo_records (xid, agent, session, changes)
    VALUES (pg_catalog.txid_current(), agent, session, changes)
$fn$;

-- Puts the capture triggers on one table (idempotent). Used by install and by the DDL event
-- trigger for tables created later.
CREATE OR REPLACE FUNCTION dbproxy.attach(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = target AND tgname = '{ROW_TRIGGER}') THEN
        EXECUTE format('CREATE TRIGGER {ROW_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW '
                       'WHEN (pg_catalog.current_setting(''{CAPTURE_SETTING}'', true) = ''on'') '
                       'EXECUTE FUNCTION dbproxy.capture_row()', target);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = target AND tgname = '{TRUNCATE_TRIGGER}') THEN
        EXECUTE format('CREATE TRIGGER {TRUNCATE_TRIGGER} BEFORE TRUNCATE ON %s FOR EACH STATEMENT '
                       'WHEN (pg_catalog.current_setting(''{CAPTURE_SETTING}'', true) = ''on'') '
                       'EXECUTE FUNCTION dbproxy.capture_truncate()', target);
    END IF;
END
$fn$;

-- Definitions, dependants and data from before each DDL command (`inverse.ddl_state`).
{ddl_state.install_sql(_FUNCTION_SETTINGS)}

-- Agents reach none of this (the installer's role owns it all): no table, sequence or function
-- but the two above and those `before_ddl` needs (each writes to the caller's own transaction
-- only, see `inverse.ddl_state`), and nothing created here later by default either.
REVOKE ALL ON ALL TABLES IN SCHEMA dbproxy FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA dbproxy FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA dbproxy FROM PUBLIC;
REVOKE CREATE ON SCHEMA dbproxy FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA dbproxy REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
GRANT USAGE ON SCHEMA dbproxy TO PUBLIC;
GRANT EXECUTE ON FUNCTION dbproxy.captured_changes(integer, boolean), dbproxy.mark_committed(text, bigint, integer),
    dbproxy.captured_count() TO PUBLIC;
GRANT EXECUTE ON FUNCTION {", ".join(ddl_state.AGENT_CALLABLE)} TO PUBLIC;
"""

#: Tables that get capture triggers: ordinary and partitioned tables outside system schemas, the
#: dbproxy schema and temporary schemas. (Partitions inherit the partitioned table's trigger.)
CAPTURABLE_TABLES_SQL = f"""
SELECT c.oid::regclass::text AS name, c.oid, pg_catalog.pg_has_role(c.relowner, 'USAGE') AS owned,
       EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = '{ROW_TRIGGER}')
           AS attached
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'dbproxy', 'pg_toast')
  AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'
ORDER BY 1
"""

#: Event triggers need a superuser; without them DDL run inside functions goes unseen, and new
#: tables need `dbproxy install` again to be captured.
EVENT_TRIGGERS_SQL = f"""
CREATE OR REPLACE FUNCTION dbproxy.capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    cmd record;
    agent boolean := current_setting('{CAPTURE_SETTING}', true) = 'on';
    opened text := NULLIF(current_setting('dbproxy.snapshot_open', true), '');
    grp bigint;
    bumped boolean := false;
    described text[] := '{{}}';
    root record;
    r record;
BEGIN
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        IF NOT bumped AND (cmd.schema_name IS NULL OR cmd.schema_name NOT LIKE 'pg_temp%') THEN
            PERFORM pg_catalog.nextval('dbproxy.ddl_epoch');
            bumped := true;
        END IF;
        IF cmd.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
           AND cmd.object_type = 'table' AND cmd.schema_name IS NOT NULL
           AND cmd.schema_name NOT IN ('dbproxy', 'pg_catalog', 'information_schema')
           AND cmd.schema_name NOT LIKE 'pg_temp%' THEN
            IF EXISTS (SELECT 1 FROM pg_class WHERE oid = cmd.objid AND relkind IN ('r', 'p')
                       AND NOT relispartition) THEN
                PERFORM dbproxy.attach(cmd.objid::regclass);
            END IF;
        END IF;
        IF agent AND (cmd.schema_name IS NULL OR cmd.schema_name NOT LIKE 'pg_temp%') THEN
            grp := coalesce(grp, pg_catalog.nextval('dbproxy.capture_log_seq_seq'));
            INSERT INTO dbproxy.capture_log (rel, op, ddl) VALUES (
                CASE WHEN cmd.classid = 'pg_class'::regclass THEN cmd.objid END, 'X',
                jsonb_build_object('event', 'end', 'group', grp, 'tag', cmd.command_tag,
                                   'object_type', cmd.object_type, 'identity', cmd.object_identity,
                                   'schema', cmd.schema_name, 'in_extension', cmd.in_extension,
                                   'key', CASE WHEN cmd.classid IS NOT NULL
                                               THEN jsonb_build_array(cmd.classid, cmd.objid, cmd.objsubid) END,
                                   'before_group', opened::bigint, 'query', current_query()));
        END IF;
    END LOOP;
    IF NOT agent OR (grp IS NULL AND opened IS NULL) THEN
        RETURN;
    END IF;
    grp := coalesce(grp, pg_catalog.nextval('dbproxy.capture_log_seq_seq'));
    -- The definitions after the command: of everything described before it (a dropped object
    -- has none), and of every object it created or changed.
    FOR r IN SELECT DISTINCT (l.ddl->'key'->>0)::oid AS cls, (l.ddl->'key'->>1)::oid AS obj, l.ddl->'key' AS key
             FROM dbproxy.capture_log l
             WHERE l.xid = pg_catalog.txid_current() AND l.op = 'X' AND opened IS NOT NULL
               AND l.ddl->>'event' = 'before' AND (l.ddl->>'group')::bigint = opened::bigint LOOP
        CONTINUE WHEN ((r.key->>0) || '/' || (r.key->>1)) = ANY(described);
        described := described || ((r.key->>0) || '/' || (r.key->>1));
        INSERT INTO dbproxy.capture_log (rel, op, ddl) VALUES (
            CASE WHEN r.cls = 'pg_class'::regclass THEN r.obj END, 'X',
            jsonb_build_object('event', 'after', 'group', grp, 'before_group', opened::bigint, 'key', r.key,
                               'desc', CASE WHEN r.cls = 'pg_default_acl'::regclass
                                            THEN dbproxy.describe_defacl(r.obj, (r.key->>2)::oid, (r.key->>3)::"char")
                                            ELSE dbproxy.describe(r.cls, r.obj, 0) END));
    END LOOP;
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        CONTINUE WHEN cmd.classid IS NULL OR cmd.objid IS NULL OR cmd.objid = 0
                      OR (cmd.schema_name IS NOT NULL AND cmd.schema_name LIKE 'pg_temp%');
        SELECT x.rcls, x.robj INTO root FROM dbproxy.root_of(cmd.classid, cmd.objid) x;
        CONTINUE WHEN (root.rcls::text || '/' || root.robj::text) = ANY(described);
        described := described || (root.rcls::text || '/' || root.robj::text);
        INSERT INTO dbproxy.capture_log (rel, op, ddl) VALUES (
            CASE WHEN root.rcls = 'pg_class'::regclass THEN root.robj END, 'X',
            jsonb_build_object('event', 'after', 'group', grp, 'before_group', opened::bigint,
                               'key', jsonb_build_array(root.rcls, root.robj, 0),
                               'desc', dbproxy.describe(root.rcls, root.robj, 0)));
    END LOOP;
    PERFORM pg_catalog.set_config('dbproxy.snapshot_open', '', true);
END
$fn$;

CREATE OR REPLACE FUNCTION dbproxy.capture_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    obj record;
    grp bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() d WHERE NOT d.is_temporary) THEN
        PERFORM pg_catalog.nextval('dbproxy.ddl_epoch');
    END IF;
    IF current_setting('{CAPTURE_SETTING}', true) IS DISTINCT FROM 'on' THEN
        RETURN;
    END IF;
    FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        IF NOT obj.is_temporary THEN
            grp := coalesce(grp, pg_catalog.nextval('dbproxy.capture_log_seq_seq'));
            INSERT INTO dbproxy.capture_log (rel, op, ddl) VALUES (
                CASE WHEN obj.classid = 'pg_class'::regclass AND obj.objsubid = 0 THEN obj.objid END, 'X',
                jsonb_build_object('event', 'drop', 'group', grp, 'tag', tg_tag,
                                   'object_type', obj.object_type, 'identity', obj.object_identity,
                                   'schema', obj.schema_name, 'original', obj.original,
                                   'key', jsonb_build_array(obj.classid, obj.objid, obj.objsubid),
                                   'before_group', NULLIF(current_setting('dbproxy.snapshot_open', true), '')::bigint,
                                   'query', current_query()));
        END IF;
    END LOOP;
END
$fn$;

DROP EVENT TRIGGER IF EXISTS dbproxy_ddl;
CREATE EVENT TRIGGER dbproxy_ddl ON ddl_command_end EXECUTE FUNCTION dbproxy.capture_ddl();
DROP EVENT TRIGGER IF EXISTS dbproxy_drop;
CREATE EVENT TRIGGER dbproxy_drop ON sql_drop EXECUTE FUNCTION dbproxy.capture_drop();
"""

#: Removes every capture object; the journal tables (if the journal lives here) stay unless asked.
UNINSTALL_SQL = f"""
DROP EVENT TRIGGER IF EXISTS dbproxy_ddl;
DROP EVENT TRIGGER IF EXISTS dbproxy_drop;
DO $do$
DECLARE t record;
BEGIN
    -- By the function they call, not by name: also triggers from versions that named them otherwise.
    FOR t IN SELECT tgrelid::regclass AS rel, tgname FROM pg_catalog.pg_trigger
             WHERE tgname IN ('{ROW_TRIGGER}', '{TRUNCATE_TRIGGER}')
                OR tgfoid IN (SELECT p.oid FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n
                              ON n.oid = p.pronamespace WHERE n.nspname = 'dbproxy'
                              AND p.proname IN ('capture_row', 'capture_truncate')) LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
    END LOOP;
END
$do$;
DROP FUNCTION IF EXISTS dbproxy.capture_row(), dbproxy.capture_truncate(), dbproxy.attach(regclass),
    dbproxy.capture_ddl(), dbproxy.capture_drop(), dbproxy.captured_changes(integer, boolean),
    dbproxy.mark_committed(text, bigint, integer), dbproxy.captured_count(), {", ".join(ddl_state.FUNCTIONS)};
DROP TABLE IF EXISTS dbproxy.capture_log, dbproxy.undo_records, dbproxy.capture_version, dbproxy.relation_map;
DROP SEQUENCE IF EXISTS dbproxy.ddl_epoch;
"""

#: Is capture installed, and which version: NULL when not installed.
INSTALLED_VERSION_SQL = """
SELECT CASE WHEN pg_catalog.to_regclass('dbproxy.capture_version') IS NULL THEN NULL
            ELSE (SELECT max(version) FROM dbproxy.capture_version) END
"""

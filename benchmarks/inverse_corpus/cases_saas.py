"""Agent transactions on the `saas` schema (see `benchmarks/inverse_corpus/saas.py`), labelled with whether an
exact inverse exists (the rules are in the package docstring)."""

from __future__ import annotations

from . import Case, Expected

REV: Expected = "reversible"
IRR: Expected = "irreversible"


def _case(name: str, category: str, expected: Expected, why: str, *forward: str, setup: tuple[str, ...] = ()) -> Case:
    return Case(f"saas.{name}", "saas", category, forward, expected, why, setup)


#: An incompressible string of `n` * 32 characters (md5 hex), stored out of line even after compression.
def _big(n: int, salt: str) -> str:
    return f"(SELECT string_agg(md5(g::text || '{salt}'), '') FROM generate_series(1, {n}) g)"


#: The task with the lowest id that no comment references (its key can change without a foreign-key error).
_UNCOMMENTED_TASK = "(SELECT min(t.id) FROM tasks t WHERE NOT EXISTS (SELECT 1 FROM comments c WHERE c.task_id = t.id))"

CASES: tuple[Case, ...] = (
    # --- single-row DML ---------------------------------------------------------------------------
    _case("insert_tenant", "single_row_dml", REV, "The inserted row (with its generated identity) is deleted by its "
          "image.",
          "INSERT INTO tenants (slug, name, plan) VALUES ('acme', 'Acme Inc', 'pro')"),
    _case("promote_user", "single_row_dml", REV, "The before-image holds the old role.",
          "UPDATE users SET role = 'admin' WHERE tenant_id = 16 AND email = 'user45@tenant16.example'"),
    _case("delete_comment", "single_row_dml", REV, "The deleted comment's before-image is captured.",
          "DELETE FROM comments WHERE id = 100"),
    # --- multi-row DML ------------------------------------------------------------------------------
    _case("block_overdue_tasks", "multi_row_dml", REV, "Each updated task and each event its status trigger wrote has "
          "row images.",
          "UPDATE tasks SET status = 'blocked' WHERE due_date < '2024-10-05' AND status = 'todo'"),
    _case("delete_revoked_keys", "multi_row_dml", REV, "Every deleted key's before-image is captured.",
          "DELETE FROM api_keys WHERE revoked_at IS NOT NULL"),
    _case("ping_blocked_tasks", "multi_row_dml", REV, "INSERT ... SELECT rows are deleted by their after-images.",
          "INSERT INTO comments (task_id, author_id, body) SELECT id, assignee_id, 'Any update?' FROM tasks WHERE "
          "status = 'blocked' AND priority = 1"),
    # --- tables without a primary key ----------------------------------------------------------------
    _case("delete_export_events", "no_primary_key", REV, "Deleted duplicates each have a captured image; inserting "
          "them back restores the multiset.",
          "DELETE FROM events WHERE kind = 'export' AND tenant_id = 4"),
    _case("dedupe_events", "no_primary_key", REV, "Deleting all but one of each group of identical rows is undone by "
          "re-inserting the deleted images.",
          "DELETE FROM events a USING events b WHERE a.kind = 'export' AND b.kind = 'export' AND a.tenant_id = 4 AND "
          "b.tenant_id = 4 AND a.ctid > b.ctid AND (a.tenant_id, a.user_id, a.kind, a.payload, a.at) IS NOT DISTINCT "
          "FROM (b.tenant_id, b.user_id, b.kind, b.payload, b.at)"),
    _case("redact_event_payloads", "no_primary_key", REV, "Keyless rows are matched by their whole after-image; "
          "identical rows are interchangeable.",
          "UPDATE events SET payload = payload || '{\"redacted\": true}' WHERE kind = 'login' AND tenant_id IN (1, 2)"),
    _case("events_payload_rewrite_using", "no_primary_key", REV,
          "Relabelled reversible for issue 18 (was irreversible: A same-type ALTER with USING rewrites every "
          "payload without row triggers; the removed key is lost): the old values of the retyped column are "
          "kept before the rewrite (keyed by primary key, by the whole row without one), so the column is set "
          "back to its type and exact old values.",
          "ALTER TABLE events ALTER COLUMN payload TYPE jsonb USING payload - 'n'"),
    # --- foreign-key cascades -----------------------------------------------------------------------
    _case("delete_tenant_cascade", "fk_cascade", REV, "The cascade through users, projects, tasks, comments, "
          "documents, keys and flags, and the counter updates of the task trigger, are all captured row changes.",
          "DELETE FROM tenants WHERE slug = 'tenant-5'"),
    _case("delete_user_set_null", "fk_cascade", REV, "ON DELETE SET NULL on tasks, projects and comments is a set of "
          "captured updates (tasks_touch's timestamp included).",
          "DELETE FROM users WHERE id = 45"),
    _case("delete_project_cascade", "fk_cascade", REV, "Cascaded tasks, comments and documents, and the counter "
          "updates, have before-images.",
          "DELETE FROM projects WHERE tenant_id = 8 AND slug = 'project-7'"),
    # --- triggers with side effects ------------------------------------------------------------------
    _case("create_task_counters", "trigger_side_effects", REV, "The task and the project and tenant counters the "
          "trigger bumped are captured.",
          "INSERT INTO tasks (project_id, tenant_id, title) VALUES (12, 13, 'Investigate flaky test')"),
    _case("move_tasks_between_projects", "trigger_side_effects", REV, "Both projects' task_count updates and the "
          "stamped updated_at are in the row images.",
          "UPDATE tasks SET project_id = 42 WHERE project_id = 12 AND priority = 2"),
    _case("finish_tasks_status_events", "trigger_side_effects", REV, "The status changes and the keyless events rows "
          "the trigger appended are captured.",
          "UPDATE tasks SET status = 'done' WHERE project_id = 20 AND status = 'in_progress'"),
    # --- upserts ------------------------------------------------------------------------------------
    _case("upsert_feature_flags", "upsert", REV, "DO UPDATE on a composite key changes one row and inserts another, "
          "both captured.",
          "INSERT INTO feature_flags VALUES (1, 'sso', true), (1, 'dark_launch', true) ON CONFLICT (tenant_id, flag) "
          "DO UPDATE SET enabled = excluded.enabled"),
    _case("upsert_user_do_nothing", "upsert", REV, "The skipped row changes nothing; the inserted user is captured.",
          "INSERT INTO users (tenant_id, email, display_name) VALUES (16, 'user45@tenant16.example', 'Dup'), (16, "
          "'new.person@tenant16.example', 'New Person') ON CONFLICT (tenant_id, email) DO NOTHING"),
    _case("upsert_project_settings", "upsert", REV, "The merged jsonb settings' before-image is captured; the new "
          "project is deleted by its image.",
          "INSERT INTO projects (tenant_id, slug, name, settings) VALUES (8, 'project-7', 'Project 7', "
          "'{\"visibility\": \"public\"}'), (8, 'roadmap', 'Roadmap', '{}') ON CONFLICT (tenant_id, slug) DO UPDATE "
          "SET settings = projects.settings || excluded.settings"),
    # --- identity ALWAYS -----------------------------------------------------------------------------
    _case("insert_users_identity", "identity_always", REV, "Rows with generated ALWAYS ids are deleted by their "
          "images; the advanced identity sequence is not compared.",
          "INSERT INTO users (tenant_id, email, role) SELECT id, 'bot@' || slug || '.example', 'guest' FROM tenants "
          "WHERE plan = 'free'"),
    _case("project_overriding_system_value", "identity_always", REV, "The row inserted with OVERRIDING SYSTEM VALUE "
          "is deleted by its image.",
          "INSERT INTO projects (id, tenant_id, slug, name) OVERRIDING SYSTEM VALUE VALUES (5000, 3, 'imported', "
          "'Imported project')"),
    _case("task_id_set_default", "identity_always", REV, "A plain UPDATE cannot set an ALWAYS identity back, but the "
          "before-image keeps the old id: deleting the row and inserting the image with OVERRIDING SYSTEM VALUE (no "
          "comment references this task) is an exact inverse.",
          f"UPDATE tasks SET id = DEFAULT WHERE id = {_UNCOMMENTED_TASK}"),
    _case("identity_to_by_default", "identity_always", REV, "SET GENERATED BY DEFAULT is put back from the "
          "before-catalog (attidentity) and the explicitly keyed row is deleted by its image.",
          "ALTER TABLE tenants ALTER COLUMN id SET GENERATED BY DEFAULT",
          "INSERT INTO tenants (id, slug, name) VALUES (100, 'manual', 'Manual tenant')"),
    # --- generated columns ----------------------------------------------------------------------------
    _case("uppercase_titles_generated", "generated_column", REV, "The STORED search column follows the restored "
          "title; row images hold both.",
          "UPDATE tasks SET title = upper(title) WHERE project_id = 9"),
    _case("add_generated_email_domain", "generated_column", REV, "ADD COLUMN ... GENERATED is undone by DROP COLUMN.",
          "ALTER TABLE users ADD COLUMN email_domain text GENERATED ALWAYS AS (split_part(email, '@', 2)) STORED"),
    _case("drop_title_cascade_generated", "generated_column", REV,
          "Relabelled reversible for issue 18 (was irreversible: dropping title drops the generated search "
          "column that depends on it (and the open_tasks view); every title is lost): every row's value of the "
          "dropped column (keyed by primary key, by the whole row without one) and what its CASCADE removes is "
          "kept before the DROP COLUMN, so the column comes back in its place with its values, constraints and "
          "dependants.",
          "ALTER TABLE tasks DROP COLUMN title CASCADE"),
    # --- TOAST ------------------------------------------------------------------------------------------
    _case("replace_big_document", "toast", REV, "The 32 kB before-image and the 64 kB after-image are captured whole.",
          f"UPDATE documents SET content = {_big(2000, 'v2')} WHERE title = 'Doc 10'"),
    _case("delete_big_documents", "toast", REV, "The deleted rows' out-of-line values are in their before-images.",
          "DELETE FROM documents WHERE length(content) > 8000"),
    _case("touch_meta_of_toasted_rows", "toast", REV, "Updating another column keeps the TOAST pointer, but the "
          "images carry the full value.",
          "UPDATE documents SET meta = meta || '{\"reviewed\": true}' WHERE title IN ('Doc 20', 'Doc 30')"),
    _case("big_task_body", "toast", REV, "A 136 kB compressible body is captured whole.",
          "UPDATE tasks SET body = repeat(E'at frame.handle (app.js:42)\\n', 5000) WHERE id = 77"),
    _case("drop_document_content", "toast", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP COLUMN destroys every document body (and "
          "their TOAST data) without row images): every row's value of the dropped column (keyed by primary "
          "key, by the whole row without one) is kept before the DROP COLUMN, so the column comes back in its "
          "place with its values, constraints and dependants.",
          "ALTER TABLE documents DROP COLUMN content"),
    # --- TRUNCATE ---------------------------------------------------------------------------------------
    _case("truncate_events", "truncate", REV, "The BEFORE TRUNCATE snapshot copies every keyless row, duplicates "
          "included.",
          "TRUNCATE events"),
    _case("truncate_tenants_cascade", "truncate", REV, "Every table truncated by the cascade is snapshotted first, "
          "TOASTed documents included.",
          "TRUNCATE tenants CASCADE"),
    _case("truncate_comments_restart_identity", "truncate", REV, "Rows come back from the snapshot; the restarted "
          "sequence is not compared.",
          "TRUNCATE comments RESTART IDENTITY"),
    # --- DDL: create ---------------------------------------------------------------------------------------
    _case("create_webhooks_table", "ddl_create", REV, "The created table and its rows are dropped.",
          "CREATE TABLE webhooks (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tenant_id int NOT NULL "
          "REFERENCES tenants ON DELETE CASCADE, url text NOT NULL, events text[] NOT NULL DEFAULT '{}', secret text)",
          "INSERT INTO webhooks (tenant_id, url, events) VALUES (1, 'https://hooks.example/a', '{task.created}'), "
          "(2, 'https://hooks.example/b', '{task.status,task.created}')"),
    _case("create_workload_view", "ddl_create", REV, "CREATE VIEW is undone by DROP VIEW.",
          "CREATE VIEW assignee_workload AS SELECT assignee_id, count(*) FILTER (WHERE status <> 'done') AS open, "
          "count(*) AS total FROM tasks GROUP BY assignee_id"),
    _case("create_schema_and_table_as", "ddl_create", REV, "The new schema and the table created from a query are "
          "dropped.",
          "CREATE SCHEMA reporting",
          "CREATE TABLE reporting.daily_tasks AS SELECT created_at::date AS day, count(*) AS n FROM tasks GROUP BY 1"),
    _case("rename_column_under_view", "ddl_create", REV, "RENAME COLUMN is reversed; the view that uses the column "
          "follows the rename both ways.",
          "ALTER TABLE tasks RENAME COLUMN priority TO prio"),
    # --- DROP with dependants ----------------------------------------------------------------------------
    _case("drop_comments_table", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP TABLE destroys 2000 comments that no row "
          "trigger captured): the table's definition (columns, defaults, constraints, indexes, triggers, "
          "comments, ACLs) and every row are kept before the DROP, so it is re-made and refilled exactly.",
          "DROP TABLE comments"),
    _case("drop_tags_column_cascade", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP COLUMN ... CASCADE destroys every task's "
          "tags, with the GIN index and the open_tasks view): every row's value of the dropped column (keyed by"
          " primary key, by the whole row without one) and what its CASCADE removes is kept before the DROP "
          "COLUMN, so the column comes back in its place with its values, constraints and dependants.",
          "ALTER TABLE tasks DROP COLUMN tags CASCADE"),
    _case("drop_events_table", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: the keyless events table's rows are not "
          "captured by DROP): the table's definition (columns, defaults, constraints, indexes, triggers, "
          "comments, ACLs) and every row are kept before the DROP, so it is re-made and refilled exactly.",
          "DROP TABLE events"),
    _case("drop_plan_enum_cascade", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP TYPE ... CASCADE drops tenants.plan (and "
          "tenant_overview); the plans are lost): the type's definition and the values of the columns its "
          "CASCADE drops (with the views on them) are kept before the DROP, so all of it comes back with its "
          "values.",
          "DROP TYPE plan_tier CASCADE"),
    _case("drop_overview_view", "drop_dependants", REV, "A view holds no data; its definition is in the "
          "before-catalog.",
          "DROP VIEW tenant_overview"),
    _case("delete_flags_then_drop_table", "drop_dependants", REV, "The DELETE captured every row before the DROP, and "
          "the table definition is in the before-catalog.",
          "DELETE FROM feature_flags",
          "DROP TABLE feature_flags"),
    _case("drop_tenants_cascade", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP TABLE ... CASCADE removes the foreign "
          "keys and the view, but the 30 tenant rows themselves are destroyed uncaptured): the table's "
          "definition (columns, defaults, constraints, indexes, triggers, comments, ACLs) and every row and of "
          "what its CASCADE removes (foreign keys, views) are kept before the DROP, so it is re-made and "
          "refilled exactly.",
          "DROP TABLE tenants CASCADE"),
    _case("drop_api_keys", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: the 90 key rows are destroyed by DROP TABLE, "
          "uncaptured): the table's definition (columns, defaults, constraints, indexes, triggers, comments, "
          "ACLs) and every row are kept before the DROP, so it is re-made and refilled exactly.",
          "DROP TABLE api_keys"),
    _case("drop_comment_body", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP COLUMN destroys every comment body): "
          "every row's value of the dropped column (keyed by primary key, by the whole row without one) is kept"
          " before the DROP COLUMN, so the column comes back in its place with its values, constraints and "
          "dependants.",
          "ALTER TABLE comments DROP COLUMN body"),
    # --- ALTER COLUMN TYPE ---------------------------------------------------------------------------------
    _case("estimate_round", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: numeric(6,2) -> numeric(6,0) rounds the "
          "fractional estimates in an uncaptured rewrite): the old values of the retyped column are kept before"
          " the rewrite (keyed by primary key, by the whole row without one), so the column is set back to its "
          "type and exact old values.",
          "ALTER TABLE tasks ALTER COLUMN estimate TYPE numeric(6, 0)"),
    _case("display_name_varchar5", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: USING left(display_name, 5) truncates every "
          "name): the old values of the retyped column are kept before the rewrite (keyed by primary key, by "
          "the whole row without one), so the column is set back to its type and exact old values.",
          "ALTER TABLE users ALTER COLUMN display_name TYPE varchar(5) USING left(display_name, 5)"),
    _case("last_login_to_date", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: timestamptz -> date drops the time of every "
          "login): the old values of the retyped column are kept before the rewrite (keyed by primary key, by "
          "the whole row without one), so the column is set back to its type and exact old values.",
          "ALTER TABLE users ALTER COLUMN last_login TYPE date"),
    _case("payload_jsonb_to_text", "alter_type", REV, "jsonb's text output is canonical: casting the text back to "
          "jsonb gives the same values, and the before-catalog has the type.",
          "ALTER TABLE events ALTER COLUMN payload TYPE text"),
    _case("scopes_keep_first", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: USING scopes[1] keeps only the first scope of "
          "each key; the others are lost): the old values of the retyped column are kept before the rewrite "
          "(keyed by primary key, by the whole row without one), so the column is set back to its type and "
          "exact old values.",
          "ALTER TABLE api_keys ALTER COLUMN scopes DROP DEFAULT",
          "ALTER TABLE api_keys ALTER COLUMN scopes TYPE text USING scopes[1]"),
    # --- functions -----------------------------------------------------------------------------------------
    _case("call_archive_project", "functions", REV, "The function's task and project updates, and the events rows, "
          "fire row triggers.",
          "SELECT archive_project(3)"),
    _case("replace_slugify", "functions", REV, "The old body is in the before-catalog.",
          "CREATE OR REPLACE FUNCTION slugify(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT trim(both '_' "
          "from regexp_replace(lower(t), '[^a-z0-9]+', '_', 'g')) $$"),
    _case("writable_cte_comments_to_events", "functions", REV, "The CTE's deletes and the main INSERT are all "
          "captured.",
          "WITH d AS (DELETE FROM comments WHERE task_id IN (SELECT id FROM tasks WHERE status = 'done' AND "
          "project_id = 6) RETURNING *) INSERT INTO events (tenant_id, user_id, kind, payload, at) SELECT 7, "
          "author_id, 'comment.archived', to_jsonb(d), '2024-09-01 00:00:00+00' FROM d"),
    _case("do_block_hidden_add_column", "functions", REV, "The ADD COLUMN run through EXECUTE is still an ADD COLUMN: "
          "the before-catalog has no such column, so DROP COLUMN undoes it.",
          "DO $$ BEGIN EXECUTE 'ALTER TABLE tenants ADD COLUMN billing_email text'; END $$"),
    _case("do_block_hidden_drop_column", "functions", IRR,
          "Still irreversible under issue 18's capture: DDL run through EXECUTE inside a function or DO "
          "block is not seen by the proxy before it runs, and the ddl_command_start event trigger is not told "
          "which object the command will touch (current_query() is the outer statement), so no state is kept "
          "before it; every event payload is lost.",
          "DO $$ BEGIN EXECUTE 'ALTER TABLE events DROP COLUMN payload'; END $$"),
    _case("create_and_call_sql_function", "functions", REV, "The new function is dropped; its updates are captured "
          "rows.",
          "CREATE FUNCTION bump_priority(p int) RETURNS int LANGUAGE sql AS $$ WITH u AS (UPDATE tasks SET priority = "
          "greatest(priority - 1, 1) WHERE project_id = p RETURNING 1) SELECT count(*)::int FROM u $$",
          "SELECT bump_priority(15)"),
    # --- grants ---------------------------------------------------------------------------------------------
    _case("grant_all_to_app", "grants", REV, "The before-catalog's ACLs say what to revoke.",
          "GRANT ALL ON tasks, comments, projects TO corpus_app"),
    _case("function_execute_privileges", "grants", REV, "proacl from before the transaction says what to restore.",
          "REVOKE EXECUTE ON FUNCTION archive_project(int) FROM PUBLIC",
          "GRANT EXECUTE ON FUNCTION archive_project(int) TO corpus_app"),
    _case("default_privileges_sequences", "grants", REV, "pg_default_acl from before says what to put back.",
          "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO corpus_app"),
    # --- constraints, defaults, comments ---------------------------------------------------------------------
    _case("add_priority_check", "constraints_defaults", REV, "ADD CONSTRAINT is undone by DROP CONSTRAINT.",
          "ALTER TABLE tasks ADD CONSTRAINT tasks_priority_range CHECK (priority BETWEEN 1 AND 5)"),
    _case("set_settings_default", "constraints_defaults", REV, "The old default is in the before-catalog.",
          "ALTER TABLE tasks ALTER COLUMN settings SET DEFAULT '{\"notify\": true}'"),
    _case("add_fk_not_valid", "constraints_defaults", REV, "A NOT VALID foreign key is dropped again; no rows change.",
          "ALTER TABLE tasks ADD CONSTRAINT tasks_tenant_fk FOREIGN KEY (tenant_id) REFERENCES tenants NOT VALID"),
    _case("drop_role_check", "constraints_defaults", REV, "The dropped CHECK's definition is in the before-catalog.",
          "ALTER TABLE users DROP CONSTRAINT users_role_check"),
    _case("comment_and_drop_default", "constraints_defaults", REV, "The old comment and default are in the "
          "before-catalog.",
          "COMMENT ON COLUMN tasks.settings IS 'Per-task options (notify, checklist)'",
          "ALTER TABLE users ALTER COLUMN role DROP DEFAULT"),
    # --- mixed DML + DDL --------------------------------------------------------------------------------------
    _case("add_column_backfill_from_jsonb", "mixed", REV, "The column is dropped again; the backfill's updates are "
          "captured.",
          "ALTER TABLE tenants ADD COLUMN theme text",
          "UPDATE tenants SET theme = settings->>'theme'"),
    _case("update_then_drop_due_date", "mixed", REV,
          "Relabelled reversible for issue 18 (was irreversible: only the done tasks' due dates were captured "
          "by the UPDATE; the others are destroyed by DROP COLUMN): the DML before it is captured by row "
          "images; every row's value of the dropped column (keyed by primary key, by the whole row without one)"
          " is kept before the DROP COLUMN, so the column comes back in its place with its values, constraints "
          "and dependants.",
          "UPDATE tasks SET due_date = NULL WHERE status = 'done'",
          "ALTER TABLE tasks DROP COLUMN due_date"),
    _case("archive_tasks_to_new_table", "mixed", REV, "The new table is dropped and the moved tasks (with cascaded "
          "comments and counters) are restored from captured images.",
          "CREATE TABLE archived_tasks (LIKE tasks INCLUDING DEFAULTS)",
          "WITH m AS (DELETE FROM tasks WHERE project_id = 18 AND status = 'done' RETURNING *) INSERT INTO "
          "archived_tasks SELECT * FROM m"),
    _case("insert_then_events_at_to_date", "mixed", REV,
          "Relabelled reversible for issue 18 (was irreversible: the inserted event is captured, but the "
          "rewrite to date destroys the time of every other event): the DML before it is captured by row "
          "images; the old values of the retyped column are kept before the rewrite (keyed by primary key, by "
          "the whole row without one), so the column is set back to its type and exact old values.",
          "INSERT INTO events (tenant_id, kind, at) VALUES (1, 'maintenance', '2024-09-01 03:00:00+00')",
          "ALTER TABLE events ALTER COLUMN at TYPE date"),
    _case("archive_project_then_drop_settings", "mixed", REV,
          "Relabelled reversible for issue 18 (was irreversible: the function's writes are captured, but DROP "
          "COLUMN destroys the settings of the other 149 projects): the DML before it is captured by row "
          "images; every row's value of the dropped column (keyed by primary key, by the whole row without one)"
          " is kept before the DROP COLUMN, so the column comes back in its place with its values, constraints "
          "and dependants.",
          "SELECT archive_project(5)",
          "ALTER TABLE projects DROP COLUMN settings"),
    _case("edit_document_then_drop_table", "mixed", REV,
          "Relabelled reversible for issue 18 (was irreversible: one document's change is captured; the other "
          "99 (some TOASTed) are destroyed by DROP TABLE): the DML before it is captured by row images; the "
          "table's definition (columns, defaults, constraints, indexes, triggers, comments, ACLs) and every row"
          " are kept before the DROP, so it is re-made and refilled exactly.",
          "UPDATE documents SET title = 'Doc 10 (final)' WHERE title = 'Doc 10'",
          "DROP TABLE documents"),
    _case("touch_all_then_login_date", "mixed", REV, "The no-op UPDATE captured every user's last_login first, so "
          "after altering the type back each row can be restored from its before-image.",
          "UPDATE users SET last_login = last_login",
          "ALTER TABLE users ALTER COLUMN last_login TYPE date"),
    # --- MERGE ------------------------------------------------------------------------------------------------
    _case("merge_feature_flags", "merge", REV, "MERGE's inserts and updates are captured row changes.",
          "MERGE INTO feature_flags f USING (SELECT id AS tenant_id FROM tenants WHERE plan = 'enterprise') t ON "
          "f.tenant_id = t.tenant_id AND f.flag = 'ai_assist' WHEN MATCHED THEN UPDATE SET enabled = true WHEN NOT "
          "MATCHED THEN INSERT (tenant_id, flag, enabled) VALUES (t.tenant_id, 'ai_assist', true)"),
    _case("merge_archived_project_tasks", "merge", REV, "MERGE's deletes (with cascaded comments) and updates (with "
          "their trigger effects) are captured.",
          "MERGE INTO tasks t USING projects p ON p.id = t.project_id AND p.archived WHEN MATCHED AND t.status = "
          "'done' THEN DELETE WHEN MATCHED THEN UPDATE SET status = 'done'"),
    # --- sequences ---------------------------------------------------------------------------------------------
    _case("setval_comments", "sequences", REV, "setval moves only the sequence position (not compared); the row is "
          "captured.",
          "SELECT setval('comments_id_seq', 50000)",
          "INSERT INTO comments (task_id, author_id, body) VALUES (2, 3, 'After setval')"),
    _case("identity_restart", "sequences", REV, "RESTART changes only the identity sequence's position; the inserted "
          "tenant is captured.",
          "ALTER TABLE tenants ALTER COLUMN id RESTART WITH 1000",
          "INSERT INTO tenants (slug, name) VALUES ('restarted', 'Restarted tenant')"),
    _case("nextval_in_jsonb", "sequences", REV, "The new sequence is dropped; the updated settings have before-images.",
          "CREATE SEQUENCE ticket_seq",
          "UPDATE tasks SET settings = jsonb_set(settings, '{ticket}', to_jsonb(nextval('ticket_seq'))) WHERE "
          "project_id = 4"),
    # --- jsonb and arrays ---------------------------------------------------------------------------------------
    _case("jsonb_set_nested_limit", "jsonb_array", REV, "Nested jsonb edits are captured whole in the images.",
          "UPDATE tenants SET settings = jsonb_set(settings, '{limits,projects}', '100') WHERE plan = 'enterprise'"),
    _case("jsonb_delete_path", "jsonb_array", REV, "The before-image keeps the removed path.",
          "UPDATE users SET preferences = preferences #- '{notifications,push}' WHERE tenant_id = 5"),
    _case("array_append_tags", "jsonb_array", REV, "text[] values are captured exactly.",
          "UPDATE tasks SET tags = array_append(tags, 'q4') WHERE due_date >= '2024-12-01'"),
    _case("array_remove_tags", "jsonb_array", REV, "The before-image keeps the removed element and the order.",
          "UPDATE tasks SET tags = array_remove(tags, 'backend') WHERE 'backend' = ANY (tags) AND project_id < 30"),
    _case("jsonb_null_vs_missing", "jsonb_array", REV, "A JSON null member is a value the images keep apart from a "
          "missing key and from SQL NULL.",
          "UPDATE tasks SET settings = settings || '{\"reviewer\": null}', estimate = NULL WHERE id <= 5"),
    _case("preferences_drop_timezone_using", "jsonb_array", REV,
          "Relabelled reversible for issue 18 (was irreversible: ALTER ... TYPE jsonb USING preferences - "
          "'timezone' is an uncaptured rewrite of every row: the timezones are gone): the old values of the "
          "retyped column are kept before the rewrite (keyed by primary key, by the whole row without one), so "
          "the column is set back to its type and exact old values.",
          "ALTER TABLE users ALTER COLUMN preferences TYPE jsonb USING preferences - 'timezone'"),
)

# Issue 18: drops over the foreign-key graph, dropped columns under views, generated columns and column grants,
# lossy type changes on the keyless events table, TOAST-sized values in what is dropped, and the other DDL whose
# inverse needs the state from before the statement (RENAME, CREATE OR REPLACE, COMMENT, default privileges,
# TRUNCATE RESTART IDENTITY, SET id = DEFAULT).
CASES += (
    _case("drop_projects_cascade", "drop_dependants", REV, "DROP TABLE projects CASCADE destroys 150 projects "
          "(identity ALWAYS key, per-tenant unique slugs, jsonb settings, trigger-maintained task_count) and the "
          "foreign keys of tasks and documents and the open_tasks view; the table, its rows and what the CASCADE "
          "removes are kept before the DROP.",
          "DROP TABLE projects CASCADE"),
    _case("drop_users_cascade", "drop_dependants", REV, "DROP TABLE users CASCADE destroys 600 users and the three "
          "foreign keys to them (tasks, comments, projects) and both views; all of it is kept before the DROP and "
          "comes back in dependency order.",
          "DROP TABLE users CASCADE"),
    _case("drop_tasks_cascade", "drop_dependants", REV, "tasks carries most kinds of definition (identity ALWAYS, a "
          "STORED generated column with a comment, an enum, text[] with a GIN index, three triggers, grants to two "
          "roles); DROP ... CASCADE also takes the foreign key of comments and open_tasks; definitions and the 3000 "
          "rows are kept before the DROP.",
          "DROP TABLE tasks CASCADE"),
    _case("drop_schema_billing_cascade", "drop_dependants", REV, "DROP SCHEMA billing CASCADE destroys a three-table "
          "foreign-key chain (plans <- subscriptions <- invoices, subscriptions also referencing public.tenants) "
          "with its rows and the view public.mrr that reads it; all of it is kept before the DROP and re-made in "
          "dependency order.",
          "DROP SCHEMA billing CASCADE",
          setup=("CREATE SCHEMA billing",
                 "CREATE TABLE billing.plans (code text PRIMARY KEY, monthly_cents int NOT NULL CHECK "
                 "(monthly_cents >= 0))",
                 "CREATE TABLE billing.subscriptions (id serial PRIMARY KEY, tenant_id int NOT NULL REFERENCES "
                 "public.tenants ON DELETE CASCADE, plan text NOT NULL REFERENCES billing.plans, started_on date NOT "
                 "NULL)",
                 "CREATE TABLE billing.invoices (id serial PRIMARY KEY, subscription_id int NOT NULL REFERENCES "
                 "billing.subscriptions ON DELETE CASCADE, period date NOT NULL, amount_cents int NOT NULL, "
                 "UNIQUE (subscription_id, period))",
                 "INSERT INTO billing.plans VALUES ('free', 0), ('pro', 2900), ('enterprise', 49900)",
                 "INSERT INTO billing.subscriptions (tenant_id, plan, started_on) SELECT id, plan::text, "
                 "created_at::date FROM tenants",
                 "INSERT INTO billing.invoices (subscription_id, period, amount_cents) SELECT s.id, date "
                 "'2024-01-01' + m * interval '1 month', p.monthly_cents FROM billing.subscriptions s JOIN "
                 "billing.plans p ON p.code = s.plan, generate_series(0, 5) m",
                 "CREATE VIEW public.mrr AS SELECT s.tenant_id, sum(i.amount_cents) AS cents FROM "
                 "billing.invoices i JOIN billing.subscriptions s ON s.id = i.subscription_id GROUP BY s.tenant_id")),
    _case("drop_email_under_generated_and_view", "generated_column", REV, "Dropping users.email CASCADE takes the "
          "STORED generated email_domain computed from it, the unique (tenant_id, email) constraint and the open_tasks "
          "view; the dropped values are kept before the DROP, and putting email back in its place rebuilds users "
          "(with the foreign keys to it and tenant_overview).",
          "ALTER TABLE users DROP COLUMN email CASCADE",
          setup=("ALTER TABLE users ADD COLUMN email_domain text GENERATED ALWAYS AS (split_part(email, '@', 2)) "
                 "STORED",)),
    _case("toast_drop_documents", "toast", REV, "DROP TABLE documents destroys ten 32 kB contents stored out of line "
          "with the other 90 rows; the table and every row, whole values included, are kept before the DROP.",
          "DROP TABLE documents"),
    _case("toast_drop_attachments_bytea", "toast", REV, "DROP TABLE destroys 20 incompressible 16 kB bytea values "
          "(stored out of line) in a table referencing documents; the table, its foreign key and every byte are kept "
          "before the DROP.",
          "DROP TABLE attachments",
          setup=("CREATE TABLE attachments (id int PRIMARY KEY, document_id int NOT NULL REFERENCES documents ON "
                 "DELETE CASCADE, file_name text NOT NULL, data bytea NOT NULL)",
                 "INSERT INTO attachments SELECT d, d, 'scan-' || d || '.bin', (SELECT decode(string_agg(md5(d || "
                 "':' || k), ''), 'hex') FROM generate_series(1, 1000) k) FROM generate_series(1, 20) d")),
    _case("events_kind_prefix", "alter_type", REV, "USING left(kind, 4) turns 'task.created' and 'task.viewed' into "
          "'task' in the keyless events table (with duplicate rows) in a rewrite without row triggers; the old "
          "values are kept before it by the rows' full images, so the multiset of rows comes back.",
          "ALTER TABLE events ALTER COLUMN kind TYPE varchar(4) USING left(kind, 4)"),
    _case("events_payload_to_number", "no_primary_key", REV, "jsonb -> int USING (payload->>'n')::int keeps one "
          "number of each payload (the events archive_project wrote have none and become NULL) on a table without a "
          "key; the old "
          "values are kept before the rewrite by the rows' full images.",
          "ALTER TABLE events ALTER COLUMN payload TYPE int USING (payload->>'n')::int",
          setup=("SELECT archive_project(3)",)),
    _case("table_grant_to_column_grants", "grants", REV, "A table privilege narrowed to column privileges and new "
          "column UPDATE rights; the before-catalog has the table ACL and every column's (attacl).",
          "REVOKE SELECT ON tasks FROM corpus_analyst",
          "GRANT SELECT (id, project_id, title, status, priority) ON tasks TO corpus_analyst",
          "GRANT UPDATE (status, assignee_id) ON tasks TO corpus_support"),
    _case("revoke_column_grants", "grants", REV, "The revoked column privileges are in the before-catalog's attacl.",
          "REVOKE UPDATE (display_name) ON users FROM corpus_support",
          "REVOKE SELECT (email) ON users FROM corpus_support",
          setup=("GRANT SELECT (email, display_name), UPDATE (display_name) ON users TO corpus_support",)),
    _case("default_privileges_revoke_types", "grants", REV, "Revoking the built-in USAGE on new types from PUBLIC "
          "creates a pg_default_acl entry; there was none before, so the inverse removes it.",
          "ALTER DEFAULT PRIVILEGES REVOKE USAGE ON TYPES FROM PUBLIC"),
    _case("rename_tasks_everything", "ddl_create", REV, "Renames of a table, its index and trigger and of the enum its "
          "status uses change only names (views follow by oid); the reverse renames restore them.",
          "ALTER TABLE tasks RENAME TO work_items",
          "ALTER INDEX tasks_tags_idx RENAME TO work_items_tags_idx",
          "ALTER TRIGGER tasks_touch ON work_items RENAME TO work_items_touch",
          "ALTER TYPE task_status RENAME TO work_item_status"),
    _case("replace_open_tasks_view", "ddl_create", REV, "CREATE OR REPLACE VIEW changes the filter and adds a column; "
          "the old definition is in the before-catalog (a view cannot lose a column by CREATE OR REPLACE, so it is "
          "dropped and re-made, with its grants).",
          "CREATE OR REPLACE VIEW open_tasks AS SELECT t.id, t.tenant_id, p.slug AS project, t.title, t.status, "
          "t.priority, t.tags, u.email AS assignee, t.due_date FROM tasks t JOIN projects p ON p.id = t.project_id "
          "LEFT JOIN users u ON u.id = t.assignee_id WHERE t.status NOT IN ('done', 'blocked')",
          setup=("GRANT SELECT ON open_tasks TO corpus_analyst",)),
    _case("replace_function_then_call", "functions", REV, "The old body of reassign_tasks is in the before-catalog "
          "(pg_get_functiondef); the tasks the new body changed, and the events and timestamps their triggers "
          "wrote, are captured rows.",
          "CREATE OR REPLACE FUNCTION reassign_tasks(p_from bigint, p_to bigint) RETURNS int LANGUAGE sql AS $$ "
          "WITH u AS (UPDATE tasks SET assignee_id = p_to, priority = 1 WHERE assignee_id = p_from AND status <> "
          "'done' RETURNING 1) SELECT count(*)::int FROM u $$",
          "SELECT reassign_tasks(31, 61)"),
    _case("replace_procedure_then_call", "functions", REV, "CREATE OR REPLACE PROCEDURE: the old body is in the "
          "before-catalog; what the CALL changed (tasks, their status events) is captured rows.",
          "CREATE OR REPLACE PROCEDURE close_stale_tasks(p_tenant int) LANGUAGE sql AS $$ UPDATE tasks SET status = "
          "'done' WHERE tenant_id = p_tenant AND status = 'todo' $$",
          "CALL close_stale_tasks(5)",
          setup=("CREATE PROCEDURE close_stale_tasks(p_tenant int) LANGUAGE sql AS $$ UPDATE tasks SET status = "
                 "'blocked' WHERE tenant_id = p_tenant AND status = 'todo' AND due_date < '2024-10-15' $$",)),
    _case("comments_on_column_table_type", "constraints_defaults", REV, "A removed column comment and new comments on "
          "a table and a type; the before-catalog has the old comment and the absence of the others.",
          "COMMENT ON COLUMN tasks.search IS NULL",
          "COMMENT ON TABLE tenants IS 'Customers of the tracker'",
          "COMMENT ON TYPE plan_tier IS 'Billing plan'"),
    _case("truncate_tasks_restart_identity_cascade", "truncate", REV, "TRUNCATE tasks RESTART IDENTITY CASCADE "
          "empties tasks and comments and restarts their identity and serial sequences; the snapshots restore the "
          "rows (identity ALWAYS ones with OVERRIDING SYSTEM VALUE), and sequence positions are not compared.",
          "TRUNCATE tasks RESTART IDENTITY CASCADE"),
    _case("project_id_set_default", "identity_always", REV, "SET id = DEFAULT moves a project without tasks or "
          "documents to a new ALWAYS identity value; its before-image has the old id, and nothing references it, so "
          "deleting it and inserting the image with OVERRIDING SYSTEM VALUE is exact.",
          "UPDATE projects SET id = DEFAULT WHERE slug = 'sandbox'",
          setup=("INSERT INTO projects (tenant_id, slug, name) VALUES (1, 'sandbox', 'Sandbox')",)),
)

"""Agent transactions on the `tpcc` schema (see `benchmarks/inverse_corpus/tpcc.py`), labelled with whether an
exact inverse exists (the rules are in the package docstring)."""

from __future__ import annotations

from . import Case, Expected

REV: Expected = "reversible"
IRR: Expected = "irreversible"


def _case(name: str, category: str, expected: Expected, why: str, *forward: str, setup: tuple[str, ...] = ()) -> Case:
    return Case(f"tpcc.{name}", "tpcc", category, forward, expected, why, setup)


#: An incompressible string of `n` * 32 characters (md5 hex), stored out of line even after compression.
def _big(n: int, salt: str) -> str:
    return f"(SELECT string_agg(md5(g::text || '{salt}'), '') FROM generate_series(1, {n}) g)"


CASES: tuple[Case, ...] = (
    # --- single-row DML ---------------------------------------------------------------------------
    _case("rename_warehouse", "single_row_dml", REV, "The before-image holds the old name.",
          "UPDATE warehouse SET w_name = 'Central' WHERE w_id = 1"),
    _case("insert_item", "single_row_dml", REV, "The inserted row is deleted by its image.",
          "INSERT INTO item VALUES (1001, 42, 'New gadget', 19.99, 'fresh item')"),
    _case("delete_new_order_row", "single_row_dml", REV, "The deleted row's before-image is captured.",
          "DELETE FROM new_order WHERE no_w_id = 1 AND no_d_id = 1 AND no_o_id = 22"),
    # --- multi-row DML ------------------------------------------------------------------------------
    _case("raise_original_prices", "multi_row_dml", REV, "Each repriced item has a before-image.",
          "UPDATE item SET i_price = round(i_price * 1.05, 2) WHERE i_data LIKE 'ORIGINAL%'"),
    _case("restock_warehouse", "multi_row_dml", REV, "Stock rows (and their recomputed generated flag) have "
          "before-images.",
          "UPDATE stock SET s_quantity = s_quantity + 50 WHERE s_w_id = 2 AND s_quantity < 30"),
    _case("delete_delivered_lines", "multi_row_dml", REV, "The deleted order lines are captured.",
          "DELETE FROM order_line WHERE ol_w_id = 1 AND ol_d_id = 4 AND ol_delivery_d IS NOT NULL AND ol_number > 10"),
    # --- tables without a primary key (history) --------------------------------------------------------
    _case("delete_duplicate_history", "no_primary_key", REV, "Both identical rows' images are captured; re-inserting "
          "them restores the duplicates.",
          "DELETE FROM history WHERE h_c_w_id = 1 AND h_c_d_id = 1 AND h_c_id = 1"),
    _case("dedupe_history", "no_primary_key", REV, "Deleting one of two identical rows is undone by inserting its "
          "image.",
          "DELETE FROM history a USING history b WHERE a.ctid > b.ctid AND a.h_c_w_id = b.h_c_w_id AND a.h_c_d_id = "
          "b.h_c_d_id AND a.h_c_id = b.h_c_id AND a.h_amount = b.h_amount AND a.h_date = b.h_date"),
    _case("correct_history_amounts", "no_primary_key", REV, "Keyless rows are matched by their whole after-image.",
          "UPDATE history SET h_amount = h_amount * 2 WHERE h_w_id = 2 AND h_d_id = 3"),
    _case("history_date_to_date", "no_primary_key", REV, "Every h_date is at midnight, so timestamp -> date loses "
          "nothing and altering back to the before-catalog's type restores each value exactly.",
          "ALTER TABLE history ALTER COLUMN h_date TYPE date"),
    _case("history_data_truncated", "no_primary_key", REV,
          "Relabelled reversible for issue 18 (was irreversible: USING left(h_data, 7) cuts every keyless "
          "history row's data in an uncaptured rewrite): the old values of the retyped column are kept before "
          "the rewrite (keyed by primary key, by the whole row without one), so the column is set back to its "
          "type and exact old values.",
          "ALTER TABLE history ALTER COLUMN h_data TYPE varchar(7) USING left(h_data, 7)"),
    # --- foreign-key cascades -----------------------------------------------------------------------
    _case("delete_order_cascade", "fk_cascade", REV, "The cascaded new_order and order_line deletes are captured by "
          "row triggers.",
          "DELETE FROM orders WHERE o_w_id = 1 AND o_d_id = 2 AND o_id = 25"),
    _case("renumber_order_cascade", "fk_cascade", REV, "ON UPDATE CASCADE rewrites the order lines' keys as captured "
          "updates.",
          "UPDATE orders SET o_id = o_id + 1000 WHERE o_w_id = 2 AND o_d_id = 3 AND o_id = 5"),
    _case("delete_old_orders_cascade", "fk_cascade", REV, "Fifty orders with their cascaded lines all have "
          "before-images.",
          "DELETE FROM orders WHERE o_w_id = 2 AND o_entry_d < '2024-08-01 06:00:00'"),
    # --- triggers with side effects ------------------------------------------------------------------
    _case("drain_stock_restock", "trigger_side_effects", REV, "The stock updates and the restock requests the trigger "
          "inserted are captured.",
          "UPDATE stock SET s_quantity = 5 WHERE s_w_id = 1 AND s_i_id BETWEEN 1 AND 20 AND s_quantity >= 15"),
    _case("new_order_triggers_restock", "trigger_side_effects", REV, "Every write of the function and the restock "
          "request its stock update triggered are captured.",
          "SELECT new_order(1, 2, 5, ARRAY[59, 60], ARRAY[7, 1])"),
    # --- upserts ------------------------------------------------------------------------------------
    _case("upsert_stock_delivery", "upsert", REV, "DO UPDATE on a composite key fires row triggers like UPDATE.",
          "INSERT INTO stock (s_i_id, s_w_id, s_quantity, s_ytd, s_order_cnt, s_remote_cnt) VALUES (1, 1, 40, 0, 0, "
          "0), (2, 1, 40, 0, 0, 0) ON CONFLICT (s_w_id, s_i_id) DO UPDATE SET s_quantity = stock.s_quantity + "
          "excluded.s_quantity"),
    _case("upsert_item_do_nothing", "upsert", REV, "Only the inserted item is a change, and it is captured.",
          "INSERT INTO item VALUES (1, 1, 'dup', 1.00, NULL), (1002, 7, 'Widget', 3.50, NULL) ON CONFLICT (i_id) DO "
          "NOTHING"),
    _case("requeue_orders_do_nothing", "upsert", REV, "Rows skipped by DO NOTHING change nothing; the two inserted "
          "are captured.",
          "INSERT INTO new_order SELECT o_id, o_d_id, o_w_id FROM orders WHERE o_w_id = 1 AND o_d_id = 1 AND o_id >= "
          "20 ON CONFLICT DO NOTHING"),
    # --- identity ALWAYS -----------------------------------------------------------------------------
    _case("insert_restock_requests", "identity_always", REV, "Rows with generated ids are deleted by their images; "
          "the identity sequence stays advanced (not compared).",
          "INSERT INTO restock_request (w_id, i_id, quantity) SELECT s_w_id, s_i_id, 100 - s_quantity FROM stock "
          "WHERE s_quantity < 12 AND s_w_id = 2"),
    _case("restock_id_set_default", "identity_always", REV, "A plain UPDATE cannot set an ALWAYS identity back, but "
          "the before-image has the old id: deleting the row and inserting the image with OVERRIDING SYSTEM VALUE is "
          "exact (nothing references restock_request).",
          "UPDATE restock_request SET id = DEFAULT WHERE i_id = (SELECT min(i_id) FROM restock_request)"),
    _case("add_identity_to_history", "identity_always", REV, "ADD COLUMN ... GENERATED ALWAYS AS IDENTITY numbers the "
          "rows in a rewrite but destroys nothing: DROP COLUMN undoes it.",
          "ALTER TABLE history ADD COLUMN h_id bigint GENERATED ALWAYS AS IDENTITY"),
    _case("delete_restock_requests", "identity_always", REV, "The deleted rows come back with OVERRIDING SYSTEM VALUE "
          "from their before-images.",
          "DELETE FROM restock_request WHERE w_id = 1"),
    _case("drop_restock_id", "identity_always", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP COLUMN destroys the identity values (the "
          "key) of every restock request): every row's value of the dropped column (keyed by primary key, by "
          "the whole row without one) is kept before the DROP COLUMN, so the column comes back in its place "
          "with its values, constraints and dependants.",
          "ALTER TABLE restock_request DROP COLUMN id"),
    # --- generated columns ----------------------------------------------------------------------------
    _case("stock_low_flag", "generated_column", REV, "The STORED s_low follows the restored quantity; the restock "
          "requests are captured inserts.",
          "UPDATE stock SET s_quantity = 12 WHERE s_w_id = 2 AND s_i_id <= 10"),
    _case("add_generated_unit_price", "generated_column", REV, "ADD COLUMN ... GENERATED is undone by DROP COLUMN.",
          "ALTER TABLE order_line ADD COLUMN ol_unit_price numeric GENERATED ALWAYS AS (ol_amount / ol_quantity) "
          "STORED"),
    # --- TOAST ------------------------------------------------------------------------------------------
    _case("big_customer_data", "toast", REV, "A 130 kB compressible value is captured whole.",
          "UPDATE customer SET c_data = repeat('credit note; ', 10000) WHERE c_w_id = 1 AND c_d_id = 1 AND c_id = 10"),
    _case("payment_shrinks_big_data", "toast", REV, "Both the 96 kB value and the 500-character one payment() cut it "
          "to are in the images.",
          f"UPDATE customer SET c_data = {_big(3000, 'p')} WHERE c_w_id = 1 AND c_d_id = 1 AND c_id = 20",
          "SELECT payment(1, 1, 20, 10.00)"),
    _case("big_value_then_shrink_column", "toast", REV, "Every other c_data is under 100 characters, so left(c_data, "
          "100) changed only the row the UPDATE captured: alter back, then restore that row from its before-image.",
          "UPDATE customer SET c_data = repeat('long history; ', 10000) WHERE c_w_id = 1 AND c_d_id = 1 AND c_id = 10",
          "ALTER TABLE customer ALTER COLUMN c_data TYPE varchar(100) USING left(c_data, 100)"),
    # --- TRUNCATE ---------------------------------------------------------------------------------------
    _case("truncate_history", "truncate", REV, "The BEFORE TRUNCATE snapshot copies every keyless row.",
          "TRUNCATE history"),
    _case("truncate_orders_cascade", "truncate", REV, "Orders, order lines and new_order rows are all snapshotted.",
          "TRUNCATE orders CASCADE"),
    _case("truncate_warehouse_cascade", "truncate", REV, "The cascade reaches every table referencing warehouse, and "
          "each is snapshotted before it is emptied.",
          "TRUNCATE warehouse CASCADE"),
    # --- DDL: create ---------------------------------------------------------------------------------------
    _case("create_index_item", "ddl_create", REV, "CREATE INDEX is undone by DROP INDEX.",
          "CREATE INDEX order_line_item_idx ON order_line (ol_i_id)"),
    _case("create_carrier_table_and_view", "ddl_create", REV, "The new table, its rows and the view are dropped.",
          "CREATE TABLE carrier (id int PRIMARY KEY, name text NOT NULL)",
          "INSERT INTO carrier SELECT g, 'Carrier ' || g FROM generate_series(1, 10) g",
          "CREATE VIEW delivered_by_carrier AS SELECT c.name, count(*) AS orders FROM orders o JOIN carrier c ON "
          "c.id = o.o_carrier_id GROUP BY c.name"),
    _case("rename_stock_column", "ddl_create", REV, "RENAME COLUMN is undone by the reverse rename.",
          "ALTER TABLE stock RENAME COLUMN s_data TO s_note"),
    _case("create_materialized_view", "ddl_create", REV, "A materialized view created now is dropped; nothing existed "
          "before.",
          "CREATE MATERIALIZED VIEW district_revenue AS SELECT ol_w_id, ol_d_id, sum(ol_amount) AS revenue FROM "
          "order_line GROUP BY ol_w_id, ol_d_id"),
    # --- DROP with dependants ----------------------------------------------------------------------------
    _case("drop_history", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP TABLE destroys the history rows "
          "uncaptured): the table's definition (columns, defaults, constraints, indexes, triggers, comments, "
          "ACLs) and every row are kept before the DROP, so it is re-made and refilled exactly.",
          "DROP TABLE history"),
    _case("drop_item_cascade", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP TABLE item CASCADE drops the foreign keys"
          " from stock and order_line and the stock_level view, and the 1000 items are lost): the table's "
          "definition (columns, defaults, constraints, indexes, triggers, comments, ACLs) and every row and of "
          "what its CASCADE removes (foreign keys, views) are kept before the DROP, so it is re-made and "
          "refilled exactly.",
          "DROP TABLE item CASCADE"),
    _case("drop_c_last_cascade", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP COLUMN ... CASCADE destroys every last "
          "name (with the index and the customer_balance view)): every row's value of the dropped column (keyed"
          " by primary key, by the whole row without one) and what its CASCADE removes is kept before the DROP "
          "COLUMN, so the column comes back in its place with its values, constraints and dependants.",
          "ALTER TABLE customer DROP COLUMN c_last CASCADE"),
    _case("drop_stock_level_view", "drop_dependants", REV, "A view holds no data; its definition is in the "
          "before-catalog.",
          "DROP VIEW stock_level"),
    _case("delete_then_drop_new_order", "drop_dependants", REV, "The DELETE captured every row first, and the table's "
          "definition is in the before-catalog.",
          "DELETE FROM new_order",
          "DROP TABLE new_order"),
    _case("drop_order_line", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: about 6000 order lines are destroyed without "
          "row images): the table's definition (columns, defaults, constraints, indexes, triggers, comments, "
          "ACLs) and every row are kept before the DROP, so it is re-made and refilled exactly.",
          "DROP TABLE order_line"),
    _case("drop_payment_function", "drop_dependants", REV, "A function is recreated from its definition in the "
          "before-catalog.",
          "DROP FUNCTION payment(int, int, int, numeric)"),
    _case("drop_orders_cascade", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: CASCADE drops the foreign keys of new_order "
          "and order_line, but the 600 orders are destroyed uncaptured): the table's definition (columns, "
          "defaults, constraints, indexes, triggers, comments, ACLs) and every row and of what its CASCADE "
          "removes (foreign keys, views) are kept before the DROP, so it is re-made and refilled exactly.",
          "DROP TABLE orders CASCADE"),
    _case("drop_schema_public_cascade", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP SCHEMA public CASCADE destroys every "
          "table of the schema with its rows): every object of the schema, with every table's rows, is kept "
          "before DROP SCHEMA ... CASCADE and re-made in dependency order.",
          "DROP SCHEMA public CASCADE"),
    # --- ALTER COLUMN TYPE ---------------------------------------------------------------------------------
    _case("ol_amount_round", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: numeric(6,2) -> numeric(6,0) rounds the "
          "amounts in an uncaptured rewrite): the old values of the retyped column are kept before the rewrite "
          "(keyed by primary key, by the whole row without one), so the column is set back to its type and "
          "exact old values.",
          "ALTER TABLE order_line ALTER COLUMN ol_amount TYPE numeric(6, 0)"),
    _case("c_since_to_date", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: timestamp -> date drops the hour of every "
          "c_since): the old values of the retyped column are kept before the rewrite (keyed by primary key, by"
          " the whole row without one), so the column is set back to its type and exact old values.",
          "ALTER TABLE customer ALTER COLUMN c_since TYPE date"),
    _case("c_first_varchar3", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: USING left(c_first, 3) truncates every first "
          "name): the old values of the retyped column are kept before the rewrite (keyed by primary key, by "
          "the whole row without one), so the column is set back to its type and exact old values.",
          "ALTER TABLE customer ALTER COLUMN c_first TYPE varchar(3) USING left(c_first, 3)"),
    _case("discount_fewer_digits", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: numeric(4,4) -> numeric(4,2) rounds the "
          "discounts): the old values of the retyped column are kept before the rewrite (keyed by primary key, "
          "by the whole row without one), so the column is set back to its type and exact old values.",
          "ALTER TABLE customer ALTER COLUMN c_discount TYPE numeric(4, 2)"),
    _case("widen_w_ytd", "alter_type", REV, "numeric(12,2) -> numeric(14,2) keeps every value, which fit back.",
          "ALTER TABLE warehouse ALTER COLUMN w_ytd TYPE numeric(14, 2)"),
    _case("item_price_to_real", "alter_type", REV, "Every numeric(5,2) value (at most 5 significant digits) "
          "round-trips through real exactly, so altering back to the before-catalog's type restores it.",
          "ALTER TABLE item ALTER COLUMN i_price TYPE real"),
    _case("s_data_varchar10", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: USING left(s_data, 10) cuts the stock data "
          "strings): the old values of the retyped column are kept before the rewrite (keyed by primary key, by"
          " the whole row without one), so the column is set back to its type and exact old values.",
          "ALTER TABLE stock ALTER COLUMN s_data TYPE varchar(10) USING left(s_data, 10)"),
    # --- functions -----------------------------------------------------------------------------------------
    _case("call_new_order", "functions", REV, "The function's district, orders, new_order, stock and order_line "
          "writes all fire row triggers.",
          "SELECT new_order(1, 3, 7, ARRAY[1, 2, 3, 500], ARRAY[5, 5, 10, 1])"),
    _case("call_payment", "functions", REV, "Warehouse, district, customer updates and the history insert are "
          "captured.",
          "SELECT payment(2, 4, 10, 250.00)"),
    _case("call_delivery", "functions", REV, "The function's deletes and updates across ten districts are captured.",
          "SELECT delivery(1, 7)"),
    _case("replace_payment_function", "functions", REV, "The old body is in the before-catalog.",
          "CREATE OR REPLACE FUNCTION payment(p_w int, p_d int, p_c int, p_amount numeric) RETURNS numeric LANGUAGE "
          "plpgsql AS $$ DECLARE bal numeric; BEGIN UPDATE customer SET c_balance = c_balance - p_amount WHERE "
          "c_w_id = p_w AND c_d_id = p_d AND c_id = p_c RETURNING c_balance INTO bal; RETURN bal; END $$"),
    _case("writable_cte_delivery", "functions", REV, "Each data-modifying CTE's rows are captured.",
          "WITH d AS (DELETE FROM new_order WHERE no_w_id = 2 AND no_d_id = 1 AND no_o_id = 22 RETURNING *), o AS "
          "(UPDATE orders SET o_carrier_id = 3 FROM d WHERE o_w_id = d.no_w_id AND o_d_id = d.no_d_id AND o_id = "
          "d.no_o_id RETURNING o_id) UPDATE order_line SET ol_delivery_d = '2024-09-02 00:00:00' FROM d WHERE "
          "ol_w_id = d.no_w_id AND ol_d_id = d.no_d_id AND ol_o_id = d.no_o_id"),
    _case("do_block_payments", "functions", REV, "Writes from a loop of function calls in a DO block are ordinary "
          "captured rows.",
          "DO $$ BEGIN FOR c IN 1 .. 5 LOOP PERFORM payment(1, 9, c, 1.00 * c); END LOOP; END $$"),
    _case("hidden_drop_in_function", "functions", IRR,
          "Still irreversible under issue 18's capture: DDL run through EXECUTE inside a function or DO "
          "block is not seen by the proxy before it runs, and the ddl_command_start event trigger is not told "
          "which object the command will touch (current_query() is the outer statement), so no state is kept "
          "before it; the history rows are lost.",
          "CREATE FUNCTION purge_history() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'DROP TABLE history'; "
          "END $$",
          "SELECT purge_history()"),
    _case("do_block_truncate_dist_info", "functions", IRR,
          "Still irreversible under issue 18's capture: DDL run through EXECUTE inside a function or DO "
          "block is not seen by the proxy before it runs, and the ddl_command_start event trigger is not told "
          "which object the command will touch (current_query() is the outer statement), so no state is kept "
          "before it; every s_dist_info is cut to 4 characters.",
          "DO $$ BEGIN EXECUTE 'ALTER TABLE stock ALTER COLUMN s_dist_info TYPE char(4) USING left(s_dist_info, 4)'; "
          "END $$"),
    # --- grants ---------------------------------------------------------------------------------------------
    _case("grant_select_to_analyst", "grants", REV, "The before-catalog's ACLs say what to revoke.",
          "GRANT SELECT ON customer, orders, order_line TO corpus_analyst"),
    _case("revoke_stock_from_analyst", "grants", REV, "The revoked privilege is in the before-catalog's ACL.",
          "REVOKE SELECT ON stock FROM corpus_analyst"),
    _case("default_privileges_functions", "grants", REV, "pg_default_acl from before says what to put back.",
          "ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC"),
    # --- constraints, defaults, comments ---------------------------------------------------------------------
    _case("add_stock_check", "constraints_defaults", REV, "ADD CONSTRAINT is undone by DROP CONSTRAINT.",
          "ALTER TABLE stock ADD CONSTRAINT stock_quantity_nonneg CHECK (s_quantity >= 0)"),
    _case("set_all_local_default", "constraints_defaults", REV, "The previous (absent) default is in the "
          "before-catalog.",
          "ALTER TABLE orders ALTER COLUMN o_all_local SET DEFAULT 1"),
    _case("drop_item_fk", "constraints_defaults", REV, "The dropped foreign key's definition is in the before-catalog "
          "and every row still satisfies it.",
          "ALTER TABLE order_line DROP CONSTRAINT order_line_ol_i_id_fkey"),
    _case("comment_on_tables", "constraints_defaults", REV, "The previous (absent) comments are in the before-catalog.",
          "COMMENT ON TABLE new_order IS 'Orders not yet delivered'",
          "COMMENT ON COLUMN stock.s_low IS 'Below the restock threshold'"),
    _case("add_unique_item_name", "constraints_defaults", REV, "ADD CONSTRAINT ... UNIQUE is undone by dropping it.",
          "ALTER TABLE item ADD CONSTRAINT item_name_unique UNIQUE (i_name)"),
    # --- mixed DML + DDL --------------------------------------------------------------------------------------
    _case("new_order_then_index", "mixed", REV, "The function's writes are captured and the index is dropped.",
          "SELECT new_order(2, 8, 11, ARRAY[10, 20, 30], ARRAY[1, 2, 3])",
          "CREATE INDEX orders_customer_idx ON orders (o_w_id, o_d_id, o_c_id)"),
    _case("add_column_backfill", "mixed", REV, "The column is dropped and the backfill's updates are captured.",
          "ALTER TABLE district ADD COLUMN d_open_orders int",
          "UPDATE district d SET d_open_orders = (SELECT count(*) FROM new_order n WHERE n.no_w_id = d.d_w_id AND "
          "n.no_d_id = d.d_id)"),
    _case("payment_then_drop_c_data", "mixed", REV,
          "Relabelled reversible for issue 18 (was irreversible: the payment's rows are captured, but DROP "
          "COLUMN destroys every other customer's c_data): the DML before it is captured by row images; every "
          "row's value of the dropped column (keyed by primary key, by the whole row without one) is kept "
          "before the DROP COLUMN, so the column comes back in its place with its values, constraints and "
          "dependants.",
          "SELECT payment(1, 2, 3, 5.00)",
          "ALTER TABLE customer DROP COLUMN c_data"),
    _case("delivery_then_date_only", "mixed", REV,
          "Relabelled reversible for issue 18 (was irreversible: the delivery is captured, but timestamp -> "
          "date drops the delivery times of all earlier order lines): the DML before it is captured by row "
          "images; the old values of the retyped column are kept before the rewrite (keyed by primary key, by "
          "the whole row without one), so the column is set back to its type and exact old values.",
          "SELECT delivery(2, 4)",
          "ALTER TABLE order_line ALTER COLUMN ol_delivery_d TYPE date"),
    _case("move_history_to_new_table", "mixed", REV, "The new table is dropped and the moved rows restored from "
          "images.",
          "CREATE TABLE history_archive (LIKE history)",
          "WITH m AS (DELETE FROM history WHERE h_w_id = 1 RETURNING *) INSERT INTO history_archive SELECT * FROM m"),
    _case("touch_all_then_round_prices", "mixed", REV, "The no-op UPDATE captured every item's price first, so after "
          "altering the type back each rounded price can be restored from its before-image.",
          "UPDATE item SET i_price = i_price",
          "ALTER TABLE item ALTER COLUMN i_price TYPE numeric(5, 0)"),
    # --- MERGE ------------------------------------------------------------------------------------------------
    _case("merge_stock_shipment", "merge", REV, "MERGE updates are captured with before-images.",
          "MERGE INTO stock s USING (SELECT 1 AS w, i_id, 25 AS q FROM item WHERE i_id <= 30) v ON s.s_w_id = v.w "
          "AND s.s_i_id = v.i_id WHEN MATCHED THEN UPDATE SET s_quantity = s.s_quantity + v.q"),
    _case("merge_new_order_queue", "merge", REV, "MERGE's deletes and inserts are captured row changes.",
          "MERGE INTO new_order n USING (SELECT o_w_id, o_d_id, o_id FROM orders WHERE o_w_id = 1 AND o_d_id = 6) o "
          "ON n.no_w_id = o.o_w_id AND n.no_d_id = o.o_d_id AND n.no_o_id = o.o_id WHEN MATCHED AND o.o_id >= 29 "
          "THEN DELETE WHEN NOT MATCHED AND o.o_id = 21 THEN INSERT VALUES (o.o_id, o.o_d_id, o.o_w_id)"),
    # --- sequences ---------------------------------------------------------------------------------------------
    _case("sequence_default_backfill", "sequences", REV, "The column and the sequence are dropped; the rewrite added "
          "values but destroyed none.",
          "CREATE SEQUENCE history_seq",
          "ALTER TABLE history ADD COLUMN h_seq bigint DEFAULT nextval('history_seq')"),
    _case("setval_identity_then_insert", "sequences", REV, "setval moves only the identity sequence (not compared); "
          "the row is captured.",
          "SELECT setval(pg_get_serial_sequence('restock_request', 'id'), 5000)",
          "INSERT INTO restock_request (w_id, i_id, quantity) VALUES (1, 77, 30)"),
    _case("restart_identity_then_insert", "sequences", REV, "RESTART changes only the sequence position; the row is "
          "captured.",
          "ALTER TABLE restock_request ALTER COLUMN id RESTART WITH 9000",
          "INSERT INTO restock_request (w_id, i_id, quantity) VALUES (2, 88, 45)"),
    # --- jsonb and arrays ---------------------------------------------------------------------------------------
    _case("customer_prefs_jsonb", "jsonb_array", REV, "The new column is dropped again; the backfilled jsonb values "
          "are captured updates.",
          "ALTER TABLE customer ADD COLUMN c_prefs jsonb NOT NULL DEFAULT '{}'",
          "UPDATE customer SET c_prefs = c_prefs || jsonb_build_object('sms', c_id % 2 = 0, 'lang', 'en') WHERE "
          "c_w_id = 1 AND c_d_id <= 3"),
    _case("item_tags_array", "jsonb_array", REV, "The new column is dropped again; the array updates are captured.",
          "ALTER TABLE item ADD COLUMN i_tags text[] NOT NULL DEFAULT '{}'",
          "UPDATE item SET i_tags = array_append(i_tags, 'original') WHERE i_data LIKE 'ORIGINAL%'",
          "UPDATE item SET i_tags = i_tags || ARRAY['cheap', 'promo'] WHERE i_price < 5"),
)

#: A materialized view of each district's sales, made (and so fresh) in the setup.
_DISTRICT_SALES = ("CREATE MATERIALIZED VIEW district_sales AS SELECT ol_w_id, ol_d_id, count(*) AS lines, "
                   "sum(ol_amount) AS amount FROM order_line GROUP BY ol_w_id, ol_d_id",)

# Issue 18: drops over the foreign-key graph, dropped columns under views, a generated column and a trigger,
# column grants, lossy type changes and a dropped column on the keyless history table, TOAST-sized values in a
# dropped table, and the other DDL whose inverse needs the state from before the statement (RENAME, CREATE OR
# REPLACE, COMMENT, default privileges, TRUNCATE RESTART IDENTITY, REFRESH MATERIALIZED VIEW).
CASES += (
    _case("drop_warehouse_cascade", "drop_dependants", REV, "DROP TABLE warehouse CASCADE destroys both warehouses "
          "and the foreign keys of district and stock, the root of the whole graph; the table (with "
          "corpus_analyst's grant) and its rows are kept before the DROP.",
          "DROP TABLE warehouse CASCADE"),
    _case("drop_district_cascade", "drop_dependants", REV, "DROP TABLE district CASCADE destroys 20 districts (with "
          "the d_next_o_id counters New-Order needs) and customer's composite foreign key; the table and its rows "
          "are kept before the DROP.",
          "DROP TABLE district CASCADE"),
    _case("drop_stock_and_item", "drop_dependants", REV, "One DROP of two tables of the graph (item and the stock "
          "referencing it), with CASCADE taking order_line's foreign key, the stock_level view, the restock trigger "
          "and the generated s_low; 3000 rows and every definition are kept before the DROP, and the inverse must "
          "re-make item before stock.",
          "DROP TABLE stock, item CASCADE"),
    _case("drop_s_quantity_cascade", "generated_column", REV, "Dropping s_quantity takes the STORED generated s_low "
          "computed from it, the stock_level view and the restock trigger that fires on UPDATE OF s_quantity; the "
          "2000 quantities are kept before the DROP, and putting the column back in its place rebuilds stock.",
          "ALTER TABLE stock DROP COLUMN s_quantity CASCADE"),
    _case("drop_ol_amount_under_view", "drop_dependants", REV, "DROP COLUMN ol_amount CASCADE destroys the amount of "
          "every order line and the order_totals view on it; the values are kept before the DROP, and putting the "
          "column back in its place rebuilds order_line (with its foreign keys and the cascades on them).",
          "ALTER TABLE order_line DROP COLUMN ol_amount CASCADE",
          setup=("CREATE VIEW order_totals AS SELECT ol_w_id, ol_d_id, ol_o_id, sum(ol_amount) AS amount FROM "
                 "order_line GROUP BY ol_w_id, ol_d_id, ol_o_id",)),
    _case("toast_drop_customer_big_data", "toast", REV, "DROP TABLE customer CASCADE destroys 600 customers, 60 of "
          "them with 32 kB c_data stored out of line, with orders' foreign key, the customer_balance view and the "
          "name index; the table and every row, whole values included, are kept before the DROP.",
          "DROP TABLE customer CASCADE",
          setup=(f"UPDATE customer SET c_data = {_big(1000, 'cd')} || c_id WHERE c_id % 10 = 0",)),
    _case("history_amount_to_int", "alter_type", REV, "numeric(6,2) -> int rounds the two payments with cents in the "
          "keyless history table (which has duplicate rows) in a rewrite without row triggers; the old values are "
          "kept before it by the rows' full images.",
          "ALTER TABLE history ALTER COLUMN h_amount TYPE int",
          setup=("SELECT payment(1, 2, 3, 12.34)", "SELECT payment(2, 5, 7, 0.99)")),
    _case("history_w_id_to_boolean", "no_primary_key", REV, "int -> boolean USING h_w_id = 1 keeps one bit of the "
          "warehouse id on a table without a key; the old values are kept before the rewrite by the rows' full "
          "images.",
          "ALTER TABLE history ALTER COLUMN h_w_id TYPE boolean USING h_w_id = 1"),
    _case("drop_history_date_keyless", "no_primary_key", REV, "DROP COLUMN h_date on the keyless history table (with "
          "a duplicated row): the values are kept before the DROP by the rows' full images, and putting the column "
          "back in its place rebuilds the table with the same multiset of rows.",
          "ALTER TABLE history DROP COLUMN h_date",
          setup=("SELECT payment(1, 4, 9, 25.00)",)),
    _case("column_grants_on_customer", "grants", REV, "New column privileges; the before-catalog's attacl of every "
          "column says what to revoke.",
          "GRANT SELECT (c_w_id, c_d_id, c_id, c_last, c_balance) ON customer TO corpus_analyst",
          "GRANT UPDATE (c_credit, c_credit_lim) ON customer TO corpus_support"),
    _case("drop_price_with_column_grants", "grants", REV, "Dropping i_price takes its column privileges (SELECT and "
          "UPDATE for corpus_app) with it; the values and the ACL are kept before the DROP, and putting the column "
          "back in its place rebuilds item (with the foreign keys to it and the stock_level view).",
          "ALTER TABLE item DROP COLUMN i_price",
          setup=("GRANT SELECT (i_id, i_name, i_price), UPDATE (i_price) ON item TO corpus_app",)),
    _case("default_privileges_then_create", "grants", REV, "New default privileges and a table created under them "
          "(so it gets corpus_analyst's grant); the table is dropped and the pg_default_acl entry from before (none) "
          "put back.",
          "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO corpus_analyst",
          "CREATE TABLE carrier_stats (carrier int PRIMARY KEY, deliveries int NOT NULL)",
          "INSERT INTO carrier_stats SELECT o_carrier_id, count(*) FROM orders WHERE o_carrier_id IS NOT NULL "
          "GROUP BY o_carrier_id"),
    _case("rename_function_column_constraint", "ddl_create", REV, "Renames of a function, a column (whose name the "
          "functions' bodies still use) and a primary key constraint are undone by the reverse renames.",
          "ALTER FUNCTION payment(int, int, int, numeric) RENAME TO tpcc_payment",
          "ALTER TABLE order_line RENAME COLUMN ol_amount TO ol_total",
          "ALTER TABLE warehouse RENAME CONSTRAINT warehouse_pkey TO warehouse_pk"),
    _case("replace_stock_level_view", "ddl_create", REV, "CREATE OR REPLACE VIEW with another threshold; the old "
          "definition is in the before-catalog (pg_get_viewdef).",
          "CREATE OR REPLACE VIEW stock_level AS SELECT s.s_w_id, s.s_i_id, i.i_name, s.s_quantity FROM stock s "
          "JOIN item i ON i.i_id = s.s_i_id WHERE s.s_quantity < 30"),
    _case("replace_delivery_then_call", "functions", REV, "The old body of delivery is in the before-catalog; the "
          "rows the new body changed (new_order, orders, order_line; it no longer credits the customer) are captured.",
          "CREATE OR REPLACE FUNCTION delivery(p_w int, p_carrier int) RETURNS int LANGUAGE plpgsql AS $$ DECLARE o "
          "int; n int := 0; BEGIN FOR d IN 1 .. 10 LOOP SELECT min(no_o_id) INTO o FROM new_order WHERE no_w_id = "
          "p_w AND no_d_id = d; CONTINUE WHEN o IS NULL; DELETE FROM new_order WHERE no_w_id = p_w AND no_d_id = d "
          "AND no_o_id = o; UPDATE orders SET o_carrier_id = p_carrier WHERE o_w_id = p_w AND o_d_id = d AND o_id = "
          "o; UPDATE order_line SET ol_delivery_d = '2024-09-03 09:30:00' WHERE ol_w_id = p_w AND ol_d_id = d AND "
          "ol_o_id = o; n := n + 1; END LOOP; RETURN n; END $$",
          "SELECT delivery(1, 4)"),
    _case("comments_on_views_functions", "constraints_defaults", REV, "A removed table comment and new comments on a "
          "column, a function and a view; the before-catalog has them all.",
          "COMMENT ON TABLE stock IS NULL",
          "COMMENT ON COLUMN customer.c_data IS 'Free text; BC customers get payment notes'",
          "COMMENT ON FUNCTION new_order(int, int, int, int[], int[]) IS 'TPC-C New-Order'",
          "COMMENT ON VIEW customer_balance IS 'Balances per customer'",
          setup=("COMMENT ON TABLE stock IS 'Per-warehouse stock'",)),
    _case("truncate_restock_restart_identity", "truncate", REV, "TRUNCATE ... RESTART IDENTITY empties the identity "
          "ALWAYS table and restarts its sequence; the snapshot restores the rows with OVERRIDING SYSTEM VALUE, and "
          "the sequence position is not compared.",
          "TRUNCATE restock_request RESTART IDENTITY"),
    _case("update_then_refresh_fresh_matview", "truncate", REV, "The materialized view was fresh before the case: "
          "once the captured UPDATE is undone, REFRESH recomputes exactly its old contents.",
          "UPDATE order_line SET ol_amount = ol_amount * 1.1 WHERE ol_w_id = 1 AND ol_d_id = 3",
          "REFRESH MATERIALIZED VIEW district_sales",
          setup=_DISTRICT_SALES),
    _case("refresh_stale_matview", "truncate", IRR, "The materialized view is stale (order lines changed after it was "
          "made); REFRESH replaces its contents, which no captured state holds and no query can recompute.",
          "REFRESH MATERIALIZED VIEW district_sales",
          setup=(*_DISTRICT_SALES, "UPDATE order_line SET ol_amount = ol_amount + 1 WHERE ol_w_id = 2 AND "
                 "ol_d_id = 1")),
)

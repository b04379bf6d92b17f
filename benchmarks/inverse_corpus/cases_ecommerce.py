"""Agent transactions on the `ecommerce` schema (see `benchmarks/inverse_corpus/ecommerce.py`), labelled with
whether an exact inverse exists (the rules are in the package docstring)."""

from __future__ import annotations

from . import Case, Expected

REV: Expected = "reversible"
IRR: Expected = "irreversible"


def _case(name: str, category: str, expected: Expected, why: str, *forward: str, setup: tuple[str, ...] = ()) -> Case:
    return Case(f"ecommerce.{name}", "ecommerce", category, forward, expected, why, setup)


#: An incompressible string of `n` * 32 characters (md5 hex), so it is stored out of line even after compression.
def _big(n: int, salt: str) -> str:
    return f"(SELECT string_agg(md5(g::text || '{salt}'), '') FROM generate_series(1, {n}) g)"


CASES: tuple[Case, ...] = (
    # --- single-row DML ---------------------------------------------------------------------------
    _case("insert_customer", "single_row_dml", REV, "An inserted row is undone by deleting it (its after-image is "
          "captured).",
          "INSERT INTO customers (email, full_name, phone) VALUES ('new.customer@example.com', 'New Customer', NULL)"),
    _case("update_product_price", "single_row_dml", REV, "The row's before-image holds the old price.",
          "UPDATE products SET price = 19.99 WHERE sku = 'SKU-00042'"),
    _case("delete_review", "single_row_dml", REV, "The deleted row's before-image is captured and can be inserted "
          "back.",
          "DELETE FROM reviews WHERE id = 17"),
    # --- multi-row DML ------------------------------------------------------------------------------
    _case("discount_categories", "multi_row_dml", REV, "Every updated row's before-image is captured, so all prices "
          "go back.",
          "UPDATE products SET price = round(price * 0.9, 2) WHERE category_id IN (3, 4)"),
    _case("delete_using_join", "multi_row_dml", REV, "DELETE ... USING removes rows whose before-images are all "
          "captured.",
          "DELETE FROM reviews r USING products p WHERE p.id = r.product_id AND r.rating <= 2 AND p.category_id IN "
          "(5, 6, 7)"),
    _case("update_from_vip_note", "multi_row_dml", REV, "UPDATE ... FROM changes orders (and the audit trigger adds "
          "rows), all captured by row triggers.",
          "UPDATE orders o SET note = 'VIP' FROM customers c WHERE c.id = o.customer_id AND c.loyalty_points >= 45"),
    # --- tables without a primary key ----------------------------------------------------------------
    _case("delete_duplicate_views", "no_primary_key", REV, "Each deleted duplicate has its own captured image; "
          "re-inserting the images restores the multiset of rows.",
          "DELETE FROM page_views WHERE path = '/products/7'"),
    _case("delete_one_of_duplicates", "no_primary_key", REV, "One of several identical rows is deleted; inserting its "
          "image back gives an identical table (duplicates are indistinguishable).",
          "DELETE FROM page_views WHERE ctid = (SELECT min(ctid) FROM page_views WHERE path = '/products/7')"),
    _case("update_keyless_referrer", "no_primary_key", REV, "Rows without a key are matched by their full "
          "after-image; identical rows are interchangeable.",
          "UPDATE page_views SET referrer = 'direct' WHERE referrer IS NULL AND customer_id BETWEEN 1 AND 50"),
    _case("page_views_to_date", "no_primary_key", REV,
          "Relabelled reversible for issue 18 (was irreversible: timestamptz -> date drops the time of every "
          "page view in a rewrite that fires no row triggers): the old values of the retyped column are kept "
          "before the rewrite (keyed by primary key, by the whole row without one), so the column is set back "
          "to its type and exact old values.",
          "ALTER TABLE page_views ALTER COLUMN viewed_at TYPE date"),
    # --- foreign-key cascades -----------------------------------------------------------------------
    _case("delete_customer_cascade", "fk_cascade", REV, "Row triggers fire for the cascaded address deletes and the "
          "SET NULL updates of orders and reviews (and the audit rows they cause), so every change has images.",
          "DELETE FROM customers WHERE id = 8"),
    _case("delete_category_set_null", "fk_cascade", REV, "ON DELETE SET NULL on products and child categories is a "
          "set of captured row updates.",
          "DELETE FROM categories WHERE id = 3"),
    _case("delete_order_cascade", "fk_cascade", REV, "The cascaded order items and payments, and what their triggers "
          "wrote (reserved stock, audit rows), are all captured row changes.",
          "DELETE FROM orders WHERE id = 10"),
    _case("update_product_key_cascade", "fk_cascade", REV, "ON UPDATE CASCADE rewrites inventory and order items "
          "through row changes that are captured; setting the key back cascades back.",
          "UPDATE products SET id = 10000 WHERE id = 12"),
    # --- triggers with side effects ------------------------------------------------------------------
    _case("add_order_item", "trigger_side_effects", REV, "The item, the order total and reserved stock the triggers "
          "update, and the audit row are all captured.",
          "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price) VALUES (5, 10, 33, 2, 12.50)"),
    _case("change_item_quantities", "trigger_side_effects", REV, "Trigger-maintained totals, reservations and audit "
          "rows are row changes with images.",
          "UPDATE order_items SET quantity = quantity + 2 WHERE order_id = 7"),
    _case("record_payment", "trigger_side_effects", REV, "The payment, its audit row and the customer's loyalty "
          "points (award trigger) are captured.",
          "INSERT INTO payments (order_id, amount, method, reference) VALUES (11, 50.00, 'card', 'pay-manual-11')"),
    # --- upserts ------------------------------------------------------------------------------------
    _case("upsert_inventory", "upsert", REV, "ON CONFLICT DO UPDATE fires row triggers for the updated rows like a "
          "plain UPDATE.",
          "INSERT INTO inventory (product_id, on_hand) VALUES (1, 50), (2, 60) ON CONFLICT (product_id) DO UPDATE "
          "SET on_hand = inventory.on_hand + excluded.on_hand"),
    _case("upsert_customer_by_email", "upsert", REV, "One conflicting row is updated, one inserted; both have images.",
          "INSERT INTO customers (email, full_name) VALUES ('customer3@example.com', 'Renamed Three'), "
          "('fresh@example.com', 'Fresh Customer') ON CONFLICT (email) DO UPDATE SET full_name = excluded.full_name"),
    _case("upsert_product_price_where", "upsert", REV, "A conditional DO UPDATE changes only some rows, each captured.",
          "INSERT INTO products (sku, name, price) VALUES ('SKU-00010', 'Product 10', 1.00), ('SKU-00011', 'Product "
          "11', 9999.00), ('SKU-NEW01', 'New product', 5.00) ON CONFLICT (sku) DO UPDATE SET price = excluded.price "
          "WHERE products.price > excluded.price"),
    # --- identity ALWAYS -----------------------------------------------------------------------------
    _case("insert_payments_identity", "identity_always", REV, "Generated identity values are in the after-images; "
          "deleting the rows undoes them (the identity sequence stays advanced, which is not compared).",
          "INSERT INTO payments (order_id, amount, method) SELECT id, 1.00, 'voucher' FROM orders WHERE id BETWEEN "
          "100 AND 105"),
    _case("insert_overriding_system_value", "identity_always", REV, "A row inserted with OVERRIDING SYSTEM VALUE is "
          "deleted by its image.",
          "INSERT INTO payments (id, order_id, amount, method, reference) OVERRIDING SYSTEM VALUE VALUES (99999, 12, "
          "5.00, 'manual', 'manual-12')"),
    _case("delete_payment_identity", "identity_always", REV, "The deleted row comes back with INSERT ... OVERRIDING "
          "SYSTEM VALUE from its before-image, keeping its identity value.",
          "DELETE FROM payments WHERE reference = 'pay-7'"),
    _case("payment_id_set_default", "identity_always", REV, "A plain UPDATE cannot set an ALWAYS identity back, but "
          "the before-image has the old id: deleting the row and inserting the image with OVERRIDING SYSTEM VALUE "
          "(nothing references payments) is an exact inverse.",
          "UPDATE payments SET id = DEFAULT WHERE reference = 'pay-3'"),
    # --- generated columns ----------------------------------------------------------------------------
    _case("reprice_items_generated", "generated_column", REV, "The STORED line_total is recomputed from the restored "
          "unit_price; row images and trigger effects are captured.",
          "UPDATE order_items SET unit_price = unit_price * 2 WHERE product_id = 50"),
    _case("add_generated_price_cents", "generated_column", REV, "ADD COLUMN is undone by DROP COLUMN; the computed "
          "values carry no information of their own.",
          "ALTER TABLE products ADD COLUMN price_cents bigint GENERATED ALWAYS AS ((price * 100)::bigint) STORED"),
    # --- TOAST ------------------------------------------------------------------------------------------
    _case("toast_long_description", "toast", REV, "The captured after-image holds the whole 112 kB value and the "
          "before-image the old one.",
          "UPDATE products SET description = repeat('Lorem ipsum dolor sit amet. ', 4000) WHERE id = 3"),
    _case("toast_jsonb_manual", "toast", REV, "A jsonb value stored out of line is captured whole in the row images.",
          f"UPDATE products SET attributes = attributes || jsonb_build_object('manual', {_big(400, 'm')}) "
          "WHERE id = 9"),
    _case("toast_insert_then_delete_big", "toast", REV, "Both the inserted 96 kB row and the deleted one are captured "
          "whole.",
          "INSERT INTO products (sku, name, price, description) "
          f"VALUES ('SKU-BIG', 'Big manual', 1.00, {_big(3000, 'b')})",
          f"UPDATE products SET description = {_big(500, 'c')} WHERE id = 4",
          "DELETE FROM products WHERE sku = 'SKU-BIG'"),
    _case("big_description_then_drop_column", "toast", IRR, "The dropped values are kept before the DROP "
          "COLUMN, but description sits in the middle of products: putting it back in its place rebuilds the "
          "table, which drops and re-makes its dependants, among them the stale materialized view "
          "sales_by_category, whose contents PostgreSQL can only recompute (they exist nowhere else).",
          f"UPDATE products SET description = {_big(1000, 'd')} WHERE id = 1",
          "ALTER TABLE products DROP COLUMN description"),
    # --- TRUNCATE ---------------------------------------------------------------------------------------
    _case("truncate_page_views", "truncate", REV, "The BEFORE TRUNCATE snapshot copies every row, duplicates included.",
          "TRUNCATE page_views"),
    _case("truncate_reviews_restart_identity", "truncate", REV, "The snapshot restores the rows; the restarted "
          "sequence is not part of the compared state.",
          "TRUNCATE reviews RESTART IDENTITY"),
    _case("truncate_orders_cascade", "truncate", REV, "TRUNCATE ... CASCADE fires the snapshot trigger of every "
          "truncated table (orders, order items, payments).",
          "TRUNCATE orders CASCADE"),
    _case("refresh_stale_materialized_view", "truncate", IRR, "REFRESH replaces the materialized view's stale "
          "contents without row triggers; the old contents are not in any image or the catalog.",
          "REFRESH MATERIALIZED VIEW sales_by_category"),
    # --- DDL: create ---------------------------------------------------------------------------------------
    _case("create_wishlists", "ddl_create", REV, "A created table (with its rows) is undone by dropping it.",
          "CREATE TABLE wishlists (customer_id bigint REFERENCES customers ON DELETE CASCADE, product_id int "
          "REFERENCES products, added_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (customer_id, product_id))",
          "INSERT INTO wishlists (customer_id, product_id) VALUES (1, 2), (1, 3), (2, 3)"),
    _case("create_view", "ddl_create", REV, "CREATE VIEW is undone by DROP VIEW.",
          "CREATE VIEW top_customers AS SELECT customer_id, sum(total) AS spent FROM orders WHERE status <> "
          "'cancelled' GROUP BY customer_id ORDER BY spent DESC LIMIT 10"),
    _case("add_and_rename_columns", "ddl_create", REV, "ADD COLUMN and RENAME COLUMN are undone by DROP COLUMN and "
          "the reverse rename.",
          "ALTER TABLE customers ADD COLUMN birthday date",
          "ALTER TABLE customers RENAME COLUMN phone TO phone_number"),
    _case("create_enum_and_table", "ddl_create", REV, "A new type and a table using it are dropped again.",
          "CREATE TYPE shipment_state AS ENUM ('label_created', 'in_transit', 'delivered')",
          "CREATE TABLE shipments (id serial PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders ON DELETE "
          "CASCADE, state shipment_state NOT NULL DEFAULT 'label_created', carrier text)",
          "INSERT INTO shipments (order_id, carrier) SELECT id, 'UPS' FROM orders WHERE status = 'shipped' AND id < "
          "40"),
    # --- DROP with dependants ----------------------------------------------------------------------------
    _case("drop_inventory_cascade", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP TABLE ... CASCADE destroys inventory's "
          "300 rows (no row trigger fires on DROP) along with the product_catalog view): the table's definition"
          " (columns, defaults, constraints, indexes, triggers, comments, ACLs) and every row and of what its "
          "CASCADE removes (foreign keys, views) are kept before the DROP, so it is re-made and refilled "
          "exactly.",
          "DROP TABLE inventory CASCADE"),
    _case("drop_email_column_cascade", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP COLUMN destroys every customer's email, "
          "which no row image holds; the view order_summary goes with it): every row's value of the dropped "
          "column (keyed by primary key, by the whole row without one) and what its CASCADE removes is kept "
          "before the DROP COLUMN, so the column comes back in its place with its values, constraints and "
          "dependants.",
          "ALTER TABLE customers DROP COLUMN email CASCADE"),
    _case("drop_page_views", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: the table's rows are not captured by DROP "
          "TABLE): the table's definition (columns, defaults, constraints, indexes, triggers, comments, ACLs) "
          "and every row are kept before the DROP, so it is re-made and refilled exactly.",
          "DROP TABLE page_views"),
    _case("drop_view", "drop_dependants", REV, "A view holds no data; its definition is in the catalog from before.",
          "DROP VIEW order_summary"),
    _case("delete_all_then_drop", "drop_dependants", REV, "The DELETE captured every row before the DROP, and the "
          "table's definition is in the before-catalog, so the table and its rows can be rebuilt.",
          "DELETE FROM settings",
          "DROP TABLE settings"),
    _case("drop_function_cascade_view", "drop_dependants", REV, "The function and the view that used it hold no data; "
          "both definitions are in the before-catalog.",
          "DROP FUNCTION price_with_tax(numeric) CASCADE"),
    _case("drop_stale_materialized_view", "drop_dependants", IRR, "The materialized view's contents date from an "
          "earlier refresh; recreating it computes today's data, and the old contents were never captured.",
          "DROP MATERIALIZED VIEW sales_by_category"),
    _case("drop_enum_cascade", "drop_dependants", REV,
          "Relabelled reversible for issue 18 (was irreversible: DROP TYPE ... CASCADE drops orders.status (and"
          " the view using it); 1500 statuses are lost): the type's definition and the values of the columns "
          "its CASCADE drops (with the views on them) are kept before the DROP, so all of it comes back with "
          "its values.",
          "DROP TYPE order_status CASCADE"),
    _case("drop_generated_column_cascade", "drop_dependants", IRR, "Dropping line_total cascades to the stale "
          "materialized view sales_by_category, whose contents exist nowhere else (a materialized view can only "
          "be recomputed, not written to; issue 18's capture does not change that).",
          "ALTER TABLE order_items DROP COLUMN line_total CASCADE"),
    _case("drop_categories_cascade", "drop_dependants", IRR, "The rows and definitions are kept before the "
          "DROP (issue 18), but CASCADE also drops the stale materialized view sales_by_category (it joins "
          "categories), whose contents PostgreSQL can only recompute, not write back.",
          "DROP TABLE categories CASCADE"),
    _case("drop_empty_audit_log", "drop_dependants", REV, "audit_log has no rows at the start, so nothing is lost: "
          "the before-catalog recreates the empty table (the trigger functions only name it in their bodies).",
          "DROP TABLE audit_log"),
    # --- ALTER COLUMN TYPE ---------------------------------------------------------------------------------
    _case("weight_numeric_round", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: numeric(8,3) -> numeric(8,1) rounds every "
          "weight in a table rewrite that fires no row triggers): the old values of the retyped column are kept"
          " before the rewrite (keyed by primary key, by the whole row without one), so the column is set back "
          "to its type and exact old values.",
          "ALTER TABLE products ALTER COLUMN weight_kg TYPE numeric(8, 1)"),
    _case("phone_to_varchar5", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: USING left(phone, 5) truncates the phone "
          "numbers; the full values are not captured): the old values of the retyped column are kept before the"
          " rewrite (keyed by primary key, by the whole row without one), so the column is set back to its type"
          " and exact old values.",
          "ALTER TABLE customers ALTER COLUMN phone TYPE varchar(5) USING left(phone, 5)"),
    _case("placed_at_to_date", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: timestamptz -> date drops the time of day of "
          "every order): the old values of the retyped column are kept before the rewrite (keyed by primary "
          "key, by the whole row without one), so the column is set back to its type and exact old values.",
          "ALTER TABLE orders ALTER COLUMN placed_at TYPE date"),
    _case("widen_postal_code", "alter_type", REV, "varchar(12) -> varchar(20) keeps every value; altering back to the "
          "before-catalog's type is exact.",
          "ALTER TABLE addresses ALTER COLUMN postal_code TYPE varchar(20)"),
    _case("postal_code_prefix", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: USING left(postal_code, 3) keeps only the "
          "first three digits of every postal code): the old values of the retyped column are kept before the "
          "rewrite (keyed by primary key, by the whole row without one), so the column is set back to its type "
          "and exact old values.",
          "ALTER TABLE addresses ALTER COLUMN postal_code TYPE varchar(3) USING left(postal_code, 3)"),
    _case("gateway_response_to_jsonb", "alter_type", REV,
          "Relabelled reversible for issue 18 (was irreversible: json -> jsonb normalises spacing and keeps "
          "only the last of repeated keys: the verbatim gateway answers are lost): the old values of the "
          "retyped column are kept before the rewrite (keyed by primary key, by the whole row without one), so "
          "the column is set back to its type and exact old values.",
          "ALTER TABLE payments ALTER COLUMN gateway_response TYPE jsonb"),
    # --- functions -----------------------------------------------------------------------------------------
    _case("replace_function_body", "functions", REV, "CREATE OR REPLACE FUNCTION is undone by re-creating the old "
          "body from the before-catalog.",
          "CREATE OR REPLACE FUNCTION price_with_tax(p numeric) RETURNS numeric LANGUAGE sql IMMUTABLE AS $$ SELECT "
          "round(p * 1.25, 2) $$"),
    _case("call_place_order", "functions", REV, "Writes made inside a PL/pgSQL function fire the same row triggers.",
          "SELECT place_order(42, 17, 3)"),
    _case("call_cancel_order", "functions", REV, "The refund, deleted items, status change and their trigger effects "
          "are all captured row changes.",
          "SELECT cancel_order(3)"),
    _case("writable_cte_archive_views", "functions", REV, "A data-modifying CTE's DELETE and INSERT are both captured.",
          "WITH d AS (DELETE FROM page_views WHERE viewed_at < '2024-05-01 02:00:00+00' RETURNING *) INSERT INTO "
          "audit_log (table_name, op, new_row) SELECT 'page_views', 'ARCHIVE', to_jsonb(d) FROM d"),
    _case("replace_trigger_function_then_pay", "functions", REV, "The old trigger function body is in the "
          "before-catalog; the payment and the points the new body awarded are captured rows.",
          "CREATE OR REPLACE FUNCTION award_points() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN UPDATE customers c "
          "SET loyalty_points = c.loyalty_points + 2 * floor(NEW.amount)::int FROM orders o WHERE o.id = NEW.order_id "
          "AND c.id = o.customer_id; RETURN NULL; END $$",
          "INSERT INTO payments (order_id, amount, method, reference) VALUES (16, 20.00, 'card', 'double-points')"),
    _case("function_hidden_drop_column", "functions", IRR,
          "Still irreversible under issue 18's capture: DDL run through EXECUTE inside a function or DO "
          "block is not seen by the proxy before it runs, and the ddl_command_start event trigger is not told "
          "which object the command will touch (current_query() is the outer statement), so no state is kept "
          "before it; every review body is lost.",
          "CREATE FUNCTION strip_review_bodies() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'ALTER TABLE "
          "reviews DROP COLUMN body'; END $$",
          "SELECT strip_review_bodies()"),
    # --- grants ---------------------------------------------------------------------------------------------
    _case("revoke_privileges", "grants", REV, "The revoked privileges are in the before-catalog's ACLs and can be "
          "granted again.",
          "REVOKE SELECT ON orders FROM corpus_analyst",
          "REVOKE UPDATE ON customers FROM corpus_support"),
    _case("alter_default_privileges", "grants", REV, "pg_default_acl from before the transaction says what to put "
          "back.",
          "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO corpus_analyst"),
    _case("grant_column_update", "grants", REV, "Column privileges are in the before-catalog (attacl).",
          "GRANT UPDATE (loyalty_points, marketing_opt_in) ON customers TO corpus_app"),
    _case("drop_owned_by_support", "grants", REV, "DROP OWNED BY revokes the role's privileges in this database (it "
          "owns no objects); the before-catalog's ACLs hold them.",
          "DROP OWNED BY corpus_support"),
    # --- constraints, defaults, comments ---------------------------------------------------------------------
    _case("add_check_constraint", "constraints_defaults", REV, "ADD CONSTRAINT is undone by DROP CONSTRAINT.",
          "ALTER TABLE products ADD CONSTRAINT products_price_cap CHECK (price < 100000)"),
    _case("set_status_default", "constraints_defaults", REV, "The old default expression is in the before-catalog.",
          "ALTER TABLE orders ALTER COLUMN status SET DEFAULT 'paid'"),
    _case("comment_on", "constraints_defaults", REV, "The previous comments (or their absence) are in the "
          "before-catalog.",
          "COMMENT ON TABLE orders IS 'Checkouts (edited by the agent)'",
          "COMMENT ON COLUMN products.sku IS 'Stock keeping unit'"),
    _case("drop_check_constraint", "constraints_defaults", REV, "The dropped constraint's definition is in the "
          "before-catalog (pg_get_constraintdef); no row changes.",
          "ALTER TABLE customers DROP CONSTRAINT customers_loyalty_points_check"),
    _case("drop_column_with_check", "constraints_defaults", REV,
          "Relabelled reversible for issue 18 (was irreversible: dropping loyalty_points drops its CHECK too, "
          "and the points of all 500 customers are lost uncaptured): every row's value of the dropped column "
          "(keyed by primary key, by the whole row without one) is kept before the DROP COLUMN, so the column "
          "comes back in its place with its values, constraints and dependants.",
          "ALTER TABLE customers DROP COLUMN loyalty_points"),
    # --- mixed DML + DDL --------------------------------------------------------------------------------------
    _case("add_column_and_backfill", "mixed", REV, "The new column is dropped and the audit rows the backfill wrote "
          "are captured inserts.",
          "ALTER TABLE orders ADD COLUMN channel text",
          "UPDATE orders SET channel = 'web' WHERE id <= 100"),
    _case("update_then_drop_column", "mixed", REV,
          "Relabelled reversible for issue 18 (was irreversible: only ten rows' marketing_opt_in values were "
          "captured by the UPDATE; the other 490 are lost with the column): the DML before it is captured by "
          "row images; every row's value of the dropped column (keyed by primary key, by the whole row without "
          "one) is kept before the DROP COLUMN, so the column comes back in its place with its values, "
          "constraints and dependants.",
          "UPDATE customers SET marketing_opt_in = true WHERE id <= 10",
          "ALTER TABLE customers DROP COLUMN marketing_opt_in"),
    _case("create_table_and_move_rows", "mixed", REV, "The new table is dropped and the moved rows are restored from "
          "the DELETE's images.",
          "CREATE TABLE archived_reviews (LIKE reviews INCLUDING ALL)",
          "WITH m AS (DELETE FROM reviews WHERE rating = 1 RETURNING *) INSERT INTO archived_reviews SELECT * FROM m"),
    _case("insert_then_shorten_note", "mixed", REV,
          "Relabelled reversible for issue 18 (was irreversible: the inserted order is captured, but USING "
          "left(note, 4) then truncates every existing note in an uncaptured rewrite): the DML before it is "
          "captured by row images; the old values of the retyped column are kept before the rewrite (keyed by "
          "primary key, by the whole row without one), so the column is set back to its type and exact old "
          "values.",
          "INSERT INTO orders (customer_id, status, note) VALUES (9, 'pending', 'leave at the door')",
          "ALTER TABLE orders ALTER COLUMN note TYPE varchar(4) USING left(note, 4)"),
    _case("rename_column_and_insert", "mixed", REV, "The rename is reversed and the inserted row deleted by its image.",
          "ALTER TABLE settings RENAME COLUMN value TO val",
          "INSERT INTO settings (key, val) VALUES ('theme', 'dark')"),
    _case("insert_review_then_drop_table", "mixed", REV,
          "Relabelled reversible for issue 18 (was irreversible: the new review is captured, but DROP TABLE "
          "destroys the 600 earlier ones): the DML before it is captured by row images; the table's definition "
          "(columns, defaults, constraints, indexes, triggers, comments, ACLs) and every row are kept before "
          "the DROP, so it is re-made and refilled exactly.",
          "INSERT INTO reviews (product_id, customer_id, rating, body) VALUES (2, 3, 4, 'Solid')",
          "DROP TABLE reviews"),
    _case("touch_all_then_round_weight", "mixed", REV, "The no-op UPDATE captured every product's before-image first, "
          "so after altering the type back each rounded weight can be restored from its image.",
          "UPDATE products SET weight_kg = weight_kg",
          "ALTER TABLE products ALTER COLUMN weight_kg TYPE numeric(8, 1)"),
    # --- MERGE ------------------------------------------------------------------------------------------------
    _case("merge_inventory", "merge", REV, "MERGE's updates and deletes fire row triggers like plain UPDATE/DELETE.",
          "MERGE INTO inventory i USING (SELECT id, 50 AS qty FROM products WHERE id <= 10) s ON i.product_id = s.id "
          "WHEN MATCHED AND i.on_hand > 300 THEN DELETE WHEN MATCHED THEN UPDATE SET on_hand = i.on_hand + s.qty"),
    _case("merge_settings", "merge", REV, "Every MERGE action (insert, update, delete) is a captured row change.",
          "MERGE INTO settings s USING (VALUES ('currency', 'EUR'), ('tax_rate', NULL), ('gift_wrap', '1.50')) AS "
          "v(key, value) ON s.key = v.key WHEN MATCHED AND v.value IS NULL THEN DELETE WHEN MATCHED THEN UPDATE SET "
          "value = v.value WHEN NOT MATCHED THEN INSERT (key, value) VALUES (v.key, v.value)"),
    # --- sequences ---------------------------------------------------------------------------------------------
    _case("setval_then_insert", "sequences", REV, "Rows are reversible; setval moved only the sequence position, "
          "which is not part of the compared state.",
          "SELECT setval('reviews_id_seq', 10000)",
          "INSERT INTO reviews (product_id, customer_id, rating, body) VALUES (1, 1, 5, 'Great')"),
    _case("create_sequence_invoice_numbers", "sequences", REV, "The new sequence and column are dropped; the "
          "backfilled orders' audit rows are captured inserts.",
          "CREATE SEQUENCE invoice_no START 1000",
          "ALTER TABLE orders ADD COLUMN invoice_no bigint",
          "UPDATE orders SET invoice_no = nextval('invoice_no') WHERE status = 'delivered' AND id < 50"),
    _case("alter_sequence_restart", "sequences", REV, "ALTER SEQUENCE RESTART changes only the position; the inserted "
          "row is captured.",
          "ALTER SEQUENCE categories_id_seq RESTART WITH 500",
          "INSERT INTO categories (name, slug) VALUES ('Clearance', 'clearance')"),
    # --- jsonb and arrays ---------------------------------------------------------------------------------------
    _case("jsonb_set_color", "jsonb_array", REV, "jsonb values are captured exactly in the row images.",
          "UPDATE products SET attributes = jsonb_set(attributes, '{color}', '\"navy\"') WHERE attributes->>'color' "
          "= 'blue' AND id < 100"),
    _case("jsonb_remove_key", "jsonb_array", REV, "The before-image keeps the removed key.",
          "UPDATE products SET attributes = attributes - 'size' WHERE category_id = 7"),
    _case("strip_attribute_tags_using", "jsonb_array", REV,
          "Relabelled reversible for issue 18 (was irreversible: ALTER ... TYPE jsonb USING attributes - 'tags'"
          " is an update in disguise: the rewrite fires no row triggers and the tags are lost): the old values "
          "of the retyped column are kept before the rewrite (keyed by primary key, by the whole row without "
          "one), so the column is set back to its type and exact old values.",
          "ALTER TABLE products ALTER COLUMN attributes TYPE jsonb USING attributes - 'tags'"),
)

#: A materialized view refreshed just before the case: recomputing it gives its exact contents, so a drop or
#: rebuild that takes it along loses nothing (unlike the stale one the seed leaves).
_FRESH_SALES = ("REFRESH MATERIALIZED VIEW sales_by_category",)

# Issue 18: drops over the foreign-key graph, dropped columns under views, generated columns and column grants,
# lossy type changes on the keyless table, TOAST-sized values in what is dropped, and the other DDL whose inverse
# needs the state from before the statement (RENAME, CREATE OR REPLACE, COMMENT, default privileges, TRUNCATE
# RESTART IDENTITY, REFRESH, SET id = DEFAULT).
CASES += (
    _case("drop_products_cascade_fresh_matview", "drop_dependants", REV, "DROP TABLE products CASCADE removes the "
          "300 products and, over the foreign-key graph, the foreign keys of inventory, order_items and reviews, the "
          "product_catalog view and the sales_by_category materialized view; all of it is kept before the DROP, and "
          "the materialized view was refreshed just before, so recomputing it restores its exact contents.",
          "DROP TABLE products CASCADE", setup=_FRESH_SALES),
    _case("drop_order_graph_fresh_matview", "drop_dependants", REV, "Three tables of one foreign-key graph in one "
          "DROP (orders with its owned bigserial sequence, comment, grants and audit trigger; order_items with its "
          "generated column; payments with its identity ALWAYS key and verbatim json) and, by CASCADE, order_summary "
          "and the freshly refreshed sales_by_category: every definition and row is kept before the DROP.",
          "DROP TABLE order_items, payments, orders CASCADE", setup=_FRESH_SALES),
    _case("drop_customers_cascade", "drop_dependants", REV, "DROP TABLE customers CASCADE destroys 500 customers and "
          "the foreign keys of addresses, orders and reviews and the order_summary view; the table (identity BY "
          "DEFAULT, CHECK, column defaults, corpus_support's grants) and its rows are kept before the DROP.",
          "DROP TABLE customers CASCADE"),
    _case("drop_addresses_then_customers", "drop_dependants", REV, "Two drops down one foreign-key chain: addresses "
          "(with the foreign key orders.shipping_address_id) and then the customers they referenced; both tables' "
          "definitions and rows are kept before each DROP, and the inverse must re-make customers before addresses.",
          "DROP TABLE addresses CASCADE",
          "DROP TABLE customers CASCADE"),
    _case("drop_schema_marketing_cascade", "drop_dependants", REV, "DROP SCHEMA ... CASCADE takes two tables with "
          "205 rows (one referencing the other and public.customers) and the view public.campaign_reach in another "
          "schema that reads them; the schema, its tables with their rows and the view are kept before the DROP and "
          "come back in dependency order.",
          "DROP SCHEMA marketing CASCADE",
          setup=("CREATE SCHEMA marketing",
                 "CREATE TABLE marketing.campaigns (id int PRIMARY KEY, name text NOT NULL, starts_on date NOT NULL)",
                 "CREATE TABLE marketing.campaign_members (campaign_id int NOT NULL REFERENCES marketing.campaigns "
                 "ON DELETE CASCADE, customer_id bigint NOT NULL REFERENCES public.customers ON DELETE CASCADE, "
                 "joined_at timestamptz NOT NULL DEFAULT '2024-06-01 00:00:00+00', PRIMARY KEY (campaign_id, "
                 "customer_id))",
                 "INSERT INTO marketing.campaigns SELECT g, 'Campaign ' || g, date '2024-06-01' + g "
                 "FROM generate_series(1, 5) g",
                 "INSERT INTO marketing.campaign_members (campaign_id, customer_id) SELECT 1 + c % 5, c "
                 "FROM generate_series(1, 200) c",
                 "CREATE VIEW public.campaign_reach AS SELECT m.campaign_id, count(*) AS members, "
                 "sum(c.loyalty_points) AS points FROM marketing.campaign_members m JOIN customers c "
                 "ON c.id = m.customer_id GROUP BY m.campaign_id")),
    _case("drop_price_column_fresh_matview", "drop_dependants", REV, "DROP COLUMN price CASCADE destroys every price "
          "with its CHECK and the product_catalog view; the values are kept before the DROP, and putting the column "
          "back in its place rebuilds products, which re-makes the foreign keys to it and sales_by_category, fresh "
          "here, so nothing is lost.",
          "ALTER TABLE products DROP COLUMN price CASCADE", setup=_FRESH_SALES),
    _case("drop_quantity_generated_fresh_matview", "generated_column", REV, "Dropping quantity takes the STORED "
          "generated line_total computed from it, its CHECK and (through line_total) the freshly refreshed "
          "sales_by_category; the dropped values are kept before the DROP and the generated ones follow from them.",
          "ALTER TABLE order_items DROP COLUMN quantity CASCADE", setup=_FRESH_SALES),
    _case("toast_drop_reviews_big_bodies", "toast", REV, "DROP TABLE reviews destroys 12 bodies of about 19 kB stored "
          "out of line with the other 588 rows; the table and every row, whole values included, are kept before "
          "the DROP.",
          "DROP TABLE reviews",
          setup=(f"UPDATE reviews SET body = {_big(600, 'r')} || id WHERE id % 50 = 0",)),
    _case("toast_drop_gateway_response_column", "toast", REV, "DROP COLUMN gateway_response destroys every verbatim "
          "json answer (spacing and repeated keys kept by json), nine of them 13 kB and stored out of line; the "
          "exact values are kept before the DROP and it is the last column, so it comes back in its place.",
          "ALTER TABLE payments DROP COLUMN gateway_response",
          setup=("UPDATE payments SET gateway_response = format(E'{\"status\": \"pending\",\\n  \"raw\": \"%s\", "
                 f"\"status\":\"settled\"}}', {_big(400, 'g')} || id)::json WHERE id % 100 = 1",)),
    _case("page_views_path_prefix", "alter_type", REV, "USING left(path, 10) cuts '/products/123' to '/products/' "
          "in the keyless page_views, turning distinct rows into duplicates in a rewrite without row triggers; the "
          "old values are kept before it by the rows' full images, so the multiset of rows comes back exactly.",
          "ALTER TABLE page_views ALTER COLUMN path TYPE varchar(10) USING left(path, 10)"),
    _case("page_views_referrer_to_boolean", "no_primary_key", REV, "referrer text -> boolean (USING referrer IS NOT "
          "NULL) keeps only whether there was one, on a table without a key and with duplicate rows; the old "
          "values are kept before the rewrite by the rows' full images.",
          "ALTER TABLE page_views ALTER COLUMN referrer TYPE boolean USING referrer IS NOT NULL"),
    _case("drop_phone_with_column_grants", "grants", REV, "The dropped column takes its column privileges (UPDATE "
          "for corpus_app, SELECT for corpus_analyst) with it; its values and ACL are kept before the DROP, and "
          "rebuilding customers to put phone back in its place re-makes the foreign keys and the view on it.",
          "ALTER TABLE customers DROP COLUMN phone",
          setup=("GRANT UPDATE (phone) ON customers TO corpus_app",
                 "GRANT SELECT (email, phone) ON customers TO corpus_analyst")),
    _case("table_grants_to_column_grants", "grants", REV, "Table privileges narrowed to column privileges; the "
          "before-catalog has both the table ACL and every column's ACL (attacl), so each can be put back.",
          "REVOKE SELECT, UPDATE ON customers FROM corpus_support",
          "GRANT SELECT (id, full_name, loyalty_points) ON customers TO corpus_support",
          "GRANT UPDATE (marketing_opt_in) ON customers TO corpus_support"),
    _case("default_privileges_for_role", "grants", REV, "ALTER DEFAULT PRIVILEGES FOR ROLE changes another role's "
          "pg_default_acl entries; the entries from before the transaction (none) say what to put back.",
          "ALTER DEFAULT PRIVILEGES FOR ROLE corpus_app IN SCHEMA public GRANT SELECT ON TABLES TO corpus_analyst",
          "ALTER DEFAULT PRIVILEGES FOR ROLE corpus_app REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC"),
    _case("rename_orders_table_column_index", "ddl_create", REV, "Renames of a table (its views follow by oid), a "
          "column and an index are undone by the reverse renames, in reverse order.",
          "ALTER TABLE orders RENAME TO purchases",
          "ALTER TABLE purchases RENAME COLUMN total TO amount_total",
          "ALTER INDEX orders_customer_idx RENAME TO purchases_customer_idx",
          "ALTER TABLE customers RENAME CONSTRAINT customers_loyalty_points_check TO loyalty_points_non_negative"),
    _case("rename_enum_value", "ddl_create", REV, "RENAME VALUE changes the label of every order using it, without "
          "row changes; renaming it back restores them.",
          "ALTER TYPE order_status RENAME VALUE 'cancelled' TO 'voided'"),
    _case("replace_view_add_column", "ddl_create", REV, "CREATE OR REPLACE VIEW may add a column but not remove one, "
          "so the old definition (in the before-catalog, pg_get_viewdef) is restored by dropping and re-creating "
          "the view.",
          "CREATE OR REPLACE VIEW product_catalog AS SELECT p.id, p.sku, p.name, p.price, price_with_tax(p.price) AS "
          "price_gross, c.name AS category, i.on_hand - i.reserved AS available, p.weight_kg FROM products p LEFT "
          "JOIN categories c ON c.id = p.category_id LEFT JOIN inventory i ON i.product_id = p.id WHERE p.active "
          "AND i.on_hand > i.reserved"),
    _case("comments_removed_and_added", "constraints_defaults", REV, "COMMENT ... IS NULL removes a comment; the "
          "before-catalog has it, and the absence of the two comments added.",
          "COMMENT ON TABLE orders IS NULL",
          "COMMENT ON VIEW order_summary IS 'Orders with their customer and number of items'",
          "COMMENT ON FUNCTION place_order(bigint, int, int) IS 'Places a one-line order'"),
    _case("truncate_customers_restart_identity_cascade", "truncate", REV, "TRUNCATE customers RESTART IDENTITY "
          "CASCADE empties customers, addresses, orders, reviews, order_items and payments and restarts their "
          "sequences; every truncated table's snapshot restores the rows (identity ALWAYS ones with OVERRIDING "
          "SYSTEM VALUE), and the sequence positions are not compared.",
          "TRUNCATE customers RESTART IDENTITY CASCADE"),
    _case("refresh_unpopulated_matview", "truncate", REV, "The materialized view was left unpopulated (WITH NO "
          "DATA) before the case; REFRESH fills it, and REFRESH ... WITH NO DATA puts it back exactly.",
          "REFRESH MATERIALIZED VIEW sales_by_category",
          setup=("REFRESH MATERIALIZED VIEW sales_by_category WITH NO DATA",)),
    _case("payment_ids_set_default", "identity_always", REV, "SET id = DEFAULT gives the payments of orders 20 to "
          "60 new ALWAYS identity values; their before-images have the old ids, and nothing references payments, "
          "so deleting the rows and inserting the images with OVERRIDING SYSTEM VALUE is exact.",
          "UPDATE payments SET id = DEFAULT WHERE order_id BETWEEN 20 AND 60"),
)

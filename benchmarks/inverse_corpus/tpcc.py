"""The `tpcc` schema of the inverse-SQL benchmark corpus: TPC-C's order-entry tables at a tiny scale.

2 warehouses, 10 districts each, 30 customers per district, 1000 items and their stock per warehouse, 30 orders per
district with 5 to 15 order lines each, the newest 9 orders of each district still in `new_order`, and a
`history` table without a key. Composite primary keys and foreign keys as in the specification (order lines and
new-order rows cascade with their order). The three read-write transactions are PL/pgSQL functions that cases call:
`new_order(w, d, c, items[], quantities[])`, `payment(w, d, c, amount)` and `delivery(w, carrier)`.
Deviations from the specification, for the benchmark: `customer.c_data` is `text` (so it can hold TOAST-sized
values), one `s_dist_info` column instead of ten, and a `restock_request` table (identity ALWAYS key) that a stock
trigger fills when a quantity drops below 15 (seeded with the items already low), and a STORED generated
`stock.s_low` flag.
"""

from __future__ import annotations

from . import Schema
from .ecommerce import ROLES_SQL

DDL = ROLES_SQL + """
CREATE TABLE warehouse (
    w_id int PRIMARY KEY,
    w_name varchar(10) NOT NULL,
    w_street_1 varchar(20),
    w_city varchar(20),
    w_state char(2),
    w_zip char(9),
    w_tax numeric(4, 4) NOT NULL,
    w_ytd numeric(12, 2) NOT NULL
);

CREATE TABLE district (
    d_id int NOT NULL,
    d_w_id int NOT NULL REFERENCES warehouse (w_id),
    d_name varchar(10) NOT NULL,
    d_street_1 varchar(20),
    d_city varchar(20),
    d_state char(2),
    d_zip char(9),
    d_tax numeric(4, 4) NOT NULL,
    d_ytd numeric(12, 2) NOT NULL,
    d_next_o_id int NOT NULL,
    PRIMARY KEY (d_w_id, d_id)
);

CREATE TABLE customer (
    c_id int NOT NULL,
    c_d_id int NOT NULL,
    c_w_id int NOT NULL,
    c_first varchar(16),
    c_middle char(2),
    c_last varchar(16) NOT NULL,
    c_street_1 varchar(20),
    c_city varchar(20),
    c_state char(2),
    c_zip char(9),
    c_phone char(16),
    c_since timestamp NOT NULL,
    c_credit char(2) NOT NULL,
    c_credit_lim numeric(12, 2) NOT NULL,
    c_discount numeric(4, 4) NOT NULL,
    c_balance numeric(12, 2) NOT NULL,
    c_ytd_payment numeric(12, 2) NOT NULL,
    c_payment_cnt int NOT NULL,
    c_delivery_cnt int NOT NULL,
    c_data text,
    PRIMARY KEY (c_w_id, c_d_id, c_id),
    FOREIGN KEY (c_w_id, c_d_id) REFERENCES district (d_w_id, d_id)
);
CREATE INDEX customer_name_idx ON customer (c_w_id, c_d_id, c_last, c_first);

-- No key, as in the specification.
CREATE TABLE history (
    h_c_id int,
    h_c_d_id int,
    h_c_w_id int,
    h_d_id int,
    h_w_id int,
    h_date timestamp,
    h_amount numeric(6, 2),
    h_data varchar(24)
);

CREATE TABLE item (
    i_id int PRIMARY KEY,
    i_im_id int,
    i_name varchar(24) NOT NULL,
    i_price numeric(5, 2) NOT NULL,
    i_data varchar(50)
);

CREATE TABLE stock (
    s_i_id int NOT NULL REFERENCES item (i_id),
    s_w_id int NOT NULL REFERENCES warehouse (w_id),
    s_quantity int NOT NULL,
    s_dist_info char(24),
    s_ytd int NOT NULL,
    s_order_cnt int NOT NULL,
    s_remote_cnt int NOT NULL,
    s_data varchar(50),
    s_low boolean GENERATED ALWAYS AS (s_quantity < 15) STORED,
    PRIMARY KEY (s_w_id, s_i_id)
);

CREATE TABLE orders (
    o_id int NOT NULL,
    o_d_id int NOT NULL,
    o_w_id int NOT NULL,
    o_c_id int NOT NULL,
    o_entry_d timestamp NOT NULL,
    o_carrier_id int,
    o_ol_cnt int NOT NULL,
    o_all_local int NOT NULL,
    PRIMARY KEY (o_w_id, o_d_id, o_id),
    FOREIGN KEY (o_w_id, o_d_id, o_c_id) REFERENCES customer (c_w_id, c_d_id, c_id)
);

CREATE TABLE new_order (
    no_o_id int NOT NULL,
    no_d_id int NOT NULL,
    no_w_id int NOT NULL,
    PRIMARY KEY (no_w_id, no_d_id, no_o_id),
    FOREIGN KEY (no_w_id, no_d_id, no_o_id) REFERENCES orders (o_w_id, o_d_id, o_id) ON DELETE CASCADE
);

CREATE TABLE order_line (
    ol_o_id int NOT NULL,
    ol_d_id int NOT NULL,
    ol_w_id int NOT NULL,
    ol_number int NOT NULL,
    ol_i_id int NOT NULL REFERENCES item (i_id),
    ol_supply_w_id int NOT NULL,
    ol_delivery_d timestamp,
    ol_quantity int NOT NULL,
    ol_amount numeric(6, 2) NOT NULL,
    ol_dist_info char(24),
    PRIMARY KEY (ol_w_id, ol_d_id, ol_o_id, ol_number),
    FOREIGN KEY (ol_w_id, ol_d_id, ol_o_id) REFERENCES orders (o_w_id, o_d_id, o_id)
        ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE TABLE restock_request (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    w_id int NOT NULL,
    i_id int NOT NULL,
    quantity int NOT NULL,
    requested_at timestamp NOT NULL DEFAULT '2024-09-01 00:00:00'
);

CREATE FUNCTION stock_restock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO restock_request (w_id, i_id, quantity) VALUES (NEW.s_w_id, NEW.s_i_id, 100 - NEW.s_quantity);
    RETURN NULL;
END
$$;
CREATE TRIGGER stock_restock AFTER UPDATE OF s_quantity ON stock FOR EACH ROW
    WHEN (NEW.s_quantity < 15 AND OLD.s_quantity >= 15) EXECUTE FUNCTION stock_restock();

-- TPC-C New-Order: returns the new order's id.
CREATE FUNCTION new_order(p_w int, p_d int, p_c int, p_items int[], p_qty int[]) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    o int;
    k int;
    price numeric;
    dist char(24);
BEGIN
    UPDATE district SET d_next_o_id = d_next_o_id + 1 WHERE d_w_id = p_w AND d_id = p_d
    RETURNING d_next_o_id - 1 INTO o;
    INSERT INTO orders (o_id, o_d_id, o_w_id, o_c_id, o_entry_d, o_carrier_id, o_ol_cnt, o_all_local)
    VALUES (o, p_d, p_w, p_c, '2024-09-01 12:00:00', NULL, array_length(p_items, 1), 1);
    INSERT INTO new_order (no_o_id, no_d_id, no_w_id) VALUES (o, p_d, p_w);
    FOR k IN 1 .. array_length(p_items, 1) LOOP
        SELECT i_price INTO price FROM item WHERE i_id = p_items[k];
        UPDATE stock SET s_quantity = CASE WHEN s_quantity - p_qty[k] >= 10 THEN s_quantity - p_qty[k]
                                           ELSE s_quantity - p_qty[k] + 91 END,
                         s_ytd = s_ytd + p_qty[k], s_order_cnt = s_order_cnt + 1
        WHERE s_w_id = p_w AND s_i_id = p_items[k]
        RETURNING s_dist_info INTO dist;
        INSERT INTO order_line (ol_o_id, ol_d_id, ol_w_id, ol_number, ol_i_id, ol_supply_w_id, ol_delivery_d,
                                ol_quantity, ol_amount, ol_dist_info)
        VALUES (o, p_d, p_w, k, p_items[k], p_w, NULL, p_qty[k], p_qty[k] * price, dist);
    END LOOP;
    RETURN o;
END
$$;

-- TPC-C Payment.
CREATE FUNCTION payment(p_w int, p_d int, p_c int, p_amount numeric) RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE
    bal numeric;
BEGIN
    UPDATE warehouse SET w_ytd = w_ytd + p_amount WHERE w_id = p_w;
    UPDATE district SET d_ytd = d_ytd + p_amount WHERE d_w_id = p_w AND d_id = p_d;
    UPDATE customer SET c_balance = c_balance - p_amount, c_ytd_payment = c_ytd_payment + p_amount,
                        c_payment_cnt = c_payment_cnt + 1,
                        c_data = CASE WHEN c_credit = 'BC'
                                      THEN left(concat_ws(' ', p_c, p_d, p_w, p_amount, c_data), 500)
                                      ELSE c_data END
    WHERE c_w_id = p_w AND c_d_id = p_d AND c_id = p_c
    RETURNING c_balance INTO bal;
    INSERT INTO history (h_c_id, h_c_d_id, h_c_w_id, h_d_id, h_w_id, h_date, h_amount, h_data)
    SELECT p_c, p_d, p_w, p_d, p_w, '2024-09-01 12:00:00', p_amount, w.w_name || '    ' || d.d_name
    FROM warehouse w JOIN district d ON d.d_w_id = w.w_id WHERE w.w_id = p_w AND d.d_id = p_d;
    RETURN bal;
END
$$;

-- TPC-C Delivery: the oldest undelivered order of every district of a warehouse; returns how many.
CREATE FUNCTION delivery(p_w int, p_carrier int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    d int;
    o int;
    c int;
    n int := 0;
BEGIN
    FOR d IN 1 .. 10 LOOP
        SELECT min(no_o_id) INTO o FROM new_order WHERE no_w_id = p_w AND no_d_id = d;
        CONTINUE WHEN o IS NULL;
        DELETE FROM new_order WHERE no_w_id = p_w AND no_d_id = d AND no_o_id = o;
        UPDATE orders SET o_carrier_id = p_carrier WHERE o_w_id = p_w AND o_d_id = d AND o_id = o
        RETURNING o_c_id INTO c;
        UPDATE order_line SET ol_delivery_d = '2024-09-02 08:00:00' WHERE ol_w_id = p_w AND ol_d_id = d AND ol_o_id = o;
        UPDATE customer SET c_balance = c_balance + (SELECT sum(ol_amount) FROM order_line
                                                     WHERE ol_w_id = p_w AND ol_d_id = d AND ol_o_id = o),
                            c_delivery_cnt = c_delivery_cnt + 1
        WHERE c_w_id = p_w AND c_d_id = d AND c_id = c;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

CREATE VIEW stock_level AS
SELECT s.s_w_id, s.s_i_id, i.i_name, s.s_quantity FROM stock s JOIN item i ON i.i_id = s.s_i_id
WHERE s.s_quantity < 20;

CREATE VIEW customer_balance AS
SELECT c_w_id, c_d_id, c_id, c_last, c_balance, c_credit FROM customer;

GRANT SELECT ON warehouse, district, item, stock TO corpus_analyst;
"""

SEED = """
INSERT INTO warehouse
SELECT w, 'WH-' || w, w || ' Depot Road', (ARRAY['Lyon', 'Turin'])[w], (ARRAY['RH', 'PI'])[w], '12345' || w || '111',
       0.0125 * w, 300000.00
FROM generate_series(1, 2) w;

INSERT INTO district
SELECT d, w, 'D-' || w || '-' || d, d || ' Side Street', 'City ' || d, 'ST', '5432' || lpad(d::text, 2, '0') || '111',
       0.0100 + d * 0.005, 30000.00, 31
FROM generate_series(1, 2) w, generate_series(1, 10) d;

INSERT INTO customer
SELECT c, d, w, 'First' || c, 'OE', (ARRAY['BAR', 'OUGHT', 'ABLE', 'PRI', 'PRES', 'ESE', 'ANTI', 'CALLY', 'ATION',
                                            'EING'])[1 + c % 10] || (ARRAY['BAR', 'OUGHT', 'ABLE'])[1 + (c / 10) % 3],
       c || ' Elm Street', 'Town ' || d, 'TS', '9876' || lpad(d::text, 2, '0') || '111',
       lpad((w * 1000000 + d * 1000 + c)::text, 16, '0'),
       timestamp '2024-01-01 00:00:00' + (w * 300 + d * 30 + c) * interval '1 hour',
       CASE WHEN c % 10 = 0 THEN 'BC' ELSE 'GC' END, 50000.00, ((c * 7) % 5000) / 10000.0, -10.00, 10.00, 1, 0,
       'Customer data ' || w || '/' || d || '/' || c
FROM generate_series(1, 2) w, generate_series(1, 10) d, generate_series(1, 30) c;

INSERT INTO history
SELECT c, d, w, d, w, timestamp '2024-01-02 00:00:00', 10.00, 'initial payment'
FROM generate_series(1, 2) w, generate_series(1, 10) d, generate_series(1, 30) c;
-- a duplicated history row (the same payment recorded twice)
INSERT INTO history SELECT * FROM history WHERE h_c_w_id = 1 AND h_c_d_id = 1 AND h_c_id = 1;

INSERT INTO item
SELECT i, 1 + i % 10000, 'Item ' || i, round(1 + (i * 7919 % 9900) / 100.0, 2),
       CASE WHEN i % 10 = 0 THEN 'ORIGINAL item ' || i ELSE 'item data ' || i END
FROM generate_series(1, 1000) i;

INSERT INTO stock
SELECT i, w, 10 + (i * 31 + w) % 91, rpad('dist-' || w || '-' || i, 24, 'x'), 0, 0, 0, 'stock data ' || i
FROM generate_series(1, 2) w, generate_series(1, 1000) i;

INSERT INTO restock_request (w_id, i_id, quantity, requested_at)
SELECT s_w_id, s_i_id, 100 - s_quantity, timestamp '2024-08-15 00:00:00' + s_i_id * interval '1 minute'
FROM stock WHERE s_quantity < 12;

INSERT INTO orders
SELECT o, d, w, 1 + (o * 7 + d) % 30, timestamp '2024-08-01 00:00:00' + o * interval '1 hour',
       CASE WHEN o <= 21 THEN 1 + o % 10 END, 5 + (o + d) % 11, 1
FROM generate_series(1, 2) w, generate_series(1, 10) d, generate_series(1, 30) o;

INSERT INTO new_order SELECT o_id, o_d_id, o_w_id FROM orders WHERE o_id > 21;

INSERT INTO order_line
SELECT o.o_id, o.o_d_id, o.o_w_id, n, i.i_id, o.o_w_id,
       CASE WHEN o.o_id <= 21 THEN o.o_entry_d + interval '1 day' END, 5,
       CASE WHEN o.o_id <= 21 THEN 0.00 ELSE 5 * i.i_price END, rpad('dist-' || o.o_w_id || '-' || i.i_id, 24, 'x')
FROM orders o, generate_series(1, 15) n, item i
WHERE n <= o.o_ol_cnt AND i.i_id = 1 + (o.o_id * 97 + o.o_d_id * 13 + n * 31) % 1000;
"""

SCHEMA = Schema(
    name="tpcc",
    ddl=DDL,
    seed=SEED,
    description="TPC-C order entry at tiny scale (2 warehouses, 600 customers, 1000 items, 600 orders, ~6000 order "
    "lines): composite keys, cascading order lines, a keyless history table, New-Order / Payment / Delivery as "
    "PL/pgSQL functions, a restock trigger with an identity ALWAYS log table.",
)

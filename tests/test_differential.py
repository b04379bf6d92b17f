"""Differential tests: every script runs directly against PostgreSQL and through the proxy, with
psycopg (text and binary results) and asyncpg, and the transcripts must be identical.

See `tests/differential.py` for what a transcript holds and how runs are kept comparable.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import hashlib
import ipaddress
import random
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import AGENTS_ROLE
from tests.differential import (
    DRIVERS,
    S,
    Script,
    Step,
    as_role,
    canon,
    compare,
    first_difference,
    psycopg_connect,
    psycopg_step,
)

PSYCOPG = ("psycopg-text", "psycopg-binary")
TEXT_PROTOCOLS = ("psycopg-text", "asyncpg")  # drivers that can send several statements in one string
UTC = datetime.UTC

# -- types -----------------------------------------------------------------------------------

TYPES_SETUP = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'très 😀');
CREATE TYPE pair AS (a int, b text, c numeric);
CREATE TYPE nested AS (p pair, tags text[], m mood);
"""

TYPES = Script("types", setup=TYPES_SETUP, steps=[
    S("SELECT 1::int2, '-32768'::int2, 32767::int2, '-2147483648'::int4, 2147483647::int4, "
      "'-9223372036854775808'::int8, 9223372036854775807::int8, 0::int8"),
    S("SELECT $1::int2, $2::int4, $3::int8, $4::int8", 32767, -2147483648, 2**63 - 1, -(2**63)),
    S("SELECT 32768::int2", error="22003"),
    S("SELECT 123456789012345678901234567890.123456789012345678901234567890::numeric, "
      "'NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric, '-0.000'::numeric(10,3), "
      "1::numeric / 3, 2::numeric ^ 1000, 0.1::numeric(1000, 999), 1e-300::numeric"),
    S("SELECT $1::numeric, $2::numeric, $3::numeric, $4::numeric",
      decimal.Decimal("1234567890.0987654321E+100"), decimal.Decimal("-0.000000000000000000000000000001"),
      decimal.Decimal("NaN"), decimal.Decimal("1" * 500 + "." + "9" * 500)),
    S("SELECT 'NaN'::float8, 'Infinity'::float8, '-Infinity'::float8, '-0'::float8, 1e308::float8, "
      "5e-324::float8, 'NaN'::float4, '-Infinity'::float4, 3.4028235e38::float4, 1.4e-45::float4, 0.1::float4, "
      "0.1::float8, pi()"),
    S("SELECT $1::float8, $2::float8, $3::float8, $4::float8, $5::float8, $6::float4",
      float("nan"), float("inf"), float("-inf"), -0.0, 2.2250738585072014e-308, 1.5),
    S("SELECT 'héllo wörld', '日本語テキスト', '😀👍🏽👨‍👩‍👧‍👦🏳️‍🌈', 'e\u0301 a\u0308 n\u0303', '', ' ', "
      "E'tab\\there\\nnewline\\\\ backslash \\'quote\\'', 'ℌ𝔢𝔩𝔩𝔬 \U0010fffd', "
      "length('👨‍👩‍👧‍👦'), octet_length('👨‍👩‍👧‍👦'), upper('straße'), 'a'::char(5), 'abc'::varchar(10), "
      "'abc'::name, 'x'::\"char\""),
    S("SELECT $1::text, $2::text, $3::text, length($1::text), octet_length($2::text), $4::varchar",
      "😀 e\u0301 日本 \u200b\ufeff", "combining: a\u0300\u0301\u0302\u0303\u0304", "", "\x01\x7f\u00a0"),
    S("SELECT $1::bytea, length($1::bytea), md5($1::bytea)", bytes(range(256))),
    S("SELECT decode(string_agg(lpad(to_hex(i), 2, '0'), '' ORDER BY i), 'hex') "
      "FROM generate_series(0, 255) AS i"),
    S("SELECT ''::bytea, '\\x00'::bytea, $1::bytea", b"\x00\xff\x00"),
    S("SET bytea_output = escape"),
    S("SELECT decode(string_agg(lpad(to_hex(i), 2, '0'), '' ORDER BY i), 'hex') "
      "FROM generate_series(0, 255) AS i"),
    S("RESET bytea_output"),
    S("SELECT true, false, NULL::bool, $1::bool, $2::bool, 't'::bool AND 'f'::bool", True, False),
    S("SELECT '2024-02-29'::date, '1999-12-31'::date, '0001-01-01'::date, '9999-12-31'::date, "
      "'2024-03-10 02:30:00'::timestamp, '2024-03-10 02:30:00.123456+05:30'::timestamptz, "
      "'23:59:59.999999'::time, '00:00'::time, '12:00:00+03'::timetz, "
      "'1 year 2 months 3 days 04:05:06.789'::interval, '-1 day -00:00:01'::interval, '0'::interval"),
    S("SELECT 'infinity'::date::text, '-infinity'::timestamptz::text, '4713-01-01 BC'::date::text, "
      "'294276-12-31 23:59:59'::timestamp::text"),
    S("SELECT $1::date, $2::timestamp, $3::timestamptz, $4::time, $5::interval",
      datetime.date(2000, 2, 29), datetime.datetime(2038, 1, 19, 3, 14, 7, 999999),
      datetime.datetime(1970, 1, 1, tzinfo=UTC), datetime.time(13, 37, 0, 1),
      datetime.timedelta(days=-3, seconds=5, microseconds=7)),
    S("SET TimeZone = 'Asia/Kathmandu'"),
    S("SELECT '2024-01-01 00:00:00+00'::timestamptz, '2024-07-01 12:00:00'::timestamptz, $1::timestamptz",
      datetime.datetime(2020, 2, 2, 20, 20, tzinfo=UTC)),
    S("RESET TimeZone"),
    S("SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, '00000000-0000-0000-0000-000000000000'::uuid, "
      "$1::uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    S("""SELECT '{"a": [1, 2.50, "x", null, true], "b": {"c": "😀"}, "a": 2}'::json, """
      """'{"a": [1, 2.50, "x", null, true], "b": {"c": "😀\\u00e9"}, "a": 2}'::jsonb, """
      """'[]'::jsonb, 'null'::jsonb, '"str"'::json, '1e400'::json::text, '{"k":   1}'::json::text"""),
    S("SELECT $1::jsonb, $2::json", '{"x": [1, {"y": null}], "z": "ü"}', "[1,2,3]"),
    S("SELECT ARRAY[1, 2, NULL]::int[], ARRAY[[1, 2], [3, 4]], '{}'::int[], ARRAY[ARRAY[NULL::int]], "
      "ARRAY['a', NULL, 'b\"c', 'd,e', '{}', 'NULL', '', ' x ']::text[], '[0:1]={1,2}'::int[], "
      "ARRAY[1.5, NULL, 'NaN']::float8[], ARRAY[true, NULL]::bool[], ARRAY['\\x00ff'::bytea, NULL], "
      "ARRAY[[[1]], [[2]]]::int8[], ARRAY['2024-01-01'::date, NULL]"),
    S("SELECT $1::int[], $2::text[], array_length($1::int[], 1)", [1, None, 3], ["😀", None, "x,y", '"q"']),
    S("SELECT ROW(1, 'a', NULL)::text, ROW(1, 'a, \"b\"', NULL::int, ARRAY[1,2])::text, "
      "ROW(1, 'x', 2.5)::pair::text, (ROW(1, 'x', 2.5)::pair).b"),
    S("SELECT ROW(1, 'x', 2.5)::pair, ROW(ROW(2, NULL, NULL)::pair, ARRAY['t', NULL], 'ok')::nested, "
      "NULL::pair, ROW(NULL, NULL, NULL)::pair"),
    S("SELECT 'happy'::mood, 'très 😀'::mood, NULL::mood, 'sad'::mood < 'ok'::mood, enum_range(NULL::mood)"),
    S("SELECT 'nope'::mood", error="22P02"),
    S("SELECT int4range(1, 10), int4range(1, 10, '[]'), 'empty'::int4range, numrange(NULL, 5.5), "
      "'[2024-01-01,2024-02-01)'::daterange, "
      "tstzrange('2024-01-01 00:00+00', '2024-01-02 00:00+00', '(]'), int8range(NULL, NULL), "
      "'{[1,3), [5,7)}'::int4multirange"),
    S("SELECT '192.168.0.1/24'::inet, '10.0.0.0/8'::cidr, '::1'::inet, '2001:db8::/32'::cidr, "
      "'::ffff:1.2.3.4'::inet, $1::inet, $2::cidr",
      ipaddress.ip_address("203.0.113.7"), ipaddress.ip_network("2001:db8:1::/48")),
    S("SELECT B'1010'::bit(4), B'1'::varbit, '08:00:2b:01:02:03'::macaddr, point(1.5, -2), "
      "'a fat cat sat'::tsvector, 'fat & cat'::tsquery, 42::oid, 'pg_class'::regclass::text, "
      "'int4'::regtype::text, '<a>x</a>'::text, 12.34::money::text"),
])

NULLS = Script("nulls", setup=TYPES_SETUP, steps=[
    S("SELECT NULL, NULL::int2, NULL::int4, NULL::int8, NULL::numeric, NULL::float4, NULL::float8, NULL::text, "
      "NULL::bytea, NULL::bool, NULL::date, NULL::time, NULL::timestamp, NULL::timestamptz, NULL::interval, "
      "NULL::uuid, NULL::json, NULL::jsonb, NULL::int[], NULL::text[], NULL::int4range, NULL::inet, NULL::cidr, "
      "NULL::mood, NULL::pair"),
    S("SELECT $1::int, $2::text, $3::bytea, $4::numeric, $5::float8, $6::bool, $7::date, $8::uuid, $9::jsonb, "
      "$10::int[]", None, None, None, None, None, None, None, None, None, None),
    S("CREATE TABLE n (i int, t text, b bytea, f float8, d numeric, j jsonb, a int[], m mood, r int4range)"),
    S("INSERT INTO n VALUES (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL), "
      "(1, NULL, '', 'NaN', NULL, 'null', '{NULL}', NULL, 'empty'), (NULL, '', NULL, NULL, 0, NULL, '{}', 'ok', NULL)"),
    S("SELECT i, t, b, f, d, j, a, m::text, r FROM n ORDER BY i NULLS FIRST, t NULLS FIRST"),
    S("SELECT count(*), count(i), count(t), bool_and(t IS NULL), string_agg(t, ',') FROM n"),
    S("SELECT i IS NULL, t IS NOT DISTINCT FROM NULL, coalesce(t, '∅') FROM n ORDER BY i NULLS FIRST, t NULLS FIRST"),
])

# -- large values ----------------------------------------------------------------------------

_rnd = random.Random(20240229)
BIG_BYTES = _rnd.randbytes(5 * 1024 * 1024)
BIG_TEXT = "".join(_rnd.choice("abcxyz 0123 ü€😀\n\té") for _ in range(1024)) * (10 * 1024 * 1024 // 1300)

LARGE = Script("large", steps=[
    S("SELECT repeat('ab😀', 1747627) AS t, length(repeat('ab😀', 1747627))"),
    S("SELECT $1::text AS t, md5($1::text), octet_length($1::text)", BIG_TEXT),
    S("SELECT $1::bytea AS b, md5($1::bytea), length($1::bytea)", BIG_BYTES),
    S("SELECT md5($1::bytea) = $2", BIG_BYTES, hashlib.md5(BIG_BYTES).hexdigest()),
    S("SELECT decode(repeat('00ff7f80', 5 * 1024 * 1024 / 4), 'hex')"),
    S("CREATE TABLE big (id int, t text, b bytea)"),
    S("INSERT INTO big VALUES (1, $1, $2) RETURNING id, md5(t), md5(b)", BIG_TEXT, BIG_BYTES),
    S("SELECT t, b FROM big"),
    S("SELECT g, repeat(chr(65 + g % 26), 1000 + g) FROM generate_series(1, 3000) AS g"),
])

# -- multi-statement strings -----------------------------------------------------------------

def M(sql: str, **kw: Any) -> Step:
    """A multi-statement string: simple query protocol, so not for psycopg with binary results."""
    return S(sql, simple=True, drivers=TEXT_PROTOCOLS, **kw)


MULTI = Script("multi", steps=[
    M("SELECT 1; SELECT 'two', 2; CREATE TABLE m (a int); INSERT INTO m VALUES (1), (2), (3); "
      "UPDATE m SET a = a + 1; DELETE FROM m WHERE a > 3; SELECT * FROM m ORDER BY a"),
    M("SELECT 1; SELECT 1/0; SELECT 3", error="22012"),
    M("CREATE TABLE m2 (a int); INSERT INTO m2 VALUES (1); SELECT 1/0", error="22012"),
    S("SELECT count(*) FROM m2", error="42P01"),
    M("BEGIN; INSERT INTO m VALUES (10); SELECT count(*) FROM m"),
    M("INSERT INTO m VALUES (11); COMMIT; SELECT count(*) FROM m"),
    M("SELECT 1;;; ;SELECT 2;"),
    M("DO $$BEGIN RAISE NOTICE 'first'; END$$; SELECT 'between'; DO $$BEGIN RAISE NOTICE 'second'; END$$"),
    M("SELECT 1; SELEC 2", error="42601"),
    M("BEGIN; SELECT 1/0; SELECT 2", error="22012"),
    S("ROLLBACK"),
    S("SELECT 1 AS a; SELECT 2 AS b", error="42601", drivers=("psycopg-binary",)),
    S("SELECT 1 AS a; SELECT 2 AS b", error="42601", drivers=("asyncpg",)),
])

# -- errors ----------------------------------------------------------------------------------

ERRORS = Script("errors", steps=[
    S("SELECT 1/0", error="22012"),
    S("SELECT 1.0 / $1::numeric", 0, error="22012"),
    S("CREATE TABLE par (id int PRIMARY KEY, name text UNIQUE)"),
    S("CREATE TABLE chi (id int PRIMARY KEY, par_id int NOT NULL REFERENCES par (id), "
      "v text CHECK (v <> 'bad'))"),
    S("INSERT INTO par VALUES (1, 'one'), (2, 'two')"),
    S("INSERT INTO par VALUES (1, 'uno')", error="23505"),
    S("INSERT INTO par VALUES ($1, $2)", 3, "two", error="23505"),
    S("INSERT INTO chi VALUES (1, NULL, 'x')", error="23502"),
    S("INSERT INTO chi VALUES (1, 99, 'x')", error="23503"),
    S("INSERT INTO chi VALUES (1, 1, 'bad')", error="23514"),
    S("INSERT INTO chi VALUES (1, 1, 'ok')"),
    S("DELETE FROM par WHERE id = 1", error="23503"),
    S("SELECT * FROM no_such_table", error="42P01"),
    S("SELECT no_such_column FROM par", error="42703"),
    S("SELEC 1", error="42601"),
    S("SELECT 'unterminated", error="42601"),
    S("SELECT 'abc'::int", error="22P02"),
    S("SELECT no_such_function(1)", error="42883"),
    S("SELECT (SELECT 1 UNION SELECT 2)", error="21000"),
    S("SELECT repeat('x', 10)::varchar(5)::char(1), 'abcdef'::varchar(3)"),
    S("INSERT INTO chi (id, par_id, v) VALUES (2, 1, repeat('é', 3)::varchar(2))"),
    S("SELECT '2024-02-30'::date", error="22008"),
    S("SELECT 2147483647::int + 1", error="22003"),
    S("SELECT E'\\xff'", error="22021", drivers=PSYCOPG),
    S("DO $$BEGIN RAISE EXCEPTION 'custom % (%)', 42, 'ü' USING ERRCODE = 'AB123', DETAIL = 'the detail', "
      "HINT = 'a hint', COLUMN = 'col', TABLE = 'tab', SCHEMA = 'sch', CONSTRAINT = 'con', DATATYPE = 'dt'; END$$",
      error="AB123"),
    S("CREATE FUNCTION boom(x int) RETURNS int LANGUAGE plpgsql AS $$BEGIN RETURN 10 / x; END$$"),
    S("SELECT boom(0)", error="22012"),
    S("SELECT boom(g) FROM generate_series(3, -1, -1) AS g", error="22012"),
    S("SELECT pg_terminate_backend(-1)"),
    S("SELECT 'still alive', count(*) FROM par"),
])

# -- transactions and savepoints -------------------------------------------------------------

TRANSACTIONS = Script("transactions", steps=[
    S("CREATE TABLE acc (id int PRIMARY KEY, v int NOT NULL)"),
    S("BEGIN"),
    S("INSERT INTO acc VALUES (1, 100), (2, 200)"),
    S("SELECT 1/0", error="22012"),
    S("SELECT 1", error="25P02"),
    S("ROLLBACK"),
    S("SELECT count(*) FROM acc"),
    S("BEGIN"),
    S("INSERT INTO acc VALUES (1, 100)"),
    S("INSERT INTO acc VALUES (1, 100)", error="23505"),
    S("COMMIT"),
    S("SELECT count(*) FROM acc"),
    S("ROLLBACK"),
    S("COMMIT"),
    S("BEGIN ISOLATION LEVEL REPEATABLE READ"),
    S("BEGIN"),
    S("SHOW transaction_isolation"),
    S("INSERT INTO acc VALUES (1, 1), (2, 2), (3, 3)"),
    S("SAVEPOINT a"),
    S("UPDATE acc SET v = v * 10 WHERE id >= 2"),
    S("SAVEPOINT b"),
    S("INSERT INTO acc VALUES (3, 0)", error="23505"),
    S("SELECT 1", error="25P02"),
    S("ROLLBACK TO SAVEPOINT b"),
    S("SELECT id, v FROM acc ORDER BY id"),
    S("ROLLBACK TO a"),
    S("SELECT id, v FROM acc ORDER BY id"),
    S("RELEASE SAVEPOINT a"),
    S("ROLLBACK TO SAVEPOINT a", error="3B001"),
    S("ROLLBACK"),
    S("BEGIN"),
    S("INSERT INTO acc VALUES (5, 5)"),
    S("SAVEPOINT s1"),
    S("INSERT INTO acc VALUES (6, 6)"),
    S("RELEASE s1"),
    S("COMMIT"),
    S("SELECT id, v FROM acc ORDER BY id"),
    S("START TRANSACTION READ ONLY"),
    S("INSERT INTO acc VALUES (9, 9)", error="25006"),
    S("ROLLBACK"),
    S("SAVEPOINT outside", error="25P01"),
    M("BEGIN; SET LOCAL TimeZone = 'Pacific/Chatham'; SHOW TimeZone"),
    S("ROLLBACK"),
    S("SHOW TimeZone"),
    S("BEGIN"),
    S("SET LOCAL TimeZone = 'Pacific/Chatham'"),
    S("COMMIT"),
    S("SHOW TimeZone"),
    S("SELECT 1"),
])

# -- DDL and DML tags ------------------------------------------------------------------------

DDL_DML = Script("ddl_dml", steps=[
    S("CREATE TABLE t (id serial PRIMARY KEY, name text NOT NULL, qty int DEFAULT 0)"),
    S("CREATE TABLE IF NOT EXISTS t (id int)"),
    S("ALTER TABLE t ADD COLUMN note text"),
    S("ALTER TABLE t ALTER COLUMN qty SET NOT NULL"),
    S("ALTER TABLE t RENAME COLUMN note TO remark"),
    S("CREATE INDEX t_name_idx ON t (name)"),
    S("CREATE UNIQUE INDEX IF NOT EXISTS t_name_idx ON t (name)"),
    S("CREATE VIEW tv AS SELECT id, upper(name) AS name FROM t"),
    S("CREATE SEQUENCE seq START 100"),
    S("SELECT nextval('seq'), nextval('seq'), currval('seq')"),
    S("CREATE TYPE color AS ENUM ('red', 'green')"),
    S("ALTER TYPE color ADD VALUE 'blue'"),
    S("SELECT 'blue'::color::text, enum_range(NULL::color)::text"),
    S("COMMENT ON TABLE t IS 'a table'"),
    S("CREATE FUNCTION add1(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + 1'"),
    S("CREATE OR REPLACE FUNCTION add1(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + 2'"),
    S("INSERT INTO t (name) VALUES ('a')"),
    S("INSERT INTO t (name, qty) VALUES ('b', 2), ('c', 3), ('d', 4) RETURNING id, name, qty"),
    S("INSERT INTO t (name, qty) VALUES ($1, $2) RETURNING *", "é😀", 5),
    S("INSERT INTO t (name) SELECT 'g' || g FROM generate_series(1, 50) AS g"),
    S("INSERT INTO t (id, name) VALUES (1, 'dup') ON CONFLICT DO NOTHING"),
    S("INSERT INTO t (id, name) VALUES (1, 'dup') ON CONFLICT (id) DO UPDATE SET name = excluded.name "
      "RETURNING id, name"),
    S("UPDATE t SET qty = qty + 1 WHERE name LIKE 'g%'"),
    S("UPDATE t SET qty = -1 WHERE false"),
    S("UPDATE t SET remark = 'x' WHERE id <= 3 RETURNING id, remark"),
    S("DELETE FROM t WHERE name LIKE 'g1%'"),
    S("DELETE FROM t WHERE id = $1 RETURNING name", 2),
    S("DELETE FROM t WHERE id = -5"),
    S("MERGE INTO t USING (VALUES (1, 'm1'), (1000, 'm2')) AS s (id, name) ON t.id = s.id "
      "WHEN MATCHED THEN UPDATE SET name = s.name WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, s.name)"),
    S("WITH ins AS (INSERT INTO t (name) VALUES ('cte') RETURNING id) SELECT count(*) FROM ins"),
    S("CREATE TABLE t2 AS SELECT id, name FROM t WHERE id < 10"),
    S("SELECT id, name INTO t3 FROM t WHERE id < 5"),
    S("SELECT id, name, qty, remark, add1(id) FROM t ORDER BY id"),
    S("SELECT * FROM tv ORDER BY id LIMIT 5"),
    S("TRUNCATE t2"),
    S("TABLE t3"),
    S("VALUES (1, 'a'), (2, NULL)"),
    S("EXPLAIN (COSTS OFF) SELECT * FROM t WHERE id = 1"),
    S("VACUUM t3"),
    S("ANALYZE t3"),
    S("LOCK TABLE t3 IN ACCESS SHARE MODE", error="25P01"),
    S("GRANT SELECT ON t3 TO PUBLIC"),
    S("REVOKE SELECT ON t3 FROM PUBLIC"),
    S("DROP VIEW tv"),
    S("DROP TABLE t2, t3"),
    S("DROP TABLE IF EXISTS does_not_exist"),
    S("DROP TABLE does_not_exist", error="42P01"),
    S("DROP FUNCTION add1(int)"),
    S("DROP SEQUENCE seq"),
    S("DROP TYPE color"),
    S("DROP INDEX t_name_idx"),
    S("DROP TABLE t"),
    S("LISTEN chan"),
    S("NOTIFY chan, 'payload ü'"),
    S("SELECT pg_notify('chan', repeat('p', 7000))"),
    S("BEGIN"),
    S("NOTIFY chan, 'in tx'"),
    S("NOTIFY chan, 'in tx 2'"),
    S("COMMIT"),
    S("UNLISTEN *"),
    S("DISCARD TEMP"),
])

# -- session settings ------------------------------------------------------------------------

SETTINGS = Script("settings", steps=[
    S("SHOW client_encoding"),
    S("SET client_encoding TO 'LATIN1'"),
    S("SHOW client_encoding"),
    S("SELECT 'café', $1::text, length('café')", "naïve"),
    S("SELECT chr(128512)", error="22P05"),
    S("SET client_encoding TO 'WIN1252'"),
    S("SELECT '€ – “quotes”'", drivers=PSYCOPG),  # asyncpg always encodes queries as UTF-8
    S("SELECT chr(8364), chr(8220), chr(233)"),
    S("RESET client_encoding"),
    S("SELECT '😀'"),
    S("SHOW DateStyle"),
    S("SET DateStyle = 'SQL, DMY'"),
    S("SHOW DateStyle"),
    S("SELECT '2024-02-29'::date::text, '2024-02-29 13:14:15'::timestamp::text"),
    S("SET DateStyle = 'German'"),
    S("SELECT '2024-02-29'::date::text"),
    S("SET DateStyle = 'ISO, MDY'"),
    S("SELECT '02/03/2024'::date"),
    S("SET TimeZone = 'America/St_Johns'"),
    S("SHOW TimeZone"),
    S("SELECT '2024-06-01 12:00:00+00'::timestamptz, '2024-01-01 12:00:00+00'::timestamptz::text"),
    S("SET TIME ZONE 'UTC'"),
    S("SELECT '2024-06-01 12:00:00+00'::timestamptz"),
    S("SET TimeZone = 'Not/AZone'", error="22023"),
    S("SET search_path = pg_catalog, public"),
    S("SHOW search_path"),
    S("SELECT current_schemas(false)::text"),
    S("SET IntervalStyle = 'postgres_verbose'"),
    S("SELECT '1 day 2 hours 3.5 seconds'::interval::text"),
    S("SET IntervalStyle = 'iso_8601'"),
    S("SELECT '1 day 2 hours'::interval::text"),
    S("SET application_name = 'diff test ü'"),
    S("SHOW application_name"),
    S("SET extra_float_digits = 0"),
    S("SELECT 0.1::float8::text, 1e100::float8::text"),
    S("SET no_such_setting = 1", error="42704"),
    S("SET statement_timeout = 'abc'", error="22023"),
    S("SELECT set_config('TimeZone', 'Europe/Berlin', false)"),
    S("SHOW TimeZone"),
    S("RESET ALL"),
    S("SHOW TimeZone"),
    S("SHOW application_name"),
    S("SHOW ALL"),
])

# -- notices ---------------------------------------------------------------------------------

NOTICES = Script("notices", steps=[
    S("DO $$BEGIN RAISE NOTICE 'hello %', 'world'; END$$"),
    S("DO $$BEGIN RAISE NOTICE 'ünïcödé 😀 %', repeat('x', 3); RAISE WARNING 'careful' USING DETAIL = 'd', "
      "HINT = 'h', ERRCODE = '01XYZ'; RAISE INFO 'info!'; RAISE LOG 'log only'; RAISE DEBUG 'debug hidden'; END$$"),
    S("SET client_min_messages = debug1"),
    S("DO $$BEGIN RAISE DEBUG 'debug shown'; RAISE LOG 'log shown'; END$$"),
    S("SET client_min_messages = warning"),
    S("DO $$BEGIN RAISE NOTICE 'suppressed'; RAISE WARNING 'kept'; END$$"),
    S("RESET client_min_messages"),
    S("DO $$BEGIN FOR i IN 1..1000 LOOP RAISE NOTICE 'n%', i; END LOOP; END$$"),
    S("DO $$BEGIN RAISE NOTICE 'before the error'; PERFORM 1/0; END$$", error="22012"),
    S("CREATE FUNCTION noisy(i int) RETURNS int LANGUAGE plpgsql AS "
      "$$BEGIN RAISE NOTICE 'row %', i; RETURN i * 2; END$$"),
    S("SELECT noisy(g) FROM generate_series(1, 20) AS g"),
    S("SELECT noisy($1)", 7),
    S("DO $$BEGIN RAISE NOTICE '%', repeat('long notice ', 20000); END$$"),
    S("DROP TABLE IF EXISTS nothing_here"),
    S("CREATE TABLE nt (a int)"),
    S("CREATE TABLE IF NOT EXISTS nt (a int)"),
    S("ROLLBACK"),
    S("BEGIN"),
    S("BEGIN"),
    S("COMMIT"),
    S("SELECT 1"),
])

# -- cursors and SQL-level prepared statements ---------------------------------------------

CURSORS = Script("cursors", steps=[
    S("BEGIN"),
    S("DECLARE c CURSOR FOR SELECT g, 'row ' || g FROM generate_series(1, 10) AS g"),
    S("FETCH 3 FROM c"),
    S("FETCH NEXT FROM c"),
    S("MOVE 2 IN c"),
    S("FETCH ALL FROM c"),
    S("FETCH 1 FROM c"),
    S("CLOSE c"),
    S("FETCH 1 FROM c", error="34000"),
    S("ROLLBACK"),
    S("BEGIN"),
    S("DECLARE s SCROLL CURSOR FOR SELECT g FROM generate_series(1, 5) AS g"),
    S("FETCH LAST FROM s"),
    S("FETCH ABSOLUTE 2 FROM s"),
    S("FETCH BACKWARD 5 FROM s"),
    S("DECLARE b BINARY CURSOR FOR SELECT 1::int4, 'x'::text, '\\x00ff'::bytea, 2.5::float8"),
    S("FETCH ALL FROM b"),
    S("DECLARE h CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 4) AS g"),
    S("COMMIT"),
    S("FETCH 2 FROM h"),
    S("CLOSE h"),
    S("CLOSE ALL"),
    S("DECLARE x CURSOR FOR SELECT 1", error="25P01"),
])

PREPARED = Script("prepared", steps=[
    S("PREPARE p (int, text) AS SELECT $1 * 2 AS doubled, upper($2) AS up", simple=True),
    S("EXECUTE p (21, 'straße')"),
    S("EXECUTE p (NULL, NULL)"),
    S("CREATE TABLE pt (id int, v text)"),
    S("PREPARE ins (int, text) AS INSERT INTO pt VALUES ($1, $2) RETURNING id", simple=True),
    S("EXECUTE ins (1, 'one')"),
    S("PREPARE upd AS UPDATE pt SET v = v || '!'", simple=True),
    S("EXECUTE upd"),
    S("SELECT name, statement, parameter_types::text FROM pg_prepared_statements "
      "WHERE name IN ('p', 'ins', 'upd') ORDER BY name"),
    S("DEALLOCATE p"),
    S("EXECUTE p (1, 'x')", error="26000"),
    S("PREPARE ins AS SELECT 1", error="42P05", simple=True),
    S("DEALLOCATE ALL"),
    S("EXECUTE ins (2, 'two')", error="26000"),
    S("SELECT $1::int + 1", 1, prepare=True),
    S("SELECT $1::int + 1", 2, prepare=True),
    S("SELECT $1::text || 'x'", "a", prepare=True),
    S("SELECT $1::int + 1", 3, prepare=True),
    S("SELECT * FROM pt"),
])

# -- COPY ------------------------------------------------------------------------------------

COPY_ROWS = "".join(f"{i}\tname {i} ü😀\t\\\\x{i:04x}\n" for i in range(10, 2010)).encode()

COPY = Script("copy", steps=[
    S("CREATE TABLE cp (id int PRIMARY KEY, name text, data bytea)"),
    Step("COPY cp FROM STDIN", copy=True, copy_in=b"1\ttab\\there\t\\\\x00ff\n2\t\\N\t\\N\n3\t\xc3\xa9\t\\\\x\n"),
    Step("COPY cp TO STDOUT", copy=True),
    Step("COPY cp TO STDOUT (FORMAT csv, HEADER, FORCE_QUOTE *)", copy=True),
    Step("COPY (SELECT id, name, data, id::float8 / 3, NULL::int FROM cp ORDER BY id) TO STDOUT (FORMAT binary)",
         copy=True),
    Step("COPY cp FROM STDIN", copy=True, copy_in=COPY_ROWS),
    Step("COPY cp FROM STDIN", copy=True, copy_in=b"9\tx\t\\\\x00\nnot_an_int\ty\t\\\\x00\n", error="22P02"),
    Step("COPY cp FROM STDIN", copy=True, copy_in=b"1\tdup\t\\N\n", error="23505"),
    S("SELECT count(*), sum(id) FROM cp"),
    Step("COPY (SELECT g, repeat('z', g % 100) FROM generate_series(1, 50000) AS g) TO STDOUT", copy=True),
    Step("COPY (SELECT 1 WHERE false) TO STDOUT", copy=True),
    S("BEGIN"),
    Step("COPY cp FROM STDIN (FORMAT csv)", copy=True, copy_in=b'5000,"quoted, ""x""",\n'),
    Step("COPY no_such_table TO STDOUT", copy=True, error="42P01"),
    S("ROLLBACK"),
    Step("COPY (SELECT id FROM cp WHERE id = 5000) TO STDOUT", copy=True),
])

# -- edge-case results -----------------------------------------------------------------------

WIDE_SELECT = "SELECT " + ", ".join(
    (f"{i} AS c{i:04d}" if i % 3 == 0 else f"'v{i}' AS c{i:04d}" if i % 3 == 1 else f"NULL::int AS c{i:04d}")
    for i in range(1000))

EDGES = Script("edges", steps=[
    S(""),
    S(" "),
    S(";"),
    S("-- only a comment"),
    S("SELECT * FROM generate_series(1, 0)"),
    S("SELECT 1 AS a, 'x' AS b WHERE false"),
    S("SELECT"),
    S("SELECT FROM generate_series(1, 3)"),
    S('SELECT 1 AS " ", 2 AS "?column?", 3 AS "Ünï cödé 😀", 4 AS "a""b", 5 AS a, 6 AS a'),
    S(WIDE_SELECT),
    S("CREATE TABLE wide (" + ", ".join(f"c{i} int" for i in range(1000)) + ")"),
    S("INSERT INTO wide (c0, c500, c999) VALUES (1, 2, 3), (NULL, NULL, NULL)"),
    S("SELECT * FROM wide"),
    S("SELECT g, g * 2, 'r' || g FROM generate_series(1, 20000) AS g"),
])

PIPELINE = Script("pipeline", drivers=PSYCOPG, steps=[
    S("CREATE TABLE pl (id int PRIMARY KEY, v text)"),
    Step("INSERT INTO pl VALUES ($1, $2) RETURNING id, v", many=[(i, f"v{i}") for i in range(1, 21)]),
    Step("batch", pipeline=[("SELECT count(*) FROM pl", None), ("INSERT INTO pl VALUES ($1, 'x')", (100,)),
                            ("SELECT $1::text", ("😀",)), ("SELECT 1/0", None), ("SELECT 2", None)]),
    S("SELECT count(*) FROM pl"),
    Step("INSERT INTO pl VALUES ($1, $2)", many=[(200, "a"), (1, "dup"), (201, "b")], error="23505"),
    S("SELECT count(*) FROM pl"),
])

SCRIPTS = [TYPES, NULLS, LARGE, MULTI, ERRORS, TRANSACTIONS, DDL_DML, SETTINGS, NOTICES, CURSORS, PREPARED, COPY,
           EDGES, PIPELINE]


def _schema(request: pytest.FixtureRequest) -> str:
    h = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    base = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:30]
    return f"dx_{base}_{h}"


@pytest.mark.parametrize(
    ("script", "driver"),
    [pytest.param(s, d, id=f"{s.name}-{d}") for s in SCRIPTS for d in DRIVERS if d in s.drivers],
)
def test_script(script: Script, driver: str, pg: Any, proxy: Any, request: pytest.FixtureRequest) -> None:
    compare(script, driver, pg.dsn("postgres"), proxy.url("postgres"), _schema(request))


# -- the harness itself must be able to tell a difference ----------------------------------

def test_harness_detects_differences() -> None:
    """Sanity check of the comparison: the kinds of corruption a proxy could cause are all visible."""
    assert canon(float("nan")) == canon(float("nan"))
    assert canon(0.0) != canon(-0.0)
    assert canon(1) != canon(True) != canon(1.0)
    assert canon(decimal.Decimal("1.0")) != canon(decimal.Decimal("1.00"))
    assert canon(datetime.datetime(2020, 1, 1, tzinfo=UTC)) != canon(
        datetime.datetime(2020, 1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1))))
    base = [{"sql": "q", "results": [{"tag": "SELECT 1", "rows": [canon((b"\x00\x01",))]}], "error": None,
             "notices": [{"message_primary": "n"}], "tx": "IDLE", "params": {}}]
    variants = [
        ("results", [{"tag": "SELECT 2", "rows": [canon((b"\x00\x01",))]}]),
        ("results", [{"tag": "SELECT 1", "rows": [canon((b"\x00\x02",))]}]),
        ("results", [{"tag": "SELECT 1", "rows": []}]),
        ("error", {"sqlstate": "22012"}),
        ("notices", []),
        ("tx", "INERROR"),
    ]
    assert first_difference(base, [dict(base[0])]) is None
    for key, value in variants:
        other = [{**base[0], key: value}]
        diff = first_difference(base, other)
        assert diff is not None and "step 0" in diff and key in diff, (key, diff)


# -- ... and a real connection that corrupts the wire must fail `compare` ---------------------

#: (message type, body, ReadyForQuery messages seen so far) -> new body, or None to drop the message.
Mutation = Callable[[bytes, bytes, int], bytes | None]


class MutatingRelay:
    """A deliberately broken "proxy": relays to PostgreSQL and rewrites backend messages.

    Used to show that the differential comparison notices what a faulty proxy could do.
    SSL/GSS requests are refused, so the backend stream is plain frames after the start-up packet.
    """

    def __init__(self, host: str, port: int, mutate: Mutation) -> None:
        self.host, self.port, self.mutate = host, port, mutate
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        box: dict[str, Any] = {}

        async def serve() -> None:
            srv = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            box["server"] = srv
            box["port"] = srv.sockets[0].getsockname()[1]
            started.set()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(serve())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(10)
        self.server = box["server"]
        self.listen_port: int = box["port"]

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(self.host, self.port)
        try:
            while True:
                head = await cr.readexactly(4)
                body = await cr.readexactly(struct.unpack("!i", head)[0] - 4)
                if struct.unpack("!i", body[:4])[0] in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                    cw.write(b"N")
                    continue
                uw.write(head + body)
                break

            async def client_to_server() -> None:
                while data := await cr.read(65536):
                    uw.write(data)
                    await uw.drain()

            async def server_to_client() -> None:
                ready = 0
                while True:
                    head = await ur.readexactly(5)
                    body = await ur.readexactly(struct.unpack("!i", head[1:])[0] - 4)
                    t = head[:1]
                    new = self.mutate(t, body, ready)
                    if t == b"Z":
                        ready += 1
                    if new is not None:
                        cw.write(t + struct.pack("!i", len(new) + 4) + new)
                        await cw.drain()

            _, pending = await asyncio.wait([asyncio.ensure_future(client_to_server()),
                                                asyncio.ensure_future(server_to_client())],
                                               return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            uw.close()
            cw.close()

    def url(self, direct_url: str) -> str:
        parts = urlsplit(direct_url)
        auth = parts.netloc.rsplit("@", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{auth}@127.0.0.1:{self.listen_port}", query="sslmode=disable"))

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _flip_last_byte_of_datarows(t: bytes, body: bytes, ready: int) -> bytes | None:
    return body[:-1] + bytes([body[-1] ^ 0x01]) if t == b"D" and len(body) > 6 else body


def _drop_notices(t: bytes, body: bytes, ready: int) -> bytes | None:
    return None if t == b"N" else body


def _change_select_tag(t: bytes, body: bytes, ready: int) -> bytes | None:
    return body.replace(b"SELECT 1", b"SELECT 2") if t == b"C" else body


def _change_sqlstate(t: bytes, body: bytes, ready: int) -> bytes | None:
    return body.replace(b"C22012\x00", b"C22000\x00") if t == b"E" else body


def _drop_second_row(t: bytes, body: bytes, ready: int, seen: list[int] = [0]) -> bytes | None:  # noqa: B006
    if t == b"D":
        seen[0] += 1
        if seen[0] % 3 == 2:
            return None
    return body


def _drop_timezone_report(t: bytes, body: bytes, ready: int) -> bytes | None:
    return None if t == b"S" and body.startswith(b"TimeZone\x00") and ready > 0 else body


def _change_message_text(t: bytes, body: bytes, ready: int) -> bytes | None:
    return body.replace(b"Mdivision by zero", b"Mdivision by nil") if t == b"E" else body


MUTATIONS = {
    "corrupt-byte": _flip_last_byte_of_datarows,
    "drop-notice": _drop_notices,
    "change-tag": _change_select_tag,
    "change-sqlstate": _change_sqlstate,
    "drop-row": _drop_second_row,
    "drop-parameter-status": _drop_timezone_report,
    "change-error-message": _change_message_text,
}

CANARY = Script("canary", steps=[
    S("SELECT 'abc' AS t, $1::bytea AS b, 42 AS i", b"\x00\x01\xff"),
    S("SELECT g FROM generate_series(1, 6) AS g"),
    S("DO $$BEGIN RAISE NOTICE 'a notice'; END$$"),
    S("SET TimeZone = 'Asia/Tokyo'"),
    S("SELECT '2024-01-01 00:00+00'::timestamptz::text"),
    S("SELECT 1/0", error="22012"),
])


@pytest.fixture
def relay(pg: Any) -> Iterator[Callable[[Mutation], MutatingRelay]]:
    made: list[MutatingRelay] = []

    def make(mutate: Mutation) -> MutatingRelay:
        r = MutatingRelay(pg.host, pg.port, mutate)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def test_relay_without_mutation_passes(pg: Any, relay: Any, request: pytest.FixtureRequest) -> None:
    """The relay itself is transparent: only its mutations make the comparison fail."""
    r = relay(lambda t, body, ready: body)
    for driver in DRIVERS:
        compare(CANARY, driver, pg.dsn("postgres"), r.url(pg.dsn("postgres")), _schema(request), direct_role=None)


@pytest.mark.parametrize("driver", ["psycopg-text", "asyncpg"])
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_corruption_is_detected(mutation: str, driver: str, pg: Any, relay: Any,
                                request: pytest.FixtureRequest) -> None:
    r = relay(MUTATIONS[mutation])
    with pytest.raises(AssertionError, match="proxy transcript differs from direct"):
        compare(CANARY, driver, pg.dsn("postgres"), r.url(pg.dsn("postgres")), _schema(request), direct_role=None)


# -- property: random literal values through both paths --------------------------------------

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-(2**31), max_value=2**31),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0x300, max_codepoint=0x1FAFF), max_size=20),
    st.binary(max_size=64),
    st.decimals(allow_nan=True, allow_infinity=False, places=None).filter(lambda d: not d.is_snan()),
)


@pytest.fixture
def conn_pair(pg: Any, proxy: Any) -> Any:
    direct, dn = psycopg_connect(as_role(pg.dsn("postgres"), AGENTS_ROLE))
    proxied, pn = psycopg_connect(proxy.url("postgres"))
    try:
        yield (direct, dn), (proxied, pn)
    finally:
        direct.close()
        proxied.close()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(st.tuples(_values, st.sampled_from("tb")), max_size=12), binary=st.booleans())
def test_random_values(conn_pair: Any, data: list[tuple[Any, str]], binary: bool) -> None:
    """Values sent as parameters (text or binary format each) and selected back (text or binary
    results) give the same transcript directly and through the proxy."""
    (direct, dn), (proxied, pn) = conn_pair
    sql = "SELECT " + ", ".join(f"%{fmt}" for _, fmt in data) if data else "SELECT"
    step = Step(sql, [v for v, _ in data], pyformat=True, error=None)
    a = psycopg_step(direct, step, binary=binary, notices=dn)
    b = psycopg_step(proxied, step, binary=binary, notices=pn)
    diff = first_difference([a], [b])
    assert diff is None, diff
    # A step that failed must not leave either connection in a different state.
    assert direct.info.transaction_status == proxied.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

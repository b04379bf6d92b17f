"""The corpus of the inverse-SQL benchmark (issue 7): three realistic schemas and the agent transactions run on them.

Data only; `benchmarks/inverse_bench` runs it. Each `Schema` is plain SQL (DDL, then a deterministic seed); each
`Case` is one agent transaction (its statements, without BEGIN/COMMIT) on a freshly seeded copy of one schema,
labelled with the ground truth about the operation itself (not about what our tool does):

- "reversible": an exact inverse exists, given the before/after images of every row the transaction changed (row
  triggers see cascades, user-trigger side effects, CTE and function writes; the BEFORE TRUNCATE snapshot sees
  emptied tables), the catalog as it was before the transaction (so CREATE, ADD COLUMN, RENAME, SET DEFAULT,
  ADD/DROP CONSTRAINT, GRANT, COMMENT, DROP VIEW/INDEX/FUNCTION can be put back) and, since issue 18, the state
  kept before each DDL statement the agent sends: the rows of a dropped table (and of what CASCADE drops), the
  values of a dropped column, the old values of a column whose type changes, sequence positions. Sequence
  positions are not part of the state compared (PostgreSQL never rolls back `nextval`), so a case whose only other
  effect is an advanced sequence counts as reversible.
- "irreversible": information is destroyed that no captured state can restore: the old contents of a refreshed
  or dropped materialized view that no longer match its query (PostgreSQL can only recompute a materialized view,
  never write rows into it, so a DROP or rebuild that takes such a view with it loses them too), and DDL run
  through EXECUTE inside a function or DO block, whose target no one is told before it runs. The 49 cases
  relabelled reversible by issue 18 say so, and why, in their `why`.

Judgement calls, so that the labels can be checked: `UPDATE ... SET id = DEFAULT` on an identity ALWAYS column is
reversible (a plain UPDATE cannot set the old id back, but the before-image has it, and deleting the row and
inserting the image with OVERRIDING SYSTEM VALUE is exact when nothing references the row). The labels are about
the seeded data: an ALTER COLUMN TYPE that loses nothing for the values present (every `history.h_date` is at
midnight; every other `c_data` is under 100 characters; numeric(5,2) through real) is reversible, and so is a lossy
one whose rows were all captured by an earlier UPDATE of the same transaction (`*.touch_all_then_*`), or a DROP TABLE
of a table that is empty or whose rows the transaction deleted first. A materialized view's contents count as data.
A transaction that only changes rows is always reversible; every irreversible case runs DDL.

`select(pattern)` picks cases by fnmatch on the name ("saas.*", "*.truncate_*") or the category ("merge").
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

Expected = Literal["reversible", "irreversible"]


@dataclass(frozen=True)
class Schema:
    name: str  # "ecommerce" | "saas" | "tpcc"
    ddl: str  # CREATE statements (types, tables, functions, triggers, views, indexes); several statements
    seed: str  # deterministic INSERTs (generate_series, no random())
    description: str


@dataclass(frozen=True)
class Case:
    name: str  # unique, "<schema>.<short_snake_name>"
    schema: str  # key into SCHEMAS
    category: str  # one of CATEGORIES
    forward: tuple[str, ...]  # the agent transaction's statements, in order (no BEGIN/COMMIT)
    expected: Expected
    why: str  # one sentence: why it is (ir)reversible
    setup: tuple[str, ...] = ()  # statements run (committed, not captured) after ddl+seed, before the case


CATEGORIES: tuple[str, ...] = (
    "single_row_dml",  # one INSERT / UPDATE / DELETE of one row
    "multi_row_dml",  # set-based DML: UPDATE ... FROM, DELETE ... USING, INSERT ... SELECT
    "no_primary_key",  # tables without a key, duplicate rows
    "fk_cascade",  # ON DELETE CASCADE / SET NULL, ON UPDATE CASCADE
    "trigger_side_effects",  # user triggers writing audit rows, counters, derived totals
    "upsert",  # INSERT ... ON CONFLICT DO UPDATE / DO NOTHING
    "identity_always",  # GENERATED ALWAYS AS IDENTITY columns, OVERRIDING SYSTEM VALUE, SET id = DEFAULT
    "generated_column",  # GENERATED ALWAYS AS (...) STORED
    "toast",  # values over 8 kB stored out of line
    "truncate",  # TRUNCATE, TRUNCATE ... CASCADE, RESTART IDENTITY
    "ddl_create",  # CREATE TABLE / INDEX / VIEW / SEQUENCE / TYPE, ADD COLUMN, RENAME
    "drop_dependants",  # DROP TABLE / COLUMN / VIEW / TYPE / SCHEMA with dependants (CASCADE)
    "alter_type",  # ALTER COLUMN ... TYPE, lossy and lossless
    "functions",  # CREATE OR REPLACE FUNCTION, DML through SELECT f(...), DO blocks, writable CTEs
    "grants",  # GRANT / REVOKE, ALTER DEFAULT PRIVILEGES
    "constraints_defaults",  # ADD/DROP CONSTRAINT, SET DEFAULT, SET/DROP NOT NULL, COMMENT ON
    "mixed",  # DML and DDL in one transaction
    "merge",  # MERGE (PostgreSQL 15+)
    "sequences",  # nextval, setval, ALTER SEQUENCE, serial defaults
    "jsonb_array",  # jsonb operators and functions, text[] updates
)

# The per-schema modules import Schema and Case from this (partly initialised) package: define them first.
from . import (  # noqa: E402
    cases_ecommerce,
    cases_saas,
    cases_tpcc,
    ecommerce,
    saas,
    tpcc,
)

SCHEMAS: dict[str, Schema] = {s.name: s for s in (ecommerce.SCHEMA, saas.SCHEMA, tpcc.SCHEMA)}
CASES: tuple[Case, ...] = (*cases_ecommerce.CASES, *cases_saas.CASES, *cases_tpcc.CASES)


def select(pattern: str | None) -> list[Case]:
    """The cases whose name or category matches `pattern` (fnmatch); all of them for None."""
    if pattern is None:
        return list(CASES)
    return [c for c in CASES if fnmatch.fnmatchcase(c.name, pattern) or fnmatch.fnmatchcase(c.category, pattern)]


__all__ = ["CASES", "CATEGORIES", "SCHEMAS", "Case", "Expected", "Schema", "select"]

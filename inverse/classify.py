"""Classify the SQL statements an agent sends, conservatively.

The proxy's policy asks one question per statement: may this pass untouched, or must it be held,
captured, refused or shown to a person? This module answers from the statement text alone:

- `split_statements` cuts a simple-query string into statements the way PostgreSQL (and psql) do,
  with a small hand-written scanner that follows PostgreSQL's lexer (quotes, E'' strings, dollar
  quotes, nested comments, parentheses, `BEGIN ATOMIC ... END` bodies).
- `classify` gives each statement a `Kind`, a `read_only` bit that is True only when the statement
  is positively known not to write, the transaction-control action (`tx`), an `escape` reason when
  the statement could escape or bypass a held transaction, a `non_transactional` reason when
  PostgreSQL refuses to run it inside a transaction block, and the tables it writes to.

Method: our own PostgreSQL-faithful tokens decide everything that matters for safety (leading
keywords, every `name(` call, every operator, DML keywords anywhere); sqlglot
(`parse_one(..., read="postgres")`) adds structure for queries and DML (set operations, locking
clauses, SELECT INTO, data-modifying CTEs, target tables). A statement is read-only only when
both agree. Where sqlglot cannot parse (ParseError, or its generic `exp.Command` fallback) we fall
back to the leading keywords and never to read_only=True.

Kinds:
- READ: queries (SELECT/VALUES/TABLE/WITH, SHOW, EXPLAIN, cursors, COPY ... TO STDOUT).
- WRITE: INSERT/UPDATE/DELETE/MERGE, COPY FROM, TRUNCATE (a data change for the capture plan, and
  transactional in PostgreSQL), REFRESH MATERIALIZED VIEW, and statements that lock rows or tables
  (SELECT ... FOR UPDATE/SHARE physically marks rows and takes a transaction id; LOCK). Also SELECTs
  whose only non-read-only calls are known side-effect built-ins (nextval, set_config, ...).
- DDL: schema, privilege and maintenance commands (CREATE/ALTER/DROP, COMMENT, GRANT, VACUUM,
  ANALYZE, CLUSTER, REINDEX, CHECKPOINT, ...), and SELECT ... INTO (it creates a table).
- TRANSACTION: BEGIN/COMMIT/ROLLBACK/SAVEPOINT/... (`tx` says which). Never read_only: the policy
  must act on `tx` (a COMMIT is exactly what the proxy intercepts).
- SESSION: SET/RESET/DISCARD/LISTEN/UNLISTEN/NOTIFY/PREPARE/EXECUTE/DEALLOCATE/LOAD.
- UNKNOWN: anything we cannot parse or recognise, and statements that run user code we cannot see
  (CALL, DO, SELECT my_function()).

Known limits (the proxy should cross-check with the server: an assigned transaction id after a
"read-only" statement means it wrote, see README, design decision 4):
- Only the statement text is seen. A SELECT from a view, a user-defined operator or cast spelled
  like a built-in one, attribute notation (`t.f` calling `f(t)`), row-level security policies and
  plan-time folding of IMMUTABLE user functions can run user code that writes.
- The allow-list assumes built-in function names resolve to `pg_catalog`, which PostgreSQL searches
  first unless `search_path` names it later; such a `search_path` is reported as an escape.
- Strings are lexed with `standard_conforming_strings = on` (the default since 9.1); turning it off
  would change where statements end, so doing that is reported as an escape too.
- `tables` lists the tables named as write targets; triggers, rules, cascades and foreign tables
  are not seen (a foreign table's writes go to another server: the policy must check relkind).
- FETCH/MOVE/CLOSE are read-only by themselves: the cursor's query was judged at its DECLARE (or
  at Parse, for a protocol-level portal), which the policy must have seen first.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from inverse.lexer import WHITESPACE, Lexed, Tok, fold_identifier, lex, split_statements, statement_spans

__all__ = [
    "Classification",
    "Kind",
    "TxControl",
    "classify",
    "classify_script",
    "split_statements",
]

# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------


class Kind(enum.Enum):
    READ = "read"
    WRITE = "write"
    DDL = "ddl"
    TRANSACTION = "transaction"
    SESSION = "session"
    UNKNOWN = "unknown"


TxAction = Literal[
    "begin", "commit", "rollback", "savepoint", "release", "rollback_to", "prepare", "commit_prepared",
    "rollback_prepared",
]


@dataclass(frozen=True)
class TxControl:
    action: TxAction
    chain: bool = False  # COMMIT/ROLLBACK AND CHAIN
    name: str | None = None  # savepoint name or prepared transaction id


@dataclass(frozen=True)
class Classification:
    sql: str
    kind: Kind
    read_only: bool  # True only when positively known not to write
    tx: TxControl | None  # for transaction control, else None
    escape: str | None  # why it could escape or bypass a held transaction, else None
    non_transactional: str | None  # why it cannot run inside a transaction block, else None
    tables: frozenset[str]  # tables it writes to, as written (lowercased unless quoted); empty if unknown


# --------------------------------------------------------------------------------------------
# Knowledge: read-only built-ins, side effects, escapes
# --------------------------------------------------------------------------------------------

# Built-in functions known not to write (PostgreSQL 16, pg_catalog). Volatile is fine as long as
# nothing outside the statement's result changes (random(), clock_timestamp(), pg_sleep()).
_READ_ONLY_FUNCTIONS = frozenset("""
count sum avg min max array_agg string_agg bool_and bool_or every bit_and bit_or bit_xor json_agg jsonb_agg
json_object_agg jsonb_object_agg json_object_agg_strict json_object_agg_unique jsonb_object_agg_strict
jsonb_object_agg_unique xmlagg stddev stddev_pop stddev_samp variance var_pop var_samp corr covar_pop covar_samp
regr_avgx regr_avgy regr_count regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy percentile_cont
percentile_disc mode rank dense_rank percent_rank cume_dist row_number ntile lag lead first_value last_value
nth_value range_agg range_intersect_agg any_value grouping
abs cbrt ceil ceiling degrees div exp floor gcd lcm ln log log10 min_scale mod pi power pow radians round scale
sign sqrt trim_scale trunc width_bucket random acos acosd asin asind atan atand atan2 atan2d cos cosd cot cotd sin
sind tan tand sinh cosh tanh asinh acosh atanh
ascii bit_length btrim char_length character_length chr concat concat_ws format initcap left length lower lpad
ltrim md5 normalize octet_length overlay parse_ident position quote_ident quote_literal quote_nullable
regexp_count regexp_instr regexp_like regexp_match regexp_matches regexp_replace regexp_split_to_array
regexp_split_to_table regexp_substr repeat replace reverse right rpad rtrim split_part starts_with
string_to_array string_to_table strpos substr substring to_ascii to_hex translate trim unistr upper encode decode
convert convert_from convert_to sha224 sha256 sha384 sha512 get_bit get_byte set_bit set_byte bit_count
age clock_timestamp current_date current_time current_timestamp date_bin date_part date_trunc extract isfinite
justify_days justify_hours justify_interval localtime localtimestamp make_date make_interval make_time
make_timestamp make_timestamptz now statement_timestamp timeofday transaction_timestamp to_timestamp to_char
to_date to_number timezone pg_sleep
json_build_object jsonb_build_object json_build_array jsonb_build_array json_object jsonb_object to_json to_jsonb
array_to_json row_to_json json_array_length jsonb_array_length json_each jsonb_each json_each_text
jsonb_each_text json_extract_path jsonb_extract_path json_extract_path_text jsonb_extract_path_text
json_object_keys jsonb_object_keys json_populate_record jsonb_populate_record json_populate_recordset
jsonb_populate_recordset json_to_record jsonb_to_record json_to_recordset jsonb_to_recordset json_array_elements
jsonb_array_elements json_array_elements_text jsonb_array_elements_text json_typeof jsonb_typeof
json_strip_nulls jsonb_strip_nulls jsonb_set jsonb_set_lax jsonb_insert jsonb_pretty jsonb_path_exists
jsonb_path_match jsonb_path_query jsonb_path_query_array jsonb_path_query_first jsonb_path_exists_tz
jsonb_path_match_tz jsonb_path_query_tz jsonb_path_query_array_tz jsonb_path_query_first_tz json_array
json_arrayagg json_objectagg json_scalar json_serialize
array_append array_cat array_dims array_fill array_length array_lower array_ndims array_position
array_positions array_prepend array_remove array_replace array_sample array_shuffle array_to_string array_upper
cardinality trim_array unnest generate_subscripts generate_series
coalesce nullif greatest least num_nulls num_nonnulls
current_database current_catalog current_schema current_schemas current_user current_role session_user
system_user user current_setting current_query version pg_backend_pid inet_client_addr inet_client_port
inet_server_addr inet_server_port pg_postmaster_start_time pg_conf_load_time pg_is_in_recovery pg_jit_available
pg_listening_channels pg_trigger_depth pg_my_temp_schema pg_is_other_temp_schema pg_typeof pg_column_size
pg_column_compression pg_database_size pg_relation_size pg_total_relation_size pg_table_size pg_indexes_size
pg_size_pretty pg_size_bytes pg_get_viewdef pg_get_indexdef pg_get_constraintdef pg_get_functiondef
pg_get_function_arguments pg_get_function_identity_arguments pg_get_function_result pg_get_triggerdef
pg_get_ruledef pg_get_expr pg_get_serial_sequence pg_get_userbyid pg_get_statisticsobjdef pg_get_partkeydef
pg_get_keywords pg_table_is_visible pg_type_is_visible pg_function_is_visible pg_encoding_to_char
pg_char_to_encoding pg_client_encoding obj_description col_description shobj_description format_type
has_table_privilege has_column_privilege has_any_column_privilege has_schema_privilege has_database_privilege
has_function_privilege has_sequence_privilege has_foreign_data_wrapper_privilege has_language_privilege
has_server_privilege has_tablespace_privilege has_type_privilege has_parameter_privilege pg_has_role
row_security_active to_regclass to_regtype to_regproc to_regprocedure to_regoper to_regoperator
to_regnamespace to_regrole to_regcollation txid_current_if_assigned txid_current_snapshot pg_current_snapshot
txid_snapshot_xmin txid_snapshot_xmax txid_snapshot_xip txid_visible_in_snapshot pg_snapshot_xmin
pg_snapshot_xmax pg_snapshot_xip pg_visible_in_snapshot pg_current_xact_id_if_assigned pg_xact_status
txid_status currval lastval gen_random_uuid
int4range int8range numrange tsrange tstzrange daterange int4multirange int8multirange nummultirange
tsmultirange tstzmultirange datemultirange isempty lower_inc upper_inc lower_inf upper_inf range_merge multirange
to_tsvector to_tsquery plainto_tsquery phraseto_tsquery websearch_to_tsquery ts_rank ts_rank_cd ts_headline
setweight strip numnode querytree array_to_tsvector tsvector_to_array ts_delete ts_filter
host hostmask masklen netmask network set_masklen abbrev broadcast family inet_merge inet_same_family
xmlelement xmlattributes xmlforest xmlconcat xmlparse xmlpi xmlroot xmlserialize xmlexists xmltable xpath
xpath_exists xmlcomment xml_is_well_formed
point line lseg box path polygon circle area center diameter height width radius npoints isclosed isopen
int int2 int4 int8 integer smallint bigint numeric decimal dec float float4 float8 real text varchar char
character varying bpchar bool boolean date time timestamp timestamptz timetz interval bit varbit json jsonb uuid
bytea inet cidr macaddr macaddr8 name oid regclass regtype regproc regnamespace regrole money xml tsvector tsquery
""".split())

# Special syntax that looks like a call but is not one, by the word before the parenthesis.
# PostgreSQL reserved words (they cannot name a function unless quoted) and col_name keywords
# whose parenthesised form is built-in syntax (all read-only).
_RESERVED_WORDS = frozenset("""
all analyse analyze and any array as asc asymmetric both case cast check collate column constraint create
current_catalog current_date current_role current_time current_timestamp current_user default deferrable desc
distinct do else end except false fetch for foreign from grant group having in initially intersect into lateral
leading limit localtime localtimestamp not null offset on only or order placing primary references returning
select session_user some symmetric system_user table then to trailing true union unique user using variadic
when where window with
between bigint bit boolean char character coalesce dec decimal exists extract float greatest grouping inout int
integer interval json_array json_arrayagg json_object json_objectagg least national nchar none normalize nullif
numeric out overlay position precision real row setof smallint substring time timestamp treat trim values varchar
xmlattributes xmlconcat xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot xmlserialize xmltable
""".split())
# type_func_name keywords: syntax when used infix after an operand (`a LIKE (..)`, `t JOIN (..)`).
_INFIX_WORDS = frozenset("""
ilike is isnull join like notnull overlaps similar
""".split())
_JOIN_MODIFIERS = frozenset("left right full inner outer cross natural".split())
# Unreserved words that are syntax only right after a given token.
_CONTEXT_WORDS: dict[str, frozenset[str]] = {
    "over": frozenset({")"}),
    "filter": frozenset({")"}),
    "repeatable": frozenset({")"}),
    "sets": frozenset({"grouping"}),
    "materialized": frozenset({"as", "not"}),
    "first": frozenset({"fetch"}),
    "next": frozenset({"fetch"}),
    "rollup": frozenset({"by"}),
    "cube": frozenset({"by"}),
    "system": frozenset({"tablesample"}),
    "bernoulli": frozenset({"tablesample"}),
    "varying": frozenset({"character", "bit"}),
}
# Built-in operator spellings (built-in types). A user operator spelled otherwise may run user code.
_READ_ONLY_OPERATORS = frozenset("""
+ - * / % ^ = <> != < > <= >= || |/ ||/ @ & | # ~ << >> ~~ ~~* !~~ !~~* ~* !~ !~* ?| ?& ? -> ->> #> #>> #-
@> <@ && @@ @@@ <-> <<| |>> &< &> &<| |&> <<= >>= -|- ## @-@ ?- ?-| ?|| <^ >^ ~= <% %> @? ^@ => !! ~<~ ~<=~ ~>=~
~>~ <=> !=
""".split())

# Built-ins with effects (so a SELECT calling only these is a WRITE rather than UNKNOWN).
_SIDE_EFFECT_FUNCTIONS = frozenset("""
nextval setval set_config pg_notify txid_current pg_current_xact_id pg_terminate_backend pg_cancel_backend
pg_reload_conf pg_rotate_logfile pg_switch_wal pg_promote pg_create_restore_point pg_export_snapshot
pg_logical_emit_message pg_create_physical_replication_slot pg_create_logical_replication_slot
pg_drop_replication_slot pg_copy_physical_replication_slot pg_copy_logical_replication_slot
pg_replication_slot_advance pg_logical_slot_get_changes pg_logical_slot_get_binary_changes
pg_wal_replay_pause pg_wal_replay_resume pg_backup_start pg_backup_stop pg_import_system_collations
""".split())
_SIDE_EFFECT_PREFIXES = ("lo_", "dblink", "pg_advisory", "pg_try_advisory", "pg_stat_reset", "pg_file_",
                         "pg_ls_", "pg_read_", "pg_replication_origin_")

_FILE_ACCESS = "reads or writes files on the database server, outside any transaction"
_REMOTE = "opens another database connection whose work escapes the held transaction"
_ADMIN = "acts on the server or other sessions immediately, which no transaction can hold back"
_ESCAPE_FUNCTIONS: dict[str, str] = {
    **dict.fromkeys("""lo_import lo_export pg_read_file pg_read_binary_file pg_ls_dir pg_stat_file pg_ls_logdir
        pg_ls_waldir pg_ls_tmpdir pg_ls_archive_statusdir pg_ls_logicalsnapdir pg_ls_logicalmapdir
        pg_ls_replslotdir pg_file_write pg_file_rename pg_file_unlink pg_file_sync pg_logdir_ls""".split(),
                    _FILE_ACCESS),
    **dict.fromkeys("""pg_terminate_backend pg_cancel_backend pg_reload_conf pg_rotate_logfile pg_switch_wal
        pg_promote pg_create_restore_point pg_create_physical_replication_slot pg_create_logical_replication_slot
        pg_drop_replication_slot pg_copy_physical_replication_slot pg_copy_logical_replication_slot
        pg_replication_slot_advance pg_logical_slot_get_changes pg_logical_slot_get_binary_changes
        pg_wal_replay_pause pg_wal_replay_resume pg_backup_start pg_backup_stop""".split(), _ADMIN),
}
# Names that anywhere in a statement (as identifiers) mean remote connections or file access.
_ESCAPE_WORD_PREFIXES = {"dblink": _REMOTE, "postgres_fdw": _REMOTE, "file_fdw": _FILE_ACCESS,
                         "adminpack": _FILE_ACCESS}

_TRUE_WORDS = frozenset({"on", "true", "yes", "1", "t", "y"})
_FALSE_WORDS = frozenset({"off", "false", "no", "0", "f", "n"})


def _guc_escape(name: str, values: Sequence[str] | None, *, resetting: bool = False) -> str | None:
    """Escape reason for setting GUC `name` (values: literal items, None when computed)."""
    name = name.lower()
    if name in ("role", "session_authorization"):
        return f"changes the session's identity ({name}), so the agent would act with other privileges"
    if name == "session_replication_role":
        return "session_replication_role can disable triggers, including the proxy's capture triggers"
    if name.startswith("dbproxy."):
        return f"{name} belongs to the proxy (it switches the capture that makes agent writes undoable)"
    if resetting:
        return None  # back to the session default: the other settings below are then harmless
    if name == "standard_conforming_strings":
        if values is None or len(values) != 1 or values[0].lower() not in _TRUE_WORDS | {"default"}:
            return "turning standard_conforming_strings off changes how statements are split and classified"
    if name == "client_encoding":
        norm = [v.lower().replace("-", "").replace("_", "") for v in values or []]
        if values is None or norm not in (["utf8"], ["unicode"], ["default"]):
            return "a client encoding other than UTF-8 changes how the proxy must read statement text"
    if name == "search_path":
        if values is None:
            return "sets search_path to a computed value, which may shadow built-in functions"
        schemas = [v.strip().strip('"').lower() for item in values for v in item.split(",") if v.strip()]
        if "pg_catalog" in schemas and schemas.index("pg_catalog") > 0:
            return "puts a schema before pg_catalog in search_path, so built-in names may call user functions"
    return None


# --------------------------------------------------------------------------------------------
# Classification machinery
# --------------------------------------------------------------------------------------------


@dataclass
class _Draft:
    kind: Kind
    read_only: bool = False
    tx: TxControl | None = None
    escapes: list[str] = field(default_factory=list)
    non_transactional: str | None = None
    tables: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Call:
    schema: str | None
    name: str
    index: int  # index of the '(' token


class _Stmt:
    """One statement's tokens with small helpers for keyword-by-keyword parsing."""

    def __init__(self, text: str, lexed: Lexed) -> None:
        self.text = text
        self.toks = lexed.tokens
        self.error = lexed.error
        self.comments = lexed.comments

    def word(self, i: int) -> str:
        """Lowercased keyword at i, or '' when it is not an unquoted word."""
        return self.toks[i].value if 0 <= i < len(self.toks) and self.toks[i].kind == "word" else ""

    def words(self, i: int, n: int) -> list[str]:
        return [self.word(j) for j in range(i, i + n)]

    def is_punct(self, i: int, text: str) -> bool:
        return 0 <= i < len(self.toks) and self.toks[i].kind == "punct" and self.toks[i].text == text

    def rest(self, i: int) -> str:
        """Exact source text from token i to the end."""
        return self.text[self.toks[i].start:] if i < len(self.toks) else ""

    def matching(self, i: int) -> int:
        """Index of the ')' matching the '(' at i (len(toks) if unbalanced)."""
        level = 0
        for j in range(i, len(self.toks)):
            if self.is_punct(j, "("):
                level += 1
            elif self.is_punct(j, ")"):
                level -= 1
                if level == 0:
                    return j
        return len(self.toks)

    def name_at(self, i: int) -> tuple[str | None, int]:
        """A possibly qualified name at i: (normalized name, index after it), or (None, i)."""
        parts: list[str] = []
        j = i
        while j < len(self.toks) and self.toks[j].kind in ("word", "ident"):
            parts.append(_ident_part(self.toks[j]))
            if self.is_punct(j + 1, ".") and j + 2 < len(self.toks) and self.toks[j + 2].kind in ("word", "ident"):
                j += 2
                continue
            j += 1
            break
        return (".".join(parts) if parts else None), j

    def simple_from(self, i: int) -> bool:
        """Whether tokens from i are only names, numbers, '.', ',' and +/-/* (no calls, strings, parentheses).

        The shape of SHOW/FETCH/LISTEN/...: anything else there is not a statement we know.
        """
        return all(
            t.kind in ("word", "ident", "number")
            or (t.kind == "op" and t.text in ("+", "-", "*"))
            or (t.kind == "punct" and t.text in (".", ","))
            for t in self.toks[i:]
        )

    def skip_words(self, i: int, *words: str) -> int:
        while self.word(i) in words and self.word(i):
            i += 1
        return i

    def skip_if_exists(self, i: int) -> int:
        if self.words(i, 2) == ["if", "exists"]:
            return i + 2
        if self.words(i, 3) == ["if", "not", "exists"]:
            return i + 3
        return i


def _ident_part(tok: Tok) -> str:
    """One name part the way PostgreSQL stores it; quoted when that is needed to stay unambiguous."""
    value = tok.value
    if "." in value or '"' in value:
        return '"' + value.replace('"', '""') + '"'
    return value


def _sqlglot_name(table: exp.Table) -> str | None:
    parts: list[str] = []
    for ident in table.parts:
        if not isinstance(ident, exp.Identifier):
            return None
        value = ident.this if ident.quoted else fold_identifier(ident.this)
        parts.append('"' + value.replace('"', '""') + '"' if ("." in value or '"' in value) else value)
    return ".".join(parts) or None


def _normalized_for_sqlglot(st: _Stmt) -> str:
    """The statement with comments blanked and dollar quotes turned into standard strings.

    sqlglot's tokenizer differs from PostgreSQL's on exactly those, so it sees what PostgreSQL sees.
    """
    pieces: list[str] = []
    pos = 0
    spans = [(s, e, " ") for s, e in st.comments]
    spans += [(t.start, t.end, "'" + t.value.replace("'", "''") + "'") for t in st.toks
              if t.kind == "string" and t.flavor == "dollar"]
    for s, e, repl in sorted(spans):
        if s < pos:
            continue
        pieces.append(st.text[pos:s])
        pieces.append(repl)
        pos = e
    pieces.append(st.text[pos:])
    return "".join(pieces)


def _ends_operand(prev: Tok | None) -> bool:
    """Whether `prev` can end an operand, so that an infix keyword after it is syntax, not a call."""
    if prev is None:
        return False
    if prev.kind in ("ident", "number", "string", "param"):
        return True
    if prev.kind == "punct":
        return prev.text in (")", "]")
    return prev.kind == "word" and (prev.value not in _RESERVED_WORDS or prev.value == "not")


def _calls(st: _Stmt) -> list[_Call]:
    """Every `name(` that PostgreSQL would read as a function call (conservatively: when unsure, a call)."""
    toks = st.toks
    calls: list[_Call] = []
    for i in range(1, len(toks)):
        if not st.is_punct(i, "("):
            continue
        name_tok = toks[i - 1]
        if name_tok.kind not in ("word", "ident"):
            continue
        schema: str | None = None
        first = i - 1
        if st.is_punct(i - 2, ".") and i >= 3 and toks[i - 3].kind in ("word", "ident"):
            schema = toks[i - 3].value
            first = i - 3
        prev = toks[first - 1] if first >= 1 else None
        prev_text = prev.value if prev and prev.kind == "word" else (prev.text if prev else "")
        if prev_text in ("as", "::"):
            continue  # column alias list, or a type modifier after CAST(... AS / ::
        if schema is None and prev is not None and prev.kind == "punct" and prev.text in (")", "]") and not (
            name_tok.kind == "word" and name_tok.value in _CONTEXT_WORDS
        ):
            continue  # `(subquery) alias(cols)`: nothing can call a function right after a ')'

        if name_tok.kind == "word" and schema is None:
            w = name_tok.value
            if w in _RESERVED_WORDS:
                continue
            if w in _INFIX_WORDS and (_ends_operand(prev) or (w == "join" and prev_text in _JOIN_MODIFIERS)):
                continue
            if w in _CONTEXT_WORDS and prev_text in _CONTEXT_WORDS[w]:
                continue
        # `name (cols) AS (` / AS [NOT] MATERIALIZED: a CTE's column list.
        close = st.matching(i)
        after = st.word(close + 2)
        if st.word(close + 1) == "as" and (st.is_punct(close + 2, "(") or after in ("materialized", "not")):
            continue
        calls.append(_Call(schema, name_tok.value, i))
    return calls


def _call_allowed(call: _Call) -> bool:
    if call.schema is not None and call.schema != "pg_catalog":
        return False
    return call.name in _READ_ONLY_FUNCTIONS


def _is_side_effect(name: str) -> bool:
    return name in _SIDE_EFFECT_FUNCTIONS or name in _ESCAPE_FUNCTIONS or name.startswith(_SIDE_EFFECT_PREFIXES)


def _first_arg(st: _Stmt, paren: int) -> tuple[list[Tok], list[Tok] | None]:
    """Tokens of the first and second arguments of the call whose '(' is at `paren`."""
    close = st.matching(paren)
    args: list[list[Tok]] = [[]]
    for j in range(paren + 1, close):
        t = st.toks[j]
        if t.kind == "punct" and t.text == "," and t.depth == st.toks[paren].depth + 1:
            args.append([])
        else:
            args[-1].append(t)
    return args[0], (args[1] if len(args) > 1 else None)


def _literal(tokens: list[Tok]) -> str | None:
    """The value of an argument that is exactly one string literal without escapes, else None."""
    if len(tokens) == 1 and tokens[0].kind == "string" and not (tokens[0].flavor == "e" and "\\" in tokens[0].text):
        return tokens[0].value
    return None


def _scan_escapes(st: _Stmt, calls: Iterable[_Call]) -> list[str]:
    """Escape reasons visible anywhere in the statement: dangerous calls and names."""
    reasons: list[str] = []
    for call in calls:
        name = call.name.lower()
        if name in _ESCAPE_FUNCTIONS:
            reasons.append(f"{name}() {_ESCAPE_FUNCTIONS[name]}")
        if name == "set_config":
            first, second = _first_arg(st, call.index)
            guc = _literal(first)
            if guc is None:
                reasons.append("set_config() with a computed setting name could change role or replication role")
            else:
                value = _literal(second) if second is not None else None
                why = _guc_escape(guc, None if value is None else [value])
                if why:
                    reasons.append(f"set_config('{guc.lower()}'): {why}")
    # The names alone (CREATE EXTENSION dblink, FOREIGN DATA WRAPPER postgres_fdw, dblink_exec(...)).
    for tok in st.toks:
        if tok.kind in ("word", "ident"):
            v = tok.value.lower()
            for prefix, why in _ESCAPE_WORD_PREFIXES.items():
                if v.startswith(prefix):
                    reasons.append(f"uses {prefix}, which {why}")
    return reasons


# Built-in type names: a cast to anything else (a domain with a CHECK calling a user function, a
# type with user-defined casts) may run user code.
_BUILTIN_TYPES = frozenset("""
int int2 int4 int8 integer smallint bigint numeric decimal dec float float4 float8 real double text varchar char
character bpchar name bool boolean date time timestamp timestamptz timetz interval bit varbit json jsonb jsonpath
uuid bytea inet cidr macaddr macaddr8 oid xid xid8 cid tid regclass regtype regproc regprocedure regoper
regoperator regnamespace regrole regconfig regdictionary regcollation money xml tsvector tsquery point line lseg
box path polygon circle int4range int8range numrange tsrange tstzrange daterange int4multirange int8multirange
nummultirange tsmultirange tstzmultirange datemultirange pg_lsn pg_snapshot txid_snapshot unknown record
""".split())


def _user_types(st: _Stmt) -> list[str]:
    """Type names in `::type` and CAST/TREAT(... AS type) that are not built-in."""
    found: list[str] = []
    for i, t in enumerate(st.toks):
        start: int | None = None
        if t.kind == "punct" and t.text == "::":
            start = i + 1
        elif t.kind == "word" and t.value == "as" and t.depth > 0:
            for j in range(i - 1, -1, -1):
                if st.is_punct(j, "(") and st.toks[j].depth == t.depth - 1:
                    if st.word(j - 1) in ("cast", "treat"):
                        start = i + 1
                    break
        if start is None:
            continue
        name, after = st.name_at(start)
        if name is None:
            found.append("?")
        elif after - start > 1:  # qualified
            if not (st.toks[start].value == "pg_catalog" and st.toks[after - 1].value in _BUILTIN_TYPES):
                found.append(name)
        elif st.toks[start].value not in _BUILTIN_TYPES:
            found.append(name)
    return found


def _bad_operators(st: _Stmt) -> list[str]:
    return [t.text for t in st.toks if t.kind == "op" and t.text not in _READ_ONLY_OPERATORS]


# --------------------------------------------------------------------------------------------
# Statement families
# --------------------------------------------------------------------------------------------

_QUERY_VERBS = frozenset({"select", "values", "table", "insert", "update", "delete", "merge"})


def _main_verb(st: _Stmt) -> str:
    """The statement's verb, looking past WITH clauses and leading parentheses."""
    first = st.word(0)
    if first == "with" or st.is_punct(0, "("):
        for t in st.toks:
            if t.kind == "word" and t.value in _QUERY_VERBS and (t.depth == 0 or first != "with"):
                return t.value
        return ""
    return first


def _dml_targets_lexical(st: _Stmt) -> tuple[set[str], bool]:
    """Tables written by INSERT/UPDATE/DELETE/MERGE anywhere in the tokens; and whether any DML is present."""
    tables: set[str] = set()
    found = False
    for i, t in enumerate(st.toks):
        if t.kind != "word":
            continue
        w = t.value
        j: int | None = None
        if w in ("insert", "merge"):
            found = True
            if st.word(i + 1) == "into":
                j = i + 2
        elif w == "delete":
            if st.word(i - 1) == "then":  # MERGE ... THEN DELETE
                continue
            found = True
            if st.word(i + 1) == "from":
                j = i + 2
        elif w == "update":
            if st.word(i - 1) in ("for", "key", "then", "do"):  # FOR [NO KEY] UPDATE, MERGE/ON CONFLICT
                continue
            found = True
            j = i + 1
        if j is not None:
            j = st.skip_words(j, "only")
            if st.word(j) not in _RESERVED_WORDS:
                name, _ = st.name_at(j)
                if name and name != "set":
                    tables.add(name)
    return tables, found


def _locks_rows(st: _Stmt) -> bool:
    for i, t in enumerate(st.toks):
        if t.kind == "word" and t.value == "for" and st.word(i + 1) in ("update", "share", "no", "key"):
            return True
    return False


@dataclass
class _GlotFacts:
    is_query: bool
    dml_tables: set[str]
    has_dml: bool
    into: bool
    locks: bool
    anonymous: set[str]


def _glot(st: _Stmt) -> _GlotFacts | None:
    try:
        tree = sqlglot.parse_one(_normalized_for_sqlglot(st), read="postgres")
    except SqlglotError:
        return None
    except Exception:  # a crash inside sqlglot must not take the proxy down: "cannot tell" instead
        return None
    if tree is None or isinstance(tree, exp.Command):
        return None
    tables: set[str] = set()
    dml = list(tree.find_all(exp.Insert, exp.Update, exp.Delete, exp.Merge))
    for node in dml:
        target = node.this
        if isinstance(target, exp.Schema):
            target = target.this
        if isinstance(target, exp.Table):
            name = _sqlglot_name(target)
            if name:
                tables.add(name)
    selects = list(tree.find_all(exp.Select))
    return _GlotFacts(
        is_query=isinstance(tree, (exp.Query, exp.Values)),
        dml_tables=tables,
        has_dml=bool(dml),
        into=any(s.args.get("into") for s in selects),
        locks=any(s.args.get("locks") for s in selects),
        anonymous={fold_identifier(a.name) for a in tree.find_all(exp.Anonymous)},
    )


def _query(st: _Stmt, calls: list[_Call]) -> _Draft:
    """SELECT / VALUES / TABLE / WITH / ( ... ): read-only only when every check agrees."""
    verb = _main_verb(st)
    facts = _glot(st)
    lex_tables, lex_dml = _dml_targets_lexical(st)
    if verb in ("insert", "update", "delete", "merge") or lex_dml or (facts and facts.has_dml):
        tables = (facts.dml_tables if facts and facts.dml_tables else set()) | lex_tables
        return _Draft(Kind.WRITE, tables=tables)
    into = [i for i, t in enumerate(st.toks) if t.kind == "word" and t.value == "into"]
    if into:
        if verb != "select" or st.toks[into[0]].depth != 0:
            return _Draft(Kind.UNKNOWN)
        j = st.skip_words(into[0] + 1, "temporary", "temp", "unlogged", "global", "local", "table")
        name, _ = st.name_at(j)
        return _Draft(Kind.DDL, tables={name} if name else set())
    if _locks_rows(st) or (facts and facts.locks):
        return _Draft(Kind.WRITE)
    unknown = [c for c in calls if not _call_allowed(c)]
    bad_ops = _bad_operators(st) + _user_types(st)
    if unknown or bad_ops:
        if not bad_ops and all(c.schema in (None, "pg_catalog") and _is_side_effect(c.name) for c in unknown):
            return _Draft(Kind.WRITE)
        return _Draft(Kind.UNKNOWN)
    if facts is None or not facts.is_query or facts.into or facts.anonymous - _READ_ONLY_FUNCTIONS - {"row"}:
        return _Draft(Kind.UNKNOWN)
    if verb not in ("select", "values", "table"):
        return _Draft(Kind.UNKNOWN)
    return _Draft(Kind.READ, read_only=True)


def _dml(st: _Stmt) -> _Draft:
    facts = _glot(st)
    lex_tables, _ = _dml_targets_lexical(st)
    # Both readings, so that a table one of them misses is still captured.
    return _Draft(Kind.WRITE, tables=(facts.dml_tables if facts else set()) | lex_tables)


def _inner(st: _Stmt, i: int) -> Classification:
    return _classify_text(st.rest(i))


def _from_inner(inner: Classification, **overrides: object) -> _Draft:
    d = _Draft(inner.kind, inner.read_only, None, [inner.escape] if inner.escape else [], inner.non_transactional,
               set(inner.tables))
    for k, v in overrides.items():
        setattr(d, k, v)
    return d


def _explain(st: _Stmt) -> _Draft:
    i = 1
    analyze = False
    if st.is_punct(1, "("):
        close = st.matching(1)
        option: list[Tok] = []
        groups: list[list[Tok]] = []
        for j in range(2, close):
            if st.is_punct(j, ",") and st.toks[j].depth == 1:
                groups.append(option)
                option = []
            else:
                option.append(st.toks[j])
        groups.append(option)
        for g in groups:
            if g and g[0].kind == "word" and g[0].value in ("analyze", "analyse"):
                value = g[1].value.lower() if len(g) == 2 and g[1].kind in ("word", "number", "string") else None
                analyze = analyze or not (len(g) == 2 and value in _FALSE_WORDS)
        i = close + 1
    else:
        while st.word(i) in ("analyze", "analyse", "verbose"):
            analyze = analyze or st.word(i) in ("analyze", "analyse")
            i += 1
    if i >= len(st.toks):
        return _Draft(Kind.UNKNOWN)
    inner = _inner(st, i)
    if analyze:
        return _from_inner(inner)  # EXPLAIN ANALYZE runs the statement: it is what it explains
    # Without ANALYZE nothing runs, but planning may fold calls: allow only known read-only ones.
    sub = _Stmt(st.rest(i), lex(st.rest(i)))
    explainable = sub.word(0) in _QUERY_VERBS | {"with", "create", "declare", "execute"} or sub.is_punct(0, "(")
    planned_safe = (explainable and inner.kind in (Kind.READ, Kind.WRITE, Kind.DDL) and not _bad_operators(sub)
                    and not _user_types(sub) and all(_call_allowed(c) for c in _calls(sub)))
    return _Draft(Kind.READ, read_only=planned_safe)


def _declare(st: _Stmt) -> _Draft:
    # DECLARE name [BINARY] [ASENSITIVE|INSENSITIVE] [[NO] SCROLL] CURSOR [WITH[OUT] HOLD] FOR query
    for i in range(2, len(st.toks)):
        if st.word(i) == "cursor":
            for j in range(i + 1, min(i + 4, len(st.toks))):
                if st.word(j) == "for":
                    inner = _inner(st, j + 1)
                    if inner.kind is Kind.READ:
                        return _from_inner(inner)
                    return _from_inner(inner, read_only=False)
            break
    return _Draft(Kind.UNKNOWN)


def _copy(st: _Stmt) -> _Draft:
    i = st.skip_words(1, "binary")
    inner: Classification | None = None
    table: str | None = None
    if st.is_punct(i, "("):
        close = st.matching(i)
        if close >= len(st.toks):
            return _Draft(Kind.UNKNOWN)
        inner = _classify_text(st.text[st.toks[i + 1].start:st.toks[close].start])
        i = close + 1
    else:
        table, i = st.name_at(i)
        if table is None:
            return _Draft(Kind.UNKNOWN)
        if st.is_punct(i, "("):
            i = st.matching(i) + 1
    direction = st.word(i)
    if direction not in ("from", "to"):
        return _Draft(Kind.UNKNOWN)
    i += 1
    escapes: list[str] = []
    program = st.word(i) == "program"
    if program:
        i += 1
        escapes.append(f"COPY {direction.upper()} PROGRAM runs a shell command on the database server")
    target = st.toks[i] if i < len(st.toks) else None
    if target is None:
        return _Draft(Kind.UNKNOWN)
    if not program:
        if target.kind == "string":
            escapes.append(f"COPY {direction.upper()} a server file {_FILE_ACCESS}")
        elif not (target.kind == "word" and target.value in ("stdin", "stdout")):
            return _Draft(Kind.UNKNOWN)
    if direction == "from":
        if table is None:
            return _Draft(Kind.UNKNOWN)
        return _Draft(Kind.WRITE, escapes=escapes, tables={table})
    if inner is not None:
        d = _from_inner(inner)
        d.escapes += escapes
        d.read_only = inner.read_only and not escapes
        return d
    return _Draft(Kind.READ, read_only=not escapes, escapes=escapes)


def _truncate(st: _Stmt) -> _Draft:
    tables: set[str] = set()
    i = st.skip_words(1, "table")
    while i < len(st.toks):
        i = st.skip_words(i, "only")
        name, i = st.name_at(i)
        if not name or name in ("restart", "continue", "cascade", "restrict"):
            break
        tables.add(name)
        if st.toks[i:i + 1] and st.toks[i].text == "*":
            i += 1
        if not st.is_punct(i, ","):
            break
        i += 1
    return _Draft(Kind.WRITE, tables=tables)


_NOT_IN_BLOCK = "{} cannot run inside a transaction block"


def _create(st: _Stmt) -> _Draft:
    i = 1
    i = st.skip_words(i, "or", "replace")
    i = st.skip_words(i, "global", "local", "temp", "temporary", "unlogged", "unique", "trusted", "procedural",
                      "default", "constraint", "recursive")
    obj = st.word(i)
    d = _Draft(Kind.DDL)
    if obj == "table" or (obj == "materialized" and st.word(i + 1) == "view"):
        j = st.skip_if_exists(i + (1 if obj == "table" else 2))
        name, _ = st.name_at(j)
        if name:
            d.tables.add(name)
    elif obj == "index" and st.word(i + 1) == "concurrently":
        d.non_transactional = _NOT_IN_BLOCK.format("CREATE INDEX CONCURRENTLY")
    elif obj == "database":
        d.non_transactional = _NOT_IN_BLOCK.format("CREATE DATABASE")
    elif obj == "tablespace":
        d.non_transactional = _NOT_IN_BLOCK.format("CREATE TABLESPACE")
    elif obj == "user" and st.word(i + 1) == "mapping":
        d.escapes.append("a user mapping holds credentials for a foreign server: " + _REMOTE)
    elif obj == "subscription":
        d.escapes.append("a subscription connects to another server and acts on it outside the transaction")
        opts = " ".join(t.value.lower() for t in st.toks)
        if not re.search(r"\b(connect|create_slot)\s*=\s*(false|off|0|no)\b", opts):
            d.non_transactional = _NOT_IN_BLOCK.format("CREATE SUBSCRIPTION with create_slot = true")
    return d


_DANGEROUS_FUTURE_GUCS = frozenset({"role", "session_authorization", "session_replication_role"})


def _alter(st: _Stmt) -> _Draft:
    obj = st.word(1)
    d = _Draft(Kind.DDL)
    if obj == "system":
        d.escapes.append("ALTER SYSTEM rewrites the server configuration file, outside any transaction")
        d.non_transactional = _NOT_IN_BLOCK.format("ALTER SYSTEM")
    elif obj == "database":
        _, j = st.name_at(2)
        if st.words(j, 2) == ["set", "tablespace"]:
            d.non_transactional = _NOT_IN_BLOCK.format("ALTER DATABASE SET TABLESPACE")
    elif obj == "table":
        j = st.skip_words(st.skip_if_exists(2), "only")
        if st.word(j) != "all":
            name, _ = st.name_at(j)
            if name:
                d.tables.add(name)
        ws = [t.value for t in st.toks if t.kind == "word"]
        if "detach" in ws and "partition" in ws and "concurrently" in ws:
            d.non_transactional = _NOT_IN_BLOCK.format("ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY")
    elif obj == "user" and st.word(2) == "mapping":
        d.escapes.append("a user mapping holds credentials for a foreign server: " + _REMOTE)
    elif obj == "subscription":
        d.escapes.append("a subscription connects to another server and acts on it outside the transaction")
        _, j = st.name_at(2)
        action = st.words(j, 2)
        opts = " ".join(t.value.lower() for t in st.toks)
        if action[0] == "refresh" or (
            action[0] in ("set", "add", "drop") and action[1] == "publication"
            and not re.search(r"\brefresh\s*=\s*(false|off|0|no)\b", opts)
        ):
            d.non_transactional = _NOT_IN_BLOCK.format("ALTER SUBSCRIPTION ... REFRESH")
    if obj in ("role", "user", "database"):
        # ALTER ROLE/DATABASE ... SET x: takes effect in future sessions, including the proxy's own.
        for j, t in enumerate(st.toks):
            if t.kind == "word" and t.value == "set" and j + 1 < len(st.toks):
                guc = st.toks[j + 1].value.lower()
                if guc in _DANGEROUS_FUTURE_GUCS:
                    d.escapes.append(f"sets {guc} for future sessions")
    return d


def _drop(st: _Stmt) -> _Draft:
    obj = st.word(1)
    d = _Draft(Kind.DDL)
    if obj == "index" and st.word(2) == "concurrently":
        d.non_transactional = _NOT_IN_BLOCK.format("DROP INDEX CONCURRENTLY")
    elif obj == "database":
        d.non_transactional = _NOT_IN_BLOCK.format("DROP DATABASE")
    elif obj == "tablespace":
        d.non_transactional = _NOT_IN_BLOCK.format("DROP TABLESPACE")
    elif obj == "subscription":
        d.escapes.append("dropping a subscription drops its replication slot on the other server")
        d.non_transactional = _NOT_IN_BLOCK.format("DROP SUBSCRIPTION (of a subscription with a replication slot)")
    elif obj == "table":
        i = st.skip_if_exists(2)
        while True:
            name, i = st.name_at(i)
            if not name:
                break
            d.tables.add(name)
            if not st.is_punct(i, ","):
                break
            i += 1
    return d


def _maintenance(st: _Stmt) -> _Draft:
    verb = st.word(0)
    d = _Draft(Kind.DDL)
    if verb == "vacuum":
        d.non_transactional = _NOT_IN_BLOCK.format("VACUUM")
    elif verb == "cluster":
        i = 1
        if st.is_punct(1, "("):
            i = st.matching(1) + 1
        i = st.skip_words(i, "verbose")
        if i >= len(st.toks):
            d.non_transactional = _NOT_IN_BLOCK.format("CLUSTER without a table name")
    elif verb == "reindex":
        i = 1
        has_concurrently = False
        if st.is_punct(1, "("):
            close = st.matching(1)
            has_concurrently = any(st.word(j) == "concurrently" for j in range(2, close))
            i = close + 1
        obj = st.word(i)
        has_concurrently = has_concurrently or st.word(i + 1) == "concurrently"
        if has_concurrently:
            d.non_transactional = _NOT_IN_BLOCK.format("REINDEX CONCURRENTLY")
        elif obj in ("schema", "database", "system"):
            d.non_transactional = _NOT_IN_BLOCK.format(f"REINDEX {obj.upper()}")
    return d


def _tx(st: _Stmt) -> _Draft:
    w0 = st.word(0)
    n = len(st.toks)

    def tail_chain(i: int) -> bool | None:
        """[WORK|TRANSACTION] [AND [NO] CHAIN] from i; None if anything else follows."""
        i = st.skip_words(i, "work", "transaction")
        if i == n:
            return False
        if st.words(i, 2) == ["and", "chain"] and i + 2 == n:
            return True
        if st.words(i, 3) == ["and", "no", "chain"] and i + 3 == n:
            return False
        return None

    def ident(i: int) -> str | None:
        if i == n - 1 and st.toks[i].kind in ("word", "ident"):
            return st.toks[i].value
        return None

    def string(i: int) -> str | None:
        if i == n - 1 and st.toks[i].kind == "string":
            return st.toks[i].value
        return None

    tx: TxControl | None = None
    escape: str | None = None
    non_tx: str | None = None
    if w0 == "begin" or (w0 == "start" and st.word(1) == "transaction"):
        tx = TxControl("begin")
    elif w0 in ("commit", "end", "rollback", "abort"):
        action: TxAction = "commit" if w0 in ("commit", "end") else "rollback"
        if w0 in ("commit", "rollback") and st.word(1) == "prepared":
            gid = string(2)
            if gid is not None:
                tx = TxControl("commit_prepared" if w0 == "commit" else "rollback_prepared", name=gid)
                escape = f"{w0.upper()} PREPARED finishes a prepared transaction, bypassing the session that held it"
                non_tx = _NOT_IN_BLOCK.format(f"{w0.upper()} PREPARED")
        elif w0 == "rollback" and "to" in st.words(1, 2):
            i = st.skip_words(1, "work", "transaction")
            if st.word(i) == "to":
                i = st.skip_words(i + 1, "savepoint")
                name = ident(i)
                if name is not None:
                    tx = TxControl("rollback_to", name=name)
        else:
            chain = tail_chain(1)
            if chain is not None:
                tx = TxControl(action, chain=chain)
    elif w0 == "savepoint":
        name = ident(1)
        if name is not None:
            tx = TxControl("savepoint", name=name)
    elif w0 == "release":
        name = ident(st.skip_words(1, "savepoint") if n > 2 else 1)
        if name is not None:
            tx = TxControl("release", name=name)
    elif w0 == "prepare" and st.word(1) == "transaction":
        gid = string(2)
        if gid is not None:
            tx = TxControl("prepare", name=gid)
            escape = ("PREPARE TRANSACTION detaches the transaction from the session; anyone can then "
                      "COMMIT PREPARED it, bypassing the hold")
    if tx is None:
        return _Draft(Kind.UNKNOWN)
    return _Draft(Kind.TRANSACTION, tx=tx, escapes=[escape] if escape else [], non_transactional=non_tx)


def _set_value_items(st: _Stmt, i: int) -> list[str] | None:
    """Literal items of a SET value list from i (None if it contains anything but literals/names)."""
    items: list[str] = []
    for t in st.toks[i:]:
        if t.kind == "punct" and t.text == ",":
            continue
        if t.kind in ("word", "ident", "string", "number"):
            items.append(t.value)
        elif t.kind == "op" and t.text == "-":
            items.append("-")
        else:
            return None
    return items


def _set(st: _Stmt) -> _Draft:
    d = _Draft(Kind.SESSION, read_only=True)
    i = 1
    if st.word(1) == "local" or (st.word(1) == "session" and st.word(2) not in ("authorization", "characteristics")):
        i = 2
    w = st.word(i)
    if w == "role":
        d.escapes.append("SET ROLE changes the privileges the agent acts with")
    elif st.words(i, 2) == ["session", "authorization"]:
        d.escapes.append("SET SESSION AUTHORIZATION changes the identity the agent acts as")
    elif w in ("transaction", "constraints") or st.words(i, 2) == ["session", "characteristics"]:
        pass
    elif (w == "time" and st.word(i + 1) == "zone") or (w == "xml" and st.word(i + 1) == "option"):
        pass
    elif w in ("schema", "names"):
        guc = "search_path" if w == "schema" else "client_encoding"
        why = _guc_escape(guc, _set_value_items(st, i + 1))
        if why:
            d.escapes.append(why)
    elif i < len(st.toks) and st.toks[i].kind in ("word", "ident"):
        name, j = st.name_at(i)
        if st.word(j) == "to" or (j < len(st.toks) and st.toks[j].text == "="):
            values = _set_value_items(st, j + 1)
            if not values:
                return _Draft(Kind.UNKNOWN)  # not a list of literals and names: not a SET we know
            if values == ["default"]:
                why = _guc_escape(name or "", None, resetting=True)
            else:
                why = _guc_escape(name or "", values)
            if why:
                d.escapes.append(why)
        else:
            return _Draft(Kind.UNKNOWN)
    else:
        return _Draft(Kind.UNKNOWN)
    return d


def _reset(st: _Stmt) -> _Draft:
    d = _Draft(Kind.SESSION, read_only=True)
    if st.word(1) == "role":
        d.escapes.append("RESET ROLE changes the privileges the agent acts with")
    elif st.words(1, 2) == ["session", "authorization"]:
        d.escapes.append("RESET SESSION AUTHORIZATION changes the identity the agent acts as")
    elif len(st.toks) > 1 and st.toks[1].kind in ("word", "ident"):
        name, _ = st.name_at(1)
        why = _guc_escape(name or "", None, resetting=True)
        if why:
            d.escapes.append(why)
    else:
        return _Draft(Kind.UNKNOWN)
    return d


def _session(st: _Stmt) -> _Draft:
    w0 = st.word(0)
    if w0 == "set":
        return _set(st)
    if w0 == "reset":
        return _reset(st)
    if w0 == "discard":
        what = st.word(1)
        if what == "all":
            return _Draft(Kind.SESSION, non_transactional=_NOT_IN_BLOCK.format("DISCARD ALL"))
        if what in ("temp", "temporary"):
            return _Draft(Kind.SESSION)  # drops temporary tables: catalog writes
        if what in ("plans", "sequences"):
            return _Draft(Kind.SESSION, read_only=True)
        return _Draft(Kind.UNKNOWN)
    if w0 in ("listen", "unlisten"):
        return _Draft(Kind.SESSION, read_only=len(st.toks) == 2 and st.simple_from(1))
    if w0 == "notify":
        return _Draft(Kind.SESSION)  # delivered at commit: a side effect, not read-only
    if w0 == "prepare":
        # PREPARE name [(types)] AS statement: nothing runs until EXECUTE (never read-only), but an
        # escape in the prepared statement is reported now, when it can still be refused.
        i = 2
        if st.is_punct(2, "("):
            i = st.matching(2) + 1
        if st.word(i) != "as" or i + 1 >= len(st.toks):
            return _Draft(Kind.UNKNOWN)
        inner = _inner(st, i + 1)
        d = _Draft(Kind.SESSION, read_only=inner.kind is not Kind.UNKNOWN)
        if inner.escape:
            d.escapes.append("prepares a statement that " + inner.escape)
        return d
    if w0 == "execute":
        return _Draft(Kind.SESSION)  # runs a prepared statement we cannot see here
    if w0 == "deallocate":
        return _Draft(Kind.SESSION, read_only=len(st.toks) in (2, 3) and st.simple_from(1))
    if w0 == "load":
        return _Draft(Kind.SESSION, escapes=["LOAD loads a shared library into the server process (arbitrary code)"])
    return _Draft(Kind.UNKNOWN)


_DO_COMMIT = re.compile(r"\b(commit|rollback)\b", re.IGNORECASE)
_DO_CALL = re.compile(r"\bcall\b", re.IGNORECASE)


def _do(st: _Stmt) -> _Draft:
    d = _Draft(Kind.UNKNOWN)
    bodies = [t.value for t in st.toks if t.kind == "string"]
    for body in bodies:
        if _DO_COMMIT.search(body):
            d.escapes.append("the DO block contains COMMIT or ROLLBACK, which would end the held transaction")
        if _DO_CALL.search(body):
            d.escapes.append("the DO block CALLs a procedure, which may COMMIT or ROLLBACK")
        # The body's own calls and names (dblink, lo_import, set_config('role', ...), ...).
        inner = _Stmt(body, lex(body))
        d.escapes += _scan_escapes(inner, _calls(inner))
    return d


_DDL_VERBS = frozenset({"create", "alter", "drop", "comment", "grant", "revoke", "security", "reassign", "import",
                        "vacuum", "analyze", "analyse", "cluster", "reindex", "checkpoint"})


def _dispatch(st: _Stmt, calls: list[_Call]) -> _Draft:
    w0 = st.word(0)
    if w0 in ("select", "values", "table", "with") or st.is_punct(0, "("):
        return _query(st, calls)
    if w0 in ("insert", "update", "delete", "merge"):
        return _dml(st)
    if w0 == "copy":
        return _copy(st)
    if w0 == "truncate":
        return _truncate(st)
    if w0 == "refresh" and st.words(1, 2) == ["materialized", "view"]:
        i = st.skip_words(3, "concurrently")
        name, _ = st.name_at(i)
        return _Draft(Kind.WRITE, tables={name} if name else set())
    if w0 == "lock":
        return _Draft(Kind.WRITE)  # takes table locks; no data changes, but never read-only
    if w0 == "show":
        return _Draft(Kind.READ, read_only=len(st.toks) > 1 and st.simple_from(1))
    if w0 == "explain":
        return _explain(st)
    if w0 in ("fetch", "move", "close"):
        return _Draft(Kind.READ, read_only=len(st.toks) > 1 and st.simple_from(1))
    if w0 == "declare":
        return _declare(st)
    if w0 in ("begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release") or (
        w0 == "prepare" and st.word(1) == "transaction" and len(st.toks) > 2 and st.toks[2].kind == "string"
    ):
        return _tx(st)
    if w0 in ("set", "reset", "discard", "listen", "unlisten", "notify", "prepare", "execute", "deallocate", "load"):
        return _session(st)
    if w0 == "create":
        return _create(st)
    if w0 == "alter":
        return _alter(st)
    if w0 == "drop":
        return _drop(st)
    if w0 in ("vacuum", "cluster", "reindex"):
        return _maintenance(st)
    if w0 == "import" and st.words(1, 2) == ["foreign", "schema"]:
        return _Draft(Kind.DDL, escapes=["IMPORT FOREIGN SCHEMA queries a remote server: " + _REMOTE])
    if w0 in _DDL_VERBS:
        return _Draft(Kind.DDL)
    if w0 == "call":
        return _Draft(Kind.UNKNOWN, escapes=["CALL runs a procedure, which may COMMIT or ROLLBACK and end the "
                                             "held transaction"])
    if w0 == "do":
        return _do(st)
    return _Draft(Kind.UNKNOWN)


def _classify_text(text: str) -> Classification:
    text = text.strip(WHITESPACE)
    spans = statement_spans(text)
    if len(spans) != 1:
        # Zero statements (empty or comments only) or several: not a single statement to judge.
        st = _Stmt(text, lex(text))
        escapes = _scan_escapes(st, _calls(st))
        return _finish(text, _Draft(Kind.UNKNOWN, escapes=escapes))
    s, e, _ = spans[0]
    text = text[s:e].strip(WHITESPACE)
    st = _Stmt(text, lex(text))
    calls = _calls(st)
    draft = _Draft(Kind.UNKNOWN) if st.error else _dispatch(st, calls)
    draft.escapes += _scan_escapes(st, calls)
    return _finish(text, draft)


def _finish(text: str, d: _Draft) -> Classification:
    escapes = list(dict.fromkeys(x for x in d.escapes if x))
    read_only = d.read_only and not escapes and d.kind in (Kind.READ, Kind.SESSION)
    return Classification(
        sql=text,
        kind=d.kind,
        read_only=read_only,
        tx=d.tx,
        escape="; ".join(escapes) or None,
        non_transactional=d.non_transactional,
        tables=frozenset(d.tables),
    )


def classify(statement: str) -> Classification:
    """Classify one statement (a trailing ';' is allowed). Several statements give UNKNOWN."""
    return _classify_text(statement)


def classify_script(sql: str) -> list[Classification]:
    """split_statements + classify."""
    return [classify(s) for s in split_statements(sql)]


def tables_referenced(statement: str) -> frozenset[str]:
    """Every table or view name one statement mentions (read or written), as written: lowercased
    unless quoted, schema-qualified only where the text qualifies it. CTE names are left out.
    Empty when sqlglot cannot parse the statement: the caller then knows nothing more than before.

    The sandbox samples the tables a statement reads (`INSERT ... SELECT`, `UPDATE ... FROM`,
    subqueries), so that replaying it on the sample can show the same effect.
    """
    st = _Stmt(statement, lex(statement))
    try:
        tree = sqlglot.parse_one(_normalized_for_sqlglot(st), read="postgres")
    except Exception:  # SqlglotError, or a crash inside sqlglot: "cannot tell"
        return frozenset()
    if tree is None or isinstance(tree, exp.Command):
        return frozenset()
    ctes = {fold_identifier(c.alias) for c in tree.find_all(exp.CTE) if c.alias}
    out: set[str] = set()
    for table in tree.find_all(exp.Table):
        parts = [p.this if p.quoted else fold_identifier(p.this) for p in table.parts if isinstance(p, exp.Identifier)]
        if not parts or len(parts) != len(table.parts) or (len(parts) == 1 and parts[0] in ctes):
            continue
        # Quoted where PostgreSQL needs it, so `to_regclass` reads back the same name.
        out.add(".".join(p if _PLAIN_NAME.fullmatch(p) else '"' + p.replace('"', '""') + '"' for p in parts))
    return frozenset(out)


_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*")

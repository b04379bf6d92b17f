"""PostgreSQL-faithful lexing and statement splitting, for the classifier.

A small model of PostgreSQL's scan.l (with `standard_conforming_strings = on`): single-quoted,
E'' and dollar-quoted strings, quoted identifiers, nested comments, operators, and the
`BEGIN ATOMIC ... END` bodies that keep semicolons inside one statement. sqlglot's tokenizer
differs from PostgreSQL on exactly these points, and the places where statements end are a safety
question here (a hidden `; DELETE ...` must not be missed), so this is hand-written and checked
against the server in the tests.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------
# Lexer: a small model of PostgreSQL's scan.l (standard_conforming_strings = on)
# --------------------------------------------------------------------------------------------

# PostgreSQL's whitespace; deliberately not str.strip()'s, which would also eat characters such as
# U+00A0 that PostgreSQL treats as identifier characters.
WHITESPACE = " \t\n\r\f\v"
_OP_CHARS = frozenset("+-*/<>=~!@#%^&|`?")
# A multi-character operator may end in + or - only if it contains one of these (scan.l rule).
_OP_SPECIAL = frozenset("~!@#%^&|`?")
_PUNCT = frozenset("(),;[].")


def _is_ident_start(c: str) -> bool:
    return (c.isascii() and (c.isalpha() or c == "_")) or not c.isascii()


def _is_digit(c: str) -> bool:
    return c.isascii() and c.isdigit()


def _is_ident_cont(c: str) -> bool:
    return _is_ident_start(c) or (c.isascii() and c.isdigit()) or c == "$"


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_identifier(name: str) -> str:
    """Case-fold an unquoted identifier as PostgreSQL does in UTF-8: ASCII letters only.

    (str.lower() would also turn, say, the Kelvin sign into 'k', making a user function named
    'ran\u212a' look like the built-in rank().)
    """
    return name.translate(_ASCII_LOWER)


_DOLLAR_DELIM = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$")


@dataclass(frozen=True, slots=True)
class Tok:
    kind: str  # word | ident | string | number | param | op | punct | other
    text: str  # exact source text
    value: str  # word: lowercased; ident: unescaped; string: its content; else the text
    start: int
    end: int
    depth: int  # parenthesis depth outside this token
    flavor: str = ""  # strings: "plain", "e" (backslash escapes) or "dollar"


@dataclass
class Lexed:
    tokens: list[Tok]
    comments: list[tuple[int, int]]
    error: str | None


_E_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _decode_e_string(body: str) -> str:
    """Best-effort value of an E'' string (octal, hex and unicode escapes included)."""
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "'" and body.startswith("''", i):
            out.append("'")
            i += 2
            continue
        if c != "\\" or i + 1 >= len(body):
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        m = (re.match(r"[0-7]{1,3}", body[i + 1:]) or re.match(r"x([0-9A-Fa-f]{1,2})", body[i + 1:])
             or re.match(r"u([0-9A-Fa-f]{4})", body[i + 1:]) or re.match(r"U([0-9A-Fa-f]{8})", body[i + 1:]))
        if m and (nxt in "01234567xuU"):
            digits = m.group(1) if m.groups() else m.group(0)
            base = 8 if nxt in "01234567" else 16
            try:
                out.append(chr(int(digits, base)))
            except (ValueError, OverflowError):
                out.append("\ufffd")
            i += 1 + len(m.group(0))
            continue
        out.append(_E_ESCAPES.get(nxt, nxt))
        i += 2
    return "".join(out)


def lex(sql: str) -> Lexed:
    """Tokenize like PostgreSQL's lexer. Unterminated quotes/comments run to the end and set `error`."""
    tokens: list[Tok] = []
    comments: list[tuple[int, int]] = []
    error: str | None = None
    depth = 0
    n = len(sql)
    i = 0

    def add(kind: str, start: int, end: int, value: str | None = None, flavor: str = "") -> None:
        nonlocal depth
        text = sql[start:end]
        d = depth
        if kind == "punct" and text == "(":
            depth += 1
        elif kind == "punct" and text == ")":
            depth = max(0, depth - 1)
            d = depth
        tokens.append(Tok(kind, text, text if value is None else value, start, end, d, flavor))

    while i < n:
        c = sql[i]
        if c in WHITESPACE:
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j + 1
            comments.append((i, j))
            i = j
        elif sql.startswith("/*", i):
            # Comments nest in PostgreSQL (unlike the SQL standard's reading in most tools).
            j, level = i + 2, 1
            while j < n and level:
                if sql.startswith("/*", j):
                    level, j = level + 1, j + 2
                elif sql.startswith("*/", j):
                    level, j = level - 1, j + 2
                else:
                    j += 1
            if level:
                error = error or "unterminated /* comment"
            comments.append((i, j))
            i = j
        elif c in "eE" and i + 1 < n and sql[i + 1] == "'":
            # E'...': backslash escapes anything, '' is a quote too.
            j = i + 2
            while j < n:
                if sql[j] == "\\":
                    j += 2
                elif sql[j] == "'":
                    if j + 1 < n and sql[j + 1] == "'":
                        j += 2
                    else:
                        break
                else:
                    j += 1
            if j >= n:
                error = error or "unterminated quoted string"
                add("string", i, n, _decode_e_string(sql[i + 2:]), "e")
                i = n
            else:
                add("string", i, j + 1, _decode_e_string(sql[i + 2:j]), "e")
                i = j + 1
        elif c == "'" or c == '"':
            # '...' (standard conforming: only '' escapes) and "identifiers" ("" escapes).
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            kind = "string" if c == "'" else "ident"
            if j >= n:
                error = error or ("unterminated quoted string" if c == "'" else "unterminated quoted identifier")
                add(kind, i, n, sql[i + 1:].replace(c + c, c), "plain")
                i = n
            else:
                add(kind, i, j + 1, sql[i + 1:j].replace(c + c, c), "plain")
                i = j + 1
        elif c == "$":
            m = _DOLLAR_DELIM.match(sql, i)
            if m:
                delim = m.group(0)
                close = sql.find(delim, m.end())
                if close < 0:
                    error = error or "unterminated dollar-quoted string"
                    add("string", i, n, sql[m.end():], "dollar")
                    i = n
                else:
                    add("string", i, close + len(delim), sql[m.end():close], "dollar")
                    i = close + len(delim)
            elif i + 1 < n and sql[i + 1].isascii() and sql[i + 1].isdigit():
                j = i + 1
                while j < n and sql[j].isascii() and sql[j].isdigit():
                    j += 1
                add("param", i, j)
                i = j
            else:
                error = error or "unexpected $"
                add("other", i, i + 1)
                i += 1
        elif _is_ident_start(c):
            j = i + 1
            while j < n and _is_ident_cont(sql[j]):
                j += 1
            add("word", i, j, fold_identifier(sql[i:j]))
            i = j
        elif _is_digit(c) or (c == "." and i + 1 < n and _is_digit(sql[i + 1])):
            # Numbers, including 1.5e-3, 0x1F and 1_000 (and junk that PostgreSQL would reject).
            j = i + 1
            while j < n:
                ch = sql[j]
                if ch.isascii() and (ch.isalnum() or ch == "_"):
                    j += 1
                elif ch == "." and not sql.startswith("..", j):
                    j += 1
                elif ch in "+-" and sql[j - 1] in "eE" and not sql[i:j].lower().startswith("0x"):
                    j += 1
                else:
                    break
            add("number", i, j)
            i = j
        elif c in _OP_CHARS:
            j = i + 1
            while j < n and sql[j] in _OP_CHARS and not sql.startswith("--", j) and not sql.startswith("/*", j):
                j += 1
            op = sql[i:j]
            while len(op) > 1 and op[-1] in "+-" and not (_OP_SPECIAL & set(op)):
                op = op[:-1]
            add("op", i, i + len(op))
            i += len(op)
        elif c == ":":
            if sql.startswith("::", i) or sql.startswith(":=", i):
                add("punct", i, i + 2)
                i += 2
            else:
                add("punct", i, i + 1)
                i += 1
        elif c in _PUNCT:
            add("punct", i, i + 1)
            i += 1
        else:
            error = error or f"unexpected character {c!r}"
            add("other", i, i + 1)
            i += 1
    return Lexed(tokens, comments, error)


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def statement_spans(sql: str) -> list[tuple[int, int, list[Tok]]]:
    """(start, end, tokens) of each non-empty statement, splitting like psql's psqlscan.l.

    A ';' ends a statement only outside parentheses (rule actions such as `DO ALSO (a; b)` keep
    theirs) and outside the `BEGIN ATOMIC ... END` body of CREATE [OR REPLACE] FUNCTION/PROCEDURE.
    psql counts any BEGIN there; we follow the server's grammar and require ATOMIC, because
    `CREATE FUNCTION begin() ...; DELETE ...` is two statements to the server.
    """
    spans: list[tuple[int, int, list[Tok]]] = []
    start = 0
    current: list[Tok] = []
    paren = 0
    begin_depth = 0
    words: list[str] = []

    def is_routine() -> bool:
        w = [*words[:4], "", "", "", ""]
        return w[0] == "create" and (
            w[1] in ("function", "procedure")
            or (w[1] == "or" and w[2] == "replace" and w[3] in ("function", "procedure"))
        )

    toks = lex(sql).tokens
    for k, tok in enumerate(toks):
        if tok.kind == "punct" and tok.text == ";" and paren == 0 and begin_depth == 0:
            if current:
                spans.append((start, tok.start, current))
            start, current, paren, begin_depth, words = tok.end, [], 0, 0, []
            continue
        current.append(tok)
        if tok.kind == "punct" and tok.text == "(":
            paren += 1
        elif tok.kind == "punct" and tok.text == ")":
            paren = max(0, paren - 1)
        elif tok.kind == "word":
            if len(words) < 4:
                words.append(tok.value if tok.value in ("create", "function", "procedure", "or", "replace") else "")
            if paren == 0 and is_routine():
                nxt = toks[k + 1] if k + 1 < len(toks) else None
                if tok.value == "begin" and begin_depth == 0 and nxt and nxt.kind == "word" and nxt.value == "atomic":
                    begin_depth += 1
                elif tok.value == "case" and begin_depth >= 1:
                    begin_depth += 1
                elif tok.value == "end" and begin_depth > 0:
                    begin_depth -= 1
    if current:
        spans.append((start, len(sql), current))
    return spans


def split_statements(sql: str) -> list[str]:
    """Split a simple-query string into statements as PostgreSQL would.

    Respects '...' (with '' escapes), E'...' (backslash escapes), "identifiers", $$/$tag$ dollar
    quotes, -- and nested /* */ comments, parentheses and BEGIN ATOMIC bodies. Drops empty
    statements (nothing but whitespace and comments); returns each statement's exact text without
    surrounding whitespace and without its ';'.
    """
    return [sql[s:e].strip(WHITESPACE) for s, e, _ in statement_spans(sql)]


def split_cached(sql: str) -> tuple[str, ...]:
    """A query with no `;` (but a trailing one) and no comment is one statement, whatever its
    quotes hold: most agent queries, which need no lexing then (agents rarely repeat a text
    exactly, so a cache of split results misses)."""
    text = sql.strip(WHITESPACE)
    body = text[:-1].rstrip(WHITESPACE) if text.endswith(";") else text
    if body and ";" not in body and "--" not in body and "/*" not in body and "\x00" not in body:
        return (body,)
    return _split_lexed(sql)


@functools.lru_cache(maxsize=2048)
def _split_lexed(sql: str) -> tuple[str, ...]:
    return tuple(split_statements(sql))


#: Text that may hold something other than keywords, names, numbers and operators: quotes,
#: dollar quotes (`$` not followed by a digit), comments, escapes, NULs, and characters outside
#: ASCII (PostgreSQL takes some that are not letters, such as U+00A0, into names). `number_shape`
#: gives up on it.
_SHAPE_UNSAFE = re.compile(r"""['"\\\x00]|\$(?!\d)|--|/\*|[^\x00-\x7f]""")
#: A numeric literal standing alone (not part of a name, a parameter `$1` or another number).
_NUMBER_TEXT = re.compile(r"(?<![\w$.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.])")


def number_shape(sql: str) -> str | None:
    """`sql` with every numeric literal replaced by 0, found without lexing (a regex is ~15 times
    cheaper): a cache key for results that do not depend on numbers. None when the text holds
    quotes, comments or anything else the regex cannot see past, where only a lexer can tell a
    number from the inside of a literal; callers then lex. Two texts with the same shape differ only
    in numeric literals: a run of digits is replaced only where it cannot be part of anything else."""
    if _SHAPE_UNSAFE.search(sql):
        return None
    return _NUMBER_TEXT.sub("0", sql)

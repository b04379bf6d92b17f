"""Hide secrets in SQL text before it is stored or shown: journal, `dbproxy show`, logs.

The text is cut into PostgreSQL's own tokens (`pglast`, which is PostgreSQL's lexer), never
searched with a regular expression, so quotes, comments and dollar quoting cannot hide a secret
from it or fool it into cutting the wrong thing. Redacted, as `'***'`:

- the string after `PASSWORD` (`CREATE/ALTER ROLE|USER ... [ENCRYPTED] PASSWORD '...'`);
- the value of a `password` option (`CREATE/ALTER USER MAPPING ... OPTIONS (password '...')`,
  `ALTER ... OPTIONS (SET password '...')`, foreign servers);
- inside any other string constant, a libpq connection string's `password=...` or a URL's
  `user:password@` (`CREATE SUBSCRIPTION ... CONNECTION '...'`, `dblink_connect('...')`).

Text the lexer cannot read (an unterminated quote) is cut at the first `password` and marked, so
a statement that could not be parsed never leaks what follows it.
"""

from __future__ import annotations

import functools
import re

from pglast.parser import ParseError, scan

MASK = "'***'"
#: Option names whose values are credentials.
_SECRET_OPTIONS = frozenset({"password", "passwd", "passfile", "sslpassword"})
#: Secrets inside a string constant: `password=...` (conninfo, quoted or not) and `scheme://user:pw@`.
_CONNINFO_PASSWORD = re.compile(r"(\b(?:password|sslpassword)\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@\s]+)(@)", re.IGNORECASE)
_STRINGS = frozenset({"SCONST", "USCONST", "BCONST", "XCONST"})
_UNPARSED = " ... (redacted: the rest could not be read)"


@functools.lru_cache(maxsize=4096)
def redact(sql: str) -> str:
    """`sql` with every secret replaced (see the module docstring); unchanged when it has none."""
    lower = sql.lower()
    if "password" not in lower and "://" not in lower and "passwd" not in lower and "passfile" not in lower:
        return sql  # the common case: nothing that could be a secret, no lexing
    try:
        tokens = scan(sql)
    except ParseError:
        cut = lower.find("password")
        return sql if cut < 0 else sql[:cut] + "password" + _UNPARSED
    out: list[str] = []
    pos = 0
    before = ""  # the previous token: a keyword's name (PASSWORD), an identifier's text, lower-case
    for tok in tokens:
        text = sql[tok.start:tok.end + 1]
        replacement: str | None = None
        if tok.name in _STRINGS:
            if before == "PASSWORD" or before.strip('"').lower() in _SECRET_OPTIONS:
                replacement = MASK
            else:
                inner = _URL_PASSWORD.sub(r"\1***\3", _CONNINFO_PASSWORD.sub(r"\1***", text))
                if inner != text:
                    replacement = inner
        if replacement is not None:
            out.append(sql[pos:tok.start])
            out.append(replacement)
            pos = tok.end + 1
        before = text if tok.name == "IDENT" else tok.name
    out.append(sql[pos:])
    return "".join(out)

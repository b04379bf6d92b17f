"""Structured logging: one line per event; readable text when stderr is a terminal, JSON lines
when it is not (a service manager, a file, a pipe), or as `log_format` says.

`event(name, **fields)` is the only call sites use. Values that are secrets never reach it: the
upstream URL is logged through `UpstreamTarget.display` (host and port only) and statements are
passed through `redact_sql` first (PostgreSQL's own lexer finds the password literals, see
`inverse.redact`).

`redact_statement` is the one place where a statement's text and its bind parameter values lose
their secrets before people see them (`dbproxy show`, the journal's parameter values): the text
through `redact_sql`, the values by position (bound where a password goes) and by shape (a
connection string or URL with a password in it).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from inverse.redact import redact

logger = logging.getLogger("dbproxy")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        data.update(getattr(record, "fields", {}))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        tail = " ".join(f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}" for k, v in fields.items())
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname.lower():7} {record.getMessage()} {tail}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


def quiet_sqlglot() -> None:
    """sqlglot warns for every statement it cannot parse; the classifier and the guard already
    treat those as unknown (conservatively), so the warning is noise in a proxy's or a
    benchmark's output."""
    logging.getLogger("sqlglot").setLevel(logging.ERROR)


def resolve_format(fmt: str, stream: Any = None) -> str:
    """`auto`: text on a terminal, JSON otherwise."""
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def setup(level: str = "info", fmt: str = "auto") -> None:
    quiet_sqlglot()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if resolve_format(fmt) == "json" else _TextFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def event(name: str, *, level: int = logging.INFO, exc_info: bool = False, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields}, exc_info=exc_info)


def redact_sql(sql: str) -> str:
    """Hide credentials (PASSWORD '...', password options, conninfo and URL passwords) in SQL
    before it is logged, journaled or shown."""
    return redact(sql)


#: A bind parameter used where a password or other secret goes: `PASSWORD $1`, `password = $2`,
#: `set_config('app.password', $3, ...)`.
_SECRET_POSITION = re.compile(r"(?:password|passwd|secret|token|api_?key)\w*['\"]?\s*(?:=|,|\s)\s*\$(\d+)\b",
                              re.IGNORECASE)
#: Secrets inside a value: a URL's `user:password@`, a conninfo `password=...`, a JSON "password".
_URL_PASSWORD = re.compile(r"(://[^\s:/@]*:)([^\s@/]+)(@)")
_CONNINFO_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)
_JSON_PASSWORD = re.compile(r'("(?:password|passwd|secret|token|api_?key)"\s*:\s*)"(?:[^"\\]|\\.)*"', re.IGNORECASE)
REDACTED = "***"


def redact_value(value: str) -> str:
    """A value with the passwords of the connection strings and URLs in it replaced by ***."""
    if "://" in value:
        value = _URL_PASSWORD.sub(rf"\1{REDACTED}\3", value)
    if "=" in value:
        value = _CONNINFO_PASSWORD.sub(rf"\1{REDACTED}", value)
    if '"' in value:
        value = _JSON_PASSWORD.sub(rf'\1"{REDACTED}"', value)
    return value


def redact_statement(sql: str, params: Sequence[str | None] | None = None) -> tuple[str, list[str | None] | None]:
    """A statement's text and bind parameter values (text, `$1` first) as people may see them:
    password literals in the text, parameters bound where a secret goes, and passwords inside
    connection strings and URLs are replaced by ***."""
    text = redact_sql(sql)
    if params is None:
        return text, None
    secret = {int(m.group(1)) for m in _SECRET_POSITION.finditer(sql)} if "$" in sql else set()
    return text, [None if p is None else REDACTED if i in secret else redact_value(p)
                  for i, p in enumerate(params, 1)]

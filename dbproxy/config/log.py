"""Structured logging: one line per event, JSON by default (`log_format = "text"` for people).

`event(name, **fields)` is the only call sites use. Values that are secrets never reach it: the
upstream URL is logged through `UpstreamTarget.display` (host and port only) and statements are
passed through `redact_sql` first (PostgreSQL's own lexer finds the password literals, see
`inverse.redact`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
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


def setup(level: str = "info", fmt: str = "json") -> None:
    quiet_sqlglot()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
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

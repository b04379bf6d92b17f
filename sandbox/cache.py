"""Verified results reused for transactions of the same shape on the same catalog.

An agent repeats itself: the same UPDATE with other values, many times. Row-image inverses of
the same statements over the same table definitions stand or fall together, so a verified result
is kept under (database, statement shape, schema version) and a later transaction with the same
key skips the sandbox. The shape is the statements with every literal and bind parameter replaced
by `?` (lexed the way PostgreSQL does, so a literal inside a string or comment cannot fake one).
The schema version is `dbproxy.ddl_epoch`, which the DDL event triggers advance on any DDL by
anyone: that is what invalidates entries (coarsely: DDL on any table). Without the event
triggers there is no version and nothing is cached. Only "verified" is cached: failures are worth
re-checking every time.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from functools import lru_cache

from inverse.lexer import lex
from sandbox.verdict import Verdict


@lru_cache(maxsize=4096)
def _normalized(sql: str) -> str:
    out: list[str] = []
    for tok in lex(sql).tokens:
        out.append("?" if tok.kind in ("string", "number", "param") else tok.value)
    return " ".join(out)


def statement_shape(statements: Iterable[str]) -> str:
    """One digest for the normalized statements, in order."""
    h = hashlib.sha256()
    for s in statements:
        h.update(_normalized(s).encode())
        h.update(b"\x00")
    return h.hexdigest()


class VerdictCache:
    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str, str], Verdict] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, database: str, shape: str, version: str | None) -> Verdict | None:
        if version is None:
            return None
        key = (database, shape, version)
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def put(self, database: str, shape: str, version: str | None, verdict: Verdict) -> None:
        if version is None or not verdict.verified:
            return
        self._entries[(database, shape, version)] = verdict
        self._entries.move_to_end((database, shape, version))
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

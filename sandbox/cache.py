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
from collections.abc import Iterable
from functools import lru_cache

from inverse.lexer import lex, number_shape
from inverse.lru import Lru
from sandbox.verdict import Verdict


@lru_cache(maxsize=4096)
def _normalized(sql: str) -> str:
    out: list[str] = []
    for tok in lex(sql).tokens:
        out.append("?" if tok.kind in ("string", "number", "param") else tok.value)
    return " ".join(out)


def statement_shape(statements: Iterable[str]) -> str:
    """One digest for the normalized statements, in order. A text whose numbers the cheap
    `number_shape` can find is normalized (and cached) through that shape: numbers become `?`
    either way, so the result is the same, and repeated statements with new numbers hit the cache."""
    h = hashlib.sha256()
    for s in statements:
        quick = number_shape(s)
        h.update(_normalized(s if quick is None else quick).encode())
        h.update(b"\x00")
    return h.hexdigest()


class VerdictCache:
    """Verified verdicts by (database, statement shape, schema version); nothing is cached without
    a version (no DDL event triggers: no way to know the catalog did not change)."""

    def __init__(self, size: int = 4096) -> None:
        self._lru: Lru[tuple[str, str, str], Verdict] = Lru(size)

    @property
    def hits(self) -> int:
        return self._lru.hits

    @property
    def misses(self) -> int:
        return self._lru.misses

    def get(self, database: str, shape: str, version: str | None) -> Verdict | None:
        return None if version is None else self._lru.get((database, shape, version))

    def put(self, database: str, shape: str, version: str | None, verdict: Verdict) -> None:
        if version is not None and verdict.verified:
            self._lru.put((database, shape, version), verdict)

"""Trusted LLM inverses kept for reuse: a bounded in-memory LRU.

Keys are tuples of strings chosen by the caller, typically (database, schema version, request
digest) from `synthesize.request_key`; the schema version is what invalidates entries after DDL
(as for `sandbox.cache.VerdictCache`). Only trusted outcomes are stored: a failure is worth
asking again. A hit is returned by `synthesize` with `cached=True` and no model call; whether to
verify it again is the caller's decision (see `inverse.llm.synthesize`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inverse.lru import Lru

if TYPE_CHECKING:
    from inverse.llm.synthesize import Outcome

__all__ = ["AnswerCache"]


class AnswerCache(Lru[tuple[str, ...], "Outcome"]):
    def __init__(self, size: int = 1000) -> None:
        super().__init__(size)

    def put(self, key: tuple[str, ...], value: Outcome) -> None:
        if value.trusted:  # a failure is worth asking again
            super().put(key, value)

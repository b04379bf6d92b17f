"""Trusted LLM inverses kept for reuse: a bounded in-memory LRU.

Keys are tuples of strings chosen by the caller, typically (database, schema version, request
digest) from `synthesize.request_key`; the schema version is what invalidates entries after DDL
(as for `sandbox.cache.VerdictCache`). Only trusted outcomes are stored: a failure is worth
asking again. A hit is returned by `synthesize` with `cached=True` and no model call; whether to
verify it again is the caller's decision (see `inverse.llm.synthesize`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inverse.llm.synthesize import Outcome

__all__ = ["AnswerCache"]


class AnswerCache:
    def __init__(self, size: int = 1000) -> None:
        self.size = max(1, size)
        self._entries: OrderedDict[tuple[str, ...], Outcome] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, ...]) -> Outcome | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: tuple[str, ...], outcome: Outcome) -> None:
        if not outcome.trusted:
            return
        self._entries[key] = outcome
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

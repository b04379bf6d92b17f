"""What a command tag says about its statement: how many rows, and whether it wrote.

Pass-through journaling decides by tag (no parsing on the relay's path), and hold mode uses the
same rule to tell whether a chain it discards had tried to write.
"""

from __future__ import annotations

import re

_ROWS_TAGS = ("INSERT", "UPDATE", "DELETE", "SELECT", "MERGE", "COPY", "FETCH", "MOVE")


def tag_rows(tag: str | None) -> int | None:
    if not tag:
        return None
    parts = tag.split()
    if parts[0] in _ROWS_TAGS and parts[-1].isdigit():
        return int(parts[-1])
    return None


#: Command tags of statements that do not write. Deciding by tag keeps pass-through cheap (no
#: parsing); the price: a SELECT that calls a writing function is not journaled.
_READ_TAGS = frozenset({"SELECT", "SHOW", "FETCH", "MOVE", "BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT",
                        "RELEASE", "SET", "RESET", "DECLARE", "CLOSE", "PREPARE", "DEALLOCATE", "DISCARD",
                        "LISTEN", "UNLISTEN", "EXPLAIN"})
_COPY_IN = re.compile(r"\bfrom\s+(stdin|program|')", re.IGNORECASE)


def wrote_by_tag(tag: str, sql: str) -> bool:
    word = tag.split(" ", 1)[0]
    if word == "COPY":
        return bool(_COPY_IN.search(sql))
    if word == "SELECT":
        return bool(_SELECT_INTO.match(sql))
    return word not in _READ_TAGS


_SELECT_INTO = re.compile(r"\s*select\b[^;]*\binto\s+(?!strict\b)", re.IGNORECASE | re.DOTALL)

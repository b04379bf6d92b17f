"""JSON whose numbers keep the digits PostgreSQL printed: `27.00` stays `27.00`, never `27.0`.

Row values in a diff come from PostgreSQL's `to_jsonb`, whose numbers carry their scale (a
`numeric(10,2)` prints `27.00`). Python's `json` would turn them into floats and lose it, so the
review API reads them as `Decimal` (`loads`) and writes a `Decimal` back as a JSON number with
exactly its digits (`dumps`; the standard library can only write it as a string). Everything else
is the standard library's JSON.
"""

from __future__ import annotations

import json
import re
import secrets
from decimal import Decimal
from typing import Any


def loads(raw: str | bytes) -> Any:
    """JSON with every non-integer number as a Decimal (its digits as written)."""
    return json.loads(raw, parse_float=Decimal)


def dumps(data: Any, *, indent: int | None = None) -> str:
    """JSON text of `data`; a finite Decimal anywhere in it becomes a number with its own digits."""
    numbers: list[str] = []
    tag = f"dbproxy-number-{secrets.token_hex(8)}-"

    def mark(v: Any) -> Any:
        if isinstance(v, Decimal):
            if not v.is_finite():
                return str(v)  # NaN, Infinity: not JSON numbers; PostgreSQL's to_jsonb makes them strings too
            numbers.append(str(v))
            return f"{tag}{len(numbers) - 1}"
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [mark(x) for x in v]
        return v

    text = json.dumps(mark(data), ensure_ascii=False, indent=indent)
    if not numbers:
        return text
    return re.sub(f'"{tag}(\\d+)"', lambda m: numbers[int(m.group(1))], text)

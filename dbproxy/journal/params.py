"""Bind parameter values as the journal keeps them: readable, bounded, without secrets.

A statement run over the extended protocol carries its values in the Bind message, as text or in
a type's binary format. `journal_params` turns them into what `dbproxy show` prints beside the
statement: text values as they are; binary ones as PostgreSQL would print them when the client
named their type in its Parse (psycopg does) and the type is a common one (integers, floats,
numeric, bool, text types, json/jsonb, uuid, date, timestamp), else as `\\x` hex; NULL as None.
Long values are cut (`MAX_CHARS` characters, `MAX_BINARY_BYTES` bytes of hex), at most
`MAX_PARAMS` are kept, and every value passes through `dbproxy.config.log.redact_statement`, the
one place secrets are taken out.
"""

from __future__ import annotations

import decimal
import struct
import uuid
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta

from dbproxy.config.log import redact_statement
from dbproxy.protocol.messages import Bind

MAX_PARAMS = 100
MAX_CHARS = 200
MAX_BINARY_BYTES = 64

_EPOCH = datetime(2000, 1, 1)  # PostgreSQL's binary date/time epoch
_I64_MAX, _I64_MIN = 2**63 - 1, -(2**63)


def _numeric(v: bytes) -> str:
    ndigits, weight, sign, dscale = struct.unpack("!hhHh", v[:8])
    special = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}
    if sign in special:
        return special[sign]
    digits = struct.unpack(f"!{ndigits}H", v[8:8 + 2 * ndigits])
    with decimal.localcontext() as ctx:
        ctx.prec = 4 * ndigits + dscale + 10
        n = sum((decimal.Decimal(d).scaleb(4 * (weight - i)) for i, d in enumerate(digits)), decimal.Decimal(0))
        text = format(n, f".{dscale}f")
    return ("-" if sign == 0x4000 else "") + text


def _float4(v: bytes) -> str:
    (f,) = struct.unpack("!f", v)
    for digits in range(6, 10):  # the shortest text that reads back as the same float4, as PostgreSQL prints
        text = f"{f:.{digits}g}"
        if struct.unpack("!f", struct.pack("!f", float(text)))[0] == f:
            return text
    return repr(f)


def _timestamp(v: bytes, suffix: str = "") -> str:
    (us,) = struct.unpack("!q", v)
    if us in (_I64_MAX, _I64_MIN):
        return "infinity" if us > 0 else "-infinity"
    return (_EPOCH + timedelta(microseconds=us)).isoformat(sep=" ") + suffix


def _date(v: bytes) -> str:
    (days,) = struct.unpack("!i", v)
    if days in (2**31 - 1, -(2**31)):
        return "infinity" if days > 0 else "-infinity"
    return (date(2000, 1, 1) + timedelta(days=days)).isoformat()


def _text(v: bytes) -> str:
    return v.decode("utf-8", "replace")


#: Binary formats of common types, by type OID, decoded to PostgreSQL's text form.
_BINARY: dict[int, Callable[[bytes], str]] = {
    16: lambda v: "true" if v == b"\x01" else "false",
    20: lambda v: str(struct.unpack("!q", v)[0]),
    21: lambda v: str(struct.unpack("!h", v)[0]),
    23: lambda v: str(struct.unpack("!i", v)[0]),
    26: lambda v: str(struct.unpack("!I", v)[0]),
    700: _float4,
    701: lambda v: repr(struct.unpack("!d", v)[0]),
    1700: _numeric,
    25: _text, 1043: _text, 1042: _text, 19: _text, 705: _text, 114: _text, 142: _text,
    3802: lambda v: _text(v[1:]),  # jsonb: a version byte, then the text
    2950: lambda v: str(uuid.UUID(bytes=v)),
    1082: _date,
    1114: _timestamp,
    1184: lambda v: _timestamp(v, "+00"),
}


def _hex(v: bytes) -> str:
    head = v[:MAX_BINARY_BYTES].hex()
    return "\\x" + head + (f"… ({len(v)} bytes)" if len(v) > MAX_BINARY_BYTES else "")


def _binary(v: bytes, oid: int) -> str:
    decode = _BINARY.get(oid)
    if decode is None:
        return _hex(v)
    try:
        return decode(v)
    except (struct.error, ValueError, decimal.InvalidOperation):
        return _hex(v)  # not what the type's binary format should be: show the bytes


def render(values: Sequence[bytes | None], formats: Sequence[int], types: Sequence[int] = ()) -> list[str | None]:
    """The values of a Bind as text (see the module docstring), before redaction. `types`: the
    parameter type OIDs the client gave in its Parse (0 or missing: not given)."""
    out: list[str | None] = []
    for i, v in enumerate(values[:MAX_PARAMS]):
        fmt = formats[0] if len(formats) == 1 else formats[i] if i < len(formats) else 0
        if v is None:
            out.append(None)
            continue
        text = _binary(v, types[i] if i < len(types) else 0) if fmt == 1 else _text(v)
        out.append(text if len(text) <= MAX_CHARS else f"{text[:MAX_CHARS]}… ({len(v)} bytes)")
    if len(values) > MAX_PARAMS:
        out.append(f"… and {len(values) - MAX_PARAMS} more parameters")
    return out


def journal_params(sql: str, bind: Bind, types: Sequence[int] = ()) -> list[str | None] | None:
    """What the journal stores for a statement's bind parameters: None when it has none."""
    if not bind.params:
        return None
    return redact_statement(sql, render(bind.params, bind.param_formats, types))[1]

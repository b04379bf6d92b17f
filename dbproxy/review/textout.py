"""How the review commands print for people: a rich console that uses colours only on a
terminal, local times and short durations. Shared by the transaction commands
(`dbproxy.review.cli`) and the policy commands (`dbproxy.review.policy_cli`)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TextIO

from rich.console import Console


def make_console(file: TextIO) -> Console:
    """Colours only on a terminal (and not with NO_COLOR); 120 columns when not a terminal."""
    try:
        tty = file.isatty()
    except (AttributeError, ValueError):
        tty = False
    width = None
    if not tty:
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 20 else 120
    return Console(file=file, width=width, no_color=not tty or "NO_COLOR" in os.environ,
                   highlight=False, emoji=False, soft_wrap=False)


def now() -> datetime:
    return datetime.now(UTC)


def aware(t: datetime) -> datetime:
    """Times from the API carry their zone; one without is taken as UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def fmt_time(t: datetime | None) -> str:
    return "-" if t is None else aware(t).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def fmt_age(t: datetime | None) -> str:
    """How long ago `t` was, as a duration."""
    return "-" if t is None else fmt_duration((now() - aware(t)).total_seconds())

"""How the review commands print for people: a rich console that uses colours only on a
terminal, and local times (durations: `dbproxy.review.present`). Shared by the transaction commands
(`dbproxy.review.cli`) and the policy commands (`dbproxy.review.policy_cli`)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TextIO

from rich.console import Console

from dbproxy.review.present import aware


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


def fmt_time(t: datetime | None) -> str:
    return "-" if t is None else aware(t).astimezone().strftime("%Y-%m-%d %H:%M:%S")

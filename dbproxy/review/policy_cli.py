"""The reviewer's policy commands, clients of the admin API's policy endpoints
(`dbproxy.review.policy_api`); `dbproxy.review.cli` parses, connects and reports errors for them.

    dbproxy grant AGENT OPS ON OBJECTS --scope session|permanent [--session N] [--max-rows N]
                  [--reason TEXT]        OPS and OBJECTS comma-separated: insert,update ON public.orders
    dbproxy grants [--agent A] [--all]   active grants (--all: also revoked, consumed and ended ones)
    dbproxy revoke ID [--reason TEXT]
    dbproxy requests [--agent A] [--all] statements waiting for approval (--all: also decided ones)
    dbproxy approve REQUEST [--scope once|session|permanent] [--reason TEXT]
    dbproxy reject REQUEST --reason TEXT the agent gets 42501 with the reason
    dbproxy reload                       read the config file and environment again (as SIGHUP)

`plan` checks what the command line can before anything is sent (operation classes, object
patterns, `--scope once` outside an approval, a session grant without its session, empty reasons):
a mistake raises `Mistake`, one line, exit code 2. The API's refusals are reported by the caller.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import TypeAdapter
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dbproxy.config.settings import object_patterns, operation_classes
from dbproxy.policy.models import GrantRecord, RequestRecord
from dbproxy.review.present import age, aware, duration, grant_state
from dbproxy.review.textout import fmt_time

COMMANDS = ("grant", "grants", "revoke", "requests", "approve", "reject", "reload")
_GRANTS = TypeAdapter(list[GrantRecord])
_REQUESTS = TypeAdapter(list[RequestRecord])


class Mistake(Exception):
    """A command-line mistake found before asking the API (exit code 2)."""


class Api(Protocol):
    def get(self, path: str, query: dict[str, Any] | None = None) -> Any: ...

    def post(self, path: str, body: dict[str, Any]) -> Any: ...


# --- argument parsing --------------------------------------------------------------------------


def _positive(what: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.isascii() or not value.isdigit() or not 0 < int(value) < 2**63:
            raise argparse.ArgumentTypeError(f"{what} must be a positive integer, got {value!r}")
        return int(value)

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def _on(value: str) -> str:
    if value.lower() != "on":
        raise argparse.ArgumentTypeError(f"expected ON between the operation classes and the objects, got {value!r} "
                                         "(e.g. dbproxy grant bot insert,update ON public.orders)")
    return value


def _rows(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) >= 2**31:
        raise argparse.ArgumentTypeError(f"--max-rows must be a non-negative integer, got {value!r}")
    return int(value)


def add_parsers(review: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add the policy commands; `review(name, help)` makes a subparser with the common options
    (--admin, --admin-token, --json, --config, --data-dir)."""
    g = review("grant", "grant an agent operation classes on objects, for one of its sessions or permanently")
    g.add_argument("agent", metavar="AGENT")
    g.add_argument("ops", metavar="OPS", help="operation classes, comma-separated (insert,update; * for all)")
    g.add_argument("on", metavar="ON", type=_on)
    g.add_argument("objects", metavar="OBJECTS", help="schema.name globs, comma-separated (public.orders,sales.*; "
                   "* for all)")
    g.add_argument("--scope", required=True, choices=("once", "session", "permanent"),
                   help="session: until that session ends (needs --session); permanent: until revoked (refused "
                   "for what has no exact inverse); once comes only with an approval")
    g.add_argument("--session", type=_positive("session"), metavar="N",
                   help="the agent's session (dbproxy requests and dbproxy show name it)")
    g.add_argument("--max-rows", dest="max_rows", type=_rows, metavar="N",
                   help="cover a transaction only while it changed at most N rows")
    g.add_argument("--reason", metavar="TEXT", help="why (kept with the grant)")

    for name, what in (("grants", "grants: active ones, or with --all also revoked, consumed and ended ones"),
                       ("requests", "statements waiting for approval, or with --all also decided ones")):
        sp = review(name, what)
        sp.add_argument("--agent", dest="agent_filter", metavar="AGENT", help="only this agent's")
        sp.add_argument("--all", dest="all", action="store_true", help="also the ended ones")

    rv = review("revoke", "revoke a grant")
    rv.add_argument("id", type=_positive("grant id"), metavar="ID")
    rv.add_argument("--reason", metavar="TEXT", help="why (kept with the grant)")

    ap = review("approve", "let a paused statement run; --scope session or permanent also grants what it does")
    ap.add_argument("id", type=_positive("request id"), metavar="REQUEST")
    ap.add_argument("--scope", default="once", choices=("once", "session", "permanent"),
                    help="once (default): this request only; session: also the rest of the agent's session; "
                    "permanent: until revoked (refused for what has no exact inverse)")
    ap.add_argument("--reason", metavar="TEXT", help="why (kept with the request and told to the agent)")

    rj = review("reject", "refuse a paused statement: the agent gets 42501 with the reason")
    rj.add_argument("id", type=_positive("request id"), metavar="REQUEST")
    rj.add_argument("--reason", metavar="TEXT", required=True, help="why (told to the agent)")

    review("reload", "read the config file and environment again (agents, rules, timeouts), as SIGHUP does")


def _split(raw: str) -> list[str]:
    return [x.strip() for x in raw.split(",") if x.strip()]


def _text(raw: str | None, what: str) -> str | None:
    if raw is None:
        return None
    text = " ".join(raw.split())
    if not text:
        raise Mistake(f"{what} is empty")
    if len(text) > 2000:
        raise Mistake(f"{what} is too long (at most 2000 characters)")
    return text


# --- the requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """The API request a command makes: GET with a query, or POST with a JSON body."""

    method: Literal["GET", "POST"]
    path: str
    payload: dict[str, Any]

    def send(self, api: Api) -> Any:
        return api.get(self.path, self.payload) if self.method == "GET" else api.post(self.path, self.payload)


def plan(args: argparse.Namespace) -> Planned:
    """The command's request, checked before anything is sent (raises `Mistake`)."""
    cmd = args.command
    if cmd == "grant":
        return Planned("POST", "/v1/grants", grant_body(args))
    if cmd in ("grants", "requests"):
        return Planned("GET", f"/v1/{cmd}", {"agent": args.agent_filter, "all": "1" if args.all else None})
    if cmd == "revoke":
        return Planned("POST", f"/v1/grants/{args.id}/revoke", {"reason": _text(args.reason, "the reason")})
    if cmd == "approve":
        return Planned("POST", f"/v1/requests/{args.id}/approve",
                       {"scope": args.scope, "reason": _text(args.reason, "the reason")})
    if cmd == "reject":
        return Planned("POST", f"/v1/requests/{args.id}/reject", {"reason": _text(args.reason, "the reason")})
    if cmd == "reload":
        return Planned("POST", "/v1/reload", {})
    raise AssertionError(cmd)


def grant_body(args: argparse.Namespace) -> dict[str, Any]:
    """`dbproxy grant`'s arguments as the body of POST /v1/grants (checked as a rule's would be)."""
    if args.scope == "once":
        raise Mistake("a once grant comes only with an approval: dbproxy approve REQUEST --scope once")
    if args.scope == "session" and args.session is None:
        raise Mistake("--scope session needs --session N, the agent's session (dbproxy requests and dbproxy show "
                      "name it)")
    if args.scope == "permanent" and args.session is not None:
        raise Mistake("--session goes with --scope session only")
    try:
        ops = operation_classes(_split(args.ops))
        objects = object_patterns(_split(args.objects))
    except ValueError as e:
        raise Mistake(str(e)) from None
    return {"agent": args.agent, "ops": ops, "objects": objects, "scope": args.scope, "session": args.session,
            "max_rows": args.max_rows, "reason": _text(args.reason, "the reason")}


# --- human output ------------------------------------------------------------------------------


def render(args: argparse.Namespace, data: Any, console: Console) -> int:
    """Print the API's answer for people; returns the exit code."""
    cmd = args.command
    if cmd == "grants":
        grants = _GRANTS.validate_python(data)
        if not grants:
            console.print("no grants" if args.all else "no active grants")
            return 0
        console.print(grants_table(grants))
        for line in grant_notes(grants):
            console.print(line)
    elif cmd == "requests":
        requests = _REQUESTS.validate_python(data)
        if not requests:
            console.print("no requests" if args.all else "no requests waiting for approval")
            return 0
        console.print(requests_table(requests))
        for line in request_notes(requests):
            console.print(line)
    elif cmd in ("grant", "revoke"):
        g = GrantRecord.model_validate(data)
        if cmd == "grant":
            console.print(Text(f"grant #{g.id}: {describe_grant(g)}"))
        else:
            console.print(Text(f"grant #{g.id} revoked by {g.revoked_by}" + (f": {g.revoke_reason}"
                                                                            if g.revoke_reason else "")))
    elif cmd in ("approve", "reject"):
        r = RequestRecord.model_validate(data)
        line = f"request #{r.id} {r.state} by {r.decided_by}"
        if r.state == "approved":
            line += f" ({r.scope})" + (f", grant #{r.grant}" if r.grant is not None and r.scope != "once" else "")
        console.print(Text(line + (f": {r.reason}" if r.reason else "")))
    elif cmd == "reload":
        for line in reload_lines(data):
            console.print(Text(line))
    return 0


def describe_grant(g: GrantRecord) -> str:
    what = f"{', '.join(g.ops)} on {', '.join(g.objects)}"
    if g.max_rows is not None:
        what += f" up to {g.max_rows} rows"
    scope = f"session {g.session}" if g.scope == "session" else g.scope
    return f"{what} for agent {g.agent} ({scope}), granted by {g.granted_by}" + (f": {g.reason}" if g.reason else "")


def grants_table(grants: list[GrantRecord]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1))
    for name in ("ID", "AGENT", "SCOPE", "OPS", "OBJECTS", "MAX ROWS", "GRANTED BY", "GRANTED", "STATE"):
        table.add_column(name, justify="right" if name in ("ID", "MAX ROWS") else "left", overflow="fold")
    for g in grants:
        state = grant_state(g)
        table.add_row(str(g.id), g.agent, f"session {g.session}" if g.scope == "session" else g.scope,
                      ", ".join(g.ops), ", ".join(g.objects), "-" if g.max_rows is None else str(g.max_rows),
                      g.granted_by, fmt_time(g.granted_at),
                      Text(state, style="green" if state == "active" else "dim"))
    return table


def grant_notes(grants: list[GrantRecord]) -> list[Text]:
    """Why each was given and how it ended, below the table."""
    out = []
    for g in grants:
        if g.reason:
            out.append(Text(f"  #{g.id} granted by {g.granted_by}: {g.reason}"))
        state = grant_state(g)
        if state in ("revoked", "ended"):
            out.append(Text(f"  #{g.id} {state} {fmt_time(g.revoked_at)}" + (f" by {g.revoked_by}"
                                                                             if state == "revoked" else "")
                            + (f": {g.revoke_reason}" if g.revoke_reason else "")))
    return out


_STATE_STYLE = {"waiting": "bold yellow", "approved": "green", "rejected": "magenta", "expired": "red",
                "cancelled": "dim"}


def requests_table(requests: list[RequestRecord]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1))
    for name in ("ID", "AGENT", "SESSION", "DATABASE", "STATE", "ASKED", "WAITED", "ACTIONS", "DECIDED BY"):
        table.add_column(name, justify="right" if name in ("ID", "SESSION", "WAITED") else "left", overflow="fold")
    for r in requests:
        waited = (age(r.created_at) if r.decided_at is None
                  else duration((aware(r.decided_at) - aware(r.created_at)).total_seconds()))
        decided = "-" if r.decided_by is None else r.decided_by + (f" ({r.scope})" if r.scope else "")
        table.add_row(str(r.id), r.agent, str(r.session), r.database,
                      Text(r.state, style=_STATE_STYLE.get(r.state, "")), fmt_time(r.created_at), waited,
                      "\n".join(r.actions), decided)
    return table


def request_notes(requests: list[RequestRecord]) -> list[Text]:
    """Below the table: for a waiting request what it would run, the rule that asks and how to
    decide; for a decided one its reason."""
    out: list[Text] = []
    for r in requests:
        if r.state == "waiting":
            out.append(Text(f"#{r.id} (agent {r.agent}, session {r.session}) waits because {r.rule}", style="bold"))
            for sql in r.statements:
                for i, line in enumerate(sql.strip().splitlines()):
                    out.append(Text(("  > " if i == 0 else "    ") + line))
            out.append(Text(f"  decide: dbproxy approve {r.id} [--scope once|session|permanent]; "
                            f"dbproxy reject {r.id} --reason TEXT", style="dim"))
        elif r.reason:
            out.append(Text(f"  #{r.id} {r.state}" + (f" by {r.decided_by}" if r.decided_by else "") + f": {r.reason}"))
    return out


def reload_lines(data: Any) -> list[str]:
    if not isinstance(data, dict):
        return ["reloaded"]
    lines = ["settings reloaded; sessions and held transactions carry on"]
    for key, what in (("agents_added", "agents added"), ("agents_removed", "agents removed (their sessions carry "
                                                                             "on until they end)"),
                      ("agents_changed", "agents changed")):
        if data.get(key):
            lines.append(f"  {what}: {', '.join(map(str, data[key]))}")
    lines.append(f"  rules in effect: {data.get('rules', 0)}")
    if data.get("restart_needed"):
        lines.append(f"  changed, but only a restart applies them: {', '.join(map(str, data['restart_needed']))}")
    return lines

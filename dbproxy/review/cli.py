"""The reviewer's commands: `dbproxy pending|show|commit|rollback|log|...`, clients of the admin API.

    dbproxy pending                      held transactions waiting for a decision
    dbproxy show ID [--offset N] [--limit N] [--table T] [--summary-wait S]
                                         statements by agent transaction, row changes (paged per
                                         table), blocked sessions
    dbproxy commit ID [--reason TEXT] [--grant session|permanent]
                                         commit it upstream (recorded under your token's reviewer);
                                         --grant also grants the agent what it did
    dbproxy rollback ID [--reason TEXT]  the reason is journaled and told to the agent
    dbproxy log [--outcome X] [--agent A] [--limit N] [--before ID]
                                         the journal, newest first: outcome, who decided (and why),
                                         which rule or grant decided, undone/redone, the sandbox's verdict
    dbproxy undo ID [--since] [--force] [--dry-run]   undo a transaction committed with its inverse
    dbproxy redo ID [--force] [--dry-run]             apply an undone transaction again
    dbproxy verify ID                    prove its inverse in the sandbox again (exit 1 unless verified)
    dbproxy grant|grants|revoke|requests|approve|reject|reload
                                         the policy: grants and approval requests
                                         (`dbproxy.review.policy_cli`)

Common options: `--admin HOST:PORT` or `http://HOST:PORT` (the `admin` setting, env
`DBPROXY_ADMIN`, default 127.0.0.1:6433), `--admin-token TOKEN` (env `DBPROXY_ADMIN_TOKEN`, the
`admin_token` setting, else `DATA_DIR/admin-token`, which `dbproxy serve` creates), `--data-dir`,
`--config`, and `--json` to print the API's JSON instead of tables.

With the proxy stopped (its API unreachable, or no token to talk to it), `log` and `show` read
the journal directly, read-only (`dbproxy.review.offline`); `--state-database URL` asks for that
outright.

They talk to a running `dbproxy serve` over HTTP (`dbproxy.review.api`) with the standard library's
urllib, never through an HTTP proxy from the environment (the token must not leave for one).
Exit codes: 0 done; 1 the API refused what was asked of something that exists or existed: unknown
id, agent, request or grant (404), already decided, ended or expired (409), not this reviewer's to
decide (403), upstream failure (the message and SQLSTATE are printed); 2 a mistake in what was
asked: a malformed command line or request (400), a grant the rules of permanence refuse (422:
nothing without an exact inverse may be granted permanently), the API cannot be reached (nor the
journal, for `log` and `show`), the token is missing or refused, or a setting is wrong. Every
message is one line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO, get_args

from pydantic import TypeAdapter, ValidationError
from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from dbproxy import __version__
from dbproxy.config.settings import Settings, SettingsError, load_settings
from dbproxy.journal.passlog import DISCONNECTED
from dbproxy.journal.records import FINAL_OUTCOMES, Outcome, StatementRecord, TransactionRecord
from dbproxy.review import jsonio, offline, policy_cli, present
from dbproxy.review.api import TOKEN_FILE, read_token_file
from dbproxy.review.models import (
    BlockedSession,
    Decision,
    GeneratedSummary,
    RowChange,
    TableDiff,
    TransactionDetail,
    UndoOutcome,
    VerifyOutcome,
)
from dbproxy.review.present import aware, duration
from dbproxy.review.textout import fmt_time, make_console
from dbproxy.review.textout import now as _now
from inverse.undo_plan import Step

COMMANDS = ("pending", "show", "commit", "rollback", "log", "undo", "redo", "verify", *policy_cli.COMMANDS)
#: API answers that mean the request itself was a mistake (exit code 2): malformed, or a grant the
#: rules of permanence refuse.
_MISTAKES = (400, 422)
#: Commands that can read the journal directly when the proxy is stopped.
OFFLINE_COMMANDS = ("log", "show")
TOKEN_ENV = "DBPROXY_ADMIN_TOKEN"
TIMEOUT = 60.0
_RECORDS = TypeAdapter(list[TransactionRecord])
_OUTCOMES: tuple[str, ...] = get_args(Outcome)


class _Fail(Exception):
    """Stop with this message on stderr and this exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _NoApi(_Fail):
    """The API cannot be used at all (not running, no token): `log` and `show` read the journal
    directly instead."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


# --- argument parsing --------------------------------------------------------------------------


def _tx_id(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"transaction id must be a positive integer, got {value!r}")
    return int(value)


def _limit(value: str) -> int:
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= 1000:
        raise argparse.ArgumentTypeError(f"limit must be an integer from 1 to 1000, got {value!r}")
    return int(value)


def _summary_wait(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) > 30:
        raise argparse.ArgumentTypeError(f"summary wait must be a whole number of seconds from 0 to 30, got {value!r}")
    return int(value)


def _offset(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) >= 2**62:
        raise argparse.ArgumentTypeError(f"offset must be a non-negative integer, got {value!r}")
    return int(value)


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the review subcommands to `dbproxy`'s subparsers; `common` adds --config and --data-dir."""

    def review(name: str, help: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
        common(sp)
        sp.add_argument("--admin", metavar="HOST:PORT",
                        help="address of the review API (env DBPROXY_ADMIN; default 127.0.0.1:6433)")
        sp.add_argument("--admin-token", dest="admin_token", metavar="TOKEN",
                        help=f"bearer token (env {TOKEN_ENV}; default: read DATA_DIR/{TOKEN_FILE})")
        sp.add_argument("--json", dest="as_json", action="store_true", help="print the API's JSON")
        if name in OFFLINE_COMMANDS:
            sp.add_argument("--state-database", dest="state_database", metavar="URL",
                            help="read the journal from this database directly, read-only (with the proxy "
                            "stopped; default then: the state_database or upstream setting, else the "
                            "embedded PostgreSQL in the data directory)")
        return sp

    review("pending", "list transactions waiting for a decision")
    show = review("show", "show one transaction: statements (with parameter values), row changes, blocked sessions")
    show.add_argument("id", type=_tx_id, metavar="ID")
    show.add_argument("--offset", type=_offset, default=0, metavar="N",
                      help="skip the first N changed rows of each table (default 0)")
    show.add_argument("--limit", type=_limit, default=None, metavar="N",
                      help="changed rows listed per table (default 50, max 1000)")
    show.add_argument("--table", default=None, metavar="TABLE",
                      help="only this table's changes, named as `show` prints it (e.g. public.orders)")
    show.add_argument("--summary-wait", type=_summary_wait, default=None, metavar="S",
                      help="with a model configured: seconds to wait for its generated summary (default 5, "
                      "max 30; 0 = do not wait)")
    for name, verb in (("commit", "commit"), ("rollback", "roll back")):
        sp = review(name, f"{verb} a pending transaction")
        sp.add_argument("id", type=_tx_id, metavar="ID")
        sp.add_argument("--reason", metavar="TEXT", help="why (journaled, shown by show and log; a rollback's "
                        "reason is told to the agent)")
        if name == "commit":
            sp.add_argument("--grant", choices=("session", "permanent"), default=None,
                            help="also grant the agent what this transaction did (its operation classes on the "
                            "objects it wrote) for the rest of its session, or permanently (refused, leaving it "
                            "pending, for what has no exact inverse)")
    verify = review("verify", "prove a transaction's inverse in the sandbox again (exit 1 unless verified)")
    verify.add_argument("id", type=_tx_id, metavar="ID")
    for name, what in (("undo", "undo a transaction committed with its inverse (checks no row changed since)"),
                       ("redo", "apply an undone transaction again")):
        sp = review(name, what)
        sp.add_argument("id", type=_tx_id, metavar="ID")
        sp.add_argument("--reason", metavar="TEXT", help="why (kept in the journal)")
        sp.add_argument("--force", action="store_true", help="apply even over rows changed since")
        sp.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="show the SQL and the conflicts; change nothing")
        if name == "undo":
            sp.add_argument("--since", action="store_true",
                            help="undo ID and every later undo-mode transaction, newest first, as one")
    lg = review("log", "the journal of transactions, newest first")
    lg.add_argument("--outcome", choices=_OUTCOMES)
    lg.add_argument("--agent", dest="agent_filter", metavar="AGENT", help="only this agent's transactions")
    lg.add_argument("--limit", type=_limit, default=None, metavar="N", help="at most N (default 100, max 1000)")
    lg.add_argument("--before", type=_tx_id, default=None, metavar="ID", help="only ids below this one")
    policy_cli.add_parsers(review)


# --- the HTTP client ---------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.sqlstate = sqlstate


class ApiClient:
    """A small JSON client for the admin API (blocking, stdlib only)."""

    def __init__(self, host: str, port: int, token: str, *, timeout: float = TIMEOUT) -> None:
        self.display = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.base = f"http://{self.display}"
        self.token = token
        self.timeout = timeout
        # No ProxyHandler entries: http_proxy and friends from the environment are ignored.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        return self._request("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._request("POST", path, json.dumps(body).encode())

    def _request(self, method: str, path: str, data: bytes | None) -> Any:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "User-Agent": f"dbproxy-cli/{__version__}",
        }
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        unreachable = f"cannot reach the review API at {self.display} (is `dbproxy serve` running?)"
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise self._api_error(e) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise _Fail(f"the review API at {self.display} did not answer within {self.timeout:g} s", 2) from None
            raise _NoApi(unreachable) from None
        except TimeoutError:
            raise _Fail(f"the review API at {self.display} did not answer within {self.timeout:g} s", 2) from None
        except (OSError, http.client.HTTPException):
            raise _NoApi(unreachable) from None
        except ValueError as e:  # a malformed address that got this far
            raise _Fail(f"the review API address {self.display} is not usable: {e}", 2) from None
        try:
            return jsonio.loads(raw)
        except ValueError:
            raise _Fail(f"the review API at {self.display} sent an answer that is not JSON", 2) from None

    @staticmethod
    def _api_error(e: urllib.error.HTTPError) -> ApiError:
        try:
            body = json.loads(e.read() or b"null")
        except (ValueError, OSError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            sqlstate = body.get("sqlstate")
            return ApiError(e.code, body["error"], sqlstate if isinstance(sqlstate, str) else None)
        return ApiError(e.code, f"HTTP {e.code} {e.reason}")


# --- the commands ------------------------------------------------------------------------------


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one review command parsed by `dbproxy.cli`. Returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        planned = policy_cli.plan(args) if args.command in policy_cli.COMMANDS else None
        settings = _settings(args)
        if getattr(args, "state_database", None):
            return _offline(args, settings, out)
        try:
            client = _client(args, settings)
            if planned is not None:
                return _policy(args, planned, client, out)
            return _dispatch(args, client, out)
        except _NoApi as e:
            if args.command not in OFFLINE_COMMANDS:
                raise
            try:
                code = _offline(args, settings, out, why=str(e), err=err)
            except _Fail as off:
                raise _Fail(f"{e}; and the journal cannot be read directly: {off}", off.code) from None
            return code
    except _Fail as e:
        print(f"dbproxy: {e}", file=err)
        return e.code
    except policy_cli.Mistake as e:
        print(f"dbproxy {args.command}: {e}", file=err)
        return 2
    except ApiError as e:
        if e.status == 401:
            print(f"dbproxy: the admin token was refused; pass --admin-token, set {TOKEN_ENV}, "
                  f"or use the DATA_DIR/{TOKEN_FILE} of the running proxy", file=err)
            return 2
        sqlstate = f" (SQLSTATE {e.sqlstate})" if e.sqlstate else ""
        print(f"dbproxy: {' '.join(e.message.split())}{sqlstate}", file=err)
        return 2 if e.status in _MISTAKES else 1


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(args.config, {"admin": args.admin, "data_dir": args.data_dir})
    except SettingsError as e:
        raise _Fail(str(e), 2) from None


def _client(args: argparse.Namespace, settings: Settings) -> ApiClient:
    host, port = settings.admin_address
    # A server bound to every interface is reached on the loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return ApiClient(host, port, _token(args, settings))


def _token(args: argparse.Namespace, settings: Any) -> str:
    token = args.admin_token or os.environ.get(TOKEN_ENV)
    if not token:
        configured = getattr(settings, "admin_token", None)
        if configured is not None:
            token = configured.get_secret_value() if hasattr(configured, "get_secret_value") else str(configured)
    if not token:
        path = Path(settings.data_dir) / TOKEN_FILE
        try:
            token = read_token_file(path)
        except ValueError as e:
            raise _Fail(str(e), 2) from None
        if token is None:
            raise _NoApi(f"no admin token: pass --admin-token, set {TOKEN_ENV}, or run where `dbproxy serve` "
                         f"keeps its data directory ({path} does not exist)")
    token = token.strip()
    if not token.isascii() or not token.isprintable():
        raise _Fail("the admin token must be printable ASCII", 2)
    return token


def _policy(args: argparse.Namespace, planned: policy_cli.Planned, client: ApiClient, out: TextIO) -> int:
    data = planned.send(client)
    if args.as_json:
        print(jsonio.dumps(data, indent=2), file=out)
        return 0
    try:
        return policy_cli.render(args, data, make_console(out))
    except ValidationError as e:
        raise _Fail(f"the review API sent an answer this dbproxy does not understand: "
                    f"{e.error_count()} problem(s), first: {e.errors()[0]['msg']}", 2) from None


def _dispatch(args: argparse.Namespace, client: ApiClient, out: TextIO) -> int:
    cmd = args.command
    if cmd == "pending":
        data = client.get("/v1/pending")
    elif cmd == "log":
        data = client.get("/v1/transactions", {"outcome": args.outcome, "agent": args.agent_filter,
                                               "limit": args.limit, "before": args.before})
    elif cmd == "show":
        data = client.get(f"/v1/transactions/{args.id}", {"offset": args.offset or None, "limit": args.limit,
                                                           "table": args.table, "summary_wait": args.summary_wait})
    elif cmd == "verify":
        data = client.post(f"/v1/transactions/{args.id}/verify", {})
    elif cmd in ("undo", "redo"):
        body = {"reason": args.reason, "force": args.force, "dry_run": args.dry_run}
        if cmd == "undo":
            body["since"] = args.since
        data = client.post(f"/v1/transactions/{args.id}/{cmd}", body)
    elif cmd == "commit" and args.grant is not None:
        data = client.post(f"/v1/transactions/{args.id}/commit", {"reason": args.reason, "grant": args.grant})
    else:
        data = client.post(f"/v1/transactions/{args.id}/{cmd}", {"reason": args.reason})

    if args.as_json:
        print(jsonio.dumps(data, indent=2), file=out)
        if cmd in ("commit", "rollback") and isinstance(data, dict) and data.get("error"):
            return 1
        if cmd in ("undo", "redo") and isinstance(data, dict) and data.get("conflicts"):
            return 1
        if cmd == "verify" and isinstance(data, dict) and data.get("status") != "verified":
            return 1
        return 0

    console = make_console(out)
    try:
        if cmd in ("pending", "log"):
            records = _RECORDS.validate_python(data)
            if not records:
                console.print("no pending transactions" if cmd == "pending" else "no transactions")
            else:
                console.print(records_table(records, with_decider=cmd == "log"))
                for line in reasons(records) if cmd == "log" else []:
                    console.print(line)
        elif cmd == "show":
            render_detail(console, TransactionDetail.model_validate(data), show_id=args.id)
        elif cmd in ("undo", "redo"):
            return render_undo(console, UndoOutcome.model_validate(data))
        elif cmd == "verify":
            outcome = VerifyOutcome.model_validate(data)
            console.print(Text(f"#{outcome.id}", style="bold"))
            render_verdict(console, outcome.model_dump())
            return 0 if outcome.status == "verified" else 1
        else:
            decision = Decision.model_validate(data)
            if decision.error:
                sqlstate = f" (SQLSTATE {decision.sqlstate})" if decision.sqlstate else ""
                raise _Fail(f"#{decision.id} {decision.outcome}: {decision.error}{sqlstate}", 1)
            console.print(Text(f"#{decision.id} {decision.outcome} by {decision.decided_by}"
                               + (f": {decision.reason}" if decision.reason else "")))
            if decision.grant is not None:
                console.print(Text(f"grant #{decision.grant} ({args.grant}): the agent may do what #{decision.id} did "
                                   f"{'for the rest of its session' if args.grant == 'session' else 'until revoked'}"
                                   f" (dbproxy grants; dbproxy revoke {decision.grant})"))
    except ValidationError as e:
        raise _Fail(f"the review API sent an answer this dbproxy does not understand: "
                    f"{e.error_count()} problem(s), first: {e.errors()[0]['msg']}", 2) from None
    return 0


def _offline(args: argparse.Namespace, settings: Settings, out: TextIO, *, why: str | None = None,
             err: TextIO | None = None) -> int:
    """`log` or `show` straight from the journal (the proxy is stopped; `dbproxy.review.offline`)."""
    state_url = getattr(args, "state_database", None)
    try:
        if args.command == "log":
            records, where = offline.log(settings, state_url, outcome=args.outcome, agent=args.agent_filter,
                                         limit=args.limit or 100, before_id=args.before)
            data: Any = [r.model_dump(mode="json") for r in records]
        else:
            detail, where = offline.show(settings, state_url, args.id)
            if detail is None:
                raise _Fail(f"no transaction #{args.id}", 1)
            data = present.detail_data(detail)
    except offline.OfflineError as e:
        raise _Fail(str(e), 2) from None
    if why is not None and err is not None:
        print(f"dbproxy: {why}; read the journal at {where} directly (read-only)", file=err)
    if args.as_json:
        print(jsonio.dumps(data, indent=2), file=out)
        return 0
    console = make_console(out)
    if args.command == "log":
        if not records:
            console.print("no transactions")
        else:
            console.print(records_table(records, with_decider=True))
            for line in reasons(records):
                console.print(line)
    else:
        assert detail is not None
        render_detail(console, detail)
    return 0


# --- human output ------------------------------------------------------------------------------


def _held_for(r: TransactionRecord, now: datetime) -> float | None:
    if r.held_at is None:
        return None
    end = aware(r.ended_at) if r.ended_at is not None else now
    return (end - aware(r.held_at)).total_seconds()


_OUTCOME_STYLE = {
    "open": "cyan", "pending": "bold yellow", "committing": "yellow", "committed": "green",
    "rolled back": "magenta", "expired": "red", "failed": "bold red",
}


def records_table(records: list[TransactionRecord], *, with_decider: bool = False) -> Table:
    """ID, agent, database, mode, outcome, statements, agent transactions, started (local time),
    held (how long it has been, or was, waiting for a decision), age (since it started). The log
    (`with_decider`) has who decided, which rule or grant decided (`present.policy_short`; `show`
    has the full text), the undo/redo state and the sandbox's verdict instead of the age (`reasons`
    lists why each ended as it did, below the table)."""
    now = _now()
    # The log has four more columns: one space less between columns keeps it within 120 for the
    # usual names.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  padding=(0, 1, 0, 0) if with_decider else (0, 1))
    names = ["ID", "AGENT", "DATABASE", "MODE", "OUTCOME", "STMTS", "AGENT TXS", "STARTED", "HELD"]
    names += ["DECIDED BY", "POLICY", "UNDO", "VERIFIED"] if with_decider else ["AGE"]
    for name in names:
        numeric = name in ("ID", "STMTS", "AGENT TXS", "HELD", "AGE")
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for r in records:
        row = [
            Text(str(r.id)), Text(r.agent), Text(r.database), Text(r.mode),
            Text(r.outcome, style=_OUTCOME_STYLE.get(r.outcome, "")),
            Text(str(r.statements)), Text(str(r.agent_transactions)), Text(fmt_time(r.started_at)),
            Text(duration(_held_for(r, now))),
        ]
        if with_decider:
            verdict = verdict_of(r)
            row += [Text(r.decided_by or "-"), Text(present.policy_short(r.policy)), Text(undo_state(r)),
                    Text(verdict, style=_VERDICT_STYLE.get(verdict, ""))]
        else:
            row.append(Text(duration((now - aware(r.started_at)).total_seconds())))
        table.add_row(*row)
    return table


def reasons(records: list[TransactionRecord]) -> list[Text]:
    """Why transactions ended as they did, when the journal says (errors, expiry, restart, the
    reviewer's reason): one line each, for below the log's table."""
    return [Text(f"  #{r.id} {r.outcome}" + (f" by {r.decided_by}" if r.decided_by else "") + f": {r.reason}")
            for r in records if r.reason]


def undo_state(r: TransactionRecord) -> str:
    """The log's UNDO column: 'undone' or 'redone' (the last of its undo/redo history), 'undo of
    #N' / 'redo of #N' for the journal entry of an undo itself, '-' otherwise."""
    doc = r.undo or {}
    if doc.get("action"):
        return f"{doc['action']} of #" + ", #".join(str(i) for i in doc.get("of") or [])
    history = doc.get("history") or []
    if history:
        return {"undo": "undone", "redo": "redone"}.get(str(history[-1].get("action")), "-")
    return "-"


def verdict_of(r: TransactionRecord) -> str:
    """The log's VERIFIED column: the sandbox's last verdict on the inverse ('-' outside undo mode)."""
    v = (r.undo or {}).get("verification")
    if v is None:
        return "-"
    return str(v.get("status", "?")) if isinstance(v, dict) else str(v)


def fmt_value(v: Any, limit: int = 80) -> str:
    """A column value as SQL-ish text: NULL, numbers, 'strings', JSON for the rest."""
    if v is None:
        s = "NULL"
    elif isinstance(v, bool):
        s = "true" if v else "false"
    elif isinstance(v, int | float | Decimal):
        s = str(v)  # a Decimal keeps PostgreSQL's digits: 27.00
    elif isinstance(v, str):
        s = "'" + v.replace("'", "''") + "'"
    else:
        s = json.dumps(v, ensure_ascii=False, default=str)
    s = s.replace("\n", "\\n")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def fmt_row(values: dict[str, Any] | None) -> str:
    if not values:
        return "(no values)"
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in values.items())


def _line(*parts: tuple[str, str] | str) -> Text:
    return Text.assemble(*parts)


def render_detail(console: Console, d: TransactionDetail, *, show_id: int | None = None) -> None:
    now = _now()
    t = d.transaction
    console.print(_line(("#" + str(t.id), "bold"), "  ", (t.outcome, _OUTCOME_STYLE.get(t.outcome, "")),
                        f"  {t.mode} mode  agent {t.agent}  database {t.database}"))
    facts = [f"session {t.session}"]
    if t.backend_pid is not None:
        facts.append(f"backend pid {t.backend_pid}")
    if t.xid is not None:
        facts.append(f"xid {t.xid}")
    facts.append(f"{t.statements} statement{'s' if t.statements != 1 else ''} in {t.agent_transactions} "
                 f"agent transaction{'s' if t.agent_transactions != 1 else ''}")
    console.print(Text("  " + " · ".join(facts)))
    times = [f"started {fmt_time(t.started_at)} ({duration((now - aware(t.started_at)).total_seconds())} ago)"]
    if t.held_at is not None:
        times.append(f"held {fmt_time(t.held_at)} (for {duration(_held_for(t, now))})")
    if t.ended_at is not None:
        times.append(f"ended {fmt_time(t.ended_at)}")
    console.print(Text("  " + " · ".join(times)))
    if t.decided_by or t.reason:
        who = f"decided by {t.decided_by}" if t.decided_by else "decided"
        console.print(Text(f"  {who}" + (f": {t.reason}" if t.reason else "")))
    if t.policy:
        console.print(Text(f"  policy: {t.policy}"))
    if t.outcome not in FINAL_OUTCOMES:
        state = "agent connected" if d.agent_connected else "agent disconnected"
        if d.agent_connected:
            state += ", inside a transaction" if d.agent_in_transaction else ", idle"
        if d.expires_at is not None:
            left = (aware(d.expires_at) - now).total_seconds()
            state += f" · expires {fmt_time(d.expires_at)} (in {duration(left)})"
        console.print(Text("  " + state))

    if d.summary is not None:
        _render_summary(console, d.summary, show_id=show_id)
    console.print()
    _render_statements(console, d.statements)
    console.print()
    _render_diff(console, d.diff, d.diff_note, show_id=show_id)
    if t.undo is not None:
        console.print()
        _render_inverse(console, t.undo)
    if d.blocking:
        console.print()
        _render_blocking(console, d.blocking)


def _render_summary(console: Console, s: GeneratedSummary, *, show_id: int | None) -> None:
    """The model's summary, never mistakable for a checked fact (it says it is generated)."""
    console.print()
    head = Text("Summary", style="bold")
    head.append(f"  generated by {s.model}, not verified", style="italic yellow")
    console.print(head)
    if s.status == "ready":
        console.print(Text(f"  {(s.text or '').strip()} (risk, in the model's words: {s.risk})"))
    elif s.status == "pending":
        again = f"`dbproxy show {show_id}`" if show_id is not None else "show"
        console.print(Text(f"  being written by the model; {again} again in a moment", style="dim"))
    else:
        console.print(Text(f"  none: {s.note}", style="dim"))


def _render_statements(console: Console, statements: list[StatementRecord]) -> None:
    console.print(Text("Statements", style="bold"))
    if not statements:
        console.print(Text("  (none)"))
        return
    by_tx: dict[int, list[StatementRecord]] = {}
    for s in sorted(statements, key=lambda s: (s.tx_no, s.seq)):
        by_tx.setdefault(s.tx_no, []).append(s)
    for tx_no, stmts in by_tx.items():
        header = Text(f"  agent transaction {tx_no}", style="bold")
        if any(s.sql == DISCONNECTED for s in stmts):
            header.append("  rolled back: the agent disconnected inside it", style="bold magenta")
        elif stmts[-1].tag == "ROLLBACK":
            header.append("  rolled back by the agent", style="magenta")
        elif stmts and all(s.effect for s in stmts if s.tag not in _TX_CONTROL):
            header.append("  changed no data", style="dim")
        console.print(header)
        table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0))
        table.add_column("seq", justify="right", no_wrap=True)
        table.add_column("result", no_wrap=True)
        table.add_column("sql", overflow="fold")
        for s in stmts:
            if s.sqlstate or s.error:
                result = Text(f"ERROR {s.sqlstate or ''}".rstrip(), style="bold red")
            else:
                result = Text(s.tag or "-")
                if s.rows is not None and (s.tag is None or not s.tag.endswith(f" {s.rows}")):
                    result.append(f" ({s.rows} rows)")
            if s.sql == DISCONNECTED:
                sql = Text("(the agent disconnected inside this transaction; it was rolled back)", style="magenta")
            else:
                sql = Text(s.sql.strip())
            if s.effect:
                sql.append("  -- " + _EFFECT_NOTE[s.effect], style="dim")
            if s.params:
                sql.append("\n" + fmt_params(s.params), style="cyan")
            if s.error:
                sql.append("\n" + s.error, style="red")
            table.add_row(Text(str(s.seq)), result, sql)
        console.print(Padding(table, (0, 0, 0, 4), expand=False))


_TX_CONTROL = frozenset({"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "START TRANSACTION"})
_EFFECT_NOTE = {"read-only": "read-only: changed nothing", "setting": "session setting: changed no data"}


def fmt_params(params: list[str | None]) -> str:
    """Bind parameter values as `$1 = 'text', $2 = NULL` (text as the journal keeps it: binary values
    as \\x hex, long ones cut, secrets as ***)."""
    return ", ".join(f"${i} = " + ("NULL" if p is None else fmt_value(p, limit=120))
                     for i, p in enumerate(params, 1))


def _render_diff(console: Console, diff: list[TableDiff] | None, note: str | None, *,
                 show_id: int | None = None) -> None:
    console.print(Text("Changes", style="bold"))
    if diff is None:
        console.print(Text("  no row-level diff" + (f": {note}" if note else "")))
        return
    if note:
        console.print(Text(f"  note: {note}"))
    if not diff:
        console.print(Text("  no rows changed"))
        return
    for td in diff:
        console.print(_line("  ", (td.table, "bold"),
                            f"  {td.inserted} inserted, {td.updated} updated, {td.deleted} deleted"))
        for rc in td.rows:
            console.print(_row_change(rc))
        if td.truncated:
            total = td.inserted + td.updated + td.deleted
            shown = f"rows {td.offset + 1}–{td.offset + len(td.rows)} of {total}" if td.rows else \
                f"no rows at offset {td.offset} of {total}"
            after = td.offset + len(td.rows)
            more = f"; next: dbproxy show {show_id} --table {shlex.quote(td.table)} --offset {after}" \
                if show_id is not None and td.rows and after < total else ""
            console.print(Text(f"    … {shown}{more}"))


def _row_change(rc: RowChange) -> Text:
    if rc.kind == "insert":
        return _line("    ", ("+ insert ", "green"), fmt_row(rc.after))
    if rc.kind == "delete":
        return _line("    ", ("- delete ", "red"), fmt_row(rc.before))
    before, after = rc.before or {}, rc.after or {}
    # before=None: the old version could not be read (e.g. the table is locked by a rewrite).
    old = (lambda c: fmt_value(before.get(c))) if rc.before is not None else (lambda c: "(unknown)")
    changes = [f"{c}: {old(c)} → {fmt_value(after.get(c))}" for c in dict.fromkeys([*before, *after])]
    key = fmt_row(rc.key) if rc.key else "(no key)"
    return _line("    ", ("~ update ", "yellow"), key, "  ", "; ".join(changes) or "(no changed columns)")


def _render_inverse(console: Console, doc: dict[str, Any]) -> None:
    """The undo document of an undo-mode transaction: why it was held, or its inverse SQL."""
    if doc.get("action"):  # the journal entry of an undo/redo itself
        console.print(Text(f"{str(doc['action']).capitalize()} of #" + ", #".join(map(str, doc.get("of", []))),
                           style="bold"))
        return
    console.print(Text("Inverse (undo)", style="bold"))
    irreversible = doc.get("irreversible") or []
    if irreversible:
        console.print(Text("  held because it cannot be undone exactly:", style="bold red"))
        for r in irreversible:
            console.print(Text(f"    - {r}"))
    render_verdict(console, doc.get("verification", "not done"))
    if doc.get("llm") is not None:
        render_llm(console, doc["llm"])
    for h in doc.get("history", []):
        console.print(Text(f"  {h.get('action')} by {h.get('by')} at {h.get('at')}"))
    for n in doc.get("notes") or []:
        console.print(Text(f"  note: {n}"))
    steps = doc.get("steps") or []
    if not steps and not irreversible:
        console.print(Text("  (more changes than the journal keeps: `dbproxy undo ID --dry-run` shows the SQL)"))
    shown = steps[:SHOWN_STEPS]
    for s in shown:
        if s.get("origin") == "llm":
            console.print(Padding(Text("-- proposed by a model (generated), verified in the sandbox", style="magenta"),
                                  (0, 0, 0, 4)))
        console.print(Padding(Text(Step(**{**s, "params": tuple(s["params"])}).readable() + ";"), (0, 0, 0, 4)))
    if len(steps) > len(shown):
        console.print(Text(f"    … and {len(steps) - len(shown)} more steps"))


SHOWN_STEPS = 50
SHOWN_DIFF = 20
_VERDICT_STYLE = {"verified": "bold green", "failed": "bold red", "could not verify": "bold yellow"}


def render_llm(console: Console, record: Any) -> None:
    """The model's part: why none was asked, or every attempt (generated SQL, never trusted
    unless the sandbox verified it)."""
    if not isinstance(record, dict):
        console.print(Text(f"  model-proposed inverse: {record}"))
        return
    trusted = record.get("statements") is not None and not record.get("reason")
    line = Text("  model-proposed inverse (generated): ")
    line.append("verified, used" if trusted else "none trusted", style="bold green" if trusted else "bold yellow")
    if record.get("reason"):
        line.append(f": {record['reason']}")
    if record.get("cached"):
        line.append(" (cached answer)")
    console.print(line)
    for a in record.get("attempts") or []:
        call = a.get("call") or {}
        tokens = "/".join(str(call.get(k)) for k in ("prompt_tokens", "completion_tokens") if call.get(k) is not None)
        meta = ", ".join(x for x in (call.get("model"), f"{call['latency_ms']:.0f} ms" if call.get("latency_ms")
                                     is not None else "", f"tokens {tokens}" if tokens else "") if x)
        console.print(Text(f"    attempt {a.get('n')}: {a.get('status')}" + (f" ({meta})" if meta else "")))
        for sql in a.get("statements") or []:
            console.print(Padding(Text(sql.rstrip(";") + ";"), (0, 0, 0, 6)))
        detail = str(a.get("detail") or "")
        if detail and a.get("status") != "verified":
            for d in detail.splitlines()[:SHOWN_DIFF]:
                console.print(Text(f"      {d}", style="red"))


def render_verdict(console: Console, v: Any) -> None:
    """A sandbox verdict (a dict) or an older entry's plain status text."""
    if not isinstance(v, dict):
        console.print(Text(f"  verification: {v}"))
        return
    status = str(v.get("status", "?"))
    line = Text("  verification: ")
    line.append(status, style=_VERDICT_STYLE.get(status, "bold"))
    if v.get("reason"):
        line.append(f": {v['reason']}")
    console.print(line)
    how = []
    on = f" on {v['backend']}" if v.get("backend") else ""  # which sandbox backend verified
    if v.get("cached"):
        how.append(f"cached result for the same statement shape and schema (verified {v.get('at', '')}{on})")
    elif v.get("timings_ms", {}).get("total") is not None:
        how.append(f"{v['timings_ms']['total']:.0f} ms{on or ' in the sandbox'}")
    elif on:
        how.append(on.strip())
    if v.get("forward"):
        how.append(f"forward from {v['forward']}")
    if v.get("sample"):
        how.append("sample " + ", ".join(f"{t} {n} rows" for t, n in v["sample"].items()))
    if v.get("widened"):
        how.append("sample widened once")
    if v.get("masked"):
        how.append("masked: " + ", ".join(v["masked"]))
    for h in how:
        console.print(Text(f"    {h}"))
    diff = v.get("diff") or []
    for d in diff[:SHOWN_DIFF]:
        console.print(Text(f"    {d}", style="red"))
    if len(diff) > SHOWN_DIFF:
        console.print(Text(f"    … and {len(diff) - SHOWN_DIFF} more"))


def render_undo(console: Console, o: UndoOutcome) -> int:
    ids = "#" + ", #".join(map(str, o.ids))
    if o.dry_run:
        console.print(Text(f"dry run: {o.direction} of {ids} ({o.steps} steps); nothing was changed", style="bold"))
        for sql in o.sql:
            console.print(Text(sql + ";"))
    for c in o.conflicts:
        console.print(Text(f"conflict in {c.table or '?'} ({c.step}): {c.message}", style="bold red"))
        if c.expected:
            console.print(Text(f"    expected: {c.expected}"))
        for cur in c.current:
            console.print(Text(f"    now:      {cur}"))
    for c in o.overridden:
        console.print(Text(f"overridden in {c.table or '?'}: {c.message}", style="yellow"))
    for n in o.notes:
        console.print(Text(f"note: {n}"))
    if o.applied:
        console.print(Text(f"{ids} {o.direction} done: {o.done} changes, {o.skipped} already in place, "
                           f"{o.forced} forced; journaled as #{o.journal_id}", style="green"))
        return 0
    if o.conflicts:
        console.print(Text(f"{o.direction} refused: {len(o.conflicts)} conflict(s); nothing was changed "
                           "(--force applies anyway where rows have a primary key)", style="bold red"))
        return 1
    return 0


def _render_blocking(console: Console, blocking: list[BlockedSession]) -> None:
    for b in blocking:
        who = ", ".join(x for x in (b.user, b.application_name, b.state) if x)
        waiting = f"waiting {b.waiting_seconds:.0f} s" if b.waiting_seconds is not None else "waiting"
        query = " ".join(b.query.split()) if b.query is not None else \
            "(its query is not visible to the proxy's database role)"
        console.print(_line(("blocking: ", "bold red"),
                            f"pid {b.pid}" + (f" ({who})" if who else "") + f" ({waiting}): " + query))

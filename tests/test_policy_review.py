"""The reviewer's side of the policy through the real `dbproxy` command line, against a real proxy
and PostgreSQL, with psycopg agents; visibility is checked from a second, direct connection.

- A statement a rule pauses waits (in a thread) while `dbproxy requests` lists it; `approve` lets
  it run (once: the next one waits again), `reject` gives the agent 42501 with the reason, a
  decided request answers 409, a permanent approval of a notification is refused (422) and the
  agent still waits; the agent's own identity may not decide its own request.
- `grant`, `grants`, `revoke`: a permanent grant lets the agent's writes commit at once until it
  is revoked; permanent grants of `notify` and `function` are refused with the reason
  and exit code 2; an unknown agent or session is 404 (exit 1); a session grant with `--max-rows`
  ends with its session.
- `commit ID --grant session`: the rest of that session commits by the grant, another session of
  the same agent does not; `--grant permanent` for a notification leaves the transaction pending,
  for a drop (DDL capture installed) it commits and grants.
- `log` says which rule or grant decided (short), `show` the full text; the offline reader reads
  a journal of schema v4 and one from before it (v3, no such column).
- `dbproxy reload` against a running `dbproxy serve`: a new agent and rule take effect at once, a
  broken config changes nothing (exit 2).

Most commands run in-process (`dbproxy.cli.main`, the same code as the installed command, much
faster than a new interpreter each time); the first test also runs the installed entry point.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbproxy import cli
from dbproxy.journal.store import Journal
from tests.conftest import SANDBOX_DIR, Postgres, RunningProxy
from tests.test_cli_and_settings import Served
from tests.test_hold import decide
from tests.test_undo_proxy import dbname, direct
from tests.waiting import wait_until

BOT = "bot"
BOT_PASSWORD = "bot-pw"
PAUSE_DELETES = {"ops": ["delete", "ddl-drop", "notify"], "objects": ["*"], "decision": "ask", "ask": "pause"}


@dataclass
class Result:
    code: int
    out: str
    err: str


class Bot:
    """The agent `bot`, a psycopg connection on the capture database that collects its notices;
    `start` runs a statement in a thread (it may wait for a reviewer)."""

    def __init__(self, proxy: RunningProxy, database: str) -> None:
        self.conn = psycopg.connect(proxy.url(database, user=BOT, password=BOT_PASSWORD), autocommit=True)
        self.notices: list[str] = []
        self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))

    def held_ids(self) -> list[int]:
        return [int(n.split("#")[1].split()[0]) for n in self.notices if "held for review as #" in n]

    def session(self) -> int:
        """The proxy's session number, from `SHOW dbproxy.status` (first row: the session)."""
        row = self.conn.execute("show dbproxy.status").fetchone()
        assert row is not None and row[0] == "session", row
        return int(row[1])

    def start(self, sql: str) -> Waiter:
        return Waiter(self.conn, sql)

    def close(self) -> None:
        self.conn.close()


class Waiter:
    def __init__(self, conn: psycopg.Connection[Any], sql: str) -> None:
        self.status: str | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(conn, sql), daemon=True)
        self.thread.start()

    def _run(self, conn: psycopg.Connection[Any], sql: str) -> None:
        try:
            self.status = conn.execute(sql).statusmessage
        except BaseException as e:
            self.error = e

    def done(self, timeout: float = 60) -> Waiter:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the agent still waits"
        return self


@pytest.fixture
def acct(capture_db: str) -> str:
    """A table in the capture database (capture and DDL capture installed), rows 1 to 5."""
    direct(capture_db, "CREATE TABLE acct (id int PRIMARY KEY, balance numeric(8,2) NOT NULL)")
    direct(capture_db, "INSERT INTO acct SELECT i, 100 FROM generate_series(1, 5) i")
    direct(capture_db, "CREATE TABLE scratch (id int)")
    return capture_db


def start(make_proxy: Callable[..., RunningProxy], capture_db: str, **overrides: Any) -> RunningProxy:
    """A hold-mode proxy on the capture database whose agent `bot` may open only that database
    (so a permanent grant is judged by what is installed there). What a grant allows commits with
    its inverse unverified (`sandbox = "off"`): the sandbox is not what these tests are about, and
    a cold one on a busy machine would hold instead."""
    return make_proxy(capture_db, mode="hold", sandbox="off",
                      agents={BOT: {"password": BOT_PASSWORD, "databases": [dbname(capture_db)]}}, **overrides)


@pytest.fixture
def dbproxy(capsys: pytest.CaptureFixture[str], tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`dbproxy ARGS` in-process against `proxy`, with `reviewer`'s own token (default: admin)."""
    monkeypatch.setenv("COLUMNS", "200")
    for k in [k for k in os.environ if k.startswith("DBPROXY_")]:
        monkeypatch.delenv(k)

    def run(proxy: RunningProxy | None, *args: str, reviewer: str = "admin") -> Result:
        capsys.readouterr()
        api = ["--admin", proxy.admin_url, "--admin-token", proxy.token(reviewer)] if proxy is not None else []
        code = cli.main([*args, *api, "--data-dir", str(tmp_path / "cli")])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def waiting_request(proxy: RunningProxy, after: int = 0, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = proxy.review_request("GET", "/v1/requests")
        assert status == 200, body
        found = [r for r in body if r["id"] > after]
        if found:
            return dict(found[0])
        time.sleep(0.05)
    raise AssertionError("no request waits for approval")


def count(url: str, where: str) -> int:
    return int(direct(url, f"SELECT count(*) FROM acct WHERE {where}")[0][0])  # type: ignore[call-overload]


def test_paused_statements_are_approved_and_rejected_with_the_cli(
        acct: str, make_proxy: Callable[..., RunningProxy], dbproxy: Callable[..., Result]) -> None:
    proxy = start(make_proxy, acct, rules=[PAUSE_DELETES], approval_timeout=120)
    db = dbname(acct)
    bot = Bot(proxy, db)
    try:
        waiter = bot.start("delete from acct where id = 5")
        req = waiting_request(proxy)["id"]
        assert count(acct, "id = 5") == 1  # nothing of it ran
        r = dbproxy(proxy, "requests")
        assert r.code == 0, r.err
        assert re.search(rf"^\s*{req}\s+{BOT}\s+\d+\s+{db}\s+waiting\s.*delete public\.acct\s+-\s*$", r.out,
                         re.M), r.out
        assert (f"#{req} (agent {BOT}, session {bot_session(proxy, req)}) waits because rules[0]: ask (pause) "
                "ddl-drop, delete, notify on * asks before delete public.acct") in r.out, r.out
        assert "  > delete from acct where id = 5" in r.out
        assert f"decide: dbproxy approve {req} [--scope once|session|permanent]; dbproxy reject {req}" in r.out
        [listed] = json.loads(dbproxy(proxy, "requests", "--json").out)
        assert (listed["id"], listed["state"], listed["statements"]) == (req, "waiting",
                                                                         ["delete from acct where id = 5"])

        # The agent's own identity may not decide its request (a reviewer named like the agent).
        for args in (("approve", str(req)), ("reject", str(req), "--reason", "mine")):
            r = dbproxy(proxy, *args, reviewer=BOT)
            assert r.code == 1 and r.out == "", r
            assert f"request #{req} is agent {BOT}'s own" in one_line(r.err)
        assert waiter.thread.is_alive()

        r = dbproxy(proxy, "approve", str(req), "--reason", "row 5 was a test row")
        assert (r.code, r.out.strip()) == (0, f"request #{req} approved by admin (once): row 5 was a test row"), r
        assert waiter.done().status == "DELETE 1", waiter.error
        assert f"dbproxy: request #{req} approved by admin (once): row 5 was a test row" in bot.notices
        assert count(acct, "id = 5") == 0, bot.notices  # committed at once: approved, and it can be undone
        assert not bot.held_ids(), bot.notices

        # Once means once: the next delete waits again, and is rejected.
        waiter = bot.start("delete from acct where id = 4")
        req2 = waiting_request(proxy, after=req)["id"]
        r = dbproxy(proxy, "reject", str(req2), "--reason", "ask the owner first")
        assert (r.code, r.out.strip()) == (0, f"request #{req2} rejected by admin: ask the owner first"), r
        waiter.done()
        assert isinstance(waiter.error, psycopg.errors.InsufficientPrivilege), waiter.error
        assert f"request #{req2} was rejected by admin: ask the owner first" in str(waiter.error)
        assert count(acct, "id = 4") == 1

        # A decided request cannot be decided again; an unknown one is unknown.
        r = dbproxy(proxy, "approve", str(req2))
        assert r.code == 1 and f"request #{req2} is not waiting any more: it was rejected by admin" in one_line(r.err)
        r = dbproxy(proxy, "reject", "987654", "--reason", "no")
        assert r.code == 1 and "no request #987654" in one_line(r.err)

        # A notification approved permanently: refused (no exact inverse), and the agent still waits.
        waiter = bot.start("notify scratch_changed")
        req3 = waiting_request(proxy, after=req2)["id"]
        r = dbproxy(proxy, "approve", str(req3), "--scope", "permanent")
        assert r.code == 2 and r.out == "", r
        assert "a permanent grant is refused: notify: a notification cannot be taken back once delivered" in \
            one_line(r.err)
        time.sleep(0.3)
        assert waiter.thread.is_alive()
        assert [x["id"] for x in json.loads(dbproxy(proxy, "requests", "--json").out)] == [req3]
        assert dbproxy(proxy, "reject", str(req3), "--reason", "keep it").code == 0
        assert isinstance(waiter.done().error, psycopg.errors.InsufficientPrivilege)

        r = dbproxy(proxy, "requests")
        assert (r.code, r.out.strip()) == (0, "no requests waiting for approval")
        r = dbproxy(proxy, "requests", "--all")
        assert re.search(rf"^\s*{req}\s+{BOT}\s.*approved\s.*admin \(once\)", r.out, re.M), r.out
        assert f"#{req} approved by admin: row 5 was a test row" in r.out
        assert f"#{req2} rejected by admin: ask the owner first" in r.out

        # `log` and `show` say which grant decided the committed delete.
        decided = json.loads(dbproxy(proxy, "requests", "--all", "--json").out)
        grant = next(x["grant"] for x in decided if x["id"] == req)
        # The approved delete committed without being held: journaled after the fact, in the background.
        [tx] = wait_until(lambda: [t for t in json.loads(dbproxy(proxy, "log", "--json").out)
                                   if t["agent"] == BOT and t["outcome"] == "committed"],
                          what="the approved delete in the journal")
        assert tx["decided_by"] == f"grant #{grant}"
        assert tx["policy"] == (f"allow: grant #{grant} (once, by admin): delete on public.acct allows "
                                "delete public.acct")
        r = dbproxy(proxy, "log")
        assert re.search(rf"^\s*{tx['id']}\s+{BOT}\s.*committed\s.*grant #{grant}\s+allow grant #{grant}\s", r.out,
                         re.M), r.out
        r = dbproxy(proxy, "show", str(tx["id"]))
        assert f"  policy: allow: grant #{grant} (once, by admin): delete on public.acct allows delete public.acct" \
            in r.out, r.out
    finally:
        bot.close()

    # The installed command says the same, with the same exit codes.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DBPROXY_")},
           "DBPROXY_ADMIN_TOKEN": proxy.token()}
    p = subprocess.run([sys.executable, "-m", "dbproxy", "approve", str(req2), "--admin", proxy.admin_url],
                       env=env, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 1 and "is not waiting any more" in one_line(p.stderr), p


def bot_session(proxy: RunningProxy, request_id: int) -> int:
    _, body = proxy.review_request("GET", "/v1/requests?all=1")
    return int(next(r["session"] for r in body if r["id"] == request_id))


def test_grants_are_given_listed_refused_and_revoked(acct: str, make_proxy: Callable[..., RunningProxy],
                                                     dbproxy: Callable[..., Result]) -> None:
    proxy = start(make_proxy, acct)
    bot = Bot(proxy, dbname(acct))
    try:
        r = dbproxy(proxy, "grant", BOT, "insert,update", "ON", "public.acct", "--scope", "permanent",
                    "--reason", "nightly import")
        assert r.code == 0, r
        m = re.fullmatch(rf"grant #(\d+): insert, update on public\.acct for agent {BOT} \(permanent\), granted by "
                         r"admin: nightly import", r.out.strip())
        assert m, r.out
        g = int(m.group(1))
        # In hold mode the grant lets the agent's insert commit at once (it can be undone).
        bot.conn.execute("insert into acct values (10, 1)")
        assert not bot.held_ids() and count(acct, "id = 10") == 1, bot.notices

        r = dbproxy(proxy, "grants")
        assert r.code == 0, r
        assert re.search(rf"^\s*{g}\s+{BOT}\s+permanent\s+insert, update\s+public\.acct\s+-\s+admin\s+.*active\s*$",
                         r.out, re.M), r.out
        assert f"#{g} granted by admin: nightly import" in r.out
        [listed] = json.loads(dbproxy(proxy, "grants", "--json").out)
        assert (listed["id"], listed["ops"], listed["objects"], listed["scope"]) == (g, ["insert", "update"],
                                                                                     ["public.acct"], "permanent")

        # Nothing without an exact inverse may be granted permanently: exit 2, the reason, one line.
        for ops, why in (("notify", "notify: a notification cannot be taken back once delivered"),
                         ("delete,function", "function: a function's effects are known only after it ran")):
            r = dbproxy(proxy, "grant", BOT, ops, "ON", "*", "--scope", "permanent")
            assert r.code == 2 and r.out == "", r
            assert f"a permanent grant is refused: {why}" in one_line(r.err)
        r = dbproxy(proxy, "grant", "nobody", "insert", "ON", "public.acct", "--scope", "permanent")
        assert r.code == 1 and f"no agent 'nobody' (agents: {BOT})" in one_line(r.err), r
        r = dbproxy(proxy, "grant", BOT, "insert", "ON", "public.acct", "--scope", "permanent", reviewer=BOT)
        assert r.code == 1 and f"agent {BOT}'s identity may not grant itself permissions" in one_line(r.err), r
        r = dbproxy(proxy, "grant", BOT, "delete", "ON", "public.acct", "--scope", "session", "--session", "99999")
        assert r.code == 1 and f"agent {BOT} has no session 99999 (its sessions now: " in one_line(r.err), r
        # Mistakes the command line finds itself: exit 2, one line, nothing sent.
        for args, why in ((("delete", "ON", "Public.Acct!", "--scope", "permanent"),
                           "malformed object pattern 'Public.Acct!'"),
                          (("remove", "ON", "acct", "--scope", "permanent"), "unknown operation class 'remove'"),
                          (("delete", "ON", "acct", "--scope", "session"), "--scope session needs --session N"),
                          (("delete", "ON", "acct", "--scope", "once"), "a once grant comes only with an approval")):
            r = dbproxy(proxy, "grant", BOT, *args)
            assert r.code == 2 and r.out == "" and why in one_line(r.err), r

        # A session grant with a row limit: one row commits at once, two are held as usual.
        session = bot.session()
        r = dbproxy(proxy, "grant", BOT, "delete", "ON", "acct", "--scope", "session", "--session", str(session),
                    "--max-rows", "1")
        m = re.fullmatch(rf"grant #(\d+): delete on acct up to 1 rows for agent {BOT} \(session {session}\), "
                         "granted by admin", r.out.strip())
        assert r.code == 0 and m, r
        h = int(m.group(1))
        bot.conn.execute("delete from acct where id = 1")
        assert count(acct, "id = 1") == 0 and not bot.held_ids()
        bot.conn.execute("delete from acct where id in (2, 3)")
        [held] = bot.held_ids()
        assert count(acct, "id in (2, 3)") == 2
        assert decide(proxy, held, "rollback")[0] == 200

        r = dbproxy(proxy, "revoke", str(g), "--reason", "import done")
        assert (r.code, r.out.strip()) == (0, f"grant #{g} revoked by admin: import done"), r
        bot.conn.execute("insert into acct values (11, 1)")
        [held] = bot.held_ids()[1:]
        assert count(acct, "id = 11") == 0  # held again: the grant is gone
        assert decide(proxy, held, "rollback")[0] == 200
        r = dbproxy(proxy, "revoke", str(g))
        assert r.code == 1 and f"grant #{g} has ended already (revoked by admin)" in one_line(r.err), r
        r = dbproxy(proxy, "revoke", "424242")
        assert r.code == 1 and "no grant #424242" in one_line(r.err), r

        r = dbproxy(proxy, "grants")
        assert re.search(rf"^\s*{h}\s+{BOT}\s+session {session}\s+delete\s+acct\s+1\s+admin", r.out, re.M), r.out
        assert not re.search(rf"^\s*{g}\s", r.out, re.M)
        r = dbproxy(proxy, "grants", "--all")
        assert re.search(rf"^\s*{g}\s+{BOT}\s+permanent\s.*revoked\s*$", r.out, re.M), r.out
        assert re.search(rf"#{g} revoked [\d-]+ [\d:]+ by admin: import done", r.out), r.out
    finally:
        bot.close()
    # The session grant ends with its session.
    deadline = time.monotonic() + 10
    while (r := dbproxy(proxy, "grants")).out.strip() != "no active grants":
        assert time.monotonic() < deadline, r.out
        time.sleep(0.1)
    r = dbproxy(proxy, "grants", "--all")
    assert re.search(rf"^\s*{h}\s+{BOT}\s+session {session}\s.*ended\s*$", r.out, re.M), r.out
    assert f"#{h} ended" in r.out and "the agent's session ended" in r.out


def test_commit_with_a_grant_covers_the_rest_of_the_session(acct: str, make_proxy: Callable[..., RunningProxy],
                                                           dbproxy: Callable[..., Result]) -> None:
    proxy = start(make_proxy, acct)
    bot, other = Bot(proxy, dbname(acct)), Bot(proxy, dbname(acct))
    try:
        bot.conn.execute("insert into acct values (20, 1)")
        [tx] = bot.held_ids()
        r = dbproxy(proxy, "commit", str(tx), "--grant", "session", "--reason", "inserts are fine today")
        assert r.code == 0, r
        first, second = r.out.strip().splitlines()
        assert first == f"#{tx} committed by admin: inserts are fine today"
        g = int(re.fullmatch(r"grant #(\d+) \(session\): the agent may do what #\d+ did for the rest of its session "
                             r"\(dbproxy grants; dbproxy revoke \d+\)", second).group(1))  # type: ignore[union-attr]
        assert count(acct, "id = 20") == 1

        bot.conn.execute("insert into acct values (21, 1)")  # the same session: committed by the grant
        assert bot.held_ids() == [tx] and count(acct, "id = 21") == 1, bot.notices
        # The journal is written behind the agent's back.
        [later] = wait_until(lambda: [t for t in json.loads(dbproxy(proxy, "log", "--json").out)
                                      if t["agent"] == BOT and t["decided_by"] == f"grant #{g}"],
                             what=f"the commit under grant #{g} in the journal")
        assert later["outcome"] == "committed" and later["id"] != tx
        r = dbproxy(proxy, "log")
        assert re.search(rf"^\s*{later['id']}\s+{BOT}\s.*committed\s.*\s+grant #{g}\s+allow grant #{g}\s", r.out,
                         re.M), r.out
        # Held before any grant: no rule or grant applied, the mode decided alone.
        assert re.search(rf"^\s*{tx}\s+{BOT}\s.*committed\s.*\s+admin\s+-\s", r.out, re.M), r.out
        r = dbproxy(proxy, "show", str(later["id"]))
        assert (f"policy: allow: grant #{g} (session, by admin): insert on public.acct allows insert public.acct"
                in r.out), r.out

        # Another session of the same agent is not covered. A permanent grant for a drop: allowed
        # where DDL capture is installed (the drop's inverse is exact), unlike a notification.
        other.conn.execute("insert into acct values (22, 1)")
        other.conn.execute("notify scratch_changed")
        [tx2] = other.held_ids()[:1]
        r = dbproxy(proxy, "commit", str(tx2), "--grant", "permanent")
        assert r.code == 2 and r.out == "", r
        assert (f"#{tx2} was not committed: a permanent grant is refused: notify: a notification cannot be taken "
                "back once delivered") in one_line(r.err)
        assert tx2 in [t["id"] for t in json.loads(dbproxy(proxy, "pending", "--json").out)]
        assert dbproxy(proxy, "rollback", str(tx2)).code == 0
        other.conn.execute("insert into acct values (22, 1)")
        other.conn.execute("drop table scratch")
        [tx3] = sorted(set(other.held_ids()) - {tx2})  # the notices still name the rolled-back #tx2
        assert count(acct, "id = 22") == 0
        r = dbproxy(proxy, "commit", str(tx3), "--grant", "permanent", "--json")
        decision = json.loads(r.out)
        assert r.code == 0 and decision["outcome"] == "committed" and isinstance(decision["grant"], int), r
        [granted] = [x for x in json.loads(dbproxy(proxy, "grants", "--json").out) if x["id"] == decision["grant"]]
        assert (granted["ops"], granted["objects"], granted["transaction"], granted["scope"]) == (
            ["ddl-drop", "insert"], ["public.acct", "public.scratch"], tx3, "permanent")
        assert count(acct, "id = 22") == 1
    finally:
        bot.close()
        other.close()


def test_offline_reader_shows_the_policy_of_v4_journals_and_reads_older_ones(
        pg: Postgres, dbproxy: Callable[..., Result]) -> None:
    name = f"state_{os.getpid()}_{os.urandom(3).hex()}"
    direct(pg.url, f'CREATE DATABASE "{name}"')
    url = pg.dsn(name)
    try:
        async def write() -> int:
            journal = await Journal.open(url, instance="offline-test")
            try:
                tx = await journal.start(agent=BOT, session=7, database="app", mode="hold", backend_pid=None,
                                         pending=True, policy="ask: rules[1]: ask (hold) delete on * asks before "
                                                              "delete public.orders")
                await journal.update(tx, outcome="rolled back", decided_by="dana", reason="not today")
                return tx
            finally:
                await journal.close()

        tx = asyncio.run(write())
        # With --state-database the journal is read directly: no proxy, no API.
        r = dbproxy(None, "log", "--state-database", url)
        assert r.code == 0, r.err
        assert re.search(rf"^\s*{tx}\s+{BOT}\s+app\s+hold\s+rolled back\s.*\sdana\s+ask rules\[1\]\s", r.out,
                         re.M), r.out
        r = dbproxy(None, "show", str(tx), "--state-database", url)
        assert "  policy: ask: rules[1]: ask (hold) delete on * asks before delete public.orders" in r.out, r.out

        # A journal from before version 4 has no policy column: it reads as none.
        direct(url, "ALTER TABLE dbproxy.transactions DROP COLUMN policy")
        direct(url, "UPDATE dbproxy.schema_version SET version = 3 WHERE component = 'journal'")
        r = dbproxy(None, "log", "--json", "--state-database", url)
        assert r.code == 0, r.err
        [old] = json.loads(r.out)
        assert old["id"] == tx and old["policy"] is None and old["decided_by"] == "dana"
        r = dbproxy(None, "log", "--state-database", url)
        assert re.search(rf"^\s*{tx}\s+{BOT}\s.*\sdana\s+-\s", r.out, re.M), r.out
        r = dbproxy(None, "show", str(tx), "--state-database", url)
        assert r.code == 0 and "decided by dana: not today" in r.out and "policy:" not in r.out, r
    finally:
        direct(pg.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_reload_applies_new_agents_and_rules_or_changes_nothing(pg: Postgres, tmp_path: Path) -> None:
    config = tmp_path / "dbproxy.toml"
    base = f'mode = "hold"\nsandbox = "local"\nsandbox_dir = "{SANDBOX_DIR.get("path", tmp_path / "sandbox")}"\n' \
           f'[agents.{BOT}]\npassword = "{BOT_PASSWORD}"\n'
    config.write_text(base)
    config.chmod(0o600)
    data = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBPROXY_")}
    served = Served(data, "--upstream", pg.url, "--config", str(config), env=env)

    def reload() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dbproxy", "reload", "--admin", served.admin, "--data-dir",
                               str(data)], env=env, capture_output=True, text=True, timeout=60, check=False)

    try:
        config.write_text(base + '[agents.helper]\npassword = "helper-pw"\n'
                                 '[[rules]]\nops = ["delete"]\nobjects = ["*"]\ndecision = "deny"\n')
        r = reload()
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[:3] == ["settings reloaded; sessions and held transactions carry on",
                                             "  agents added: helper", "  rules in effect: 1"], r.stdout
        with psycopg.connect(f"postgresql://helper:helper-pw@127.0.0.1:{served.port}/postgres",
                             autocommit=True) as helper:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="rules\\[0\\]: deny delete"):
                helper.execute("delete from pg_namespace_no_such_table")

        config.write_text(base + '[[rules]]\nops = ["frobnicate"]\ndecision = "deny"\n')
        r = reload()
        assert r.returncode == 2 and r.stdout == "", r
        assert "the settings were not reloaded" in one_line(r.stderr) and "frobnicate" in r.stderr
        with psycopg.connect(f"postgresql://helper:helper-pw@127.0.0.1:{served.port}/postgres", autocommit=True):
            pass  # still an agent: nothing changed
    finally:
        code, err = served.stop()
        assert code == 0, err


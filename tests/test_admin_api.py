"""The admin HTTP API (`dbproxy.review.api`) and the reviewer CLI (`dbproxy.review.cli`) on top of it.

They are tested here against `MemoryReviewService`, a small in-memory implementation of our own
`ReviewService` interface (not a stand-in for PostgreSQL): it pins down the HTTP layer, auth, error
mapping, the OpenAPI document and the CLI's output. End-to-end tests with the proxy's real service
over PostgreSQL live with the hold-mode tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import TypeAdapter

from dbproxy import cli
from dbproxy.auth import reviewers
from dbproxy.auth.reviewers import Reviewers
from dbproxy.journal.records import StatementRecord, TransactionRecord
from dbproxy.review.api import AdminServer, load_or_create_token, openapi_document
from dbproxy.review.models import BlockedSession, Decision, RowChange, TableDiff, TransactionDetail
from dbproxy.review.service import ReviewError

TOKEN = "test-token-0123456789"
RECORDS = TypeAdapter(list[TransactionRecord])
T0 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


def _record(id: int, agent: str, outcome: str, **kw: Any) -> TransactionRecord:
    defaults: dict[str, Any] = dict(
        id=id, agent=agent, session=id * 10, database="app", mode="hold", backend_pid=4000 + id,
        started_at=T0 + timedelta(minutes=id), outcome=outcome, statements=2, agent_transactions=1,
    )
    defaults.update(kw)
    return TransactionRecord(**defaults)


class MemoryReviewService:
    """Our ReviewService interface over a dict, with a few scripted failures."""

    def __init__(self) -> None:
        now = datetime.now(UTC)
        self.records: dict[int, TransactionRecord] = {
            1: _record(1, "coder", "pending", held_at=now - timedelta(minutes=3), xid=777,
                       statements=3, agent_transactions=2),
            2: _record(2, "coder", "pending", held_at=now - timedelta(seconds=40)),
            3: _record(3, "analyst", "committed", held_at=T0, ended_at=T0 + timedelta(hours=1),
                       decided_by="bob", reason=None),
            4: _record(4, "analyst", "rolled back", ended_at=T0 + timedelta(hours=2), decided_by="agent"),
            5: _record(5, "coder", "pending", held_at=now),  # its COMMIT fails upstream
            666: _record(666, "coder", "pending", held_at=now),  # the service breaks
        }
        self.details: dict[int, TransactionDetail] = {
            1: TransactionDetail(
                transaction=self.records[1],
                statements=[
                    StatementRecord(seq=1, tx_no=1, sql="insert into notes (body) values ('hi'), ('yo')",
                                    tag="INSERT 0 2", rows=2, at=T0),
                    StatementRecord(seq=2, tx_no=2, sql="update notes set body = 'bye' where id = 7",
                                    tag="UPDATE 1", rows=1, at=T0),
                    StatementRecord(seq=3, tx_no=2, sql="select '[red]not markup[/red]' from nowhere",
                                    sqlstate="42P01", error='relation "nowhere" does not exist', at=T0),
                ],
                diff=[
                    TableDiff(table="public.notes", inserted=2, updated=1, deleted=0, truncated=False, rows=[
                        RowChange(kind="insert", key={"id": 8}, after={"id": 8, "body": "hi"}),
                        RowChange(kind="insert", key={"id": 9}, after={"id": 9, "body": "yo"}),
                        RowChange(kind="update", key={"id": 7}, before={"body": "old"}, after={"body": "bye"}),
                    ]),
                    TableDiff(table='public."Audit Log"', deleted=40, truncated=True, rows=[
                        RowChange(kind="delete", before={"n": 1, "what": None}),
                    ]),
                ],
                blocking=[BlockedSession(pid=4242, user="app", application_name="psql", state="active",
                                         query="update notes\n   set body = 'x'", waiting_seconds=12.4)],
                agent_connected=True,
                agent_in_transaction=False,
                expires_at=now + timedelta(minutes=30),
            ),
        }
        self.log_calls: list[dict[str, Any]] = []
        self.show_calls: list[dict[str, Any]] = []
        self.reasons: list[str | None] = []
        self.problems: list[str] = []  # what `health` reports

    async def pending(self) -> list[TransactionRecord]:
        return sorted((r for r in self.records.values() if r.outcome in ("open", "pending")), key=lambda r: r.id)

    def _get(self, tx_id: int) -> TransactionRecord:
        if tx_id == 666:
            raise RuntimeError("secret internal detail")
        try:
            return self.records[tx_id]
        except KeyError:
            raise ReviewError(404, f"no transaction #{tx_id}") from None

    async def show(self, tx_id: int, *, offset: int = 0, limit: int = 50,
                   table: str | None = None, summary_wait: float = 0.0) -> TransactionDetail:
        self.show_calls.append(dict(offset=offset, limit=limit, table=table))
        record = self._get(tx_id)
        return self.details.get(tx_id) or TransactionDetail(transaction=record, statements=[],
                                                            diff_note="not computed in this test")

    async def _decide(self, tx_id: int, reviewer: str, outcome: str, reason: str | None = None) -> Decision:
        record = self._get(tx_id)
        if record.outcome not in ("open", "pending"):
            raise ReviewError(409, f"transaction #{tx_id} is already {record.outcome}")
        if tx_id == 5 and outcome == "committed":
            record.outcome, record.decided_by = "failed", reviewer
            raise ReviewError(502, "could not serialize access due to concurrent update", sqlstate="40001")
        record.outcome, record.decided_by, record.reason = outcome, reviewer, reason  # type: ignore[assignment]
        return Decision(id=tx_id, outcome=outcome, decided_by=reviewer, reason=reason)  # type: ignore[arg-type]

    async def commit(self, tx_id: int, reviewer: str, *, reason: str | None = None,
                     grant: str | None = None) -> Decision:
        self.reasons.append(reason)
        return await self._decide(tx_id, reviewer, "committed", reason)

    async def rollback(self, tx_id: int, reviewer: str, *, reason: str | None = None) -> Decision:
        self.reasons.append(reason)
        return await self._decide(tx_id, reviewer, "rolled back", reason)

    async def log(self, *, outcome: str | None = None, agent: str | None = None, limit: int = 100,
                  before_id: int | None = None, **filters: Any) -> list[TransactionRecord]:
        self.log_calls.append(dict(outcome=outcome, agent=agent, limit=limit, before_id=before_id,
                                   **{k: v for k, v in filters.items() if v is not None}))
        rows = [r for r in sorted(self.records.values(), key=lambda r: -r.id)
                if (outcome is None or r.outcome == outcome) and (agent is None or r.agent == agent)
                and (before_id is None or r.id < before_id)]
        return rows[:limit]

    async def health(self) -> list[str]:
        return list(self.problems)


class Api:
    def __init__(self, service: MemoryReviewService, server: AdminServer, http: aiohttp.ClientSession,
                 store: Path) -> None:
        self.service = service
        self.server = server
        self.http = http
        self.store = store  # the data directory holding reviewers.json
        host, port = server.address or ("", 0)
        self.admin = f"{host}:{port}"
        self.base = f"http://{self.admin}"

    async def call(self, method: str, path: str, *, token: str | None = TOKEN, **kw: Any) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.base + path, headers=headers, **kw) as resp:
            assert resp.content_type == "application/json", (resp.status, await resp.text())
            return resp.status, await resp.json()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DBPROXY_ADMIN_TOKEN", "DBPROXY_ADMIN", "DBPROXY_CONFIG", "DBPROXY_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def api(clean_env: None, tmp_path: Path) -> AsyncIterator[Api]:
    service = MemoryReviewService()
    store = tmp_path / "reviewer-store"
    server = AdminServer(service, TOKEN, host="127.0.0.1", port=0, reviewers=Reviewers(store, TOKEN))
    host, port = await server.start()
    assert host == "127.0.0.1" and port > 0
    try:
        async with aiohttp.ClientSession() as http:
            yield Api(service, server, http, store)
    finally:
        await server.stop()


# --- auth --------------------------------------------------------------------------------------


async def test_health_needs_no_token(api: Api):
    assert await api.call("GET", "/v1/health", token=None) == (200, {"status": "ok"})


@pytest.mark.parametrize("path", ["/v1/pending", "/v1/transactions", "/v1/transactions/1", "/openapi.json",
                                  "/v1/no-such-thing"])
async def test_everything_else_needs_the_token(api: Api, path: str):
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Bearer {TOKEN}x"}):
        async with api.http.get(api.base + path, headers=headers) as resp:
            assert resp.status == 401, headers
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            body = await resp.json()
            assert TOKEN not in json.dumps(body)
            assert body["error"]
    async with api.http.post(api.base + "/v1/transactions/1/commit") as resp:
        assert resp.status == 401
    assert api.service.records[1].outcome == "pending"
    status, _ = await api.call("GET", path)
    assert status == (404 if "no-such" in path else 200)


async def test_unknown_route_and_method_are_json(api: Api):
    status, body = await api.call("GET", "/v2/pending")
    assert status == 404 and "no such endpoint" in body["error"]
    status, body = await api.call("GET", "/v1/transactions/1/commit")
    assert status == 405 and "POST" in body["error"]


# --- endpoints ---------------------------------------------------------------------------------


async def test_pending_list_round_trips(api: Api):
    status, body = await api.call("GET", "/v1/pending")
    assert status == 200
    assert RECORDS.validate_python(body) == await api.service.pending()
    assert [r["id"] for r in body] == [1, 2, 5, 666]
    assert body[0]["started_at"].startswith("2026-11-20T09:31:00")


async def test_log_passes_filters_and_validates_them(api: Api):
    status, body = await api.call("GET", "/v1/transactions")
    assert status == 200 and [r["id"] for r in body] == [666, 5, 4, 3, 2, 1]
    assert api.service.log_calls[-1] == dict(outcome=None, agent=None, limit=100, before_id=None)

    status, body = await api.call("GET", "/v1/transactions",
                                  params={"outcome": "rolled back", "agent": "analyst", "limit": "5", "before": "10"})
    assert status == 200
    assert RECORDS.validate_python(body) == [api.service.records[4]]
    assert api.service.log_calls[-1] == dict(outcome="rolled back", agent="analyst", limit=5, before_id=10)

    status, body = await api.call("GET", "/v1/transactions", params={"outcome": "pending"})
    assert [r["id"] for r in body] == [666, 5, 2, 1]

    for params, word in (({"outcome": "done"}, "outcome"), ({"limit": "0"}, "limit"), ({"limit": "abc"}, "limit"),
                         ({"limit": "100000"}, "limit"), ({"before": "-3"}, "before"), ({"before": "1e3"}, "before")):
        status, body = await api.call("GET", "/v1/transactions", params=params)
        assert status == 400, params
        assert word in body["error"]


async def test_show_round_trips(api: Api):
    status, body = await api.call("GET", "/v1/transactions/1")
    assert status == 200
    assert TransactionDetail.model_validate(body) == api.service.details[1]
    status, body = await api.call("GET", "/v1/transactions/3")
    assert status == 200 and body["transaction"]["outcome"] == "committed" and body["diff"] is None


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "1.5", "99999999999999999999", "%C2%B2"])
async def test_bad_id_is_400(api: Api, bad: str):
    for method, path in (("GET", f"/v1/transactions/{bad}"), ("POST", f"/v1/transactions/{bad}/commit"),
                         ("POST", f"/v1/transactions/{bad}/rollback")):
        status, body = await api.call(method, path)
        assert status == 400, (method, path)
        assert "positive integer" in body["error"]


async def test_review_errors_map_to_status_and_sqlstate(api: Api):
    assert await api.call("GET", "/v1/transactions/42") == (404, {"error": "no transaction #42", "sqlstate": None})
    assert (await api.call("POST", "/v1/transactions/42/commit"))[0] == 404
    assert await api.call("POST", "/v1/transactions/3/rollback") == (
        409, {"error": "transaction #3 is already committed", "sqlstate": None})
    assert await api.call("POST", "/v1/transactions/5/commit") == (
        502, {"error": "could not serialize access due to concurrent update", "sqlstate": "40001"})


async def test_unexpected_errors_are_500_without_details(api: Api):
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("dbproxy")
    handler = Keep()
    logger.addHandler(handler)
    try:
        status, body = await api.call("GET", "/v1/transactions/666")
    finally:
        logger.removeHandler(handler)
    assert status == 500
    assert "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    assert body["error"].startswith("internal error")
    [rec] = [r for r in records if r.getMessage() == "admin.error"]
    assert rec.fields["path"] == "/v1/transactions/666"  # type: ignore[attr-defined]
    assert rec.exc_info and "secret internal detail" in str(rec.exc_info[1])


async def test_decisions_are_recorded_under_the_tokens_reviewer(api: Api):
    alice = reviewers.add(api.store, "alice")
    carol = reviewers.add(api.store, "carol")
    status, body = await api.call("POST", "/v1/transactions/1/commit", token=alice, json={"reason": "looks right"})
    assert status == 200
    assert Decision.model_validate(body) == Decision(id=1, outcome="committed", decided_by="alice",
                                                     reason="looks right")
    assert api.service.records[1].reason == "looks right"
    # Naming someone else (body or header) is refused, not believed, and decides nothing.
    status, body = await api.call("POST", "/v1/transactions/2/rollback", token=carol, json={"reviewer": "alice"})
    assert status == 403 and "belongs to reviewer 'carol'" in body["error"]
    status, body = await api.call("POST", "/v1/transactions/2/rollback", token=carol,
                                  headers={"X-Dbproxy-Reviewer": "mallory"})
    assert status == 403
    assert api.service.records[2].outcome == "pending"
    # Naming oneself is fine; the admin token is the reviewer "admin".
    status, body = await api.call("POST", "/v1/transactions/2/rollback", token=carol, json={"reviewer": "carol"})
    assert (status, body["outcome"], body["decided_by"]) == (200, "rolled back", "carol")
    api.service.records[2].outcome = "pending"
    status, body = await api.call("POST", "/v1/transactions/2/rollback", data=b"{}")
    assert (status, body["decided_by"]) == (200, "admin")
    # Already decided.
    status, body = await api.call("POST", "/v1/transactions/1/rollback")
    assert status == 409 and "already committed" in body["error"]


async def test_a_removed_reviewers_token_stops_working(api: Api):
    token = reviewers.add(api.store, "erin")
    assert (await api.call("GET", "/v1/pending", token=token))[0] == 200
    assert reviewers.remove(api.store, "erin")
    status, body = await api.call("GET", "/v1/pending", token=token)
    assert status == 401 and "refused" in body["error"]
    status, _ = await api.call("POST", "/v1/transactions/1/commit", token=token)
    assert status == 401 and api.service.records[1].outcome == "pending"
    # Another reviewer's token is not this one: a made-up token is refused too.
    assert (await api.call("GET", "/v1/pending", token="dbpr_" + "x" * 43))[0] == 401


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"reviewer": 3}', b'{"reviewer": ""}',
                                     b'{"reviewer": "a\\nb"}', b'{"who": "x"}', b'{"reviewer": "' + b"x" * 300 + b'"}',
                                     b'{"reason": 5}', b'{"reason": "' + b"x" * 3000 + b'"}'])
async def test_bad_decision_body_is_400(api: Api, payload: bytes):
    status, body = await api.call("POST", "/v1/transactions/1/commit", data=payload,
                                  headers={"Content-Type": "application/json"})
    assert status == 400, body
    assert api.service.records[1].outcome == "pending"


async def test_oversized_body_is_refused(api: Api):
    status, _ = await api.call("POST", "/v1/transactions/1/commit", data=b" " * (1024 * 1024))
    assert status == 413
    assert api.service.records[1].outcome == "pending"


# --- OpenAPI -----------------------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


async def test_openapi_document_is_complete_and_resolves(api: Api):
    status, doc = await api.call("GET", "/openapi.json")
    assert status == 200
    assert doc == json.loads(json.dumps(openapi_document()))
    assert doc["openapi"].startswith("3.1.")
    assert {"title", "version"} <= set(doc["info"])
    expected = {
        "/v1/health": {"get"}, "/v1/pending": {"get"}, "/v1/transactions": {"get"},
        "/v1/transactions/{id}": {"get"}, "/v1/transactions/{id}/commit": {"post"},
        "/v1/transactions/{id}/rollback": {"post"}, "/v1/transactions/{id}/undo": {"post"},
        "/v1/transactions/{id}/redo": {"post"}, "/v1/transactions/{id}/verify": {"post"},
        "/openapi.json": {"get"},
        # the policy (dbproxy.review.policy_api)
        "/v1/grants": {"get", "post"}, "/v1/grants/{id}/revoke": {"post"}, "/v1/requests": {"get"},
        "/v1/requests/{id}/approve": {"post"}, "/v1/requests/{id}/reject": {"post"}, "/v1/reload": {"post"},
    }
    assert {path: set(ops) for path, ops in doc["paths"].items()} == expected
    refs = _refs(doc)
    assert refs
    for ref in refs:
        assert isinstance(_resolve(doc, ref), dict)
    schemas = doc["components"]["schemas"]
    for name in ("TransactionRecord", "TransactionDetail", "StatementRecord", "TableDiff", "RowChange",
                 "BlockedSession", "Decision", "DecisionRequest", "ErrorBody", "GrantRecord", "GrantBody",
                 "RequestRecord", "ApproveBody", "ReasonBody", "ReloadReport"):
        assert name in schemas and "$defs" not in schemas[name]
    assert "$defs" not in json.dumps(doc)
    op_ids = []
    for path, ops in doc["paths"].items():
        for op in ops.values():
            op_ids.append(op["operationId"])
            assert op["responses"] and all(re.fullmatch(r"[1-5]\d\d", code) for code in op["responses"])
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), path
    assert len(op_ids) == len(set(op_ids))
    assert doc["paths"]["/v1/health"]["get"]["security"] == []
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


# --- the server itself -------------------------------------------------------------------------


def test_runs_on_uvloop_and_stops_cleanly():
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        server = AdminServer(MemoryReviewService(), TOKEN, host="127.0.0.1", port=0)
        host, port = await server.start()
        async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/v1/pending",
                                                            headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200 and len(await r.json()) == 4
        await server.stop()
        with socket.socket() as s:  # the port is free again
            s.bind((host, port))

    uvloop.run(main())


async def test_start_fails_cleanly_on_a_busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        server = AdminServer(MemoryReviewService(), TOKEN, host="127.0.0.1", port=s.getsockname()[1])
        with pytest.raises(OSError):
            await server.start()
        await server.stop()


# --- the token file ----------------------------------------------------------------------------


def test_token_file_is_created_private_and_reused(tmp_path: Path):
    data = tmp_path / "state"
    token = load_or_create_token(data, None)
    path = data / "admin-token"
    assert len(token) >= 40
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().strip() == token
    assert load_or_create_token(data, None) == token
    assert [p.name for p in data.iterdir()] == ["admin-token"]  # no temporary files left
    # A configured token wins and touches no file.
    other = tmp_path / "other"
    assert load_or_create_token(other, "from-config") == "from-config"
    assert not other.exists()
    with pytest.raises(ValueError, match="empty"):
        load_or_create_token(other, "  ")


def test_token_file_created_once_under_concurrency(tmp_path: Path):
    results: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(load_or_create_token(tmp_path, None))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert (tmp_path / "admin-token").read_text().strip() == results[0]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_refuses_a_token_file_others_can_read(tmp_path: Path, mode: int):
    path = tmp_path / "admin-token"
    path.write_text("some-token\n")
    os.chmod(path, mode)
    with pytest.raises(ValueError, match=r"chmod 600"):
        load_or_create_token(tmp_path, None)
    os.chmod(path, 0o600)
    assert load_or_create_token(tmp_path, None) == "some-token"


def test_refuses_an_empty_token_file(tmp_path: Path):
    path = tmp_path / "admin-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    with pytest.raises(ValueError, match="empty"):
        load_or_create_token(tmp_path, None)


# --- the CLI -----------------------------------------------------------------------------------


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_cli_pending_table_and_json(api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    common = ("--admin", api.admin, "--admin-token", TOKEN, "--data-dir", str(tmp_path))
    code, out, err = await _cli(capsys, "pending", *common)
    assert code == 0, err
    for fact in ("ID", "AGENT", "DATABASE", "OUTCOME", "AGENT TXS", "coder", "app", "hold", "pending", "3m 0"):
        assert fact in out, fact
    lines = [line for line in out.splitlines() if re.match(r"\s*1\s", line)]
    assert len(lines) == 1 and " 3 " in lines[0] and " 2 " in lines[0]  # statements, agent transactions
    assert "\x1b[" not in out  # no colours when not a terminal

    code, out, err = await _cli(capsys, "pending", "--json", *common)
    assert code == 0, err
    assert RECORDS.validate_python(json.loads(out)) == await api.service.pending()

    api.service.records = {k: v for k, v in api.service.records.items() if v.outcome != "pending"}
    code, out, _ = await _cli(capsys, "pending", *common)
    assert code == 0 and "no pending transactions" in out


async def test_cli_show(api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    code, out, err = await _cli(capsys, "show", "1", "--admin", api.admin, "--admin-token", TOKEN,
                                "--data-dir", str(tmp_path))
    assert code == 0, err
    expected = [
        "#1", "pending", "agent coder", "database app", "backend pid 4001", "xid 777",
        "3 statements in 2 agent transactions", "agent connected, idle", "expires",
        "agent transaction 1", "agent transaction 2",
        "insert into notes (body) values ('hi'), ('yo')", "INSERT 0 2", "UPDATE 1",
        "ERROR 42P01", 'relation "nowhere" does not exist', "[red]not markup[/red]",
        "public.notes", "2 inserted, 1 updated, 0 deleted", "+ insert id=8, body='hi'",
        "~ update id=7  body: 'old' → 'bye'",
        'public."Audit Log"', "- delete n=1, what=NULL",
        """… rows 1–1 of 40; next: dbproxy show 1 --table 'public."Audit Log"' --offset 1""",
        "blocking: pid 4242 (app, psql, active) (waiting 12 s): update notes set body = 'x'",
    ]
    for fact in expected:
        assert fact in out, fact
    assert out.index("agent transaction 1") < out.index("INSERT 0 2") < out.index("agent transaction 2")
    assert out.index("agent transaction 2") < out.index("UPDATE 1")

    code, out, err = await _cli(capsys, "show", "1", "--json", "--admin", api.admin, "--admin-token", TOKEN,
                                "--data-dir", str(tmp_path))
    assert code == 0, err
    assert TransactionDetail.model_validate(json.loads(out)) == api.service.details[1]

    code, out, err = await _cli(capsys, "show", "3", "--admin", api.admin, "--admin-token", TOKEN,
                                "--data-dir", str(tmp_path))
    assert code == 0, err
    assert "committed" in out and "decided by bob" in out and "not computed in this test" in out


async def test_cli_commit_rollback_and_errors(api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch):
    common = ("--admin", api.admin, "--admin-token", TOKEN, "--data-dir", str(tmp_path))
    alice = reviewers.add(api.store, "alice")
    code, out, err = await _cli(capsys, "commit", "1", "--reason", "checked the rows", "--admin", api.admin,
                                "--admin-token", alice, "--data-dir", str(tmp_path))
    assert (code, out.strip()) == (0, "#1 committed by alice: checked the rows"), err
    assert (api.service.records[1].decided_by, api.service.records[1].reason) == ("alice", "checked the rows")

    # $USER no longer names the reviewer: the token does.
    monkeypatch.setenv("USER", "dana")
    code, out, err = await _cli(capsys, "rollback", "2", "--json", *common)
    assert code == 0, err
    assert Decision.model_validate(json.loads(out)) == Decision(id=2, outcome="rolled back", decided_by="admin")
    with pytest.raises(SystemExit) as exc:  # --reviewer is gone: the token decides who decides
        await _cli(capsys, "commit", "1", "--reviewer", "alice", *common)
    assert exc.value.code == 2

    code, out, err = await _cli(capsys, "commit", "1", *common)
    assert code == 1 and out == ""
    assert "transaction #1 is already committed" in err

    code, _, err = await _cli(capsys, "commit", "5", *common)
    assert code == 1
    assert "could not serialize access" in err and "SQLSTATE 40001" in err

    code, _, err = await _cli(capsys, "show", "42", *common)
    assert code == 1 and "no transaction #42" in err

    code, _, err = await _cli(capsys, "show", "666", *common)
    assert code == 1 and "internal error" in err and "secret" not in err


async def test_cli_log_filters(api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    common = ("--admin", api.admin, "--admin-token", TOKEN, "--data-dir", str(tmp_path))
    code, out, err = await _cli(capsys, "log", "--outcome", "rolled back", "--agent", "analyst", "--limit", "7",
                                *common)
    assert code == 0, err
    assert api.service.log_calls[-1] == dict(outcome="rolled back", agent="analyst", limit=7, before_id=None)
    assert "rolled back" in out and "analyst" in out and "DECIDED BY" in out

    code, out, err = await _cli(capsys, "log", "--json", "--before", "4", *common)
    assert code == 0, err
    assert [r["id"] for r in json.loads(out)] == [3, 2, 1]

    code, out, _ = await _cli(capsys, "log", "--agent", "nobody", *common)
    assert code == 0 and "no transactions" in out

    with pytest.raises(SystemExit) as exc:
        cli.main(["log", "--limit", "0", *common])
    assert exc.value.code == 2


async def test_cli_token_sources(api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch):
    # The data directory's token file, as `dbproxy serve` writes it.
    data = tmp_path / "state"
    data.mkdir()
    fd = os.open(data / "admin-token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, TOKEN.encode() + b"\n")
    os.close(fd)
    code, out, err = await _cli(capsys, "pending", "--admin", api.admin, "--data-dir", str(data))
    assert code == 0, err
    # The environment, and the admin address from the environment too.
    monkeypatch.setenv("DBPROXY_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("DBPROXY_ADMIN", api.admin)
    code, out, err = await _cli(capsys, "pending", "--data-dir", str(tmp_path / "empty"))
    assert code == 0, err
    # The `admin_token` setting from a config file.
    monkeypatch.delenv("DBPROXY_ADMIN_TOKEN")
    config = tmp_path / "dbproxy.toml"
    config.write_text(f'admin_token = "{TOKEN}"\n')
    config.chmod(0o600)
    code, out, err = await _cli(capsys, "pending", "--config", str(config), "--data-dir", str(tmp_path / "empty"))
    assert code == 0, err
    monkeypatch.setenv("DBPROXY_ADMIN_TOKEN", TOKEN)
    # A wrong token.
    code, out, err = await _cli(capsys, "pending", "--admin-token", "wrong", "--data-dir", str(tmp_path))
    assert (code, out) == (2, "") and "the admin token was refused" in err and "wrong" not in err
    # None at all.
    monkeypatch.delenv("DBPROXY_ADMIN_TOKEN")
    code, _, err = await _cli(capsys, "pending", "--data-dir", str(tmp_path / "empty"))
    assert code == 2 and "no admin token" in err
    # A token file others can read.
    os.chmod(data / "admin-token", 0o644)
    code, _, err = await _cli(capsys, "pending", "--data-dir", str(data))
    assert code == 2 and "chmod 600" in err


async def test_cli_unreachable_api(capsys: pytest.CaptureFixture[str], tmp_path: Path, clean_env: None):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        code, out, err = await _cli(capsys, "pending", "--admin", f"127.0.0.1:{port}", "--admin-token", TOKEN,
                                    "--data-dir", str(tmp_path))
    assert code == 2 and out == ""
    assert f"cannot reach the review API at 127.0.0.1:{port} (is `dbproxy serve` running?)" in err

    code, _, err = await _cli(capsys, "pending", "--admin", "nonsense", "--admin-token", TOKEN,
                              "--data-dir", str(tmp_path))
    assert code == 2 and "admin" in err


async def test_cli_ignores_http_proxy_environment(api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen()
        for name in ("http_proxy", "HTTP_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{trap.getsockname()[1]}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        code, _, err = await _cli(capsys, "pending", "--admin", api.admin, "--admin-token", TOKEN,
                                  "--data-dir", str(tmp_path))
        assert code == 0, err
        trap.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            conn, _ = trap.accept()
            conn.close()
            raise AssertionError("the CLI sent the admin token through an HTTP proxy")


async def test_show_pages_the_diff_and_validates_paging(api: Api, capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path):
    status, _ = await api.call("GET", "/v1/transactions/1", params={"offset": "100", "limit": "500",
                                                                    "table": "public.notes"})
    assert status == 200
    assert api.service.show_calls[-1] == dict(offset=100, limit=500, table="public.notes")
    status, _ = await api.call("GET", "/v1/transactions/1")
    assert api.service.show_calls[-1] == dict(offset=0, limit=50, table=None)
    for bad in ({"limit": "0"}, {"limit": "1001"}, {"offset": "-1"}, {"offset": "x"}, {"table": "t" * 1001}):
        status, body = await api.call("GET", "/v1/transactions/1", params=bad)
        assert status == 400 and body["error"], bad
    code, _, err = await _cli(capsys, "show", "1", "--offset", "50", "--limit", "25", "--table", "public.notes",
                              "--admin", api.admin, "--admin-token", TOKEN, "--data-dir", str(tmp_path))
    assert code == 0, err
    assert api.service.show_calls[-1] == dict(offset=50, limit=25, table="public.notes")
    with pytest.raises(SystemExit) as exited:
        await _cli(capsys, "show", "1", "--offset", "x3", "--admin", api.admin, "--admin-token", TOKEN,
                   "--data-dir", str(tmp_path))
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "offset must be a non-negative integer" in err and "Traceback" not in err


async def test_decisions_carry_a_reason(api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    status, body = await api.call("POST", "/v1/transactions/2/rollback", token=reviewers.add(api.store, "bob"),
                                  json={"reviewer": "bob", "reason": "  drops the\nwrong   rows "})
    assert status == 200 and body["outcome"] == "rolled back"
    assert api.service.reasons[-1] == "drops the wrong rows"
    status, body = await api.call("POST", "/v1/transactions/1/commit", json={"reason": "x" * 2001})
    assert status == 400 and "reason" in body["error"]
    code, _, err = await _cli(capsys, "commit", "1", "--reason", "checked with ops", "--admin", api.admin,
                              "--admin-token", TOKEN, "--data-dir", str(tmp_path))
    assert code == 0, err
    assert api.service.reasons[-1] == "checked with ops"

"""The hold-mode planner and router on their own (sans-IO): what goes upstream for a client
request and what the agent gets back. End-to-end behaviour against PostgreSQL is in
test_hold.py; these pin the rewriting rules so a change to them is a deliberate one."""

from __future__ import annotations

from dbproxy.hold.protocol import (
    IDENTITY_COUNT_SQL,
    AgentTx,
    HoldState,
    PreparedStatements,
    Router,
    guard_sql,
    plan_extended,
    plan_query,
)
from dbproxy.protocol.framing import Frame, FrameScanner, frame
from dbproxy.protocol.messages import (
    Bind,
    CommandComplete,
    ErrorResponse,
    Execute,
    Parse,
    ReadyForQuery,
    Sync,
    decode_backend,
    decode_frontend,
)

GUARD = guard_sql("")
COUNT = IDENTITY_COUNT_SQL  # the role-catalog count the guard compares with (guard_sql)


def upstream_sql(data: bytes) -> list[str]:
    """The SQL texts of the Query and Parse messages the proxy sends upstream."""
    out = []
    for item in FrameScanner().feed(data):
        assert isinstance(item, Frame)
        m = decode_frontend(item)
        if isinstance(m, Parse):
            out.append(m.sql)
        elif hasattr(m, "sql"):
            out.extend(s.strip() for s in m.sql.split("\n;\n"))  # type: ignore[attr-defined]
    return out


def client_view(data: bytes) -> list[object]:
    return [decode_backend(f) for f in FrameScanner().feed(data) if isinstance(f, Frame)]


def answer(router: Router, *frames: bytes) -> list[object]:
    items = FrameScanner(decode=None).feed(b"".join(frames))
    return client_view(router.feed(items))


def cc(tag: str) -> bytes:
    return CommandComplete(tag).encode()


def row(value: str) -> bytes:
    """One single-column row and its CommandComplete, as a CAPTURE statement's answer."""
    return (frame(b"T", b"\x00\x01x\x00" + bytes(18)) + frame(b"D", b"\x00\x01" + len(value).to_bytes(4, "big")
                                                                 + value.encode()) + cc("SELECT 1"))


def z(status: str) -> bytes:
    return ReadyForQuery(status).encode()


def test_reads_outside_a_chain_pass_through_untouched() -> None:
    plan = plan_query(HoldState(), "select 1; show search_path")
    assert plan.passthrough and upstream_sql(plan.upstream) == ["select 1; show search_path"]


def test_a_write_opens_the_chain_in_a_savepoint_and_probes_the_xid() -> None:
    plan = plan_query(HoldState(), "insert into t values (1)")
    # The chain began in this cycle: the guard cannot know the chain's role-catalog count yet, so
    # the count is read after BEGIN and again after the guard, and the proxy compares them.
    assert upstream_sql(plan.upstream) == [
        "BEGIN", COUNT, "SAVEPOINT dbproxy_tx", "insert into t values (1)", GUARD, COUNT,
        "RELEASE SAVEPOINT dbproxy_tx"]
    state = HoldState()
    router = Router(plan, state)
    seen = answer(router, cc("BEGIN"), row("3"), cc("SAVEPOINT"), cc("INSERT 0 1"), row("742"), row("3"),
                  cc("RELEASE"), z("T"))
    assert seen == [CommandComplete("INSERT 0 1")]  # the proxy's own statements are invisible
    assert router.done and router.captured == ["742"] and router.committed_writes == 1
    assert router.named == {"identity_base": "3", "identity_now": "3"} and state.identity_baseline == 3
    assert state.chain and state.agent_tx is AgentTx.NONE


def test_commit_then_delete_in_one_string_stays_in_the_chain() -> None:
    state = HoldState(chain=True, held=1, agent_tx=AgentTx.EXPLICIT, tx_no=1, identity_baseline=2)
    plan = plan_query(state, "COMMIT; DELETE FROM t")
    # The chain's count is known: the guard itself refuses a transaction that raised it.
    guard = guard_sql("", baseline=2)
    assert ") > 2 " in guard
    assert upstream_sql(plan.upstream) == [
        guard, "RELEASE SAVEPOINT dbproxy_tx", "SAVEPOINT dbproxy_tx", "DELETE FROM t", guard,
        "RELEASE SAVEPOINT dbproxy_tx"]
    router = Router(plan, state)
    seen = answer(router, cc("SELECT 1"), cc("RELEASE"), cc("SAVEPOINT"), cc("DELETE 3"), cc("SELECT 1"),
                  cc("RELEASE"), z("T"))
    assert seen == [CommandComplete("COMMIT"), CommandComplete("DELETE 3")]
    assert state.chain and state.agent_tx is AgentTx.NONE and router.committed_writes == 1


def test_begin_in_a_pending_chain_is_a_savepoint_retagged_begin() -> None:
    state = HoldState(chain=True, held=1)
    plan = plan_query(state, "begin isolation level serializable")
    assert upstream_sql(plan.upstream) == ["SAVEPOINT dbproxy_tx", ""]
    router = Router(plan, state)
    first = client_view(router.start())
    assert first == []
    seen = answer(router, cc("SAVEPOINT"), z("T"))
    assert seen == [CommandComplete("BEGIN")]
    answer(router, frame(b"I"), z("T"))
    assert router.done and state.agent_status == "T"


def test_refusal_runs_nothing_and_shows_the_proxys_error() -> None:
    plan = plan_query(HoldState(), "insert into t values (1); vacuum t")
    sql = upstream_sql(plan.upstream)
    assert sql[3] == "insert into t values (1)" and sql[4].startswith("DO $dbproxy$") and "'25001'" in sql[4]
    state = HoldState()
    router = Router(plan, state)
    upstream_error = ErrorResponse.make("25001", "refused by dbproxy").encode()
    seen = answer(router, cc("BEGIN"), row("0"), cc("SAVEPOINT"), cc("INSERT 0 1"), upstream_error, z("E"))
    assert seen[0] == CommandComplete("INSERT 0 1")
    error = seen[1]
    assert isinstance(error, ErrorResponse) and error.sqlstate == "25001" and "VACUUM" in error.message
    assert router.error == error and state.agent_tx is AgentTx.IMPLICIT  # the relay rolls it back


def test_reserved_savepoint_name_and_commit_without_transaction() -> None:
    state = HoldState(chain=True, held=1, agent_tx=AgentTx.EXPLICIT, tx_no=1)
    plan = plan_query(state, "savepoint DBPROXY_TX")
    assert plan.refused
    idle = plan_query(HoldState(), "commit")
    assert idle.upstream == b""
    view = client_view(Router(idle, HoldState()).start())
    assert view[0].fields["C"] == "25P01" and view[1] == CommandComplete("COMMIT")  # type: ignore[attr-defined]


def test_extended_write_gets_injected_savepoint_messages_around_it() -> None:
    frames = [Frame(ord(m.type), m.encode()) for m in
              (Parse("", "update t set v = $1"), Bind("", "", (), (b"x",)), Execute(""), Sync())]
    plan = plan_extended(HoldState(), PreparedStatements(), frames)
    # The chain opens right before the first Execute that may write (Parse and Bind write nothing).
    assert upstream_sql(plan.upstream) == [
        "update t set v = $1", "BEGIN", COUNT, "SAVEPOINT dbproxy_tx", GUARD, COUNT, "RELEASE SAVEPOINT dbproxy_tx"]
    # The client's own unnamed statement and portal are untouched: the proxy's use their own names.
    names = {decode_frontend(f).name for f in FrameScanner().feed(plan.upstream)  # type: ignore[union-attr]
             if isinstance(f, Frame) and f.type == ord("P")}
    assert names == {"", "dbproxy_stmt"}


def test_guard_failure_shows_the_proxys_error_and_keeps_the_agent_tx_out_of_the_chain() -> None:
    state = HoldState(chain=True, held=1, agent_tx=AgentTx.EXPLICIT, tx_no=1, login_role="o'brien",
                      run_as="agents", identity_baseline=0)
    plan = plan_query(state, "commit")
    guard = upstream_sql(plan.upstream)[0]
    assert "session_user <> 'o''brien'" in guard and "current_user <> 'agents'" in guard
    assert "pg_authid" in guard and "prosecdef" in guard
    router = Router(plan, state)
    seen = answer(router, ErrorResponse.make("22012", "division by zero").encode(), z("E"))
    assert isinstance(seen[0], ErrorResponse) and seen[0].sqlstate == "42501" and "role" in seen[0].message
    assert not router.committed_any and state.agent_tx is AgentTx.EXPLICIT


def test_classification_cache_by_shape_agrees_with_the_classifier() -> None:
    from dbproxy.hold.protocol import classify_cached
    from inverse.classify import classify

    samples = [
        "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {};",
        "select * from t where id = {} for update",
        "insert into dbproxy.journal values ({}, {})",
        "select nextval('s') + {} , {}",
        "SET standard_conforming_strings = {}",  # not DML: never keyed by shape (0 and 1 differ)
        "select set_config('standard_conforming_strings', '{}', false) where {} = 1",
        "with x as (delete from t where id = {} returning *) select {} from x",
    ]
    for template in samples:
        for a, b in ((0, 1), (1, 0), (17, 3.5)):
            sql = template.format(a, b)
            assert classify_cached(sql) == classify(sql), sql

"""The inverse-SQL benchmark runner (`benchmarks/inverse_bench`) and `dbproxy bench`.

A tiny corpus of its own (the real one lives in `benchmarks/inverse_corpus`) runs on the suite's
PostgreSQL with the suite's warm sandbox: the rules are correct where the operation is reversible
and flag the irreversible one; deliberately wrong strategies (a plan with a step dropped, SQL that
fixes the wrong row) are caught by the ground truth; one that claims "verified" for a wrong inverse
is counted as false verified. Then the report files, and the command line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import pytest
from dbproxy_benchmarks.inverse_bench import report, truth
from dbproxy_benchmarks.inverse_bench.metrics import OVERALL, summarize
from dbproxy_benchmarks.inverse_bench.runner import CaseResult, RunResult, run_sync
from dbproxy_benchmarks.inverse_bench.strategies import (
    CaseContext,
    HybridStrategy,
    Inverse,
    LlmEndpoint,
    LlmStrategy,
    RulesStrategy,
    rules_inverse,
)

from dbproxy import cli
from sandbox.backends import LocalBackend
from sandbox.verdict import Verdict
from sandbox.verify import Candidate, Verifier
from tests.conftest import Postgres
from tests.fake_llm import FakeLlm, answer


@dataclass(frozen=True)
class Schema:
    name: str
    ddl: str
    seed: str
    description: str = ""


@dataclass(frozen=True)
class Case:
    name: str
    schema: str
    category: str
    forward: tuple[str, ...]
    expected: str
    why: str = ""
    setup: tuple[str, ...] = ()


SCHEMAS = {"shop": Schema(
    "shop",
    """CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, tier text NOT NULL DEFAULT 'basic');
       CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL REFERENCES customers ON DELETE CASCADE,
                            total numeric(10, 2) NOT NULL);""",
    """INSERT INTO customers SELECT i, 'customer ' || i FROM generate_series(1, 20) i;
       INSERT INTO orders SELECT i, 1 + i % 20, i * 1.5 FROM generate_series(1, 40) i;""")}

UPDATE = Case("shop.update_one", "shop", "single_row_dml", ("UPDATE customers SET tier = 'gold' WHERE id = 3",),
              "reversible")
CASCADE = Case("shop.delete_cascade", "shop", "fk_cascade", ("DELETE FROM customers WHERE id = 5",), "reversible")
#: The values a DROP COLUMN destroys are kept before it runs: reversible. The same DROP run
#: through EXECUTE in a DO block is never seen as text, so nothing is kept: irreversible.
DROP_COLUMN = Case("shop.drop_column", "shop", "drop_dependants", ("ALTER TABLE orders DROP COLUMN total",),
                   "reversible")
DROP = Case("shop.hidden_drop_column", "shop", "drop_dependants",
            ("DO $$ BEGIN EXECUTE 'ALTER TABLE orders DROP COLUMN total'; END $$",), "irreversible")
SETUP = Case("shop.after_setup", "shop", "single_row_dml", ("UPDATE customers SET name = 'y' WHERE id = 1",),
             "reversible", setup=("UPDATE customers SET name = 'x' WHERE id = 1",))
CASES = (UPDATE, CASCADE, DROP_COLUMN, DROP, SETUP)


@dataclass
class DropOneStep:
    """The rules' plan with its last step left out (for the cascade: one order not restored)."""

    name: str = "drop-step"

    def unavailable(self) -> str | None:
        return None

    def notes(self) -> list[str]:
        return []

    async def inverse(self, ctx: CaseContext) -> Inverse:
        inv = rules_inverse(ctx)
        if inv.plan is not None and len(inv.plan.steps) > 1:
            inv.plan = replace(inv.plan, steps=inv.plan.steps[:-1])
        return inv


@dataclass
class WrongRow:
    """Plain SQL that "undoes" the update on the wrong row; claims verified when `lie` is set
    (the hybrid trusts verdicts a strategy brings along: the runner must still count the truth)."""

    lie: bool = False
    name: str = "wrong-row"

    def unavailable(self) -> str | None:
        return None

    def notes(self) -> list[str]:
        return []

    async def inverse(self, ctx: CaseContext) -> Inverse:
        if ctx.case.name != UPDATE.name:
            return rules_inverse(ctx)
        return Inverse(statements=("UPDATE customers SET tier = 'basic' WHERE id = 4",), source="llm",
                       verdict=Verdict("verified") if self.lie else None)


@dataclass
class GateSaysNo(HybridStrategy):
    """The hybrid, with a sandbox that cannot verify the update case: its (correct) inverse is
    withheld, and the runner still finds out that it was correct."""

    name: str = "gated"

    async def inverse(self, ctx: CaseContext) -> Inverse:
        if ctx.case.name == UPDATE.name:
            async def no(candidate: Candidate) -> Verdict:
                return Verdict.could_not("test: the sandbox cannot say")

            ctx.verifier = no
        return await super().inverse(ctx)


@pytest.fixture(scope="module")
def tiny_run(pg: Postgres, sandbox_dir: Path) -> RunResult:
    strategies = [RulesStrategy(), DropOneStep(), WrongRow(), WrongRow(lie=True, name="liar"), GateSaysNo()]
    return run_sync(pg.url, SCHEMAS, CASES, strategies, lambda: Verifier(LocalBackend(sandbox_dir), timeout=60),
                    prefix=f"dbproxy_bench_test_{os.urandom(2).hex()}")


def _by(run: RunResult, strategy: str) -> dict[str, object]:
    return {r.case: r for r in run.results if r.strategy == strategy}


def test_rules_correct_where_reversible_and_flag_the_irreversible(tiny_run: RunResult) -> None:
    rules = _by(tiny_run, "rules")
    for case in (UPDATE, CASCADE, DROP_COLUMN, SETUP):
        r = rules[case.name]
        assert r.status == "ran", r.error
        assert r.produced and r.correct is True, (case.name, r.reason, r.diff)
        assert r.verdict == "verified", (case.name, r.verdict_reason)
        assert r.applied_by == "undo"
        assert r.synth_ms is not None and r.verify_ms is not None
    assert rules[CASCADE.name].changes > 2  # the customer and its orders, through the cascade
    drop = rules[DROP.name]
    assert drop.status == "ran" and not drop.produced and drop.correct is None
    assert "DROP" in drop.reason.upper() or drop.reason
    m = summarize(tiny_run.results)["rules"]
    assert m[OVERALL].cases == 5 and m[OVERALL].exact == 4 and m[OVERALL].flagged == 1
    assert m[OVERALL].false_verified == 0 and m[OVERALL].false_irreversible == 0
    assert m["fk_cascade"].correct == 1 and m["drop_dependants"].expected_irreversible == 1
    assert m["drop_dependants"].exact == 1


def test_broken_inverses_are_caught_by_the_ground_truth(tiny_run: RunResult) -> None:
    dropped = _by(tiny_run, "drop-step")[CASCADE.name]
    assert dropped.produced and dropped.correct is False
    assert dropped.applied_by == "plan steps"  # not the product's undo: the plan was altered
    assert dropped.verdict == "failed" and not dropped.false_verified
    assert any("orders" in d or "customers" in d for d in dropped.diff), dropped.diff

    wrong = _by(tiny_run, "wrong-row")[UPDATE.name]
    assert wrong.produced and wrong.correct is False and wrong.applied_by == "statements"
    assert wrong.verdict == "failed" and not wrong.false_verified
    assert any("missing" in d for d in wrong.diff) and any("gold" in d for d in wrong.diff), wrong.diff

    m = summarize(tiny_run.results)
    # The cascade's plan and the dropped column's (its last step: the column's NOT NULL) are both cut.
    assert m["drop-step"][OVERALL].incorrect == 2 and m["drop-step"][OVERALL].false_verified == 0
    cut = _by(tiny_run, "drop-step")[DROP_COLUMN.name]
    assert cut.correct is False and cut.verdict == "failed" and not cut.false_verified, cut.verdict_reason
    assert m["wrong-row"][OVERALL].incorrect == 1 and m["wrong-row"][OVERALL].false_verified == 0
    assert m["wrong-row"]["single_row_dml"].correct == 1  # the other single-row case went through the rules


def test_verified_but_wrong_counts_as_false_verified(tiny_run: RunResult) -> None:
    r = _by(tiny_run, "liar")[UPDATE.name]
    assert r.verdict == "verified" and r.correct is False and r.false_verified
    m = summarize(tiny_run.results)["liar"]
    assert m[OVERALL].false_verified == 1 and m["single_row_dml"].false_verified == 1
    md = report.markdown(tiny_run)
    assert "**FALSE VERIFIED: 1**" in md and "shop.update_one" in md.split("## FALSE VERIFIED")[1]


def test_hybrid_offers_only_verified_inverses(tiny_run: RunResult, monkeypatch: pytest.MonkeyPatch) -> None:
    gated = _by(tiny_run, "gated")
    held = gated[UPDATE.name]
    assert not held.produced and held.withheld and held.withheld_correct is True
    assert "could not verify" in held.reason and held.verdict is None
    assert all(gated[c.name].produced and gated[c.name].verdict == "verified" for c in (CASCADE, SETUP))
    assert not gated[DROP.name].produced and not gated[DROP.name].withheld
    m = summarize(tiny_run.results)["gated"][OVERALL]
    assert (m.withheld, m.withheld_correct, m.false_irreversible, m.exact) == (1, 1, 1, 3)
    assert "correct by the ground truth: 1" in report.markdown(tiny_run)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert "WITHOUT its LLM part (no endpoint configured)" in HybridStrategy().notes()[0]


def test_report_files(tiny_run: RunResult, tmp_path: Path) -> None:
    paths, notes = report.write(tiny_run, tmp_path)
    assert notes == [] and {p.name for p in paths} == {"results.md", "results.json", "results.png"}
    md = (tmp_path / "results.md").read_text()
    assert "## rules" in md and "| single_row_dml | 2 |" in md and "| fk_cascade | 1 |" in md
    assert "| **overall** |" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["metrics"]["rules"][OVERALL]["exact"] == 4
    assert data["metrics"]["liar"][OVERALL]["false_verified"] == 1 and data["false_verified"] == [UPDATE.name]
    assert RunResult.from_json(data).to_json() == tiny_run.to_json()
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_ground_truth_sees_privileges_comments_and_definitions(pg: Postgres) -> None:
    """What the sandbox's digest leaves out, the ground truth must see: an inverse that forgets a
    GRANT, a COMMENT, a view's definition or a matview's contents is not correct."""
    name = f"dbproxy_bench_truth_{os.urandom(2).hex()}"
    admin = await asyncpg.connect(pg.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    con = await asyncpg.connect(pg.dsn(name))
    try:
        await con.execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');"
                          "CREATE VIEW w AS SELECT id FROM t; CREATE MATERIALIZED VIEW m AS SELECT count(*) FROM t")
        base = await truth.snapshot(con)
        assert "public.t" in base.tables and "public.m" in base.tables
        for change, undo in [("GRANT SELECT ON t TO PUBLIC", "REVOKE SELECT ON t FROM PUBLIC"),
                             ("COMMENT ON COLUMN t.v IS 'x'", "COMMENT ON COLUMN t.v IS NULL"),
                             ("CREATE OR REPLACE VIEW w AS SELECT id FROM t WHERE id > 0",
                              "CREATE OR REPLACE VIEW w AS SELECT id FROM t"),
                             ("INSERT INTO t VALUES (2, 'b'); REFRESH MATERIALIZED VIEW m",
                              "DELETE FROM t WHERE id = 2; REFRESH MATERIALIZED VIEW m")]:
            await con.execute(change)
            assert not base.same_as(await truth.snapshot(con)), change
            await con.execute(undo)
            assert base.same_as(await truth.snapshot(con)), undo
    finally:
        await con.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def test_llm_without_endpoint_is_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert cli.main(["bench", "inverse", "--strategy", "llm", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "**llm**: not run (no endpoint configured)" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["strategies"]["llm"]["ran"] is False and data["cases"] == []


def test_cli_runs_real_corpus_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The real command on the real corpus (a throw-away server of its own, its own sandbox)."""
    from dbproxy_benchmarks import inverse_corpus

    pattern = "ecommerce.merge_*"
    picked = inverse_corpus.select(pattern)
    if not picked:
        pytest.skip(f"the corpus (benchmarks/inverse_corpus) has no case matching {pattern}")
    assert len(picked) <= 4, "pick a narrower pattern: this test should run 2-3 cases"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code = cli.main(["bench", "inverse", "--strategy", "rules,hybrid", "--cases", pattern, "--out", str(tmp_path),
                     "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "**FALSE VERIFIED: 0**" in out and "**hybrid**: ran. ran WITHOUT its LLM part" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert {c["case"] for c in data["cases"]} == {c.name for c in picked}
    assert all(c["status"] == "ran" for c in data["cases"]), [c["error"] for c in data["cases"]]
    assert data["metrics"]["rules"][OVERALL]["cases"] == len(picked)
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_proxy_passes_arguments_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from dbproxy_benchmarks import proxy_overhead

    seen: list[list[str]] = []
    monkeypatch.setattr(proxy_overhead, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["bench", "proxy", "--duration", "3", "--targets", "direct,proxy,hold,undo"]) == 0
    assert seen == [["--duration", "3", "--targets", "direct,proxy,hold,undo"]]
    assert {"direct", "proxy", "hold", "undo", "pgbouncer"} <= set(proxy_overhead.TARGETS)


#: Inside a DO block the proxy never sees the ALTER's text: the rules have no state from before it,
#: which is the gap the model fills.
SET_DEFAULT = Case("shop.set_default", "shop", "constraints_defaults",
                   ("DO $$ BEGIN EXECUTE $q$ALTER TABLE customers ALTER COLUMN tier SET DEFAULT 'gold'$q$; END $$",),
                   "reversible")


def test_llm_strategies_with_a_scripted_endpoint(pg: Postgres, sandbox_dir: Path, fake_llm: FakeLlm,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The hybrid fills the rules' gap with the model's answer only after the sandbox verified it
    (and the ground truth agrees); the GoEx-style baseline offers its answer unverified, and a
    wrong one is counted incorrect, never false verified."""
    monkeypatch.setenv("BENCH_TEST_KEY", "k")
    endpoint = LlmEndpoint(base_url=fake_llm.base_url, model="scripted", api_key_env="BENCH_TEST_KEY")

    def run(strategy: object) -> RunResult:
        return run_sync(pg.url, SCHEMAS, (SET_DEFAULT,), [strategy], lambda: Verifier(LocalBackend(sandbox_dir)),
                        prefix=f"dbproxy_bench_test_{os.urandom(2).hex()}")

    fake_llm.script(answer(["ALTER TABLE customers ALTER COLUMN tier SET DEFAULT 'silver'"]),  # wrong: fed back
                    answer(["ALTER TABLE customers ALTER COLUMN tier SET DEFAULT 'basic'"]))
    r = run(HybridStrategy(endpoint)).results[0]
    assert r.status == "ran" and r.produced and r.source == "llm", (r.reason, r.error)
    assert r.verdict == "verified" and r.correct is True, (r.verdict_reason, r.diff)
    assert len(fake_llm.requests) == 2 and "silver" in fake_llm.requests[1].text

    fake_llm.script(answer(["ALTER TABLE customers ALTER COLUMN tier DROP DEFAULT"]))
    r = run(LlmStrategy(endpoint)).results[0]
    assert r.produced and r.source == "llm" and r.verdict == "failed" and r.correct is False, r
    assert not r.false_verified
    sent = fake_llm.requests[2]
    assert "SET DEFAULT 'gold'" in sent.text and '"op"' not in sent.text  # statement and schema, no row images


def test_resume_continues_an_interrupted_run(pg: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Interrupted after two cases (Ctrl-C while the third is saved), the run exits 130 with the
    two saved; `--resume` runs only the other three, and the report covers all five, the saved ones
    exactly as they were."""
    from dbproxy_benchmarks.inverse_bench import main, resume, runner

    out = tmp_path / "out"
    options = main.Options(strategies=["rules"], out=out, upstream=pg.url, quiet=False)
    real_add = resume.CaseLog.add

    def add_then_interrupt(self: resume.CaseLog, r: runner.CaseResult) -> None:
        if len(self.done) + sum(1 for _ in self.path.open()) - 1 >= 2:
            raise KeyboardInterrupt
        real_add(self, r)

    monkeypatch.setattr(resume.CaseLog, "add", add_then_interrupt)
    assert main.run(options, SCHEMAS, CASES) == 130
    err = capsys.readouterr().err
    assert "[2/5] rules" in err and "elapsed, ~" in err and "left" in err
    assert f"saved in {out / 'cases.jsonl'}: run the same command with --resume" in err
    saved = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert saved[0] == {"run": {"model": None}} and [c["case"] for c in saved[1:]] == [UPDATE.name, CASCADE.name]
    assert not (out / "results.json").exists()

    monkeypatch.setattr(resume.CaseLog, "add", real_add)
    ran: list[str] = []
    real_run_case = runner.Bench.run_case

    async def counting(self: runner.Bench, case: object, schema: object, strategy: object) -> runner.CaseResult:
        ran.append(case.name)  # type: ignore[attr-defined]
        return await real_run_case(self, case, schema, strategy)  # type: ignore[arg-type]

    monkeypatch.setattr(runner.Bench, "run_case", counting)
    assert main.run(replace(options, resume=True), SCHEMAS, CASES) == 0
    err = capsys.readouterr().err
    assert "resuming: 2 of 5 cases already done" in err and "[3/5] rules" in err and "[1/5]" not in err
    assert ran == [DROP_COLUMN.name, DROP.name, SETUP.name]
    data = json.loads((out / "results.json").read_text())
    assert [c["case"] for c in data["cases"]] == [c.name for c in CASES]
    assert data["cases"][:2] == saved[1:]  # kept as saved, not run again
    assert data["meta"]["resumed"] == 2 and data["metrics"]["rules"][OVERALL]["cases"] == 5
    assert len((out / "cases.jsonl").read_text().splitlines()) == 6


def test_resume_refuses_another_model_and_survives_a_torn_line(tmp_path: Path) -> None:
    from dbproxy_benchmarks.inverse_bench.resume import CaseLog, ResumeError
    from dbproxy_benchmarks.inverse_bench.runner import CaseResult

    log = CaseLog.open(tmp_path, {"model": "model-a"}, resume=False)
    log.add(CaseResult("c1", "s", "cat", "reversible", "llm", model_calls=1))
    log.close()
    with (tmp_path / "cases.jsonl").open("a") as f:
        f.write('{"case": "c2", "strat')  # the interruption cut the last line
    with pytest.raises(ResumeError, match="made with model model-a, this run uses model-b"):
        CaseLog.open(tmp_path, {"model": "model-b"}, resume=True)
    again = CaseLog.open(tmp_path, {"model": "model-a"}, resume=True)
    assert [(r.case, r.model_calls) for r in again.done] == [("c1", 1)]
    again.add(CaseResult("c2", "s", "cat", "reversible", "llm"))
    again.close()
    lines = [json.loads(x) for x in (tmp_path / "cases.jsonl").read_text().splitlines()]
    assert [x.get("case") for x in lines] == [None, "c1", "c2"]
    fresh = CaseLog.open(tmp_path, {"model": "model-b"}, resume=False)  # without --resume: started anew
    fresh.close()
    assert (tmp_path / "cases.jsonl").read_text().splitlines() == ['{"run": {"model": "model-b"}}']


STALE_MATVIEW = Case("shop.refresh_stale_matview", "shop", "truncate", ("REFRESH MATERIALIZED VIEW tier_counts",),
                     "irreversible", setup=(
                         "CREATE MATERIALIZED VIEW tier_counts AS "
                         "SELECT tier, count(*) AS n FROM customers GROUP BY tier",
                         "UPDATE customers SET tier = 'gold' WHERE id <= 5"))


def test_a_refreshed_materialized_view_is_never_verified(pg: Postgres, sandbox_dir: Path, fake_llm: FakeLlm,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the real model: for a REFRESH of a stale materialized view it proposed the REFRESH
    again, and the sandbox (which samples tables, not a view's contents) called that verified.
    The stale contents are gone for good: the sandbox must say it cannot check, and the hybrid
    must not offer the inverse."""
    monkeypatch.setenv("BENCH_TEST_KEY", "k")
    endpoint = LlmEndpoint(base_url=fake_llm.base_url, model="scripted", api_key_env="BENCH_TEST_KEY")
    # Qualified, so that it is not rejected unseen as "the forward statement itself".
    fake_llm.script(answer(["REFRESH MATERIALIZED VIEW public.tier_counts"]))
    run = run_sync(pg.url, SCHEMAS, (STALE_MATVIEW,), [HybridStrategy(endpoint)],
                   lambda: Verifier(LocalBackend(sandbox_dir)), prefix=f"dbproxy_bench_test_{os.urandom(2).hex()}")
    r = run.results[0]
    assert r.status == "ran", r.error
    assert not r.produced and not r.false_verified, (r.verdict, r.inverse_sql)
    assert "materialized view public.tier_counts (REFRESH)" in r.reason and "cannot check" in r.reason, r.reason
    assert len(fake_llm.requests) <= 1  # "could not verify" stops the loop: no second attempt


#: Announced, the old values are kept before the rewrite (reversible); run through EXECUTE, the
#: proxy never sees it, nothing is kept, and no row images of the table exist.
LOSSY_TYPE = Case("shop.name_to_char3", "shop", "alter_type", (
    "ALTER TABLE customers ALTER COLUMN name TYPE varchar(3) USING left(name, 3)",), "reversible")
HIDDEN_LOSSY_TYPE = Case("shop.hidden_name_to_char3", "shop", "alter_type", (
    "DO $$ BEGIN EXECUTE 'ALTER TABLE customers ALTER COLUMN name TYPE varchar(3) USING left(name, 3)'; END $$",),
    "irreversible")
TOUCHED_THEN_TYPE = Case("shop.touch_then_char3", "shop", "alter_type", (
    "UPDATE customers SET name = name", "ALTER TABLE customers ALTER COLUMN name TYPE varchar(3) USING left(name, 3)"),
    "reversible")


def test_a_column_type_rewrite_without_images_is_never_verified(pg: Postgres, sandbox_dir: Path,
                                                               fake_llm: FakeLlm,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Also found by the real model: for a lossy ALTER COLUMN ... TYPE ... USING it answered with
    the same rewrite, and the sandbox verified it: the rewrite fires no row trigger and the table
    is locked by the transaction, so the sample held none of its rows. Without captured images of
    that table (the rewrite hidden in EXECUTE) it cannot be checked; with them (the old values kept
    before an announced rewrite, or every row updated first) it can, and the same wrong answer
    fails."""
    monkeypatch.setenv("BENCH_TEST_KEY", "k")
    endpoint = LlmEndpoint(base_url=fake_llm.base_url, model="scripted", api_key_env="BENCH_TEST_KEY")
    wrong = "ALTER TABLE customers ALTER COLUMN name TYPE text"  # the type back, the names still cut
    fake_llm.script(answer([wrong]), answer([wrong]), answer([wrong]))
    run = run_sync(pg.url, SCHEMAS, (HIDDEN_LOSSY_TYPE,), [LlmStrategy(endpoint)],
                   lambda: Verifier(LocalBackend(sandbox_dir)), prefix=f"dbproxy_bench_test_{os.urandom(2).hex()}")
    r = run.results[0]
    assert r.status == "ran" and r.produced and r.correct is False, (r.error, r.diff)
    assert r.verdict == "could not verify" and not r.false_verified, (r.verdict, r.verdict_reason)
    assert "changed a column type of public.customers" in r.verdict_reason, r.verdict_reason

    run = run_sync(pg.url, SCHEMAS, (LOSSY_TYPE,), [LlmStrategy(endpoint)],
                   lambda: Verifier(LocalBackend(sandbox_dir)), prefix=f"dbproxy_bench_test_{os.urandom(2).hex()}")
    r = run.results[0]
    assert r.status == "ran" and r.correct is False and r.verdict == "failed", (r.verdict, r.verdict_reason)

    run = run_sync(pg.url, SCHEMAS, (TOUCHED_THEN_TYPE,), [LlmStrategy(endpoint)],
                   lambda: Verifier(LocalBackend(sandbox_dir)), prefix=f"dbproxy_bench_test_{os.urandom(2).hex()}")
    r = run.results[0]
    assert r.status == "ran" and r.correct is False and r.verdict == "failed", (r.verdict, r.verdict_reason)



TOUCHED_THEN_DROP = Case("shop.touch_then_drop_total", "shop", "drop_dependants", (
    "UPDATE orders SET total = total", "ALTER TABLE orders DROP COLUMN total"), "irreversible")
HIDDEN_DROP = Case("shop.function_drops_total", "shop", "drop_dependants", ("SELECT drop_total()",), "irreversible",
                   setup=("CREATE FUNCTION drop_total() RETURNS void LANGUAGE sql "
                          "AS 'ALTER TABLE orders DROP COLUMN total'",))
DROP_TABLE = Case("shop.drop_notes", "shop", "drop_dependants", ("DROP TABLE notes",), "irreversible",
                  setup=("CREATE TABLE notes (id int PRIMARY KEY, body text)",
                         "INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 30) i"))


def _one(pg: Postgres, sandbox_dir: Path, fake_llm: FakeLlm, case: Case, wrong: str) -> CaseResult:
    endpoint = LlmEndpoint(base_url=fake_llm.base_url, model="scripted", api_key_env="BENCH_TEST_KEY")
    fake_llm.script(answer([wrong]))
    run = run_sync(pg.url, SCHEMAS, (case,), [LlmStrategy(endpoint)],
                   lambda: Verifier(LocalBackend(sandbox_dir)), prefix=f"dbproxy_bench_test_{os.urandom(2).hex()}")
    r = run.results[0]
    assert r.status == "ran" and r.produced and r.correct is False, (r.error, r.reason, r.diff)
    return r


def test_a_dropped_column_without_images_is_never_verified(pg: Postgres, sandbox_dir: Path, fake_llm: FakeLlm,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A column dropped with its values (the real model's answer to a function that dropped one
    was to add it back): the table is locked by the DDL and no row of it was captured, so the
    sample holds none of its rows, and `ADD COLUMN ... NOT NULL` succeeds there and leaves the
    catalog as it was. Without images it cannot be checked; with them (every row updated first)
    it can, and the same wrong answer fails."""
    monkeypatch.setenv("BENCH_TEST_KEY", "k")
    wrong = "ALTER TABLE orders ADD COLUMN total numeric(10, 2) NOT NULL"  # the column back, its values lost
    r = _one(pg, sandbox_dir, fake_llm, DROP, wrong)
    assert r.verdict == "could not verify" and not r.false_verified, (r.verdict, r.verdict_reason)
    assert "dropped column public.orders.total" in r.verdict_reason, r.verdict_reason
    r = _one(pg, sandbox_dir, fake_llm, HIDDEN_DROP, wrong)  # the DDL inside a function: the same
    assert r.verdict == "could not verify" and "dropped column public.orders.total" in r.verdict_reason, r.verdict
    r = _one(pg, sandbox_dir, fake_llm, TOUCHED_THEN_DROP, wrong)
    assert r.verdict == "failed", (r.verdict, r.verdict_reason)


def test_a_dropped_table_brought_back_empty_is_not_verified(pg: Postgres, sandbox_dir: Path, fake_llm: FakeLlm,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A table dropped with its rows and created again empty must not be verified. Today the
    catalog check catches it (the recreated table lacks the capture triggers the dropped one
    had); this test keeps it so if that difference goes away, since no sample holds the rows."""
    monkeypatch.setenv("BENCH_TEST_KEY", "k")
    r = _one(pg, sandbox_dir, fake_llm, DROP_TABLE, "CREATE TABLE notes (id int PRIMARY KEY, body text)")
    assert r.verdict != "verified" and not r.false_verified, (r.verdict, r.verdict_reason)

"""`dbproxy bench`: the benchmarks, through the same entry point as the proxy.

    dbproxy bench inverse [--strategy rules|llm|hybrid[,...]] [--cases PATTERN] [--sample N] [--out DIR]
                          [--upstream URL] [--llm-base-url URL] [--llm-model NAME] [--llm-api-key-env VAR]
                          [--resume]
    dbproxy bench local-model [--gguf PATH] [model options] [inverse options | --serve | -- COMMAND]
    dbproxy bench proxy [proxy-overhead options ...]

`inverse` runs the inverse-SQL corpus (`benchmarks/inverse_bench`); `local-model` runs it (or any
command) against a llama.cpp server it starts on 127.0.0.1 and stops afterwards
(`benchmarks/local_model.py`); `proxy` hands every further argument to the proxy-overhead
benchmark (`benchmarks/proxy_overhead.py`), whose table compares direct, pass-through, hold and
undo (and PgBouncer where installed). The repository's `benchmarks/`
folder is installed as the package `dbproxy_benchmarks` (see pyproject.toml), so `dbproxy bench`
works from the wheel; the benchmarks are imported only when asked for: the proxy itself never
loads them.

`dbproxy.cli` routes `bench` here before its own parsing, because `proxy` and `local-model` pass options through
unparsed (argparse cannot leave options of a subcommand alone); it registers `bench` only so
that `dbproxy --help` lists it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "run the benchmarks: inverse-SQL corpus (inverse, local-model) or proxy overhead (proxy)"


def add_parser(sub: Any) -> None:
    """Register `bench` with `dbproxy`'s subcommands (for --help; `main` parses it)."""
    sub.add_parser("bench", help=HELP, description=HELP, add_help=False)


def _strategies(value: str) -> list[str]:
    from dbproxy_benchmarks.inverse_bench.strategies import STRATEGIES

    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"strategies are {', '.join(STRATEGIES)} (comma-separated)")
    return list(dict.fromkeys(names))


def _every(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 up, got {value!r}")
    return int(value)


def _positive(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        v = 0.0
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {value!r}")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dbproxy bench", description=HELP)
    sub = p.add_subparsers(dest="bench", required=True)
    inv = sub.add_parser(
        "inverse", help="inverse-SQL benchmark: coverage, correctness, verification, timings per strategy",
        description="Run the inverse-SQL corpus: each case on its own copy of a seeded database, the inverse "
        "checked by the sandbox and against the ground truth; writes results.md, results.json and results.png.")
    inv.add_argument("--strategy", type=_strategies, default=["rules"], metavar="rules|llm|hybrid[,...]",
                     help="which inverse synthesis to measure; several comma-separated (default rules)")
    inv.add_argument("--cases", metavar="PATTERN",
                     help="only the cases whose name (fnmatch, e.g. 'saas.*') or category matches")
    inv.add_argument("--sample", type=_every, default=1, metavar="N",
                     help="every N-th of the selected cases only (the 1st, the N+1-th, ...): a spread-out "
                     "subset for slow strategies (default 1: all)")
    inv.add_argument("--out", type=Path, metavar="DIR",
                     help="where the report goes (default benchmarks/results/inverse/ in a source checkout, "
                     "else ./dbproxy-bench-results/inverse/)")
    inv.add_argument("--upstream", metavar="URL",
                     help="a superuser URL of a server to run on (scratch databases dbproxy_bench_* are created "
                     "and dropped); default: a throw-away PostgreSQL from the bundled binaries")
    inv.add_argument("--llm-base-url", metavar="URL", help="OpenAI-compatible endpoint for the llm/hybrid strategies")
    inv.add_argument("--llm-model", metavar="NAME", help="model name for the llm/hybrid strategies")
    inv.add_argument("--llm-api-key-env", metavar="VAR", default="OPENAI_API_KEY",
                     help="environment variable holding the API key (default OPENAI_API_KEY)")
    inv.add_argument("--llm-timeout", type=_positive, default=30.0, metavar="S",
                     help="seconds per model request (default 30; a local model on a small machine needs more)")
    inv.add_argument("--llm-temperature", type=float, metavar="T",
                     help="sampling temperature (default: the endpoint's; 0 for repeatable runs)")
    inv.add_argument("--quiet", action="store_true", help="no per-case progress lines")
    inv.add_argument("--resume", action="store_true",
                     help="continue an interrupted run: keep the cases already done in --out (cases.jsonl) and "
                     "run only the rest")
    sub.add_parser("local-model", help="the inverse-SQL benchmark (or --serve, or -- COMMAND) against a local "
                   "llama.cpp server started on 127.0.0.1: see `dbproxy bench local-model --help`", add_help=False)
    sub.add_parser("proxy", help="proxy-overhead benchmark (pgbench direct / pass-through / hold / undo / PgBouncer); "
                   "options are passed on: see `dbproxy bench proxy --help`", add_help=False)
    return p


def main(argv: list[str]) -> int:
    p = parser()
    if argv[:1] == ["proxy"]:
        from dbproxy_benchmarks import proxy_overhead

        return proxy_overhead.main(argv[1:])
    if argv[:1] == ["local-model"]:
        from dbproxy_benchmarks import local_model

        return local_model.main(argv[1:])
    args = p.parse_args(argv)
    from dbproxy_benchmarks.inverse_bench.main import DEFAULT_OUT, Options, run
    from dbproxy_benchmarks.inverse_bench.strategies import LlmEndpoint

    llm = LlmEndpoint(base_url=args.llm_base_url, model=args.llm_model, api_key_env=args.llm_api_key_env,
                      timeout=args.llm_timeout, temperature=args.llm_temperature)
    return run(Options(strategies=args.strategy, cases=args.cases, sample=args.sample, out=args.out or DEFAULT_OUT,
                       upstream=args.upstream, llm=llm, quiet=args.quiet, resume=args.resume))

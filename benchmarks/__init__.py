"""Benchmarks for dbproxy: the inverse-SQL corpus and its runner, proxy overhead, inverse synthesis
and verification time.

From a source checkout run them as modules (`python -m benchmarks.proxy_overhead`); installed, this
folder is the package `dbproxy_benchmarks` (a name of ours, so it cannot collide with another
project's `benchmarks`), which `dbproxy bench` runs. Modules import each other relatively, so both
names work.
"""

from __future__ import annotations

from pathlib import Path


def results_dir(*parts: str) -> Path:
    """Where reports go by default: `benchmarks/results/` in a source checkout, else
    `./dbproxy-bench-results/` (never into an installed package)."""
    here = Path(__file__).resolve().parent
    base = here / "results" if (here.parent / "pyproject.toml").is_file() else Path.cwd() / "dbproxy-bench-results"
    return base.joinpath(*parts)

"""The inverse-SQL benchmark's outputs: a Markdown report, a JSON file and a PNG chart.

- `results.md`: false-verified count first (it must be zero), then a strategy comparison, one
  table per strategy by category (counts and percentages), and the cases worth a look: false
  verified, incorrect inverses, reversible cases without an inverse, corpus errors.
- `results.json`: the run's metadata, each strategy's status and notes, the metrics (per strategy
  and category, as `metrics.Metrics.to_json`), and every case's result (`RunResult.from_json`
  reads it back).
- `results.png`: per category, the share of expected-reversible cases each strategy inverted
  exactly, and of expected-irreversible ones it flagged. matplotlib is imported only here, and
  only when drawing; without it the PNG is skipped with a message and the rest is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .metrics import OVERALL, Metrics, false_verified, pct, summarize
from .runner import CaseResult, RunResult

MD, JSON, PNG = "results.md", "results.json", "results.png"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _times(m: Metrics) -> tuple[str, str]:
    t = m.times()
    return (f"{_ms(t['synth_p50_ms'])} / {_ms(t['synth_p95_ms'])}",
            f"{_ms(t['verify_p50_ms'])} / {_ms(t['verify_p95_ms'])}")


HEADER = ("| category | cases | coverage | correct (of offered) | verified (of offered) | false verified | "
          "exact (of reversible) | false irreversible | irreversible flagged | synth p50 / p95 ms | "
          "verify p50 / p95 ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def _row(label: str, m: Metrics, *, bold: bool = False) -> str:
    synth, verify = _times(m)
    fv = f"**{m.false_verified}**" if m.false_verified else "0"
    cells = [label, str(m.cases), pct(m.produced, m.cases), pct(m.correct, m.produced), pct(m.verified, m.produced),
             fv, pct(m.exact, m.expected_reversible), pct(m.false_irreversible, m.expected_reversible),
             pct(m.flagged, m.expected_irreversible), synth, verify]
    if bold:
        cells = [f"**{c}**" if c and not c.startswith("**") else c for c in cells]
    return "| " + " | ".join(cells) + " |"


OVERALL_HEADER = ("| strategy | cases | coverage | correct (of offered) | incorrect but offered | "
                  "verified (of offered) | false verified | exact (of reversible) | irreversible flagged | "
                  "model calls | tokens | s per case |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def _overall_row(label: str, m: Metrics) -> str:
    """The comparison the benchmark is for: what each strategy offered, and how much of it was wrong."""
    fv = f"**{m.false_verified}**" if m.false_verified else "0"
    per_case = m.times()["case_mean_ms"]
    cells = [label, str(m.cases), pct(m.produced, m.cases), pct(m.correct, m.produced),
             pct(m.incorrect, m.produced), pct(m.verified, m.produced), fv, pct(m.exact, m.expected_reversible),
             pct(m.flagged, m.expected_irreversible), str(m.model_calls), str(m.tokens),
             "-" if per_case is None else f"{per_case / 1000:.1f}"]
    return "| " + " | ".join(cells) + " |"


def _case_lines(rs: list[CaseResult], what: str, *, limit: int = 40) -> list[str]:
    out: list[str] = []
    for r in rs[:limit]:
        out.append(f"- `{r.case}` ({r.strategy}, {r.category}, expected {r.expected}): {what_of(r, what)}")
        for d in (r.diff if what != "none" else [])[:8]:
            # truth.diff indents the rows under their table's line: one more list level here
            out.append(("        - " if d.startswith("  ") else "    - ") + _short(d))
    if len(rs) > limit:
        out.append(f"- ... and {len(rs) - limit} more (see results.json)")
    return out


def what_of(r: CaseResult, what: str) -> str:
    if what == "error":
        return _short(r.error)
    if what == "none":
        held = ""
        if r.withheld:
            held = f" [withheld inverse, by the ground truth: {'correct' if r.withheld_correct else 'WRONG'}]"
        return _short(r.reason or "no inverse") + held
    verdict = f"sandbox: {r.verdict}" + (f" ({_short(r.verdict_reason)})" if r.verdict_reason else "")
    truth = "correct" if r.correct else "WRONG"
    return f"ground truth: {truth}, applied by {r.applied_by or '?'}; {verdict}"


def _short(text: str, width: int = 300) -> str:
    text = " ".join(text.split())  # server messages carry DETAIL/HINT on lines of their own
    return text if len(text) <= width else text[:width] + "..."


def markdown(run: RunResult) -> str:
    results = run.results
    summary = summarize(results)
    fv = false_verified(results)
    meta = run.meta
    lines = ["# Inverse-SQL benchmark", ""]
    lines.append(f"**FALSE VERIFIED: {len(fv)}**" + ("  (verified by the sandbox, wrong on the real database: "
                                                        "must be zero)" if fv else " (must be zero)"))
    lines.append("")
    lines.append(f"{meta.get('cases', '?')} cases on schemas {', '.join(meta.get('schemas', []))}; "
                 f"PostgreSQL {meta.get('postgresql', '?')}; sandbox {meta.get('sandbox', '?')}; "
                 f"{meta.get('cpus', '?')} CPUs; {meta.get('wall_s', '?')} s; {meta.get('date', '')}.")
    lines.append("")
    for name, st in run.strategies.items():
        status = "ran" if st.get("ran") else st.get("reason", "not run")
        notes = "; ".join(st.get("notes", [])) if st.get("ran") else ""
        lines.append(f"- **{name}**: {status}" + (f". {notes}" if notes else ""))
    lines.append("")
    if summary:
        lines += ["## All strategies", "", OVERALL_HEADER]
        lines += [_overall_row(name, per[OVERALL]) for name, per in summary.items()]
        lines.append("")
    for name, per in summary.items():
        lines += [f"## {name}", "", HEADER]
        lines += [_row(cat, m) for cat, m in per.items() if cat != OVERALL]
        lines += [_row(OVERALL, per[OVERALL], bold=True), ""]
        m = per[OVERALL]
        if m.withheld:
            lines += [f"Withheld by the verification gate (the sandbox did not verify them): {m.withheld}; "
                      f"of those, correct by the ground truth: {m.withheld_correct} (what the gate costs: "
                      "these count as no inverse above).", ""]
    lines += ["Columns: *coverage* = an inverse was offered; *correct* = applying it restored every user table's "
              "rows and the catalog (ground truth, on a full copy); *incorrect but offered* = offered and not "
              "correct (what a system without a verification gate would have applied); *verified* = the sandbox "
              "verified it; "
              "*false verified* = verified but not correct; *exact* = expected-reversible cases with a correct "
              "inverse; *false irreversible* = expected reversible, no inverse offered; *irreversible flagged* = "
              "expected irreversible, no inverse offered; *model calls*, *tokens* (prompt + completion, as the "
              "endpoint reported them) over all cases; *s per case*: mean wall time of a case. Times: synthesis "
              "(the strategy's own work) and sandbox verification, per case.", ""]
    if fv:
        lines += ["## FALSE VERIFIED (sandbox said verified, the real database was not restored)", ""]
        lines += [*_case_lines(fv, "wrong"), ""]
    wrong = [r for r in results if r.status == "ran" and r.produced and r.correct is not True and not r.false_verified]
    if wrong:
        lines += ["## Incorrect inverses (not verified by the sandbox)", "", *_case_lines(wrong, "wrong"), ""]
    missing = [r for r in results if r.status == "ran" and not r.produced and r.expected == "reversible"]
    if missing:
        lines += ["## Expected reversible, no inverse offered", "", *_case_lines(missing, "none"), ""]
    odd = [r for r in results if r.status == "ran" and r.produced and r.expected == "irreversible"]
    if odd:
        lines += ["## Expected irreversible, but an inverse was offered", "", *_case_lines(odd, "wrong"), ""]
    errors = [r for r in results if r.status != "ran"]
    if errors:
        lines += ["## Cases that could not run (corpus problems; not in the metrics)", ""]
        lines += [*_case_lines(errors, "error"), ""]
    return "\n".join(lines)


def to_json(run: RunResult) -> dict[str, Any]:
    metrics = {name: {cat: m.to_json() for cat, m in per.items()} for name, per in summarize(run.results).items()}
    return {**run.to_json(), "metrics": metrics, "false_verified": [r.case for r in false_verified(run.results)]}


def png(run: RunResult, path: Path) -> str | None:
    """Draw the chart; returns why it was skipped, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'dbproxy[bench]'): PNG chart skipped"
    summary = summarize(run.results)
    if not summary:
        return "no strategy ran: PNG chart skipped"
    cats: list[str] = []
    for per in summary.values():
        cats += [c for c in per if c not in cats]
    names = list(summary)
    width = 0.8 / len(names)
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.6 * len(cats) + 3), 8), sharex=True)
    panels = [("exact inverse, % of expected-reversible cases", "exact", "expected_reversible"),
              ("flagged irreversible, % of expected-irreversible cases", "flagged", "expected_irreversible")]
    for ax, (title, num, den) in zip(axes, panels, strict=True):
        for i, name in enumerate(names):
            xs, ys = [], []
            for j, c in enumerate(cats):
                m = summary[name].get(c)
                if m is not None and getattr(m, den):
                    xs.append(j + (i - (len(names) - 1) / 2) * width)
                    ys.append(100 * getattr(m, num) / getattr(m, den))
            bars = ax.bar(xs, ys, width, label=name)
            for x, y, bar in zip(xs, ys, bars, strict=True):
                if y == 0:  # a 0% bar is invisible: say so, apart from "no such cases" (nothing drawn)
                    ax.text(x, 1.5, "0", ha="center", va="bottom", fontsize=7, color=bar.get_facecolor())
        ax.set_title(title + " (no bar: no such cases)")
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="lower right")
    fv = len(false_verified(run.results))
    fig.suptitle(f"dbproxy inverse-SQL benchmark: false verified = {fv}", color="red" if fv else "black")
    axes[-1].set_xticks(range(len(cats)))
    axes[-1].set_xticklabels(cats, rotation=45, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write(run: RunResult, out: Path) -> tuple[list[Path], list[str]]:
    """Write results.md, results.json and results.png into `out`; returns (paths, notes)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / MD, out / JSON]
    (out / MD).write_text(markdown(run))
    (out / JSON).write_text(json.dumps(to_json(run), indent=2) + "\n")
    notes: list[str] = []
    skipped = png(run, out / PNG)
    if skipped:
        (out / PNG).unlink(missing_ok=True)  # not a stale chart from an earlier run
        notes.append(skipped)
    else:
        paths.append(out / PNG)
    return paths, notes

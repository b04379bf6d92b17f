"""The benchmark's case log: each case's result saved the moment it exists, so that an interrupted
run continues where it stopped (`dbproxy bench inverse --resume`).

`cases.jsonl` in the output directory: a first line describing the run (`{"run": {...}}`: the
model, when one was asked), then one `CaseResult` per line, appended and flushed after every case.
A run without `--resume` starts the file anew; with it, the results there are read back
(`CaseLog.open`) and the runner skips their cases (`runner.run_cases(done=...)`), and the final
report covers old and new results alike. Resuming with another model than the one the saved
results came from is refused: one table must not mix two models. A line cut short by the
interruption itself is ignored (its case runs again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .runner import CaseResult

FILE = "cases.jsonl"


class ResumeError(Exception):
    """The saved results cannot be continued with this run (said in one line)."""


@dataclass
class CaseLog:
    path: Path
    run: dict[str, Any]
    done: list[CaseResult] = field(default_factory=list)  # read back when resuming
    _file: IO[str] | None = None

    @classmethod
    def open(cls, out: Path, run: dict[str, Any], *, resume: bool) -> CaseLog:
        """The log in `out`: continued (resume) or started anew. `run` describes this run."""
        out.mkdir(parents=True, exist_ok=True)
        log = cls(out / FILE, run)
        if resume and log.path.is_file():
            saved, log.done = _read(log.path)
            if saved.get("model") != run.get("model"):
                raise ResumeError(f"the results in {log.path} were made with model {saved.get('model') or 'none'}, "
                                  f"this run uses {run.get('model') or 'none'}: use another --out, or leave out "
                                  "--resume to start again")
            # Rewrite without a torn last line, so that the appends below start on a line of their own.
            log._file = log.path.open("w")
            log._write({"run": saved})
            for r in log.done:
                log._write(r.to_json())
        else:
            log._file = log.path.open("w")
            log._write({"run": run})
        return log

    def _write(self, obj: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(obj, default=str) + "\n")
        self._file.flush()

    def add(self, r: CaseResult) -> None:
        self._write(r.to_json())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _read(path: Path) -> tuple[dict[str, Any], list[CaseResult]]:
    run: dict[str, Any] = {}
    results: list[CaseResult] = []
    with path.open() as f:
        for n, line in enumerate(f):
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # torn by the interruption
            if n == 0 and isinstance(obj, dict) and "run" in obj:
                run = dict(obj["run"] or {})
            elif isinstance(obj, dict) and "case" in obj and "strategy" in obj:
                results.append(CaseResult.from_json(obj))
    return run, results

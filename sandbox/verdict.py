"""A verification's outcome, as the journal stores it and `dbproxy show` prints it.

- `verified`: forward then inverse on the sample gave back every sampled table's digest (and the
  catalog shape, when the transaction ran DDL).
- `failed`: the inverse ran and left the sample different, or raised an error; `diff` says how.
- `could not verify`: the sandbox could not give an answer (an object it cannot reproduce, a
  sample that was not representative even after widening, a sandbox that died or timed out);
  `reason` names the cause. Never treated as verified.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["verified", "failed", "could not verify"]


@dataclass
class Verdict:
    status: Status
    reason: str = ""
    diff: list[str] = field(default_factory=list)
    forward: str = ""  # how the forward ran on the sample: "statements" or "images (why)"
    sample: dict[str, int] = field(default_factory=dict)  # rows per sampled table
    masked: list[str] = field(default_factory=list)
    widened: bool = False
    cached: bool = False  # a verified result for the same statement shape and schema was reused
    sampled: str = ""  # a bulk transaction verified on part of its changes: which ("1000 of 250000 ...")
    #: Rule-made owner and privilege statements not run in the sandbox: they name a role the
    #: sandbox's unprivileged runner may not become, or need a privilege the copy does not have
    #: (owners and privileges are not compared).
    not_run: list[str] = field(default_factory=list)
    backend: str = ""
    source: str = "rules"  # who made the inverse
    timings_ms: dict[str, float] = field(default_factory=dict)
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def verified(self) -> bool:
        return self.status == "verified"

    def summary(self) -> str:
        """One line for a notice or a list."""
        total = self.timings_ms.get("total")
        took = f" in {total:.0f} ms" if total is not None and not self.cached else ""
        cached = " (cached result for the same statement shape and schema)" if self.cached else ""
        why = f": {self.reason}" if self.reason else ""
        sampled = f" (on a sample: {self.sampled})" if self.sampled else ""
        not_run = f" (owner and privilege statements not run in the sandbox: {'; '.join(self.not_run)})" \
            if self.not_run else ""
        return f"{self.status}{why}{sampled}{not_run}{took}{cached}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Verdict:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @classmethod
    def could_not(cls, reason: str, **kw: Any) -> Verdict:
        return cls("could not verify", reason, **kw)

"""Deciding what an agent's statement or transaction may do, and saying who decided.

For each action (operation class on an object), the first matching rule is found. A `deny` rule
decides outright (no grant overrides a deny). Otherwise a grant that covers the action allows it;
else the rule's own decision applies (`allow` within its `max_rows`, `ask`), and with no rule the
agent's mode decides (`mode`).

Two moments:
- **statement** (before it is sent upstream): a `deny` refuses the statement; an `ask` rule with
  `ask = "pause"` pauses it for approval. Other decisions wait for the COMMIT.
- **commit** (the agent's transaction ended with COMMIT, before anything of it is kept): every
  write action counts, with the rows each changed (from capture: cascades and trigger writes
  included; else from command tags). An `allow` with `max_rows` covers an action only up to that
  many rows; above it the next matching rule decides, and with none it is asked about. Any `deny`
  denies; any `ask` asks (a `pause` rule asks by holding: the statement already ran); any action
  no rule or grant covers leaves it to the mode; else it is `allow`. Reads are not decided at
  COMMIT (a read rule acts by deny or pause).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from dbproxy.policy.models import GrantRecord
from dbproxy.policy.rules import Rule, first_match, qualify
from inverse.opclass import Action, actions

Decision = Literal["allow", "ask", "deny", "mode"]


@dataclass
class Verdict:
    decision: Decision
    ask: Literal["hold", "pause"] = "hold"
    reasons: list[str] = field(default_factory=list)  # why, one line per deciding rule or grant
    rule: Rule | None = None  # the rule that denies or asks
    grants: list[GrantRecord] = field(default_factory=list)  # grants that allowed an action
    actions: list[Action] = field(default_factory=list)  # the actions the decision is about
    sources: list[str] = field(default_factory=list)  # the rules (by position) and grants that allowed it

    @property
    def by(self) -> str:
        """Who decided, for the journal and `show`."""
        if self.decision == "mode":
            return "no rule matched: the agent's mode decided"
        return "; ".join(self.reasons)


def write_actions(statements: Iterable[str]) -> list[Action]:
    """What statements write, as actions on schema-qualified objects (for a grant that names what
    a held transaction did)."""
    return qualified(a for sql in statements for a in actions(sql) if a.op != "read")


def qualified(acts: Iterable[Action]) -> list[Action]:
    """Objects as schema-qualified names (a NOTIFY channel is not in a schema)."""
    return sorted({Action(a.op, a.object if a.op == "notify" else qualify(a.object)) for a in acts})


def at_statement(rules: Sequence[Rule], grants: Sequence[GrantRecord], acts: Iterable[Action]) -> Verdict:
    """Deny or pause a statement before it runs (`mode`: let it run, the COMMIT decides)."""
    pause: Verdict | None = None
    for action in qualified(acts):
        rule = first_match(rules, action)
        if rule is None:
            continue
        if rule.decision == "deny":
            return Verdict("deny", reasons=[f"{rule} denies {action}"], rule=rule, actions=[action])
        if rule.decision == "ask" and rule.ask == "pause" and pause is None:
            if not any(g.covers(action, None) for g in grants):
                pause = Verdict("ask", "pause", [f"{rule} asks before {action}"], rule=rule, actions=[action])
    return pause or Verdict("mode")


def _deciding(rules: Sequence[Rule], action: Action, rows: int | None) -> tuple[Rule | None, Rule | None]:
    """The rule that decides `action` having changed `rows` rows, and the first `allow` passed
    over because it changed more rows than that rule's `max_rows` (an allow covers only up to
    them; the next matching rule decides, and with none the transaction is asked about)."""
    over: Rule | None = None
    for rule in rules:
        if not rule.matches(action):
            continue
        if rule.decision == "allow" and rule.max_rows is not None and rows is not None and rows > rule.max_rows:
            over = over or rule
            continue
        return rule, over
    return None, over


def at_commit(rules: Sequence[Rule], grants: Sequence[GrantRecord], rows: Mapping[Action, int | None]) -> Verdict:
    """The decision for a transaction whose write actions (with rows changed) are `rows`."""
    allowed: list[str] = []
    used: list[GrantRecord] = []
    asks: list[tuple[str, Rule | None]] = []
    unruled: list[Action] = []
    sources: list[str] = []
    acts = {q: n for a, n in rows.items() if a.op != "read" for q in qualified([a])}
    for action, n in sorted(acts.items()):
        rule, over = _deciding(rules, action, n)
        if rule is not None and rule.decision == "deny":
            why = f"{rule} denies {action}" + (f" (above {over}'s {over.max_rows} rows)" if over else "")
            return Verdict("deny", reasons=[why], rule=rule, actions=[action])
        grant = next((g for g in grants if g.covers(action, n)), None)
        if grant is not None:
            if grant not in used:
                used.append(grant)
            allowed.append(f"{grant} allows {action}")
            sources.append(f"grant #{grant.id}")
        elif rule is None and over is None:
            unruled.append(action)
        elif rule is None:
            assert over is not None
            asks.append((f"{over} allows at most {over.max_rows} rows, and {action} changed {n}", over))
        elif rule.decision == "allow":
            allowed.append(f"{rule} allows {action}")
            sources.append(rule.source)
        else:
            asks.append((f"{rule} asks before {action}", rule))
    if asks:
        return Verdict("ask", "hold", [a for a, _ in asks], rule=asks[0][1], grants=used, actions=list(acts))
    if unruled:
        return Verdict("mode", reasons=[f"no rule for {a}" for a in unruled], grants=used, actions=list(acts))
    if not acts:
        return Verdict("mode")
    return Verdict("allow", reasons=list(dict.fromkeys(allowed)), grants=used, actions=list(acts),
                   sources=list(dict.fromkeys(sources)))

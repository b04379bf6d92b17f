"""The rules from the settings, compiled, and what they say about an action.

A rule is `decision` (allow, ask, deny) for a set of operation classes on objects matching globs.
An agent's rules come first, then the default rules for every agent; for each action the first
rule that matches decides (file order). No match: the agent's mode decides, as without rules.

Object patterns: `*` matches everything; `schema.name` globs match schema-qualified names
(`public.orders`, `sales.*`); a pattern without a schema matches the name in any schema
(`orders`, `order_*`). Unqualified names in statements are taken as `public.NAME`.

`contradictions` finds rules that can never apply (an earlier rule with another decision covers
all they cover, or they are an agent's own rules and the agent is in pass-through mode): a settings
error, naming both. `overlaps` finds partial overlaps with different
decisions: logged at start, naming both and which wins.

`permanent_refusal` says why operation classes cannot be granted permanently: nothing without an
exact inverse may be (IsolateGPT's rule).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dbproxy.config.settings import RuleSettings, Settings
from inverse.opclass import Action

#: Never reversible: a notification is delivered at COMMIT, a function's effects are unknown.
NEVER_REVERSIBLE = {"notify": "a notification cannot be taken back once delivered",
                    "function": "a function's effects are known only after it ran, and may reach outside the "
                                "database"}
#: Reversible only where capture is installed (row images, DDL events).
NEEDS_CAPTURE = frozenset({"insert", "update", "delete", "truncate", "copy-in"})
NEEDS_DDL_CAPTURE = frozenset({"ddl-create", "ddl-alter"})
#: Not reversible yet: the state they destroy is not captured.
NOT_REVERSIBLE_YET = {"ddl-drop": "dropped objects and their data are not captured, so a drop has no exact inverse",
                      "privilege": "GRANT/REVOKE have no exact inverse yet"}


def qualify(name: str) -> str:
    """Unqualified names are taken as `public.name` (the default search_path)."""
    return name if "." in name or not name else f"public.{name}"


def matches(pattern: str, name: str) -> bool:
    if pattern == "*":
        return True
    if not name:
        return False
    name = name.lower()
    if "." in pattern:
        return fnmatch.fnmatchcase(qualify(name), pattern)
    return fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], pattern)


@dataclass(frozen=True)
class Rule:
    source: str  # where it is written: agents.NAME.rules[i] or rules[i]
    ops: frozenset[str]
    objects: tuple[str, ...]
    decision: str  # allow | ask | deny
    ask: str = "hold"  # hold | pause
    max_rows: int | None = None

    def matches(self, action: Action) -> bool:
        return action.op in self.ops and any(matches(p, action.object) for p in self.objects)

    def __str__(self) -> str:
        what = f"{self.decision}{f' ({self.ask})' if self.decision == 'ask' else ''} {', '.join(sorted(self.ops))} " \
               f"on {', '.join(self.objects)}"
        if self.max_rows is not None:
            what += f" up to {self.max_rows} rows"
        return f"{self.source}: {what}"

    @classmethod
    def of(cls, source: str, r: RuleSettings) -> Rule:
        return cls(source, frozenset(r.ops), tuple(r.objects), r.decision, r.ask, r.max_rows)


def rules_for(settings: Settings, agent: str) -> list[Rule]:
    """An agent's effective rules, in the order they are tried."""
    own = settings.agents[agent].rules if agent in settings.agents else []
    return [*(Rule.of(f"agents.{agent}.rules[{i}]", r) for i, r in enumerate(own)),
            *(Rule.of(f"rules[{i}]", r) for i, r in enumerate(settings.rules))]


def _covers(first: Rule, later: Rule) -> bool:
    """Does `first` decide every action `later` can match? (An allow with `max_rows` passes larger
    changes on to later rules, so it never covers them all.)"""
    if first.decision == "allow" and first.max_rows is not None:
        return False
    return later.ops <= first.ops and all(any(p == "*" or fnmatch.fnmatchcase(q, p) for p in first.objects)
                                          for q in later.objects)


def _overlap(a: Rule, b: Rule) -> bool:
    if not a.ops & b.ops:
        return False
    return any(p == "*" or q == "*" or fnmatch.fnmatchcase(q, p) or fnmatch.fnmatchcase(p, q)
               for p in a.objects for q in b.objects)


def _mode(settings: Settings, agent: str) -> str:
    own = settings.agents[agent].mode if agent in settings.agents else None
    return own or settings.mode


def contradictions(agents: Iterable[str], settings: Settings) -> list[str]:
    problems = []
    for agent in agents:
        if agent in settings.agents and settings.agents[agent].rules and _mode(settings, agent) == "passthrough":
            # Pass-through relays unchanged: an agent's own rules would be silently ignored.
            problems.append(f"agents.{agent}.rules: rules do not apply to a pass-through agent (its statements are "
                            f"relayed unchanged); give agents.{agent} mode \"hold\" or \"undo\", or remove its rules")
            continue
        rules = rules_for(settings, agent)
        for j, later in enumerate(rules):
            for first in rules[:j]:
                if first.decision != later.decision and _covers(first, later):
                    problems.append(f"{later.source} ({later.decision} {', '.join(sorted(later.ops))} on "
                                    f"{', '.join(later.objects)}) never applies: {first.source} ({first.decision}) "
                                    "comes first and covers everything it names; reorder them or narrow the first")
                    break
    return list(dict.fromkeys(problems))


def overlaps(agents: Iterable[str], settings: Settings) -> list[str]:
    notes = []
    if settings.rules:
        relayed = [a for a in agents if a and _mode(settings, a) == "passthrough"]
        if relayed:
            notes.append(f"the default rules do not apply to pass-through agents ({', '.join(relayed)}): their "
                         "statements are relayed unchanged")
    for agent in agents:
        rules = rules_for(settings, agent)
        for j, later in enumerate(rules):
            for first in rules[:j]:
                if first.decision != later.decision and _overlap(first, later) and not _covers(first, later):
                    notes.append(f"{first.source} ({first.decision}) and {later.source} ({later.decision}) overlap; "
                                 f"where both match, {first.source} wins (it comes first)")
    return list(dict.fromkeys(notes))


def first_match(rules: Sequence[Rule], action: Action) -> Rule | None:
    for rule in rules:
        if rule.matches(action):
            return rule
    return None


def permanent_refusal(ops: Iterable[str], *, capture: bool, ddl_capture: bool) -> str | None:
    """Why these classes cannot be granted permanently (None: they can). `capture`: row capture
    is installed where the agent works; `ddl_capture`: and the DDL event triggers."""
    for op in sorted(set(ops)):
        if op in NEVER_REVERSIBLE:
            return f"{op}: {NEVER_REVERSIBLE[op]}"
        if op in NOT_REVERSIBLE_YET:
            return f"{op}: {NOT_REVERSIBLE_YET[op]}"
        if op in NEEDS_CAPTURE and not capture:
            return f"{op}: capture is not installed (`dbproxy install`), so it would have no exact inverse"
        if op in NEEDS_DDL_CAPTURE and not ddl_capture:
            return f"{op}: DDL capture (event triggers, installed by a superuser) is missing, so it would have no " \
                   "exact inverse"
    return None

"""Policy effects: what a rule does, and so what a decision's outcome is, in one table.

``PRECEDENCE`` lists the effects that combine, most restrictive first: among the rules that
matched, the first effect of the table that has one wins (deny > redact > permit; none matched ->
the default deny). ``OVERRIDES`` are effects that do not combine but replace the combined outcome
when their best rule's priority is strictly above the winner's (observe). Everything else that
depends on an effect reads its row: which optional rule keys it accepts (the compiler), whether
the request is released and which response rules apply (evaluation, pipeline), the code of the
decision. Adding an action is one row here, plus what the action does where a row cannot say it.

The values are the strings of the policy language and of decision records. Records carry them as
plain ``str`` (``Effect.X.value``): the audit's canonical JSON refuses any other type.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum


class Effect(StrEnum):
    """A rule's effect and a decision's outcome (the order is the policy schema's)."""

    PERMIT = "permit"
    REDACT = "redact"
    DENY = "deny"
    OBSERVE = "observe"


class ResponseSide(Enum):
    """What of the response side (response rules, rate limits) applies to a request with this outcome."""

    ALL = "all"           # redaction, blocking and the marker header; rate limits apply too
    MARKER = "marker"     # the transparency marker only (nothing changed, nothing limited)
    NONE = "none"         # the request is not released: no response


@dataclass(frozen=True)
class EffectRow:
    effect: Effect
    releases: bool                 # the request goes upstream (possibly rewritten)
    code: str | None               # the decision's code when it wins; None: the winning rule's own
                                   # status, code and reason (the row accepts those keys)
    response: ResponseSide
    rule_keys: frozenset[str]      # the optional rule keys (of OPTIONAL_RULE_KEYS) it accepts


# Rule keys that only some effects accept; the compiler refuses them on the others.
OPTIONAL_RULE_KEYS = ("status", "code", "reason", "redact", "max_tokens", "serve_with")

PRECEDENCE: tuple[EffectRow, ...] = (
    EffectRow(Effect.DENY, releases=False, code=None, response=ResponseSide.NONE,
              rule_keys=frozenset({"status", "code", "reason"})),
    EffectRow(Effect.REDACT, releases=True, code="policy_redacted", response=ResponseSide.ALL,
              rule_keys=frozenset({"redact", "max_tokens", "serve_with"})),
    EffectRow(Effect.PERMIT, releases=True, code="policy_permitted", response=ResponseSide.ALL,
              rule_keys=frozenset({"max_tokens", "serve_with"})),
)
OVERRIDES: tuple[EffectRow, ...] = (
    EffectRow(Effect.OBSERVE, releases=True, code="policy_observed", response=ResponseSide.MARKER,
              rule_keys=frozenset({"max_tokens"})),
)
ROWS: dict[Effect, EffectRow] = {row.effect: row for row in PRECEDENCE + OVERRIDES}


def misplaced_key_message(key: str) -> str:
    """The compiler's message for an optional rule key on an effect that does not accept it,
    phrased from the table: the effects that take it, or the one that does not."""
    takes = [e.value for e in Effect if key in ROWS[e].rule_keys]
    refuses = [e.value for e in Effect if key not in ROWS[e].rule_keys]
    if len(takes) == 1:
        return f"{key!r} only applies to {takes[0]} rules"
    if len(refuses) == 1:
        return f"{key!r} does not apply to {refuses[0]} rules"
    return f"{key!r} applies to {' and '.join(takes)} rules"

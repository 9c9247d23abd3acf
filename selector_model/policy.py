"""From scores to one choice: utility, the safety rule, exploration.

    utility(m) = P(success | request, m) - cost_weight * expected_seconds(m)

The safety rule: a model the artifact never saw, or a lead smaller than `min_gain`
over the profile's anchor (its configured default, else the best model the artifact
knows), is not worth a gamble: the anchor is kept. Exploration, when a profile asks
for it, picks uniformly among the eligible and records the probability of what was
picked (the propensity), so that training on the proxy's own logs can correct for
the proxy's own choices.
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from selector_model.features import Candidate

# Extra lead a model unknown to the artifact needs over the anchor (it is scored from
# its family and size alone), unless the artifact's own `policy.unseen_margin`, set
# from its leave-one-model-out evaluation, says otherwise.
UNKNOWN_MARGIN = 0.05
_UTILITY = operator.attrgetter("utility")


@dataclass(slots=True)
class Scored:
    name: str
    p_success: float
    seconds: float
    utility: float
    known: bool

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "p_success": round(self.p_success, 4),
            "expected_seconds": round(self.seconds, 3),
            "utility": round(self.utility, 4),
            "known_to_artifact": self.known,
        }


@dataclass
class Decision:
    chosen: str
    reason: str  # ml | fallback | pinned | explore | experiment
    profile: str
    ranking: list[Scored]
    filtered: dict[str, str] = field(default_factory=dict)
    propensity: float = 1.0
    artifact_version: str | None = None
    experiment: str | None = None
    variant: str | None = None

    @property
    def score(self) -> Scored | None:
        return next((s for s in self.ranking if s.name == self.chosen), None)

    def record(self) -> dict[str, Any]:
        """The decision as the usage event stores it."""
        chosen = self.score
        others = [s for s in self.ranking if s.name != self.chosen]
        runner_up = max(others, key=lambda s: s.utility) if others else None
        return {
            "reason": self.reason,
            "profile": self.profile,
            "chosen": self.chosen,
            "p_success": chosen.p_success if chosen else None,
            "utility": chosen.utility if chosen else None,
            "runner_up": runner_up.name if runner_up else None,
            "runner_up_p_success": runner_up.p_success if runner_up else None,
            "runner_up_utility": runner_up.utility if runner_up else None,
            "propensity": self.propensity,
            "artifact_version": self.artifact_version,
            "experiment": self.experiment,
            "variant": self.variant,
        }


def heuristic_p_success(candidate: Candidate) -> float:
    """The fallback's stand-in for P(success) when no artifact can be used: bigger
    models answer better, roughly log-linearly in parameters (documented heuristic)."""
    return min(0.85, max(0.3, 0.45 + 0.06 * math.log2(max(candidate.params_b, 0.5))))


def rank(
    names: list[str],
    p_success: list[float],
    seconds: list[float],
    cost_weight: float,
    known: AbstractSet[str],
) -> list[Scored]:
    ranking = [
        Scored(name, p, s, p - cost_weight * s, name in known)
        for name, p, s in zip(names, p_success, seconds, strict=True)
    ]
    ranking.sort(key=_UTILITY, reverse=True)
    return ranking


def pick(
    ranking: list[Scored],
    default_model: str,
    min_gain: float,
    exploration: float,
    rng: random.Random,
    unknown_margin: float = UNKNOWN_MARGIN,
) -> tuple[Scored, str, float]:
    """(choice, reason, propensity) from a ranking sorted best first."""
    greedy = ranking[0]
    reason = "ml"
    anchor = next((s for s in ranking if s.name == default_model), None)
    if anchor is None:
        anchor = next((s for s in ranking if s.known), None)
    if anchor is not None and greedy is not anchor:
        needed = min_gain + (0.0 if greedy.known else unknown_margin)
        if greedy.utility - anchor.utility < needed:
            greedy, reason = anchor, "pinned"
    if exploration > 0 and len(ranking) > 1:
        share = exploration / len(ranking)
        if rng.random() < exploration:
            choice = rng.choice(ranking)
            return choice, "explore", share + (1 - exploration) * (choice is greedy)
        return greedy, reason, (1 - exploration) + share
    return greedy, reason, 1.0

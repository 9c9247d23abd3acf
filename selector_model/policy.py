"""From scores to one choice: utility, the safety rule, exploration.

    utility(m) = P(success | request, m) - cost_weight * expected_seconds(m)

The safety rule: a lead smaller than `min_gain` over the profile's anchor (its
configured default, else the best model the artifact knows, else, when it knows none
of the candidates, the best-ranked of the largest's size, `size_anchor`: size is the
one description that orders models it never saw without training, where it differs)
is not worth a gamble. Against an anchor the artifact
never saw, the lead must also exceed `SWITCH_Z` standard deviations of the difference
of the two P (each model's `spread`, from what the catalogue knows of it): a router
that leaves the largest only on such a lead does worse than always taking the largest
only when its P were off by more than that. Of the models that lead such an anchor so,
the choice is the one whose P less `SWITCH_Z` of its own spread (its lower bound) is
highest, else the anchor: a model the catalogue places from imputed areas may be rated
first and clear the bar on a P far above what it does, while one rated a little below
it, with published results, also clears it and is as likely to be better and far less
likely to be much worse. Against an anchor the artifact knows, spreads count for
nothing: what they buy is the bound against always taking the largest, kept where the
artifact knows none of the candidates; there the choice is the best-ranked model that
leads the anchor by `min_gain`.
A profile's `tolerance` then takes the quickest candidate whose utility is within it
of that choice (reason `cheaper`): "the cheapest model at most 3 points less likely
to answer well" for 0.03. A profile's `max_loss` bounds what cost may take away:
before the rule, a candidate whose rating (P, or the blend and its optimism once there
is evidence) less `SWITCH_Z` of its spread (its lower bound) is more than that below
the best-rated one's rating is out of the running, so a profile that weighs cost never
trades more than `max_loss` of P(success) for speed, also where a model's P rests on
areas the catalogue imputes: rated near the best and quicker, such a model would win
on cost by its rating alone, however far below it it answers.
Every decision records the probability of what was picked (the
propensity), so that training on the proxy's own logs can correct for the proxy's own
choices.

`pick` is the rule from the selector's scores alone, exploring uniformly among the
eligible (kept as the baseline benchmarks compare with).

`with_catalogue` (`selector_model.catalogue_prior`) draws the P of a model the artifact
never saw toward the catalogue's reading of it; `choose` (`selector_model.posterior`)
adds what the proxy learned from its own traffic.
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from selector_model.features import Candidate

# Extra lead a model unknown to the artifact needs over the anchor (it is scored from
# its family and size alone), unless the artifact's own `policy.unseen_margin`, set
# from its leave-one-model-out evaluation, says otherwise.
UNKNOWN_MARGIN = 0.05
# A model leads another, for the safety rule, only by more than this many standard
# deviations of the difference of their P (their spreads, `catalogue_prior.spreads`,
# combined as independent); of those that lead an anchor the artifact never saw, each
# is taken at its P less this many of its own spread.
SWITCH_Z = 1.0
# A candidate with at least this share of the largest one's parameters is of its size,
# for the anchor among models the artifact never saw (`size_anchor`): size orders a
# fleet's 8B and 70B models, not its 70B and 72B ones, whose published results are
# what tells them apart; a family's next size up has about twice the parameters.
SAME_SIZE = 0.8
# P(success) as a Beta prior mean stays inside (0, 1).
P_FLOOR = 0.01
P_CEILING = 1 - P_FLOOR


def logit(p: float) -> float:
    """The log-odds of `p`, kept inside the floor and the ceiling (`inside`, spelled
    out: `with_catalogue` takes it for every candidate of every decision)."""
    p = P_FLOOR if p < P_FLOOR else P_CEILING if p > P_CEILING else p
    return math.log(p / (1.0 - p))


def inside(p: float) -> float:
    """`p` kept between the floor and the ceiling."""
    return P_FLOOR if p < P_FLOOR else P_CEILING if p > P_CEILING else p


_UTILITY = operator.attrgetter("utility")


@dataclass(slots=True)
class Scored:
    name: str
    p_success: float
    seconds: float
    utility: float  # with the blend in place of p_success when there is evidence
    known: bool
    # What the proxy learned for this kind of prompt: weighted count, mean outcome, and
    # the mean of what the selector expected of those outcomes.
    evidence_count: float = 0.0
    evidence_mean: float | None = None
    evidence_expected: float | None = None
    blend: float | None = None  # the posterior mean used (None: the prior alone)
    # The model's evidence over every kind (weighted count, mean outcome, mean
    # expectation), which moves it on every kind.
    model_count: float = 0.0
    model_mean: float | None = None
    model_expected: float | None = None
    # How far its P may be off (a standard deviation; 0 for a model the artifact knows).
    spread: float = 0.0
    optimism: float = 0.0  # the bonus for what is not known of it, in the utility

    def blended(
        self,
        blend: float,
        means: tuple[float, float | None, float | None] = (0.0, None, None),
        model_means: tuple[float, float | None, float | None] = (0.0, None, None),
        optimism: float = 0.0,
    ) -> Scored:
        """This candidate with `blend` (kept inside the floor) in place of its prior in
        the utility, plus `optimism`, and the evidence it came from, as `means_of` reads
        it: (count, mean outcome, mean expectation) for this kind (`means`) and over
        every kind (`model_means`)."""
        blend = inside(blend)
        count, mean, expected = means
        model_count, model_mean, model_expected = model_means
        return Scored(
            self.name,
            self.p_success,
            self.seconds,
            self.utility - self.p_success + blend + optimism,
            self.known,
            count,
            mean,
            expected,
            blend,
            model_count,
            model_mean,
            model_expected,
            self.spread,
            optimism,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "p_success": round(self.p_success, 4),
            "prior": round(self.p_success, 4),
            "evidence": {
                "count": round(self.evidence_count, 3),
                "mean": None if self.evidence_mean is None else round(self.evidence_mean, 4),
                "expected": None
                if self.evidence_expected is None
                else round(self.evidence_expected, 4),
            },
            "model_evidence": {
                "count": round(self.model_count, 3),
                "mean": None if self.model_mean is None else round(self.model_mean, 4),
                "expected": None if self.model_expected is None else round(self.model_expected, 4),
            },
            "blend": round(self.p_success if self.blend is None else self.blend, 4),
            "spread": round(self.spread, 4),
            "optimism": round(self.optimism, 4),
            "expected_seconds": round(self.seconds, 3),
            "utility": round(self.utility, 4),
            "known_to_artifact": self.known,
        }


def means_of(got: Sequence[float] | None) -> tuple[float, float | None, float | None]:
    """(count, mean outcome, mean expectation) of (successes, count, expected)."""
    if got is None or got[1] <= 0:
        return 0.0, None, None
    count = float(got[1])
    return count, float(got[0]) / count, float(got[2]) / count


@dataclass
class Decision:
    chosen: str
    reason: str  # ml | fallback | pinned | learned | explore | experiment
    profile: str
    ranking: list[Scored]
    # The prior strength of the models the artifact was fitted on in this decision
    # (`fitted_strength`).
    known_strength: float
    filtered: dict[str, str] = field(default_factory=dict)
    propensity: float = 1.0
    artifact_version: str | None = None
    experiment: str | None = None
    variant: str | None = None
    kind: str | None = None  # the kind of prompt evidence is kept for

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
            # Where it stood, which the evidence records with the outcome.
            "margin": None
            if chosen is None
            else margin_of(chosen.p_success, top_two(self.ranking)),
            "blend": chosen.blend if chosen else None,
            "kind": self.kind,
            "utility": chosen.utility if chosen else None,
            "runner_up": runner_up.name if runner_up else None,
            "runner_up_p_success": runner_up.p_success if runner_up else None,
            "runner_up_utility": runner_up.utility if runner_up else None,
            "propensity": self.propensity,
            "artifact_version": self.artifact_version,
            "experiment": self.experiment,
            "variant": self.variant,
        }


def unchosen_record(reason: str, profile: str) -> dict[str, Any]:
    """The usage event's record (as `Decision.record` writes one) of a request of
    `auto:<profile>` answered with no model chosen, for `reason` (the proxy's "cloud":
    a cloud provider answers in the profile's name): its reason and profile, and
    `chosen` null. Why no more: the other fields describe a ranked candidate (its P,
    margin, utility, the runner-up) and the chance the policy had of choosing it
    (`propensity`), and no candidate was ranked; a reader that learns from decisions
    reads none without a chosen model."""
    return {"reason": reason, "profile": profile, "chosen": None}


def top_two(ranking: Sequence[Scored]) -> tuple[float, float]:
    """The highest and second-highest P of the candidates (the highest twice for one)."""
    first = second = -math.inf
    for s in ranking:
        if s.p_success > first:
            first, second = s.p_success, first
        elif s.p_success > second:
            second = s.p_success
    return first, second if second > -math.inf else first


def margin_of(p: float, top: tuple[float, float]) -> float:
    """A candidate's P minus the highest P of the other candidates (0 alone), from its
    P and the ranking's two highest (`top_two`): where the model stood in the decision,
    as the evidence records it with each outcome (`selector_model.posterior`)."""
    first, second = top
    return p - (second if p >= first else first)


def heuristic_p_success(candidate: Candidate) -> float:
    """The fallback's stand-in for P(success) when no artifact can be used: bigger
    models answer better, roughly log-linearly in parameters (documented heuristic)."""
    return min(0.85, max(0.3, 0.45 + 0.06 * math.log2(max(candidate.params_b, 0.5))))


def size_anchor(
    ranking: Sequence[Scored], candidates: Sequence[Candidate], evicts: Sequence[bool]
) -> str:
    """The anchor of a quality-only profile among models the artifact never saw: the
    best-ranked candidate of the largest's size (`SAME_SIZE`) whose loading evicts no
    model in use (`evicts`, by candidate; the eviction penalty decides those), else ""
    for none. `candidates` and `evicts` are in the same order."""
    bar = SAME_SIZE * max(c.params_b for c in candidates)
    # Plain loops: this runs in every such decision.
    of_size = set()
    for c, evicting in zip(candidates, evicts, strict=True):
        if c.params_b >= bar and not evicting:
            of_size.add(c.name)
    for s in ranking:
        if s.name in of_size:
            return s.name
    return ""


def rank(
    names: list[str],
    p_success: list[float],
    seconds: list[float],
    cost_weight: float,
    known: AbstractSet[str],
    spread: Sequence[float] | None = None,
) -> list[Scored]:
    """The candidates by utility, best first; `spread`: how far each P may be off."""
    ranking = []
    # Every field given in order, as `Scored.blended` does: a keyword argument would
    # take the slower way into the generated __init__, for every candidate.
    for name, p, s, d in zip(names, p_success, seconds, spread or [0.0] * len(names), strict=True):
        ranking.append(
            Scored(
                name,
                p,
                s,
                p - cost_weight * s,  # utility
                name in known,
                0.0,  # evidence_count, evidence_mean, evidence_expected: none
                None,
                None,
                None,  # blend: the prior alone
                0.0,  # model_count, model_mean, model_expected: none
                None,
                None,
                d,  # spread
            )
        )
    ranking.sort(key=_UTILITY, reverse=True)
    return ranking


def pick(
    ranking: list[Scored],
    default_model: str,
    min_gain: float,
    exploration: float,
    rng: random.Random,
    unknown_margin: float = UNKNOWN_MARGIN,
    tolerance: float = 0.0,
    max_loss: float = 0.0,
) -> tuple[Scored, str, float]:
    """(choice, reason, propensity) from a ranking sorted best first."""
    greedy, reason = safe_greedy(
        ranking, default_model, min_gain, unknown_margin, 1.0, tolerance, max_loss
    )
    if exploration > 0 and len(ranking) > 1:
        share = exploration / len(ranking)
        if rng.random() < exploration:
            choice = rng.choice(ranking)
            return choice, "explore", share + (1 - exploration) * (choice is greedy)
        return greedy, reason, (1 - exploration) + share
    return greedy, reason, 1.0


def safe_greedy(
    ranking: Sequence[Scored],
    default_model: str,
    min_gain: float,
    unknown_margin: float,
    prior_strength: float,
    tolerance: float = 0.0,
    max_loss: float = 0.0,
) -> tuple[Scored, str]:
    """The best of a ranking sorted best first, but for the safety rule (see the module
    docstring), among the candidates within `max_loss` of the best-rated (`_near_best`),
    then with a `tolerance` the cheapest within it (`_cheapest_within`). The margin for
    what a P may be off shrinks with each model's evidence."""
    if max_loss > 0:
        ranking = _near_best(ranking, max_loss, prior_strength)
    choice, reason = ranking[0], "ml"
    # Plain loops, not next() over a generator: this runs twice in a decision with
    # evidence.
    anchor: Scored | None = None
    if default_model:  # no candidate is named "": most profiles have no default
        for s in ranking:
            if s.name == default_model:
                anchor = s
                break
    if anchor is None:
        for s in ranking:
            if s.known:
                anchor = s
                break
    if anchor is not None and choice is not anchor:
        # Of the models that lead the anchor clearly, against an anchor the artifact
        # never saw the one with the highest lower bound, else the best-ranked: one
        # ranked below the greedy choice may lead, where the greedy one's own doubt is
        # too wide to, and be the surer bet where both lead.
        doubt_a = prior_strength / (prior_strength + anchor.evidence_count)
        choice, reason = anchor, "pinned"
        best_low = -math.inf
        for other in ranking:
            if other is anchor or other.utility - anchor.utility < min_gain:
                break  # sorted: none further on leads by min_gain
            # Each one's doubt shrinks with its own evidence.
            doubt = prior_strength / (prior_strength + other.evidence_count)
            unknown = 0.0 if other.known else unknown_margin * doubt
            if anchor.known:
                if other.utility - anchor.utility >= min_gain + unknown:
                    choice, reason = other, "ml"
                    break
                continue
            own = other.spread * doubt
            margin = SWITCH_Z * math.hypot(own, anchor.spread * doubt_a) + unknown
            low = other.utility - SWITCH_Z * own - unknown
            if other.utility - anchor.utility >= min_gain + margin and low > best_low:
                choice, reason, best_low = other, "ml", low
    if tolerance > 0:
        cheaper = _cheapest_within(ranking, choice, tolerance)
        if cheaper is not choice:
            return cheaper, "cheaper"
    return choice, reason


def _near_best(
    ranking: Sequence[Scored], max_loss: float, prior_strength: float
) -> Sequence[Scored]:
    """The candidates whose lower bound is at most `max_loss` below the best-rated
    candidate's rating, in ranking order (`ranking` itself when that is all of them).
    A candidate's rating is what its utility holds of its chance of a good answer: the
    prior, or once there is evidence the blend and its optimism; its lower bound, the
    rating less `SWITCH_Z` of its spread, which shrinks with its evidence as in the
    safety rule (`prior_strength`). The best-rated one is held to it too: a rating
    that may be more than `max_loss` above what the model does is no ground to trade
    on. When no candidate's lower bound is within it, nothing is certain enough to
    trade for cost, and the one with the highest lower bound is kept (the safety
    rule's choice among models that lead an anchor it never saw)."""
    # One pass, the lower bounds kept for the filter: this runs in every decision of a
    # profile with a bound.
    top = -math.inf
    lows = []
    for s in ranking:
        rated = (s.p_success if s.blend is None else s.blend) + s.optimism
        if rated > top:
            top = rated
        if s.spread:
            rated -= SWITCH_Z * s.spread * prior_strength / (prior_strength + s.evidence_count)
        lows.append(rated)
    bar = top - max_loss
    if min(lows) >= bar:
        return ranking
    if max(lows) < bar:
        bar = max(lows)
    return [s for s, low in zip(ranking, lows, strict=True) if low >= bar]


def beyond_max_loss(
    ranking: Sequence[Scored], max_loss: float, prior_strength: float
) -> frozenset[str]:
    """The candidates `max_loss` keeps out of the running (none when it is 0), with
    spreads shrinking with evidence by `prior_strength` as in the decision."""
    if max_loss <= 0 or not ranking:
        return frozenset()
    near = {s.name for s in _near_best(ranking, max_loss, prior_strength)}
    return frozenset(s.name for s in ranking if s.name not in near)


def _cheapest_within(ranking: Sequence[Scored], choice: Scored, tolerance: float) -> Scored:
    """The quickest candidate (expected seconds) whose utility is within `tolerance` of
    `choice`'s, `choice` itself when none is quicker. The utilities are taken as they
    are, without a discount for a spread: a model the artifact never saw would then
    never be the cheaper one, and a profile that weighs cost would cost what `best`
    does in a fleet of such models."""
    bar = choice.utility - tolerance
    best = choice
    for s in ranking:
        if s.seconds < best.seconds and s.utility >= bar:
            best = s
    return best

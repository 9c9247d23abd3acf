"""From scores to one choice: utility, the safety rule, exploration.

    utility(m) = P(success | request, m) - cost_weight * expected_seconds(m)

The safety rule: a lead smaller than `min_gain` over the profile's anchor (its
configured default, else the best model the artifact knows, else, when it knows none
of the candidates, the largest: size is the one description that orders models it
never saw without training) is not worth a gamble. Against an anchor the artifact
never saw, the lead must also exceed `SWITCH_Z` standard deviations of the difference
of the two P (each model's `spread`, from what the catalogue knows of it): a router
that leaves the largest only on such a lead does worse than always taking the largest
only when its P were off by more than that. The choice is the best-ranked model that
leads the anchor so, else the anchor: a model the catalogue places from its details
alone may be rated first without a clear lead, while one below it, with published
results, leads clearly.
A profile's `tolerance` then takes the quickest candidate whose utility is within it
of that choice (reason `cheaper`): "the cheapest model at most 3 points less likely
to answer well" for 0.03. A profile's `max_loss` bounds what cost may take away:
before the rule, the candidates rated more than that below the best-rated one (P, or
the blend and its optimism once there is evidence) are out of the running, so a
profile that weighs cost never trades more than `max_loss` of P(success) for speed.
`with_catalogue` draws the P of a model the artifact never saw toward the catalogue's
reading of it. Every decision records the probability of what was picked (the
propensity), so that training on the proxy's own logs can correct for the proxy's own
choices.

`pick` is the rule from the selector's scores alone, exploring uniformly among the
eligible (kept as the baseline benchmarks compare with).

`choose` adds what the proxy learned from its own traffic (`selector_model.evidence`):
for each candidate, the outcomes of its answers to this kind of prompt (count n, sum
s) and what the selector expected of them (sum e of its P(success) then), and the same
sums over every kind (N, S, E). The correction is hierarchical, each level shrunk
toward the one above by a prior's strength. First the pool's shift over every kind,
G, then each model's offset from it, o(m), what its answers say about the model
whatever the prompt; then the kind's shift, how far P is off for this kind of prompt
over every model with evidence once each model's offset is taken out, shrunk toward G:

    G = shift(all kinds, offsets 0, centre 0),   o(m) = (S - E - N * G) / (n0(m) + N)
    shift = shift(this kind, offsets o, centre G)
    shift(pool, o, c) = c + sum_m w(m) * (g(m) - o(m) - c) / (n0 + sum_m w(m)),
    g(m) = (s(m) - e(m)) / n(m),  w(m) = n(m) * n0(m) / (n0(m) + n(m))

(a model's mean gap is the pool's plus its own departure, whose spread its prior's
strength n0(m) sets: it speaks for the pool with at most n0(m) outcomes). Every
candidate moves by the kind's shift and its own offset, so a model's evidence on one
kind of prompt moves its estimate on every other kind; on its own kind it moves it
further, by how far it departs from that, shrunk by its prior's strength n0(m)
(`known_prior_strength` for a model the artifact was fitted on, whose P rests on many
outcomes of that very model; `prior_strength` for any other). The fitted models'
strength holds only as far as the kind's evidence bears their P out: it falls toward
`prior_strength` by how far their outcomes stray from their P beyond chance
(`fitted_strength`), since a fitted model that answers a kind 20 points below its P
(another grading, other prompts than the artifact's) says the P of the fitted models
never tried there are no better known, and they must be tried:

    blend(m) = P(m) + c(m) + (s(m) - e(m) - n(m) * c(m)) / (n0(m) + n(m)),
    c(m) = shift + o(m)

the mean of a Beta posterior whose prior has mean P(m) + c(m) and weight n0(m), with
the evidence centred on this prompt. Why not each model's own gap alone: the chosen
model is the one whose P was highest, so the most likely overestimated (and a model
chosen on a kind's hard prompts meets the selector's overconfidence there); correcting
only it hands its place to the next-ranked, as overestimated but never tried, and
feedback on a good prior undoes it. With priors the artifact was fitted on, only a
difference between models that were both tried reorders them; with weak priors (models
it never saw) a chosen model's shortfall is shared between the pool and the model, so
a model chosen everywhere can still lose its place. Why a model level: a model the
artifact never saw is placed from its description, and that placement's error is
mostly the model's (its size or family misread), not the kind's; its answers on
knowledge prompts then say something about its math too, less than math answers would.
A model the artifact was fitted on has no offset (o = 0): fitted on its outcomes, the
artifact leaves it no error of its own across kinds, and what its evidence says over
every kind is the pool's.
The model level is optional (`learning.model_level`, off by default): it corrects a
model the artifact misplaced everywhere at once, but a few poor answers of a model on
one kind then lower it on every other, where it may not be tried again (the safety
rule keeps the anchor while the other's doubt is wide).

Once there is evidence, the utility uses the blend in place of P, plus `optimism`
standard deviations of the posterior (optimism in the face of uncertainty):

    utility(m) = blend(m) + optimism * sqrt(blend(m) * (1 - blend(m)) / (n0(m) + n(m) + 1))
                 - cost_weight * expected_seconds(m)

Why: ranked by posterior means alone, the greedy choice only ever learns about the
model it already picks; a model ranked below it, never tried on this kind, keeps the
prior's placement (lowered with the kind's shift) however wrong that is. With the
bonus, a model whose posterior is wide (a weak prior, few outcomes of its own) is tried
until its outcomes either lift it or narrow its spread below the leader's; the choice
stays deterministic (propensity 1). Models the artifact was fitted on have spreads
alike (n0 = 200), so among them the bonus hardly reorders anything. Without any
evidence there is none, nor while every outcome of the kind is what the selector
expected (live traffic without ratings: answers that completed count as no news,
`outcome.against`): a gamble there would learn nothing, and each untried model would
be tried on the strength of its wide posterior alone. The safety rule reads these
utilities (a model's unseen-margin shrinks as its evidence grows).

One standard deviation does not grow with how often the kind is decided: a model whose
first answers of a kind were poor falls below a rival the selector rates alike, which
then takes the kind; the rival's outcomes narrow the rival's spread, not the first's,
and the first is not tried there again however long the kind is served. So a model
with r times fewer outcomes of its own than the kind has per candidate (its prior
counted as outcomes), r = F / (n0(m) + n(m)) with F the sum of n over the candidates
over their number, gains sqrt(2 ln r) standard deviations of its posterior where that
exceeds one (the width of MOSS, UCB with the decisions per arm), but never more than
brings it back where it stood untried:

    bonus(m) = max(optimism * sd(m), min(optimism * z(r) * sd(m), standing(m) - blend(m)))
    sd(m) = sqrt(blend(m) * (1 - blend(m)) / (n0(m) + n(m) + 1)),  z(r) = sqrt(2 ln r)
    standing(m) = q + optimism * sqrt(q * (1 - q) / (n0(m) + 1)),  q = P(m) + c(m)

Every model the kind left behind is so tried again as the kind's outcomes grow (with
the log of them); one whose own answers pushed it far below its prior comes back no
higher than it stood untried, and one that even untried ranks below the leader is
never tried on this account. A model the artifact was fitted on (n0 = 200) is behind
only once the kind has over 330 outcomes per candidate.

Nor is a model judged on its first few answers of a kind: until it has `JUDGED_AFTER`
of its own there, its bonus keeps it where it stood untried (standing(m) - blend(m),
at least one standard deviation), or as high as its answers leave plausible where that
is lower (the Wilson bound, two standard errors, of their mean: none right in 8 is
not bad luck, and a model that fails every answer is not kept for 20). Why: the
prompts a model is tried on are those where its P led, not a random sample of the
kind, and a handful of them can read 30 points below what the model answers over the
kind (a kind mixes easy and hard prompts, and P is flatter across them than the
outcomes); judged on those, the fleet's best model is dropped for good after a bad
start, the more so in a large fleet, where the kind's outcomes per candidate stay too
few to widen its bonus. A model that stood below the leader untried is not tried on
this account either.

Exploration is Thompson sampling: with probability `exploration` the choice is the
best of one draw from each posterior (mean blend, weight n0 + n; by its normal
approximation; cost subtracted alike; the draws stand for the uncertainty, so no
optimism is added to them), so a model ranked lower is tried at most that often, and
the more likely the less is known about it. The propensity of the choice is

    (1 - exploration) * [it is the greedy choice] + exploration * P(Thompson picks it)

the latter estimated from `draws` Monte-Carlo draws, the one that chose included (an
estimate, within about 1/sqrt(draws); never 0 for a choice Thompson made).
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selector_model.evidence import Evidence
from selector_model.features import AREAS, REQUEST_FEATURES, UNKNOWN_AREA, Candidate
from selector_model.held import Held

# Extra lead a model unknown to the artifact needs over the anchor (it is scored from
# its family and size alone), unless the artifact's own `policy.unseen_margin`, set
# from its leave-one-model-out evaluation, says otherwise.
UNKNOWN_MARGIN = 0.05
# How many outcomes the selector's P(success) is worth against the evidence: the
# evidence outweighs the prior after this many rated answers of a kind. For a model
# the artifact was trained on, its P is worth more (it was fitted on thousands of that
# model's results, hundreds per kind) than for a model it places by its description
# alone.
PRIOR_STRENGTH = 10.0
KNOWN_PRIOR_STRENGTH = 200.0
# How far (one standard deviation, as a fraction of P) the P of a model the artifact
# never saw may be off, per unit of the catalogue's `uncertainty` of it: 0 for a model
# with published results in every area, this much for one placed from its details
# alone. Only what the catalogue does not know counts: how well published results
# transfer to a user's prompts is the same doubt for every model, and counting it
# would keep the largest whenever models it never saw are close, however clearly the
# catalogue orders them. A model the artifact was fitted on has none. The value is
# what the catalogue's imputation misses by: each published area score imputed from
# the other models as if unpublished, root mean square error over root mean square
# uncertainty (tests/test_policy_rules.py measures it on the shipped catalogue).
UNSEEN_SPREAD = 0.159
# A model leads another, for the safety rule, only by more than this many standard
# deviations of the difference of their P (the spreads above, combined as independent).
SWITCH_Z = 1.0
# The catalogue's share of an unseen model's P (see `with_catalogue`), for a model it
# has published results for in every area: all of it. The booster places a model it
# was not fitted on from its description, and with a few training models one feature
# they happened to differ by (a release date, a context length, being a code model)
# stands for their identity: an unseen coder is then rated by what the one trained
# coder did, not by its own coding results. The catalogue reads those results.
CATALOGUE_SHARE = 1.0
# The prompt's area demand is raised to this power before it weighs the catalogue's
# area scores: each `demand_*` carries a flat share for every area (no hint says "this
# area only"), so read as weights it would rate a coder on a code prompt half by its
# general knowledge and mathematics; the power lets the area that dominates decide.
DEMAND_POWER = 3.0
# Monte-Carlo draws for a decision's propensity under Thompson sampling.
DRAWS = 32
# Once there is evidence, the greedy choice ranks each candidate by its posterior mean
# plus this many of its posterior's standard deviations (optimism in the face of
# uncertainty): a model little is known about is tried until its own outcomes either
# lift it or narrow its spread, where ranking by the mean alone never tries a model
# ranked below one that answers at all.
OPTIMISM = 1.0
# A model's bonus widens (`_bonus`) once the kind's outcomes per candidate exceed its
# own (its prior counted) r times over, for r above this: where MOSS's width,
# sqrt(2 ln r) standard deviations, passes one.
_WIDENS = math.exp(0.5)
# A model is judged on at least this many answers of its own to a kind: until then its
# optimism keeps it where it stood untried, as far as its answers make that plausible
# (within this many standard errors of their mean, a Wilson bound; `_bonus`).
JUDGED_AFTER = 20.0
_PLAUSIBLE_Z = 2.0
# P(success) as a Beta prior mean stays inside (0, 1).
_P_FLOOR = 0.01
_P_CEILING = 1 - _P_FLOOR


def _logit(p: float) -> float:
    """The log-odds of `p`, kept inside the floor and the ceiling (`_inside`, spelled
    out: `with_catalogue` takes it for every candidate of every decision)."""
    p = _P_FLOOR if p < _P_FLOOR else _P_CEILING if p > _P_CEILING else p
    return math.log(p / (1.0 - p))


def _inside(p: float) -> float:
    """`p` kept between the floor and the ceiling."""
    return _P_FLOOR if p < _P_FLOOR else _P_CEILING if p > _P_CEILING else p


# The catalogue's reading of a model whose areas it does not know, in log-odds.
_UNKNOWN_LOGIT = _logit(UNKNOWN_AREA)


_UTILITY = operator.attrgetter("utility")
_PARAMS = operator.attrgetter("params_b")


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
        got: Sequence[float] | None = None,
        totals: Sequence[float] | None = None,
        optimism: float = 0.0,
    ) -> Scored:
        """This candidate with `blend` (kept inside the floor) in place of its prior in
        the utility, plus `optimism`, and the evidence it came from: (successes,
        count, expected) for this kind and over every kind."""
        blend = _inside(blend)
        count, mean, expected = _means(got)
        model_count, model_mean, model_expected = _means(totals)
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


def _means(got: Sequence[float] | None) -> tuple[float, float | None, float | None]:
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


def heuristic_p_success(candidate: Candidate) -> float:
    """The fallback's stand-in for P(success) when no artifact can be used: bigger
    models answer better, roughly log-linearly in parameters (documented heuristic)."""
    return min(0.85, max(0.3, 0.45 + 0.06 * math.log2(max(candidate.params_b, 0.5))))


_DEMAND = tuple(REQUEST_FEATURES.index(f"demand_{area}") for area in AREAS)
_AREA_COUNT = 5
assert len(AREAS) == _AREA_COUNT  # `with_catalogue` spells the areas out


def with_catalogue(
    p_success: Sequence[float],
    request: Sequence[float],
    candidates: Sequence[Candidate],
    known: Sequence[bool],
) -> list[float]:
    """The selector's P(success), with each model it never saw drawn toward what the
    catalogue says of it for this prompt.

    For a model the artifact was not fitted on, its P is the booster's extrapolation
    from the model's description (see `CATALOGUE_SHARE` why that misleads). The
    catalogue reads the same model directly: its area scores weighed by the prompt's
    demand for each area (`DEMAND_POWER`), an accuracy for this prompt. Put on the
    selector's scale for this prompt (the reading's log-odds, offset by how far the
    selector's P sits from the catalogue's reading in log-odds, on average, for the
    models it was fitted on, else for the whole fleet), that is a second estimate whose
    errors are not the booster's. Log-odds, not points: an easy prompt puts P of the
    fitted models far above their benchmark accuracy, and a shift in points would carry
    every strong model past certainty, where they tie and the catalogue's order of them
    is lost; a shift in log-odds keeps that order at both ends of the scale. It
    replaces the booster's P by `CATALOGUE_SHARE` times what the catalogue knows of
    the areas the prompt reads (its `area_uncertainty` weighed as the reading weighs
    the areas; else its overall `uncertainty`): all of it for a coder's published
    code results on a code prompt, little for the same coder's imputed knowledge on a
    trivia question, nothing for a model placed from nothing beyond its details. A
    model the artifact knows keeps its P."""
    if all(known) or len(candidates) < 2:
        return list(p_success)
    demand = [request[i] ** DEMAND_POWER for i in _DEMAND]
    total = sum(demand) or 1.0
    # Spelled out for the five areas, and per candidate in plain loops with the log-odds
    # and the bounds written in place (a comprehension or a helper is a call of its
    # own): this runs for every candidate of every decision.
    d0, d1, d2, d3, d4 = demand
    w0, w1, w2, w3, w4 = d0 / total, d1 / total, d2 / total, d3 / total, d4 / total
    # A tuple cannot change: its rows are kept (`auto` passes the one it keeps, and the
    # same `known` list with it).
    areas, fitted, unseen = (
        _CATALOGUE_ROWS.get((candidates, known), _catalogue_rows)
        if isinstance(candidates, tuple)
        else _catalogue_rows(candidates, known)
    )
    log = math.log
    reads = []  # the log-odds of each candidate's reading
    for a in areas:
        if a is None:
            reads.append(_UNKNOWN_LOGIT)
            continue
        a0, a1, a2, a3, a4 = a
        x = w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3 + w4 * a4
        x = _P_FLOOR if x < _P_FLOOR else _P_CEILING if x > _P_CEILING else x
        reads.append(log(x / (1.0 - x)))
    # The offset from the models whose P the selector was fitted on: an unseen model's
    # estimate then stands against theirs, not against the booster's guesses of the
    # other unseen models (which a fleet of many unseen models would otherwise set).
    gaps = []
    for i in fitted:
        p = p_success[i]
        p = _P_FLOOR if p < _P_FLOOR else _P_CEILING if p > _P_CEILING else p
        gaps.append(log(p / (1.0 - p)) - reads[i])
    if not gaps:
        for p, read in zip(p_success, reads, strict=True):
            gaps.append(_logit(p) - read)
    centre = sum(gaps) / len(gaps)
    exp = math.exp
    out = list(p_success)  # a model the artifact knows keeps its P
    for i, u in unseen:
        # What the catalogue does not know of the areas this prompt reads.
        if isinstance(u, float):
            doubt = u
        else:
            u0, u1, u2, u3, u4 = u
            doubt = w0 * u0 + w1 * u1 + w2 * u2 + w3 * u3 + w4 * u4
            doubt = 1.0 if doubt > 1.0 else 0.0 if doubt < 0.0 else doubt
        p = out[i]
        placed = 1.0 / (1.0 + exp(-(centre + reads[i])))
        q = p + CATALOGUE_SHARE * (1.0 - doubt) * (placed - p)
        out[i] = _P_FLOOR if q < _P_FLOOR else _P_CEILING if q > _P_CEILING else q
    return out


_Rows = tuple[
    list[tuple[float, ...] | None], list[int], list[tuple[int, tuple[float, ...] | float]]
]


def _catalogue_rows(candidates: Sequence[Candidate], known: Sequence[bool]) -> _Rows:
    """What `with_catalogue` reads of the candidates, the same for every prompt: each
    one's area scores (None: not all five known); the positions of those the artifact
    knows; and the position of each other one with its area uncertainties, else (not
    all five known) its overall doubt (`_doubt`). Split by `known` so that a decision
    walks the models it knows only for the offset and the others only to place them."""
    areas = [c.areas if len(c.areas) == _AREA_COUNT else None for c in candidates]
    fitted = [i for i, is_known in enumerate(known) if is_known]
    unseen: list[tuple[int, tuple[float, ...] | float]] = [
        (i, c.area_uncertainty if len(c.area_uncertainty) == _AREA_COUNT else float(_doubt(c)))
        for i, (c, is_known) in enumerate(zip(candidates, known, strict=True))
        if not is_known
    ]
    return areas, fitted, unseen


# `_catalogue_rows` by candidate tuple and list of which are known.
_CATALOGUE_ROWS: Held[_Rows] = Held()


def spreads(candidates: Sequence[Candidate], known: Sequence[bool]) -> list[float]:
    """How far each candidate's P may be off, one standard deviation (`UNSEEN_SPREAD`)."""
    return [
        0.0 if is_known else UNSEEN_SPREAD * _doubt(c)
        for c, is_known in zip(candidates, known, strict=True)
    ]


def _doubt(candidate: Candidate) -> float:
    """What the catalogue does not know of a candidate, its `uncertainty` in [0, 1]."""
    return _unit(candidate.uncertainty)


def _unit(x: float) -> float:
    """`x` kept in [0, 1]."""
    return 1.0 if x > 1.0 else 0.0 if x < 0.0 else x


def largest(candidates: Sequence[Candidate]) -> str:
    """The name of the largest candidate by parameters (the first of equals)."""
    return max(candidates, key=_PARAMS).name


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
    greedy, reason = _safe_greedy(
        ranking, default_model, min_gain, unknown_margin, 1.0, tolerance, max_loss
    )
    if exploration > 0 and len(ranking) > 1:
        share = exploration / len(ranking)
        if rng.random() < exploration:
            choice = rng.choice(ranking)
            return choice, "explore", share + (1 - exploration) * (choice is greedy)
        return greedy, reason, (1 - exploration) + share
    return greedy, reason, 1.0


def _safe_greedy(
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
        ranking = _near_best(ranking, max_loss)
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
        # The best model that leads the anchor clearly: one ranked below the greedy
        # choice may, where the greedy one's own doubt is too wide to.
        doubt_a = prior_strength / (prior_strength + anchor.evidence_count)
        choice, reason = anchor, "pinned"
        for other in ranking:
            if other is anchor or other.utility - anchor.utility < min_gain:
                break  # sorted: none further on leads by min_gain
            # Each one's doubt shrinks with its own evidence.
            doubt = prior_strength / (prior_strength + other.evidence_count)
            margin = 0.0
            if not anchor.known:
                margin = SWITCH_Z * math.hypot(other.spread * doubt, anchor.spread * doubt_a)
            if not other.known:
                margin += unknown_margin * doubt
            if other.utility - anchor.utility >= min_gain + margin:
                choice, reason = other, "ml"
                break
    if tolerance > 0:
        cheaper = _cheapest_within(ranking, choice, tolerance)
        if cheaper is not choice:
            return cheaper, "cheaper"
    return choice, reason


def _near_best(ranking: Sequence[Scored], max_loss: float) -> Sequence[Scored]:
    """The candidates rated at most `max_loss` below the best-rated, in ranking order
    (`ranking` itself when that is all of them). A candidate's rating is what its
    utility holds of its chance of a good answer: the prior, or once there is evidence
    the blend and its optimism."""
    # One comprehension, not a call per candidate: this runs in every decision of a
    # profile with a bound.
    rated = [(s.p_success if s.blend is None else s.blend) + s.optimism for s in ranking]
    bar = max(rated) - max_loss
    if min(rated) >= bar:
        return ranking
    return [s for s, r in zip(ranking, rated, strict=True) if r >= bar]


def beyond_max_loss(ranking: Sequence[Scored], max_loss: float) -> frozenset[str]:
    """The candidates `max_loss` keeps out of the running (none when it is 0)."""
    if max_loss <= 0 or not ranking:
        return frozenset()
    near = {s.name for s in _near_best(ranking, max_loss)}
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


@dataclass
class Chosen:
    ranking: list[Scored]  # blended, best first
    chosen: Scored
    reason: str  # ml | pinned | learned | explore
    propensity: float
    # The prior strength the models the artifact was fitted on had (`fitted_strength`).
    known_strength: float


def _shift(
    evidence: Mapping[str, Sequence[float]],
    strengths: Mapping[str, float],
    prior_strength: float,
    offsets: Mapping[str, float],
    centre: float,
) -> float:
    """How far the selector's P(success) is off over a pool of evidence (one kind's, or
    every kind's): the models' mean gaps (outcomes minus expectations, less each
    model's own offset), each weighted by how much it says about the pool,
    n * n0 / (n0 + n), shrunk toward `centre` by `prior_strength`. A model's gap is the
    pool's plus its own departure, whose spread its prior's strength n0 sets; so a
    model with a weak prior (one the artifact never saw) speaks for the pool with at
    most n0 outcomes however often it was chosen, and the model chosen most does not
    make the pool its own. (`strengths`: n0 by model, `prior_strength` if absent.)"""
    gap = weight = 0.0
    for name, got in evidence.items():
        count = float(got[1])
        if count > 0:
            n0 = strengths.get(name, prior_strength)
            w = count * n0 / (n0 + count)
            mean_gap = (float(got[0]) - float(got[2])) / count
            gap += w * (mean_gap - offsets.get(name, 0.0) - centre)
            weight += w
    if weight <= 0:
        return centre
    return centre + gap / (prior_strength + weight)


def _offsets(
    kinds: Mapping[str, Mapping[str, Sequence[float]]],
    strengths: Mapping[str, float],
    prior_strength: float,
    fitted: AbstractSet[str] = frozenset(),
) -> tuple[float, dict[str, float], dict[str, list[float]]]:
    """(G, o by model, totals by model) from the evidence of every kind (kind -> model
    -> (successes, count, expected)): each model's gap over every kind, its kinds'
    mean gaps each weighted by n * n0 / (n0 + n) (a kind's departure has the spread
    n0 sets, so one kind speaks for the model with at most n0 outcomes, and a model
    overrated on one kind and underrated on another is not called even); G, the
    pool's shift, from those by `_shift`'s rule; each model's offset, its gap's excess
    over G shrunk by n0, but for the models the artifact was `fitted` on: fitted on
    each one's outcomes, it places them with no error of their own to correct across
    kinds (what their evidence says over every kind is the pool's). `totals` sums the
    evidence per model, for explain."""
    pooled: dict[str, list[float]] = {}  # model: [sum of w * gap, sum of w]
    totals: dict[str, list[float]] = {}
    for rows in kinds.values():
        for name, got in rows.items():
            count = float(got[1])
            if count <= 0:
                continue
            n0 = strengths.get(name, prior_strength)
            w = count * n0 / (n0 + count)
            acc = pooled.setdefault(name, [0.0, 0.0])
            acc[0] += w * (float(got[0]) - float(got[2])) / count
            acc[1] += w
            total = totals.setdefault(name, [0.0, 0.0, 0.0])
            total[0] += float(got[0])
            total[1] += count
            total[2] += float(got[2])
    # Each model as a pool member: its mean gap, on the weight its kinds give it.
    members = {name: (acc[0], acc[1], 0.0) for name, acc in pooled.items()}
    overall = _shift(members, strengths, prior_strength, {}, 0.0)
    offsets = {
        name: _departure(member, overall, strengths.get(name, prior_strength))
        for name, member in members.items()
        if name not in fitted
    }
    return overall, offsets, totals


def fitted_strength(
    evidence: Mapping[str, Sequence[float]],
    fitted: AbstractSet[str],
    ceiling: float,
    floor: float,
) -> float:
    """The prior strength of the models the artifact was fitted on, as a kind's
    evidence bears it out: n0 = v / tau^2, with v = p(1 - p) the outcomes' variance
    and tau^2 how far their P are off beyond sampling noise, estimated from their rows
    by moments (the count-weighted mean of gap^2 - v / n) and shrunk toward the
    configured strength as if `ceiling` outcomes had borne that out (tau^2 = v /
    ceiling): with no evidence, the ceiling; never below `floor`, a model the artifact
    never saw. Why: a strength of hundreds holds a fitted model's P against its own
    outcomes and keeps its posterior too narrow to be tried, which is right where the
    artifact's P hold, and wrong where they do not (another grading, other prompts):
    one fitted model whose outcomes fall 20 points short of its P on a kind says the
    P of the fitted models it rivals are no better known there, and they must be
    tried."""
    excess = weight = spread = 0.0
    for name, got in evidence.items():
        count = float(got[1])
        if name not in fitted or count <= 0:
            continue
        expected = _inside(float(got[2]) / count)
        variance = expected * (1.0 - expected)
        gap = (float(got[0]) - float(got[2])) / count
        excess += count * (gap * gap - variance / count)
        spread += count * variance
        weight += count
    if weight <= 0 or excess <= 0:
        return ceiling
    mean_variance = spread / weight
    return max(floor, min(ceiling, mean_variance * (weight + ceiling) / (excess + mean_variance)))


def _surprising(evidence: Mapping[str, Sequence[float]]) -> bool:
    """Whether any outcome in `evidence` differed from what the selector expected of
    it (a completed answer is counted as just that, `outcome.against`)."""
    return any(abs(float(got[0]) - float(got[2])) > 1e-9 for got in evidence.values())


def _departure(got: Sequence[float], centre: float, n0: float) -> float:
    """A model's own departure from `centre` by its evidence (successes, count,
    expected): the mean gap's excess over it, shrunk by its prior's strength n0."""
    count = float(got[1])
    if count <= 0:
        return 0.0
    return (float(got[0]) - float(got[2]) - count * centre) / (n0 + count)


def _bonus(
    blend: float,
    untried: float,
    n0: float,
    count: float,
    share: float,
    optimism: float,
    own: float = 0.0,
) -> float:
    """The optimism a candidate's utility gains (see the module docstring): `optimism`
    standard deviations of its posterior (mean `blend`, weight n0 + `count`, as
    Thompson sampling draws it), widened to sqrt(2 ln r) of them (MOSS) for a model
    with r times fewer outcomes of its own (its prior counted) than the kind's `share`
    per candidate, but never past where it stood untried (mean `untried`, weight n0);
    up to there for a model with fewer than `JUDGED_AFTER` outcomes of its own (mean
    `own`), unless they make that implausible."""
    p = _inside(blend)
    spread = math.sqrt(p * (1 - p) / (n0 + count + 1))
    bonus = optimism * spread
    behind = share / (n0 + count)
    judged = count >= JUDGED_AFTER
    if judged and behind <= _WIDENS:
        return bonus
    q = _inside(untried)
    standing = q + optimism * math.sqrt(q * (1 - q) / (n0 + 1))
    if not judged:
        if count > 0:
            standing = min(standing, _upper(own, count))
        return max(bonus, standing - p)
    widened = bonus * math.sqrt(2 * math.log(behind))
    return max(bonus, min(widened, standing - p))


def _upper(mean: float, count: float) -> float:
    """The Wilson upper bound, `_PLAUSIBLE_Z` standard errors, of a success rate whose
    `count` outcomes averaged `mean`: what a model's few answers leave plausible (no
    answer right in 8 leaves at most 0.33; one wrong answer, 0.8)."""
    m = min(1.0, max(0.0, mean))
    z2 = _PLAUSIBLE_Z * _PLAUSIBLE_Z
    root = _PLAUSIBLE_Z * math.sqrt(m * (1 - m) / count + z2 / (4 * count * count))
    return (m + z2 / (2 * count) + root) / (1 + z2 / count)


def choose(
    ranking: list[Scored],
    evidence: Mapping[str, Sequence[float]],
    exploration: float,
    rng: np.random.Generator,
    default_model: str = "",
    min_gain: float = 0.02,
    unknown_margin: float = UNKNOWN_MARGIN,
    prior_strength: float = PRIOR_STRENGTH,
    draws: int = DRAWS,
    known_prior_strength: float = KNOWN_PRIOR_STRENGTH,
    kinds: Mapping[str, Mapping[str, Sequence[float]]] | Evidence | None = None,
    tolerance: float = 0.0,
    optimism: float = OPTIMISM,
    max_loss: float = 0.0,
) -> Chosen:
    """The choice for one request from `rank`'s ranking (prior utilities, best first)
    and the evidence for the request's kind, model: (successes, count, expected), as
    `Evidence.of(kind)` gives it; `kinds`, the same for every kind (`Evidence.table`,
    or the `Evidence`, whose offsets are then computed once per change of it), for
    the models' offsets; `optimism`, the posterior standard deviations added to
    each candidate's utility once there is evidence. With no evidence and no
    exploration this is `pick`'s greedy choice. See the module docstring."""
    prior_choice, reason = _safe_greedy(
        ranking, default_model, min_gain, unknown_margin, prior_strength, tolerance, max_loss
    )
    blended = ranking
    every_kind = kinds.table if isinstance(kinds, Evidence) else kinds
    if evidence or every_kind:
        blended = []
        fitted = frozenset(s.name for s in ranking if s.known)
        if fitted and evidence:
            known_prior_strength = fitted_strength(
                evidence, fitted, known_prior_strength, prior_strength
            )
        strengths = {s.name: known_prior_strength if s.known else prior_strength for s in ranking}
        overall = 0.0
        offsets: dict[str, float] = {}
        totals: dict[str, list[float]] = {}
        if isinstance(kinds, Evidence):
            # The same for every decision until the evidence changes.
            overall, offsets, totals = kinds.derived(
                (prior_strength, frozenset(strengths.items()), fitted),
                lambda: _offsets(kinds.table, strengths, prior_strength, fitted),
            )
        elif every_kind:
            overall, offsets, totals = _offsets(every_kind, strengths, prior_strength, fitted)
        shift = _shift(evidence, strengths, prior_strength, offsets, overall)
        if optimism and not _surprising(evidence):
            # Nothing of this kind came out other than the selector expected (answers
            # completing, no rating, no failure): a gamble would learn nothing.
            optimism = 0.0
        # The kind's outcomes per candidate: a model with fewer of its own (its prior
        # counted as outcomes) than that has been left behind (see `_bonus`).
        share = 0.0
        if optimism:
            for s in ranking:
                got = evidence.get(s.name)
                if got is not None:
                    share += max(0.0, float(got[1]))
            share /= len(ranking)
        for s in ranking:
            centre = shift + offsets.get(s.name, 0.0)
            got = evidence.get(s.name)
            count = 0.0 if got is None else max(0.0, float(got[1]))
            if not centre and not count and not optimism:
                blended.append(s)
                continue
            n0 = strengths[s.name]
            blend = s.p_success + centre
            if got is not None:
                blend += _departure(got, centre, n0)
            bonus = 0.0
            if optimism:
                own = float(got[0]) / count if got is not None and count > 0 else 0.0
                bonus = _bonus(blend, s.p_success + centre, n0, count, share, optimism, own)
            blended.append(s.blended(blend, got, totals.get(s.name), bonus))
        blended.sort(key=_UTILITY, reverse=True)
        greedy, reason = _safe_greedy(
            blended, default_model, min_gain, unknown_margin, prior_strength, tolerance, max_loss
        )
        if greedy.name != prior_choice.name:
            reason = "learned"
    else:
        greedy = prior_choice
    if exploration <= 0 or len(blended) < 2:
        return Chosen(blended, greedy, reason, 1.0, known_prior_strength)
    k = len(blended)
    # Per candidate: the posterior's mean and weight, and the cost utility subtracts
    # (the draws stand for the uncertainty optimism adds to the greedy utility).
    table = np.array(
        [
            (
                s.p_success if s.blend is None else s.blend,
                (known_prior_strength if s.known else prior_strength) + s.evidence_count,
                (s.p_success if s.blend is None else s.blend) - (s.utility - s.optimism),
            )
            for s in blended
        ]
    )
    mean = table[:, 0].clip(_P_FLOOR, _P_CEILING)
    weight, cost = table[:, 1], table[:, 2]
    # Each posterior, Beta(weight * mean, weight * (1 - mean)), by its normal
    # approximation (the same mean and variance): weight >= prior_strength keeps it
    # close, and normal draws cost a fraction of Beta draws (gamma variates), which
    # would be most of a decision's time.
    spread = np.sqrt(mean * (1 - mean) / (weight + 1))
    samples = mean + spread * rng.standard_normal((max(draws, 1), k))
    winners = (samples - cost).argmax(axis=1)
    shares = np.bincount(winners, minlength=k) / len(winners)
    chosen = greedy
    if rng.random() < exploration:
        chosen = blended[int(winners[0])]
        if chosen is not greedy:
            reason = "explore"
    index = blended.index(chosen)
    propensity = exploration * float(shares[index]) + (1 - exploration) * (chosen is greedy)
    return Chosen(blended, chosen, reason, propensity, known_prior_strength)

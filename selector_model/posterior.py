"""The choice once the proxy has learned from its own traffic: the selector's P
corrected by the evidence, optimism where little is known, and exploration.

`choose` adds to the selector's P (`selector_model.policy`) what the proxy learned from
its own traffic (`selector_model.evidence`): for each candidate, the outcomes of its
answers to this kind of prompt (count n, sum s) and what the selector expected of them
(sum e of its P(success) then), and the same sums over every kind (N, S, E). The
correction is hierarchical, each level shrunk toward the one above by a prior's
strength. First the pool's shift over every kind, G, then each model's offset from it,
o(m), what its answers say about the model whatever the prompt; then the kind's shift,
how far P is off for this kind of prompt over every model with evidence once each
model's offset is taken out, shrunk toward G:

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

A model's own departure also depends on where it stands on the prompt: its margin d
(its P minus the best other candidate's P) and its P. The evidence keeps, beside the
three sums, the sums of d, d^2, d * gap, P^2, P * d and P * gap over the model's
outcomes (`evidence.COLUMNS`), and the departure adds the ridge fit of the gap on
(d, P) (slopes shrunk toward 0 by `SLOPE_PRIOR`), read at this prompt's (d, P) kept
within one standard deviation of their means over those outcomes:

    departure(m) += b_d * (clip(d) - mean d) + b_P * (clip(P) - mean P)

Why: a model is tried only where its P led, and its gap there is not its gap on the
kind's other prompts (selection on where it stood: a model the selector underrates
overall answers the prompts where it leads further above its P than the rest); the
choice is a function of the P, so how the gap moves with the margin and P can be read
off the model's own outcomes, and carried only as far as they reach.

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
is lower: the Wilson bound, two standard errors, of their mean, carried to this prompt
by its odds against those of the mean P of the prompts they answered (none right in 8
where 0.6 was expected is not bad luck, and a model that fails every answer is not
kept for 20).
Why: the prompts a model is tried on are those where its P led, not a random sample of
the kind, and a handful of them can read 30 points below what the model answers over
the kind (a kind mixes easy and hard prompts, and P is flatter across them than the
outcomes); judged on those, the fleet's best model is dropped for good after a bad
start, the more so in a large fleet, where the kind's outcomes per candidate stay too
few to widen its bonus. The bound is read against the P of the prompts answered, as
the blend reads every outcome against its expectation: a model that failed two
prompts the selector rated hard for it, as its P there said it might, is not held on
a prompt it rates easy below the success rate those two bound. By odds rather than a
difference of rates: answers right where P was 0.95 bound their rate there by 1, no
more than 5 points above P, which says nothing of a prompt rated 0.3. A model that
stood below the leader untried is not tried on this account either.

Exploration is Thompson sampling: with probability `exploration` the choice is the
best of one draw from each posterior (mean blend, weight n0 + n; by its normal
approximation; cost subtracted alike; the draws stand for the uncertainty, so no
optimism is added to them), so a model ranked lower is tried at most that often, and
the more likely the less is known about it. The propensity of the choice is

    (1 - exploration) * [it is the greedy choice] + exploration * P(Thompson picks it)

the latter estimated from `draws` Monte-Carlo draws, the one that chose included (an
estimate, within about 1/sqrt(draws); never 0 for a choice Thompson made).

With `baseline_discount` (`learning.baseline_discount`, 0 by default: off), the greedy
choice leaves the choice without evidence only where the evidence says it beats it
with each one's correction (blend less P) worth `1 - baseline_discount` of itself:
the profile's own rule (`safe_greedy`: `max_loss`, `min_gain`, the anchors), applied
to the two alone rated so, must still pick the learned one (`_improves`; a model with
fewer than `JUDGED_AFTER` answers of its own is tried as optimism chose it). In the
spirit of safe policy improvement against a baseline (SPIBB): a correction is a mean
gap read off the prompts the model answered, which are not this prompt's kind of
prompt within the kind (a model keeps the prompts where the others are rated low, and
one whose P is 20 points off on the middle of its range may be right at its top), so
a choice that rests on it against the selector's own is held to a stricter proof.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace

import numpy as np

from selector_model.evidence import WIDTH, Evidence
from selector_model.policy import (
    P_CEILING,
    P_FLOOR,
    UNKNOWN_MARGIN,
    Scored,
    inside,
    logit,
    margin_of,
    means_of,
    safe_greedy,
    top_two,
)

# How many outcomes the selector's P(success) is worth against the evidence: the
# evidence outweighs the prior after this many rated answers of a kind. For a model
# the artifact was trained on, its P is worth more (it was fitted on thousands of that
# model's results, hundreds per kind) than for a model it places by its description
# alone.
PRIOR_STRENGTH = 10.0
KNOWN_PRIOR_STRENGTH = 200.0
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
# The prior on the slopes of a model's gap in its margin and its P (`fit_trend`): a slope
# of sqrt(0.25 / SLOPE_PRIOR), 0.5 (the gap's change per unit of margin or of P), is
# one prior standard deviation, for outcomes of variance 0.25; so a model's outcomes
# must spread over margins (or P) before its correction depends on them.
SLOPE_PRIOR = 1.0

_UTILITY = operator.attrgetter("utility")


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
        expected = inside(float(got[2]) / count)
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
    """A model's own departure from `centre` by its evidence (the sums of
    `evidence.COLUMNS`): the mean gap's excess over it, shrunk by its prior's strength
    n0. Where the model stands on the prompt adds its `Trend`."""
    count = float(got[1])
    if count <= 0:
        return 0.0
    return (float(got[0]) - float(got[2]) - count * centre) / (n0 + count)


@dataclass(frozen=True, slots=True)
class Trend:
    """How a model's gap (outcome - P) moves with where it stood on the prompts it
    answered, its margin over the best other candidate's P and its P: the ridge fit of
    the gap on both over its outcomes (slopes shrunk toward 0 by `SLOPE_PRIOR`, in
    outcomes per unit of slope squared), about their means, carried only within one
    standard deviation of them (`at`). The same for every prompt until the evidence
    changes (`trends`)."""

    by_margin: float
    margin: float
    margin_reach: float
    by_prior: float
    prior: float
    prior_reach: float

    def at(self, margin: float, prior: float) -> float:
        """The gap's departure from the model's mean gap where it stands at (`margin`,
        `prior`); beyond one standard deviation of either, the value at that edge."""
        m, reach = self.margin, self.margin_reach
        p, spread = self.prior, self.prior_reach
        return self.by_margin * (min(m + reach, max(m - reach, margin)) - m) + self.by_prior * (
            min(p + spread, max(p - spread, prior)) - p
        )


def fit_trend(got: Sequence[float], slope_prior: float = SLOPE_PRIOR) -> Trend | None:
    """The `Trend` of a model's evidence row, or None where it has none (no outcomes,
    a row without where the model stood, or a fit that does not solve)."""
    count = float(got[1]) if len(got) >= WIDTH else 0.0
    if count <= 0:
        return None
    mean_gap = (float(got[0]) - float(got[2])) / count
    margin, prior = float(got[3]) / count, float(got[2]) / count
    margin_var = max(0.0, float(got[4]) / count - margin * margin)
    prior_var = max(0.0, float(got[6]) / count - prior * prior)
    covariance = float(got[7]) / count - prior * margin
    margin_gap = float(got[5]) / count - margin * mean_gap
    prior_gap = float(got[8]) / count - prior * mean_gap
    a11 = count * margin_var + slope_prior
    a22 = count * prior_var + slope_prior
    a12 = count * covariance
    det = a11 * a22 - a12 * a12
    if det <= 0:
        return None
    by_margin = count * (a22 * margin_gap - a12 * prior_gap) / det
    by_prior = count * (a11 * prior_gap - a12 * margin_gap) / det
    return Trend(by_margin, margin, math.sqrt(margin_var), by_prior, prior, math.sqrt(prior_var))


def trends(evidence: Mapping[str, Sequence[float]]) -> dict[str, Trend]:
    """Each model's `Trend` on one kind's evidence (`Evidence.of`)."""
    fits = ((name, fit_trend(got)) for name, got in evidence.items())
    return {name: fit for name, fit in fits if fit is not None}


def _bonus(
    blend: float,
    untried: float,
    n0: float,
    count: float,
    share: float,
    optimism: float,
    plausible: float = math.inf,
) -> float:
    """The optimism a candidate's utility gains (see the module docstring): `optimism`
    standard deviations of its posterior (mean `blend`, weight n0 + `count`, as
    Thompson sampling draws it), widened to sqrt(2 ln r) of them (MOSS) for a model
    with r times fewer outcomes of its own (its prior counted) than the kind's `share`
    per candidate, but never past where it stood untried (mean `untried`, weight n0);
    up to there for a model with fewer than `JUDGED_AFTER` outcomes of its own, but no
    higher than `plausible`, what they leave plausible on this prompt (`_plausible`)."""
    p = inside(blend)
    spread = math.sqrt(p * (1 - p) / (n0 + count + 1))
    bonus = optimism * spread
    behind = share / (n0 + count)
    judged = count >= JUDGED_AFTER
    if judged and behind <= _WIDENS:
        return bonus
    q = inside(untried)
    standing = q + optimism * math.sqrt(q * (1 - q) / (n0 + 1))
    if not judged:
        return max(bonus, min(standing, plausible) - p)
    widened = bonus * math.sqrt(2 * math.log(behind))
    return max(bonus, min(widened, standing - p))


def _headroom(got: Sequence[float]) -> float:
    """How far above the P of the prompts a model answered its answers leave its success
    rate plausible, in log-odds (`_upper` of their mean against their mean P; infinite
    without any): what `_plausible` carries to a prompt. Read against P, as the blend
    reads each outcome against its expectation: the prompts a model answered are where
    its P led, and failures on those the selector rated hard bound nothing on one it
    rates easy."""
    count = float(got[1])
    if count <= 0:
        return math.inf
    return logit(_upper(float(got[0]) / count, count)) - logit(float(got[2]) / count)


def _plausible(p: float, headroom: float) -> float:
    """The highest success rate a model's answers (their `_headroom`) leave plausible on
    a prompt it is rated `p` on: 1 without any."""
    if headroom == math.inf:
        return 1.0
    return 1.0 / (1.0 + math.exp(-(logit(p) + headroom)))


def _upper(mean: float, count: float) -> float:
    """The Wilson upper bound, `_PLAUSIBLE_Z` standard errors, of a success rate whose
    `count` outcomes averaged `mean`: what a model's few answers leave plausible (no
    answer right in 8 leaves at most 0.33; one wrong answer, 0.8)."""
    m = min(1.0, max(0.0, mean))
    z2 = _PLAUSIBLE_Z * _PLAUSIBLE_Z
    root = _PLAUSIBLE_Z * math.sqrt(m * (1 - m) / count + z2 / (4 * count * count))
    return (m + z2 / (2 * count) + root) / (1 + z2 / count)


# Per candidate, what a decision reads of the evidence (`_standings`): the centre c(m),
# the count n(m), the prior strength n0(m), the departure (None without a row of its
# own), its `Trend`, its `_headroom`, and the means `Scored.blended` takes
# for this kind and over every kind. None: nothing moves the candidate.
_Standing = tuple[
    float,
    float,
    float,
    float | None,
    Trend | None,
    float,
    tuple[float, float | None, float | None],
    tuple[float, float | None, float | None],
]


@dataclass(frozen=True, slots=True)
class _Standings:
    """What `choose` reads of the evidence for a set of candidates, whatever the prompt:
    the fitted models' prior strength, the optimism in effect and the kind's outcomes
    per candidate (`_bonus`), and each candidate's `_Standing` by name."""

    known_strength: float
    optimism: float
    share: float
    by_name: dict[str, _Standing | None]


def _standings(
    ranking: Sequence[Scored],
    evidence: Mapping[str, Sequence[float]],
    kinds: Mapping[str, Mapping[str, Sequence[float]]] | Evidence | None,
    every_kind: Mapping[str, Mapping[str, Sequence[float]]] | None,
    store: Evidence | None,
    prior_strength: float,
    known_prior_strength: float,
    optimism: float,
) -> _Standings:
    """`choose`'s reading of the evidence for the candidates of `ranking` (see the
    module docstring): the same for any order of them and any prompt."""
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
    # Fitted once per change of the evidence (the kind's rows are updated in place,
    # and replaced whole with a new version).
    fits = (
        store.derived(("trends", id(evidence)), lambda: trends(evidence))
        if store is not None and evidence
        else trends(evidence)
    )
    by_name: dict[str, _Standing | None] = {}
    for s in ranking:
        name = s.name
        centre = shift + offsets.get(name, 0.0)
        got = evidence.get(name)
        count = 0.0 if got is None else max(0.0, float(got[1]))
        if not centre and not count and not optimism:
            by_name[name] = None
            continue
        n0 = strengths[name]
        departure = None if got is None else _departure(got, centre, n0)
        fit = None if got is None else fits.get(name)
        by_name[name] = (
            centre,
            count,
            n0,
            departure,
            fit,
            math.inf if got is None else _headroom(got),
            means_of(got),
            means_of(totals.get(name)),
        )
    return _Standings(known_prior_strength, optimism, share, by_name)


def _named(ranking: Sequence[Scored], name: str) -> Scored:
    """The candidate of `ranking` called `name`."""
    for s in ranking:
        if s.name == name:
            return s
    raise KeyError(name)


def _improves(
    challenger: Scored,
    baseline: Scored,
    discount: float,
    rule: tuple[str, float, float, float, float, float],
) -> bool:
    """Whether the evidence says `challenger` beats `baseline`, the choice without
    evidence, by the profile's own rule (`safe_greedy` with `rule`: its default model,
    `min_gain`, unknown margin, prior strength, tolerance and `max_loss`) applied to the
    two alone, each rated by its P plus `1 - discount` of the evidence's correction of
    it (its blend less its P), without optimism. A challenger with fewer than
    `JUDGED_AFTER` answers of its own is not judged yet: it is tried as the optimism
    chose it."""
    if challenger.evidence_count < JUDGED_AFTER:
        return True
    pair = []
    for s in (challenger, baseline):
        blend = s.p_success if s.blend is None else s.blend
        kept = s.p_success + (1.0 - discount) * (blend - s.p_success)
        utility = s.utility - s.optimism - blend + kept
        pair.append(replace(s, blend=kept, utility=utility, optimism=0.0))
    pair.sort(key=_UTILITY, reverse=True)
    return safe_greedy(pair, *rule)[0].name == challenger.name


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
    store: Evidence | None = None,
    baseline_discount: float = 0.0,
) -> Chosen:
    """The choice for one request from `rank`'s ranking (prior utilities, best first)
    and the evidence for the request's kind, model: (successes, count, expected), as
    `Evidence.of(kind)` gives it; `kinds`, the same for every kind (`Evidence.table`,
    or the `Evidence`, whose offsets are then computed once per change of it), for
    the models' offsets; `optimism`, the posterior standard deviations added to
    each candidate's utility once there is evidence; `store`, the `Evidence`
    `evidence` is read from, for what is derived from it once per change of it (as
    `kinds` when that is one). With no evidence and no
    exploration this is `pick`'s greedy choice. See the module docstring."""
    # The profile's rule, `safe_greedy`'s arguments after the ranking.
    rule = (default_model, min_gain, unknown_margin, prior_strength, tolerance, max_loss)
    prior_choice, prior_reason = safe_greedy(ranking, *rule)
    reason = prior_reason
    blended = ranking
    every_kind = kinds.table if isinstance(kinds, Evidence) else kinds
    if evidence or every_kind:
        if isinstance(kinds, Evidence):
            store = kinds
        elif every_kind:
            store = None  # a plain table: no version says when it changed

        def prepare() -> _Standings:
            return _standings(
                ranking,
                evidence,
                kinds,
                every_kind,
                store,
                prior_strength,
                known_prior_strength,
                optimism,
            )

        # What the evidence says of each candidate is the same for every prompt until
        # it changes: prepared once per change for a set of candidates (by name and
        # whether the artifact knows each), where the prompt's P alone is new.
        standings = (
            store.derived(
                (
                    "standings",
                    id(evidence),
                    prior_strength,
                    known_prior_strength,
                    optimism,
                    frozenset([(s.name, s.known) for s in ranking]),
                ),
                prepare,
            )
            if store is not None
            else prepare()
        )
        known_prior_strength = standings.known_strength
        optimism, share = standings.optimism, standings.share
        by_name = standings.by_name
        top = top_two(ranking)
        blended = []
        for s in ranking:
            standing = by_name[s.name]
            if standing is None:
                blended.append(s)  # nothing moves it
                continue
            centre, count, n0, departure, fit, headroom, means, model_means = standing
            blend = s.p_success + centre
            if departure is not None:
                blend += departure
                if fit is not None:
                    blend += fit.at(margin_of(s.p_success, top), s.p_success)
            bonus = 0.0
            if optimism:
                bonus = _bonus(
                    blend,
                    s.p_success + centre,
                    n0,
                    count,
                    share,
                    optimism,
                    _plausible(s.p_success, headroom),
                )
            blended.append(s.blended(blend, means, model_means, bonus))
        blended.sort(key=_UTILITY, reverse=True)
        greedy, reason = safe_greedy(blended, *rule)
        if greedy.name != prior_choice.name:
            reason = "learned"
            if baseline_discount > 0:
                baseline = _named(blended, prior_choice.name)
                if not _improves(greedy, baseline, baseline_discount, rule):
                    greedy, reason = baseline, prior_reason
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
    mean = table[:, 0].clip(P_FLOOR, P_CEILING)
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

"""The P(success) of a model the artifact never saw: drawn toward what the catalogue
says of it for this prompt (`with_catalogue`), and how far it may be off (`spreads`),
which the safety rule (`selector_model.policy`) weighs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from selector_model.features import AREAS, REQUEST_FEATURES, UNKNOWN_AREA, Candidate
from selector_model.held import Held
from selector_model.policy import P_CEILING, P_FLOOR, logit

# How far (one standard deviation, as a fraction of P) the P of a model the artifact
# never saw may be off, per unit of the catalogue's `uncertainty` of it: none for a
# model with published results in every area, up to this much for one placed from its
# details alone (its uncertainty is how far its nearest entries are). Only what the
# catalogue does not know counts: how well published results transfer to a user's
# prompts is the same doubt for every model, and counting it would keep the largest
# whenever models it never saw are close, however clearly the catalogue orders them.
# A model the artifact was fitted on has none. The value is what the catalogue's
# imputation misses by: each published area score imputed from the other models as if
# unpublished, root mean square error over root mean square uncertainty
# (tests/test_policy_rules.py measures it on the shipped catalogue).
UNSEEN_SPREAD = 0.159
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
# The catalogue's reading of a model whose areas it does not know, in log-odds.
_UNKNOWN_LOGIT = logit(UNKNOWN_AREA)

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
        x = P_FLOOR if x < P_FLOOR else P_CEILING if x > P_CEILING else x
        reads.append(log(x / (1.0 - x)))
    # The offset from the models whose P the selector was fitted on: an unseen model's
    # estimate then stands against theirs, not against the booster's guesses of the
    # other unseen models (which a fleet of many unseen models would otherwise set).
    gaps = []
    for i in fitted:
        p = p_success[i]
        p = P_FLOOR if p < P_FLOOR else P_CEILING if p > P_CEILING else p
        gaps.append(log(p / (1.0 - p)) - reads[i])
    if not gaps:
        for p, read in zip(p_success, reads, strict=True):
            gaps.append(logit(p) - read)
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
        out[i] = P_FLOOR if q < P_FLOOR else P_CEILING if q > P_CEILING else q
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

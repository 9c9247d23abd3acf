"""The safety rule against an anchor the artifact never saw, and a profile's tolerance
and max_loss."""

from __future__ import annotations

import random

import numpy as np
import pytest

from selector_model.catalog.catalog import Catalog
from selector_model.catalog.knowledge import AREAS
from selector_model.catalogue_prior import UNSEEN_SPREAD, spreads
from selector_model.features import Candidate
from selector_model.policy import SAME_SIZE, SWITCH_Z, beyond_max_loss, pick, rank, size_anchor
from selector_model.posterior import PRIOR_STRENGTH, choose
from training.imputation_calibration import misses


def test_spread_is_what_the_catalogue_does_not_know_of_an_unseen_model() -> None:
    candidates = [
        Candidate("published:8b", params_b=8.0, uncertainty=0.0),
        Candidate("placed:8b", params_b=8.0, uncertainty=1.0),
        Candidate("known:8b", params_b=8.0, uncertainty=1.0),
    ]
    assert spreads(candidates, [False, False, True]) == pytest.approx([0.0, UNSEEN_SPREAD, 0.0])


def test_an_unseen_anchor_is_left_only_for_a_lead_beyond_what_both_p_may_be_off() -> None:
    rng = random.Random(0)
    spread = [UNSEEN_SPREAD, UNSEEN_SPREAD]
    needed = SWITCH_Z * UNSEEN_SPREAD * 2**0.5  # sd of the difference of two P
    # The largest (the anchor when the artifact knows none) is led by less than that.
    close = rank(["small:7b", "large:9b"], [0.40 + needed, 0.40], [1.0, 2.0], 0.0, set(), spread)
    assert pick(close, "large:9b", 0.02, 0.0, rng, 0.0)[:2] == (close[1], "pinned")
    far = rank(
        ["small:7b", "large:9b"], [0.42 + needed + 0.01, 0.40], [1.0, 2.0], 0.0, set(), spread
    )
    assert pick(far, "large:9b", 0.02, 0.0, rng, 0.0)[:2] == (far[0], "ml")
    # Against a known anchor (spread 0) only min_gain counts, as before.
    known = rank(["new:7b", "old:9b"], [0.45, 0.40], [1.0, 2.0], 0.0, {"old:9b"}, [0.1, 0.0])
    assert pick(known, "", 0.02, 0.0, rng, 0.0)[0].name == "new:7b"
    # `choose` (no evidence) applies the same rule.
    chose = choose(close, {}, 0.0, np.random.default_rng(0), "large:9b", 0.02, 0.0)
    assert (chose.chosen.name, chose.reason) == ("large:9b", "pinned")


def test_the_anchor_among_unseen_models_is_the_best_ranked_of_the_largest_size() -> None:
    """Size orders 8B and 70B models, not 70B and 72B ones: among those of the largest's
    size, the one the catalogue rates higher is the anchor another must clearly beat."""
    sizes = {"small:8b": 8.0, "older:72b": 72.7, "newer:70b": 70.6, "mid:57b": 57.0}
    assert sizes["newer:70b"] >= SAME_SIZE * 72.7 > sizes["mid:57b"]
    candidates = [Candidate(name, params_b=size) for name, size in sizes.items()]
    names = list(sizes)
    spread = [UNSEEN_SPREAD] * len(names)
    ranking = rank(names, [0.62, 0.55, 0.58, 0.60], [1.0] * 4, 0.0, set(), spread)
    # mid:57b is rated above both, and is not of the largest's size.
    anchor = size_anchor(ranking, candidates, [False] * 4)
    assert anchor == "newer:70b"
    # small:8b leads it by less than what both P may be off: the anchor stays.
    chose = choose(ranking, {}, 0.0, np.random.default_rng(0), anchor, 0.02, 0.0)
    assert (chose.chosen.name, chose.reason) == ("newer:70b", "pinned")
    # Rated the other way round, the largest is the anchor.
    flipped = rank(names, [0.62, 0.58, 0.55, 0.60], [1.0] * 4, 0.0, set(), spread)
    assert size_anchor(flipped, candidates, [False] * 4) == "older:72b"
    # One whose loading would evict a model in use is no anchor (the eviction penalty
    # weighs it), and with none of the largest's size left there is none.
    assert size_anchor(ranking, candidates, [False, False, True, False]) == "older:72b"
    assert size_anchor(ranking, candidates, [False, True, True, False]) == ""


def test_a_model_below_the_greedy_one_that_clearly_leads_the_anchor_is_chosen() -> None:
    """The best-rated model's doubt may be too wide to leave the anchor for, while the
    next one, as well placed, leads it clearly: that one is chosen, not the anchor."""
    rng = random.Random(0)
    names = ["guessed:35b", "published:70b", "largest:104b"]
    # guessed: placed from its details alone; published: results in every area.
    ranking = rank(names, [0.71, 0.68, 0.61], [3.0, 5.0, 8.0], 0.0, set(), [0.12, 0.0, 0.04])
    assert pick(ranking, "largest:104b", 0.02, 0.0, rng, 0.0)[:2] == (ranking[1], "ml")
    chose = choose(ranking, {}, 0.0, np.random.default_rng(0), "largest:104b", 0.02, 0.0)
    assert (chose.chosen.name, chose.reason) == ("published:70b", "ml")
    # When none leads it clearly, the anchor stays.
    close = rank(names, [0.71, 0.64, 0.61], [3.0, 5.0, 8.0], 0.0, set(), [0.12, 0.0, 0.04])
    assert pick(close, "largest:104b", 0.02, 0.0, rng, 0.0)[:2] == (close[2], "pinned")


def test_of_the_models_that_lead_an_unseen_anchor_the_best_lower_bound_is_chosen() -> None:
    """A model placed from imputed areas, rated first, clears the bar against the
    largest; so does a published one rated a little below it, whose P less its spread
    is higher: that one is chosen. Rated far enough above it, the placed one is."""
    rng = random.Random(0)
    names = ["imputed:35b", "published:70b", "largest:104b"]
    spread = [0.10, 0.0, 0.04]
    # Leads: 0.18 >= 0.02 + hypot(0.10, 0.04) and 0.14 >= 0.02 + 0.04; lower bounds
    # 0.70 and 0.76.
    ranking = rank(names, [0.80, 0.76, 0.62], [3.0, 5.0, 8.0], 0.0, set(), spread)
    assert pick(ranking, "largest:104b", 0.02, 0.0, rng, 0.0)[:2] == (ranking[1], "ml")
    chose = choose(ranking, {}, 0.0, np.random.default_rng(0), "largest:104b", 0.02, 0.0)
    assert (chose.chosen.name, chose.reason) == ("published:70b", "ml")
    # Lower bounds 0.80 and 0.76: the placed one.
    ahead = rank(names, [0.90, 0.76, 0.62], [3.0, 5.0, 8.0], 0.0, set(), spread)
    assert pick(ahead, "largest:104b", 0.02, 0.0, rng, 0.0)[:2] == (ahead[0], "ml")
    # Against an anchor the artifact knows, spreads count for nothing: the best-ranked
    # model that leads it by min_gain.
    known = rank(names, [0.80, 0.76, 0.62], [3.0, 5.0, 8.0], 0.0, {"largest:104b"}, spread)
    assert pick(known, "", 0.02, 0.0, rng, 0.0)[:2] == (known[0], "ml")


def test_the_unseen_spread_is_the_catalogues_own_imputation_error() -> None:
    """UNSEEN_SPREAD per unit of uncertainty is what the catalogue's imputation misses
    by: each published area score imputed as if unpublished, from the other models,
    against the uncertainty the catalogue gives that imputation (root mean square
    error over root mean square uncertainty)."""
    catalog = Catalog.load()
    errors: list[float] = []
    stated: list[float] = []
    for area in AREAS:
        area_errors, area_stated, _ = misses(catalog, (area,), None, False)
        errors += area_errors
        stated += area_stated
    assert len(errors) > 300
    measured = (sum(e * e for e in errors) / sum(u * u for u in stated)) ** 0.5
    assert measured == pytest.approx(UNSEEN_SPREAD, rel=0.15)


def test_tolerance_takes_the_quickest_model_within_it_of_the_choice() -> None:
    rng = random.Random(0)
    names = ["big:70b", "mid:14b", "small:3b"]
    p = [0.80, 0.78, 0.70]
    seconds = [20.0, 5.0, 1.0]
    ranking = rank(names, p, seconds, 0.0, set(names))
    assert pick(ranking, "", 0.02, 0.0, rng)[:2] == (ranking[0], "ml")
    chosen, reason, _ = pick(ranking, "", 0.02, 0.0, rng, tolerance=0.03)
    assert (chosen.name, reason) == ("mid:14b", "cheaper")
    assert pick(ranking, "", 0.02, 0.0, rng, tolerance=0.11)[0].name == "small:3b"
    # Nothing quicker within it: the choice stays, with its own reason.
    assert pick(ranking, "", 0.02, 0.0, rng, tolerance=0.01)[:2] == (ranking[0], "ml")
    # Within the tolerance of the kept anchor, not of the model that failed to beat it.
    pinned = rank(names, [0.81, 0.765, 0.70], seconds, 0.0, set(), [0.1, 0.1, 0.1])
    chosen, reason, _ = pick(pinned, "mid:14b", 0.02, 0.0, rng, 0.0, tolerance=0.03)
    assert (chosen.name, reason) == ("mid:14b", "pinned")
    chose = choose(ranking, {}, 0.0, np.random.default_rng(0), tolerance=0.03)
    assert (chose.chosen.name, chose.reason) == ("mid:14b", "cheaper")


def test_max_loss_bounds_the_chance_of_a_good_answer_cost_may_trade_away() -> None:
    rng = random.Random(0)
    names = ["big:70b", "mid:14b", "small:3b"]
    # Utilities at 0.02 per second: 0.40, 0.66, 0.68.
    ranking = rank(names, [0.80, 0.76, 0.70], [20.0, 5.0, 1.0], 0.02, set(names))
    assert pick(ranking, "", 0.02, 0.0, rng)[0].name == "small:3b"
    # 10 points below the best-rated is too much; 4 is not.
    chosen, reason, _ = pick(ranking, "", 0.02, 0.0, rng, max_loss=0.05)
    assert (chosen.name, reason) == ("mid:14b", "ml")
    assert pick(ranking, "", 0.02, 0.0, rng, max_loss=0.03)[0].name == "big:70b"
    assert pick(ranking, "", 0.02, 0.0, rng, max_loss=0.2)[0].name == "small:3b"
    chose = choose(ranking, {}, 0.0, np.random.default_rng(0), max_loss=0.05)
    assert chose.chosen.name == "mid:14b"
    # Once there is evidence the bound reads the blend and its optimism: the quickest
    # model answering this kind every time (40 of 40 where 28 were expected) is
    # within it.
    evidence = {"small:3b": [40.0, 40.0, 28.0]}
    learned = choose(ranking, evidence, 0.0, np.random.default_rng(0), max_loss=0.05)
    assert (learned.chosen.name, learned.reason) == ("small:3b", "learned")


def test_max_loss_holds_for_what_an_imputed_rating_may_be_off() -> None:
    """A model placed from imputed areas, rated first and far cheaper, may be far below
    its rating: cost takes it only where its lower bound (P less SWITCH_Z of its spread)
    is within max_loss of the best-rated P; explain marks it the same way."""
    rng = random.Random(0)
    names = ["placed:35b", "big:70b", "small:7b"]
    # Utilities at 0.004 per second: 0.654, 0.597, 0.634; placed:35b's spread 0.09.
    ranking = rank(names, [0.696, 0.688, 0.644], [10.5, 22.8, 2.5], 0.004, set(), [0.09, 0.0, 0.0])
    # By ratings alone all three are within 5 points, and cost takes the imputed one.
    assert pick(ranking, "", 0.02, 0.0, rng, max_loss=0.1)[0].name == "placed:35b"
    chosen, reason, _ = pick(ranking, "", 0.02, 0.0, rng, max_loss=0.05)
    assert (chosen.name, reason) == ("big:70b", "ml")
    assert beyond_max_loss(ranking, 0.05, PRIOR_STRENGTH) == {"placed:35b", "small:7b"}
    assert choose(ranking, {}, 0.0, np.random.default_rng(0), max_loss=0.05).chosen.name == (
        "big:70b"
    )
    # Its spread shrinks with its own evidence (100 answers at what was expected): then
    # its rating counts, and cost takes it.
    evidence = {"placed:35b": [70.0, 100.0, 70.0]}
    learned = choose(ranking, evidence, 0.0, np.random.default_rng(0), max_loss=0.05)
    assert learned.chosen.name == "placed:35b"
    # Rated far above the others, no model's lower bound is within 5 points of it:
    # nothing is sure enough to trade for cost, and the highest lower bound is kept.
    ahead = rank(names, [0.66, 0.58, 0.541], [10.5, 22.8, 2.5], 0.004, set(), [0.09, 0, 0])
    assert pick(ahead, "", 0.02, 0.0, rng, max_loss=0.05)[0].name == "big:70b"
    alone = rank(["placed:35b"], [0.7], [10.0], 0.004, set(), [0.2])
    assert pick(alone, "", 0.02, 0.0, rng, max_loss=0.05)[0].name == "placed:35b"


def test_an_anchors_doubt_shrinks_with_its_own_evidence() -> None:
    # The largest, unseen and placed from its details alone, rated a little below a
    # model never tried: kept while only the catalogue speaks for it...
    ranking = rank(["small:8b", "large:49b"], [0.60, 0.60], [1.0, 6.0], 0.0, set(), [0.0, 0.1])
    rng = np.random.default_rng(0)
    kept = choose(ranking, {}, 0.0, rng, "large:49b", 0.02, 0.0)
    assert kept.chosen.name == "large:49b"
    # ...and left once its own answers (100 of them, 0.4 each where 0.6 was expected)
    # have measured it: its spread no longer protects it.
    evidence = {"large:49b": [40.0, 100.0, 60.0]}
    left = choose(ranking, evidence, 0.0, rng, "large:49b", 0.02, 0.0)
    assert (left.chosen.name, left.reason) == ("small:8b", "learned")


def test_fast_takes_the_quickest_adequate_model_not_one_rated_to_fail() -> None:
    """`auto:fast` as shipped weighs a second at 0.2 of P(success), so that the
    quickest model wins; but not one rated far below the best-rated candidate (a 7B
    chat model rated 0.12 on a maths question where a 30B one is rated 0.97): its
    `max_loss` keeps out what may be more than that below, and within it the quickest
    still wins."""
    from proxy.config_selector import Selector

    fast = Selector().profiles["fast"]
    rng = random.Random(0)
    names = ["quick:7b", "able:30b"]
    far = rank(names, [0.12, 0.97], [4.5, 13.4], fast.cost_weight, set(names))
    chosen = pick(far, "", 0.02, 0.0, rng, max_loss=fast.max_loss)[0]
    assert chosen.name == "able:30b"
    assert choose(far, {}, 0.0, np.random.default_rng(0), max_loss=fast.max_loss).chosen.name == (
        "able:30b"
    )
    # A quick model rated a little below the best is still the fast choice.
    near = rank(names, [0.80, 0.97], [4.5, 13.4], fast.cost_weight, set(names))
    assert pick(near, "", 0.02, 0.0, rng, max_loss=fast.max_loss)[0].name == "quick:7b"

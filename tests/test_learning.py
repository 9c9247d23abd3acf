"""Learning from the proxy's own traffic: evidence per (kind of prompt, model) blended
with the selector's prior, fed by outcomes (ratings win over implicit signals), kept
in a state file or PostgreSQL, and changing later decisions through the real HTTP
endpoints."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import orjson
import pytest

from proxy import auth_store, learning
from proxy.app import APP_KEY
from proxy.auth import hash_key
from proxy.config_selector import Learning, Profile, Selector
from proxy.config_services import ApiKey, Auth, Usage
from proxy.emulator import EmulatorSettings
from proxy.learning import PER_ID, Learner, evidence_from_events
from proxy.usage.export import from_files, from_postgres
from selector_model import outcome, posterior
from selector_model.catalogue_prior import CATALOGUE_SHARE, with_catalogue
from selector_model.evidence import COLUMNS, Evidence
from selector_model.features import AREAS, REQUEST_FEATURES, Candidate
from selector_model.kind import kind_of
from selector_model.policy import pick, rank, size_anchor
from selector_model.posterior import choose
from tests.support import Emulator, Proxy, ServerThread, file_usage, wait_until
from tests.test_auth_postgres import REFRESH, status_becomes
from tests.test_outcome import _at, closed_loop
from tests.usage_services import Database, PrivatePostgres, postgres_usage, wait_for
from training.data import prompt_request

MODELS = ("qwen2.5:7b", "mistral:7b", "llama3.1:8b")
ROUNDS = 8  # ratings of each model before the decision must change


# The policy, offline ------------------------------------------------------------------


def _ranking() -> list[Any]:
    return rank(list(MODELS), [0.70, 0.60, 0.50], [1.0, 1.0, 1.0], 0.0, set(MODELS))


def test_without_evidence_the_choice_is_the_priors() -> None:
    rng = np.random.default_rng(0)
    chose = choose(_ranking(), {}, 0.0, rng)
    greedy, reason, _ = pick(_ranking(), "", 0.02, 0.0, random.Random(0))
    assert (chose.chosen.name, chose.reason, chose.propensity) == (greedy.name, reason, 1.0)
    assert chose.ranking[0].blend is None and chose.ranking[0].describe()["blend"] == 0.7


def test_answers_that_only_completed_leave_the_choice_as_the_priors() -> None:
    """Live traffic without ratings: every answer completes, whoever gave it. Counted
    as the selector expected them (`outcome.against`) they move no estimate and start
    no optimistic gamble on untried models; one surprising outcome does."""
    rng = np.random.default_rng(0)
    unseen = rank(list(MODELS), [0.70, 0.68, 0.50], [1.0] * 3, 0.0, {MODELS[0]})
    evidence = Evidence()
    done = outcome.Result(1.0, outcome.COMPLETED, "completed")
    for _ in range(50):
        evidence.update("code", MODELS[0], outcome.against(done, 0.7), 0.7, done.weight)
    quiet = choose(unseen, evidence.of("code"), 0.0, rng)
    assert quiet.chosen.name == MODELS[0]
    assert [s.utility for s in quiet.ranking] == pytest.approx([0.70, 0.68, 0.50])
    assert all(s.optimism == 0.0 for s in quiet.ranking)
    # One thumbs-down is news: the untried models' wide posteriors earn a try.
    evidence.update("code", MODELS[0], 0.0, 0.7)
    told = choose(unseen, evidence.of("code"), 0.0, rng)
    assert told.chosen.name == MODELS[1]
    assert all(s.optimism > 0.0 for s in told.ranking)


def test_evidence_moves_the_choice_by_the_beta_posterior() -> None:
    rng = np.random.default_rng(0)
    evidence = Evidence()
    for _ in range(ROUNDS):
        evidence.update("math", "qwen2.5:7b", 0.0, prior=0.7)
        evidence.update("math", "mistral:7b", 1.0, prior=0.6)
    chose = choose(_ranking(), evidence.of("math"), 0.0, rng, known_prior_strength=10.0)
    assert (chose.chosen.name, chose.reason) == ("mistral:7b", "learned")
    row = {s.name: s.describe() for s in chose.ranking}
    assert row["mistral:7b"]["prior"] == 0.6
    assert row["mistral:7b"]["evidence"] == {"count": ROUNDS, "mean": 1.0, "expected": 0.6}
    # The kind's shift: the models' mean gaps, each weighted by n * n0 / (n0 + n),
    # shrunk by the prior's strength (10); each model with evidence moves further by
    # how far its own gap departs from it.
    weight = ROUNDS * 10 / (10 + ROUNDS)
    shift = weight * (0.4 - 0.7) / (10 + 2 * weight)
    assert row["mistral:7b"]["blend"] == pytest.approx(
        0.6 + shift + ROUNDS * (0.4 - shift) / (10 + ROUNDS), abs=1e-4
    )
    assert row["qwen2.5:7b"]["blend"] == pytest.approx(
        0.7 + shift + ROUNDS * (-0.7 - shift) / (10 + ROUNDS), abs=1e-4
    )
    assert row["llama3.1:8b"]["evidence"] == {"count": 0.0, "mean": None, "expected": None}
    assert row["llama3.1:8b"]["blend"] == pytest.approx(0.5 + shift, abs=1e-4)
    # Another kind of prompt keeps the prior.
    assert choose(_ranking(), evidence.of("code"), 0.0, rng).chosen.name == "qwen2.5:7b"
    # The evidence corrects the prior of each prompt: where the selector expected less
    # of mistral (0.3 on a prompt, where its outcomes came at 0.6 expected), the gap
    # it missed by still lifts it, from this prompt's prior.
    low = rank(list(MODELS), [0.70, 0.30, 0.50], [1.0, 1.0, 1.0], 0.0, set(MODELS))
    lifted = {
        s.name: s
        for s in choose(low, evidence.of("math"), 0.0, rng, known_prior_strength=10).ranking
    }
    assert lifted["mistral:7b"].blend == pytest.approx(
        0.3 + shift + ROUNDS * (0.4 - shift) / (10 + ROUNDS)
    )
    # With priors the artifact was fitted on, one model's evidence alone, a shortfall
    # chance allows, moves the kind, not the order: it may be the selector's on this
    # kind (or the winner's curse), and nothing says another would have done better.
    alone = Evidence()
    for i in range(ROUNDS):
        alone.update("math", "qwen2.5:7b", float(i % 2), prior=0.7)
    only = choose(_ranking(), alone.of("math"), 0.0, rng)
    assert only.chosen.name == "qwen2.5:7b"
    assert [s.name for s in only.ranking] == list(MODELS)
    assert all(s.blend is not None and s.blend < s.p_success for s in only.ranking)
    # A shortfall beyond chance (every answer failed where 0.7 was expected) says the
    # fitted P are not to be trusted on this kind: the others earn a try.
    for i in range(ROUNDS):
        alone.update("math", "qwen2.5:7b", float(i % 2), prior=0.7, weight=-1.0)
        alone.update("math", "qwen2.5:7b", 0.0, prior=0.7)
    assert choose(_ranking(), alone.of("math"), 0.0, rng).chosen.name == "mistral:7b"
    # With the weak priors of models the artifact never saw, the same shortfall is
    # shared between the kind and the model: the model chosen everywhere loses its place.
    unseen = rank(list(MODELS), [0.70, 0.60, 0.50], [1.0, 1.0, 1.0], 0.0, set())
    assert choose(unseen, alone.of("math"), 0.0, rng).chosen.name == "mistral:7b"
    # A prior that is worth more needs more evidence: by default, the prior of a model
    # the artifact was trained on; a model it never saw learns faster.
    few = Evidence()
    for _ in range(2):
        few.update("math", "qwen2.5:7b", 0.0, prior=0.7)
        few.update("math", "mistral:7b", 1.0, prior=0.6)
    assert choose(_ranking(), few.of("math"), 0.0, rng).reason == "ml"
    unseen = rank(list(MODELS), [0.70, 0.60, 0.50], [1.0, 1.0, 1.0], 0.0, set())
    assert choose(unseen, few.of("math"), 0.0, rng).chosen.name == "mistral:7b"


def test_a_models_evidence_on_one_kind_moves_it_on_another_by_less() -> None:
    rng = np.random.default_rng(0)
    evidence = Evidence()
    for _ in range(ROUNDS):
        evidence.update("knowledge", "qwen2.5:7b", 0.0, prior=0.7)
    unseen = rank(list(MODELS), [0.70, 0.60, 0.50], [1.0, 1.0, 1.0], 0.0, set())

    def moved(kind: str, ranking: list[Any]) -> dict[str, float]:
        """Each model's blend less its prior, for a prompt of `kind`."""
        chose = choose(ranking, evidence.of(kind), 0.0, rng, kinds=evidence.table)
        return {
            s.name: (s.p_success if s.blend is None else s.blend) - s.p_success
            for s in chose.ranking
        }

    # Against the other models (which move alike, by the kinds' shift), qwen loses on
    # math, a kind it has no evidence on, by its offset over every kind; on knowledge,
    # the kind its evidence is from, by more.
    knowledge, math = moved("knowledge", unseen), moved("math", unseen)
    assert math["mistral:7b"] == pytest.approx(math["llama3.1:8b"])
    lost_on_math = math["mistral:7b"] - math["qwen2.5:7b"]
    assert 0 < lost_on_math < knowledge["mistral:7b"] - knowledge["qwen2.5:7b"]
    # The offset: the model's gap (-0.7) on the weight its kind gives it,
    # W = n * n0 / (n0 + n), less the pool's shift G, shrunk by n0 (10).
    weight = ROUNDS * 10 / (10 + ROUNDS)
    member = weight * 10 / (10 + weight)
    overall = member * -0.7 / (10 + member)
    assert math["mistral:7b"] == pytest.approx(overall)
    assert lost_on_math == pytest.approx(-weight * (-0.7 - overall) / (10 + weight))
    # For a model the artifact never saw, that is enough to change the choice on math;
    # with the strong prior of a model the artifact was fitted on, it is not.
    pick_math = choose(unseen, evidence.of("math"), 0.0, rng, kinds=evidence.table)
    assert (pick_math.chosen.name, pick_math.reason) == ("mistral:7b", "learned")
    assert choose(_ranking(), {}, 0.0, rng, kinds=evidence.table).chosen.name == "qwen2.5:7b"
    # Without the other kinds, only the kind's own evidence counts (as `pick` on math).
    assert choose(unseen, evidence.of("math"), 0.0, rng).chosen.name == "qwen2.5:7b"
    # Each kind speaks for the model with at most n0 outcomes: a kind with many
    # outcomes a little below the prior (40 at -0.1) does not drown one with fewer
    # far above it (8 at +0.5); the model gains on a third kind.
    mixed = Evidence()
    for _ in range(40):
        mixed.update("math", "qwen2.5:7b", 0.6, prior=0.7)
    for _ in range(8):
        mixed.update("knowledge", "qwen2.5:7b", 1.0, prior=0.5)
    on_code = choose(unseen, {}, 0.0, rng, kinds=mixed.table).ranking
    row = next(s for s in on_code if s.name == "qwen2.5:7b")
    assert row.describe()["model_evidence"] == {"count": 48, "mean": 0.6667, "expected": 0.6667}
    others = next(s for s in on_code if s.name == "mistral:7b")
    assert others.blend is not None and row.blend is not None
    # (Counted outcome by outcome, the two would cancel: no gain.)
    assert row.blend - row.p_success > others.blend - others.p_success + 0.02


def test_a_model_the_artifact_was_fitted_on_has_no_offset_of_its_own() -> None:
    rng = np.random.default_rng(0)
    evidence = Evidence()
    for _ in range(100):
        evidence.update("knowledge", "qwen2.5:7b", 0.0, prior=0.7)
        evidence.update("knowledge", "mistral:7b", 1.0, prior=0.6)
    # Fitted on each model's outcomes, the artifact leaves no error of a model's own
    # to carry across kinds: on math (no evidence) the known models move alike.
    known = choose(_ranking(), {}, 0.0, rng, kinds=evidence.table).ranking
    moved = {s.name: (s.p_success if s.blend is None else s.blend) - s.p_success for s in known}
    assert moved["qwen2.5:7b"] == pytest.approx(moved["mistral:7b"])
    assert moved["qwen2.5:7b"] == pytest.approx(moved["llama3.1:8b"])
    # A model it never saw is placed from its description: the same evidence moves
    # it on math by its own offset.
    unseen = rank(list(MODELS), [0.70, 0.60, 0.50], [1.0, 1.0, 1.0], 0.0, set())
    placed = choose(unseen, {}, 0.0, rng, kinds=evidence.table).ranking
    offset = {s.name: (s.blend or s.p_success) - s.p_success for s in placed}
    assert offset["mistral:7b"] > offset["llama3.1:8b"] > offset["qwen2.5:7b"]


def test_optimism_tries_a_model_little_is_known_about_until_its_outcomes_say() -> None:
    rng = np.random.default_rng(0)
    unseen = rank(["first", "second", "third"], [0.6, 0.45, 0.3], [1.0] * 3, 0.0, set())
    evidence = Evidence()
    for _ in range(50):
        evidence.update("math", "first", 0.3, prior=0.6)
    # By the posterior means alone, the model chosen first keeps its place: its
    # shortfall is shared with the kind, which lowers the others too, and the second,
    # never tried, is never found out.
    means = choose(unseen, evidence.of("math"), 0.0, rng, optimism=0.0)
    assert means.chosen.name == "first"
    assert all(s.optimism == 0 for s in means.ranking)
    # One posterior standard deviation each: the second's prior rests on 10 outcomes'
    # worth, the first's on 60, so the second is tried (greedily: propensity 1).
    chose = choose(unseen, evidence.of("math"), 0.0, rng)
    assert (chose.chosen.name, chose.reason, chose.propensity) == ("second", "learned", 1.0)
    row = {s.name: s for s in chose.ranking}
    for s in chose.ranking:
        assert s.blend is not None
        spread = math.sqrt(s.blend * (1 - s.blend) / (10 + s.evidence_count + 1))
        assert s.optimism == pytest.approx(spread)
        assert s.utility == pytest.approx(s.blend + s.optimism)
        assert s.describe()["optimism"] == pytest.approx(spread, abs=1e-4)
    assert row["second"].optimism > 2 * row["first"].optimism
    # Its own outcomes, worse than the first's, narrow its spread: the first is back.
    for _ in range(50):
        evidence.update("math", "second", 0.1, prior=0.45)
    assert choose(unseen, evidence.of("math"), 0.0, rng).chosen.name == "first"
    # With no evidence at all, the choice is the prior's, without optimism.
    prior = choose(unseen, {}, 0.0, rng)
    assert prior.chosen.name == "first" and all(s.optimism == 0 for s in prior.ranking)


def test_a_fitted_model_far_below_its_p_lets_a_fitted_rival_be_tried() -> None:
    """Both models were in the artifact's training data. Where the first answers a
    kind 20 points below its P (another grading, other prompts), the P of the second,
    never tried there, is no better known: it must be tried, where a strength of
    hundreds of outcomes would keep its posterior too narrow ever to be, while the
    first's shortfall, shared with the kind, lowers it too."""
    rng = np.random.default_rng(0)
    fitted = rank(["first", "second"], [0.62, 0.60], [1.0] * 2, 0.0, {"first", "second"})
    evidence = Evidence()
    for _ in range(300):
        evidence.update("math", "first", 0.4, prior=0.62)
    chose = choose(fitted, evidence.of("math"), 0.0, rng)
    assert (chose.chosen.name, chose.reason) == ("second", "learned")
    strength = posterior.fitted_strength(
        evidence.of("math"), {"first", "second"}, posterior.KNOWN_PRIOR_STRENGTH, 10.0
    )
    assert strength == 10.0
    # Where its outcomes are what its P said, the fitted prior keeps its strength, and
    # the first its place.
    kept = Evidence()
    for i in range(300):
        kept.update("math", "first", float(i % 50 < 31), prior=0.62)
    assert posterior.fitted_strength(
        kept.of("math"), {"first", "second"}, posterior.KNOWN_PRIOR_STRENGTH, 10.0
    ) == pytest.approx(posterior.KNOWN_PRIOR_STRENGTH)
    assert choose(fitted, kept.of("math"), 0.0, rng).chosen.name == "first"


def test_a_model_is_not_judged_on_its_first_few_answers_of_a_kind() -> None:
    """Two models the selector rates alike: the first one tried answers once, badly.
    One answer says little (a model is tried where its P led, not on a random sample
    of the kind): it stays where it stood untried and is tried again. Answers that make
    that standing implausible (none right in 8 where 0.6 was expected) are not bad
    luck: the other takes the kind."""
    rng = np.random.default_rng(0)
    unseen = rank(["chat", "twin", "far"], [0.60, 0.60, 0.35], [1.0] * 3, 0.0, set())

    def choice(chat_zeros: int) -> Any:
        evidence = Evidence()
        for _ in range(chat_zeros):
            evidence.update("reasoning", "chat", 0.0, prior=0.6)
        # The twin answers as the selector expected.
        evidence.add("reasoning", "twin", 6.0, 10.0, 6.0)
        return choose(unseen, evidence.of("reasoning"), 0.0, rng)

    once = choice(1)
    assert once.chosen.name == "chat"
    row = {s.name: s for s in once.ranking}
    chat, far = row["chat"], row["far"]
    assert chat.blend is not None and far.blend is not None
    # Where it stood untried: its prior moved by the kind's shift (what moved the far
    # model, which has no outcomes), plus one standard deviation of that prior.
    untried = chat.p_success + (far.blend - far.p_success)
    standing = untried + math.sqrt(untried * (1 - untried) / (10 + 1))
    assert chat.utility == pytest.approx(standing)
    assert chat.blend < chat.p_success - 0.05  # its answer counts in its mean
    never = choice(8)
    assert never.chosen.name == "twin"
    row = {s.name: s for s in never.ranking}
    chat = row["chat"]
    assert chat.blend is not None
    spread = math.sqrt(chat.blend * (1 - chat.blend) / (10 + 8 + 1))
    assert chat.optimism == pytest.approx(max(spread, posterior._upper(0.0, 8) - chat.blend))
    assert chat.utility < standing - 0.2


def test_failures_where_the_selector_expected_them_do_not_bound_a_model_elsewhere() -> None:
    """A quick model and a slow one the selector rates 5 points better, under a profile
    that weighs cost and never gives away more than 5 points for it. The quick one's
    answers run a little above its P. The slow one, before it is judged, answered two
    prompts where the selector expected it to fail (P 0.3), and failed them: on a
    prompt it rates 0.85, what those two answers leave plausible is read against the
    P they were answered at, so it keeps its place as untried. Two failures where it
    was rated 0.85 do bound it there, and the quick one takes the prompt."""
    rng = np.random.default_rng(0)
    fleet = rank(["quick", "slow"], [0.80, 0.85], [1.2, 22.7], 0.004, set(), [0.0, 0.0])

    def choice(failures: int, rated: float) -> str:
        evidence = Evidence()
        for i in range(50):
            evidence.update("math", "quick", float(i < 41), prior=0.80, margin=-0.05)
        for _ in range(failures):
            evidence.update("math", "slow", 0.0, prior=rated, margin=0.2)
        chose = choose(fleet, evidence.of("math"), 0.0, rng, max_loss=0.05, store=evidence)
        return chose.chosen.name

    assert choice(0, 0.3) == "slow"
    assert choice(2, 0.3) == "slow"
    assert choice(2, 0.85) == "quick"


def test_a_learned_choice_leaves_the_priors_only_with_its_corrections_discounted() -> None:
    """The choice without evidence is a slow model the selector rates 25 points above a
    quick one. The slow one answered a kind 20 points below its P, the quick one 7
    above: read as they are, the two corrections make them alike, and cost gives the
    kind to the quick one. Corrections read off other prompts are what a learned
    choice rests on; with `baseline_discount` they count for half in the comparison
    with the choice without evidence, and half of them does not undo a 25-point
    lead: the slow model keeps the kind. Where the quick one answered as far above its
    P as the slow one below, half of that does."""
    rng = np.random.default_rng(0)
    fleet = rank(["quick", "slow"], [0.60, 0.85], [1.2, 22.7], 0.004, set(), [0.0, 0.0])

    def choice(quick_right: int, discount: float) -> tuple[str, str]:
        evidence = Evidence()
        for i in range(100):
            evidence.update("math", "slow", float(i < 60), prior=0.80, margin=0.2)
            evidence.update("math", "quick", float(i < quick_right), prior=0.55, margin=-0.2)
        chose = choose(
            fleet, evidence.of("math"), 0.0, rng, store=evidence, baseline_discount=discount
        )
        return chose.chosen.name, chose.reason

    assert choice(62, 0.0) == ("quick", "learned")
    assert choice(62, 0.5) == ("slow", "ml")
    assert choice(90, 0.5) == ("quick", "learned")
    # As the proxy's settings carry it to the decision.
    assert Learning().baseline_discount == 0.0


def test_a_model_poor_answers_dropped_is_retried_once_the_kind_is_decided_often() -> None:
    """Two models the selector rates alike: the first one tried answers a kind worse
    than expected over the answers it is judged on, and the second takes the kind. One
    standard deviation of optimism never brings the first back however often the kind
    is decided; a bonus that grows with the kind's outcomes per candidate does, up to
    where the model stood untried, so a model the prior ranks far below is not tried
    however often."""
    rng = np.random.default_rng(0)
    unseen = rank(["chat", "twin", "far"], [0.60, 0.60, 0.35], [1.0] * 3, 0.0, set())
    judged = int(posterior.JUDGED_AFTER)

    def choice(twin_outcomes: int, chat_zeros: int = judged // 2) -> Any:
        evidence = Evidence()
        for i in range(judged):
            evidence.update("reasoning", "chat", float(i >= chat_zeros), prior=0.6)
        for _ in range(chat_zeros - judged):
            evidence.update("reasoning", "chat", 0.0, prior=0.6)
        # The twin answers a little better than the selector expected.
        evidence.add("reasoning", "twin", 0.7 * twin_outcomes, twin_outcomes, 0.6 * twin_outcomes)
        return choose(unseen, evidence.of("reasoning"), 0.0, rng)

    # Early on (ten answers of the twin), one posterior standard deviation each: the
    # twin keeps the kind.
    early = choice(10)
    assert early.chosen.name == "twin"
    for s in early.ranking:
        assert s.blend is not None
        spread = math.sqrt(s.blend * (1 - s.blend) / (10 + s.evidence_count + 1))
        assert s.optimism == pytest.approx(spread)
    # After 900 of the twin's answers the chat model, its 20 answers (half of them
    # right) against 300 per candidate, is tried again...
    late = choice(900)
    assert (late.chosen.name, late.propensity) == ("chat", 1.0)
    row = {s.name: s for s in late.ranking}
    chat, far = row["chat"], row["far"]
    assert chat.blend is not None and far.blend is not None
    assert chat.optimism > math.sqrt(chat.blend * (1 - chat.blend) / (10 + judged + 1)) + 0.05
    # ...lifted no higher than where it stood untried: its prior moved by the kind's
    # shift (what moved the far model, which has no outcomes), plus one standard
    # deviation of that prior.
    untried = chat.p_success + (far.blend - far.p_success)
    assert chat.utility <= untried + math.sqrt(untried * (1 - untried) / (10 + 1)) + 1e-9
    # The far model, never tried, keeps one standard deviation and its place.
    assert far.optimism == pytest.approx(math.sqrt(far.blend * (1 - far.blend) / (10 + 1)))
    assert late.ranking[-1].name == "far"
    # A model whose many outcomes say it is poor is not brought back.
    assert choice(900, chat_zeros=30).chosen.name == "twin"


def test_a_lift_read_where_a_model_led_is_not_carried_to_prompts_where_it_trails() -> None:
    """Selection bias: a model is tried where its P led, and its gap there is not its
    gap elsewhere. "big" (P 0.4 on the prompts it was chosen for) answered those where
    it led by 0.2 all right and those where it led by nothing half right: a mean gap
    of +0.35, read only where it led. "rival" answered its 20 at its P. Its gap,
    fitted on where it stood, falls with its margin; on a prompt where it trails by
    0.2, the lift is the fit's at the lowest margin it was tried at (a lead of 0.1 less
    than its mean), not its mean: the rival keeps that prompt. Where it leads as it
    did, the lift holds."""
    rng = np.random.default_rng(0)
    evidence = Evidence()
    for i in range(40):
        evidence.update("math", "big", float(i % 2), prior=0.4, margin=0.0)
        evidence.update("math", "big", 1.0, prior=0.4, margin=0.2)
    for i in range(20):
        evidence.update("math", "rival", float(i % 2), prior=0.5, margin=0.0)

    def blends(p_big: float, p_rival: float) -> tuple[str, dict[str, float]]:
        ranking = rank(["big", "rival"], [p_big, p_rival], [1.0, 1.0], 0.0, set())
        chose = choose(ranking, evidence.of("math"), 0.0, rng, min_gain=0.0, unknown_margin=0.0)
        return chose.chosen.name, {s.name: s.blend or 0.0 for s in chose.ranking}

    trails, at = blends(0.3, 0.5)
    assert trails == "rival"
    # The slope of its gap in its margin, ridge fit: n cov / (n var + SLOPE_PRIOR).
    slope = 80 * (0.1 * 0.25) / (80 * 0.01 + posterior.SLOPE_PRIOR)
    _, plain = blends(0.5, 0.3)  # the same mean lift, where it leads by 0.2...
    lifted_at_mean = plain["big"] - 0.5 - slope * (0.2 - 0.1)
    # ...carried to where it trails only as far as one standard deviation (0.1) below
    # where it stood on average.
    assert at["big"] - 0.3 == pytest.approx(lifted_at_mean - slope * 0.1)
    leads, _ = blends(0.5, 0.3)
    assert leads == "big"


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> Counter[str]:
    """Calls of `selector_model.posterior.<name>` from here on, counted under its name."""
    calls = Counter[str]()
    real = getattr(posterior, name)

    def counted(*args: Any) -> Any:
        calls[name] += 1
        return real(*args)

    monkeypatch.setattr(posterior, name, counted)
    return calls


def test_offsets_from_the_evidence_are_computed_once_per_change_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(0)
    unseen = rank(list(MODELS), [0.70, 0.60, 0.50], [1.0, 1.0, 1.0], 0.0, set())
    evidence = Evidence()
    for _ in range(ROUNDS):
        evidence.update("knowledge", "qwen2.5:7b", 0.0, prior=0.7)
    calls = _counting(monkeypatch, "_offsets")

    def blends() -> list[tuple[str, float | None, float]]:
        # The Evidence itself (as `auto` passes it) gives what its table gives.
        by_store = choose(unseen, evidence.of("math"), 0.0, rng, kinds=evidence)
        by_table = choose(unseen, evidence.of("math"), 0.0, rng, kinds=evidence.table)
        rows = [(s.name, s.blend, s.utility) for s in by_store.ranking]
        assert rows == [(s.name, s.blend, s.utility) for s in by_table.ranking]
        return rows

    first = blends()
    assert blends() == first
    assert calls["_offsets"] == 3  # once for the store, once per call for the table
    # A change is seen at the next decision.
    for _ in range(ROUNDS):
        evidence.update("code", "mistral:7b", 0.0, prior=0.6)
    assert blends() != first
    assert calls["_offsets"] == 5


def test_what_the_evidence_says_of_each_candidate_is_read_once_per_change_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the store (as `auto` passes it), a decision reads the evidence once per change
    of it and per set of candidates (their names and whether the artifact knows each):
    its choices are those read afresh every time, without a store."""
    evidence = Evidence()
    for model, value in (("qwen2.5:7b", 0.0), ("mistral:7b", 1.0), ("llama3.1:8b", 0.5)):
        for _ in range(ROUNDS):
            evidence.update("math", model, value, prior=0.6, margin=0.1)
    calls = _counting(monkeypatch, "_standings")

    def ranking(p: list[float], known: set[str], names: tuple[str, ...] = MODELS) -> list[Any]:
        return rank(list(names), p, [1.0] * len(names), 0.0, known)

    def rows(chose: posterior.Chosen) -> list[tuple[Any, ...]]:
        return [(s.name, s.blend, s.optimism, s.utility) for s in chose.ranking]

    def decide(p: list[float], known: set[str], names: tuple[str, ...] = MODELS) -> Any:
        stored = choose(
            ranking(p, known, names),
            evidence.of("math"),
            0.0,
            np.random.default_rng(0),
            store=evidence,
        )
        afresh = choose(
            ranking(p, known, names), evidence.of("math"), 0.0, np.random.default_rng(0)
        )
        assert (stored.chosen.name, stored.reason, stored.known_strength) == (
            afresh.chosen.name,
            afresh.reason,
            afresh.known_strength,
        )
        assert rows(stored) == rows(afresh)
        return rows(stored)

    first = decide([0.70, 0.60, 0.50], set())
    assert calls["_standings"] == 2  # read for the store, and afresh
    # Another prompt (other P, another order of the candidates): read from the store.
    decide([0.50, 0.65, 0.70], set())
    assert calls["_standings"] == 3
    # The same names, but one the artifact knows: its prior strength differs.
    decide([0.70, 0.60, 0.50], {"qwen2.5:7b"})
    assert calls["_standings"] == 5
    # Another set of candidates.
    decide([0.70, 0.60], set(), MODELS[:2])
    assert calls["_standings"] == 7
    # A change is seen at the next decision.
    for _ in range(ROUNDS):
        evidence.update("math", "mistral:7b", 0.0, prior=0.6, margin=-0.1)
    assert decide([0.70, 0.60, 0.50], set()) != first
    assert calls["_standings"] == 9


def test_unseen_models_lean_on_the_catalogue_by_what_it_knows() -> None:
    request = [0.0] * len(REQUEST_FEATURES)
    request[REQUEST_FEATURES.index("demand_math")] = 1.0  # a math prompt
    areas = {"strong": 0.9, "weak": 0.3, "vague": 0.3}
    candidates = [
        Candidate(name, params_b=size, uncertainty=spread, areas=(areas[name],) * len(AREAS))
        for name, size, spread in (("strong", 8.0, 0.0), ("weak", 70.0, 0.0), ("vague", 7.0, 1.0))
    ]
    # The booster rates the weak model highest; the catalogue, which measured both,
    # says the opposite: each unseen model moves CATALOGUE_SHARE of the way to the
    # catalogue's reading, offset in log-odds by how far the booster sits from the
    # catalogue over the fleet; the one the catalogue knows nothing about
    # (uncertainty 1) keeps its P.
    p = [0.4, 0.7, 0.4]
    got = with_catalogue(p, request, candidates, [False, False, False])
    centre = sum(_logit(q) - _logit(a) for q, a in zip(p, (0.9, 0.3, 0.3), strict=True)) / 3
    reads = [1 / (1 + math.exp(-(centre + _logit(a)))) for a in (0.9, 0.3, 0.3)]
    share = CATALOGUE_SHARE
    assert got == pytest.approx(
        [0.4 + (reads[0] - 0.4) * share, 0.7 + (reads[1] - 0.7) * share, 0.4]
    )
    assert got[0] > got[1]

    # A model the artifact was fitted on keeps its P, and the others' readings are
    # centred on it: "strong" reads 0.9 where the selector says 0.8, so "weak", read
    # 0.3, is put that many log-odds lower (by its share), whatever the booster
    # guessed of it.
    fitted = with_catalogue([0.8, 0.7, 0.4], request, candidates, [True, False, False])
    assert fitted[0] == 0.8
    placed = 1 / (1 + math.exp(-(_logit(0.8) - _logit(0.9) + _logit(0.3))))
    assert fitted[1] == pytest.approx(0.7 + share * (placed - 0.7))
    assert fitted[2] == 0.4
    # A reading below 0 is still a probability.
    assert with_catalogue([0.2, 0.7, 0.4], request, candidates, [True, False, False])[1] > 0
    # With every one known, all keep their P.
    assert with_catalogue([0.4, 0.7, 0.4], request, candidates, [True] * 3) == [0.4, 0.7, 0.4]
    ranking = rank(["strong", "weak", "vague"], got, [1.0] * 3, 0.0, set())
    # The anchor when no candidate is known: the largest, none other of its size.
    assert size_anchor(ranking, candidates, [False] * 3) == "weak"
    near = rank(["strong", "weak"], [0.51, 0.5], [1.0] * 2, 0.0, set())
    rng = np.random.default_rng(0)
    assert choose(ranking, {}, 0.0, rng, "weak").chosen.name == "strong"
    assert choose(near, {}, 0.0, rng, "weak").chosen.name == "weak"  # a lead under min_gain


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_on_an_easy_prompt_unseen_models_keep_the_catalogues_order() -> None:
    # A known model far above its benchmark reading (an easy prompt) puts every
    # stronger unseen model above it; they must not all meet at the ceiling, where the
    # order the catalogue measured would be lost.
    request = [0.0] * len(REQUEST_FEATURES)
    request[REQUEST_FEATURES.index("demand_math")] = 1.0
    scores = {"known": 0.5, "good": 0.75, "better": 0.83, "best": 0.9}
    candidates = [
        Candidate(n, params_b=8.0, uncertainty=0.0, areas=(a,) * len(AREAS))
        for n, a in scores.items()
    ]
    got = with_catalogue([0.84, 0.5, 0.5, 0.5], request, candidates, [True, False, False, False])
    assert got[0] == 0.84  # a model the artifact knows keeps its P
    assert got[0] < got[1] < got[2] < got[3] < 0.99


def test_the_catalogue_counts_as_far_as_it_knows_the_areas_a_prompt_reads() -> None:
    # A coder with published code results and nothing else: on a code prompt the
    # catalogue knows what matters and its reading counts whole; on a knowledge prompt
    # it knows little (the areas were imputed) and the booster's P mostly stays.
    def prompt(area: str) -> list[float]:
        request = [0.0] * len(REQUEST_FEATURES)
        request[REQUEST_FEATURES.index(f"demand_{area}")] = 1.0
        return request

    doubts = tuple(0.0 if area == "code" else 0.8 for area in AREAS)
    coder = Candidate("coder", areas=(0.2,) * len(AREAS), uncertainty=0.64, area_uncertainty=doubts)
    other = Candidate("other", areas=(0.5,) * len(AREAS), uncertainty=0.0)
    p = [0.7, 0.5]
    on_code = with_catalogue(p, prompt("code"), [coder, other], [False, True])
    on_knowledge = with_catalogue(p, prompt("knowledge"), [coder, other], [False, True])
    # Readings centred on the known model: 0.5 - 0.5 + 0.2 = 0.2.
    assert on_code[0] == pytest.approx(0.7 + CATALOGUE_SHARE * (0.2 - 0.7))
    assert on_knowledge[0] == pytest.approx(0.7 + CATALOGUE_SHARE * 0.2 * (0.2 - 0.7))
    # Without per-area doubts, the model's overall uncertainty counts for every prompt.
    flat = replace(coder, area_uncertainty=())
    assert with_catalogue(p, prompt("code"), [flat, other], [False, True])[0] == pytest.approx(
        0.7 + CATALOGUE_SHARE * 0.36 * (0.2 - 0.7)
    )


def test_exploration_bounds_tries_and_propensity_matches_frequency() -> None:
    rng = np.random.default_rng(3)
    evidence: dict[str, list[float]] = {"mistral:7b": [2.0, 4.0, 2.4]}
    n = 4000
    picks = [choose(_ranking(), evidence, 0.2, rng) for _ in range(n)]
    counts = Counter(p.chosen.name for p in picks)
    others = n - counts["qwen2.5:7b"]
    # At most the exploration share leaves the best model (0.2 * 4000 = 800, sd ~25).
    assert 0 < others <= 900
    assert {p.reason for p in picks if p.chosen.name != "qwen2.5:7b"} == {"explore"}
    for name in MODELS:
        # The recorded propensity is the probability of the choice: on average, over the
        # decisions that chose a model, it is that model's share of choices (within
        # the Monte-Carlo and sampling noise).
        recorded = [p.propensity for p in picks if p.chosen.name == name]
        if len(recorded) >= 50:
            assert sum(recorded) / len(recorded) == pytest.approx(counts[name] / n, abs=0.03)
    # A seeded generator makes the decisions repeatable.
    again = [choose(_ranking(), evidence, 0.2, np.random.default_rng(3)) for _ in range(1)]
    first = choose(_ranking(), evidence, 0.2, np.random.default_rng(3))
    assert again[0].chosen.name == first.chosen.name and again[0].propensity == first.propensity


def test_kinds_generalise_to_new_prompts() -> None:
    assert kind_of(prompt_request("Calculate 17 * 23 + 4. What is the result?")) == "math"
    assert kind_of(prompt_request("Solve the equation 3x + 1 = 10 for x.")) == "math"
    assert kind_of(prompt_request("def add(a, b):\n    return a + b\nfix this bug")) == "code"
    assert kind_of(prompt_request("Write a function that reverses a list.")) == "code"
    assert kind_of(prompt_request("Write a SQL query that counts the orders.")) == "code"
    assert kind_of(prompt_request("Where does the word come from? Select one.")) == "knowledge"
    assert kind_of(prompt_request("Who wrote The Old Man and the Sea?")) == "knowledge"
    assert kind_of(prompt_request("Summarize this article: " + "word " * 200)) == "writing"


def test_options_in_brackets_do_not_make_a_question_code() -> None:
    # "(a)" and "B)" are code characters, and beside short options they are many of
    # a question's characters: a quiz of plain prose is a multiple-choice question.
    planets = (
        "Which planet is known as the Red Planet?\n(a) Venus\n(b) Mars\n(c) Jupiter\n(d) Saturn"
    )
    plants = (
        "Which gas do green plants take in from the air to make their food?\n"
        "A) Oxygen\nB) Carbon dioxide\nC) Nitrogen\nD) Helium"
    )
    assert kind_of(prompt_request(planets)) == "reasoning"
    assert kind_of(prompt_request(plants)) == "reasoning"
    # Code in the question, or in the options, still makes it code.
    snippet = "What does this print?\nprint(len([1, 2, 3]))\n(a) 1\n(b) 2\n(c) 3\n(d) an error"
    assert kind_of(prompt_request(snippet)) == "code"
    # And brackets outside a multiple-choice question still read as code.
    json_like = 'Make this valid JSON: {name: "Ann", roles: ["admin", "dev"], meta: {age: 41}}'
    assert kind_of(prompt_request(json_like)) == "code"


# The learner, offline ------------------------------------------------------------------


def _event(rid: str, second: int, prompt: str, **outcome_fields: Any) -> dict[str, Any]:
    request = prompt_request(f"Calculate {prompt} + 1. What is it?")
    return {
        "request_id": rid,
        "ts": f"2026-01-01T00:{second // 60:02d}:{second % 60:02d}Z",
        "client": {"user": "ann"},
        "prompt_sha256": prompt,
        "decision": {
            "chosen": "qwen2.5:7b",
            "kind": kind_of(request),
            "p_success": 0.5,
            "margin": 0.1,
        },
        "features": {"schema_version": 1, "request": request},
        "outcome": {"status": 200, "error": None, "done_reason": "stop", **outcome_fields},
    }


def test_learner_takes_back_implicit_outcomes_when_a_rating_or_a_retry_comes(
    tmp_path: Path,
) -> None:
    evidence = Evidence()
    learner = Learner(Learning(), Usage(file_path=str(tmp_path / "events.jsonl")), evidence)
    learner.observe("usage", _event("r1", 0, "a"))
    weak = outcome.COMPLETED
    # A completed answer is no news: counted as what the selector expected (0.5).
    assert evidence.of("math")["qwen2.5:7b"][:4] == pytest.approx(
        [weak * 0.5, weak, weak * 0.5, weak * 0.1]
    )
    learner.observe("feedback", {"request_id": "r1", "rating": 0.0})  # a thumbs-down wins
    assert evidence.of("math")["qwen2.5:7b"][:2] == pytest.approx([0.0, outcome.RATED])
    learner.observe("usage", _event("r2", 10, "b"))
    learner.observe("usage", _event("r3", 60, "b"))  # b again within 120 s: r2 failed
    # r3 completed unrated, from a rater that rates (without keys, any client): its
    # silence is an answer not rated, and counts for nothing (`outcome.estimated`).
    assert evidence.of("math")["qwen2.5:7b"][:2] == pytest.approx([0.0, 2 * outcome.RATED])
    # Feedback that overtakes its event waits for it.
    learner.observe("feedback", {"request_id": "r4", "rating": 1.0})
    learner.observe("usage", _event("r4", 300, "c", done_reason="length"))
    successes, count, expected = evidence.of("math")["qwen2.5:7b"][:3]
    assert (successes, count, expected) == pytest.approx((1.0, 3 * outcome.RATED, count * 0.5))
    # The same events read back in one go (a rebuild) give the same evidence.
    events = [
        {**_event("r1", 0, "a"), "rating": 0.0},
        _event("r2", 10, "b"),
        _event("r3", 60, "b"),
        {**_event("r4", 300, "c", done_reason="length"), "rating": 1.0},
    ]
    rebuilt = evidence_from_events(events)
    # Every sum, where the model stood (its margin, 0.1) included.
    assert rebuilt.of("math")["qwen2.5:7b"] == pytest.approx(evidence.of("math")["qwen2.5:7b"])
    assert evidence.of("math")["qwen2.5:7b"][3:5] == pytest.approx([0.1 * count, 0.01 * count])
    # Feedback by the id the client sent (kept as client_request_id beside the proxy's).
    learner.observe("usage", {**_event("r6", 500, "e"), "client_request_id": "mine-1"})
    learner.observe("feedback", {"request_id": "mine-1", "rating": 0.0})
    assert evidence.of("math")["qwen2.5:7b"][1] == pytest.approx(count + outcome.RATED)
    before = list(evidence.of("math")["qwen2.5:7b"])
    # Requests auto did not decide teach nothing.
    learner.observe("usage", {**_event("r5", 400, "d"), "decision": None})
    assert evidence.of("math")["qwen2.5:7b"] == pytest.approx(before)


def test_the_latest_rating_of_an_answer_replaces_the_earlier_ones(tmp_path: Path) -> None:
    """A user who rates an answer again (a thumbs-down by mistake, then up, as a chat UI
    lets them change it) means the latest: it replaces the earlier ratings with one
    rating's weight, however many came (a thousand thumbs-down then one up leave the
    up), live, waiting for its request, and rebuilt from the usage files (the latest by
    when it was given, a spool's late replay of an earlier one included)."""
    usage = Usage(file_path=str(tmp_path / "events.jsonl"))
    evidence = Evidence()
    learner = Learner(Learning(), usage, evidence)
    learner.observe("usage", _event("r1", 0, "a"))
    learner.observe("feedback", {"request_id": "r1", "rating": 0.0})
    assert evidence.of("math")["qwen2.5:7b"][:2] == pytest.approx([0.0, outcome.RATED])
    learner.observe("feedback", {"request_id": "r1", "rating": 1.0})
    assert evidence.of("math")["qwen2.5:7b"][:2] == pytest.approx([1.0, outcome.RATED])
    for _ in range(1000):
        learner.observe("feedback", {"request_id": "r1", "rating": 0.0})
    assert evidence.of("math")["qwen2.5:7b"][:2] == pytest.approx([0.0, outcome.RATED])
    learner.observe("feedback", {"request_id": "r1", "rating": 1.0})
    assert evidence.of("math")["qwen2.5:7b"][:2] == pytest.approx([1.0, outcome.RATED])
    # Rated twice before its request's event came: the latest counts.
    learner.observe("feedback", {"request_id": "r2", "rating": 1.0})
    learner.observe("feedback", {"request_id": "r2", "rating": 0.0})
    learner.observe("usage", _event("r2", 10, "b"))
    assert evidence.of("math")["qwen2.5:7b"][:2] == pytest.approx([1.0, 2 * outcome.RATED])

    events = [_event("r1", 0, "a"), _event("r2", 10, "b")]
    (tmp_path / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    given = [
        ("r1", 0.0, "2026-01-01T00:00:01.000000Z"),
        ("r1", 1.0, "2026-01-01T00:00:03.000000Z"),
        ("r1", 0.0, "2026-01-01T00:00:02.000000Z"),  # replayed from a spool, late
        ("r2", 1.0, "2026-01-01T00:00:11.000000Z"),
        ("r2", 0.0, "2026-01-01T00:00:12.000000Z"),
    ]
    (tmp_path / "events.feedback.jsonl").write_bytes(
        b"".join(
            orjson.dumps({"request_id": rid, "rating": rating, "ts": ts}) + b"\n"
            for rid, rating, ts in given
        )
    )
    read = from_files(usage.file_path, datetime.fromisoformat("2025-01-01T00:00:00+00:00"))
    assert [e.rating for e in read] == [1.0, 0.0]
    rebuilt = evidence_from_events(e.document() for e in read)
    assert rebuilt.of("math")["qwen2.5:7b"][:2] == pytest.approx([1.0, 2 * outcome.RATED])


async def test_a_torn_line_in_the_usage_files_loses_no_other_evidence(tmp_path: Path) -> None:
    """A crash cuts a write short and the next start appends after it: a rebuild skips
    the one unreadable line it leaves (among the events, or the ratings) and learns from
    every other, the ratings with them."""
    usage = Usage(file_path=str(tmp_path / "events.jsonl"))
    lines = [orjson.dumps(_event(f"r{n}", 10 * n, "abc"[n])) for n in range(3)]
    (tmp_path / "events.jsonl").write_bytes(
        lines[0] + b"\n" + lines[1][:50] + lines[1] + b"\n" + lines[2] + b"\n"
    )
    ratings = [
        orjson.dumps({"request_id": rid, "rating": 1.0, "ts": f"2026-01-01T00:01:0{n}Z"})
        for n, rid in enumerate(["r0", "r2"])
    ]
    (tmp_path / "events.feedback.jsonl").write_bytes(
        ratings[0][:20] + ratings[0] + b"\n" + ratings[1] + b"\n"
    )
    evidence = Evidence()
    learner = Learner(Learning(), usage, evidence)
    await learner.start()
    assert learner.error is None and learner.rebuilt == 2
    read = [_event("r0", 0, "a"), {**_event("r2", 20, "c"), "rating": 1.0}]
    expected = evidence_from_events(read).of("math")["qwen2.5:7b"]
    assert evidence.of("math")["qwen2.5:7b"] == pytest.approx(expected)


def test_a_cloud_answer_is_no_evidence_about_a_local_model(tmp_path: Path) -> None:
    """An answer a cloud provider gave (auto's choice failed, or the cloud answered in
    the profile's name) says nothing of the local model: the learner counts none, live
    or rebuilt from the events, and its rating counts for nothing either."""
    evidence = Evidence()
    learner = Learner(Learning(), Usage(file_path=str(tmp_path / "events.jsonl")), evidence)
    fell_back = {**_event("c1", 0, "a"), "provider": "openai", "backend": "cloud:openai"}
    in_its_name = {
        **_event("c2", 10, "b"),
        "provider": "openai",
        "decision": {"reason": "cloud", "profile": "fast", "chosen": None},
    }
    for event in (fell_back, in_its_name):
        learner.observe("usage", event)
        learner.observe("feedback", {"request_id": event["request_id"], "rating": 0.0})
    assert learner.observed == 0 and evidence.size() == 0
    rated = [{**e, "rating": 0.0} for e in (fell_back, in_its_name)]
    assert evidence_from_events(rated).size() == 0
    # The same event answered locally is evidence.
    assert evidence_from_events([{**_event("c1", 0, "a"), "rating": 0.0}]).size() == 1


def test_an_answer_that_reached_no_backend_is_no_evidence_about_the_model(
    tmp_path: Path,
) -> None:
    """The proxy's own 503 where none of the chosen model's backends could be reached
    (`outcome.unreached`): no model ran, so an outage lowers no model's estimate, live
    or rebuilt from the events, rated or not. A backend's own 503, or an event written
    before events said whether the request reached a backend, still fails the model."""
    evidence = Evidence()
    learner = Learner(Learning(), Usage(file_path=str(tmp_path / "events.jsonl")), evidence)
    down = "no healthy backend: gpu-a: connect refused"
    unreached = _event("u1", 0, "a", status=503, error=down, unreached=True)
    learner.observe("usage", unreached)
    learner.observe("feedback", {"request_id": "u1", "rating": 0.0})
    assert learner.observed == 0 and evidence.size() == 0
    assert evidence_from_events([unreached, {**unreached, "rating": 0.0}]).size() == 0
    answered = _event("b1", 10, "b", status=503, error="server busy")
    assert evidence_from_events([answered]).of("math")["qwen2.5:7b"][0] == 0.0
    before = _event("o1", 20, "c", status=503, error=down)
    assert evidence_from_events([before]).of("math")["qwen2.5:7b"][0] == 0.0


def test_the_unrated_answers_of_a_client_that_rates_count_for_nothing(tmp_path: Path) -> None:
    """A client that rates some answers and leaves others unrated (a benchmark's held
    prompts, a chat UI's unrated turns): its silence is an answer not rated, and counted
    as no news it would hold the model that served those answers at its P while the
    ratings move the others. Its unrated answers, those before its first rating too,
    count for nothing; another key's, which rates nothing, still count as no news."""
    evidence = Evidence()
    learner = Learner(Learning(), Usage(file_path=str(tmp_path / "events.jsonl")), evidence)
    ann = {"api_key_id": "ann", "api_key_hash": "a" * 64}
    bob = {"api_key_id": "bob", "api_key_hash": "b" * 64}

    def sent(rid: str, second: int, key: dict[str, str]) -> dict[str, Any]:
        return {**_event(rid, second, rid), "client": {"user": "u", **key}}

    events = [sent("a1", 0, ann), sent("a2", 10, ann), sent("b1", 20, bob), sent("a3", 30, ann)]
    for event in events[:3]:
        learner.observe("usage", event)
    weak = outcome.COMPLETED
    assert evidence.of("math")["qwen2.5:7b"][1] == pytest.approx(3 * weak)
    learner.observe("feedback", {"request_id": "a1", "rating": 1.0, **ann})
    # a1 rated; a2, Ann's, taken back; b1, Bob's, kept.
    assert evidence.of("math")["qwen2.5:7b"][:2] == pytest.approx([1.0 + weak * 0.5, 1.0 + weak])
    learner.observe("usage", events[3])  # Ann's, after she rated: not counted
    assert evidence.of("math")["qwen2.5:7b"][:2] == pytest.approx([1.0 + weak * 0.5, 1.0 + weak])
    # A rebuild from the events and their feedback reads them the same way.
    rebuilt = evidence_from_events([{**events[0], "rating": 1.0}, *events[1:]])
    assert rebuilt.of("math")["qwen2.5:7b"] == pytest.approx(evidence.of("math")["qwen2.5:7b"])


def _sent(rid: str, sent: float, took: float, prompt: str = "p", **fields: Any) -> dict[str, Any]:
    """An `auto` request of Ann's for `prompt`, arrived `sent` seconds into 2026 and
    answered in `took` seconds."""
    return {**_event(rid, 0, prompt, total_ms=took * 1000.0), "ts": _at(sent), **fields}


def _ended(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp() + event["outcome"]["total_ms"] / 1000


def _learned(tmp_path: Path, events: list[dict[str, Any]]) -> tuple[set[str], Evidence]:
    """The requests a learner counts as retried once it has seen `events`, handed to it
    as the proxy hands them (when each answer ends), and its evidence."""
    evidence = Evidence()
    learner = Learner(Learning(), Usage(file_path=str(tmp_path / "events.jsonl")), evidence)
    for event in sorted(events, key=_ended):
        learner.observe("usage", event)
    retried = set()
    for event in events:
        (counted,) = learner.carrying(event["request_id"])
        if counted.applied is not None and counted.applied.source == "retried":
            retried.add(event["request_id"])
    return retried, evidence


def test_a_load_test_of_one_prompt_fails_none_of_autos_answers(tmp_path: Path) -> None:
    """A closed-loop load test sends one prompt again and again from one key and user,
    each copy as an earlier one's answer ends: taken for retries, every answer `auto`
    gave would fail, and through the shared evidence `auto` would learn that every
    model it picks fails, for every user. A repetition fails none, whether its copies
    follow one another or 32 streams overlap; what the learner counted for the first
    copies, while they still looked like a person's retries, it takes back."""
    for users, rounds, seed in ((1, 10, 1), (4, 5, 5), (32, 5, 2)):
        events = [
            _sent(f"r{i}", sent, took)
            for i, (sent, took) in enumerate(closed_loop(users, rounds, seed))
        ]
        retried, evidence = _learned(tmp_path, events)
        assert retried == set()
        successes, count, expected = evidence.of("math")["qwen2.5:7b"][:3]
        # Every answer completed: no news, counted as the selector expected (0.5).
        assert (successes, count) == pytest.approx(
            (len(events) * outcome.COMPLETED * 0.5, len(events) * outcome.COMPLETED)
        )
        assert successes == pytest.approx(expected)


def test_the_learner_and_the_grader_mark_the_same_retries(tmp_path: Path) -> None:
    """The online learner (events one by one, as answers end) and the offline grader
    (every event at once: training, the A/B report, a rebuild) mark the same requests
    retried, and so count the same evidence."""
    bob = {"client": {"user": "bob"}}
    cases: list[tuple[list[dict[str, Any]], set[str]]] = [
        # A person's retries: once, twice; a third retry makes a repetition.
        ([_sent("a1", 0, 5), _sent("a2", 30, 5)], {"a1"}),
        ([_sent("a1", 0, 5), _sent("a2", 30, 5), _sent("a3", 60, 5)], {"a1", "a2"}),
        ([_sent(f"a{i}", 30 * i, 5) for i in range(4)], set()),
        # After the window; to another model name; by another user.
        ([_sent("a1", 0, 5), _sent("a2", 200, 5)], set()),
        ([_sent("a1", 0, 5), _sent("a2", 30, 5, requested_model="auto:best")], set()),
        ([_sent("a1", 0, 5), _sent("a2", 30, 5, **bob)], set()),
        # Concurrent copies, whichever ends last; then one sent once both ended.
        ([_sent("a1", 0, 100), _sent("a2", 5, 5), _sent("a3", 20, 10)], set()),
        ([_sent("a1", 0, 10), _sent("a2", 5, 15), _sent("a3", 40, 5)], {"a2"}),
        # A load test of one prompt beside a person retrying another.
        (
            [
                *(_sent(f"l{i}", s, t) for i, (s, t) in enumerate(closed_loop(8, 4, seed=3))),
                _sent("p1", 1, 4, "q"),
                _sent("p2", 9, 3, "q"),
            ],
            {"p1"},
        ),
    ]
    # Sequences drawn at random: a few people and prompts, gaps and answers of any
    # length up to beyond the window, copies that overlap.
    rng = random.Random(4)
    for _ in range(200):
        drawn = []
        for i in range(rng.randint(2, 9)):
            who = {"client": {"user": rng.choice(("ann", "bob"))}}
            took = rng.choice((rng.uniform(0.1, 5.0), rng.uniform(5.0, 300.0)))
            sent = rng.uniform(0.0, 400.0)
            drawn.append(_sent(f"d{i}", sent, took, rng.choice(("p", "q")), **who))
        cases.append((drawn, outcome.retried_ids(drawn)))
    marked = 0
    for events, expected in cases:
        learned, evidence = _learned(tmp_path, events)
        assert outcome.retried_ids(events) == expected
        assert learned == expected
        rebuilt = evidence_from_events(events).of("math")
        for model, sums in evidence.of("math").items():
            assert rebuilt[model] == pytest.approx(sums, abs=1e-9)
        marked += len(expected)
    assert marked > 50  # the drawn sequences hold retries, not only repetitions


def test_a_rating_waiting_for_its_request_is_not_taken_by_another_keys_request(
    tmp_path: Path,
) -> None:
    """A rating can overtake its request's event (another proxy served it); a request
    of another key that carries the same id, coming first, leaves it waiting."""
    evidence = Evidence()
    learner = Learner(Learning(), Usage(file_path=str(tmp_path / "events.jsonl")), evidence)

    def by(name: str, rid: str, second: int, client_id: str) -> dict[str, Any]:
        event = _event(rid, second, name, done_reason="stop")
        client = {"user": name, "api_key_id": name, "api_key_hash": f"{name}-hash"}
        return {**event, "client": client, "client_request_id": client_id}

    learner.observe(
        "feedback",
        {"request_id": "c1", "rating": 0.0, "api_key_id": "ann", "api_key_hash": "ann-hash"},
    )
    learner.observe("usage", by("bob", "r1", 0, "c1"))
    learner.observe("usage", by("ann", "r2", 10, "c1"))
    # Bob's answer: its implicit outcome; Ann's: her thumbs-down.
    assert evidence.of("math")["qwen2.5:7b"][:2] == pytest.approx(
        [outcome.COMPLETED * 0.5, outcome.COMPLETED + outcome.RATED]
    )


def test_ratings_waiting_for_an_id_are_bounded_and_another_keys_keep_theirs(
    tmp_path: Path,
) -> None:
    """Ratings that overtake their request wait for it, a bounded number per id: a key
    posting ratings by the thousand for one id (each is taken in when the request
    comes, and a list without bound held every one of them in memory) forgets its own
    oldest past the bound, never the rating Ann gave, which still counts for her
    request."""
    evidence = Evidence()
    learner = Learner(Learning(), Usage(file_path=str(tmp_path / "events.jsonl")), evidence)

    def rating(name: str, value: float) -> dict[str, Any]:
        return {
            "request_id": "c1",
            "rating": value,
            "api_key_id": name,
            "api_key_hash": f"{name}-hash",
        }

    learner.observe("feedback", rating("ann", 0.0))
    for i in range(PER_ID + 5):
        learner.observe("feedback", rating("bob", i / (PER_ID + 5)))
    assert len(learner.unmatched["c1"][1]) == PER_ID
    event = _event("r1", 0, "ann", done_reason="stop")
    client = {"user": "ann", "api_key_id": "ann", "api_key_hash": "ann-hash"}
    learner.observe("usage", {**event, "client": client, "client_request_id": "c1"})
    # Ann's request: her thumbs-down, and none of Bob's ratings.
    assert evidence.of("math")["qwen2.5:7b"][:2] == pytest.approx([0.0, outcome.RATED])
    assert len(learner.unmatched["c1"][1]) == PER_ID - 1


def _waiting_counted(learner: Learner) -> None:
    """The learner's count of waiting ratings, per rater and in all, is theirs."""
    held = [r for _, ratings in learner.unmatched.values() for r in ratings]
    assert learner.waiting == len(held)
    assert {rater: w.count for rater, w in learner.raters.items()} == Counter(
        learning._rater(r) for r in held
    )


@pytest.mark.parametrize("by", ["key", "client"])
def test_a_flood_of_ratings_for_made_up_ids_pushes_out_no_other_raters_waiting_one(
    tmp_path: Path, by: str
) -> None:
    """A rating can overtake its request's event, and waits for it among a bounded
    number: Bob posting ratings for made-up ids, more than all the ratings that may
    wait, forgets his own oldest, never Ann's, which counts for her request when it
    comes. Raters are told apart by their API keys, else by the clients' addresses."""
    evidence = Evidence()
    learner = Learner(Learning(), Usage(file_path=str(tmp_path / "events.jsonl")), evidence)

    def rate(name: str, rid: str, value: float) -> None:
        if by == "key":
            key = {"api_key_id": name, "api_key_hash": f"{name}-hash"}
            learner.observe("feedback", {"request_id": rid, "rating": value, **key})
        else:
            address = {"ann": "10.0.0.1", "bob": "10.0.0.2"}[name]
            learner.observe("feedback", {"request_id": rid, "rating": value}, address)

    rate("ann", "c1", 0.0)
    for i in range(learning.UNMATCHED_MAX + 5):
        rate("bob", f"made-up-{i}", 1.0)
    assert "c1" in learner.unmatched
    assert "made-up-0" not in learner.unmatched  # Bob's oldest went
    assert len(learner.unmatched) == learning.UNMATCHED_PER_RATER + 1
    _waiting_counted(learner)
    event = _event("r1", 0, "ann", done_reason="stop")
    client = {"user": "ann"}
    if by == "key":
        client |= {"api_key_id": "ann", "api_key_hash": "ann-hash"}
    learner.observe("usage", {**event, "client": client, "client_request_id": "c1"})
    # Ann's request: her thumbs-down.
    assert evidence.of("math")["qwen2.5:7b"][:2] == pytest.approx([0.0, outcome.RATED])
    assert "c1" not in learner.unmatched
    _waiting_counted(learner)


def test_ratings_waiting_leave_their_raters_count_however_they_go(tmp_path: Path) -> None:
    """Ratings stop waiting when their request comes, when they expire, past an id's
    bound and past a rater's: each way leaves the rater's count of them right, so that
    a rater's bound counts what it has waiting."""
    learner = Learner(Learning(), Usage(file_path=str(tmp_path / "events.jsonl")), Evidence())

    def rate(name: str, rid: str) -> None:
        key = {"api_key_id": name, "api_key_hash": f"{name}-hash"}
        learner.observe("feedback", {"request_id": rid, "rating": 1.0, **key})

    for i in range(PER_ID + 3):
        rate("ann" if i % 2 else "bob", "c1")
    rate("ann", "c2")
    _waiting_counted(learner)
    event = _event("r1", 0, "ann", done_reason="stop")
    client = {"user": "ann", "api_key_id": "ann", "api_key_hash": "ann-hash"}
    learner.observe("usage", {**event, "client": client, "client_request_id": "c1"})
    assert {r[1] for r in learner.unmatched["c1"][1]} == {"bob"}
    _waiting_counted(learner)
    learner.unmatched["c1"] = (0.0, learner.unmatched["c1"][1])  # waiting since long ago
    learner._expire_unmatched()
    assert list(learner.unmatched) == ["c2"]
    _waiting_counted(learner)
    assert learner.waiting == 1 and list(learner.raters) == [("ann", "ann-hash", "")]


def test_requests_of_another_key_carrying_an_id_do_not_push_the_keys_own_out(
    tmp_path: Path,
) -> None:
    """An id names a bounded number of requests: past it, another key sending many
    requests with that id forgets its own oldest, never the one Ann made with it."""
    evidence = Evidence()
    learner = Learner(Learning(), Usage(file_path=str(tmp_path / "events.jsonl")), evidence)

    def by(name: str, rid: str, second: int) -> dict[str, Any]:
        event = _event(rid, second, f"{name}-{rid}")
        client = {"user": name, "api_key_id": name, "api_key_hash": f"{name}-hash"}
        return {**event, "client": client, "client_request_id": "c1"}

    learner.observe("usage", by("ann", "r0", 0))
    for i in range(1, PER_ID + 5):
        learner.observe("usage", by("bob", f"r{i}", i % 3600))
    assert len(learner.carrying("c1")) == PER_ID
    successes, count, *_ = evidence.of("math")["qwen2.5:7b"]
    learner.observe(
        "feedback",
        {"request_id": "c1", "rating": 0.0, "api_key_id": "ann", "api_key_hash": "ann-hash"},
    )
    # Ann's request: its implicit outcome (weak) replaced by her thumbs-down.
    assert evidence.of("math")["qwen2.5:7b"][:2] == pytest.approx(
        [successes - outcome.COMPLETED * 0.5, count - outcome.COMPLETED + outcome.RATED]
    )


# Through the proxy ---------------------------------------------------------------------


def _selector(tmp_path: Path, **learning: Any) -> Selector:
    profiles = {"balanced": Profile(cost_weight=0.0)}
    profiles.update(
        {f"only-{i}": Profile(cost_weight=0.0, allow=(m,)) for i, m in enumerate(MODELS)}
    )
    return Selector(
        artifact=str(tmp_path / "none.onnx"),  # the documented heuristic is the prior
        profiles=profiles,
        learning=Learning(sync_seconds=0.1, seed=7, **learning),
    )


@pytest.fixture
def fleet(servers: ServerThread) -> Iterator[Emulator]:
    emu = Emulator(servers, EmulatorSettings(models=MODELS, frozen_clock=True, chunk_delay_ms=0.0))
    yield emu
    emu.stop()


def _math(i: int) -> dict[str, Any]:
    text = f"Calculate {i * 37 % 101} * {i + 12} + {i * 7}. What is the result?"
    return {"model": "auto", "stream": False, "messages": [{"role": "user", "content": text}]}


async def _explain(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(url + "/api/autoroute/explain", json=body) as resp:
        assert resp.status == 200
        return await resp.json()


async def _status(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url + "/api/autoroute/status") as resp:
        assert resp.status == 200
        return await resp.json()


async def _explained_on_restart(
    servers: ServerThread, fleet: Emulator, tmp_path: Path, usage: Usage, body: dict[str, Any]
) -> tuple[Any, Any]:
    """A proxy started afresh over `fleet` (with what it finds learned): its explanation
    of `body` and its learning status."""
    prx = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    try:
        async with aiohttp.ClientSession() as session:
            doc = await _explain(session, prx.url, body)
            status = await _status(session, prx.url)
    finally:
        prx.stop()
    return doc, status["learning"]


async def _ask(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[str, str]:
    """(the model that answered, the request id the client sees)."""
    async with session.post(url + "/api/chat", json=body) as resp:
        assert resp.status == 200
        await resp.read()
        return resp.headers["X-Autoroute-Model"], resp.headers["X-Request-Id"]


async def _rate(session: aiohttp.ClientSession, url: str, request_id: str, rating: float) -> None:
    body = {"request_id": request_id, "rating": rating}
    async with session.post(url + "/api/autoroute/feedback", json=body) as resp:
        assert resp.status == 202


Taught = dict[str, list[float]]  # model: the ratings it was given


async def _teach(
    session: aiohttp.ClientSession, serve: str, feedback: str
) -> tuple[str, str, Taught]:
    """Math prompts to plain auto: each answer rated 0, unless it came from the
    runner-up by the prior, rated 1; then the runner-up, asked through a profile that
    allows it alone, rated 1 on other math prompts. Returns (auto's first pick, the
    runner-up, the ratings each model got)."""
    first = await _explain(session, serve, _math(1000))
    assert first["kind"] == "math" and first["reason"] == "fallback"
    picked, runner_up = first["model"], first["ranking"][1]["model"]
    taught: Taught = {}
    for i in range(ROUNDS):
        model, rid = await _ask(session, serve, _math(i))
        rating = 1.0 if model == runner_up else 0.0
        await _rate(session, feedback, rid, rating)
        taught.setdefault(model, []).append(rating)
    assert taught[picked][0] == 0.0  # the first answers came from auto's pick
    only = f"auto:only-{MODELS.index(runner_up)}"
    for i in range(ROUNDS):
        model, rid = await _ask(session, serve, {**_math(100 + i), "model": only})
        assert model == runner_up
        await _rate(session, feedback, rid, 1.0)
        taught.setdefault(model, []).append(1.0)
    return picked, runner_up, taught


async def _until_learned(
    session: aiohttp.ClientSession, url: str, taught: Taught, prompt: int
) -> dict[str, Any]:
    """Explain for a NEW math prompt, once every rating has been counted (each rating
    replaces the implicit outcome of its request)."""
    doc: dict[str, Any] = {}
    for _ in range(400):
        doc = await _explain(session, url, _math(prompt))
        rows = {r["model"]: r for r in doc["ranking"]}
        if all(
            rows[model]["evidence"]["count"] == len(ratings)
            # explain rounds to 4 decimals
            and rows[model]["evidence"]["mean"]
            == pytest.approx(sum(ratings) / len(ratings), abs=1e-4)
            for model, ratings in taught.items()
        ):
            return doc
        await asyncio.sleep(0.05)
    raise AssertionError(f"the ratings were not counted: {taught} {doc}")


def _blends(rows: Any, known: float, unseen: float) -> dict[str, float]:
    """Each explained candidate's blend, from its prior and evidence as explain shows
    them, by the policy's formulas: the pool's shift G over every kind, each model's
    offset o from it, the kind's shift (centred on G, the offsets taken out), then the
    model's own departure on this kind. Every shift weighs a mean gap by
    n * n0 / (n0 + n) and is shrunk by the weak prior's strength. (For evidence from
    one kind, as the test's ratings are.)"""
    rows = list(rows)

    def strength(row: dict[str, Any]) -> float:
        return float(known if row["known_to_artifact"] else unseen)

    def sums(row: dict[str, Any], key: str) -> tuple[float, float]:
        got = row[key]
        count = float(got["count"])
        return count, count * ((got["mean"] or 0.0) - (got["expected"] or 0.0))

    def shift(key: str, offsets: dict[str, float], centre: float) -> float:
        gap = weight = 0.0
        for row in rows:
            count, total = sums(row, key)
            if count > 0:
                w = count * strength(row) / (strength(row) + count)
                gap += w * (total / count - offsets.get(row["model"], 0.0) - centre)
                weight += w
        return centre + (gap / (unseen + weight) if weight else 0.0)

    # The ratings come from one kind: a model's gap over every kind is that kind's, on
    # the weight n * n0 / (n0 + n) it gives the model.
    members = []
    for row in rows:
        count, total = sums(row, "model_evidence")
        if count > 0:
            weight = count * strength(row) / (strength(row) + count)
            members.append((row, weight, total / count))
    pool = sum(w * strength(r) / (strength(r) + w) for r, w, _ in members)
    gaps = sum(w * strength(r) / (strength(r) + w) * gap for r, w, gap in members)
    overall = gaps / (unseen + pool) if pool else 0.0
    offsets = {row["model"]: 0.0 for row in rows}
    for row, weight, gap in members:
        offsets[row["model"]] = weight * (gap - overall) / (strength(row) + weight)
    kind = shift("evidence", offsets, overall)
    blends = {}
    for row in rows:
        centre = kind + offsets[row["model"]]
        count, total = sums(row, "evidence")
        blends[row["model"]] = (
            row["prior"] + centre + (total - count * centre) / (strength(row) + count)
        )
    return blends


def _check_learned(doc: dict[str, Any], picked: str, runner_up: str) -> None:
    """The new prompt goes to the runner-up, by the blend of prior and evidence."""
    assert doc["model"] == runner_up and doc["reason"] == "learned" and doc["kind"] == "math"
    rows = {r["model"]: r for r in doc["ranking"]}

    def gap(row: dict[str, Any]) -> float:
        evidence = row["evidence"]
        return float(
            evidence["count"] * ((evidence["mean"] or 0.0) - (evidence["expected"] or 0.0))
        )

    # Every model moves by the kind's shift and its own offset (see `_blends`); one
    # with evidence of its own, further by how far its own gap departs from that.
    want = _blends(rows.values(), doc["prior_strength"]["known"], doc["prior_strength"]["unseen"])
    for name, row in rows.items():
        assert row["blend"] == pytest.approx(want[name], abs=1e-3)
    assert rows[picked]["evidence"]["mean"] == 0.0
    assert rows[runner_up]["evidence"]["mean"] > 0.99
    assert (
        rows[runner_up]["blend"] > rows[picked]["blend"]
        and rows[picked]["prior"] >= rows[runner_up]["prior"]
    )


async def test_feedback_changes_later_decisions_and_survives_a_restart(
    servers: ServerThread, fleet: Emulator, tmp_path: Path
) -> None:
    usage = Usage(
        file_mode="always",
        file_path=str(tmp_path / "usage" / "events.jsonl"),
        spool_dir=str(tmp_path / "spool"),
    )
    state = tmp_path / "usage" / "learning.json"
    # With the model level (`learning.model_level`): after the restarts, without it.
    prx = Proxy(servers, [fleet.url], selector=_selector(tmp_path, model_level=True), usage=usage)
    try:
        async with aiohttp.ClientSession() as session:
            picked, runner_up, taught = await _teach(session, prx.url, prx.url)
            assert picked != runner_up
            doc = await _until_learned(session, prx.url, taught, 500)
            _check_learned(doc, picked, runner_up)
            # A real request for a new prompt of the same kind goes to the better model.
            assert (await _ask(session, prx.url, _math(501)))[0] == runner_up
            # Another kind of prompt moves by what the ratings say about each model over
            # every kind, less than math, the kind they were given on.
            knowledge = {**_math(0), "messages": [{"role": "user", "content": "Who wrote Dune?"}]}
            other = await _explain(session, prx.url, knowledge)
            assert other["kind"] == "knowledge"
            on_knowledge = {r["model"]: r for r in other["ranking"]}
            assert on_knowledge[picked]["evidence"]["count"] == 0
            strengths = other["prior_strength"]
            want = _blends(on_knowledge.values(), strengths["known"], strengths["unseen"])
            for name, row in on_knowledge.items():
                assert row["blend"] == pytest.approx(want[name], abs=1e-3)

            def lead(rows: dict[str, Any]) -> float:
                """How much the runner-up gained on auto's first pick by the ratings."""
                gained = rows[runner_up]["blend"] - rows[runner_up]["prior"]
                return float(gained - rows[picked]["blend"] + rows[picked]["prior"])

            on_math = {r["model"]: r for r in doc["ranking"]}
            assert 0 < lead(on_knowledge) < lead(on_math)
            learning = (await _status(session, prx.url))["learning"]
            assert learning["store"] == "file" and learning["evidence_rows"] == len(taught)
            # Ratings lie in [0, 1]; anything else is refused as bad input.
            async with session.post(
                prx.url + "/api/autoroute/feedback", json={"request_id": "x", "rating": 1.5}
            ) as resp:
                assert resp.status == 400 and "between 0" in (await resp.json())["error"]
    finally:
        prx.stop()
    assert state.exists()

    # A restart reads the state file.
    doc, learning = await _explained_on_restart(servers, fleet, tmp_path, usage, _math(600))
    assert learning["rebuilt_from_events"] is None
    _check_learned(doc, picked, runner_up)

    # A lost state file is rebuilt from the usage events and their feedback.
    state.unlink()
    doc, learning = await _explained_on_restart(servers, fleet, tmp_path, usage, _math(700))
    _check_learned(doc, picked, runner_up)
    # The first proxy's events: 2 per round, and one more for the real request.
    assert learning["rebuilt_from_events"] == 2 * ROUNDS + 1


async def test_a_rating_counts_in_the_next_decision(
    servers: ServerThread, fleet: Emulator, tmp_path: Path
) -> None:
    """A client that rates an answer and then asks again has the rating counted in that
    decision, however long the usage queue waits before its sinks get a batch: a harness
    that rates each answer before its next prompt learns as the replays do."""
    usage = Usage(
        file_path=str(tmp_path / "events.jsonl"),
        spool_dir=str(tmp_path / "spool"),
        flush_interval_seconds=30.0,
    )
    prx = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    try:
        async with aiohttp.ClientSession() as session:
            model, rid = await _ask(session, prx.url, _math(0))
            await _rate(session, prx.url, rid, 0.0)
            doc = await _explain(session, prx.url, _math(1))
    finally:
        prx.stop()
    evidence = {r["model"]: r for r in doc["ranking"]}[model]["evidence"]
    assert (evidence["count"], evidence["mean"]) == (outcome.RATED, 0.0)


async def test_with_keys_a_rating_counts_only_from_the_key_that_asked(
    servers: ServerThread, fleet: Emulator, tmp_path: Path
) -> None:
    """Request ids are easy to guess (a client sees its own): with API keys, a rating
    given with another key is kept but counts nowhere, neither in what auto learns
    (live, and rebuilt from the events) nor in the stats."""
    ann, bob = "k-ann-1", "k-bob-1"
    auth = Auth(keys=(ApiKey(sha256=hash_key(ann), name="ann"), ApiKey(sha256=hash_key(bob))))
    usage = Usage(
        file_mode="always",
        file_path=str(tmp_path / "usage" / "events.jsonl"),
        spool_dir=str(tmp_path / "spool"),
        flush_interval_seconds=0.02,
    )
    as_ann = {"Authorization": f"Bearer {ann}"}
    prx = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage, auth=auth)
    try:
        async with (
            aiohttp.ClientSession(headers=as_ann) as ann_http,
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {bob}"}) as bob_http,
        ):
            model, rid = await _ask(ann_http, prx.url, _math(0))
            await _rate(bob_http, prx.url, rid, 1.0)  # accepted: 202, as any rating
            await _rate(ann_http, prx.url, rid, 0.0)
            # Ann's thumbs-down alone: with Bob's thumbs-up the mean would be 0.5.
            await _until_learned(ann_http, prx.url, {model: [0.0]}, 1)
            async with ann_http.get(prx.url + "/api/autoroute/stats") as resp:
                stats = await resp.json()
            (row,) = [m for m in stats["models"] if m["served_model"] == model]
            assert row["ratings"] == {"count": 1, "mean": 0.0}
    finally:
        prx.stop()
    # Both ratings are on disk; a rebuild from the events counts Ann's alone.
    (tmp_path / "usage" / "learning.json").unlink()
    prx = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage, auth=auth)
    try:
        async with aiohttp.ClientSession(headers=as_ann) as ann_http:
            await _until_learned(ann_http, prx.url, {model: [0.0]}, 2)
    finally:
        prx.stop()


async def test_another_key_sending_the_same_request_id_takes_no_rating_away(
    servers: ServerThread, fleet: Emulator, tmp_path: Path
) -> None:
    """Request ids are easy to guess, and a client chooses its own `X-Request-Id`: a
    request of another key carrying the id of one of Ann's (the proxy's id, or Ann's
    own) leaves Ann's rating of it counted in what auto learns, as in a rebuild from
    the events; the other key's rating of that id counts for its own request alone."""
    ann, bob = "k-ann-2", "k-bob-2"
    auth = Auth(keys=(ApiKey(sha256=hash_key(ann), name="ann"), ApiKey(sha256=hash_key(bob))))
    prx = Proxy(servers, [fleet.url], selector=_selector(tmp_path), auth=auth)
    try:
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {ann}"}) as ann_http,
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {bob}"}) as bob_http,
        ):
            model, proxy_id = await _ask(ann_http, prx.url, _math(0))
            client_id = "ann-chat-1"
            ann_http.headers["X-Request-Id"] = client_id
            assert (await _ask(ann_http, prx.url, _math(1)))[0] == model
            del ann_http.headers["X-Request-Id"]
            # Bob's requests carry both ids, on another model than Ann's.
            other = f"auto:only-{(MODELS.index(model) + 1) % len(MODELS)}"
            for i, rid in enumerate((proxy_id, client_id)):
                bob_http.headers["X-Request-Id"] = rid
                bob_model, seen = await _ask(bob_http, prx.url, {**_math(2 + i), "model": other})
                assert seen == rid and bob_model != model
            del bob_http.headers["X-Request-Id"]
            await _rate(bob_http, prx.url, proxy_id, 1.0)  # Bob's own request's rating
            await _rate(ann_http, prx.url, proxy_id, 0.0)
            await _rate(ann_http, prx.url, client_id, 0.0)
            # Both of Ann's thumbs-down alone (Bob's thumbs-up would make a mean above 0),
            # and of Bob's two requests the rated one: Bob rates answers, so his other,
            # unrated, counts for nothing (`outcome.estimated`).
            doc = await _until_learned(ann_http, prx.url, {model: [0.0, 0.0]}, 10)
            rows = {r["model"]: r for r in doc["ranking"]}
            assert rows[bob_model]["evidence"]["count"] == pytest.approx(outcome.RATED)
    finally:
        prx.stop()


async def test_a_clients_flood_of_ratings_leaves_another_clients_waiting_rating(
    servers: ServerThread, fleet: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without API keys, the proxy tells raters apart by their addresses: Bob, from
    127.0.0.2, posting more ratings for made-up ids than may wait in all, pushes out
    no rating Ann (127.0.0.1) gave before her request's answer ended, which counts for
    it. The bounds are made small here; the learner's tests show them at their size."""
    monkeypatch.setattr(learning, "UNMATCHED_PER_RATER", 10, raising=False)
    monkeypatch.setattr(learning, "UNMATCHED_MAX", 20)
    usage = file_usage(tmp_path, file_mode="always")
    prx = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    learner = prx.app[APP_KEY].learner
    ann_from = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0))
    bob_from = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    try:
        async with (
            aiohttp.ClientSession(connector=ann_from) as ann_http,
            aiohttp.ClientSession(connector=bob_from) as bob_http,
        ):
            await _rate(ann_http, prx.url, "ann-chat-1", 0.0)
            for i in range(30):
                await _rate(bob_http, prx.url, f"made-up-{i}", 1.0)
            assert await wait_until(lambda: "made-up-29" in learner.unmatched)
            assert "ann-chat-1" in learner.unmatched
            ann_http.headers["X-Request-Id"] = "ann-chat-1"
            await _ask(ann_http, prx.url, _math(0))
            assert await wait_until(
                lambda: any(c.rating is not None for c in learner.carrying("ann-chat-1"))
            )
    finally:
        prx.stop()


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["file", "postgres"])
async def test_a_new_key_under_a_revoked_keys_name_may_not_rate_its_requests(
    store: str, servers: ServerThread, fleet: Emulator, database: Database, tmp_path: Path
) -> None:
    """A stored key's name is free again once it is revoked, and may go to someone
    else: a rating counts only when given with the very key (its hash) that made the
    request, live, in the stats and in a rebuild from the events."""
    if store == "file":
        usage = Usage(
            file_mode="always",
            file_path=str(tmp_path / "usage" / "events.jsonl"),
            spool_dir=str(tmp_path / "spool"),
            flush_interval_seconds=0.02,
        )
    else:
        usage = Usage(
            postgres_dsn=database.dsn,
            file_mode="off",
            spool_dir=str(tmp_path / "spool"),
            flush_interval_seconds=0.02,
        )
    auth = Auth(postgres_dsn=database.dsn, refresh_seconds=REFRESH)
    conn = await auth_store.connect(database.dsn)
    try:
        old, _ = await auth_store.add_key(conn, "alice")
    finally:
        await conn.close()
    first, second = MODELS[0], MODELS[1]

    async def rows(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
        doc = await _until_learned(http, url, {second: [0.0]}, 500)
        return {r["model"]: r for r in doc["ranking"]}

    prx = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage, auth=auth)
    try:
        await status_becomes(prx, old, 200)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {old}"}) as http:
            model, rid = await _ask(http, prx.url, {**_math(0), "model": "auto:only-0"})
            assert model == first
        conn = await auth_store.connect(database.dsn)
        try:
            await auth_store.revoke_key(conn, "alice")
            new, _ = await auth_store.add_key(conn, "alice")
        finally:
            await conn.close()
        await status_becomes(prx, old, 401)
        await status_becomes(prx, new, 200)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {new}"}) as http:
            await _rate(http, prx.url, rid, 1.0)  # accepted, as any rating, and ignored
            model, own = await _ask(http, prx.url, {**_math(1), "model": "auto:only-1"})
            assert model == second
            await _rate(http, prx.url, own, 0.0)
            # The old key's request keeps its implicit outcome alone (weak), not a rating.
            learned = await rows(http, prx.url)
            assert learned[first]["evidence"]["count"] == pytest.approx(outcome.COMPLETED)
            stats: dict[str, Any] = {}
            for _ in range(400):
                async with http.get(prx.url + "/api/autoroute/stats") as resp:
                    stats = {m["served_model"]: m for m in (await resp.json())["models"]}
                if second in stats and stats[second]["ratings"]["count"] == 1:
                    break
                await asyncio.sleep(0.05)
            assert stats[second]["ratings"] == {"count": 1, "mean": 0.0}
            assert stats[first]["ratings"] == {"count": 0, "mean": None}
    finally:
        prx.stop()
    # What is learned, lost, is rebuilt from the events and their feedback the same way.
    if store == "file":
        (tmp_path / "usage" / "learning.json").unlink()
    else:
        conn = await asyncpg.connect(database.dsn)
        try:
            await conn.execute("TRUNCATE autoroute_evidence")
        finally:
            await conn.close()
    prx = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage, auth=auth)
    try:
        await status_becomes(prx, new, 200)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {new}"}) as http:
            learned = await rows(http, prx.url)
            assert learned[first]["evidence"]["count"] == pytest.approx(outcome.COMPLETED)
    finally:
        prx.stop()


@pytest.mark.postgres
async def test_proxies_share_what_they_learn_through_postgres(
    servers: ServerThread, fleet: Emulator, database: Database, tmp_path: Path
) -> None:
    usage = postgres_usage(database.dsn, tmp_path)
    one = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    two = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    try:
        async with aiohttp.ClientSession() as session:
            # Served by one, rated through the other: the other finds the decision in
            # PostgreSQL by request id.
            picked, runner_up, taught = await _teach(session, one.url, two.url)
            for url in (one.url, two.url):
                doc = await _until_learned(session, url, taught, 800)
                _check_learned(doc, picked, runner_up)
            learning = (await _status(session, two.url))["learning"]
            assert learning["store"] == "postgres" and learning["evidence_rows"] == len(taught)
    finally:
        one.stop()
        two.stop()

    # The table lost: the next proxy rebuilds it from usage events and feedback.
    conn = await asyncpg.connect(database.dsn)
    try:
        rows = await conn.fetch("SELECT kind, model, count FROM autoroute_evidence ORDER BY model")
        assert {(r["kind"], r["model"], round(r["count"], 6)) for r in rows} == {
            ("math", model, len(ratings)) for model, ratings in taught.items()
        }
        await conn.execute("TRUNCATE autoroute_evidence")
    finally:
        await conn.close()
    doc, learning = await _explained_on_restart(servers, fleet, tmp_path, usage, _math(900))
    _check_learned(doc, picked, runner_up)
    assert learning["rebuilt_from_events"] == 2 * ROUNDS


_STORED = "SELECT model, count FROM autoroute_evidence"


@pytest.mark.postgres
@pytest.mark.parametrize("loss", ["TRUNCATE autoroute_evidence", "DROP TABLE autoroute_evidence"])
async def test_evidence_lost_under_running_proxies_is_rebuilt_from_the_events(
    servers: ServerThread, fleet: Emulator, database: Database, tmp_path: Path, loss: str
) -> None:
    """An operator empties or drops the evidence table while the proxies run: it is made
    again and rebuilt from the usage events and their feedback, for the proxies running
    and one started later, however much was counted since."""
    usage = postgres_usage(database.dsn, tmp_path)
    one = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    two = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    try:
        async with aiohttp.ClientSession() as session:
            _, _, taught = await _teach(session, one.url, two.url)
            for prx in (one, two):
                await _until_learned(session, prx.url, taught, 800)
            await database.fetch(loss)

            async def rebuilt() -> bool:
                try:
                    return len(await database.fetch(_STORED)) == len(taught)
                except asyncpg.UndefinedTableError:
                    return False  # not made again yet

            # Rebuilt while the proxies run (the table would hold no row, or be gone).
            await wait_for(rebuilt, what="the evidence to be rebuilt")
            # What is counted after that adds up with what was rebuilt.
            for prx in (one, two):
                model, rid = await _ask(session, prx.url, _math(300 + prx.port % 100))
                await _rate(session, prx.url, rid, 1.0)
                taught.setdefault(model, []).append(1.0)
            for prx in (one, two):
                await _until_learned(session, prx.url, taught, 801)
    finally:
        one.stop()
        two.stop()
    rows = await database.fetch(_STORED)
    assert {r["model"]: round(r["count"], 6) for r in rows} == {
        model: len(ratings) for model, ratings in taught.items()
    }
    later = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    try:
        async with aiohttp.ClientSession() as session:
            await _until_learned(session, later.url, taught, 802)
    finally:
        later.stop()


@pytest.mark.postgres
async def test_a_rating_by_the_clients_own_id_counts_through_another_proxy(
    servers: ServerThread, fleet: Emulator, database: Database, tmp_path: Path
) -> None:
    """A client that sends its own X-Request-Id gets it back in the answer and rates by
    it: through another proxy than the one that served it too, for each of its
    requests that carried it (a client's id reused rates each of them)."""
    usage = postgres_usage(database.dsn, tmp_path)
    one = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    two = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    try:
        async with aiohttp.ClientSession(headers={"X-Request-Id": "chat-7-turn-1"}) as session:
            taught: Taught = {}
            for prompt in (0, 1):  # the id reused: both requests carry it
                model, rid = await _ask(session, one.url, _math(prompt))
                assert rid == "chat-7-turn-1"
                taught.setdefault(model, []).append(0.0)
            await _rate(session, two.url, "chat-7-turn-1", 0.0)
            for prx in (one, two):
                await _until_learned(session, prx.url, taught, 1000)
    finally:
        one.stop()
        two.stop()


@pytest.mark.postgres
async def test_a_rating_through_another_proxy_waits_out_a_postgres_outage(
    servers: ServerThread,
    fleet: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL down: the answer's event waits in its proxy's spool, and a rating given
    through another proxy waits for it, however long the outage: it is looked up once
    PostgreSQL is back, not dropped for having waited while it could not be."""
    monkeypatch.setattr(learning, "UNMATCHED_SECONDS", 1.0)
    server = PrivatePostgres()
    db = await asyncio.to_thread(Database, server.base_dsn)
    quick = {"retry_backoff_seconds": 0.05, "retry_backoff_max_seconds": 0.1}
    usage = postgres_usage(db.dsn, tmp_path, **quick)
    one = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    two = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    try:
        async with aiohttp.ClientSession() as session:

            async def started() -> bool:
                status = [await _status(session, p.url) for p in (one, two)]
                return all(s["learning"]["last_sync"] is not None for s in status)

            await wait_for(started, what="both proxies to read the store")
            await asyncio.to_thread(server.stop)
            model, rid = await _ask(session, one.url, _math(0))
            await _rate(session, two.url, rid, 0.0)

            async def noticed() -> bool:
                return (await _status(session, two.url))["learning"]["error"] is not None

            await wait_for(noticed, what="the proxy to find PostgreSQL gone")
            # Longer than a rating waits for its request while PostgreSQL answers.
            await asyncio.sleep(2 * learning.UNMATCHED_SECONDS)
            await asyncio.to_thread(server.start)
            for prx in (one, two):
                await _until_learned(session, prx.url, {model: [0.0]}, 1001)
    finally:
        one.stop()
        two.stop()
        server.close()


@pytest.mark.postgres
async def test_a_rating_given_through_either_proxy_counts_once(
    servers: ServerThread, fleet: Emulator, database: Database, tmp_path: Path
) -> None:
    """Behind a load balancer a client's requests and its ratings reach either proxy.
    However they fall, each rating replaces its answer's implicit outcome once: what
    the proxy that served the answer counted of it, whether it knew then that the
    client rates (its completed answers count for nothing) or learns it later, and
    whatever it learns of the answer afterwards (the prompt sent again soon, as a
    client regenerates an answer it rated down)."""
    usage = postgres_usage(database.dsn, tmp_path)
    one = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    two = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    # (prompt, served by, rated through, rating): the first answer rated through the
    # other proxy while the one that served it knows no rating yet, then sent again to
    # it; then each way once it knows.
    steps = [
        (0, one, two, 0.0),
        (0, one, None, None),
        (1, one, one, 1.0),
        (2, two, one, 1.0),
        (3, one, two, 1.0),
        (4, two, two, 1.0),
    ]
    try:
        async with aiohttp.ClientSession() as session:
            taught: Taught = {}
            for prompt, serve, feedback, rating in steps:
                model, rid = await _ask(session, serve.url, _math(prompt))
                if feedback is not None and rating is not None:
                    await _rate(session, feedback.url, rid, rating)
                    taught.setdefault(model, []).append(rating)
                    # The rating's request counted, where it is rated, before the next
                    # step: as a client's next request comes after its rating.
                    await _until_learned(session, feedback.url, taught, 1000)
            for prx in (one, two):
                await _until_learned(session, prx.url, taught, 1000)
    finally:
        one.stop()
        two.stop()


@pytest.mark.postgres
async def test_a_rating_given_again_replaces_the_earlier_one_everywhere(
    servers: ServerThread, fleet: Emulator, database: Database, tmp_path: Path
) -> None:
    """A thumbs-down then a thumbs-up of one answer (the user changed their mind) leave
    the thumbs-up, with one rating's weight: in what auto learns, however the two
    ratings fall behind a load balancer (through the proxy that served the answer, or
    through another, or one through each), in the stats, in the export, and in the
    evidence rebuilt from the events and their feedback in PostgreSQL."""
    usage = postgres_usage(database.dsn, tmp_path)
    one = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    two = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    # (prompt, rated down through, then up through); one serves every answer.
    steps = [(0, one, one), (1, two, two), (2, two, one), (3, one, two)]
    try:
        async with aiohttp.ClientSession() as session:
            taught: Taught = {}
            for prompt, down_by, up_by in steps:
                model, rid = await _ask(session, one.url, _math(prompt))
                await _rate(session, down_by.url, rid, 0.0)
                down = {**taught, model: [*taught.get(model, []), 0.0]}
                await _until_learned(session, down_by.url, down, 1100)
                await _rate(session, up_by.url, rid, 1.0)
                taught.setdefault(model, []).append(1.0)
                await _until_learned(session, up_by.url, taught, 1100)
            for prx in (one, two):
                await _until_learned(session, prx.url, taught, 1100)
            async with session.get(one.url + "/api/autoroute/stats") as resp:
                stats = await resp.json()
            assert stats["source"] == "postgres"
            rated = [m["ratings"] for m in stats["models"] if m["ratings"]["count"]]
            assert sum(r["count"] for r in rated) == len(steps)
            assert all(r["mean"] == 1.0 for r in rated)
    finally:
        one.stop()
        two.stop()
    rows = await database.fetch("SELECT model, successes, count FROM autoroute_evidence")
    assert {r["model"]: (round(r["successes"], 6), round(r["count"], 6)) for r in rows} == {
        model: (len(ratings), len(ratings)) for model, ratings in taught.items()
    }
    since = datetime.fromisoformat("2020-01-01T00:00:00+00:00")
    assert [e.rating for e in await from_postgres(database.dsn, since)] == [1.0] * len(steps)
    await database.fetch("TRUNCATE autoroute_evidence")
    doc, status = await _explained_on_restart(servers, fleet, tmp_path, usage, _math(1101))
    assert status["rebuilt_from_events"] == len(steps)
    rows = {r["model"]: r["evidence"] for r in doc["ranking"]}
    for model, ratings in taught.items():
        assert (rows[model]["count"], rows[model]["mean"]) == (len(ratings), 1.0)


async def test_an_unreadable_state_file_is_rebuilt_from_the_usage_files(tmp_path: Path) -> None:
    usage = Usage(file_path=str(tmp_path / "events.jsonl"))
    events = [_event("r1", 0, "a"), _event("r2", 10, "b", error="upstream closed")]
    (tmp_path / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    feedback = {"request_id": "r1", "rating": 0.25, "ts": "2026-01-01T00:00:05Z"}
    (tmp_path / "events.feedback.jsonl").write_bytes(orjson.dumps(feedback) + b"\n")
    (tmp_path / "learning.json").write_bytes(b'{"rows": [["math", "x"')  # cut short
    learner = Learner(Learning(), usage, Evidence())
    await learner.start()
    assert learner.rebuilt == 2 and learner.error is None
    # r1 rated 0.25 (the rating wins), r2 failed: two outcomes of full weight.
    assert learner.evidence.of("math")["qwen2.5:7b"][:4] == pytest.approx([0.25, 2.0, 1.0, 0.2])
    saved = orjson.loads((tmp_path / "learning.json").read_bytes())
    assert [row[:6] for row in saved["rows"]] == [["math", "qwen2.5:7b", 0.25, 2.0, 1.0, 0.2]]
    assert len(saved["rows"][0]) == 2 + len(COLUMNS)


async def test_implicit_signals_through_the_proxy(
    servers: ServerThread, fleet: Emulator, tmp_path: Path
) -> None:
    """Without any rating: the same prompt sent again soon by the same user fails the
    first answer, an error fails, a completed answer counts as what was expected of it."""
    usage = Usage(file_path=str(tmp_path / "events.jsonl"), spool_dir=str(tmp_path / "spool"))
    prx = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    try:
        async with aiohttp.ClientSession(headers={"X-Autoroute-User": "ann"}) as session:
            picked = (await _explain(session, prx.url, _math(0)))["model"]
            assert (await _ask(session, prx.url, _math(0)))[0] == picked
            assert (await _ask(session, prx.url, _math(0)))[0] == picked  # asked again
            fleet.state.fault = "error500"
            only = {**_math(1), "model": f"auto:only-{MODELS.index(picked)}"}
            try:
                async with session.post(prx.url + "/api/chat", json=only) as resp:
                    assert resp.status == 500
            finally:
                fleet.state.fault = "none"
            # retried: 0 at full weight; error: 0 at full weight; completed: the
            # selector's expectation, weakly.
            count = 2 * outcome.FAILED + outcome.COMPLETED
            doc: dict[str, Any] = {}
            for _ in range(400):
                doc = await _explain(session, prx.url, _math(2))
                row = {r["model"]: r for r in doc["ranking"]}[picked]
                if row["evidence"]["count"] == pytest.approx(count):
                    break
                await asyncio.sleep(0.05)
    finally:
        prx.stop()
    assert row["evidence"]["count"] == pytest.approx(count)
    expected = row["evidence"]["expected"]
    assert row["evidence"]["mean"] == pytest.approx(outcome.COMPLETED * expected / count, abs=1e-3)


async def test_a_load_test_through_the_proxy_fails_none_of_autos_answers(
    servers: ServerThread, fleet: Emulator, tmp_path: Path
) -> None:
    """A load generator's virtual users sending one prompt again as each answer ends,
    one after another and 8 at once, from one key and user: a repetition, not a
    person's retries, so no answer fails: each completed, no news to the estimates."""
    usage = Usage(file_path=str(tmp_path / "events.jsonl"), spool_dir=str(tmp_path / "spool"))
    prx = Proxy(servers, [fleet.url], selector=_selector(tmp_path), usage=usage)
    sequential, streams, rounds = 6, 8, 3
    try:
        async with aiohttp.ClientSession(headers={"X-Autoroute-User": "ann"}) as session:
            for _ in range(sequential):
                await _ask(session, prx.url, _math(0))

            async def user() -> None:
                for _ in range(rounds):
                    await _ask(session, prx.url, _math(1))

            await asyncio.gather(*(user() for _ in range(streams)))
            sent = sequential + streams * rounds
            for _ in range(400):
                if (await _status(session, prx.url))["learning"]["observed_requests"] >= sent:
                    break
                await asyncio.sleep(0.05)
            doc = await _explain(session, prx.url, _math(2))
    finally:
        prx.stop()
    counts = [row["evidence"]["count"] for row in doc["ranking"]]
    assert sum(counts) == pytest.approx(sent * outcome.COMPLETED)
    for row in doc["ranking"]:
        if row["evidence"]["count"]:
            assert row["evidence"]["mean"] == pytest.approx(row["evidence"]["expected"], abs=1e-3)


async def test_a_client_that_leaves_before_the_answer_began_says_nothing_of_the_model(
    servers: ServerThread, tmp_path: Path
) -> None:
    """A client that leaves before any byte of the answer reached it (an editor that
    cancels a completion at the next keystroke, a client's timeout, a storm of
    cancelled requests) judged nothing of the answer: its request counts neither for
    nor against the model, or any client could drive a model's estimate to nothing."""
    emu = Emulator(servers, EmulatorSettings(models=MODELS, frozen_clock=True, chunk_delay_ms=1))
    usage = Usage(file_path=str(tmp_path / "events.jsonl"), spool_dir=str(tmp_path / "spool"))
    prx = Proxy(servers, [emu.url], selector=_selector(tmp_path), usage=usage)
    model = MODELS[0]
    only = {**_math(1), "model": "auto:only-0"}
    # A whole answer (`stream: false`) of 100k tokens: nothing of it reaches the client
    # before the client leaves.
    long = {**only, "options": {"num_predict": 100_000}}

    async def leave_early(session: aiohttp.ClientSession) -> None:
        left = emu.state.cancelled + 1
        task = asyncio.create_task(session.post(prx.url + "/api/chat", json=long))
        assert await wait_until(lambda: emu.state.active_streams > 0)
        task.cancel()
        assert await wait_until(lambda: emu.state.cancelled >= left)

    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                await leave_early(session)
            assert (await _ask(session, prx.url, only))[0] == model  # one completed answer
            row: dict[str, Any] = {}
            for _ in range(400):
                doc = await _explain(session, prx.url, _math(2))
                row = {r["model"]: r for r in doc["ranking"]}[model]
                if row["evidence"]["count"] >= outcome.COMPLETED:
                    break
                await asyncio.sleep(0.05)
    finally:
        prx.stop()
        emu.stop()
    # The completed answer alone (its events come in the order the requests ended).
    assert row["evidence"]["count"] == pytest.approx(outcome.COMPLETED)


async def test_requests_ollama_cannot_run_say_nothing_of_the_model_auto_chose(
    servers: ServerThread, tmp_path: Path
) -> None:
    """Ollama answers a 500 for a request it cannot run because of what the request says
    (a `format` that is no schema, an option of the wrong type), before any generation:
    any client can send them at will, so they count neither for nor against the model
    `auto` chose, or one key could drive every model's estimate down for the whole team.
    A runner that dies on its input still fails the model."""
    emu = Emulator(
        servers,
        EmulatorSettings(models=MODELS, frozen_clock=True, chunk_delay_ms=0.0, crash_on="CRASH"),
    )
    usage = Usage(file_path=str(tmp_path / "events.jsonl"), spool_dir=str(tmp_path / "spool"))
    prx = Proxy(servers, [emu.url], selector=_selector(tmp_path), usage=usage)
    refused = [
        ("/api/chat", {"format": 1}, 'invalid format: "1"; '),
        ("/api/chat", {"options": {"num_ctx": "x"}}, 'option "num_ctx" must be of type'),
        ("/api/generate", {"format": [1]}, 'invalid format: "[1]"; '),
    ]
    rounds = 6

    async def counted(session: aiohttp.ClientSession, sent: int) -> float:
        for _ in range(400):
            if (await _status(session, prx.url))["learning"]["observed_requests"] >= sent:
                break
            await asyncio.sleep(0.05)
        doc = await _explain(session, prx.url, _math(2))
        return float(sum(row["evidence"]["count"] for row in doc["ranking"]))

    try:
        async with aiohttp.ClientSession() as session:
            for i in range(rounds):
                for path, fields, said in refused:
                    body = {**_math(i), **fields}
                    if path == "/api/generate":
                        body = {"model": "auto", "stream": False, "prompt": f"Calculate {i} + 1."}
                        body.update(fields)
                    async with session.post(prx.url + path, json=body) as resp:
                        assert resp.status == 500
                        assert resp.headers["X-Autoroute-Model"] in MODELS
                        assert (await resp.json())["error"].startswith(said)
            await _ask(session, prx.url, _math(rounds))  # one completed answer
            sent = rounds * len(refused) + 1
            assert await counted(session, sent) == pytest.approx(outcome.COMPLETED)
            dies = _math(rounds + 1)
            dies["messages"][0]["content"] += " CRASH"  # the runner dies on it
            async with session.post(prx.url + "/api/chat", json=dies) as resp:
                assert resp.status == 500
            assert await counted(session, sent + 1) == pytest.approx(
                outcome.COMPLETED + outcome.FAILED
            )
    finally:
        prx.stop()
        emu.stop()
    # What the events say, read as training and the A/B report read them: the same.
    events = [orjson.loads(line) for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    assert len(events) == sent + 1
    count = sum(row[3] for row in evidence_from_events(events).rows())
    assert count == pytest.approx(outcome.COMPLETED + outcome.FAILED)


async def test_an_autocomplete_cut_short_by_the_next_keystroke_says_nothing_of_the_model(
    servers: ServerThread, tmp_path: Path
) -> None:
    """An editor's autocomplete (a generate with a suffix, fill-in-the-middle, or in raw
    mode on a prompt the editor templated itself) is cancelled at the next keystroke
    once its answer has begun, whatever the answer said: the user typed on. Counted as a
    failure, each key pressed would fail the model that completes code, and `auto` would
    learn to send code elsewhere. Another request cut short still counts against it."""
    coder = "qwen2.5-coder:7b"
    emu = Emulator(servers, EmulatorSettings(models=(coder,), frozen_clock=True, chunk_delay_ms=5))
    usage = Usage(file_path=str(tmp_path / "events.jsonl"), spool_dir=str(tmp_path / "spool"))
    prx = Proxy(servers, [emu.url], selector=_selector(tmp_path), usage=usage)
    prefix = "def fibonacci(n):\n    if n <"
    fim = {
        "model": "auto",
        "prompt": prefix,
        "suffix": "\n\nprint(fibonacci(10))\n",
        "options": {"num_predict": 200},
    }

    async def cut_short(session: aiohttp.ClientSession, path: str, body: Any) -> None:
        left = emu.state.cancelled + 1
        async with session.post(prx.url + path, json=body) as resp:
            assert resp.status == 200
            assert resp.headers["X-Autoroute-Model"] == coder
            await resp.content.readline()  # the answer has begun; then the next key
        assert await wait_until(lambda: emu.state.cancelled >= left)

    async def count(session: aiohttp.ClientSession, at_least: float) -> float:
        row: dict[str, Any] = {}
        for _ in range(400):
            row = {r["model"]: r for r in (await _explain(session, prx.url, fim))["ranking"]}
            if row[coder]["evidence"]["count"] >= at_least:
                break
            await asyncio.sleep(0.05)
        return float(row[coder]["evidence"]["count"])

    try:
        async with aiohttp.ClientSession() as session:
            for i in range(3):
                await cut_short(session, "/api/generate", {**fim, "prompt": prefix + " " * i})
            # Without a suffix, in raw mode on a prompt the editor templated itself.
            raw = {"model": "auto", "prompt": prefix, "raw": True, "options": fim["options"]}
            await cut_short(session, "/api/generate", raw)
            done = {**fim, "options": {}}  # to its end: done_reason "stop"
            async with session.post(prx.url + "/api/generate", json=done) as resp:
                assert resp.status == 200
                await resp.read()  # one completed answer
            assert await count(session, outcome.COMPLETED) == pytest.approx(outcome.COMPLETED)
            chat = {
                "model": "auto",
                "prompt": prefix,
                "options": {"num_predict": 200},
            }
            await cut_short(session, "/api/generate", chat)  # no suffix: a failure
            assert await count(session, outcome.COMPLETED + outcome.FAILED) == pytest.approx(
                outcome.COMPLETED + outcome.FAILED
            )
    finally:
        prx.stop()
        emu.stop()


async def test_a_store_down_is_one_warning_and_its_return_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Sync runs every `sync_seconds` (2 s): a store that stays down was a warning each
    time, 1800 an hour. The first failure warns, the same failure again is debug, and
    the store answering again says so once."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state file's directory should be")
    settings = Learning(state_file=str(blocker / "learning.json"))
    learner = Learner(settings, Usage(file_path=str(tmp_path / "events.jsonl")), Evidence())
    caplog.set_level("DEBUG", logger="autoroute.learning")
    for _ in range(3):
        learner.dirty = True
        await learner.sync()
    assert learner.error is not None
    blocker.unlink()
    await learner.sync()
    assert learner.error is None
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "DEBUG", "DEBUG", "INFO"]
    assert lines[0][1].startswith("learning: sync failed: ")
    assert lines[3][1] == "learning: sync works again"


async def test_an_unreadable_state_file_is_kept_aside_not_overwritten(tmp_path: Path) -> None:
    """A state_file that is not the learner's (a path mistyped onto another file, a
    file cut short) is rebuilt from the usage events; its bytes stay beside it rather
    than being overwritten."""
    state = tmp_path / "learning.json"
    original = b"not the learner's: an operator's file at a mistyped path\n"
    state.write_bytes(original)
    settings = Learning(state_file=str(state))
    learner = Learner(settings, Usage(file_path=str(tmp_path / "events.jsonl")), Evidence())
    await learner.start()
    assert learner.error is None and learner.rebuilt == 0
    assert orjson.loads(state.read_bytes())["rows"] == []
    assert (tmp_path / "learning.json.unreadable").read_bytes() == original

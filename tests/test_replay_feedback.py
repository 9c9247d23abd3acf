"""The replays' feedback: the proxy's online learner counts every rating; the
once-per-prompt variant counts an answer of a model to a prompt once, its latest
rating replacing the earlier ones in the evidence's sums; the safe variant counts as the
learner does and holds the router's choices to the choice without evidence."""

from __future__ import annotations

import pytest

from proxy.auto import AutoRouter
from proxy.config_selector import Profile
from selector_model import artifact
from training import fleet_replay, replay
from training.zeroeval_data import fleet

A, B = fleet(["llama3:8b", "qwen2:7b"])
PROFILES = {"best": Profile(cost_weight=0.0)}
MATHS = "What is 12 + 30? And 7 * 6?"


def _fed(factory: replay.FeedbackFactory, ratings: list[tuple[str, str, float]]) -> AutoRouter:
    """A router on A and B after `factory`'s hook is given `ratings` (prompt, model,
    score)."""

    def run() -> AutoRouter:
        router = replay.router_for(artifact.SHIPPED.parent, [A, B], PROFILES, 0)
        hook = factory(router)
        for text, model, score in ratings:
            hook(
                {"model": "auto:best", "messages": [{"role": "user", "content": text}]},
                model,
                score,
            )
        return router

    return replay.in_loop(run)


def _sums(router: AutoRouter, model: str) -> tuple[float, float]:
    """(successes, count) of `model` over every kind."""
    rows = [r for r in router.evidence.rows() if r[1] == model]
    return sum(r[2] for r in rows), sum(r[3] for r in rows)


def test_a_repeated_prompt_counts_once_its_latest_rating() -> None:
    a, b = A.ollama_name, B.ollama_name
    ratings = [
        (MATHS, a, 1.0),
        (MATHS, a, 0.0),
        (MATHS + " Then 2 * 3?", a, 1.0),
        (MATHS, b, 1.0),
        (MATHS, a, 0.0),
    ]
    once = _fed(replay.once_per_prompt_learner, ratings)
    assert _sums(once, a) == pytest.approx((1.0, 2.0))
    assert _sums(once, b) == pytest.approx((1.0, 1.0))
    every = _fed(replay.online_learner, ratings)
    assert _sums(every, a) == pytest.approx((2.0, 4.0))
    # The sums beyond the count are taken back with it: the repeated prompt's rows are
    # those its latest rating and the other prompt's leave alone.
    alone = _fed(replay.online_learner, [(MATHS + " Then 2 * 3?", a, 1.0), (MATHS, a, 0.0)])
    got, want = _rows(once, a), _rows(alone, a)
    assert got.keys() == want.keys()
    for kind, sums in want.items():
        assert got[kind] == pytest.approx(sums)


def _rows(router: AutoRouter, model: str) -> dict[str, list[float]]:
    """kind -> the evidence's sums of `model`."""
    return {kind: list(sums) for kind, m, *sums in router.evidence.rows() if m == model}


def test_the_dataset_replays_take_the_feedback_of_the_command_line() -> None:
    parsed = fleet_replay.parser("x", [A, B], limit=None)
    args = parsed.parse_args(["--feedback", "training.replay:once_per_prompt_learner"])
    loaded = fleet_replay.Shipped.load(args.artifact, args.feedback)
    assert loaded.feedback is replay.once_per_prompt_learner
    default = parsed.parse_args([])
    assert fleet_replay.Shipped.load(default.artifact, default.feedback).feedback is (
        replay.online_learner
    )
    with pytest.raises(SystemExit):
        parsed.parse_args(["--feedback", "training.replay:no_such_learner"])


def test_the_safe_variant_holds_the_choices_to_the_unlearned_one() -> None:
    ratings = [(MATHS, A.ollama_name, 0.0), (MATHS, B.ollama_name, 1.0)]
    safe = _fed(replay.safe_learner, ratings)
    assert safe.config.learning.baseline_discount == replay.SAFE_DISCOUNT > 0
    every = _fed(replay.online_learner, ratings)
    assert every.config.learning.baseline_discount == 0.0
    assert list(safe.evidence.rows()) == list(every.evidence.rows())

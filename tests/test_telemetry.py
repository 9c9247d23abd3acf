"""Expected seconds before and after traffic (`selector_model.telemetry`)."""

from __future__ import annotations

import pytest

from selector_model.features import Candidate
from selector_model.telemetry import THINKING_TOKENS, Telemetry


def test_a_mixture_of_experts_is_expected_to_decode_at_its_active_size() -> None:
    # Each generated token reads the active experts' weights, not all the model holds:
    # qwen3:30b-a3b decodes about as fast as a dense 3B model, not as a dense 30B one.
    moe = Candidate("qwen3:30b", params_b=30.5, active_params_b=3.3)
    dense_small = Candidate("qwen2.5:3b", params_b=3.3)
    dense_large = Candidate("qwen2.5:32b", params_b=30.5)
    telemetry = Telemetry()
    seconds = telemetry.expected_seconds_many(["a"] * 3, [moe, dense_small, dense_large], 100, 300)
    assert seconds[0] == pytest.approx(seconds[1])
    assert seconds[0] < seconds[2] / 5


def test_observed_rates_replace_the_prior() -> None:
    model = Candidate("qwen2.5:7b", params_b=7.6)
    telemetry = Telemetry()
    prior = telemetry.expected_seconds_many(["a"], [model], 0, 100)[0]
    # 100 tokens in 10 s: 10 tokens/s, far slower than the prior's.
    telemetry.observe("a", model, {"eval_count": 100, "eval_duration": 10_000_000_000})
    seen = telemetry.expected_seconds_many(["a"], [model], 0, 100)[0]
    assert seen == pytest.approx(10.0)
    assert seen > prior
    # Another backend keeps the prior.
    assert telemetry.expected_seconds_many(["b"], [model], 0, 100)[0] == pytest.approx(prior)


def test_observed_rates_count_for_the_same_lists_asked_again() -> None:
    # `auto` asks with the same lists while the registry keeps its candidates: each
    # one's prior is kept for them, its observed rates still read on every call.
    model = Candidate("qwen2.5:7b", params_b=7.6)
    backends, candidates = ["a"], [model]
    telemetry = Telemetry()
    prior = telemetry.expected_seconds_many(backends, candidates, 0, 100)[0]
    telemetry.observe("a", model, {"eval_count": 100, "eval_duration": 10_000_000_000})
    seen = telemetry.expected_seconds_many(backends, candidates, 0, 100)[0]
    assert seen == pytest.approx(10.0)
    assert seen > prior


def test_load_seconds_given_are_added_to_each_candidate() -> None:
    # `auto` hands over `proxy.memory`'s load terms, one per candidate, to be added
    # as it would add them itself.
    small, large = Candidate("qwen2.5:3b", params_b=3.3), Candidate("qwen2.5:32b", params_b=30.5)
    telemetry = Telemetry()
    backends, candidates = ["a", "a"], [small, large]
    alone = telemetry.expected_seconds_many(backends, candidates, 100, 300)
    loaded = telemetry.expected_seconds_many(backends, candidates, 100, 300, None, [0.0, 2.5])
    assert loaded == [alone[0] + 0.0, alone[1] + 2.5]
    with pytest.raises(ValueError):
        telemetry.expected_seconds_many(backends, candidates, 100, 300, None, [1.0])


def test_each_model_is_expected_to_write_answers_as_long_as_its_own() -> None:
    """A reasoning model's answers hold its thinking: once it has finished answers of
    2,000 tokens, it is expected to take 2,000 where a terse model of the same speed
    takes its own 100; an answer cut at the token limit says nothing of the length,
    and a request's own limit caps what is expected."""
    thinker = Candidate("deepseek-r1:8b", params_b=8.0)
    terse = Candidate("llama3.1:8b", params_b=8.0)
    telemetry = Telemetry()
    ten_per_second = {"eval_duration": 1_000_000_000, "done_reason": "stop"}
    telemetry.observe("a", thinker, {**ten_per_second, "eval_count": 2000})
    telemetry.observe("a", terse, {**ten_per_second, "eval_count": 100})
    telemetry.observe("a", terse, {**ten_per_second, "eval_count": 4000, "done_reason": "length"})
    rates = {(r["model"]): r for r in telemetry.snapshot()}
    assert rates["llama3.1:8b"]["answer_tokens"] == 100
    seconds = telemetry.expected_seconds_many(["a", "a"], [thinker, terse], 0, 256)
    thinker_tps = rates["deepseek-r1:8b"]["tokens_per_s"]
    terse_tps = rates["llama3.1:8b"]["tokens_per_s"]
    assert seconds == pytest.approx([2000 / thinker_tps, 100 / terse_tps], rel=1e-3)
    capped = telemetry.expected_seconds_many(["a", "a"], [thinker, terse], 0, 256, cap=500)
    assert capped == pytest.approx([500 / thinker_tps, 100 / terse_tps], rel=1e-3)
    # Until a model has finished an answer, the caller's length stands, capped alike.
    fresh = Candidate("qwen3:8b", params_b=8.2)
    unseen = telemetry.expected_seconds_many(["a"], [fresh], 0, 256)[0]
    assert telemetry.expected_seconds_many(["a"], [fresh], 0, 256, cap=128)[0] == pytest.approx(
        unseen / 2
    )


def test_a_model_that_thinks_is_taken_to_write_its_thinking_first() -> None:
    # Until it has finished an answer, a thinking model is taken to write THINKING_TOKENS
    # times the default (its thinking, then the answer), unless the request tells it
    # not to think; once it has finished one, its own mean length counts.
    plain = Candidate("plain:8b", params_b=8.0, capabilities=frozenset({"completion"}))
    thinker = Candidate(
        "thinker:8b", params_b=8.0, capabilities=frozenset({"completion", "thinking"})
    )
    backends, candidates = ["a", "a"], [plain, thinker]
    telemetry = Telemetry()
    alone, thinking = telemetry.expected_seconds_many(backends, candidates, 0, 100, thinking=True)
    assert thinking == pytest.approx(alone * THINKING_TOKENS)
    told_not_to = telemetry.expected_seconds_many(backends, candidates, 0, 100, thinking=False)
    assert told_not_to[1] == pytest.approx(alone)
    # 300 tokens (its thinking and answer) at 30 tokens/s: 10 s.
    telemetry.observe(
        "a", thinker, {"eval_count": 300, "eval_duration": 10_000_000_000, "done_reason": "stop"}
    )
    seen = telemetry.expected_seconds_many(backends, candidates, 0, 100, thinking=True)
    assert seen[1] == pytest.approx(10.0)

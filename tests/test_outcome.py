"""The one definition of success (`selector_model.outcome`), read alike by online
learning, training and the A/B report."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from proxy import learning
from selector_model import features, outcome, usage_event
from tests.test_training import _event
from training.data import usage_examples


def answered(
    rid: str, ts: str, prompt: str = "p1", user: str = "ann", **fields: Any
) -> dict[str, Any]:
    return {
        "request_id": rid,
        "ts": ts,
        "client": {"user": user, "api_key_id": None},
        "prompt_sha256": prompt,
        "outcome": {
            "status": 200,
            "error": None,
            "done_reason": "stop",
            "cancelled": False,
            **fields,
        },
        "rating": None,
    }


def graded(event: dict[str, Any], retried: bool = False) -> outcome.Result:
    result = outcome.of_event(event, retried)
    assert result is not None
    return result


def test_each_signal_and_a_rating_winning_over_them() -> None:
    base = answered("r", "2026-01-01T00:00:00Z")
    assert outcome.of_event(base) == outcome.Result(1.0, outcome.COMPLETED, "completed")
    assert outcome.COMPLETED < outcome.RATED  # silence says less than a rating
    cut = answered("r", "2026-01-01T00:00:00Z", done_reason="length")
    assert outcome.of_event(cut) == outcome.Result(
        outcome.TRUNCATED_VALUE, outcome.TRUNCATED_WEIGHT, "truncated"
    )
    assert graded(answered("r", "x", error="upstream closed")).source == "error"
    assert graded(answered("r", "x", status=502)).value == 0.0
    assert graded(answered("r", "x", cancelled=True)).source == "cancelled"
    assert outcome.of_event(answered("r", "x", status=400)) is None  # no model ran
    # The client left before the answer began (no status): it judged nothing of it.
    assert outcome.of_event(answered("r", "x", status=0, cancelled=True)) is None
    # A thumbs-up on a cancelled answer, a thumbs-down on a completed one: the rating.
    assert graded({**answered("r", "x", cancelled=True), "rating": 1}).value == 1.0
    assert outcome.of_event({**base, "rating": 0}) == outcome.Result(0.0, outcome.RATED, "rating")
    assert graded({**base, "rating": 0.7}).value == 0.7
    assert graded({**base, "rating": 5}).value == 1.0  # clamped into [0, 1]
    assert graded(base, retried=True).source == "retried"
    assert graded({**base, "rating": 1}, retried=True).value == 1.0


# Ollama's 500s for a request it cannot run because of what the request says (its
# messages as its sources write them), and for a runner or model that failed.
REFUSED_500S = [
    'invalid format: "1"; expected "json" or a valid JSON Schema object',  # llm/llama_server.go
    'invalid format: "[1,\\"x\\"]"; expected "json" or a valid JSON Schema object',
    'option "num_ctx" must be of type integer',  # api/types.go Options.FromMap
    'option "stop" must be of an array of strings',
    'option "a\\"b" must be of type boolean',
    'template: :1: unexpected "}" in operand',  # text/template, the request's template
    'template: :1:12: executing "" at <.Messages>: range can\'t iterate over 1',
    # llm/llama_server.go (ApplyChatTemplate): the model's chat template, run by
    # llama-server, refusing the request's messages.
    "llama-server template error: Conversation roles must alternate user/assistant/user/",
    "llama-server template error: map[message:System role not supported type:server_error]",
]
FAILED_500S = [
    "llama runner process has terminated: exit status 2",
    "model runner has unexpectedly stopped, this may be due to resource limitations or an "
    "internal error, check ollama server logs for details",
    "llama-server process has terminated: signal: killed",
    "llama-server reported out-of-memory during startup: cudaMalloc failed",
    "timed out waiting for llama-server to start - ",
    "an error was encountered while running the model: GGML_ASSERT",
    "unexpected server status: 3",
]


def test_an_error_ollama_gives_a_request_it_cannot_run_is_no_outcome() -> None:
    """A 500 Ollama answers for what the request itself says (a `format` that is no
    schema, an option of the wrong type, a template that does not parse or run) says
    nothing of the model, as a 4xx does: any client can send one at will. A runner that
    crashed, stopped or ran out of memory still fails the model, at the head or in a
    stream that began."""
    for error in REFUSED_500S:
        for status in (500, 200):
            assert outcome.of_event(answered("r", "x", status=status, error=error)) is None
        assert outcome.refused(error), error
        # Read alike by online learning, which keeps one result per answer's shape.
        assert learning._implicit({"status": 500, "error": error}, False) == (None, None)
    failed = outcome.Result(0.0, outcome.FAILED, "error")
    for error in FAILED_500S:
        assert not outcome.refused(error), error
        for status in (500, 200):
            assert outcome.of_event(answered("r", "x", status=status, error=error)) == failed
        assert learning._implicit({"status": 500, "error": error}, False)[0] == failed
    assert graded(answered("r", "x", status=500, error=None)) == failed  # said nothing
    # A rating still wins: the client judged what it got.
    refused = answered("r", "x", status=500, error=REFUSED_500S[0])
    assert graded({**refused, "rating": 0}) == outcome.Result(0.0, outcome.RATED, "rating")
    # Training makes no example of it, and one of the runner that died.
    died = _event("Why is the sky blue?", "llama3.1:8b", 8.0, status=500, error=FAILED_500S[0])
    cannot = _event("What is 2 + 2?", "llama3.1:8b", 8.0, status=500, error=REFUSED_500S[2])
    examples, stats = usage_examples([usage_event.read(e) for e in (died, cannot)])
    assert (len(examples), stats.used, stats.skipped_unanswered) == (1, 1, 1)


def test_an_autocomplete_the_client_cancelled_has_no_outcome() -> None:
    """Editors cancel an autocomplete (a suffix, or a raw prompt) at the next keystroke,
    whatever it said: read from the request's features, online and in training alike."""
    body = {"model": "auto", "prompt": "def f(", "suffix": "\n    return 1\n"}
    fim = {
        "schema_version": features.SCHEMA_VERSION,
        "request": features.request_features("/api/generate", body),
    }
    cancelled = {**answered("r", "x", cancelled=True), "features": fim}
    assert outcome.autocompletes(cancelled)
    assert outcome.of_event(cancelled) is None
    assert graded({**cancelled, "rating": 0}).value == 0.0  # a rating still counts
    assert graded({**answered("r", "x", error="cut", cancelled=True), "features": fim}).source == (
        "error"
    )
    assert graded({**answered("r", "x"), "features": fim}).source == "completed"
    # A raw prompt the editor templated itself (Zed, Continue for a model whose template
    # reads no suffix): its autocomplete too.
    del body["suffix"]
    raw = {**fim, "request": features.request_features("/api/generate", {**body, "raw": True})}
    assert outcome.of_event({**cancelled, "features": raw}) is None
    # Neither, or features of another schema (not read): the cancellation fails.
    chat = {**fim, "request": features.request_features("/api/generate", body)}
    assert graded({**cancelled, "features": chat}).source == "cancelled"
    older = {**fim, "schema_version": features.SCHEMA_VERSION - 1}
    assert graded({**cancelled, "features": older}).source == "cancelled"


def test_the_same_prompt_again_soon_from_the_same_user_fails_the_first() -> None:
    window = outcome.RETRY_WINDOW_SECONDS
    assert window == 120.0
    events = [
        answered("a1", "2026-01-01T00:00:00Z"),
        answered("a2", "2026-01-01T00:01:30Z"),  # 90 s later: a1 failed
        answered("a3", "2026-01-01T00:04:00Z"),  # 150 s after a2: a2 stands
        answered("b1", "2026-01-01T00:00:10Z", user="bob"),  # another user: no retry
        answered("c1", "2026-01-01T00:00:20Z", prompt="p2"),  # another prompt
    ]
    assert outcome.retried_ids(events) == {"a1"}
    # Sent again to another model name: a comparison; while the first was still
    # answering (it took 100 s): a load test's copy, not a reaction to the answer.
    compared = [events[0], {**events[1], "requested_model": "auto:best"}]
    assert outcome.retried_ids(compared) == set()
    slow = {**events[0], "outcome": {**events[0]["outcome"], "total_ms": 100_000.0}}
    assert outcome.retried_ids([slow, events[1]]) == set()
    ended = {**events[0], "outcome": {**events[0]["outcome"], "total_ms": 60_000.0}}
    assert outcome.retried_ids([ended, events[1]]) == {"a1"}  # 30 s after its end
    graded = outcome.grade(events)
    assert [g.source if g else None for g in graded] == ["retried", *["completed"] * 4]
    # Training reads it the same way.
    train = [_event("same", "llama3.1:8b", 8.0) for _ in range(2)]
    for i, (event, ts) in enumerate(zip(train, ("00:00:00", "00:00:30"), strict=True)):
        event.update(
            request_id=f"t{i}",
            ts=f"2026-01-01T{ts}Z",
            prompt_sha256="h",
            client={"user": "ann"},
        )
    unanswered = {**_event("x", "llama3.1:8b", 8.0), "outcome": {"status": 404}}
    examples, stats = usage_examples([usage_event.read(e) for e in [*train, unanswered]])
    assert [ex.label for ex in examples] == [0.0, 1.0]
    assert [ex.weight for ex in examples] == [outcome.FAILED, outcome.COMPLETED]
    assert stats.skipped_unanswered == 1


def test_a_completed_answer_tells_the_online_estimate_only_what_was_expected() -> None:
    completed = outcome.of_event({"outcome": {"status": 200, "done_reason": "stop"}})
    assert completed is not None and completed.value == 1.0  # training's weak success
    assert outcome.against(completed, 0.3) == 0.3
    failed = outcome.of_event({"outcome": {"status": 500}})
    assert failed is not None and outcome.against(failed, 0.3) == 0.0
    assert outcome.against(outcome.rated(0.8), 0.3) == 0.8


def test_a_prompt_sent_again_after_the_user_moved_on_is_no_retry() -> None:
    """A person retries an answer before moving on to other questions; a benchmark that
    goes over its prompts again (a pass of an evaluation, a feedback replay) sends each
    one again after every other. Its copies, each sent within the window of the last
    one's end but after two other prompts of the same user, fail nothing; one other
    prompt in between (another conversation, a load test of one prompt beside it)
    leaves a retry a retry."""
    prompts = ("a", "b", "c")
    passes = [
        answered(f"{q}{n}", _at(10.0 * n + i), prompt=q, total_ms=500.0)
        for n in range(3)
        for i, q in enumerate(prompts)
    ]
    assert outcome.retried_ids(passes) == set()
    assert outcome.retried_ids(passes[::-1]) == set()
    asked_between = [
        answered("a1", _at(0.0), prompt="a", total_ms=500.0),
        answered("b1", _at(5.0), prompt="b", total_ms=500.0),
        answered("a2", _at(10.0), prompt="a", total_ms=500.0),
    ]
    assert outcome.retried_ids(asked_between) == {"a1"}
    # Another user's prompts in between are not this user's moving on.
    others = [
        answered(f"{q}{n}", _at(10.0 * n + i), prompt=q, user="bob", total_ms=500.0)
        for n in range(1)
        for i, q in enumerate(("x", "y", "z"))
    ]
    retried = [asked_between[0], *others, {**asked_between[2], "ts": _at(12.0)}]
    assert outcome.retried_ids(retried) == {"a1"}


def test_a_retry_is_the_same_keys_not_another_key_under_the_same_name() -> None:
    """The same user is the same key, by its hash (`api_key_hash`): a key issued under a
    revoked key's name, or another key whose client sends the same X-Autoroute-User,
    sending a prompt again fails none of that key's answers. Events from before keys had
    hashes go by the name, as they were then."""

    def sent(rid: str, ts: str, name: str, key_hash: str | None, user: str | None = None) -> Any:
        event = answered(rid, ts)
        event["client"] = {"user": user, "api_key_id": name, "api_key_hash": key_hash}
        return event

    first, again = "2026-01-01T00:00:00Z", "2026-01-01T00:00:30Z"
    successor = [sent("a1", first, "alice", "1" * 16), sent("a2", again, "alice", "2" * 16)]
    assert outcome.retried_ids(successor) == set()
    same_key = [sent("a1", first, "alice", "1" * 16), sent("a2", again, "alice", "1" * 16)]
    assert outcome.retried_ids(same_key) == {"a1"}
    by_user = [
        sent("a1", first, "alice", "1" * 16, "ann"),
        sent("a2", again, "bob", "2" * 16, "ann"),
    ]
    assert outcome.retried_ids(by_user) == set()
    own_user = [
        sent("a1", first, "alice", "1" * 16, "ann"),
        sent("a2", again, "alice", "1" * 16, "ann"),
    ]
    assert outcome.retried_ids(own_user) == {"a1"}
    before_hashes = [sent("a1", first, "alice", None), sent("a2", again, "alice", None)]
    assert outcome.retried_ids(before_hashes) == {"a1"}


def _at(second: float) -> str:
    """The RFC 3339 time `second` seconds into 2026, as usage events write `ts`."""
    return (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=second)).isoformat()


def sends(prefix: str, times: list[tuple[float, float]], **fields: Any) -> list[dict[str, Any]]:
    """Copies of one prompt from one user, each (arrival, seconds it took)."""
    return [
        answered(f"{prefix}{i}", _at(sent), total_ms=took * 1000.0, **fields)
        for i, (sent, took) in enumerate(times, 1)
    ]


def closed_loop(users: int, rounds: int, seed: int) -> list[tuple[float, float]]:
    """A load generator's virtual users, each sending the same prompt again 10 ms after
    its last answer ended, answers taking from 0.2 to 6 s."""
    rng = random.Random(seed)
    times = []
    for _ in range(users):
        sent = rng.uniform(0.0, 1.0)
        for _ in range(rounds):
            took = rng.uniform(0.2, 6.0)
            times.append((sent, took))
            sent += took + 0.01
    return sorted(times)


def test_the_same_prompt_sent_again_and_again_is_a_repetition_not_retries() -> None:
    """A load test (k6, a benchmark) sends one prompt again and again from one key and
    user, each copy right after an earlier one ended: counted as retries, every answer
    `auto` gave would fail. A chain of more copies than a person retries is a
    repetition: none of it is retried."""
    sequential = sends("s", closed_loop(1, 10, seed=1))
    assert outcome.retried_ids(sequential) == set()
    assert {g.source for g in outcome.grade(sequential) if g} == {"completed"}
    # 32 streams at once, each sending again as its answer ends.
    concurrent = sends("c", closed_loop(32, 5, seed=2))
    assert outcome.retried_ids(concurrent) == set()
    # A person retries once or twice: each copy but the last failed...
    twice = sends("t", [(0.0, 5.0), (30.0, 5.0), (60.0, 5.0)])
    assert outcome.retried_ids(twice) == {"t1", "t2"}
    # ... but a fourth send within the window makes the chain a repetition.
    assert outcome.retried_ids([*twice, *sends("u", [(90.0, 5.0)])]) == set()
    # Sent again after the window: a new chain, which retries nothing of the last.
    later = sends("l", [(300.0, 5.0), (320.0, 5.0)])
    assert outcome.retried_ids([*twice, *later]) == {"t1", "t2", "l1"}
    # A copy that arrives while another is in flight is concurrent, whichever of the
    # two ends last: here the long first answer (100 s) outlives the one it follows.
    overlapped = sends("o", [(0.0, 100.0), (5.0, 5.0), (20.0, 10.0)])
    assert outcome.retried_ids(overlapped) == set()
    # Once both ended, a copy retries the one that ended last.
    after_both = sends("b", [(0.0, 10.0), (5.0, 15.0), (40.0, 5.0)])
    assert outcome.retried_ids(after_both) == {"b2"}
    # In whatever order the events come: their order in a file or a table is not when
    # they arrived or ended.
    assert outcome.retried_ids(reversed(twice)) == {"t1", "t2"}
    assert outcome.retried_ids(sequential[::-1]) == set()


def test_an_answer_a_cloud_provider_gave_is_no_example_of_the_model_auto_chose() -> None:
    """Where `auto`'s choice failed and a cloud provider answered in its place, the
    usage event keeps the chosen model's candidate and the cloud's outcome: training
    makes no example of it, as the learner counts nothing of it; the same answer given
    by the local model is one."""
    local = _event("Why is the sky blue?", "llama3.1:8b", 8.0)
    cloud = {**local, "request_id": "cloud", "provider": "openai", "backend": "cloud:openai"}
    examples, stats = usage_examples([usage_event.read(e) for e in (local, cloud)])
    assert (len(examples), stats.used, stats.skipped_unanswered) == (1, 1, 1)


def test_an_answer_that_reached_no_backend_has_no_outcome() -> None:
    """The proxy's own answer where the request reached no backend (`unreached`: none
    of its backends could be connected to): no model ran, so it has no outcome, as a
    refusal has none, whatever rating it got; training skips it. A backend that had the
    request and failed (a 5xx, garbage, silence, a stream cut off) still fails it, and
    an event written before events said so reads as one that reached a backend."""
    down = answered("u", "x", status=503, error="no healthy backend: gpu: refused")
    unreached = {**down, "outcome": {**down["outcome"], "unreached": True}}
    assert outcome.implicit(unreached["outcome"]) is None
    assert outcome.of_event(unreached) is None
    assert outcome.of_event({**unreached, "rating": 0.0}) is None
    assert outcome.no_evidence(unreached) and not outcome.no_evidence(down)
    assert graded(down).source == "error"
    assert usage_event.read(down).outcome.unreached is False
    assert usage_event.read(unreached).outcome.unreached is True
    assert outcome.failed(503, down["outcome"]["error"])  # the request failed all the same

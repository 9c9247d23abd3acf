"""Reading the end of a /api/generate context from an answer's last bytes, and the
memory of which model wrote it (`proxy.continuations`)."""

from __future__ import annotations

import orjson

from proxy.continuations import ENDING, Continuations, answered_ending, sent_ending


def final_line(context: list[int]) -> bytes:
    # json.Marshal of Ollama's GenerateResponse: `context`, then the metrics.
    return orjson.dumps(
        {
            "model": "m",
            "response": '],"total_duration": in text',
            "done": True,
            "context": context,
            "total_duration": 5,
            "eval_count": 2,
        }
    )


def test_the_ending_an_answer_returns_is_the_one_its_client_sends_back() -> None:
    context = list(range(1000, 1040))
    ending = answered_ending(final_line(context))
    assert ending == sent_ending(context) == ",".join(map(str, context[-ENDING:]))
    assert answered_ending(final_line([7, 8])) == sent_ending([7, 8]) == "7,8"
    # A tail that starts inside the array: no partial number is taken.
    assert answered_ending(b'345,6,7],"total_duration":1}') == "6,7"
    assert answered_ending(b'{"done":true,"total_duration":1}') is None
    assert answered_ending(final_line([])) is None
    for sent in (None, [], "1,2", [1, "2"], [True, False], {"a": 1}):
        assert sent_ending(sent) is None


def test_the_least_recently_used_context_is_forgotten_first() -> None:
    memory = Continuations(size=2)
    memory.remember("1,2", "a")
    memory.remember("3,4", "b")
    memory.remember("1,2", "a")
    memory.remember("5,6", "c")
    assert memory.model_of([1, 2]) == "a"
    assert memory.model_of([3, 4]) is None
    assert memory.model_of([9, 5, 6]) is None  # another ending
    assert memory.model_of([5, 6]) == "c"

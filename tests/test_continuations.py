"""Reading the end of a /api/generate context from an answer's last bytes, and the
memory of which model wrote it (`proxy.continuations`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.auth import hash_key
from proxy.config_services import ApiKey, Auth
from proxy.continuations import ENDING, Continuations, answered_ending, sent_ending
from tests.support import Emulator, Proxy, ServerThread, bearer

# What `answered_ending` reads, as a pattern: up to ENDING ids from a separator (`[` or
# `,`) to the array's end, the leftmost such start in the window it looks at.
_END = re.compile(rb"[\[,]((?:\d+,){0,%d}\d+)\],\"total_duration\":" % (ENDING - 1))


def by_pattern(tail: bytes) -> str | None:
    at = tail.rfind(b'],"total_duration":')
    if at < 0:
        return None
    found = _END.search(tail, max(0, at - 24 * ENDING), at + 19)
    return found.group(1).decode() if found else None


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
    memory.remember_ending("ann", "1,2", "a")
    memory.remember_ending("ann", "3,4", "b")
    memory.remember_ending("ann", "1,2", "a")
    memory.remember_ending("ann", "5,6", "c")
    assert memory.model_of("ann", [1, 2]) == "a"
    assert memory.model_of("ann", [3, 4]) is None
    assert memory.model_of("ann", [9, 5, 6]) is None  # another ending
    assert memory.model_of("ann", [5, 6]) == "c"
    assert memory.model_of("bob", [5, 6]) is None  # another client's
    assert memory.model_of("ann", None) is None


@given(
    st.lists(
        st.one_of(
            st.sampled_from([b"[", b",", b"]", b'"', b"7", b"12", b"x", b"\xd9\xa3"]),
            st.integers(0, 10**12).map(lambda i: str(i).encode()),
        ),
        max_size=60,
    ),
    st.booleans(),
)
def test_the_ending_read_is_what_the_pattern_finds(pieces: list[bytes], ends: bool) -> None:
    """Any bytes, the array's end or not: the same ending as the pattern, or None."""
    tail = b"".join(pieces) + (b'],"total_duration":1}' if ends else b"")
    assert answered_ending(tail) == by_pattern(tail)


def test_the_ending_of_a_long_context_is_its_last_ids() -> None:
    context = [i * 7919 % 150_000 for i in range(2000)]
    assert answered_ending(final_line(context)) == by_pattern(final_line(context))
    assert answered_ending(final_line(context)) == sent_ending(context)


ANN_KEY, BOB_KEY = "k-continuations-ann", "k-continuations-bob"


@pytest.fixture
def keyed_proxy(servers: ServerThread, emulator: Emulator) -> Iterator[Proxy]:
    keys = (
        ApiKey(sha256=hash_key(ANN_KEY), name="ann"),
        ApiKey(sha256=hash_key(BOB_KEY), name="bob"),
    )
    prx = Proxy(servers, [emulator.url], auth=Auth(keys=keys))
    yield prx
    prx.stop()


async def test_a_context_another_keys_client_sends_back_is_routed_as_any_request(
    keyed_proxy: Proxy,
) -> None:
    """Which model wrote a context is its client's to know, within its API key, as a
    chat conversation's is: a client of another key sending back the same context (one
    it can make itself, running the same prompt at temperature 0 on a named model) is
    told neither that anyone had that conversation through `auto` nor with which
    model, by the answer's reason or by explain."""
    prompt = {"model": "auto", "prompt": "Who earns what in accounting?", "stream": False}
    async with aiohttp.ClientSession() as session:

        async def post(path: str, key: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            async with session.post(keyed_proxy.url + path, json=body, headers=bearer(key)) as r:
                assert r.status == 200, await r.read()
                return r.headers.get("X-Autoroute-Reason", ""), orjson.loads(await r.read())

        _, first = await post("/api/generate", ANN_KEY, {**prompt, "options": {"temperature": 0}})
        again = {**prompt, "prompt": "And then?", "context": first["context"]}
        for key, continued in ((BOB_KEY, False), (ANN_KEY, True)):
            _, explained = await post("/api/autoroute/explain", key, again)
            assert (explained["reason"] == "context") is continued, (key, explained["reason"])
            reason, answer = await post("/api/generate", key, again)
            assert (reason == "context") is continued, (key, reason)
            if continued:
                assert answer["model"] == first["model"]

"""A chat conversation `auto` chose the model of goes on where its runner holds it
(`proxy.continuations.Conversations`): the next turn credits the model that answered
the last one the seconds of the part of the prompt it holds, while it is loaded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import ollama
import pytest

from proxy.auth import hash_key
from proxy.config_services import ApiKey, Auth
from proxy.config_serving import Health
from proxy.continuations import Conversations, conversation
from tests.support import Emulator, Proxy, ServerThread, bearer

FIRST = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me a long story about a lighthouse. " * 400},
]


def turn(history: list[dict[str, Any]], answer: str, ask: str) -> list[dict[str, Any]]:
    return [*history, {"role": "assistant", "content": answer}, {"role": "user", "content": ask}]


def test_the_next_turn_names_the_conversation_its_last_answer_continued() -> None:
    first = conversation("ann", "/api/chat", FIRST)
    assert first is not None and first.before is None
    second = conversation("ann", "/api/chat", turn(FIRST, "Once upon a time.", "And then?"))
    assert second is not None and second.before == first.whole
    # Nearly all of the second turn's bytes are the first's.
    assert 0.95 < second.share < 1.0
    # A tool call's results continue the turn that asked for them.
    called = [
        *FIRST,
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]},
        {"role": "tool", "content": "42"},
    ]
    after_tool = conversation("ann", "/api/chat", called)
    assert after_tool is not None and after_tool.before == first.whole
    # Another client's, or another route's, same conversation is not this one.
    for scope, path in (("bob", "/api/chat"), ("ann", "/v1/chat/completions")):
        other = conversation(scope, path, turn(FIRST, "Once upon a time.", "And then?"))
        assert other is not None and other.before != first.whole
    # What is no conversation: another route, no list, a message that is no object, a
    # number no serializer writes.
    assert conversation("ann", "/api/generate", FIRST) is None
    assert conversation("ann", "/api/chat", "hello") is None
    assert conversation("ann", "/api/chat", []) is None
    assert conversation("ann", "/api/chat", ["hello"]) is None
    assert conversation("ann", "/api/chat", [{"role": "user", "content": 2**70}]) is None


def test_a_conversation_with_a_picture_goes_on_as_any() -> None:
    """A message of megabytes (a picture for a vision model) is digested otherwise than
    a short one (`continuations._digest`): its conversation goes on all the same, and
    is no other picture's."""
    picture = [{"role": "user", "content": "What is this?", "images": ["QUJD" * 50_000]}]
    first = conversation("ann", "/api/chat", picture)
    second = conversation("ann", "/api/chat", turn(picture, "A lighthouse.", "Whose?"))
    assert first is not None and second is not None and second.before == first.whole
    other = [{**picture[0], "images": ["QUJE" * 50_000]}]
    another = conversation("ann", "/api/chat", turn(other, "A lighthouse.", "Whose?"))
    assert another is not None and another.before != first.whole


def test_the_least_recently_answered_conversation_is_forgotten_first() -> None:
    memory = Conversations(size=2)
    talks = []
    for ask in ("a", "b", "c"):
        talk = conversation("ann", "/api/chat", [{"role": "user", "content": ask}])
        assert talk is not None
        talks.append(talk)
    memory.remember(talks[0].whole, "m0")
    memory.remember(talks[1].whole, "m1")
    memory.remember(talks[0].whole, "m0")
    memory.remember(talks[2].whole, "m2")

    def next_of(ask: str) -> str | None:
        talk = conversation("ann", "/api/chat", turn([{"role": "user", "content": ask}], "x", "y"))
        assert talk is not None
        return memory.model_of(talk)

    assert (next_of("a"), next_of("b"), next_of("c")) == ("m0", None, "m2")


@pytest.fixture
def auto_proxy(servers: ServerThread, emulator: Emulator) -> Iterator[Proxy]:
    # Refreshed often: a model that answered is seen loaded soon after.
    prx = Proxy(servers, [emulator.url], health=Health(interval_seconds=0.2))
    yield prx
    prx.stop()


async def explain(proxy: Proxy, body: dict[str, Any], user: str, key: str = "") -> dict[str, Any]:
    headers = {"X-Autoroute-User": user, **(bearer(key) if key else {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(proxy.url + "/api/autoroute/explain", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_the_model_that_answered_a_turn_is_credited_the_prompt_it_holds(
    auto_proxy: Proxy,
) -> None:
    """After `auto` answered a chat, the next turn of that client's conversation is
    cheaper on the model that answered, which holds all of it but the new turn, by the
    seconds that part takes; no other model's, nor another client's same turn."""
    client = ollama.AsyncClient(host=auto_proxy.url, headers={"X-Autoroute-User": "ann"})
    first = await client.chat(model="auto", messages=FIRST, options={"num_predict": 8})
    body = {"model": "auto", "messages": turn(FIRST, first.message.content or "", "And then?")}
    held: dict[str, Any] = {}
    for _ in range(100):  # until a refresh has seen the model loaded
        held = await explain(auto_proxy, body, "ann")
        if held["held_by"]:
            break
        await asyncio.sleep(0.1)
    assert held["held_by"] == first.model
    # The first answer's outcome (its `done_reason` "length") is learned in the
    # background, which moves every candidate's P: the two explains are compared where
    # nothing moved between them, every other model's utility the same in both.
    for _ in range(100):
        fresh = await explain(auto_proxy, body, "bob")
        others = {c["model"]: c["utility"] for c in fresh["ranking"]}
        others.pop(first.model)
        if all(others[c["model"]] == c["utility"] for c in held["ranking"] if c["model"] in others):
            break
        held = await explain(auto_proxy, body, "ann")
    assert fresh["held_by"] is None
    by_name = {c["model"]: c for c in fresh["ranking"]}
    for candidate in held["ranking"]:
        was = by_name[candidate["model"]]
        if candidate["model"] == first.model:
            assert candidate["load_seconds"] == 0
            assert 0 < candidate["expected_seconds"] < was["expected_seconds"] / 2
            assert candidate["utility"] > was["utility"]
        else:
            assert candidate["expected_seconds"] == was["expected_seconds"]
            assert candidate["utility"] == was["utility"]
    # The turn answered, whichever model `auto` took, the next one is credited to it.
    second = await client.chat(**body, options={"num_predict": 8})
    body = {"model": "auto", "messages": turn(body["messages"], second.message.content or "", "?")}
    for _ in range(100):
        third = await explain(auto_proxy, body, "ann")
        if third["held_by"] == second.model:
            break
        await asyncio.sleep(0.1)
    assert third["held_by"] == second.model


ANN_KEY, BOB_KEY = "k-conversations-ann", "k-conversations-bob"


@pytest.fixture
def keyed_proxy(servers: ServerThread, emulator: Emulator) -> Iterator[Proxy]:
    keys = (
        ApiKey(sha256=hash_key(ANN_KEY), name="ann"),
        ApiKey(sha256=hash_key(BOB_KEY), name="bob"),
    )
    prx = Proxy(servers, [emulator.url], health=Health(interval_seconds=0.2), auth=Auth(keys=keys))
    yield prx
    prx.stop()


async def test_another_keys_client_naming_the_same_user_continues_none_of_its_conversations(
    keyed_proxy: Proxy,
) -> None:
    """X-Autoroute-User is the client's word: a client of another API key that names the
    same user (or comes from the same address) is not credited what the first key's
    conversations hold, nor told in explain which model answered them."""
    client = ollama.AsyncClient(
        host=keyed_proxy.url, headers={"X-Autoroute-User": "ann", **bearer(ANN_KEY)}
    )
    first = await client.chat(model="auto", messages=FIRST, options={"num_predict": 8})
    body = {"model": "auto", "messages": turn(FIRST, first.message.content or "", "And then?")}
    held: dict[str, Any] = {}
    for _ in range(100):  # until a refresh has seen the model loaded
        held = await explain(keyed_proxy, body, "ann", ANN_KEY)
        if held["held_by"]:
            break
        await asyncio.sleep(0.1)
    assert held["held_by"] == first.model
    other = await explain(keyed_proxy, body, "ann", BOB_KEY)
    assert other["held_by"] is None
    by_name = {c["model"]: c for c in other["ranking"]}
    assert by_name[first.model]["expected_seconds"] > next(
        c["expected_seconds"] for c in held["ranking"] if c["model"] == first.model
    )

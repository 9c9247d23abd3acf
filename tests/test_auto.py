"""`model: auto` without an artifact: hard filters, profiles, the fallback heuristic,
headers, explain, and `auto` as editors see it in the model lists."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import ollama
import openai
import orjson
import pytest

from proxy import learning
from proxy.app import APP_KEY
from proxy.auto import EMBEDDING_ONLY, AutoError, AutoRouter, profile_of
from proxy.auto_routes import AutoRoutes
from proxy.backends import BackendPool
from proxy.config import Config
from proxy.config_selector import ModelEntry, Profile, Selector
from proxy.config_services import Usage
from proxy.config_serving import Backend, Health
from proxy.outcome import MAX_ERROR_CHARS
from proxy.registry import ModelInfo, Registry, model_info
from proxy.routes import RANKED_PATHS
from selector_model import outcome
from selector_model.catalog import AREAS, Catalog
from selector_model.policy import SWITCH_Z
from selector_model.profiling import store as profile_store
from tests.conftest import FROZEN
from tests.support import (
    PIXEL_PNG,
    UNLISTED_CAPABILITIES_VERSION,
    Emulator,
    Proxy,
    ServerThread,
    error_text,
    file_usage,
    free_port,
)
from tests.usage_services import events_of

SHORT = {"num_predict": 4}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def selector(tmp_path: Path, **overrides: Any) -> Selector:
    profiles = {
        "balanced": Profile(cost_weight=0.02),
        "best": Profile(cost_weight=0.0),
        "fast": Profile(cost_weight=1.0),
        "coders": Profile(cost_weight=0.0, allow=("qwen2.5-coder:7b", "codegemma:7b")),
        "nomixtral": Profile(cost_weight=0.0, deny=("mixtral:8x7b",)),
        "thrifty": Profile(cost_weight=0.0, tolerance=0.1),
        "careful": Profile(cost_weight=1.0, max_loss=0.05),
    }
    settings: dict[str, Any] = {
        "artifact": str(tmp_path / "missing.onnx"),
        "profiles": profiles,
        "embedding_model": "nomic-embed-text",
        **overrides,
    }
    return Selector(**settings)


@pytest.fixture
def auto_proxy(servers: ServerThread, emulator: Emulator, tmp_path: Path) -> Iterator[Proxy]:
    prx = Proxy(servers, [emulator.url], selector=selector(tmp_path))
    yield prx
    prx.stop()


async def explain(proxy: Proxy, body: dict[str, Any], path: str = "") -> tuple[int, dict[str, Any]]:
    """Explain's status and answer for `body` sent on `path` ("": as explain guesses)."""
    params = {"path": path} if path else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(proxy.url + "/api/autoroute/explain", params=params, json=body) as resp,
    ):
        return resp.status, await resp.json()


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hello there"}], **extra}


@pytest.mark.parametrize(
    "path", ["/api/embed", "/v1/embeddings", "/v1/audio/transcriptions", "/api/pull", "/nope"]
)
async def test_explain_ranks_only_for_a_route_auto_ranks_on(auto_proxy: Proxy, path: str) -> None:
    """`?path=` picks the route whose rules explain applies; on a route where `auto`
    ranks nothing (embeddings take `selector.embedding_model`, transcriptions a named
    model, the rest no model) a chat model's ranking would name a model auto never
    sends there: a 400 that says so instead, as the route itself answers `auto`."""
    body = {**chat("auto"), "input": "Hello there"}
    status, doc = await explain(auto_proxy, body, path)
    assert status == 400, doc
    assert path in doc["error"]


async def test_fallback_without_artifact_is_visible(auto_proxy: Proxy) -> None:
    status, ranking = await explain(auto_proxy, chat("auto"))
    assert status == 200
    assert ranking["reason"] == "fallback" and ranking["artifact_version"] is None
    assert ranking["model"] == ranking["ranking"][0]["model"]
    async with aiohttp.ClientSession() as session:
        async with session.get(auto_proxy.url + "/api/autoroute/status") as resp:
            doc = await resp.json()
    assert doc["mode"] == "fallback" and "missing.onnx" in doc["artifact_error"]


@pytest.mark.parametrize(
    ("extra", "capability"),
    [
        ({"tools": TOOLS}, "tools"),
        ({"think": True}, "thinking"),
    ],
)
async def test_hard_filters_remove_models_without_the_capability(
    auto_proxy: Proxy, extra: dict[str, Any], capability: str
) -> None:
    status, doc = await explain(auto_proxy, chat("auto:best", **extra))
    assert status == 200
    assert doc["filtered"], doc
    assert all(f"lacks {capability}" in why for why in doc["filtered"].values() if "lacks" in why)
    chosen = doc["model"]
    async with aiohttp.ClientSession() as session:
        async with session.post(auto_proxy.url + "/api/show", json={"model": chosen}) as resp:
            assert capability in (await resp.json())["capabilities"]


async def test_images_need_vision_and_suffix_needs_insert(auto_proxy: Proxy) -> None:
    vision = chat("auto")
    vision["messages"][0]["images"] = [PIXEL_PNG]
    assert (await explain(auto_proxy, vision))[1]["model"] == "llava:7b"
    _, fim = await explain(auto_proxy, {"model": "auto", "prompt": "def f(", "suffix": "return x"})
    assert fim["model"] in ("qwen2.5-coder:7b", "codegemma:7b")
    # The others lack insert; the embedding model is no candidate at all.
    assert all("insert" in why or why == EMBEDDING_ONLY for why in fim["filtered"].values()), fim
    assert fim["filtered"]["nomic-embed-text:latest"] == EMBEDDING_ONLY


async def test_context_length_filter(auto_proxy: Proxy) -> None:
    long = chat("auto:best")
    long["messages"][0]["content"] = "word " * 40_000  # ~50k tokens by the 4-chars rule
    _, doc = await explain(auto_proxy, long)
    assert any("context" in why for why in doc["filtered"].values())
    assert doc["model"] not in doc["filtered"]


async def test_a_prompt_in_a_script_of_more_bytes_is_counted_by_its_bytes(
    tmp_path: Path,
) -> None:
    """A tokenizer reads bytes: a CJK character is three bytes of UTF-8 and near a token
    of its own, not a quarter of one as four characters a token says. A Chinese
    document of 24,000 characters is some 18,000 tokens, beyond a 16K context, and the
    model with that context is left out, as it is for an English text of as many
    tokens; the same number of ASCII characters is 6,000 and fits."""
    auto, set_models = offline_router(tmp_path, {"best": Profile(cost_weight=0.0)})

    def show(context: int) -> dict[str, Any]:
        return {"capabilities": ["completion"], "model_info": {"x.context_length": context}}

    set_models(
        {
            "short:14b": model_info("short:14b", {}, show(16384)),
            "long:12b": model_info("long:12b", {}, show(131072)),
        }
    )

    def filtered(text: str) -> dict[str, str]:
        body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
        return auto.decide("/api/chat", body, "best").decision.filtered

    assert filtered("a" * 24_000) == {}
    assert filtered("罗马帝国" * 6_000) == {"short:14b": "context 16384 < ~18000 prompt tokens"}
    assert filtered("word " * 16_000) == {"short:14b": "context 16384 < ~20000 prompt tokens"}


async def test_profiles_move_the_choice(auto_proxy: Proxy) -> None:
    _, best = await explain(auto_proxy, chat("auto:best"))
    _, fast = await explain(auto_proxy, chat("auto:fast"))
    size = {r["model"]: r["expected_seconds"] for r in best["ranking"]}
    # "fast" weighs seconds heavily: it picks a model no slower than "best" does.
    assert size[fast["model"]] <= size[best["model"]]
    assert fast["model"] != best["model"]
    _, coders = await explain(auto_proxy, chat("auto:coders"))
    assert coders["model"] in ("qwen2.5-coder:7b", "codegemma:7b")
    _, nomix = await explain(auto_proxy, chat("auto:nomixtral"))
    assert nomix["filtered"].get("mixtral:8x7b") == "in the profile's deny list"


async def test_a_tolerance_takes_the_quickest_model_within_it(auto_proxy: Proxy) -> None:
    _, best = await explain(auto_proxy, chat("auto:best"))
    _, thrifty = await explain(auto_proxy, chat("auto:thrifty"))
    assert thrifty["rule"] == {
        "cost_weight": 0.0,
        "tolerance": 0.1,
        "max_loss": 0.0,
        "min_gain": 0.02,
    }
    by_name = {r["model"]: r for r in thrifty["ranking"]}
    top = by_name[best["model"]]["utility"]
    within = [r for r in thrifty["ranking"] if r["utility"] >= top - 0.1]
    quickest = min(within, key=lambda r: r["expected_seconds"])
    assert thrifty["model"] == quickest["model"] != best["model"]
    assert all("spread" in r for r in thrifty["ranking"])


async def test_max_loss_keeps_out_what_is_rated_far_below_the_best(auto_proxy: Proxy) -> None:
    """`careful` weighs cost as `fast` does, but never takes a model that may be more
    than 5 points below the best-rated one (its P less SWITCH_Z of its spread): explain
    marks those."""
    _, fast = await explain(auto_proxy, chat("auto:fast"))
    _, careful = await explain(auto_proxy, chat("auto:careful"))
    assert careful["rule"]["max_loss"] == 0.05
    top = max(r["p_success"] for r in careful["ranking"])
    beyond = {r["model"] for r in careful["ranking"] if r["beyond_max_loss"]}
    assert beyond == {
        r["model"]
        for r in careful["ranking"]
        if r["p_success"] - SWITCH_Z * r["spread"] < top - 0.05
    }
    assert fast["model"] in beyond
    assert careful["model"] not in beyond
    assert not any(r["beyond_max_loss"] for r in fast["ranking"])


async def test_unknown_profile_is_a_missing_model_and_impossible_requests_are_400(
    auto_proxy: Proxy,
) -> None:
    """An `auto:<profile>` no profile configures is a model that does not exist:
    Ollama's 404 "model 'x' not found", naming it as the request spelled it, on every
    route (the CLI and the clients read that 404 as "pull it or pick another")."""
    async with aiohttp.ClientSession() as session:
        async with session.post(auto_proxy.url + "/api/chat", json=chat("Auto:Nope")) as resp:
            assert resp.status == 404
            error = (await resp.json())["error"]
            assert error.startswith("model 'Auto:Nope' not found (")
            assert "auto:best" in error
        async with session.post(auto_proxy.url + "/api/show", json={"model": "auto:nope"}) as r:
            assert r.status == 404
            assert (await r.json())["error"].startswith("model 'auto:nope' not found (")
        explained = chat("auto:nope")
        async with session.post(auto_proxy.url + "/api/autoroute/explain", json=explained) as r:
            assert r.status == 404
            assert (await r.json())["error"].startswith("model 'auto:nope' not found (")
        # Embeddings take `selector.embedding_model` whatever the profile, but one that
        # does not exist is refused the same way.
        embed = {"model": "auto:nope", "input": "x"}
        async with session.post(auto_proxy.url + "/api/embed", json=embed) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"].startswith("model 'auto:nope' not found (")
        async with session.post(auto_proxy.url + "/v1/embeddings", json=embed) as resp:
            assert resp.status == 404
            assert "model 'auto:nope' not found" in (await resp.json())["error"]["message"]
        body = chat("auto:coders", tools=TOOLS)
        body["messages"][0]["images"] = [PIXEL_PNG]
        async with session.post(auto_proxy.url + "/api/chat", json=body) as resp:
            assert resp.status == 400
            assert "no model can serve this request" in (await resp.json())["error"]


async def test_auto_names_the_embedding_model_as_the_list_spells_it(auto_proxy: Proxy) -> None:
    """`selector.embedding_model` may be written as the operator types it
    (`nomic-embed-text`): the answer, its headers and the usage event name the model as
    the backend's list spells it (`nomic-embed-text:latest`), as for `auto`'s chat
    choices, so that a client finds it in the list."""
    listed = "nomic-embed-text:latest"
    ids = []
    async with aiohttp.ClientSession() as session:
        for path in ("/api/embed", "/v1/embeddings"):
            embed = {"model": "auto", "input": "x"}
            async with session.post(auto_proxy.url + path, json=embed) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["X-Autoroute-Model"] == listed
                assert (await resp.json())["model"] == listed
                ids.append(resp.headers["X-Request-Id"])
    for event in await events_of(auto_proxy.config.usage, *ids):
        assert event["served_model"] == listed, event


# Bodies auto refuses on the OpenAI and Anthropic routes as the handler refuses a named
# model (not found, lacking a capability): an unknown profile, no model for the request.
_OPENED = {"role": "user", "content": "hi"}
_PICTURED = {  # none of the coders sees images
    "role": "user",
    "content": [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PIXEL_PNG}},
    ],
}
_COMPAT_REFUSALS = [
    ("/v1/chat/completions", {"model": "auto:nope", "messages": [_OPENED]}),
    ("/v1/completions", {"model": "auto:nope", "prompt": "hi"}),
    ("/v1/embeddings", {"model": "auto:nope", "input": "hi"}),
    ("/v1/responses", {"model": "auto:nope", "input": "hi"}),
    ("/v1/messages", {"model": "auto:nope", "max_tokens": 5, "messages": [_OPENED]}),
    ("/v1/chat/completions", {"model": "auto:coders", "messages": [_PICTURED]}),
]


@pytest.mark.parametrize(("path", "body"), _COMPAT_REFUSALS)
async def test_autos_refusals_on_the_compatible_routes_are_written_as_ollamas_are(
    auto_proxy: Proxy, emulator: Emulator, path: str, body: dict[str, Any]
) -> None:
    """Ollama's OpenAI and Anthropic layers rewrite a handler's error with a
    json.Encoder under `Content-Type: application/json` (no charset), the line ending in
    a newline; `auto`'s refusal in the handler's place is written the same way: an
    unknown profile as the 404 of a model that does not exist, with its error type."""
    # A named model's refusal, from the backend itself: no such model.
    named = {**body, "model": "nonesuch:1b"}
    async with aiohttp.ClientSession() as session:
        async with session.post(emulator.url + path, json=named) as resp:
            direct = resp.status, resp.headers["Content-Type"], await resp.read()
        async with session.post(auto_proxy.url + path, json=body) as resp:
            proxied = resp.status, resp.headers["Content-Type"], await resp.read()
    assert direct[0] == 404 and direct[2].endswith(b"}\n"), direct
    unknown = body["model"] == "auto:nope"
    assert proxied[0] == (404 if unknown else 400), proxied
    if unknown:
        # The same error object but for the name: its type and fields are Ollama's.
        assert orjson.loads(proxied[2])["error"]["type"] == orjson.loads(direct[2])["error"]["type"]
    assert proxied[1] == direct[1] == "application/json"
    assert proxied[2].endswith(b"}\n") and proxied[2].count(b"\n") == 1, proxied
    if path != "/v1/messages":
        sdk = openai.AsyncOpenAI(base_url=auto_proxy.url + "/v1", api_key="x", max_retries=0)
        try:
            refusal = openai.NotFoundError if unknown else openai.BadRequestError
            with pytest.raises(refusal) as refused:
                await sdk.post(path.removeprefix("/v1"), body=body, cast_to=object)
        finally:
            await sdk.close()
        assert "auto:" in refused.value.message or "no model" in refused.value.message


async def test_explain_matches_what_the_proxy_does(auto_proxy: Proxy) -> None:
    body = chat("auto:fast", stream=False)
    _, doc = await explain(auto_proxy, body)
    async with aiohttp.ClientSession() as session:
        async with session.post(auto_proxy.url + "/api/chat", json=body) as resp:
            answer = await resp.json()
            assert resp.headers["X-Autoroute-Model"] == doc["model"]
            assert resp.headers["X-Autoroute-Profile"] == "fast"
            assert resp.headers["X-Autoroute-Reason"] == "fallback"
            assert float(resp.headers["X-Autoroute-Score"]) == pytest.approx(
                doc["ranking"][0]["utility"], abs=1e-3
            )
    assert answer["model"] == doc["model"]
    # A current Ollama's show lists each model's capabilities.
    assert all(r["capabilities"]["from"] == "show" for r in doc["ranking"])


def test_official_clients_see_the_chosen_model(auto_proxy: Proxy) -> None:
    client = ollama.Client(host=auto_proxy.url)
    chunks = list(
        client.chat(model="auto", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    names = {c.model for c in chunks}
    assert len(names) == 1
    name = names.pop()
    assert name and "auto" not in name
    reply = client.generate(model="auto:fast", prompt="hi")
    assert reply.model and not reply.model.startswith("auto")

    sdk = openai.OpenAI(base_url=auto_proxy.url + "/v1", api_key="x", max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto:best", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    assert completion.model == raw.headers["x-autoroute-model"]
    assert not completion.model.startswith("auto")


@pytest.mark.parametrize("model", ["auto", "auto:best", "auto:fast"])
def test_every_client_call_names_the_model_that_served_it(auto_proxy: Proxy, model: str) -> None:
    """Through `auto`, each inference call of the official clients parses, and its
    answer's `model` (every chunk's, every event's) is the X-Autoroute-Model header's,
    a real model; every answer has an X-Request-Id."""
    seen: list[httpx.Response] = []
    hooks = {"response": [seen.append]}
    client = ollama.Client(host=auto_proxy.url, event_hooks=hooks)
    sdk = openai.OpenAI(
        base_url=auto_proxy.url + "/v1",
        api_key="x",
        max_retries=0,
        http_client=httpx.Client(event_hooks=hooks),
    )
    messages: Any = [{"role": "user", "content": "Why is the sky blue?"}]
    answers: list[Any] = [
        client.generate(model=model, prompt="hi"),
        list(client.generate(model=model, prompt="hi", stream=True, think=True)),
        client.chat(model=model, messages=messages, format="json"),
        list(client.chat(model=model, messages=messages, stream=True, tools=TOOLS)),
        client.embed(model=model, input=["a", "b"]),
        client.embeddings(model=model, prompt="a"),
        sdk.chat.completions.create(model=model, messages=messages, reasoning_effort="high"),
        list(
            sdk.chat.completions.create(
                model=model, messages=messages, stream=True, stream_options={"include_usage": True}
            )
        ),
        sdk.completions.create(model=model, prompt="Once"),
        sdk.embeddings.create(model=model, input="a"),
        sdk.responses.create(model=model, input="hi"),
        list(sdk.responses.create(model=model, input="hi", stream=True)),
    ]
    assert len(seen) == len(answers)
    for response, answer in zip(seen, answers, strict=True):
        served = response.headers["X-Autoroute-Model"]
        assert response.headers["X-Request-Id"] and not served.startswith("auto")
        named = models_in([answer])
        assert named <= {served}, response.request.url.path
        assert named or response.request.url.path == "/api/embeddings"


def models_in(value: Any) -> set[str]:
    """Every `model` an answer names, in its chunks, events and nested objects."""
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        here = {value["model"]} if isinstance(value.get("model"), str) else set()
        return here.union(*(models_in(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(models_in(v) for v in value))
    return set()


async def test_auto_is_listed_and_shown_for_editors(auto_proxy: Proxy) -> None:
    client = ollama.AsyncClient(host=auto_proxy.url)
    names = [m.model for m in (await client.list()).models]
    assert {"auto", "auto:fast", "auto:best", "auto:coders"} <= set(names)
    show = await client.show("auto")
    assert show.capabilities is not None and {"completion", "tools", "vision"} <= set(
        show.capabilities
    )
    assert show.modelinfo is not None and show.modelinfo["autoroute.context_length"] >= 32768
    # ShowResponse's empty strings are `omitempty`: auto has no parameters to list.
    async with aiohttp.ClientSession() as http:
        async with http.post(auto_proxy.url + "/api/show", json={"model": "auto"}) as got:
            assert "parameters" not in await got.json()
    sdk = openai.AsyncOpenAI(base_url=auto_proxy.url + "/v1", api_key="x", max_retries=0)
    assert "auto:fast" in [m.id async for m in sdk.models.list()]
    assert (await sdk.models.retrieve("auto")).owned_by == "autoroute"
    await sdk.close()


async def test_auto_is_retrieved_by_any_name_it_is_served_by(auto_proxy: Proxy) -> None:
    """`/v1/models/<id>` reads `auto`'s names as chat and show read them (Ollama reads a
    name case-insensitively, and `auto` is `auto:latest`), and names the model as asked,
    as Ollama's OpenAI layer does for any model; an unknown profile is a model no list
    has."""
    sdk = openai.AsyncOpenAI(base_url=auto_proxy.url + "/v1", api_key="x", max_retries=0)
    client = ollama.AsyncClient(host=auto_proxy.url)
    try:
        for name in ("Auto", "auto:latest", "AUTO:Fast", "auto:best:local"):
            assert (await client.show(name)).details.family == "autoroute", name
            model = await sdk.models.retrieve(name)
            assert (model.id, model.owned_by) == (name, "autoroute")
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve("auto:nonesuch")
    finally:
        await sdk.close()


async def test_a_backend_model_named_auto_is_reached_by_its_full_name(
    servers: ServerThread, tmp_path: Path
) -> None:
    """`auto` and `auto:<tag>` are the proxy's. A backend's model of that name is
    reached as Ollama also reads it, `library/auto` or `registry.ollama.ai/library/auto`
    (any tag), which the proxy routes as any model name."""
    own = Emulator(servers, dataclasses.replace(FROZEN, models=("auto", "qwen2.5:7b")))
    prx = Proxy(servers, [own.url], selector=selector(tmp_path))
    try:
        client = ollama.AsyncClient(host=prx.url)
        for name in ("library/auto", "registry.ollama.ai/library/auto:latest"):
            answer = await client.generate(model=name, prompt="hi", options=SHORT)
            assert answer.model == name
            assert (await client.show(name)).details.family != "autoroute"
        assert own.state.requests["/api/generate"] == 2
        assert (await client.show("auto")).details.family == "autoroute"
    finally:
        prx.stop()
        own.stop()


async def test_a_backend_model_named_auto_is_listed_by_the_name_that_reaches_it(
    servers: ServerThread, tmp_path: Path
) -> None:
    """A backend's own `auto` and `auto:fast` (`ollama cp`, or another autoroute behind
    this one) are listed once each, under `library/<name>`, the name that reaches them,
    beside the proxy's own entries: listed as the backend spells them, a picker would
    show each name twice, and choosing the backend's would reach the proxy's."""
    own = Emulator(servers, dataclasses.replace(FROZEN, models=("auto", "auto:fast", "qwen2.5:7b")))
    prx = Proxy(servers, [own.url], selector=selector(tmp_path))
    sdk = openai.AsyncOpenAI(base_url=prx.url + "/v1", api_key="x", max_retries=0)
    try:
        client = ollama.AsyncClient(host=prx.url)
        listed = [m.model for m in (await client.list()).models]
        ids = [m.id async for m in sdk.models.list()]
        for names in (listed, ids):
            assert len(names) == len(set(names)), names
            assert {"library/auto:latest", "library/auto:fast", "auto", "auto:fast"} <= set(names)
        answer = await client.generate(model="library/auto:fast", prompt="hi", options=SHORT)
        assert answer.model == "library/auto:fast"
        assert own.state.requests["/api/generate"] == 1
    finally:
        await sdk.close()
        prx.stop()
        own.stop()


async def test_a_proxy_in_front_of_another_lists_its_own_auto_once(
    servers: ServerThread, emulator: Emulator, tmp_path: Path
) -> None:
    """Behind this proxy, another autoroute lists its own `auto` entries: this proxy's
    stand for them (a request naming `auto` is this one's to route), and the inner
    one's reach no model by any longer name, so they are not listed again."""
    inner = Proxy(servers, [emulator.url], selector=selector(tmp_path))
    outer = Proxy(servers, [inner.url], selector=selector(tmp_path))
    sdk = openai.AsyncOpenAI(base_url=outer.url + "/v1", api_key="x", max_retries=0)
    try:
        listed = [m.model for m in (await ollama.AsyncClient(host=outer.url).list()).models]
        ids = [m.id async for m in sdk.models.list()]
        for names in (listed, ids):
            assert len(names) == len(set(names)), names
            assert "auto:fast" in names and "qwen2.5:7b" in names
            assert not [n for n in names if n.startswith("library/")], names
    finally:
        await sdk.close()
        outer.stop()
        inner.stop()


async def test_auto_never_chooses_a_model_named_as_auto_is(
    servers: ServerThread, tmp_path: Path
) -> None:
    """A backend's model in `auto`'s names (its own copy named `auto:fast`, or the
    `auto` entries of another autoroute behind this one) is no candidate: the name
    `auto` would send it and answer with (X-Autoroute-Model, the answer's `model`) is
    the proxy's own, and another autoroute's `auto` is no model to rank."""
    own = Emulator(servers, dataclasses.replace(FROZEN, models=("auto:fast", "qwen2.5:7b")))
    inner = Proxy(servers, [own.url], selector=selector(tmp_path))
    outer = Proxy(servers, [inner.url], selector=selector(tmp_path))
    try:
        for prx in (inner, outer):
            status, ranking = await explain(prx, chat("auto:best"))
            assert status == 200, ranking
            ranked = [r["model"] for r in ranking["ranking"]]
            assert ranked and not [m for m in ranked if profile_of(m, "balanced")], ranked
            answer = await ollama.AsyncClient(host=prx.url).chat(**chat("auto:best"), options=SHORT)
            assert answer.model == "qwen2.5:7b"
    finally:
        outer.stop()
        inner.stop()
        own.stop()


async def test_loading_and_unloading_auto_touch_no_backend(
    auto_proxy: Proxy, emulator: Emulator
) -> None:
    """`ollama run auto` sends a chat without messages (a load) and `ollama stop auto`
    the same with keep_alive 0 (an unload). Ollama answers both done, with done_reason
    "load" or "unload", and `auto` has no model of its own to load or unload: unloading
    the one an empty prompt would be routed to would stop a model others are using."""
    client = ollama.AsyncClient(host=auto_proxy.url)
    await client.generate(model="qwen2.5:7b", prompt="hi", options={"num_predict": 1})
    before = set(emulator.state.loaded)
    assert "qwen2.5:7b" in before
    for model in ("auto", "auto:best"):
        stopped = await client.generate(model=model, keep_alive=0)
        assert (stopped.model, stopped.done, stopped.done_reason) == (model, True, "unload")
        assert stopped.response == ""
        for keep_alive in ("0s", "-0m", 0.0):
            stopped_chat = await client.chat(model=model, keep_alive=keep_alive)
            assert stopped_chat.done_reason == "unload"
            assert stopped_chat.message.role == "assistant"
        run = await client.chat(model=model)
        assert (run.model, run.done, run.done_reason) == (model, True, "load")
        assert (await client.generate(model=model, keep_alive="5m")).done_reason == "load"
    assert set(emulator.state.loaded) == before
    with pytest.raises(ollama.ResponseError) as unknown:
        await client.generate(model="auto:nope", keep_alive=0)
    assert unknown.value.status_code == 404
    # A keep_alive Ollama refuses is routed as before, and the backend's 400 answers it.
    with pytest.raises(ollama.ResponseError) as refused:
        await client.generate(model="auto", keep_alive="10")
    assert refused.value.status_code == 400 and "duration" in refused.value.error
    # A request that generates still goes to a model.
    answer = await client.generate(model="auto", prompt="hi", options={"num_predict": 1})
    assert not answer.model.startswith("auto")


# Loads and unloads of `auto` the proxy answers itself, and the loads it refuses as
# Ollama would (thinking of a profile none of whose models thinks, raw mode with a
# system prompt, an option of the wrong type): the route, and `?path=` for explain.
EXPLAINED_LOADS = [
    ("/api/generate", {"model": "auto"}),
    ("/api/generate", {"model": "auto:best", "prompt": "", "keep_alive": "5m"}),
    ("/api/chat", {"model": "auto", "messages": []}),
    ("/api/chat", {"model": "auto:coders", "keep_alive": 0}),
    ("/api/generate", {"model": "auto", "tools": TOOLS, "keep_alive": "0s"}),
    ("/api/generate", {"model": "auto:coders", "think": True}),
    ("/api/generate", {"model": "auto", "raw": True, "system": "be brief"}),
    ("/api/chat", {"model": "auto", "options": {"num_ctx": "x"}}),
    ("/api/chat", {"model": "auto:nope"}),
    ("/api/generate", {"model": "auto:nope", "keep_alive": 0}),
]


@pytest.mark.parametrize(("path", "body"), EXPLAINED_LOADS)
async def test_explain_of_a_load_says_what_the_route_answers(
    auto_proxy: Proxy, path: str, body: dict[str, Any]
) -> None:
    """A generate without a prompt or a chat without messages loads (or, with
    keep_alive 0, unloads) `auto`, which the proxy answers itself, choosing no model:
    explain of that body says so (no model, the route's `done_reason` and its answer),
    or refuses it as the route does, rather than ranking models for a generation that
    never runs. A keep_alive Ollama refuses is routed to a model, whose backend refuses
    it: explain ranks it."""
    status, answered = await post_raw(auto_proxy.url, path, orjson.dumps(body))
    # Explain guesses the route from the body (a chat's messages), else `?path=` says it.
    guessed = "/api/chat" if "messages" in body else "/api/generate"
    for route in ("", path) if guessed == path else (path,):
        code, doc = await explain(auto_proxy, body, route)
        assert code == status, (route, doc, answered)
        if status != 200:
            assert doc == orjson.loads(answered), route
            continue
        expected = orjson.loads(answered)
        assert (doc["model"], doc["reason"], doc["ranking"]) == (
            None,
            expected["done_reason"],
            [],
        ), doc
        assert doc["profile"] == profile_of(body["model"], "balanced")
        assert {k: v for k, v in doc["answer"].items() if k != "created_at"} == {
            k: v for k, v in expected.items() if k != "created_at"
        }
    # Routed, a load Ollama cannot read the keep_alive of is the chosen model's to refuse.
    routed = {"model": "auto", "keep_alive": "10"}
    status, _ = await post_raw(auto_proxy.url, "/api/generate", orjson.dumps(routed))
    code, doc = await explain(auto_proxy, routed, "/api/generate")
    assert (status, code) == (400, 200) and doc["model"] in {e["model"] for e in doc["ranking"]}


async def post_raw(url: str, path: str, body: bytes) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.post(url + path, data=body) as resp:
        return resp.status, await resp.read()


# Bodies Ollama refuses as it reads them, before it looks at the model (`{model}` is
# where the model's name goes): a load or an unload, a show, and requests `auto` finds
# no model for (the coders profile has no vision model).
REFUSED_BEFORE_THE_MODEL = [
    ("/api/generate", '{{"model": "{model}", "stream": "no"}}'),
    ("/api/generate", '{{"model": "{model}", "keep_alive": 0, "options": "x"}}'),
    ("/api/generate", '{{"model": "{model}", "context": [1e400]}}'),
    ("/api/generate", '{{"model": "{model}", "think": 5}}'),
    ("/api/generate", '{{"model": "{model}", "top_logprobs": 50}}'),
    ("/api/chat", '{{"model": "{model}", "messages": {{}}}}'),
    ("/api/chat", '{{"model": "{model}", "tools": "x", "keep_alive": "0s"}}'),
    ("/api/chat", '{{"model": "{model}", "think": "hard"}}'),
    ("/api/show", '{{"model": "{model}", "verbose": "x"}}'),
    ("/api/show", '{{"name": "{model}", "options": 1}}'),
    ("/api/generate", '{{"model": "{model}", "prompt": "hi", "images": ["%%%"]}}'),
    (
        "/api/chat",
        '{{"model": "{model}", "stream": 1, "messages": '
        '[{{"role": "user", "content": "hi", "images": ["' + PIXEL_PNG + '"]}}]}}',
    ),
]


@pytest.mark.parametrize(("path", "template"), REFUSED_BEFORE_THE_MODEL)
async def test_auto_refuses_a_body_as_ollama_does_before_the_model(
    auto_proxy: Proxy, emulator: Emulator, path: str, template: str
) -> None:
    """Where the proxy answers for `auto` itself (its load and unload, its show, a
    request no model can serve), a body Ollama refuses as it reads it gets Ollama's
    400: the same answer a backend gives to that body naming one of its models, never
    a "load", a description or a "no model can serve" that Ollama would not write."""
    status, expected = await post_raw(
        emulator.url, path, template.format(model="qwen2.5:7b").encode()
    )
    assert status == 400
    for model in ("auto", "auto:coders"):
        answer = await post_raw(auto_proxy.url, path, template.format(model=model).encode())
        assert answer == (400, expected)


# Loads Ollama refuses whatever the model (one that completes text, as `auto`'s
# candidates do): GenerateHandler's raw-mode 400, then scheduleRunner's
# Options.FromMap, whose error handleScheduleError answers with a 500. An unload
# (keep_alive 0) is answered before either.
REFUSED_LOADS = [
    (
        "/api/generate",
        {"options": {"num_ctx": "x"}},
        500,
        'option "num_ctx" must be of type integer',
    ),
    ("/api/chat", {"options": {"stop": "x"}}, 500, 'option "stop" must be of type array'),
    (
        "/api/chat",
        {"keep_alive": "5m", "options": {"stop": ["a", 1]}},
        500,
        'option "stop" must be of an array of strings',
    ),
    (
        "/api/generate",
        {"options": {"typical_p": "x"}},
        500,
        'option "typical_p" must be of type float32',
    ),
    (
        "/api/chat",
        {"options": {"repeat_last_n": [1]}},
        500,
        'option "repeat_last_n" must be of type integer',
    ),
    (
        "/api/generate",
        {"options": {"main_gpu": True}},
        500,
        'option "main_gpu" must be of type integer',
    ),
    ("/api/chat", {"options": {"use_mmap": 1}}, 500, 'option "use_mmap" must be of type boolean'),
    (
        "/api/generate",
        {"options": {"draft_num_predict": {}}},
        500,
        'option "draft_num_predict" must be of type integer',
    ),
    (
        "/api/generate",
        {"raw": True, "system": "be brief", "options": {"num_ctx": "x"}},
        400,
        "raw mode does not support template, system, or context",
    ),
    ("/api/generate", {"keep_alive": 0, "options": {"num_ctx": "x"}}, 200, ""),
    ("/api/chat", {"keep_alive": "0s", "options": {"stop": 1}}, 200, ""),
    # Options Ollama leaves alone: an unknown name (a warning), a null, a float num_ctx.
    ("/api/generate", {"options": {"nope": "x", "seed": None, "num_ctx": 2048.5}}, 200, ""),
]


@pytest.mark.parametrize(("path", "fields", "status", "error"), REFUSED_LOADS)
async def test_auto_load_refuses_what_ollama_refuses_of_any_model(
    auto_proxy: Proxy,
    emulator: Emulator,
    path: str,
    fields: dict[str, Any],
    status: int,
    error: str,
) -> None:
    """`ollama run auto` loads with the client's options: Ollama decodes them into
    api.Options as it schedules the load (Options.FromMap), and a value of the wrong
    type is its 500 for any model, as a raw-mode generate with a system prompt is its
    400. `auto` loads nothing, but answers the same, never a "load" Ollama would not
    write."""
    direct = await post_raw(emulator.url, path, orjson.dumps({"model": "qwen2.5:7b", **fields}))
    assert direct[0] == status
    if error:
        assert orjson.loads(direct[1]) == {"error": error}
    for model in ("auto", "auto:coders"):
        answer = await post_raw(auto_proxy.url, path, orjson.dumps({"model": model, **fields}))
        assert answer[0] == status
        if error:
            assert answer[1] == direct[1]
        else:
            assert orjson.loads(answer[1])["done_reason"] == orjson.loads(direct[1])["done_reason"]
    # A request that generates is the chosen backend's to refuse: the same answer.
    if error:
        generating = (
            {"prompt": "hi"}
            if path == "/api/generate"
            else {"messages": [{"role": "user", "content": "hi"}]}
        )
        body = {"model": "auto", **generating, **fields, "stream": False}
        assert await post_raw(auto_proxy.url, path, orjson.dumps(body)) == (status, direct[1])


async def test_the_proxys_own_error_answers_keep_their_message_as_the_requests_error(
    auto_proxy: Proxy,
) -> None:
    """An error the proxy answers itself keeps its message as the usage event's error,
    as a backend's answer keeps its own: `auto`'s load refused for an option of the
    wrong type (Ollama's 500 for what the request says) is then read as a refusal
    (`outcome.judged`), as the backend's same 500 is, not as a failure of the proxy.
    A message quoting what the client sent (a number as written, of any length) is
    kept bounded, its beginning as it is. `/api/autoroute/stats` counts each a refusal."""
    # A load whose number Go cannot read as an int, quoted as written in its refusal.
    huge = b'{"model": "auto", "context": [1' + b"0" * 5000 + b"]}"
    asked = [
        ("/api/generate", orjson.dumps({"model": "auto", "options": {"num_ctx": "x"}})),
        ("/v1/chat/completions", orjson.dumps({"model": "auto:nope", "messages": [_OPENED]})),
        ("/api/generate", huge),
    ]
    answers = []
    async with aiohttp.ClientSession() as session:
        for path, body in asked:
            async with session.post(auto_proxy.url + path, data=body) as resp:
                said = (await resp.json())["error"]
                message = said if isinstance(said, str) else said["message"]
                answers.append((resp.status, message, resp.headers["X-Request-Id"]))
    events = await events_of(auto_proxy.config.usage, *(rid for *_, rid in answers))
    verdicts = []
    for (status, message, _), event in zip(answers, events, strict=True):
        kept = event["outcome"]["error"]
        assert (event["outcome"]["status"], kept) == (status, message[: len(kept or "")])
        assert 0 < len(kept) <= MAX_ERROR_CHARS
        verdicts.append(outcome.judged(status, kept))
    assert [status for status, *_ in answers] == [500, 404, 400]
    assert len(answers[2][1]) > MAX_ERROR_CHARS  # kept cut short
    assert verdicts == [outcome.REFUSAL] * 3
    # The stats count them as refusals, none as an error.
    async with (
        aiohttp.ClientSession() as session,
        session.get(auto_proxy.url + "/api/autoroute/stats") as resp,
    ):
        rows = (await resp.json())["models"]
    counted = [sum(row[name] for row in rows) for name in ("requests", "refusals", "errors")]
    assert counted == [3, 3, 0], rows


# Requests asking for thinking of `auto:coders`, none of whose models thinks, as Ollama
# gets them for a model without thinking: `ollama run --think` loads first (a generate
# without a prompt), then chats; `/set think` chats; an editor's reasoning effort.
_HI = [{"role": "user", "content": "hi"}]
THINKING_ASKED_OF_NO_THINKER = [
    ("/api/generate", {"think": True}),
    ("/api/generate", {"think": "high", "keep_alive": "5m"}),
    ("/api/chat", {"think": True}),
    ("/api/generate", {"think": "max", "prompt": "hi"}),
    ("/api/chat", {"think": "low", "messages": _HI, "tools": TOOLS}),
    ("/v1/chat/completions", {"reasoning_effort": "high", "messages": _HI}),
]


@pytest.mark.parametrize(("path", "fields"), THINKING_ASKED_OF_NO_THINKER)
async def test_thinking_asked_of_a_profile_without_a_thinker_is_ollamas_400(
    auto_proxy: Proxy, emulator: Emulator, path: str, fields: dict[str, Any]
) -> None:
    """Ollama refuses thinking asked of a model without it with a 400 `"<model>" does not
    support thinking`, before it loads anything (its load answers it too: the CLI sends
    `think` with the load "so we fail before getting to the chat prompt"), and `ollama
    run` reads that text: with it, the session prints the error and goes on; with any
    other, it ends. A profile none of whose models thinks answers the same, naming the
    model as the client wrote it."""
    direct = await post_raw(
        emulator.url, path, orjson.dumps({"model": "qwen2.5-coder:7b", **fields})
    )
    assert direct[0] == 400 and b"does not support thinking" in direct[1]
    for model in ("auto:coders", "Auto:Coders"):
        answer = await post_raw(auto_proxy.url, path, orjson.dumps({"model": model, **fields}))
        assert answer == (400, direct[1].replace(b"qwen2.5-coder:7b", model.encode()))


# What scheduleRunner checks a model for, asked of `auto:seeing`, whose one model
# (llava:7b) neither calls tools nor fills in the middle: a chat or a load with tools, a
# generate or a load with a suffix, through Ollama's API and its OpenAI layer.
CAPABILITY_ASKED_OF_NO_MODEL = [
    ("/api/chat", {"messages": _HI, "tools": TOOLS, "stream": False}),
    ("/api/chat", {"tools": TOOLS}),
    ("/api/generate", {"prompt": "def f(", "suffix": "return x", "stream": False}),
    ("/api/generate", {"suffix": "return x"}),
    ("/v1/chat/completions", {"messages": _HI, "tools": TOOLS}),
    ("/v1/completions", {"prompt": "def f(", "suffix": "return x"}),
]


@pytest.mark.parametrize(("path", "fields"), CAPABILITY_ASKED_OF_NO_MODEL)
async def test_a_capability_no_model_of_the_profile_offers_is_ollamas_400(
    servers: ServerThread, emulator: Emulator, tmp_path: Path, path: str, fields: dict[str, Any]
) -> None:
    """Ollama refuses tools or a suffix asked of a model without them as it schedules
    the runner (a load too): 400 `<the model's full name> does not support tools` (or
    insert). A profile none of whose models offers it, as its `/api/show` says,
    answers the same."""
    profiles = {"balanced": Profile(), "seeing": Profile(cost_weight=0.0, allow=("llava:7b",))}
    prx = Proxy(servers, [emulator.url], selector=selector(tmp_path, profiles=profiles))
    try:
        direct = await post_raw(emulator.url, path, orjson.dumps({"model": "llava:7b", **fields}))
        assert direct[0] == 400 and b"does not support" in direct[1], direct
        for model in ("auto:seeing", "Auto:Seeing"):
            answer = await post_raw(prx.url, path, orjson.dumps({"model": model, **fields}))
            assert answer == (400, direct[1].replace(b"llava:7b", b"auto:seeing"))
    finally:
        prx.stop()


async def test_thinking_asked_of_auto_goes_on_where_a_model_thinks(auto_proxy: Proxy) -> None:
    """Where the profile has a model that thinks, thinking asked of it loads and chats;
    an unload is answered before thinking is looked at, as by Ollama; the Anthropic
    route drops thinking for a model without it (relax_thinking) instead of failing."""
    status, loaded = await post_raw(
        auto_proxy.url, "/api/generate", orjson.dumps({"model": "auto", "think": True})
    )
    assert (status, orjson.loads(loaded)["done_reason"]) == (200, "load")
    unload = {"model": "auto:coders", "think": True, "keep_alive": 0}
    status, unloaded = await post_raw(auto_proxy.url, "/api/generate", orjson.dumps(unload))
    assert (status, orjson.loads(unloaded)["done_reason"]) == (200, "unload")
    anthropic = {
        "model": "auto:coders",
        "max_tokens": 8,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": _HI,
    }
    status, answer = await post_raw(auto_proxy.url, "/v1/messages", orjson.dumps(anthropic))
    assert status == 200, answer


def _image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


# Chat completions Ollama's OpenAI middleware refuses as it converts them, before it
# looks at the model (ChatMiddleware: the body's binding, no messages, then
# openai.FromChatRequest, message by message): `auto:coders` has no vision model.
REFUSED_OPENAI_CHATS = [
    {"messages": [{"role": "user", "content": [_image("http://example.com/cat.png")]}]},
    {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is it?"}]},
            {"role": "user", "content": [_image("https://example.com/cat.png")]},
        ],
        "reasoning_effort": "extreme",
    },
    {"messages": [{"role": "user", "content": [_image("data:image/gif;base64," + PIXEL_PNG)]}]},
    {"messages": [{"role": "user", "content": [_image("data:image/png;base64,!!!")]}]},
    # The first error in the request is the one answered.
    {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": 1}]},
            {"role": "user", "content": [_image("http://example.com/cat.png")]},
        ]
    },
    {
        "messages": [{"role": "user", "content": [_image("http://example.com/cat.png")]}],
        "stream": "yes",
    },
]


@pytest.mark.parametrize("fields", REFUSED_OPENAI_CHATS)
async def test_auto_refuses_an_openai_chat_as_ollama_converts_it(
    auto_proxy: Proxy, emulator: Emulator, fields: dict[str, Any]
) -> None:
    """Ollama converts a chat completion before it looks for the model: an image given
    by its web address is its 400 ("image URLs are not currently supported"), for a
    model that sees images or not, named or not. Where `auto` finds no model to serve
    the request, or is asked for a profile that does not exist, the client gets that
    400 as from Ollama, not `auto`'s own."""
    direct = await post_raw(
        emulator.url, "/v1/chat/completions", orjson.dumps({"model": "qwen2.5:7b", **fields})
    )
    assert direct[0] == 400
    for model in ("auto", "auto:coders", "auto:nope"):
        body = orjson.dumps({"model": model, **fields})
        assert await post_raw(auto_proxy.url, "/v1/chat/completions", body) == direct
    # A request it takes still gets `auto`'s own answer when no model can serve it.
    body = {
        "model": "auto:coders",
        "messages": [{"role": "user", "content": [_image("data:image/png;base64," + PIXEL_PNG)]}],
        "stop": ["a", 1],
    }
    status, answer = await post_raw(auto_proxy.url, "/v1/chat/completions", orjson.dumps(body))
    assert status == 400
    assert "no model can serve" in orjson.loads(answer)["error"]["message"]


# Bodies Ollama refuses on the other routes before it looks at the model: as its
# OpenAI layer binds and converts them (CompletionsMiddleware, EmbeddingsMiddleware),
# or as the handler behind it checks the converted body first (GenerateHandler's and
# ChatHandler's top_logprobs, EmbedHandler's input).
REFUSED_BEFORE_THE_MODEL_ELSEWHERE = [
    ("/v1/completions", {"prompt": "hi", "stream": 5}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "x"}),
    ("/v1/completions", {"prompt": "hi", "stop": ["a", 1]}),
    ("/v1/completions", {"prompt": "hi", "stop": [None]}),
    ("/v1/completions", {"prompt": "hi", "logprobs": 50}),
    ("/v1/completions", {"prompt": ["hi", "there"]}),
    ("/v1/embeddings", {"input": "hi", "encoding_format": 5}),
    ("/v1/embeddings", {"input": "hi", "encoding_format": "int8"}),
    ("/v1/embeddings", {"input": []}),
    ("/v1/embeddings", {"dimensions": "x"}),
    ("/v1/embeddings", {"input": ["a", 1]}),
    ("/api/embed", {"input": 5}),
    ("/api/embed", {"input": ["a", {}]}),
    (
        "/v1/chat/completions",
        {"messages": [_OPENED], "logprobs": True, "top_logprobs": 50, "reasoning_effort": "high"},
    ),
    ("/v1/responses", {"input": 5}),
    ("/v1/responses", {"input": "hi", "stream": "yes"}),
    ("/v1/responses", {"input": [{"type": "nope"}]}),
    ("/v1/responses", {"input": [{"role": "user", "content": [{"type": "input_file"}]}]}),
    ("/v1/responses", {"input": [{"type": "function_call", "arguments": "{"}]}),
    ("/v1/responses", {"input": "hi", "reasoning": {"effort": "extreme"}}),
    ("/v1/messages", {"max_tokens": "x", "messages": [_OPENED]}),
    ("/v1/messages", {"max_tokens": 0, "messages": [_OPENED]}),
    ("/v1/messages", {"max_tokens": 5, "messages": []}),
    ("/v1/messages", {"max_tokens": 5, "messages": [5]}),
    ("/v1/messages", {"max_tokens": 5, "messages": [{"role": "user"}]}),
]


@pytest.mark.parametrize(("path", "fields"), REFUSED_BEFORE_THE_MODEL_ELSEWHERE)
async def test_auto_refuses_a_body_as_ollama_does_before_the_model_on_every_route(
    auto_proxy: Proxy, emulator: Emulator, path: str, fields: dict[str, Any]
) -> None:
    """A profile that does not exist (404) and a request no model of the profile can
    serve (thinking, asked for on a chat, which none of the coders does) are `auto`'s
    answers in the handler's place: a body Ollama refuses before any handler looks at
    the model gets Ollama's 400 instead, byte for byte as a backend writes it. explain,
    on a route it ranks for, refuses it in the same words."""

    def unnumbered(answer: tuple[int, bytes]) -> tuple[int, bytes]:
        # Anthropic's errors carry a request id drawn at random.
        return answer[0], re.sub(rb'"request_id":"req_[0-9a-f]+"', b"", answer[1])

    direct = await post_raw(emulator.url, path, orjson.dumps({"model": "qwen2.5:7b", **fields}))
    assert direct[0] == 400
    for model in ("auto:nope", "auto:coders"):
        body = orjson.dumps({"model": model, **fields})
        answer = await post_raw(auto_proxy.url, path, body)
        assert unnumbered(answer) == unnumbered(direct), model
    if path in RANKED_PATHS:
        status, doc = await explain(auto_proxy, {"model": "auto", **fields}, path)
        assert (status, doc["error"]) == (400, error_text(path, orjson.loads(direct[1])))


def test_ollama_run_auto_leaves_the_choice_open(auto_proxy: Proxy) -> None:
    """`ollama run <model>` turns `think` on for every message when /api/show lists
    "thinking" (cmd.inferThinkingOption), as `ollama launch` configures reasoning from
    /api/tags: `auto` does not list it, so such a client does not hold every request to
    the thinking models; a request that asks for thinking still gets one."""
    client = ollama.Client(host=auto_proxy.url)
    messages = [{"role": "user", "content": "hi"}]
    capabilities = client.show("auto:fast").capabilities or []
    think = True if "thinking" in capabilities else None  # what `ollama run` sends
    as_run = client.chat(model="auto:fast", messages=messages, think=think)
    assert as_run.model == client.chat(model="auto:fast", messages=messages).model
    assert as_run.model != "qwen3:8b"
    assert client.chat(model="auto:fast", messages=messages, think=True).model == "qwen3:8b"
    assert {"completion", "tools", "vision"} <= set(capabilities)


async def test_auto_lists_what_it_offers_as_ollama_lists_a_model(auto_proxy: Proxy) -> None:
    """Ollama 0.30 lists each model's capabilities and context length in /api/tags
    (`ollama launch` sets up tools, vision and the context window from them): `auto`'s
    entries say what its /api/show says."""
    client = ollama.AsyncClient(host=auto_proxy.url)
    async with aiohttp.ClientSession() as session:
        async with session.get(auto_proxy.url + "/api/tags") as resp:
            listed = {m["name"]: m for m in (await resp.json())["models"]}
    for name in ("auto", "auto:fast"):
        show = await client.show(name)
        assert show.modelinfo is not None
        assert listed[name]["capabilities"] == show.capabilities
        assert (
            listed[name]["details"]["context_length"] == show.modelinfo["autoroute.context_length"]
        )
    assert list(listed["auto"])[-1] == "capabilities"  # api.ListModelResponse's order


async def test_a_generate_context_goes_on_with_the_model_that_wrote_it(
    auto_proxy: Proxy,
) -> None:
    """`/api/generate` continues a conversation by the `context` the last answer
    returned: that model's token ids, noise to any other model. `auto` sends it back to
    the model that wrote it, whatever it would choose for the new prompt alone."""
    client = ollama.AsyncClient(host=auto_proxy.url)
    # An image needs a vision model, which `auto` chooses for no text prompt alone.
    first = await client.generate(
        model="auto:best", prompt="What is in this picture?", images=[PIXEL_PNG], options=SHORT
    )
    assert first.context
    _, ranked = await explain(auto_proxy, {"model": "auto:best", "prompt": "And then?"})
    assert ranked["model"] != first.model
    raw = await client._client.post(
        "/api/generate",
        json={
            "model": "auto:best",
            "prompt": "And then?",
            "context": first.context,
            "stream": False,
            "options": SHORT,
        },
    )
    answer = raw.json()
    assert answer["model"] == first.model == raw.headers["x-autoroute-model"]
    assert raw.headers["x-autoroute-reason"] == "context"
    streamed = [
        part
        async for part in await client.generate(
            model="auto:best", prompt="And then?", context=answer["context"], stream=True
        )
    ]
    assert {part.model for part in streamed} == {first.model}
    # A context no answer of this proxy returned is routed as any request.
    other = await client.generate(model="auto:best", prompt="And then?", context=[1, 2, 3])
    assert other.model == ranked["model"]


async def test_auto_embeddings_use_the_configured_model(
    auto_proxy: Proxy, servers: ServerThread, emulator: Emulator, tmp_path: Path
) -> None:
    client = ollama.AsyncClient(host=auto_proxy.url)
    embedded = await client.embed(model="auto", input="hello")
    assert embedded.model == "nomic-embed-text:latest"  # as the model list spells it
    plain = Proxy(servers, [emulator.url], selector=selector(tmp_path, embedding_model=""))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                plain.url + "/api/embed", json={"model": "auto", "input": "x"}
            ) as resp:
                assert resp.status == 400
                assert "embedding_model" in orjson.loads(await resp.read())["error"]
    finally:
        plain.stop()


# A chat model with tools, a coder without them, an embedding model: what a server
# without /api/show lists.
SHOWLESS = ("qwen2.5:7b", "codegemma:7b", "nomic-embed-text:latest")


@pytest.fixture
def showless_proxy(servers: ServerThread, tmp_path: Path) -> Iterator[tuple[Emulator, Proxy]]:
    settings = dataclasses.replace(
        FROZEN, models=SHOWLESS, show_missing=True, version=UNLISTED_CAPABILITIES_VERSION
    )
    own = Emulator(servers, settings)
    prx = Proxy(servers, [own.url], selector=selector(tmp_path))
    yield own, prx
    prx.stop()
    own.stop()


async def test_auto_serves_the_models_of_a_backend_without_api_show(
    showless_proxy: tuple[Emulator, Proxy],
) -> None:
    """A backend whose /api/show is Gin's 404 still lists its models in /api/tags and
    serves them: auto chooses among them, described from their tags entries and the
    catalogue, never the embedding model for a chat, and a request with tools only a
    model the catalogue knows to call them."""
    own, prx = showless_proxy
    assert own.state.requests["/api/show"] >= len(SHOWLESS)  # asked, and 404 each time
    chats = {"qwen2.5:7b", "codegemma:7b"}
    async with aiohttp.ClientSession() as session:
        for profile in ("auto", "auto:best", "auto:fast"):
            body = chat(profile, stream=False, options=SHORT)
            status, doc = await explain(prx, body)
            assert status == 200, doc
            assert {r["model"] for r in doc["ranking"]} == chats
            async with session.post(prx.url + "/api/chat", json=body) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
                assert answer["model"] == resp.headers["X-Autoroute-Model"] == doc["model"]
                assert answer["model"] in chats and answer["done"] is True

        status, doc = await explain(prx, chat("auto:best", tools=TOOLS))
        assert status == 200, doc
        assert doc["model"] == "qwen2.5:7b"
        assert doc["filtered"] == {
            "codegemma:7b": "lacks tools",
            "nomic-embed-text:latest": EMBEDDING_ONLY,
        }
        # Explain says the capabilities are the catalogue's guess, not what show listed.
        (entry,) = doc["ranking"]
        assert entry["capabilities"] == {"listed": ["completion", "tools"], "from": "catalogue"}
        served = own.state.requests["/api/chat"]
        body = chat("auto", tools=TOOLS, stream=False, options=SHORT)
        async with session.post(prx.url + "/api/chat", json=body) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Autoroute-Model"] == "qwen2.5:7b"
        assert own.state.requests["/api/chat"] == served + 1

        # Fill in the middle needs `insert`, which only /api/show tells: no model offers
        # it (nor does auto's show), so Ollama's 400 for a model without it; explain
        # names why.
        fim = {"model": "auto", "prompt": "def f(", "suffix": "return x", "stream": False}
        async with session.post(prx.url + "/api/generate", json=fim) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert error == "registry.ollama.ai/library/auto:latest does not support insert"
        status, doc = await explain(prx, fim)
        assert status == 400 and "no model can serve this request" in doc["error"]
        assert "codegemma:7b: lacks insert" in doc["error"]


async def test_auto_takes_the_capabilities_an_ollama_of_0_30_lists_when_its_show_fails(
    servers: ServerThread, tmp_path: Path
) -> None:
    """From 0.30, Ollama's /api/tags lists each model's capabilities (insert too, which
    the catalogue never guesses): with its /api/show failing, auto takes them from
    there, and a fill in the middle goes to the model that lists insert."""
    own = Emulator(servers, dataclasses.replace(FROZEN, models=SHOWLESS, show_missing=True))
    prx = Proxy(servers, [own.url], selector=selector(tmp_path))
    try:
        status, doc = await explain(prx, chat("auto:best", tools=TOOLS))
        assert status == 200, doc
        (entry,) = doc["ranking"]
        assert entry["capabilities"] == {"listed": ["completion", "tools"], "from": "tags"}
        client = ollama.AsyncClient(host=prx.url)
        filled = await client.generate(
            model="auto", prompt="def f(", suffix="return x", options=SHORT
        )
        assert filled.model == "codegemma:7b" and filled.done
    finally:
        prx.stop()
        own.stop()


async def test_auto_serves_what_an_ollama_before_0_6_4_serves(
    servers: ServerThread, tmp_path: Path
) -> None:
    """An Ollama before 0.6.4 lists no capabilities in /api/show yet serves tools,
    fill in the middle and images, deciding them from each model's template and weights:
    auto sends each such request to a model that takes it, and a chat never to the
    embedding model, rather than answering that no model can serve it."""
    models = ("llama3.1:8b", "gemma2:9b", "codegemma:7b", "llava:7b", "nomic-embed-text:latest")
    old = Emulator(servers, dataclasses.replace(FROZEN, models=models, version="0.6.3"))
    prx = Proxy(servers, [old.url], selector=selector(tmp_path))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(old.url + "/api/show", json={"model": "llava:7b"}) as resp:
                shown = await resp.json()
                assert "capabilities" not in shown and shown["projector_info"]

            status, doc = await explain(prx, chat("auto:best", stream=False, options=SHORT))
            assert status == 200, doc
            assert "nomic-embed-text:latest" not in {r["model"] for r in doc["ranking"]}
            said = {r["model"]: r["capabilities"] for r in doc["ranking"]}
            assert {r["from"] for r in said.values()} == {"template"}, said
            assert "vision" in said["llava:7b"]["listed"], said
            for path, body, model in (
                (
                    "/api/chat",
                    chat("auto", tools=TOOLS, stream=False, options=SHORT),
                    "llama3.1:8b",
                ),
                (
                    "/api/generate",
                    {"model": "auto", "prompt": "def f(", "suffix": "return x", "stream": False},
                    "codegemma:7b",
                ),
                (
                    "/api/generate",
                    {"model": "auto", "prompt": "What is this?", "images": [PIXEL_PNG]},
                    "llava:7b",
                ),
            ):
                async with session.post(prx.url + path, json={**body, "stream": False}) as resp:
                    assert resp.status == 200, await resp.text()
                    assert resp.headers["X-Autoroute-Model"] == model
    finally:
        prx.stop()
        old.stop()


async def test_filters_follow_each_request_and_the_registry(tmp_path: Path) -> None:
    """The hard filters' result is reused between requests: a request that needs
    something else, a longer prompt, another API key or a registry that changed must
    each see their own."""
    config = Config(backends=(Backend(url="http://127.0.0.1:9"),), selector=selector(tmp_path))
    pool = BackendPool(config)
    registry = Registry(pool)
    auto = AutoRouter(config, pool, registry)

    def show(context: int, *capabilities: str) -> dict[str, Any]:
        return {
            "capabilities": ["completion", *capabilities],
            "model_info": {"x.context_length": context},
        }

    models = {
        "big:70b": model_info("big:70b", {}, show(131072, "tools")),
        "small:1b": model_info("small:1b", {}, show(2048)),
        "mid:8b": model_info("mid:8b", {}, show(8192, "tools")),
    }

    def set_models(names: set[str]) -> None:
        registry.set_models({n: m for n, m in models.items() if n in names})
        pool.states[0].models = frozenset(names)

    def ranked(body: dict[str, Any], key: frozenset[str] | None = None) -> set[str]:
        decision = auto.decide("/api/chat", body, "best", key_models=key).decision
        assert not set(decision.filtered) & {s.name for s in decision.ranking}
        return {s.name for s in decision.ranking}

    set_models(set(models))
    everything = set(models)
    assert ranked(chat("auto")) == everything
    assert ranked(chat("auto", tools=TOOLS)) == {"big:70b", "mid:8b"}
    assert ranked(chat("auto")) == everything
    long = chat("auto")
    long["messages"][0]["content"] = "word " * 4000  # ~5k tokens: over small's 2048
    assert ranked(long) == {"big:70b", "mid:8b"}
    assert ranked(chat("auto")) == everything
    assert ranked(chat("auto"), frozenset({"mid:8b"})) == {"mid:8b"}
    assert ranked(chat("auto")) == everything
    set_models({"big:70b", "small:1b"})
    assert ranked(chat("auto")) == {"big:70b", "small:1b"}
    assert ranked(chat("auto", tools=TOOLS)) == {"big:70b"}


def offline_router(
    tmp_path: Path, profiles: dict[str, Profile]
) -> tuple[AutoRouter, Callable[[dict[str, ModelInfo]], None]]:
    """An AutoRouter with `profiles` in front of one backend it never contacts, and a
    function that sets the models that backend has."""
    config = Config(
        backends=(Backend(url="http://127.0.0.1:9"),),
        selector=selector(tmp_path, profiles=profiles),
    )
    pool = BackendPool(config)
    registry = Registry(pool)

    def set_models(models: dict[str, ModelInfo]) -> None:
        registry.set_models(models)
        pool.states[0].models = frozenset(models)

    return AutoRouter(config, pool, registry), set_models


async def test_a_safety_classifier_is_left_out_unless_the_profile_names_it(
    tmp_path: Path,
) -> None:
    """Llama Guard answers every prompt with "safe" or "unsafe": `auto` never sends a
    request to a safety classifier, even when nothing else can serve it, unless the
    profile names it."""
    profiles = {
        "best": Profile(cost_weight=0.0),
        "moderate": Profile(cost_weight=0.0, default_model="llama-guard3:8b"),
    }
    auto, set_models = offline_router(tmp_path, profiles)
    names = {"llama-guard3:8b", "shieldgemma:27b", "llama3.2:1b"}
    set_models({n: model_info(n, {}, {}) for n in names})

    decision = auto.decide("/api/chat", chat("auto:best"), "best").decision
    assert {s.name for s in decision.ranking} == {"llama3.2:1b"}
    assert set(decision.filtered) == {"llama-guard3:8b", "shieldgemma:27b"}
    assert all("safety classifier" in why for why in decision.filtered.values())
    named = auto.decide("/api/chat", chat("auto:moderate"), "moderate").decision
    assert {s.name for s in named.ranking} == {"llama-guard3:8b", "llama3.2:1b"}
    set_models({n: model_info(n, {}, {}) for n in names - {"llama3.2:1b"}})
    with pytest.raises(AutoError, match="no model can serve this request"):
        auto.decide("/api/chat", chat("auto:best"), "best")


async def test_a_cloud_model_gets_no_prompt_unless_the_profile_names_it(tmp_path: Path) -> None:
    """Ollama lists its cloud models (`gpt-oss:120b-cloud`, or any with a `remote_host`)
    beside local ones: `auto` sends a prompt off the backends only to one a profile
    names."""
    profiles = {
        "best": Profile(cost_weight=0.0),
        "cloudy": Profile(cost_weight=0.0, allow=("gpt-oss:120b-cloud", "llama3.2:3b")),
    }
    auto, set_models = offline_router(tmp_path, profiles)
    remote = {"remote_host": "https://ollama.com:443", "remote_model": "kimi-k2:1t"}
    models = {
        "gpt-oss:120b-cloud": model_info("gpt-oss:120b-cloud", {}, {}),
        "kimi-k2:1t": model_info("kimi-k2:1t", remote, {}),
        "llama3.2:3b": model_info("llama3.2:3b", {}, {}),
    }
    set_models(models)

    decision = auto.decide("/api/chat", chat("auto:best"), "best").decision
    assert decision.chosen == "llama3.2:3b"
    assert {s.name for s in decision.ranking} == {"llama3.2:3b"}
    assert decision.filtered == {
        "gpt-oss:120b-cloud": "runs on ollama.com: auto sends a prompt there only if named",
        "kimi-k2:1t": "runs on https://ollama.com:443: auto sends a prompt there only if named",
    }
    named = auto.decide("/api/chat", chat("auto:cloudy"), "cloudy").decision
    assert {s.name for s in named.ranking} == {"gpt-oss:120b-cloud", "llama3.2:3b"}


async def test_autos_show_offers_only_what_its_profile_may_choose(tmp_path: Path) -> None:
    """Editors read auto's show and tags entry as a model's: Copilot Chat and Roo size
    their prompts from its context length and offer image attachments for vision. It
    says what the profile may choose, not what a cloud model, a safety classifier or a
    model outside the profile's lists can do: auto sends them no prompt, and a prompt
    sized for them, or an image, would be answered "no model can serve"."""
    profiles = {
        "balanced": Profile(cost_weight=0.0),  # the default profile: plain `auto`
        "coders": Profile(cost_weight=0.0, allow=("qwen2.5-coder:7b",)),
        "no-coder": Profile(cost_weight=0.0, deny=("qwen2.5-coder:7b",)),
    }
    auto, set_models = offline_router(tmp_path, profiles)

    def shown(capabilities: list[str], architecture: str, context: int) -> dict[str, Any]:
        info = {"general.architecture": architecture, f"{architecture}.context_length": context}
        return {"capabilities": capabilities, "model_info": info}

    remote = {"remote_host": "https://ollama.com:443", "remote_model": "qwen3-vl:235b"}
    set_models(
        {
            "qwen2.5-coder:7b": model_info(
                "qwen2.5-coder:7b", {}, shown(["completion", "tools", "insert"], "qwen2", 32768)
            ),
            "llama3.2:3b": model_info(
                "llama3.2:3b", {}, shown(["completion", "tools"], "llama", 131072)
            ),
            "llama-guard3:8b": model_info(
                "llama-guard3:8b", {}, shown(["completion"], "llama", 200_000)
            ),
            "qwen3-vl:235b-cloud": model_info(
                "qwen3-vl:235b-cloud",
                remote,
                {**shown(["completion", "vision", "tools"], "qwen3vlmoe", 262144), **remote},
            ),
        }
    )
    routes = AutoRoutes(auto, Usage(file_path=str(tmp_path / "events.jsonl")))

    def offered(profile: str) -> tuple[list[str], int]:
        doc = orjson.loads(routes.show(profile).body)  # type: ignore[arg-type]
        return doc["capabilities"], doc["model_info"]["autoroute.context_length"]

    assert offered("balanced") == (["completion", "insert", "tools"], 131072)
    assert offered("coders") == (["completion", "insert", "tools"], 32768)
    assert offered("no-coder") == (["completion", "tools"], 131072)
    entries = {e["name"]: e for e in routes.tag_entries()}
    assert entries["auto:coders"]["details"]["context_length"] == 32768
    assert entries["auto:no-coder"]["capabilities"] == ["completion", "tools"]
    assert entries["auto"]["capabilities"] == ["completion", "insert", "tools"]


async def test_a_base_model_is_left_out_while_an_instruct_one_is_eligible(tmp_path: Path) -> None:
    """A base (`-text`, `-base`) model continues a conversation instead of answering
    it: `auto` sends chats to an instruct model when one can serve, but a profile
    naming a base model keeps it, fill-in-the-middle keeps base coders, and a fleet of
    base models alone is still served."""
    profiles = {
        "best": Profile(cost_weight=0.0),
        "raw": Profile(cost_weight=0.0, allow=("llama3.1:70b-text", "llama3.1:8b")),
    }
    auto, set_fleet = offline_router(tmp_path, profiles)
    fim = {"capabilities": ["completion", "insert"], "model_info": {"x.context_length": 32768}}
    models = {
        "llama3.1:70b-text": model_info("llama3.1:70b-text", {}, {}),
        "llama3.1:8b": model_info("llama3.1:8b", {}, {}),
        "qwen2.5-coder:7b-base": model_info("qwen2.5-coder:7b-base", {}, fim),
    }

    def decide(body: dict[str, Any], profile: str = "best") -> tuple[set[str], dict[str, str]]:
        decision = auto.decide("/api/generate", body, profile).decision
        return {s.name for s in decision.ranking}, decision.filtered

    def set_models(names: set[str]) -> None:
        set_fleet({n: m for n, m in models.items() if n in names})

    set_models(set(models))
    ranked, filtered = decide(chat("auto"))
    assert ranked == {"llama3.1:8b"}
    assert set(filtered) == {"llama3.1:70b-text", "qwen2.5-coder:7b-base"}
    assert all("base (pretrained) model" in why for why in filtered.values())
    assert decide(chat("auto"), "raw")[0] == {"llama3.1:70b-text", "llama3.1:8b"}
    fill = {"model": "auto", "prompt": "def f(", "suffix": "return x"}
    assert decide(fill)[0] == {"qwen2.5-coder:7b-base"}
    set_models({"llama3.1:70b-text", "qwen2.5-coder:7b-base"})
    assert decide(chat("auto"))[0] == {"llama3.1:70b-text", "qwen2.5-coder:7b-base"}


async def get(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json()


async def health_becomes(proxy: Proxy, status: str) -> dict[str, Any]:
    for _ in range(600):
        code, doc = await get(proxy.url + "/api/autoroute/health")
        assert code == 200  # liveness: the proxy runs, whatever its backends
        if doc["status"] == status:
            return doc
        await asyncio.sleep(0.05)
    raise AssertionError(f"health never said {status!r}")


async def test_no_usable_backend_is_503_and_not_ready_while_health_stays_live(
    servers: ServerThread, tmp_path: Path
) -> None:
    a, b = Emulator(servers, FROZEN), Emulator(servers, FROZEN)
    profiles = {"balanced": Profile(), "nothing": Profile(allow=("no-such:model",))}
    health = Health(interval_seconds=0.05, failure_threshold=1, open_seconds=3600)
    proxy = Proxy(
        servers, [a.url, b.url], selector=selector(tmp_path, profiles=profiles), health=health
    )
    try:
        await health_becomes(proxy, "ok")
        assert (await get(proxy.url + "/api/autoroute/ready"))[0] == 200
        # No model fits the request while backends are up: the request's fault, a 400.
        status, body = await post_json(proxy.url + "/api/chat", chat("auto:nothing"))
        assert status == 400 and "no model can serve this request" in body["error"]

        a.stop()
        doc = await health_becomes(proxy, "degraded")
        assert [x["circuit"] for x in doc["backends"]] == ["open", "closed"]
        status, ready = await get(proxy.url + "/api/autoroute/ready")
        assert status == 200 and ready == {"status": "ready", "usable": [b.url]}
        assert (await post_json(proxy.url + "/api/chat", chat("auto", stream=False)))[0] == 200

        b.stop()
        await health_becomes(proxy, "down")
        status, ready = await get(proxy.url + "/api/autoroute/ready")
        assert status == 503 and ready["error"].startswith("no healthy backend: ")
        assert a.url in ready["error"] and b.url in ready["error"]
        # auto with nothing to route to: the backends' state, named, not the client's.
        for profile in ("auto", "auto:nothing"):
            status, body = await post_json(proxy.url + "/api/chat", chat(profile))
            assert status == 503 and body["error"].startswith("no healthy backend: ")
    finally:
        proxy.stop()
        a.stop()
        b.stop()


async def test_an_answer_no_backend_gave_names_no_model(
    servers: ServerThread, tmp_path: Path
) -> None:
    """The backend whose model `auto` chose went down after its last check: the proxy's
    own 503 says so, and names no model in X-Autoroute-Model (nor why it was chosen),
    as no model answered; the same as for a request naming that model."""
    emulator = Emulator(servers, dataclasses.replace(FROZEN, models=("gemma2:9b",)))
    health = Health(interval_seconds=3600, failure_threshold=1, open_seconds=3600)
    proxy = Proxy(servers, [emulator.url], selector=selector(tmp_path), health=health)
    try:
        await health_becomes(proxy, "ok")
        emulator.stop()
        for model in ("auto", "auto:fast", "gemma2:9b"):
            async with (
                aiohttp.ClientSession() as session,
                session.post(proxy.url + "/api/chat", json=chat(model, stream=False)) as resp,
            ):
                body = orjson.loads(await resp.read())
                own = {k: v for k, v in resp.headers.items() if k.startswith("X-Autoroute-")}
            assert resp.status == 503 and body["error"].startswith("no healthy backend: "), body
            assert own == {}, (model, own)
    finally:
        proxy.stop()
        emulator.stop()


async def test_a_model_whose_backends_no_request_reached_is_not_failed_by_it(
    servers: ServerThread, tmp_path: Path
) -> None:
    """The backend of the model `auto` chose went down after its last check: the
    proxy's own 503 says the request reached no backend (`unreached`), and what `auto`
    learns counts it against no model. Its 500 while it was up (a runner that died)
    fails the model."""
    emulator = Emulator(servers, dataclasses.replace(FROZEN, models=("gemma2:9b",)))
    health = Health(interval_seconds=3600, failure_threshold=100, open_seconds=3600)
    usage = file_usage(tmp_path)
    proxy = Proxy(servers, [emulator.url], selector=selector(tmp_path), health=health, usage=usage)
    try:
        await health_becomes(proxy, "ok")
        ids = []
        async with aiohttp.ClientSession() as session:
            emulator.state.fault = "error500"
            for expected in (500, 503):
                async with session.post(
                    proxy.url + "/api/chat", json=chat("auto", stream=False)
                ) as resp:
                    assert resp.status == expected, await resp.text()
                    ids.append(resp.headers["X-Request-Id"])
                emulator.stop()
        died, down = await events_of(usage, *ids)
    finally:
        proxy.stop()
        emulator.stop()
    assert died["decision"]["chosen"] == down["decision"]["chosen"] == "gemma2:9b"
    assert not died["outcome"].get("unreached")
    assert outcome.of_event(died) == outcome.Result(0.0, outcome.FAILED, "error")
    assert down["outcome"]["unreached"] is True, down
    assert down["outcome"]["error"].startswith("no healthy backend: ")
    assert outcome.of_event(down) is None and learning.decision_of(down) is None


async def test_a_request_no_backend_could_take_reached_none(
    servers: ServerThread, tmp_path: Path
) -> None:
    """A backend that cannot be connected to: the proxy's own 503 says the request
    reached none (`unreached`), when its connect failed and, its circuit open, when
    none could take it at all."""
    usage = file_usage(tmp_path)
    health = Health(interval_seconds=3600, failure_threshold=1, open_seconds=3600)
    proxy = Proxy(servers, [f"http://127.0.0.1:{free_port()}"], usage=usage, health=health)
    ids = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                body = chat("gemma2:9b", stream=False)
                async with session.post(proxy.url + "/api/chat", json=body) as resp:
                    assert resp.status == 503, await resp.text()
                    ids.append(resp.headers["X-Request-Id"])
        events = await events_of(usage, *ids)
    finally:
        proxy.stop()
    for event in events:
        assert event["outcome"]["unreached"] is True, event
        assert outcome.failed(event["outcome"]["status"], event["outcome"]["error"])


async def test_a_request_only_a_down_backends_model_serves_is_503_as_for_that_model(
    servers: ServerThread, tmp_path: Path
) -> None:
    """A request only a model of a backend that is down could serve (tools, where the
    usable backend's models call none) is the 503 a request naming that model gets,
    which says the fleet cannot serve it for now, and which clients retry: not the 400
    that says `auto` never calls tools, which `ollama run` ends its session on. Explain
    answers the same; once the backend listens again, it serves the request."""
    plain = Emulator(servers, dataclasses.replace(FROZEN, models=("gemma2:9b",)))
    tooled = Emulator(servers, dataclasses.replace(FROZEN, models=("qwen2.5:7b",)))
    health = Health(interval_seconds=0.05, failure_threshold=1, open_seconds=3600)
    proxy = Proxy(servers, [plain.url, tooled.url], selector=selector(tmp_path), health=health)
    tools = chat("auto", stream=False, tools=TOOLS)
    try:
        await health_becomes(proxy, "ok")
        tooled.stop()
        await health_becomes(proxy, "degraded")
        # So is a load asking for tools (`ollama run` loads before it chats).
        load = {"model": "auto", "tools": TOOLS}
        for path, asked in (
            ("/api/chat", tools),
            ("/api/autoroute/explain", tools),
            ("/api/chat", load),
        ):
            status, body = await post_json(proxy.url + path, asked)
            assert status == 503, (path, body)
            assert body["error"].startswith("no healthy backend: ") and tooled.url in body["error"]
            assert plain.url not in body["error"], body
        # What the usable backend's model serves, it serves.
        status, body = await post_json(proxy.url + "/api/chat", chat("auto", stream=False))
        assert status == 200 and body["model"] == "gemma2:9b", body
        tooled.restart()
        status, body = await post_json(proxy.url + "/api/chat", tools)
        assert status == 200 and body["model"] == "qwen2.5:7b", body
    finally:
        proxy.stop()
        plain.stop()
        tooled.stop()


async def test_auto_offers_what_a_down_backends_model_will_serve_as_its_requests_say(
    servers: ServerThread, tmp_path: Path
) -> None:
    """While the backend of the only model that calls tools is down, a tools request to
    `auto` is that model's 503, which clients retry, not the 400 "does not support
    tools": `auto`'s show and its /api/tags entry still list tools (an editor deciding
    whether to send tools reads them), as they list what a request gets. Its context is
    the reachable models': a longer prompt goes to one of them, cut to fit, not to the
    model that is down."""
    plain = Emulator(servers, dataclasses.replace(FROZEN, models=("gemma2:9b",)))
    tooled = Emulator(servers, dataclasses.replace(FROZEN, models=("llama3.1:8b",)))
    health = Health(interval_seconds=0.05, failure_threshold=1, open_seconds=3600)
    proxy = Proxy(servers, [plain.url, tooled.url], selector=selector(tmp_path), health=health)
    try:
        await health_becomes(proxy, "ok")
        status, up = await post_json(proxy.url + "/api/show", {"model": "auto"})
        assert status == 200 and "tools" in up["capabilities"], up
        assert up["model_info"]["autoroute.context_length"] == 131072
        tooled.stop()
        await health_becomes(proxy, "degraded")
        # A load with tools (`ollama run`), as a chat with them: the 503, not a refusal.
        load = {"model": "auto", "tools": TOOLS}
        status, refused = await post_json(proxy.url + "/api/chat", load)
        assert status == 503, refused
        status, shown = await post_json(proxy.url + "/api/show", {"model": "auto"})
        assert status == 200
        assert shown["capabilities"] == up["capabilities"], shown
        assert shown["template"] == up["template"]
        assert shown["model_info"]["autoroute.context_length"] == 8192
        status, listed = await get(proxy.url + "/api/tags")
        (entry,) = [m for m in listed["models"] if m["name"] == "auto"]
        assert entry["capabilities"] == up["capabilities"], entry
        assert entry["details"]["context_length"] == 8192
    finally:
        proxy.stop()
        plain.stop()
        tooled.stop()


async def post_json(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_filter_and_row_caches_hold_only_the_registry_list_in_use(tmp_path: Path) -> None:
    """Each health check's refresh makes a new candidate list; what was cached for the
    lists before it is dropped, not kept until a size cap."""
    config = Config(
        backends=(Backend(url="http://127.0.0.1:9"),), selector=selector(tmp_path, artifact="")
    )
    pool = BackendPool(config)
    registry = Registry(pool)
    auto = AutoRouter(config, pool, registry)
    assert auto.scorer.reload()  # the shipped artifact: its rows cache is in use
    show = {"capabilities": ["completion", "tools"], "model_info": {"x.context_length": 8192}}
    models = {n: model_info(n, {}, show) for n in ("llama3.1:8b", "qwen2.5:7b", "mistral:7b")}
    pool.states[0].models = frozenset(models)
    for _ in range(1000):
        registry.set_models(dict(models))  # what each refresh does
        auto.decide("/api/chat", chat("auto"), "best")
        auto.decide("/api/chat", chat("auto", tools=TOOLS), "fast")
    assert len(auto._eligible) == 2  # one per (profile, needs) of the current list
    artifact = auto.scorer.artifact
    assert artifact is not None
    assert 1 <= len(artifact.rows) <= 2


@pytest.mark.parametrize(
    ("model", "profile"),
    [
        ("auto", "balanced"),
        ("AUTO:Best", "best"),
        ("auto:latest", "balanced"),
        # `:local` asks for the model on the backend (Ollama's modelref), which for
        # `auto` is the proxy's own: the name without it.
        ("auto:local", "balanced"),
        ("auto:best:local", "best"),
        ("auto:best:LOCAL ", "best"),
        ("auto:nonexistent", "nonexistent"),
        ("qwen2.5:7b", None),
        ("qwen2.5:7b:local", None),
        ("library/auto", None),
    ],
)
def test_the_profile_an_auto_name_asks_for(model: str, profile: str | None) -> None:
    assert profile_of(model, "balanced") == profile


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/api/show", {}),
        ("/api/generate", {"prompt": "hi"}),
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
    ],
)
async def test_an_auto_name_with_an_empty_tag_is_ollamas_invalid_name(
    auto_proxy: Proxy, emulator: Emulator, path: str, fields: dict[str, Any]
) -> None:
    """`auto:` is no name Ollama parses (model.ParseName leaves its tag missing): the
    400 it gives any such name (writeModelRefParseError), not an unknown profile's 404, as
    for a model's name with its tag missing."""
    direct = await post_raw(emulator.url, path, orjson.dumps({"model": "qwen2.5:", **fields}))
    assert direct == (400, b'{"error":"invalid model name"}')
    for model in ("auto:", "qwen2.5:", "AUTO:"):
        answer = await post_raw(auto_proxy.url, path, orjson.dumps({"model": model, **fields}))
        assert answer == direct


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/api/embed", {"input": "x", "truncate": "yes"}),
        ("/api/embed", {"input": "x", "dimensions": 1.5}),
        ("/api/embeddings", {"prompt": 1}),
    ],
)
async def test_an_auto_embedding_body_ollama_cannot_read_gets_its_400_first(
    servers: ServerThread, emulator: Emulator, tmp_path: Path, path: str, fields: dict[str, Any]
) -> None:
    """EmbedHandler and EmbeddingsHandler bind the body before they look at the model:
    a field of the wrong type is their 400 for `auto` too, before the 400 of a proxy
    with no embedding model configured (as with one, from the backend)."""
    direct = await post_raw(emulator.url, path, orjson.dumps({"model": "all-minilm", **fields}))
    assert direct[0] == 400
    plain = Proxy(servers, [emulator.url], selector=selector(tmp_path, embedding_model=""))
    try:
        answer = await post_raw(plain.url, path, orjson.dumps({"model": "auto", **fields}))
    finally:
        plain.stop()
    assert answer == direct


async def test_a_thinking_model_is_expected_to_take_longer_unless_told_not_to_think(
    tmp_path: Path,
) -> None:
    """Before it has answered here, a model that thinks is expected to write its
    thinking first (`telemetry.THINKING_TOKENS` times the answer), so a profile that
    weighs time does not take it for the quickest; a request that turns thinking off
    expects it to take as long as any model of its size."""
    auto, set_models = offline_router(tmp_path, {"fast": Profile(cost_weight=0.2)})

    def show(*capabilities: str) -> dict[str, Any]:
        return {"capabilities": ["completion", *capabilities], "model_info": {}}

    tag = {"details": {"parameter_size": "8B", "quantization_level": "Q4_K_M"}}
    set_models(
        {
            "thinker:8b": model_info("thinker:8b", tag, show("thinking")),
            "plain:8b": model_info("plain:8b", tag, show()),
        }
    )

    def seconds(body: dict[str, Any]) -> dict[str, float]:
        decision = auto.decide("/api/chat", body, "fast").decision
        return {s.name: s.seconds for s in decision.ranking}

    thinks = seconds(chat("auto:fast"))
    assert thinks["thinker:8b"] > 2 * thinks["plain:8b"]  # loading and the prompt alike
    told_not_to = seconds(chat("auto:fast", think=False))
    assert told_not_to["thinker:8b"] == pytest.approx(told_not_to["plain:8b"])


async def test_a_token_limit_too_short_for_thinking_leaves_the_thinking_models_out(
    tmp_path: Path,
) -> None:
    """Ollama counts a thinking model's thinking in the request's token limit, and the
    thinking comes first: under a limit of a few dozen tokens (an editor's completion,
    a chat UI's title) its answer is empty. Such a request goes to a model that does
    not think while one is eligible; with thinking turned off, or asked for, or a
    limit with room, the thinking model stays."""
    auto, set_models = offline_router(tmp_path, {"best": Profile(cost_weight=0.0)})
    tag = {"details": {"family": "qwen3", "parameter_size": "32B"}}
    small = {"details": {"family": "llama", "parameter_size": "3B"}}
    set_models(
        {
            "qwen3:32b": model_info(
                "qwen3:32b", tag, {"capabilities": ["completion", "thinking"], "model_info": {}}
            ),
            "llama3.2:3b": model_info(
                "llama3.2:3b", small, {"capabilities": ["completion"], "model_info": {}}
            ),
        }
    )

    def chosen(path: str, body: dict[str, Any]) -> tuple[str, dict[str, str]]:
        decision = auto.decide(path, body, "best").decision
        return decision.chosen, decision.filtered

    assert chosen("/api/chat", chat("auto:best"))[0] == "qwen3:32b"
    short = [
        ("/api/chat", chat("auto:best", options={"num_predict": 16})),
        ("/v1/chat/completions", chat("auto:best", max_tokens=16)),
        ("/v1/completions", {"model": "auto:best", "prompt": "def add(a, b):", "max_tokens": 8}),
    ]
    for path, body in short:
        model, filtered = chosen(path, body)
        assert model == "llama3.2:3b", (path, filtered)
        assert filtered["qwen3:32b"].startswith("thinks first"), filtered
    roomy = {"num_predict": 4096}
    assert chosen("/api/chat", chat("auto:best", options=roomy))[0] == "qwen3:32b"
    # A limit the route does not read bounds nothing (Ollama drops /v1's `options`).
    unread = chat("auto:best", options={"num_predict": 16})
    assert chosen("/v1/chat/completions", unread)[0] == "qwen3:32b"
    for think in (False, True):
        body = chat("auto:best", options={"num_predict": 16}, think=think)
        assert chosen("/api/chat", body)[0] == "qwen3:32b", think


# Each API's way of turning thinking off, and the routes whose request has it.
THINKING_OFF = [
    (("/api/chat",), {"think": False}),
    (("/v1/chat/completions",), {"reasoning_effort": "none"}),
    (("/v1/chat/completions", "/v1/responses"), {"reasoning": {"effort": "none"}}),
    (("/v1/messages",), {"thinking": {"type": "disabled"}}),
]


@pytest.mark.parametrize(("paths", "off"), THINKING_OFF)
async def test_gpt_oss_is_expected_to_think_even_when_told_not_to(
    tmp_path: Path, paths: tuple[str, ...], off: dict[str, Any]
) -> None:
    """Ollama ignores `think: false` for gpt-oss (its effort is a level; the trace
    cannot be turned off, docs/capabilities/thinking.mdx): a request that turns
    thinking off still waits for its thinking, so it is not taken for as quick as a
    model of its size that answers at once."""
    auto, set_models = offline_router(tmp_path, {"fast": Profile(cost_weight=0.2)})
    show = {"capabilities": ["completion", "tools", "thinking"], "model_info": {}}
    # Names the catalogue does not list: the architecture alone tells them apart.
    harmony = {"details": {"family": "gptoss", "parameter_size": "8B"}}
    qwen3 = {"details": {"family": "qwen3", "parameter_size": "8B"}}
    set_models(
        {
            "harmony-ft:8b": model_info("harmony-ft:8b", harmony, show),
            "qwen-ft:8b": model_info("qwen-ft:8b", qwen3, show),
        }
    )

    def seconds(**body: Any) -> dict[str, float]:
        decision = auto.decide(paths[0], chat("auto:fast", **body), "fast").decision
        return {s.name: s.seconds for s in decision.ranking}

    thinks = seconds()
    assert thinks["harmony-ft:8b"] == pytest.approx(thinks["qwen-ft:8b"])
    told_not_to = seconds(**off)
    assert told_not_to["harmony-ft:8b"] == pytest.approx(thinks["harmony-ft:8b"])
    assert told_not_to["qwen-ft:8b"] < thinks["qwen-ft:8b"] / 2


@pytest.mark.parametrize(("paths", "off"), THINKING_OFF)
async def test_thinking_is_turned_off_only_by_a_field_the_route_has(
    tmp_path: Path, paths: tuple[str, ...], off: dict[str, Any]
) -> None:
    """Each way of turning thinking off, sent on the other routes, is a field their
    request lacks: Ollama drops it, and the thinking model thinks, so it is expected
    to take as long as when nothing is said."""
    auto, set_models = offline_router(tmp_path, {"fast": Profile(cost_weight=0.2)})
    show = {"capabilities": ["completion", "thinking"], "model_info": {}}
    tag = {"details": {"parameter_size": "8B", "quantization_level": "Q4_K_M"}}
    set_models({"thinker:8b": model_info("thinker:8b", tag, show)})

    def seconds(route: str, body: dict[str, Any]) -> float:
        return auto.decide(route, body, "fast").decision.ranking[0].seconds

    for route in ("/api/chat", "/v1/chat/completions", "/v1/responses", "/v1/messages"):
        thinks = seconds(route, chat("auto:fast"))
        told = seconds(route, chat("auto:fast", **off))
        if route in paths:
            assert told < thinks / 2, route
        else:
            assert told == pytest.approx(thinks), route


async def test_names_of_the_same_weights_are_one_candidate(tmp_path: Path) -> None:
    """`ollama pull llama3.2` then `ollama pull llama3.2:3b` (or `ollama cp`) lists one
    model's weights under two names of one digest: `auto` ranks, explores and learns
    them as one model, under the name an API key may use, and explain says which name
    stands for the others. Other weights, or no digest, are other models."""
    profiles = {
        "best": Profile(cost_weight=0.0),
        "latest": Profile(cost_weight=0.0, default_model="llama3.2:latest"),
    }
    auto, set_models = offline_router(tmp_path, profiles)

    def tagged(name: str, digest: str | None) -> ModelInfo:
        return model_info(name, {"name": name, "digest": digest} if digest else {"name": name}, {})

    def decide(key: frozenset[str] | None = None, profile: str = "best") -> Any:
        return auto.decide("/api/chat", chat("auto"), profile, key_models=key).decision

    set_models(
        {
            "llama3.2:latest": tagged("llama3.2:latest", "a" * 64),
            "llama3.2:3b": tagged("llama3.2:3b", "a" * 64),
            "qwen3:8b": tagged("qwen3:8b", "b" * 64),
        }
    )
    decision = decide()
    assert {s.name for s in decision.ranking} == {"llama3.2:3b", "qwen3:8b"}
    assert decision.filtered == {"llama3.2:latest": "the same weights as llama3.2:3b"}
    # A key allowed only one of the names has the weights under that name.
    only_latest = decide(frozenset({"llama3.2:latest", "qwen3:8b"}))
    assert {s.name for s in only_latest.ranking} == {"llama3.2:latest", "qwen3:8b"}
    assert only_latest.filtered == {}
    # The profile's default model stands for its weights.
    named = decide(profile="latest")
    assert {s.name for s in named.ranking} == {"llama3.2:latest", "qwen3:8b"}
    assert named.filtered == {"llama3.2:3b": "the same weights as llama3.2:latest"}

    set_models(
        {
            "llama3.2:latest": tagged("llama3.2:latest", "a" * 64),
            "llama3.2:3b": tagged("llama3.2:3b", "c" * 64),
            "mine:latest": tagged("mine:latest", None),
            "mine:v1": tagged("mine:v1", None),
        }
    )
    decision = decide()
    assert {s.name for s in decision.ranking} == {
        "llama3.2:latest",
        "llama3.2:3b",
        "mine:latest",
        "mine:v1",
    }
    assert decision.filtered == {}


async def test_a_copied_model_is_explained_as_the_same_weights(
    servers: ServerThread, tmp_path: Path
) -> None:
    """`ollama cp llama3.1:8b llama3.1:latest` on a backend: both names are listed, with
    one digest, and explain ranks the weights once, under the explicit tag."""
    own = Emulator(servers, FROZEN)
    prx = Proxy(
        servers, [own.url], selector=selector(tmp_path), health=Health(interval_seconds=3600)
    )
    try:
        copy = {"source": "llama3.1:8b", "destination": "llama3.1:latest"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(own.url + "/api/copy", json=copy) as resp,
        ):
            assert resp.status == 200
        prx.thread.call(prx.app[APP_KEY].backends.refresh_all)
        _, tags = await get(own.url + "/api/tags")
        digests = {m["name"]: m["digest"] for m in tags["models"]}
        assert digests["llama3.1:latest"] == digests["llama3.1:8b"]
        assert len(set(digests.values())) == len(digests) - 1
        status, doc = await explain(prx, chat("auto:best"))
        assert status == 200, doc
        assert doc["filtered"]["llama3.1:latest"] == "the same weights as llama3.1:8b"
        ranked = {entry["model"] for entry in doc["ranking"]}
        assert "llama3.1:8b" in ranked and "llama3.1:latest" not in ranked
    finally:
        prx.stop()
        own.stop()


async def test_a_name_with_other_weights_on_another_backend_is_not_merged(
    servers: ServerThread, tmp_path: Path
) -> None:
    """`mine:1` is a copy of llama3.1:8b on one backend and of qwen2.5:7b on another:
    the name stands for no one digest, so it is a model of its own."""
    first, second = Emulator(servers, FROZEN), Emulator(servers, FROZEN)
    prx = Proxy(
        servers,
        [first.url, second.url],
        selector=selector(tmp_path),
        health=Health(interval_seconds=3600),
    )
    try:
        async with aiohttp.ClientSession() as session:
            for emu, source in ((first, "llama3.1:8b"), (second, "qwen2.5:7b")):
                copy = {"source": source, "destination": "mine:1"}
                async with session.post(emu.url + "/api/copy", json=copy) as resp:
                    assert resp.status == 200
        app = prx.app[APP_KEY]
        prx.thread.call(app.backends.refresh_all)
        assert app.registry.models["mine:1"].digest == ""
        assert app.registry.models["llama3.1:8b"].digest
        status, doc = await explain(prx, chat("auto:best"))
        assert status == 200, doc
        assert "mine:1" not in doc["filtered"] and "llama3.1:8b" not in doc["filtered"]
    finally:
        prx.stop()
        first.stop()
        second.stop()


# What each route's request says before the field under test: a prompt Ollama answers.
ROUTE_BODIES: dict[str, dict[str, Any]] = {
    "/api/generate": {"prompt": "Hi", "options": SHORT},
    "/api/chat": {"messages": [{"role": "user", "content": "Hi"}], "options": SHORT},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    "/v1/completions": {"prompt": "Hi", "max_tokens": 4},
    "/v1/responses": {"input": "Hi", "max_output_tokens": 4},
    "/v1/messages": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
}
PNG_URL = "data:image/png;base64," + PIXEL_PNG
OLLAMA_IMAGE_TURN = {"role": "user", "content": "What is it?", "images": [PIXEL_PNG]}
ANTHROPIC_IMAGE = {
    "type": "image",
    "source": {"type": "base64", "media_type": "image/png", "data": PIXEL_PNG},
}
NAMED_TOOL = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}

# Fields the route's request does not have (api.GenerateRequest, api.ChatRequest,
# openai.ChatCompletionRequest, openai.CompletionRequest, openai.ResponsesRequest,
# anthropic.MessagesRequest): Ollama decodes the body without them, so they ask
# nothing of the model.
IGNORED_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("/api/chat", {"suffix": "return x"}),
    ("/api/chat", {"images": [PIXEL_PNG]}),
    ("/api/chat", {"reasoning_effort": "high"}),
    ("/api/chat", {"thinking": {"type": "enabled"}}),
    ("/api/chat", {"input": [OLLAMA_IMAGE_TURN]}),
    ("/api/generate", {"messages": [OLLAMA_IMAGE_TURN]}),
    ("/api/generate", {"tools": TOOLS}),
    ("/api/generate", {"reasoning": {"effort": "high"}}),
    ("/v1/chat/completions", {"suffix": "return x"}),
    ("/v1/chat/completions", {"think": True}),
    ("/v1/chat/completions", {"thinking": {"type": "enabled"}}),
    ("/v1/chat/completions", {"images": [PIXEL_PNG]}),
    ("/v1/chat/completions", {"messages": [OLLAMA_IMAGE_TURN]}),
    ("/v1/chat/completions", {"reasoning": {}, "reasoning_effort": "high"}),
    ("/v1/completions", {"tools": TOOLS}),
    ("/v1/completions", {"images": [PIXEL_PNG]}),
    ("/v1/completions", {"think": True}),
    ("/v1/completions", {"reasoning_effort": "high"}),
    ("/v1/responses", {"suffix": "return x"}),
    ("/v1/responses", {"think": True}),
    ("/v1/responses", {"reasoning_effort": "high"}),
    ("/v1/responses", {"images": [PIXEL_PNG]}),
    ("/v1/responses", {"messages": [OLLAMA_IMAGE_TURN]}),
    ("/v1/responses", {"input": [{"role": "user", "content": "Hi", "images": [PIXEL_PNG]}]}),
    (
        "/v1/responses",
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": ""}]}]},
    ),
    ("/v1/messages", {"suffix": "return x"}),
    ("/v1/messages", {"images": [PIXEL_PNG]}),
    ("/v1/messages", {"messages": [OLLAMA_IMAGE_TURN]}),
]
# Fields the route's request has, each asking for a capability gemma2 lacks.
ASKING_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("/api/generate", {"suffix": "return x"}, "insert"),
    ("/api/generate", {"images": [PIXEL_PNG]}, "vision"),
    ("/api/generate", {"think": True}, "thinking"),
    ("/api/chat", {"tools": TOOLS}, "tools"),
    ("/api/chat", {"messages": [OLLAMA_IMAGE_TURN]}, "vision"),
    ("/api/chat", {"think": "low"}, "thinking"),
    ("/v1/chat/completions", {"tools": TOOLS}, "tools"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [_image(PNG_URL)]}]},
        "vision",
    ),
    ("/v1/chat/completions", {"reasoning_effort": "high"}, "thinking"),
    ("/v1/chat/completions", {"reasoning": {"effort": "low"}}, "thinking"),
    ("/v1/completions", {"suffix": "return x"}, "insert"),
    ("/v1/responses", {"tools": [NAMED_TOOL]}, "tools"),
    (
        "/v1/responses",
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": PNG_URL}]}]},
        "vision",
    ),
    (
        "/v1/responses",
        {
            "input": [
                {"type": "function_call", "call_id": "c", "name": "lookup", "arguments": "{}"},
                {
                    "type": "function_call_output",
                    "call_id": "c",
                    "output": [{"type": "input_image", "image_url": PNG_URL}],
                },
            ]
        },
        "vision",
    ),
    ("/v1/responses", {"reasoning": {"effort": "high"}}, "thinking"),
    ("/v1/messages", {"tools": [{"name": "f", "input_schema": {"type": "object"}}]}, "tools"),
    ("/v1/messages", {"messages": [{"role": "user", "content": [ANTHROPIC_IMAGE]}]}, "vision"),
    (
        "/v1/messages",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t", "content": [ANTHROPIC_IMAGE]}
                    ],
                }
            ]
        },
        "vision",
    ),
]


@pytest.fixture(scope="module")
def plain_fleet(servers: ServerThread) -> Iterator[tuple[Emulator, Proxy]]:
    """A fleet of one model that completes text and nothing else (no tools, vision,
    insert or thinking)."""
    emu = Emulator(servers, dataclasses.replace(FROZEN, models=("gemma2:9b",)))
    prx = Proxy(servers, [emu.url])
    yield emu, prx
    prx.stop()
    emu.stop()


@pytest.mark.parametrize(("path", "fields"), IGNORED_FIELDS)
async def test_a_field_the_route_does_not_have_asks_no_capability(
    plain_fleet: tuple[Emulator, Proxy], path: str, fields: dict[str, Any]
) -> None:
    """A `suffix` on a chat, images in `messages` of a generate, tools on a completion:
    Ollama's handler reads the body into its route's request, which has no such field,
    and answers. `auto` serves it as the model named would be served, rather than a
    400 for a capability nothing asks for."""
    emu, prx = plain_fleet
    body = {**ROUTE_BODIES[path], **fields, "stream": False}
    async with aiohttp.ClientSession() as http:
        async with http.post(emu.url + path, json={**body, "model": "gemma2:9b"}) as resp:
            assert resp.status == 200, await resp.text()
        async with http.post(prx.url + path, json={**body, "model": "auto"}) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Autoroute-Model"] == "gemma2:9b"


# Output limits a route's request has, and limits it lacks (Ollama reads max_tokens
# alone of OpenAI's chat and completions, `options` on none of its /v1 routes, and
# top-level limits on none of its own), each of 4 tokens.
OWN_LIMITS: dict[str, dict[str, Any]] = {
    "/api/generate": {"options": SHORT},
    "/api/chat": {"options": SHORT},
    "/v1/chat/completions": {"max_tokens": 4},
    "/v1/completions": {"max_tokens": 4},
    "/v1/responses": {"max_output_tokens": 4},
    "/v1/messages": {"max_tokens": 4},
}
IGNORED_LIMITS: list[tuple[str, dict[str, Any]]] = [
    ("/api/generate", {"max_tokens": 4}),
    ("/api/chat", {"max_tokens": 4}),
    ("/api/chat", {"max_completion_tokens": 4}),
    ("/v1/chat/completions", {"max_completion_tokens": 4}),
    ("/v1/chat/completions", {"options": SHORT}),
    ("/v1/chat/completions", {"max_output_tokens": 4}),
    ("/v1/completions", {"options": SHORT}),
    ("/v1/responses", {"max_tokens": 4}),
    ("/v1/messages", {"max_output_tokens": 4, "max_tokens": 4096}),
]


@pytest.mark.parametrize(("path", "fields"), IGNORED_LIMITS)
async def test_only_a_limit_the_route_reads_shortens_the_expected_answer(
    plain_fleet: tuple[Emulator, Proxy], path: str, fields: dict[str, Any]
) -> None:
    """`auto` expects an answer cut at the request's token limit only where Ollama
    reads that limit: a `max_completion_tokens` on OpenAI's chat (which Ollama drops)
    leaves the model writing as long as without it, so its expected seconds are those
    of the request without a limit, as a limit the route has shortens them."""
    _, prx = plain_fleet
    body = {k: v for k, v in ROUTE_BODIES[path].items() if k not in ("options", "max_tokens")} | {
        "model": "auto"
    }
    if path == "/v1/responses":
        body.pop("max_output_tokens")
    if path == "/v1/messages":
        body["max_tokens"] = 4096  # Anthropic's requests always carry one

    async def seconds(doc: dict[str, Any]) -> float:
        status, explained = await explain(prx, doc, path)
        assert status == 200, explained
        (entry,) = explained["ranking"]
        return float(entry["expected_seconds"])

    # The three read in one state of the fleet: the proxy's health checks (what is
    # loaded, each model's details) may change expected seconds between two requests,
    # so the three are read again until the unbounded answer is the same after them.
    for _ in range(20):
        unbounded = await seconds(body)
        limited = await seconds({**body, **OWN_LIMITS[path]})
        ignored = await seconds({**body, **fields})
        if await seconds(body) == unbounded:
            break
    assert limited < unbounded
    assert ignored == unbounded


async def _auto_refused(
    server: Proxy | Emulator, path: str, fields: dict[str, Any], model: str = "auto"
) -> str:
    """The message of `auto`'s 400 (or `model`'s) to the route's body with `fields`."""
    body = {**ROUTE_BODIES[path], **fields, "model": model, "stream": False}
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + path, json=body) as resp:
            assert resp.status == 400, await resp.text()
            return error_text(path, await resp.json())


@pytest.mark.parametrize(("path", "fields", "capability"), ASKING_FIELDS)
async def test_a_field_the_route_has_still_asks_its_capability(
    plain_fleet: tuple[Emulator, Proxy], path: str, fields: dict[str, Any], capability: str
) -> None:
    """The same fields where the route's request has them: the model must have the
    capability, and a fleet without one answers with Ollama's 400 for a model without
    it (`AutoRoutes.unoffered`), but for an image, which Ollama refuses only as its
    runner reads it: `auto`'s 400 naming the model that lacks vision."""
    emu, prx = plain_fleet
    error = await _auto_refused(prx, path, fields)
    if capability == "vision":
        assert f"gemma2:9b: lacks {capability}" in error, error
    else:
        direct = await _auto_refused(emu, path, fields, model="gemma2:9b")
        assert capability in direct, direct
        # Thinking's names the model as written, the others by its full name.
        assert error == direct.replace('"gemma2:9b"', '"auto"').replace("gemma2:9b", "auto:latest")


@pytest.mark.parametrize(("path", "fields", "capability"), ASKING_FIELDS)
async def test_a_capable_model_serves_what_the_route_asks(
    auto_proxy: Proxy, path: str, fields: dict[str, Any], capability: str
) -> None:
    body = {**ROUTE_BODIES[path], **fields, "model": "auto:best"}
    status, doc = await explain(auto_proxy, body, path)
    assert status == 200, doc
    async with aiohttp.ClientSession() as http:
        async with http.post(auto_proxy.url + "/api/show", json={"model": doc["model"]}) as resp:
            assert capability in (await resp.json())["capabilities"]
    assert any(why == f"lacks {capability}" for why in doc["filtered"].values()), doc


# More bytes than gemma2:9b's context (8192 tokens) holds at four bytes a token.
LONG_TEXT = "word " * 8_000


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/api/chat", {"prompt": LONG_TEXT}),
        ("/api/chat", {"system": LONG_TEXT, "suffix": LONG_TEXT}),
        ("/api/generate", {"messages": [{"role": "user", "content": LONG_TEXT}]}),
        ("/api/generate", {"input": LONG_TEXT, "instructions": LONG_TEXT}),
    ],
)
async def test_a_long_text_in_a_field_the_route_does_not_have_fits_any_context(
    plain_fleet: tuple[Emulator, Proxy], path: str, fields: dict[str, Any]
) -> None:
    """Ollama decodes the body into its route's request, which drops a `prompt` sent
    to /api/chat unread: the model reads a short message, which any context holds.
    `auto` serves it rather than a 400 for a prompt no context could hold."""
    _, prx = plain_fleet
    body = {**ROUTE_BODIES[path], **fields, "model": "auto", "stream": False}
    async with aiohttp.ClientSession() as http:
        async with http.post(prx.url + path, json=body) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Autoroute-Model"] == "gemma2:9b"


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/api/chat", {"messages": [{"role": "user", "content": LONG_TEXT}]}),
        ("/api/generate", {"prompt": LONG_TEXT}),
        ("/api/generate", {"system": LONG_TEXT}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG_TEXT}]}),
        ("/v1/completions", {"prompt": LONG_TEXT}),
        ("/v1/responses", {"input": LONG_TEXT}),
        ("/v1/responses", {"instructions": LONG_TEXT}),
        ("/v1/messages", {"system": LONG_TEXT}),
    ],
)
async def test_a_long_text_in_a_field_the_route_has_is_filtered_by_context(
    context_fleet: tuple[Emulator, Proxy], path: str, fields: dict[str, Any]
) -> None:
    """The same text where the route's request has it: gemma2:9b's context does not
    hold it, and the model whose context does serves it."""
    _, prx = context_fleet
    body = {**ROUTE_BODIES[path], **fields, "model": "auto", "stream": False}
    doc, served = await _explained_and_served(prx, path, body)
    assert doc["model"] == served == "qwen2.5:7b"
    assert doc["filtered"] == {"gemma2:9b": "context 8192 < ~10000 prompt tokens"}, doc


async def _explained_and_served(prx: Proxy, path: str, body: dict[str, Any]) -> tuple[Any, str]:
    """What explain says of `body` on `path`, and the model that serves it there."""
    status, doc = await explain(prx, body, path)
    assert status == 200, doc
    async with aiohttp.ClientSession() as http:
        async with http.post(prx.url + path, json=body) as resp:
            assert resp.status == 200, await resp.text()
            return doc, resp.headers["X-Autoroute-Model"]


@pytest.fixture(scope="module")
def context_fleet(servers: ServerThread) -> Iterator[tuple[Emulator, Proxy]]:
    """gemma2:9b (a context of 8,192 tokens) and qwen2.5:7b (32,768)."""
    emu = Emulator(servers, dataclasses.replace(FROZEN, models=("gemma2:9b", "qwen2.5:7b")))
    prx = Proxy(servers, [emu.url])
    yield emu, prx
    prx.stop()
    emu.stop()


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/api/chat", {"messages": [{"role": "user", "content": LONG_TEXT * 4}]}),
        ("/api/generate", {"prompt": LONG_TEXT * 4}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG_TEXT * 4}]}),
        ("/v1/messages", {"system": LONG_TEXT * 4}),
    ],
)
async def test_a_prompt_no_context_holds_is_served_where_least_of_it_is_cut(
    plain_fleet: tuple[Emulator, Proxy],
    context_fleet: tuple[Emulator, Proxy],
    path: str,
    fields: dict[str, Any],
) -> None:
    """Ollama serves a prompt longer than the model's context, cut to fit (`truncate`
    defaults to true), rather than refuse it: `auto` sends one that no candidate's
    context holds to the longest context, and names the others as filtered."""
    body = {**ROUTE_BODIES[path], **fields, "model": "auto", "stream": False}
    for (emu, prx), longest in ((plain_fleet, "gemma2:9b"), (context_fleet, "qwen2.5:7b")):
        async with aiohttp.ClientSession() as http:
            async with http.post(emu.url + path, json={**body, "model": longest}) as resp:
                assert resp.status == 200, await resp.text()
        doc, served = await _explained_and_served(prx, path, body)
        assert doc["model"] == served == longest
        assert set(doc["filtered"]) == ({"gemma2:9b"} if longest != "gemma2:9b" else set())


async def test_explain_cites_only_the_results_a_candidate_takes(
    servers: ServerThread, tmp_path: Path
) -> None:
    """A pretrained tag the catalogue does not list (`qwen2.5-coder:7b-base`) takes its
    chat entry's results but for code and instruction, imputed as a pretrained model's:
    explain cites the published numbers it takes, none of the chat model's code or
    IFEval results, and names those areas as imputed; a listed pretrained entry cites
    its own code results."""
    fleet = ("qwen2.5-coder:7b-base", "codellama:7b-code")
    own = Emulator(servers, dataclasses.replace(FROZEN, models=fleet))
    prx = Proxy(servers, [own.url], selector=selector(tmp_path))
    try:
        status, doc = await explain(prx, chat("auto:best"))
        assert status == 200, doc
        ranked = {row["model"]: row["catalogue"] for row in doc["ranking"]}
        assert set(ranked) == set(fleet), doc
        base, code = ranked["qwen2.5-coder:7b-base"], ranked["codellama:7b-code"]
        chat_sources = Catalog.shipped().sources("qwen2.5-coder:7b")
        assert {"HumanEval", "MBPP", "GSM8K", "IFEval"} <= set(chat_sources)
        taken = {b: s for b, s in chat_sources.items() if s.area not in ("code", "instruction")}
        assert base["sources"] == {
            b: {"area": s.area, "value": s.value, "url": s.url} for b, s in taken.items()
        }
        assert base["imputed"] == ["code", "instruction"] and base["neighbours"]
        assert code["sources"]["HumanEval"]["area"] == "code"
        assert "code" not in code["imputed"]
    finally:
        prx.stop()
        own.stop()


async def test_explain_says_where_each_area_of_a_profiled_candidate_comes_from(
    servers: ServerThread, tmp_path: Path
) -> None:
    """A profile of one area leaves what explain says of a candidate's other areas as
    it was: a catalogue entry still cites its published numbers and names its imputed
    areas, and per area `figures` says where its figure comes from (published,
    imputed or configured) and whether a measured share was blended with it or kept,
    for a catalogue entry and for a model `selector.models` describes by areas alone."""
    mine = "my-tune:8b"
    own = Emulator(servers, dataclasses.replace(FROZEN, models=("qwen2.5:7b", "llama3.1:8b")))
    own.state.store[mine] = own.state.store.pop("llama3.1:8b").renamed(mine)
    path = tmp_path / "profiles.json"
    models = {mine: ModelEntry(areas={"code": 0.8})}

    def result(score: float) -> profile_store.AreaResult:
        return profile_store.AreaResult(score, 10, "1", "2026-12-07T09:00:00Z", own.url)

    async def described() -> dict[str, dict[str, Any]]:
        settings = selector(tmp_path, profiles_path=str(path), models=models)
        prx = Proxy(servers, [own.url], selector=settings)
        try:
            status, doc = await explain(prx, chat("auto:best"))
        finally:
            prx.stop()
        assert status == 200, doc
        return {row["model"]: row for row in doc["ranking"]}

    try:
        before = await described()
        profile_store.save(path, "qwen2.5:7b", {"math": result(0.2)})
        profile_store.save(path, mine, {"code": result(0.3), "math": result(0.3)})
        after = await described()
    finally:
        own.stop()
    cited = Catalog.shipped().sources("qwen2.5:7b")
    published = {s.area for s in cited.values()}
    assert "math" in published
    qwen, was = after["qwen2.5:7b"]["catalogue"], before["qwen2.5:7b"]["catalogue"]
    assert (was["origin"], qwen["origin"]) == ("catalogue", "profile")
    assert after["qwen2.5:7b"]["measured"] == {"math": 0.2}
    for key in ("entry", "sources", "imputed"):
        assert qwen[key] == was[key], key
    assert qwen["entry"] == "qwen2.5:7b" and set(qwen["sources"]) == set(cited)
    assert qwen["imputed"] == [a for a in AREAS if a not in published]
    assert qwen["figures"]["math"] == {"from": "published", "measured": "blended"}
    for area in AREAS:
        source = "published" if area in published else "imputed"
        assert was["figures"][area] == {"from": source}, area
        if area != "math":
            assert qwen["figures"][area] == was["figures"][area], area
    tune, placed = after[mine]["catalogue"], before[mine]["catalogue"]
    assert (placed["origin"], tune["origin"]) == ("config", "profile")
    assert tune["entry"] is None and tune["sources"] == {}
    assert tune["imputed"] == [a for a in AREAS if a != "code"] == placed["imputed"]
    assert tune["figures"]["code"] == {"from": "configured", "measured": "blended"}
    assert tune["figures"]["math"] == {"from": "imputed", "measured": "kept"}
    assert tune["figures"]["knowledge"] == {"from": "imputed"}
    # The kept area is the share moved onto the catalogue's scale by the offset the
    # profiled qwen2.5:7b anchors (its published maths far above its share).
    moved = after[mine]["measured_offset"]["math"]
    assert moved > 0.3
    assert tune["areas"]["math"] == pytest.approx(0.3 + moved, abs=2e-3)
    assert 0.3 < tune["areas"]["code"] < 0.8


async def test_a_model_made_from_a_listed_one_is_described_as_its_parent(
    servers: ServerThread, tmp_path: Path
) -> None:
    """A model `ollama create` made from a listed one (`FROM qwen3:32b` and a system
    prompt) under a name of its own carries the parent's weights, which Ollama names in
    `details.parent_model`: explain shows the parent entry's areas, cites its
    published numbers and imputes only the areas it publishes none in."""
    parent = Catalog.shipped().lookup("qwen3:32b")
    own = Emulator(servers, dataclasses.replace(FROZEN, models=("qwen3:32b",)))
    base = own.state.store.pop("qwen3:32b")
    made = "research-bot:v2"
    own.state.store[made] = base.renamed(made, parent_model="qwen3:32b")
    prx = Proxy(servers, [own.url], selector=selector(tmp_path))
    try:
        status, doc = await explain(prx, chat("auto:best"))
        assert status == 200, doc
        [row] = doc["ranking"]
        assert row["model"] == made
        described = row["catalogue"]
        assert described["origin"] == "catalogue" and described["entry"] == "qwen3:32b"
        assert described["areas"]["code"] == round(parent.areas["code"], 3)
        cited = Catalog.shipped().sources("qwen3:32b")
        assert set(described["sources"]) == set(cited)
        published = {s.area for s in cited.values()}
        assert described["imputed"] == [a for a in AREAS if a not in published]
    finally:
        prx.stop()
        own.stop()


async def test_explain_cites_the_entry_the_backends_architecture_picks(
    servers: ServerThread, tmp_path: Path
) -> None:
    """A name the catalogue resolves to one entry while the backend's architecture says
    another of its family is meant (`deepseek-r1:8b`, the Llama 3.1 distill by name,
    served as the Qwen3 one) takes that entry's areas, and explain cites that entry's
    published numbers: the Qwen3 distill publishes GPQA only, so its other areas are
    imputed, for the tag and for a pretrained tag of it alike."""
    moved = Catalog.shipped().lookup("deepseek-r1:8b-0528-qwen3")
    cited = Catalog.shipped().sources("deepseek-r1:8b-0528-qwen3")
    llama = Catalog.shipped().sources("deepseek-r1:8b")
    assert llama and cited and set(llama) != set(cited), "each distill cites its own results"
    published = {s.area for s in cited.values()}
    # One model a fleet: a chat request leaves a pretrained model out beside a chat one.
    for name in ("deepseek-r1:8b", "deepseek-r1:8b-text"):
        own = Emulator(servers, dataclasses.replace(FROZEN, models=(name,)))
        shown = own.state.store[name]
        own.state.store[name] = dataclasses.replace(shown, family="qwen3", parameter_size="8.2B")
        prx = Proxy(servers, [own.url], selector=selector(tmp_path))
        try:
            status, doc = await explain(prx, chat("auto:best"))
            assert status == 200, doc
            [described] = [row["catalogue"] for row in doc["ranking"] if row["model"] == name]
            assert described["areas"]["knowledge"] == round(moved.areas["knowledge"], 3), name
            assert described["entry"] == "deepseek-r1:8b-0528-qwen3", name
            assert set(described["sources"]) == set(cited), name
            assert described["imputed"] == [a for a in AREAS if a not in published], name
        finally:
            prx.stop()
            own.stop()

"""Every method of the official `ollama` Python client, sync and async, gives through the
proxy what it gives directly from the backend: the same parsed results, the same
chunks in the same order, the same exceptions, the same answer headers (but the
proxy's own, `client_parity` says which).

The emulator keeps Ollama's running clock, as the demo's do: `client_parity` marks
what two identical requests get differently (timestamps, measured durations, tool
call ids) and compares the rest. Each call is made directly first, then through the
proxy, back to back, so that the backend's state (what is loaded, which models
exist) is the same for both."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from typing import Any

import ollama
import pytest

from proxy.auth import hash_key
from proxy.config_services import ApiKey, Auth
from tests.client_parity import Answers, async_outcome, auto_as_chosen, hosts, outcome
from tests.support import AUTO_NAMES, PIXEL_PNG, WEATHER_TOOLS, Emulator, Proxy, ServerThread

MODEL = "qwen2.5:7b"
THINKER = "qwen3:8b"
CODER = "qwen2.5-coder:7b"
VISION = "llava:7b"
EMBEDDER = "nomic-embed-text"
ASK = [{"role": "user", "content": "Why is the sky blue?"}]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
# A conversation that called a tool and carries its result back.
TOOL_ROUND = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    },
    {"role": "tool", "content": "18 degrees, sunny", "tool_name": "get_weather"},
]
OPTIONS = {"temperature": 0.2, "seed": 7, "num_predict": 5, "top_k": 10, "stop": ["\n\n"]}
PIXEL = base64.b64decode(PIXEL_PNG)
NOT_AN_IMAGE = base64.b64encode(b"these bytes are no picture").decode()


def call(method: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    return method, kwargs


# Not here: web_search and web_fetch, which this client sends to https://ollama.com
# whatever its host (never to a local Ollama, so never through the proxy); and
# /api/version, for which it has no call.
CASES: list[tuple[str, dict[str, Any]]] = []
CASES += [
    call("chat", model=MODEL, messages=ASK),
    call("chat", model=MODEL, messages=ASK, stream=True),
    call("chat", model=MODEL, messages=TOOL_ROUND[:1], tools=WEATHER_TOOLS),
    call("chat", model=MODEL, messages=TOOL_ROUND[:1], tools=WEATHER_TOOLS, stream=True),
    call("chat", model=MODEL, messages=TOOL_ROUND, tools=WEATHER_TOOLS),
    call("chat", model=VISION, messages=[{**ASK[0], "images": [PIXEL]}]),
    call("chat", model=MODEL, messages=ASK, format="json"),
    call("chat", model=MODEL, messages=ASK, format=SCHEMA, stream=True),
    call("chat", model=THINKER, messages=ASK),
    call("chat", model=THINKER, messages=ASK, think=True),
    call("chat", model=THINKER, messages=ASK, think=True, stream=True),
    call("chat", model=THINKER, messages=ASK, think=False),
    call("chat", model=THINKER, messages=ASK, think="high", stream=True),
    call("chat", model=MODEL, messages=ASK, keep_alive="10m"),
    call("chat", model=MODEL, messages=ASK, keep_alive=0),
    call("chat", model=MODEL, messages=ASK, keep_alive=-1),
    call("chat", model=MODEL, messages=ASK, options=OPTIONS),
    call("chat", model=MODEL, messages=ASK, logprobs=True, top_logprobs=3),
    call("chat", model=THINKER, messages=ASK, think=True, logprobs=True, stream=True),
    call("chat", model=MODEL, messages=[]),
    call("generate", model=MODEL, prompt="Hello"),
    call("generate", model=MODEL, prompt="Hello", stream=True),
    call("generate", model=MODEL, prompt="Hello", system="Answer in French."),
    call("generate", model=MODEL, prompt="Hello", template="{{ .Prompt }} =>"),
    call("generate", model=MODEL, prompt="Hello", context=[1, 2, 3]),
    call("generate", model=MODEL, prompt="<|im_start|>user\nHi<|im_end|>\n", raw=True),
    call("generate", model=CODER, prompt="def add(a, b):", suffix="    return c"),
    call("generate", model=VISION, prompt="What is this?", images=[PIXEL]),
    call("generate", model=VISION, prompt="What is this?", images=[PIXEL_PNG], stream=True),
    call("generate", model=MODEL, prompt="A person:", format="json", stream=True),
    call("generate", model=MODEL, prompt="A person:", format=SCHEMA),
    call("generate", model=THINKER, prompt="Why?", think=True),
    call("generate", model=THINKER, prompt="Why?", think="low", stream=True),
    call("generate", model=MODEL, prompt="Hello", options=OPTIONS, keep_alive="1h"),
    call("generate", model=MODEL, prompt="Hello", logprobs=True, top_logprobs=2, stream=True),
    call("generate", model=MODEL, prompt="Hello", width=64, height=64, steps=2),
    call("generate", model=MODEL),
    call("generate", model=MODEL, keep_alive=0),
    call("embed", model=EMBEDDER, input="one"),
    call("embed", model=EMBEDDER, input=["one", "two"], truncate=True, keep_alive="5m"),
    call("embed", model=EMBEDDER, input=["one"], dimensions=8, options={"num_ctx": 512}),
    call("embeddings", model=EMBEDDER, prompt="one"),
    call("embeddings", model=EMBEDDER, prompt="one", options={"seed": 1}, keep_alive=0),
    call("show", model=MODEL),
    call("show", model=THINKER),
    call("show", model=EMBEDDER),
    call("ps"),
    call("pull", model=MODEL),
    call("pull", model=EMBEDDER, stream=True),
    call("push", model=MODEL, stream=True),
    call("push", model=MODEL, insecure=True),
]
# Error answers, as the client raises them.
CASES += [
    call("chat", model="no-such:model", messages=ASK),
    call("chat", model="no-such:model", messages=ASK, stream=True),
    call("generate", model="no-such:model", prompt="Hello", stream=True),
    call("embed", model="no-such:model", input="one"),
    call("embeddings", model="no-such:model", prompt="one"),
    call("show", model="no-such:model"),
    call("pull", model="no-such-model:1b", stream=True),
    call("pull", model="no-such-model:1b"),
    call("push", model="no-such:model"),
    call("copy", source="no-such:model", destination="other"),
    call("delete", model="no-such:model"),
    call("create", model="bad", from_="no-such-model:1b"),
    call("chat", model=MODEL, messages=ASK, options={"temperature": "hot"}),
    call("chat", model=MODEL, messages=ASK, options={"num_ctx": -1, "no_such_option": 1}),
    call("generate", model=MODEL, prompt="Hello", options={"stop": "x", "seed": "y"}),
    call("chat", model=VISION, messages=[{**ASK[0], "images": [NOT_AN_IMAGE]}]),
    call("generate", model=VISION, prompt="What is this?", images=[NOT_AN_IMAGE]),
    call("generate", model=MODEL, prompt="What is this?", images=[PIXEL]),
    call("chat", model=VISION, messages=[{**ASK[0], "images": ["!!!!"]}]),
    call("generate", model=VISION, prompt="What is this?", images=["!!!!"], stream=True),
    call("chat", model=MODEL, messages=ASK, think=True),
    call("chat", model=THINKER, messages=ASK, think="extreme"),
    call("chat", model=EMBEDDER, messages=ASK),
    call("embed", model=MODEL, input="one"),
    call("generate", model=MODEL, prompt="Hello", suffix="x"),
    call("generate", model=MODEL, prompt="Hello", raw=True, system="Be brief."),
    call("chat", model=MODEL, messages=ASK, tools=WEATHER_TOOLS, top_logprobs=21, logprobs=True),
    call("chat", model="Bad Name!", messages=ASK),
    call("embed", model=EMBEDDER, input=""),
    call("systemone", model=MODEL, state={"text": "x"}, questions={}),
]
# Calls that change the backend's models, made in this order directly and then through
# the proxy: the sequence leaves the models as it found them.
CHANGES = [
    call("create", model="pirate", from_=MODEL, system="Talk like a pirate.", stream=True),
    call("create", model="pirate", from_=MODEL, parameters={"temperature": 0.1}),
    call("copy", source="pirate", destination="parrot"),
    call("show", model="parrot"),
    call("generate", model="parrot", prompt="Hello"),
    call("delete", model="parrot"),
    call("delete", model="parrot"),
    call("show", model="parrot"),
    call("create", model="pirate", from_=MODEL, quantize="q8_0"),
    call("delete", model="pirate"),
    call("delete", model=CODER),
    call("pull", model=CODER, stream=True),
]


def created_now(outcomes: list[Any]) -> list[Any]:
    """`CHANGES`' outcomes with the `modified_at` of the models it creates marked: each
    run of the sequence writes them at its own time. (The catalogue's models keep
    theirs, which the other tests compare.)"""
    for answer in outcomes:
        result = answer.get("result")
        if isinstance(result, dict) and "modified_at" in result:
            result["modified_at"] = "<clock>"
    return outcomes


PARAMS = [pytest.param(m, k, id=f"{i:02d}-{m}") for i, (m, k) in enumerate(CASES)]


def only_backend_models(result: Any) -> Any:
    """/api/tags through the proxy lists `auto` too (it is the proxy's model); the rest
    must be the backend's list as it is."""
    return [m for m in result["models"] if m["model"] not in AUTO_NAMES]


def sync_run(host: str, answers: Answers, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """The outcome of each call, in order, by one synchronous client of `host`."""
    client = ollama.Client(host, event_hooks=answers.hooks())
    return [outcome(answers, getattr(client, method), **kwargs) for method, kwargs in calls]


async def async_run(
    host: str, answers: Answers, calls: list[tuple[str, dict[str, Any]]]
) -> list[Any]:
    """`sync_run` with an AsyncClient."""
    client = ollama.AsyncClient(host, event_hooks=answers.async_hooks())
    return [await async_outcome(answers, getattr(client, m), **kw) for m, kw in calls]


@pytest.mark.parametrize(("method", "kwargs"), PARAMS)
def test_sync_client(method: str, kwargs: dict[str, Any], live_proxy: Proxy) -> None:
    answers = Answers()
    direct, proxied = (sync_run(h, answers, [(method, kwargs)]) for h in hosts(live_proxy))
    assert proxied == direct


@pytest.mark.parametrize(("method", "kwargs"), PARAMS)
async def test_async_client(method: str, kwargs: dict[str, Any], live_proxy: Proxy) -> None:
    answers = Answers()
    direct, proxied = [await async_run(h, answers, [(method, kwargs)]) for h in hosts(live_proxy)]
    assert proxied == direct


async def test_concurrent_streams_keep_to_their_own_requests(live_proxy: Proxy) -> None:
    """Streams that share the proxy's pooled backend connections at once each get their
    own answer, chunk for chunk what the same request gets alone and directly."""
    calls = [
        (method, {"model": model, **kwargs, "stream": True})
        for model in (MODEL, THINKER)
        for method, kwargs in (
            ("chat", {"messages": [{"role": "user", "content": f"Question {n}"}]})
            if n % 2
            else ("generate", {"prompt": f"Prompt {n}"})
            for n in range(6)
        )
    ]
    backend, front = hosts(live_proxy)
    answers = Answers()
    direct = await async_run(backend, answers, calls)
    together = await asyncio.gather(*(async_run(front, Answers(), [c]) for c in calls))
    assert [one for [one] in together] == direct
    assert len({str(d["chunks"]) for d in direct}) == len(calls)


def test_sync_client_changing_models(live_proxy: Proxy) -> None:
    answers = Answers()
    direct, proxied = (sync_run(host, answers, CHANGES) for host in hosts(live_proxy))
    assert created_now(proxied) == created_now(direct)


async def test_async_client_changing_models(live_proxy: Proxy) -> None:
    answers = Answers()
    direct, proxied = [await async_run(host, answers, CHANGES) for host in hosts(live_proxy)]
    assert created_now(proxied) == created_now(direct)


def test_list(live_proxy: Proxy) -> None:
    answers = Answers()
    direct, proxied = (sync_run(host, answers, [("list", {})])[0] for host in hosts(live_proxy))
    assert only_backend_models(proxied.pop("result")) == direct.pop("result")["models"]
    assert proxied == direct


def test_blob_upload(live_proxy: Proxy, tmp_path: Path) -> None:
    """create_blob: 201 for a blob the backend lacks, 200 for one it has. Each side
    uploads a blob of its own, since the backend keeps the first side's."""
    answers = Answers()
    seen = []
    for host in hosts(live_proxy):
        blob = tmp_path / "adapter.bin"
        blob.write_bytes(host.encode() * 1000)
        digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
        uploads = sync_run(host, answers, [("create_blob", {"path": blob})] * 2)
        assert [u.pop("result") for u in uploads] == [digest, digest]
        seen.append(uploads)
    assert seen[1] == seen[0]
    assert [u["heads"][0][0] for u in seen[0]] == [201, 200]


AUTO_CALLS = [
    call("chat", messages=[{"role": "user", "content": "Fix this: def add(a, b): return a - b"}]),
    call("chat", messages=[{"role": "user", "content": "Summarize the Roman Empire."}]),
    call("chat", messages=[{**ASK[0], "images": [PIXEL]}], stream=True),
    call("chat", messages=TOOL_ROUND[:1], tools=WEATHER_TOOLS, stream=True),
    call("generate", prompt="Write a haiku about autumn.", stream=True),
    call("generate", prompt="def fib(n):", suffix="    return a"),
    call("chat", messages=ASK, think=True, stream=True, options={"num_ctx": 4096}),
    call("chat", messages=ASK, format=SCHEMA, keep_alive="2m", logprobs=True),
    call("generate", prompt="Hello", think="low", stream=True),
]


@pytest.mark.parametrize(("method", "kwargs"), AUTO_CALLS)
@pytest.mark.parametrize("model", ["auto", "auto:fast"])
def test_auto_answers_as_the_chosen_model_does(
    method: str, kwargs: dict[str, Any], model: str, live_proxy: Proxy
) -> None:
    """`auto` through the proxy gives what the model it chose (X-Autoroute-Model, and
    the answer's `model`) gives when named directly."""
    direct, chosen = auto_as_chosen(sync_run, live_proxy, method, kwargs, model)
    assert {c["model"] for c in direct.get("chunks") or [direct["result"]]} == {chosen}


def test_auto_continues_a_context_with_the_model_that_wrote_it(live_proxy: Proxy) -> None:
    """A /api/generate `context` that `auto` answered goes back to the model that wrote
    it, and the continuation is what that model gives when named directly."""
    answers = Answers()
    backend, front = hosts(live_proxy)
    [first] = sync_run(front, answers, [("generate", {"model": "auto", "prompt": "Hello"})])
    chosen, context = first["result"]["model"], first["result"]["context"]
    assert context and answers.models == [chosen]
    more = {"prompt": "Go on", "context": context, "stream": True}
    [proxied] = sync_run(front, answers, [("generate", {"model": "auto", **more})])
    [direct] = sync_run(backend, answers, [("generate", {"model": chosen, **more})])
    assert proxied == direct
    assert answers.models[-2] == chosen


def test_changing_models_with_an_admin_key(
    servers: ServerThread, live_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a proxy with API keys, a client holding an admin key (the client sends
    OLLAMA_API_KEY as a bearer token, to Ollama too, which ignores it) changes models
    as it does directly; without the key the proxy refuses it before the backend."""
    keyed = Proxy(
        servers, [live_emulator.url], auth=Auth(keys=(ApiKey(hash_key("k"), role="admin"),))
    )
    try:
        monkeypatch.setenv("OLLAMA_API_KEY", "k")
        answers = Answers()
        direct, proxied = (sync_run(h, answers, CHANGES) for h in (live_emulator.url, keyed.url))
        assert created_now(proxied) == created_now(direct)
        monkeypatch.delenv("OLLAMA_API_KEY")
        with pytest.raises(ollama.ResponseError) as refused:
            ollama.Client(keyed.url).delete(MODEL)
        assert (refused.value.status_code, refused.value.error) == (401, "unauthorized")
    finally:
        keyed.stop()


def test_the_proxy_named_by_ollama_host(live_proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client built without a host reads OLLAMA_HOST (here in its form without a
    scheme), as a user points it at the proxy."""
    answers = Answers()
    seen = []
    for url in hosts(live_proxy):
        monkeypatch.setenv("OLLAMA_HOST", url.removeprefix("http://"))
        client = ollama.Client(event_hooks=answers.hooks())
        seen.append(outcome(answers, client.chat, model=MODEL, messages=ASK, stream=True))
    assert seen[1] == seen[0]
    assert seen[0]["chunks"][-1]["done"]

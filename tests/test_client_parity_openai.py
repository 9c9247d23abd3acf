"""Every call of the `openai` Python SDK that Ollama serves (/v1: chat completions,
completions, embeddings, models, responses, transcriptions; and a few it does not),
sync and async, gives through the proxy what it gives directly from the backend: the
same parsed results, the same stream events in the same order, the same exceptions,
the same answer headers (but the proxy's own, `client_parity` says which).

The emulator keeps Ollama's running clock, as the demo's do: `client_parity` marks
what two identical requests get differently (timestamps, measured durations, the ids
Ollama draws at random) and compares the rest."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pydantic
import pytest

from tests.client_parity import Answers, async_outcome, auto_as_chosen, hosts, outcome
from tests.support import AUTO_NAMES, PIXEL_PNG, WEATHER_TOOLS, Proxy

MODEL = "qwen2.5:7b"
THINKER = "qwen3:8b"
VISION = "llava:7b"
EMBEDDER = "nomic-embed-text"
ASK: list[Any] = [{"role": "user", "content": "Why is the sky blue?"}]
TOOL_ROUND: list[Any] = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
]
PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
JSON_SCHEMA: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}


class Person(pydantic.BaseModel):
    name: str
    age: int


def image(url: str) -> list[Any]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


PNG_URL = "data:image/png;base64," + PIXEL_PNG
USAGE: Any = {"include_usage": True}
WAV = ("a.wav", b"RIFF\x00\x01WAVEfmt \r\n")


def call(method: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """`method` is the SDK's attribute path: "chat.completions.create"."""
    return method, kwargs


CHAT, COMPLETE = "chat.completions.create", "completions.create"
CASES = [
    call(CHAT, model=MODEL, messages=ASK),
    call(CHAT, model=MODEL, messages=ASK, stream=True),
    call(CHAT, model=MODEL, messages=ASK, stream=True, stream_options=USAGE),
    call(CHAT, model=MODEL, messages=TOOL_ROUND[:1], tools=WEATHER_TOOLS),
    call(CHAT, model=MODEL, messages=TOOL_ROUND[:1], tools=WEATHER_TOOLS, stream=True),
    call(CHAT, model=MODEL, messages=TOOL_ROUND, tools=WEATHER_TOOLS, tool_choice="auto"),
    call(CHAT, model=MODEL, messages=ASK, response_format=JSON_SCHEMA),
    call(CHAT, model=MODEL, messages=ASK, response_format={"type": "json_object"}, stream=True),
    call(CHAT, model=MODEL, messages=ASK, n=2),
    call(CHAT, model=MODEL, messages=ASK, stop=["\n", "."], seed=42, temperature=0.3),
    call(CHAT, model=MODEL, messages=ASK, max_tokens=4, top_p=0.9, stop="sky"),
    call(CHAT, model=MODEL, messages=ASK, max_completion_tokens=3, frequency_penalty=0.5),
    call(CHAT, model=MODEL, messages=ASK, logprobs=True, top_logprobs=2),
    call(CHAT, model=MODEL, messages=ASK, logprobs=True, stream=True, stream_options=USAGE),
    call(CHAT, model=THINKER, messages=ASK, reasoning_effort="high"),
    call(CHAT, model=THINKER, messages=ASK, reasoning_effort="low", stream=True),
    call(CHAT, model=THINKER, messages=ASK, reasoning_effort="none"),
    call(CHAT, model=VISION, messages=image(PNG_URL)),
    call(CHAT, model=MODEL, messages=ASK, user="someone", presence_penalty=0.1),
    call(COMPLETE, model=MODEL, prompt="Once upon a time"),
    call(COMPLETE, model=MODEL, prompt="Once upon a time", stream=True, stream_options=USAGE),
    call(COMPLETE, model=MODEL, prompt="Once", stop=["\n"], seed=3, max_tokens=5),
    call(COMPLETE, model=MODEL, prompt="Once", logprobs=2, echo=False),
    call(COMPLETE, model="qwen2.5-coder:7b", prompt="def add(a, b):", suffix="    return c"),
    call("embeddings.create", model=EMBEDDER, input="one"),
    call("embeddings.create", model=EMBEDDER, input=["one", "two"], encoding_format="float"),
    call("embeddings.create", model=EMBEDDER, input=["one", "two"], encoding_format="base64"),
    call("embeddings.create", model=EMBEDDER, input="one", dimensions=8),
    call("models.retrieve", model=MODEL),
    call("models.retrieve", model=EMBEDDER),
    call("responses.create", model=MODEL, input="Why is the sky blue?"),
    call("responses.create", model=MODEL, input="Why is the sky blue?", stream=True),
    call("responses.create", model=MODEL, input="Hi", instructions="Be brief.", temperature=0.5),
    call("responses.create", model=THINKER, input="Why?", reasoning={"effort": "low"}),
    call(
        "responses.create", model=THINKER, input="Why?", reasoning={"effort": "high"}, stream=True
    ),
    call(
        "responses.create",
        model=MODEL,
        input="A person",
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON}},
    ),
    call(
        "responses.create",
        model=MODEL,
        input="Weather in Paris?",
        tools=[{"type": "function", "name": "get_weather", "parameters": PERSON, "strict": True}],
        stream=True,
    ),
    call("audio.transcriptions.create", model=MODEL, file=WAV),
    call("chat.completions.parse", model=MODEL, messages=ASK, response_format=Person),
    call("responses.parse", model=MODEL, input="Name someone.", text_format=Person),
]
# Error answers, as the SDK raises them.
CASES += [
    call(CHAT, model="no-such:model", messages=ASK),
    call(CHAT, model="no-such:model", messages=ASK, stream=True),
    call(COMPLETE, model="no-such:model", prompt="Once"),
    call("embeddings.create", model="no-such:model", input="one"),
    call("models.retrieve", model="no-such:model"),
    call("responses.create", model="no-such:model", input="hi"),
    call("responses.create", model="no-such:model", input="hi", stream=True),
    call("audio.transcriptions.create", model="no-such:model", file=WAV),
    call(CHAT, model=MODEL, messages=[]),
    call(CHAT, model=MODEL, messages=ASK, temperature=7),
    call(CHAT, model=MODEL, messages=ASK, extra_body={"temperature": "hot"}),
    call(CHAT, model=MODEL, messages=ASK, extra_body={"stop": [1]}),
    call(CHAT, model=VISION, messages=image("data:image/png;base64,!!!")),
    call(CHAT, model=VISION, messages=image("https://example.com/cat.png")),
    call(CHAT, model=MODEL, messages=image(PNG_URL)),
    call(CHAT, model=MODEL, messages=ASK, reasoning_effort="high"),
    call(CHAT, model=THINKER, messages=ASK, extra_body={"reasoning_effort": "extreme"}),
    call(CHAT, model=MODEL, messages=ASK, logprobs=True, top_logprobs=21),
    call(CHAT, model=EMBEDDER, messages=ASK),
    call(COMPLETE, model=MODEL, prompt="Once", logprobs=21),
    call(COMPLETE, model=MODEL, prompt="Once", suffix="x"),
    call(COMPLETE, model=MODEL, prompt=["one", "two"]),
    call("embeddings.create", model=EMBEDDER, input=[]),
    call("embeddings.create", model=EMBEDDER, input=[[1, 2, 3]]),
    call("responses.create", model=MODEL, input="hi", reasoning={"effort": "high"}),
    call("responses.create", model=MODEL, input=[]),
    # What Ollama does not serve: Gin's 404, or 405 where the path has other methods.
    call("models.delete", model=MODEL),
    call("responses.retrieve", response_id="resp_1"),
    call("images.generate", model=MODEL, prompt="a cat"),
    call("audio.speech.create", model=MODEL, input="hello", voice="alloy"),
]
PARAMS = [pytest.param(m, k, id=f"{i:02d}-{m.split('.')[0]}") for i, (m, k) in enumerate(CASES)]


def method_of(sdk: Any, path: str) -> Any:
    for name in path.split("."):
        sdk = getattr(sdk, name)
    return sdk


def sync_sdk(host: str, answers: Answers) -> openai.OpenAI:
    http = httpx.Client(event_hooks=answers.hooks())
    return openai.OpenAI(base_url=host + "/v1", api_key="ollama", max_retries=0, http_client=http)


def async_sdk(host: str, answers: Answers) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(event_hooks=answers.async_hooks())
    return openai.AsyncOpenAI(
        base_url=host + "/v1", api_key="ollama", max_retries=0, http_client=http
    )


def sync_run(host: str, answers: Answers, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """The outcome of each call, in order, by one synchronous SDK client of `host`."""
    sdk = sync_sdk(host, answers)
    return [outcome(answers, method_of(sdk, method), **kwargs) for method, kwargs in calls]


@pytest.mark.parametrize(("method", "kwargs"), PARAMS)
def test_sync_sdk(method: str, kwargs: dict[str, Any], live_proxy: Proxy) -> None:
    answers = Answers()
    direct, proxied = (sync_run(h, answers, [(method, kwargs)]) for h in hosts(live_proxy))
    assert proxied == direct


@pytest.mark.parametrize(("method", "kwargs"), PARAMS)
async def test_async_sdk(method: str, kwargs: dict[str, Any], live_proxy: Proxy) -> None:
    answers = Answers()
    seen = []
    for host in hosts(live_proxy):
        sdk = async_sdk(host, answers)
        seen.append(await async_outcome(answers, method_of(sdk, method), **kwargs))
    assert seen[1] == seen[0]


async def test_concurrent_streams_keep_to_their_own_requests(live_proxy: Proxy) -> None:
    """SSE streams that share the proxy's pooled backend connections at once each get
    their own answer, event for event what the same request gets alone and directly."""
    calls = [
        (
            CHAT,
            {"messages": [{"role": "user", "content": f"Question {n}"}], "stream_options": USAGE},
        )
        if n % 2
        else ("responses.create", {"input": f"Prompt {n}"})
        for n in range(10)
    ]
    calls = [(m, {"model": MODEL, **kw, "stream": True}) for m, kw in calls]
    backend, front = hosts(live_proxy)

    async def run(host: str, call: tuple[str, dict[str, Any]]) -> dict[str, Any]:
        answers = Answers()
        return await async_outcome(answers, method_of(async_sdk(host, answers), call[0]), **call[1])

    direct = [await run(backend, c) for c in calls]
    assert list(await asyncio.gather(*(run(front, c) for c in calls))) == direct
    assert len({str(d["chunks"]) for d in direct}) == len(calls)


def test_models_list(live_proxy: Proxy) -> None:
    """/v1/models through the proxy lists `auto` too (the proxy's model); the rest is
    the backend's list as it is."""
    answers = Answers()
    direct, proxied = (sync_run(h, answers, [("models.list", {})])[0] for h in hosts(live_proxy))
    listed = proxied["result"]["data"]
    proxied["result"]["data"] = [m for m in listed if m["id"] not in AUTO_NAMES]
    assert proxied == direct
    assert MODEL in [m["id"] for m in direct["result"]["data"]]


AUTO_CALLS = [
    call(CHAT, messages=[{"role": "user", "content": "Fix this: def add(a, b): return a - b"}]),
    call(CHAT, messages=image(PNG_URL), stream=True, stream_options=USAGE),
    call(CHAT, messages=TOOL_ROUND[:1], tools=WEATHER_TOOLS, stream=True),
    call(COMPLETE, prompt="Write a haiku about autumn.", stream=True),
    call("responses.create", input="Why is the sky blue?"),
    call("responses.create", input="Fix: def add(a, b): return a - b", stream=True),
]


@pytest.mark.parametrize(("method", "kwargs"), AUTO_CALLS)
@pytest.mark.parametrize("model", ["auto", "auto:best"])
def test_auto_answers_as_the_chosen_model_does(
    method: str, kwargs: dict[str, Any], model: str, live_proxy: Proxy
) -> None:
    """`auto` through the proxy gives what the model it chose (X-Autoroute-Model, and
    the answer's `model`) gives when named directly."""
    direct, chosen = auto_as_chosen(sync_run, live_proxy, method, kwargs, model)
    # A Responses stream's events name it in those that carry the whole response.
    parts = direct.get("chunks") or [direct["result"]]
    named = {(p.get("response") or p).get("model") for p in parts} - {None}
    assert named == {chosen}

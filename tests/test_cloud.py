"""The cloud fallback end to end: the real proxy, a stand-in cloud on 127.0.0.1
(`tests.cloud_standin`), local backends down, up, busy or without the model, the
budget in memory and in PostgreSQL. No test reaches the internet."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import openai
import orjson
import pytest
from aiohttp import web

from proxy import learning
from proxy.app import APP_KEY
from proxy.auth import hash_key
from proxy.cloud_budget import this_month
from proxy.config import Config, ConfigError
from proxy.config_services import ApiKey, Auth, Cloud, CloudProvider
from proxy.config_serving import Health, Timeouts
from selector_model import outcome
from tests.cloud_standin import (
    ANSWER,
    ANSWER_WORDS,
    ANTHROPIC_KEY,
    CALL_ID,
    JSON_WORDS,
    OPENAI_KEY,
    Seen,
    create_app,
)
from tests.conftest import FROZEN
from tests.support import (
    Emulator,
    Proxy,
    ServerThread,
    bearer,
    free_port,
    health_circuit,
    slow_reader,
)
from tests.test_route_faults import settled
from tests.usage_services import Database, events_of, postgres_usage

OPENAI_ENV = "CLOUD_TEST_OPENAI_KEY"
ANTHROPIC_ENV = "CLOUD_TEST_ANTHROPIC_KEY"
LOCAL = "qwen2.5:7b"  # a model the emulator has
MESSAGES: list[Any] = [{"role": "user", "content": "Why is the sky blue?"}]
PROMPT_TOKENS = 5  # the stand-in's count for MESSAGES


class StandIn:
    def __init__(self, thread: ServerThread) -> None:
        self.seen = Seen()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.runner: web.AppRunner | None = thread.serve(lambda: create_app(self.seen), self.port)
        self.thread = thread

    def stop(self) -> None:
        if self.runner is not None:
            self.thread.stop(self.runner)
            self.runner = None


@pytest.fixture
def cloud_server(servers: ServerThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    monkeypatch.setenv(OPENAI_ENV, OPENAI_KEY)
    monkeypatch.setenv(ANTHROPIC_ENV, ANTHROPIC_KEY)
    server = StandIn(servers)
    yield server
    server.stop()


def cloud_section(
    url: str,
    api: str = "openai",
    budget: int = 1_000_000,
    models: dict[str, str] | None = None,
    key_env: str = "",
    prefer: tuple[str, ...] = (),
) -> Cloud:
    provider = CloudProvider(
        api=api,  # type: ignore[arg-type]
        base_url=url,
        key_env=key_env or (OPENAI_ENV if api == "openai" else ANTHROPIC_ENV),
        models=models if models is not None else {"*": f"{api}-standin-model"},
        monthly_token_budget=budget,
    )
    return Cloud(enabled=True, providers={api: provider}, prefer_for_profiles=prefer)


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def ndjson(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in body.splitlines() if line]


def sse(body: bytes) -> list[Any]:
    out: list[Any] = []
    for block in body.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


async def post(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


def check_ollama_stream(chunks: list[dict[str, Any]], field: str) -> None:
    *parts, last = chunks
    text = "".join(c["message"]["content"] if field == "message" else c["response"] for c in parts)
    assert text == ANSWER
    assert not any(c["done"] for c in parts)
    assert last["done"] is True
    assert last["done_reason"] == "stop"
    assert last["prompt_eval_count"] == PROMPT_TOKENS
    assert last["eval_count"] == len(ANSWER_WORDS)


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_every_local_backend_down_falls_back_in_every_shape(
    servers: ServerThread, cloud_server: StandIn, api: str
) -> None:
    proxy = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url, api))
    try:
        # Ollama's NDJSON stream, to a browser page Ollama lets in.
        status, headers, body = await post(
            proxy.url + "/api/chat",
            {"model": LOCAL, "messages": MESSAGES},
            {"Origin": "http://localhost:3000"},
        )
        assert status == 200, body
        assert headers["X-Autoroute-Backend"] == f"cloud:{api}"
        assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert headers["Content-Type"].startswith("application/x-ndjson")
        check_ollama_stream(ndjson(body), "message")
        # One Ollama body.
        status, headers, body = await post(
            proxy.url + "/api/generate", {"model": LOCAL, "prompt": "Why?", "stream": False}
        )
        assert status == 200, body
        assert headers["X-Autoroute-Backend"] == f"cloud:{api}"
        doc = orjson.loads(body)
        assert doc["response"] == ANSWER
        assert doc["done"] is True and doc["eval_count"] == len(ANSWER_WORDS)
        assert doc["prompt_eval_count"] == 1
        # The OpenAI shape on /v1, streaming (SSE with the usage chunk) and not.
        status, headers, body = await post(
            proxy.url + "/v1/chat/completions",
            {
                "model": LOCAL,
                "messages": MESSAGES,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        assert status == 200, body
        assert headers["Content-Type"].startswith("text/event-stream")
        events = sse(body)
        assert events[-1] == "[DONE]"
        assert events[-2]["usage"]["completion_tokens"] == len(ANSWER_WORDS)
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2])
        assert text == ANSWER
        assert events[-3]["choices"][0]["finish_reason"] == "stop"
        status, headers, body = await post(
            proxy.url + "/v1/chat/completions", {"model": LOCAL, "messages": MESSAGES}
        )
        assert status == 200, body
        doc = orjson.loads(body)
        assert doc["choices"][0]["message"]["content"] == ANSWER
        assert doc["usage"]["prompt_tokens"] == PROMPT_TOKENS
        assert len(cloud_server.seen.bodies) == 4
        # What the translation would change the meaning of stays out of the cloud.
        status, _, body = await post(
            proxy.url + "/api/generate", {"model": LOCAL, "prompt": "?", "images": ["aGk="]}
        )
        assert status == 503
        assert orjson.loads(body)["error"] == (
            "no local backend can serve this request and the cloud fallback does not send 'images'"
        )
        if api == "anthropic":
            status, _, body = await post(
                proxy.url + "/api/chat", {"model": LOCAL, "messages": MESSAGES, "format": "json"}
            )
            assert status == 503
            assert orjson.loads(body)["error"] == (
                "no local backend can serve this request and the cloud fallback sends "
                "a format only to OpenAI-compatible providers"
            )
        assert len(cloud_server.seen.bodies) == 4
        assert {b["model"] for b in cloud_server.seen.bodies} == {f"{api}-standin-model"}
    finally:
        proxy.stop()


TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


async def test_tools_and_formats_reach_an_openai_provider_and_come_back_in_the_clients_shape(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    proxy = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url))
    seen = cloud_server.seen
    try:
        # Ollama's shape: the call whole, its arguments an object, in a chunk of its own
        # before the final one, or in the one body; "stop" as Ollama says it.
        ask = {"model": LOCAL, "messages": MESSAGES, "tools": TOOLS}
        status, _, body = await post(proxy.url + "/api/chat", ask)
        assert status == 200, body
        *calls, last = ndjson(body)
        assert [c["message"]["tool_calls"] for c in calls] == [
            [{"id": CALL_ID, "function": {"index": 0, **CALL}}]
        ]
        assert last["done"] is True and last["done_reason"] == "stop"
        assert seen.bodies[-1]["tools"] == TOOLS
        status, _, body = await post(proxy.url + "/api/chat", {**ask, "stream": False})
        assert status == 200, body
        (call,) = orjson.loads(body)["message"]["tool_calls"]
        assert call["function"]["arguments"] == {"city": "Paris"}
        # The tool's answer goes back with the call it answers (an id made for an
        # Ollama call without one), and the model's text comes back.
        history = [
            *MESSAGES,
            {"role": "assistant", "content": "", "tool_calls": [{"function": CALL}]},
            {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"},
        ]
        status, _, body = await post(
            proxy.url + "/api/chat",
            {"model": LOCAL, "messages": history, "tools": TOOLS, "stream": False},
        )
        assert status == 200, body
        assert orjson.loads(body)["message"]["content"] == ANSWER
        assert seen.bodies[-1]["messages"][1:] == [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_0",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "content": "18 degrees", "tool_call_id": "call_0"},
        ]
        # Ollama's format: "json" and a schema, as OpenAI's response_format.
        schema = {"type": "object", "properties": {"colour": {"type": "string"}}}
        for given, sent in (
            ("json", {"type": "json_object"}),
            (
                schema,
                {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}},
            ),
        ):
            status, _, body = await post(
                proxy.url + "/api/generate",
                {"model": LOCAL, "prompt": "Colour?", "format": given, "stream": False},
            )
            assert status == 200, body
            assert orjson.loads(orjson.loads(body)["response"]) == {"colour": "blue"}
            assert seen.bodies[-1]["response_format"] == sent
    finally:
        proxy.stop()


def test_the_official_clients_get_tool_calls_and_json_from_the_fallback(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    proxy = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url))
    try:
        client = ollama.Client(host=proxy.url)
        for stream in (False, True):
            answers = client.chat(LOCAL, messages=MESSAGES, tools=TOOLS, stream=stream)
            calls = [
                c
                for a in ([answers] if not stream else answers)
                for c in a.message.tool_calls or []
            ]
            assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
                ("get_weather", {"city": "Paris"})
            ]
        sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
        completion = sdk.chat.completions.create(
            model=LOCAL, messages=MESSAGES, tools=TOOLS, tool_choice="auto"
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert call.id == CALL_ID and call.type == "function"
        assert call.function.name == "get_weather"
        assert orjson.loads(call.function.arguments) == {"city": "Paris"}
        assert cloud_server.seen.bodies[-1]["tool_choice"] == "auto"
        chunks = list(
            sdk.chat.completions.create(model=LOCAL, messages=MESSAGES, tools=TOOLS, stream=True)
        )
        pieces = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
        assert pieces[0].id == CALL_ID and pieces[0].function is not None
        assert pieces[0].function.name == "get_weather"
        arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
        assert orjson.loads(arguments) == {"city": "Paris"}
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        # The answer to the call, then JSON by response_format.
        answered = sdk.chat.completions.create(
            model=LOCAL,
            messages=[
                *MESSAGES,
                {"role": "assistant", "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"},
            ],
            tools=TOOLS,
        )
        assert answered.choices[0].message.content == ANSWER
        sent = cloud_server.seen.bodies[-1]["messages"]
        assert sent[-1] == {"role": "tool", "content": "18 degrees", "tool_call_id": CALL_ID}
        as_json = sdk.chat.completions.create(
            model=LOCAL, messages=MESSAGES, response_format={"type": "json_object"}
        )
        assert as_json.choices[0].message.content == "".join(JSON_WORDS)
        assert cloud_server.seen.bodies[-1]["response_format"] == {"type": "json_object"}
    finally:
        proxy.stop()


def test_an_anthropic_provider_is_not_sent_tools(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    proxy = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url, "anthropic"))
    try:
        with pytest.raises(ollama.ResponseError) as refused:
            ollama.Client(host=proxy.url).chat(LOCAL, messages=MESSAGES, tools=TOOLS)
        assert refused.value.status_code == 503
        assert "sends tools only to OpenAI-compatible providers" in refused.value.error
        assert cloud_server.seen.bodies == []
    finally:
        proxy.stop()


def test_official_clients_work_against_the_fallback(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    proxy = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url, "anthropic"))
    try:
        client = ollama.Client(host=proxy.url)
        answer = client.chat(LOCAL, messages=MESSAGES)
        assert answer.message.content == ANSWER
        assert answer.eval_count == len(ANSWER_WORDS)
        streamed = list(client.chat(LOCAL, messages=MESSAGES, stream=True))
        assert "".join(c.message.content or "" for c in streamed) == ANSWER
        assert streamed[-1].done and streamed[-1].prompt_eval_count == PROMPT_TOKENS
        generated = client.generate(LOCAL, "Why is the sky blue?")
        assert generated.response == ANSWER
        sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
        completion = sdk.chat.completions.create(model=LOCAL, messages=MESSAGES)
        assert completion.choices[0].message.content == ANSWER
        assert completion.usage is not None and completion.usage.total_tokens == 11
        chunks = list(
            sdk.chat.completions.create(
                model=LOCAL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    finally:
        proxy.stop()


async def test_a_local_backend_that_can_serve_keeps_the_request(
    servers: ServerThread, own_emulator: Emulator, cloud_server: StandIn
) -> None:
    section = cloud_section(cloud_server.url, models={LOCAL: "gpt-x", "gone:1b": "gpt-x"})
    proxy = Proxy(servers, [own_emulator.url], cloud=section)
    try:
        for stream in (True, False):
            status, headers, body = await post(
                proxy.url + "/api/chat", {"model": LOCAL, "messages": MESSAGES, "stream": stream}
            )
            assert status == 200, body
            assert "X-Autoroute-Backend" not in headers
        # Not mapped and not local: Ollama's own 404, never the cloud.
        status, _, _ = await post(
            proxy.url + "/api/chat", {"model": "other:1b", "messages": MESSAGES}
        )
        assert status == 404
        # Embeddings and other routes never go out, even for a mapped model.
        status, _, _ = await post(proxy.url + "/api/embed", {"model": "gone:1b", "input": "x"})
        assert status == 404
        assert cloud_server.seen.bodies == []
        # A mapped model no local backend lists: the cloud stands in.
        status, headers, body = await post(
            proxy.url + "/api/chat", {"model": "gone:1b", "messages": MESSAGES}
        )
        assert status == 200, body
        assert headers["X-Autoroute-Backend"] == "cloud:openai"
        check_ollama_stream(ndjson(body), "message")
        assert [b["model"] for b in cloud_server.seen.bodies] == ["gpt-x"]
    finally:
        proxy.stop()


async def _busy_ollama(request: web.Request) -> web.Response:
    if request.path == "/api/tags":
        return web.json_response({"models": [{"name": LOCAL, "model": LOCAL}]})
    if request.path == "/api/ps":
        return web.json_response({"models": []})
    # What Ollama answers with its queue full (OLLAMA_MAX_QUEUE).
    message = "server busy, please try again.  maximum pending requests exceeded"
    return web.json_response({"error": message}, status=503)


async def test_every_backend_refusing_more_work_falls_back(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    busy = web.Application()
    busy.router.add_route("*", "/{tail:.*}", _busy_ollama)
    port = free_port()
    runner = servers.serve(lambda: busy, port)
    proxy = Proxy(servers, [f"http://127.0.0.1:{port}"], cloud=cloud_section(cloud_server.url))
    plain = Proxy(servers, [f"http://127.0.0.1:{port}"])
    try:
        status, headers, body = await post(
            proxy.url + "/api/chat", {"model": LOCAL, "messages": MESSAGES, "stream": False}
        )
        assert status == 200, body
        assert headers["X-Autoroute-Backend"] == "cloud:openai"
        assert orjson.loads(body)["message"]["content"] == ANSWER
        # Without the fallback the client gets the backend's own 503.
        status, _, body = await post(
            plain.url + "/api/chat", {"model": LOCAL, "messages": MESSAGES}
        )
        assert status == 503 and b"maximum pending requests" in body
    finally:
        proxy.stop()
        plain.stop()
        servers.stop(runner)


async def test_a_profile_that_opts_in_goes_to_the_cloud_first(
    servers: ServerThread, own_emulator: Emulator, cloud_server: StandIn
) -> None:
    section = cloud_section(cloud_server.url, models={"auto:fast": "fast-cloud"}, prefer=("fast",))
    proxy = Proxy(servers, [own_emulator.url], cloud=section)
    fast = {"model": "auto:fast", "messages": MESSAGES}
    try:
        # Explain says so, as the answer's headers do.
        _, _, doc = await explained(proxy, "/api/chat", fast)
        status, headers, _ = await post(proxy.url + "/api/chat", fast)
        assert status == 200
        assert headers["X-Autoroute-Backend"] == "cloud:openai" == doc["backend"]
        assert headers["X-Autoroute-Model"] == "fast-cloud" == doc["model"]
        assert headers["X-Autoroute-Reason"] == "cloud" == doc["reason"]
        assert doc["ranking"] == [] and doc["cloud"]["why"].endswith("prefer_for_profiles")
        # Another profile, not opted in, stays local while a backend can serve.
        status, headers, _ = await post(
            proxy.url + "/api/chat", {"model": "auto:best", "messages": MESSAGES}
        )
        assert status == 200
        assert "X-Autoroute-Backend" not in headers
        assert [b["model"] for b in cloud_server.seen.bodies] == ["fast-cloud"]
    finally:
        proxy.stop()
    # With its budget spent, the profile that prefers the cloud is served locally.
    section = cloud_section(
        cloud_server.url, budget=0, models={"auto:fast": "fast-cloud"}, prefer=("fast",)
    )
    proxy = Proxy(servers, [own_emulator.url], cloud=section)
    try:
        _, _, doc = await explained(proxy, "/api/chat", fast)
        status, headers, _ = await post(proxy.url + "/api/chat", fast)
        assert status == 200
        assert "X-Autoroute-Backend" not in headers and "backend" not in doc
        assert (headers["X-Autoroute-Model"], headers["X-Autoroute-Reason"]) == (
            doc["model"],
            doc["reason"],
        )
        assert len(cloud_server.seen.bodies) == 1
    finally:
        proxy.stop()


def event_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


async def wait_until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("never happened")


async def test_auto_falls_back_when_its_choice_fails_and_learns_nothing_from_it(
    servers: ServerThread, own_emulator: Emulator, cloud_server: StandIn
) -> None:
    """Where `auto`'s choice fails and the cloud answers in its place, the answer and
    its usage event say what served it, as where the cloud answers in the profile's
    name: reason "cloud", the provider's backend and model, and no score (the chosen
    model's, which did not answer); the decision keeps the model `auto` chose."""
    proxy = Proxy(servers, [own_emulator.url], cloud=cloud_section(cloud_server.url))
    app = proxy.app[APP_KEY]
    events = Path(proxy.config.usage.file_path)

    try:
        body = {"model": "auto", "messages": MESSAGES, "stream": False}
        status, headers, _ = await post(proxy.url + "/api/chat", body)
        assert status == 200 and "X-Autoroute-Backend" not in headers
        assert headers["X-Autoroute-Reason"] != "cloud" and "X-Autoroute-Score" in headers
        await wait_until(lambda: app.learner.observed == 1)
        own_emulator.stop()  # auto still lists its models: the relay finds it gone
        status, headers, answer = await post(proxy.url + "/api/chat", body)
        assert status == 200, answer
        said = [headers.get(f"X-Autoroute-{name}") for name in ("Backend", "Model", "Reason")]
        assert said == ["cloud:openai", "openai-standin-model", "cloud"]
        assert "X-Autoroute-Score" not in headers
        assert orjson.loads(answer)["message"]["content"] == ANSWER
        await wait_until(lambda: len(event_lines(events)) == 2)
        assert app.learner.observed == 1
        last = orjson.loads(event_lines(events)[-1])
        assert (last["provider"], last["backend"]) == ("openai", "cloud:openai")
        decision = last["decision"]
        assert decision["reason"] == "cloud" and decision["chosen"] in app.registry.models
    finally:
        proxy.stop()


async def test_where_the_cloud_refuses_too_the_request_reached_no_backend(
    servers: ServerThread, own_emulator: Emulator, cloud_server: StandIn
) -> None:
    """`auto`'s choice whose backends no request reaches any more (its Ollama stopped),
    and the cloud standing in refuses as well (the month's budget spent): the client
    gets the cloud's 503, and the usage event says what the proxy's 503 says without a
    cloud: the request reached no backend (`unreached`), so `auto` learns nothing of
    the model it chose, which never ran. So for a request naming a local model. The
    request failed all the same, as the stats count it."""
    section = cloud_section(cloud_server.url, budget=0)
    proxy = Proxy(servers, [own_emulator.url], cloud=section)
    app = proxy.app[APP_KEY]
    events = Path(proxy.config.usage.file_path)
    try:
        chat = {"model": "auto", "messages": MESSAGES, "stream": False}
        status, _, answer = await post(proxy.url + "/api/chat", chat)
        assert status == 200, answer
        own_emulator.stop()  # auto still lists its models: the relay finds it gone
        for model in ("auto", LOCAL):
            status, _, answer = await post(proxy.url + "/api/chat", {**chat, "model": model})
            assert status == 503 and "budget" in orjson.loads(answer)["error"], answer
        await wait_until(lambda: len(event_lines(events)) == 3)
        _, chosen, named = [orjson.loads(line) for line in event_lines(events)]
        assert chosen["decision"]["chosen"] in app.registry.models
        assert named["requested_model"] == LOCAL
        for event in (chosen, named):
            said = event["outcome"]
            assert (said["status"], said["unreached"]) == (503, True), event
            assert "budget" in said["error"] and outcome.failed(503, said["error"])
            assert outcome.of_event(event) is None and learning.decision_of(event) is None
        assert cloud_server.seen.bodies == []
    finally:
        proxy.stop()


async def test_where_a_backend_had_the_request_the_clouds_refusal_leaves_it_reached(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    """A backend had the request and answered that it takes no more work (Ollama's 503
    of a full queue), and the cloud standing in refuses too (the month's budget spent):
    the usage event does not say `unreached`, as the backend's own 503 without a cloud
    does not: a backend that had the request then failed fails it."""
    busy = web.Application()
    busy.router.add_route("*", "/{tail:.*}", _busy_ollama)
    port = free_port()
    runner = servers.serve(lambda: busy, port)
    section = cloud_section(cloud_server.url, budget=0)
    proxy = Proxy(servers, [f"http://127.0.0.1:{port}"], cloud=section)
    plain = Proxy(servers, [f"http://127.0.0.1:{port}"])
    try:
        said = []
        for each in (proxy, plain):
            status, headers, answer = await post(
                each.url + "/api/chat", {"model": LOCAL, "messages": MESSAGES}
            )
            assert status == 503, answer
            (event,) = await events_of(each.config.usage, headers["X-Request-ID"])
            said.append(event["outcome"])
        assert "budget" in said[0]["error"]
        assert [answer["unreached"] for answer in said] == [False, False]
        assert cloud_server.seen.bodies == []
    finally:
        proxy.stop()
        plain.stop()
        servers.stop(runner)


async def test_auto_chooses_a_model_another_backend_lists_before_the_cloud(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    """`auto`'s choice whose only backend refuses the connect (its Ollama stopped since
    the last health check: the circuit is still closed) is decided again among the
    models the other backends list, as without a cloud: a local model answers, and the
    cloud, which costs money, only once no local model can."""
    a = Emulator(servers, replace(FROZEN, models=("qwen2.5-coder:7b", "llama3.2:3b")))
    b = Emulator(servers, replace(FROZEN, models=(LOCAL,)))
    proxy = Proxy(
        servers,
        [a.url, b.url],
        health=Health(interval_seconds=3600),
        cloud=cloud_section(cloud_server.url),
    )
    body = {"model": "auto", "messages": MESSAGES, "stream": False}
    try:
        await settled(a, b)
        status, headers, answer = await post(proxy.url + "/api/chat", body)
        assert status == 200 and "X-Autoroute-Backend" not in headers, answer
        stopped, left = (a, b) if headers["X-Autoroute-Model"] in a.state.store else (b, a)
        stopped.stop()
        status, headers, answer = await post(proxy.url + "/api/chat", body)
        assert status == 200, answer
        assert "X-Autoroute-Backend" not in headers, headers
        assert headers["X-Autoroute-Model"] in left.state.store
        assert orjson.loads(answer)["model"] == headers["X-Autoroute-Model"]
        assert cloud_server.seen.bodies == []
        left.stop()  # no local model left to choose: the cloud stands in
        status, headers, answer = await post(proxy.url + "/api/chat", body)
        assert status == 200, answer
        assert (headers["X-Autoroute-Backend"], headers["X-Autoroute-Reason"]) == (
            "cloud:openai",
            "cloud",
        )
        assert len(cloud_server.seen.bodies) == 1
    finally:
        proxy.stop()
        a.stop()
        b.stop()


async def test_the_served_model_is_the_one_the_client_sees(
    servers: ServerThread, own_emulator: Emulator, cloud_server: StandIn
) -> None:
    """The usage event's served_model is the answer's model as the client sees it: the
    one named, auto's choice (X-Autoroute-Model), or the cloud model standing in (in
    X-Autoroute-Model and the answer's body)."""
    section = cloud_section(cloud_server.url, models={"gone:1b": "gpt-x", "auto:fast": "fast-x"})
    proxy = Proxy(servers, [own_emulator.url], cloud=section)
    events = Path(proxy.config.usage.file_path)
    try:
        asked = [
            ({"model": LOCAL}, LOCAL),
            ({"model": "gone:1b"}, "gpt-x"),  # mapped, listed by no backend
        ]
        for body, model in asked:
            status, headers, answer = await post(
                proxy.url + "/api/chat", {**body, "messages": MESSAGES, "stream": False}
            )
            assert status == 200, answer
            assert headers.get("X-Autoroute-Model") == model
            assert orjson.loads(answer)["model"] == model
        status, headers, answer = await post(
            proxy.url + "/api/chat", {"model": "auto:fast", "messages": MESSAGES, "stream": False}
        )
        assert status == 200 and "X-Autoroute-Backend" not in headers, answer
        chosen = headers["X-Autoroute-Model"]
        own_emulator.stop()  # auto's choice fails at the relay: the cloud stands in
        status, headers, answer = await post(
            proxy.url + "/api/chat", {"model": "auto:fast", "messages": MESSAGES, "stream": True}
        )
        assert status == 200, answer
        assert headers["X-Autoroute-Backend"] == "cloud:openai"
        assert headers["X-Autoroute-Model"] == "fast-x"
        assert {line["model"] for line in ndjson(answer)} == {"fast-x"}
        await wait_until(lambda: len(event_lines(events)) == 4)
        logged = [orjson.loads(line) for line in event_lines(events)]
        (local,) = (s.label for s in proxy.app[APP_KEY].backends.states)
        served = [(e["requested_model"], e["served_model"], e["backend"]) for e in logged]
        assert served == [
            (LOCAL, LOCAL, local),
            ("gone:1b", "gpt-x", "cloud:openai"),
            ("auto:fast", chosen, local),
            ("auto:fast", "fast-x", "cloud:openai"),
        ]
        assert logged[3]["decision"]["chosen"] == chosen  # what auto decided stays as it was
    finally:
        proxy.stop()


async def test_at_the_budget_the_fallback_stops_with_a_503_naming_it(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    # One answer (5 + 6 tokens) goes past a budget of 10; the next is refused.
    proxy = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url, budget=10))
    try:
        body = {"model": LOCAL, "messages": MESSAGES}
        status, _, _ = await post(proxy.url + "/api/chat", body)
        assert status == 200
        status, _, answer = await post(proxy.url + "/api/chat", body)
        assert status == 503
        error = orjson.loads(answer)["error"]
        assert "budget" in error and "openai 11/10 tokens" in error
        status, _, answer = await post(proxy.url + "/v1/chat/completions", body)
        assert status == 503 and "budget" in orjson.loads(answer)["error"]["message"]
        assert len(cloud_server.seen.bodies) == 1
        async with aiohttp.ClientSession() as session:
            metrics = await (await session.get(proxy.url + "/metrics")).text()
            spent = 'autoroute_cloud_tokens_total{kind="completion",provider="openai"} 6.0'
            assert spent in metrics
            assert "autoroute_cloud_budget_refusals_total 2.0" in metrics
            async with session.get(proxy.url + "/api/autoroute/health") as resp:
                health = await resp.json()
        (provider,) = health["cloud"]["providers"]
        assert provider["name"] == "openai" and provider["key_set"] is True
        assert (provider["monthly_token_budget"], provider["tokens_this_month"]) == (10, 11)
        assert OPENAI_KEY not in orjson.dumps(health).decode()
    finally:
        proxy.stop()


async def test_a_wrong_key_is_a_clear_error(
    servers: ServerThread, cloud_server: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(OPENAI_ENV, "sk-wrong")
    monkeypatch.setenv(ANTHROPIC_ENV, "sk-wrong")
    for api, said in (("openai", "Incorrect API key provided"), ("anthropic", "invalid x-api-key")):
        proxy = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url, api))
        try:
            status, headers, body = await post(
                proxy.url + "/api/chat", {"model": LOCAL, "messages": MESSAGES}
            )
            assert status == 502
            assert headers["X-Autoroute-Backend"] == f"cloud:{api}"
            assert orjson.loads(body) == {"error": f"cloud {api} answered 401: {said}"}
        finally:
            proxy.stop()
    monkeypatch.delenv(OPENAI_ENV)
    proxy = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url))
    try:
        status, _, body = await post(
            proxy.url + "/api/chat", {"model": LOCAL, "messages": MESSAGES}
        )
        assert status == 503
        assert orjson.loads(body)["error"] == (
            f"cloud openai: environment variable {OPENAI_ENV} is not set"
        )
    finally:
        proxy.stop()
    assert cloud_server.seen.bodies == []


async def test_a_load_of_auto_with_no_backend_is_answered_where_the_cloud_stands_in(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    """`ollama run auto` loads before it chats: with no usable backend, the load is the
    answer the chat after it would get. Where a provider stands in for the profile,
    that chat is the cloud's, so the load is Ollama's "load"; where none does (a
    provider mapped to a named model alone), both are the 503."""
    for models, status in (({"*": "standin"}, 200), ({"gone:1b": "gpt-x"}, 503)):
        proxy = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url, models=models))
        try:
            for path in ("/api/chat", "/api/generate"):
                answered, _, body = await post(proxy.url + path, {"model": "auto"})
                assert answered == status, (models, path, body)
                if status == 200:
                    assert orjson.loads(body)["done_reason"] == "load"
            chat = {"model": "auto", "messages": MESSAGES, "stream": False}
            assert (await post(proxy.url + "/api/chat", chat))[0] == status
        finally:
            proxy.stop()
    assert all(b["model"] == "standin" for b in cloud_server.seen.bodies)


async def test_a_load_of_auto_is_the_clouds_where_the_backend_back_has_no_model_for_it(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    """A load of `auto` is answered as the chat after it, after the same check of the
    backends that may be back: where the one back on its port lists no model the
    profile could choose (an embedding model alone) and the one that does is still
    down, that chat is the cloud's, which stands in for the profile, so the load is
    Ollama's "load", not the 503."""
    embedder = Emulator(servers, replace(FROZEN, models=("nomic-embed-text:latest",)))
    chatter = Emulator(servers, replace(FROZEN, models=(LOCAL,)))
    proxy = Proxy(
        servers,
        [embedder.url, chatter.url],
        # No background health check: only the test's refresh and requests check them.
        health=Health(interval_seconds=3600, failure_threshold=1, open_seconds=3600),
        cloud=cloud_section(cloud_server.url),
    )
    try:
        embedder.stop()
        chatter.stop()
        proxy.thread.call(proxy.app[APP_KEY].backends.refresh_all)
        for emulator in (embedder, chatter):
            assert await health_circuit(proxy.url, emulator.url) == "open"
        embedder.restart()
        for path in ("/api/chat", "/api/generate"):
            status, _, body = await post(proxy.url + path, {"model": "auto"})
            assert status == 200 and orjson.loads(body)["done_reason"] == "load", (path, body)
            # Explain of that load says the same.
            status, _, doc = await explained(proxy, path, {"model": "auto"})
            assert (status, doc["reason"]) == (200, "load"), (path, doc)
        # The check is of the backend listing the profile's model alone: the embedder,
        # back, could not take the load's chat, and checking it would only hold the
        # cloud's answer (`AutoRouter.unawaited`); its periodic check brings it back.
        assert await health_circuit(proxy.url, embedder.url) == "open"
        assert await health_circuit(proxy.url, chatter.url) == "open"
        chat = {"model": "auto", "messages": MESSAGES, "stream": False}
        _, _, doc = await explained(proxy, "/api/chat", chat)
        status, headers, body = await post(proxy.url + "/api/chat", chat)
        assert status == 200, body
        assert cloud_server.seen.bodies, "the chat is the cloud's"
        assert (doc["model"], doc["reason"]) == (
            headers["X-Autoroute-Model"],
            headers["X-Autoroute-Reason"],
        )
    finally:
        proxy.stop()
        embedder.stop()
        chatter.stop()


async def test_with_keys_cloud_errors_are_detailed_only_to_a_key_that_sees_every_model(
    servers: ServerThread, cloud_server: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for a local backend's failure: a key with a model list reads which provider
    failed and how (its status), not the provider's own words (OpenAI's 401 quotes a
    part of the operator's key), the host it could not reach, or the environment
    variable the operator's key is read from. A key that may see every model reads
    them all."""
    listed, free = "k-listed-1", "k-free-1"
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(listed), name="listed", models=(LOCAL,)),
            ApiKey(sha256=hash_key(free), name="free"),
        )
    )
    body = {"model": LOCAL, "messages": MESSAGES, "stream": False}
    dead_cloud = dead_url()
    cases = (
        ("sk-wrong", cloud_server.url, 502, "cloud openai answered 401", "Incorrect API key"),
        ("sk-wrong", dead_cloud, 502, "cloud openai failed", dead_cloud[len("http://") :]),
        (None, cloud_server.url, 503, "cloud openai: no API key is set", OPENAI_ENV),
    )
    for env, url, status, public, detail in cases:
        if env is None:
            monkeypatch.delenv(OPENAI_ENV, raising=False)
        else:
            monkeypatch.setenv(OPENAI_ENV, env)
        proxy = Proxy(servers, [dead_url()], cloud=cloud_section(url), auth=auth)
        try:
            got, _, answer = await post(proxy.url + "/api/chat", body, bearer(listed))
            assert (got, orjson.loads(answer)) == (status, {"error": public})
            got, _, answer = await post(proxy.url + "/api/chat", body, bearer(free))
            error = orjson.loads(answer)["error"]
            assert got == status and error.startswith("cloud openai") and detail in error
        finally:
            proxy.stop()
    # A stream the cloud cuts short ends with an error line worded the same way.
    cloud_server.seen.cut_after = 2
    monkeypatch.setenv(OPENAI_ENV, OPENAI_KEY)
    proxy = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url), auth=auth)
    try:
        streamed = {**body, "stream": True}
        got, _, answer = await post(proxy.url + "/api/chat", streamed, bearer(listed))
        assert got == 200 and ndjson(answer)[-1] == {"error": "cloud openai failed mid-stream"}
        got, _, answer = await post(proxy.url + "/api/chat", streamed, bearer(free))
        error = ndjson(answer)[-1]["error"]
        assert got == 200 and error.startswith("cloud openai failed mid-stream: ")
    finally:
        proxy.stop()


async def test_with_keys_a_spent_budget_counts_tokens_only_to_a_key_that_sees_every_model(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    """The month's tokens count every key's requests, which the health shows only to a
    key that may see every model: the refusal of a spent budget names the provider, its
    budget and the month to a key with a model list, not what was spent."""
    listed, free = "k-listed-2", "k-free-2"
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(listed), name="listed", models=(LOCAL,)),
            ApiKey(sha256=hash_key(free), name="free"),
        )
    )
    # One answer (5 + 6 tokens) goes past a budget of 10; the next is refused.
    section = cloud_section(cloud_server.url, budget=10)
    proxy = Proxy(servers, [dead_url()], cloud=section, auth=auth)
    body = {"model": LOCAL, "messages": MESSAGES, "stream": False}
    month = this_month()
    try:
        status, _, answer = await post(proxy.url + "/api/chat", body, bearer(free))
        assert status == 200, answer
        status, _, answer = await post(proxy.url + "/api/chat", body, bearer(listed))
        assert (status, orjson.loads(answer)) == (
            503,
            {"error": f"cloud fallback monthly token budget spent: openai (10 tokens) in {month}"},
        )
        status, _, answer = await post(proxy.url + "/v1/chat/completions", body, bearer(listed))
        assert status == 503 and "11" not in orjson.loads(answer)["error"]["message"]
        status, _, answer = await post(proxy.url + "/api/chat", body, bearer(free))
        assert (status, orjson.loads(answer)) == (
            503,
            {"error": f"cloud fallback monthly token budget spent: openai 11/10 tokens in {month}"},
        )
        assert len(cloud_server.seen.bodies) == 1
    finally:
        proxy.stop()


@pytest.mark.postgres
async def test_tokens_are_recorded_per_month_in_postgresql(
    servers: ServerThread, cloud_server: StandIn, database: Database, tmp_path: Path
) -> None:
    usage = postgres_usage(database.dsn, tmp_path)
    section = cloud_section(cloud_server.url, budget=30)
    proxy = Proxy(servers, [dead_url()], cloud=section, usage=usage)
    try:
        body = {"model": LOCAL, "messages": MESSAGES, "stream": False}
        for _ in range(2):
            status, _, answer = await post(proxy.url + "/api/chat", body)
            assert status == 200, answer
    finally:
        proxy.stop()  # flushes the usage events
    rows = await database.fetch("SELECT provider, month, tokens FROM cloud_usage")
    assert [(r["provider"], r["tokens"]) for r in rows] == [("openai", 22)]
    assert (
        rows[0]["month"]
        == (await database.fetch("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM') m"))[0]["m"]
    )
    events = await database.fetch(
        "SELECT backend, provider, prompt_eval_count, eval_count, event FROM usage_events"
    )
    assert len(events) == 2
    for e in events:
        assert (e["backend"], e["provider"]) == ("cloud:openai", "openai")
        assert (e["prompt_eval_count"], e["eval_count"]) == (PROMPT_TOKENS, len(ANSWER_WORDS))
        assert e["event"]["provider"] == "openai"
    # A second proxy on the same database reads the month's count: 22 of 30 leaves room
    # for one more answer, and then the shared budget is spent for both.
    first = Proxy(servers, [dead_url()], cloud=section, usage=usage)
    second = Proxy(servers, [dead_url()], cloud=section, usage=usage)
    try:
        status, _, _ = await post(first.url + "/api/chat", body)
        assert status == 200
        status, _, answer = await post(second.url + "/api/chat", body)
        assert status == 503 and "openai 33/30 tokens" in orjson.loads(answer)["error"]
    finally:
        first.stop()
        second.stop()


async def test_cloud_is_off_by_default(servers: ServerThread) -> None:
    proxy = Proxy(servers, [dead_url()])
    try:
        status, headers, body = await post(
            proxy.url + "/api/chat", {"model": LOCAL, "messages": MESSAGES}
        )
        assert status == 503
        assert "X-Autoroute-Backend" not in headers
        assert "no healthy backend" in orjson.loads(body)["error"]
    finally:
        proxy.stop()


async def test_without_its_budget_store_the_fallback_stays_off(
    servers: ServerThread, cloud_server: StandIn, tmp_path: Path
) -> None:
    gone = f"postgresql://postgres@127.0.0.1:{free_port()}/autoroute"
    usage = postgres_usage(gone, tmp_path)
    proxy = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url), usage=usage)
    try:
        body_sent = {"model": LOCAL, "messages": MESSAGES}
        status, _, body = await post(proxy.url + "/api/chat", body_sent)
        assert status == 503
        assert orjson.loads(body)["error"].startswith("cloud budget store unavailable")
        assert cloud_server.seen.bodies == []
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        (CloudProvider(base_url="api.openai.com", key_env="K"), "is not an http"),
        (CloudProvider(base_url="https://api.openai.com/v1"), "key_env"),
        (
            CloudProvider(base_url="https://x/v1", key_env="K", monthly_token_budget=-1),
            "must not be negative",
        ),
    ],
)
def test_a_provider_that_cannot_work_is_a_configuration_error(
    provider: CloudProvider, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Config(cloud=Cloud(enabled=True, providers={"p": provider})).check()


async def test_a_cloud_stream_cut_short_ends_the_clients_stream_with_an_error(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    cloud_server.seen.cut_after = 2
    proxy = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url, "anthropic"))
    try:
        status, _, body = await post(
            proxy.url + "/api/chat", {"model": LOCAL, "messages": MESSAGES}
        )
        assert status == 200  # the head went out with the first words
        *words, last = ndjson(body)
        assert "".join(w["message"]["content"] for w in words) == "".join(ANSWER_WORDS[:2])
        assert last["error"].startswith("cloud anthropic")
        # The prompt's tokens (said in message_start) and the words sent still count.
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy.url + "/api/autoroute/health") as resp:
                (provider,) = (await resp.json())["cloud"]["providers"]
        assert provider["tokens_this_month"] == PROMPT_TOKENS + 5  # 20 characters: 5
    finally:
        proxy.stop()


async def test_a_client_leaving_closes_the_cloud_stream_and_its_tokens_count(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    cloud_server.seen.delay = 0.2
    proxy = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url))
    try:
        async with aiohttp.ClientSession() as session:
            body = {"model": LOCAL, "messages": MESSAGES}
            async with session.post(proxy.url + "/api/chat", json=body) as resp:
                first = await resp.content.readline()
                assert orjson.loads(first)["message"]["content"] == ANSWER_WORDS[0]
                resp.close()  # the client leaves mid-answer
        await asyncio.to_thread(cloud_server.seen.gone.wait, 10)
        assert cloud_server.seen.gone.is_set()
        async with aiohttp.ClientSession() as session:

            async def spent() -> int:
                async with session.get(proxy.url + "/api/autoroute/health") as resp:
                    (provider,) = (await resp.json())["cloud"]["providers"]
                return int(provider["tokens_this_month"])

            for _ in range(250):
                if await spent():
                    break
                await asyncio.sleep(0.02)
            # The prompt estimated (no usage came), at least the first word's token.
            assert await spent() >= 2
    finally:
        proxy.stop()


async def test_a_client_that_stops_reading_a_cloud_stream_is_cut_off(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    """As for a local backend: a client that takes in nothing of its answer for
    `client_write_idle_seconds` is disconnected, and the cloud's stream closed."""
    cloud_server.seen.repeat = 50_000  # ~15 MB: more than the socket buffers hold
    proxy = Proxy(
        servers,
        [dead_url()],
        cloud=cloud_section(cloud_server.url),
        timeouts=Timeouts(client_write_idle_seconds=0.3),
    )
    try:
        body = orjson.dumps({"model": LOCAL, "messages": MESSAGES})
        sock = slow_reader(proxy.port, "/api/chat", body)
        # Never reading.
        await asyncio.to_thread(cloud_server.seen.gone.wait, 60)
        assert cloud_server.seen.gone.is_set()
        sock.close()
    finally:
        proxy.stop()


async def test_auto_with_a_keys_model_list_goes_to_the_cloud_only_for_a_model_on_it(
    servers: ServerThread, own_emulator: Emulator, cloud_server: StandIn
) -> None:
    """`auto` chooses only among a key's models: a cloud model mapped to the profile is
    not one of them, so neither a profile that prefers the cloud nor every backend
    down sends that key's request there. A key without a list is served as before."""
    listed, free = "k-listed-1", "k-free-1"
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(listed), name="listed", models=(LOCAL,)),
            ApiKey(sha256=hash_key(free), name="free"),
        )
    )
    section = cloud_section(cloud_server.url, models={"auto:fast": "fast-cloud"}, prefer=("fast",))
    proxy = Proxy(servers, [own_emulator.url], cloud=section, auth=auth)
    body = {"model": "auto:fast", "messages": MESSAGES, "stream": False}
    try:
        status, headers, answer = await post(proxy.url + "/api/chat", body, bearer(listed))
        assert status == 200, answer
        assert "X-Autoroute-Backend" not in headers
        assert headers["X-Autoroute-Model"] == LOCAL
        status, headers, _ = await post(proxy.url + "/api/chat", body, bearer(free))
        assert status == 200 and headers["X-Autoroute-Backend"] == "cloud:openai"
        assert len(cloud_server.seen.bodies) == 1
        own_emulator.stop()  # no backend at all: auto:fast has no stand-in for this key
        for _ in range(2):
            status, headers, answer = await post(proxy.url + "/api/chat", body, bearer(listed))
            assert status == 503, answer
            assert "X-Autoroute-Backend" not in headers
        assert len(cloud_server.seen.bodies) == 1
    finally:
        proxy.stop()


@pytest.mark.parametrize("name", ["qwen 2.5", "qwen:", "qwen2.5:7b@x"])
async def test_a_name_ollama_cannot_parse_never_goes_to_the_cloud(
    servers: ServerThread, own_emulator: Emulator, cloud_server: StandIn, name: str
) -> None:
    """A name Ollama cannot parse names no model: the backend answers it Ollama's 400,
    the same for every key. No backend lists it, so a provider standing in for "*"
    would otherwise serve it: a key whose list has one local model would reach the
    cloud model (and spend the month's tokens) by misspelling a name."""
    listed, free = "k-listed-1", "k-free-1"
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(listed), name="listed", models=(LOCAL,)),
            ApiKey(sha256=hash_key(free), name="free"),
        )
    )
    proxy = Proxy(servers, [own_emulator.url], cloud=cloud_section(cloud_server.url), auth=auth)
    try:
        for path, body in (
            ("/api/chat", {"model": name, "messages": MESSAGES, "stream": False}),
            ("/api/generate", {"model": name, "prompt": "Why?", "stream": False}),
            ("/v1/chat/completions", {"model": name, "messages": MESSAGES}),
        ):
            for key in (listed, free):
                status, headers, answer = await post(proxy.url + path, body, bearer(key))
                assert status == 400, (path, key, answer)
                assert "X-Autoroute-Backend" not in headers
                assert b"invalid model name" in answer
        assert cloud_server.seen.bodies == []
    finally:
        proxy.stop()


async def test_with_keys_the_health_names_cloud_models_only_to_a_key_that_sees_every_model(
    servers: ServerThread, own_emulator: Emulator, cloud_server: StandIn
) -> None:
    """The health is public: with keys on, it shows each provider and its budget but
    not the models it maps (local and cloud names) nor this month's tokens (every key's
    requests) without a key that may see them all."""
    listed, free = "k-listed-1", "k-free-1"
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(listed), name="listed", models=(LOCAL,)),
            ApiKey(sha256=hash_key(free), name="free"),
        )
    )
    mapped = {"mistral:7b": "secret-cloud-model"}
    proxy = Proxy(
        servers, [own_emulator.url], cloud=cloud_section(cloud_server.url, models=mapped), auth=auth
    )
    try:
        async with aiohttp.ClientSession() as session:
            seen: dict[str | None, bytes] = {}
            for key in (None, listed, free):
                headers = bearer(key) if key else {}
                async with session.get(
                    proxy.url + "/api/autoroute/health", headers=headers
                ) as resp:
                    assert resp.status == 200
                    seen[key] = await resp.read()
        for key in (None, listed):
            assert b"mistral:7b" not in seen[key] and b"secret-cloud-model" not in seen[key]
            (provider,) = orjson.loads(seen[key])["cloud"]["providers"]
            assert provider["name"] == "openai" and "monthly_token_budget" in provider
            # This month's tokens count every key's requests.
            assert "tokens_this_month" not in provider
        (provider,) = orjson.loads(seen[free])["cloud"]["providers"]
        assert provider["models"] == mapped and provider["tokens_this_month"] == 0
    finally:
        proxy.stop()


async def test_a_backend_restarted_on_its_port_serves_before_the_cloud_does(
    servers: ServerThread, own_emulator: Emulator, cloud_server: StandIn
) -> None:
    """A model only a backend whose host refused its connects lists (its Ollama
    restarting) goes to the paid cloud only once that backend is checked again and still
    down: one back on its port serves it, though no periodic health check has run since,
    with one check of it that the requests waiting on it share. A model it does not list
    goes to the cloud without a check of it."""
    section = cloud_section(cloud_server.url, models={"*": "gpt-x"})
    # No periodic health check during the test: only requests can bring the backend back.
    health = Health(interval_seconds=3600, failure_threshold=1, open_seconds=3600)
    proxy = Proxy(servers, [own_emulator.url], cloud=section, health=health)
    chat = {"model": LOCAL, "messages": MESSAGES, "stream": False}
    try:
        own_emulator.stop()
        status, headers, body = await post(proxy.url + "/api/chat", chat)
        assert status == 200, body
        assert headers["X-Autoroute-Backend"] == "cloud:openai"
        assert await health_circuit(proxy.url, own_emulator.url) == "open"
        own_emulator.restart()
        checks = own_emulator.state.requests["/api/ps"]  # which each check asks
        status, headers, body = await post(
            proxy.url + "/api/chat", {"model": "gone:1b", "messages": MESSAGES, "stream": False}
        )
        assert status == 200, body
        assert headers["X-Autoroute-Backend"] == "cloud:openai"
        assert own_emulator.state.requests["/api/ps"] == checks
        assert await health_circuit(proxy.url, own_emulator.url) == "open"
        answers = await asyncio.gather(*(post(proxy.url + "/api/chat", chat) for _ in range(8)))
        assert [status for status, _, _ in answers] == [200] * 8
        assert [h.get("X-Autoroute-Backend") for _, h, _ in answers] == [None] * 8
        assert own_emulator.state.requests["/api/chat"] == 8
        # One check for the 8, and the one refresh that their running the model, which
        # the check did not list loaded, brings forward (`BackendPool.ran`).
        await wait_until(lambda: own_emulator.state.requests["/api/ps"] >= checks + 2)
        await asyncio.sleep(1.5)  # a second refresh would come a second after it
        assert own_emulator.state.requests["/api/ps"] == checks + 2
        assert len(cloud_server.seen.bodies) == 2
    finally:
        proxy.stop()


async def explained(
    proxy: Proxy, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Explain's answer for `body` on the route `path`."""
    status, headers, answer = await post(f"{proxy.url}/api/autoroute/explain?path={path}", body)
    return status, headers, orjson.loads(answer)


async def test_explain_of_auto_where_the_cloud_stands_in_says_what_the_route_does(
    servers: ServerThread, cloud_server: StandIn
) -> None:
    """With no usable backend, `auto`'s chat is the cloud's where a provider stands in
    for the profile, and its load is Ollama's "load": explain of each says what the
    request then gets (the cloud model and why, the provider's backend; the load's
    answer), not the 503 of no backend; once the month's budget is spent, the route's
    refusal naming it."""
    models = {"auto:fast": "fast-cloud", "*": "any-cloud"}
    # One answer (5 + 6 tokens) goes past a budget of 10.
    section = cloud_section(cloud_server.url, budget=10, models=models)
    proxy = Proxy(servers, [dead_url()], cloud=section)
    try:
        for model, mapped in (("auto", "any-cloud"), ("auto:fast", "fast-cloud")):
            status, _, doc = await explained(proxy, "/api/chat", {"model": model})
            assert status == 200, doc
            assert doc["answer"]["done_reason"] == doc["reason"] == "load"
            chat = {"model": model, "messages": MESSAGES, "stream": False}
            status, _, doc = await explained(proxy, "/api/chat", chat)
            assert status == 200, doc
            assert (doc["model"], doc["ranking"]) == (mapped, [])
            assert doc["cloud"]["tokens_this_month"] == 0
        assert cloud_server.seen.bodies == []  # explain generates nothing
        # What the chat then gets is what explain said.
        for path in ("/api/chat", "/api/generate"):
            status, _, doc = await explained(proxy, path, {"model": "auto:fast"})
            answered, _, body = await post(proxy.url + path, {"model": "auto:fast"})
            assert status == answered == 200, (path, doc, body)
            assert doc["reason"] == orjson.loads(body)["done_reason"] == "load"
        chat = {"model": "auto:fast", "messages": MESSAGES, "stream": False}
        _, _, doc = await explained(proxy, "/api/chat", chat)
        status, headers, answer = await post(proxy.url + "/api/chat", chat)
        assert status == 200, answer
        said = {
            name: doc[field]
            for name, field in (
                ("X-Autoroute-Model", "model"),
                ("X-Autoroute-Reason", "reason"),
                ("X-Autoroute-Profile", "profile"),
                ("X-Autoroute-Backend", "backend"),
            )
        }
        assert said == {name: headers.get(name) for name in said}
        assert orjson.loads(answer)["model"] == doc["model"]
        # The month's budget spent: explain answers the route's refusal, which names it,
        # and neither says a reason: no provider answers, nor was a model chosen.
        status, explained_headers, doc = await explained(proxy, "/api/chat", chat)
        refused, headers, answer = await post(proxy.url + "/api/chat", chat)
        assert status == refused == 503
        assert doc == orjson.loads(answer) and "budget" in doc["error"], doc
        for name in ("X-Autoroute-Reason", "X-Autoroute-Profile", "X-Autoroute-Backend"):
            assert name not in headers and name not in explained_headers, name
        assert len(cloud_server.seen.bodies) == 1
        events = Path(proxy.config.usage.file_path)
        # The two loads', the chat the cloud answered, the refusal.
        await wait_until(lambda: len(event_lines(events)) == 4)
        *_, answered, refusal = (orjson.loads(line) for line in event_lines(events))
        assert answered["decision"]["reason"] == "cloud"
        assert (refusal["outcome"]["status"], refusal["decision"]) == (503, None)
    finally:
        proxy.stop()


async def test_a_body_ollama_refuses_is_its_400_before_any_cloud_path(
    servers: ServerThread, own_emulator: Emulator, cloud_server: StandIn
) -> None:
    """A field of a type Go refuses (`"stream": 5`) is Ollama's 400, however the fleet
    stands: with no usable backend the cloud stands in for `auto` and for a named
    model, and a profile in `prefer_for_profiles` goes to the cloud first, yet neither
    answers such a body nor turns it into a 503. Explain says the same 400."""
    models = {"auto:fast": "fast-cloud", "*": "any-cloud"}
    down = Proxy(servers, [dead_url()], cloud=cloud_section(cloud_server.url, models=models))
    section = cloud_section(cloud_server.url, models=models, prefer=("fast",))
    preferring = Proxy(servers, [own_emulator.url], cloud=section)
    native = (
        ("/api/chat", {"messages": MESSAGES, "stream": 5}),
        ("/api/generate", {"prompt": "Why?", "stream": 5}),
        ("/api/chat", {"messages": MESSAGES, "think": 5}),
    )
    refusals: dict[tuple[str, Any], str] = {}  # Go's error, by path and stream
    try:
        for proxy, model in ((down, "auto"), (down, "auto:fast"), (preferring, "auto:fast")):
            for path, fields in native:
                body = {"model": model, **fields}
                said, _, doc = await explained(proxy, path, body)
                status, headers, answer = await post(proxy.url + path, body)
                assert status == said == 400, (model, path, answer)
                assert orjson.loads(answer) == doc, (model, path)
                assert "X-Autoroute-Backend" not in headers
                refusals[path, fields.get("stream")] = doc["error"]
            # The OpenAI layer's own 400, in its shape.
            body = {"model": model, "messages": MESSAGES, "stream": 5}
            status, _, answer = await post(proxy.url + "/v1/chat/completions", body)
            assert status == 400, answer
            assert "cannot unmarshal" in orjson.loads(answer)["error"]["message"]
        # A named model the cloud stands in for, listed by no usable backend.
        for path, fields in native:
            status, _, answer = await post(down.url + path, {"model": LOCAL, **fields})
            assert status == 400, (path, answer)
            assert orjson.loads(answer)["error"] == refusals[path, fields.get("stream")]
        assert "cannot unmarshal number" in refusals["/api/chat", 5]
        assert cloud_server.seen.bodies == []
    finally:
        down.stop()
        preferring.stop()


async def test_auto_answered_by_the_cloud_records_the_profile_and_reason_cloud(
    servers: ServerThread, own_emulator: Emulator, cloud_server: StandIn
) -> None:
    """A request of `auto:<profile>` the cloud answers in the profile's name (its
    preference, or no usable backend) chose no model: its usage event's decision says
    the profile and the reason "cloud", as the answer's headers do, and no model, so
    the dashboard's choices and /metrics count it under "cloud" and the learner counts
    nothing of it for any local model."""
    models = {"auto:fast": "fast-cloud", "*": "any-cloud"}
    section = cloud_section(cloud_server.url, models=models, prefer=("fast",))
    preferring = Proxy(servers, [own_emulator.url], cloud=section)
    down = Proxy(servers, [dead_url()], cloud=section)
    try:
        for proxy, model in ((preferring, "auto:fast"), (down, "auto")):
            app = proxy.app[APP_KEY]
            events = Path(proxy.config.usage.file_path)
            body = {"model": model, "messages": MESSAGES, "stream": False}
            status, headers, answer = await post(proxy.url + "/api/chat", body)
            assert status == 200 and headers["X-Autoroute-Reason"] == "cloud", answer
            profile = headers["X-Autoroute-Profile"]
            await wait_until(lambda at=events: len(event_lines(at)) == 1)
            (logged,) = [orjson.loads(line) for line in event_lines(events)]
            assert logged["provider"] == "openai"
            assert logged["decision"] == {"reason": "cloud", "profile": profile, "chosen": None}
            async with aiohttp.ClientSession() as session:
                got = await session.get(proxy.url + "/api/autoroute/dashboard.json")
                shown = (await got.json())["auto"]
                metrics = await (await session.get(proxy.url + "/metrics")).text()
            counted = [
                (c["profile"], c["model"], c["reason"], c["count"]) for c in shown["choices"]
            ]
            assert counted == [(profile, None, "cloud", 1)]
            assert shown["latest"][profile]["reason"] == "cloud"
            assert 'autoroute_selections_total{model="",reason="cloud"} 1.0' in metrics
            assert app.learner.observed == 0
    finally:
        preferring.stop()
        down.stop()

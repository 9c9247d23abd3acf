"""The Ollama emulator against the official clients and raw HTTP.

Each test starts its own emulator on a free 127.0.0.1 port (AppRunner + TCPSite) with a
1 ms chunk delay. The official `ollama` and `openai` clients prove the shapes parse;
raw aiohttp requests check bytes, status codes and counters. No timing thresholds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import ollama
import openai
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.emulator import (
    STATE_KEY,
    EmulatorSettings,
    EmulatorState,
    create_app,
    responses_api,
    textgen,
    wire,
)
from proxy.emulator.catalog import CATALOG
from proxy.emulator.state import FROZEN_TIME_NS
from proxy.protocol import go_time
from proxy.routes import OLLAMA_ROUTES
from tests.support import where_called

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@dataclass
class Emu:
    url: str
    state: EmulatorState
    session: aiohttp.ClientSession

    async def post(
        self, path: str, body: Any = None, *, raw: bytes | None = None, method: str = "POST"
    ) -> tuple[int, dict[str, str], bytes]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        async with self.session.request(
            method, self.url + path, data=data, allow_redirects=False
        ) as r:
            return r.status, dict(r.headers), await r.read()

    async def wait_for(self, predicate: Any) -> None:
        """Poll a counter until it changes (bounded by a generous number of rounds)."""
        for _ in range(500):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition never became true")


async def _start(settings: EmulatorSettings) -> tuple[web.AppRunner, str]:
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    runner, url = await _start(EmulatorSettings(chunk_delay_ms=1, default_tokens=8))
    async with aiohttp.ClientSession() as session:
        yield Emu(url, runner.app[STATE_KEY], session)
    await runner.cleanup()


@pytest.fixture
async def slow_emu() -> AsyncIterator[Emu]:
    """Tokens every 50 ms and long answers: room to disconnect mid-generation."""
    runner, url = await _start(EmulatorSettings(chunk_delay_ms=50, default_tokens=400))
    async with aiohttp.ClientSession() as session:
        yield Emu(url, runner.app[STATE_KEY], session)
    await runner.cleanup()


# Housekeeping routes ---------------------------------------------------------------------


async def test_root_version_and_gin_errors(emu: Emu) -> None:
    status, headers, body = await emu.post("/", method="GET")
    assert (status, body) == (200, b"Ollama is running")
    status, headers, body = await emu.post("/api/version", method="GET")
    assert json.loads(body) == {"version": emu.state.settings.version}
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert "Server" not in headers
    status, headers, body = await emu.post("/api/nothing", method="GET")
    assert (status, body, headers["Content-Type"]) == (404, b"404 page not found", "text/plain")
    status, _, body = await emu.post("/api/tags", {})  # POST on a GET route
    assert (status, body) == (405, b"405 method not allowed")
    status, _, body = await emu.post("/api/ps", method="HEAD")  # Gin adds no HEAD
    assert status == 405
    status, headers, _ = await emu.post("/api/tags/", method="GET")
    assert (status, headers["Location"]) == (301, "/api/tags")


# The first Ollama release that registers each of these routes (server/routes.go's
# history); the others are older than any release a client still checks for.
ROUTE_RELEASES = {
    "/v1/responses": (0, 13, 3),
    "/v1/messages": (0, 14, 0),
    "/api/status": (0, 16, 2),
    "/api/experimental/web_search": (0, 18, 0),
    "/v1/audio/transcriptions": (0, 20, 0),
    "/api/experimental/model-recommendations": (0, 22, 1),
}


async def test_version_is_one_that_serves_every_route_the_emulator_serves(emu: Emu) -> None:
    """Clients decide from /api/version what a server speaks (the Codex CLI refuses an
    Ollama before 0.13.4, whose Responses API it needs). The emulator serves Ollama's
    whole route table, so it reports a release that has all of it: an older one would
    have such a client refuse the emulator, and the proxy in front of it."""
    served = {path for _, path, _ in OLLAMA_ROUTES}
    assert set(ROUTE_RELEASES) <= served
    status, _, body = await emu.post("/api/version", method="GET")
    version = json.loads(body)["version"]
    assert status == 200 and re.fullmatch(r"\d+\.\d+\.\d+", version), version
    release = tuple(int(part) for part in version.split("."))
    assert release >= max(ROUTE_RELEASES.values()), version


async def test_model_recommendations_are_ollamas_defaults(emu: Emu) -> None:
    """GET /api/experimental/model-recommendations (server/routes.go) answers the
    recommendations Ollama ships (`defaultModelRecommendations`) until ollama.com sends
    others, which a local emulator never fetches; Go leaves out the zero limits."""
    status, headers, body = await emu.post("/api/experimental/model-recommendations", method="GET")
    assert (status, headers["Content-Type"]) == (200, "application/json; charset=utf-8")
    recommendations = json.loads(body)["recommendations"]
    assert [r["model"] for r in recommendations] == [
        "kimi-k2.6:cloud",
        "glm-5.1:cloud",
        "qwen3.5:cloud",
        "minimax-m2.7:cloud",
        "gemma4",
        "qwen3.5",
    ]
    assert recommendations[0] == {
        "model": "kimi-k2.6:cloud",
        "description": "State-of-the-art coding, long-horizon execution, and multimodal agent"
        " swarm capability",
        "context_length": 262144,
        "max_output_tokens": 262144,
    }
    assert recommendations[4] == {
        "model": "gemma4",
        "description": "Reasoning and code generation locally",
        "vram_bytes": 12_000_000_000,
    }
    status, headers, _ = await emu.post("/api/experimental/model-recommendations", {})
    assert (status, headers["Allow"]) == (405, "GET")


async def test_v1_model_sends_a_cloud_name_to_ollama_com_and_reads_others_as_show(
    emu: Emu,
) -> None:
    """GET /v1/models/:model (server/routes.go): cloudModelPathPassthroughMiddleware
    sends a name that asks for the cloud to ollama.com as `/v1/models/<base>`, which
    the emulated machine cannot reach: Go's client error as a 502 in gin's shape (no
    OpenAI writer wraps the middleware's answer). Any other name reaches ShowHandler
    through RetrieveMiddleware, which reads its source suffix: `:local` is the model
    here (the id as asked), both suffixes its 400 in the OpenAI shape."""
    cloud = (("gpt-oss:120b-cloud", "gpt-oss:120b"), ("llama3.1:8b:cloud", "llama3.1:8b"))
    for name, base in cloud:
        status, headers, body = await emu.post("/v1/models/" + name, method="GET")
        unreached = f'Get "https://ollama.com:443/v1/models/{base}": dial tcp: lookup ollama.com'
        assert (status, json.loads(body)) == (502, {"error": unreached + ": no such host"})
        assert headers["Content-Type"] == "application/json; charset=utf-8"
    status, _, body = await emu.post("/v1/models/llama3.1:8b:local", method="GET")
    assert (status, json.loads(body)["id"]) == (200, "llama3.1:8b:local")
    status, _, body = await emu.post("/v1/models/llama3.1:8b:local:cloud", method="GET")
    message = json.loads(body)["error"]["message"]
    assert status == 400 and message.startswith("use either :local or :cloud, not both")


async def test_cross_origin_requests_as_ollamas_cors_middleware(emu: Emu) -> None:
    async def send(method: str, path: str, origin: str) -> tuple[int, dict[str, str], bytes]:
        async with emu.session.request(method, emu.url + path, headers={"Origin": origin}) as r:
            return r.status, dict(r.headers), await r.read()

    # An origin Ollama does not allow: a bare 403 before any handler, on any path.
    for path in ("/api/tags", "/api/chat", "/no/such/path"):
        status, headers, body = await send("GET", path, "https://evil.example")
        assert (status, body) == (403, b"")
        assert "Content-Type" not in headers and "Access-Control-Allow-Origin" not in headers
    status, headers, body = await send("OPTIONS", "/api/chat", "http://localhost:5173")
    assert (status, body) == (204, b"")
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert headers["Access-Control-Max-Age"] == "43200"
    status, headers, _ = await send("GET", "/api/version", "vscode-webview://x")
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "vscode-webview://x"


async def test_list_show_ps(emu: Emu) -> None:
    client = ollama.AsyncClient(host=emu.url)
    listed = await client.list()
    names = [m.model for m in listed.models]
    assert {"qwen2.5:7b", "qwen3:8b", "nomic-embed-text:latest", "mixtral:8x7b"} <= set(names)
    qwen = next(m for m in listed.models if m.model == "qwen2.5:7b")
    assert qwen.details is not None and qwen.details.parameter_size == "7.6B"
    assert qwen.details.quantization_level == "Q4_K_M" and len(qwen.digest or "") == 64

    shown = await client.show("qwen2.5-coder:7b")
    assert shown.capabilities == ["completion", "tools", "insert"]
    assert shown.modelinfo is not None and shown.modelinfo["qwen2.context_length"] == 32768
    assert "FROM" in (shown.modelfile or "")
    embedder = await client.show("nomic-embed-text")
    assert embedder.capabilities == ["embedding"]
    assert embedder.modelinfo is not None
    assert embedder.modelinfo["nomic-bert.embedding_length"] == 768

    assert (await client.ps()).models == []
    await client.generate("llama3.1:8b", "hello")
    running = (await client.ps()).models
    assert [m.model for m in running] == ["llama3.1:8b"]
    assert running[0].size_vram == running[0].size and running[0].expires_at is not None
    assert running[0].context_length == 4096
    # keep_alive 0 with an empty prompt unloads, answering done_reason "unload".
    unloaded = await client.generate("llama3.1:8b", "", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert (await client.ps()).models == []


@pytest.mark.parametrize("version", ["0.30.0", "0.29.9"])
async def test_tags_lists_capabilities_and_lengths_from_0_30(version: str) -> None:
    """From 0.30, /api/tags lists each model's capabilities and its context and
    embedding lengths (server/model_list_cache.go; `ollama launch` sets a model up from
    them): the capabilities /api/show lists, in the order the list finds them (vision
    from a projector after thinking); before 0.30, neither."""
    models = ("qwen2.5-coder:7b", "qwen3:8b", "llava:7b", "nomic-embed-text:latest")
    runner, url = await _start(EmulatorSettings(models=models, version=version))
    try:
        client = ollama.AsyncClient(host=url)
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/api/tags") as r:
                listed = {m["model"]: m for m in (await r.json())["models"]}
        assert set(listed) == set(models)
        if version == "0.29.9":
            for entry in listed.values():
                assert "capabilities" not in entry and "context_length" not in entry["details"]
            return
        assert listed["llava:7b"]["capabilities"] == ["completion", "vision"]
        assert listed["qwen3:8b"]["capabilities"] == ["completion", "tools", "thinking"]
        for name, entry in listed.items():
            shown = await client.show(name)
            assert set(entry["capabilities"]) == set(shown.capabilities or ())
            info = shown.modelinfo or {}
            arch = info["general.architecture"]
            assert entry["details"]["context_length"] == info[f"{arch}.context_length"]
            assert entry["details"]["embedding_length"] == info[f"{arch}.embedding_length"]
    finally:
        await runner.cleanup()


async def test_show_missing_answers_gins_404_while_tags_lists_the_models() -> None:
    """`show_missing` stands in for an Ollama-compatible server without /api/show: the
    route is Gin's plain 404, whatever the body, and the models are still listed."""
    runner, url = await _start(EmulatorSettings(models=("qwen2.5:7b",), show_missing=True))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/api/tags") as r:
                assert [m["model"] for m in (await r.json())["models"]] == ["qwen2.5:7b"]
            for body in (b'{"model": "qwen2.5:7b"}', b"not json"):
                async with session.post(url + "/api/show", data=body) as r:
                    assert r.status == 404
                    assert r.headers["Content-Type"] == "text/plain"
                    assert await r.read() == b"404 page not found"
    finally:
        await runner.cleanup()


async def test_show_hang_never_answers_show_while_tags_answers() -> None:
    """`show_hang` stands in for a server whose /api/show never answers: the models are
    still listed, a show waits until the client leaves."""
    runner, url = await _start(EmulatorSettings(models=("qwen2.5:7b",), show_hang=True))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/api/tags") as r:
                assert [m["model"] for m in (await r.json())["models"]] == ["qwen2.5:7b"]
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    await session.post(url + "/api/show", json={"model": "qwen2.5:7b"})
    finally:
        await runner.cleanup()


# Generation --------------------------------------------------------------------------------


async def test_generate_stream_matches_non_stream(emu: Emu) -> None:
    client = ollama.AsyncClient(host=emu.url)
    chunks = [
        c async for c in await client.generate("qwen2.5:7b", "Why is the sky blue?", stream=True)
    ]
    assert len(chunks) == 8 + 1 and all(not c.done for c in chunks[:-1])
    final = chunks[-1]
    assert final.done and final.done_reason == "stop" and final.response == ""
    assert final.eval_count == 8 and final.context and final.prompt_eval_count
    assert final.total_duration and final.eval_duration and final.load_duration
    whole = await client.generate("qwen2.5:7b", "Why is the sky blue?")
    assert whole.response == "".join(c.response or "" for c in chunks) != ""
    other = await client.generate("qwen2.5:7b", "Something else entirely")
    assert other.response != whole.response
    assert emu.state.completed == 3 and emu.state.active_streams == 0


async def test_num_predict_is_cut_to_ten_contexts(emu: Emu) -> None:
    """llm/server.go cuts num_predict above 10x num_ctx down to that: a client's huge
    num_predict neither runs without end nor has the emulator build an unbounded
    answer (building it would hold the event loop and grow without bound)."""
    options = {"num_predict": 10**15, "num_ctx": 10}
    status, _, body = await emu.post(
        "/api/generate",
        {"model": "mistral:7b", "prompt": "count", "stream": False, "options": options},
    )
    assert status == 200
    assert (json.loads(body)["eval_count"], json.loads(body)["done_reason"]) == (100, "length")
    chat = {"role": "user", "content": "count"}
    status, _, body = await emu.post(
        "/api/chat",
        {"model": "mistral:7b", "messages": [chat], "stream": False, "options": options},
    )
    assert status == 200 and json.loads(body)["eval_count"] == 100


async def test_generate_options_format_and_errors(emu: Emu) -> None:
    client = ollama.AsyncClient(host=emu.url)
    cut = await client.generate("mistral:7b", "count", options={"num_predict": 3})
    assert (cut.eval_count, cut.done_reason) == (3, "length")
    as_json = await client.generate("mistral:7b", "json please", format="json")
    assert isinstance(json.loads(as_json.response or ""), dict)
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}, "name": {"type": "string"}},
    }
    shaped = json.loads((await client.generate("mistral:7b", "x", format=schema)).response or "")
    assert isinstance(shaped["age"], int) and isinstance(shaped["name"], str)
    loaded = await client.generate("gemma2:9b", "")
    assert loaded.done and loaded.done_reason == "load"
    fim = await client.generate("codegemma:7b", "def f(", suffix="return x")
    assert fim.response
    with pytest.raises(ollama.ResponseError) as err:
        await client.generate("gemma2:9b", "x", suffix="y")
    assert err.value.status_code == 400
    assert err.value.error == "registry.ollama.ai/library/gemma2:9b does not support insert"
    with pytest.raises(ollama.ResponseError) as err:
        await client.generate("nomic-embed-text", "x")
    assert err.value.error == '"nomic-embed-text" does not support generate'
    with pytest.raises(ollama.ResponseError) as err:
        await client.generate("llama3.1:8b", "what is this", images=["aGVsbG8="])
    assert err.value.status_code == 500 and "image input" in err.value.error
    vision = await client.generate("llava:7b", "what is this", images=["aGVsbG8="])
    assert vision.response


@pytest.mark.parametrize(
    ("think", "status", "error"),
    [
        ("max", 200, None),  # api.ThinkValue takes it since Ollama added it
        ("high", 200, None),
        (
            "extreme",
            400,
            'invalid think value: "extreme" (must be "high", "medium", "low", "max", true,'
            " or false)",
        ),
        (
            1,
            400,
            'think must be a boolean or string ("high", "medium", "low", "max", true, or false)',
        ),
    ],
)
async def test_think_values_are_ollamas(
    emu: Emu, think: Any, status: int, error: str | None
) -> None:
    messages = [{"role": "user", "content": "hi"}]
    body = {"model": "qwen3:8b", "messages": messages, "think": think, "stream": False}
    got, _, answer = await emu.post("/api/chat", body)
    assert got == status, answer
    if error is not None:
        assert json.loads(answer) == {"error": error}


@pytest.mark.parametrize(
    ("effort", "error"),
    [
        ("minimal", None),  # clamped to "low"
        ("xhigh", None),  # clamped to "max"
        ("ultra", None),
        ("max", None),
        ("none", None),
        (
            "extreme",
            'invalid reasoning value: "extreme" (must be "minimal", "low", "medium", "high",'
            ' "xhigh", "ultra", "max", or "none")',
        ),
    ],
)
async def test_reasoning_efforts_are_ollamas(emu: Emu, effort: str, error: str | None) -> None:
    """openai.thinkFromReasoningEffort: OpenAI's and clients' tiers clamped to
    Ollama's, anything else refused."""
    messages = [{"role": "user", "content": "hi"}]
    body = {"model": "qwen3:8b", "messages": messages, "reasoning_effort": effort}
    status, _, answer = await emu.post("/v1/chat/completions", body)
    if error is None:
        assert status == 200, answer
    else:
        assert (status, json.loads(answer)["error"]["message"]) == (400, error)


@pytest.mark.parametrize(
    ("tools", "error"),
    [
        (["x"], "json: cannot unmarshal string into Go struct field {}.tools of type api.Tool"),
        (
            [{"type": "function", "function": "x"}],
            "json: cannot unmarshal string into Go struct field Tool.tools.function of type"
            " api.ToolFunction",
        ),
        (
            [{"type": 1, "function": {"name": "f"}}],
            "json: cannot unmarshal number into Go struct field Tool.tools.type of type string",
        ),
        (
            [{"type": "function", "function": {"name": ["f"]}}],
            "json: cannot unmarshal array into Go struct field ToolFunction.tools.function.name"
            " of type string",
        ),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"required": [1]}}}],
            "json: cannot unmarshal number into Go struct field"
            " ToolFunctionParameters.tools.function.parameters.required of type string",
        ),
        (
            [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"properties": {"a": {"type": 5}}}},
                }
            ],
            "json: cannot unmarshal number into Go struct field"
            " ToolFunctionParameters.tools.function.parameters.properties.type of type []string",
        ),
    ],
    ids=["not-an-object", "function", "type", "name", "required", "properties"],
)
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
async def test_tools_of_the_wrong_shape_get_gos_unmarshal_error(
    emu: Emu, tools: list[Any], error: str, path: str
) -> None:
    messages = [{"role": "user", "content": "hi"}]
    body = {"model": "qwen2.5:7b", "messages": messages, "tools": tools, "stream": False}
    status, _, answer = await emu.post(path, body)
    doc = json.loads(answer)
    message = doc["error"] if path == "/api/chat" else doc["error"]["message"]
    struct = "ChatRequest" if path == "/api/chat" else "ChatCompletionRequest"
    assert (status, message) == (400, error.format(struct))


@pytest.mark.parametrize(
    ("path", "raw", "model"),
    [
        ("/api/chat", b'{"Model": "qwen2.5:7b", "STREAM": false}', "qwen2.5:7b"),
        (
            "/api/chat",
            b'{"Model": "ghost", "Messages": [{"Role": "user", "Content": "hi"}],'
            b' "model": "qwen2.5:7b", "stream": false}',
            "qwen2.5:7b",
        ),
        # The last of the keys that fold alike wins, where each of them stands.
        ("/api/generate", b'{"model": "ghost", "Model": "x", "model": "qwen2.5:7b"}', "qwen2.5:7b"),
        (
            "/v1/chat/completions",
            b'{"MODEL": "qwen2.5:7b", "messages": [{"ROLE": "user", "CONTENT": "hi"}]}',
            "qwen2.5:7b",
        ),
    ],
    ids=["chat-load", "chat", "last-wins", "openai"],
)
async def test_keys_match_fields_whatever_their_case_as_go_decodes_them(
    emu: Emu, path: str, raw: bytes, model: str
) -> None:
    """Go's encoding/json matches a key to a field case-insensitively, the last match
    winning: Ollama runs what such a body names."""
    status, _, body = await emu.post(path, raw=raw)
    assert status == 200, body
    answer = json.loads(body.splitlines()[-1])
    assert answer["model"] == model
    if "choices" in answer:
        assert answer["choices"][0]["message"]["content"]


async def test_chat_stream_sync_client_and_thinking(emu: Emu) -> None:
    client = ollama.AsyncClient(host=emu.url)
    messages = [{"role": "user", "content": "Hello there"}]
    parts = [c async for c in await client.chat("llama3.1:8b", messages, stream=True)]
    assert parts[-1].done and parts[-1].message.role == "assistant"
    text = "".join(p.message.content or "" for p in parts)

    def sync_chat() -> str:
        return ollama.Client(host=emu.url).chat("llama3.1:8b", messages).message.content or ""

    assert await asyncio.to_thread(sync_chat) == text != ""

    thought = await client.chat("qwen3:8b", messages, think=True)
    assert thought.message.thinking and thought.message.content
    streamed = [c async for c in await client.chat("qwen3:8b", messages, stream=True)]
    first_thinking = next(i for i, c in enumerate(streamed) if c.message.thinking)
    first_content = next(i for i, c in enumerate(streamed) if c.message.content)
    assert first_thinking < first_content  # thinking streams first (on by default)
    no_think = await client.chat("qwen3:8b", messages, think=False)
    assert not no_think.message.thinking
    with pytest.raises(ollama.ResponseError) as err:
        await client.chat("gemma2:9b", messages, think=True)
    assert (err.value.status_code, err.value.error) == (
        400,
        '"gemma2:9b" does not support thinking',
    )


async def test_chat_tools(emu: Emu) -> None:
    client = ollama.AsyncClient(host=emu.url)
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    reply = await client.chat("qwen2.5:7b", ask, tools=[WEATHER_TOOL])
    calls = reply.message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments, dict) and "city" in calls[0].function.arguments
    again = await client.chat("qwen2.5:7b", ask, tools=[WEATHER_TOOL])
    assert again.message.tool_calls == reply.message.tool_calls  # deterministic
    followed = [
        *ask,
        reply.message.model_dump(exclude_none=True),
        {"role": "tool", "content": "18 C, sunny", "tool_name": "get_weather"},
    ]
    answer = await client.chat("qwen2.5:7b", followed, tools=[WEATHER_TOOL])
    assert answer.message.content and not answer.message.tool_calls
    with pytest.raises(ollama.ResponseError) as err:
        await client.chat("gemma2:9b", ask, tools=[WEATHER_TOOL])
    assert err.value.error == "registry.ollama.ai/library/gemma2:9b does not support tools"


async def test_embed(emu: Emu) -> None:
    client = ollama.AsyncClient(host=emu.url)
    out = await client.embed("nomic-embed-text", ["first", "second"])
    assert [len(v) for v in out.embeddings] == [768, 768]
    assert math.isclose(math.fsum(x * x for x in out.embeddings[0]), 1.0, rel_tol=1e-4)
    small = await client.embed("all-minilm", "one", dimensions=64)
    assert len(small.embeddings[0]) == 64
    full = (await client.embed("all-minilm", "one")).embeddings[0]
    assert len(full) == 384
    # `dimensions` truncates then renormalises: same direction, larger components.
    scale = small.embeddings[0][0] / full[0]
    assert scale > 1 and math.isclose(small.embeddings[0][1] / full[1], scale, rel_tol=1e-3)
    legacy = await client.embeddings("all-minilm", "one")
    assert len(legacy.embedding) == 384
    status, _, body = await emu.post("/api/embed", {"model": "all-minilm", "input": [1, 2]})
    assert (status, json.loads(body)) == (400, {"error": "invalid input type"})


# Model store ---------------------------------------------------------------------------------


async def test_pull_create_copy_delete(emu: Emu) -> None:
    emu_small = EmulatorSettings(models=("qwen2.5:7b",), chunk_delay_ms=1)
    runner, url = await _start(emu_small)
    try:
        client = ollama.AsyncClient(host=url)
        assert [m.model for m in (await client.list()).models] == ["qwen2.5:7b"]
        progress = [p async for p in await client.pull("all-minilm", stream=True)]
        statuses = [p.status for p in progress]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        assert "verifying sha256 digest" in statuses and "writing manifest" in statuses
        layer = [p for p in progress if p.digest and p.total and p.total > 1_000_000]
        assert layer and layer[-1].completed == layer[-1].total
        assert sorted({p.completed or 0 for p in layer}) != [layer[-1].total]  # several steps
        assert "all-minilm:latest" in [m.model for m in (await client.list()).models]
        with pytest.raises(ollama.ResponseError) as err:
            await client.pull("no-such-model:1b")
        assert "file does not exist" in err.value.error

        created = [
            p.status
            async for p in await client.create(
                "helper:1", from_="qwen2.5:7b", system="Be brief.", stream=True
            )
        ]
        assert created[-1] == "success" and "writing manifest" in created
        details = (await client.show("helper:1")).details
        assert details is not None and details.parent_model == "qwen2.5:7b"
        await client.copy("helper:1", "helper:2")
        assert (await client.generate("helper:2", "hi")).response
        # PsHandler fills a running model's details without its parent (tags and show
        # name it).
        (running,) = (await client.ps()).models
        assert running.model == "helper:2" and running.details is not None
        assert running.details.parent_model == "" and running.details.family == "qwen2"
        # A digest is the manifest's, as Ollama's: a copy lists its source's, a create
        # of the same name from another base (or with another system) another one.
        digests = {m.model: m.digest for m in (await client.list()).models}
        assert digests["helper:2"] == digests["helper:1"]
        await client.create("helper:2", from_="all-minilm")
        again = {m.model: m.digest for m in (await client.list()).models}
        assert again["helper:2"] not in (digests["helper:1"], digests["qwen2.5:7b"])
        await client.create("helper:2", from_="qwen2.5:7b", system="Be long.")
        once_more = {m.model: m.digest for m in (await client.list()).models}
        assert once_more["helper:2"] not in (digests["helper:1"], again["helper:2"])
        await client.delete("helper:1")
        with pytest.raises(ollama.ResponseError) as err:
            await client.delete("helper:1")
        assert (err.value.status_code, err.value.error) == (404, "model 'helper:1' not found")
        with pytest.raises(ollama.ResponseError) as err:
            await client.copy("missing:1", "x:1")
        assert err.value.status_code == 404
    finally:
        await runner.cleanup()


async def test_blobs(emu: Emu) -> None:
    payload = b"gguf" * 100_000
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    assert (await emu.post(f"/api/blobs/{digest}", method="HEAD"))[0] == 404
    wrong = "sha256:" + "0" * 64
    status, _, body = await emu.post(f"/api/blobs/{wrong}", raw=payload)
    assert status == 400
    assert json.loads(body)["error"] == f'digest mismatch, expected "{wrong}", got "{digest}"'
    assert (await emu.post(f"/api/blobs/{digest}", raw=payload))[0] == 201
    assert (await emu.post(f"/api/blobs/{digest}", method="HEAD"))[0] == 200
    assert (await emu.post("/api/blobs/sha256:abc", method="HEAD"))[0] == 400


# Errors on the wire --------------------------------------------------------------------------


async def test_request_errors(emu: Emu) -> None:
    cases: list[tuple[bytes, int, str]] = [
        (b"", 400, "missing request body"),
        (b"   ", 400, "missing request body"),
        (b"{bad", 400, "invalid character 'b' looking for beginning of object key string"),
        (b'{"model": "x",', 400, "unexpected EOF"),
        (
            b'{"model": 5}',
            400,
            "json: cannot unmarshal number into Go struct field "
            "GenerateRequest.model of type string",
        ),
        (
            b'{"model": "qwen2.5:7b", "stream": "yes"}',
            400,
            "json: cannot unmarshal string "
            "into Go struct field GenerateRequest.stream of type bool",
        ),
        (b'{"model": "ghost"}', 404, "model 'ghost' not found"),
        # No name is a missing one to GenerateHandler (and EmbedHandler); a name
        # model.ParseName cannot qualify is Ollama's 400 to every handler
        # (writeModelRefParseError).
        (b'{"model": ""}', 404, "model '' not found"),
        (b'{"model": "bad name!!"}', 400, "invalid model name"),
        (b'{"model": "qwen2.5:"}', 400, "invalid model name"),
    ]
    for raw, status, message in cases:
        got_status, headers, body = await emu.post("/api/generate", raw=raw)
        assert (got_status, json.loads(body)) == (status, {"error": message}), raw
        assert headers["Content-Type"] == "application/json; charset=utf-8"
    status, _, body = await emu.post("/api/chat", {"model": ""})
    assert (status, json.loads(body)) == (400, {"error": "model is required"})
    for path in ("/api/chat", "/api/embed", "/api/embeddings"):
        status, _, body = await emu.post(path, {"model": "bad name!!", "input": "x"})
        assert (status, json.loads(body)) == (400, {"error": "invalid model name"})
    status, _, body = await emu.post("/api/embed", {"model": "", "input": "x"})
    assert (status, json.loads(body)) == (404, {"error": "model '' not found"})
    # api.Message decodes itself (an Alias of it), and json.Unmarshal puts the error of
    # that inner decoding in the request's context: the request's struct, the path from
    # it (as Ollama answers it: "ChatRequest.messages.content", ollama#10255).
    for message, error in (
        ({"content": 1}, "number into Go struct field ChatRequest.messages.content of type string"),
        (
            {"images": [1]},
            "number into Go struct field ChatRequest.messages.images of type api.ImageData",
        ),
        (
            {"images": "x"},
            "string into Go struct field ChatRequest.messages.images of type []api.ImageData",
        ),
        (5, "number into Go struct field ChatRequest.messages of type api.Alias"),
    ):
        status, _, body = await emu.post("/api/chat", {"model": "x", "messages": [message]})
        assert (status, json.loads(body)["error"]) == (400, "json: cannot unmarshal " + error)
    status, _, body = await emu.post("/api/show", {"model": "ghost"})
    assert (status, json.loads(body)) == (404, {"error": "model 'ghost:latest' not found"})


async def test_web_routes_are_out_of_reach_as_cloud_models_are(emu: Emu) -> None:
    """Ollama sends `/api/experimental/web_*` and a cloud model's request to ollama.com
    alike (proxyCloudRequestWithPath): the emulated machine, which cannot reach it,
    answers both with Go's client error, a 502 naming the URL it tried."""
    lookup = "dial tcp: lookup ollama.com: no such host"
    cases = [
        ("/api/experimental/web_search", {"query": "x"}, "/api/web_search"),
        ("/api/experimental/web_fetch?a=1", {"url": "u"}, "/api/web_fetch?a=1"),
        ("/api/chat", {"model": "gpt-oss:120b-cloud"}, "/api/chat"),
    ]
    for path, body, target in cases:
        status, _, answer = await emu.post(path, body)
        expected = f'Post "https://ollama.com:443{target}": {lookup}'
        assert (status, json.loads(answer)) == (502, {"error": expected}), path


async def test_each_handler_names_a_model_it_lacks_in_its_own_words(emu: Emu) -> None:
    """ShowHandler (and `/v1/models/:model`, which RetrieveMiddleware sends there)
    names a model it lacks as it reads the name: model.ParseName's parts, each spelled
    as the same part of a model the machine holds (getExistingName: the tag `70B` as
    llama3.3:70b's), the default host and namespace left out, the tag kept
    (Name.DisplayShortest), a source suffix left out. EmbedHandler and
    EmbeddingsHandler find no manifest and say so in handleScheduleError's words, the
    name quoted as asked; generate and chat name it as asked."""
    shown = [
        ("ghost", "ghost:latest"),
        ("Ghost:local", "Ghost:latest"),
        ("library/ghost", "ghost:latest"),
        ("registry.ollama.ai/library/ghost:1", "ghost:1"),
        ("REGISTRY.OLLAMA.AI/LIBRARY/ghost", "ghost:latest"),
        ("user/ghost", "user/ghost:latest"),
        ("example.com:5000/user/ghost", "example.com:5000/user/ghost:latest"),
        ("LLAMA3.1:70B", "llama3.1:70b"),
    ]
    for name, qualified in shown:
        status, _, body = await emu.post("/api/show", {"model": name})
        assert (status, json.loads(body)) == (404, {"error": f"model '{qualified}' not found"})
        if "/" not in name:
            status, _, body = await emu.post("/v1/models/" + name, method="GET")
            message = json.loads(body)["error"]["message"]
            assert (status, message) == (404, f"model '{qualified}' not found"), name
    pulling = 'model "Ghost" not found, try pulling it first'
    for path in ("/api/embed", "/api/embeddings", "/v1/embeddings"):
        status, _, body = await emu.post(path, {"model": "Ghost", "input": "x"})
        error = json.loads(body)["error"]
        assert (status, error if path.startswith("/api") else error["message"]) == (404, pulling)
    for path in ("/api/generate", "/api/chat", "/v1/chat/completions"):
        chat = {"model": "Ghost", "messages": [{"role": "user", "content": "x"}]}
        status, _, body = await emu.post(path, chat)
        error = json.loads(body)["error"]
        message = error if path.startswith("/api") else error["message"]
        assert (status, message) == (404, "model 'Ghost' not found"), path


async def test_names_are_judged_as_go_parses_them(emu: Emu) -> None:
    """model.ParseName(...).IsValid(): host, namespace, model and tag each begin with a
    letter, digit or underscore and are at most 80 bytes long (a host 350); a dot is no
    namespace's, a colon only a host's. ChatHandler answers an invalid name 400 "invalid
    model name" (writeModelRefParseError), a valid one it does not have 404."""
    invalid = [
        "a" * 81,
        "m:" + "t" * 81,
        ".hidden",
        "-dash:latest",
        "m:.tag",
        "my.ns/model",
        "h" * 351 + "/ns/model",
        "ns/",
        "/model",
    ]
    valid = [
        "a" * 80,
        "m:" + "t" * 80,
        "localhost:5000/ns/model",
        "h" * 350 + "/ns/model",
        "_under/score_",
        " padded:latest ",  # modelref.ParseRef trims the name first
    ]
    for name in invalid:
        status, _, body = await emu.post("/api/chat", {"model": name})
        assert (status, json.loads(body)) == (400, {"error": "invalid model name"}), name
    for name in valid:
        status, _, body = await emu.post("/api/chat", {"model": name})
        assert (status, json.loads(body)) == (404, {"error": f"model '{name}' not found"}), name


@pytest.mark.parametrize("path", ["/api/embed", "/api/embeddings"])
async def test_embeddings_read_a_names_source_as_chat_does(emu: Emu, path: str) -> None:
    """EmbedHandler and EmbeddingsHandler parse the name with parseAndValidateModelRef,
    as chat does: a `:cloud` one is sent to ollama.com (out of reach here: Go's client
    error, 502), a `:local` one is the model on the machine."""
    body = {"model": "qwen2.5:7b:cloud", "input": "x", "prompt": "x"}
    status, _, answer = await emu.post(path, body)
    unreachable = f'Post "https://ollama.com:443{path}": dial tcp: lookup ollama.com: no such host'
    assert (status, json.loads(answer)) == (502, {"error": unreachable})
    status, _, answer = await emu.post(path, {**body, "model": "nomic-embed-text:local"})
    assert status == 200, answer


@pytest.mark.parametrize(
    "path", ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show"]
)
async def test_a_cloud_name_is_parsed_before_it_goes_to_ollama_com(emu: Emu, path: str) -> None:
    """parseAndValidateModelRef reads the source suffix and qualifies the rest before
    a handler sends a `:cloud` or `-cloud` name to ollama.com: a rest that model.ParseName
    cannot qualify is its 400 "invalid model name", both suffixes its 400 naming them
    (writeModelRefParseError), and neither goes anywhere. The name is trimmed as Go
    trims it (strings.TrimSpace), which leaves U+001C to U+001F."""
    body = {"messages": [], "input": "x", "prompt": "x"}
    for name in ("registry.ollama.ai/qwen2.5:7b-cloud", "/qwen2.5:7b:cloud", ":cloud"):
        status, _, answer = await emu.post(path, {**body, "model": name})
        assert (status, json.loads(answer)) == (400, {"error": "invalid model name"}), name
    for name in ("qwen2.5:7b:local:cloud", " qwen2.5:7b-cloud:LOCAL\n"):
        status, _, answer = await emu.post(path, {**body, "model": name})
        quoted = json.dumps(name.strip())
        conflict = f"use either :local or :cloud, not both: {quoted}"
        assert (status, json.loads(answer)) == (400, {"error": conflict}), name
    status, _, answer = await emu.post(path, {**body, "model": "qwen2.5:7b:cloud\x1c"})
    assert (status, json.loads(answer)) == (400, {"error": "invalid model name"})
    status, _, answer = await emu.post(path, {**body, "model": " qwen2.5:7b:cloud\u3000"})
    assert status == 502, answer


async def test_a_syntax_error_names_the_byte_go_read(emu: Emu) -> None:
    """Go's scanner reads bytes: its error quotes the offending byte as a rune
    (strconv.Quote), so a UTF-8 BOM (EF BB BF) is 'ï', an invalid byte is itself, and
    a control character has Go's escape."""
    cases = [
        (b'\xef\xbb\xbf{"model": "qwen2.5:7b"}', "'\u00ef'"),
        (b"\xff", "'\u00ff'"),
        ('{"model": \ufffd}'.encode(), "'\u00ef'"),
        (b'{"model": \xc2\x85}', "'\u00c2'"),
        (b'{"model": \x85}', "'\\u0085'"),
        (b'{"model": \x07}', "'\\a'"),
    ]
    for raw, char in cases:
        status, _, body = await emu.post("/api/generate", raw=raw)
        message = f"invalid character {char} looking for beginning of value"
        assert (status, json.loads(body)) == (400, {"error": message}), raw


async def test_a_literal_go_cannot_finish_is_named_as_its_scanner_names_it(emu: Emu) -> None:
    """Go's scanner reads `true`, `false`, `null` and numbers a byte at a time: a body
    that ends inside one is "unexpected EOF" (Decoder.readValue), a wrong byte inside
    one is named with what the literal expected there."""
    cases = [
        (b"f", "unexpected EOF"),
        (b"nul", "unexpected EOF"),
        (b"fals}", "invalid character '}' in literal false (expecting 'e')"),
        (b"tRue}", "invalid character 'R' in literal true (expecting 'r')"),
        (b"nulx}", "invalid character 'x' in literal null (expecting 'l')"),
        (b"-", "unexpected EOF"),
        (b"-}", "invalid character '}' in numeric literal"),
        (b"1.", "unexpected EOF"),
        (b"1.}", "invalid character '}' after decimal point in numeric literal"),
        (b"1.e5}", "invalid character 'e' after decimal point in numeric literal"),
        (b"1e", "unexpected EOF"),
        (b"1e}", "invalid character '}' in exponent of numeric literal"),
        (b"2.5E+}", "invalid character '}' in exponent of numeric literal"),
        (b"1.5.}", "invalid character '.' after object key:value pair"),
        (b"[1e3e]}", "invalid character 'e' after array element"),
    ]
    for value, message in cases:
        raw = b'{"model": "qwen2.5:7b", "x": ' + value
        status, _, body = await emu.post("/api/generate", raw=raw)
        assert (status, json.loads(body)) == (400, {"error": message}), raw


async def test_nan_and_infinity_are_no_json_to_go(emu: Emu) -> None:
    """Python's json reads NaN, Infinity and -Infinity; Go's scanner refuses each at
    its first character, before any field is looked at."""
    cases = [
        (b"NaN", "invalid character 'N' looking for beginning of value"),
        (b"Infinity", "invalid character 'I' looking for beginning of value"),
        (b"-Infinity", "invalid character 'I' in numeric literal"),
    ]
    for constant, message in cases:
        raw = b'{"model": "qwen2.5:7b", "stream": false, "options": {"temperature": '
        raw += constant + b'}, "prompt": 5}'
        status, _, body = await emu.post("/api/generate", raw=raw)
        assert (status, json.loads(body)) == (400, {"error": message}), raw


async def test_text_go_reads_as_replacement_characters(emu: Emu) -> None:
    """A lone surrogate escape and invalid UTF-8 in a string are U+FFFD to Go's decoder:
    Ollama answers the request, and so does the emulator."""
    for text in (b"\\ud800 and \\udfff", b"\xff\xfe", b"\xed\xa0\x80"):
        raw = b'{"model": "qwen2.5:7b", "stream": false, "messages": [{"role": "user", '
        raw += b'"content": "' + text + b'"}]}'
        status, _, body = await emu.post("/api/chat", raw=raw)
        assert status == 200, (text, body)
        assert json.loads(body)["done"] is True
    # A name read as U+FFFD is none model.ParseName qualifies.
    status, _, body = await emu.post("/api/generate", raw=b'{"model": "\\ud800"}')
    assert (status, json.loads(body)) == (400, {"error": "invalid model name"})


async def test_a_keep_alive_too_large_for_a_clock_is_no_error(emu: Emu) -> None:
    """Ollama converts a number of seconds with an overflow, not an error."""
    for path, extra in (("/api/embed", {"input": "x"}), ("/api/generate", {"prompt": "x"})):
        body_in = {"model": "qwen2.5:7b", "keep_alive": 1e300, "stream": False, **extra}
        status, _, body = await emu.post(path, body_in)
        assert status == 200, (path, body)


async def test_keep_alive_is_read_as_api_duration_reads_it(emu: Emu) -> None:
    """api.Duration.UnmarshalJSON: whole nanoseconds (less than one unloads), Go's
    time.ParseDuration for a string (no spaces around it), and its own message for a
    value of another type."""
    for keep_alive in (1e-10, "0.5ns"):
        body = {"model": "qwen2.5:7b", "prompt": "", "keep_alive": keep_alive, "stream": False}
        status, _, answer = await emu.post("/api/generate", body)
        assert (status, json.loads(answer)["done_reason"]) == (200, "unload"), keep_alive
    for keep_alive, error in (
        (" 5m", 'time: invalid duration " 5m"'),
        # Beyond Go's largest Duration (2^63-1 ns): time.ParseDuration's overflow.
        ("2562048h", 'time: invalid duration "2562048h"'),
        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
        ("1h9223372036854775807ns", 'time: invalid duration "1h9223372036854775807ns"'),
        # A unit Go does not know is named, quoted as time.quote quotes it (bytes of a
        # control or non-ASCII character as \x escapes).
        ("5M", 'time: unknown unit "M" in duration "5M"'),
        ("5m ", 'time: unknown unit "m " in duration "5m "'),
        ("1e3s", 'time: unknown unit "e" in duration "1e3s"'),
        ("1\x00m", 'time: unknown unit "\\x00m" in duration "1\\x00m"'),
        ("2µ", 'time: unknown unit "\\xc2\\xb5" in duration "2\\xc2\\xb5"'),
        (True, "Unsupported type: 'bool'"),
        ([1], "Unsupported type: '[]interface {}'"),
    ):
        body = {"model": "qwen2.5:7b", "prompt": "x", "keep_alive": keep_alive, "stream": False}
        status, _, answer = await emu.post("/api/generate", body)
        assert (status, json.loads(answer)) == (400, {"error": error}), keep_alive


async def test_a_context_below_four_runs_at_four(emu: Emu) -> None:
    """The scheduler raises num_ctx below 4 to 4 (sched.go getRunner), so a long prompt
    is evaluated within 4 tokens, not within the default context."""
    for num_ctx in (0, -5, 2):
        body = {
            "model": "qwen2.5:7b",
            "prompt": "tell me a long story about " * 20,
            "stream": False,
            "options": {"num_ctx": num_ctx, "num_predict": 1},
        }
        status, _, answer = await emu.post("/api/generate", body)
        assert (status, json.loads(answer)["prompt_eval_count"]) == (200, 4), num_ctx


async def test_a_model_kept_forever_expires_as_ollamas_does() -> None:
    """A negative keep_alive is Go's largest Duration (api.Duration.UnmarshalJSON), so
    /api/ps says now + 2^63-1 ns (292 years ahead), which `ollama ps` shows as
    "Forever" (format.HumanTime: more than 20 years ahead)."""
    runner, url = await _start(EmulatorSettings(frozen_clock=True, chunk_delay_ms=1))
    forever = go_time(FROZEN_TIME_NS + (1 << 63) - 1)
    try:
        async with aiohttp.ClientSession() as session:
            for keep_alive in (-1, "-1m"):
                body = {"model": "qwen2.5:7b", "prompt": "", "keep_alive": keep_alive}
                async with session.post(url + "/api/generate", json=body) as r:
                    assert r.status == 200
                async with session.get(url + "/api/ps") as r:
                    models = (await r.json())["models"]
                assert [(m["name"], m["expires_at"]) for m in models] == [("qwen2.5:7b", forever)]
    finally:
        await runner.cleanup()


async def test_frozen_clock_is_byte_identical() -> None:
    runner, url = await _start(EmulatorSettings(frozen_clock=True, chunk_delay_ms=1))
    try:
        async with aiohttp.ClientSession() as session:
            bodies = []
            for path, body in [
                (
                    "/api/chat",
                    {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}]},
                ),
                (
                    "/v1/chat/completions",
                    {
                        "model": "qwen2.5:7b",
                        "stream": True,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                ),
            ]:
                pair = []
                for _ in range(2):
                    async with session.post(url + path, json=body) as r:
                        pair.append(await r.read())
                assert pair[0] == pair[1] and pair[0]
                bodies.append(pair[0])
            assert b'"created_at":"2025-01-01T00:00:00.123456789Z"' in bodies[0]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("frozen", [False, True])
async def test_tool_call_ids_are_drawn_as_ollamas_are(frozen: bool) -> None:
    """ChatHandler gives each tool call toolCallId(): "call_" and 8 characters of
    [a-z0-9] drawn at random, so two identical requests get different ids, on every
    route that carries them; frozen_clock keeps them as it keeps the other ids."""
    runner, url = await _start(EmulatorSettings(frozen_clock=frozen, chunk_delay_ms=1))
    ask = {
        "model": "qwen2.5:7b",
        "stream": False,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER_TOOL],
    }
    try:
        async with aiohttp.ClientSession() as session:
            for path, ids_of in (
                ("/api/chat", lambda doc: doc["message"]["tool_calls"]),
                ("/v1/chat/completions", lambda doc: doc["choices"][0]["message"]["tool_calls"]),
            ):
                ids = []
                for _ in range(2):
                    async with session.post(url + path, json=ask) as r:
                        [call] = ids_of(await r.json())
                    assert re.fullmatch("call_[a-z0-9]{8}", call["id"]), call
                    ids.append(call["id"])
                assert (ids[0] == ids[1]) is frozen, (path, ids)
    finally:
        await runner.cleanup()


async def test_speed_by_size_makes_a_large_model_slower_in_proportion() -> None:
    """With `speed_by_size` (the demo's backends) a model's reported durations scale
    with its parameters, so the proxy's telemetry sees quick and slow models; without
    it every model runs at one speed."""

    async def per_token(settings: EmulatorSettings) -> dict[str, float]:
        runner, url = await _start(settings)
        try:
            out = {}
            async with aiohttp.ClientSession() as session:
                for model in ("llama3.2:3b", "llama3.3:70b"):
                    body = {
                        "model": model,
                        "prompt": "hi",
                        "stream": False,
                        "options": {"num_predict": 3},
                    }
                    async with session.post(url + "/api/generate", json=body) as r:
                        doc = await r.json()
                    out[model] = doc["eval_duration"] / doc["eval_count"]
            return out
        finally:
            await runner.cleanup()

    scaled = await per_token(
        EmulatorSettings(frozen_clock=True, chunk_delay_ms=1, speed_by_size=True)
    )
    sizes = {m.name: m.parameter_count for m in CATALOG}
    ratio = sizes["llama3.3:70b"] / sizes["llama3.2:3b"]
    assert scaled["llama3.3:70b"] / scaled["llama3.2:3b"] == pytest.approx(ratio, rel=0.01)
    flat = await per_token(EmulatorSettings(frozen_clock=True, chunk_delay_ms=1))
    assert flat["llama3.3:70b"] == flat["llama3.2:3b"]


# Cancellation and faults --------------------------------------------------------------------


async def test_disconnect_cancels_streaming_and_non_streaming(slow_emu: Emu) -> None:
    state = slow_emu.state
    resp = await slow_emu.session.post(
        slow_emu.url + "/api/generate", json={"model": "qwen2.5:7b", "prompt": "long"}
    )
    assert json.loads(await resp.content.readline())["done"] is False
    assert state.active_streams == 1
    resp.close()
    await slow_emu.wait_for(lambda: state.cancelled == 1)
    assert state.active_streams == 0 and state.completed == 0 and len(state.cancel_times) == 1

    request = asyncio.create_task(
        slow_emu.session.post(
            slow_emu.url + "/v1/chat/completions",
            json={"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "long"}]},
        )
    )
    await slow_emu.wait_for(lambda: state.active_streams == 1)
    request.cancel()
    await slow_emu.wait_for(lambda: state.cancelled == 2)
    assert state.active_streams == 0 and state.completed == 0


@pytest.mark.parametrize("mode", ["hang", "stall", "close_early", "garbage", "error500"])
async def test_fault_modes(emu: Emu, mode: str) -> None:
    status, _, body = await emu.post("/api/emulator/fault", {"mode": mode})
    assert (status, json.loads(body)) == (200, {"mode": mode})
    url = emu.url + "/api/generate"
    req = {"model": "qwen2.5:7b", "prompt": "x"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=0.5)
    if mode == "error500":
        async with emu.session.post(url, json=req) as r:
            assert r.status == 500 and "error" in await r.json()
    elif mode == "garbage":
        with pytest.raises(aiohttp.ClientResponseError):
            await emu.session.post(url, json=req)
    elif mode == "close_early":
        async with emu.session.post(url, json=req) as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
    elif mode == "stall":
        async with emu.session.post(url, json=req, timeout=timeout) as r:
            assert r.status == 200
            assert json.loads(await r.content.readline())["done"] is False
            with pytest.raises(asyncio.TimeoutError):
                await r.read()
        await emu.wait_for(lambda: emu.state.cancelled == 1)
    else:  # hang: no head at all
        with pytest.raises(asyncio.TimeoutError):
            await emu.session.post(url, json=req, timeout=timeout)
        await emu.wait_for(lambda: emu.state.cancelled == 1)
    # Other routes are unaffected, and the state route reports the mode.
    status, _, body = await emu.post("/api/emulator/state", method="GET")
    state = json.loads(body)
    assert state["fault"] == mode and state["requests"]["/api/generate"] == 1
    assert (await emu.post("/api/version", method="GET"))[0] == 200
    await emu.post("/api/emulator/fault", {"mode": "none"})
    assert (await emu.post("/api/generate", {**req, "stream": False}))[0] == 200


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": "qwen2.5:7b", "prompt": "x", "stream": False}),
        ("/api/chat", {"model": "qwen2.5:7b", "messages": HI, "stream": False}),
        ("/v1/chat/completions", {"model": "qwen2.5:7b", "messages": HI}),
        ("/v1/completions", {"model": "qwen2.5:7b", "prompt": "x", "stream": False}),
        ("/v1/responses", {"model": "qwen2.5:7b", "input": "x"}),
        ("/v1/messages", {"model": "qwen2.5:7b", "messages": HI, "max_tokens": 9}),
        ("/api/embed", {"model": "nomic-embed-text", "input": "x"}),
        ("/api/embeddings", {"model": "nomic-embed-text", "prompt": "x"}),
        ("/v1/embeddings", {"model": "nomic-embed-text", "input": "x"}),
        ("/api/show", {"model": "qwen2.5:7b"}),
    ],
)
async def test_close_early_cuts_a_whole_answer_inside_its_length(
    emu: Emu, path: str, body: dict[str, Any]
) -> None:
    """Ollama writes an answer asked for whole (`stream` false, OpenAI's default) as
    one JSON body of a known length, never as a stream: a backend lost while writing
    it leaves a length-framed JSON body cut short, not a stream's first chunk."""
    async with emu.session.post(emu.url + path, json=body) as whole:
        assert whole.status == 200 and "Content-Length" in whole.headers
        content_type = whole.headers["Content-Type"]
        assert content_type.startswith("application/json")
    await emu.post("/api/emulator/fault", {"mode": "close_early"})
    async with emu.session.post(emu.url + path, json=body) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == content_type
        assert "Transfer-Encoding" not in r.headers
        assert int(r.headers["Content-Length"]) > 0
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/v1/responses"])
async def test_a_long_answer_is_made_as_it_is_sent(
    emu: Emu, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The tokens of an answer are made as they are sent: by its first chunk, a stream
    asked for 40,000 tokens has drawn (`textgen.Rng.next`) no more than one asked for
    ten, so neither its memory nor its event loop's time grows with what it asks."""
    draws = 0
    next_draw = textgen.Rng.next

    def counted(rng: textgen.Rng, modulo: int) -> int:
        nonlocal draws
        draws += 1
        return next_draw(rng, modulo)

    monkeypatch.setattr(textgen.Rng, "next", counted)
    drawn = []
    for tokens in (10, 40_000):
        body = {"model": "qwen2.5:7b", "prompt": "go", "input": "go", "messages": HI}
        body.update(options={"num_predict": tokens}, max_output_tokens=tokens, stream=True)
        draws = 0
        async with emu.session.post(emu.url + path, json=body) as r:
            await r.content.readline()
            drawn.append(draws)
            if tokens == 10:
                # To its end: its last tokens would count among the next stream's draws.
                await r.read()
    assert drawn[1] == drawn[0]


# A stream on each route that has one, cut after its first write: the route's own
# first event.
FIRST_EVENTS = {
    "/api/generate": b'{"model":"qwen2.5:7b","created_at":',
    "/api/chat": b'{"model":"qwen2.5:7b","created_at":',
    "/v1/chat/completions": b'data: {"id":"chatcmpl-',
    "/v1/completions": b'data: {"id":"cmpl-',
    "/v1/responses": b"event: response.created\ndata: {",
    "/v1/messages": b"event: message_start\ndata: {",
}


@pytest.mark.parametrize("path", sorted(FIRST_EVENTS))
async def test_close_early_cuts_a_stream_after_its_first_event(emu: Emu, path: str) -> None:
    # Each route reads the fields it knows and leaves the others.
    body = {"model": "qwen2.5:7b", "prompt": "x", "input": "x", "messages": HI}
    body.update(max_tokens=9, stream=True)
    await emu.post("/api/emulator/fault", {"mode": "close_early"})
    async with emu.session.post(emu.url + path, json=body) as r:
        assert r.status == 200
        first = await r.content.readany()
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert first.startswith(FIRST_EVENTS[path])
    assert first.endswith(b"\n\n" if path.startswith("/v1/") else b"\n")
    assert first.count(b"\n\n" if path.startswith("/v1/") else b"\n") == 1


# Ollama's 500 when the runner died before the answer, in each route's error shape:
# gin's c.JSON on its own routes, the OpenAI writers' json.Encoder on /v1, Anthropic's.
RUNNER_DIED_ANSWERS = {
    "/api/generate": b'{"error":"llama runner process has terminated: exit status 2"}',
    "/api/embed": b'{"error":"llama runner process has terminated: exit status 2"}',
    "/v1/embeddings": (
        b'{"error":{"message":"llama runner process has terminated: exit status 2",'
        b'"type":"api_error","param":null,"code":null}}\n'
    ),
    "/v1/responses": (
        b'{"error":{"message":"llama runner process has terminated: exit status 2",'
        b'"type":"api_error","param":null,"code":null}}\n'
    ),
    "/v1/messages": b'{"type":"error","error":{"type":"api_error","message":"llama runner',
}


@pytest.mark.parametrize("path", sorted(RUNNER_DIED_ANSWERS))
async def test_error500_is_the_routes_own_500(emu: Emu, path: str) -> None:
    body = {"model": "qwen2.5:7b", "prompt": "x", "input": "x", "messages": HI, "max_tokens": 9}
    await emu.post("/api/emulator/fault", {"mode": "error500"})
    status, headers, answer = await emu.post(path, body)
    assert status == 500 and answer.startswith(RUNNER_DIED_ANSWERS[path])
    v1 = path.startswith("/v1/")
    assert headers["Content-Type"] == (
        "application/json" if v1 else "application/json; charset=utf-8"
    )


async def test_faults_hit_transcriptions(emu: Emu) -> None:
    form = (
        b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nqwen2.5:7b\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        b"RIFF\r\n--XyZ--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    url = emu.url + "/v1/audio/transcriptions"
    await emu.post("/api/emulator/fault", {"mode": "error500"})
    async with emu.session.post(url, data=form, headers=headers) as r:
        assert r.status == 500
        assert (await r.json())["error"]["type"] == "api_error"
    await emu.post("/api/emulator/fault", {"mode": "close_early"})
    async with emu.session.post(url, data=form, headers=headers) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) > 0
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


# OpenAI / Anthropic compatibility -------------------------------------------------------------


async def test_openai_sdk(emu: Emu) -> None:
    client = openai.AsyncOpenAI(base_url=emu.url + "/v1", api_key="ollama")
    messages: Any = [{"role": "user", "content": "Say hi"}]
    done = await client.chat.completions.create(model="qwen2.5:7b", messages=messages)
    assert done.object == "chat.completion" and done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens == 8
    stream = await client.chat.completions.create(
        model="qwen2.5:7b", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == done.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    tools: Any = [WEATHER_TOOL]
    called = await client.chat.completions.create(
        model="qwen2.5:7b", messages=messages, tools=tools
    )
    call = (called.choices[0].message.tool_calls or [])[0]
    assert called.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments)["city"]  # type: ignore[union-attr]

    completion = await client.completions.create(model="qwen2.5:7b", prompt="Once")
    assert completion.choices[0].text and completion.object == "text_completion"
    pieces = [
        c
        async for c in await client.completions.create(
            model="qwen2.5:7b", prompt="Once", stream=True
        )
    ]
    assert "".join(p.choices[0].text for p in pieces if p.choices) == completion.choices[0].text
    vectors = await client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert [len(d.embedding) for d in vectors.data] == [768, 768]
    models = await client.models.list()
    assert "llama3.3:70b" in [m.id for m in models.data]
    assert (await client.models.retrieve("qwen3:8b")).owned_by == "library"
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(model="ghost", messages=messages)
    assert "model 'ghost' not found" in str(err.value)
    status, _, body = await emu.post("/v1/chat/completions", raw=b"")
    assert (status, json.loads(body)["error"]["message"]) == (400, "EOF")
    status, _, body = await emu.post(
        "/v1/chat/completions", {"model": "qwen2.5:7b", "messages": []}
    )
    assert json.loads(body)["error"]["message"] == "[] is too short - 'messages'"


@pytest.mark.parametrize(
    ("content", "go_type"),
    [(None, "<nil>"), (1, "float64"), (True, "bool"), ({"a": 1}, "map[string]interface {}")],
)
async def test_a_chat_completion_content_of_no_known_type_is_named_by_gos_type(
    emu: Emu, content: Any, go_type: str
) -> None:
    """openai.FromChatRequest's `fmt.Errorf("invalid message content type: %T", ...)`
    of a content decoded into an `any`: Go's type names, a JSON number a float64."""
    messages = [{"role": "user", "content": content}]
    status, _, body = await emu.post(
        "/v1/chat/completions", {"model": "qwen2.5:7b", "messages": messages}
    )
    error = json.loads(body)["error"]["message"]
    assert (status, error) == (400, f"invalid message content type: {go_type}")


@pytest.mark.parametrize("messages", [[None], [None, None], [{}]])
async def test_a_null_message_is_an_empty_one_not_a_load(emu: Emu, messages: Any) -> None:
    """A null element of `messages` decodes to the zero api.Message: ChatHandler loads
    without generating only for no messages at all, and renders any other list."""
    body = {"model": "qwen2.5:7b", "messages": messages, "stream": False}
    status, _, answer = await emu.post("/api/chat", body)
    assert status == 200
    assert json.loads(answer)["done_reason"] in ("stop", "length")


@pytest.mark.parametrize("message", [None, {"role": "user"}])
async def test_an_anthropic_message_without_content_is_refused_as_go_reads_it(
    emu: Emu, message: Any
) -> None:
    """anthropic.MessageParam's UnmarshalJSON reads `content` as a json.RawMessage and
    unmarshals it: a null message, or one with no `content`, leaves it empty, and
    json.Unmarshal of no bytes is "unexpected end of JSON input", the middleware's 400."""
    body = {"model": "qwen2.5:7b", "max_tokens": 5, "messages": [message]}
    status, _, answer = await emu.post("/v1/messages", body)
    error = json.loads(answer)["error"]
    assert (status, error["message"]) == (400, "unexpected end of JSON input")


_MESSAGE_PARAM_HEAD = (
    'struct { Role string "json:\\"role\\""; Content json.RawMessage "json:\\"content\\"" }'
)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (5, f"number into Go struct field MessagesRequest.messages of type {_MESSAGE_PARAM_HEAD}"),
        (
            {"role": 1, "content": "hi"},
            "number into Go struct field MessagesRequest.messages.role of type string",
        ),
        (
            {"role": "user", "content": 5},
            "number into Go struct field MessagesRequest.messages of type []anthropic.ContentBlock",
        ),
        (
            {"role": "user", "content": {"type": "text"}},
            "object into Go struct field MessagesRequest.messages of type []anthropic.ContentBlock",
        ),
        (
            {"role": "user", "content": ["hi"]},
            "string into Go struct field MessagesRequest.messages of type anthropic.ContentBlock",
        ),
        (
            {"role": "user", "content": [{"type": 1}]},
            "number into Go struct field MessagesRequest.messages.type of type string",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": ["x"]}]},
            "array into Go struct field MessagesRequest.messages.text of type string",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": 1}],
            },
            "number into Go struct field MessagesRequest.messages.is_error of type bool",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "image", "source": {"type": "base64", "data": 1}}],
            },
            "number into Go struct field MessagesRequest.messages.source.data of type string",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": "x", "citations": "c"}]},
            "string into Go struct field MessagesRequest.messages.citations"
            " of type []anthropic.Citation",
        ),
    ],
)
async def test_an_anthropic_message_of_the_wrong_kind_is_refused_as_go_reads_it(
    emu: Emu, message: Any, error: str
) -> None:
    """anthropic.MessageParam decodes itself (its role and raw content, then the content
    as a string or a list of blocks): json.Unmarshal puts that inner decoding's error in
    the request's context, the middleware's 400."""
    body = {"model": "qwen2.5:7b", "max_tokens": 5, "messages": [message]}
    status, _, answer = await emu.post("/v1/messages", body)
    got = json.loads(answer)["error"]["message"]
    assert (status, got) == (400, "json: cannot unmarshal " + error)


@pytest.mark.parametrize(
    ("path", "go_type"),
    [
        ("/v1/chat/completions", "openai.ChatCompletionRequest"),
        ("/v1/completions", "openai.CompletionRequest"),
        ("/v1/embeddings", "openai.EmbedRequest"),
        ("/v1/responses", "openai.ResponsesRequest"),
        ("/v1/messages", "anthropic.MessagesRequest"),
    ],
)
async def test_a_compatible_body_of_no_object_is_named_by_its_go_type(
    emu: Emu, path: str, go_type: str
) -> None:
    """The OpenAI and Anthropic middlewares bind a body into their own packages'
    structs: json.Unmarshal's error for a value that is no object names the type as
    Go's reflect spells it, package first."""
    status, _, body = await emu.post(path, raw=b"[1]")
    error = json.loads(body)["error"]
    message = error["message"] if isinstance(error, dict) else error
    expected = f"json: cannot unmarshal array into Go value of type {go_type}"
    assert (status, message) == (400, expected)


@pytest.mark.parametrize(
    ("stop", "go_type"),
    [
        ([None], "<nil>"),
        (["a", 1], "float64"),
        ([False], "bool"),
        ([{}], "map[string]interface {}"),
        ([[]], "[]interface {}"),
    ],
)
async def test_a_completion_stop_of_no_string_is_named_by_gos_type(
    emu: Emu, stop: Any, go_type: str
) -> None:
    """openai.FromCompleteRequest's `fmt.Errorf("invalid type for 'stop' field: %T")`
    for an element of the `stop` list, decoded into an `any`: Go's type names."""
    status, _, body = await emu.post(
        "/v1/completions", {"model": "qwen2.5:7b", "prompt": "hi", "stop": stop}
    )
    error = json.loads(body)["error"]["message"]
    assert (status, error) == (400, f"invalid type for 'stop' field: {go_type}")


@pytest.mark.parametrize(
    ("path", "extra", "error"),
    [
        (
            "/v1/chat/completions",
            {"reasoning": "high"},
            "json: cannot unmarshal string into"
            " Go struct field ChatCompletionRequest.reasoning of type openai.Reasoning",
        ),
        (
            "/v1/chat/completions",
            {"reasoning": {"effort": 5}},
            "json: cannot unmarshal number"
            " into Go struct field Reasoning.reasoning.effort of type string",
        ),
        (
            "/v1/chat/completions",
            {"response_format": "json"},
            "json: cannot unmarshal string"
            " into Go struct field ChatCompletionRequest.response_format of type"
            " openai.ResponseFormat",
        ),
        (
            "/v1/chat/completions",
            {"response_format": {"type": 5}},
            "json: cannot unmarshal"
            " number into Go struct field ResponseFormat.response_format.type of type string",
        ),
        (
            "/v1/chat/completions",
            {"response_format": {"type": "json_schema", "json_schema": 1}},
            "json: cannot unmarshal number into Go struct field"
            " ResponseFormat.response_format.json_schema of type openai.JsonSchema",
        ),
        (
            "/v1/chat/completions",
            {"stream_options": {"include_usage": "yes"}},
            "json: cannot"
            " unmarshal string into Go struct field StreamOptions.stream_options.include_usage"
            " of type bool",
        ),
        (
            "/v1/completions",
            {"stream_options": []},
            "json: cannot unmarshal array into Go"
            " struct field CompletionRequest.stream_options of type openai.StreamOptions",
        ),
        (
            "/v1/completions",
            {"temperature": "hot"},
            "json: cannot unmarshal string into Go"
            " struct field CompletionRequest.temperature of type float32",
        ),
        (
            "/v1/completions",
            {"top_p": True},
            "json: cannot unmarshal bool into Go struct"
            " field CompletionRequest.top_p of type float32",
        ),
    ],
)
async def test_openai_request_structs_are_bound_as_go_binds_them(
    emu: Emu, path: str, extra: dict[str, Any], error: str
) -> None:
    """openai.ChatCompletionRequest's and CompletionRequest's fields that are structs
    (Reasoning, ResponseFormat, JsonSchema, StreamOptions) or float32s, as
    encoding/json names them in a 400."""
    body: dict[str, Any] = {"model": "qwen2.5:7b", **extra}
    if path == "/v1/completions":
        body["prompt"] = "Once"
    else:
        body["messages"] = [{"role": "user", "content": "hi"}]
    status, _, answer = await emu.post(path, body)
    assert (status, json.loads(answer)["error"]["message"]) == (400, error)


_FUNCTION_STRUCT = (
    'struct { Name string "json:\\"name\\""; Arguments string "json:\\"arguments\\"" }'
)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (None, "invalid message content type: <nil>"),
        (
            "hi",
            "json: cannot unmarshal string into Go struct field"
            " ChatCompletionRequest.messages of type openai.Message",
        ),
        (
            {"role": 5, "content": "hi"},
            "json: cannot unmarshal number into Go struct field"
            " Message.messages.role of type string",
        ),
        (
            {"role": "user", "content": "hi", "name": True},
            "json: cannot unmarshal bool into Go struct field Message.messages.name of type string",
        ),
        (
            {"role": "tool", "content": "x", "tool_call_id": 1},
            "json: cannot unmarshal number"
            " into Go struct field Message.messages.tool_call_id of type string",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": "f"},
            "json: cannot unmarshal"
            " string into Go struct field Message.messages.tool_calls of type []openai.ToolCall",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": ["f"]},
            "json: cannot unmarshal"
            " string into Go struct field Message.messages.tool_calls of type openai.ToolCall",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"id": 1}]},
            "json: cannot"
            " unmarshal number into Go struct field ToolCall.messages.tool_calls.id of type string",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"function": []}]},
            "json:"
            " cannot unmarshal array into Go struct field ToolCall.messages.tool_calls.function"
            f" of type {_FUNCTION_STRUCT}",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]},
            "json: cannot unmarshal object into Go struct field"
            " .messages.tool_calls.function.arguments of type string",
        ),
    ],
)
async def test_a_chat_completion_message_is_bound_as_openai_message(
    emu: Emu, message: Any, error: str
) -> None:
    """ShouldBindJSON into openai.ChatCompletionRequest: a message is an openai.Message,
    its role, name, tool_call_id and reasoning strings, its tool calls openai.ToolCall
    (whose `function` is an anonymous struct, named by its fields, its own fields by a
    path without a struct name); a null message is the zero one, refused by
    FromChatRequest for its content."""
    status, _, body = await emu.post(
        "/v1/chat/completions", {"model": "qwen2.5:7b", "messages": [message]}
    )
    assert (status, json.loads(body)["error"]["message"]) == (400, error)


@pytest.mark.parametrize(
    ("parts", "extra", "status", "error"),
    [
        # An image_url that is neither a string nor an object with a string url.
        ([{"type": "image_url", "image_url": 1}], {}, 400, "invalid message format"),
        ([{"type": "image_url", "image_url": {"url": 1}}], {}, 400, "invalid message format"),
        # An input_audio part: its data is standard base64, as an image's.
        ([{"type": "input_audio", "input_audio": 1}], {}, 400, "invalid input_audio format"),
        (
            [{"type": "input_audio", "input_audio": {"format": "wav"}}],
            {},
            400,
            "invalid input_audio format: missing data",
        ),
        (
            [{"type": "input_audio", "input_audio": {"data": "AAA"}}],
            {},
            400,
            "invalid input_audio base64 data: illegal base64 data at input byte 0",
        ),
        # FromChatRequest keeps a stop list's strings and drops the rest (only
        # FromCompleteRequest refuses them).
        ([{"type": "text", "text": "hi"}], {"stop": ["a", 1, None]}, 200, ""),
        ([{"type": "text", "text": "hi"}], {"stop": 5}, 200, ""),
        # The tool calls of a message of parts go with its last part, converted as any
        # message's: json.Unmarshal of the whole `arguments`.
        (
            [{"type": "text", "text": "hi"}],
            {"tool_calls": [{"function": {"name": "f", "arguments": "{"}}]},
            400,
            "invalid tool call arguments",
        ),
        (
            "hi",
            {"tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1} x'}}]},
            400,
            "invalid tool call arguments",
        ),
    ],
)
async def test_a_chat_completion_is_converted_as_from_chat_request(
    emu: Emu, parts: Any, extra: dict[str, Any], status: int, error: str
) -> None:
    """openai.FromChatRequest's errors and what it lets through, for a model that can
    take the request (`tool_calls` go in the message, the rest in the body)."""
    message: dict[str, Any] = {"role": "user", "content": parts}
    if "tool_calls" in extra:
        message["tool_calls"] = extra["tool_calls"]
    fields = {k: v for k, v in extra.items() if k != "tool_calls"}
    status_, _, body = await emu.post(
        "/v1/chat/completions", {"model": "qwen2.5:7b", "messages": [message], **fields}
    )
    assert status_ == status
    if error:
        assert json.loads(body)["error"]["message"] == error


async def test_responses_and_messages(emu: Emu) -> None:
    status, _, body = await emu.post("/v1/responses", {"model": "qwen3:8b", "input": "hi"})
    resp = json.loads(body)
    assert status == 200 and resp["object"] == "response" and resp["status"] == "completed"
    assert [o["type"] for o in resp["output"]] == ["reasoning", "message"]
    status, headers, body = await emu.post(
        "/v1/responses", {"model": "qwen2.5:7b", "input": "hi", "stream": True}
    )
    events = [line[7:] for line in body.decode().splitlines() if line.startswith("event: ")]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert "response.output_text.delta" in events and headers["Content-Type"] == "text/event-stream"

    req = {
        "model": "qwen2.5:7b",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hello"}],
    }
    status, _, body = await emu.post("/v1/messages", req)
    msg = json.loads(body)
    assert msg["type"] == "message" and msg["content"][0]["type"] == "text"
    assert msg["stop_reason"] == "end_turn" and msg["usage"]["output_tokens"] == 8
    status, _, body = await emu.post("/v1/messages", {**req, "stream": True})
    kinds = [line[7:] for line in body.decode().splitlines() if line.startswith("event: ")]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    status, _, body = await emu.post("/v1/messages", {**req, "model": "ghost"})
    assert status == 404 and json.loads(body)["error"]["type"] == "not_found_error"


_ITEM_HEAD = 'struct { Type string "json:\\"type\\""; Role string "json:\\"role\\"" }'


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            5,
            "input must be a string or array: json: cannot unmarshal number into Go value"
            " of type []json.RawMessage",
        ),
        (
            {"role": "user"},
            "input must be a string or array: json: cannot unmarshal object"
            " into Go value of type []json.RawMessage",
        ),
        (["hi"], f"input[0]: json: cannot unmarshal string into Go value of type {_ITEM_HEAD}"),
        (
            [{"type": 5}],
            "input[0]: json: cannot unmarshal number into Go struct field .type of type string",
        ),
        ([{"content": "hi"}], "input[0]: input item missing required 'type' field"),
        (
            [{"role": "user", "content": "hi"}, {"type": "item_reference", "id": "msg_1"}],
            'input[1]: unknown input item type: "item_reference"',
        ),
        (
            [{"role": "user", "content": 5}],
            "input[0]: content must be a string or array:"
            " json: cannot unmarshal number into Go value of type []json.RawMessage",
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": "a"},
                        {"type": "refusal", "refusal": "no"},
                    ],
                }
            ],
            "input[0]: content[1]: unknown content type: refusal",
        ),
        (
            [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{oops"}],
            "failed to parse function call arguments: invalid character 'o' looking for"
            " beginning of object key string",
        ),
        # json.Unmarshal scans the string whole first (checkValid): bytes after the
        # value, and a value cut short, which its scanner steps on a blank at the end.
        *(
            (
                [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": text}],
                "failed to parse function call arguments: " + error,
            )
            for text, error in [
                ("{} x", "invalid character 'x' after top-level value"),
                ('{"a": 1}}', "invalid character '}' after top-level value"),
                ("{", "unexpected end of JSON input"),
                ('{"a": "b', "unexpected end of JSON input"),
                ("tru", "invalid character ' ' in literal true (expecting 'e')"),
                ("1.", "invalid character ' ' after decimal point in numeric literal"),
                ("1 2", "invalid character '2' after top-level value"),
            ]
        ),
        # JSON the ordered map refuses: anything but an object (null too), and a
        # number beyond a double in one.
        *(
            (
                [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": text}],
                "failed to parse function call arguments: " + error,
            )
            for text, error in [
                ("[1]", "Value looks like object, but can't find closing '}' symbol"),
                ("null", "Value looks like object, but can't find closing '}' symbol"),
                (
                    '{"a": {"b": [1e400]}}',
                    "json: cannot unmarshal number 1e400 into Go value of type float64",
                ),
            ]
        ),
    ],
)
async def test_responses_input_is_read_as_ollama_reads_it(
    emu: Emu, given: Any, message: str
) -> None:
    """ResponsesInput.UnmarshalJSON, unmarshalResponsesInputItem and
    unmarshalResponsesContent (openai/responses.go) refuse an input that is no string or
    array, an item or content part of a type they do not know, and FromResponsesRequest
    function call arguments that are no JSON, or none an api.ToolCallFunctionArguments
    takes: the middleware's 400, in OpenAI's shape."""
    status, _, body = await emu.post("/v1/responses", {"model": "qwen2.5:7b", "input": given})
    assert (status, json.loads(body)["error"]) == (
        400,
        {"message": message, "type": "invalid_request_error", "param": None, "code": None},
    )


async def test_responses_input_items_ollama_takes(emu: Emu) -> None:
    """The items and parts a client replays from an earlier response are answered."""
    given = [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "hmm"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": ""},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Sunny."}],
        },
        {"role": "user", "content": None},
    ]
    status, _, body = await emu.post("/v1/responses", {"model": "qwen2.5:7b", "input": given})
    assert status == 200 and json.loads(body)["status"] == "completed"


async def test_a_function_call_output_of_parts_reaches_the_model_as_their_text(emu: Emu) -> None:
    """ResponsesFunctionCallOutput.UnmarshalJSON reads an `output` array as content
    parts, which FromResponsesRequest converts as a message's content
    (convertResponsesContent): its text parts joined as written, nothing between them,
    the model answering as to the string itself; a null `output` is an empty one."""

    async def answer(output: Any) -> Any:
        given = [
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": ""},
            {"type": "function_call_output", "call_id": "c1", "output": output},
        ]
        body = {"model": "qwen2.5:7b", "input": given}
        status, _, raw = await emu.post("/v1/responses", body)
        assert status == 200, raw
        resp = json.loads(raw)
        return [item["content"] for item in resp["output"]], resp["usage"]

    parts = [
        {"type": "input_text", "text": "sunny"},
        {"type": "input_image", "detail": "auto"},
        {"type": "output_text", "text": " and warm"},
    ]
    assert await answer(parts) == await answer("sunny and warm")
    assert await answer(None) == await answer("") == await answer([])


@pytest.mark.parametrize(
    "parts",
    [
        [{"Type": "input_text", "TEXT": "sunny"}],
        [{"type": "input_text", "Type": None, "text": "sunny", "Text": None}],
        [{"type": "input_file", "TYPE": "output_text", "text": "sunny"}],
    ],
)
async def test_a_function_call_outputs_parts_are_read_whatever_the_case_of_their_keys(
    emu: Emu, parts: Any
) -> None:
    """unmarshalResponsesContent reads a part's type into a struct, as it reads the part
    itself: a key names a field whatever its case (`canonical_key`), the last one
    naming it wins, and a null leaves a string field as it was."""

    async def answer(output: Any) -> Any:
        given = [{"type": "function_call_output", "call_id": "c1", "output": output}]
        body = {"model": "qwen2.5:7b", "input": given}
        status, _, raw = await emu.post("/v1/responses", body)
        assert status == 200, raw
        resp = json.loads(raw)
        return [item["content"] for item in resp["output"]], resp["usage"]

    assert await answer(parts) == await answer("sunny")


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([{"TYPE": "bogus"}], "unknown content type: bogus"),
        (
            [{"type": "input_text", "Type": 1}],
            "json: cannot unmarshal number into Go struct field .type of type string",
        ),
        (
            [{"Type": "input_text", "tExt": 1}],
            "json: cannot unmarshal number into Go struct field "
            "ResponsesTextContent.text of type string",
        ),
    ],
)
async def test_a_function_call_outputs_parts_are_refused_whatever_the_case_of_their_keys(
    emu: Emu, parts: Any, message: str
) -> None:
    """What unmarshalResponsesContent refuses of a part, its keys in any case."""
    given = [{"type": "function_call_output", "call_id": "c1", "output": parts}]
    status, _, body = await emu.post("/v1/responses", {"model": "qwen2.5:7b", "input": given})
    assert (status, json.loads(body)["error"]["message"]) == (
        400,
        "input[0]: output[0]: " + message,
    )


async def test_a_response_echoes_the_request_as_ollamas_structs_marshal_it(emu: Emu) -> None:
    """ToResponse (a non-streamed answer) marshals the request's tools as ResponsesTool
    (every field, a missing one null; `parameters` a Go map, its keys sorted), its text
    format as ResponsesTextFormat (keys it does not know dropped) and its reasoning as
    ResponsesReasoningOutput (an unset field left out); buildResponseObject (a stream's
    events) writes the same tools and format as maps, and reasoning's unset fields null."""
    tool = {"type": "function", "name": "f", "parameters": {"b": 1, "a": {"d": 1, "c": 2}}}
    fmt = {"type": "json_schema", "name": "p", "schema": {"type": "object"}, "description": "d"}
    body = {
        "model": "qwen3:8b",
        "input": "hi",
        "tools": [tool],
        "text": {"format": fmt},
        "reasoning": {"effort": "low"},
    }
    echoed_tool = {
        "type": "function",
        "name": "f",
        "description": None,
        "strict": None,
        "parameters": {"a": {"c": 2, "d": 1}, "b": 1},
    }
    echoed_format = {"type": "json_schema", "name": "p", "schema": {"type": "object"}}
    _, _, answer = await emu.post("/v1/responses", body)
    resp = json.loads(answer)
    assert resp["tools"] == [echoed_tool] and list(resp["tools"][0]) == list(echoed_tool)
    assert list(resp["tools"][0]["parameters"]) == ["a", "b"]
    assert resp["text"] == {"format": echoed_format}
    assert resp["reasoning"] == {"effort": "low"}
    _, _, answer = await emu.post("/v1/responses", {**body, "stream": True})
    created = json.loads(answer.split(b"\n")[1].removeprefix(b"data: "))["response"]
    assert created["tools"] == [echoed_tool] and created["text"] == {"format": echoed_format}
    assert created["reasoning"] == {"effort": "low", "summary": None}


async def test_a_responses_schema_is_echoed_as_the_client_wrote_its_numbers(emu: Emu) -> None:
    """The text format's schema is a json.RawMessage: Go writes back the bytes it kept
    (compacted, its keys in the client's order), its numbers as written, where it
    prints a tool's parameters, a map it read, as float64s."""
    schema = b'{"type": "number", "maximum": 1.50, "enum": [1.0, 1E2, -0.0, 7]}'
    parameters = b'{"type": "object", "maximum": 1.50, "enum": [1.0, 1E2]}'
    body = (
        b'{"model": "qwen3:8b", "input": "hi", "stream": %s, "text": {"format": {"type":'
        b' "json_schema", "name": "p", "schema": %s}}, "tools": [{"type": "function",'
        b' "name": "f", "parameters": %s}]}'
    )
    written = b'"schema":{"type":"number","maximum":1.50,"enum":[1.0,1E2,-0.0,7]}'
    printed = b'"parameters":{"enum":[1,100],"maximum":1.5,"type":"object"}'
    for stream in (b"false", b"true"):
        status, _, answer = await emu.post("/v1/responses", raw=body % (stream, schema, parameters))
        assert status == 200, answer[:300]
        assert written in answer and printed in answer, answer[:2000]


async def test_streamed_responses_and_messages_carry_the_middlewares_heads(emu: Emu) -> None:
    """ResponsesMiddleware and AnthropicMessagesMiddleware (middleware/openai.go,
    anthropic.go) set Cache-Control: no-cache and Connection: keep-alive on a streamed
    request once they have read its body, before ChatHandler runs: a stream has them,
    and so has an error ChatHandler writes through them (as JSON); an answer that is not
    streamed, or a body the middleware refuses, has neither."""
    ask = {"model": "qwen2.5:7b", "input": "hi", "stream": True}
    msg = {**ask, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    del msg["input"]
    for path, body in (("/v1/responses", ask), ("/v1/messages", msg)):
        status, headers, _ = await emu.post(path, body)
        assert status == 200 and headers["Content-Type"] == "text/event-stream"
        assert (headers.get("Cache-Control"), headers.get("Connection")) == (
            "no-cache",
            "keep-alive",
        )
        status, headers, _ = await emu.post(path, {**body, "model": "ghost"})
        assert status == 404 and headers["Content-Type"] == "application/json"
        assert headers.get("Cache-Control") == "no-cache"
        status, headers, _ = await emu.post(path, {**body, "stream": False})
        assert status == 200 and "Cache-Control" not in headers
    status, headers, _ = await emu.post("/v1/responses", {**ask, "stream": "yes"})
    assert status == 400 and "Cache-Control" not in headers
    status, headers, _ = await emu.post("/v1/messages", {**msg, "max_tokens": 0})
    assert status == 400 and "Cache-Control" not in headers


async def test_an_input_that_crashes_the_runner_gets_ollamas_500_and_unloads_it() -> None:
    """`crash_on`: a prompt or message holding the text kills the model's runner, as
    llama.cpp's dies on an input it cannot handle: Ollama's 500, the model no longer
    loaded (the next request loads it again), the crash counted; other inputs run."""
    runner, url = await _start(EmulatorSettings(chunk_delay_ms=1, crash_on="CRASH"))
    state = runner.app[STATE_KEY]
    died = {"error": "llama runner process has terminated: exit status 2"}
    try:
        async with aiohttp.ClientSession() as session:
            emu = Emu(url, state, session)
            ok = {"model": "qwen2.5:7b", "prompt": "x", "stream": False}
            assert (await emu.post("/api/generate", ok))[0] == 200
            assert "qwen2.5:7b" in state.loaded
            bad = {**ok, "prompt": "x CRASH y"}
            status, _, body = await emu.post("/api/generate", bad)
            assert (status, json.loads(body)) == (500, died)
            assert "qwen2.5:7b" not in state.loaded and state.crashes == 1
            chat = {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "CRASH"}]}
            status, _, body = await emu.post("/api/chat", chat)
            assert (status, json.loads(body)) == (500, died)
            status, _, body = await emu.post("/v1/chat/completions", chat)
            assert status == 500 and json.loads(body)["error"]["message"] == died["error"]
            assert state.crashes == 3
            assert (await emu.post("/api/generate", ok))[0] == 200
            assert (
                json.loads((await emu.post("/api/emulator/state", method="GET"))[2])["crashes"] == 3
            )
    finally:
        await runner.cleanup()


async def _exchange(port: int, version: str, body: dict[str, Any], path: str) -> bytes:
    """Every byte of the answer to one request on its own connection, read up to the
    end of its body: its length, the end of its chunks (HTTP/1.1), or the close
    (HTTP/1.0)."""
    data = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST {path} HTTP/{version}\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        if version == "1.0":
            return await asyncio.wait_for(reader.read(), 30)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = re.search(rb"\r\ncontent-length: (\d+)\r\n", answer.lower())
        if length is not None:
            return answer + await asyncio.wait_for(reader.readexactly(int(length[1])), 30)
        while not answer.endswith(b"\r\n0\r\n\r\n"):
            answer += await asyncio.wait_for(reader.readuntil(b"\r\n"), 30)
        return answer
    finally:
        writer.close()


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
@pytest.mark.parametrize("cause", ["format", "crash"])
async def test_an_error_before_a_streams_first_line_is_its_first_chunk(
    version: str, path: str, cause: str
) -> None:
    """An error the runner raises before a stream's first line (a `format` the runner
    refuses, a runner that dies) is what streamResponse writes: gin's c.JSON inside
    c.Stream, with the status, `Content-Type: application/json` (set before c.JSON,
    which keeps it) and the body without a newline, flushed before the handler returns:
    Go's net/http sends it chunked, as one chunk, and no Content-Length (to an HTTP/1.0
    client, a body the close ends). Asked for whole, the same error is c.JSON's once the
    handler returns: a length and gin's own Content-Type."""
    runner, _ = await _start(EmulatorSettings(chunk_delay_ms=1, crash_on="CRASH"))
    port = runner.addresses[0][1]
    text = "CRASH" if cause == "crash" else "hi"
    body: dict[str, Any] = {"model": "qwen2.5:7b", "prompt": text}
    body["messages"] = [{"role": "user", "content": text}]
    if cause == "format":
        body["format"] = "yaml"
    message = (
        "llama runner process has terminated: exit status 2"
        if cause == "crash"
        else 'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object'
    )
    error = json.dumps({"error": message}, separators=(",", ":")).encode()
    try:
        answer = await _exchange(port, version, body, path)
        head, _, rest = answer.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        fields = dict(line.lower().split(b": ", 1) for line in lines)
        assert status_line.startswith(f"HTTP/{version} 500 ".encode())
        assert fields[b"content-type"] == b"application/json"
        assert b"content-length" not in fields
        if version == "1.1":
            assert fields[b"transfer-encoding"] == b"chunked"
            assert rest == b"%x\r\n%s\r\n0\r\n\r\n" % (len(error), error)
        else:
            assert b"transfer-encoding" not in fields
            assert rest == error
        answer = await _exchange(port, version, {**body, "stream": False}, path)
        head, _, rest = answer.partition(b"\r\n\r\n")
        fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
        assert fields[b"content-type"] == b"application/json; charset=utf-8"
        assert fields[b"content-length"] == str(len(error)).encode()
        assert b"transfer-encoding" not in fields and rest == error
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("stream", [True, False])
async def test_a_runner_crash_ends_the_answers_running_on_that_runner(stream: bool) -> None:
    """When an input kills a model's runner, every request the runner was answering
    fails with it, as in Ollama, where the runner is one process: a stream already
    written ends with Ollama's `{"error": ...}` line (streamResponse), an answer not yet
    written is its 500; an answer of another model runs on."""
    runner, url = await _start(
        EmulatorSettings(chunk_delay_ms=20, default_tokens=400, crash_on="CRASH")
    )
    state = runner.app[STATE_KEY]
    died = {"error": "llama runner process has terminated: exit status 2"}
    long = {"num_predict": 400}
    try:
        async with aiohttp.ClientSession() as session:
            emu = Emu(url, state, session)

            async def answer(model: str, path: str) -> tuple[int, list[Any]]:
                body: dict[str, Any] = {"model": model, "stream": stream, "options": long}
                if path == "/api/chat":
                    body["messages"] = [{"role": "user", "content": "go on"}]
                else:
                    body["prompt"] = "go on"
                async with session.post(url + path, json=body) as resp:
                    answering.append(path)  # a stream's head comes with its first chunk
                    lines = [json.loads(line) for line in (await resp.read()).splitlines()]
                    return resp.status, lines

            answering: list[str] = []
            running = [
                asyncio.create_task(answer("qwen2.5:7b", "/api/chat")),
                asyncio.create_task(answer("qwen2.5:7b", "/api/generate")),
                asyncio.create_task(answer("mistral:7b", "/api/chat")),
            ]
            await emu.wait_for(lambda: state.active_streams == 3)
            if stream:
                await emu.wait_for(lambda: len(answering) == 3)
            bad = {"model": "qwen2.5:7b", "prompt": "CRASH", "stream": False}
            assert (await emu.post("/api/generate", bad))[0] == 500
            (chat, chat_lines), (gen, gen_lines), (other, other_lines) = await asyncio.gather(
                *running
            )
            if stream:
                assert (chat, gen) == (200, 200)
                assert chat_lines[-1] == gen_lines[-1] == died
                assert not any(line.get("done") for line in chat_lines + gen_lines)
            else:
                assert (chat, chat_lines, gen, gen_lines) == (500, [died], 500, [died])
            assert other == 200 and other_lines[-1]["done_reason"] == "length"
    finally:
        await runner.cleanup()


async def test_a_runner_crash_under_an_openai_stream_ends_it_as_ollamas_writers_do() -> None:
    """ChatWriter and CompleteWriter read the `{"error"}` line streamResponse writes as a
    response of nothing (no model, not done) and write its chunk: an empty delta, an
    empty text. The stream then stops: no finish chunk, no `[DONE]`. The Responses and
    Anthropic writers make no event of it."""
    runner, url = await _start(
        EmulatorSettings(chunk_delay_ms=20, default_tokens=400, crash_on="CRASH")
    )
    state = runner.app[STATE_KEY]
    user = [{"role": "user", "content": "go on"}]
    bodies: dict[str, dict[str, Any]] = {
        "/v1/chat/completions": {"messages": user},
        "/v1/completions": {"prompt": "go on", "stream_options": {"include_usage": True}},
        "/v1/responses": {"input": "go on"},
        "/v1/messages": {"messages": user, "max_tokens": 400},
    }
    try:
        async with aiohttp.ClientSession() as session:
            emu = Emu(url, state, session)
            answering: list[str] = []

            async def answer(path: str) -> list[bytes]:
                body = {"model": "qwen2.5:7b", "stream": True, **bodies[path]}
                async with session.post(url + path, json=body) as resp:
                    assert resp.status == 200
                    answering.append(path)
                    return (await resp.read()).split(b"\n\n")

            running = [asyncio.create_task(answer(path)) for path in bodies]
            await emu.wait_for(lambda: len(answering) == len(bodies))
            bad = {"model": "qwen2.5:7b", "prompt": "CRASH", "stream": False}
            assert (await emu.post("/api/generate", bad))[0] == 500
            chat, completion, responses, messages = await asyncio.gather(*running)
    finally:
        await runner.cleanup()
    first, last = (json.loads(chat[i].removeprefix(b"data: ")) for i in (0, -2))
    assert chat[-1] == b""
    assert last == {
        **first,
        "model": "",
        # The role went out on the stream's first chunk.
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": None}],
    }
    first, last = (json.loads(completion[i].removeprefix(b"data: ")) for i in (0, -2))
    assert completion[-1] == b""
    assert last == {
        **first,
        "model": "",
        "choices": [{"text": "", "index": 0, "finish_reason": None}],
    }
    # The last event is a text delta's: nothing closes the stream.
    assert responses[-1] == messages[-1] == b""
    assert responses[-2].startswith(b"event: response.output_text.delta\n")
    assert messages[-2].startswith(b"event: content_block_delta\n")


def _nested_schema(levels: int) -> str:
    """A JSON schema of objects `levels` deep, as JSON text (deeper than Python's own
    encoder writes)."""
    opening = '{"type": "object", "properties": {"a": '
    return opening * levels + '{"type": "string"}' + '}, "required": ["a"]}' * levels


_DEEP_TOOL = '"tools": [{"type": "function", "function": {"name": "f", "parameters": '


@pytest.mark.parametrize(
    "extra",
    [
        '"tools": [{"type": "function", "function": null}]',
        '"tools": [{"type": "function", "function": {"name": "f", "parameters": null}}]',
        _DEEP_TOOL + _nested_schema(400) + "}}]",
        _DEEP_TOOL + _nested_schema(3000) + "}}]",
        '"format": ' + _nested_schema(400),
        '"format": ' + _nested_schema(3000),
    ],
    ids=[
        "null-function",
        "null-parameters",
        "deep-tool",
        "deeper-tool",
        "deep-format",
        "deeper-format",
    ],
)
async def test_tools_and_formats_go_reads_are_answered(emu: Emu, extra: str) -> None:
    """A tool whose function is null (Go reads the zero ToolFunction) or a tool or
    format schema nested hundreds of levels deep (Go reads 10,000) is a request Ollama
    takes and a model answers: never the emulator's own 500."""
    head = '{"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}]'
    raw = f'{head}, "stream": false, {extra}}}'.encode()
    status, _, answer = await emu.post("/api/chat", raw=raw)
    assert status == 200, answer[:300]
    assert json.loads(answer)["done"] is True


async def test_a_prompt_beyond_the_context_is_evaluated_to_the_context(emu: Emu) -> None:
    """Ollama's runner evaluates at most the context (num_ctx) of a longer prompt: it
    truncates it, or refuses it. A prompt of megabytes neither holds the emulator in
    prompt evaluation for minutes nor reports more tokens evaluated than fit."""
    options = {"num_ctx": 2048, "num_predict": 2}
    long = "word " * 100_000
    for path, body in (
        ("/api/generate", {"prompt": long}),
        ("/api/chat", {"messages": [{"role": "user", "content": long}]}),
    ):
        request = {"model": "qwen2.5:7b", "stream": False, "options": options, **body}
        status, _, answer = await emu.post(path, request)
        assert status == 200, answer[:300]
        assert 0 < json.loads(answer)["prompt_eval_count"] <= 2048


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
async def test_a_large_body_is_decoded_off_the_loop(
    emu: Emu, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding a body near the proxy's limit as Go does takes the emulator a good part
    of a second: a large one is decoded in a reader thread, so that the streams of the
    other clients of the same backend (the demo's, behind the proxy) go on meanwhile;
    a small one on the loop."""
    decoded = where_called(monkeypatch, wire, "decode_json")
    for padding in ("", "x" * (3 * 1024 * 1024)):
        messages = [{"role": "user", "content": "hi"}]
        body = {"model": "qwen2.5:7b", "messages": messages, "stream": False, "pad": padding}
        status, _, answer = await emu.post(path, body)
        assert status == 200, answer[:300]
    assert decoded == [True, False]


@pytest.mark.parametrize(
    ("arguments", "status"),
    [
        ({"city": "Oslo"}, 200),
        (None, 400),
        ('{"city": "Oslo"}', 400),
        ([1], 400),
        (5, 400),
        (True, 400),
    ],
)
async def test_tool_call_arguments_are_read_as_an_ordered_map(
    emu: Emu, arguments: Any, status: int
) -> None:
    """api.ToolCallFunctionArguments decodes through an ordered map (wk8/go-ordered-map,
    buger/jsonparser's ObjectEach): anything but an object is that parser's error,
    Ollama's 400, even in a conversation's past turns; null too, as encoding/json hands
    a null to the UnmarshalJSON of a field that is no pointer (literalStore, indirect),
    and the map's UnmarshalJSON, also given it, reads no object."""
    call = {"function": {"name": "get_weather", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny"},
    ]
    body = {"model": "qwen2.5:7b", "messages": messages, "stream": False}
    got, _, answer = await emu.post("/api/chat", body)
    assert got == status, answer[:300]
    if status == 400:
        message = "Value looks like object, but can't find closing '}' symbol"
        assert json.loads(answer) == {"error": message}


# (a tool call as written; the kind, field and type Go's error names, no kind where Go
# decodes it): api.ToolCall's and api.ToolCallFunction's fields, which api.Message's
# inner decoding names by the request; null leaves a field as it is, a key no field
# has is skipped.
_TOOL_CALL_FIELDS = [
    ('{"id": 1, "function": {"name": "f"}}', "number", ".id", "string"),
    ('{"function": {"name": ["f"]}}', "array", ".function.name", "string"),
    ('{"function": {"index": "0"}}', "string", ".function.index", "int"),
    ('{"function": {"index": 2.0}}', "number 2.0", ".function.index", "int"),
    ('{"function": {"index": 1e400}}', "number 1e400", ".function.index", "int"),
    ('"get_weather"', "string", "", "api.ToolCall"),
    ('{"function": 5}', "number", ".function", "api.ToolCallFunction"),
    (
        '{"function": {"arguments": {"a": [1e400]}}}',
        "number 1e400",
        ".function.arguments",
        "float64",
    ),
    (
        '{"function": {"index": 0, "name": 1, "arguments": {}}}',
        "number",
        ".function.name",
        "string",
    ),
    ('{"id": "c1", "type": 5, "function": {"index": 3, "name": "f", "arguments": {}}}', "", "", ""),
    ("null", "", "", ""),
    ('{"id": null, "function": {"index": null, "name": null}}', "", "", ""),
]


@pytest.mark.parametrize(("call", "kind", "field", "go_type"), _TOOL_CALL_FIELDS)
async def test_a_tool_calls_fields_are_read_as_go_reads_them(
    emu: Emu, call: str, kind: str, field: str, go_type: str
) -> None:
    """A tool call of a conversation's past turn that Go refuses is Ollama's 400, its
    error in the request's context (`ChatRequest.messages.tool_calls.function.name`),
    ending the decoding where an earlier field's type error was saved."""
    raw = (
        '{"model": "qwen2.5:7b", "stream": "yes", "messages": [{"role": "user", "content":'
        ' "weather?"}, {"role": "assistant", "content": "", "tool_calls": [' + call + "]}]}"
    )
    if not kind:
        raw = raw.replace('"yes"', "false")
    got, _, answer = await emu.post("/api/chat", raw=raw.encode())
    if not kind:
        assert got == 200, answer[:300]
        return
    error = (
        f"json: cannot unmarshal {kind} into Go struct field "
        f"ChatRequest.messages.tool_calls{field} of type {go_type}"
    )
    assert (got, json.loads(answer)) == (400, {"error": error})


@pytest.mark.parametrize(
    "block",
    [
        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": '{"city": "Oslo"}'},
        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": [1]},
        {"type": "text", "text": "x", "input": 5},
    ],
)
async def test_an_anthropic_blocks_input_is_read_as_an_ordered_map(
    emu: Emu, block: dict[str, Any]
) -> None:
    """anthropic.ContentBlock's `input` is an api.ToolCallFunctionArguments: anything but
    an object is its ordered map's error (jsonparser's), and a number beyond a double
    in an object is json.Unmarshal's, in the request's context; either ends the
    decoding, the middleware's 400, after an earlier block's saved type error too."""
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": 1}, block]},
    ]
    body = {"model": "qwen2.5:7b", "max_tokens": 5, "messages": messages}
    status, _, answer = await emu.post("/v1/messages", body)
    error = json.loads(answer)["error"]
    assert (status, error["message"]) == (
        400,
        "Value looks like object, but can't find closing '}' symbol",
    )
    raw = (
        json.dumps(body)
        .encode()
        .replace(b'"input": ' + json.dumps(block["input"]).encode(), b'"input": {"city": 1e400}')
    )
    status, _, answer = await emu.post("/v1/messages", raw=raw)
    error = json.loads(answer)["error"]
    assert (status, error["message"]) == (
        400,
        "json: cannot unmarshal number 1e400 into Go struct field MessagesRequest.messages.input"
        " of type float64",
    )
    block["input"] = {"city": "Oslo"}
    messages[1]["content"] = [block]
    status, _, answer = await emu.post("/v1/messages", body)
    assert status == 200, answer[:300]


@pytest.mark.parametrize(
    ("arguments", "status"),
    [('{"city": "Oslo"}', 200), ("null", 400), ("[1, 2]", 400), ("5", 400), ('"Oslo"', 400)],
)
async def test_chat_completion_tool_call_arguments_must_be_an_object(
    emu: Emu, arguments: str, status: int
) -> None:
    """openai.FromCompletionToolCall unmarshals `arguments` into an
    api.ToolCallFunctionArguments (an ordered map): JSON that is no object (null too)
    is its "invalid tool call arguments" too, not only text that is no JSON."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    got, _, answer = await emu.post(
        "/v1/chat/completions", {"model": "qwen2.5:7b", "messages": messages}
    )
    assert got == status, answer[:300]
    if status == 400:
        assert json.loads(answer)["error"]["message"] == "invalid tool call arguments"


def _chat_writer(native: list[dict[str, Any]], usage: bool) -> list[Any]:
    """What Ollama's ChatWriter (middleware/openai.go, with openai.ToStreamChunks and
    FinishChunk) makes of a native /api/chat stream, id and created left out: the role
    on the first chunk alone, a thinking step beside content or tool calls split in
    two, no chunk for the metrics-only trailer but for a stream's first, the finish
    reason on a chunk of its own with an empty delta (`length` over `tool_calls`, which
    only replaces `stop`), then the usage chunk when asked for, then `[DONE]`."""
    events: list[Any] = []
    first_sent = tool_sent = False

    def chunk(model: str, delta: dict[str, Any], reason: Any, logprobs: Any) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
        if logprobs:
            choice["logprobs"] = {"content": logprobs}
        head = {"object": "chat.completion.chunk", "model": model}
        return {**head, "system_fingerprint": "fp_ollama", "choices": [choice]}

    for line in native:
        message, model = line.get("message", {}), line.get("model", "")
        content, thinking = message.get("content", ""), message.get("thinking", "")
        calls, logprobs = message.get("tool_calls") or [], line.get("logprobs")
        trailer = line.get("done") and first_sent and not (content or thinking or calls)
        if not (trailer and not logprobs):
            role = {} if first_sent else {"role": "assistant"}
            rest: dict[str, Any] = {"content": content}
            if calls:
                rest["tool_calls"] = [
                    {
                        "id": c.get("id", ""),
                        "index": c["function"].get("index", 0),
                        "type": "function",
                        "function": {
                            "name": c["function"]["name"],
                            "arguments": json.dumps(
                                c["function"]["arguments"], separators=(",", ":")
                            ),
                        },
                    }
                    for c in calls
                ]
            if thinking and (content or calls):
                events.append(chunk(model, {**role, "reasoning": thinking}, None, logprobs))
                events.append(chunk(model, rest, None, None))
            else:
                reasoning = {"reasoning": thinking} if thinking else {}
                events.append(chunk(model, {**role, **rest, **reasoning}, None, logprobs))
            tool_sent = tool_sent or bool(calls)
            first_sent = True
        if line.get("done"):
            reason = line.get("done_reason") or "stop"
            if reason == "stop" and tool_sent:
                reason = "tool_calls"
            events.append(chunk(model, {}, reason, None))
            if usage:
                prompt, completion = line.get("prompt_eval_count", 0), line.get("eval_count", 0)
                counts = {"prompt_tokens": prompt, "completion_tokens": completion}
                events.append(
                    {
                        **events[-1],
                        "choices": [],
                        "usage": {**counts, "total_tokens": prompt + completion},
                    }
                )
            events.append("[DONE]")
    return events


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("qwen2.5:7b", {}),
        ("qwen2.5:7b", {"stream_options": {"include_usage": True}}),
        ("qwen3:8b", {"logprobs": True}),
        ("qwen2.5:7b", {"tools": [WEATHER_TOOL]}),
        ("qwen2.5:7b", {"tools": [WEATHER_TOOL], "max_tokens": 2}),
        ("qwen3:8b", {"tools": [WEATHER_TOOL], "stream_options": {"include_usage": True}}),
    ],
)
async def test_a_chat_completion_stream_is_what_ollamas_chat_writer_makes_of_the_chat(
    emu: Emu, model: str, extra: dict[str, Any]
) -> None:
    """A /v1/chat/completions stream is the /api/chat stream of the same conversation
    as Ollama 0.32's ChatWriter writes it (`_chat_writer`), chunk for chunk; every chunk
    shares one id and one `created`."""
    messages = [{"role": "user", "content": "Weather in Paris, and why?"}]
    native_body: dict[str, Any] = {"model": model, "messages": messages}
    for key in ("tools", "logprobs"):
        if key in extra:
            native_body[key] = extra[key]
    if "max_tokens" in extra:
        native_body["options"] = {"num_predict": extra["max_tokens"]}
    status, _, body = await emu.post("/api/chat", native_body)
    assert status == 200
    native = [json.loads(line) for line in body.splitlines()]
    status, _, body = await emu.post(
        "/v1/chat/completions", {"model": model, "messages": messages, "stream": True, **extra}
    )
    assert status == 200 and body.endswith(b"\n\n")
    datas = [e.removeprefix(b"data: ") for e in body[:-2].split(b"\n\n")]
    events = [d.decode() if d == b"[DONE]" else json.loads(d) for d in datas]
    chunks = [e for e in events if isinstance(e, dict)]
    assert len({(c.pop("id"), c.pop("created")) for c in chunks}) == 1
    # Tool call ids are drawn at random for each answer.
    unnamed = re.compile(r'"call_[a-z0-9]{8}"')
    expected = _chat_writer(native, "stream_options" in extra)
    assert unnamed.sub("call_#", json.dumps(events)) == unnamed.sub("call_#", json.dumps(expected))


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (
            "/api/pull",
            {"model": "no-such-model:1b"},
            500,
            "pull model manifest: file does not exist",
        ),
        ("/api/push", {"model": "no-such:model"}, 500, "file does not exist"),
        ("/api/create", {"model": "m", "from": "no-such-model:1b"}, 500, None),
        ("/api/create", {"model": "m"}, 400, "neither 'from' or 'files' was specified"),
    ],
)
async def test_a_pull_push_or_create_that_fails_ends_as_ollamas_channel_writers_end_it(
    emu: Emu, path: str, body: dict[str, Any], status: int, message: str | None
) -> None:
    """A failure the handler's goroutine sends (`gin.H{"error"}`, its status or 500):
    asked whole, waitForStream's c.JSON under the `application/json` it set first; in
    a stream before any line, streamResponse's c.JSON under the `application/json` it
    sets, flushed (chunked), no newline; after lines, the `{"error"}` line in the 200."""
    message = message or "pull model manifest: file does not exist"
    error = json.dumps({"error": message}, separators=(",", ":")).encode()
    got = await emu.post(path, {**body, "stream": False})
    assert (got[0], got[1]["Content-Type"], got[2]) == (status, "application/json", error)
    assert got[1]["Content-Length"] == str(len(error))
    async with emu.session.post(emu.url + path, json=body) as r:
        streamed = await r.read()
        if status == 400:  # the first thing the goroutine sends
            assert (r.status, r.headers["Content-Type"], streamed) == (
                400,
                "application/json",
                error,
            )
            assert r.headers["Transfer-Encoding"] == "chunked"
        else:
            assert (r.status, r.headers["Content-Type"]) == (200, "application/x-ndjson")
            assert streamed.endswith(b"\n" + error + b"\n")


_PIXEL_URL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwA"
    "ChwGA60e6kgAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": _PIXEL_URL}}],
                    }
                ]
            },
        ),
        (
            "/v1/responses",
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "image_url": _PIXEL_URL}]}
                ]
            },
        ),
    ],
)
async def test_an_openai_stream_that_fails_before_its_first_chunk_is_the_writers_error_flushed(
    emu: Emu, path: str, body: dict[str, Any]
) -> None:
    """An error ChatHandler's goroutine sends before the stream's first chunk (here an
    image for a model without vision): streamResponse's c.JSON, which the OpenAI layer's
    writer turns into its error object (writeError, json.Encoder), flushed by c.Stream
    while the handler runs: chunked, with no Content-Length, as on /api/chat."""
    message = "this model is missing data required for image input"
    async with emu.session.post(
        emu.url + path, json={"model": "qwen2.5:7b", "stream": True, **body}
    ) as r:
        got = await r.read()
        assert (r.status, r.headers["Content-Type"]) == (500, "application/json")
        assert r.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.headers
    assert json.loads(got)["error"]["message"] == message and got.endswith(b"}\n")


# Values nested deeper than orjson writes ---------------------------------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=10,
)


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(value=_json_values, sort_keys=st.booleans())
def test_a_value_deeper_than_orjson_writes_is_written_as_orjson_writes(
    value: Any, sort_keys: bool
) -> None:
    """Go writes a request's value as deep as it reads one (10,000 levels; orjson 254):
    the emulator writes such a value itself, in orjson's bytes, and prints its numbers
    as Go does at any depth."""
    levels = 2_000
    deep = value
    for n in range(levels):
        deep = [deep] if n % 2 else {"k": deep}
    shallow = orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    opened = b'[{"k":' * (levels // 2)
    closed = b"}]" * (levels // 2)
    assert wire.json_bytes(deep, sort_keys=sort_keys) == opened + shallow + closed
    assert (
        wire.dumps(deep, sort_keys=sort_keys)
        == opened + wire.dumps(value, sort_keys=sort_keys) + closed
    )


def test_a_responses_namespace_is_echoed_with_its_members_as_deep_as_go_reads() -> None:
    """ToResponse marshals a namespace's members, a namespace among them with its own,
    as deep as Go reads them (10,000 levels); a stream's map has no members."""
    tool: dict[str, Any] = {"type": "function", "name": "f", "parameters": {"b": 1, "a": 2}}
    for _ in range(3_000):
        tool = {"type": "namespace", "name": "n", "tools": [tool, 5]}
    echo = responses_api._tool_echo(tool, stream=False)
    levels = 0
    while echo["type"] == "namespace":
        assert list(echo) == ["type", "name", "description", "strict", "parameters", "tools"]
        assert echo["tools"][1] == 5
        echo, levels = echo["tools"][0], levels + 1
    assert levels == 3_000
    assert echo == {
        "type": "function",
        "name": "f",
        "description": None,
        "strict": None,
        "parameters": {"a": 2, "b": 1},
    }
    assert "tools" not in responses_api._tool_echo(tool, stream=True)

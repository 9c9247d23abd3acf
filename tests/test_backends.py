"""Several backends: routing by model, failover, merged lists, model administration."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy import upstream
from proxy.app import APP_KEY
from proxy.backends import BackendPool, StatusError
from proxy.config import Config
from proxy.config_serving import Backend, Health, Timeouts
from proxy.emulator import EmulatorSettings
from tests.conftest import FROZEN
from tests.support import (
    AUTO_NAMES,
    Emulator,
    Proxy,
    ServerThread,
    file_usage,
    free_port,
    health_circuit,
    wait_until,
    where_called,
)
from tests.usage_services import events_of

SHARED = "qwen2.5:7b"
ONLY_A = "llama3.1:8b"
ONLY_B = "gemma2:9b"


@dataclasses.dataclass
class Pair:
    a: Emulator
    b: Emulator
    proxy: Proxy

    def refresh(self) -> None:
        pool = self.proxy.app[APP_KEY].backends
        self.proxy.thread.call(pool.refresh_all)


@pytest.fixture
def pair(servers: ServerThread) -> Iterator[Pair]:
    a = Emulator(
        servers, dataclasses.replace(FROZEN, models=(SHARED, ONLY_A, "nomic-embed-text:latest"))
    )
    b = Emulator(servers, dataclasses.replace(FROZEN, models=(SHARED, ONLY_B, "mistral:7b")))
    proxy = Proxy(servers, [a.url, b.url], health=Health(interval_seconds=60, failure_threshold=2))
    yield Pair(a, b, proxy)
    proxy.stop()
    a.stop()
    b.stop()


async def post(url: str, path: str, body: Any) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.post(url + path, json=body) as resp:
        return resp.status, await resp.read()


def generate(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "hello", "stream": False, **extra}


async def test_request_goes_to_the_backend_that_has_the_model(pair: Pair) -> None:
    for model, served, idle in ((ONLY_A, pair.a, pair.b), (ONLY_B, pair.b, pair.a)):
        before_served = served.state.requests["/api/generate"]
        before_idle = idle.state.requests["/api/generate"]
        status, body = await post(pair.proxy.url, "/api/generate", generate(model))
        assert status == 200
        assert orjson.loads(body)["model"] == model
        assert served.state.requests["/api/generate"] == before_served + 1
        assert idle.state.requests["/api/generate"] == before_idle


@pytest.mark.parametrize(
    "spelling", ["registry.ollama.ai/library/{}", "library/{}", "{}:local", "{}:LOCAL "]
)
async def test_a_model_named_in_its_long_spelling_goes_to_the_backend_that_has_it(
    pair: Pair, spelling: str
) -> None:
    """Ollama reads the default host and namespace as absent, and a `:local` source
    suffix as asking for the model on the machine (modelref.ParseRef): the model is the
    one the backend lists under its short name."""
    for model, served, idle in ((ONLY_A, pair.a, pair.b), (ONLY_B, pair.b, pair.a)):
        for _ in range(3):
            before = (served.state.requests["/api/generate"], idle.state.requests["/api/generate"])
            name = spelling.format(model)
            status, _ = await post(pair.proxy.url, "/api/generate", generate(name))
            assert status == 200
            after = (served.state.requests["/api/generate"], idle.state.requests["/api/generate"])
            assert after == (before[0] + 1, before[1])


async def test_prefers_the_backend_where_the_model_is_loaded(pair: Pair) -> None:
    # Load the shared model on B only (directly), then let the proxy see /api/ps.
    assert (await post(pair.b.url, "/api/generate", generate(SHARED)))[0] == 200
    pair.refresh()
    before = pair.b.state.requests["/api/generate"]
    for _ in range(3):
        assert (await post(pair.proxy.url, "/api/generate", generate(SHARED)))[0] == 200
    assert pair.b.state.requests["/api/generate"] == before + 3


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
async def test_ollama_stop_unloads_the_model_on_every_backend(pair: Pair, path: str) -> None:
    """`ollama stop <model>` (a generate without a prompt, or a chat without messages,
    with keep_alive 0) through the proxy leaves the model loaded nowhere, as it does on
    one Ollama: `ollama ps` through the proxy no longer lists it. The client gets one
    answer, Ollama's."""
    for emulator in (pair.a, pair.b):
        assert (await post(emulator.url, "/api/generate", generate(SHARED)))[0] == 200
        assert SHARED in emulator.state.loaded
    pair.refresh()
    client = ollama.AsyncClient(host=pair.proxy.url)
    if path == "/api/generate":
        stopped: Any = await client.generate(model=SHARED, keep_alive=0)
    else:
        stopped = await client.chat(model=SHARED, messages=[], keep_alive=0)
    assert (stopped.model, stopped.done_reason) == (SHARED, "unload")
    assert await wait_until(lambda: not {SHARED} & {*pair.a.state.loaded, *pair.b.state.loaded})
    assert SHARED not in [m.model for m in (await client.ps()).models]
    # The model a backend does not have is not asked there: B has no ONLY_A.
    assert (await post(pair.a.url, "/api/generate", generate(ONLY_A)))[0] == 200
    before = pair.b.state.requests[path]
    if path == "/api/generate":
        await client.generate(model=ONLY_A, keep_alive=0)
    else:
        await client.chat(model=ONLY_A, messages=[], keep_alive=0)
    assert await wait_until(lambda: ONLY_A not in pair.a.state.loaded)
    assert pair.b.state.requests[path] == before


async def test_fewest_in_flight_breaks_ties(pair: Pair) -> None:
    """With the shared model loaded nowhere, concurrent streams spread over both."""
    async with aiohttp.ClientSession() as session:
        responses = [
            await session.post(
                pair.proxy.url + "/api/generate",
                json={"model": SHARED, "prompt": "x", "options": {"num_predict": 2000}},
            )
            for _ in range(2)
        ]
        assert [r.status for r in responses] == [200, 200]
        assert pair.a.state.active_streams == 1
        assert pair.b.state.active_streams == 1
        for r in responses:
            r.close()


async def test_unknown_model_gets_the_backends_own_404(pair: Pair) -> None:
    direct = await post(pair.a.url, "/api/chat", {"model": "nope:1b", "messages": []})
    proxied = await post(pair.proxy.url, "/api/chat", {"model": "nope:1b", "messages": []})
    assert proxied == direct
    assert direct[0] == 404


async def test_merged_lists_have_every_model_once(pair: Pair) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(pair.proxy.url + "/api/tags") as resp:
            assert resp.headers["Content-Type"].startswith("application/json")
            names = [m["name"] for m in (await resp.json())["models"]]
        async with session.get(pair.proxy.url + "/v1/models") as resp:
            ids = [m["id"] for m in (await resp.json())["data"]]
    expected = {SHARED, ONLY_A, ONLY_B, "mistral:7b", "nomic-embed-text:latest", *AUTO_NAMES}
    assert sorted(names) == sorted(expected)
    assert sorted(ids) == sorted(expected)

    await post(pair.a.url, "/api/generate", generate(SHARED))
    await post(pair.b.url, "/api/generate", generate(SHARED))
    await post(pair.b.url, "/api/generate", generate(ONLY_B))
    async with aiohttp.ClientSession() as session, session.get(pair.proxy.url + "/api/ps") as resp:
        loaded = [m["name"] for m in (await resp.json())["models"]]
    assert sorted(loaded) == sorted([SHARED, ONLY_B])


async def test_backend_down_before_the_request_fails_over(pair: Pair) -> None:
    pair.a.stop()
    before = pair.b.state.requests["/api/generate"]
    status, body = await post(pair.proxy.url, "/api/generate", generate(SHARED))
    assert status == 200
    assert orjson.loads(body)["done"] is True
    assert pair.b.state.requests["/api/generate"] == before + 1


async def test_5xx_before_the_first_byte_is_retried_elsewhere(pair: Pair) -> None:
    pair.a.state.fault = "error500"
    pair.b.state.fault = "none"
    for _ in range(4):
        status, body = await post(pair.proxy.url, "/api/generate", generate(SHARED))
        assert status == 200, body


async def test_all_backends_down_is_503_naming_the_reason(pair: Pair) -> None:
    pair.a.stop()
    pair.b.stop()
    status, body = await post(pair.proxy.url, "/api/generate", generate(SHARED))
    assert status == 503
    message = orjson.loads(body)["error"]
    assert pair.a.url in message and pair.b.url in message
    # With every circuit now open, the proxy answers at once with the same shape.
    for _ in range(3):
        await post(pair.proxy.url, "/api/generate", generate(SHARED))
    status, body = await post(pair.proxy.url, "/api/chat", {"model": SHARED, "messages": []})
    assert status == 503 and "no healthy backend" in orjson.loads(body)["error"]


@pytest.mark.parametrize("fault", ["close_early", "stall"])
async def test_backend_failing_mid_stream_ends_with_an_error_line(
    servers: ServerThread, own_emulator: Emulator, fault: str
) -> None:

    proxy = Proxy(servers, [own_emulator.url], timeouts=Timeouts(idle_read_seconds=1.0))
    try:
        own_emulator.state.fault = fault
        async with aiohttp.ClientSession() as session:
            async with session.post(
                proxy.url + "/api/generate", json={"model": SHARED, "prompt": "x"}
            ) as resp:
                assert resp.status == 200
                lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
        assert lines[0]["done"] is False
        assert set(lines[-1]) == {"error"}
        own_emulator.state.fault = "none"
        status, body = await post(proxy.url, "/api/generate", generate(SHARED))
        assert status == 200 and orjson.loads(body)["done"] is True
    finally:
        proxy.stop()


async def test_a_mid_stream_failure_reaches_an_http10_client_unframed(
    servers: ServerThread, own_emulator: Emulator
) -> None:
    """To an HTTP/1.0 client the stream is delimited by the close (as Go's net/http
    writes it): the error line follows the chunks as they are, then the close."""
    proxy = Proxy(servers, [own_emulator.url])
    try:
        own_emulator.state.fault = "close_early"
        data = orjson.dumps({"model": SHARED, "prompt": "x"})
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"POST /api/generate HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(data))
            writer.write(data)
            answer = await asyncio.wait_for(reader.read(), 60)  # until the proxy closes
        finally:
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK\r\n")
        assert b"transfer-encoding" not in head.lower()
        lines = [orjson.loads(line) for line in body.splitlines()]
        assert lines[0]["done"] is False
        assert set(lines[-1]) == {"error"}
    finally:
        proxy.stop()


def _cut_app(model: str) -> web.Application:
    """A backend listing `model` whose chat answers are cut: a chunked
    `application/json` body (what Go's net/http frames a large `stream: false` answer
    as) that stops halfway through its one JSON document when the connection drops."""

    async def infer(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        half = b'{"model":"%b","message":{"role":"assistant","content":"He' % model.encode()
        await resp.write(half)
        assert request.transport is not None
        request.transport.abort()
        return resp

    app = _lists_app({"models": [{"name": model, "model": model, "digest": "d1", "size": 1}]})
    app.router.add_post("/api/chat", infer)
    return app


async def test_a_whole_answer_cut_short_reaches_the_client_cut(servers: ServerThread) -> None:
    """A JSON answer (not a stream) that breaks off is not ended as a stream is, with an
    error line and the last chunk: that would hand the client a complete 200 whose body
    is no JSON. The client sees the cut as it would from the backend itself."""
    port = free_port()
    cut = servers.serve(lambda: _cut_app(SHARED), port)
    proxy = Proxy(servers, [f"http://127.0.0.1:{port}"])
    body = {"model": SHARED, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    try:
        for url in (f"http://127.0.0.1:{port}", proxy.url):
            async with aiohttp.ClientSession() as session:
                async with session.post(url + "/api/chat", json=body) as resp:
                    assert resp.status == 200
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await resp.read()
    finally:
        proxy.stop()
        servers.stop(cut)


async def test_backend_that_never_answers_is_bounded_by_the_idle_timeout(
    servers: ServerThread, own_emulator: Emulator
) -> None:

    proxy = Proxy(servers, [own_emulator.url], timeouts=Timeouts(idle_read_seconds=0.5))
    try:
        own_emulator.state.fault = "hang"
        status, body = await post(proxy.url, "/api/generate", generate(SHARED))
        assert status == 502
        assert "no data from backend" in orjson.loads(body)["error"]
    finally:
        proxy.stop()


async def test_garbage_from_the_backend_is_a_502(
    servers: ServerThread, own_emulator: Emulator
) -> None:
    proxy = Proxy(servers, [own_emulator.url])
    try:
        own_emulator.state.fault = "garbage"
        status, body = await post(proxy.url, "/api/generate", generate(SHARED))
        assert status == 502
        assert orjson.loads(body)["error"]
    finally:
        proxy.stop()


async def test_admin_all_pulls_and_deletes_on_every_backend(pair: Pair) -> None:
    status, body = await post(pair.proxy.url, "/api/pull", {"model": "mistral:7b", "stream": False})
    assert status == 200 and orjson.loads(body) == {"status": "success"}
    assert await wait_until(
        lambda: "mistral:7b" in pair.a.state.models and "mistral:7b" in pair.b.state.models
    )

    async with aiohttp.ClientSession() as session:
        async with session.delete(
            pair.proxy.url + "/api/delete", json={"model": "mistral:7b"}
        ) as resp:
            assert resp.status == 200
    assert await wait_until(
        lambda: "mistral:7b" not in pair.a.state.models and "mistral:7b" not in pair.b.state.models
    )


async def test_pull_streams_progress_through(pair: Pair) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(pair.proxy.url + "/api/pull", json={"model": ONLY_A}) as resp:
            assert resp.headers["Content-Type"].startswith("application/x-ndjson")
            statuses = [orjson.loads(line)["status"] for line in (await resp.read()).splitlines()]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"


async def scrape_failures(url: str, backend: str) -> tuple[float, str]:
    """The breaker's consecutive failures and circuit state for `backend`, from /metrics."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    failures, circuit = -1.0, ""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("backend") != backend:
                continue
            if sample.name == "autoroute_backend_consecutive_failures":
                failures = sample.value
            elif sample.name == "autoroute_backend_circuit_state" and sample.value == 1:
                circuit = sample.labels["state"]
    return failures, circuit


async def streamed_error(url: str) -> tuple[int, str]:
    """A streaming generate that fails: its status and the Ollama-shaped error, from
    the body (`{"error": ...}`, 502) or the stream's last line (200, already started)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/api/generate", json={"model": SHARED, "prompt": "x"}) as resp,
    ):
        lines = (await resp.read()).splitlines()
    last = orjson.loads(lines[-1])
    assert set(last) == {"error"} and isinstance(last["error"], str) and last["error"]
    if resp.status == 200:
        assert orjson.loads(lines[0])["done"] is False
    return resp.status, last["error"]


# How each fault reaches the client: a fault before the response head is a 502 with a
# JSON body; one after it (the stream started, status 200 sent) is the stream's last line.
# Not "hang" (a model's request accepted and never answered): to the proxy it is a
# prompt still being evaluated, the request's own length
# (`test_a_models_silence_longer_than_the_idle_timeout_opens_no_circuit`). Nor
# "stall" (silent after the first chunk): to the proxy it is a model writing what
# Ollama withholds until whole, the request's own length too
# (`test_a_tool_call_withheld_mid_stream_past_the_idle_timeout_opens_no_circuit`).
FAULT_STATUS = {"garbage": 502, "close_early": 200}


@pytest.mark.parametrize("fault", sorted(FAULT_STATUS))
async def test_each_backend_fault_is_an_ollama_error_counted_by_the_breaker(
    servers: ServerThread, own_emulator: Emulator, fault: str
) -> None:
    """Speaks garbage, closes early: each reaches the client in
    Ollama's error shape within the configured idle timeout, and each counts as one
    failure; at the threshold the circuit opens and the next request
    is refused at once (503) without reaching the backend."""
    proxy = Proxy(
        servers,
        [own_emulator.url],
        timeouts=Timeouts(idle_read_seconds=0.5),
        # No background health check during the test: it would reset the count.
        health=Health(interval_seconds=3600, failure_threshold=2, open_seconds=3600),
    )
    backend = own_emulator.url
    try:
        assert await scrape_failures(proxy.url, backend) == (0, "closed")
        own_emulator.state.fault = fault
        for failures in (1, 2):
            status, _ = await streamed_error(proxy.url)
            assert status == FAULT_STATUS[fault]
            expected = "closed" if failures < 2 else "open"
            assert await scrape_failures(proxy.url, backend) == (failures, expected)
        reached = own_emulator.state.requests["/api/generate"]
        status, body = await post(proxy.url, "/api/generate", generate(SHARED))
        assert status == 503
        assert "circuit open" in orjson.loads(body)["error"]
        assert own_emulator.state.requests["/api/generate"] == reached
    finally:
        proxy.stop()


async def _counted_nothing_and_serves(proxy: Proxy, *emulators: Emulator) -> None:
    """No circuit counted a failure of these backends, and the next request is served."""
    for emulator in emulators:
        assert await scrape_failures(proxy.url, emulator.url) == (0, "closed")
    status, answer = await post(proxy.url, "/api/generate", generate(SHARED))
    assert status == 200 and orjson.loads(answer)["done"] is True


# Some 200 tokens: seconds of prompt evaluation at 100 tokens a second.
LONG_PROMPT = "x " * 200
# An answer generated slowly (whole: after the generation), and a prompt read slowly
# (a stream's first chunk: after the prompt's evaluation).
SLOW_GENERATION = dataclasses.replace(FROZEN, chunk_delay_ms=20.0, models=(SHARED,))
SLOW_PROMPT = dataclasses.replace(FROZEN, prompt_tokens_per_second=100.0, models=(SHARED,))


@pytest.mark.parametrize(
    ("slow", "path", "body"),
    [
        (SLOW_GENERATION, "/api/generate", generate(SHARED, options={"num_predict": 60})),
        (
            SLOW_GENERATION,
            "/v1/chat/completions",
            {"model": SHARED, "messages": [{"role": "user", "content": "x"}], "max_tokens": 60},
        ),
        (SLOW_PROMPT, "/api/generate", {"model": SHARED, "prompt": LONG_PROMPT}),
        (
            SLOW_PROMPT,
            "/v1/chat/completions",
            {
                "model": SHARED,
                "messages": [{"role": "user", "content": LONG_PROMPT}],
                "stream": True,
            },
        ),
    ],
    ids=["ollama-stream-false", "openai-whole", "ollama-stream", "openai-stream"],
)
async def test_a_models_silence_longer_than_the_idle_timeout_opens_no_circuit(
    servers: ServerThread, slow: EmulatorSettings, path: str, body: dict[str, Any]
) -> None:
    """A model answers once it has read the whole prompt (a stream's first chunk) or
    generated the whole answer (`stream: false`, OpenAI's default); both take as long
    as the client asks for: the backend's silence until then is the request's, not the
    backend failing. Past `idle_read_seconds` the client gets the 502, the backend's
    circuit counts nothing (any client could open every backend's circuit, each tried
    on every backend), and the request is not run again on the other backend (it would
    take as long there); the next requests are served."""
    a, b = Emulator(servers, slow), Emulator(servers, slow)
    proxy = Proxy(
        servers,
        [a.url, b.url],
        timeouts=Timeouts(idle_read_seconds=0.5),
        health=Health(interval_seconds=3600, failure_threshold=1, open_seconds=3600),
    )
    try:
        for _ in range(2):
            status, answer = await post(proxy.url, path, body)
            assert status == 502 and b"no data from backend" in answer
        assert a.state.requests[path] + b.state.requests[path] == 2
        await _counted_nothing_and_serves(proxy, a, b)
    finally:
        proxy.stop()
        a.stop()
        b.stop()


# A thinking model that answers with a tool call: Ollama streams its thinking, then
# its tool parser withholds the call until the model has written all of it
# (ChatHandler's toolParser.Add), so the stream is silent for as long as the call the
# client asked for takes to generate.
THINKER = "qwen3:8b"
WRITE_FILE = {
    "type": "function",
    "function": {
        "name": "write_file",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
}


async def test_a_tool_call_withheld_mid_stream_past_the_idle_timeout_opens_no_circuit(
    servers: ServerThread,
) -> None:
    """A stream silent between two chunks while the model writes a tool call is as
    long as the client's request makes it, not the backend failing: past
    `idle_read_seconds` the stream ends with Ollama's error line, and no circuit
    counts it (any client could open every circuit with a long enough call)."""
    # Thinking tokens 0.1 s apart, then a call of some 20 tokens written in silence.
    slow = dataclasses.replace(FROZEN, chunk_delay_ms=100.0, models=(THINKER,))
    a = Emulator(servers, slow)
    proxy = Proxy(
        servers,
        [a.url],
        timeouts=Timeouts(idle_read_seconds=0.5),
        health=Health(interval_seconds=3600, failure_threshold=1, open_seconds=3600),
    )
    chat = {
        "model": THINKER,
        "messages": [{"role": "user", "content": "write the file"}],
        "tools": [WRITE_FILE],
    }
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(proxy.url + "/api/chat", json=chat) as resp,
        ):
            lines = (await resp.read()).splitlines()
        assert resp.status == 200
        assert orjson.loads(lines[0])["message"]["thinking"]
        assert "no data from backend" in orjson.loads(lines[-1])["error"]
        assert await scrape_failures(proxy.url, a.url) == (0, "closed")
        quick = generate(THINKER, think=False, options={"num_predict": 2})
        status, body = await post(proxy.url, "/api/generate", quick)
        assert status == 200 and orjson.loads(body)["done"] is True
    finally:
        proxy.stop()
        a.stop()


@pytest.mark.parametrize("name", ["qwen2.5:7b:cloud", "gpt-oss:120b-cloud", "x:8B-Cloud"])
async def test_a_cloud_model_out_of_reach_opens_no_circuit(
    servers: ServerThread, name: str
) -> None:
    """Ollama sends a request naming a model of its cloud (`:cloud`, `-cloud`) to
    ollama.com itself, and answers 502 when it cannot reach it (a machine without
    internet access, an outage there): that says nothing of the backend, and any
    client can name such a model, so no circuit counts it. The client gets that 502;
    the next requests are served."""
    backend = dataclasses.replace(FROZEN, models=(SHARED,))
    a, b = Emulator(servers, backend), Emulator(servers, backend)
    proxy = Proxy(
        servers,
        [a.url, b.url],
        health=Health(interval_seconds=3600, failure_threshold=1, open_seconds=3600),
    )
    try:
        chat = {"model": name, "messages": [{"role": "user", "content": "hi"}], "stream": False}
        for _ in range(2):
            status, answer = await post(proxy.url, "/api/chat", chat)
            assert status == 502 and "ollama.com" in orjson.loads(answer)["error"]
        await _counted_nothing_and_serves(proxy, a, b)
    finally:
        proxy.stop()
        a.stop()
        b.stop()


# What Ollama answers a non-streaming /v1/responses with the `web_search` tool when the
# model's search cannot reach ollama.com (WebSearchResponsesWriter.writeWebSearchError).
_SEARCH_FAILED = {
    "error": {
        "message": 'Post "https://ollama.com:443/api/web_search": dial tcp: lookup ollama.com',
        "type": "api_error",
        "param": None,
        "code": None,
    }
}


def _searching_app() -> web.Application:
    """A healthy Ollama on a machine without internet access: it lists SHARED, answers
    /v1/responses, and answers 502 to one that declares the `web_search` tool and to
    its web search and fetch routes, which it sends to ollama.com (a query "slow" it
    never answers, as when ollama.com takes the request and never answers it)."""

    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": SHARED, "model": SHARED}]})

    async def ps(request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    async def responses(request: web.Request) -> web.Response:
        body = await request.json()
        if any(tool.get("type") == "web_search" for tool in body.get("tools") or []):
            return web.json_response(_SEARCH_FAILED, status=502)
        return web.json_response({"object": "response", "status": "completed"})

    async def experimental(request: web.Request) -> web.Response:
        if (await request.json()).get("query") == "slow":
            await asyncio.Event().wait()  # ollama.com does not answer (until cancelled)
        # proxyCloudRequestWithPath: Go's client error, as a 502.
        path = "/api/" + request.path.rsplit("/", 1)[-1]
        message = f'Post "https://ollama.com:443{path}": dial tcp: lookup ollama.com'
        return web.json_response({"error": message}, status=502)

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/api/experimental/web_search", experimental)
    app.router.add_post("/api/experimental/web_fetch", experimental)
    return app


@contextmanager
def _searching_fleet(
    servers: ServerThread, count: int, timeouts: Timeouts | None = None
) -> Iterator[tuple[Proxy, list[str]]]:
    """A proxy in front of `count` backends whose ollama.com is out of reach
    (`_searching_app`), each circuit opened by one failure: the proxy and their URLs."""
    ports = [free_port() for _ in range(count)]
    runners = [servers.serve(_searching_app, port) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    health = Health(interval_seconds=3600, failure_threshold=1, open_seconds=3600)
    proxy = Proxy(servers, urls, health=health, timeouts=timeouts or Timeouts())
    try:
        yield proxy, urls
    finally:
        proxy.stop()
        for runner in runners:
            servers.stop(runner)


async def _circuits_closed_and_serving(proxy: Proxy, urls: list[str]) -> None:
    for url in urls:
        assert await scrape_failures(proxy.url, url) == (0, "closed")
    status, _ = await post(proxy.url, "/v1/responses", {"model": SHARED, "input": "hi"})
    assert status == 200


async def test_a_web_search_out_of_reach_opens_no_circuit(servers: ServerThread) -> None:
    """Ollama runs the Responses API's `web_search` tool itself, through ollama.com,
    and answers 502 when it cannot reach it (a GPU server without internet access):
    that says nothing of the backend, and any client can declare the tool, so no
    circuit counts it, as for a cloud model. The client gets that 502; the next
    requests are served."""
    with _searching_fleet(servers, 2) as (proxy, urls):
        search = {"model": SHARED, "input": "news today", "tools": [{"type": "web_search"}]}
        for _ in range(2):
            status, answer = await post(proxy.url, "/v1/responses", search)
            assert (status, orjson.loads(answer)) == (502, _SEARCH_FAILED)
        await _circuits_closed_and_serving(proxy, urls)


@pytest.mark.parametrize("path", ["/api/experimental/web_search", "/api/experimental/web_fetch"])
async def test_a_web_route_out_of_reach_opens_no_circuit(servers: ServerThread, path: str) -> None:
    """Ollama sends its web search and fetch routes to ollama.com and answers with what
    comes back, a 502 when it cannot reach it: that says nothing of the backend, and
    without keys any client may ask, so no circuit counts it (one request, retried on
    every backend, opened every circuit). The client gets that 502."""
    with _searching_fleet(servers, 2) as (proxy, urls):
        status, answer = await post(proxy.url, path, {"query": "news today"})
        assert status == 502 and "ollama.com" in orjson.loads(answer)["error"]
        await _circuits_closed_and_serving(proxy, urls)


async def test_ollama_coms_silence_on_a_web_route_opens_no_circuit(servers: ServerThread) -> None:
    """Ollama waits for ollama.com's answer to a web search as long as it takes (Go's
    default client has no timeout): past `idle_read_seconds` the client gets the 502,
    and no circuit counts a silence that is ollama.com's."""
    with _searching_fleet(servers, 1, Timeouts(idle_read_seconds=0.5)) as (proxy, urls):
        status, answer = await post(proxy.url, "/api/experimental/web_search", {"query": "slow"})
        assert status == 502 and b"no data from backend" in answer
        await _circuits_closed_and_serving(proxy, urls)


# A local name of a model that runs on ollama.com (`ollama cp gpt-oss:120b-cloud
# team-model`): /api/tags lists it with the host it runs on.
ALIAS = "team-model:latest"
# What Ollama answers for it when ollama.com answers 502 (ChatHandler relays the
# remote's status with its api.StatusError).
_REMOTE_FAILED = {"StatusCode": 502, "Status": "502 Bad Gateway", "error": "upstream error"}


def _aliasing_app() -> web.Application:
    """A healthy Ollama listing SHARED and ALIAS, during an outage of ollama.com."""

    async def tags(request: web.Request) -> web.Response:
        remote = {"remote_model": "gpt-oss:120b", "remote_host": "https://ollama.com:443"}
        models = [{"name": SHARED, "model": SHARED}, {"name": ALIAS, "model": ALIAS, **remote}]
        return web.json_response({"models": models})

    async def ps(request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        if body["model"] == ALIAS:
            return web.json_response(_REMOTE_FAILED, status=502)
        return web.json_response({"model": body["model"], "done": True})

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/chat", chat)
    return app


async def test_a_local_name_of_a_cloud_model_out_of_reach_opens_no_circuit(
    servers: ServerThread,
) -> None:
    """A model the backend lists with a `remote_host` runs there, not on the backend:
    Ollama relays that host's status, and its 502 says the host is out of reach, as
    for a name ending in `-cloud`. Any client can name the model, so no circuit
    counts it; the client gets that 502 and the next requests are served."""
    ports = (free_port(), free_port())
    runners = [servers.serve(_aliasing_app, port) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    proxy = Proxy(
        servers, urls, health=Health(interval_seconds=3600, failure_threshold=1, open_seconds=3600)
    )
    try:
        chat = {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "stream": False}
        for _ in range(2):
            status, answer = await post(proxy.url, "/api/chat", chat)
            assert (status, orjson.loads(answer)) == (502, _REMOTE_FAILED)
        for url in urls:
            assert await scrape_failures(proxy.url, url) == (0, "closed")
        status, _ = await post(proxy.url, "/api/chat", {**chat, "model": SHARED})
        assert status == 200
    finally:
        proxy.stop()
        for runner in runners:
            servers.stop(runner)


def _cloud_waiting_app() -> web.Application:
    """A healthy Ollama listing SHARED whose ollama.com takes a request and never
    answers it: `/api/show` and `/v1/models/<id>` of a cloud model (proxyCloudJSONRequest,
    cloudModelPathPassthroughMiddleware) wait on it, with Go's client, which has no
    timeout."""

    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": SHARED, "model": SHARED}]})

    async def ps(request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    async def waits(request: web.Request) -> web.Response:
        if request.method == "POST" and (await request.json())["model"] == SHARED:
            return web.json_response({"details": {"family": "qwen2"}, "capabilities": []})
        await asyncio.Event().wait()  # ollama.com does not answer (until cancelled)
        raise AssertionError("unreachable")

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"model": body["model"], "done": True})

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", waits)
    app.router.add_get("/v1/models/{model}", waits)
    app.router.add_post("/api/chat", chat)
    return app


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/show", {"model": "gpt-oss:120b-cloud"}),
        ("POST", "/api/show", {"model": "gpt-oss:120b:cloud"}),
        ("GET", "/v1/models/gpt-oss:120b-cloud", None),
    ],
)
async def test_ollama_coms_silence_describing_a_cloud_model_opens_no_circuit(
    servers: ServerThread, method: str, path: str, body: Any
) -> None:
    """Describing a model Ollama runs on ollama.com is sent there: its silence is
    ollama.com's, as its 502 is, not the backend's, and any client can name such a
    model. Past `idle_read_seconds` the client gets the 502; no circuit counts it."""
    port = free_port()
    runner = servers.serve(_cloud_waiting_app, port)
    url = f"http://127.0.0.1:{port}"
    health = Health(interval_seconds=3600, failure_threshold=1, open_seconds=3600)
    proxy = Proxy(servers, [url], health=health, timeouts=Timeouts(idle_read_seconds=0.5))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, proxy.url + path, json=body) as resp,
        ):
            assert resp.status == 502 and b"no data from backend" in await resp.read()
        assert await scrape_failures(proxy.url, url) == (0, "closed")
        chat = {"model": SHARED, "messages": [{"role": "user", "content": "hi"}], "stream": False}
        assert (await post(proxy.url, "/api/chat", chat))[0] == 200
    finally:
        proxy.stop()
        servers.stop(runner)


async def test_a_flapping_backend_never_loses_a_request(servers: ServerThread) -> None:
    """Backend A goes down and comes back on the same port, again and again, while
    clients keep sending streaming and non-streaming requests through the proxy.
    A's circuit opens while it is down and closes once it is back; every request
    either succeeds (on A, or on B after a failover) or gets Ollama's error shape, none
    hangs, and the proxy counted exactly the requests the clients sent."""
    from proxy.config_services import Usage

    a = Emulator(servers, dataclasses.replace(FROZEN, models=(SHARED,)))
    b = Emulator(servers, dataclasses.replace(FROZEN, models=(SHARED,)))
    # Loaded on both: the proxy then prefers A (the first) whenever it may use it.
    for emulator in (a, b):
        assert (await post(emulator.url, "/api/generate", generate(SHARED)))[0] == 200
    proxy = Proxy(
        servers,
        [a.url, b.url],
        health=Health(interval_seconds=0.1, failure_threshold=2, open_seconds=0.5, retries=2),
        timeouts=Timeouts(connect_seconds=5, idle_read_seconds=30),
        usage=Usage(file_mode="off"),
    )
    outcomes: dict[str, int] = {"ok": 0, "error": 0}
    unexpected: list[str] = []
    sent = 0
    flapping = True

    async def one_request(session: aiohttp.ClientSession, stream: bool) -> None:
        body = {"model": SHARED, "prompt": "hello", "stream": stream}
        async with (
            asyncio.timeout(120),  # "never hangs", with room for a very slow machine
            session.post(proxy.url + "/api/generate", json=body) as resp,
        ):
            raw = await resp.read()
        lines = [orjson.loads(line) for line in raw.splitlines()]
        last = lines[-1] if lines else {}
        if resp.status == 200 and last.get("done") is True:
            outcomes["ok"] += 1
        elif resp.status in (200, 502, 503) and set(last) == {"error"}:
            outcomes["error"] += 1  # Ollama's shape: the JSON body, or the last line
        else:
            unexpected.append(f"{resp.status} {raw[:200]!r}")

    async def client(stream: bool) -> None:
        nonlocal sent
        async with aiohttp.ClientSession() as session:
            while flapping:
                sent += 1
                try:
                    await one_request(session, stream)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    unexpected.append(repr(exc))

    async def circuit_becomes(state: str) -> None:
        deadline = time.monotonic() + 60
        while await health_circuit(proxy.url, a.url) != state:
            assert time.monotonic() < deadline, f"A's circuit never became {state}"
            await asyncio.sleep(0.02)

    async def a_serves() -> None:
        before = a.state.requests["/api/generate"]
        deadline = time.monotonic() + 60
        while a.state.requests["/api/generate"] == before:
            assert time.monotonic() < deadline, "A never got a request while up"
            await asyncio.sleep(0.02)

    clients = [asyncio.create_task(client(stream)) for stream in (True, False, True, False)]
    try:
        for _ in range(3):
            await a_serves()
            await asyncio.to_thread(a.stop)
            await circuit_becomes("open")
            await asyncio.to_thread(a.restart)
            await circuit_becomes("closed")
        await a_serves()
        flapping = False
        await asyncio.gather(*clients)
        assert unexpected == []
        assert outcomes["ok"] + outcomes["error"] == sent
        assert outcomes["ok"] > 0

        async def counted() -> float:
            async with (
                aiohttp.ClientSession() as session,
                session.get(proxy.url + "/metrics") as resp,
            ):
                text = await resp.text()
            return sum(
                s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "autoroute_requests_total" and s.labels["route"] == "/api/generate"
            )

        # The proxy's own count: each request the clients sent, once (it is updated
        # after the answer is written, so it may trail the clients briefly).
        assert await wait_until_async(counted, sent)
    finally:
        flapping = False
        for task in clients:
            task.cancel()
        proxy.stop()
        a.stop()
        b.stop()


async def wait_until_async(value: Any, expected: float, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await value() == expected:
            return True
        await asyncio.sleep(0.05)
    return False


# Options Ollama cannot decode into api.Options: scheduleRunner's opts.FromMap fails
# and handleScheduleError answers 500 with the message, before any stream starts.
BAD_OPTIONS = {"num_ctx": "x"}


async def test_a_bad_request_gets_the_backends_own_500_and_opens_no_circuit(pair: Pair) -> None:
    """A 500 that the request itself causes is the backend's verdict on the request:
    retried on the other backend that has the model, then relayed as it came; no
    circuit counts it, so other clients' requests keep being served on both."""
    bad = generate(SHARED, options=BAD_OPTIONS)
    direct = await post(pair.a.url, "/api/generate", bad)
    assert direct[0] == 500
    assert orjson.loads(direct[1]) == {"error": 'option "num_ctx" must be of type integer'}
    for _ in range(4):  # more than the failure threshold (2)
        assert await post(pair.proxy.url, "/api/generate", bad) == direct
    for emulator in (pair.a, pair.b):
        assert await scrape_failures(pair.proxy.url, emulator.url) == (0, "closed")
    before = (pair.a.state.requests["/api/generate"], pair.b.state.requests["/api/generate"])
    for model in (ONLY_A, ONLY_B, SHARED, SHARED):
        status, body = await post(pair.proxy.url, "/api/generate", generate(model))
        assert status == 200 and orjson.loads(body)["done"] is True
    after = (pair.a.state.requests["/api/generate"], pair.b.state.requests["/api/generate"])
    assert after[0] > before[0] and after[1] > before[1]  # both still in use


async def test_a_retry_goes_only_to_a_backend_that_has_the_model(pair: Pair) -> None:
    """A request for a model only A has, which A answers 500: never retried on B
    (whose 404 would hide A's answer); the client gets A's own answer."""
    bad = generate(ONLY_A, options=BAD_OPTIONS)
    direct = await post(pair.a.url, "/api/generate", bad)
    reached_b = pair.b.state.requests["/api/generate"]
    for _ in range(3):
        assert await post(pair.proxy.url, "/api/generate", bad) == direct
    assert pair.b.state.requests["/api/generate"] == reached_b
    assert await scrape_failures(pair.proxy.url, pair.a.url) == (0, "closed")


async def test_after_the_retries_the_client_gets_the_last_backends_answer(pair: Pair) -> None:
    """Both backends that have the model answer 500: the client gets the last one's
    status and body, not a 502/503 of the proxy's own."""
    pair.a.state.fault = "error500"
    pair.b.state.fault = "error500"
    direct = await post(pair.b.url, "/api/generate", generate(SHARED))
    for _ in range(3):
        assert await post(pair.proxy.url, "/api/generate", generate(SHARED)) == direct
    pair.a.state.fault = pair.b.state.fault = "none"
    status, _ = await post(pair.proxy.url, "/api/generate", generate(SHARED))
    assert status == 200


@pytest.fixture
def trio(servers: ServerThread) -> Iterator[tuple[list[Emulator], Proxy]]:
    """Three backends with SHARED, whose runner dies on a prompt holding "CRASH", behind
    a proxy with the default retries (2)."""
    crashing = dataclasses.replace(FROZEN, models=(SHARED,), crash_on="CRASH")
    emulators = [Emulator(servers, crashing) for _ in range(3)]
    proxy = Proxy(servers, [e.url for e in emulators], health=Health(interval_seconds=3600))
    yield emulators, proxy
    proxy.stop()
    for emulator in emulators:
        emulator.stop()


async def test_a_request_whose_answer_may_be_its_own_fault_is_tried_on_two_backends_at_most(
    trio: tuple[list[Emulator], Proxy],
) -> None:
    """A 500 is Ollama's answer to a request it could not run, often for what the
    request holds: an input its runner dies on kills every backend's runner it reaches
    (and every stream that runner was serving). One retry on another backend covers a
    backend's own trouble (a model it has no memory to load); the client then gets that
    answer, and the request reaches no third backend."""
    emulators, proxy = trio
    poison = generate(SHARED, prompt="CRASH")
    direct = await post(emulators[0].url, "/api/generate", poison)
    assert direct[0] == 500
    emulators[0].state.crashes = 0
    assert await post(proxy.url, "/api/generate", poison) == direct
    assert sum(e.state.crashes for e in emulators) == 2
    status, body = await post(proxy.url, "/api/generate", generate(SHARED))
    assert status == 200 and orjson.loads(body)["done"] is True


async def test_a_backend_that_breaks_its_answer_is_retried_once(
    trio: tuple[list[Emulator], Proxy],
) -> None:
    """An answer that is not HTTP (or a connection dropped before one) came from a
    backend that had the request: the request may be what broke it, so it goes to one
    other backend, not every one."""
    emulators, proxy = trio
    for emulator in emulators:
        emulator.state.fault = "garbage"
    status, _ = await post(proxy.url, "/api/generate", generate(SHARED))
    assert status == 502
    assert sum(e.state.requests["/api/generate"] for e in emulators) == 2


async def test_backends_that_cannot_be_reached_are_each_tried(
    trio: tuple[list[Emulator], Proxy],
) -> None:
    """Not so a backend that cannot be reached: the request never got there, so it goes
    on to every backend the retries allow."""
    emulators, proxy = trio
    emulators[0].stop()
    emulators[1].stop()
    status, body = await post(proxy.url, "/api/generate", generate(SHARED))
    assert status == 200 and orjson.loads(body)["done"] is True


async def _trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A backend that answers every request with a head and then one byte of body at a
    time, forever, each well within the idle timeout: an answer that never ends."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        while True:
            writer.write(b"1\r\n \r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def _listed(path: str, body: bytes) -> set[str]:
    doc = orjson.loads(body)
    return {m.get("id") or m["name"] for m in doc["data" if path == "/v1/models" else "models"]}


@pytest.mark.parametrize("path", ["/api/tags", "/api/ps", "/v1/models"])
async def test_a_list_one_backend_never_ends_is_answered_without_it(
    servers: ServerThread, emulator: Emulator, path: str
) -> None:
    """A merged list waits for each backend about as long as a health check does
    (`BackendPool.refresh_seconds`), not for as long as the backend keeps sending: one
    backend whose answer never ends (or that never answers, up to `idle_read_seconds`)
    held every client's list with it. The others' models are listed without it."""
    trickler = await asyncio.start_server(_trickle, "127.0.0.1", 0)
    port = trickler.sockets[0].getsockname()[1]
    # Its circuit stays closed, as before it opens and while it is half-open.
    proxy = Proxy(
        servers,
        [emulator.url, f"http://127.0.0.1:{port}"],
        health=Health(interval_seconds=1, failure_threshold=1000),
    )
    try:
        async with aiohttp.ClientSession() as session:
            listed = asyncio.ensure_future(session.get(proxy.url + path))
            # A guard against a hang, far beyond the second the bound allows.
            done, _ = await asyncio.wait([listed], timeout=30)
            assert done, "the merged list never came"
            async with listed.result() as resp:
                assert resp.status == 200
                names = _listed(path, await resp.read())
            async with session.get(emulator.url + path) as resp:
                assert _listed(path, await resp.read()) <= names
    finally:
        proxy.stop()
        trickler.close()


def _lists_app(tags_body: dict[str, Any], tags_status: int = 200) -> web.Application:
    """A backend that answers its model lists only: `/api/tags` as given, `/api/ps`
    an empty list."""

    async def tags(request: web.Request) -> web.Response:
        return web.json_response(tags_body, status=tags_status)

    async def ps(request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    return app


def _tags_failing_app() -> web.Application:
    """A backend whose health check fails: `/api/tags` answers 500 while `/api/ps`
    answers, so only the missing model list can make it unhealthy."""
    return _lists_app({"error": "model store unreadable"}, 500)


async def test_a_backend_without_api_ps_is_healthy_and_serves(servers: ServerThread) -> None:
    """An older Ollama (or an Ollama-compatible server) answers 404 to `/api/ps`: it is
    healthy while `/api/tags` answers, its loaded set is empty, and requests reach it;
    a backend whose `/api/tags` fails is unhealthy all the same."""
    old = Emulator(servers, dataclasses.replace(FROZEN, models=(ONLY_A,), ps_missing=True))
    broken_port = free_port()
    broken = servers.serve(_tags_failing_app, broken_port)
    broken_url = f"http://127.0.0.1:{broken_port}"
    proxy = Proxy(
        servers, [old.url, broken_url], health=Health(interval_seconds=60, failure_threshold=1)
    )
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(old.url + "/api/ps") as resp:
                assert resp.status == 404  # the emulator plays the older server
            for _ in range(2):  # each refresh keeps the verdict, including after a load
                status, body = await post(proxy.url, "/api/generate", generate(ONLY_A))
                assert status == 200 and orjson.loads(body)["done"] is True
                status, body = await post(
                    proxy.url,
                    "/api/chat",
                    {
                        "model": ONLY_A,
                        "messages": [{"role": "user", "content": "hi"}],
                        "stream": False,
                    },
                )
                assert status == 200 and orjson.loads(body)["done"] is True
                proxy.thread.call(proxy.app[APP_KEY].backends.refresh_all)
            async with session.get(proxy.url + "/api/autoroute/health") as resp:
                health = await resp.json()
        assert health["status"] == "degraded"
        by_url = {b["url"]: b for b in health["backends"]}
        assert by_url[old.url]["circuit"] == "closed"
        assert by_url[old.url]["error"] is None
        assert by_url[old.url]["models"] == [ONLY_A]
        assert by_url[old.url]["loaded"] == []
        assert by_url[broken_url]["circuit"] == "open"
        assert "/api/tags answered 500" in by_url[broken_url]["error"]
        assert old.state.requests["/api/generate"] == 2
    finally:
        proxy.stop()
        servers.stop(broken)
        old.stop()


async def test_the_proxys_own_requests_are_plain_heads_on_one_kept_alive_connection() -> None:
    """`get_json` (health checks, merged lists, `show`): the request heads as sent, a
    chunked answer read whole without its framing, a non-200 answer a `StatusError`
    with its status, and every exchange on the one connection kept alive."""
    received: list[bytes] = []
    connections = 0
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n4\r\n{"mo\r\nb\r\ndels": [1]}\r\n0\r\n\r\n',
        b'HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{"show": true}',
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}",
    ]

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            received.append(head + await reader.readexactly(length))
            writer.write(answers.pop(0))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = BackendPool(Config(backends=(Backend(url=f"http://127.0.0.1:{port}"),)))
    state = pool.states[0]
    try:
        assert await pool.get_json(state, "/api/tags") == {"models": [1]}
        assert await pool.get_json(state, "/api/show", {"model": "m"}) == {"show": True}
        with pytest.raises(StatusError) as caught:
            await pool.get_json(state, "/api/ps")
        assert caught.value.status == 404
    finally:
        await pool.stop()
        server.close()
    host = f"127.0.0.1:{port}".encode()
    assert received == [
        b"GET /api/tags HTTP/1.1\r\nHost: %b\r\n\r\n" % host,
        b"POST /api/show HTTP/1.1\r\nHost: %b\r\nContent-Type: application/json\r\n"
        b'Content-Length: 13\r\n\r\n{"model":"m"}' % host,
        b"GET /api/ps HTTP/1.1\r\nHost: %b\r\n\r\n" % host,
    ]
    assert connections == 1


def _odd_names_app() -> web.Application:
    """A backend whose `/api/tags` lists, beside a real model, names no Ollama accepts:
    one with a line break and one of 100 KB."""
    names = [SHARED, "evil\r\nSet-Cookie: stolen=1", "x" * 100_000]
    return _lists_app({"models": [{"name": n, "model": n} for n in names]})


async def test_a_listed_name_no_ollama_accepts_is_no_candidate(servers: ServerThread) -> None:
    """What a backend lists becomes a header when `auto` chooses it (X-Autoroute-Model):
    only a name Ollama could accept is taken as one of its models."""
    port = free_port()
    backend = servers.serve(_odd_names_app, port)
    proxy = Proxy(servers, [f"http://127.0.0.1:{port}"])
    try:
        proxy.thread.call(proxy.app[APP_KEY].backends.refresh_all)
        (state,) = proxy.app[APP_KEY].backends.states
        assert state.models == frozenset({SHARED})
        assert [t["name"] for t in state.tags] == [SHARED]
    finally:
        proxy.stop()
        servers.stop(backend)


def _go_unix(stamp: str) -> int:
    """time.Time.Unix() of an RFC 3339 time as Ollama writes it."""
    return math.floor(datetime.datetime.fromisoformat(stamp).timestamp())


async def test_merged_lists_are_in_ollamas_order(pair: Pair) -> None:
    """One Ollama lists its models most recently modified first
    (server/model_list_cache.go sortListModelResponses), `/v1/models` in that order
    (openai.ToListCompletion), and its running models longest time remaining first
    (PsHandler): the fleet's merged lists are in that order too, whatever backend each
    model comes from (`auto`'s entries stay at the end of the list)."""
    # Loaded on A first with the shorter keep_alive: A's backend lists it first, the
    # fleet's order puts B's (longer remaining) first.
    await post(pair.a.url, "/api/generate", generate(ONLY_A, keep_alive="1m"))
    await post(pair.b.url, "/api/generate", generate(ONLY_B, keep_alive="30m"))
    await post(pair.a.url, "/api/generate", generate(SHARED, keep_alive="10m"))
    async with aiohttp.ClientSession() as session:
        async with session.get(pair.proxy.url + "/api/tags") as resp:
            models = [m for m in (await resp.json())["models"] if m["name"] not in AUTO_NAMES]
        async with session.get(pair.proxy.url + "/v1/models") as resp:
            data = [m for m in (await resp.json())["data"] if m["id"] not in AUTO_NAMES]
        async with session.get(pair.proxy.url + "/api/ps") as resp:
            running = (await resp.json())["models"]
    by_modified = sorted(models, key=lambda m: -_go_unix(m["modified_at"]))
    assert [m["name"] for m in models] == [m["name"] for m in by_modified]
    assert [m["id"] for m in data] == [m["model"] for m in by_modified]
    assert [m["name"] for m in running] == [ONLY_B, SHARED, ONLY_A]


def _endless_pull_app(label: str, pulling: set[str], left: set[str]) -> web.Application:
    """A backend whose `/api/pull` streams progress until its client leaves, as a
    download of a large model does: `pulling` holds `label` while it runs, `left` once
    the client went away."""

    async def pull(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        pulling.add(label)
        try:
            while True:
                await resp.write(b'{"status":"pulling 1234","total":100,"completed":1}\n')
                await asyncio.sleep(0.02)
        except (asyncio.CancelledError, ConnectionError):
            left.add(label)
            raise

    app = _lists_app({"models": [{"name": SHARED, "model": SHARED, "digest": "d1", "size": 1}]})
    app.router.add_post("/api/pull", pull)
    return app


async def test_a_pull_its_client_leaves_stops_on_every_backend(servers: ServerThread) -> None:
    """With `admin_target: all` a pull goes to every backend; a client that leaves
    (Ctrl-C on `ollama pull`) stops it on each of them, as Ollama stops a pull whose
    client left, not only on the one whose progress it read."""
    pulling: set[str] = set()
    left: set[str] = set()
    ports = [free_port(), free_port()]
    runners = [
        servers.serve(functools.partial(_endless_pull_app, label, pulling, left), port)
        for label, port in zip("ab", ports, strict=True)
    ]
    proxy = Proxy(servers, [f"http://127.0.0.1:{port}" for port in ports])
    try:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(proxy.url + "/api/pull", json={"model": SHARED})
            assert orjson.loads(await resp.content.readline())["status"].startswith("pulling")
            assert await wait_until(lambda: pulling == {"a", "b"})
            resp.close()  # the client leaves mid-download
        assert await wait_until(lambda: left == {"a", "b"})
    finally:
        proxy.stop()
        for runner in runners:
            servers.stop(runner)


async def _one_request_per_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A backend that keeps a connection alive after its answer, then closes it when
    the next request comes, unanswered: a keep-alive that timed out as the request
    arrived (a server's idle timeout, a load balancer in front of Ollama)."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        tags = orjson.dumps(
            {"models": [{"name": SHARED, "model": SHARED, "digest": "d1", "size": 1}]}
        )
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(tags), tags)
        )
        await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


async def test_a_kept_alive_connection_closed_as_a_request_goes_out_fails_no_check(
    servers: ServerThread,
) -> None:
    """A pooled connection the backend closes as the proxy's own request goes out
    (health check, merged list) says nothing of the backend: that request is sent again
    on a new connection, as a client's is, rather than counted against the backend or
    answered with a 502."""
    port = free_port()

    async def listen() -> asyncio.Server:
        return await asyncio.start_server(_one_request_per_connection, "127.0.0.1", port)

    server = servers.call(listen)
    url = f"http://127.0.0.1:{port}"
    proxy = Proxy(servers, [url], health=Health(interval_seconds=60, failure_threshold=2))
    pool = proxy.app[APP_KEY].backends
    try:
        for _ in range(3):  # each check after the first finds its connections kept alive
            proxy.thread.call(pool.refresh_all)
            assert await scrape_failures(proxy.url, url) == (0, "closed")
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.get(proxy.url + "/api/tags") as resp:
                    assert resp.status == 200
                    names = [m["name"] for m in (await resp.json())["models"]]
                    assert names == [SHARED, *AUTO_NAMES]
    finally:
        proxy.stop()
        servers.call(lambda: _closed(server))


async def _closed(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


def _messages_cut_app(model: str) -> web.Application:
    """A backend listing `model` whose `/v1/messages` streams fail after their first
    event: the connection drops between two chunks, as a runner that dies does."""

    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        start = {"type": "message_start", "message": {"id": "msg_1", "type": "message"}}
        await resp.write(b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\n")
        await asyncio.sleep(0.05)  # the chunk goes out whole before the drop
        assert request.transport is not None
        request.transport.abort()
        return resp

    app = _lists_app({"models": [{"name": model, "model": model, "digest": "d1", "size": 1}]})
    app.router.add_post("/v1/messages", messages)
    return app


async def test_a_messages_stream_that_fails_ends_with_anthropics_error_event(
    servers: ServerThread,
) -> None:
    """A `/v1/messages` stream cut by its backend ends with Anthropic's `event: error`
    (the shape of the route's other errors), the one an Anthropic client raises on: a
    line in OpenAI's shape, with no event name, is one it skips, and the client would
    take the cut stream for a whole one."""
    port = free_port()
    cut = servers.serve(lambda: _messages_cut_app(SHARED), port)
    proxy = Proxy(servers, [f"http://127.0.0.1:{port}"])
    body = {
        "model": SHARED,
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + "/v1/messages", json=body) as resp:
                assert resp.status == 200
                text = await resp.read()
    finally:
        proxy.stop()
        servers.stop(cut)
    events = [event.split(b"\n") for event in text.strip(b"\n").split(b"\n\n")]
    assert events[0][0] == b"event: message_start"
    name, data = events[-1]
    assert name == b"event: error"
    error = orjson.loads(data.removeprefix(b"data: "))
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "connection closed by backend" in error["error"]["message"]


def _slow_admin_app(label: str, done: list[str]) -> web.Application:
    """A backend whose pull, push and create answer whole (`stream: false`) once their
    work is done, after a silence (a download, an upload, a quantization); `done` gets
    `label` for each that ran to its end."""

    async def whole_after_work(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(1.0)
        done.append(label)
        return web.json_response({"status": "success"})

    app = _lists_app({"models": [{"name": SHARED, "model": SHARED, "digest": "d1", "size": 1}]})
    for path in ("/api/pull", "/api/push", "/api/create"):
        app.router.add_post(path, whole_after_work)
    return app


@pytest.mark.parametrize("path", ["/api/pull", "/api/push", "/api/create"])
async def test_a_pull_asked_whole_waits_for_its_work_as_ollama_does(
    servers: ServerThread, path: str
) -> None:
    """A pull, push or create asked with `stream: false` is answered once its work is
    done (Ollama's waitForStream), minutes for a large model, with nothing sent
    before: `idle_read_seconds` does not cut it (which would also abort the download,
    and count against the backend's circuit), on the backend that answers the client
    nor on those that run it in the background (`admin_target: all`)."""
    done: list[str] = []
    ports = [free_port(), free_port()]
    runners = [
        servers.serve(functools.partial(_slow_admin_app, label, done), port)
        for label, port in zip("ab", ports, strict=True)
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    proxy = Proxy(
        servers,
        urls,
        timeouts=Timeouts(idle_read_seconds=0.3),
        health=Health(interval_seconds=60, failure_threshold=1),
    )
    body = {"model": "mine", "stream": False}
    if path == "/api/create":
        body["from"] = SHARED
    try:
        status, answer = await post(proxy.url, path, body)
        assert status == 200 and orjson.loads(answer) == {"status": "success"}
        # A create goes to one backend; a pull or push to each.
        ran = 1 if path == "/api/create" else 2
        assert await wait_until(lambda: len(done) == ran)
        for url in urls:
            assert await scrape_failures(proxy.url, url) == (0, "closed")
    finally:
        proxy.stop()
        for runner in runners:
            servers.stop(runner)


def _huge_tags_app(size: int) -> web.Application:
    """A backend whose `/api/tags` is a chunked document of some `size` bytes: a broken
    or foreign server can send such a document, or one without an end."""

    async def tags(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        model = SHARED.encode()
        await resp.write(b'{"models":[{"name":"%b","model":"%b"}],"x":"' % (model, model))
        for _ in range(size >> 16):
            await resp.write(b"a" * (1 << 16))
        await resp.write(b'"}')
        return resp

    async def ps(request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    return app


async def test_a_document_over_the_bound_from_a_backend_is_refused_not_held(
    servers: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documents the proxy reads itself (model lists, `show`) are held whole in
    memory, so they are bounded: a backend sending one larger than
    `upstream.MAX_DOCUMENT_BYTES` (or one without an end) fails that request, as an
    answer that is no HTTP does, rather than growing the proxy's memory until it is
    killed with every client's stream. (The bound is made small here.)"""
    port = free_port()
    runner = servers.serve(lambda: _huge_tags_app(4 << 20), port)
    proxy = Proxy(servers, [f"http://127.0.0.1:{port}"], health=Health(interval_seconds=60))
    try:
        async with aiohttp.ClientSession() as session:
            monkeypatch.setattr(upstream, "MAX_DOCUMENT_BYTES", 8 << 20)
            async with session.get(proxy.url + "/api/tags") as resp:
                assert resp.status == 200  # within the bound: the list
                assert SHARED in [m["name"] for m in (await resp.json())["models"]]
            monkeypatch.setattr(upstream, "MAX_DOCUMENT_BYTES", 1 << 20)
            async with session.get(proxy.url + "/api/tags") as resp:
                assert resp.status == 502
                assert (await resp.json())["error"].startswith("no backend answered")
    finally:
        proxy.stop()
        servers.stop(runner)


async def test_a_model_whose_backends_are_all_down_is_503_not_anothers_404(pair: Pair) -> None:
    """A model only a backend whose circuit is open lists is not asked of another, which
    would answer that it has no such model (a 404, on which `ollama run` pulls it there):
    it is unavailable for now, Ollama's 503 naming why, the same before and after the
    circuit opens."""
    pair.a.stop()
    before = pair.b.state.requests["/api/generate"]
    for _ in range(4):
        status, body = await post(pair.proxy.url, "/api/generate", generate(ONLY_A))
        assert status == 503, body
        assert "no healthy backend" in orjson.loads(body)["error"]
    assert pair.b.state.requests["/api/generate"] == before
    status, body = await post(pair.proxy.url, "/api/generate", generate(ONLY_B))
    assert status == 200, body


async def test_a_pull_of_a_model_only_a_down_backend_lists_goes_to_another(pair: Pair) -> None:
    """A pull fetches its model: one only an unusable backend lists is pulled on a
    usable one, not refused as unavailable."""
    pair.a.stop()
    for _ in range(3):
        await post(pair.proxy.url, "/api/generate", generate(ONLY_A))  # opens A's circuit
    status, body = await post(pair.proxy.url, "/api/pull", {"model": ONLY_A, "stream": False})
    assert status == 200, body
    assert ONLY_A in pair.b.state.models


async def _asked(url: str, path: str, body: Any) -> tuple[int, str]:
    """A request whose answer comes whole (a GET without `body`): its status and
    request id."""
    async with (
        aiohttp.ClientSession() as session,
        session.request("GET" if body is None else "POST", url + path, json=body) as resp,
    ):
        await resp.read()
        return resp.status, resp.headers["X-Request-Id"]


@asynccontextmanager
async def _refused_backend(
    servers: ServerThread, **sections: Any
) -> AsyncIterator[tuple[Emulator, Proxy, str]]:
    """A backend of SHARED alone whose Ollama stopped, behind a proxy (with `sections`)
    that runs no background health check, so that only requests bring it back: its
    circuit opened by a generate's 503, whose request id comes with the two."""
    a = Emulator(servers, dataclasses.replace(FROZEN, models=(SHARED,)))
    proxy = Proxy(
        servers,
        [a.url],
        health=Health(interval_seconds=3600, failure_threshold=1, open_seconds=3600),
        **sections,
    )
    try:
        a.stop()
        status, refused = await _asked(proxy.url, "/api/generate", generate(SHARED))
        assert status == 503
        assert await health_circuit(proxy.url, a.url) == "open"
        yield a, proxy, refused
    finally:
        proxy.stop()
        a.stop()


@pytest.mark.parametrize(
    ("path", "body", "recorded"),
    [
        ("/api/generate", generate(SHARED), True),
        ("/api/chat", {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}, True),
        # Neither runs a model: no usage event.
        ("/api/pull", {"model": SHARED, "stream": False}, False),
        ("/api/tags", None, False),  # with `auto`'s entries: a merged list
    ],
    ids=["named", "auto", "pull", "list"],
)
async def test_a_backend_restarted_on_its_port_serves_before_its_next_check(
    servers: ServerThread, tmp_path: Path, path: str, body: Any, recorded: bool
) -> None:
    """A backend whose Ollama stopped, opening its circuit, and listens again on the same
    port serves the next requests, though no health check has run since: with no usable
    backend to take them, the one whose host refused its connect is checked again at
    once, one check for all the requests that wait on it, rather than answered with the
    proxy's own 503 until the next check. Each request that runs a model leaves one
    usage event."""
    usage = file_usage(tmp_path)
    async with _refused_backend(servers, usage=usage) as (a, proxy, refused):
        a.restart()
        checks = a.state.requests["/api/ps"]  # which each check asks, and none of these
        answers = await asyncio.gather(*(_asked(proxy.url, path, body) for _ in range(8)))
        assert [status for status, _ in answers] == [200] * 8
        # One check for the 8; and but for the list, the one refresh their running the
        # model, which the check did not list loaded, brings forward (`BackendPool.ran`),
        # or the pull's (`BackendPool.changed`).
        listed = checks + 1 + (path != "/api/tags")
        assert await wait_until(lambda: a.state.requests["/api/ps"] >= listed)
        await asyncio.sleep(1.5)  # a second refresh would come a second after it
        assert a.state.requests["/api/ps"] == listed
        assert await health_circuit(proxy.url, a.url) == "closed"
        ids = [rid for _, rid in answers] if recorded else []
        events = await events_of(usage, refused, *ids)
        assert [e["outcome"]["status"] for e in events] == [503] + [200] * len(ids)


async def test_a_restarted_backend_is_checked_only_for_what_no_usable_one_has(
    pair: Pair,
) -> None:
    """While a usable backend has the model, a backend whose circuit is open stays out of
    the way (no request, no early check): the usable one serves. A model only the
    restarted backend has is served by it at once."""
    pair.a.stop()
    for _ in range(2):  # the pair's threshold: A's circuit opens
        status, _ = await post(pair.proxy.url, "/api/generate", generate(ONLY_A))
        assert status == 503
    assert await health_circuit(pair.proxy.url, pair.a.url) == "open"
    pair.a.restart()
    checks, served = pair.a.state.requests["/api/tags"], pair.a.state.requests["/api/generate"]
    for _ in range(3):
        status, _ = await post(pair.proxy.url, "/api/generate", generate(SHARED))
        assert status == 200
    assert pair.a.state.requests["/api/tags"] == checks
    assert pair.a.state.requests["/api/generate"] == served
    assert await health_circuit(pair.proxy.url, pair.a.url) == "open"
    status, body = await post(pair.proxy.url, "/api/generate", generate(ONLY_A))
    assert status == 200, body
    assert pair.a.state.requests["/api/generate"] == served + 1


async def test_requests_that_find_a_down_backend_share_one_check_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Requests that arrive together while the only backend's host refuses connects wait
    on one check of it, not one each (a flood does not multiply them), and each learns
    it is still down."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    health = Health(interval_seconds=3600, failure_threshold=1, open_seconds=3600)
    pool = BackendPool(Config(backends=(Backend(url=url),), health=health))
    state = pool.states[0]
    checks = where_called(monkeypatch, pool, "refresh")
    try:
        await pool.refresh_all()
        assert state.refused
        assert state.breaker.state(asyncio.get_running_loop().time()) == "open"
        assert await asyncio.gather(*(pool.recheck(SHARED) for _ in range(8))) == [False] * 8
        assert len(checks) == 2
        assert state.refused and state.last_error.startswith(f"connect to {url[7:]}")
    finally:
        await pool.stop()


async def test_readiness_sees_a_backend_restarted_on_its_port_before_its_next_check(
    servers: ServerThread,
) -> None:
    """`/api/autoroute/ready` with no usable backend has the ones whose host refused
    their connects checked again at once, one check for all the probes that wait on it:
    a probe after a backend's restart finds it ready, not the proxy's 503 until the
    next periodic check; one while it is still down is the 503."""
    async with _refused_backend(servers) as (a, proxy, _):
        status, _ = await _asked(proxy.url, "/api/autoroute/ready", None)
        assert status == 503
        a.restart()
        checks = a.state.requests["/api/ps"]  # which each check asks
        answers = await asyncio.gather(
            *(_asked(proxy.url, "/api/autoroute/ready", None) for _ in range(8))
        )
        assert [status for status, _ in answers] == [200] * 8
        assert a.state.requests["/api/ps"] == checks + 1
        assert await health_circuit(proxy.url, a.url) == "closed"


async def test_a_load_of_auto_is_the_fleets_answer_as_its_chat_is(
    servers: ServerThread,
) -> None:
    """`ollama run auto` loads before its first chat, and Ollama that is not running
    answers no load. With no usable backend, a load of `auto` is the 503 its chat would
    be, after the backends whose host refused their connects are checked again at once;
    one restarted on its port since answers the load, not the proxy's 503 until the next
    periodic check."""
    async with _refused_backend(servers) as (a, proxy, _):
        for path in ("/api/generate", "/api/chat"):
            status, body = await post(proxy.url, path, {"model": "auto"})
            assert status == 503 and b"no healthy backend" in body, body
        a.restart()
        status, body = await post(proxy.url, "/api/chat", {"model": "auto"})
        assert status == 200 and orjson.loads(body)["done_reason"] == "load", body
        assert await health_circuit(proxy.url, a.url) == "closed"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}),
        ("/api/generate", {"model": "auto"}),  # a load
        (
            "/api/autoroute/explain",
            {"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        ),
    ],
    ids=["chat", "load", "explain"],
)
async def test_auto_checks_again_only_the_backends_down_that_list_a_model_it_could_choose(
    servers: ServerThread, path: str, body: dict[str, Any]
) -> None:
    """With no usable backend, `auto` checks again at once the backends down whose host
    refused their connects that list a model the profile could choose, as a request
    naming a model checks those that list it: one back on its port that lists only an
    embedding model could not take the request, and checking it only holds the answer
    (the 503 here, the cloud's where one stands in). It waits for its periodic check."""
    embedder = Emulator(servers, dataclasses.replace(FROZEN, models=("nomic-embed-text:latest",)))
    chatter = Emulator(servers, dataclasses.replace(FROZEN, models=(SHARED,)))
    proxy = Proxy(
        servers,
        [embedder.url, chatter.url],
        health=Health(interval_seconds=3600, failure_threshold=1, open_seconds=3600),
    )
    try:
        embedder.stop()
        chatter.stop()
        proxy.thread.call(proxy.app[APP_KEY].backends.refresh_all)
        embedder.restart()
        checks = embedder.state.requests["/api/ps"]  # which each check asks
        status, answer = await post(proxy.url, path, body)
        assert status == 503 and b"no healthy backend" in answer, answer
        assert embedder.state.requests["/api/ps"] == checks
        assert await health_circuit(proxy.url, embedder.url) == "open"
        # Back on its port, the backend that lists the profile's model is checked.
        chatter.restart()
        status, answer = await post(proxy.url, path, body)
        assert status == 200, answer
        assert await health_circuit(proxy.url, chatter.url) == "closed"
    finally:
        proxy.stop()
        embedder.stop()
        chatter.stop()


@pytest.mark.parametrize(
    ("body", "chosen", "ranked"),
    [
        ({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}, SHARED, [SHARED]),
        # A generate without a prompt: a load, which the route answers without a model.
        ({"model": "auto"}, None, []),
    ],
    ids=["chat", "load"],
)
async def test_explain_says_what_auto_answers_with_a_backend_restarted_on_its_port(
    servers: ServerThread, body: dict[str, Any], chosen: str | None, ranked: list[str]
) -> None:
    """Explain says what `auto`'s route would answer: with no usable backend, after the
    same check of the backends whose host refused their connects as the route has.
    While the only backend is down, it is the 503 the route would be; once it is back
    on its port, its model is ranked for a chat, and a load is the route's "load", not
    the proxy's 503 until the next periodic check."""
    async with _refused_backend(servers) as (a, proxy, _):
        status, answer = await post(proxy.url, "/api/autoroute/explain", body)
        assert status == 503 and b"no healthy backend" in answer, answer
        a.restart()
        status, answer = await post(proxy.url, "/api/autoroute/explain", body)
        assert status == 200, answer
        explained = orjson.loads(answer)
        assert explained["model"] == chosen
        assert [c["model"] for c in explained["ranking"]] == ranked
        assert chosen is not None or explained["answer"]["done_reason"] == "load"
        assert await health_circuit(proxy.url, a.url) == "closed"


async def _load_seconds(url: str, model: str) -> float:
    """The load `auto` charges `model` now (explain's ranking)."""
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/api/autoroute/explain", json=body) as resp,
    ):
        ranking = (await resp.json())["ranking"]
    return float(next(c["load_seconds"] for c in ranking if c["model"] == model))


async def test_a_model_that_ran_is_known_loaded_before_the_next_health_check(
    servers: ServerThread,
) -> None:
    """Ollama keeps a model it ran loaded (its keep_alive), and may have evicted another
    for it: a model the backend's last /api/ps did not list loaded that answers has the
    backend listed again early, so that `auto` stops charging it a load within about a
    second rather than at the next health check (an hour here)."""
    a = Emulator(servers, FROZEN)
    proxy = Proxy(servers, [a.url], health=Health(interval_seconds=3600))
    try:
        assert await _load_seconds(proxy.url, SHARED) > 0
        checks = a.state.requests["/api/ps"]
        chat = {"model": SHARED, "messages": [{"role": "user", "content": "hi"}], "stream": False}
        assert (await post(proxy.url, "/api/chat", chat))[0] == 200
        assert await wait_until(lambda: a.state.requests["/api/ps"] == checks + 1)
        assert await _load_seconds(proxy.url, SHARED) == 0
        # Loaded now: another answer of it brings no refresh.
        assert (await post(proxy.url, "/api/chat", chat))[0] == 200
        await asyncio.sleep(1.5)
        assert a.state.requests["/api/ps"] == checks + 1
    finally:
        proxy.stop()
        a.stop()


async def test_a_model_two_backends_spell_in_other_cases_is_merged_once(
    servers: ServerThread,
) -> None:
    """Ollama reads names case-insensitively: `Qwen3:8B-Q4_K_M` on one backend and
    `qwen3:8b-q4_k_m` on another are one model, listed once, as the first backend spells it."""
    a = Emulator(servers, dataclasses.replace(FROZEN, models=("Qwen3:8B-Q4_K_M",)))
    b = Emulator(servers, dataclasses.replace(FROZEN, models=("qwen3:8b-q4_k_m", ONLY_B)))
    proxy = Proxy(servers, [a.url, b.url])
    try:
        for backend in (a, b):
            for model in ("Qwen3:8B-Q4_K_M", "qwen3:8b-q4_k_m"):
                await post(backend.url, "/api/generate", generate(model))
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy.url + "/api/tags") as resp:
                names = [m["name"] for m in (await resp.json())["models"]]
            async with session.get(proxy.url + "/v1/models") as resp:
                ids = [m["id"] for m in (await resp.json())["data"]]
            async with session.get(proxy.url + "/api/ps") as resp:
                loaded = [m["name"] for m in (await resp.json())["models"]]
        assert sorted(names) == sorted(["Qwen3:8B-Q4_K_M", ONLY_B, *AUTO_NAMES])
        assert sorted(ids) == sorted(["Qwen3:8B-Q4_K_M", ONLY_B, *AUTO_NAMES])
        assert loaded == ["Qwen3:8B-Q4_K_M"]
    finally:
        proxy.stop()
        a.stop()
        b.stop()

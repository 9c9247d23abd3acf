"""A backend failing on each route that runs a model, and on /api/show, as the
emulator's faults make it fail in Ollama's shape there (`proxy.emulator.faults`),
through the proxy: the client gets Ollama's answer in the route's shape (passed
through where Ollama wrote one), a retry on another backend happens only before the
first byte, the circuit breaker counts what says the backend is broken, and each
request leaves exactly one usage event that records the failure."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.config_serving import Health, Timeouts
from proxy.emulator.faults import FAULT_PATHS, SHOW
from selector_model import outcome
from tests.conftest import FROZEN
from tests.support import Emulator, Proxy, ServerThread, file_usage, wait_until
from tests.test_backends import scrape_failures
from tests.usage_services import events_of

CHAT = "qwen2.5:7b"
EMBED = "nomic-embed-text:latest"
HI = [{"role": "user", "content": "hi"}]
ANTHROPIC = "/v1/messages"
_EMBEDDING_PATHS = ("/api/embed", "/api/embeddings", "/v1/embeddings")
TRANSCRIPTIONS = "/v1/audio/transcriptions"


def request_body(path: str, stream: bool) -> dict[str, Any]:
    """A request on `path` that the emulator answers (streamed, or whole)."""
    bodies: dict[str, dict[str, Any]] = {
        "/api/generate": {"model": CHAT, "prompt": "hi", "stream": stream},
        "/api/chat": {"model": CHAT, "messages": HI, "stream": stream},
        "/v1/chat/completions": {"model": CHAT, "messages": HI, "stream": stream},
        "/v1/completions": {"model": CHAT, "prompt": "hi", "stream": stream},
        "/v1/responses": {"model": CHAT, "input": "hi", "stream": stream},
        ANTHROPIC: {"model": CHAT, "messages": HI, "max_tokens": 50, "stream": stream},
        "/api/embed": {"model": EMBED, "input": "hi"},
        "/api/embeddings": {"model": EMBED, "prompt": "hi"},
        "/v1/embeddings": {"model": EMBED, "input": "hi"},
        SHOW: {"model": CHAT},
    }
    return bodies[path]


# Every route a fault hits but the audio one (a multipart form, `test_transcription_*`),
# each asked for a stream where it has one and for a whole answer.
CASES = [
    (path, stream)
    for path in sorted(FAULT_PATHS - {TRANSCRIPTIONS})
    for stream in (True, False)
    if stream is False or path not in (*_EMBEDDING_PATHS, SHOW)
]


# The routes whose streams Ollama's OpenAI layer writes again from the native one, and
# whose writers read a failed stream's `{"error"}` line as a response of nothing.
WRITTEN_AGAIN = ("/v1/chat/completions", "/v1/completions")
RESPONSES = "/v1/responses"


def test_the_cases_cover_every_route_a_fault_hits() -> None:
    assert {path for path, _ in CASES} | {TRANSCRIPTIONS} == FAULT_PATHS
    assert len(FAULT_PATHS) == 11


def error_of(path: str, doc: Any) -> tuple[str, str]:
    """(type, message) of an error answer in the route's shape: Anthropic's on
    /v1/messages, OpenAI's on the other /v1 routes (no type on Ollama's own routes)."""
    if path == ANTHROPIC:
        assert doc["type"] == "error" and set(doc["error"]) == {"type", "message"}
        return doc["error"]["type"], doc["error"]["message"]
    if path.startswith("/v1/"):
        assert set(doc["error"]) == {"message", "type", "param", "code"}
        return doc["error"]["type"], doc["error"]["message"]
    assert set(doc) == {"error"}
    return "", doc["error"]


def last_error(path: str, body: bytes) -> tuple[str, str]:
    """The error a 200 stream ended with: NDJSON's `{"error"}` line, an SSE stream's
    last event (Anthropic's named `error`)."""
    if not path.startswith("/v1/"):
        return error_of(path, orjson.loads(body.splitlines()[-1]))
    event = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    lines = event.split(b"\n")
    if path == ANTHROPIC:
        assert lines[0] == b"event: error"
    data = lines[-1].removeprefix(b"data: ")
    doc = orjson.loads(data)
    if path == ANTHROPIC:
        return doc["error"]["type"], doc["error"]["message"]
    return error_of(path, doc)


def failure_seen(path: str, body: bytes) -> bool:
    """Whether a 200 stream ends as Ollama ends one whose answer failed after it began:
    with the error line or event of the route (`last_error`); on the routes Ollama's
    OpenAI layer writes again (`WRITTEN_AGAIN`), with the chunk of nothing its writers
    make of that line, no `[DONE]`; on /v1/responses, short of its last event."""
    if path == RESPONSES:
        return b"response.completed" not in body and body.endswith(b"\n\n")
    if path in WRITTEN_AGAIN:
        last = orjson.loads(body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].removeprefix(b"data: "))
        (choice,) = last["choices"]
        nothing = choice.get("delta", {}).get("content", choice.get("text"))
        return last["model"] == "" and nothing == "" and choice["finish_reason"] is None
    kind, message = last_error(path, body)
    return kind in ("", "api_error") and bool(message)


async def settled(*emulators: Emulator) -> None:
    """Once the proxy has read each model's /api/show (its registry, at its start, of
    one backend that lists it): from then on the emulators count the tests' requests
    alone, and a fault meets no request of the proxy's own."""
    models = set().union(*(emulator.state.store for emulator in emulators))

    def shown() -> bool:
        return sum(emulator.state.requests[SHOW] for emulator in emulators) >= len(models)

    assert await wait_until(shown)


def failed(event: dict[str, Any]) -> bool:
    """Whether a usage event records its request as failed (an error status, or the
    error a 200 ended with): what the selector reads it as."""
    return outcome.of_event(event).source == "error"


@dataclasses.dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    cut: bool  # the body broke off inside its framing


async def ask(url: str, path: str, stream: bool) -> Answer:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, json=request_body(path, stream)) as resp,
    ):
        chunks = []
        try:
            async for chunk in resp.content.iter_any():
                chunks.append(chunk)
            cut = False
        except aiohttp.ClientPayloadError:
            cut = True
        return Answer(resp.status, resp.headers, b"".join(chunks), cut)


@pytest.fixture
def recorded(servers: ServerThread, own_emulator: Emulator, tmp_path: Path) -> Iterator[Proxy]:
    """The proxy in front of `own_emulator` alone, its usage events in a file, a
    backend's silence cut short, its breaker opening only after many failures (no
    health check resets the count)."""
    proxy = Proxy(
        servers,
        [own_emulator.url],
        usage=file_usage(tmp_path),
        timeouts=Timeouts(idle_read_seconds=0.5),
        health=Health(interval_seconds=3600, failure_threshold=100, open_seconds=3600),
    )
    yield proxy
    proxy.stop()


@pytest.mark.parametrize(("path", "stream"), CASES)
async def test_a_runner_dying_before_the_answer_is_ollamas_500_passed_through(
    recorded: Proxy, own_emulator: Emulator, path: str, stream: bool
) -> None:
    """Ollama's 500 (its runner died) reaches the client as Ollama wrote it, in the
    route's shape; a 500 says nothing of the backend's health (any client can ask for
    one), so the breaker counts none; the usage event records the failure (/api/show
    runs no model and leaves none)."""
    await settled(own_emulator)
    own_emulator.state.fault = "error500"
    direct = await ask(own_emulator.url, path, stream)
    proxied = await ask(recorded.url, path, stream)
    assert (direct.status, direct.cut) == (500, False)
    assert (proxied.status, proxied.cut, proxied.body) == (500, False, direct.body)
    assert proxied.headers["Content-Type"] == direct.headers["Content-Type"]
    kind, message = error_of(path, orjson.loads(proxied.body))
    assert kind in ("", "api_error") and message
    assert await scrape_failures(recorded.url, own_emulator.url) == (0, "closed")
    if path != SHOW:
        (event,) = await events_of(recorded.config.usage, proxied.headers["X-Request-Id"])
        assert event["outcome"]["status"] == 500 and failed(event)


@pytest.mark.parametrize(("path", "stream"), CASES)
async def test_a_backend_speaking_garbage_is_the_proxys_502_in_the_routes_shape(
    recorded: Proxy, own_emulator: Emulator, path: str, stream: bool
) -> None:
    await settled(own_emulator)
    own_emulator.state.fault = "garbage"
    proxied = await ask(recorded.url, path, stream)
    assert (proxied.status, proxied.cut) == (502, False)
    kind, message = error_of(path, orjson.loads(proxied.body))
    assert kind in ("", "api_error") and message
    assert await scrape_failures(recorded.url, own_emulator.url) == (1, "closed")
    if path != SHOW:
        (event,) = await events_of(recorded.config.usage, proxied.headers["X-Request-Id"])
        assert event["outcome"]["status"] == 502 and event["outcome"]["error"] and failed(event)


@pytest.mark.parametrize(("path", "stream"), CASES)
async def test_a_backend_lost_after_the_first_byte_ends_the_answer_as_ollama_would(
    recorded: Proxy, own_emulator: Emulator, path: str, stream: bool
) -> None:
    """A stream that began ends with the route's error line or event (status 200
    already sent); a whole answer cut inside its length reaches the client cut, as
    from the backend itself. Either counts once against the backend, and is an error
    in its usage event."""
    await settled(own_emulator)
    own_emulator.state.fault = "close_early"
    direct = await ask(own_emulator.url, path, stream)
    assert (direct.status, direct.cut) == (200, True)
    proxied = await ask(recorded.url, path, stream)
    assert proxied.status == 200
    assert proxied.headers["Content-Type"] == direct.headers["Content-Type"]
    if stream:
        assert not proxied.cut
        assert proxied.body.startswith(direct.body)  # the first chunk, as written
        ending = proxied.body[len(direct.body) :]
        assert ending.count(b"\n\n" if path.startswith("/v1/") else b"\n") == (
            0 if path == RESPONSES else 1
        )
        assert failure_seen(path, proxied.body)
    else:
        assert proxied.cut and proxied.body == direct.body
    assert await scrape_failures(recorded.url, own_emulator.url) == (1, "closed")
    if path != SHOW:
        (event,) = await events_of(recorded.config.usage, proxied.headers["X-Request-Id"])
        assert event["outcome"]["status"] == 200 and event["outcome"]["error"] and failed(event)


@pytest.mark.parametrize(("path", "stream"), CASES)
async def test_a_backend_silent_before_its_answer_is_the_proxys_502_after_the_idle_timeout(
    recorded: Proxy, own_emulator: Emulator, path: str, stream: bool
) -> None:
    """A backend that never begins its answer: past the idle timeout the client gets
    the proxy's 502 in the route's shape. On a route that runs a model the silence is
    the request's own length (a prompt still evaluated), which opens no circuit; on
    /api/show it says the backend is stuck, and counts."""
    await settled(own_emulator)
    own_emulator.state.fault = "hang"
    proxied = await ask(recorded.url, path, stream)
    assert (proxied.status, proxied.cut) == (502, False)
    kind, message = error_of(path, orjson.loads(proxied.body))
    assert kind in ("", "api_error") and "no data from backend" in message
    counted = 1 if path == SHOW else 0
    assert await scrape_failures(recorded.url, own_emulator.url) == (counted, "closed")
    if path != SHOW:
        (event,) = await events_of(recorded.config.usage, proxied.headers["X-Request-Id"])
        assert event["outcome"]["status"] == 502 and failed(event)


@pytest.mark.parametrize(("path", "stream"), CASES)
async def test_a_backend_silent_mid_answer_ends_it_after_the_idle_timeout(
    recorded: Proxy, own_emulator: Emulator, path: str, stream: bool
) -> None:
    """A backend silent after its answer began: past the idle timeout a stream ends
    with the route's error line or event, a whole answer is cut. A silence once the
    answer began is the work the request asked for, so no circuit counts it; the usage
    event records the error."""
    await settled(own_emulator)
    own_emulator.state.fault = "stall"
    proxied = await ask(recorded.url, path, stream)
    assert proxied.status == 200
    if stream:
        assert not proxied.cut and failure_seen(path, proxied.body)
        if path not in (*WRITTEN_AGAIN, RESPONSES):  # whose ends say no error
            assert "no data from backend" in last_error(path, proxied.body)[1]
    else:
        assert proxied.cut
    assert await scrape_failures(recorded.url, own_emulator.url) == (0, "closed")
    if path != SHOW:
        (event,) = await events_of(recorded.config.usage, proxied.headers["X-Request-Id"])
        assert event["outcome"]["status"] == 200 and event["outcome"]["error"] and failed(event)


@pytest.fixture
def two(servers: ServerThread) -> Iterator[tuple[Emulator, Emulator, Proxy]]:
    a, b = Emulator(servers, FROZEN), Emulator(servers, FROZEN)
    proxy = Proxy(
        servers,
        [a.url, b.url],
        health=Health(interval_seconds=3600, failure_threshold=100, open_seconds=3600),
    )
    yield a, b, proxy
    proxy.stop()
    a.stop()
    b.stop()


@pytest.mark.parametrize(("path", "stream"), CASES)
@pytest.mark.parametrize("fault", ["error500", "garbage"])
async def test_a_failure_before_the_first_byte_is_retried_on_another_backend(
    two: tuple[Emulator, Emulator, Proxy], fault: str, path: str, stream: bool
) -> None:
    """An answer that failed before its first byte is asked again of the other
    backend, which answers it whole."""
    a, b, proxy = two
    await settled(a, b)
    before = a.state.requests[path], b.state.requests[path]
    a.state.fault = fault
    for _ in range(4):  # until the proxy has chosen `a` first once
        answer = await ask(proxy.url, path, stream)
        assert (answer.status, answer.cut) == (200, False)
        if a.state.requests[path] > before[0]:
            break
    assert a.state.requests[path] == before[0] + 1
    assert b.state.requests[path] > before[1]


@pytest.mark.parametrize(("path", "stream"), CASES)
async def test_a_failure_after_the_first_byte_is_not_retried(
    two: tuple[Emulator, Emulator, Proxy], path: str, stream: bool
) -> None:
    """An answer that failed after its first byte (the client has part of it) is not
    asked again: one backend was asked, and the client sees the failure."""
    a, b, proxy = two
    await settled(a, b)
    before = a.state.requests[path] + b.state.requests[path]
    a.state.fault = b.state.fault = "close_early"
    answer = await ask(proxy.url, path, stream)
    assert a.state.requests[path] + b.state.requests[path] == before + 1
    assert answer.status == 200
    if stream:
        assert failure_seen(path, answer.body)
    else:
        assert answer.cut


def test_a_stream_ended_short_keeps_its_connection_framed(
    own_emulator: Emulator, recorded: Proxy
) -> None:
    """A /v1/responses stream the backend cut ends where Ollama's stops (no event
    more): its body ends with the last chunk alone, and the client's connection carries
    its next request's answer, nothing before it."""
    own_emulator.state.fault = "close_early"
    port = int(recorded.url.rsplit(":", 1)[1])
    body = orjson.dumps(request_body(RESPONSES, True))
    head = f"POST {RESPONSES} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        got = b""
        while b"\r\n0\r\n\r\n" not in got:
            more = sock.recv(65536)
            assert more, got
            got += more
        got, _, after = got.partition(b"\r\n0\r\n\r\n")
        assert b"response.completed" not in got
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        while b"\r\n\r\n" not in after:
            more = sock.recv(65536)
            assert more, after
            after += more
    assert after.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_auto_chooses_again_where_its_choice_cannot_be_reached(
    servers: ServerThread,
) -> None:
    """`auto`'s choice whose only backend refuses the connect (its Ollama stopped since
    the last health check: the circuit is still closed) is not the client's 503: it
    named no model and nothing reached it, so `auto` chooses once more among the models
    the other backend serves (not another of the stopped one's); the answer names the
    model served."""
    a = Emulator(servers, dataclasses.replace(FROZEN, models=("qwen2.5-coder:7b", "llama3.2:3b")))
    b = Emulator(servers, dataclasses.replace(FROZEN, models=(CHAT,)))
    proxy = Proxy(servers, [a.url, b.url], health=Health(interval_seconds=3600))
    try:
        await settled(a, b)
        status, chosen, header = await auto_chat(proxy.url)
        assert (status, header) == (200, chosen)
        stopped, left = (a, b) if chosen in a.state.store else (b, a)
        stopped.stop()
        status, model, header = await auto_chat(proxy.url)
    finally:
        proxy.stop()
        a.stop()
        b.stop()
    assert status == 200
    assert model == header and model in left.state.store


async def auto_chat(url: str) -> tuple[int, Any, str]:
    """An `auto` chat's status, the model its answer names (None for an error) and the
    one `X-Autoroute-Model` names."""
    body = {"model": "auto", "messages": HI, "stream": False}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/api/chat", json=body) as resp,
    ):
        doc = await resp.json()
        return resp.status, doc.get("model"), resp.headers.get("X-Autoroute-Model", "")

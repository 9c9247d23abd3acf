"""Limits beyond the body size: header bytes, number of messages, prompt length; each a
clear 4xx in Ollama's shape (OpenAI's on /v1), and the proxy serves on afterwards."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from proxy import auto, body_screen, go_json
from proxy import limits as request_limits
from proxy.app import APP_KEY
from proxy.config_serving import Limits
from proxy.limits import HELD_BODIES, HeldBodies, prompt_chars
from selector_model import features, request_body
from tests.support import (
    Emulator,
    Proxy,
    ServerThread,
    error_text,
    on_a_loop,
    running_stream,
    wait_until,
    where_called,
)

MODEL = "llama3.1:8b"


@pytest.fixture(scope="module")
def limited(servers: ServerThread, emulator: Emulator) -> Iterator[Proxy]:
    limits = Limits(max_header_bytes=2048, max_messages=3, max_prompt_chars=100)
    prx = Proxy(servers, [emulator.url], limits=limits)
    yield prx
    prx.stop()


async def post(
    url: str, path: str, body: object, headers: dict[str, str] | None = None
) -> tuple[int, object]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + path, data=orjson.dumps(body), headers=headers or {}) as resp,
    ):
        raw = await resp.read()
        return resp.status, orjson.loads(raw.splitlines()[0]) if raw else None


def messages(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": "hi"}] * n


@pytest.mark.parametrize("path", ["/api/generate", "/v1/chat/completions"])
async def test_headers_over_the_limit_are_431(limited: Proxy, path: str) -> None:
    """As Go's net/http answers a head over its limit, before any handler (so in plain
    text, on every path): tests/test_client_faults.py has the heads refused as they
    arrive."""
    body = {"model": MODEL, "prompt": "x", "stream": False}
    async with (
        aiohttp.ClientSession() as http,
        http.post(limited.url + path, json=body, headers={"X-Big": "a" * 3000}) as resp,
    ):
        assert resp.status == 431
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert resp.headers["Connection"] == "close"
        assert await resp.read() == b"431 Request Header Fields Too Large"
    status, _ = await post(limited.url, "/api/generate", body, {"X-Small": "a" * 100})
    assert status == 200


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("model", [MODEL, "auto"])
async def test_too_many_messages_is_400(limited: Proxy, path: str, model: str) -> None:
    status, doc = await post(limited.url, path, {"model": model, "messages": messages(4)})
    assert status == 400
    assert isinstance(doc, dict)
    message = error_text(path, doc)
    assert message == "too many messages: 4 (limit 3)"
    ok = {"model": model, "messages": messages(3), "stream": False}
    assert (await post(limited.url, path, ok))[0] == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"prompt": "x" * 101}),
        ("/api/generate", {"prompt": "x" * 60, "suffix": "y" * 60}),
        ("/api/generate", {"prompt": "x", "system": "s" * 120}),
        ("/api/chat", {"messages": [{"role": "user", "content": "x" * 60}] * 2}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 101}]}]},
        ),
        ("/api/embed", {"input": ["x" * 50, "y" * 51]}),
    ],
)
async def test_prompt_over_the_limit_is_413(
    limited: Proxy, path: str, body: dict[str, object]
) -> None:
    status, doc = await post(limited.url, path, {"model": MODEL, **body})
    assert status == 413
    assert isinstance(doc, dict)
    message = error_text(path, doc)
    assert message == "prompt too long (limit 100 characters)"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"messages": messages(4)}, 400, "too many messages: 4 (limit 3)"),
        ({"prompt": "x" * 101}, 413, "prompt too long (limit 100 characters)"),
        (
            {"messages": [{"role": "user", "content": "x" * 60}] * 2},
            413,
            "prompt too long (limit 100 characters)",
        ),
    ],
)
async def test_explain_refuses_what_the_inference_routes_refuse(
    limited: Proxy, body: dict[str, object], status: int, message: str
) -> None:
    """Explain ranks what `auto` would do with the body, and `auto` never ranks a body
    over the limits: it gets their refusal. Ranking one would also let a client hold
    the event loop with a conversation of any length (features are read from every
    message) where every inference route refuses it at once."""
    answer = await post(limited.url, "/api/autoroute/explain", {"model": "auto", **body})
    assert answer == (status, {"error": message})
    inference = "/api/chat" if "messages" in body else "/api/generate"
    assert await post(limited.url, inference, {"model": "auto", **body}) == answer


def test_prompt_chars_counts_text_not_images() -> None:
    doc = {
        "system": "ab",
        "messages": [
            {"role": "user", "content": "cde", "images": ["A" * 1000]},
            {"role": "user", "content": [{"type": "text", "text": "fg"}, {"type": "image_url"}]},
        ],
    }
    assert prompt_chars(doc, 10_000) == 7


@pytest.fixture(scope="module")
def values_bound(servers: ServerThread, emulator: Emulator) -> Iterator[Proxy]:
    prx = Proxy(servers, [emulator.url], limits=Limits(max_json_values=1000))
    yield prx
    prx.stop()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": MODEL, "prompt": "x", "stream": False}),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        ),
        ("/api/autoroute/explain", {"model": "auto", "prompt": "x"}),
        ("/api/autoroute/feedback", {"request_id": "r-1", "rating": 1}),
    ],
)
async def test_a_body_of_too_many_json_values_is_413(
    values_bound: Proxy, path: str, body: dict[str, object]
) -> None:
    """Each JSON value the proxy reads is an object in its memory, tens of bytes for a
    two-byte `[]`, and reading them holds its event loop: a body of many tiny values
    (megabytes of `[],[],...`, which Ollama's decoder skips in a field it does not
    read) is refused before it is read. Commas and brackets in strings are no values."""
    status, doc = await post(values_bound.url, path, {**body, "x": [[]] * 1000})
    assert status == 413
    assert isinstance(doc, dict)
    message = error_text(path, doc)
    assert message == "request body has too many JSON values (limit 1000)"
    for fine in ({**body, "x": [[]] * 900}, {**body, "note": "[{}], " * 2000}):
        status, _ = await post(values_bound.url, path, fine)
        assert status in (200, 202), (status, path)


@pytest.mark.parametrize("path", ["/api/chat", "/api/autoroute/explain"])
async def test_reading_a_body_as_go_does_holds_no_other_client(
    proxy: Proxy, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body orjson cannot read (invalid UTF-8, which Go reads as U+FFFD byte by byte)
    is read as Go reads it at a Python call per invalid byte: seconds for megabytes,
    in which the event loop would answer no other client. So a large one is read in a
    worker thread, off the loop; a small one, a few milliseconds at most, on it."""
    readings: list[tuple[int, bool]] = []
    read = go_json._read_in_gos_way

    def watched(body: bytes, why: str) -> tuple[Any, bytes]:
        readings.append((len(body), on_a_loop()))
        return read(body, why)

    monkeypatch.setattr(go_json, "_read_in_gos_way", watched)
    sizes = []
    for size in (go_json.INLINE_BYTES // 2, 3 * 1024 * 1024):
        body = b'{"model": "%s", "stream": false, "prompt": "%s"}' % (
            MODEL.encode(),
            b"\xff" * size,
        )
        sizes.append(len(body))
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + path, data=body) as resp:
                assert resp.status < 500, (resp.status, await resp.read())
    assert readings == [(sizes[0], True), (sizes[1], False)]


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/api/chat", MODEL),
        ("/v1/chat/completions", MODEL),
        ("/api/autoroute/explain", "auto"),
        ("/api/chat", "auto"),
    ],
)
async def test_a_large_valid_body_is_read_off_the_loop(
    proxy: Proxy, path: str, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid body near the body limit costs orjson, the count of its values and its
    canonical serialisation a good part of a second each, all C calls that hold the
    event loop: a large one is counted, read and written in a worker thread (one larger
    still in a worker process, `body_screen`), a small one on the loop; so is the body
    `auto` forwards, written again with the model chosen."""
    steps: list[tuple[str, int, bool]] = []
    for name in ("values", "_orjson_reading", "_written"):
        step = getattr(go_json, name)

        def watched(*args: Any, _name: str = name, _step: Any = step) -> Any:
            first = args[0]
            size = len(first) if isinstance(first, bytes) else -1
            steps.append((_name, size, on_a_loop()))
            return _step(*args)

        monkeypatch.setattr(go_json, name, watched)
    for size in (go_json.INLINE_BYTES // 2, body_screen.SCREENED_BYTES // 2):
        steps.clear()
        body = {
            "model": model,
            "stream": False,
            "messages": [{"role": "user", "content": "hi"}],
            "padding": "x" * size,
        }
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + path, data=orjson.dumps(body)) as resp:
                assert resp.status == 200, (resp.status, await resp.read())
        written = ["_written"] * (2 if model == "auto" and path == "/api/chat" else 1)
        assert [name for name, _, _ in steps] == ["values", "_orjson_reading", *written]
        assert {on_loop for _, _, on_loop in steps} == {size < go_json.INLINE_BYTES}, steps


@pytest.mark.parametrize(
    ("path", "model", "field"),
    [
        ("/api/embed", "auto", "input"),
        ("/api/embed", MODEL, "input"),
        ("/api/autoroute/explain", "auto", "prompt"),
    ],
)
async def test_a_body_of_many_texts_is_measured_off_the_loop(
    proxy: Proxy, path: str, model: str, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prompt's length is counted text by text, a Python call each: hundreds of
    thousands of one-character inputs (a few megabytes, far below the body and value
    limits) held the event loop for a third of a second per request. A large body's
    texts are counted in a worker thread, a small one's on the loop."""
    countings = where_called(monkeypatch, request_limits, "prompt_chars")
    for entries in (10, 30_000):
        body = orjson.dumps({"model": model, field: ["a"] * entries})
        countings.clear()
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + path, data=body) as resp:
                assert resp.status < 500, (resp.status, await resp.read())
        assert countings == [len(body) <= go_json.INLINE_BYTES], (entries, countings)


def _parted(path: str, parts: int) -> dict[str, Any]:
    """An `auto` request on `path` whose one user turn is `parts` content parts (a
    string of as many words on /api/chat, whose content is a string)."""
    if path == "/api/chat":
        return {"model": "auto", "messages": [{"role": "user", "content": "word " * parts}]}
    if path == "/v1/responses":
        content = [{"type": "input_text", "text": "word"}] * parts
        return {"model": "auto", "input": [{"role": "user", "content": content}]}
    turn = {"role": "user", "content": [{"type": "text", "text": "word"}] * parts}
    return {"model": "auto", "max_tokens": 8, "messages": [turn]}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/messages",
        "/api/chat",
        "/api/autoroute/explain?path=/v1/chat/completions",
    ],
)
async def test_autos_reading_of_a_body_of_many_parts_is_off_the_loop(
    proxy: Proxy, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`auto` reads a request's features, what it asks of a model and its prompt's
    tokens part by part, a Python call each: hundreds of thousands of content parts
    held the event loop for a tenth of a second and more per request. A large body's
    reading is in a worker thread, a small one's on the loop; so is the digest of its
    conversation, which writes each message again. It reads the document the body was
    parsed into, once, as the limits do: the body is not parsed again."""
    calls = {
        name: where_called(monkeypatch, owner, name)
        for owner, name in (
            (features, "request_features"),
            (request_body, "asks"),
            (request_body, "prompt_tokens"),
            (go_json, "read_quickly"),
            (auto, "conversation"),
        )
    }
    for parts in (10, 30_000):
        body = orjson.dumps({"stream": False, **_parted(path.partition("?")[0], parts)})
        for called in calls.values():
            called.clear()
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + path, data=body) as resp:
                assert resp.status == 200, (resp.status, await resp.read())
        small = len(body) <= go_json.INLINE_BYTES
        assert calls["request_features"] == [small], (parts, calls)
        assert calls["asks"] == [small], (parts, calls)
        assert calls["conversation"] == [small], (parts, calls)
        # Parsed once: in a worker process where it is larger still (`body_screen`).
        screened = len(body) > body_screen.SCREENED_BYTES
        assert calls["read_quickly"] == ([] if screened else [small]), (parts, calls)
        # Read off the loop with the rest; on it only where a context is short of it.
        assert calls["prompt_tokens"] == ([] if small else [False]), (parts, calls)


async def test_bodies_read_in_gos_slow_way_hold_up_no_other_body(
    servers: ServerThread, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body orjson cannot read as Go does (invalid UTF-8 here) is read at a Python
    call per odd byte: seconds for megabytes, and a client can send such bodies one
    after another. Those readings wait for each other, never in front of a body orjson
    reads: two of them being read must not keep another client's large ordinary body
    from its reading (both reader threads held, it would wait for them)."""
    release = threading.Event()
    slow_way = go_json._read_in_gos_way

    def held_up(*args: Any) -> Any:
        release.wait()
        return slow_way(*args)

    monkeypatch.setattr(go_json, "_read_in_gos_way", held_up)
    prx = Proxy(servers, [emulator.url])
    held = prx.app[HELD_BODIES]
    odd = b'{"model":"%b","prompt":"hi","stream":false,"padding":"%b"}' % (
        MODEL.encode(),
        b"\xff" * (1200 * 1024),
    )
    ordinary = {"model": MODEL, "prompt": "hi", "stream": False, "padding": "A" * 200_000}
    try:
        async with aiohttp.ClientSession() as session:

            async def send(body: bytes) -> int:
                async with session.post(prx.url + "/api/generate", data=body) as resp:
                    await resp.read()
                    return resp.status

            odd_ones = [asyncio.create_task(send(odd)) for _ in range(2)]
            # Both read whole (held), and so handed to the readers in the same step.
            assert await wait_until(lambda: held.held == 2 * len(odd))
            other = asyncio.create_task(send(orjson.dumps(ordinary)))
            # A guard against a hang, not a measure: read in its turn, it is answered
            # in milliseconds; behind the held-up readings, never.
            done, _ = await asyncio.wait({other}, timeout=30)
            release.set()
            assert other in done and other.result() == 200
            assert await asyncio.gather(*odd_ones) == [200, 200]
    finally:
        release.set()
        prx.stop()


async def test_bodies_held_at_once_beyond_the_limit_are_503_and_the_limit_comes_back(
    servers: ServerThread, emulator: Emulator
) -> None:
    """Every request body the proxy reads it holds whole (and its parse) until the
    request is over: beyond `max_held_body_bytes` of them at once, a request with a
    large body is refused with Ollama's busy status, not read; small bodies are never
    refused for it, and the room comes back when a request ends."""
    # A field Ollama's decoder skips, 1.5 MiB of it.
    padding = "A" * (1536 * 1024)
    big = {"model": MODEL, "prompt": "long", "padding": padding, "options": {"num_predict": 400}}
    prx = Proxy(servers, [emulator.url], limits=Limits(max_held_body_bytes=2 * 1024 * 1024))
    try:
        async with running_stream(prx.url, "", big) as first:
            status, answer = await post(prx.url, "/api/generate", {**big, "stream": False})
            assert status == 503
            assert isinstance(answer, dict) and "server busy" in answer["error"]
            small = {"model": MODEL, "prompt": "hi", "stream": False}
            assert (await post(prx.url, "/api/generate", small))[0] == 200
            await first.read()
        short = {**big, "options": {"num_predict": 2}, "stream": False}
        assert (await post(prx.url, "/api/generate", short))[0] == 200
    finally:
        prx.stop()


async def test_a_body_declared_but_not_sent_holds_no_room(
    servers: ServerThread, emulator: Emulator
) -> None:
    """Room is taken by the bytes a body has brought, not by the length its head
    declares: clients that send heads declaring long bodies and then nothing (or a byte
    now and then, which keeps them from the body timeout) hold no memory, and so keep
    nobody else's large body out. Counted by the declared length, two such heads of one
    client would refuse every other client's bodies over 1 MiB for as long as it kept
    them open."""
    mib = 1024 * 1024
    limits = Limits(max_body_bytes=2 * mib, max_held_body_bytes=3 * mib)
    prx = Proxy(servers, [emulator.url], limits=limits)
    held = prx.app[HELD_BODIES]
    metrics = prx.app[APP_KEY].metrics
    stalled = [socket.create_connection(("127.0.0.1", prx.port)) for _ in range(2)]
    try:
        for sock in stalled:
            sock.sendall(
                b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Length: %d\r\n\r\n{" % (2 * mib)
            )
        # Both bodies being read (or room taken for them).
        assert await wait_until(lambda: metrics.in_flight == 2 or held.held > 0)
        padding = "A" * (1536 * mib // 1024)  # 1.5 MiB of a field Ollama skips
        body = {"model": MODEL, "prompt": "hi", "padding": padding, "stream": False}
        status, answer = await post(prx.url, "/api/generate", body)
        assert status == 200, answer
        # Once that request is over (its body let go), the two heads hold nothing.
        assert await wait_until(lambda: held.held == 0)
    finally:
        for sock in stalled:
            sock.close()
        prx.stop()


async def test_a_client_waiting_to_send_a_body_with_no_room_is_refused_uninvited(
    servers: ServerThread, emulator: Emulator
) -> None:
    """A client that waits for `100 Continue` before it sends a body (curl does for
    bodies over 1 MiB) is told at once that its declared length does not fit in the
    room other bodies hold, rather than invited to send it only to be refused on the
    way; its head alone takes no room."""
    mib = 1024 * 1024
    padding = "A" * (1536 * 1024)  # 1.5 MiB of a field Ollama skips
    big = {"model": MODEL, "prompt": "long", "padding": padding, "options": {"num_predict": 400}}
    prx = Proxy(servers, [emulator.url], limits=Limits(max_held_body_bytes=2 * mib))
    held = prx.app[HELD_BODIES]
    loop = asyncio.get_running_loop()
    try:
        async with running_stream(prx.url, "", big) as first:
            taken = held.held
            waiting = socket.create_connection(("127.0.0.1", prx.port))
            try:
                waiting.sendall(
                    b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\n"
                    b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (1536 * 1024)
                )
                answer = await loop.run_in_executor(None, waiting.recv, 65536)
            finally:
                waiting.close()
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
            assert b"server busy" in answer
            assert held.held == taken
            await first.read()
    finally:
        prx.stop()


async def test_a_body_arriving_is_kept_as_it_came_not_copied(
    servers: ServerThread, emulator: Emulator
) -> None:
    """While a body arrives, the proxy keeps the pieces that came, not a copy of them in
    a buffer that grows with them: copying is work in the loop every other request
    waits for, and many clients sending large bodies at once would have a small
    request wait behind copying all they sent. The body is made whole once, at its
    end."""
    mib = 1024 * 1024
    limits = Limits(max_body_bytes=4 * mib, max_held_body_bytes=8 * mib)
    prx = Proxy(servers, [emulator.url], limits=limits)
    held = prx.app[HELD_BODIES]
    loop = asyncio.get_running_loop()
    tracemalloc.start()
    sending = socket.create_connection(("127.0.0.1", prx.port))
    try:
        sent = 3 * mib
        await loop.run_in_executor(
            None,
            sending.sendall,
            b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: %d\r\n\r\n{%b" % (4 * mib, b" " * (sent - 1)),
        )
        assert await wait_until(lambda: held.held == sent)
        only_limits = tracemalloc.Filter(True, request_limits.__file__)
        kept = tracemalloc.take_snapshot().filter_traces([only_limits]).statistics("filename")
        # What the reading of the body allocated itself: a list of the pieces, no copy.
        assert sum(stat.size for stat in kept) < mib // 8, kept
    finally:
        tracemalloc.stop()
        sending.close()
        prx.stop()


class _Reading:
    """The side of a connection an aiohttp StreamReader tells to pause and resume."""

    _reading_paused = False
    connected = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, **_: Any) -> None:
        pass


async def test_a_body_sent_in_tiny_pieces_holds_about_its_own_length() -> None:
    """A body sent two bytes at a time, each piece read on its own, is held in about as
    many bytes as it has: kept as separate objects, each piece would hold tens of bytes
    for the two it counts against `max_held_body_bytes`, and clients dripping their
    bodies would hold many times that limit."""
    pieces = 20_000
    side: Any = _Reading()
    reader = StreamReader(side, 2**16, loop=asyncio.get_running_loop())
    head = {"Content-Length": str(2 * pieces + 1)}
    request = make_mocked_request("POST", "/api/chat", headers=head, payload=reader)
    tracemalloc.start()
    try:
        reading = asyncio.create_task(request_limits.read_body(request, 60.0))
        for i in range(pieces):
            reader.feed_data(b"x" + bytes((i % 256,)))  # made here, as a socket makes each
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        # What the pieces made here and the reading of them hold, not what else the
        # process allocates meanwhile.
        where = [
            tracemalloc.Filter(True, __file__),
            tracemalloc.Filter(True, request_limits.__file__),
        ]
        kept = tracemalloc.take_snapshot().filter_traces(where).statistics("filename")
        held = sum(stat.size for stat in kept)
        reader.feed_data(b"}")
        reader.feed_eof()
        body = await reading
    finally:
        tracemalloc.stop()
    assert len(body) == 2 * pieces + 1 and body.endswith(b"x\x1f}")
    assert held < 3 * 2 * pieces, held


async def test_a_body_declared_over_the_size_limit_counts_for_the_limit_at_most(
    servers: ServerThread, emulator: Emulator
) -> None:
    """A body declared longer than `max_body_bytes` is read up to that limit and
    refused with the size limit's 413, never the busy status (no retry can fit it);
    while it is read it holds room for the limit at most, so a client declaring a
    huge length and sending up to the limit slowly keeps no more room from the bodies
    of others."""
    mib = 1024 * 1024
    limits = Limits(max_body_bytes=2 * mib, max_held_body_bytes=5 * mib)
    prx = Proxy(servers, [emulator.url], limits=limits)
    held = prx.app[HELD_BODIES]
    loop = asyncio.get_running_loop()
    slow = socket.create_connection(("127.0.0.1", prx.port))
    try:
        # Declared 4 MiB, the limit's 2 MiB sent: its body is being read.
        await loop.run_in_executor(
            None,
            slow.sendall,
            b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: %d\r\n\r\n{%b" % (4 * mib, b" " * (2 * mib - 1)),
        )
        assert await wait_until(lambda: held.held == 2 * mib)
        padding = "A" * (1536 * mib // 1024)  # 1.5 MiB of a field Ollama skips
        body = {"model": MODEL, "prompt": "hi", "padding": padding, "stream": False}
        assert (await post(prx.url, "/api/generate", body))[0] == 200
        for declared in (4 * mib, 10**12):
            huge = socket.create_connection(("127.0.0.1", prx.port))
            try:
                head = b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n"
                await loop.run_in_executor(
                    None, huge.sendall, head % declared + b"{" + b" " * (2 * mib + 1)
                )
                answer = await loop.run_in_executor(None, huge.recv, 65536)
            finally:
                huge.close()
            assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
            assert b"too large" in answer
    finally:
        slow.close()
        prx.stop()


def _pieces(total: int) -> list[bytes]:
    """Pieces of a body as sockets hand them over: some of a byte or a few, some near the
    gathering length, most of tens of kilobytes; random bytes, `total` of them."""
    draw = random.Random(240)
    sizes = (1, 7, 100, 4095, 4096, 5000, 16384, 65536, 70001)
    pieces: list[bytes] = []
    left = total
    while left:
        size = min(left, draw.choice(sizes))
        pieces.append(draw.randbytes(size))
        left -= size
    return pieces


async def _read_fed(
    pieces: list[bytes], held: HeldBodies, limit: int = 0
) -> tuple[asyncio.Task[bytes], web.Request]:
    """`read_body` of a mocked request whose body arrives as `pieces`, one at a time,
    under `held`: its task once every piece is fed, and the request."""
    app = web.Application()
    app[HELD_BODIES] = held
    reader = StreamReader(_Reading(), 2**16, loop=asyncio.get_running_loop())
    head = {"Content-Length": str(sum(map(len, pieces)))}
    request = make_mocked_request(
        "POST", "/api/chat", headers=head, payload=reader, app=app, client_max_size=64 << 20
    )
    reading = asyncio.create_task(request_limits.read_body(request, 60.0, limit))
    for piece in pieces:
        reader.feed_data(piece)
        await asyncio.sleep(0)
    reader.feed_eof()
    return reading, request


@pytest.mark.parametrize("total", [300_000, 3 << 20])
async def test_a_body_in_many_pieces_is_read_byte_for_byte_and_counted_until_let_go(
    total: int,
) -> None:
    """Pieces of every length, the short ones gathered into buffers: the body read is
    the bytes sent, in order; the long one counts as held until the request is over."""
    pieces = _pieces(total)
    held = HeldBodies(64 << 20)
    reading, request = await _read_fed(pieces, held)
    assert await reading == b"".join(pieces)
    assert held.held == (total if total > request_limits.HELD_FREELY else 0)
    request_limits.let_go(request)
    assert held.held == 0


async def test_a_long_body_in_pieces_over_the_limit_is_refused() -> None:
    """A route's limit is still the limit for a body long enough to be joined apart."""
    held = HeldBodies(64 << 20)
    reading, request = await _read_fed(_pieces(3 << 20), held, limit=2 << 20)
    with pytest.raises(request_limits.BodyTooLarge):
        await reading
    request_limits.let_go(request)
    assert held.held == 0


async def test_a_long_bodys_pieces_are_joined_off_the_loops_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The join of a body of megabytes copies it whole: in a thread, where CPython copies
    it without the GIL, not in the loop every other client waits for. A short body's is
    joined at once, in the loop (no thread to wait for)."""
    joined_in: list[int] = []
    join = getattr(request_limits, "_joined", None)

    def recording(pieces: list[bytes | bytearray]) -> bytes:
        joined_in.append(threading.get_ident())
        assert join is not None
        return join(pieces)

    monkeypatch.setattr(request_limits, "_joined", recording, raising=False)
    short = _pieces(300_000)
    reading, _ = await _read_fed(short, HeldBodies(0))
    assert await reading == b"".join(short)
    assert joined_in == []
    long = _pieces(3 << 20)
    reading, _ = await _read_fed(long, HeldBodies(0))
    assert await reading == b"".join(long)
    assert len(joined_in) == 1, "the long body was not joined apart"
    assert joined_in[0] != threading.get_ident()

"""A large body is read in a worker process (`proxy.body_screen`), not in the proxy's,
since a reading in a reader thread still holds the event loop for as long as each of
orjson's C calls takes (the GIL): one the limits refuse is refused unread by the
proxy's process, one they pass taken as the worker read it. What the client, the
backend and the usage event get is what a body read in the proxy gets."""

from __future__ import annotations

import base64
import json
import pickle
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from proxy import body_screen, go_json
from proxy.config_serving import Limits
from proxy.usage.pipeline import MAX_COMMENT, MAX_FEEDBACK_BYTES
from tests.support import (
    Emulator,
    Proxy,
    ServerThread,
    file_usage,
    free_port,
    wait_until,
    where_called,
)
from tests.test_runner_caps import Recorder

MODEL = "llama3.1:8b"
# What an event says of its own request, not of the body: left out when two are compared.
_OWN = ("request_id", "ts")
_OWN_OUTCOME = ("ttfc_ms", "total_ms")
_TOO_LONG = "prompt too long (limit 100 characters)"
_REFUSED = {"model": MODEL, "prompt": "x" * 101}
INLINE = go_json.INLINE_BYTES
_LONG_CHAT = [{"role": "user", "content": "x" * 101}]


@pytest.fixture
def limited(servers: ServerThread, emulator: Emulator, tmp_path: Path) -> Iterator[Proxy]:
    limits = Limits(max_messages=3, max_prompt_chars=100)
    usage = file_usage(tmp_path, log_prompts=True)
    prx = Proxy(servers, [emulator.url], limits=limits, usage=usage)
    yield prx
    prx.stop()


def _events(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "events.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


# What auto's state says of a decision (what it learned of the request before, whether
# the model it chose was loaded): left out too.
_STATE = {"decision": ("utility", "blend"), "candidate": ("loaded",)}


def _of_the_body(event: dict[str, Any]) -> dict[str, Any]:
    outcome = {k: v for k, v in event["outcome"].items() if k not in _OWN_OUTCOME}
    state = {
        field: {k: v for k, v in event[field].items() if k not in left_out}
        for field, left_out in _STATE.items()
        if event.get(field)
    }
    return {**{k: v for k, v in event.items() if k not in _OWN}, "outcome": outcome, **state}


async def _answer(url: str, path: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as http, http.post(url + path, json=body) as resp:
        return resp.status, resp.headers["Content-Type"], await resp.read()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"prompt": "x" * 101}),
        ("/api/generate", {"prompt": "x", "system": "s" * 120}),
        ("/api/chat", {"messages": [{"role": "user", "content": "x" * 60}] * 2}),
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}] * 4}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 101}]}),
        ("/api/embed", {"input": ["x" * 50, "y" * 51]}),
        # A number that is no integer in an int field changes only the bytes forwarded
        # (as written), never what the limits read: no way past the screen.
        ("/api/chat", {"messages": _LONG_CHAT, "top_logprobs": 1.5}),
        ("/v1/chat/completions", {"messages": _LONG_CHAT, "max_tokens": 2.5}),
    ],
)
async def test_a_large_body_the_limits_refuse_is_refused_unread(
    limited: Proxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    body: dict[str, Any],
) -> None:
    reads = where_called(monkeypatch, go_json, "read_quickly")
    request = {"model": MODEL, **body}
    as_read = await _answer(limited.url, path, request)
    assert as_read[0] in (400, 413)
    assert len(reads) == 1
    monkeypatch.setattr(body_screen, "SCREENED_BYTES", 0)  # every body is large now
    assert await _answer(limited.url, path, request) == as_read
    assert len(reads) == 1, "the refused body was read in the proxy's process"
    # A body the limits pass is taken as the worker read it, and served.
    fine = {"model": MODEL, "prompt": "hi", "stream": False}
    assert (await _answer(limited.url, "/api/generate", fine))[0] == 200
    assert len(reads) == 1
    assert await wait_until(lambda: len(_events(tmp_path)) == 3)
    unscreened, screened, _ = _events(tmp_path)
    assert screened["prompt"] and screened["prompt_sha256"]  # logged here, and hashed
    assert _of_the_body(screened) == _of_the_body(unscreened)


VISION = "llava:7b"
_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
    "AAAABJRU5ErkJggg=="
)
_LOOK = {"role": "user", "content": "what is this?"}
_DATA_URL = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _IMAGE}}


def _recorder_behind(
    servers: ServerThread, emulator: Emulator, tmp_path: Path, log_prompts: bool
) -> Iterator[tuple[Proxy, Recorder]]:
    """`limited`'s limits in a proxy in front of a recorder of what reaches the backend."""
    front = Recorder(emulator.url)
    port = free_port()
    runner = servers.serve(front.app, port)
    usage = file_usage(tmp_path, log_prompts=log_prompts)
    limits = Limits(max_messages=3, max_prompt_chars=100)
    prx = Proxy(servers, [f"http://127.0.0.1:{port}"], limits=limits, usage=usage)
    yield prx, front
    prx.stop()
    servers.stop(runner)


@pytest.fixture
def recorded(
    servers: ServerThread, emulator: Emulator, tmp_path: Path
) -> Iterator[tuple[Proxy, Recorder]]:
    yield from _recorder_behind(servers, emulator, tmp_path, True)


@pytest.fixture
def unlogged(
    servers: ServerThread, emulator: Emulator, tmp_path: Path
) -> Iterator[tuple[Proxy, Recorder]]:
    """`recorded` with prompts unlogged, as by default: the usage event keeps a digest."""
    yield from _recorder_behind(servers, emulator, tmp_path, False)


# What an answer says of its own request, and auto's score, which moves with what it
# learned of the request before: left out when two are compared.
_OWN_HEADERS = ("Date", "X-Request-Id", "Content-Length", "X-Autoroute-Score")


async def _served(url: str, path: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.post(url + path, data=raw) as resp:
        headers = CIMultiDict(resp.headers)
        for own in _OWN_HEADERS:
            headers.popall(own, None)
        return resp.status, dict(headers), await resp.read()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/api/chat",
            b'{"model": "%s", "messages": [%s], "stream": false}'
            % (VISION.encode(), orjson.dumps({**_LOOK, "images": [_IMAGE]})),
        ),
        (
            "/api/chat",
            orjson.dumps({"model": "auto", "messages": [{**_LOOK, "images": [_IMAGE]}]}),
        ),
        (
            "/api/generate",
            orjson.dumps({"model": VISION, "prompt": "what?", "images": [_IMAGE], "stream": False}),
        ),
        (
            "/v1/chat/completions",
            orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": [_DATA_URL]}]}),
        ),
        # Keys renamed as Go reads them, and a number no integer in an int field, which
        # goes as the client wrote it.
        ("/api/generate", b'{"MODEL": "%s", "Prompt": "hi", "stream": false}' % MODEL.encode()),
        (
            "/api/chat",
            b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "stream": false,'
            b' "top_logprobs": 1.5}' % MODEL.encode(),
        ),
    ],
)
async def test_a_large_body_the_limits_pass_is_taken_as_the_worker_read_it(
    recorded: tuple[Proxy, Recorder],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    body: bytes,
) -> None:
    """A picture for a vision model makes a body as large as any: the proxy's process
    does not read it again. The answer, the bytes forwarded and the usage event are
    those of the body read in the proxy."""
    forwarded, _ = await _read_in_either(recorded, tmp_path, monkeypatch, path, body)
    assert forwarded == 2


async def _read_in_either(
    behind: tuple[Proxy, Recorder],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    body: bytes,
) -> tuple[int, dict[str, Any]]:
    """`body` sent twice, read in the proxy's process and then in the worker: the same
    answer, the same bytes forwarded, the same usage event (the worker's returned).
    How many times it was forwarded, once per reading or never."""
    prx, front = behind
    reads = where_called(monkeypatch, go_json, "read_quickly")
    as_read = await _served(prx.url, path, body)
    assert len(reads) == 1
    monkeypatch.setattr(body_screen, "SCREENED_BYTES", 0)  # every body is large now
    assert await _served(prx.url, path, body) == as_read
    assert len(reads) == 1, "the body was read in the proxy's process"
    forwarded = [sent for seen, sent in front.seen if seen == path]
    assert len(forwarded) in (0, 2)
    assert forwarded[:1] == forwarded[1:]
    assert await wait_until(lambda: len(_events(tmp_path)) == 2)
    unscreened, screened = _events(tmp_path)
    assert _of_the_body(screened) == _of_the_body(unscreened)
    return len(forwarded), screened


async def test_a_large_body_giving_a_key_twice_the_limits_pass_is_read_in_the_proxy(
    recorded: tuple[Proxy, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Go's merge of a key given twice is more than the worker hands back (the route's
    refusal of an earlier value, its numbers as written): such a body is read in the
    proxy, and goes as it goes when small."""
    prx, front = recorded
    body = b'{"model": "%s", "prompt": "x", "stream": true, "stream": false}' % MODEL.encode()
    reads = where_called(monkeypatch, go_json, "read_quickly")
    as_read = await _served(prx.url, "/api/generate", body)
    read_in_proxy = len(reads)
    monkeypatch.setattr(body_screen, "SCREENED_BYTES", 0)
    assert await _served(prx.url, "/api/generate", body) == as_read
    assert len(reads) == 2 * read_in_proxy
    assert front.seen[-1] == front.seen[-2]


# A picture of the size a vision model's users send, as base64 (no character escaped).
_PICTURE = base64.b64encode(random.Random(8).randbytes(3 << 16)).decode()
# A prompt of megabytes, over `limits.max_prompt_chars` of `Limits(max_prompt_chars=100)`.
_LONG_PROMPT = "a " * (1 << 20)
# More than the pickled answer needs for a status, a message and a digest.
_SMALL = 4096


def test_the_workers_answer_carries_no_prompt_the_usage_event_does_not_keep() -> None:
    """The worker's answer is made again in the proxy's process (unpickled) by a thread
    that holds the event loop meanwhile: of a refused prompt of megabytes it carries
    what the usage event keeps, its digest, with prompts unlogged (the default), not
    the prompt; of a body forwarded otherwise than sent (a client's spaces), the
    document and the bytes forwarded carry its picture once, not twice."""
    limits = Limits(max_prompt_chars=100)
    refused = orjson.dumps({"model": MODEL, "prompt": _LONG_PROMPT})
    answer = body_screen.screened("/api/generate", refused, 0, limits, None, None)
    assert isinstance(answer, body_screen.Refused)
    assert len(pickle.dumps(answer)) < _SMALL, "the prompt crosses to the proxy's process"
    # As Python's json writes it: spaces, so what is forwarded is not the body as sent.
    doc = {"model": VISION, "prompt": "what is this?", "images": [_PICTURE], "stream": False}
    sent = json.dumps(doc).encode()
    read = body_screen.screened("/api/generate", sent, 0, limits, None, None)
    assert isinstance(read, body_screen.Read)
    assert read.doc == doc
    assert read.body(sent) == go_json.read(sent)[1] != sent
    beyond = len(pickle.dumps(read)) - len(pickle.dumps(read.doc))
    assert beyond < _SMALL, "the picture crosses to the proxy's process twice"


@pytest.mark.parametrize(
    ("path", "doc"),
    [
        ("/api/generate", {"model": MODEL, "prompt": "x" * 101}),  # refused
        ("/api/generate", {"model": VISION, "prompt": "what?", "images": [_PICTURE]}),
        ("/api/chat", {"model": "auto", "messages": [{**_LOOK, "images": [_PICTURE]}]}),
    ],
)
async def test_a_large_body_goes_as_read_in_the_proxy_with_prompts_unlogged(
    unlogged: tuple[Proxy, Recorder],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    doc: dict[str, Any],
) -> None:
    """The worker hands back a digest of the prompt, not its text, and a picture written
    with a client's spaces as its place in the body sent: the answer, the bytes
    forwarded and the usage event are still those of the body read in the proxy."""
    body = json.dumps({**doc, "stream": False}).encode()  # spaces: not forwarded as sent
    _, screened = await _read_in_either(unlogged, tmp_path, monkeypatch, path, body)
    assert screened["prompt_sha256"] and screened.get("prompt") is None


EXPLAIN = "/api/autoroute/explain"


@pytest.mark.parametrize(
    ("query", "body", "unread"),
    [
        ("", {"model": "auto", "prompt": "x" * 101}, True),
        ("", {"prompt": "x" * 101}, True),  # no model: explain ranks for auto's
        ("", {"model": "auto:nope", "messages": [{"role": "user", "content": "hi"}] * 4}, True),
        ("?path=/v1/chat/completions", {"model": "auto", "messages": _LONG_CHAT}, True),
        # What explain refuses before the limits, in its own words: read in the proxy.
        ("", {"model": MODEL, "prompt": "x" * 101}, False),
        ("?path=/api/embed", {"model": "auto", "input": ["x" * 101]}, False),
    ],
)
async def test_explain_refuses_a_large_body_the_limits_refuse_unread(
    limited: Proxy,
    monkeypatch: pytest.MonkeyPatch,
    query: str,
    body: dict[str, Any],
    unread: bool,
) -> None:
    """Explain applies the inference routes' limits, and a client posting large bodies
    over them to it must not hold the loop either; what it answers is as before."""
    reads = where_called(monkeypatch, go_json, "read_quickly")
    as_read = await _answer(limited.url, EXPLAIN + query, body)
    assert as_read[0] in (400, 413)
    assert len(reads) == 1
    monkeypatch.setattr(body_screen, "SCREENED_BYTES", 0)
    assert await _answer(limited.url, EXPLAIN + query, body) == as_read
    assert len(reads) == (1 if unread else 2), "read in the proxy's process or not"


@pytest.mark.parametrize(
    "raw",
    [
        # Go merges what a key given twice holds: the limits read what it ends with.
        b'{"model": "%s", "prompt": "x", "stream": true, "prompt": "%s", "stream": false}',
        # Go's error for the earlier value comes after the proxy's own bounds.
        b'{"model": "%s", "prompt": "%s", "stream": 5, "stream": false}',
        b'{"model": "%s", "messages": [], "stream": 5, "messages": %s}',
    ],
)
async def test_a_large_body_giving_a_key_twice_the_limits_refuse_is_refused_unread(
    limited: Proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: bytes
) -> None:
    """A key given twice takes a body through Go's merge, a slower reading: a client
    adding one to a body the limits refuse gets no further than without it."""
    chat = b"messages" in raw
    path = "/api/chat" if chat else "/api/generate"
    second = orjson.dumps([{"role": "user", "content": "hi"}] * 4) if chat else b"x" * 101
    body = raw % (MODEL.encode(), second)
    reads = where_called(monkeypatch, go_json, "read_quickly")

    async def answer() -> tuple[int, bytes]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(limited.url + path, data=body) as resp,
        ):
            return resp.status, await resp.read()

    as_read = await answer()
    assert as_read[0] in (400, 413), as_read
    read_in_proxy = len(reads)
    assert read_in_proxy >= 1
    monkeypatch.setattr(body_screen, "SCREENED_BYTES", 0)
    assert await answer() == as_read
    assert len(reads) == read_in_proxy, "the refused body was read in the proxy's process"
    assert await wait_until(lambda: len(_events(tmp_path)) == 2)
    unscreened, screened = _events(tmp_path)
    assert _of_the_body(screened) == _of_the_body(unscreened)


async def _worker_processes(url: str) -> list[Any]:
    """The worker's processes, once a body refused in it (every body large) was answered."""
    status, _, answer = await _answer(url, "/api/generate", _REFUSED)
    assert (status, orjson.loads(answer)) == (413, {"error": _TOO_LONG})
    pool = body_screen.worker()
    assert pool is not None
    return list(pool._processes.values())


async def test_the_worker_stops_with_the_proxy(
    limited: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(body_screen, "SCREENED_BYTES", 0)
    processes = await _worker_processes(limited.url)
    assert processes
    limited.stop()
    assert all(not process.is_alive() for process in processes)


async def test_a_body_the_dead_worker_would_have_read_is_read_in_the_proxy(
    limited: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed (the kernel's out-of-memory killer) leaves the bodies to the
    proxy's reading, with the same answers, and is not started again for each large
    body: one that dies at once would be started over and over."""
    monkeypatch.setattr(body_screen, "_resting_until", body_screen._resting_until)  # restored
    monkeypatch.setattr(body_screen, "SCREENED_BYTES", 0)
    reads = where_called(monkeypatch, go_json, "read_quickly")
    for process in await _worker_processes(limited.url):
        process.kill()
    assert reads == []
    for _ in range(2):
        status, _, answer = await _answer(limited.url, "/api/generate", _REFUSED)
        assert (status, orjson.loads(answer)) == (413, {"error": _TOO_LONG})
    assert len(reads) == 2
    assert body_screen.worker() is None
    assert body_screen._pool is None, "a dead worker was started again at once"


async def test_feedback_longer_than_any_rating_is_refused_unread(
    limited: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No rating with its comment comes near `MAX_FEEDBACK_BYTES`: a longer feedback body
    is a 413 in Ollama's shape before any of it is read, while the longest rating, every
    character of its comment escaped, is read and accepted."""
    reads = where_called(monkeypatch, go_json, "read_quickly")
    url = limited.url + "/api/autoroute/feedback"
    longest = b'{"request_id": "r-1", "rating": 1, "comment": "%s"}' % (b"\\u00e9" * MAX_COMMENT)
    spaced = longest + b" " * MAX_FEEDBACK_BYTES
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=longest) as resp:
            assert resp.status == 202, await resp.read()
        async with http.post(url, data=spaced) as resp:
            status, doc = resp.status, orjson.loads(await resp.read())
    assert status == 413
    assert doc == {"error": f"request body too large (limit {MAX_FEEDBACK_BYTES} bytes)"}
    assert len(reads) == 1


async def test_a_large_model_change_is_read_off_the_loop(
    limited: Proxy, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy, pull, create or delete names its models in its body, which the proxy
    reads to route it: a large one in a reader thread, as an inference body is read."""
    reads = where_called(monkeypatch, go_json, "read_quickly")
    body = {"source": MODEL, "destination": "copied:1", "padding": "x" * (2 * INLINE)}
    async with (
        aiohttp.ClientSession() as http,
        http.post(limited.url + "/api/copy", json=body) as resp,
    ):
        assert resp.status == 200, await resp.read()
    assert reads == [False]
    assert "copied:1" in emulator.state.store

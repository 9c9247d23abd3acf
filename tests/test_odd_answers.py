"""Inference answers of another shape than Ollama's (a broken Ollama-compatible server,
a gateway, the wrong service behind a `backends:` URL): the proxy relays what the
backend said, as it said it, with its status and its X-Request-Id, writes one usage
event for the request, logs no error of its own, and serves the next request."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.app import APP_KEY
from proxy.backends import UNAVAILABLE_STATUSES
from proxy.config_selector import Selector
from proxy.config_services import Cloud, CloudProvider, Usage
from proxy.config_serving import Health
from tests.support import Proxy, RawBackend, ServerThread, free_port, wait_until

ODD = "llama3.2:3b"
CASE_HEADER = "X-Case"
_DETAILS = {"family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}
_ENTRY = {"name": ODD, "model": ODD, "digest": "d1", "size": 2019393189, "details": _DETAILS}
SHOW = {
    "details": _DETAILS,
    "capabilities": ["completion", "tools"],
    "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
}
NATIVE = ("/api/chat", "/api/generate")
ALL = (*NATIVE, "/api/embed", "/v1/chat/completions")
JSON, NDJSON, SSE = "application/json", "application/x-ndjson", "text/event-stream"


@dataclasses.dataclass(frozen=True)
class Case:
    body: bytes
    content_type: str | None = JSON
    status: int = 200
    chunked: bool = False
    paths: tuple[str, ...] = ALL
    # The whole answer as bytes on the wire (framing aiohttp would not write), the
    # connection closed after it; `body` is then what the client gets, and
    # `content_type` what the bytes name.
    raw: bytes = b""


def _lines(*docs: Any) -> bytes:
    return b"".join((d if isinstance(d, bytes) else orjson.dumps(d)) + b"\n" for d in docs)


_CHUNK = {"model": ODD, "created_at": "2024-01-01T00:00:00Z"}
_TOKEN = {**_CHUNK, "message": {"role": "assistant", "content": "hi"}, "done": False}
_COUNTERS = {
    "total_duration": 5,
    "load_duration": 1,
    "prompt_eval_count": 3,
    "prompt_eval_duration": 1,
    "eval_count": 2,
    "eval_duration": 1,
}
_FINAL = {**_CHUNK, "message": {"role": "assistant", "content": ""}, "done": True}
_DONE = {**_FINAL, "done_reason": "stop", **_COUNTERS}
NORMAL = Case(_lines(_TOKEN, _DONE), NDJSON, chunked=True)


def _stream(*docs: Any) -> Case:
    return Case(_lines(*docs), NDJSON, chunked=True, paths=NATIVE)


def _sse(*events: bytes) -> Case:
    return Case(
        b"".join(b"data: " + e + b"\n\n" for e in events),
        SSE,
        chunked=True,
        paths=("/v1/chat/completions",),
    )


_OPENAI = {"id": "c", "object": "chat.completion.chunk", "model": ODD, "created": 1}
_DELTA = orjson.dumps({**_OPENAI, "choices": [{"index": 0, "delta": {"content": "hi"}}]})
_STOP = {**_OPENAI, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}

OWN_HEADERS = "the proxy's own headers from the backend"
CASES: dict[str, Case] = {
    "array": Case(b"[]"),
    "null": Case(b"null"),
    "number": Case(b"5"),
    "string": Case(b'"ok"'),
    "object without model, message, done": Case(b'{"x":1}'),
    "chunked array": Case(b"[1,2]", chunked=True),
    "non-JSON line": _stream(_TOKEN, b"not json", _DONE),
    "array line": _stream(_TOKEN, b"[1]", _DONE),
    "blank line": _stream(_TOKEN, b"", _DONE),
    "2 MB line": _stream({**_TOKEN, "message": {"content": "x" * (2 << 20)}}, _DONE),
    "no trailing newline": Case(_lines(_TOKEN, _DONE)[:-1], NDJSON, chunked=True),
    "done a string": _stream(_TOKEN, {**_DONE, "done": "yes"}),
    "eval_count a string": _stream(_TOKEN, {**_DONE, "eval_count": "many"}),
    "negative durations": _stream(_TOKEN, {**_DONE, "eval_duration": -5, "load_duration": -1}),
    "float durations": _stream(_TOKEN, {**_DONE, "eval_duration": 1.5e9, "eval_count": 2.5}),
    "counters beyond int64": _stream(
        _TOKEN, orjson.dumps(_DONE).replace(b'"eval_count":2', b'"eval_count":' + b"9" * 30)
    ),
    "done_reason a number": _stream(_TOKEN, {**_DONE, "done_reason": 5}),
    "no done": _stream(_TOKEN, _TOKEN),
    "text/plain": Case(_lines(_TOKEN, _DONE), "text/plain", chunked=True),
    "text/event-stream on a native route": Case(_lines(_TOKEN, _DONE), SSE, chunked=True),
    "no content type": Case(
        _lines(_TOKEN, _DONE),
        None,
        raw=b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b"
        % (len(_lines(_TOKEN, _DONE)), _lines(_TOKEN, _DONE)),
    ),
    "not UTF-8, length": Case(b'{"model":"\xff\xfe","done":true}', JSON),
    "not UTF-8, chunked": Case(_lines(_TOKEN)[:-1] + b"\xff\xfe\n", NDJSON, chunked=True),
    "SSE non-JSON data": _sse(_DELTA, b"not json", orjson.dumps(_STOP), b"[DONE]"),
    "SSE without [DONE]": _sse(_DELTA, orjson.dumps(_STOP)),
    "SSE usage a string": _sse(_DELTA, orjson.dumps({**_STOP, "usage": "many"}), b"[DONE]"),
    "SSE usage tokens strings": _sse(
        orjson.dumps({**_STOP, "usage": {"prompt_tokens": "3", "completion_tokens": [1]}}),
        b"[DONE]",
    ),
    "Content-Length shorter than the body": Case(
        b'{"a":', None, raw=b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + b'{"a":1}\n'
    ),
    "Content-Length and chunked": Case(
        b'{"a":1}\n',
        None,
        raw=b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'8\r\n{"a":1}\n\r\n0\r\n\r\n',
    ),
    "103 before the answer": Case(
        b'{"a":1}',
        None,
        raw=b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
        b'HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{"a":1}',
    ),
    "204 with a body": Case(b"", None, status=204, raw=b'HTTP/1.1 204 No Content\r\n\r\n{"a":1}\n'),
    "HTTP/1.0 until the close": Case(b'{"a":1}\n', None, raw=b'HTTP/1.0 200 OK\r\n\r\n{"a":1}\n'),
    # What the proxy writes itself (another autoroute in front of the backend, a
    # gateway naming requests) and a header the backend's Connection lists.
    OWN_HEADERS: Case(
        _lines(_DONE),
        JSON,
        raw=b"HTTP/1.1 200 OK\r\nX-Request-Id: backend-id\r\nX-Autoroute-Model: other\r\n"
        b"X-Autoroute-Reason: backend\r\nConnection: X-Hop\r\nX-Hop: 1\r\n"
        b"X-Lf: a\nX-Request-Id: backend-id\r\nX-Nul: a\x00b\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
        % (len(_lines(_DONE)), _lines(_DONE)),
    ),
    # A head whose lines, its last (empty) one too, end in a bare LF, as Go's transport
    # reads them (RFC 9112, 2.2).
    "head lines ending in LF": Case(
        _lines(_DONE),
        JSON,
        raw=b"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: %d\n\n%b"
        % (len(_lines(_DONE)), _lines(_DONE)),
    ),
    "head ending in CRLF LF": Case(
        _lines(_DONE),
        JSON,
        raw=b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\n%b"
        % (len(_lines(_DONE)), _lines(_DONE)),
    ),
    # Ollama sends no trailers; a client may refuse an answer for ones it cannot read.
    "garbage chunk trailers": Case(
        b'{"a":1}\n',
        JSON,
        raw=b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n8\r\n{"a":1}\n\r\n0\r\n'
        b"no colon\r\nX-\x01: \x00\r\n\r\n",
    ),
    "400 plain text": Case(b"bad request", "text/plain", status=400),
    "404 HTML": Case(b"<html><body>Not Found</body></html>", "text/html", status=404),
    "500 JSON array": Case(b'["boom"]', status=500),
    "500 empty": Case(
        b"",
        None,
        status=500,
        raw=b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    ),
    "502 chunked text": Case(b"upstream gone", "text/plain", status=502, chunked=True),
}


def _standin_app() -> web.Application:
    """Lists ODD as Ollama does; answers each inference as the request's X-Case says."""

    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"models": [_ENTRY]})

    async def ps(request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    async def show(request: web.Request) -> web.Response:
        return web.json_response(SHOW)

    async def infer(request: web.Request) -> web.StreamResponse:
        await request.read()
        name = request.headers.get(CASE_HEADER, "")
        case = CASES.get(name, NORMAL)
        if case.raw:
            assert request.transport is not None
            request.transport.write(case.raw)
            request.transport.close()
            return web.Response()  # never reaches the proxy
        if case.chunked:
            resp = web.StreamResponse(status=case.status)
            if case.content_type is not None:
                resp.headers["Content-Type"] = case.content_type
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            # Two writes: a line boundary need not be a read boundary.
            half = len(case.body) // 2
            await resp.write(case.body[:half])
            await resp.write(case.body[half:])
            await resp.write_eof()
            return resp
        headers = {} if case.content_type is None else {"Content-Type": case.content_type}
        resp = web.Response(status=case.status, body=case.body, headers=headers)
        if case.content_type is None:
            resp.content_type = ""  # aiohttp's default would name one
        return resp

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    for path in ALL:
        app.router.add_post(path, infer)
    return app


@dataclasses.dataclass
class Fleet:
    proxy: Proxy
    events: Path


@pytest.fixture(scope="module")
def fleet(servers: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    port = free_port()
    standin = servers.serve(_standin_app, port)
    scratch = tmp_path_factory.mktemp("odd")
    events = scratch / "events.jsonl"
    usage = Usage(
        file_path=str(events), spool_dir=str(scratch / "spool"), flush_interval_seconds=0.02
    )
    try:
        proxy = Proxy(
            servers,
            [f"http://127.0.0.1:{port}"],
            health=Health(interval_seconds=0.2, failure_threshold=1),
            selector=Selector(embedding_model=ODD),
            usage=usage,
        )
        try:
            yield Fleet(proxy, events)
        finally:
            proxy.stop()
    finally:
        servers.stop(standin)


def _request(path: str, model: str, stream: bool) -> dict[str, Any]:
    if path == "/api/embed":
        return {"model": model, "input": "hi"}
    if path == "/api/generate":
        return {"model": model, "prompt": "hi", "stream": stream}
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def _events(path: Path) -> list[dict[str, Any]]:
    """The events written whole: a batch larger than the file's buffer reaches the file
    in more than one write, and a read between them sees its last line cut."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]


async def _send(
    http: aiohttp.ClientSession, fleet: Fleet, path: str, body: Any, case: str
) -> tuple[int, bytes, str, str | None]:
    """(status, body, X-Request-Id, Content-Type) of the proxy's answer."""
    headers = {CASE_HEADER: case} if case else {}
    async with http.post(fleet.proxy.url + path, json=body, headers=headers) as resp:
        answer = await resp.read()
        request_id = resp.headers.get("X-Request-Id", "")
        assert request_id, (path, resp.headers)
        if body["model"] == "auto" and resp.status != 503:
            assert resp.headers.get("X-Autoroute-Model") == ODD
        return resp.status, answer, request_id, resp.headers.get("Content-Type")


async def _http10(fleet: Fleet, path: str, case: str) -> tuple[int, bytes, str]:
    """(status, body, X-Request-Id) of an HTTP/1.0 request for ODD."""
    body = orjson.dumps(_request(path, ODD, True))
    reader, writer = await asyncio.open_connection("127.0.0.1", fleet.proxy.port)
    try:
        writer.write(
            b"POST %b HTTP/1.0\r\nContent-Length: %d\r\n%b: %b\r\n\r\n%b"
            % (path.encode(), len(body), CASE_HEADER.encode(), case.encode(), body)
        )
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), rest, fields["x-request-id"]


@pytest.mark.parametrize("name", list(CASES))
async def test_an_odd_answer_is_relayed_as_it_came(
    fleet: Fleet, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On each route the case applies to, for the model named and for auto, streamed and
    not, and for an HTTP/1.0 client: the backend's status, Content-Type and body as it
    sent them, an X-Request-Id, one usage event each with counts an int64 holds."""
    caplog.set_level(logging.WARNING)
    case = CASES[name]
    ids = []
    async with aiohttp.ClientSession() as http:
        for path in case.paths:
            for model in (ODD, "auto"):
                for stream in (True, False):
                    body = _request(path, model, stream)
                    status, answer, request_id, kind = await _send(http, fleet, path, body, name)
                    where = (path, model, stream)
                    ids.append(request_id)
                    if status == 503 and case.status in UNAVAILABLE_STATUSES:
                        # The backend said it cannot serve: its circuit is open, and
                        # the proxy answers for it, in Ollama's shape.
                        assert set(orjson.loads(answer)) == {"error"}, where
                        continue
                    assert status == case.status, (where, answer[:200])
                    assert answer == case.body, (where, answer[:200])
                    assert kind == case.content_type, where
        if case.status not in UNAVAILABLE_STATUSES:
            # An HTTP/1.0 client: the body without chunked framing, ended by the close.
            status, answer, request_id = await _http10(fleet, case.paths[0], name)
            assert (status, answer) == (case.status, case.body)
            ids.append(request_id)
        # The next ordinary request is served as ever (once a health check closed the
        # circuit a "cannot serve" opened).
        states = fleet.proxy.app[APP_KEY].backends.states
        assert await wait_until(lambda: all(not s.last_error for s in states))
        body = _request("/api/chat", ODD, True)
        status, answer, request_id, _ = await _send(http, fleet, "/api/chat", body, "")
        assert (status, answer) == (200, NORMAL.body)
        ids.append(request_id)

    def written() -> bool:
        seen = {e["request_id"] for e in _events(fleet.events)}
        return seen >= set(ids)

    assert await wait_until(written), name
    events = [e for e in _events(fleet.events) if e["request_id"] in ids]
    assert sorted(e["request_id"] for e in events) == sorted(ids)
    for event in events:
        outcome = event["outcome"]
        for key in ("eval_count", "prompt_eval_count", "eval_duration", "load_duration"):
            value = outcome.get(key)
            assert value is None or 0 <= value < 1 << 63, (key, value)
    assert not _errors_logged(caplog), _errors_logged(caplog)


async def test_an_answer_framed_two_ways_reaches_a_keep_alive_http10_client_framed_one_way(
    fleet: Fleet,
) -> None:
    """A backend's answer with both Content-Length and chunked framing is chunked (RFC
    9112, 6.3: the Content-Length is not forwarded). An HTTP/1.0 client that asks to keep
    its connection gets the body without chunked framing: its end is the connection's
    close, never the backend's Content-Length, which would leave the body's rest to be
    read as the next answer (or wait for bytes that never come)."""
    name = "Content-Length and chunked"
    body = orjson.dumps(_request("/api/chat", ODD, False))
    reader, writer = await asyncio.open_connection("127.0.0.1", fleet.proxy.port)
    try:
        writer.write(
            b"POST /api/chat HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: %d\r\n"
            b"%b: %b\r\n\r\n%b" % (len(body), CASE_HEADER.encode(), name.encode(), body)
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        fields = dict(line.lower().split(": ", 1) for line in head.decode().split("\r\n")[1:-2])
        assert "content-length" not in fields, head
        rest = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.0 200 ") and rest == CASES[name].body


async def test_the_answer_carries_the_proxys_own_headers_once_and_no_hop_by_hop_one(
    fleet: Fleet,
) -> None:
    """A backend whose answer has an X-Request-Id or X-Autoroute-* headers of its own (an
    autoroute or a gateway in front of it), one after a bare LF too: the client reads
    the proxy's alone, once, so that the id it rates by is its request's (its usage
    event's); a header the backend's `Connection` names is the hop's, not the client's
    (RFC 9110, 7.6.1); and a NUL in a value reaches the client as a space, where a
    client would refuse the whole answer."""
    ids = []
    async with aiohttp.ClientSession() as http:
        for path in ALL:
            for model in (ODD, "auto"):
                for stream in (True, False):
                    body = _request(path, model, stream)
                    headers = {CASE_HEADER: OWN_HEADERS}
                    async with http.post(fleet.proxy.url + path, json=body, headers=headers) as r:
                        await r.read()
                        where = (path, model, stream)
                        request_ids = r.headers.getall("X-Request-Id", [])
                        assert len(request_ids) == 1 and request_ids[0] != "backend-id", where
                        ids.append(request_ids[0])
                        assert r.headers.getall("X-Autoroute-Model", []) == [ODD], where
                        reasons = r.headers.getall("X-Autoroute-Reason", [])
                        assert "backend" not in reasons and len(reasons) <= 1, where
                        assert "X-Hop" not in r.headers, where
                        assert r.headers["X-Nul"] == "a b", where

    def written() -> bool:
        return {e["request_id"] for e in _events(fleet.events)} >= set(ids)

    assert await wait_until(written)


class GarbageBackend(RawBackend):
    """A raw backend that lists ODD and answers /api/generate with `garbage`, either on
    a connection that carried an answer before it (`reused`: the first answer on each
    connection is an ordinary one, kept alive) or on a new one (every answer closes
    its connection)."""

    def __init__(self, garbage: bytes, reused: bool) -> None:
        super().__init__()
        self.garbage = garbage
        self.reused = reused

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = 0
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                _, path, _ = head.split(" ", 2)
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                doc: Any = {"models": []}
                if path == "/api/tags":
                    doc = {"models": [_ENTRY]}
                elif path == "/api/show":
                    doc = SHOW
                elif path == "/api/generate":
                    if answered or not self.reused:
                        writer.write(self.garbage)
                        break
                    doc = _DONE
                payload = orjson.dumps(doc)
                close = b"" if self.reused else b"Connection: close\r\n"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%b"
                    b"Content-Length: %d\r\n\r\n%b" % (close, len(payload), payload)
                )
                await writer.drain()
                answered += 1
                if not self.reused:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


_NOT_QUOTED = "(not quoted: it may be the end of an earlier answer)"


@pytest.mark.parametrize(
    ("garbage", "reused", "error"),
    [
        (b"garbage\r\n\r\n", False, 'malformed status line "garbage" on a new connection'),
        (b"garbage\r\n\r\n", True, "malformed status line on a reused connection " + _NOT_QUOTED),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            True,
            'unsupported Transfer-Encoding "gzip, chunked" on a reused connection',
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\n{}",
            False,
            'obsolete line folding "folded" on a new connection',
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\n{}",
            True,
            'obsolete line folding "folded" on a reused connection',
        ),
    ],
    ids=["status line, new", "status line, reused", "gzip, chunked", "fold, new", "fold, reused"],
)
async def test_a_head_the_proxy_cannot_read_is_a_502_saying_what_is_known(
    servers: ServerThread, garbage: bytes, reused: bool, error: str
) -> None:
    """A backend whose answer has a head the proxy cannot read: the client gets a 502 in
    Ollama's shape that says what was malformed and whether the connection had carried
    an answer before. Only there may the bytes be the end of an earlier answer that ran
    past its framing (another client's), so only there is a malformed status line not
    quoted; a well-formed one starts this answer's own head."""
    backend = GarbageBackend(garbage, reused)
    servers.call(backend.start)
    proxy = Proxy(servers, [backend.url], health=Health(interval_seconds=3600))
    try:
        body = _request("/api/generate", ODD, False)
        async with aiohttp.ClientSession() as http:
            # Reused: the first request on a connection is answered, so the second
            # comes on a pooled one.
            for _ in range(3):
                async with http.post(proxy.url + "/api/generate", json=body) as resp:
                    status, answer = resp.status, await resp.read()
                if status != 200:
                    break
        assert (status, orjson.loads(answer)) == (502, {"error": f"{backend.url}: {error}"})
    finally:
        proxy.stop()
        servers.call(backend.stop)


def _errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the proxy or aiohttp logged at ERROR or above."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith(("autoroute", "aiohttp"))
    ]


CLOUD_ENV = "ODD_ANSWERS_CLOUD_KEY"
LOCAL = "qwen2.5:7b"  # no local backend serves it: the cloud does


@pytest.mark.parametrize("stream", [True, False])
async def test_a_cloud_answer_of_another_shape_is_the_clouds_error(
    servers: ServerThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
) -> None:
    """An OpenAI-compatible server behind the cloud fallback that sends choices of
    another shape: the client reads the cloud's error in Ollama's shape (a 502, or a
    stream's last line), not aiohttp's 500, and the request has its one usage event."""
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv(CLOUD_ENV, "k")

    async def completions(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": SSE})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":5}\n\ndata: [DONE]\n\n')
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    port = free_port()
    cloud = servers.serve(lambda: app, port)
    provider = CloudProvider(
        api="openai",
        base_url=f"http://127.0.0.1:{port}/v1",
        key_env=CLOUD_ENV,
        models={"*": "m"},
        monthly_token_budget=1000,
    )
    events = tmp_path / "events.jsonl"
    usage = Usage(file_path=str(events), spool_dir=str(tmp_path / "s"), flush_interval_seconds=0.02)
    proxy = Proxy(
        servers,
        [f"http://127.0.0.1:{free_port()}"],
        cloud=Cloud(enabled=True, providers={"openai": provider}),
        usage=usage,
    )
    try:
        body = {"model": LOCAL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        async with (
            aiohttp.ClientSession() as http,
            http.post(proxy.url + "/api/chat", json=body) as resp,
        ):
            answer = await resp.read()
            request_id = resp.headers["X-Request-Id"]
        error = "cloud openai: the cloud sent choices that are not a list"
        assert (resp.status, orjson.loads(answer.splitlines()[-1])) == (
            200 if stream else 502,
            {"error": error},
        )
        assert await wait_until(lambda: len(_events(events)) == 1)
        assert _events(events)[0]["request_id"] == request_id
    finally:
        proxy.stop()
        servers.stop(cloud)
    assert not _errors_logged(caplog), _errors_logged(caplog)

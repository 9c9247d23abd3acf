"""The JSON the proxy writes itself in Ollama's shape carries the escapes Go's
encoding/json writes (gin's c.JSON, json.Marshal and a json.Encoder escape <, > and &
as \\u003c, \\u003e, \\u0026, and U+2028, U+2029 always): merged model lists, errors, a
stream's error line. A client that compares bytes, or a page that embeds them, sees
what Ollama sends."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from proxy.emulator.wire import dumps as go_marshal
from proxy.errors import error_body, stream_error_line
from tests.support import Emulator, Proxy, ServerThread

MODEL = "qwen2.5:7b"
MARK = "a<b>&c\u2028d\u2029"
ESCAPED = b"a\\u003cb\\u003e\\u0026c\\u2028d\\u2029"
RAW = (b"<", b">", b"&", "\u2028".encode(), "\u2029".encode())


def escaped_as_go(body: bytes) -> bool:
    return ESCAPED in body and not any(raw in body for raw in RAW)


async def fetch(url: str, method: str, path: str, body: object = None) -> tuple[int, bytes]:
    data = None if body is None else orjson.dumps(body)
    async with aiohttp.ClientSession() as http, http.request(method, url + path, data=data) as resp:
        return resp.status, await resp.read()


@pytest.fixture
def two_backends(
    servers: ServerThread, own_emulator: Emulator, emulator: Emulator
) -> Iterator[Proxy]:
    """Two backends: the proxy merges their lists and writes the result itself."""
    prx = Proxy(servers, [own_emulator.url, emulator.url])
    yield prx
    prx.stop()


@pytest.mark.parametrize("path", ["/api/tags", "/api/ps"])
async def test_merged_model_lists_keep_gos_escapes(
    own_emulator: Emulator, two_backends: Proxy, path: str
) -> None:
    store = own_emulator.state.store
    # /api/ps lists no parent (PsHandler): the quantization carries the mark there.
    store[MODEL] = dataclasses.replace(store[MODEL], parent_model=MARK, quantization_level=MARK)
    status, _ = await fetch(
        own_emulator.url, "POST", "/api/generate", {"model": MODEL, "prompt": "hi", "stream": False}
    )
    assert status == 200  # loaded: /api/ps lists it
    status, direct = await fetch(own_emulator.url, "GET", path)
    assert status == 200 and escaped_as_go(direct), direct  # as Ollama writes it
    status, proxied = await fetch(two_backends.url, "GET", path)
    assert status == 200 and escaped_as_go(proxied), proxied
    # The same list, read back: only the writing differs from orjson's.
    backend = orjson.loads(direct)["models"]
    assert [m for m in orjson.loads(proxied)["models"] if m in backend] == backend


@pytest.mark.parametrize(
    "path",
    ["/api/chat", "/v1/chat/completions", "/v1/messages"],
    ids=["ollama", "openai", "anthropic"],
)
def test_error_bodies_are_written_as_go_writes_them(path: str) -> None:
    body = error_body(path, 400, MARK)
    assert escaped_as_go(body)
    doc = orjson.loads(body)
    assert go_marshal(doc) == body  # the emulator's json.Marshal, key order kept
    assert MARK in (doc["error"] if path == "/api/chat" else doc["error"]["message"])


@pytest.mark.parametrize("path", ["/api/chat", "/v1/messages"])
@pytest.mark.parametrize("content_type", ["application/x-ndjson", "text/event-stream"])
def test_a_streams_error_line_is_written_as_go_writes_it(content_type: str, path: str) -> None:
    line = stream_error_line(content_type, MARK, path)
    assert escaped_as_go(line)
    payload = line.removeprefix(b"event: error\n").removeprefix(b"data: ").rstrip(b"\n")
    assert go_marshal(orjson.loads(payload)) == payload

"""Every endpoint through the proxy answers exactly as the backend does directly."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support import AUTO_NAMES, Emulator, Proxy, raw_request, without_auto

MODEL = "qwen2.5:7b"
CHAT = [{"role": "user", "content": "Why is the sky blue?"}]

# (method, path, JSON body or None)
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/", None),
    ("HEAD", "/", None),
    ("GET", "/api/version", None),
    ("HEAD", "/api/version", None),
    ("GET", "/api/status", None),
    ("GET", "/api/tags", None),
    ("HEAD", "/api/tags", None),
    ("POST", "/api/show", {"model": MODEL}),
    ("POST", "/api/show", {"model": "no-such-model"}),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "Hello"}),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "Hello", "stream": False}),
    (
        "POST",
        "/api/generate",
        {"model": "qwen2.5-coder:7b", "prompt": "def add(", "suffix": "return c"},
    ),
    (
        "POST",
        "/api/generate",
        {"model": MODEL, "prompt": "List", "format": "json", "stream": False},
    ),
    ("POST", "/api/generate", {"model": "no-such-model", "prompt": "Hello"}),
    ("POST", "/api/chat", {"model": MODEL, "messages": CHAT}),
    ("POST", "/api/chat", {"model": MODEL, "messages": CHAT, "stream": False}),
    ("POST", "/api/chat", {"model": "qwen3:8b", "messages": CHAT, "think": True}),
    ("POST", "/api/chat", {"model": MODEL, "messages": CHAT, "think": True}),
    (
        "POST",
        "/api/chat",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Current weather",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                            "required": ["city"],
                        },
                    },
                }
            ],
        },
    ),
    ("POST", "/api/embed", {"model": "nomic-embed-text", "input": ["a", "b"]}),
    ("POST", "/api/embeddings", {"model": "nomic-embed-text", "prompt": "a"}),
    ("GET", "/v1/models", None),
    ("HEAD", "/v1/models", None),
    ("HEAD", "/api/ps", None),
    ("GET", f"/v1/models/{MODEL}", None),
    ("GET", "/v1/models/no-such-model", None),
    ("GET", f"/v1/models/{MODEL}:local", None),
    ("GET", "/v1/models/gpt-oss:120b-cloud", None),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": CHAT}),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": CHAT, "stream": True}),
    (
        "POST",
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": CHAT,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "Once upon"}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "Once upon", "stream": True}),
    ("POST", "/v1/embeddings", {"model": "nomic-embed-text", "input": "hello"}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "Say hi"}),
    ("POST", "/v1/messages", {"model": MODEL, "max_tokens": 20, "messages": CHAT}),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
    ("POST", "/api/me", None),
    ("POST", "/api/signout", None),
    ("GET", "/no/such/path", None),
    ("POST", "/api/tags", {}),
    ("GET", "/api/chat", None),
]


# What the proxy adds to a backend's answer: its own headers, and the framing it
# chooses for a list it merged; the rest of the head is the backend's.
PROXY_HEADERS = {
    "x-request-id",
    "x-accel-buffering",
    "x-autoroute-model",
    "x-autoroute-profile",
    "x-autoroute-reason",
    "x-autoroute-score",
    "content-length",
    "transfer-encoding",
}


async def fetch(
    url: str, method: str, path: str, body: Any
) -> tuple[int, str, bytes, int, set[str]]:
    """Status, Content-Type, body, how many reads it took, and the header names other
    than the proxy's own."""
    data = None if body is None else orjson.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, data=data) as resp,
    ):
        chunks = [chunk async for chunk in resp.content.iter_any()]
        names = {name.lower() for name in resp.headers} - PROXY_HEADERS
        content_type = resp.headers.get("Content-Type", "")
        return resp.status, content_type, b"".join(chunks), len(chunks), names


@pytest.mark.parametrize(
    ("method", "path", "body"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS]
)
async def test_proxy_answers_as_the_backend(
    emulator: Emulator, proxy: Proxy, method: str, path: str, body: Any
) -> None:
    direct = await fetch(emulator.url, method, path, body)
    proxied = await fetch(proxy.url, method, path, body)
    if path in ("/api/tags", "/v1/models") and method == "GET":
        # The proxy lists `auto` and its profiles beside the backend's models.
        listed = list(orjson.loads(proxied[2]).values())[-1]
        assert {m.get("name") or m.get("id") for m in listed} >= set(AUTO_NAMES)
        proxied = (proxied[0], proxied[1], without_auto(proxied[2]), *proxied[3:])
        direct = (direct[0], direct[1], orjson.dumps(orjson.loads(direct[2])), *direct[3:])
    assert proxied[:3] == direct[:3]
    # No header of the proxy's making beyond its own (aiohttp's `Server`: Ollama
    # sends none).
    assert proxied[4] == direct[4]


async def test_ps_lists_the_same_loaded_models(emulator: Emulator, proxy: Proxy) -> None:
    # expires_at moves with the clock; the set of loaded models and their details don't.
    await fetch(
        proxy.url, "POST", "/api/generate", {"model": MODEL, "prompt": "x", "stream": False}
    )
    direct = orjson.loads((await fetch(emulator.url, "GET", "/api/ps", None))[2])
    proxied = orjson.loads((await fetch(proxy.url, "GET", "/api/ps", None))[2])
    strip = [{k: v for k, v in m.items() if k != "expires_at"} for m in direct["models"]]
    assert MODEL in {m["name"] for m in direct["models"]}
    assert [{k: v for k, v in m.items() if k != "expires_at"} for m in proxied["models"]] == strip


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/api/generate", {"model": MODEL, "prompt": "Hello"}, "application/x-ndjson"),
        ("/api/chat", {"model": MODEL, "messages": CHAT}, "application/x-ndjson"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": CHAT, "stream": True},
            "text/event-stream",
        ),
    ],
)
async def test_streams_arrive_chunk_by_chunk(
    proxy: Proxy, path: str, body: Any, content_type: str
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(proxy.url + path, json=body) as resp,
    ):
        assert resp.headers["Content-Type"].startswith(content_type)
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert resp.headers["X-Request-Id"]
        chunks = [chunk async for chunk in resp.content.iter_any()]
    # The emulator writes one event per chunk; the proxy must not merge them into one.
    assert len(chunks) > 5
    separator = b"\n" if content_type == "application/x-ndjson" else b"\n\n"
    assert all(chunk.endswith(separator) for chunk in chunks)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": MODEL, "prompt": "Hello"}),
        ("/api/generate", {"model": MODEL, "prompt": "Hello", "stream": False}),
        ("/api/chat", {"model": MODEL, "messages": CHAT}),
        ("/api/chat", {"model": MODEL, "messages": CHAT, "stream": False}),
        ("/api/embed", {"model": "nomic-embed-text", "input": "a"}),
        ("/api/embeddings", {"model": "nomic-embed-text", "prompt": "a"}),
        ("/v1/chat/completions", {"model": MODEL, "messages": CHAT}),
        ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "stream": True}),
        ("/v1/completions", {"model": MODEL, "prompt": "Once upon", "stream": True}),
        ("/v1/embeddings", {"model": "nomic-embed-text", "input": "hello"}),
        ("/v1/responses", {"model": MODEL, "input": "Say hi"}),
        ("/v1/messages", {"model": MODEL, "max_tokens": 20, "messages": CHAT}),
    ],
)
async def test_a_named_model_is_named_in_the_header(
    proxy: Proxy, path: str, body: dict[str, Any]
) -> None:
    """`X-Autoroute-Model` names the served model for a named model as for `auto`."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(proxy.url + path, json=body) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["X-Autoroute-Model"] == body["model"]
        answer = await resp.read()
    if not resp.headers["Content-Type"].startswith(("application/x-ndjson", "text/event-stream")):
        # Ollama's /api/embeddings answer names no model.
        assert orjson.loads(answer).get("model", body["model"]) == body["model"]


async def test_request_id_is_echoed_and_forwarded(proxy: Proxy) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy.url + "/api/version", headers={"X-Request-Id": "abc-123"}) as resp,
    ):
        assert resp.headers["X-Request-Id"] == "abc-123"
        assert (await resp.json())["version"]


@pytest.mark.parametrize("path", ["/api/chat", "/api/version"])
async def test_headers_the_clients_connection_names_stay_with_the_proxy(
    proxy: Proxy, emulator: Emulator, path: str
) -> None:
    """The fields a Connection header names are that connection's, as Connection
    itself is (RFC 9110, 7.6.1): removed before the request goes on, as the proxy
    removes those a backend's Connection names from its answer, whichever Connection
    line names them; the client's other fields go on."""
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    headers = [
        (b"Connection", b"X-Hop-One"),
        (b"X-Hop-One", b"1"),
        (b"X-Hop-Two", b"2"),
        (b"X-Kept", b"3"),
        (b"Connection", b" x-hop-two ,"),
    ]
    status, _, _ = await raw_request(
        proxy.port, "POST" if path == "/api/chat" else "GET", path, headers, body
    )
    assert status == 200
    forwarded = emulator.state.last_headers
    assert forwarded["x-kept"] == "3"
    assert "x-hop-one" not in forwarded and "x-hop-two" not in forwarded


async def test_own_health_endpoint_reports_backends(emulator: Emulator, proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/api/autoroute/health") as resp:
            assert resp.status == 200
            doc = await resp.json()
        async with session.get(proxy.url + "/api/autoroute/nope") as resp:
            assert resp.status == 404
            assert "no such endpoint" in (await resp.json())["error"]
    (backend,) = doc["backends"]
    assert backend["url"] == emulator.url and backend["circuit"] == "closed"
    assert MODEL in backend["models"]


async def status_line_to_http10(port: int, method: str, path: str, body: Any) -> bytes:
    """The status line answering an HTTP/1.0 request."""
    data = b"" if body is None else orjson.dumps(body)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        length = b"Content-Length: %d\r\n" % len(data) if data else b""
        writer.write(b"%b %b HTTP/1.0\r\n%b\r\n%b" % (method.encode(), path.encode(), length, data))
        answer = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    return answer.partition(b"\r\n")[0]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/api/version", None, b"200 OK"),
        ("POST", "/api/generate", {"model": MODEL, "prompt": "Hi", "stream": False}, b"200 OK"),
        ("POST", "/api/generate", {"model": MODEL, "prompt": "Hi"}, b"200 OK"),  # streamed
        ("POST", "/api/show", {"model": "no-such-model"}, b"404 Not Found"),
    ],
    ids=["relayed", "model-routed", "streamed", "error"],
)
async def test_an_http10_client_gets_an_http10_status_line(
    proxy: Proxy, method: str, path: str, body: Any, status: bytes
) -> None:
    """Go's writeStatusLine answers an HTTP/1.0 request with "HTTP/1.0", relayed
    answers too."""
    assert await status_line_to_http10(proxy.port, method, path, body) == b"HTTP/1.0 " + status


async def http10_answer(port: int, path: str, body: Any, keep_alive: bool) -> bytes:
    """All a server sends to a streamed HTTP/1.0 request, until it closes."""
    data = orjson.dumps(body)
    connection = b"Connection: keep-alive\r\n" if keep_alive else b""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST %b HTTP/1.0\r\n%bContent-Length: %d\r\n\r\n%b"
            % (path.encode(), connection, len(data), data)
        )
        return await asyncio.wait_for(reader.read(), 60)  # until the server closes
    finally:
        writer.close()


@pytest.mark.parametrize("keep_alive", [False, True], ids=["plain", "keep-alive"])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": MODEL, "prompt": "Hi"}),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}),
    ],
    ids=["generate", "chat"],
)
async def test_a_stream_reaches_an_http10_client_as_ollama_sends_it(
    emulator: Emulator, proxy: Proxy, path: str, body: Any, keep_alive: bool
) -> None:
    """Go's net/http cannot chunk for an HTTP/1.0 client: it writes the stream as it
    comes, without Transfer-Encoding, Content-Length or Connection, and closes the
    connection at its end. Through the proxy: every chunk, the same bytes."""
    direct = await http10_answer(emulator.port, path, body, keep_alive)
    proxied = await http10_answer(proxy.port, path, body, keep_alive)
    for answer in (direct, proxied):
        head = answer.partition(b"\r\n\r\n")[0]
        status, *lines = head.split(b"\r\n")
        assert status == b"HTTP/1.0 200 OK"
        names = {line.split(b":", 1)[0].lower() for line in lines}
        assert not names & {b"transfer-encoding", b"content-length", b"connection"}, head
        assert b"content-type: application/x-ndjson" in head.lower()
    body = direct.partition(b"\r\n\r\n")[2]
    chunks = body.splitlines()
    assert len(chunks) > 2 and orjson.loads(chunks[-1])["done"] is True
    assert proxied.partition(b"\r\n\r\n")[2] == body


async def http10_keep_alive_heads(port: int, method: str, path: str, body: Any) -> list[bytes]:
    """The heads of two HTTP/1.0 keep-alive requests sent one after the other on one
    connection, each after the answer to the one before."""
    data = b"" if body is None else orjson.dumps(body)
    length = b"Content-Length: %d\r\n" % len(data) if data else b""
    request = b"%b %b HTTP/1.0\r\nConnection: keep-alive\r\n%b\r\n%b" % (
        method.encode(),
        path.encode(),
        length,
        data,
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    heads = []
    try:
        for _ in range(2):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:-2])
            await reader.readexactly(int(fields[b"Content-Length"]))
            heads.append(head)
    finally:
        writer.close()
    return heads


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/version", None),
        ("POST", "/api/generate", {"model": MODEL, "prompt": "Hi", "stream": False}),
    ],
    ids=["relayed", "model-routed"],
)
async def test_an_http10_keep_alive_client_is_told_its_connection_stays_open(
    emulator: Emulator, proxy: Proxy, method: str, path: str, body: Any
) -> None:
    """Go's writeHeader answers an HTTP/1.0 request that asks to keep its connection,
    with an answer of known length, with `Connection: keep-alive`, and keeps it: an
    HTTP/1.0 client reuses a connection only when told so. Relayed answers too."""
    for port in (emulator.port, proxy.port):
        heads = await http10_keep_alive_heads(port, method, path, body)
        assert all(b"\r\nConnection: keep-alive\r\n" in head for head in heads), heads


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/auto", f"/v1/models/{MODEL}"])
async def test_openai_model_answers_end_as_ollamas_encoder_ends_them(
    emulator: Emulator, proxy: Proxy, path: str
) -> None:
    """Ollama's OpenAI layer writes these with json.NewEncoder: one newline after the
    value, the proxy's own answers (the merged list, `auto`'s entry) too."""
    status, content_type, body, _, _ = await fetch(proxy.url, "GET", path, None)
    assert (status, content_type) == (200, "application/json")
    assert body.endswith(b"}\n")
    if path != "/v1/models/auto":
        direct = (await fetch(emulator.url, "GET", path, None))[2]
        assert body[-2:] == direct[-2:]

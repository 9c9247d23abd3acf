"""Clients that misbehave: slow heads (slowloris), stalled bodies, idle keep-alive
connections, heads over the size limit (431 as Go's net/http sends it), unparsable
requests (Go's 400, one log line without the request's bytes), and a client that stops
reading a stream.
Each also checks that the proxy goes on serving everyone else.

No timing thresholds: deadlines below only bound how long "eventually" may take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from proxy.config_services import Usage
from proxy.config_serving import Limits, Timeouts
from proxy.connection import (
    BAD_REQUEST,
    HEAD_TOO_LARGE,
    VERSION_NOT_SUPPORTED,
    length_with_coding,
)
from proxy.usage.pipeline import MAX_FEEDBACK_BYTES
from tests.support import Emulator, Proxy, ServerThread, slow_reader, small_send_buffers
from tests.usage_services import read_bytes, wait_for

MODEL = "qwen2.5:7b"
EVENTUALLY = 60.0  # seconds; generous for a slow, noisy 2-core machine
SECRET = "sk-VerySecretToken0123456789"
NO_USAGE = Usage(file_mode="off")


def proxy_with(servers: ServerThread, emulator: Emulator, **timeouts: float) -> Proxy:
    return Proxy(
        servers,
        [emulator.url],
        timeouts=Timeouts(**timeouts),
        limits=Limits(max_header_bytes=2048),
        usage=NO_USAGE,
    )


@pytest.fixture
def slow_heads(servers: ServerThread, emulator: Emulator) -> Iterator[Proxy]:
    """A short head deadline and an idle timeout far beyond any test."""
    prx = proxy_with(servers, emulator, client_header_seconds=0.5, client_idle_seconds=3600)
    yield prx
    prx.stop()


async def connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def read_until_closed(sock: socket.socket, seconds: float = EVENTUALLY) -> bytes:
    """Everything the proxy sends until it closes the connection."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    async with asyncio.timeout(seconds):
        while True:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return bytes(received)


async def answer_to(port: int, data: bytes) -> bytes:
    """Everything a server sends in answer to `data` on a new connection, until it
    closes the connection."""
    sock = await connect(port)
    try:
        await asyncio.get_running_loop().sock_sendall(sock, data)
        return await read_until_closed(sock)
    finally:
        sock.close()


def go_answer(answer: bytes) -> bytes:
    """A refusal the proxy wrote raw, as Go writes it: without the proxy's
    `X-Request-Id`, which it must carry (22 hex digits, as the proxy's ids)."""
    named = re.search(rb"\r\nX-Request-Id: ([0-9a-f]{22})\r\n", answer)
    assert named is not None, answer[:200]
    return answer[: named.start()] + answer[named.end() - 2 :]


async def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response with a Content-Length: its head and body."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    async with asyncio.timeout(EVENTUALLY):
        while b"\r\n\r\n" not in data:
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, f"closed before a response head: {bytes(data)!r}"
            data += chunk
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, "closed inside a response body"
            body += chunk
    return head, body


async def read_until(sock: socket.socket, end: bytes) -> bytes:
    """What the proxy sends until `end` has come (and whatever came with it)."""
    data = b""
    async with asyncio.timeout(EVENTUALLY):
        while end not in data:
            chunk = await asyncio.get_running_loop().sock_recv(sock, 65536)
            assert chunk, data
            data += chunk
    return data


async def generate(url: str) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url + "/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False}
        ) as resp,
    ):
        assert resp.status == 200
        doc: dict[str, object] = orjson.loads(await resp.read())
        return doc


async def test_slow_heads_are_closed_while_other_clients_are_served(slow_heads: Proxy) -> None:
    """Connections that dribble a head byte by byte (the bytes keep coming, so no idle
    timeout would catch them) or that send nothing are closed without an answer."""
    dribblers = [await connect(slow_heads.port) for _ in range(6)]
    silent = [await connect(slow_heads.port) for _ in range(2)]
    loop = asyncio.get_running_loop()

    async def dribble(sock: socket.socket) -> None:
        await loop.sock_sendall(sock, b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        with contextlib.suppress(OSError):
            while True:  # one byte at a time, until the proxy hangs up
                await loop.sock_sendall(sock, b"a")
                await asyncio.sleep(0.05)

    senders = [asyncio.create_task(dribble(sock)) for sock in dribblers]
    try:
        # Meanwhile, ordinary clients are served.
        for _ in range(3):
            assert (await generate(slow_heads.url))["done"] is True
        answers = await asyncio.gather(*(read_until_closed(s) for s in dribblers + silent))
    finally:
        for task in senders:
            task.cancel()
        for sock in dribblers + silent:
            sock.close()
    assert answers == [b""] * len(answers)  # closed, nothing written (as Go does)
    assert (await generate(slow_heads.url))["done"] is True


async def test_a_keep_alive_pause_is_not_a_slow_head(slow_heads: Proxy) -> None:
    """The head deadline counts from a request's first byte: a keep-alive connection
    idle for longer than it between two requests is still served."""
    sock = await connect(slow_heads.port)
    loop = asyncio.get_running_loop()
    request = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n"
    try:
        for _ in range(2):
            await loop.sock_sendall(sock, request)
            head, body = await read_response(sock)
            assert head.startswith(b"HTTP/1.1 200")
            assert "version" in orjson.loads(body)
            await asyncio.sleep(1.5)  # three head deadlines, far below the idle timeout
    finally:
        sock.close()


async def test_idle_keep_alive_connections_are_closed(
    servers: ServerThread, emulator: Emulator
) -> None:
    proxy = proxy_with(servers, emulator, client_header_seconds=3600, client_idle_seconds=0.5)
    sock = await connect(proxy.port)
    try:
        await asyncio.get_running_loop().sock_sendall(
            sock, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        head, _ = await read_response(sock)
        assert head.startswith(b"HTTP/1.1 200")
        assert await read_until_closed(sock) == b""
    finally:
        sock.close()
        proxy.stop()


@pytest.mark.parametrize(
    "head",
    [
        # One header line longer than the parser accepts.
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        # A request line (URL) longer than the parser accepts.
        b"GET /api/tags?" + b"q" * 20_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
        # Small lines, together over the limit, with no end in sight.
        b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n"
        + (b"X-Many: " + b"m" * 56 + b"\r\n") * 1000,
        # Complete, small lines, together over the limit (checked once the head is parsed).
        b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n"
        + (b"X-Some: " + b"s" * 56 + b"\r\n") * 40
        + b"\r\n",
    ],
    ids=["long-header", "long-url", "endless-head", "many-headers"],
)
async def test_heads_over_the_limit_get_gos_431(slow_heads: Proxy, head: bytes) -> None:
    answer = await answer_to(slow_heads.port, head)
    if b"\r\n\r\n" in head and len(head) < 8190:
        # Parsed: the handler answered, with aiohttp's framing around Go's text.
        status, _, rest = answer.partition(b"\r\n")
        assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
        assert b"\r\nContent-Type: text/plain; charset=utf-8\r\n" in b"\r\n" + rest
        assert b"\r\nConnection: close\r\n" in b"\r\n" + rest
        assert answer.endswith(b"\r\n\r\n431 Request Header Fields Too Large")
    else:
        assert go_answer(answer) == HEAD_TOO_LARGE  # byte for byte what Go writes
    assert (await generate(slow_heads.url))["done"] is True


@pytest.mark.parametrize(
    "request_bytes",
    [
        f"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {SECRET}\r\n"
        f"this is not a header {SECRET}\r\n\r\n".encode(),
        f"G\x01T /api/tags?key={SECRET} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(),
        f"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nX-Key: {SECRET}\x00\r\n\r\n".encode(),
        f"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nX-Key: {SECRET}".encode()
        + b"k" * 10_000
        + b"\r\n\r\n",
    ],
    ids=["bad-header-line", "bad-method", "nul-in-value", "oversized-secret"],
)
async def test_unparsable_requests_leave_no_request_bytes_in_logs(
    slow_heads: Proxy, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await answer_to(slow_heads.port, request_bytes)
    assert go_answer(answer) in (BAD_REQUEST, HEAD_TOO_LARGE)
    assert SECRET not in caplog.text
    assert SECRET.encode() not in answer
    refused = [r for r in caplog.records if r.name == "autoroute.clients"]
    assert [r.levelno for r in refused] == [logging.WARNING]
    assert "refused a request from 127.0.0.1" in refused[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# Request lines Go's net/http refuses and aiohttp's parser serves (or refuses with
# another status): with Go's status and text.
ODD_REQUEST_LINES = [
    (b"GET /api/version\r\n\r\n", BAD_REQUEST),  # no version: HTTP/0.9 to llhttp
    (b"GET /api/version HTTP/2.0\r\nHost: localhost\r\n\r\n", VERSION_NOT_SUPPORTED),
    (b"GET /api/version HTTP/3.0\r\nHost: localhost\r\n\r\n", VERSION_NOT_SUPPORTED),
    (b"GET /api/version HTTP/0.9\r\nHost: localhost\r\n\r\n", VERSION_NOT_SUPPORTED),
    (b"GET  /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n", BAD_REQUEST),  # Go: no version
    (b"GET /api/version HTTP/2.0\nHost: x\n\n", VERSION_NOT_SUPPORTED),
    # Go skips line ends before a request line only after a POST (RFC 7230's tolerance,
    # conn.readRequest): a connection's first line that is empty is no request line.
    (b"\r\nGET /api/version HTTP/1.1\r\nHost: x\r\n\r\n", BAD_REQUEST),
    (b"\nGET /api/version HTTP/1.1\r\nHost: x\r\n\r\n", BAD_REQUEST),
]
ODD_LINE_IDS = [
    "no-version",
    "http2",
    "http3",
    "http09",
    "two-spaces",
    "bare-lf",
    "leading-crlf",
    "leading-lf",
]


@pytest.mark.parametrize(("request_bytes", "go_refusal"), ODD_REQUEST_LINES, ids=ODD_LINE_IDS)
async def test_odd_request_lines_get_gos_refusal(
    slow_heads: Proxy, request_bytes: bytes, go_refusal: bytes
) -> None:
    answer = await answer_to(slow_heads.port, request_bytes)
    assert go_answer(answer) == go_refusal
    assert (await generate(slow_heads.url))["done"] is True


async def test_a_request_line_in_pieces_is_checked_once_whole(slow_heads: Proxy) -> None:
    """The line is judged when its end arrives, however it was split."""
    loop = asyncio.get_running_loop()
    sock = await connect(slow_heads.port)
    try:
        for piece in (b"GET /api/ver", b"sion HTTP/", b"2.0\r", b"\nHost: localhost\r\n\r\n"):
            await loop.sock_sendall(sock, piece)
            await asyncio.sleep(0.05)  # separate reads, most likely; any split must do
        assert go_answer(await read_until_closed(sock)) == VERSION_NOT_SUPPORTED
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("line", "go_refusal"),
    [
        (b"GET /api/version HTTP/2.0", VERSION_NOT_SUPPORTED),
        (b"GET /api/version HTTP/3.0", VERSION_NOT_SUPPORTED),
        (b"GET /api/version HTTP/9.9", VERSION_NOT_SUPPORTED),
        (b"GET /api/version HTTP/3.01", BAD_REQUEST),  # Go: malformed HTTP version
        (b"GET /api/version HTTPS/1.1", BAD_REQUEST),
        (b"GET /api/version", BAD_REQUEST),
    ],
    ids=["http2", "http3", "http99", "long-version", "https", "no-version"],
)
async def test_a_later_request_on_a_connection_gets_gos_refusal_too(
    slow_heads: Proxy, line: bytes, go_refusal: bytes
) -> None:
    """After a first request on a keep-alive connection, the version the parser read
    decides, or for a line it refuses, Go's reading of the line its error quotes."""
    loop = asyncio.get_running_loop()
    sock = await connect(slow_heads.port)
    try:
        await loop.sock_sendall(sock, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, _ = await read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        rest = b"" if go_refusal == BAD_REQUEST else b"Host: localhost\r\n"
        await loop.sock_sendall(sock, line + b"\r\n" + rest + b"\r\n")
        assert go_answer(await read_until_closed(sock)) == go_refusal
    finally:
        sock.close()


@pytest.mark.parametrize(("request_bytes", "go_refusal"), ODD_REQUEST_LINES, ids=ODD_LINE_IDS)
async def test_the_emulator_refuses_odd_request_lines_as_go_does(
    emulator: Emulator, request_bytes: bytes, go_refusal: bytes
) -> None:
    assert await answer_to(emulator.port, request_bytes) == go_refusal


# Go's statusError for an HTTP/1.1 request without Host (server.go readRequest).
NO_HOST = (
    b"HTTP/1.1 400 Bad Request: missing required Host header\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
    b"400 Bad Request: missing required Host header"
)


async def one_request_answered(sock: socket.socket) -> None:
    """A request served on `sock` first, so that the next one is a later request of
    its connection."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head, _ = await read_response(sock)
    assert head.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("later", [False, True], ids=["first", "later"])
async def test_an_http11_request_without_host_gets_gos_400(
    slow_heads: Proxy, emulator: Emulator, server: str, later: bool
) -> None:
    """Go refuses it before any handler, with its text in the status line and body, and
    closes; the proxy names it (X-Request-Id), the emulator, as Ollama, does not."""
    body = orjson.dumps({"model": MODEL, "prompt": "hi", "stream": False})
    port = slow_heads.port if server == "proxy" else emulator.port
    generated = emulator.state.requests["/api/generate"]
    sock = await connect(port)
    loop = asyncio.get_running_loop()
    try:
        if later:
            await one_request_answered(sock)
        await loop.sock_sendall(
            sock,
            b"POST /api/generate HTTP/1.1\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body),
        )
        answer = await read_until_closed(sock)
    finally:
        sock.close()
    assert (go_answer(answer) if server == "proxy" else answer) == NO_HOST
    assert emulator.state.requests["/api/generate"] == generated


# Go's transferReader takes one Transfer-Encoding, and only `chunked` (any case): any
# other, a list, or a second field is its unsupportedTEError, answered raw with 501.
UNSUPPORTED_TE = (
    b"HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\nUnsupported transfer encoding"
)
# Go's readRequest (src/net/http/request.go): more than one Host is a plain error,
# found before the Transfer-Encoding is read, which its server answers with its plain
# 400.
TOO_MANY_HOSTS = BAD_REQUEST


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize(
    ("fields", "go_refusal"),
    [
        (b"Transfer-Encoding: chunked, gzip\r\n", UNSUPPORTED_TE),
        (b"Transfer-Encoding: identity\r\n", UNSUPPORTED_TE),
        (b"Transfer-Encoding: gzip\r\n", UNSUPPORTED_TE),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", UNSUPPORTED_TE),
        (b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", UNSUPPORTED_TE),
        (b"Host: other\r\nTransfer-Encoding: chunked\r\n", TOO_MANY_HOSTS),
        # llhttp reads these as chunked (its last coding); Go takes `chunked` alone.
        (b"Transfer-Encoding: gzip, chunked\r\n", UNSUPPORTED_TE),
        (b"Transfer-Encoding: identity,chunked\r\n", UNSUPPORTED_TE),
        (b"Transfer-Encoding: chunked, chunked\r\n", UNSUPPORTED_TE),
    ],
    ids=[
        "list",
        "identity",
        "gzip",
        "twice",
        "two-codings",
        "two-hosts",
        "gzip-chunked",
        "identity-chunked",
        "chunked-chunked",
    ],
)
async def test_a_transfer_encoding_go_does_not_take_gets_its_501(
    slow_heads: Proxy, emulator: Emulator, server: str, fields: bytes, go_refusal: bytes
) -> None:
    port = slow_heads.port if server == "proxy" else emulator.port
    generated = emulator.state.requests["/api/generate"]
    answer = await answer_to(
        port,
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\n" + fields + b"\r\n"
        b"2\r\n{}\r\n0\r\n\r\n",
    )
    assert (go_answer(answer) if server == "proxy" else answer) == go_refusal
    assert emulator.state.requests["/api/generate"] == generated  # no handler ran
    assert (await generate(slow_heads.url))["done"] is True


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize(
    "field",
    [
        b"Transfer-Encoding: chunked\t",
        b"Transfer-Encoding: CHUNKED \t ",
        b"Transfer-Encoding:chunked\t",
    ],
    ids=["tab", "spaces-and-tab", "no-space"],
)
async def test_chunked_with_whitespace_after_it_is_read_as_go_reads_it(
    slow_heads: Proxy, emulator: Emulator, server: str, field: bytes
) -> None:
    """Go's textproto drops the spaces and tabs around a field's value, so it takes
    `chunked` followed by a tab as chunked, which llhttp refuses (the proxy answered
    Go's 501 for an unsupported coding)."""
    port = slow_heads.port if server == "proxy" else emulator.port
    answer = await answer_to(
        port,
        b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%b\r\n\r\n"
        b"%x\r\n%b\r\n0\r\n\r\n" % (field, len(SHOW_BODY), SHOW_BODY),
    )
    [(head, body)] = responses_of(answer)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert orjson.loads(body)["details"]


# Methods aiohttp's parser refuses and Go's net/http reads (any token is a method to
# Go), and a CONNECT to a path the C parser cannot read as an authority: Ollama's
# router serves none of them, so its answer is gin's 405 (with `Allow`) or 404 for the
# path, after Go's own answers to a path that is not clean and to `*`.
GIN_405 = b"405 method not allowed"
UNSERVED_METHODS = [
    (b"FOO /api/tags HTTP/1.1", 405, {"allow": b"HEAD, GET"}, GIN_405),
    (b"get /api/tags HTTP/1.1", 405, {"allow": b"HEAD, GET"}, GIN_405),  # Go: a token
    (b"DESCRIBE /api/chat HTTP/1.1", 405, {"allow": b"POST"}, GIN_405),  # RTSP to llhttp
    (b"CONNECT /api/blobs/sha256:abc HTTP/1.1", 405, {"allow": b"HEAD, POST"}, GIN_405),
    (b"FOO http://localhost/api/chat HTTP/1.1", 405, {"allow": b"POST"}, GIN_405),
    (b"FOO /api/not-in-ollama HTTP/1.0", 404, {"allow": None}, b"404 page not found"),
    (b"FOO /api//tags?x=1 HTTP/1.1", 307, {"location": b"/api/tags?x=1"}, b""),
    (b"FOO * HTTP/1.1", 400, {"content-type": None}, b""),
]


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize(
    "line", [b"FOO /api/%zz HTTP/1.1", b"FOO http://[::1/api/tags HTTP/1.1"], ids=["escape", "host"]
)
async def test_a_method_the_parser_refuses_on_a_target_go_refuses_is_gos_400(
    slow_heads: Proxy, emulator: Emulator, server: str, line: bytes
) -> None:
    """Go's ParseRequestURI refuses the target (a `%` without two hex digits, an IPv6
    host without its `]`) before any router sees the method: its plain 400."""
    answer = await answer_to(
        slow_heads.port if server == "proxy" else emulator.port,
        line + b"\r\nHost: localhost\r\n\r\n",
    )
    assert (go_answer(answer) if server == "proxy" else answer) == BAD_REQUEST


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("later", [False, True], ids=["first", "later"])
@pytest.mark.parametrize(
    ("line", "status", "fields", "body"),
    UNSERVED_METHODS,
    ids=["foo", "lower-case", "rtsp", "connect-colon", "absolute", "not-found", "unclean", "star"],
)
async def test_a_method_the_parser_refuses_gets_ollamas_answer(
    slow_heads: Proxy,
    emulator: Emulator,
    server: str,
    later: bool,
    line: bytes,
    status: int,
    fields: dict[str, bytes | None],
    body: bytes,
) -> None:
    """Answered as soon as the parser refuses the line, on the first request of a
    connection or a later one; the connection then closes."""
    port = slow_heads.port if server == "proxy" else emulator.port
    sock = await connect(port)
    loop = asyncio.get_running_loop()
    try:
        if later:
            await one_request_answered(sock)
        await loop.sock_sendall(sock, line + b"\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
        answer = await read_until_closed(sock)
    finally:
        sock.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    version = line.rsplit(b" ", 1)[1]
    assert status_line.split(b" ", 2)[:2] == [version, b"%d" % status], answer[:300]
    headers = {k.lower().decode(): v.strip() for k, _, v in (x.partition(b":") for x in lines)}
    assert rest == body and headers["content-length"] == b"%d" % len(body)
    for name, value in fields.items():
        assert headers.get(name) == value, (name, answer[:300])
    if body:
        assert headers["content-type"] == b"text/plain"
    assert ("x-request-id" in headers) is (server == "proxy")
    assert (await generate(slow_heads.url))["done"] is True


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /api/version HTTP/1.0\r\n\r\n",  # HTTP/1.0 needs no Host
        b"GET /api/version HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",  # empty: valid
    ],
    ids=["http10", "empty-host"],
)
async def test_requests_go_serves_without_a_host_name_are_served(
    slow_heads: Proxy, emulator: Emulator, server: str, request_bytes: bytes
) -> None:
    answer = await answer_to(slow_heads.port if server == "proxy" else emulator.port, request_bytes)
    assert answer.split(b" ", 2)[1] == b"200", answer[:200]


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
@pytest.mark.parametrize("server", ["proxy", "emulator"])
async def test_an_unknown_expect_gets_gos_417(
    slow_heads: Proxy, emulator: Emulator, server: str, version: bytes
) -> None:
    """Go answers 417 with an empty body and closes, to either version; aiohttp would
    answer "Unknown Expect: ..." in plain text, to HTTP/1.1 alone, without the id (the
    proxy names it; the emulator, as Ollama, does not)."""
    body = orjson.dumps({"model": MODEL, "prompt": "hi", "stream": False})
    answer = await answer_to(
        slow_heads.port if server == "proxy" else emulator.port,
        b"POST /api/generate HTTP/%b\r\nHost: localhost\r\nExpect: something-else\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (version, len(body), body),
    )
    head, _, rest = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/%b 417 Expectation Failed" % version
    assert rest == b""
    assert b"Content-Length: 0" in lines
    assert b"Connection: close" in lines
    named = any(re.fullmatch(rb"X-Request-Id: [0-9a-f]+", line) for line in lines)
    assert named == (server == "proxy"), head
    assert not any(line.lower().startswith(b"content-type:") for line in lines), head


async def test_expect_100_continue_is_a_token_in_any_case(slow_heads: Proxy) -> None:
    """Go's hasToken: `100-Continue` is the same expectation; the interim answer comes
    before the body is sent, the final one after."""
    loop = asyncio.get_running_loop()
    body = orjson.dumps({"model": MODEL, "prompt": "hi", "stream": False})
    sock = await connect(slow_heads.port)
    try:
        await loop.sock_sendall(
            sock,
            b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nExpect: 100-Continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body),
        )
        interim = await read_until(sock, b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await loop.sock_sendall(sock, body)
        head, answer = await read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert orjson.loads(answer)["done"] is True
    finally:
        sock.close()


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("path", ["/api/generate", "/v1/completions", "/api/show"])
async def test_100_continue_comes_at_the_bodys_first_read_as_go_sends_it(
    slow_heads: Proxy, emulator: Emulator, server: str, path: str
) -> None:
    """Go's expectContinueReader writes `100 Continue` at the handler's first read of
    the body, whether or not the body's bytes have come already: the emulator, as
    Ollama, and the proxy both send it before the answer."""
    body = orjson.dumps({"model": MODEL, "prompt": "hi", "stream": False})
    answer = await answer_to(
        slow_heads.port if server == "proxy" else emulator.port,
        b"POST %b HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (path.encode(), len(body), body),
    )
    interim, _, final = answer.partition(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue", answer[:200]
    assert final.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]


@pytest.mark.parametrize("framing", [b"Content-Length: 0\r\n", b""])
async def test_no_100_continue_without_a_body(slow_heads: Proxy, framing: bytes) -> None:
    """Go sends `100 Continue` only to a request with a body (ContentLength != 0): one
    without gets its final answer alone."""
    sock = await connect(slow_heads.port)
    try:
        await asyncio.get_running_loop().sock_sendall(
            sock,
            b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
            + framing
            + b"\r\n",
        )
        answer = await read_until(sock, b"\r\n")
        assert answer.partition(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request"
    finally:
        sock.close()


@pytest.mark.parametrize("leaving", ["close", "reset"])
async def test_a_client_that_leaves_owed_its_100_continue_is_a_cancellation(
    servers: ServerThread,
    emulator: Emulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    leaving: str,
) -> None:
    """A client sends a head with `Expect: 100-continue` and leaves before the proxy
    owes it the interim answer: it left, as one that leaves while its body is read.
    Nothing is written to its closed connection, nothing is logged as an error, and
    its usage event says it was cancelled."""
    caplog.set_level(logging.WARNING)
    events = tmp_path / "events.jsonl"
    usage = Usage(
        file_path=str(events), spool_dir=str(tmp_path / "spool"), flush_interval_seconds=0.02
    )
    proxy = Proxy(servers, [emulator.url], usage=usage)
    body = orjson.dumps({"model": MODEL, "prompt": "hi", "stream": False})
    head = (
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    clients = 5
    try:
        for _ in range(clients):
            sock = await connect(proxy.port)
            if leaving == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await asyncio.get_running_loop().sock_sendall(sock, head)
            sock.close()

        async def all_written() -> bool:
            return len((await read_bytes(events)).splitlines()) == clients

        await wait_for(all_written, what="an event for each client")
    finally:
        proxy.stop()
    outcomes = [orjson.loads(line)["outcome"] for line in events.read_bytes().splitlines()]
    assert all(outcome["cancelled"] for outcome in outcomes), outcomes
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


async def test_aiohttp_log_records_about_request_bytes_lose_them(
    slow_heads: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The safety net under any other path where aiohttp logs a parser error."""
    caplog.set_level(logging.DEBUG)
    try:
        raise LineTooLong(SECRET.encode(), 8190)
    except LineTooLong as exc:
        logging.getLogger("aiohttp.server").error(
            "Error handling request from %s", "127.0.0.1", exc_info=exc
        )
    (record,) = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "Error handling request from 127.0.0.1: LineTooLong"
    assert SECRET not in caplog.text


async def test_a_client_that_stops_reading_does_not_hold_up_others(
    servers: ServerThread, own_emulator: Emulator
) -> None:
    """A long stream (100k tokens at 1 ms each) to a client that never reads: everyone
    else is served meanwhile, and the stream is cancelled upstream once that client
    leaves (tests/test_disconnect.py checks that the backend is paused meanwhile)."""
    state = own_emulator.state
    proxy = Proxy(servers, [own_emulator.url], usage=NO_USAGE)
    body = orjson.dumps({"model": MODEL, "prompt": "go", "options": {"num_predict": 100_000}})
    sock = slow_reader(proxy.port, "/api/generate", body)
    try:
        await eventually(lambda: state.active_streams == 1, "the long stream to start")
        cancelled, completed = state.cancelled, state.completed
        results = await asyncio.gather(*(generate(proxy.url) for _ in range(5)))
        assert [r["done"] for r in results] == [True] * 5
        await eventually(lambda: state.completed == completed + 5, "5 answers counted")
        assert state.cancelled == cancelled and state.active_streams == 1  # still going
    finally:
        sock.close()
    try:
        await eventually(lambda: state.cancelled == cancelled + 1, "the stream's cancellation")
        assert state.completed == completed + 5
    finally:
        proxy.stop()


async def test_a_client_that_reads_no_answers_is_not_answered_past_its_buffers(
    servers: ServerThread, own_emulator: Emulator
) -> None:
    """A client pipelines a thousand requests (small answers, each whole in one read of
    the backend's) and reads none of the answers: the proxy goes on to the next request
    only once the client has taken in the answers before it, as Go's server does (its
    writes block) and aiohttp's own answers do; it neither queues answers past the
    transport's high-water mark, a buffer one client would grow by megabytes a second,
    nor asks the backend what no one reads. The client is let go after
    `client_write_idle_seconds`."""
    proxy = Proxy(
        servers,
        [own_emulator.url],
        timeouts=Timeouts(client_write_idle_seconds=1),
        usage=NO_USAGE,
    )
    small_send_buffers(proxy)
    body = orjson.dumps({"model": MODEL})
    request = b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%b" % (
        len(body),
        body,
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(own_emulator.url + "/api/show", data=body) as r,
    ):
        answer = len(await r.read()) + 300  # its body, and a head as the proxy writes it
    shown = own_emulator.state.requests["/api/show"]
    sock = await connect(proxy.port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sending = asyncio.ensure_future(asyncio.get_running_loop().sock_sendall(sock, request * 1000))
    assert proxy.runner is not None
    server = proxy.runner.server
    assert server is not None
    try:
        await eventually(lambda: bool(server.connections), "the client's connection")
        (connection,) = server.connections
        assert connection.transport is not None
        high_water = connection.transport.get_write_buffer_limits()[1]
        await eventually(lambda: not server.connections, "the client let go")
    finally:
        sending.cancel()
        sock.close()
        proxy.stop()
    asked = own_emulator.state.requests["/api/show"] - shown
    # What the transport holds up to its high-water mark, one answer past it, and the
    # small socket buffers of both ends (64 KiB is more than they hold).
    assert asked <= (high_water + (64 << 10)) // answer + 2, asked


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + EVENTUALLY
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
def stall_bound(servers: ServerThread, emulator: Emulator) -> Iterator[Proxy]:
    """A short bound on a stalled body; the head and idle bounds far beyond any test."""
    prx = proxy_with(
        servers,
        emulator,
        client_header_seconds=3600,
        client_idle_seconds=3600,
        client_body_idle_seconds=0.5,
    )
    yield prx
    prx.stop()


BODY = orjson.dumps({"model": MODEL, "prompt": "hi", "stream": False})


@pytest.mark.parametrize(
    ("path", "head", "sent"),
    [
        # A JSON body read whole before routing: a tenth of it, then nothing.
        (
            "/api/generate",
            b"Content-Length: %d\r\n" % len(BODY),
            BODY[: len(BODY) // 10],
        ),
        # The proxy's own endpoint, which reads its body too.
        ("/api/autoroute/explain", b"Content-Length: %d\r\n" % len(BODY), BODY[:5]),
        # An upload streamed to the backend: one chunk, then nothing.
        ("/api/blobs/sha256:" + "0" * 64, b"Transfer-Encoding: chunked\r\n", b"4\r\nblob\r\n"),
    ],
    ids=["model-routed", "own-endpoint", "upload"],
)
async def test_stalled_bodies_get_408_and_others_are_served(
    stall_bound: Proxy, path: str, head: bytes, sent: bytes
) -> None:
    sock = await connect(stall_bound.port)
    try:
        await asyncio.get_running_loop().sock_sendall(
            sock, b"POST %s HTTP/1.1\r\nHost: localhost\r\n%b\r\n%b" % (path.encode(), head, sent)
        )
        # Meanwhile an ordinary client is served.
        assert (await generate(stall_bound.url))["done"] is True
        answer = await read_until_closed(sock)
    finally:
        sock.close()
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"
    head_lines, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in head_lines.lower()
    assert orjson.loads(body) == {"error": "request body stalled: no bytes received for 0.5s"}
    assert (await generate(stall_bound.url))["done"] is True


@pytest.mark.parametrize(
    ("head", "sent"),
    [
        # More than any rating arrives, and the rest of what the head declares never does.
        (b"Content-Length: %d\r\n" % (4 * MAX_FEEDBACK_BYTES), b"x" * (MAX_FEEDBACK_BYTES + 1)),
        # A client that waits for `100 Continue` before it sends any of a longer body.
        (b"Content-Length: %d\r\nExpect: 100-continue\r\n" % (2 * MAX_FEEDBACK_BYTES), b""),
    ],
    ids=["sent", "expect"],
)
async def test_feedback_longer_than_any_rating_is_read_no_further(
    stall_bound: Proxy, head: bytes, sent: bytes
) -> None:
    """A feedback body over `MAX_FEEDBACK_BYTES` is a 413 once that many bytes have come
    (at once to a client waiting for `100 Continue`), not read on toward the body limit:
    its client gets the 413 however much more it declared, not the stall's 408."""
    sock = await connect(stall_bound.port)
    try:
        await asyncio.get_running_loop().sock_sendall(
            sock,
            b"POST /api/autoroute/feedback HTTP/1.1\r\nHost: localhost\r\n%b\r\n%b" % (head, sent),
        )
        answer = await read_until_closed(sock)
    finally:
        sock.close()
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 413 Request Entity Too Large", answer[:200]
    body = rest.partition(b"\r\n\r\n")[2]
    assert orjson.loads(body) == {
        "error": f"request body too large (limit {MAX_FEEDBACK_BYTES} bytes)"
    }


@pytest.fixture
def patient(servers: ServerThread, emulator: Emulator) -> Iterator[Proxy]:
    """A body may pause for an hour: only a broken one may end the wait."""
    prx = proxy_with(servers, emulator, client_body_idle_seconds=3600)
    yield prx
    prx.stop()


async def send_broken_chunked(port: int, path: str, framing: bytes, together: bool) -> bytes:
    """A chunked POST to `path` whose first chunk is whole and whose framing then breaks
    (`framing`), sent with its head (`together`) or in a later read while the handler
    reads the body; what came back until the connection closed (the request does not
    ask for the close: the broken framing must bring it)."""
    return await send_chunked(port, path, b'4\r\n{"a"\r\n' + framing, together, close=False)


@pytest.mark.parametrize(
    ("framing", "error"),
    [
        (b"zz\r\n", "invalid byte in chunk length"),
        (b"1" * 20 + b"\r\n", "http chunk length too large"),
        (b"5\r\nhelloXX", "malformed chunked encoding"),
    ],
    ids=["not-hex", "too-large", "no-crlf-after-data"],
)
@pytest.mark.parametrize(
    "path",
    ["/api/generate", "/api/autoroute/explain", "/api/copy", "/api/blobs/sha256:" + "0" * 64],
    ids=["model-routed", "own-endpoint", "read-whole", "upload"],
)
@pytest.mark.parametrize("together", [False, True], ids=["later-read", "same-read"])
async def test_a_chunked_body_that_breaks_gets_ollamas_400_at_once(
    patient: Proxy, path: str, framing: bytes, error: str, together: bool
) -> None:
    """Chunked framing that breaks after the head (its bytes in a later read, or in
    the head's own): Go reads the head alone, its chunked reader fails the handler's
    read of the body at once, and Ollama answers that error, 400 `{"error": ...}`, and
    closes the connection, however the bytes came. The proxy's read of the body fails
    likewise, never waiting for bytes that cannot make a body (an upload streamed to
    the backend too), and others are served."""
    answer = await send_broken_chunked(patient.port, path, framing, together)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 400 Bad Request", answer
    head_lines, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in head_lines.lower()
    assert orjson.loads(body) == {"error": error}
    assert (await generate(patient.url))["done"] is True


# What Ollama answers a chunked body that breaks, by route: its handler's read of the
# body fails (Go's chunked reader) and it answers that error; CreateBlobHandler answers
# the failure of its copy of the body with a 500 (server/routes.go).
BROKEN_BODY_ANSWERS = {
    "/api/generate": (400, {"error": "invalid byte in chunk length"}),
    "/api/show": (400, {"error": "invalid byte in chunk length"}),
    "/v1/chat/completions": (
        400,
        {
            "error": {
                "message": "invalid byte in chunk length",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
    ),
    "/api/blobs/sha256:" + "0" * 64: (500, {"error": "invalid byte in chunk length"}),
}


@pytest.mark.parametrize("together", [False, True], ids=["later-read", "same-read"])
@pytest.mark.parametrize("path", list(BROKEN_BODY_ANSWERS))
async def test_the_emulator_answers_a_chunked_body_that_breaks_as_ollama_does(
    emulator: Emulator, path: str, together: bool
) -> None:
    answer = await send_broken_chunked(emulator.port, path, b"zz\r\n", together)
    status, error = BROKEN_BODY_ANSWERS[path]
    line, _, rest = answer.partition(b"\r\n")
    assert line.startswith(b"HTTP/1.1 %d " % status), answer
    head_lines, _, got = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in head_lines.lower()
    assert orjson.loads(got) == error


async def send_chunked(
    port: int, path: str, body: bytes, together: bool, close: bool = True
) -> bytes:
    """A chunked POST to `path` of `body` (its chunk framing as given), sent with its
    head (`together`) or in a later read (while the handler reads the body); what came
    back until the connection closed (`close`: the request asks for it)."""
    sock = await connect(port)
    loop = asyncio.get_running_loop()
    head = b"POST %s HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n" % (
        path.encode()
    )
    head += b"Connection: close\r\n\r\n" if close else b"\r\n"
    try:
        if together:
            await loop.sock_sendall(sock, head + body)
        else:
            await loop.sock_sendall(sock, head)
            await asyncio.sleep(0.2)  # the handler is reading the body
            await loop.sock_sendall(sock, body)
        return await read_until_closed(sock, 10)
    finally:
        sock.close()


SHOW_BODY = orjson.dumps({"model": MODEL})


# Chunk-size lines Go's chunked reader takes (net/http/internal/chunked.go
# readChunkLine: the CRLF, then spaces and tabs before it, then everything from the
# first `;`, are dropped) and llhttp's strict grammar refuses.
@pytest.mark.parametrize(
    "size_line",
    [b"%x ", b"%x\t", b"%x \t ", b"%x;a=b ", b'%x;a b"c', b"%x;\xff\x01", b"%x;"],
    ids=["space", "tab", "spaces-and-tab", "extension-space", "odd-extension", "bytes", "semi"],
)
@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("together", [False, True], ids=["later-read", "same-read"])
async def test_a_chunk_size_line_go_reads_is_read(
    patient: Proxy, emulator: Emulator, size_line: bytes, server: str, together: bool
) -> None:
    """The body is read as Go reads it, the last chunk's line too, and others are
    served."""
    port = patient.port if server == "proxy" else emulator.port
    half = len(SHOW_BODY) // 2
    parts = (SHOW_BODY[:half], SHOW_BODY[half:])
    body = b"".join((size_line % len(part)) + b"\r\n" + part + b"\r\n" for part in parts)
    answer = await send_chunked(port, "/api/show", body + (size_line % 0) + b"\r\n\r\n", together)
    [(head, got)] = responses_of(answer)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert orjson.loads(got)["details"]
    assert (await generate(patient.url))["done"] is True


# Chunk-size lines Go refuses, with the error its reader gives the handler, which
# Ollama answers as its 400.
@pytest.mark.parametrize(
    ("size_line", "error"),
    [
        (b"5 ;a\r\n", "invalid byte in chunk length"),
        (b" 5\r\n", "invalid byte in chunk length"),
        (b"\r\n", "empty hex number for chunk length"),
        (b";a\r\n", "empty hex number for chunk length"),
        (b"5;a\rb\r\n", "invalid CR in chunked line"),
        (b"5;" + b"a" * 4093 + b"\r\n", "header line too long"),
        (b"0" * 17 + b"5\r\n", "http chunk length too large"),
        (b"1;" + b"a" * 200 + b"\r\nx\r\n", "chunked encoding contains too much non-data"),
    ],
    ids=[
        "space-before-extension",
        "leading-space",
        "empty",
        "extension-alone",
        "cr-inside",
        "too-long",
        "seventeen-digits",
        "too-much-non-data",
    ],
)
@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("together", [False, True], ids=["later-read", "same-read"])
async def test_a_chunk_size_line_go_refuses_gets_its_error(
    patient: Proxy, emulator: Emulator, size_line: bytes, error: str, server: str, together: bool
) -> None:
    port = patient.port if server == "proxy" else emulator.port
    body = b'4\r\n{"a"\r\n' + size_line * (100 if "non-data" in error else 1)
    answer = await send_chunked(port, "/api/show", body, together)
    [(head, got)] = responses_of(answer)
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert orjson.loads(got) == {"error": error}
    assert (await generate(patient.url))["done"] is True


@pytest.mark.parametrize(
    "fields",
    [b"Content-Length: 50\r\n", b"Transfer-Encoding: chunked\r\n", b"Host: elsewhere\r\n"],
    ids=["length", "coding", "host"],
)
@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("together", [False, True], ids=["later-read", "same-read"])
async def test_a_trailer_go_takes_is_taken(
    patient: Proxy, emulator: Emulator, fields: bytes, server: str, together: bool
) -> None:
    """Go's net/http takes any field in a chunked body's trailer section (llhttp
    refuses a Content-Length or a Transfer-Encoding there), and Ollama reads none."""
    port = patient.port if server == "proxy" else emulator.port
    body = b"%x\r\n%b\r\n0\r\n%b\r\n" % (len(SHOW_BODY), SHOW_BODY, fields)
    [(head, got)] = responses_of(await send_chunked(port, "/api/show", body, together))
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert orjson.loads(got)["details"]


@pytest.mark.parametrize("server", ["proxy", "emulator"])
async def test_pipelined_chunked_bodies_are_read_as_go_reads_them(
    patient: Proxy, emulator: Emulator, server: str
) -> None:
    """Requests in one write, each with a chunked body whose size lines and trailer
    llhttp refuses and Go takes, and a request after them: each is answered."""
    port = patient.port if server == "proxy" else emulator.port
    show = (
        b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x \r\n%b\r\n0;x=y z\r\nContent-Length: 9\r\n\r\n" % (len(SHOW_BODY), SHOW_BODY)
    )
    last = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    answers = responses_of(await answer_to(port, show * 3 + last))
    assert [head.split(b"\r\n", 1)[0] for head, _ in answers] == [b"HTTP/1.1 200 OK"] * 4
    assert all(orjson.loads(body)["details"] for _, body in answers[:3])


async def test_a_trailer_longer_than_gos_buffer_gets_its_error(patient: Proxy) -> None:
    body = b"%x\r\n%b\r\n0\r\nX: %b" % (len(SHOW_BODY), SHOW_BODY, b"a" * 5000)
    [(head, got)] = responses_of(await send_chunked(patient.port, "/api/show", body, False))
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), head
    assert orjson.loads(got) == {"error": "http: suspiciously long trailer after chunked body"}


async def test_a_line_just_within_gos_limit_is_read(patient: Proxy) -> None:
    """Go's reader takes a size line of 4096 bytes, its CRLF included (its buffer's
    size), and refuses one byte more (above)."""
    line = b"%x;" % len(SHOW_BODY)
    line += b"a" * (4094 - len(line)) + b"\r\n"
    answer = await send_chunked(
        patient.port, "/api/show", line + SHOW_BODY + b"\r\n0\r\n\r\n", together=False
    )
    [(head, got)] = responses_of(answer)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert orjson.loads(got)["details"]


async def test_a_body_that_breaks_after_the_backend_answered_leaves_that_answer(
    patient: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    """An upload to a path Ollama answers without reading the body (gin's 404): the
    backend's answer is the client's, whole, when the body's framing breaks after it;
    the connection closes after it, and the proxy logs no failure of its own."""
    sock = await connect(patient.port)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(
            sock,
            b"POST /api/no-such-path HTTP/1.1\r\nHost: localhost\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n4\r\nblob\r\n",
        )
        head, body = await read_response(sock)
        await loop.sock_sendall(sock, b"zz\r\n")
        assert await read_until_closed(sock, 10) == b""
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n") and body == b"404 page not found"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert (await generate(patient.url))["done"] is True


async def test_a_slow_body_that_keeps_moving_is_served(stall_bound: Proxy) -> None:
    """The bound is on silence, not on the whole body: a body dribbled over several
    times the bound, two bytes well within it each time, is answered."""
    sock = await connect(stall_bound.port)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(
            sock,
            b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY),
        )
        for at in range(0, len(BODY), 2):
            await asyncio.sleep(0.05)
            await loop.sock_sendall(sock, BODY[at : at + 2])
        head, body = await read_response(sock)
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert orjson.loads(body)["done"] is True


async def test_the_emulator_refuses_a_head_over_gos_limit_as_ollama_does(
    emulator: Emulator,
) -> None:
    """Ollama's own limit (Go's default, 1 MiB and slack) with Go's exact answer, so
    that a client sees the same refusal with or without the proxy in front."""
    head = b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * (2 << 20) + b"\r\n\r\n"
    assert await answer_to(emulator.port, head) == HEAD_TOO_LARGE


async def test_an_answer_given_without_reading_the_body_owes_no_100_continue(
    slow_heads: Proxy,
) -> None:
    """Go sends `100 Continue` when a handler first reads the body: a request answered
    without it (here a path of the proxy's own that does not exist) gets its final
    answer alone, and the connection closes after it, since the body may still come."""
    sock = await connect(slow_heads.port)
    try:
        await asyncio.get_running_loop().sock_sendall(
            sock,
            b"POST /api/autoroute/nothing-here HTTP/1.1\r\nHost: localhost\r\n"
            b"Expect: 100-continue\r\nContent-Length: 12\r\n\r\n",
        )
        head = await read_until(sock, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404 "), head
        assert b"connection: close" in head.lower().split(b"\r\n"), head
    finally:
        sock.close()


def responses_of(stream: bytes) -> list[tuple[bytes, bytes]]:
    """The responses (head, body) one after another in `stream`, each framed by its
    Content-Length (Go's refusals, which have none, end the stream)."""
    found = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(
            (int(x.split(b":", 1)[1]) for x in lines if x.lower().startswith(b"content-length:")),
            len(rest),
        )
        found.append((head, rest[:length]))
        stream = rest[length:]
    return found


# A valid request and, in the same write, bytes behind it that do not parse: Go's
# server answers the request, then refuses the bytes with its 400, then closes.
BODY = orjson.dumps({"model": MODEL})
PIPELINED = {
    "get": b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "post": b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%b"
    % (len(BODY), BODY),
    "chunked": b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"%x\r\n%b\r\n0\r\n\r\n" % (len(BODY), BODY),
}


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("requests", [1, 2], ids=["one", "two"])
@pytest.mark.parametrize("kind", list(PIPELINED))
@pytest.mark.parametrize(
    "garbage",
    [b"this is not http\r\n\r\n", b"\x01\x02\x03\r\n\r\n", b"GET / HTTP/1.1\r\nX\r\n\r\n"],
    ids=["words", "controls", "bad-header"],
)
async def test_requests_before_bytes_that_do_not_parse_are_answered_first(
    slow_heads: Proxy,
    emulator: Emulator,
    server: str,
    requests: int,
    kind: str,
    garbage: bytes,
) -> None:
    port = slow_heads.port if server == "proxy" else emulator.port
    answer = await answer_to(port, PIPELINED[kind] * requests + garbage)
    *served, (refusal, _) = responses_of(answer)
    assert [head.split(b"\r\n", 1)[0] for head, _ in served] == [b"HTTP/1.1 200 OK"] * requests
    for _, body in served:
        assert orjson.loads(body), body
    assert refusal.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[-300:]
    refused = answer[answer.rindex(b"HTTP/1.1 400 ") :]
    assert (go_answer(refused) if server == "proxy" else refused) == BAD_REQUEST


# Go's net/http switches protocols only for a handler that hijacks the connection, and
# reads an `Upgrade: h2c` request as any other (HTTP/2 without TLS is its `PRI *`
# preface alone, server.go isH2Upgrade); Ollama hijacks none: each such request gets
# its answer, and requests behind it on the connection theirs, in order.
UPGRADES = {
    "h2c": b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    "websocket": b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
}
UPGRADE_ASKED = {
    "get": b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n%b\r\n",
    "post": b"POST /api/show HTTP/1.1\r\nHost: localhost\r\n%%bContent-Length: %d\r\n\r\n%b"
    % (len(BODY), BODY),
}


async def served(reader: asyncio.StreamReader) -> None:
    """The next answer on the connection: a 200 with a JSON body, the connection open."""
    async with asyncio.timeout(EVENTUALLY):
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"\r\ncontent-length: (\d+)\r\n", head.lower())
        assert length is not None, head
        body = await reader.readexactly(int(length[1]))
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert b"connection: close" not in head.lower(), head
    assert orjson.loads(body), body


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("asked", list(UPGRADE_ASKED))
@pytest.mark.parametrize("upgrade", list(UPGRADES))
@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "one-by-one"])
async def test_an_upgrade_is_ignored_as_go_ignores_it(
    slow_heads: Proxy, emulator: Emulator, server: str, asked: str, upgrade: str, pipelined: bool
) -> None:
    port = slow_heads.port if server == "proxy" else emulator.port
    requests = [UPGRADE_ASKED[asked] % UPGRADES[upgrade], PIPELINED["get"], PIPELINED["post"]]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if pipelined:
            writer.write(b"".join(requests))
        for request in requests:
            if not pipelined:
                writer.write(request)
            await served(reader)
        # The connection serves on after them.
        writer.write(PIPELINED["get"])
        await served(reader)
    finally:
        writer.close()


# Go's readRequest (src/net/http/server.go): a Host its httpguts.ValidHostHeader refuses
# (a byte outside letters, digits and `!$%&'()*+,-.:;=[]_~`) is a badRequestError, its
# text in the status line and body, before any handler (so before Ollama's check of
# the host's name, which would answer 403).
MALFORMED_HOST = (
    b"HTTP/1.1 400 Bad Request: malformed Host header\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
    b"400 Bad Request: malformed Host header"
)


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("later", [False, True], ids=["first", "later"])
@pytest.mark.parametrize(
    "host", [b"a b", b"local\\host", b"localhost/x", b'"localhost"', b"h\xc3\xa9", b"a\tb"]
)
async def test_a_malformed_host_gets_gos_400(
    slow_heads: Proxy, emulator: Emulator, server: str, later: bool, host: bytes
) -> None:
    port = slow_heads.port if server == "proxy" else emulator.port
    sock = await connect(port)
    try:
        if later:
            await one_request_answered(sock)
        await asyncio.get_running_loop().sock_sendall(
            sock, b"GET /api/version HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
        )
        answer = await read_until_closed(sock)
    finally:
        sock.close()
    assert (go_answer(answer) if server == "proxy" else answer) == MALFORMED_HOST


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("host", [b"127.0.0.1:1", b"[::1]:2", b"localhost", b""])
async def test_a_host_go_reads_is_no_malformed_host(
    slow_heads: Proxy, emulator: Emulator, server: str, host: bytes
) -> None:
    answer = await answer_to(
        slow_heads.port if server == "proxy" else emulator.port,
        b"GET /api/version HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]


# Go's parseContentLength (src/net/http/transfer.go) reads a Content-Length with
# strconv.ParseUint(cl, 10, 63): one of 2^63 or more is its "bad Content-Length", the
# plain 400, whatever the method. llhttp takes a length up to 2^64 - 1, and aiohttp
# reads 2^64 - 1 as no body at all.
@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize(
    "length", [b"9223372036854775808", b"18446744073709551615", b"009223372036854775808"]
)
@pytest.mark.parametrize(
    "line", [b"GET /api/version", b"POST /api/show", b"POST /api/blobs/sha256:" + b"0" * 64]
)
async def test_a_length_beyond_gos_int64_gets_its_400_and_reaches_no_backend(
    slow_heads: Proxy, emulator: Emulator, server: str, length: bytes, line: bytes
) -> None:
    shown = emulator.state.requests["/api/show"]
    request = line + b" HTTP/1.1\r\nHost: localhost\r\nContent-Length: " + length + b"\r\n\r\n{}"
    port = slow_heads.port if server == "proxy" else emulator.port
    # (A bound for a server that waits for the body: that is the failure, not a timing.)
    answer = await asyncio.wait_for(answer_to(port, request), EVENTUALLY)
    assert (go_answer(answer) if server == "proxy" else answer) == BAD_REQUEST
    assert emulator.state.requests["/api/show"] == shown


# Heads Go's net/http reads and llhttp refuses, with no way to read them as Go does
# short of parsing every head twice: the proxy answers each with Go's plain 400 and
# closes, and no backend sees any of it. What Go does with each (src/net/http
# transfer.go fixLength and parseTransferEncoding, net/textproto reader.go):
ODD_HEADS = {
    # Go: served, the duplicate dropped (fixLength); llhttp: "Duplicate Content-Length".
    "same-lengths": b"Content-Length: 2\r\nContent-Length: 2\r\n",
    # Go: 400 too ("cannot contain multiple Content-Length headers").
    "two-lengths": b"Content-Length: 2\r\nContent-Length: 3\r\n",
    # Go: 400 too (one field "2, 2" is no number to ParseUint).
    "length-list": b"Content-Length: 2, 2\r\n",
    # Go: served chunked, the Content-Length dropped once it parses (fixLength);
    # llhttp refuses both together.
    "length-then-chunked": b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
    "chunked-then-length": b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n",
    # Go: served (textproto's lines end at LF, a CR before it dropped).
    "bare-lf": b"X-A: b\nContent-Length: 2\r\n",
    # Go: served, the lines joined by a space (readContinuedLineSlice).
    "folded": b"X-A: b\r\n  c\r\nContent-Length: 2\r\n",
    "folded-tab": b"X-A: b\r\n\tc\r\nContent-Length: 2\r\n",
}


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("after", [0, 1], ids=["alone", "pipelined"])
@pytest.mark.parametrize("fields", list(ODD_HEADS.values()), ids=list(ODD_HEADS))
async def test_a_head_llhttp_refuses_gets_gos_400_and_reaches_no_backend(
    slow_heads: Proxy, emulator: Emulator, server: str, after: int, fields: bytes
) -> None:
    """Never a 5xx nor a close without an answer; a request before it in the same
    write is answered first."""
    port = slow_heads.port if server == "proxy" else emulator.port
    shown = emulator.state.requests["/api/show"]
    body = b"2\r\n{}\r\n0\r\n\r\n" if b"chunked" in fields else b"{}"
    answer = await answer_to(
        port,
        PIPELINED["get"] * after
        + b"POST /api/show HTTP/1.1\r\nHost: localhost\r\n"
        + fields
        + b"\r\n"
        + body,
    )
    *served, (refusal, _) = responses_of(answer)
    assert [head.split(b"\r\n", 1)[0] for head, _ in served] == [b"HTTP/1.1 200 OK"] * after
    refused = answer[answer.index(refusal) :]
    assert (go_answer(refused) if server == "proxy" else refused) == BAD_REQUEST
    assert emulator.state.requests["/api/show"] == shown


# Go's transferReader judges the Transfer-Encoding before the Content-Length
# (src/net/http/transfer.go readTransfer: parseTransferEncoding, then fixLength), so an
# HTTP/1.1 head with both whose Transfer-Encoding is other than one `chunked` field is
# its 501, before the Host checks of server.go's readRequest; llhttp refuses any head
# with both, whichever comes first.
LENGTH_AND_CODING = {
    "length-then-gzip": b"Content-Length: 2\r\nTransfer-Encoding: gzip\r\n",
    "gzip-then-length": b"Transfer-Encoding: gzip\r\nContent-Length: 2\r\n",
    "length-then-gzip-chunked": b"Content-Length: 2\r\nTransfer-Encoding: gzip, chunked\r\n",
    "gzip-chunked-then-length": b"Transfer-Encoding: gzip, chunked\r\nContent-Length: 2\r\n",
    "length-then-two-codings": (
        b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"
    ),
    "no-host": b"Content-Length: 2\r\nTransfer-Encoding: identity\r\n",
}


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("after", [0, 1], ids=["alone", "pipelined"])
@pytest.mark.parametrize("name", list(LENGTH_AND_CODING))
async def test_a_length_with_a_coding_go_does_not_take_gets_its_501(
    slow_heads: Proxy, emulator: Emulator, server: str, after: int, name: str
) -> None:
    port = slow_heads.port if server == "proxy" else emulator.port
    shown = emulator.state.requests["/api/show"]
    host = b"" if name == "no-host" else b"Host: localhost\r\n"
    answer = await answer_to(
        port,
        PIPELINED["get"] * after
        + b"POST /api/show HTTP/1.1\r\n"
        + host
        + LENGTH_AND_CODING[name]
        + b"\r\n{}",
    )
    *served, (refusal, _) = responses_of(answer)
    assert [head.split(b"\r\n", 1)[0] for head, _ in served] == [b"HTTP/1.1 200 OK"] * after
    refused = answer[answer.index(refusal) :]
    assert (go_answer(refused) if server == "proxy" else refused) == UNSUPPORTED_TE
    assert emulator.state.requests["/api/show"] == shown


GZIP_LINE = b"Transfer-Encoding: gzip"
SHOW = b"POST /api/show HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("data", "line", "refused"),
    [
        (SHOW + b"Content-Length: 2\r\n" + GZIP_LINE + b"\r\n\r\n{}", GZIP_LINE, True),
        # The Transfer-Encoding fields are read from the whole head, after the line too.
        (
            SHOW + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\nX: y\r\n"
            b"transfer-encoding:chunked\r\n\r\n",
            b"Content-Length: 2",
            True,
        ),
        # One `chunked` field, in any case and with blanks around: Go reads the head.
        (
            SHOW + b"Transfer-Encoding: \tCHUNKED \r\nContent-Length: 2\r\n\r\n",
            b"Content-Length: 2",
            False,
        ),
        # HTTP/1.0: Go drops the Transfer-Encoding and reads the head.
        (
            b"POST / HTTP/1.0\r\nContent-Length: 2\r\n" + GZIP_LINE + b"\r\n\r\n",
            GZIP_LINE,
            False,
        ),
        # The head began in an earlier read, or goes on in a later one.
        (b"Host: x\r\nContent-Length: 2\r\n" + GZIP_LINE + b"\r\n\r\n", GZIP_LINE, False),
        (SHOW + b"Content-Length: 2\r\n" + GZIP_LINE + b"\r\nX: y", GZIP_LINE, False),
        # A body before the head (the previous request's) that holds the line.
        (
            SHOW + b"Content-Length: 30\r\n\r\n" + b"{\r\n" + GZIP_LINE + b"\r\n\r\n}"
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n" + GZIP_LINE + b"\r\n\r\n",
            GZIP_LINE,
            True,
        ),
        # ... in a head of its own, answered otherwise: the plain 400 stays.
        (
            b"POST / HTTP/1.1\r\nContent-Length: 80\r\n\r\n"
            b"GET / HTTP/1.0\r\nContent-Length: 2\r\n" + GZIP_LINE + b"\r\n\r\n"
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n" + GZIP_LINE + b"\r\n\r\n",
            GZIP_LINE,
            False,
        ),
    ],
    ids=[
        "gzip",
        "chunked-twice",
        "chunked",
        "http10",
        "begun-before",
        "goes-on",
        "body-before",
        "head-in-body",
    ],
)
def test_a_length_with_a_coding_is_judged_from_the_read(
    data: bytes, line: bytes, refused: bool
) -> None:
    assert (length_with_coding(data, line) is not None) is refused


# Go ignores (and drops) a Transfer-Encoding on an HTTP/1.0 request (Go issue 12785,
# transfer.go parseTransferEncoding): without a Content-Length its body is empty, so
# Ollama's /api/generate answers "missing request body" (server/routes.go
# GenerateHandler), whatever the client sent after the head.
MISSING_BODY = b'{"error":"missing request body"}'


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("coding", [b"chunked", b"gzip, chunked"])
@pytest.mark.parametrize("keep_alive", [False, True], ids=["close", "keep-alive"])
async def test_an_http10_request_has_no_body_by_its_transfer_encoding(
    slow_heads: Proxy,
    emulator: Emulator,
    server: str,
    coding: bytes,
    keep_alive: bool,
) -> None:
    """The chunks the client sends are no body; the connection closes after the
    answer, so that they are never read as a request either (Go, on a keep-alive
    connection, reads them as its next request line and answers that 400)."""
    port = slow_heads.port if server == "proxy" else emulator.port
    generated = emulator.state.requests["/api/generate"]
    body = orjson.dumps({"model": MODEL, "prompt": "hi", "stream": False})
    answer = await answer_to(
        port,
        b"POST /api/generate HTTP/1.0\r\nTransfer-Encoding: %b\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n"
        % (coding, b"Connection: keep-alive\r\n" if keep_alive else b"", len(body), body)
        + PIPELINED["get"],
    )
    [(head, answered)] = responses_of(answer)
    assert head.startswith(b"HTTP/1.0 400 Bad Request\r\n"), answer[:300]
    assert answered == MISSING_BODY
    if server == "emulator":
        assert emulator.state.requests["/api/generate"] == generated + 1
        assert "transfer-encoding" not in emulator.state.last_headers


# Heads Go reads and the proxy refuses with Go's plain 400, as in ODD_HEADS: Go serves
# an HTTP/1.0 request with a Content-Length and a Transfer-Encoding by its
# Content-Length (the Transfer-Encoding dropped), whatever the coding.
HTTP10_LENGTH_AND_CODING = {
    "length-then-chunked": b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
    "chunked-then-length": b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n",
    "length-then-gzip": b"Content-Length: 2\r\nTransfer-Encoding: gzip\r\n",
    "gzip-then-length": b"Transfer-Encoding: gzip\r\nContent-Length: 2\r\n",
}


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize("name", list(HTTP10_LENGTH_AND_CODING))
async def test_an_http10_length_with_a_coding_gets_the_plain_400(
    slow_heads: Proxy, emulator: Emulator, server: str, name: str
) -> None:
    port = slow_heads.port if server == "proxy" else emulator.port
    shown = emulator.state.requests["/api/show"]
    answer = await answer_to(
        port, b"POST /api/show HTTP/1.0\r\n" + HTTP10_LENGTH_AND_CODING[name] + b"\r\n{}"
    )
    assert (go_answer(answer) if server == "proxy" else answer) == BAD_REQUEST
    assert emulator.state.requests["/api/show"] == shown


async def test_a_refusal_of_a_body_never_sent_closes_the_connection_as_go_does(
    slow_heads: Proxy,
) -> None:
    """A body over the limit that waits for `100 Continue` is refused without reading
    it, and Go then closes the connection (closeWriteAndWait: half a second): the
    socket is not held open waiting for a body the client will never send (aiohttp
    would linger ten seconds over it)."""
    sock = await connect(slow_heads.port)
    try:
        await asyncio.get_running_loop().sock_sendall(
            sock,
            b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (1 << 30),
        )
        answer = await read_until_closed(sock, seconds=5.0)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


async def test_a_path_of_many_segments_is_routed_without_aiohttps_prefix_walk(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every path reaches the one catch-all route, found in one pass over the path: not
    by aiohttp's own router, which looks up each prefix of the path as a new string
    (half a second of the event loop for 64 KiB of `a/a/...`, before any key is asked
    for). Its resolve is never reached, and the path gets its answer."""
    walks: list[str] = []
    walk = web.UrlDispatcher.resolve

    async def counted(self: web.UrlDispatcher, request: web.Request) -> Any:
        walks.append(request.path[:40])
        return await walk(self, request)

    monkeypatch.setattr(web.UrlDispatcher, "resolve", counted)
    path = b"/api/autoroute/" + b"a/" * 30_000
    sock = await connect(proxy.port)
    try:
        await asyncio.get_running_loop().sock_sendall(
            sock, b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path
        )
        assert (await read_until_closed(sock, 10)).startswith(b"HTTP/1.1 404 ")
    finally:
        sock.close()
    assert walks == []

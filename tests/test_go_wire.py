"""Raw bytes a client may send that Go's net/http (Ollama's server) reads in its own way:
the connection's keep-alive as Go decides it from `Connection` alone, request targets
without a path (`*`, the HTTP/2 preface), a fragment in the target, a second `Host`,
and a chunked body whose head came in many reads. The proxy and the emulator answer
each as Go and Ollama do, and go on serving others.

No timing thresholds: the pauses below only spread bytes over several reads.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import orjson
import pytest

from proxy.config_serving import Limits, Timeouts
from proxy.connection import BAD_REQUEST
from tests.support import Emulator, Proxy, ServerThread
from tests.test_client_faults import (
    MODEL,
    NO_USAGE,
    answer_to,
    connect,
    generate,
    go_answer,
    read_response,
    read_until_closed,
    responses_of,
)


@pytest.fixture
def wire(servers: ServerThread, emulator: Emulator) -> Iterator[Proxy]:
    """A proxy whose head deadline and idle timeout no test reaches."""
    prx = Proxy(
        servers,
        [emulator.url],
        timeouts=Timeouts(client_header_seconds=60, client_idle_seconds=3600),
        limits=Limits(max_header_bytes=2048),
        usage=NO_USAGE,
    )
    yield prx
    prx.stop()


def port_of(server: str, proxy: Proxy, emulator: Emulator) -> int:
    return proxy.port if server == "proxy" else emulator.port


def fields_of(head: bytes) -> dict[str, bytes]:
    lines = head.split(b"\r\n")[1:]
    return {k.strip().lower().decode(): v.strip() for k, _, v in (x.partition(b":") for x in lines)}


async def stays_open(sock: socket.socket) -> bool:
    """Whether the server serves another request on `sock`, which it has answered once
    (False: it closed the connection instead)."""
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        return False
    rest = b""
    async with asyncio.timeout(60):
        while b"\r\n\r\n" not in rest:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                return False
            if not chunk:
                return False
            rest += chunk
    return rest.startswith(b"HTTP/1.1 200 ")


# Go decides from `Connection` alone (src/net/http/request.go `wantsClose`,
# `wantsHttp10KeepAlive`; transfer.go `shouldClose`; server.go `writeHeader`): `close`
# as a comma-separated token of any field, or with a space or comma around it in the
# first; HTTP/1.0 keeps the connection only for `keep-alive` so found in the first field
# (and an answer with a length, which /api/version has). `Proxy-Connection` is nothing
# to Go; llhttp reads it as `Connection`. (HTTP/1.0 `Connection: keep-alive foo`, which
# Go keeps, closes: see proxy/go_keep_alive.py.)
KEEP_ALIVE_CASES = [
    (b"1.1", b"Proxy-Connection: close\r\n", True, None),
    (b"1.1", b"Connection: keep-alive\r\nProxy-Connection: close\r\n", True, None),
    (b"1.1", b"Connection: foo close\r\n", False, b"close"),
    (b"1.1", b"Connection: close\r\n", False, b"close"),
    (b"1.0", b"Proxy-Connection: keep-alive\r\n", False, None),
    (b"1.0", b"Connection: foo\r\nConnection: keep-alive\r\n", False, None),
    (b"1.0", b"Connection: keep-alive\r\nProxy-Connection: close\r\n", True, b"keep-alive"),
    (b"1.0", b"Connection: keep-alive\r\n", True, b"keep-alive"),
]


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize(
    ("version", "fields", "kept", "connection"),
    KEEP_ALIVE_CASES,
    ids=[
        "proxy-connection-close",
        "keep-alive-and-proxy-close",
        "close-after-a-space",
        "close",
        "http10-proxy-keep-alive",
        "http10-keep-alive-in-second-field",
        "http10-keep-alive-and-proxy-close",
        "http10-keep-alive",
    ],
)
async def test_the_connection_is_kept_as_go_keeps_it(
    wire: Proxy,
    emulator: Emulator,
    server: str,
    version: bytes,
    fields: bytes,
    kept: bool,
    connection: bytes | None,
) -> None:
    sock = await connect(port_of(server, wire, emulator))
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(
            sock, b"GET /api/version HTTP/%b\r\nHost: localhost\r\n%b\r\n" % (version, fields)
        )
        head, body = await read_response(sock)
        assert head.startswith(b"HTTP/%b 200 " % version), head
        assert orjson.loads(body)["version"]
        assert fields_of(head).get("connection") == connection, head
        assert await stays_open(sock) is kept
    finally:
        sock.close()


# The mux's answer to a target of `*` (src/net/http/server.go, `ServeMux.ServeHTTP`:
# `Connection: close` for HTTP/1.1 and later, then 400 with no body), which Ollama's
# server reaches for any method but OPTIONS (its server's globalOptionsHandler) and for
# `PRI * HTTP/2.0`, the HTTP/2 preface, which Go's HTTP/1 server reads as a request
# (`http1ServerSupportsRequest`, `isH2Upgrade`).
ASTERISK_REQUESTS = [
    b"GET * HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST * HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
    b"PRI * HTTP/2.0\r\n\r\n",
    b"PRI * HTTP/2.0\r\nHost: localhost\r\n\r\n",
    b"PRI * HTTP/1.1\r\nHost: localhost\r\n\r\n",
]


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize(
    "request_bytes",
    ASTERISK_REQUESTS,
    ids=[
        "get",
        "post",
        "preface",
        "preface-and-settings",
        "preface-line-alone",
        "pri-with-host",
        "pri-http11",
    ],
)
async def test_a_target_of_asterisk_gets_the_muxs_400(
    wire: Proxy, emulator: Emulator, server: str, request_bytes: bytes
) -> None:
    answer = await answer_to(port_of(server, wire, emulator), request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    fields = fields_of(head)
    assert body == b""
    assert fields["content-length"] == b"0"
    assert fields["connection"] == b"close"
    assert "content-type" not in fields
    assert ("x-request-id" in fields) is (server == "proxy")
    assert (await generate(wire.url))["done"] is True


@pytest.mark.parametrize("server", ["proxy", "emulator"])
async def test_pri_on_a_path_gets_ollamas_answer_for_the_method(
    wire: Proxy, emulator: Emulator, server: str
) -> None:
    """PRI is a method as any other to Go off `*`: gin's 405 for a route of Ollama's
    (llhttp expects the HTTP/2 preface after any PRI line)."""
    answer = await answer_to(
        port_of(server, wire, emulator), b"PRI /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n"), answer
    assert fields_of(head)["allow"] == b"HEAD, GET"
    assert body == b"405 method not allowed"


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize(
    "target",
    [
        b"/api/version#frag",
        b"/api/tags#",
        b"/api/version#a?b",
        b"http://localhost/api/version#frag",
    ],
    ids=["fragment", "empty-fragment", "fragment-with-query", "absolute-form"],
)
async def test_a_fragment_in_the_path_is_part_of_it_as_to_go(
    wire: Proxy, emulator: Emulator, server: str, target: bytes
) -> None:
    """Go's ParseRequestURI keeps a `#` and what follows in the path (it is no URL
    reference with a fragment), so gin finds no route: its 404."""
    answer = await answer_to(
        port_of(server, wire, emulator),
        b"GET %b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % target,
    )
    [(head, body)] = responses_of(answer)
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n"), answer
    assert body == b"404 page not found"


@pytest.mark.parametrize("server", ["proxy", "emulator"])
async def test_a_fragment_after_the_query_is_part_of_the_query_as_to_go(
    wire: Proxy, emulator: Emulator, server: str
) -> None:
    answer = await answer_to(
        port_of(server, wire, emulator),
        b"GET /api/version?a#frag HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    [(head, body)] = responses_of(answer)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert orjson.loads(body)["version"]


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize(
    "hosts",
    [b"Host: localhost\r\nHost: localhost\r\n", b"Host: a\r\nHost: b\r\nTransfer-Encoding: x\r\n"],
    ids=["twice", "twice-before-a-coding"],
)
async def test_a_second_host_gets_gos_plain_400(
    wire: Proxy, emulator: Emulator, server: str, hosts: bytes
) -> None:
    """Go's readRequest (src/net/http/request.go) refuses a second Host with a plain
    error, before it reads the body's framing: its server's plain 400."""
    answer = await answer_to(
        port_of(server, wire, emulator), b"GET /api/version HTTP/1.1\r\n%b\r\n" % hosts
    )
    assert (go_answer(answer) if server == "proxy" else answer) == BAD_REQUEST


SHOW_BODY = orjson.dumps({"model": MODEL})
CHUNKED_HEAD = (
    b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
    b"Connection: close\r\n\r\n"
)


async def send_in_pieces(port: int, pieces: list[bytes]) -> bytes:
    """`pieces` one write each, a pause after each so that each is a read of its own;
    what came back until the connection closed."""
    sock = await connect(port)
    loop = asyncio.get_running_loop()
    try:
        for piece in pieces:
            await loop.sock_sendall(sock, piece)
            await asyncio.sleep(0.005)
        return await read_until_closed(sock)
    finally:
        sock.close()


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize(
    "size_line", [b"%x", b"%x ", b"%x;a b"], ids=["canonical", "space", "odd-extension"]
)
@pytest.mark.parametrize("how", ["head-in-bytes", "all-in-bytes", "head-ends-in-the-body-read"])
async def test_a_chunked_body_is_read_alike_however_its_head_came(
    wire: Proxy, emulator: Emulator, server: str, size_line: bytes, how: str
) -> None:
    """Size lines Go reads (llhttp refuses the last two) are read as Go reads them when
    the head comes a byte at a time, or its last bytes with the body, as when it came
    whole (tests/test_client_faults.py)."""
    body = (size_line % len(SHOW_BODY)) + b"\r\n" + SHOW_BODY + b"\r\n" + (size_line % 0)
    body += b"\r\n\r\n"
    if how == "head-in-bytes":
        pieces = [*byte_by_byte(CHUNKED_HEAD), body]
    elif how == "all-in-bytes":
        pieces = byte_by_byte(CHUNKED_HEAD + body)
    else:
        pieces = [CHUNKED_HEAD[:-3], CHUNKED_HEAD[-3:] + body]
    answer = await send_in_pieces(port_of(server, wire, emulator), pieces)
    [(head, got)] = responses_of(answer)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert orjson.loads(got)["details"]
    assert (await generate(wire.url))["done"] is True


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize(("length", "kept"), [(4096, True), (4097, False)])
async def test_options_asterisk_reads_a_body_of_4_kib_at_most_as_go_does(
    wire: Proxy, emulator: Emulator, server: str, length: int, kept: bool
) -> None:
    """Go's globalOptionsHandler reads at most 4 KiB of an `OPTIONS *` body through a
    MaxBytesReader: a longer one closes the connection (`Connection: close`)."""
    sock = await connect(port_of(server, wire, emulator))
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(
            sock,
            b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%b"
            % (length, b"a" * length),
        )
        head, body = await read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert body == b""
        assert fields_of(head).get("connection") == (None if kept else b"close")
        assert await stays_open(sock) is kept
    finally:
        sock.close()


# Request targets with raw bytes beyond ASCII (UTF-8 sent as it is, not percent-encoded):
# Go's `ParseRequestURI` refuses only control bytes (`stringContainsCTLByte`: below 0x20,
# and 0x7f) and reads these as any other, its `URL.Path` decoded as from `%C3%A9`; gin
# routes by that path. llhttp refuses them ("Invalid char in url").
CHAT_BODY = orjson.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
)
RAW_TARGETS = {
    "query": (b"GET /api/tags?x=\xc3\xa9 HTTP/1.1\r\nHost: localhost\r\n\r\n", 200),
    "path": (b"GET /api/t\xc3\xa9 HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
    "post-query": (
        b"POST /api/chat?x=\xc3\xa9 HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%b"
        % (len(CHAT_BODY), CHAT_BODY),
        200,
    ),
    "invalid-utf8": (b"GET /api/tags?x=\xff HTTP/1.1\r\nHost: localhost\r\n\r\n", 200),
}
GET_VERSION = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n"


def ollamas_answer(head: bytes, body: bytes, status: int) -> None:
    """Ollama's answer to one of `RAW_TARGETS`: the route's, or gin's 404."""
    assert head.startswith(b"HTTP/1.1 %d " % status), head + body
    if status == 404:
        assert body == b"404 page not found"
        assert fields_of(head)["content-type"] == b"text/plain"
    else:
        assert orjson.loads(body), body


async def answer_read(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The next answer on the connection, framed by its Content-Length: head, body."""
    async with asyncio.timeout(60):
        head = await reader.readuntil(b"\r\n\r\n")
        length = fields_of(head[:-4]).get("content-length")
        assert length is not None, head + await reader.read()
        return head[:-4], await reader.readexactly(int(length))


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize(
    "how",
    [
        "first",
        "later",
        "pipelined",
        "pipelined-after-chunked",
        "pipelined-twice",
        "in-pieces",
        "byte-by-byte",
    ],
)
@pytest.mark.parametrize("target", list(RAW_TARGETS))
async def test_a_target_with_bytes_beyond_ascii_is_read_as_go_reads_it(
    wire: Proxy, emulator: Emulator, server: str, how: str, target: str
) -> None:
    request, status = RAW_TARGETS[target]
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server, wire, emulator))
    try:
        if how == "later":
            writer.write(GET_VERSION)
            head, _ = await answer_read(reader)
            assert head.startswith(b"HTTP/1.1 200 "), head
        if how in ("in-pieces", "byte-by-byte"):
            # Cut inside the target's bytes beyond ASCII, or a byte at a time, each
            # piece a read of its own (most likely).
            cut = request.index(b" HTTP/") - 1
            halves = [request[:cut], request[cut:]]
            for piece in halves if how == "in-pieces" else byte_by_byte(request):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.05 if how == "in-pieces" else 0.002)
        elif how.startswith("pipelined"):
            # Behind a request with a body in the same write; or twice.
            before = PIPELINED_SHOW.get(how, request)
            writer.write(before + request)
            if before is not request:
                head, body = await answer_read(reader)
                assert head.startswith(b"HTTP/1.1 200 "), head
                assert orjson.loads(body)["details"]
            else:
                ollamas_answer(*await answer_read(reader), status)
        else:
            writer.write(request)
        ollamas_answer(*await answer_read(reader), status)
        writer.write(GET_VERSION)  # the connection serves on
        head, _ = await answer_read(reader)
        assert head.startswith(b"HTTP/1.1 200 "), head
    finally:
        writer.close()


PIPELINED_SHOW = {
    "pipelined": b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%b"
    % (len(SHOW_BODY), SHOW_BODY),
    "pipelined-after-chunked": b"POST /api/show HTTP/1.1\r\nHost: localhost\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(SHOW_BODY), SHOW_BODY),
}


@pytest.mark.parametrize(
    "target", [b"/api/show?x=\xc3\xa9", b"/api/sh\xc3\xa9", b"/api/show?x=\xff&y=%C3%A9"]
)
async def test_a_target_beyond_ascii_reaches_the_backend_as_sent(
    wire: Proxy, emulator: Emulator, target: bytes
) -> None:
    """The backend (Go) gets the client's bytes, which it reads as Ollama would."""
    answer = await answer_to(
        wire.port,
        b"POST %b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: %d"
        b"\r\n\r\n%b" % (target, len(SHOW_BODY), SHOW_BODY),
    )
    [(head, _)] = responses_of(answer)
    assert head.startswith(b"HTTP/1.1 %d " % (404 if b"?" not in target else 200)), answer
    assert emulator.state.last_target == target


@pytest.mark.parametrize("server", ["proxy", "emulator"])
@pytest.mark.parametrize(
    "target",
    [b"/api/t\xc3\xa9\x01", b"/api/t\xc3\xa9\x7f", b"/api/t\xc3\xa9 x"],
    ids=["control", "delete", "space"],
)
async def test_a_target_beyond_ascii_go_refuses_gets_its_400(
    wire: Proxy, emulator: Emulator, server: str, target: bytes
) -> None:
    """A control byte after the bytes beyond ASCII (`stringContainsCTLByte`), or a line
    with a third space, is still Go's plain 400."""
    answer = await answer_to(
        port_of(server, wire, emulator), b"GET %b HTTP/1.1\r\nHost: localhost\r\n\r\n" % target
    )
    assert (go_answer(answer) if server == "proxy" else answer) == BAD_REQUEST


@pytest.mark.parametrize("server", ["proxy", "emulator"])
async def test_the_mux_reads_a_target_beyond_ascii_as_sent(
    wire: Proxy, emulator: Emulator, server: str
) -> None:
    """Go's mux cleans `URL.EscapedPath()`, which for a path sent with bytes beyond
    ASCII (not a valid encoding) is the decoded path escaped again: `(` as `%28` too,
    which a percent-encoded form of the same path would keep as it is; then the
    redirect escapes the cleaned path once more."""
    answer = await answer_to(
        port_of(server, wire, emulator),
        b"GET /api/../t(\xc3\xa9)?x=\xc3\xa9 HTTP/1.1\r\nHost: localhost\r\n"
        b"Connection: close\r\n\r\n",
    )
    [(head, _)] = responses_of(answer)
    assert head.startswith(b"HTTP/1.1 307 "), answer
    assert fields_of(head)["location"] == b"/t%2528%25C3%25A9%2529?x=%c3%a9"


@pytest.mark.parametrize("server", ["proxy", "emulator"])
async def test_a_target_beyond_ascii_in_a_body_is_no_request(
    wire: Proxy, emulator: Emulator, server: str
) -> None:
    """The line read again is the one after the body before it (by its length), not a
    request line the body holds."""
    inside = b"GET /api/t\xc3\xa9 HTTP/1.1\r\nHost: localhost\r\n\r\n"
    request, status = RAW_TARGETS["query"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server, wire, emulator))
    try:
        writer.write(
            b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%b%b"
            % (len(inside), inside, request)
        )
        head, body = await answer_read(reader)
        assert head.startswith(b"HTTP/1.1 400 "), head
        assert orjson.loads(body)["error"]
        ollamas_answer(*await answer_read(reader), status)
    finally:
        writer.close()

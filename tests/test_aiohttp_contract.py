"""What proxy/aiohttp_internals.py relies on in aiohttp, checked against the installed
release: each private name still exists, and still behaves as the proxy needs, on a real
aiohttp server and real sockets. A new aiohttp release is taken by running this file:
what fails names the internal to look at again.

No timing thresholds: deadlines below only bound how long "eventually" may take.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import re
import subprocess
import sys
import tomllib
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError, InvalidURLError, LineTooLong
from aiohttp.http_parser import HttpRequestParser
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_protocol import RequestPayloadError

from proxy import aiohttp_internals as internals
from proxy import config_loading
from proxy.aiohttp_internals import (
    HandlerRunner,
    awaiting_head,
    chunked_body_unread,
    client_transport,
    closing,
    defer_headers,
    duplicate_host,
    fail_open_body,
    feed_held_back,
    head_over_limits,
    length_with_coding_line,
    missing_host,
    one_message_per_feed,
    queued_error,
    quoted_request_line,
    refused_asterisk,
    refused_method_line,
    request_count,
    stop_serving,
    transfer_encoding_refused,
    wait_drained,
    writing_paused,
)
from proxy.config import AIOHTTP_UNCHECKED_ENV
from proxy.relay import RelayedResponse
from tests.test_client_faults import EVENTUALLY, eventually

ROOT = Path(__file__).resolve().parent.parent
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Recorder(web.RequestHandler):
    """aiohttp's connection handler, noting after each read of the socket what the
    adapter reads of it, and each call of `handle_error` (answered with a 599 of its
    own, to show that its response is the one aiohttp sends)."""

    def __init__(self, manager: web.Server, *, made: list[Recorder], **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        made.append(self)
        self.reads: list[tuple[int, bool]] = []
        self.errors: list[tuple[int, BaseException | None]] = []

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.reads.append((request_count(self), awaiting_head(self)))

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        self.errors.append((status, exc))
        resp = web.Response(status=599, text="recorded")
        resp.force_close()
        return resp


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, factory: type[Recorder] | None = None, **options: Any
) -> AsyncIterator[tuple[int, list[Recorder]]]:
    """A server on a free port whose connections are `factory`s (`Recorder`s unless
    given), built through the adapter's runner with aiohttp's `options`."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    made: list[Recorder] = []
    connection = functools.partial(factory or Recorder, made=made)
    runner = HandlerRunner(app, connection, access_log=None, **options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1], made
    finally:
        await runner.cleanup()


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(EVENTUALLY):
        return await reader.read()


async def ok(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="ok")


# Names and shapes.


@pytest.mark.parametrize(
    "name",
    [
        "_request_count",
        "_waiter",
        "_force_close",
        "_parser",
        "_messages",
        "_max_msg_queue_size",
        "_current_request",
    ],
)
def test_request_handler_keeps_the_slot(name: str) -> None:
    slots = {s for cls in web.RequestHandler.__mro__ for s in getattr(cls, "__slots__", ())}
    assert name in slots


def test_app_runner_builds_its_server_in_make_server() -> None:
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)


async def test_server_keeps_its_loop_and_handler_options() -> None:
    loop = asyncio.get_running_loop()
    server = web.Server(ok, loop=loop, max_headers=7, access_log=None)
    assert server._loop is loop
    assert server._kwargs == {"max_headers": 7, "access_log": None}


def test_stream_response_sends_its_head_immediately_unless_told() -> None:
    assert web.StreamResponse._send_headers_immediately is True
    assert web.Response._send_headers_immediately is False  # aiohttp's own use of it


def test_state_get_reads_what_request_keys_hold() -> None:
    """`_state` is the dict `request[key]` writes: `state_get` reads what it set, and
    None for a key it did not."""
    request = make_mocked_request("GET", "/")
    here, absent = web.RequestKey("here", int), web.RequestKey("absent", int)
    request[here] = 7
    assert internals.state_get(request, here) == request.get(here) == 7
    assert internals.state_get(request, absent) is request.get(absent) is None


def test_protocol_reports_writing_paused() -> None:
    assert isinstance(inspect.getattr_static(BaseProtocol, "writing_paused"), property)
    assert issubclass(web.RequestHandler, BaseProtocol)


# Behaviour on a real server.


async def test_runner_serves_with_the_factory_handler_and_aiohttp_options() -> None:
    """`_make_server` and `web.Server._loop`/`_kwargs`: each connection is the
    factory's handler, with the runner's options (here `max_headers`)."""
    async with serving(ok, max_headers=3) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await read_to_end(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(made) == 1 and made[0].max_headers == 3


async def test_an_origin_form_connect_reaches_the_handler_by_its_path() -> None:
    """Both parsers read a CONNECT target as an authority (the path `/a/b` becomes a
    host, and the router finds no route); the runner's request factory makes it the
    request's path again, and its connection closes after the answer."""
    seen: list[tuple[str, str, str]] = []

    async def record(request: web.BaseRequest) -> web.StreamResponse:
        seen.append((request.method, request.path, request.query_string))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    plain = web.AppRunner(app, access_log=None)
    await plain.setup()
    site = web.TCPSite(plain, "127.0.0.1", 0)
    await site.start()
    head = b"CONNECT /a/b?c=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", plain.addresses[0][1])
        writer.write(head + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await read_to_end(reader)
        writer.close()
    finally:
        await plain.cleanup()
    assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n") and seen == [("GET", "/", "")]
    seen.clear()
    async with serving(record) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await read_to_end(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.count(b"HTTP/1.1") == 1
    assert seen == [("CONNECT", "/a/b", "c=1")]


async def test_request_count_and_awaiting_head_follow_each_head() -> None:
    """`_request_count` counts parsed heads; `_waiter` is pending exactly while aiohttp
    waits for the next head."""
    gate = asyncio.Event()
    inside: list[tuple[int, bool]] = []

    async def held(request: web.Request) -> web.StreamResponse:
        inside.append((request_count(request.protocol), awaiting_head(request.protocol)))
        await gate.wait()
        return web.Response(text="ok")

    async with serving(held) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await eventually(lambda: bool(made), "the connection")
        conn = made[0]
        assert (request_count(conn), awaiting_head(conn)) == (0, True)

        writer.write(b"GET /1 HTTP/1.1\r\nHost: x\r\n")  # half a head
        await eventually(lambda: len(conn.reads) == 1, "the first read")
        assert conn.reads[-1] == (0, True)

        writer.write(b"\r\n")  # the head is complete: the handler runs
        await eventually(lambda: len(conn.reads) == 2 and bool(inside), "the handler")
        assert conn.reads[-1] == (1, False)
        assert inside == [(1, False)]

        gate.set()
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 OK\r\n")
        await eventually(lambda: awaiting_head(conn), "aiohttp to wait for the next head")
        assert request_count(conn) == 1

        writer.write(b"GET /2 HTTP/1.1\r\nHost: x\r\n")
        await eventually(lambda: len(conn.reads) == 3, "the third read")
        assert conn.reads[-1] == (1, True)
        writer.write(b"Connection: close\r\n\r\n")
        await eventually(lambda: len(conn.reads) == 4, "the fourth read")
        assert conn.reads[-1][0] == 2
        assert (await read_to_end(reader)).startswith(b"HTTP/1.1 200 OK\r\n")
        writer.close()


async def test_stop_serving_drops_further_bytes_and_leaves_the_connection_open() -> None:
    """`_force_close`: set, aiohttp parses nothing more and does not close."""
    handled: list[str] = []

    async def noting(request: web.Request) -> web.StreamResponse:
        handled.append(request.path)
        return web.Response(text="ok")

    async with serving(noting) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await eventually(lambda: bool(made), "the connection")
        conn = made[0]
        assert not closing(conn)
        stop_serving(conn)
        assert closing(conn)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(lambda: bool(conn.reads), "the read")
        # Give the handler task, had one been started, every chance to run.
        for _ in range(10):
            await asyncio.sleep(0)
        assert request_count(conn) == 0 and handled == []
        transport = conn.transport
        assert transport is not None and not transport.is_closing()
        transport.close()
        assert await read_to_end(reader) == b""
        writer.close()


class InOrder(Recorder):
    """A `Recorder` whose parser stops after each request, fed again until it holds
    nothing complete, as the proxy's connections are."""

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        one_message_per_feed(self, **{k: v for k, v in kwargs.items() if k != "made"})

    def data_received(self, data: bytes) -> None:
        web.RequestHandler.data_received(self, data)
        feed_held_back(self, super(Recorder, self).data_received)
        self.reads.append((request_count(self), awaiting_head(self)))


@pytest.mark.parametrize("in_order", [False, True], ids=["aiohttp", "held-back"])
async def test_requests_before_bytes_that_do_not_parse_are_queued_first(in_order: bool) -> None:
    """aiohttp's own parser drops the requests a read completed before bytes that do
    not parse: only the refusal is answered. One that stops after each request, fed
    again until it holds nothing complete, queues them first, then the refusal."""
    seen: list[str] = []

    async def noting(request: web.Request) -> web.StreamResponse:
        seen.append(request.path + ":" + (await request.text()))
        return web.Response(text="ok")

    async with serving(noting, InOrder if in_order else Recorder) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
            b"\x01 not a request\r\n\r\n"
        )
        answer = await read_to_end(reader)
        writer.close()
    statuses = re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)
    if in_order:
        assert seen == ["/1:", "/2:ab"]
        assert statuses == [b"200", b"200", b"599"]
    else:
        assert seen == [] and statuses == [b"599"]
    [(status, exc)] = made[0].errors
    assert status == 400 and isinstance(exc, HttpProcessingError)


@pytest.mark.parametrize("upgrade", [b"h2c", b"websocket"])
@pytest.mark.parametrize("adapted", [False, True], ids=["aiohttp", "adapter"])
async def test_requests_behind_one_asking_to_switch_protocols_are_read(
    upgrade: bytes, adapted: bool
) -> None:
    """aiohttp's C parser, stopping after each request, drops the bytes behind a
    request that asks to switch protocols (h2c), or gives them back as the tail of a
    connection it takes as upgraded (websocket), at its next feed. The adapter's reads
    them on as requests, one per feed."""
    handler = types.SimpleNamespace()
    loop = asyncio.get_running_loop()
    asked = b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: %b\r\n\r\n"
    behind = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
    if adapted:
        one_message_per_feed(handler, loop)  # type: ignore[arg-type]
        parser = handler._parser
    else:  # as `one_message_per_feed` built it before the adapter read on
        parser = HttpRequestParser(
            handler, loop, 2**16, payload_exception=RequestPayloadError, max_msg_queue_size=1
        )
    feeds = [parser.feed_data(data) for data in (asked % upgrade + behind, b"", b"", b"")]
    read = [([m.path for m, _ in messages], upgraded, tail) for messages, upgraded, tail in feeds]
    if adapted:
        assert [paths for paths, _, _ in read] == [["/u"], ["/1"], ["/2"], []]
        assert all(not upgraded and tail == b"" for _, upgraded, tail in read)
    elif upgrade == b"h2c":
        assert read == [(["/u"], False, b"")] + [([], False, b"")] * 3
    else:
        assert read[:2] == [(["/u"], False, b""), ([], True, behind)]


BEYOND_ASCII = b"GET /t\xc3\xa9?q=\xff HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "feeds",
    [
        [BEYOND_ASCII],
        [b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab" + BEYOND_ASCII, b""],
        [b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab", b"cd" + BEYOND_ASCII],
        [BEYOND_ASCII[:8], BEYOND_ASCII[8:13], BEYOND_ASCII[13:]],
    ],
    ids=["alone", "behind-a-body", "behind-a-body-read-later", "in-pieces"],
)
@pytest.mark.parametrize("adapted", [False, True], ids=["aiohttp", "adapter"])
async def test_a_target_beyond_ascii_is_read_again_from_its_line(
    feeds: list[bytes], adapted: bool
) -> None:
    """llhttp refuses a byte beyond ASCII in a target with an InvalidURLError quoting
    the line (as far as the feed holds it); calling the parser's `__init__` again
    starts it afresh. The adapter's parser reads the line again with those bytes
    percent-encoded: the request's `path` is the target as sent, its URL decoded."""
    handler = mock.Mock()  # the protocol a body's reader pauses and resumes
    loop = asyncio.get_running_loop()
    if adapted:
        one_message_per_feed(handler, loop)  # type: ignore[arg-type]
        parser = handler._parser
    else:
        parser = HttpRequestParser(
            handler, loop, 2**16, payload_exception=RequestPayloadError, max_msg_queue_size=1
        )
    messages = []
    try:
        for data in [*feeds, b""]:
            messages += [m for m, _ in parser.feed_data(data)[0]]
    except InvalidURLError as exc:
        assert not adapted
        quoted = internals._quoted_line(exc)
        assert quoted is not None and not quoted.isascii() and BEYOND_ASCII.startswith(quoted)
        HttpRequestParser.__init__(parser, handler, loop, 2**16, max_msg_queue_size=1)
        [(message, _)], _, _ = parser.feed_data(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert message.path == "/a"
        return
    assert adapted
    message = messages[-1]
    assert message.path == "/t\xe9?q=\udcff"  # as aiohttp decodes what it reads
    assert message.url.path == "/t\xe9"
    assert message.url.raw_query_string == "q=%FF"


async def test_a_target_read_again_keeps_what_follows_in_a_later_feed() -> None:
    """A target read again before its end has come: what comes later is appended to
    the target as sent."""
    handler = mock.Mock()
    one_message_per_feed(handler, asyncio.get_running_loop())
    parser = handler._parser
    assert parser.feed_data(b"GET /t\xc3\xa9") == ((), False, b"")
    [(message, _)], _, _ = parser.feed_data(b"x?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert message.path == "/t\xe9x?q=1"
    assert message.url.path == "/t\xe9x"


async def test_a_target_beyond_ascii_sent_a_byte_at_a_time_is_read_again_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What comes of a target after it was read again is encoded as it comes: read
    again at each byte, a target of n bytes would cost n squared."""
    parser_class = internals._GoRequestParser
    read_again = parser_class._read_again
    calls = []

    def counted(self: Any, *args: Any) -> Any:
        calls.append(1)
        return read_again(self, *args)

    monkeypatch.setattr(parser_class, "_read_again", counted)
    handler = mock.Mock()
    one_message_per_feed(handler, asyncio.get_running_loop())
    parser = handler._parser
    for data in [b"GET /", *[b"\xc3", b"\xa9"] * 50, b" HTTP/1.1\r\nHost: x\r\n\r\n"]:
        messages, _, _ = parser.feed_data(data)
    [(message, _)] = messages
    assert message.path == "/" + "\xe9" * 50
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("head", "over_limits"),
    [
        # More header lines than max_headers: aiohttp's "Too many headers" message.
        (b"".join(b"X-%d: v\r\n" % i for i in range(10)), True),
        # A header line longer than max_field_size: LineTooLong.
        (b"X-Long: " + b"v" * 500 + b"\r\n", True),
        # Not a header line at all.
        (b"no colon here\r\n", False),
    ],
    ids=["too-many-headers", "line-too-long", "malformed"],
)
async def test_bad_heads_reach_handle_error_as_the_adapter_reads_them(
    head: bytes, over_limits: bool
) -> None:
    """`handle_error` gets status 400 and the parser's error; its response is sent;
    `head_over_limits` tells a size refusal from a syntax one."""
    async with serving(ok, max_headers=5, max_field_size=100) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
        answer = await read_to_end(reader)
        writer.close()
    assert answer.partition(b"\r\n")[0].split(b" ")[1] == b"599"
    [(status, exc)] = made[0].errors
    assert status == 400 and isinstance(exc, HttpProcessingError)
    assert head_over_limits(exc) is over_limits


async def test_too_many_headers_is_told_by_its_message_alone() -> None:
    """The one size refusal with no class of its own: its text is what is relied on."""
    async with serving(ok, max_headers=5) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        many = b"".join(b"X-%d: v\r\n" % i for i in range(10))
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        await read_to_end(reader)
        writer.close()
    [(_, exc)] = made[0].errors
    assert isinstance(exc, HttpProcessingError) and not isinstance(exc, LineTooLong)
    assert exc.message.startswith(internals.TOO_MANY_HEADERS)


@pytest.mark.parametrize(
    ("later", "host_missing", "quoted"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", True, None),
        (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", False, b"GET / HTTP/3.0"),
        (b"GET / HTTP/1.10\r\nHost: x\r\n\r\n", False, b"GET / HTTP/1.10"),
    ],
    ids=["no-host", "http3", "long-version"],
)
async def test_refused_later_heads_say_what_the_adapter_reads_of_them(
    later: bytes, host_missing: bool, quoted: bytes | None
) -> None:
    """A later head on a keep-alive connection: an HTTP/1.1 request without Host is
    refused with aiohttp's "Missing 'Host' header" message (`missing_host`), a request
    line llhttp refuses is quoted whole by its error (`quoted_request_line`)."""
    async with serving(ok) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + later)
        await read_to_end(reader)
        writer.close()
    [(status, exc)] = made[0].errors
    assert status == 400 and isinstance(exc, HttpProcessingError)
    assert missing_host(exc) is host_missing
    assert quoted_request_line(exc) == quoted


@pytest.mark.parametrize(
    ("head", "line"),
    [
        (b"FOO /a?b HTTP/1.1\r\nHost: x\r\n\r\n", b"FOO /a?b HTTP/1.1"),
        (b"get /a HTTP/1.0\r\n\r\n", b"get /a HTTP/1.0"),
        (b"DESCRIBE /a HTTP/1.1\r\nHost: x\r\n\r\n", b"DESCRIBE /a HTTP/1.1"),
        (b"CONNECT /a/sha256:b?c HTTP/1.1\r\n\r\n", b"CONNECT /a/sha256:b?c HTTP/1.1"),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", None),  # a target, not a method
        (b"GET /a HTTP/1.1\r\nno colon\r\n\r\n", None),
    ],
    ids=["unknown", "lower-case", "rtsp", "connect-path", "star", "bad-header"],
)
@pytest.mark.parametrize("later", [False, True], ids=["first", "later"])
async def test_a_refused_method_is_told_with_its_line(
    head: bytes, line: bytes | None, later: bool
) -> None:
    """llhttp's refusal of a method it does not know quotes the request line; a
    CONNECT whose path the C parser cannot read as an authority is an InvalidURLError
    whose message is the target: `refused_method_line` reads the line of both."""
    first = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" if later else b""
    async with serving(ok) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(first + head)
        await read_to_end(reader)
        writer.close()
    [(status, exc)] = made[0].errors
    assert status == 400 and isinstance(exc, HttpProcessingError)
    assert refused_method_line(exc) == line


@pytest.mark.parametrize(
    ("head", "asterisk"),
    [
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"POST * HTTP/1.0\r\n\r\n", True),
        (b"GET /a HTTP/1.1\r\nno colon\r\n\r\n", False),
    ],
    ids=["get-star", "post-star", "bad-header"],
)
async def test_a_star_target_is_told_by_its_refusal(head: bytes, asterisk: bool) -> None:
    """The C parser refuses `*` for any method but OPTIONS with an InvalidURLError
    whose message is the target: `refused_asterisk`."""
    async with serving(ok) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        await read_to_end(reader)
        writer.close()
    [(status, exc)] = made[0].errors
    assert status == 400 and isinstance(exc, HttpProcessingError)
    assert refused_asterisk(exc) is asterisk


@pytest.mark.parametrize(
    ("fields", "te", "hosts"),
    [
        (b"Transfer-Encoding: chunked, gzip\r\n", True, False),
        (b"Transfer-Encoding: identity\r\n", True, False),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", True, False),
        (b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", True, False),
        (b"Host: y\r\n", False, True),
        (b"Content-Length: 2\r\nContent-Length: 2\r\n", False, False),
    ],
    ids=["list", "identity", "twice", "two-codings", "two-hosts", "two-lengths"],
)
async def test_transfer_encodings_and_hosts_are_told_by_their_messages(
    fields: bytes, te: bool, hosts: bool
) -> None:
    """llhttp's and aiohttp's refusals of a Transfer-Encoding and of a second Host
    start with the texts `transfer_encoding_refused` and `duplicate_host` look for."""
    async with serving(ok) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n2\r\n{}\r\n0\r\n\r\n")
        await read_to_end(reader)
        writer.close()
    [(status, exc)] = made[0].errors
    assert status == 400 and isinstance(exc, HttpProcessingError)
    assert (transfer_encoding_refused(exc), duplicate_host(exc)) == (te, hosts)


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        (b"Content-Length: 2\r\nTransfer-Encoding: gzip\r\n", b"Transfer-Encoding: gzip"),
        (b"Transfer-Encoding: a, b\r\nContent-Length: 2\r\n", b"Content-Length: 2"),
        (b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", b"Transfer-Encoding: chunked"),
        (b"Content-Length: 2\r\nContent-Length: 2\r\n", None),
    ],
    ids=["length-first", "coding-first", "chunked", "two-lengths"],
)
@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
@pytest.mark.parametrize("after", [0, 1], ids=["alone", "pipelined"])
async def test_a_length_with_a_coding_is_told_by_its_message_and_queued_after_the_read(
    fields: bytes, line: bytes | None, version: bytes, after: int
) -> None:
    """llhttp's refusal of a head with both Content-Length and Transfer-Encoding, on
    either version, quotes the second field (`length_with_coding_line`), and is the
    last entry of aiohttp's queue once the read that failed is parsed, after the
    requests before it (`queued_error`)."""
    first = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * after
    seen: list[HttpProcessingError | None] = []

    class Reader(Recorder):
        def __init__(self, manager: web.Server, **kwargs: Any) -> None:
            super().__init__(manager, **kwargs)
            one_message_per_feed(self, **kwargs)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            feed_held_back(self, super().data_received)
            seen.append(queued_error(self))

    async with serving(ok, Reader) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(first + b"POST / HTTP/" + version + b"\r\nHost: x\r\n" + fields + b"\r\n{}")
        answer = await read_to_end(reader)
        writer.close()
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == after
    [(status, exc)] = made[0].errors
    assert status == 400 and isinstance(exc, HttpProcessingError)
    assert seen[0] is exc
    assert length_with_coding_line(exc) == line


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("sent", "unread"),
    [
        (CHUNKED_HEAD, True),
        (CHUNKED_HEAD + b"3\r\n", False),
        (CHUNKED_HEAD + b"3\r\nabc", False),
        (CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n\r\n", False),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + CHUNKED_HEAD, False),
    ],
    ids=["head-alone", "size-line", "data", "whole", "length", "two-requests"],
)
async def test_a_chunked_body_the_parser_read_nothing_of_is_known(
    sent: bytes, unread: bool
) -> None:
    """`chunked_body_unread` after one read: True exactly when that read queued one
    request, chunked, and the parser read no chunk-size line of it nor any byte (the
    payload makes its `_http_chunk_splits` at the first size line)."""
    seen: list[bool] = []

    class Reader(Recorder):
        def data_received(self, data: bytes) -> None:
            count = request_count(self)
            super().data_received(data)
            seen.append(chunked_body_unread(self, count))

    # (The server does not linger over the bodies never sent.)
    async with serving(ok, Reader, lingering_time=0) as (port, _):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        await eventually(lambda: bool(seen), "the read")
        writer.close()
    assert seen[0] is unread


@pytest.mark.parametrize(
    ("framing", "go"),
    [
        (b"zz\r\n", "invalid byte in chunk length"),
        (b"1" * 20 + b"\r\n", "http chunk length too large"),
        (b"5\nhello\n", "chunked line ends with bare LF"),
        (b"5\r\nhelloXX", internals.MALFORMED_CHUNKS),
    ],
    ids=["not-hex", "too-large", "bare-lf", "no-crlf-after-data"],
)
async def test_broken_chunk_framing_leaves_the_body_open_and_is_queued(
    framing: bytes, go: str
) -> None:
    """llhttp's refusal of a chunk's framing, after the head came in an earlier read:
    the body being read stays open, neither ended nor failed, and the error is queued
    (`queued_error`) with the reason `CHUNK_ERRORS` reads as Go's error. `fail_open_body`
    then fails the handler's read with Go's text and the connection closes after the
    answer, with no other answer."""
    reading = asyncio.Event()
    seen: list[tuple[bool, bool, HttpProcessingError | None]] = []
    failed: list[BaseException] = []

    class Reader(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            error = queued_error(self)
            if error is not None:
                request = self._current_request
                assert request is not None
                content = request.content
                seen.append((content.is_eof(), content.exception() is None, error))
                assert fail_open_body(self, error)

    async def read(request: web.Request) -> web.StreamResponse:
        reading.set()
        try:
            await request.read()
        except RequestPayloadError as exc:
            failed.append(exc)
            return web.Response(status=400, text=str(exc))
        return web.Response(text="ok")

    async with serving(read, Reader) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        async with asyncio.timeout(EVENTUALLY):
            await reading.wait()
        writer.write(framing)
        answer = await read_to_end(reader)
        writer.close()
    [(eof, no_exception, error)] = seen
    assert not eof and no_exception and error is not None
    assert [str(exc) for exc in failed] == [go]
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and answer.endswith(go.encode())
    assert answer.count(b"HTTP/1.1") == 1
    assert made[0].errors == []


@pytest.mark.parametrize("coding", [b"chunked", b"gzip, chunked"])
async def test_an_http10_chunked_body_reaches_the_handler_as_none(coding: bytes) -> None:
    """Both parsers read an HTTP/1.0 request's chunked body; the runner's request
    factory gives the request an empty payload and no Transfer-Encoding, aiohttp drains
    the body it read after the answer, and the connection closes after that answer."""
    seen: list[tuple[bytes, bool, str | None]] = []

    async def record(request: web.BaseRequest) -> web.StreamResponse:
        seen.append(
            (await request.read(), request.body_exists, request.headers.get("Transfer-Encoding"))
        )
        return web.Response(text="ok")

    async with serving(record) as (port, made):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: "
            + coding
            + b"\r\n\r\n2\r\n{}\r\n0\r\n\r\nGET / HTTP/1.0\r\n\r\n"
        )
        answer = await read_to_end(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n") and answer.count(b"HTTP/1.0") == 1
    assert seen == [(b"", False, None)]
    assert made[0].errors == []


async def test_raw_writes_pause_and_drain_through_aiohttp() -> None:
    """`protocol.writing_paused` turns on for bytes written to the transport directly,
    the writer's `drain()` waits for them, and the writer never counts them."""
    stalled = asyncio.Event()
    seen: dict[str, Any] = {}
    block = b"x" * 65536
    limit = 1 << 28  # far beyond any socket buffer: reaching it means no pause came

    async def flood(request: web.Request) -> web.StreamResponse:
        transport = client_transport(request)
        transport.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        seen["paused_at_start"] = writing_paused(request.protocol)
        written = 0
        while not writing_paused(request.protocol) and written < limit:
            transport.write(block)
            written += len(block)
        seen["written"] = written
        stalled.set()
        await wait_drained(request.writer)
        seen["paused_after_drain"] = writing_paused(request.protocol)
        seen["writer_output"] = request.writer.output_size
        return RelayedResponse(200, keep_alive=False)

    async with serving(flood) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(EVENTUALLY):
            await stalled.wait()  # the client reads nothing until the server stalls
        answer = await read_to_end(reader)
        writer.close()
    assert seen["paused_at_start"] is False
    assert seen["written"] < limit
    assert seen["paused_after_drain"] is False
    assert seen["writer_output"] == 0
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head == b"HTTP/1.1 200 OK\r\nConnection: close"
    assert len(body) == seen["written"]  # nothing of aiohttp's after the relayed bytes


async def test_a_relayed_response_adds_nothing_and_keeps_the_connection() -> None:
    """A response that reports itself prepared and writes nothing: aiohttp adds no
    bytes, and reuses the connection or closes it as its `keep_alive` says."""
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

    async def relayed(request: web.Request) -> web.StreamResponse:
        if request.path == "/plain":
            return web.Response(text="plain")
        client_transport(request).write(raw)
        return RelayedResponse(200, keep_alive=request.path != "/last")

    async with serving(relayed) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for path in (b"/a", b"/b", b"/plain", b"/last"):
            writer.write(b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % path)
        answer = await read_to_end(reader)  # ends only if /last closes the connection
        writer.close()
    first, rest = answer[: 2 * len(raw)], answer[2 * len(raw) :]
    assert first == raw + raw
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.endswith(b"plain" + raw)


@pytest.mark.parametrize("deferred", [True, False], ids=["deferred", "immediate"])
async def test_defer_headers_holds_the_head_until_the_first_write(deferred: bool) -> None:
    """`_send_headers_immediately`: off, `prepare` writes nothing; the head goes out
    with the first chunk."""
    seen: dict[str, int] = {}

    async def streamed(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        resp.force_close()
        if deferred:
            defer_headers(resp)
        await resp.prepare(request)
        seen["after_prepare"] = request.writer.output_size
        await resp.write(b"first")
        seen["after_write"] = request.writer.output_size
        await resp.write_eof()
        return resp

    async with serving(streamed) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await read_to_end(reader)
        writer.close()
    assert (seen["after_prepare"] == 0) is deferred
    assert seen["after_write"] > len(b"first")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\n5\r\nfirst\r\n0\r\n\r\n")


# The checked range.


def test_pyproject_pins_the_checked_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "aiohttp" + internals.CHECKED_TEXT in project["dependencies"]


@pytest.mark.parametrize(
    ("version", "checked"),
    [
        (aiohttp.__version__, True),  # the installed one: else this module stops at import
        ("3.14.0", True),
        ("3.14.99", True),
        ("3.15.0", False),
        ("3.13.5", False),
        ("4.0.0a1", False),
        ("garbage", False),
    ],
)
def test_version_problem(version: str, checked: bool) -> None:
    problem = internals.version_problem(version)
    assert (problem is None) is checked
    if problem is not None:
        assert version in problem and "\n" not in problem


def test_check_version_stops_unless_told_to_run_anyway(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        internals.check_version("3.15.0", {})
    assert f"{AIOHTTP_UNCHECKED_ENV}=1" in str(stopped.value.code)
    with caplog.at_level(logging.WARNING, logger="autoroute.aiohttp"):
        internals.check_version("3.15.0", {AIOHTTP_UNCHECKED_ENV: "1"})
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "aiohttp 3.15.0" in caplog.records[0].getMessage()


@pytest.mark.parametrize("said", ["on", " Yes ", "TRUE"])
def test_check_version_reads_the_variable_as_every_setting_is_read(said: str) -> None:
    internals.check_version("3.15.0", {AIOHTTP_UNCHECKED_ENV: said})  # runs anyway
    with pytest.raises(SystemExit):
        internals.check_version("3.15.0", {AIOHTTP_UNCHECKED_ENV: "off"})


def test_the_override_is_no_setting(caplog: pytest.LogCaptureFixture) -> None:
    """The override is read where aiohttp is checked, not as a setting the configuration
    warns it does not know, as it warns of any other AUTOROUTE_* variable naming none."""
    with caplog.at_level(logging.WARNING):
        loaded = config_loading.load(ROOT / "config.yaml", environ={AIOHTTP_UNCHECKED_ENV: "1"})
    assert loaded == config_loading.load(ROOT / "config.yaml", environ={})
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        config_loading.load(ROOT / "config.yaml", environ={"AUTOROUTE_AIOHTTP_CHECKED": "1"})
    assert [r.getMessage() for r in caplog.records] == [
        "environment variable AUTOROUTE_AIOHTTP_CHECKED ignored: no setting aiohttp_checked"
    ]


@pytest.mark.parametrize("unchecked", [False, True], ids=["stops", "warns"])
def test_an_unchecked_aiohttp_at_import(unchecked: bool) -> None:
    """The real start: importing the proxy's server under another aiohttp version."""
    env = {k: v for k, v in os.environ.items() if k != AIOHTTP_UNCHECKED_ENV}
    env["PYTHONPATH"] = str(ROOT)
    if unchecked:
        env[AIOHTTP_UNCHECKED_ENV] = "1"
    code = "import aiohttp; aiohttp.__version__ = '3.99.0'; import proxy.connection"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=EVENTUALLY,
        check=False,
    )
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "aiohttp 3.99.0" in lines[0]
    if unchecked:
        assert done.returncode == 0 and "running anyway" in lines[0]
    else:
        assert done.returncode == 1 and f"{AIOHTTP_UNCHECKED_ENV}=1" in lines[0]

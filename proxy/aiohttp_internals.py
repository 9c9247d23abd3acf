"""Every use of aiohttp's private or undocumented behaviour, behind small named functions.

The proxy serves Go's answers to bad client heads, relays a backend's bytes straight to
the client's socket and, in the emulator, sends a head with its first chunk as Go does.
aiohttp has no public API for these, so this module reaches into its internals; nothing
else in the project does. Each is checked by tests/test_aiohttp_contract.py, so taking a
new aiohttp release is that test, plus whatever it finds, plus CHECKED below.

What is relied on, and why:

* `RequestHandler._request_count` (heads parsed on a connection, failed ones included):
  `request_count`, `awaiting_head`. The head deadline and byte budget of
  proxy/connection.py end when a head is parsed, which only this counter shows from
  `data_received`.
* `RequestHandler._waiter` (set while aiohttp waits for the next request): `awaiting_head`.
  Bytes that arrive then start a new head; bytes that arrive while a handler runs do not.
* `RequestHandler._force_close`: `closing`, `stop_serving`. Once set, aiohttp drops every
  further byte and neither reuses nor closes the connection, which lets the proxy write
  Go's refusal, half-close and linger as Go does.
* The text "Too many headers" that starts aiohttp's error for a head with more header
  lines than `max_headers` (both parsers raise a plain `BadHttpMessage`):
  `head_over_limits`. Go answers such a head with 431, any other bad head with 400.
* The text "Missing 'Host' header" that starts both parsers' error for an HTTP/1.1
  request without `Host` (a plain `BadHttpMessage`): `missing_host`. Go answers it with
  its own text. Likewise "Duplicate 'Host' header" (`duplicate_host`), and the texts
  of llhttp's and aiohttp's refusals of a Transfer-Encoding (`UNSUPPORTED_TE`:
  `transfer_encoding_refused`), which Go answers with 501.
* llhttp's refusal of a head with both Content-Length and Transfer-Encoding starts
  with one of the texts `LENGTH_WITH_CODING` (a plain `BadHttpMessage`) and quotes,
  as a bytes literal on a line of its own, the second of the two fields (as far as
  the read that failed holds it): `length_with_coding_line`. The handler's
  `_messages` holds the error, as an entry whose `exc` it is, right after the read
  that failed (`queued_error`): Go answers such a head by its Transfer-Encoding, which
  only the read's bytes may show.
* The request line that llhttp's `BadStatusLine` quotes (as a bytes literal on a line of
  its own in the message, from the start of the line as far as the read that failed
  holds it): `quoted_request_line`. A later request line on a keep-alive connection is
  read by llhttp alone, and its refusal says nothing else of the version Go would refuse.
* aiohttp lingers over (and drains) the payload it queued with a message, not the one
  the request factory gave the request, and both parsers read an HTTP/1.0 request's
  chunked body (a Transfer-Encoding whose last coding is `chunked`): `_go_targets`
  gives such a request `EMPTY_PAYLOAD` and no Transfer-Encoding, and closes the
  connection after its answer. Go ignores a Transfer-Encoding on HTTP/1.0, so that
  request has no body.
* `BaseRunner._make_server` and `web.Server`'s `_loop` and `_kwargs`: `HandlerRunner`.
  aiohttp builds each connection's `RequestHandler` itself; the hook swaps in the
  proxy's subclass, built with the very options aiohttp would have used.
* Both parsers read every CONNECT target as an authority (`URL.build(authority=...)`),
  `CONNECT /api/chat` too, whose path aiohttp's router then finds no route for;
  `web.Server`'s `request_factory` is called with each parsed head, whose `url`
  `_replace` sets: `HandlerRunner` reads an origin-form target as the path, as Go does
  (and closes the connection after a CONNECT's answer, `should_close`, which also
  carries Go's reading of `Connection`, `proxy.go_keep_alive`). A target with
  no path (`*`, `http://host`, a CONNECT's `host:port`) gets the path `/`, so that
  the catch-all route takes it:
  its `raw_path` (the target as sent) is what the answer is made of. Both parsers read
  a `#` in a target as the start of a fragment: `_replace` gives the request Go's
  reading.
* llhttp refuses a method it does not know (`FOO`, `get`, an RTSP method) with
  `BadHttpMethod`, or for an RTSP one a `BadStatusLine` saying "Invalid method for
  HTTP/x.x request", quoting the line; a CONNECT whose origin-form target the C
  parser cannot read as an authority (`/api/blobs/sha256:...`) is an `InvalidURLError`
  whose message is the target: `refused_method_line`. Go's net/http reads any token as
  a method, and Ollama's router answers it.
* The C parser refuses a target of `*` for any method but OPTIONS with an
  `InvalidURLError` whose message is the target (`refused_asterisk`). Go reads it.
* The C parser's `max_msg_queue_size` (llhttp pauses after a complete message once that
  many are in flight, keeps the bytes after it, and parses them at its next feed, an
  empty one too) and the handler's `_parser`, `_messages` (the queue, a parse error
  as its last entry) and `_max_msg_queue_size`: `one_message_per_feed`,
  `feed_held_back`. aiohttp drops the messages a read completed before bytes that do
  not parse (the error replaces them); Go answers those requests first.
* llhttp refuses a byte beyond ASCII in a request target with an `InvalidURLError`
  whose message quotes the line (from its start, or from the start of the feed, as
  far as the feed holds it: `_quoted_line`), and the C parser's `__init__`, called
  again, starts it afresh (llhttp's state, its messages, its held-back bytes); a
  message's `path` (the request's `raw_path`) can be replaced and its `url` kept:
  `one_message_per_feed` (`_GoRequestParser`) reads such a line again,
  percent-encoded, from the end of the request before it.
* llhttp pauses after a request that asks to switch protocols (`Connection: upgrade`
  with an `Upgrade`), at once on the parser's next feed (a `one_message_per_feed`
  parser has paused after the request already), and the C parser then drops every byte
  of that feed (the requests pipelined behind it) unless it takes the connection as
  upgraded (`websocket`, and then aiohttp feeds them again one request only, leaving
  the rest in the parser): its `set_upgraded(True)` around that one feed makes it give
  them back, from the pause on, as its tail: `one_message_per_feed` (`_GoRequestParser`).
  Go's net/http switches only for a handler that hijacks the connection, which Ollama
  never does: it serves the request and those behind it. A CONNECT keeps aiohttp's way
  (its connection closes after its answer).
* llhttp's refusal of chunked framing inside a body (the reasons `CHUNK_ERRORS` names,
  or another) leaves that body's payload open, neither ended nor failed, and queues
  the error as for a head; the payload is the queued request's, or the one the
  handler running (`RequestHandler._current_request`) reads: `fail_open_body`. Go's
  chunked reader fails the handler's read instead, which Ollama answers.
* A request's payload (a `StreamReader`) makes its `_http_chunk_splits` at the first
  chunk-size line the C parser reads, and counts the bytes fed in `total_bytes`:
  `chunked_body_unread`. Whether the parser has read nothing of a chunked body yet,
  so that the proxy's reading of its size lines (proxy/chunk_lines.py) starts at the
  body's first byte.
* `RequestHandler.handle_error` is called with status 400 and the parser's
  `HttpProcessingError` for an unparsable head, and its returned response is what
  aiohttp sends (proxy/connection.py overrides it).
* `protocol.writing_paused` (aiohttp's `BaseProtocol`, the transport's protocol):
  `writing_paused`. The relay writes to the transport itself; this is how it sees a
  client that stops reading.
* The writer's `drain()` waits on the transport's flow control, whatever wrote the bytes:
  `wait_drained`, after writes that bypassed the writer.
* Bytes written to `request.transport` bypass aiohttp's writer entirely (its
  `output_size` stays 0), and a response that reports itself prepared and whose
  `prepare` and `write_eof` write nothing (proxy/relay.py `RelayedResponse`) makes
  aiohttp add no bytes of its own, closing the connection or not per its `keep_alive`:
  `client_transport`.
* `StreamResponse._send_headers_immediately` (aiohttp's own `Response` turns it off):
  `defer_headers`. Go's net/http writes a streamed head together with its first chunk.
* `BaseRequest._state`, the dict behind `request[key]`: `state_get`. `request.get` is
  `Mapping.get`, which finds a missing key by raising and catching KeyError, and the
  proxy asks every request for keys most requests never have (an API key, a decoded
  body).

aiohttp outside the checked series stops the process at import with one line saying so;
an operator who wants to try a newer one sets AUTOROUTE_AIOHTTP_UNCHECKED=1, which turns
that into a warning.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import operator
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import aiohttp
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import DEFAULT_CHUNK_SIZE
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestPayloadError
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy import target_bytes
from proxy.config import AIOHTTP_UNCHECKED_ENV
from proxy.config_reading import switch
from proxy.go_keep_alive import closes

log = logging.getLogger("autoroute.aiohttp")
T = TypeVar("T")

# The aiohttp releases this module and its contract test were checked against: every
# 3.14.x, the range pyproject.toml pins.
CHECKED = ((3, 14), (3, 15))  # from (inclusive), to (exclusive): major, minor
CHECKED_TEXT = ">={}.{},<{}.{}".format(*CHECKED[0], *CHECKED[1])
TOO_MANY_HEADERS = "Too many headers"
MISSING_HOST = "Missing 'Host' header"
DUPLICATE_HOST = "Duplicate 'Host' header"
# What starts a refusal of the request's Transfer-Encoding: llhttp's (a coding after
# `chunked`, or one without it), aiohttp's (a second field).
UNSUPPORTED_TE = (
    "Invalid `Transfer-Encoding` header value",
    "Request has invalid `Transfer-Encoding`",
    "Duplicate 'Transfer-Encoding' header",
)
# llhttp's refusal of a head with both fields, by which of the two comes second.
LENGTH_WITH_CODING = (
    "Transfer-Encoding can't be present with Content-Length",
    "Content-Length can't be present with Transfer-Encoding",
)
# llhttp's refusal of a method it knows only for RTSP (DESCRIBE, SETUP, ...).
HTTP_METHOD_ONLY = "Invalid method for HTTP/x.x request"
# What starts llhttp's refusal of a chunk's framing, and the error Go's chunked reader
# (net/http/internal/chunked.go) gives the handler reading that body; any other framing
# it refuses inside a body is Go's `MALFORMED_CHUNKS`.
CHUNK_ERRORS = (
    ("Invalid character in chunk size", "invalid byte in chunk length"),
    ("Chunk size overflow", "http chunk length too large"),
    ("Missing expected CR after chunk size", "chunked line ends with bare LF"),
)
MALFORMED_CHUNKS = "malformed chunked encoding"

# Builds a connection's handler: called as aiohttp's web.Server builds its own,
# `factory(server, loop=loop, **server_options)`.
HandlerFactory = Callable[..., web.RequestHandler]
# Builds a request from its parsed head, as `web.Server(request_factory=...)` takes it.
_RequestFactory = Callable[
    [
        RawRequestMessage,
        StreamReader,
        web.RequestHandler,
        AbstractStreamWriter,
        "asyncio.Task[None]",
    ],
    BaseRequest,
]


def version_problem(version: str) -> str | None:
    """None for an aiohttp version in the checked range, else what is wrong, in a line."""
    match = re.match(r"(\d+)\.(\d+)", version)
    series = (int(match[1]), int(match[2])) if match else None
    if series is not None and CHECKED[0] <= series < CHECKED[1]:
        return None
    return (
        f"aiohttp {version} is installed, but ollama-autoroute uses aiohttp internals "
        f"checked only with aiohttp{CHECKED_TEXT} (proxy/aiohttp_internals.py)"
    )


def check_version(version: str, environ: Mapping[str, str]) -> None:
    """Stop the process when `version` is outside the checked range, unless the
    environment says to run anyway (then log a warning)."""
    problem = version_problem(version)
    if problem is None:
        return
    if switch(environ.get(AIOHTTP_UNCHECKED_ENV, "")):
        log.warning("%s; running anyway as %s asks", problem, AIOHTTP_UNCHECKED_ENV)
        return
    raise SystemExit(f"{problem}; set {AIOHTTP_UNCHECKED_ENV}=1 to run anyway")


check_version(aiohttp.__version__, os.environ)


# Client connections (proxy/connection.py).


# How many request heads aiohttp has parsed on this connection, failed ones included.
# An attribute getter, not a function around the attribute: the connection reads it on
# every read from the client.
request_count: Callable[[web.RequestHandler], int] = operator.attrgetter("_request_count")


def awaiting_head(handler: web.RequestHandler) -> bool:
    """Whether bytes arriving now belong to a request head: no request yet on this
    connection, or aiohttp waits for the next one (the previous body is then complete:
    aiohttp waits only after lingering over an unread body)."""
    if handler._request_count == 0:
        return True
    waiter = handler._waiter
    return waiter is not None and not waiter.done()


# Whether aiohttp serves no further request on this connection.
closing: Callable[[web.RequestHandler], bool] = operator.attrgetter("_force_close")


def stop_serving(handler: web.RequestHandler) -> None:
    """aiohttp drops every further byte and neither reuses nor closes the connection:
    closing it is left to the caller."""
    handler._force_close = True


class _GoRequestParser(HttpRequestParser):
    """aiohttp's C request parser that reads on, as HTTP/1.1, after a request asking
    to switch protocols (see the module's notes), from the feed after that request's
    body has ended; and that reads a request line whose target has bytes beyond ASCII,
    which llhttp refuses and Go reads, again from the line's start with those bytes
    percent-encoded (`proxy.target_bytes`), the request keeping its target as sent.

    For that it keeps the bytes it was given since the end of the last request it read
    (`_pending`: the head being read, or requests held back behind that one), known
    from the request's head and its Content-Length; after a body framed otherwise (or
    a request asking to switch protocols), where its next request starts is unknown
    until the connection says (`mark`). The normal case costs a few attribute tests
    per feed, and per request one search for the end of its head."""

    __slots__ = ("_args", "_asked", "_kwargs", "_open", "_pending", "_rest", "_sent")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._args, self._kwargs = args, kwargs  # to read afresh from a request line
        # The body of the last request that asked to switch protocols, until llhttp has
        # made its pause after it.
        self._asked: StreamReader | None = None
        # The bytes given since the end of the last request read, one read each (None:
        # unknown), and how many bytes of its body are still to come (None: unknown,
        # as for a body not framed by its Content-Length).
        self._pending: list[bytes] | None = []
        self._rest: int | None = 0
        # The start of a target as llhttp reads it (percent-encoded) and as it was
        # sent, a part for each read, until the request it starts is read; whether
        # that target goes on in the bytes given next.
        self._sent: tuple[list[bytes], list[bytes]] | None = None
        self._open = False

    def mark(self) -> None:
        """The next bytes given start a request (or line ends before one)."""
        self._pending, self._rest = [], 0

    def feed_data(  # type: ignore[override]
        self, data: bytes
    ) -> tuple[list[tuple[RawRequestMessage, StreamReader]], bool, bytes]:
        rest = self._rest
        pending = None if rest else self._pending  # a body's bytes come first
        if pending is not None and data:
            pending.append(data)
            if self._open:
                data = self._target_goes_on(data)
        asked = self._asked
        if asked is not None and asked.is_eof():
            data = self._after_upgrade(asked, data)
        try:
            messages, upgraded, tail = HttpRequestParser.feed_data(self, data)
        except InvalidURLError as exc:
            if pending is None:
                raise
            again, (messages, upgraded, tail) = self._read_again(b"".join(pending), exc)
            pending = self._pending = [again]
        if messages:
            message, payload = messages[-1]
            if self._sent is not None:
                messages = self._as_sent(messages)
            if message.chunked or message.upgrade or message.method == hdrs.METH_CONNECT:
                self._pending = self._rest = None
                if message.upgrade and message.method != hdrs.METH_CONNECT:
                    self._asked = payload
            elif pending is None:
                self._rest = None
            else:
                given = b"".join(pending)
                length = int(message.headers.get(hdrs.CONTENT_LENGTH, 0))
                end = target_bytes.request_end(given, length)
                if end is None:
                    self._pending = self._rest = None
                elif end < len(given):
                    # The request ended in these bytes: what follows it is held back.
                    self._pending, self._rest = [given[end:]], 0
                else:
                    self._pending, self._rest = [], end - len(given)
        elif rest:
            if rest < len(data):
                self._pending, self._rest = [data[rest:]], 0  # held back behind the body
            else:
                self._pending, self._rest = [], rest - len(data)
        return messages, upgraded, tail

    def _read_again(
        self, pending: bytes, exc: InvalidURLError
    ) -> tuple[bytes, tuple[list[tuple[RawRequestMessage, StreamReader]], bool, bytes]]:
        """Read afresh from the request line llhttp refused, when its target has bytes
        beyond ASCII and the line is the one `pending` starts with: what was given
        from that line on, and the parse. Else raise `exc`."""
        found = target_bytes.failed_line(pending, _quoted_line(exc) or b"")
        if found is None:
            raise exc
        line, start, end = found
        target = pending[start:end]
        escaped = target_bytes.encoded(target)
        if escaped is None:
            raise exc
        self._sent = ([escaped], [target])
        # A target that goes on past these bytes is encoded as its bytes come
        # (`_target_goes_on`): read again at each, a long one would cost its length
        # squared.
        self._open = end == len(pending)
        HttpRequestParser.__init__(self, *self._args, **self._kwargs)
        again = pending[line:start] + escaped + pending[end:]
        return pending[line:], HttpRequestParser.feed_data(self, again)

    def _as_sent(
        self, messages: list[tuple[RawRequestMessage, StreamReader]]
    ) -> list[tuple[RawRequestMessage, StreamReader]]:
        """`messages`, the first of which is the request read from the target this
        parser percent-encoded, with that target (its `path`, the request's `raw_path`)
        as sent; its URL stays as llhttp read it."""
        assert self._sent is not None
        escaped = b"".join(self._sent[0]).decode("ascii")
        sent = b"".join(self._sent[1]).decode("utf-8", "surrogateescape")  # as aiohttp does
        self._sent, self._open = None, False
        (message, payload), *others = messages
        if message.path.startswith(escaped):
            message = message._replace(path=sent + message.path[len(escaped) :])
        return [(message, payload), *others]

    def _target_goes_on(self, data: bytes) -> bytes:
        """`data`, which goes on with a target read again, with the target's bytes
        beyond ASCII percent-encoded; noted as sent (`_sent`)."""
        assert self._sent is not None
        part, ended = target_bytes.target_part(data)
        escaped = target_bytes.percent_encoded(part)
        self._sent[0].append(escaped)
        self._sent[1].append(part)
        self._open = not ended
        return escaped + data[len(part) :]

    def _after_upgrade(self, asked: StreamReader, data: bytes) -> bytes:
        """The bytes the parser holds and `data`, given back by the feed that meets
        llhttp's pause after the request that asked to switch protocols."""
        self._asked = None
        if asked.exception() is not None:
            return data  # a body that broke: the parser is failed, nothing to read on
        self.set_upgraded(True)
        try:
            _, _, tail = HttpRequestParser.feed_data(self, data)
        finally:
            self.set_upgraded(False)
        return tail


def one_message_per_feed(
    handler: web.RequestHandler,
    loop: asyncio.AbstractEventLoop,
    *,
    max_line_size: int = 8190,
    max_field_size: int = 8190,
    max_headers: int = 128,
    read_bufsize: int = DEFAULT_CHUNK_SIZE,
    auto_decompress: bool = True,
    **_: Any,
) -> Callable[[], None]:
    """Give `handler` a parser built as aiohttp builds it (from the same options) that
    stops after each complete request and keeps the bytes after it for its next feed
    (`feed_held_back`), so that a request is queued before bytes behind it that do
    not parse are refused; that reads on after a request asking to switch protocols,
    as Go does; and that reads a target with bytes beyond ASCII as Go does
    (`_GoRequestParser`). Returned: how to tell it that the bytes it is given next
    start a request, where it cannot know that itself (after a chunked body)."""
    parser = handler._parser = _GoRequestParser(
        handler,
        loop,
        read_bufsize,
        max_line_size=max_line_size,
        max_field_size=max_field_size,
        max_headers=max_headers,
        payload_exception=RequestPayloadError,
        auto_decompress=auto_decompress,
        max_msg_queue_size=1,
    )
    return parser.mark


def feed_held_back(handler: web.RequestHandler, data_received: Callable[[bytes], None]) -> None:
    """Parse what a `one_message_per_feed` parser holds back, one request per feed
    through `data_received` (aiohttp's, which queues it), until it holds nothing
    complete, a feed fails to parse (its error is then queued after the requests
    before it), or aiohttp's queue is full (aiohttp then pauses reading, and feeds the
    parser again as the queue drains)."""
    messages = handler._messages
    while not messages or isinstance(messages[-1][0], RawRequestMessage):
        count = handler._request_count
        data_received(b"")
        if handler._request_count == count or len(messages) >= handler._max_msg_queue_size:
            return


def head_over_limits(exc: HttpProcessingError) -> bool:
    """Whether aiohttp refused a head for its size (a line too long, or more header
    lines than `max_headers`) rather than for its syntax."""
    return isinstance(exc, LineTooLong) or exc.message.startswith(TOO_MANY_HEADERS)


def missing_host(exc: HttpProcessingError) -> bool:
    """Whether aiohttp refused a head for an HTTP/1.1 request without `Host`."""
    return exc.message.startswith(MISSING_HOST)


def duplicate_host(exc: HttpProcessingError) -> bool:
    """Whether aiohttp refused a head for a second `Host`."""
    return exc.message.startswith(DUPLICATE_HOST)


def transfer_encoding_refused(exc: HttpProcessingError) -> bool:
    """Whether the parser refused a head for its Transfer-Encoding."""
    return exc.message.startswith(UNSUPPORTED_TE)


def queued_error(handler: web.RequestHandler) -> HttpProcessingError | None:
    """The parse error aiohttp queued last on this connection, None when the last
    entry of its queue is a request (or the queue is empty)."""
    messages = handler._messages
    if not messages:
        return None
    last = messages[-1][0]
    if isinstance(last, RawRequestMessage):
        return None
    return last.exc if isinstance(last.exc, HttpProcessingError) else None


def chunked_body_unread(handler: web.RequestHandler, count: int) -> bool:
    """Whether the parser's last feed queued one request (the connection had `count`
    before it) whose body is chunked and of which the parser has read nothing: no
    chunk-size line (a payload's `_http_chunk_splits` is made at the first) and no
    byte. Its next byte is then the body's first."""
    if handler._request_count != count + 1 or not handler._messages:
        return False
    message, payload = handler._messages[-1]
    return (
        isinstance(message, RawRequestMessage)
        and message.chunked
        and not payload.is_eof()
        and payload._http_chunk_splits is None
        and not payload.total_bytes
    )


def fail_open_body(
    handler: web.RequestHandler, exc: HttpProcessingError, go_error: str | None = None
) -> bool:
    """When `exc`, the parse error aiohttp queued last (`queued_error`), broke the body
    of a request whose payload is still open: its reader fails with Go's error for the
    framing (a `RequestPayloadError`, without the request's bytes), as Go's chunked
    reader fails the handler's read, and the error leaves the queue: the request's own
    answer is the one the client gets. A request being handled is the connection's
    last (nothing after a broken body can be read as a request): the connection closes
    after its answer. False, nothing done, for an error no open body had: a head's.
    `go_error`: Go's error for the framing, where the proxy read it as Go does
    (`proxy.chunk_lines`) rather than from llhttp's reason (`CHUNK_ERRORS`)."""
    entries = list(handler._messages)[:-1]
    payload: StreamReader | None = None
    current = True
    for message, queued in reversed(entries):
        if isinstance(message, RawRequestMessage) and not queued.is_eof():
            payload, current = queued, False
            break
    request = handler._current_request
    if payload is None and request is not None and not request.content.is_eof():
        payload = request.content
    if payload is None or payload.exception() is not None:
        return False
    handler._messages.pop()
    text = go_error or next(
        (go for llhttp, go in CHUNK_ERRORS if exc.message.startswith(llhttp)), None
    )
    payload.set_exception(RequestPayloadError(text or MALFORMED_CHUNKS))
    # Ended too: aiohttp lingers after an answer over a payload not ended, and reading
    # this one raises.
    payload.feed_eof()
    if current:
        handler.close()
    return True


def length_with_coding_line(exc: HttpProcessingError) -> bytes | None:
    """The field line (the second of the two) llhttp quotes when it refuses a head for
    having both Content-Length and Transfer-Encoding, None for any other refusal."""
    if not exc.message.startswith(LENGTH_WITH_CODING):
        return None
    return _quoted_line(exc)


_QUOTED_LINE = re.compile(r"^  (b'.*'|b\".*\")$", re.MULTILINE)


def quoted_request_line(exc: HttpProcessingError) -> bytes | None:
    """The request line a status-line refusal of aiohttp's C parser quotes, None when
    it quotes none. Only on the error path: it parses the message."""
    if not isinstance(exc, BadStatusLine):
        return None
    return _quoted_line(exc)


def _quoted_line(exc: HttpProcessingError) -> bytes | None:
    found = _QUOTED_LINE.search(exc.message)
    if found is None:
        return None
    try:
        line = ast.literal_eval(found[1])
    except (ValueError, SyntaxError):
        return None
    return line if isinstance(line, bytes) else None


def refused_method_line(exc: HttpProcessingError) -> bytes | None:
    """The request line of a head aiohttp's parser refused for its method alone (one
    llhttp does not know, or a CONNECT target that is a path the C parser cannot read
    as an authority), None for any other refusal. Only on the error path. A quoted
    line is as far as the read that failed holds it; a CONNECT's line is made up of
    its target (the parser stopped before the version)."""
    if isinstance(exc, InvalidURLError):
        target = exc.message
        if not target.startswith("/"):
            return None  # an absolute form without a host, or no URL at all
        return b"CONNECT " + target.encode("latin-1") + b" HTTP/1.1"
    if isinstance(exc, BadHttpMethod) or (
        isinstance(exc, BadStatusLine) and HTTP_METHOD_ONLY in exc.message
    ):
        return quoted_request_line(exc)
    return None


def refused_asterisk(exc: HttpProcessingError) -> bool:
    """Whether the C parser refused the request target `*` (it reads `*` for OPTIONS
    alone), which Go's server reads for any method."""
    return isinstance(exc, InvalidURLError) and exc.message == "*"


_ROOT = URL("/")


def _go_targets(factory: _RequestFactory) -> _RequestFactory:
    """`factory` reading request targets as Go's net/http does where aiohttp's
    parsers read them otherwise, so that the proxy's route table sees the request
    rather than aiohttp's router answering it with a 404 of its own:

    * an origin-form CONNECT's target (`CONNECT /api/chat`) is its path (aiohttp reads
      every CONNECT target as an authority); a CONNECT's connection closes after its
      answer: the parsers read no body of a CONNECT, so bytes sent as one would be
      read as the next request;
    * a target with no path (`OPTIONS *`, `CONNECT *`, `CONNECT host:port`,
      `GET http://host`) has the path `/` (aiohttp's is empty), its `raw_path` still
      the target as sent, which Go answers before any handler
      (`proxy.go_mux.redirect`);
    * a `#` in a target's path or query is part of it, as to Go (the parsers read a
      fragment there);
    * a request's connection closes after its answer where Go's closes, which reads
      `Connection` otherwise than llhttp (`proxy.go_keep_alive`);
    * an HTTP/1.0 request the parser read a chunked body of has no body and no
      Transfer-Encoding (Go ignores the header on HTTP/1.0, and without a
      Content-Length reads no body), and its connection closes after the answer: the
      chunks the parser took are never read as a request either (Go, on a keep-alive
      connection, would read them as its next request line, and refuse it).

    A few comparisons per request, and for one of HTTP/1.0 or with `Connection` a
    cached reading of that field."""

    def make(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> BaseRequest:
        if not message.should_close and (
            message.version < HttpVersion11 or hdrs.CONNECTION in message.headers
        ):
            message = _go_keep_alive(message)
        if message.method == "CONNECT" or message.path[:1] != "/":
            message = _go_target(message)
        elif "#" in message.path:
            message = _with_hash(message)
        if message.chunked and message.version < HttpVersion11:
            message, payload = _without_coding(message), EMPTY_PAYLOAD
        return factory(message, payload, protocol, writer, task)

    return make


def _with_hash(message: RawRequestMessage) -> RawRequestMessage:
    """`message`, whose origin- or absolute-form target has a `#` and a path, read as
    Go's `ParseRequestURI` reads it: a request target has no fragment, so the `#` and
    what follows it stay in the path (`/api/version#x`, which no route of Ollama's
    is), or in the query after the first `?`."""
    before, _, query = message.path.partition("?")
    if before.startswith("/"):
        return message._replace(url=URL.build(path=before, query_string=query, encoded=True))
    url = message.url
    # `scheme://authority/path`: the path from the first `/` after the authority.
    authority_and_path = before[before.find("//") + 2 :]
    path = authority_and_path[authority_and_path.find("/") :]
    return message._replace(
        url=URL.build(
            scheme=url.scheme,
            authority=url.raw_authority,
            path=path,
            query_string=query,
            encoded=True,
        )
    )


def _go_keep_alive(message: RawRequestMessage) -> RawRequestMessage:
    """`message`, which llhttp keeps the connection after, closing it where Go's net/http
    closes it (`proxy.go_keep_alive`)."""
    http11 = message.version >= HttpVersion11
    if not closes(http11, tuple(message.headers.getall(hdrs.CONNECTION, ()))):
        return message
    return message._replace(should_close=True)


def _go_target(message: RawRequestMessage) -> RawRequestMessage:
    path = message.path
    connect = message.method == "CONNECT"
    if path == "*":
        url = _ROOT
    elif connect:
        if path.startswith("/"):
            url = URL(path, encoded=True)
        elif "/" not in path:
            url = _ROOT  # an authority (`host:port`): no path at all
        else:
            url = message.url
    elif not message.url.relative().raw_path:
        url = message.url.with_path("/", keep_query=True)  # `http://host`, `http://host?q`
    elif "#" in path:
        return _with_hash(message)
    else:
        return message
    return message._replace(url=url, should_close=message.should_close or connect)


def _without_coding(message: RawRequestMessage) -> RawRequestMessage:
    headers = CIMultiDict(message.headers)
    headers.popall(hdrs.TRANSFER_ENCODING)
    raw_headers = tuple(
        (name, value) for name, value in message.raw_headers if name.lower() != b"transfer-encoding"
    )
    return message._replace(
        headers=CIMultiDictProxy(headers),
        raw_headers=raw_headers,
        chunked=False,
        should_close=True,
    )


class _Server(web.Server):
    """aiohttp's `web.Server` (the protocol factory sites listen with), building each
    connection's handler with `factory`."""

    def __init__(self, base: web.Server, factory: HandlerFactory) -> None:
        super().__init__(
            base.request_handler,
            request_factory=_go_targets(base.request_factory),
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self._handler_factory = factory

    def __call__(self) -> web.RequestHandler:
        return self._handler_factory(self, loop=self._loop, **self._kwargs)


class HandlerRunner(web.AppRunner):
    """`web.AppRunner` whose connections are served by handlers `factory` builds."""

    def __init__(self, app: web.Application, factory: HandlerFactory, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._handler_factory = factory

    async def _make_server(self) -> web.Server:
        # aiohttp's own: runs the application's startup and builds its Server.
        server = await super()._make_server()
        return _Server(server, self._handler_factory)


# Per-request state.


def state_get(request: BaseRequest, key: web.RequestKey[T]) -> T | None:
    """`request.get(key)`, without an exception raised and caught for a missing key."""
    return cast("T | None", request._state.get(key))


# Relayed answers (proxy/relay.py).


def client_transport(request: BaseRequest) -> asyncio.Transport:
    """The client's transport, to write an answer on directly: aiohttp's writer never
    sees these bytes, and the handler then returns a response that writes nothing."""
    transport = request.transport
    assert transport is not None
    return transport


# Whether the client's transport has asked its writers to pause (its buffer is over the
# high-water mark). The property's own getter: the relay asks after every chunk, and a
# function around the property would be a second call each time.
writing_paused: Callable[[BaseProtocol], bool] = cast(
    Callable[[BaseProtocol], bool], cast(property, BaseProtocol.writing_paused).fget
)


async def wait_drained(writer: AbstractStreamWriter) -> None:
    """Wait until the client's transport resumes writing, bytes written to it directly
    included."""
    await writer.drain()


# The emulator (proxy/emulator/native.py).


def defer_headers(response: web.StreamResponse) -> None:
    """`prepare` keeps the head back: it goes out with the first body write."""
    response._send_headers_immediately = False

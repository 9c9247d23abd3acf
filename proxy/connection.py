"""Client connections: aiohttp's server protocol with the bounds a public proxy needs.

aiohttp's server reads a request head for as long as a client takes (a client that
dribbles header bytes holds its connection forever: "slowloris"), answers a head over
its line limits with a plain-text 400 quoting the request's bytes, and logs that at
ERROR with a traceback, bytes included. Ollama (Go's net/http) answers a head over its
limit with `431 Request Header Fields Too Large` before any handler runs, any other
unparsable request with `400 Bad Request`, and logs neither. Here:

* a request head must arrive complete within `timeouts.client_header_seconds` of its
  first byte (of the connection opening, for the first request), else the connection is
  closed without an answer, as Go does on its ReadHeaderTimeout;
* an idle keep-alive connection is closed after `timeouts.client_idle_seconds`;
* a head over `limits.max_header_bytes` (a line, or the lines together while they are
  still arriving) is answered with Go's exact 431, any other unparsable head with Go's
  400; one WARNING line without any request byte is logged.

How: `ProxyRunner` builds aiohttp's `web.Server` as usual, then serves connections with
`ClientConnection`, a `RequestHandler` subclass. Its hooks run once per connection
(`connection_made`, `connection_lost`) or once per read of the client's socket
(`data_received`: a counter comparison when the head arrives whole, which is the normal
case). A head timer runs from the connection's opening to its first head, later only
while a partial head waits; never per chunk: answers stream from the upstream protocol
straight to the transport and never pass through here. This leans on aiohttp 3.14's
RequestHandler internals (`_request_count`, `_waiter`, `_force_close`);
tests/test_client_faults.py covers each behaviour.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from proxy.config import Config, Limits, Timeouts
from proxy.limits import HEAD_TOO_LARGE_BODY
from proxy.relayed_response import RelayedResponse

log = logging.getLogger("autoroute.clients")

# Go's net/http (src/net/http/server.go, conn.serve): written raw on the connection,
# which is then closed. Ollama's http.Server sets no MaxHeaderBytes, so its limit is
# Go's default, DefaultMaxHeaderBytes (1 MiB) plus 4096 bytes of slack for the request
# line (initialReadLimitSize).
_GO_ERROR_HEADERS = b"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
HEAD_TOO_LARGE = b"HTTP/1.1 " + HEAD_TOO_LARGE_BODY + _GO_ERROR_HEADERS + HEAD_TOO_LARGE_BODY
BAD_REQUEST = b"HTTP/1.1 400 Bad Request" + _GO_ERROR_HEADERS + b"400 Bad Request"
GO_MAX_HEADER_BYTES = 1 << 20
REQUEST_LINE_SLACK = 4096
# After a refusal the proxy half-closes and keeps reading (and dropping) what the client
# still sends for this long before closing, as Go's closeWriteAndWait does (its
# rstAvoidanceDelay is 500 ms): closing a socket with unread bytes sends a reset, and a
# reset can destroy the answer before the client has read it.
LINGER_SECONDS = 0.5


class ClientConnection(RequestHandler):
    """One client connection: aiohttp's protocol plus a deadline and a byte budget for
    each request head."""

    __slots__ = ("_head_budget", "_head_bytes", "_head_seconds", "_head_timer")

    def __init__(
        self, manager: web.Server, *, head_seconds: float, head_budget: int, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._head_seconds = head_seconds
        self._head_budget = head_budget
        self._head_bytes = 0  # bytes of the head still incomplete
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # The first head is due within the deadline of the connection opening (Go does
        # the same), so that connections which send nothing do not pile up either.
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            # A head was parsed (or failed to parse) in this read: that head's deadline
            # and byte count are over. Bytes of a pipelined next request that arrive
            # while this one is handled are bounded by the parser's limits and, once
            # the response is sent, by the keep-alive timeout.
            self._head_bytes = 0
            self._cancel_head_timer()
            return
        if not data or self._force_close or not self._awaiting_head():
            return  # body bytes, or a connection already being closed
        self._head_bytes += len(data)
        if self._head_bytes > self._head_budget:
            self._refuse(HEAD_TOO_LARGE, f"request head over {self._head_budget} bytes")
        elif self._head_timer is None:
            self._arm_head_timer()

    def _awaiting_head(self) -> bool:
        """Whether bytes arriving now belong to a request head: no request yet on this
        connection, or aiohttp waits for the next one (the previous body is then
        complete: aiohttp waits only after lingering over an unread body)."""
        if self._request_count == 0:
            return True
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _arm_head_timer(self) -> None:
        if self._head_seconds > 0:
            loop = self._loop
            self._head_timer = loop.call_at(loop.time() + self._head_seconds, self._head_late)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._force_close or self.transport is None or not self._awaiting_head():
            return
        log.info(
            "closed a connection from %s: no complete request head within %gs",
            self._peer(),
            self._head_seconds,
        )
        # No answer, as Go on its ReadHeaderTimeout: the client is not reading anyway.
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # An unparsable head. aiohttp's answer and log line would quote its bytes
        # (tokens, prompts); Go's quote nothing.
        if isinstance(exc, LineTooLong) or exc.message.startswith("Too many headers"):
            self._refuse(HEAD_TOO_LARGE, "a request line or header over the size limit")
            status = 431
        else:
            self._refuse(BAD_REQUEST, f"malformed request ({type(exc).__name__})")
        # The answer is on the wire already: aiohttp must write nothing of its own.
        return RelayedResponse(status, keep_alive=False)

    def _refuse(self, answer: bytes, reason: str) -> None:
        transport = self.transport
        if transport is None or self._force_close:
            return
        log.warning("refused a request from %s: %s", self._peer(), reason)
        # aiohttp drops every further byte and never reuses (nor closes) the connection.
        self._force_close = True
        self._cancel_head_timer()
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER_SECONDS, transport.close)

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


class _ClientServer(web.Server):
    """aiohttp's `web.Server` (the protocol factory sites listen with), making
    `ClientConnection`s."""

    def __init__(self, base: web.Server, head_seconds: float, head_budget: int) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self._head_seconds = head_seconds
        self._head_budget = head_budget

    def __call__(self) -> RequestHandler:
        return ClientConnection(
            self,
            loop=self._loop,
            head_seconds=self._head_seconds,
            head_budget=self._head_budget,
            **self._kwargs,
        )


class ProxyRunner(web.AppRunner):
    """`web.AppRunner` serving client connections with `ClientConnection`."""

    def __init__(
        self, app: web.Application, *, head_seconds: float, head_budget: int, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._head_settings = (head_seconds, head_budget)

    async def _make_server(self) -> web.Server:
        # aiohttp's own: runs the application's startup and builds its Server.
        server = await super()._make_server()
        return _ClientServer(server, *self._head_settings)


class _WithoutRequestBytes(logging.Filter):
    """What aiohttp logs about an unparsable request or body carries the parser's
    message, which quotes the request's bytes: keep one line, without them. A safety
    net: `ClientConnection` answers unparsable heads itself and logs nothing of theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if _from_request_bytes(exc):
            record.msg = f"{record.getMessage()}: {type(exc).__name__}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _from_request_bytes(exc: BaseException | None) -> bool:
    for _ in range(4):  # the exception, its cause or context
        if exc is None:
            return False
        if isinstance(exc, HttpProcessingError | RequestPayloadError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


_FILTER = _WithoutRequestBytes()


def runner(app: web.Application, config: Config, **overrides: Any) -> web.AppRunner:
    """The proxy's runner: its client timeouts, its header limits (`overrides` replace
    any of aiohttp's runner options, e.g. a shorter `shutdown_timeout` in tests)."""
    logging.getLogger("aiohttp.server").addFilter(_FILTER)  # once: addFilter dedupes
    head = config.limits.max_header_bytes or GO_MAX_HEADER_BYTES
    options: dict[str, Any] = {
        # A client that disconnects cancels its handler, which is how the relay learns
        # to abort the upstream request (the GPU stops generating).
        "handler_cancellation": True,
        "access_log": None,
        "shutdown_timeout": config.timeouts.shutdown_seconds,
        "keepalive_timeout": config.timeouts.client_idle_seconds,
        # The parser's per-line limits (a line longer than all lines may be together is
        # refused as it arrives); the handler checks the lines' exact total once the
        # head is parsed (proxy/limits.py). No count limit of its own (Go has none):
        # enough headers to exceed the byte limit first.
        "max_line_size": max(head, 8190),
        "max_field_size": max(head, 8190),
        "max_headers": max(head // 4, 128),
    }
    options.update(overrides)
    return ProxyRunner(
        app,
        head_seconds=config.timeouts.client_header_seconds,
        head_budget=head + REQUEST_LINE_SLACK,
        **options,
    )


def ollama_runner(app: web.Application, **overrides: Any) -> web.AppRunner:
    """Client connections as Ollama's own server treats them, for the emulator: Go's
    default head limit (1 MiB plus the request-line slack) answered with Go's 431, no
    head deadline (Ollama sets no ReadHeaderTimeout), aiohttp's keep-alive."""
    ollama = Config(
        timeouts=Timeouts(client_header_seconds=0, client_idle_seconds=75.0),
        limits=Limits(max_header_bytes=GO_MAX_HEADER_BYTES),
    )
    return runner(app, ollama, **overrides)

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
  400; one WARNING line without any request byte is logged;
* a connection's first request line, when Go reads it differently from aiohttp's
  parser, is answered as Go answers it, checked once the line is complete
  (`go_request_line`): one without an HTTP version (aiohttp's parser reads it as
  HTTP/0.9 and serves it) gets Go's 400, an HTTP version other than 1.x (2.0, 3.0,
  0.9) Go's 505; line ends before it, which llhttp skips, Go's 400 (Go skips them
  only after a POST).
  A later request on the connection is checked by the version aiohttp's parser read
  (`refuse_version`, which the proxy's handler calls for a version other than 1.x); a
  line the parser refuses there is judged by `go_request_line` from the line its error
  quotes (llhttp refuses HTTP/3.0: Go's 505), else answered 400;
* an HTTP/1.1 request without `Host`, which aiohttp's parser refuses, gets Go's 400
  with Go's text (`missing_host`), one with two Go's plain 400 (`duplicate_host`: Go's
  readRequest refuses it before it reads the body's framing, with no text of its
  own), one whose `Host` has a byte Go refuses there (`a b`) Go's 400 with its text,
  from the handler before anything else (`refuse_parsed`);
* a target of `*` for a method other than OPTIONS, which aiohttp's C parser refuses,
  gets the answer of Go's mux (400, no body: `_asterisk_line`; the version is known
  for a connection's first request); a connection's first request line with the
  method PRI, which llhttp reads as the start of the HTTP/2 preface (and refuses
  whatever follows it, or waits for the preface's rest), gets Ollama's answer as soon
  as the line is complete, as a method Ollama serves on no route (below): the mux's
  400 for `*`, the HTTP/2 preface's own line (Go would first read the head, and
  refuse one without `Host` with its text). A later PRI request keeps the parser's
  plain 400;
* a Transfer-Encoding the parser refuses (a coding other than `chunked`, a list, a
  second field) gets Go's 501 (`transfer_encoding_refused`), and so does one it
  reads as chunked and Go does not take (`gzip, chunked`: Go takes `chunked` alone),
  from the handler before anything else (`refuse_parsed`); so does an HTTP/1.1 head
  with a Content-Length and a Transfer-Encoding other than one `chunked` field (Go
  judges the coding first), which llhttp refuses for having both: the refusal quotes
  the second of the two fields, and the head's Transfer-Encoding fields and version
  are read from the bytes of the read that failed (`length_with_coding`), on the
  error path only. A head that began in an earlier read, or that the read holds
  twice with different answers (a body may hold anything), keeps the plain 400;
* an HTTP/1.0 request with a Transfer-Encoding and no Content-Length has no body, as
  to Go (which ignores the header on HTTP/1.0): the handler sees none and no
  Transfer-Encoding, and the connection closes after the answer, so the chunks the
  parser took as its body are never read as a request (Go, on a keep-alive
  connection, reads them as its next request line, and answers that with its 400);
  one whose coding llhttp cannot read as chunked (`gzip`) keeps the parser's 501;
* requests that arrive whole before bytes that do not parse (pipelined in one write)
  are answered first, in order, and the bytes then get their refusal, as Go reads a
  connection one request at a time (aiohttp's parser would drop those requests and
  answer the refusal alone): the parser stops after each request
  (`one_message_per_feed`) and is fed again until it holds nothing complete
  (`feed_held_back`);
* a request asking to switch protocols (`Upgrade: h2c`, `websocket`) is served as any
  other, and so are the requests pipelined behind it, in order, as Go serves them
  (Ollama hijacks no connection); aiohttp's C parser would drop those
  (`one_message_per_feed`);
* chunked framing that breaks inside a body the handler reads (or will) fails that
  read with Go's error for it, as Go's chunked reader does, which the handler answers
  with Ollama's 400 `{"error": ...}`; the connection closes after that answer
  (`fail_open_body`). Framing that breaks in the read that brought the head gets Go's
  plain 400 like an unparsable head (aiohttp's parser drops that request);
* `Transfer-Encoding: chunked` with a tab after the value, which Go reads (its
  textproto drops it) and llhttp refuses, is read as chunked, from a head whose end
  and coding come in one read (below);
* a chunk-size line Go reads and llhttp refuses (`5 `, `5;a b`) is read, one llhttp
  reads and Go refuses (17 digits, lines that outweigh their data) gets Go's error, as
  above, and a trailer field Go takes and llhttp refuses (`Content-Length`) is taken: a
  chunked body's framing is read as Go reads it before the parser sees it
  (`proxy.chunk_lines`), from the body's first byte on, known when the read that ends
  its head names the chunked coding (as nearly every client's head does, sent in one
  write) or the head began in an earlier read (`HeadReads` finds its end, however the
  reads cut it), and the parser reads that head alone; a request after such a body in
  the same read is read alike (`_parse`). Any other chunked body (one pipelined
  behind a request still being handled) keeps llhttp's reading;
* a head's `Proxy-Connection` fields are never given to the parser (`HeadReads`):
  Go ignores them, llhttp reads them as `Connection` (and then refuses any byte after
  a request it read as closing the connection); and the connection closes after an
  answer where Go's reading of `Connection` closes it (`proxy.go_keep_alive`);
* heads Go reads and llhttp refuses (two equal Content-Lengths, Content-Length with
  `Transfer-Encoding: chunked` on HTTP/1.1, Content-Length with any
  Transfer-Encoding on HTTP/1.0, which Go frames by the Content-Length, a header line
  ending in a bare LF, a folded header line) get Go's plain 400 like any other
  unparsable head: reading them as Go does would take a second parser over every
  head, and aiohttp's request parser has no lenient setting (llhttp's
  `lenient_chunked_length` would take Content-Length with Transfer-Encoding). Nor can
  the refused head be parsed again from the read: the parser tells no offset, and a
  parse started anywhere but at the head's first byte could read a body's bytes as a
  request. The refusal reaches no backend, so no body can be framed two ways;
* a request target with bytes beyond ASCII (UTF-8 sent as it is: `/api/tags?x=é`),
  which llhttp refuses and Go reads (its `ParseRequestURI` refuses control bytes
  alone), is read as Go reads it, on any request of the connection: the parser reads
  the line again with those bytes percent-encoded, which routes as Go routes them,
  and the request keeps its target as sent, which the proxy relays
  (`proxy.target_bytes`, `one_message_per_feed`). The line is read again only on the
  parser's refusal; where it starts is known from the end of the request before it
  (its head and Content-Length), so a line behind a body framed otherwise (chunked,
  unless its size lines were read as Go reads them: above) keeps the plain 400, and
  so does a target whose authority has such a byte;
* a method llhttp does not know but Go reads (any token: `FOO`, `get`, `DESCRIBE`),
  and a CONNECT whose path aiohttp's C parser cannot read (`/api/blobs/sha256:...`),
  gets Ollama's answer for its target, read from the request line the parser's error
  quotes (`unserved_method`: gin's 405 with `Allow` or 404, Go's redirect of a path
  that is not clean, Go's 400 for `*`). Ollama serves such a method on no route. The
  parser stops at the method, so the answer comes without the rest of the head read
  (Go would first refuse a head without `Host`, or over its size), and the connection
  closes after it (Go's stays open).

How: the runner builds aiohttp's `web.Server` as usual, then serves connections with
`ClientConnection`, a `RequestHandler` subclass. Its hooks run once per connection
(`connection_made`, `connection_lost`) or once per read of the client's socket
(`data_received`: a counter comparison when the head arrives whole, which is the normal
case). A head timer runs from the connection's opening to its first head, later only
while a partial head waits; never per chunk: answers stream from the upstream protocol
straight to the transport and never pass through here. What this needs of aiohttp's
internals goes through proxy/aiohttp_internals.py; tests/test_client_faults.py covers
each behaviour.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from proxy.aiohttp_internals import (
    HandlerRunner,
    awaiting_head,
    chunked_body_unread,
    closing,
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
)
from proxy.chunk_lines import ChunkLines
from proxy.config import Config
from proxy.config_serving import Limits, Timeouts
from proxy.errors import unserved_method
from proxy.head_reads import HeadReads
from proxy.limits import HEAD_TOO_LARGE_BODY
from proxy.relayed_response import RelayedResponse
from proxy.request_ids import ID_BYTES

log = logging.getLogger("autoroute.clients")


# Go's net/http (src/net/http/server.go, conn.serve): written raw on the connection,
# which is then closed. Ollama's http.Server sets no MaxHeaderBytes, so its limit is
# Go's default, DefaultMaxHeaderBytes (1 MiB) plus 4096 bytes of slack for the request
# line (initialReadLimitSize).
def go_error(status: bytes, request_id: bytes = b"") -> bytes:
    """Go's answer with `status` (code and reason, also its text, but for a 501), and
    the proxy's `X-Request-Id` when one is given: the proxy names every answer, these
    too."""
    named = b"X-Request-Id: " + request_id + b"\r\n" if request_id else b""
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
        + named
        + b"Connection: close\r\n\r\n"
        + (_UNSUPPORTED_TE_TEXT if status == _UNSUPPORTED_TE_STATUS else status)
    )


_BAD_REQUEST_STATUS = b"400 Bad Request"
_LINE_ENDS = b"\r\n"
# Go's statusError for a version other than 1.x: its text is in the status line too.
_VERSION_STATUS = b"505 HTTP Version Not Supported: unsupported protocol version"
# Go's readRequest (server.go): `if req.ProtoAtLeast(1, 1) && (!haveHost || len(hosts) ==
# 0) && !isH2Upgrade && req.Method != "CONNECT"` returns badRequestError("missing required
# Host header"), a statusError written as the one above.
_NO_HOST_STATUS = b"400 Bad Request: missing required Host header"
_MALFORMED_HOST_STATUS = b"400 Bad Request: malformed Host header"
# The bytes golang.org/x/net/http/httpguts's validHostByte admits in a Host.
_VALID_HOST = re.compile(r"[0-9A-Za-z!$%&'()*+,\-.:;=\[\]_~]*")
# Go's transferReader refuses a Transfer-Encoding other than one `chunked` (an
# unsupportedTEError), answered without the value: "Unsupported transfer encoding".
_UNSUPPORTED_TE_STATUS = b"501 Not Implemented"
_UNSUPPORTED_TE_TEXT = b"Unsupported transfer encoding"
HEAD_TOO_LARGE = go_error(HEAD_TOO_LARGE_BODY)
BAD_REQUEST = go_error(_BAD_REQUEST_STATUS)
VERSION_NOT_SUPPORTED = go_error(_VERSION_STATUS)
# RFC 9110 token characters: what Go's validMethod accepts in a method.
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _go_version(proto: bytes) -> tuple[int, int] | None:
    """Go's ParseHTTPVersion: "HTTP/X.Y" with one digit each, else None."""
    if len(proto) != 8 or not proto.startswith(b"HTTP/") or proto[6:7] != b".":
        return None
    major, minor = proto[5:6], proto[7:8]
    if not (major.isdigit() and minor.isdigit()):
        return None
    return int(major), int(minor)


def go_request_line(line: bytes) -> bytes | None:
    """The status Go's net/http refuses a request line with, for what aiohttp's parser
    reads otherwise (src/net/http/request.go readRequest, server.go
    http1ServerSupportsRequest); None for a line Go reads (aiohttp then parses it, and
    refuses the rest as before). `line` is without its line ending."""
    method, space, rest = line.partition(b" ")
    target, space2, proto = rest.partition(b" ")
    if not space or not space2 or not method or not _TOKEN.issuperset(method):
        return _BAD_REQUEST_STATUS  # "malformed HTTP request", "invalid method"
    version = _go_version(proto)
    if version is None:
        return _BAD_REQUEST_STATUS  # "malformed HTTP version"
    if version[0] != 1 and not (version == (2, 0) and method == b"PRI" and target == b"*"):
        return _VERSION_STATUS
    return None


def parsed_head_refusal(request: BaseRequest) -> bytes | None:
    """The status Go's net/http refuses a head with that aiohttp's parser took, None
    for one Go reads too, in Go's order:

    * a Transfer-Encoding other than exactly `chunked` (any case) on HTTP/1.1, where
      llhttp takes any list whose last coding is `chunked` (`gzip, chunked`): 501
      (src/net/http/transfer.go `parseTransferEncoding`; HTTP/1.0 ignores it);
    * a Content-Length of 2^63 or more: Go's plain 400 ("bad Content-Length", from
      `strconv.ParseUint(cl, 10, 63)` in transfer.go `parseContentLength`), where
      llhttp takes up to 2^64 - 1 (and aiohttp reads 2^64 - 1 as no body, the bytes
      after the head then llhttp's body, never read);
    * a Host with a byte Go's `httpguts.ValidHostHeader` refuses (`a b`): 400 with
      Go's text (server.go `readRequest`), which llhttp takes as any header value."""
    headers = request.headers
    codings = headers.getall(hdrs.TRANSFER_ENCODING, ())
    if (
        codings
        and request.version >= HttpVersion11
        and not _go_takes_codings([c.encode("utf-8", "surrogateescape") for c in codings])
    ):
        return _UNSUPPORTED_TE_STATUS
    length = headers.get(hdrs.CONTENT_LENGTH)
    # (llhttp has checked it is digits; fewer than 19 of them are below 2^63.)
    if length is not None and len(length) >= _GO_LENGTH_DIGITS and int(length) >= _GO_LENGTH_END:
        return _BAD_REQUEST_STATUS
    host = headers.get(hdrs.HOST)
    if host and _VALID_HOST.fullmatch(host) is None:
        return _MALFORMED_HOST_STATUS
    return None


# Go reads a Content-Length into 63 bits; 2^63 has 19 digits.
_GO_LENGTH_END = 1 << 63
_GO_LENGTH_DIGITS = len(str(_GO_LENGTH_END))


_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:")
# A Transfer-Encoding of `chunked` and spaces and tabs after it, up to its line's CR.
_CHUNKED_THEN_TAB = re.compile(rb"^(transfer-encoding:[ \t]*chunked)[ \t]+\r$", re.I | re.M)
_TRANSFER_ENCODING = b"transfer-encoding:"


def length_with_coding(data: bytes, line: bytes) -> bytes | None:
    """Go's 501 for the head llhttp refused for having both Content-Length and
    Transfer-Encoding, quoting `line` (the second of the two), when `data` (the read
    that failed) holds that head whole: HTTP/1.1 with a Transfer-Encoding other than
    one `chunked` field (src/net/http/transfer.go parseTransferEncoding, which Go runs
    before it reads the Content-Length). None when Go reads the head (one `chunked`:
    Go drops the Content-Length; HTTP/1.0: Go drops the Transfer-Encoding), or the head
    is not whole in `data`, or `data` holds `line` in more than one head with
    different answers (a body may hold anything). Only on the error path; one pass
    over `data`, however often it holds `line`."""
    lines = data.split(b"\r\n")
    verdicts = set()
    first = 0  # the first line of the run of field lines the walk is in
    for end, text in enumerate(lines):
        if _FIELD_NAME.match(text):
            continue
        if line in lines[first:end]:
            verdicts.add(_length_with_coding_head(lines, first, end))
        first = end + 1
    verdicts.discard(False)  # the line in no head: in a body
    return _UNSUPPORTED_TE_STATUS if verdicts == {_UNSUPPORTED_TE_STATUS} else None


def _length_with_coding_head(lines: list[bytes], first: int, end: int) -> bytes | bool | None:
    """Go's status for the head whose field lines are `lines[first:end]` (None: Go
    reads it, or it is not whole in `lines`); False when no request line comes before
    them."""
    if first == 0:
        return None  # the head began in an earlier read
    request = lines[first - 1]
    version = _go_version(request[-8:])
    if version is None or request[-9:-8] != b" ":
        return False
    if lines[end] or end == len(lines) - 1:
        return None  # the head goes on past what `data` holds, or past what is read here
    if version < (1, 1):
        return None
    codings = [
        field[len(_TRANSFER_ENCODING) :].strip(b" \t")
        for field in lines[first:end]
        if field[: len(_TRANSFER_ENCODING)].lower() == _TRANSFER_ENCODING
    ]
    return None if _go_takes_codings(codings) else _UNSUPPORTED_TE_STATUS


def _go_takes_codings(fields: list[bytes]) -> bool:
    """Whether Go's transferReader takes these Transfer-Encoding fields of an HTTP/1.1
    head: one field, `chunked` in any ASCII case (src/net/http/transfer.go
    parseTransferEncoding)."""
    return len(fields) == 1 and fields[0].lower() == b"chunked"


def _written(response: web.Response, http11: bool, request_id: bytes) -> bytes:
    """`response` (headers and body, no stream) as Go's server writes a handler's
    answer on a connection it then closes: the handler's headers, `Date`,
    `Content-Length`, and for HTTP/1.1 `Connection: close`; the proxy's `X-Request-Id`
    when one is given."""
    body = response.body if isinstance(response.body, bytes) else b""
    lines = [
        b"HTTP/1.%d %d %s" % (http11, response.status, HTTPStatus(response.status).phrase.encode())
    ]
    fields = sorted((k, v) for k, v in response.headers.items() if k.lower() != "connection")
    lines += [f"{name}: {value}".encode("latin-1") for name, value in fields]
    if request_id:
        lines.append(b"X-Request-Id: " + request_id)
    lines.append(b"Date: " + formatdate(usegmt=True).encode())
    lines.append(b"Content-Length: %d" % len(body))
    if http11:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


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

    __slots__ = (
        "_chunks",
        "_first_line",
        "_head_budget",
        "_head_bytes",
        "_head_seconds",
        "_head_timer",
        "_heads",
        "_line",
        "_request_ids",
        "_request_starts",
        "_te_refused",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        head_seconds: float,
        head_budget: int,
        request_ids: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        # Tells the parser that the bytes it is given next start a request.
        self._request_starts = one_message_per_feed(self, **kwargs)
        self._request_ids = request_ids  # the proxy's refusals name themselves; Go's not
        self._head_seconds = head_seconds
        self._head_budget = head_budget
        self._head_bytes = 0  # bytes of the head still incomplete
        self._head_timer: asyncio.TimerHandle | None = None
        # The start of a request line still incomplete, while one arrives in pieces.
        self._line: bytearray | None = None
        # The parse error that Go answers with its 501 (`length_with_coding`).
        self._te_refused: HttpProcessingError | None = None
        # The size lines of the chunked body being read, while they are Go's to read.
        self._chunks: ChunkLines | None = None
        # The reads of the head being read.
        self._heads = HeadReads()
        # The connection's first request line, where its target is `*`.
        self._first_line: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # The first head is due within the deadline of the connection opening (Go does
        # the same), so that connections which send nothing do not pile up either.
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        count = request_count(self)
        # Only a connection's first request line is checked (see `_line_refused`).
        if (
            self._line is not None or (self._head_bytes == 0 and count == 0)
        ) and self._line_refused(data):
            return
        refusal = self._parse(data, awaiting_head(self))
        # Requests that came whole in this read, before any bytes behind them that do
        # not parse: each is queued, and answered, before those bytes are refused.
        feed_held_back(self, super().data_received)
        if request_count(self) != count:
            # A head was parsed (or failed to parse) in this read: that head's deadline
            # and byte count are over. Bytes of a pipelined next request that arrive
            # while this one is handled are bounded by the parser's limits and, once
            # the response is sent, by the keep-alive timeout.
            self._head_bytes = 0
            self._cancel_head_timer()
            error = queued_error(self)
            if (
                error is not None
                and not fail_open_body(self, error, refusal)
                and self._te_refused is None
            ):
                self._judge_refusal(error, data)
            return
        if not data or closing(self) or not awaiting_head(self):
            return  # body bytes, or a connection already being closed
        self._head_bytes += len(data)
        if self._head_bytes > self._head_budget:
            self._refuse(HEAD_TOO_LARGE_BODY, f"request head over {self._head_budget} bytes")
        elif self._head_timer is None:
            self._arm_head_timer()

    def _parse(self, data: bytes, at_head: bool) -> str | None:
        """Give the parser `data`, the read's bytes (`at_head`: a request head starts or
        goes on there); Go's error for a chunk-size line it refuses in them, if one is
        (`ChunkLines`)."""
        refusal = None
        while True:
            chunks = self._chunks
            if chunks is not None:
                data = chunks.feed(data)
                refusal = chunks.refusal
                end = chunks.message_end
                if not chunks.done or end is None or end == len(data):
                    if chunks.done:
                        self._chunks = None
                    super().data_received(data)
                    return refusal
                # The body's request ends in this read: what follows starts a request,
                # whose own chunked body may follow.
                self._chunks = None
                super().data_received(data[:end])
                self._request_starts()
                data = data[end:]
                if queued_error(self) is not None:
                    return refusal
                at_head = True
            # Only a read that a head is awaited for can end one: body reads (an
            # upload's gigabytes) are not searched. The head's `Proxy-Connection`
            # lines are taken out (`HeadReads`).
            heads = self._heads
            if at_head:
                continued = heads.continued
                data, end = heads.feed(data)
            else:
                heads.reset()
                continued, end = False, 0
            # (`find`, not `in`: see `relay.ClientLeg.on_body`.)
            if not (end and (continued or data[:end].lower().find(b"chunked") >= 0)):
                if data:
                    super().data_received(data)
                return refusal
            # The end of a head with chunked framing, or of one that began in an
            # earlier read (its coding may have come there): the head goes to the
            # parser alone, as Go reads a head before any of its body. A body that
            # breaks in this read then fails that request's read of it (Ollama's 400),
            # rather than failing the whole read, head and all, as one unparsable
            # request. (A length-framed body cannot break.) A head refused is the
            # read's error: nothing after it is read. A chunked body whose head the
            # parser read alone has its size lines read as Go reads them, from its
            # first byte on, however the head came.
            count = request_count(self)
            head = data[:end]
            if head.find(b"\t") >= 0:
                # Go's textproto drops the tabs after a field's value; llhttp refuses
                # `chunked` followed by one.
                head = _CHUNKED_THEN_TAB.sub(rb"\1\r", head)
            super().data_received(head)
            data = data[end:]
            if queued_error(self) is not None:
                return refusal
            if chunked_body_unread(self, count):
                self._chunks = ChunkLines()
            elif data:
                super().data_received(data)
                return refusal
            if not data:
                return refusal

    def _judge_refusal(self, error: HttpProcessingError, data: bytes) -> None:
        """Note a parse error of this read that Go answers with its 501, while the
        read's bytes are at hand: the answer comes when aiohttp gets to the error
        (`handle_error`), after any request queued before it, and later reads may
        come first."""
        line = length_with_coding_line(error)
        if line is not None and length_with_coding(data, line) is not None:
            self._te_refused = error

    def _line_refused(self, data: bytes) -> bool:
        """Checks the request line of a head that starts (or whose line goes on) in
        `data`, before aiohttp's parser reads it; True when it was refused."""
        if self._line is None:
            # Only a connection's first request line: that one starts with the
            # connection's first bytes. Where a later one starts is the parser's to know
            # (the client may send it before aiohttp waits for it); aiohttp's parser
            # reads those lines alone.
            if closing(self) or request_count(self) != 0:
                return False
            if not data:
                return False
            if data[0] in _LINE_ENDS:
                # Go skips line ends before a request line only after a POST (its
                # conn.readRequest): a first line that is empty, or starts with a CR,
                # is no request line to it ("malformed HTTP request").
                self._refuse(_BAD_REQUEST_STATUS, "request line refused as Go refuses it (400)")
                return True
            self._line = bytearray()
        end = data.find(b"\n")
        if end < 0:
            self._line += data
            if len(self._line) > self._head_budget:
                self._line = None  # the head's byte budget answers this one
            return False
        line = (bytes(self._line) + data[:end]).removesuffix(b"\r")
        self._line = None
        if line.find(b" * ") >= 0:
            self._first_line = line  # the parser may refuse it: `_asterisk_line`
        status = go_request_line(line)
        if status is None:
            # llhttp reads a PRI line as the start of the HTTP/2 preface: it waits for
            # the preface's rest, then refuses it, and any other bytes at once. Go's
            # HTTP/1 server reads a PRI request as any other, the preface's own
            # (`PRI * HTTP/2.0`, then an empty head) too: Ollama's answer, now.
            return line.startswith(b"PRI ") and self._answer_unserved(line) is not None
        self._refuse(status, f"request line refused as Go refuses it ({status[:3].decode()})")
        return True

    def _arm_head_timer(self) -> None:
        if self._head_seconds > 0:
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_at(loop.time() + self._head_seconds, self._head_late)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if closing(self) or self.transport is None or not awaiting_head(self):
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
        if head_over_limits(exc):
            self._refuse(HEAD_TOO_LARGE_BODY, "a request line or header over the size limit")
            status = 431
        elif missing_host(exc):
            self._refuse(_NO_HOST_STATUS, "an HTTP/1.1 request without a Host header")
        elif duplicate_host(exc):
            # Go's readRequest refuses it with a plain error (src/net/http/request.go,
            # "too many Host headers"), which its server answers with its plain 400.
            self._refuse(_BAD_REQUEST_STATUS, "a request with more than one Host header")
        elif transfer_encoding_refused(exc) or exc is self._te_refused:
            self._refuse(_UNSUPPORTED_TE_STATUS, "a Transfer-Encoding other than chunked")
            status = 501
        elif (answered := self._unserved_method(exc)) is not None:
            status = answered
        else:
            # A later request line on the connection was only llhttp's to read: one it
            # refuses for a version Go's ParseHTTPVersion reads (as HTTP/3.0) is Go's 505.
            line = quoted_request_line(exc)
            refusal = _BAD_REQUEST_STATUS
            if line is not None and go_request_line(line) == _VERSION_STATUS:
                refusal, status = _VERSION_STATUS, 505
            self._refuse(refusal, f"malformed request ({type(exc).__name__})")
        # The answer is on the wire already: aiohttp must write nothing of its own.
        return RelayedResponse(status, keep_alive=False)

    def _unserved_method(self, exc: HttpProcessingError) -> int | None:
        """Ollama's answer, written, to a request whose method (or target of `*`) the
        parser refused and Go reads: its status, None when Go refuses the line too (or
        the error quotes less than the whole line)."""
        line = refused_method_line(exc)
        if line is None:
            line = self._asterisk_line(exc)
        return None if line is None else self._answer_unserved(line)

    def _answer_unserved(self, line: bytes) -> int | None:
        """Ollama's answer, written, to the request `line` for a method it serves on no
        route: its status, None when Go refuses the line."""
        if go_request_line(line) is not None:
            return None
        method, _, rest = line.partition(b" ")
        target, _, proto = rest.partition(b" ")
        answer = unserved_method(method.decode("latin-1"), target)
        if answer is None:
            return None
        http11 = proto != b"HTTP/1.0"
        # The method is not logged: it is the client's bytes.
        self._refuse(
            b"%d" % answer.status,
            f"a method Ollama serves on no route ({answer.status})",
            lambda named: _written(answer, http11, named),
        )
        return answer.status

    def _asterisk_line(self, exc: HttpProcessingError) -> bytes | None:
        """The request line of a head the parser refused for its target of `*`, which
        Go's mux answers whatever the method: the connection's first line when the head
        was its first, else a line Go answers alike (the version aside, which the
        refusal does not tell); None for any other refusal."""
        if not refused_asterisk(exc):
            return None
        first = self._first_line if request_count(self) == 1 else None
        return first if first is not None else b"GET * HTTP/1.1"

    def refuse_version(self, request: BaseRequest) -> web.StreamResponse:
        """Go's refusal for a later request on this connection whose version aiohttp's
        parser took and Go's refuses (its line was not checked as a first line is).
        Without the line, a missing version (aiohttp's HTTP/0.9) reads as Go's 400."""
        major, minor = request.version
        status = _BAD_REQUEST_STATUS if (major, minor) == (0, 9) else _VERSION_STATUS
        self._refuse(status, f"request line refused as Go refuses it ({status[:3].decode()})")
        # The answer is on the wire already: aiohttp must write nothing of its own.
        return RelayedResponse(int(status[:3]), keep_alive=False)

    def refuse_parsed(self, request: BaseRequest) -> web.StreamResponse | None:
        """Go's refusal, written, of a head aiohttp's parser took and Go's refuses
        (`parsed_head_refusal`); None for a head Go reads too."""
        status = parsed_head_refusal(request)
        if status is None:
            return None
        self._refuse(status, f"a head Go refuses ({status[:3].decode()})")
        # The answer is on the wire already: aiohttp must write nothing of its own.
        return RelayedResponse(int(status[:3]), keep_alive=False)

    def _refuse(
        self,
        status: bytes,
        reason: str,
        write: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """Answer with Go's raw refusal for `status` (or what `write` makes of the
        request id) and close the connection as Go does."""
        transport = self.transport
        if transport is None or closing(self):
            return
        # No request was made of these bytes, so no id from the server: a random one,
        # in the log line too, for the client to quote.
        request_id = os.urandom(ID_BYTES).hex() if self._request_ids else ""
        raw_id = request_id.encode()
        answer = go_error(status, raw_id) if write is None else write(raw_id)
        named = f" ({request_id})" if request_id else ""
        log.warning("refused a request from %s%s: %s", self._peer(), named, reason)
        # aiohttp drops every further byte and never reuses (nor closes) the connection.
        stop_serving(self)
        self._cancel_head_timer()
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


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


def raise_open_files_limit() -> None:
    """The soft limit on open files raised to the hard one, as every Go program
    (Ollama) does at start: each client connection and each upstream one is a file,
    and at a soft limit of 1024 (systemd's default for a service) one client holding
    a thousand idle connections would leave none for anyone else, where Ollama serves
    on. Where the system refuses (macOS caps an unlimited hard limit) or has no such
    limit (Windows), the limit stays as it is."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        log.debug("open files: the soft limit stays at %d", soft)


def runner(
    app: web.Application, config: Config, request_ids: bool = True, **overrides: Any
) -> web.AppRunner:
    """The proxy's runner: its client timeouts, its header limits (`overrides` replace
    any of aiohttp's runner options, e.g. a shorter `shutdown_timeout` in tests);
    `request_ids`: the refusals written before any handler carry an `X-Request-Id`."""
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
        # Go's net/http never decodes a request body's Content-Encoding: Ollama reads
        # the bytes as sent. aiohttp would inflate them (and fail on a body that is not
        # what its header says, with an unhandled error).
        "auto_decompress": False,
        # An answer given before the body was read (a refusal, a request still owed its
        # `100 Continue`) closes the connection after dropping what arrives for this
        # long, as Go's server closes after such an answer (closeWriteAndWait); aiohttp
        # would wait ten seconds for a body the client may never send.
        "lingering_time": LINGER_SECONDS,
    }
    options.update(overrides)
    connection = functools.partial(
        ClientConnection,
        head_seconds=config.timeouts.client_header_seconds,
        head_budget=head + REQUEST_LINE_SLACK,
        request_ids=request_ids,
    )
    return HandlerRunner(app, connection, **options)


def ollama_runner(app: web.Application, **overrides: Any) -> web.AppRunner:
    """Client connections as Ollama's own server treats them, for the emulator: Go's
    default head limit (1 MiB plus the request-line slack) answered with Go's 431, no
    head deadline (Ollama sets no ReadHeaderTimeout), aiohttp's keep-alive."""
    ollama = Config(
        timeouts=Timeouts(client_header_seconds=0, client_idle_seconds=75.0),
        limits=Limits(max_header_bytes=GO_MAX_HEADER_BYTES),
    )
    return runner(app, ollama, request_ids=False, **overrides)

"""The HTTP/1.1 reader as a playbook: bytes in, events out. Every answer is fed in one
piece and split at every byte offset (in two pieces, and one byte at a time); the
events must say the same each time."""

from __future__ import annotations

import itertools

import pytest

from proxy.config_serving import Limits
from proxy.http11 import (
    MAX_HEAD_BYTES,
    Dechunker,
    End,
    Event,
    Head,
    ResponseHead,
    ResponseReader,
    dechunk,
    request_head,
)
from proxy.upstream_errors import ProtocolError

Summary = tuple[ResponseHead | None, bytes, bool | None]


def summary(events: list[Event]) -> Summary:
    """The head, the body bytes joined, and the end's `reusable` (None: not ended),
    checking the order the events came in: one head, then body, then one end."""
    head: ResponseHead | None = None
    body = bytearray()
    reusable: bool | None = None
    for event in events:
        assert reusable is None, f"{event} after the end"
        if isinstance(event, Head):
            assert head is None and not body
            head = event.head
        elif isinstance(event, bytes):
            assert head is not None and event
            body += event
        else:
            assert isinstance(event, End)
            assert head is not None
            reusable = event.reusable
    return head, bytes(body), reusable


def run(pieces: list[bytes], method: str = "POST", eof: bool = False) -> Summary:
    reader = ResponseReader(method)
    events: list[Event] = []
    for piece in pieces:
        events += reader.feed(piece)
    if eof and (end := reader.feed_eof()) is not None:
        events.append(end)
    return summary(events)


def splits(raw: bytes) -> list[list[bytes]]:
    """`raw` whole, cut in two at every offset, and one byte at a time."""
    return [
        [raw],
        *([raw[:i], raw[i:]] for i in range(1, len(raw))),
        [raw[i : i + 1] for i in range(len(raw))],
    ]


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


NDJSON_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)
CHUNKED_BODY = chunked([b'{"response":"a"}\n', b'{"done":true}\n'])
WITH_EXTENSIONS_AND_TRAILERS = b"5;name=value\r\nhello\r\n0\r\nX-Trailer: yes\r\n\r\n"
# As relayed: the trailers are dropped (Ollama sends none).
WITH_EXTENSIONS = b"5;name=value\r\nhello\r\n0\r\n\r\n"

# (what the backend sends, the method asked, status, body as relayed, reusable,
#  whether the close of the connection ends it)
ANSWERS = [
    (NDJSON_HEAD + CHUNKED_BODY, "POST", 200, CHUNKED_BODY, True, False),
    (
        NDJSON_HEAD + WITH_EXTENSIONS_AND_TRAILERS,
        "POST",
        200,
        WITH_EXTENSIONS,
        True,
        False,
    ),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "GET", 200, b"hello", True, False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "GET", 200, b"", True, False),
    (b"HTTP/1.1 204 No Content\r\n\r\n", "DELETE", 204, b"", True, False),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", "GET", 304, b"", True, False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", "HEAD", 200, b"", True, False),
    (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        + NDJSON_HEAD
        + CHUNKED_BODY,
        "POST",
        200,
        CHUNKED_BODY,
        True,
        False,
    ),
    (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        "GET",
        200,
        b"ok",
        False,
        False,
    ),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "GET", 200, b"ok", False, False),
    (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        "GET",
        200,
        b"ok",
        True,
        False,
    ),
    (b"HTTP/1.1 200 OK\r\n\r\nuntil the close", "GET", 200, b"until the close", False, True),
    # Both framings: chunked wins, and the connection is not trusted with another request.
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        + CHUNKED_BODY,
        "POST",
        200,
        CHUNKED_BODY,
        False,
        False,
    ),
    (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}",
        "POST",
        500,
        b"{}",
        True,
        False,
    ),
]


@pytest.mark.parametrize(("raw", "method", "status", "body", "reusable", "eof"), ANSWERS)
def test_every_cut_of_an_answer_reads_the_same(
    raw: bytes, method: str, status: int, body: bytes, reusable: bool, eof: bool
) -> None:
    results = [run(pieces, method, eof) for pieces in splits(raw)]
    head, relayed, ended = results[0]
    assert head is not None and head.status == status
    assert relayed == body and ended == reusable
    for other in results[1:]:
        assert other == results[0]


def test_an_answer_is_open_until_its_end_arrives() -> None:
    """What came of the body is relayed at once, but for a CR after the last chunk's
    line: it may begin a trailer line, which is not relayed, so it waits for its LF."""
    raw = NDJSON_HEAD + CHUNKED_BODY
    for cut in range(len(NDJSON_HEAD), len(raw)):
        head, body, ended = run([raw[:cut]])
        came = raw[len(NDJSON_HEAD) : cut]
        if came.endswith(b"\r\n0\r\n\r"):
            came = came[:-1]
        assert head is not None and body == came and ended is None


def test_the_close_cuts_short_an_answer_with_framing() -> None:
    reader = ResponseReader("POST")
    reader.feed(NDJSON_HEAD + b"10\r\nhalf")
    assert reader.feed_eof() is None and not reader.ended


@pytest.mark.parametrize("started", [b"", b"HTTP/1.1 2"])
def test_started_says_whether_any_byte_came(started: bytes) -> None:
    reader = ResponseReader("GET")
    reader.feed(started)
    assert reader.started == bool(started)


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
        (NDJSON_HEAD + CHUNKED_BODY, CHUNKED_BODY),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    ],
)
def test_bytes_after_the_end_are_not_body_and_forbid_reuse(raw: bytes, body: bytes) -> None:
    stray = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"
    reader = ResponseReader("GET")
    assert summary(reader.feed(raw + stray))[1:] == (body, False)
    assert reader.ended and reader.feed(b"more") == []


@pytest.mark.parametrize(
    "trailers",
    [
        b"X-Trailer: yes\r\n\r\n",
        b"no colon\r\nX-\x01: \x00\r\n" + b"X-Long: " + b"a" * 5000 + b"\r\n\r\n",
        b"X-Trailer: yes\n\n",
        b"\n",
    ],
    ids=["a field", "garbage", "bare LF", "bare LF alone"],
)
def test_the_last_chunk_reaches_the_client_without_trailers(trailers: bytes) -> None:
    """Whatever follows the last chunk's line up to the empty line that ends the answer
    (trailer fields, garbage a client refuses the answer for, a bare LF) is not relayed:
    the body ends in CRLF there, as Ollama's always does (it sends no trailers), and
    the connection is reused. How the bytes are cut does not change what is relayed."""
    body = b"5\r\nhello\r\n0\r\n"
    for pieces in splits(NDJSON_HEAD + body + trailers):
        head, relayed, reusable = run(pieces)
        assert head is not None and (relayed, reusable) == (body + b"\r\n", True)


def test_a_trailer_section_without_end_is_a_protocol_error() -> None:
    """Trailers are dropped as they come, not held; a section that never ends (each of
    its lines short) is refused, as Go's transport refuses one past its read buffer."""
    reader = ResponseReader("POST")
    reader.feed(NDJSON_HEAD + b"5\r\nhello\r\n0\r\n")
    with pytest.raises(ProtocolError, match="trailer"):
        for _ in range(MAX_HEAD_BYTES):
            reader.feed(b"X-Trailer: yes\r\n")


def test_chunk_boundaries_are_known() -> None:
    reader = ResponseReader("POST")
    reader.feed(NDJSON_HEAD)
    assert reader.at_chunk_boundary()
    reader.feed(b"5\r\nhel")
    assert not reader.at_chunk_boundary()
    reader.feed(b"lo\r\n")
    assert reader.at_chunk_boundary()
    reader.feed(b"0\r\n")
    assert not reader.at_chunk_boundary()  # in the trailers: no chunk fits any more
    reader.feed(b"\r\n")
    assert reader.ended and not reader.at_chunk_boundary()


def test_a_stream_read_a_chunk_at_a_time_reads_as_it_does_whole() -> None:
    """Reads that are each one whole chunk (as a stream's are), whose size lines were
    read before or not, and reads that hold a chunk and a byte more or a byte less:
    the same answer as in one read, and a chunk boundary after each whole chunk."""
    lines = [b'{"response":"a"}\n', b'{"response":"bc"}\n', b'{"done":true}\n' * 9]
    body = chunked(lines)
    framed = [chunked([line])[: -len(b"0\r\n\r\n")] for line in lines]
    whole = run([NDJSON_HEAD + body])
    for _ in range(2):  # the second time, every size line is one read before
        reader = ResponseReader("POST")
        events = reader.feed(NDJSON_HEAD)
        for piece in framed:
            events += reader.feed(piece)
            assert reader.at_chunk_boundary() and not reader.ended
        events += reader.feed(b"0\r\n\r\n")
        assert summary(events) == whole
    stream = b"".join(framed) + b"0\r\n\r\n"
    ends = list(itertools.accumulate(len(piece) for piece in framed))
    for shift in (1, -1):
        marks = [0, *(end + shift for end in ends), len(stream)]
        pieces = [stream[a:b] for a, b in itertools.pairwise(marks)]
        assert run([NDJSON_HEAD, *pieces]) == whole


def test_a_length_framed_body_has_no_chunk_boundary() -> None:
    reader = ResponseReader("GET")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    assert not reader.at_chunk_boundary()


def test_interim_heads_alone_are_no_answer() -> None:
    for pieces in splits(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"):
        assert run(pieces) == (None, b"", None)


BAD = [
    pytest.param(b"HTTP/2 200 OK\r\n\r\n", id="not HTTP/1"),
    pytest.param(b"HTTP/1.1 abc OK\r\n\r\n", id="status not a number"),
    pytest.param(b"HTTP/1.1 2000 OK\r\n\r\n", id="status of four digits"),
    pytest.param(b"\x00\x01garbage\r\n\r\n", id="garbage"),
    pytest.param(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", id="header without colon"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX A: b\r\n\r\n", id="header name with a space"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-\x00: b\r\n\r\n", id="header name with a NUL"),
    pytest.param(b"HTTP/1.1 200 OK\r\n: b\r\n\r\n", id="header without a name"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", id="negative length"),
    # Latin-1 superscripts are digits to Python's isdigit, not to int(): no number.
    pytest.param(b"HTTP/1.1 2\xb20 OK\r\n\r\n", id="status with a superscript digit"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: \xb9\r\n\r\n", id="superscript length"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        id="two different lengths",
    ),
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", id="101 unasked"),
    # Go's transport takes one Transfer-Encoding field, `chunked`, and no other coding.
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"
        b"Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        id="two transfer encodings",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nok",
        id="transfer encoding gzip",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        id="transfer encoding gzip, chunked",
    ),
    pytest.param(NDJSON_HEAD + b"zz\r\nhello\r\n0\r\n\r\n", id="chunk size not hex"),
    pytest.param(NDJSON_HEAD + b"-5\r\nhello\r\n0\r\n\r\n", id="negative chunk size"),
    pytest.param(NDJSON_HEAD + b"0x5\r\nhello\r\n0\r\n\r\n", id="chunk size with 0x"),
    pytest.param(NDJSON_HEAD + b"\r\nhello\r\n0\r\n\r\n", id="empty chunk size"),
    pytest.param(NDJSON_HEAD + b"1" * 17 + b"\r\n", id="chunk size too large"),
]


@pytest.mark.parametrize("raw", BAD)
def test_what_is_not_http_is_a_protocol_error_wherever_it_is_cut(raw: bytes) -> None:
    for pieces in splits(raw):
        with pytest.raises(ProtocolError):
            run(pieces)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (NDJSON_HEAD + b"zz\r\nhello\r\n0\r\n\r\n", 'malformed chunk size "zz"'),
        (NDJSON_HEAD + b"z\x00\x1b[2J\xff;x\r\n", 'malformed chunk size "z  [2J\ufffd;x"'),
        (NDJSON_HEAD + b"g" * 100 + b"\r\n", f'malformed chunk size "{"g" * 40}"'),
        (b"HTTP/2 200 OK\r\n\r\n", 'malformed status line "HTTP/2 200 OK"'),
        (b"HTTP/1.1 200 OK\r\nno colon\x07\r\n\r\n", 'malformed header line "no colon"'),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", 'malformed Content-Length "-1"'),
        (b"HTTP/1.1 200 OK\r\nX-A: a\r\n\tb\r\n\r\n", 'obsolete line folding "b"'),
        (b"HTTP/1.1 200 OK\r\n a: b\r\n\r\n", 'malformed header line "a: b"'),
    ],
    ids=[
        "chunk size",
        "chunk size with controls",
        "long chunk size",
        "status",
        "header",
        "length",
        "folded line",
        "space before the first field",
    ],
)
def test_a_protocol_error_quotes_what_came_as_text_a_person_reads(raw: bytes, message: str) -> None:
    """The error ends as a mid-stream error line (JSON) and a log line: what the backend
    sent is quoted as text, bounded, no control character in it, no Python literal
    (`b'zz\\r'`), the same wherever the bytes were cut."""
    for pieces in splits(raw):
        with pytest.raises(ProtocolError) as error:
            run(pieces)
        assert str(error.value) == message


@pytest.mark.parametrize(
    ("raw", "unquoted"),
    [
        (b"garbage\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", ""),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", ""),
    ],
)
def test_an_answer_without_a_status_line_has_an_error_that_quotes_nothing(
    raw: bytes, unquoted: str
) -> None:
    """Bytes without a status line may be no answer's head at all (the end of an earlier
    answer on a reused connection): their error comes without them too. A status line
    starts a head: an error after it is the head's."""
    with pytest.raises(ProtocolError) as error:
        run([raw])
    assert error.value.unquoted == unquoted


def test_an_oversized_head_is_a_protocol_error() -> None:
    reader = ResponseReader("GET")
    reader.feed(b"HTTP/1.1 200 OK\r\n")
    filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    with pytest.raises(ProtocolError, match="too large"):
        for _ in range(MAX_HEAD_BYTES // len(filler) + 2):
            reader.feed(filler)


def test_a_head_just_under_the_limit_is_read() -> None:
    filler = b"X-Filler: " + b"a" * (MAX_HEAD_BYTES - 100) + b"\r\n"
    raw = b"HTTP/1.1 200 OK\r\n" + filler + b"Content-Length: 0\r\n\r\n"
    head, _body, reusable = run([raw[:5000], raw[5000:]])
    assert head is not None and head.status == 200 and reusable


def test_a_head_echoing_the_longest_origin_a_client_may_send_is_read_however_cut() -> None:
    """Ollama echoes an allowed `Origin` in `Access-Control-Allow-Origin`, and the
    proxy forwards a client's head of up to `limits.max_header_bytes`: the answer's
    head is then that much longer than the client's header. It is read however the
    network cuts it (a refusal would fail a healthy backend on a client's word), and
    so is one echoing the longest head Ollama's own server takes (Go's 1 MiB)."""
    for room in (Limits().max_header_bytes, (1 << 20) + 4096):
        origin = b"http://localhost:" + b"1" * (room - 100)
        raw = (
            b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: " + origin + b"\r\n"
            b"Content-Type: application/json; charset=utf-8\r\nVary: Origin\r\n"
            b"Date: Sat, 05 Dec 2026 05:00:00 GMT\r\nContent-Length: 2\r\n\r\n{}"
        )
        for size in (1460, 16384, len(raw)):  # a network's segments, reads, all at once
            pieces = [raw[at : at + size] for at in range(0, len(raw), size)]
            head, body, reusable = run(pieces, "GET")
            assert head is not None and head.status == 200
            assert (body, reusable) == (b"{}", True)


def test_the_head_keeps_headers_as_sent() -> None:
    head, _, _ = run([NDJSON_HEAD + CHUNKED_BODY])
    assert head is not None
    assert head.reason == "OK" and head.chunked and head.content_length is None
    assert head.headers == [
        ("Content-Type", "application/x-ndjson"),
        ("Transfer-Encoding", "chunked"),
    ]


def test_a_field_is_read_as_rfc_9112_has_a_proxy_read_it() -> None:
    """A bare LF ends a field line as CRLF does (RFC 9112, 2.2, as Go's transport reads
    one), so no field hides in another's value; CR and NUL in a value, which no client
    may be sent, become spaces (RFC 9110, 5.5); whitespace before the colon goes (RFC
    9112, 5.1)."""
    raw = (
        b"HTTP/1.1 200 OK\r\nX-A: a\nX-Request-Id: b\r\nX-C: c\rd\x00e\r\nX-D : f\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    for pieces in splits(raw):
        head, body, reusable = run(pieces)
        assert head is not None and (body, reusable) == (b"ok", True)
        assert head.headers == [
            ("X-A", "a"),
            ("X-Request-Id", "b"),
            ("X-C", "c d e"),
            ("X-D", "f"),
            ("Content-Length", "2"),
        ]


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 6\n\nab\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\nab\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\n\r\nab\r\n\r\n",
        b"HTTP/1.1 100 Continue\n\nHTTP/1.1 200 OK\nContent-Length: 6\n\nab\r\n\r\n",
    ],
    ids=["LF LF", "CRLF LF", "LF CRLF", "after an interim head"],
)
def test_a_head_ends_at_its_first_empty_line_however_its_lines_end(raw: bytes) -> None:
    """A bare LF ends a line as CRLF does (RFC 9112, 2.2), the head's last, empty line
    too, as Go's transport reads a head: the answer is read when its head came, not
    when the backend closes or the idle timeout runs out, and a CRLF CRLF in its body
    is body."""
    for pieces in splits(raw):
        head, body, reusable = run(pieces)
        assert head is not None and head.status == 200
        assert head.headers == [("Content-Length", "6")]
        assert (body, reusable) == (b"ab\r\n\r\n", True)


def test_dechunk_removes_the_framing() -> None:
    assert dechunk(CHUNKED_BODY) == b'{"response":"a"}\n{"done":true}\n'
    assert dechunk(WITH_EXTENSIONS_AND_TRAILERS) == dechunk(WITH_EXTENSIONS) == b"hello"
    with pytest.raises(ProtocolError):
        dechunk(b"zz\r\nhello\r\n0\r\n\r\n")


def test_request_heads() -> None:
    assert (
        request_head(b"GET", b"/api/tags", b"h:1") == b"GET /api/tags HTTP/1.1\r\nHost: h:1\r\n\r\n"
    )
    assert request_head(
        b"POST", b"/api/show", b"h:1", [(b"Content-Type", b"application/json")], length=2
    ) == (
        b"POST /api/show HTTP/1.1\r\nHost: h:1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    )
    assert request_head(b"POST", b"/api/blobs/x", b"h:1", [(b"A", b"b")], chunked=True) == (
        b"POST /api/blobs/x HTTP/1.1\r\nHost: h:1\r\nA: b\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def test_a_chunked_body_loses_its_framing_however_it_is_split() -> None:
    """What an HTTP/1.0 client is sent of a chunked answer: the data alone, up to the
    last chunk (its trailers are not the client's)."""
    raw = b'5;ext=1\r\nhello\r\n1a\r\n{"response":"0123456789"}\n\r\n0\r\nX-Trailer: y\r\n\r\n'
    for pieces in splits(raw):
        dechunker = Dechunker()
        assert b"".join(dechunker.feed(p) for p in pieces) == b'hello{"response":"0123456789"}\n'

"""The upstream connection over a fake transport: answers fed in pieces cut at
arbitrary places reach the sink whole, the connection goes back to the pool only when
it may, and failures reach the sink as their own error types."""

from __future__ import annotations

import asyncio
import gc
import itertools
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import upstream
from proxy.http11 import ResponseHead, dechunk
from proxy.upstream import Answer, BufferedAnswer, ConnectionPool, UpstreamConnection
from proxy.upstream_errors import (
    ConnectionLost,
    IdleTimeout,
    ProtocolError,
    StaleConnection,
    UpstreamError,
)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(marks) if b > a]


class Recorder(Answer):
    """A sink that keeps what it was given; `fail_with` makes its `on_body` raise."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        super().__init__()
        self.forwarded = bytearray()
        self.fail_with = fail_with
        self.events: list[str] = []

    def on_head(self, head: ResponseHead, body_follows: bool) -> None:
        self.events.append("head")
        super().on_head(head, body_follows)

    def on_body(self, data: bytes) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.forwarded += data

    def on_end(self) -> None:
        self.events.append("end")
        super().on_end()

    def on_error(self, exc: Exception) -> None:
        self.events.append("error")
        super().on_error(exc)


def started(
    method: str = "POST", idle_timeout: float = 60.0, sink: Recorder | None = None
) -> tuple[UpstreamConnection, FakeTransport, Recorder]:
    """A connection with one exchange sent (called inside a running loop)."""
    pool = ConnectionPool("127.0.0.1", 1, 1.0)
    conn = UpstreamConnection(pool)
    transport = FakeTransport()
    conn.connection_made(transport)
    sink = sink or Recorder()
    sink.bind(conn)
    conn.send(method, b"POST / HTTP/1.1\r\n\r\n", b"", idle_timeout, sink)
    return conn, transport, sink


async def exchange(
    pieces: list[bytes], method: str = "POST"
) -> tuple[UpstreamConnection, Recorder]:
    conn, _transport, sink = started(method)
    for piece in pieces:
        conn.data_received(piece)
    await asyncio.sleep(0)
    return conn, sink


def finished(sink: Recorder) -> bool:
    return sink.ended.done() and sink.ended.exception() is None


def error_of(sink: Recorder) -> BaseException | None:
    assert sink.ended.done()
    return sink.ended.exception()


HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.binary(min_size=1, max_size=40), min_size=0, max_size=12),
    points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)
def test_chunked_body_is_forwarded_verbatim_and_its_end_found(
    parts: list[bytes], points: list[int]
) -> None:
    body = chunked(parts)
    conn, sink = asyncio.run(exchange(cut(HEAD + body, points)))
    assert bytes(sink.forwarded) == body
    assert finished(sink) and sink.events == ["head", "end"]
    assert dechunk(bytes(sink.forwarded)) == b"".join(parts)
    # Fully read and keep-alive, but its exchange's until the owner releases it; then
    # back in the pool for the next request.
    assert conn not in conn.pool._idle
    conn.release()
    assert conn in conn.pool._idle


@settings(max_examples=100, deadline=None)
@given(body=st.binary(min_size=0, max_size=200), points=st.lists(st.integers(0, 1000), max_size=6))
def test_content_length_body(body: bytes, points: list[int]) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    _conn, sink = asyncio.run(exchange(cut(head + body, points)))
    assert bytes(sink.forwarded) == body
    assert finished(sink)


def test_head_request_has_no_body_even_with_content_length() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n"
    _conn, sink = asyncio.run(exchange([raw], method="HEAD"))
    assert sink.forwarded == b""
    assert finished(sink)


def test_connection_close_is_not_reused() -> None:
    raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    conn, sink = asyncio.run(exchange([raw]))
    assert finished(sink) and sink.forwarded == b"ok"
    conn.release()
    assert conn not in conn.pool._idle
    assert conn.transport is None


def test_a_body_framed_by_the_close_ends_when_the_backend_closes() -> None:
    async def run() -> tuple[UpstreamConnection, Recorder, bool]:
        conn, _transport, sink = started()
        conn.data_received(b"HTTP/1.1 200 OK\r\n\r\nuntil ")
        conn.data_received(b"the end")
        await asyncio.sleep(0)
        open_ended = not sink.ended.done()
        conn.connection_lost(None)
        await asyncio.sleep(0)
        return conn, sink, open_ended

    conn, sink, open_ended = asyncio.run(run())
    assert open_ended and finished(sink) and sink.forwarded == b"until the end"
    conn.release()
    assert conn not in conn.pool._idle


def test_garbage_fails_the_exchange() -> None:
    async def run() -> BaseException | None:
        conn, _transport, sink = started()
        conn.data_received(b"\x00\x01garbage\r\n\r\n")
        await asyncio.sleep(0)
        assert sink.answered.done() and sink.head is None
        return error_of(sink)

    assert isinstance(asyncio.run(run()), ProtocolError)


def test_backend_closing_mid_chunk_fails_the_stream() -> None:
    async def run() -> BaseException | None:
        conn, _transport, sink = started()
        conn.data_received(HEAD + b"10\r\nhalf")
        conn.connection_lost(None)
        await asyncio.sleep(0)
        assert sink.head is not None and sink.forwarded == b"10\r\nhalf"
        return error_of(sink)

    error = asyncio.run(run())
    assert isinstance(error, ConnectionLost) and not isinstance(error, StaleConnection)


@pytest.mark.parametrize("reused", [False, True])
def test_a_close_before_any_byte_is_stale_only_on_a_reused_connection(reused: bool) -> None:
    async def run() -> BaseException | None:
        conn, _transport, sink = started()
        conn.reused = reused
        conn.connection_lost(None)
        await asyncio.sleep(0)
        return error_of(sink)

    error = asyncio.run(run())
    assert isinstance(error, ConnectionLost)
    assert isinstance(error, StaleConnection) == reused


def test_silent_backend_fails_after_the_idle_timeout_not_before() -> None:
    async def run() -> tuple[bool, BaseException | None]:
        conn, _transport, sink = started(idle_timeout=0.2)
        conn.data_received(HEAD + b"3\r\nabc\r\n")
        for _ in range(4):  # keeps talking: more than the timeout in all, never silent that long
            await asyncio.sleep(0.1)
            conn.data_received(b"1\r\nx\r\n")
        alive = not sink.ended.done()
        await asyncio.wait_for(asyncio.wait((sink.ended,)), 5)
        return alive, sink.ended.exception()

    alive, error = asyncio.run(run())
    assert alive
    assert isinstance(error, IdleTimeout) and "no data from backend" in str(error)


INTERIM = st.sampled_from(
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
    ]
)


@settings(max_examples=100, deadline=None)
@given(
    interim=st.lists(INTERIM, min_size=1, max_size=3),
    parts=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)
def test_interim_heads_are_skipped_and_the_final_answer_relayed(
    interim: list[bytes], parts: list[bytes], points: list[int]
) -> None:
    body = chunked(parts)
    conn, sink = asyncio.run(exchange(cut(b"".join(interim) + HEAD + body, points)))
    assert sink.head is not None and sink.head.status == 200
    assert sink.events == ["head", "end"]
    assert bytes(sink.forwarded) == body
    assert finished(sink)
    conn.release()
    assert conn in conn.pool._idle


def test_interim_heads_alone_leave_the_exchange_waiting_and_the_connection_out_of_the_pool() -> (
    None
):
    async def run() -> tuple[UpstreamConnection, bool]:
        conn, _transport, sink = started()
        conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0)
        return conn, sink.answered.done()

    conn, answered = asyncio.run(run())
    assert not answered
    conn.release()  # the owner gives up before the answer: closed, never pooled
    assert conn not in conn.pool._idle and conn.transport is None


def test_switching_protocols_unasked_fails_the_exchange() -> None:
    async def run() -> BaseException | None:
        conn, _transport, sink = started("GET")
        conn.data_received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
        await asyncio.sleep(0)
        return error_of(sink)

    assert isinstance(asyncio.run(run()), ProtocolError)


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
        (HEAD + chunked([b"ok"]), chunked([b"ok"])),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    ],
)
@pytest.mark.parametrize("later", [False, True])
def test_bytes_after_the_end_of_an_answer_are_not_relayed_nor_the_connection_reused(
    raw: bytes, body: bytes, later: bool
) -> None:
    """Stray bytes in the same read as the end, or in a later one."""
    stray = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"
    conn, sink = asyncio.run(exchange([raw, stray] if later else [raw + stray]))
    assert finished(sink) and sink.forwarded == body
    conn.release()
    assert conn not in conn.pool._idle and conn.transport is None


def test_a_consumer_failure_fails_the_exchange_with_its_own_error() -> None:
    """An exception in the sink is the sink's, not a backend failure."""

    async def run() -> tuple[UpstreamConnection, FakeTransport, BaseException | None]:
        conn, transport, sink = started(sink=Recorder(fail_with=IndexError("consumer")))
        conn.data_received(HEAD)
        conn.data_received(b"3\r\nabc\r\n")
        await asyncio.sleep(0)
        return conn, transport, error_of(sink)

    conn, transport, error = asyncio.run(run())
    assert isinstance(error, IndexError)
    assert transport.closed and conn.transport is None


def test_a_connection_paused_for_a_slow_client_reads_again_once_back_in_the_pool() -> None:
    async def run() -> tuple[UpstreamConnection, FakeTransport]:
        conn, transport, sink = started()
        conn.data_received(HEAD)
        conn.pause_reading()  # the client is slow; the end was already on its way
        conn.data_received(chunked([b"last"]))
        await asyncio.sleep(0)
        assert finished(sink)
        conn.release()
        return conn, transport

    conn, transport = asyncio.run(run())
    assert conn in conn.pool._idle
    assert transport.reading


def test_a_closed_connection_tells_its_sink_nothing_more() -> None:
    """Once its owner closed it (a declined answer, a client that left), whatever
    happens on the connection is no longer the exchange's."""

    async def run() -> Recorder:
        conn, _transport, sink = started()
        conn.data_received(HEAD + b"3\r\nabc\r\n")
        conn.close()
        conn.connection_lost(None)
        await asyncio.sleep(0)
        return sink

    sink = asyncio.run(run())
    assert sink.events == ["head"] and not sink.ended.done()


@pytest.mark.parametrize("failure", ["over-the-bound", "connection-lost"])
def test_a_buffered_answer_that_fails_holds_none_of_its_body(
    failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A document the proxy reads itself fails past `MAX_DOCUMENT_BYTES` (or when the
    backend goes away); what had come of it is let go with the failure, not held
    until a cyclic collection by the error it raised (whose traceback reaches the
    answer): a backend failing such answers again and again must not pile them up."""
    monkeypatch.setattr(upstream, "MAX_DOCUMENT_BYTES", 4 << 20)
    piece = b"%x\r\n%b\r\n" % (1 << 16, b"a" * (1 << 16))

    async def run() -> int:
        conn, _transport, _ = started()
        answer = BufferedAnswer()
        answer.bind(conn)
        conn.send("GET", b"GET /api/tags HTTP/1.1\r\n\r\n", b"", 5.0, answer)
        conn.data_received(HEAD)
        for _ in range(80 if failure == "over-the-bound" else 32):  # 5 MB, or 2
            if conn.transport is None:
                break
            conn.data_received(bytes(bytearray(piece)))  # a new object each time
        if failure == "connection-lost":
            conn.connection_lost(None)
        with pytest.raises(UpstreamError):
            await answer.collect()
        held = tracemalloc.get_traced_memory()[0]
        del answer, conn
        return held

    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = asyncio.run(run())
    finally:
        tracemalloc.stop()
        gc.enable()
    assert held - before < 1 << 20

"""The upstream protocol's framing, fed byte streams cut at arbitrary places."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.upstream import ConnectionPool, UpstreamConnection, UpstreamError, dechunk


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


async def exchange(
    pieces: list[bytes], method: str = "POST"
) -> tuple[UpstreamConnection, bytes, bool]:
    pool = ConnectionPool("127.0.0.1", 1, 1.0)
    conn = UpstreamConnection(pool)
    transport = FakeTransport()
    conn.connection_made(transport)
    head = conn.send(method, b"POST / HTTP/1.1\r\n\r\n", b"", 60.0)
    forwarded = bytearray()
    done = None
    for piece in pieces:
        conn.data_received(piece)
        if done is None and head.done():
            done = conn.attach(forwarded.extend)
    await asyncio.sleep(0)
    finished = done is not None and done.done() and done.exception() is None
    return conn, bytes(forwarded), finished


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
    conn, forwarded, finished = asyncio.run(exchange(cut(HEAD + body, points)))
    assert forwarded == body
    assert finished
    assert dechunk(forwarded) == b"".join(parts)
    # Fully read and keep-alive, but its exchange's until the owner releases it; then
    # back in the pool for the next request.
    assert conn not in conn.pool._idle
    conn.release()
    assert conn in conn.pool._idle


@settings(max_examples=100, deadline=None)
@given(body=st.binary(min_size=0, max_size=200), points=st.lists(st.integers(0, 1000), max_size=6))
def test_content_length_body(body: bytes, points: list[int]) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    _conn, forwarded, finished = asyncio.run(exchange(cut(head + body, points)))
    assert forwarded == body
    assert finished


def test_head_request_has_no_body_even_with_content_length() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n"
    _conn, forwarded, finished = asyncio.run(exchange([raw], method="HEAD"))
    assert forwarded == b""
    assert finished


def test_connection_close_is_not_reused() -> None:
    raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    conn, forwarded, finished = asyncio.run(exchange([raw]))
    assert finished and forwarded == b"ok"
    conn.release()
    assert conn not in conn.pool._idle
    assert conn.transport is None


def test_garbage_fails_the_exchange() -> None:
    async def run() -> BaseException | None:
        pool = ConnectionPool("127.0.0.1", 1, 1.0)
        conn = UpstreamConnection(pool)
        conn.connection_made(FakeTransport())
        head = conn.send("POST", b"x", b"", 60.0)
        conn.data_received(b"\x00\x01garbage\r\n\r\n")
        await asyncio.sleep(0)
        return head.exception()

    assert isinstance(asyncio.run(run()), UpstreamError)


def test_backend_closing_mid_chunk_fails_the_stream() -> None:
    async def run() -> BaseException | None:
        pool = ConnectionPool("127.0.0.1", 1, 1.0)
        conn = UpstreamConnection(pool)
        conn.connection_made(FakeTransport())
        head = conn.send("POST", b"x", b"", 60.0)
        conn.data_received(HEAD + b"10\r\nhalf")
        done = conn.attach(lambda data: None)
        conn.connection_lost(None)
        await asyncio.sleep(0)
        assert head.done()
        return done.exception()

    assert isinstance(asyncio.run(run()), UpstreamError)


def test_silent_backend_fails_after_the_idle_timeout_not_before() -> None:
    async def run() -> tuple[bool, BaseException | None]:
        pool = ConnectionPool("127.0.0.1", 1, 1.0)
        conn = UpstreamConnection(pool)
        conn.connection_made(FakeTransport())
        head = conn.send("POST", b"x", b"", 0.2)
        conn.data_received(HEAD + b"3\r\nabc\r\n")
        done = conn.attach(lambda data: None)
        for _ in range(4):  # keeps talking: more than the timeout in all, never silent that long
            await asyncio.sleep(0.1)
            conn.data_received(b"1\r\nx\r\n")
        alive = not done.done()
        await asyncio.wait_for(asyncio.wait((done,)), 5)
        assert head.done()
        return alive, done.exception()

    alive, error = asyncio.run(run())
    assert alive
    assert isinstance(error, UpstreamError) and "no data from backend" in str(error)


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
    conn, forwarded, finished = asyncio.run(exchange(cut(b"".join(interim) + HEAD + body, points)))
    assert conn.head is not None and conn.head.status == 200
    assert forwarded == body
    assert finished
    conn.release()
    assert conn in conn.pool._idle


def test_interim_heads_alone_leave_the_exchange_waiting_and_the_connection_out_of_the_pool() -> (
    None
):
    async def run() -> tuple[UpstreamConnection, bool]:
        pool = ConnectionPool("127.0.0.1", 1, 1.0)
        conn = UpstreamConnection(pool)
        conn.connection_made(FakeTransport())
        head = conn.send("POST", b"x", b"", 60.0)
        conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0)
        return conn, head.done()

    conn, answered = asyncio.run(run())
    assert not answered
    conn.release()  # the owner gives up before the answer: closed, never pooled
    assert conn not in conn.pool._idle and conn.transport is None


def test_switching_protocols_unasked_fails_the_exchange() -> None:
    async def run() -> BaseException | None:
        pool = ConnectionPool("127.0.0.1", 1, 1.0)
        conn = UpstreamConnection(pool)
        conn.connection_made(FakeTransport())
        head = conn.send("GET", b"x", b"", 60.0)
        conn.data_received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
        await asyncio.sleep(0)
        return head.exception()

    assert isinstance(asyncio.run(run()), UpstreamError)


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
        (HEAD + chunked([b"ok"]), chunked([b"ok"])),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    ],
)
def test_bytes_after_the_end_of_an_answer_are_not_relayed_nor_the_connection_reused(
    raw: bytes, body: bytes
) -> None:
    stray = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"
    conn, forwarded, finished = asyncio.run(exchange([raw + stray]))
    assert finished and forwarded == body
    conn.release()
    assert conn not in conn.pool._idle and conn.transport is None


def test_a_consumer_failure_fails_the_exchange_with_its_own_error() -> None:
    """An exception in the relay's callback is the relay's, not a backend failure."""

    async def run() -> BaseException | None:
        pool = ConnectionPool("127.0.0.1", 1, 1.0)
        conn = UpstreamConnection(pool)
        conn.connection_made(FakeTransport())
        conn.send("POST", b"x", b"", 60.0)
        conn.data_received(HEAD)
        done = conn.attach(lambda data: [][0])
        conn.data_received(b"3\r\nabc\r\n")
        await asyncio.sleep(0)
        return done.exception()

    error = asyncio.run(run())
    assert isinstance(error, IndexError) and not isinstance(error, UpstreamError)


def test_a_connection_paused_for_a_slow_client_reads_again_once_back_in_the_pool() -> None:
    async def run() -> tuple[UpstreamConnection, FakeTransport]:
        pool = ConnectionPool("127.0.0.1", 1, 1.0)
        conn = UpstreamConnection(pool)
        transport = FakeTransport()
        conn.connection_made(transport)
        conn.send("POST", b"x", b"", 60.0)
        conn.data_received(HEAD)
        done = conn.attach(lambda data: None)
        conn.pause_reading()  # the client is slow; the end was already on its way
        conn.data_received(chunked([b"last"]))
        await asyncio.sleep(0)
        assert done.done() and done.exception() is None
        conn.release()
        return conn, transport

    conn, transport = asyncio.run(run())
    assert conn in conn.pool._idle
    assert transport.reading

"""The upstream leg: HTTP/1.1 to a backend over pooled keep-alive connections.

Why not aiohttp's client: it wakes a coroutine for every chunk (parser callback →
future → task step → re-framing on write), about 26 µs a chunk here. This protocol
feeds what it reads to an `http11.ResponseReader` in `data_received` and hands the
events to the exchange's sink from that same callback: the relay's sink writes the
raw bytes, framing and all, to the client's transport. No queue, no task switch, no
re-framing. The connection is the I/O only: parsing is `http11`'s, what the answer
means is the sink's.
"""

from __future__ import annotations

import asyncio
import errno
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from proxy.http11 import End, Event, Head, ResponseHead, ResponseReader, dechunk
from proxy.upstream_errors import (
    ConnectFailed,
    ConnectionLost,
    ConnectTimedOut,
    IdleTimeout,
    ProtocolError,
    ProxyExhausted,
    StaleConnection,
)
from proxy.upstream_errors import UpstreamError as UpstreamError

# A connect that fails for want of the proxy's own resources: its open files (the
# process's, the system's), its local ports, kernel memory for the socket.
_EXHAUSTED = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.EADDRNOTAVAIL, errno.ENOBUFS, errno.ENOMEM}
)


class Sink(Protocol):
    """Where an `UpstreamConnection` delivers one answer, from its I/O callbacks:
    `on_head` once, then `on_body` for each piece of body (framing included), then
    either `on_end` or `on_error`. A sink that raises ends the exchange with its error
    (given back to it through `on_error`)."""

    def on_head(self, head: ResponseHead, body_follows: bool) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_end(self) -> None: ...

    def on_error(self, exc: Exception) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection. It belongs to one exchange at a time: from
    `ConnectionPool.acquire` until its owner calls `release` (or `close`), however early
    the response ended, so that nothing of the next exchange can touch it before."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self.last_read = 0.0
        self._write_paused = False
        self._reset()

    def _reset(self) -> None:
        self._reader: ResponseReader | None = None
        self._sink: Sink | None = None
        self._ended = False
        self._reusable = False
        self._request_whole = True
        self._drain_waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._idle_timeout = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        reader = self._reader
        if self._sink is None or reader is None or reader.ended:
            self._fail_drain(ConnectionLost("connection closed"))
            return
        end = reader.feed_eof()
        if end is not None:
            self._deliver(self._sink, [end])
            return
        why = f"connection closed by backend{f': {exc}' if exc else ''}"
        self._fail(
            StaleConnection(why) if self.reused and not reader.started else ConnectionLost(why)
        )

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        self._drain_waiter = None

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        reader = self._reader
        sink = self._sink
        if sink is None or reader is None:
            self.close()  # bytes on an idle connection: see below
            return
        try:
            events = reader.feed(data)
        except ProtocolError as exc:
            self._fail(exc if reader.head is not None else self._head_error(exc))
            return
        if len(events) == 1 and events[0] is data:
            # Body bytes only, the answer going on: a stream's chunk, the common case.
            try:
                sink.on_body(data)
            except Exception as exc:
                self._fail(exc)  # as in `_deliver`
        elif events:
            self._deliver(sink, events)
        elif reader.ended:
            # Bytes no exchange asked for (after the end of a response): the
            # connection's framing can no longer be trusted, so it is never reused.
            self.close()

    def _head_error(self, exc: ProtocolError) -> ProtocolError:
        """The error of a head the reader refused, with whether the connection carried
        answers before: only then may its bytes be another answer's."""
        if not self.reused:
            return ProtocolError(f"{exc} on a new connection")
        if exc.unquoted:
            # No status line, on a connection that carried others: the bytes may be the
            # end of an earlier answer that ran past its framing, another client's, so
            # the error does not quote them. A status line starts this answer's head.
            return ProtocolError(
                f"{exc.unquoted} on a reused connection"
                " (not quoted: it may be the end of an earlier answer)"
            )
        return ProtocolError(f"{exc} on a reused connection")

    def _deliver(self, sink: Sink, events: list[Event]) -> None:
        try:
            for event in events:
                if type(event) is bytes:
                    sink.on_body(event)
                elif type(event) is Head:
                    # A head is its read's first event; body bytes with it, the next.
                    body_follows = len(events) > 1 and type(events[1]) is bytes
                    self._fail_drain(None)  # answered: an upload waiting to send more stops
                    sink.on_head(event.head, body_follows)
                elif type(event) is End:
                    self._ended = True
                    self._reusable = event.reusable
                    self._stop_watchdog()
                    sink.on_end()
        except Exception as exc:
            # The consumer failed, not the backend: the exchange ends with its error.
            self._fail(exc)

    # Exchange lifecycle

    def send(
        self, method: str, head: bytes, body: bytes, idle_timeout: float | None, sink: Sink
    ) -> None:
        """Start an exchange whose answer goes to `sink`. The backend may stay silent
        for at most `idle_timeout` seconds at a time (waiting for the head or between
        chunks; while a streamed body goes up, since it last took a piece of it), for
        any time with None; there is no bound on the whole exchange, since loading a
        model or a long answer is legitimate."""
        assert self.transport is not None
        self._reader = ResponseReader(method)
        self._sink = sink
        self.last_read = self.loop.time()
        if idle_timeout is not None:
            self._idle_timeout = idle_timeout
            self._watchdog = self.loop.call_at(self.last_read + idle_timeout, self._check_idle)
        self.transport.write(head + body if body else head)

    def release(self) -> None:
        """The owner is done with this exchange: the connection goes back to the pool
        if its response was read to its end and it may be kept alive, else it is
        closed. The owner must not touch it afterwards."""
        if self._ended and self._reusable and self._request_whole:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                if self._read_paused:  # paused for its last client, not for the next
                    self.resume_reading()
                self._reset()
                self.pool.put_back(self)
                return
        self.close()

    def _fail(self, exc: Exception) -> None:
        sink = self._sink
        self._fail_drain(exc)
        self.close()
        if sink is not None:
            sink.on_error(exc)

    def _fail_drain(self, exc: Exception | None) -> None:
        """Wake an upload waiting for the backend to read more: with `exc`, or to see
        that the answer came."""
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            if exc is None:
                drain.set_result(None)
            else:
                drain.set_exception(exc)

    def close(self) -> None:
        """Abort the connection: the backend sees the client leave and stops generating.
        The sink hears nothing more."""
        self._sink = None
        self._stop_watchdog()
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self.pool.forget(self)

    def _check_idle(self) -> None:
        # One timer per exchange, re-armed lazily: cheaper than one per chunk.
        self._watchdog = None
        now = self.loop.time()
        if self._read_paused:
            self.last_read = now  # silent because we paused it for a slow client
        deadline = self.last_read + self._idle_timeout
        if now >= deadline:
            self._fail(IdleTimeout(f"no data from backend for {self._idle_timeout:g}s"))
        else:
            self._watchdog = self.loop.call_at(deadline, self._check_idle)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    # Used by the exchange's owner

    async def write_body(self, data: bytes) -> None:
        """Send part of a streamed request body, waiting while the backend is behind."""
        if self.transport is None:
            raise ConnectionLost("connection closed by backend")
        # The backend owes no answer before it has the whole body: the silence the idle
        # timeout bounds starts again with each piece it takes. One that stops taking
        # them pauses this write, and its silence counts from the last one.
        self.last_read = self.loop.time()
        self.transport.write(data)
        if self._write_paused:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter

    def abandon_request(self) -> None:
        """The request was not sent whole: the backend may still wait for the rest of
        it, so the connection must not carry another one."""
        self._request_whole = False

    def at_chunk_boundary(self) -> bool:
        """Between two chunks, before the last (empty) one: where one more chunk fits."""
        return self._reader is not None and self._reader.at_chunk_boundary()

    def pause_reading(self) -> None:
        self._read_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self._read_paused = False
        self.last_read = self.loop.time()
        if self.transport is not None:
            self.transport.resume_reading()


class Answer:
    """The base of the sinks: what the exchange's owner awaits. `answered` resolves
    when the head came (or the exchange failed before it), `ended` when the answer
    ended (or with the exchange's error). `bind` gives it the connection of one
    attempt; the owner gives that connection back (`conn.release`) when done."""

    def __init__(self) -> None:
        self.conn: UpstreamConnection | None = None
        self.head: ResponseHead | None = None

    def bind(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.head = None
        self.answered: asyncio.Future[None] = conn.loop.create_future()
        self.ended: asyncio.Future[None] = conn.loop.create_future()

    async def response_head(self) -> ResponseHead:
        """The head, once it came; the exchange's error if it failed before."""
        await self.answered
        if self.head is None:
            await self.ended  # raises the error
        assert self.head is not None
        return self.head

    def on_head(self, head: ResponseHead, body_follows: bool) -> None:
        self.head = head
        if not self.answered.done():
            self.answered.set_result(None)

    def on_body(self, data: bytes) -> None:
        raise NotImplementedError

    def on_end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    def on_error(self, exc: Exception) -> None:
        if not self.ended.done():
            self.ended.set_exception(exc)
        if not self.answered.done():
            self.answered.set_result(None)


# The most of one answer a `BufferedAnswer` holds: far above any real model list,
# `show` or admin answer, far below what a broken or foreign server can send (an
# answer without an end would hold the proxy's memory until it is killed).
MAX_DOCUMENT_BYTES = 64 << 20


class BufferedAnswer(Answer):
    """A whole answer in memory: for the small documents the proxy reads itself
    (health checks, merged lists, `show`) and for the replicas of admin requests. One
    over `MAX_DOCUMENT_BYTES` fails the exchange."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._size = 0

    def on_body(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_DOCUMENT_BYTES:
            raise ProtocolError(f"answer over {MAX_DOCUMENT_BYTES} bytes")
        self._parts.append(data)

    def on_error(self, exc: Exception) -> None:
        # What came of a failed answer is of no use, and the error (its traceback
        # reaches this answer) may outlive the exchange until a cyclic collection.
        self._parts = []
        super().on_error(exc)

    async def collect(self) -> bytes:
        """Wait for the end of the answer, give the connection back, and return the
        body without its framing."""
        conn = self.conn
        assert conn is not None
        try:
            await self.ended
        except BaseException:
            conn.close()
            raise
        conn.release()
        self.conn = None
        raw = b"".join(self._parts)
        return dechunk(raw) if self.head is not None and self.head.chunked else raw


async def exchange(
    pool: ConnectionPool,
    method: str,
    head: bytes,
    body: bytes,
    idle_timeout: float | None,
    sink: Answer,
    upload: Callable[[UpstreamConnection], Awaitable[None]] | None = None,
) -> ResponseHead:
    """Send one request on a pooled connection, its answer to `sink` (bound to the
    connection of the attempt that got it, `sink.conn`, for its owner to give back);
    the head, once it came. A pooled connection the backend closed before any answer
    says nothing about the backend (its keep-alive ran out as the request went out):
    the request goes again on another connection, unless its body is streamed up
    (`upload`), which cannot be replayed."""
    while True:
        conn = await pool.acquire()
        sink.bind(conn)
        try:
            conn.send(method, head, body, idle_timeout, sink)
            if upload is not None:
                await upload(conn)
            return await sink.response_head()
        except StaleConnection:
            conn.close()
            if upload is not None:
                raise
        except BaseException:
            conn.close()
            raise


async def fetch(
    pool: ConnectionPool, method: str, head: bytes, body: bytes, idle_timeout: float
) -> tuple[ResponseHead, bytes]:
    """One small request on a pooled connection (`exchange`): the answer's head and
    whole body."""
    answer = BufferedAnswer()
    response = await exchange(pool, method, head, body, idle_timeout, answer)
    return response, await answer.collect()


class ConnectionPool:
    """Idle keep-alive connections to one backend; no cap on how many are open."""

    def __init__(self, host: str, port: int, connect_timeout: float, max_idle: int = 512) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.loop = asyncio.get_running_loop()
        self._idle: deque[UpstreamConnection] = deque()
        self.host_header = f"{host}:{port}"

    async def acquire(self) -> UpstreamConnection:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port
                )
        except TimeoutError:
            raise ConnectTimedOut(f"connect to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            failed = ProxyExhausted if exc.errno in _EXHAUSTED else ConnectFailed
            raise failed(f"connect to {self.host}:{self.port}: {exc.strerror or exc}") from None
        return conn

    def put_back(self, conn: UpstreamConnection) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

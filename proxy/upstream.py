"""The upstream leg: HTTP/1.1 to a backend over pooled keep-alive connections.

Why not aiohttp's client: it wakes a coroutine for every chunk (parser callback →
future → task step → re-framing on write), about 26 µs a chunk here. This protocol
finds the chunk boundaries in `data_received` and hands the raw bytes, framing and
all, to the client's transport from that same callback: no queue, no task switch, no
re-framing. It parses only what it must: the response head and the chunk sizes, to
know where the body ends so that the connection can be reused.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

MAX_HEAD_BYTES = 64 * 1024

_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class UpstreamError(Exception):
    """The backend failed: refused, reset, timed out or spoke something not HTTP.
    `unreachable` says no connection could be made at all; `stale` that a pooled
    connection was closed before the backend answered a byte (it had timed it out)."""

    def __init__(self, message: str, unreachable: bool = False, stale: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.stale = stale


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    content_length: int | None
    chunked: bool
    keep_alive: bool

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def _interim(status: int) -> bool:
    """A 1xx head: informational, followed by the final head on the same connection."""
    return 100 <= status < 200


def _parse_head(raw: bytes, method: str) -> tuple[ResponseHead, int]:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise UpstreamError(f"malformed status line {lines[0][:80]!r}")
    status = int(code)
    if status == 101:
        # The proxy never asks to switch protocols (it forwards no `Upgrade`).
        raise UpstreamError("backend switched protocols unasked")
    headers: list[tuple[str, str]] = []
    length: int | None = None
    chunked = False
    keep_alive = version == "HTTP/1.1"
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise UpstreamError(f"malformed header line {line[:80]!r}")
        value = value.strip()
        lname = name.lower()
        if lname == "content-length":
            if not value.isdigit():
                raise UpstreamError(f"malformed Content-Length {value[:40]!r}")
            length = int(value)
        elif lname == "transfer-encoding":
            chunked = value.lower().endswith("chunked")
        elif lname == "connection":
            keep_alive = value.lower() != "close" and (keep_alive or value.lower() == "keep-alive")
        headers.append((name, value))
    if method == "HEAD" or status in (204, 304) or _interim(status):
        mode = _NONE
    elif chunked:
        mode = _CHUNKED
    elif length is not None:
        mode = _LENGTH if length else _NONE
    else:
        mode = _UNTIL_CLOSE
        keep_alive = False
    head = ResponseHead(status, reason, headers, length, chunked, keep_alive)
    return head, mode


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
        self._reset()

    def _reset(self) -> None:
        self.head: ResponseHead | None = None
        self._method = "GET"
        self._head_buf = bytearray()
        self._mode = _NONE
        self._left = 0
        self._line = b""
        self._trailers = False
        self._pending: list[bytes] = []
        self._sink: Callable[[bytes], None] | None = None
        self._head_waiter: asyncio.Future[ResponseHead] | None = None
        self._done: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._reusable = False
        self._request_whole = True
        # Called with the parsed head, from `data_received`, before any body byte, and
        # whether body bytes came in the same read.
        self.on_head: Callable[[ResponseHead, bool], None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        if self._mode == _UNTIL_CLOSE and self.head is not None:
            self._finish(reusable=False)
            return
        stale = self.reused and self.head is None and not self._head_buf
        error = UpstreamError(
            f"connection closed by backend{f': {exc}' if exc else ''}", stale=stale
        )
        self._fail(error)
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(error)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        self._drain_waiter = None

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        done = self._done
        if done is None or done.done():
            # Bytes no exchange asked for (after the end of a response, or on an idle
            # connection): its framing can no longer be trusted, so it is never reused.
            self.close()
            return
        if self.head is None:
            rest = self._read_head(data)
            if rest is None:
                return
            data = rest
        self._body(data)

    def _read_head(self, data: bytes) -> bytes | None:
        """Parse the final response head, skipping interim (1xx) ones; the body bytes
        that followed it, or None while it is incomplete or when the exchange ended."""
        buf = self._head_buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    self._fail(UpstreamError("response head too large"), close=True)
                return None
            try:
                head, mode = _parse_head(bytes(buf[:end]), self._method)
            except UpstreamError as exc:
                self._fail(exc, close=True)
                return None
            del buf[: end + 4]
            if not _interim(head.status):
                break
        self.head, self._mode = head, mode
        if mode == _LENGTH:
            self._left = head.content_length or 0
        data = bytes(buf)
        buf.clear()
        try:
            if self.on_head is not None:
                self.on_head(head, bool(data) and mode != _NONE)
        except Exception as exc:
            # The consumer failed, not the backend: the exchange ends with its error.
            self._fail(exc, close=True)
            return None
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(head)
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)  # answered: an upload waiting to send more stops
        if mode == _NONE:
            # A bodiless answer: any byte after its head is a stray one (see `_body`).
            self._finish(reusable=head.keep_alive and not data)
            return None
        return data or None

    # Body framing

    def _body(self, data: bytes) -> None:
        mode = self._mode
        end = -1  # where the body ended in `data`, once it did
        if mode == _CHUNKED:
            try:
                end = self._scan_chunks(data)
            except ValueError:
                self._fail(UpstreamError("malformed chunked body"), close=True)
                return
        elif mode == _LENGTH:
            if len(data) >= self._left:
                end = self._left
            self._left -= len(data)
        complete = end >= 0
        # Bytes after the body's end answer nothing that was asked: they are not
        # relayed, and the connection is not reused.
        stray = complete and end < len(data)
        if stray:
            data = data[:end]
        sink = self._sink
        if sink is not None:
            try:
                sink(data)
            except Exception as exc:
                # The consumer failed, not the backend: the exchange ends with its error.
                self._fail(exc, close=True)
                return
        else:
            self._pending.append(data)
        if complete:
            self._finish(reusable=not stray and self.head is not None and self.head.keep_alive)

    def _scan_chunks(self, data: bytes) -> int:
        """Follow the chunk framing through `data`: where the body ended in it (after
        the last chunk's trailers), or -1 when it goes on."""
        pos = 0
        end = len(data)
        while pos < end:
            if self._left:
                step = min(self._left, end - pos)
                self._left -= step
                pos += step
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._line += data[pos:]
                return -1
            line = data[pos:newline]
            pos = newline + 1
            if self._line:
                line = self._line + line
                self._line = b""
            if self._trailers:
                if not line.strip():
                    return pos
                continue
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                self._trailers = True
            else:
                self._left = size + 2
        return -1

    # Exchange lifecycle

    def _finish(self, reusable: bool) -> None:
        """The response was read to its end. The connection stays with its exchange's
        owner, who gives it back with `release` once its own bookkeeping is done."""
        done = self._done
        self._mode = _NONE
        self._reusable = reusable
        self._stop_watchdog()
        if done is not None and not done.done():
            done.set_result(None)

    def release(self) -> None:
        """The owner is done with this exchange: the connection goes back to the pool
        if its response was read to its end and it may be kept alive, else it is
        closed. The owner must not touch it afterwards."""
        done = self._done
        complete = done is not None and done.done() and not done.cancelled()
        reusable = self._reusable and self._request_whole
        if complete and done is not None and done.exception() is None and reusable:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                if self._read_paused:  # paused for its last client, not for the next
                    self.resume_reading()
                self._reset()
                self.pool.put_back(self)
                return
        self.close()

    def _fail(self, exc: Exception, close: bool = False) -> None:
        for fut in (self._head_waiter, self._done):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
        if close:
            self.close()

    def close(self) -> None:
        """Abort the connection: the backend sees the client leave and stops generating."""
        self._mode = _NONE
        self._stop_watchdog()
        for fut in (self._head_waiter, self._done):
            if fut is None:
                continue
            if not fut.done():
                fut.cancel()  # the exchange is over: nobody waits for it any more
            elif not fut.cancelled():
                fut.exception()  # retrieved: the caller that closes has seen it
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self.pool.forget(self)

    # Used by the relay

    def send(
        self, method: str, head: bytes, body: bytes, idle_timeout: float
    ) -> asyncio.Future[ResponseHead]:
        """Start an exchange. The backend may stay silent for at most `idle_timeout`
        seconds at a time (waiting for the head or between chunks); there is no bound
        on the whole exchange, since loading a model or a long answer is legitimate."""
        assert self.transport is not None
        self._method = method
        self._head_waiter = self.loop.create_future()
        self._done = self.loop.create_future()
        self._idle_timeout = idle_timeout
        self.last_read = self.loop.time()
        self._watchdog = self.loop.call_at(self.last_read + idle_timeout, self._check_idle)
        self.transport.write(head + body if body else head)
        return self._head_waiter

    def _check_idle(self) -> None:
        # One timer per exchange, re-armed lazily: cheaper than one per chunk.
        self._watchdog = None
        now = self.loop.time()
        if self._read_paused:
            self.last_read = now  # silent because we paused it for a slow client
        deadline = self.last_read + self._idle_timeout
        if now >= deadline:
            self._fail(
                UpstreamError(f"no data from backend for {self._idle_timeout:g}s"), close=True
            )
        else:
            self._watchdog = self.loop.call_at(deadline, self._check_idle)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def write_body(self, data: bytes) -> None:
        """Send part of a streamed request body, waiting while the backend is behind."""
        if self.transport is None:
            raise UpstreamError("connection closed by backend")
        self.transport.write(data)
        if self._write_paused:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter

    def abandon_request(self) -> None:
        """The request was not sent whole: the backend may still wait for the rest of
        it, so the connection must not carry another one."""
        self._request_whole = False

    def take_pending(self) -> bytes:
        """The body bytes that arrived with the head, for the relay to send with it."""
        pending = self._pending
        self._pending = []
        return b"".join(pending)

    def at_chunk_boundary(self) -> bool:
        """Between two chunks, before the last (empty) one: where one more chunk fits."""
        return self._left == 0 and not self._line and not self._trailers

    def attach(self, sink: Callable[[bytes], None]) -> asyncio.Future[None]:
        """Forward the body to `sink` from now on, starting with what already arrived."""
        done = self._done
        assert done is not None
        pending = self._pending
        self._pending = []
        for data in pending:
            sink(data)
        self._sink = sink
        return done

    async def read_body(self) -> bytes:
        """The whole body, framing removed: for small answers the proxy must inspect."""
        done = self._done
        assert done is not None
        await done
        raw = b"".join(self._pending)
        self._pending = []
        head = self.head
        self.release()
        return dechunk(raw) if head is not None and head.chunked else raw

    def pause_reading(self) -> None:
        self._read_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self._read_paused = False
        self.last_read = self.loop.time()
        if self.transport is not None:
            self.transport.resume_reading()


def dechunk(raw: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        newline = raw.index(b"\n", pos)
        size = int(raw[pos:newline].split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out)
        start = newline + 1
        out += raw[start : start + size]
        pos = start + size + 2


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
            raise UpstreamError(
                f"connect to {self.host}:{self.port} timed out", unreachable=True
            ) from None
        except OSError as exc:
            raise UpstreamError(
                f"connect to {self.host}:{self.port}: {exc.strerror or exc}", unreachable=True
            ) from None
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

"""Send one request to a backend and relay its answer to the client as it arrives.

Retries (another backend, or a fresh connection when a pooled one went stale) happen
only before the first byte reaches the client. Once the response started, the
upstream's own chunk framing is forwarded verbatim from the upstream protocol's
`data_received` straight to the client's transport; a failure after that point ends
the stream the way Ollama does, with one more line `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.http_writer import StreamWriter

from proxy.backends import BackendPool, BackendState, NoBackend
from proxy.config import Config
from proxy.errors import error_response, stream_error_line
from proxy.protocol import HOP_BY_HOP, NDJSON, REQUEST_ID_HEADER, SSE
from proxy.upstream import ResponseHead, UpstreamConnection, UpstreamError

log = logging.getLogger("autoroute.relay")

_HOP_BY_HOP_BYTES = frozenset(h.encode() for h in HOP_BY_HOP)
_STREAM_TYPES = (NDJSON, SSE)
_UPLOAD_CHUNK = 256 * 1024


@dataclass(slots=True)
class Outcome:
    """What the relay saw, for the access log (and the usage event later)."""

    request_id: str
    backend: str = ""
    status: int = 0
    attempts: int = 0
    body_bytes: int = 0
    error: str = ""
    cancelled: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def request_head(
    request: web.Request, host: str, body_length: int | None, request_id: str
) -> bytes:
    """The upstream request head: the client's headers minus hop-by-hop ones."""
    parts = [f"{request.method} {request.raw_path} HTTP/1.1\r\nHost: {host}\r\n".encode()]
    has_id = False
    for name, value in request.raw_headers:
        lname = name.lower()
        if lname in _HOP_BY_HOP_BYTES:
            continue
        if lname == b"x-request-id":
            has_id = True
        parts += (name, b": ", value, b"\r\n")
    if not has_id:
        parts.append(f"{REQUEST_ID_HEADER}: {request_id}\r\n".encode())
    if body_length is None:
        parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
    else:
        parts.append(b"Content-Length: %d\r\n\r\n" % body_length)
    return b"".join(parts)


class Relay:
    def __init__(self, config: Config, backends: BackendPool) -> None:
        self.config = config
        self.backends = backends
        self.idle = config.timeouts.idle_read_seconds

    async def forward(
        self,
        request: web.Request,
        outcome: Outcome,
        body: bytes | None,
        model: str | None,
        only: BackendState | None = None,
    ) -> web.StreamResponse:
        """Relay to the best backend for `model`; `body=None` streams the client's body
        (uploads), which cannot be replayed, so it is never retried."""
        tried: list[BackendState] = []
        failures: list[str] = []
        unreachable = True  # every failure so far was a refused or timed-out connect
        retries = self.config.health.retries if body is not None else 0
        while True:
            try:
                state = only or self.backends.choose(model, tried)
            except NoBackend as exc:
                if failures:
                    return self._failed(request, outcome, failures, unreachable)
                return error_response(request.path, 503, str(exc))
            outcome.attempts += 1
            outcome.backend = state.label
            state.in_flight += 1
            try:
                conn, head = await self._exchange(request, state, body, outcome)
            except UpstreamError as exc:
                state.in_flight -= 1
                state.failed(str(exc))
                log.warning("backend %s failed before answering: %s", state.label, exc)
                failures.append(f"{state.label}: {exc}")
                unreachable = unreachable and exc.unreachable
                tried.append(state)
                if only is not None or len(tried) > retries:
                    return self._failed(request, outcome, failures, unreachable)
                continue
            except BaseException:
                state.in_flight -= 1
                raise
            if (
                head.status >= 500
                and only is None
                and len(tried) < retries
                and len(self.backends.states) > 1
            ):
                state.in_flight -= 1
                conn.close()
                state.failed(f"answered {head.status}")
                tried.append(state)
                continue
            try:
                return await self._respond(request, state, conn, head, outcome)
            finally:
                state.in_flight -= 1

    def _failed(
        self, request: web.Request, outcome: Outcome, failures: list[str], unreachable: bool
    ) -> web.StreamResponse:
        """No answer from any backend tried: 503 when none could be reached (as when no
        backend is healthy), 502 when one was reached and misbehaved."""
        if unreachable:
            outcome.error = "no healthy backend: " + "; ".join(failures)
            return error_response(request.path, 503, outcome.error)
        outcome.error = "; ".join(failures)
        return error_response(request.path, 502, outcome.error)

    async def _exchange(
        self, request: web.Request, state: BackendState, body: bytes | None, outcome: Outcome
    ) -> tuple[UpstreamConnection, ResponseHead]:
        # A pooled connection the backend has since closed fails before any answer;
        # that says nothing about the backend, so try again on another connection.
        while True:
            conn = await state.pool.acquire()
            head_bytes = request_head(
                request,
                state.pool.host_header,
                None if body is None else len(body),
                outcome.request_id,
            )
            try:
                waiter = conn.send(request.method, head_bytes, body or b"")
                if body is None:
                    await self._upload(request, conn)
                return conn, await self._wait(waiter, conn)
            except UpstreamError as exc:
                conn.close()
                if not exc.stale or body is None:
                    raise
            except BaseException:
                conn.close()
                raise

    async def _upload(self, request: web.Request, conn: UpstreamConnection) -> None:
        limit = self.config.limits.max_upload_bytes
        sent = 0
        while chunk := await request.content.read(_UPLOAD_CHUNK):
            sent += len(chunk)
            if sent > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=sent)
            await conn.write_body(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        await conn.write_body(b"0\r\n\r\n")

    async def _wait(
        self, fut: asyncio.Future[ResponseHead], conn: UpstreamConnection
    ) -> ResponseHead:
        """Wait for `fut` while the backend keeps sending: the idle-read timeout bounds
        the silence, not the whole exchange (loading a model can take minutes)."""
        loop = conn.loop
        conn.last_read = loop.time()
        while True:
            remaining = conn.last_read + self.idle - loop.time()
            if remaining <= 0:
                raise UpstreamError(f"no data from backend for {self.idle:g}s")
            done, _ = await asyncio.wait((fut,), timeout=remaining)
            if done:
                return fut.result()

    async def _respond(
        self,
        request: web.Request,
        state: BackendState,
        conn: UpstreamConnection,
        head: ResponseHead,
        outcome: Outcome,
    ) -> web.StreamResponse:
        outcome.status = head.status
        response = web.StreamResponse(status=head.status, reason=head.reason)
        headers = response.headers
        content_type = ""
        for name, value in head.headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                continue
            if lname == "content-type":
                content_type = value
            headers.add(name, value)
        if content_type.startswith(_STREAM_TYPES):
            headers["X-Accel-Buffering"] = "no"
        headers[REQUEST_ID_HEADER] = outcome.request_id
        for name, value in outcome.extra.items():
            headers[name] = value

        if head.chunked and request.version < (1, 1):
            # An HTTP/1.0 client cannot read chunked framing: hand it the whole body.
            body = await conn.read_body()
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body)
            return response
        if not head.chunked and head.content_length is not None:
            response.content_length = head.content_length
        writer = await response.prepare(request)
        assert isinstance(writer, StreamWriter)
        # The upstream's framing goes through verbatim; aiohttp must not add its own.
        writer.chunked = False
        first = conn.take_pending()
        if first:
            await writer.write(first)
        else:
            writer.send_headers()

        transport = request.transport
        protocol = request.protocol
        assert transport is not None
        paused = False

        async def resume_after_drain() -> None:
            nonlocal paused
            try:
                await writer.drain()
            finally:
                paused = False
                conn.resume_reading()

        def sink(data: bytes) -> None:
            nonlocal paused
            if transport.is_closing():
                return
            transport.write(data)
            if protocol.writing_paused and not paused:
                # A client that stops reading pauses the backend, not a growing buffer.
                paused = True
                conn.pause_reading()
                asyncio.get_running_loop().create_task(resume_after_drain())

        done = conn.attach(sink)
        try:
            await self._wait_done(done, conn, paused_check=lambda: paused)
        except UpstreamError as exc:
            outcome.error = f"{state.label}: {exc}"
            state.failed(str(exc))
            log.warning("backend %s failed mid-stream: %s", state.label, exc)
            at_boundary = conn.at_chunk_boundary()
            conn.close()
            if head.chunked and at_boundary and not transport.is_closing():
                line = stream_error_line(content_type, str(exc))
                transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(line), line))
            else:
                # Length-framed or cut inside a chunk: closing is the only honest signal.
                transport.close()
            return response
        except BaseException:
            # The client went away (handler cancelled): stop the backend generating.
            outcome.cancelled = True
            conn.close()
            raise
        outcome.body_bytes = conn.body_bytes
        if head.status < 500:
            state.succeeded()
        return response

    async def _wait_done(
        self, done: asyncio.Future[None], conn: UpstreamConnection, paused_check: object
    ) -> None:
        loop = conn.loop
        while True:
            remaining = conn.last_read + self.idle - loop.time()
            if remaining <= 0:
                if callable(paused_check) and paused_check():
                    # Silent because we paused it for a slow client, not because it hung.
                    conn.last_read = loop.time()
                    continue
                raise UpstreamError(f"backend sent nothing for {self.idle:g}s mid-stream")
            finished, _ = await asyncio.wait((done,), timeout=remaining)
            if finished:
                done.result()
                return

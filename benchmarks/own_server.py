"""A prototype: the proxy's relay behind an HTTP/1.1 server of its own instead of aiohttp's.

Not the proxy and not for use: it knows keep-alive requests with a Content-Length body
and nothing else (no chunked uploads, no pipelining, no limits, no timeouts). It exists
to measure what the streaming path would cost if the proxy parsed request heads itself
in `data_received`, with one task per request, and relayed with the same upstream
protocol and client-leg design as `autoroute serve`. `stream_bench` runs it beside
`bare_relay` (the same relay behind aiohttp's server): the difference between the two
is what aiohttp's server costs on this path. What it found, and why the proxy keeps
aiohttp's server: docs/design-notes.md.

    python -m benchmarks.own_server --port 18440 --backend 127.0.0.1:18434
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from benchmarks.tcp_relay import run_server
from proxy.http11 import ResponseHead
from proxy.protocol import HOP_BY_HOP
from proxy.upstream import Answer, ConnectionPool

_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)


class ClientSink(Answer):
    """The client leg: the head goes out with the first piece of body, the body as
    it came (chunk framing included)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self.transport = transport
        self.pending = b""

    def on_head(self, head: ResponseHead, body_follows: bool) -> None:
        lines = [f"HTTP/1.1 {head.status} {head.reason}\r\n"]
        lines += [
            f"{name}: {value}\r\n" for name, value in head.headers if name.lower() not in HOP_BY_HOP
        ]
        if head.chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        elif head.content_length is not None:
            lines.append(f"Content-Length: {head.content_length}\r\n")
        lines.append("\r\n")
        out = "".join(lines).encode("latin-1")
        if body_follows:
            self.pending = out
        else:
            self.transport.write(out)
        super().on_head(head, body_follows)

    def on_body(self, data: bytes) -> None:
        if self.pending:
            data, self.pending = self.pending + data, b""
        self.transport.write(data)


class ClientProtocol(asyncio.Protocol):
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next_request()

    def _next_request(self) -> None:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = buffer[:end].split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        headers = []
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            if lname not in _HOP_BY_HOP_BYTES and lname != b"host":
                headers.append(line + b"\r\n")
        if len(buffer) < end + 4 + length:
            return  # the body is still coming
        body = buffer[end + 4 : end + 4 + length]
        self.buffer = buffer[end + 4 + length :]
        self.busy = True
        head = b"%b %b HTTP/1.1\r\nHost: %b\r\n%bContent-Length: %d\r\n\r\n" % (
            method,
            target,
            self.pool.host_header.encode(),
            b"".join(headers),
            length,
        )
        asyncio.get_running_loop().create_task(self._forward(method.decode(), head, body))

    async def _forward(self, method: str, head: bytes, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        conn = await self.pool.acquire()
        client = ClientSink(transport)
        client.bind(conn)
        conn.send(method, head, body, 60.0, client)
        await client.ended
        conn.release()
        self.busy = False
        self._next_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def protocols(host: str, port: int) -> Callable[[], asyncio.Protocol]:
    pool = ConnectionPool(host, port, connect_timeout=5.0)
    return lambda: ClientProtocol(pool)


def main() -> None:
    run_server(__doc__.split("\n")[0], protocols)


if __name__ == "__main__":
    main()

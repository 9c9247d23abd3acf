"""The floor for any relay in Python on this machine: a byte pipe that pairs each client
connection with one upstream connection and copies bytes both ways, with no HTTP at
all (no parsing, no routing, no headers), on uvloop, with backpressure.

A proxy cannot cost less than this per streamed chunk: the chunk still has to be read
from one socket and written to another. `stream_bench` runs it beside the proxy so the
proxy's CPU and added latency can be read against what the kernel and the event loop
alone cost, in the same run.

    python -m benchmarks.tcp_relay --port 18437 --backend 127.0.0.1:18434
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import cast

import uvloop


class Pipe(asyncio.Protocol):
    """One side of a connection pair: what it receives, its peer writes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Pipe | None = None
        self.pending: list[bytes] = []  # received before the peer connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            return
        peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # The peer's socket buffer is full: stop reading this side until it drains.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class ClientSide(Pipe):
    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.upstream = (host, port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(Pipe, *self.upstream)
        upstream.peer, self.peer = self, upstream
        for data in self.pending:
            self.data_received(data)
        self.pending.clear()


def run_server(
    description: str, factory: Callable[[str, int], Callable[[], asyncio.Protocol]]
) -> None:
    """Serve on 127.0.0.1:--port, with protocols from `factory(backend host, port)`
    (called in the running loop), on uvloop until killed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="host:port")
    args = parser.parse_args()
    host, _, port = args.backend.rpartition(":")

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        protocol = factory(host, int(port))
        server = await loop.create_server(protocol, "127.0.0.1", args.port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


def main() -> None:
    run_server(__doc__.split("\n")[0], lambda host, port: lambda: ClientSide(host, port))


if __name__ == "__main__":
    main()

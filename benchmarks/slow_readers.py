"""Clients that read their streams slowly, for the soak: each keeps one long
`/api/generate` stream open at a time and reads it a few hundred bytes at a time with
a small receive buffer, so that TCP backpressure reaches the proxy. Prints a JSON
summary (streams completed, errors) when the time is up.

    python -m benchmarks.slow_readers --base http://127.0.0.1:11435 --clients 8 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from urllib.parse import urlsplit

import orjson


async def one_stream(host: str, port: int, model: str, tokens: int, pause: float) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    body = orjson.dumps(
        {"model": model, "prompt": "Tell a long story.", "options": {"num_predict": tokens}}
    )
    writer.write(
        b"POST /api/generate HTTP/1.1\r\nHost: %b\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (host.encode(), len(body), body)
    )
    await writer.drain()
    received = bytearray()
    try:
        while chunk := await reader.read(256):
            received += chunk
            await asyncio.sleep(pause)
    finally:
        writer.close()
    head, _, _ = bytes(received).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    # Chunked framing aside, the last JSON line must be the final chunk, with no error.
    if b'"done":true' not in received or b'"error"' in received:
        raise RuntimeError("stream ended without its final chunk")


async def client(url: str, model: str, until: float, counts: dict[str, int]) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    while time.monotonic() < until:
        try:
            await one_stream(host, port, model, tokens=1000, pause=0.05)
            counts["streams"] += 1
        except (OSError, RuntimeError, asyncio.IncompleteReadError) as exc:
            counts["errors"] += 1
            print(f"slow reader: {exc!r}", file=sys.stderr)


async def run(url: str, model: str, clients: int, seconds: float) -> dict[str, int]:
    counts = {"clients": clients, "streams": 0, "errors": 0}
    until = time.monotonic() + seconds
    await asyncio.gather(*(client(url, model, until, counts) for _ in range(clients)))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="http://127.0.0.1:11435")
    parser.add_argument("--model", default="llama3.1:8b")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    counts = asyncio.run(run(args.base, args.model, args.clients, args.seconds))
    print(orjson.dumps(counts).decode())
    return 1 if counts["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

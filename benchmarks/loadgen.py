"""A lean streaming load generator: N keep-alive connections, each posting the same
request in a loop and timing the first body chunk and the end of the stream.

It is an asyncio.Protocol client on uvloop so that the generator's own overhead stays
small and equal for every target; it prints one JSON document of raw measurements.

    python -m benchmarks.loadgen --port 11434 --concurrency 32 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from typing import cast

import orjson
import uvloop


class StreamClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head_done = False
        self.first_at = 0.0
        self.done: asyncio.Future[float] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buf += data
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 200"):
                assert self.done is not None
                self.done.set_exception(RuntimeError(bytes(self.buf[:200]).decode("latin-1")))
                return
            self.head_done = True
            del self.buf[: end + 4]
        if not self.first_at and self.buf:
            self.first_at = now
        # The terminating chunk of a chunked body.
        if self.buf.endswith(b"0\r\n\r\n") and self.done is not None and not self.done.done():
            self.done.set_result(now)

    async def request(self, payload: bytes) -> tuple[float, float]:
        assert self.transport is not None
        self.buf.clear()
        self.head_done = False
        self.first_at = 0.0
        self.done = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        self.transport.write(payload)
        end = await self.done
        return self.first_at - start, end - start


def build_request(port: int, path: str, body: dict[str, object]) -> bytes:
    data = orjson.dumps(body)
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


async def run(
    port: int, concurrency: int, seconds: float, requests: int, payload: bytes, think: float = 0.0
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    ttfc: list[float] = []
    total: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        _, client = await loop.create_connection(StreamClient, "127.0.0.1", port)
        try:
            while time.perf_counter() < deadline and (not requests or len(total) < requests):
                if think:
                    # A random pause between requests: without it every request would
                    # arrive at the same phase of the emulator's millisecond timer
                    # (libuv's clock), which biases time to first chunk per target.
                    await asyncio.sleep(random.uniform(0, think))
                try:
                    first, whole = await client.request(payload)
                except Exception as exc:
                    errors.append(str(exc)[:200])
                    return
                ttfc.append(first)
                total.append(whole)
        finally:
            assert client.transport is not None
            client.transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"ttfc": ttfc, "total": total, "elapsed": elapsed, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/api/generate")
    parser.add_argument("--model", default="qwen2.5:7b")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=0, help="stop after this many (0: no cap)")
    parser.add_argument("--think-ms", type=float, default=0.0, help="random pause up to this")
    parser.add_argument(
        "--num-predict", type=int, default=0, help="tokens per answer (0: the backend's own)"
    )
    args = parser.parse_args()
    body: dict[str, object] = {"model": args.model, "prompt": "Write a haiku about proxies."}
    if args.path == "/api/chat":
        body = {"model": args.model, "messages": [{"role": "user", "content": "Write a haiku."}]}
    if args.num_predict:
        body["options"] = {"num_predict": args.num_predict}
    payload = build_request(args.port, args.path, body)
    result = uvloop.run(
        run(args.port, args.concurrency, args.seconds, args.requests, payload, args.think_ms / 1000)
    )
    sys.stdout.buffer.write(orjson.dumps(result))


if __name__ == "__main__":
    main()

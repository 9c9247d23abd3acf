"""The response cache: a hit's time to first chunk and to the end of the answer,
against a miss's (the same request's first time through the proxy) and a direct
request to the emulator, in one run, with the memory and the Redis backend.

Each round sends a new deterministic prompt (temperature 0) directly, then through
the proxy twice: a miss, then a hit. One keep-alive connection per target, one
request at a time: what is measured is latency, not throughput.

    python -m benchmarks.cache_bench              # Redis at 127.0.0.1:6379
    python -m benchmarks.cache_bench --rounds 50 --no-redis
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvloop

from benchmarks import servers
from benchmarks.servers import check_alive, wait_ready
from tests.support import free_port

MODEL = "qwen2.5:7b"
_END = b"0\r\n\r\n"


@dataclass
class Timings:
    ttfc: list[float] = field(default_factory=list)  # ms
    total: list[float] = field(default_factory=list)  # ms

    def median(self, which: str) -> float:
        values: list[float] = getattr(self, which)
        return statistics.median(values)

    def p95(self, which: str) -> float:
        values: list[float] = sorted(getattr(self, which))
        return values[min(len(values) - 1, int(len(values) * 0.95))]


class Connection:
    """One keep-alive connection; `post` times the first body byte and the end."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, doc: dict[str, Any]) -> tuple[float, float, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        body = orjson.dumps(doc)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        started = time.perf_counter()
        self.writer.write(head + body)
        response_head = await self.reader.readuntil(b"\r\n\r\n")
        if not response_head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(response_head.decode("latin-1"))
        data = await self.reader.read(65536)
        first = time.perf_counter()
        while not data.endswith(_END):
            data += await self.reader.read(65536)
        ended = time.perf_counter()
        return (first - started) * 1000, (ended - started) * 1000, response_head

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def measure(
    emu_port: int, proxies: dict[str, int], rounds: int
) -> tuple[Timings, dict[str, tuple[Timings, Timings]]]:
    direct = Connection(emu_port)
    through = {name: Connection(port) for name, port in proxies.items()}
    direct_t = Timings()
    results = {name: (Timings(), Timings()) for name in proxies}
    run = uuid.uuid4().hex[:8]
    try:
        for n in range(-3, rounds):  # three rounds of warm-up, not counted
            doc: dict[str, Any] = {
                "model": MODEL,
                "prompt": f"Explain caching, take {run}-{n}.",
                "options": {"temperature": 0},
            }
            ttfc, total, _ = await direct.post("/api/generate", doc)
            if n >= 0:
                direct_t.ttfc.append(ttfc)
                direct_t.total.append(total)
            for name, conn in through.items():
                miss_t, hit_t = results[name]
                for verdict, timings in ((b"miss", miss_t), (b"hit", hit_t)):
                    for _ in range(200):  # the miss is stored in the background
                        ttfc, total, head = await conn.post("/api/generate", doc)
                        if b"X-Autoroute-Cache: " + verdict in head:
                            break
                        await asyncio.sleep(0.005)
                    else:
                        raise RuntimeError(f"{name}: never a {verdict.decode()}")
                    if n >= 0:
                        timings.ttfc.append(ttfc)
                        timings.total.append(total)
    finally:
        direct.close()
        for conn in through.values():
            conn.close()
    return direct_t, results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--chunk-ms", default="5")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    emu_port = free_port()
    emulator = servers.emulator(emu_port, "--chunk-ms", args.chunk_ms)
    base_env = {
        "AUTOROUTE_CONFIG": "/dev/null",
        "AUTOROUTE_BACKENDS": f"http://127.0.0.1:{emu_port}",
        "AUTOROUTE_LOGGING__ACCESS": "false",
        "AUTOROUTE_LOGGING__LEVEL": "WARNING",
        "AUTOROUTE_USAGE__FILE_MODE": "off",
        "AUTOROUTE_CACHE__ENABLED": "true",
        "AUTOROUTE_CACHE__NAMESPACE": f"autoroute-bench:{uuid.uuid4().hex}",
    }
    backends: dict[str, dict[str, str]] = (
        {"memory": {}} if args.no_redis else {"memory": {}, "redis": {}}
    )
    if "redis" in backends:
        backends["redis"] = {
            "AUTOROUTE_CACHE__BACKEND": "redis",
            "AUTOROUTE_CACHE__REDIS_URL": args.redis_url,
        }
    procs = []
    ports: dict[str, int] = {}
    try:
        wait_ready(emu_port)
        for name, extra in backends.items():
            port = free_port()
            procs.append(servers.proxy(port, {**base_env, **extra}))
            ports[name] = port
            wait_ready(port)
        direct, results = uvloop.run(measure(emu_port, ports, args.rounds))
        check_alive()
    finally:
        servers.stop([*procs, emulator], 20)
    print(
        f"cache: {args.rounds} deterministic /api/generate streams (20 tokens, "
        f"{args.chunk_ms} ms between chunks), one at a time; times in ms, median (p95)"
    )
    print(
        f"  direct to emulator : ttfc {direct.median('ttfc'):7.3f} ({direct.p95('ttfc'):7.3f})"
        f"  total {direct.median('total'):8.3f} ({direct.p95('total'):8.3f})"
    )
    for name, (miss, hit) in results.items():
        for label, t in (("miss", miss), ("hit", hit)):
            print(
                f"  {name:>6} {label:<4}        : "
                f"ttfc {t.median('ttfc'):7.3f} ({t.p95('ttfc'):7.3f})"
                f"  total {t.median('total'):8.3f} ({t.p95('total'):8.3f})"
            )
        print(
            f"  {name:>6} ratio ttfc: hit/miss {hit.median('ttfc') / miss.median('ttfc'):.3f}, "
            f"hit/direct {hit.median('ttfc') / direct.median('ttfc'):.3f}, "
            f"miss/direct {miss.median('ttfc') / direct.median('ttfc'):.3f}; "
            f"total hit/miss {hit.median('total') / miss.median('total'):.3f}"
        )
    # The Redis namespace is the run's own: its entries expire with the TTL; removed
    # here so that a benchmark leaves nothing behind.
    if "redis" in backends:
        _clear_redis(args.redis_url, base_env["AUTOROUTE_CACHE__NAMESPACE"])


def _clear_redis(url: str, namespace: str) -> None:
    try:
        import redis
    except ImportError:
        return
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


if __name__ == "__main__":
    main()

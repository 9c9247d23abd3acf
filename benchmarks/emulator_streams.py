"""What many long streams cost the emulator: its memory and its event loop's longest
stall while `--streams` clients each hold a stream asked for `--num-predict` tokens.

The emulator serves on an event loop of its own thread, watched by a task that sleeps
a millisecond at a time and notes how late it wakes; the clients run on the main
loop, read each stream's first chunk, hold every stream open for `--hold` seconds
(reading what comes), then leave. Memory is this process's resident set, before and
with every stream open, and its peak.

    python -m benchmarks.emulator_streams --streams 300 --num-predict 100000
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from typing import Any

import aiohttp
from aiohttp import web

from proxy.emulator import EmulatorSettings, create_app
from tests.support import free_port

_TICK = 0.001


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Watched:
    """The emulator on its own loop, with the loop's longest stall noted."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.longest = 0.0
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(settings,), daemon=True)
        self.thread.start()
        self.ready.wait()

    def _run(self, settings: EmulatorSettings) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(create_app(settings))
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self.loop.create_task(self._watch())
        self.ready.set()
        self.loop.run_forever()

    async def _watch(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(_TICK)
            self.longest = max(self.longest, time.perf_counter() - before - _TICK)


async def _stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], opened: asyncio.Event
) -> int:
    async with session.post(url + ARGS.path, json=body) as resp:
        await resp.content.readline()
        opened.set()
        read = 0
        try:
            async with asyncio.timeout(ARGS.hold):
                async for line in resp.content:
                    read += len(line)
        except TimeoutError:
            pass
        return read


async def main() -> None:
    emulator = Watched(EmulatorSettings(tokens_per_second=ARGS.tokens_per_second))
    url = f"http://127.0.0.1:{emulator.port}"
    body: dict[str, Any] = {"model": "qwen2.5:7b", "stream": True}
    if ARGS.path == "/api/generate":
        body.update(prompt="write at length", options={"num_predict": ARGS.num_predict})
    else:
        body.update(input="write at length", max_output_tokens=ARGS.num_predict)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm = {"model": body["model"], "prompt": "hi", "stream": False}
        async with session.post(url + "/api/generate", json=warm) as r:
            await r.read()  # the model loaded, the first answer's costs paid
        rss_before = _status_kb("VmRSS")
        emulator.longest = 0.0
        started = time.perf_counter()
        events = [asyncio.Event() for _ in range(ARGS.streams)]
        tasks = [asyncio.create_task(_stream(session, url, body, e)) for e in events]
        await asyncio.gather(*(e.wait() for e in events))
        all_open = time.perf_counter() - started
        rss_open = _status_kb("VmRSS")
        read = sum(await asyncio.gather(*tasks))
    print(f"{ARGS.path}: streams {ARGS.streams}, num_predict {ARGS.num_predict}")
    print(f"every stream's first chunk after {all_open:.2f} s; {read} bytes read in all")
    print(f"loop's longest stall {emulator.longest * 1000:.1f} ms")
    print(
        f"RSS before {rss_before / 1024:.0f} MB, with the streams open "
        f"{rss_open / 1024:.0f} MB (+{(rss_open - rss_before) / 1024:.0f} MB), "
        f"peak {_status_kb('VmHWM') / 1024:.0f} MB"
    )
    emulator.loop.call_soon_threadsafe(emulator.loop.stop)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--path", choices=("/api/generate", "/v1/responses"), default="/api/generate"
    )
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--num-predict", type=int, default=100_000)
    parser.add_argument("--hold", type=float, default=2.0, help="seconds each stream is read")
    parser.add_argument("--tokens-per-second", type=float, default=60.0)
    return parser.parse_args()


if __name__ == "__main__":
    ARGS = _args()
    asyncio.run(main())

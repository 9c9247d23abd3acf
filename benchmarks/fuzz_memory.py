"""The long fuzz run, with the proxy's memory watched: does it stay flat?

Starts an emulator and the proxy as processes of their own (access control on with
the fuzz suite's admin key, `/metrics` open), runs `tests/test_fuzz.py` against them
with FUZZ_EXAMPLES requests, samples the proxy's RSS every two seconds, and prints the
curve and the growth from the end of the run's first tenth to its end. The proxy's log
is searched for tracebacks and ERROR lines afterwards: a request the proxy could not
handle must not leave one.

    .venv/bin/python -m benchmarks.fuzz_memory --examples 10000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import servers
from benchmarks.servers import (
    PY,
    ROOT,
    RssWatch,
    check_alive,
    ensure_free,
    log_file,
    rss_kib,
    wait_ready,
)
from proxy.auth import hash_key
from tests.fuzz_target import KEY, LIMITS

PROXY_PORT, EMULATOR_PORT = 11611, 11612


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=10000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fuzz-memory-"))
    config = {
        "listen": {"port": PROXY_PORT},
        "backends": [{"url": f"http://127.0.0.1:{EMULATOR_PORT}"}],
        "limits": {"max_body_bytes": LIMITS.max_body_bytes},
        "auth": {
            "keys": [{"sha256": hash_key(KEY), "name": "fuzz", "role": "admin"}],
            "metrics_open": True,
        },
        "logging": {"access": False},
        "usage": {"file_path": str(work / "usage.jsonl")},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    ensure_free(PROXY_PORT, EMULATOR_PORT)
    emulator = servers.emulator(EMULATOR_PORT, "--chunk-ms", "1")
    proxy = servers.proxy(PROXY_PORT, config=work / "config.yaml")
    try:
        wait_ready(EMULATOR_PORT)
        wait_ready(PROXY_PORT)
        watch = RssWatch(proxy.pid, 2.0)
        watch.start()
        began = time.monotonic()
        test = subprocess.run(
            [PY, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
            cwd=ROOT,
            env={
                **os.environ,
                "FUZZ_EXAMPLES": str(args.examples),
                "FUZZ_PROXY_PORT": str(PROXY_PORT),
                "FUZZ_EMULATOR_PORT": str(EMULATOR_PORT),
            },
            capture_output=True,
            text=True,
            check=False,
        )
        watch.done.set()
        watch.join()
        final = (time.monotonic() - began, rss_kib(proxy.pid))
        check_alive()
    finally:
        servers.stop([proxy, emulator])
    for text in test.stdout.splitlines():
        if text.startswith("fuzz:") or "passed" in text or "failed" in text:
            print(text)
    if test.returncode:
        print(test.stdout[-3000:])
    samples = [*watch.samples, final]
    warm = next(s for s in samples if s[0] >= final[0] / 10)
    growth = (final[1] - warm[1]) / warm[1]
    step = max(1, len(samples) // 10)
    print(
        "proxy RSS MiB over the run: "
        + ", ".join(f"{t:.0f}s {kib / 1024:.1f}" for t, kib in [*samples[::step], final])
    )
    print(
        f"fuzz memory: {args.examples} examples in {final[0]:.0f} s; proxy RSS "
        f"{warm[1] / 1024:.1f} MiB at {warm[0]:.0f} s, {final[1] / 1024:.1f} MiB at "
        f"the end ({growth * 100:+.1f}%)"
    )
    logged = log_file(PROXY_PORT).read_text(errors="replace").splitlines()
    bad = [line for line in logged if "Traceback" in line or '"level": "error"' in line]
    print(f"proxy log: {len(logged)} lines, {len(bad)} tracebacks or ERROR lines")
    for line in bad[:5]:
        print("  " + line[:300])
    return 1 if test.returncode or bad else 0


if __name__ == "__main__":
    sys.exit(main())

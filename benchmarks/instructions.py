"""Instructions the proxy executes per request and per chunk of a streamed answer,
counted by valgrind's callgrind: the A/B that timings on a shared machine cannot give.

Starts the emulator (5 ms a chunk) and the proxy under callgrind, then sends sequential
streaming /api/chat requests (one at a time, one keep-alive connection) with answers of
3 and of 41 chunks, for a named model and for `auto`. Callgrind's counters are zeroed
before each run and dumped after it; per request and per chunk come from the two runs
of a model (cost = request + n x chunk), in rounds, and the medians over the rounds
are printed with the range of the per-request figure. What the proxy executes while
idle (its timers) is measured alone around each round and subtracted over each run's
wall time; the timers that do not serve requests (health checks, the learner's sync,
the artifact's reload check) are slowed to once an hour for every target alike.

`--path /api/generate` counts generate's answers instead, whose last chunk carries
the context.

`--old REV` (repeatable) measures the proxy of another git revision the same way,
after this one, and prints this one's ratios to it. Each target runs in `--processes`
processes, the targets taking turns (A B A B): two processes of the same code settle
a few percent apart (their type-lookup cache misses and interpreter work differ), a
spread no number of rounds in one process shows, so the medians pool every process's
rounds and the spread between processes is printed beside them.

    python -m benchmarks.instructions                 # about ten minutes
    python -m benchmarks.instructions --old e8bfb28   # about twenty
    python -m benchmarks.instructions --old main --old e8bfb28
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

from benchmarks.servers import PY, BenchmarkError, emulator, ensure_free, start, wait_ready
from benchmarks.stream_bench import old_tree

EMULATOR_PORT = 18444
PROXY_PORT = 18445
MODELS = ("qwen2.5:7b", "auto")
CHAT, GENERATE = "/api/chat", "/api/generate"
BACKEND_MODELS = "qwen2.5:7b,llama3.2:3b"
# Chunks of the two answer lengths (N tokens are N+1 NDJSON lines: the last carries
# the counters), and the length the summary line adds up.
SHORT, LONG, SHOWN = 3, 41, 21
WARMUP = 10
IDLE_SECONDS = 3.0
READY_SECONDS = 600.0  # the proxy imports and loads its artifact about 50x slower
# Timers that do no request's work, once an hour (what is left idle is subtracted).
QUIET = {
    "AUTOROUTE_HEALTH__INTERVAL_SECONDS": "3600",
    "AUTOROUTE_SELECTOR__LEARNING__SYNC_SECONDS": "3600",
    "AUTOROUTE_SELECTOR__RELOAD_CHECK_SECONDS": "0",
    "AUTOROUTE_SELECTOR__LEARNING__SEED": "1",
}


@dataclass(frozen=True)
class Split:
    request: float
    chunk: float

    def stream(self, chunks: int) -> float:
        return self.request + chunks * self.chunk


class Callgrind:
    """A proxy process under callgrind: counters zeroed and dumped on demand."""

    def __init__(self, env: dict[str, str], out: Path) -> None:
        self.out = out
        args = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out / 'callgrind.out'}",
            PY,
            "-m",
            "proxy.cli",
            "serve",
        ]
        self.proc = start(args, env, port=PROXY_PORT)

    def _control(self, option: str) -> None:
        subprocess.run(
            ["callgrind_control", option, str(self.proc.pid)], check=True, capture_output=True
        )

    def zero(self) -> None:
        self._control("--zero")

    def dump(self) -> int:
        """Instructions since the last `zero`."""
        self._control("--dump")
        numbered = [p for p in self.out.glob("callgrind.out.*") if p.suffix[1:].isdigit()]
        latest = max(numbered, key=lambda p: int(p.suffix[1:]))
        found = re.search(rb"^summary: (\d+)$", latest.read_bytes(), re.MULTILINE)
        if found is None:
            raise BenchmarkError(f"{latest}: no summary line")
        latest.unlink()
        return int(found.group(1))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def wait_up(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchmarkError(f"the proxy under callgrind exited with status {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=5).read()
            return
        except OSError:
            time.sleep(1.0)
    raise BenchmarkError(f"the proxy under callgrind did not answer within {READY_SECONDS:.0f} s")


def chat(
    conn: http.client.HTTPConnection, model: str, chunks: int, count: int, path: str = CHAT
) -> None:
    """`count` streamed answers of `chunks` chunks each, one after another, from
    /api/chat or /api/generate (whose last chunk carries the context)."""
    doc: dict[str, object] = {"model": model, "options": {"num_predict": chunks - 1}}
    if path == CHAT:
        doc["messages"] = [{"role": "user", "content": "Write a haiku."}]
    else:
        doc["prompt"] = "Write a haiku."
    body = orjson.dumps(doc)
    for _ in range(count):
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200 or data.count(b"\n") != chunks:
            raise BenchmarkError(f"{model}: {response.status} {data[:300]!r}")


def idle(target: Callgrind) -> float:
    """Instructions per second the proxy executes with no request."""
    target.zero()
    time.sleep(IDLE_SECONDS)
    return target.dump() / IDLE_SECONDS


def measure(
    env: dict[str, str], requests: int, rounds: int, path: str = CHAT
) -> dict[str, list[Split]]:
    """Per request and per chunk, by model, of the proxy `env` starts: one split per
    round, each from a run of each answer length."""
    with tempfile.TemporaryDirectory(prefix="autoroute-callgrind-") as tmp:
        target = Callgrind(env, Path(tmp))
        try:
            wait_up(target.proc, PROXY_PORT)
            conn = http.client.HTTPConnection("127.0.0.1", PROXY_PORT, timeout=120)
            for model in MODELS:
                for chunks in (SHORT, LONG):
                    chat(conn, model, chunks, WARMUP, path)
            idle_rates = [idle(target)]
            splits: dict[str, list[Split]] = {model: [] for model in MODELS}
            for _ in range(rounds):
                for model in MODELS:
                    cost = {}
                    for chunks in (SHORT, LONG):
                        target.zero()
                        began = time.monotonic()
                        chat(conn, model, chunks, requests, path)
                        seconds = time.monotonic() - began
                        cost[chunks] = (target.dump(), seconds)
                    # The idle rate nearest in time: the timers' cost drifts a little.
                    idle_rates.append(idle(target))
                    rate = (idle_rates[-2] + idle_rates[-1]) / 2
                    per = {n: (total - rate * s) / requests for n, (total, s) in cost.items()}
                    chunk = (per[LONG] - per[SHORT]) / (LONG - SHORT)
                    splits[model].append(Split(per[SHORT] - SHORT * chunk, chunk))
            conn.close()
        finally:
            target.stop()
    low, high = min(idle_rates), max(idle_rates)
    print(f"  (idle: {low:,.0f} to {high:,.0f} instructions/s, subtracted)", flush=True)
    return splits


def median(splits: list[Split]) -> Split:
    return Split(
        statistics.median(s.request for s in splits), statistics.median(s.chunk for s in splits)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--old",
        metavar="REV",
        action="append",
        default=[],
        help="also measure the proxy of git revision REV (repeatable)",
    )
    parser.add_argument("--requests", type=int, default=30, help="requests per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each length per model")
    parser.add_argument("--path", choices=(CHAT, GENERATE), default=CHAT)
    parser.add_argument("--processes", type=int, default=2, help="processes per target")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise BenchmarkError("valgrind is not installed")
    ensure_free(EMULATOR_PORT, PROXY_PORT)
    base = {
        "AUTOROUTE_CONFIG": os.devnull,
        "AUTOROUTE_LISTEN__PORT": str(PROXY_PORT),
        "AUTOROUTE_BACKENDS": f"http://127.0.0.1:{EMULATOR_PORT}",
        "PYTHONHASHSEED": "0",
        **QUIET,
    }
    emu = emulator(EMULATOR_PORT, "--models", BACKEND_MODELS, "--chunk-ms", "5")
    # Per target, each process's splits by model.
    results: dict[str, list[dict[str, list[Split]]]] = {"proxy": []}
    try:
        wait_ready(EMULATOR_PORT)
        print(
            f"callgrind: POST {args.path} streamed, one at a time; per model {args.rounds} rounds"
            f" of {args.requests} requests of {SHORT}- and of {LONG}-chunk answers in each of"
            f" {args.processes} processes per target, the targets taking turns; medians over"
            " every round",
            flush=True,
        )
        with contextlib.ExitStack() as trees:
            envs = {"proxy": base}
            for rev in args.old:
                tmp = trees.enter_context(tempfile.TemporaryDirectory(prefix="autoroute-old-"))
                envs[rev] = base | old_tree(rev, Path(tmp))
                results[rev] = []
            for process in range(args.processes):
                for name, env in envs.items():
                    print(f"{name}, process {process + 1}:", flush=True)
                    results[name].append(measure(env, args.requests, args.rounds, args.path))
    finally:
        emu.terminate()
        emu.wait(10)
    for name, processes in results.items():
        if name != "proxy":
            print(f"{name}: the proxy of git revision {name}")
        report(name, processes)
    for rev in args.old:
        for model in MODELS:
            new, old = pooled(results["proxy"], model), pooled(results[rev], model)
            # Each process of the one against each of the other: how far apart the
            # ratio of one pair of processes could have put it.
            pairs = [
                median(a[model]).request / median(b[model]).request
                for a in results["proxy"]
                for b in results[rev]
            ]
            print(
                f"proxy/{rev} {model}: per request {new.request / old.request:.3f}x"
                f" (process pairs {min(pairs):.3f}x to {max(pairs):.3f}x),"
                f" per chunk {new.chunk / old.chunk:.3f}x,"
                f" {SHOWN}-chunk stream {new.stream(SHOWN) / old.stream(SHOWN):.3f}x"
                f" ({new.request - old.request:+,.0f} instructions per request)"
            )


def pooled(processes: list[dict[str, list[Split]]], model: str) -> Split:
    """The median of `model`'s rounds over every process."""
    return median([split for splits in processes for split in splits[model]])


def report(name: str, processes: list[dict[str, list[Split]]]) -> None:
    for model in MODELS:
        split = pooled(processes, model)
        each = [median(splits[model]).request for splits in processes]
        print(
            f"{name} {model}: per request {split.request:,.0f} instructions"
            f" (processes' medians {min(each):,.0f} to {max(each):,.0f}),"
            f" per chunk {split.chunk:,.0f}, {SHOWN}-chunk stream {split.stream(SHOWN):,.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

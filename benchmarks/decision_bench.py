"""Decision latency of `model: auto` inside the proxy, and its end-to-end overhead.

Part 1 (in process): `AutoRouter.decide` — features, hard filters, candidate rows,
one onnxruntime batch, telemetry and policy — timed for 4, 9 and 16 candidates with
2 KB and 20 KB prompts, against the shipped artifact; then timed again by stage
(features, rows, onnxruntime, the rest) by wrapping the functions decide calls.
Part 2 (processes): the emulator and the proxy; 32 concurrent streams with
`"model": "auto"` and with a named model, alternating, time to first chunk compared.

With `--baseline CHECKOUT` (another checkout of the project, e.g. the previous
release), part 1 times that checkout's `decide` with its own shipped artifact and
this one's, each in a fresh subprocess, alternating (two rounds each, the better kept
on either side): machines drift between runs, so a ratio is only meaningful within one.
With `--learned`, part 1 decides (on both sides) with evidence for every kind of
prompt and candidate, as a proxy that has learned from its traffic for a while does.

    python -m benchmarks.decision_bench [--quick] [--learned] [--baseline ../previous-checkout]
        [--port 18534]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import servers
from benchmarks.servers import PY, check_alive, ensure_free, loadgen, wait_ready
from proxy.auto import AutoRouter
from proxy.backends import BackendPool
from proxy.cli import freeze_loaded
from proxy.config import Config
from proxy.config_serving import Backend
from proxy.emulator.catalog import CATALOG
from proxy.registry import ModelInfo, Registry, model_info
from selector_model import artifact as artifact_module
from selector_model import features
from selector_model.artifact import Artifact
from selector_model.features import Candidate
from selector_model.scorer import Scorer


def catalogue(n: int) -> dict[str, ModelInfo]:
    """n generation models from the emulator's catalogue, with size variants beyond it."""
    base = [spec for spec in CATALOG if "completion" in spec.capabilities]
    models: dict[str, ModelInfo] = {}
    i = 0
    while len(models) < n:
        spec = base[i % len(base)]
        name = spec.name if i < len(base) else f"{spec.name.split(':')[0]}-v{i}:latest"
        tag = {
            "details": {
                "family": spec.family,
                "parameter_size": spec.parameter_size,
                "quantization_level": spec.quantization_level,
            }
        }
        show = {
            "capabilities": list(spec.capabilities),
            "model_info": {"x.context_length": spec.context_length},
        }
        models[name] = model_info(name, tag, show)
        i += 1
    return models


def prompt(size: int) -> dict[str, Any]:
    text = (
        "Refactor this function and explain the bug:\n```python\ndef f(x):\n    return x + 1\n```\n"
    )
    filler = "The quick brown fox jumps over the lazy dog. " * (size // 45 + 1)
    return {
        "model": "auto",
        "messages": [
            {"role": "system", "content": "You are a careful senior engineer."},
            {"role": "user", "content": (text + filler)[:size]},
        ],
    }


def configurations() -> Iterator[tuple[AutoRouter, int, int, dict[str, Any]]]:
    """The proxy's AutoRouter with the shipped artifact, set up for each case in turn
    (4, 9 and 16 candidates, each with a 2 KB and a 20 KB conversation) from a registry
    the bench fills itself: no backend is ever contacted."""
    config = Config(backends=(Backend(url="http://127.0.0.1:9"),))
    pool = BackendPool(config)
    registry = Registry(pool)
    auto = AutoRouter(config, pool, registry)
    if not auto.scorer.reload():
        raise SystemExit(f"no usable shipped artifact: {auto.scorer.error}")
    for n in (4, 9, 16):
        registry.set_models(catalogue(n))
        pool.states[0].models = frozenset(registry.models)
        for size in (2048, 20480):
            yield auto, n, size, prompt(size)


async def decision_latency(rounds: int) -> list[tuple[int, int, float, float]]:
    results = []
    for auto, n, size, body in configurations():
        for _ in range(200):  # warm up
            auto.decide("/api/chat", body, "balanced")
        freeze_loaded()  # the garbage collector's state as `autoroute serve` leaves it
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            auto.decide("/api/chat", body, "balanced")
            samples.append(time.perf_counter() - t0)
        samples.sort()
        results.append(
            (n, size, samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6)
        )
    return results


STAGES = ("features", "rows", "ort")


@contextlib.contextmanager
def timed_stages(spent: dict[str, float]) -> Iterator[None]:
    """Wrap what `AutoRouter.decide` calls for the request features, the candidate rows
    and onnxruntime, adding each call's seconds to `spent`: a decide timed by stage on
    its own path and data (the wrappers' own cost, about a microsecond, lands in the
    rest)."""
    originals = (features.request_features, Scorer.batch, Artifact.predict)
    request_features, batch, predict = originals
    clock = time.perf_counter

    def timed_features(path: str, body: Mapping[str, Any]) -> list[float]:
        t0 = clock()
        try:
            return request_features(path, body)
        finally:
            spent["features"] += clock() - t0

    def timed_batch(
        artifact: Artifact, request: Sequence[float], candidates: Sequence[Candidate]
    ) -> np.ndarray:
        t0 = clock()
        try:
            return batch(artifact, request, candidates)
        finally:
            spent["rows"] += clock() - t0

    def timed_predict(self: Artifact, rows: np.ndarray) -> np.ndarray:
        t0 = clock()
        try:
            return predict(self, rows)
        finally:
            spent["ort"] += clock() - t0

    features.request_features = timed_features
    Scorer.batch = staticmethod(timed_batch)  # type: ignore[method-assign]
    Artifact.predict = timed_predict  # type: ignore[method-assign]
    try:
        yield
    finally:
        features.request_features = request_features
        Scorer.batch = staticmethod(batch)  # type: ignore[method-assign]
        Artifact.predict = predict  # type: ignore[method-assign]


async def decision_breakdown(rounds: int) -> list[tuple[int, int, dict[str, float]]]:
    """Median µs per stage of `AutoRouter.decide`, and of the rest (hard filters,
    telemetry, policy, the decision), for each configuration."""
    results = []
    for auto, n, size, body in configurations():
        samples: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "rest")}
        with timed_stages(spent := dict.fromkeys(STAGES, 0.0)):
            for i in range(rounds + 100):  # the first 100 warm up
                for stage in STAGES:
                    spent[stage] = 0.0
                t0 = time.perf_counter()
                auto.decide("/api/chat", body, "balanced")
                total = time.perf_counter() - t0
                if i >= 100:
                    for stage in STAGES:
                        samples[stage].append(spent[stage])
                    samples["rest"].append(total - sum(spent.values()))
        results.append(
            (n, size, {stage: statistics.median(v) * 1e6 for stage, v in samples.items()})
        )
    return results


def end_to_end(seconds: float, rounds: int, port: int) -> tuple[list[float], list[float]]:
    emu_port, proxy_port = port, port + 1
    ensure_free(emu_port, proxy_port)
    procs = [
        servers.emulator(emu_port, "--chunk-ms", "5"),
        servers.proxy(
            proxy_port,
            {"AUTOROUTE_CONFIG": os.devnull, "AUTOROUTE_BACKENDS": f"http://127.0.0.1:{emu_port}"},
        ),
    ]
    try:
        wait_ready(emu_port)
        wait_ready(proxy_port)
        time.sleep(1.0)  # the registry's first refresh
        named: list[float] = []
        auto: list[float] = []
        for _ in range(rounds):
            for model, sink in (("qwen2.5:7b", named), ("auto", auto)):
                result = loadgen(proxy_port, 32, seconds, model=model)
                ttfc = result["ttfc"]
                assert isinstance(ttfc, list) and not result["errors"], result["errors"]
                sink.extend(ttfc)
        check_alive()
        return named, auto
    finally:
        servers.stop(procs, 10)


Latency = list[tuple[int, int, float, float]]


def learned_code(module: str) -> str:
    """Code that makes `module`'s `configurations` (this benchmark's, in this checkout
    or another whose benchmark predates this) give routers holding evidence for every
    kind of prompt and candidate; run before `decision_latency`."""
    return f"import importlib\nbench = importlib.import_module({module!r})\n" + _LEARNED


_LEARNED = """
from selector_model.kind import KINDS
_configurations = bench.configurations
def _learned():
    for auto, n, size, body in _configurations():
        for kind in KINDS:
            for name in auto.registry.models:
                auto.evidence.update(kind, name, 0.5, 0.6, 20.0)
        yield auto, n, size, body
bench.configurations = _learned
"""


def baseline_latency(checkout: str, rounds: int, learned: bool = False) -> Latency:
    """`decision_latency` of a checkout, with its own code and shipped artifact, in a
    subprocess (`learned`: with `learned_code` run first)."""
    code = (
        (learned_code("benchmarks.decision_bench") if learned else "")
        + "import asyncio, json\n"
        + "from benchmarks.decision_bench import decision_latency\n"
        + f"print(json.dumps(asyncio.run(decision_latency({rounds}))))\n"
    )
    out = subprocess.run(
        [PY, "-c", code],
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": os.path.abspath(checkout)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [(int(n), int(s), float(a), float(b)) for n, s, a, b in json.loads(out)]


def _better(runs: list[Latency]) -> Latency:
    """Per configuration, the lowest p50 and p99 over the runs."""
    return [
        (n, size, min(r[i][2] for r in runs), min(r[i][3] for r in runs))
        for i, (n, size, _, _) in enumerate(runs[0])
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--baseline", default="", help="another checkout whose decide is timed alongside"
    )
    parser.add_argument(
        "--learned", action="store_true", help="decide with evidence for every kind and model"
    )
    parser.add_argument("--port", type=int, default=18534, help="first of part 2's two ports")
    args = parser.parse_args()
    if args.learned:
        exec(learned_code(__name__), {})  # the same set-up as in a baseline's subprocess
    art = artifact_module.load(artifact_module.SHIPPED)
    print(f"artifact {art.version}: {len(art.known_models)} known models, {art.width} features")
    rounds = 500 if args.quick else 3000
    ours: list[Latency] = []
    theirs: list[Latency] = []
    for _ in range(2 if args.baseline else 1):
        if args.baseline:
            # Both sides in a fresh subprocess each, alike: in this process the
            # collector and the caches would hold more than in theirs.
            theirs.append(baseline_latency(args.baseline, rounds, args.learned))
            here = str(Path(__file__).resolve().parent.parent)
            ours.append(baseline_latency(here, rounds, args.learned))
        else:
            ours.append(asyncio.run(decision_latency(rounds)))
    base = {(n, size): (p50, p99) for n, size, p50, p99 in _better(theirs)} if theirs else {}
    print(f"{'candidates':>10} {'prompt':>7} {'p50 µs':>8} {'p99 µs':>8}  target")
    for n, size, p50, p99 in _better(ours):
        target = {(9, 2048): 250.0, (16, 20480): 500.0}.get((n, size))
        mark = f"p99 <= {target:.0f} µs {'met' if p99 <= target else 'MISSED'}" if target else ""
        if (n, size) in base:
            b50, b99 = base[(n, size)]
            mark += (
                f"  baseline p50 {b50:.1f} p99 {b99:.1f}: x{p50 / b50:.2f} / x{p99 / b99:.2f}"
                f" (target <= x1.25: {'met' if max(p50 / b50, p99 / b99) <= 1.25 else 'MISSED'})"
            )
        print(f"{n:>10} {size // 1024:>5}KB {p50:>8.1f} {p99:>8.1f}  {mark}")
    print("p50 µs by stage (rest: hard filters, telemetry, policy, the decision):")
    print(f"{'candidates':>10} {'prompt':>7} {'features':>8} {'rows':>8} {'ort':>8} {'rest':>8}")
    for n, size, stages in asyncio.run(decision_breakdown(300 if args.quick else 1000)):
        print(
            f"{n:>10} {size // 1024:>5}KB"
            + "".join(f" {stages[stage]:>8.1f}" for stage in (*STAGES, "rest"))
        )
    named, auto = end_to_end(2.0 if args.quick else 6.0, 1 if args.quick else 3, args.port)
    named.sort()
    auto.sort()
    p50n, p50a = named[len(named) // 2] * 1000, auto[len(auto) // 2] * 1000
    print(
        f"32 streams through the proxy: ttfc p50 named {p50n:.3f} ms, auto {p50a:.3f} ms,"
        f" added by auto {p50a - p50n:+.3f} ms (target <= 0.5 ms:"
        f" {'met' if p50a - p50n <= 0.5 else 'MISSED'}); streams {len(named)} / {len(auto)}"
    )


if __name__ == "__main__":
    main()

"""`auto` through `autoroute serve` on fleets of names no catalogue lists, as an outsider's
fleet is: a small one (5 models) and a large one (40), each served by `autoroute
emulate --models`, which describes every such name as Ollama would (its size from the
tag, its architecture from its first word). Every profile answers every kind of request
(code, maths, knowledge, instructions, tools, images, `think`); each answer is checked
for its shape (200, the served model named alike in its body and `X-Autoroute-Model`, an
`X-Request-Id`, a model that lists what the request needs), and the proxy's own decision
time (`autoroute_decision_seconds` on /metrics) is printed per fleet and as the ratio of
the large fleet's to the small one's, measured in the same run. No target: the ratio
says how the decision grows with the fleet. The emulator serves every size at one
speed, so once a large model has answered it is measured as quick as a small one:
`auto:fast`'s choices after the first round say nothing of speed.

    python -m benchmarks.unknown_fleets [--quick] [--port 19300]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import time
import urllib.request
from typing import Any

import httpx

from benchmarks import servers
from benchmarks.servers import check_alive, ensure_free, wait_ready
from tests.support import PIXEL_PNG

PROFILES = ("auto", "auto:best", "auto:fast")
_TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
KINDS: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("code", {"content": "Write a Python function that merges two sorted lists."}, ""),
    ("maths", {"content": "Find every real root of x^3 - 6x^2 + 11x - 6 and prove it."}, ""),
    ("knowledge", {"content": "Who wrote the Book of Kells, and when?"}, ""),
    ("instructions", {"content": "Answer in exactly three lowercase words: sky colour?"}, ""),
    ("tools", {"content": "Weather in Paris?"}, "tools"),
    ("images", {"content": "What is this?", "images": [PIXEL_PNG]}, "vision"),
    ("think", {"content": "Is 221 prime?"}, "thinking"),
)
# A coder, a 70B, a tool caller, a seeing model and a thinker, as the emulator reads
# their names.
SMALL = (
    "acme-coder:7b",
    "team-llama:70b",
    "own-mistral-instruct:7b",
    "nova-llava:8b",
    "team-r1:8b",
)
_WORDS = ("acme", "team", "mycorp", "own", "lab", "corp", "zeta", "nova")
_LINES = ("llama", "qwen", "gemma", "mistral", "phi", "granite", "llava", "r1", "embed")
_KINDS_OF = ("", "-coder", "-chat", "-instruct", "-tune")
_SIZES = ("1b", "3b", "7b", "8b", "14b", "32b", "70b")


def large() -> tuple[str, ...]:
    """Forty names no catalogue lists: tunes named after nine lines, of five kinds, at
    sizes from 1B to 70B."""
    names = []
    for i in range(40):
        word, line = _WORDS[i % len(_WORDS)], _LINES[i % len(_LINES)]
        kind = "" if line == "embed" else _KINDS_OF[i % len(_KINDS_OF)]
        size = "335m" if line == "embed" else _SIZES[(3 * i) % len(_SIZES)]
        names.append(f"{word}-{line}{kind}:{size}")
    return tuple(names)


def decision_seconds(port: int) -> tuple[float, int]:
    """The sum and count of the proxy's `autoroute_decision_seconds`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^autoroute_decision_seconds_(sum|count) (\S+)$", text, re.M)
    }
    return found.get("sum", 0.0), int(found.get("count", 0))


def run_fleet(names: tuple[str, ...], port: int, rounds: int) -> dict[str, Any]:
    emu_port, proxy_port = port, port + 1
    ensure_free(emu_port, proxy_port)
    backend = f"http://127.0.0.1:{emu_port}"
    procs = [
        servers.emulator(emu_port, "--models", ",".join(names), "--chunk-ms", "1"),
        servers.proxy(proxy_port, {"AUTOROUTE_CONFIG": os.devnull, "AUTOROUTE_BACKENDS": backend}),
    ]
    try:
        wait_ready(emu_port)
        wait_ready(proxy_port)
        with httpx.Client(base_url=f"http://127.0.0.1:{proxy_port}", timeout=120) as client:
            shown = {
                m["name"]: set(m.get("capabilities") or ())
                for m in httpx.get(backend + "/api/tags").json()["models"]
            }
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                doc = client.post(
                    "/api/autoroute/explain",
                    json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
                ).json()
                if len(doc.get("ranking", [])) + len(doc.get("filtered", {})) >= len(names):
                    break
                time.sleep(0.2)
            before = decision_seconds(proxy_port)
            chosen: dict[str, collections.Counter[str]] = collections.defaultdict(
                collections.Counter
            )
            refused: collections.Counter[str] = collections.Counter()
            for _ in range(rounds):
                for kind, message, needs in KINDS:
                    for profile in PROFILES:
                        body = {
                            "model": profile,
                            "messages": [{"role": "user", **message}],
                            "stream": False,
                            "options": {"num_predict": 8},
                            **({"tools": _TOOLS} if needs == "tools" else {}),
                            **({"think": True} if needs == "thinking" else {}),
                        }
                        resp = client.post("/api/chat", json=body)
                        if (
                            resp.status_code == 400
                            and needs
                            and not any(needs in caps for caps in shown.values())
                        ):
                            refused[kind] += 1  # no model of the fleet offers it
                            continue
                        assert resp.status_code == 200, (kind, profile, resp.text)
                        model = resp.headers["X-Autoroute-Model"]
                        assert resp.json()["model"] == model, (kind, profile)
                        assert resp.headers["X-Request-Id"], (kind, profile)
                        assert {"completion", needs} - {""} <= shown[model], (kind, model)
                        chosen[f"{kind} {profile}"][model] += 1
            after = decision_seconds(proxy_port)
        check_alive(emu_port, proxy_port)
    finally:
        servers.stop(procs, 10)
    spent, count = after[0] - before[0], after[1] - before[1]
    return {"mean": spent / max(count, 1), "count": count, "chosen": chosen, "refused": refused}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--port", type=int, default=19300, help="first of the four ports used")
    args = parser.parse_args()
    rounds = 1 if args.quick else 5
    results = {}
    for label, names, port in (("5", SMALL, args.port), ("40", large(), args.port + 2)):
        results[label] = found = run_fleet(names, port, rounds)
        print(f"fleet of {label}: {found['count']} decisions, mean {found['mean'] * 1e6:.0f} µs")
        for request, models in sorted(found["chosen"].items()):
            print(f"  {request:<24} " + ", ".join(f"{m} x{n}" for m, n in models.most_common()))
        for kind, n in sorted(found["refused"].items()):
            print(f"  {kind:<24} refused x{n} (no model of the fleet offers it)")
    ratio = results["40"]["mean"] / max(results["5"]["mean"], 1e-9)
    print(f"decision time, 40 models / 5 models: {ratio:.2f}x (8 times the candidates)")


if __name__ == "__main__":
    main()

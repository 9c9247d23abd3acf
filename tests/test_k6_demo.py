"""`benchmarks.k6_demo` starts servers of its own run and points k6 at them."""

from __future__ import annotations

import sys
import urllib.request
from typing import Any

import orjson
import pytest

from benchmarks import k6_demo
from proxy.cli import DEMO_BACKENDS
from tests.support import free_port

# What k6 would run against, per script: (script, base URL, the models listed there).
Asked = list[tuple[str, str, list[str]]]


def test_two_runs_at_once_each_start_and_measure_servers_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second run while one is running (as beside `autoroute demo --backend-ports
    11501,11502`): each run's emulated backends take ports the system gives, so
    neither refuses to start for a port the other holds, and each run's k6 is pointed
    at its own proxy and its own first backend."""
    asked: Asked = []

    def k6(script: str, base: str, env: dict[str, str]) -> tuple[int, dict[str, float]]:
        """k6's stand-in: reads the model list of the server k6 would load."""
        with urllib.request.urlopen(base + "/api/tags", timeout=30) as answer:
            names = sorted(m["name"] for m in orjson.loads(answer.read())["models"])
        asked.append((script, base, names))
        return 0, {"requests": 1.0, "failed": 0.0, "ttfb_p50_ms": 0.0, "ttfb_p95_ms": 0.0}

    first_run = k6_demo.scripts

    def scripts(*given: Any) -> int:
        if len(asked) == 1:  # the first run, its servers up: a second run starts and ends
            monkeypatch.setattr(sys, "argv", _argv())
            assert k6_demo.main() == 0
        return first_run(*given)

    monkeypatch.setattr(k6_demo, "run", k6)
    monkeypatch.setattr(k6_demo, "scripts", scripts)
    monkeypatch.setattr(sys, "argv", _argv())
    assert k6_demo.main() == 0
    # Per run: the warm-up through the proxy, passthrough direct, then through the proxy.
    assert [script for script, _, _ in asked] == ["passthrough"] * 6
    second, first = asked[1:4], [asked[0], *asked[4:]]
    for run in (first, second):
        proxy, direct = run[0][1], run[1][1]
        assert [base for _, base, _ in run] == [proxy, direct, proxy]
        assert run[1][2] == sorted(DEMO_BACKENDS[0][1])  # gpu-a
        assert set(run[0][2]) >= {m for _, models in DEMO_BACKENDS for m in models}
    assert {first[0][1], first[1][1]}.isdisjoint({second[0][1], second[1][1]})


def _argv() -> list[str]:
    return ["k6_demo", "--port", str(free_port()), "--only", "passthrough"]

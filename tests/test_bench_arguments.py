"""A benchmark reads its arguments before it starts anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_usage_fault_probe_help_lists_its_scenarios() -> None:
    """`--help` was taken for a scenario's name: a database and a broker were made for it,
    then a KeyError's traceback (exit 1)."""
    result = _run("benchmarks.usage_fault_probe", "--help")
    assert result.returncode == 0, result.stderr
    for scenario in ("pg", "kafka", "sigterm", "sigterm-spool", "backend"):
        assert scenario in result.stdout


@pytest.mark.parametrize("argv", [["nosuch"], ["pg", "nosuch"]])
def test_usage_fault_probe_refuses_an_unknown_scenario(argv: list[str]) -> None:
    result = _run("benchmarks.usage_fault_probe", *argv)
    assert result.returncode == 2
    assert "invalid choice: 'nosuch'" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_fault_probe_runs_every_scenario_when_it_names_none() -> None:
    from benchmarks.usage_fault_probe import SCENARIOS, scenarios

    assert scenarios([]) == list(SCENARIOS)
    assert scenarios(["backend", "pg"]) == ["backend", "pg"]

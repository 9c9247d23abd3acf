"""Profiling: the suite, its graders and sandbox, the profile store, the emulator's
profiling hook, `autoroute profile` end to end, and idle-time profiling in the proxy."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from proxy.config import Config
from proxy.config_selector import Selector
from proxy.config_serving import Backend, Health
from proxy.emulator import EmulatorSettings
from proxy.emulator.catalog import REGISTRY
from proxy.emulator.skills import suite_answer
from proxy.profiler import IdleProfiler, ProfileError, find_backend, missing_areas, profile
from selector_model.catalog import Catalog
from selector_model.catalog.knowledge import AREAS, Measured
from selector_model.profiling import store
from selector_model.profiling.graders import (
    extract_choice,
    extract_code,
    extract_number,
    grade,
    grade_code,
)
from selector_model.profiling.suite import SuiteError, load, parse
from tests.support import Emulator, Proxy, ServerThread

ROOT = Path(__file__).resolve().parent.parent
SUITE = load()
ITEMS = {item.id: item for item in SUITE.items}
STRONG, WEAK = "llama3.3:70b", "mistral:7b"


def item(ident: str) -> Any:
    return ITEMS[ident]


# The suite ------------------------------------------------------------------------


def test_suite_has_eight_to_twelve_items_in_every_area() -> None:
    assert SUITE.version == "1"
    assert SUITE.areas() == AREAS
    for area in AREAS:
        assert 8 <= len(SUITE.select((area,))) <= 12, area
    kinds = {i.kind for i in SUITE.items}
    assert kinds == {"choice", "number", "code", "instruction"}


@pytest.mark.parametrize("ident", sorted(ITEMS))
def test_reference_answers_pass_and_emulated_prose_fails(ident: str) -> None:
    """Each item can be passed, and the emulator's wrong answer (skill 0) is wrong."""
    it = ITEMS[ident]
    assert grade(it, it.reference_answer()).passed
    unskilled = dataclasses.replace(REGISTRY[WEAK], skills=((it.area, 0.0),))
    wrong = suite_answer(unskilled, it.prompt)
    assert wrong is not None and wrong != it.reference_answer()
    assert not grade(it, wrong).passed


def test_suite_file_errors_name_the_item() -> None:
    base = yaml.safe_load((ROOT / "selector_model/profiling/suite_v1.yaml").read_text())
    bad_check = {**base, "items": [{**base["items"][-1], "checks": {"shout": True}}]}
    with pytest.raises(SuiteError, match="instruction-10: unknown check"):
        parse(bad_check)
    no_answer = {**base, "items": [{k: v for k, v in base["items"][0].items() if k != "answer"}]}
    with pytest.raises(SuiteError, match="knowledge-01: choice item needs"):
        parse(no_answer)
    twice = {**base, "items": [base["items"][0], base["items"][0]]}
    with pytest.raises(SuiteError, match="used twice"):
        parse(twice)
    with pytest.raises(SuiteError, match="unknown area"):
        SUITE.select(("poetry",))


# Graders -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("17 * 23 = 391, minus 48.\nAnswer: 343", 343.0),
        ("The sum is 11,325.\nAnswer: 11,325", 11325.0),
        ("So x = \u221212.", -12.0),
        ("Final price: $36.72", 36.72),
        ("Thus \\boxed{42} is the next term, not 30.", 42.0),
        ("Answer: 3/28", 3 / 28),
        ("<think>maybe 7</think>It is 9.", 9.0),
        ("First 5, then 6.", 6.0),
        ("To answer this, add 2 and 3: that makes 5.", 5.0),
        ("I do not know.", None),
    ],
)
def test_extract_number(text: str, value: float | None) -> None:
    got = extract_number(text)
    assert got == pytest.approx(value) if value is not None else got is None


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("Nitrogen is most common.\nAnswer: B", "B"),
        ("The answer is (C).", "C"),
        ("**Answer:** D", "D"),
        ("A", "A"),
        ("(b)", "B"),
        ("Let me see.\nC) Mitochondrion", "C"),
        ("The answer is a matter of taste.", None),
        ("To answer A first: no.\nB) Nitrogen", "B"),
        ("I cannot decide.", None),
    ],
)
def test_extract_choice(text: str, letter: str | None) -> None:
    assert extract_choice(text) == letter


def test_choice_and_number_grades() -> None:
    assert grade(item("knowledge-01"), "Answer: B").passed
    assert not grade(item("knowledge-01"), "Answer: A").passed
    assert grade(item("math-10"), "3/8 * 2/7 = 3/28, about 0.1071.\nAnswer: 0.1071").passed
    assert grade(item("math-10"), "Answer: 3/28").passed  # within the tolerance
    assert not grade(item("math-10"), "Answer: 0.11").passed
    assert grade(item("math-03"), "Answer: x = -12").passed
    assert not grade(item("math-03"), "Answer: 12").passed
    assert "no number" in grade(item("math-03"), "no idea").detail


def test_extract_code_prefers_the_block_defining_the_function() -> None:
    text = "Usage:\n```\nprint(f(1))\n```\nCode:\n```python\ndef f(x):\n    return x\n```\n"
    assert extract_code(text, "f") == "def f(x):\n    return x\n"
    assert extract_code("def f(x):\n    return x", "f") == "def f(x):\n    return x"
    assert extract_code("no code here", "f") is None


def test_code_grader_runs_the_tests() -> None:
    it = item("code-03")
    right = "```python\ndef second_largest(nums):\n    s = sorted(set(nums))\n    return s[-2] if len(s) > 1 else None\n```"  # noqa: E501
    wrong = "```python\ndef second_largest(nums):\n    return sorted(nums)[-2]\n```"
    assert grade(it, right).passed
    failed = grade(it, wrong)
    assert not failed.passed and "Error" in failed.detail


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("while True:\n    pass", "timed out"),
        ("import socket\nsocket.create_connection(('127.0.0.1', 9))", "sandbox: socket"),
        ("import os\nos.system('true')", "sandbox: os.system"),
        ("import subprocess\nsubprocess.run(['true'])", "sandbox: subprocess"),
        ("open('/tmp/autoroute-profiling-escape', 'w').write('x')", "outside the work"),
        ("x = bytearray(4 << 30)", "MemoryError"),
    ],
)
def test_code_sandbox_refuses(body: str, why: str) -> None:
    it = item("code-01")
    code = f"def is_palindrome(s):\n    return True\n{body}\n"
    result = grade_code(it, f"```python\n{code}```", timeout=3.0)
    assert not result.passed
    assert why in result.detail
    assert not Path("/tmp/autoroute-profiling-escape").exists()


def test_code_may_use_its_own_directory() -> None:
    it = item("code-01")
    code = (
        "open('scratch.txt', 'w').write('ok')\n"
        "def is_palindrome(s):\n"
        "    t = [c.lower() for c in s if c.isalnum()]\n"
        "    return t == t[::-1]\n"
    )
    assert grade_code(it, f"```python\n{code}```").passed


@pytest.mark.parametrize(
    ("ident", "right", "wrong"),
    [
        ("instruction-01", "- a\n- b\n- c", "- a\n- b\n- c\n- d"),
        ("instruction-01", "* one\n* two\n* three", "Here you go:\n- a\n- b\n- c"),
        ("instruction-02", "the sea is deep and wide.", "The sea is deep and wide."),
        ("instruction-03", "An index speeds each lookup of rows.", "An index speeds up reads."),
        ("instruction-04", '{"name": "Ann", "age": 3}', '```json\n{"name": "Ann", "age": 3}\n```'),
        ("instruction-04", '{"age": 30, "name": "Bo"}', '{"name": "Bo", "age": "30"}'),
        ("instruction-04", '{"name": "Bo", "age": 30}', '{"name": "Bo", "age": 30, "x": 1}'),
        ("instruction-05", "RIDE ON!", "Ride on, rider!"),
        ("instruction-06", "red, green, blue, violet", "red, green, blue"),
        ("instruction-06", "red, green, blue, violet", "red, green\nblue, violet"),
        ("instruction-07", "Cold wind blows all day.", "Cold winter wind blows."),
        ("instruction-08", "<<Sleep Well>>", "Title: <<Sleep Well>>"),
        ("instruction-09", "Tea is old.\n\nHowever, it is good.", "Tea is old.\nHowever, good."),
        ("instruction-09", "Tea is old.\n\nHowever, it is good.", "Tea.\n\nBut it is good."),
        (
            "instruction-10",
            "Plants make sugar. Is there anything else I can help with?",
            "Plants make sugar. Is there anything else I can help with? Bye.",
        ),
    ],
)
def test_instruction_checks(ident: str, right: str, wrong: str) -> None:
    it = item(ident)
    assert grade(it, right).passed
    failed = grade(it, wrong)
    assert not failed.passed and failed.detail.startswith("failed ")


# The store -----------------------------------------------------------------------


def _result(score: float, date: str = "2026-01-01T00:00:00Z") -> store.AreaResult:
    return store.AreaResult(score, 10, "1", date, "http://gpu:11434")


def test_store_merges_areas_and_models(tmp_path: Path) -> None:
    path = tmp_path / "state" / "profiles.json"
    assert store.load_results(path) == {}
    store.save(path, "Qwen3:8B", {"math": _result(0.8), "code": _result(0.5)})
    store.save(path, "qwen3:8b", {"code": _result(0.6)})
    store.save(path, "phi4", {"knowledge": _result(0.7)})
    assert store.load_results(path) == {
        "qwen3:8b": {"math": Measured(0.8, 10), "code": Measured(0.6, 10)},
        "phi4:latest": {"knowledge": Measured(0.7, 10)},
    }
    doc = orjson.loads(path.read_bytes())
    assert doc["qwen3:8b"]["code"] == {
        "score": 0.6,
        "n": 10,
        "suite_version": "1",
        "date": "2026-01-01T00:00:00Z",
        "backend": "http://gpu:11434",
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["profiles.json", "profiles.json.lock"]


def test_store_reads_past_bad_entries_and_files(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    path.write_text("{not json")
    assert store.load_results(path) == {}
    good = {"score": 0.5, "n": 8, "suite_version": "1"}
    path.write_text(
        orjson.dumps(
            {
                "a:1": {
                    "math": good,
                    "code": {"score": 7, "n": 1, "suite_version": "1"},
                    "poetry": good,
                    "knowledge": {"score": 0.5},
                    "reasoning": {"score": 0.5, "n": 0, "suite_version": "1"},
                },
                "b:1": 3,
            }
        ).decode()
    )
    assert store.load_results(path) == {"a:1": {"math": Measured(0.5, 8)}}


def test_store_cache_reads_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    cache = store.StoreCache(path)
    assert cache.scores("m:1") == {}
    store.save(path, "m:1", {"math": _result(0.25)})
    assert cache.scores("m:1") == {"math": 0.25}
    store.save(path, "m:1", {"math": _result(0.75), "code": _result(1.0)})
    assert cache.scores("M:1") == {"math": 0.75, "code": 1.0}
    path.unlink()
    assert cache.results() == {}


def test_missing_areas_counts_only_the_current_suite_version() -> None:
    old = dataclasses.replace(_result(0.9), suite_version="0")
    results = {"m:1": {"math": _result(0.5), "code": old}}
    assert missing_areas(results, "m:1", SUITE) == ("knowledge", "reasoning", "code", "instruction")
    assert missing_areas({}, "other", SUITE) == AREAS


# The emulator's profiling hook ------------------------------------------------------


def test_emulated_skill_is_deterministic_and_separates_models() -> None:
    answers = {
        model: [suite_answer(REGISTRY[model], i.prompt) for i in SUITE.items]
        for model in (STRONG, WEAK)
    }
    again = [suite_answer(REGISTRY[STRONG], i.prompt) for i in SUITE.items]
    assert answers[STRONG] == again
    right = {
        model: sum(grade(i, a or "").passed for i, a in zip(SUITE.items, texts, strict=True))
        for model, texts in answers.items()
    }
    assert right[STRONG] > right[WEAK] > 0
    assert suite_answer(REGISTRY[STRONG], "Hello there") is None
    assert suite_answer(REGISTRY["nomic-embed-text:latest"], SUITE.items[0].prompt) is None


async def _chat(url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/api/chat", json=body) as resp,
    ):
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
        return doc


@pytest.fixture
def quick_emulator(servers: ServerThread) -> Iterator[Emulator]:
    emu = Emulator(servers, EmulatorSettings(chunk_delay_ms=0.0, frozen_clock=True))
    yield emu
    emu.stop()


async def test_emulator_answers_suite_prompts_on_the_wire(quick_emulator: Emulator) -> None:
    it = item("code-07")
    skilled = dataclasses.replace(REGISTRY[STRONG], skills=(("code", 1.0),))
    quick_emulator.state.store[STRONG] = skilled
    body = {
        "model": STRONG,
        "messages": [{"role": "user", "content": it.prompt}],
        "stream": False,
        "options": {"temperature": 0, "num_predict": 1024},
    }
    doc = await _chat(quick_emulator.url, body)
    assert doc["message"]["content"] == it.reference_answer()
    assert doc["done_reason"] == "stop"
    cut = await _chat(quick_emulator.url, {**body, "options": {"num_predict": 5}})
    assert cut["done_reason"] == "length" and cut["eval_count"] == 5
    # Any other prompt: the usual emulated text, reaching num_predict.
    other = {**body, "messages": [{"role": "user", "content": "Hello there"}]}
    plain = await _chat(quick_emulator.url, other)
    assert plain["done_reason"] == "length" and plain["eval_count"] == 1024


# `autoroute profile` end to end ---------------------------------------------------------


def _autoroute(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("AUTOROUTE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _config(tmp_path: Path, backend: str) -> Path:
    path = tmp_path / "config.yaml"
    doc = {
        "backends": [backend],
        "selector": {"profiles_path": str(tmp_path / "state" / "profiles.json")},
        "logging": {"json": False},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _mean(areas: dict[str, float]) -> float:
    return sum(areas.values()) / len(areas)


async def test_profile_command_stores_results_shown_in_status_and_explain(
    servers: ServerThread, quick_emulator: Emulator, tmp_path: Path
) -> None:
    config = _config(tmp_path, quick_emulator.url)
    strong = await asyncio.to_thread(
        _autoroute, "profile", STRONG, "--config", str(config), cwd=tmp_path
    )
    assert strong.returncode == 0, strong.stderr
    assert f"on {quick_emulator.url}" in strong.stdout  # found through the config's backends
    weak = await asyncio.to_thread(
        _autoroute,
        "--config",
        str(config),
        "profile",
        WEAK,
        "--backend",
        quick_emulator.url,
        "--areas",
        "math",
        "code",
        cwd=tmp_path,
    )
    assert weak.returncode == 0, weak.stderr
    path = tmp_path / "state" / "profiles.json"
    results = store.load_results(path)
    assert set(results[STRONG]) == set(AREAS)
    assert set(results[WEAK]) == {"math", "code"}
    doc = orjson.loads(path.read_bytes())
    entry = doc[STRONG]["math"]
    assert entry["n"] == 10 and entry["suite_version"] == "1"
    assert entry["backend"] == quick_emulator.url and entry["date"].endswith("Z")
    assert quick_emulator.state.requests["/api/chat"] == 50 + 20

    # The rest of the weak model's areas: a stronger model profiles higher overall.
    rest = await asyncio.to_thread(
        _autoroute,
        "profile",
        WEAK,
        "--config",
        str(config),
        "--areas",
        "knowledge",
        "reasoning",
        "instruction",
        cwd=tmp_path,
    )
    assert rest.returncode == 0, rest.stderr
    results = {
        model: {area: m.score for area, m in areas.items()}
        for model, areas in store.load_results(path).items()
    }
    assert set(results[WEAK]) == set(AREAS)
    assert _mean(results[STRONG]) > _mean(results[WEAK])
    # The emulator gets round(skill * 10) items of each area right: grading the answers
    # through the wire measures exactly the skills it was given.
    for model in (STRONG, WEAK):
        assert results[model] == pytest.approx(dict(REGISTRY[model].skills), abs=0.051)

    selector = Selector(artifact=str(tmp_path / "missing.onnx"), profiles_path=str(path))
    prx = Proxy(servers, [quick_emulator.url], selector=selector)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(prx.url + "/api/autoroute/status") as resp:
                status = await resp.json()
            body = {"model": "auto", "messages": [{"role": "user", "content": "Hi"}]}
            async with session.post(prx.url + "/api/autoroute/explain", json=body) as resp:
                explained = await resp.json()
    finally:
        prx.stop()
    profiling = status["profiling"]
    assert profiling["suite_version"] == "1" and profiling["path"] == str(path)
    assert profiling["models"][STRONG]["code"]["score"] == results[STRONG]["code"]
    assert set(profiling["models"]) == {STRONG, WEAK}
    ranked = {c["model"]: c for c in explained["ranking"]}
    assert ranked[STRONG]["measured"] == results[STRONG]
    assert ranked[WEAK]["measured"] == results[WEAK]
    assert "measured" not in ranked["qwen2.5:7b"]
    # Each measured share's offset onto the catalogue's scale, as `auto` moved it.
    profiled = Catalog.shipped().with_measured(store.load_results(path))
    for model in (STRONG, WEAK):
        offsets = profiled.offsets_of(model)
        assert set(offsets) == set(results[model])
        assert ranked[model]["measured_offset"] == {
            a: round(o.shift, 3) for a, o in offsets.items()
        }
    assert "measured_offset" not in ranked["qwen2.5:7b"]


async def test_profile_command_refuses_before_spending_gpu_time(
    quick_emulator: Emulator, tmp_path: Path
) -> None:
    config = _config(tmp_path, quick_emulator.url)
    bad_area = await asyncio.to_thread(
        _autoroute, "profile", STRONG, "--config", str(config), "--areas", "poetry", cwd=tmp_path
    )
    assert bad_area.returncode == 1 and "unknown area" in bad_area.stderr
    missing = await asyncio.to_thread(
        _autoroute, "profile", "no-such-model:1b", "--config", str(config), cwd=tmp_path
    )
    assert missing.returncode == 1
    assert "no backend has model 'no-such-model:1b'" in missing.stderr
    assert quick_emulator.state.requests["/api/chat"] == 0
    assert not (tmp_path / "state" / "profiles.json").exists()


# Idle-time profiling ------------------------------------------------------------------


async def test_idle_profiler_waits_for_quiet_before_each_prompt(
    quick_emulator: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "profiles.json"
    store.save(path, WEAK, {"math": _result(0.1)})
    selector = Selector(profiles_path=str(path), profile_models=(WEAK,))
    config = Config(backends=(Backend(url=quick_emulator.url),), selector=selector)
    seen_while_busy: list[int] = []
    calls = 0

    def busy() -> bool:
        # Busy on every third look: the profiler must wait it out, prompt after prompt.
        nonlocal calls
        calls += 1
        if calls % 3:
            seen_while_busy.append(quick_emulator.state.requests["/api/chat"])
            return True
        return False

    profiler = IdleProfiler(
        config, busy=busy, backend_for=lambda m: quick_emulator.url, poll_seconds=0.0
    )
    async with aiohttp.ClientSession() as session:
        await profiler.run_once(session)
    # Math was stored already: the 40 prompts of the four other areas, each asked only
    # after a quiet look (two busy looks before each, none with a request under way).
    assert quick_emulator.state.requests["/api/chat"] == 40
    assert seen_while_busy == [n for n in range(40) for _ in range(2)]
    assert set(store.load_results(path)[WEAK]) == set(AREAS)
    assert profiler.profiled == [WEAK]
    async with aiohttp.ClientSession() as session:
        await profiler.run_once(session)  # nothing missing: nothing asked
    assert quick_emulator.state.requests["/api/chat"] == 40


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/api/autoroute/status") as resp:
        doc: dict[str, Any] = orjson.loads(resp.read())
        return doc


async def test_proxy_profiles_listed_models_in_idle_time_and_no_others(
    servers: ServerThread, quick_emulator: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "profiles.json"
    unasked = Proxy(
        servers,
        [quick_emulator.url],
        selector=Selector(profiles_path=str(path)),
        health=Health(interval_seconds=0.2),
    )
    try:
        deadline = time.monotonic() + 60
        while not (await asyncio.to_thread(_status, unasked.url))["candidates"]:
            assert time.monotonic() < deadline, "backend models never listed"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # several idle checks' worth: still nothing asked
        assert quick_emulator.state.requests["/api/chat"] == 0
    finally:
        unasked.stop()

    asked = Proxy(
        servers,
        [quick_emulator.url],
        selector=Selector(profiles_path=str(path), profile_models=("qwen2.5-coder:7b",)),
        health=Health(interval_seconds=0.2),
    )
    try:
        deadline = time.monotonic() + 120
        while len((await asyncio.to_thread(_status, asked.url))["profiling"]["models"]) < 1:
            assert time.monotonic() < deadline, "idle profiling never finished"
            await asyncio.sleep(0.2)
        status = await asyncio.to_thread(_status, asked.url)
    finally:
        asked.stop()
    profiled = status["profiling"]["models"]["qwen2.5-coder:7b"]
    assert set(profiled) == set(AREAS)
    assert status["profiling"]["profile_models"] == ["qwen2.5-coder:7b"]
    assert quick_emulator.state.requests["/api/chat"] == 50


async def test_find_backend_takes_the_first_that_has_the_model(
    servers: ServerThread, quick_emulator: Emulator
) -> None:
    small = Emulator(servers, EmulatorSettings(models=("qwen2.5:7b",)))
    try:
        config = Config(backends=(Backend(url=small.url), Backend(url=quick_emulator.url)))
        async with aiohttp.ClientSession() as session:
            assert await find_backend(session, config, "Qwen2.5:7B") == small.url
            assert await find_backend(session, config, STRONG) == quick_emulator.url
            with pytest.raises(ProfileError, match=f"{small.url}: does not have it"):
                await find_backend(session, config, "phi4:14b")
    finally:
        small.stop()


async def test_a_backend_error_stops_the_run(quick_emulator: Emulator) -> None:
    quick_emulator.state.fault = "error500"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ProfileError, match="answered 500: llama runner process"):
            await profile(session, quick_emulator.url, STRONG, areas=("math",))
        with pytest.raises(ProfileError, match="answered 404: model 'nope:1b' not found"):
            quick_emulator.state.fault = "none"
            await profile(session, quick_emulator.url, "nope:1b", areas=("math",))


async def test_a_profile_records_its_backend_without_the_password(
    quick_emulator: Emulator,
) -> None:
    """The store is read back into /api/autoroute/status (`profiling.models`): a backend
    behind basic auth (`http://user:password@host`) is recorded without its password."""
    secret = "S3cretProfilePw"
    url = quick_emulator.url.replace("http://", f"http://ops:{secret}@")
    async with aiohttp.ClientSession() as session:
        result = await profile(session, url, STRONG, areas=("math",))
    assert result.backend == quick_emulator.url

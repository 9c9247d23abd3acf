"""Warm models that fit the GPU: warm sets kept loaded, memory per backend in the
status, and `auto` counting load time and not evicting a model in use, end to end
against emulator backends."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.auto import AutoRouter
from proxy.backends import BackendPool
from proxy.config import Config, ConfigError
from proxy.config_selector import Profile, Selector, Warm
from proxy.config_serving import Backend, Health
from proxy.emulator import EmulatorSettings
from proxy.keep_alive import keep_alive_seconds
from proxy.memory import expiry_of
from proxy.registry import Registry, model_info
from proxy.warm import Warmer
from tests.conftest import FROZEN
from tests.support import Emulator, Proxy, ServerThread

FAST_HEALTH = Health(interval_seconds=0.2)
TWINS = ("qwen2.5:7b", "qwen2.5-coder:7b")  # same size and quantization: equally good
# A twin's load prior: 0.5 s per GB of 7.6B parameters at 4 bits, x 1.2 for the cache.
TWIN_LOAD_PRIOR = 0.5 * 7.6 * 4 / 8 * 1.2


def selector(tmp_path: Path) -> Selector:
    """No artifact: the size heuristic scores, so equal sizes score equally."""
    return Selector(
        artifact=str(tmp_path / "missing.onnx"),
        profiles={"fast": Profile(cost_weight=0.2), "best": Profile(cost_weight=0.0)},
        default_profile="best",
    )


async def call(method: str, url: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json(content_type=None)


async def until(check: Callable[[], Any], what: str, tries: int = 200) -> Any:
    """Poll `check` (a coroutine function) until it returns something truthy."""
    for _ in range(tries):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def status_of(proxy: Proxy, label: str) -> dict[str, Any]:
    doc = await call("GET", proxy.url + "/api/autoroute/status")
    return next(b for b in doc["backends"] if b["backend"] == label)


async def loaded_on(proxy: Proxy, label: str) -> set[str]:
    return {m["model"] for m in (await status_of(proxy, label))["loaded"]}


async def load(emulator: Emulator, model: str, keep_alive: Any = -1) -> None:
    """Load (or with keep_alive 0 unload) a model on the emulator directly."""
    await call("POST", emulator.url + "/api/generate", {"model": model, "keep_alive": keep_alive})


async def explain(proxy: Proxy, profile: str) -> dict[str, Any]:
    body = {"model": f"auto:{profile}", "prompt": "Say hello", "options": {"num_predict": 8}}
    doc: dict[str, Any] = await call("POST", proxy.url + "/api/autoroute/explain", body)
    return doc


def ranked(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["model"]: entry for entry in doc["ranking"]}


@pytest.fixture
def live_emulator(servers: ServerThread) -> Iterator[Emulator]:
    """A real clock: models expire as their keep_alive says."""
    emu = Emulator(servers, EmulatorSettings(chunk_delay_ms=1.0, models=(*TWINS, "llama3.2:3b")))
    yield emu
    emu.stop()


async def test_warm_set_is_loaded_at_start_and_kept_and_what_does_not_fit_is_not(
    servers: ServerThread, live_emulator: Emulator, tmp_path: Path
) -> None:
    # 6 GB: llama3.2:3b (~1.9 GB by its weights) fits, then qwen2.5:7b (~4.6 GB) does
    # not fit in what is left; qwen2.5-coder:7b is not listed.
    backend = Backend(
        url=live_emulator.url, name="gpu", vram_gb=6.0, warm=("llama3.2:3b", "qwen2.5:7b")
    )
    proxy = Proxy(
        servers,
        [backend],
        health=FAST_HEALTH,
        selector=selector(tmp_path),
        warm=Warm(keep_alive="2s"),
    )
    try:
        first = await until(lambda: _loaded_entry(proxy, "llama3.2:3b"), "the warm model loaded")
        # Kept: the warmer renews its keep_alive (2 s) before it runs out.
        renewed = await until(
            lambda: _renewed(proxy, "llama3.2:3b", first["expires_at"]), "keep_alive renewed"
        )
        # Renewed before it ran out: the new expiry is less than a keep_alive later.
        first_expiry, new_expiry = expiry_of(first["expires_at"]), expiry_of(renewed["expires_at"])
        assert first_expiry is not None and new_expiry is not None
        assert first_expiry < new_expiry < first_expiry + 2.0
        assert "llama3.2:3b" in live_emulator.state.loaded
        gpu = await status_of(proxy, "gpu")
        print("status gpu:", gpu)
        assert gpu["warm"]["llama3.2:3b"] == "loaded"
        assert gpu["warm"]["qwen2.5:7b"].startswith("does not fit: needs 4.56 GB")
        assert "qwen2.5:7b" not in live_emulator.state.loaded
        assert gpu["capacity_gb"] == 6.0 and gpu["capacity_from"] == "config"
    finally:
        proxy.stop()


async def _loaded_entry(proxy: Proxy, model: str) -> dict[str, Any] | None:
    gpu = await status_of(proxy, "gpu")
    return next((m for m in gpu["loaded"] if m["model"] == model), None)


async def _renewed(proxy: Proxy, model: str, before: str) -> dict[str, Any] | None:
    entry = await _loaded_entry(proxy, model)
    return entry if entry is not None and entry["expires_at"] != before else None


async def test_status_shows_memory_per_backend(servers: ServerThread, tmp_path: Path) -> None:
    a = Emulator(servers, FROZEN)
    b = Emulator(servers, FROZEN)
    proxy = Proxy(
        servers,
        [Backend(url=a.url, name="a", vram_gb=24.0), Backend(url=b.url, name="b")],
        health=FAST_HEALTH,
        selector=selector(tmp_path),
    )
    try:
        assert (await status_of(proxy, "b"))["capacity_from"] == "unknown"
        await load(b, "llama3.2:3b")
        await load(b, "mistral:7b")
        ps = await call("GET", b.url + "/api/ps")
        total = sum(m["size_vram"] for m in ps["models"]) / 1e9
        await until(
            lambda: _has(proxy, "b", {"llama3.2:3b", "mistral:7b"}), "b's models in the status"
        )
        doc = await call("GET", proxy.url + "/api/autoroute/status")
        for backend in doc["backends"]:
            print("status", backend["backend"], ":", backend)
        a_status, b_status = doc["backends"]
        assert a_status["memory_used_gb"] == 0 and a_status["loaded"] == []
        assert a_status["capacity_gb"] == 24.0 and a_status["capacity_from"] == "config"
        assert b_status["memory_used_gb"] == round(total, 3)
        # Without vram_gb, the most seen loaded at once stands for the capacity.
        assert b_status["capacity_gb"] == round(total, 3)
        assert b_status["capacity_from"] == "most seen loaded"
        assert all(m["expires_at"] and m["in_flight"] == 0 for m in b_status["loaded"])
        async with aiohttp.ClientSession() as session, session.get(proxy.url + "/metrics") as resp:
            text = await resp.text()
        gauge = {
            sample.labels["backend"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "autoroute_backend_memory_used_bytes"
            for sample in family.samples
        }
        print("metrics memory:", gauge)
        assert gauge == {"a": 0.0, "b": sum(m["size_vram"] for m in ps["models"])}
    finally:
        proxy.stop()
        a.stop()
        b.stop()


async def _has(proxy: Proxy, label: str, models: set[str]) -> bool:
    return models <= await loaded_on(proxy, label)


@pytest.mark.parametrize("warm_one", TWINS)
async def test_auto_prefers_the_loaded_of_two_equals_and_explain_shows_the_load(
    servers: ServerThread, tmp_path: Path, warm_one: str
) -> None:
    emulator = Emulator(servers, EmulatorSettings(frozen_clock=True, models=TWINS))
    proxy = Proxy(servers, [emulator.url], health=FAST_HEALTH, selector=selector(tmp_path))
    try:
        await load(emulator, warm_one)
        await until(lambda: _has(proxy, emulator.url, {warm_one}), "the proxy sees it loaded")
        doc = await explain(proxy, "fast")
        print("explain ranking:", doc["ranking"])
        assert doc["model"] == warm_one
        (cold,) = set(TWINS) - {warm_one}
        entries = ranked(doc)
        assert entries[warm_one]["load_seconds"] == 0
        assert entries[cold]["load_seconds"] == pytest.approx(TWIN_LOAD_PRIOR, abs=1e-3)
        assert entries[cold]["expected_seconds"] > entries[warm_one]["expected_seconds"]
        assert entries[cold]["p_success"] == entries[warm_one]["p_success"]
    finally:
        proxy.stop()
        emulator.stop()


@pytest.mark.parametrize("ps", ["missing", "silent"])
async def test_no_load_is_charged_where_the_backend_does_not_say_what_is_loaded(
    servers: ServerThread, tmp_path: Path, ps: str
) -> None:
    # Without /api/ps, or with one that lists nothing right after models answered, what
    # is loaded is unknown: charging every model a load would favour the smallest.
    settings = EmulatorSettings(
        frozen_clock=True, models=TWINS, ps_missing=ps == "missing", ps_silent=ps == "silent"
    )
    emulator = Emulator(servers, settings)
    proxy = Proxy(servers, [emulator.url], health=FAST_HEALTH, selector=selector(tmp_path))
    try:
        if ps == "silent":
            # Listing nothing before anything answered is what an idle Ollama says.
            entries = ranked(await explain(proxy, "fast"))
            assert entries[TWINS[0]]["load_seconds"] == pytest.approx(TWIN_LOAD_PRIOR, abs=1e-3)
            assert (await status_of(proxy, emulator.url))["reports_loaded"] is True
            body = {"model": TWINS[0], "prompt": "hi", "stream": False}
            await call("POST", proxy.url + "/api/generate", body)

        async def unreported() -> bool:
            return (await status_of(proxy, emulator.url))["reports_loaded"] is False

        await until(unreported, "the backend taken not to report what is loaded")
        entries = ranked(await explain(proxy, "fast"))
        assert {entries[m]["load_seconds"] for m in TWINS} == {0}
    finally:
        proxy.stop()
        emulator.stop()


async def test_an_ollama_that_lists_what_answered_keeps_its_loads_charged(
    servers: ServerThread, tmp_path: Path
) -> None:
    emulator = Emulator(servers, EmulatorSettings(frozen_clock=True, models=TWINS))
    proxy = Proxy(servers, [emulator.url], health=FAST_HEALTH, selector=selector(tmp_path))
    try:
        body = {"model": TWINS[0], "prompt": "hi", "stream": False}
        await call("POST", proxy.url + "/api/generate", body)
        await until(lambda: _has(proxy, emulator.url, {TWINS[0]}), "the proxy sees it loaded")
        for _ in range(4):  # more polls than it takes to call a backend silent
            await asyncio.sleep(FAST_HEALTH.interval_seconds)
        assert (await status_of(proxy, emulator.url))["reports_loaded"] is True
        entries = ranked(await explain(proxy, "fast"))
        assert entries[TWINS[0]]["load_seconds"] == 0
        assert entries[TWINS[1]]["load_seconds"] == pytest.approx(TWIN_LOAD_PRIOR, abs=1e-3)
    finally:
        proxy.stop()
        emulator.stop()


async def test_a_measured_load_replaces_the_prior(servers: ServerThread, tmp_path: Path) -> None:
    # Frozen clock: the emulator reports load_duration = 1 ms + load_seconds exactly.
    settings = EmulatorSettings(frozen_clock=True, models=TWINS, load_seconds=0.3)
    emulator = Emulator(servers, settings)
    proxy = Proxy(servers, [emulator.url], health=FAST_HEALTH, selector=selector(tmp_path))
    try:
        body = {"model": "qwen2.5:7b", "prompt": "hi", "stream": False, "keep_alive": 0}
        answer = await call("POST", proxy.url + "/api/generate", body)
        assert answer["load_duration"] == 301_000_000
        entries = ranked(await explain(proxy, "fast"))
        assert entries["qwen2.5:7b"]["load_seconds"] == 0.301
        assert entries["qwen2.5-coder:7b"]["load_seconds"] == pytest.approx(
            0.5 * 7.6 * 4 / 8 * 1.2, abs=1e-3
        )
    finally:
        proxy.stop()
        emulator.stop()


@pytest.mark.parametrize(
    ("penalty", "busy", "expected"),
    [
        (0.1, True, "llama3.2:3b"),  # the 7b's lead (~0.075) is below the penalty: kept
        (0.1, False, "qwen2.5:7b"),  # nothing in flight: nothing to protect
        (0.05, True, "qwen2.5:7b"),  # a lead above the penalty is worth the eviction
    ],
)
async def test_auto_does_not_evict_a_model_in_use_unless_the_gain_is_large(
    servers: ServerThread, tmp_path: Path, penalty: float, busy: bool, expected: str
) -> None:
    # Slow tokens: a long answer stays in flight while auto decides.
    settings = EmulatorSettings(chunk_delay_ms=20.0, models=("llama3.2:3b", "qwen2.5:7b"))
    emulator = Emulator(servers, settings)
    # 6 GB: the loaded 3b (~2.5 GB) and the 7b (~4.6 GB) do not fit together.
    backend = Backend(url=emulator.url, name="gpu", vram_gb=6.0)
    proxy = Proxy(
        servers,
        [backend],
        health=FAST_HEALTH,
        selector=selector(tmp_path),
        warm=Warm(evict_penalty=penalty),
    )
    try:
        await load(emulator, "llama3.2:3b")
        await until(lambda: _has(proxy, "gpu", {"llama3.2:3b"}), "the proxy sees the 3b loaded")
        async with aiohttp.ClientSession() as session:
            stream = None
            if busy:
                body = {"model": "llama3.2:3b", "prompt": "long", "options": {"num_predict": 2000}}
                stream = await session.post(proxy.url + "/api/generate", json=body)
                await stream.content.readline()  # the first chunk: the request is in flight
                gpu = await status_of(proxy, "gpu")
                assert gpu["loaded"][0]["in_flight"] == 1
            doc = await explain(proxy, "best")
            print(f"penalty {penalty} busy {busy}:", doc["model"], ranked(doc))
            entries = ranked(doc)
            assert entries["qwen2.5:7b"]["evicts_busy_model"] is busy
            assert entries["llama3.2:3b"]["evicts_busy_model"] is False
            assert doc["model"] == expected
            if stream is not None:
                stream.close()
    finally:
        proxy.stop()
        emulator.stop()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30m", 1800.0), ("1h30m", 5400.0), ("300", 300.0), ("1.5s", 1.5), ("-1", math.inf)],
)
def test_keep_alive_durations_read_as_ollama_reads_them(value: str, seconds: float) -> None:
    assert keep_alive_seconds(value) == seconds


async def test_a_bad_keep_alive_is_a_config_error() -> None:
    config = Config(
        backends=(Backend(url="http://127.0.0.1:9", warm=("llama3.2:3b",)),),
        warm=Warm(keep_alive="soon"),
    )
    pool = BackendPool(config)
    auto = AutoRouter(config, pool, Registry(pool))
    with pytest.raises(ConfigError, match=r"warm\.keep_alive"):
        Warmer(config, pool, auto.memory)


async def test_load_terms_follow_what_they_depend_on_for_the_same_candidates() -> None:
    # `auto` asks with the same candidate lists while the registry keeps them: the
    # load terms still follow a load measured, a refresh that saw a size, a model put
    # in use, and a backend that stops saying what is loaded.
    config = Config(backends=(Backend(url="http://127.0.0.1:9", name="gpu", vram_gb=12.0),))
    pool = BackendPool(config)
    registry = Registry(pool)
    auto = AutoRouter(config, pool, registry)
    registry.set_models(
        {
            name: model_info(name, {"details": {"parameter_size": size}}, {})
            for name, size in (("llama3.2:3b", "3.2B"), ("qwen2.5:7b", "7.6B"))
        }
    )
    state = pool.states[0]
    state.models = frozenset(registry.models)
    memory = auto.memory
    await memory.refresh()
    backends, candidates = ["gpu", "gpu"], registry.candidates()
    small = candidates[0].name
    prior = [0.5 * c.params_b * 4 / 8 * 1.2 for c in candidates]

    def terms() -> tuple[list[float], list[bool]]:
        got = memory.terms(backends, candidates)
        return got.load_seconds, got.evicts

    assert terms() == (pytest.approx(prior), [False, False])
    auto.telemetry.observe("gpu", candidates[1], {"load_duration": 2_000_000_000})
    assert terms() == (pytest.approx([prior[0], 2.0]), [False, False])
    state.running = [
        {"name": small, "model": small, "size": 3_000_000_000},
        {"name": "other:70b", "model": "other:70b", "size": 9_000_000_000},
    ]
    await memory.refresh()  # the 3b's size as /api/ps showed it
    assert terms() == (pytest.approx([0.5 * 3.0, 2.0]), [False, False])
    # 9 GB in use: the 3b fits beside it in 12 GB, the 7b does not.
    state.busy = {"other:70b": 1}
    assert terms() == (pytest.approx([0.5 * 3.0, 2.0]), [False, True])
    state.reports_loaded = False
    assert terms() == ([0.0, 0.0], [False, False])

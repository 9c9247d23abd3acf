"""`autoroute emulate --models` stands in for a user's own fleet: any Ollama model name is
served, a name outside the emulator's table described as Ollama would describe it (from
the selector's catalogue, else from what the name says), and `auto` routes among them.
A name that cannot be an Ollama model name stops the emulator at start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest

from proxy.config_selector import Profile, Selector
from proxy.emulator import EmulatorSettings, EmulatorState
from proxy.emulator.catalog import REGISTRY
from tests.support import PIXEL_PNG, Emulator, Proxy, ServerThread, free_port

ROOT = Path(__file__).resolve().parent.parent
# None of these is in the emulator's table; the first four are in the selector's
# catalogue (the second by a quantization tag), the last only a name.
FLEET = ("gemma3:12b", "phi4:14b-q8_0", "qwen2.5-coder:14b", "qwen3:14b", "mycorp-assistant:14b")


@pytest.fixture(scope="module")
def fleet(servers: ServerThread) -> Iterator[Emulator]:
    emu = Emulator(servers, EmulatorSettings(models=FLEET, frozen_clock=True, chunk_delay_ms=1))
    yield emu
    emu.stop()


def test_the_fleet_is_not_in_the_table() -> None:
    assert not set(FLEET) & set(REGISTRY)


def test_every_named_model_is_listed(fleet: Emulator) -> None:
    listed = ollama.Client(host=fleet.url).list().models
    assert sorted(m.model or "" for m in listed) == sorted(FLEET)
    for model in listed:
        assert model.details is not None and model.details.format == "gguf"
        assert model.size and model.size > 1e9 and model.digest and len(model.digest) == 64


def test_a_catalogued_model_is_shown_as_the_catalogue_describes_it(fleet: Emulator) -> None:
    shown = ollama.Client(host=fleet.url).show("gemma3:12b")
    assert shown.details is not None
    assert shown.details.family == "gemma3"
    assert shown.details.parameter_size == "12.2B"
    assert shown.details.quantization_level == "Q4_K_M"
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "gemma3"
    assert shown.modelinfo["gemma3.context_length"] == 131072
    assert shown.modelinfo["general.parameter_count"] == 12_200_000_000
    assert shown.capabilities == ["completion", "vision"]


def test_a_quantization_tag_is_reported(fleet: Emulator) -> None:
    shown = ollama.Client(host=fleet.url).show("phi4:14b-q8_0")
    assert shown.details is not None and shown.modelinfo is not None
    assert (shown.details.family, shown.details.parameter_size) == ("phi3", "14.7B")
    assert shown.details.quantization_level == "Q8_0"
    assert shown.modelinfo["phi3.context_length"] == 16384
    assert shown.modelinfo["general.file_type"] == 7
    listed = {m.model: m for m in ollama.Client(host=fleet.url).list().models}
    q4 = listed["qwen3:14b"]
    assert q4.size is not None and listed["phi4:14b-q8_0"].size is not None
    # Eight bits a weight take about twice the disk of four and a half.
    assert listed["phi4:14b-q8_0"].size > 1.5 * q4.size


def test_capabilities_follow_the_catalogue(fleet: Emulator) -> None:
    client = ollama.Client(host=fleet.url)
    assert client.show("qwen3:14b").capabilities == ["completion", "tools", "thinking"]
    coder = client.show("qwen2.5-coder:14b").capabilities or []
    assert "completion" in coder and "tools" in coder and "thinking" not in coder


def test_an_unknown_name_is_described_from_the_name(fleet: Emulator) -> None:
    shown = ollama.Client(host=fleet.url).show("mycorp-assistant:14b")
    assert shown.details is not None and shown.modelinfo is not None
    assert shown.details.family == "mycorp"
    assert shown.details.parameter_size == "14B"
    assert shown.details.quantization_level == "Q4_K_M"
    assert shown.modelinfo["mycorp.context_length"] > 0
    assert shown.capabilities == ["completion"]


@pytest.mark.parametrize(
    ("name", "family", "size"),
    [
        ("someorg/widget:7b-instruct", "widget", "7B"),
        ("widget-8x7b:latest", "widget", "56B"),
        ("widget:e4b", "widget", "4B"),
        ("widget", "widget", "7B"),
        ("tiny-widget:360m", "tiny", "360M"),
        # A fine-tune of a catalogued family has that family's architecture.
        ("dolphin-mixtral:8x7b", "llama", "56B"),
    ],
)
def test_sizes_and_families_are_read_from_names(name: str, family: str, size: str) -> None:
    state = EmulatorState(EmulatorSettings(models=(name,)))
    (spec,) = state.store.values()
    assert (spec.family, spec.parameter_size) == (family, size)


def test_an_embedding_model_embeds_and_is_unquantized() -> None:
    state = EmulatorState(EmulatorSettings(models=("acme-embed:335m", "acme-embed:335m-q8_0")))
    plain, quantized = state.store.values()
    assert plain.capabilities == ("embedding",) and plain.quantization_level == "F16"
    assert quantized.quantization_level == "Q8_0"


def test_chat_and_ps_with_the_official_client(fleet: Emulator) -> None:
    client = ollama.Client(host=fleet.url)
    for name in FLEET:
        reply = client.chat(model=name, messages=[{"role": "user", "content": "hi"}])
        assert reply.model == name and reply.message.content
    loaded = {m.model: m for m in client.ps().models}
    assert set(loaded) == set(FLEET)
    assert loaded["gemma3:12b"].details is not None
    assert loaded["gemma3:12b"].details.family == "gemma3"


def test_table_models_keep_their_entry_and_others_are_deterministic() -> None:
    first = EmulatorState(EmulatorSettings(models=("qwen3:8b", *FLEET)))
    second = EmulatorState(EmulatorSettings(models=(*FLEET, "qwen3:8b")))
    assert first.store["qwen3:8b"] is REGISTRY["qwen3:8b"]
    for name in FLEET:
        assert first.store[name] == second.store[name]
    assert first.store["gemma3:12b"].digest != first.store["qwen3:14b"].digest


def test_a_table_name_matches_whatever_its_case() -> None:
    state = EmulatorState(EmulatorSettings(models=("Qwen3:8B",)))
    assert list(state.store.values()) == [REGISTRY["qwen3:8b"]]


@pytest.mark.parametrize("bad", ["my model:7b", "-leading:7b", "a:b:c/d", "x:" + "t" * 81])
def test_a_name_ollama_cannot_parse_is_an_error(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a valid Ollama model name") as caught:
        EmulatorState(EmulatorSettings(models=("qwen3:8b", bad)))
    assert repr(bad) in str(caught.value)


def _emulate(models: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy.cli",
            "emulate",
            "--port",
            str(free_port()),
            "--models",
            models,
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AUTOROUTE_CONFIG": str(ROOT / "config.yaml")},
    )


def test_autoroute_emulate_refuses_an_invalid_name() -> None:
    proc = _emulate("qwen3:8b,my model")
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "autoroute: configuration error: --models: 'my model' is not a valid Ollama model name"
    )


def test_autoroute_emulate_says_which_models_it_described() -> None:
    proc = _emulate("qwen3:8b,gemma3:12b,mycorp-assistant:14b")
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "emulator listening" in line:
                break
    finally:
        proc.terminate()
        proc.wait(10)
    text = "".join(lines)
    assert "emulator listening" in text, text
    notice = next(line for line in lines if "not in the emulator's table" in line)
    assert "gemma3:12b" in notice and "mycorp-assistant:14b" in notice
    assert "qwen3:8b" not in notice


# -- `auto` through the proxy ------------------------------------------------------------


@pytest.fixture
def fleet_proxy(servers: ServerThread, fleet: Emulator, tmp_path: Path) -> Iterator[Proxy]:
    selector = Selector(
        artifact=str(tmp_path / "missing.onnx"),
        profiles={"balanced": Profile(cost_weight=0.02), "best": Profile(cost_weight=0.0)},
    )
    prx = Proxy(servers, [fleet.url], selector=selector)
    yield prx
    prx.stop()


async def _explain(proxy: Proxy, body: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(proxy.url + "/api/autoroute/explain", json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        doc: dict[str, Any] = await resp.json()
        return doc


def _chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": content}], **extra}


async def test_auto_routes_among_the_fleet(fleet_proxy: Proxy) -> None:
    doc = await _explain(fleet_proxy, _chat("Summarize the history of Rome."))
    ranked = {row["model"] for row in doc["ranking"]}
    assert ranked | set(doc["filtered"]) == set(FLEET)
    assert doc["model"] in FLEET

    vision = _chat("What is in this picture?")
    vision["messages"][0]["images"] = [PIXEL_PNG]
    assert (await _explain(fleet_proxy, vision))["model"] == "gemma3:12b"
    tools = await _explain(
        fleet_proxy,
        _chat("Look it up", tools=[{"type": "function", "function": {"name": "lookup"}}]),
    )
    assert {row["model"] for row in tools["ranking"]} == {"qwen2.5-coder:14b", "qwen3:14b"}

    client = ollama.AsyncClient(host=fleet_proxy.url)
    reply = await client.chat(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert reply.model in FLEET


async def test_explain_says_what_the_catalogue_knows_of_each_candidate(
    fleet_proxy: Proxy,
) -> None:
    doc = await _explain(fleet_proxy, _chat("Summarize the history of Rome."))
    ranked = {row["model"]: row["catalogue"] for row in doc["ranking"]}
    listed, placed = ranked["qwen3:14b"], ranked["mycorp-assistant:14b"]
    # A listed model's neighbours are those its unpublished areas were imputed from.
    assert (listed["origin"], listed["family"]) == ("catalogue", "qwen3")
    assert placed["origin"] == "nearest" and len(placed["neighbours"]) == 3
    assert placed["uncertainty"] > listed["uncertainty"]
    assert set(placed["areas"]) == {"knowledge", "reasoning", "math", "code", "instruction"}

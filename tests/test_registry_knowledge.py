"""The registry describes each model by the catalogue's knowledge, as the selector's
candidate features read it: listed models by their entries, the operator's own models
by `selector.models`, anything else by its nearest catalogue entries."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import registry as registry_module
from proxy.app import APP_KEY
from proxy.auto import AutoRouter
from proxy.backends import BackendPool
from proxy.config import Config, ConfigError
from proxy.config_selector import ModelEntry
from proxy.config_serving import Backend, Health
from proxy.emulator.catalog import template_for
from proxy.registry import Registry, catalog_for, model_info
from selector_model import features
from selector_model.catalog import DEFAULT_PATH, Catalog, CatalogError, names
from selector_model.catalog.knowledge import AREAS, ModelKnowledge
from selector_model.catalog.names import is_safety_classifier
from tests.conftest import FROZEN
from tests.support import (
    UNLISTED_CAPABILITIES_VERSION,
    Emulator,
    Proxy,
    ServerThread,
    wait_until,
)


def _ollama(params: str, family: str, *capabilities: str) -> tuple[dict[str, Any], dict[str, Any]]:
    details = {"family": family, "parameter_size": params, "quantization_level": "Q4_K_M"}
    show = {
        "details": details,
        "capabilities": ["completion", *capabilities],
        "model_info": {f"{family}.context_length": 32768},
    }
    return {"details": details}, show


def test_a_listed_model_gets_its_catalogue_entry() -> None:
    tag, show = _ollama("7.6B", "qwen2", "insert")
    coder = model_info("qwen2.5-coder:7b", tag, show).candidate
    general = model_info("qwen2.5:7b", *_ollama("7.6B", "qwen2", "tools")).candidate
    areas = dict(zip(features.AREAS, coder.areas, strict=True))
    assert areas["code"] > dict(zip(features.AREAS, general.areas, strict=True))["code"]
    assert "code" in coder.specialties and coder.is_code
    assert coder.uncertainty < 0.5 and coder.release > 2024


def test_a_users_own_model_is_described_like_the_model_they_name() -> None:
    config = Config()
    config = replace(
        config,
        selector=replace(
            config.selector, models={"my-coder:latest": ModelEntry(like="qwen2.5-coder:7b")}
        ),
    )
    tag, show = _ollama("7.6B", "qwen2")
    mine = model_info("my-coder:latest", tag, show, catalog_for(config)).candidate
    like = model_info("qwen2.5-coder:7b", tag, show).candidate
    assert mine.areas == like.areas and mine.specialties == like.specialties
    # Without the description, the same name is placed among its neighbours, less surely.
    placed = model_info("my-coder:latest", tag, show)
    assert placed.knowledge is not None and placed.knowledge.origin == "nearest"
    assert placed.candidate.uncertainty > mine.uncertainty


def test_a_configured_catalogue_replaces_the_shipped_one(tmp_path: Path) -> None:
    shipped = DEFAULT_PATH.read_text()
    # A copy read from the configured path describes alike; a broken one is refused
    # (the configured file is read, not the shipped one).
    assert "qwen2.5:7b" in shipped
    path = tmp_path / "models.yaml"
    path.write_text(shipped)
    config = Config()
    config = replace(config, selector=replace(config.selector, catalog=str(path)))
    tag, show = _ollama("7.6B", "qwen2", "tools")
    own = model_info("qwen2.5:7b", tag, show, catalog_for(config)).candidate
    assert own.areas == model_info("qwen2.5:7b", tag, show).candidate.areas
    path.write_text("version: 0\n")
    # The operator's mistake, named by its setting (autoroute exits 2 with it).
    with pytest.raises(ConfigError, match=r"^selector\.catalog: .*version 0 is not 1"):
        catalog_for(config)


@pytest.mark.parametrize(
    ("name", "instruct"),
    [
        # Ollama's library marks a pretrained model by a tag word: `-text`, `-base`.
        ("llama3.1:8b-text", False),
        ("llama3.1:8b-text-q4_K_M", False),
        ("mistral:7b-text-v0.2", False),
        ("qwen2.5-coder:7b-base", False),
        ("qwen2.5-coder:1.5b-base-q8_0", False),
        ("deepseek-coder-v2:16b-lite-base-q4_0", False),
        # Code Llama's and CodeGemma's completion variants.
        ("codellama:7b-code", False),
        ("codellama:13b-python-q4_0", False),
        ("codegemma:7b-code", False),
        ("codellama:7b-instruct", True),
        # Where the name says nothing, the catalogue may: StarCoder2 is a base model,
        # its instruct fine-tune is not.
        ("starcoder2:3b", False),
        ("starcoder2:15b-q4_K_M", False),
        ("starcoder2:15b-instruct", True),
        ("starcoder2:15b-instruct-v0.1-q4_K_M", True),
        # A chat tune of a Python model, whose entry says it answers requests: the
        # catalogue's word outweighs the tag's.
        ("wizardcoder:7b-python", True),
        ("wizardcoder:python", True),
        ("wizardcoder:13b-python-q4_0", True),
        ("phind-codellama:34b-python", True),
        # Code Llama's pretrained and Python models pulled from Hugging Face, whose
        # repositories name no variant word the tag rules read.
        ("hf.co/TheBloke/CodeLlama-7B-Python-GGUF:Q4_K_M", False),
        ("hf.co/TheBloke/CodeLlama-13B-GGUF:Q5_K_M", False),
        # A Hugging Face name says it in the repository's name.
        ("hf.co/unsloth/Qwen3-8B-Base-GGUF:Q4_K_M", False),
        ("llama3.1:8b", True),
        ("qwen2.5:7b-instruct-q4_K_M", True),
        ("granite3.1-dense:8b", True),
        ("nomic-embed-text:v1.5", True),  # `text` in the name: an embedding model's
        # `base` or `text` inside a word, in the name, its namespace or the tag.
        ("database-coder:7b", True),
        ("firebase/llama3.1:8b", True),
        ("my-model:8b-longtext", True),
    ],
)
def test_a_pretrained_model_is_told_by_whole_words_of_its_tag(name: str, instruct: bool) -> None:
    assert model_info(name, {}, {}).candidate.is_instruct is instruct


def test_a_user_says_which_of_their_models_is_pretrained() -> None:
    config = Config()
    models = {
        "my-base:7b": ModelEntry(pretrained=True),
        "my-starcoder-chat:3b": ModelEntry(like="starcoder2:3b", pretrained=False),
        "my-starcoder:3b": ModelEntry(like="starcoder2:3b"),
    }
    config = replace(config, selector=replace(config.selector, models=models))
    catalog = catalog_for(config)
    instruct = {n: model_info(n, {}, {}, catalog).candidate.is_instruct for n in models}
    assert instruct == {"my-base:7b": False, "my-starcoder-chat:3b": True, "my-starcoder:3b": False}
    bad = {"my-base:7b": {"pretrained": "yes"}}
    with pytest.raises(CatalogError, match="pretrained"):
        catalog.with_overrides(bad)


@pytest.mark.parametrize(
    ("name", "classifier"),
    [
        ("llama-guard3:8b", True),
        ("llama-guard3:1b-q8_0", True),
        ("shieldgemma:9b", True),
        ("granite3-guardian:8b", True),
        ("hf.co/QuantFactory/Llama-Guard-3-8B-GGUF:Q4_K_M", True),
        ("hf.co/bartowski/shieldgemma-2b-GGUF:Q4_K_M", True),
        ("nemoguard:8b", True),
        ("wildguard:7b", True),
        # A word that only contains "guard", and a tag, say nothing of it.
        ("vanguard:7b", False),
        ("guardrails-llama:8b", False),
        ("llama3.1:8b-guard", False),
        ("granite3.3:8b", False),
        ("gemma2:9b", False),
    ],
)
def test_a_safety_classifier_is_told_by_a_whole_word_of_its_name(
    name: str, classifier: bool
) -> None:
    assert is_safety_classifier(name) is classifier


@pytest.mark.parametrize(
    ("name", "quantization"),
    [
        ("llama3.1:8b-instruct-q4_K_M", "q4_k_m"),
        ("qwen2.5:72b-instruct-q8_0", "q8_0"),
        ("llama3.1:70b-fp16", "fp16"),
        ("gpt-oss:20b-mxfp4", "mxfp4"),
        ("hf.co/bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M", "q4_k_m"),
        ("granite4:tiny-h-q8_0", "q8_0"),
        ("llama3.1:8b", ""),
        ("llama3.1", ""),
        ("qwen3:8b-q4_K_M-custom", "q4_k_m"),
    ],
)
def test_a_quantization_is_a_whole_dash_word_of_the_tag(name: str, quantization: str) -> None:
    assert names.quantization(name) == quantization


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        # bartowski's repositories put the original organisation before an underscore.
        ("hf.co/bartowski/microsoft_Phi-4-mini-instruct-GGUF:Q4_K_M", "phi4-mini:3.8b"),
        ("hf.co/bartowski/google_gemma-3-12b-it-GGUF:Q4_K_M", "gemma3:12b"),
        ("hf.co/bartowski/Qwen_Qwen3-8B-GGUF:Q8_0", "qwen3:8b"),
        ("hf.co/bartowski/meta-llama_Llama-3.3-70B-Instruct-GGUF:Q4_K_M", "llama3.3:70b"),
        (
            "hf.co/bartowski/mistralai_Mistral-Small-3.2-24B-Instruct-2506-GGUF:Q4_K_M",
            "mistral-small3.2:24b",
        ),
        # Without one, the name as it is.
        ("hf.co/unsloth/gemma-3-12b-it-GGUF:Q4_K_M", "gemma3:12b"),
        # Meta's repositories lead Llama 3 and 3.1 with "Meta-"; a transformers
        # conversion ends in "-hf".
        ("hf.co/bartowski/Meta-Llama-3.1-70B-Instruct-GGUF:Q4_K_M", "llama3.1:70b"),
        ("meta-llama/Meta-Llama-3.1-70B-Instruct", "llama3.1:70b"),
        ("codellama/CodeLlama-34b-Instruct-hf", "codellama:34b"),
        ("nvidia/Llama-3.1-Nemotron-70B-Instruct-HF", "nemotron:70b"),
        ("hf.co/TheBloke/CodeLlama-34B-Instruct-GGUF:Q4_K_M", "codellama:34b"),
        # A context length, a quantization or quantization-aware training in a
        # repository's name describe a build of the model, not another model.
        ("hf.co/bartowski/Qwen2.5-Coder-7B-Instruct-128K-GGUF:Q4_K_M", "qwen2.5-coder:7b"),
        ("hf.co/google/gemma-3-4b-it-qat-q4_0-gguf", "gemma3:4b"),
        # mradermacher's imatrix quantizations of a model ("-i1-GGUF", a tag that may
        # repeat it) are that model.
        ("hf.co/mradermacher/Qwen2.5-Coder-7B-Instruct-i1-GGUF:Q4_K_M", "qwen2.5-coder:7b"),
        ("hf.co/mradermacher/gemma-3-12b-it-i1-GGUF:i1-Q4_K_M", "gemma3:12b"),
        ("hf.co/mradermacher/Qwen3-8B-i1-GGUF:Q6_K", "qwen3:8b"),
    ],
)
def test_a_hugging_face_name_with_its_organisation_resolves(name: str, entry: str) -> None:
    assert catalog_for(Config()).resolve(name) == entry


def test_a_hugging_face_name_with_its_organisation_is_placed_as_its_model() -> None:
    catalog = catalog_for(Config())
    details = {"family": "gemma4", "parameter_size": "12B"}
    prefixed = catalog.lookup("hf.co/bartowski/google_gemma-4-12b-it-GGUF:Q4_K_M", details, ())
    plain = catalog.lookup("gemma4:12b", details, ())
    assert (prefixed.family, prefixed.areas) == (plain.family, plain.areas)
    # An underscore inside a model's own name (a size before it) is not an organisation.
    assert names.without_organisation("hf.co/x/Llama-3.1-8B-Lexi-Uncensored_V2-GGUF:Q4_K_M") == ""
    assert names.without_organisation("google_gemma-3-12b-it") == ""  # no namespace


def test_a_model_without_show_is_described_from_its_tags_entry() -> None:
    """When /api/show cannot be read, the tags entry's details and the catalogue
    describe the model: capabilities the entry lists win, else the catalogue's (tools
    for a chat model that calls them; embedding alone for an embedding model); the
    context is the catalogue's, not Ollama's historical default of 2048, which would
    keep every longer prompt from the model."""
    tag, _ = _ollama("7.6B", "qwen2")
    guessed = model_info("qwen2.5:7b", tag, None)
    assert guessed.candidate.capabilities == {"completion", "tools"}
    assert guessed.knowledge is not None
    assert guessed.candidate.context_length == guessed.knowledge.context_length == 32768
    assert guessed.candidate.params_b == 7.6 and guessed.generates
    assert guessed.knowledge is not None and guessed.knowledge.origin == "catalogue"
    listed = model_info("qwen2.5:7b", {**tag, "capabilities": ["completion"]}, None)
    assert listed.candidate.capabilities == {"completion"}
    embedder = model_info("nomic-embed-text:latest", {"details": {"family": "nomic-bert"}}, None)
    assert not embedder.generates and embedder.candidate.capabilities == {"embedding"}
    # A coder is still a coder, but fill in the middle is not guessed (see model_info).
    coder = model_info("qwen2.5-coder:7b", tag, None).candidate
    assert coder.is_code and coder.capabilities == {"completion", "tools"}


async def test_a_failed_show_is_asked_again_and_its_answer_replaces_the_guess(
    servers: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """A show that failed is not remembered: every refresh asks again (warning once
    per backend and model, not every refresh), and once it answers, its capabilities
    and context replace what the tags entry and the catalogue gave."""
    caplog.set_level(logging.WARNING, logger="autoroute.registry")
    coder = "qwen2.5-coder:7b"
    listless = replace(FROZEN, version=UNLISTED_CAPABILITIES_VERSION)
    own = Emulator(servers, replace(listless, models=(coder,), show_missing=True))
    # Refreshed by the test alone.
    prx = Proxy(servers, [own.url], health=Health(interval_seconds=3600))
    try:
        app = prx.app[APP_KEY]
        guessed = app.registry.models[coder].candidate
        assert guessed.capabilities == {"completion", "tools"}
        assert guessed.context_length == app.registry.models[coder].knowledge.context_length
        asked = own.state.requests["/api/show"]
        assert asked >= 1
        for _ in range(3):
            prx.thread.call(app.backends.refresh_all)
        assert own.state.requests["/api/show"] == asked + 3
        assert app.registry.models[coder].candidate == guessed
        warned = [r for r in caplog.records if coder in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING

        own.state.settings = replace(own.state.settings, show_missing=False)
        prx.thread.call(app.backends.refresh_all)
        shown = app.registry.models[coder].candidate
        assert shown.capabilities == {"completion", "tools", "insert"}
        assert shown.context_length == 32768
        assert own.state.requests["/api/show"] == asked + 4
        # An answer is kept (by digest): the next refresh asks nothing.
        prx.thread.call(app.backends.refresh_all)
        assert own.state.requests["/api/show"] == asked + 4
        assert app.registry.models[coder].candidate == shown
    finally:
        prx.stop()
        own.stop()


async def test_another_backends_show_replaces_a_guess(servers: ServerThread) -> None:
    """The same model on a backend without /api/show (listed first) and on one with it:
    the second backend's show describes it, not the first's tags entry."""
    coder = "qwen2.5-coder:7b"
    listless = replace(FROZEN, version=UNLISTED_CAPABILITIES_VERSION)
    showless = Emulator(servers, replace(listless, models=(coder,), show_missing=True))
    showing = Emulator(servers, replace(FROZEN, models=(coder,)))
    prx = Proxy(servers, [showless.url, showing.url], health=Health(interval_seconds=3600))
    try:
        shown = prx.app[APP_KEY].registry.models[coder].candidate
        assert showless.state.requests["/api/show"] >= 1
        assert showing.state.requests["/api/show"] == 1
        assert shown.capabilities == {"completion", "tools", "insert"}
        assert shown.context_length == 32768
    finally:
        prx.stop()
        showless.stop()
        showing.stop()


async def test_a_name_whose_weights_differ_by_backend_offers_what_every_one_can(
    servers: ServerThread,
) -> None:
    """Two backends list one name with other weights (pulled before and after the
    library's template gained tools): `auto` chooses it only for what each backend's
    version can do, since the request may run on either (where it is loaded, or the
    least busy). Its tools request goes to a model that calls tools wherever it runs,
    rather than to the backend whose version Ollama refuses tools to (a 400), and
    explain says so."""
    name, tooled = "mine:latest", "qwen2.5:7b"

    def backend(capabilities: tuple[str, ...], version: str, *names: str) -> Emulator:
        emu = Emulator(servers, replace(FROZEN, models=names))
        spec = replace(
            emu.state.store[name],
            capabilities=capabilities,
            template=template_for(capabilities),
            made_from=version,
        )
        emu.state.store[name] = spec
        return emu

    new = backend(("completion", "tools"), "new", name, tooled)
    old = backend(("completion",), "old", name)
    prx = Proxy(servers, [new.url, old.url], health=Health(interval_seconds=3600))
    try:
        registry = prx.app[APP_KEY].registry
        # Each version shown, by its own digest.
        assert (new.state.requests["/api/show"], old.state.requests["/api/show"]) == (2, 1)
        assert registry.models[name].candidate.capabilities == {"completion"}
        ask = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        async with aiohttp.ClientSession() as http:
            # Loaded where its version lacks tools: it would run there.
            async with http.post(old.url + "/api/chat", json={**ask, "model": name}) as resp:
                assert resp.status == 200
            await prx.app[APP_KEY].backends.refresh_all()
            tools = {**ask, "tools": [{"type": "function", "function": {"name": "f"}}]}
            async with http.post(prx.url + "/api/autoroute/explain", json=tools) as resp:
                doc = await resp.json()
            assert doc["model"] == tooled and doc["filtered"][name] == "lacks tools", doc
            async with http.post(prx.url + "/api/chat", json=tools) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["X-Autoroute-Model"] == tooled
            # A request that asks for nothing more may still take it.
            async with http.post(prx.url + "/api/autoroute/explain", json=ask) as resp:
                assert name in {e["model"] for e in (await resp.json())["ranking"]}
    finally:
        prx.stop()
        new.stop()
        old.stop()


async def test_each_version_of_a_name_is_described_once_a_refresh(
    servers: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name two backends list with other weights is described once per version at
    each refresh (`model_info`): the first version's description is the model's, and
    the capabilities every version has are read off it and the other's, not off a
    second description of the first."""
    name = "mine:latest"
    new = Emulator(servers, replace(FROZEN, models=(name,)))
    old = Emulator(servers, replace(FROZEN, models=(name,)))
    old.state.store[name] = replace(old.state.store[name], made_from="old")
    prx = Proxy(servers, [new.url, old.url], health=Health(interval_seconds=3600))
    try:
        app = prx.app[APP_KEY]
        described: list[str] = []

        def counted(model: str, tag: dict[str, Any], *rest: Any) -> Any:
            if model == name:
                described.append(str(tag.get("digest")))
            return model_info(model, tag, *rest)

        monkeypatch.setattr(registry_module, "model_info", counted)
        prx.thread.call(app.backends.refresh_all)
        # Two versions (by digest), each described once.
        assert len(described) == len(set(described)) == 2, described
    finally:
        prx.stop()
        new.stop()
        old.stop()


async def test_a_name_whose_weights_differ_by_backend_holds_the_prompt_every_one_holds(
    servers: ServerThread,
) -> None:
    """Two backends list one name with other weights, whose contexts differ (the first
    listed takes 131072 tokens, the other 4096): a request `auto` sends it may run on
    either (there it is loaded), so a prompt only the longer context holds goes to a
    model that holds it wherever it runs, and explain says why the name is left out."""
    name, other = "llama3.1:8b", "qwen2.5:7b"
    long = Emulator(servers, replace(FROZEN, models=(name, other)))
    short = Emulator(servers, replace(FROZEN, models=(name,)))
    short.state.store[name] = replace(short.state.store[name], context_length=4096, made_from="4k")
    prx = Proxy(servers, [long.url, short.url], health=Health(interval_seconds=3600))
    try:
        registry = prx.app[APP_KEY].registry
        assert registry.models[name].digest == ""  # two versions: no one digest
        assert registry.models[name].candidate.context_length == 4096
        # About 10,000 tokens (four bytes each): more than 4096, less than 32768.
        prompt = "Summarise this. " + "word " * 8000
        ask = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "stream": False}
        async with aiohttp.ClientSession() as http:
            # Loaded where its version holds 4096 tokens: it would run there.
            short_ask = {"model": name, "prompt": "hi", "stream": False}
            async with http.post(short.url + "/api/generate", json=short_ask) as resp:
                assert resp.status == 200
            await prx.app[APP_KEY].backends.refresh_all()
            async with http.post(prx.url + "/api/autoroute/explain", json=ask) as resp:
                doc = await resp.json()
            assert doc["model"] == other, doc
            assert doc["filtered"][name].startswith("context 4096 < "), doc["filtered"]
            async with http.post(prx.url + "/api/chat", json=ask) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["X-Autoroute-Model"] == other
    finally:
        prx.stop()
        long.stop()
        short.stop()


async def test_a_name_whose_weights_differ_by_backend_is_what_any_one_may_be(
    servers: ServerThread,
) -> None:
    """Two backends list one name with other weights: one of a family that thinks
    whatever a request says, larger, whose template reads no suffix; the other of a
    family whose thinking a request turns off, whose template reads `.Suffix`. A
    request `auto` sends the name may run on either, so the name thinks always (the
    first may answer `think: false`), is no code model by its template (the first
    takes no fill-in-the-middle), and costs what the larger weights cost; each flag is
    read off every version, not off the first alone. Explain describes the name as
    the decision reads it (the areas and uncertainty of the merged candidate), and
    each version as its own weights are."""
    name = "mine:latest"

    def backend(version: str, family: str, size: str, *capabilities: str) -> Emulator:
        emu = Emulator(servers, replace(FROZEN, models=(name,)))
        emu.state.store[name] = replace(
            emu.state.store[name],
            family=family,
            parameter_size=size,
            capabilities=capabilities,
            template=template_for(capabilities),
            made_from=version,
        )
        return emu

    big = backend("gptoss", "gptoss", "20.9B", "completion", "thinking")
    small = backend("fim", "qwen2", "7.6B", "completion", "insert", "thinking")
    prx = Proxy(servers, [small.url, big.url], health=Health(interval_seconds=3600))
    try:
        # The first listed (`small`) alone neither thinks always nor costs 20.9B, and
        # is a code model by its template.
        candidate = prx.app[APP_KEY].registry.models[name].candidate
        assert candidate.capabilities == {"completion", "thinking"}
        assert candidate.thinks_always
        assert not candidate.is_code
        assert candidate.params_b == 20.9
        ask = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        async with (
            aiohttp.ClientSession() as http,
            http.post(prx.url + "/api/autoroute/explain", json=ask) as resp,
        ):
            doc = await resp.json()
        (row,) = [r for r in doc["ranking"] if r["model"] == name]
        described = row["catalogue"]
        assert described["uncertainty"] == round(candidate.uncertainty, 3)
        assert described["areas"] == {
            a: round(s, 3) for a, s in zip(AREAS, candidate.areas, strict=True)
        }
        assert row["capabilities"] == {"listed": ["completion", "thinking"], "from": "versions"}
        # Each version as its own weights are, the first listed first.
        versions = row["versions"]
        assert [v["capabilities"]["listed"] for v in versions] == [
            ["completion", "insert", "thinking"],
            ["completion", "thinking"],
        ]
        assert len({v["digest"] for v in versions}) == 2
        assert max(v["catalogue"]["uncertainty"] for v in versions) == described["uncertainty"]
    finally:
        prx.stop()
        small.stop()
        big.stop()


async def test_a_name_that_runs_elsewhere_on_one_backend_runs_elsewhere() -> None:
    """Two backends list one name with other weights: the first a local 7.6B qwen2,
    the other a 70.6B llama that Ollama lists with a `remote_host` (it runs off the
    backend's machine). A request `auto` sends the name may run on either, so its
    prompt may leave the backends the operator runs: the name runs there, and `auto`
    sends it a prompt only where a profile names it, as any remote model. Its family
    is the heaviest weights', whose size it takes."""
    name, host, other = "mine:latest", "https://ollama.com:443", "llama3.2:3b"
    backends = (Backend(url="http://127.0.0.1:9"), Backend(url="http://127.0.0.1:10"))
    config = Config(backends=backends)
    pool = BackendPool(config)
    registry = Registry(pool)
    local_tag, local_show = _ollama("7.6B", "qwen2")
    remote_tag, remote_show = _ollama("70.6B", "llama")
    other_tag, other_show = _ollama("3.2B", "llama")
    pool.states[0].tags = [
        {**local_tag, "model": name, "digest": "a" * 64},
        {**other_tag, "model": other, "digest": "c" * 64},
    ]
    pool.states[1].tags = [{**remote_tag, "model": name, "digest": "b" * 64, "remote_host": host}]
    shows = {"a" * 64: local_show, "b" * 64: remote_show, "c" * 64: other_show}

    async def show(state: Any, model: str, digest: str) -> dict[str, Any]:
        return shows[digest]

    registry._show = show  # type: ignore[method-assign]
    await registry.refresh()
    info = registry.models[name]
    assert info.remote == host
    assert (info.candidate.family, info.candidate.params_b) == ("llama", 70.6)
    pool.states[0].models = frozenset({name, other})
    pool.states[1].models = frozenset({name})
    chat = {"model": "auto", "messages": [{"role": "user", "content": "Hello there"}]}
    decision = AutoRouter(config, pool, registry).decide("/api/chat", chat, "balanced").decision
    assert decision.chosen == other
    assert decision.filtered[name] == f"runs on {host}: auto sends a prompt there only if named"


# Models whose /api/show never answers on the backend the tests below make hang.
HUNG = ("qwen2.5:7b", "llama3.1:8b", "gemma2:9b")


async def test_shows_that_hang_hold_neither_the_start_nor_auto(
    servers: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend that lists its models but never answers their shows: the proxy starts
    all the same (within `ServerThread.call`'s 30 s, where one hung show alone would
    hold it for the idle read timeout), every model a candidate described from its
    tags entry and the catalogue, and `auto` answers with one of them. The warning
    for each says why its show failed: it timed out."""
    caplog.set_level(logging.WARNING, logger="autoroute.registry")
    own = Emulator(servers, replace(FROZEN, models=HUNG, show_hang=True))
    try:
        prx = Proxy(servers, [own.url], health=Health(interval_seconds=0.5))
        try:
            assert own.state.requests["/api/show"] >= len(HUNG)
            assert set(prx.app[APP_KEY].registry.models) == set(HUNG)
            body = {
                "model": "auto",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": False,
                "options": {"num_predict": 4},
            }
            async with aiohttp.ClientSession() as session:
                async with session.post(prx.url + "/api/chat", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    assert resp.headers["X-Autoroute-Model"] in HUNG
            warned = [r.getMessage() for r in caplog.records if r.name == "autoroute.registry"]
            for model in HUNG:
                (warning,) = [w for w in warned if f"show {model} " in w]
                assert "failed (timed out)" in warning, warning
        finally:
            prx.stop()
    finally:
        own.stop()


async def test_shows_that_hang_do_not_stall_the_other_backends_checks(
    servers: ServerThread,
) -> None:
    """While one backend's shows hang, the refreshes go on: the other backend is still
    checked, its going down noticed, and the hung shows asked again each refresh."""
    # Shows that fail let the proxy start; failed, they are asked again every refresh.
    hung = Emulator(servers, replace(FROZEN, models=HUNG, show_missing=True))
    other = Emulator(servers, replace(FROZEN, models=("qwen2.5-coder:7b",)))
    prx = Proxy(servers, [hung.url, other.url], health=Health(interval_seconds=0.5))
    try:
        hung.state.settings = replace(hung.state.settings, show_missing=False, show_hang=True)
        asked = hung.state.requests["/api/show"]
        # A refresh waits on the hung shows.
        assert await wait_until(lambda: hung.state.requests["/api/show"] > asked)
        checked = other.state.requests["/api/tags"]
        assert await wait_until(lambda: other.state.requests["/api/tags"] >= checked + 3, 30)
        assert hung.state.requests["/api/show"] >= asked + 3 * len(HUNG)
        other.stop()
        state = prx.app[APP_KEY].backends.states[1]
        assert await wait_until(lambda: state.last_error != "", 30)
    finally:
        prx.stop()
        hung.stop()
        other.stop()


# Templates as the Ollama library's Modelfiles carry them (abridged), and show bodies as
# an Ollama before 0.6.4 answers them: no `capabilities`, which it decides from these.
_LLAMA31 = """{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Respond in the format {"name": function name, "parameters": dictionary of argument name \
and its value}. Do not use variables.

{{ range $.Tools }}
{{- . }}
{{ end }}
{{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""
_QWEN25_CODER = """{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}\
<|fim_middle|>
{{- else if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
{{ end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""
_CODEGEMMA_CODE = (
    "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>"
    "{{- else }}{{ .Prompt }}{{- end }}"
)
_LLAVA = "[INST] {{ if .System }}{{ .System }} {{ end }}{{ .Prompt }} [/INST]"
_GEMMA3 = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""


def _old_show(
    family: str, params: str, template: str, **info: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A tags entry and an /api/show body without `capabilities`, as Ollama 0.3 to 0.6.3
    answer: the template, the GGUF's key/values (`info` added) and the details."""
    details = {"format": "gguf", "family": family, "parameter_size": params}
    model_info = {
        "general.architecture": family,
        f"{family}.context_length": 32768,
        f"{family}.block_count": 28,
        **info,
    }
    return {"details": details}, {
        "template": template,
        "details": details,
        "model_info": model_info,
    }


def _capabilities(name: str, tag: dict[str, Any], show: dict[str, Any]) -> set[str]:
    return set(model_info(name, tag, show).candidate.capabilities)


def test_a_show_without_capabilities_is_read_as_ollama_decides_them() -> None:
    """An Ollama before 0.6.4 lists no capabilities in /api/show but serves tools,
    fill in the middle, images and embeddings, deciding them from the model: completion
    unless the weights pool (`<arch>.pooling_type`: embedding alone), vision for a vision
    encoder or a projector, tools and insert for a template that reads `.Tools` /
    `.Suffix`. Auto reads them the same way rather than taking every model for
    completion alone."""
    assert _capabilities("llama3.1:8b", *_old_show("llama", "8.0B", _LLAMA31)) == {
        "completion",
        "tools",
    }
    coder = _old_show("qwen2", "7.6B", _QWEN25_CODER)
    assert _capabilities("qwen2.5-coder:7b", *coder) == {"completion", "tools", "insert"}
    fim = _old_show("gemma", "9B", _CODEGEMMA_CODE)
    assert _capabilities("codegemma:7b-code", *fim) == {"completion", "insert"}
    assert _capabilities("gemma2:9b", *_old_show("gemma2", "9.2B", "{{ .Prompt }}")) == {
        "completion"
    }

    embedder = model_info(
        "mxbai-embed-large:latest",
        *_old_show("bert", "334M", "{{ .Prompt }}", **{"bert.pooling_type": 2}),
    )
    assert not embedder.generates and embedder.candidate.capabilities == {"embedding"}

    tag, llava = _old_show("llama", "7B", _LLAVA)
    llava["projector_info"] = {
        "clip.has_vision_encoder": True,
        "clip.vision.block_count": 23,
        "general.architecture": "clip",
    }
    assert _capabilities("llava:7b", tag, llava) == {"completion", "vision"}
    gemma3 = _old_show("gemma3", "4.3B", _GEMMA3, **{"gemma3.vision.block_count": 27})
    assert _capabilities("gemma3:4b", *gemma3) == {"completion", "vision"}


@pytest.mark.parametrize(
    ("template", "capabilities"),
    [
        # Only a field an action reads counts: not text, a comment or a string literal.
        ('Tools: .Tools .Suffix {{/* .Tools */}}{{ ".Suffix }}" }}', {"completion"}),
        ("{{- range $.Tools }}{{ . }}{{ end }}", {"completion", "tools"}),
        ("{{ with .Tools }}{{ . }}{{ end }}{{ .Prompt }}", {"completion", "tools"}),
        ("{{ if .suffix }}{{ .Prompt }}{{ end }}", {"completion", "insert"}),  # any case
        ("{{ $tools := 1 }}{{ .ToolCalls }}{{ .Toolset }}", {"completion"}),
    ],
)
def test_a_templates_fields_are_read_as_ollama_reads_them(
    template: str, capabilities: set[str]
) -> None:
    assert _capabilities("x:1b", *_old_show("llama", "1B", template)) == capabilities


def test_a_show_that_lists_capabilities_or_carries_no_template() -> None:
    """Capabilities show lists are taken as they are; a show without them and without a
    template (a stand-in server's) is described like a model without a show, from the
    catalogue, rather than as completion alone."""
    tag, show = _old_show("llama", "8.0B", _LLAMA31)
    listed = model_info("llama3.1:8b", tag, {**show, "capabilities": ["completion"]})
    assert listed.candidate.capabilities == {"completion"}
    bare = {"details": show["details"], "model_info": show["model_info"]}
    assert _capabilities("qwen2.5:7b", tag, bare) == {"completion", "tools"}
    assert not model_info("nomic-embed-text:latest", {}, {}).generates


def test_a_show_without_the_weights_context_takes_the_catalogues() -> None:
    """A show that names no `<architecture>.context_length` (a stand-in server's) says
    nothing of the context: the catalogue's stands, not Ollama's historical 2048, which
    would keep every longer prompt from the model; the weights' own, when shown, win."""
    tag, show = _ollama("7.6B", "qwen2")
    bare = {"details": show["details"], "capabilities": ["completion", "tools"]}
    described = model_info("qwen2.5:7b", tag, bare)
    assert described.knowledge is not None
    assert described.candidate.context_length == described.knowledge.context_length == 32768
    own = {**bare, "model_info": {"qwen2.context_length": 8192}}
    assert model_info("qwen2.5:7b", tag, own).candidate.context_length == 8192


def test_a_tune_known_by_its_show_alone_is_placed_among_models_of_its_context() -> None:
    """A fine-tune of Llama 3.2 3B under a name of its own, its show copied from its base:
    the 128K context its weights take tells it from the 2K-context Llamas of its size
    from years before (Orca Mini 3B), whose results would stand in for its own."""
    details = {"family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}

    def placed(context: int) -> ModelKnowledge:
        show = {
            "details": details,
            "capabilities": ["completion", "tools"],
            "model_info": {"llama.context_length": context},
        }
        knowledge = model_info("tiny-helper:latest", {"details": details}, show).knowledge
        assert knowledge is not None and knowledge.origin == "nearest"
        return knowledge

    catalog = Catalog.shipped()
    recent = placed(131072)
    assert min(catalog.lookup(n).context_length for n in recent.neighbours) >= 32768
    # The same details with an old model's context are placed among old models.
    assert "orca-mini:3b" in placed(2048).neighbours


def test_a_new_version_of_a_listed_model_is_placed_beside_its_entry() -> None:
    """Magistral Small 2509, pulled from Hugging Face, is a version the catalogue does not
    list: its family's entry (2506) is its nearest, and the reasoning its family declares
    is as sure as the entry's, so non-reasoning Mistral Smalls of its architecture do
    not stand in for its math in place of the reasoning models that stand in for the
    entry's. It is placed beside that entry, not a step of skill below it."""
    details = {"family": "llama", "parameter_size": "23.6B", "quantization_level": "Q4_K_M"}
    show = {
        "details": details,
        "capabilities": ["completion", "tools", "thinking", "vision"],
        "model_info": {"llama.context_length": 131072},
    }
    name = "hf.co/unsloth/Magistral-Small-2509-GGUF:Q4_K_M"
    placed = model_info(name, {"details": details}, show).knowledge
    entry = Catalog.shipped().lookup("magistral:24b")
    assert placed is not None and placed.origin == "nearest"
    assert placed.neighbours[0] == "magistral:24b"
    for area in AREAS:
        assert abs(placed.areas[area] - entry.areas[area]) < 0.05, area

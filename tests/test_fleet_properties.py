"""`auto` over generated fleets: a user's own mix of models (catalogue names with
quantization tags, unknown names, fine-tunes, Hugging Face pulls, cloud models,
embedding, image generation and vision models), served by a backend whose `/api/tags`
and `/api/show` answers are partial or odd (no details, no capabilities, odd parameter
sizes and families, huge or missing context lengths, no show at all).

For every fleet and every request shape (chat, chat with tools, images or thinking,
generate with a suffix or images, the OpenAI chat and completion routes, embeddings)
and profile (`auto`, `auto:best`, `auto:fast`, an unknown one), through the real proxy
and an emulated backend that refuses as Ollama does:

- no answer is a proxy-made 5xx, and every refusal is in Ollama's error shape;
- a request some model can serve is served (200), by a local model that can serve it:
  never a model that lists no `completion` (an embedding or image generation model)
  for a chat or generate, never one lacking the tools, vision, thinking or insert the
  request needs;
- a request no model can serve is refused with a 400 naming why;
- an embed request goes to `selector.embedding_model`, else is a 400;
- an unknown profile is a missing model's 404 on every route;
- explain answers every such fleet, choosing and ranking within the same bounds, and
  shows for every ranked candidate what the catalogue knows of it and what said its
  capabilities.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app import APP_KEY
from proxy.config_selector import Selector
from proxy.config_serving import Health
from proxy.emulator import EmulatorSettings
from proxy.emulator.catalog import template_for
from proxy.emulator.synthesized import synthesize
from selector_model.catalog import Catalog, names
from tests.support import PIXEL_PNG, Emulator, EmulatorFront, Proxy, ServerThread

CATALOGUE = Catalog.shipped()
# Catalogue names of models that answer (no embedding model, no cloud-only model).
CHAT_NAMES = sorted(
    e.name
    for e in CATALOGUE.entries()
    if "embedding" not in e.specialties and not names.is_cloud(e.name) and ":" in e.name
)
EMBEDDERS = ("nomic-embed-text:latest", "mxbai-embed-large:latest", "bge-m3:latest")
# The embedding model the second proxy's `auto` takes on the embedding routes.
EMBEDDING_MODEL = EMBEDDERS[0]
UNKNOWN_NAMES = (
    "my-coder:latest",
    "hf.co/org/Model-GGUF:Q4_K_M",
    "hf.co/bartowski/Zeta-Instruct-GGUF:Q5_K_M",
    "mycorp-assistant:14b",
    "team/finetune:8b-q8_0",
    "zork:latest",
)
# Ollama's image generation models list `image` and no `completion`.
IMAGE_MAKERS = ("x/z-image-turbo:latest", "x/flux2-klein:4b")
CLOUD_NAMES = (
    "gpt-oss:120b-cloud",
    "qwen3-coder:480b-cloud",
    "deepseek-v3.1:671b-cloud",
    "kimi-k2-thinking:cloud",
    "glm-4.6:cloud",
)
QUANT_SUFFIXES = ("", "-q4_K_M", "-q8_0", "-fp16", "-q4_0")
ODD_SIZES = ("7.6B", "8x7B", "355M", "unknown", "", "1.5T", "0B", "B", "70")
ODD_FAMILIES = ("", "qwen3", "llama", "gemma3", "nonsense", "bert")
OPTIONAL = ("tools", "vision", "thinking", "insert")
# How the backend answers show for a model:
# full: as Ollama; no_details / odd_details: its details left out or odd; old: as an
# Ollama before 0.6.4 (no capabilities: the template and weights say them); missing:
# show answers 404 (tags and the catalogue say what it is); bare: `{}`.
SHOW_STYLES = ("full", "no_details", "odd_details", "old", "missing", "bare")
# remote: the entry names a `remote_host`, as Ollama lists a cloud model pulled under a
# local name.
TAG_STYLES = ("full", "no_details", "odd_details", "capabilities", "no_digest", "remote")
PROFILES = ("auto", "auto:best", "auto:fast")
UNKNOWN_PROFILE = "auto:nonsense"


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    capabilities: tuple[str, ...]  # what the backend enforces, as Ollama's show lists it
    show: str
    tag: str
    odd_size: str
    odd_family: str
    context: int  # model_info's context length; 0 leaves it out

    @property
    def reported(self) -> bool:
        """Whether the backend says this model's capabilities somewhere: its show, its
        tags entry, or its template and weights (an Ollama before 0.6.4)."""
        return self.show in ("full", "no_details", "odd_details", "old") or (
            self.tag == "capabilities"
        )

    @property
    def local(self) -> bool:
        return not names.is_cloud(self.name) and self.tag != "remote"


def _catalogued_capabilities(name: str) -> tuple[str, ...]:
    """What the catalogue says `name` can do (the emulator's own description of it),
    but insert, which only show says."""
    return tuple(c for c in synthesize(name).spec.capabilities if c != "insert")


@st.composite
def models(draw: st.DrawFn) -> Model:
    kind = draw(
        st.sampled_from(("catalogue", "catalogue", "unknown", "cloud", "embedder", "image"))
    )
    if kind == "catalogue":
        base = draw(st.sampled_from(CHAT_NAMES))
        name = base + draw(st.sampled_from(QUANT_SUFFIXES))
    elif kind == "unknown":
        name = draw(st.sampled_from(UNKNOWN_NAMES))
    elif kind == "cloud":
        name = draw(st.sampled_from(CLOUD_NAMES))
    elif kind == "image":
        name = draw(st.sampled_from(IMAGE_MAKERS))
    else:
        name = draw(st.sampled_from(EMBEDDERS))
    show = draw(st.sampled_from(SHOW_STYLES))
    tag = draw(st.sampled_from(TAG_STYLES))
    if kind == "embedder":
        capabilities: tuple[str, ...] = ("embedding",)
    elif kind == "image":
        capabilities = ("image",)
        # Nothing but its show and tags entry says what it is.
        show = draw(st.sampled_from(("full", "no_details", "odd_details")))
    else:
        chosen = draw(st.sets(st.sampled_from(OPTIONAL)))
        if show == "old":
            chosen.discard("thinking")  # an Ollama before 0.6.4 has no thinking
        capabilities = ("completion", *(c for c in OPTIONAL if c in chosen))
    if show in ("missing", "bare") and tag != "capabilities":
        # Nothing the backend answers says them: what the catalogue says is the truth.
        capabilities = _catalogued_capabilities(name)
    return Model(
        name=name,
        capabilities=capabilities,
        show=show,
        tag=tag,
        odd_size=draw(st.sampled_from(ODD_SIZES)),
        odd_family=draw(st.sampled_from(ODD_FAMILIES)),
        context=draw(st.sampled_from((0, 2048, 8192, 131072, 1 << 40))),
    )


fleets = st.lists(models(), min_size=1, max_size=7, unique_by=lambda m: m.name.casefold())


class OddBackend(EmulatorFront):
    """An Ollama stand-in that answers inference as the emulator does (refusing a
    capability a model lacks as Ollama does) and lists and shows its models as the
    fleet says: partly, oddly, or not at all."""

    def __init__(self, servers: ServerThread) -> None:
        self.fleet: dict[str, Model] = {}
        self.case = 0
        settings = EmulatorSettings(models=("qwen2.5:7b",), frozen_clock=True, chunk_delay_ms=0)
        super().__init__(servers, Emulator(servers, settings))

    def serve(self, fleet: list[Model]) -> None:
        """Serve `fleet` from now on, as models never seen before (new digests)."""
        self.case += 1
        self.fleet = {m.name: m for m in fleet}
        store = {}
        for model in fleet:
            spec = synthesize(model.name).spec
            spec = dataclasses.replace(
                spec,
                capabilities=model.capabilities,
                template=template_for(model.capabilities),
                made_from=f"case {self.case}",
                context_length=model.context or spec.context_length,
            )
            store[spec.name] = spec
        self.emulator.state.store = store

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        status, body, _ = await self._ask("GET", "/api/tags", b"")
        doc = orjson.loads(body)
        for entry in doc["models"]:
            model = self.fleet.get(entry["name"])
            if model is None:
                continue
            if model.tag == "no_details":
                del entry["details"]
            elif model.tag == "odd_details":
                entry["details"] = _odd_details(model)
            elif model.tag == "capabilities":
                entry["capabilities"] = list(model.capabilities)
            elif model.tag == "no_digest":
                del entry["digest"]
            elif model.tag == "remote":
                entry["remote_host"] = "https://ollama.com:443"
        return web.json_response(doc, status=status)

    async def _show(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        asked = orjson.loads(raw)
        name = str(asked.get("model") or asked.get("name") or "")
        model = next((m for n, m in self.fleet.items() if n.casefold() == name.casefold()), None)
        if model is not None and model.show == "missing":
            return web.json_response({"error": "404 page not found"}, status=404)
        if model is not None and model.show == "bare":
            return web.json_response({})
        status, body, _ = await self._ask("POST", "/api/show", raw)
        doc = orjson.loads(body)
        if model is None or status != 200:
            return web.json_response(doc, status=status)
        if model.show == "no_details":
            doc.pop("details", None)
        elif model.show == "odd_details":
            doc["details"] = _odd_details(model)
        elif model.show == "old":
            doc.pop("capabilities", None)
        info = doc.get("model_info") or {}
        if model.context == 0:
            for key in [k for k in info if k.endswith(".context_length")]:
                del info[key]
        return web.json_response(doc)


def _odd_details(model: Model) -> dict[str, Any]:
    return {
        "format": "gguf",
        "family": model.odd_family,
        "families": [model.odd_family, "clip"] if model.odd_family else None,
        "parameter_size": model.odd_size,
        "quantization_level": "" if model.odd_size == "unknown" else "Q4_K_M",
    }


@dataclasses.dataclass
class Rig:
    backend: OddBackend
    plain: Proxy  # no embedding model configured
    embedding: Proxy  # `selector.embedding_model` set

    def serve(self, fleet: list[Model]) -> None:
        self.backend.serve(fleet)
        for proxy in (self.plain, self.embedding):
            proxy.thread.call(proxy.app[APP_KEY].backends.refresh_all)


@pytest.fixture(scope="module")
def rig(servers: ServerThread) -> Iterator[Rig]:
    backend = OddBackend(servers)
    # Refreshed by the test alone, once per fleet.
    health = Health(interval_seconds=3600)
    plain = Proxy(servers, [backend.url], health=health)
    embedding = Proxy(
        servers,
        [backend.url],
        health=health,
        selector=Selector(embedding_model=EMBEDDING_MODEL),
    )
    yield Rig(backend, plain, embedding)
    embedding.stop()
    plain.stop()
    backend.stop()


_USER = {"role": "user", "content": "Write a haiku about the sea."}
_TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
_SHORT = {"num_predict": 3}
# (name, path, body without model, capabilities it needs)
SHAPES: tuple[tuple[str, str, dict[str, Any], tuple[str, ...]], ...] = (
    ("chat", "/api/chat", {"messages": [_USER], "stream": False, "options": _SHORT}, ()),
    (
        "chat streamed",
        "/api/chat",
        {"messages": [_USER], "options": _SHORT},
        (),
    ),
    (
        "chat with tools",
        "/api/chat",
        {"messages": [_USER], "tools": _TOOLS, "stream": False, "options": _SHORT},
        ("tools",),
    ),
    (
        "chat with an image",
        "/api/chat",
        {
            "messages": [{**_USER, "images": [PIXEL_PNG]}],
            "stream": False,
            "options": _SHORT,
        },
        ("vision",),
    ),
    (
        "chat thinking",
        "/api/chat",
        {"messages": [_USER], "think": True, "stream": False, "options": _SHORT},
        ("thinking",),
    ),
    ("generate", "/api/generate", {"prompt": "Hi", "stream": False, "options": _SHORT}, ()),
    (
        "generate with a suffix",
        "/api/generate",
        {"prompt": "def f(", "suffix": "    return x", "stream": False, "options": _SHORT},
        ("insert",),
    ),
    (
        "openai chat",
        "/v1/chat/completions",
        {"messages": [_USER], "max_tokens": 3},
        (),
    ),
    (
        "openai chat with an image",
        "/v1/chat/completions",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64," + PIXEL_PNG},
                        },
                    ],
                }
            ],
            "max_tokens": 3,
        },
        ("vision",),
    ),
    (
        "openai chat reasoning",
        "/v1/chat/completions",
        {"messages": [_USER], "reasoning_effort": "high", "max_tokens": 3},
        ("thinking",),
    ),
    (
        "openai completion with a suffix",
        "/v1/completions",
        {"prompt": "def f(", "suffix": "    return x", "max_tokens": 3},
        ("insert",),
    ),
    (
        "generate with an image",
        "/api/generate",
        {"prompt": "What is this?", "images": [PIXEL_PNG], "stream": False, "options": _SHORT},
        ("vision",),
    ),
    (
        "generate thinking hard",
        "/api/generate",
        {"prompt": "Hi", "think": "high", "stream": False, "options": _SHORT},
        ("thinking",),
    ),
    (
        "openai chat with tools",
        "/v1/chat/completions",
        {"messages": [_USER], "tools": _TOOLS, "max_tokens": 3},
        ("tools",),
    ),
)
EMBED_SHAPES = (
    ("/api/embed", {"input": "hello"}),
    ("/api/embeddings", {"prompt": "hello"}),
    ("/v1/embeddings", {"input": "hello"}),
)


def _servers_of(fleet: list[Model], needs: tuple[str, ...]) -> list[Model]:
    """The models that the backend says can serve a request needing `needs`, and that
    `auto` may choose: local, not a safety classifier."""
    wanted = {"completion", *needs}
    return [
        m
        for m in fleet
        if m.reported
        and m.local
        and not names.is_safety_classifier(m.name)
        and wanted <= set(m.capabilities)
    ]


def _error_of(path: str, resp: httpx.Response) -> str:
    """The error message of a refusal, in Ollama's shape for the route."""
    doc = resp.json()
    if path.startswith("/v1/"):
        error = doc["error"]
        assert isinstance(error, dict) and isinstance(error["message"], str), doc
        return str(error["message"])
    assert set(doc) == {"error"} and isinstance(doc["error"], str), doc
    return str(doc["error"])


def _check_request(
    client: httpx.Client,
    fleet: list[Model],
    shape: tuple[str, str, dict[str, Any], tuple[str, ...]],
    profile: str,
) -> None:
    label, path, body, needs = shape
    # As the backend lists them: `auto` names its choice so.
    by_name = {m.name: m for m in fleet}
    explained = client.post(
        "/api/autoroute/explain", params={"path": path}, json={**body, "model": profile}
    )
    resp = client.post(path, json={**body, "model": profile})
    where = f"{label} with {profile} on {[(m.name, m.capabilities, m.show, m.tag) for m in fleet]}"
    assert resp.status_code < 500, (where, resp.status_code, resp.text)
    assert explained.status_code < 500, (where, explained.status_code, explained.text)
    if profile == UNKNOWN_PROFILE:
        missing = f"model '{profile}' not found"
        assert resp.status_code == 404, (where, resp.text)
        assert missing in _error_of(path, resp), where
        assert explained.status_code == 404 and missing in explained.json()["error"]
        return
    able = _servers_of(fleet, needs)
    if able:
        assert resp.status_code == 200, (where, resp.text)
    if resp.status_code != 200:
        assert resp.status_code == 400, (where, resp.status_code, resp.text)
        assert _error_of(path, resp), where
        assert explained.status_code == 400, (where, explained.text)
        assert "no model can serve" in explained.json()["error"], (where, explained.text)
        return
    # Explain answers the fleet as the request was decided; its choice may differ from
    # the request's by what the answers before it measured (their speed).
    assert explained.status_code == 200, (where, explained.text)
    doc = explained.json()
    ranked = {entry["model"] for entry in doc["ranking"]}
    for chosen in (resp.headers["X-Autoroute-Model"], doc["model"]):
        model = by_name.get(chosen)
        assert model is not None, (where, chosen)
        assert model.local, (where, chosen)
        assert {"completion", *needs} <= set(model.capabilities), (where, chosen)
        assert chosen in ranked, (where, chosen, ranked)
    # Every model that answers is either ranked or filtered out with a reason.
    answering = {n for n, m in by_name.items() if "completion" in m.capabilities}
    assert answering <= ranked | set(doc["filtered"]), (where, doc["filtered"])
    assert not ranked & {n for n, m in by_name.items() if "completion" not in m.capabilities}
    for entry in doc["ranking"]:
        assert math.isfinite(entry["p_success"]) and math.isfinite(entry["utility"]), entry
        catalogue = entry["catalogue"]
        assert catalogue["origin"] in ("catalogue", "config", "profile", "nearest"), entry
        assert catalogue["uncertainty"] >= 0, entry
        assert entry["capabilities"]["from"] in ("show", "tags", "template", "catalogue")


def _check_offer(client: httpx.Client, fleet: list[Model]) -> None:
    """The model lists and `auto`'s show answer any fleet, and `auto` offers no more than
    the local models that generate can do."""
    assert client.get("/api/tags").status_code == 200
    assert client.get("/v1/models").status_code == 200
    generating = [m for m in fleet if m.local and "completion" in m.capabilities]
    can = {c for m in generating for c in m.capabilities}
    for profile in PROFILES:
        shown = client.post("/api/show", json={"model": profile})
        assert shown.status_code == 200, (profile, shown.text)
        offered = set(shown.json().get("capabilities") or ())
        assert offered <= can | {"completion"}, (profile, offered, fleet)


def _check_embed(rig: Rig, fleet: list[Model], path: str, body: dict[str, Any]) -> None:
    where = f"{path} on {[m.name for m in fleet]}"
    with httpx.Client(base_url=rig.plain.url, timeout=30) as client:
        resp = client.post(path, json={**body, "model": "auto"})
        assert resp.status_code == 400, (where, resp.text)
        assert "embedding_model" in _error_of(path, resp)
    with httpx.Client(base_url=rig.embedding.url, timeout=30) as client:
        for profile in (*PROFILES, UNKNOWN_PROFILE):
            resp = client.post(path, json={**body, "model": profile})
            if profile == UNKNOWN_PROFILE:
                assert resp.status_code == 404
                assert f"model '{profile}' not found" in _error_of(path, resp)
                continue
            if any(m.name == EMBEDDING_MODEL for m in fleet):
                assert resp.status_code == 200, (where, resp.text)
                assert resp.headers["X-Autoroute-Model"] == EMBEDDING_MODEL
            else:
                # No backend lists it: the backend's own 404, as for a named model.
                assert resp.status_code == 404, (where, resp.status_code, resp.text)
                _error_of(path, resp)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(fleet=fleets)
def test_auto_serves_any_fleet_as_it_can(rig: Rig, fleet: list[Model]) -> None:
    rig.serve(fleet)
    with httpx.Client(base_url=rig.plain.url, timeout=30) as client:
        _check_offer(client, fleet)
        for shape in SHAPES:
            for profile in (*PROFILES, UNKNOWN_PROFILE):
                _check_request(client, fleet, shape, profile)
    for path, body in EMBED_SHAPES:
        _check_embed(rig, fleet, path, body)


def _model(name: str, *capabilities: str, show: str = "full", tag: str = "full") -> Model:
    return Model(name, capabilities, show, tag, "", "", 0)


def test_a_fleet_of_embedding_models_alone_refuses_a_chat_as_ollama(rig: Rig) -> None:
    """A backend that lists only embedding models is healthy: a chat or generate `auto`
    cannot route is the request's 400 naming why (Ollama's answer to a chat with an
    embedding model is its 400 "does not support chat"), not a 503 that says no backend
    can serve and sends clients to retry."""
    rig.serve([_model(EMBEDDING_MODEL, "embedding"), _model(EMBEDDERS[1], "embedding")])
    with httpx.Client(base_url=rig.plain.url, timeout=30) as client:
        for path, body in (
            ("/api/chat", {"messages": [_USER], "stream": False}),
            ("/api/generate", {"prompt": "Hi", "stream": False}),
            ("/v1/chat/completions", {"messages": [_USER]}),
        ):
            for profile in PROFILES:
                resp = client.post(path, json={**body, "model": profile})
                assert resp.status_code == 400, (path, profile, resp.text)
                error = _error_of(path, resp)
                assert "no model can serve" in error and EMBEDDING_MODEL in error, error
                explained = client.post(
                    "/api/autoroute/explain", params={"path": path}, json={**body, "model": profile}
                )
                assert explained.status_code == 400 and explained.json()["error"] == error


_LOADS = (
    ("/api/generate", {}),
    ("/api/generate", {"prompt": "", "keep_alive": "5m"}),
    ("/api/chat", {}),
    ("/api/chat", {"messages": []}),
)


def test_a_load_of_auto_with_no_model_to_choose_is_refused_as_its_chat(rig: Rig) -> None:
    """Ollama refuses to load a model that does not complete text (scheduleRunner's
    capability check, a 400 "does not support generate", or chat) before it answers
    "load", so `ollama run` with an embedding model ends there. A load of a profile
    with no model it may choose (embedding models, a cloud model it does not name) is
    refused as the chat after it would be, in explain's words; an unload is answered
    before that check, as by Ollama. With a model to choose, it is a load again."""
    fleet = [_model(EMBEDDING_MODEL, "embedding"), _model(CLOUD_NAMES[0], "completion", "tools")]
    rig.serve(fleet)
    with httpx.Client(base_url=rig.plain.url, timeout=30) as client:
        for path, body in _LOADS:
            for profile in PROFILES:
                resp = client.post(path, json={**body, "model": profile})
                assert resp.status_code == 400, (path, body, profile, resp.text)
                error = _error_of(path, resp)
                assert "no model can serve" in error and EMBEDDING_MODEL in error, error
                explained = client.post(
                    "/api/autoroute/explain", params={"path": path}, json={**body, "model": profile}
                )
                assert explained.status_code == 400 and explained.json()["error"] == error
                unload = client.post(path, json={**body, "model": profile, "keep_alive": 0})
                assert unload.status_code == 200 and unload.json()["done_reason"] == "unload"
    rig.serve([*fleet, _model("qwen3:8b", "completion", "tools")])
    with httpx.Client(base_url=rig.plain.url, timeout=30) as client:
        for path, body in _LOADS:
            resp = client.post(path, json={**body, "model": "auto"})
            assert resp.status_code == 200 and resp.json()["done_reason"] == "load", resp.text


def test_an_image_generation_model_is_never_chosen_to_chat(rig: Rig) -> None:
    """Ollama's image generation models list `image` and not `completion`: Ollama
    refuses a chat or a generate with one (400), so `auto` never ranks one, and with
    nothing else to choose from refuses saying why."""
    maker = IMAGE_MAKERS[1]
    embedder = _model(EMBEDDING_MODEL, "embedding")
    rig.serve([_model(maker, "image"), embedder, _model("qwen3:8b", "completion", "tools")])
    with httpx.Client(base_url=rig.plain.url, timeout=30) as client:
        for label, path, body, _ in SHAPES[:2] + SHAPES[5:6]:
            for profile in PROFILES:
                explained = client.post(
                    "/api/autoroute/explain", params={"path": path}, json={**body, "model": profile}
                )
                assert explained.status_code == 200, (label, profile, explained.text)
                assert maker not in {e["model"] for e in explained.json()["ranking"]}, label
                # Explain says why each model it did not rank was left out, as the
                # refusal where none is left does.
                filtered = explained.json()["filtered"]
                assert filtered[maker] == "lists no completion: it neither chats nor generates"
                assert "embedding model" in filtered[EMBEDDING_MODEL], filtered
                resp = client.post(path, json={**body, "model": profile})
                assert resp.status_code == 200, (label, profile, resp.text)
                assert resp.headers["X-Autoroute-Model"] == "qwen3:8b"
    rig.serve([_model(maker, "image")])
    with httpx.Client(base_url=rig.plain.url, timeout=30) as client:
        resp = client.post("/api/chat", json={"model": "auto", "messages": [_USER]})
        assert resp.status_code == 400, resp.text
        assert "no model can serve" in _error_of("/api/chat", resp) and maker in resp.text


@pytest.mark.parametrize("name", ["my-qwen-tune:latest", "hf.co/someone/Tuned-8B-GGUF:Q4_K_M"])
def test_an_unseen_name_of_a_known_architecture_is_placed_beside_it(rig: Rig, name: str) -> None:
    """A name the catalogue lacks, whose show says a qwen3 of 8.2B that thinks and calls
    tools (as Ollama shows any Qwen3), is described from the catalogue's Qwen3 entries:
    areas near qwen3:8b's, the uncertainty of a placement visible in explain."""
    tune = Model(
        name, ("completion", "tools", "thinking"), "odd_details", "full", "8.2B", "qwen3", 0
    )
    rig.serve([_model("qwen3:8b", "completion", "tools", "thinking"), tune])
    with httpx.Client(base_url=rig.plain.url, timeout=30) as client:
        explained = client.post(
            "/api/autoroute/explain", json={"model": "auto:best", "messages": [_USER]}
        )
    assert explained.status_code == 200, explained.text
    ranking = {entry["model"]: entry for entry in explained.json()["ranking"]}
    placed, listed = ranking[name], ranking["qwen3:8b"]
    catalogue = placed["catalogue"]
    assert catalogue["origin"] == "nearest" and catalogue["family"] == "qwen3", catalogue
    assert catalogue["neighbours"] and all("qwen3" in n for n in catalogue["neighbours"])
    assert listed["catalogue"]["origin"] == "catalogue"
    # How far it may be from its neighbours' scores shows, where qwen3:8b's published
    # results leave none.
    assert catalogue["uncertainty"] > listed["catalogue"]["uncertainty"]
    assert placed["spread"] > listed["spread"]
    # Qwen publishes no code result for Qwen3: the listed entries' code is placed beside
    # Qwen2.5's, a tune known by its architecture alone has its code from its neighbours.
    areas, beside = catalogue["areas"], listed["catalogue"]["areas"]
    read = [area for area in areas if area != "code"]
    assert sum(abs(areas[a] - beside[a]) for a in read) / len(read) < 0.05, (areas, beside)
    assert abs(placed["p_success"] - listed["p_success"]) < 0.1, (placed, listed)


def test_auto_names_the_chosen_model_as_its_backend_lists_it(rig: Rig) -> None:
    """Ollama lists a model as it was pulled (`qwen3:8b-q4_K_M`, a Hugging Face name's
    capitals) and reads names case-insensitively: `auto` names its choice, in the body
    it sends, its answer's headers and explain, as the list does, so that a client
    finds it there."""
    fleet = [_model(n, "completion", "tools") for n in ("qwen3:8b-q4_K_M", UNKNOWN_NAMES[1])]
    listed = {m.name for m in fleet}
    for model in fleet:
        rig.serve([model])
        with httpx.Client(base_url=rig.plain.url, timeout=30) as client:
            resp = client.post(
                "/api/chat", json={"model": "auto", "messages": [_USER], "stream": False}
            )
            assert resp.status_code == 200, resp.text
            assert resp.headers["X-Autoroute-Model"] == model.name
            assert resp.json()["model"] == model.name
            doc = client.post(
                "/api/autoroute/explain", json={"model": "auto", "messages": [_USER]}
            ).json()
            assert doc["model"] == model.name
            assert {entry["model"] for entry in doc["ranking"]} <= listed
            # A refusal names each model it could not choose as listed too.
            seeing = {"messages": [{**_USER, "images": [PIXEL_PNG]}], "stream": False}
            refused = client.post("/api/chat", json={**seeing, "model": "auto"})
            assert refused.status_code == 400
            assert f"{model.name}: lacks vision" in _error_of("/api/chat", refused), refused.text
            # The next generate with the context an answer returned goes on with the model
            # that wrote it, whatever its spelling.
            first = client.post("/api/generate", json={**_GENERATE, "model": "auto"})
            assert first.headers["X-Autoroute-Model"] == model.name
            more = {**_GENERATE, "model": "auto", "context": first.json()["context"]}
            going_on = client.post("/api/generate", json=more)
            assert going_on.headers["X-Autoroute-Reason"] == "context", going_on.headers
        # The usage event names the served model as the answer does.
        logged = _usage_event(rig.plain, resp.headers["X-Request-Id"])
        assert logged["served_model"] == model.name, logged


_GENERATE = {"prompt": "Hi", "stream": False, "options": {"num_predict": 3}}


def _usage_event(proxy: Proxy, request_id: str) -> dict[str, Any]:
    """The usage event of request `request_id`, once the proxy has written it."""
    path = Path(proxy.config.usage.file_path)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = path.read_bytes().splitlines() if path.exists() else []
        for event in map(orjson.loads, lines):
            if event["request_id"] == request_id:
                return dict(event)
        time.sleep(0.02)
    raise AssertionError(f"no usage event for {request_id}")

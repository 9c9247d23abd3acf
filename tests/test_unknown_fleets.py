"""`auto` as an outsider meets it: fleets of models no catalogue names (a user's own
tunes, Hugging Face pulls), described only by what their backend's `/api/show` says
(architecture, size, quantization, capabilities), some of whose shows fail, hang or
answer garbage, and one of which vanishes after it was listed. Every request goes
through the proxy's HTTP routes; every check is a general principle, not a dataset's
answer:

- a model whose show reads as a coder takes code over a general model of its family
  and size, and a family's 70B takes hard maths over its 8B when quality alone counts;
- a request never goes to a model that cannot serve it (an embedding model for a chat,
  one without vision for images, without tools for tools, without thinking for
  `think`, a cloud model no profile names);
- a show that fails, hangs or answers garbage leaves its model a candidate described
  from its tags entry, and `auto` answering;
- a model its backend answers 404 for is not chosen again;
- every answer names the model that served it, in its body and `X-Autoroute-Model`,
  and carries an `X-Request-Id`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from proxy.app import APP_KEY
from proxy.auth import hash_key
from proxy.auto_routes import LOST
from proxy.config_selector import ModelEntry, Selector
from proxy.config_services import ApiKey, Auth
from proxy.config_serving import Health, Routing
from proxy.emulator import EmulatorSettings
from proxy.emulator.catalog import REGISTRY, ModelSpec, template_for
from proxy.emulator.synthesized import synthesize
from tests.support import PIXEL_PNG, Emulator, EmulatorFront, Proxy, ServerThread, bearer

_COMPLETION_TOOLS = ("completion", "tools")


def _spec(
    name: str,
    family: str,
    billions: float,
    capabilities: tuple[str, ...] = _COMPLETION_TOOLS,
    context: int = 32768,
    quantization: str = "Q4_K_M",
) -> ModelSpec:
    """`name` as its backend shows it: the architecture, size, quantization and
    capabilities given, whatever the name says."""
    count = round(billions * 1e9)
    spec = synthesize(name).spec
    return dataclasses.replace(
        spec,
        family=family,
        parameter_size=f"{billions:g}B" if billions >= 1 else f"{round(billions * 1000)}M",
        parameter_count=count,
        quantization_level=quantization,
        size=round(count * 4.9 / 8) + 1_000_000,
        capabilities=capabilities,
        template=template_for(capabilities),
        context_length=context,
    )


CODER = _spec("acme-coder:latest", "qwen2", 7.6)
GENERAL = _spec("acme-chat:latest", "qwen2", 7.6)
# A name that says nothing, whose template takes a suffix (Ollama lists `insert`).
FIM = _spec("acme-fim:latest", "qwen2", 7.6, ("completion", "tools", "insert"))
BIG = _spec("team-llama:70b", "llama", 70.6, context=131072)
SMALL = _spec("team-llama:8b", "llama", 8.0, context=131072)
HF = _spec("hf.co/someone/Some-Model-GGUF:Q4_K_M", "llama", 8.0, ("completion",), 131072)
EMBEDDER = _spec("acme-embed:latest", "bert", 0.335, ("embedding",), 512, "F16")
SEEING = _spec("acme-vision:latest", "gemma3", 4.3, ("completion", "vision"), 131072)
THINKER = _spec("acme-think:latest", "qwen3", 8.2, ("completion", "tools", "thinking"), 40960)
CLOUD = _spec("team-big:cloud", "gptoss", 120.0, ("completion", "tools", "thinking"), 131072)
FLEET = (CODER, GENERAL, BIG, SMALL, HF, EMBEDDER, SEEING, THINKER, CLOUD)


class Backend(EmulatorFront):
    """The emulator behind a front that answers `/api/show` for some models as a broken
    server does (`shows`: a 500, no answer, bytes that are no JSON, JSON of the wrong
    shape) and keeps listing in `/api/tags` the models of `kept` after the emulator has
    lost them, as Ollama lists a manifest whose weights are gone."""

    def __init__(self, servers: ServerThread, fleet: tuple[ModelSpec, ...]) -> None:
        emulator = Emulator(
            servers,
            EmulatorSettings(
                models=("qwen2.5:7b",), frozen_clock=True, chunk_delay_ms=0, speed_by_size=True
            ),
        )
        emulator.state.store = {spec.name: spec for spec in fleet}
        self.shows: dict[str, str] = {}
        self.kept: dict[str, dict[str, Any]] = {}
        super().__init__(servers, emulator)

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        _, body, _ = await self._ask("GET", "/api/tags", b"")
        doc = orjson.loads(body)
        listed = {entry["name"] for entry in doc["models"]}
        doc["models"] += [entry for name, entry in self.kept.items() if name not in listed]
        return web.json_response(doc)

    async def _show(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        fault = self.shows.get(str(orjson.loads(raw).get("model")))
        if fault == "error500":
            return web.json_response({"error": "input/output error"}, status=500)
        if fault == "hang":
            await asyncio.sleep(3600)
        if fault == "garbage":
            return web.Response(body=b"<html>502 Bad Gateway</html>", content_type="text/html")
        if fault == "wrong_types":
            doc = {"details": ["qwen2"], "capabilities": "completion", "model_info": [1]}
            return web.json_response(doc)
        if fault == "odd_values":
            return web.json_response(
                {
                    "details": {"family": 7, "parameter_size": ["7B"], "quantization_level": {}},
                    "capabilities": ["completion", 5, None],
                    "model_info": {"llama.context_length": "long"},
                }
            )
        status, body, kind = await self._ask("POST", "/api/show", raw)
        return web.Response(status=status, body=body, headers={"Content-Type": kind})

    def lose(self, name: str) -> None:
        """The emulator loses `name` (its weights gone); the front still lists it."""
        with httpx.Client() as client:
            (entry,) = [
                m
                for m in client.get(self.emulator.url + "/api/tags").json()["models"]
                if m["name"] == name
            ]
        self.kept[name] = entry
        del self.emulator.state.store[name]


@pytest.fixture(scope="module")
def backend(servers: ServerThread) -> Iterator[Backend]:
    own = Backend(servers, FLEET)
    yield own
    own.stop()


@pytest.fixture(scope="module")
def proxy(servers: ServerThread, backend: Backend) -> Iterator[Proxy]:
    prx = Proxy(servers, [backend.url], selector=Selector(embedding_model=EMBEDDER.name))
    yield prx
    prx.stop()


PROFILES = ("auto", "auto:best", "auto:fast")
_TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
CODE = (
    "Write a Python function that parses an ISO 8601 timestamp with an optional UTC "
    "offset into a timezone-aware datetime, raising ValueError on bad input, and "
    "pytest unit tests for it."
)
MATHS = (
    "Let f(x) = x^3 - 6x^2 + 11x - 6. Find every real root, prove there are no others, "
    "then compute the integral of f from 0 to 4 and the sum of the squares of the roots."
)
# (kind, the body's fields but the model, the capabilities it needs)
KINDS: tuple[tuple[str, dict[str, Any], frozenset[str]], ...] = (
    ("code", {"messages": [{"role": "user", "content": CODE}]}, frozenset()),
    ("maths", {"messages": [{"role": "user", "content": MATHS}]}, frozenset()),
    (
        "knowledge",
        {"messages": [{"role": "user", "content": "Who wrote the Book of Kells, and when?"}]},
        frozenset(),
    ),
    (
        "instructions",
        {
            "messages": [
                {
                    "role": "user",
                    "content": "Answer in exactly three lowercase words, no punctuation: "
                    "what colour is the sky?",
                }
            ]
        },
        frozenset(),
    ),
    (
        "images",
        {"messages": [{"role": "user", "content": "What is this?", "images": [PIXEL_PNG]}]},
        frozenset({"vision"}),
    ),
    (
        "tools",
        {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": _TOOLS},
        frozenset({"tools"}),
    ),
    (
        "think",
        {"messages": [{"role": "user", "content": "Is 221 prime?"}], "think": True},
        frozenset({"thinking"}),
    ),
)


def _served(resp: httpx.Response, where: str) -> str:
    """The model that served `resp`, checked to be named alike in its body and header,
    with the request's id."""
    assert resp.status_code == 200, (where, resp.status_code, resp.text)
    model = resp.headers["X-Autoroute-Model"]
    assert resp.json()["model"] == model, (where, resp.json()["model"], model)
    assert resp.headers["X-Request-Id"], where
    return model


def _every_kind(
    client: httpx.Client, fleet: tuple[ModelSpec, ...], paths: tuple[str, ...] = ("/api/chat",)
) -> int:
    """Each kind of request under each profile, on each of `paths`: the model that
    serves it lists `completion` and what the request needs, and is not the cloud
    model. How many were answered."""
    by_name = {spec.name: spec for spec in fleet}
    answered = 0
    for kind, fields, needs in KINDS:
        for profile in PROFILES:
            for path in paths:
                body: dict[str, Any] = {**fields, "model": profile}
                if path == "/api/chat":
                    body |= {"stream": False, "options": {"num_predict": 8}}
                elif kind in ("images", "think"):
                    continue  # the OpenAI shapes of these are fleet_properties'
                else:
                    body["max_tokens"] = 8
                chosen = _served(client.post(path, json=body), f"{kind} {profile} {path}")
                capabilities = set(by_name[chosen].capabilities)
                assert {"completion", *needs} <= capabilities, (kind, profile, chosen)
                assert chosen != CLOUD.name, (kind, profile)
                answered += 1
    return answered


def test_every_choice_can_serve_its_request(proxy: Proxy) -> None:
    """Of the fleet, each request goes to a local model that lists `completion` and
    what the request needs: never the embedding model, the cloud model, a model
    without vision for an image, without tools for tools, without thinking for
    `think`."""
    with httpx.Client(base_url=proxy.url, timeout=60) as client:
        counted = _every_kind(client, FLEET)
        embedded = client.post("/api/embed", json={"model": "auto", "input": "hello"})
        assert embedded.status_code == 200, embedded.text
        assert embedded.headers["X-Autoroute-Model"] == EMBEDDER.name
        assert embedded.json()["model"] == EMBEDDER.name and embedded.headers["X-Request-Id"]
    assert counted == len(KINDS) * len(PROFILES)


@pytest.fixture
def rig(servers: ServerThread) -> Iterator[Any]:
    """A backend serving a fleet and a proxy in front of it, per test."""
    made: list[Backend | Proxy] = []

    def serve(
        fleet: tuple[ModelSpec, ...], shows: dict[str, str] | None = None, **sections: Any
    ) -> tuple[Backend, Proxy]:
        own = Backend(servers, fleet)
        own.shows = dict(shows or {})
        made.append(own)
        prx = Proxy(servers, [own.url], **sections)
        made.append(prx)
        return own, prx

    yield serve
    for server in reversed(made):
        server.stop()


def _chat(client: httpx.Client, profile: str, content: str, path: str = "/api/chat") -> str:
    messages = [{"role": "user", "content": content}]
    if path == "/api/chat":
        body: dict[str, Any] = {
            "messages": messages,
            "stream": False,
            "options": {"num_predict": 8},
        }
    else:
        body = {"messages": messages, "max_tokens": 8}
    return _served(client.post(path, json={**body, "model": profile}), f"{profile} {path}")


@pytest.mark.parametrize("coder", [CODER, FIM], ids=["by its name", "by its insert"])
def test_a_coder_by_its_show_takes_code_over_a_general_model_of_its_size(
    rig: Any, coder: ModelSpec
) -> None:
    """Two unknown names the backend shows alike (qwen2, 7.6B, Q4_K_M, completion and
    tools), one a coder by its name or by the fill-in-the-middle its template takes: a
    coding request goes to the coder whatever the profile and route."""
    _, prx = rig((coder, GENERAL))
    with httpx.Client(base_url=prx.url, timeout=60) as client:
        chosen = [
            _chat(client, profile, CODE, path)
            for profile in PROFILES
            for path in ("/api/chat", "/v1/chat/completions")
        ]
    assert chosen == [coder.name] * 6, chosen


def test_a_familys_70b_takes_hard_maths_over_its_8b_when_quality_alone_counts(rig: Any) -> None:
    _, prx = rig((BIG, SMALL))
    with httpx.Client(base_url=prx.url, timeout=60) as client:
        chosen = [
            _chat(client, "auto:best", MATHS, path)
            for path in ("/api/chat", "/v1/chat/completions")
        ]
        explained = client.post(
            "/api/autoroute/explain",
            json={"model": "auto:best", "messages": [{"role": "user", "content": MATHS}]},
        ).json()
    assert chosen == [BIG.name] * 2, chosen
    scores = {row["model"]: row["p_success"] for row in explained["ranking"]}
    assert scores[BIG.name] > scores[SMALL.name], scores


SHOW_FAULTS = ("error500", "hang", "garbage", "wrong_types", "odd_values")


def test_shows_that_fail_hang_or_answer_garbage_leave_auto_answering(rig: Any) -> None:
    """Beside models whose shows answer, one model per way a show goes wrong (a 500,
    no answer, HTML, JSON of the wrong shape or values): the proxy starts (its refresh
    bounds each show by the refresh interval), each such model stays a candidate
    described from its tags entry (its capabilities as listed there), and every
    profile answers every kind of request with a model that can serve it."""
    broken = tuple(
        _spec(f"broken-{fault.replace('_', '-')}:latest", "llama", 8.0, context=131072)
        for fault in SHOW_FAULTS
    )
    faults = dict(zip((spec.name for spec in broken), SHOW_FAULTS, strict=True))
    fleet = (CODER, BIG, SEEING, THINKER, *broken)
    own, prx = rig(fleet, faults, health=Health(interval_seconds=1))
    models = prx.app[APP_KEY].registry.models
    assert set(models) == {spec.name for spec in fleet}
    for name in faults:
        assert models[name].capabilities_from == "tags", (name, models[name].capabilities_from)
        assert models[name].candidate.capabilities == {"completion", "tools"}
    with httpx.Client(base_url=prx.url, timeout=60) as client:
        answered = _every_kind(client, fleet)
        explained = client.post(
            "/api/autoroute/explain", json={"model": "auto", **KINDS[0][1]}
        ).json()
    assert answered == len(KINDS) * len(PROFILES)
    ranked = {row["model"]: row for row in explained["ranking"]}
    for name in faults:
        assert ranked[name]["capabilities"]["from"] == "tags", ranked[name]
        assert ranked[name]["catalogue"]["origin"] == "nearest", ranked[name]
    assert own.shows == faults


_MATHS = {"messages": [{"role": "user", "content": MATHS}], "options": {"num_predict": 8}}


def _maths(client: httpx.Client, profile: str = "auto:best") -> httpx.Response:
    return client.post("/api/chat", json={**_MATHS, "model": profile, "stream": False})


def test_a_model_its_backend_answers_it_lacks_is_not_chosen_again(rig: Any) -> None:
    """The backend goes on listing the model `auto` takes for hard maths, but its weights
    are gone: Ollama answers a request for it 404 `model '…' not found` (its manifest
    listed, the blob missing). The request that finds it gone is decided again, not
    answered that 404 (it asked for `auto`, not for the model), and `auto` does not
    choose it again, on later requests nor after the backend's next list, which still
    shows it; a pull that lists it anew (another modification time) makes it a
    candidate again. A request naming it gets the backend's own 404."""
    own, prx = rig((BIG, SMALL, CODER), health=Health(interval_seconds=3600))
    app = prx.app[APP_KEY]
    with httpx.Client(base_url=prx.url, timeout=60) as client:
        assert _served(_maths(client), "before") == BIG.name
        own.lose(BIG.name)
        streamed = {**_MATHS, "model": "auto:best", "stream": True}
        with client.stream("POST", "/api/chat", json=streamed) as resp:
            assert resp.status_code == 200, resp.read()
            lines = [orjson.loads(line) for line in resp.iter_lines() if line]
            first = resp.headers["X-Autoroute-Model"]
        assert lines[-1]["done"] and {line["model"] for line in lines} == {first}
        after = [first] + [_served(_maths(client), f"after {i}") for i in range(3)]
        prx.thread.call(app.backends.refresh_all)
        assert BIG.name in {m["name"] for m in client.get(own.url + "/api/tags").json()["models"]}
        refreshed = [_served(_maths(client), f"refreshed {i}") for i in range(3)]
        (shown,) = client.get("/api/autoroute/dashboard.json").json()["backends"]
        explained = client.post(
            "/api/autoroute/explain",
            json={"model": "auto:best", "messages": [{"role": "user", "content": MATHS}]},
        ).json()
        named = client.post(
            "/api/chat", json={"model": BIG.name, "messages": [{"role": "user", "content": "hi"}]}
        )
        assert named.status_code == 404, named.text
        assert named.json() == {"error": f"model '{BIG.name}' not found"}
        own.kept.clear()
        own.emulator.state.store[BIG.name] = dataclasses.replace(
            BIG, modified_at="2025-06-01T10:00:00.5+00:00"
        )
        prx.thread.call(app.backends.refresh_all)
        again = _served(_maths(client), "pulled again")
        (pulled,) = client.get("/api/autoroute/dashboard.json").json()["backends"]
    assert BIG.name not in after + refreshed, (after, refreshed)
    assert (shown["lost"], pulled["lost"]) == ([BIG.name], [])
    assert BIG.name not in {row["model"] for row in explained["ranking"]}
    assert explained["filtered"][BIG.name] == f"lost on {own.url}: {LOST}"
    assert again == BIG.name


def test_explain_names_where_a_model_was_lost_as_the_key_may_see_the_fleet(rig: Any) -> None:
    """Explain lists a model `auto` found gone from its backend among the models left
    out, saying where: the backend's URL to a key that may see the fleet, its public
    name to one with a model list, and nothing to a key whose list lacks the model."""
    admin, user, other = "k-admin-lost", "k-user-lost", "k-other-lost"
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(admin), name="ops", role="admin"),
            ApiKey(sha256=hash_key(user), name="dev", models=(BIG.name, SMALL.name)),
            ApiKey(sha256=hash_key(other), name="other", models=(SMALL.name, CODER.name)),
        )
    )
    own, prx = rig((BIG, SMALL, CODER), health=Health(interval_seconds=3600), auth=auth)
    own.lose(BIG.name)
    with httpx.Client(base_url=prx.url, timeout=60) as client:
        body = {**_MATHS, "model": "auto:best", "stream": False}
        found = _served(client.post("/api/chat", json=body, headers=bearer(admin)), "auto")
        filtered = {
            key: client.post("/api/autoroute/explain", json=body, headers=bearer(key)).json()[
                "filtered"
            ]
            for key in (admin, user, other)
        }
    assert found != BIG.name
    assert filtered[admin][BIG.name] == f"lost on {own.url}: {LOST}"
    assert filtered[user][BIG.name] == f"lost on backends[0]: {LOST}"
    assert BIG.name not in filtered[other]


def test_explain_shows_the_placement_of_a_name_no_catalogue_lists_and_a_like_replaces_it(
    rig: Any,
) -> None:
    """Explain says, for an unknown name, that it is placed (`nearest`), beside which
    entries of its architecture, with what uncertainty and spread; described in the
    configuration `like` a catalogue entry (`selector.models`), the same weights are
    that entry (origin `config`, its published figures, no spread), and `auto` takes
    them for code, as a well-described model is taken over models rated from imputed
    areas alone."""
    fleet = (CODER, GENERAL, BIG, SMALL)
    described = Selector(models={CODER.name: ModelEntry(like="qwen2.5-coder:7b")})
    rows = {}
    chosen = {}
    for label, selector in (("placed", Selector()), ("described", described)):
        _, prx = rig(fleet, selector=selector)
        with httpx.Client(base_url=prx.url, timeout=60) as client:
            explained = client.post(
                "/api/autoroute/explain",
                json={"model": "auto", "messages": [{"role": "user", "content": CODE}]},
            ).json()
            chosen[label] = [_chat(client, profile, CODE) for profile in ("auto", "auto:fast")]
        rows[label] = {row["model"]: row for row in explained["ranking"]}
    placed = rows["placed"][CODER.name]
    catalogue = placed["catalogue"]
    assert (catalogue["origin"], catalogue["entry"], catalogue["family"]) == (
        "nearest",
        None,
        "qwen2",
    )
    assert catalogue["neighbours"] and all(n.startswith("qwen") for n in catalogue["neighbours"])
    assert 0 < catalogue["uncertainty"] <= 1 and placed["spread"] > 0
    assert set(catalogue["imputed"]) == {"knowledge", "reasoning", "math", "code", "instruction"}
    # The coder's code is placed above its general twin's.
    general = rows["placed"][GENERAL.name]["catalogue"]["areas"]
    assert catalogue["areas"]["code"] > general["code"]
    liked = rows["described"][CODER.name]
    assert (liked["catalogue"]["origin"], liked["catalogue"]["entry"]) == (
        "config",
        "qwen2.5-coder:7b",
    )
    # The entry's knowledge, published but for the areas it is missing: surer than the
    # placement by architecture and size.
    assert liked["catalogue"]["uncertainty"] < catalogue["uncertainty"]
    assert liked["spread"] < placed["spread"]
    assert liked["catalogue"]["sources"], liked["catalogue"]
    # The other models are read as before.
    assert rows["described"][BIG.name]["catalogue"] == rows["placed"][BIG.name]["catalogue"]
    assert chosen["described"] == [CODER.name] * 2, chosen


def _forty() -> tuple[ModelSpec, ...]:
    """Forty models of names no catalogue lists: six architectures at the sizes their
    families come in, some coders, thinkers, seeing and embedding models, one cloud."""
    shapes = (
        ("llama", (1.2, 3.2, 8.0, 70.6)),
        ("qwen2", (0.5, 1.5, 7.6, 14.8, 32.8)),
        ("qwen3", (0.6, 4.0, 8.2, 14.8, 32.8)),
        ("gemma3", (1.0, 4.3, 12.2, 27.4)),
        ("mistral", (7.2, 24.0)),
        ("phi3", (3.8, 14.7)),
    )
    made = [EMBEDDER, CLOUD, HF]
    for family, sizes in shapes:
        for billions in sizes:
            size = f"{billions:g}"
            made.append(_spec(f"team-{family}:{size}b", family, billions))
            if len(made) % 3 == 0:
                capabilities: tuple[str, ...] = ("completion", "tools", "insert")
                made.append(_spec(f"own-{family}-coder:{size}b", family, billions, capabilities))
            if family == "qwen3":
                capabilities = ("completion", "tools", "thinking")
                made.append(_spec(f"own-{family}-r:{size}b", family, billions, capabilities))
            if family == "gemma3" and billions > 1:
                capabilities = ("completion", "vision")
                made.append(_spec(f"own-{family}-eye:{size}b", family, billions, capabilities))
    return tuple(made[:40])


def test_a_fleet_of_forty_unknown_names_decides_every_kind_of_request(rig: Any) -> None:
    fleet = _forty()
    assert len(fleet) == 40 and len({spec.name for spec in fleet}) == 40
    _, prx = rig(fleet)
    with httpx.Client(base_url=prx.url, timeout=60) as client:
        answered = _every_kind(client, fleet, ("/api/chat", "/v1/chat/completions"))
        explained = client.post(
            "/api/autoroute/explain", json={"model": "auto", **KINDS[0][1]}
        ).json()
    assert answered == len(PROFILES) * (2 * len(KINDS) - 2)
    generating = {s.name for s in fleet if "completion" in s.capabilities}
    assert {row["model"] for row in explained["ranking"]} | set(explained["filtered"]) >= (
        generating
    )
    assert EMBEDDER.name in explained["filtered"]


def test_a_model_one_backend_lost_is_served_where_another_lists_it(servers: ServerThread) -> None:
    """Two backends list the 70B; the first loses its weights and goes on listing it.
    `auto`'s request that finds it gone there is served by the other (the same model,
    nothing of the 404 reaching the client), and so is every request after it,
    naming the model or not."""
    first, second = Backend(servers, (BIG, SMALL)), Backend(servers, (BIG, SMALL))
    prx = Proxy(servers, [first.url, second.url], health=Health(interval_seconds=3600))
    try:
        first.lose(BIG.name)
        with httpx.Client(base_url=prx.url, timeout=60) as client:
            chosen = [_served(_maths(client), f"auto {i}") for i in range(3)]
            named = {**_MATHS, "model": BIG.name, "stream": False}
            by_name = [_served(client.post("/api/chat", json=named), "named") for _ in range(2)]
        assert chosen == [BIG.name] * 3 and by_name == [BIG.name] * 2
        assert first.emulator.state.completed == 0
        assert second.emulator.state.completed == 5
    finally:
        prx.stop()
        second.stop()
        first.stop()


def test_a_pull_of_a_model_a_backend_lost_goes_there_and_makes_it_its_own_again(
    servers: ServerThread,
) -> None:
    """Two backends list the 70B; `auto` finds the first has lost its weights. With
    model changes sent to one backend (`admin_target: first`), a pull of the model goes
    to the backend that lost it, where the pull does its work (the other has it
    already), and once it succeeds the model is that backend's again, even though its
    list shows it as before (the proxy saw the pull succeed)."""
    big, small = REGISTRY["llama3.3:70b"], REGISTRY["llama3.1:8b"]
    first, second = Backend(servers, (big, small)), Backend(servers, (big, small))
    prx = Proxy(
        servers,
        [first.url, second.url],
        health=Health(interval_seconds=3600),
        routing=Routing(admin_target="first"),
    )
    app = prx.app[APP_KEY]
    try:
        with httpx.Client(base_url=prx.url, timeout=60) as client:
            first.lose(big.name)
            assert _served(_maths(client), "auto") == big.name
            lost = [sorted(s.lost) for s in app.backends.states]
            pulled = client.post("/api/pull", json={"model": big.name, "stream": False})
            assert pulled.status_code == 200, pulled.text
            prx.thread.call(app.backends.refresh_all)
            shown = client.get("/api/autoroute/dashboard.json").json()["backends"]
        assert lost == [[big.name], []]
        assert big.name in first.emulator.state.store
        assert [backend["lost"] for backend in shown] == [[], []]
        assert all(s.models is not None and big.name in s.models for s in app.backends.states)
    finally:
        prx.stop()
        second.stop()
        first.stop()


def test_a_request_naming_a_model_its_backend_answers_it_lacks_leaves_it_listed(rig: Any) -> None:
    """A 404 `model '…' not found` to a request that names the model is the backend's
    answer to the client's spelling of the name, which Ollama may resolve otherwise
    than the proxy: it is relayed, and the model stays the backend's for everyone
    else. Only `auto`, which wrote the name as the list spells it, takes it out."""
    own, prx = rig((BIG, SMALL, CODER), health=Health(interval_seconds=3600))
    app = prx.app[APP_KEY]
    with httpx.Client(base_url=prx.url, timeout=60) as client:
        own.lose(BIG.name)
        named = client.post(
            "/api/chat", json={"model": BIG.name, "messages": [{"role": "user", "content": "hi"}]}
        )
        assert named.status_code == 404, named.text
        listed = [s.models for s in app.backends.states]
        assert _served(_maths(client), "auto after") != BIG.name
        after = [s.models for s in app.backends.states]
    assert all(models is not None and BIG.name in models for models in listed), listed
    assert all(models is not None and BIG.name not in models for models in after), after


def test_a_request_naming_a_model_one_backend_lacks_is_served_where_another_lists_it(
    servers: ServerThread,
) -> None:
    """Two backends list the 70B; the first has lost its weights, which no `auto`
    request has found. A request naming the model that the first answers 404 `model
    '…' not found` goes to the second, which serves it, on every route and streamed or
    not: nothing of the 404 reaches the client, and the model stays the first's (a
    named request's 404 takes no model from anyone). Once the second has lost it too,
    the client gets the last backend's own 404; and once `auto` has found it gone from
    both, a request naming it gets a backend's 404 as well."""
    first, second = Backend(servers, (BIG, SMALL)), Backend(servers, (BIG, SMALL))
    prx = Proxy(servers, [first.url, second.url], health=Health(interval_seconds=3600))
    app = prx.app[APP_KEY]
    named = {"model": BIG.name, "messages": [{"role": "user", "content": "hi"}]}
    try:
        first.lose(BIG.name)
        with httpx.Client(base_url=prx.url, timeout=60) as client:
            served = [
                _served(client.post("/api/chat", json={**named, "stream": False}), f"named {i}")
                for i in range(2)
            ]
            with client.stream("POST", "/api/chat", json=named) as resp:
                assert resp.status_code == 200, resp.read()
                lines = [orjson.loads(line) for line in resp.iter_lines() if line]
            openai = client.post("/v1/chat/completions", json=named)
            assert openai.status_code == 200, openai.text
            listed = [s.models for s in app.backends.states]
            completed = [first.emulator.state.completed, second.emulator.state.completed]
            second.lose(BIG.name)
            gone = client.post("/api/chat", json=named)
            assert _served(_maths(client), "auto") != BIG.name
            lost = [sorted(s.lost) for s in app.backends.states]
            gone_everywhere = client.post("/api/chat", json=named)
        assert served == [BIG.name] * 2 and lines[-1]["done"], lines
        assert openai.json()["model"] == BIG.name
        assert all(models is not None and BIG.name in models for models in listed), listed
        assert completed == [0, 4] and lost == [[BIG.name], [BIG.name]]
        for answer in (gone, gone_everywhere):
            assert answer.status_code == 404, answer.text
            assert answer.json() == {"error": f"model '{BIG.name}' not found"}
    finally:
        prx.stop()
        second.stop()
        first.stop()


class Racing(Backend):
    """A backend whose answers to chats wait until `before` has run, in the proxy's
    loop (what happens elsewhere while the backend works), and are what it returns if
    anything."""

    before: Callable[[], Awaitable[web.StreamResponse | None]] | None = None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/api/chat" and self.before is not None:
            answer = await self.before()
            if answer is not None:
                return answer
        return await super()._forward(request)


def test_a_named_model_whose_other_backends_go_meanwhile_gets_the_backends_404(
    servers: ServerThread,
) -> None:
    """The first backend answers a request naming the 70B that it has no such model,
    while the second, which listed it when the request went to the first, is found by
    its next list not to have it either: the client gets Ollama's 404 for the model,
    the answer the first gave, not a 502."""
    first, second = Racing(servers, (BIG, SMALL)), Backend(servers, (BIG, SMALL))
    prx = Proxy(servers, [first.url, second.url], health=Health(interval_seconds=3600))
    app = prx.app[APP_KEY]
    try:
        first.lose(BIG.name)

        async def second_loses_it() -> None:
            del second.emulator.state.store[BIG.name]
            await app.backends.refresh(app.backends.states[1])
            return None

        first.before = second_loses_it
        with httpx.Client(base_url=prx.url, timeout=60) as client:
            chat = {"model": BIG.name, "messages": [{"role": "user", "content": "hi"}]}
            native = client.post("/api/chat", json={**chat, "stream": False})
        assert native.status_code == 404, native.text
        assert native.json() == {"error": f"model '{BIG.name}' not found"}
        assert BIG.name not in (app.backends.states[1].models or ())
    finally:
        prx.stop()
        second.stop()
        first.stop()


def test_a_backend_that_lacks_a_named_model_leaves_the_next_ones_failure_retried(
    servers: ServerThread,
) -> None:
    """The first backend has no such model (its 404), the second fails the request
    (a 500) and the third serves it: the 404 ran nothing the request could have upset,
    so the second's failure is retried as the first failure of a request is."""
    first, second = Backend(servers, (BIG, SMALL)), Racing(servers, (BIG, SMALL))
    third = Backend(servers, (BIG, SMALL))
    prx = Proxy(servers, [first.url, second.url, third.url], health=Health(interval_seconds=3600))
    try:
        first.lose(BIG.name)

        async def fails() -> web.StreamResponse:
            return web.json_response({"error": "llama runner process has terminated"}, status=500)

        second.before = fails
        with httpx.Client(base_url=prx.url, timeout=60) as client:
            chat = {"model": BIG.name, "messages": [{"role": "user", "content": "hi"}]}
            served = _served(client.post("/api/chat", json={**chat, "stream": False}), "named")
        assert served == BIG.name and third.emulator.state.completed == 1
    finally:
        prx.stop()
        for backend in (third, second, first):
            backend.stop()

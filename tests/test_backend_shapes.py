"""Backends that answer JSON of another shape than Ollama's (the wrong service behind a
`backends:` URL, a broken Ollama-compatible server, a gateway answering its errors
with 200): the proxy starts, such a backend fails its health check, a model entry of
the wrong shape is left out, a field of the wrong type is read as absent, and the
refreshes go on for every backend."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.app import APP_KEY
from proxy.config_serving import Health
from proxy.registry import ModelInfo
from tests.conftest import FROZEN
from tests.support import Emulator, Proxy, ServerThread, free_port, wait_until

HEALTHY = "qwen2.5:7b"  # the healthy backend's one model
ODD = "llama3.2:3b"  # the odd backend's

_DETAILS = {"family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}
_ENTRY = {"name": ODD, "model": ODD, "digest": "d1", "size": 2019393189, "details": _DETAILS}
TAGS: Any = {"models": [_ENTRY]}
PS: Any = {"models": []}
SHOW: Any = {
    "details": _DETAILS,
    "capabilities": ["completion", "tools"],
    "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
    "template": "{{ .Prompt }}",
}
# Every capability an Ollama lists (types/model/capability.go).
CAPABILITIES = {"completion", "tools", "insert", "vision", "embedding", "thinking"}
_MISSING = object()  # the route answers 404


@dataclasses.dataclass(frozen=True)
class Case:
    tags: Any = dataclasses.field(default_factory=lambda: TAGS)
    ps: Any = dataclasses.field(default_factory=lambda: PS)
    show: Any = dataclasses.field(default_factory=lambda: SHOW)
    error: str = ""  # in the odd backend's last error; "" for a healthy one
    loaded: frozenset[str] = frozenset()


def _tags(*entries: Any) -> dict[str, Any]:
    return {"models": list(entries)}


def _show(**fields: Any) -> dict[str, Any]:
    return {**SHOW, **fields}


_TOP = {
    "a JSON array": [],
    "null": None,
    "a number": 5,
    "a string": "ok",
    "a boolean": True,
}

CASES: dict[str, Case] = {
    **{
        f"tags {kind}": Case(tags=body, error=f"GET /api/tags answered {kind}, not an object")
        for kind, body in _TOP.items()
    },
    "tags models an object": Case(tags={"models": _ENTRY}, error="GET /api/tags answered models"),
    "tags models a string": Case(tags={"models": ODD}, error="GET /api/tags answered models"),
    "tags entries of other shapes": Case(
        tags=_tags(5, "x", None, [], {}, {"name": 5}, {"model": [ODD]}, {"size": 1}, _ENTRY)
    ),
    "tags entry fields of other types": Case(
        tags=_tags(
            {
                "name": ODD,
                "model": 7,
                "digest": 5,
                "size": "big",
                "remote_host": 5,
                "capabilities": "tools",
                "details": "llama",
            }
        ),
        show=_MISSING,
    ),
    "tags entry capabilities not strings": Case(
        tags=_tags({**_ENTRY, "capabilities": [1, "tools"], "details": {"family": 5}}),
        show=_MISSING,
    ),
    **{
        f"ps {kind}": Case(ps=body, error=f"GET /api/ps answered {kind}, not an object")
        for kind, body in _TOP.items()
    },
    "ps models a number": Case(ps={"models": 3}, error="GET /api/ps answered models"),
    "ps entries of other shapes": Case(
        ps=_tags(
            5,
            [],
            {"size_vram": 1},
            {
                "name": ODD,
                "size": "2e9",
                "size_vram": "big",
                "expires_at": 5,
                "context_length": "x",
                "details": [],
            },
        ),
        loaded=frozenset({ODD}),
    ),
    "ps expires_at unreadable": Case(
        ps=_tags({"name": ODD, "size": 2.5e9, "size_vram": True, "expires_at": "soon"}),
        loaded=frozenset({ODD}),
    ),
    **{f"show {kind}": Case(show=body) for kind, body in _TOP.items()},
    "show fields of other types": Case(
        show={
            "details": "llama",
            "capabilities": "tools",
            "model_info": [],
            "template": 5,
            "remote_host": 5,
            "projector_info": [],
        }
    ),
    "show capabilities not strings": Case(show=_show(capabilities=[1, "tools", None])),
    "show context a string": Case(show=_show(model_info={"llama.context_length": "8192"})),
    "show context a fraction": Case(show=_show(model_info={"llama.context_length": 8192.5})),
    "show context a boolean": Case(show=_show(model_info={"llama.context_length": True})),
    "show details of other types": Case(
        show=_show(
            details={
                "parameter_size": 7,
                "family": ["llama"],
                "quantization_level": 4,
                "context_length": "big",
                "families": "llama",
            }
        )
    ),
    "show without capabilities, weights of other types": Case(
        show={
            "template": "{{ .Tools }}",
            "model_info": {"general.architecture": ["llama"]},
            "projector_info": "clip",
        }
    ),
}


def _odd_app(case: Case) -> web.Application:
    """A backend that answers its model lists and shows as `case` says, and a chat with
    one short answer (auto may choose its model when it stays healthy)."""

    def answer(body: Any) -> web.Response:
        if body is _MISSING:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def tags(request: web.Request) -> web.Response:
        return answer(case.tags)

    async def ps(request: web.Request) -> web.Response:
        return answer(case.ps)

    async def show(request: web.Request) -> web.Response:
        return answer(case.show)

    async def chat(request: web.Request) -> web.Response:
        doc = await request.json()
        return web.json_response(
            {
                "model": doc["model"],
                "created_at": "2024-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": "hi"},
                "done": True,
                "done_reason": "stop",
            }
        )

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/chat", chat)
    return app


@dataclasses.dataclass
class Fleet:
    case: Case
    healthy: Emulator
    proxy: Proxy


@pytest.fixture
def fleet(request: pytest.FixtureRequest, servers: ServerThread) -> Iterator[Fleet]:
    case: Case = request.param
    port = free_port()
    odd = servers.serve(lambda: _odd_app(case), port)
    healthy = Emulator(servers, dataclasses.replace(FROZEN, models=(HEALTHY,)))
    try:
        # The odd backend first: its refresh and its models' shows come first.
        proxy = Proxy(
            servers,
            [f"http://127.0.0.1:{port}", healthy.url],
            health=Health(interval_seconds=0.2, failure_threshold=1),
        )
        try:
            yield Fleet(case, healthy, proxy)
        finally:
            proxy.stop()
    finally:
        healthy.stop()
        servers.stop(odd)


def _sane(info: ModelInfo) -> None:
    """A description `auto` can use: Ollama's capabilities (not the letters of one), a
    context and a size, local."""
    candidate = info.candidate
    assert candidate.capabilities and candidate.capabilities <= CAPABILITIES
    assert type(candidate.context_length) is int and candidate.context_length >= 2048
    assert candidate.params_b > 0 and candidate.quant_bits > 0
    assert info.remote == ""


@pytest.mark.parametrize("fleet", list(CASES.values()), ids=list(CASES), indirect=True)
async def test_a_backend_of_another_shape_neither_stops_the_proxy_nor_the_others(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    case = fleet.case
    app = fleet.proxy.app[APP_KEY]
    odd, healthy = app.backends.states
    checked = fleet.healthy.state.requests["/api/tags"]
    # Refreshed again and again: the loop lives on, the healthy backend is checked.
    assert await wait_until(lambda: fleet.healthy.state.requests["/api/tags"] >= checked + 3)
    assert app.backends._task is not None and not app.backends._task.done()
    assert healthy.last_error == "" and healthy.models == {HEALTHY}
    if case.error:
        assert case.error in odd.last_error, odd.last_error
        assert ODD not in app.registry.models
    else:
        assert odd.last_error == ""
        assert odd.models == {ODD} and odd.loaded == case.loaded
        _sane(app.registry.models[ODD])
    _sane(app.registry.models[HEALTHY])
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with aiohttp.ClientSession() as session:
        async with session.post(fleet.proxy.url + "/api/chat", json=body) as resp:
            assert resp.status == 200, await resp.text()
            chosen = resp.headers["X-Autoroute-Model"]
            assert chosen == HEALTHY if case.error else chosen in (HEALTHY, ODD)
        for path in ("/api/autoroute/status", "/api/autoroute/dashboard.json", "/api/tags"):
            async with session.get(fleet.proxy.url + path) as resp:
                assert resp.status == 200, (path, await resp.text())
    # Nothing unexpected in the proxy (its own errors, a handler's that aiohttp logs).
    mine = ("autoroute", "aiohttp")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(mine)]


async def test_the_refreshes_outlive_an_unexpected_error(
    servers: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend's refresh and a refresh listener that raise what nobody expects: each
    error is logged with its traceback once (not every refresh), that backend fails
    its health check, the other backend is refreshed, the other listeners still run,
    and the refreshes go on."""
    caplog.set_level(logging.ERROR, logger="autoroute.backends")
    broken = Emulator(servers, dataclasses.replace(FROZEN, models=(ODD,)))
    healthy = Emulator(servers, dataclasses.replace(FROZEN, models=(HEALTHY,)))
    proxy = Proxy(
        servers,
        [broken.url, healthy.url],
        health=Health(interval_seconds=0.2, failure_threshold=1),
    )
    try:
        pool = proxy.app[APP_KEY].backends
        listed_models = pool._listed_models
        after: list[int] = []

        async def failing_list(state: Any) -> Any:
            if state.index == 0:
                raise RuntimeError("a refresh's bug")
            return await listed_models(state)

        async def failing_listener() -> None:
            raise RuntimeError("a listener's bug")

        async def counting() -> None:
            after.append(1)

        pool._listed_models = failing_list  # type: ignore[method-assign]
        pool.listeners[:0] = [failing_listener]
        pool.listeners.append(counting)
        checked = healthy.state.requests["/api/tags"]
        assert await wait_until(lambda: healthy.state.requests["/api/tags"] >= checked + 3)
        assert await wait_until(lambda: len(after) >= 3)
        assert pool._task is not None and not pool._task.done()
        assert pool.states[0].last_error == 'health check failed: RuntimeError("a refresh\'s bug")'
        assert pool.states[1].last_error == ""
        for bug in ("a refresh's bug", "a listener's bug"):
            logged = [r for r in caplog.records if bug in r.getMessage()]
            assert len(logged) == 1 and logged[0].exc_info is not None, bug
    finally:
        proxy.stop()
        healthy.stop()
        broken.stop()


_ONE_DIGEST = "sha256:" + "0" * 64
# A stand-in backend that lists every model under one made-up digest, each with a show
# of its own: Ollama's digests name weights, this one's name nothing.
_ONE_DIGEST_FLEET: dict[str, dict[str, Any]] = {
    "qwen3:8b": {
        "details": {"family": "qwen3", "parameter_size": "8.2B", "quantization_level": "Q4_K_M"},
        "capabilities": ["completion", "tools", "thinking"],
    },
    "gemma3:12b": {
        "details": {"family": "gemma3", "parameter_size": "12.2B", "quantization_level": "Q4_K_M"},
        "capabilities": ["completion", "vision"],
    },
    "nomic-embed-text:v1.5": {
        "details": {"family": "nomic-bert", "parameter_size": "137M", "quantization_level": "F16"},
        "capabilities": ["embedding"],
    },
}


def _one_digest_app() -> web.Application:
    async def tags(request: web.Request) -> web.Response:
        entries = [
            {"name": name, "model": name, "digest": _ONE_DIGEST, "size": 1, **show}
            for name, show in _ONE_DIGEST_FLEET.items()
        ]
        return web.json_response({"models": entries})

    async def show(request: web.Request) -> web.Response:
        return web.json_response(_ONE_DIGEST_FLEET[(await request.json())["model"]])

    async def ps(request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    return app


async def test_one_digest_listed_for_other_models_names_no_weights(
    servers: ServerThread,
) -> None:
    """A backend that lists qwen3:8b, gemma3:12b and an embedding model under one digest
    (a stand-in that makes digests up): each keeps its own show's capabilities at every
    refresh, and `auto` ranks the two chat models apart, where one digest would have
    them the same weights and the first show would describe all three."""
    port = free_port()
    odd = servers.serve(_one_digest_app, port)
    proxy = Proxy(servers, [f"http://127.0.0.1:{port}"], health=Health(interval_seconds=0.2))
    try:
        app = proxy.app[APP_KEY]
        generation = app.registry.generation
        assert await wait_until(lambda: app.registry.generation >= generation + 3)
        for name, show in _ONE_DIGEST_FLEET.items():
            capabilities = app.registry.models[name].candidate.capabilities
            assert capabilities == frozenset(show["capabilities"]), name
        body = {"model": "auto:best", "messages": [{"role": "user", "content": "hi"}]}
        async with (
            aiohttp.ClientSession() as session,
            session.post(proxy.url + "/api/autoroute/explain", json=body) as resp,
        ):
            assert resp.status == 200, await resp.text()
            doc = await resp.json()
        assert {entry["model"] for entry in doc["ranking"]} == {"qwen3:8b", "gemma3:12b"}
        assert not [why for why in doc["filtered"].values() if "same weights" in why]
    finally:
        proxy.stop()
        servers.stop(odd)

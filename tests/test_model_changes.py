"""A change to a backend's models (pull, create, copy, delete) is known to the proxy's
routing by the time its client reads the answer: the next request for the model goes
where the model now is, not where the last background refresh saw it. The backends are
refreshed once a minute here, so nothing but the change itself can tell the proxy."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import aiohttp
import ollama
import orjson
import pytest
from aiohttp import web

from proxy.app import APP_KEY
from proxy.backends import BackendPool
from proxy.config import Config
from proxy.config_serving import Backend, Health, Routing
from proxy.http11 import ResponseHead
from proxy.model_changes import ChangeWatch, ModelChange, change_of
from tests.conftest import FROZEN
from tests.support import Emulator, Proxy, ServerThread, free_port, wait_until

# The demo's split: each backend has models the other has not.
ON_A = ("llama3.2:3b", "qwen2.5-coder:7b", "nomic-embed-text:latest")
ON_B = ("llama3.3:70b", "llava:7b")
# In the emulator's registry, on neither backend.
PULLED = "mistral:7b"
SLOW_REFRESH = Health(interval_seconds=60)


@dataclasses.dataclass
class Fleet:
    a: Emulator
    b: Emulator
    proxy: Proxy

    @property
    def pool(self) -> BackendPool:
        return self.proxy.app[APP_KEY].backends

    def proxy_lists(self, emulator: Emulator) -> frozenset[str]:
        """The models the proxy believes `emulator` has."""
        state = self.pool.states[0 if emulator is self.a else 1]
        return state.models or frozenset()


def fleet_of(servers: ServerThread, on_b: tuple[str, ...], target: str) -> Iterator[Fleet]:
    a = Emulator(servers, dataclasses.replace(FROZEN, models=ON_A))
    b = Emulator(servers, dataclasses.replace(FROZEN, models=on_b))
    proxy = Proxy(
        servers, [a.url, b.url], health=SLOW_REFRESH, routing=Routing(admin_target=target)
    )
    yield Fleet(a, b, proxy)
    proxy.stop()
    a.stop()
    b.stop()


@pytest.fixture
def fleet(servers: ServerThread) -> Iterator[Fleet]:
    """The demo's split, every change sent to every backend (the default)."""
    yield from fleet_of(servers, ON_B, "all")


@pytest.fixture
def first_only(servers: ServerThread) -> Iterator[Fleet]:
    """llama3.2:3b on both backends; a change goes to one backend only."""
    yield from fleet_of(servers, (*ON_B, "llama3.2:3b"), "first")


async def post(url: str, path: str, body: Any, method: str = "POST") -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, json=body) as resp,
    ):
        return resp.status, await resp.read()


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def test_a_copy_is_shown_run_and_deleted_at_once(fleet: Fleet) -> None:
    """The ollama clients' `copy` then `show`, `chat`, `delete` of the new name, with
    the source on the second backend only."""
    client = ollama.AsyncClient(host=fleet.proxy.url)
    await client.copy("llava:7b", "llava2:latest")
    assert "llava2:latest" in fleet.b.state.store
    assert "llava2:latest" not in fleet.a.state.store  # its replica had no source

    shown = await client.show("llava2:latest")
    assert shown.details is not None and shown.details.family
    answer = await client.chat(model="llava2:latest", messages=[{"role": "user", "content": "hi"}])
    assert answer.message.content

    await client.delete("llava2:latest")
    assert "llava2:latest" not in fleet.b.state.store
    assert "llava2:latest" not in fleet.proxy_lists(fleet.b)
    with pytest.raises(ollama.ResponseError) as gone:
        await client.show("llava2:latest")
    assert gone.value.status_code == 404


async def test_a_deleted_model_is_routed_to_where_it_still_is(first_only: Fleet) -> None:
    fleet = first_only
    model = "llama3.2:3b"
    status, _ = await post(fleet.proxy.url, "/api/delete", {"model": model}, "DELETE")
    assert status == 200
    assert model not in fleet.a.state.store and model in fleet.b.state.store
    assert model not in fleet.proxy_lists(fleet.a)

    status, body = await post(fleet.proxy.url, "/api/show", {"model": model})
    assert status == 200, body
    status, body = await post(fleet.proxy.url, "/api/chat", chat(model))
    assert status == 200, body
    assert orjson.loads(body)["message"]["content"]
    async with aiohttp.ClientSession() as session:
        async with session.get(fleet.proxy.url + "/api/tags") as resp:
            listed = [m["name"] for m in (await resp.json())["models"]]
    assert listed.count(model) == 1  # B's


async def test_a_deleted_model_is_no_longer_listed_or_shown(fleet: Fleet) -> None:
    status, _ = await post(fleet.proxy.url, "/api/delete", {"model": "llava:7b"}, "DELETE")
    assert status == 200
    assert "llava:7b" not in fleet.proxy_lists(fleet.b)
    async with aiohttp.ClientSession() as session:
        async with session.get(fleet.proxy.url + "/api/tags") as resp:
            listed = [m["name"] for m in (await resp.json())["models"]]
    assert "llava:7b" not in listed
    status, body = await post(fleet.proxy.url, "/api/show", {"model": "llava:7b"})
    assert status == 404, body


async def long_stream(session: aiohttp.ClientSession, url: str, model: str) -> Any:
    """A generation that runs until its response is closed: its backend is busy."""
    resp = await session.post(
        url + "/api/generate",
        json={"model": model, "prompt": "long", "options": {"num_predict": 100_000}},
    )
    assert resp.status == 200
    await resp.content.readline()
    return resp


@pytest.mark.parametrize("stream", [True, False])
async def test_a_pulled_model_runs_on_the_backend_that_pulled_it(
    first_only: Fleet, stream: bool
) -> None:
    """A pull goes to the least busy backend; once the other is free again, the next
    request for the model must still go where the model is."""
    fleet = first_only
    async with aiohttp.ClientSession() as session:
        busy = await long_stream(session, fleet.proxy.url, "qwen2.5-coder:7b")  # on A
        status, body = await post(fleet.proxy.url, "/api/pull", {"model": PULLED, "stream": stream})
        busy.close()
    assert status == 200
    assert orjson.loads(body.splitlines()[-1]) == {"status": "success"}
    assert PULLED in fleet.b.state.store and PULLED not in fleet.a.state.store
    assert await wait_until(lambda: fleet.pool.states[0].in_flight == 0)

    status, body = await post(fleet.proxy.url, "/api/chat", chat(PULLED))
    assert status == 200, body
    status, body = await post(fleet.proxy.url, "/api/show", {"model": PULLED})
    assert status == 200, body


async def test_a_pulled_model_becomes_an_auto_candidate_before_the_next_interval(
    fleet: Fleet,
) -> None:
    """`ollama pull x` then `auto`: the pulled model is described (its show asked) and
    offered to `auto` by a refresh the change brings forward, not a minute later."""
    registry = fleet.proxy.app[APP_KEY].registry
    assert PULLED not in {c.name for c in registry.candidates()}
    status, body = await post(fleet.proxy.url, "/api/pull", {"model": PULLED, "stream": False})
    assert status == 200, body
    assert await wait_until(lambda: PULLED in {c.name for c in registry.candidates()})


async def test_a_pull_that_fails_changes_nothing(first_only: Fleet) -> None:
    status, body = await post(fleet_url := first_only.proxy.url, "/api/pull", {"model": "nope:1b"})
    assert status == 200
    assert "error" in orjson.loads(body.splitlines()[-1])
    assert all("nope:1b" not in first_only.proxy_lists(e) for e in (first_only.a, first_only.b))
    status, _ = await post(fleet_url, "/api/show", {"model": "nope:1b"})
    assert status == 404


@pytest.mark.parametrize("stream", [True, False])
async def test_create_from_a_model_on_the_second_backend(fleet: Fleet, stream: bool) -> None:
    body = {"model": "mine:latest", "from": "llava:7b", "system": "Be brief.", "stream": stream}
    status, answer = await post(fleet.proxy.url, "/api/create", body)
    assert status == 200, answer
    assert orjson.loads(answer.splitlines()[-1]) == {"status": "success"}
    assert "mine:latest" in fleet.b.state.store
    assert "mine:latest" not in fleet.a.state.store

    status, shown = await post(fleet.proxy.url, "/api/show", {"model": "mine:latest"})
    assert status == 200, shown
    assert orjson.loads(shown)["system"] == "Be brief."
    status, answer = await post(fleet.proxy.url, "/api/chat", chat("mine"))
    assert status == 200, answer


@pytest.mark.parametrize(
    "extra",
    [
        # Ollama pulls a `from` model it does not have: which backend does is the first's.
        {"from": "qwen3:8b"},
        # Blobs go to the first backend (`handlers.blobs`): the create that names them too.
        {"from": "llava:7b", "adapters": {"a.gguf": "sha256:" + "0" * 64}},
        {"files": {"m.gguf": "sha256:" + "0" * 64}},
    ],
)
async def test_other_creates_go_to_the_first_backend(fleet: Fleet, extra: dict[str, Any]) -> None:
    body = {"model": "mine:latest", "stream": False, **extra}
    before = (fleet.a.state.requests["/api/create"], fleet.b.state.requests["/api/create"])
    await post(fleet.proxy.url, "/api/create", body)
    after = (fleet.a.state.requests["/api/create"], fleet.b.state.requests["/api/create"])
    assert after == (before[0] + 1, before[1])


async def test_changes_reach_the_background_refresh_unharmed(fleet: Fleet) -> None:
    """A refresh after the change lists what the backends list: the same."""
    client = ollama.AsyncClient(host=fleet.proxy.url)
    await client.copy("llava:7b", "llava2:latest")
    await asyncio.to_thread(fleet.proxy.thread.call, fleet.pool.refresh_all)
    assert "llava2:latest" in fleet.proxy_lists(fleet.b)
    assert "llava2:latest" not in fleet.proxy_lists(fleet.a)


class HeldPull:
    """A backend that ends its pull's answer only when told: the client has read the
    success line while the answer is still open."""

    def __init__(self, servers: ServerThread) -> None:
        self.models: set[str] = set()
        self.release = asyncio.Event()  # set in the servers' loop (`servers.call`)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = web.Application()
        app.router.add_get("/api/tags", self.tags)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_post("/api/show", self.show)
        app.router.add_post("/api/pull", self.pull)
        self.runner = servers.serve(lambda: app, self.port)

    async def release_now(self) -> None:
        self.release.set()

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m, "model": m} for m in self.models]})

    async def ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    async def show(self, request: web.Request) -> web.Response:
        name = (await request.json())["model"]
        if name not in self.models:
            return web.json_response({"error": f"model '{name}' not found"}, status=404)
        return web.json_response({"details": {"family": "llama"}})

    async def pull(self, request: web.Request) -> web.StreamResponse:
        self.models.add((await request.json())["model"])
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for status in ("pulling manifest", "writing manifest", "success"):
            await response.write(orjson.dumps({"status": status}) + b"\n")
        await self.release.wait()
        await response.write_eof()
        return response


async def test_the_success_line_comes_after_the_change_is_known(servers: ServerThread) -> None:
    """What matters is the success line, not the end of the answer after it: the
    client reads the line and goes on."""
    a = Emulator(servers, dataclasses.replace(FROZEN, models=ON_A))
    held = HeldPull(servers)
    proxy = Proxy(servers, [a.url, held.url], health=SLOW_REFRESH, routing=Routing("first"))
    try:
        async with aiohttp.ClientSession() as session:
            busy = await long_stream(session, proxy.url, "qwen2.5-coder:7b")  # A is busy
            pull = await session.post(proxy.url + "/api/pull", json={"model": PULLED})
            lines = [orjson.loads(await pull.content.readline()) for _ in range(3)]
            assert lines[-1] == {"status": "success"}
            busy.close()
            pool = proxy.app[APP_KEY].backends
            assert await wait_until(lambda: pool.states[0].in_flight == 0)

            status, body = await post(proxy.url, "/api/show", {"model": PULLED})
            assert status == 200, body
            assert not pull.content.at_eof()  # the pull's answer is still open
            servers.call(held.release_now)
            assert await pull.read() == b""
    finally:
        proxy.stop()
        servers.stop(held.runner)
        a.stop()


def added(name: str) -> ModelChange:
    """What a pull or a create of `name` adds once its last line says it succeeded."""
    return ModelChange(added=name, by_last_line=True)


@pytest.mark.parametrize(
    ("method", "path", "body", "change"),
    [
        ("POST", "/api/pull", {"model": "Llama3.2"}, added("llama3.2:latest")),
        ("POST", "/api/pull", {"name": "gpt-oss:20b:cloud"}, added("gpt-oss:20b-cloud")),
        ("POST", "/api/pull", {"model": "kimi:cloud"}, added("kimi:cloud")),
        ("POST", "/api/create", {"model": "", "name": "me/m"}, added("me/m:latest")),
        ("POST", "/api/copy", {"source": "a", "destination": "b:1"}, ModelChange("b:1")),
        ("DELETE", "/api/delete", {"model": "library/llava:7B"}, ModelChange("", "llava:7b")),
        ("DELETE", "/api/delete", {"model": "x:local"}, ModelChange("", "x:latest")),
        ("POST", "/api/push", {"model": "a"}, None),
        ("POST", "/api/delete", {"model": "a"}, None),  # gin's 405: nothing deleted
        ("POST", "/api/pull", {"model": 7}, None),
        ("POST", "/api/pull", None, None),
    ],
)
def test_what_each_request_changes(
    method: str, path: str, body: Any, change: ModelChange | None
) -> None:
    assert change_of(method, path, body) == change


def chunked(*lines: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(line), line) for line in lines) + b"0\r\n\r\n"


async def watched(pieces: list[bytes], chunked_body: bool = True) -> list[bool]:
    """Whether the pulled model is known after each piece of a pull's answer."""
    pool = BackendPool(Config(backends=(Backend(url="http://127.0.0.1:9"),)))
    state = pool.states[0]
    state.models = frozenset()
    watch = ChangeWatch(pool, state, ModelChange(added="m:latest", by_last_line=True))
    headers = [("Transfer-Encoding", "chunked")] if chunked_body else []
    watch.on_head(ResponseHead(200, "OK", headers, None, chunked_body, True))
    known = []
    for piece in pieces:
        watch.on_body(piece)
        known.append("m:latest" in (state.models or ()))
    pool.states[0].pool.close()
    return known


async def test_the_success_line_is_read_however_the_reads_cut_it() -> None:
    progress = b'{"status":"pulling manifest"}\n' + b'{"status":"x","total":1}\n' * 40
    body = chunked(progress, b'{"status":"success"}\n')
    cut = body.index(b"success") + 3
    assert await watched([body[:cut], body[cut:-5], body[-5:]]) == [False, True, True]
    for at in range(1, len(body)):
        assert (await watched([body[:at], body[at:]]))[-1] is True


async def test_a_pull_that_ends_in_an_error_changes_nothing() -> None:
    body = chunked(b'{"status":"pulling manifest"}\n', b'{"error":"file does not exist"}\n')
    assert await watched([body]) == [False]
    assert await watched([b'{"status":"success"}'], chunked_body=False) == [True]
    assert await watched([b'{"status":"succ', b'ess"}'], chunked_body=False) == [False, True]


async def test_a_refresh_asked_before_a_change_does_not_undo_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = BackendPool(Config(backends=(Backend(url="http://127.0.0.1:9"),)))
    state = pool.states[0]
    state.models = frozenset({"a:latest"})
    asked = asyncio.Event()
    answer = asyncio.Event()

    async def listed(_: object) -> list[dict[str, Any]]:
        asked.set()
        await answer.wait()
        return [{"name": "a:latest"}]  # as the backend listed before the copy

    async def loaded(_: object) -> list[dict[str, Any]]:
        return []

    monkeypatch.setattr(pool, "_listed_models", listed)
    monkeypatch.setattr(pool, "_loaded_models", loaded)
    refresh = asyncio.create_task(pool.refresh(state))
    await asyncio.wait_for(asked.wait(), 5)
    pool.changed(state, added="b:latest")
    answer.set()
    await refresh
    assert state.models == {"a:latest", "b:latest"}
    await pool.refresh(state)  # asked after the change: what the backend lists now
    assert state.models == {"a:latest"}
    state.pool.close()


async def test_the_weights_a_name_stands_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the response cache keys a model's answers by: every digest the backends list
    under the name (one key for two backends of other weights, which changes when
    either does); none while a backend lists the name without a digest it knows, as
    after a change through the proxy until a list asked after it says which."""
    backends = (Backend(url="http://127.0.0.1:9"), Backend(url="http://127.0.0.1:10"))
    pool = BackendPool(Config(backends=backends))
    a, b = pool.states
    listings = {
        id(a): [{"name": "m:latest", "digest": "d1"}, {"name": "bare", "digest": ""}],
        id(b): [{"name": "m:latest", "digest": "d2"}],
    }

    async def listed(state: object) -> list[dict[str, Any]]:
        return listings[id(state)]

    async def loaded(_: object) -> list[dict[str, Any]]:
        return []

    monkeypatch.setattr(pool, "_listed_models", listed)
    monkeypatch.setattr(pool, "_loaded_models", loaded)
    await pool.refresh_all()
    assert pool.weights_of("M") == "d1,d2"
    assert pool.weights_of("bare") == pool.weights_of("absent") == ""
    pool.changed(b, added="m:latest")  # re-pulled, re-created or copied over on b
    assert pool.weights_of("m") == ""
    pool.changed(b, removed="m:latest")  # then deleted there: a's weights alone
    assert pool.weights_of("m") == "d1"
    pool.changed(b, added="m:latest")
    listings[id(b)] = [{"name": "m:latest", "digest": "d3"}]
    await pool.refresh_all()
    assert pool.weights_of("m") == "d1,d3"
    for state in pool.states:
        state.pool.close()

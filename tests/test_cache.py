"""The response cache end to end: the real proxy in front of an emulator, with the
in-memory backend and with the machine's Redis (127.0.0.1:6379, a namespace per test,
deleted afterwards)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import ollama
import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy import go_json, handlers
from proxy.app import APP_KEY
from proxy.cache import ResponseCache
from proxy.cache.key import deterministic
from proxy.config_services import ApiKey, Auth, Cache, Usage
from proxy.config_serving import Timeouts
from proxy.emulator import EmulatorSettings
from proxy.http11 import dechunk
from proxy.learning import decision_of
from selector_model import features
from selector_model.usage_event import Answer as UsageAnswer
from selector_model.usage_event import Features, UsageEvent
from tests.conftest import FROZEN
from tests.support import (
    PIXEL_PNG,
    Emulator,
    Proxy,
    ServerThread,
    free_port,
    pass_on,
    raw_request,
    slow_reader,
    small_send_buffers,
    where_called,
)
from training.data import usage_examples

MODEL = "qwen2.5:7b"
REDIS_URL = "redis://127.0.0.1:6379/0"
GREEDY = {"temperature": 0}
# (path, body): each API's streaming and whole answers.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "generate-ndjson": (
        "/api/generate",
        {"model": MODEL, "prompt": "Why is the sky blue?", "options": GREEDY},
    ),
    "chat-whole": (
        "/api/chat",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "options": GREEDY,
        },
    ),
    "v1-chat-sse": (
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "temperature": 0,
        },
    ),
    "v1-chat-whole": (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 0},
    ),
}


class Answer:
    def __init__(self, status: int, headers: list[tuple[str, str]], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw  # the body as sent, chunk framing included

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


async def _fetch(port: int, path: str, body: bytes, headers: dict[str, str]) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        head += "".join(f"{n}: {v}\r\n" for n, v in headers.items())
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head_bytes, _, raw = answer.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    fields = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
    return Answer(int(lines[0].split()[1]), fields, raw)


def fetch(
    proxy: Proxy, path: str, doc: dict[str, Any], headers: dict[str, str] | None = None
) -> Answer:
    return asyncio.run(_fetch(proxy.port, path, orjson.dumps(doc), headers or {}))


def metrics(proxy: Proxy) -> dict[str, float]:
    text = asyncio.run(_get(proxy.port, "/metrics"))
    values = {}
    for line in text.splitlines():
        if line.startswith("autoroute_cache_"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def _get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer.partition(b"\r\n\r\n")[2].decode()


def wait_stored(proxy: Proxy, count: int) -> None:
    """Storing runs in the background after the answer: wait until it has."""
    deadline = time.monotonic() + 10
    while metrics(proxy).get("autoroute_cache_stored_total", 0) < count:
        assert time.monotonic() < deadline, "the answer was never stored"
        time.sleep(0.02)


def inference_requests(emulator: Emulator) -> int:
    return sum(
        n
        for p, n in emulator.state.requests.items()
        if p in ("/api/generate", "/api/chat", "/v1/chat/completions")
    )


def _redis_keys(namespace: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return list(client.scan_iter(match=f"{namespace}:*"))
    finally:
        client.close()


@contextlib.contextmanager
def redis_namespace() -> Iterator[Cache]:
    """A Redis cache configuration on a namespace of its own, deleted afterwards."""
    redis = pytest.importorskip("redis")
    namespace = f"autoroute-test:{uuid.uuid4().hex}"
    try:
        yield Cache(enabled=True, backend="redis", redis_url=REDIS_URL, namespace=namespace)
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(params=["memory", "redis"])
def cache_config(request: pytest.FixtureRequest) -> Iterator[Cache]:
    if request.param == "memory":
        yield Cache(enabled=True, namespace=f"autoroute-test:{uuid.uuid4().hex}")
        return
    with redis_namespace() as config:
        yield config


@pytest.fixture
def caching(servers: ServerThread, own_emulator: Emulator, cache_config: Cache) -> Iterator[Proxy]:
    prx = Proxy(servers, [own_emulator.url], cache=cache_config)
    yield prx
    prx.stop()


def test_a_large_bodys_key_is_made_off_the_loop(
    caching: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cacheable body's key is its canonical serialisation hashed: tens of
    milliseconds of one C call after another for a body near the size limit, in which
    the event loop would serve no other client. Made for a body over
    `go_json.INLINE_BYTES` in a reader thread, as its reading and writing are; a small
    one's on the loop."""
    made = where_called(monkeypatch, handlers, "cache_key")
    for size in (go_json.INLINE_BYTES // 2, 2 * go_json.INLINE_BYTES):
        doc = {**CASES["chat-whole"][1], "padding": "x" * size}
        assert fetch(caching, "/api/chat", doc).status == 200
    assert made == [True, False]


@pytest.mark.parametrize("case", CASES)
def test_a_hit_replays_the_miss(case: str, caching: Proxy, own_emulator: Emulator) -> None:
    path, doc = CASES[case]
    miss = fetch(caching, path, doc)
    assert miss.status == 200
    assert miss.header("X-Autoroute-Cache") == "miss"
    wait_stored(caching, 1)
    sent = inference_requests(own_emulator)
    hit = fetch(caching, path, doc)
    assert inference_requests(own_emulator) == sent  # the backend never saw it
    assert hit.status == 200
    assert hit.header("X-Autoroute-Cache") == "hit"
    # The body is the miss's, byte for byte and chunk for chunk (created_at, ids and
    # durations included: the answer as it was made).
    assert hit.raw == miss.raw
    # The same headers, in the same order; only the date, the request's own id and
    # the cache's verdict differ.
    varying = {"date", "x-request-id", "x-autoroute-cache"}
    assert [n for n, _ in hit.headers] == [n for n, _ in miss.headers]
    assert [h for h in hit.headers if h[0].lower() not in varying] == [
        h for h in miss.headers if h[0].lower() not in varying
    ]
    assert hit.header("X-Request-Id") != miss.header("X-Request-Id")
    counted = metrics(caching)
    assert counted["autoroute_cache_hits_total"] == 1
    assert counted["autoroute_cache_misses_total"] == 1
    assert counted["autoroute_cache_bytes_saved_total"] > 0
    # The health endpoint says where answers are kept and what came of it.
    health = orjson.loads(asyncio.run(_get(caching.port, "/api/autoroute/health")))["cache"]
    assert health["backend"] == caching.config.cache.backend
    assert (health["hits"], health["misses"]) == (1, 1)
    assert health["bytes_saved"] == counted["autoroute_cache_bytes_saved_total"]
    if caching.config.cache.backend == "redis":
        assert len(_redis_keys(caching.config.cache.namespace)) == 1
    else:
        assert health["entries"] == 1


def test_a_hit_names_its_own_origin(caching: Proxy) -> None:
    """A browser's answer names its origin (the backend's CORS headers on a miss):
    a hit names the hit's origin, or none, never the one the miss was made for."""
    path, doc = CASES["chat-whole"]
    miss = fetch(caching, path, doc, {"Origin": "http://localhost:3000"})
    assert miss.header("Access-Control-Allow-Origin") == "http://localhost:3000"
    wait_stored(caching, 1)
    hit = fetch(caching, path, doc, {"Origin": "vscode-webview://editor"})
    assert hit.header("X-Autoroute-Cache") == "hit"
    allowed = [v for n, v in hit.headers if n.lower() == "access-control-allow-origin"]
    assert allowed == ["vscode-webview://editor"]
    assert [v for n, v in hit.headers if n.lower() == "vary"] == ["Origin"]
    plain = fetch(caching, path, doc)
    assert plain.header("X-Autoroute-Cache") == "hit"
    assert plain.header("Access-Control-Allow-Origin") is None and plain.header("Vary") is None


def test_streams_and_whole_answers_are_separate_entries(caching: Proxy) -> None:
    path, doc = CASES["generate-ndjson"]
    fetch(caching, path, doc)
    wait_stored(caching, 1)
    whole = fetch(caching, path, {**doc, "stream": False})
    assert whole.header("X-Autoroute-Cache") == "miss"
    assert whole.header("Content-Type") == "application/json; charset=utf-8"
    # `stream: true` is Ollama's default: the same entry as leaving it out.
    assert fetch(caching, path, {**doc, "stream": True}).header("X-Autoroute-Cache") == "hit"


@pytest.mark.parametrize(
    ("field", "value"),
    [("stream", 0), ("stream", "true"), ("stream", []), ("keep_alive", []), ("keep_alive", "x")],
)
def test_a_refused_stream_or_keep_alive_reads_no_kept_answer(
    caching: Proxy, own_emulator: Emulator, field: str, value: Any
) -> None:
    """`stream` and `keep_alive` are left out of the key, but in a form Ollama refuses
    (a 400) they must not read the answer kept for the valid request."""
    path, doc = CASES["generate-ndjson"]
    assert fetch(caching, path, doc).header("X-Autoroute-Cache") == "miss"
    wait_stored(caching, 1)
    bad = {**doc, field: value}
    direct = asyncio.run(_fetch(own_emulator.port, path, orjson.dumps(bad), {}))
    assert direct.status == 400
    answer = fetch(caching, path, bad)
    assert (answer.status, answer.header("X-Autoroute-Cache")) == (400, "miss")


def test_what_is_not_cacheable(caching: Proxy, own_emulator: Emulator) -> None:
    path, doc = CASES["chat-whole"]
    sampled = {**doc, "options": {"temperature": 0.7}}
    seeded = {**doc, "options": {"temperature": 0.7, "seed": 42}}
    # A negative seed is no seed: Ollama's runners then draw a random one.
    unseeded = {**doc, "options": {"temperature": 0.7, "seed": -1}}
    tools = {**doc, "tools": [{"type": "function", "function": {"name": "f"}}]}
    # Sampled as Go reads the body: the last of the keys that fold alike wins.
    folded = {**doc, "Options": {"temperature": 0.7}}
    folded_tools = {**doc, "Tools": tools["tools"]}
    for body, headers in (
        (sampled, {}),
        (unseeded, {}),
        (tools, {}),
        (folded, {}),
        (folded_tools, {}),
        (doc, {"Cache-Control": "no-cache"}),
        (doc, {"Cache-Control": "max-age=0, no-store"}),
    ):
        sent = inference_requests(own_emulator)
        for _ in range(2):
            answer = fetch(caching, path, body, headers)
            assert answer.status == 200
            assert answer.header("X-Autoroute-Cache") is None
        assert inference_requests(own_emulator) == sent + 2
    # A fixed seed makes sampling repeatable: cacheable at any temperature.
    assert fetch(caching, path, seeded).header("X-Autoroute-Cache") == "miss"
    wait_stored(caching, 1)
    assert fetch(caching, path, seeded).header("X-Autoroute-Cache") == "hit"
    assert metrics(caching)["autoroute_cache_misses_total"] == 1


# Under a nanosecond is 0 too: api.Duration counts whole nanoseconds.
@pytest.mark.parametrize("keep_alive", [0, "0s", "0m", 1e-10, "0.5ns"])
def test_an_answer_asked_to_unload_its_model_is_never_replayed(
    caching: Proxy, own_emulator: Emulator, keep_alive: Any
) -> None:
    """With `keep_alive` 0 the backend unloads the model once it has answered: that is
    part of what the request asks, which a kept answer would not do (nor would it keep
    one, whose keep_alive is left out of the key, for others)."""
    path, doc = CASES["chat-whole"]
    assert fetch(caching, path, doc).header("X-Autoroute-Cache") == "miss"
    wait_stored(caching, 1)
    assert MODEL in loaded(own_emulator)
    answer = fetch(caching, path, {**doc, "keep_alive": keep_alive})
    assert (answer.status, answer.header("X-Autoroute-Cache")) == (200, None)
    assert MODEL not in loaded(own_emulator)
    assert metrics(caching)["autoroute_cache_stored_total"] == 1


@pytest.mark.parametrize(
    ("path", "doc", "fixed"),
    [
        ("/v1/chat/completions", {"temperature": 0.7, "seed": 7}, True),
        ("/v1/chat/completions", {"temperature": 0.7, "seed": 0}, True),
        ("/v1/chat/completions", {"temperature": 0.7, "seed": -1}, False),
        ("/v1/completions", {"temperature": 1, "seed": -5}, False),
        ("/api/generate", {"options": {"temperature": 0.7, "seed": -1}}, False),
        ("/api/generate", {"options": {"temperature": 0, "seed": -1}}, True),
        # Options are a map[string]any: a float64 that api.Options.FromMap truncates.
        ("/api/chat", {"options": {"temperature": 0.7, "seed": 7.9}}, True),
        ("/api/chat", {"options": {"temperature": 0.7, "seed": -0.5}}, True),
        ("/api/chat", {"options": {"temperature": 0.7, "seed": 2**63 - 1024}}, True),
        # Doubles of 2^63 or more, beyond an int64: amd64 converts them to its smallest.
        ("/api/chat", {"options": {"temperature": 0.7, "seed": 2**64 - 1}}, False),
        ("/api/generate", {"options": {"temperature": 0.7, "seed": 2**63}}, False),
        ("/api/generate", {"options": {"temperature": 0.7, "seed": 2**63 - 1}}, False),
        # Beyond 64 bits, kept as written (`go_json`): a double beyond an int64, or none.
        ("/api/chat", {"options": {"temperature": 0.7, "seed": orjson.Fragment(b"9" * 30)}}, False),
        ("/api/chat", {"options": {"temperature": 0.7, "seed": orjson.Fragment(b"1e999")}}, False),
        # The OpenAI routes' int, passed on to the options as a float64 all the same.
        ("/v1/chat/completions", {"temperature": 0.7, "seed": 2**63 - 1}, False),
        # llama-server's seed is a uint32: the low 32 bits all ones (-1 among them) are
        # its LLAMA_DEFAULT_SEED, a random one; the double's bits, not the integer's.
        ("/api/chat", {"options": {"temperature": 0.7, "seed": 2**32 - 1}}, False),
        ("/api/chat", {"options": {"temperature": 0.7, "seed": 2**40 - 1}}, False),
        ("/v1/chat/completions", {"temperature": 0.7, "seed": 2**32 - 1}, False),
        ("/api/chat", {"options": {"temperature": 0.7, "seed": 2**32 - 2}}, True),
        ("/api/chat", {"options": {"temperature": 0.7, "seed": 2**32}}, True),
        ("/api/chat", {"options": {"temperature": 0.7, "seed": 2**60 + 2**32 - 1}}, True),
        ("/api/chat", {"options": {"temperature": 0.7, "seed": True}}, False),
        ("/api/chat", {"options": {"temperature": 0.7, "seed": "7"}}, False),
    ],
)
def test_only_a_seed_ollama_keeps_is_fixed(path: str, doc: dict[str, Any], fixed: bool) -> None:
    """Ollama's runners draw a random seed for a negative one (-1 is its default; the
    MLX runner for any) and llama-server for LLAMA_DEFAULT_SEED, and read the seed as
    api.Options.FromMap converts it: the float64 `options` decodes it into, truncated to
    an int64, which for a double beyond an int64 is the platform's conversion (the
    smallest int64 on amd64, the largest, LLAMA_DEFAULT_SEED to llama-server, on
    arm64)."""
    assert deterministic(path, doc) is fixed


def loaded(emulator: Emulator) -> set[str]:
    return set(emulator.state.loaded)


@pytest.mark.parametrize(
    ("path", "empty"),
    [
        ("/api/chat", {"messages": []}),
        ("/api/chat", {}),
        ("/api/generate", {"prompt": ""}),
        ("/api/generate", {}),
    ],
)
def test_loading_and_unloading_are_never_replayed(
    caching: Proxy, own_emulator: Emulator, path: str, empty: dict[str, Any]
) -> None:
    """A chat without messages or a generate without a prompt only loads the model
    (unloads it with keep_alive 0: ChatHandler, GenerateHandler): its effect on the
    backend is the point, and a numeric keep_alive is left out of the key, so a kept
    "unload" answer would stand in for the next load and the model would never load."""
    body = {"model": MODEL, "stream": False, "options": GREEDY, **empty}
    for keep_alive, reason in ((0, "unload"), (300, "load"), (0, "unload"), (300, "load")):
        answer = fetch(caching, path, {**body, "keep_alive": keep_alive})
        assert answer.status == 200
        assert answer.header("X-Autoroute-Cache") is None
        assert orjson.loads(answer.raw)["done_reason"] == reason
        assert (MODEL in loaded(own_emulator)) is (reason == "load")
    assert metrics(caching).get("autoroute_cache_stored_total", 0) == 0


def test_failed_answers_are_not_kept(caching: Proxy, own_emulator: Emulator) -> None:
    path, doc = CASES["generate-ndjson"]
    missing = {**doc, "model": "no-such:model"}
    assert fetch(caching, path, missing).status == 404
    for fault in ("error500", "close_early"):
        own_emulator.state.fault = fault
        answer = fetch(caching, path, doc)
        assert answer.header("X-Autoroute-Cache") == "miss"
    own_emulator.state.fault = "none"
    time.sleep(0.2)  # room for a store that must not happen
    assert metrics(caching).get("autoroute_cache_stored_total") == 0
    assert fetch(caching, path, doc).header("X-Autoroute-Cache") == "miss"
    wait_stored(caching, 1)


def test_a_cancelled_answer_is_not_kept(servers: ServerThread, cache_config: Cache) -> None:
    from proxy.emulator import EmulatorSettings

    emulator = Emulator(servers, EmulatorSettings(frozen_clock=True, chunk_delay_ms=50))
    proxy = Proxy(servers, [emulator.url], cache=cache_config)
    try:
        path, doc = CASES["generate-ndjson"]

        async def leave_early() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            body = orjson.dumps(doc)
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await reader.readuntil(b"\r\n\r\n")
            await reader.read(10)
            writer.close()

        asyncio.run(leave_early())
        deadline = time.monotonic() + 10
        while emulator.state.cancelled == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        assert metrics(proxy).get("autoroute_cache_stored_total") == 0
    finally:
        proxy.stop()
        emulator.stop()


def test_keys_never_share(servers: ServerThread, own_emulator: Emulator) -> None:
    keys = {name: f"secret-{name}-{uuid.uuid4().hex}" for name in ("a", "b")}
    auth = Auth(
        keys=tuple(
            ApiKey(sha256=hashlib.sha256(k.encode()).hexdigest(), name=n) for n, k in keys.items()
        ),
        metrics_open=True,
    )
    proxy = Proxy(servers, [own_emulator.url], cache=Cache(enabled=True), auth=auth)
    try:
        path, doc = CASES["chat-whole"]

        def as_key(name: str) -> str | None:
            bearer = {"Authorization": f"Bearer {keys[name]}"}
            return fetch(proxy, path, doc, bearer).header("X-Autoroute-Cache")

        assert as_key("a") == "miss"
        wait_stored(proxy, 1)
        assert as_key("b") == "miss"
        wait_stored(proxy, 2)
        assert as_key("a") == "hit"
        assert as_key("b") == "hit"
    finally:
        proxy.stop()


def test_a_new_key_under_an_old_keys_name_reads_none_of_its_answers(
    servers: ServerThread, own_emulator: Emulator
) -> None:
    """Redis keeps answers across restarts: a key in `config.yaml` replaced by another
    under the same name (a rotation, or the name given to someone else) must not read
    the old key's answers. The same key after the restart still does."""
    old, new = (f"secret-{uuid.uuid4().hex}" for _ in range(2))
    path, doc = CASES["chat-whole"]

    def cache_says(prx: Proxy, key: str) -> str | None:
        return fetch(prx, path, doc, {"Authorization": f"Bearer {key}"}).header("X-Autoroute-Cache")

    def keyed(cache: Cache, key: str) -> Proxy:
        digest = hashlib.sha256(key.encode()).hexdigest()
        auth = Auth(keys=(ApiKey(sha256=digest, name="a"),), metrics_open=True)
        return Proxy(servers, [own_emulator.url], cache=cache, auth=auth)

    with redis_namespace() as cache:
        prx = keyed(cache, old)
        try:
            assert cache_says(prx, old) == "miss"
            wait_stored(prx, 1)
        finally:
            prx.stop()
        prx = keyed(cache, new)
        try:
            assert cache_says(prx, new) == "miss"
        finally:
            prx.stop()
        prx = keyed(cache, old)
        try:
            assert cache_says(prx, old) == "hit"
        finally:
            prx.stop()


def test_credentials_scope_the_cache_without_access_control(caching: Proxy) -> None:
    """With no keys configured, the backend may still tell credentials apart."""
    path, doc = CASES["chat-whole"]
    assert (
        fetch(caching, path, doc, {"Authorization": "Bearer one"}).header("X-Autoroute-Cache")
        == "miss"
    )
    wait_stored(caching, 1)
    assert fetch(caching, path, doc).header("X-Autoroute-Cache") == "miss"
    assert (
        fetch(caching, path, doc, {"Authorization": "Bearer two"}).header("X-Autoroute-Cache")
        == "miss"
    )
    assert (
        fetch(caching, path, doc, {"Authorization": "Bearer one"}).header("X-Autoroute-Cache")
        == "hit"
    )


def test_every_credential_header_scopes_the_cache_without_access_control(
    caching: Proxy,
) -> None:
    """The backend (or a gateway in front of it) may tell clients apart by any of the
    credentials a client sends: an OpenAI client's `Authorization` is often the
    placeholder Ollama's documentation suggests (`Bearer ollama`) beside the real key
    in `X-Api-Key`, and a session may be a cookie. A client whose credentials differ
    in any of them reads none of another's answers: a hit would skip the backend's
    check of them."""
    path, doc = CASES["chat-whole"]
    placeholder = {"Authorization": "Bearer ollama"}
    senders: tuple[dict[str, str], ...] = (
        {**placeholder, "X-Api-Key": "alice"},
        {**placeholder, "X-Api-Key": "mallory"},
        placeholder,
        {"Cookie": "session=alice"},
        {"Cookie": "session=mallory"},
        {},
    )
    for stored, headers in enumerate(senders):
        assert fetch(caching, path, doc, headers).header("X-Autoroute-Cache") == "miss", headers
        wait_stored(caching, stored + 1)
    for headers in senders:
        assert fetch(caching, path, doc, headers).header("X-Autoroute-Cache") == "hit", headers


def test_auto_decides_before_the_lookup(caching: Proxy) -> None:
    path, doc = CASES["chat-whole"]
    first = fetch(caching, path, {**doc, "model": "auto"})
    chosen = first.header("X-Autoroute-Model")
    assert first.header("X-Autoroute-Cache") == "miss" and chosen
    wait_stored(caching, 1)
    again = fetch(caching, path, {**doc, "model": "auto"})
    assert again.header("X-Autoroute-Cache") == "hit"
    assert again.header("X-Autoroute-Model") == chosen
    assert again.raw == first.raw
    # The key names the model served: asking for it by name is the same entry.
    assert fetch(caching, path, {**doc, "model": chosen}).header("X-Autoroute-Cache") == "hit"


def _models_named(answer: Answer) -> set[str]:
    """The `model` of every chunk of an NDJSON answer."""
    lines = dechunk(answer.raw).splitlines() if answer.header("Transfer-Encoding") else [answer.raw]
    return {orjson.loads(line)["model"] for line in lines if line.strip()}


@pytest.mark.parametrize("auto_first", [True, False])
def test_a_hit_names_the_model_as_the_request_did(
    servers: ServerThread, cache_config: Cache, auto_first: bool
) -> None:
    """Ollama's answer names the model as its request did: `auto`'s as the backend's
    list spells the one chosen (`Qwen2.5:7B`), a request naming it in another case as
    it named it. A hit names it as a miss of that request would, and as its
    X-Autoroute-Model header does, whichever of the two was kept first."""
    emulator = Emulator(servers, dataclasses.replace(FROZEN, models=("qwen2.5:7b",)))
    store = emulator.state.store
    store["Qwen2.5:7B"] = store.pop("qwen2.5:7b").copied("Qwen2.5:7B")
    prx = Proxy(servers, [emulator.url], cache=cache_config)
    try:
        path, doc = CASES["generate-ndjson"]
        order = ["auto", "qwen2.5:7b"] if auto_first else ["qwen2.5:7b", "auto"]
        for stored, model in enumerate(order * 2, 1):
            answer = fetch(prx, path, {**doc, "model": model})
            assert answer.status == 200
            named = "Qwen2.5:7B" if model == "auto" else model
            assert answer.header("X-Autoroute-Model") == named
            assert _models_named(answer) == {named}, answer.header("X-Autoroute-Cache")
            wait_stored(prx, min(stored, 2))
    finally:
        prx.stop()
        emulator.stop()


def test_a_context_auto_read_from_the_cache_goes_on_with_its_model(caching: Proxy) -> None:
    """`auto` sends a `/api/generate` context back to the model that wrote it: one it
    returned from the cache as well. Here the answer was kept for a request naming the
    model (no `auto` answer to remember it by) and read by `auto`, which chooses that
    model for the picture; the next turn, text alone, goes on with it, not with the
    model `auto` would choose for the text."""
    first = {
        "model": "auto:best",
        "prompt": "What is in this picture?",
        "images": [PIXEL_PNG],
        "stream": False,
        "options": GREEDY,
    }
    vision = orjson.loads(fetch(caching, "/api/autoroute/explain", first).raw)["model"]
    then = {"model": "auto:best", "prompt": "And then?", "stream": False, "options": GREEDY}
    text_model = orjson.loads(fetch(caching, "/api/autoroute/explain", then).raw)["model"]
    assert text_model != vision
    assert fetch(caching, "/api/generate", {**first, "model": vision}).status == 200
    wait_stored(caching, 1)
    hit = fetch(caching, "/api/generate", first)
    assert hit.header("X-Autoroute-Cache") == "hit"
    assert hit.header("X-Autoroute-Model") == vision
    context = orjson.loads(hit.raw)["context"]
    after = fetch(caching, "/api/generate", {**then, "context": context})
    assert after.header("X-Autoroute-Reason") == "context"
    assert after.header("X-Autoroute-Model") == orjson.loads(after.raw)["model"] == vision


def test_usage_events_mark_hits(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    usage = Usage(file_path=str(tmp_path / "events.jsonl"), spool_dir=str(tmp_path / "spool"))
    proxy = Proxy(servers, [own_emulator.url], cache=Cache(enabled=True), usage=usage)
    try:
        path, doc = CASES["generate-ndjson"]
        fetch(proxy, path, doc)
        wait_stored(proxy, 1)
        fetch(proxy, path, doc)
        fetch(proxy, path, {**doc, "options": {}})
    finally:
        proxy.stop()  # the events are written by then
    events = [orjson.loads(line) for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    assert [e["cache"] for e in events] == ["miss", "hit", None]
    miss, hit, _ = events
    assert hit["backend"] is None and miss["backend"]
    assert hit["outcome"]["status"] == 200
    assert hit["outcome"]["eval_count"] == miss["outcome"]["eval_count"] > 0
    assert hit["outcome"]["done_reason"] == "stop"
    assert hit["outcome"]["bytes"] == miss["outcome"]["bytes"]


def test_redis_down_is_a_miss(servers: ServerThread, own_emulator: Emulator) -> None:
    pytest.importorskip("redis")
    down = Cache(enabled=True, backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    proxy = Proxy(servers, [own_emulator.url], cache=down)
    try:
        path, doc = CASES["chat-whole"]
        for _ in range(2):
            answer = fetch(proxy, path, doc)
            assert answer.status == 200
            assert answer.header("X-Autoroute-Cache") == "miss"
        counted = metrics(proxy)
        assert counted["autoroute_cache_lookup_failures_total"] == 2
        assert counted["autoroute_cache_misses_total"] == 2
    finally:
        proxy.stop()


def test_the_ollama_client_reads_a_hit(caching: Proxy) -> None:
    client = ollama.Client(host=caching.url)
    first = client.generate(model=MODEL, prompt="Why is the sky blue?", options=GREEDY)
    wait_stored(caching, 1)
    second = client.generate(model=MODEL, prompt="Why is the sky blue?", options=GREEDY)
    assert second == first
    assert metrics(caching)["autoroute_cache_hits_total"] == 1
    chunks = list(
        client.generate(model=MODEL, prompt="Why is the sky blue?", options=GREEDY, stream=True)
    )
    assert "".join(c.response or "" for c in chunks) == first.response
    assert chunks[-1].done and chunks[-1].eval_count == first.eval_count


def test_a_replayed_answer_is_no_new_evidence() -> None:
    """Online learning and training count a model's answer once, not per replay."""
    event = UsageEvent(
        request_id="r1",
        endpoint="/api/chat",
        served_model=MODEL,
        decision={"chosen": MODEL, "p_success": 0.8, "propensity": 1.0},
        features=Features(features.SCHEMA_VERSION, [0.0] * len(features.REQUEST_FEATURES)),
        candidate={"name": MODEL},
        outcome=UsageAnswer(status=200, done_reason="stop"),
        cache="miss",
    )
    hit = replace(event, request_id="r2", cache="hit")
    assert decision_of(event.document()) is not None
    assert decision_of(hit.document()) is None
    examples, stats = usage_examples([event, hit])
    assert (len(examples), stats.used, stats.skipped_unanswered) == (1, 1, 1)


def test_proxies_on_one_redis_share_answers(servers: ServerThread, own_emulator: Emulator) -> None:
    with redis_namespace() as config:
        first = Proxy(servers, [own_emulator.url], cache=config)
        second = Proxy(servers, [own_emulator.url], cache=config)
        try:
            path, doc = CASES["v1-chat-sse"]
            miss = fetch(first, path, doc)
            assert miss.header("X-Autoroute-Cache") == "miss"
            wait_stored(first, 1)
            sent = inference_requests(own_emulator)
            hit = fetch(second, path, doc)
            assert hit.header("X-Autoroute-Cache") == "hit"
            assert hit.raw == miss.raw
            assert inference_requests(own_emulator) == sent
        finally:
            first.stop()
            second.stop()


def test_size_bounds(servers: ServerThread, own_emulator: Emulator) -> None:
    path, doc = CASES["chat-whole"]
    other = {**doc, "messages": [{"role": "user", "content": "hello"}]}
    small = Cache(enabled=True, max_entry_bytes=100)
    proxy = Proxy(servers, [own_emulator.url], cache=small)
    try:
        for _ in range(2):  # larger than an entry may be: never kept
            assert fetch(proxy, path, doc).header("X-Autoroute-Cache") == "miss"
        assert metrics(proxy).get("autoroute_cache_stored_total") == 0
    finally:
        proxy.stop()
    proxy = Proxy(servers, [own_emulator.url], cache=Cache(enabled=True, max_entries=1))
    try:
        fetch(proxy, path, doc)
        wait_stored(proxy, 1)
        fetch(proxy, path, other)
        wait_stored(proxy, 2)
        # One entry at most: the newer answer pushed the older one out.
        assert fetch(proxy, path, other).header("X-Autoroute-Cache") == "hit"
        assert fetch(proxy, path, doc).header("X-Autoroute-Cache") == "miss"
    finally:
        proxy.stop()


def test_a_hit_the_client_does_not_read_is_cut_off(servers: ServerThread) -> None:
    """A kept answer goes out no faster than the client takes it: one that takes
    nothing for `client_write_idle_seconds` is disconnected, not left holding the whole
    answer in the proxy's memory."""
    emulator = Emulator(servers, EmulatorSettings(frozen_clock=True, chunk_delay_ms=0.0))
    prx = Proxy(
        servers,
        [emulator.url],
        cache=Cache(enabled=True, max_entry_bytes=64 * 1024 * 1024),
        timeouts=Timeouts(client_write_idle_seconds=0.3),
    )
    seen: list[dict[str, Any]] = []
    server = prx.app[APP_KEY]
    server.access.enabled = True
    server.access.record = seen.append  # type: ignore[method-assign]
    # Far more than the socket buffers between the two hold, made small (~2 MB).
    small_send_buffers(prx)
    options = {"temperature": 0, "num_predict": 20_000, "num_ctx": 32768}
    messages = [{"role": "user", "content": "Tell me everything."}]
    doc = {"model": MODEL, "messages": messages, "options": options}
    try:
        assert fetch(prx, "/api/chat", doc).header("X-Autoroute-Cache") == "miss"
        wait_stored(prx, 1)
        sock = slow_reader(prx.port, "/api/chat", orjson.dumps(doc))
        deadline = time.monotonic() + 60
        while not any(r.get("cancelled") for r in seen):
            assert time.monotonic() < deadline, "the unread hit was never cut off"
            time.sleep(0.02)
        sock.close()
    finally:
        prx.stop()
        emulator.stop()
    hit = next(r for r in seen if r.get("cancelled"))
    assert hit["error"] == "client read nothing for 0.3s"


def _store_request(prx: Proxy, method: str, path: str, doc: dict[str, Any]) -> int:
    """A model-store request through the proxy; its status (pull and create: 200 and a
    success line, checked)."""
    status, _, body = asyncio.run(raw_request(prx.port, method, path, [], orjson.dumps(doc)))
    assert status != 200 or path not in ("/api/pull", "/api/create") or b"success" in body
    return status


def _refresh(prx: Proxy) -> None:
    prx.thread.call(prx.app[APP_KEY].backends.refresh_all)


# Changes of the model under the name MODEL through the proxy, and whether the weights
# it names after them are other weights (a pull of the same model brings the same).
CHANGES: dict[str, tuple[list[tuple[str, str, dict[str, Any]]], bool]] = {
    "copied-over": ([("POST", "/api/copy", {"source": "llama3.1:8b", "destination": MODEL})], True),
    "re-created": ([("POST", "/api/create", {"model": MODEL, "from": "llama3.1:8b"})], True),
    "re-pulled": ([("POST", "/api/pull", {"model": MODEL, "stream": False})], False),
    "deleted-and-pulled": (
        [
            ("DELETE", "/api/delete", {"model": MODEL}),
            ("POST", "/api/pull", {"model": MODEL, "stream": False}),
        ],
        False,
    ),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_model_changed_under_its_name_gets_none_of_its_old_answers(
    change: str, caching: Proxy, own_emulator: Emulator
) -> None:
    """Once a pull, create, copy or delete through the proxy has said it succeeded, the
    next request for the name is not answered from what the old weights said: it goes
    to the backend, at once (before any refresh). Once a refresh has listed the digest
    under the name, answers are kept and replayed again: those of the old weights only
    when the digest is theirs."""
    path, doc = CASES["chat-whole"]
    assert fetch(caching, path, doc).header("X-Autoroute-Cache") == "miss"
    wait_stored(caching, 1)
    assert fetch(caching, path, doc).header("X-Autoroute-Cache") == "hit"
    requests, other_weights = CHANGES[change]
    for method, store_path, body in requests:
        assert _store_request(caching, method, store_path, body) == 200
    sent = inference_requests(own_emulator)
    after = fetch(caching, path, doc)
    assert after.status == 200
    assert after.header("X-Autoroute-Cache") is None  # neither looked up nor kept
    assert inference_requests(own_emulator) == sent + 1
    _refresh(caching)
    if other_weights:
        assert fetch(caching, path, doc).header("X-Autoroute-Cache") == "miss"
        wait_stored(caching, 2)
    assert fetch(caching, path, doc).header("X-Autoroute-Cache") == "hit"


def test_weights_changed_on_the_backend_itself_are_new_entries(
    caching: Proxy, own_emulator: Emulator
) -> None:
    """A model changed on the backend directly (not through the proxy) counts from the
    refresh that lists its new digest: the answers of the old weights are not read."""
    path, doc = CASES["chat-whole"]
    assert fetch(caching, path, doc).header("X-Autoroute-Cache") == "miss"
    wait_stored(caching, 1)
    store = own_emulator.state.store
    store[MODEL] = store["llama3.1:8b"].copied(MODEL)
    _refresh(caching)
    sent = inference_requests(own_emulator)
    assert fetch(caching, path, doc).header("X-Autoroute-Cache") == "miss"
    assert inference_requests(own_emulator) == sent + 1


def test_a_model_that_runs_on_another_host_is_never_kept(
    servers: ServerThread, own_emulator: Emulator, cache_config: Cache
) -> None:
    """A model the backend lists with a `remote_host` (a cloud model pulled, or a local
    name of one) is answered by that host: its digest is the local manifest's, which
    stays the same when the host serves other weights under the name, so it names no
    weights to keep an answer by. Such a model's answers are never kept."""

    async def listing(request: web.Request) -> web.Response:
        answer = await pass_on(request, own_emulator.url, await request.read())
        if request.path == "/api/tags" and answer.status == 200:
            assert isinstance(answer.body, bytes)
            listed = orjson.loads(answer.body)
            for entry in listed["models"]:
                if entry["name"] == MODEL:
                    entry.update(remote_host="https://ollama.com:443", remote_model="qwen3:480b")
            answer.body = orjson.dumps(listed)
        return answer

    def backend() -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", listing)
        return app

    port = free_port()
    runner = servers.serve(backend, port)
    prx = Proxy(servers, [f"http://127.0.0.1:{port}"], cache=cache_config)
    try:
        path, doc = CASES["chat-whole"]
        for _ in range(2):
            answer = fetch(prx, path, doc)
            assert answer.status == 200
            assert answer.header("X-Autoroute-Cache") is None
        # A model of the backend's own on the same backend is kept as ever.
        local = {**doc, "model": "llama3.1:8b"}
        assert fetch(prx, path, local).header("X-Autoroute-Cache") == "miss"
        wait_stored(prx, 1)
        assert fetch(prx, path, local).header("X-Autoroute-Cache") == "hit"
        assert metrics(prx)["autoroute_cache_stored_total"] == 1
    finally:
        prx.stop()
        servers.stop(runner)


def test_the_public_health_counts_no_other_keys_traffic(
    servers: ServerThread, own_emulator: Emulator
) -> None:
    """The cache's hits, misses, entries and bytes saved, and each backend's requests in
    flight, count every key's requests: with keys on, the public health gives them only
    to a caller that may see the fleet (a key without a model list). The others read
    where answers are kept, and each backend's name and circuit."""
    free, listed = (f"secret-{uuid.uuid4().hex}" for _ in range(2))
    auth = Auth(
        keys=(
            ApiKey(sha256=hashlib.sha256(free.encode()).hexdigest(), name="free"),
            ApiKey(sha256=hashlib.sha256(listed.encode()).hexdigest(), name="l", models=(MODEL,)),
        )
    )
    proxy = Proxy(servers, [own_emulator.url], cache=Cache(enabled=True), auth=auth)
    path, doc = CASES["chat-whole"]
    bearer = {"Authorization": f"Bearer {free}"}

    def health(key: str | None) -> dict[str, Any]:
        headers = [(b"Authorization", f"Bearer {key}".encode())] if key else []
        status, _, body = asyncio.run(
            raw_request(proxy.port, "GET", "/api/autoroute/health", headers)
        )
        assert status == 200
        answer: dict[str, Any] = orjson.loads(body)
        return answer

    try:
        assert fetch(proxy, path, doc, bearer).header("X-Autoroute-Cache") == "miss"
        deadline = time.monotonic() + 10
        while health(free)["cache"]["entries"] != 1:
            assert time.monotonic() < deadline, "the answer was never stored"
            time.sleep(0.02)
        assert fetch(proxy, path, doc, bearer).header("X-Autoroute-Cache") == "hit"
        full = health(free)
        assert full["cache"] == {
            "backend": "memory",
            "ttl_seconds": proxy.config.cache.ttl_seconds,
            "entries": 1,
            "hits": 1,
            "misses": 1,
            "bytes_saved": full["cache"]["bytes_saved"],
        }
        assert full["cache"]["bytes_saved"] > 0 and "in_flight" in full["backends"][0]
        for key in (None, listed):
            public = health(key)
            assert public["cache"] == {
                "backend": "memory",
                "ttl_seconds": proxy.config.cache.ttl_seconds,
            }
            assert public["backends"] == [{"name": "backends[0]", "circuit": "closed"}]
            assert public["status"] == "ok"
    finally:
        proxy.stop()


async def test_a_lookup_the_client_leaves_as_it_completes_ends_cancelled() -> None:
    """The client leaves (its handler is cancelled) just as Redis's answer to the lookup
    came: Python 3.11's `wait_for`, aiocache's bound on the lookup, then returns that
    answer and the cancellation is lost, and the request went on for a client that is
    gone (a replay on a connection that no longer exists). The lookup ends with the
    cancellation."""
    with redis_namespace() as config:
        cache = ResponseCache(config, CollectorRegistry())
        read = cache.backend._get
        lookup: asyncio.Task[Any] | None = None

        async def read_then_leave(*args: Any, **kwargs: Any) -> Any:
            value = await read(*args, **kwargs)
            assert lookup is not None
            asyncio.get_running_loop().call_soon(lookup.cancel)  # as the answer comes
            return value

        cache.backend._get = read_then_leave
        try:
            lookup = asyncio.ensure_future(cache.lookup("k"))
            with pytest.raises(asyncio.CancelledError):
                await lookup
        finally:
            await cache.close()

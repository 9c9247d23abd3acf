"""Runner caps (`runners`): what one request may ask of a shared backend's model runner
(`options.num_ctx` and the other launch options, `keep_alive`), checked through real
HTTP against what the backend behind the proxy received and what the emulator did with
it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.auth import hash_key
from proxy.config import ConfigError
from proxy.config_loading import load as load_config
from proxy.config_services import ApiKey, Auth
from proxy.config_serving import Runners
from proxy.emulator.state import FROZEN_TIME_NS
from proxy.runner_caps import CAPPED_HEADER
from tests.support import Emulator, Proxy, ServerThread, bearer, free_port, pass_on

ADMIN, USER = "k-admin-caps", "k-user-caps"
MODEL = "llama3.1:8b"  # trained on 131072 tokens
EMBEDDER = "nomic-embed-text:latest"
# One body per route whose runner reads `options` and `keep_alive`.
BODIES: dict[str, dict[str, Any]] = {
    "/api/generate": {"model": MODEL, "prompt": "hi", "stream": False},
    "/api/chat": {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    },
    "/api/embed": {"model": EMBEDDER, "input": "hi"},
    "/api/embeddings": {"model": EMBEDDER, "prompt": "hi"},
}
# `ollama stop`: a generate naming the model alone, with keep_alive 0.
STOP = {"model": MODEL, "keep_alive": 0}


@dataclass
class Recorder:
    """A front for the emulator that keeps each inference body it forwards, as sent."""

    target: str
    seen: list[tuple[str, bytes]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "POST" and request.path != "/api/show":
            self.seen.append((request.path, body))
        return await pass_on(request, self.target, body)

    def last(self) -> dict[str, Any]:
        """The last body the backend received, as it reads it."""
        doc: dict[str, Any] = orjson.loads(self.seen[-1][1])
        return doc


@pytest.fixture
def recorder(servers: ServerThread, own_emulator: Emulator) -> Iterator[tuple[str, Recorder]]:
    front = Recorder(own_emulator.url)
    port = free_port()
    runner = servers.serve(front.app, port)
    yield f"http://127.0.0.1:{port}", front
    servers.stop(runner)


@pytest.fixture
def capped(
    request: pytest.FixtureRequest, servers: ServerThread, recorder: tuple[str, Recorder]
) -> Iterator[Proxy]:
    """The proxy in front of the recorder, with the test's `runners` (its parameter)
    and two keys: an admin's and a user's."""
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(ADMIN), name="ops", role="admin"),
            ApiKey(sha256=hash_key(USER), name="dev"),
        )
    )
    prx = Proxy(servers, [recorder[0]], runners=request.param, auth=auth)
    yield prx
    prx.stop()


async def post(
    url: str, path: str, body: object, key: str = USER
) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url + path,
            data=body if isinstance(body, bytes) else orjson.dumps(body),
            headers=bearer(key),
        ) as resp,
    ):
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def expiry(emulator: Emulator, model: str = MODEL) -> int | None:
    """When the emulator unloads `model`, in nanoseconds after its frozen clock."""
    at = emulator.state.loaded.get(model)
    return None if at is None else at - FROZEN_TIME_NS


@pytest.mark.parametrize("path", sorted(BODIES))
async def test_by_default_the_backend_receives_num_ctx_and_keep_alive_as_sent(
    servers: ServerThread, recorder: tuple[str, Recorder], path: str
) -> None:
    url, front = recorder
    prx = Proxy(servers, [url])
    try:
        launch = {"num_gpu": 0, "num_batch": 8, "use_mmap": False}
        body = {**BODIES[path], "options": {"num_ctx": 1_000_000, **launch}, "keep_alive": -1}
        status, headers, _ = await post(prx.url, path, body)
        assert status == 200
        assert front.last() == body
        assert CAPPED_HEADER not in headers
        if path == "/api/generate":
            status, _, answer = await post(prx.url, path, STOP)
            assert (status, orjson.loads(answer)["done_reason"]) == (200, "unload")
            assert front.last() == STOP
    finally:
        prx.stop()


@pytest.mark.parametrize("capped", [Runners(max_num_ctx=8192)], indirect=True)
@pytest.mark.parametrize("path", sorted(BODIES))
async def test_num_ctx_above_the_cap_is_lowered_to_it(
    capped: Proxy, recorder: tuple[str, Recorder], path: str
) -> None:
    _, front = recorder
    for asked in (131072, 131072.7, 8192.9):
        options = {"num_ctx": asked, "temperature": 0.5}
        status, headers, _ = await post(capped.url, path, {**BODIES[path], "options": options})
        # Ollama reads 8192.9 as 8192 (an int option truncated): within the cap.
        within = asked == 8192.9
        assert status == 200
        assert front.last()["options"] == {"num_ctx": asked if within else 8192, "temperature": 0.5}
        assert headers.get(CAPPED_HEADER) == (None if within else "num_ctx=8192")
    # An integer beyond 64 bits is a float64 to Go (options are a map of `any`), which
    # FromMap converts to an int64: lowered as any other, not left to the platform's
    # conversion (arm64 saturates to the largest int64).
    for beyond in (b"18446744073709551616", b"123456789012345678901234567890"):
        written = orjson.dumps({**BODIES[path], "options": {"num_ctx": 0}})
        status, headers, _ = await post(
            capped.url, path, written.replace(b":0}", b":" + beyond + b"}")
        )
        assert status == 200
        assert front.last()["options"] == {"num_ctx": 8192}
        assert headers.get(CAPPED_HEADER) == "num_ctx=8192"
    for within in (4096, 0, -1, None, "8192x"):
        body = {**BODIES[path], "options": {"num_ctx": within}}
        _, headers, _ = await post(capped.url, path, body)
        assert front.last() == body
        assert CAPPED_HEADER not in headers


@pytest.mark.parametrize("capped", [Runners(max_num_ctx=8192, max_keep_alive="30m")], indirect=True)
async def test_the_caps_hold_for_the_fields_as_ollama_reads_them(
    capped: Proxy, recorder: tuple[str, Recorder]
) -> None:
    _, front = recorder
    # Go matches a key to a request field whatever its case, the last one winning;
    # `options` is a map, read by exact key: NUM_CTX is no option of Ollama's.
    body = (
        b'{"model": "llama3.1:8b", "prompt": "hi", "stream": false, "keep_alive": 60,'
        b' "Keep_Alive": -1, "OPTIONS": {"num_ctx": 4096, "num_ctx": 131072, "NUM_CTX": 9}}'
    )
    status, headers, _ = await post(capped.url, "/api/generate", body)
    assert status == 200
    assert front.last() == {
        "model": MODEL,
        "prompt": "hi",
        "stream": False,
        "keep_alive": 1800,
        "options": {"num_ctx": 8192, "NUM_CTX": 9},
    }
    assert headers[CAPPED_HEADER] == "num_ctx=8192, keep_alive=1800"


# Fields that are ints in another route's request (or in none of Ollama's), each with
# a number that is no integer: Ollama's decoder skips a field its route's request lacks.
NOT_THE_ROUTES_INTS: dict[str, dict[str, Any]] = {
    "/api/generate": {"dimensions": 0.5, "max_tokens": 1.5, "seed": 2.5},
    "/api/chat": {"context": [0.5], "dimensions": 0.5, "max_tokens": 1.5},
    "/api/embed": {"context": [0.5], "top_logprobs": 0.5},
    "/api/embeddings": {"context": [0.5], "dimensions": 0.5, "top_logprobs": 0.5},
}


@pytest.mark.parametrize("capped", [Runners(max_num_ctx=8192, max_keep_alive="30m")], indirect=True)
@pytest.mark.parametrize("path", sorted(BODIES))
async def test_a_fraction_in_a_field_the_route_does_not_read_escapes_no_cap(
    capped: Proxy, recorder: tuple[str, Recorder], path: str
) -> None:
    """A number that is no integer in an int field makes Ollama refuse the whole body,
    which then reaches no runner, caps or no caps. Only in a field of the route's own
    request: in another, Ollama skips it and runs the request, whose runner options
    must be capped like any other's."""
    _, front = recorder
    for name, value in NOT_THE_ROUTES_INTS[path].items():
        body = {**BODIES[path], "options": {"num_ctx": 131072}, "keep_alive": -1, name: value}
        status, headers, _ = await post(capped.url, path, body)
        assert status == 200, name
        sent = front.last()
        assert (sent["options"], sent["keep_alive"], sent[name]) == (
            {"num_ctx": 8192},
            1800,
            value,
        ), name
        assert headers.get(CAPPED_HEADER) == "num_ctx=8192, keep_alive=1800"


@pytest.mark.parametrize("capped", [Runners(max_num_ctx=8192)], indirect=True)
async def test_an_admin_keys_runner_options_are_not_capped(
    capped: Proxy, recorder: tuple[str, Recorder]
) -> None:
    _, front = recorder
    body = {**BODIES["/api/chat"], "options": {"num_ctx": 131072}}
    status, headers, _ = await post(capped.url, "/api/chat", body, ADMIN)
    assert status == 200
    assert front.last() == body
    assert CAPPED_HEADER not in headers


@pytest.mark.parametrize("capped", [Runners(max_num_ctx=8192)], indirect=True)
async def test_auto_is_capped_on_the_model_it_chose(
    capped: Proxy, recorder: tuple[str, Recorder]
) -> None:
    _, front = recorder
    body = {**BODIES["/api/chat"], "model": "auto", "options": {"num_ctx": 65536}}
    status, headers, _ = await post(capped.url, "/api/chat", body)
    assert status == 200
    received = front.last()
    assert received["model"] == headers["X-Autoroute-Model"]
    assert received["options"] == {"num_ctx": 8192}
    assert headers[CAPPED_HEADER] == "num_ctx=8192"


@pytest.mark.parametrize("capped", [Runners(client_num_ctx=False)], indirect=True)
@pytest.mark.parametrize("path", sorted(BODIES))
async def test_a_clients_num_ctx_can_be_left_to_the_server(
    capped: Proxy, recorder: tuple[str, Recorder], path: str
) -> None:
    _, front = recorder
    for asked in (2048, 4096, None):
        body = {**BODIES[path], "options": {"num_ctx": asked, "seed": 7}}
        status, headers, _ = await post(capped.url, path, body)
        assert status == 200
        assert front.last() == {**BODIES[path], "options": {"seed": 7}}
        assert headers[CAPPED_HEADER] == "num_ctx=unset"
    status, headers, _ = await post(capped.url, path, BODIES[path])
    assert front.last() == BODIES[path]
    assert CAPPED_HEADER not in headers


@pytest.mark.parametrize("capped", [Runners(client_launch_options=False)], indirect=True)
@pytest.mark.parametrize("path", sorted(BODIES))
async def test_the_options_a_runner_is_launched_with_can_be_left_to_the_server(
    capped: Proxy, recorder: tuple[str, Recorder], path: str
) -> None:
    _, front = recorder
    launch = {
        "num_batch": 8,
        "num_gpu": 0,
        "main_gpu": 1,
        "use_mmap": False,
        "num_thread": 2,
        "draft_num_predict": 3,
    }
    shifts = path in ("/api/generate", "/api/chat")
    body = {**BODIES[path], "options": {**launch, "seed": 7, "num_ctx": 4096}, "shift": False}
    status, headers, _ = await post(capped.url, path, body)
    assert status == 200
    sent = {**BODIES[path], "options": {"seed": 7, "num_ctx": 4096}}
    # `shift` is a field of generate and chat requests only: elsewhere Ollama skips it.
    assert front.last() == (sent if shifts else {**sent, "shift": False})
    unset = [f"{name}=unset" for name in launch] + (["shift=unset"] if shifts else [])
    assert headers[CAPPED_HEADER].split(", ") == unset
    # An admin key's go as sent.
    status, headers, _ = await post(capped.url, path, body, key=ADMIN)
    assert (status, front.last()) == (200, body)
    assert CAPPED_HEADER not in headers


@pytest.mark.parametrize("capped", [Runners(max_keep_alive="30m")], indirect=True)
@pytest.mark.parametrize("path", sorted(BODIES))
async def test_keep_alive_beyond_the_most_is_lowered_to_it(
    capped: Proxy, recorder: tuple[str, Recorder], own_emulator: Emulator, path: str
) -> None:
    _, front = recorder
    for asked in (-1, "-5m", "2h", 7200, 1800.5):
        status, headers, _ = await post(capped.url, path, {**BODIES[path], "keep_alive": asked})
        assert status == 200
        assert front.last() == {**BODIES[path], "keep_alive": 1800}
        assert headers[CAPPED_HEADER] == "keep_alive=1800"
        assert expiry(own_emulator, BODIES[path]["model"]) == 1800 * 10**9
    for within in ("10m", 60, 0, None):
        body = {**BODIES[path], "keep_alive": within}
        _, headers, _ = await post(capped.url, path, body)
        assert front.last() == body
        assert CAPPED_HEADER not in headers


@pytest.mark.parametrize("capped", [Runners(max_keep_alive="30m")], indirect=True)
async def test_a_keep_alive_beyond_64_bits_is_lowered_as_any_other(
    capped: Proxy, recorder: tuple[str, Recorder], own_emulator: Emulator
) -> None:
    """An integer beyond 64 bits that a double holds is a number of seconds to Go
    (api.Duration reads it into a float64), far beyond the most: lowered, not let
    through to keep the model loaded forever; one beyond a double is Go's 400."""
    _, front = recorder
    for asked in (b"18446744073709551616", b"123456789012345678901234567890"):
        body = b'{"model": "llama3.1:8b", "prompt": "hi", "stream": false, "keep_alive": '
        status, headers, _ = await post(capped.url, "/api/generate", body + asked + b"}")
        assert status == 200
        assert front.last() == {**BODIES["/api/generate"], "keep_alive": 1800}
        assert headers[CAPPED_HEADER] == "keep_alive=1800"
        assert expiry(own_emulator) == 1800 * 10**9
    body = b'{"model": "llama3.1:8b", "prompt": "hi", "stream": false, "keep_alive": 1e400}'
    status, headers, _ = await post(capped.url, "/api/generate", body)
    assert status == 400
    assert front.seen[-1][1] == body.replace(b" ", b"")  # compact, the number as sent
    assert CAPPED_HEADER not in headers


@pytest.mark.parametrize("capped", [Runners(min_keep_alive="5m")], indirect=True)
async def test_keep_alive_below_the_least_is_raised_and_an_unload_refused(
    capped: Proxy, recorder: tuple[str, Recorder], own_emulator: Emulator
) -> None:
    _, front = recorder
    for path, body in BODIES.items():
        for asked in (0, "0s", 10, 1e-10):
            status, headers, _ = await post(capped.url, path, {**body, "keep_alive": asked})
            assert status == 200
            assert front.last() == {**body, "keep_alive": 300}
            assert headers[CAPPED_HEADER] == "keep_alive=300"
            assert expiry(own_emulator, body["model"]) == 300 * 10**9
    # An embedding request without input loads its model, and is raised as any other.
    status, _, _ = await post(capped.url, "/api/embed", {"model": EMBEDDER, "keep_alive": 0})
    assert (status, front.last()) == (200, {"model": EMBEDDER, "keep_alive": 300})
    received = len(front.seen)
    unloads = [
        ("/api/generate", STOP),
        ("/api/generate", {"model": MODEL, "prompt": "", "keep_alive": "0s"}),
        ("/api/chat", {"model": MODEL, "messages": [], "keep_alive": 1e-10}),
    ]
    for path, body in unloads:
        status, headers, answer = await post(capped.url, path, body)
        assert status == 403
        assert headers["Content-Type"].startswith("application/json")
        assert orjson.loads(answer) == {
            "error": "unloading a model is not allowed here: models stay loaded at least "
            "300s after a request"
        }
    assert len(front.seen) == received  # none reached the backend
    assert expiry(own_emulator) == 300 * 10**9  # still loaded
    # An admin key may unload.
    status, _, answer = await post(capped.url, "/api/generate", STOP, ADMIN)
    assert (status, orjson.loads(answer)["done_reason"]) == (200, "unload")
    assert expiry(own_emulator) is None


@pytest.mark.parametrize(
    "capped", [Runners(max_num_ctx=8192, max_keep_alive="1m", min_keep_alive="1m")], indirect=True
)
async def test_what_ollama_refuses_or_does_not_read_goes_as_sent(
    capped: Proxy, recorder: tuple[str, Recorder]
) -> None:
    _, front = recorder
    # A keep_alive Ollama cannot read: its own 400, from the backend. A duration beyond
    # Go's (2^63-1 ns, about 2562047 hours) is no duration to time.ParseDuration either.
    for refused in ("forever", "2562048h", "9223372036854775808ns", "99999999999h"):
        body = {**BODIES["/api/generate"], "keep_alive": refused}
        status, headers, answer = await post(capped.url, "/api/generate", body)
        assert (status, orjson.loads(answer)) == (
            400,
            {"error": f'time: invalid duration "{refused}"'},
        )
        assert front.last() == body
        assert CAPPED_HEADER not in headers
    # Ollama's OpenAI layer reads neither field: the body goes on unchanged.
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_ctx": 131072},
        "keep_alive": -1,
    }
    status, headers, _ = await post(capped.url, "/v1/chat/completions", body)
    assert status == 200
    assert front.last() == body
    assert CAPPED_HEADER not in headers


@pytest.mark.parametrize("capped", [Runners(max_num_ctx=8192)], indirect=True)
async def test_a_capped_request_is_logged_without_key_or_prompt(
    capped: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    body = {**BODIES["/api/generate"], "prompt": "secret 42", "options": {"num_ctx": 9000}}
    with caplog.at_level(logging.INFO, logger="autoroute.runner_caps"):
        status, _, _ = await post(capped.url, "/api/generate", body)
    assert status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "autoroute.runner_caps"]
    assert lines == [f"runner caps on /api/generate for dev (model {MODEL}): num_ctx=8192"]


def test_runner_caps_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("runners:\n  max_num_ctx: 8192\n  max_keep_alive: 30m\n")
    environ = {
        "AUTOROUTE_RUNNERS__MIN_KEEP_ALIVE": "60",
        "AUTOROUTE_RUNNERS__CLIENT_NUM_CTX": "0",
        "AUTOROUTE_RUNNERS__CLIENT_LAUNCH_OPTIONS": "false",
    }
    assert load_config(path, environ).runners == Runners(
        max_num_ctx=8192,
        client_num_ctx=False,
        client_launch_options=False,
        min_keep_alive="60",
        max_keep_alive="30m",
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MAX_KEEP_ALIVE", "-1", "runners.max_keep_alive: forever (a negative value) is no bound"),
        ("MAX_KEEP_ALIVE", "0", "runners.max_keep_alive: must be above 0"),
        (
            "MIN_KEEP_ALIVE",
            "5x",
            'runners.min_keep_alive: time: unknown unit "x" in duration "5x"',
        ),
        ("MIN_KEEP_ALIVE", "2h", "runners.min_keep_alive: above runners.max_keep_alive"),
        ("MAX_NUM_CTX", "-8", "runners.max_num_ctx: must not be negative"),
    ],
)
def test_runner_caps_that_cannot_work_are_refused(variable: str, value: str, message: str) -> None:
    environ = {"AUTOROUTE_RUNNERS__MAX_KEEP_ALIVE": "1h", f"AUTOROUTE_RUNNERS__{variable}": value}
    with pytest.raises(ConfigError) as refused:
        load_config(None, environ)
    assert str(refused.value) == f"environment variable AUTOROUTE_RUNNERS__{variable}: {message}"

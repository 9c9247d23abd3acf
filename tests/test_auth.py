"""Access control: API keys as SHA-256 hashes, roles, per-key model allow-lists (also
for `model: auto`), requests per minute and concurrent streams, and keys and prompts
kept out of the logs."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict
from yarl import URL

from proxy.app import APP_KEY
from proxy.auth import hash_key, new_key
from proxy.config import ConfigError
from proxy.config_loading import load as load_config
from proxy.config_selector import Experiment, Profile, Selector, Variant
from proxy.config_services import ApiKey, Auth, Usage
from proxy.config_serving import Backend, Health
from proxy.handlers import WEB_SEARCH_FORBIDDEN
from tests.support import (
    AUTO_NAMES,
    Emulator,
    Proxy,
    ServerThread,
    bearer,
    file_usage,
    free_port,
    raw_request,
    running_stream,
)
from tests.usage_services import Database, postgres_usage, read_bytes, wait_for

ADMIN, USER, LIMITED, SINGLE = "k-admin-1", "k-user-1", "k-limited-1", "k-single-1"
ALLOWED = ("llama3.1:8b", "qwen2.5:7b")
SECRET_PROMPT = "the secret prompt 7f3a9"


@pytest.fixture
def guarded(servers: ServerThread, own_emulator: Emulator, tmp_path: Path) -> Iterator[Proxy]:
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(ADMIN), name="ops", role="admin"),
            ApiKey(sha256=hash_key(USER), name="dev", models=ALLOWED),
            ApiKey(sha256=hash_key(LIMITED), name="slow", requests_per_minute=2),
            ApiKey(sha256=hash_key(SINGLE), name="one", max_streams=1),
        )
    )
    usage = file_usage(tmp_path)
    prx = Proxy(servers, [own_emulator.url], auth=auth, usage=usage)
    yield prx
    prx.stop()


async def call(
    url: str,
    method: str,
    path: str,
    key: str | None = None,
    body: object = None,
    user: str = "",
) -> tuple[int, CIMultiDict[str], bytes]:
    headers = bearer(key) if key else {}
    if user:
        headers["X-Autoroute-User"] = user
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, url + path, headers=headers, data=None if body is None else orjson.dumps(body)
        ) as resp,
    ):
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def stats(url: str, key: str) -> dict[str, Any]:
    """`GET /api/autoroute/stats` as `key` sees it."""
    doc: dict[str, Any] = orjson.loads((await call(url, "GET", "/api/autoroute/stats", key))[2])
    return doc


CHAT = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def test_without_keys_everything_is_open(proxy: Proxy) -> None:
    status, _, _ = await call(proxy.url, "POST", "/api/chat", None, CHAT)
    assert status == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/chat", CHAT),
        ("GET", "/api/tags", None),
        ("POST", "/api/pull", {"model": "llama3.1:8b"}),
        ("GET", "/metrics", None),
        ("GET", "/api/autoroute/status", None),
    ],
)
@pytest.mark.parametrize("key", [None, "wrong-key"])
async def test_missing_or_unknown_key_is_401_in_ollamas_shape(
    guarded: Proxy, method: str, path: str, body: object, key: str | None
) -> None:
    status, headers, answer = await call(guarded.url, method, path, key, body)
    assert status == 401
    assert orjson.loads(answer) == {"error": "unauthorized"}
    assert headers["WWW-Authenticate"] == "Bearer"


async def test_openai_routes_answer_401_in_openais_shape(guarded: Proxy) -> None:
    status, _, answer = await call(guarded.url, "POST", "/v1/chat/completions", "nope", CHAT)
    assert status == 401
    assert orjson.loads(answer)["error"]["message"] == "unauthorized"


async def test_other_schemes_are_not_keys(guarded: Proxy) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(guarded.url + "/api/tags", headers={"Authorization": f"Basic {USER}"}) as resp,
    ):
        assert resp.status == 401
    # X-Api-Key (Anthropic-style clients) is accepted.
    async with (
        aiohttp.ClientSession() as http,
        http.get(guarded.url + "/api/tags", headers={"X-Api-Key": USER}) as resp,
    ):
        assert resp.status == 200


@pytest.mark.parametrize(
    "path", ["/", "/api/version", "/api/autoroute/health", "/api/autoroute/ready"]
)
async def test_liveness_paths_stay_open(guarded: Proxy, path: str) -> None:
    status, _, _ = await call(guarded.url, "GET", path)
    assert status == 200


ADMIN_ONLY = [
    ("POST", "/api/pull", {"model": "llama3.1:8b", "stream": False}),
    ("POST", "/api/copy", {"source": "llama3.1:8b", "destination": "mine:1"}),
    ("DELETE", "/api/delete", {"model": "mine:1"}),
    ("POST", "/api/create", {"model": "made:1", "from": "llama3.1:8b", "stream": False}),
    ("POST", "/api/push", {"model": "llama3.1:8b", "stream": False}),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
    ("POST", "/api/blobs/sha256:" + "0" * 64, None),
    ("POST", "/api/autoroute/reload", None),
    # Ollama's ollama.com account routes: the server's account, not the client's.
    ("POST", "/api/me", None),
    ("POST", "/api/signout", None),
    ("DELETE", "/api/user/keys/c3NoLWVkMjU1MTk", None),
    ("POST", "/api/experimental/web_search", {"query": "x"}),
    ("POST", "/api/experimental/web_fetch", {"url": "https://example.com"}),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY)
async def test_admin_paths_are_403_for_a_user_key(
    guarded: Proxy, method: str, path: str, body: object
) -> None:
    status, _, answer = await call(guarded.url, method, path, USER, body)
    assert status == 403
    if method != "HEAD":
        assert "admin" in orjson.loads(answer)["error"]


# The model store's routes, and what the backends' health checks poll (not the test's).
STORE = ADMIN_ONLY[:5]
POLLED = ("/api/tags", "/api/ps")


def unclean(path: str) -> list[str]:
    """Spellings of `path` Go's ServeMux cleans to it: a doubled slash, a `.` or a `..`
    segment, a doubled leading slash, a trailing `.`."""
    head, _, tail = path.rpartition("/")
    return [
        f"{head}//{tail}",
        f"{head}/./{tail}",
        f"{head}/x/../{tail}",
        f"/{path}",
        f"{path}/.",
    ]


def asked(emulator: Emulator) -> dict[str, int]:
    return {p: n for p, n in emulator.state.requests.items() if p not in POLLED}


@pytest.mark.parametrize(("method", "path", "body"), STORE, ids=[r[1] for r in STORE])
async def test_an_unclean_spelling_of_an_admin_path_is_gos_redirect_reaching_no_backend(
    guarded: Proxy, own_emulator: Emulator, method: str, path: str, body: object
) -> None:
    """Go's ServeMux, in front of Ollama's routes, answers a path that is not clean
    with a 307 to the clean one (Go 1.26, which Ollama builds with; 301 before it)
    before any handler runs, whatever the method: so does
    the proxy, before keys and backends (the route table would see no route in such a
    path and pass it through), and so does the emulator."""
    data = orjson.dumps(body)
    key = [(b"Authorization", f"Bearer {USER}".encode())]
    for spelling in [
        *unclean(path),
        path.replace("/api/", "/api/./") + "?insecure=true",
        "http://127.0.0.1" + path.replace("/api/", "/api//"),  # the absolute form
    ]:
        _, question, query = spelling.partition("?")  # Go keeps the query
        clean = path + question + query
        for port in (guarded.port, own_emulator.port):
            before = asked(own_emulator)
            status, fields, answer = await raw_request(port, method, spelling, key, data)
            assert (status, fields["location"], answer) == (307, clean.encode(), b""), spelling
            # Go's http.Redirect writes no body or type but to GET and HEAD.
            assert fields["content-length"] == b"0" and "content-type" not in fields
            if port == guarded.port:
                assert asked(own_emulator) == before, spelling  # no backend saw it


@pytest.mark.parametrize(("method", "path", "body"), STORE, ids=[r[1] for r in STORE])
async def test_following_the_redirect_of_an_unclean_admin_path_is_still_403(
    guarded: Proxy, own_emulator: Emulator, method: str, path: str, body: object
) -> None:
    before = asked(own_emulator)
    async with aiohttp.ClientSession() as http:
        for spelling in unclean(path):
            url = URL(guarded.url + spelling, encoded=True)  # as typed: not normalised
            async with http.request(method, url, headers=bearer(USER), json=body) as resp:
                assert [r.status for r in resp.history] == [307], spelling
                assert resp.status == 403 and "admin" in (await resp.json())["error"]
    assert asked(own_emulator) == before


@pytest.mark.parametrize("path", ["/api%2Fpull", "/api%2fpull", "/api/pul%6C", "/api%2Fpush"])
async def test_an_escaped_spelling_of_an_admin_path_is_the_admin_path(
    guarded: Proxy, own_emulator: Emulator, path: str
) -> None:
    """Go cleans the path as sent (`%2F` is no slash there), and gin matches the
    decoded one: `/api%2Fpull` is Ollama's pull. The proxy's table reads the same
    decoded path, so it takes the same access; the emulator runs the same handler."""
    before = asked(own_emulator)
    status, _, answer = await raw_request(
        guarded.port, "POST", path, [(b"Authorization", f"Bearer {USER}".encode())], b"{}"
    )
    assert status == 403 and "admin" in orjson.loads(answer)["error"]
    assert asked(own_emulator) == before
    body = orjson.dumps({"model": "nothing-here:1", "stream": False})
    clean = "/api/" + ("push" if "push" in path.lower() else "pull")
    expected = await raw_request(own_emulator.port, "POST", clean, [], body)
    for port in (own_emulator.port, guarded.port):
        key = [(b"Authorization", f"Bearer {ADMIN}".encode())] if port == guarded.port else []
        status, _, answer = await raw_request(port, "POST", path, key, body)
        assert (status, answer) == (expected[0], expected[2]), port


@pytest.mark.parametrize("path", ["/api/%2e/pull", "/api/x/%2E%2E/pull", "/api/%2e%2e/api/pull"])
async def test_an_escaped_dot_segment_is_no_route_of_ollamas(
    guarded: Proxy, own_emulator: Emulator, path: str
) -> None:
    """An escaped dot is no dot segment of the path as sent: Go does not clean it away,
    and gin, which matches the decoded path without cleaning it, has no route there.
    The proxy passes it through as a path outside its table, and the backend answers
    gin's 404: no handler of Ollama's runs."""
    key = [(b"Authorization", f"Bearer {USER}".encode())]
    for port in (guarded.port, own_emulator.port):
        status, _, answer = await raw_request(port, "POST", path, key, b"{}")
        assert (status, answer) == (404, b"404 page not found"), port


@pytest.mark.parametrize(
    ("method", "path", "body"), [r for r in ADMIN_ONLY if "/api/me" in r[1] or "/api/exp" in r[1]]
)
async def test_account_paths_pass_for_an_admin_key(
    guarded: Proxy, own_emulator: Emulator, method: str, path: str, body: object
) -> None:
    status, _, _ = await call(guarded.url, method, path, ADMIN, body)
    assert status != 403
    assert own_emulator.state.last_headers["x-request-id"]  # it reached the backend


@pytest.mark.parametrize(
    "header",
    [
        (b"X-Api-Key", b"\xff"),
        (b"Authorization", b"Bearer \xff"),
        (b"Authorization", b"Bearer \xc3\x28" + USER.encode()),
        (b"Authorization", "Bearer 中".encode()),
    ],
)
async def test_a_key_that_is_not_utf8_is_401(guarded: Proxy, header: tuple[bytes, bytes]) -> None:
    status, fields, body = await raw_request(guarded.port, "GET", "/api/tags", [header])
    assert status == 401
    assert orjson.loads(body) == {"error": "unauthorized"}
    assert fields["www-authenticate"] == b"Bearer"


async def test_admin_key_may_change_the_model_store_and_reload(
    guarded: Proxy, own_emulator: Emulator
) -> None:
    url = guarded.url
    copy = {"source": "llama3.1:8b", "destination": "mine:1"}
    assert (await call(url, "POST", "/api/copy", ADMIN, copy))[0] == 200
    assert (await call(url, "DELETE", "/api/delete", ADMIN, {"model": "mine:1"}))[0] == 200
    pull = {"model": "llama3.1:8b", "stream": False}
    assert (await call(url, "POST", "/api/pull", ADMIN, pull))[0] == 200
    # The reload endpoint answers (200, or 409 when the artifact on disk is unusable).
    status, _, answer = await call(url, "POST", "/api/autoroute/reload", ADMIN)
    assert status in (200, 409) and orjson.loads(answer)
    # Admins are users too.
    assert (await call(url, "POST", "/api/chat", ADMIN, CHAT))[0] == 200


async def test_user_key_may_infer_list_explain_and_give_feedback(guarded: Proxy) -> None:
    url = guarded.url
    status, headers, _ = await call(url, "POST", "/api/chat", USER, CHAT)
    assert status == 200
    assert (await call(url, "GET", "/api/tags", USER))[0] == 200
    assert (await call(url, "POST", "/api/autoroute/explain", USER, {"prompt": "x"}))[0] == 200
    feedback = {"request_id": headers["X-Request-Id"], "rating": 1}
    assert (await call(url, "POST", "/api/autoroute/feedback", USER, feedback))[0] == 202
    assert (await call(url, "GET", "/api/autoroute/stats", USER))[0] == 200
    # The views of the whole fleet: any key without a model list (USER has one).
    assert (await call(url, "GET", "/api/autoroute/status", SINGLE))[0] == 200
    assert (await call(url, "GET", "/metrics", SINGLE))[0] == 200


async def test_model_outside_the_keys_allow_list_is_403(guarded: Proxy) -> None:
    body = {**CHAT, "model": "mistral:7b"}
    status, _, answer = await call(guarded.url, "POST", "/api/chat", USER, body)
    assert status == 403
    assert orjson.loads(answer) == {"error": "model 'mistral:7b' is not allowed for this API key"}
    # The same model with a key without a list is served.
    assert (await call(guarded.url, "POST", "/api/chat", ADMIN, body))[0] == 200


@pytest.mark.parametrize(
    ("path", "body_of"),
    [
        ("/api/chat", lambda m: {**CHAT, "model": m}),
        ("/api/generate", lambda m: {"model": m, "prompt": "hi", "stream": False}),
        ("/v1/chat/completions", lambda m: {**CHAT, "model": m}),
        ("/api/embed", lambda m: {"model": m, "input": "hi"}),
        ("/api/show", lambda m: {"model": m}),
    ],
)
@pytest.mark.parametrize(
    "model",
    [
        "a<b>&c",
        "qwen 2.5",
        "qwen:",
        "x" * 300,
        " \t",
        # A source suffix asks for ollama.com, but Ollama parses the rest first: a model
        # off the list, in a spelling Ollama cannot qualify, runs nowhere.
        "registry.ollama.ai/mistral:7b-cloud",
        "/gemma2:9b:cloud",
        "mistral:7b:local:cloud",
        "mistral:7b\x1c",
        # No profile of `auto`'s either: a name that is no model's is Ollama's to answer.
        "auto:a<b>&c",
        "auto:../../x",
        "auto:best:cloud:local",
    ],
)
async def test_a_name_ollama_cannot_parse_gets_its_answer_whatever_the_key(
    guarded: Proxy,
    own_emulator: Emulator,
    path: str,
    body_of: Callable[[str], object],
    model: str,
) -> None:
    """A name Ollama refuses to parse is no model on any key's list and no backend's:
    Ollama's answer (400 "invalid model name", or the handler's own for a blank one)
    for a key with a model list as for one without, not "not allowed for this API
    key", which would say the name could be allowed."""
    direct = await call(own_emulator.url, "POST", path, None, body_of(model))
    assert 400 <= direct[0] < 500
    for key in (USER, ADMIN):
        status, headers, answer = await call(guarded.url, "POST", path, key, body_of(model))
        assert (status, headers["Content-Type"], answer) == (
            direct[0],
            direct[1]["Content-Type"],
            direct[2],
        ), key


async def test_auto_only_chooses_among_the_keys_models(guarded: Proxy) -> None:
    prompts = ["hi", "write a quicksort in rust", "prove that sqrt 2 is irrational " * 50]
    for prompt in prompts:
        body = {"model": "auto", "prompt": prompt, "stream": False}
        status, headers, answer = await call(guarded.url, "POST", "/api/generate", USER, body)
        assert status == 200, answer
        assert headers["X-Autoroute-Model"] in ALLOWED
        assert orjson.loads(answer)["model"] in ALLOWED
    # With nothing allowed that can serve the request, the reason says why for the
    # key's models, and names none of the others (vision models among them).
    images = {"model": "auto", "prompt": "what is this", "images": ["aGVsbG8="], "stream": False}
    status, _, answer = await call(guarded.url, "POST", "/api/generate", USER, images)
    assert status == 400
    message = orjson.loads(answer)["error"]
    assert all(f"{m}: lacks vision" in message for m in ALLOWED)
    hidden = hidden_models(guarded)
    assert hidden and not [m for m in hidden if m in message]


def hidden_models(prx: Proxy) -> list[str]:
    """The proxy's candidates that USER's key may not use."""

    async def names() -> list[str]:  # on the proxy's loop: the registry reads its clock
        return [c.name for c in prx.app[APP_KEY].registry.candidates()]

    return [n for n in prx.thread.call(names) if n not in ALLOWED]


def test_auto_filter_leaves_out_the_models_the_key_cannot_see(guarded: Proxy) -> None:
    proxy = guarded.app[APP_KEY]
    allowed = frozenset(ALLOWED)

    async def decide() -> dict[str, str]:
        choice = proxy.auto.decide("/api/generate", {"prompt": "hi"}, "balanced", "", allowed)
        return choice.decision.filtered

    # Both allowed models fit; the others are not named, not even as refused.
    assert guarded.thread.call(decide) == {}
    assert hidden_models(guarded)  # there are others


async def test_requests_per_minute_answer_429_with_retry_after(guarded: Proxy) -> None:
    url = guarded.url
    assert (await call(url, "GET", "/api/tags", LIMITED))[0] == 200
    assert (await call(url, "GET", "/api/tags", LIMITED))[0] == 200
    status, headers, answer = await call(url, "GET", "/api/tags", LIMITED)
    assert status == 429
    assert 1 <= int(headers["Retry-After"]) <= 30
    assert "rate limit" in orjson.loads(answer)["error"]
    # Other keys have their own budget.
    assert (await call(url, "GET", "/api/tags", USER))[0] == 200


async def test_concurrent_streams_beyond_the_limit_answer_429(guarded: Proxy) -> None:
    body = {"model": "llama3.1:8b", "prompt": "long", "options": {"num_predict": 400}}
    async with running_stream(guarded.url, SINGLE, body) as first:
        status, headers, answer = await call(guarded.url, "POST", "/api/generate", SINGLE, body)
        assert status == 429 and headers["Retry-After"] == "1"
        assert "concurrent" in orjson.loads(answer)["error"]
        # Non-inference requests are not streams.
        assert (await call(guarded.url, "GET", "/api/tags", SINGLE))[0] == 200
        await first.read()
    # The slot is given back when the stream ends.
    short = {**body, "options": {"num_predict": 2}, "stream": False}
    assert (await call(guarded.url, "POST", "/api/generate", SINGLE, short))[0] == 200


async def test_a_method_an_inference_route_does_not_serve_takes_no_stream_slot(
    guarded: Proxy,
) -> None:
    """A GET, PUT or DELETE on a path that runs a model with a POST runs nothing (the
    backend answers gin's 405): it is no stream, so a key whose slots are all taken
    gets that 405, not a 429 for a stream it never asked for."""
    body = {"model": "llama3.1:8b", "prompt": "long", "options": {"num_predict": 400}}
    async with running_stream(guarded.url, SINGLE, body) as first:  # the only slot taken
        for method, path in [
            ("GET", "/api/chat"),
            ("DELETE", "/api/generate"),
            ("PUT", "/v1/chat/completions"),
        ]:
            assert (await call(guarded.url, method, path, SINGLE))[0] == 405, (method, path)
        await first.read()


async def test_usage_events_carry_the_keys_name_and_logs_carry_no_key_or_prompt(
    guarded: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    access = guarded.app[APP_KEY].access
    access.enabled, access.stream = True, io.StringIO()
    body = {"model": "llama3.1:8b", "prompt": SECRET_PROMPT, "stream": False}
    status, headers, _ = await call(guarded.url, "POST", "/api/generate", USER, body)
    assert status == 200
    assert (await call(guarded.url, "POST", "/api/generate", "bad-" + USER, body))[0] == 401
    path = guarded.config.usage.file_path

    async def written() -> bool:
        return bool(await read_bytes(path))

    await wait_for(written, what="the usage event")
    (event,) = [orjson.loads(line) for line in (await read_bytes(path)).splitlines()]
    assert event["request_id"] == headers["X-Request-Id"]
    assert event["client"]["api_key_id"] == "dev"
    # Beside the name, the key itself: its SHA-256's first 16 hex digits, never the key.
    assert event["client"]["api_key_hash"] == hash_key(USER)[:16]
    await asyncio.to_thread(guarded.stop)
    logged = access.stream.getvalue() + caplog.text
    assert '"key":"dev"' in logged  # the access log names the key by its id
    assert USER not in logged and SECRET_PROMPT not in logged


def test_keys_in_config_are_hashes(tmp_path: Path) -> None:
    key, digest = new_key()
    assert digest == hash_key(key) and len(digest) == 64
    path = tmp_path / "c.yaml"
    path.write_text(
        f"auth:\n  keys:\n    - {{sha256: {digest}, name: ci, role: admin, models: [a:1]}}\n"
    )
    cfg = load_config(path, environ={})
    (entry,) = cfg.auth.keys
    assert (entry.id, entry.role, entry.models) == ("ci", "admin", ("a:1",))
    path.write_text("auth:\n  keys:\n    - {sha256: not-a-hash}\n")
    with pytest.raises(ConfigError, match="64 hex"):
        load_config(path, environ={})
    path.write_text(f"auth:\n  keys:\n    - {{sha256: {digest}, role: root}}\n")
    with pytest.raises(ConfigError, match="not one of"):
        load_config(path, environ={})


def test_listening_beyond_loopback_without_keys_warns(caplog: pytest.LogCaptureFixture) -> None:
    from proxy.cli import _warn_if_exposed
    from proxy.config import Config
    from proxy.config_serving import Listen

    caplog.set_level(logging.WARNING, logger="autoroute")
    _warn_if_exposed(Config(listen=Listen(host="0.0.0.0")))
    assert "without API keys" in caplog.text
    caplog.clear()
    keyed = Auth(keys=(ApiKey(sha256=hash_key(USER)),))
    _warn_if_exposed(Config(listen=Listen(host="0.0.0.0"), auth=keyed))
    stored = Auth(postgres_dsn="postgresql://postgres@127.0.0.1/keys")  # keys in a table
    _warn_if_exposed(Config(listen=Listen(host="0.0.0.0"), auth=stored))
    _warn_if_exposed(Config(listen=Listen(host="127.0.0.1")))
    assert caplog.text == ""


async def test_the_proxys_key_is_not_forwarded_to_backends(
    guarded: Proxy, own_emulator: Emulator
) -> None:
    status, _, _ = await call(guarded.url, "POST", "/api/chat", USER, CHAT)
    assert status == 200
    forwarded = own_emulator.state.last_headers
    assert forwarded["x-request-id"] and forwarded["content-type"]  # headers do pass
    assert "authorization" not in forwarded


def listed(body: bytes) -> set[str]:
    doc = orjson.loads(body)
    items = doc["models"] if "models" in doc else doc["data"]
    return {m.get("name") or m["id"] for m in items or ()}


async def test_lists_show_only_the_keys_models(guarded: Proxy) -> None:
    url = guarded.url
    outside = {"model": "mistral:7b", "prompt": "hi", "stream": False}
    inside = {**outside, "model": "llama3.1:8b"}
    assert (await call(url, "POST", "/api/generate", ADMIN, outside))[0] == 200
    assert (await call(url, "POST", "/api/generate", USER, inside))[0] == 200
    for path in ("/api/tags", "/v1/models"):
        status, _, body = await call(url, "GET", path, USER)
        assert status == 200
        # `auto` stays listed: it chooses among the key's models alone.
        assert listed(body) == {*ALLOWED, *AUTO_NAMES}
        everything = listed((await call(url, "GET", path, ADMIN))[2])
        assert {"mistral:7b", *ALLOWED, *AUTO_NAMES} <= everything
    assert listed((await call(url, "GET", "/api/ps", USER))[2]) == {"llama3.1:8b"}
    assert {"llama3.1:8b", "mistral:7b"} <= listed((await call(url, "GET", "/api/ps", ADMIN))[2])
    assert (await call(url, "HEAD", "/api/tags", USER))[0] == 200


async def test_a_model_made_from_another_names_no_parent_outside_the_keys_list(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    """A model created from another names that one as its `parent_model` (the layer's
    `From` in Ollama) in `/api/tags` and `/api/show` (its `/api/ps` names none). A key
    whose list has the made model but not its parent must not learn the parent's name
    from it; a parent on the list stays named, and a key without a list sees every
    parent."""
    bot = "k-bot-1"
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(ADMIN), name="ops", role="admin"),
            ApiKey(sha256=hash_key(bot), name="bot", models=("team-bot", "team-coder", *ALLOWED)),
        )
    )
    usage = Usage(file_path=str(tmp_path / "events.jsonl"), spool_dir=str(tmp_path / "spool"))
    prx = Proxy(servers, [own_emulator.url], auth=auth, usage=usage)
    try:
        url = prx.url
        for made, parent in (("team-bot", "mistral:7b"), ("team-coder", "llama3.1:8b")):
            body = {"model": made, "from": parent, "system": "be brief", "stream": False}
            assert (await call(url, "POST", "/api/create", ADMIN, body))[0] == 200
            chat = {**CHAT, "model": made}
            assert (await call(url, "POST", "/api/chat", bot, chat))[0] == 200

        def parents(body: bytes) -> dict[str, str]:
            return {
                m["name"]: m["details"]["parent_model"]
                for m in orjson.loads(body)["models"]
                if m["name"].startswith("team-")
            }

        want = {"team-bot:latest": "", "team-coder:latest": "llama3.1:8b"}
        status, _, answer = await call(url, "GET", "/api/tags", bot)
        assert status == 200
        assert parents(answer) == want
        assert b"mistral" not in answer
        everything = parents((await call(url, "GET", "/api/tags", ADMIN))[2])
        assert everything["team-bot:latest"] == "mistral:7b"
        for key in (bot, ADMIN):
            status, _, answer = await call(url, "GET", "/api/ps", key)
            assert status == 200
            assert parents(answer) == {"team-bot:latest": "", "team-coder:latest": ""}
        for made, parent in (("team-bot", ""), ("team-coder", "llama3.1:8b")):
            status, _, answer = await call(url, "POST", "/api/show", bot, {"model": made})
            assert status == 200
            assert orjson.loads(answer)["details"]["parent_model"] == parent, made
            assert b"mistral" not in answer, made
        shown = (await call(url, "POST", "/api/show", ADMIN, {"model": "team-bot"}))[2]
        assert orjson.loads(shown)["details"]["parent_model"] == "mistral:7b"
    finally:
        prx.stop()


@pytest.mark.parametrize(
    ("path", "body_of"),
    [
        ("/api/show", lambda m: {"model": m}),
        ("/api/show", lambda m: {"name": m}),  # the older field Ollama still reads
        ("/v1/models/{}", lambda m: None),
    ],
)
@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("mistral:7b", "mistral:7b"),
        # ShowHandler names the model as it reads it (getExistingName, DisplayShortest):
        # each part spelled as a model the key sees spells it (the tag as qwen2.5:7b's),
        # a default tag added, a source suffix left out.
        ("MISTRAL:7B", "MISTRAL:7b"),
        ("Mistral", "Mistral:latest"),
        ("mistral:local", "mistral:latest"),
    ],
)
async def test_describing_a_model_outside_the_list_answers_as_ollama_for_an_unknown_one(
    guarded: Proxy,
    own_emulator: Emulator,
    path: str,
    body_of: Callable[[str], object],
    name: str,
    shown: str,
) -> None:
    async def describe(base: str, model: str, key: str | None) -> tuple[int, str, bytes]:
        if "{}" in path:
            status, headers, answer = await call(base, "GET", path.format(model), key)
        else:
            status, headers, answer = await call(base, "POST", path, key, body_of(model))
        return status, headers["Content-Type"], answer

    hidden = await describe(guarded.url, name, USER)
    # What the backend itself says of a model it does not have, name for name (its
    # own name in the case of the one asked for).
    mistral = name[: len("mistral")]
    pairs = zip(mistral, "nosuchx", strict=True)
    other = "".join(o.upper() if m.isupper() else o for m, o in pairs)
    unknown = await describe(own_emulator.url, other + name[len(mistral) :], None)
    assert hidden[0] == unknown[0] == 404
    assert hidden[1:] == (unknown[1], unknown[2].replace(other.encode(), mistral.encode()))
    error = orjson.loads(hidden[2])["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert message == f"model '{shown}' not found"
    # Inside the list, and for a key without one, the model is described.
    assert (await describe(guarded.url, "llama3.1:8b", USER))[0] == 200
    assert (await describe(guarded.url, "mistral:7b", ADMIN))[0] == 200


async def test_a_hidden_models_name_is_spelled_only_after_the_models_the_key_sees(
    guarded: Proxy, own_emulator: Emulator
) -> None:
    """Ollama spells each part of a name it lacks as a model it holds spells it
    (getExistingName): the backend, which holds llama3.3:70b, names `LLAMA3.3:70B` so.
    The key that sees only ALLOWED gets the name as a machine holding only those would
    give it, which says nothing of the models off its list."""
    body = {"model": "LLAMA3.3:70B"}
    status, _, answer = await call(guarded.url, "POST", "/api/show", ADMIN, body)
    assert (status, orjson.loads(answer)["model_info"] is not None) == (200, True)
    missing = {"model": "LLAMA3.3:7B"}
    direct = await call(own_emulator.url, "POST", "/api/show", None, missing)
    assert orjson.loads(direct[2]) == {"error": "model 'llama3.3:7b' not found"}
    status, _, answer = await call(guarded.url, "POST", "/api/show", USER, body)
    assert (status, orjson.loads(answer)) == (404, {"error": "model 'LLAMA3.3:70B' not found"})


@pytest.mark.parametrize("path", ["/api/show", "/v1/models/{}"])
async def test_a_name_ollama_cannot_read_gets_its_400_for_any_key(
    guarded: Proxy, own_emulator: Emulator, path: str
) -> None:
    """A name model.ParseName cannot qualify names no model on any list: Ollama's 400
    "invalid model name" for every key, as the backend answers it, not the 404 that
    hides a model off the key's list."""
    for name in ("bad!!", "m:.tag", "ok:local:cloud"):
        if "{}" in path:
            answers = [
                await call(base, "GET", path.format(name), key)
                for base, key in (
                    (own_emulator.url, None),
                    (guarded.url, USER),
                    (guarded.url, ADMIN),
                )
            ]
        else:
            body = {"model": name}
            answers = [
                await call(base, "POST", path, key, body)
                for base, key in (
                    (own_emulator.url, None),
                    (guarded.url, USER),
                    (guarded.url, ADMIN),
                )
            ]
        direct = answers[0]
        assert direct[0] == 400, (name, direct)
        for status, headers, answer in answers[1:]:
            assert (status, headers["Content-Type"], answer) == (
                direct[0],
                direct[1]["Content-Type"],
                direct[2],
            ), name


@pytest.mark.parametrize("path", ["/v1/models/", "/v1/models/llama3.1:8b/x"])
async def test_a_path_no_model_id_fits_gets_ollamas_router_answer_for_any_key(
    guarded: Proxy, own_emulator: Emulator, path: str
) -> None:
    """Ollama's `/v1/models/:model` takes one non-empty segment: an empty one gets gin's
    redirect to `/v1/models`, two get its plain 404, before any handler reads a model
    name. A key with a model list gets those answers too, not a model's 404."""
    direct = await raw_request(own_emulator.port, "GET", path, [])
    for key in (USER, ADMIN):
        status, headers, body = await raw_request(
            guarded.port, "GET", path, [(b"Authorization", b"Bearer " + key.encode())]
        )
        assert (status, headers.get("location"), body) == (
            direct[0],
            direct[1].get("location"),
            direct[2],
        )


async def test_auto_show_and_explain_see_only_the_keys_models(guarded: Proxy) -> None:
    url = guarded.url
    status, _, answer = await call(url, "POST", "/api/show", USER, {"model": "auto"})
    assert status == 200
    picks = orjson.loads(answer)["modelfile"].split("picks one of: ", 1)[1].strip()
    assert set(picks.split(", ")) == set(ALLOWED)

    prompt = {"model": "auto", "prompt": "write a quicksort in rust"}
    status, _, answer = await call(url, "POST", "/api/autoroute/explain", USER, prompt)
    assert status == 200
    doc = orjson.loads(answer)
    assert doc["model"] in ALLOWED
    assert {r["model"] for r in doc["ranking"]} <= set(ALLOWED)
    assert set(doc["filtered"]) <= set(ALLOWED)
    # A key without a list ranks the emulator's other models too.
    doc = orjson.loads((await call(url, "POST", "/api/autoroute/explain", ADMIN, prompt))[2])
    assert {r["model"] for r in doc["ranking"]} - set(ALLOWED)


def named(body: bytes, models: list[str]) -> list[str]:
    """Which of `models` the body names."""
    return [m for m in models if m.encode() in body]


async def served_both(prx: Proxy) -> list[str]:
    """A request for a model outside USER's list (by the admin key) and one for a
    model on it (by USER), both counted in the stats; the names USER must not see."""
    outside = {"model": "mistral:7b", "prompt": "hi", "stream": False}
    inside = {**outside, "model": "llama3.1:8b"}
    assert (await call(prx.url, "POST", "/api/generate", ADMIN, outside))[0] == 200
    assert (await call(prx.url, "POST", "/api/generate", USER, inside))[0] == 200

    async def both_counted() -> bool:
        rows = orjson.loads((await call(prx.url, "GET", "/api/autoroute/stats", ADMIN))[2])
        return {"mistral:7b", "llama3.1:8b"} <= {r["served_model"] for r in rows["models"]}

    await wait_for(both_counted, what="both requests in the stats")
    hidden = hidden_models(prx)
    assert "mistral:7b" in hidden
    return hidden


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/autoroute/stats", None),
        ("POST", "/api/autoroute/explain", {"model": "auto", "prompt": "a quicksort in rust"}),
        ("GET", "/api/autoroute/health", None),
    ],
)
async def test_a_key_with_a_model_list_sees_no_other_models_name(
    guarded: Proxy, method: str, path: str, body: object
) -> None:
    """What USER gets names none of the proxy's other models, which a key without a
    list does see there: the stats and explain show it its own models, the public
    health each backend's state without model names."""
    hidden = await served_both(guarded)
    status, _, answer = await call(guarded.url, method, path, USER, body)
    assert status == 200, answer
    assert named(answer, hidden) == []
    assert named((await call(guarded.url, method, path, ADMIN, body))[2], hidden)
    if path.endswith("/stats"):
        rows = orjson.loads(answer)["models"]
        assert [r["served_model"] for r in rows] == ["llama3.1:8b"]


@pytest.mark.parametrize(
    ("spelling", "allowed"),
    [
        ("registry.ollama.ai/library/llama3.1:8b", True),
        ("Registry.Ollama.AI/Library/llama3.1:8b", True),
        ("library/llama3.1:8b", True),
        ("registry.ollama.ai/library/mistral:7b", False),
        ("other.example/library/llama3.1:8b", False),
        ("registry.ollama.ai/someone/llama3.1:8b", False),
        ("llama3.1:8b:local", True),
        ("llama3.1:8b:cloud", False),
        ("llama3.1:8b-cloud", False),
    ],
)
async def test_a_model_on_the_list_in_its_long_spelling_is_that_model(
    guarded: Proxy, spelling: str, allowed: bool
) -> None:
    """Ollama reads `registry.ollama.ai/library/llama3.1:8b`, `library/llama3.1:8b`
    and `llama3.1:8b:local` as `llama3.1:8b` (model.ParseName, the default host and
    namespace; modelref.ParseRef, the source suffix): the key that may use the one may
    use the others, and no other model passes for it (`:cloud` runs on ollama.com)."""
    body = {**CHAT, "model": spelling}
    status, _, answer = await call(guarded.url, "POST", "/api/chat", USER, body)
    assert status == (200 if allowed else 403), answer
    status, _, answer = await call(guarded.url, "POST", "/api/show", USER, {"model": spelling})
    assert status == (200 if allowed else 404), answer


@pytest.mark.parametrize("path", ["/api/embed", "/api/embeddings", "/v1/embeddings"])
async def test_auto_embeddings_name_no_model_outside_the_keys_list(
    servers: ServerThread, own_emulator: Emulator, path: str
) -> None:
    """`auto` embeds with `selector.embedding_model`: a key whose list lacks it is
    refused without its name, as `auto` names no model outside a key's list, and
    explain's refusal to rank for the route does not name it either; a key that may use
    it embeds, and explain names the model to it."""
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(USER), name="dev", models=ALLOWED),
            ApiKey(sha256=hash_key(SINGLE), name="one", models=("nomic-embed-text",)),
        )
    )
    prx = Proxy(
        servers,
        [own_emulator.url],
        auth=auth,
        selector=Selector(embedding_model="nomic-embed-text"),
    )
    try:
        body = {"model": "auto", "input": "hi"} if path != "/api/embeddings" else None
        body = body or {"model": "auto", "prompt": "hi"}
        status, _, answer = await call(prx.url, "POST", path, USER, body)
        assert status == 403
        assert b"nomic" not in answer
        error = orjson.loads(answer)["error"]
        message = error["message"] if path.startswith("/v1/") else error
        assert message == "auto's embedding model is not allowed for this API key"
        status, headers, _ = await call(prx.url, "POST", path, SINGLE, body)
        # Named as the model list spells it.
        assert status == 200 and headers["X-Autoroute-Model"] == "nomic-embed-text:latest"
        explain = "/api/autoroute/explain?path=" + path
        status, _, answer = await call(prx.url, "POST", explain, USER, body)
        assert status == 400 and b"nomic" not in answer, answer
        status, _, answer = await call(prx.url, "POST", explain, SINGLE, body)
        assert status == 400 and b"(nomic-embed-text)" in answer, answer
    finally:
        prx.stop()


async def test_stats_name_backends_and_sink_errors_only_to_who_sees_the_fleet(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    """The stats' rows name the backend that served and the sinks say why they fail
    (a path, a host and port): the operator's, as in the public probes. A key with a
    model list reads each backend under its public name and no sink's error; a key
    that may see every model reads both."""
    unwritable = tmp_path / "events-dir"  # a directory: the file sink cannot write it
    unwritable.mkdir()
    usage = Usage(
        file_path=str(unwritable),
        spool_dir=str(tmp_path / "spool"),
        flush_interval_seconds=0.02,
    )
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(SINGLE), name="one"),
            ApiKey(sha256=hash_key(USER), name="dev", models=ALLOWED),
        )
    )
    prx = Proxy(servers, [own_emulator.url], auth=auth, usage=usage)
    try:
        body = {"model": "llama3.1:8b", "prompt": "hi", "stream": False}
        assert (await call(prx.url, "POST", "/api/generate", USER, body))[0] == 200

        async def failing() -> bool:
            doc = await stats(prx.url, SINGLE)
            return bool(doc["models"]) and bool(doc["sinks"]["file"]["last_error"])

        await wait_for(failing, what="the request counted and the sink's error")
        full = await stats(prx.url, SINGLE)
        assert [r["backend"] for r in full["models"]] == [own_emulator.url]
        assert str(unwritable) in full["sinks"]["file"]["last_error"]

        status, _, answer = await call(prx.url, "GET", "/api/autoroute/stats", USER)
        assert status == 200
        assert own_emulator.url.encode() not in answer and str(unwritable).encode() not in answer
        doc = orjson.loads(answer)
        assert [(r["served_model"], r["backend"]) for r in doc["models"]] == [
            ("llama3.1:8b", "backends[0]")
        ]
        sink = doc["sinks"]["file"]
        assert "last_error" not in sink and sink["healthy"] is False
    finally:
        prx.stop()


async def test_a_key_with_a_model_list_sees_no_counts_of_other_keys_refused_requests(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    """Requests the proxy refuses before any model serves them (a model outside the
    key's list) count in a row without a model, over every key, and in the usage
    pipeline's and sinks' counts of events: a key with a model list reads neither, only
    its models' rows and whether each sink is healthy. A key that may see every model
    reads them all."""
    other = "k-other-1"
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(ADMIN), name="ops", role="admin"),
            ApiKey(sha256=hash_key(USER), name="dev", models=ALLOWED),
            ApiKey(sha256=hash_key(other), name="other", models=("mistral:7b",)),
        )
    )
    usage = file_usage(tmp_path)
    prx = Proxy(servers, [own_emulator.url], auth=auth, usage=usage)
    try:
        body = {"model": "llama3.1:8b", "prompt": "hi", "stream": False}
        assert (await call(prx.url, "POST", "/api/generate", USER, body))[0] == 200
        for _ in range(3):
            assert (await call(prx.url, "POST", "/api/generate", other, body))[0] == 403

        async def refusals_counted() -> bool:
            doc = await stats(prx.url, ADMIN)
            return doc["sinks"]["file"]["written"] == 4 and any(
                row["served_model"] is None and row["requests"] == 3 for row in doc["models"]
            )

        await wait_for(refusals_counted, what="the refused requests in the stats")
        doc = await stats(prx.url, USER)
        assert [(r["served_model"], r["requests"]) for r in doc["models"]] == [("llama3.1:8b", 1)]
        assert set(doc) == {"source", "models", "sinks"}
        assert doc["sinks"] == {"file": {"healthy": True}}
    finally:
        prx.stop()


def _figures(doc: dict[str, Any]) -> dict[str, tuple[int, int, dict[str, Any]]]:
    """Each row's model, its requests, errors and ratings."""
    return {r["served_model"]: (r["requests"], r["errors"], r["ratings"]) for r in doc["models"]}


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def stats_source(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Usage]:
    """Where the stats come from (their `source`) and the usage settings for it: the
    in-memory windows beside a file, or PostgreSQL (a database of the test's own)."""
    if request.param == "postgres":
        database: Database = request.getfixturevalue("database")
        return "postgres", postgres_usage(database.dsn, tmp_path, flush_interval_seconds=0.02)
    return "memory", file_usage(tmp_path)


async def test_a_key_with_a_model_list_reads_only_its_own_requests_in_its_rows(
    stats_source: tuple[str, Usage], servers: ServerThread, own_emulator: Emulator
) -> None:
    """A row of the stats counts every key's requests on its model and backend: a key
    with a model list reads in each row the figures of its own requests only (their
    count, latencies and ratings), and no row of a model only other keys used, from
    PostgreSQL and from the in-memory windows alike. A key without a model list and an
    admin key, with a model list or not, read every key's."""
    ann, bob, idle = "k-ann-1", "k-bob-1", "k-idle-1"
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(ann), name="ann", models=ALLOWED),
            ApiKey(sha256=hash_key(bob), name="bob", models=ALLOWED),
            ApiKey(sha256=hash_key(idle), name="idle", models=ALLOWED),
            ApiKey(sha256=hash_key(SINGLE), name="one"),
            ApiKey(sha256=hash_key(ADMIN), name="ops", role="admin", models=ALLOWED),
        )
    )
    source, usage = stats_source
    prx = Proxy(servers, [own_emulator.url], auth=auth, usage=usage)
    try:
        llama = {"model": "llama3.1:8b", "prompt": "hi", "stream": False}
        qwen = {**llama, "model": "qwen2.5:7b"}
        assert (await call(prx.url, "POST", "/api/generate", ann, llama))[0] == 200
        bobs = []
        for body in (llama, llama, qwen):
            status, headers, _ = await call(prx.url, "POST", "/api/generate", bob, body)
            assert status == 200
            bobs.append(headers["X-Request-Id"])

        async def counted(ratings: int) -> bool:
            doc = await stats(prx.url, SINGLE)
            counts = {m: (n, r["count"]) for m, (n, _, r) in _figures(doc).items()}
            return doc["source"] == source and counts == {
                "llama3.1:8b": (3, min(ratings, 2)),
                "qwen2.5:7b": (1, ratings - min(ratings, 2)),
            }

        await wait_for(lambda: counted(0), what="every request in the stats")
        for rid in bobs:
            rating = {"request_id": rid, "rating": 1}
            assert (await call(prx.url, "POST", "/api/autoroute/feedback", bob, rating))[0] == 202
        await wait_for(lambda: counted(3), what="bob's ratings in the stats")

        unrated = {"count": 0, "mean": None}
        own = await stats(prx.url, ann)
        assert _figures(own) == {"llama3.1:8b": (1, 0, unrated)}
        (row,) = own["models"]
        # One request's figures: its own latencies, not a spread over others'.
        assert row["ttfc_ms"]["p50"] == row["ttfc_ms"]["p95"]
        assert row["total_ms"]["p50"] == row["total_ms"]["p95"]
        assert _figures(await stats(prx.url, bob)) == {
            "llama3.1:8b": (2, 0, {"count": 2, "mean": 1.0}),
            "qwen2.5:7b": (1, 0, {"count": 1, "mean": 1.0}),
        }
        assert (await stats(prx.url, idle))["models"] == []
        whole = _figures(await stats(prx.url, SINGLE))
        assert whole["llama3.1:8b"][0] == 3
        assert _figures(await stats(prx.url, ADMIN)) == whole
    finally:
        prx.stop()


async def test_health_without_a_key_says_what_is_up_and_names_no_model(guarded: Proxy) -> None:
    hidden = await served_both(guarded)
    status, _, answer = await call(guarded.url, "GET", "/api/autoroute/health")
    assert status == 200 and named(answer, [*hidden, *ALLOWED]) == []
    health = orjson.loads(answer)
    assert health["status"] == "ok"
    assert [(b["name"], b["circuit"]) for b in health["backends"]] == [("backends[0]", "closed")]
    # A key that may see every model gets the models too.
    full = orjson.loads((await call(guarded.url, "GET", "/api/autoroute/health", SINGLE))[2])
    assert {"mistral:7b", *ALLOWED} <= set(full["backends"][0]["models"])


async def test_request_ids_count_no_other_clients_requests(guarded: Proxy) -> None:
    """Every answer carries the proxy's id for its request, also a public probe's
    without a key. The ids must not count the requests in between: from two of its
    own ids a client (any key, or none) would read how many requests every other
    client made meanwhile, a figure the public probes keep from it (`health` shows no
    `in_flight` and no cache hits to a caller who may not see the fleet)."""

    async def probe_id() -> str:
        status, headers, _ = await call(guarded.url, "GET", "/api/autoroute/health")
        assert status == 200
        return headers["X-Request-Id"]

    first = await probe_id()
    others = [(await call(guarded.url, "GET", "/api/tags", USER))[1] for _ in range(5)]
    second = await probe_id()
    ids = [first, *(h["X-Request-Id"] for h in others), second]
    assert all(re.fullmatch("[0-9a-f]{22}", i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    # Five requests came between the probe's two: its ids must not say so.
    assert int(second, 16) - int(first, 16) != len(others) + 1, ids


async def test_public_probes_name_no_backend_url_and_no_error_text(
    servers: ServerThread, own_emulator: Emulator
) -> None:
    """A backend's URL and its last error (which names hosts, ports and what failed)
    are the operator's: with keys on, health and readiness give a caller without a key
    that may see every model each backend's state under its configured name, else its
    place in `backends`. Without keys they are shown as before."""
    dead = f"http://127.0.0.1:{free_port()}"
    backends = [Backend(url=own_emulator.url), Backend(url=dead, name="gpu-b")]
    health = Health(interval_seconds=3600, failure_threshold=1)
    keys = Auth(
        keys=(
            ApiKey(sha256=hash_key(SINGLE), name="one"),
            ApiKey(sha256=hash_key(USER), name="dev", models=ALLOWED),
        )
    )
    guarded = Proxy(servers, backends, auth=keys, health=health)
    open_ = Proxy(servers, backends, health=health)
    only_dead = Proxy(servers, [dead], auth=keys, health=health)

    async def probe(proxy: Proxy, path: str, key: str | None = None) -> tuple[int, bytes]:
        status, _, answer = await call(proxy.url, "GET", path, key)
        return status, answer

    async def failed(proxy: Proxy) -> bool:
        doc = orjson.loads((await probe(proxy, "/api/autoroute/health", SINGLE))[1])
        return all(b["error"] for b in doc["backends"] if b["url"] == dead)

    try:
        for proxy in (guarded, open_, only_dead):
            await wait_for(lambda proxy=proxy: failed(proxy), what="the dead backend's error")
        for key in (None, USER):
            status, answer = await probe(guarded, "/api/autoroute/health", key)
            assert status == 200
            assert own_emulator.url.encode() not in answer and dead.encode() not in answer
            doc = orjson.loads(answer)
            assert doc["status"] == "degraded"
            assert [sorted(b) for b in doc["backends"]] == [["circuit", "name"]] * 2
            assert [(b["name"], b["circuit"]) for b in doc["backends"]] == [
                ("backends[0]", "closed"),
                ("gpu-b", "open"),
            ]
            status, answer = await probe(guarded, "/api/autoroute/ready", key)
            assert (status, orjson.loads(answer)) == (
                200,
                {"status": "ready", "usable": ["backends[0]"]},
            )
            status, answer = await probe(only_dead, "/api/autoroute/ready", key)
            assert (status, orjson.loads(answer)) == (
                503,
                {"error": "no healthy backend: backends[0] (circuit open)"},
            )
        # A key that may see every model, or any caller without keys: everything.
        for proxy, key in ((guarded, SINGLE), (open_, None)):
            doc = orjson.loads((await probe(proxy, "/api/autoroute/health", key))[1])
            assert [(b["name"], b["url"]) for b in doc["backends"]] == [
                (own_emulator.url, own_emulator.url),
                ("gpu-b", dead),
            ]
            assert doc["backends"][0]["error"] is None and doc["backends"][1]["error"]
            status, answer = await probe(proxy, "/api/autoroute/ready", key)
            assert orjson.loads(answer)["usable"] == [own_emulator.url]
        status, answer = await probe(only_dead, "/api/autoroute/ready", SINGLE)
        assert status == 503 and dead in orjson.loads(answer)["error"]
    finally:
        for proxy in (guarded, open_, only_dead):
            proxy.stop()


@pytest.mark.parametrize("threshold", [1, 1000], ids=["circuit-open", "connect-refused"])
async def test_no_healthy_backend_names_urls_and_errors_only_to_who_sees_the_fleet(
    servers: ServerThread, threshold: int
) -> None:
    """Why no backend answered names hosts, ports and what failed: the operator's, as
    in the public probes. With keys on, a key that may see every model (admin, or one
    without a model list) reads it; any other gets each backend's public name only.
    Whether the backend's circuit is open (the proxy asks no backend) or not yet (it
    tries, and the connection is refused)."""
    port = free_port()
    dead = f"http://127.0.0.1:{port}"
    keys = Auth(
        keys=(
            ApiKey(sha256=hash_key(ADMIN), name="ops", role="admin"),
            ApiKey(sha256=hash_key(SINGLE), name="one"),
            ApiKey(sha256=hash_key(USER), name="dev", models=ALLOWED),
        )
    )
    health = Health(interval_seconds=3600, failure_threshold=threshold)
    guarded = Proxy(servers, [dead], auth=keys, health=health)
    chat_v1 = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}
    try:
        # `auto` with the circuit closed finds no model to choose: a reason naming no
        # backend, the same for every key.
        auto_names = threshold == 1
        for path, body, names in (
            ("/api/chat", CHAT, True),
            ("/api/chat", {**CHAT, "model": "auto"}, auto_names),
            ("/v1/chat/completions", chat_v1, True),
            ("/api/tags", None, True),
        ):
            method = "GET" if body is None else "POST"
            status, _, answer = await call(guarded.url, method, path, USER, body)
            assert status in (502, 503), (path, status)
            public = answer.decode()
            assert str(port) not in public and "refused" not in public.lower(), (path, public)
            for key in (ADMIN, SINGLE):
                full = await call(guarded.url, method, path, key, body)
                assert full[0] == status, (path, key)
                if names:
                    assert str(port) in full[2].decode(), (path, key)
                else:
                    assert full[2].decode() == public
    finally:
        guarded.stop()


@pytest.mark.parametrize("path", ["/api/autoroute/status", "/metrics"])
async def test_fleet_views_refuse_a_key_with_a_model_list(guarded: Proxy, path: str) -> None:
    """Status and metrics name every model and cannot be cut to one key's: a key with
    a model list is refused as the admin routes refuse a user key; a key without a
    list, admin or not, reads them."""
    hidden = await served_both(guarded)
    status, _, answer = await call(guarded.url, "GET", path, USER)
    assert status == 403
    assert orjson.loads(answer) == {"error": f"forbidden: {path} needs a key without a model list"}
    for key in (SINGLE, ADMIN):
        status, _, answer = await call(guarded.url, "GET", path, key)
        assert status == 200 and named(answer, hidden), key


async def test_a_key_with_a_model_list_transcribes_with_its_models_only(
    guarded: Proxy, own_emulator: Emulator
) -> None:
    """/v1/audio/transcriptions names its model in a multipart form, which the proxy
    reads (proxy/multipart_form.py): a key with a list runs its models there, no other."""
    path = "/v1/audio/transcriptions"

    def form(model: str) -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("model", model)
        data.add_field("file", b"RIFF", filename="a.wav", content_type="audio/wav")
        return data

    async with aiohttp.ClientSession() as http:
        async with http.post(
            guarded.url + path, data=form("mistral:7b"), headers=bearer(USER)
        ) as resp:
            assert resp.status == 403
            refusal = await resp.json()
        assert own_emulator.state.requests[path] == 0
        message = "model 'mistral:7b' is not allowed for this API key"
        assert refusal["error"]["message"] == message  # the OpenAI shape, as on /v1/
        async with http.post(
            guarded.url + path, data=form(ALLOWED[0]), headers=bearer(USER)
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["text"]
        assert own_emulator.state.requests[path] == 1


async def test_an_experiment_report_refuses_a_key_with_a_model_list(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    """A report covers every client's traffic, and its variants are often named after
    the models they pin (here one outside USER's list)."""
    variants = {
        "qwen2.5:7b": Variant(model="qwen2.5:7b"),
        "mistral:7b": Variant(model="mistral:7b"),
    }
    selector = Selector(
        artifact=str(tmp_path / "none.onnx"),
        profiles={"balanced": Profile()},
        experiments={"ab": Experiment(variants=variants)},
    )
    usage = file_usage(tmp_path, file_mode="always")
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(ADMIN), name="ops", role="admin"),
            ApiKey(sha256=hash_key(USER), name="dev", models=ALLOWED),
        )
    )
    prx = Proxy(servers, [own_emulator.url], auth=auth, usage=usage, selector=selector)
    path = "/api/autoroute/experiments/ab"
    try:
        body = {"model": "auto", "prompt": "hi", "stream": False}
        for i in range(8):
            status, _, _ = await call(prx.url, "POST", "/api/generate", ADMIN, body, f"user-{i}")
            assert status == 200

        async def reported() -> bool:
            report = orjson.loads((await call(prx.url, "GET", path, ADMIN))[2])
            return "mistral:7b" in report["variants"]

        await wait_for(reported, what="the variant pinning mistral:7b in the report")
        status, _, answer = await call(prx.url, "GET", path, USER)
        assert status == 403
        assert orjson.loads(answer) == {
            "error": f"forbidden: {path} needs a key without a model list"
        }
        # USER's requests whose variant pins mistral:7b (outside its list) are not in
        # the experiment: served from its list, and explain names no such variant.
        outside = 0
        for i in range(8):
            status, _, answer = await call(
                prx.url, "POST", "/api/autoroute/explain", USER, body, f"user-{i}"
            )
            assert status == 200
            explained = orjson.loads(answer)
            assert explained["model"] in ALLOWED
            assert "mistral:7b" not in orjson.dumps(explained).decode()
            outside += explained["experiment"] is None
        assert outside > 0  # some of the eight users draw the mistral:7b variant
    finally:
        await asyncio.to_thread(prx.stop)


async def test_a_variant_whose_profile_has_none_of_a_keys_models_leaves_it_out(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    """An experiment one team's operator sets up must not break another team's
    requests: a variant routing with a profile that allows none of the key's models
    leaves the request out of the experiment, as a variant pinning a model outside the
    list does, and `auto` decides it with the profile it asked for."""
    selector = Selector(
        artifact=str(tmp_path / "none.onnx"),
        profiles={"balanced": Profile(), "mistral-only": Profile(allow=("mistral:7b",))},
        experiments={
            "ab": Experiment(
                variants={
                    "control": Variant(profile="balanced"),
                    "m": Variant(profile="mistral-only"),
                }
            )
        },
    )
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(ADMIN), name="ops", role="admin"),
            ApiKey(sha256=hash_key(USER), name="dev", models=ALLOWED),
        )
    )
    prx = Proxy(servers, [own_emulator.url], auth=auth, selector=selector)
    try:
        body = {"model": "auto", "prompt": "hi", "stream": False}
        drawn = {"control": 0, "m": 0}
        for i in range(12):
            user = f"user-{i}"
            status, _, answer = await call(
                prx.url, "POST", "/api/autoroute/explain", ADMIN, body, user
            )
            variant = orjson.loads(answer)["variant"]
            drawn[variant] += 1
            status, headers, _ = await call(prx.url, "POST", "/api/generate", USER, body, user)
            assert status == 200, (variant, answer)
            assert headers["X-Autoroute-Model"] in ALLOWED
            status, _, answer = await call(
                prx.url, "POST", "/api/autoroute/explain", USER, body, user
            )
            explained = orjson.loads(answer)
            assert status == 200 and explained["model"] in ALLOWED
            if variant == "m":
                assert explained["experiment"] is None and explained["reason"] != "experiment"
            else:
                assert (explained["experiment"], explained["variant"]) == ("ab", "control")
        assert drawn["m"] > 0 and drawn["control"] > 0
    finally:
        await asyncio.to_thread(prx.stop)


async def test_metrics_opened_to_anyone_are_open_to_a_key_with_a_model_list(
    servers: ServerThread, own_emulator: Emulator
) -> None:
    """`auth.metrics_open` serves /metrics without a key: the same to a key with a list."""
    auth = Auth(
        keys=(ApiKey(sha256=hash_key(USER), name="dev", models=ALLOWED),), metrics_open=True
    )
    prx = Proxy(servers, [own_emulator.url], auth=auth)
    try:
        assert (await call(prx.url, "GET", "/metrics"))[0] == 200
        assert (await call(prx.url, "GET", "/metrics", USER))[0] == 200
        assert (await call(prx.url, "GET", "/api/autoroute/status", USER))[0] == 403
    finally:
        await asyncio.to_thread(prx.stop)


# Requests declaring Ollama's built-in web search, which it runs through ollama.com on
# the server's own account (middleware/anthropic.go's hasWebSearchTool, openai's
# HasWebSearchTool), whatever model answers.
_WEB_SEARCHES = [
    (
        "/v1/messages",
        {
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "news?"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        },
    ),
    (
        "/v1/messages",
        {
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "news?"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}, {"Type": "web_search_x"}],
        },
    ),
    ("/v1/responses", {"input": "news?", "tools": [{"type": "web_search"}]}),
    ("/v1/responses", {"input": "news?", "tools": [{"type": "function"}, {"TYPE": "web_search"}]}),
]


@pytest.mark.parametrize(("path", "body"), _WEB_SEARCHES)
@pytest.mark.parametrize("model", ["llama3.1:8b", "auto"])
async def test_web_search_on_the_servers_account_needs_an_admin_key(
    guarded: Proxy, own_emulator: Emulator, path: str, body: dict[str, Any], model: str
) -> None:
    """As `/api/experimental/web_search`: a search Ollama runs through ollama.com is
    the server's account's, which only an admin key may use; the same request without
    the tool is any key's."""
    request = {**body, "model": model}
    for key in (USER, SINGLE):
        before = own_emulator.state.completed
        status, _, answer = await call(guarded.url, "POST", path, key, request)
        assert status == 403, answer
        refusal = orjson.loads(answer)
        if path == "/v1/messages":
            assert refusal["error"] == {"type": "permission_error", "message": WEB_SEARCH_FORBIDDEN}
        else:
            assert refusal["error"]["message"] == WEB_SEARCH_FORBIDDEN
        assert own_emulator.state.completed == before
    assert (await call(guarded.url, "POST", path, ADMIN, request))[0] != 403
    plain = {k: v for k, v in request.items() if k != "tools"}
    assert (await call(guarded.url, "POST", path, USER, plain))[0] == 200

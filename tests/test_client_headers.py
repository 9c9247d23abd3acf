"""Client header values the proxy keeps (request ids, user agent, user, credentials),
sent as raw bytes no client library would send: they never fail a backend, never stop
the access log, never cost a usage event, and a client's request id never merges two
requests' events."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import header_values
from proxy.app import APP_KEY
from proxy.config_services import Cache
from proxy.config_serving import Health, Listen
from proxy.logs import AccessLog
from proxy.outcome import Decided, Outcome, Served
from proxy.usage import event as ev
from proxy.usage import export
from tests.support import Emulator, Proxy, ServerThread, file_usage, raw_request
from tests.usage_services import Database, postgres_ready, read_bytes, wait_for

GENERATE = orjson.dumps({"model": "llama3.1:8b", "prompt": "hi", "stream": False})
JSON_TYPE = (b"Content-Type", b"application/json")
# Ids a client may send that the proxy does not keep: not Latin-1, not UTF-8, control
# characters (the parser refuses all but tab itself), a space, too long.
BAD_IDS = ["中".encode(), b"\xff\xfe", b"a\tb", b"two words", b"x" * 129]


@pytest.fixture
def file_proxy(servers: ServerThread, own_emulator: Emulator, tmp_path: Path) -> Iterator[Proxy]:
    """A proxy whose usage events go to a file in the test's directory."""
    prx = Proxy(servers, [own_emulator.url], usage=file_usage(tmp_path))
    yield prx
    prx.stop()


async def events_of(prx: Proxy, count: int) -> list[dict[str, object]]:
    """The usage file's events once it holds `count` of them."""
    path = prx.config.usage.file_path

    async def written() -> bool:
        return len((await read_bytes(path)).splitlines()) >= count

    await wait_for(written, what=f"{count} usage events")
    return [orjson.loads(line) for line in (await read_bytes(path)).splitlines()]


@pytest.mark.parametrize("sent", BAD_IDS, ids=["cjk", "not-utf8", "control", "space", "long"])
async def test_an_invalid_request_id_is_replaced_and_fails_no_backend(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path, sent: bytes
) -> None:
    # A circuit opens after two failures: enough requests here to open it many times.
    health = Health(failure_threshold=2)
    prx = Proxy(servers, [own_emulator.url], health=health, usage=file_usage(tmp_path))
    try:
        seen = set()
        for path, body in [("/api/version", b""), ("/api/generate", GENERATE)] * 3:
            method = "POST" if body else "GET"
            headers = [(b"X-Request-Id", sent), JSON_TYPE]
            status, fields, _ = await raw_request(prx.port, method, path, headers, body)
            assert status == 200
            seen.add(fields["x-request-id"])
        # Each answer carries an id of the proxy's own: a new one each time.
        assert len(seen) == 6 and sent not in seen
        assert all(i.isascii() and len(i) == 22 for i in seen)
        status, _, body = await raw_request(prx.port, "GET", "/api/autoroute/health", [])
        assert [b["circuit"] for b in orjson.loads(body)["backends"]] == ["closed"]
        events = await events_of(prx, 3)
        assert all(e["client_request_id"] is None for e in events)
    finally:
        prx.stop()


async def test_a_sane_client_request_id_is_echoed(file_proxy: Proxy) -> None:
    sent = b"trace-7f3a_9:ok/1.0"
    status, fields, _ = await raw_request(
        file_proxy.port, "POST", "/api/generate", [(b"X-Request-Id", sent), JSON_TYPE], GENERATE
    )
    assert status == 200 and fields["x-request-id"] == sent
    (event,) = await events_of(file_proxy, 1)
    assert event["client_request_id"] == sent.decode()
    assert event["request_id"] != sent.decode()

    # Feedback by the id the client saw reaches the request: in the in-memory stats
    # and in an export of the files.
    async with aiohttp.ClientSession(file_proxy.url) as http:
        feedback = {"request_id": sent.decode(), "rating": 0.5}
        async with http.post("/api/autoroute/feedback", json=feedback) as resp:
            assert resp.status == 202

        async def rated() -> bool:
            async with http.get("/api/autoroute/stats") as resp:
                stats = orjson.loads(await resp.read())
            assert stats["source"] == "memory"
            return bool(stats["models"][0]["ratings"] == {"count": 1, "mean": 0.5})

        await wait_for(rated, what="the rating in stats")
    feedback_file = Path(file_proxy.config.usage.file_path).with_name("events.feedback.jsonl")

    async def feedback_written() -> bool:
        return bool(await read_bytes(feedback_file))

    await wait_for(feedback_written, what="the feedback line")
    (exported,) = export.from_files(
        file_proxy.config.usage.file_path, datetime.min.replace(tzinfo=UTC)
    )
    assert exported.request_id == event["request_id"] and exported.rating == 0.5


HOSTILE = [
    (b"User-Agent", b"agent \xff\xfe/1.0"),
    (b"X-Autoroute-User", b"user\xc3\x28\tx"),
    (b"Authorization", b"Bearer \xff"),  # no keys configured: hashed for the key id
    (b"X-Request-Id", b"\xff"),
]


async def test_every_served_request_leaves_one_event_whatever_its_headers(
    file_proxy: Proxy,
) -> None:
    for header in HOSTILE:
        status, _, _ = await raw_request(
            file_proxy.port, "POST", "/api/generate", [header, JSON_TYPE], GENERATE
        )
        assert status == 200
    status, _, _ = await raw_request(
        file_proxy.port, "POST", "/api/generate", [*HOSTILE, JSON_TYPE], GENERATE
    )
    assert status == 200
    events = await events_of(file_proxy, len(HOSTILE) + 1)
    assert len(events) == len(HOSTILE) + 1
    assert file_proxy.app[APP_KEY].usage.invalid == 0
    last = events[-1]["client"]
    assert isinstance(last, dict)
    # What the client sent, readable: bytes that are not UTF-8 as U+FFFD, no controls.
    assert last["user_agent"] == "agent \ufffd\ufffd/1.0"
    assert last["user"] == "user\ufffd( x"
    assert isinstance(last["api_key_id"], str) and len(last["api_key_id"]) == 16


async def test_the_access_log_keeps_writing_after_hostile_headers(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    server_log = logging.getLogger("autoroute.server")
    level = server_log.level
    server_log.setLevel(logging.INFO)  # the access log is on when INFO is
    try:
        prx = Proxy(servers, [own_emulator.url], usage=file_usage(tmp_path))
    finally:
        server_log.setLevel(level)
    access = prx.app[APP_KEY].access
    stream = access.stream = io.StringIO()
    try:
        assert access.enabled
        for header in HOSTILE:
            status, _, _ = await raw_request(prx.port, "GET", "/api/version", [header])
            assert status == 200
        async with (
            aiohttp.ClientSession() as http,
            http.get(prx.url + "/api/version", headers={"X-Request-Id": "after"}) as resp,
        ):
            assert resp.status == 200

        async def logged() -> bool:
            return '"client_request_id":"after"' in stream.getvalue()

        await wait_for(logged, what="the access log line of the last request")
        lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
        assert len(lines) == len(HOSTILE) + 1
        assert all(line["path"] == "/api/version" and line["status"] == 200 for line in lines)
        assert access.dropped == 0
    finally:
        prx.stop()


class Broken(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("no space left on device")


def test_a_failed_access_log_write_is_logged_and_the_buffer_stays_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    access = AccessLog(enabled=True, stream=Broken(), max_pending=10)
    for n in range(25):
        access.record({"request_id": f"r{n}", "path": "/x\udcff"})
    assert len(access._pending) == 10 and access.dropped == 15
    with caplog.at_level(logging.WARNING, "autoroute.logs"):
        access.flush()  # must not raise
    assert "could not write 10 lines" in caplog.text
    assert access.dropped == 25 and not access._pending
    # The stream works again: writing resumes, the undecodable byte as U+FFFD.
    access.stream = io.StringIO()
    access.record({"request_id": "ok", "path": "/x\udcff"})
    access.record({"request_id": "big", "n": 2**70})  # beyond what JSON numbers carry here
    access.flush()
    first, second = [orjson.loads(x) for x in access.stream.getvalue().splitlines()]
    assert first["request_id"] == "ok" and first["path"] == "/x\ufffd"
    assert "'big'" in second["unserialisable"] and str(2**70) in second["unserialisable"]


@pytest.mark.postgres
async def test_five_requests_with_one_client_id_are_five_rows(
    servers: ServerThread, own_emulator: Emulator, database: Database, tmp_path: Path
) -> None:
    usage = file_usage(tmp_path, postgres_dsn=database.dsn)
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    try:
        prx.thread.call(lambda: postgres_ready(prx))
        async with aiohttp.ClientSession(prx.url) as http:
            for _ in range(5):
                async with http.post(
                    "/api/generate", data=GENERATE, headers={"X-Request-Id": "same-id"}
                ) as resp:
                    assert resp.status == 200
                    assert resp.headers["X-Request-Id"] == "same-id"  # clients rely on it

            async def stored() -> bool:
                return len(await database.fetch("SELECT 1 FROM usage_events")) >= 5

            await wait_for(stored, what="five rows")
            rows = await database.fetch("SELECT request_id, client_request_id FROM usage_events")
            assert len(rows) == 5 and len({r["request_id"] for r in rows}) == 5
            assert {r["client_request_id"] for r in rows} == {"same-id"}

            # Feedback by the id the client saw: it rates the requests that carried it.
            async with http.post(
                "/api/autoroute/feedback", json={"request_id": "same-id", "rating": 1}
            ) as resp:
                assert resp.status == 202

            async def rated() -> bool:
                async with http.get("/api/autoroute/stats") as resp:
                    stats = orjson.loads(await resp.read())
                (entry,) = stats["models"]
                return bool(entry["ratings"] == {"count": 5, "mean": 1.0})

            await wait_for(rated, what="the rating in stats")
    finally:
        prx.stop()


def test_an_event_takes_any_string_the_request_left() -> None:
    """Every string of client or backend origin in an event is valid text: the event
    always serialises (a dropped event is a request that escaped accounting)."""
    outcome = Outcome(
        Decided("r1", model="m"), Served("r1", status=502, error="backend said \udcff")
    )
    captured = ev.Captured(
        outcome, "POST", "/api/chat", 0.2, "ua\udcfe", "user\udcff", "Bearer \udcff"
    )
    parsed = orjson.loads(ev.complete(captured, log_prompts=False).line())
    assert parsed["outcome"]["error"] == "backend said \ufffd"
    assert parsed["client"]["user_agent"] == "ua\ufffd" and parsed["client"]["user"] == "user\ufffd"


async def test_a_failing_completion_hook_costs_no_other_hook_its_record(
    file_proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    """An observer that raises is logged; the hooks after it (the usage event among
    them) still see the request, and the client's answer is untouched."""
    server = file_proxy.app[APP_KEY].server

    def broken(request: object, outcome: Outcome) -> None:
        raise RuntimeError("observer bug")

    server.hooks = (broken, *server.hooks)
    model = "llama3.1:8b"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            file_proxy.url + "/api/generate",
            json={"model": model, "prompt": "hi", "stream": False},
        ) as resp,
    ):
        assert resp.status == 200
        await resp.read()
    (event,) = await events_of(file_proxy, 1)
    assert event["served_model"] == model
    assert "observer bug" in caplog.text


async def cors(url: str, method: str, path: str, origin: str) -> tuple[int, dict[str, str], bytes]:
    """A browser's request from `origin`: status, headers (several values joined by
    ", "), body."""
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, headers=headers, data=b"{}") as resp,
    ):
        joined = {name: ", ".join(resp.headers.getall(name)) for name in resp.headers}
        return resp.status, joined, await resp.read()


async def test_browsers_get_ollamas_cross_origin_answers(
    own_proxy: Proxy, own_emulator: Emulator
) -> None:
    """Ollama's CORS policy on every path: an origin it refuses is 403 before any
    backend or endpoint, with no body or type (gin-contrib/cors's AbortWithStatus), as
    the emulator answers it; a preflight from one it allows is 204 with what it
    permits, and an answer the proxy makes itself names the allowed origin."""
    # The proxy polls /api/tags by itself; these two only a client's request reaches.
    relayed = ("/api/chat", "/no/such/path")
    seen = [own_emulator.state.requests[path] for path in relayed]
    for path in ("/api/chat", "/api/tags", "/api/autoroute/feedback", "/no/such/path"):
        for url in (own_proxy.url, own_emulator.url):
            status, headers, body = await cors(url, "POST", path, "http://evil.example")
            assert (status, body, headers.get("Content-Length")) == (403, b"", "0"), url
            assert "Content-Type" not in headers and "Access-Control-Allow-Origin" not in headers
        status, headers, _ = await cors(own_proxy.url, "OPTIONS", path, "http://localhost:3000")
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert "POST" in headers["Access-Control-Allow-Methods"].split(",")
        assert "Content-Type" in headers["Access-Control-Allow-Headers"].split(",")
        assert headers["Vary"].startswith("Origin")
    # Each asked of the emulator directly once, never through the proxy.
    assert [own_emulator.state.requests[path] for path in relayed] == [n + 1 for n in seen]
    # Bytes that are not UTF-8, even where a pattern would match: refused, readably.
    for port in (own_proxy.port, own_emulator.port):
        status, _, body = await raw_request(
            port, "GET", "/api/tags", [(b"Origin", b"http://localhost:\x80")]
        )
        assert (status, body) == (403, b""), port
    for origin in ("vscode-webview://abc", "http://127.0.0.1:8080", "tauri://localhost"):
        status, headers, _ = await cors(own_proxy.url, "GET", "/api/tags", origin)
        assert status == 200 and headers["Access-Control-Allow-Origin"] == origin
        assert headers["Vary"] == "Origin"
    # The proxy's own page is no cross-origin request.
    own = f"http://127.0.0.1:{own_proxy.port}"
    status, headers, _ = await cors(own_proxy.url, "GET", "/api/autoroute/health", own)
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    # A relayed answer has the backend's own headers, once.
    status, headers, _ = await cors(own_proxy.url, "GET", "/api/version", "http://localhost")
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "http://localhost"
    assert headers["Vary"] == "Origin"


async def test_a_page_of_the_proxys_own_site_is_no_cross_origin_request_to_the_backend(
    own_proxy: Proxy, own_emulator: Emulator
) -> None:
    """A page served from the site the client reaches the proxy by (its `Host`, as a
    web server in front serves a web UI and the API on one name) sends its own
    `Origin`: Ollama takes such a page as no cross-origin request, whatever its name,
    and so does the proxy. The backend, which sees its own address as the host, must
    not judge that origin against its own list: a name beyond Ollama's defaults would
    be its 403."""
    site = "ui.localhost:8080"  # a local name, which Ollama's host check lets in
    chat = {"model": "qwen2.5:7b", "prompt": "hi", "stream": False}
    for url in (own_emulator.url, own_proxy.url):
        headers = {"Host": site, "Origin": f"http://{site}"}
        async with aiohttp.ClientSession() as session:
            for method, path, body in (
                ("GET", "/api/version", None),
                ("POST", "/api/generate", chat),
            ):
                async with session.request(method, url + path, json=body, headers=headers) as resp:
                    assert resp.status == 200, (url, path, resp.status)
                    assert "Access-Control-Allow-Origin" not in resp.headers, (url, path)


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        (("chrome-extension://*",), "chrome-extension://abcdef", "chrome-extension://abcdef"),
        (("https://ui.example",), "https://ui.example", "https://ui.example"),
        (("https://ui.example",), "https://other.example", None),
        (("*",), "https://anyone.example", "*"),
    ],
)
async def test_listen_origins_allow_more_as_ollama_origins_does(
    servers: ServerThread,
    own_emulator: Emulator,
    origins: tuple[str, ...],
    origin: str,
    allowed: str | None,
) -> None:
    prx = Proxy(servers, [own_emulator.url], listen=Listen(origins=origins))
    try:
        status, headers, _ = await cors(prx.url, "GET", "/api/tags", origin)
    finally:
        prx.stop()
    assert status == (200 if allowed else 403)
    assert headers.get("Access-Control-Allow-Origin") == allowed


async def browser_post(
    url: str, path: str, body: object, origin: str = "http://localhost:3000"
) -> tuple[int, list[str], dict[str, str]]:
    """A page's POST from `origin`: status, its Access-Control-Expose-Headers fields
    (each as sent), the other headers."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, json=body, headers={"Origin": origin}) as resp,
    ):
        await resp.read()
        return resp.status, resp.headers.getall(EXPOSE, []), dict(resp.headers)


EXPOSE = "Access-Control-Expose-Headers"
MODEL = "qwen2.5:7b"


async def test_pages_of_allowed_origins_may_read_and_send_the_proxys_headers(
    servers: ServerThread, own_emulator: Emulator
) -> None:
    """Every answer to an allowed origin's page, relayed, made by the proxy, an error or
    a cache replay, exposes the proxy's headers once (a browser hides them otherwise),
    and a preflight allows the headers the proxy reads; the emulator, as Ollama, does
    neither."""
    prx = Proxy(servers, [own_emulator.url], cache=Cache(enabled=True))
    chat = {"model": "auto", "stream": False, "options": {"seed": 1}}
    chat["messages"] = [{"role": "user", "content": "hi"}]
    try:
        answers = {
            "relayed": await browser_post(prx.url, "/api/chat", {**chat, "model": MODEL}),
            "auto": await browser_post(prx.url, "/api/chat", chat),
            "replayed": await browser_post(prx.url, "/api/chat", chat),
            "proxy's error": await browser_post(prx.url, "/api/chat", {**chat, "model": "auto:x"}),
            "backend's error": await browser_post(prx.url, "/api/chat", {**chat, "model": "x:1"}),
            "v1 stream": await browser_post(
                prx.url, "/v1/chat/completions", {**chat, "stream": True}
            ),
            "all origins": await browser_post(prx.url, "/api/chat", chat, origin="http://0.0.0.0"),
        }
        assert answers["replayed"][2]["X-Autoroute-Cache"] == "hit"
        _, preflight, _ = await cors(prx.url, "OPTIONS", "/api/chat", "http://localhost:3000")
        direct = await browser_post(own_emulator.url, "/api/chat", {**chat, "model": MODEL})
        _, direct_preflight, _ = await cors(
            own_emulator.url, "OPTIONS", "/api/chat", "http://localhost:3000"
        )
    finally:
        prx.stop()
    for what, (_, exposed, fields) in answers.items():
        assert len(exposed) == 1, (what, exposed)
        names = exposed[0].split(",")
        for name in ("X-Request-Id", *(n for n in fields if n.startswith("X-Autoroute-"))):
            assert name in names, (what, name, exposed)
        assert fields["Access-Control-Allow-Origin"], what
    assert answers["auto"][2]["X-Autoroute-Model"] != "auto"
    allowed = preflight["Access-Control-Allow-Headers"].split(",")
    assert {"X-Autoroute-User", "X-Request-Id", "Content-Type"} <= set(allowed)
    assert direct[1] == [] and "X-Autoroute-User" not in direct_preflight[
        "Access-Control-Allow-Headers"
    ].split(",")


@given(
    st.text(
        st.characters(codec=None, min_codepoint=0, max_codepoint=0x2100)
        | st.sampled_from(["\udc80", "\udcff", "\x7f", "\x85", "\t"])
    ),
    st.sampled_from([3, header_values.MAX_TEXT]),
)
def test_a_kept_text_is_the_value_with_its_controls_as_spaces(value: str, limit: int) -> None:
    """`header_values.text`, whatever path it takes: the value cut to `limit`, its
    undecodable bytes as U+FFFD and its C0, DEL and C1 controls as spaces."""
    cut = header_values.valid(value[:limit])
    expected = "".join(" " if c < " " or "\x7f" <= c <= "\x9f" else c for c in cut)
    assert header_values.text(value, limit) == expected

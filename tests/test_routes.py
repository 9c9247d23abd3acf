"""The route table is the one place a path's treatment is decided: dispatch reaches
every route it names, and access control, metric labels and usage events classify
each path as its table line says."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy import go_mux
from proxy.auth import STREAM_SLOT, Access, hash_key
from proxy.config_services import ApiKey, Auth
from proxy.routes import (
    ADMIN,
    FULL,
    METRICS_PATH,
    OWN_PREFIX,
    PUBLIC,
    ROUTES,
    SCRAPE,
    Route,
    Router,
    find,
    label_of,
    runs_a_model,
)
from tests.support import Emulator, Proxy, raw_request

ADMIN_KEY, USER_KEY, LISTED_KEY = "k-admin", "k-user", "k-listed"
OWN_ROUTES = [r for r in ROUTES if r.path.startswith(OWN_PREFIX) or r.path == METRICS_PATH]


def concrete(route: Route) -> str:
    """A request path the route takes: each placeholder filled in."""
    head, _, rest = route.path.partition("{")
    if not rest:
        return head
    return head + ("sha256:abc/x" if rest.endswith(":path}") else "x")


def method_of(route: Route) -> str:
    return min(route.methods) if route.methods else "POST"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
def test_every_route_is_found_labelled_and_counted_as_its_line_says(route: Route) -> None:
    path = concrete(route)
    assert find(path) is route
    assert label_of(path) == route.label and ":path" not in route.label
    assert runs_a_model(find(path), method_of(route)) is route.inference


def test_each_path_has_one_line() -> None:
    assert len({r.path for r in ROUTES}) == len(ROUTES)


def test_a_handler_that_does_not_exist_fails_building_the_router() -> None:
    class Owner:
        async def any(self, request: web.Request) -> web.StreamResponse:
            return web.Response()

    owners = {"handlers": Owner(), "auto_routes": Owner(), "usage_routes": Owner()}
    with pytest.raises(LookupError, match=r"handlers\.passthrough"):
        Router(owners)


@pytest.mark.parametrize(
    "path",
    ["/api/nothing", "/api/autoroute/experiments/a/b", "/api/blobs", "/metrics/", "/api/chat/"],
)
def test_a_path_outside_the_table_is_other_and_runs_no_model(path: str) -> None:
    assert find(path) is None
    assert label_of(path) == "other" and not runs_a_model(find(path), "POST")


@pytest.mark.parametrize("metrics_open", [False, True])
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
def test_access_control_decides_by_the_table(route: Route, metrics_open: bool) -> None:
    access = Access(
        Auth(
            keys=(
                ApiKey(sha256=hash_key(ADMIN_KEY), role="admin"),
                ApiKey(sha256=hash_key(USER_KEY), max_streams=1),
                ApiKey(sha256=hash_key(LISTED_KEY), models=("a:1",)),
            ),
            metrics_open=metrics_open,
        )
    )
    path, method = concrete(route), method_of(route)
    _, refused, _ = access.admit(make_mocked_request(method, path), 0.0)
    keyless = route.access == PUBLIC or (route.access == SCRAPE and metrics_open)
    assert (refused is None) is keyless
    if refused is not None:
        assert refused.status == 401

    request = make_mocked_request(method, path, headers={"Authorization": f"Bearer {USER_KEY}"})
    key, refused, reason = access.admit(request, 0.0)
    if route.access == ADMIN:
        assert refused is not None and refused.status == 403 and reason == "forbidden"
    else:
        assert refused is None
        # An inference route takes the key's one stream slot; nothing else does.
        assert bool(request.get(STREAM_SLOT)) is route.inference
        access.release(request, key)

    # A key with a model list: not where every model is named (unless open to anyone).
    request = make_mocked_request(method, path, headers={"Authorization": f"Bearer {LISTED_KEY}"})
    key, refused, reason = access.admit(request, 0.0)
    if route.access in (ADMIN, FULL) or (route.access == SCRAPE and not metrics_open):
        assert refused is not None and refused.status == 403 and reason == "forbidden"
    else:
        assert refused is None
        access.release(request, key)

    request = make_mocked_request(method, path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    _, refused, _ = access.admit(request, 0.0)
    assert refused is None


async def fetch(url: str, method: str, path: str, body: object = None) -> tuple[int, bytes]:
    data = None if body is None else orjson.dumps(body)
    async with aiohttp.ClientSession() as http, http.request(method, url + path, data=data) as r:
        return r.status, await r.read()


@pytest.mark.parametrize("route", OWN_ROUTES, ids=lambda r: r.path)
async def test_every_own_route_is_reachable_and_only_by_its_methods(
    own_proxy: Proxy, own_emulator: Emulator, route: Route
) -> None:
    path = concrete(route)
    status, body = await fetch(own_proxy.url, method_of(route), path, {})
    assert b"no such endpoint" not in body, (status, body)
    assert own_emulator.state.requests[path] == 0  # answered by the proxy itself
    assert "DELETE" not in route.methods
    async with (
        aiohttp.ClientSession() as http,
        http.request("DELETE", own_proxy.url + path) as resp,
    ):
        status, body, allow = resp.status, await resp.read(), resp.headers.get("Allow")
    if path.startswith(OWN_PREFIX):
        # As Ollama answers a method its route does not take, in its error shape.
        assert status == 405 and b"method not allowed" in orjson.loads(body)["error"].encode()
        assert allow == ", ".join(sorted(route.methods))
        assert own_emulator.state.requests[path] == 0
    else:  # a method the route does not take passes through, as an unknown path does
        assert own_emulator.state.requests[path] == 1


async def test_paths_the_table_does_not_take_pass_through(
    own_proxy: Proxy, own_emulator: Emulator
) -> None:
    # An unknown path, and a model-routed path with a method its route does not take.
    for method, path in (("GET", "/api/not-in-ollama"), ("GET", "/api/chat")):
        await fetch(own_proxy.url, method, path)
        assert own_emulator.state.requests[path] == 1
    status, body = await fetch(own_proxy.url, "GET", OWN_PREFIX + "nothing")
    assert status == 404 and b"no such endpoint" in body
    assert own_emulator.state.requests[OWN_PREFIX + "nothing"] == 0


# Ollama's answer to a method its router serves nowhere on a path (server/routes.go sets
# gin's HandleMethodNotAllowed): gin 1.10's 405 with `Allow`, the methods it serves
# there in the order of its method trees (HEAD, GET, POST, DELETE: each one's first
# registration), else gin's 404.
GIN_ANSWERS = [
    ("/api/chat", "POST"),
    ("/api/generate", "POST"),
    ("/", "HEAD, GET"),
    ("/api/version", "HEAD, GET"),
    ("/api/tags", "HEAD, GET"),
    ("/api/ps", "GET"),
    # Not `sha256:abc`: aiohttp's parsers refuse a CONNECT target that is no authority
    # (a port that is not a number) with 400 before any handler runs.
    ("/api/blobs/sha256-abc", "HEAD, POST"),
    ("/api/delete", "DELETE"),
    ("/api/user/keys/k", "DELETE"),
    ("/v1/models/x", "GET"),
    ("/api/not-in-ollama", None),
    ("/api/chat/", None),  # no trailing-slash redirect for CONNECT
]


@pytest.mark.parametrize(("path", "allow"), GIN_ANSWERS)
async def test_connect_is_answered_as_ollama_answers_it_and_reaches_no_backend(
    own_proxy: Proxy, own_emulator: Emulator, path: str, allow: str | None
) -> None:
    """Go's net/http reads `CONNECT /api/chat` as a request for the path (aiohttp reads
    every CONNECT target as an authority), and gin serves CONNECT on no route: the
    proxy answers it from Ollama's table, as the emulator does, without asking a
    backend to open a tunnel, and closes the connection (no CONNECT body is read)."""
    asked = {path: 0}
    for port in (own_emulator.port, own_proxy.port):
        asked = dict(own_emulator.state.requests)
        status, headers, body = await raw_request(port, "CONNECT", path, [])
        if allow is None:
            assert (status, body) == (404, b"404 page not found"), port
            assert "allow" not in headers
        else:
            assert (status, body) == (405, b"405 method not allowed"), port
            assert headers["allow"] == allow.encode(), port
        assert headers["content-type"] == b"text/plain"
    if path not in ("/api/tags", "/api/ps"):  # which the proxy's health checks poll
        assert own_emulator.state.requests == asked  # the proxy asked the emulator nothing


async def test_a_method_ollama_does_not_serve_is_its_405_with_allow_through_the_proxy(
    own_proxy: Proxy, own_emulator: Emulator
) -> None:
    """Any other method passes through, and gin's 405 names the methods in `Allow`; a
    preflight from an allowed origin is answered by the proxy, with the `Allow` gin
    sets before its CORS middleware answers it."""
    for method, path, allow in (
        ("PUT", "/api/generate", "POST"),
        ("DELETE", "/api/tags", "HEAD, GET"),
    ):
        status, headers, body = await raw_request(own_proxy.port, method, path, [])
        assert (status, body, headers["allow"]) == (405, b"405 method not allowed", allow.encode())
    # The public routes: gin's 405 from the proxy, no body of a client without a key
    # sent on to a backend; an OPTIONS too (a preflight, from another site, is answered
    # before any route, and a page of the proxy's own site sends none).
    for method, path in (
        ("POST", "/"),
        ("PUT", "/api/version"),
        ("DELETE", "/"),
        ("OPTIONS", "/"),
        ("OPTIONS", "/api/version"),
    ):
        asked = dict(own_emulator.state.requests)
        status, headers, body = await raw_request(
            own_proxy.port, method, path, [(b"Content-Type", b"application/json")], b"{}" * 9
        )
        assert (status, body, headers["allow"]) == (405, b"405 method not allowed", b"HEAD, GET")
        assert own_emulator.state.requests[path] == asked.get(path, 0), (method, path)
    preflight = [(b"Origin", b"http://localhost:3000"), (b"Access-Control-Request-Method", b"POST")]
    for port in (own_emulator.port, own_proxy.port):
        status, headers, _ = await raw_request(port, "OPTIONS", "/api/chat", preflight)
        assert (status, headers.get("allow")) == (204, b"POST"), port
        status, headers, _ = await raw_request(port, "OPTIONS", "/api/not-in-ollama", preflight)
        assert (status, headers.get("allow")) == (204, None), port


# Targets with no path, which aiohttp's router finds no route for (its own 404): Go's
# mux redirects the absolute form and a CONNECT's authority to `/` (with the query, a
# 307 since Go 1.26), and Go's server answers `*` before the mux, `OPTIONS *` with 200
# and any other method with 400, both empty.
NO_PATH = [
    ("GET", "http://127.0.0.1", 307, "/", b'<a href="/">Temporary Redirect</a>.\n\n'),
    ("POST", "http://127.0.0.1?x=1", 307, "/?x=1", b""),
    ("OPTIONS", "*", 200, None, b""),
    ("CONNECT", "*", 400, None, b""),
    # An authority (CONNECT's own form) has the empty path, which the mux's pattern `/`
    # does not match but matches with a slash added: its redirect to `//` (cleanPath of
    # the empty path, and the slash), which http.Redirect cleans to `/`.
    ("CONNECT", "127.0.0.1:11434", 307, "/", b""),
    ("CONNECT", "example.com:443", 307, "/", b""),
]


@pytest.mark.parametrize(("method", "target", "status", "location", "body"), NO_PATH)
async def test_a_target_without_a_path_gets_gos_answer_and_reaches_no_backend(
    own_proxy: Proxy,
    own_emulator: Emulator,
    method: str,
    target: str,
    status: int,
    location: str | None,
    body: bytes,
) -> None:
    for port in (own_emulator.port, own_proxy.port):
        asked = own_emulator.state.requests["/"]
        answer = await raw_request(port, method, target, [])
        assert answer[0] == status, (port, answer)
        assert answer[1].get("location") == (location.encode() if location else None), port
        assert answer[2] == body and answer[1]["content-length"] == b"%d" % len(body), port
        if not body:
            assert "content-type" not in answer[1], port
        if port == own_proxy.port:
            assert own_emulator.state.requests["/"] == asked  # no backend asked


# Go's ServeMux (src/net/http/server.go, findHandler) in front of Ollama's gin engine:
# (method, request target, the Location of its 307, None where it lets the request
# through to gin).
GO_MUX = [
    ("POST", "/api//pull", "/api/pull"),
    ("POST", "//api/pull", "/api/pull"),
    ("DELETE", "/api/x/../delete", "/api/delete"),
    ("PUT", "/api/./pull/", "/api/pull/"),  # the trailing slash kept
    ("POST", "/api/pull/.", "/api/pull"),
    ("POST", "/..", "/"),  # `..` at the root stays there
    ("POST", "/api/..", "/"),
    ("GET", "/api/./tags?a=1&b=/../", "/api/tags?a=1&b=/../"),  # the query as sent
    ("POST", "/api//pull?", "/api/pull"),  # an empty query: no `?`
    ("POST", "/a//b?x?", "/a/b?x?"),
    # The cleaned path is the escaped one, escaped again: `%` becomes `%25`.
    ("POST", "/api//x%2Fy", "/api/x%252Fy"),
    # A path that is no valid escaping (`{`) is the decoded path escaped: its `%2e` is
    # a dot segment then.
    ("POST", "/api/%2e/pull{", "/api/pull%257B"),
    ("POST", "/api/%2e/pull", None),  # an escaped dot is no segment of the path as sent
    ("POST", "/api%2Fpull", None),
    ("POST", "/api/pull", None),
    ("POST", "/api/pull?x=/../", None),
    ("POST", "/.well-known/x", None),
    # The absolute form: the path after the authority, a Location without the host.
    ("POST", "http://127.0.0.1:11434/api//pull", "/api/pull"),
    ("GET", "http://127.0.0.1?x=1", "/?x=1"),
    ("POST", "http://127.0.0.1/api/pull", None),
    ("CONNECT", "/api//pull", None),  # CONNECT is not canonicalized
    ("OPTIONS", "*", None),
]


@pytest.mark.parametrize(("method", "target", "location"), GO_MUX)
def test_gos_mux_redirects_a_path_that_is_not_clean(
    method: str, target: str, location: str | None
) -> None:
    expected = None if location is None else location.encode()
    assert go_mux.location(method, target.encode()) == expected


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/%zz"),
        ("POST", "/api//%zz"),  # refused before the mux would redirect it
        ("POST", "/api/chat%"),
        ("CONNECT", "/api/%2"),
        ("GET", "http://127.0.0.1/a%g0"),
    ],
)
async def test_a_target_gos_parser_refuses_is_its_400_before_any_route(
    own_proxy: Proxy, own_emulator: Emulator, method: str, target: str
) -> None:
    """Go's ParseRequestURI refuses a `%` without two hex digits in the path (the query
    is not checked): its server answers a plain 400 before the mux, gin or any handler
    (Ollama's 404 never comes), and the backend is not asked."""

    def asked() -> int:  # but the proxy's health checks
        counts = own_emulator.state.requests
        return sum(n for path, n in counts.items() if path not in ("/api/tags", "/api/ps"))

    for port in (own_emulator.port, own_proxy.port):
        before = asked()
        status, headers, body = await raw_request(port, method, target, [])
        assert (status, body) == (400, b"400 Bad Request"), (port, status, body)
        assert headers["content-type"] == b"text/plain; charset=utf-8"
        assert headers["connection"] == b"close"
        if port == own_proxy.port:
            assert asked() == before
    status, _, _ = await raw_request(own_proxy.port, "GET", "/api/tags?x=%zz", [])
    assert status == 200  # the query as sent


def test_gos_redirect_writes_a_body_to_get_only() -> None:
    target = b"/api/tags?a=<'\"&>"
    get = go_mux.redirect_response("GET", 301, target)
    assert (get.status, get.headers["Location"]) == (301, target.decode())
    assert get.headers["Content-Type"] == "text/html; charset=utf-8"
    assert get.body == b'<a href="/api/tags?a=&lt;&#39;&#34;&amp;&gt;">Moved Permanently</a>.\n\n'
    head = go_mux.redirect_response("HEAD", 301, target)
    assert head.headers["Content-Type"] == "text/html; charset=utf-8" and not head.body
    post = go_mux.redirect_response("POST", 307, "/api/pull?q=é".encode())
    assert post.headers["Location"] == "/api/pull?q=%c3%a9"  # Go's hexEscapeNonASCII
    assert "Content-Type" not in post.headers and not post.body

"""Application assembly: the route table of Ollama's GenerateRoutes, Gin's 404/405/
trailing-slash behaviour, request counting, fault injection (faults.py) and two control
routes.

Disconnects are detected without `handler_cancellation` (see engine.py), so the app
works the same under `web.run_app`, a plain `AppRunner` or aiohttp's test server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from yarl import URL

from proxy import expect, go_mux
from proxy.connection import ClientConnection
from proxy.errors import error_response, gin_not_found, gin_refusal
from proxy.go_types import BodyError
from proxy.header_values import utf8
from proxy.hosts import HostCheck
from proxy.origins import ORIGIN, Origins, add_headers
from proxy.protocol import drop_server_header
from proxy.routes import OLLAMA_ROUTES, gin_allowed

from . import admin, anthropic_routes, faults, native, openai_routes, responses_api
from .faults import FAULT_PATHS
from .state import FAULT_MODES, STATE_KEY, EmulatorSettings, EmulatorState, state_of
from .wire import dumps, error, gin_json, read_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# (method, path, handler) exactly as server/routes.go registers them
# (`proxy.routes.OLLAMA_ROUTES`). Gin does not add HEAD for GET routes, so neither do we.
_MODULES = {
    "admin": admin,
    "anthropic_routes": anthropic_routes,
    "native": native,
    "openai_routes": openai_routes,
    "responses_api": responses_api,
}
ROUTES: tuple[tuple[str, str, Handler], ...] = tuple(
    (method, path, getattr(_MODULES[owner], name))
    for method, path, handler in OLLAMA_ROUTES
    for owner, _, name in [handler.partition(".")]
)

# The methods of Ollama's routes whose handlers read a body (POST, DELETE).
_READS_BODY = frozenset({"POST", "DELETE"})
_BLOBS = "/api/blobs/"


def _trailing_slash_redirect(request: web.Request) -> web.StreamResponse | None:
    """Gin's RedirectTrailingSlash: 301 for GET, 307 otherwise, to the path without its
    slash and with the query, as `http.Redirect` writes it."""
    path = request.path
    if len(path) > 1 and path.endswith("/") and gin_allowed(path.rstrip("/")):
        target = go_mux.escape_path(utf8(path.rstrip("/")))
        query = utf8(request.raw_path).partition(b"?")[2]
        if query:
            target += b"?" + query
        status = 301 if request.method == "GET" else 307
        return go_mux.redirect_response(request.method, status, target)
    return None


async def _gin_match(request: web.Request, handler: Handler) -> tuple[web.Request, Handler]:
    """The request and the handler gin runs: it matches the decoded path (Go's
    `URL.Path`, gin's `UseRawPath` off), where an escaped slash is a slash, so
    `/api%2Fpull` is its pull; aiohttp's router matched the path with `%2F` kept."""
    if "%2f" not in request.raw_path.partition("?")[0].lower():
        return request, handler
    decoded = URL.build(path=request.path, query_string=request.query_string)
    clone = request.clone(rel_url=decoded)
    match = await request.app.router.resolve(clone)
    match.add_app(request.app)
    match.freeze()
    clone._match_info = match  # what aiohttp's application sets before any handler
    return clone, match.handler


# Ollama's default origins (no OLLAMA_ORIGINS), as its cors middleware checks them.
_ORIGINS = Origins()
_HOSTS = web.AppKey("hosts", HostCheck)


@web.middleware
async def _gin(request: web.Request, handler: Handler) -> web.StreamResponse:
    if isinstance(request.protocol, ClientConnection):
        # A head Go's server refuses that aiohttp's parser took (`gzip, chunked`).
        head_refused = request.protocol.refuse_parsed(request)
        if head_refused is not None:
            return head_refused
    refused = expect.refusal(request)  # Go's server answers it before gin runs
    if refused is not None:
        return refused
    connect = request.method == "CONNECT"
    # Go reads an origin-form CONNECT's target as a path, aiohttp as an authority.
    path = URL(request.raw_path, encoded=True).path if connect else request.path
    state = state_of(request)
    state.requests[path] += 1
    state.last_headers = {k.lower(): v for k, v in request.headers.items()}
    state.last_target = utf8(request.raw_path)
    # Go's ServeMux, in front of gin: a path that is not clean runs no handler.
    redirected = go_mux.redirect(request)
    if redirected is not None:
        return redirected
    if len(path) > 1 and path.endswith("/") and not connect:
        # Gin never matches a trailing slash here (aiohttp would): redirect or 404.
        # It redirects no CONNECT.
        return _trailing_slash_redirect(request) or gin_not_found()
    origin = request.headers.get(ORIGIN)
    if origin is not None:
        refused = _ORIGINS.admit(request, origin)
        if refused is not None:
            return refused
    # Ollama's allowedHostsMiddleware, after its CORS middleware.
    refused = request.app[_HOSTS].refusal(request)
    if refused is not None:
        return refused
    if connect:
        return gin_refusal(path)  # gin serves CONNECT on no route
    try:
        request, handler = await _gin_match(request, handler)
        if request.method in _READS_BODY and request.match_info.http_exception is None:
            # Go's expectContinueReader: `100 Continue` at the handler's first read of
            # the body, which every Ollama handler of these methods reads first.
            await expect.before_reading(request)
        if state.fault != "none" and request.method == "POST" and request.path in FAULT_PATHS:
            return await faults.faulty(request, handler)
        return await handler(request)
    except RequestPayloadError as exc:
        # A body whose framing broke: Go's chunked reader fails the handler's read of
        # it, and Ollama answers that error (CreateBlobHandler, failing its copy of the
        # body, with a 500; the others with their 400), then closes the connection.
        status = 500 if request.path.startswith(_BLOBS) else 400
        response = error_response(request.path, status, str(exc))
        response.force_close()
        return response
    except web.HTTPMethodNotAllowed:
        return gin_refusal(request.path)
    except web.HTTPNotFound:
        return _trailing_slash_redirect(request) or gin_not_found()
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        # A body shape this emulator does not model; Ollama would answer with some
        # error too. Answer like Gin's c.JSON(500, ...) rather than aiohttp's HTML.
        return error(500, f"emulator: unsupported request: {exc}")


async def _drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    await drop_server_header(request, response)
    await add_headers(request, response)
    # A Gin handler that writes nothing sends no Content-Type at all.
    if response.headers.get("Content-Type") == "":
        del response.headers["Content-Type"]


# Emulator control (these two paths do NOT exist in real Ollama) ------------------------


async def _set_fault(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        body = await read_json(request)
    except (EOFError, BodyError):
        return error(400, 'expected {"mode": ...}')
    mode = body.get("mode") if isinstance(body, dict) else None
    if mode not in FAULT_MODES:
        return error(400, f"mode must be one of {', '.join(FAULT_MODES)}")
    state.fault = str(mode)
    return gin_json(200, {"mode": state.fault})


async def _get_state(request: web.Request) -> web.Response:
    return web.Response(body=dumps(state_of(request).snapshot()), content_type="application/json")


def create_app(settings: EmulatorSettings | None = None) -> web.Application:
    """A fresh emulator; `app[STATE_KEY]` holds its counters and model store."""
    # Ollama reads a body of any size; aiohttp would refuse one over 1 MiB with its own
    # plain-text 413 (a picture for a vision model is often more). 1 GiB bounds what a
    # stand-in holds in memory.
    app = web.Application(middlewares=[_gin], client_max_size=1 << 30)
    settings = settings or EmulatorSettings()
    app[STATE_KEY] = EmulatorState(settings)
    app[_HOSTS] = HostCheck(settings.listen_host)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler, expect_handler=expect.expect_handler)
    app.router.add_route("POST", "/api/emulator/fault", _set_fault)
    app.router.add_route("GET", "/api/emulator/state", _get_state)
    app.on_response_prepare.append(_drop_server_header)
    return app

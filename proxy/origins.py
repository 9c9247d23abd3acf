"""Browsers' cross-origin requests, answered as Ollama answers them.

Ollama runs gin-contrib/cors in front of every route (`server/routes.go`,
`GenerateRoutes`): a request whose `Origin` is not its own host's must come from an
allowed origin, else 403 before any handler runs (`AbortWithStatus`: no body, no
type, whatever the path); a preflight (`OPTIONS` from an
allowed origin) is 204 with the methods and headers it permits; an allowed origin is
echoed in `Access-Control-Allow-Origin`. The allowed origins are `OLLAMA_ORIGINS` plus
localhost, 127.0.0.1 and 0.0.0.0 on any port and the app, file, tauri and VS Code
webview schemes (`envconfig.AllowedOrigins`).

The proxy applies the same policy at admission, so a browser sees Ollama's answer on
every path, the proxy's own included, and a disallowed page reaches no backend and
none of the proxy's endpoints. `listen.origins` plays the part of `OLLAMA_ORIGINS`.
A relayed answer carries the backend's own CORS headers (the backend sees the same
`Origin`); the proxy adds them to the answers it makes itself. A page of the proxy's
own site (its `Origin` the request's `Host`) is no cross-origin request, to Ollama
whatever its name: its `Origin` does not reach the backend (`OWN_SITE`), which sees
its own address as the host and would judge the page as one from another site.

Beyond Ollama's policy, the proxy lets a page use its own headers: an allowed origin's
answers expose `X-Request-Id` (the id a rating names) and the `X-Autoroute-*` headers
(which a browser otherwise hides from a cross-origin page), and a preflight allows
`X-Autoroute-User` and a client's own `X-Request-Id`, which Ollama's list lacks. The
emulator, which answers as Ollama does, adds neither.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from proxy.routes import gin_allowed

ORIGIN: Final = "Origin"
# An allowed cross-origin request's response headers, for the answers the proxy makes
# itself (its own, its errors, a replay from the response cache).
CORS_HEADERS: Final = web.RequestKey("cors_headers", tuple[tuple[str, str], ...])
# Set on a request from a page of the proxy's own site: its `Origin` is not forwarded.
OWN_SITE: Final = web.RequestKey("autoroute_own_site", bool)
# Response headers that answer one request's origin: never kept for another's.
PER_ORIGIN = frozenset({"access-control-allow-origin", "vary"})

_DEFAULTS = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for port in ("", ":*")
        for scheme in ("http", "https")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)
# gin-contrib/cors's defaults and Ollama's header list, as the middleware writes them.
_ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
_ALLOW_HEADERS = ",".join(
    (
        "Authorization",
        "Content-Type",
        "User-Agent",
        "Accept",
        "X-Requested-With",
        "Openai-Beta",
        "X-Stainless-Arch",
        "X-Stainless-Async",
        "X-Stainless-Custom-Poll-Interval",
        "X-Stainless-Helper-Method",
        "X-Stainless-Lang",
        "X-Stainless-Os",
        "X-Stainless-Package-Version",
        "X-Stainless-Poll-Helper",
        "X-Stainless-Retry-Count",
        "X-Stainless-Runtime",
        "X-Stainless-Runtime-Version",
        "X-Stainless-Timeout",
    )
)
# The request headers the proxy reads that Ollama's list does not allow: the user an
# experiment assigns, and a client's own request id.
_OWN_REQUEST_HEADERS = ",".join(("X-Autoroute-User", "X-Request-Id"))
EXPOSE_HEADERS: Final = "Access-Control-Expose-Headers"
# The proxy's own answer headers (Served.extra and the request id): what a page reads.
_EXPOSED = ",".join(
    (
        "X-Request-Id",
        "X-Autoroute-Model",
        "X-Autoroute-Profile",
        "X-Autoroute-Reason",
        "X-Autoroute-Score",
        "X-Autoroute-Cache",
        "X-Autoroute-Backend",
        "X-Autoroute-Capped",
    )
)
_MAX_AGE = "43200"  # 12 hours
_REQUEST_HEADERS = "Access-Control-Request-Headers"
_ALLOW_ORIGIN = "Access-Control-Allow-Origin"


class Origins:
    """Which origins may call, as gin-contrib/cors matches them: exactly (the list
    lower-cased, the request's Origin as sent), or by one `*` standing for any text;
    a lone `*` allows every origin. `own_headers`: the proxy's, which lets a page send
    and read its own headers too; without, Ollama's answers exactly."""

    def __init__(self, extra: tuple[str, ...] = (), own_headers: bool = False) -> None:
        self.allow_headers = (
            f"{_ALLOW_HEADERS},{_OWN_REQUEST_HEADERS}" if own_headers else _ALLOW_HEADERS
        )
        self.expose: tuple[tuple[str, str], ...] = (
            ((EXPOSE_HEADERS, _EXPOSED),) if own_headers else ()
        )
        origins = [o.strip().lower() for o in (*extra, *_DEFAULTS) if o.strip()]
        self.any = "*" in origins
        self.exact = frozenset(o for o in origins if "*" not in o)
        self.wildcards = tuple(
            (prefix, suffix)
            for prefix, _, suffix in (o.partition("*") for o in origins if "*" in o)
            if prefix or suffix
        )

    def allows(self, origin: str) -> bool:
        if self.any or origin in self.exact:
            return True
        return any(origin.startswith(p) and origin.endswith(s) for p, s in self.wildcards)

    def admit(self, request: web.Request, origin: str) -> web.Response | None:
        """A request that sent `Origin`: None lets it in (an allowed origin's headers
        are kept on the request for `add_headers`); the 403 or the preflight's 204
        otherwise."""
        host = request.host
        if origin in (f"http://{host}", f"https://{host}"):
            request[OWN_SITE] = True  # the browser's own page: not a cross-origin request
            return None
        # Only ASCII is echoed back in a header (aiohttp keeps bytes that are not UTF-8
        # as lone surrogates, which no header encoder takes).
        if not (origin.isascii() and self.allows(origin)):
            return web.Response(status=403)  # gin-contrib/cors's bare AbortWithStatus
        if request.method == "OPTIONS":
            response = web.Response(status=204)
            # Ollama serves OPTIONS on no route: gin sets its 405's `Allow` before the
            # middleware answers the preflight, so a path of Ollama's says it.
            allowed = gin_allowed(request.path)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
            response.headers.update(
                {
                    "Access-Control-Allow-Methods": _ALLOW_METHODS,
                    "Access-Control-Allow-Headers": self.allow_headers,
                    "Access-Control-Max-Age": _MAX_AGE,
                }
            )
            if not self.any:
                for name in ("Origin", "Access-Control-Request-Method", _REQUEST_HEADERS):
                    response.headers.add("Vary", name)
            response.headers[_ALLOW_ORIGIN] = "*" if self.any else origin
            return response
        if self.any:
            request[CORS_HEADERS] = ((_ALLOW_ORIGIN, "*"), *self.expose)
        else:
            request[CORS_HEADERS] = (("Vary", "Origin"), (_ALLOW_ORIGIN, origin), *self.expose)
        return None


def exposed(request: web.Request) -> tuple[tuple[str, str], ...]:
    """What a relayed answer to `request` adds to the backend's own CORS headers: the
    exposure of the proxy's headers, for an allowed cross-origin request."""
    return tuple(pair for pair in request.get(CORS_HEADERS, ()) if pair[0] == EXPOSE_HEADERS)


async def add_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """An `on_response_prepare` signal: an answer made here (not relayed, which has
    the backend's own) to an allowed cross-origin request gets the headers Ollama's
    middleware adds, unless it holds a backend's already (an HTTP/1.0 client's replay
    from the cache, which aiohttp writes); the exposure of the proxy's own headers goes
    on any answer that lacks it."""
    cors = request.get(CORS_HEADERS)
    if not cors:
        return
    made_here = _ALLOW_ORIGIN not in response.headers
    for name, value in cors:
        if made_here or (name == EXPOSE_HEADERS and name not in response.headers):
            response.headers.add(name, value)

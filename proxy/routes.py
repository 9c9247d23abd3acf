"""The route table: every path the proxy treats differently from passing it through.

One line per route says which handler takes it and what it is: who may call it, whether
it runs a model, its metric label. Dispatch, access control, metrics and usage events
all read this table; none keeps a list of paths of its own.

Paths the table does not name pass through to a backend, as Ollama would answer them
(unknown ones too), except under `OWN_PREFIX`, which no Ollama path uses: there an
unknown path is 404 and a method its route does not take 405. A route's flags describe
its path whatever the method; elsewhere a method the route does not take passes
through, as an unknown path does, but CONNECT, which gets Ollama's answer from
Ollama's own table (`OLLAMA_ROUTES`) and reaches no backend. A path that is not clean
(`/api//pull`) reaches no route: Go's redirect to the clean one answers it first, as in
front of Ollama's routes (`proxy.go_mux`).

A handler is named by the object that owns it and its method, resolved once by
`Router` against the objects the application built (see `proxy.app`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, cast

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The proxy's own endpoints live under this prefix; no Ollama path starts with it.
OWN_PREFIX: Final = "/api/autoroute/"
METRICS_PATH: Final = "/metrics"

# Who may call a route when API keys are on.
PUBLIC: Final = "public"  # anyone: liveness and readiness probes
KEY: Final = "key"  # any valid key (also what a path outside the table needs)
# A key that may see every model: an admin key or one without a model list. For the
# views of the whole fleet, which name every model and cannot be cut to one key's.
FULL: Final = "full"
ADMIN: Final = "admin"  # an admin key
SCRAPE: Final = "scrape"  # public with `auth.metrics_open`, else as FULL

ANY: frozenset[str] = frozenset()
GET = frozenset({"GET"})
READ = frozenset({"GET", "HEAD"})
POST = frozenset({"POST"})

# The handlers several routes share.
PASS = "handlers.passthrough"
MODEL_ROUTED = "handlers.model_routed"
MERGED = "handlers.merged"
MODEL_ADMIN = "handlers.admin"


@dataclass(frozen=True, slots=True)
class Route:
    """`path` is exact, or ends in a placeholder: `{name}` takes one path segment,
    `{name:path}` the rest of the path (slashes too)."""

    path: str
    methods: frozenset[str]  # ANY: every method
    handler: str  # "<owner>.<method>", see `Router`
    access: str = KEY
    # Runs a model: one usage event per request, counted by a key's `max_streams`.
    inference: bool = False
    # Names its model in the body and, for `auto`, takes `selector.embedding_model`.
    embedding: bool = False
    # Its body's `keep_alive` and `options` reach the model's runner (Ollama's own
    # API: its OpenAI and Anthropic layers read neither), `runners` caps them.
    runner: bool = False
    merge: str = ""  # a model list merged from every backend: the list's field
    # The metric label: the path, placeholders left in (bounded). Made once: every
    # request's metrics read it.
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", self.path.replace(":path}", "}"))


ROUTES: tuple[Route, ...] = (
    # Liveness, for container health checks and `ollama` clients checking the server.
    # Ollama serves them on GET and HEAD alone (`Router.handler` answers the others).
    Route("/", READ, PASS, access=PUBLIC),
    Route("/api/version", READ, PASS, access=PUBLIC),
    # The body names the model that decides the backend; `auto` is decided here.
    Route("/api/generate", POST, MODEL_ROUTED, inference=True, runner=True),
    Route("/api/chat", POST, MODEL_ROUTED, inference=True, runner=True),
    Route("/api/embed", POST, MODEL_ROUTED, inference=True, embedding=True, runner=True),
    Route("/api/embeddings", POST, MODEL_ROUTED, inference=True, embedding=True, runner=True),
    # Names a model too, but editors poll it: not counted as running one.
    Route("/api/show", POST, MODEL_ROUTED),
    Route("/v1/chat/completions", POST, MODEL_ROUTED, inference=True),
    Route("/v1/completions", POST, MODEL_ROUTED, inference=True),
    Route("/v1/embeddings", POST, MODEL_ROUTED, inference=True, embedding=True),
    Route("/v1/responses", POST, MODEL_ROUTED, inference=True),
    Route("/v1/messages", POST, MODEL_ROUTED, inference=True),
    # Names its model in a multipart form (`proxy.multipart_form`), sent on as read
    # (`proxy.form_encoding`).
    Route("/v1/audio/transcriptions", POST, "handlers.transcription", inference=True),
    # What no single backend can answer: one list from all of them.
    Route("/api/tags", READ, MERGED, merge="models"),
    # Ollama takes HEAD on /api/tags but not on these two (405 from the backend).
    Route("/api/ps", GET, MERGED, merge="models"),
    Route("/v1/models", GET, MERGED, merge="data"),
    Route("/v1/models/{model:path}", GET, "handlers.v1_model"),
    # Changes to the model store: sent to the backends `routing.admin_target` names.
    Route("/api/pull", ANY, MODEL_ADMIN, access=ADMIN),
    Route("/api/push", ANY, MODEL_ADMIN, access=ADMIN),
    Route("/api/create", ANY, MODEL_ADMIN, access=ADMIN),
    Route("/api/copy", ANY, MODEL_ADMIN, access=ADMIN),
    Route("/api/delete", ANY, MODEL_ADMIN, access=ADMIN),
    Route("/api/blobs/{digest:path}", ANY, "handlers.blobs", access=ADMIN),
    # Ollama's routes acting on the server's ollama.com account (who it is signed in
    # as, signing out, its keys, web search and fetch on its behalf): the server's, not
    # a client's, so only an admin key reaches them.
    Route("/api/me", ANY, PASS, access=ADMIN),
    Route("/api/signout", ANY, PASS, access=ADMIN),
    Route("/api/user/{rest:path}", ANY, PASS, access=ADMIN),
    Route("/api/experimental/{rest:path}", ANY, PASS, access=ADMIN),
    Route(METRICS_PATH, READ, "handlers.scrape", access=SCRAPE),
    # The proxy's own endpoints.
    Route(OWN_PREFIX + "health", GET, "handlers.health", access=PUBLIC),
    Route(OWN_PREFIX + "ready", GET, "handlers.ready", access=PUBLIC),
    Route(OWN_PREFIX + "explain", POST, "auto_routes.explain"),
    Route(OWN_PREFIX + "status", GET, "auto_routes.status", access=FULL),
    Route(OWN_PREFIX + "reload", POST, "auto_routes.reload", access=ADMIN),
    # A report over every client's traffic, whose variants may pin any model.
    Route(OWN_PREFIX + "experiments/{name}", GET, "auto_routes.experiment", access=FULL),
    Route(OWN_PREFIX + "feedback", POST, "usage_routes.feedback"),
    Route(OWN_PREFIX + "stats", GET, "usage_routes.stats"),
    Route(OWN_PREFIX + "dashboard", GET, "dashboard.html", access=ADMIN),
    Route(OWN_PREFIX + "dashboard.json", GET, "dashboard.data", access=ADMIN),
)

# Ollama's own route table (server/routes.go, `GenerateRoutes`), in the order it
# registers the routes, gin's `:name` written `{name}`: (method, path, the emulator's
# handler, "<module>.<function>" in `proxy.emulator`). The emulator serves exactly
# these; the proxy answers from them what no backend is asked (CONNECT, see
# `Router.handler`) and says in a preflight what gin says (`proxy.origins`).
OLLAMA_ROUTES: tuple[tuple[str, str, str], ...] = (
    ("HEAD", "/", "admin.handle_root"),
    ("GET", "/", "admin.handle_root"),
    ("HEAD", "/api/version", "admin.handle_version"),
    ("GET", "/api/version", "admin.handle_version"),
    ("GET", "/api/status", "admin.handle_status"),
    ("POST", "/api/pull", "admin.handle_pull"),
    ("POST", "/api/push", "admin.handle_push"),
    ("HEAD", "/api/tags", "admin.handle_tags"),
    ("GET", "/api/tags", "admin.handle_tags"),
    ("POST", "/api/show", "admin.handle_show"),
    ("DELETE", "/api/delete", "admin.handle_delete"),
    ("POST", "/api/me", "admin.handle_me"),
    ("POST", "/api/signout", "admin.handle_signout"),
    ("DELETE", "/api/user/keys/{encodedKey}", "admin.handle_signout"),
    ("POST", "/api/create", "admin.handle_create"),
    ("POST", "/api/blobs/{digest}", "admin.handle_create_blob"),
    ("HEAD", "/api/blobs/{digest}", "admin.handle_head_blob"),
    ("POST", "/api/copy", "admin.handle_copy"),
    ("POST", "/api/experimental/web_search", "admin.handle_web_experimental"),
    ("POST", "/api/experimental/web_fetch", "admin.handle_web_experimental"),
    ("GET", "/api/experimental/model-recommendations", "admin.handle_model_recommendations"),
    ("GET", "/api/ps", "admin.handle_ps"),
    ("POST", "/api/generate", "native.handle_generate"),
    ("POST", "/api/chat", "native.handle_chat"),
    ("POST", "/api/embed", "native.handle_embed"),
    ("POST", "/api/embeddings", "native.handle_embeddings"),
    ("POST", "/v1/chat/completions", "openai_routes.handle_chat_completions"),
    ("POST", "/v1/completions", "openai_routes.handle_completions"),
    ("POST", "/v1/embeddings", "openai_routes.handle_embeddings"),
    ("GET", "/v1/models", "openai_routes.handle_models"),
    ("GET", "/v1/models/{model}", "openai_routes.handle_model"),
    ("POST", "/v1/responses", "responses_api.handle_responses"),
    ("POST", "/v1/audio/transcriptions", "openai_routes.handle_transcriptions"),
    ("POST", "/v1/messages", "anthropic_routes.handle_messages"),
)


def _gin_pattern(path: str) -> re.Pattern[str]:
    """A gin path as a pattern: a parameter takes one non-empty segment."""
    parts = ("[^/]+" if p.startswith("{") else re.escape(p) for p in path.split("/"))
    return re.compile("/".join(parts) + r"\Z")


# gin's method trees, in the order it made them (each method's first registration):
# the order its 405 lists the methods in `Allow`.
_GIN_TREES: dict[str, list[re.Pattern[str]]] = {}
for _method, _path, _ in OLLAMA_ROUTES:
    _GIN_TREES.setdefault(_method, []).append(_gin_pattern(_path))


def gin_allowed(path: str) -> tuple[str, ...]:
    """The methods Ollama serves `path` with, in the order gin 1.10 lists them in a
    405's `Allow` (with `HandleMethodNotAllowed`, as Ollama sets it); none: gin's 404.
    For a method Ollama does not serve on `path` (a served one never asks)."""
    return tuple(m for m, paths in _GIN_TREES.items() if any(p.match(path) for p in paths))


_EXACT = {r.path: r for r in ROUTES if not r.path.endswith("}")}
# (prefix, takes slashes, route), in table order.
_PATTERNS = tuple(
    (r.path[: r.path.rindex("{")], r.path.endswith(":path}"), r)
    for r in ROUTES
    if r.path.endswith("}")
)


def find(path: str) -> Route | None:
    """The route a request path belongs to, None for one outside the table."""
    route = _EXACT.get(path)
    if route is not None:
        return route
    for prefix, any_rest, route in _PATTERNS:
        if path.startswith(prefix) and (any_rest or "/" not in path[len(prefix) :]):
            return route
    return None


# The routes where `auto` ranks models: those that route by the model their body names
# and run one, but embeddings (`selector.embedding_model`, no ranking) and audio.
RANKED_PATHS: tuple[str, ...] = tuple(
    r.path for r in ROUTES if r.handler == MODEL_ROUTED and r.inference and not r.embedding
)


def runs_a_model(route: Route | None, method: str) -> bool:
    """Whether a request to `route` (`find` of its path) with `method` runs a model:
    any other method on the path runs nothing (the backend answers gin's 405)."""
    return route is not None and route.inference and (not route.methods or method in route.methods)


def label_of(path: str) -> str:
    """The metric label of a path: bounded whatever the client sends."""
    return route_label(find(path))


def route_label(route: Route | None) -> str:
    """The metric label of a path whose route (`find`) is `route`."""
    return route.label if route is not None else "other"


class Router:
    """The table's handlers, bound to the objects that own them (`owners`, by the name
    a route's handler starts with). Every name is resolved here, once: a handler that
    does not exist fails building the application, not a request."""

    def __init__(self, owners: Mapping[str, object]) -> None:
        self._handlers = {route.path: _resolve(owners, route.handler) for route in ROUTES}
        self._passthrough = _resolve(owners, PASS)
        self._not_found = _resolve(owners, "handlers.not_found")
        self._method_not_allowed = _resolve(owners, "handlers.method_not_allowed")
        self._gin_refusal = _resolve(owners, "handlers.gin_refusal")

    def handler(self, method: str, path: str, route: Route | None) -> Handler:
        """The handler of a request; `route` is `find(path)`, which the caller has.
        CONNECT is no route's, not even one taking every method: Ollama serves it on no
        path, and no backend is asked to open a tunnel. Outside `OWN_PREFIX` it gets
        Ollama's answer from `OLLAMA_ROUTES` (gin's 405 or 404), as does a method a
        public route does not take, OPTIONS too (a browser's preflight is answered
        before any route, `proxy.origins`, as Ollama's CORS middleware answers it): a
        client without a key sends no backend a body. Any other method goes to the
        backend, whose Ollama answers it as its version does."""
        if route is not None and (
            method in route.methods or (not route.methods and method != "CONNECT")
        ):
            return self._handlers[route.path]
        if not path.startswith(OWN_PREFIX):
            if method == "CONNECT" or (route is not None and route.access == PUBLIC):
                return self._gin_refusal
            return self._passthrough
        return self._not_found if route is None else self._method_not_allowed


def _resolve(owners: Mapping[str, object], name: str) -> Handler:
    owner, _, method = name.partition(".")
    handler = getattr(owners[owner], method, None)
    if not callable(handler):
        raise LookupError(f"route handler {name} does not exist")
    return cast(Handler, handler)

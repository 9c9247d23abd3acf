"""The route table: every path the proxy treats differently from passing it through.

One line per route says which handler takes it and what it is: who may call it, whether
it runs a model, its metric label. Dispatch, access control, metrics and usage events
all read this table; none keeps a list of paths of its own.

Paths the table does not name pass through to a backend, as Ollama would answer them
(unknown ones too), except under `OWN_PREFIX`, which no Ollama path uses: there an
unknown path is 404 and a method its route does not take 405. A route's flags describe
its path whatever the method; elsewhere a method the route does not take passes
through, as an unknown path does.

A handler is named by the object that owns it and its method, resolved once by
`Router` against the objects the application built (see `proxy.app`).
"""

from __future__ import annotations

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
    merge: str = ""  # a model list merged from every backend: the list's field
    # The metric label: the path, placeholders left in (bounded). Made once: every
    # request's metrics read it.
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", self.path.replace(":path}", "}"))


ROUTES: tuple[Route, ...] = (
    # Liveness, for container health checks and `ollama` clients checking the server.
    Route("/", ANY, PASS, access=PUBLIC),
    Route("/api/version", ANY, PASS, access=PUBLIC),
    # The body names the model that decides the backend; `auto` is decided here.
    Route("/api/generate", POST, MODEL_ROUTED, inference=True),
    Route("/api/chat", POST, MODEL_ROUTED, inference=True),
    Route("/api/embed", POST, MODEL_ROUTED, inference=True, embedding=True),
    Route("/api/embeddings", POST, MODEL_ROUTED, inference=True, embedding=True),
    # Names a model too, but editors poll it: not counted as running one.
    Route("/api/show", POST, MODEL_ROUTED),
    Route("/v1/chat/completions", POST, MODEL_ROUTED, inference=True),
    Route("/v1/completions", POST, MODEL_ROUTED, inference=True),
    Route("/v1/embeddings", POST, MODEL_ROUTED, inference=True, embedding=True),
    Route("/v1/responses", POST, MODEL_ROUTED, inference=True),
    Route("/v1/messages", POST, MODEL_ROUTED, inference=True),
    # Names its model in a multipart form (`proxy.multipart_form`), the body as sent.
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


def runs_model(path: str) -> bool:
    route = find(path)
    return route is not None and route.inference


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

    def handler(self, method: str, path: str, route: Route | None) -> Handler:
        """The handler of a request; `route` is `find(path)`, which the caller has."""
        if route is not None and (not route.methods or method in route.methods):
            return self._handlers[route.path]
        if not path.startswith(OWN_PREFIX):
            return self._passthrough
        return self._not_found if route is None else self._method_not_allowed


def _resolve(owners: Mapping[str, object], name: str) -> Handler:
    owner, _, method = name.partition(".")
    handler = getattr(owners[owner], method, None)
    if not callable(handler):
        raise LookupError(f"route handler {name} does not exist")
    return cast(Handler, handler)

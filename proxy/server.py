"""The aiohttp application: one catch-all handler that decides where a request goes.

Every path passes through (unknown ones too, so the backend answers as Ollama would);
the proxy itself only reads a body where the model it names decides the backend, and
answers by itself only for what no single backend can: merged model lists, limits,
and the absence of any healthy backend.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from aiohttp import web

from proxy import dashboard, go_json, header_values
from proxy import limits as request_limits
from proxy.auth import KEY_REQUEST, Access
from proxy.auth_store import KeyStore
from proxy.auto import AutoError, AutoRouter, profile_of, user_key
from proxy.auto_routes import AutoRoutes
from proxy.backends import BackendPool, BackendState, NoBackend, normalize_model
from proxy.config import Config
from proxy.errors import error_body, error_response
from proxy.learning import Learner
from proxy.logs import AccessLog
from proxy.metrics import METRICS_PATH, Metrics
from proxy.profiler import idle_profiler
from proxy.protocol import JSON, JSON_V1, MODEL_ADMIN_PATHS, MODEL_ROUTED_PATHS, REQUEST_ID_HEADER
from proxy.registry import Registry
from proxy.relay import Outcome, Relay
from proxy.usage import UsagePipeline, UsageRoutes

log = logging.getLogger("autoroute.server")

# Lists the proxy assembles from every backend when there is more than one.
MERGED_PATHS = {"/api/tags": "models", "/api/ps": "models", "/v1/models": "data"}
# The proxy's own endpoints live under this prefix; no Ollama path starts with it.
OWN_PREFIX = "/api/autoroute/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EMBED_PATHS = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})
AUTOROUTE_HEADERS = (
    "X-Autoroute-Model",
    "X-Autoroute-Profile",
    "X-Autoroute-Reason",
    "X-Autoroute-Score",
)
# Bodies below this size are read so that a failed backend can be retried.
_REPLAYABLE_BYTES = 1024 * 1024


def model_of(body: bytes, fields: tuple[str, ...] = ("model",)) -> str | None:
    """The model a JSON body names as Ollama reads it (`go_json`), or None (the
    backend then answers its own error)."""
    try:
        doc, _ = go_json.read(body)
    except go_json.BodyError:
        return None
    if not isinstance(doc, dict):
        return None
    for name in fields:
        value = doc.get(name)
        if isinstance(value, str) and value:
            return value
    return None


class Proxy:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._background: set[asyncio.Task[None]] = set()
        logging_on = config.logging.access and log.isEnabledFor(logging.INFO)
        self.access = AccessLog(enabled=logging_on, json=config.logging.json)
        # Request ids: a random prefix per process and a counter, unique without a
        # syscall or a uuid per request.
        self._id_prefix = os.urandom(6).hex()
        self._id_counter = itertools.count(1)
        # The proxy's own endpoints, by (method, path); features register theirs here.
        self.own_routes: dict[tuple[str, str], Handler] = {
            ("GET", OWN_PREFIX + "health"): self._health,
            ("GET", OWN_PREFIX + "ready"): self._ready,
        }
        # Usage events: the handler only appends to the pipeline's in-memory queue.
        self.usage = UsagePipeline(config.usage)
        usage_routes = UsageRoutes(self.usage, config.timeouts.client_body_idle_seconds)
        self.own_routes[("POST", OWN_PREFIX + "feedback")] = usage_routes.feedback
        self.own_routes[("GET", OWN_PREFIX + "stats")] = usage_routes.stats
        self.auth = Access(config.auth)
        self.key_store = KeyStore(config.auth, self.auth) if config.auth.postgres_dsn else None
        self.metrics = Metrics(
            lambda name: any(s.models and name in s.models for s in self.backends.states),
            lambda: self.backends.states,
            self.usage,
            self.key_store,
        )

    def _new_request_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):010x}"

    async def start(self, app: web.Application) -> None:
        self.backends = BackendPool(self.config)
        self.relay = Relay(self.config, self.backends)
        self.registry = Registry(self.backends)
        self.auto = AutoRouter(self.config, self.backends, self.registry)
        self.auto.scorer.reload()
        # Outcomes of auto's decisions, from the usage pipeline, into auto's evidence.
        self.learner = Learner(self.config.selector.learning, self.config.usage, self.auto.evidence)
        self.usage.observers.append(self.learner.observe)
        self.auto_routes = AutoRoutes(
            self.auto,
            self.config.usage,
            self.config.timeouts.client_body_idle_seconds,
            self.learner,
        )
        self.own_routes.update(
            {
                ("POST", OWN_PREFIX + "explain"): self.auto_routes.explain,
                ("GET", OWN_PREFIX + "status"): self.auto_routes.status,
                ("POST", OWN_PREFIX + "reload"): self.auto_routes.reload,
                ("GET", OWN_PREFIX + "experiments/*"): self.auto_routes.experiment,
            }
        )
        self.own_routes.update(dashboard.Dashboard(self).routes())
        await self.backends.start()
        self.access.start()
        await self.learner.start()
        await self.usage.start()
        if self.key_store is not None:
            # Read once before serving (a failure keeps the configured keys), then in
            # the background: the request path never waits for PostgreSQL.
            await self.key_store.refresh()
            self._spawn(self.key_store.run())
        self._spawn(self._watch_artifact())
        self._spawn(self.learner.run())
        if self.config.selector.profile_models:
            self._spawn(idle_profiler(self).run())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _watch_artifact(self) -> None:
        interval = self.config.selector.reload_check_seconds
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            self.auto.scorer.reload_if_changed()

    async def stop(self, app: web.Application) -> None:
        for task in list(self._background):
            task.cancel()
        await self.backends.stop()
        await self.access.stop()
        if self.key_store is not None:
            await self.key_store.close()
        # Last: requests finishing during shutdown still leave their event.
        await self.usage.stop()
        await self.learner.close()  # after the last events: their outcomes are kept

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # The proxy's own id names the request in its logs and usage events: unique,
        # whatever clients send. A client's own id, when it is a sane token, is what
        # the client sees in the answer's header (it correlates by it) and is kept
        # beside the proxy's; one that is not (not ASCII, spaces, controls, too long)
        # is replaced by the proxy's.
        request_id = self._new_request_id()
        client_id = header_values.request_id(request.headers.get(REQUEST_ID_HEADER))
        outcome = Outcome(client_id or request_id)
        started = time.perf_counter()
        response: web.StreamResponse | None = None
        self.metrics.in_flight += 1
        refused = None
        try:
            response = refused = self._admit(request, started)
            if response is None:
                response = await self._dispatch(request, outcome)
        except NoBackend as exc:
            outcome.error = str(exc)
            response = error_response(request.path, 503, outcome.error)
        except web.HTTPRequestEntityTooLarge:
            limit = self.config.limits.max_body_bytes
            response = error_response(
                request.path, 413, f"request body too large (limit {limit} bytes)"
            )
        except request_limits.BodyTimeout as exc:
            outcome.error = str(exc)
            response = error_response(request.path, 408, str(exc))
            response.force_close()  # the rest of the body may still come: never parse it
        except asyncio.CancelledError:
            outcome.cancelled = True
            raise
        finally:
            if response is not None and not response.prepared:
                response.headers[REQUEST_ID_HEADER] = outcome.request_id
                for name, value in outcome.extra.items():
                    response.headers[name] = value
                outcome.status = response.status
            key = request.get(KEY_REQUEST)
            self.auth.release(request, key)
            self.metrics.in_flight -= 1
            self.metrics.observe(request.path, outcome, started, time.perf_counter())
            if outcome.stats and outcome.backend:
                served = outcome.decision["chosen"] if outcome.decision else outcome.model
                if served:
                    self.auto.observe(outcome.backend, served, outcome.stats)
            self.access.record(
                {
                    "request_id": request_id,
                    "client_request_id": client_id,
                    "method": request.method,
                    "path": request.path,
                    "model": outcome.model,
                    "status": outcome.status,
                    "backend": outcome.backend,
                    "key": key.id if key else None,
                    "attempts": outcome.attempts,
                    "bytes": outcome.body_bytes,
                    "ms": round((time.perf_counter() - started) * 1000, 3),
                    "error": outcome.error,
                    "cancelled": outcome.cancelled or None,
                    "client_paused": outcome.client_paused or None,
                    "ttfc_ms": round((outcome.first_byte_at - started) * 1000, 3)
                    if outcome.first_byte_at
                    else None,
                    **outcome.stats,
                }
            )
            if refused is None:  # a refused request ran no model: no usage event
                self.usage.record(
                    request, outcome, started, key.id if key else None, (request_id, client_id)
                )
        return response

    def _admit(self, request: web.Request, now: float) -> web.StreamResponse | None:
        """Header size, then the API key (when keys are configured): None lets it in."""
        refused = request_limits.check_headers(request, self.config.limits)
        if refused is None and self.auth.enabled:
            _, refused, reason = self.auth.admit(request, now)
            if refused is not None:
                self.metrics.deny(reason)
        return refused

    def _read(self, request: web.Request) -> Awaitable[bytes]:
        return request_limits.read_body(request, self.config.timeouts.client_body_idle_seconds)

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _dispatch(self, request: web.Request, outcome: Outcome) -> web.StreamResponse:
        path = request.path
        method = request.method
        if method == "POST" and path in MODEL_ROUTED_PATHS:
            return await self._model_routed(request, outcome)
        if path == METRICS_PATH and method in ("GET", "HEAD"):
            return await self._metrics(request)
        if path.startswith(OWN_PREFIX):
            handler = self.own_routes.get((method, path)) or self.own_routes.get(
                (method, path.rsplit("/", 1)[0] + "/*")
            )
            if handler is None:
                return error_response(path, 404, f"no such endpoint: {method} {path}")
            return await handler(request)
        if path in MERGED_PATHS and method in ("GET", "HEAD"):
            extra = self._auto_entries(path)
            key = request.get(KEY_REQUEST)
            only = key.models if key is not None else None
            if extra or only is not None or len(self.backends.states) > 1:
                return await self._merged(request, MERGED_PATHS[path], extra, only)
        if path in MODEL_ADMIN_PATHS:
            return await self._admin(request, outcome)
        if path.startswith("/api/blobs/"):
            # Blobs and the `create` that uses them go to one backend: the first usable.
            return await self.relay.forward(
                request, outcome, None if method == "POST" else b"", None, only=self._first()
            )
        if path.startswith("/v1/models/") and method == "GET":
            name = path[len("/v1/models/") :]
            entry = next((e for e in self._auto_entries("/v1/models") if e["id"] == name), None)
            if entry is not None:
                return web.Response(body=orjson.dumps(entry), headers={"Content-Type": JSON_V1})
            key = request.get(KEY_REQUEST)
            if key is not None and not key.allows_model(name):
                return self._model_hidden(path, name)
            return await self.relay.forward(request, outcome, b"", name)
        length = request.content_length
        if request.body_exists and (length is None or length > _REPLAYABLE_BYTES):
            return await self.relay.forward(request, outcome, None, None)
        return await self.relay.forward(request, outcome, await self._read(request), None)

    async def _model_routed(self, request: web.Request, outcome: Outcome) -> web.StreamResponse:
        """Requests whose body names the model: `auto` is decided and rewritten here."""
        # What is checked is what the backend reads: the body as Ollama decodes it,
        # forwarded in canonical form, never the client's bytes (see `go_json`).
        try:
            doc, body = go_json.read(await self._read(request))
        except go_json.BodyError as exc:
            return error_response(request.path, 400, str(exc))
        outcome.body = body
        if isinstance(doc, dict):
            refused = request_limits.check_body(request.path, doc, self.config.limits)
            if refused is not None:
                return refused
        model = doc.get("model") if isinstance(doc, dict) else None
        if not model and request.path == "/api/show" and isinstance(doc, dict):
            model = doc.get("name")  # show still takes the older field, as Ollama does
        if not isinstance(model, str) or not model:
            return await self.relay.forward(request, outcome, body, None)
        outcome.model = model
        profile = profile_of(model, self.config.selector.default_profile)
        key = request.get(KEY_REQUEST)
        if profile is None:
            if key is not None and not key.allows_model(model):
                if request.path == "/api/show":
                    return self._model_hidden(request.path, model)
                return self._model_denied(request.path, model)
            return await self.relay.forward(request, outcome, body, model)
        assert isinstance(doc, dict)
        path = request.path
        if path == "/api/show":
            return self.auto_routes.show(profile, key.models if key else None)
        if path in EMBED_PATHS:
            chosen = self.config.selector.embedding_model
            if not chosen:
                return error_response(
                    path,
                    400,
                    "auto needs selector.embedding_model in the configuration for embeddings",
                )
            if key is not None and not key.allows_model(chosen):
                return self._model_denied(path, chosen)
            outcome.extra[AUTOROUTE_HEADERS[0]] = chosen
            outcome.extra[AUTOROUTE_HEADERS[2]] = "pinned"
        else:
            deciding = time.perf_counter()
            try:
                choice = self.auto.decide(
                    path, doc, profile, user_key(request), key.models if key else None
                )
            except AutoError as exc:
                return error_response(path, 400, str(exc))
            finally:
                self.metrics.decision.observe(time.perf_counter() - deciding)
            decision = choice.decision
            chosen = decision.chosen
            outcome.decision = decision.record()
            outcome.features = choice.request_features
            outcome.candidate = choice.candidate.to_record()
            score = decision.score
            outcome.extra.update(
                zip(
                    AUTOROUTE_HEADERS,
                    (chosen, profile, decision.reason, f"{score.utility:.4f}" if score else ""),
                    strict=True,
                )
            )
        doc["model"] = chosen
        return await self.relay.forward(request, outcome, orjson.dumps(doc), chosen)

    @staticmethod
    def _model_denied(path: str, model: str) -> web.Response:
        return error_response(path, 403, f"model '{model}' is not allowed for this API key")

    @staticmethod
    def _model_hidden(path: str, model: str) -> web.Response:
        """A model outside the key's list on a route that describes models (`/api/show`,
        `/v1/models/<id>`): answered as Ollama answers for a model it does not have,
        404 "model 'x' not found", because the lists leave it out and a description
        must agree with the list (editors probe each name they hold). Running one is a
        403 instead (`_model_denied`): the caller asked for it by name and "not allowed
        for this API key" says what to fix. Neither tells whether the model exists:
        both come before routing, for any name outside the list."""
        body = error_body(path, 404, f"model '{model}' not found")
        if path.startswith("/v1/"):
            # Ollama's OpenAI layer writes errors with a json.Encoder: a trailing newline.
            return web.Response(status=404, body=body + b"\n", headers={"Content-Type": JSON_V1})
        return web.Response(status=404, body=body, headers={"Content-Type": JSON})

    def _auto_entries(self, path: str) -> list[dict[str, Any]]:
        if not self.config.selector.list_in_tags:
            return []
        if path == "/api/tags":
            return self.auto_routes.tag_entries()
        if path == "/v1/models":
            return self.auto_routes.model_entries()
        return []

    async def _health(self, request: web.Request) -> web.Response:
        """The proxy's own liveness (for container health checks) and its view of each
        backend. 200 while the proxy runs, whatever the backends' state; `status` says
        "ok" (every backend usable), "degraded" (some) or "down" (none; see `_ready`)."""
        now = asyncio.get_running_loop().time()
        usable = len(self.backends.usable())
        status = "ok" if usable == len(self.backends.states) else "degraded" if usable else "down"
        backends = [
            {
                "name": s.label,
                "url": s.config.url,
                "circuit": s.breaker.state(now),
                "in_flight": s.in_flight,
                "models": sorted(s.models) if s.models is not None else None,
                "loaded": sorted(s.loaded),
                "error": s.last_error or None,
            }
            for s in self.backends.states
        ]
        body = orjson.dumps({"status": status, "backends": backends})
        return web.Response(body=body, headers={"Content-Type": JSON})

    async def _ready(self, request: web.Request) -> web.Response:
        """Readiness, for orchestrators routing traffic: 200 while at least one backend
        is usable, else 503 naming each backend's reason. Liveness is `_health`."""
        usable = self.backends.usable()
        if not usable:
            return error_response(request.path, 503, self.backends.unavailable_reason())
        body = orjson.dumps({"status": "ready", "usable": [s.label for s in usable]})
        return web.Response(body=body, headers={"Content-Type": JSON})

    def _first(self) -> BackendState:
        usable = self.backends.usable()
        if not usable:
            raise NoBackend(self.backends.unavailable_reason())
        return usable[0]

    async def _admin(self, request: web.Request, outcome: Outcome) -> web.StreamResponse:
        """`pull`, `push`, `create`, `copy`, `delete`: see `routing.admin_target`."""
        body = await self._read(request)
        model = model_of(body, ("source", "model", "name"))
        try:
            primary = (
                self._first() if request.path == "/api/create" else self.backends.choose(model)
            )
        except NoBackend as exc:
            return error_response(request.path, 503, str(exc))
        if self.config.routing.admin_target == "all" and request.path != "/api/create":
            for other in self.backends.usable(exclude=[primary]):
                self._spawn(self._replicate(request, other, body))
        return await self.relay.forward(request, outcome, body, model, only=primary)

    async def _replicate(self, request: web.Request, state: BackendState, body: bytes) -> None:
        try:
            conn, head = await self.relay._exchange(request, state, body, None)
            await conn.read_body()
        except Exception as exc:  # a replica failing must not touch the client's answer
            log.warning("%s %s on %s failed: %s", request.method, request.path, state.label, exc)
            return
        log.info("%s %s on %s answered %d", request.method, request.path, state.label, head.status)

    async def _merged(
        self,
        request: web.Request,
        key: str,
        extra: list[dict[str, Any]],
        only: frozenset[str] | None = None,
    ) -> web.StreamResponse:
        """One list from every usable backend; with `only` (an API key's allow-list,
        normalised names), the models outside it are left out (`auto` entries stay:
        auto chooses among the allowed models alone)."""
        states = self.backends.usable()
        if not states:
            return error_response(request.path, 503, self.backends.unavailable_reason())
        results = await asyncio.gather(
            *(self.backends.get_json(s, request.path) for s in states), return_exceptions=True
        )
        docs = [r for r in results if isinstance(r, dict)]
        if not docs:
            return error_response(request.path, 502, f"no backend answered: {results[0]}")
        seen: set[str] = set()
        items: list[Any] = []
        for doc in docs:
            for item in doc.get(key) or ():
                ident = item.get("id") or item.get("model") or item.get("name")
                if only is not None and (
                    not isinstance(ident, str) or normalize_model(ident) not in only
                ):
                    continue
                if ident not in seen:
                    seen.add(ident)
                    items.append(item)
        merged = dict(docs[0])
        merged[key] = items + extra
        body = orjson.dumps(merged)
        content_type = JSON_V1 if request.path.startswith("/v1/") else JSON
        # aiohttp leaves the body out of a HEAD answer and keeps its Content-Length.
        return web.Response(status=200, body=body, headers={"Content-Type": content_type})


PROXY_KEY = web.AppKey("proxy", Proxy)


def create_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=config.limits.max_body_bytes)
    proxy = Proxy(config)
    app[PROXY_KEY] = proxy
    app.on_startup.append(proxy.start)
    app.on_cleanup.append(proxy.stop)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app

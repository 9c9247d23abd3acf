"""The composition root: every object the proxy serves with, built once from the
configuration in dependency order, then started and stopped together.

`create_app` runs inside the event loop that will serve (the backends' connection pools
bind to it), so nothing here is built in a second phase.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from proxy import body_screen, expect
from proxy import limits as request_limits
from proxy.auth import Access
from proxy.auth_store import KeyStore
from proxy.auto import AutoRouter, conversation_scope
from proxy.auto_routes import AutoRoutes
from proxy.backends import BackendPool, normalize_model
from proxy.cache import ResponseCache
from proxy.cloud import CloudFallback
from proxy.config import Config
from proxy.dashboard import Dashboard
from proxy.dashboard_series import Recent
from proxy.fanout import Fanout
from proxy.handlers import Handlers
from proxy.learning import Learner
from proxy.logs import AccessLog
from proxy.metrics import Metrics
from proxy.origins import add_headers
from proxy.outcome import Outcome
from proxy.profiler import idle_profiler
from proxy.protocol import drop_server_header
from proxy.registry import Registry
from proxy.relay import Relay
from proxy.routes import Router
from proxy.server import Server
from proxy.shared_limits import SharedLimits, SharedLimitsCollector
from proxy.usage import UsagePipeline, UsageRoutes
from proxy.warm import Warmer

log = logging.getLogger("autoroute.server")


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._background: set[asyncio.Task[None]] = set()
        body_idle = config.timeouts.client_body_idle_seconds
        logging_on = config.logging.access and log.isEnabledFor(logging.INFO)
        self.access = AccessLog(enabled=logging_on, json=config.logging.json)
        # Usage events: the handler only appends to the pipeline's in-memory queue.
        self.usage = UsagePipeline(config.usage)
        # Keys' limits across proxies, when there are keys and a Redis to count in.
        self.shared_limits = (
            SharedLimits(config.shared) if config.shared.redis_url and config.auth.enabled else None
        )
        self.auth = Access(config.auth, self.shared_limits)
        self.key_store = KeyStore(config.auth, self.auth) if config.auth.postgres_dsn else None
        self.backends = BackendPool(config)
        self.usage_routes = UsageRoutes(
            self.usage, self.backends, config.auth.enabled, body_idle, config.limits.max_json_values
        )
        self.relay = Relay(config, self.backends)
        self.registry = Registry(self.backends)
        self.auto = AutoRouter(config, self.backends, self.registry)
        self.warmer = Warmer(config, self.backends, self.auto.memory)
        # Outcomes of auto's decisions, from the usage pipeline, into auto's evidence.
        self.learner = Learner(config.selector.learning, config.usage, self.auto.evidence)
        self.usage.observers.append(self.learner.observe)
        self.metrics = Metrics(self.backends, self.usage, self.key_store)
        self.recent = Recent()  # the status page's charts and auto's recent choices
        self.dashboard = Dashboard(self.backends, self.auto, self.usage, self.metrics, self.recent)
        self.fanout = Fanout(self.backends, self.relay, self._spawn)
        self.cache = (
            ResponseCache(config.cache, self.metrics.registry) if config.cache.enabled else None
        )
        # Off unless configured: then requests no local backend can serve may go out.
        enabled = config.cloud.enabled and config.cloud.providers
        self.cloud = CloudFallback(config, self.metrics.registry) if enabled else None
        self.auto_routes = AutoRoutes(
            self.auto, config.usage, body_idle, self.learner, config.limits, self.cloud
        )
        self.handlers = Handlers(
            config,
            self.backends,
            self.relay,
            self.auto,
            self.auto_routes,
            self.fanout,
            self.metrics,
            self.cache,
            self.cloud,
        )
        if self.cache is not None:
            self.handlers.health_extras["cache"] = self.cache.status
        if self.shared_limits is not None:
            limits = self.shared_limits
            self.handlers.health_extras["limits"] = lambda _: limits.mode()
            self.metrics.registry.register(SharedLimitsCollector(self.shared_limits))
        # The owners the route table names its handlers by.
        self.router = Router(
            {
                "handlers": self.handlers,
                "auto_routes": self.auto_routes,
                "usage_routes": self.usage_routes,
                "dashboard": self.dashboard,
            }
        )
        self.server = Server(
            config,
            self.auth,
            self.metrics,
            self.router,
            # Called in this order once per finished request.
            hooks=(
                self.metrics.finished,
                self.recent.finished,
                self._telemetry,
                self.access.finished,
                self.usage.record,
            ),
        )

    def _telemetry(self, request: web.Request, outcome: Outcome) -> None:
        """What a backend's answer says of its model's speed, for auto's estimates (a
        cloud fallback's answer says nothing of a local backend's), and of its loaded
        models (`BackendPool.ran`); and which model wrote the context an answer `auto`
        chose the model of returned, or answered the chat conversation it continued
        (`proxy.continuations`)."""
        served = outcome.served
        model = served.model
        if served.stats and served.backend and model and not served.provider:
            self.auto.observe(served.backend, model, served.stats)
            self.backends.ran(served.backend, model)
        # Remembered by the registry's name, which `auto` ranks by: the answer's is the
        # one the model list spells.
        if served.context_ending and outcome.decided.decision is not None and model:
            self.auto.continuations.remember_ending(
                conversation_scope(request), served.context_ending, normalize_model(model)
            )
        talk = outcome.decided.conversation
        if talk is not None and model and served.status == 200 and not served.provider:
            self.auto.conversations.remember(talk, normalize_model(model))

    async def start(self, app: web.Application) -> None:
        self.auto.scorer.reload()
        await self.backends.start()
        self.access.start()
        await self.learner.start()
        await self.usage.start()
        if self.shared_limits is not None:
            await self.shared_limits.start()
            self._spawn(self.shared_limits.run())
        if self.cloud is not None:
            await self.cloud.start()
        if self.key_store is not None:
            # Read once before serving (a failure keeps the configured keys), then in
            # the background: the request path never waits for PostgreSQL.
            await self.key_store.refresh()
            self._spawn(self.key_store.run())
        self._spawn(self._watch_artifact())
        self._spawn(self.learner.run())
        if self.warmer.enabled:
            self._spawn(self.warmer.run())
        if self.config.selector.profile_models:
            self._spawn(idle_profiler(self.config, self.backends, self.metrics).run())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

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
        if self.cloud is not None:
            await self.cloud.stop()
        await self.access.stop()
        if self.cache is not None:
            await self.cache.close()
        if self.key_store is not None:
            await self.key_store.close()
        if self.shared_limits is not None:
            await self.shared_limits.close()
        # Last: requests finishing during shutdown still leave their event.
        await self.usage.stop()
        await self.learner.close()  # after the last events: their outcomes are kept
        await body_screen.stop()


APP_KEY = web.AppKey("autoroute", App)


class _CatchAllRouter(web.UrlDispatcher):
    """The application's router, whose one route takes every path: it asks its routes
    in order, each matching in one pass over the path. aiohttp's own walks the path's
    prefixes (`/a/b/c`, `/a/b`, `/a`, `/`) looking each up as a new string, which
    hashes it: a 64 KiB path of slashes held the event loop for half a second, before
    any handler ran or any key was asked for."""

    async def resolve(self, request: web.Request) -> web.UrlMappingMatchInfo:
        for resource in self.resources():
            match, _ = await resource.resolve(request)
            if match is not None:
                return match
        return await super().resolve(request)


def create_app(config: Config) -> web.Application:
    """The proxy's aiohttp application; call it inside the loop that will serve it."""
    with warnings.catch_warnings():
        # aiohttp deprecates a router of one's own, and takes it (3.x).
        warnings.simplefilter("ignore", DeprecationWarning)
        web_app = web.Application(
            client_max_size=config.limits.max_body_bytes, router=_CatchAllRouter()
        )
    app = App(config)
    web_app[APP_KEY] = app
    web_app[request_limits.HELD_BODIES] = request_limits.HeldBodies(
        config.limits.max_held_body_bytes
    )
    web_app.on_startup.append(app.start)
    # Shutdown: the requests in flight get timeouts.shutdown_seconds, then are cancelled.
    web_app.on_shutdown.append(lambda _: app.server.drain())
    web_app.on_cleanup.append(app.stop)
    # Only the answers aiohttp writes (the proxy's own and its errors): relayed ones
    # carry the backend's headers.
    web_app.on_response_prepare.append(drop_server_header)
    web_app.on_response_prepare.append(add_headers)
    # Every path reaches the route table, even one whose decoded form holds a line
    # break (`%0a`), which `.*` would not match (aiohttp's plain-text 404).
    web_app.router.add_route(
        "*", r"/{tail:[\s\S]*}", app.server.handle, expect_handler=expect.expect_handler
    )
    return web_app

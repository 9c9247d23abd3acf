"""Requests that go to every usable backend: the merged model lists, and the copies of a
model-store change `routing.admin_target = "all"` sends to the backends besides the one
that answers the client."""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from proxy.auth import sees_fleet, without_foreign_parent
from proxy.backends import BackendPool, BackendState, NoBackend, normalize_model
from proxy.errors import error_response
from proxy.model_changes import ChangeWatch, ModelChange
from proxy.ollama_answers import objects
from proxy.protocol import AUTOROUTE, JSON, JSON_V1, encoded, go_dumps
from proxy.relay import Relay
from proxy.upstream import BufferedAnswer

log = logging.getLogger("autoroute.server")

Spawn = Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]

# The order one Ollama gives each merged list, newest (or longest remaining) first by a
# time compared in whole seconds, a stable sort: `/api/tags` by modified_at
# (server/model_list_cache.go, sortListModelResponses), `/v1/models` in that order
# (created is modified_at.Unix(), openai.ToListCompletion), `/api/ps` by expires_at
# (PsHandler).
_ORDER = {"/api/tags": "modified_at", "/v1/models": "created", "/api/ps": "expires_at"}
_GO_ZERO_TIME = -62135596800  # time.Time{}.Unix(): a field absent or unreadable


def _unix(value: Any) -> int:
    """time.Time.Unix() of a list entry's time: an RFC 3339 text or Unix seconds."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return math.floor(value)
        if isinstance(value, str):
            return math.floor(datetime.datetime.fromisoformat(value).timestamp())
    except (ValueError, OverflowError, OSError):
        pass
    return _GO_ZERO_TIME


def in_ollamas_order(path: str, items: list[Any]) -> list[Any]:
    """`items` of the list at `path` in the order one Ollama lists them."""
    field = _ORDER.get(path)
    if field is None:
        return items
    return sorted(
        items, key=lambda item: -_unix(item.get(field) if isinstance(item, dict) else None)
    )


# Ollama's default namespace: `library/<name>` names the model `<name>` names.
_LIBRARY = "library/"


def _autoroutes(item: dict[str, Any]) -> bool:
    """Whether a list entry is another autoroute's own `auto` (one in front of another),
    as `proxy.auto_routes` describes it: no longer name reaches it."""
    details = item.get("details")
    return item.get("owned_by") == AUTOROUTE or (
        isinstance(details, dict) and details.get("format") == AUTOROUTE
    )


def _reachable(item: dict[str, Any], claimed: Callable[[str], bool]) -> dict[str, Any]:
    """A backend's list entry whose names the proxy answers itself (`auto`'s) under the
    names Ollama reads as the same model and the proxy routes to the backend."""
    renamed = {
        field: _LIBRARY + value
        for field in ("id", "model", "name")
        if isinstance(value := item.get(field), str) and claimed(value)
    }
    return {**item, **renamed}


class Fanout:
    def __init__(self, backends: BackendPool, relay: Relay, spawn: Spawn) -> None:
        self.backends = backends
        self.relay = relay
        self.spawn = spawn  # runs a background task the application cancels at stop

    async def merged(
        self,
        request: web.Request,
        key: str,
        extra: list[dict[str, Any]],
        only: frozenset[str] | None = None,
        claimed: Callable[[str], bool] | None = None,
    ) -> web.StreamResponse:
        """One list (the field `key`) from every usable backend; with `only` (an API
        key's allow-list, normalised names), the models outside it are left out (`auto`
        entries, `extra`, stay: auto chooses among the allowed models alone). A
        backend's model whose name the proxy answers itself (`claimed`) is listed by
        the longer name that reaches it (`_reachable`), but another autoroute's own
        `auto`, which none reaches."""
        states = await self.backends.usable_now()
        fleet = sees_fleet(request, self.backends.config.auth.enabled)
        if not states:
            reason = self.backends.unavailable_reason(detailed=fleet)
            return error_response(request.path, 503, reason)
        results = await asyncio.gather(
            *(self._listed(s, request.path) for s in states), return_exceptions=True
        )
        docs = [r for r in results if isinstance(r, dict)]
        if not docs:
            # The first one's error names its host and port: the operator's.
            first = str(results[0]) or "timed out"
            reason = f"no backend answered: {first}" if fleet else "no backend answered"
            return error_response(request.path, 502, reason)
        seen: set[str] = set()
        items: list[Any] = []
        for doc in docs:
            # A backend may list anything (see `ollama_answers`): only the objects that
            # name a model are models.
            for item in objects(doc.get(key)):
                ident = item.get("id") or item.get("model") or item.get("name")
                if not isinstance(ident, str) or (
                    only is not None and normalize_model(ident) not in only
                ):
                    continue
                if claimed is not None and claimed(ident):
                    if _autoroutes(item):
                        continue  # `extra` stands for it
                    item, ident = _reachable(item, claimed), _LIBRARY + ident
                # Ollama reads names case-insensitively: one model whatever its case on
                # each backend, listed as the first backend (in the configured order)
                # spells it: the backends' order `registry.spelled` takes its spelling
                # in too, so that `auto`'s choices are found in the list as named.
                if (normal := normalize_model(ident)) not in seen:
                    seen.add(normal)
                    items.append(item if only is None else without_foreign_parent(item, only))
        merged = dict(docs[0])
        # Each backend's list is in Ollama's order, the lists one after the other are
        # not; `auto`'s entries (`extra`) stay at the end.
        merged[key] = in_ollamas_order(request.path, items) + extra
        if request.path.startswith("/v1/"):
            body, content_type = encoded(merged), JSON_V1
        else:
            body, content_type = go_dumps(merged), JSON
        # aiohttp leaves the body out of a HEAD answer and keeps its Content-Length.
        return web.Response(status=200, body=body, headers={"Content-Type": content_type})

    async def _listed(self, state: BackendState, path: str) -> Any:
        """One backend's list, waited for as long as its health check would be
        (`BackendPool.refresh_seconds`): a backend that stays silent, or whose answer
        never ends, must not hold every client's list (an editor asks for one before
        anything else); the others are listed without it."""
        async with asyncio.timeout(self.backends.refresh_seconds):
            return await self.backends.get_json(state, path)

    def replicate(
        self,
        request: web.Request,
        body: bytes,
        primary: BackendState,
        change: ModelChange | None = None,
        waits: bool = False,
    ) -> list[asyncio.Task[None]]:
        """Send the request to every usable backend but `primary`, in the background:
        the client's answer is the primary's alone. What it changes in a backend's
        model list (`change`) is applied as that backend's answer says it succeeded.
        The replicas' tasks, for the caller to cancel should the client leave.
        `waits`: see `Relay.forward`."""
        return [
            self.spawn(self._replicate(request, other, body, change, waits))
            for other in self.backends.usable(exclude=[primary])
        ]

    def unload_elsewhere(self, request: web.Request, body: bytes, model: str) -> None:
        """`ollama stop <model>` through the proxy: the backend chosen for it answers
        the client, and every other usable backend that lists the model is sent the
        same unload in the background, so that the model is loaded nowhere, as on one
        Ollama (whose `ps` no longer lists it). A backend without it is not asked."""
        try:
            primary = self.backends.choose(model)
        except NoBackend:
            return  # the relay answers why
        name = normalize_model(model)
        for other in self.backends.usable(exclude=[primary]):
            if other.models is not None and name in other.models:
                self.spawn(self._replicate(request, other, body, None, False))

    async def _replicate(
        self,
        request: web.Request,
        state: BackendState,
        body: bytes,
        change: ModelChange | None,
        waits: bool,
    ) -> None:
        try:
            answer = BufferedAnswer()
            head = await self.relay.exchange(request, state, body, answer, waits=waits)
            text = await answer.collect()
        except Exception as exc:  # a replica failing must not touch the client's answer
            log.warning("%s %s on %s failed: %s", request.method, request.path, state.label, exc)
            return
        log.info("%s %s on %s answered %d", request.method, request.path, state.label, head.status)
        if change is not None:
            ChangeWatch(self.backends, state, change).answered(head.status, text)

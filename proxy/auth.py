"""Access control: API keys (stored as SHA-256 hashes), roles, per-key model allow-lists,
requests per minute and concurrent inference requests. Off when no key is configured
and no key store (`auth.postgres_dsn`, see `auth_store`) is. With `shared.redis_url`
the limits count across proxies (`shared_limits`, one Redis round trip per request).

Without `shared.redis_url`, everything here runs on the request path and is in memory:
one SHA-256 of the presented key, dict lookups, a token bucket. A refusal is in
Ollama's error shape (`{"error": "..."}`, the OpenAI shape on `/v1/...`); 429 carries
`Retry-After`.
The presented key is never stored or logged; only the configured key's id is.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import web

from proxy import header_values
from proxy.aiohttp_internals import state_get
from proxy.backends import normalize_model
from proxy.config_services import ApiKey, Auth
from proxy.errors import error_response
from proxy.routes import ADMIN, FULL, PUBLIC, SCRAPE, Route, find, runs_a_model
from proxy.shared_limits import STREAMS_FULL, SharedDown, SharedLimits

UNAUTHORIZED = "unauthorized"
# The hex digits of a key's SHA-256 that usage events and feedback carry
# (`selector_model.usage_event.Client.api_key_hash`).
KEY_HASH_CHARS = 16

log = logging.getLogger("autoroute.auth")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A new random API key and the SHA-256 to put in `auth.keys`."""
    key = "ar-" + secrets.token_urlsafe(32)
    return key, hash_key(key)


@dataclass(slots=True)
class KeyState:
    """A configured key and its live counters."""

    id: str  # its name: what usage events and the access log show
    # Its SHA-256 (lower-case hex): the key itself, where the name is only a label a
    # revoked key's successor may take. Whose cached answers a request may read, whose
    # requests it may rate and its limits in Redis go by this (`hash`), never by the
    # name.
    sha256: str
    admin: bool
    models: frozenset[str] | None  # normalised names; None: any
    rate: float  # tokens per second (0: unlimited)
    capacity: float
    tokens: float
    stamp: float
    max_streams: int
    # Inference requests of this key running in this process, however admitted: the
    # per-process limit while Redis is down counts the ones it admitted too.
    streams: int = 0

    @classmethod
    def of(cls, key: ApiKey) -> KeyState:
        rpm = max(key.requests_per_minute, 0)
        return cls(
            id=key.id,
            sha256=key.sha256.lower(),
            admin=key.role == "admin",
            models=frozenset(normalize_model(m) for m in key.models) if key.models else None,
            rate=rpm / 60.0,
            capacity=float(rpm),
            tokens=float(rpm),
            stamp=-math.inf,
            max_streams=max(key.max_streams, 0),
        )

    def update(self, key: ApiKey) -> None:
        """Take a changed definition of the same key in place. In place, not a new
        state: requests in flight hold this object and give their stream slot back
        to it, and the bucket's spent tokens must not refill on a refresh."""
        fresh = KeyState.of(key)
        self.id, self.admin, self.models = fresh.id, fresh.admin, fresh.models
        self.rate, self.capacity = fresh.rate, fresh.capacity
        self.tokens = min(self.tokens, fresh.capacity)
        self.max_streams = fresh.max_streams

    @property
    def hash(self) -> str:
        """The key's id in usage events and feedback beside its name (`api_key_hash`):
        its SHA-256's first 16 hex digits, as a keyless proxy's events name a key."""
        return self.sha256[:KEY_HASH_CHARS]

    def allows_model(self, model: str) -> bool:
        return self.models is None or normalize_model(model) in self.models

    @property
    def sees_every_model(self) -> bool:
        """May learn the name of every model, and use any: an admin key, or one
        without a model list (which the lists show every model anyway)."""
        return self.admin or self.models is None

    def take(self, now: float) -> int:
        """Spend one request from the bucket: 0, or the seconds until one is available."""
        if self.rate <= 0:
            return 0
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return max(1, math.ceil((1.0 - tokens) / self.rate))
        self.tokens = tokens - 1.0
        return 0


KEY_REQUEST = web.RequestKey("autoroute_key", KeyState)


def without_foreign_parent(entry: Any, models: frozenset[str]) -> Any:
    """A model's description (an `/api/tags` or `/api/ps` entry, an `/api/show`
    answer) as a key whose list is `models` (normalised names) reads it: a model made
    from another (`ollama create` FROM a model) names that one in
    `details.parent_model`, which stays only when the key may use it; else it is "", as
    Ollama gives it for a model made from no other. `entry` itself when unchanged."""
    details = entry.get("details") if isinstance(entry, dict) else None
    if not isinstance(details, dict):
        return entry
    parent = details.get("parent_model")
    if not isinstance(parent, str) or not parent or normalize_model(parent) in models:
        return entry
    return {**entry, "details": {**details, "parent_model": ""}}


def sees_fleet(request: web.BaseRequest, keys_on: bool) -> bool:
    """Whether the caller may learn what names the fleet: backends' URLs, their errors
    (which name hosts, ports and what failed), every model. Any caller without API
    keys (`keys_on`), else one with a key that may see every model
    (`KeyState.sees_every_model`: an admin key, or one without a model list)."""
    key = state_get(request, KEY_REQUEST)
    return not keys_on or (key is not None and key.sees_every_model)


# The request counts in its key's `streams`.
STREAM_SLOT = web.RequestKey("autoroute_stream_slot", bool)
# Its stream slot for Redis (`shared_limits`), by its member name: held there, or to be
# put there when Redis answers again.
SHARED_SLOT = web.RequestKey("autoroute_shared_slot", str)


# Routes a key with a model list may not call (unless keyless, see `Access.keyless`).
_FULL = frozenset({FULL, SCRAPE})


def _denied(path: str, status: int, message: str, retry_after: int = 0) -> web.Response:
    response = error_response(path, status, message)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response


class Admission(NamedTuple):
    """What `Access.admit` decided: the request's key (None: none presented), and a
    refusal with its reason for the metrics, or none to go on. A named tuple: one is
    made per request."""

    key: KeyState | None
    refusal: web.Response | None = None
    reason: str = ""


class Access:
    def __init__(self, settings: Auth, shared: SharedLimits | None = None) -> None:
        self.enabled = settings.enabled
        # Limits counted across proxies in Redis: admission goes through `admit_shared`.
        self.shared = shared
        self.configured = settings.keys
        self.keys = {k.sha256.lower(): KeyState.of(k) for k in settings.keys}
        # Who may call which route is the route table's (`proxy.routes`).
        self.keyless = frozenset({PUBLIC, SCRAPE} if settings.metrics_open else {PUBLIC})
        # Stored keys left out for an id another key has, by hash: warned about once.
        self._clashing: frozenset[str] = frozenset()

    def replace(self, stored: Iterable[ApiKey]) -> None:
        """The configured keys plus `stored` become the key set, in one assignment
        (the request path only ever sees the old dict or the new one). A key present
        before keeps its state object and so its counters; one absent now is gone.
        The configuration wins over the store for a hash in both."""
        stored = tuple(stored)  # read twice
        old = self.keys
        keys: dict[str, KeyState] = {}
        # A key's id names it in usage events, the access log and the metrics (its
        # limits, its cached answers, whose requests it may rate and which prompts it
        # retries go by its hash). The configuration refuses an id used twice; a stored
        # key whose id a configured key (or an earlier stored one) has is left out,
        # rather than pass for that key where people read names.
        configured = {k.sha256.lower() for k in self.configured}
        taken = {k.id for k in self.configured}
        clashing: set[str] = set()
        for key in stored:
            digest = key.sha256.lower()
            if digest in configured:
                continue
            if key.id in taken:
                clashing.add(digest)
                if digest not in self._clashing:
                    log.warning(
                        "stored API key %s... left out: the name %r is another key's",
                        digest[:8],
                        key.id,
                    )
            taken.add(key.id)
        self._clashing = frozenset(clashing)
        for key in (*stored, *self.configured):
            digest = key.sha256.lower()
            if digest in clashing:
                continue
            state = old.get(digest)
            if state is None:
                state = KeyState.of(key)
            else:
                state.update(key)
            keys[digest] = state
        self.keys = keys

    def identify(self, request: web.Request) -> KeyState | None:
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer":
                return None
        else:
            token = request.headers.get("X-Api-Key", "")  # Anthropic-style clients
        token = token.strip()
        if not token:
            return None
        # The bytes as sent: a token that is not UTF-8 hashes like any other wrong key.
        return self.keys.get(hashlib.sha256(header_values.utf8(token)).hexdigest())

    def _authorize(self, request: web.Request) -> tuple[Admission | None, Route | None]:
        """Who the request is and whether its key may call the route: an `Admission`
        when that decides it, else None (the limits decide) and the route."""
        path = request.path
        route = find(path)
        key = self.identify(request)
        if key is None:
            if route is not None and route.access in self.keyless:
                return Admission(None), route
            return Admission(None, _denied(path, 401, UNAUTHORIZED), "unauthorized"), route
        request[KEY_REQUEST] = key
        if route is None or route.access in self.keyless:
            return None, route
        if not key.admin and route.access == ADMIN:
            refusal = _denied(path, 403, f"forbidden: {path} needs an admin key")
            return Admission(key, refusal, "forbidden"), route
        if not key.sees_every_model and route.access in _FULL:
            # Those views name every model: a key with a model list must not learn the
            # others' names from them.
            message = f"forbidden: {path} needs a key without a model list"
            return Admission(key, _denied(path, 403, message), "forbidden"), route
        return None, route

    def admit(self, request: web.Request, now: float) -> Admission:
        """Whether the request goes on, by this process's counters. A stream slot
        taken here is given back by `release`."""
        decided, route = self._authorize(request)
        if decided is not None:
            return decided
        return self._limit_locally(request, request[KEY_REQUEST], route, now)

    async def admit_shared(self, request: web.Request, now: float) -> Admission:
        """`admit` with the limits counted in Redis (`shared_limits`) when it answers,
        else by this process's counters."""
        decided, route = self._authorize(request)
        if decided is not None:
            return decided
        key = request[KEY_REQUEST]
        shared = self.shared
        if shared is None or not shared.up:
            return self._limit_locally(request, key, route, now)
        streams = key.max_streams if runs_a_model(route, request.method) else 0
        if not key.rate and not streams:
            return Admission(key)
        try:
            wait, slot = await shared.admit(key.hash, key.rate, key.capacity, streams)
        except SharedDown:
            return self._limit_locally(request, key, route, now)
        if wait == STREAMS_FULL:
            return _too_many_streams(request.path, key)
        if wait:
            return _rate_limited(request.path, key, wait)
        if slot is not None:
            request[SHARED_SLOT] = slot
            key.streams += 1
            request[STREAM_SLOT] = True
        return Admission(key)

    def _limit_locally(
        self, request: web.Request, key: KeyState, route: Route | None, now: float
    ) -> Admission:
        wait = key.take(now)
        if wait:
            return _rate_limited(request.path, key, wait)
        # A method the route does not serve runs nothing (gin's 405): no stream.
        if key.max_streams and runs_a_model(route, request.method):
            if key.streams >= key.max_streams:
                return _too_many_streams(request.path, key)
            key.streams += 1
            request[STREAM_SLOT] = True
            if self.shared is not None:
                # Redis is down: the stream counts there once it answers again.
                request[SHARED_SLOT] = self.shared.hold_unregistered(key.hash)
        return Admission(key)

    def release(self, request: web.Request, key: KeyState | None) -> None:
        if key is None:
            return
        if request.get(STREAM_SLOT):
            key.streams -= 1
        if self.shared is not None and (slot := request.get(SHARED_SLOT)) is not None:
            self.shared.release(slot)


def _rate_limited(path: str, key: KeyState, wait: int) -> Admission:
    message = "rate limit exceeded: too many requests per minute"
    return Admission(key, _denied(path, 429, message, wait), "rate_limited")


def _too_many_streams(path: str, key: KeyState) -> Admission:
    message = f"too many concurrent requests (limit {key.max_streams})"
    return Admission(key, _denied(path, 429, message, 1), "streams")

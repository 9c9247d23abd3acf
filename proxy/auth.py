"""Access control: API keys (stored as SHA-256 hashes), roles, per-key model allow-lists,
requests per minute and concurrent inference requests. Off when no key is configured
and no key store (`auth.postgres_dsn`, see `auth_store`) is.

Everything here runs on the request path and is in memory: one SHA-256 of the
presented key, dict lookups, a token bucket. A refusal is in Ollama's error shape
(`{"error": "..."}`, the OpenAI shape on `/v1/...`); 429 carries `Retry-After`.
The presented key is never stored or logged; only the configured key's id is.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from aiohttp import web

from proxy import header_values
from proxy.backends import normalize_model
from proxy.config import ApiKey, Auth
from proxy.errors import error_response
from proxy.routes import ADMIN, PUBLIC, SCRAPE, find

UNAUTHORIZED = "unauthorized"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A new random API key and the SHA-256 to put in `auth.keys`."""
    key = "ar-" + secrets.token_urlsafe(32)
    return key, hash_key(key)


@dataclass(slots=True)
class KeyState:
    """A configured key and its live counters."""

    id: str
    admin: bool
    models: frozenset[str] | None  # normalised names; None: any
    rate: float  # tokens per second (0: unlimited)
    capacity: float
    tokens: float
    stamp: float
    max_streams: int
    streams: int = 0

    @classmethod
    def of(cls, key: ApiKey) -> KeyState:
        rpm = max(key.requests_per_minute, 0)
        return cls(
            id=key.id,
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

    def allows_model(self, model: str) -> bool:
        return self.models is None or normalize_model(model) in self.models

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
STREAM_SLOT = web.RequestKey("autoroute_stream_slot", bool)


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
    def __init__(self, settings: Auth) -> None:
        self.enabled = settings.enabled
        self.configured = settings.keys
        self.keys = {k.sha256.lower(): KeyState.of(k) for k in settings.keys}
        # Who may call which route is the route table's (`proxy.routes`).
        self.keyless = frozenset({PUBLIC, SCRAPE} if settings.metrics_open else {PUBLIC})

    def replace(self, stored: Iterable[ApiKey]) -> None:
        """The configured keys plus `stored` become the key set, in one assignment
        (the request path only ever sees the old dict or the new one). A key present
        before keeps its state object and so its counters; one absent now is gone.
        The configuration wins over the store for a hash in both."""
        old = self.keys
        keys: dict[str, KeyState] = {}
        for key in (*stored, *self.configured):
            digest = key.sha256.lower()
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

    def admit(self, request: web.Request, now: float) -> Admission:
        """Whether the request goes on. A stream slot taken here is given back by
        `release`."""
        path = request.path
        route = find(path)
        key = self.identify(request)
        if key is None:
            if route is not None and route.access in self.keyless:
                return Admission(None)
            return Admission(None, _denied(path, 401, UNAUTHORIZED), "unauthorized")
        request[KEY_REQUEST] = key
        if not key.admin and route is not None and route.access == ADMIN:
            refusal = _denied(path, 403, f"forbidden: {path} needs an admin key")
            return Admission(key, refusal, "forbidden")
        wait = key.take(now)
        if wait:
            message = "rate limit exceeded: too many requests per minute"
            return Admission(key, _denied(path, 429, message, wait), "rate_limited")
        if key.max_streams and route is not None and route.inference:
            if key.streams >= key.max_streams:
                message = f"too many concurrent requests (limit {key.max_streams})"
                return Admission(key, _denied(path, 429, message, 1), "streams")
            key.streams += 1
            request[STREAM_SLOT] = True
        return Admission(key)

    @staticmethod
    def release(request: web.Request, key: KeyState | None) -> None:
        if key is not None and request.get(STREAM_SLOT):
            key.streams -= 1

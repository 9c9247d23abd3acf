"""Entries kept in aiocache (memory, or Redis shared by several proxies), and the
recorder that captures an answer as the relay sends it.

The request path awaits only the lookup, bounded by `lookup_timeout_seconds`; a
failed lookup (Redis down) is a miss with a warning. Storing runs in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiocache import SimpleMemoryCache
from aiocache.serializers import NullSerializer
from prometheus_client import CollectorRegistry, Counter

from proxy.config_services import Cache as CacheConfig
from proxy.http11 import ResponseHead
from proxy.origins import PER_ORIGIN
from proxy.outcome import Served
from proxy.tasks import cancellation_lost

log = logging.getLogger("autoroute.cache")

# Response headers a hit does not repeat: the framing is the replay's own, and so are
# the CORS headers, which answer the hit's own origin. (`Date` is kept in its place;
# the replay gives it the hit's time.)
_NOT_KEPT = PER_ORIGIN | {"content-length", "transfer-encoding", "connection", "keep-alive"}
_WARN_EVERY_SECONDS = 60.0


@dataclass(slots=True)
class Entry:
    """A kept answer: the backend's status and headers, and its body as the client got
    it (with the backend's chunk framing when `chunked`)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    chunked: bool
    body: bytes

    def encode(self) -> bytes:
        head = orjson.dumps([self.status, self.reason, self.headers, self.chunked])
        return head + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        head, _, body = data.partition(b"\n")
        status, reason, headers, chunked = orjson.loads(head)
        return cls(status, reason, [(n, v) for n, v in headers], chunked, body)


class Capture:
    """The answer's bytes as the relay sends them; given up past `limit` bytes."""

    __slots__ = ("head", "headers", "key", "limit", "parts", "size")

    def __init__(self, key: str, limit: int) -> None:
        self.key = key
        self.limit = limit
        self.head: ResponseHead | None = None
        self.headers: list[tuple[str, str]] = []
        self.parts: list[bytes] | None = []
        self.size = 0

    def started(self, head: ResponseHead, headers: list[tuple[str, str]]) -> None:
        """The answer's head went to the client with the backend's `headers`."""
        self.head = head
        self.headers = [(n, v) for n, v in headers if n.lower() not in _NOT_KEPT]

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.parts = None
        elif self.parts is not None:
            self.parts.append(data)

    def entry(self, served: Served) -> Entry | None:
        """The entry to keep: only a whole 200 answer that ended with its final chunk
        (its done_reason or finish_reason read), recorded within the size bound. An
        error, a cancelled or cut-off answer, a bounced retry is not one, nor an HTTP/1.0
        client's answer (the relay buffers it whole instead of relaying it)."""
        head = self.head
        if (
            head is None
            or self.parts is None
            or served.status != 200
            or head.status != 200
            or served.error
            or served.cancelled
            or "done_reason" not in served.stats
        ):
            return None
        return Entry(head.status, head.reason, self.headers, head.chunked, b"".join(self.parts))


class ResponseCache:
    def __init__(self, config: CacheConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self._registry = registry
        self.backend: Any = _backend(config)
        self.memory = config.backend == "memory"
        # A dict read cannot hang: no timer (aiocache's 0 is none) for the memory backend.
        self._lookup_timeout = 0 if self.memory else config.lookup_timeout_seconds
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned = 0.0
        self.hits = Counter(
            "autoroute_cache_hits", "Answers replayed from the cache", registry=registry
        )
        self.misses = Counter(
            "autoroute_cache_misses",
            "Cacheable requests the cache could not answer",
            registry=registry,
        )
        self.stored = Counter(
            "autoroute_cache_stored", "Answers kept in the cache", registry=registry
        )
        self.failures = Counter(
            "autoroute_cache_lookup_failures",
            "Lookups that failed or timed out (counted as misses too)",
            registry=registry,
        )
        self.bytes_saved = Counter(
            "autoroute_cache_bytes_saved",
            "Body bytes answered from the cache instead of a backend",
            registry=registry,
        )

    def status(self, detailed: bool = True) -> dict[str, object]:
        """For `GET /api/autoroute/health`: where answers are kept and, `detailed`, what
        came of it (every key's requests: only for a caller who sees the fleet)."""
        kept: dict[str, object] = {
            "backend": self.config.backend,
            "ttl_seconds": self.config.ttl_seconds,
        }
        if not detailed:
            return kept
        return {
            **kept,
            "entries": len(self.backend._cache) if self.memory else None,
            **{
                name: int(self._registry.get_sample_value(f"autoroute_cache_{name}_total") or 0)
                for name in ("hits", "misses", "bytes_saved")
            },
        }

    async def lookup(self, key: str) -> Entry | None:
        """The entry kept under `key`, else None (a miss, counted). A request cancelled
        during the lookup (its client left) ends with its cancellation, also when the
        lookup's bound lost it (`tasks.cancellation_lost`)."""
        try:
            data = await self.backend.get(key, timeout=self._lookup_timeout)
            entry = Entry.decode(data) if data is not None else None
        except Exception as exc:  # Redis down or slow, a foreign value: a miss
            self.failures.inc()
            self._warn(f"cache lookup failed, answering from a backend: {exc!r}")
            entry = None
        if cancellation_lost():
            raise asyncio.CancelledError
        if entry is None:
            self.misses.inc()
        else:
            self.hits.inc()
            self.bytes_saved.inc(len(entry.body))
        return entry

    def capture(self, key: str) -> Capture:
        return Capture(key, self.config.max_entry_bytes)

    def finished(self, capture: Capture, served: Served) -> None:
        """The answer ended: kept in the background when it is whole."""
        entry = capture.entry(served)
        if entry is None:
            return
        task = asyncio.get_running_loop().create_task(self._store(capture.key, entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store(self, key: str, entry: Entry) -> None:
        try:
            if self.memory:
                self._make_room()
            await self.backend.set(key, entry.encode(), ttl=self.config.ttl_seconds)
            self.stored.inc()
        except Exception as exc:
            self._warn(f"cache store failed: {exc!r}")

    def _make_room(self) -> None:
        # aiocache's memory backend has no size bound of its own: its dict keeps
        # insertion order, so the oldest entries go first.
        kept: dict[str, Any] = self.backend._cache
        while len(kept) >= self.config.max_entries and kept:
            oldest = next(iter(kept))
            kept.pop(oldest, None)
            handle = self.backend._handlers.pop(oldest, None)
            if handle is not None:
                handle.cancel()

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_SECONDS:
            self._warned = now
            log.warning(message)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.memory:
            await self.backend.close()
        else:
            # aiocache 0.12 closes redis-py's client with `close`, which redis-py 5
            # deprecates for `aclose`: the client is closed directly.
            await self.backend.client.aclose()


def _backend(config: CacheConfig) -> Any:
    # Entries are bytes of their own encoding: stored and read back as they are.
    serializer = NullSerializer(encoding=None)
    ttl = config.ttl_seconds
    if config.backend == "memory":
        return SimpleMemoryCache(serializer=serializer, namespace=config.namespace, ttl=ttl)
    # aiocache offers its Redis backend only where redis-py is installed
    # (`aiocache[redis]`): imported when configured, so the memory backend needs none.
    from aiocache.backends.redis import RedisCache

    url = urlsplit(config.redis_url)
    return RedisCache(
        serializer=serializer,
        namespace=config.namespace,
        ttl=ttl,
        endpoint=url.hostname or "127.0.0.1",
        port=url.port or 6379,
        db=int(url.path.strip("/") or 0),
        password=url.password,
        create_connection_timeout=config.lookup_timeout_seconds,
    )

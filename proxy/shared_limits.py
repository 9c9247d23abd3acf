"""Per-key request rates and stream caps counted in Redis, so that several proxies behind
one address hold one limit between them (`shared.redis_url`).

Each admission is one Redis round trip: a Lua script that spends from the key's token
bucket (the same bucket `auth.KeyState.take` keeps in memory: capacity
`requests_per_minute`, refilled continuously) and, for an inference request, takes a
stream slot. Time is Redis's own (`TIME`), so the proxies' clocks need not agree.
A key's bucket and slots are named by its hash (`auth.KeyState.hash`), never by its
name, which a revoked key's successor may take.

A stream slot is a member of a sorted set per key, scored by when it expires. The proxy
holding it puts it back with a later expiry while the stream runs (`run`) and removes it
when the request ends, cancelled or not; a proxy that dies leaves slots that expire
after `stream_slot_ttl_seconds` and are swept by the next admission.

Redis unreachable or too slow (`timeout_seconds`) raises `SharedDown` to the caller,
which then applies the per-process limits; `run` tries Redis again every
`retry_seconds` and the shared limits resume when it answers. Each change is logged.
A stream admitted by the per-process limits meanwhile still gets a slot name
(`hold_unregistered`); when Redis answers again, every slot of a stream still running
here is put into Redis (`keep_held`) before any admission counts there again, so that
the replicas see every stream that runs, however it was admitted, and admit no new one
until the total is below `max_streams`. The same put, every third of the TTL, brings
back slots Redis lost (restarted, or expired during an outage longer than the TTL).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Iterable
from typing import Literal
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from proxy.config_services import Shared
from proxy.tasks import cancellation_lost

log = logging.getLogger("autoroute.shared")

# KEYS: bucket, slots. ARGV: rate per second, capacity, max streams (0: no slot),
# slot member, slot ttl. Returns {seconds to wait (0: spent), slot taken (0/1)}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
if rate > 0 then
  local capacity = tonumber(ARGV[2])
  local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
  local tokens = tonumber(state[1]) or capacity
  local stamp = tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + math.max(now - stamp, 0) * rate)
  if tokens < 1 then
    redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
    return {math.max(1, math.ceil((1 - tokens) / rate)), 0}
  end
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'stamp', tostring(now))
  redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
end
local most = tonumber(ARGV[3])
if most <= 0 then
  return {0, 0}
end
local ttl = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= most then
  return {-1, 0}
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
redis.call('EXPIRE', KEYS[2], math.ceil(ttl) + 1)
return {0, 1}
"""

# KEYS: the slot sets. ARGV: ttl, then one member per key. Puts each slot in its set
# (back, if Redis lost it) expiring a TTL from now, whatever the set's count: the
# streams run already.
KEEP = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, until_, ARGV[i + 1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[1])) + 1)
end
return 0
"""

# The request was refused for its streams rather than its rate.
STREAMS_FULL = -1


class SharedDown(Exception):
    """Redis did not answer: the caller applies the per-process limits."""


class SharedLimits:
    def __init__(self, settings: Shared) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.timeout_seconds,
            socket_connect_timeout=settings.timeout_seconds,
        )
        self._admit = self.redis.register_script(ADMIT)
        self._keep = self.redis.register_script(KEEP)
        parts = urlsplit(settings.redis_url)
        # Where Redis is, for the logs: never the URL itself (it may hold a password).
        self.where = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path
        self.up = True
        self.outages = 0
        self._member = f"{os.urandom(6).hex()}:"
        self._counter = itertools.count(1)
        # Slots this process holds, by member: the set they are in. `held` are in Redis;
        # `unregistered` were taken by the per-process limits while Redis was down.
        self.held: dict[str, str] = {}
        self.unregistered: dict[str, str] = {}
        self._releasing: set[asyncio.Task[None]] = set()

    def mode(self) -> Literal["shared", "local"]:
        """Where the limits count now: "local" while Redis is unreachable."""
        return "shared" if self.up else "local"

    def _key(self, kind: str, key_hash: str) -> str:
        return f"{self.settings.key_prefix}{kind}:{key_hash}"

    async def start(self) -> None:
        """Ask Redis once before serving, so a Redis down at start is said at start."""
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            self._down(exc)

    def _new_member(self) -> str:
        return f"{self._member}{next(self._counter)}"

    def hold_unregistered(self, key_hash: str) -> str:
        """A slot for a stream the per-process limits admitted while Redis is down: put
        into Redis when it answers again (`keep_held`), unless the stream ended first."""
        member = self._new_member()
        self.unregistered[member] = self._key("streams", key_hash)
        return member

    async def admit(
        self, key_hash: str, rate: float, capacity: float, max_streams: int
    ) -> tuple[int, str | None]:
        """(seconds to wait, 0: admitted; `STREAMS_FULL`: every stream slot is taken,
        and the slot taken, when `max_streams` asks for one). Raises `SharedDown`.
        A request cancelled during this call (its client left) ends with its
        cancellation, also when redis-py lost it (`tasks.cancellation_lost`): a slot it
        was seen to take goes back at once; one taken by a call cut short is in no
        `held`, so nothing keeps it: it expires after the TTL."""
        member = self._new_member() if max_streams else ""
        slots = self._key("streams", key_hash)
        try:
            wait, taken = await self._admit(
                keys=[self._key("rate", key_hash), slots],
                args=[rate, capacity, max_streams, member, self.settings.stream_slot_ttl_seconds],
            )
        except (RedisError, OSError) as exc:
            self._down(exc)
            if cancellation_lost():
                raise asyncio.CancelledError from exc
            raise SharedDown from exc
        if cancellation_lost():
            if taken:
                self._remove_later(slots, member)
            raise asyncio.CancelledError
        if not taken:
            return int(wait), None
        self.held[member] = slots
        return 0, member

    def release(self, member: str) -> None:
        """Give a slot back, without making the request wait for Redis."""
        if self.unregistered.pop(member, None) is not None:
            return  # not in Redis
        slots = self.held.pop(member, None)
        if slots is not None:
            self._remove_later(slots, member)

    def _remove_later(self, slots: str, member: str) -> None:
        task = asyncio.get_running_loop().create_task(self._remove(slots, member))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _remove(self, slots: str, member: str) -> None:
        try:
            await self.redis.zrem(slots, member)
        except (RedisError, OSError) as exc:
            # The slot expires by itself once no longer kept.
            self._down(exc)

    async def run(self) -> None:
        """Keep held slots in Redis while it is up (ping it when none is held); try it
        again while it is down, and count there again once the slots of streams still
        running are in it."""
        keep_every = self.settings.stream_slot_ttl_seconds / 3
        while True:
            await asyncio.sleep(keep_every if self.up else self.settings.retry_seconds)
            try:
                if self.up and (self.held or self.unregistered):
                    await self.keep_held()
                elif self.up:
                    # Nothing to keep: a ping finds Redis gone all the same, so that
                    # health and the metrics say so before the next request does.
                    await self.redis.ping()
                else:
                    await self.redis.ping()
                    registered = len(self.unregistered)
                    await self.keep_held()
                    self.up = True
                    log.info(
                        "shared limits: Redis at %s answers again; %d stream slots taken "
                        "meanwhile put into it",
                        self.where,
                        registered,
                    )
            except (RedisError, OSError) as exc:
                self._down(exc)

    async def keep_held(self) -> None:
        """Put every slot of a stream running here into Redis, expiring a TTL from now:
        those held, and those taken while Redis was down, which are held from then on.
        Until none is left unregistered: streams the per-process limits admit while
        this waits for Redis are put in too. A slot given back meanwhile is removed
        again (its removal may have reached Redis first)."""
        while self.held or self.unregistered:
            batch = {**self.held, **self.unregistered}
            await self._keep(
                keys=list(batch.values()),
                args=[self.settings.stream_slot_ttl_seconds, *batch],
            )
            for member, slots in batch.items():
                if self.unregistered.pop(member, None) is not None:
                    self.held[member] = slots
                elif member not in self.held:
                    self._remove_later(slots, member)
            if not self.unregistered:
                return

    def _down(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            self.outages += 1
            log.warning(
                "shared limits: Redis at %s unreachable (%s); limits are per process "
                "until it answers again",
                self.where,
                exc,
            )

    async def close(self) -> None:
        for member in [*self.held, *self.unregistered]:
            self.release(member)
        if self._releasing:
            await asyncio.wait(set(self._releasing), timeout=self.settings.timeout_seconds * 2)
        await self.redis.aclose()


class SharedLimitsCollector(Collector):
    """Whether the limits count across proxies now, for an alert on a Redis outage
    (the proxies go on serving with per-process limits, which only this tells)."""

    def __init__(self, shared: SharedLimits) -> None:
        self.shared = shared

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "autoroute_shared_limits_up",
            "1 while keys' limits count in Redis across proxies, 0 while per process",
        )
        up.add_metric([], float(self.shared.up))
        outages = CounterMetricFamily(
            "autoroute_shared_limits_outages",
            "Times Redis became unreachable and the limits fell back to per process",
        )
        outages.add_metric([], self.shared.outages)
        held = GaugeMetricFamily(
            "autoroute_shared_stream_slots_held", "Stream slots this proxy holds in Redis"
        )
        held.add_metric([], len(self.shared.held))
        unregistered = GaugeMetricFamily(
            "autoroute_shared_stream_slots_unregistered",
            "Streams this proxy admitted by its own limits while Redis was unreachable, "
            "to be counted in Redis when it answers",
        )
        unregistered.add_metric([], len(self.shared.unregistered))
        yield from (up, outages, held, unregistered)

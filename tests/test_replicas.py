"""Several proxies, one behaviour: two proxies on this machine, the same emulator behind
both and the same Redis (each test under a key prefix of its own), hold one limit per
key between them; with Redis unreachable each falls back to its own limits and says so,
and goes back to the shared limits when Redis answers again."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from multidict import CIMultiDict

from proxy.app import APP_KEY
from proxy.auth import KEY_HASH_CHARS, hash_key
from proxy.config_services import ApiKey, Auth, Shared
from proxy.shared_limits import STREAMS_FULL, SharedLimits
from tests.support import Emulator, Proxy, ServerThread, bearer, free_port, running_stream
from tests.usage_services import wait_for

REDIS = "redis://127.0.0.1:6379/0"
RATED, STREAMER = "k-rated-1", "k-streamer-1"
RATE = 3  # requests per minute: one more within a test's run is always refused
KEYS = Auth(
    keys=(
        ApiKey(sha256=hash_key(RATED), name="rated", requests_per_minute=RATE),
        ApiKey(sha256=hash_key(STREAMER), name="streamer", max_streams=1),
    )
)
# A stream long enough to be running whenever the test looks (1 ms a chunk).
LONG = {"model": "llama3.1:8b", "prompt": "long", "options": {"num_predict": 100_000}}
SHORT = {"model": "llama3.1:8b", "prompt": "short", "stream": False}


def slots_of(key: str, prefix: str = "autoroute:") -> str:
    """The Redis set of a key's stream slots: named by its hash, not its name."""
    return f"{prefix}streams:{hash_key(key)[:KEY_HASH_CHARS]}"


async def call(
    url: str, method: str, path: str, key: str | None, body: object = None
) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            url + path,
            headers=bearer(key) if key else {},
            data=None if body is None else orjson.dumps(body),
        ) as resp,
    ):
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def limits_mode(proxy: Proxy) -> str:
    status, _, body = await call(proxy.url, "GET", "/api/autoroute/health", None)
    assert status == 200
    return str(orjson.loads(body)["limits"])


async def metric(proxy: Proxy, name: str) -> float:
    status, _, body = await call(proxy.url, "GET", "/metrics", STREAMER)
    assert status == 200
    (value,) = [
        line.split()[-1] for line in body.decode().splitlines() if line.split(" ")[0] == name
    ]
    return float(value)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards."""
    name = f"autoroute-test-{uuid.uuid4().hex}:"
    yield name

    async def clean() -> None:
        client = aioredis.Redis.from_url(REDIS)
        async for key in client.scan_iter(match=name + "*"):
            await client.delete(key)
        await client.aclose()

    asyncio.run(clean())


def pair(servers: ServerThread, emulator: Emulator, shared: Shared) -> tuple[Proxy, Proxy]:
    return (
        Proxy(servers, [emulator.url], auth=KEYS, shared=shared),
        Proxy(servers, [emulator.url], auth=KEYS, shared=shared),
    )


@pytest.fixture
def replicas(
    servers: ServerThread, own_emulator: Emulator, prefix: str
) -> Iterator[tuple[Proxy, Proxy]]:
    # Slots live far longer than any test: a slot freed in a test was given back.
    shared = Shared(redis_url=REDIS, key_prefix=prefix, stream_slot_ttl_seconds=600)
    proxies = pair(servers, own_emulator, shared)
    yield proxies
    for proxy in proxies:
        proxy.stop()


async def test_a_keys_rate_holds_across_both_proxies(replicas: tuple[Proxy, Proxy]) -> None:
    one, two = replicas
    assert [await limits_mode(p) for p in replicas] == ["shared", "shared"]
    for proxy in (one, two, one)[:RATE]:
        assert (await call(proxy.url, "GET", "/api/tags", RATED))[0] == 200
    for proxy in (two, one):
        status, headers, body = await call(proxy.url, "GET", "/api/tags", RATED)
        assert status == 429
        assert int(headers["Retry-After"]) >= 1
        assert orjson.loads(body)["error"] == "rate limit exceeded: too many requests per minute"


async def test_a_key_under_another_keys_name_has_limits_of_its_own(
    servers: ServerThread, own_emulator: Emulator, prefix: str
) -> None:
    """The limits in Redis are the key's, by its hash: a key issued under a revoked
    key's name (here one proxy still knows the old key, the other the new one) starts
    with a full bucket, not what is left of its predecessor's (its stream slots go
    by the same name in Redis)."""
    successor = "k-rated-2"
    renamed = Auth(
        keys=(
            ApiKey(sha256=hash_key(successor), name="rated", requests_per_minute=RATE),
            ApiKey(sha256=hash_key(STREAMER), name="streamer", max_streams=1),
        )
    )
    shared = Shared(redis_url=REDIS, key_prefix=prefix, stream_slot_ttl_seconds=600)
    old = Proxy(servers, [own_emulator.url], auth=KEYS, shared=shared)
    new = Proxy(servers, [own_emulator.url], auth=renamed, shared=shared)
    try:
        for _ in range(RATE):
            assert (await call(old.url, "GET", "/api/tags", RATED))[0] == 200
        assert (await call(old.url, "GET", "/api/tags", RATED))[0] == 429
        for _ in range(RATE):
            assert (await call(new.url, "GET", "/api/tags", successor))[0] == 200
    finally:
        old.stop()
        new.stop()


async def test_a_keys_streams_hold_across_both_proxies(replicas: tuple[Proxy, Proxy]) -> None:
    one, two = replicas
    async with running_stream(one.url, STREAMER, LONG):
        for proxy in (two, one):
            status, headers, body = await call(proxy.url, "POST", "/api/generate", STREAMER, SHORT)
            assert status == 429 and headers["Retry-After"] == "1"
            assert orjson.loads(body)["error"] == "too many concurrent requests (limit 1)"
        # Requests that are not inference hold no slot.
        assert (await call(two.url, "GET", "/api/tags", STREAMER))[0] == 200
        assert await metric(one, "autoroute_shared_stream_slots_held") == 1
        assert await metric(two, "autoroute_shared_stream_slots_held") == 0
        assert await metric(two, "autoroute_shared_limits_up") == 1


async def test_a_method_an_inference_route_does_not_serve_takes_no_shared_slot(
    replicas: tuple[Proxy, Proxy],
) -> None:
    """A GET, PUT or DELETE on a path that runs a model with a POST runs nothing (gin's
    405): it takes no slot in Redis, so with the key's one slot taken on the other
    proxy it gets that 405, not a 429."""
    one, two = replicas
    async with running_stream(one.url, STREAMER, LONG):  # the only slot taken
        for method, path in [("GET", "/api/chat"), ("DELETE", "/api/generate")]:
            assert (await call(two.url, method, path, STREAMER))[0] == 405, (method, path)
        assert await metric(two, "autoroute_shared_stream_slots_held") == 0


async def test_a_slot_is_given_back_when_the_client_disconnects(
    replicas: tuple[Proxy, Proxy], prefix: str
) -> None:
    one, two = replicas
    client = aioredis.Redis.from_url(REDIS)
    slots = slots_of(STREAMER, prefix)
    try:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(one.url + "/api/generate", json=LONG, headers=bearer(STREAMER))
            assert resp.status == 200
            await resp.content.readline()
            assert await client.zcard(slots) == 1
            resp.close()  # mid-stream: the connection goes, the stream had far to go

        async def released() -> bool:
            return await client.zcard(slots) == 0

        await wait_for(released, what="the slot to be given back")
        status, _, _ = await call(two.url, "POST", "/api/generate", STREAMER, SHORT)
        assert status == 200
    finally:
        await client.aclose()


async def test_redis_unreachable_means_limits_per_process_and_a_warning(
    servers: ServerThread, own_emulator: Emulator, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="autoroute.shared")
    closed = f"redis://127.0.0.1:{free_port()}/0"
    proxies = pair(servers, own_emulator, Shared(redis_url=closed, key_prefix=prefix))
    try:
        one, two = proxies
        assert [await limits_mode(p) for p in proxies] == ["local", "local"]
        warnings = [r.getMessage() for r in caplog.records if r.name == "autoroute.shared"]
        assert len(warnings) == 2
        assert all("unreachable" in w and "per process" in w for w in warnings)
        assert await metric(one, "autoroute_shared_limits_up") == 0
        assert await metric(one, "autoroute_shared_limits_outages_total") == 1
        # Each proxy has the whole rate to itself.
        for proxy in proxies:
            for _ in range(RATE):
                assert (await call(proxy.url, "GET", "/api/tags", RATED))[0] == 200
            assert (await call(proxy.url, "GET", "/api/tags", RATED))[0] == 429
        # And a stream slot each.
        async with running_stream(one.url, STREAMER, LONG):
            assert (await call(one.url, "POST", "/api/generate", STREAMER, SHORT))[0] == 429
            assert (await call(two.url, "POST", "/api/generate", STREAMER, SHORT))[0] == 200
    finally:
        for proxy in proxies:
            proxy.stop()


class RedisServer:
    """A Redis of the test's own on a free port, started and stopped by the test."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = tempfile.mkdtemp(prefix="autoroute-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server to start and stop a Redis"
)
async def test_the_limits_are_shared_again_when_redis_answers_and_local_when_it_goes(
    servers: ServerThread,
    own_emulator: Emulator,
    own_redis: RedisServer,
) -> None:
    shared = Shared(redis_url=own_redis.url, retry_seconds=0.05)
    proxies = pair(servers, own_emulator, shared)
    try:
        one, two = proxies
        assert await limits_mode(one) == "local"
        own_redis.start()

        async def shared_again() -> bool:
            return all([await limits_mode(p) == "shared" for p in proxies])

        await wait_for(shared_again, what="the proxies to use Redis again")
        # Counted in Redis now: the rate is spent across both.
        for _ in range(RATE):
            assert (await call(two.url, "GET", "/api/tags", RATED))[0] == 200
        assert (await call(one.url, "GET", "/api/tags", RATED))[0] == 429

        own_redis.stop()
        # The next request finds Redis gone and is let in by one's own counters.
        status, _, _ = await call(one.url, "POST", "/api/generate", STREAMER, SHORT)
        assert status == 200
        assert await limits_mode(one) == "local"
    finally:
        for proxy in proxies:
            proxy.stop()


@pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server to start and stop a Redis"
)
async def test_health_says_local_once_redis_goes_though_no_request_came(
    servers: ServerThread,
    own_emulator: Emulator,
    own_redis: RedisServer,
) -> None:
    # An idle proxy holds no stream slot, so nothing it keeps in Redis finds it gone:
    # its health would say "shared" until the next request.
    shared = Shared(redis_url=own_redis.url, retry_seconds=0.05, stream_slot_ttl_seconds=0.15)
    own_redis.start()
    proxy = Proxy(servers, [own_emulator.url], auth=KEYS, shared=shared)
    try:

        async def is_(mode: str) -> bool:
            return await limits_mode(proxy) == mode

        await wait_for(lambda: is_("shared"), what="the proxy to use Redis")
        own_redis.stop()
        await wait_for(lambda: is_("local"), seconds=10, what="health to say the limits are local")
    finally:
        proxy.stop()


@pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server to start and stop a Redis"
)
async def test_after_an_outage_redis_counts_every_stream_still_running(
    servers: ServerThread, own_emulator: Emulator, own_redis: RedisServer
) -> None:
    """Streams admitted before Redis went (the restarted Redis has lost their slots) and
    while it was gone (by a proxy's own counters) are counted in Redis once it answers:
    no replica admits a new one until the total is below max_streams again."""
    own_redis.start()
    shared = Shared(redis_url=own_redis.url, retry_seconds=0.05, stream_slot_ttl_seconds=0.6)
    proxies = pair(servers, own_emulator, shared)
    one, two = proxies

    async def count() -> int:
        """The key's slots in Redis, on a connection of its own (Redis restarts here)."""
        async with aioredis.Redis.from_url(own_redis.url) as client:
            return int(await client.zcard(slots_of(STREAMER)))

    async def counted(n: int) -> bool:
        return await count() == n

    try:
        await wait_for(lambda: _all_shared(proxies), what="Redis to answer")
        async with aiohttp.ClientSession() as http:
            before = await http.post(one.url + "/api/generate", json=LONG, headers=bearer(STREAMER))
            assert before.status == 200
            await before.content.readline()
            assert await count() == 1
            own_redis.stop()  # its data with it: the slot is gone
            # One still counts the stream Redis admitted: its own limit is full.
            assert (await call(one.url, "POST", "/api/generate", STREAMER, SHORT))[0] == 429
            # Two admits one by its own counters.
            during = await http.post(two.url + "/api/generate", json=LONG, headers=bearer(STREAMER))
            assert during.status == 200
            await during.content.readline()
            assert [await limits_mode(p) for p in proxies] == ["local", "local"]
            assert await metric(two, "autoroute_shared_stream_slots_unregistered") == 1

            own_redis.start()
            await wait_for(lambda: _all_shared(proxies), what="the proxies to use Redis again")
            assert await count() == 2  # above max_streams: both run
            assert await metric(two, "autoroute_shared_stream_slots_unregistered") == 0
            for proxy in (one, two):
                status, _, body = await call(proxy.url, "POST", "/api/generate", STREAMER, SHORT)
                assert status == 429, body
            during.close()
            await wait_for(lambda: counted(1), what="the slot of the stream two ended to go")
            assert (await call(two.url, "POST", "/api/generate", STREAMER, SHORT))[0] == 429
            before.close()
            await wait_for(lambda: counted(0), what="the slot of the stream one ended to go")
        assert (await call(two.url, "POST", "/api/generate", STREAMER, SHORT))[0] == 200
    finally:
        for proxy in proxies:
            proxy.stop()


async def test_a_client_that_leaves_while_redis_admits_it_is_a_cancellation(
    servers: ServerThread,
    own_emulator: Emulator,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Clients send a whole request and leave at once, while the proxy asks Redis
    whether to let them in. redis-py's write of a command (Python 3.11's `wait_for`)
    can end normally when the cancellation arrives as it completes, and the cancellation
    is then lost; the request must still end there, as any request whose client left: a
    cancellation, nothing logged as an error."""
    caplog.set_level(logging.WARNING)
    roomy = "k-roomy-1"  # admitted by Redis, never refused there
    auth = Auth(keys=(ApiKey(sha256=hash_key(roomy), requests_per_minute=1_000_000),))
    shared = Shared(redis_url=REDIS, key_prefix=prefix)
    proxy = Proxy(servers, [own_emulator.url], auth=auth, shared=shared)
    server = proxy.app[APP_KEY]
    seen: list[dict[str, Any]] = []
    server.access.enabled = True
    server.access.record = seen.append  # type: ignore[method-assign]
    body = orjson.dumps(SHORT)
    request = b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %b\r\n" % (
        roomy.encode()
    ) + b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    try:
        await wait_for(lambda: _shared(proxy), what="Redis to answer")
        for _ in range(10):
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(request)
            writer.close()

        async def settled() -> bool:
            # Some requests ended, none runs (a client may leave before its request
            # is read: no handler, no record).
            return bool(seen) and not server.server.handling

        await wait_for(settled, what="the requests to end")
    finally:
        proxy.stop()
    left = [(r["status"], r["cancelled"], r["error"]) for r in seen if r["path"] == "/api/generate"]
    # Each one a cancellation, but for a request answered in full before its client's
    # leaving was seen (its answer written to the closing connection); none left
    # neither cancelled nor answered (status 0).
    assert any(cancelled for _, cancelled, _ in left), left
    odd = [r for r in left if not r[1] and (r[0] != 200 or r[2])]
    assert not odd, odd
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


async def _shared(proxy: Proxy) -> bool:
    return await limits_mode(proxy) == "shared"


async def _all_shared(proxies: tuple[Proxy, Proxy]) -> bool:
    return all([await limits_mode(p) == "shared" for p in proxies])


async def test_a_slot_given_back_before_redis_answers_is_never_put_into_it(prefix: str) -> None:
    limits = SharedLimits(Shared(redis_url=REDIS, key_prefix=prefix))
    slots = f"{prefix}streams:k"
    try:
        running, ended = limits.hold_unregistered("k"), limits.hold_unregistered("k")
        limits.release(ended)
        await limits.keep_held()
        assert await limits.redis.zrange(slots, 0, -1) == [running.encode()]
        assert (limits.held, limits.unregistered) == ({running: slots}, {})
    finally:
        await limits.close()


async def test_a_dead_proxys_slot_expires_and_a_live_ones_is_kept(prefix: str) -> None:
    """Slots are kept by their proxy's refresh (`run`), not by being taken: one whose
    proxy stops refreshing (it died) frees itself after `stream_slot_ttl_seconds`."""
    settings = Shared(redis_url=REDIS, key_prefix=prefix, stream_slot_ttl_seconds=1)
    dead, live = SharedLimits(settings), SharedLimits(settings)
    slots = f"{prefix}streams:k"
    try:
        assert (await dead.admit("k", 0, 0, 1))[1] is not None
        assert await live.admit("k", 0, 0, 1) == (STREAMS_FULL, None)
        await dead.redis.aclose()  # gone without giving the slot back

        async def free() -> bool:
            return (await live.admit("k", 0, 0, 1))[1] is not None

        await wait_for(free, what="the dead proxy's slot to expire")
        (member,) = live.held
        before = await live.redis.zscore(slots, member)
        await live.keep_held()
        after = await live.redis.zscore(slots, member)
        assert before is not None and after is not None and after > before
        live.release(member)

        async def released() -> bool:
            return await live.redis.zcard(slots) == 0

        await wait_for(released, what="the live proxy's slot to be given back")
    finally:
        await live.close()


# Cache sharing (a cached answer from one proxy is a hit on the other) and budget
# sharing (the cloud budget is spent once) across proxies: their tests belong here,
# beside these, once the response cache (issue 17 part 1) and the cloud fallback
# (part 2) are in.

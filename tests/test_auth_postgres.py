"""API keys kept in PostgreSQL: added and revoked with `autoroute keys` (a real CLI
process) or the store's functions, picked up by a running proxy at its next background
refresh, with live counters kept across refreshes, and the last known keys kept while
PostgreSQL is down. Each test has a database of its own (dropped at the end)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from proxy import auth_store
from proxy.app import APP_KEY
from proxy.auth import hash_key, new_key
from proxy.auth_store import KeyStore
from proxy.config import ConfigError
from proxy.config_loading import load as load_config
from proxy.config_services import ApiKey, Auth, Cache, Usage
from tests.support import (
    AUTO_NAMES,
    Emulator,
    Proxy,
    ServerThread,
    free_port,
    running_stream,
)
from tests.test_auth import CHAT, call
from tests.usage_services import (
    Database,
    PrivatePostgres,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
REFRESH = 0.05  # seconds: tests wait on refresh counts, never on this figure
CONFIGURED = "k-configured-1"


KeyedProxy = Callable[..., Proxy]


@pytest.fixture
def keyed_proxy(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> Iterator[KeyedProxy]:
    """Makes proxies in front of `own_emulator` whose keys live at a given DSN."""
    made: list[Proxy] = []

    def make(dsn: str, *keys: ApiKey) -> Proxy:
        usage = Usage(file_path=str(tmp_path / "events.jsonl"), spool_dir=str(tmp_path / "spool"))
        auth = Auth(keys=keys, postgres_dsn=dsn, refresh_seconds=REFRESH)
        prx = Proxy(servers, [own_emulator.url], auth=auth, usage=usage)
        made.append(prx)
        return prx

    yield make
    for prx in made:
        prx.stop()


def store_of(prx: Proxy) -> KeyStore:
    store = prx.app[APP_KEY].key_store
    assert store is not None
    return store


async def refreshed(prx: Proxy, count: int = 2) -> None:
    """Until `count` more reads have succeeded: the second starts after this call, so
    it sees every change committed before it."""
    store = store_of(prx)
    target = store.refreshes + count

    async def done() -> bool:
        return store.refreshes >= target

    await wait_for(done, what=f"{count} key refreshes")


async def status_becomes(prx: Proxy, key: str, status: int) -> None:
    async def check() -> bool:
        return (await call(prx.url, "GET", "/api/tags", key))[0] == status

    await wait_for(check, what=f"/api/tags answering {status}")


async def key_store_metrics(prx: Proxy, key: str) -> dict[str, float]:
    """The key store's samples in /metrics, by name (with labels)."""
    status, _, body = await call(prx.url, "GET", "/metrics", key)
    assert status == 200
    samples = {}
    for line in body.decode().splitlines():
        if line.startswith("autoroute_api_key"):  # the key store's families and the key count
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await auth_store.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AUTOROUTE_CONFIG": str(ROOT / "config.yaml"),
        "AUTOROUTE_AUTH__POSTGRES_DSN": dsn,
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "proxy.cli", "keys", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def names_in(body: bytes) -> set[str]:
    doc = orjson.loads(body)
    items = doc.get("models") if "models" in doc else doc.get("data")
    return {m.get("name") or m["id"] for m in items or ()}


@pytest.mark.postgres
async def test_cli_added_key_is_accepted_and_revoked_key_refused(
    database: Database, keyed_proxy: KeyedProxy
) -> None:
    prx = keyed_proxy(database.dsn)
    # A key store and an empty table: nobody gets in (deny by default), not even with
    # something shaped like a key; liveness stays open.
    assert (await call(prx.url, "GET", "/api/tags", new_key()[0]))[0] == 401
    assert (await call(prx.url, "GET", "/api/tags"))[0] == 401
    assert (await call(prx.url, "GET", "/api/version"))[0] == 200

    added = await cli(database.dsn, "add", "--name", "ci", "--models", "llama3.1:8b", "--rpm", "60")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("ar-") and "\n" not in key
    await status_becomes(prx, key, 200)
    # The stored allow-list applies, to inference and to the lists alike.
    _, _, body = await call(prx.url, "GET", "/api/tags", key)
    assert names_in(body) == {"llama3.1:8b", *AUTO_NAMES}
    assert (await call(prx.url, "POST", "/api/chat", key, CHAT))[0] == 200
    mistral = {**CHAT, "model": "mistral:7b"}
    assert (await call(prx.url, "POST", "/api/chat", key, mistral))[0] == 403

    # Only the hash is stored; `list` shows a short prefix of it and never the key.
    rows = await database.fetch("SELECT sha256, name, role, models FROM autoroute_api_keys")
    assert [tuple(r) for r in rows] == [(hash_key(key), "ci", "user", ["llama3.1:8b"])]
    listed = await cli(database.dsn, "list")
    assert listed.returncode == 0, listed.stderr
    assert "ci" in listed.stdout and hash_key(key)[:8] in listed.stdout
    assert hash_key(key)[:9] not in listed.stdout and key not in listed.stdout

    # A second live key may not take the same name.
    again = await cli(database.dsn, "add", "--name", "ci")
    assert again.returncode == 1 and "exists" in again.stderr

    revoked = await cli(database.dsn, "revoke", "ci")
    assert revoked.returncode == 0, revoked.stderr
    await status_becomes(prx, key, 401)
    assert (await call(prx.url, "POST", "/api/chat", key, CHAT))[0] == 401
    unknown = await cli(database.dsn, "revoke", "ci")
    assert unknown.returncode == 1 and "no live key" in unknown.stderr


@pytest.mark.postgres
async def test_revoke_by_hash_prefix_takes_exactly_one_key(database: Database) -> None:
    async with connected(database.dsn) as conn:
        _, first = await auth_store.add_key(conn, "a")
        _, second = await auth_store.add_key(conn, "b")
        with pytest.raises(auth_store.KeyCommandError, match="hex digits"):
            await auth_store.revoke_key(conn, first[:3])  # too short to be a prefix
        assert await auth_store.revoke_key(conn, first[:10]) == "a"
        keys = await auth_store.live_keys(conn)
        assert [k.sha256 for k in keys] == [second]
        # The name is free again once its key is revoked.
        await auth_store.add_key(conn, "a")
        listed = await auth_store.list_keys(conn)
        assert [(k.name, k.revoked_at is not None) for k in listed] == [
            ("a", True),
            ("b", False),
            ("a", False),
        ]
        assert {k.prefix for k in listed[:2]} == {first[:8], second[:8]}


@pytest.mark.postgres
async def test_counters_survive_refreshes_and_limit_changes(
    database: Database, keyed_proxy: KeyedProxy
) -> None:
    async with connected(database.dsn) as conn:
        key, digest = await auth_store.add_key(conn, "busy", requests_per_minute=2, max_streams=1)
    prx = keyed_proxy(database.dsn)
    state = prx.app[APP_KEY].auth.keys[digest]
    long = {"model": "llama3.1:8b", "prompt": "long", "options": {"num_predict": 400}}
    async with running_stream(prx.url, key, long) as first:  # it holds the key's one slot
        assert (await call(prx.url, "GET", "/api/tags", key))[0] == 200  # 2nd of 2 a minute
        await refreshed(prx)
        # Same state object: the slot taken and the tokens spent are still counted.
        assert prx.app[APP_KEY].auth.keys[digest] is state
        assert state.streams == 1
        status, headers, _ = await call(prx.url, "GET", "/api/tags", key)
        assert status == 429 and "Retry-After" in headers
        # A changed limit is taken in place, without refilling the bucket.
        await database.fetch(
            "UPDATE autoroute_api_keys SET requests_per_minute = 3, name = 'busier' "
            "WHERE sha256 = $1",
            digest,
        )
        await refreshed(prx)
        assert prx.app[APP_KEY].auth.keys[digest] is state
        assert (state.id, state.capacity, state.streams) == ("busier", 3.0, 1)
        assert (await call(prx.url, "GET", "/api/tags", key))[0] == 429
        await first.read()

    # The stream's slot goes back to the state the store still holds (once the
    # handler has finished, which may be just after the client read the end).
    async def released() -> bool:
        return state.streams == 0

    await wait_for(released, what="the stream slot given back")


async def test_postgres_unreachable_at_start_keeps_configured_keys(
    keyed_proxy: KeyedProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="autoroute.auth")
    configured = ApiKey(sha256=hash_key(CONFIGURED), name="cfg")
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    prx = keyed_proxy(nowhere, configured)
    store = store_of(prx)
    assert store.failing

    async def retried() -> bool:
        return store.failures >= 3

    await wait_for(retried, what="three failed refreshes")
    assert (await call(prx.url, "POST", "/api/chat", CONFIGURED, CHAT))[0] == 200
    assert (await call(prx.url, "GET", "/api/tags"))[0] == 401
    assert (await call(prx.url, "GET", "/api/tags", new_key()[0]))[0] == 401
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not once per attempt


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()  # ours to stop; never the machine's server
    yield server
    server.close()


@pytest.mark.postgres
async def test_outage_keeps_the_last_keys_and_recovery_applies_changes(
    private_pg: PrivatePostgres, keyed_proxy: KeyedProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="autoroute.auth")
    db = await asyncio.to_thread(Database, private_pg.base_dsn)
    async with connected(db.dsn) as conn:
        key, _ = await auth_store.add_key(conn, "stays")
    prx = keyed_proxy(db.dsn)
    store = store_of(prx)
    assert (await call(prx.url, "GET", "/api/tags", key))[0] == 200
    before = await key_store_metrics(prx, key)
    assert before["autoroute_api_key_store_up"] == 1.0
    assert before["autoroute_api_keys"] == 1.0
    assert before["autoroute_api_key_store_last_success_timestamp_seconds"] > 0

    await asyncio.to_thread(private_pg.stop)
    failed = store.failures

    async def failing() -> bool:
        return store.failures >= failed + 3

    await wait_for(failing, what="refreshes failing")
    assert (await call(prx.url, "POST", "/api/chat", key, CHAT))[0] == 200
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
    during = await key_store_metrics(prx, key)
    assert during["autoroute_api_key_store_up"] == 0.0
    assert during["autoroute_api_keys"] == 1.0  # the last known key still works
    assert during['autoroute_api_key_store_reads_total{result="failed"}'] >= failed + 3

    await asyncio.to_thread(private_pg.start)
    async with connected(db.dsn) as conn:
        await auth_store.revoke_key(conn, "stays")
    await status_becomes(prx, key, 401)
    assert not store.failing
    assert any("available again" in r.getMessage() for r in caplog.records)


def test_key_store_settings_come_from_config_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("auth:\n  refresh_seconds: 3\n")
    cfg = load_config(path, environ={"AUTOROUTE_AUTH__POSTGRES_DSN": "postgresql://db/keys"})
    assert (cfg.auth.postgres_dsn, cfg.auth.refresh_seconds) == ("postgresql://db/keys", 3.0)
    assert load_config(path, environ={}).auth.postgres_dsn is None
    with pytest.raises(ConfigError, match="refresh_seconds"):
        load_config(
            path,
            environ={
                "AUTOROUTE_AUTH__POSTGRES_DSN": "postgresql://db/keys",
                "AUTOROUTE_AUTH__REFRESH_SECONDS": "0",
            },
        )


@pytest.mark.postgres
async def test_migration_is_idempotent_under_concurrency(database: Database) -> None:
    async def one() -> list[int]:
        conn = await asyncpg.connect(database.dsn)
        try:
            return await auth_store.migrate(conn)
        finally:
            await conn.close()

    results = await asyncio.gather(*(one() for _ in range(4)))
    assert sorted(results) == [[], [], [], [1]]
    assert await one() == []


@pytest.mark.postgres
async def test_keys_only_in_postgres_are_not_forwarded_to_backends(
    database: Database, keyed_proxy: KeyedProxy, own_emulator: Emulator
) -> None:
    """Access control is on with a key store alone: the client's key authenticates it
    to the proxy and never reaches a backend, in either header."""
    prx = keyed_proxy(database.dsn)
    async with connected(database.dsn) as conn:
        key, _ = await auth_store.add_key(conn, "stored")
    await status_becomes(prx, key, 200)
    assert (await call(prx.url, "POST", "/api/chat", key, CHAT))[0] == 200
    forwarded = own_emulator.state.last_headers
    assert forwarded["x-request-id"]  # the request did reach the backend
    assert "authorization" not in forwarded
    async with (
        aiohttp.ClientSession() as http,
        http.post(prx.url + "/api/chat", json=CHAT, headers={"X-Api-Key": key}) as resp,
    ):
        assert resp.status == 200
    assert "x-api-key" not in own_emulator.state.last_headers


@pytest.mark.postgres
async def test_a_stored_key_may_not_take_a_configured_keys_name(
    database: Database,
    servers: ServerThread,
    own_emulator: Emulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key's name is its id in usage events and the access log. The configuration
    refuses a name used twice; a stored key with a configured key's name is left out
    (with a warning) rather than pass for that key."""
    usage = Usage(file_path=str(tmp_path / "events.jsonl"), spool_dir=str(tmp_path / "spool"))
    auth = Auth(
        keys=(ApiKey(sha256=hash_key(CONFIGURED), name="team"),),
        postgres_dsn=database.dsn,
        refresh_seconds=REFRESH,
    )
    prx = Proxy(servers, [own_emulator.url], auth=auth, usage=usage, cache=Cache(enabled=True))
    try:
        async with connected(database.dsn) as conn:
            taken, _ = await auth_store.add_key(conn, "team")
            other, _ = await auth_store.add_key(conn, "other")
        with caplog.at_level(logging.WARNING, logger="autoroute.auth"):
            await status_becomes(prx, other, 200)
            await refreshed(prx)
        deterministic = {**CHAT, "options": {"temperature": 0}}
        status, headers, _ = await call(prx.url, "POST", "/api/chat", CONFIGURED, deterministic)
        assert status == 200 and headers["X-Autoroute-Cache"] == "miss"
        status, headers, _ = await call(prx.url, "POST", "/api/chat", taken, deterministic)
        assert status == 401, headers.get("X-Autoroute-Cache")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len([w for w in warnings if "'team'" in w]) == 1, warnings
        assert taken not in caplog.text
    finally:
        prx.stop()


@pytest.mark.postgres
async def test_a_new_key_under_a_revoked_keys_name_reads_none_of_its_answers(
    database: Database, servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    """A name is free again once its key is revoked, and may go to someone else: the
    cache knows a key by the key itself (its hash), so the new key starts empty. The
    same key asking again still hits."""
    usage = Usage(file_path=str(tmp_path / "events.jsonl"), spool_dir=str(tmp_path / "spool"))
    auth = Auth(postgres_dsn=database.dsn, refresh_seconds=REFRESH)
    prx = Proxy(servers, [own_emulator.url], auth=auth, usage=usage, cache=Cache(enabled=True))
    deterministic = {**CHAT, "options": {"temperature": 0}}

    async def cache_says(key: str) -> str:
        status, headers, _ = await call(prx.url, "POST", "/api/chat", key, deterministic)
        assert status == 200
        return headers["X-Autoroute-Cache"]

    async def stored(count: int) -> None:
        async def done() -> bool:
            status, _, body = await call(prx.url, "GET", "/metrics", keeper)
            assert status == 200
            return f"autoroute_cache_stored_total {count}.0" in body.decode()

        await wait_for(done, what=f"{count} answers stored")

    try:
        async with connected(database.dsn) as conn:
            old, _ = await auth_store.add_key(conn, "alice")
            keeper, _ = await auth_store.add_key(conn, "ops", role="admin")
        await status_becomes(prx, old, 200)
        assert await cache_says(old) == "miss"
        await stored(1)
        assert await cache_says(old) == "hit"
        async with connected(database.dsn) as conn:
            await auth_store.revoke_key(conn, "alice")
            new, _ = await auth_store.add_key(conn, "alice")
        await status_becomes(prx, old, 401)
        await status_becomes(prx, new, 200)
        assert await cache_says(new) == "miss"
        await stored(2)
        assert await cache_says(new) == "hit"
    finally:
        prx.stop()

"""Faults: PostgreSQL stopped and the broker restarted (empty) while traffic runs; the
proxy SIGKILLed with events in its spool. Nothing may be lost: exactly once in
PostgreSQL, at least once in Kafka."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from proxy.app import APP_KEY
from proxy.config_services import Usage
from proxy.usage.runner import Record
from selector_model import usage_event
from tests.support import Emulator, Proxy, ServerThread, free_port
from tests.usage_services import (
    Database,
    PrivatePostgres,
    Tansu,
    consume,
    database_on,
    postgres_base,
    postgres_ready,
    postgres_usage,
    wait_for,
    wait_port,
)

pytestmark = pytest.mark.postgres

MODEL = "llama3.1:8b"
ROOT = Path(__file__).resolve().parent.parent


async def _traffic(url: str, count: int, ids: list[str], concurrency: int = 32) -> None:
    """`count` requests; every answered request's id goes to `ids`."""
    todo = iter(range(count))

    async def worker(http: aiohttp.ClientSession) -> None:
        for n in todo:
            body = {"model": MODEL, "prompt": f"request {n}", "stream": n % 2 == 0}
            async with http.post("/api/generate", json=body) as resp:
                await resp.read()
                assert resp.status == 200
                ids.append(resp.headers["X-Request-Id"])

    async with aiohttp.ClientSession(url) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))


async def _until(ids: list[str], n: int) -> None:
    async def enough() -> bool:
        return len(ids) >= n

    await wait_for(enough, what=f"{n} answered requests")


async def _counters(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(url) as http, http.get("/api/autoroute/stats") as resp:
        stats: dict[str, Any] = orjson.loads(await resp.read())
        return stats


def _delivered(sink: dict[str, Any]) -> int:
    return int(sink["written"] + sink["replayed"])


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()  # ours: this test stops it; never the machine's server
    yield server
    server.close()


@pytest.mark.kafka
async def test_postgres_down_and_broker_restart_mid_run_lose_nothing(
    servers: ServerThread, own_emulator: Emulator, private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    db = await asyncio.to_thread(Database, private_pg.base_dsn)
    broker = Tansu()
    usage = quick_postgres_usage(
        db.dsn,
        tmp_path,
        kafka_bootstrap=broker.bootstrap,
        retry_backoff_seconds=0.1,
        retry_backoff_max_seconds=0.5,
        kafka_request_timeout_ms=2000,
        write_timeout_seconds=3,
    )
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    try:
        ids: list[str] = []
        await _traffic(prx.url, 800, ids)

        async def kafka_caught_up() -> bool:
            stats = await _counters(prx.url)
            return stats["queue"] == 0 and _delivered(stats["sinks"]["kafka"]) == len(ids)

        await wait_for(kafka_caught_up, what="Kafka to take the first phase")
        # The broker keeps messages in memory only: read what it has before killing it.
        before = await consume(broker.bootstrap, usage.kafka_usage_topic, len(ids))
        seen_in_kafka = {orjson.loads(m.value)["request_id"] for m in before}
        assert seen_in_kafka == set(ids)

        broker.stop()
        phase2 = asyncio.create_task(_traffic(prx.url, 1200, ids))
        await _until(ids, 1000)
        await asyncio.to_thread(private_pg.stop)  # PostgreSQL goes away mid-traffic
        await phase2

        async def both_spilled() -> bool:
            # A batch in flight when its sink died spills once its write times out.
            sinks = (await _counters(prx.url))["sinks"]
            return sinks["postgres"]["spilled"] > 0 and sinks["kafka"]["spilled"] > 0

        await wait_for(both_spilled, what="both sinks, down, to spill to the spool")

        phase3 = asyncio.create_task(_traffic(prx.url, 1000, ids))
        await _until(ids, 2300)
        broker.start()  # empty: a restarted in-memory broker
        await asyncio.to_thread(private_pg.start)
        await phase3
        total = len(ids)
        assert total == 3000 and len(set(ids)) == total

        async def all_delivered() -> bool:
            stats = await _counters(prx.url)
            sinks = stats["sinks"]
            return stats["queue"] == 0 and all(
                s["spool_pending"] == 0 and s["buffered"] == 0 and _delivered(s) >= total
                for s in sinks.values()
            )

        await wait_for(all_delivered, seconds=60, what="every sink to catch up")
        stats = await _counters(prx.url)
        for sink in stats["sinks"].values():
            assert sink["dropped"] == 0 and sink["replayed"] > 0

        rows = await db.fetch("SELECT request_id FROM usage_events")
        assert len(rows) == total  # exactly once: the primary key refuses a second copy
        assert {r[0] for r in rows} == set(ids)

        after = await consume(broker.bootstrap, usage.kafka_usage_topic, total - len(before))
        seen_in_kafka |= {orjson.loads(m.value)["request_id"] for m in after}
        assert seen_in_kafka == set(ids)  # at least once
    finally:
        prx.stop()
        broker.stop()
        await asyncio.to_thread(db.drop)


@pytest.mark.kafka
async def test_a_broker_restarted_empty_between_writes_loses_no_event(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    """An in-memory broker restarted while no write was under way comes back without
    the topics, and acknowledges what is produced to them (offsets from 0 again) while
    storing none of it. The producer reconnects by itself, so no write fails: every
    event after the restart was counted written and was lost. A partition's offset
    going back says the broker lost its log; the batch is retried, topics made again."""
    broker = Tansu()
    usage = Usage(
        kafka_bootstrap=broker.bootstrap,
        file_mode="off",
        spool_dir=str(tmp_path / "spool"),
        flush_interval_seconds=0.02,
        retry_backoff_seconds=0.05,
        retry_backoff_max_seconds=0.2,
    )
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    try:
        before: list[str] = []
        await _traffic(prx.url, 60, before, concurrency=4)

        async def delivered(n: int) -> bool:
            stats = await _counters(prx.url)
            sink = stats["sinks"]["kafka"]
            return bool(
                stats["queue"] == 0
                and sink["spool_pending"] == 0
                and sink["buffered"] == 0
                and _delivered(sink) >= n
            )

        await wait_for(lambda: delivered(len(before)), what="the first events in Kafka")
        read = await consume(broker.bootstrap, usage.kafka_usage_topic, len(before))
        assert {orjson.loads(m.value)["request_id"] for m in read} == set(before)

        broker.stop()
        broker.start()  # empty, on the same port: no write met it down
        after: list[str] = []
        await _traffic(prx.url, 60, after, concurrency=4)
        await wait_for(lambda: delivered(len(before) + len(after)), what="the rest in Kafka")
        read = await consume(broker.bootstrap, usage.kafka_usage_topic, len(after))
        assert {orjson.loads(m.value)["request_id"] for m in read} >= set(after)
    finally:
        prx.stop()
        broker.stop()


def quick_postgres_usage(dsn: str, tmp_path: Path, **changes: Any) -> Usage:
    """PostgreSQL alone (no file, no broker), flushed and retried quickly: what the
    tests of one sink's faults run with; `changes` set what a test tunes otherwise
    (a broker beside it, slower backoff, a write timeout)."""
    quick: dict[str, Any] = {
        "flush_interval_seconds": 0.02,
        "retry_backoff_seconds": 0.05,
        "retry_backoff_max_seconds": 0.1,
    }
    return postgres_usage(dsn, tmp_path, **(quick | changes))


@pytest.fixture
def database() -> Iterator[Database]:
    with postgres_base() as base, database_on(base) as db:
        yield db


# How the Kafka-and-PostgreSQL test's proxy flushes and retries: fast, for a short test.
_FAST_SINKS = {
    "AUTOROUTE_USAGE__FSYNC": "always",
    "AUTOROUTE_USAGE__FLUSH_INTERVAL_SECONDS": "0.02",
    "AUTOROUTE_USAGE__RETRY_BACKOFF_SECONDS": "0.1",
    "AUTOROUTE_USAGE__RETRY_BACKOFF_MAX_SECONDS": "0.5",
    "AUTOROUTE_USAGE__KAFKA_REQUEST_TIMEOUT_MS": "2000",
    "AUTOROUTE_USAGE__WRITE_TIMEOUT_SECONDS": "3",
}


async def test_sigkill_then_restart_replays_the_spool(
    own_emulator: Emulator, database: Database, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    port = free_port()
    closed = free_port()  # nothing listens: both sinks are down for the first process
    dead_dsn = f"postgresql://postgres@127.0.0.1:{closed}/x"
    proc = _serve(
        port,
        own_emulator.url,
        spool,
        dead_dsn,
        {"AUTOROUTE_USAGE__KAFKA_BOOTSTRAP": f"127.0.0.1:{closed}", **_FAST_SINKS},
    )
    url = f"http://127.0.0.1:{port}"
    broker: Tansu | None = None
    try:
        first: list[str] = []
        await _traffic(url, 500, first)

        async def spooled() -> bool:
            sinks = (await _counters(url))["sinks"]
            return all(s["spilled"] == len(first) for s in sinks.values())

        await wait_for(spooled, what="the first 500 events on disk")
        second: list[str] = []
        in_flight = asyncio.create_task(_traffic(url, 500, second))
        await _until(second, 100)
        proc.send_signal(signal.SIGKILL)  # no drain, no goodbye
        await asyncio.to_thread(proc.wait)
        with pytest.raises(aiohttp.ClientError):
            await in_flight

        broker = Tansu()
        proc = _serve(
            port,
            own_emulator.url,
            spool,
            database.dsn,
            {"AUTOROUTE_USAGE__KAFKA_BOOTSTRAP": broker.bootstrap, **_FAST_SINKS},
        )

        async def replayed() -> bool:
            sinks = (await _counters(url))["sinks"]
            return all(
                s["replayed"] >= len(first) and s["spool_pending"] == 0 for s in sinks.values()
            )

        await wait_for(replayed, what="the spool to be replayed")
        rows = await database.fetch("SELECT request_id FROM usage_events")
        in_pg = [r[0] for r in rows]
        assert set(first) <= set(in_pg)
        assert set(in_pg) <= set(first) | set(second)  # nothing invented
        assert len(in_pg) == len(set(in_pg))
        messages = await consume(broker.bootstrap, "autoroute.usage", len(in_pg))
        in_kafka = {orjson.loads(m.value)["request_id"] for m in messages}
        assert set(first) <= in_kafka
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 20)
        if broker is not None:
            broker.stop()


def _spooled_ids(spool: Path) -> list[str]:
    """Request ids of the usage records in a sink's spool segments, as on disk now."""
    ids: list[str] = []
    for segment in sorted(spool.glob("*.seg")):
        for line in segment.read_bytes().split(b"\n")[:-1]:  # a torn tail has no newline
            if line[:1] == b"u":
                ids.append(orjson.loads(line[1:])["request_id"])
    return ids


async def test_a_failing_sink_spools_each_flush_so_sigkill_loses_nothing_spooled(
    own_emulator: Emulator, database: Database, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dead_dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/x"  # nothing listens
    # A retry an hour away: an event of the down sink that is not on disk by the time
    # the test looks is one that waits in memory, which a SIGKILL loses.
    slow_retry = {
        "AUTOROUTE_USAGE__RETRY_BACKOFF_SECONDS": "3600",
        "AUTOROUTE_USAGE__RETRY_BACKOFF_MAX_SECONDS": "3600",
        "AUTOROUTE_USAGE__FLUSH_INTERVAL_SECONDS": "0.1",
    }
    proc = _serve(port, own_emulator.url, spool, dead_dsn, slow_retry)
    try:
        sent: list[str] = []
        await _traffic(url, 1, sent)  # the first write fails: the sink is known down

        async def on_disk(n: int) -> bool:
            return len(await asyncio.to_thread(_spooled_ids, spool / "postgres")) >= n

        await wait_for(lambda: on_disk(1), what="the first event in the spool")
        await _traffic(url, 199, sent, concurrency=8)
        await wait_for(lambda: on_disk(len(sent)), seconds=60, what="every event on disk")
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        spooled = _spooled_ids(spool / "postgres")
        assert sorted(spooled) == sorted(sent)  # each once: none spilled twice

        proc = _serve(port, own_emulator.url, spool, database.dsn, {})

        async def replayed() -> bool:
            stats = await _counters(url)
            sink = stats["sinks"]["postgres"]
            return bool(sink["replayed"] >= len(sent) and sink["spool_pending"] == 0)

        await wait_for(replayed, what="the spool to be replayed into PostgreSQL")
        rows = await database.fetch("SELECT request_id FROM usage_events")
        assert sorted(r[0] for r in rows) == sorted(sent)  # every one, exactly once
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 20)


def _serve(
    port: int, backend: str, spool: Path, dsn: str, extra: dict[str, str]
) -> subprocess.Popen[bytes]:
    """`autoroute serve` with PostgreSQL as its usage sink (and `extra` settings)."""
    env = {
        **os.environ,
        "AUTOROUTE_CONFIG": "/dev/null",
        "AUTOROUTE_LISTEN__PORT": str(port),
        "AUTOROUTE_BACKENDS": backend,
        "AUTOROUTE_LOGGING__ACCESS": "false",
        "AUTOROUTE_USAGE__POSTGRES_DSN": dsn,
        "AUTOROUTE_USAGE__FILE_MODE": "off",
        "AUTOROUTE_USAGE__SPOOL_DIR": str(spool),
        **extra,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc


async def test_a_nul_from_a_client_does_not_stop_the_postgres_sink(
    servers: ServerThread, own_emulator: Emulator, database: Database, tmp_path: Path
) -> None:
    """PostgreSQL's text and jsonb hold no NUL: a model name, an error or a comment
    with one, sent by any client, would fail its batch at every retry and keep every
    client's events after it from the table; it is stored as U+FFFD."""
    usage = quick_postgres_usage(database.dsn, tmp_path)
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    try:
        prx.thread.call(lambda: postgres_ready(prx))
        async with aiohttp.ClientSession(prx.url) as http:
            body = {"model": "qwen\u0000", "prompt": "x", "stream": False}
            async with http.post("/api/generate", json=body) as resp:
                assert resp.status == 400  # no name Ollama parses: "invalid model name"
                nul_id = resp.headers["X-Request-Id"]
            feedback = {"request_id": nul_id, "rating": 1, "comment": "a\u0000b"}
            async with http.post("/api/autoroute/feedback", json=feedback) as resp:
                assert resp.status == 202
            body = {"model": MODEL, "prompt": "after", "stream": False}
            async with http.post("/api/generate", json=body) as resp:
                assert resp.status == 200
                good_id = resp.headers["X-Request-Id"]

        async def stored() -> bool:
            rows = await database.fetch("SELECT request_id FROM usage_events")
            notes = await database.fetch("SELECT comment FROM feedback")
            return {r["request_id"] for r in rows} == {nul_id, good_id} and len(notes) == 1

        await wait_for(stored, seconds=10, what="every event in PostgreSQL")
        (note,) = await database.fetch("SELECT comment FROM feedback")
        assert note["comment"] == "a\ufffdb"
    finally:
        prx.stop()


async def test_a_model_name_too_long_for_an_index_does_not_stop_the_postgres_sink(
    servers: ServerThread, own_emulator: Emulator, database: Database, tmp_path: Path
) -> None:
    """A name no model has goes to the backend (which says 400) and, as the answer's
    model, into `served_model`, an indexed column: an index entry holds some 2.7 kB at
    most, so a client's 12,000-character name, kept whole, failed its batch at every
    retry and kept every client's events after it from the table."""
    usage = quick_postgres_usage(database.dsn, tmp_path)
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    try:
        prx.thread.call(lambda: postgres_ready(prx))
        long_name = os.urandom(6000).hex()  # random: no compression brings it under
        ids = []
        async with aiohttp.ClientSession(prx.url) as http:
            for model in (long_name, MODEL):
                body = {"model": model, "prompt": "x", "stream": False}
                async with http.post("/api/generate", json=body) as resp:
                    assert resp.status == (400 if model == long_name else 200)
                    ids.append(resp.headers["X-Request-Id"])

        async def stored() -> bool:
            rows = await database.fetch("SELECT request_id FROM usage_events")
            return {r["request_id"] for r in rows} == set(ids)

        await wait_for(stored, seconds=10, what="both events in PostgreSQL")
        (row,) = await database.fetch(
            "SELECT served_model FROM usage_events WHERE request_id = $1", ids[0]
        )
        assert long_name.startswith(row["served_model"])
    finally:
        prx.stop()


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 kB file system of the test's own, which a few hundred events fill: a real
    ENOSPC (mounting one needs root; elsewhere the test skips)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


async def test_a_full_spool_disk_keeps_events_in_memory_until_the_sink_is_back(
    servers: ServerThread,
    own_emulator: Emulator,
    private_pg: PrivatePostgres,
    full_disk: Path,
) -> None:
    """PostgreSQL down and the spool's disk full: what the spool cannot take waits in
    memory (up to `sink_buffer`), not dropped; once PostgreSQL is back, what was
    spooled is replayed, what waited in memory is written, and new events are written,
    though the disk stays full (the cursor file cannot be rewritten there: a cursor
    that only moves on disk stopped the replay, and the writer's task died of the
    ENOSPC, its sink reported healthy)."""
    db = await asyncio.to_thread(Database, private_pg.base_dsn)
    usage = quick_postgres_usage(
        db.dsn, full_disk, retry_backoff_max_seconds=0.2, write_timeout_seconds=3
    )
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    try:
        prx.thread.call(lambda: postgres_ready(prx))
        await asyncio.to_thread(private_pg.stop)
        sent: list[str] = []
        await _traffic(prx.url, 300, sent, concurrency=8)

        async def full() -> bool:
            sink = (await _counters(prx.url))["sinks"]["postgres"]
            return bool(sink["buffered"] > 0 and sink["spilled"] + sink["buffered"] == len(sent))

        await wait_for(full, what="the spool to fill and the rest to wait in memory")
        await asyncio.to_thread(private_pg.start)

        async def drained() -> bool:
            sink = (await _counters(prx.url))["sinks"]["postgres"]
            return bool(sink["spool_pending"] == 0 and sink["buffered"] == 0)

        await wait_for(drained, seconds=20, what="the spool to be replayed")
        await _traffic(prx.url, 10, sent)

        async def settled() -> bool:
            sink = (await _counters(prx.url))["sinks"]["postgres"]
            return bool(sink["written"] + sink["replayed"] == len(sent))

        await wait_for(settled, what="the last events written")
        sink = (await _counters(prx.url))["sinks"]["postgres"]
        assert sink["dropped"] == 0
        rows = await db.fetch("SELECT request_id FROM usage_events")
        stored = [r["request_id"] for r in rows]
        assert sorted(stored) == sorted(sent)
    finally:
        prx.stop()
        await asyncio.to_thread(db.drop)


async def test_stats_answer_from_memory_while_the_database_is_silent(
    servers: ServerThread, own_emulator: Emulator, private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    """`/api/autoroute/stats` reads PostgreSQL, and falls back to memory when that fails:
    a database that stops answering (rather than refusing) must fail it too, or the
    status that says how the sinks are doing hangs as long as the database does."""
    db = await asyncio.to_thread(Database, private_pg.base_dsn)
    usage = postgres_usage(db.dsn, tmp_path)
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    stopped: list[int] = []
    try:
        prx.thread.call(lambda: postgres_ready(prx))
        sent: list[str] = []
        await _traffic(prx.url, 1, sent)
        assert (await _counters(prx.url))["source"] == "postgres"
        # The proxy's sessions, alive and silent, and the server's postmaster, so that a
        # session the pool opens now cannot answer either (it would, rightly).
        postmaster = int((private_pg.data / "postmaster.pid").read_text().split()[0])
        stopped = [*await db.other_sessions(), postmaster]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        timeout = aiohttp.ClientTimeout(total=8)
        sources = []
        async with aiohttp.ClientSession(prx.url, timeout=timeout) as http:
            for _ in range(3):  # more than the pool's connections
                async with http.get("/api/autoroute/stats") as resp:
                    stats = orjson.loads(await resp.read())
                sources.append(stats["source"])
                assert stats["sinks"]["postgres"]["queued"] == 1
        assert sources == ["memory"] * 3
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        prx.stop()
        await asyncio.to_thread(db.drop)


async def test_a_write_to_a_silent_database_times_out_and_the_next_connection_takes_it(
    servers: ServerThread, own_emulator: Emulator, private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    """`write_timeout_seconds` bounds a write whose session stopped answering: the
    cancelled write must not then wait, in its rollback and its connection's release,
    for that session (it waited as long as the session did, its sink reported healthy
    and nothing was replayed), and a new session, which the server takes, writes."""
    db = await asyncio.to_thread(Database, private_pg.base_dsn)
    usage = quick_postgres_usage(
        db.dsn,
        tmp_path,
        flush_interval_seconds=0.05,
        write_timeout_seconds=1,
        retry_backoff_max_seconds=0.2,
    )
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    stopped: list[int] = []
    try:
        prx.thread.call(lambda: postgres_ready(prx))
        sent: list[str] = []
        await _traffic(prx.url, 1, sent)

        async def stored() -> bool:
            rows = await db.fetch("SELECT request_id FROM usage_events")
            return len(rows) == len(sent)

        await wait_for(stored, what="the first event in PostgreSQL")
        stopped = await db.other_sessions()
        for pid in stopped:  # the proxy's sessions: alive, silent
            os.kill(pid, signal.SIGSTOP)
        await _traffic(prx.url, 20, sent, concurrency=4)
        await wait_for(stored, seconds=20, what="every event in PostgreSQL, sessions silent")
        rows = await db.fetch("SELECT request_id FROM usage_events")
        assert sorted(r["request_id"] for r in rows) == sorted(sent)
        sink = (await _counters(prx.url))["sinks"]["postgres"]
        assert sink["failures"] >= 1
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        prx.stop()
        await asyncio.to_thread(db.drop)


async def test_a_database_made_anew_under_the_proxy_gets_the_schema_and_every_event(
    servers: ServerThread, own_emulator: Emulator, database: Database, tmp_path: Path
) -> None:
    """The usage database dropped and created again, empty, while the proxy runs (a
    restore, an operator's mistake): the sink migrates it as at a start, and what was
    spooled meanwhile arrives, once each."""
    usage = quick_postgres_usage(database.dsn, tmp_path)
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    try:
        await postgres_ready(prx)
        ids: list[str] = []
        await _traffic(prx.url, 50, ids)
        await asyncio.to_thread(database.drop)
        await _traffic(prx.url, 50, ids)
        await database._admin(f"CREATE DATABASE {database.name}")
        await _traffic(prx.url, 50, ids)

        async def all_written() -> bool:
            try:
                rows = await database.fetch("SELECT count(*) FROM usage_events")
            except asyncpg.UndefinedTableError:
                return False
            return bool(rows[0][0] >= 100)

        await wait_for(all_written, what="the events since the drop to be written")
        rows = await database.fetch("SELECT request_id FROM usage_events")
        # Those written before the drop went with the database; every one since is there.
        assert len(rows) == len({r[0] for r in rows})
        assert set(ids[50:]) <= {r[0] for r in rows}
    finally:
        prx.stop()


async def test_a_spool_line_that_does_not_parse_is_dropped_not_fatal(
    servers: ServerThread, own_emulator: Emulator, database: Database, tmp_path: Path
) -> None:
    """A spool line that is not a record (a torn write with the next record glued to
    it, as an append cut short by a full disk left them, or a damaged disk) is counted
    dropped and skipped: it raised out of the replay, whose task died, and every event
    after it stayed on disk, the sink reported healthy."""
    segment = tmp_path / "spool" / "postgres" / "0000000000000001.seg"
    segment.parent.mkdir(parents=True)
    good = [
        orjson.dumps({"request_id": f"spooled-{n}", "ts": "2026-01-01T00:00:00Z"}) for n in range(2)
    ]
    segment.write_bytes(b"u" + good[0] + b'\nu{"request_id": "torn' + b"u" + good[1] + b"\n")
    segment.write_bytes(segment.read_bytes() + b"u" + good[1] + b"\n")
    usage = quick_postgres_usage(database.dsn, tmp_path)
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    try:
        sent: list[str] = []
        await _traffic(prx.url, 3, sent)

        async def drained() -> bool:
            sink = (await _counters(prx.url))["sinks"]["postgres"]
            # Live events that came while the spool was pending were spooled behind it.
            return bool(sink["spool_pending"] == 0 and _delivered(sink) == len(sent) + 2)

        await wait_for(drained, seconds=10, what="the spool to be replayed")
        sink = (await _counters(prx.url))["sinks"]["postgres"]
        assert sink["dropped"] == 1
        rows = await database.fetch("SELECT request_id FROM usage_events")
        assert sorted(r["request_id"] for r in rows) == sorted([*sent, "spooled-0", "spooled-1"])
    finally:
        prx.stop()


def _spooled_event(request_id: str, **fields: Any) -> bytes:
    return orjson.dumps(
        {
            "request_id": request_id,
            "ts": "2026-01-01T00:00:00Z",
            "endpoint": "/api/generate",
            "method": "POST",
            "outcome": {"status": 200},
            **fields,
        }
    )


async def test_a_record_postgres_refuses_is_dropped_and_the_rest_written(
    servers: ServerThread, own_emulator: Emulator, database: Database, tmp_path: Path
) -> None:
    """A record PostgreSQL refuses as data failed its whole batch at every retry, and
    every event after it stayed in the spool: the batch is written in halves until the
    bad record is alone, which is dropped (counted, logged); the rest is written. Bad
    here: a served model too long for its index, as a spool written before that name
    was bounded holds it (the server refuses it: program limit exceeded); a status past
    a 32-bit integer (asyncpg refuses to encode it); the same name among live events."""
    long_name = os.urandom(6000).hex()  # random: no compression brings it under
    spooled = [
        _spooled_event("spooled-0"),
        _spooled_event("spooled-long-name", served_model=long_name),
        _spooled_event("spooled-1"),
        _spooled_event("spooled-huge-status", outcome={"status": 2**31}),
        _spooled_event("spooled-2"),
    ]
    segment = tmp_path / "spool" / "postgres" / "0000000000000001.seg"
    segment.parent.mkdir(parents=True)
    segment.write_bytes(b"".join(b"u" + line + b"\n" for line in spooled))
    usage = quick_postgres_usage(database.dsn, tmp_path)
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    try:
        sent: list[str] = []
        await _traffic(prx.url, 40, sent, concurrency=4)
        bad_line = _spooled_event("live-long-name", served_model=long_name)
        bad = Record(usage_event.parse_line(bad_line), bad_line)
        runner = prx.app[APP_KEY].usage.runners[0]
        prx.thread.call(lambda: runner.accept([bad]))
        await _traffic(prx.url, 40, sent, concurrency=4)
        good = {*sent, "spooled-0", "spooled-1", "spooled-2"}

        async def settled() -> bool:
            sink = (await _counters(prx.url))["sinks"]["postgres"]
            return bool(
                sink["spool_pending"] == 0
                and sink["buffered"] == 0
                and _delivered(sink) + sink["dropped"] == len(good) + 3
            )

        await wait_for(settled, seconds=20, what="every record written or dropped")
        sink = (await _counters(prx.url))["sinks"]["postgres"]
        assert sink["dropped"] == 3 and sink["healthy"]
        rows = await database.fetch("SELECT request_id FROM usage_events")
        assert sorted(r["request_id"] for r in rows) == sorted(good)
    finally:
        prx.stop()

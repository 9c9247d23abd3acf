"""Usage events end to end through the proxy into a real PostgreSQL and a real
Kafka-protocol broker (and the local file), compared field by field."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    TopicPartition,
)
from aiokafka.errors import (  # type: ignore[import-untyped]
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
)

from proxy.config_services import Usage
from proxy.usage.kafka import KafkaSink
from proxy.usage.migrations import MIGRATIONS
from proxy.usage.runner import Record, SinkRunner
from selector_model import usage_event
from tests.support import USAGE_EVENT_KEYS, Emulator, Proxy, ServerThread
from tests.usage_services import (
    Database,
    Tansu,
    consume,
    postgres_ready,
    read_bytes,
    wait_for,
)

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

MODEL = "llama3.1:8b"


@pytest.fixture(scope="module")
def broker() -> Iterator[Tansu]:
    tansu = Tansu()
    yield tansu
    tansu.stop()


@pytest.fixture
def usage_proxy(
    servers: ServerThread, own_emulator: Emulator, database: Database, broker: Tansu, tmp_path: Path
) -> Iterator[Proxy]:
    topic = tmp_path.name.replace("_", "-")[-40:]
    usage = Usage(
        postgres_dsn=database.dsn,
        kafka_bootstrap=broker.bootstrap,
        kafka_usage_topic=f"usage-{topic}",
        kafka_feedback_topic=f"feedback-{topic}",
        file_mode="always",
        file_path=str(tmp_path / "events.jsonl"),
        spool_dir=str(tmp_path / "spool"),
        flush_interval_seconds=0.02,
    )
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    prx.thread.call(lambda: postgres_ready(prx))
    yield prx
    prx.stop()


async def _ndjson(resp: aiohttp.ClientResponse) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in (await resp.read()).splitlines() if line.strip()]


async def test_events_reach_postgres_kafka_and_file_field_by_field(usage_proxy: Proxy) -> None:
    usage = usage_proxy.config.usage
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "why is the sky blue?"},
    ]
    headers = {
        "User-Agent": "usage-test/1",
        "X-Autoroute-User": "alice",
        "Authorization": "Bearer sk-secret-key",
    }
    async with aiohttp.ClientSession(usage_proxy.url) as http:
        async with http.post(
            "/api/chat", json={"model": MODEL, "messages": messages}, headers=headers
        ) as resp:
            chat_id = resp.headers["X-Request-Id"]
            chat_lines = await _ndjson(resp)
        async with http.post(
            "/api/generate", json={"model": MODEL, "prompt": "hello", "stream": False}
        ) as resp:
            gen_id = resp.headers["X-Request-Id"]
            gen = orjson.loads(await resp.read())
        async with http.post(
            "/api/chat", json={"model": "no-such:model", "messages": messages}
        ) as resp:
            missing_id, missing_status = resp.headers["X-Request-Id"], resp.status
        async with http.get("/api/tags") as resp:  # not inference: no event
            assert resp.status == 200

        ids = {chat_id, gen_id, missing_id}

        async def rows_arrived() -> bool:
            rows = await usage_proxy_db.fetch("SELECT count(*) FROM usage_events")
            return bool(rows[0][0] == 3)

        usage_proxy_db = _db_of(usage_proxy)
        await wait_for(rows_arrived, what="3 rows in PostgreSQL")
        rows = {
            r["request_id"]: r for r in await usage_proxy_db.fetch("SELECT * FROM usage_events")
        }
        assert set(rows) == ids

        final = chat_lines[-1]
        chat = rows[chat_id]
        event = chat["event"]
        assert event["request_id"] == chat_id and event["endpoint"] == "/api/chat"
        assert event["method"] == "POST"
        assert event["client"]["user_agent"] == "usage-test/1"
        assert event["client"]["user"] == "alice"
        assert event["client"]["api_key_id"] == hashlib.sha256(b"sk-secret-key").hexdigest()[:16]
        # Without access control the id is the hash already: nothing beside it.
        assert event["client"]["api_key_hash"] is None and chat["api_key_hash"] is None
        assert "sk-secret-key" not in orjson.dumps(event).decode()
        assert event["requested_model"] == event["served_model"] == MODEL
        assert event["backend"] == usage_proxy.config.backends[0].label
        assert event["decision"] is None and event["features"] is None
        assert event["candidate"] is None and event["rating"] is None
        assert event["provider"] is None  # a local backend answered
        assert "prompt" not in event  # log_prompts is off by default
        expected_sha = hashlib.sha256(b"be brief\nwhy is the sky blue?").hexdigest()
        assert event["prompt_sha256"] == expected_sha
        outcome = event["outcome"]
        assert outcome["status"] == 200 and outcome["error"] is None
        assert outcome["cancelled"] is False and outcome["bytes"] > 0
        for key in (
            "done_reason",
            "prompt_eval_count",
            "eval_count",
            "load_duration",
            "prompt_eval_duration",
            "eval_duration",
            "total_duration",
        ):
            assert outcome[key] == final[key], key
        assert 0 < outcome["ttfc_ms"] <= outcome["total_ms"]
        assert event["ts"].endswith("Z")
        assert set(event) == set(USAGE_EVENT_KEYS)
        # The typed columns say what the event says.
        assert (chat["status"], chat["client_user"], chat["served_model"]) == (200, "alice", MODEL)
        assert chat["eval_count"] == final["eval_count"]
        assert chat["total_duration"] == final["total_duration"]
        assert chat["ttfc_ms"] == outcome["ttfc_ms"] and chat["total_ms"] == outcome["total_ms"]
        assert chat["prompt_sha256"] == expected_sha and chat["cancelled"] is False
        assert chat["ts"].isoformat().replace("+00:00", "Z") == event["ts"]

        assert rows[gen_id]["eval_count"] == gen["eval_count"]
        assert rows[gen_id]["prompt_sha256"] == hashlib.sha256(b"hello").hexdigest()
        missing = rows[missing_id]
        assert missing["status"] == missing_status == 404
        assert missing["eval_count"] is None

        # Kafka: the same events, keyed by user, else by request id.
        got = await consume(
            usage_proxy.config.usage.kafka_bootstrap or "", usage.kafka_usage_topic, 3
        )
        by_id = {orjson.loads(m.value)["request_id"]: m for m in got}
        assert set(by_id) == ids and len(got) == 3
        for rid, msg in by_id.items():
            assert orjson.loads(msg.value) == rows[rid]["event"]
        assert by_id[chat_id].key == b"alice" and by_id[gen_id].key == gen_id.encode()

        # The file: the same events again.
        lines = (await read_bytes(usage.file_path)).splitlines()
        from_file = {orjson.loads(line)["request_id"]: orjson.loads(line) for line in lines}
        assert from_file == {rid: rows[rid]["event"] for rid in ids}

        # Stats from PostgreSQL. A sink counts a batch as written once its write
        # returns, which can be after what it wrote is readable.
        stats: dict[str, Any] = {}

        async def counted() -> bool:
            nonlocal stats
            async with http.get("/api/autoroute/stats") as resp:
                stats = orjson.loads(await resp.read())
            return all(c["written"] == 3 for c in stats["sinks"].values())

        await wait_for(counted, what="every sink counting its 3 events written")
        assert stats["source"] == "postgres"
        entry = next(m for m in stats["models"] if m["served_model"] == MODEL)
        assert entry["requests"] == 2 and entry["errors"] == 0
        assert entry["tokens_per_s"] > 0 and entry["ttfc_ms"]["p50"] > 0
        missing_entry = next(m for m in stats["models"] if m["served_model"] == "no-such:model")
        # Its 404 is a refusal (`selector_model.outcome.refusal`): no failure.
        assert (missing_entry["requests"], missing_entry["errors"]) == (1, 0)
        sinks = stats["sinks"]
        assert set(sinks) == {"postgres", "kafka", "file"}
        for counters in sinks.values():
            assert counters["written"] == 3 and counters["dropped"] == 0
            assert counters["spilled"] == 0


def _db_of(prx: Proxy) -> Database:
    return Database.attach(prx.config.usage.postgres_dsn or "")


async def test_feedback_round_trip(usage_proxy: Proxy) -> None:
    usage = usage_proxy.config.usage
    db = _db_of(usage_proxy)
    async with aiohttp.ClientSession(usage_proxy.url) as http:
        async with http.post(
            "/api/generate", json={"model": MODEL, "prompt": "rate me", "stream": False}
        ) as resp:
            rid = resp.headers["X-Request-Id"]
        async with http.post(
            "/api/autoroute/feedback", json={"request_id": rid, "rating": 1, "comment": "good"}
        ) as resp:
            assert resp.status == 202
            feedback_id = orjson.loads(await resp.read())["feedback_id"]
        for bad in ({"request_id": rid}, {"rating": 1}, {"request_id": rid, "rating": "x"}):
            async with http.post("/api/autoroute/feedback", json=bad) as resp:
                assert resp.status == 400

        async def feedback_arrived() -> bool:
            return bool(await db.fetch("SELECT 1 FROM feedback"))

        await wait_for(feedback_arrived, what="feedback row")
        (row,) = await db.fetch("SELECT * FROM feedback")
        assert (row["feedback_id"], row["request_id"], row["rating"], row["comment"]) == (
            feedback_id,
            rid,
            1.0,
            "good",
        )
        (message,) = await consume(usage.kafka_bootstrap or "", usage.kafka_feedback_topic, 1)
        assert orjson.loads(message.value)["feedback_id"] == feedback_id
        assert message.key == rid.encode()
        feedback_file = Path(usage.file_path).with_name("events.feedback.jsonl")
        assert orjson.loads(await read_bytes(feedback_file))["request_id"] == rid

        async def rated() -> bool:
            async with http.get("/api/autoroute/stats") as resp:
                stats = orjson.loads(await resp.read())
            entry = next(m for m in stats["models"] if m["served_model"] == MODEL)
            return bool(entry["ratings"] == {"count": 1, "mean": 1.0})

        await wait_for(rated, what="the rating in stats")
    versions = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [v[0] for v in versions] == sorted(m[0] for m in MIGRATIONS)


def _kafka_only(broker: Tansu, tmp_path: Path) -> tuple[str, Usage]:
    """A usage topic of the test's own, and settings that write to Kafka alone, spooling
    to `tmp_path` and retrying within a tenth of a second."""
    topic = "usage-" + tmp_path.name.replace("_", "-")[-40:]
    return topic, Usage(
        kafka_bootstrap=broker.bootstrap,
        kafka_usage_topic=topic,
        kafka_feedback_topic=topic + "-feedback",
        file_mode="off",
        spool_dir=str(tmp_path / "spool"),
        retry_backoff_seconds=0.05,
        retry_backoff_max_seconds=0.1,
    )


def _failing_batches(
    monkeypatch: pytest.MonkeyPatch, failure: Callable[[Any, int], Exception | None]
) -> None:
    """aiokafka's producer sends each record batch as it does, but where `failure`
    (of the batch and its partition) names an error: that batch's future fails with
    it, as aiokafka reports a broker's refusal."""
    send_batch = AIOKafkaProducer.send_batch

    async def sending(self: Any, batch: Any, topic: str, *, partition: int) -> Any:
        error = failure(batch, partition)
        if error is None:
            return await send_batch(self, batch, topic, partition=partition)
        future = asyncio.get_running_loop().create_future()
        future.set_exception(error)
        return future

    monkeypatch.setattr(AIOKafkaProducer, "send_batch", sending)


async def test_a_message_too_large_for_the_broker_is_dropped_and_the_rest_sent(
    broker: Tansu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker refuses a record batch larger than its `message.max.bytes` (an event
    with a long logged prompt) with MESSAGE_SIZE_TOO_LARGE, which aiokafka does not
    retry: the batch failed at every retry and every event after it stayed in the
    spool. Tansu takes any size, so the refusal is made here as aiokafka reports the
    broker's (the batch's future fails with MessageSizeTooLargeError); the rest is real."""
    limit = 64 * 1024
    _failing_batches(
        monkeypatch,
        lambda batch, _: MessageSizeTooLargeError() if batch.size() > limit else None,
    )
    topic, settings = _kafka_only(broker, tmp_path)
    docs = [{"request_id": f"event-{n}", "ts": "2026-01-01T00:00:00Z"} for n in range(100)]
    docs.insert(37, {"request_id": "too-large", "prompt": os.urandom(100_000).hex()})
    lines = [orjson.dumps(doc) for doc in docs]
    runner = SinkRunner(KafkaSink(settings), settings)
    runner.start()
    try:
        await runner.accept([Record(usage_event.parse_line(line), line) for line in lines])
        counters = runner.counters

        async def settled() -> bool:
            return counters.written + counters.dropped == len(lines) and not runner.buffer

        await wait_for(settled, seconds=20, what="every record sent or dropped")
        assert counters.dropped == 1 and runner.spool.pending == 0
    finally:
        await runner.stop()
    messages = await consume(broker.bootstrap, topic, len(lines) - 1)
    sent = {orjson.loads(m.value)["request_id"] for m in messages}
    assert sent == {doc["request_id"] for doc in docs} - {"too-large"}


async def _every_message(bootstrap: str, topic: str) -> list[bytes]:
    """Every message in `topic`, each copy: read up to a last one written to each
    partition now (Tansu's end offsets count a partition's last batch as one message,
    so they cannot say how many there are)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        for p in partitions:
            await producer.send_and_wait(topic, b"last", partition=p)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        ended: set[int] = set()
        deadline = asyncio.get_running_loop().time() + 30
        while len(ended) < len(partitions):
            assert asyncio.get_running_loop().time() < deadline, "the last messages not read"
            for where, records in (await consumer.getmany(timeout_ms=200)).items():
                for record in records:
                    if record.value == b"last":
                        ended.add(where.partition)
                    else:
                        values.append(record.value)
    finally:
        await consumer.stop()
    return values


async def test_a_write_failing_on_one_partition_sends_the_others_once(
    broker: Tansu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write goes out as one record batch per partition: when one of them fails (a
    leader moving, a request timing out) and the others are acknowledged, the write
    fails and its records are retried. The acknowledged ones were sent again, each a
    duplicate in the topic; they are skipped at the retry. The failure is made here as
    aiokafka reports a broker's (the batch's future fails, once); the rest is real."""
    failed: list[int] = []

    def once(_: Any, partition: int) -> Exception | None:
        if partition == 1 and not failed:
            failed.append(partition)
            return NotLeaderForPartitionError()
        return None

    _failing_batches(monkeypatch, once)
    topic, settings = _kafka_only(broker, tmp_path)
    lines = [
        orjson.dumps({"request_id": f"event-{n}", "ts": "2026-01-01T00:00:00Z"}) for n in range(60)
    ]
    runner = SinkRunner(KafkaSink(settings), settings)
    runner.start()
    try:
        await runner.accept([Record(usage_event.parse_line(line), line) for line in lines])
        counters = runner.counters

        async def settled() -> bool:
            delivered = counters.written + counters.replayed
            return delivered == len(lines) and not runner.buffer and not runner.spool.pending

        await wait_for(settled, seconds=20, what="every record sent")
        assert failed == [1] and counters.failures == 1
    finally:
        await runner.stop()
    values = await _every_message(broker.bootstrap, topic)
    assert sorted(values) == sorted(lines)  # each once

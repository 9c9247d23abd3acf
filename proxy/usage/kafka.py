"""Kafka sink: usage and feedback topics, keyed by user (else request id), orjson values.

Producer settings: `acks=all`, zstd, batching by `linger_ms`. Idempotent producing
(`enable_idempotence`) is off: not every Kafka-compatible broker implements it (Tansu,
used in the tests, does not). Delivery is therefore at least once, not exactly once:
a batch whose acknowledgement does not arrive within `kafka_request_timeout_ms` is
spilled to the spool and sent again later, including any of its messages the broker
had in fact stored. Every message carries its `request_id` (feedback its
`feedback_id`), so consumers de-duplicate on it, as the PostgreSQL sink does.

Any failure but a refusal discards the producer; the next attempt builds a new one and
re-creates the topics (when allowed), which also covers a broker restarted with empty
storage. A refusal (`_REFUSED`) raises `Refused`, and the runner isolates the record.

A broker restarted with empty storage between two writes fails none: the producer
reconnects by itself, and such a broker (Tansu with memory storage) acknowledges what
is produced to a topic it no longer has, and stores none of it. What gives it away is
a partition's offset going back: an acknowledged batch whose base offset is below the
end of the one acknowledged before it on that partition. That write fails (`LogLost`)
like any other, so its batch is retried on a new producer, which makes the topics again.

A write is one record batch per partition, and one of them may fail while the others
are acknowledged (a leader moving, a request timing out, a message too large): the
runner retries the whole write (or its halves), and the records the broker did take
are remembered and skipped then, not sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]

from proxy.config_services import Usage
from proxy.usage.event import FEEDBACK, USAGE
from proxy.usage.runner import Record, Refused, record_id
from selector_model.usage_event import Feedback, UsageEvent

log = logging.getLogger("autoroute.usage")

# What the broker refuses for what a batch holds, the same at every retry: a message or
# a record batch larger than it takes (`message.max.bytes`, the topic's
# `max.message.bytes`: an event with a long logged prompt). aiokafka does not retry
# these. Not CORRUPT_MESSAGE: a checksum that fails is damage on the way, retried.
_REFUSED = (MessageSizeTooLargeError, RecordListTooLargeError)


# Ids of records acknowledged in a write that failed, which the runner sends again: at
# most this many are remembered (a retry comes within seconds; the oldest go first).
_ACKNOWLEDGED_MEMORY = 100_000
# A record batch sent: its (topic, partition), its records' ids, its acknowledgement.
_Sent = tuple[tuple[str, int], list[str], Any]


class LogLost(Exception):
    """A partition's offset went back: the broker lost what it had acknowledged."""


def message_key(event: UsageEvent | Feedback) -> bytes:
    if isinstance(event, Feedback):
        return event.request_id.encode()
    return (event.client.user or event.request_id).encode()


class KafkaSink:
    name = "kafka"

    def __init__(self, settings: Usage) -> None:
        assert settings.kafka_bootstrap
        self.settings = settings
        self.bootstrap = settings.kafka_bootstrap
        self.topics = {USAGE: settings.kafka_usage_topic, FEEDBACK: settings.kafka_feedback_topic}
        self.producer: Any = None
        self._partitioner = DefaultPartitioner()
        # Where each partition's log ended at the last acknowledgement, to tell a
        # broker that lost its log (`LogLost`).
        self._log_ends: dict[tuple[str, int], int] = {}
        # Records the broker acknowledged in a write that failed (`_remember`).
        self._acknowledged: dict[str, None] = {}

    async def _connect(self) -> Any:
        s = self.settings
        if s.kafka_create_topics:
            await self._create_topics()
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="autoroute",
            acks="all",
            enable_idempotence=False,
            compression_type=None if s.kafka_compression == "none" else s.kafka_compression,
            linger_ms=s.kafka_linger_ms,
            max_batch_size=256 * 1024,
            request_timeout_ms=s.kafka_request_timeout_ms,
            retry_backoff_ms=100,
        )
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    async def _create_topics(self) -> None:
        s = self.settings
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=s.kafka_request_timeout_ms
        )
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in self.topics.values() if t not in existing]
            if missing:
                await admin.create_topics(
                    [NewTopic(t, s.kafka_partitions, s.kafka_replication_factor) for t in missing]
                )
                log.info("kafka topics created: %s", ", ".join(missing))
            # A new topic's offsets start at 0: not a lost log.
            self._log_ends = {tp: end for tp, end in self._log_ends.items() if tp[0] not in missing}
        finally:
            await admin.close()

    async def write(self, records: Sequence[Record]) -> None:
        if self._acknowledged:
            records = self._not_yet_sent(records)
            if not records:
                return
        if self.producer is None:
            self.producer = await self._connect()
        producer = self.producer
        try:
            sent = await self._send_batches(producer, records)
            results = await asyncio.gather(*(f for _, _, f in sent), return_exceptions=True)
        except BaseException:
            await self._discard()
            raise
        lost = self._log_lost(sent, results)
        if lost:
            await self._discard()
            raise LogLost(lost)
        failed = [r for r in results if isinstance(r, BaseException)]
        if not failed:
            return
        self._remember(sent, results)
        transient = [e for e in failed if not isinstance(e, _REFUSED)]
        if transient:
            await self._discard()
            raise transient[0]
        # The producer is sound: kept for the halves the runner writes next.
        raise Refused(f"{type(failed[0]).__name__}: {failed[0]}") from failed[0]

    def _not_yet_sent(self, records: Sequence[Record]) -> list[Record]:
        """`records` but those acknowledged in a write that failed, forgotten now."""
        acknowledged = self._acknowledged
        left = []
        for record in records:
            rid = record_id(record)
            if rid in acknowledged:
                del acknowledged[rid]
            else:
                left.append(record)
        return left

    def _remember(self, sent: list[_Sent], results: list[Any]) -> None:
        """The records of the batches acknowledged in a write that failed."""
        acknowledged = self._acknowledged
        for (_, ids, _), result in zip(sent, results, strict=True):
            if not isinstance(result, BaseException):
                acknowledged.update(dict.fromkeys(ids))
        for _ in range(len(acknowledged) - _ACKNOWLEDGED_MEMORY):
            del acknowledged[next(iter(acknowledged))]

    def _log_lost(self, sent: list[_Sent], results: list[Any]) -> str:
        """Note where each acknowledged batch ends its partition's log; say which
        partition's offset went back ("" when none did)."""
        lost = ""
        for (where, ids, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                continue
            end = self._log_ends.get(where)
            if end is not None and result.offset < end and not lost:
                lost = (
                    f"{where[0]}[{where[1]}] acknowledged offset {result.offset} after {end}: "
                    "the broker lost its log"
                )
            self._log_ends[where] = result.offset + len(ids)
        if lost:
            self._log_ends.clear()  # the retry's acknowledgements start afresh
        return lost

    async def _send_batches(self, producer: Any, records: Sequence[Record]) -> list[_Sent]:
        """One record batch per partition rather than one `send` per message: `send`
        costs tens of microseconds of Python each, which capped throughput. Keys are
        hashed with the Java client's partitioner, as `send` would. Each batch as its
        (topic, partition), its records' ids and its acknowledgement's future."""
        groups: dict[tuple[str, int], list[tuple[bytes, bytes, str]]] = {}
        partitions: dict[str, list[int]] = {}
        for record in records:
            topic = self.topics[record.kind]
            if topic not in partitions:
                partitions[topic] = sorted(await producer.partitions_for(topic))
            key = message_key(record.event)
            partition = self._partitioner(key, partitions[topic], partitions[topic])
            groups.setdefault((topic, partition), []).append((key, record.line, record_id(record)))
        sent: list[_Sent] = []
        for where, messages in groups.items():
            topic, partition = where
            batch = producer.create_batch()
            ids: list[str] = []
            for key, value, rid in messages:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    future = await producer.send_batch(batch, topic, partition=partition)
                    sent.append((where, ids, future))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
                    ids = []
                ids.append(rid)
            sent.append((where, ids, await producer.send_batch(batch, topic, partition=partition)))
        return sent

    async def _discard(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 2)

    async def close(self) -> None:
        if self.producer is not None:
            producer, self.producer = self.producer, None
            await producer.stop()

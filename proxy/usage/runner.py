"""One background writer per sink: batches from memory, spills to its spool when the
sink is slow or down, and replays the spool in order once the sink answers again.

While a sink is failing, what the dispatcher hands over goes to the spool at once
rather than waiting in memory for the next retry: what a SIGKILL can lose is then
what the dispatcher had not handed over yet (at most `flush_interval_seconds` of
events) and a batch whose write was in flight. When the spool itself cannot be
written (a full disk, no file descriptor left), what it could not take waits in memory,
up to `sink_buffer` records, for the sink or the spool to take it: a condition that
often passes (descriptors come back as connections close) loses nothing then.

Order: while the spool holds anything, new records go behind it on disk, so replay
keeps arrival order. The one exception: a batch whose write fails after newer records
already spilled (the sink was slow and the buffer overflowed meanwhile) lands behind
those; consumers order by `ts` and de-duplicate by request id anyway.

A record the sink refuses as data (`Refused`: it fails the same way at every retry) is
found by writing its batch in halves until it is alone, and dropped, loudly; the rest
of the batch is written in order. One bad record never holds the records behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

from proxy.config import ConfigError
from proxy.config_services import Usage
from proxy.usage.event import FEEDBACK, USAGE
from proxy.usage.spool import Spool
from selector_model import usage_event
from selector_model.usage_event import Feedback, UsageEvent

log = logging.getLogger("autoroute.usage")
T = TypeVar("T")


@dataclass(slots=True)
class Record:
    """An event on its way to the sinks, with its JSON: made once, shared by every sink,
    never changed (not a frozen dataclass, which costs several times as much to build,
    and one is built per event)."""

    event: UsageEvent | Feedback
    line: bytes
    # Where a feedback came from when no API key gave it (online learning bounds each
    # client's waiting ratings apart); "" otherwise. Not written anywhere.
    client: str = ""

    @property
    def kind(self) -> str:
        return FEEDBACK if isinstance(self.event, Feedback) else USAGE


_KIND_TAG = {USAGE: b"u", FEEDBACK: b"f"}


class Refused(Exception):
    """A sink's refusal of what records hold, not of the moment (a value no column
    takes, a message larger than the broker allows): the same records fail the same way
    at every retry. Raised by a sink only for such errors, never for a connection, a
    timeout or a server that is down, which spool and retry."""


# The most bytes of events in one write, beyond `batch_size` and its multiples (a
# batch holds one record at least, whatever its size). An event is about a kilobyte,
# but one with a logged prompt may take tens of megabytes (`limits.max_prompt_chars`
# characters, each NUL or control one six bytes of JSON): a batch of a few such takes
# a sink longer than `write_timeout_seconds`, and so would every retry of it from the
# spool, with every event behind it held there for good.
BATCH_BYTES = 8 << 20

# Ids of records dropped as refused lately: a batch retried after a transient failure
# met while isolating one drops it again, and counts and logs it only once.
_REFUSED_MEMORY = 1024


class Sink(Protocol):
    name: str

    async def write(self, records: Sequence[Record]) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Counters:
    queued: int = 0
    written: int = 0
    spilled: int = 0
    replayed: int = 0
    dropped: int = 0
    failures: int = 0


def spool_line(record: Record) -> bytes:
    return _KIND_TAG[record.kind] + record.line + b"\n"


def record_id(record: Record) -> str:
    event = record.event
    return event.feedback_id if isinstance(event, Feedback) else event.request_id


def from_spool(line: bytes) -> Record:
    body = line[1:]
    if line[:1] == _KIND_TAG[USAGE]:
        return Record(usage_event.parse_line(body), body)
    return Record(usage_event.parse_feedback_line(body), body)


def _within_bytes(records: Sequence[Record], most: int) -> int:
    """How many of the first `most` records make a batch of `BATCH_BYTES` at most (one
    at least)."""
    size = 0
    for n, record in enumerate(records[:most]):
        size += len(record.line)
        if size > BATCH_BYTES and n:
            return n
    return min(len(records), most)


class SinkRunner:
    def __init__(self, sink: Sink, settings: Usage) -> None:
        self.sink = sink
        self.name = sink.name
        self.settings = settings
        self.counters = Counters()
        try:
            self.spool = Spool(
                settings.spool_dir,
                sink.name,
                settings.spool_segment_bytes,
                settings.fsync,
                settings.fsync_interval_seconds,
            )
        except OSError as exc:
            # Where events wait while a sink is down: without it the proxy cannot start.
            raise ConfigError(
                f"usage.spool_dir: cannot use {settings.spool_dir}: {exc.strerror or exc}",
                key="usage.spool_dir",
            ) from None
        self.buffer: list[Record] = []
        self.last_error = ""
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"usage-{sink.name}")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._stopping = asyncio.Event()
        self._refused: dict[str, None] = {}
        # Why the spool could not be written last, "" while it can.
        self.last_spill_error = ""
        if self.spool.pending:
            log.info("usage sink %s: %d spooled events to replay", self.name, self.spool.pending)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        # Shielded: a job handed to the disk thread runs even when its waiter is
        # cancelled (a shutdown). Cancelling one still queued behind another would drop
        # a spill whose records are out of the buffer already, or a commit.
        job = asyncio.get_running_loop().run_in_executor(self._io, fn, *args)
        return await asyncio.shield(job)

    def snapshot(self) -> dict[str, Any]:
        return {
            **asdict(self.counters),
            "buffered": len(self.buffer),
            "spool_pending": self.spool.pending,
            "healthy": not self._failing,
            "last_error": self.last_error or None,
            "spool_error": self.last_spill_error or None,
        }

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"usage-sink-{self.name}")
        if self.spool.pending:
            self._wake.set()  # a spool left by a crash (or a stop) is replayed first

    async def accept(self, records: list[Record]) -> None:
        """Called by the dispatcher every `flush_interval_seconds` at most. While the
        sink is failing (or a spool waits to be replayed) the records go to disk now,
        not to the buffer: a retry may be `retry_backoff_max_seconds` away, and a
        SIGKILL meanwhile would lose whatever waits in memory."""
        self.counters.queued += len(records)
        self.buffer.extend(records)
        if self.last_spill_error:
            # The spool failed: the next try is the writer's, at its backoff, not one
            # per flush with every record held.
            self._trim()
        elif self._failing or self.spool.pending or len(self.buffer) >= self.settings.sink_buffer:
            await self._spill(self._take_all())
        self._wake.set()

    def spill_now(self, records: list[Record]) -> None:
        """Synchronous spill, for the queue-overflow path (no await possible there)."""
        self.counters.queued += len(records)
        self._hold(self._spill_sync(records))

    def _take_all(self) -> list[Record]:
        records, self.buffer = self.buffer, []
        return records

    def _spill_sync(self, records: list[Record]) -> list[Record]:
        """Append `records` to the spool: those it could not take (none, or all)."""
        try:
            self.spool.append([spool_line(r) for r in records])
        except OSError as exc:
            if not self.last_spill_error:
                log.warning(
                    "usage sink %s: the spool cannot be written, events wait in memory: %s",
                    self.name,
                    exc,
                )
            self.last_spill_error = f"{type(exc).__name__}: {exc}"
            return records
        self.counters.spilled += len(records)
        if self.last_spill_error:
            log.info("usage sink %s: the spool is written again", self.name)
        self.last_spill_error = ""
        return []

    def _hold(self, records: list[Record]) -> None:
        """Keep what the spool could not take (a full disk, no file descriptor left) in
        memory, ahead of what arrived since, for the next write or spill."""
        if records:
            self.buffer[:0] = records
            self._trim()

    def _trim(self) -> None:
        """While the spool cannot be written, memory holds up to `sink_buffer` records;
        the newest beyond that are dropped, loudly."""
        lost = len(self.buffer) - self.settings.sink_buffer
        if lost > 0:
            del self.buffer[-lost:]
            self.counters.dropped += lost
            log.error(
                "usage sink %s: DROPPED %d events, neither the spool nor memory can take them: %s",
                self.name,
                lost,
                self.last_spill_error,
            )

    async def _spill(self, records: list[Record]) -> None:
        if records:
            self._hold(await self._in_thread(self._spill_sync, records))

    async def _send(self, records: Sequence[Record]) -> None:
        # A timeout on this task, not wait_for: that makes a task per write.
        async with asyncio.timeout(self.settings.write_timeout_seconds):
            await self.sink.write(records)

    async def _write(self, records: Sequence[Record]) -> int | None:
        """Write `records`: how many were dropped as refused (0 mostly), or None when
        the sink failed, and the batch is to be retried whole (what was written of it
        meanwhile is de-duplicated by the sinks' consumers)."""
        try:
            try:
                await self._send(records)
                dropped = 0
            except Refused as exc:
                self.counters.failures += 1
                dropped = await self._isolate(records, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counters.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if not self._failing:
                log.warning("usage sink %s failed, spooling: %s", self.name, self.last_error)
            self._failing = True
            return None
        if self._failing:
            log.info("usage sink %s is back", self.name)
        self._failing = False
        self.last_error = ""
        return dropped

    async def _isolate(self, records: Sequence[Record], refused: Refused) -> int:
        """Write a refused batch in halves, in order, until each refused record is
        alone; drop those. How many were dropped. A transient failure raises, as from
        `_send`."""
        if len(records) == 1:
            self._drop_refused(records[0], refused)
            return 1
        middle = len(records) // 2
        dropped = 0
        for half in (records[:middle], records[middle:]):
            try:
                await self._send(half)
            except Refused as exc:
                dropped += await self._isolate(half, exc)
        return dropped

    def _drop_refused(self, record: Record, refused: Refused) -> None:
        rid = record_id(record)
        if rid in self._refused:
            return
        self._refused[rid] = None
        if len(self._refused) > _REFUSED_MEMORY:
            del self._refused[next(iter(self._refused))]
        self.counters.dropped += 1
        log.error(
            "usage sink %s: DROPPED %s event %s, refused as data: %s",
            self.name,
            record.kind,
            rid,
            refused,
        )

    async def pump(self) -> bool:
        """Write what is spooled, then what is buffered. False when the sink failed."""
        batch_size = self.settings.batch_size
        if self.spool.pending:
            await self._spill(self._take_all())  # keep arrival order behind the spool
            while self.spool.pending:
                lines, cursor = await self._in_thread(self.spool.read, batch_size, BATCH_BYTES)
                if not lines:
                    break
                records = self._parsed(lines)
                dropped = await self._write(records) if records else 0
                if dropped is None:
                    return False
                await self._in_thread(self.spool.commit, cursor, len(lines))
                self.counters.replayed += len(records) - dropped
        # Under a backlog, batches grow (to 8x): fewer round trips and transactions is
        # what lets a sink catch up; when idle they are whatever arrived meanwhile.
        take = batch_size * 8
        while self.buffer:
            batch = self.buffer[: _within_bytes(self.buffer, take)]
            del self.buffer[: len(batch)]
            try:
                dropped = await self._write(batch)
            except asyncio.CancelledError:
                self.buffer[:0] = batch  # shutdown: it spills with the rest
                raise
            if dropped is None:
                await self._spill(batch + self._take_all())
                return False
            self.counters.written += len(batch) - dropped
        return True

    def _parsed(self, lines: list[bytes]) -> list[Record]:
        """The spooled records; a line that is not one (a torn write with the next
        record glued to it, a damaged disk) is dropped, loudly, rather than raised out
        of the replay, which would then stop at it for good."""
        records: list[Record] = []
        for line in lines:
            try:
                records.append(from_spool(line))
            except ValueError as exc:
                self.counters.dropped += 1
                log.error(
                    "usage sink %s: DROPPED a spooled line that is not a record (%s): %r",
                    self.name,
                    exc,
                    line[:200],
                )
        return records

    async def _run(self) -> None:
        backoff = self.settings.retry_backoff_seconds
        while not self._stopping.is_set():
            await self._wake.wait()
            self._wake.clear()
            if await self.pump():
                backoff = self.settings.retry_backoff_seconds
                continue
            # Back off, but wake at once for a stop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, self.settings.retry_backoff_max_seconds)
            self._wake.set()

    async def stop(self) -> None:
        """Write what is left within `drain_seconds`; spill whatever is still not written."""
        if self._task is not None:
            # Let a write in progress finish rather than cancel it: a write handed to a
            # thread or a broker cannot be taken back, and its batch, put back in the
            # buffer, would be written a second time below.
            self._stopping.set()
            self._wake.set()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, self.settings.drain_seconds)
        if not self._failing:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self.pump(), self.settings.drain_seconds)
        await self._spill(self._take_all())
        if self.buffer:
            self.counters.dropped += len(self.buffer)
            log.error(
                "usage sink %s: DROPPED %d events at stop, the spool cannot be written: %s",
                self.name,
                len(self.buffer),
                self.last_spill_error,
            )
            self.buffer = []
        await self._in_thread(self.spool.close)
        with contextlib.suppress(Exception):
            await self.sink.close()
        self._io.shutdown(wait=True)

"""The usage pipeline: a bounded in-memory queue filled by the request handler and
drained by one background dispatcher into a writer per sink.

The handler calls `record()`, which appends references to a deque and returns: no
await, no I/O, no JSON. The dispatcher completes events (body parsing, hashing,
serialisation: once, shared by every sink; a batch with a large body in a reader
thread, as large bodies are read) and hands batches to the sink runners.
If the queue is full (the dispatcher cannot keep up), the event is completed on the
spot and spilled to each sink's spool: slower for that request, but nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from proxy import go_json, header_values, tasks
from proxy.config_services import Usage
from proxy.outcome import Outcome
from proxy.routes import runs_a_model
from proxy.usage import event as ev
from proxy.usage.file_sink import FileSink
from proxy.usage.kafka import KafkaSink
from proxy.usage.postgres import PostgresSink
from proxy.usage.runner import Record, Sink, SinkRunner
from proxy.usage.stats import ApiKeyRef, MemoryStats, from_postgres
from selector_model.usage_event import Feedback, UsageEvent

log = logging.getLogger("autoroute.usage")
USER_HEADER = "X-Autoroute-User"


# A usage event made: the event, its document and that document's line for the sinks.
_Made = tuple[UsageEvent, dict[str, Any], bytes]


def _made(items: list[ev.Captured | Record], log_prompts: bool) -> list[_Made | None]:
    """The event of each captured item (None for a record, queued complete, and for an
    item whose event could not be made); touches nothing shared, so any thread may
    make them."""
    made: list[_Made | None] = []
    for item in items:
        if isinstance(item, Record):
            made.append(None)
            continue
        try:
            event = ev.complete(item, log_prompts)
            doc = event.document()
            made.append((event, doc, orjson.dumps(doc)))
        except Exception:  # a bug here must not stop the pipeline; it is loud
            log.exception("usage: could not build the event for %s", item.request_id)
            made.append(None)
    return made


class UsagePipeline:
    def __init__(self, settings: Usage) -> None:
        self.settings = settings
        self.queue: deque[ev.Captured | Record] = deque()
        self.memory = MemoryStats(settings.stats_window)
        self.runners: list[SinkRunner] = []
        self.postgres: PostgresSink | None = None
        self.overflowed = 0
        self.invalid = 0
        self._wake: asyncio.Event | None = None
        # A rating was queued: the dispatcher completes the queue for the observers now
        # (`_observe_queued`), before the sinks' next batch is due.
        self._rated = False
        # Records completed and observed that the sinks get with their next batch.
        self._observed: list[Record] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._warned_at = 0.0
        # Called with (USAGE or FEEDBACK, the completed document, the address a
        # feedback came from where no API key gave it, else "") for every event, on the
        # writer's side of the queue (online learning reads its outcomes here).
        self.observers: list[Callable[[str, Mapping[str, Any], str], None]] = []

    def sinks(self) -> list[Sink]:
        s = self.settings
        sinks: list[Sink] = []
        if s.postgres_dsn:
            self.postgres = PostgresSink(s.postgres_dsn, s.postgres_pool_size)
            sinks.append(self.postgres)
        if s.kafka_bootstrap:
            sinks.append(KafkaSink(s))
        if s.file_mode == "always" or (s.file_mode == "auto" and not sinks):
            sinks.append(FileSink(s.file_path, s.file_max_bytes, s.file_backups))
        return sinks

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = False
        self.runners = [SinkRunner(sink, self.settings) for sink in self.sinks()]
        for runner in self.runners:
            runner.start()  # replays a spool left by a crash first
        self._task = asyncio.create_task(self._run(), name="usage-dispatch")
        if self.postgres is not None:
            # Apply migrations now rather than at the first event; a database that is
            # down only delays this (the first write retries it).
            asyncio.create_task(self._warm_postgres(), name="usage-migrate")  # noqa: RUF006

    async def _warm_postgres(self) -> None:
        assert self.postgres is not None
        try:
            await self.postgres.ensure_pool()
        except Exception as exc:
            log.warning("usage: PostgreSQL not reachable at start: %s", exc)

    def record(self, request: web.Request, outcome: Outcome) -> None:
        """The completion hook; must never block or raise. One event per request that
        was let in and runs a model (not `/api/show`, which editors poll and which would
        drown the real traffic)."""
        decided = outcome.decided
        if decided.refused or not runs_a_model(decided.route, request.method) or self._wake is None:
            return
        headers = request.headers
        key_id = decided.key_id
        captured = ev.Captured(
            outcome,
            request.method,
            request.path,
            time.time(),
            headers.get("User-Agent"),
            headers.get(USER_HEADER),
            None if key_id else headers.get("Authorization") or headers.get("X-Api-Key"),
            key_id,
            decided.request_id,
            decided.client_request_id,
            decided.key_hash,
        )
        self._put(captured)

    def submit_feedback(self, feedback: Feedback, client: str = "") -> str:
        """Queue a rating (`event.feedback` makes one), from the address `client` where
        no API key gave it; its feedback id."""
        self._put(Record(feedback, orjson.dumps(feedback.document()), client))
        # A client that rates an answer and asks again has its rating counted in that
        # decision: the dispatcher hands it (and the answer's event before it) to the
        # observers at once, not at the next flush.
        self._rated = True
        if self._wake is not None:
            self._wake.set()
        return feedback.feedback_id

    def _put(self, item: ev.Captured | Record) -> None:
        queue = self.queue
        if len(queue) >= self.settings.queue_size:
            self._overflow(item)
            return
        queue.append(item)
        if len(queue) == self.settings.batch_size and self._wake is not None:
            self._wake.set()

    def _overflow(self, item: ev.Captured | Record) -> None:
        self.overflowed += 1
        records = self._complete([item])
        for runner in self.runners:
            runner.spill_now(records)
        now = time.monotonic()
        if now - self._warned_at > 10:
            self._warned_at = now
            log.warning("usage queue full (%d): spilling events to disk", len(self.queue))

    def _complete(
        self, items: list[ev.Captured | Record], made: list[_Made | None] | None = None
    ) -> list[Record]:
        """`items` as records for the sinks, each counted in memory and shown to the
        observers; `made`: their events already made (`_made`), else made here."""
        if made is None:
            made = _made(items, self.settings.log_prompts)
        records: list[Record] = []
        for item, event in zip(items, made, strict=True):
            if isinstance(item, Record):
                records.append(item)
                assert isinstance(item.event, Feedback)  # the only kind queued completed
                fb = item.event
                self.memory.rate(fb.request_id, fb.rating, fb.api_key_id, fb.api_key_hash)
                self._observe(ev.FEEDBACK, item.event.document(), item.client)
                continue
            if event is None:
                self.invalid += 1
                continue
            usage, doc, line = event
            records.append(Record(usage, line))
            self.memory.add(usage)
            self._observe(ev.USAGE, doc)
        return records

    async def _complete_off_loop(self, items: list[ev.Captured | Record]) -> list[Record]:
        """`_complete`, the events of large bodies made in a reader thread: making one
        hashes its prompt and may parse its body again, C calls that would hold every
        other client's request for as long (`go_json.off_loop`)."""
        size = sum(len(i.outcome.decided.body or b"") for i in items if isinstance(i, ev.Captured))
        made = await go_json.off_loop(size, _made, items, self.settings.log_prompts)
        return self._complete(items, made)

    def _observe(self, what: str, doc: Mapping[str, Any], client: str = "") -> None:
        for observer in self.observers:
            try:
                observer(what, doc, client)
            except Exception:  # an observer's bug must not stop the pipeline; it is loud
                log.exception("usage: an observer failed on a %s event", what)

    def _observe_queued(self) -> None:
        """Complete what is queued, for the observers, keeping the records for the sinks'
        next batch (`_dispatch`)."""
        queue = self.queue
        while queue:
            items = [queue.popleft() for _ in range(min(len(queue), self.settings.batch_size))]
            self._observed += self._complete(items)

    async def _dispatch(self) -> None:
        held, self._observed = self._observed, []
        if held:
            for runner in self.runners:
                await runner.accept(held)
        queue = self.queue
        chunk = self.settings.batch_size * 4
        while queue:
            items = [queue.popleft() for _ in range(min(len(queue), chunk))]
            try:
                records = await self._complete_off_loop(items)
            except asyncio.CancelledError:
                # Stopped while a thread made them: queued again, for the final drain.
                queue.extendleft(reversed(items))
                raise
            for runner in self.runners:
                await runner.accept(records)

    async def _run(self) -> None:
        assert self._wake is not None
        interval = self.settings.flush_interval_seconds
        loop = asyncio.get_running_loop()
        due = loop.time() + interval
        while not self._stopping:
            # A timeout on this task, not wait_for: that makes a task per wait.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(due):
                    await self._wake.wait()
            self._wake.clear()
            rated, self._rated = self._rated, False
            if rated and loop.time() < due and len(self.queue) < self.settings.batch_size:
                # Ratings are counted now, and the sinks keep their batches: a flood of
                # ratings makes no write per rating.
                self._observe_queued()
                continue
            await self._dispatch()
            due = loop.time() + interval

    async def stop(self) -> None:
        """Drain: what the sinks take within `drain_seconds` is written, the rest spills."""
        if self._task is not None:
            # The dispatcher finishes the round it is in rather than being cancelled in
            # it: records handed to one sink and not yet to the next would be lost.
            self._stopping = True
            if self._wake is not None:
                self._wake.set()
            await asyncio.wait({self._task}, timeout=self.settings.drain_seconds)
            await tasks.stop(self._task)  # cancels one still running; says how it ended
            self._task = None
        await self._dispatch()
        self._wake = None
        await asyncio.gather(*(runner.stop() for runner in self.runners))

    def counters(self) -> dict[str, Any]:
        return {
            "queue": len(self.queue) + len(self._observed),
            "overflowed": self.overflowed,
            "invalid": self.invalid,
            "sinks": {r.name: r.snapshot() for r in self.runners},
        }

    async def stats(self, whose: ApiKeyRef | None = None) -> dict[str, Any]:
        """Per model and backend (`proxy.usage.stats`), of the requests made with the
        API key `whose` (name, hash) alone, or of every request (None); and the
        pipeline's and sinks' counts, which are every key's."""
        pool = self.postgres.pool if self.postgres is not None else None
        if pool is not None:
            try:
                window = self.settings.stats_window_seconds
                models = await from_postgres(pool, window, whose=whose)
                return {"source": "postgres", "models": models, **self.counters()}
            except Exception as exc:
                log.warning("usage stats from PostgreSQL failed, using memory: %s", exc)
        return {"source": "memory", "models": self.memory.summary(whose), **self.counters()}


# The longest comment a rating may carry, in characters.
MAX_COMMENT = 10_000
# The longest feedback body read: a rating with its longest comment, every character
# escaped (`\uXXXX`, six bytes), and room to spare for a client's own spacing.
MAX_FEEDBACK_BYTES = 1024 * 1024


def parse_feedback(doc: Any) -> tuple[str, float, str | None]:
    """`{request_id, rating, comment?}` (the body as `go_json.read` reads it, a JSON
    value); ValueError says what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("body must be a JSON object")
    request_id, rating, comment = doc.get("request_id"), doc.get("rating"), doc.get("comment")
    # Only an id an answer could have carried (`header_values.request_id`) can match.
    if not isinstance(request_id, str) or header_values.request_id(request_id) is None:
        raise ValueError(
            "request_id must be the X-Request-Id of an answer "
            f"(printable ASCII without spaces, at most {header_values.MAX_REQUEST_ID} characters)"
        )
    if isinstance(rating, bool) or not isinstance(rating, int | float) or not math.isfinite(rating):
        raise ValueError("rating must be a number")
    if not 0 <= rating <= 1:
        raise ValueError("rating must be between 0 (thumbs-down) and 1 (thumbs-up)")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        raise ValueError(f"comment must be a string of at most {MAX_COMMENT} characters")
    return request_id, float(rating), comment

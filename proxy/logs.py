"""Structured logs: one JSON object per line, with the request id where there is one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.handlers
import math
import re
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from proxy import tasks
from proxy.header_values import valid

if TYPE_CHECKING:
    from aiohttp import web

    from proxy.outcome import Outcome

log = logging.getLogger("autoroute.logs")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            doc.update((k, v) for k, v in fields.items() if v is not None)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup(level: str = "INFO", json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiokafka logs each reconnect attempt to a broker that is down at ERROR, every few
    # seconds for the whole outage; the Kafka sink reports its failures itself, once
    # per outage, and /metrics counts what spilled.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


@contextlib.contextmanager
def held() -> Iterator[list[logging.LogRecord]]:
    """The records logged inside, kept from the handlers of the moment (Python's last
    resort before `setup`) for `replay` once `setup` has run: what reading the
    configuration logs (a variable it ignores) reaches the operator in the format and
    at the level that configuration sets, not as a line of its own before them."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    keeper = logging.handlers.BufferingHandler(capacity=sys.maxsize)
    root.handlers[:] = [keeper]
    root.setLevel(logging.DEBUG)  # `replay` leaves out what the set-up level does
    try:
        yield keeper.buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def replay(records: list[logging.LogRecord]) -> None:
    """Log `records` (`held`) again, now through the handlers and levels `setup` set."""
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


class AccessLog:
    """One JSON line per request, buffered and written a few times a second.

    Why not `logging`: a record per request costs a LogRecord, a formatter pass and a
    write syscall with a flush; on a 20-chunk stream that was a fifth of the proxy's
    CPU. Lines are formatted off the request path, in `flush`.

    Any value is written (a string JSON cannot carry is made valid first), and `flush`
    never raises: the writer task lives as long as the proxy. What cannot be written
    (a broken stream) or kept (more than `max_pending` lines waiting) is dropped and
    counted, so the buffer stays bounded.
    """

    def __init__(
        self,
        enabled: bool,
        stream: Any = None,
        interval: float = 0.25,
        max_pending: int = 10_000,
        json: bool = True,
    ) -> None:
        self.enabled = enabled
        # False: one readable `key=value` line per request, for a person at a terminal.
        self.json = json
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.max_pending = max_pending
        self.dropped = 0  # lines lost, since the start: buffer full or write failed
        self._pending: list[tuple[float, dict[str, Any]]] = []
        # The whole second the latest line was stamped in, and its text: formatting a
        # time costs several times as much as the rest of a line.
        self._second: tuple[int, str] = (-1, "")
        self._task: asyncio.Task[None] | None = None

    def record(self, fields: dict[str, Any]) -> None:
        if self.enabled:
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                return
            self._pending.append((time.time(), fields))

    def finished(self, request: web.Request, outcome: Outcome) -> None:
        """The completion hook: one line for the request."""
        if not self.enabled:
            return
        decided, served = outcome.decided, outcome.served
        ms, ttfc_ms = outcome.ms()
        self.record(
            {
                "request_id": decided.request_id,
                "client_request_id": decided.client_request_id,
                "method": request.method,
                "path": request.path,
                "model": decided.model,
                "status": served.status,
                "backend": served.backend,
                "key": decided.key_id,
                "attempts": served.attempts,
                "bytes": served.body_bytes,
                "ms": ms,
                "error": served.error,
                "cancelled": served.cancelled or None,
                "client_paused": served.client_paused or None,
                "ttfc_ms": ttfc_ms,
                **served.stats,
            }
        )

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        lines = []
        second, stamp = self._second
        for created, fields in pending:
            if math.floor(created) != second:
                # gmtime floors a time to its second: the same text for every time in it.
                second = math.floor(created)
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            doc = {
                "ts": f"{stamp}.{int(created % 1 * 1000):03d}Z",
                "level": "info",
                "logger": "autoroute.access",
                "msg": "request",
            }
            # A comprehension: a generator here would be resumed once per field.
            doc.update({k: v for k, v in fields.items() if v is not None and v != ""})
            lines.append(_dumps(doc) if self.json else _text(doc))
        self._second = (second, stamp)
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except Exception as exc:  # a closed or full stream: these lines are lost
            self.dropped += len(lines)
            log.warning("access log: could not write %d lines: %r", len(lines), exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.flush()

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._run(), name="access-log")

    async def stop(self) -> None:
        if self._task is not None:
            await tasks.stop(self._task)
        self.flush()


def _dumps(doc: dict[str, Any]) -> str:
    try:
        return orjson.dumps(doc, default=str).decode()
    except TypeError:  # orjson.JSONEncodeError: a string with undecodable bytes, say
        pass
    try:
        return orjson.dumps(_valid(doc), default=lambda v: valid(str(v))).decode()
    except TypeError:  # what no string fix makes JSON (an integer over 64 bits)
        # repr escapes everything JSON could choke on: the line is kept, readable.
        return orjson.dumps(
            {k: doc[k] for k in ("ts", "level", "logger", "msg")} | {"unserialisable": repr(doc)}
        ).decode()


def _text(doc: dict[str, Any]) -> str:
    """An access line for a terminal: time, then the request's fields as key=value."""
    rest = " ".join(
        f"{k}={_text_value(v)}" for k, v in doc.items() if k not in ("ts", "level", "logger", "msg")
    )
    return f"{doc['ts']} {doc['msg']} {rest}"


# What a value written bare may not hold: it would end the field, or start another.
_NOT_BARE = re.compile(r'[\s"=\\]')


def _text_value(value: Any) -> str:
    """A field's value in a text line, as logfmt writes it: bare, or quoted as a JSON
    string where it holds a blank, `=`, a quote, a backslash or anything unprintable.
    A client writes much of a line (its path, its model's name, an error the backend
    words after it): quoted, it stays one field of one line, so no client writes a
    line or a field (`key=...`) of its own, nor a terminal escape. Escaped as ASCII
    where it holds something unprintable (U+2028 ends a line for some readers)."""
    text = valid(str(value))
    if text and not _NOT_BARE.search(text) and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=not text.isprintable())


def _valid(value: Any) -> Any:
    """`value` with every string in it (keys too) valid UTF-8."""
    if isinstance(value, str):
        return valid(value)
    if isinstance(value, dict):
        return {_valid(str(k)): _valid(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_valid(v) for v in value]
    return value

"""`autoroute usage export --since ... --format jsonl|parquet`: usage events for training
and analysis, from PostgreSQL when configured, else from the local JSONL files.

Events come out in the shape they are written (`selector_model.usage_event`), with
`rating` filled in (the request's latest rating, `usage_event.rating_of`) where it has
any. Parquet needs pyarrow (not a runtime dependency); nested objects become columns:
`client.*` and `outcome.*` flattened, `decision` and `features` as JSON text (their
keys vary).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import asyncpg
import orjson

from proxy import private_files
from proxy.config_services import Usage
from proxy.usage.file_sink import feedback_path
from proxy.usage.stats import FEEDBACK_JOIN
from selector_model import usage_event
from selector_model.usage_event import Feedback, UsageEvent

log = logging.getLogger("autoroute.usage")

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`24h`, `7d`, `30m` (ago) or an ISO 8601 date or time (UTC unless it says); a
    ValueError that says so for anything else."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip())
    try:
        if match:
            return now - timedelta(**{_UNITS[match[2]]: float(match[1])})
        when = datetime.fromisoformat(text.strip())
    except (ValueError, OverflowError):
        raise ValueError(
            f"{text!r} is neither a time ago (24h, 7d, 30m) nor an ISO date or time"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def from_postgres(dsn: str, since: datetime) -> list[UsageEvent]:
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        # Which database, without its password: the errno line alone named nothing.
        parts = urlsplit(dsn)
        where = f"{parts.hostname}:{parts.port or 5432}"
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise OSError(
            f"cannot read usage events from PostgreSQL (usage.postgres_dsn, {where}): {reason}"
        ) from exc
    try:
        await conn.set_type_codec(
            "jsonb", encoder=orjson.dumps, decoder=orjson.loads, schema="pg_catalog"
        )
        rows = await conn.fetch(
            f"SELECT u.event, f.rating FROM usage_events u {FEEDBACK_JOIN} "
            "WHERE u.ts >= $1 ORDER BY u.ts",
            since,
        )
    finally:
        await conn.close()
    return [usage_event.from_row(row) for row in rows]


def _rotations(path: Path) -> list[Path]:
    """`path` and its rotated files, oldest first: events.jsonl.N ... events.jsonl.1,
    events.jsonl."""
    rotated = sorted(
        (p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    return [file for file in [*rotated, path] if file.exists()]


def _jsonl_lines(files: list[Path]) -> Iterator[bytes]:
    for file in files:
        with open(file, "rb") as f:
            yield from (line for line in f if line.strip())


def _usage_files(path: Path) -> tuple[list[Path], list[Path]]:
    """The files of events and of ratings that make up the usage file `path` (as
    `usage.file_path` names it, `FileSink` writes it): `path` and its rotations, and the
    feedback file beside it and its rotations. `path` may name one rotation alone
    (events.jsonl.2): its events only, with every rating of its usage file, as the
    feedback file rotates on its own."""
    if path.suffix[1:].isdigit():
        return ([path] if path.exists() else []), _rotations(feedback_path(path.with_suffix("")))
    return _rotations(path), _rotations(feedback_path(path))


def usage_files(path: str | Path) -> list[Path]:
    """Every file `file_events` reads for `path`: its events', then its ratings'."""
    events, ratings = _usage_files(Path(path).expanduser())
    return [*events, *ratings]


def file_events(path: str | Path) -> Iterator[UsageEvent | None]:
    """Each event of the usage file `path` (`_usage_files`), oldest first, as written
    (a spool replay may write one twice), with `rating` set to its latest rating
    (`usage_event.rating_of` of those that count for it, matched by either of its ids
    as `FEEDBACK_JOIN` matches them) where the feedback file holds any; an event that
    no rating beside it rates keeps the rating its line holds (an exported file's).
    None for a line that is no usage event; a line of the feedback file that is no
    rating is left out. A crash that cuts a write short leaves such a line (glued to the
    next one written): the read goes on past it, and logs how many it met."""
    event_files, rating_files = _usage_files(Path(path).expanduser())
    ratings: dict[str, list[Feedback]] = {}
    unreadable = 0
    for line in _jsonl_lines(rating_files):
        try:
            feedback = usage_event.parse_feedback_line(line)
        except ValueError:
            unreadable += 1
            continue
        ratings.setdefault(feedback.request_id, []).append(feedback)
    for line in _jsonl_lines(event_files):
        try:
            event = usage_event.parse_line(line)
        except ValueError:
            unreadable += 1
            yield None
            continue
        rid, client_id = event.request_id, event.client_request_id
        given = ratings.get(rid, [])
        if client_id and client_id != rid:
            given = given + ratings.get(client_id, [])
        key, key_hash = event.client.api_key_id, event.client.api_key_hash
        rating = usage_event.rating_of(
            f
            for f in given
            if usage_event.rating_counts(f.api_key_id, key, f.api_key_hash, key_hash)
        )
        yield event if rating is None else replace(event, rating=rating)
    if unreadable:
        log.warning("%s: %d lines are no usage event or rating: skipped", path, unreadable)


def from_files(path: str, since: datetime) -> list[UsageEvent]:
    """The usage file's events (`file_events`) from `since` on, each once; a line that
    is no usage event is skipped (`file_events` logs how many)."""
    events, seen = [], set()
    for event in file_events(path):
        if event is None:
            continue
        rid = event.request_id
        if rid in seen or datetime.fromisoformat(event.ts) < since:
            continue  # a spool replay can write an event twice: keep the first
        seen.add(rid)
        events.append(event)
    return events


def flat(event: UsageEvent) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in event.document().items():
        if key in ("client", "outcome") and isinstance(value, dict):
            row.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, dict | list):
            row[key] = orjson.dumps(value).decode()
        else:
            row[key] = value
    return row


def write(events: list[UsageEvent], fmt: str, out: BinaryIO) -> None:
    if fmt == "jsonl":
        for event in events:
            out.write(event.line() + b"\n")
        return
    try:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError:
        raise SystemExit(
            "autoroute: --format parquet needs pyarrow (pip install pyarrow)"
        ) from None
    pq.write_table(pa.Table.from_pylist([flat(e) for e in events]), out)


async def export(settings: Usage, since: str, fmt: str, output: str | None) -> None:
    start = parse_since(since)
    if settings.postgres_dsn:
        events = await from_postgres(settings.postgres_dsn, start)
    else:
        events = from_files(settings.file_path, start)
    if output and output != "-":
        # A one-off command: nothing else runs on this loop, blocking I/O is fine. The
        # events name users and keys (and hold prompts with `usage.log_prompts`): a file
        # made for them is as private as the usage file they come from.
        with private_files.open_file(Path(output), "wb") as f:
            write(events, fmt, f)
    else:
        write(events, fmt, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    print(f"autoroute: exported {len(events)} usage events", file=sys.stderr)

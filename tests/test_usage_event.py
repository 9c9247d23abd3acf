"""The usage event's schema (`selector_model.usage_event`): its PostgreSQL columns are
the tables', and reading gives back what was written, leniently."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg
import orjson
import pytest

from proxy.usage.migrations import migrate
from selector_model import usage_event
from selector_model.usage_event import Answer, Client, Features, Logged, UsageEvent
from tests.support import USAGE_EVENT_KEYS
from tests.usage_services import Database

EVENT = UsageEvent(
    request_id="r1",
    client_request_id="c1",
    ts="2026-01-01T00:00:00.000001Z",
    endpoint="/api/chat",
    method="POST",
    client=Client(user_agent="ua/1", user="ann", api_key_id="k"),
    requested_model="auto",
    served_model="llama3.1:8b",
    backend="gpu-a",
    decision={"chosen": "llama3.1:8b", "propensity": 0.5},
    features=Features(2, [0.0, 1.5]),
    candidate={"name": "llama3.1:8b"},
    prompt_sha256="ab",
    outcome=Answer(status=200, done_reason="stop", eval_count=7, ttfc_ms=1.5, total_ms=9.0),
    cache="hit",
)


def test_the_columns_are_the_tables(database: Database) -> None:
    async def columns(table: str) -> set[str]:
        conn = await asyncpg.connect(database.dsn)
        try:
            await migrate(conn)
            rows = await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
                table,
            )
        finally:
            await conn.close()
        return {r["column_name"] for r in rows}

    assert set(usage_event.COLUMNS) == asyncio.run(columns("usage_events"))
    assert len(set(usage_event.COLUMNS)) == len(usage_event.COLUMNS)
    assert set(usage_event.FEEDBACK_COLUMNS) == asyncio.run(columns("feedback"))
    row = dict(zip(usage_event.COLUMNS, usage_event.row(EVENT, b"{}"), strict=True))
    assert (row["client_user"], row["status"], row["eval_count"]) == ("ann", 200, 7)
    assert row["cache"] == "hit"
    assert row["ts"].isoformat() == "2026-01-01T00:00:00.000001+00:00"


def test_a_rating_counts_for_the_same_key_not_the_same_name() -> None:
    counts = usage_event.rating_counts
    assert counts(None, "ann", None, "aa")  # the proxy checks no keys
    assert counts("ann", "ann", "aa", "aa")
    assert counts("ann", "ann-renamed", "aa", "aa")  # one key, its name changed
    assert not counts("ann", "ann", "bb", "aa")  # a new key under a revoked key's name
    # A record from before keys had hashes beside one from after: not known to match.
    assert not counts("ann", "ann", "aa", None)
    assert not counts("ann", "ann", None, "aa")
    # Both from before: by name, as they were then.
    assert counts("ann", "ann", None, None)
    assert not counts("bob", "ann", None, None)


def test_an_event_reads_back_as_it_was_written() -> None:
    line = EVENT.line()
    assert usage_event.parse_line(line) == EVENT
    assert tuple(orjson.loads(line)) == USAGE_EVENT_KEYS
    logged = replace(EVENT, logged=Logged("why?"))
    doc = logged.document()
    assert (doc["prompt"], doc["response"]) == ("why?", None)
    assert list(doc).index("prompt") == list(doc).index("prompt_sha256") + 1
    assert usage_event.read(doc) == logged
    rated = usage_event.from_row({"event": EVENT.document(), "rating": 1})
    assert rated == replace(EVENT, rating=1.0)


def test_reading_is_lenient() -> None:
    """Absent keys and values of the wrong type read as the field's default; a nested
    object missing what it needs reads as None."""
    event = usage_event.read(
        {
            "request_id": "r",
            "client": {"user": 5},
            "features": {"schema_version": 2, "request": ["x"]},
            "outcome": {"status": True, "eval_count": 3, "cancelled": "yes"},
            "rating": "good",
        }
    )
    assert event == UsageEvent(request_id="r", outcome=Answer(eval_count=3))
    assert usage_event.read({}) == UsageEvent()
    with pytest.raises(ValueError):
        usage_event.parse_line(b"[1, 2]")
    with pytest.raises(ValueError):
        usage_event.parse_line(b"not json")
    feedback = usage_event.parse_feedback_line(b'{"request_id": "r", "rating": 1}')
    assert (feedback.request_id, feedback.rating, feedback.feedback_id) == ("r", 1.0, "")
    with pytest.raises(ValueError):
        usage_event.parse_feedback_line(b'{"request_id": "r"}')

"""PostgreSQL sink: batched binary COPY, idempotent on request id.

A batch is copied (binary protocol; jsonb through a binary codec) into a per-session
temporary staging table, then moved with `INSERT ... ON CONFLICT DO NOTHING` in the
same transaction: a replayed event whose row exists is skipped, so the spool's
at-least-once replay gives exactly one row per request id.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from proxy.usage.event import FEEDBACK
from proxy.usage.migrations import migrate
from proxy.usage.runner import Record

USAGE_COLUMNS = (
    "request_id",
    "client_request_id",
    "ts",
    "endpoint",
    "method",
    "user_agent",
    "client_user",
    "api_key_id",
    "requested_model",
    "served_model",
    "backend",
    "status",
    "error",
    "done_reason",
    "prompt_eval_count",
    "eval_count",
    "load_duration",
    "prompt_eval_duration",
    "eval_duration",
    "total_duration",
    "ttfc_ms",
    "total_ms",
    "bytes",
    "cancelled",
    "prompt_sha256",
    "event",
)
_COLUMN_LIST = ", ".join(USAGE_COLUMNS)
_MOVE = (
    f"INSERT INTO usage_events ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM usage_staging "
    "ON CONFLICT (request_id) DO NOTHING"
)
_FEEDBACK = (
    "INSERT INTO feedback (feedback_id, request_id, rating, comment, ts) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (feedback_id) DO NOTHING"
)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_row(event: dict[str, Any], line: bytes | None = None) -> tuple[Any, ...]:
    o = event["outcome"]
    c = event["client"]
    return (
        event["request_id"],
        event.get("client_request_id"),  # absent from events written before it existed
        datetime.fromisoformat(event["ts"]),
        event["endpoint"],
        event["method"],
        c.get("user_agent"),
        c.get("user"),
        c.get("api_key_id"),
        event["requested_model"],
        event["served_model"],
        event["backend"],
        o["status"],
        o["error"],
        o["done_reason"] if isinstance(o["done_reason"], str) else None,
        _int(o["prompt_eval_count"]),
        _int(o["eval_count"]),
        _int(o["load_duration"]),
        _int(o["prompt_eval_duration"]),
        _int(o["eval_duration"]),
        _int(o["total_duration"]),
        o["ttfc_ms"],
        o["total_ms"],
        o["bytes"],
        o["cancelled"],
        event["prompt_sha256"],
        event if line is None else line,
    )


async def _init_connection(conn: asyncpg.Connection) -> None:
    # COPY speaks the binary protocol, where jsonb is a version byte then the text.
    await conn.set_type_codec(
        "jsonb",
        # Bytes are JSON made already (the event's line): not serialised a second time.
        encoder=lambda v: b"\x01" + (v if isinstance(v, bytes) else orjson.dumps(v)),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )
    # Per session, emptied at each commit: no cleanup, no clash between sessions.
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS usage_staging "
        "(LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )


async def connect(dsn: str, size: int) -> asyncpg.Pool:
    """A pool whose connections speak jsonb; the schema is migrated first."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=size, init=_init_connection, timeout=5
    )
    assert pool is not None
    return pool


class PostgresSink:
    name = "postgres"

    def __init__(self, dsn: str, pool_size: int) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.pool: asyncpg.Pool | None = None

    async def ensure_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            self.pool = await connect(self.dsn, self.pool_size)
        return self.pool

    async def write(self, records: Sequence[Record]) -> None:
        pool = await self.ensure_pool()
        usage = [usage_row(r[1], r[2]) for r in records if r[0] != FEEDBACK]
        feedback = [
            (
                d["feedback_id"],
                d["request_id"],
                float(d["rating"]),
                d.get("comment"),
                datetime.fromisoformat(d["ts"]),
            )
            for kind, d, _ in records
            if kind == FEEDBACK
        ]
        async with pool.acquire() as conn, conn.transaction():
            if usage:
                await conn.copy_records_to_table(
                    "usage_staging", records=usage, columns=USAGE_COLUMNS
                )
                await conn.execute(_MOVE)
            if feedback:
                await conn.executemany(_FEEDBACK, feedback)

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.close()

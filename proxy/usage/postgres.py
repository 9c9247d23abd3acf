"""PostgreSQL sink: batched binary COPY, idempotent on request id.

A batch is copied (binary protocol; jsonb through a binary codec) into a per-session
temporary staging table, then moved with `INSERT ... ON CONFLICT DO NOTHING` in the
same transaction: a replayed event whose row exists is skipped, so the spool's
at-least-once replay gives exactly one row per request id.

A batch that fails on what a record holds raises `Refused`, and the runner isolates the
record (`_REFUSED`); every other failure (connection, timeout, a server shutting down or
out of disk) is raised as it is, and the batch is spooled and retried. One that finds
the tables gone (the database dropped and made again) also drops the pool: the next
write migrates the database as at a start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from proxy.usage.migrations import migrate
from proxy.usage.runner import Record, Refused
from selector_model.usage_event import (
    COLUMNS,
    FEEDBACK_COLUMNS,
    Feedback,
    UsageEvent,
    feedback_row,
    row,
)

_COLUMN_LIST = ", ".join(COLUMNS)
_MOVE = (
    f"INSERT INTO usage_events ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM usage_staging "
    "ON CONFLICT (request_id) DO NOTHING"
)
_FEEDBACK = (
    f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) "
    f"VALUES ({', '.join(f'${n}' for n in range(1, len(FEEDBACK_COLUMNS) + 1))}) "
    "ON CONFLICT (feedback_id) DO NOTHING"
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


# What a batch's records hold, refused by the server or by asyncpg's encoding: SQLSTATE
# classes 22 (data exception: a value out of range, text not valid in the encoding), 23
# (integrity constraint violation) and 54 (program limit exceeded: an index entry too
# large); client side, a number beyond its column's type (OverflowError) and a value the
# codec cannot encode (ValueError: a lone surrogate; asyncpg's own DataError, raised for
# a bad query argument, is one). Raised again by the same records at every retry. Never
# a connection error, a timeout, a shutdown (class 57), a server out of disk or memory
# (53) or a schema not yet migrated (42): those pass, and the batch is retried.
_REFUSED = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
    OverflowError,
    ValueError,
)


def _nul_free(value: Any) -> Any:
    """A decoded JSON value with U+FFFD for each NUL in its strings (keys too)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {_nul_free(k): _nul_free(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nul_free(v) for v in value]
    return value


def _storable(value: Any) -> Any:
    """`value` with U+FFFD for each NUL: PostgreSQL's text and jsonb hold none, and a
    client puts one in a model name, an error it causes, a comment or a logged prompt at
    will; one there fails the whole batch, every client's events with it, at each retry.
    An event's JSON with a NUL is decoded and written again, not searched escape by
    escape: this runs on the event loop, and a logged prompt may hold millions."""
    if isinstance(value, str):
        return _nul_free(value)
    if isinstance(value, bytes):
        return orjson.dumps(_nul_free(orjson.loads(value))) if b"\\u0000" in value else value
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def _stored(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_storable(v) for v in values)


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
        try:
            await self._write(await self.ensure_pool(), records)
        except asyncpg.UndefinedTableError:
            # The schema is gone (a new connection's staging table, or the move, found no
            # usage_events): migrated again by the next write's new pool. Terminated, not
            # closed: a stats query on it would hold the writer until it ends.
            pool, self.pool = self.pool, None
            if pool is not None:
                pool.terminate()
            raise

    async def _write(self, pool: asyncpg.Pool, records: Sequence[Record]) -> None:
        try:
            usage = [
                _stored(row(r.event, r.line)) for r in records if isinstance(r.event, UsageEvent)
            ]
            feedback = [
                _stored(feedback_row(r.event)) for r in records if isinstance(r.event, Feedback)
            ]
        except ValueError as exc:  # a spooled record's `ts` that is no time
            raise Refused(f"{type(exc).__name__}: {exc}") from exc
        conn = await pool.acquire()
        try:
            transaction = conn.transaction()
            await transaction.start()
            if usage:
                await conn.copy_records_to_table("usage_staging", records=usage, columns=COLUMNS)
                await conn.execute(_MOVE)
            if feedback:
                await conn.executemany(_FEEDBACK, feedback)
            await transaction.commit()
        except BaseException as exc:
            # Closed, not rolled back: a write cancelled by the runner's timeout, on a
            # session that stopped answering, would wait for that session in a ROLLBACK
            # and again in the release. The server rolls back a closed session's work.
            conn.terminate()
            if isinstance(exc, _REFUSED):
                raise Refused(f"{type(exc).__name__}: {exc}") from exc
            raise
        finally:
            await pool.release(conn)

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.close()

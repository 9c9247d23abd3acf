"""Versioned PostgreSQL schemas, applied at connect: the usage events' and the API
keys'. Each set has its own record table and advisory lock (two proxies, or a proxy
and `autoroute keys`, starting together must not race); each migration runs in its own
transaction. Append a migration; never edit one that has shipped."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

Migration = tuple[int, str, str]  # version, name, SQL


async def apply(
    conn: asyncpg.Connection, migrations: Sequence[Migration], table: str, lock_key: int
) -> list[int]:
    """Apply what is missing of `migrations`, recorded in `table` (a constant of the
    caller's, never input); returns the versions applied now."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in await conn.fetch(f"SELECT version FROM {table}")}
        for version, name, sql in migrations:
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    f"INSERT INTO {table} (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(version)
    return applied

"""The cloud fallback's tokens per provider and calendar month (UTC): in PostgreSQL
(table `cloud_usage`, migration 5), shared by every proxy, or in memory without a DSN.

The budget is checked before a call and the cloud's count added after it, so calls
running at once may together go past it by what they spend; the next one is refused.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import asyncpg

from proxy.usage.migrations import migrate

log = logging.getLogger("autoroute.cloud")


class BudgetUnavailable(Exception):
    """The shared count cannot be read: the fallback stays off rather than overspend."""


def this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


class Budget:
    def __init__(self, dsn: str | None) -> None:
        self.dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self._connecting = asyncio.Lock()
        # Per provider and month: the count itself without a DSN; with one, the last
        # count read or added (for the status endpoint).
        self.known: dict[tuple[str, str], int] = {}

    async def _connected(self) -> asyncpg.Pool:
        async with self._connecting:
            if self._pool is None:
                assert self.dsn
                try:
                    conn = await asyncpg.connect(self.dsn, timeout=5)
                    try:
                        await migrate(conn)
                    finally:
                        await conn.close()
                    pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=2, timeout=5)
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    raise BudgetUnavailable(f"cloud budget store unavailable: {exc}") from exc
                self._pool = pool
            return self._pool

    async def spent(self, provider: str, month: str) -> int:
        if not self.dsn:
            return self.known.get((provider, month), 0)
        pool = await self._connected()
        try:
            value = await pool.fetchval(
                "SELECT tokens FROM cloud_usage WHERE provider = $1 AND month = $2",
                provider,
                month,
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise BudgetUnavailable(f"cloud budget store unavailable: {exc}") from exc
        self.known[(provider, month)] = int(value or 0)
        return self.known[(provider, month)]

    async def add(self, provider: str, month: str, tokens: int) -> None:
        key = (provider, month)
        self.known[key] = self.known.get(key, 0) + tokens
        if not self.dsn:
            return
        try:
            pool = await self._connected()
            await pool.execute(
                "INSERT INTO cloud_usage (provider, month, tokens) VALUES ($1, $2, $3) "
                "ON CONFLICT (provider, month) DO UPDATE "
                "SET tokens = cloud_usage.tokens + EXCLUDED.tokens, updated_at = now()",
                provider,
                month,
                tokens,
            )
        except (BudgetUnavailable, OSError, asyncpg.PostgresError, TimeoutError) as exc:
            # The answer was given; only its count is lost (and logged, to be seen).
            log.error("cloud tokens not recorded (%s %s: %d): %s", provider, month, tokens, exc)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

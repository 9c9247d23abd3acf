"""API keys stored in PostgreSQL (`autoroute_api_keys`), next to those in the config.

The proxy reads every live key at start and again every `auth.refresh_seconds`, in the
background: the request path only ever looks at the in-memory dict `Access.replace`
swaps in. PostgreSQL down (at start or later) keeps the keys read last (the configured
keys are always there), with one warning per outage. As in the config, only a key's
SHA-256 is stored; `autoroute keys add` prints the key itself once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from proxy.auth import Access, new_key
from proxy.config_services import ApiKey, Auth
from proxy.pg_migrations import apply

log = logging.getLogger("autoroute.auth")

TABLE = "autoroute_api_keys"
# Connecting and reading give up after this: a refresh must never hang for long, and a
# blackholed server must not hold the proxy's start for more than this.
TIMEOUT_SECONDS = 5.0
# What `keys list` shows of a hash, and the shortest prefix `keys revoke` takes.
PREFIX_CHARS = 8
MIN_PREFIX_CHARS = 6

# Versioned like proxy/usage/migrations.py, but recorded in a table of their own: the
# two sets evolve separately and may even live in different databases.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "api keys",
        f"""
        CREATE TABLE {TABLE} (
            sha256 text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{{64}}$'),
            name text,
            role text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
            models text[],  -- NULL or empty: any model
            requests_per_minute integer NOT NULL DEFAULT 0 CHECK (requests_per_minute >= 0),
            max_streams integer NOT NULL DEFAULT 0 CHECK (max_streams >= 0),
            revoked_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        -- A name is the key's id in usage events and what `keys revoke` takes: unique
        -- among live keys, free again once its key is revoked.
        CREATE UNIQUE INDEX {TABLE}_live_name ON {TABLE} (name) WHERE revoked_at IS NULL;
        """,
    ),
)
_LOCK_KEY = 0x6175746F6B657973  # "autokeys"
# Oldest first: of two stored keys with one id, the older keeps it (`Access.replace`).
_LIVE = (
    "SELECT sha256, name, role, models, requests_per_minute, max_streams "
    f"FROM {TABLE} WHERE revoked_at IS NULL ORDER BY created_at, sha256"
)


class KeyCommandError(Exception):
    """A `keys` command that cannot be done (unknown or ambiguous key, name taken)."""


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply what is missing (proxies and the CLI may start together); returns the
    versions applied now."""
    return await apply(conn, MIGRATIONS, "autoroute_auth_migrations", _LOCK_KEY)


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, timeout=TIMEOUT_SECONDS)
    try:
        await migrate(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


async def live_keys(conn: asyncpg.Connection) -> list[ApiKey]:
    return [
        ApiKey(
            sha256=row["sha256"],
            name=row["name"] or "",
            role=row["role"],
            models=tuple(row["models"] or ()) or None,
            requests_per_minute=row["requests_per_minute"],
            max_streams=row["max_streams"],
        )
        for row in await conn.fetch(_LIVE, timeout=TIMEOUT_SECONDS)
    ]


class KeyStore:
    """Keeps `Access.keys` in step with the table; see the module's docstring."""

    def __init__(self, settings: Auth, access: Access) -> None:
        assert settings.postgres_dsn
        self.dsn = settings.postgres_dsn
        self.interval = settings.refresh_seconds
        self.access = access
        self.failing = False  # an outage is under way and has been logged
        # Reads that worked and that failed: what tests and operators can wait on.
        self.refreshes = 0
        self.failures = 0
        self.last_success = 0.0  # time.time() of the last read that worked, for /metrics
        self._conn: asyncpg.Connection | None = None

    async def refresh(self) -> bool:
        """Read the live keys and swap them in; False (keys unchanged) on any failure."""
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await connect(self.dsn)
            stored = await live_keys(self._conn)
        # Anything at all: a refresh must never take the proxy down, and the reason is
        # in the warning. Cancellation (a BaseException) still goes through.
        except Exception as exc:
            self._drop()
            self.failures += 1
            if not self.failing:
                self.failing = True
                log.warning(
                    "API keys in PostgreSQL unavailable (%s: %s); keeping the %d keys "
                    "known, retrying every %gs",
                    type(exc).__name__,
                    exc,
                    len(self.access.keys),
                    self.interval,
                )
            return False
        if self.failing:
            self.failing = False
            log.info("API keys in PostgreSQL available again: %d live keys", len(stored))
        self.access.replace(stored)
        self.refreshes += 1
        self.last_success = time.time()
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()

    def _drop(self) -> None:
        # terminate, not close: close waits for the server, which may be what is gone.
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), TIMEOUT_SECONDS)
            except Exception:  # shutting down: a server that does not answer is let go
                conn.terminate()


# `autoroute keys ...`


@dataclass(frozen=True)
class StoredKey:
    name: str | None
    prefix: str
    role: str
    models: tuple[str, ...]
    requests_per_minute: int
    max_streams: int
    created_at: datetime
    revoked_at: datetime | None


async def add_key(
    conn: asyncpg.Connection,
    name: str,
    role: str = "user",
    models: Sequence[str] = (),
    requests_per_minute: int = 0,
    max_streams: int = 0,
) -> tuple[str, str]:
    """Store a new random key; returns (the key, its SHA-256). The key is not kept."""
    key, digest = new_key()
    try:
        await conn.execute(
            f"INSERT INTO {TABLE} (sha256, name, role, models, requests_per_minute, "
            "max_streams) VALUES ($1, $2, $3, $4, $5, $6)",
            digest,
            name,
            role,
            list(models),
            requests_per_minute,
            max_streams,
        )
    except asyncpg.UniqueViolationError:
        raise KeyCommandError(f"a live key named '{name}' exists already") from None
    except asyncpg.CheckViolationError as exc:
        raise KeyCommandError(f"refused by the table's checks: {exc}") from None
    return key, digest


async def list_keys(conn: asyncpg.Connection) -> list[StoredKey]:
    rows = await conn.fetch(
        f"SELECT name, left(sha256, {PREFIX_CHARS}) AS prefix, role, models, "
        "requests_per_minute, max_streams, created_at, revoked_at "
        f"FROM {TABLE} ORDER BY created_at, name"
    )
    return [
        StoredKey(
            name=r["name"],
            prefix=r["prefix"],
            role=r["role"],
            models=tuple(r["models"] or ()),
            requests_per_minute=r["requests_per_minute"],
            max_streams=r["max_streams"],
            created_at=r["created_at"],
            revoked_at=r["revoked_at"],
        )
        for r in rows
    ]


async def revoke_key(conn: asyncpg.Connection, name_or_prefix: str) -> str:
    """Revoke one live key, by name, else by a hash prefix that names exactly one;
    returns its id. Never several at once: a short prefix must not revoke a group."""
    async with conn.transaction():
        rows = await conn.fetch(
            f"SELECT sha256, name FROM {TABLE} WHERE revoked_at IS NULL AND name = $1 FOR UPDATE",
            name_or_prefix,
        )
        prefix = name_or_prefix.lower()
        is_prefix = len(prefix) >= MIN_PREFIX_CHARS and all(c in "0123456789abcdef" for c in prefix)
        if not rows and is_prefix:
            rows = await conn.fetch(
                f"SELECT sha256, name FROM {TABLE} WHERE revoked_at IS NULL "
                "AND starts_with(sha256, $1) FOR UPDATE",
                prefix,
            )
        if not rows:
            hint = "" if is_prefix else f" (a hash prefix needs {MIN_PREFIX_CHARS}+ hex digits)"
            raise KeyCommandError(f"no live key named or starting with '{name_or_prefix}'{hint}")
        if len(rows) > 1:
            raise KeyCommandError(f"'{name_or_prefix}' matches {len(rows)} keys; give more digits")
        digest = rows[0]["sha256"]
        await conn.execute(f"UPDATE {TABLE} SET revoked_at = now() WHERE sha256 = $1", digest)
        return str(rows[0]["name"] or digest[:12])

"""Versioned PostgreSQL schema. Append a migration; never edit one that has shipped.

Applied at connect under an advisory lock (two proxies starting together must not race),
each in its own transaction, recorded in `schema_migrations`.
"""

from __future__ import annotations

import asyncpg

from proxy.pg_migrations import apply

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "usage events",
        """
        CREATE TABLE usage_events (
            request_id text PRIMARY KEY,
            ts timestamptz NOT NULL,
            endpoint text NOT NULL,
            method text NOT NULL,
            user_agent text,
            client_user text,
            api_key_id text,
            requested_model text,
            served_model text,
            backend text,
            status integer NOT NULL,
            error text,
            done_reason text,
            prompt_eval_count bigint,
            eval_count bigint,
            load_duration bigint,
            prompt_eval_duration bigint,
            eval_duration bigint,
            total_duration bigint,
            ttfc_ms double precision,
            total_ms double precision NOT NULL,
            bytes bigint NOT NULL,
            cancelled boolean NOT NULL,
            prompt_sha256 text,
            -- The whole event as the proxy wrote it: what training and export read
            -- (decision and features are in it: event->'decision', event->'features').
            event jsonb NOT NULL
        );
        -- The stats endpoint: recent rows per served model and backend.
        CREATE INDEX usage_events_model_backend_ts ON usage_events (served_model, backend, ts);
        -- Export and training: a time range.
        CREATE INDEX usage_events_ts ON usage_events (ts);
        """,
    ),
    (
        2,
        "feedback",
        """
        CREATE TABLE feedback (
            feedback_id text PRIMARY KEY,
            request_id text NOT NULL,
            rating double precision NOT NULL,
            comment text,
            ts timestamptz NOT NULL
        );
        CREATE INDEX feedback_request_id ON feedback (request_id);
        """,
    ),
    (
        3,
        "client request ids",
        """
        -- request_id is the proxy's own id (unique); the client's X-Request-Id, which
        -- clients may reuse, is kept here. Feedback names a request by either.
        ALTER TABLE usage_events ADD COLUMN client_request_id text;
        CREATE INDEX usage_events_client_request_id ON usage_events (client_request_id)
            WHERE client_request_id IS NOT NULL;
        """,
    ),
    (
        4,
        "response cache",
        """
        -- 'hit' (answered from the response cache), 'miss' (cacheable, answered by a
        -- backend), NULL (not cacheable, or no cache).
        ALTER TABLE usage_events ADD COLUMN cache text;
        """,
    ),
    (
        5,
        "cloud fallback",
        """
        -- The provider that answered (a cloud fallback's name), null for local backends.
        ALTER TABLE usage_events ADD COLUMN provider text;
        -- The cloud fallback's tokens per provider and month (YYYY-MM, UTC), shared by
        -- every proxy: what its monthly budgets are checked against.
        CREATE TABLE cloud_usage (
            provider text NOT NULL,
            month text NOT NULL,
            tokens bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (provider, month)
        );
        """,
    ),
    (
        6,
        "feedback key",
        """
        -- The API key that gave a rating (null without keys): with keys, a rating counts
        -- only for a request made with the same key (FEEDBACK_JOIN).
        ALTER TABLE feedback ADD COLUMN api_key_id text;
        """,
    ),
    (
        7,
        "api key hashes",
        """
        -- The API key's hash beside its id (its name), in both: a rating counts only
        -- when its key's hash is the request's (FEEDBACK_JOIN), since a revoked key's
        -- name may go to another key. Null without keys, and in rows written before.
        ALTER TABLE usage_events ADD COLUMN api_key_hash text;
        ALTER TABLE feedback ADD COLUMN api_key_hash text;
        """,
    ),
)
_LOCK_KEY = 0x6175746F726F7574  # "autorout"


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply what is missing; returns the versions applied now."""
    return await apply(conn, MIGRATIONS, "schema_migrations", _LOCK_KEY)

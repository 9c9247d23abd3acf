"""The configuration's sections for what the proxy keeps, and the services it uses
besides its backends: `usage` (events), `auth` (API keys), `cache` (answers replayed),
`shared` (state shared by several proxies) and `cloud` (providers to fall back on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from proxy.state_dir import state_dir


def _usage_file() -> str:
    return str(state_dir() / "usage" / "events.jsonl")


def _spool_dir() -> str:
    return str(state_dir() / "usage" / "spool")


@dataclass(frozen=True)
class Usage:
    """Usage events: one per inference request, written off the request path."""

    # Local rotating JSONL file (training reads it). "auto": only when neither
    # PostgreSQL nor Kafka is configured; "always"; "off".
    file_mode: Literal["auto", "always", "off"] = "auto"
    file_path: str = field(default_factory=_usage_file)
    file_max_bytes: int = 64 * 1024 * 1024
    file_backups: int = 10
    # Store the prompt text in events (its SHA-256 is always stored).
    log_prompts: bool = False
    # In-memory queue between the handler and the writers; beyond it events spill.
    queue_size: int = 100_000
    batch_size: int = 500
    flush_interval_seconds: float = 0.1
    # Events a sink may hold in memory while slow before they spill to its spool; while
    # the spool cannot be written, the most it holds before dropping the newest.
    sink_buffer: int = 20_000
    spool_dir: str = field(default_factory=_spool_dir)
    spool_segment_bytes: int = 16 * 1024 * 1024
    fsync: Literal["always", "interval", "never"] = "interval"
    fsync_interval_seconds: float = 1.0
    # Seconds a sink gets to write what is left at shutdown before the rest spills.
    drain_seconds: float = 5.0
    # One sink write (a batch) gives up after this; the batch spills and is retried.
    write_timeout_seconds: float = 10.0
    retry_backoff_seconds: float = 0.5
    retry_backoff_max_seconds: float = 10.0
    postgres_dsn: str | None = None
    postgres_pool_size: int = 2
    kafka_bootstrap: str | None = None
    kafka_usage_topic: str = "autoroute.usage"
    kafka_feedback_topic: str = "autoroute.feedback"
    kafka_create_topics: bool = True
    kafka_partitions: int = 3
    kafka_replication_factor: int = 1
    kafka_linger_ms: int = 20
    kafka_compression: Literal["zstd", "lz4", "gzip", "none"] = "zstd"
    # A batch not acknowledged within this is spilled and retried from the spool.
    kafka_request_timeout_ms: int = 5000
    # In-memory stats window (when PostgreSQL is not configured): events kept per
    # served model and backend.
    stats_window: int = 5000
    # How far back the stats endpoint looks in PostgreSQL.
    stats_window_seconds: float = 3600.0


@dataclass(frozen=True)
class ApiKey:
    """One API key: only its SHA-256 is stored (`autoroute hash-key` prints it)."""

    sha256: str
    # The key's id in usage events and the access log ("": the hash's first 12 hex).
    name: str = ""
    # "admin" may also pull, push, create, copy, delete, upload blobs and reload.
    role: Literal["user", "admin"] = "user"
    # Models this key may use (None: any); `auto` only chooses among them. An empty
    # list is refused when the configuration is read: it would allow no model, and the
    # likelier intent, any model, is to leave the list out.
    models: tuple[str, ...] | None = None
    # Requests per minute (0: unlimited) and inference requests at once (0: unlimited).
    requests_per_minute: int = 0
    max_streams: int = 0

    @property
    def id(self) -> str:
        return self.name or self.sha256[:12]


@dataclass(frozen=True)
class Auth:
    # No keys: anyone who reaches the proxy may use it (as with Ollama itself).
    keys: tuple[ApiKey, ...] = ()
    # Serve GET /metrics without a key even when keys are configured.
    metrics_open: bool = False
    # Keys also come from this PostgreSQL database (table `autoroute_api_keys`, managed
    # with `autoroute keys`), in addition to `keys`. Set, access control is on even with
    # no key anywhere: an empty table lets nobody in.
    postgres_dsn: str | None = None
    # How often the stored keys are read again (in the background, never per request):
    # the longest a revoked key keeps working.
    refresh_seconds: float = 10.0

    @property
    def enabled(self) -> bool:
        """Access control is on: keys are checked, and clients' credentials never reach
        a backend. A key store configured means keys are wanted, even before (or
        without) any being loaded: deny by default rather than open until it is read."""
        return bool(self.keys) or bool(self.postgres_dsn)


@dataclass(frozen=True)
class Cache:
    """Answers to deterministic requests (temperature 0 or a fixed seed), kept and
    replayed: `proxy.cache`."""

    enabled: bool = False
    # "memory": this process only; "redis": shared by every proxy pointing at it.
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Prefix of every key: proxies that should share answers use the same one.
    namespace: str = "autoroute:cache"
    ttl_seconds: float = 24 * 3600.0
    # Answers larger than this (bytes as sent to the client) are not kept.
    max_entry_bytes: int = 1024 * 1024
    # Entries the memory backend holds (the oldest goes first); Redis bounds itself
    # (its `maxmemory` and the TTL).
    max_entries: int = 10_000
    # The lookup is the one wait a cacheable request has: past this it is a miss.
    lookup_timeout_seconds: float = 0.25


@dataclass(frozen=True)
class Shared:
    """State shared by several proxies behind one address (see config.yaml)."""

    # Per-key request rates and stream caps are counted here rather than per process.
    redis_url: str | None = None
    # Every key the proxies write starts with this (several deployments, one Redis).
    key_prefix: str = "autoroute:"
    # A stream slot not refreshed for this long is free again (its proxy is gone).
    stream_slot_ttl_seconds: float = 30.0
    # While Redis is unreachable, how often it is tried again.
    retry_seconds: float = 5.0
    # The longest one Redis call may take before the limits fall back to per process.
    timeout_seconds: float = 0.5


@dataclass(frozen=True)
class CloudProvider:
    """One cloud upstream the proxy may fall back to (see `cloud` in config.yaml)."""

    # "openai": OpenAI-compatible chat completions (OpenAI, Groq, Together, OpenRouter,
    # vLLM); "anthropic": Anthropic messages.
    api: Literal["openai", "anthropic"] = "openai"
    # Up to the API's version prefix: https://api.openai.com/v1, https://api.anthropic.com/v1
    base_url: str = ""
    # The environment variable holding the key (never the key itself).
    key_env: str = ""
    # Which cloud model stands in for which local model or `auto:<profile>`; "*" for
    # any other.
    models: dict[str, str] = field(default_factory=dict)
    # Tokens (prompt and completion, as the cloud counts them) per calendar month (UTC).
    monthly_token_budget: int = 0
    # Anthropic requires a limit on the answer's length; used when the request sets none.
    max_tokens: int = 4096
    timeout_seconds: float = 300.0


@dataclass(frozen=True)
class Cloud:
    enabled: bool = False
    # In order of preference: the first whose `models` maps the request and whose
    # budget is not spent answers.
    providers: dict[str, CloudProvider] = field(default_factory=dict)
    # `auto` profiles whose requests go to the cloud even while a local backend could
    # serve them (their explicit opt-in); every other request only when none can.
    prefer_for_profiles: tuple[str, ...] = ()

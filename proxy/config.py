"""One typed configuration: `config.yaml` (documented inline) plus environment overrides.

Precedence, lowest first: built-in defaults, the YAML file, `AUTOROUTE_*` variables.
Any setting can be overridden as `AUTOROUTE_<SECTION>__<KEY>` (for example
`AUTOROUTE_LISTEN__PORT=8080`); `AUTOROUTE_BACKENDS` takes a comma-separated URL list.
`OLLAMA_HOST` is deliberately ignored: users point it at the proxy.

The sections are declared here, with the checks across their fields (`Config.check`);
how a mapping becomes them is `proxy.config_reading`.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from proxy.config_reading import AIOHTTP_UNCHECKED_ENV as AIOHTTP_UNCHECKED_ENV
from proxy.config_reading import ENV_PREFIX as ENV_PREFIX
from proxy.config_reading import ConfigError as ConfigError
from proxy.config_reading import FromString, build, env_overrides, merge, read_yaml
from proxy.keep_alive import keep_alive_seconds
from selector_model.catalog import AREAS, SPECIALTIES

log = logging.getLogger("autoroute.config")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def state_dir(name: str = "autoroute") -> Path:
    """Where files the proxy writes for itself live: `$XDG_STATE_HOME/<name>`, and
    `~/.local/state/<name>` when XDG_STATE_HOME is unset or not absolute (as the XDG
    base directory specification says). Read when a default is made, so a process
    (a test run) that sets XDG_STATE_HOME first keeps every default path inside it."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / name


def _usage_file() -> str:
    return str(state_dir() / "usage" / "events.jsonl")


def _spool_dir() -> str:
    return str(state_dir() / "usage" / "spool")


def _profiles_file() -> str:
    return str(state_dir() / "profiles.json")


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 11435
    # Browser origins allowed besides Ollama's own defaults, as OLLAMA_ORIGINS
    # (`proxy.origins`).
    origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backend:
    url: str
    name: str = ""
    # GPU memory (GB) models may use here; 0: the most seen loaded at once (`/api/ps`).
    vram_gb: float = 0.0
    # Models kept loaded here, where they fit (see `Warm`).
    warm: tuple[str, ...] = ()

    @functools.cached_property
    def shown_url(self) -> str:
        """The URL without its credentials (`http://user:password@host`, which the
        backend's requests carry): what logs, metrics, status pages and usage events
        name, none of which may hold a password. Made once: every request's outcome
        names its backend by it (`label`)."""
        return without_userinfo(self.url)

    @property
    def label(self) -> str:
        return self.name or self.shown_url

    def public_label(self, index: int) -> str:
        """Its name for a caller who may not learn its URL (the public probes with keys
        on): the configured name, else its place in `backends`."""
        return self.name or f"backends[{index}]"


@dataclass(frozen=True)
class Timeouts:
    connect_seconds: float = 5.0
    # A stream has no total deadline: a long answer is legitimate. What is bounded is
    # the silence between two reads, which includes waiting for a model to load.
    idle_read_seconds: float = 300.0
    # SIGTERM/SIGINT: stop accepting, let requests in flight finish for up to this
    # long, then cancel what is left, flush usage events and exit.
    shutdown_seconds: float = 30.0
    # Clients: a request head (request line and headers) must be complete within this
    # long of its first byte (of the connection opening, for the first request), else
    # the connection is closed ("slowloris"); 0: no deadline (Ollama has none).
    client_header_seconds: float = 10.0
    # An idle keep-alive client connection is closed after this long. Longer than Go's
    # http.Transport keeps idle connections (90 s), so that clients close them first.
    client_idle_seconds: float = 120.0
    # A request body that stops arriving for this long is answered 408 and its
    # connection closed (nginx's client_body_timeout); 0: no bound (Ollama has none).
    client_body_idle_seconds: float = 60.0
    # A client that takes in nothing of its answer for this long (a stream paused on a
    # full socket) is disconnected, which cancels its backend request, as nginx's
    # send_timeout does: else one client that stops reading holds a backend's
    # generation slot for as long as it keeps the connection. 0: no bound (Ollama has
    # none).
    client_write_idle_seconds: float = 60.0


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024 * 1024
    # Request bodies read into memory at once, all clients together (each counted by
    # the bytes that have arrived, as they arrive; bodies of at most HELD_FREELY bytes
    # are never refused); 0: no bound.
    max_held_body_bytes: int = 256 * 1024 * 1024
    # All request header lines together (431 above it); also the longest single line.
    max_header_bytes: int = 64 * 1024
    # Entries in `messages` (chat, /v1/chat/completions, /v1/messages) and Responses
    # `input` items; 0: no limit.
    max_messages: int = 10_000
    # Characters of prompt text (`selector_model.request_body.texts`); 0: no limit.
    max_prompt_chars: int = 4 * 1024 * 1024
    # JSON values (objects, arrays, strings, numbers...) in a body the proxy reads;
    # 0: no limit.
    max_json_values: int = 1_000_000
    # Uploads (`/api/blobs`, `/api/create`) stream through and are not held in memory,
    # so they get their own, much larger bound.
    max_upload_bytes: int = 64 * 1024 * 1024 * 1024


@dataclass(frozen=True)
class Health:
    interval_seconds: float = 5.0
    failure_threshold: int = 3
    open_seconds: float = 10.0
    retries: int = 2


@dataclass(frozen=True)
class Routing:
    # Where `pull`, `push`, `create`, `copy` and `delete` go: "all" backends (the
    # answer of the first is relayed, the others must agree) or only the "first".
    admin_target: Literal["all", "first"] = "all"


@dataclass(frozen=True)
class Logging:
    level: str = "INFO"
    json: bool = True
    access: bool = True


@dataclass(frozen=True)
class Profile:
    """How `auto:<name>` trades quality for speed."""

    # Utility = P(success) - cost_weight * expected_seconds.
    cost_weight: float = 0.02
    # Then the quickest model whose utility is within this of the choice's (points of
    # P(success) as a fraction: 0.03 is 3 points); 0: the choice itself.
    tolerance: float = 0.0
    # Candidates rated more than this below the best-rated one (points of P(success)
    # as a fraction) are not considered: what cost_weight may trade away for speed.
    # 0: no bound.
    max_loss: float = 0.0
    # Chosen when the selector is unsure, and where nothing better is clearly ahead.
    default_model: str = ""
    # Candidates allowed (empty: all) and denied, by model name.
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    # The most often (share of requests) a model other than the best by prior and
    # evidence is tried, by Thompson sampling, to learn about it.
    exploration: float = 0.0


@dataclass(frozen=True)
class Warm:
    """What loading a model costs `auto`, and how backends' warm sets are kept loaded."""

    # The keep_alive a warm model is loaded with (Ollama's duration; renewed at half).
    keep_alive: str = "30m"
    # Seconds to load one GB of a model not loaded, until a load was measured.
    load_seconds_per_gb: float = 0.5
    # A model's memory: weights (parameters x quantization bits) x this, until
    # `/api/ps` has shown its size.
    memory_factor: float = 1.2
    # Utility a candidate loses when loading it would evict a model with requests in
    # flight on its backend: chosen then only if it leads by more than this.
    evict_penalty: float = 0.1


@dataclass(frozen=True)
class Runners:
    """What one request may ask of the model runner that serves it, where one client's
    choice is every client's (`proxy.runner_caps`): every request but an admin key's.
    The defaults ask nothing: requests go on as Ollama reads them."""

    # `options.num_ctx` above this is lowered to it; 0: no cap.
    max_num_ctx: int = 0
    # False: `options.num_ctx` is removed, so that every request runs its model with the
    # context its Modelfile or the server sets, and none reloads it with another.
    client_num_ctx: bool = True
    # False: the other options a runner is launched with (`runner_caps.LAUNCH_OPTIONS`)
    # and `shift` are removed, so that no request reloads a model with others.
    client_launch_options: bool = True
    # `keep_alive` (seconds or a Go duration) below the least is raised to it, above
    # the most (or forever) lowered to it; "": no bound. A least above 0 refuses an
    # unload (`ollama stop`).
    min_keep_alive: str = ""
    max_keep_alive: str = ""


def _default_profiles() -> dict[str, Profile]:
    return {
        "balanced": Profile(cost_weight=0.004, max_loss=0.05),
        "fast": Profile(cost_weight=0.2, max_loss=0.3),
        "best": Profile(cost_weight=0.0),
    }


@dataclass(frozen=True)
class Variant:
    # Share of the experiment's traffic (weights are normalised over the variants).
    weight: float = 1.0
    # What the variant changes: the profile it routes with, or a pinned model.
    profile: str = ""
    model: str = ""


@dataclass(frozen=True)
class Experiment:
    # Share of eligible traffic that enters the experiment at all.
    share: float = 1.0
    variants: dict[str, Variant] = field(default_factory=dict)
    # The variant the report compares the others with ("": the first listed).
    control: str = ""
    # Which requests are eligible (empty: any): endpoints, auto profiles, task types
    # (fix, explain, refactor, test, generate, complete, summarize, translate).
    endpoints: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    # RFC 3339 UTC bounds; empty: unbounded.
    start: str = ""
    end: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """What a user says about one of their models (`selector.models`), for models the
    catalogue does not list or describes wrongly (selector_model/catalog)."""

    # A catalogue model this one is like: its knowledge is copied, the fields below win.
    like: str = ""
    family: str = ""
    params_b: float = 0.0
    active_params_b: float = 0.0
    # Any of code, math, vision, reasoning, tools, embedding.
    specialties: tuple[str, ...] = ()
    released: str = ""  # YYYY-MM
    context_length: int = 0
    # Scores in [0, 1] by area: knowledge, reasoning, math, code, instruction.
    areas: dict[str, float] = field(default_factory=dict)
    # A pretrained (base) model, which `auto` leaves out while an instruct one can serve
    # (true), or not one (false), where neither its name nor the catalogue says so.
    pretrained: bool | None = None

    def given(self) -> dict[str, Any]:
        """The fields set (not empty or zero; a flag when true or false), as
        `Catalog.with_overrides` takes them."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {
            name: value
            for name, value in values.items()
            if isinstance(value, bool) or (value is not None and value not in ("", 0, (), {}))
        }


@dataclass(frozen=True)
class Learning:
    """Learning from the proxy's own traffic: outcomes of `auto` decisions (ratings and
    implicit signals, `selector_model.outcome`) correct the selector per kind of
    prompt and model (`proxy.learning`)."""

    enabled: bool = True
    # How many outcomes the selector's P(success) is worth against the evidence: for a
    # model the artifact never saw, and for one it was trained on.
    prior_strength: float = 10.0
    known_prior_strength: float = 200.0
    # Whether the outcomes on one kind of prompt of a model the artifact never saw also
    # move it on every other kind (its offset over every kind, `selector_model.policy`).
    model_level: bool = False
    # Once there is evidence, how many posterior standard deviations a candidate's
    # utility gains for what is not known of it, so that greedy choices try a model
    # little is known about (`selector_model.posterior.OPTIMISM`; 0: the posterior mean).
    optimism: float = 1.0
    # The share of the evidence's corrections a learned choice discounts when it is
    # compared with the choice without evidence (`selector_model.posterior._improves`;
    # 0: none).
    baseline_discount: float = 0.0
    # How often the evidence is written and (with PostgreSQL) every proxy's read back.
    sync_seconds: float = 2.0
    # Without usage.postgres_dsn: where the evidence is kept ("": learning.json
    # beside usage.file_path).
    state_file: str = ""
    # Requests whose outcome can still change (a rating, a retry) are remembered.
    recent_requests: int = 100_000
    # Monte-Carlo draws for a decision's propensity when a profile explores.
    draws: int = 32
    # The decisions' random generator (0: seeded from the OS).
    seed: int = 0


@dataclass(frozen=True)
class Selector:
    # The ONNX artifact (its metadata is the .json beside it); "" is the one shipped
    # with the package, in selector_model/artifacts/.
    artifact: str = ""
    # How often the artifact file is checked for a change (0: only SIGHUP or the
    # admin endpoint reload it).
    reload_check_seconds: float = 5.0
    # The profile plain `auto` uses.
    default_profile: str = "balanced"
    profiles: dict[str, Profile] = field(default_factory=_default_profiles)
    # What `auto` means on /api/embed and /v1/embeddings ("" : refuse with 400).
    embedding_model: str = ""
    # Below this margin between the best and the profile's default model, keep the
    # default: a gamble on a small predicted gain is not worth it.
    min_gain: float = 0.02
    # List `auto` and `auto:<profile>` in /api/tags and /v1/models for editors.
    list_in_tags: bool = True
    # A/B experiments by name; a user (the X-Autoroute-User header, else the client's
    # address: `proxy.auto.user_key`) always lands in the same variant.
    experiments: dict[str, Experiment] = field(default_factory=dict)
    # The model catalogue (a models.yaml); "" is the one shipped in selector_model/catalog/.
    catalog: str = ""
    # The user's own models described for `auto`, by name (see ModelEntry).
    models: dict[str, ModelEntry] = field(default_factory=dict)
    learning: Learning = field(default_factory=Learning)
    # Measured per-area results of profiled models (`autoroute profile`), read by the
    # selector; a JSON file keyed by model name.
    profiles_path: str = field(default_factory=_profiles_file)
    # Models the proxy profiles in idle time (empty: never). Each prompt spends GPU time.
    profile_models: tuple[str, ...] = ()


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


@dataclass(frozen=True)
class Config:
    listen: Listen = field(default_factory=Listen)
    backends: tuple[Backend, ...] = (Backend(url="http://127.0.0.1:11434"),)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    health: Health = field(default_factory=Health)
    routing: Routing = field(default_factory=Routing)
    logging: Logging = field(default_factory=Logging)
    usage: Usage = field(default_factory=Usage)
    selector: Selector = field(default_factory=Selector)
    auth: Auth = field(default_factory=Auth)
    cache: Cache = field(default_factory=Cache)
    shared: Shared = field(default_factory=Shared)
    warm: Warm = field(default_factory=Warm)
    runners: Runners = field(default_factory=Runners)
    cloud: Cloud = field(default_factory=Cloud)

    def check(self) -> Config:
        if self.logging.level.upper() not in LOG_LEVELS:
            raise ConfigError(
                f"logging.level: {self.logging.level!r} is not a level; use one of "
                f"{', '.join(LOG_LEVELS)}",
                key="logging.level",
            )
        if not 1 <= self.listen.port <= 65535:
            raise ConfigError(
                f"listen.port: {self.listen.port} is not a port (1-65535)", "listen.port"
            )
        _check_numbers(self)
        if not self.backends:
            raise ConfigError("backends: at least one backend is required", key="backends")
        seen: set[str] = set()
        for key in self.auth.keys:
            digest = key.sha256.lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError(
                    f"auth.keys: {key.id!r}: sha256 must be 64 hex digits", key="auth.keys"
                )
            if key.id in seen:
                raise ConfigError(f"auth.keys: the name {key.id!r} is used twice", key="auth.keys")
            if key.models == ():
                raise ConfigError(
                    f"auth.keys: {key.id!r}: models names no model"
                    " (leave models out for a key that may use any)",
                    key="auth.keys",
                )
            seen.add(key.id)
        for name, entry in self.selector.models.items():
            _check_model_entry(name, entry)
        if self.auth.postgres_dsn and self.auth.refresh_seconds <= 0:
            raise ConfigError(
                "auth.refresh_seconds: must be above 0 with auth.postgres_dsn",
                key="auth.refresh_seconds",
            )
        _check_shared(self.shared)
        _check_runners(self.runners)
        _check_services(self)
        _check_profile_names(self)
        for backend in self.backends:
            parts = urlsplit(backend.url)
            if parts.scheme != "http" or not parts.hostname:
                raise ConfigError(
                    f"backends: {backend.shown_url!r} is not an http:// URL", key="backends"
                )
            if "@" in parts.netloc:
                # The relay's own HTTP client sends none of a URL's credentials: a backend
                # behind basic auth would refuse every request while looking configured.
                raise ConfigError(
                    f"backends: {backend.shown_url!r}: credentials in a backend URL are "
                    "not sent; reach the backend without them (a private network, or a "
                    "reverse proxy in front of it that adds them)",
                    key="backends",
                )
            try:
                port = parts.port or 80
            except ValueError:
                raise ConfigError(
                    f"backends: {backend.shown_url!r} has no valid port", key="backends"
                ) from None
            if port == self.listen.port and _is_own_address(parts.hostname, self.listen.host):
                raise ConfigError(
                    f"backends: {backend.shown_url} is the proxy's own address "
                    f"{self.listen.host}:{self.listen.port}; it would forward to itself",
                    key="backends",
                )
        for name, provider in self.cloud.providers.items():
            _check_cloud_provider(name, provider)
        return self


# Settings that 0 would break rather than switch off (a timeout that expires at once,
# health checks with no pause between them, a batch of nothing); any other number may
# be 0 where its comment says what 0 means. None may be negative.
_ABOVE_ZERO = frozenset(
    {
        "timeouts.connect_seconds",
        "timeouts.idle_read_seconds",
        "limits.max_body_bytes",
        "limits.max_header_bytes",
        "limits.max_upload_bytes",
        "health.interval_seconds",
        "health.failure_threshold",
        "usage.file_max_bytes",
        "usage.queue_size",
        "usage.batch_size",
        "usage.flush_interval_seconds",
        "usage.sink_buffer",
        "usage.spool_segment_bytes",
        "usage.write_timeout_seconds",
        "usage.postgres_pool_size",
        "usage.kafka_partitions",
        "usage.kafka_replication_factor",
        "usage.kafka_request_timeout_ms",
        "usage.stats_window",
        "usage.stats_window_seconds",
        "selector.learning.sync_seconds",
        "selector.learning.recent_requests",
        "selector.learning.draws",
        "cache.ttl_seconds",
        "cache.max_entry_bytes",
        "cache.max_entries",
        "cache.lookup_timeout_seconds",
    }
)


def _check_numbers(node: Any, where: str = "") -> None:
    """Every number in the configuration is 0 or more, and above 0 in `_ABOVE_ZERO`."""
    within = f"{where}." if where else ""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _check_numbers(getattr(node, f.name), within + f.name)
    elif isinstance(node, dict):
        for name, value in node.items():
            _check_numbers(value, within + str(name))
    elif isinstance(node, tuple):
        for value in node:
            _check_numbers(value, where)
    elif isinstance(node, int | float) and not isinstance(node, bool):
        if node < 0:
            raise ConfigError(f"{where}: must not be negative", key=where)
        if node == 0 and where in _ABOVE_ZERO:
            raise ConfigError(f"{where}: must be above 0", key=where)


def _check_shared(shared: Shared) -> None:
    if shared.redis_url is not None:
        scheme = urlsplit(shared.redis_url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"shared.redis_url: {scheme or shared.redis_url!r} is not redis://, "
                "rediss:// or unix://",
                key="shared.redis_url",
            )
    for name in ("stream_slot_ttl_seconds", "retry_seconds", "timeout_seconds"):
        if getattr(shared, name) <= 0:
            raise ConfigError(f"shared.{name}: must be above 0", key=f"shared.{name}")


def keep_alive_bound(runners: Runners, name: str) -> float | None:
    """`runners.min_keep_alive` or `max_keep_alive` in seconds, None when unset."""
    text = getattr(runners, name).strip()
    return None if not text else keep_alive_seconds(text)


def _check_runners(runners: Runners) -> None:
    bounds: dict[str, float | None] = {}
    for name in ("min_keep_alive", "max_keep_alive"):
        key = f"runners.{name}"
        try:
            seconds = keep_alive_bound(runners, name)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}", key=key) from None
        if seconds == float("inf"):
            raise ConfigError(f"{key}: forever (a negative value) is no bound", key=key)
        bounds[name] = seconds
    least, most = bounds["min_keep_alive"], bounds["max_keep_alive"]
    if most == 0:
        # Every request would unload its model once answered.
        raise ConfigError("runners.max_keep_alive: must be above 0", key="runners.max_keep_alive")
    if least is not None and most is not None and least > most:
        raise ConfigError(
            "runners.min_keep_alive: above runners.max_keep_alive", key="runners.min_keep_alive"
        )


def _check_profile_names(config: Config) -> None:
    """Settings that name an `auto` profile name one `selector.profiles` defines: else
    every request they route is a 404 "model 'auto:x' not found" (plain `auto`, for
    the default)."""
    profiles = config.selector.profiles
    named = [("selector.default_profile", config.selector.default_profile)]
    named += [("cloud.prefer_for_profiles", p) for p in config.cloud.prefer_for_profiles]
    for name, experiment in config.selector.experiments.items():
        at = f"selector.experiments.{name}"
        named += [(f"{at}.profiles", p) for p in experiment.profiles]
        named += [(f"{at}.variants.{v}.profile", s.profile) for v, s in experiment.variants.items()]
    for key, profile in named:
        if profile and profile not in profiles:
            raise ConfigError(
                f"{key}: {profile!r} is not a profile in selector.profiles ({', '.join(profiles)})",
                key=key,
            )


def _check_services(config: Config) -> None:
    """The databases' and brokers' addresses are read when first used, and a wrong one
    then fails every write or read while the proxy runs on: refused here instead."""
    for key, dsn in (
        ("usage.postgres_dsn", config.usage.postgres_dsn),
        ("auth.postgres_dsn", config.auth.postgres_dsn),
    ):
        if not dsn:
            continue
        parts = urlsplit(dsn)
        shown = without_userinfo(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError(f"{key}: {shown!r} is not a postgresql:// URL", key=key)
        try:
            _ = parts.port
        except ValueError:
            raise ConfigError(f"{key}: {shown!r} has no valid port", key=key) from None
    if config.usage.kafka_bootstrap:
        for address in config.usage.kafka_bootstrap.split(","):
            host, _, port = address.strip().rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ConfigError(
                    f"usage.kafka_bootstrap: {address.strip()!r} is not host:port",
                    key="usage.kafka_bootstrap",
                )
    scheme = urlsplit(config.cache.redis_url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"cache.redis_url: {scheme or without_userinfo(config.cache.redis_url)!r} "
            "is not redis://, rediss:// or unix://",
            key="cache.redis_url",
        )


def _check_cloud_provider(name: str, provider: CloudProvider) -> None:
    at = f"cloud.providers.{name}"
    parts = urlsplit(provider.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{at}.base_url: {provider.base_url!r} is not an http(s) URL", at)
    if not provider.key_env:
        raise ConfigError(f"{at}.key_env: name the environment variable holding the key", at)
    if provider.monthly_token_budget < 0:
        raise ConfigError(f"{at}.monthly_token_budget: must not be negative", at)


def _check_model_entry(name: str, entry: ModelEntry) -> None:
    at = f"selector.models.{name}"
    for area, score in entry.areas.items():
        if area not in AREAS:
            raise ConfigError(
                f"{at}.areas: unknown area {area!r} (one of {list(AREAS)})", key=f"{at}.areas"
            )
        if not 0.0 <= score <= 1.0:
            raise ConfigError(
                f"{at}.areas.{area}: {score} is not a score in [0, 1]", key=f"{at}.areas.{area}"
            )
    for specialty in entry.specialties:
        if specialty not in SPECIALTIES:
            raise ConfigError(
                f"{at}.specialties: unknown {specialty!r} (one of {list(SPECIALTIES)})",
                key=f"{at}.specialties",
            )


def _is_own_address(host: str, listen_host: str) -> bool:
    try:
        target = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    if listen_host in ("0.0.0.0", "::", ""):
        return any(ipaddress.ip_address(a).is_loopback for a in target) or bool(
            target & _local_addresses()
        )
    try:
        listen = {str(info[4][0]) for info in socket.getaddrinfo(listen_host, None)}
    except OSError:
        return False
    return bool(target & listen)


def _local_addresses() -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return set()


def without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _with_builtin_profiles(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A variable that changes a profile (`AUTOROUTE_SELECTOR__PROFILES__FAST__...`)
    changes the profiles in effect: the file's, else the built-in ones, all kept."""
    selector = overrides.get("selector")
    if not isinstance(selector, Mapping) or "profiles" not in selector:
        return data
    section = data.get("selector")
    if section is not None and (not isinstance(section, Mapping) or "profiles" in section):
        return data
    builtin = {k: dataclasses.asdict(v) for k, v in _default_profiles().items()}
    return merge(data, {"selector": {"profiles": builtin}})


# A backend may be listed as its URL alone (`backends: [http://host:11434]`,
# `AUTOROUTE_BACKENDS=http://a,http://b`).
_FROM_STRING: FromString = {Backend: lambda url: Backend(url=url)}


def load(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Load the configuration; `path=None` means `$AUTOROUTE_CONFIG` or `./config.yaml`
    when present, else the built-in defaults. Each `AUTOROUTE_*` variable that names no
    setting is a warning logged here, once a load (`env_overrides`); the CLI holds it
    until its logging is set up (`logs.held`)."""
    environ = os.environ if environ is None else environ
    path = _config_path(path, environ)
    overrides, sources, ignored = env_overrides(environ, Config)
    for variable, why in sorted(ignored.items()):
        log.warning(
            "environment variable %s ignored: %s",
            variable,
            why,
            extra={"fields": {"variable": variable}},
        )
    data = read_yaml(Path(path)) if path is not None else {}
    try:
        return build(
            Config, merge(_with_builtin_profiles(data, overrides), overrides), "", _FROM_STRING
        ).check()
    except ConfigError as exc:
        raise _named(exc, path, sources, None) from None


def named(
    exc: ConfigError,
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConfigError:
    """`exc`, found once the configuration was loaded (the catalogue it names read, the
    spool made), naming where the value at fault came from as `load` names it: the
    variable that set it, else the file where it sets it. A value neither sets is a
    default, and `exc` stays as it is."""
    environ = os.environ if environ is None else environ
    path = _config_path(path, environ)
    try:
        _, sources, _ = env_overrides(environ, Config)
        data = read_yaml(Path(path)) if path is not None else {}
    except ConfigError:
        return exc  # the file changed since it was loaded: its word is no longer known
    return _named(exc, path, sources, data)


def _config_path(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str]
) -> str | os.PathLike[str] | None:
    if path is not None:
        return path
    return environ.get(ENV_PREFIX + "CONFIG") or (
        "config.yaml" if Path("config.yaml").exists() else None
    )


def _named(
    exc: ConfigError,
    path: str | os.PathLike[str] | None,
    sources: Mapping[str, str],
    file_settings: Mapping[str, Any] | None,
) -> ConfigError:
    """`exc` prefixed with the variable that set its key, else the file. `file_settings`
    None takes any other value for the file's: a check of `load` may find a default
    wrong for what the file sets beside it (a default profile its profiles lack)."""
    if not exc.key:
        return exc
    for setting, variable in sources.items():
        if exc.key == setting or exc.key.startswith(setting + "."):
            return ConfigError(f"environment variable {variable}: {exc}", exc.key)
    if path is not None and (file_settings is None or _sets(file_settings, exc.key)):
        return ConfigError(f"{path}: {exc}", exc.key)
    return exc


def _sets(settings: Mapping[str, Any], key: str) -> bool:
    """Whether `settings` (a file's) give the dotted `key`."""
    node: Any = settings
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True

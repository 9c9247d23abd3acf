"""The configuration's root (`Config`), and the checks across its fields (`Config.check`).

Its sections are declared by what they configure: `proxy.config_serving` (serving
clients, reaching backends), `proxy.config_selector` (how `auto` chooses a model) and
`proxy.config_services` (usage events, API keys, the cache, shared state, the cloud).
`proxy.config_loading` loads them; `proxy.config_reading` makes them from a mapping.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from proxy.config_reading import AIOHTTP_UNCHECKED_ENV as AIOHTTP_UNCHECKED_ENV
from proxy.config_reading import ENV_PREFIX as ENV_PREFIX
from proxy.config_reading import ConfigError as ConfigError
from proxy.config_selector import ModelEntry, Selector, Warm
from proxy.config_services import Auth, Cache, Cloud, CloudProvider, Shared, Usage
from proxy.config_serving import (
    Backend,
    Health,
    Limits,
    Listen,
    Logging,
    Routing,
    Runners,
    Timeouts,
    keep_alive_bound,
    without_userinfo,
)
from selector_model.catalog import AREAS, SPECIALTIES

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


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

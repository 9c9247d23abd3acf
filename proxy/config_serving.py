"""The configuration's sections for serving clients and reaching backends: `listen`,
`backends`, `timeouts`, `limits`, `health`, `routing`, `logging` and `runners`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from proxy.keep_alive import keep_alive_seconds


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
    # Models kept loaded here, where they fit (see `config_selector.Warm`).
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


def without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


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


def keep_alive_bound(runners: Runners, name: str) -> float | None:
    """`runners.min_keep_alive` or `max_keep_alive` in seconds, None when unset."""
    text = getattr(runners, name).strip()
    return None if not text else keep_alive_seconds(text)

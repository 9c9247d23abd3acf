"""Settings, counters and the mutable model store of one emulator instance.

Everything a test reads in-process hangs off `app[STATE_KEY]`; the same counters are
served as JSON on `GET /api/emulator/state` for an emulator running in a subprocess.
"""

from __future__ import annotations

import collections
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.backends import valid_name
from proxy.protocol import OLLAMA_VERSION

from .catalog import CATALOG, REGISTRY, ModelSpec, normalize_name
from .synthesized import Synthesized, synthesize

FAULT_MODES = ("none", "hang", "stall", "close_early", "garbage", "error500")
# What Ollama answers a request whose model runner died under it (llm/server.go).
RUNNER_DIED = "llama runner process has terminated: exit status 2"
# How long "forever" keeps a model loaded: Go's largest Duration, what Ollama reads a
# negative keep_alive as (api.Duration), so /api/ps says about 292 years from now.
_FOREVER_NS = (1 << 63) - 1

# 2025-01-01T00:00:00.123456789Z: the timestamp every body carries under frozen_clock.
# It keeps a nanosecond fraction so that Go's RFC 3339 formatting is still exercised.
FROZEN_TIME_NS = 1_735_689_600_123_456_789

# The load_duration a request to an already loaded model reports under frozen_clock
# (real Ollama reports a few milliseconds of scheduling even when the runner is warm).
FROZEN_WARM_LOAD_NS = 1_000_000


@dataclass(frozen=True)
class EmulatorSettings:
    """How the emulated GPU server behaves. All rates are per second."""

    # Models present locally at start-up, any Ollama model names (synthesized.py
    # describes those the table does not list); None means the whole table.
    models: tuple[str, ...] | None = None
    # Seconds the first request to an unloaded model waits (reported as load_duration).
    load_seconds: float = 0.0
    # Prompt evaluation speed: the wait before the first token is prompt_tokens / rate.
    prompt_tokens_per_second: float = 2000.0
    # Generation speed: the wait between tokens, unless chunk_delay_ms overrides it.
    tokens_per_second: float = 60.0
    # Fixed delay between chunks in milliseconds (benchmarks use 5); overrides the rate.
    chunk_delay_ms: float | None = None
    # Tokens generated when options.num_predict / max_tokens is absent.
    default_tokens: int = 20
    # Fixed created_at and computed (not measured) durations: identical requests then
    # give byte-identical bodies, which lets tests compare proxied and direct answers.
    frozen_clock: bool = False
    # /api/version's answer; before 0.6.4, /api/show lists no capabilities.
    version: str = OLLAMA_VERSION
    # How long a model stays loaded after its last request (/api/ps expires_at).
    keep_alive_seconds: float = 300.0
    # Answer /api/ps with Gin's 404, as Ollama releases before it and some
    # Ollama-compatible servers do.
    ps_missing: bool = False
    # Answer /api/ps with an empty list whatever is loaded, as some Ollama-compatible
    # servers do.
    ps_silent: bool = False
    # Answer /api/show with Gin's 404 while /api/tags lists the models, as some
    # Ollama-compatible servers do.
    show_missing: bool = False
    # Never answer /api/show (until the client leaves) while /api/tags lists the models,
    # as a server stuck reading a model's file does.
    show_hang: bool = False
    # For generation (chat, generate, the OpenAI and Anthropic routes) the rates above
    # are a 7B model's, every other model's scaled by its size (decoding and prompt
    # evaluation are bound by reading the weights), so that a demo's fleet has quick and
    # slow models for `auto:fast` to tell apart; embeddings keep the rates as they are.
    # Off: one speed for all.
    speed_by_size: bool = False
    # A runner that crashes on some input, as llama.cpp's does on one it cannot handle
    # (a failed GGML_ASSERT on an odd image or token sequence): a prompt or message
    # holding this text kills the model's runner once it is loaded; the request gets
    # Ollama's 500 (`RUNNER_DIED`) and the model is unloaded, so the next request
    # loads it again. "" (the default): no input does.
    crash_on: str = ""
    # The address it listens on: as Ollama, it checks the `Host` a request names only
    # while that is a loopback address (`proxy.hosts`).
    listen_host: str = "127.0.0.1"

    def token_delay(self) -> float:
        """Seconds between two generated tokens."""
        if self.chunk_delay_ms is not None:
            return max(self.chunk_delay_ms, 0.0) / 1000.0
        return 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0

    def slowdown(self, parameter_count: int) -> float:
        """How many times a 7B model's time a model of this many parameters takes."""
        if not self.speed_by_size or parameter_count <= 0:
            return 1.0
        return max(parameter_count / 7e9, 0.05)

    def prompt_delay(self, prompt_tokens: int) -> float:
        """Seconds spent evaluating a prompt of this many tokens."""
        if self.prompt_tokens_per_second <= 0:
            return 0.0
        return prompt_tokens / self.prompt_tokens_per_second


@dataclass
class EmulatorState:
    """Counters the tests read, plus this instance's model store and blobs."""

    settings: EmulatorSettings
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    # The headers of the last request (lower-cased names), to check what proxies forward.
    last_headers: dict[str, str] = field(default_factory=dict)
    # The target of the last request, as sent.
    last_target: bytes = b""
    # In-flight generations (streaming or not) on the inference routes.
    active_streams: int = 0
    # Generations that ran to their final chunk.
    completed: int = 0
    # Generations abandoned because the client went away first.
    cancelled: int = 0
    # Runners killed by an input (`EmulatorSettings.crash_on`).
    crashes: int = 0
    # Model name -> how many times its runner died: a generation that started under an
    # earlier count was running on a runner that is gone (`engine.Generation`).
    runner_deaths: collections.Counter[str] = field(default_factory=collections.Counter)
    # time.monotonic() at which each of those disconnects was noticed.
    cancel_times: list[float] = field(default_factory=list)
    # Loaded model name -> expiry as a Unix time in nanoseconds (an int, kept exact).
    loaded: dict[str, float] = field(default_factory=dict)
    fault: str = "none"
    # Models present on "disk" (name -> spec); starts from the catalogue.
    store: dict[str, ModelSpec] = field(default_factory=dict)
    # Digests ("sha256:<hex>") of blobs uploaded through POST /api/blobs.
    blobs: set[str] = field(default_factory=set)
    # The models of settings.models that the table does not list, as described.
    synthesized: tuple[Synthesized, ...] = ()

    def __post_init__(self) -> None:
        if not self.store:
            self.store, self.synthesized = starting_models(self.settings.models)

    @property
    def models(self) -> dict[str, ModelSpec]:
        """Alias of `store` (name -> spec of every model present)."""
        return self.store

    # Time ---------------------------------------------------------------------------

    def now_ns(self) -> int:
        """Wall-clock Unix time in nanoseconds (fixed under frozen_clock)."""
        return FROZEN_TIME_NS if self.settings.frozen_clock else time.time_ns()

    # Models -------------------------------------------------------------------------

    def find(self, name: str) -> ModelSpec | None:
        """The stored model a request names, matched the way Ollama does (case-folded,
        `:latest` implied, `registry.ollama.ai/library/` prefix optional)."""
        wanted = normalize_name(name).casefold()
        for stored, spec in self.store.items():
            if stored.casefold() == wanted:
                return spec
        return None

    def touch(self, spec: ModelSpec, keep_alive: float | None) -> None:
        """Mark a model loaded until now + keep_alive (seconds; negative = forever)."""
        seconds = self.settings.keep_alive_seconds if keep_alive is None else keep_alive
        if seconds == 0:
            self.loaded.pop(spec.name, None)
            return
        # Negative is forever; so is a number too large to add to a clock (Ollama's
        # conversion of one overflows without an error).
        forever = seconds < 0 or seconds * 1e9 > _FOREVER_NS
        self.loaded[spec.name] = self.now_ns() + (_FOREVER_NS if forever else int(seconds * 1e9))

    def is_loaded(self, spec: ModelSpec) -> bool:
        expiry = self.loaded.get(spec.name)
        if expiry is None:
            return False
        if not self.settings.frozen_clock and expiry < time.time_ns():
            del self.loaded[spec.name]
            return False
        return True

    def runner_crashed(self, spec: ModelSpec) -> None:
        """The model's runner died: it is no longer loaded, and whatever it was
        generating ends with it."""
        self.crashes += 1
        self.runner_deaths[spec.name] += 1
        self.loaded.pop(spec.name, None)

    def crashes_on(self, *texts: str) -> bool:
        """Whether an input holding `texts` kills the runner (`crash_on`)."""
        marker = self.settings.crash_on
        return bool(marker) and any(marker in text for text in texts)

    # Counters -----------------------------------------------------------------------

    def note_cancel(self) -> None:
        self.cancelled += 1
        self.cancel_times.append(time.monotonic())

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON-able data (GET /api/emulator/state)."""
        return {
            "requests": dict(self.requests),
            "active_streams": self.active_streams,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "crashes": self.crashes,
            "cancel_times": list(self.cancel_times),
            "loaded": dict(self.loaded),
            "fault": self.fault,
            "models": sorted(self.store),
        }


class InvalidModelName(ValueError):
    """A name in settings.models that Ollama would not accept as a model name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name!r} is not a valid Ollama model name")


def starting_models(
    wanted: tuple[str, ...] | None,
) -> tuple[dict[str, ModelSpec], tuple[Synthesized, ...]]:
    """The store an emulator starts with, and which of its models were synthesized: the
    table's entry for a name it lists (matched as `find` matches), any other name
    described by `synthesize`."""
    if wanted is None:
        return {spec.name: spec for spec in CATALOG}, ()
    table = {name.casefold(): spec for name, spec in REGISTRY.items()}
    store: dict[str, ModelSpec] = {}
    synthesized: list[Synthesized] = []
    for name in wanted:
        if not valid_name(name):
            raise InvalidModelName(name)
        key = normalize_name(name).casefold()
        if any(stored.casefold() == key for stored in store):
            continue
        spec = table.get(key)
        if spec is None:
            made = synthesize(name)
            synthesized.append(made)
            spec = made.spec
        store[spec.name] = spec
    return store, tuple(synthesized)


STATE_KEY = web.AppKey("emulator_state", EmulatorState)


def state_of(request: web.Request) -> EmulatorState:
    """The emulator's state, as a handler reaches it."""
    return request.app[STATE_KEY]


def request_digest(*parts: str) -> str:
    """Stable hex digest used for ids that must not vary under frozen_clock."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()

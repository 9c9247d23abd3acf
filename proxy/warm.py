"""Each backend's warm set (`backends[].warm`), kept loaded in the background.

At start and then every health interval, each warm model that fits the backend's
memory (its need, `proxy.memory`, within what the warm models before it in the list
left of the capacity) and is not loaded, or will unload within half of
`warm.keep_alive`, is loaded as Ollama loads a model: `POST /api/generate` with the
model and a `keep_alive` and no prompt. Never on a request's path. What the last
check found is `Memory.warm`, shown by `GET /api/autoroute/status`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from proxy.backends import BackendPool, BackendState, normalize_model
from proxy.config import Config, ConfigError
from proxy.keep_alive import keep_alive_seconds
from proxy.memory import Memory
from proxy.upstream_errors import UpstreamError

log = logging.getLogger("autoroute.warm")


class Warmer:
    def __init__(self, config: Config, backends: BackendPool, memory: Memory) -> None:
        self.interval = config.health.interval_seconds
        self.keep_alive = config.warm.keep_alive
        try:
            self.lifetime = keep_alive_seconds(config.warm.keep_alive)
        except ValueError as exc:
            raise ConfigError(f"warm.keep_alive: {exc}", key="warm.keep_alive") from None
        self.backends = backends
        self.memory = memory
        self.sets = {s.label: [normalize_model(m) for m in s.config.warm] for s in backends.states}
        # (backend label, model): when the warmer last loaded it, until `/api/ps` shows
        # it loaded (the next refresh), so that it is not loaded twice meanwhile.
        self.sent: dict[tuple[str, str], float] = {}

    @property
    def enabled(self) -> bool:
        return any(self.sets.values())

    async def run(self) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:
                log.exception("warm set check failed")
            await asyncio.sleep(self.interval)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(s) for s in self.backends.states if self.sets[s.label]))

    async def check(self, state: BackendState) -> None:
        found: dict[str, str] = {}
        self.memory.warm[state.label] = found
        if state not in self.backends.usable():
            for model in self.sets[state.label]:
                found[model] = f"waiting: backend unavailable ({state.last_error or 'unknown'})"
            return
        capacity, source = self.memory.capacity(state)
        left = capacity
        for model in self.sets[state.label]:
            if state.models is not None and model not in state.models:
                found[model] = "not on this backend"
                continue
            need = self.memory.need(model)
            if left is not None and capacity is not None:
                if need > left:
                    found[model] = (
                        f"does not fit: needs {need:.2f} GB, {left:.2f} GB of "
                        f"{capacity:.2f} GB ({source}) left for the warm set"
                    )
                    continue
                left -= need
            expiry = self.memory.expiry(state, model)
            now = time.time()
            if expiry is not None:
                self.sent.pop((state.label, model), None)
                if expiry - now > self.lifetime / 2:
                    found[model] = "loaded"
                    continue
            elif now - self.sent.get((state.label, model), -math.inf) < 2 * self.interval:
                found[model] = "loaded"  # by the warmer; /api/ps shows it at its next read
                continue
            found[model] = await self._load(state, model)
            if found[model] == "loaded":
                self.sent[(state.label, model)] = time.time()

    async def _load(self, state: BackendState, model: str) -> str:
        keep_alive: str | float = self.keep_alive
        try:
            keep_alive = float(self.keep_alive)  # a bare number is seconds to Ollama
        except ValueError:
            pass
        body = {"model": model, "keep_alive": keep_alive, "stream": False}
        try:
            await self.backends.get_json(state, "/api/generate", body)
        except (UpstreamError, TimeoutError, OSError, ValueError) as exc:
            log.warning("warming %s on %s failed: %s", model, state.label, exc)
            return f"failed: {exc}"
        log.info("warmed %s on %s (keep_alive %s)", model, state.label, self.keep_alive)
        return "loaded"

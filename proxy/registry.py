"""The models `auto` can choose from, as the selector sees them.

Built after every background refresh of the backends: names and details from
`/api/tags`, capabilities and context length from `/api/show` (fetched once per
digest and cached with aiocache: identical weights on several backends cost one
fetch), loaded state from `/api/ps`. The request path only reads `self.models`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from aiocache import SimpleMemoryCache

from proxy.backends import BackendPool, BackendState, normalize_model
from proxy.upstream import UpstreamError
from selector_model.features import Candidate, family_of, params_from, quant_bits_from

log = logging.getLogger("autoroute.registry")


@dataclass(frozen=True)
class ModelInfo:
    candidate: Candidate  # with loaded=False; `Registry.candidates` sets it
    details: dict[str, Any]
    embedding_only: bool


def _context_length(show: dict[str, Any]) -> int:
    info = show.get("model_info") or {}
    for key, value in info.items():
        if key.endswith(".context_length") and isinstance(value, int):
            return value
    return 2048  # Ollama's historical default num_ctx


def model_info(name: str, tag: dict[str, Any], show: dict[str, Any]) -> ModelInfo:
    details = show.get("details") or tag.get("details") or {}
    capabilities = frozenset(show.get("capabilities") or tag.get("capabilities") or ("completion",))
    lowered = name.lower()
    candidate = Candidate(
        name=name,
        family=family_of(name, str(details.get("family") or "")),
        params_b=params_from(str(details.get("parameter_size") or "")) or 7.0,
        quant_bits=quant_bits_from(str(details.get("quantization_level") or "")),
        context_length=_context_length(show),
        capabilities=capabilities,
        is_code="code" in lowered or "insert" in capabilities,
        is_instruct="base" not in lowered and "text" not in lowered.split(":")[-1],
    )
    return ModelInfo(
        candidate, dict(details), "embedding" in capabilities and "completion" not in capabilities
    )


class Registry:
    def __init__(self, backends: BackendPool) -> None:
        self.backends = backends
        self.cache = SimpleMemoryCache()
        self.models: dict[str, ModelInfo] = {}
        backends.listeners.append(self.refresh)
        # The candidate list for the last (models, available, loaded) seen: rebuilt only
        # when one of them changes, not per request.
        self._cached: tuple[object, list[Candidate]] = ((), [])
        self.generation = 0  # bumped by every refresh
        self.backend_of: dict[str, str] = {}

    async def _show(self, state: BackendState, name: str, digest: str) -> dict[str, Any] | None:
        cached = await self.cache.get(digest) if digest else None
        if cached is not None:
            return dict(cached)
        try:
            show: dict[str, Any] = await self.backends.get_json(state, "/api/show", {"model": name})
        except (UpstreamError, ValueError) as exc:
            log.warning("show %s on %s failed: %s", name, state.label, exc)
            return None
        if digest:
            await self.cache.set(digest, show)
        return show

    async def refresh(self) -> None:
        models: dict[str, ModelInfo] = {}
        for state in self.backends.states:
            for tag in state.tags:
                name = normalize_model(str(tag.get("model") or tag.get("name") or ""))
                if name in models:
                    continue
                show = await self._show(state, name, str(tag.get("digest") or ""))
                if show is not None:
                    models[name] = model_info(name, tag, show)
        self.set_models(models)

    def set_models(self, models: dict[str, ModelInfo]) -> None:
        self.models = models
        self.generation += 1

    def loaded(self) -> frozenset[str]:
        loaded: set[str] = set()
        for state in self.backends.usable():
            loaded |= state.loaded
        return frozenset(loaded)

    def candidates(self) -> list[Candidate]:
        """Every generation model a usable backend has, with its loaded state."""
        usable = self.backends.usable()
        key = (self.generation, *((s.models, s.loaded) for s in usable))
        if key == self._cached[0]:
            return self._cached[1]
        available: set[str] = set()
        loaded: set[str] = set()
        for state in usable:
            available |= state.models or frozenset()
            loaded |= state.loaded
        candidates = [
            replace(info.candidate, loaded=name in loaded)
            for name, info in self.models.items()
            if name in available and not info.embedding_only
        ]
        # Where each would most likely run (loaded there first), for its expected time.
        self.backend_of = {
            c.name: min(
                (s for s in usable if s.models and c.name in s.models),
                key=lambda s: (c.name not in s.loaded, s.index),
            ).label
            for c in candidates
        }
        self._cached = (key, candidates)
        return candidates

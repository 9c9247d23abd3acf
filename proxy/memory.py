"""What each backend has loaded, what a model needs, and what loading one costs `auto`.

Read from each backend's `/api/ps` (`size`, `size_vram`, `expires_at`) after every
background refresh, and from the registry's models (parameters and quantization from
`/api/show`). A model's memory need is the size `/api/ps` last showed for it, else its
weights (parameters x bits) times `warm.memory_factor`. A backend's capacity is its
configured `vram_gb`, else the most memory seen loaded on it at once (unknown until
something was loaded).

`auto`'s two terms come from here, computed on the request path from what the last
refresh found, with no I/O:
- load seconds: a candidate not loaded costs the load measured for it on its backend
  (Ollama's `load_duration`, by `Telemetry`), else `warm.load_seconds_per_gb` x its
  memory need; added to its expected seconds. None on a backend whose `/api/ps` does
  not say what is loaded (`BackendState.reports_loaded`);
- eviction: loading a candidate evicts a model with requests in flight when the
  memory of the busy models plus its need exceed the backend's capacity (Ollama keeps
  a busy runner and makes the new request wait for it); such a candidate loses
  `warm.evict_penalty` of utility.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.backends import BackendPool, BackendState, entry_model
from proxy.config import Config
from proxy.registry import Registry
from selector_model.features import Candidate
from selector_model.held import Held
from selector_model.telemetry import Telemetry

GB = 1e9


def expiry_of(stamp: object) -> float | None:
    """Unix seconds of an `/api/ps` `expires_at` (Go's RFC 3339), None if unreadable."""
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(slots=True)
class _Plan:
    """What `Memory.terms` reads of each candidate of one list, found once per list,
    and its last load terms with what they were computed from."""

    labels: list[str]
    names: list[str]
    loaded: list[bool]
    states: list[BackendState | None]  # the backend each would run on
    # Those backends, each once: with none of them busy, nothing can be evicted.
    backends: tuple[BackendState, ...]
    # Whether it is charged no load: loaded, or on a backend that does not say what is.
    free: list[bool] = field(default_factory=list)
    # The terms while none of `backends` is busy: the load seconds and no eviction.
    idle: Terms | None = None
    # What `free` and `idle` were computed from: the loads measured so far, the needs,
    # and each backend's `reports_loaded` (-1: never computed).
    loads_measured: int = -1
    needs: dict[str, float] | None = None
    reports: tuple[bool, ...] = ()


@dataclass(frozen=True, slots=True)
class Terms:
    """What loading adds to each candidate of one decision. One may serve every
    decision while what it was computed from stays (`Memory.terms`): read, never
    changed."""

    load_seconds: list[float]  # 0 for a loaded candidate
    evicts: list[bool]  # loading it would evict a model with requests in flight
    penalty: float  # utility an evicting candidate loses

    def describe(self, index: int) -> dict[str, Any]:
        return {
            "load_seconds": round(self.load_seconds[index], 3),
            "evicts_busy_model": self.evicts[index],
            "evict_penalty": self.penalty if self.evicts[index] else 0.0,
        }


def used_bytes(state: BackendState) -> float:
    """Bytes of GPU memory the backend's loaded models hold, as its `/api/ps` said."""
    total = 0.0
    for entry in state.running:
        vram = entry.get("size_vram", entry.get("size"))
        if isinstance(vram, int | float):
            total += vram
    return total


class Memory:
    def __init__(
        self, config: Config, backends: BackendPool, registry: Registry, telemetry: Telemetry
    ) -> None:
        self.settings = config.warm
        self.backends = backends
        self.registry = registry
        self.telemetry = telemetry
        self.by_label = backends.by_label
        self.sizes: dict[str, float] = {}  # model: GB, as /api/ps last showed it
        self.peak: dict[int, float] = {}  # backend index: most GB seen loaded at once
        self.needs: dict[str, float] = {}  # model: GB, per registry refresh
        # Backend label: warm model: its state, as the warmer last found it.
        self.warm: dict[str, dict[str, str]] = {}
        # Per (backends, candidates) lists `terms` is asked about.
        self._plans: Held[_Plan] = Held()
        backends.listeners.append(self.refresh)

    async def refresh(self) -> None:
        """After each refresh of the backends (and the registry, listed before)."""
        for state in self.backends.states:
            for entry in state.running:
                size = entry.get("size")
                if isinstance(size, int | float) and size > 0:
                    self.sizes[entry_model(entry)] = size / GB
            self.peak[state.index] = max(self.peak.get(state.index, 0.0), self.used(state))
        self.needs = {
            name: self._estimate(name, info.candidate)
            for name, info in self.registry.models.items()
        }

    def _estimate(self, name: str, candidate: Candidate | None) -> float:
        seen = self.sizes.get(name)
        if seen is not None:
            return seen
        if candidate is None:
            return 0.0
        weights = max(candidate.params_b, 0.05) * candidate.quant_bits / 8.0
        return weights * self.settings.memory_factor

    def need(self, name: str) -> float:
        """GB model `name` needs loaded (0 when nothing is known of it); a model the
        last refresh did not estimate is estimated once, until the next refresh."""
        need = self.needs.get(name)
        if need is None:
            info = self.registry.models.get(name)
            need = self.needs[name] = self._estimate(name, info.candidate if info else None)
        return need

    def capacity(self, state: BackendState) -> tuple[float | None, str]:
        """(GB models may use on the backend, where that figure comes from)."""
        if state.config.vram_gb > 0:
            return state.config.vram_gb, "config"
        peak = self.peak.get(state.index, 0.0)
        return (peak, "most seen loaded") if peak > 0 else (None, "unknown")

    @staticmethod
    def used(state: BackendState) -> float:
        """GB of GPU memory the backend's loaded models hold."""
        return used_bytes(state) / GB

    def expiry(self, state: BackendState, name: str) -> float | None:
        """Unix seconds when `name` unloads from the backend; None: not loaded."""
        for entry in state.running:
            if entry_model(entry) == name:
                return expiry_of(entry.get("expires_at")) or float("inf")
        return None

    def _held_busy(self, state: BackendState) -> tuple[float | None, float]:
        """(capacity, GB the models with requests in flight hold) of a backend; the
        capacity None when unknown or nothing is in flight."""
        capacity, _ = self.capacity(state)
        if capacity is None or not state.busy:
            return None, 0.0
        busy = 0.0
        for entry in state.running:
            model = entry_model(entry)
            if model in state.busy:
                busy += self.sizes.get(model, 0.0)
        return capacity, busy

    def terms(self, backends: Sequence[str], candidates: Sequence[Candidate]) -> Terms:
        """The load and eviction terms of each candidate on the backend it would run on
        (see the module docstring). On `auto`'s hot path: the load terms are computed
        again only when what they depend on changed (a load measured, a refresh, a
        backend starting or stopping to say what is loaded); evictions only when a
        backend has requests in flight."""
        plan = self._plans.get((backends, candidates), self._plan)
        idle = self._idle(plan)
        for backend in plan.backends:
            if backend.busy:
                break
        else:
            # Nothing in flight on any of their backends (the common case): nothing to
            # evict, and the terms are those kept with the loads.
            return idle
        evicts = [False] * len(plan.states)
        # Per backend, read once for all its candidates: (capacity, GB held busy).
        held: dict[int, tuple[float | None, float]] = {}
        for i, state in enumerate(plan.states):
            # Nothing in flight there: nothing to evict (the common case, checked first).
            if state is not None and state.busy and not plan.free[i]:
                found = held.get(state.index)
                if found is None:
                    found = held[state.index] = self._held_busy(state)
                capacity, busy = found
                evicts[i] = (
                    capacity is not None and busy > 0 and busy + self.need(plan.names[i]) > capacity
                )
        return Terms(idle.load_seconds, evicts, idle.penalty)

    def _plan(self, backends: Sequence[str], candidates: Sequence[Candidate]) -> _Plan:
        states = [self.by_label.get(label) for label in backends]
        return _Plan(
            list(backends),
            [c.name for c in candidates],
            [c.loaded for c in candidates],
            states,
            tuple({id(s): s for s in states if s is not None}.values()),
        )

    def _idle(self, plan: _Plan) -> Terms:
        """The terms of the plan's candidates while none of their backends is busy:
        each one's load seconds, 0 for one loaded, or whose backend does not say what is
        loaded (charging every model one would favour the smallest everywhere); else the
        load measured for it there, else `load_seconds_per_gb` x its memory need."""
        measured_loads = self.telemetry.loads_measured
        reports = tuple([s.reports_loaded for s in self.backends.states])
        if (
            plan.idle is None
            or plan.loads_measured != measured_loads
            or plan.needs is not self.needs
            or plan.reports != reports
        ):
            per_gb = self.settings.load_seconds_per_gb
            measured_load = self.telemetry.measured_load
            free = [
                loaded or (state is not None and not state.reports_loaded)
                for loaded, state in zip(plan.loaded, plan.states, strict=True)
            ]
            loads = []
            for label, name, skip in zip(plan.labels, plan.names, free, strict=True):
                if skip:
                    loads.append(0.0)
                    continue
                measured = measured_load(label, name)
                loads.append(per_gb * self.need(name) if measured is None else measured)
            plan.free = free
            plan.idle = Terms(loads, [False] * len(loads), self.settings.evict_penalty)
            plan.loads_measured, plan.needs, plan.reports = measured_loads, self.needs, reports
        return plan.idle

    def status(self) -> list[dict[str, Any]]:
        """Per backend: memory in use and capacity, what is loaded, the warm set."""
        out = []
        for state in self.backends.states:
            capacity, source = self.capacity(state)
            out.append(
                {
                    "backend": state.label,
                    "memory_used_gb": round(self.used(state), 3),
                    "capacity_gb": None if capacity is None else round(capacity, 3),
                    "capacity_from": source,
                    "reports_loaded": state.reports_loaded,
                    "loaded": [
                        {
                            "model": entry_model(entry),
                            "size_gb": round(float(entry.get("size") or 0) / GB, 3),
                            "vram_gb": round(float(entry.get("size_vram") or 0) / GB, 3),
                            "expires_at": entry.get("expires_at"),
                            "in_flight": state.busy.get(entry_model(entry), 0),
                        }
                        for entry in state.running
                    ],
                    "warm": dict(self.warm.get(state.label, {})),
                }
            )
        return out

"""Profiling a model on a backend: the suite's prompts through Ollama's /api/chat, one
at a time, graded, and the per-area scores stored for the selector.

Two ways in, both only when the operator asks (every prompt spends GPU time):
`autoroute profile MODEL` runs it now; `selector.profile_models` names models the proxy
profiles in idle time, one prompt at a time and only while no client request is in
flight, for each area without a result from the current suite version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from proxy.backends import entry_model, normalize_model
from proxy.config import Config
from proxy.config_serving import without_userinfo
from selector_model.catalog.knowledge import AREAS
from selector_model.profiling import store
from selector_model.profiling import suite as suite_module
from selector_model.profiling.graders import Grade, grade
from selector_model.profiling.suite import Item, Suite

if TYPE_CHECKING:
    from proxy.backends import BackendPool
    from proxy.metrics import Metrics

log = logging.getLogger("autoroute.profiling")

# Tokens a model may spend on one answer (thinking included): enough for a worked
# answer or a short function; a longer ramble counts as a wrong answer.
DEFAULT_NUM_PREDICT = 1024


class ProfileError(Exception):
    """The backend could not answer a prompt; nothing is stored for that run."""


@dataclass
class Profile:
    """One model's graded answers, per item, with their area scores."""

    model: str
    backend: str
    suite_version: str
    grades: dict[str, tuple[Item, Grade]] = field(default_factory=dict)

    def areas(self) -> dict[str, tuple[float, int]]:
        """area -> (score, number of prompts), in the suite's area order."""
        totals: dict[str, list[float]] = {}
        for item, result in self.grades.values():
            totals.setdefault(item.area, []).append(result.score)
        return {
            area: (sum(totals[area]) / len(totals[area]), len(totals[area]))
            for area in AREAS
            if area in totals
        }

    def results(self, date: str | None = None) -> dict[str, store.AreaResult]:
        stamp = date or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return {
            area: store.AreaResult(score, n, self.suite_version, stamp, self.backend)
            for area, (score, n) in self.areas().items()
        }


async def ask(
    session: aiohttp.ClientSession, backend: str, model: str, prompt: str, num_predict: int
) -> str:
    """One non-streamed, deterministic chat answer (its content) from the backend."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": False,
        "options": {"temperature": 0, "num_predict": num_predict},
    }
    try:
        async with session.post(backend.rstrip("/") + "/api/chat", json=body) as resp:
            doc: Any = await resp.json(content_type=None)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ProfileError(f"{without_userinfo(backend)}: {exc or type(exc).__name__}") from exc
    if status != 200 or not isinstance(doc, dict):
        why = doc.get("error") if isinstance(doc, dict) else None
        raise ProfileError(f"{without_userinfo(backend)} answered {status}: {why or doc}")
    message = doc.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


async def profile(
    session: aiohttp.ClientSession,
    backend: str,
    model: str,
    *,
    suite: Suite | None = None,
    areas: tuple[str, ...] | None = None,
    num_predict: int = DEFAULT_NUM_PREDICT,
    before_each: Callable[[], Awaitable[None]] | None = None,
    on_graded: Callable[[Item, Grade], None] | None = None,
) -> Profile:
    """Ask each prompt of these areas in turn and grade the answers.

    `before_each` runs before every prompt (the idle profiler waits there for quiet)."""
    suite = suite or suite_module.load()
    # Recorded (and shown in the status) without the URL's credentials, if it has any.
    shown = without_userinfo(backend)
    result = Profile(model=model, backend=shown, suite_version=suite.version)
    for item in suite.select(areas):
        if before_each is not None:
            await before_each()
        answer = await ask(session, backend, model, item.prompt, num_predict)
        # The code grader runs a subprocess: off the event loop.
        graded = await asyncio.to_thread(grade, item, answer)
        result.grades[item.id] = (item, graded)
        if on_graded is not None:
            on_graded(item, graded)
    return result


def client_session(config: Config) -> aiohttp.ClientSession:
    timeouts = config.timeouts
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect_seconds, sock_read=timeouts.idle_read_seconds
        )
    )


def missing_areas(
    results: dict[str, dict[str, store.AreaResult]], model: str, suite: Suite
) -> tuple[str, ...]:
    """The suite's areas this model has no result for from this suite version."""
    have = results.get(store.model_key(model), {})
    return tuple(
        area
        for area in suite.areas()
        if area not in have or have[area].suite_version != suite.version
    )


# `autoroute profile` -------------------------------------------------------------


async def find_backend(session: aiohttp.ClientSession, config: Config, model: str) -> str:
    """The first configured backend whose /api/tags lists the model."""
    wanted = normalize_model(model)
    reasons = []
    for backend in config.backends:
        try:
            async with session.get(backend.url.rstrip("/") + "/api/tags") as resp:
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            reasons.append(f"{backend.label}: {exc or type(exc).__name__}")
            continue
        names = {
            entry_model(m)
            for m in (doc.get("models") or [] if isinstance(doc, dict) else [])
            if isinstance(m, dict)
        }
        if wanted in names:
            return backend.url
        reasons.append(f"{backend.label}: does not have it")
    raise ProfileError(f"no backend has model '{model}' ({'; '.join(reasons)})")


async def run_cli(
    config: Config,
    model: str,
    *,
    backend: str | None,
    areas: tuple[str, ...] | None,
    store_path: str,
    num_predict: int,
    echo: Callable[[str], None],
) -> None:
    """Profile `model` now, store its areas and print them."""
    suite = suite_module.load()
    suite.select(areas)  # an unknown area fails before any GPU time is spent
    async with client_session(config) as session:
        url = backend or await find_backend(session, config, model)
        echo(
            f"profiling {model} on {without_userinfo(url)}: suite v{suite.version}, "
            f"{len(suite.select(areas))} prompts, one at a time"
        )

        def progress(item: Item, graded: Grade) -> None:
            mark = "ok" if graded.passed else f"wrong ({graded.detail[:120]})"
            echo(f"  {item.id:<16} {mark}")

        result = await profile(
            session,
            url,
            model,
            suite=suite,
            areas=areas,
            num_predict=num_predict,
            on_graded=progress,
        )
    store.save(store_path, model, result.results())
    for area, (score, n) in result.areas().items():
        echo(f"{area:<12} {score:.2f}  ({n} prompts)")
    echo(f"stored in {store_path}")


# Idle-time profiling in the proxy ----------------------------------------------------


class IdleProfiler:
    """Profiles `selector.profile_models` while the proxy is idle.

    Every `check_seconds` it looks for a listed model missing areas of the current
    suite on some backend that has it, and profiles those areas, waiting before each
    prompt until no request is in flight. A failed run is retried after
    `retry_seconds`."""

    def __init__(
        self,
        config: Config,
        busy: Callable[[], bool],
        backend_for: Callable[[str], str | None],
        *,
        check_seconds: float = 30.0,
        poll_seconds: float = 0.5,
        retry_seconds: float = 600.0,
    ) -> None:
        self.config = config
        self.busy = busy
        self.backend_for = backend_for
        self.check_seconds = check_seconds
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self._failed_at: dict[str, float] = {}
        self.profiled: list[str] = []  # models profiled by this process, in order

    async def _quiet(self) -> None:
        # Polled: the request path only counts requests and signals nobody.
        while True:
            if not self.busy():
                return
            await asyncio.sleep(self.poll_seconds)

    async def run_once(self, session: aiohttp.ClientSession) -> None:
        suite = suite_module.load()
        path = self.config.selector.profiles_path
        now = time.monotonic()
        for model in self.config.selector.profile_models:
            failed = self._failed_at.get(model)
            if failed is not None and now - failed < self.retry_seconds:
                continue
            areas = missing_areas(store.read(path), model, suite)
            backend = self.backend_for(model) if areas else None
            if not areas or backend is None:
                continue
            log.info(
                "profiling %s on %s in idle time (areas: %s)",
                model,
                without_userinfo(backend),
                areas,
            )
            try:
                result = await profile(
                    session, backend, model, suite=suite, areas=areas, before_each=self._quiet
                )
            except ProfileError as exc:
                log.warning("profiling %s failed: %s", model, exc)
                self._failed_at[model] = now
                continue
            store.save(path, model, result.results())
            self._failed_at.pop(model, None)
            self.profiled.append(model)
            log.info(
                "profiled %s: %s", model, {a: round(s, 2) for a, (s, _) in result.areas().items()}
            )

    async def run(self) -> None:
        async with client_session(self.config) as session:
            while True:
                await self.run_once(session)
                await asyncio.sleep(self.check_seconds)


def idle_profiler(config: Config, backends: BackendPool, metrics: Metrics) -> IdleProfiler:
    """The idle profiler of a running proxy: idle means no request in flight, and a
    model's backend is one whose model list has it."""

    def backend_for(model: str) -> str | None:
        name = normalize_model(model)
        for state in backends.states:
            if state.models is not None and name in state.models:
                return state.config.url
        return None

    return IdleProfiler(
        config,
        busy=lambda: metrics.in_flight > 0,
        backend_for=backend_for,
        check_seconds=max(config.health.interval_seconds, 1.0),
    )

"""Pacing a `Plan` onto the wire, and noticing when the client leaves.

Disconnect detection relies only on aiohttp's default server settings: between tokens
(and every 20 ms of a longer wait such as a model load or a fault's hang) the engine
checks `request.transport is None or request.transport.is_closing()`; aiohttp drops the
transport in `connection_lost`, which the event loop calls as soon as the peer's FIN or
RST arrives. A failed write (`ConnectionResetError`, which aiohttp's
`ClientConnectionResetError` subclasses) counts the same way. If the server does run
with `handler_cancellation=True`, the resulting `CancelledError` is counted too and
re-raised. Either way non-streaming requests are cancelled promptly as well, because
they are paced exactly like streams and only differ in what is written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .catalog import ModelSpec
from .state import FROZEN_WARM_LOAD_NS, EmulatorState
from .textgen import Plan

_POLL = 0.02  # seconds between disconnect checks during long waits


class ClientGone(Exception):
    """The client closed the connection before the answer was complete."""


class RunnerDied(Exception):
    """The model's runner died (an input killed it, `EmulatorSettings.crash_on`) while
    this generation ran on it: Ollama's runner is one process, and every request it
    was answering fails with it."""


def client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def pause(request: web.BaseRequest, seconds: float) -> None:
    """Sleep `seconds`, raising ClientGone as soon as the client disconnects."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        if client_gone(request):
            raise ClientGone
        left = end - loop.time()
        if left <= 0:
            return
        await asyncio.sleep(min(left, _POLL))


async def wait_forever(request: web.BaseRequest) -> None:
    """Never return; raise ClientGone once the client leaves (hang / stall faults)."""
    while True:
        await pause(request, 3600.0)


@dataclass
class Piece:
    """One streamed step of a completion."""

    thinking: str = ""
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # api.Logprob entries for the piece's token, when the request asked for them.
    logprobs: list[dict[str, Any]] = field(default_factory=list)


OnPiece = Callable[[Piece], Awaitable[None]]
OnDone = Callable[[dict[str, int]], Awaitable[None]]


class Generation:
    """One inference request's life: load, prompt evaluation, paced tokens, metrics."""

    def __init__(
        self,
        state: EmulatorState,
        request: web.BaseRequest,
        spec: ModelSpec,
        plan: Plan,
        keep_alive: float | None,
        started: float,
    ) -> None:
        self.state = state
        self.request = request
        self.spec = spec
        self.plan = plan
        self.keep_alive = keep_alive
        self.started = started  # time.monotonic() when the handler began
        self.load_ns: int | None = None  # set once load() has run
        self.deaths = state.runner_deaths[spec.name]  # the runner's deaths before this

    async def pause(self, seconds: float) -> None:
        """`pause`, raising RunnerDied once the runner this generation runs on dies.
        No wait at all still gives the loop a turn: tokens without a delay between
        them (a benchmark's backend) would otherwise hold it for the whole answer."""
        if seconds <= 0:
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while True:
            if self.state.runner_deaths[self.spec.name] != self.deaths:
                raise RunnerDied
            left = end - loop.time()
            await pause(self.request, min(max(left, 0), _POLL))
            if left <= _POLL:
                return

    async def load(self) -> int:
        """Wait for the model like the scheduler would; returns the load time in ns.

        Handlers call this before deciding on load-only or error answers; run() then
        reuses the figure instead of loading twice."""
        if self.load_ns is not None:
            return self.load_ns
        settings = self.state.settings
        cold = not self.state.is_loaded(self.spec)
        if cold and settings.load_seconds > 0:
            await pause(self.request, settings.load_seconds)
        self.state.touch(self.spec, self.keep_alive)
        if settings.frozen_clock:
            extra = int(settings.load_seconds * 1e9) if cold else 0
            self.load_ns = FROZEN_WARM_LOAD_NS + extra
        else:
            self.load_ns = int((time.monotonic() - self.started) * 1e9)
        return self.load_ns

    async def run(self, on_piece: OnPiece, on_done: OnDone) -> bool:
        """Emit the plan; True if it completed, False if the client left first;
        RunnerDied when the runner died under it."""
        state, settings, plan = self.state, self.state.settings, self.plan
        state.active_streams += 1
        try:
            load_ns = await self.load()
            t_prompt = time.monotonic()
            slowdown = settings.slowdown(self.spec.parameter_count)
            prompt_delay = settings.prompt_delay(plan.prompt_tokens) * slowdown
            await self.pause(prompt_delay)
            t_eval = time.monotonic()
            delay = settings.token_delay() * slowdown
            for tok in plan.thinking:
                await self.pause(delay)
                await on_piece(Piece(thinking=tok))
            if plan.tool_calls:
                await self.pause(delay * plan.tool_tokens)
                await on_piece(Piece(tool_calls=plan.tool_calls))
            for tok in plan.content:
                await self.pause(delay)
                await on_piece(Piece(content=tok))
            if settings.frozen_clock:
                prompt_ns = int(prompt_delay * 1e9)
                eval_ns = int(delay * plan.eval_count * 1e9)
                total_ns = load_ns + prompt_ns + eval_ns + 250_000
            else:
                now = time.monotonic()
                prompt_ns = int((t_eval - t_prompt) * 1e9)
                eval_ns = int((now - t_eval) * 1e9)
                total_ns = int((now - self.started) * 1e9)
            self.state.touch(self.spec, self.keep_alive)
            await on_done(
                metrics(total_ns, load_ns, plan.prompt_tokens, prompt_ns, plan.eval_count, eval_ns)
            )
            state.completed += 1
            return True
        except (ClientGone, ConnectionError):
            state.note_cancel()
            return False
        except asyncio.CancelledError:
            state.note_cancel()
            raise
        finally:
            state.active_streams -= 1


def metrics(
    total: int, load: int, prompt_count: int, prompt_ns: int, eval_count: int, eval_ns: int
) -> dict[str, int]:
    """api.Metrics in field order; every field is omitempty, so zeros vanish."""
    out = {
        "total_duration": total,
        "load_duration": load,
        "prompt_eval_count": prompt_count,
        "prompt_eval_duration": prompt_ns,
        "eval_count": eval_count,
        "eval_duration": eval_ns,
    }
    return {k: v for k, v in out.items() if v}

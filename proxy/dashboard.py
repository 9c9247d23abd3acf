"""The status page: `GET /api/autoroute/dashboard` (one HTML page, its script and style
inline, nothing fetched from elsewhere) and `GET /api/autoroute/dashboard.json`, the
data it refreshes itself from.

The data is read from what the proxy already holds: each backend's circuit, models and
`/api/ps` entries (`BackendState`), each backend's memory and warm set as
`GET /api/autoroute/status` shows them (`Memory.status`), the last minutes of traffic
and `auto`'s choices (`Metrics.recent`, see `dashboard_series`), the selector's state
(`AutoRouter.status`) and the usage sinks' counters (`UsagePipeline.counters`).
Nothing here runs on the request path of other routes.

With API keys on, both routes are for admin keys only, sent as `Authorization: Bearer`
like every key. A key in the URL (`?key=`) is not accepted: URLs are kept in browser
history, in the logs of whatever stands in front of the proxy, and in screenshots and
shared links, and an admin key can pull and delete models. The page carries its first
data inline, so `curl -H 'Authorization: Bearer ...'` into a file gives a snapshot to
open anywhere; a browser extension that adds the header gives the live page.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from proxy.auto_routes import LEGEND
from proxy.memory import used_bytes
from proxy.protocol import JSON

if TYPE_CHECKING:
    from proxy.auto import AutoRouter
    from proxy.backends import BackendPool, BackendState
    from proxy.dashboard_series import Recent
    from proxy.metrics import Metrics
    from proxy.usage import UsagePipeline

PAGE_PATH = "/api/autoroute/dashboard"
DATA_PATH = PAGE_PATH + ".json"
# Where the page's first data goes (inside a `<script type="application/json">`).
_DATA_MARK = b"__DASHBOARD_DATA__"
_PS_FIELDS = ("size", "size_vram", "context_length", "expires_at")
# What each reason means, as explain's legend says it (without its "why this model" lead).
_REASONS = LEGEND["X-Autoroute-Reason"].partition("): ")[2] or LEGEND["X-Autoroute-Reason"]


def _template() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy, which allows exactly its own inline
    script and style (by hash) and requests to the proxy itself."""
    page = resources.files("proxy").joinpath("dashboard.html").read_bytes()

    def digest(tag: bytes) -> str:
        match = re.search(rb"<" + tag + rb">(.*?)</" + tag + rb">", page, re.S)
        assert match is not None, f"dashboard.html has no <{tag.decode()}>"
        return "'sha256-" + base64.b64encode(hashlib.sha256(match[1]).digest()).decode() + "'"

    policy = (
        f"default-src 'none'; script-src {digest(b'script')}; style-src {digest(b'style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return page, policy


class Dashboard:
    """Its routes are admin-only in the route table (`proxy.routes`): with API keys on,
    `Access.admit` refuses any other key before these handlers run."""

    def __init__(
        self,
        backends: BackendPool,
        auto: AutoRouter,
        usage: UsagePipeline,
        metrics: Metrics,
        recent: Recent,
    ) -> None:
        self.backends = backends
        self.auto = auto
        self.usage = usage
        self.metrics = metrics
        self.recent = recent
        self.page, self.policy = _template()

    async def html(self, request: web.Request) -> web.Response:
        # `<` escaped: the data cannot end the script element it sits in.
        data = orjson.dumps(self.snapshot()).replace(b"<", b"\\u003c")
        return web.Response(
            body=self.page.replace(_DATA_MARK, data, 1),
            headers={
                "Content-Type": "text/html; charset=utf-8",
                "Content-Security-Policy": self.policy,
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def data(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(self.snapshot()),
            headers={"Content-Type": JSON, "Cache-Control": "no-store"},
        )

    def snapshot(self) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        recent = self.recent.snapshot()
        status = self.auto.status()
        artifact = status["artifact"]
        return {
            "time": time.time(),
            # Requests being handled, this one (the page's own) left out.
            "in_flight": max(self.metrics.in_flight - 1, 0),
            "backends": [_backend(s, now) for s in self.backends.states],
            "memory": self.auto.memory.status(),
            "bucket_seconds": recent["bucket_seconds"],
            "series": recent["series"],
            "auto": {
                "mode": status["mode"],
                "artifact_version": artifact["version"] if artifact else None,
                "artifact_error": status["artifact_error"],
                "default_profile": status["default_profile"],
                "profiles": status["profiles"],
                "candidates": status["candidates"],
                "decisions": status["decisions"],
                "choices": recent["choices"],
                "latest": recent["latest"],
                "reasons": _REASONS,
            },
            "usage": self.usage.counters(),
        }


def _backend(state: BackendState, now: float) -> dict[str, Any]:
    circuit = state.breaker.state(now)
    loaded = [
        {"model": m.get("model") or m.get("name"), **{f: m.get(f) for f in _PS_FIELDS}}
        for m in state.running
    ]
    return {
        "name": state.label,
        "url": state.config.shown_url,
        "circuit": circuit,
        "healthy": circuit != "open" and not state.last_error,
        "failures": state.breaker.failures,
        "in_flight": state.in_flight,
        "models": len(state.models) if state.models is not None else None,
        # Listed, but answered `auto` it has no such model (`BackendPool.lost`): out of
        # its list until a pull lists them anew.
        "lost": sorted(state.lost),
        "loaded": loaded,
        "vram": used_bytes(state),
        "error": state.last_error or None,
    }

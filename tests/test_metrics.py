"""GET /metrics: Prometheus' format, one registry per proxy, values after a known
sequence of requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.config_serving import Health
from proxy.routes import label_of
from proxy.usage import event as usage_events
from tests.support import Emulator, Proxy, ServerThread, file_usage
from tests.usage_services import wait_for

MODEL = "llama3.1:8b"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


async def scrape(
    http: aiohttp.ClientSession,
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with http.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return samples(await resp.text())


async def scraped_once_written(
    http: aiohttp.ClientSession, events: int
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The metrics once the file sink has written `events` usage events."""

    async def written() -> bool:
        m = await scrape(http)
        return value(m, "autoroute_usage_events_total", sink="file", outcome="written") == events

    await wait_for(written, what=f"{events} usage events written")
    return await scrape(http)


@pytest.fixture
def metered(servers: ServerThread, own_emulator: Emulator, tmp_path: Path) -> Iterator[Proxy]:
    usage = file_usage(tmp_path)
    prx = Proxy(
        servers,
        [own_emulator.url],
        usage=usage,
        health=Health(failure_threshold=2, open_seconds=600, retries=0),
    )
    yield prx
    prx.stop()


async def test_metrics_after_a_known_sequence_of_requests(
    metered: Proxy, own_emulator: Emulator, own_proxy: Proxy
) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession(metered.url) as http:
        for _ in range(2):
            async with http.post("/api/chat", json=chat) as resp:
                assert resp.status == 200
                await resp.read()
        auto = {"model": "auto", "prompt": "write a sort in python", "stream": False}
        async with http.post("/api/generate", json=auto) as resp:
            assert resp.status == 200
            chosen = resp.headers["X-Autoroute-Model"]
            reason = resp.headers["X-Autoroute-Reason"]
        unknown = {"model": "no-such-model:1b", "prompt": "x"}
        async with http.post("/api/generate", json=unknown) as resp:
            assert resp.status == 404
        async with http.get("/api/tags") as resp:
            assert resp.status == 200
        async with http.get("/some/random/path/123") as resp:
            assert resp.status == 404
        m = await scraped_once_written(http, 4)

    req = "autoroute_requests_total"
    assert value(m, req, route="/api/chat", status="200", model=MODEL) == 2
    assert value(m, req, route="/api/generate", status="200", model=chosen) == 1
    # A model no backend lists is counted, under a bounded label.
    assert value(m, req, route="/api/generate", status="404", model="other") == 1
    assert value(m, req, route="/api/tags", status="200", model="") == 1
    assert value(m, req, route="other", status="404", model="") == 1
    assert value(m, "autoroute_time_to_first_chunk_seconds_count", route="/api/chat") == 2
    assert value(m, "autoroute_request_duration_seconds_count", route="/api/chat") == 2
    assert value(m, "autoroute_request_duration_seconds_count", route="/api/generate") == 2
    assert value(m, "autoroute_decision_seconds_count") == 1
    assert value(m, "autoroute_decision_seconds_sum") > 0
    assert value(m, "autoroute_selections_total", model=chosen, reason=reason) == 1
    # The scrape itself is the one request in flight.
    assert value(m, "autoroute_requests_in_flight") == 1
    backend = own_emulator.url
    assert value(m, "autoroute_backend_healthy", backend=backend) == 1
    assert value(m, "autoroute_backend_in_flight", backend=backend) == 0
    assert value(m, "autoroute_backend_circuit_state", backend=backend, state="closed") == 1
    assert value(m, "autoroute_backend_circuit_state", backend=backend, state="open") == 0
    usage = "autoroute_usage_events_total"
    assert value(m, usage, sink="file", outcome="queued") == 4
    assert value(m, usage, sink="file", outcome="dropped") == 0
    assert value(m, usage, sink="file", outcome="spilled") == 0
    assert value(m, "autoroute_usage_queue_length") == 0

    # Another proxy in the same process has its own registry: none of this traffic.
    async with aiohttp.ClientSession(own_proxy.url) as http:
        other = await scrape(http)
    assert value(other, req, route="/api/chat", status="200", model=MODEL) == 0


async def test_circuit_breaker_state_and_health_follow_a_dead_backend(
    metered: Proxy, own_emulator: Emulator
) -> None:
    own_emulator.stop()
    body = {"model": MODEL, "prompt": "x", "stream": False}
    async with aiohttp.ClientSession(metered.url) as http:
        statuses = []
        for _ in range(3):
            async with http.post("/api/generate", json=body) as resp:
                statuses.append(resp.status)
        m = await scrape(http)
    assert statuses == [503, 503, 503]
    backend = own_emulator.url
    assert value(m, "autoroute_backend_circuit_state", backend=backend, state="open") == 1
    assert value(m, "autoroute_backend_healthy", backend=backend) == 0
    # Two refused requests open the circuit; the third has the backend checked again
    # (it may have come back since), which is refused too.
    assert value(m, "autoroute_backend_consecutive_failures", backend=backend) == 3
    assert (
        value(m, "autoroute_requests_total", route="/api/generate", status="503", model=MODEL) == 3
    )


def test_route_labels_are_bounded() -> None:
    assert label_of("/api/chat") == "/api/chat"
    assert label_of("/api/blobs/sha256:abc") == "/api/blobs/{digest}"
    assert label_of("/v1/models/qwen2.5:7b") == "/v1/models/{model}"
    assert label_of("/api/autoroute/experiments/x") == "/api/autoroute/experiments/{name}"
    assert label_of("/x" * 50) == "other"


async def test_usage_events_that_could_not_be_built_are_counted(
    metered: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event whose building fails (a bug, logged) is counted `invalid` in the stats;
    /metrics said nothing of it, so no alert could see events going missing."""
    complete = usage_events.complete

    def failing(c: usage_events.Captured, log_prompts: bool) -> Any:
        if c.outcome.decided.prompt == ["bad"]:
            raise RuntimeError("a bug building the event")
        return complete(c, log_prompts)

    monkeypatch.setattr(usage_events, "complete", failing)
    async with aiohttp.ClientSession(metered.url) as http:
        for prompt in ("bad", "good"):
            body = {"model": MODEL, "prompt": prompt, "stream": False}
            async with http.post("/api/generate", json=body) as resp:
                assert resp.status == 200
        m = await scraped_once_written(http, 1)  # the good event
    assert m[("autoroute_usage_invalid_total", frozenset())] == 1
    assert value(m, "autoroute_usage_events_total", sink="file", outcome="queued") == 1


async def test_spellings_of_one_model_share_one_label(metered: Proxy) -> None:
    """Ollama reads a model name case-insensitively, with or without its registry and
    namespace: each spelling a client sends is the same model, and one series. Labelled
    as sent, a client could make a new series per request (every case mix of a name)."""
    spellings = ("LLAMA3.1:8B", "Llama3.1:8b", "registry.ollama.ai/library/llama3.1:8b")
    async with aiohttp.ClientSession(metered.url) as http:
        for name in spellings:
            body = {"model": name, "prompt": "hi", "stream": False}
            async with http.post("/api/generate", json=body) as resp:
                assert resp.status == 200
        m = await scrape(http)
    req = "autoroute_requests_total"
    assert value(m, req, route="/api/generate", status="200", model=MODEL) == 3
    models = {dict(labels).get("model") for name, labels in m if name == req}
    assert not models & set(spellings)

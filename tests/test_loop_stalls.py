"""One request's CPU-heavy work never holds a server's event loop: another client's
request, asked while that work is under way, is answered before the heavy request's
answer begins. Ollama's server keeps answering `/api/version` while its runner embeds
(the runner is another process); the emulator stands in for it, health checks
included, and the demo serves it on the proxy's own loop.

Each server here runs on an event loop of its own thread (`ServerThread`), the client
on the test's: the order in which answers reach the client is the order in which the
server wrote them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from proxy.emulator import EmulatorSettings
from tests.support import Emulator, ServerThread


@pytest.fixture
def lone_emulator() -> Iterator[Emulator]:
    """An emulator alone on its loop (frozen clock: no emulated prompt time, so its
    answer follows its work at once)."""
    thread = ServerThread()
    emu = Emulator(thread, EmulatorSettings(frozen_clock=True))
    yield emu
    emu.stop()
    thread.close()


async def _loaded(session: aiohttp.ClientSession, url: str, model: str) -> bool:
    async with session.get(url + "/api/ps") as r:
        listed = (await r.json())["models"]
    return any(m["name"].startswith(model) for m in listed)


async def test_an_embedding_of_many_inputs_leaves_the_emulator_answering(
    lone_emulator: Emulator,
) -> None:
    # Thousands of vectors: seconds of CPU. The model is loaded (`/api/ps` lists it)
    # right before the vectors are made, so an `/api/ps` that lists it was answered
    # while they were being made or after; `/api/version` asked then must come back
    # before the embedding's answer starts.
    url, model = lone_emulator.url, "nomic-embed-text"
    body = orjson.dumps({"model": model, "input": [f"text {i}" for i in range(3000)]})
    order: list[str] = []

    async with aiohttp.ClientSession() as big, aiohttp.ClientSession() as small:

        async def embed() -> int:
            async with big.post(url + "/api/embed", data=body) as r:
                order.append("embed answer begins")
                return len((await r.json())["embeddings"])

        embedding = asyncio.create_task(embed())
        while not await _loaded(small, url, model):
            assert not embedding.done()
        async with small.get(url + "/api/version") as r:
            assert r.status == 200
            await r.read()
        order.append("version answered")
        assert await embedding == 3000
    assert order == ["version answered", "embed answer begins"]

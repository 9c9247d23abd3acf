"""A client that leaves cancels the upstream request: the GPU stops generating."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson

from tests.support import Emulator, Proxy

LONG = {"model": "qwen2.5:7b", "prompt": "Tell me everything.", "options": {"num_predict": 100_000}}


async def wait_for(predicate: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_streaming_client_disconnect_cancels_upstream(
    own_emulator: Emulator, own_proxy: Proxy
) -> None:
    state = own_emulator.state
    cancelled, completed = state.cancelled, state.completed
    session = aiohttp.ClientSession()
    resp = await session.post(own_proxy.url + "/api/generate", json=LONG)
    first = await resp.content.readline()
    assert orjson.loads(first)["done"] is False
    left_at = time.monotonic()
    resp.close()  # drop the connection mid-stream
    await session.close()
    # 100k tokens at 1 ms each would take minutes: a cancel seen now can only come from
    # the proxy aborting the upstream request when the client left.
    assert await wait_for(lambda: state.cancelled > cancelled)
    assert state.completed == completed
    assert state.cancel_times[-1] >= left_at
    assert state.active_streams == 0


async def test_non_streaming_client_disconnect_cancels_upstream(
    own_emulator: Emulator, own_proxy: Proxy
) -> None:
    state = own_emulator.state
    cancelled, completed = state.cancelled, state.completed
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(
            session.post(
                own_proxy.url + "/api/chat",
                json={
                    "model": "qwen2.5:7b",
                    "stream": False,
                    "options": {"num_predict": 100_000},
                    "messages": [{"role": "user", "content": "Tell me everything."}],
                },
            )
        )
        assert await wait_for(lambda: state.active_streams > 0)
        task.cancel()
    assert await wait_for(lambda: state.cancelled > cancelled)
    assert state.completed == completed


async def test_proxy_serves_after_many_disconnects(
    own_emulator: Emulator, own_proxy: Proxy
) -> None:
    state = own_emulator.state
    cancelled = state.cancelled
    for _ in range(20):
        async with aiohttp.ClientSession() as session:
            resp = await session.post(own_proxy.url + "/api/generate", json=LONG)
            await resp.content.readline()
            resp.close()
    assert await wait_for(lambda: state.cancelled >= cancelled + 20)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            own_proxy.url + "/api/generate",
            json={"model": "qwen2.5:7b", "prompt": "hi", "stream": False},
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["done"] is True

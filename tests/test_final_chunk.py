from __future__ import annotations

import asyncio
import threading

import aiohttp

from proxy import final_chunk
from proxy.app import APP_KEY
from tests.support import Emulator, Proxy


def test_ollama_final_line() -> None:
    tail = (
        b'5b\r\n{"model":"m","response":" x","done":false}\n\r\n'
        b'c0\r\n{"model":"m","done":true,"done_reason":"length","context":[1,2],'
        b'"total_duration":900,"load_duration":5,"prompt_eval_count":12,'
        b'"prompt_eval_duration":40,"eval_count":20,"eval_duration":800}\n\r\n0\r\n\r\n'
    )
    assert final_chunk.parse(tail) == {
        "done_reason": "length",
        "total_duration": 900,
        "load_duration": 5,
        "prompt_eval_count": 12,
        "prompt_eval_duration": 40,
        "eval_count": 20,
        "eval_duration": 800,
    }


def test_openai_usage_and_finish_reason() -> None:
    tail = (
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,'
        b'"total_tokens":10}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert final_chunk.parse(tail) == {
        "done_reason": "stop",
        "prompt_eval_count": 7,
        "eval_count": 3,
    }


def test_nothing_to_read_gives_nothing() -> None:
    assert final_chunk.parse(b'{"error":"boom"}\n') == {}


async def test_relay_records_the_final_chunk(emulator: Emulator, proxy: Proxy) -> None:
    seen = []
    server = proxy.app[APP_KEY]
    original = server.access.record
    server.access.enabled = True
    recorded = threading.Event()

    def record(fields: dict[str, object]) -> None:
        seen.append(fields)
        recorded.set()

    server.access.record = record  # type: ignore[method-assign]
    try:
        async with aiohttp.ClientSession() as session:
            body = {"model": "qwen2.5:7b", "prompt": "hi", "options": {"num_predict": 7}}
            async with session.post(proxy.url + "/api/generate", json=body) as resp:
                lines = (await resp.read()).splitlines()
        # The record is written when the handler ends, which may be after the client
        # has read the last byte (the relay writes straight to the transport).
        await asyncio.to_thread(recorded.wait, 30)
    finally:
        server.access.record = original  # type: ignore[method-assign]
        server.access.enabled = False
    assert len(lines) == 8
    (fields,) = [f for f in seen if f["path"] == "/api/generate"]
    assert fields["eval_count"] == 7 and fields["done_reason"] == "length"
    assert 0 < fields["ttfc_ms"] <= fields["ms"]

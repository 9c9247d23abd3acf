from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import aiohttp
import ollama
import pytest

from proxy import final_chunk, protocol
from proxy.app import APP_KEY
from proxy.emulator import EmulatorSettings
from tests.support import Emulator, Proxy, ServerThread


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


@pytest.mark.parametrize(
    "value", [0, 12, (1 << 63) - 1, 1 << 63, -1, 12.0, 2.5, 1e3, True, "12", None]
)
def test_counts_read_from_bytes_as_from_objects(value: object) -> None:
    """The final chunk's byte reader and `protocol.count` (what reads a decoded answer)
    agree on what a count is."""
    body = {"done": True, "eval_count": value, "eval_duration": 800}
    tail = json.dumps(body, separators=(",", ":")).encode() + b"\n"
    got = final_chunk.parse(tail).get("eval_count")
    assert got == protocol.count(value)


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


def test_ollama_counts_win_over_openai_ones_wherever_they_stand() -> None:
    """Ollama's counters, the last of each, win; an OpenAI count, the first of each,
    stands in only for one Ollama's do not give, wherever in the tail either comes."""
    tail = (
        b'data: {"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'
        b'{"eval_count":5,"eval_duration":1}\n'
        b'data: {"usage":{"prompt_tokens":8,"completion_tokens":4}}\n\n'
        b'{"eval_count":6}\n'
    )
    parsed = final_chunk.parse(tail)
    assert parsed == {"eval_count": 6, "eval_duration": 1, "prompt_eval_count": 7}
    assert list(parsed) == ["eval_count", "eval_duration", "prompt_eval_count"]


def test_nothing_to_read_gives_nothing() -> None:
    assert final_chunk.parse(b'{"error":"boom"}\n') == {}


def test_a_counter_that_is_no_whole_int64_is_absent() -> None:
    """Ollama's counters are Go ints (int64) and durations: a fraction, an exponent, a
    sign or a count beyond int64 (a broken server's) is not one, and read as absent
    rather than as its first digits or as a number no sink can store."""
    tail = (
        b'{"done":true,"done_reason":"stop","total_duration":1.5e9,"load_duration":-5,'
        b'"prompt_eval_count":2.5,"prompt_eval_duration":' + b"9" * 30 + b","
        b'"eval_count":9223372036854775808,"eval_duration":9223372036854775807}\n'
        b'data: {"usage":{"prompt_tokens":7.5,"completion_tokens":1e3}}\n\n'
    )
    assert final_chunk.parse(tail) == {"done_reason": "stop", "eval_duration": (1 << 63) - 1}


def test_a_reason_of_no_known_length_is_absent() -> None:
    """Every reason Ollama, OpenAI and Anthropic give is a short word ("stop",
    "tool_calls", "stop_sequence"): a broken server's megabyte of letters is none, and
    is not carried into every usage event and log line of the request."""
    long = b"x" * 1_000_000
    assert final_chunk.parse(b'{"done":true,"done_reason":"' + long + b'"}\n') == {}
    assert final_chunk.parse(b'{"done":true,"done_reason":"stop_sequence"}\n') == {
        "done_reason": "stop_sequence"
    }


class Recorded:
    """The access-log records the proxy writes while `with` lasts."""

    def __init__(self, proxy: Proxy) -> None:
        self.server = proxy.app[APP_KEY]
        self.seen: list[dict[str, Any]] = []
        self.written = threading.Event()

    def __enter__(self) -> Recorded:
        self.original = self.server.access.record
        self.server.access.enabled = True

        def record(fields: dict[str, Any]) -> None:
            self.seen.append(fields)
            self.written.set()

        self.server.access.record = record  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.access.record = self.original  # type: ignore[method-assign]
        self.server.access.enabled = False

    async def of(self, path: str) -> dict[str, Any]:
        # The record is written when the handler ends, which may be after the client
        # has read the last byte (the relay writes straight to the transport).
        await asyncio.to_thread(self.written.wait, 30)
        (fields,) = [f for f in self.seen if f["path"] == path]
        return fields


async def test_relay_records_the_final_chunk(emulator: Emulator, proxy: Proxy) -> None:
    with Recorded(proxy) as recorded:
        async with aiohttp.ClientSession() as session:
            body = {"model": "qwen2.5:7b", "prompt": "hi", "options": {"num_predict": 7}}
            async with session.post(proxy.url + "/api/generate", json=body) as resp:
                lines = (await resp.read()).splitlines()
        fields = await recorded.of("/api/generate")
    assert len(lines) == 8
    assert fields["eval_count"] == 7 and fields["done_reason"] == "length"
    assert 0 < fields["ttfc_ms"] <= fields["ms"]


async def test_counters_before_a_long_logprobs_list_are_recorded(
    servers: ServerThread,
) -> None:
    """A whole /api/generate answer ends with its logprobs, after the counters
    (api.GenerateResponse's field order): asked for many tokens with their top
    alternatives, the list fills far more than the last reads the relay keeps."""
    quick = Emulator(servers, EmulatorSettings(frozen_clock=True, chunk_delay_ms=0.0))
    prx = Proxy(servers, [quick.url])
    try:
        with Recorded(prx) as recorded:
            answer = await ollama.AsyncClient(host=prx.url).generate(
                model="qwen2.5:7b",
                prompt="hi",
                options={"num_predict": 1500},
                logprobs=True,
                top_logprobs=20,
            )
            fields = await recorded.of("/api/generate")
    finally:
        prx.stop()
        quick.stop()
    assert answer.logprobs is not None and len(answer.logprobs) == 1500
    assert fields["eval_count"] == 1500 and fields["done_reason"] == "length"
    assert fields["prompt_eval_count"] == answer.prompt_eval_count

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
    """Ollama's counters, the last of each, win; an OpenAI count, the last of each,
    stands in only for one Ollama's do not give, wherever in the tail either comes."""
    tail = (
        b'data: {"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'
        b'{"eval_count":5,"eval_duration":1}\n'
        b'data: {"usage":{"prompt_tokens":8,"completion_tokens":4}}\n\n'
        b'{"eval_count":6}\n'
    )
    parsed = final_chunk.parse(tail)
    assert parsed == {"eval_count": 6, "eval_duration": 1, "prompt_eval_count": 8}
    assert list(parsed) == ["eval_count", "eval_duration", "prompt_eval_count"]


def test_responses_and_messages_counts_the_last_of_each() -> None:
    """The Responses and Anthropic shapes name their counts `input_tokens` and
    `output_tokens`, and a stream's earlier events count less than the whole answer
    (Anthropic's `message_start` no output; its `message_delta` everything)."""
    tail = (
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
        b'{"input_tokens":12,"output_tokens":0}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
        b'"end_turn"},"usage":{"input_tokens":12,"output_tokens":5}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert final_chunk.parse(tail) == {
        "done_reason": "end_turn",
        "prompt_eval_count": 12,
        "eval_count": 5,
    }
    tail = (
        b'data: {"response":{"usage":{"input_tokens":9,"output_tokens":4,"total_tokens":13,'
        b'"input_tokens_details":{"cached_tokens":0},'
        b'"output_tokens_details":{"reasoning_tokens":0}}},"type":"response.completed"}\n\n'
    )
    assert final_chunk.parse(tail) == {"prompt_eval_count": 9, "eval_count": 4}


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


# A successful stream's last events on each SSE shape, as Ollama writes them.
_SSE_ENDINGS = {
    "/v1/chat/completions": b'data: {"choices":[{"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
    "/v1/completions": b'data: {"choices":[{"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
    "/v1/responses": b'event: response.completed\ndata: {"response":{"status":"completed"},'
    b'"sequence_number":9,"type":"response.completed"}\n\n',
    "/v1/messages": b'event: message_delta\ndata: {"type":"message_delta"}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
}
_BEGUN = b'data: {"choices":[{"delta":{"content":"a\\r\\nb"}}]}\n\n'


def _chunked(body: bytes, cut: int) -> bytes:
    """`body` chunk-framed as Go's net/http frames it, a chunk boundary at `cut`."""
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (body[:cut], body[cut:]) if p) + (
        b"0\r\n\r\n"
    )


@pytest.mark.parametrize("path", sorted(_SSE_ENDINGS))
def test_an_sse_stream_that_ends_as_its_shape_does_on_success_failed_nowhere(path: str) -> None:
    """A stream on an SSE shape that ends as Ollama ends a whole answer there is no
    error, wherever a chunk boundary splits its end (Go's buffered writer cuts a long
    event where its buffer fills); one that stops short of that end is."""
    body = _BEGUN + _SSE_ENDINGS[path]
    for cut in range(len(body) + 1):
        assert final_chunk.sse_error(_chunked(body, cut), path, chunked=True) is None
        assert final_chunk.sse_error(_chunked(_BEGUN, cut), path, True) == final_chunk.UNFINISHED
    assert final_chunk.sse_error(body, path, chunked=False) is None
    assert final_chunk.sse_error(_BEGUN, path, chunked=False) == final_chunk.UNFINISHED
    # The tail the relay keeps (its last two reads) may begin anywhere before the
    # terminal chunk.
    framed = _chunked(body, len(_BEGUN) // 2)
    for start in range(len(framed) - len(b"\r\n0\r\n\r\n")):
        assert final_chunk.sse_error(framed[start:], path, chunked=True) is None
    # A chunk of data that looks like framing (a line break and a size) is data.
    odd = b'data: {"x":"\r\n3\r\n"}\n\n' + _SSE_ENDINGS[path]
    assert final_chunk.sse_error(_chunked(odd, 20), path, chunked=True) is None
    assert final_chunk.sse_error(_chunked(odd[:-4], 20), path, True) == final_chunk.UNFINISHED


@pytest.mark.parametrize(
    ("path", "event"),
    [
        (
            "/v1/chat/completions",
            b'data: {"error":{"message":"boom","type":"api_error","param":null,"code":null}}',
        ),
        (
            "/v1/messages",
            b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"boom"}}',
        ),
        (
            "/v1/responses",
            b'event: response.failed\ndata: {"response":{"error":{"code":"api_error",'
            b'"message":"boom"},"status":"failed"},"sequence_number":3,"type":"response.failed"}',
        ),
    ],
)
def test_an_sse_stream_that_ends_with_an_error_event_records_its_message(
    path: str, event: bytes
) -> None:
    """The error event a stream ends with (a proxy's mid-stream error, Anthropic's
    `error`, the Responses API's `response.failed`) says why the answer failed."""
    body = _BEGUN + event + b"\n\n"
    assert final_chunk.sse_error(_chunked(body, 7), path, chunked=True) == "boom"


def test_a_stream_on_a_path_with_no_known_end_is_no_error() -> None:
    assert final_chunk.sse_error(_chunked(_BEGUN, 5), "/api/pull", chunked=True) is None


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

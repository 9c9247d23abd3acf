"""A stand-in cloud on 127.0.0.1 for the cloud fallback's tests: OpenAI chat
completions (`POST /v1/chat/completions`) and Anthropic messages (`POST /v1/messages`),
each checking its key as the real API does (401 in its own error shape) and streaming
in its own format. Token counts are deterministic: a prompt token per word sent, a
completion token per word answered.

Helpers only: no tests of their own."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

ANSWER_WORDS = ("Rayleigh ", "scattering ", "makes ", "the ", "sky ", "blue.")
ANSWER = "".join(ANSWER_WORDS)
# With tools (and no tool's answer last), a call of the first tool, its arguments in
# pieces; with a response_format, JSON.
CALL_ID = "call_standin"
CALL_PIECES = ('{"city": ', '"Paris"}')
JSON_WORDS = ('{"colour": ', '"blue"}')
OPENAI_KEY = "sk-standin-openai"
ANTHROPIC_KEY = "sk-ant-standin"


@dataclass
class Seen:
    """What the stand-in received, for tests to check (the cloud was used, or not)."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    # Faults: seconds between words, and the connection dropped after this many words.
    delay: float = 0.0
    cut_after: int | None = None
    # A streamed answer's words sent this many times over: a long answer.
    repeat: int = 1
    # Answer with the last message's own words (OpenAI), so that the answers of requests
    # in flight at once tell apart whose each is.
    echo: bool = False
    # Set when the proxy closed a stream before its end (its client left).
    gone: threading.Event = field(default_factory=threading.Event)


SEEN = web.AppKey("seen", Seen)


def prompt_tokens(body: dict[str, Any]) -> int:
    words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", ()))
    return words + len(str(body.get("system", "")).split())


def _sse(doc: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(doc) + b"\n\n"


async def _word(
    request: web.Request, response: web.StreamResponse, seen: Seen, index: int, event: bytes
) -> bool:
    """Send one word's event, with the faults set; False when the stream is over."""
    if seen.cut_after is not None and index >= seen.cut_after:
        if request.transport is not None:
            request.transport.abort()
        return False
    try:
        await asyncio.sleep(seen.delay)
        await response.write(event)
    except (ConnectionError, asyncio.CancelledError):
        seen.gone.set()
        raise
    return True


async def _openai(request: web.Request) -> web.StreamResponse:
    seen: Seen = request.app[SEEN]
    if request.headers.get("Authorization") != f"Bearer {OPENAI_KEY}":
        error = {
            "message": "Incorrect API key provided",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
        return web.json_response({"error": error}, status=401)
    body = await request.json()
    seen.paths.append(request.path)
    seen.bodies.append(body)
    prompt, completion = prompt_tokens(body), len(ANSWER_WORDS)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    base = {"id": "chatcmpl-standin", "created": 1, "model": body["model"]}
    messages = body.get("messages") or [{}]
    if body.get("tools") and messages[-1].get("role") != "tool":
        return await _openai_call(request, body, base, prompt)
    words = JSON_WORDS if body.get("response_format") else ANSWER_WORDS * seen.repeat
    if seen.echo:
        words = tuple(f"{w} " for w in str(messages[-1].get("content", "")).split())
    completion = len(words)
    usage["completion_tokens"], usage["total_tokens"] = completion, prompt + completion
    if not body.get("stream"):
        message = {"role": "assistant", "content": "".join(words)}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return web.json_response({**base, "choices": [choice], "usage": usage})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i, word in enumerate(words):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        chunk = {**base, "object": "chat.completion.chunk", "choices": [choice]}
        if not await _word(request, response, seen, i, _sse(chunk)):
            return response
    end = {"index": 0, "delta": {}, "finish_reason": "stop"}
    await response.write(_sse({**base, "object": "chat.completion.chunk", "choices": [end]}))
    if (body.get("stream_options") or {}).get("include_usage"):
        chunk = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        await response.write(_sse(chunk))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _openai_call(
    request: web.Request, body: dict[str, Any], base: dict[str, Any], prompt: int
) -> web.StreamResponse:
    """A streamed call of the first tool, as OpenAI streams one."""
    name = body["tools"][0]["function"]["name"]
    first = {"index": 0, "id": CALL_ID, "type": "function"}
    pieces = [{**first, "function": {"name": name, "arguments": ""}}] + [
        {"index": 0, "function": {"arguments": a}} for a in CALL_PIECES
    ]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i, piece in enumerate(pieces):
        delta: dict[str, Any] = {"tool_calls": [piece]}
        if i == 0:
            delta = {"role": "assistant", "content": None, **delta}
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        await response.write(_sse({**base, "object": "chat.completion.chunk", "choices": [choice]}))
    end = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    await response.write(_sse({**base, "object": "chat.completion.chunk", "choices": [end]}))
    usage = {"prompt_tokens": prompt, "completion_tokens": 3, "total_tokens": prompt + 3}
    await response.write(
        _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    )
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _anthropic(request: web.Request) -> web.StreamResponse:
    seen: Seen = request.app[SEEN]
    if request.headers.get("x-api-key") != ANTHROPIC_KEY:
        error = {"type": "authentication_error", "message": "invalid x-api-key"}
        return web.json_response({"type": "error", "error": error}, status=401)
    body = await request.json()
    if "anthropic-version" not in request.headers or "max_tokens" not in body:
        error = {"type": "invalid_request_error", "message": "missing version or max_tokens"}
        return web.json_response({"type": "error", "error": error}, status=400)
    seen.paths.append(request.path)
    seen.bodies.append(body)
    prompt, completion = prompt_tokens(body), len(ANSWER_WORDS)
    assert body.get("stream") is True, "the proxy always streams"
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    message = {
        "id": "msg_standin",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": prompt, "output_tokens": 1},
    }
    await response.write(_sse({"type": "message_start", "message": message}, "message_start"))
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    await response.write(_sse(block, "content_block_start"))
    await response.write(_sse({"type": "ping"}, "ping"))
    for i, word in enumerate(ANSWER_WORDS):
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": word},
        }
        if not await _word(request, response, seen, i, _sse(delta, "content_block_delta")):
            return response
    await response.write(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": completion},
    }
    await response.write(_sse(end, "message_delta"))
    await response.write(_sse({"type": "message_stop"}, "message_stop"))
    await response.write_eof()
    return response


def create_app(seen: Seen) -> web.Application:
    app = web.Application()
    app[SEEN] = seen
    app.router.add_post("/v1/chat/completions", _openai)
    app.router.add_post("/v1/messages", _anthropic)
    return app

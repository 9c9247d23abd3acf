"""/v1/messages (the Anthropic Messages API), shaped like Ollama's anthropic/anthropic.go.

Ollama's middleware sets `relax_thinking`, so `thinking` on a model without the
capability is dropped instead of refused; max_tokens is mandatory and only caps output.
"""

from __future__ import annotations

import random
import time
from typing import Any

from aiohttp import web

from proxy import anthropic_messages
from proxy.errors import ANTHROPIC_TYPES
from proxy.go_types import BodyError
from proxy.protocol import SSE

from .engine import Piece
from .inference import Refusal, prepare_chat
from .native import ChatSink, LazyStream, run_chat
from .openai_routes import read_oa_body
from .state import EmulatorState, request_digest, state_of
from .wire import checked_off_loop, dumps, encoder_json, gin_json, stream_heads, with_heads


def anthropic_error(state: EmulatorState, status: int, message: str, key: str) -> dict[str, Any]:
    etype = ANTHROPIC_TYPES.get(status, "api_error")
    return {
        "type": "error",
        "error": {"type": etype, "message": message},
        "request_id": "req_" + _hex(state, key, "req"),
    }


def _hex(state: EmulatorState, key: str, salt: str) -> str:
    if state.settings.frozen_clock:
        return request_digest(salt, key)[:24]
    return f"{random.getrandbits(96):024x}"


_STOP = {"stop": "end_turn", "length": "max_tokens"}


class AnthropicSink(ChatSink):
    def __init__(self, request: web.Request, stream: bool, key: str) -> None:
        self.state = state_of(request)
        self.stream = stream
        self.keeps_text = not stream
        self.key = key
        self.msg_id = "msg_" + _hex(self.state, key, "msg")
        self.heads = stream_heads(request, stream)
        self.out = LazyStream(request, SSE, headers=self.heads)
        self.started = False
        self.block = -1
        self.block_kind = ""

    async def error(self, status: int, message: str) -> web.StreamResponse:
        body = anthropic_error(self.state, status, message, self.key)
        refused = with_heads(encoder_json(status, body), self.heads)
        return await self.out.refuse(refused) if self.stream else refused

    async def special(self, model: str, created_ns: int, reason: str) -> web.StreamResponse:
        return await self.done(model, created_ns, reason, {"content": ""}, {})

    async def _event(self, data: dict[str, Any]) -> None:
        await self.out.send(f"event: {data['type']}\ndata: ".encode() + dumps(data) + b"\n\n")

    async def _open(self, model: str, kind: str, block: dict[str, Any]) -> None:
        if not self.started:
            self.started = True
            await self._event(
                {
                    "type": "message_start",
                    "message": {
                        "id": self.msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "usage": {"input_tokens": 0, "output_tokens": 0},
                    },
                }
            )
        if self.block_kind != kind:
            await self._close()
            self.block += 1
            self.block_kind = kind
            await self._event(
                {"type": "content_block_start", "index": self.block, "content_block": block}
            )

    async def _close(self) -> None:
        if self.block_kind:
            await self._event({"type": "content_block_stop", "index": self.block})
            self.block_kind = ""

    async def piece(self, model: str, created_ns: int, piece: Piece) -> None:
        if not self.stream:
            return
        if piece.thinking:
            await self._open(model, "thinking", {"type": "thinking", "thinking": ""})
            await self._event(
                {
                    "type": "content_block_delta",
                    "index": self.block,
                    "delta": {"type": "thinking_delta", "thinking": piece.thinking},
                }
            )
        for call in piece.tool_calls:
            fn = call["function"]
            await self._open(
                model,
                "tool_use:" + call["id"],
                {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": {}},
            )
            await self._event(
                {
                    "type": "content_block_delta",
                    "index": self.block,
                    "delta": {
                        "type": "input_json_delta",
                        "partial_json": dumps(fn["arguments"]).decode(),
                    },
                }
            )
        if piece.content:
            await self._open(model, "text", {"type": "text", "text": ""})
            await self._event(
                {
                    "type": "content_block_delta",
                    "index": self.block,
                    "delta": {"type": "text_delta", "text": piece.content},
                }
            )

    async def done(
        self, model: str, created_ns: int, reason: str, message: dict[str, Any], m: dict[str, int]
    ) -> web.StreamResponse:
        calls = message.get("tool_calls") or []
        stop = "tool_use" if calls else _STOP.get(reason, reason)
        usage = {
            "input_tokens": m.get("prompt_eval_count", 0),
            "output_tokens": m.get("eval_count", 0),
        }
        if not self.stream:
            content: list[dict[str, Any]] = []
            if message.get("thinking"):
                content.append({"type": "thinking", "thinking": message["thinking"]})
            if message.get("content"):
                content.append({"type": "text", "text": message["content"]})
            content += [
                {
                    "type": "tool_use",
                    "id": c["id"],
                    "name": c["function"]["name"],
                    "input": c["function"]["arguments"],
                }
                for c in calls
            ]
            return encoder_json(
                200,
                {
                    "id": self.msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop,
                    "usage": usage,
                },
            )
        if not self.started:
            await self._open(model, "text", {"type": "text", "text": ""})
        await self._close()
        await self._event({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": usage})
        await self._event({"type": "message_stop"})
        return await self.out.finish()


async def handle_messages(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    key = str(time.monotonic_ns())
    try:
        body = await read_oa_body(request, anthropic_messages.MESSAGES_REQUEST)
        chat = await checked_off_loop(request, body, anthropic_messages.converted)
    except Refusal as exc:
        return gin_json(exc.status, anthropic_error(state, exc.status, exc.message, key))
    except BodyError as exc:
        return gin_json(400, anthropic_error(state, 400, str(exc), key))
    try:
        job = prepare_chat(state, chat, relax_thinking=True, limit_is_cap=True)
    except Refusal as exc:
        refused = encoder_json(exc.status, anthropic_error(state, exc.status, exc.message, key))
        return with_heads(refused, stream_heads(request, bool(body.get("stream"))))
    return await run_chat(request, job, AnthropicSink(request, bool(body.get("stream")), job.key))

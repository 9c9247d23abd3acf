"""/v1/responses (the OpenAI Responses API), shaped like Ollama's openai/responses.go.

The streaming events are built from Go maps there, so their keys go out sorted.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
from aiohttp import web

from proxy import go_json, go_raw_message, openai_responses
from proxy.go_types import BodyError
from proxy.openai_responses import text_format
from proxy.protocol import SSE

from .engine import Piece
from .inference import Refusal, format_as_held, prepare_chat
from .native import ChatSink, LazyStream, run_chat
from .openai_routes import (
    middleware_error,
    read_oa_body,
    to_openai_calls,
    writer_error,
)
from .state import EmulatorState, request_digest, state_of
from .wire import checked_off_loop, dumps, encoder_json, read_whole, stream_heads, with_heads


def _n(state: EmulatorState, key: str, salt: str, top: int) -> int:
    if state.settings.frozen_clock:
        return int(request_digest(salt, key)[:8], 16) % top
    return random.randrange(top)


# Responses ------------------------------------------------------------------------------


def _tool_echo(tool: Any, stream: bool) -> Any:
    """A request's tool as the answer repeats it: ToResponse marshals the ResponsesTool
    (every field, a missing one null, a namespace's members where it has any);
    buildResponseObject writes a map of the same five fields, without members. A loop
    over the namespaces within namespaces, not a recursion: Go reads them 10,000 levels
    deep."""
    if not isinstance(tool, dict):
        return tool
    top = _tool_fields(tool)
    pending = [(tool, top)]
    while pending and not stream:
        declared, echo = pending.pop()
        members = declared.get("tools")
        if isinstance(members, list) and members:
            echo["tools"] = [_tool_fields(m) if isinstance(m, dict) else m for m in members]
            pending += [(m, e) for m, e in zip(members, echo["tools"], strict=True) if e is not m]
    return top


def _tool_fields(tool: dict[str, Any]) -> dict[str, Any]:
    """The five fields of `_tool_echo`'s tool."""
    return {
        "type": tool.get("type") or "",
        "name": tool.get("name") or "",
        "description": tool.get("description"),
        "strict": tool.get("strict"),
        "parameters": openai_responses.go_map(tool.get("parameters")),
    }


def _format_echo(fmt: Any, schema: orjson.Fragment | None) -> Any:
    """The request's text format (`text_format`) as ResponsesTextFormat marshals it
    (and buildResponseObject copies it): its four fields, name and strict left out
    when unset, schema (a json.RawMessage) when given at all, as the client wrote it
    (`_schema_as_written`); keys it does not know go."""
    if not isinstance(fmt, dict):
        return {"type": "text"}
    echo: dict[str, Any] = {"type": fmt.get("type") or ""}
    if fmt.get("name"):
        echo["name"] = fmt["name"]
    if "schema" in fmt:
        echo["schema"] = fmt["schema"] if schema is None else schema
    if fmt.get("strict") is not None:
        echo["strict"] = fmt["strict"]
    return echo


async def _schema_as_written(request: web.Request, fmt: Any) -> orjson.Fragment | None:
    """The text format's schema (`fmt`, `text_format`'s) as Go writes a json.RawMessage
    back: the bytes the client wrote, compacted (`go_raw_message.compact`: `1.50`, `1E2` and a
    `\\u00e9` as they came), not a value it read. None where the format has no schema."""
    if not isinstance(fmt, dict) or "schema" not in fmt:
        return None
    raw = await request.read()
    written = await go_json.off_loop(len(raw), _schema_bytes, raw)
    return None if written is None else orjson.Fragment(written)


def _schema_bytes(raw: bytes) -> bytes | None:
    written = go_raw_message.value_bytes(raw, _SCHEMA)
    return None if written is None else go_raw_message.compact(written)


_SCHEMA = ("text", "format", "schema")


class ResponsesSink(ChatSink):
    def __init__(
        self,
        request: web.Request,
        body: dict[str, Any],
        key: str,
        schema: orjson.Fragment | None = None,
    ) -> None:
        self.state = state_of(request)
        self.body = body
        self.schema = schema
        self.stream = body.get("stream") is True
        # Read whole: a value nested deeper than the body's reading goes is echoed as
        # Go writes what it read (a map's keys sorted), not as the client wrote it.
        self.tools = [_tool_echo(t, self.stream) for t in read_whole(body.get("tools") or [])]
        self.keeps_text = False  # its own text is kept (`text`), its message's unread
        self.resp_id = f"resp_{_n(self.state, key, 'resp', 999999)}"
        self.item_id = f"msg_{_n(self.state, key, 'msg', 999999)}"
        self.rs_id = f"rs_{_n(self.state, key, 'rs', 999999)}"
        self.heads = stream_heads(request, self.stream)
        self.out = LazyStream(request, SSE, headers=self.heads)
        self.seq = 0
        self.started = False
        # The answer's pieces, joined when an event carries the whole (`thinking`,
        # `text`): a string grown a piece at a time is copied whole at each piece.
        self.thought: list[str] = []
        self.said: list[str] = []
        self.reasoning_open = self.reasoning_done = self.text_open = False
        self.index = 0
        self.calls: list[dict[str, Any]] = []

    async def error(self, status: int, message: str) -> web.StreamResponse:
        refused = with_heads(writer_error(status, message), self.heads)
        return await self.out.refuse(refused) if self.stream else refused

    async def special(self, model: str, created_ns: int, reason: str) -> web.StreamResponse:
        return await self.done(model, created_ns, reason, {"content": ""}, {})

    async def _event(self, name: str, data: dict[str, Any]) -> None:
        data = {**data, "type": name, "sequence_number": self.seq}
        self.seq += 1
        await self.out.send(
            f"event: {name}\ndata: ".encode() + dumps(data, sort_keys=True) + b"\n\n"
        )

    def _response(
        self, model: str, status: str, output: list[Any], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        b = self.body
        reasoning = b.get("reasoning") or {}
        return {
            "id": self.resp_id,
            "object": "response",
            "created_at": self.state.now_ns() // 1_000_000_000,
            "completed_at": None,
            "status": status,
            "incomplete_details": None,
            "model": model,
            "previous_response_id": None,
            "instructions": b.get("instructions") or None,
            "output": output,
            "error": None,
            "tools": self.tools,
            "tool_choice": "auto",
            "truncation": b.get("truncation") or "disabled",
            "parallel_tool_calls": True,
            "text": {"format": _format_echo(text_format(b), self.schema)},
            "top_p": b.get("top_p") if b.get("top_p") is not None else 1.0,
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": b.get("temperature") if b.get("temperature") is not None else 1.0,
            "reasoning": self._reasoning_echo(reasoning),
            "usage": usage,
            "max_output_tokens": b.get("max_output_tokens"),
            "max_tool_calls": None,
            "store": False,
            "background": bool(b.get("background")),
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }

    def _reasoning_echo(self, reasoning: dict[str, Any]) -> dict[str, Any] | None:
        """None without an effort or summary; else a stream's map has both (an unset
        one null), ToResponse's ResponsesReasoningOutput leaves an unset one out."""
        effort, summary = reasoning.get("effort") or None, reasoning.get("summary") or None
        if effort is None and summary is None:
            return None
        if self.stream:
            return {"effort": effort, "summary": summary}
        return {k: v for k, v in (("effort", effort), ("summary", summary)) if v is not None}

    async def _begin(self, model: str) -> None:
        if not self.started:
            self.started = True
            await self._event(
                "response.created", {"response": self._response(model, "in_progress", [], None)}
            )
            await self._event(
                "response.in_progress", {"response": self._response(model, "in_progress", [], None)}
            )

    @property
    def thinking(self) -> str:
        return "".join(self.thought)

    @property
    def text(self) -> str:
        return "".join(self.said)

    def _reasoning_item(self) -> dict[str, Any]:
        return {
            "id": self.rs_id,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": self.thinking}],
            "encrypted_content": self.thinking,
        }

    def _message_item(self, status: str) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}
            ],
        }

    async def _finish_reasoning(self) -> None:
        if self.reasoning_open and not self.reasoning_done:
            self.reasoning_done = True
            await self._event(
                "response.reasoning_summary_text.done",
                {
                    "item_id": self.rs_id,
                    "output_index": self.index,
                    "summary_index": 0,
                    "text": self.thinking,
                },
            )
            await self._event(
                "response.output_item.done",
                {"output_index": self.index, "item": self._reasoning_item()},
            )
            self.index += 1

    async def piece(self, model: str, created_ns: int, piece: Piece) -> None:
        self.thought.append(piece.thinking)
        self.said.append(piece.content)
        if not self.stream:
            return
        await self._begin(model)
        if piece.thinking:
            if not self.reasoning_open:
                self.reasoning_open = True
                await self._event(
                    "response.output_item.added",
                    {
                        "output_index": self.index,
                        "item": {"id": self.rs_id, "type": "reasoning", "summary": []},
                    },
                )
            await self._event(
                "response.reasoning_summary_text.delta",
                {
                    "item_id": self.rs_id,
                    "output_index": self.index,
                    "summary_index": 0,
                    "delta": piece.thinking,
                },
            )
        for i, call in enumerate(to_openai_calls(piece.tool_calls)):
            await self._finish_reasoning()
            fc = f"fc_{_n(self.state, call['id'], 'fc', 999999)}_{i}"
            item = {
                "id": fc,
                "type": "function_call",
                "status": "completed",
                "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
            }
            self.calls.append(item)
            idx = self.index + i
            await self._event(
                "response.output_item.added",
                {"output_index": idx, "item": {**item, "status": "in_progress", "arguments": ""}},
            )
            await self._event(
                "response.function_call_arguments.delta",
                {"item_id": fc, "output_index": idx, "delta": item["arguments"]},
            )
            await self._event(
                "response.function_call_arguments.done",
                {"item_id": fc, "output_index": idx, "arguments": item["arguments"]},
            )
            await self._event("response.output_item.done", {"output_index": idx, "item": item})
        if piece.content and not self.calls:
            await self._finish_reasoning()
            if not self.text_open:
                self.text_open = True
                await self._event(
                    "response.output_item.added",
                    {
                        "output_index": self.index,
                        "item": {
                            "id": self.item_id,
                            "type": "message",
                            "status": "in_progress",
                            "role": "assistant",
                            "content": [],
                        },
                    },
                )
                await self._event(
                    "response.content_part.added",
                    {
                        "item_id": self.item_id,
                        "output_index": self.index,
                        "content_index": 0,
                        "part": {
                            "type": "output_text",
                            "text": "",
                            "annotations": [],
                            "logprobs": [],
                        },
                    },
                )
            await self._event(
                "response.output_text.delta",
                {
                    "item_id": self.item_id,
                    "output_index": self.index,
                    "content_index": 0,
                    "delta": piece.content,
                    "logprobs": [],
                },
            )

    async def done(
        self, model: str, created_ns: int, reason: str, message: dict[str, Any], m: dict[str, int]
    ) -> web.StreamResponse:
        p, e = m.get("prompt_eval_count", 0), m.get("eval_count", 0)
        usage = {
            "input_tokens": p,
            "output_tokens": e,
            "total_tokens": p + e,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        if not self.stream:
            calls = to_openai_calls(message.get("tool_calls") or [])
            output: list[Any] = [self._reasoning_item()] if self.thinking else []
            output += [
                {
                    "id": f"fc_{self.resp_id}_{i}",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": c["id"],
                    "name": c["function"]["name"],
                    "arguments": c["function"]["arguments"],
                }
                for i, c in enumerate(calls)
            ]
            if not calls:
                output.append(self._message_item("completed"))
            if self.thinking:
                output[0]["id"] = f"rs_{self.resp_id}"
            body = self._response(model, "completed", output, usage)
            body["created_at"] = created_ns // 1_000_000_000
            body["completed_at"] = self.state.now_ns() // 1_000_000_000
            return encoder_json(200, body)
        await self._begin(model)
        await self._finish_reasoning()
        if self.text_open and not self.calls:
            await self._event(
                "response.output_text.done",
                {
                    "item_id": self.item_id,
                    "output_index": self.index,
                    "content_index": 0,
                    "text": self.text,
                    "logprobs": [],
                },
            )
            part = self._message_item("completed")["content"][0]
            await self._event(
                "response.content_part.done",
                {
                    "item_id": self.item_id,
                    "output_index": self.index,
                    "content_index": 0,
                    "part": part,
                },
            )
            await self._event(
                "response.output_item.done",
                {"output_index": self.index, "item": self._message_item("completed")},
            )
        final: list[Any] = [self._reasoning_item()] if self.reasoning_open else []
        final += self.calls or ([self._message_item("completed")] if self.text_open else [])
        resp = self._response(model, "completed", final, usage)
        resp["completed_at"] = self.state.now_ns() // 1_000_000_000
        await self._event("response.completed", {"response": resp})
        return await self.out.finish()


async def handle_responses(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    try:
        body = await read_oa_body(request, openai_responses.RESPONSES_REQUEST)
        chat = await checked_off_loop(request, body, openai_responses.converted)
    except Refusal as exc:
        return middleware_error(exc.status, exc.message)
    except BodyError as exc:
        return middleware_error(400, str(exc))
    held = await format_as_held(request, chat.get("format"), _SCHEMA, encoded=True)
    try:
        job = prepare_chat(state, chat, format_held=held)
    except Refusal as exc:
        heads = stream_heads(request, body.get("stream") is True)
        return with_heads(writer_error(exc.status, exc.message), heads)
    schema = await _schema_as_written(request, text_format(body))
    return await run_chat(request, job, ResponsesSink(request, body, job.key, schema))

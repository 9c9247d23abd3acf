"""An Anthropic Messages request as Ollama's Anthropic middleware converts it into an
/api/chat body (middleware/anthropic.go AnthropicMessagesMiddleware,
anthropic/anthropic.go FromMessagesRequest), and what it refuses on the way
(BodyError), with a 400, before any handler looks at the model.

Shared, as `openai_chat` is, by the emulator, which serves the converted chat, and the
proxy, which answers for `auto` in a backend's place (`auto_routes.refusal`).
"""

from __future__ import annotations

from typing import Any

from proxy.go_types import BodyError, check_fields, type_error
from proxy.openai_responses import text_of

# anthropic.MessagesRequest, {json name: kind} (see `go_types.check_fields`).
MESSAGES_FIELDS = {
    "model": "string",
    "max_tokens": "int",
    "messages": "[]anthropic.MessageParam",
    "system": "any",
    "stream": "bool",
    "temperature": "float",
    "tools": "[]anthropic.Tool",
    "thinking": "map",
}
MESSAGES_REQUEST = ("anthropic.MessagesRequest", MESSAGES_FIELDS)


# json.Unmarshal's error for no bytes at all.
NO_INPUT = "unexpected end of JSON input"
# What MessageParam.UnmarshalJSON unmarshals a message into first: an anonymous struct,
# which Go's errors name by its fields.
_HEAD = 'struct { Role string "json:\\"role\\""; Content json.RawMessage "json:\\"content\\"" }'
_AT = ("MessagesRequest", "messages")


def _check_messages(messages: Any) -> None:
    """anthropic.MessageParam's UnmarshalJSON, as the body is bound: the message into
    its head (`_HEAD`), then `content` (a json.RawMessage) as a string, else as a list
    of blocks. A null message, or one without `content`, unmarshals no bytes (a null
    `content` is the text ""). json.Unmarshal puts an error of these inner decodings in
    the request's context (`MessagesRequest.messages`, the inner field after it)."""
    for msg in messages if isinstance(messages, list) else ():
        if msg is None or (isinstance(msg, dict) and "content" not in msg):
            raise BodyError(NO_INPUT)
        if not isinstance(msg, dict):
            raise type_error(msg, *_AT, _HEAD)
        role = msg.get("role")
        if role is not None and not isinstance(role, str):
            raise type_error(role, _AT[0], f"{_AT[1]}.role", "string")
        content = msg["content"]
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise type_error(content, *_AT, "[]anthropic.ContentBlock")
        for block in content:
            if block is not None and not isinstance(block, dict):
                raise type_error(block, *_AT, "anthropic.ContentBlock")
            kind = (block or {}).get("type")
            if kind is not None and not isinstance(kind, str):
                raise type_error(kind, _AT[0], f"{_AT[1]}.type", "string")


def converted(doc: Any) -> dict[str, Any]:
    """AnthropicMessagesMiddleware: the body bound to anthropic.MessagesRequest, refused
    without a model, a positive max_tokens or messages, then converted
    (`chat_from_anthropic`); BodyError with the message of its 400."""
    body = check_fields(doc, *MESSAGES_REQUEST)
    _check_messages(body.get("messages"))
    if not body.get("model"):
        raise BodyError("model is required")
    if not body.get("max_tokens") or body["max_tokens"] <= 0:
        raise BodyError("max_tokens is required and must be positive")
    if not body.get("messages"):
        raise BodyError("messages is required")
    return chat_from_anthropic(body)


def chat_from_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    """anthropic.FromMessagesRequest: the /api/chat body of a MessagesRequest already
    bound and checked (`converted`); BodyError with the message of its 400."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        text = "".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
        if text:
            messages.append({"role": "system", "content": text})
    for msg in body.get("messages") or []:
        role, content = str(msg.get("role", "")).lower(), msg.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        text, calls, results = "", [], []
        for b in blocks if isinstance(blocks, list) else []:
            if not isinstance(b, dict):
                continue
            if b.get("type") == "text":
                text += str(b.get("text") or "")
            elif b.get("type") == "tool_use":
                calls.append(
                    {
                        "id": b.get("id"),
                        "function": {"name": b.get("name"), "arguments": b.get("input") or {}},
                    }
                )
            elif b.get("type") == "tool_result":
                results.append(
                    {
                        "role": "tool",
                        "content": text_of(b.get("content"))
                        if not isinstance(b.get("content"), str)
                        else b["content"],
                    }
                )
        messages += results
        if text or calls:
            messages.append({"role": role, "content": text, "tool_calls": calls})
    tools = [
        {
            "type": "function",
            "function": {
                "name": t.get("name"),
                "description": t.get("description", ""),
                "parameters": t.get("input_schema") or {},
            },
        }
        for t in body.get("tools") or []
        if isinstance(t, dict)
    ]
    out: dict[str, Any] = {
        "model": body.get("model") or "",
        "messages": messages,
        "options": {"num_predict": body.get("max_tokens") or 0},
        "tools": tools,
        "stream": bool(body.get("stream")),
    }
    thinking = (body.get("thinking") or {}).get("type")
    if thinking in ("enabled", "disabled"):
        out["think"] = thinking == "enabled"
    return out

"""An Anthropic Messages request as Ollama's Anthropic middleware converts it into an
/api/chat body (middleware/anthropic.go AnthropicMessagesMiddleware,
anthropic/anthropic.go FromMessagesRequest), and what it refuses on the way
(BodyError), with a 400, before any handler looks at the model.

Shared, as `openai_chat` is, by the emulator, which serves the converted chat, and the
proxy, which answers for `auto` in a backend's place (`auto_routes.refusal`).
"""

from __future__ import annotations

from typing import Any

from proxy.go_requests import check_fields
from proxy.go_types import BodyError
from proxy.openai_responses import text_of

# anthropic.MessagesRequest, {json name: kind} (see `go_requests.check_fields`).
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


def converted(doc: Any) -> dict[str, Any]:
    """AnthropicMessagesMiddleware: the body bound to anthropic.MessagesRequest, refused
    without a model, a positive max_tokens or messages, then converted
    (`chat_from_anthropic`); BodyError with the message of its 400."""
    body = check_fields(doc, *MESSAGES_REQUEST)  # each message too
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

"""An Anthropic Messages request as Ollama's Anthropic middleware converts it into an
/api/chat body (middleware/anthropic.go AnthropicMessagesMiddleware,
anthropic/anthropic.go FromMessagesRequest), and what it refuses on the way
(BodyError), with a 400, before any handler looks at the model.

Shared, as `openai_chat` is, by the emulator, which serves the converted chat, and the
proxy, which answers for `auto` in a backend's place (`auto_routes.refusal`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from proxy.backends import MESSAGES_PATH, web_search_tool
from proxy.go_messages import parameters_refusal
from proxy.go_requests import check_fields
from proxy.go_types import BodyError, base64_refusal
from proxy.multipart_form import go_quote, go_trim_space
from proxy.openai_responses import as_struct
from proxy.protocol import go_escaped

# anthropic.MessagesRequest, {json name: kind} (see `go_requests.check_fields`).
MESSAGES_FIELDS = {
    "model": "string",
    "max_tokens": "int",
    "messages": "[]anthropic.MessageParam",
    "system": "any",
    "stream": "bool",
    "temperature": "float",
    "top_p": "float",
    "top_k": "int",
    "stop_sequences": "[]string",
    "tools": "[]anthropic.Tool",
    "tool_choice": "anthropic.ToolChoice",
    "thinking": "anthropic.ThinkingConfig",
    "metadata": "anthropic.Metadata",
    "output_config": "anthropic.OutputConfig",
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
    bound and checked (`converted`); BodyError with the message of its 400 (a message's
    first, `_converted_message`, then a tool's, `_tool`)."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        text = "".join(_texts(system))
        if text:
            messages.append({"role": "system", "content": text})
    for msg in body.get("messages") or []:
        messages += _converted_message(as_struct(msg) if isinstance(msg, dict) else {})
    options: dict[str, Any] = {"num_predict": body.get("max_tokens") or 0}
    for name, option in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if body.get(name) is not None:
            options[option] = body[name]
    if body.get("stop_sequences"):
        options["stop"] = body["stop_sequences"]
    declared = [as_struct(t) if isinstance(t, dict) else {} for t in body.get("tools") or []]
    web_search = any(_is_web_search(t) for t in declared)
    tools = [
        _tool(t)
        for t in declared
        # The built-in web search owns the name: a function of that name is dropped.
        if not (web_search and not _is_web_search(t) and t.get("name") == "web_search")
    ]
    out: dict[str, Any] = {
        "model": body.get("model") or "",
        "messages": messages,
        "options": options,
        "tools": tools,
        "stream": bool(body.get("stream")),
    }
    think = _think(body)
    if think is not None:
        out["think"] = think
    return out


def _texts(blocks: list[Any]) -> Iterator[str]:
    """The text of each "text" block of a list Go decodes into an `any` (a system
    prompt's, a tool result's content): maps, read by their exact keys; anything else
    is skipped."""
    for block in blocks:
        if isinstance(block, dict) and block.get("type") == "text":
            text = block.get("text")
            if isinstance(text, str):
                yield text


def _converted_message(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """convertMessage: a message's blocks in order as chat messages, its tool results
    apart (before the message on a user's turn, after it on any other); BodyError
    where a block cannot be converted."""
    role = str(msg.get("role") or "").lower()
    content = msg.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    text, thinking = "", ""
    images: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for block in blocks if isinstance(blocks, list) else []:
        block = as_struct(block) if isinstance(block, dict) else {}
        kind = block.get("type")
        if kind == "text":
            text += block.get("text") or ""
        elif kind == "image":
            source = block.get("source")
            if not isinstance(source, dict):
                raise BodyError("invalid image source")
            source = as_struct(source)
            images.append(_image(source.get("type") or "", source.get("data") or ""))
        elif kind in ("tool_use", "server_tool_use"):
            if kind == "tool_use" and not block.get("id"):
                raise BodyError("tool_use block missing required 'id' field")
            if kind == "tool_use" and not block.get("name"):
                raise BodyError("tool_use block missing required 'name' field")
            function = {"name": block.get("name") or "", "arguments": block.get("input") or {}}
            calls.append({"id": block.get("id") or "", "function": function})
        elif kind == "tool_result":
            result, result_images = _tool_result(block.get("content"))
            results.append(
                _message("tool", result, result_images, tool_call_id=block.get("tool_use_id"))
            )
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking = block["thinking"]
        elif kind == "web_search_tool_result":
            found = _web_search_results(block.get("content"))
            results.append(_message("tool", found, [], tool_call_id=block.get("tool_use_id")))
    out = results if role == "user" else []
    if text or images or calls or thinking:
        out = [*out, _message(role, text, images, tool_calls=calls, thinking=thinking)]
    return out if role == "user" and results else out + results


def _message(role: str, content: str, images: list[str], **others: Any) -> dict[str, Any]:
    """An api.Message as Go writes it: the fields after `content` left out when empty."""
    message: dict[str, Any] = {"role": role, "content": content}
    if images:
        message["images"] = images
    message.update((name, value) for name, value in others.items() if value)
    return message


def _image(kind: str, data: str) -> str:
    """resolveImageSource: the base64 data of a source of the base64 type."""
    if kind != "base64":
        raise BodyError(f"invalid image source type: {kind}. Only base64 images are supported.")
    wrong = base64_refusal(data)
    if wrong is not None:
        raise BodyError(f"invalid base64 image data: {wrong}")
    return data


def _tool_result(content: Any) -> tuple[str, list[str]]:
    """convertToolResultContent: a result's content, an `any`: a string as it is, a
    list's "text" maps' text and "image" maps' images (a source that is no map is
    refused), anything else no content."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    images = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "image":
            source = block.get("source")
            if not isinstance(source, dict):
                raise BodyError("invalid tool_result image source")
            kind, data = source.get("type"), source.get("data")
            images.append(
                _image(kind if isinstance(kind, str) else "", data if isinstance(data, str) else "")
            )
    return "".join(_texts(content)), images


def _web_search_results(content: Any) -> str:
    """formatWebSearchToolResultContent: a string as it is; a list's results a line
    each ("- title: url"), or its first error alone; an error map alone; anything else
    as json.Marshal writes it (a map's keys sorted)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        lines = []
        for item in content:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "web_search_result":
                title, url = item.get("title"), item.get("url")
                lines.append(
                    f"- {title if isinstance(title, str) else ''}: "
                    f"{url if isinstance(url, str) else ''}\n"
                )
            elif item.get("type") == "web_search_tool_result_error":
                return _search_error(item)
        return "".join(lines)
    if isinstance(content, dict) and content.get("type") == "web_search_tool_result_error":
        return _search_error(content)
    return go_escaped(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).decode()


def _search_error(item: dict[str, Any]) -> str:
    code = item.get("error_code")
    return (
        f"web_search_tool_result_error: {code}"
        if isinstance(code, str) and code
        else ("web_search_tool_result_error")
    )


def _is_web_search(tool: dict[str, Any]) -> bool:
    return web_search_tool(MESSAGES_PATH, tool.get("type"))


# What convertTool declares for the built-in web search.
_WEB_SEARCH = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": "Search the web for current information. Use this to find"
        " up-to-date information about any topic.",
        "parameters": {
            "type": "object",
            "required": ["query"],
            "properties": {
                "query": {
                    "type": "string",
                    "description": "The search query to look up on the web",
                }
            },
        },
    },
}


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    """convertTool: a function of the tool's name, description and input schema, which
    json.Unmarshal decodes into an api.ToolFunctionParameters (its error refused)."""
    if _is_web_search(tool):
        return _WEB_SEARCH
    name, schema = tool.get("name") or "", tool.get("input_schema")
    refused = parameters_refusal(schema)
    if refused is not None:
        raise BodyError(f"invalid input_schema for tool {go_quote(name.encode())}: {refused}")
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": tool.get("description") or "",
            "parameters": schema or {},
        },
    }


# output_config's efforts that set thinking, where `thinking` sets none.
_EFFORTS = frozenset({"high", "medium", "low", "max"})


def _think(body: dict[str, Any]) -> bool | str | None:
    """The think value: `thinking`'s type (enabled or disabled), else output_config's
    effort (trimmed, lower case, xhigh as high)."""
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind in ("enabled", "disabled"):
        return bool(kind == "enabled")
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if not isinstance(effort, str):
        return None
    effort = go_trim_space(effort).lower()
    effort = "high" if effort == "xhigh" else effort
    return effort if effort in _EFFORTS else None

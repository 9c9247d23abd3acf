"""A chat completion, a completion and an embedding request as Ollama's OpenAI
middleware converts them into /api/chat, /api/generate and /api/embed bodies
(middleware/openai.go ChatMiddleware, CompletionsMiddleware, EmbeddingsMiddleware;
openai/openai.go FromChatRequest, FromCompleteRequest), and what it refuses on the way
(BodyError), with a 400, before any handler looks at the model.

Shared by the emulator, which serves the converted request, and the proxy, which
answers for `auto` in a backend's place where no model can serve a request (or the
profile does not exist): a body Ollama refuses while converting it gets that 400 there
too (`auto_routes.refusal`).
"""

from __future__ import annotations

import json
from typing import Any

from proxy.go_requests import check_fields
from proxy.go_types import BodyError, base64_error, base64_refusal
from proxy.multipart_form import go_quote

# openai.ChatCompletionRequest, {json name: kind} (see `go_requests.check_fields`).
CHAT_FIELDS = {
    "model": "string",
    "messages": "[]openai.Message",
    "stream": "bool",
    "stream_options": "openai.StreamOptions",
    "max_tokens": "int",
    "seed": "int",
    "stop": "any",
    "temperature": "float",
    "frequency_penalty": "float",
    "presence_penalty": "float",
    "top_p": "float",
    "response_format": "openai.ResponseFormat",
    "tools": "[]api.Tool",
    "reasoning": "openai.Reasoning",
    "reasoning_effort": "string",
    "logprobs": "bool",
    "top_logprobs": "int",
}
# What ChatMiddleware binds the body to, as `check_fields` takes it.
CHAT_REQUEST = ("openai.ChatCompletionRequest", CHAT_FIELDS)
NO_MESSAGES = "[] is too short - 'messages'"
INVALID_FORMAT = "invalid message format"
INVALID_IMAGE = "invalid image input"
IMAGE_URLS_REFUSED = (
    "image URLs are not currently supported, please use base64 encoded data instead"
)
_IMAGE_PREFIXES = (
    "data:;base64,",
    *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")),
)


def decode_image_url(url: str) -> str:
    """openai.decodeImageURL: the base64 of a data URL of a type Ollama takes (or of no
    type, as /api/chat takes bare base64); a web address is refused (BodyError)."""
    if url.startswith(("http://", "https://")):
        raise BodyError(IMAGE_URLS_REFUSED)
    prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
    if prefix is None:
        raise BodyError(INVALID_IMAGE)
    data = url[len(prefix) :]
    if base64_error(data) is not None:
        raise BodyError(INVALID_IMAGE)
    return data


# openai.thinkFromReasoningEffort: OpenAI's tiers and clients' own clamped to Ollama's.
_EFFORTS: dict[str, Any] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def think_from_effort(effort: Any) -> Any:
    """The think value of a reasoning effort: None for none given."""
    if effort == "":
        return None
    if not isinstance(effort, str) or effort not in _EFFORTS:
        quoted = go_quote(effort.encode()) if isinstance(effort, str) else f'"{effort}"'
        raise BodyError(
            f'invalid reasoning value: {quoted} (must be "minimal", "low", "medium", '
            '"high", "xhigh", "ultra", "max", or "none")'
        )
    return _EFFORTS[effort]


def go_type_name(value: Any) -> str:
    """`%T` of a JSON value Go decoded into an `any`."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    return "float64"  # any JSON number


def _not_a_float64(text: str) -> Any:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(text)  # Go's ParseFloat: out of range
    return value


def _whole(text: str) -> Any:
    _not_a_float64(text)
    return int(text)


def _no_constant(text: str) -> Any:
    raise ValueError(text)


def _arguments(text: str) -> Any:
    """json.Unmarshal of a tool call's `arguments` (into an ordered map of `any`): the
    whole text one JSON value, every number a float64; an object, not even null
    (`go_types.check_arguments`)."""
    try:
        value = json.loads(
            text, parse_float=_not_a_float64, parse_int=_whole, parse_constant=_no_constant
        )
    except (ValueError, RecursionError):
        raise BodyError("invalid tool call arguments") from None
    if not isinstance(value, dict):
        raise BodyError("invalid tool call arguments")
    return value


def tool_calls(calls: Any) -> list[dict[str, Any]]:
    """openai.FromCompletionToolCall."""
    out = []
    for tc in calls or []:
        fn = tc.get("function", {}) if isinstance(tc, dict) else {}
        out.append(
            {
                "function": {
                    "name": fn.get("name", ""),
                    "arguments": _arguments(str(fn.get("arguments") or "")),
                }
            }
        )
    return out


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """FromChatRequest's options: a stop list keeps its strings (only
    FromCompleteRequest refuses the rest)."""
    opts: dict[str, Any] = {}
    stop = body.get("stop")
    if isinstance(stop, str):
        opts["stop"] = [stop]
    elif isinstance(stop, list):
        opts["stop"] = [s for s in stop if isinstance(s, str)]
    if body.get("max_tokens") is not None:
        opts["num_predict"] = body["max_tokens"]
    opts["temperature"] = body["temperature"] if body.get("temperature") is not None else 1.0
    if body.get("seed") is not None:
        opts["seed"] = body["seed"]
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) is not None:
            opts[name] = body[name]
    opts["top_p"] = body["top_p"] if body.get("top_p") is not None else 1.0
    return opts


def _image_url(part: dict[str, Any]) -> str:
    url = part.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str):
        raise BodyError(INVALID_FORMAT)
    return url


def _audio(part: dict[str, Any]) -> str:
    """The base64 data of an input_audio part, as FromChatRequest takes it."""
    audio = part.get("input_audio")
    if not isinstance(audio, dict):
        raise BodyError("invalid input_audio format")
    data = audio.get("data")
    if not isinstance(data, str):
        raise BodyError("invalid input_audio format: missing data")
    wrong = base64_refusal(data)
    if wrong is not None:
        raise BodyError(f"invalid input_audio base64 data: {wrong}")
    return data


def chat_from_openai(body: dict[str, Any]) -> dict[str, Any]:
    """openai.FromChatRequest: the /api/chat body of a chat completion whose body has
    been bound (`CHAT_FIELDS`); BodyError with its message for what it refuses."""
    messages: list[dict[str, Any]] = []
    for msg in body.get("messages") or []:
        if msg is None:
            msg = {}  # the zero openai.Message, refused below for its content
        if not isinstance(msg, dict):
            raise BodyError(INVALID_FORMAT)
        role, content = msg.get("role", ""), msg.get("content")
        if isinstance(content, str):
            messages.append(
                {"role": role, "content": content, "tool_calls": tool_calls(msg.get("tool_calls"))}
            )
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise BodyError(INVALID_FORMAT)
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    messages.append({"role": role, "content": part["text"]})
                elif part.get("type") == "image_url":
                    image = decode_image_url(_image_url(part))
                    messages.append({"role": role, "content": "", "images": [image]})
                elif part.get("type") == "input_audio":
                    # Ollama hands the audio to the model as it hands an image.
                    messages.append({"role": role, "content": "", "images": [_audio(part)]})
                else:
                    raise BodyError(INVALID_FORMAT)
            if messages and msg.get("tool_calls"):
                # The message's calls go with the last of the messages its parts made.
                messages[-1]["tool_calls"] = tool_calls(msg.get("tool_calls"))
        elif msg.get("tool_calls") is None:
            raise BodyError(f"invalid message content type: {go_type_name(content)}")
        else:
            messages.append(
                {"role": role, "content": "", "tool_calls": tool_calls(msg.get("tool_calls"))}
            )
    fmt: Any = None
    rf = body.get("response_format") or {}
    if str(rf.get("type", "")).strip().lower() == "json_object":
        fmt = "json"
    elif str(rf.get("type", "")).strip().lower() == "json_schema":
        fmt = (rf.get("json_schema") or {}).get("schema")
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        effort = reasoning.get("effort") or ""
    else:
        effort = body.get("reasoning_effort") or ""
    think = think_from_effort(effort)
    out: dict[str, Any] = {
        "model": body.get("model") or "",
        "messages": messages,
        "options": _options(body),
        "stream": bool(body.get("stream")),
        "tools": body.get("tools") or [],
        "logprobs": body.get("logprobs") is True,
        "top_logprobs": body.get("top_logprobs") or 0,
    }
    if fmt is not None:
        out["format"] = fmt
    if think is not None:
        out["think"] = think
    return out


def converted(doc: Any) -> dict[str, Any]:
    """ChatMiddleware: the body bound to openai.ChatCompletionRequest, refused without
    messages, then converted (`chat_from_openai`); BodyError with the message of its
    400."""
    body = check_fields(doc, *CHAT_REQUEST)
    if not body.get("messages"):
        raise BodyError(NO_MESSAGES)
    return chat_from_openai(body)


# openai.CompletionRequest, {json name: kind} (see `go_requests.check_fields`).
COMPLETION_FIELDS = {
    "model": "string",
    "prompt": "string",
    "frequency_penalty": "float32",
    "max_tokens": "int",
    "presence_penalty": "float32",
    "seed": "int",
    "stop": "any",
    "stream": "bool",
    "stream_options": "openai.StreamOptions",
    "temperature": "float32",
    "top_p": "float32",
    "suffix": "string",
    "logprobs": "int",
}
COMPLETION_REQUEST = ("openai.CompletionRequest", COMPLETION_FIELDS)


def _completion_options(body: dict[str, Any]) -> dict[str, Any]:
    """FromCompleteRequest's options: an element of a `stop` list that is no string is
    its error, named by Go's type (`%T`)."""
    opts: dict[str, Any] = {}
    stop = body.get("stop")
    if isinstance(stop, str):
        opts["stop"] = [stop]
    elif isinstance(stop, list):
        for item in stop:
            if not isinstance(item, str):
                raise BodyError(f"invalid type for 'stop' field: {go_type_name(item)}")
        opts["stop"] = stop
    if body.get("max_tokens") is not None:
        opts["num_predict"] = body["max_tokens"]
    opts["temperature"] = body["temperature"] if body.get("temperature") is not None else 1.0
    if body.get("seed") is not None:
        opts["seed"] = body["seed"]
    opts["top_p"] = body["top_p"] if body.get("top_p") else 1.0
    return opts


def completion_converted(doc: Any) -> dict[str, Any]:
    """CompletionsMiddleware: the body bound to openai.CompletionRequest and converted
    (FromCompleteRequest) into the /api/generate body; BodyError with the message of
    its 400."""
    body = check_fields(doc, *COMPLETION_REQUEST)
    generate: dict[str, Any] = {
        "model": body.get("model") or "",
        "prompt": body.get("prompt") or "",
        "options": _completion_options(body),
        "stream": bool(body.get("stream")),
        "suffix": body.get("suffix") or "",
    }
    # A positive count asks for logprobs and is their top count.
    if (body.get("logprobs") or 0) > 0:
        generate["logprobs"], generate["top_logprobs"] = True, body["logprobs"]
    return generate


# openai.EmbedRequest.
EMBEDDING_FIELDS = {
    "input": "any",
    "model": "string",
    "dimensions": "int",
    "encoding_format": "string",
}
EMBEDDING_REQUEST = ("openai.EmbedRequest", EMBEDDING_FIELDS)
INVALID_INPUT = "invalid input"


def embedding_converted(doc: Any) -> dict[str, Any]:
    """EmbeddingsMiddleware: the body bound to openai.EmbedRequest, its
    `encoding_format` and `input` checked, converted into the /api/embed body (with the
    format, which the middleware's writer applies); BodyError with the message of its
    400."""
    body = check_fields(doc, *EMBEDDING_REQUEST)
    fmt = str(body.get("encoding_format") or "")
    if fmt and fmt.lower() not in ("float", "base64"):
        raise BodyError(
            f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64']."
        )
    inp = body.get("input")
    if inp == "":
        inp = [""]
    if inp is None or inp == []:
        raise BodyError(INVALID_INPUT)
    return {
        "model": body.get("model") or "",
        "input": inp,
        "dimensions": body.get("dimensions"),
        "encoding_format": fmt,
    }

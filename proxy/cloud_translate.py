"""The cloud fallback's translation, without I/O: a chat or generate request (Ollama's
`/api/chat`, `/api/generate`, OpenAI's `/v1/chat/completions`) into a cloud API's
request (OpenAI chat completions or Anthropic messages), and the cloud's streamed
answer (server-sent events) back into the client's format, fed bytes as they come.

The cloud is always asked to stream: a client that asked for one body gets the
stream's text gathered into it, so there is one way of reading each API.

Tools (the tool list, the model's tool calls and the tools' answers) and a `format`
(`"json"`, or a JSON schema: OpenAI's `response_format`) go only to OpenAI-compatible
providers, whose chat completions take them in the same sense; Anthropic's messages
have shapes of their own for both, not translated here, so a provider of that API does
not take such a request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from proxy.protocol import count, go_dumps, go_now

Api = Literal["openai", "anthropic"]
CHAT, GENERATE, V1_CHAT = "/api/chat", "/api/generate", "/v1/chat/completions"
PATHS = frozenset({CHAT, GENERATE, V1_CHAT})
# Anthropic's reasons for stopping, in the words Ollama and OpenAI use.
_ANTHROPIC_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class TranslateError(ValueError):
    """The request cannot be put to a cloud API (the client's fault: a 400)."""


class Unsupported(TranslateError):
    """A request the translation would change the meaning of (images, a tool's answer
    to no tool call): the cloud does not take it, rather than answer something else."""


class CloudStreamError(Exception):
    """The cloud's answer failed: an error event, or it ended before it said so."""


@dataclass(slots=True)
class Chat:
    """A request as every API reads it: messages of text in OpenAI's chat shape (an
    assistant's `tool_calls` with their ids and arguments as JSON text, a tool's answer
    with the `tool_call_id` it answers), the system prompt apart."""

    messages: list[dict[str, Any]]
    system: str = ""
    stream: bool = True
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    # A /v1 client that asked for the usage chunk (stream_options.include_usage).
    include_usage: bool = False
    # For OpenAI-compatible providers only (`openai_only`), in their own shape.
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    def chars(self) -> int:
        calls = (c["function"]["arguments"] for m in self.messages for c in m.get("tool_calls", ()))
        return (
            len(self.system)
            + sum(len(m["content"] or "") for m in self.messages)
            + sum(map(len, calls))
        )

    def openai_only(self) -> str | None:
        """What of the request only an OpenAI-compatible provider is sent, else None."""
        if self.tools or any(m["role"] == "tool" for m in self.messages):
            return "tools"
        if self.response_format is not None:
            return "a format"
        return None


def _text(content: Any) -> str:
    """A message's content: a string, or OpenAI's list of parts (their text joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise Unsupported("the cloud fallback sends only text parts")
        return "".join(str(p.get("text", "")) for p in content)
    if content is None:
        return ""
    raise TranslateError("a message's content must be text")


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TranslateError(f"{name} must be a number")
    return float(value)


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise TranslateError("stop must be a string or a list of strings")


def _tools(value: Any) -> list[dict[str, Any]]:
    """Ollama's and OpenAI's tool list (the same shape): functions with a name."""
    if not value:
        return []
    if not isinstance(value, list):
        raise TranslateError("tools must be a list")
    out = []
    for tool in value:
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(function, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function.get("name"), str)
        ):
            raise TranslateError("each tool must be a function with a name")
        out.append({"type": "function", "function": function})
    return out


def _format(value: Any) -> dict[str, Any] | None:
    """Ollama's `format` as OpenAI's `response_format`: "json" any JSON object, a
    schema that schema."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    raise TranslateError('format must be "json" or a JSON schema')


def _response_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in (
        "text",
        "json_object",
        "json_schema",
    ):
        raise TranslateError(
            "response_format must be an object of type text, json_object or json_schema"
        )
    return None if value["type"] == "text" else value


def _v1_calls(value: Any) -> list[dict[str, Any]]:
    """An OpenAI assistant message's tool calls, as the API takes them."""
    if not isinstance(value, list):
        raise TranslateError("tool_calls must be a list")
    out = []
    for call in value:
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(call.get("id"), str)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise TranslateError("each tool call needs an id, a name and arguments")
        out.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": function["arguments"]},
            }
        )
    return out


def _ollama_calls(value: Any, pending: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """An Ollama assistant message's tool calls (arguments an object, the id optional)
    in OpenAI's shape; each is added to `pending`, the calls no tool answered yet."""
    if not isinstance(value, list):
        raise TranslateError("tool_calls must be a list")
    out = []
    for call in value:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise TranslateError("each tool call needs a function with a name")
        arguments = function.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise TranslateError("a tool call's arguments must be an object")
        given = call.get("id")
        call_id = given if isinstance(given, str) and given else f"call_{len(pending)}"
        pending.append((call_id, function["name"]))
        out.append(
            {
                "id": call_id,
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": orjson.dumps(arguments).decode(),
                },
            }
        )
    return out


def _answered(message: dict[str, Any], pending: list[tuple[str, str]]) -> str:
    """The id of the call an Ollama tool message answers: the id it names, else the
    oldest unanswered call of the tool it names, else the oldest unanswered call."""
    named = message.get("tool_call_id")
    if isinstance(named, str) and named:
        found = next((p for p in pending if p[0] == named), None)
        if found is not None:
            pending.remove(found)
        return named
    tool = message.get("tool_name")
    found = next((p for p in pending if p[1] == tool), None) if tool else None
    if found is None and pending:
        found = pending[0]
    if found is None:
        raise Unsupported("the cloud fallback sends a tool's answer only after the call it answers")
    pending.remove(found)
    return found[0]


def read_request(path: str, doc: dict[str, Any]) -> Chat:
    """The request at `path` (one of PATHS) as a `Chat`; TranslateError when it cannot be."""
    for name in ("functions", "images"):
        if doc.get(name):
            raise Unsupported(f"the cloud fallback does not send {name!r}")
    if path == GENERATE and doc.get("tools"):
        raise Unsupported("the cloud fallback does not send 'tools' to generate")
    if path == V1_CHAT:
        options = doc
        stream = doc.get("stream") is True
        limit = doc.get("max_completion_tokens", doc.get("max_tokens"))
        usage = doc.get("stream_options")
        include_usage = isinstance(usage, dict) and usage.get("include_usage") is True
        response_format = _response_format(doc.get("response_format"))
    else:
        options = doc.get("options") or {}
        if not isinstance(options, dict):
            raise TranslateError("options must be an object")
        stream = doc.get("stream") is not False  # Ollama streams unless told not to
        limit = options.get("num_predict")
        include_usage = False
        response_format = _format(doc.get("format"))
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # Ollama's tool calls no tool answered yet
    if path == GENERATE:
        if isinstance(doc.get("system"), str) and doc["system"]:
            system.append(doc["system"])
        prompt = doc.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise TranslateError("the cloud fallback needs a prompt")
        messages.append({"role": "user", "content": prompt})
    else:
        given = doc.get("messages")
        if not isinstance(given, list) or not given:
            raise TranslateError("the cloud fallback needs messages")
        for message in given:
            if not isinstance(message, dict) or message.get("role") not in (
                "system",
                "developer",
                "user",
                "assistant",
                "tool",
            ):
                raise TranslateError("each message needs a role: system, user, assistant or tool")
            if message.get("images"):
                raise Unsupported("the cloud fallback does not send images")
            role = message["role"]
            text = _text(message.get("content"))
            if role in ("system", "developer"):
                system.append(text)
                continue
            out: dict[str, Any] = {"role": role, "content": text}
            if role == "assistant" and message.get("tool_calls"):
                calls = message["tool_calls"]
                out["tool_calls"] = (
                    _v1_calls(calls) if path == V1_CHAT else _ollama_calls(calls, pending)
                )
                out["content"] = text or None  # what OpenAI itself sends with tool calls
            elif role == "tool":
                if path == V1_CHAT:
                    if not isinstance(message.get("tool_call_id"), str):
                        raise TranslateError("a tool message needs the tool_call_id it answers")
                    out["tool_call_id"] = message["tool_call_id"]
                else:
                    out["tool_call_id"] = _answered(message, pending)
            messages.append(out)
        if not messages:
            raise TranslateError("the cloud fallback needs a user message")
    max_tokens = _number(limit, "the token limit")
    return Chat(
        messages=messages,
        system="\n\n".join(system),
        stream=stream,
        # Ollama's -1 (and -2) mean "no limit": the provider's default then.
        max_tokens=int(max_tokens) if max_tokens is not None and max_tokens > 0 else None,
        temperature=_number(options.get("temperature"), "temperature"),
        top_p=_number(options.get("top_p"), "top_p"),
        stop=_stops(options.get("stop")),
        include_usage=include_usage,
        tools=_tools(doc.get("tools")),
        tool_choice=doc.get("tool_choice") if path == V1_CHAT else None,
        response_format=response_format,
    )


def cloud_body(api: Api, chat: Chat, model: str, default_max_tokens: int) -> dict[str, Any]:
    """The streaming request body for `api`."""
    body: dict[str, Any] = {"model": model, "stream": True}
    if api == "openai":
        system = [{"role": "system", "content": chat.system}] if chat.system else []
        body["messages"] = system + chat.messages
        # The usage numbers the budget counts come in the stream's last chunk.
        body["stream_options"] = {"include_usage": True}
        if chat.max_tokens is not None:
            body["max_tokens"] = chat.max_tokens
        if chat.stop:
            body["stop"] = chat.stop
        if chat.tools:
            body["tools"] = chat.tools
        if chat.tool_choice is not None:
            body["tool_choice"] = chat.tool_choice
        if chat.response_format is not None:
            body["response_format"] = chat.response_format
    else:
        assert chat.openai_only() is None, "an Anthropic provider does not take this request"
        body["messages"] = chat.messages
        body["max_tokens"] = chat.max_tokens or default_max_tokens
        if chat.system:
            body["system"] = chat.system
        if chat.stop:
            body["stop_sequences"] = chat.stop
    if chat.temperature is not None:
        body["temperature"] = chat.temperature
    if chat.top_p is not None:
        body["top_p"] = chat.top_p
    return body


class EventStream:
    """Server-sent events from bytes in any pieces: (event name, data) per event."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        buffer = self._buffer + data
        # A CRLF may be cut between two pieces: a trailing CR waits for the next.
        held = b"\r" if buffer.endswith(b"\r") else b""
        buffer = buffer[: len(buffer) - len(held)].replace(b"\r\n", b"\n")
        events = []
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            name, lines = "message", []
            for line in block.decode("utf-8", "replace").split("\n"):
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    lines.append(line[5:].removeprefix(" "))
            if lines:
                events.append((name, "\n".join(lines)))
        self._buffer = buffer + held
        return events


@dataclass(slots=True)
class Reading:
    """What the cloud's answer said so far."""

    texts: list[str] = field(default_factory=list)  # new text, taken by the renderer
    # New tool call pieces as OpenAI streams them, taken by the renderer; and each call
    # so far by its index: [id, name, arguments' JSON text so far].
    call_pieces: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[int, list[str]] = field(default_factory=dict)
    reason: str | None = None  # why it stopped, once it did
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ended: bool = False  # the API's own end of the answer


def _json(data: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CloudStreamError(f"the cloud sent an event that is not JSON: {data[:200]}") from None
    if not isinstance(doc, dict):
        raise CloudStreamError("the cloud sent an event that is not a JSON object")
    return doc


# An event's fields, read by type (an OpenAI-compatible server behind `base_url`, a
# gateway, may send another shape). What holds the answer (choices, deltas, tool
# calls) of another type is the cloud's error: the client's answer cannot be read. What
# only the proxy reads (token counts, why it stopped) of another type is absent.


def _object(value: object, what: str) -> dict[str, Any]:
    """An object, absent ({}) when null or left out."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CloudStreamError(f"the cloud sent {what} that is not an object")
    return value


def _objects(value: object, what: str, each: str) -> list[dict[str, Any]]:
    """A list of objects, none when null or left out."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise CloudStreamError(f"the cloud sent {what} that are not a list")
    return [_object(item, each) for item in value]


def _count(reading: Reading, prompt: object, completion: object) -> None:
    """The cloud's counts so far: each one read replaces the last, an absent one (or
    one that is no count: a negative one would give budget back) not."""
    if (tokens := count(prompt)) is not None:
        reading.prompt_tokens = tokens
    if (tokens := count(completion)) is not None:
        reading.completion_tokens = tokens


def _reason(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _error_message(doc: dict[str, Any]) -> str:
    error = doc.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or error)
    return str(error)


def read_openai(name: str, data: str, reading: Reading) -> None:
    """One chat-completions chunk into `reading`."""
    if data.strip() == "[DONE]":
        reading.ended = True
        return
    doc = _json(data)
    if "error" in doc:
        raise CloudStreamError(_error_message(doc))
    for choice in _objects(doc.get("choices"), "choices", "a choice"):
        delta = _object(choice.get("delta"), "a delta")
        if isinstance(delta.get("content"), str) and delta["content"]:
            reading.texts.append(delta["content"])
        for piece in _objects(delta.get("tool_calls"), "tool calls", "a tool call"):
            index = piece.get("index") or 0
            if type(index) is not int:
                raise CloudStreamError("the cloud sent a tool call index that is not a number")
            call = reading.calls.setdefault(index, ["", "", ""])
            function = _object(piece.get("function"), "a function")
            call[0] = str(piece.get("id") or call[0])
            call[1] += str(function.get("name") or "")
            call[2] += str(function.get("arguments") or "")
            reading.call_pieces.append(piece)
        if reason := _reason(choice.get("finish_reason")):
            reading.reason = reason
    usage = doc.get("usage")
    if isinstance(usage, dict):
        _count(reading, usage.get("prompt_tokens"), usage.get("completion_tokens"))


def read_anthropic(name: str, data: str, reading: Reading) -> None:
    """One messages-stream event into `reading`."""
    doc = _json(data)
    kind = doc.get("type", name)
    if kind == "error":
        raise CloudStreamError(_error_message(doc))
    if kind == "message_start":
        message = doc.get("message")
        usage = message.get("usage") if isinstance(message, dict) else None
        if isinstance(usage, dict):
            _count(reading, usage.get("input_tokens"), usage.get("output_tokens"))
    elif kind == "content_block_delta":
        delta = _object(doc.get("delta"), "a delta")
        if delta.get("type") == "text_delta" and delta.get("text"):
            reading.texts.append(str(delta["text"]))
    elif kind == "message_delta":
        said = doc.get("delta")
        reason = _reason(said.get("stop_reason")) if isinstance(said, dict) else None
        if reason:
            reading.reason = _ANTHROPIC_REASONS.get(reason, reason)
        counts = doc.get("usage")
        if isinstance(counts, dict):
            _count(reading, None, counts.get("output_tokens"))
    elif kind == "message_stop":
        reading.ended = True


# What the client reads is written as Ollama writes its own answers (json.Marshal,
# gin's c.JSON): with Go's escapes.
def _line(doc: dict[str, Any]) -> bytes:
    return go_dumps(doc) + b"\n"


def _sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + go_dumps(doc) + b"\n\n"


class Translator:
    """The cloud's streamed answer (bytes) into the client's: `feed` returns what to
    send now (nothing when the client wants one body), `finish` the rest (the final
    chunk, or the whole body)."""

    def __init__(self, api: Api, path: str, chat: Chat, model: str) -> None:
        self.path = path
        self.chat = chat
        self.model = model
        self.events = EventStream()
        self.reading = Reading()
        self._read = read_openai if api == "openai" else read_anthropic
        self._text: list[str] = []  # the whole answer, for a one-body client
        self._started = time.monotonic_ns()
        self._id = f"chatcmpl-{self._started % 10**9}"
        self._created = int(time.time())
        self._role_sent = False

    @property
    def content_type(self) -> str:
        if not self.chat.stream:
            return "application/json" if self.path == V1_CHAT else "application/json; charset=utf-8"
        return "text/event-stream" if self.path == V1_CHAT else "application/x-ndjson"

    def feed(self, data: bytes) -> bytes:
        for name, payload in self.events.feed(data):
            self._read(name, payload, self.reading)
        texts, self.reading.texts = self.reading.texts, []
        pieces, self.reading.call_pieces = self.reading.call_pieces, []
        self._text += texts
        if not self.chat.stream:
            return b""
        out = b"".join(self._chunk(t) for t in texts)
        if pieces and self.path == V1_CHAT:
            # As OpenAI streams them; an Ollama client gets the calls whole (`finish`).
            out += _sse(self._v1_chunk(self._delta({"tool_calls": pieces}), None))
        return out

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        """A /v1 chunk's delta, the first of the answer saying the role."""
        if not self._role_sent:
            self._role_sent = True
            return {"role": "assistant", **delta}
        return delta

    def _calls(self) -> list[tuple[str, str, str]]:
        """The answer's tool calls: (id, name, arguments as JSON text), in order."""
        return [
            (c[0] or f"call_{i}", c[1], c[2] or "{}") for i, c in sorted(self.reading.calls.items())
        ]

    def _ollama_calls(self) -> list[dict[str, Any]]:
        """The tool calls as Ollama writes them: arguments an object."""
        out = []
        for index, (call_id, name, arguments) in enumerate(self._calls()):
            try:
                parsed = orjson.loads(arguments)
            except orjson.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise CloudStreamError(
                    f"the cloud's call of {name} has arguments that are not a JSON object"
                )
            out.append(
                {"id": call_id, "function": {"index": index, "name": name, "arguments": parsed}}
            )
        return out

    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens as the cloud counted them; without its numbers
        (a provider that leaves usage out, an answer cut short before its final count),
        about four characters a token, so that nothing spent goes uncounted."""
        r = self.reading
        prompt = r.prompt_tokens if r.prompt_tokens is not None else -(-self.chat.chars() // 4)
        written = sum(map(len, self._text)) + sum(len(c[2]) for c in r.calls.values())
        estimate = -(-written // 4)
        if r.completion_tokens is None:
            return prompt, estimate
        return prompt, r.completion_tokens if r.ended else max(r.completion_tokens, estimate)

    def finish(self) -> bytes:
        """The end of the answer; CloudStreamError when the cloud never ended it."""
        r = self.reading
        if not r.ended and r.reason is None:
            raise CloudStreamError("the cloud's answer ended before it was complete")
        reason = r.reason or "stop"
        calls = self._calls()
        prompt, completion = self.tokens()
        elapsed = time.monotonic_ns() - self._started
        if self.path == V1_CHAT:
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            if not self.chat.stream:
                message: dict[str, Any] = {"role": "assistant", "content": "".join(self._text)}
                if calls:
                    message["content"] = message["content"] or None
                    message["tool_calls"] = [
                        {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                        for i, n, a in calls
                    ]
                return go_dumps(
                    {
                        "id": self._id,
                        "object": "chat.completion",
                        "created": self._created,
                        "model": self.model,
                        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
                        "usage": usage,
                    }
                )
            out = _sse(self._v1_chunk({}, reason))
            if self.chat.include_usage:
                out += _sse({**self._v1_chunk(None, None), "choices": [], "usage": usage})
            return out + b"data: [DONE]\n\n"
        final: dict[str, Any] = {"model": self.model, "created_at": go_now()}
        # A stream's last line carries no text: the chunks before it had it all.
        text = "" if self.chat.stream else "".join(self._text)
        head = b""
        if self.path == CHAT:
            final["message"] = {"role": "assistant", "content": text}
            if calls:
                # Ollama sends the calls whole in a chunk of their own (in the final
                # message, without a stream) and says "stop" for them.
                ollama_calls = self._ollama_calls()
                if reason == "tool_calls":
                    reason = "stop"
                if self.chat.stream:
                    message = {"role": "assistant", "content": "", "tool_calls": ollama_calls}
                    head = _line(
                        {
                            "model": self.model,
                            "created_at": go_now(),
                            "message": message,
                            "done": False,
                        }
                    )
                else:
                    final["message"]["tool_calls"] = ollama_calls
        else:
            final["response"] = text
        final.update(
            done=True,
            done_reason=reason,
            total_duration=elapsed,
            load_duration=0,
            prompt_eval_count=prompt,
            prompt_eval_duration=0,
            eval_count=completion,
            eval_duration=elapsed,
        )
        return head + _line(final) if self.chat.stream else go_dumps(final)

    def _chunk(self, text: str) -> bytes:
        if self.path == V1_CHAT:
            return _sse(self._v1_chunk(self._delta({"content": text}), None))
        doc: dict[str, Any] = {"model": self.model, "created_at": go_now()}
        if self.path == CHAT:
            doc["message"] = {"role": "assistant", "content": text}
        else:
            doc["response"] = text
        doc["done"] = False
        return _line(doc)

    def _v1_chunk(self, delta: dict[str, Any] | None, reason: str | None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "finish_reason": reason}],
        }

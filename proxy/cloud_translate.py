"""The cloud fallback's translation, without I/O: a chat or generate request (Ollama's
`/api/chat`, `/api/generate`, OpenAI's `/v1/chat/completions`) into a cloud API's
request (OpenAI chat completions or Anthropic messages), and the cloud's streamed
answer (server-sent events) back into the client's format, fed bytes as they come.

The cloud is always asked to stream: a client that asked for one body gets the
stream's text gathered into it, so there is one way of reading each API.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

Api = Literal["openai", "anthropic"]
CHAT, GENERATE, V1_CHAT = "/api/chat", "/api/generate", "/v1/chat/completions"
PATHS = frozenset({CHAT, GENERATE, V1_CHAT})
# Anthropic's reasons for stopping, in the words Ollama and OpenAI use.
_ANTHROPIC_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class TranslateError(ValueError):
    """The request cannot be put to a cloud API (the client's fault: a 400)."""


class Unsupported(TranslateError):
    """A request the translation would change the meaning of (tools, images, a
    `format`): the cloud does not take it, rather than answer something else."""


class CloudStreamError(Exception):
    """The cloud's answer failed: an error event, or it ended before it said so."""


@dataclass(slots=True)
class Chat:
    """A request as every API reads it: messages of text, the system prompt apart."""

    messages: list[dict[str, str]]
    system: str = ""
    stream: bool = True
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    # A /v1 client that asked for the usage chunk (stream_options.include_usage).
    include_usage: bool = False

    def chars(self) -> int:
        return len(self.system) + sum(len(m["content"]) for m in self.messages)


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


def read_request(path: str, doc: dict[str, Any]) -> Chat:
    """The request at `path` (one of PATHS) as a `Chat`; TranslateError when it cannot be."""
    for name in ("tools", "functions", "format", "response_format", "images"):
        if doc.get(name):
            raise Unsupported(f"the cloud fallback does not send {name!r}")
    if path == V1_CHAT:
        options = doc
        stream = doc.get("stream") is True
        limit = doc.get("max_completion_tokens", doc.get("max_tokens"))
        usage = doc.get("stream_options")
        include_usage = isinstance(usage, dict) and usage.get("include_usage") is True
    else:
        options = doc.get("options") or {}
        if not isinstance(options, dict):
            raise TranslateError("options must be an object")
        stream = doc.get("stream") is not False  # Ollama streams unless told not to
        limit = options.get("num_predict")
        include_usage = False
    system: list[str] = []
    messages: list[dict[str, str]] = []
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
            ):
                raise TranslateError("each message needs a role: system, user or assistant")
            if message.get("images") or message.get("tool_calls"):
                raise Unsupported("the cloud fallback does not send images or tool calls")
            text = _text(message.get("content"))
            if message["role"] in ("system", "developer"):
                system.append(text)
            else:
                messages.append({"role": message["role"], "content": text})
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
    else:
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
    for choice in doc.get("choices") or ():
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str) and delta["content"]:
            reading.texts.append(delta["content"])
        if choice.get("finish_reason"):
            reading.reason = str(choice["finish_reason"])
    usage = doc.get("usage")
    if isinstance(usage, dict):
        reading.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        reading.completion_tokens = int(usage.get("completion_tokens") or 0)


def read_anthropic(name: str, data: str, reading: Reading) -> None:
    """One messages-stream event into `reading`."""
    doc = _json(data)
    kind = doc.get("type", name)
    if kind == "error":
        raise CloudStreamError(_error_message(doc))
    if kind == "message_start":
        usage = (doc.get("message") or {}).get("usage") or {}
        reading.prompt_tokens = int(usage.get("input_tokens") or 0)
        reading.completion_tokens = int(usage.get("output_tokens") or 0)
    elif kind == "content_block_delta":
        delta = doc.get("delta") or {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            reading.texts.append(str(delta["text"]))
    elif kind == "message_delta":
        reason = (doc.get("delta") or {}).get("stop_reason")
        if reason:
            reading.reason = _ANTHROPIC_REASONS.get(reason, str(reason))
        usage = doc.get("usage") or {}
        if "output_tokens" in usage:
            reading.completion_tokens = int(usage["output_tokens"] or 0)
    elif kind == "message_stop":
        reading.ended = True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _line(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc) + b"\n"


def _sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


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
        self._text += texts
        if not self.chat.stream:
            return b""
        return b"".join(self._chunk(t) for t in texts)

    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens as the cloud counted them; without its numbers
        (a provider that leaves usage out, an answer cut short before its final count),
        about four characters a token, so that nothing spent goes uncounted."""
        r = self.reading
        prompt = r.prompt_tokens if r.prompt_tokens is not None else -(-self.chat.chars() // 4)
        estimate = -(-sum(map(len, self._text)) // 4)
        if r.completion_tokens is None:
            return prompt, estimate
        return prompt, r.completion_tokens if r.ended else max(r.completion_tokens, estimate)

    def finish(self) -> bytes:
        """The end of the answer; CloudStreamError when the cloud never ended it."""
        r = self.reading
        if not r.ended and r.reason is None:
            raise CloudStreamError("the cloud's answer ended before it was complete")
        reason = r.reason or "stop"
        prompt, completion = self.tokens()
        elapsed = time.monotonic_ns() - self._started
        if self.path == V1_CHAT:
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            if not self.chat.stream:
                return orjson.dumps(
                    {
                        "id": self._id,
                        "object": "chat.completion",
                        "created": self._created,
                        "model": self.model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "".join(self._text)},
                                "finish_reason": reason,
                            }
                        ],
                        "usage": usage,
                    }
                )
            out = _sse(self._v1_chunk({}, reason))
            if self.chat.include_usage:
                out += _sse({**self._v1_chunk(None, None), "choices": [], "usage": usage})
            return out + b"data: [DONE]\n\n"
        final: dict[str, Any] = {"model": self.model, "created_at": _now()}
        # A stream's last line carries no text: the chunks before it had it all.
        text = "" if self.chat.stream else "".join(self._text)
        if self.path == CHAT:
            final["message"] = {"role": "assistant", "content": text}
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
        return _line(final) if self.chat.stream else orjson.dumps(final)

    def _chunk(self, text: str) -> bytes:
        if self.path == V1_CHAT:
            delta = {"content": text}
            if not self._role_sent:
                delta = {"role": "assistant", "content": text}
                self._role_sent = True
            return _sse(self._v1_chunk(delta, None))
        doc: dict[str, Any] = {"model": self.model, "created_at": _now()}
        if self.path == CHAT:
            doc["message"] = {"role": "assistant", "content": text}
        else:
            doc["response"] = text
        doc["done"] = False
        return _line(doc)

    def _v1_chunk(self, delta: dict[str, str] | None, reason: str | None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "finish_reason": reason}],
        }

"""The cloud translation as a playbook: a client's request in, the cloud API's request
out; the cloud's stream (bytes) in, the client's answer out. Every stream is fed in
one piece, split at every byte offset, and one byte at a time; the answer must say
the same each time."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.cloud_translate import (
    CHAT,
    GENERATE,
    V1_CHAT,
    CloudStreamError,
    TranslateError,
    Translator,
    cloud_body,
    read_request,
)

WORDS = ("Grüße ", "aus ", "der ", "Wolke 🌥")


def openai_stream(reason: str = "stop", usage: bool = True, done: bool = True) -> bytes:
    out = b""
    for word in WORDS:
        choice = {"index": 0, "delta": {"content": word}, "finish_reason": None}
        out += b"data: " + orjson.dumps({"choices": [choice]}) + b"\r\n\r\n"
    out += b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"%b"}]}\n\n' % reason.encode()
    if usage:
        out += b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":4}}\n\n'
    return out + (b"data: [DONE]\n\n" if done else b"")


def anthropic_stream(reason: str = "end_turn") -> bytes:
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 7}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0}),
        ("ping", {"type": "ping"}),
        *(
            (
                "content_block_delta",
                {"type": "content_block_delta", "delta": {"type": "text_delta", "text": w}},
            )
            for w in WORDS
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason},
                "usage": {"output_tokens": 4},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(b"event: %b\ndata: %b\n\n" % (n.encode(), orjson.dumps(d)) for n, d in events)


def splits(raw: bytes) -> list[list[bytes]]:
    return [
        [raw],
        *([raw[:i], raw[i:]] for i in range(1, len(raw), 7)),
        [raw[i : i + 1] for i in range(len(raw))],
    ]


# Fields that say when, not what: left out of the comparison.
_CLOCK = {"created_at", "created", "id", "total_duration", "eval_duration"}


def answer(api: str, path: str, request: dict[str, Any], pieces: list[bytes]) -> list[Any]:
    """What the client gets, as JSON documents (one per line, SSE event or body)."""
    translator = Translator(api, path, read_request(path, request), "cloud-m")  # type: ignore[arg-type]
    out = b"".join(translator.feed(p) for p in pieces) + translator.finish()
    if translator.content_type.startswith("text/event-stream"):
        docs: list[Any] = []
        for block in out.decode().split("\n\n"):
            if block:
                assert block.startswith("data: ")
                data = block[6:]
                docs.append(data if data == "[DONE]" else orjson.loads(data))
    else:
        docs = [orjson.loads(line) for line in out.splitlines()]
    return [
        {k: v for k, v in d.items() if k not in _CLOCK} if isinstance(d, dict) else d for d in docs
    ]


FINAL_COUNTS = {
    "done": True,
    "done_reason": "stop",
    "load_duration": 0,
    "prompt_eval_count": 7,
    "prompt_eval_duration": 0,
    "eval_count": 4,
}
TEXT = "".join(WORDS)
CHAT_STREAM = [
    *(
        {"model": "cloud-m", "message": {"role": "assistant", "content": w}, "done": False}
        for w in WORDS
    ),
    {"model": "cloud-m", "message": {"role": "assistant", "content": ""}, **FINAL_COUNTS},
]
V1_CHUNKS = [
    {
        "object": "chat.completion.chunk",
        "model": "cloud-m",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": w} if i == 0 else {"content": w},
                "finish_reason": None,
            }
        ],
    }
    for i, w in enumerate(WORDS)
]
V1_END = {
    "object": "chat.completion.chunk",
    "model": "cloud-m",
    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
}
V1_USAGE = {
    "object": "chat.completion.chunk",
    "model": "cloud-m",
    "choices": [],
    "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
}
MESSAGES = [{"role": "user", "content": "hi"}]

# (request path, client's request, what the client gets from either API's stream)
PLAYBOOK: list[tuple[str, dict[str, Any], list[Any]]] = [
    (CHAT, {"messages": MESSAGES}, CHAT_STREAM),
    (
        CHAT,
        {"messages": MESSAGES, "stream": False},
        [{"model": "cloud-m", "message": {"role": "assistant", "content": TEXT}, **FINAL_COUNTS}],
    ),
    (
        GENERATE,
        {"prompt": "hi"},
        [
            *({"model": "cloud-m", "response": w, "done": False} for w in WORDS),
            {"model": "cloud-m", "response": "", **FINAL_COUNTS},
        ],
    ),
    (
        GENERATE,
        {"prompt": "hi", "stream": False},
        [{"model": "cloud-m", "response": TEXT, **FINAL_COUNTS}],
    ),
    (V1_CHAT, {"messages": MESSAGES, "stream": True}, [*V1_CHUNKS, V1_END, "[DONE]"]),
    (
        V1_CHAT,
        {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
        [*V1_CHUNKS, V1_END, V1_USAGE, "[DONE]"],
    ),
    (
        V1_CHAT,
        {"messages": MESSAGES},
        [
            {
                "object": "chat.completion",
                "model": "cloud-m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": TEXT},
                        "finish_reason": "stop",
                    }
                ],
                "usage": V1_USAGE["usage"],
            }
        ],
    ),
]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize(("path", "request_doc", "expected"), PLAYBOOK)
def test_playbook(api: str, path: str, request_doc: dict[str, Any], expected: list[Any]) -> None:
    raw = openai_stream() if api == "openai" else anthropic_stream()
    for pieces in splits(raw):
        assert answer(api, path, request_doc, pieces) == expected


def test_the_length_limit_and_anthropic_reasons_read_as_ollama_says_them() -> None:
    for api, raw in (
        ("openai", openai_stream("length")),
        ("anthropic", anthropic_stream("max_tokens")),
    ):
        (final,) = answer(api, CHAT, {"messages": MESSAGES, "stream": False}, [raw])
        assert final["done_reason"] == "length"


def test_without_the_clouds_usage_tokens_are_estimated_not_zero() -> None:
    translator = Translator("openai", CHAT, read_request(CHAT, {"messages": MESSAGES}), "m")
    translator.feed(openai_stream(usage=False))
    translator.finish()
    assert translator.tokens() == (1, 6)  # "hi": 1; 22 characters of answer: 6


def test_an_error_event_or_a_cut_stream_is_an_error() -> None:
    chat = read_request(CHAT, {"messages": MESSAGES})
    translator = Translator("anthropic", CHAT, chat, "m")
    error = b'event: error\ndata: {"type":"error","error":{"message":"Overloaded"}}\n\n'
    with pytest.raises(CloudStreamError, match="Overloaded"):
        translator.feed(anthropic_stream()[:200] + error)
    translator = Translator("openai", CHAT, chat, "m")
    translator.feed(openai_stream()[:150])
    with pytest.raises(CloudStreamError, match="ended before"):
        translator.finish()


def _events(*docs: Any) -> bytes:
    return b"".join(b"data: " + orjson.dumps(d) + b"\n\n" for d in docs)


_OPENAI_END = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
_ANTHROPIC_END = {"type": "message_stop"}
# Events of another shape than the API's (an OpenAI-compatible server behind
# `base_url`, a gateway): "" where the answer reads on (the field read as absent),
# else what the CloudStreamError says (what the client would read is not there).
_ODD_EVENTS: list[tuple[str, Any, str]] = [
    ("openai", {"choices": 5}, "choices that are not a list"),
    ("openai", {"choices": ["x"]}, "a choice that is not an object"),
    ("openai", {"choices": [{"delta": "x"}]}, "a delta that is not an object"),
    ("openai", {"choices": [{"delta": {"tool_calls": 5}}]}, "tool calls that are not a list"),
    ("openai", {"choices": [{"delta": {"tool_calls": [{"index": "a"}]}}]}, "tool call index"),
    (
        "openai",
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": "f"}]}}]},
        "a function that is not an object",
    ),
    ("openai", {"choices": [{"delta": {}, "finish_reason": 5}]}, ""),
    ("openai", {"choices": [], "usage": [1]}, ""),
    ("openai", {"choices": [], "usage": {"prompt_tokens": "many", "completion_tokens": 1.5}}, ""),
    ("openai", {"choices": [], "usage": {"prompt_tokens": -1000, "completion_tokens": -5}}, ""),
    ("openai", {"choices": [], "usage": {"prompt_tokens": 10**19, "completion_tokens": True}}, ""),
    ("anthropic", {"type": "message_start", "message": "x"}, ""),
    ("anthropic", {"type": "message_start", "message": {"usage": [1]}}, ""),
    ("anthropic", {"type": "message_start", "message": {"usage": {"input_tokens": "x"}}}, ""),
    ("anthropic", {"type": "message_start", "message": {"usage": {"input_tokens": -9}}}, ""),
    ("anthropic", {"type": "content_block_delta", "delta": "x"}, "a delta that is not an object"),
    ("anthropic", {"type": "message_delta", "delta": [1], "usage": {"output_tokens": 3}}, ""),
    ("anthropic", {"type": "message_delta", "delta": {}, "usage": "output_tokens"}, ""),
    ("anthropic", {"type": "message_delta", "delta": {"stop_reason": [1]}}, ""),
    ("anthropic", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 2.5}}, ""),
    ("anthropic", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 10**19}}, ""),
    ("anthropic", {"type": 5}, ""),
]


@pytest.mark.parametrize(("api", "event", "error"), _ODD_EVENTS)
def test_an_event_of_another_shape_is_read_or_is_the_clouds_error(
    api: str, event: Any, error: str
) -> None:
    """Never another exception (a handler's 500, a stream cut without its error line);
    a count that is no whole number of tokens in int64 is absent, and estimated: a
    negative one would give budget back, a huge one no sink can store."""
    end = _OPENAI_END if api == "openai" else _ANTHROPIC_END
    translator = Translator(api, CHAT, read_request(CHAT, {"messages": MESSAGES}), "m")
    if error:
        with pytest.raises(CloudStreamError, match=error):
            translator.feed(_events(event, end))
        return
    translator.feed(_events(event, end))
    translator.finish()
    for count in translator.tokens():
        assert type(count) is int and 0 <= count < 1 << 63
    assert translator.reading.reason in (None, "stop")


def test_requests_become_each_apis_own() -> None:
    doc = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Why "}, {"type": "text", "text": "blue?"}],
            },
        ],
        "options": {"num_predict": 50, "temperature": 0, "stop": "\n\n"},
    }
    chat = read_request(CHAT, doc)
    assert cloud_body("openai", chat, "gpt", 4096) == {
        "model": "gpt",
        "stream": True,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Why blue?"},
        ],
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "stop": ["\n\n"],
        "temperature": 0.0,
    }
    assert cloud_body("anthropic", chat, "claude", 4096) == {
        "model": "claude",
        "stream": True,
        "messages": [{"role": "user", "content": "Why blue?"}],
        "max_tokens": 50,
        "system": "Be brief.",
        "stop_sequences": ["\n\n"],
        "temperature": 0.0,
    }
    # Ollama's -1 is no limit: Anthropic, which needs one, gets the configured default.
    generate = read_request(
        GENERATE, {"prompt": "hi", "system": "S", "options": {"num_predict": -1}}
    )
    body = cloud_body("anthropic", generate, "claude", 1234)
    assert (body["max_tokens"], body["system"]) == (1234, "S")
    v1 = read_request(V1_CHAT, {"messages": MESSAGES, "max_tokens": 9, "top_p": 0.5})
    assert (v1.stream, v1.max_tokens, v1.top_p) == (False, 9, 0.5)


@pytest.mark.parametrize(
    ("path", "doc", "message"),
    [
        (CHAT, {"messages": []}, "needs messages"),
        (CHAT, {"messages": [{"role": "system", "content": "x"}]}, "needs a user message"),
        (CHAT, {"messages": [{"role": "tool", "content": "x"}]}, "after the call it answers"),
        (CHAT, {"messages": [{"role": "function", "content": "x"}]}, "role"),
        (V1_CHAT, {"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
        (CHAT, {"messages": MESSAGES, "tools": [{"type": "function"}]}, "function with a name"),
        (CHAT, {"messages": MESSAGES, "format": "yaml"}, "format must be"),
        (V1_CHAT, {"messages": MESSAGES, "response_format": {"type": "x"}}, "response_format"),
        (
            CHAT,
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
                    }
                ]
            },
            "arguments must be an object",
        ),
        (GENERATE, {"prompt": ""}, "needs a prompt"),
        (CHAT, {"messages": MESSAGES, "options": {"temperature": "hot"}}, "temperature"),
        (V1_CHAT, {"messages": MESSAGES, "stop": 3}, "stop"),
        (GENERATE, {"prompt": "x", "tools": [{"type": "function"}]}, "'tools'"),
        (GENERATE, {"prompt": "x", "images": ["aGk="]}, "'images'"),
        (CHAT, {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "images"),
        (
            V1_CHAT,
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "only text",
        ),
    ],
)
def test_requests_the_cloud_cannot_take_are_the_clients_fault(
    path: str, doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(TranslateError, match=message):
        read_request(path, doc)


def openai_call_stream(tail: str = 'üße"}') -> bytes:
    """A call of `f` with its arguments cut mid-string, as OpenAI streams one."""
    pieces = [
        {
            "index": 0,
            "id": "call_x",
            "type": "function",
            "function": {"name": "f", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": '{"q": "Gr'}},
        {"index": 0, "function": {"arguments": tail}},
    ]
    out = b""
    for piece in pieces:
        choice = {"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}
        out += b"data: " + orjson.dumps({"choices": [choice]}) + b"\n\n"
    out += b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n'
    out += b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'
    return out + b"data: [DONE]\n\n"


OLLAMA_CALL = {"id": "call_x", "function": {"index": 0, "name": "f", "arguments": {"q": "Grüße"}}}
TOOL_REQUEST = {"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}]}
CALL_COUNTS = {**FINAL_COUNTS, "eval_count": 3}


@pytest.mark.parametrize(
    ("path", "request_doc", "expected"),
    [
        (
            CHAT,
            TOOL_REQUEST,
            [
                {
                    "model": "cloud-m",
                    "message": {"role": "assistant", "content": "", "tool_calls": [OLLAMA_CALL]},
                    "done": False,
                },
                {
                    "model": "cloud-m",
                    "message": {"role": "assistant", "content": ""},
                    **CALL_COUNTS,
                },
            ],
        ),
        (
            CHAT,
            {**TOOL_REQUEST, "stream": False},
            [
                {
                    "model": "cloud-m",
                    "message": {"role": "assistant", "content": "", "tool_calls": [OLLAMA_CALL]},
                    **CALL_COUNTS,
                }
            ],
        ),
        (
            V1_CHAT,
            {**TOOL_REQUEST, "stream": False},
            [
                {
                    "object": "chat.completion",
                    "model": "cloud-m",
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": None,
                                "tool_calls": [
                                    {
                                        "id": "call_x",
                                        "type": "function",
                                        "function": {"name": "f", "arguments": '{"q": "Grüße"}'},
                                    }
                                ],
                            },
                            "finish_reason": "tool_calls",
                        }
                    ],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
                }
            ],
        ),
    ],
)
def test_tool_calls_read_whole_however_the_stream_is_cut(
    path: str, request_doc: dict[str, Any], expected: list[Any]
) -> None:
    for pieces in splits(openai_call_stream()):
        assert answer("openai", path, request_doc, pieces) == expected


def test_a_v1_stream_passes_tool_call_pieces_on_as_they_come() -> None:
    for pieces in splits(openai_call_stream()):
        chunks = answer("openai", V1_CHAT, {**TOOL_REQUEST, "stream": True}, pieces)
        deltas = [c["choices"][0]["delta"] for c in chunks[:-2]]
        assert deltas[0]["role"] == "assistant"
        calls = [t for d in deltas for t in d.get("tool_calls", ())]
        assert calls[0]["id"] == "call_x" and calls[0]["function"]["name"] == "f"
        arguments = "".join(t["function"]["arguments"] for t in calls)
        assert orjson.loads(arguments) == {"q": "Grüße"}
        assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
        assert chunks[-1] == "[DONE]"


def test_arguments_that_are_not_an_object_are_the_clouds_error() -> None:
    translator = Translator("openai", CHAT, read_request(CHAT, TOOL_REQUEST), "m")
    translator.feed(openai_call_stream(tail="üße"))  # the object never closed
    with pytest.raises(CloudStreamError, match="not a JSON object"):
        translator.finish()


def test_tools_and_formats_go_to_openai_only() -> None:
    chat = read_request(CHAT, {**TOOL_REQUEST, "format": {"type": "object"}})
    assert chat.openai_only() == "tools"
    body = cloud_body("openai", chat, "gpt", 4096)
    assert body["tools"] == TOOL_REQUEST["tools"]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": {"type": "object"}},
    }
    assert read_request(GENERATE, {"prompt": "x", "format": "json"}).openai_only() == "a format"
    assert read_request(CHAT, {"messages": MESSAGES}).openai_only() is None
    with pytest.raises(AssertionError):
        cloud_body("anthropic", chat, "claude", 4096)

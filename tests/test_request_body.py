"""One reading of request bodies (`selector_model.request_body`) in every API shape, and
its users agreeing: `auto` sends images only to vision models whatever shape carries
them, the prompt limits count every shape's text, usage events hash the same texts."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.auto import EMBEDDING_ONLY
from proxy.config_serving import Limits
from proxy.usage_prompt import prompt_text
from selector_model import request_body
from tests.conftest import FROZEN
from tests.support import PIXEL_PNG, Emulator, Proxy, ServerThread
from tests.test_auto import selector

DATA_URL = "data:image/png;base64," + PIXEL_PNG
ANTHROPIC_IMAGE = {
    "type": "image",
    "source": {"type": "base64", "media_type": "image/png", "data": PIXEL_PNG},
}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@dataclass
class Shape:
    doc: dict[str, Any]
    texts: list[str]
    images: bool = False
    tools: int = 0
    suffix: str = ""
    thinks: bool = False
    max_output: float | None = None
    entries: int | None = None  # the conversation's length, None for none


SHAPES: dict[str, Shape] = {
    "ollama_generate": Shape(
        {
            "system": "S",
            "prompt": "P",
            "suffix": "X",
            "images": [PIXEL_PNG],
            "think": True,
            "options": {"num_predict": 9},
        },
        ["S", "P", "X"],
        images=True,
        suffix="X",
        thinks=True,
        max_output=9,
    ),
    "ollama_chat": Shape(
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "U", "images": [PIXEL_PNG]},
            ],
            "tools": [TOOL],
            "think": "low",
        },
        ["S", "U"],
        images=True,
        tools=1,
        thinks=True,
        entries=2,
    ),
    "ollama_think_false": Shape({"prompt": "P", "think": False}, ["P"]),
    "ollama_embed": Shape({"input": ["a", "b"]}, ["a", "b"], entries=0),
    "ollama_embeddings": Shape({"prompt": "a"}, ["a"]),
    "openai_chat": Shape(
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "S"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "U"},
                        {"type": "image_url", "image_url": {"url": DATA_URL}},
                        {"type": "text", "text": "V"},
                    ],
                },
            ],
            "tools": [TOOL, TOOL],
            "max_completion_tokens": 20,
            "reasoning_effort": "low",
        },
        ["S", "UV"],
        images=True,
        tools=2,
        thinks=True,
        max_output=20,
        entries=2,
    ),
    "openai_reasoning_none": Shape(
        {"messages": [{"role": "user", "content": "U"}], "reasoning_effort": "none"},
        ["U"],
        entries=1,
    ),
    "openai_completions": Shape(
        {"prompt": ["a", "b"], "suffix": "s", "max_tokens": 5},
        ["a", "b", "s"],
        suffix="s",
        max_output=5,
    ),
    "openai_embeddings": Shape({"input": "a"}, ["a"]),
    "anthropic": Shape(
        {
            "system": [{"type": "text", "text": "S1"}, {"type": "text", "text": "S2"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "U"}, ANTHROPIC_IMAGE]},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "R"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "t2",
                            "content": [{"type": "text", "text": "Q"}],
                        },
                    ],
                },
            ],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "thinking": {"type": "enabled", "budget_tokens": 100},
            "max_tokens": 64,
        },
        ["S1S2", "U", "", "RQ"],
        images=True,
        tools=1,
        thinks=True,
        max_output=64,
        entries=3,
    ),
    "anthropic_image_in_tool_result": Shape(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t", "content": [ANTHROPIC_IMAGE]}
                    ],
                }
            ],
            "max_tokens": 8,
        },
        [""],
        images=True,
        max_output=8,
        entries=1,
    ),
    "responses_items": Shape(
        {
            "instructions": "I",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "U"},
                        {"type": "input_image", "image_url": DATA_URL},
                    ],
                },
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": "O"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "A"}]},
            ],
            "reasoning": {"effort": "high"},
            "max_output_tokens": 30,
        },
        ["I", "U", "", "O", "A"],
        images=True,
        thinks=True,
        max_output=30,
        entries=4,
    ),
    "responses_string": Shape({"instructions": "I", "input": "hello"}, ["I", "hello"]),
    # A function call output given as content parts: the text and images the model reads.
    "responses_output_parts": Shape(
        {
            "input": [
                {
                    "type": "function_call_output",
                    "call_id": "c",
                    "output": [
                        {"type": "input_text", "text": "O"},
                        {"type": "input_image", "image_url": DATA_URL},
                    ],
                }
            ]
        },
        ["O"],
        images=True,
        entries=1,
    ),
    "odd_parts": Shape(
        {
            "messages": [
                {"role": 1, "content": [{"type": ["image"]}, {"text": 5, "content": "c"}, 7]},
                {"role": "user", "content": None, "output": {"x": 1}},
                "not an object",
            ],
            "system": [{"type": {}}, "s"],
        },
        ["", "c", ""],
        entries=3,
    ),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_the_reader_finds_what_each_shape_carries(name: str) -> None:
    shape = SHAPES[name]
    doc = shape.doc
    assert list(request_body.texts(doc)) == shape.texts
    assert request_body.has_images(doc) is shape.images
    assert request_body.tool_count(doc) == shape.tools
    assert request_body.suffix(doc) == shape.suffix
    assert (request_body.thinking(doc) is True) is shape.thinks
    assert request_body.max_output_tokens(doc) == shape.max_output
    assert request_body.entry_count(doc) == shape.entries
    assert len(list(request_body.entries(doc))) == (shape.entries or 0)
    # The usage event hashes the same texts.
    assert prompt_text(orjson.dumps(doc)) == "\n".join(shape.texts)


def test_case_variant_keys_are_read_as_go_reads_them() -> None:
    doc = {
        "Messages": [
            {"ROLE": "user", "content": "replaced", "Content": [{"TYPE": "image", "Text": "t"}]}
        ],
        "\u017fystem": "s",  # long s: Go folds it to "S"
        "Thinking": {"Type": "enabled"},
        "options": {"Num_Predict": 5},  # a map to Go: read by exact key
    }
    assert request_body.canonicalize(doc)
    assert list(request_body.texts(doc)) == ["s", "t"]
    assert request_body.has_images(doc) and request_body.thinking(doc) is True
    assert doc["options"] == {"Num_Predict": 5}
    assert request_body.max_output_tokens(doc) is None
    assert not request_body.canonicalize(doc)  # canonical already


# What Ollama refuses as it decodes the body (api.ThinkValue, thinkFromReasoningEffort):
# no thinking asked for, so no model is filtered out for lacking it.
INVALID_THINKING = [
    ("/api/chat", {"think": "yes"}),
    ("/api/chat", {"think": ""}),
    ("/api/chat", {"think": 1}),
    ("/api/generate", {"think": "false"}),
    ("/v1/chat/completions", {"reasoning_effort": "extreme"}),
    ("/v1/chat/completions", {"reasoning_effort": 5}),
    ("/v1/chat/completions", {"reasoning": {"effort": "extreme"}}),
    ("/v1/responses", {"reasoning": {"effort": "extreme"}}),
]
VALID_THINKING = [
    {"think": True},
    {"think": "max"},
    {"think": "low"},
    {"reasoning_effort": "minimal"},
    {"reasoning_effort": "ultra"},
    {"reasoning": {"effort": "xhigh"}},
    {"thinking": {"type": "enabled"}},
]


@pytest.mark.parametrize(("path", "extra"), INVALID_THINKING)
async def test_a_thinking_value_ollama_refuses_gets_its_answer_through_auto(
    servers: ServerThread, path: str, extra: dict[str, Any]
) -> None:
    """A fleet where no model thinks (the demo's): `auto` must not answer "lacks
    thinking" for a value Ollama refuses before it looks at any model; the backend
    answers it, as it answers a client naming a model."""
    emu = Emulator(servers, dataclasses.replace(FROZEN, models=("llama3.2:3b",)))
    prx = Proxy(servers, [emu.url])
    try:
        body: dict[str, Any] = {"stream": False, **extra}
        if path == "/api/generate":
            body["prompt"] = "Hi"
        elif path == "/v1/responses":
            body["input"] = "Hi"
        else:
            body["messages"] = [{"role": "user", "content": "Hi"}]
        async with aiohttp.ClientSession() as http:
            async with http.post(emu.url + path, json={**body, "model": "llama3.2:3b"}) as resp:
                direct = resp.status, await resp.read()
            async with http.post(prx.url + path, json={**body, "model": "auto"}) as resp:
                proxied = resp.status, await resp.read()
        assert direct[0] == 400
        assert proxied == direct
    finally:
        prx.stop()
        emu.stop()


@pytest.mark.parametrize("extra", VALID_THINKING)
def test_thinking_is_asked_for_by_the_values_ollama_takes(extra: dict[str, Any]) -> None:
    assert request_body.thinking(extra) is True
    assert not any(request_body.thinking(doc) is True for _, doc in INVALID_THINKING)


@pytest.fixture
def auto_proxy(servers: ServerThread, emulator: Emulator, tmp_path: Path) -> Iterator[Proxy]:
    prx = Proxy(servers, [emulator.url], selector=selector(tmp_path))
    yield prx
    prx.stop()


VISION_REQUESTS = {
    "/v1/messages": {
        "model": "auto",
        "max_tokens": 16,
        "messages": [
            {"role": "user", "content": [ANTHROPIC_IMAGE, {"type": "text", "text": "What?"}]}
        ],
    },
    "/v1/responses": {
        "model": "auto",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in this picture?"},
                    {"type": "input_image", "image_url": DATA_URL},
                ],
            }
        ],
    },
}


@pytest.mark.parametrize("path", sorted(VISION_REQUESTS))
async def test_auto_sends_images_only_to_vision_models(auto_proxy: Proxy, path: str) -> None:
    body = VISION_REQUESTS[path]
    async with aiohttp.ClientSession() as http:
        async with http.post(
            auto_proxy.url + "/api/autoroute/explain", params={"path": path}, json=body
        ) as resp:
            assert resp.status == 200
            explained = await resp.json()
        async with http.post(auto_proxy.url + path, json=body) as resp:
            assert resp.status == 200, await resp.text()
            chosen = resp.headers["X-Autoroute-Model"]
    assert explained["model"] == chosen == "llava:7b"
    filtered = explained["filtered"]
    # Each other model lacks vision; the embedding models are no candidates at all.
    assert filtered and all(why in ("lacks vision", EMBEDDING_ONLY) for why in filtered.values()), (
        filtered
    )


@pytest.fixture(scope="module")
def limited(servers: ServerThread, emulator: Emulator) -> Iterator[Proxy]:
    prx = Proxy(servers, [emulator.url], limits=Limits(max_messages=3, max_prompt_chars=100))
    yield prx
    prx.stop()


LONG = "x" * 101
OVER_THE_LIMITS = [
    ("/v1/messages", 413, {"system": [{"type": "text", "text": LONG}], "messages": []}),
    (
        "/v1/messages",
        413,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t", "content": LONG}],
                }
            ]
        },
    ),
    ("/v1/responses", 413, {"instructions": LONG, "input": "hi"}),
    (
        "/v1/responses",
        413,
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": LONG}]}]},
    ),
    (
        "/v1/responses",
        413,
        {"input": [{"type": "function_call_output", "call_id": "c", "output": LONG}]},
    ),
    ("/v1/responses", 400, {"input": [{"role": "user", "content": "hi"}] * 4}),
    # Each API reads one of `messages` and `input`: what either carries counts.
    ("/v1/responses", 413, {"messages": [], "input": [{"role": "user", "content": LONG}]}),
    ("/api/chat", 400, {"messages": [], "input": [{"role": "user", "content": "hi"}] * 4}),
]


@pytest.mark.parametrize(("path", "status", "body"), OVER_THE_LIMITS)
async def test_limits_count_anthropic_and_responses_text(
    limited: Proxy, path: str, status: int, body: dict[str, Any]
) -> None:
    doc = {"model": "llama3.1:8b", "max_tokens": 8, **body}
    async with aiohttp.ClientSession() as http, http.post(limited.url + path, json=doc) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
    message = error["message"] if path.startswith("/v1/") else error
    expected = "prompt too long" if status == 413 else "too many messages"
    assert message.startswith(expected)


async def test_an_embedding_batch_is_not_a_conversation(limited: Proxy) -> None:
    doc = {"model": "nomic-embed-text", "input": ["a", "b", "c", "d", "e"]}
    async with aiohttp.ClientSession() as http:
        async with http.post(limited.url + "/api/embed", json=doc) as resp:
            assert resp.status == 200, await resp.text()
            assert len((await resp.json())["embeddings"]) == 5
        doc["input"] = ["x" * 60, "y" * 60]
        async with http.post(limited.url + "/api/embed", json=doc) as resp:
            assert resp.status == 413  # their text is prompt all the same


@pytest.mark.parametrize(
    ("doc", "declines"),
    [
        ({"think": False}, True),
        ({"reasoning_effort": "none"}, True),
        ({"reasoning": {"effort": "none"}}, True),
        ({"thinking": {"type": "disabled"}}, True),
        ({}, False),  # Ollama leaves it to the model, and a thinking model thinks
        ({"think": True}, False),
        ({"think": "low"}, False),
        ({"reasoning_effort": "high"}, False),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, False),
    ],
)
def test_a_request_declines_thinking_only_when_it_says_so(
    doc: dict[str, Any], declines: bool
) -> None:
    assert (request_body.thinking(doc) is False) is declines


@pytest.mark.parametrize(
    ("path", "doc", "thinks"),
    [
        ("/v1/messages", {"Output_Config": {"Effort": " XHigh "}}, True),
        ("/v1/messages", {"output_config": {"effort": "none"}}, None),
        (
            "/v1/messages",
            {"thinking": {"type": "disabled"}, "output_config": {"effort": "high"}},
            False,
        ),
        ("/v1/chat/completions", {"reasoning": None, "reasoning_effort": "low"}, True),
        ("/v1/chat/completions", {"reasoning": {}, "reasoning_effort": "low"}, None),
        ("/v1/responses", {"reasoning_effort": "low"}, None),
        ("/v1/completions", {"think": True}, None),
        ("/api/generate", {"think": "max"}, True),
        ("/api/embed", {"think": True}, None),
    ],
)
def test_thinking_is_read_from_the_fields_of_the_routes_request(
    path: str, doc: dict[str, Any], thinks: bool | None
) -> None:
    """anthropic.FromMessagesRequest takes `output_config.effort` (trimmed, lower-cased)
    where `thinking` says nothing; openai.FromChatRequest reads `reasoning_effort` only
    without `reasoning`; a route whose request has no thinking field reads none."""
    request_body.canonicalize(doc)
    assert request_body.asks(path, doc).thinking is thinks

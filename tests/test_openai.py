"""The `openai` SDK against the proxy's /v1 routes gets what it gets directly."""

from __future__ import annotations

from typing import Any

import openai
import pydantic
import pytest

from tests.support import AUTO_NAMES, PIXEL_PNG, Emulator, Proxy

MODEL = "qwen2.5:7b"
MESSAGES: list[Any] = [{"role": "user", "content": "Why is the sky blue?"}]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="ollama", max_retries=0)


def calls(sdk: openai.OpenAI) -> dict[str, Any]:
    stream = sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    return {
        "chat": sdk.chat.completions.create(model=MODEL, messages=MESSAGES).model_dump(),
        "chat_stream": [c.model_dump() for c in stream],
        "completion": sdk.completions.create(model=MODEL, prompt="Once upon a time").model_dump(),
        "completion_stream": [
            c.model_dump()
            for c in sdk.completions.create(model=MODEL, prompt="Once upon a time", stream=True)
        ],
        "embeddings": sdk.embeddings.create(
            model="nomic-embed-text", input=["a", "b"]
        ).model_dump(),
        "models": [m.model_dump() for m in sdk.models.list() if m.id not in AUTO_NAMES],
        "model": sdk.models.retrieve(MODEL).model_dump(),
    }


def test_openai_sdk_sees_the_same_results(emulator: Emulator, proxy: Proxy) -> None:
    direct = calls(client(emulator.url))
    proxied = calls(client(proxy.url))
    for key in direct:
        assert proxied[key] == direct[key], key
    assert direct["chat"]["choices"][0]["message"]["content"]
    assert len(direct["chat_stream"]) > 2
    assert direct["chat_stream"][-1]["usage"]["completion_tokens"] > 0
    assert len(direct["embeddings"]["data"]) == 2
    assert MODEL in [m["id"] for m in direct["models"]]


def test_openai_errors_keep_their_shape(emulator: Emulator, proxy: Proxy) -> None:
    seen = []
    for url in (emulator.url, proxy.url):
        try:
            client(url).chat.completions.create(model="no-such:model", messages=MESSAGES)
        except openai.NotFoundError as exc:
            seen.append((exc.status_code, exc.body))
    assert len(seen) == 2
    assert seen[0] == seen[1]


def test_chat_logprobs_reach_the_sdk(emulator: Emulator, proxy: Proxy) -> None:
    """FromChatRequest passes logprobs on; ToChatCompletion / toChunk put them in
    `choices[0].logprobs.content`. /v1/completions takes an int (both switch and
    count) that GenerateHandler bounds, and ToCompletion never returns logprobs."""
    sdk = client(proxy.url)
    done = sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, logprobs=True, top_logprobs=3
    )
    choice = done.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    assert all(len(t.top_logprobs) == 3 for t in choice.logprobs.content)
    chunks = list(
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, logprobs=True, stream=True)
    )
    streamed = [c.choices[0] for c in chunks if c.choices and c.choices[0].delta.content]
    assert all(c.logprobs and c.logprobs.content for c in streamed)
    assert [t.token for c in streamed for t in c.logprobs.content] == [  # type: ignore[union-attr]
        c.delta.content for c in streamed
    ]
    assert sdk.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, logprobs=True, top_logprobs=21)
    assert refused.value.body == {
        "message": "top_logprobs must be between 0 and 20",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert (
        sdk.completions.create(model=MODEL, prompt="Once", logprobs=2).choices[0].logprobs is None
    )
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.completions.create(model=MODEL, prompt="Once", logprobs=21)
    assert refused.value.body == {
        "message": "top_logprobs must be between 0 and 20",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


class Person(pydantic.BaseModel):
    name: str
    age: int


def test_responses_take_a_json_schema_and_clients_reasoning_tiers(
    emulator: Emulator, proxy: Proxy
) -> None:
    """openai.FromResponsesRequest: `text.format` json_schema becomes the chat's format
    (what `responses.parse` relies on), and `reasoning.effort` goes through
    thinkFromReasoningEffort as on chat completions (Codex sends "minimal" and
    "xhigh")."""
    sdk = client(proxy.url)
    parsed = sdk.responses.parse(model=MODEL, input="Name someone.", text_format=Person)
    assert isinstance(parsed.output_parsed, Person)
    for effort in ("minimal", "xhigh"):
        answer = sdk.responses.create(
            model="qwen3:8b",
            input="hi",
            reasoning={"effort": effort},  # type: ignore[typeddict-item]
        )
        assert [item.type for item in answer.output] == ["reasoning", "message"]
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="qwen3:8b", input="hi", reasoning={"effort": "extreme"})  # type: ignore[typeddict-item]
    assert refused.value.body == {
        "message": 'invalid reasoning value: "extreme" (must be "minimal", "low", "medium", '
        '"high", "xhigh", "ultra", "max", or "none")',
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_image_urls_are_read_as_ollama_reads_them(emulator: Emulator, proxy: Proxy) -> None:
    """openai.decodeImageURL, for chat completions and the Responses API alike: base64
    data URLs of the types Ollama takes, a web address refused with its own message; an
    image in a Responses input reaches the model as on chat."""
    sdk = client(proxy.url)
    web = "https://example.com/cat.png"
    cases: list[tuple[str, str]] = [
        (web, "image URLs are not currently supported, please use base64 encoded data instead"),
        ("data:image/gif;base64," + PIXEL_PNG, "invalid image input"),
        ("data:image/png;base64,!!!", "invalid image input"),
    ]
    for url, message in cases:
        with pytest.raises(openai.BadRequestError) as chat_refused:
            sdk.chat.completions.create(
                model="llava:7b",
                messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
                ],
            )
        with pytest.raises(openai.BadRequestError) as responses_refused:
            sdk.responses.create(model="llava:7b", input=image_input(url))
        for refused in (chat_refused, responses_refused):
            assert refused.value.body["message"] == message  # type: ignore[index]
    image = "data:image/png;base64," + PIXEL_PNG
    assert sdk.responses.create(model="llava:7b", input=image_input(image)).output_text
    with pytest.raises(openai.InternalServerError) as blind:
        sdk.responses.create(model=MODEL, input=image_input(image))
    assert blind.value.body["message"] == "this model is missing data required for image input"  # type: ignore[index]


def image_input(url: str) -> Any:
    return [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": url, "detail": "auto"},
            ],
        }
    ]


def test_responses_echo_a_whole_number_beyond_64_bits_as_go_writes_it(
    emulator: Emulator, proxy: Proxy
) -> None:
    """ToResponse echoes the request's tools, whose parameters are a map[string]any:
    1e20, and the integer 10**20 (as Python's json writes it), are a float64 there,
    which json.Marshal writes in full."""
    tools: Any = [
        {
            "type": "function",
            "name": "pick",
            "parameters": {
                "type": "object",
                "properties": {"bound": {"type": "number", "enum": [1e20, -1e20, 0.5, 10**20]}},
            },
            "strict": False,
        }
    ]
    for url in (emulator.url, proxy.url):
        raw = client(url).responses.with_raw_response.create(model=MODEL, input="hi", tools=tools)
        assert (
            b'"enum":[100000000000000000000,-100000000000000000000,0.5,100000000000000000000]'
            in raw.content
        )
        echoed = raw.parse().tools[0]
        assert echoed.type == "function"
        assert echoed.parameters == tools[0]["parameters"]


CUT_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("chat.completions", {"messages": MESSAGES}),
    ("completions", {"prompt": "Once", "stream_options": {"include_usage": True}}),
    ("responses", {"input": "Why is the sky blue?"}),
]


@pytest.mark.parametrize(("api", "kwargs"), CUT_CALLS, ids=[a for a, _ in CUT_CALLS])
def test_a_stream_the_backend_cuts_ends_as_ollamas_openai_writers_end_a_failed_one(
    own_emulator: Emulator, own_proxy: Proxy, api: str, kwargs: dict[str, Any]
) -> None:
    """A backend lost after a stream's first event: the client reads the stream as
    Ollama's OpenAI layer writes one whose answer failed after it began. Its writers
    read streamResponse's `{"error"}` line as a response of nothing: ChatWriter and
    CompleteWriter write a chunk of it (no model, an empty delta or text, the stream's
    id; the role went out on the first chunk; the zero usage a completion chunk carries
    when asked for), the Responses converter no event; then the stream stops, with no
    finish chunk and no `[DONE]`. The SDK raises nothing, as against Ollama."""
    own_emulator.state.fault = "close_early"
    sdk = client(own_proxy.url)
    create = getattr(sdk, api.split(".")[0])
    if api == "chat.completions":
        create = create.completions
    events = list(create.create(model=MODEL, stream=True, **kwargs))
    first, *rest = (e.model_dump(mode="json", exclude_unset=True) for e in events)
    if api == "responses":
        assert rest == []
        return
    (last,) = rest
    if api == "chat.completions":
        nothing = {"index": 0, "delta": {"content": ""}, "finish_reason": None}
        assert last == {**first, "model": "", "choices": [nothing]}
    else:
        nothing = {"text": "", "index": 0, "finish_reason": None}
        assert last == {**first, "created": last["created"], "model": "", "choices": [nothing]}
        assert last["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

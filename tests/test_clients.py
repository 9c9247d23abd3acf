"""The official `ollama` Python client gets the same results through the proxy as
directly, sync and async."""

from __future__ import annotations

import base64
from typing import Any

import ollama
import pytest

from tests.support import AUTO_NAMES, PIXEL_PNG, WEATHER_TOOLS, Emulator, Proxy

MODEL = "qwen2.5:7b"
PIXEL = base64.b64decode(PIXEL_PNG)


def dump(value: Any) -> Any:
    if isinstance(value, list):
        return [dump(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return value


def calls(client: ollama.Client) -> dict[str, Any]:
    """Everything a user does with the client, as plain data."""
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    return {
        "list": [m for m in dump(client.list())["models"] if m["model"] not in AUTO_NAMES],
        "show": dump(client.show(MODEL)),
        "generate": dump(client.generate(model=MODEL, prompt="Hello")),
        "generate_stream": dump(list(client.generate(model=MODEL, prompt="Hello", stream=True))),
        "chat": dump(client.chat(model=MODEL, messages=messages)),
        "chat_stream": dump(list(client.chat(model=MODEL, messages=messages, stream=True))),
        "chat_tools": dump(
            client.chat(
                model=MODEL,
                messages=[{"role": "user", "content": "Weather in Paris?"}],
                tools=WEATHER_TOOLS,
            )
        ),
        "chat_image": dump(
            client.chat(
                model="llava:7b",
                messages=[{"role": "user", "content": "What is this?", "images": [PIXEL]}],
            )
        ),
        "chat_think": dump(client.chat(model="qwen3:8b", messages=messages, think=True)),
        "embed": dump(client.embed(model="nomic-embed-text", input=["one", "two"])),
        "pull": dump(list(client.pull(MODEL, stream=True))),
    }


def test_sync_client_sees_the_same_results(emulator: Emulator, proxy: Proxy) -> None:
    direct = calls(ollama.Client(host=emulator.url))
    proxied = calls(ollama.Client(host=proxy.url))
    for key in direct:
        assert proxied[key] == direct[key], key
    # The calls really did something: spot-check their content.
    assert any(m["model"] == MODEL for m in direct["list"])
    assert len(direct["generate_stream"]) > 2 and direct["generate_stream"][-1]["done"]
    tool_call = direct["chat_tools"]["message"]["tool_calls"][0]["function"]
    assert tool_call["name"] == "get_weather" and isinstance(tool_call["arguments"], dict)
    assert direct["chat_think"]["message"]["thinking"]
    assert len(direct["embed"]["embeddings"]) == 2
    assert [p["status"] for p in direct["pull"]][-1] == "success"


def test_ps_through_the_proxy(emulator: Emulator, proxy: Proxy) -> None:
    client = ollama.Client(host=proxy.url)
    client.generate(model=MODEL, prompt="load me")
    names = [m.model for m in client.ps().models]
    assert MODEL in names
    assert names == [m.model for m in ollama.Client(host=emulator.url).ps().models]


async def test_async_client_streams_the_same_chunks(emulator: Emulator, proxy: Proxy) -> None:
    async def run(host: str) -> list[Any]:
        client = ollama.AsyncClient(host=host)
        chunks = [
            dump(c)
            async for c in await client.chat(
                model=MODEL, messages=[{"role": "user", "content": "Count to five"}], stream=True
            )
        ]
        chunks.append(dump(await client.generate(model=MODEL, prompt="Hello")))
        chunks.append(dump(await client.embed(model="nomic-embed-text", input="x")))
        chunks.append(dump(await client.show("nomic-embed-text")))
        return chunks

    direct = await run(emulator.url)
    assert await run(proxy.url) == direct
    assert direct[0]["message"]["role"] == "assistant"


def test_create_copy_delete_through_the_proxy(own_emulator: Emulator, own_proxy: Proxy) -> None:
    client = ollama.Client(host=own_proxy.url)
    progress = [
        p.status
        for p in client.create(
            model="pirate:latest", from_=MODEL, system="Talk like a pirate.", stream=True
        )
    ]
    assert progress[-1] == "success"
    assert "pirate:latest" in [m.model for m in ollama.Client(host=own_emulator.url).list().models]
    client.copy("pirate:latest", "pirate2:latest")
    assert client.show("pirate2:latest").details is not None
    client.delete("pirate2:latest")
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("pirate2:latest")
    assert missing.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as gone:
        client.delete("pirate2:latest")
    assert gone.value.status_code == 404


def test_errors_reach_the_client_as_ollama_errors(emulator: Emulator, proxy: Proxy) -> None:
    for host in (emulator.url, proxy.url):
        with pytest.raises(ollama.ResponseError) as error:
            ollama.Client(host=host).chat(model="no-such:model", messages=[])
        assert error.value.status_code == 404
        assert "not found" in error.value.error


def test_logprobs_reach_the_client(emulator: Emulator, proxy: Proxy) -> None:
    """`logprobs` / `top_logprobs` (Ollama 0.12.11 on): one entry per generated token,
    in the chunk that carries the token, all of them in a whole answer."""
    client = ollama.Client(host=proxy.url)
    answer = client.generate(model=MODEL, prompt="Hello", logprobs=True, top_logprobs=2)
    assert answer.logprobs is not None and len(answer.logprobs) == answer.eval_count
    assert "".join(p.token for p in answer.logprobs) == answer.response
    for entry in answer.logprobs:
        assert entry.logprob <= 0
        assert entry.top_logprobs is not None and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    chunks = list(
        client.chat(model="qwen3:8b", messages=messages, stream=True, think=True, logprobs=True)
    )
    tokens = [c.message.thinking or c.message.content for c in chunks[:-1]]
    assert [p.token for c in chunks[:-1] for p in c.logprobs or []] == tokens
    assert all(p.top_logprobs is None for c in chunks for p in c.logprobs or [])
    assert chunks[-1].logprobs is None
    # Without `logprobs` there are none, and top_logprobs is bounded as Ollama bounds it.
    assert client.chat(model=MODEL, messages=messages).logprobs is None
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model=MODEL, messages=messages, logprobs=True, top_logprobs=21)
    assert refused.value.status_code == 400
    assert refused.value.error == "top_logprobs must be between 0 and 20"


def test_a_backend_dying_mid_stream_is_an_error_the_client_raises(
    own_emulator: Emulator, own_proxy: Proxy
) -> None:
    """The stream's chunks up to the failure parse as what the client asked for, and
    the proxy's closing `{"error": ...}` line is raised as Ollama's client raises it."""
    own_emulator.state.fault = "close_early"
    client = ollama.Client(host=own_proxy.url)
    for chunks in (
        client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True),
        client.generate(model=MODEL, prompt="hi", stream=True),
    ):
        seen: list[Any] = []
        with pytest.raises(ollama.ResponseError) as failed:
            seen.extend(chunks)
        assert [c.model for c in seen] == [MODEL]
        assert "connection closed by backend" in failed.value.error


def test_a_whole_answer_cut_short_fails_in_the_client_as_from_the_backend(
    own_emulator: Emulator, own_proxy: Proxy
) -> None:
    """An answer asked for whole that the backend stops writing inside its length
    reaches the client cut as it was: the client raises what it raises directly, not a
    body that is no JSON (a stream's error line after part of one)."""
    own_emulator.state.fault = "close_early"
    raised: list[str] = []
    for url in (own_emulator.url, own_proxy.url):
        client = ollama.Client(host=url)
        with pytest.raises(Exception) as failed:
            client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        raised.append(type(failed.value).__name__)
    assert raised[0] not in ("JSONDecodeError", "ResponseError")
    assert raised[1] == raised[0]


def test_a_tool_schema_with_a_whole_number_beyond_64_bits_is_served(
    emulator: Emulator, proxy: Proxy
) -> None:
    """A schema number such as 1e20 is a float64 to Ollama, which json.Marshal writes
    in full (`100000000000000000000`) wherever it writes the tools again: Ollama
    answers the chat, directly and through the proxy alike."""
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "pick",
                "description": "Pick a bound",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "bound": {
                            "type": "number",
                            "description": "The bound",
                            "enum": [1e20],
                        }
                    },
                },
            },
        }
    ]
    messages = [{"role": "user", "content": "Pick one"}]
    answers = [
        ollama.Client(host=host).chat(model=MODEL, messages=messages, tools=tools).model_dump()
        for host in (emulator.url, proxy.url)
    ]
    assert answers[0] == answers[1]
    call = answers[0]["message"]["tool_calls"][0]["function"]
    assert call == {"name": "pick", "arguments": {"bound": 1e20}}


def test_create_from_a_model_not_yet_pulled_pulls_it(
    own_emulator: Emulator, own_proxy: Proxy
) -> None:
    """CreateHandler's parseFromModel pulls a `from` model it does not have
    (`ollama create` from a library model never pulled); one the registry lacks fails
    that pull: the stream's error line, or without streaming waitForStream's 500."""
    for host in (own_emulator.url, own_proxy.url):
        client = ollama.Client(host=host)
        client.delete("mistral:7b")
        progress = [p.status for p in client.create(model="mine", from_="mistral:7b", stream=True)]
        assert progress[0] == "pulling manifest"
        assert progress.count("success") == 2 and progress[-1] == "success"
        names = [m.model for m in client.list().models]
        assert "mistral:7b" in names and "mine:latest" in names
        seen: list[Any] = []
        with pytest.raises(ollama.ResponseError) as failed:
            seen.extend(client.create(model="other", from_="no-such-model:1b", stream=True))
        assert [p.status for p in seen] == ["pulling manifest"]
        assert failed.value.error == "pull model manifest: file does not exist"
        with pytest.raises(ollama.ResponseError) as whole:
            client.create(model="other", from_="no-such-model:1b")
        assert whole.value.status_code == 500
        assert whole.value.error == "pull model manifest: file does not exist"


def test_create_quantizes_only_what_ollama_can(own_emulator: Emulator, own_proxy: Proxy) -> None:
    """createModel parses the type (ggml.ParseFileType) and quantizes only F16, BF16 and
    F32 weights: other weights, or an unknown type, fail the create with a gin.H error
    without a status (a 500 without streaming)."""
    for host in (own_emulator.url, own_proxy.url):
        client = ollama.Client(host=host)
        with pytest.raises(ollama.ResponseError) as quantized:
            client.create(model="q8", from_=MODEL, quantize="q8_0")
        assert quantized.value.status_code == 500
        assert quantized.value.error == (
            "quantization is only supported for F16, BF16 and F32 models"
        )
        with pytest.raises(ollama.ResponseError) as unknown:
            list(client.create(model="q9", from_="nomic-embed-text", quantize="q9", stream=True))
        assert unknown.value.error == (
            "unsupported quantization type Q9 - supported types are F32, F16, Q4_K_S, Q4_K_M, Q8_0"
        )
        names = [m.model for m in client.list().models]
        assert "q8:latest" not in names and "q9:latest" not in names


def test_show_describes_a_created_model_as_ollama_does(
    own_emulator: Emulator, own_proxy: Proxy
) -> None:
    """CreateHandler's setParameters keeps the base's parameters the request does not
    name (a `stop` list replaces the base's), setLicense adds a license to the base's,
    and /api/show writes the Modelfile with parser.Command's quoting: a value quoted
    only when it has a newline or an outer space (\"\"\" when it has a quote too)."""
    for host in (own_emulator.url, own_proxy.url):
        client = ollama.Client(host=host)
        base = client.show(MODEL)
        assert base.template is not None and base.license is not None
        client.create(
            model="pirate",
            from_=MODEL,
            system="Talk like a pirate.",
            parameters={"temperature": 0.1, "stop": ["arr", "<|im_end|>"]},
            license="MIT",
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "arr"}],
        )
        shown = client.show("pirate")
        assert shown.parameters is not None
        assert sorted(shown.parameters.splitlines()) == [
            'stop                           "<|im_end|>"',
            'stop                           "arr"',
            "temperature                    0.1",
        ]
        assert shown.license == base.license + "\nMIT"
        lines = (shown.modelfile or "").splitlines()
        template = '"""' if '"' in base.template else '"'
        assert f"TEMPLATE {template}{base.template.splitlines()[0]}" in lines
        for line in (
            "SYSTEM Talk like a pirate.",
            "PARAMETER stop arr",
            "PARAMETER stop <|im_end|>",
            "PARAMETER temperature 0.1",
            "LICENSE MIT",
            "MESSAGE user hi",
            "MESSAGE assistant arr",
        ):
            assert line in lines, line
        assert not any("'" in line for line in lines if line.startswith("PARAMETER"))

"""Bad input gets the status and error shape Ollama gives, through the proxy."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from proxy.config_serving import Limits
from tests.support import (
    Emulator,
    Proxy,
    ServerThread,
    error_text,
    nested_properties,
    raw_request,
)

BAD_BODIES = [
    ("/api/generate", b"{not json"),
    ("/api/generate", b""),
    ("/api/generate", b"[1, 2, 3]"),
    ("/api/generate", b'{"model": 123, "prompt": "x"}'),
    ("/api/generate", b'{"model": "qwen2.5:7b", "prompt": 5}'),
    ("/api/generate", b'{"model": "", "prompt": "x"}'),
    ("/api/chat", b'{"model": "qwen2.5:7b", "messages": "hello"}'),
    ("/api/chat", b"{"),
    ("/api/embed", b'{"model": "nomic-embed-text", "input": {"a": 1}}'),
    ("/api/show", b"null"),
    ("/v1/chat/completions", b"{not json"),
    ("/v1/chat/completions", b'{"model": "qwen2.5:7b", "messages": 7}'),
    ("/v1/embeddings", b""),
    ("/api/pull", b"{not json"),
    ("/api/copy", b'{"source": "qwen2.5:7b", "destination": '),
]


async def raw(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            url + path,
            data=body,
            headers={"Content-Type": "application/json", **(headers or {})},
        ) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


@pytest.mark.parametrize(
    ("path", "body"), BAD_BODIES, ids=[f"{p} {b[:20]!r}" for p, b in BAD_BODIES]
)
async def test_malformed_bodies_get_the_backends_own_error(
    emulator: Emulator, proxy: Proxy, path: str, body: bytes
) -> None:
    direct = await raw(emulator.url, "POST", path, body)
    proxied = await raw(proxy.url, "POST", path, body)
    assert proxied == direct
    assert 400 <= direct[0] < 500
    assert "error" in orjson.loads(direct[2])


# Numbers beyond a double where Ollama decodes them: Go's ParseFloat (into an `any` or a
# float64) or ParseInt (into an int) refuses them, json.Unmarshal names the struct field,
# and Ollama answers 400 with that error.
_ASK = b'"model": "qwen2.5:7b", "prompt": "x", "stream": false'
_CHAT = b'"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "x"}], "stream": false'
BEYOND_A_DOUBLE = [
    (
        "/api/generate",
        b"{" + _ASK + b', "options": {"temperature": 1e400}}',
        "json: cannot unmarshal number 1e400 into Go struct field "
        "GenerateRequest.options of type float64",
    ),
    (
        "/api/chat",
        b"{" + _CHAT + b', "options": {"seed": -1e400}}',
        "json: cannot unmarshal number -1e400 into Go struct field "
        "ChatRequest.options of type float64",
    ),
    (
        "/api/embed",
        b'{"model": "qwen2.5:7b", "input": "x", "keep_alive": 1e400}',
        "json: cannot unmarshal number 1e400 into Go struct field "
        "EmbedRequest.keep_alive of type float64",
    ),
    (
        "/api/generate",
        b"{" + _ASK + b', "top_logprobs": 1' + b"0" * 400 + b"}",
        "json: cannot unmarshal number 1" + "0" * 400 + " into Go struct field "
        "GenerateRequest.top_logprobs of type int",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "message"), BEYOND_A_DOUBLE, ids=[m[-40:] for _, _, m in BEYOND_A_DOUBLE]
)
async def test_a_number_beyond_a_double_gets_ollamas_error(
    emulator: Emulator, proxy: Proxy, path: str, body: bytes, message: str
) -> None:
    """The emulator refuses it as Ollama does; the proxy, which cannot hold it as a
    number, forwards it as written, so the backend's own answer comes back."""
    direct = await raw(emulator.url, "POST", path, body)
    assert direct[0] == 400 and orjson.loads(direct[2]) == {"error": message}
    assert await raw(proxy.url, "POST", path, body) == direct


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
@pytest.mark.parametrize(
    "fmt",
    [
        b"1e400",
        b"[1,-1e400]",
        b"[123456789012345678901234]",
        b"[" * 300 + b"1.5" + b"]" * 300,
        b'[{"a":' * 150 + b"-0.0" + b"}]" * 150,
    ],
    ids=["beyond-a-double", "in-an-array", "beyond-64-bits", "deep-array", "deep-objects"],
)
async def test_a_format_of_no_object_gets_ollamas_invalid_format(
    emulator: Emulator, proxy: Proxy, path: str, fmt: bytes
) -> None:
    """`format` is a json.RawMessage: Go keeps its bytes without reading its numbers,
    at any depth it reads (10,000 levels), and the runner refuses what is neither
    "json" nor a schema object with its 500, naming the bytes."""
    body = b"{" + (_CHAT if path == "/api/chat" else _ASK) + b', "format": ' + fmt + b"}"
    direct = await raw(emulator.url, "POST", path, body)
    quoted = fmt.decode().replace('"', '\\"')  # as Go's %q writes these bytes
    expected = f'invalid format: "{quoted}"; expected "json" or a valid JSON Schema object'
    assert direct[0] == 500 and orjson.loads(direct[2]) == {"error": expected}
    assert await raw(proxy.url, "POST", path, body) == direct


# Integers a double holds but Go's int (64 bits) does not: ParseInt overflows and
# json.Unmarshal refuses them with the number as written (encoding/json literalStore).
BEYOND_AN_INT = [
    (
        b"{" + _ASK + b', "top_logprobs": 9223372036854775808}',
        "json: cannot unmarshal number 9223372036854775808 into Go struct field "
        "GenerateRequest.top_logprobs of type int",
    ),
    (
        b"{" + _ASK + b', "context": [1, 18446744073709551615]}',
        "json: cannot unmarshal number 18446744073709551615 into Go struct field "
        "GenerateRequest.context of type int",
    ),
    # Beyond 64 bits either way, where orjson reads a double: written as the client did.
    (
        b"{" + _ASK + b', "top_logprobs": 18446744073709551616}',
        "json: cannot unmarshal number 18446744073709551616 into Go struct field "
        "GenerateRequest.top_logprobs of type int",
    ),
    (
        b"{" + _ASK + b', "context": [1, -9223372036854775809]}',
        "json: cannot unmarshal number -9223372036854775809 into Go struct field "
        "GenerateRequest.context of type int",
    ),
    (
        b"{" + _ASK + b', "top_logprobs": 100000000000000000000000}',
        "json: cannot unmarshal number 100000000000000000000000 into Go struct field "
        "GenerateRequest.top_logprobs of type int",
    ),
]


@pytest.mark.parametrize(
    ("body", "message"),
    BEYOND_AN_INT,
    ids=["top_logprobs", "context", "top_logprobs 2^64", "context -2^63-1", "top_logprobs 1e23"],
)
async def test_an_integer_beyond_gos_int_gets_ollamas_error(
    emulator: Emulator, proxy: Proxy, body: bytes, message: str
) -> None:
    """Refused as Ollama refuses it: by the emulator, through the proxy, and by the
    proxy itself where it answers for `auto` (a load, an empty prompt)."""
    await _refused_as_ollama(emulator, proxy, body, message)


async def _refused_as_ollama(
    emulator: Emulator, proxy: Proxy, body: bytes, message: str
) -> tuple[int, str, bytes]:
    """`body` (a /api/generate naming qwen2.5:7b with prompt "x") refused with Ollama's
    400 `message` by the emulator, the same through the proxy, and by the proxy itself
    where it answers for `auto` (a load): the emulator's answer."""
    direct = await raw(emulator.url, "POST", "/api/generate", body)
    assert direct[0] == 400 and orjson.loads(direct[2]) == {"error": message}
    assert await raw(proxy.url, "POST", "/api/generate", body) == direct
    load = body.replace(b'"qwen2.5:7b", "prompt": "x"', b'"auto", "prompt": ""')
    status, _, answer = await raw(proxy.url, "POST", "/api/generate", load)
    assert (status, orjson.loads(answer)) == (400, {"error": message})
    return direct


# Numbers that are no integer in an int field: ParseInt fails, and json.Unmarshal names
# the number as the client wrote it (encoding/json literalStore), not as a double.
WRITTEN_NUMBERS = [b"1e3", b"1.0", b"1.50", b"-2E-7"]


@pytest.mark.parametrize("number", WRITTEN_NUMBERS)
@pytest.mark.parametrize("field", ["top_logprobs", "context"])
async def test_a_number_in_an_int_field_is_named_as_written(
    emulator: Emulator, proxy: Proxy, number: bytes, field: str
) -> None:
    """By the emulator, and by the proxy itself where it answers for `auto` (a load)."""
    value = number if field == "top_logprobs" else b"[1, " + number + b"]"
    body = b"{" + _ASK + b', "' + field.encode() + b'": ' + value + b"}"
    message = (
        f"json: cannot unmarshal number {number.decode()} into Go struct field "
        f"GenerateRequest.{field} of type int"
    )
    # A model named: the proxy forwards the number as written, for the backend's error.
    direct = await _refused_as_ollama(emulator, proxy, body, message)
    # `auto`, routed: the body written for the model chosen carries it as written too.
    routed = body.replace(b'"qwen2.5:7b"', b'"auto"')
    assert await raw(proxy.url, "POST", "/api/generate", routed) == direct


@pytest.mark.parametrize("number", WRITTEN_NUMBERS)
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/v1/messages",
            b'{"model": "qwen2.5:7b", "max_tokens": 5, "messages": [{"role": "user",'
            b' "content": "hi"}], "top_k": %s}',
            "MessagesRequest.top_k",
        ),
        (
            "/v1/responses",
            b'{"model": "qwen2.5:7b", "input": "hi", "max_output_tokens": %s}',
            "ResponsesRequest.max_output_tokens",
        ),
    ],
    ids=["top_k", "max_output_tokens"],
)
async def test_a_number_in_a_v1_int_field_is_named_as_written(
    emulator: Emulator, proxy: Proxy, number: bytes, path: str, body: bytes, field: str
) -> None:
    """By the emulator, through the proxy (which forwards it as written) and by the
    proxy itself for `auto`."""
    message = (
        f"json: cannot unmarshal number {number.decode()} into Go struct field {field} of type int"
    )
    await _refused_alike(emulator, proxy, path, body % number, message)


@pytest.mark.parametrize("number", WRITTEN_NUMBERS)
async def test_openai_max_tokens_is_named_as_written(
    emulator: Emulator, proxy: Proxy, number: bytes
) -> None:
    body = b"{" + _CHAT + b', "max_tokens": ' + number + b"}"
    message = (
        f"json: cannot unmarshal number {number.decode()} into Go struct field "
        "ChatCompletionRequest.max_tokens of type int"
    )
    direct = await raw(emulator.url, "POST", "/v1/chat/completions", body)
    assert direct[0] == 400
    assert orjson.loads(direct[2])["error"]["message"] == message
    assert await raw(proxy.url, "POST", "/v1/chat/completions", body) == direct


# A key given twice, its earlier value of a type the field cannot take: Go's decoder
# saves that error, goes on (the later value is assigned) and returns the first error
# it saved (encoding/json saveError); an error from a field's own UnmarshalJSON (`think`,
# an /api/chat message) ends the decoding and is returned instead. Ollama answers 400
# with it, whatever the later value.
_STREAM_ERROR = "json: cannot unmarshal string into Go struct field {}.stream of type bool"
_BAD_THINK = 'invalid think value: "bad" (must be "high", "medium", "low", "max", true, or false)'
# buger/jsonparser's error for a value that is no object where an ordered map is read.
_NOT_AN_OBJECT = "Value looks like object, but can't find closing '}' symbol"
_OA_USER = b'"messages": [{"role": "user", "content": "hi"}]'
# A Responses request of these input items, and a message item of these content parts.
_RESPONSE = b'{"model": "qwen2.5:7b", "input": [%s]}'
_MESSAGE = b'{"type": "message", "role": "user", "content": [%s]}'
REPEATED = [
    (
        "/api/generate",
        b'{"model": "qwen2.5:7b", "stream": "yes", "stream": false, "prompt": "hi"}',
        _STREAM_ERROR.format("GenerateRequest"),
    ),
    (
        "/api/generate",
        b'{"model": "qwen2.5:7b", "Stream": "yes", "stream": false, "prompt": "hi"}',
        _STREAM_ERROR.format("GenerateRequest"),
    ),
    # The first error in the body, an earlier value's, not a later key's.
    (
        "/api/generate",
        b'{"model": "qwen2.5:7b", "stream": "yes", "prompt": 1, "stream": false}',
        _STREAM_ERROR.format("GenerateRequest"),
    ),
    # Colons written as escapes, which the body forwarded writes as colons (more of
    # them than the pair left out had: see `go_json.left_out`).
    (
        "/api/generate",
        b'{"model": "qwen2.5:7b", "stream": "yes", "stream": false, "prompt": "\\u003a\\u003a"}',
        _STREAM_ERROR.format("GenerateRequest"),
    ),
    # An error of UnmarshalJSON's own ends the decoding: the one returned.
    (
        "/api/generate",
        b'{"model": "qwen2.5:7b", "stream": "yes", "stream": false, "think": "bad",'
        b' "think": true, "prompt": "hi"}',
        _BAD_THINK,
    ),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", "messages": [], "options": "x", "options": {}}',
        "json: cannot unmarshal string into Go struct field ChatRequest.options of type "
        "map[string]interface {}",
    ),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", "messages": [{"role": "user", "content": 1,'
        b' "Content": "hi"}], "stream": false}',
        "json: cannot unmarshal number into Go struct field ChatRequest.messages.content "
        "of type string",
    ),
    (
        "/v1/chat/completions",
        b'{"model": "qwen2.5:7b", ' + _OA_USER + b', "stream": "yes", "stream": false}',
        _STREAM_ERROR.format("ChatCompletionRequest"),
    ),
    (
        "/v1/chat/completions",
        b'{"model": "qwen2.5:7b", ' + _OA_USER + b', "stream_options":'
        b' {"include_usage": "x", "include_usage": true}}',
        "json: cannot unmarshal string into Go struct field "
        "StreamOptions.stream_options.include_usage of type bool",
    ),
    (
        "/v1/chat/completions",
        b'{"model": "qwen2.5:7b", "messages": [{"role": 1, "role": "user", "content": "hi"}]}',
        "json: cannot unmarshal number into Go struct field Message.messages.role of type string",
    ),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", "messages": [{"role": "assistant", "tool_calls":'
        b' [{"function": {"index": "0", "index": 0, "name": "f"}}]}], "stream": false}',
        "json: cannot unmarshal string into Go struct field "
        "ChatRequest.messages.tool_calls.function.index of type int",
    ),
    # A Responses input item or content part: the structs its UnmarshalJSON decodes it
    # into (openai/responses.go) save the earlier value's error too.
    (
        "/v1/responses",
        _RESPONSE % (_MESSAGE % b'{"type": "input_text", "text": 5, "text": "hi"}'),
        "input[0]: content[0]: json: cannot unmarshal number into Go struct field "
        "ResponsesTextContent.text of type string",
    ),
    (
        "/v1/responses",
        _RESPONSE % b'{"type": 5, "type": "message", "role": "user", "content": "hi"}',
        "input[0]: json: cannot unmarshal number into Go struct field .type of type string",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "message"), REPEATED, ids=[f"{p} {b[22:60]!r}" for p, b, _ in REPEATED]
)
async def test_a_key_given_twice_gets_the_error_of_its_earlier_value(
    emulator: Emulator, proxy: Proxy, path: str, body: bytes, message: str
) -> None:
    """Refused as Ollama refuses it: by the emulator, the same through the proxy (which
    would otherwise forward the later value alone, and the model would run), and by
    the proxy itself for `auto`."""
    direct = await raw(emulator.url, "POST", path, body)
    error = orjson.loads(direct[2])["error"]
    assert direct[0] == 400
    assert (error["message"] if path.startswith("/v1/") else error) == message
    assert await raw(proxy.url, "POST", path, body) == direct
    routed = body.replace(b'"qwen2.5:7b"', b'"auto"')
    assert await raw(proxy.url, "POST", path, routed) == direct


async def test_a_key_given_twice_with_values_go_takes_is_served(
    emulator: Emulator, proxy: Proxy
) -> None:
    """Each value of the right type (a null too): Go decodes the body, and the request
    runs with the last value, through the proxy as from Ollama."""
    body = (
        b'{"model": "qwen2.5:7b", "stream": true, "Stream": null, "stream": false,'
        b' "prompt": "hi", "prompt": "\\u003a"}'
    )
    direct = await raw(emulator.url, "POST", "/api/generate", body)
    assert direct[0] == 200 and orjson.loads(direct[2])["done"] is True
    proxied = await raw(proxy.url, "POST", "/api/generate", body)
    assert proxied[0] == 200
    assert orjson.loads(proxied[2])["response"] == orjson.loads(direct[2])["response"]


# A key given twice whose values Go merges, not the last taking the place of the rest:
# a null leaves a string, number or bool field as an earlier value set it (encoding/json
# literalStore zeroes only interfaces, pointers, maps and slices), a map (`options`)
# keeps the earlier entries the later object does not name, a pointer to a struct
# (`stream_options`) keeps its earlier fields. Ollama runs what Go ends with, and so
# does the proxy, which forwards that document.
_HI = b'"messages": [{"role": "user", "content": "hi"}]'
# (path, body, the body Go ends with written plainly, as Ollama runs it).
MERGED = [
    (
        "/api/generate",
        b'{"model": "qwen2.5:7b", "model": null, "prompt": "hi", "stream": false}',
        b'{"model": "qwen2.5:7b", "prompt": "hi", "stream": false}',
    ),
    (
        "/api/generate",
        b'{"model": "qwen2.5:7b", "prompt": "hi", "prompt": null, "stream": false}',
        b'{"model": "qwen2.5:7b", "prompt": "hi", "stream": false}',
    ),
    (
        "/api/generate",
        b'{"model": "qwen2.5:7b", "prompt": "hi", "stream": false,'
        b' "options": {"num_predict": 3}, "Options": {"seed": 7}}',
        b'{"model": "qwen2.5:7b", "prompt": "hi", "stream": false,'
        b' "options": {"num_predict": 3, "seed": 7}}',
    ),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", ' + _HI + b', "stream": false, "keep_alive": 1.5e2,'
        b' "options": {"num_predict": 3, "seed": 1, "temperature": 0.5e0},'
        b' "options": {"seed": 7}}',
        b'{"model": "qwen2.5:7b", ' + _HI + b', "stream": false, "keep_alive": 150,'
        b' "options": {"num_predict": 3, "seed": 7, "temperature": 0.5}}',
    ),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", ' + _HI + b', "stream": false,'
        b' "options": {"num_predict": 3, "seed": 1}, "options": {"seed": 7}}',
        b'{"model": "qwen2.5:7b", ' + _HI + b', "stream": false,'
        b' "options": {"num_predict": 3, "seed": 7}}',
    ),
    (
        "/v1/chat/completions",
        b'{"model": "qwen2.5:7b", ' + _OA_USER + b', "stream": true,'
        b' "stream_options": {"include_usage": true}, "stream_options": {"x": 1}}',
        b'{"model": "qwen2.5:7b", ' + _OA_USER + b', "stream": true,'
        b' "stream_options": {"include_usage": true}}',
    ),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi",'
        b' "content": null}], "stream": false}',
        b'{"model": "qwen2.5:7b", ' + _HI + b', "stream": false}',
    ),
    (
        "/v1/chat/completions",
        b'{"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}],'
        b' "messages": [{"content": "hello"}], "stream": false}',
        b'{"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hello"}],'
        b' "stream": false}',
    ),
    # A number that is no integer where a route elsewhere reads an int: the body is
    # forwarded with it as written, from the document Go ends with.
    (
        "/api/show",
        b'{"model": "qwen2.5:7b", "model": null, "top_logprobs": 1.5}',
        b'{"model": "qwen2.5:7b", "top_logprobs": 1.5}',
    ),
    (
        "/v1/completions",
        b'{"model": "qwen2.5:7b", "prompt": "hi", "max_tokens": 3, "max_tokens": null,'
        b' "stream": true, "stream": null, "stream_options": {"include_usage": true},'
        b' "stream_options": {"include_usage": null}}',
        b'{"model": "qwen2.5:7b", "prompt": "hi", "stream": true,'
        b' "stream_options": {"include_usage": true}}',
    ),
    # An Anthropic content block (anthropic.ContentBlock): a null leaves its type,
    # and its image source (a pointer to a struct) keeps what an earlier object set.
    (
        "/v1/messages",
        b'{"model": "qwen2.5:7b", "max_tokens": 5, "messages": [{"role": "user", "content":'
        b' [{"type": "text", "text": "hi", "type": null}]}]}',
        b'{"model": "qwen2.5:7b", "max_tokens": 5, "messages": [{"role": "user", "content":'
        b' [{"type": "text", "text": "hi"}]}]}',
    ),
    (
        "/v1/messages",
        b'{"model": "llava:7b", "max_tokens": 5, "messages": [{"role": "user", "content":'
        b' [{"type": "text", "text": "hi"}, {"type": "image", "source": {"type": "base64",'
        b' "data": "aGk="}, "source": {"data": "aGk="}}]}]}',
        b'{"model": "llava:7b", "max_tokens": 5, "messages": [{"role": "user", "content":'
        b' [{"type": "text", "text": "hi"}, {"type": "image", "source": {"type": "base64",'
        b' "data": "aGk="}}]}]}',
    ),
    # A Responses input given twice: ResponsesInput's UnmarshalJSON sets its text from
    # a string (a null is the text ""), its items from an array, each leaving the
    # other as it was; FromResponsesRequest puts the text before the items.
    (
        "/v1/responses",
        b'{"model": "qwen2.5:7b", "input": "hi", "input": [{"role": "assistant",'
        b' "content": "hello"}, {"role": "user", "content": "and?"}]}',
        b'{"model": "qwen2.5:7b", "input": [{"role": "user", "content": "hi"},'
        b' {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"}]}',
    ),
    (
        "/v1/responses",
        b'{"model": "qwen2.5:7b", "input": [{"role": "user", "content": "hi"}], "input": null}',
        b'{"model": "qwen2.5:7b", "input": [{"role": "user", "content": "hi"}]}',
    ),
    (
        "/v1/responses",
        b'{"model": "qwen2.5:7b", "input": [{"role": "user", "content": "hi"}],'
        b' "input": "first", "Input": "then"}',
        b'{"model": "qwen2.5:7b", "input": [{"role": "user", "content": "then"},'
        b' {"role": "user", "content": "hi"}]}',
    ),
    # A Responses input item and content part: each is unmarshalled into structs of
    # strings (openai/responses.go), where a null leaves what an earlier key set.
    (
        "/v1/responses",
        _RESPONSE % (_MESSAGE % b'{"type": "input_text", "Type": null, "text": "hi"}'),
        _RESPONSE % (_MESSAGE % b'{"type": "input_text", "text": "hi"}'),
    ),
    (
        "/v1/responses",
        _RESPONSE % (_MESSAGE % b'{"type": "input_text", "text": "hi", "type": null}'),
        _RESPONSE % (_MESSAGE % b'{"type": "input_text", "text": "hi"}'),
    ),
    (
        "/v1/responses",
        _RESPONSE % b'{"role": "user", "content": "hi", "Role": null}',
        _RESPONSE % b'{"role": "user", "content": "hi"}',
    ),
    (
        "/v1/responses",
        _RESPONSE % b'{"type": "function_call_output", "call_id": "c", "output":'
        b' [{"type": "input_text", "text": "42", "Text": null}], "type": null}',
        _RESPONSE % b'{"type": "function_call_output", "call_id": "c", "output":'
        b' [{"type": "input_text", "text": "42"}]}',
    ),
]


def _served(path: str, answer: bytes) -> list[object]:
    """What a test compares of an answer: each line's text, ids and times aside."""
    volatile = {"id", "created", "created_at", "system_fingerprint"}
    lines: list[object] = []
    for line in answer.splitlines():
        text = line.removeprefix(b"data: ").strip()
        if not text or text == b"[DONE]":
            continue
        doc = orjson.loads(text)
        if isinstance(doc, dict):
            for name in volatile | {"total_duration", "load_duration", "eval_duration"}:
                doc.pop(name, None)
            doc.pop("prompt_eval_duration", None)
        lines.append(doc)
    return lines


@pytest.mark.parametrize(
    ("path", "body", "plain"), MERGED, ids=[f"{p} {b[22:70]!r}" for p, b, _ in MERGED]
)
async def test_a_key_given_twice_runs_what_go_ends_with(
    emulator: Emulator, proxy: Proxy, path: str, body: bytes, plain: bytes
) -> None:
    """The emulator, Ollama's stand-in, runs the document Go ends with (the model and
    prompt a null leaves, the options, stream options and slice elements merged), as
    if that document were sent; the proxy forwards that document, so the same request
    runs through it, and for `auto` (which decides on it) too."""
    direct = await raw(emulator.url, "POST", path, body)
    assert direct[0] == 200, direct
    served = _served(path, direct[2])
    assert _served(path, (await raw(emulator.url, "POST", path, plain))[2]) == served
    proxied = await raw(proxy.url, "POST", path, body)
    assert proxied[0] == 200, proxied
    assert _served(path, proxied[2]) == served
    routed = await raw(proxy.url, "POST", path, body.replace(b'"qwen2.5:7b"', b'"auto"'))
    assert routed[0] == 200, routed


# Go decodes an object's keys in the body's order: the first type error in the body is
# the one saved and returned (encoding/json saveError), whatever the order of the
# struct's fields, unless an UnmarshalJSON's own error (`think`, an /api/chat or
# /v1/messages message, a tool call's `arguments` inside a message) ends the decoding
# first, an earlier saved error notwithstanding.
_BOGUS_THINK = _BAD_THINK.replace('"bad"', '"bogus"')
BODY_ORDER = [
    (
        "/api/generate",
        b'{"stream": "yes", "model": "qwen2.5:7b", "prompt": 1}',
        _STREAM_ERROR.format("GenerateRequest"),
    ),
    (
        "/api/generate",
        b'{"model": "qwen2.5:7b", "stream": "yes", "think": "bogus", "prompt": "hi"}',
        _BOGUS_THINK,
    ),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", "messages": [{"content": 1, "role": 2}], "stream": false}',
        "json: cannot unmarshal number into Go struct field ChatRequest.messages.content "
        "of type string",
    ),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", "stream": "yes", "messages": [{"role": 1, "content": "x",'
        b' "tool_calls": [{"function": {"name": "f", "arguments": "x"}}]}]}',
        _NOT_AN_OBJECT,
    ),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", ' + _HI + b', "tools": [{"function": {"name": 1},'
        b' "type": 2}], "stream": false}',
        "json: cannot unmarshal number into Go struct field ToolFunction.tools.function.name "
        "of type string",
    ),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", "stream": "yes", "messages": [{"role": "assistant",'
        b' "tool_calls": [{"function": {"name": 1}}, {"id": 2}]}]}',
        "json: cannot unmarshal number into Go struct field "
        "ChatRequest.messages.tool_calls.function.name of type string",
    ),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", "stream": "yes", "messages": [{"role": "assistant",'
        b' "tool_calls": [{"function": {"name": 1, "arguments": {"a": [1e400]}}}]}]}',
        "json: cannot unmarshal number 1e400 into Go struct field "
        "ChatRequest.messages.tool_calls.function.arguments of type float64",
    ),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", "messages": [{"role": "assistant", "tool_calls":'
        b' [{"function": {"index": 1.0}}]}], "stream": "yes"}',
        "json: cannot unmarshal number 1.0 into Go struct field "
        "ChatRequest.messages.tool_calls.function.index of type int",
    ),
    (
        "/v1/chat/completions",
        b'{"model": "qwen2.5:7b", "stream": "yes", "messages": [{"role": 1, "content": "hi"}]}',
        _STREAM_ERROR.format("ChatCompletionRequest"),
    ),
    (
        "/v1/chat/completions",
        b'{"model": "qwen2.5:7b", "messages": [{"tool_calls": [{"id": 1}], "role": 2}]}',
        "json: cannot unmarshal number into Go struct field ToolCall.messages.tool_calls.id "
        "of type string",
    ),
    (
        "/v1/messages",
        b'{"model": "qwen2.5:7b", "max_tokens": 5, "stream": "yes",'
        b' "messages": [{"role": 1, "content": "hi"}]}',
        "json: cannot unmarshal number into Go struct field MessagesRequest.messages.role "
        "of type string",
    ),
    (
        "/v1/messages",
        b'{"model": "qwen2.5:7b", "max_tokens": 5, "stream": "yes", "messages": [{"role":'
        b' "assistant", "content": [{"type": 1}, {"type": "tool_use", "input": "x"}]}]}',
        _NOT_AN_OBJECT,
    ),
    (
        "/v1/messages",
        b'{"model": "qwen2.5:7b", "max_tokens": 5, "messages": [{"role": "user", "content":'
        b' [{"type": "text", "text": "x", "citations": [{"url": 1}]}]}], "stream": "yes"}',
        "json: cannot unmarshal number into Go struct field MessagesRequest.messages"
        ".citations.url of type string",
    ),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", "stream": "yes", "tools": [{"type": "function", "function":'
        b' {"name": "f", "parameters": {"properties": {"a": {"description": 1}}}}}]}',
        "json: cannot unmarshal number into Go struct field ToolFunctionParameters"
        ".tools.function.parameters.properties.description of type string",
    ),
    # A key given twice inside a message: its UnmarshalJSON decodes the message afresh,
    # the earlier value too.
    (
        "/v1/messages",
        b'{"model": "qwen2.5:7b", "max_tokens": 5,'
        b' "messages": [{"role": 1, "role": "user", "content": "hi"}]}',
        "json: cannot unmarshal number into Go struct field MessagesRequest.messages.role "
        "of type string",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "message"), BODY_ORDER, ids=[f"{p} {b[:50]!r}" for p, b, _ in BODY_ORDER]
)
async def test_the_first_error_in_the_body_is_ollamas(
    emulator: Emulator, proxy: Proxy, path: str, body: bytes, message: str
) -> None:
    """Of two wrong values, the emulator names the one Go names, and so does the proxy
    for `auto`, where it answers in a backend's place."""
    await _refused_alike(emulator, proxy, path, body, message)


async def _refused_alike(
    emulator: Emulator, proxy: Proxy, path: str, body: bytes, message: str
) -> None:
    """`body` on `path` refused with Ollama's 400 `message` (in the OpenAI or Anthropic
    error object on /v1) by the emulator, the same through the proxy, and by the proxy
    itself for `auto` (the model's name in the body replaced)."""
    direct = _refused(await raw(emulator.url, "POST", path, body))
    error = direct[2]["error"]
    assert direct[0] == 400
    assert (error["message"] if path.startswith("/v1/") else error) == message
    assert _refused(await raw(proxy.url, "POST", path, body)) == direct
    routed = body.replace(b'"qwen2.5:7b"', b'"auto"')
    assert _refused(await raw(proxy.url, "POST", path, routed)) == direct


def _refused(answer: tuple[int, str, bytes]) -> tuple[int, str, dict[str, object]]:
    """An error answer as a test compares it: its Anthropic `request_id` aside (a new
    one each request)."""
    status, content_type, body = answer
    doc = orjson.loads(body)
    doc.pop("request_id", None)
    return status, content_type, doc


GENERATE = b'{"model": "qwen2.5:7b", "prompt": "Hello", "stream": false}'
ENCODED = [
    ("/api/generate", "gzip", GENERATE),
    ("/api/generate", "gzip", gzip.compress(GENERATE, mtime=0)),
    ("/api/chat", "br", b'{"model": "qwen2.5:7b", "messages": [], "stream": false}'),
    ("/v1/chat/completions", "deflate", b'{"model": "qwen2.5:7b", "messages": []}'),
    ("/api/pull", "gzip", b'{"model": "qwen2.5:7b", "stream": false}'),
]


@pytest.mark.parametrize(
    ("path", "encoding", "body"),
    ENCODED,
    ids=[f"{p} {e} {b[:8]!r}" for p, e, b in ENCODED],
)
async def test_content_encoding_is_not_decoded(
    emulator: Emulator, proxy: Proxy, path: str, encoding: str, body: bytes
) -> None:
    """Ollama reads a body's bytes whatever its Content-Encoding says: the JSON as
    sent, a compressed body as the JSON error it is; never a 5xx of the proxy's."""
    headers = {"Content-Encoding": encoding}
    direct = await raw(emulator.url, "POST", path, body, headers)
    assert direct[0] < 500
    assert await raw(proxy.url, "POST", path, body, headers) == direct


# Compressed bodies, and a target longer than aiohttp's default line limit: what Go's
# net/http reads as sent (Ollama decodes no gzip, deflate nor br; its head limit is
# 1 MiB) and aiohttp's defaults would decode, or refuse with a text of their own.
ALONE = [
    ("POST", "/api/generate", {"Content-Encoding": "gzip"}, gzip.compress(GENERATE, mtime=0)),
    ("POST", "/api/chat", {"Content-Encoding": "deflate"}, zlib.compress(GENERATE)),
    ("POST", "/api/chat", {"Content-Encoding": "br"}, b"\x0b\x02\x80{}\x03"),
    ("HEAD", "/api/blobs/sha256:" + "0" * 9000, {}, None),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body"),
    ALONE,
    ids=[f"{m} {p[:20]} {h}" for m, p, h, _ in ALONE],
)
async def test_the_emulator_run_alone_answers_as_ollama_does(
    emulator_process: int,
    emulator: Emulator,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
) -> None:
    """`python -m proxy.emulator` (a backend of its own process, as tests and
    benchmarks run it) serves connections as the emulator of `autoroute emulate` and
    of the tests' threads does: as Ollama's server."""
    alone = await raw(f"http://127.0.0.1:{emulator_process}", method, path, body, headers)
    assert alone == await raw(emulator.url, method, path, body, headers)
    assert alone[0] == 400


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/generate"),
        ("PUT", "/api/chat"),
        ("DELETE", "/api/tags"),
        ("GET", "/api/nope"),
        ("PATCH", "/v1/chat/completions"),
        ("GET", "/v2/anything"),
    ],
)
async def test_wrong_methods_and_unknown_paths_pass_through(
    emulator: Emulator, proxy: Proxy, method: str, path: str
) -> None:
    direct = await raw(emulator.url, method, path)
    assert direct[0] in (404, 405)
    assert await raw(proxy.url, method, path) == direct


@pytest.mark.parametrize(
    "path",
    ["/v1/models/a%0d%0aSet-Cookie:%20x=1", "/api/%0a", "/v2/%0d%0a%00", "/api/autoroute/%0a"],
)
async def test_a_path_with_encoded_control_characters_is_answered_as_any_other(
    emulator: Emulator, proxy: Proxy, path: str
) -> None:
    """A line break decoded from the path reaches the route table like any character:
    an Ollama path gets the backend's own answer, the proxy's own prefix its JSON 404."""
    status, fields, body = await raw_request(proxy.port, "GET", path, [])
    assert fields["x-request-id"]
    if path.startswith("/api/autoroute/"):
        assert status == 404 and "error" in orjson.loads(body)
    else:
        direct = await raw_request(emulator.port, "GET", path, [])
        assert (status, body) == (direct[0], direct[2])
        # A model's name with a line break is none Ollama can read (RetrieveMiddleware's
        # ShowHandler: 400); another path with one is no route (gin's 404).
        assert status == (400 if path.startswith("/v1/models/") else 404)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions", "/api/pull"])
async def test_a_body_of_megabytes_is_served(emulator: Emulator, proxy: Proxy, path: str) -> None:
    """Ollama sets no body limit (a picture for a vision model runs to megabytes): a
    body well over aiohttp's default 1 MiB is answered as a small one is."""
    picture = "A" * (3 * 1024 * 1024)
    message = {"role": "user", "content": "What is this?", "images": [picture]}
    body = orjson.dumps({"model": "llava:7b", "messages": [message], "stream": False})
    direct = await raw(emulator.url, "POST", path, body)
    assert direct[0] == 200, direct
    assert await raw(proxy.url, "POST", path, body) == direct


@pytest.fixture
def small_limit_proxy(servers: ServerThread, emulator: Emulator) -> Iterator[Proxy]:
    prx = Proxy(servers, [emulator.url], limits=Limits(max_body_bytes=1024))
    yield prx
    prx.stop()


@pytest.mark.parametrize("path", ["/api/generate", "/v1/chat/completions", "/v1/messages"])
async def test_body_over_the_limit_is_413_in_ollama_shape(
    small_limit_proxy: Proxy, path: str
) -> None:
    body = orjson.dumps({"model": "qwen2.5:7b", "prompt": "x" * 4096})
    status, content_type, answer = await raw(small_limit_proxy.url, "POST", path, body)
    assert status == 413
    assert content_type.startswith("application/json")
    doc = orjson.loads(answer)
    error = doc["error"]
    message = error["message"] if path.startswith("/v1/") else error
    if path == "/v1/messages":  # Anthropic's shape, as Ollama's Anthropic layer answers
        assert doc["type"] == "error" and error["type"] == "request_too_large"
        assert doc["request_id"].startswith("req_")
    assert "too large" in message and "1024" in message
    # The proxy still serves the next request.
    assert await _serves_a_request(small_limit_proxy)


async def _serves_a_request(proxy: Proxy) -> bool:
    """Whether the proxy answers a small generate with a 200."""
    body = orjson.dumps({"model": "qwen2.5:7b", "prompt": "x", "stream": False})
    return (await raw(proxy.url, "POST", "/api/generate", body))[0] == 200


async def test_a_body_declared_over_the_limit_is_413_before_100_continue(
    small_limit_proxy: Proxy,
) -> None:
    """A client that waits for `100 Continue` before sending a body longer than the
    limit gets the 413 at once, not an invitation to send bytes the proxy would only
    read to refuse; the connection closes (the body never came), and the proxy serves
    on."""
    host, port = small_limit_proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: 4096\r\n\r\n"
    )
    await writer.drain()
    status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 413 "), status_line
    head, _, body = (await reader.read()).partition(b"\r\n\r\n")  # read to the close
    writer.close()
    assert b"\r\nConnection: close\r\n" in head + b"\r\n"
    assert orjson.loads(body) == {"error": "request body too large (limit 1024 bytes)"}
    assert await _serves_a_request(small_limit_proxy)


@pytest.mark.parametrize(
    "model",
    ["x\r\nSet-Cookie: stolen=1", "x\nSet-Cookie: stolen=1", "y" * 100_000, "a b", "é"],
    ids=["crlf", "lf", "100k", "space", "non-ascii"],
)
async def test_a_model_name_never_writes_the_answers_head(proxy: Proxy, model: str) -> None:
    """The header that repeats the model's name takes only a name Ollama could accept:
    a line break would add headers of the client's choosing to the answer (a cookie, a
    redirect), megabytes a head no client reads. The backend's own error still comes."""
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head_bytes, _, payload = answer.partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    assert lines[0].split(b" ")[1] in (b"400", b"404"), lines[0]
    assert not any(line.lower().startswith(b"set-cookie") for line in lines)
    assert all(len(line) < 1000 for line in lines)
    assert not any(line.lower().startswith(b"x-autoroute-model") for line in lines)
    assert b'"error"' in payload


# Bodies Go's scanner reads further than Python's json: a number cut short after its
# `.` or `e` (Go reads on past the `1`), a `\u` escape without four hex digits (Go
# names its first other byte). A top-level number Go ends is decoded into the struct.
SCANNED = [
    ("/api/chat", b"1.", "unexpected EOF"),
    ("/api/chat", b"1e", "unexpected EOF"),
    (
        "/v1/chat/completions",
        b"1.x",
        "invalid character 'x' after decimal point in numeric literal",
    ),
    ("/api/chat", b"1.5x", "json: cannot unmarshal number into Go value of type api.ChatRequest"),
    (
        "/api/chat",
        b'{"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "\\u12 "}]}',
        "invalid character ' ' in \\u hexadecimal character escape",
    ),
]


# Numbers beyond a double in fields Go decodes into an `any`: it parses their numbers
# into float64s and refuses one beyond, naming the field (a json.RawMessage, `format`,
# parses none).
ANY_BEYOND = [
    (
        "/v1/chat/completions",
        b'{"model": "qwen2.5:7b", "messages": [{"role": "user", "content": 1e400}]}',
        "json: cannot unmarshal number 1e400 into Go struct field "
        "Message.messages.content of type float64",
    ),
    (
        "/v1/chat/completions",
        b'{"model": "qwen2.5:7b", "messages": [{"role": "user", "content": [{"n": -1e400}]}]}',
        "json: cannot unmarshal number -1e400 into Go struct field "
        "Message.messages.content of type float64",
    ),
    (
        "/api/embed",
        b'{"model": "qwen2.5:7b", "input": ["x", 1e400]}',
        "json: cannot unmarshal number 1e400 into Go struct field "
        "EmbedRequest.input of type float64",
    ),
    (
        "/v1/embeddings",
        b'{"model": "qwen2.5:7b", "input": 1e400}',
        "json: cannot unmarshal number 1e400 into Go struct field "
        "EmbedRequest.input of type float64",
    ),
    (
        "/v1/chat/completions",
        b'{"model": "qwen2.5:7b", "messages": [], "stop": [1e400]}',
        "json: cannot unmarshal number 1e400 into Go struct field "
        "ChatCompletionRequest.stop of type float64",
    ),
    (
        "/v1/messages",
        b'{"model": "qwen2.5:7b", "max_tokens": 5, "system": 1e400, "messages": []}',
        "json: cannot unmarshal number 1e400 into Go struct field "
        "MessagesRequest.system of type float64",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    SCANNED + ANY_BEYOND,
    ids=[f"{p} {b[-30:]!r}" for p, b, _ in SCANNED + ANY_BEYOND],
)
async def test_a_body_go_scans_further_or_parses_into_an_any_gets_ollamas_error(
    emulator: Emulator, proxy: Proxy, path: str, body: bytes, message: str
) -> None:
    """The emulator refuses it as Ollama does, and so does the proxy, for `auto` too."""
    await _refused_alike(emulator, proxy, path, body, message)


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
async def test_a_format_beyond_a_double_is_not_refused_as_a_number(
    emulator: Emulator, proxy: Proxy, path: str
) -> None:
    """`format` is a json.RawMessage: Go parses none of its numbers while decoding."""
    body = b'{"model": "qwen2.5:7b", "format": {"x": 1e400}, "stream": "no"}'
    direct = _refused(await raw(emulator.url, "POST", path, body))
    assert "float64" not in str(direct[2]["error"])
    assert (
        _refused(await raw(proxy.url, "POST", path, body.replace(b"qwen2.5:7b", b"auto"))) == direct
    )


# A response's input has its own UnmarshalJSON (openai/responses.go), which unmarshals
# each item and content part into a struct of strings alone: no number in it is
# parsed, so one beyond a double is refused where any number is, as a "number", and
# goes unread where Go skips the key.
RESPONSE_INPUT_BEYOND = [
    (
        _MESSAGE % b"1e400",
        "input[0]: content[0]: json: cannot unmarshal number into Go value of type "
        'struct { Type string "json:\\"type\\"" }',
    ),
    (
        _MESSAGE % b'{"type": "input_text", "text": 1e400}',
        "input[0]: content[0]: json: cannot unmarshal number into Go struct field "
        "ResponsesTextContent.text of type string",
    ),
    (
        b'{"type": "function_call", "name": "f", "arguments": -1e400}',
        "input[0]: json: cannot unmarshal number into Go struct field "
        "ResponsesFunctionCall.arguments of type string",
    ),
    (
        b'{"type": "function_call_output", "call_id": 1e400, "output": "x"}',
        "input[0]: json: cannot unmarshal number into Go struct field .call_id of type string",
    ),
    (
        b'{"type": "function_call_output", "call_id": "c", "output": [{"type": "x"}, 1e400]}',
        "input[0]: output[0]: unknown content type: x",
    ),
    (
        b'{"type": "function_call_output", "call_id": "c", "output": 1e400}',
        "input[0]: output must be a string or array: json: cannot unmarshal number into "
        "Go value of type []json.RawMessage",
    ),
    (
        b'{"type": "reasoning", "summary": [{"type": "summary_text", "text": 1e400}]}',
        "input[0]: json: cannot unmarshal number into Go struct field "
        "ResponsesReasoningSummary.summary.text of type string",
    ),
    (
        b'{"type": "web_search_call", "action": {"type": "search", "query": 1e400}}',
        "input[0]: json: cannot unmarshal number into Go struct field "
        "ResponsesWebSearchAction.action.query of type string",
    ),
]


@pytest.mark.parametrize(
    ("item", "message"), RESPONSE_INPUT_BEYOND, ids=[m[-50:] for _, m in RESPONSE_INPUT_BEYOND]
)
async def test_a_number_beyond_a_double_in_a_responses_input_is_refused_as_a_number(
    emulator: Emulator, proxy: Proxy, item: bytes, message: str
) -> None:
    """The emulator refuses it as Ollama does, and so does the proxy, for `auto` too."""
    await _refused_alike(emulator, proxy, "/v1/responses", _RESPONSE % item, message)


async def test_a_number_beyond_a_double_where_a_responses_input_skips_it_is_served(
    emulator: Emulator, proxy: Proxy
) -> None:
    """A key no struct of the input has is skipped unread, its number too."""
    item = b'{"type": "message", "role": "user", "content": "hi", "seed": 1e400}'
    body = _RESPONSE % item
    direct = await raw(emulator.url, "POST", "/v1/responses", body)
    assert direct[0] == 200, direct
    routed = body.replace(b'"qwen2.5:7b"', b'"auto"')
    assert (await raw(proxy.url, "POST", "/v1/responses", routed))[0] == 200


@pytest.mark.parametrize("levels", [2, 29, 40, 100])
async def test_a_tool_property_deep_down_gets_ollamas_error(
    emulator: Emulator, proxy: Proxy, levels: int
) -> None:
    """Go decodes every level of a tool's properties (10,000 levels of JSON): the
    emulator refuses a wrong one as Ollama does however deep its reading holds it, and
    so does the proxy, for `auto` too."""
    properties = nested_properties(levels, b'{"description": 1}')
    body = (
        b'{"model": "qwen2.5:7b", "messages": [], "tools": [{"type": "function", "function":'
        b' {"name": "f", "parameters": {"properties": ' + properties + b"}}}]}"
    )
    message = (
        "json: cannot unmarshal number into Go struct field ToolFunctionParameters.tools"
        ".function.parameters.properties" + ".properties" * (levels - 1) + ".description"
        " of type string"
    )
    await _refused_alike(emulator, proxy, "/api/chat", body, message)


# A response's tools (openai.ResponsesTool, a namespace's own tools too): `parameters`
# is a map[string]any, whose numbers Go parses into float64s.
RESPONSE_TOOLS = [
    (
        b'[{"type": "function", "name": "f", "parameters": {"x": [1e400]}}]',
        "json: cannot unmarshal number 1e400 into Go struct field "
        "ResponsesTool.tools.parameters of type float64",
    ),
    (
        b'[{"type": "namespace", "name": "n", "tools": [{"type": "function", "name": "f",'
        b' "parameters": {"x": -1e400}}]}]',
        "json: cannot unmarshal number -1e400 into Go struct field "
        "ResponsesTool.tools.tools.parameters of type float64",
    ),
    (
        b'[{"type": "function", "name": "f", "parameters": "x"}]',
        "json: cannot unmarshal string into Go struct field "
        "ResponsesTool.tools.parameters of type map[string]interface {}",
    ),
    (
        b"[null, 5]",
        "json: cannot unmarshal number into Go struct field "
        "ResponsesRequest.tools of type openai.ResponsesTool",
    ),
    (
        b'[{"type": "function", "name": "f", "strict": "yes"}]',
        "json: cannot unmarshal string into Go struct field "
        "ResponsesTool.tools.strict of type bool",
    ),
]


@pytest.mark.parametrize(("tools", "message"), RESPONSE_TOOLS, ids=[m for _, m in RESPONSE_TOOLS])
async def test_a_responses_tool_of_the_wrong_type_gets_ollamas_error(
    emulator: Emulator, proxy: Proxy, tools: bytes, message: str
) -> None:
    """The emulator refuses it as Ollama does, and so does the proxy, for `auto` too."""
    body = b'{"model": "qwen2.5:7b", "input": "hi", "tools": ' + tools + b"}"
    await _refused_alike(emulator, proxy, "/v1/responses", body, message)


_INPUT_ERROR = (
    "input must be a string or array: json: cannot unmarshal number into Go value of type "
    "[]json.RawMessage"
)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "qwen2.5:7b", "stream": "x", "input": 5}',
        b'{"model": "qwen2.5:7b", "input": 5, "stream": "x"}',
        b'{"model": "qwen2.5:7b", "input": 5, "input": "hi"}',
        b'{"model": "qwen2.5:7b", "stream": "x", "Input": 5, "input": "hi"}',
    ],
)
async def test_a_responses_input_refused_ends_the_decoding(
    emulator: Emulator, proxy: Proxy, body: bytes
) -> None:
    """ResponsesInput's own UnmarshalJSON error ends json's decoding where a plain type
    error is saved for the end: it wins over one before it, and over a later value of
    the key, which Go never reaches."""
    await _refused_alike(emulator, proxy, "/v1/responses", body, _INPUT_ERROR)


# openai.ResponsesRequest's other fields (openai/responses.go): `background` a bool,
# `include` a []string, `conversation` a json.RawMessage; `reasoning` a
# ResponsesReasoning and `text` a *ResponsesText (its `format` a *ResponsesTextFormat),
# structs, whose fields Go names in its errors and whose unknown keys it skips unread.
_UNMARSHAL = "json: cannot unmarshal %s into Go struct field %s of type %s"
RESPONSE_FIELDS = [
    (b'"background": "yes"', _UNMARSHAL % ("string", "ResponsesRequest.background", "bool")),
    (b'"include": "x"', _UNMARSHAL % ("string", "ResponsesRequest.include", "[]string")),
    (b'"include": ["a", 1]', _UNMARSHAL % ("number", "ResponsesRequest.include", "string")),
    (
        b'"reasoning": {"effort": 5}',
        _UNMARSHAL % ("number", "ResponsesReasoning.reasoning.effort", "string"),
    ),
    (
        b'"reasoning": {"Summary": true}',
        _UNMARSHAL % ("bool", "ResponsesReasoning.reasoning.summary", "string"),
    ),
    (
        b'"reasoning": "high"',
        _UNMARSHAL % ("string", "ResponsesRequest.reasoning", "openai.ResponsesReasoning"),
    ),
    (b'"text": 5', _UNMARSHAL % ("number", "ResponsesRequest.text", "openai.ResponsesText")),
    (
        b'"text": {"format": "json"}',
        _UNMARSHAL % ("string", "ResponsesText.text.format", "openai.ResponsesTextFormat"),
    ),
    (
        b'"text": {"format": {"type": 5}}',
        _UNMARSHAL % ("number", "ResponsesTextFormat.text.format.type", "string"),
    ),
    (
        b'"text": {"format": {"type": "json_schema", "strict": "yes"}}',
        _UNMARSHAL % ("string", "ResponsesTextFormat.text.format.strict", "bool"),
    ),
]


@pytest.mark.parametrize(("field", "message"), RESPONSE_FIELDS, ids=[m for _, m in RESPONSE_FIELDS])
async def test_a_responses_field_of_the_wrong_type_gets_ollamas_error(
    emulator: Emulator, proxy: Proxy, field: bytes, message: str
) -> None:
    """The emulator refuses it as Ollama does, and so does the proxy, for `auto` too."""
    body = b'{"model": "qwen2.5:7b", "input": "hi", ' + field + b"}"
    await _refused_alike(emulator, proxy, "/v1/responses", body, message)


@pytest.mark.parametrize(
    "field",
    [
        b'"reasoning": {"x": 1e400, "summary": "auto"}',
        b'"conversation": {"id": 1e400}',
        b'"text": {"format": {"type": "text", "x": 1e400}, "verbosity": 1e400}',
        # A json.RawMessage, kept unread and echoed in the answer's `text` as written.
        b'"text": {"format": {"type": "text", "schema": [1e400]}}',
        b'"include": null, "background": false',
    ],
)
async def test_a_responses_field_go_reads_is_served(
    emulator: Emulator, proxy: Proxy, field: bytes
) -> None:
    """What those structs take (a key they do not have skipped, a json.RawMessage kept
    unread) is served, directly and for `auto`."""
    body = b'{"model": "qwen2.5:7b", "input": "hi", ' + field + b"}"
    direct = await raw(emulator.url, "POST", "/v1/responses", body)
    assert direct[0] == 200, direct
    if b"schema" in field:
        assert b'"format":{"type":"text","schema":[1e400]}' in direct[2]
    routed = body.replace(b'"qwen2.5:7b"', b'"auto"')
    assert (await raw(proxy.url, "POST", "/v1/responses", routed))[0] == 200


# A Responses request's values nested deeper than the emulator's reading holds (Go reads
# 10,000 levels), as Ollama echoes them: a tool's `parameters` (a map) re-marshalled,
# keys sorted and numbers float64s; the text format's `schema` (a json.RawMessage)
# compacted as written, its escapes and numbers kept, `<` escaped as json.Marshal does.
_DEEP_HALF = 1000  # two levels each: 2,000 levels
_DEEP_PARAMETERS = b'{"z": 1.50, "k\\u00e9": [' * _DEEP_HALF + b'"<"' + b"]}" * _DEEP_HALF
_PRINTED_PARAMETERS = (
    '{"k\u00e9":['.encode() * _DEEP_HALF + b'"\\u003c"' + b'],"z":1.5}' * _DEEP_HALF
)
_DEEP_SCHEMA = b'{"z": 1, "k": [' * _DEEP_HALF + b'[1.50, "\\u00e9<"]' + b"]}" * _DEEP_HALF
_WRITTEN_SCHEMA = b'{"z":1,"k":[' * _DEEP_HALF + b'[1.50,"\\u00e9\\u003c"]' + b"]}" * _DEEP_HALF


async def test_a_responses_deep_tool_and_schema_are_echoed_as_ollama_writes_them(
    emulator: Emulator, proxy: Proxy
) -> None:
    """No stand-in of the emulator's reading reaches the answer: the values below what
    it reads come back as Go writes what it read, directly, for a model and for
    `auto` (the proxy forwards what is that deep as written)."""
    body = (
        b'{"model": "qwen2.5:7b", "input": "hi", "stream": false, "tools": [{"type":'
        b' "function", "name": "f", "parameters": %s}], "text": {"format": {"type":'
        b' "json_schema", "name": "s", "schema": %s}}}' % (_DEEP_PARAMETERS, _DEEP_SCHEMA)
    )
    for url, model in (
        (emulator.url, b"qwen2.5:7b"),
        (proxy.url, b"qwen2.5:7b"),
        (proxy.url, b"auto"),
    ):
        sent = body.replace(b"qwen2.5:7b", model)
        status, _, answer = await raw(url, "POST", "/v1/responses", sent)
        assert status == 200, (url, model, answer[:300])
        assert b'"parameters":' + _PRINTED_PARAMETERS + b"}" in answer, (url, model)
        assert b'"schema":' + _WRITTEN_SCHEMA + b"}" in answer, (url, model)


async def test_a_responses_schema_keeps_its_escapes_as_written(emulator: Emulator) -> None:
    """json.Compact of a json.RawMessage removes blanks alone: a `\\u00e9` the client
    wrote is echoed so."""
    body = (
        b'{"model": "qwen2.5:7b", "input": "hi", "stream": false, "text": {"format":'
        b' {"type": "json_schema", "name": "s", "schema": {"t": "\\u00e9", "n": 1.50}}}}'
    )
    status, _, answer = await raw(emulator.url, "POST", "/v1/responses", body)
    assert status == 200, answer[:300]
    assert b'"schema":{"t":"\\u00e9","n":1.50}' in answer, answer[:2000]


async def test_a_responses_text_format_is_read_whatever_its_keys_case(
    emulator: Emulator, proxy: Proxy
) -> None:
    """Go's decoder matches a struct's fields case-insensitively: `Text`, `Format` and
    its fields name them, and the format is echoed, directly and for `auto`."""
    body = (
        b'{"model": "qwen2.5:7b", "input": "hi", "stream": false, "Text": {"Format":'
        b' {"Type": "json_schema", "NAME": "p", "Schema": {"type": "object"}}}}'
    )
    echoed = b'"text":{"format":{"type":"json_schema","name":"p","schema":{"type":"object"}}}'
    for url, model in (
        (emulator.url, b"qwen2.5:7b"),
        (proxy.url, b"qwen2.5:7b"),
        (proxy.url, b"auto"),
    ):
        status, _, answer = await raw(
            url, "POST", "/v1/responses", body.replace(b"qwen2.5:7b", model)
        )
        assert status == 200, (url, model, answer[:300])
        assert echoed in answer, (url, model, answer[:2000])


# A format that is no object, as written (blanks, an escape, a no-break space, a
# newline's escape), and the message Go's %q of its bytes makes: on /api/chat the bytes
# as sent; through the OpenAI middleware, which encodes the chat request again, compacted;
# through the proxy, which forwards its own writing of the body (orjson's), those.
_ODD_FORMAT = '[1, "\\u00e9", "\u00a0", "\\n"]'.encode()
_INVALID = 'invalid format: "%s"; expected "json" or a valid JSON Schema object'
_AS_SENT = _INVALID % r"[1, \"\\u00e9\", \"\u00a0\", \"\\n\"]"
_COMPACTED = _INVALID % r"[1,\"\\u00e9\",\"\u00a0\",\"\\n\"]"
_AS_FORWARDED = _INVALID % '[1,\\"\u00e9\\",\\"\\u00a0\\",\\"\\\\n\\"]'


@pytest.mark.parametrize(
    ("path", "field", "direct_message"),
    [
        ("/api/chat", b'"format": %s', _AS_SENT),
        ("/api/generate", b'"Format": %s', _AS_SENT),
        (
            "/v1/chat/completions",
            b'"response_format": {"type": "json_schema", "json_schema": {"schema": %s}}',
            _COMPACTED,
        ),
        (
            "/v1/responses",
            b'"text": {"format": {"type": "json_schema", "name": "s", "schema": %s}}',
            _COMPACTED,
        ),
    ],
)
async def test_an_invalid_format_is_named_as_gos_q_quotes_its_bytes(
    emulator: Emulator, proxy: Proxy, path: str, field: bytes, direct_message: str
) -> None:
    """llm.Completion's 500 quotes the format's bytes with %q: as the handler holds
    them, not as a reading of them writes them again."""
    fields = {
        "/api/chat": _CHAT,
        "/api/generate": _ASK,
        "/v1/chat/completions": _CHAT,
        "/v1/responses": b'"model": "qwen2.5:7b", "input": "hi", "stream": false',
    }[path]
    body = b"{" + fields + b", " + field % _ODD_FORMAT + b"}"
    for url, model, message in (
        (emulator.url, b"qwen2.5:7b", direct_message),
        (proxy.url, b"qwen2.5:7b", _AS_FORWARDED),
        (proxy.url, b"auto", _AS_FORWARDED),
    ):
        status, _, answer = await raw(url, "POST", path, body.replace(b"qwen2.5:7b", model))
        assert status == 500, (url, model, answer[:300])
        assert error_text(path, orjson.loads(answer)) == message, (url, model)


def _namespaces(levels: int, innermost: bytes) -> bytes:
    """A Responses tool: namespaces within namespaces, `levels` of them, around
    `innermost`."""
    opening = b'{"type": "namespace", "name": "n", "tools": ['
    return opening * levels + innermost + b"]}" * levels


async def test_a_responses_namespace_deeper_than_the_reading_is_echoed_as_go_marshals_it(
    emulator: Emulator, proxy: Proxy
) -> None:
    """ToResponse marshals each ResponsesTool, a namespace's members too, whatever
    their depth (two levels a namespace): every field, an unset one null."""
    levels = 600  # 1,200 levels: deeper than Python's json reads
    tool = _namespaces(levels, b'{"type": "function", "name": "f", "parameters": {"b": 1, "a": 2}}')
    body = b'{"model": "qwen2.5:7b", "input": "hi", "stream": false, "tools": [%s]}' % tool
    member = b'{"type":"namespace","name":"n","description":null,"strict":null,"parameters":null,'
    echoed = (
        (member + b'"tools":[')
        * levels
        + b'{"type":"function","name":"f","description":null,"strict":null,'
        b'"parameters":{"a":2,"b":1}}' + b"]}" * levels
    )
    for url, model in ((emulator.url, b"qwen2.5:7b"), (proxy.url, b"auto")):
        status, _, answer = await raw(
            url, "POST", "/v1/responses", body.replace(b"qwen2.5:7b", model)
        )
        assert status == 200, (url, model, answer[:300])
        assert b'"tools":[' + echoed + b"]" in answer, (url, model)


@pytest.mark.parametrize("schema", [b"false", b"0", b"[]"])
async def test_a_responses_schema_that_is_no_object_is_an_invalid_format(
    emulator: Emulator, proxy: Proxy, schema: bytes
) -> None:
    """FromResponsesRequest makes any schema the chat's format (a null sets none): a
    false, a zero or an empty array is one llm.Completion refuses."""
    body = (
        b'{"model": "qwen2.5:7b", "input": "hi", "stream": false, "text": {"format":'
        b' {"type": "json_schema", "name": "s", "schema": %s}}}' % schema
    )
    message = _INVALID % schema.decode()
    for url, model in ((emulator.url, b"qwen2.5:7b"), (proxy.url, b"auto")):
        status, _, answer = await raw(
            url, "POST", "/v1/responses", body.replace(b"qwen2.5:7b", model)
        )
        assert status == 500, (url, model, answer[:300])
        assert error_text("/v1/responses", orjson.loads(answer)) == message, (url, model)


# What anthropic.FromMessagesRequest refuses as it converts a message's blocks
# (anthropic/anthropic.go convertMessage, convertToolResultContent, resolveImageSource)
# and a tool's input_schema (convertTool), in that order: the middleware's 400.
_ANTHROPIC = b'{"model": "qwen2.5:7b", "max_tokens": 5, "messages": [%s]%s}'
_USER_BLOCK = b'{"role": "user", "content": [%s]}'
_RESULT = b'{"type": "tool_result", "tool_use_id": "t", "content": [%s]}'
ANTHROPIC_CONVERSION = [
    (_ANTHROPIC % (_USER_BLOCK % b'{"type": "image"}', b""), "invalid image source"),
    (
        _ANTHROPIC % (_USER_BLOCK % b'{"type": "image", "source": {"type": "url"}}', b""),
        "invalid image source type: url. Only base64 images are supported.",
    ),
    (
        _ANTHROPIC
        % (_USER_BLOCK % b'{"type": "image", "source": {"Type": "base64", "data": "ab="}}', b""),
        "invalid base64 image data: illegal base64 data at input byte 3",
    ),
    (
        _ANTHROPIC
        % (b'{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}', b""),
        "tool_use block missing required 'id' field",
    ),
    (
        _ANTHROPIC % (b'{"role": "assistant", "content": [{"type": "tool_use", "id": "t"}]}', b""),
        "tool_use block missing required 'name' field",
    ),
    (
        _ANTHROPIC
        % (_USER_BLOCK % (_RESULT % b'{"type": "text", "text": "x"}, {"type": "image"}'), b""),
        "invalid tool_result image source",
    ),
    # The result's content is an `any`: its blocks are maps, read by their exact keys.
    (
        _ANTHROPIC
        % (_USER_BLOCK % (_RESULT % b'{"type": "image", "source": {"Type": "base64"}}'), b""),
        "invalid image source type: . Only base64 images are supported.",
    ),
    (
        _ANTHROPIC
        % (
            b'{"role": "user", "content": "hi"}',
            b', "tools": [{"name": "f", "input_schema": {"type": 5}}]',
        ),
        'invalid input_schema for tool "f": json: cannot unmarshal number into Go struct field'
        " ToolFunctionParameters.type of type string",
    ),
    # The messages' errors come first.
    (
        _ANTHROPIC
        % (_USER_BLOCK % b'{"type": "image"}', b', "tools": [{"name": "f", "input_schema": "x"}]'),
        "invalid image source",
    ),
]


@pytest.mark.parametrize(
    ("body", "message"), ANTHROPIC_CONVERSION, ids=[m for _, m in ANTHROPIC_CONVERSION]
)
async def test_an_anthropic_request_go_cannot_convert_gets_ollamas_error(
    emulator: Emulator, proxy: Proxy, body: bytes, message: str
) -> None:
    """The emulator refuses it as Ollama does, and so does the proxy, for `auto` too."""
    await _refused_alike(emulator, proxy, "/v1/messages", body, message)


def _answer(body: bytes) -> dict[str, object]:
    doc = orjson.loads(body)
    assert isinstance(doc, dict)
    doc.pop("id", None)
    return doc


@pytest.mark.parametrize(
    "content",
    [
        b'[{"type": "text", "text": "sunny and "}, {"type": "text", "text": "warm"}]',
        b'[{"type": "text", "text": "sunny and warm"}, {"type": "other", "text": "cold"},'
        b' {"text": "cold"}, 5, {"type": "text", "text": 5}]',
    ],
)
async def test_an_anthropic_tool_result_of_text_blocks_is_read_as_its_text(
    emulator: Emulator, proxy: Proxy, content: bytes
) -> None:
    """convertToolResultContent joins the text of a result's "text" blocks (skipping
    any other element): the tool message the model reads, and so the answer and its
    token counts, are those of the same text given as a string."""
    turns = (
        b'{"role": "user", "content": "weather?"}, {"role": "assistant", "content":'
        b' [{"type": "tool_use", "id": "t", "name": "w", "input": {}}]},'
        b' {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",'
        b' "content": %s}]}'
    )
    body = _ANTHROPIC % (turns % content, b"")
    plain = _ANTHROPIC % (turns % b'"sunny and warm"', b"")
    direct = await raw(emulator.url, "POST", "/v1/messages", body)
    assert direct[0] == 200, direct
    expected = await raw(emulator.url, "POST", "/v1/messages", plain)
    assert _answer(direct[2]) == _answer(expected[2])
    proxied = await raw(proxy.url, "POST", "/v1/messages", body)
    assert _answer(proxied[2]) == _answer(expected[2])
    routed = body.replace(b'"qwen2.5:7b"', b'"auto"')
    assert (await raw(proxy.url, "POST", "/v1/messages", routed))[0] == 200


# What openai.FromResponsesRequest refuses of a tool (convertTool): its parameters,
# a map[string]any, written by json.Marshal (each map's keys sorted) and unmarshalled
# into an api.ToolFunctionParameters, a namespace's tools too; after the input's and
# the reasoning effort's errors.
_PARAMETERS_ERROR = "failed to unmarshal tool parameters: "
RESPONSE_TOOL_CONVERSION = [
    (
        b'"tools": [{"type": "function", "name": "f", "parameters": {"type": 5}}]',
        _PARAMETERS_ERROR + _UNMARSHAL % ("number", "ToolFunctionParameters.type", "string"),
    ),
    (
        b'"tools": [{"type": "function", "name": "f", "parameters": {"type": 5, "required": "x"}}]',
        _PARAMETERS_ERROR + _UNMARSHAL % ("string", "ToolFunctionParameters.required", "[]string"),
    ),
    (
        b'"tools": [{"type": "namespace", "name": "n", "tools": [{"type": "function",'
        b' "name": "f", "parameters": {"properties": 5}}]}]',
        _PARAMETERS_ERROR + _NOT_AN_OBJECT,
    ),
    (
        b'"tools": [{"type": "function", "name": "f", "parameters": {"type": 5}}],'
        b' "reasoning": {"effort": "huge"}',
        'invalid reasoning value: "huge" (must be "minimal", "low", "medium", "high", "xhigh",'
        ' "ultra", "max", or "none")',
    ),
]


@pytest.mark.parametrize(
    ("field", "message"), RESPONSE_TOOL_CONVERSION, ids=[m for _, m in RESPONSE_TOOL_CONVERSION]
)
async def test_a_responses_tool_go_cannot_convert_gets_ollamas_error(
    emulator: Emulator, proxy: Proxy, field: bytes, message: str
) -> None:
    """The emulator refuses it as Ollama does, and so does the proxy, for `auto` too."""
    body = b'{"model": "qwen2.5:7b", "input": "hi", ' + field + b"}"
    await _refused_alike(emulator, proxy, "/v1/responses", body, message)


# anthropic.MessagesRequest's fields (anthropic/anthropic.go) beside its messages:
# top_p a *float64, top_k an *int, stop_sequences a []string, and structs (pointers to
# them but for the tools): ThinkingConfig, ToolChoice, Metadata, OutputConfig, Tool.
_MESSAGES = (
    b'{"model": "qwen2.5:7b", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], %s}'
)
MESSAGES_FIELDS = [
    (b'"top_p": "x"', _UNMARSHAL % ("string", "MessagesRequest.top_p", "float64")),
    (b'"top_k": "x"', _UNMARSHAL % ("string", "MessagesRequest.top_k", "int")),
    (b'"stop_sequences": [1]', _UNMARSHAL % ("number", "MessagesRequest.stop_sequences", "string")),
    (
        b'"thinking": {"type": 5}',
        _UNMARSHAL % ("number", "ThinkingConfig.thinking.type", "string"),
    ),
    (
        b'"thinking": {"type": "enabled", "budget_tokens": "x"}',
        _UNMARSHAL % ("string", "ThinkingConfig.thinking.budget_tokens", "int"),
    ),
    (
        b'"thinking": "enabled"',
        _UNMARSHAL % ("string", "MessagesRequest.thinking", "anthropic.ThinkingConfig"),
    ),
    (
        b'"tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}',
        _UNMARSHAL % ("string", "ToolChoice.tool_choice.disable_parallel_tool_use", "bool"),
    ),
    (b'"metadata": {"user_id": 7}', _UNMARSHAL % ("number", "Metadata.metadata.user_id", "string")),
    (
        b'"output_config": {"effort": 1}',
        _UNMARSHAL % ("number", "OutputConfig.output_config.effort", "string"),
    ),
    (b'"tools": [5]', _UNMARSHAL % ("number", "MessagesRequest.tools", "anthropic.Tool")),
    (b'"tools": [{"name": 5}]', _UNMARSHAL % ("number", "Tool.tools.name", "string")),
    (
        b'"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": "5"}]',
        _UNMARSHAL % ("string", "Tool.tools.max_uses", "int"),
    ),
]


@pytest.mark.parametrize(("field", "message"), MESSAGES_FIELDS, ids=[m for _, m in MESSAGES_FIELDS])
async def test_an_anthropic_field_of_the_wrong_type_gets_ollamas_error(
    emulator: Emulator, proxy: Proxy, field: bytes, message: str
) -> None:
    """The emulator refuses it as Ollama does, and so does the proxy, for `auto` too."""
    await _refused_alike(emulator, proxy, "/v1/messages", _MESSAGES % field, message)


@pytest.mark.parametrize(
    "field",
    [
        b'"thinking": {"type": "disabled", "x": 1e400}, "metadata": {"user_id": "u", "y": [1e400]}',
        b'"tools": [{"name": "f", "input_schema": {"type": "object"}, "extra": 1e400}]',
        b'"top_k": 3, "top_p": 0.5, "stop_sequences": ["x"], "tool_choice": {"type": "auto"}',
    ],
)
async def test_an_anthropic_field_go_reads_is_served(
    emulator: Emulator, proxy: Proxy, field: bytes
) -> None:
    """What those structs take (a key they do not have skipped unread) is served,
    directly and for `auto`."""
    body = _MESSAGES % field
    direct = await raw(emulator.url, "POST", "/v1/messages", body)
    assert direct[0] == 200, direct
    routed = body.replace(b'"qwen2.5:7b"', b'"auto"')
    assert (await raw(proxy.url, "POST", "/v1/messages", routed))[0] == 200


# thinkFromReasoningEffort names the effort it refuses with %q: Go's quoting.
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", b'{"model": "qwen2.5:7b", "input": "hi", "reasoning": {"effort": %s}}'),
        (
            "/v1/chat/completions",
            b'{"model": "qwen2.5:7b", ' + _OA_USER + b', "reasoning_effort": %s}',
        ),
    ],
    ids=["responses", "chat"],
)
@pytest.mark.parametrize(
    ("effort", "quoted"),
    [(b'"a\\"b"', '"a\\"b"'), (b'"\\u00e9\\n\\u0007"', '"\u00e9\\n\\a"')],
    ids=["quote", "controls"],
)
async def test_an_invalid_reasoning_effort_is_quoted_as_go_quotes_it(
    emulator: Emulator, proxy: Proxy, path: str, body: bytes, effort: bytes, quoted: str
) -> None:
    message = (
        f"invalid reasoning value: {quoted} (must be "
        '"minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none")'
    )
    await _refused_alike(emulator, proxy, path, body % effort, message)


# Objects Go decodes into a map[string]any, read by their exact keys (no field to match
# a key of another case): an OpenAI chat message's content parts (openai.Message's
# `content` is an `any`), an Anthropic request's system blocks (`system`) and a tool
# result's content blocks (ContentBlock's `content`). The proxy forwards their keys as
# sent, so the backend reads them as Ollama would.
_OA_PARTS = (
    b'{"model": "qwen2.5:7b", "messages": [{"role": "user", "content": [%s]}], "stream": false}'
)
_TOOL_TURNS = (
    b'{"role": "user", "content": "weather?"}, {"role": "assistant", "content":'
    b' [{"type": "tool_use", "id": "t", "name": "w", "input": {}}]},'
    b' {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",'
    b' "content": %s}]}'
)
MAP_KEYS = [
    (
        "/v1/chat/completions",
        _OA_PARTS % b'{"type": "text", "text": "hi", "Text": "bye"}',
        _OA_PARTS % b'{"type": "text", "text": "hi"}',
    ),
    (
        "/v1/messages",
        _ANTHROPIC
        % (
            b'{"role": "user", "content": "hi"}',
            b', "system": [{"type": "text", "text": "be brief", "Text": "be long"}]',
        ),
        _ANTHROPIC % (b'{"role": "user", "content": "hi"}', b', "system": "be brief"'),
    ),
    (
        "/v1/messages",
        _ANTHROPIC
        % (
            b'{"role": "user", "content": "hi"}',
            b', "system": [{"Type": "text", "text": "be brief"}]',
        ),
        _ANTHROPIC % (b'{"role": "user", "content": "hi"}', b""),
    ),
    (
        "/v1/messages",
        _ANTHROPIC % (_TOOL_TURNS % b'[{"type": "text", "text": "sunny", "TEXT": "cold"}]', b""),
        _ANTHROPIC % (_TOOL_TURNS % b'"sunny"', b""),
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "plain"), MAP_KEYS, ids=[f"{p} {b[-60:]!r}" for p, b, _ in MAP_KEYS]
)
async def test_a_map_is_read_by_its_exact_keys(
    emulator: Emulator, proxy: Proxy, path: str, body: bytes, plain: bytes
) -> None:
    """The emulator runs what Go reads (the key of another case ignored), as if `plain`
    were sent, and so does the body the proxy forwards; `auto` serves it too."""
    direct = await raw(emulator.url, "POST", path, body)
    assert direct[0] == 200, direct
    served = _served(path, direct[2])
    assert _served(path, (await raw(emulator.url, "POST", path, plain))[2]) == served
    proxied = await raw(proxy.url, "POST", path, body)
    assert _served(path, proxied[2]) == served
    routed = await raw(proxy.url, "POST", path, body.replace(b'"qwen2.5:7b"', b'"auto"'))
    assert routed[0] == 200, routed


async def test_an_openai_content_part_of_another_case_is_refused(
    emulator: Emulator, proxy: Proxy
) -> None:
    """openai.FromChatRequest reads a part's `type` by its exact key: "Type" is none, and
    the part "invalid message format", Ollama's 400."""
    body = _OA_PARTS % b'{"Type": "text", "text": "hi"}'
    await _refused_alike(emulator, proxy, "/v1/chat/completions", body, "invalid message format")

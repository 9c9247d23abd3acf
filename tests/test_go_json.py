"""What the backend reads is what the proxy checked: bodies Go's encoding/json (Ollama)
reads differently from orjson cannot carry a model past an API key's allow-list, nor a
prompt past the limits, on any model-routed path, however deep it is nested.

The backend here is a front for the emulator that decodes each body as Go does (an
oracle written independently of `proxy.go_json`), forwards what it read and records it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import (
    auto_routes,
    go_decoding,
    go_deep,
    go_json,
    go_readings,
    go_requests,
    go_types,
)
from proxy.auth import hash_key
from proxy.config_services import ApiKey, Auth
from proxy.config_serving import Limits
from proxy.emulator import wire as emulator_wire
from proxy.go_syntax_errors import GO_READS_IT
from proxy.routes import MODEL_ROUTED, ROUTES
from tests.support import (
    Emulator,
    Proxy,
    ServerThread,
    free_port,
    nested_properties,
    pass_on,
)

USER = "k-only-qwen"
ALLOWED, FORBIDDEN = "qwen2.5:7b", "llama3.1:8b"
PROBE = "X-Probe"  # marks the test's requests (the registry's own are not recorded)
# The paths whose body names the model that decides the backend.
MODEL_ROUTED_PATHS = frozenset(r.path for r in ROUTES if r.handler == MODEL_ROUTED)

TEMPLATES: dict[str, dict[str, Any]] = {
    "/api/generate": {"prompt": "hi", "stream": False},
    "/api/chat": {"messages": [{"role": "user", "content": "hi"}], "stream": False},
    "/api/embed": {"input": "hi"},
    "/api/embeddings": {"prompt": "hi"},
    "/api/show": {},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"prompt": "hi"},
    "/v1/embeddings": {"input": "hi"},
    "/v1/messages": {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"input": "hi"},
}
assert set(TEMPLATES) == MODEL_ROUTED_PATHS


# Go's encoding/json decoding into Ollama's request structs --------------------------


def _go_fold(key: str) -> str:
    # foldName: ASCII to upper case, other runes to ToUpper(ToLower(r)).
    return key.replace("\u0130", "i").lower().upper()


def _go_into(old: Any, new: Any) -> Any:
    """Go decoding `new` into a value that already holds `old`: null leaves a string or
    number as it was, an object fills a struct or map without clearing it, an array
    decodes into the slice's existing elements and is cut to its own length."""
    if new is None:
        return old if isinstance(old, str | int | float | bool) else None
    if isinstance(old, dict) and isinstance(new, dict):
        merged = dict(old)
        for key, value in new.items():
            merged[key] = _go_into(merged[key], value) if key in merged else value
        return merged
    if isinstance(old, list) and isinstance(new, list):
        return [_go_into(old[i], v) if i < len(old) else v for i, v in enumerate(new)]
    return new


def _go_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        name = _go_fold(key).lower()
        out[name] = _go_into(out[name], value) if name in out else value
    return out


def _go_strings(value: Any) -> Any:
    """Lone surrogates (json keeps those it reads from escapes) as U+FFFD."""
    if isinstance(value, str):
        return re.sub("[\ud800-\udfff]", "\ufffd", value)
    if isinstance(value, list):
        return [_go_strings(v) for v in value]
    if isinstance(value, dict):
        return {_go_strings(k): _go_strings(v) for k, v in value.items()}
    return value


def go_decode(body: bytes) -> Any:
    """The first JSON value, invalid UTF-8 as U+FFFD, trailing bytes ignored."""
    text = body.decode("utf-8", "replace").lstrip(" \t\r\n")
    return _go_strings(json.JSONDecoder(object_pairs_hook=_go_object).raw_decode(text)[0])


@dataclass
class GoBackend:
    """An HTTP front for the emulator that reads model-routed bodies as Ollama does."""

    target: str
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "POST" and request.path in MODEL_ROUTED_PATHS:
            try:
                doc = go_decode(body)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                if PROBE in request.headers:
                    self.seen.append((request.path, doc))
                body = json.dumps(doc).encode()
        return await pass_on(request, self.target, body)

    def models(self) -> set[Any]:
        """The models the backend was asked to run or describe."""
        return {
            doc.get("model") or (doc.get("name") if path == "/api/show" else None)
            for path, doc in self.seen
        }


@pytest.fixture
def go_backend(servers: ServerThread, own_emulator: Emulator) -> Iterator[tuple[str, GoBackend]]:
    backend = GoBackend(own_emulator.url)
    port = free_port()
    runner = servers.serve(backend.app, port)
    yield f"http://127.0.0.1:{port}", backend
    servers.stop(runner)


def guarded_proxy(servers: ServerThread, url: str, limits: Limits | None = None) -> Proxy:
    auth = Auth(keys=(ApiKey(sha256=hash_key(USER), name="one", models=(ALLOWED,)),))
    return Proxy(servers, [url], auth=auth, limits=limits or Limits())


async def post(url: str, path: str, body: bytes) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {USER}", PROBE: "1"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + path, data=body, headers=headers) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def raw_body(path: str, lead: bytes, tail: bytes = b"", **extra: Any) -> bytes:
    """The path's template with `lead` (raw members) first and `tail` after the value."""
    rest = orjson.dumps({**TEMPLATES[path], **extra})[1:-1]
    return b"{" + lead + (b"," + rest if rest else b"") + b"}" + tail


def _quoted(model: str) -> bytes:
    return orjson.dumps(model)


BYPASSES: dict[str, bytes] = {
    "case_variant": b'"model":' + _quoted(ALLOWED) + b',"Model":' + _quoted(FORBIDDEN),
    "escaped_case_variant": (
        b'"model":' + _quoted(ALLOWED) + b',"M\\u004fDEL":' + _quoted(FORBIDDEN)
    ),
    "duplicate": b'"model":' + _quoted(ALLOWED) + b',"model":' + _quoted(FORBIDDEN),
    "invalid_utf8": b'"model":' + _quoted(FORBIDDEN) + b',"x":"\xff\xe2\x82"',
    "lone_surrogate": b'"model":' + _quoted(FORBIDDEN) + b',"x":"\\ud800"',
    "trailing_bytes": b'"model":' + _quoted(FORBIDDEN),
}


@pytest.mark.parametrize("path", sorted(MODEL_ROUTED_PATHS))
async def test_no_body_runs_a_model_outside_the_keys_list(
    servers: ServerThread, go_backend: tuple[str, GoBackend], path: str
) -> None:
    url, backend = go_backend
    prx = guarded_proxy(servers, url)
    try:
        for name, lead in BYPASSES.items():
            tail = b" x" if name == "trailing_bytes" else b""
            status, content_type, answer = await post(prx.url, path, raw_body(path, lead, tail))
            assert status in (403, 404), (name, status, answer)
            assert content_type.startswith("application/json") and b"error" in answer, name
        # The allowed model still goes through, in each of those spellings.
        lead = b'"Model":' + _quoted(FORBIDDEN) + b',"MODEL":' + _quoted(ALLOWED)
        status, _, answer = await post(prx.url, path, raw_body(path, lead, b" trailing"))
        assert status not in (403, 404), answer
    finally:
        prx.stop()
    assert backend.models() == {ALLOWED}


def _go_prompt_chars(doc: dict[str, Any]) -> int:
    total = sum(len(doc[k]) for k in ("prompt", "system") if isinstance(doc.get(k), str))
    for message in doc.get("messages") or ():
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            total += len(message["content"])
    return total


LIMITS = Limits(max_messages=2, max_prompt_chars=100)
BIG = "x" * 500


def _message(content: str | None = None) -> dict[str, str]:
    return {"role": "user"} if content is None else {"role": "user", "content": content}


def _chat(members: bytes) -> bytes:
    """A chat body of the allowed model with these raw members (and no others)."""
    return b'{"model":' + _quoted(ALLOWED) + b"," + members + b',"stream":false}'


OVER_LIMITS: dict[str, tuple[str, bytes]] = {
    # Go decodes the second array into the first one's elements: the content stays.
    "duplicate_messages": (
        "/api/chat",
        _chat(
            b'"messages":'
            + orjson.dumps([_message(BIG)])
            + b',"messages":'
            + orjson.dumps([_message()])
        ),
    ),
    "case_variant_messages": (
        "/api/chat",
        _chat(b'"Messages":' + orjson.dumps([_message("hi")] * 5)),
    ),
    "case_variant_content": (
        "/api/chat",
        _chat(b'"messages":[{"role":"user","content":"hi","Content":' + _quoted(BIG) + b"}]"),
    ),
    "long_s_system": (
        "/api/chat",
        _chat(b'"messages":[{"role":"user","content":"hi"}],"\xc5\xbfystem":' + _quoted(BIG)),
    ),
    "trailing_bytes": (
        "/api/generate",
        raw_body("/api/generate", b'"model":' + _quoted(ALLOWED), b" x", prompt=BIG),
    ),
    "invalid_utf8": (
        "/api/generate",
        raw_body("/api/generate", b'"model":' + _quoted(ALLOWED) + b',"x":"\xff"', prompt=BIG),
    ),
    "case_variant_prompt": (
        "/api/generate",
        raw_body("/api/generate", b'"model":' + _quoted(ALLOWED) + b',"PROMPT":' + _quoted(BIG)),
    ),
}


async def test_limits_hold_for_what_the_backend_reads(
    servers: ServerThread, go_backend: tuple[str, GoBackend]
) -> None:
    url, backend = go_backend
    prx = guarded_proxy(servers, url, LIMITS)
    try:
        for name, (path, body) in OVER_LIMITS.items():
            before = len(backend.seen)
            status, _, answer = await post(prx.url, path, body)
            if status in (400, 413):
                assert b"too" in answer, (name, answer)  # "too many messages", "too long"
                continue
            (arrived,) = backend.seen[before:]
            messages = arrived[1].get("messages") or ()
            assert len(messages) <= LIMITS.max_messages, name
            assert _go_prompt_chars(arrived[1]) <= LIMITS.max_prompt_chars, name
    finally:
        prx.stop()
    assert backend.seen, "no body within the limits reached the backend"


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _deeply(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


# Nested deeper than orjson writes (254 levels) and reads (1024), and than Go reads:
# its scanner takes 10,000 levels (maxNestingDepth), the body's object one of them.
@pytest.mark.parametrize("depth", [255, 600, 9_999, 10_000, 20_000])
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/v1/chat/completions"])
async def test_a_deeply_nested_body_is_answered_as_the_backend_answers_it(
    emulator: Emulator, proxy: Proxy, path: str, depth: int
) -> None:
    """Ollama reads a body nested as deep as Go's decoder goes (an unknown field is
    skipped, whatever its depth) and refuses a deeper one with Go's "exceeded max
    depth": through the proxy, each gets the answer the backend gives it directly."""
    body = raw_body(path, b'"model":' + _quoted(ALLOWED) + b',"x":' + _deeply(depth))
    async with aiohttp.ClientSession() as http:
        async with http.post(emulator.url + path, data=body) as resp:
            direct = resp.status, await resp.read()
        async with http.post(proxy.url + path, data=body) as resp:
            proxied = resp.status, await resp.read()
    assert proxied == direct
    if depth < 1000:  # deeper, the emulator's Python decoder gives up before Go's would
        assert direct[0] == 200


@pytest.mark.parametrize("depth", [255, 600])
@pytest.mark.parametrize("path", ["/api/chat", "/api/autoroute/explain"])
async def test_auto_routes_a_deeply_nested_body(proxy: Proxy, path: str, depth: int) -> None:
    body = raw_body("/api/chat", b'"model":"auto","x":' + _deeply(depth))
    async with aiohttp.ClientSession() as http, http.post(proxy.url + path, data=body) as resp:
        assert resp.status == 200, await resp.read()


# Bodies Go's decoder refuses (a syntax error, a body of blanks, NaN) or decodes into
# no request struct (not an object, a field of the wrong type), and one it reads.
_REFUSED_BODIES = [
    b"NaN",
    b"-Infinity",
    b'{"a":1,}',
    b'{"model":"auto","messages":[',
    b"nul",
    b"",
    b"  ",
    b'{"model":"auto","prompt":"\xff\x01"}',
    b"[1]",
    b'"x"',
    b'{"model":"auto","messages":"hi"}',
    b'{"model":1}',
    b'{"model":"auto","messages":[]} trailing',
    b'{"model":"auto","stream":"yes","stream":false}',
    b'{"model":"auto","Stream":"yes","stream":false}',
    # Read as Go ends with it: a null leaves the model and the prompt as set before.
    b'{"model":"auto","model":null,"prompt":"hi","prompt":null}',
]


@pytest.mark.parametrize("body", _REFUSED_BODIES)
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
async def test_explain_refuses_a_body_as_the_route_it_ranks_for_does(
    proxy: Proxy, path: str, body: bytes
) -> None:
    """explain reads a body as the route it ranks for: what that route answers with a
    400 (Go's decoding error, through the proxy from the backend or from the proxy
    itself), explain answers in the same words; what it reads, explain ranks, but a
    load (no prompt, no messages), which the route answers itself with no model."""
    async with aiohttp.ClientSession() as http:
        async with http.post(proxy.url + path, data=body) as resp:
            routed = resp.status, await resp.read()
        explain = proxy.url + "/api/autoroute/explain"
        async with http.post(explain, params={"path": path}, data=body) as resp:
            explained = resp.status, await resp.read()
    if routed[0] == 400:
        assert explained == routed
        return
    assert explained[0] == 200
    doc = orjson.loads(explained[1])
    # A generation's first line is a chunk not done; a load's answer is done at once.
    if orjson.loads(routed[1].split(b"\n", 1)[0]).get("done_reason") == "load":
        assert (doc["model"], doc["reason"], doc["ranking"]) == (None, "load", []), doc
    else:
        assert doc["ranking"], doc


def test_values_below_the_depth_read_are_forwarded_as_written() -> None:
    """Each value below `KEPT_DEPTH` goes as the client wrote it, invalid UTF-8 and
    all (Go reads it there as it reads it in the client's body); what the proxy reads
    above it is read as Go reads it: the last of the keys that fold alike, and nothing
    after the first value."""
    deep = _deeply(go_deep.KEPT_DEPTH + 400, b'"\xff", {"Model": "z"}')
    shallow = b'{"a": [' + b'{"b": ' * 3 + b"2" + b"}" * 3 + b"]}"
    body = b'{"model": "m", "Model": "n", "x": ' + deep + b', "y": ' + shallow + b"} trailing"
    doc, forwarded = go_json.read(body)
    assert doc["model"] == "n" and doc["y"] == orjson.loads(shallow)
    kept = _deeply(go_deep.KEPT_DEPTH - 1, deep[go_deep.KEPT_DEPTH - 1 : -go_deep.KEPT_DEPTH + 1])
    assert forwarded == b'{"model":"n","x":' + kept + b',"y":' + orjson.dumps(doc["y"]) + b"}"


@pytest.mark.parametrize("depth", [10_000, 20_000])
def test_a_body_deeper_than_go_reads_goes_as_sent(depth: int) -> None:
    """No JSON to Go ("exceeded max depth"): the backend answers its own error."""
    body = b'{"model": "m", "x": ' + _deeply(depth) + b"}"
    assert go_json.read(body) == (None, body)


# Bodies nested deeper than Python's json reads, each with Go's scanner error (none for
# the last two): the error stands below the levels `first_value` reads, or is the
# nesting itself (maxNestingDepth: 10,000 levels).
_DEEP_BODIES = [
    (_deeply(5000, b"1 2"), "invalid character '2' after array element"),
    (b"[" * 5000, "unexpected EOF"),
    (b"[" * 5000 + b"1", "unexpected EOF"),
    (_deeply(3000, b"1."), "invalid character ']' after decimal point in numeric literal"),
    (_deeply(3000, b"1.5.2"), "invalid character '.' after array element"),
    (_deeply(3000, b"01"), "invalid character '1' after array element"),
    (_deeply(3000, b"-"), "invalid character ']' in numeric literal"),
    (_deeply(3000, b"[1,]"), "invalid character ']' looking for beginning of value"),
    (_deeply(3000, b"tru"), "invalid character ']' in literal true (expecting 'e')"),
    (_deeply(3000, b"NaN"), "invalid character 'N' looking for beginning of value"),
    (_deeply(3000, b'"a\x01"'), "invalid character '\\x01' in string literal"),
    (_deeply(3000, b'"\\q"'), "invalid character 'q' in string escape code"),
    (_deeply(3000, b'{"k" 1}'), "invalid character '1' after object key"),
    (
        _deeply(3000, b'{"k": 1,}'),
        "invalid character '}' looking for beginning of object key string",
    ),
    (_deeply(3000, b'{"k": [1] 2}'), "invalid character '2' after object key:value pair"),
    (_deeply(3000, b"[1] 2"), "invalid character '2' after array element"),
    (b"[" * 3000 + b"1" + b"]" * 2999 + b"}", "invalid character '}' after array element"),
    (b"[" * 3000 + b"x" + b"[" * 8000, "invalid character 'x' looking for beginning of value"),
    (b"[" * 10_001 + b"]" * 10_001, "invalid character '[' exceeded max depth"),
    (b"[" * 10_000 + b"]" * 10_000, GO_READS_IT),
    (b"[" * 10_000 + b"{" + b"}" + b"]" * 10_000, "invalid character '{' exceeded max depth"),
    (_deeply(9_997, b'{"a": [1, "b", true, null, {}, []], "c": -1.5e3}'), GO_READS_IT),
    (b" " + _deeply(5000) + b" trailing", GO_READS_IT),
]


@pytest.mark.parametrize(("body", "error"), _DEEP_BODIES, ids=[e for _, e in _DEEP_BODIES])
def test_a_body_too_deep_for_pythons_json_gets_gos_error(body: bytes, error: str) -> None:
    """`decode_error` (and `first_value`, the emulator's reading) finds Go's error however
    deep it stands; the routed reading forwards a body Go refuses as sent, for the
    backend's own error, and reads one Go reads."""
    assert go_readings.decode_error(body) == error
    doc, forwarded = go_json.read(body)
    if error == GO_READS_IT:
        assert doc is not None
    else:
        assert (doc, forwarded) == (None, body)


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1" + b"0" * 400])
def test_a_number_beyond_a_double_is_forwarded_as_written(number: bytes) -> None:
    """Go refuses it where it decodes it, naming the field; the proxy cannot hold it as
    a number, and forwards it as the client wrote it for the backend to answer."""
    body = b'{"model":"m","prompt":"hi","options":{"temperature":' + number + b"}}"
    doc, forwarded = go_json.read(body)
    assert doc["model"] == "m" and doc["prompt"] == "hi"
    assert forwarded == b'{"model":"m","prompt":"hi","options":{"temperature":' + number + b"}}"


@pytest.mark.parametrize(
    "number", [b"18446744073709551616", b"-9223372036854775809", b"100000000000000000000000"]
)
def test_an_integer_beyond_64_bits_is_forwarded_as_written_and_read_as_go_reads_it(
    number: bytes,
) -> None:
    """orjson reads it as a double and would write it back as one
    (`1.8446744073709552e19`): Go names the number as written where an int field
    refuses it (encoding/json's literalStore), so it goes as the client wrote it. Where
    Go reads it into a float64 (an option, `keep_alive`) it is no error."""
    body = b'{"model":"m","keep_alive":' + number + b',"options":{"num_ctx":' + number + b"}}"
    doc, forwarded = go_json.read(body)
    assert forwarded == body
    assert go_requests.refusal("/api/generate", doc) is None
    assert go_requests.options_refusal(doc["options"]) is None
    top = go_json.read(b'{"model":"m","top_logprobs":' + number + b"}")[0]
    assert go_requests.refusal("/api/chat", top) == (
        f"json: cannot unmarshal number {number.decode()} into Go struct field "
        "ChatRequest.top_logprobs of type int"
    )


@pytest.mark.parametrize("number", ["1e3", "1.0", "-2E-7", "1.50"])
def test_a_number_in_an_int_field_is_named_as_written(number: str) -> None:
    """A double loses how the client wrote it (`1e3` is 1000.0): the refusal reads the
    body again, keeping it as written, for Go's error."""
    body = b'{"model":"m","top_logprobs":' + number.encode() + b"}"
    doc, _ = go_json.read(body)
    assert auto_routes.refusal("/api/chat", doc, body) == auto_routes.Refused(
        f"json: cannot unmarshal number {number} into Go struct field "
        "ChatRequest.top_logprobs of type int"
    )
    chat = b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":' + (
        number.encode() + b"}"
    )
    doc, _ = go_json.read(chat)
    assert auto_routes.refusal("/v1/chat/completions", doc, chat) == auto_routes.Refused(
        f"json: cannot unmarshal number {number} into Go struct field "
        "ChatCompletionRequest.max_tokens of type int"
    )


_INTO = "json: cannot unmarshal {} into Go struct field {} of type {}"
_PROPERTY_ERROR = _INTO.format(
    "{}", "ToolFunctionParameters.tools.function.parameters.properties{}", "{}"
)
# (path, body, Go's error): Go decodes keys and elements in the body's order, returns the
# first type error it saved, unless an UnmarshalJSON's own error ends the decoding.
IN_BODY_ORDER = [
    (
        "/api/generate",
        b'{"stream":"yes","model":1}',
        _INTO.format("string", "GenerateRequest.stream", "bool"),
    ),
    (
        "/api/generate",
        b'{"model":1,"stream":"yes"}',
        _INTO.format("number", "GenerateRequest.model", "string"),
    ),
    (
        "/api/generate",
        b'{"model":"m","stream":"yes","think":"bogus"}',
        'invalid think value: "bogus" (must be "high", "medium", "low", "max", true, or false)',
    ),
    (
        "/api/generate",
        b'{"model":"m","keep_alive":1e400,"stream":"yes"}',
        _INTO.format("number 1e400", "GenerateRequest.keep_alive", "float64"),
    ),
    (
        "/api/generate",
        b'{"model":"m","context":["x",1e400]}',
        _INTO.format("string", "GenerateRequest.context", "int"),
    ),
    (
        "/api/chat",
        b'{"model":"m","messages":[{"content":1,"role":2}]}',
        _INTO.format("number", "ChatRequest.messages.content", "string"),
    ),
    (
        "/api/chat",
        b'{"model":"m","messages":[{"role":1,"tool_calls":[{"function":{"arguments":[]}}]}]}',
        go_types.NOT_AN_OBJECT,
    ),
    (
        "/api/chat",
        b'{"model":"m","tools":[{"function":{"parameters":{"required":[1]}},"type":2}]}',
        _INTO.format(
            "number", "ToolFunctionParameters.tools.function.parameters.required", "string"
        ),
    ),
    # A tool's properties (api.ToolPropertiesMap's UnmarshalJSON, each property
    # json.Unmarshal'd into an api.ToolProperty): its error ends the decoding.
    *(
        (
            "/api/chat",
            b'{"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":'
            b'{"type":"object","properties":' + properties + b'}}}],"stream":"yes"}',
            message,
        )
        for properties, message in [
            (
                b'{"a":{"description":5}}',
                _PROPERTY_ERROR.format("number", ".description", "string"),
            ),
            (b"[]", go_types.NOT_AN_OBJECT),
            (b'{"a":"x"}', _PROPERTY_ERROR.format("string", "", "api.ToolProperty")),
            (b'{"a":{"type":5}}', _PROPERTY_ERROR.format("number", ".type", "[]string")),
            (b'{"a":{"type":["s",1]}}', _PROPERTY_ERROR.format("number", ".type", "string")),
            (
                b'{"a":{"description":5,"type":true}}',
                _PROPERTY_ERROR.format("bool", ".type", "[]string"),
            ),
            (
                b'{"a":{"type":"object","properties":{"b":{"enum":5}}}}',
                _PROPERTY_ERROR.format("number", ".properties.enum", "[]interface {}"),
            ),
            (
                b'{"a":{"anyOf":[{"type":"string"},{"description":1}]}}',
                _PROPERTY_ERROR.format("number", ".anyOf.description", "string"),
            ),
            (
                b'{"a":{"items":{"x":[1e400]}}}',
                _PROPERTY_ERROR.format("number 1e400", ".items", "float64"),
            ),
            (
                b'{"a":null,"b":{"required":[1]}}',
                _PROPERTY_ERROR.format("number", ".required", "string"),
            ),
        ]
    ),
    (
        "/api/chat",
        b'{"model":"m","stream":"yes","tools":[{"type":1,"function":{"parameters":'
        b'{"properties":{"a":{"type":{}}}}}}]}',
        _PROPERTY_ERROR.format("object", ".type", "[]string"),
    ),
    (
        "/v1/chat/completions",
        b'{"model":"m","messages":[{"tool_calls":[{"function":{"name":1}}],"role":2}]}',
        _INTO.format("number", ".messages.tool_calls.function.name", "string"),
    ),
    (
        "/v1/messages",
        b'{"model":"m","max_tokens":1,"stream":"yes","messages":[{"content":"x","role":1}]}',
        _INTO.format("number", "MessagesRequest.messages.role", "string"),
    ),
    # A tool call's own fields, which api.Message's inner decoding names by the request
    # and the path from it; a type error is saved and the decoding goes on, to a later
    # `arguments` whose UnmarshalJSON error ends it.
    *(
        (
            "/api/chat",
            b'{"model":"m","stream":"yes","messages":[{"role":"assistant","tool_calls":['
            + call
            + b"]}]}",
            _INTO.format(kind, f"ChatRequest.messages.tool_calls{field}", go_type),
        )
        for call, kind, field, go_type in [
            (b'{"id":1,"function":{"name":"f"}}', "number", ".id", "string"),
            (b'{"function":{"name":1}}', "number", ".function.name", "string"),
            (b'{"function":{"index":"0"}}', "string", ".function.index", "int"),
            (b'{"function":{"index":true}}', "bool", ".function.index", "int"),
            (b'{"function":{"index":1.5}}', "number 1.5", ".function.index", "int"),
            (b'{"function":{"index":1e2}}', "number 1e2", ".function.index", "int"),
            (b'{"function":{"index":1e400}}', "number 1e400", ".function.index", "int"),
            (
                b'{"function":{"index":9223372036854775808}}',
                "number 9223372036854775808",
                ".function.index",
                "int",
            ),
            (b'"f"', "string", "", "api.ToolCall"),
            (b"5", "number", "", "api.ToolCall"),
            (b"[]", "array", "", "api.ToolCall"),
            (b'{"function":"f"}', "string", ".function", "api.ToolCallFunction"),
            (b'{"function":[]}', "array", ".function", "api.ToolCallFunction"),
            (b'{"function":{"index":"x","name":1}}', "string", ".function.index", "int"),
            (b'{"function":{"name":1,"index":"x"}}', "number", ".function.name", "string"),
            (b'{"Function":{"NAME":1}}', "number", ".function.name", "string"),
            (b'{"id":1},{"function":{"name":2}}', "number", ".id", "string"),
            # The ordered map decodes each value into an `any`: a float64.
            (
                b'{"function":{"name":1,"arguments":{"a":[1,{"b":1e400}],"c":2e400}}}',
                "number 1e400",
                ".function.arguments",
                "float64",
            ),
        ]
    ),
    (
        "/api/chat",
        b'{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":1}},'
        b'{"function":{"arguments":"x"}}]}]}',
        go_types.NOT_AN_OBJECT,
    ),
    # Null too: encoding/json hands it to the UnmarshalJSON of a field that is no
    # pointer, and the ordered map reads no object in it.
    (
        "/api/chat",
        b'{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":1,'
        b'"arguments":null}}]}]}',
        go_types.NOT_AN_OBJECT,
    ),
    (
        "/api/chat",
        b'{"model":"m","messages":[{"content":1,"tool_calls":[{"id":2}]}]}',
        _INTO.format("number", "ChatRequest.messages.content", "string"),
    ),
    (
        "/api/chat",
        b'{"model":"m","messages":[{"tool_calls":[{"id":2}],"content":1}]}',
        _INTO.format("number", "ChatRequest.messages.tool_calls.id", "string"),
    ),
    (
        "/v1/chat/completions",
        b'{"model":"m","messages":[{"role":"assistant","tool_calls":[{"index":1e400}]}]}',
        _INTO.format("number 1e400", "ToolCall.messages.tool_calls.index", "int"),
    ),
    # A content block's `input` is an api.ToolCallFunctionArguments: anything but an
    # object is its ordered map's error, which ends the decoding, in any block.
    *(
        (
            "/v1/messages",
            b'{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":'
            + content
            + b"}]}",
            go_types.NOT_AN_OBJECT,
        )
        for content in [
            b'[{"type":"tool_use","id":"t","name":"f","input":"x"}]',
            b'[{"type":"tool_use","input":[1]}]',
            b'[{"type":"text","text":"x","input":5}]',
            b'[{"type":1},{"type":"tool_use","input":true}]',
            b'[{"type":1,"Input":"x"}]',
            b'[{"type":"tool_use","id":"t","name":"f","input":null}]',
        ]
    ),
    (
        "/v1/messages",
        b'{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":'
        b'[{"type":1},{"type":"tool_use","input":{"a":{"b":-1e999}}}]}]}',
        _INTO.format("number -1e999", "MessagesRequest.messages.input", "float64"),
    ),
    # A content block's other fields (anthropic.ContentBlock, no UnmarshalJSON of its
    # own): the first type error in the body's order, unless an `input` ends it.
    *(
        (
            "/v1/messages",
            b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":'
            + content
            + b'}],"stream":"yes"}',
            _INTO.format(kind, "MessagesRequest.messages." + field, go_type),
        )
        for content, kind, field, go_type in [
            (b'[{"type":"text","text":1,"id":2}]', "number", "text", "string"),
            (b'[{"text":"x"},{"id":2,"type":3}]', "number", "id", "string"),
            (b'[{"type":"tool_use","name":[]}]', "array", "name", "string"),
            (b'[{"type":"tool_result","tool_use_id":{}}]', "object", "tool_use_id", "string"),
            (b'[{"type":"tool_result","is_error":"yes"}]', "string", "is_error", "bool"),
            (b'[{"type":"thinking","thinking":1}]', "number", "thinking", "string"),
            (
                b'[{"type":"thinking","thinking":"t","signature":2}]',
                "number",
                "signature",
                "string",
            ),
            (b'[{"type":"image","source":"x"}]', "string", "source", "anthropic.ImageSource"),
            (b'[{"type":"image","source":{"type":1}}]', "number", "source.type", "string"),
            (
                b'[{"source":{"type":"base64","media_type":"image/png","data":5,"url":6}}]',
                "number",
                "source.data",
                "string",
            ),
            (b'[{"type":"text","citations":{}}]', "object", "citations", "[]anthropic.Citation"),
            (b'[{"type":"text","citations":[1]}]', "number", "citations", "anthropic.Citation"),
            (
                b'[{"type":"text","citations":[null,{"type":"x","url":1,"title":2}]}]',
                "number",
                "citations.url",
                "string",
            ),
            (
                b'[{"type":"tool_result","content":[{"type":"text","n":[1e400]}]}]',
                "number 1e400",
                "content",
                "float64",
            ),
        ]
    ),
    (
        "/v1/messages",
        b'{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":'
        b'[{"type":"text","text":1},{"type":"tool_use","input":"x"}]}]}',
        go_types.NOT_AN_OBJECT,
    ),
]


@pytest.mark.parametrize(("path", "body", "message"), IN_BODY_ORDER)
def test_the_first_error_is_the_first_in_the_body(path: str, body: bytes, message: str) -> None:
    doc, _ = go_json.read(body)
    refused = auto_routes.refusal(path, doc, body)
    assert refused is not None and refused.message == message


# Tool calls Go decodes without an error: null leaves a field, or a whole call, as it
# is; a key no field has (an OpenAI `type`) is skipped; any int is an index.
TOOL_CALLS_ACCEPTED = [
    (
        "/api/chat",
        b'{"model":"m","messages":[{"role":"assistant","tool_calls":[' + calls + b"]}]}",
    )
    for calls in [
        b'{"id":"c1","type":"function","function":{"index":0,"name":"f","arguments":{}}}',
        b'null,{"id":null,"function":null},{"function":{"index":null,"name":null}}',
        b'{"function":{"index":-1,"arguments":{"a":[1,{"b":null}]}}}',
        b'{"function":{"index":9223372036854775807,"name":"f","extra":5}}',
    ]
] + [
    (
        "/v1/messages",
        b'{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":'
        b'[{"type":"tool_use","id":"t","name":"f","input":{"a":1}},{"type":"text",'
        b'"text":"x"}]}]}',
    ),
    (
        "/api/chat",
        b'{"model":"m","tools":[{"type":"function","items":{"a":1},"function":{"name":"f",'
        b'"parameters":{"type":"object","$defs":{"d":[1]},"items":null,"required":["a"],'
        b'"properties":{"a":{"type":["string","null"],"description":"d","enum":["x",1,null]},'
        b'"b":null,"c":{"type":null,"items":{"type":"string"},"required":null},"d":{"type":'
        b'"object","properties":{"e":{"anyOf":[{"type":"string"},null]}},"required":["e"]}}'
        b"}}}]}",
    ),
    # A value deeper than orjson reads, which the proxy keeps as written and reads none
    # of: no number beyond a double (Go reads it, 10,000 levels deep).
    (
        "/api/chat",
        b'{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":'
        b'"f","arguments":{"a":' + b"[" * 1100 + b"]" * 1100 + b"}}}]}]}",
    ),
    (
        "/v1/messages",
        b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":'
        b'"tool_result","tool_use_id":"t","content":' + b"[" * 1100 + b"]" * 1100 + b"}]}]}",
    ),
    # Every field of a content block, of the type Go reads it into, or null.
    (
        "/v1/messages",
        b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text",'
        b'"text":"x","citations":[{"type":"t","url":"u","title":"t","encrypted_index":"e",'
        b'"cited_text":"c"},null]},{"type":"image","source":{"type":"base64","media_type":'
        b'"image/png","data":"AA==","url":null}},{"type":"tool_result","tool_use_id":"t",'
        b'"content":[{"type":"text","text":"x","n":1e300}],"is_error":true},{"type":'
        b'"text","id":null,"name":null,"text":null,"source":null,"citations":null,'
        b'"is_error":null,"thinking":null,"signature":null,"tool_use_id":null}]},'
        b'{"role":"assistant","content":[{"type":"thinking","thinking":"t","signature":"s"}]}]}',
    ),
]


@pytest.mark.parametrize(("path", "body"), TOOL_CALLS_ACCEPTED)
def test_a_tool_call_go_decodes_is_not_refused(path: str, body: bytes) -> None:
    doc, _ = go_json.read(body)
    assert auto_routes.refusal(path, doc, body) is None


# (path, body giving a key twice in a message, Go's error): the message's UnmarshalJSON
# decodes each of its values, the earlier ones too.
IN_A_MESSAGE_TWICE = [
    (
        "/v1/messages",
        b'{"model":"m","max_tokens":1,"messages":[{"role":1,"role":"user","content":"x"}]}',
        _INTO.format("number", "MessagesRequest.messages.role", "string"),
    ),
    (
        "/api/chat",
        b'{"model":"m","messages":[{"role":1,"Role":"user","tool_calls":[{"function":'
        b'{"arguments":"x"}}]}]}',
        go_types.NOT_AN_OBJECT,
    ),
    (
        "/api/chat",
        b'{"model":"m","messages":[{"role":"user","content":"x","content":2,"role":1}]}',
        _INTO.format("number", "ChatRequest.messages.content", "string"),
    ),
    (
        "/api/chat",
        b'{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":'
        b'{"name":1,"name":"f"}}]}]}',
        _INTO.format("number", "ChatRequest.messages.tool_calls.function.name", "string"),
    ),
    (
        "/api/chat",
        b'{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":'
        b'{"index":1.5,"index":1}}]}]}',
        _INTO.format("number 1.5", "ChatRequest.messages.tool_calls.function.index", "int"),
    ),
    (
        "/v1/messages",
        b'{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":'
        b'[{"type":"tool_use","input":"x","input":{}}]}]}',
        go_types.NOT_AN_OBJECT,
    ),
    (
        "/v1/messages",
        b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":'
        b'[{"type":"text","text":1,"text":"x"}]}]}',
        _INTO.format("number", "MessagesRequest.messages.text", "string"),
    ),
    (
        "/v1/messages",
        b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":'
        b'[{"type":"image","source":{"type":1,"Type":"base64"}}]}]}',
        _INTO.format("number", "MessagesRequest.messages.source.type", "string"),
    ),
    (
        "/v1/messages",
        b'{"model":"m","max_tokens":1,"messages":[{"role":"user","Role":"user","content":'
        b'[{"type":"text","Citations":[{"URL":1}]}]}]}',
        _INTO.format("number", "MessagesRequest.messages.citations.url", "string"),
    ),
    (
        "/v1/messages",
        b'{"model":"m","max_tokens":1,"messages":[{"role":"user","Role":"assistant","content":'
        b'[{"type":"tool_use","Input":"x"}]}]}',
        go_types.NOT_AN_OBJECT,
    ),
    (
        "/v1/messages",
        b'{"model":"m","max_tokens":1,"messages":[{"role":"user","Role":"assistant","content":'
        b'[{"Type":1}]}]}',
        _INTO.format("number", "MessagesRequest.messages.type", "string"),
    ),
]


@pytest.mark.parametrize(("path", "body", "message"), IN_A_MESSAGE_TWICE)
def test_a_key_given_twice_in_a_message_is_decoded_each_time(
    path: str, body: bytes, message: str
) -> None:
    reading = auto_routes.repeated_key_reading(path, body)
    assert reading is not None and reading.refusal == message


def _go_runes(raw: bytes) -> str:
    """Go's utf8.DecodeRune over `raw`, rune by rune: an invalid sequence reads one byte
    at a time, each a U+FFFD (RuneError)."""
    out, i = [], 0
    while i < len(raw):
        for size in (1, 2, 3, 4):
            try:
                out.append(raw[i : i + size].decode("utf-8"))
            except UnicodeDecodeError:
                continue
            i += size
            break
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


# Valid runes and pieces of invalid UTF-8: truncated, overlong, an encoded surrogate,
# beyond U+10FFFF, a stray continuation byte.
UTF8_PIECES = (b"a", b"\xc3\xa9", b"\xf0\x9f\x99\x82", b"\xff", b"\xc3", b"\xe2\x82")
UTF8_PIECES += (b"\xf0\x9f\x99", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80")


@given(st.binary(max_size=40) | st.lists(st.sampled_from(UTF8_PIECES)).map(b"".join))
def test_each_byte_of_invalid_utf8_is_one_replacement(raw: bytes) -> None:
    """Invalid UTF-8 reads as Go reads it, one U+FFFD per byte of it, also where a
    large body is decoded a piece at a time (cut anywhere, a rune is never split)."""
    read = _go_runes(raw)
    assert go_decoding.go_string(raw) == read
    for piece in (1, 2, 3, 5):
        assert go_decoding._go_decode(raw, piece) == read


def test_the_reading_matches_the_go_oracle() -> None:
    """`go_json.read` reads the top level and the messages as the oracle does."""
    bodies = [
        b'{"model":"a","Model":"b","MODEL":"c"}',
        b'{"model":"a"}  {"model":"b"}',
        b'{"model":"a\xff","prompt":"\xc3"}',
        b'{"\xc5\xbfystem":"s","System":"t","thin\xe2\x84\xaa":true}',
        b'{"messages":[{"role":"user","Content":"x","content":"y","IMAGES":["z"]}]}',
        b'{"model":"\\ud800\\udc00\\udbff","x":"\\\\ud800"}',
    ]
    for body in bodies:
        doc, forwarded = go_json.read(body)
        assert orjson.loads(forwarded) == doc
        oracle = go_decode(body)
        for key in ("model", "system", "prompt", "think"):
            if oracle.get(key) is not None:
                assert doc[key] == oracle[key], (body, key)
        assert doc.get("messages") == oracle.get("messages"), body


# Bodies Go's decoder accepts and orjson does not, at random -------------------------

SPELLINGS: dict[str, tuple[str, ...]] = {
    "model": ("model", "Model", "MODEL", "mOdEl"),
    "prompt": ("prompt", "Prompt", "PROMPT"),
    "system": ("system", "System", "\u017fystem", "SY\u017fTEM"),
    "suffix": ("suffix", "Suffix", "suff\u0131x"),
    "think": ("think", "Think", "thin\u212a"),
    "messages": ("messages", "Messages", "me\u017f\u017fages"),
}
MESSAGE_SPELLINGS: dict[str, tuple[str, ...]] = {
    "role": ("role", "Role", "ROLE"),
    "content": ("content", "Content", "CONTENT"),
    "images": ("images", "Images", "\u0130mages"),
}
HOLE = "\ue000"  # becomes one of BROKEN in the body's bytes
BROKEN = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\ud800", b"\\udc00x", b"\xe2\x82\xac")
TRAILING = (b"", b" x", b'\n{"model":"z"}', b"garbage\xff", b"]")
texts = st.text(alphabet=st.sampled_from("ab \u00e9\U0001f642" + HOLE), max_size=6)


def _members(draw: st.DrawFn, spellings: dict[str, tuple[str, ...]], values: Any) -> bytes:
    """An object's members, some fields spelled twice or more, in any case."""
    names = draw(st.lists(st.sampled_from(sorted(spellings)), max_size=7))
    members = []
    for name in names:
        key = draw(st.sampled_from(spellings[name]))
        members.append(orjson.dumps(key) + b":" + draw(values(name)))
    return b"{" + b",".join(members) + b"}"


def _message_value(name: str) -> st.SearchStrategy[bytes]:
    if name == "images":
        return st.lists(st.just("aW1n"), max_size=2).map(orjson.dumps)
    if name == "role":
        return st.sampled_from([b'"user"', b'"system"', b'"assistant"'])
    return texts.map(orjson.dumps)


@st.composite
def _message_object(draw: st.DrawFn) -> bytes:
    return _members(draw, MESSAGE_SPELLINGS, _message_value)


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    return b"[" + b",".join(draw(st.lists(_message_object(), max_size=3))) + b"]"


def _body_value(name: str) -> st.SearchStrategy[bytes]:
    if name == "model":
        return st.sampled_from([ALLOWED, FORBIDDEN, "auto"]).map(orjson.dumps)
    if name == "think":
        return st.sampled_from([b"true", b"false", b'"high"'])
    if name == "messages":
        return _messages()
    return texts.map(orjson.dumps)


@st.composite
def go_bodies(draw: st.DrawFn) -> bytes:
    body = _members(draw, SPELLINGS, _body_value)
    while HOLE.encode() in body:
        body = body.replace(HOLE.encode(), draw(st.sampled_from(BROKEN)), 1)
    return body + draw(st.sampled_from(TRAILING))


@given(go_bodies())
@settings(max_examples=300, deadline=None)
def test_the_backend_reads_what_the_proxy_read(body: bytes) -> None:
    """Whatever the spelling, repetition, bytes and trailer: the body forwarded reads
    to Go exactly as the proxy read it, and the scalar fields (the model first) are
    those Go reads from the client's own bytes."""
    try:
        doc, forwarded = go_json.read(body)
    except go_json.BodyError:
        pytest.fail(f"refused a body Go reads: {body!r}")
    assert doc == go_decode(forwarded)
    sent = go_decode(body)
    for name in ("model", "prompt", "system", "suffix", "think"):
        assert doc.get(name) == sent.get(name), name


def test_keys_only_renamed_are_not_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys that fold to distinct fields are renamed in place: reading the body again in
    Go's order (a Python pass over every key, seconds for a body of a million) is for
    keys that fold alike, whose order decides which one Go keeps."""
    renamed = b'{"Model": "m", "PROMPT": "p", "Options": {"Top_K": 1}}'
    alike = b'{"model": "a", "Model": "b"}'
    read_again: list[bytes] = []
    go_order = go_json.read_as_go

    def spy(body: bytes) -> Any:
        read_again.append(body)
        return go_order(body)

    monkeypatch.setattr(go_json, "read_as_go", spy)
    doc, _ = go_json.read(renamed)
    assert doc == {"model": "m", "prompt": "p", "options": {"Top_K": 1}}
    assert go_json.read(alike)[0] == {"model": "b"}
    assert read_again == [alike]


def _count(value: Any) -> int:
    """The JSON values `value` is made of, itself included."""
    if isinstance(value, dict):
        return 1 + sum(_count(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_count(v) for v in value)
    return 1


_TRICKY = st.text(alphabet=st.sampled_from('ab,[]{}":\\ \t\n\u00e9'), max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TRICKY,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_TRICKY, inner, max_size=5),
    max_leaves=40,
)


@given(_JSON, st.sampled_from([None, 1]))
@settings(max_examples=300, deadline=None)
def test_values_counts_a_body_exactly_at_its_limit(doc: Any, indent: int | None) -> None:
    """`values` refuses a body exactly when it holds more values than the limit,
    whatever its strings hold (commas, brackets, quotes, escapes) and its blanks."""
    body = json.dumps(doc, indent=indent, ensure_ascii=False).encode()
    count = _count(doc)
    go_json.values(body, count)
    if count > 1:
        with pytest.raises(go_json.TooManyValues):
            go_json.values(body, count - 1)


@given(_JSON, st.sampled_from([None, 1]), st.booleans())
@settings(max_examples=300, deadline=None)
def test_left_out_says_so_exactly_when_a_key_is_given_twice(
    doc: Any, indent: int | None, ascii_only: bool
) -> None:
    """`left_out` finds no value left out of what `read` forwards for a body that
    gives no key twice, whatever its strings hold (colons, escapes) and its blanks, and
    finds the earlier value of one given twice, at any depth."""
    body = json.dumps(doc, indent=indent, ensure_ascii=ascii_only).encode()
    assert not go_json.left_out(body, go_json.read(body)[1])
    repeated = b'{"k": [' + body + b'], "k": {"a": 1, "a": ' + body + b"}}"
    assert go_json.left_out(repeated, go_json.read(repeated)[1])


# Go's decoding of a key given twice (encoding/json decode.go): a null zeroes an
# interface, a pointer, a map or a slice and leaves anything else (literalStore); a map
# is made only if nil, each of its entries decoded into a zeroed value (`object`); a
# struct's fields, and a pointer's target once it is not nil (`indirect`), take each
# later value into what they hold. Per request struct: (path, body, the document Go
# ends with, as the proxy forwards it).
_GO_MERGES = [
    (
        "/api/generate",
        b'{"model": "m", "Model": null, "prompt": "hi", "prompt": null, "stream": true,'
        b' "stream": null, "options": {"a": 1, "b": 2}, "options": {"b": [3], "A": 1E2}}',
        {"model": "m", "prompt": "hi", "stream": None, "options": {"a": 1, "b": [3], "A": 100}},
    ),
    (
        "/api/chat",
        b'{"model": "m", "options": {"a": 1}, "options": null, "options": {"b": {"c": 1}},'
        b' "options": {"b": {"d": 2}}, "think": true, "think": null, "logprobs": true,'
        b' "logprobs": null}',
        {"model": "m", "options": {"b": {"d": 2}}, "think": None, "logprobs": True},
    ),
    (
        "/v1/chat/completions",
        b'{"model": "m", "response_format": {"type": "json_schema", "json_schema":'
        b' {"schema": {"x": 1}}}, "response_format": {"Type": null, "json_schema": {}},'
        b' "stream_options": {"include_usage": true}, "stream_options": null,'
        b' "max_tokens": 3, "max_tokens": null, "stream": true, "stream": null}',
        {
            "model": "m",
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"x": 1}}},
            "stream_options": None,
            "max_tokens": None,
            "stream": True,
        },
    ),
    # A slice is decoded into the elements it holds (each one's fields, a null leaving a
    # number), its length set to the later array's; an api.Message starts afresh (its
    # UnmarshalJSON), its own keys merged all the same.
    (
        "/api/generate",
        b'{"model": "m", "context": [1, 2, 3], "context": [null, 5]}',
        {"model": "m", "context": [1, 5]},
    ),
    (
        "/api/chat",
        b'{"model": "m", "tools": [{"type": "function", "function": {"name": "a",'
        b' "parameters": {"type": "object", "required": ["x"]}}}, {"type": "function"}],'
        b' "tools": [{"function": {"description": "d", "parameters": {"required": [null]}}}],'
        b' "messages": [{"role": "user", "content": "hi", "Content": null}],'
        b' "messages": [{"role": "user", "content": "hello"}, {"content": "x"}]}',
        {
            "model": "m",
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "a",
                        "description": "d",
                        "parameters": {"type": "object", "required": ["x"]},
                    },
                }
            ],
            "messages": [{"role": "user", "content": "hello"}, {"content": "x"}],
        },
    ),
    (
        "/api/chat",
        b'{"model": "m", "messages": [{"role": "user", "content": "hi", "Content": null}],'
        b' "messages": [{"role": "user", "content": "hi", "content": null}]}',
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    ),
    (
        "/v1/chat/completions",
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"},'
        b' {"role": "user", "content": "x"}], "messages": [{"content": "hello"}]}',
        {"model": "m", "messages": [{"role": "user", "content": "hello"}]},
    ),
    (
        "/v1/responses",
        b'{"model": "m", "reasoning": {"effort": "low"}, "reasoning": null,'
        b' "text": {"Format": {"type": "json_schema", "name": "n"}}, "text": {"format": {}}}',
        {
            "model": "m",
            "reasoning": {"effort": "low"},
            "text": {"format": {"type": "json_schema", "name": "n"}},
        },
    ),
    (
        "/v1/messages",
        b'{"model": "m", "thinking": {"type": "enabled", "budget_tokens": 9},'
        b' "thinking": {"type": "disabled"}, "max_tokens": 5, "max_tokens": null}',
        {"model": "m", "thinking": {"type": "disabled", "budget_tokens": 9}, "max_tokens": 5},
    ),
]


@pytest.mark.parametrize(("path", "body", "merged"), _GO_MERGES)
def test_a_key_given_twice_is_read_as_go_merges_it(
    path: str, body: bytes, merged: dict[str, Any]
) -> None:
    """What the proxy checks and forwards for a body that gives a key twice is the
    document Go ends with, not the last value of each key."""
    doc, forwarded = go_json.read(body)
    assert go_json.left_out(body, forwarded)
    repeated = auto_routes.repeated_key_reading(path, body)
    assert repeated is not None and repeated.refusal is None
    assert repeated.doc == merged != doc
    assert orjson.loads(repeated.forwarded) == merged
    # Held as any reading holds a document: any part of the proxy writes it (the cache
    # key, the cloud's body), a number that is no integer a float.
    assert orjson.dumps(repeated.doc) == repeated.forwarded


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"1.", "unexpected EOF"),
        (b"1e", "unexpected EOF"),
        (b" -2.5E+", "unexpected EOF"),
        (b"1.x", "invalid character 'x' after decimal point in numeric literal"),
        (b"1. ", "invalid character ' ' after decimal point in numeric literal"),
        (b"1.5ex", "invalid character 'x' in exponent of numeric literal"),
    ],
)
def test_a_top_level_number_go_reads_on_is_no_value(body: bytes, message: str) -> None:
    """Go's scanner reads a number on past `1` where a `.` or an `e` follows, and the
    Decoder refuses it where it ends cut short (at the body's end, "unexpected EOF"):
    no value is read, where Python's json reads the `1` before it."""
    assert go_json.read(body) == (None, body)
    assert go_requests.decode_refusal("/api/chat", body) == message


@pytest.mark.parametrize("body", [b"1.5x", b"1e5.", b"1.5.", b"1 ."])
def test_a_top_level_number_go_ends_is_read(body: bytes) -> None:
    """A byte that cannot go on a finished number ends it: Go's Decoder decodes that
    value and reads no further."""
    doc, _ = go_json.read(body)
    assert doc == float(body.split(b"x")[0].rstrip(b". "))
    assert go_requests.decode_refusal("/api/chat", body) == GO_READS_IT


@pytest.mark.parametrize(
    ("escape", "refused"),
    [("\\u12 ", "' '"), ("\\ux", "'x'"), ("\\u1x", "'x'"), ("\\uABCg", "'g'")],
)
def test_a_short_unicode_escape_is_named_at_its_first_non_hex_byte(
    escape: str, refused: str
) -> None:
    """Go's scanner reads `\\u` then four hex digits a byte at a time
    (stateInStringEscU..U123): it refuses the first other byte "in \\u hexadecimal
    character escape"; a body that ends first is "unexpected EOF"."""
    for body in (f'"{escape}"', f'{{"model": "m", "prompt": "a{escape}"}}'):
        message = f"invalid character {refused} in \\u hexadecimal character escape"
        assert go_requests.decode_refusal("/api/chat", body.encode()) == message
    assert go_requests.decode_refusal("/api/chat", b'"\\u12') == "unexpected EOF"


# Pieces of bodies, valid and not: a body of a few of them is most often refused, at any
# of the places Go's scanner refuses one.
_PIECES = [b"{", b"}", b"[", b"]", b'"', b'"k"', b",", b":", b"\\", b"\\u", b"\\ud83d", b"."]
_PIECES += [b"e", b"+", b"-", b"0", b"9", b"1e400", b" ", b"\n", b"true", b"nul", b"NaN"]
_PIECES += [b"-Infinity", b"\xff", b"\x01"]


def _emulators_refusal(body: bytes) -> str:
    try:
        emulator_wire.decode_json(body)
    except EOFError:
        return "EOF"
    except go_types.BodyError as exc:
        return str(exc)
    return GO_READS_IT


@given(st.lists(st.sampled_from(_PIECES), max_size=12).map(b"".join))
@settings(max_examples=500, deadline=None)
def test_the_emulator_refuses_a_body_as_the_proxy_does(body: bytes) -> None:
    """The emulator reads a body's first value with the proxy's reading
    (`go_readings.first_value`, its own numbers aside): the same error for a body Go
    refuses, none for one it reads."""
    assert _emulators_refusal(body) == go_readings.decode_error(body)


def _deep_reading_refusal(body: bytes) -> str:
    try:
        go_deep.deep_values(body)
    except go_decoding.NotJson as exc:
        return exc.message
    return GO_READS_IT


@given(
    st.lists(st.sampled_from(_PIECES), max_size=12).map(b"".join),
    st.sampled_from([1, 2, 100]),
    st.sampled_from([b"[", b'{"a":']),
)
@settings(max_examples=1000, deadline=None)
def test_the_deep_reading_refuses_a_body_as_the_reading_does(
    body: bytes, depth: int, opening: bytes
) -> None:
    """The reading of a body too deep for Python's json (`_deep_values`, Go's grammar
    as patterns, one level at a time) refuses what the reading of any other refuses, in
    the same words, and reads what it reads: here on bodies both can read."""
    closing = b"]" if opening == b"[" else b"}"
    wrapped = opening * depth + body + closing * depth
    assert _deep_reading_refusal(wrapped) == go_readings.decode_error(wrapped)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 3000 + b"1" + b"]" * 3000,
        b"[" * 3000 + b"1." + b"]" * 3000,
        b"[" * 10_001 + b"]" * 10_001,
        b"\n\t ",
        b"-Infinity",
        b" 1e",
    ],
)
def test_the_emulator_refuses_a_deep_or_odd_body_as_the_proxy_does(body: bytes) -> None:
    assert _emulators_refusal(body) == go_readings.decode_error(body)


@pytest.mark.parametrize("levels", [300, 4000])
def test_tool_properties_below_what_the_reading_holds_are_left_to_the_backend(
    levels: int,
) -> None:
    """A body deeper than orjson writes is read to `KEPT_DEPTH` levels, each value
    below kept as written (`go_deep.unread`): the proxy checks a tool's properties
    down to there, every level of them, and refuses nothing below, which Go reads."""
    wrong = b'{"description": 1}'
    for shallow, refused in ((1, True), (20, True), (levels, False)):
        deep = nested_properties(levels, b'{"type": "string"}')
        first = b'{"b"' + nested_properties(shallow, wrong)[len(b'{"a"') : -1]
        properties = first + b", " + deep[1:]
        body = (
            b'{"model": "m", "messages": [], "tools": [{"type": "function", "function":'
            b' {"name": "f", "parameters": {"properties": ' + properties + b"}}}]}"
        )
        doc, _ = go_json.read(body)
        message = (
            "json: cannot unmarshal number into Go struct field ToolFunctionParameters.tools"
            ".function.parameters.properties" + ".properties" * (shallow - 1) + ".description"
            " of type string"
        )
        expected = auto_routes.Refused(message) if refused else None
        assert auto_routes.refusal("/api/chat", doc, body) == expected


def test_the_first_number_beyond_a_double_is_found_at_any_depth() -> None:
    """In document order, however deep the reading holds it (the emulator's reads as
    deep as Python's json goes); a fragment of an array or object is not read."""
    inner: Any = [go_types.BeyondADouble("1e400"), go_types.BeyondADouble("2e400")]
    for n in range(3_000):
        inner = {"a": 1, "b": [inner]} if n % 2 else [1.5, "x", inner]
    assert go_types.beyond_a_double([inner, go_types.BeyondADouble("3e400")]) == "1e400"
    skipped = [orjson.Fragment(b"[1e400]"), orjson.Fragment(b"12345678901234567890123")]
    assert go_types.beyond_a_double({"x": [*skipped, orjson.Fragment(b"-1e999")]}) == "-1e999"
    assert go_types.beyond_a_double({"x": [[1.5, {"y": None}], skipped]}) is None

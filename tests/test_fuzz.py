"""Random and malformed requests at every route (hypothesis), over raw sockets so that
anything an HTTP client would refuse to send gets sent too.

The proxy must never answer 5xx for its own reasons (a 5xx is accepted only when the
emulator, asked the same bytes directly, answers the same status), never leak a stack
trace, never drop a connection without an answer, and keep serving afterwards. Access
control is on, with the valid key in most requests, so both sides of it are fuzzed.

CI runs a bounded number of examples. The longer run, against a proxy and an emulator
in processes of their own so that the proxy's memory can be watched (it must stay flat):

    .venv/bin/python -m benchmarks.fuzz_memory --examples 10000

prints the request count, the outcome counts by status and the proxy's memory; it runs
this test with FUZZ_PROXY_PORT and FUZZ_EMULATOR_PORT set.
"""

from __future__ import annotations

import http.client
import itertools
import logging
import os
import random
import re
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import FROZEN
from tests.fuzz_target import AUTH, KEY, LIMITS
from tests.support import Emulator, Proxy, ServerThread, error_text

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
# Set by benchmarks.fuzz_memory: a proxy and its emulator already running elsewhere.
EXTERNAL = os.environ.get("FUZZ_PROXY_PORT"), os.environ.get("FUZZ_EMULATOR_PORT")
ROUTES = [
    "/",
    "/api/version",
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/api/tags",
    "/api/ps",
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/api/blobs/sha256:" + "a" * 64,
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/llama3.1:8b",
    "/v1/responses",
    "/v1/messages",
    "/v1/audio/transcriptions",
    "/api/autoroute/health",
    "/api/autoroute/status",
    "/api/autoroute/explain",
    "/api/autoroute/feedback",
    "/api/autoroute/stats",
    "/api/autoroute/experiments/x",
    "/metrics",
]
MODELS = ["llama3.1:8b", "qwen2.5:7b", "auto", "auto:fast", "auto:nope", "", "no-such:1b"]
PATH_CHARS = "abcxyz0123456789/-._~%:@!$&'()*+,;=?#"
HEADER_NAMES = [
    "Accept",
    "Authorization",
    "Content-Type",
    "User-Agent",
    "X-Request-Id",
    "X-Autoroute-User",
    "Accept-Encoding",
    "Cookie",
    "X-Api-Key",
    "Origin",
    "Range",
]
# Framing headers the test sets itself (a wrong Content-Length would only make both
# sides wait for bytes that never come).
FRAMING = {"content-length", "transfer-encoding", "expect", "connection", "host"}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"])},
        optional={"content": json_values, "images": json_values, "tool_calls": json_values},
    ),
    max_size=4,
)
plausible = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS) | st.text(max_size=12)},
    optional={
        "prompt": json_values,
        "messages": messages | json_values,
        "suffix": st.text(max_size=10),
        "stream": st.booleans() | json_values,
        "options": st.fixed_dictionaries({}, optional={"num_predict": st.integers(0, 8)})
        | json_values,
        "input": json_values,
        "tools": json_values,
        "think": json_values,
        "format": json_values,
        "keep_alive": json_values,
        "max_tokens": st.integers(0, 8) | json_values,
        "request_id": st.text(max_size=10),
        "rating": json_values,
        "source": st.sampled_from(MODELS),
        "destination": st.text(max_size=10),
    },
).map(orjson.dumps)
bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=300),
    json_values.map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)),
    plausible,
    plausible.map(lambda b: b[: len(b) // 2]),  # cut short
)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"]) | st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8
)
paths = st.one_of(
    st.sampled_from(ROUTES),
    st.builds(lambda r, t: r + t, st.sampled_from(ROUTES), st.text(PATH_CHARS, max_size=20)),
    st.text(PATH_CHARS, max_size=40).map(lambda t: "/" + t),
)
# Bytes 0x80-0xFF too (sent as Latin-1): headers are bytes on the wire, and a value
# that is not valid UTF-8 must not break what the proxy does with it.
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
)
headers = st.lists(
    st.tuples(
        st.sampled_from(HEADER_NAMES) | st.from_regex(r"\AX-[A-Za-z0-9-]{1,20}\Z"),
        header_values,
    ),
    max_size=6,
)
auths = st.sampled_from([f"Bearer {KEY}"] * 8 + ["Bearer wrong", "Basic x", "", None])


def exchange(port: int, raw: bytes, method: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response.status, response.read()


def build(
    method: str, path: str, hdrs: list[tuple[str, str]], auth: str | None, body: bytes
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    lines += [f"{n}: {v}" for n, v in hdrs if n.lower() not in FRAMING]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


@pytest.fixture
def ports(request: pytest.FixtureRequest) -> Iterator[tuple[int, int]]:
    """(proxy, emulator) ports: the test's own servers, or the external ones."""
    if EXTERNAL[0] and EXTERNAL[1]:
        yield int(EXTERNAL[0]), int(EXTERNAL[1])
        return
    servers: ServerThread = request.getfixturevalue("servers")
    # No wait for prompt evaluation: a deep value is thousands of prompt tokens (Ollama
    # renders a tool's schema whole), whose evaluation no test here looks at.
    emulator = Emulator(servers, replace(FROZEN, prompt_tokens_per_second=0))
    prx = Proxy(servers, [emulator.url], auth=AUTH, limits=LIMITS)
    yield prx.port, emulator.port
    prx.stop()
    emulator.stop()


def test_random_and_malformed_requests_never_get_the_proxys_own_5xx(
    ports: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    proxy_port, emulator_port = ports
    caplog.set_level(logging.ERROR)
    outcomes: Counter[int] = Counter()
    relayed_5xx: Counter[int] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(method=methods, path=paths, hdrs=headers, auth=auths, body=bodies)
    def one(
        method: str, path: str, hdrs: list[tuple[str, str]], auth: str | None, body: bytes
    ) -> None:
        raw = build(method, path, hdrs, auth, body)
        status, answer = exchange(proxy_port, raw, method)
        outcomes[status] += 1
        assert b"Traceback" not in answer and b'File "' not in answer, answer[:500]
        if status >= 500:
            direct, _ = exchange(emulator_port, raw, method)
            assert direct == status, (status, answer[:300], raw[:300])
            relayed_5xx[status] += 1

    one()
    total = sum(outcomes.values())
    print(
        f"\nfuzz: {total} requests; by status {dict(sorted(outcomes.items()))}; "
        f"relayed backend 5xx {dict(relayed_5xx)}"
    )
    assert total >= EXAMPLES
    # aiohttp logs a request it could not parse (and answered 400) at ERROR: that is
    # the client's fault; anything else at ERROR is the proxy's.
    errors = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and not (r.exc_info and isinstance(r.exc_info[1], HttpProcessingError))
    ]
    assert not errors, [r.getMessage() for r in errors[:5]]
    # Still serving.
    status, _ = exchange(proxy_port, build("GET", "/api/version", [], None, b""), "GET")
    assert status == 200


# Deep values --------------------------------------------------------------------------

# Go's decoder reads a value nested up to 10,000 levels (scanner.go's maxNestingDepth),
# whatever the field, so Ollama answers such a body as it answers a shallow one: a 200
# where the field is free JSON, a 400 where its type refuses the value, and a 500 only
# where it answers the shallow value with one too. 300 levels is beyond what orjson
# writes (254), 900 within what orjson and Python's json read (about as deep as Python's
# stack holds a walk of one frame a level), 2,000 and 9,000 beyond what they read.
DEEP_LEVELS = (300, 900, 2_000, 9_000)
DEEP = "\x00deep"  # where a template takes the deep value
# llm.Completion's 500 for a format that is no object ("invalid format: %q; expected
# ..."), and the scheduler's for an option of the wrong type (api.Options.FromMap's
# error through handleScheduleError); a stream carries it in a 200.
_BAD_FORMAT = "invalid format: "
_BAD_STOP = 'option "stop" must be of'
# (route, the request's fields, the start of the message of Ollama's own 500 there)
DEEP_PLACES: list[tuple[str, dict[str, object], str | None]] = [
    ("/api/chat", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "array", "items": DEEP}}}}}]}, None),
    ("/api/chat", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "$defs": DEEP, "properties": {}}}}]}, None),
    ("/api/chat", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"enum": [DEEP]}}}}}]}, None),
    ("/api/chat", {"format": DEEP}, _BAD_FORMAT),
    ("/api/chat", {"options": {"x": DEEP}}, None),
    ("/api/chat", {"options": {"stop": DEEP}}, _BAD_STOP),
    ("/api/chat", {"messages": [{"role": "user", "content": DEEP}]}, None),
    ("/api/chat", {"messages": [{"role": "user", "content": "hi", "images": DEEP}]}, None),
    ("/api/chat", {"messages": [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": {"a": DEEP}}}]}]}, None),
    ("/api/generate", {"prompt": "hi", "format": DEEP}, _BAD_FORMAT),
    ("/api/generate", {"prompt": "hi", "options": {"x": DEEP}}, None),
    ("/api/generate", {"prompt": DEEP}, None),
    ("/api/generate", {"prompt": "hi", "images": DEEP}, None),
    ("/api/generate", {"prompt": "hi", "context": DEEP}, None),
    ("/api/embed", {"input": DEEP}, None),
    ("/api/embed", {"input": "hi", "options": {"x": DEEP}}, None),
    ("/api/embeddings", {"prompt": DEEP}, None),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f",
        "parameters": {"type": "object", "properties": {"a": {"items": DEEP}}}}}]}, None),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": DEEP}}}, _BAD_FORMAT),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": DEEP}]}, None),
    ("/v1/chat/completions", {"metadata": DEEP}, None),
    ("/v1/completions", {"prompt": DEEP}, None),
    ("/v1/embeddings", {"input": DEEP}, None),
    ("/v1/messages", {"max_tokens": 8, "tools": [{"name": "f", "input_schema": {
        "type": "object", "properties": {"a": DEEP}}}]}, None),
    ("/v1/messages", {"max_tokens": 8, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": DEEP}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]}, None),
    ("/v1/messages", {"max_tokens": 8, "metadata": {"user_id": DEEP}}, None),
    ("/v1/messages", {"max_tokens": 8, "metadata": DEEP}, None),
    ("/v1/responses", {"input": "hi", "tools": [{"type": "function", "name": "f",
        "parameters": {"type": "object", "properties": {"a": {"items": DEEP}}}}]}, None),
    ("/v1/responses", {"input": "hi", "text": {"format": {
        "type": "json_schema", "name": "s", "schema": DEEP}}}, _BAD_FORMAT),
    ("/v1/responses", {"input": DEEP}, None),
    ("/v1/responses", {"input": "hi", "metadata": DEEP}, None),
]  # fmt: skip
_DEEP_LEAVES = [
    b"1.50",
    b"-0.0",
    b'"x"',
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"1e400",
    b"123456789012345678901234",
]


def deep_value(rng: random.Random, levels: int) -> bytes:
    """A valid JSON value nested `levels` levels: arrays and objects at random, with
    shallow siblings here and there, around a leaf of `_DEEP_LEAVES`."""
    opens: list[bytes] = []
    closes: list[bytes] = []
    for _ in range(levels):
        sibling = rng.random() < 0.1
        if rng.random() < 0.5:
            opens.append(b"[1.50," if sibling else b"[")
            closes.append(b"]")
        else:
            key = rng.choice([b"a", b"type", b"properties", b"items", b"\\u00e9"])
            opens.append(b'{"k":"v","%s":' % key if sibling else b'{"%s":' % key)
            closes.append(b"}")
    return b"".join(opens) + rng.choice(_DEEP_LEAVES) + b"".join(reversed(closes))


def deep_body(
    rng: random.Random, path: str, model: str, template: dict[str, object], levels: int
) -> bytes:
    """A request for `model` on `path` as `template` has it (streamed or not, at random),
    each `DEEP` in it a `deep_value` of `levels` levels."""
    doc: dict[str, object] = {"model": model, "stream": rng.random() < 0.5}
    if path in ("/api/chat", "/v1/chat/completions", "/v1/messages"):
        doc["messages"] = [{"role": "user", "content": "hi"}]
    doc.update(template)
    parts = orjson.dumps(doc).split(orjson.dumps(DEEP))
    return b"".join(p + deep_value(rng, levels) for p in parts[:-1]) + parts[-1]


def test_deeply_nested_values_get_ollamas_answer_not_a_5xx(
    ports: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Every place a client may put free JSON, holding a value a few hundred to a few
    thousand levels deep, through the proxy for a named model and for `auto`: no 5xx
    and no error in a stream but Ollama's own there (`DEEP_PLACES`), a refusal in
    Ollama's shape, every answer whole."""
    proxy_port, _ = ports
    caplog.set_level(logging.ERROR)
    rng = random.Random(215)
    found: list[tuple[int, str, bytes]] = []
    outcomes: Counter[int] = Counter()
    for (path, template, ollamas_500), levels, model in itertools.product(
        DEEP_PLACES, DEEP_LEVELS, ("llama3.1:8b", "auto")
    ):
        body = deep_body(rng, path, model, template, levels)
        raw = build("POST", path, [], f"Bearer {KEY}", body)
        status, answer = exchange(proxy_port, raw, "POST")  # IncompleteRead if cut short
        outcomes[status] += 1
        ollamas = ollamas_500 is not None and orjson.dumps(ollamas_500)[1:-1] in answer
        if status >= 500 and not ollamas:
            found.append((status, f"{path} {levels} {model}", answer[:300]))
        elif status == 200 and re.search(rb'"error":["{]', answer) and not ollamas:
            found.append((status, f"{path} {levels} {model}", answer[:300]))
        elif status >= 400:
            assert isinstance(error_text(path, orjson.loads(answer)), str), (path, answer[:300])
    print(f"\ndeep values: by status {dict(sorted(outcomes.items()))}")
    assert not found, "\n".join(map(repr, found))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:5]

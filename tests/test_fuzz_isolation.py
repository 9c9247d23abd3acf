"""Two clients on two API keys in flight at once, with hostile request heads and bodies
that Go's JSON decoder (so Ollama) reads differently from orjson (hypothesis).

Each example is a pair of requests, one per key, sent at the same time over raw sockets.
A request is built from a *logical* request (path, model, a prompt carrying a nonce,
stream or not) and an *encoding* that Ollama reads as that same logical request but a
strict JSON parser does not: trailing bytes after the value, a case-variant or
duplicate `model` key whose last occurrence wins, invalid UTF-8 in a field no route
reads. The head carries bytes 0x80-0xFF in the headers the proxy reads (request id,
user, agent, keys), `Expect: 100-continue` and the body in chunked framing.

What must hold, whatever the proxy chooses to do with such a request:
- never a 5xx made by the proxy (the emulator answers none of these with a 5xx);
- a 200 answer is exactly the emulator's answer to the logical request: byte for byte
  (frozen clock), so an answer that belongs to the other client, or to a model the
  key may not use, is caught; a refusal is Ollama's `{"error": ...}` shape;
- the key restricted to one model never gets a 200 from another model;
- no client opens a circuit; every served request leaves exactly one usage event
  (found by the id its answer carries); the access log keeps writing.

CI runs a few hundred requests. The long run prints the counts line (requests by status):

    FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest -q -s tests/test_fuzz_isolation.py
"""

from __future__ import annotations

import http.client
import io
import itertools
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.hostile_probe.checks import usage_ids
from proxy.app import APP_KEY
from proxy.auth import hash_key
from proxy.config_services import ApiKey, Auth, Usage
from proxy.emulator import EmulatorSettings
from tests.support import Emulator, Proxy, ServerThread

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
ALLOWED = "llama3.1:8b"
OTHER = "qwen2.5:7b"
KEY_A = "isolation-key-a"  # may use ALLOWED only
KEY_B = "isolation-key-b"  # admin, every model
AUTH = Auth(
    keys=(
        ApiKey(sha256=hash_key(KEY_A), name="a", models=(ALLOWED,)),
        ApiKey(sha256=hash_key(KEY_B), name="b", role="admin"),
    )
)
FROZEN = EmulatorSettings(frozen_clock=True, chunk_delay_ms=0.5, default_tokens=6)
_nonces = itertools.count(1)


@dataclass(frozen=True)
class Logical:
    """What Ollama reads from the request, whatever its encoding."""

    path: str
    model: str
    stream: bool
    nonce: int

    def doc(self) -> dict[str, object]:
        text = f"tell me about request {self.nonce}"
        doc: dict[str, object] = {"model": self.model, "stream": self.stream}
        if self.path == "/api/chat":
            doc["messages"] = [{"role": "user", "content": text}]
        else:
            doc["prompt"] = text
        return doc


def encode(logical: Logical, how: str, decoy: str) -> bytes:
    """The body: `logical` as Go's encoding/json reads it, spelled `how`."""
    clean = orjson.dumps(logical.doc())
    if how == "plain":
        return clean
    if how == "trailing":
        return clean + b" x"
    if how == "trailing-value":
        return clean + orjson.dumps({"model": decoy})
    inner = clean[1:-1]
    if how == "case-variant":  # Go matches keys case-insensitively; the last one wins
        return b'{"model":"%s",%s,"Model":"%s"}' % (
            decoy.encode(),
            inner.replace(b'"model"', b'"x_model"', 1),
            logical.model.encode(),
        )
    if how == "duplicate":
        return b'{"model":"%s",%s}' % (decoy.encode(), inner)
    if how == "bad-utf8":  # Go reads U+FFFD in a field no route uses
        return b'{"x_pad":"\xff\xfe",%s}' % inner
    raise AssertionError(how)


def chunked(body: bytes) -> bytes:
    half = len(body) // 2
    parts = [p for p in (body[:half], body[half:]) if p]
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@dataclass(frozen=True)
class Head:
    request_id: bytes | None
    user: bytes | None
    agent: bytes | None
    expect: bool
    framing: str  # "length", "chunked", "Chunked"
    key_header: str  # "bearer", "x-api-key"


@dataclass
class Sent:
    logical: Logical
    key: str
    how: str
    status: int = 0
    body: bytes = b""
    request_id: str = ""


def raw_request(logical: Logical, key: str, body: bytes, head: Head) -> bytes:
    lines = [f"POST {logical.path} HTTP/1.1".encode(), b"Host: localhost"]
    if head.key_header == "bearer":
        lines.append(b"Authorization: Bearer " + key.encode())
    else:
        lines.append(b"X-Api-Key: " + key.encode())
    for name, value in (
        (b"X-Request-Id", head.request_id),
        (b"X-Autoroute-User", head.user),
        (b"User-Agent", head.agent),
    ):
        if value is not None:
            lines.append(name + b": " + value)
    if head.expect:
        lines.append(b"Expect: 100-continue")
    if head.framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    else:
        lines.append(b"Transfer-Encoding: " + head.framing.encode())
        payload = chunked(body)
    lines += [b"Content-Type: application/json", b"Connection: close", b"", b""]
    return b"\r\n".join(lines) + payload


def exchange(port: int, raw: bytes) -> tuple[int, bytes, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        # http.client skips interim 1xx answers, as every HTTP/1.1 client must.
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        return response.status, response.read(), response.getheader("X-Request-Id") or ""


header_bytes = st.binary(min_size=1, max_size=24).map(
    lambda b: bytes(c for c in b if c not in (0x0A, 0x0D, 0x00)) or b"\x80"
)
high_bytes = st.binary(min_size=1, max_size=8).map(lambda b: bytes(0x80 | c for c in b))
heads = st.builds(
    Head,
    request_id=st.none() | high_bytes | header_bytes | st.just(b"\xe4\xb8\xad"),
    user=st.none() | high_bytes | header_bytes,
    agent=st.none() | high_bytes | header_bytes,
    expect=st.booleans(),
    framing=st.sampled_from(["length", "length", "chunked", "Chunked"]),
    key_header=st.sampled_from(["bearer", "x-api-key"]),
)
ENCODINGS = ["plain", "trailing", "trailing-value", "case-variant", "duplicate", "bad-utf8"]


@pytest.fixture
def setup(
    servers: ServerThread, tmp_path: Path
) -> Iterator[tuple[Proxy, list[Emulator], io.StringIO, Path]]:
    emulators = [Emulator(servers, FROZEN), Emulator(servers, FROZEN)]
    logging.getLogger("autoroute").setLevel(logging.INFO)
    usage = Usage(
        file_path=str(tmp_path / "events.jsonl"),
        spool_dir=str(tmp_path / "spool"),
        flush_interval_seconds=0.05,
    )
    prx = Proxy(servers, [e.url for e in emulators], auth=AUTH, usage=usage)
    access = io.StringIO()
    prx.app[APP_KEY].access.stream = access
    # Both models loaded on both emulators: the frozen clock then reports the same
    # load_duration whichever emulator answers, so answers compare byte for byte.
    for emulator in emulators:
        for model in (ALLOWED, OTHER):
            for path in ("/api/chat", "/api/generate"):
                body = orjson.dumps(Logical(path, model, False, 0).doc())
                exchange(emulator.port, _plain(path, body))
    yield prx, emulators, access, tmp_path / "events.jsonl"
    prx.stop()
    for emulator in emulators:
        emulator.stop()


def _plain(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def _expected(port: int, logical: Logical, cache: dict[Logical, bytes]) -> bytes:
    if logical not in cache:
        status, body, _ = exchange(port, _plain(logical.path, orjson.dumps(logical.doc())))
        assert status == 200, body
        cache[logical] = body
    return cache[logical]


def _wait_for(predicate: object, seconds: float = 20.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_two_keys_in_flight_with_hostile_heads_and_bodies(
    setup: tuple[Proxy, list[Emulator], io.StringIO, Path],
) -> None:
    prx, emulators, access, events_path = setup
    expected: dict[Logical, bytes] = {}
    statuses: Counter[int] = Counter()
    # Every request the proxy answered itself or relayed (all but heads HTTP cannot
    # carry): each leaves exactly one usage event.
    answered: list[Sent] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        paths=st.tuples(*[st.sampled_from(["/api/chat", "/api/generate"])] * 2),
        models=st.tuples(*[st.sampled_from([ALLOWED, OTHER])] * 2),
        streams=st.tuples(st.booleans(), st.booleans()),
        hows=st.tuples(*[st.sampled_from(ENCODINGS)] * 2),
        heads_=st.tuples(heads, heads),
    )
    def pair(
        paths: tuple[str, str],
        models: tuple[str, str],
        streams: tuple[bool, bool],
        hows: tuple[str, str],
        heads_: tuple[Head, Head],
    ) -> None:
        sent: list[Sent] = []
        raws: list[bytes] = []
        for i, key in enumerate((KEY_A, KEY_B)):
            logical = Logical(paths[i], models[i], streams[i], next(_nonces))
            # The decoy is what a naive reader sees: the other of the two models.
            decoy = ALLOWED if logical.model == OTHER else OTHER
            raws.append(raw_request(logical, key, encode(logical, hows[i], decoy), heads_[i]))
            sent.append(Sent(logical, key, hows[i]))

        def run(i: int) -> None:
            sent[i].status, sent[i].body, sent[i].request_id = exchange(prx.port, raws[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for one in sent:
            statuses[one.status] += 1
            assert one.status, "no answer"
            assert one.status < 500, (one.status, one.body[:300], one.how)
            if one.status != 200:
                if one.status == 400 and one.body.startswith(b"400 Bad Request"):
                    continue  # a head HTTP cannot carry (control bytes): Go's answer
                doc = orjson.loads(one.body.splitlines()[0] if one.body else b"{}")
                assert isinstance(doc, dict) and isinstance(doc.get("error"), str), one.body
                assert one.request_id, "an answer carries its X-Request-Id"
                answered.append(one)
                continue
            assert one.key == KEY_B or one.logical.model == ALLOWED, (
                "key A ran a model outside its list",
                one.how,
                one.body[:200],
            )
            want = _expected(emulators[0].port, one.logical, expected)
            assert one.body == want, ("answer is not this request's", one.how, one.body[:200])
            assert one.request_id, "an answer carries its X-Request-Id"
            answered.append(one)

    pair()
    print(f"\nisolation fuzz: {sum(statuses.values())} requests; by status {dict(statuses)}")
    assert sum(statuses.values()) >= 2 * EXAMPLES
    # The fuzz must have exercised the allowed paths, not only refusals.
    assert statuses[200] > 0

    # No client opened a circuit.
    _, health, _ = exchange(
        prx.port,
        b"GET /api/autoroute/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    for backend in orjson.loads(health)["backends"]:
        assert backend["circuit"] == "closed", backend

    # Exactly one usage event per answered request, found by the id its answer carried
    # (`usage_ids`). A client may send the same id on several requests: each of them is
    # one event.
    wanted = Counter(s.request_id for s in answered)
    assert _wait_for(lambda: all(usage_ids(events_path)[i] >= n for i, n in wanted.items()))
    counts = usage_ids(events_path)
    assert all(counts[i] == n for i, n in wanted.items()), {
        i: (counts[i], n) for i, n in wanted.items() if counts[i] != n
    }

    # The access log still writes: a last request's line appears.
    marker = f"marker-{next(_nonces)}"
    exchange(
        prx.port,
        f"GET /api/version HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {marker}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert _wait_for(lambda: marker in access.getvalue()), access.getvalue()[-500:]

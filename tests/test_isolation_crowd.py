"""Many clients on several API keys in flight at once, through the paths a request may
take besides a named model's (`tests/test_fuzz_isolation.py` has those): `auto` and
`auto:<profile>` choosing, answers replayed from the response cache, `/api/generate`
conversations that `auto` continues on the model that wrote their `context`, and the
cloud fallback standing in for a model no backend lists.

What must hold for every answer, whatever else is in flight:
- an answer from a backend is the emulator's own answer to that request for the model
  that served it (frozen clock: only the measured durations differ), so an answer, or a
  chunk of one, that belongs to another request is caught;
- a key with a model list is served only its models;
- a cached answer reaches only the key that asked for it first: the first request of a
  body on a key is never a hit, whatever other keys sent or are sending;
- a cloud answer is its own request's (the stand-in echoes the prompt).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.auth import hash_key
from proxy.config_services import ApiKey, Auth, Cache, Cloud, CloudProvider
from tests.cloud_standin import OPENAI_KEY, Seen, create_app
from tests.conftest import FROZEN
from tests.support import Emulator, Proxy, ServerThread, bearer, free_port

ALLOWED = ("llama3.1:8b", "qwen2.5:7b")
GHOST = "ghost:1b"  # on a key's list, on no backend: the cloud stands in
LISTED, LISTED_TOO, LATE, FREE, CLOUDY = "k-listed", "k-listed-2", "k-late", "k-free", "k-cloudy"
KEY_ENV = "CROWD_TEST_OPENAI_KEY"
PATHS = ("/api/generate", "/api/chat", "/v1/chat/completions")
# What differs between two answers to one request: the durations the emulator measures.
_MEASURED = frozenset({"total_duration", "load_duration", "prompt_eval_duration", "eval_duration"})
_nonces = itertools.count(1)


@dataclass
class Sent:
    key: str
    path: str
    body: dict[str, Any]
    cacheable: bool
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    answer: bytes = b""


@pytest.fixture
def crowd(servers: ServerThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Proxy, str]]:
    monkeypatch.setenv(KEY_ENV, OPENAI_KEY)
    emulator = Emulator(servers, FROZEN)
    # Words 1 ms apart: the cloud's streams interleave with each other and the local ones.
    seen = Seen(delay=0.001, echo=True)
    port = free_port()
    standin = servers.serve(lambda: create_app(seen), port)
    provider = CloudProvider(
        base_url=f"http://127.0.0.1:{port}/v1",
        key_env=KEY_ENV,
        models={"*": "standin-model"},
        monthly_token_budget=10**9,
    )
    keys = (
        ApiKey(sha256=hash_key(LISTED), name="listed", models=ALLOWED),
        ApiKey(sha256=hash_key(LISTED_TOO), name="listed-too", models=ALLOWED),
        ApiKey(sha256=hash_key(LATE), name="late", models=ALLOWED),
        ApiKey(sha256=hash_key(FREE), name="free"),
        ApiKey(sha256=hash_key(CLOUDY), name="cloudy", models=(GHOST,)),
    )
    prx = Proxy(
        servers,
        [emulator.url],
        auth=Auth(keys=keys),
        cache=Cache(enabled=True),
        cloud=Cloud(enabled=True, providers={"openai": provider}),
    )
    yield prx, emulator.url
    prx.stop()
    servers.stop(standin)
    emulator.stop()


def _request(key: str, path: str, model: str, stream: bool, cacheable: bool, text: str) -> Sent:
    body: dict[str, Any] = {"model": model, "stream": stream}
    if path == "/api/generate":
        body["prompt"] = text
    else:
        body["messages"] = [{"role": "user", "content": text}]
    if cacheable:
        if path.startswith("/v1/"):
            body["temperature"] = 0
        else:
            body["options"] = {"temperature": 0}
    return Sent(key, path, body, cacheable)


def _local_round(keys: tuple[str, ...]) -> list[Sent]:
    """Every key the same requests: a cacheable one's body is the same for every key (one
    key's kept answer would fit another's request), any other's its own."""
    out = []
    for path, model, stream in itertools.product(
        PATHS, ("auto", "auto:fast", ALLOWED[0]), (True, False)
    ):
        shared = f"what is {model} on {path} streaming {stream}"
        for key in keys:
            out.append(_request(key, path, model, stream, True, shared))
            out.append(_request(key, path, model, stream, False, f"request {next(_nonces)}"))
    return out


def _cloud_round() -> list[Sent]:
    return [
        _request(CLOUDY, path, GHOST, stream, False, f"echo nonce{next(_nonces)} back")
        for path in ("/api/chat", "/v1/chat/completions")
        for stream in (True, False)
        for _ in range(3)
    ]


def _pieces(path: str, answer: bytes) -> list[dict[str, Any]]:
    """The answer's documents (NDJSON lines, SSE events), without measured durations."""
    lines = [line for line in answer.split(b"\n") if line.strip()]
    if path.startswith("/v1/"):
        lines = [line.removeprefix(b"data: ") for line in lines if line != b"data: [DONE]"]
    docs = [orjson.loads(line) for line in lines]
    return [{k: v for k, v in doc.items() if k not in _MEASURED} for doc in docs]


def _text(path: str, answer: bytes) -> str:
    text = []
    for doc in _pieces(path, answer):
        if path.startswith("/v1/"):
            for choice in doc.get("choices", ()):
                part = choice.get("delta") or choice.get("message") or {}
                text.append(part.get("content") or "")
        else:
            text.append(doc["message"]["content"])
    return "".join(text)


def _second_round(first: list[Sent]) -> list[Sent]:
    """The cacheable requests of `first` again (hits), the conversations `auto` answered
    on `/api/generate` going on with their `context`, the cacheable requests of `first`
    from a key that sent none of them (no hit for it), and the cloud's."""
    again = [Sent(s.key, s.path, s.body, True) for s in first if s.cacheable]
    for s in first:
        if s.path == "/api/generate" and s.key != CLOUDY and s.body["model"].startswith("auto"):
            if not s.cacheable:
                context = orjson.loads(s.answer.strip().split(b"\n")[-1])["context"]
                body = {**s.body, "prompt": f"and then {next(_nonces)}", "context": context}
                again.append(Sent(s.key, s.path, body, False))
    again += [Sent(LATE, s.path, s.body, True) for s in first if s.cacheable and s.key == LISTED]
    return again + _cloud_round()


async def _send(session: aiohttp.ClientSession, url: str, sent: Sent) -> None:
    async with session.post(url + sent.path, json=sent.body, headers=bearer(sent.key)) as resp:
        sent.status, sent.headers, sent.answer = resp.status, dict(resp.headers), await resp.read()


def _sorted(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


async def test_a_crowd_through_auto_the_cache_contexts_and_the_cloud_gets_its_own_answers(
    crowd: tuple[Proxy, str],
) -> None:
    prx, emulator_url = crowd
    first = _local_round((LISTED, LISTED_TOO, FREE)) + _cloud_round()
    seen: Counter[str] = Counter()
    kept: set[tuple[str, bytes]] = set()  # (key, body) of the cacheable requests answered
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(_send(session, prx.url, s) for s in first))
        for s in first:
            assert s.status == 200, (s.key, s.path, s.body, s.answer[:300])
        again = _second_round(first)
        await asyncio.gather(*(_send(session, prx.url, s) for s in again))
        for sent in (first, again):
            for s in sent:
                assert s.status == 200, (s.key, s.path, s.body, s.answer[:300])
                if s.key == CLOUDY:
                    seen["cloud"] += 1
                    assert s.headers.get("X-Autoroute-Backend") == "cloud:openai", s.headers
                    want = " ".join(s.body["messages"][-1]["content"].split()) + " "
                    assert _text(s.path, s.answer) == want, ("not its own answer", s.answer[:300])
                    continue
                served = s.headers.get("X-Autoroute-Model", s.body["model"])
                if s.key != FREE:
                    assert served in ALLOWED, ("a model off the key's list", s.key, served)
                cache = s.headers.get("X-Autoroute-Cache")
                if cache == "hit":
                    seen["hit"] += 1
                    assert (s.key, _sorted(s.body)) in kept, ("another key's answer", s.key, s.body)
                seen[s.headers.get("X-Autoroute-Reason", "named")] += 1
                direct = orjson.dumps({**s.body, "model": served})
                async with session.post(emulator_url + s.path, data=direct) as resp:
                    want_answer = await resp.read()
                assert _pieces(s.path, s.answer) == _pieces(s.path, want_answer), (
                    "not this request's answer",
                    s.key,
                    s.path,
                    cache,
                    s.answer[:300],
                )
            kept |= {(s.key, _sorted(s.body)) for s in sent if s.cacheable}
    print(f"\ncrowd isolation: {len(first) + len(again)} requests; {dict(seen)}")
    # Every path this test is about was taken.
    assert seen["hit"] and seen["context"] and seen["cloud"] and seen["ml"], seen

"""The official JavaScript clients, `ollama` (ollama-js) and `openai` (openai-node), in
Node, get through the proxy what they get directly from the backend, and a stream one
of them aborts stops the backend's stream and leaves one usage event. They send what
the Python clients do not: undici's requests and aborts, ollama-js's `name` in pull
and delete, openai-node's base64 embeddings by default and its multipart forms.

The clients are installed from the npm registry, at the versions below, into a
temporary directory (npm's cache too); without node and npm, or without the registry,
the tests are skipped."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.protocol import MODEL_HEADER, REQUEST_ID_HEADER
from tests.client_parity import compared, normalised
from tests.support import (
    AUTO_NAMES,
    PIXEL_PNG,
    WEATHER_TOOLS,
    Emulator,
    Proxy,
    ServerThread,
    file_usage,
    wait_until,
)

CLIENTS = ("ollama@0.6.4", "openai@6.49.0")
DRIVER = Path(__file__).with_name("js_clients.mjs")
MODEL = "qwen2.5:7b"
THINKER = "qwen3:8b"
VISION = "llava:7b"
EMBEDDER = "nomic-embed-text"
ASK: list[Any] = [{"role": "user", "content": "Why is the sky blue?"}]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
WAV = base64.b64encode(b"RIFF\x00\x01WAVEfmt \r\n").decode()


def ollama(method: str, **args: Any) -> dict[str, Any]:
    return {"client": "ollama", "method": method, "args": args}


def openai(method: str, **args: Any) -> dict[str, Any]:
    return {"client": "openai", "method": method, "args": args}


CHAT, RESPONSES = "chat.completions.create", "responses.create"
# What a program does with each client; in pull, push and delete ollama-js sends the
# model as `name`, and openai-node asks for base64 embeddings unless told otherwise.
CALLS = [
    ollama("generate", model=MODEL, prompt="Hello"),
    ollama("generate", model=MODEL, prompt="Hello", stream=True, keep_alive=300),
    ollama("chat", model=MODEL, messages=ASK, stream=True, format=SCHEMA),
    ollama("chat", model=MODEL, messages=[{"role": "user", "content": "héllo 😀"}], keep_alive=0),
    ollama("chat", model=MODEL, messages=ASK, tools=WEATHER_TOOLS, stream=True),
    ollama("chat", model=VISION, messages=[{**ASK[0], "images": [{"$bytes": PIXEL_PNG}]}]),
    ollama("chat", model=THINKER, messages=ASK, think="high", stream=True),
    ollama("embed", model=EMBEDDER, input=["one", "two"]),
    ollama("list"),
    ollama("ps"),
    ollama("show", model=MODEL),
    ollama("pull", model=MODEL, stream=True),
    ollama("push", model=MODEL),
    ollama("delete", model="no-such:model"),
    ollama("chat", model="no-such:model", messages=ASK, stream=True),
    ollama("chat", model=MODEL, messages=ASK, think=True),
    ollama("generate", model=MODEL, prompt="x", options={"temperature": "hot"}),
    openai(CHAT, model=MODEL, messages=ASK),
    openai(CHAT, model=MODEL, messages=ASK, stream=True, stream_options={"include_usage": True}),
    openai(CHAT, model=MODEL, messages=ASK, tools=WEATHER_TOOLS),
    openai(CHAT, model=THINKER, messages=ASK, reasoning_effort="low", stream=True),
    openai("completions.create", model=MODEL, prompt="Hello", stream=True),
    openai("embeddings.create", model=EMBEDDER, input="one"),
    openai("embeddings.create", model=EMBEDDER, input=["one"], encoding_format="float"),
    openai("models.list"),
    {"client": "openai", "method": "models.retrieve", "args": MODEL},  # the id alone
    openai(RESPONSES, model=MODEL, input="Hello", stream=True),
    openai(RESPONSES, model=MODEL, input="Hello"),
    openai("audio.transcriptions.create", model=MODEL, file={"$file": WAV, "name": "a.wav"}),
    openai(CHAT, model="no-such:model", messages=ASK),
    openai(CHAT, model=MODEL, messages=[]),
    openai("embeddings.create", model=EMBEDDER, input=[]),
]
AUTO_CALLS = [
    ollama("chat", messages=ASK),
    ollama("generate", prompt="Write a haiku about autumn.", stream=True),
    ollama("chat", messages=[{**ASK[0], "images": [{"$bytes": PIXEL_PNG}]}], stream=True),
    ollama("chat", messages=ASK, think=True, stream=True),
    openai(CHAT, messages=ASK, stream=True),
    openai(RESPONSES, input="Hello", stream=True),
]
# A stream aborted after two chunks, each way its client offers.
LONG = {"num_predict": 2000}
ABORTS = [
    {**ollama("generate", prompt="x", stream=True, options=LONG), "abort": "iterator"},
    {**ollama("chat", messages=ASK, stream=True, options=LONG), "abort": "client"},
    {**openai(CHAT, messages=ASK, stream=True, max_tokens=2000), "abort": "controller"},
    {**openai(CHAT, messages=ASK, stream=True, max_tokens=2000), "abort": "signal"},
    {**openai(RESPONSES, input="x", stream=True, max_output_tokens=2000), "abort": "controller"},
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory with the clients installed, npm's cache beside them."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("needs node and npm")
    where = tmp_path_factory.mktemp("js-clients")
    env = {
        **os.environ,
        "npm_config_cache": str(where / ".npm"),
        "npm_config_update_notifier": "false",
        # Without the registry, skipped at the first refusal rather than after retries.
        "npm_config_fetch_retries": "0",
    }
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(where), *CLIENTS],
        cwd=where,
        env=env,
        capture_output=True,
        timeout=300,
    )
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        pytest.skip(f"npm could not install {', '.join(CLIENTS)}: {' '.join(why)}")
    yield where
    shutil.rmtree(where, ignore_errors=True)


def run(installed: Path, host: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each call's outcome (js_clients.mjs) made by the clients against `host`."""
    spec = installed / "calls.json"
    spec.write_text(json.dumps({"host": host, "calls": calls}))
    done = subprocess.run(
        ["node", str(DRIVER), str(installed), str(spec)], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    outcomes: list[dict[str, Any]] = json.loads(done.stdout)
    return outcomes


def compared_outcome(outcome: dict[str, Any]) -> dict[str, Any]:
    """An outcome as two identical calls compare: clocks and random ids marked, the
    answers' headers but those that differ by design, the proxy's `auto` entries
    out of the model lists."""
    seen = {k: v for k, v in outcome.items() if k != "answers"}
    result = seen.get("result")
    if isinstance(result, dict):
        for key in ("models", "data"):
            if isinstance(result.get(key), list):
                result[key] = [
                    m for m in result[key] if (m.get("name") or m.get("id")) not in AUTO_NAMES
                ]
    heads = [
        (a["status"], {k: v for k, v in a["headers"].items() if compared(k)})
        for a in outcome["answers"]
    ]
    return {**normalised(seen), "heads": heads}


def test_the_clients_get_what_they_get_directly(installed: Path, live_proxy: Proxy) -> None:
    backend = live_proxy.config.backends[0].url
    direct = run(installed, backend, CALLS)
    proxied = run(installed, live_proxy.url, CALLS)
    for call, one, other in zip(CALLS, direct, proxied, strict=True):
        assert compared_outcome(other) == compared_outcome(one), call
    # The calls did what they say: spot checks of their content.
    assert direct[1]["chunks"][-1]["done"] is True
    assert direct[11]["chunks"][-1]["status"] == "success"
    assert direct[14]["raised"] == "ResponseError" and direct[14]["status"] == 404
    assert isinstance(direct[22]["result"]["data"][0]["embedding"], list)  # base64, decoded
    assert direct[29]["raised"] == "NotFoundError"


def test_auto_answers_as_the_model_it_chose(installed: Path, live_proxy: Proxy) -> None:
    backend = live_proxy.config.backends[0].url
    for profile in ("auto", "auto:best", "auto:fast"):
        calls = [{**c, "args": {"model": profile, **c["args"]}} for c in AUTO_CALLS]
        proxied = run(installed, live_proxy.url, calls)
        chosen = [o["answers"][-1]["headers"].get(MODEL_HEADER.lower()) for o in proxied]
        assert all(c and c not in AUTO_NAMES for c in chosen), chosen
        named = [
            {**c, "args": {**c["args"], "model": m}} for c, m in zip(calls, chosen, strict=True)
        ]
        direct = run(installed, backend, named)
        for call, one, other in zip(calls, direct, proxied, strict=True):
            assert compared_outcome(other) == compared_outcome(one), call


def test_an_aborted_stream_stops_the_backend_and_is_one_event(
    installed: Path, servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    proxy = Proxy(servers, [own_emulator.url], usage=file_usage(tmp_path))
    try:
        calls = [
            {**c, "args": {"model": model, **c["args"]}, "abort_after": 2}
            for model in (MODEL, "auto")
            for c in ABORTS
        ]
        outcomes = run(installed, proxy.url, calls)
        state = own_emulator.state
        assert servers.call(lambda: wait_until(lambda: state.active_streams == 0))
        assert (state.cancelled, state.completed) == (len(calls), 0)
        ids = [o["answers"][0]["headers"][REQUEST_ID_HEADER.lower()] for o in outcomes]
        events = tmp_path / "events.jsonl"

        def written() -> list[Any]:
            lines = events.read_text().splitlines() if events.exists() else []
            return [json.loads(line) for line in lines]

        assert servers.call(lambda: wait_until(lambda: len(written()) >= len(calls)))
        mine = [[e for e in written() if e["request_id"] == i] for i in ids]
        assert [len(m) for m in mine] == [1] * len(calls)
        assert all(m[0]["outcome"]["cancelled"] for m in mine)
        # Cut short: a whole answer is some 2000 chunks (what the client had read
        # already when it aborted may follow the second).
        for outcome in outcomes:
            assert 2 <= len(outcome["chunks"]) < 100, outcome
    finally:
        proxy.stop()

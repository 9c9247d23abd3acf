"""Requests shaped exactly as popular Ollama clients send them, through the proxy.

Each test builds the request body byte for byte the way the client serialises it, sends
it with the client's headers once to the emulator directly and once through the proxy,
and requires the same status, the same Content-Type and the same body bytes (the
emulator's frozen clock makes identical requests give identical answers). Streams must
also arrive through the proxy as more than one chunk, end every NDJSON line with a
newline and finish with `"done": true`; a few tests then read the answer the way the
client does (tool calls, fill-in-the-middle, thinking, structured output).

Where the shapes come from (read in the stored copies of the public repositories; no
code is copied here):

Continue (VS Code / JetBrains extension), repository `continuedev/continue`:
  * `core/llm/llms/Ollama.ts` (revision 94a535162e912fd052ea264f81ab02e3a0b0ac6c):
    - constructor: `POST /api/show` with `{"name": <model>}`; FIM support is guessed from
      `template` containing ".Suffix"; `parameters` is split on "\\n" and each line matched
      with `^(\\S+)\\s+((?:".*")|\\S+)$`, a `stop` value being JSON-parsed.
    - `listModels`: `GET /api/tags` with a `Content-Type: application/json` header.
    - `_streamChat`: `POST /api/chat` with `model`, `messages` (role, content, images),
      `options` (temperature, top_p, top_k, num_predict, stop, num_ctx, mirostat,
      num_thread, use_mmap, min_p, in that order, undefined ones dropped by
      JSON.stringify), `keep_alive` (default 1800), `stream` (left undefined, so absent,
      unless set). With tools and a last message from the user it adds `tools`
      (type/function name, description, parameters) and forces `"stream": false`, then
      reads `message.tool_calls[].function.arguments` as an object.
    - `_streamComplete` / `_streamFim`: `POST /api/generate` with `model`, `prompt`,
      `suffix` (FIM only), `raw`, `options`, `keep_alive`, `stream`.
    - `_embed`: `POST /api/embed` with `{"model", "input": [chunks]}`.
    - `installModel`: `POST /api/pull` with `{"name": <model>}` and an unconditional
      `Authorization: Bearer ${apiKey}` header, i.e. "Bearer undefined" without a key.
    - Headers: `Content-Type: application/json`, plus `Authorization: Bearer <key>` when
      an apiKey is configured.
    - Streams are read by appending decoded text to a buffer, splitting on "\\n" and
      keeping the last (unterminated) piece for later: a final line without "\\n" is
      never parsed. A parsed line with an `error` key is thrown as an Error.
  * `packages/fetch/src/stream.ts`: `streamResponse` throws the response text for any
    status other than 200 (499 means "cancelled" and ends quietly).
  * `packages/fetch/src/fetch.ts`: requests go through a patched node-fetch; the
    `Accept`, `User-Agent` and `Accept-Encoding` values used below are node-fetch's
    defaults (an assumption: they are not written in Continue's code).
  * `core/autocomplete/generation/CompletionStreamer.ts`: autocomplete uses `streamFim`
    (prefix + suffix) when the model supports FIM, else `streamComplete` with
    `raw: true` on a prompt Continue rendered itself.

Open WebUI, repository `open-webui/open-webui`:
  * `backend/open_webui/routers/ollama.py` (revision 598282cf75de358215d045c617e70d28bc48929e):
    - `send_get_request` (aiohttp, `Content-Type: application/json`): `GET /api/tags`,
      `GET /api/ps`, `GET /api/version`.
    - `send_post_request` (aiohttp, `Content-Type: application/json`, optional Bearer
      key and `X-OpenWebUI-User-*` / `X-OpenWebUI-Chat-Id` headers): `/api/chat` with
      `json.dumps(payload)` (Python's default ", " / ": " separators, ASCII escapes) of
      the pydantic form dumped without None fields: model, messages (role, content,
      tool_calls, images), format, options, template, stream, keep_alive, tools, then
      extra keys such as `think`; a model name without a tag gets ":latest".
      `/api/generate` with `model_dump_json(exclude_none=True)` (compact, raw UTF-8,
      `stream` defaulting to true); unload is `{"model", "keep_alive": 0, "prompt": ""}`
      read as one JSON object; `/api/pull` is `json.dumps({**form, "insecure": True})`
      where the form carries `model` (copied from `name` when only that was given).
      `/v1/chat/completions` is forwarded as `json.dumps(payload)`.
    - `requests` calls (`Content-Type: application/json` plus requests' own defaults):
      `DELETE /api/delete` and `POST /api/show` with `json.dumps(form)` where the form
      has `model` (and `name` when the caller used it); `POST /api/embed` with
      `model_dump_json(exclude_none=True)` of `{model, input, truncate, options,
      keep_alive}`.
  * `backend/open_webui/utils/payload.py` (revision 227ce3f63e9eabf4cbdff5f13be7967a869e0d91):
    `convert_payload_openai_to_ollama` moves `format`, `keep_alive` and `think` from the
    options to the top level and `max_tokens` to `num_predict`; assistant tool calls
    are sent as `{"index", "id", "function": {"name", "arguments": <object>}}` with
    empty content.

VS Code's GitHub Copilot Chat (bring your own key: Ollama), repository
`microsoft/vscode-copilot-chat` (revision 31acd00a86424e2ee6e980e54919cf31fbf88030):
  * `src/extension/byok/vscode-node/ollamaProvider.ts`: `GET /api/version` (below 0.6.4
    refused; "0.0.0" allowed), `GET /api/tags`, then for each listed `model`
    `POST /api/show` with `{"model"}` (JSON.stringify), reading `capabilities` (tools,
    vision), `model_info[<general.architecture>.context_length]` (else 32768) and
    `model_info["general.basename"]` (else `remote_model`, else the id) as its name;
    none of these carries an API key.
  * `src/platform/networking/node/nodeFetcher.ts`: `User-Agent: GitHubCopilotChat/<v>`.
  * `src/extension/byok/node/openAIEndpoint.ts` and `networking.ts`: chat is
    `POST /v1/chat/completions` with `Authorization: Bearer <key or "">`,
    `X-Request-Id`, `OpenAI-Intent`, `X-GitHub-Api-Version`, `X-Interaction-Type`,
    `X-Agent-Task-Id`; the body has `messages` (content strings or text parts, trailing
    whitespace trimmed, `copilot_cache_control` on a cache breakpoint), `model`,
    `temperature`, `top_p`, `n`, `stream: true`, `tools` (parameters defaulted to an
    empty object schema), `tool_choice`, and `stream_options: {"include_usage": true}`
    (`max_tokens` deleted).

Zed, repository `zed-industries/zed`:
  * `crates/ollama/src/ollama.rs` (stored revision 0138cb1c63e70671b469f131670824f27cc345df)
    and `crates/language_models/src/provider/ollama.rs`: `GET /api/tags` with
    `Accept: application/json` (entries must carry name, modified_at, size, digest and
    details with string format, family, parameter_size, quantization_level); models
    whose name contains "-embed" are skipped; `POST /api/show` with `{"model"}` for
    each, reading only `capabilities` (tools, vision, thinking). Chat is `POST
    /api/chat` serialized by serde with every field, `null` for an unset option:
    `model`, `messages` (tagged by role; an assistant's `tool_calls` and `thinking`,
    a tool result's `tool_name`), `stream: true`, `keep_alive: -1`, `options`
    (`num_ctx`, `num_predict`, `stop`, `temperature`, `top_p`), `tools` (an empty list
    for a model without them) and `think` (the model's thinking capability, and
    whether thinking is allowed). Each line must parse as a message with `model`,
    `created_at`, `message` (with `role`) and `done`.

Models come from the emulator's catalogue (`proxy/emulator/catalog.py`): qwen2.5-coder:7b
and codegemma:7b have `insert` (FIM), llama3.1:8b / qwen2.5:7b / mistral:7b have
`tools`, qwen3:8b has `thinking`, nomic-embed-text / all-minilm are embedders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from proxy import ollama_answers
from tests.support import Emulator, Proxy, ServerThread, without_auto

# Headers ------------------------------------------------------------------------------

# Continue: its own Content-Type, node-fetch's defaults for the rest.
CONTINUE_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "*/*",
    "User-Agent": "node-fetch",
    "Accept-Encoding": "gzip, deflate, br",
}
CONTINUE_KEY_HEADERS = {**CONTINUE_HEADERS, "Authorization": "Bearer sk-continue-test"}

# Open WebUI's aiohttp calls: only Content-Type is set, aiohttp adds its defaults.
OWUI_AIOHTTP_HEADERS = {"Content-Type": "application/json"}
# ...with ENABLE_FORWARD_USER_INFO_HEADERS and a chat id in the metadata.
OWUI_USER_HEADERS = {
    "Content-Type": "application/json",
    "Authorization": "Bearer owui-connection-key",
    "X-OpenWebUI-User-Name": quote("José Núñez", safe=" "),
    "X-OpenWebUI-User-Id": "6f1c2b1e-9d0a-4c53-9b8e-0c2f4f1d2a77",
    "X-OpenWebUI-User-Email": "jose@example.org",
    "X-OpenWebUI-User-Role": "admin",
    "X-OpenWebUI-Chat-Id": "c7a1e0b4-3f55-4b0e-8d8e-2d7c1b9e4f10",
}
# Open WebUI's `requests` calls: Content-Type plus the defaults requests sends.
OWUI_REQUESTS_HEADERS = {
    "User-Agent": "python-requests/2.32.3",
    "Accept-Encoding": "gzip, deflate",
    "Accept": "*/*",
    "Connection": "keep-alive",
    "Content-Type": "application/json",
}

# Continue's `parameters` line pattern (Ollama.ts constructor).
CONTINUE_PARAM_LINE = re.compile(r'^(\S+)\s+((?:".*")|\S+)$')

QWEN_FIM_STOPS = [
    "<|endoftext|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<|im_start|>",
    "<|im_end|>",
]


def js_stringify(obj: Any) -> bytes:
    """JSON.stringify (Continue) and pydantic's model_dump_json (Open WebUI): compact,
    non-ASCII as raw UTF-8, `<`/`>` left alone."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def py_dumps(obj: Any) -> bytes:
    """Python's json.dumps defaults (Open WebUI's `json.dumps(payload)`)."""
    return json.dumps(obj).encode()


# Sending ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str | None
    body: bytes
    chunks: int  # reads from resp.content.iter_any()

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.body.split(b"\n") if line.strip()]


async def send(
    base: str, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> Answer:
    # auto_decompress off: compare the bytes on the wire, whatever Accept-Encoding says.
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.request(method, base + path, data=body, headers=headers) as resp,
    ):
        parts = [chunk async for chunk in resp.content.iter_any()]
        return Answer(resp.status, resp.headers.get("Content-Type"), b"".join(parts), len(parts))


# Paths the proxy's own health refresh also requests: their counters are not exact.
_POLLED = frozenset({"/api/tags", "/api/ps"})


async def same(
    direct: Emulator,
    proxied: Proxy,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    *,
    backend: Emulator | None = None,
) -> Answer:
    """Send to `direct`, then through the proxy (whose backend is `backend`, by default
    `direct` itself); both answers must match, and the proxied request must have reached
    the backend exactly once."""
    want = await send(direct.url, method, path, body, headers)
    behind = backend or direct
    before = behind.state.requests[path]
    got = await send(proxied.url, method, path, body, headers)
    if path not in _POLLED:
        assert behind.state.requests[path] == before + 1, "not forwarded exactly once"
    assert got.status == want.status, (path, want.body[:300], got.body[:300])
    assert got.content_type == want.content_type, path
    if path == "/api/tags" and method == "GET":
        # The proxy lists `auto` and its profiles beside the backend's models.
        assert without_auto(got.body) == orjson.dumps(orjson.loads(want.body)), path
        return got
    assert got.body == want.body, (path, want.body[:300], got.body[:300])
    return got


def ndjson_stream(answer: Answer, *, paced: bool = True) -> list[dict[str, Any]]:
    """A complete NDJSON stream as Continue and Open WebUI read it. `paced`: the
    emulator spaced its lines out (text tokens), so they must not arrive as one piece;
    a tool call and the final line are written back to back and may coalesce."""
    assert answer.status == 200, answer.body[:300]
    assert answer.content_type == "application/x-ndjson"
    if paced:
        assert answer.chunks > 1, "the proxy delivered the stream in one piece"
    # Continue only parses text followed by "\n": an unterminated last line is lost.
    assert answer.body.endswith(b"\n")
    lines = answer.lines()
    assert len(lines) >= 2
    assert all("error" not in line for line in lines), lines[-1]
    assert lines[-1]["done"] is True
    assert all(line["done"] is False for line in lines[:-1])
    return lines


@pytest.fixture
def twin(servers: ServerThread, own_emulator: Emulator) -> Iterator[Emulator]:
    """A second private emulator, equal to `own_emulator` at start: the direct side for
    requests that change the model store (they cannot be sent twice to one backend)."""
    emu = Emulator(servers, own_emulator.state.settings)
    yield emu
    emu.stop()


# Continue -----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["name", "model"])
@pytest.mark.parametrize(("model", "fim"), [("qwen2.5-coder:7b", True), ("llama3.1:8b", False)])
async def test_continue_show_detects_fim_and_parses_parameters(
    emulator: Emulator, proxy: Proxy, field: str, model: str, fim: bool
) -> None:
    # Ollama.ts constructor sends {"name": ...}; newer clients (ollama-js) send "model".
    got = await same(
        emulator, proxy, "POST", "/api/show", js_stringify({field: model}), CONTINUE_HEADERS
    )
    assert got.status == 200
    assert got.content_type == "application/json; charset=utf-8"
    body = got.json()
    assert (".Suffix" in body["template"]) is fim
    stops = []
    for line in body["parameters"].split("\n"):
        match = CONTINUE_PARAM_LINE.match(line)
        assert match, line
        if match[1] == "stop":
            stops.append(json.loads(match[2]))
    assert stops and all(isinstance(s, str) for s in stops)


async def test_continue_list_models(emulator: Emulator, proxy: Proxy) -> None:
    got = await same(emulator, proxy, "GET", "/api/tags", None, CONTINUE_KEY_HEADERS)
    assert got.status == 200
    names = [m["name"] for m in got.json()["models"]]
    assert {"qwen2.5-coder:7b", "llama3.1:8b", "nomic-embed-text:latest"} <= set(names)


@pytest.mark.parametrize("stream", [None, True])
async def test_continue_chat_stream(emulator: Emulator, proxy: Proxy, stream: bool | None) -> None:
    request: dict[str, Any] = {
        "model": "qwen2.5-coder:7b",
        "messages": [
            {
                "role": "system",
                "content": "You are an expert software developer. Give helpful, concise answers.",
            },
            {
                "role": "user",
                "content": "```ts\nconst x = a < b && c > d;\n```\n"
                "Why does this throw? Réponds en français 🙂",
            },
        ],
        "options": {
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "num_predict": 48,
            "stop": ["<|im_start|>", "<|im_end|>"],
            "num_ctx": 8192,
            "mirostat": 0,
        },
        "keep_alive": 1800,
    }
    if stream is not None:
        request["stream"] = stream
    got = await same(emulator, proxy, "POST", "/api/chat", js_stringify(request), CONTINUE_HEADERS)
    lines = ndjson_stream(got)
    assert all(line["model"] == "qwen2.5-coder:7b" for line in lines)
    assert all(line["message"]["role"] == "assistant" for line in lines)
    text = "".join(line["message"]["content"] for line in lines)
    assert text.strip()
    assert lines[-1]["done_reason"] in ("stop", "length")


CONTINUE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Use this tool if you need to view the contents of an existing file.",
            "parameters": {
                "type": "object",
                "required": ["filepath"],
                "properties": {
                    "filepath": {
                        "type": "string",
                        "description": "The path of the file to read, relative to the root "
                        "of the workspace",
                    }
                },
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_terminal_command",
            "description": "Run a terminal command in the current directory.",
            "parameters": {
                "type": "object",
                "required": ["command"],
                "properties": {
                    "command": {"type": "string", "description": "The command to run."},
                    "waitForCompletion": {
                        "type": "boolean",
                        "description": "Whether to wait for the command.",
                    },
                },
            },
        },
    },
]


async def test_continue_chat_with_tools(emulator: Emulator, proxy: Proxy) -> None:
    messages = [
        {"role": "system", "content": "You are in agent mode."},
        {"role": "user", "content": "What is in README.md?"},
    ]
    request = {
        "model": "llama3.1:8b",
        "messages": messages,
        "options": {"temperature": 0, "num_predict": 256, "num_ctx": 8192},
        "keep_alive": 1800,
        "stream": False,  # Ollama.ts forces this whenever tools are sent...
        "tools": CONTINUE_TOOLS,  # ...and adds them last
    }
    got = await same(emulator, proxy, "POST", "/api/chat", js_stringify(request), CONTINUE_HEADERS)
    assert got.status == 200
    assert got.content_type == "application/json; charset=utf-8"
    answer = got.json()
    assert answer["done"] is True
    calls = answer["message"]["tool_calls"]
    assert len(calls) == 1
    fn = calls[0]["function"]
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in CONTINUE_TOOLS}
    assert fn["name"] in by_name
    # Continue re-serialises the arguments with JSON.stringify: they must be an object.
    assert isinstance(fn["arguments"], dict)
    schema = by_name[fn["name"]]
    assert set(schema["required"]) <= set(fn["arguments"]) <= set(schema["properties"])

    # The follow-up: Continue sends the tool result (the assistant turn without its
    # calls, as this revision does) and, the last message not being the user's, no
    # tools and no `stream`, so Ollama streams.
    follow = {
        "model": "llama3.1:8b",
        "messages": [
            *messages,
            {"role": "assistant", "content": ""},
            {"role": "tool", "content": "# ollama-autoroute\nA proxy."},
        ],
        "options": {"temperature": 0, "num_predict": 32, "num_ctx": 8192},
        "keep_alive": 1800,
    }
    lines = ndjson_stream(
        await same(emulator, proxy, "POST", "/api/chat", js_stringify(follow), CONTINUE_HEADERS)
    )
    assert "".join(line["message"]["content"] for line in lines).strip()
    assert not any("tool_calls" in line["message"] for line in lines)


@pytest.mark.parametrize("model", ["qwen2.5-coder:7b", "codegemma:7b"])
async def test_continue_fim_autocomplete(emulator: Emulator, proxy: Proxy, model: str) -> None:
    # streamFim: prefix as `prompt`, `suffix`, no `raw`/`stream` (left undefined).
    request = {
        "model": model,
        "prompt": "// Path: src/sum.ts\nexport function sum(xs: number[]): number {\n  ",
        "suffix": "\n}\n\nexport const total = sum([1, 2, 3]);\n",
        "options": {
            "temperature": 0.01,
            "num_predict": 24,
            "stop": QWEN_FIM_STOPS,
            "num_ctx": 8192,
        },
        "keep_alive": 1800,
    }
    got = await same(
        emulator, proxy, "POST", "/api/generate", js_stringify(request), CONTINUE_HEADERS
    )
    lines = ndjson_stream(got)
    # Continue yields `response` of every line that has one.
    assert all(isinstance(line["response"], str) for line in lines)
    assert "".join(line["response"] for line in lines).strip()
    assert lines[-1]["done_reason"] == "length"
    assert lines[-1]["eval_count"] == 24


async def test_continue_raw_completion_without_fim(emulator: Emulator, proxy: Proxy) -> None:
    # streamComplete with raw: true on a prompt Continue templated itself.
    request = {
        "model": "llama3.1:8b",
        "prompt": "<|start_header_id|>user<|end_header_id|>\n\ndef fib(n):\n"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "raw": True,
        "options": {
            "temperature": 0.01,
            "num_predict": 16,
            "stop": ["<|eot_id|>"],
            "num_ctx": 8192,
        },
        "keep_alive": 1800,
        "stream": True,
    }
    got = await same(
        emulator, proxy, "POST", "/api/generate", js_stringify(request), CONTINUE_KEY_HEADERS
    )
    lines = ndjson_stream(got)
    assert "context" not in lines[-1]  # raw mode returns no context
    assert "".join(line["response"] for line in lines).strip()


@pytest.mark.parametrize(
    ("path", "request_body", "status", "message"),
    [
        # Continue's default model "codellama-7b" maps to codellama:7b, not installed.
        (
            "/api/chat",
            {
                "model": "codellama:7b",
                "messages": [{"role": "user", "content": "hi"}],
                "options": {"num_predict": 8},
                "keep_alive": 1800,
            },
            404,
            "model 'codellama:7b' not found",
        ),
        ("/api/show", {"name": "codellama:7b"}, 404, "model 'codellama:7b' not found"),
        # FIM forced on a model without `insert`.
        (
            "/api/generate",
            {
                "model": "llama3.1:8b",
                "prompt": "def f(",
                "suffix": "\n",
                "options": {"num_predict": 8},
                "keep_alive": 1800,
            },
            400,
            "registry.ollama.ai/library/llama3.1:8b does not support insert",
        ),
        # Tools on a model without `tools`.
        (
            "/api/chat",
            {
                "model": "gemma2:9b",
                "messages": [{"role": "user", "content": "hi"}],
                "options": {"num_predict": 8},
                "keep_alive": 1800,
                "stream": False,
                "tools": CONTINUE_TOOLS[:1],
            },
            400,
            "registry.ollama.ai/library/gemma2:9b does not support tools",
        ),
    ],
)
async def test_continue_errors_reach_the_client(
    emulator: Emulator,
    proxy: Proxy,
    path: str,
    request_body: dict[str, Any],
    status: int,
    message: str,
) -> None:
    # streamResponse throws the body text for a non-200; the chat path throws `error`.
    got = await same(emulator, proxy, "POST", path, js_stringify(request_body), CONTINUE_HEADERS)
    assert got.status == status
    assert got.json() == {"error": message}


async def test_continue_embed(emulator: Emulator, proxy: Proxy) -> None:
    # _embed uses this.model as configured (no tag) and the chunk texts as `input`.
    chunks = ["export function sum(xs: number[]) {", "return xs.reduce((a, b) => a + b, 0);"]
    got = await same(
        emulator,
        proxy,
        "POST",
        "/api/embed",
        js_stringify({"model": "nomic-embed-text", "input": chunks}),
        CONTINUE_HEADERS,
    )
    assert got.status == 200
    vectors = got.json()["embeddings"]
    assert len(vectors) == 2
    assert all(len(v) == 768 for v in vectors)


async def test_continue_install_model(
    twin: Emulator, own_emulator: Emulator, own_proxy: Proxy
) -> None:
    # installModel: {"name"} with "Authorization: Bearer undefined" when no key is set.
    for emu in (twin, own_emulator):
        del emu.state.store["qwen2.5-coder:7b"]
    headers = {**CONTINUE_HEADERS, "Authorization": "Bearer undefined"}
    got = await same(
        twin,
        own_proxy,
        "POST",
        "/api/pull",
        js_stringify({"name": "qwen2.5-coder:7b"}),
        headers,
        backend=own_emulator,
    )
    assert got.status == 200
    assert got.content_type == "application/x-ndjson"
    assert got.chunks > 1
    assert got.body.endswith(b"\n")
    progress = got.lines()
    assert progress[0] == {"status": "pulling manifest"}
    assert progress[-1] == {"status": "success"}
    assert any("completed" in p and p["completed"] == p["total"] for p in progress)
    assert "qwen2.5-coder:7b" in own_emulator.state.store


# Open WebUI ---------------------------------------------------------------------------


async def test_openwebui_version(emulator: Emulator, proxy: Proxy) -> None:
    got = await same(emulator, proxy, "GET", "/api/version", None, OWUI_AIOHTTP_HEADERS)
    assert got.status == 200
    version = got.json()["version"]
    # get_ollama_versions compares versions this way.
    assert tuple(map(int, re.sub(r"^v|-.*", "", version).split(".")))


async def test_openwebui_model_list_and_loaded(emulator: Emulator, proxy: Proxy) -> None:
    # Load one model first (the admin's unload button works from /api/ps).
    await send(
        emulator.url,
        "POST",
        "/api/generate",
        js_stringify(
            {"model": "mistral:7b", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
        ),
        OWUI_AIOHTTP_HEADERS,
    )
    tags = await same(emulator, proxy, "GET", "/api/tags", None, OWUI_AIOHTTP_HEADERS)
    ps = await same(emulator, proxy, "GET", "/api/ps", None, OWUI_AIOHTTP_HEADERS)
    assert tags.status == ps.status == 200
    # merge_ollama_models_lists keys on `model`.
    assert all(m.get("model") for m in tags.json()["models"])
    loaded = {m["model"]: m for m in ps.json()["models"]}
    assert "mistral:7b" in loaded
    # get_all_models turns expires_at into a Unix time with datetime.fromisoformat.
    assert datetime.fromisoformat(loaded["mistral:7b"]["expires_at"]).timestamp() > 0


async def test_openwebui_chat_stream_with_thinking(emulator: Emulator, proxy: Proxy) -> None:
    payload = {
        "model": "qwen3:8b",
        "messages": [
            {"role": "system", "content": "Tu es un assistant serviable."},
            {"role": "user", "content": "Pourquoi le ciel est-il bleu ? Réponds brièvement."},
        ],
        "options": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "num_ctx": 8192},
        "stream": True,
        "keep_alive": "5m",
        "think": True,
    }
    body = py_dumps(payload)
    assert b"\\u00e9" in body  # json.dumps escapes non-ASCII, unlike JSON.stringify
    got = await same(emulator, proxy, "POST", "/api/chat", body, OWUI_USER_HEADERS)
    lines = ndjson_stream(got)
    thinking = "".join(line["message"].get("thinking", "") for line in lines)
    content = "".join(line["message"]["content"] for line in lines)
    assert thinking.strip()
    assert content.strip()
    # Thinking comes first, then the answer.
    first_content = next(i for i, line in enumerate(lines) if line["message"]["content"])
    assert all("thinking" not in line["message"] for line in lines[first_content:])


async def test_openwebui_chat_structured_output(emulator: Emulator, proxy: Proxy) -> None:
    # response_format json_schema becomes a top-level `format`; stream false.
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    payload = {
        "model": "llama3.1:8b",
        "messages": [{"role": "user", "content": "Largest city in Peru, as JSON."}],
        "format": schema,
        "options": {"temperature": 0.0},
        "stream": False,
    }
    got = await same(emulator, proxy, "POST", "/api/chat", py_dumps(payload), OWUI_AIOHTTP_HEADERS)
    assert got.status == 200
    answer = got.json()
    data = json.loads(answer["message"]["content"])
    assert set(schema["required"]) <= set(data)
    assert isinstance(data["population"], int)


async def test_openwebui_native_tool_calling_round_trip(emulator: Emulator, proxy: Proxy) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_current_weather",
                "description": "Get the current weather for a city.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "The city"},
                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    },
                    "required": ["city"],
                },
            },
        }
    ]
    user = {"role": "user", "content": "What's the weather in Lima?"}
    first = {"model": "qwen2.5:7b", "messages": [user], "stream": True, "tools": tools}
    lines = ndjson_stream(
        await same(emulator, proxy, "POST", "/api/chat", py_dumps(first), OWUI_AIOHTTP_HEADERS),
        paced=False,
    )
    calls = [c for line in lines for c in line["message"].get("tool_calls", [])]
    assert len(calls) == 1
    assert calls[0]["function"]["name"] == "get_current_weather"
    args = calls[0]["function"]["arguments"]
    assert isinstance(args, dict) and "city" in args

    # Second turn as convert_messages_openai_to_ollama writes it (and the pydantic
    # ChatMessage drops tool_call_id): the call with empty content, then the result.
    call_msg = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "index": 0,
                "id": calls[0].get("id", "call_1"),
                "function": {"name": "get_current_weather", "arguments": args},
            }
        ],
    }
    second = {
        "model": "qwen2.5:7b",
        "messages": [user, call_msg, {"role": "tool", "content": '{"temp_c": 19}'}],
        "stream": True,
        "tools": tools,
    }
    lines = ndjson_stream(
        await same(emulator, proxy, "POST", "/api/chat", py_dumps(second), OWUI_AIOHTTP_HEADERS)
    )
    assert "".join(line["message"]["content"] for line in lines).strip()
    assert not any(line["message"].get("tool_calls") for line in lines)


async def test_openwebui_generate(emulator: Emulator, proxy: Proxy) -> None:
    # GenerateCompletionForm.model_dump_json(exclude_none=True): `stream` defaults true.
    form = {
        "model": "gemma2:9b",
        "prompt": "Écris un haïku sur les routeurs.",
        "options": {"num_predict": 12},
        "stream": True,
    }
    got = await same(
        emulator, proxy, "POST", "/api/generate", js_stringify(form), OWUI_AIOHTTP_HEADERS
    )
    lines = ndjson_stream(got)
    assert isinstance(lines[-1]["context"], list)
    assert lines[-1]["eval_count"] == 12


async def test_openwebui_unload(own_emulator: Emulator, own_proxy: Proxy) -> None:
    load = {
        "model": "qwen2.5:7b",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "options": {"num_predict": 2},
    }
    await send(own_proxy.url, "POST", "/api/chat", py_dumps(load), OWUI_AIOHTTP_HEADERS)
    assert "qwen2.5:7b" in own_emulator.state.loaded
    # /api/unload: {"model", "keep_alive": 0, "prompt": ""}, no `stream`, read as JSON.
    unload = py_dumps({"model": "qwen2.5:7b", "keep_alive": 0, "prompt": ""})
    got = await same(own_emulator, own_proxy, "POST", "/api/generate", unload, OWUI_AIOHTTP_HEADERS)
    assert got.status == 200
    assert got.content_type == "application/json; charset=utf-8"
    answer = got.json()
    assert answer["done"] is True and answer["done_reason"] == "unload"
    ps = await same(own_emulator, own_proxy, "GET", "/api/ps", None, OWUI_AIOHTTP_HEADERS)
    assert "qwen2.5:7b" not in {m["model"] for m in ps.json()["models"]}


async def test_openwebui_embed(emulator: Emulator, proxy: Proxy) -> None:
    form = {
        "model": "all-minilm:latest",
        "input": ["Open WebUI", "naïve café"],
        "truncate": True,
        "keep_alive": "10m",
    }
    got = await same(
        emulator, proxy, "POST", "/api/embed", js_stringify(form), OWUI_REQUESTS_HEADERS
    )
    assert got.status == 200
    vectors = got.json()["embeddings"]
    assert [len(v) for v in vectors] == [384, 384]


@pytest.mark.parametrize("form", [{"model": "qwen3:8b"}, {"name": "qwen3:8b", "model": "qwen3:8b"}])
async def test_openwebui_show(emulator: Emulator, proxy: Proxy, form: dict[str, str]) -> None:
    got = await same(emulator, proxy, "POST", "/api/show", py_dumps(form), OWUI_REQUESTS_HEADERS)
    assert got.status == 200
    assert "thinking" in got.json()["capabilities"]


async def test_openwebui_pull_stream(
    twin: Emulator, own_emulator: Emulator, own_proxy: Proxy
) -> None:
    for emu in (twin, own_emulator):
        del emu.state.store["gemma2:9b"]
    # The admin typed the name; pull_model copies it to `model` and adds insecure.
    payload = py_dumps({"name": "gemma2:9b", "model": "gemma2:9b", "insecure": True})
    got = await same(
        twin, own_proxy, "POST", "/api/pull", payload, OWUI_AIOHTTP_HEADERS, backend=own_emulator
    )
    assert got.status == 200
    assert got.content_type == "application/x-ndjson"
    assert got.chunks > 1
    progress = got.lines()
    assert progress[-1] == {"status": "success"}
    assert any(0 < p.get("completed", 0) < p.get("total", 0) for p in progress)
    tags = await same(
        twin, own_proxy, "GET", "/api/tags", None, OWUI_AIOHTTP_HEADERS, backend=own_emulator
    )
    assert "gemma2:9b" in {m["model"] for m in tags.json()["models"]}

    # A name the registry does not have: 200, then an error line ends the stream.
    missing = py_dumps({"model": "no-such-model:1b", "insecure": True})
    got = await same(
        twin, own_proxy, "POST", "/api/pull", missing, OWUI_AIOHTTP_HEADERS, backend=own_emulator
    )
    assert got.status == 200
    assert got.lines()[-1] == {"error": "pull model manifest: file does not exist"}


@pytest.mark.parametrize(
    "form", [{"name": "mistral:7b", "model": "mistral:7b"}, {"model": "mistral:7b"}]
)
async def test_openwebui_delete(
    twin: Emulator, own_emulator: Emulator, own_proxy: Proxy, form: dict[str, str]
) -> None:
    body = py_dumps(form)
    got = await same(
        twin, own_proxy, "DELETE", "/api/delete", body, OWUI_REQUESTS_HEADERS, backend=own_emulator
    )
    assert got.status == 200
    assert got.body == b""
    assert "mistral:7b" not in own_emulator.state.store
    # Deleting again: Ollama's 404, which Open WebUI turns into "Ollama: <error>".
    again = await same(
        twin, own_proxy, "DELETE", "/api/delete", body, OWUI_REQUESTS_HEADERS, backend=own_emulator
    )
    assert again.status == 404
    assert again.json() == {"error": "model 'mistral:7b' not found"}
    tags = await same(
        twin, own_proxy, "GET", "/api/tags", None, OWUI_AIOHTTP_HEADERS, backend=own_emulator
    )
    assert "mistral:7b" not in {m["model"] for m in tags.json()["models"]}


async def test_openwebui_openai_chat_stream(emulator: Emulator, proxy: Proxy) -> None:
    # /ollama/v1/chat/completions forwards json.dumps(payload), ":latest" added if untagged.
    payload = {
        "model": "llama3.1:8b",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name three routing algorithms."},
        ],
        "stream": True,
        "temperature": 0.2,
        "max_tokens": 24,
    }
    got = await same(
        emulator, proxy, "POST", "/v1/chat/completions", py_dumps(payload), OWUI_USER_HEADERS
    )
    assert got.status == 200
    assert got.content_type == "text/event-stream"
    assert got.chunks > 1
    events = [e for e in got.body.split(b"\n\n") if e.strip()]
    assert all(e.startswith(b"data: ") for e in events)
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[len(b"data: ") :]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip()


# VS Code's Copilot Chat ---------------------------------------------------------------


COPILOT_UA = "GitHubCopilotChat/0.41.1"
COPILOT_HEADERS = {"User-Agent": COPILOT_UA}


def copilot_version_ok(version: str) -> bool:
    """ollamaProvider.ts `_isVersionSupported`: "0.0.0" (a build from source), else
    the dotted numbers at least 0.6.4's."""
    if version == "0.0.0":
        return True
    parts = [int(p) for p in version.split(".")]
    return parts + [0] * (3 - len(parts)) >= [0, 6, 4]


async def test_copilot_lists_and_reads_models(emulator: Emulator, proxy: Proxy) -> None:
    got = await same(emulator, proxy, "GET", "/api/version", None, COPILOT_HEADERS)
    assert copilot_version_ok(got.json()["version"])
    tags = await same(emulator, proxy, "GET", "/api/tags", None, COPILOT_HEADERS)
    listed = [m["model"] for m in tags.json()["models"]]
    headers = {**COPILOT_HEADERS, "Content-Type": "application/json"}
    for model in ("qwen2.5-coder:7b", "llava:7b", "nomic-embed-text:latest"):
        assert model in listed
        body = js_stringify({"model": model})
        show = (await same(emulator, proxy, "POST", "/api/show", body, headers)).json()
        info = show["model_info"]
        assert info["general.basename"] == model  # what Copilot shows as its name
        assert isinstance(info[f"{info['general.architecture']}.context_length"], int)
        assert isinstance(show["capabilities"], list)


COPILOT_AGENT_REQUEST: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "You are an expert AI programming assistant."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "List the files, then read main.py"}],
            "copilot_cache_control": {"type": "ephemeral"},
        },
    ],
    "model": "qwen2.5-coder:7b",
    "temperature": 0.1,
    "top_p": 1,
    "n": 1,
    "stream": True,
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "list_dir",
                "description": "List a directory.",
                "parameters": {"type": "object", "properties": {}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "read_file",
                "description": "Read a file.",
                "parameters": {
                    "type": "object",
                    "properties": {"filePath": {"type": "string"}},
                    "required": ["filePath"],
                },
            },
        },
    ],
    "tool_choice": "auto",
    "stream_options": {"include_usage": True},
}


COPILOT_CHAT_HEADERS = {
    "Authorization": "Bearer ",
    "X-Request-Id": "1d34dcc1-c475-40f2-bd8e-7baeb4408545",
    "OpenAI-Intent": "conversation-agent",
    "X-GitHub-Api-Version": "2025-05-01",
    "Content-Type": "application/json",
    "X-Interaction-Type": "conversation-agent",
    "X-Agent-Task-Id": "1d34dcc1-c475-40f2-bd8e-7baeb4408545",
    "User-Agent": COPILOT_UA,
}


def copilot_stream(answer: Answer) -> list[dict[str, Any]]:
    """The chunks of an OpenAI stream as Copilot reads them, tool calls checked: each
    names a tool it was offered, with arguments a JSON object in a string."""
    assert answer.status == 200, answer.body[:300]
    assert answer.content_type == "text/event-stream"
    events = [e for e in answer.body.split(b"\n\n") if e.strip()]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[len(b"data: ") :]) for e in events[:-1]]
    offered = {t["function"]["name"] for t in COPILOT_AGENT_REQUEST["tools"]}
    for chunk in chunks:
        for call in (
            (chunk["choices"][0]["delta"].get("tool_calls") or []) if chunk["choices"] else []
        ):
            assert call["function"]["name"] in offered
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
    return chunks


async def test_copilot_agent_chat(emulator: Emulator, proxy: Proxy) -> None:
    body = js_stringify(COPILOT_AGENT_REQUEST)
    got = await same(emulator, proxy, "POST", "/v1/chat/completions", body, COPILOT_CHAT_HEADERS)
    chunks = copilot_stream(got)
    assert any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


# Zed ----------------------------------------------------------------------------------


ZED_TOOL = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Reads a file",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
}


def zed_chat(model: str, tools: bool, think: bool) -> dict[str, Any]:
    """A second turn, after a tool call and its result, as Zed's ChatRequest writes it."""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What does main.rs do?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "read_file", "arguments": {"path": "main.rs"}}}
                ],
                "thinking": None,
            },
            {"role": "tool", "tool_name": "read_file", "content": "fn main() {}"},
        ],
        "stream": True,
        "keep_alive": -1,
        "options": {
            "num_ctx": 4096,
            "num_predict": None,
            "stop": [],
            "temperature": 1.0,
            "top_p": None,
        },
        "tools": [ZED_TOOL] if tools else [],
        "think": think,
    }


def zed_lines(answer: Answer) -> list[dict[str, Any]]:
    lines = ndjson_stream(answer, paced=False)
    for line in lines:  # ChatResponseDelta: these fields, the message tagged by role
        assert isinstance(line["model"], str) and isinstance(line["created_at"], str)
        assert line["message"]["role"] == "assistant"
    return lines


async def test_zed_lists_models_and_chats(emulator: Emulator, proxy: Proxy) -> None:
    tags = await same(emulator, proxy, "GET", "/api/tags", None, {"Accept": "application/json"})
    through = (await send(proxy.url, "GET", "/api/tags", None, {})).json()["models"]
    for entry in through:  # auto's entries too: Zed refuses the whole list otherwise
        assert isinstance(entry["name"], str) and isinstance(entry["modified_at"], str)
        assert isinstance(entry["size"], int) and isinstance(entry["digest"], str)
        details = entry["details"]
        for field in ("format", "family", "parameter_size", "quantization_level"):
            assert isinstance(details[field], str), (entry["name"], field)
    assert {m["name"] for m in tags.json()["models"]} <= {m["name"] for m in through}
    headers = {"Content-Type": "application/json"}
    show = await same(
        emulator, proxy, "POST", "/api/show", js_stringify({"model": "qwen3:8b"}), headers
    )
    caps = show.json()["capabilities"]
    assert {"tools", "thinking"} <= set(caps)
    body = js_stringify(zed_chat("qwen3:8b", tools=True, think=True))
    lines = zed_lines(await same(emulator, proxy, "POST", "/api/chat", body, headers))
    assert lines[-1]["done"] is True


async def test_zed_chats_with_auto(proxy: Proxy) -> None:
    """Zed sends what auto's show says: tools, and think false (auto lists no thinking)."""
    headers = {"Content-Type": "application/json"}
    show = await send(proxy.url, "POST", "/api/show", js_stringify({"model": "auto"}), headers)
    caps = show.json()["capabilities"]
    body = js_stringify(zed_chat("auto", tools="tools" in caps, think="thinking" in caps))
    async with (
        aiohttp.ClientSession() as session,
        session.post(proxy.url + "/api/chat", data=body, headers=headers) as resp,
    ):
        chosen = resp.headers["X-Autoroute-Model"]
        got = Answer(resp.status, resp.headers.get("Content-Type"), await resp.read(), 0)
    lines = zed_lines(got)
    assert {line["model"] for line in lines} == {chosen}


# `auto`, as these clients read it ------------------------------------------------------


async def test_continue_autocomplete_with_auto_fills_in_the_middle(
    emulator: Emulator, proxy: Proxy
) -> None:
    """Continue decides fill-in-the-middle from `.Suffix` in show's template; without it
    it sends a prompt it templated itself, with its default model's FIM tokens, in raw
    mode, which no model `auto` may choose has been trained on. `auto`'s template reads
    what a model's does for each capability it lists, as Ollama decides them."""
    got = await send(
        proxy.url, "POST", "/api/show", js_stringify({"name": "auto"}), CONTINUE_HEADERS
    )
    assert got.status == 200
    show = got.json()
    assert "insert" in show["capabilities"]
    assert ".Suffix" in show["template"]
    # The template says what the list says, read as Ollama reads a template's fields.
    decided = ollama_answers.decided_capabilities({**show, "capabilities": None})
    for capability in ("tools", "insert"):
        assert (capability in decided) == (capability in show["capabilities"]), capability
    # streamFim to `auto`: the request goes to a model that takes a suffix.
    request = {
        "model": "auto",
        "prompt": "def fibonacci(n):\n    if n <",
        "suffix": "\n\nprint(fibonacci(10))\n",
        "options": {"temperature": 0.01, "num_predict": 24, "num_ctx": 8192},
        "keep_alive": 1800,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            proxy.url + "/api/generate", data=js_stringify(request), headers=CONTINUE_HEADERS
        ) as resp,
    ):
        chosen = resp.headers["X-Autoroute-Model"]
        lines = [json.loads(line) for line in (await resp.read()).splitlines()]
    assert resp.status == 200
    assert lines[-1]["done"] is True and lines[-1]["model"] == chosen
    shown = await send(emulator.url, "POST", "/api/show", js_stringify({"model": chosen}), {})
    assert "insert" in shown.json()["capabilities"]


@pytest.mark.parametrize("model", ["auto", "auto:fast", "Auto"])
async def test_copilot_reads_auto_by_the_name_it_asked_for(proxy: Proxy, model: str) -> None:
    """VS Code's Copilot Chat names a model by show's `general.basename`; Ollama sets it
    to the requested name for a User-Agent of GitHubCopilotChat/ (server/routes.go,
    ShowHandler), and to nothing else for `auto`, which has no weights to name."""
    body = js_stringify({"model": model})
    copilot = {**COPILOT_HEADERS, "Content-Type": "application/json"}
    got = await send(proxy.url, "POST", "/api/show", body, copilot)
    assert got.status == 200
    info = got.json()["model_info"]
    assert info["general.basename"] == model
    assert list(info) == sorted(info)  # a Go map's keys, as encoding/json orders them
    # What Copilot reads for the context window: model_info[<architecture>.context_length].
    assert info[f"{info['general.architecture']}.context_length"] >= 32768
    other = await send(proxy.url, "POST", "/api/show", body, {"User-Agent": "node-fetch"})
    assert "general.basename" not in other.json()["model_info"]


async def test_copilot_agent_chat_with_auto(emulator: Emulator, proxy: Proxy) -> None:
    """Copilot offers tools to `auto` (its show lists them): `auto` chooses a model that
    takes them, and the stream is read as Copilot reads one, the chosen model named."""
    body = js_stringify({**COPILOT_AGENT_REQUEST, "model": "auto"})
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            proxy.url + "/v1/chat/completions", data=body, headers=COPILOT_CHAT_HEADERS
        ) as resp,
    ):
        chosen = resp.headers["X-Autoroute-Model"]
        got = Answer(resp.status, resp.headers.get("Content-Type"), await resp.read(), 0)
    chunks = copilot_stream(got)
    assert {c["model"] for c in chunks} == {chosen}
    shown = await send(emulator.url, "POST", "/api/show", js_stringify({"model": chosen}), {})
    assert "tools" in shown.json()["capabilities"]

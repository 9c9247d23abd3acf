"""Ollama wire-protocol constants, in one place for the proxy and the emulator.

Read from Ollama's `server/routes.go` and `api/types.go`; durations on the wire are
nanoseconds. Which paths the proxy treats how is the route table's (`proxy.routes`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from aiohttp import web

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
JSON = "application/json; charset=utf-8"
# Ollama's OpenAI-compatible routes answer without the charset parameter.
JSON_V1 = "application/json"
TEXT = "text/plain; charset=utf-8"

# The version the emulator reports: the release whose API it follows (server/routes.go,
# openai/, anthropic/ and middleware/ as of v0.32.15). Clients read features from it:
# VS Code's Copilot refuses anything below 0.6.4, the Codex CLI below 0.13.4.
OLLAMA_VERSION = "0.32.15"

# Ollama's show sets model_info["general.basename"] to the name asked for when the
# User-Agent starts with this (server/routes.go, ShowHandler): VS Code's Copilot Chat
# names a model by general.basename.
COPILOT_CHAT_USER_AGENT_PREFIX = "GitHubCopilotChat/"

# RFC 9110 §7.6.1 hop-by-hop headers, plus the framing headers the proxy sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)


# Go's encoding/json writes these as \u escapes inside strings: <, > and & because
# json.Marshal, gin's c.JSON and a json.Encoder escape HTML by default, U+2028 and
# U+2029 always (they end a line in JavaScript). orjson writes them as they are.
_GO_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def go_escaped(raw: bytes) -> bytes:
    """orjson's output with Go's escapes. Exact: those characters occur only inside
    strings in JSON, and orjson writes each as itself."""
    if b"<" in raw or b">" in raw or b"&" in raw or b"\xe2\x80" in raw:
        for char, escape in _GO_ESCAPES:
            raw = raw.replace(char, escape)
    return raw


def go_dumps(doc: object) -> bytes:
    """`doc` as Ollama's handlers write JSON (json.Marshal, gin's c.JSON): compact,
    with Go's escapes."""
    return go_escaped(orjson.dumps(doc))


def go_time(ns: float) -> str:
    """time.Time's JSON form (RFC 3339 with trailing-zero-trimmed nanoseconds, UTC), as
    in every `created_at` Ollama writes."""
    whole, frac = divmod(int(ns), 1_000_000_000)
    stamp = datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        stamp += "." + f"{frac:09d}".rstrip("0")
    return stamp + "Z"


def go_now() -> str:
    """The time now as `go_time` writes it."""
    return go_time(time.time_ns())


def encoded(doc: object) -> bytes:
    """`doc` as Ollama's OpenAI layer writes its answers (middleware/openai.go: Go's
    json.NewEncoder(w).Encode), which ends the value with a newline."""
    return go_dumps(doc) + b"\n"


# Ollama's counts and sizes (token counts, durations in nanoseconds, bytes) are Go
# int64s; a sink stores nothing larger.
INT64_MAX = (1 << 63) - 1


def count(value: object) -> int | None:
    """A count or size from a decoded answer (Ollama's or a cloud's): an integer an
    int64 holds, not negative, as Go's json.Unmarshal reads one; anything else (a
    float, even a whole one, a string, a boolean) is absent, never a guess a sink
    stores or a budget is given back by. `final_chunk` reads the same from bytes."""
    if type(value) is int and 0 <= value <= INT64_MAX:
        return value
    return None


REQUEST_ID_HEADER = "X-Request-Id"
# The model that answers: the one named, auto's choice, or the cloud fallback's.
MODEL_HEADER = "X-Autoroute-Model"
# The model that answers and, for `auto`, its profile, why it was chosen and its score:
# on an answer a backend (or the cloud) gave, never on the proxy's own error answer,
# which no model gave (`Server.handle`).
AUTOROUTE_HEADERS = (
    MODEL_HEADER,
    "X-Autoroute-Profile",
    "X-Autoroute-Reason",
    "X-Autoroute-Score",
)
# A cloud provider standing in, as usage events and stats name the backend: its
# configured name, which the public health shows too.
CLOUD_BACKEND_PREFIX = "cloud:"
# How the proxy's own `auto` entries name their format, family and owner in the model
# lists, by which a proxy in front of another tells that one's `auto` from a model.
AUTOROUTE = "autoroute"


async def drop_server_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """An `on_response_prepare` signal: Go's net/http sends no `Server` header, and
    aiohttp adds one to every response it prepares before this signal fires."""
    response.headers.popall("Server", None)

"""Ollama wire-protocol constants, in one place for the proxy and the emulator.

Read from Ollama's `server/routes.go` and `api/types.go`; durations on the wire are
nanoseconds. Which paths the proxy treats how is the route table's (`proxy.routes`).
"""

from __future__ import annotations

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

# The version the emulator reports. VS Code's Copilot refuses anything below 0.6.4.
OLLAMA_VERSION = "0.13.0"

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


def encoded(doc: object) -> bytes:
    """`doc` as Ollama's OpenAI layer writes its answers (middleware/openai.go: Go's
    json.NewEncoder(w).Encode), which ends the value with a newline."""
    return orjson.dumps(doc) + b"\n"


REQUEST_ID_HEADER = "X-Request-Id"
# The model that answers: the one named, auto's choice, or the cloud fallback's.
MODEL_HEADER = "X-Autoroute-Model"


async def drop_server_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """An `on_response_prepare` signal: Go's net/http sends no `Server` header, and
    aiohttp adds one to every response it prepares before this signal fires."""
    response.headers.popall("Server", None)

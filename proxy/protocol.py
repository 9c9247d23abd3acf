"""Ollama wire-protocol constants, in one place for the proxy and the emulator.

Read from Ollama's `server/routes.go` and `api/types.go`; durations on the wire are
nanoseconds.
"""

from __future__ import annotations

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
JSON = "application/json; charset=utf-8"
# Ollama's OpenAI-compatible routes answer without the charset parameter.
JSON_V1 = "application/json"
TEXT = "text/plain; charset=utf-8"

# The version the emulator reports. VS Code's Copilot refuses anything below 0.6.4.
OLLAMA_VERSION = "0.13.0"

# Requests whose JSON body names the model that decides where they go.
MODEL_ROUTED_PATHS = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
)

# Requests that run a model: what usage events record and `max_streams` counts.
# `/api/show` names a model too, but it is metadata editors poll.
INFERENCE_PATHS = MODEL_ROUTED_PATHS - {"/api/show"}

# Requests that change the model store: sent to the backends chosen by `admin_target`.
MODEL_ADMIN_PATHS = frozenset({"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"})

# The field that carries the model name, per path (Ollama accepts the older `name`
# on the admin routes and `source` on copy).
MODEL_FIELDS: tuple[str, ...] = ("model", "name")

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

REQUEST_ID_HEADER = "X-Request-Id"

"""Errors in Ollama's shape: `{"error": "..."}` with Ollama's status codes, the OpenAI
shape on the `/v1` routes and the Anthropic shape on `/v1/messages`, as Ollama's
compatibility layers answer there, written with Go's escapes (`protocol.go_dumps`); and
gin's plain-text 404 and 405 for a path or method Ollama's router does not serve."""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from proxy import go_mux
from proxy.backends import not_found_message
from proxy.outcome import MAX_ERROR_CHARS
from proxy.protocol import JSON, JSON_V1, go_dumps
from proxy.routes import gin_allowed

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


# How Ollama begins its answer when it cannot take a request now (server/sched.go,
# ErrMaxQueue; a 503): the proxy says so of its own limits, its bodies held in memory
# and its connections.
SERVER_BUSY = "server busy, please try again"

ANTHROPIC_PATH = "/v1/messages"
# Ollama's anthropic.NewError, and Anthropic's own name for a body too large.
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(path: str, status: int, message: str) -> bytes:
    if path == ANTHROPIC_PATH:
        kind = ANTHROPIC_TYPES.get(status, "api_error")
        return go_dumps(
            {
                "type": "error",
                "error": {"type": kind, "message": message},
                "request_id": "req_" + os.urandom(12).hex(),
            }
        )
    if path.startswith("/v1/"):
        kind = _OPENAI_TYPES.get(status, "api_error")
        return go_dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})
    return go_dumps({"error": message})


# The message of an answer the proxy writes itself, which `Server.handle` keeps as the
# request's error where its handler kept none (`said`).
MESSAGE = web.ResponseKey("autoroute_message", str)


def carrying(response: web.Response, message: str) -> web.Response:
    """`response`, an error answer the proxy writes itself, with its `message`."""
    response[MESSAGE] = message
    return response


def said(response: web.StreamResponse) -> str:
    """The message an answer the proxy wrote itself carries (`carrying`), cut to
    `MAX_ERROR_CHARS`: "" for any other answer."""
    message: str = response.get(MESSAGE, "")
    return message[:MAX_ERROR_CHARS]


def error_response(path: str, status: int, message: str) -> web.Response:
    response = web.Response(
        status=status,
        body=error_body(path, status, message),
        content_type=None,
        headers={"Content-Type": JSON},
    )
    return carrying(response, message)


def body_too_large(path: str, limit: int) -> web.Response:
    """The 413 for a body longer than `limit` bytes."""
    return error_response(path, 413, f"request body too large (limit {limit} bytes)")


def handler_error(path: str, status: int, message: str) -> web.Response:
    """An error in the place of one Ollama's handler writes (a model not found, or
    lacking what the request needs): on the `/v1` routes Ollama's OpenAI and Anthropic
    layers write it again, with a json.Encoder (a trailing newline) under
    `application/json`; elsewhere as gin's c.JSON writes it (`error_response`). A body
    a layer refuses as it reads it is the layer's own c.JSON: `error_response`."""
    if not path.startswith("/v1/"):
        return error_response(path, status, message)
    body = error_body(path, status, message) + b"\n"
    response = web.Response(status=status, body=body, headers={"Content-Type": JSON_V1})
    return carrying(response, message)


def model_not_found(path: str, model: str, held: Iterable[str] = ()) -> web.Response:
    """Ollama's 404 for a model it does not have (`model` as the request names it;
    `held`: the models it has), as its handler writes it on `path`
    (`not_found_message`)."""
    return handler_error(path, 404, not_found_message(path, model, held))


# The routes whose stream Ollama's OpenAI layer writes from the native one: what its
# writers make of streamResponse's `{"error"}` line after the answer began
# (`stream_error_line`).
_CHAT_COMPLETIONS = "/v1/chat/completions"
_COMPLETIONS = "/v1/completions"
_RESPONSES = "/v1/responses"
# A chunk the stream wrote (Go's json.Marshal writes no line break inside one).
_SSE_CHUNK = re.compile(rb"data: (\{[^\r\n]*\})\n")


def stream_error_line(
    content_type: str, message: str, path: str = "", written: bytes = b""
) -> bytes:
    """What Ollama writes when a stream fails after it started (status already 200):
    streamResponse's `{"error"}` line, as its OpenAI layer writes it again on its routes
    (`written`: the last bytes the stream wrote, framing included; empty when it wrote
    none). On `/v1/messages`, Anthropic's `error` event, the one its clients raise on
    (they skip an event they do not know, as a `data:` line with no event name is); on
    another stream of events, OpenAI's error object."""
    if content_type.startswith("text/event-stream"):
        if path in (_CHAT_COMPLETIONS, _COMPLETIONS):
            return b"data: " + go_dumps(_chunk_of_nothing(path, written)) + b"\n\n"
        if path == _RESPONSES:
            # ResponsesStreamConverter.Process makes no event of a response of nothing
            # once the stream began: the stream stops.
            return b""
        if path == ANTHROPIC_PATH:
            error = {"type": "error", "error": {"type": "api_error", "message": message}}
            return b"event: error\ndata: " + go_dumps(error) + b"\n\n"
        payload = go_dumps(
            {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
        )
        return b"data: " + payload + b"\n\n"
    return go_dumps({"error": message}) + b"\n"


def _chunk_of_nothing(path: str, written: bytes) -> dict[str, Any]:
    """The chunk ChatWriter or CompleteWriter (middleware/openai.go) writes of
    streamResponse's `{"error"}` line, which it reads as a response of nothing (no
    model, not done), with the stream's id: no finish reason, no `[DONE]` after it. A
    chat chunk keeps the stream's `created` and carries the role only as its first; a
    completion chunk is stamped now and carries a zero usage where the stream's do (the
    request asked for usage)."""
    last: dict[str, Any] = {}
    for found in reversed(_SSE_CHUNK.findall(written)):
        try:
            doc = orjson.loads(found)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("id"), str):
            last = doc
            break
    now = int(time.time())
    if path == _COMPLETIONS:
        chunk: dict[str, Any] = {
            "id": last.get("id") or f"cmpl-{random.randrange(999)}",
            "object": "text_completion",
            "created": now,
            "choices": [{"text": "", "index": 0, "finish_reason": None}],
            "model": "",
            "system_fingerprint": "fp_ollama",
        }
        if "usage" in last:
            chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return chunk
    delta = {"content": ""} if written else {"role": "assistant", "content": ""}
    created = last.get("created")
    return {
        "id": last.get("id") or f"chatcmpl-{random.randrange(999)}",
        "object": "chat.completion.chunk",
        "created": created if isinstance(created, int) else now,
        "model": "",
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


GO_PLAIN = "text/plain"  # gin's mimePlain for its 404 and 405 bodies


def gin_not_found() -> web.Response:
    return web.Response(status=404, body=b"404 page not found", headers={"Content-Type": GO_PLAIN})


def gin_refusal(path: str) -> web.Response:
    """Ollama's answer to a method its router does not serve on `path`: gin's 405 with
    `Allow` naming the methods it does serve there (gin 1.10), else gin's 404."""
    allowed = gin_allowed(path)
    if not allowed:
        return gin_not_found()
    return web.Response(
        status=405,
        body=b"405 method not allowed",
        headers={"Content-Type": GO_PLAIN, "Allow": ", ".join(allowed)},
    )


def unserved_method(method: str, target: bytes) -> web.Response | None:
    """Ollama's answer to a `method` it serves on no route (one aiohttp's parser
    refuses, as `FOO` or `get`) for `target` as sent: Go's server and mux answer first
    (a `*` target, a path that is not clean), then gin's 405 or 404 for the decoded
    path; None for a target Go reads as an authority (a CONNECT's `host:port`), or
    refuses to read."""
    if target == b"*":
        return go_mux.asterisk(method)
    if not go_mux.parses(target):
        return None  # Go's ParseRequestURI refuses it: its server's plain 400
    location = go_mux.location(method, target)  # `parses`: never Unparsable here
    if location is not None:
        return go_mux.redirect_response(method, go_mux.MUX_REDIRECT, location)
    path = go_mux.path_of(target)
    if path is None:
        return None
    decoded = URL(path.decode("utf-8", "surrogateescape"), encoded=True).path
    return gin_refusal(decoded)

"""Fault injection (`POST /api/emulator/fault`): a backend failing on every route that
runs a model, and on /api/show, in the shape Ollama fails there.

* `hang`: the request is read and never answered (no head).
* `garbage`: bytes that are no HTTP, then the close.
* `error500`: the model's runner dies before the first token: Ollama's 500 in the
  route's error shape (`{"error"}` from gin on its own routes, the OpenAI writers'
  error object on /v1, Anthropic's on /v1/messages), with the headers the OpenAI and
  Anthropic layers set on a stream before the handler runs.
* `stall` and `close_early`: the route's own handler answers, and its answer stops
  after its first write (a stream's first chunk), or, for an answer written whole (one
  JSON body of a known length, as gin's c.JSON and the OpenAI writers write it),
  halfway through its body: silent from then on (`stall`), or cut there (`close_early`),
  as a backend lost while writing it leaves the answer. The real handler writes it, so
  every route's answer has its own shape up to the fault.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.go_types import BodyError
from proxy.routes import ROUTES

from .anthropic_routes import anthropic_error
from .engine import ClientGone, wait_forever
from .native import AFTER_WRITE
from .openai_routes import writer_error
from .state import RUNNER_DIED, EmulatorState, state_of
from .wire import encoder_json, error, read_json, stream_heads, with_heads

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SHOW = "/api/show"
# The routes a fault hits: those that run a model, and /api/show, which reads the
# model's files (`proxy.routes.ROUTES`).
FAULT_PATHS = frozenset([r.path for r in ROUTES if r.inference and "POST" in r.methods] + [SHOW])
# What ShowHandler answers when reading the model's files fails (GetModelInfo's error,
# its default case: a 500).
SHOW_FAILED = "read /root/.ollama/models/blobs: input/output error"
_ANTHROPIC = "/v1/messages"
# The routes whose OpenAI and Anthropic layers set a stream's headers before the
# handler runs (`wire.stream_heads`).
_STREAM_HEADS = frozenset({"/v1/responses", _ANTHROPIC})
_GARBAGE = b"\x00\x16\x03 this is not HTTP \xff\xfe\r\n\r\n"


class Cut(Exception):
    """The fault cut the answer (`response`, already sent in part): the handler stops
    writing it."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("cut")
        self.response = response


def _streams(path: str, body: object) -> bool:
    """Whether the request asks for a stream: Ollama's own routes stream unless
    `stream` is false, its OpenAI and Anthropic routes only when it is true."""
    stream = body.get("stream") if isinstance(body, dict) else None
    return stream is True if path.startswith("/v1/") else stream is not False


def runner_died(request: web.Request, body: object) -> web.Response:
    """Ollama's 500 for a runner that died before the answer began, in the route's
    shape."""
    path = request.path
    if not path.startswith("/v1/"):
        return error(500, SHOW_FAILED if path == SHOW else RUNNER_DIED)
    heads = stream_heads(request, _streams(path, body)) if path in _STREAM_HEADS else {}
    if path == _ANTHROPIC:
        state = state_of(request)
        refused = encoder_json(500, anthropic_error(state, 500, RUNNER_DIED, path))
        return with_heads(refused, heads)
    return with_heads(writer_error(500, RUNNER_DIED), heads)


async def _before_the_answer(request: web.Request, state: EmulatorState) -> web.StreamResponse:
    """The faults that strike before the handler: hang, garbage, error500."""
    try:
        body = await read_json(request)
    except (EOFError, BodyError):  # a body the fault does not need to understand
        body = None
    mode = state.fault
    if mode == "error500":
        return runner_died(request, body)
    if mode == "garbage":
        transport = request.transport
        if transport is not None:
            transport.write(_GARBAGE)
            transport.close()
        return web.Response(status=500)  # never reaches the client
    try:
        await wait_forever(request)  # hang
    except (ClientGone, ConnectionError):
        state.note_cancel()
    return web.Response(status=499)


async def _stop(request: web.Request, response: web.StreamResponse, mode: str) -> None:
    """Where an answer stops: cut (close_early) or silent until the client leaves."""
    if mode == "close_early":
        if request.transport is not None:
            request.transport.abort()
        raise Cut(response)
    await wait_forever(request)


async def _half_of(request: web.Request, whole: web.Response, mode: str) -> web.StreamResponse:
    """The head of an answer written whole and half its body, then the fault."""
    body = whole.body
    assert isinstance(body, bytes)
    resp = web.StreamResponse(status=whole.status, headers=whole.headers)
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    await _stop(request, resp, mode)
    return resp


async def faulty(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`handler`'s answer to `request` under the emulator's fault."""
    state = state_of(request)
    mode = state.fault
    if mode not in ("stall", "close_early"):
        return await _before_the_answer(request, state)

    async def after_write(response: web.StreamResponse) -> None:
        del request[AFTER_WRITE]  # once: the stop itself writes nothing more
        await _stop(request, response, mode)

    request[AFTER_WRITE] = after_write
    try:
        answer = await handler(request)
        if AFTER_WRITE in request and isinstance(answer, web.Response):
            if isinstance(answer.body, bytes) and answer.body:
                return await _half_of(request, answer, mode)
        return answer
    except Cut as cut:
        return cut.response
    except (ClientGone, ConnectionError):
        state.note_cancel()
        return web.Response(status=499)

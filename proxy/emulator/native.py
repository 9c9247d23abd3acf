"""Ollama's native inference routes: /api/generate, /api/chat, /api/embed(dings).

Streams are NDJSON written one object per chunk (Ollama flushes after every token);
the response head goes out with the first chunk, after the model has loaded, exactly
when Gin's `c.Stream` first writes. An error the runner raises before the first chunk
is that first chunk (`LazyStream.error`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
from aiohttp import web

from proxy.aiohttp_internals import defer_headers
from proxy.backends import not_found_message
from proxy.go_requests import (
    CHAT_FIELDS,
    EMBED_FIELDS,
    EMBEDDINGS_FIELDS,
    GENERATE_FIELDS,
    embed_input_refusal,
)
from proxy.protocol import JSON, NDJSON, go_time

from .engine import ClientGone, Generation, Piece, RunnerDied, client_gone, pause
from .inference import (
    Prepared,
    Refusal,
    check_options,
    format_as_held,
    keep_alive_of,
    model_ref,
    piece_logprobs,
    plan_empty,
    prepare_chat,
    prepare_generate,
    read_body,
)
from .state import RUNNER_DIED, state_of
from .textgen import context_tokens, count_tokens, embedding, embedding_f32, vector_json
from .wire import JSON_BARE, dumps, error, gin_json

T = TypeVar("T")

# A hook `LazyStream` awaits after each write, with the response it writes: a fault
# (faults.py) stops the answer there.
AfterWrite = Callable[[web.StreamResponse], Awaitable[None]]
AFTER_WRITE: web.RequestKey[AfterWrite] = web.RequestKey("emulator_after_write")


class LazyStream:
    """A streamed response (chunked, or to an HTTP/1.0 client delimited by the close)
    whose head is only sent with the first chunk."""

    def __init__(
        self, request: web.Request, content_type: str, *, headers: dict[str, str] | None = None
    ) -> None:
        self.request = request
        self.status = 200
        self.content_type = content_type
        self.headers = headers or {}
        self.response: web.StreamResponse | None = None

    async def send(self, data: bytes) -> None:
        if self.response is None:
            resp = web.StreamResponse(
                status=self.status, headers={"Content-Type": self.content_type, **self.headers}
            )
            if self.request.version >= (1, 1):
                resp.enable_chunked_encoding()
            else:
                # An HTTP/1.0 client cannot read chunks: as Go's net/http, the body
                # goes out as written and ends when the connection closes (aiohttp
                # would frame it so too, yet keep an HTTP/1.0 keep-alive connection
                # open after it).
                resp.force_close()
            # Go's net/http writes the head together with the first flushed chunk, in
            # one segment; aiohttp would send the head on its own. Deferred, the head
            # goes out with the first write.
            defer_headers(resp)
            await resp.prepare(self.request)
            self.response = resp
        await self.response.write(data)
        fault = self.request.get(AFTER_WRITE)
        if fault is not None:
            await fault(self.response)

    async def error(self, status: int, message: str) -> web.StreamResponse:
        """The stream's end on an error, as Ollama's streamResponse writes it. Before
        the first chunk, gin's c.JSON inside `c.Stream`: `status`, Content-Type
        `application/json` (set before c.JSON, which then keeps it), the body with no
        newline; flushed while the handler runs, so Go's net/http sends it chunked, with
        no Content-Length (to an HTTP/1.0 client, ended by the close). After it, an
        `{"error"}` line (json.Encoder) in the stream's 200."""
        if self.response is None:
            self.status, self.content_type = status, JSON_BARE
            await self.send(dumps({"error": message}))
        else:
            await self.send(dumps({"error": message}) + b"\n")
        return await self.finish()

    async def refuse(self, answer: web.Response) -> web.StreamResponse:
        """An error a writer of Ollama's OpenAI or Anthropic layer makes of the error
        line streamResponse writes before the stream's first chunk (writeError): the
        `answer`'s status, headers and body, flushed by c.Stream while the handler
        runs, so chunked, with no Content-Length."""
        assert self.response is None and isinstance(answer.body, bytes)
        self.status = answer.status
        self.content_type = answer.headers["Content-Type"]
        skipped = ("Content-Type", "Content-Length")
        self.headers = {k: v for k, v in answer.headers.items() if k not in skipped}
        await self.send(answer.body)
        return await self.finish()

    async def finish(self) -> web.StreamResponse:
        if self.response is None:
            await self.send(b"")
        assert self.response is not None
        try:
            await self.response.write_eof()
        except ConnectionError:
            pass
        return self.response


_FORMAT = ("format",)


async def handle_generate(request: web.Request) -> web.StreamResponse:
    started = time.monotonic()
    state = state_of(request)
    try:
        body = await read_body(request, "GenerateRequest", GENERATE_FIELDS)
        held = await format_as_held(request, body.get("format"), _FORMAT)
        job = prepare_generate(state, body, held)
    except Refusal as exc:
        return error(exc.status, exc.message)
    head = {"model": job.model, "created_at": go_time(state.now_ns())}
    gen = Generation(state, request, job.spec, job.plan, job.keep_alive, started)
    if job.special == "unload":
        state.touch(job.spec, 0)
        return gin_json(200, {**head, "response": "", "done": True, "done_reason": "unload"})
    try:
        await gen.load()
    except ClientGone:
        state.note_cancel()
        return web.Response(status=499)
    if job.special == "load":
        return gin_json(200, {**head, "response": "", "done": True, "done_reason": "load"})
    out = LazyStream(request, NDJSON)
    if job.late_error:
        if job.crashes:
            state.runner_crashed(job.spec)
        if job.stream:
            return await out.error(job.late_error.status, job.late_error.message)
        return error(job.late_error.status, job.late_error.message)

    # A whole answer's text and logprobs; a stream keeps none of what it sent.
    thinking: list[str] = []
    content: list[str] = []
    logprobs: list[dict[str, Any]] = []
    sent = 0  # the pieces so far: the next token's position

    def frame(response: str, thought: str, done: bool) -> dict[str, Any]:
        # api.GenerateResponse field order: model, created_at, response, thinking, done...
        f: dict[str, Any] = {
            "model": job.model,
            "created_at": go_time(state.now_ns()),
            "response": response,
        }
        if thought:
            f["thinking"] = thought
        f["done"] = done
        return f

    async def on_piece(piece: Piece) -> None:
        nonlocal sent
        piece.logprobs = piece_logprobs(job, sent, piece)
        sent += 1
        if not job.stream:
            thinking.append(piece.thinking)
            content.append(piece.content)
            logprobs.extend(piece.logprobs)
            return
        f = frame(piece.content, piece.thinking, False)
        if piece.logprobs:
            f["logprobs"] = piece.logprobs  # api.GenerateResponse's last field
        await out.send(dumps(f) + b"\n")

    final: dict[str, Any] = {}

    async def on_done(m: dict[str, int]) -> None:
        if job.stream:
            f = frame("", "", True)
        else:
            f = frame("".join(content), "".join(thinking), True)
        f["done_reason"] = job.plan.done_reason
        if not job.raw:
            f["context"] = await made_in_turns(
                context_tokens(job.key, job.plan.prompt_tokens + job.plan.eval_count)
            )
        f.update(m)
        if logprobs and not job.stream:
            f["logprobs"] = logprobs  # after the metrics, as api.GenerateResponse has it
        final.update(f)
        if job.stream:
            await out.send(dumps(f) + b"\n")

    try:
        if not await gen.run(on_piece, on_done):
            return out.response or web.Response(status=499)
    except RunnerDied:
        return await runner_died(out, job.stream)
    if job.stream:
        return await out.finish()
    return gin_json(200, final)


# Context tokens made per turn of the event loop: a long answer's context (one token
# per prompt and answer token) is made between other streams' chunks, not in one go.
_TURN = 4096


async def made_in_turns(values: Iterator[T]) -> list[T]:
    """The values of `values`, given the loop back every `_TURN` of them."""
    made: list[T] = []
    for value in values:
        made.append(value)
        if len(made) % _TURN == 0:
            await asyncio.sleep(0)
    return made


async def runner_died(out: LazyStream, stream: bool) -> web.StreamResponse:
    """The runner died under an answer: Ollama's 500 for one asked for whole (c.JSON);
    a stream ends as streamResponse ends it (`LazyStream.error`)."""
    if not stream:
        return error(500, RUNNER_DIED)
    return await out.error(500, RUNNER_DIED)


async def handle_chat(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    try:
        body = await read_body(request, "ChatRequest", CHAT_FIELDS)
        held = await format_as_held(request, body.get("format"), _FORMAT)
        job = prepare_chat(state, body, format_held=held)
    except Refusal as exc:
        return error(exc.status, exc.message)
    return await run_chat(request, job, native_chat_writer(request, job.stream))


class ChatSink:
    """Turns engine pieces into a wire format; subclasses per API."""

    # Whether `done` reads the answer's text from its message (a whole answer's does;
    # a stream's was sent piece by piece, and is not kept).
    keeps_text = True

    async def died(self) -> web.StreamResponse:
        """The runner died under the answer: Ollama's 500 where nothing was written yet;
        else the stream (a sink's `out`) ends there, with no final chunk (Ollama's
        Responses and Anthropic writers read its error line as a response of nothing,
        which makes no event; the chat completion ones write a chunk of it,
        `OpenAIChatSink.died`)."""
        out = getattr(self, "out", None)
        if not isinstance(out, LazyStream) or out.response is None:
            return await self.error(500, RUNNER_DIED)
        return await out.finish()

    async def error(self, status: int, message: str) -> web.StreamResponse:
        raise NotImplementedError

    async def special(self, model: str, created_ns: int, reason: str) -> web.StreamResponse:
        raise NotImplementedError

    async def piece(self, model: str, created_ns: int, piece: Piece) -> None:
        raise NotImplementedError

    async def done(
        self, model: str, created_ns: int, reason: str, message: dict[str, Any], m: dict[str, int]
    ) -> web.StreamResponse:
        raise NotImplementedError

    def gone(self) -> web.StreamResponse:
        return web.Response(status=499)


async def run_chat(request: web.Request, job: Prepared, sink: ChatSink) -> web.StreamResponse:
    """Drive a prepared chat job through a sink (native, OpenAI, Responses, Anthropic)."""
    started = time.monotonic()
    state = state_of(request)
    gen = Generation(state, request, job.spec, job.plan, job.keep_alive, started)
    if job.special == "unload":
        state.touch(job.spec, 0)
        return await sink.special(job.model, state.now_ns(), "unload")
    try:
        await gen.load()
    except ClientGone:
        state.note_cancel()
        return sink.gone()
    if job.special == "load":
        return await sink.special(job.model, state.now_ns(), "load")
    if job.late_error:
        if job.crashes:
            state.runner_crashed(job.spec)
        return await sink.error(job.late_error.status, job.late_error.message)
    # The answer's text, for a sink that writes it whole (`ChatSink.keeps_text`).
    thinking: list[str] = []
    content: list[str] = []
    calls: list[dict[str, Any]] = []
    result: list[web.StreamResponse] = []
    sent = 0  # the pieces so far: the next token's position

    async def on_piece(piece: Piece) -> None:
        nonlocal sent
        piece.logprobs = piece_logprobs(job, sent, piece)
        sent += 1
        if sink.keeps_text:
            thinking.append(piece.thinking)
            content.append(piece.content)
        calls.extend(piece.tool_calls)
        await sink.piece(job.model, state.now_ns(), piece)

    async def on_done(m: dict[str, int]) -> None:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
        if "".join(thinking):
            message["thinking"] = "".join(thinking)
        if calls:
            message["tool_calls"] = calls
        result.append(await sink.done(job.model, state.now_ns(), job.plan.done_reason, message, m))

    try:
        if not await gen.run(on_piece, on_done):
            return sink.gone()
    except RunnerDied:
        return await sink.died()
    return result[0]


class native_chat_writer(ChatSink):
    """/api/chat's own NDJSON (or single JSON object) format."""

    def __init__(self, request: web.Request, stream: bool) -> None:
        self.out = LazyStream(request, NDJSON)
        self.stream = stream
        self.keeps_text = not stream
        self.logprobs: list[dict[str, Any]] = []

    async def error(self, status: int, message: str) -> web.StreamResponse:
        if self.stream:
            return await self.out.error(status, message)
        return error(status, message)

    async def died(self) -> web.StreamResponse:
        return await runner_died(self.out, self.stream)

    async def special(self, model: str, created_ns: int, reason: str) -> web.StreamResponse:
        return gin_json(
            200,
            {
                "model": model,
                "created_at": go_time(created_ns),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": reason,
            },
        )

    async def piece(self, model: str, created_ns: int, piece: Piece) -> None:
        if not self.stream:
            self.logprobs.extend(piece.logprobs)
            return
        msg: dict[str, Any] = {"role": "assistant", "content": piece.content}
        if piece.thinking:
            msg["thinking"] = piece.thinking
        if piece.tool_calls:
            msg["tool_calls"] = piece.tool_calls
        f = {"model": model, "created_at": go_time(created_ns), "message": msg, "done": False}
        if piece.logprobs:
            f["logprobs"] = piece.logprobs
        await self.out.send(dumps(f) + b"\n")

    async def done(
        self, model: str, created_ns: int, reason: str, message: dict[str, Any], m: dict[str, int]
    ) -> web.StreamResponse:
        if self.stream:
            message = {"role": "assistant", "content": ""}
        f: dict[str, Any] = {
            "model": model,
            "created_at": go_time(created_ns),
            "message": message,
            "done": True,
            "done_reason": reason,
        }
        if self.logprobs:
            f["logprobs"] = self.logprobs  # api.ChatResponse: before the metrics
        f.update(m)
        if not self.stream:
            return gin_json(200, f)
        await self.out.send(dumps(f) + b"\n")
        return await self.out.finish()


# Embeddings -----------------------------------------------------------------------------

TOO_LONG = "the input length exceeds the context length"


# The threads an embedding request's vectors are made in: a request of many inputs
# takes seconds of CPU, which on the event loop would hold every other request (health
# checks among them) as a runner process never holds Ollama's server. The numpy and
# hashing calls release the GIL or last microseconds, so the loop keeps its turn.
WORKERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emulator-embed")
# Inputs made per call to a worker; between calls a request whose client left stops.
_SLICE = 256
# Made inline below these: a worker's hop costs more than a few vectors.
_INLINE_INPUTS = 8
_INLINE_CHARS = 64 * 1024


def _vectors(spec: Any, texts: list[str], dims: int | None, encode: Callable[[Any], T]) -> list[T]:
    return [encode(embedding_f32(spec, text, dims)) for text in texts]


async def embed_vectors(
    request: web.Request, body: dict[str, Any], encode: Callable[[Any], T]
) -> dict[str, Any]:
    """EmbedHandler's logic; returns api.EmbedResponse, each of its vectors (a float32
    array, `textgen.embedding_f32`) as `encode` gives it, or raises Refusal."""
    started = time.monotonic()
    state = state_of(request)
    model = str(body.get("model") or "")
    base = model_ref(model, "/api/embed", empty_status=404, empty_msg=f"model '{model}' not found")
    refused = embed_input_refusal(body)
    if refused is not None:
        raise Refusal(400, refused)
    raw_input = body.get("input")
    inputs: list[str] = []
    if isinstance(raw_input, str):
        inputs = [raw_input] if raw_input else []
    elif isinstance(raw_input, list):
        inputs = raw_input
    spec = state.find(base)
    if spec is None:
        raise Refusal(404, not_found_message("/api/embed", model, state.store))
    check_options(body.get("options"))
    gen = Generation(state, request, spec, plan_empty(), keep_alive_of(body), started)
    try:
        load_ns = await gen.load()
    except ClientGone:
        state.note_cancel()
        raise
    if not inputs:
        return {"model": model, "embeddings": []}
    tokens = [count_tokens(text) or 1 for text in inputs]
    if body.get("truncate") is False and max(tokens) > spec.context_length:
        raise Refusal(400, TOO_LONG)
    dims = body.get("dimensions") or None
    vectors: list[T] = []
    if len(inputs) <= _INLINE_INPUTS and sum(map(len, inputs)) <= _INLINE_CHARS:
        vectors = _vectors(spec, inputs, dims, encode)
    else:
        loop = asyncio.get_running_loop()
        for at in range(0, len(inputs), _SLICE):
            if client_gone(request):
                state.note_cancel()
                raise ClientGone
            part = inputs[at : at + _SLICE]
            vectors += await loop.run_in_executor(WORKERS, _vectors, spec, part, dims, encode)
    total = sum(min(t, spec.context_length) for t in tokens)
    if state.settings.frozen_clock:
        total_ns = load_ns + int(state.settings.prompt_delay(total) * 1e9) + 250_000
    else:
        await pause(request, state.settings.prompt_delay(total))
        total_ns = int((time.monotonic() - started) * 1e9)
    return {
        "model": model,
        "embeddings": vectors,
        "total_duration": total_ns,
        "load_duration": load_ns,
        "prompt_eval_count": total,
    }


# An answer longer than this is written a batch of vectors at a time, never joined.
_WHOLE_BYTES = 1 << 20
_BATCH = 256


async def embed_answer(request: web.Request, result: dict[str, Any]) -> web.StreamResponse:
    """`c.JSON(200, result)`, its embeddings each a vector's JSON (`vector_json`): the
    bytes gin_json would write, with the vectors written as they are, not copied into
    one body (an answer to many inputs is hundreds of megabytes)."""
    vectors: list[bytes] = result["embeddings"]
    size = sum(map(len, vectors)) + max(len(vectors) - 1, 0)
    if size <= _WHOLE_BYTES:
        return gin_json(200, {**result, "embeddings": [orjson.Fragment(v) for v in vectors]})
    # The answer around the vectors, as `dumps` writes it: `"embeddings":[]` cannot
    # occur in the model's name before it, whose quotes are escaped.
    head, empty, tail = dumps({**result, "embeddings": []}).partition(b'"embeddings":[]')
    assert empty
    head += b'"embeddings":['
    tail = b"]" + tail
    response = web.StreamResponse(status=200, headers={"Content-Type": JSON})
    response.content_length = len(head) + size + len(tail)
    await response.prepare(request)
    await response.write(head)
    for at in range(0, len(vectors), _BATCH):
        part = vectors[at : at + _BATCH]
        await response.write(b",".join([b"", *part] if at else part))
        # A vector written is let go; and a client that reads as fast as this writes
        # never makes `write` wait, so the loop is given its turn here.
        vectors[at : at + _BATCH] = [b""] * len(part)
        del part
        await asyncio.sleep(0)
    await response.write(tail)
    await response.write_eof()
    return response


async def handle_embed(request: web.Request) -> web.StreamResponse:
    try:
        body = await read_body(request, "EmbedRequest", EMBED_FIELDS)
        return await embed_answer(request, await embed_vectors(request, body, vector_json))
    except Refusal as exc:
        return error(exc.status, exc.message)
    except ClientGone:
        return web.Response(status=499)


async def handle_embeddings(request: web.Request) -> web.StreamResponse:
    """The legacy endpoint: one prompt, float64 values, different not-found text."""
    state = state_of(request)
    try:
        body = await read_body(request, "EmbeddingRequest", EMBEDDINGS_FIELDS)
        model = str(body.get("model") or "")
        base = model_ref(model, "/api/embeddings", empty_status=400, empty_msg="model is required")
        spec = state.find(base)
        if spec is None:
            raise Refusal(404, not_found_message(request.path, model, state.store))
        check_options(body.get("options"))
        gen = Generation(state, request, spec, plan_empty(), keep_alive_of(body), time.monotonic())
        await gen.load()
    except Refusal as exc:
        return error(exc.status, exc.message)
    except ClientGone:
        state.note_cancel()
        return web.Response(status=499)
    prompt = str(body.get("prompt") or "")
    if not prompt:
        return gin_json(200, {"embedding": []})
    return gin_json(200, {"embedding": embedding(spec, prompt, widen=True)})

"""OpenAI-compatible routes, shaped like Ollama's middleware/openai.go + openai/openai.go.

Request-parsing errors come from the middleware (`AbortWithStatusJSON`: compact JSON,
`application/json; charset=utf-8`); errors from the wrapped handler go through the
writer's `writeError` (`json.NewEncoder`: trailing newline, `application/json`). Streams
are SSE, one event per Ollama frame, the last frame's events flushed together.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import orjson
from aiohttp import web

from proxy import multipart_form, openai_chat
from proxy.backends import CLOUD, not_found_message
from proxy.go_requests import check_fields
from proxy.go_types import BodyError
from proxy.protocol import SSE

from .engine import ClientGone, Piece
from .inference import (
    Prepared,
    Refusal,
    cloud_out_of_reach,
    format_as_held,
    parsed_ref,
    prepare_chat,
    prepare_generate,
)
from .native import ChatSink, LazyStream, embed_vectors, run_chat
from .state import EmulatorState, request_digest, state_of
from .textgen import vector_json
from .wire import (
    as_go_decodes,
    checked_off_loop,
    dumps,
    encoder_json,
    error,
    gin_json,
    read_json,
    unix_of,
)


def oa_error(status: int, message: str) -> dict[str, Any]:
    """openai.NewError: the type follows the status."""
    etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": etype, "param": None, "code": None}}


def middleware_error(status: int, message: str) -> web.Response:
    return gin_json(status, oa_error(status, message))


def writer_error(status: int, message: str) -> web.Response:
    return encoder_json(status, oa_error(status, message))


async def read_oa_body(request: web.Request, struct: tuple[str, dict[str, str]]) -> dict[str, Any]:
    """The middleware's ShouldBindJSON into `struct` (as `check_fields` takes it; its
    fields are checked as the layer converts the body, but for a key given twice,
    `as_go_decodes`): an empty body is plain `EOF` here."""
    name, fields = struct
    try:
        doc = await as_go_decodes(request, await read_json(request), name, fields)
        return await checked_off_loop(request, doc, lambda read: check_fields(read, name, {}))
    except EOFError:
        raise Refusal(400, "EOF") from None
    except BodyError as exc:
        raise Refusal(400, str(exc)) from None


def _ids(state: EmulatorState, prefix: str, request_key: str) -> tuple[str, int]:
    """("chatcmpl-123", created): random like Ollama, or derived under frozen_clock."""
    if state.settings.frozen_clock:
        n = int(request_digest(prefix, request_key)[:8], 16) % 999
    else:
        n = random.randrange(999)
    return f"{prefix}-{n}", state.now_ns() // 1_000_000_000


def decode_image_url(url: str) -> str:
    """`openai_chat.decode_image_url`, its refusal a 400."""
    try:
        return openai_chat.decode_image_url(url)
    except BodyError as exc:
        raise Refusal(400, str(exc)) from None


class OpenAIChatSink(ChatSink):
    """ChatWriter: chat.completion / chat.completion.chunk."""

    def __init__(
        self, request: web.Request, body: dict[str, Any], key: str, *, completions: bool = False
    ) -> None:
        self.state = state_of(request)
        self.stream = bool(body.get("stream"))
        self.keeps_text = not self.stream
        self.usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.completions = completions
        self.id, self.created = _ids(self.state, "cmpl" if completions else "chatcmpl", key)
        self.out = LazyStream(request, SSE)
        self.tool_sent = False
        # ChatWriter's firstChunkSent: the role goes on a stream's first chunk alone.
        self.first_sent = False
        self.logprobs: list[dict[str, Any]] = []  # a whole answer's, for ToChatCompletion

    async def error(self, status: int, message: str) -> web.StreamResponse:
        if self.stream:
            return await self.out.refuse(writer_error(status, message))
        return writer_error(status, message)

    async def special(self, model: str, created_ns: int, reason: str) -> web.StreamResponse:
        return await self.done(model, created_ns, reason, {"role": "assistant", "content": ""}, {})

    async def died(self) -> web.StreamResponse:
        """ChatWriter and CompleteWriter read the `{"error"}` line streamResponse writes
        under a stream already written as a response of nothing (no model, not done),
        and write its chunk, an empty delta or text, before the stream stops."""
        if self.stream and self.out.response is not None:
            empty = "" if self.completions else self._delta("", "", [])
            await self.out.send(b"data: " + dumps(self._chunk("", empty, None)) + b"\n\n")
            self.first_sent = True
        return await super().died()

    def _chunk(
        self,
        model: str,
        delta_or_text: Any,
        reason: str | None,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        if self.completions:
            c: dict[str, Any] = {
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "choices": [{"text": delta_or_text, "index": 0, "finish_reason": reason}],
                "model": model,
                "system_fingerprint": "fp_ollama",
            }
            if self.usage:
                c["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            return c
        choice: dict[str, Any] = {"index": 0, "delta": delta_or_text, "finish_reason": reason}
        if logprobs:
            choice["logprobs"] = {"content": logprobs}
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [choice],
        }

    def _delta(self, content: str, thinking: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
        """toChunk's delta: the role on the stream's first chunk alone."""
        d: dict[str, Any] = {} if self.first_sent else {"role": "assistant"}
        d["content"] = content
        if thinking:
            d["reasoning"] = thinking
        if calls:
            d["tool_calls"] = to_openai_calls(calls)
        return d

    def _stream_chunks(self, model: str, piece: Piece) -> bytes:
        """ToStreamChunks: a thinking step beside content or tool calls is two chunks,
        the reasoning (with the logprobs) and then the rest."""
        content, thinking, calls = piece.content, piece.thinking, piece.tool_calls
        if thinking and (content or calls):
            reasoning = self._delta("", thinking, [])
            del reasoning["content"]
            chunks = [self._chunk(model, reasoning, None, piece.logprobs)]
            self.first_sent = True
            chunks.append(self._chunk(model, self._delta(content, "", calls), None))
        else:
            delta = self._delta(content, thinking, calls)
            chunks = [self._chunk(model, delta, None, piece.logprobs)]
        self.first_sent = True
        self.tool_sent = self.tool_sent or bool(calls)
        return b"".join(b"data: " + dumps(c) + b"\n\n" for c in chunks)

    async def piece(self, model: str, created_ns: int, piece: Piece) -> None:
        if not self.stream:
            self.logprobs.extend(piece.logprobs)
            return
        if self.completions:
            # ToCompleteChunk carries no logprobs.
            chunk = b"data: " + dumps(self._chunk(model, piece.content, None)) + b"\n\n"
        else:
            chunk = self._stream_chunks(model, piece)
        await self.out.send(chunk)

    async def done(
        self, model: str, created_ns: int, reason: str, message: dict[str, Any], m: dict[str, int]
    ) -> web.StreamResponse:
        prompt, completion = m.get("prompt_eval_count", 0), m.get("eval_count", 0)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if not self.stream:
            return encoder_json(200, self._complete(model, created_ns, reason, message, usage))
        group = b""
        if self.completions:
            last = self._chunk(model, "", reason or None)
        else:
            # The metrics-only trailer makes no chunk of its own but as the stream's
            # first; FinishChunk then carries the reason, `tool_calls` only in place of
            # `stop` (a stream cut at its length stays `length`).
            # (A stream's tool calls went out as pieces of their own.)
            trailer = Piece(message.get("thinking", ""), message.get("content", ""))
            if not self.first_sent or trailer.content or trailer.thinking:
                group = self._stream_chunks(model, trailer)
            final_reason = reason or "stop"
            if final_reason == "stop" and self.tool_sent:
                final_reason = "tool_calls"
            last = self._chunk(model, {}, final_reason)
        group += b"data: " + dumps(last) + b"\n\n"
        if self.usage:
            group += b"data: " + dumps({**last, "choices": [], "usage": usage}) + b"\n\n"
        await self.out.send(group + b"data: [DONE]\n\n")
        return await self.out.finish()

    def _complete(
        self,
        model: str,
        created_ns: int,
        reason: str,
        message: dict[str, Any],
        usage: dict[str, int],
    ) -> dict[str, Any]:
        created = created_ns // 1_000_000_000
        if self.completions:
            return {
                "id": self.id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [
                    {"text": message["content"], "index": 0, "finish_reason": reason or None}
                ],
                "usage": usage,
            }
        calls = message.get("tool_calls") or []
        msg: dict[str, Any] = {"role": "assistant", "content": message["content"]}
        if message.get("thinking"):
            msg["reasoning"] = message["thinking"]
        if calls:
            msg["tool_calls"] = to_openai_calls(calls)
            # ToChatCompletion: `tool_calls` only in place of `stop`.
            reason = "tool_calls" if reason == "stop" else reason
        choice: dict[str, Any] = {"index": 0, "message": msg, "finish_reason": reason or None}
        if self.logprobs:
            choice["logprobs"] = {"content": self.logprobs}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [choice],
            "usage": usage,
        }


def to_openai_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """openai.ToToolCalls: arguments become a JSON string."""
    return [
        {
            "id": c.get("id", ""),
            "index": c["function"].get("index", 0),
            "type": "function",
            "function": {
                "name": c["function"]["name"],
                "arguments": dumps(c["function"]["arguments"]).decode(),
            },
        }
        for c in calls
    ]


# Where a chat completion's format is (ChatMiddleware takes the json_schema's schema).
_SCHEMA = ("response_format", "json_schema", "schema")


async def handle_chat_completions(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    try:
        body = await read_oa_body(request, openai_chat.CHAT_REQUEST)
        chat = await checked_off_loop(request, body, openai_chat.converted)
    except Refusal as exc:
        return middleware_error(exc.status, exc.message)
    except BodyError as exc:
        return middleware_error(400, str(exc))
    held = await format_as_held(request, chat.get("format"), _SCHEMA, encoded=True)
    try:
        job = prepare_chat(state, chat, format_held=held)
    except Refusal as exc:
        return writer_error(exc.status, exc.message)
    return await run_chat(request, job, OpenAIChatSink(request, body, job.key))


async def handle_completions(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    try:
        body = await read_oa_body(request, openai_chat.COMPLETION_REQUEST)
        gen = await checked_off_loop(request, body, openai_chat.completion_converted)
    except Refusal as exc:
        return middleware_error(exc.status, exc.message)
    except BodyError as exc:
        return middleware_error(400, str(exc))
    try:
        job: Prepared = prepare_generate(state, gen)
    except Refusal as exc:
        return writer_error(exc.status, exc.message)
    return await run_chat(request, job, OpenAIChatSink(request, body, job.key, completions=True))


def _float_vector(vec: Any) -> orjson.Fragment:
    """A vector's []float32 as openai.EmbeddingList marshals it (`vector_json`)."""
    return orjson.Fragment(vector_json(vec))


def _base64_vector(vec: Any) -> str:
    """encoding_format "base64": the vector's little-endian float32 bytes."""
    return base64.b64encode(vec.astype("<f4").tobytes()).decode()


async def handle_embeddings(request: web.Request) -> web.StreamResponse:
    try:
        body = await read_oa_body(request, openai_chat.EMBEDDING_REQUEST)
        embed = await checked_off_loop(request, body, openai_chat.embedding_converted)
    except Refusal as exc:
        return middleware_error(exc.status, exc.message)
    except BodyError as exc:
        return middleware_error(400, str(exc))
    as_base64 = embed.pop("encoding_format").lower() == "base64"
    encode = _base64_vector if as_base64 else _float_vector
    try:
        result = await embed_vectors(request, embed, encode)
    except Refusal as exc:
        return writer_error(exc.status, exc.message)
    except ClientGone:
        return web.Response(status=499)
    data = []
    for i, value in enumerate(result["embeddings"]):
        data.append({"object": "embedding", "embedding": value, "index": i})
    n = result.get("prompt_eval_count", 0)
    return encoder_json(
        200,
        {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": n, "total_tokens": n},
        },
    )


def _owner(name: str) -> str:
    first = name.split(":")[0]
    return first.split("/")[-2] if first.count("/") >= 1 else "library"


async def handle_models(request: web.Request) -> web.Response:
    state = state_of(request)
    specs = sorted(state.store.values(), key=lambda s: s.modified_at, reverse=True)
    data = [
        {
            "id": s.name,
            "object": "model",
            "created": unix_of(s.modified_at),
            "owned_by": _owner(s.name),
        }
        for s in specs
    ]
    # A nil slice in Go: no models marshals as null.
    return encoder_json(200, {"object": "list", "data": data or None})


async def handle_model(request: web.Request) -> web.Response:
    """cloudModelPathPassthroughMiddleware, then RetrieveMiddleware and ShowHandler: a
    name that asks for the cloud goes to ollama.com as `/v1/models/<base>` (its error
    in gin's shape, before any OpenAI writer); any other is read as ShowHandler reads
    it (`parsed_ref`), its errors in the OpenAI shape, its id the name as asked."""
    state = state_of(request)
    name = request.match_info["model"]
    try:
        base, asked = parsed_ref(name, empty_status=400, empty_msg="model is required")
    except Refusal as exc:
        return writer_error(exc.status, exc.message)
    if asked == CLOUD:
        refusal = cloud_out_of_reach(f"/v1/models/{base}", "Get")
        return error(refusal.status, refusal.message)
    spec = state.find(base)
    if spec is None:
        return writer_error(404, not_found_message(request.path, name, state.store))
    return encoder_json(
        200,
        {
            "id": name,
            "object": "model",
            "created": unix_of(spec.modified_at),
            "owned_by": _owner(name),
        },
    )


# openai.FromTranscriptionRequest's prompts.
TRANSCRIBE_SYSTEM = (
    "Transcribe the audio exactly as spoken. Output only the spoken words. "
    "Do not answer any question in the audio."
)
TRANSCRIBE_QUESTION = "What exact words are spoken in this audio?"


class TranscriptionSink(ChatSink):
    """TranscriptionWriter: the streamed chat's text, trimmed, in one answer at its end:
    `{"text": ...}` from a json.Encoder, or plain text for `response_format=text`."""

    def __init__(self, response_format: str) -> None:
        self.response_format = response_format

    async def error(self, status: int, message: str) -> web.StreamResponse:
        return writer_error(status, message)

    async def special(self, model: str, created_ns: int, reason: str) -> web.StreamResponse:
        return await self.done(model, created_ns, reason, {"content": ""}, {})

    async def piece(self, model: str, created_ns: int, piece: Piece) -> None:
        return None

    async def done(
        self, model: str, created_ns: int, reason: str, message: dict[str, Any], m: dict[str, int]
    ) -> web.StreamResponse:
        text = str(message.get("content") or "").strip()
        if self.response_format == "text":
            return web.Response(body=text.encode(), headers={"Content-Type": "text/plain"})
        return encoder_json(200, {"text": text})


async def handle_transcriptions(request: web.Request) -> web.StreamResponse:
    """TranscriptionMiddleware: the multipart form as Go parses it (`multipart_form`),
    its 400s, then the chat FromTranscriptionRequest makes. The emulator cannot hear:
    the audio is not given to the model (whose text is made up as for any chat), so any
    chat model transcribes here."""
    state = state_of(request)
    query = request.raw_path.partition("?")[2]
    try:
        form = multipart_form.read_form(
            request.headers.get("Content-Type"), query, await request.read()
        )
    except multipart_form.FormError as exc:
        return middleware_error(400, multipart_form.PARSE_FAILED + str(exc))
    model = form.value("model")
    if not model:
        return middleware_error(400, multipart_form.MODEL_REQUIRED)
    no_audio = multipart_form.file_refusal(form)
    if no_audio is not None:
        return middleware_error(400, no_audio)
    system = TRANSCRIBE_SYSTEM
    if language := form.value("language"):
        system += f" The audio is in {language}."
    if prompt := form.value("prompt"):
        system += f" Context: {prompt}"
    chat = {
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": TRANSCRIBE_QUESTION},
        ],
        "stream": True,
        "options": {"temperature": 0},
    }
    try:
        job = prepare_chat(state, chat)
    except Refusal as exc:
        return writer_error(exc.status, exc.message)
    return await run_chat(request, job, TranscriptionSink(form.value("response_format")))

"""What an official client (`ollama`, `openai`) makes of one call, as plain data, so
that the same call made directly to a backend and through the proxy can be compared:
the parsed result (or each chunk of a stream), the exception the client raises, and
the status and headers of each HTTP answer the call read. What two identical requests
to the same backend answer differently is normalised (`normalised`), nothing else."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import ollama
import openai

from proxy.protocol import HOP_BY_HOP, MODEL_HEADER
from tests.support import AUTO_NAMES, Proxy

# Headers a client may see differ for reasons that are not the answer's content:
# - the proxy's own (the request's id, auto's choice and reasons, the hint to a
#   buffering reverse proxy in front of it), which the promise of transparency excepts;
# - Date, the time each answer was written, which two answers never share;
# - framing and connection management (hop-by-hop by RFC 9110), which each HTTP hop
#   chooses for itself and which httpx undoes before a client sees the body.
_NOT_COMPARED = frozenset({"date", "x-request-id", "x-accel-buffering"} | HOP_BY_HOP)


def compared(name: str) -> bool:
    """Whether the answer header `name` (lower-cased) is compared: neither one of
    `_NOT_COMPARED` nor one of the proxy's own (`X-Autoroute-*`)."""
    return name not in _NOT_COMPARED and not name.startswith("x-autoroute-")


class Answers:
    """The status and headers of each HTTP answer a client read, in order, through the
    httpx `event_hooks` the client is built with (`hooks()` or `async_hooks()`)."""

    def __init__(self) -> None:
        self.heads: list[tuple[int, dict[str, str]]] = []
        self.models: list[str | None] = []

    def _saw(self, response: httpx.Response) -> None:
        fields = {k.lower(): v for k, v in response.headers.items() if compared(k.lower())}
        self.heads.append((response.status_code, fields))
        self.models.append(response.headers.get(MODEL_HEADER))

    def hooks(self) -> dict[str, list[Callable[[httpx.Response], None]]]:
        return {"response": [self._saw]}

    def async_hooks(self) -> dict[str, list[Callable[[httpx.Response], Awaitable[None]]]]:
        async def saw(response: httpx.Response) -> None:
            self._saw(response)

        return {"response": [saw]}

    def take(self) -> list[tuple[int, dict[str, str]]]:
        heads, self.heads = self.heads, []
        return heads


# Fields whose value Ollama takes from its clock, so that two identical requests to one
# backend never share it; each is kept as a mark of whether it is there.
_CLOCKED = frozenset(
    {
        # When the answer, or each chunk of it, was written: Ollama's `created_at`, the
        # OpenAI shapes' `created` (unix seconds), the Responses API's `created_at` and
        # `completed_at`.
        "created_at",
        "created",
        "completed_at",
        # Measured, not computed: the time loading, prompt evaluation and generation
        # took.
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
        # /api/ps: when a model unloads, its last request's time plus its keep_alive.
        "expires_at",
    }
)
# Ids Ollama draws at random for each answer: ChatHandler's tool call ids (toolCallId,
# `call_` and 8 characters) and, in the OpenAI shapes, openai.go's `chatcmpl-%d` and
# `cmpl-%d` of rand.Intn(999) and responses.go's resp_, msg_, rs_ and fc_ ids. What
# follows the prefix becomes `#`; any other value, model names in /v1/models' `id`
# among them, is compared as it is.
_RANDOM_ID = re.compile(
    r"((?:chatcmpl|cmpl)-|(?:resp|msg|rs|fc)_(?:resp_)?)[\d_]+|(call_)[a-z0-9]{8}"
)


def normalised(value: Any) -> Any:
    """`value` (plain data) with what comes from Ollama's clock or its random ids
    replaced by marks (`_CLOCKED`, `_RANDOM_ID`)."""
    if isinstance(value, dict):
        return {
            k: ("<clock>" if v is not None else None) if k in _CLOCKED else normalised(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [normalised(v) for v in value]
    if isinstance(value, str):
        found = _RANDOM_ID.fullmatch(value)
        return (found[1] or found[2]) + "#" if found else value
    return value


def plain(value: Any) -> Any:
    """A client's parsed object as plain data (pydantic models dumped), normalised."""
    return normalised(_dumped(value))


def _dumped(value: Any) -> Any:
    if isinstance(value, list):
        return [_dumped(v) for v in value]
    if hasattr(value, "model_dump"):
        # warnings=False: an explicit base64 encoding_format leaves a string where
        # the SDK types a list of floats, as the SDK means it to.
        return value.model_dump(mode="json", warnings=False)
    return value


def raised(exc: Exception) -> dict[str, Any]:
    """What a caller can read from the exception a client raised for an error answer."""
    if isinstance(exc, ollama.ResponseError):
        return {"raised": "ResponseError", "status": exc.status_code, "error": exc.error}
    if isinstance(exc, openai.APIStatusError):
        return {
            "raised": type(exc).__name__,
            "status": exc.status_code,
            "message": exc.message,
            "body": exc.body,
        }
    if isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIConnectionError):
        # an error event in a stream already answered
        return {"raised": type(exc).__name__, "message": exc.message, "body": exc.body}
    raise exc


ERRORS = (ollama.ResponseError, openai.APIError)


def outcome(answers: Answers, method: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """What a synchronous client call `method(**kwargs)` gives: its result, or the
    chunks of its stream, or the chunks read before the exception it raised, and the
    heads of the answers it read."""
    answers.take()
    chunks: list[Any] = []
    try:
        result = method(**kwargs)
        if not hasattr(result, "__next__"):
            return {"result": plain(result), "heads": answers.take()}
        for chunk in result:
            chunks.append(plain(chunk))
        return {"chunks": chunks, "heads": answers.take()}
    except ERRORS as exc:
        return {"chunks": chunks, **raised(exc), "heads": answers.take()}


async def async_outcome(
    answers: Answers, method: Callable[..., Awaitable[Any]], **kwargs: Any
) -> dict[str, Any]:
    """`outcome` for an asynchronous client call."""
    answers.take()
    chunks: list[Any] = []
    try:
        result = await method(**kwargs)
        if not hasattr(result, "__anext__"):
            return {"result": plain(result), "heads": answers.take()}
        async for chunk in result:
            chunks.append(plain(chunk))
        return {"chunks": chunks, "heads": answers.take()}
    except ERRORS as exc:
        return {"chunks": chunks, **raised(exc), "heads": answers.take()}


# A client's calls against one host: each (method, keyword arguments) as plain data.
Run = Callable[[str, "Answers", list[tuple[str, dict[str, Any]]]], list[Any]]


def hosts(proxy: Proxy) -> tuple[str, str]:
    """The backend's address and the proxy's, in the order the calls go."""
    return proxy.config.backends[0].url, proxy.url


def auto_as_chosen(
    run: Run, proxy: Proxy, method: str, kwargs: dict[str, Any], model: str
) -> tuple[Any, str]:
    """A call with `auto` (`model`) through the proxy, checked equal to the same call made
    directly with the model it chose (X-Autoroute-Model): that answer, and the model."""
    answers = Answers()
    backend, front = hosts(proxy)
    [proxied] = run(front, answers, [(method, {"model": model, **kwargs})])
    chosen = answers.models[-1]
    assert chosen is not None and chosen not in AUTO_NAMES
    [direct] = run(backend, answers, [(method, {"model": chosen, **kwargs})])
    assert proxied == direct
    return direct, chosen

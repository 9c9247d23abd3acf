"""Validation shared by /api/generate, /api/chat and their OpenAI/Anthropic wrappers.

Checks run in the order of Ollama's GenerateHandler / ChatHandler (server/routes.go), so
that a request with several problems gets the same first error. `prepare_*` returns a
`Prepared` job or raises `Refusal(status, message)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from proxy import go_json, go_raw_message, go_requests, go_types
from proxy.backends import CLOUD, INVALID_NAME, not_found_message, source, valid_name
from proxy.go_requests import check_fields
from proxy.go_types import BodyError
from proxy.keep_alive import parse as parse_keep_alive
from proxy.multipart_form import go_quote, go_trim_space
from proxy.protocol import go_escaped

from .catalog import ModelSpec, qualified
from .engine import Piece
from .skills import suite_answer
from .state import RUNNER_DIED, EmulatorState
from .textgen import (
    Plan,
    count_tokens,
    drawn_call_id,
    logprob_prefix,
    plan,
    token_logprob,
)
from .wire import as_go_decodes, checked_off_loop, json_bytes, read_json

NO_VISION = "this model is missing data required for image input"
# Where Ollama sends a request for a model of its cloud (server/cloud_proxy.go).
_CLOUD_URL = "https://ollama.com:443"


class Refusal(Exception):
    """An error answer: HTTP status plus Ollama's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Prepared:
    """A validated inference request, ready for the engine."""

    spec: ModelSpec
    model: str  # the name as the client wrote it (echoed in every chunk)
    stream: bool
    keep_alive: float | None
    key: str  # canonical input, for deterministic ids and context tokens
    plan: Plan
    special: str = ""  # "unload" (answer now) or "load" (answer after loading)
    late_error: Refusal | None = None  # raised by the runner, i.e. after loading
    crashes: bool = False  # the input kills the runner (`EmulatorSettings.crash_on`)
    raw: bool = False
    # `top_logprobs` when the request asked for `logprobs`, else None.
    logprobs: int | None = None
    # `textgen.logprob_prefix(key)`, made at the first token that carries logprobs.
    logprob_seed: Any = field(default=None, repr=False, compare=False)


async def read_body(request: web.Request, struct: str, fields: dict[str, str]) -> dict[str, Any]:
    """Gin's ShouldBindJSON plus the type checks json.Unmarshal performs."""
    try:
        doc = await as_go_decodes(request, await read_json(request), struct, fields)
        return await checked_off_loop(request, doc, lambda read: check_fields(read, struct, fields))
    except EOFError:
        raise Refusal(400, "missing request body") from None
    except BodyError as exc:
        raise Refusal(400, str(exc)) from None


def think_value(value: Any) -> bool | None:
    """api.ThinkValue (`go_requests.think_value`), its refusal a 400: a native body's
    `think` was checked as the body was read (`check_fields`), the one the OpenAI and
    Anthropic routes convert to is checked here."""
    try:
        return go_requests.think_value(value)
    except BodyError as exc:
        raise Refusal(400, str(exc)) from None


def check_options(options: dict[str, Any] | None) -> int | None:
    """Options.FromMap's type checks (`go_requests.options_refusal`, a 500 from
    scheduleRunner); returns num_predict when given."""
    refused = go_requests.options_refusal(options)
    if refused is not None:
        raise Refusal(500, refused)
    n = (options or {}).get("num_predict")
    return int(n) if n is not None else None


# The context a model runs with when the request sets no num_ctx (/api/ps reports it).
DEFAULT_NUM_CTX = 4096


def capped_num_predict(
    num_predict: int | None, options: dict[str, Any] | None, spec: ModelSpec
) -> int | None:
    """num_predict as the runner takes it: llm/server.go cuts one above 10x the
    context (num_ctx, at most the model's trained length) down to that, so no request
    generates without end (nor builds an answer without bound here)."""
    if num_predict is None or num_predict <= 0:
        return num_predict
    return min(num_predict, 10 * run_context(options, spec))


def run_context(options: dict[str, Any] | None, spec: ModelSpec) -> int:
    """The context the runner runs with: num_ctx, at least 4 (2048 for a vision model,
    as the scheduler raises it) and at most the model's trained length."""
    num_ctx = (options or {}).get("num_ctx")
    ctx = DEFAULT_NUM_CTX if num_ctx is None else max(int(num_ctx), 4)
    if spec.has("vision"):
        ctx = max(ctx, 2048)
    return int(min(ctx, spec.context_length))


def evaluated(prompt_tokens: int, options: dict[str, Any] | None, spec: ModelSpec) -> int:
    """The tokens of a prompt the runner evaluates: at most its context, as Ollama's
    runner cuts a longer prompt to fit it (or refuses it)."""
    return min(prompt_tokens, run_context(options, spec))


def keep_alive_of(body: dict[str, Any]) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise Refusal(400, str(exc)) from None


def _as_written(value: Any) -> orjson.Fragment:
    """A number beyond a double as the client wrote it: a json.RawMessage (`format`)
    keeps its bytes, and Go never reads the number."""
    if isinstance(value, go_types.BeyondADouble):
        return orjson.Fragment(value.text)
    raise TypeError


def format_taken(fmt: Any) -> bool:
    """Whether llm.Completion takes `format` (as read): none, "json" or an object."""
    return fmt is None or fmt == "" or fmt == "json" or isinstance(fmt, dict)


def check_format(fmt: Any, held: bytes | None = None) -> Refusal | None:
    """llm.Completion's format check (raised from the runner, hence 500), naming the
    format's bytes as Go's %q quotes them: `held` (`format_as_held`), else as written
    again from its reading."""
    if format_taken(fmt):
        return None
    if held is None:
        held = json_bytes(fmt, default=_as_written)
    return Refusal(
        500, f'invalid format: {go_quote(held)}; expected "json" or a valid JSON Schema object'
    )


async def format_as_held(
    request: web.Request, fmt: Any, path: tuple[str, ...], *, encoded: bool = False
) -> bytes | None:
    """The bytes of a format `check_format` refuses (`fmt`, as read), as Ollama's chat
    or generate handler holds them (a json.RawMessage): as the client wrote them at
    `path` in the body, or, where a middleware encodes the request again for it
    (`encoded`: the OpenAI routes), as json.Marshal writes them (compacted, with Go's
    escapes). None for a format it takes: no second reading of the body then."""
    if format_taken(fmt):
        return None
    raw = await request.read()
    held = await go_json.off_loop(len(raw), go_raw_message.value_bytes, raw, path)
    return go_escaped(go_raw_message.compact(held)) if encoded and held is not None else held


def _late_error(
    state: EmulatorState,
    spec: ModelSpec,
    body: dict[str, Any],
    format_held: bytes | None,
    has_images: bool,
    *texts: str,
) -> tuple[Refusal | None, bool]:
    """The 500 a request gets once its model is loaded, the first that applies: images
    for a model without vision, then a bad `format` (`format_held`: its bytes, where
    it is one), then a runner that dies on one of `texts`; and whether it dies
    (`EmulatorState.crashes_on`)."""
    late = Refusal(500, NO_VISION) if has_images and not spec.has("vision") else None
    late = late or check_format(body.get("format"), format_held)
    crashes = state.crashes_on(*texts)
    return late or (Refusal(500, RUNNER_DIED) if crashes else None), crashes


def _canonical(obj: Any) -> str:
    try:
        raw = orjson.dumps(obj, default=_as_written, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # An integer beyond 64 bits, which orjson does not write (Go reads it into a
        # float64, an `any`, and so does this key), or a value nested deeper than orjson
        # writes (Go reads 10,000 levels).
        raw = orjson.dumps(_keyable(obj), default=_as_written, option=orjson.OPT_SORT_KEYS)
    return raw.decode()


# How deep a request's values shape the emulator's answer: below, a value is one
# placeholder (the key seeds made-up text, and orjson writes 254 levels at most).
_KEY_DEPTH = 64


def _keyable(obj: Any, depth: int = 0) -> Any:
    """`obj` with each integer beyond 64 bits a float, as Go's decoder reads it, and
    each value below `_KEY_DEPTH` levels a placeholder."""
    if depth >= _KEY_DEPTH and isinstance(obj, dict | list):
        return "..."
    if isinstance(obj, dict):
        return {k: _keyable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_keyable(v, depth + 1) for v in obj]
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
        return float(obj)
    return obj


def cloud_out_of_reach(path: str, method: str = "Post") -> Refusal:
    """Ollama's answer to a request it sends to ollama.com (proxyCloudRequestWithPath),
    which the emulated machine cannot reach: Go's client error, as a 502."""
    return Refusal(502, f'{method} "{_CLOUD_URL}{path}": dial tcp: lookup ollama.com: no such host')


# modelref.ErrConflictingSourceSuffix: a name with both source suffixes.
CONFLICTING_SOURCE = "use either :local or :cloud, not both"


def parsed_ref(name: str, *, empty_status: int, empty_msg: str) -> tuple[str, str]:
    """parseAndValidateModelRef, its errors as writeModelRefParseError answers them: the
    name trimmed (strings.TrimSpace), its source suffix read (`source`) and the rest
    qualified, all before a handler sends a cloud one to ollama.com. (The rest, its
    source); a blank name gets the handler's own answer (GenerateHandler: 404 "model ''
    not found"; ChatHandler: 400 "model is required"), both suffixes and a rest
    model.ParseName cannot qualify Ollama's 400, a `Refusal`."""
    trimmed = go_trim_space(name)
    if not trimmed:
        raise Refusal(empty_status, empty_msg)
    base, asked = source(trimmed)
    if asked and source(base)[1]:
        raise Refusal(400, f"{CONFLICTING_SOURCE}: {go_quote(trimmed.encode())}")
    if not valid_name(base):
        raise Refusal(400, INVALID_NAME)
    return base, asked


def model_ref(name: str, path: str, *, empty_status: int, empty_msg: str) -> str:
    """`parsed_ref` as each inference handler answers it: the name without its source
    suffix; a cloud one is sent to ollama.com (`cloud_out_of_reach`)."""
    base, asked = parsed_ref(name, empty_status=empty_status, empty_msg=empty_msg)
    if asked == CLOUD:
        raise cloud_out_of_reach(path)
    return base


def _lookup(
    state: EmulatorState, name: str, path: str, *, empty_status: int, empty_msg: str
) -> ModelSpec:
    base = model_ref(name, path, empty_status=empty_status, empty_msg=empty_msg)
    spec = state.find(base)
    if spec is None:
        raise Refusal(404, not_found_message(path, name, state.store))
    return spec


def _thinking(spec: ModelSpec, model: str, think: bool | None, relax: bool) -> bool:
    if spec.has("thinking"):
        return True if think is None else think
    if think:
        if relax:  # the Anthropic route sets relax_thinking: drop it instead of failing
            return False
        raise Refusal(400, f'"{model}" does not support thinking')
    return False


def prepare_generate(
    state: EmulatorState, body: dict[str, Any], format_held: bytes | None = None
) -> Prepared:
    model = str(body.get("model") or "")
    refused = go_requests.top_logprobs_refusal(body)
    if refused is not None:
        raise Refusal(400, refused)
    spec = _lookup(
        state, model, "/api/generate", empty_status=404, empty_msg=f"model '{model}' not found"
    )
    keep_alive = keep_alive_of(body)
    prompt = str(body.get("prompt") or "")
    stream = body.get("stream") is not False
    if not prompt and keep_alive == 0:
        return Prepared(spec, model, stream, keep_alive, "", plan_empty(), special="unload")
    raw = bool(body.get("raw"))
    refused = go_requests.raw_refusal(body)
    if refused is not None:
        raise Refusal(400, refused)
    suffix = str(body.get("suffix") or "")
    think = _thinking(spec, model, think_value(body.get("think")), relax=False)
    if not spec.has("completion"):
        raise Refusal(400, f'"{model}" does not support generate')
    if suffix and not spec.has("insert"):
        raise Refusal(400, f"{qualified(spec.name)} does not support insert")
    options = body.get("options")
    num_predict = capped_num_predict(check_options(options), options, spec)
    if not prompt:
        return Prepared(spec, model, stream, keep_alive, "", plan_empty(), special="load")
    images = body.get("images") or []
    late, crashes = _late_error(
        state, spec, body, format_held, bool(images), prompt, suffix, str(body.get("system") or "")
    )
    key = _canonical(
        {
            "p": prompt,
            "s": suffix,
            "sys": body.get("system") or "",
            "f": body.get("format"),
            "t": think,
            "i": len(images),
        }
    )
    prompt_tokens = (
        12
        + count_tokens(str(body.get("system") or "") + prompt + suffix)
        + 576 * len(images)
        + len(body.get("context") or [])
    )
    p = plan(
        spec,
        key,
        prompt_tokens=evaluated(prompt_tokens, options, spec),
        default_tokens=state.settings.default_tokens,
        num_predict=num_predict,
        think=think,
        fmt=body.get("format"),
        answer=suite_answer(spec, prompt) if not suffix else None,
    )
    return Prepared(
        spec,
        model,
        stream,
        keep_alive,
        key,
        p,
        late_error=late,
        crashes=crashes,
        raw=raw,
        logprobs=_logprobs(body),
    )


def prepare_chat(
    state: EmulatorState,
    body: dict[str, Any],
    *,
    relax_thinking: bool = False,
    limit_is_cap: bool = False,
    format_held: bytes | None = None,
) -> Prepared:
    model = str(body.get("model") or "")
    refused = go_requests.top_logprobs_refusal(body)
    if refused is not None:
        raise Refusal(400, refused)
    spec = _lookup(state, model, "/api/chat", empty_status=400, empty_msg="model is required")
    keep_alive = keep_alive_of(body)
    # A null element is the zero api.Message: a message still, so no load.
    messages = [m if isinstance(m, dict) else {} for m in body.get("messages") or []]
    stream = body.get("stream") is not False
    if not messages and keep_alive == 0:
        return Prepared(spec, model, stream, keep_alive, "", plan_empty(), special="unload")
    tools = body.get("tools") or []
    think = _thinking(spec, model, think_value(body.get("think")), relax=relax_thinking)
    if not spec.has("completion"):
        raise Refusal(400, f'"{model}" does not support chat')
    if tools and not spec.has("tools"):
        raise Refusal(400, f"{qualified(spec.name)} does not support tools")
    options = body.get("options")
    num_predict = capped_num_predict(check_options(options), options, spec)
    if not messages:
        return Prepared(spec, model, stream, keep_alive, "", plan_empty(), special="load")
    has_images = any(m.get("images") for m in messages)
    late, crashes = _late_error(
        state, spec, body, format_held, has_images, *(str(m.get("content") or "") for m in messages)
    )
    rendered: list[dict[str, Any]] = [
        {
            "r": str(m.get("role") or "").lower(),
            "c": m.get("content") or "",
            "tc": m.get("tool_calls") or [],
            "i": len(m.get("images") or []),
        }
        for m in messages
    ]
    # A null function is Go's zero ToolFunction: a tool of no name.
    functions = [t.get("function") for t in tools if isinstance(t, dict)]
    tool_names = [f.get("name") if isinstance(f, dict) else None for f in functions]
    key = _canonical({"m": rendered, "f": body.get("format"), "t": think, "tools": tool_names})
    prompt_tokens = 6 + sum(4 + count_tokens(str(m["c"])) + 576 * int(m["i"]) for m in rendered)
    prompt_tokens += count_tokens(_canonical(tools)) if tools else 0
    p = plan(
        spec,
        key,
        prompt_tokens=evaluated(prompt_tokens, options, spec),
        default_tokens=state.settings.default_tokens,
        num_predict=num_predict,
        think=think,
        fmt=body.get("format"),
        tools=tools,
        last_role=str(rendered[-1]["r"]),
        limit_is_cap=limit_is_cap,
        answer=suite_answer(spec, str(rendered[-1]["c"])) if rendered[-1]["r"] == "user" else None,
    )
    if not state.settings.frozen_clock:
        # Ollama draws each call's id at random; frozen_clock keeps the plan's, derived
        # from the request like its other ids.
        for call in p.tool_calls:
            call["id"] = drawn_call_id()
    return Prepared(
        spec,
        model,
        stream,
        keep_alive,
        key,
        p,
        late_error=late,
        crashes=crashes,
        logprobs=_logprobs(body),
    )


def _logprobs(body: dict[str, Any]) -> int | None:
    return int(body.get("top_logprobs") or 0) if body.get("logprobs") else None


def piece_logprobs(job: Prepared, position: int, piece: Piece) -> list[dict[str, Any]]:
    """The runner's logprobs for the token a piece carries (a tool call's tokens reach
    the client as a call, not as text, and carry none here)."""
    token = piece.thinking or piece.content
    if job.logprobs is None or not token:
        return []
    if job.logprob_seed is None:
        job.logprob_seed = logprob_prefix(job.key)
    return [token_logprob(job.key, position, token, job.logprobs, job.logprob_seed)]


def plan_empty() -> Plan:
    return Plan(prompt_tokens=0)

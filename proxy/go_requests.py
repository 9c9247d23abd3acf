"""Ollama's request structs as Go's encoding/json reads them: the errors json.Unmarshal
gives for a value of the wrong kind (`check_fields`, api.ThinkValue's own), and what
Ollama's handlers refuse of a body before they look at its model (`refusal`).

The emulator checks every body it decodes with these. The proxy checks a body where it
answers in a backend's place for `auto` (its `/api/show`, its load and unload, its
embeddings without an embedding model, a request no model can serve): Ollama reads
the body before the model, so a body it refuses gets its 400 there too, never an
answer a backend would not give.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from proxy.go_messages import (
    check_anthropic_message,
    check_message,
    check_openai_message,
    check_tool,
)
from proxy.go_readings import Pairs, decode_error
from proxy.go_types import (
    GO_TYPE,
    Aborts,
    BodyError,
    LiteralLost,
    LostAborts,
    Shape,
    Unmarshals,
    as_assigned,
    beyond_a_double,
    beyond_error,
    check_elements,
    check_image,
    check_struct,
    fits,
    is_number,
    not_into,
    type_error,
    whole_literal,
)
from selector_model.request_body import canonical_key, canonicalize

_PARSED_NUMBERS = {
    "any": "float64",
    "float": "float64",
    "float32": "float32",
    "int": "int",
    "[]int": "int",
    "map": "float64",
    "duration": "float64",
}


def check_fields(body: Any, struct: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """Check `body` against a Go struct description {json name: kind}.

    Kinds: string, bool, int, float, map, object, any (its numbers parsed into
    float64s), raw (a json.RawMessage, or an UnmarshalJSON that takes the value as
    written: nothing parsed; an `Unmarshals` refuses what that UnmarshalJSON refuses),
    duration (an api.Duration: any, its number parsed),
    think (an api.ThinkValue), []int, []string, images, messages, tools. Returns the
    body as a dict (JSON null decodes to the zero struct). `struct` is the struct's
    name, with its package when that is not `api` (`openai.ChatCompletionRequest`): Go
    names the package where the body is no object, and only the name where a field
    has the wrong kind."""
    if body is None:
        return {}
    package, _, struct = struct.rpartition(".")
    if not isinstance(body, dict):
        raise BodyError(not_into(body, f"{package or 'api'}.{struct}"))
    # Go matches a key to a field whatever its case (`Model` is `model`), the last of
    # the keys that name a field winning: one lower-case key per field, as Go reads it.
    canonicalize(body)
    # Go decodes the keys in the body's order (the reading keeps it): it saves the first
    # type error and decodes on, and a field's own UnmarshalJSON error (`Aborts`) ends
    # the decoding in its place. A valid body costs what a look-up per key costs.
    saved: BodyError | None = None
    for key, value in body.items():
        want = fields.get(key)
        if want is None or value is None:
            continue
        try:
            _check_field(value, struct, key, want)
        except Aborts:
            raise
        except BodyError as exc:
            saved = saved or exc
    if saved is not None:
        raise saved
    return body


def _check_field(value: Any, struct: str, key: str, want: str) -> None:
    """A field's value of `check_fields`'s kind `want`, not null; its elements in order."""
    if isinstance(want, Unmarshals):
        refused = want.refusal(value)
        if refused is not None:
            raise Aborts(refused)
        return
    if want == "[]int" and isinstance(value, list):
        for item in value:
            beyond = beyond_a_double(item)
            if beyond is not None:
                raise BodyError(beyond_error(beyond, struct, key, "int"))
            if not fits(item, "int"):
                raise type_error(item, struct, key, "int")
        return
    beyond = beyond_a_double(value) if want in _PARSED_NUMBERS else None
    if beyond is not None:
        go_type = _PARSED_NUMBERS[want]
        raise (Aborts if want == "duration" else BodyError)(
            beyond_error(beyond, struct, key, go_type)
        )
    nested = _OPENAI_STRUCTS.get(want)
    if nested is not None:
        if not isinstance(value, dict):
            raise type_error(value, struct, key, want)
        check_struct(value, nested, key)
        return
    nested = _OPENAI_STRUCTS.get(want[2:]) if want.startswith("[]") else None
    if nested is not None:
        if not isinstance(value, list):
            raise type_error(value, struct, key, want)
        check_elements(value, nested, key, struct, None)
        return
    if not fits(value, want):
        raise type_error(value, struct, key, GO_TYPE.get(want, want))
    if want == "[]string":
        for item in value:
            if not fits(item, "string"):
                raise type_error(item, struct, key, "string")
    elif want == "images":
        for item in value:
            check_image(item, struct, key)
    elif want == "think":
        think_value(value)
    elif want in _DECODED_AFRESH:
        check = check_message if want == "messages" else check_anthropic_message
        try:
            for item in value:
                check(item, struct, key)
        except LiteralLost as exc:
            raise LostAborts(str(exc)) from None
        except BodyError as exc:  # from the element's own UnmarshalJSON
            raise Aborts(str(exc)) from None
    elif want in ("tools", "[]api.Tool"):
        for item in value:
            check_tool(item, struct, key)
    elif want == "[]openai.Message":
        for item in value:
            check_openai_message(item, struct, key)


# The kinds of slices whose element type has an UnmarshalJSON of its own that decodes
# each element afresh (api.Message's, anthropic.MessageParam's): an element's error
# ends the decoding, and a key an element gives twice is decoded there (`first_error`).
_DECODED_AFRESH = frozenset({"messages", "[]anthropic.MessageParam"})


def first_error(doc: Any, struct: str, fields: Mapping[str, str]) -> str | None:
    """Go's error decoding `doc` (`go_readings.read_repeated`'s reading of a body) into
    `struct` (`check_fields`), where the body gives a key twice: encoding/json assigns
    each value in turn, the earlier ones too, saves the first type error and goes on
    (decode.go's saveError), and returns it at the end, unless an UnmarshalJSON's own
    error (`Aborts`) ends the decoding first. None where the body's objects repeat no
    key (`check_fields` of the last values is Go's then) or Go refuses nothing."""
    if not isinstance(doc, Pairs):
        return None
    saved: str | None = None
    try:
        for key, item in doc:
            # The elements of a slice decoded afresh (`_DECODED_AFRESH`) go whole to
            # their check, which follows a key given twice in one of them; so does a
            # value an UnmarshalJSON of its own takes as written (`Unmarshals`).
            want = fields.get(canonical_key(key))
            whole = want in _DECODED_AFRESH or isinstance(want, Unmarshals)
            for assigned in (item,) if whole else as_assigned(item):
                try:
                    check_fields({key: assigned}, struct, fields)
                except Aborts as exc:
                    return str(exc)
                except BodyError as exc:
                    saved = saved or str(exc)
    except RecursionError:  # deeper than Python's stack: the backend reads it
        return None
    return saved


_RESPONSES_TOOL_FIELDS: dict[str, tuple[str, str, Shape | None]] = {
    "type": ("string", "string", None),
    "name": ("string", "string", None),
    "description": ("string", "string", None),
    "strict": ("bool", "bool", None),
    "parameters": ("map", "map[string]interface {}", None),
}
_RESPONSES_TOOL = Shape("ResponsesTool", "openai.ResponsesTool", _RESPONSES_TOOL_FIELDS)
# A namespace's tools are ResponsesTools too.
_RESPONSES_TOOL_FIELDS["tools"] = ("[]", "[]openai.ResponsesTool", _RESPONSES_TOOL)


# The openai and anthropic structs of plain fields a request holds, by the name its
# field list gives them (`check_fields`). (JsonSchema's one field is a json.RawMessage: anything.)
_OPENAI_STRUCTS: dict[str, Shape] = {
    "openai.StreamOptions": Shape(
        "StreamOptions", "openai.StreamOptions", {"include_usage": ("bool", "bool", None)}
    ),
    "openai.ResponseFormat": Shape(
        "ResponseFormat",
        "openai.ResponseFormat",
        {
            "type": ("string", "string", None),
            "json_schema": ("object", "openai.JsonSchema", None),
        },
    ),
    "openai.Reasoning": Shape(
        "Reasoning", "openai.Reasoning", {"effort": ("string", "string", None)}
    ),
    "openai.ResponsesTool": _RESPONSES_TOOL,
    # anthropic/anthropic.go's, of anthropic.MessagesRequest.
    "anthropic.Tool": Shape(
        "Tool",
        "anthropic.Tool",
        {
            "type": ("string", "string", None),
            "name": ("string", "string", None),
            "description": ("string", "string", None),
            "input_schema": ("raw", "json.RawMessage", None),
            "max_uses": ("int", "int", None),
        },
    ),
    "anthropic.ToolChoice": Shape(
        "ToolChoice",
        "anthropic.ToolChoice",
        {
            "type": ("string", "string", None),
            "name": ("string", "string", None),
            "disable_parallel_tool_use": ("bool", "bool", None),
        },
    ),
    "anthropic.ThinkingConfig": Shape(
        "ThinkingConfig",
        "anthropic.ThinkingConfig",
        {"type": ("string", "string", None), "budget_tokens": ("int", "int", None)},
    ),
    "anthropic.Metadata": Shape(
        "Metadata", "anthropic.Metadata", {"user_id": ("string", "string", None)}
    ),
    "anthropic.OutputConfig": Shape(
        "OutputConfig", "anthropic.OutputConfig", {"effort": ("string", "string", None)}
    ),
    "openai.ResponsesReasoning": Shape(
        "ResponsesReasoning",
        "openai.ResponsesReasoning",
        {name: ("string", "string", None) for name in ("effort", "generate_summary", "summary")},
    ),
    "openai.ResponsesText": Shape(  # a pointer in the request, as its `format` is
        "ResponsesText",
        "openai.ResponsesText",
        {
            "format": (
                "object",
                "openai.ResponsesTextFormat",
                Shape(
                    "ResponsesTextFormat",
                    "openai.ResponsesTextFormat",
                    {
                        "type": ("string", "string", None),
                        "name": ("string", "string", None),
                        "schema": ("raw", "json.RawMessage", None),
                        "strict": ("bool", "bool", None),
                    },
                ),
            )
        },
    ),
}


GENERATE_FIELDS = {
    "model": "string",
    "prompt": "string",
    "suffix": "string",
    "system": "string",
    "template": "string",
    "context": "[]int",
    "stream": "bool",
    "raw": "bool",
    "format": "raw",
    "keep_alive": "duration",
    "images": "images",
    "options": "map",
    "think": "think",
    "truncate": "bool",
    "shift": "bool",
    "logprobs": "bool",
    "top_logprobs": "int",
}
CHAT_FIELDS = {
    "model": "string",
    "messages": "messages",
    "stream": "bool",
    "format": "raw",
    "keep_alive": "duration",
    "tools": "tools",
    "options": "map",
    "think": "think",
    "truncate": "bool",
    "shift": "bool",
    "logprobs": "bool",
    "top_logprobs": "int",
}
SHOW_FIELDS = {
    "model": "string",
    "system": "string",
    "template": "string",
    "verbose": "bool",
    "options": "map",
    "name": "string",
}
EMBED_FIELDS = {
    "model": "string",
    "input": "any",
    "keep_alive": "duration",
    "truncate": "bool",
    "dimensions": "int",
    "options": "map",
}
EMBEDDINGS_FIELDS = {
    "model": "string",
    "prompt": "string",
    "keep_alive": "duration",
    "options": "map",
}


def think_value(value: Any) -> bool | None:
    """api.ThinkValue: a bool, or "high"/"medium"/"low"/"max" (which mean on); its
    UnmarshalJSON refuses anything else as the body is decoded."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in ("high", "medium", "low", "max"):
            raise Aborts(
                f'invalid think value: "{value}" (must be "high", "medium", "low", "max", '
                "true, or false)"
            )
        return True
    raise Aborts(
        'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'
    )


def top_logprobs_refusal(body: Mapping[str, Any]) -> str | None:
    """GenerateHandler's and ChatHandler's first check once the body is decoded."""
    top = body.get("top_logprobs") or 0
    return "top_logprobs must be between 0 and 20" if top < 0 or top > 20 else None


def raw_refusal(body: Mapping[str, Any]) -> str | None:
    """GenerateHandler's 400 for raw mode with what only a template uses (once the
    model is found and the request is not an unload)."""
    if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
        return "raw mode does not support template, system, or context"
    return None


def embed_input_refusal(body: Mapping[str, Any]) -> str | None:
    """EmbedHandler's 400 for an `input` (decoded into an `any`) that is neither a
    string nor a list of strings, which it answers before it looks for the model."""
    value = body.get("input")
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return None
    return "invalid input type"


# What Ollama's handler on each path decodes its body into, and what it then refuses of
# the decoded body before it looks at the model.
_STRUCTS: dict[str, tuple[str, dict[str, str], Callable[[Mapping[str, Any]], str | None]]] = {
    "/api/generate": ("GenerateRequest", GENERATE_FIELDS, top_logprobs_refusal),
    "/api/chat": ("ChatRequest", CHAT_FIELDS, top_logprobs_refusal),
    "/api/show": ("ShowRequest", SHOW_FIELDS, lambda _: None),
    "/api/embed": ("EmbedRequest", EMBED_FIELDS, embed_input_refusal),
    "/api/embeddings": ("EmbeddingRequest", EMBEDDINGS_FIELDS, lambda _: None),
}


# api.Options with its embedded api.Runner (api/types.go): each field's JSON name and
# the kind of Go value Options.FromMap sets it from (an int or a pointer to one, a
# float32, a bool or a pointer to one, a []string).
OPTION_KINDS = {
    "num_ctx": "integer",
    "num_batch": "integer",
    "num_gpu": "integer",
    "main_gpu": "integer",
    "use_mmap": "boolean",
    "num_thread": "integer",
    "draft_num_predict": "integer",
    "num_keep": "integer",
    "seed": "integer",
    "num_predict": "integer",
    "top_k": "integer",
    "top_p": "float32",
    "min_p": "float32",
    "typical_p": "float32",
    "repeat_last_n": "integer",
    "temperature": "float32",
    "repeat_penalty": "float32",
    "presence_penalty": "float32",
    "frequency_penalty": "float32",
    "stop": "array",
}


def options_refusal(options: Mapping[str, Any] | None) -> str | None:
    """Options.FromMap's error for a request's `options` (decoded as a
    map[string]any: every number a float64), None when it sets them all: a name that
    is no option is skipped (with a warning), a null too. scheduleRunner returns it
    before it loads the model, and handleScheduleError answers it with a 500.

    Go ranges over the map in random order, so of several wrong values it names any
    one; this names the first in the request."""
    for key, value in (options or {}).items():
        kind = OPTION_KINDS.get(key)
        if kind is None or value is None:
            continue
        if kind == "array":
            if not isinstance(value, list):
                return f'option "{key}" must be of type array'
            if not all(isinstance(item, str) for item in value):
                return f'option "{key}" must be of an array of strings'
        elif not (isinstance(value, bool) if kind == "boolean" else is_number(value)):
            return f'option "{key}" must be of type {kind}'
    return None


def option_int(value: Any) -> int | None:
    """What Options.FromMap sets an int option to from `value` (`options` decoded as a
    map[string]any: every number a float64), before its int64 conversion: the double
    truncated toward zero; None for what it refuses (no number) or skips (a null).
    Within an int64 that is the option's value. Beyond it (`INT64_END`) the conversion
    is the platform's: amd64 gives the smallest int64, arm64 the nearest, so a caller
    reads such a number as either."""
    if value is None or isinstance(value, bool) or not is_number(value):
        return None
    literal = whole_literal(value)
    return int(float(literal if literal is not None else value))


def request_struct(path: str) -> tuple[str, dict[str, str]] | None:
    """The struct Ollama's native handler for `path` decodes its body into, as
    `check_fields` takes it; None for a path without one here."""
    struct = _STRUCTS.get(path)
    return None if struct is None else struct[:2]


def decode_refusal(path: str, body: bytes) -> str:
    """What Ollama's handler for `path` answers with a 400 for a body Go finds no JSON
    value in (`go_json.read`'s document None): Go's decoding error, or, for a body of
    blanks (ShouldBindJSON's io.EOF), a native handler's own words; the OpenAI and
    Anthropic middlewares answer Go's."""
    error = decode_error(body)
    return "missing request body" if error == "EOF" and not path.startswith("/v1/") else error


def refusal(path: str, doc: Any) -> str | None:
    """What Ollama's handler for `path` answers with a 400 before it looks at the
    model: an error decoding the body (`doc`, as `go_json.read` reads it) into its
    struct (`_STRUCTS`), or what the handler checks of it first (`top_logprobs` out of
    range, an embedding's `input` of another type); None for a body it goes on with
    (or a path without a struct here). `LiteralLost` is raised, for `checked`."""
    struct = _STRUCTS.get(path)
    if struct is None:
        return None
    name, fields, then = struct
    try:
        decoded = check_fields(doc, name, fields)
    except LiteralLost:
        raise
    except BodyError as exc:
        return str(exc)
    return then(decoded)

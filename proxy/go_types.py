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

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

import orjson

from proxy.go_json import Pairs, WrittenFloat, decode_error, holds_pairs, read_written
from selector_model.request_body import canonical_key, canonicalize

T = TypeVar("T")


class BodyError(Exception):
    """A request body Gin would refuse; str(self) is the Go error text."""


class Aborts(BodyError):
    """An error of a field's own UnmarshalJSON (api.ThinkValue's, api.Duration's, an
    api.Message's on /api/chat): encoding/json ends the decoding with it, in place of
    any type error it saved before and went on after (`first_error`)."""


class LiteralLost(BodyError):
    """An int field refuses a number that is no integer, which Go names as the client
    wrote it, and the reading holds it as a double that lost that text (`checked`)."""


class LostAborts(Aborts, LiteralLost):
    """A `LiteralLost` in an /api/chat message (a tool call's `index`), whose error ends
    the decoding as the message's UnmarshalJSON returns it (`Aborts`): the body is read
    again for the number as written (`checked`)."""


class BeyondADouble:
    """A JSON number beyond a double, as written: Go's ParseFloat (into a float64 or an
    `any`) and ParseInt (into an int) refuse it, and json.Unmarshal names the field
    (`check_fields`)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


# An integer as JSON writes one.
_INTEGER = re.compile(r"-?[0-9]+")


def whole_literal(value: Any) -> str | None:
    """The text of an integer the proxy's reading keeps as written because orjson cannot
    hold it (beyond 64 bits, `go_json`) and a double can (Go reads it into a float64 or
    an `any`; an int field refuses it, naming it as written); None for anything else."""
    if not isinstance(value, orjson.Fragment):
        return None
    text = orjson.dumps(value).decode()
    if not _INTEGER.fullmatch(text) or math.isinf(float(text)):
        return None
    return text


def _beyond_a_double(value: Any) -> str | None:
    """The first number beyond a double in `value`, in document order, as written: a
    `BeyondADouble` (the emulator's reading) or the JSON fragment the proxy's reading
    keeps it as (`go_json`; not an integer a double holds, `whole_literal`)."""
    if isinstance(value, BeyondADouble):
        return value.text
    if isinstance(value, orjson.Fragment):
        return None if whole_literal(value) is not None else orjson.dumps(value).decode()
    children = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    )
    for child in children:
        if type(child) in _PLAIN:
            continue  # most values: no call for them
        found = _beyond_a_double(child)
        if found is not None:
            return found
    return None


# The types of the values a reading makes that hold no number beyond a double.
_PLAIN = frozenset({str, int, float, bool, type(None)})


# Field type checking (the errors json.Unmarshal gives for a wrong type) -----------------

_KIND_OF = {
    str: "string",
    bool: "bool",
    int: "number",
    float: "number",
    list: "array",
    dict: "object",
    BeyondADouble: "number",
    orjson.Fragment: "number",
}

_GO_TYPE = {
    "string": "string",
    "bool": "bool",
    "int": "int",
    "float": "float64",
    "float32": "float32",
    "map": "map[string]interface {}",
    "[]int": "[]int",
    "[]string": "[]string",
    "images": "[]api.ImageData",
    "messages": "[]api.Message",
    "tools": "api.Tools",
    "object": "struct",
}


# The kinds whose numbers Go parses (the rest hold no number, or keep it unparsed, as
# a json.RawMessage does): the Go type a number beyond a double fails to become. An
# api.Duration (`duration`) decodes its value into an `any` first.
_PARSED_NUMBERS = {
    "float": "float64",
    "float32": "float32",
    "int": "int",
    "[]int": "int",
    "map": "float64",
    "duration": "float64",
}


def go_kind(value: Any) -> str:
    """How encoding/json's UnmarshalTypeError names a decoded JSON value: "string",
    "number", "object", ..."""
    return _KIND_OF.get(type(value), "value")


def not_into(value: Any, go_type: str) -> str:
    """encoding/json's error for a value of another kind than `go_type` at the top of
    what it unmarshals (no struct field to name)."""
    return f"json: cannot unmarshal {go_kind(value)} into Go value of type {go_type}"


# Where an int64 ends: Go's int64 of a double from 2^63 on, or below -2^63, is the
# platform's (`option_int`).
INT64_END = 1 << 63
_INT_MIN, _INT_MAX = -INT64_END, INT64_END - 1


def _fits(value: Any, want: str) -> bool:
    if value is None or want in ("any", "duration", "think"):
        return True
    if want == "string":
        return isinstance(value, str)
    if want == "bool":
        return isinstance(value, bool)
    if want == "int":
        # Go's int: ParseInt into 64 bits; a larger integer (a double holds it, orjson
        # reads up to 2**64 - 1) overflows and json.Unmarshal refuses it.
        return (
            isinstance(value, int) and not isinstance(value, bool) and _INT_MIN <= value <= _INT_MAX
        )
    if want in ("float", "float32"):
        return _number(value)
    if want in ("map", "object"):
        return isinstance(value, dict)
    return isinstance(value, list)  # every "[]..." kind, messages, tools, images


def type_error(value: Any, struct: str, field_path: str, go_type: str) -> BodyError:
    kind = go_kind(value)
    whole = whole_literal(value)
    if whole is not None and go_type == "int":
        kind = f"number {whole}"  # beyond Go's int, as the client wrote it
    elif go_type == "int" and isinstance(value, WrittenFloat):
        kind = f"number {value.text}"
    elif go_type == "int" and isinstance(value, BeyondADouble | orjson.Fragment):
        kind = f"number {_beyond_a_double(value)}"  # ParseInt's, as the client wrote it
    elif kind == "number" and go_type == "int" and isinstance(value, float):
        raise LiteralLost(
            f"json: cannot unmarshal number {value!r} into Go struct field "
            f"{struct}.{field_path} of type {go_type}"
        )
    elif kind == "number" and go_type == "int" and isinstance(value, int):
        kind = f"number {value}"  # beyond Go's int: an integer is written as read
    return BodyError(
        f"json: cannot unmarshal {kind} into Go struct field "
        f"{struct}.{field_path} of type {go_type}"
    )


def checked(doc: Any, body: bytes, check: Callable[[Any], T]) -> T:
    """`check(doc)`, `doc` the reading of `body`; where it refuses a number that is no
    integer in an int field (`LiteralLost`), `check` of `body` read again keeping such
    numbers as written (`go_json.read_written`), for Go's error naming it. Only a body
    so refused is read twice."""
    try:
        return check(doc)
    except LiteralLost:
        written = read_written(body)
        if written is None:
            raise
        return check(written)


def check_fields(body: Any, struct: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """Check `body` against a Go struct description {json name: kind}.

    Kinds: string, bool, int, float, map, object, any, duration (an api.Duration:
    any, its number parsed), think (an api.ThinkValue), []int, []string, images,
    messages, tools. Returns the body as a dict (JSON null decodes to the zero
    struct). `struct` is the struct's name, with its package when that is not `api`
    (`openai.ChatCompletionRequest`): Go names the package where the body is no
    object, and only the name where a field has the wrong kind."""
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
    if want == "[]int" and isinstance(value, list):
        for item in value:
            beyond = _beyond_a_double(item)
            if beyond is not None:
                raise BodyError(
                    f"json: cannot unmarshal number {beyond} into Go struct field "
                    f"{struct}.{key} of type int"
                )
            if not _fits(item, "int"):
                raise type_error(item, struct, key, "int")
        return
    beyond = _beyond_a_double(value) if want in _PARSED_NUMBERS else None
    if beyond is not None:
        go_type = _PARSED_NUMBERS[want]
        raise (Aborts if want == "duration" else BodyError)(
            f"json: cannot unmarshal number {beyond} into Go struct field "
            f"{struct}.{key} of type {go_type}"
        )
    nested = _OPENAI_STRUCTS.get(want)
    if nested is not None:
        if not isinstance(value, dict):
            raise type_error(value, struct, key, want)
        _check_struct(value, nested, key)
        return
    if not _fits(value, want):
        raise type_error(value, struct, key, _GO_TYPE.get(want, want))
    if want == "[]string":
        for item in value:
            if not _fits(item, "string"):
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


def _assigned(value: Any) -> Iterator[Any]:
    """`value` as the values Go's decoder assigns one after another, in the body's
    order: an object of `go_json.read_repeated`'s that repeats a key (a `Pairs`) as
    objects of one key each, a pair's value in turn as its own; an array holding one
    as arrays of one element each (Go's errors name no index); anything else whole."""
    if isinstance(value, Pairs):
        for key, item in value:
            for assigned in _assigned(item):
                yield {key: assigned}
    elif isinstance(value, list) and holds_pairs(value):
        for item in value:
            for assigned in _assigned(item):
                yield [assigned]
    else:
        yield value


def first_error(doc: Any, struct: str, fields: Mapping[str, str]) -> str | None:
    """Go's error decoding `doc` (`go_json.read_repeated`'s reading of a body) into
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
            # their check, which follows a key given twice in one of them.
            whole = fields.get(canonical_key(key)) in _DECODED_AFRESH
            for assigned in (item,) if whole else _assigned(item):
                try:
                    check_fields({key: assigned}, struct, fields)
                except Aborts as exc:
                    return str(exc)
                except BodyError as exc:
                    saved = saved or str(exc)
    except RecursionError:  # deeper than Python's stack: the backend reads it
        return None
    return saved


def taken_whole(value: Any) -> Any:
    """A value Go takes whole, as the proxy's reading has it: the last value of a key an
    object gives twice (`canonicalize` then folds the keys of the objects it reads)."""
    if isinstance(value, Pairs):
        return {key: taken_whole(item) for key, item in value}
    if isinstance(value, list) and holds_pairs(value):
        return [taken_whole(item) for item in value]
    return value


class _Shape(NamedTuple):
    """A struct of plain fields as `_check_struct` checks it: the name Go's errors give
    it, the type they name where a value is no object, and each field by its JSON name:
    (kind, the Go type an error names, the shape of the struct it holds or, for a
    slice, of each element). The kind "arguments" is an api.ToolCallFunctionArguments
    (`check_arguments`)."""

    name: str
    go_type: str
    fields: Mapping[str, tuple[str, str, _Shape | None]]


# api.Tool, api.ToolFunction and api.ToolFunctionParameters, as far as their types are
# plain (`properties` has an UnmarshalJSON of its own, unchecked). Go names the
# innermost struct and the field's whole path from the request (`Tool.tools.function`).
_PARAMETERS = _Shape(
    "ToolFunctionParameters",
    "api.ToolFunctionParameters",
    {"type": ("string", "string", None), "required": ("[]string", "[]string", None)},
)
_FUNCTION = _Shape(
    "ToolFunction",
    "api.ToolFunction",
    {
        "name": ("string", "string", None),
        "description": ("string", "string", None),
        "parameters": ("object", _PARAMETERS.go_type, _PARAMETERS),
    },
)
_TOOL = _Shape(
    "Tool",
    "api.Tool",
    {"type": ("string", "string", None), "function": ("object", _FUNCTION.go_type, _FUNCTION)},
)


def check_tool(item: Any, struct: str, key: str) -> None:
    """One element of a request's `tools` ([]api.Tool)."""
    if item is None:
        return
    if not isinstance(item, dict):
        raise type_error(item, struct, key, _TOOL.go_type)
    _check_struct(item, _TOOL, key)


# openai.Message and openai.ToolCall (openai/openai.go), as far as their types are plain
# (`content` is an `any`). A tool call's `function` is an anonymous struct: encoding/json
# names it by its fields, and a field inside it by its path alone (no struct name).
_OA_FUNCTION = _Shape(
    "",
    'struct { Name string "json:\\"name\\""; Arguments string "json:\\"arguments\\"" }',
    {"name": ("string", "string", None), "arguments": ("string", "string", None)},
)
_OA_TOOL_CALL = _Shape(
    "ToolCall",
    "openai.ToolCall",
    {
        "id": ("string", "string", None),
        "index": ("int", "int", None),
        "type": ("string", "string", None),
        "function": ("object", _OA_FUNCTION.go_type, _OA_FUNCTION),
    },
)
_OA_MESSAGE = _Shape(
    "Message",
    "openai.Message",
    {
        "role": ("string", "string", None),
        "reasoning": ("string", "string", None),
        "tool_calls": ("[]", "[]openai.ToolCall", _OA_TOOL_CALL),
        "name": ("string", "string", None),
        "tool_call_id": ("string", "string", None),
    },
)


# Fields of openai/openai.go's requests that are structs of its own, by the kind that
# names them in a field list (`check_fields`). (JsonSchema's one field is a
# json.RawMessage: anything.)
_OPENAI_STRUCTS: dict[str, _Shape] = {
    "openai.StreamOptions": _Shape(
        "StreamOptions", "openai.StreamOptions", {"include_usage": ("bool", "bool", None)}
    ),
    "openai.ResponseFormat": _Shape(
        "ResponseFormat",
        "openai.ResponseFormat",
        {
            "type": ("string", "string", None),
            "json_schema": ("object", "openai.JsonSchema", None),
        },
    ),
    "openai.Reasoning": _Shape(
        "Reasoning", "openai.Reasoning", {"effort": ("string", "string", None)}
    ),
}


def check_openai_message(item: Any, struct: str, key: str) -> None:
    """One element of a chat completion's `messages` ([]openai.Message, no UnmarshalJSON
    of its own): errors name the innermost struct and the field's path from the
    request (`Message.messages.role`). A null element is the zero message."""
    if item is None:
        return
    if not isinstance(item, dict):
        raise type_error(item, struct, key, _OA_MESSAGE.go_type)
    _check_struct(item, _OA_MESSAGE, key)


def _check_struct(
    value: dict[str, Any], shape: _Shape, path: str, struct: str | None = None
) -> None:
    """`value`'s fields of `shape` at `path`, in the body's order, as Go decodes them,
    a key matching its field whatever its case: the first type error, unless a
    field's own UnmarshalJSON (`arguments`) ends the decoding first (`Aborts`).
    `struct` names every error's struct in place of the innermost one, as the request
    does for what a message's own UnmarshalJSON decodes (`check_message`)."""
    saved: BodyError | None = None
    fields, named = shape.fields, struct or shape.name
    for name, field in value.items():
        spec = fields.get(name)
        if spec is None:  # a key of another case, or none of the struct's
            name = canonical_key(name)
            spec = fields.get(name)
        if spec is None or (field is None and spec[0] != "arguments"):
            continue  # null leaves a field as it is, but for an UnmarshalJSON's
        kind, go_type, inner = spec
        if kind == "string" and type(field) is str:
            continue  # the most common case: nothing more to look at
        at = f"{path}.{name}"
        try:
            if kind == "arguments":
                check_arguments(field, named, at)
            elif not _fits(field, kind):
                raise type_error(field, named, at, go_type)
            elif kind == "[]string":
                for item in field:
                    if not _fits(item, "string"):
                        raise type_error(item, named, at, "string")
            elif kind == "[]" and inner is not None:
                _check_elements(field, inner, at, named, struct)
            elif inner is not None:  # an object, as `_fits` found
                _check_struct(field, inner, at, struct)
        except Aborts:
            raise
        except BodyError as exc:
            saved = saved or exc
    if saved is not None:
        raise saved


def _check_elements(
    items: Iterable[Any], shape: _Shape, path: str, named: str, struct: str | None
) -> None:
    """Each of `items`, a struct of `shape` (`_check_struct`) or null, in order: the first
    type error, unless a later element's decoding ends sooner (`Aborts`)."""
    saved: BodyError | None = None
    for item in items:
        if item is None:
            continue
        try:
            if not isinstance(item, dict):
                raise type_error(item, named, path, shape.go_type)
            _check_struct(item, shape, path, struct)
        except Aborts:
            raise
        except BodyError as exc:
            saved = saved or exc
    if saved is not None:
        raise saved


# Standard base64, padded: what Go decodes once line breaks are taken out, matched in
# one pass (an image is megabytes).
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
# The digits and line breaks a refusal's search skips at C speed.
_DIGITS_AND_BREAKS = re.compile(r"[A-Za-z0-9+/\r\n]*")
_DIGITS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_BREAKS = "\r\n"
# A run of line breaks, skipped at C speed: a run of millions would otherwise be a
# Python step each, seconds on the event loop for one body.
_BREAKS_RUN = re.compile(r"[\r\n]*")


def base64_error(src: str) -> int | None:
    """The input byte Go's `base64.StdEncoding.Decode` refuses `src` at, None when it
    decodes: line breaks anywhere are skipped (MIME's every 76 characters), and the
    padding is required."""
    clean = src.replace("\r", "").replace("\n", "") if ("\n" in src or "\r" in src) else src
    if len(clean) % 4 == 0 and _BASE64.fullmatch(clean):
        return None
    # Whole quanta of digits decode: Go's decoder is followed from the start of the
    # quantum that holds the first byte other than a digit or a line break.
    run = _DIGITS_AND_BREAKS.match(src)
    end = run.end() if run else 0
    left = (end - src.count("\r", 0, end) - src.count("\n", 0, end)) % 4
    si = end
    while left:  # back to the digit before the breaks that precede `si`, at C speed
        si = len(src[:si].rstrip(_BREAKS)) - 1
        left -= 1
    return _decode_quanta(src, si)


def _decode_quanta(src: str, si: int) -> int | None:
    """Go's `decodeQuantum` (encoding/base64), from `si` to the end of `src`: the
    offset of its CorruptInputError, None when there is none."""
    n = len(src)
    while si < n:
        j = 0
        while j < 4:
            if si == n:
                return None if j == 0 else si - j
            c = src[si]
            si += 1
            if c in _DIGITS:
                j += 1
                continue
            if c in _BREAKS:
                si = _skip_breaks(src, si)
                continue
            if c != "=" or j < 2:
                return si - 1
            if j == 2:
                si = _skip_breaks(src, si)
                if si == n:
                    return n
                if src[si] != "=":
                    return si - 1
                si += 1
            si = _skip_breaks(src, si)
            return si if si < n else None
    return None


def _skip_breaks(src: str, si: int) -> int:
    """The offset of the first byte from `si` on that is no line break."""
    skipped = _BREAKS_RUN.match(src, si)
    return skipped.end() if skipped else si


def check_image(item: Any, struct: str, key: str) -> None:
    """api.ImageData is []byte: a base64 string (`base64_error`)."""
    if not isinstance(item, str):
        raise type_error(item, struct, key, "api.ImageData")
    wrong = base64_refusal(item)
    if wrong is not None:
        raise BodyError(wrong)


def base64_refusal(src: str) -> str | None:
    """Go's error text for base64 it refuses (`base64_error`), None when it decodes."""
    wrong = base64_error(src)
    return None if wrong is None else f"illegal base64 data at input byte {wrong}"


_MESSAGE_FIELDS = {
    "role": "string",
    "content": "string",
    "thinking": "string",
    "images": "images",
    "tool_calls": "[]",
    "tool_name": "string",
    "tool_call_id": "string",
}


# buger/jsonparser's error for a value that is no object where ObjectEach reads one.
NOT_AN_OBJECT = "Value looks like object, but can't find closing '}' symbol"


def check_arguments(value: Any, struct: str | None = None, path: str = "") -> None:
    """An api.ToolCallFunctionArguments (a tool call's `function.arguments`, an Anthropic
    content block's `input`, at `struct`.`path`; with no struct, the value json.Unmarshal
    decodes whole) decodes through wk8/go-ordered-map, whose UnmarshalJSON is
    jsonparser's ObjectEach: anything but an object is its error, returned as is, null
    too (encoding/json's literalStore hands a null to the UnmarshalJSON of a field that
    is no pointer, and json.Unmarshal of it into the map to the map's own); each value
    of an object goes to json.Unmarshal into an `any`, whose error for a number beyond a
    double the decoding of the message puts in the request's context. Either ends the
    decoding (`Aborts`)."""
    if not isinstance(value, dict):
        raise Aborts(NOT_AN_OBJECT)
    beyond = _beyond_a_double(value)
    if beyond is not None:
        into = "Go value" if struct is None else f"Go struct field {struct}.{path}"
        raise Aborts(f"json: cannot unmarshal number {beyond} into {into} of type float64")


# api.ToolCall and api.ToolCallFunction, as api.Message's inner decoding reads them
# (`check_message`: its errors name the request's struct).
_TOOL_CALL_FUNCTION = _Shape(
    "ToolCallFunction",
    "api.ToolCallFunction",
    {
        "index": ("int", "int", None),
        "name": ("string", "string", None),
        "arguments": ("arguments", "api.ToolCallFunctionArguments", None),
    },
)
_TOOL_CALL = _Shape(
    "ToolCall",
    "api.ToolCall",
    {
        "id": ("string", "string", None),
        "function": ("object", _TOOL_CALL_FUNCTION.go_type, _TOOL_CALL_FUNCTION),
    },
)


def check_message(item: Any, struct: str, key: str) -> None:
    """One element of a native chat's `messages` (`struct`.`key`). api.Message has its
    own UnmarshalJSON (decoding an Alias of itself), and json.Unmarshal gives the error
    of that inner decoding the context of the request it decodes: the request's struct
    and the path from it to the field (`ChatRequest.messages.content`, as Ollama answers
    it), the type the inner decoding names (`api.Alias` for a message that is no
    object). The inner decoding goes in the message's order, a key given twice (a
    `Pairs` message, `first_error`) each time: its first type error (a tool call's
    fields too: `ChatRequest.messages.tool_calls.function.name`), unless a tool call's
    `arguments` ends it first (`check_arguments`)."""
    if item is None:
        return
    saved: BodyError | None = None
    if isinstance(item, dict):
        fields: Any = item.items()
    elif isinstance(item, Pairs):
        fields = (
            (canonical_key(name), piece) for name, value in item for piece in _assigned(value)
        )
    else:
        raise type_error(item, struct, key, "api.Alias")
    for name, value in fields:
        want = _MESSAGE_FIELDS.get(name)
        if want is None or value is None:
            continue
        try:
            _check_message_field(value, want, struct, f"{key}.{name}")
        except Aborts:
            raise
        except BodyError as exc:
            saved = saved or exc
    if saved is not None:
        raise saved


def _check_message_field(value: Any, want: str, struct: str, path: str) -> None:
    if want == "images":
        if not isinstance(value, list):
            raise type_error(value, struct, path, "[]api.ImageData")
        for img in value:
            check_image(img, struct, path)
    elif want == "[]":
        if not isinstance(value, list):
            raise type_error(value, struct, path, "[]api.ToolCall")
        _check_elements(value, _TOOL_CALL, path, struct, struct)
    elif not _fits(value, want):
        raise type_error(value, struct, path, _GO_TYPE[want])


# json.Unmarshal's error for no bytes at all.
NO_INPUT = "unexpected end of JSON input"
# What anthropic.MessageParam's UnmarshalJSON unmarshals a message into first: an
# anonymous struct, which Go's errors name by its fields.
_ANTHROPIC_HEAD = (
    'struct { Role string "json:\\"role\\""; Content json.RawMessage "json:\\"content\\"" }'
)


def check_anthropic_message(msg: Any, struct: str, key: str) -> None:
    """One element of an Anthropic request's `messages`: anthropic.MessageParam's
    UnmarshalJSON, the message into its head (`_ANTHROPIC_HEAD`: each `role` in the
    message's order, a key given twice (a `Pairs` message) each time; `content` a
    json.RawMessage, the last one kept), then `content` as a string, else as a list of
    blocks (`_check_blocks`). A null message, or one without `content`, unmarshals no
    bytes (a null `content` is the text ""). json.Unmarshal puts an error of these
    inner decodings in the request's context (`MessagesRequest.messages`, the inner
    field after it)."""
    in_pairs = isinstance(msg, Pairs)
    if in_pairs:
        pairs, msg = msg, {}
        for name, value in pairs:
            name = canonical_key(name)
            if name == "role":
                _check_role(taken_whole(value), struct, key)
            # The blocks as given: a block giving a key twice is decoded each time.
            whole = name == "content" and type(value) is list
            msg[name] = value if whole else taken_whole(value)
    if msg is None or (isinstance(msg, dict) and "content" not in msg):
        raise BodyError(NO_INPUT)
    if not isinstance(msg, dict):
        raise type_error(msg, struct, key, _ANTHROPIC_HEAD)
    _check_role(msg.get("role"), struct, key)
    content = msg["content"]
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise type_error(content, struct, key, "[]anthropic.ContentBlock")
    _check_blocks(content, struct, key, in_pairs)


def _check_blocks(content: list[Any], struct: str, key: str, in_pairs: bool) -> None:
    """A message's content blocks ([]anthropic.ContentBlock), in order, a block giving a
    key twice (a `Pairs`) each time: the first type error, unless a block's `input` (an
    api.ToolCallFunctionArguments, in a block of any type) ends the decoding first
    (`check_arguments`). `in_pairs`: the message gives a key twice, and its blocks'
    keys are as the client wrote them."""
    saved: BodyError | None = None
    for block in content:
        pieces: Iterable[Any] = (block,)
        if isinstance(block, Pairs) or (type(block) is dict and in_pairs):
            # Its keys as the client wrote them (`canonicalize` reads no `Pairs`).
            pieces = ({canonical_key(k): v for k, v in one.items()} for one in _assigned(block))
        for piece in pieces:
            if piece is None:
                continue
            if not isinstance(piece, dict):
                saved = saved or type_error(piece, struct, key, "anthropic.ContentBlock")
                continue
            # An error of `input`'s ends the decoding, whatever the block's keys' order.
            if "input" in piece:
                check_arguments(piece["input"], struct, f"{key}.input")
            kind = piece.get("type")
            if kind is not None and not isinstance(kind, str):
                saved = saved or type_error(kind, struct, f"{key}.type", "string")
    if saved is not None:
        raise saved


def _check_role(role: Any, struct: str, key: str) -> None:
    if role is not None and not isinstance(role, str):
        raise type_error(role, struct, f"{key}.role", "string")


# The request structs of api/types.go, {json name: kind} (see `check_fields`).
GENERATE_FIELDS = {
    "model": "string",
    "prompt": "string",
    "suffix": "string",
    "system": "string",
    "template": "string",
    "context": "[]int",
    "stream": "bool",
    "raw": "bool",
    "format": "any",
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
    "format": "any",
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


def _number(value: Any) -> bool:
    """A number Go reads into a float64 (an integer beyond 64 bits too)."""
    if isinstance(value, int | float):
        return not isinstance(value, bool)
    return whole_literal(value) is not None


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
        elif not (isinstance(value, bool) if kind == "boolean" else _number(value)):
            return f'option "{key}" must be of type {kind}'
    return None


def option_int(value: Any) -> int | None:
    """What Options.FromMap sets an int option to from `value` (`options` decoded as a
    map[string]any: every number a float64), before its int64 conversion: the double
    truncated toward zero; None for what it refuses (no number) or skips (a null).
    Within an int64 that is the option's value. Beyond it (`INT64_END`) the conversion
    is the platform's: amd64 gives the smallest int64, arm64 the nearest, so a caller
    reads such a number as either."""
    if value is None or isinstance(value, bool) or not _number(value):
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

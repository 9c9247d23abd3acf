"""Go's encoding/json as Ollama's request structs meet it: the errors json.Unmarshal
gives for a value of the wrong kind (`type_error`), which of them it keeps (`Aborts`,
`checked`), the plain structs it decodes field by field (`check_struct`), and the values
of Ollama's types that read their own bytes (api.ImageData's base64, an
api.ToolCallFunctionArguments).

What a request's slices hold (messages, tool calls, tools) is checked in
`go_messages`; the request structs and what Ollama's handlers refuse of a body, in
`go_requests`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

import orjson

from proxy.go_deep import unread
from proxy.go_readings import Pairs, WrittenFloat, holds_pairs, read_written
from selector_model.request_body import canonical_key

T = TypeVar("T")


class BodyError(Exception):
    """A request body Gin would refuse; str(self) is the Go error text."""


class Aborts(BodyError):
    """An error of a field's own UnmarshalJSON (api.ThinkValue's, api.Duration's, an
    api.Message's on /api/chat): encoding/json ends the decoding with it, in place of
    any type error it saved before and went on after (`first_error`)."""


class Unmarshals(str):
    """The kind (`go_requests.check_fields`) of a field whose type has an UnmarshalJSON
    of its own that takes the value as written, "raw" to any other reader: what
    `refusal` returns of the value as the reading holds it (an object that gives a key
    twice a `go_readings.Pairs`, which that UnmarshalJSON reads as Go would) is that
    UnmarshalJSON's error, which ends the decoding (`Aborts`)."""

    __slots__ = ("refusal",)
    refusal: Callable[[Any], str | None]

    def __new__(cls, refusal: Callable[[Any], str | None]) -> Unmarshals:
        kind = super().__new__(cls, "raw")
        kind.refusal = refusal
        return kind


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


def beyond_a_double(value: Any) -> str | None:
    """The first number beyond a double in `value`, in document order, as written: a
    `BeyondADouble` (the emulator's reading) or the JSON fragment the proxy's reading
    keeps it as (`go_json`; not an integer a double holds, `whole_literal`). A loop,
    not a recursion: the emulator's reading holds values nested as deep as Python's
    json reads, about as deep as its stack goes."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, BeyondADouble):
            return item.text
        if isinstance(item, orjson.Fragment):
            text = orjson.dumps(item).decode()
            # An array or an object is a value deeper than the reading goes, kept as
            # written (`go_json.read`): none of its numbers is read.
            if text[0] not in "[{" and whole_literal(item) is None:
                return text
            continue
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        # Most values hold nothing to look at; the first child is looked at first.
        pending += reversed([child for child in children if type(child) not in _PLAIN])
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

GO_TYPE = {
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


def fits(value: Any, want: str) -> bool:
    if value is None or want in ("any", "raw", "duration", "think"):
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
        return is_number(value)
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
        kind = f"number {beyond_a_double(value)}"  # ParseInt's, as the client wrote it
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


def beyond_error(text: str, struct: str, path: str, go_type: str) -> str:
    """json.Unmarshal's error for a number beyond a double, `text` as written
    (`beyond_a_double`), in the struct field at `path` that Go parses it into a
    `go_type` for."""
    return (
        f"json: cannot unmarshal number {text} into Go struct field {struct}.{path} "
        f"of type {go_type}"
    )


def checked(doc: Any, body: bytes, check: Callable[[Any], T]) -> T:
    """`check(doc)`, `doc` the reading of `body`; where it refuses a number that is no
    integer in an int field (`LiteralLost`), `check` of `body` read again keeping such
    numbers as written (`go_readings.read_written`), for Go's error naming it. Only a body
    so refused is read twice."""
    try:
        return check(doc)
    except LiteralLost:
        written = read_written(body)
        if written is None:
            raise
        return check(written)


def as_assigned(value: Any) -> Iterator[Any]:
    """`value` as the values Go's decoder assigns one after another, in the body's
    order: an object of `go_readings.read_repeated`'s that repeats a key (a `Pairs`) as
    objects of one key each, a pair's value in turn as its own; an array holding one
    as arrays of one element each (Go's errors name no index); anything else whole."""
    if isinstance(value, Pairs):
        for key, item in value:
            for assigned in as_assigned(item):
                yield {key: assigned}
    elif isinstance(value, list) and holds_pairs(value):
        for item in value:
            for assigned in as_assigned(item):
                yield [assigned]
    else:
        yield value


def taken_whole(value: Any) -> Any:
    """A value Go takes whole, as the proxy's reading has it: the last value of a key an
    object gives twice (`canonicalize` then folds the keys of the objects it reads)."""
    if isinstance(value, Pairs):
        return {key: taken_whole(item) for key, item in value}
    if isinstance(value, list) and holds_pairs(value):
        return [taken_whole(item) for item in value]
    return value


class Shape(NamedTuple):
    """A struct of plain fields as `check_struct` checks it: the name Go's errors give
    it, the type they name where a value is no object, and each field by its JSON name:
    (kind, the Go type an error names, the shape of the struct it holds or, for a
    slice, of each element), each field by its name in lower case where its JSON name
    has capitals, which `names` holds. The kind "arguments" is an
    api.ToolCallFunctionArguments (`check_arguments`), "any" an `any`, "[]any" a slice
    of them, "properties" an api.ToolPropertiesMap (`_properties_steps`), "property_type"
    an api.PropertyType (`_check_property_type`), "[]property" an []api.ToolProperty."""

    name: str
    go_type: str
    fields: Mapping[str, tuple[str, str, Shape | None]]
    names: Mapping[str, str] = {}


# The kinds of `Shape` fields a string fits, with no more to look at.
_STRING_KINDS = frozenset({"string", "any", "property_type"})


# A check as a generator: it yields each check nested in it for `_run` to run in its
# place, which raises the nested check's error where it was yielded.
_Steps = Generator["_Steps", None, None]


def _run(steps: _Steps) -> None:
    """Runs `steps` as a call would, each check it yields in turn, on a list in place of
    Python's stack: a tool's properties nest as deep as the reading holds them, far
    deeper than Python's recursion goes (Go reads 10,000 levels)."""
    stack = [steps]
    error: BodyError | None = None
    while stack:
        try:
            if error is None:
                nested = next(stack[-1])
            else:
                thrown, error = error, None
                nested = stack[-1].throw(thrown)
        except StopIteration:
            stack.pop()
            continue
        except BodyError as exc:
            stack.pop()
            if not stack:
                raise
            error = exc
            continue
        stack.append(nested)


def check_struct(value: dict[str, Any], shape: Shape, path: str, struct: str | None = None) -> None:
    """`value`'s fields of `shape` at `path`, in the body's order, as Go decodes them,
    a key matching its field whatever its case: the first type error, unless a
    field's own UnmarshalJSON (`arguments`) ends the decoding first (`Aborts`).
    `struct` names every error's struct in place of the innermost one, as the request
    does for what a message's own UnmarshalJSON decodes (`check_message`). `path` is ""
    for a struct json.Unmarshal decodes whole: its fields are named alone. A value the
    reading holds none of (`go_deep.unread`) is skipped: Go reads it, the proxy
    cannot."""
    _run(_struct_steps(value, shape, path, struct))


def _struct_steps(value: dict[str, Any], shape: Shape, path: str, struct: str | None) -> _Steps:
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
        if type(field) is str and kind in _STRING_KINDS:
            continue  # the most common case: nothing more to look at
        if unread(field):
            continue
        at = f"{path}.{shape.names.get(name, name)}" if path else shape.names.get(name, name)
        try:
            if kind == "arguments":
                check_arguments(field, named, at)
            elif kind == "properties":
                yield _properties_steps(field, named, at)
            elif kind == "property_type":
                _check_property_type(field, named, at)
            elif not fits(field, kind):
                raise type_error(field, named, at, go_type)
            elif kind == "[]string":
                for item in field:
                    if not fits(item, "string"):
                        raise type_error(item, named, at, "string")
            elif kind == "[]" and inner is not None:
                yield _elements_steps(field, inner, at, named, struct)
            elif kind == "[]property":
                yield _elements_steps(field, _TOOL_PROPERTY, at, named, struct)
            elif kind in ("any", "[]any", "map"):  # Go parses their numbers into float64s
                beyond = beyond_a_double(field)
                if beyond is not None:
                    raise BodyError(beyond_error(beyond, named, at, "float64"))
            elif inner is not None:  # an object, as `fits` found
                yield _struct_steps(field, inner, at, struct)
        except Aborts:
            raise
        except BodyError as exc:
            saved = saved or exc
    if saved is not None:
        raise saved


def strings_alone(value: Any, fields: frozenset[str]) -> bool:
    """Whether `value` is an object of keys among `fields` alone, each a string: where
    those fields take a string, a struct `check_struct` need not look at field by
    field (most content blocks, most tool properties)."""
    if type(value) is not dict or not fields.issuperset(value):
        return False
    for item in value.values():
        if type(item) is not str:
            return False
    return True


def check_elements(
    items: Iterable[Any], shape: Shape, path: str, named: str, struct: str | None
) -> None:
    """Each of `items`, a struct of `shape` (`check_struct`) or null, in order: the first
    type error, unless a later element's decoding ends sooner (`Aborts`)."""
    _run(_elements_steps(items, shape, path, named, struct))


def _elements_steps(
    items: Iterable[Any], shape: Shape, path: str, named: str, struct: str | None
) -> _Steps:
    saved: BodyError | None = None
    for item in items:
        if item is None or unread(item):
            continue
        try:
            if not isinstance(item, dict):
                raise type_error(item, named, path, shape.go_type)
            yield _struct_steps(item, shape, path, struct)
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
    beyond = beyond_a_double(value)
    if beyond is not None:
        into = "Go value" if struct is None else f"Go struct field {struct}.{path}"
        raise Aborts(f"json: cannot unmarshal number {beyond} into {into} of type float64")


# api.ToolCall and api.ToolCallFunction, as api.Message's inner decoding reads them


def is_number(value: Any) -> bool:
    """A number Go reads into a float64 (an integer beyond 64 bits too)."""
    if isinstance(value, int | float):
        return not isinstance(value, bool)
    return whole_literal(value) is not None


# api.ToolProperty (api/types.go), what api.ToolPropertiesMap's UnmarshalJSON decodes
# each property into (`_properties_steps`).
_PROPERTY_FIELDS: dict[str, tuple[str, str, Shape | None]] = {
    "anyof": ("[]property", "[]api.ToolProperty", None),
    "type": ("property_type", "api.PropertyType", None),
    "items": ("any", "interface {}", None),
    "description": ("string", "string", None),
    "enum": ("[]any", "[]interface {}", None),
    "properties": ("properties", "api.ToolPropertiesMap", None),
    "required": ("[]string", "[]string", None),
}
_TOOL_PROPERTY = Shape("ToolProperty", "api.ToolProperty", _PROPERTY_FIELDS, {"anyof": "anyOf"})
# The fields of a property a string fits (`strings_alone`).
_STRING_PROPERTY_FIELDS = frozenset({"type", "description", "items"})


def _properties_steps(value: Any, struct: str, path: str) -> _Steps:
    """An api.ToolPropertiesMap (a tool's `parameters.properties`, a property's own) at
    `struct`.`path`, not null (a pointer: null sets it to nil): its UnmarshalJSON is
    wk8/go-ordered-map's, jsonparser's ObjectEach (anything but an object is its error,
    `NOT_AN_OBJECT`) and json.Unmarshal of each value in turn into an api.ToolProperty
    (null: the zero one). That decoding's first error, which the request's decoding
    puts in its context, ends the decoding (`Aborts`). Each level is looked at, as
    deep as the reading holds values (`go_deep.unread`): a few hundred levels at most
    (`go_deep.KEPT_DEPTH` in a body deeper than orjson writes), so that the paths
    written on the way down cost little."""
    if not isinstance(value, dict):
        raise Aborts(NOT_AN_OBJECT)
    for prop in value.values():
        if prop is None or unread(prop) or strings_alone(prop, _STRING_PROPERTY_FIELDS):
            continue
        try:
            if not isinstance(prop, dict):
                raise type_error(prop, struct, path, _TOOL_PROPERTY.go_type)
            yield _struct_steps(prop, _TOOL_PROPERTY, path, struct)
        except Aborts:
            raise
        except BodyError as exc:
            raise Aborts(str(exc)) from None


def _check_property_type(value: Any, struct: str, path: str) -> None:
    """api.PropertyType's UnmarshalJSON (null too, which it takes): a string, else
    json.Unmarshal into a []string, whose error (its first element of another type, a
    null one being "") it returns, ending the decoding (`Aborts`)."""
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list):
        raise Aborts(str(type_error(value, struct, path, "[]string")))
    for item in value:
        if item is not None and not isinstance(item, str):
            raise Aborts(str(type_error(item, struct, path, "string")))

"""Byte-level imitation of what Ollama's Go stack puts on the wire.

* Request bodies are decoded the way Gin's `ShouldBindJSON` (encoding/json) does: the
  first JSON value is read and trailing bytes ignored, an empty body is `io.EOF`
  (Ollama answers `missing request body`), syntax and type errors carry Go's wording,
  and so does a number beyond a double where Go parses it (`BeyondADouble`).
* Responses are serialised like `json.Marshal`: compact, `<`, `>`, `&`, U+2028 and
  U+2029 escaped, no trailing newline for `c.JSON` and one for `json.NewEncoder`.
* Unknown paths and wrong methods get Gin's plain-text `404 page not found` /
  `405 method not allowed` (Ollama sets `HandleMethodNotAllowed = true`), as
  `proxy.errors.gin_refusal` writes them.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from proxy.go_json import go_text, in_last_order
from proxy.protocol import JSON, go_escaped
from selector_model.request_body import canonicalize

JSON_BARE = "application/json"  # what the OpenAI writers and waitForStream set


class BodyError(Exception):
    """A request body Gin would refuse; str(self) is the Go error text."""


def _go_numbers(obj: Any) -> Any:
    """Go prints a whole float64 without a fraction (1, not 1.0)."""
    if isinstance(obj, float):
        return int(obj) if obj.is_integer() and abs(obj) < 1e21 else obj
    if isinstance(obj, dict):
        return {k: _go_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_go_numbers(v) for v in obj]
    return obj


def dumps(obj: Any, *, sort_keys: bool = False) -> bytes:
    """json.Marshal: compact, with Go's HTML-safe escaping (those characters can only
    occur inside strings, so replacing them in the output is exact)."""
    raw = orjson.dumps(_go_numbers(obj), option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    return go_escaped(raw)


def unix_of(stamp: str) -> int:
    """Unix seconds of an RFC 3339 timestamp as go_time() writes it."""
    whole = stamp.split(".")[0].rstrip("Z")
    return int(dt.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp())


def gin_json(status: int, obj: Any, *, sort_keys: bool = False) -> web.Response:
    """c.JSON / c.AbortWithStatusJSON."""
    return web.Response(
        status=status, body=dumps(obj, sort_keys=sort_keys), headers={"Content-Type": JSON}
    )


def encoder_json(status: int, obj: Any, content_type: str = JSON_BARE) -> web.Response:
    """json.NewEncoder(w).Encode(obj): as Marshal plus a newline."""
    return web.Response(
        status=status, body=dumps(obj) + b"\n", headers={"Content-Type": content_type}
    )


def error(status: int, message: str) -> web.Response:
    """The native `{"error": "..."}` body."""
    return gin_json(status, {"error": message})


def empty_ok() -> web.Response:
    """A handler that returns without writing: 200, no body, no Content-Type."""
    resp = web.Response(status=200)
    resp.content_type = ""  # aiohttp would otherwise announce application/octet-stream
    return resp


# Decoding -----------------------------------------------------------------------------


_GO_ESCAPES = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}


def _go_char(byte: int) -> str:
    """encoding/json's quoteChar: the byte its scanner stopped at, read as a rune and
    quoted as strconv.Quote quotes it (between single quotes)."""
    c = chr(byte)
    if c == "'":
        return "'\\''"
    if byte in _GO_ESCAPES:
        return f"'{_GO_ESCAPES[byte]}'"
    if byte < 0x20 or byte == 0x7F:
        return f"'\\x{byte:02x}'"
    if c == "\\":
        return "'\\\\'"
    return f"'{c}'" if c.isprintable() else f"'\\u{byte:04x}'"


def _byte_at(raw: bytes, doc: str, pos: int) -> int:
    """The byte of `raw` that `doc[pos]` stands for, `doc` being `go_text(raw)`: Go's
    scanner reads bytes, and a U+FFFD that `go_text` wrote stands for one byte."""
    offset = 0
    for c in doc[:pos]:
        if c == "\ufffd" and not raw.startswith(b"\xef\xbf\xbd", offset):
            offset += 1
        else:
            offset += len(c.encode())
    return raw[offset]


def _context_at(doc: str, pos: int) -> str:
    """Whether position `pos` sits inside an object or an array (for Go's wording)."""
    stack: list[str] = []
    in_str = esc = False
    for c in doc[:pos]:
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            stack.append(c)
        elif c in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _syntax_message(raw: bytes, doc: str, exc: json.JSONDecodeError) -> str:
    pos = exc.pos
    if pos >= len(doc) or exc.msg.startswith("Unterminated"):
        return "unexpected EOF"
    c = _byte_at(raw, doc, pos)
    msg = exc.msg
    if msg.startswith("Expecting property name"):
        return f"invalid character {_go_char(c)} looking for beginning of object key string"
    if msg.startswith("Expecting ':'"):
        return f"invalid character {_go_char(c)} after object key"
    if msg.startswith("Expecting ','"):
        if _context_at(doc, pos) == "{":
            return f"invalid character {_go_char(c)} after object key:value pair"
        return f"invalid character {_go_char(c)} after array element"
    if msg.startswith("Invalid control character"):
        return f"invalid character {_go_char(c)} in string literal"
    if msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\u"):
        escaped = _byte_at(raw, doc, pos + 1) if pos + 1 < len(doc) else c
        return f"invalid character {_go_char(escaped)} in string escape code"
    return f"invalid character {_go_char(c)} looking for beginning of value"


class BeyondADouble:
    """A JSON number beyond a double, as written: Go's ParseFloat (into a float64 or an
    `any`) and ParseInt (into an int) refuse it, and json.Unmarshal names the field
    (`check_fields`)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _number(text: str) -> int | float | BeyondADouble:
    number = float(text)  # rounds as Go's ParseFloat does, to infinity beyond a double
    if math.isinf(number):
        return BeyondADouble(text)
    if "." in text or "e" in text or "E" in text:
        return number
    return int(text)


# Go's scanner refuses each at the first character that cannot begin a value (after
# a minus sign, the first it cannot continue a number with); Python's json reads them.
_CONSTANTS = {
    "NaN": "invalid character 'N' looking for beginning of value",
    "Infinity": "invalid character 'I' looking for beginning of value",
    "-Infinity": "invalid character 'I' in numeric literal",
}


def _constant(text: str) -> Any:
    raise BodyError(_CONSTANTS[text])


_DECODER = json.JSONDecoder(
    object_pairs_hook=in_last_order,
    parse_int=_number,
    parse_float=_number,
    parse_constant=_constant,
)


def _beyond_a_double(value: Any) -> BeyondADouble | None:
    """The first number beyond a double in `value`, in document order."""
    if isinstance(value, BeyondADouble):
        return value
    children = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    )
    for child in children:
        found = _beyond_a_double(child)
        if found is not None:
            return found
    return None


def decode_json(raw: bytes) -> Any:
    """Decode the first JSON value of a body like json.Decoder.Decode; a number beyond
    a double is a `BeyondADouble`.

    Raises EOFError for an empty (or all-whitespace) body and BodyError otherwise."""
    doc = go_text(raw)
    start = len(doc) - len(doc.lstrip(" \t\r\n"))
    if start == len(doc):
        raise EOFError
    try:
        value, _ = _DECODER.raw_decode(doc, start)
    except json.JSONDecodeError as exc:
        raise BodyError(_syntax_message(raw, doc, exc)) from None
    except RecursionError:
        raise BodyError("exceeded max depth") from None
    return value


# Field type checking (the errors json.Unmarshal gives for a wrong type) -----------------

_KIND_OF = {
    str: "string",
    bool: "bool",
    int: "number",
    float: "number",
    list: "array",
    dict: "object",
}

_GO_TYPE = {
    "string": "string",
    "bool": "bool",
    "int": "int",
    "float": "float64",
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
    "int": "int",
    "[]int": "int",
    "map": "float64",
    "duration": "float64",
}


def _kind(value: Any) -> str:
    return _KIND_OF.get(type(value), "value")


def _fits(value: Any, want: str) -> bool:
    if value is None or want in ("any", "duration"):
        return True
    if want == "string":
        return isinstance(value, str)
    if want == "bool":
        return isinstance(value, bool)
    if want == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if want == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if want in ("map", "object"):
        return isinstance(value, dict)
    return isinstance(value, list)  # every "[]..." kind, messages, tools, images


def type_error(value: Any, struct: str, field_path: str, go_type: str) -> BodyError:
    kind = _kind(value)
    if kind == "number" and go_type == "int" and isinstance(value, float):
        kind = f"number {value:g}"
    return BodyError(
        f"json: cannot unmarshal {kind} into Go struct field "
        f"{struct}.{field_path} of type {go_type}"
    )


def check_fields(body: Any, struct: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """Check `body` against a Go struct description {json name: kind}.

    Kinds: string, bool, int, float, map, object, any, duration (an api.Duration:
    any, its number parsed), []int, []string, images, messages, tools. Returns the
    body as a dict (JSON null decodes to the zero struct)."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise BodyError(f"json: cannot unmarshal {_kind(body)} into Go value of type api.{struct}")
    # Go matches a key to a field whatever its case (`Model` is `model`), the last of
    # the keys that name a field winning: one lower-case key per field, as Go reads it.
    canonicalize(body)
    for key, want in fields.items():
        value = body.get(key)
        if value is None:
            continue
        beyond = _beyond_a_double(value) if want in _PARSED_NUMBERS else None
        if beyond is not None:
            go_type = _PARSED_NUMBERS[want]
            raise BodyError(
                f"json: cannot unmarshal number {beyond.text} into Go struct field "
                f"{struct}.{key} of type {go_type}"
            )
        if not _fits(value, want):
            raise type_error(value, struct, key, _GO_TYPE.get(want, want))
        if want == "[]int":
            for item in value:
                if not _fits(item, "int"):
                    raise type_error(item, struct, key, "int")
        elif want == "[]string":
            for item in value:
                if not _fits(item, "string"):
                    raise type_error(item, struct, key, "string")
        elif want == "images":
            for item in value:
                check_image(item, struct, key)
        elif want == "messages":
            for item in value:
                check_message(item)
        elif want in ("tools", "[]api.Tool"):
            for item in value:
                check_tool(item, struct, key)
    return body


# api.Tool, api.ToolFunction and api.ToolFunctionParameters, as far as their types are
# plain (`properties` has an UnmarshalJSON of its own, unchecked): (JSON name, kind,
# the Go type named in an error). Go names the innermost struct and the field's whole
# path from the request (`Tool.tools.function`).
_TOOL_FIELDS = (("type", "string", "string"), ("function", "object", "api.ToolFunction"))
_FUNCTION_FIELDS = (
    ("name", "string", "string"),
    ("description", "string", "string"),
    ("parameters", "object", "api.ToolFunctionParameters"),
)
_PARAMETERS_FIELDS = (
    ("type", "string", "string"),
    ("required", "[]string", "[]string"),
)


def check_tool(item: Any, struct: str, key: str) -> None:
    """One element of a request's `tools` ([]api.Tool)."""
    if item is None:
        return
    if not isinstance(item, dict):
        raise type_error(item, struct, key, "api.Tool")
    _check_struct(item, "Tool", key, _TOOL_FIELDS)
    function = item.get("function")
    if isinstance(function, dict):
        path = f"{key}.function"
        _check_struct(function, "ToolFunction", path, _FUNCTION_FIELDS)
        parameters = function.get("parameters")
        if isinstance(parameters, dict):
            _check_struct(
                parameters, "ToolFunctionParameters", f"{path}.parameters", _PARAMETERS_FIELDS
            )


def _check_struct(
    value: dict[str, Any], struct: str, path: str, fields: tuple[tuple[str, str, str], ...]
) -> None:
    for name, kind, go_type in fields:
        field = value.get(name)
        if field is None:
            continue
        if not _fits(field, kind):
            raise type_error(field, struct, f"{path}.{name}", go_type)
        if kind == "[]string":
            for item in field:
                if not _fits(item, "string"):
                    raise type_error(item, struct, f"{path}.{name}", "string")


def check_image(item: Any, struct: str, key: str) -> None:
    """api.ImageData is []byte: a base64 string (std alphabet, padded)."""
    if not isinstance(item, str):
        raise type_error(item, struct, key, "api.ImageData")
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    body = item.rstrip("=")
    for i, c in enumerate(body):
        if c not in alphabet:
            raise BodyError(f"illegal base64 data at input byte {i}")
    if len(item) % 4 or len(item) - len(body) > 2:
        raise BodyError(f"illegal base64 data at input byte {len(body)}")


_MESSAGE_FIELDS = {
    "role": "string",
    "content": "string",
    "thinking": "string",
    "images": "images",
    "tool_calls": "[]",
    "tool_name": "string",
    "tool_call_id": "string",
}


def check_message(item: Any) -> None:
    """api.Message has its own UnmarshalJSON (via an Alias type), so Go reports errors
    inside it against the struct `Alias` rather than the enclosing request."""
    if item is None:
        return
    if not isinstance(item, dict):
        raise BodyError(f"json: cannot unmarshal {_kind(item)} into Go value of type api.Alias")
    for key, want in _MESSAGE_FIELDS.items():
        value = item.get(key)
        if value is None:
            continue
        if want == "images":
            if not isinstance(value, list):
                raise type_error(value, "Alias", key, "[]api.ImageData")
            for img in value:
                check_image(img, "Alias", key)
        elif want == "[]":
            if not isinstance(value, list):
                raise type_error(value, "Alias", key, "[]api.ToolCall")
        elif not _fits(value, want):
            raise type_error(value, "Alias", key, _GO_TYPE[want])

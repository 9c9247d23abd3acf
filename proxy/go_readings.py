"""A body's first value as Go reads it, however deep, and the readings of a body for the
errors Go gives.

`first_value` reads it with Go's substitutions and order (`proxy.go_decoding`), each
value below `go_deep.KEPT_DEPTH` levels kept as written; `whole` reads those too, for
what Go writes again as it read it. `read_written` keeps each number that is no integer
as written (`WrittenFloat`), for the error an int field gives naming it, and
`read_repeated` each object that gives a key twice as its pairs (`Pairs`), for what Go
assigns, and refuses, before the last value. `decode_error` and `unmarshal_error` are
what json.Decoder.Decode and json.Unmarshal say of a body that is no JSON value (or,
to json.Unmarshal, one with more than blanks after it).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from proxy.go_decoding import (
    GO_ORDER,
    WHITESPACE,
    Decoded,
    NotJson,
    TooDeep,
    decoded,
    go_decoder,
    orjson_number,
    read_as_go,
)
from proxy.go_deep import deep_values, put_back, unread, with_placeholders
from proxy.go_raw_message import compact
from proxy.go_syntax_errors import GO_READS_IT, byte_at, go_char
from selector_model.request_body import canonical_key


def _first(raw: bytes, decoder: json.JSONDecoder) -> Decoded:
    """`first_value`, with the body it read and where the value ends (in the body with
    its deep values placed, where it has any)."""
    try:
        return decoded(raw, decoder)
    except TooDeep:
        pass
    # Go reads up to `go_deep.GO_MAX_DEPTH` levels: what is deeper than Python's json
    # goes is read as a placeholder, once Go's scanner finds no error in it, and put back.
    spans = deep_values(raw)
    shallow, tag = with_placeholders(raw, spans)
    read = decoded(shallow, decoder)
    placed = {f"{tag}-{n}": compact(raw[start:end]) for n, (start, end) in enumerate(spans)}
    put_back(read.value, placed)
    return read


def first_value(raw: bytes, decoder: json.JSONDecoder = GO_ORDER) -> Any:
    """The first JSON value of `raw` as json.Decoder.Decode reads it, each number and
    object as `decoder` makes them (`go_decoder`); NotJson with Go's error where Go
    finds none. A value nested deeper than Python's json goes is read with each value
    below `go_deep.KEPT_DEPTH` levels as written, compacted (an orjson.Fragment, `unread`;
    `whole` reads it). The one reading of a body's first value for what answers Go's
    errors: the emulator's, and the proxy's where it answers in Ollama's words
    (`decode_error`, `unmarshal_error`)."""
    return _first(raw, decoder).value


def whole(value: Any, decoder: json.JSONDecoder = GO_ORDER) -> Any:
    """`value`, of `first_value`'s reading with `decoder`, with each value it holds
    as written (`unread`) read, however deep: for what Go writes again as it read it
    (a map), which the reading's own depth would cut short. A loop, not a recursion.
    Changes `value`'s objects and arrays in place."""
    top = [value]
    pending: list[Any] = [top]
    while pending:
        container = pending.pop()
        for key, item in list(
            container.items() if isinstance(container, dict) else enumerate(container)
        ):
            if unread(item):
                item = container[key] = first_value(orjson.dumps(item), decoder)
            if isinstance(item, dict | list):
                pending.append(item)
    return top[0]


class WrittenFloat(float):
    """A number that is no integer, with its text as the client wrote it: an int field
    refuses it naming that text (encoding/json's literalStore), which a double loses
    (`1e3` reads as 1000.0). Only `read_written` keeps it."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> WrittenFloat:
        number = super().__new__(cls, text)
        number.text = text
        return number


def _written_number(text: str) -> int | float | orjson.Fragment:
    number = orjson_number(text)
    return WrittenFloat(text) if type(number) is float else number


_WRITTEN = go_decoder(_written_number)


def read_written(body: bytes) -> Any:
    """`body` read as Go reads it, each number that is no integer a `WrittenFloat`, for
    the error that names one as written; None when the body is too deep for this
    reading (`go_json._read_deep`) or no JSON. A slower reading than `go_json.read`'s,
    for a body already refused."""
    try:
        return read_as_go(body, _WRITTEN)
    except (TooDeep, NotJson):
        return None


def _as_text(value: Any) -> orjson.Fragment:
    if isinstance(value, WrittenFloat):
        return orjson.Fragment(value.text)
    raise TypeError


def written_as_read(doc: Any) -> bytes | None:
    """`doc`, of a reading that keeps numbers as written (`read_written`'s, or
    `read_repeated`'s merged by `go_merge.go_decoded`), written as JSON, each number
    that is no integer as the client wrote it (a `WrittenFloat`); None where it is
    nested too deep for orjson to write."""
    try:
        return orjson.dumps(doc, default=_as_text)
    except orjson.JSONEncodeError:
        return None


class Pairs(list[tuple[str, Any]]):
    """An object of `read_repeated`'s reading whose keys fold alike (a key given twice,
    in any case) or that holds such an object: its keys and values as the body gives
    them, in order, every one of them."""


def holds_pairs(value: Any) -> bool:
    """Whether `value` is, or an array of it holds, a `Pairs`."""
    if isinstance(value, list):
        return isinstance(value, Pairs) or any(holds_pairs(item) for item in value)
    return False


def _pairs_or_object(pairs: list[tuple[str, Any]]) -> Any:
    keys = {canonical_key(key) for key, _ in pairs}
    if len(keys) < len(pairs) or any(holds_pairs(value) for _, value in pairs):
        return Pairs(pairs)
    return dict(pairs)


_REPEATED = go_decoder(_written_number, _pairs_or_object)


def read_repeated(body: bytes) -> Any:
    """`body` read as Go reads it, but each object on the way to a key given twice a
    `Pairs`, which keeps the earlier values Go assigns (and may refuse) before the
    last; each number that is no integer a `WrittenFloat` (`read_written`). None when
    the body is too deep for this reading or no JSON. For a body `go_json.left_out`
    says lost a value: Go's error for it (`go_requests.first_error`)."""
    try:
        return read_as_go(body, _REPEATED)
    except (TooDeep, NotJson):
        return None


def decode_error(body: bytes) -> str:
    """What Go's json.Decoder.Decode says of a body `go_json.read` finds no JSON value in
    (its document None): "EOF" for a body of blanks (Ollama's handlers answer their own
    words for it), the scanner's syntax error where it stops, however deep, nesting
    beyond `go_deep.GO_MAX_DEPTH` levels among them; `GO_READS_IT` for a body with a value."""
    try:
        first_value(body)
    except NotJson as exc:
        return exc.message
    return GO_READS_IT


# json.Unmarshal's error for input that ends before its value does.
NO_INPUT = "unexpected end of JSON input"


def unmarshal_error(data: bytes) -> str | None:
    """What json.Unmarshal says of `data` that is not one JSON value, None where it is:
    its scanner reads all of `data` before anything is decoded (checkValid), so a byte
    other than a blank after the value is refused, and at the end the scanner steps on
    a blank (scanner.eof), which refuses a literal or a number cut short where it stands
    and leaves anything else cut short "unexpected end of JSON input"."""
    try:
        read = _first(data + b" ", GO_ORDER)
    except NotJson as exc:
        error = exc.message
        return NO_INPUT if error in ("EOF", "unexpected EOF") else error
    text = read.text
    rest = text[read.end :].lstrip(WHITESPACE)
    if not rest:
        return None
    at = len(text) - len(rest)
    return f"invalid character {go_char(byte_at(read.raw, text, at))} after top-level value"

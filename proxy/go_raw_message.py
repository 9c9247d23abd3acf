"""JSON values kept as written, as Go keeps a json.RawMessage: `value_bytes`, the bytes
a struct field of that type takes from a body, and `compact`, such bytes as json.Compact
writes them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from proxy.go_decoding import GO_ORDER, NotANumber, NotJson, TooDeep
from proxy.go_deep import deep_values, with_placeholders
from selector_model.request_body import canonical_key

# A JSON string, escapes and all: what `compact` leaves as it is, and `go_json.values`
# reads as one plain value.
JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
BLANKS = b" \t\r\n"


# A JSON string, its escapes and all, as a group of its own: `re.split` keeps it.
_STRING_SPLIT = re.compile(b"(" + JSON_STRING.pattern + b")")


def compact(value: bytes) -> bytes:
    """`value`, JSON text, as json.Compact writes it: its blanks outside strings left
    out, every other byte (a string's escapes, a number's spelling) as it is. Go's
    json.Marshal writes a json.RawMessage so, with `protocol.go_escaped`'s escapes."""
    pieces = _STRING_SPLIT.split(value)
    pieces[::2] = [piece.translate(None, BLANKS) for piece in pieces[::2]]
    return b"".join(pieces)


_BLANK_RUN = re.compile(r"[ \t\r\n]*")
# The reading of one value at a place in a text, and where it ends (json.scanner's).
_SCAN: Callable[[str, int], tuple[Any, int]] = GO_ORDER.scan_once  # type: ignore[attr-defined]


def value_bytes(body: bytes, path: tuple[str, ...]) -> bytes | None:
    """The bytes, as written, of the value Go's decoder takes for the struct field at
    `path` (field names, each in an object the last named) in `body`'s first value, a
    json.RawMessage's (which keeps them as they come): the last value in the body at a
    key that folds to its name (`canonical_key`), each object on the way to it decoded
    into the one struct (a pointer Go reuses). None where there is none, or no JSON. A
    value deeper than Python's json reads is placed and put back (`deep_values`)."""
    try:
        return _value_bytes(body, path)
    except TooDeep:
        pass
    try:
        spans = deep_values(body)
    except NotJson:
        return None
    shallow, tag = with_placeholders(body, spans)
    written = _value_bytes(shallow, path)
    if written is None:
        return None
    marks = re.compile(rb'"%s-(\d+)"' % tag.encode())

    def put_back(mark: re.Match[bytes]) -> bytes:
        start, end = spans[int(mark[1])]
        return body[start:end]

    return marks.sub(put_back, written)


def _value_bytes(body: bytes, path: tuple[str, ...]) -> bytes | None:
    # Surrogate escapes keep each byte, invalid UTF-8 too, for the way back.
    text = body.decode("utf-8", "surrogateescape")
    try:
        span, _ = _last_member(text, _BLANK_RUN.match(text).end(), path)  # type: ignore[union-attr]
    except RecursionError:
        raise TooDeep from None
    except (ValueError, IndexError, StopIteration, NotANumber):
        return None
    if span is None:
        return None
    return text[span[0] : span[1]].encode("utf-8", "surrogateescape")


def _last_member(text: str, pos: int, path: tuple[str, ...]) -> tuple[tuple[int, int] | None, int]:
    """The span of `value_bytes`'s value in the value at `pos` of `text` (None where it
    has none: no object, or none at `path`), and where that value ends."""
    scan, blanks = _SCAN, _BLANK_RUN.match
    if text[pos] != "{":
        return None, scan(text, pos)[1]
    found: tuple[int, int] | None = None
    pos = blanks(text, pos + 1).end()  # type: ignore[union-attr]
    if text[pos] == "}":
        return None, pos + 1
    while True:
        key, pos = scan(text, pos)
        start = blanks(text, blanks(text, pos).end() + 1).end()  # type: ignore[union-attr]
        if canonical_key(key) != path[0]:
            pos = scan(text, start)[1]
        elif len(path) == 1:
            pos = scan(text, start)[1]
            found = (start, pos)
        else:
            inner, pos = _last_member(text, start, path[1:])
            if inner is not None or text[start] == "n":  # a null sets the pointer nil
                found = inner
        pos = blanks(text, pos).end() + 1  # type: ignore[union-attr]
        if text[pos - 1] == "}":
            return found, pos
        pos = blanks(text, pos).end()  # type: ignore[union-attr]

"""Python's json made to read a body's first value as Go's encoding/json reads it.

Go's decoder reads each byte of invalid UTF-8 in a string as U+FFFD, and a surrogate
escape that is not half of a pair as U+FFFD too (`go_text`); among keys that fold alike
it keeps the last (`in_last_order`); it refuses NaN and Infinity, and a number its
scanner reads on past where Python's json stops (`1.`, `1e`). `decoded` reads the first
value of a body so, with a decoder of `go_decoder`'s (`GO_ORDER` reads each number as
orjson reads one, `orjson_number`): `NotJson` with Go's error where Go finds no value,
`TooDeep` where the value is nested deeper than Python's json goes (`proxy.go_deep`
reads such a value).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import orjson

from proxy.go_syntax_errors import CONSTANTS, literal_error, syntax_message


class NotJson(Exception):
    """No JSON value first in a body, to Go's decoder either: `message` is what
    json.Decoder.Decode says of it ("EOF" for a body of blanks), worked out when asked
    for, as it costs a Python step per character before where Go stops, and a body the
    proxy forwards as sent never asks."""

    def __init__(self, message: str | Callable[[], str]) -> None:
        super().__init__()
        self._message = message

    @property
    def message(self) -> str:
        message = self._message
        return message if isinstance(message, str) else message()

    def __str__(self) -> str:
        return self.message


# What a byte of invalid UTF-8 becomes in a "surrogateescape" decoding (U+DC00 plus the
# byte, which is 0x80 or more), and nothing else does: Python's UTF-8 decoder refuses an
# encoded surrogate, as Go's does, so no valid text holds one.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


# Bytes of an invalid body decoded per C call (milliseconds each): one call over a body
# of megabytes would hold the GIL, and so the event loop, for seconds.
_PIECE = 128 * 1024


def _go_decode(raw: bytes, piece: int = _PIECE) -> str:
    """`raw` as Go's decoder reads a string's bytes: each byte of invalid UTF-8 a U+FFFD
    (utf8.DecodeRune reads one byte of an invalid sequence at a time, where Python's
    "replace" writes one U+FFFD per sequence). Marked and replaced in C, a piece at a
    time: an error handler would be a Python call per such byte, seconds for megabytes
    of them."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    pieces = []
    start, size = 0, len(raw)
    while start < size:
        end = min(start + piece, size)
        # Not inside a rune: past the continuation bytes (0x80-0xBF) a cut would leave
        # on its far side, three at most (a rune has four bytes at most).
        for _ in range(3):
            if end < size and 0x80 <= raw[end] < 0xC0:
                end += 1
            else:
                break
        text = raw[start:end].decode("utf-8", "surrogateescape")
        pieces.append(_ESCAPED_BYTE.sub("\ufffd", text))
        start = end
    return "".join(pieces)


# A \uXXXX surrogate escape that is not half of a pair; other escapes are matched whole
# so that an escaped backslash is never read as the start of one.
_ESCAPE = re.compile(
    r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    r"|(u[dD][89a-fA-F][0-9a-fA-F]{2})|.)",
    re.DOTALL,
)
WHITESPACE = " \t\r\n"


class NotANumber(Exception):
    """NaN or Infinity: no JSON to Go."""


def in_last_order(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys stand where each last appeared: Go assigns a field at each
    of its keys in turn, so among the keys that fold alike the last one's value is what
    Go keeps (orjson keeps an exact duplicate where it first appeared)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.pop(key, None)
        out[key] = value
    return out


def orjson_number(text: str) -> int | float | orjson.Fragment:
    """A number as orjson reads one: a 64-bit integer, else a double; one beyond a
    double as written, a JSON fragment orjson writes back verbatim. Go refuses such a
    number wherever it decodes one (ParseFloat into an `any` or a float64, ParseInt into
    an int), naming the field; it reaches the backend as sent, which answers that, and
    no check of the proxy's reads it as a number. So does an integer beyond 64 bits
    (orjson would read a double): an int field refuses it naming it as written
    (encoding/json's literalStore), a float64 reads it (`go_types.whole_literal`)."""
    if "." not in text and "e" not in text and "E" not in text:
        # 21 characters or more: beyond 64 bits, and no int() of a huge digit string.
        if len(text) < 21:
            value = int(text)
            if -(2**63) <= value < 2**64:
                return value
        return orjson.Fragment(text)
    number = float(text)
    if number in (float("inf"), float("-inf")):
        return orjson.Fragment(text)
    return number


def _not_a_number(text: str) -> Any:
    raise NotANumber(text)


def go_decoder(
    number: Callable[[str], Any],
    pairs: Callable[[list[tuple[str, Any]]], Any] = in_last_order,
) -> json.JSONDecoder:
    """A decoder for `go_readings.first_value`: each number read by `number`, each object made by
    `pairs` (Go's order among repeated keys, `in_last_order`); NaN and Infinity are no
    JSON to Go (`CONSTANTS`)."""
    return json.JSONDecoder(
        object_pairs_hook=pairs, parse_int=number, parse_float=number, parse_constant=_not_a_number
    )


GO_ORDER = go_decoder(orjson_number)


# What any lone surrogate escape starts with: a text without one is left as it is, not
# searched escape by escape (a Python call each; seconds for millions of `\n`).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(match: re.Match[str]) -> str:
    return "\\ufffd" if match.group(1) else match.group(0)


def go_string(raw: bytes) -> str:
    """A Go string of these bytes as encoding/json writes it: each byte of invalid
    UTF-8 a U+FFFD."""
    return _go_decode(raw)


def go_text(body: bytes) -> str:
    """`body` as the text Go's decoder reads: U+FFFD for each byte of invalid UTF-8,
    and a U+FFFD escape for each surrogate escape that is not half of a pair."""
    text = _go_decode(body)
    if "\\" in text and _SURROGATE_ESCAPE.search(text):
        text = _ESCAPE.sub(_lone_surrogate, text)
    return text


class TooDeep(Exception):
    """Nested deeper than orjson or Python's json reads or writes: `go_json._read_deep`."""


class Decoded(NamedTuple):
    """A body's first value as `decoded` read it, and where: `raw` the body read,
    `text` its `go_text`, `end` where the value ends in it."""

    value: Any
    raw: bytes
    text: str
    end: int


def decoded(raw: bytes, decoder: json.JSONDecoder) -> Decoded:
    """The first JSON value of `raw` with Go's substitutions (`go_text`), read by
    `decoder` (`go_decoder`); NotJson with Go's error where Go finds none, TooDeep
    where the value is nested deeper than Python's json goes."""
    text = go_text(raw)
    start = len(text) - len(text.lstrip(WHITESPACE))
    if start == len(text):
        raise NotJson("EOF")
    try:
        value, end = decoder.raw_decode(text, start)
    except RecursionError:
        raise TooDeep from None
    except json.JSONDecodeError as exc:
        # json's grammar is Go's: Go refuses this body too.
        raise NotJson(partial(syntax_message, raw, text, exc)) from None
    except NotANumber as exc:
        raise NotJson(CONSTANTS[exc.args[0]]) from None
    cut_short = _number_read_on(raw, text, end)
    if cut_short is not None:
        raise NotJson(cut_short)
    return Decoded(value, raw, text, end)


def read_as_go(body: bytes, decoder: json.JSONDecoder = GO_ORDER) -> Any:
    """The first JSON value of `body` with Go's substitutions (`go_text`) and Go's
    order among repeated keys: `decoded`'s, TooDeep for `go_json._read_deep`."""
    return decoded(body, decoder).value


def _number_read_on(raw: bytes, doc: str, end: int) -> str | None:
    """Go's Decoder's error where the top-level value Python's json read from `doc`
    (`go_text(raw)`) ends at `end` in a number Go's scanner reads on (`1.`, `1e`), None
    where it ends there too: Python's json reads the `1` and stops."""
    return literal_error(raw, doc, end, "") if end < len(doc) else None

"""A model-routed request body read as Ollama reads it, and the body forwarded instead.

Ollama decodes bodies with Go's encoding/json (gin's ShouldBindJSON), which differs from
orjson where a client can exploit it: it matches keys to fields case-insensitively (the
last match wins: `{"model": "a", "Model": "b"}` runs b), merges a repeated object-valued
key into what an earlier one set, reads invalid UTF-8 in strings as U+FFFD (a lone
surrogate escape too), and ignores the bytes after the first JSON value. Checking the
body orjson reads while forwarding the bytes Go reads would let a client run what it
was refused.

So the proxy never forwards the client's bytes on these routes: `read` decodes the
first value as Go does, makes the objects the proxy reads canonical (one key per Go
field, `selector_model.request_body.canonicalize`) and forwards that document
serialised. orjson's serialisation has no duplicate key, valid UTF-8 and nothing after
the value, so the backend reads exactly what the proxy checked. A body that is no JSON
to Go either goes as sent, with no model, for the backend to answer its own error; so
does one nested deeper than Go reads (`GO_MAX_DEPTH`). One nested deeper than orjson
reads or writes, which Go reads, is read to `KEPT_DEPTH` and each value below is
forwarded as written (`_read_deep`): the proxy reads nothing that deep. A number beyond
a double, which Go refuses where it decodes it, is forwarded as written (`_number`),
for the backend's own error; so is an integer beyond 64 bits, which Go names as written
where an int field refuses it; and a number that is no integer in a top-level field Go
reads as an int (`as_written`), which Go refuses naming it as written. One in a nested
int field (a tool call's `index`) goes as the proxy writes it (`1e2` as `100.0`), and
the backend names it so: finding it would cost a pass over the conversation. Where the
proxy answers itself (explain, feedback), a body that is no JSON to Go gets Go's
decoding error (`decode_error`).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, NamedTuple, TypeVar

import orjson

from selector_model.request_body import canonical_key, canonicalize

T = TypeVar("T")


class BodyError(Exception):
    """The proxy cannot read the body as Ollama would: answered with `status` in
    Ollama's shape."""

    status = 400


class TooManyValues(BodyError):
    """More JSON values than the proxy reads in one body (`limits.max_json_values`)."""

    status = 413


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
_WHITESPACE = " \t\r\n"


class _NotANumber(Exception):
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


def _number(text: str) -> int | float | orjson.Fragment:
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
    number = _number(text)
    return WrittenFloat(text) if type(number) is float else number


def _not_a_number(text: str) -> Any:
    raise _NotANumber(text)


def go_decoder(
    number: Callable[[str], Any],
    pairs: Callable[[list[tuple[str, Any]]], Any] = in_last_order,
) -> json.JSONDecoder:
    """A decoder for `first_value`: each number read by `number`, each object made by
    `pairs` (Go's order among repeated keys, `in_last_order`); NaN and Infinity are no
    JSON to Go (`CONSTANTS`)."""
    return json.JSONDecoder(
        object_pairs_hook=pairs, parse_int=number, parse_float=number, parse_constant=_not_a_number
    )


_GO_ORDER = go_decoder(_number)
_WRITTEN = go_decoder(_written_number)


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


class _TooDeep(Exception):
    """Nested deeper than orjson or Python's json reads or writes: `_read_deep`."""


class _Read(NamedTuple):
    """A body's first value as `_decoded` read it, and where: `raw` the body read,
    `text` its `go_text`, `end` where the value ends in it."""

    value: Any
    raw: bytes
    text: str
    end: int


def _decoded(raw: bytes, decoder: json.JSONDecoder) -> _Read:
    """The first JSON value of `raw` with Go's substitutions (`go_text`), read by
    `decoder` (`go_decoder`); NotJson with Go's error where Go finds none, _TooDeep
    where the value is nested deeper than Python's json goes."""
    text = go_text(raw)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    if start == len(text):
        raise NotJson("EOF")
    try:
        value, end = decoder.raw_decode(text, start)
    except RecursionError:
        raise _TooDeep from None
    except json.JSONDecodeError as exc:
        # json's grammar is Go's: Go refuses this body too.
        raise NotJson(partial(_syntax_message, raw, text, exc)) from None
    except _NotANumber as exc:
        raise NotJson(CONSTANTS[exc.args[0]]) from None
    cut_short = _number_read_on(raw, text, end)
    if cut_short is not None:
        raise NotJson(cut_short)
    return _Read(value, raw, text, end)


def _first(raw: bytes, decoder: json.JSONDecoder) -> _Read:
    """`first_value`, with the body it read and where the value ends."""
    while True:
        try:
            return _decoded(raw, decoder)
        except _TooDeep:
            # Go reads up to `GO_MAX_DEPTH` levels: what is deeper than Python's json
            # goes is read as a placeholder.
            shallow = without_deep_values(raw)
            if shallow is None or shallow == raw:
                raise NotJson("exceeded max depth") from None
            raw = shallow


def first_value(raw: bytes, decoder: json.JSONDecoder = _GO_ORDER) -> Any:
    """The first JSON value of `raw` as json.Decoder.Decode reads it, each number and
    object as `decoder` makes them (`go_decoder`); NotJson with Go's error where Go
    finds none. A value nested deeper than Python's json goes is read with each value
    below `KEPT_DEPTH` levels a placeholder string (`without_deep_values`). The one
    reading of a body's first value for what answers Go's errors: the emulator's, and
    the proxy's where it answers in Ollama's words (`decode_error`, `unmarshal_error`)."""
    return _first(raw, decoder).value


def _read_as_go(body: bytes, decoder: json.JSONDecoder = _GO_ORDER) -> Any:
    """The first JSON value of `body` with Go's substitutions (`go_text`) and Go's
    order among repeated keys: `_decoded`'s, _TooDeep for `_read_deep`."""
    return _decoded(body, decoder).value


def _number_read_on(raw: bytes, doc: str, end: int) -> str | None:
    """Go's Decoder's error where the top-level value Python's json read from `doc`
    (`go_text(raw)`) ends at `end` in a number Go's scanner reads on (`1.`, `1e`), None
    where it ends there too: Python's json reads the `1` and stops."""
    return _in_literal(raw, doc, end, "") if end < len(doc) else None


def read_written(body: bytes) -> Any:
    """`body` read as Go reads it, each number that is no integer a `WrittenFloat`, for
    the error that names one as written; None when the body is too deep for this
    reading (`_read_deep`) or no JSON. A slower reading than `read`'s, for a body
    already refused."""
    try:
        return _read_as_go(body, _WRITTEN)
    except (_TooDeep, NotJson):
        return None


def _as_text(value: Any) -> orjson.Fragment:
    if isinstance(value, WrittenFloat):
        return orjson.Fragment(value.text)
    raise TypeError


def as_written(body: bytes, model: str | None = None) -> bytes | None:
    """What `read` forwards for `body` (its `model` set to `model`, when given: the one
    `auto` chose), each number that is no integer as the client wrote it
    (`read_written`), for a body that holds one where Go reads an int, which refuses it
    naming that text; None where this reading fails (the body too deep)."""
    doc = read_written(body)
    if doc is None:
        return None
    if isinstance(doc, dict):
        canonicalize(doc)
        if model is not None:
            doc["model"] = model
    return written_as_read(doc)


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
    the body is too deep for this reading or no JSON. For a body `left_out` says
    lost a value: Go's error for it (`go_requests.first_error`)."""
    try:
        return _read_as_go(body, _REPEATED)
    except (_TooDeep, NotJson):
        return None


def left_out(body: bytes, forwarded: bytes) -> bool:
    """Whether `forwarded`, what `read` made of `body`, may lack a value of `body`: the
    earlier value of a key given twice, which Go assigns, and refuses where its type
    is wrong. Each pair of an object has its colon, and a colon in a string is written
    again as it was, so a body that loses no pair has as many colons forwarded as it
    had, unless it wrote some as an escape (`\\u003a`), which comes back a colon: any
    other count says a pair may be lost. orjson's reading keeps the last value of a key
    given twice without a word, so every body is looked at: a body forwarded as sent
    (a compact one with no escape) at the cost of comparing them, any other at two
    counts of one byte, no object made. A search for the escape would cost as much as
    both (a body of code holds a backslash in every line), and what it adds is a body
    whose escaped colons make up exactly for the pairs it loses: one made to pass
    this check, which the backend then runs with the last values, as checked."""
    if forwarded == body:
        return False
    return forwarded.count(b":") != body.count(b":")


# Every byte but those a value follows or opens with (`values`): what is left of a body
# with them deleted is its commas and brackets, counted in one pass by its length,
# where a count of each byte is a pass of its own.
_NOT_VALUE_STARTS = bytes(b for b in range(256) if b not in b",[{")
# A JSON string, escapes and all: what `values` reads as one plain value.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BLANKS = b" \t\r\n"


def values(body: bytes, limit: int) -> None:
    """Raise `TooManyValues` when `body` holds more than `limit` JSON values (0: no
    limit). Each value read becomes an object in the proxy's memory, tens of bytes for
    a two-byte `[]`, and reading them holds the event loop: megabytes of tiny values
    (which Ollama's decoder skips in a field it does not read) would cost the proxy
    gigabytes and seconds in which no other client is served. Counted from the bytes,
    no value made: a value is the document, or follows a comma or opens a non-empty
    container, so `1 + commas + containers` bounds the count; a string is a key or a
    value, and each key has a value, so there are at least half as many values as
    strings (two quotes each, less the escaped ones). Only a body the two bounds do not
    decide, commas or brackets in its strings, is counted exactly, each string read as
    a plain value and the blanks left out: a few strings then, a quick pass."""
    if not limit or 1 + len(body.translate(None, _NOT_VALUE_STARTS)) <= limit:
        return
    refused = TooManyValues(f"request body has too many JSON values (limit {limit})")
    if (body.count(b'"') - body.count(b'\\"')) // 4 > limit:
        raise refused
    bare = _STRING.sub(b"0", body).translate(None, _BLANKS)
    empty = bare.count(b"[]") + bare.count(b"{}")
    if 1 + bare.count(b",") + bare.count(b"[") + bare.count(b"{") - empty > limit:
        raise refused


# A body larger than this is read in a worker thread (`off_loop`): counting its values,
# orjson's reading and the canonical writing are C calls that hold the event loop for a
# good part of a second each near the body limit, and the reading in Go's way costs a
# Python call per byte of invalid UTF-8 and per escape, seconds for megabytes; the loop
# would serve no other client meanwhile. Below it, a few milliseconds at most: not worth
# the thread.
INLINE_BYTES = 64 * 1024

# The threads large bodies are read in. These reads hold the GIL, so more threads would
# read no faster; two keep one large body from waiting for another, and each C call of
# a read is one stall of the loop at most, not the sum of them. What waits for a thread
# is already bounded by the bodies the proxy holds at once (`limits.max_held_body_bytes`).
_READERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="autoroute-body")
# The thread of the readings that take a Python call per byte, escape or value (Go's
# way, `as_written`, a multipart form): seconds for megabytes, which any client can
# send one after another. They wait for each other here, never in front of the C
# readings of `_READERS`, so that no client's odd bodies hold up others' ordinary ones.
_SLOW_READERS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoroute-body-slow")


async def off_loop(size: int, work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` for a request body of `size` bytes: in a reader thread when the body
    is over `INLINE_BYTES`, else at once on the loop."""
    if size <= INLINE_BYTES:
        return work(*args)
    return await asyncio.get_running_loop().run_in_executor(_READERS, work, *args)


async def slow_off_loop(size: int, work: Callable[..., T], *args: Any) -> T:
    """`off_loop` for a reading that takes a Python call per byte, escape or value: in
    the slow readings' thread (`_SLOW_READERS`) when the body is over `INLINE_BYTES`."""
    if size <= INLINE_BYTES:
        return work(*args)
    return await asyncio.get_running_loop().run_in_executor(_SLOW_READERS, work, *args)


def read(body: bytes, max_values: int = 0) -> tuple[Any, bytes]:
    """The body's document as Ollama reads it, canonical (see the module's docstring),
    and what the proxy forwards in place of `body`: the document serialised, or, where
    Go finds no JSON value either, `body` itself (None for the document) for the
    backend to answer with its own error. More than `max_values` values (`values`) are
    refused before any is read."""
    quick = _read_quickly(body, max_values)
    return _read_slowly(body, quick) if isinstance(quick, str) else quick


def _read_quickly(body: bytes, max_values: int) -> tuple[Any, bytes] | str:
    """`read` where orjson's reading is Go's (C calls only); else why not, for
    `_read_slowly`."""
    values(body, max_values)
    try:
        doc, gos_way = _orjson_reading(body)
        if gos_way:
            return gos_way
        doc, written = _written(doc)
    except _TooDeep:
        return _DEEP
    return _WIDE if _wide(body, written) else (doc, written)


def _read_slowly(body: bytes, why: str) -> tuple[Any, bytes]:
    """`read` of a body orjson does not read as Go does (`why`)."""
    try:
        if why != _DEEP:
            return _read_in_gos_way(body, why)
    except _TooDeep:
        pass
    return _read_deep(body)


async def read_off_loop(body: bytes, max_values: int = 0) -> tuple[Any, bytes]:
    """`read`, for a request's handler: a large body is read in a reader thread
    (`off_loop`), so that a client cannot hold the event loop with one; the slow
    reading, where it needs one, in the slow readings' thread (`slow_off_loop`)."""
    size = len(body)
    quick = await off_loop(size, _read_quickly, body, max_values)
    if isinstance(quick, str):
        return await slow_off_loop(size, _read_slowly, body, quick)
    return quick


async def write_off_loop(doc: Any, size: int) -> bytes:
    """A document `read` gave, changed, serialised again (in a reader thread when its
    body was large, `size` bytes)."""
    _, written = await off_loop(size, _written, doc)
    return written


# Why orjson's reading of a body is not Go's: orjson refuses it, two keys of an
# object fold alike (which of them Go keeps depends on their order in the body), or it
# may hold an integer beyond 64 bits, which orjson reads as a double (`_number`).
_REFUSED, _FOLDED, _WIDE = "refused", "folded", "wide"
# Nested deeper than orjson reads or writes (`_read_deep`).
_DEEP = "deep"
# Every ASCII digit a "0", every other byte a space: an integer beyond 64 bits is a run
# of 19 digits or more (-9223372036854775809, 18446744073709551616).
_DIGITS_ONLY = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_RUN = b"0" * 19


def _wide(body: bytes, written: bytes) -> bool:
    """Whether orjson's reading of `body`, `written` as orjson writes it, may hold an
    integer beyond 64 bits read as a double (`_WIDE`). Such a double, 2**63 or more,
    orjson writes with an exponent (`1.8446744073709552e+19`): only where `written` has
    a `+` (a search for one byte, where a longer needle costs a pass as slow as the
    next) is the body looked at for a long run of digits (one C pass, no object made).
    A run in a string (a long number in a prompt) only costs the slower reading."""
    return b"+" in written and _LONG_RUN in body.translate(_DIGITS_ONLY)


def _orjson_reading(body: bytes) -> tuple[Any, str]:
    """orjson's reading of `body`, canonical (keys renamed in place), and "" when it is
    Go's; else why not (`_REFUSED`, `_FOLDED`), for `_read_in_gos_way`. orjson's reading
    serves every other body, a body of renamed keys too (`_wide` aside)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, _REFUSED
    if isinstance(doc, dict) and canonicalize(doc):
        return None, _FOLDED
    return doc, ""


def _read_in_gos_way(body: bytes, why: str) -> tuple[Any, bytes]:
    """`read` where orjson's reading is not Go's (`why`). A body orjson read is JSON:
    never forwarded as sent."""
    try:
        doc = _read_as_go(body)
    except NotJson:
        if why != _REFUSED:
            raise BodyError("invalid JSON in request body") from None
        return None, body
    if isinstance(doc, dict):
        canonicalize(doc)
    return _written(doc)


def _written(doc: Any) -> tuple[Any, bytes]:
    try:
        return doc, orjson.dumps(doc)
    except orjson.JSONEncodeError:  # orjson writes at most 254 levels
        raise _TooDeep from None


def written_as_read(doc: Any) -> bytes | None:
    """`doc`, of a reading that keeps numbers as written (`read_written`'s, or
    `read_repeated`'s merged by `go_merge.go_decoded`), written as JSON, each number
    that is no integer as the client wrote it (a `WrittenFloat`); None where it is
    nested too deep for orjson to write."""
    try:
        return orjson.dumps(doc, default=_as_text)
    except orjson.JSONEncodeError:
        return None


# Go's decoder refuses a value nested deeper than this (scanner.go's maxNestingDepth),
# whatever the field: "exceeded max depth".
GO_MAX_DEPTH = 10_000
# How deep the proxy reads a body too deep for orjson: far below its 254 levels and
# Python's recursion limit, far above anything the proxy reads (a content part of a
# message is five levels down).
KEPT_DEPTH = 64
# A JSON string, or a run of opening or of closing brackets outside strings: what
# `_deep_values` steps through (a run at a time: a deep value is mostly such runs).
_STRING_OR_BRACKETS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]+|[\]}]+', re.DOTALL)
_QUOTE, _OPENING = ord('"'), frozenset(b"[{")


def _deep_values(body: bytes) -> list[tuple[int, int]] | None:
    """The spans of the values that open at level `KEPT_DEPTH` + 1 in the first value
    of `body`, in order; None when it opens more than `GO_MAX_DEPTH` levels."""
    spans: list[tuple[int, int]] = []
    depth = start = 0
    for match in _STRING_OR_BRACKETS.finditer(body):
        at = match.start()
        first = body[at]
        if first == _QUOTE:  # a string: no bracket in it counts
            continue
        run = match.end() - at
        if first in _OPENING:
            if depth <= KEPT_DEPTH < depth + run:  # one of them opens level KEPT_DEPTH + 1
                start = at + KEPT_DEPTH - depth
            depth += run
            if depth > GO_MAX_DEPTH:
                return None
            continue
        if depth - run <= KEPT_DEPTH < depth:  # one of them closes level KEPT_DEPTH + 1
            spans.append((start, at + depth - KEPT_DEPTH))
        depth -= run
        if depth <= 0:
            break
    return spans


def _read_deep(body: bytes) -> tuple[Any, bytes]:
    """`read` of a body nested deeper than orjson or Python's json go. Go reads it, up
    to `GO_MAX_DEPTH` levels, so the proxy does not refuse it: it reads the body with
    each value below `KEPT_DEPTH` replaced by a placeholder string of its own, and
    forwards that document with each such value put back where its placeholder stands,
    as the client wrote it. What Go reads there is what it would read in the client's
    body; the proxy reads none of it. A value Go keeps no longer (a repeated key's
    earlier one) is left out, as Go leaves it out. Deeper than Go reads, the body is
    no JSON to Go: it goes as sent, for the backend to answer its own error."""
    spans = _deep_values(body)
    if spans is None:
        return None, body
    if not spans:  # too deep for Python's stack well above `KEPT_DEPTH`: not expected
        raise BodyError("request body is nested too deeply")
    tag = secrets.token_hex(16)
    shallow = _placed(body, spans, tag)
    try:
        doc, gos_way = _orjson_reading(shallow)
        if not gos_way and _wide(shallow, orjson.dumps(doc)):
            gos_way = _WIDE
        if gos_way:
            doc, forwarded = _read_in_gos_way(shallow, gos_way)
            if forwarded is shallow:  # no JSON to Go once shallow, so none as sent
                return None, body
    except _TooDeep:
        raise BodyError("request body is nested too deeply") from None
    _put_back(doc, {f"{tag}-{n}": body[start:end] for n, (start, end) in enumerate(spans)})
    return _written(doc)


def _placed(body: bytes, spans: list[tuple[int, int]], tag: str) -> bytes:
    """`body` with the value of each span the string `"<tag>-<its number>"`."""
    pieces: list[bytes] = []
    kept = 0
    for number, (start, end) in enumerate(spans):
        pieces += (body[kept:start], b'"%s-%d"' % (tag.encode(), number))
        kept = end
    pieces.append(body[kept:])
    return b"".join(pieces)


def without_deep_values(body: bytes) -> bytes | None:
    """`body` with each value below `KEPT_DEPTH` levels a placeholder string (`unread`),
    for a reader of what is shallower alone (`first_value`), whose decoder cannot go as
    deep as Go's; None when the body opens more levels than Go reads (`GO_MAX_DEPTH`)."""
    spans = _deep_values(body)
    return None if spans is None else _placed(body, spans, _UNREAD)


# What `without_deep_values`'s placeholders start with: random, so that no string of a
# client's is taken for one.
_UNREAD = secrets.token_hex(16)
_CONTAINERS = (b"[", b"{")


def unread(value: Any) -> bool:
    """Whether `value` stands in a reading for a value nested deeper than it reads: an
    object or an array kept as written (`read`'s `_read_deep`, an orjson.Fragment) or a
    placeholder string (`first_value`'s). Go reads that value; no check can."""
    kind = type(value)
    if kind is str:
        return bool(value.startswith(_UNREAD))
    return kind is orjson.Fragment and orjson.dumps(value)[:1] in _CONTAINERS


def _put_back(value: Any, placed: dict[str, bytes]) -> None:
    """Puts each value `_read_deep` left out back where its placeholder stands, as
    written (an `orjson.Fragment`, which orjson writes verbatim)."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, item in list(items):
        if isinstance(item, str) and item in placed:
            value[key] = orjson.Fragment(placed[item])
        else:
            _put_back(item, placed)


# Go's errors for a body that is no JSON value (encoding/json's scanner) -------------

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


# The literals Go's scanner reads a byte at a time, by their first byte.
_LITERALS = {"t": "true", "f": "false", "n": "null"}
_NUMBER_CHARS = frozenset("0123456789.eE+-")


def _in_literal(raw: bytes, doc: str, pos: int, msg: str) -> str | None:
    """Go's error where Python's json stopped at `pos` inside a literal or a number
    Go's scanner reads further (its stateT..., stateNeg, stateDot, stateE, stateESign):
    "unexpected EOF" where the body ends first, else the byte it refused and why;
    None where the scanner stops at `pos` too."""
    if msg.startswith("Expecting value"):
        word = _LITERALS.get(doc[pos])
        if word is not None:
            for i in range(1, len(word)):
                if pos + i >= len(doc):
                    return "unexpected EOF"
                if doc[pos + i] != word[i]:
                    refused = _go_char(_byte_at(raw, doc, pos + i))
                    return f"invalid character {refused} in literal {word} (expecting '{word[i]}')"
            return None
        if doc[pos] != "-":
            return None
        at, why = pos + 1, "in numeric literal"
    else:
        start = pos
        while start and doc[start - 1] in _NUMBER_CHARS:
            start -= 1
        number = doc[start:pos]
        if not number or not number[-1].isdigit() or "e" in number.lower():
            return None
        if doc[pos] == "." and "." not in number:
            at, why = pos + 1, "after decimal point in numeric literal"
        elif doc[pos] in "eE":
            at = pos + 2 if doc[pos + 1 : pos + 2] in ("+", "-") else pos + 1
            why = "in exponent of numeric literal"
        else:
            return None
    if at >= len(doc):
        return "unexpected EOF"
    return f"invalid character {_go_char(_byte_at(raw, doc, at))} {why}"


def _syntax_message(raw: bytes, doc: str, exc: json.JSONDecodeError) -> str:
    pos = exc.pos
    if pos >= len(doc) or exc.msg.startswith("Unterminated"):
        return "unexpected EOF"
    in_literal = _in_literal(raw, doc, pos, exc.msg)
    if in_literal is not None:
        return in_literal
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
    if msg.startswith("Invalid \\u"):
        return _in_hex_escape(raw, doc, pos + 1)
    if msg.startswith("Invalid \\escape"):
        escaped = _byte_at(raw, doc, pos + 1) if pos + 1 < len(doc) else c
        return f"invalid character {_go_char(escaped)} in string escape code"
    return f"invalid character {_go_char(c)} looking for beginning of value"


_HEX = frozenset("0123456789abcdefABCDEF")


def _in_hex_escape(raw: bytes, doc: str, at: int) -> str:
    """Go's error for a `\\u` escape without four hex digits, `at` just after the `u`:
    its scanner reads them a byte at a time (stateInStringEscU..U123) and refuses the
    first other byte, or finds the body's end first ("unexpected EOF")."""
    for pos in range(at, min(at + 4, len(doc))):
        if doc[pos] not in _HEX:
            refused = _go_char(_byte_at(raw, doc, pos))
            return f"invalid character {refused} in \\u hexadecimal character escape"
    return "unexpected EOF"


# Go's scanner refuses each at the first character that cannot begin a value (after
# a minus sign, the first it cannot continue a number with); Python's json reads them.
CONSTANTS = {
    "NaN": "invalid character 'N' looking for beginning of value",
    "Infinity": "invalid character 'I' looking for beginning of value",
    "-Infinity": "invalid character 'I' in numeric literal",
}


# What `decode_error` answers for a body Go reads a value from: no error of Go's.
GO_READS_IT = "invalid JSON in request body"


def decode_error(body: bytes) -> str:
    """What Go's json.Decoder.Decode says of a body `read` finds no JSON value in (its
    document None): "EOF" for a body of blanks (Ollama's handlers answer their own
    words for it), the scanner's syntax error where it stops, "exceeded max depth"
    beyond `GO_MAX_DEPTH` levels; `GO_READS_IT` for a body with a value."""
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
        read = _first(data + b" ", _GO_ORDER)
    except NotJson as exc:
        error = exc.message
        return NO_INPUT if error in ("EOF", "unexpected EOF") else error
    text = read.text
    rest = text[read.end :].lstrip(_WHITESPACE)
    if not rest:
        return None
    at = len(text) - len(rest)
    return f"invalid character {_go_char(_byte_at(read.raw, text, at))} after top-level value"

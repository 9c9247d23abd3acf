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
from collections.abc import Callable, Iterable
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
    """`first_value`, with the body it read and where the value ends (in the body with
    its deep values placed, where it has any)."""
    try:
        return _decoded(raw, decoder)
    except _TooDeep:
        pass
    # Go reads up to `GO_MAX_DEPTH` levels: what is deeper than Python's json goes is
    # read as a placeholder, once Go's scanner finds no error in it, and put back.
    spans = _deep_values(raw)
    shallow, tag = _placed(raw, spans)
    read = _decoded(shallow, decoder)
    placed = {f"{tag}-{n}": compact(raw[start:end]) for n, (start, end) in enumerate(spans)}
    _put_back(read.value, placed)
    return read


def first_value(raw: bytes, decoder: json.JSONDecoder = _GO_ORDER) -> Any:
    """The first JSON value of `raw` as json.Decoder.Decode reads it, each number and
    object as `decoder` makes them (`go_decoder`); NotJson with Go's error where Go
    finds none. A value nested deeper than Python's json goes is read with each value
    below `KEPT_DEPTH` levels as written, compacted (an orjson.Fragment, `unread`;
    `whole` reads it). The one reading of a body's first value for what answers Go's
    errors: the emulator's, and the proxy's where it answers in Ollama's words
    (`decode_error`, `unmarshal_error`)."""
    return _first(raw, decoder).value


def whole(value: Any, decoder: json.JSONDecoder = _GO_ORDER) -> Any:
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

# The threads large bodies are read in (their usage events made too, which read them
# again: `proxy.usage.pipeline`). These reads hold the GIL, so more threads would
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
    quick = read_quickly(body, max_values)
    return _read_slowly(body, quick) if isinstance(quick, str) else quick


def read_quickly(body: bytes, max_values: int) -> tuple[Any, bytes] | str:
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
    quick = await off_loop(size, read_quickly, body, max_values)
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


def rebuilt(
    value: Any, leaf: Callable[[Any], Any] = lambda v: v, *, sort_keys: bool = False
) -> Any:
    """A copy of `value`'s objects and arrays, each other value in them `leaf` of it,
    each object's keys in order (sorted when `sort_keys`, as json.Marshal writes a
    map). A loop, not a recursion: Go reads a value nested `GO_MAX_DEPTH` levels, far
    deeper than Python's stack goes."""
    if not isinstance(value, dict | list):
        return leaf(value)
    top: Any = {} if isinstance(value, dict) else []
    pending: list[tuple[Any, Any]] = [(value, top)]
    while pending:
        source, copy = pending.pop()
        items: Iterable[tuple[Any, Any]]
        if isinstance(source, list):
            items = enumerate(source)
        elif sort_keys:
            items = [(key, source[key]) for key in sorted(source)]
        else:
            items = source.items()
        for key, item in items:
            if isinstance(item, dict | list):
                child: Any = {} if isinstance(item, dict) else []
                pending.append((item, child))
            else:
                child = leaf(item)
            if isinstance(copy, dict):
                copy[key] = child
            else:
                copy.append(child)
    return top


# Go's decoder refuses a value nested deeper than this (scanner.go's maxNestingDepth),
# whatever the field: "invalid character '[' exceeded max depth" (scanner.error names
# the opening that goes one level too deep).
GO_MAX_DEPTH = 10_000
# How deep the proxy reads a body too deep for orjson: far below its 254 levels and
# Python's recursion limit, far above anything the proxy reads (a content part of a
# message is five levels down).
KEPT_DEPTH = 64

# Go's JSON grammar (scanner.go) as byte patterns, for `_deep_values`, which steps
# through a value too deep for Python's json a run of tokens at a time.
# Possessive and atomic throughout: JSON's grammar reads each byte one way, so a match
# never gives back what it took, and a failed one costs no more than one try.
_WS = rb"[ \t\r\n]*+"
_STRING_TOKEN = rb'(?>"[^"\\\x00-\x1f]*+(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*+)*+")'
_SCALAR = (
    rb"(?>" + _STRING_TOKEN + rb"|-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+"
    rb"|true|false|null)"
)


def _nested(levels: int) -> bytes:
    """A value nested `levels` levels at most (a scalar at 0): most of a deep body's
    values, each matched whole in C."""
    if not levels:
        return _SCALAR
    inner = _nested(levels - 1)
    member = _STRING_TOKEN + _WS + rb":" + _WS + inner
    array = rb"\[" + _WS + rb"(?:" + inner + rb"(?:" + _WS + rb"," + _WS + inner + rb")*+" + _WS
    obj = rb"\{" + _WS + rb"(?:" + member + rb"(?:" + _WS + rb"," + _WS + member + rb")*+" + _WS
    return rb"(?>" + _SCALAR + rb"|" + array + rb")?+\]|" + obj + rb")?+\})"


# How many levels a value `_deep_values` matches whole may hold.
_SHALLOW_LEVELS = 3


def _wanting(levels: int) -> tuple[re.Pattern[bytes], ...]:
    """The patterns of a value wanted (`_VALUE`, `_ELEMENT`, `_MEMBER`), for values that
    hold `levels` levels at most. Each steps over the shallow values before it (in an
    array, each with the comma after it; in an object, each member) and matches a
    shallow one (group 1), else an opening, of arrays (group 2, as many as there are
    in a row) or of an object (3)."""
    shallow = _nested(levels)
    after = rb"(?:(" + shallow + rb")|(\[(?:" + _WS + rb"\[)*+)|(\{))"
    elements = rb"(?:" + shallow + _WS + rb"," + _WS + rb")*+"
    key = _STRING_TOKEN + _WS + rb":" + _WS
    members = rb"(?:" + key + shallow + _WS + rb"," + _WS + rb")*+"
    return (
        re.compile(_WS + after),
        re.compile(_WS + elements + after),
        re.compile(_WS + members + key + after),
    )


# By how many levels Go's scanner still reads below the containers open (near
# `GO_MAX_DEPTH`, fewer than `_SHALLOW_LEVELS`): no value matched whole goes deeper.
_WANTING = [_wanting(levels) for levels in range(_SHALLOW_LEVELS + 1)]
_VALUE, _ELEMENT, _MEMBER = 0, 1, 2
# After a value: a comma (group 1) or closings in a row (group 2).
# After a value: a comma (group 1), or closings in a row (group 2) and any comma after
# them (group 3).
_AFTER_VALUE = re.compile(_WS + rb"(?:(,)|([\]}]++)(?:" + _WS + rb"(,))?+)")
_EMPTY = re.compile(_WS + rb"[\]}]")
_BLANKS_RE = re.compile(_WS)
_ARRAY, _OBJECT = ord("["), ord("{")
_CLOSINGS = bytes.maketrans(b"[{", b"]}")
_CLOSING_OF = {_ARRAY: ord("]"), _OBJECT: ord("}")}
# What a container holds before the token Go's scanner refuses, written so that Python's
# json stands where Go's scanner stood and refuses it in the same words (`_refused_at`):
# where a value is wanted (`[0,`: after `[`, a `]` is no error), where a key is, and
# after a value (which follows).
_WANTS_VALUE = {0: b"", _ARRAY: b"[0,", _OBJECT: b'{"":'}
_WANTS_KEY = b'{"":0,'
_HAS_VALUE = {_ARRAY: b"[", _OBJECT: b'{"":'}


def _past(pattern: re.Pattern[bytes], body: bytes, pos: int) -> int:
    """Where `pattern`, which matches an empty run too, ends from `pos`."""
    match = pattern.match(body, pos)
    return match.end() if match is not None else pos


def _refused_at(body: bytes, at: int, before: bytes) -> str:
    """Go's error for the token of `body` at `at` that its scanner refuses, or for the
    shallow values before it from `at`, `before` standing for what the innermost
    container holds before that: Python's json reads them a level or two deep, and
    stops where Go's scanner does."""
    try:
        _decoded(before + body[at:], _GO_ORDER)
    except NotJson as exc:
        return exc.message
    return GO_READS_IT  # not expected: the token is one Go's scanner refuses


def _nth(body: bytes, start: int, byte: int, n: int) -> int:
    """Where the `n`th `byte` (from 1) stands in `body` from `start`."""
    at = start - 1
    for _ in range(n):
        at = body.index(byte, at + 1)
    return at


def _deep_values(body: bytes) -> list[tuple[int, int]]:
    """The spans of the values that open at level `KEPT_DEPTH` + 1 in the first value of
    `body`, in order, which Go's scanner reads all of: NotJson (its words worked out
    when asked for) where it refuses the value, nested more than `GO_MAX_DEPTH` levels
    too. A loop, not a recursion (the value is too deep for Python's stack), each step
    a container too deep for a pattern, a run of openings or closings, or of shallow
    values (`_nested`) matched whole in C."""
    spans: list[tuple[int, int]] = []
    opened = bytearray()  # the containers open, innermost last
    start = 0
    value = -1  # where the last value starts, if it is shallow
    pos = _past(_BLANKS_RE, body, 0)
    wants: int | None = _VALUE
    wanting, after_value, near = _WANTING, _AFTER_VALUE.match, GO_MAX_DEPTH - _SHALLOW_LEVELS
    while True:
        if wants is not None:
            depth = len(opened)
            levels = _SHALLOW_LEVELS if depth <= near else GO_MAX_DEPTH - depth
            match = wanting[levels][wants].match(body, pos)
            if match is None:
                at = _past(_BLANKS_RE, body, pos)
                if wants == _MEMBER:
                    before = _WANTS_KEY
                else:
                    before = _WANTS_VALUE[opened[-1] if opened else 0]
                raise NotJson(partial(_refused_at, body, at, before))
            pos, wants = match.end(), None
            if match.group(1) is not None:
                value = match.start(1)
                if not opened:
                    return spans
            else:
                arrays = match.group(2)
                if arrays is not None:
                    at, count = match.start(2), arrays.count(b"[")
                else:
                    at, count = match.start(3), 1
                depth = len(opened)
                opened += body[at:pos].translate(None, b" \t\r\n")
                if len(opened) > GO_MAX_DEPTH:
                    over = _nth(body, at, body[at], GO_MAX_DEPTH - depth + 1)
                    raise NotJson(f"invalid character {_go_char(body[over])} exceeded max depth")
                if depth <= KEPT_DEPTH < depth + count:
                    start = _nth(body, at, body[at], KEPT_DEPTH - depth + 1)
                empty = _EMPTY.match(body, pos)
                if empty is not None and body[empty.end() - 1] == _CLOSING_OF[opened[-1]]:
                    # `[]` or `{}`: closed as any closing is, below
                    pos = empty.end() - 1
                else:
                    wants = _ELEMENT if opened[-1] == _ARRAY else _MEMBER
                    continue
        # after a value
        match = after_value(body, pos)
        if match is not None and match.group(1) is not None:
            pos, wants = match.end(), _ELEMENT if opened[-1] == _ARRAY else _MEMBER
            continue
        closings = match.group(2) if match is not None else None
        depth, shut = len(opened), 0
        if closings:
            wanted = bytes(reversed(opened[-len(closings) :])).translate(_CLOSINGS)
            shut = len(closings) if closings == wanted else _common(closings, wanted)
        if shut:
            at = match.start(2)  # type: ignore[union-attr]
            if depth - shut <= KEPT_DEPTH < depth:
                spans.append((start, at + depth - KEPT_DEPTH))
            del opened[depth - shut :]
            if not opened:
                return spans
            value, pos = -1, at + shut
            if shut == len(closings):  # type: ignore[arg-type]
                if match.group(3) is not None:  # type: ignore[union-attr]
                    pos = match.end()  # type: ignore[union-attr]
                    wants = _ELEMENT if opened[-1] == _ARRAY else _MEMBER
                continue
        at = _past(_BLANKS_RE, body, pos)
        if value < 0:  # after a container: any other value stands for it
            raise NotJson(partial(_refused_at, body, at, _HAS_VALUE[opened[-1]] + b'""'))
        # after a shallow value, read again: where a number ends is Go's own error
        raise NotJson(partial(_refused_at, body, value, _HAS_VALUE[opened[-1]]))


def _common(a: bytes, b: bytes) -> int:
    """How many bytes `a` and `b` start with alike."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _read_deep(body: bytes) -> tuple[Any, bytes]:
    """`read` of a body nested deeper than orjson or Python's json go. Go reads it, up
    to `GO_MAX_DEPTH` levels, so the proxy does not refuse it: it reads the body with
    each value below `KEPT_DEPTH` replaced by a placeholder string of its own, and
    forwards that document with each such value put back where its placeholder stands,
    as the client wrote it. What Go reads there is what it would read in the client's
    body; the proxy reads none of it. A value Go keeps no longer (a repeated key's
    earlier one) is left out, as Go leaves it out. A body Go's scanner refuses (deeper
    than Go reads, or an error at any depth) is no JSON to Go: it goes as sent, for the
    backend to answer its own error."""
    try:
        spans = _deep_values(body)
    except NotJson:
        return None, body
    shallow, tag = _placed(body, spans)
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


def _placed(body: bytes, spans: list[tuple[int, int]]) -> tuple[bytes, str]:
    """`body` with the value of each span the string `"<tag>-<its number>"`, and the
    tag: random for each body, so that no string of a client's is taken for one."""
    tag = secrets.token_hex(16)
    pieces: list[bytes] = []
    kept = 0
    for number, (start, end) in enumerate(spans):
        pieces += (body[kept:start], b'"%s-%d"' % (tag.encode(), number))
        kept = end
    pieces.append(body[kept:])
    return b"".join(pieces), tag


_CONTAINERS = (b"[", b"{")


def unread(value: Any) -> bool:
    """Whether `value` stands in a reading for a value nested deeper than it reads: an
    object or an array kept as written, an orjson.Fragment (`read`'s `_read_deep`,
    `first_value`'s). Go reads that value; no check can."""
    return type(value) is orjson.Fragment and orjson.dumps(value)[:1] in _CONTAINERS


# A JSON string, its escapes and all, as a group of its own: `re.split` keeps it.
_STRING_SPLIT = re.compile(b"(" + _STRING.pattern + b")")


def compact(value: bytes) -> bytes:
    """`value`, JSON text, as json.Compact writes it: its blanks outside strings left
    out, every other byte (a string's escapes, a number's spelling) as it is. Go's
    json.Marshal writes a json.RawMessage so, with `protocol.go_escaped`'s escapes."""
    pieces = _STRING_SPLIT.split(value)
    pieces[::2] = [piece.translate(None, _BLANKS) for piece in pieces[::2]]
    return b"".join(pieces)


_BLANK_RUN = re.compile(r"[ \t\r\n]*")
# The reading of one value at a place in a text, and where it ends (json.scanner's).
_SCAN: Callable[[str, int], tuple[Any, int]] = _GO_ORDER.scan_once  # type: ignore[attr-defined]


def value_bytes(body: bytes, path: tuple[str, ...]) -> bytes | None:
    """The bytes, as written, of the value Go's decoder takes for the struct field at
    `path` (field names, each in an object the last named) in `body`'s first value, a
    json.RawMessage's (which keeps them as they come): the last value in the body at a
    key that folds to its name (`canonical_key`), each object on the way to it decoded
    into the one struct (a pointer Go reuses). None where there is none, or no JSON. A
    value deeper than Python's json reads is placed and put back (`_deep_values`)."""
    try:
        return _value_bytes(body, path)
    except _TooDeep:
        pass
    try:
        spans = _deep_values(body)
    except NotJson:
        return None
    shallow, tag = _placed(body, spans)
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
        raise _TooDeep from None
    except (ValueError, IndexError, StopIteration, _NotANumber):
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


def _put_back(value: Any, placed: dict[str, bytes]) -> None:
    """Puts each value `_read_deep` or `_first` left out back where its placeholder
    stands, as `placed` has it (an `orjson.Fragment`, which orjson writes verbatim)."""
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
    words for it), the scanner's syntax error where it stops, however deep, nesting
    beyond `GO_MAX_DEPTH` levels among them; `GO_READS_IT` for a body with a value."""
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

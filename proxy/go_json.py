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
does one nested deeper than Go reads (`go_deep.GO_MAX_DEPTH`). One nested deeper than
orjson reads or writes, which Go reads, is read to `go_deep.KEPT_DEPTH` and each value
below is forwarded as written (`_read_deep`): the proxy reads nothing that deep. A
number beyond a double, which Go refuses where it decodes it, is forwarded as written
(`go_decoding.orjson_number`), for the backend's own error; so is an integer beyond 64
bits, which Go names as written where an int field refuses it; and a number that is no
integer in a top-level field Go reads as an int (`as_written`), which Go refuses naming
it as written. One in a nested int field (a tool call's `index`) goes as the proxy
writes it (`1e2` as `100.0`), and the backend names it so: finding it would cost a pass
over the conversation. Where the proxy answers itself (explain, feedback), a body that
is no JSON to Go gets Go's decoding error (`go_readings.decode_error`).

orjson reads most bodies as Go does, in C (`read_quickly`); any other is read in Go's
way (`proxy.go_decoding`, and `proxy.go_deep` for one nested deeper than Python's json
goes). A large body is counted, read and written off the event loop (`off_loop`,
`slow_off_loop`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson

from proxy.go_decoding import NotJson, TooDeep, read_as_go
from proxy.go_deep import deep_values, put_back, with_placeholders
from proxy.go_raw_message import BLANKS, JSON_STRING
from proxy.go_readings import read_written, written_as_read
from selector_model.request_body import canonicalize

T = TypeVar("T")


class BodyError(Exception):
    """The proxy cannot read the body as Ollama would: answered with `status` in
    Ollama's shape."""

    status = 400


class TooManyValues(BodyError):
    """More JSON values than the proxy reads in one body (`limits.max_json_values`)."""

    status = 413


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
    bare = JSON_STRING.sub(b"0", body).translate(None, BLANKS)
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
    except TooDeep:
        return _DEEP
    return _WIDE if _wide(body, written) else (doc, written)


def _read_slowly(body: bytes, why: str) -> tuple[Any, bytes]:
    """`read` of a body orjson does not read as Go does (`why`)."""
    try:
        if why != _DEEP:
            return _read_in_gos_way(body, why)
    except TooDeep:
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
# may hold an integer beyond 64 bits, which orjson reads as a double
# (`go_decoding.orjson_number`).
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
        doc = read_as_go(body)
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
        raise TooDeep from None


def _read_deep(body: bytes) -> tuple[Any, bytes]:
    """`read` of a body nested deeper than orjson or Python's json go. Go reads it, up
    to `go_deep.GO_MAX_DEPTH` levels, so the proxy does not refuse it: it reads the body
    with each value below `go_deep.KEPT_DEPTH` replaced by a placeholder string of its own, and
    forwards that document with each such value put back where its placeholder stands,
    as the client wrote it. What Go reads there is what it would read in the client's
    body; the proxy reads none of it. A value Go keeps no longer (a repeated key's
    earlier one) is left out, as Go leaves it out. A body Go's scanner refuses (deeper
    than Go reads, or an error at any depth) is no JSON to Go: it goes as sent, for the
    backend to answer its own error."""
    try:
        spans = deep_values(body)
    except NotJson:
        return None, body
    shallow, tag = with_placeholders(body, spans)
    try:
        doc, gos_way = _orjson_reading(shallow)
        if not gos_way and _wide(shallow, orjson.dumps(doc)):
            gos_way = _WIDE
        if gos_way:
            doc, forwarded = _read_in_gos_way(shallow, gos_way)
            if forwarded is shallow:  # no JSON to Go once shallow, so none as sent
                return None, body
    except TooDeep:
        raise BodyError("request body is nested too deeply") from None
    put_back(doc, {f"{tag}-{n}": body[start:end] for n, (start, end) in enumerate(spans)})
    return _written(doc)


def as_written(body: bytes, model: str | None = None) -> bytes | None:
    """What `read` forwards for `body` (its `model` set to `model`, when given: the one
    `auto` chose), each number that is no integer as the client wrote it
    (`go_readings.read_written`), for a body that holds one where Go reads an int, which refuses it
    naming that text; None where this reading fails (the body too deep)."""
    doc = read_written(body)
    if doc is None:
        return None
    if isinstance(doc, dict):
        canonicalize(doc)
        if model is not None:
            doc["model"] = model
    return written_as_read(doc)

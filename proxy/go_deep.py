"""A value nested deeper than Python's json reads, which Go reads up to `GO_MAX_DEPTH`
levels.

`deep_values` steps through such a value as Go's scanner does, with patterns of Go's
grammar (a loop, not a recursion), and finds the spans of the values that open below
`KEPT_DEPTH` levels, or Go's error; `with_placeholders` stands a string for each, so
that the rest reads as any body, and `put_back` puts each back as written, a value that
`unread` tells from one read. `rebuilt` copies a value's objects and arrays, however
deep.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import orjson

from proxy.go_decoding import GO_ORDER, NotJson, decoded
from proxy.go_syntax_errors import GO_READS_IT, go_char

# Go's decoder refuses a value nested deeper than this (scanner.go's maxNestingDepth),
# whatever the field: "invalid character '[' exceeded max depth" (scanner.error names
# the opening that goes one level too deep).
GO_MAX_DEPTH = 10_000
# How deep the proxy reads a body too deep for orjson: far below its 254 levels and
# Python's recursion limit, far above anything the proxy reads (a content part of a
# message is five levels down).
KEPT_DEPTH = 64

# Go's JSON grammar (scanner.go) as byte patterns, for `deep_values`, which steps
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


# How many levels a value `deep_values` matches whole may hold.
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
        decoded(before + body[at:], GO_ORDER)
    except NotJson as exc:
        return exc.message
    return GO_READS_IT  # not expected: the token is one Go's scanner refuses


def _nth(body: bytes, start: int, byte: int, n: int) -> int:
    """Where the `n`th `byte` (from 1) stands in `body` from `start`."""
    at = start - 1
    for _ in range(n):
        at = body.index(byte, at + 1)
    return at


def deep_values(body: bytes) -> list[tuple[int, int]]:
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
                    raise NotJson(f"invalid character {go_char(body[over])} exceeded max depth")
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


def with_placeholders(body: bytes, spans: list[tuple[int, int]]) -> tuple[bytes, str]:
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
    object or an array kept as written, an orjson.Fragment (`go_json.read`'s
    `_read_deep`, `go_readings.first_value`'s). Go reads that value; no check can."""
    return type(value) is orjson.Fragment and orjson.dumps(value)[:1] in _CONTAINERS


def put_back(value: Any, placed: dict[str, bytes]) -> None:
    """Puts each value `go_json._read_deep` or `go_readings.first_value` left out back
    where its placeholder stands, as `placed` has it (an `orjson.Fragment`, which orjson
    writes verbatim)."""
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
            put_back(item, placed)


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

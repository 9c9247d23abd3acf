"""Whether Go's net/http closes a client's connection after answering a request, as it
reads the request's `Connection` fields, for the requests llhttp (aiohttp's parser)
reads otherwise.

Go (src/net/http/request.go `wantsClose`, `wantsHttp10KeepAlive`; transfer.go
`shouldClose`; server.go `chunkWriter.writeHeader`) closes after answering:

* HTTP/1.1 (and later): when `close` is a comma-separated element of any `Connection`
  field (httpguts.HeaderValuesContainsToken), or a word of the first field with a
  space, comma or tab (or the field's end) on each side (`hasToken`): `foo close`;
* HTTP/1.0: unless `keep-alive` is such a word of the first field, and then only when
  the answer has a length (aiohttp then keeps the connection too, and says
  `Connection: keep-alive` as Go does); a `close` beside it does not matter.

llhttp reads `Proxy-Connection` as a `Connection` field (the connection never gives
it that field: `proxy.head_reads`), and of `Connection` only comma-separated elements,
of any field for HTTP/1.0: so it keeps `Connection: foo close` (HTTP/1.1) and
`Connection: foo` then `Connection: keep-alive` (HTTP/1.0), which Go closes. Those
close here. The other way (HTTP/1.0 `Connection: keep-alive foo`, which Go keeps) stays
closed: llhttp refuses every byte after a request it read as closing the connection.
"""

from __future__ import annotations

import functools
from typing import Final

_BOUNDARY: Final = " ,\t"
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def has_token(value: str, token: str) -> bool:
    """Go's `hasToken`: `token` (lower-case) in `value` in any ASCII case, with a
    space, comma or tab or the value's end on each side."""
    value = value.translate(_ASCII_LOWER)
    size = len(token)
    start = value.find(token)
    while start >= 0:
        end = start + size
        before = start == 0 or value[start - 1] in _BOUNDARY
        if before and (end == len(value) or value[end] in _BOUNDARY):
            return True
        start = value.find(token, start + 1)
    return False


def in_lists(values: tuple[str, ...], token: str) -> bool:
    """Go's `httpguts.HeaderValuesContainsToken`: `token` (lower-case) an element of a
    comma-separated field, spaces and tabs around it dropped, in any ASCII case."""
    return any(
        element.strip(" \t").translate(_ASCII_LOWER) == token
        for value in values
        for element in value.split(",")
    )


@functools.lru_cache(maxsize=256)
def closes(http11: bool, values: tuple[str, ...]) -> bool:
    """Whether Go closes the connection after answering a request with these
    `Connection` fields (`http11`: HTTP/1.1 or later, else HTTP/1.0), the answer
    having a length. Cached: a client sends the same field on every request."""
    first = values[0] if values else ""
    if http11:
        return in_lists(values, "close") or has_token(first, "close")
    return not has_token(first, "keep-alive")

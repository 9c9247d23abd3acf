"""Byte-level imitation of what Ollama's Go stack puts on the wire.

* Request bodies are decoded the way Gin's `ShouldBindJSON` (encoding/json) does: the
  first JSON value is read and trailing bytes ignored, an empty body is `io.EOF`
  (Ollama answers `missing request body`) and syntax errors carry Go's wording; the
  values' types are checked against Ollama's structs by `proxy.go_requests`.
* Responses are serialised like `json.Marshal`: compact, `<`, `>`, `&`, U+2028 and
  U+2029 escaped, no trailing newline for `c.JSON` and one for `json.NewEncoder`.
* Unknown paths and wrong methods get Gin's plain-text `404 page not found` /
  `405 method not allowed` (Ollama sets `HandleMethodNotAllowed = true`), as
  `proxy.errors.gin_refusal` writes them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from proxy import go_decoding, go_deep, go_json, go_readings
from proxy.go_merge import go_decoded
from proxy.go_requests import first_error
from proxy.go_types import BeyondADouble, BodyError, checked
from proxy.protocol import JSON, go_escaped
from selector_model.request_body import canonicalize

T = TypeVar("T")

JSON_BARE = "application/json"  # what the OpenAI writers and waitForStream set


def _go_number(obj: Any) -> Any:
    """Go prints a whole float64 below 1e21 without a fraction or exponent (1, not 1.0;
    1e20 in full). orjson writes integers of 64 bits only: a larger one goes verbatim.
    An integer beyond 64 bits read from a request is a float64 in Go (an `any`; an
    integer field refuses it), and printed as one. A number beyond a double reaches an
    answer only inside a json.RawMessage echoed (a Responses text format's schema),
    which Go writes as the client did."""
    if isinstance(obj, BeyondADouble):
        return orjson.Fragment(obj.text.encode())
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
        obj = float(obj)
    if isinstance(obj, float):
        if not obj.is_integer() or abs(obj) >= 1e21:
            return obj
        whole = int(obj)
        return whole if -(2**63) <= whole < 2**64 else orjson.Fragment(str(whole).encode())
    return obj


def _go_numbers(obj: Any) -> Any:
    """`obj` with each number in its objects and arrays as Go prints it (`_go_number`)."""
    return go_deep.rebuilt(obj, _go_number)


def json_bytes(
    obj: Any, *, sort_keys: bool = False, default: Callable[[Any], Any] | None = None
) -> bytes:
    """orjson.dumps of `obj` (compact, keys sorted when `sort_keys`), however deep it
    nests, an integer beyond 64 bits as its digits: orjson writes 254 levels and 64
    bits, and a json.RawMessage goes out as the client wrote it, up to the 10,000
    levels Go reads. What orjson refuses so is written a token at a time instead, each
    other scalar and each key by orjson, so the bytes are the ones orjson would write."""
    option = orjson.OPT_SORT_KEYS if sort_keys else 0
    try:
        return orjson.dumps(obj, default=default, option=option)
    except orjson.JSONEncodeError as exc:
        if str(exc) not in _WRITTEN_HERE:
            raise
    out: list[bytes] = []
    pending: list[Any] = [obj]  # values to write, and the tokens between them (`_Token`)
    while pending:
        value = pending.pop()
        if isinstance(value, _Token):
            out.append(value)
        elif isinstance(value, dict):
            keys = sorted(value) if sort_keys else list(value)
            pending.append(_CLOSE_OBJECT)
            for n in range(len(keys) - 1, -1, -1):
                key = keys[n]
                if not isinstance(key, str):
                    raise TypeError("Dict key must be str")  # as orjson refuses it
                pending.append(value[key])
                pending.append(_Token((b"{" if n == 0 else b",") + orjson.dumps(key) + b":"))
            if not keys:
                pending.append(_OPEN_OBJECT)
        elif isinstance(value, list | tuple):
            pending.append(_CLOSE_ARRAY)
            for n in range(len(value) - 1, -1, -1):
                pending.append(value[n])
                if n:
                    pending.append(_COMMA)
            pending.append(_OPEN_ARRAY)
        elif type(value) is int:
            out.append(b"%d" % value)
        else:
            out.append(orjson.dumps(value, default=default))
    return b"".join(out)


# What orjson refuses to write that `json_bytes` writes.
_WRITTEN_HERE = ("Recursion limit reached", "Integer exceeds 64-bit range")


class _Token(bytes):
    """Bytes `json_bytes` writes between values."""


_OPEN_OBJECT, _CLOSE_OBJECT = _Token(b"{"), _Token(b"}")
_OPEN_ARRAY, _CLOSE_ARRAY, _COMMA = _Token(b"["), _Token(b"]"), _Token(b",")


def dumps(obj: Any, *, sort_keys: bool = False) -> bytes:
    """json.Marshal: compact, with Go's HTML-safe escaping (those characters can only
    occur inside strings, so replacing them in the output is exact)."""
    return go_escaped(json_bytes(_go_numbers(obj), sort_keys=sort_keys))


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


def stream_heads(request: web.Request, stream: bool) -> dict[str, str]:
    """The headers ResponsesMiddleware and AnthropicMessagesMiddleware set on a streamed
    request once its body is read, before ChatHandler runs: every answer from then on
    has them, an error ChatHandler writes too. Go's net/http drops the Connection header
    from an answer whose connection closes after it."""
    if not stream:
        return {}
    heads = {"Cache-Control": "no-cache"}
    if request.version >= (1, 1) and request.keep_alive:
        heads["Connection"] = "keep-alive"
    return heads


def with_heads(response: web.Response, heads: dict[str, str]) -> web.Response:
    response.headers.update(heads)
    return response


def error(status: int, message: str) -> web.Response:
    """The native `{"error": "..."}` body."""
    return gin_json(status, {"error": message})


def empty_ok() -> web.Response:
    """A handler that returns without writing: 200, no body, no Content-Type."""
    resp = web.Response(status=200)
    resp.content_type = ""  # aiohttp would otherwise announce application/octet-stream
    return resp


# Decoding -----------------------------------------------------------------------------


def _number(text: str) -> int | float | BeyondADouble:
    """A JSON number as Go reads it: an integer, a double, or one beyond a double."""
    number = float(text)  # rounds as Go's ParseFloat does, to infinity beyond a double
    if math.isinf(number):
        return BeyondADouble(text)
    if "." in text or "e" in text or "E" in text:
        return number
    return int(text)


_DECODER = go_decoding.go_decoder(_number)


async def read_json(request: web.Request) -> Any:
    """`decode_json` of the request's body; a large body in a reader thread
    (`go_json.off_loop`): decoding one near the proxy's body limit takes a good part of
    a second, in which the other streams of this backend would stall."""
    raw = await request.read()
    return await go_json.off_loop(len(raw), decode_json, raw)


async def checked_off_loop(request: web.Request, doc: Any, check: Callable[[Any], T]) -> T:
    """`go_types.checked` of a body `read_json` read, in a reader thread when the body
    is large: its checks read every value (an image's base64 among them: tens of
    megabytes), which on the loop would hold every other request."""
    raw = await request.read()
    return await go_json.off_loop(len(raw), checked, doc, raw, check)


def _as_read(value: Any) -> Any:
    if isinstance(value, BeyondADouble):
        return orjson.Fragment(value.text)
    raise TypeError


def _as_go_decodes(raw: bytes, doc: Any, struct: str, fields: dict[str, str]) -> Any:
    """`doc`, `decode_json`'s reading of `raw`, as Go decodes `raw` into `struct`
    where it gives a key twice: BodyError with Go's error (`go_requests.first_error`),
    else the document Go ends with (`go_merge.go_decoded`), read as any body is read
    here. `doc` keeps the last value alone, as the proxy's reading does
    (`go_json.left_out` says when one was left out, of `doc` written as the proxy
    writes its reading); `doc` itself for any other body."""
    if isinstance(doc, dict):
        canonicalize(doc)
    try:
        written = orjson.dumps(doc, default=_as_read)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, or too deep to write
        written = b""  # nothing to compare with: `left_out` says so, and it is read again
    if not go_json.left_out(raw, written):
        return doc
    repeated = go_readings.read_repeated(raw)
    message = first_error(repeated, struct, fields)
    if message is not None:
        raise BodyError(message)
    merged = go_decoded(repeated, struct)
    ended = None if merged is None else go_readings.written_as_read(merged)
    return doc if ended is None else decode_json(ended)


async def as_go_decodes(request: web.Request, doc: Any, struct: str, fields: dict[str, str]) -> Any:
    """`_as_go_decodes` of the request's body, in a reader thread when it is large."""
    raw = await request.read()
    return await go_json.off_loop(len(raw), _as_go_decodes, raw, doc, struct, fields)


def read_whole(value: Any) -> Any:
    """`value`, of `decode_json`'s reading, with what it holds as written read too
    (`go_readings.whole`), in place."""
    return go_readings.whole(value, _DECODER)


def decode_json(raw: bytes) -> Any:
    """Decode the first JSON value of a body like json.Decoder.Decode
    (`go_readings.first_value`); a number beyond a double is a
    `proxy.go_types.BeyondADouble`.

    Raises EOFError for an empty (or all-whitespace) body and BodyError otherwise."""
    try:
        return go_readings.first_value(raw, _DECODER)
    except go_decoding.NotJson as exc:
        if exc.message == "EOF":
            raise EOFError from None
        raise BodyError(exc.message) from None

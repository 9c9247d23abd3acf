"""Byte-level imitation of what Ollama's Go stack puts on the wire.

* Request bodies are decoded the way Gin's `ShouldBindJSON` (encoding/json) does: the
  first JSON value is read and trailing bytes ignored, an empty body is `io.EOF`
  (Ollama answers `missing request body`) and syntax errors carry Go's wording; the
  values' types are checked against Ollama's structs by `proxy.go_types`.
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
from typing import Any

import orjson
from aiohttp import web

from proxy import go_json
from proxy.go_json import go_text, in_last_order
from proxy.go_types import BeyondADouble, BodyError
from proxy.protocol import JSON, go_escaped

JSON_BARE = "application/json"  # what the OpenAI writers and waitForStream set


def _go_numbers(obj: Any) -> Any:
    """Go prints a whole float64 below 1e21 without a fraction or exponent (1, not 1.0;
    1e20 in full). orjson writes integers of 64 bits only: a larger one goes verbatim.
    An integer beyond 64 bits read from a request is a float64 in Go (an `any`; an
    integer field refuses it), and printed as one."""
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
        obj = float(obj)
    if isinstance(obj, float):
        if not obj.is_integer() or abs(obj) >= 1e21:
            return obj
        whole = int(obj)
        return whole if -(2**63) <= whole < 2**64 else orjson.Fragment(str(whole).encode())
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
    if msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\u"):
        escaped = _byte_at(raw, doc, pos + 1) if pos + 1 < len(doc) else c
        return f"invalid character {_go_char(escaped)} in string escape code"
    return f"invalid character {_go_char(c)} looking for beginning of value"


def _number(text: str) -> int | float | BeyondADouble:
    """A JSON number as Go reads it: an integer, a double, or one beyond a double."""
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


async def read_json(request: web.Request) -> Any:
    """`decode_json` of the request's body; a large body in a reader thread
    (`go_json.off_loop`): decoding one near the proxy's body limit takes a good part of
    a second, in which the other streams of this backend would stall."""
    raw = await request.read()
    return await go_json.off_loop(len(raw), decode_json, raw)


def decode_json(raw: bytes) -> Any:
    """Decode the first JSON value of a body like json.Decoder.Decode; a number beyond
    a double is a `proxy.go_types.BeyondADouble`.

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
        # Deeper than Python's decoder goes, and Go reads up to 10,000 levels: what is
        # deeper than the emulator looks is read as a placeholder.
        shallow = go_json.without_deep_values(raw)
        if shallow is None or shallow == raw:
            raise BodyError("exceeded max depth") from None
        return decode_json(shallow)
    return value

"""Go's errors for a body that is no JSON value, in encoding/json's scanner's words.

Python's json reads Go's grammar but words its errors otherwise: `syntax_message` says
what Go's scanner says where Python's json stopped, `literal_error` where the scanner
reads on into a literal or a number that Python's json ended, and `CONSTANTS` what it
says of NaN and Infinity, which Python's json reads. The scanner reads bytes: the byte
an error names is the body's (`byte_at`), quoted as Go quotes it (`go_char`).
"""

from __future__ import annotations

import json

_GO_ESCAPES = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}


def go_char(byte: int) -> str:
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


def byte_at(raw: bytes, doc: str, pos: int) -> int:
    """The byte of `raw` that `doc[pos]` stands for, `doc` being `go_decoding.go_text(raw)`: Go's
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


def literal_error(raw: bytes, doc: str, pos: int, msg: str) -> str | None:
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
                    refused = go_char(byte_at(raw, doc, pos + i))
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
    return f"invalid character {go_char(byte_at(raw, doc, at))} {why}"


def syntax_message(raw: bytes, doc: str, exc: json.JSONDecodeError) -> str:
    pos = exc.pos
    if pos >= len(doc) or exc.msg.startswith("Unterminated"):
        return "unexpected EOF"
    in_literal = literal_error(raw, doc, pos, exc.msg)
    if in_literal is not None:
        return in_literal
    c = byte_at(raw, doc, pos)
    msg = exc.msg
    if msg.startswith("Expecting property name"):
        return f"invalid character {go_char(c)} looking for beginning of object key string"
    if msg.startswith("Expecting ':'"):
        return f"invalid character {go_char(c)} after object key"
    if msg.startswith("Expecting ','"):
        if _context_at(doc, pos) == "{":
            return f"invalid character {go_char(c)} after object key:value pair"
        return f"invalid character {go_char(c)} after array element"
    if msg.startswith("Invalid control character"):
        return f"invalid character {go_char(c)} in string literal"
    if msg.startswith("Invalid \\u"):
        return _in_hex_escape(raw, doc, pos + 1)
    if msg.startswith("Invalid \\escape"):
        escaped = byte_at(raw, doc, pos + 1) if pos + 1 < len(doc) else c
        return f"invalid character {go_char(escaped)} in string escape code"
    return f"invalid character {go_char(c)} looking for beginning of value"


_HEX = frozenset("0123456789abcdefABCDEF")


def _in_hex_escape(raw: bytes, doc: str, at: int) -> str:
    """Go's error for a `\\u` escape without four hex digits, `at` just after the `u`:
    its scanner reads them a byte at a time (stateInStringEscU..U123) and refuses the
    first other byte, or finds the body's end first ("unexpected EOF")."""
    for pos in range(at, min(at + 4, len(doc))):
        if doc[pos] not in _HEX:
            refused = go_char(byte_at(raw, doc, pos))
            return f"invalid character {refused} in \\u hexadecimal character escape"
    return "unexpected EOF"


# Go's scanner refuses each at the first character that cannot begin a value (after
# a minus sign, the first it cannot continue a number with); Python's json reads them.
CONSTANTS = {
    "NaN": "invalid character 'N' looking for beginning of value",
    "Infinity": "invalid character 'I' looking for beginning of value",
    "-Infinity": "invalid character 'I' in numeric literal",
}


# What `go_readings.decode_error` answers for a body Go reads a value from: no error of Go's.
GO_READS_IT = "invalid JSON in request body"

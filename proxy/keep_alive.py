"""Ollama's `keep_alive`: how long a model stays loaded after a request (api.Duration:
a number of seconds, or a Go duration string; 0 unloads, a negative one keeps it), read
as Go reads it, for the proxy (`auto`'s loads and unloads, the warm set's setting) and
the emulator alike."""

from __future__ import annotations

import math
from typing import Any

import orjson

NANOSECOND = 1e-9
# time.ParseDuration's units, in nanoseconds.
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
# A Duration is an int64 of nanoseconds: 2^63 is where ParseDuration's sums overflow.
_OVERFLOW = 1 << 63


def _go_quote(text: str) -> str:
    """time's `quote`: in double quotes, `"` and `\\` escaped, and each byte of a
    control or non-ASCII character as `\\xNN`."""
    out = ['"']
    for char in text:
        if char < " " or char >= "\x80":
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))
        elif char in '"\\':
            out.append("\\" + char)
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _digits(text: str, at: int) -> int:
    """Where the ASCII digits from `at` end."""
    while at < len(text) and "0" <= text[at] <= "9":
        at += 1
    return at


def duration_nanoseconds(text: str) -> int:
    """time.ParseDuration of `text` in nanoseconds, step for step as Go computes it
    (src/time/format.go), its overflow past an int64 too; ValueError with Go's message
    for what it refuses (a bare number, an unknown unit, a duration beyond 2^63-1 ns)."""
    invalid = ValueError("time: invalid duration " + _go_quote(text))
    rest, negative = text, False
    if rest[:1] in ("-", "+"):
        negative, rest = rest[0] == "-", rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = 0
    while rest:
        if not (rest[0] == "." or "0" <= rest[0] <= "9"):
            raise invalid
        # leadingInt: the whole part, refused once it passes 2^63.
        end, whole = _digits(rest, 0), 0
        for digit in rest[:end]:
            if whole > _OVERFLOW // 10:
                raise invalid
            whole = whole * 10 + ord(digit) - 48
            if whole > _OVERFLOW:
                raise invalid
        before, rest = end > 0, rest[end:]
        # leadingFraction: digits past what an int64 holds are skipped.
        fraction, scale, after = 0, 1.0, False
        if rest[:1] == ".":
            end, overflowed = _digits(rest, 1), False
            for digit in rest[1:end]:
                if overflowed or fraction > (_OVERFLOW - 1) // 10:
                    overflowed = True
                    continue
                widened = fraction * 10 + ord(digit) - 48
                if widened > _OVERFLOW:
                    overflowed = True
                    continue
                fraction, scale = widened, scale * 10
            after, rest = end > 1, rest[end:]
        if not before and not after:
            raise invalid
        # The unit: everything up to the next digit or period.
        end = 0
        while end < len(rest) and not (rest[end] == "." or "0" <= rest[end] <= "9"):
            end += 1
        if end == 0:
            raise ValueError("time: missing unit in duration " + _go_quote(text))
        unit = _UNIT_NS.get(rest[:end])
        if unit is None:
            raise ValueError(
                f"time: unknown unit {_go_quote(rest[:end])} in duration {_go_quote(text)}"
            )
        rest = rest[end:]
        if whole > _OVERFLOW // unit:
            raise invalid
        whole *= unit
        if fraction > 0:
            # float64, as Go computes it, then truncated.
            whole += int(float(fraction) * (float(unit) / scale))
            if whole > _OVERFLOW:
                raise invalid
        total += whole
        if total > _OVERFLOW:
            raise invalid
    if negative:
        return -total
    if total > _OVERFLOW - 1:
        raise invalid
    return total


def duration_seconds(text: str) -> float:
    """Seconds of a Go duration string ("30m", "1h30m", "0"), as time.ParseDuration
    reads it; ValueError with Go's message for anything else, a bare number too."""
    return duration_nanoseconds(text) / 1_000_000_000


def _number(value: orjson.Fragment) -> float:
    """A number the proxy's reading of a body keeps as written (`proxy.go_json`: an
    integer beyond 64 bits, or beyond a double) as api.Duration reads it: into a
    float64, which holds the first and refuses the second (ValueError)."""
    text = orjson.dumps(value).decode()
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"json: cannot unmarshal number {text} into Go value of type float64")
    return number


def parse(value: Any) -> float | None:
    """api.Duration's reading of a request's `keep_alive` in seconds (None: absent;
    negative: forever). ValueError with Go's message for what Ollama refuses."""
    if value is None:
        return None
    if isinstance(value, orjson.Fragment):
        value = _number(value)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        kind = {bool: "bool", list: "[]interface {}", dict: "map[string]interface {}"}
        raise ValueError(f"Unsupported type: '{kind.get(type(value), 'string')}'")
    seconds = float(value) if isinstance(value, int | float) else duration_seconds(value)
    # api.Duration counts whole nanoseconds: a positive keep_alive shorter than one is 0.
    return 0.0 if 0 <= seconds < NANOSECOND else seconds


def unloads(value: Any) -> bool:
    """Whether a request's `keep_alive` asks to unload. ValueError for one Ollama refuses."""
    return parse(value) == 0


def keep_alive_seconds(value: str) -> float:
    """Seconds of a configured keep_alive: a number of seconds or a Go duration ("30m",
    "1h30m"); negative: forever (inf). ValueError for anything else."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = duration_seconds(text)
    return float("inf") if seconds < 0 else seconds

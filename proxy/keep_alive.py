"""Ollama's `keep_alive`: how long a model stays loaded after a request (api.Duration:
a number of seconds, or a Go duration string; 0 unloads, a negative one keeps it), read
as Go reads it, for the proxy (`auto`'s loads and unloads, the warm set's setting) and
the emulator alike."""

from __future__ import annotations

import re
from typing import Any

NANOSECOND = 1e-9
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def duration_seconds(text: str) -> float:
    """Seconds of a Go duration string ("30m", "1h30m", "0"), as time.ParseDuration
    reads it; ValueError with Go's message for anything else, a bare number too."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        if re.fullmatch(r"\d+(\.\d*)?", body):
            raise ValueError(f'time: missing unit in duration "{text}"')
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


def parse(value: Any) -> float | None:
    """api.Duration's reading of a request's `keep_alive` in seconds (None: absent;
    negative: forever). ValueError with Go's message for what Ollama refuses."""
    if value is None:
        return None
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

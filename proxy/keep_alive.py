"""Ollama's `keep_alive`: how long a model stays loaded after a request (api.Duration:
a number of seconds, or a Go duration string; 0 unloads, a negative one keeps it)."""

from __future__ import annotations

import re
from typing import Any

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def duration_seconds(text: str) -> float:
    """Seconds of a Go duration string ("30m", "1h30m", "0"), as time.ParseDuration
    reads it. Raises ValueError for anything else, a bare number too."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    parts = _PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"not a duration: {text!r}")
    return sign * sum(float(n) * _UNITS[u] for n, u in parts)


def keep_alive_seconds(value: str) -> float:
    """Seconds of an Ollama keep_alive: a number of seconds or a Go duration ("30m",
    "1h30m"); negative: forever (inf). Raises ValueError for anything else."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = duration_seconds(text)
    return float("inf") if seconds < 0 else seconds


def unloads(value: Any) -> bool:
    """Whether a request's `keep_alive` (None: absent) asks to unload, as Ollama's
    api.Duration decodes it. ValueError for one Ollama refuses."""
    if value is None:
        return False
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, str):
        return duration_seconds(value) == 0
    return value == 0

"""What the last chunk of an answer says: token counts, durations, why it stopped.

Read from the tail of the response bytes the relay already forwarded (no second
parse of the stream): Ollama's final NDJSON line (`done: true`, durations in
nanoseconds) and the OpenAI shapes' `usage` and `finish_reason`. A whole
/api/generate answer ends with its `logprobs`, after the counters: the relay keeps
the reads that held the counters (`COUNTERS_MARK`) for this too. A field the tail
does not hold (a huge `context` array can push `done_reason`, before it, out of the
reads kept) stays absent.
"""

from __future__ import annotations

import re

import orjson

from proxy.protocol import INT64_MAX

# What `parse` can return, for those who store it (the usage events).
STATS = (
    "done_reason",
    "prompt_eval_count",
    "eval_count",
    "load_duration",
    "prompt_eval_duration",
    "eval_duration",
    "total_duration",
)
_INT_FIELDS = STATS[1:]
# In every read that holds Ollama's counters (four `*_duration` fields in a row, so a
# read boundary cannot hide them all); never in a token's text, where a quote is
# escaped.
COUNTERS_MARK = b'_duration":'

# A count or duration is a Go int (int64): whole digits the number ends with. A fraction,
# an exponent or a sign (a broken server's) is not one, nor what int64 cannot hold
# (`parse`): read as absent, never as its first digits or as a number no sink stores
# (`protocol.count`'s rule, on bytes).
_WHOLE = rb"(\d{1,19})(?=[,}\s])"
# Ollama's counters and the OpenAI shapes' token counts, in one pass over the tail:
# a match of either is a quoted name and digits, so none hides another.
_INT_RE = re.compile(
    rb'"('
    + b"|".join(f.encode() for f in _INT_FIELDS)
    + rb'|prompt_tokens|completion_tokens)":'
    + _WHOLE
)
# A reason is a short word ("stop", "tool_calls", "stop_sequence"); a longer run of
# letters is a broken server's and read as absent, not kept in every usage event.
_REASON_RE = re.compile(rb'"(?:done_reason|finish_reason|stop_reason)":"([a-z_]{1,32})"')
_OLLAMA_NAMES = {f.encode(): f for f in _INT_FIELDS}
_OPENAI_NAMES = {b"prompt_tokens": "prompt_eval_count", b"completion_tokens": "eval_count"}


def parse(tail: bytes) -> dict[str, int | str]:
    stats: dict[str, int | str] = {}
    # The OpenAI shapes' counts stand in for Ollama's only where those are absent.
    openai: dict[str, int] = {}
    for name, value in _INT_RE.findall(tail):
        number = int(value)
        if number > INT64_MAX:
            continue
        field = _OLLAMA_NAMES.get(name)
        if field is not None:
            stats[field] = number
        else:
            openai.setdefault(_OPENAI_NAMES[name], number)
    for field, number in openai.items():
        stats.setdefault(field, number)
    reasons = _REASON_RE.findall(tail)
    if reasons:
        stats["done_reason"] = reasons[-1].decode()
    return stats


# Ollama's line for a stream that failed after it began (streamResponse): the last one.
_ERROR_LINE = b'{"error":'
# What may follow the last line in the bytes relayed: chunk framing, the last chunk.
_FRAMING = re.compile(rb"[\r\n0-9a-fA-F]*")
# An error kept in a usage event: a backend's message, not a body.
MAX_ERROR_CHARS = 1000


def stream_error(tail: bytes) -> str | None:
    """The error of the `{"error": "..."}` line an NDJSON stream ends with (Ollama's
    streamResponse writes one when the request fails after the answer began, its status
    200 already sent), None when it ends otherwise."""
    at = tail.rfind(_ERROR_LINE)
    if at < 0:
        return None
    end = tail.find(b"\n", at)
    if end < 0 or not _FRAMING.fullmatch(tail, end):
        return None
    try:
        line = orjson.loads(tail[at:end])
    except orjson.JSONDecodeError:
        return None
    error = line.get("error") if isinstance(line, dict) else None
    return error[:MAX_ERROR_CHARS] if isinstance(error, str) else None

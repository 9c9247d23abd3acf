"""What the last chunk of an answer says: token counts, durations, why it stopped,
and whether the stream ended as an answer that ran to its end does.

Read from the tail of the response bytes the relay already forwarded (no second
parse of the stream): Ollama's final NDJSON line (`done: true`, durations in
nanoseconds), the OpenAI shapes' `usage` and `finish_reason`, and the token counts the
Responses and Anthropic Messages shapes name `input_tokens` and `output_tokens`. A whole
/api/generate answer ends with its `logprobs`, after the counters: the relay keeps
the reads that held the counters (`COUNTERS_MARK`) for this too. A field the tail
does not hold (a huge `context` array can push `done_reason`, before it, out of the
reads kept) stays absent.
"""

from __future__ import annotations

import re

import orjson

from proxy.outcome import MAX_ERROR_CHARS
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
# The token counts of Ollama's compatibility shapes, by their names there: OpenAI's
# Chat Completions and Completions; Responses and Anthropic's Messages.
_SHAPE_NAMES = {
    b"prompt_tokens": "prompt_eval_count",
    b"completion_tokens": "eval_count",
    b"input_tokens": "prompt_eval_count",
    b"output_tokens": "eval_count",
}
# Ollama's counters and the shapes' token counts, in one pass over the tail: a match
# of either is a quoted name and digits, so none hides another.
_INT_RE = re.compile(
    rb'"(' + b"|".join((*(f.encode() for f in _INT_FIELDS), *_SHAPE_NAMES)) + rb')":' + _WHOLE
)
# A reason is a short word ("stop", "tool_calls", "stop_sequence"); a longer run of
# letters is a broken server's and read as absent, not kept in every usage event.
_REASON_RE = re.compile(rb'"(?:done_reason|finish_reason|stop_reason)":"([a-z_]{1,32})"')
_OLLAMA_NAMES = {f.encode(): f for f in _INT_FIELDS}


def parse(tail: bytes) -> dict[str, int | str]:
    """The last of each count wins: a stream's earlier events may hold counts of part of
    the answer or zeros (Ollama's Completions stream with `include_usage` gives every
    chunk a `usage` of zeros before the last one's; Anthropic's `message_start` counts
    no output, its `message_delta` the whole answer's)."""
    stats: dict[str, int | str] = {}
    # The shapes' counts stand in for Ollama's only where those are absent.
    shaped: dict[str, int] = {}
    for name, value in _INT_RE.findall(tail):
        number = int(value)
        if number > INT64_MAX:
            continue
        field = _OLLAMA_NAMES.get(name)
        if field is not None:
            stats[field] = number
        else:
            shaped[_SHAPE_NAMES[name]] = number
    for field, number in shaped.items():
        stats.setdefault(field, number)
    reasons = _REASON_RE.findall(tail)
    if reasons:
        stats["done_reason"] = reasons[-1].decode()
    return stats


# Ollama's line for a stream that failed after it began (streamResponse): the last one.
_ERROR_LINE = b'{"error":'
# What may follow the last line in the bytes relayed: chunk framing, the last chunk.
_FRAMING = re.compile(rb"[\r\n0-9a-fA-F]*")


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


def answer_error(tail: bytes, chunked: bool) -> str | None:
    """The message of the error a failed answer (a status other than 200) says, from the
    tail of its bytes (`chunked`: with their chunk framing): Ollama's `{"error": "..."}`
    (a JSON body, or the line of a stream that failed before its answer began, which
    streamResponse writes with the error's status), the OpenAI and Anthropic shapes'
    `{"error": {"message": ...}}`. None for a body that says none, or that the tail
    does not hold whole (a long one: the error is then not read)."""
    body = (unchunked(tail) if chunked else tail).rstrip()
    message = _error_message(body)
    if message is None and b"\n" in body:
        message = _error_message(body.rpartition(b"\n")[2])  # a stream's last line
    return None if message is None else message[:MAX_ERROR_CHARS]


# How a stream on each of Ollama's SSE shapes ends when its answer ran to its end
# (middleware/openai.go's ChatWriter and CompleteWriter; openai.ResponsesStreamConverter,
# whose events Go marshals from maps, keys sorted: `type` comes last; anthropic's
# StreamConverter): once the answer began, a failure only stops the stream short of it
# (those writers read streamResponse's `{"error": ...}` line as a chunk of nothing).
_SSE_ENDS = {
    "/v1/chat/completions": b"data: [DONE]\n\n",
    "/v1/completions": b"data: [DONE]\n\n",
    "/v1/responses": b'"type":"response.completed"}\n\n',
    "/v1/messages": b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
}
# The error of a stream that stopped short of its end without saying why.
UNFINISHED = "the backend ended the stream before the answer's end"
_TERMINAL_CHUNK = b"\r\n0\r\n\r\n"
_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")


def sse_error(tail: bytes, path: str, chunked: bool) -> str | None:
    """Why a 200 SSE stream on `path` failed, from the tail of its bytes (`chunked`:
    with their chunk framing), None when it ended as its answer does on success (or
    `path` has no such end): the message of the error event it ended with (this
    proxy's `errors.stream_error_line`, Anthropic's `error`, the Responses API's
    `response.failed`), else `UNFINISHED`."""
    end = _SSE_ENDS.get(path)
    if end is None:
        return None
    body = unchunked(tail) if chunked else tail
    # A tail shorter than the end (the last event came in several reads, the last two
    # the tail holds ending inside it) is taken at its word where it agrees with it.
    if body.endswith(end) or (body and end.endswith(body)):
        return None
    if body.endswith(b"\n\n"):
        last = body[:-2].rpartition(b"\n\n")[2]  # the last event
        for line in last.split(b"\n"):
            if line.startswith(b"data:"):
                message = _error_message(line[5:])
                if message is not None:
                    return message[:MAX_ERROR_CHARS]
    return UNFINISHED


def _error_message(data: bytes) -> str | None:
    """The message of an SSE event's data that reports an error, None otherwise."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    response = event.get("response")
    if event.get("type") == "response.failed" and isinstance(response, dict):
        event = response
    error = event.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    return error if isinstance(error, str) and error else None


def unchunked(tail: bytes) -> bytes:
    """The end of a chunked body's data from the tail of its bytes, framing included:
    its last chunks' data, as far back as the tail holds them (the tail itself when it
    does not end with the terminal chunk). Read backwards from the terminal chunk: a
    chunk's data follows its size line, and a line break inside the data (none in
    Ollama's JSON or SSE) is told from a size line by the size not matching."""
    if not tail.endswith(_TERMINAL_CHUNK):
        return tail
    pieces: list[bytes] = []
    end = len(tail) - len(_TERMINAL_CHUNK)  # where the data of the chunk read ends
    while end > 0:
        line_end = tail.rfind(b"\r\n", 0, end)
        while line_end >= 0:
            before = tail.rfind(b"\r\n", 0, line_end)
            start = before + 2 if before >= 0 else 0
            size = tail[start:line_end].split(b";", 1)[0]
            if _HEX.fullmatch(size) and int(size, 16) == end - line_end - 2:
                break
            line_end = before
        if line_end < 0:
            pieces.append(tail[:end])  # the chunk began before the tail
            break
        pieces.append(tail[line_end + 2 : end])
        end = start - 2
    return b"".join(reversed(pieces))

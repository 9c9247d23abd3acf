"""Request features: what one request body says about the answer it asks for.

They read only what a decision needs and bound their work: of a long conversation
only the first and last `SCAN_CHARS` characters are scanned (keyword hints only the
first and last `HINT_CHARS`), so a 1 MB chat costs what a 4 KB one does.

`request_features` reads a request in named steps, each giving its columns in
`REQUEST_FEATURES` order: the conversation's sizes, the characters counted in its
text, the keyword hints, what it asks of the model besides text, the hashed words of
its last user turn, and last the share of each area, estimated from those.
"""

from __future__ import annotations

import math
import operator
import re
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from selector_model import request_body
from selector_model.features.hints import read_hints
from selector_model.features.schema import (
    AREAS,
    HASH_BUCKETS,
    HASH_WORDS,
    LANGUAGES,
    REQUEST_FEATURES,
    SCAN_CHARS,
)
from selector_model.features.words import spaced, utf8


def request_features(path: str, body: Mapping[str, Any]) -> list[float]:
    """Features of one request body (any shape `request_body` reads), in
    `REQUEST_FEATURES` order."""
    text = _read(body)
    last = text.last_user  # its first and last `SCAN_CHARS` characters are read
    if len(last) > 2 * SCAN_CHARS:
        last = last[:SCAN_CHARS] + last[-SCAN_CHARS:]
    hints = read_hints(text.sample, last, text.join, text.last_at)
    features = [
        *_sizes(text),
        *_counts(text.sample, last),
        *hints.values,
        *_asks(path, body, text.images),
        *_word_hashes(last, hints.spaced_last),
    ]
    features += _area_demand(features)
    return features


class _Scan:
    """The text of a request, bounded: its total size, and a sample that is the whole
    text when short, else its first and last `SCAN_CHARS` characters. Memory and work
    stay bounded however many messages a conversation has."""

    def __init__(self) -> None:
        self.total = 0
        self.head: list[str] = []
        self.head_len = 0
        self.tail: deque[str] = deque()
        self.tail_len = 0
        self.dropped = False

    def add(self, text: str) -> None:
        self.total += len(text)
        if self.head_len < SCAN_CHARS:
            piece = text[: SCAN_CHARS - self.head_len]
            self.head.append(piece)
            self.head_len += len(piece) + 1
            text = text[len(piece) :]
            if not text:
                return
        text = text[-SCAN_CHARS:]
        self.tail.append(text)
        self.tail_len += len(text) + 1
        while self.tail_len - len(self.tail[0]) - 1 >= SCAN_CHARS:
            self.tail_len -= len(self.tail.popleft()) + 1
            self.dropped = True

    def sample(self) -> str:
        head = "\n".join(self.head)
        if not self.tail:
            return head
        tail = "\n".join(self.tail)
        if self.dropped or len(tail) > SCAN_CHARS:
            tail = tail[-SCAN_CHARS:]
        return head + "\n" + tail

    def join(self) -> int:
        """Where `sample` joins the head and the tail, -1 for a sample that is all head."""
        return self.head_len - 1 if self.tail else -1

    def next_at(self) -> int:
        """Where in `sample` the next text added starts, -1 for one that starts in the tail."""
        return self.head_len if self.head_len < SCAN_CHARS else -1


@dataclass(slots=True)  # not frozen: built on every request, and frozen costs a call per field
class _Text:
    """What a request gives the model to read."""

    total: int  # characters of all its texts
    sample: str  # `_Scan.sample` of them
    entries: int  # conversation entries (0: no conversation)
    user_turns: int
    system_chars: int
    last_user: str  # the last user turn, or the prompt
    images: bool
    join: int  # `_Scan.join`
    last_at: int  # where `last_user` starts in `sample`, -1 in the tail


def _read(body: Mapping[str, Any]) -> _Text:
    """The texts of the conversation's turns and of the body's own fields, in order."""
    scan = _Scan()
    user_turns = 0
    system_chars = 0
    last_user = ""
    last_at = -1
    images = False
    for role, text, has_images in request_body.turns(body):
        if role == "system":
            system_chars += len(text)
        elif role == "user":
            user_turns += 1
            last_user = text
            last_at = scan.next_at()
        images = images or has_images
        scan.add(text)
    for kind, text in request_body.fields(body):
        if kind == "system":
            system_chars += len(text)
        elif kind == "prompt":
            last_user = text
            last_at = scan.next_at()
            user_turns = max(user_turns, 1)
        scan.add(text)
    return _Text(
        total=scan.total,
        sample=scan.sample(),
        entries=request_body.entry_count(body) or 0,
        user_turns=user_turns,
        system_chars=system_chars,
        last_user=last_user,
        images=images or bool(body.get("images")),
        join=scan.join(),
        last_at=last_at,
    )


def _sizes(text: _Text) -> list[float]:
    """log_chars … log_last_user_chars: how much there is to read, and in what turns."""
    return [
        math.log1p(text.total),
        math.log1p(text.total / 4.0),
        float(text.entries),
        float(text.user_turns),
        1.0 if text.system_chars else 0.0,
        math.log1p(text.system_chars),
        math.log1p(len(text.last_user)),
    ]


def _all_but(chars: bytes) -> bytes:
    """What `bytes.translate` deletes to keep only `chars`."""
    return bytes(byte for byte in range(256) if byte not in chars)


# Counts of ASCII characters are taken on the UTF-8 bytes, where an ASCII byte is always
# that character: one pass deletes all but the characters counted, for two counts at
# once ("\n" and code characters; "?" and digits).
_ALL_BUT_CODE_OR_NEWLINE = _all_but(b"{}();=<>[]\n")
_ALL_BUT_DIGITS_OR_QUESTION = _all_but(b"0123456789?")
# "```" as str.count counts it (non-overlapping, left to right), where the search skips
# to each "`": str.count compares at every position.
_FENCE_MARK = re.compile("```")


def _counts(sample: str, last: str) -> list[float]:
    """code_fences, code_char_ratio and lines of the sample; questions and numbers (digits)
    of the last user turn."""
    sample_kept = utf8(sample).translate(None, _ALL_BUT_CODE_OR_NEWLINE)
    newlines = sample_kept.count(b"\n")
    last_kept = utf8(last).translate(None, _ALL_BUT_DIGITS_OR_QUESTION)
    questions = last_kept.count(b"?")
    fences = len(_FENCE_MARK.findall(sample)) if "`" in sample else 0
    return [
        float(fences // 2),
        (len(sample_kept) - newlines) / len(sample) if sample else 0.0,
        float(newlines),
        float(questions),
        float(len(last_kept) - questions),
    ]


def _asks(path: str, body: Mapping[str, Any], images: bool) -> list[float]:
    """tools … endpoint_openai: what the request asks of the model besides reading text
    (tools, images, an output format, thinking, fill-in-the-middle, sampling options),
    and the API it came through."""
    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    assert isinstance(options, dict)
    fmt = body.get("format") or body.get("response_format")
    tools = request_body.tool_count(body)
    temperature = options.get("temperature", body.get("temperature"))
    num_ctx = options.get("num_ctx")
    num_predict = request_body.max_output_tokens(body)
    return [
        1.0 if tools else 0.0,
        math.log1p(tools),
        1.0 if images else 0.0,
        1.0
        if fmt == "json" or (isinstance(fmt, dict) and fmt.get("type") == "json_object")
        else 0.0,
        1.0 if isinstance(fmt, dict) and fmt.get("type") != "json_object" else 0.0,
        1.0 if request_body.thinking(body) is True else 0.0,
        1.0 if request_body.suffix(body) else 0.0,
        1.0 if body.get("raw") is True else 0.0,
        float(temperature) if isinstance(temperature, int | float) else -1.0,
        math.log2(num_ctx) if isinstance(num_ctx, int | float) and num_ctx > 0 else 0.0,
        math.log1p(num_predict) if num_predict else 0.0,
        1.0 if path.endswith("/chat") or path.endswith("/chat/completions") else 0.0,
        1.0 if path.startswith("/v1/") else 0.0,
    ]


def _word_hashes(last: str, spaced_last: bytes) -> list[float]:
    """head_hash_* and tail_hash_*: the first and the last `HASH_WORDS` words of the last
    user turn's first and last 512 characters, lower-cased, each counted in the bucket
    of its UTF-8's CRC-32.

    Where lower-casing kept every character (ASCII), those are slices of the hint window
    already spaced (`spaced_last`; 512 < HINT_CHARS), taken as UTF-8 bytes: the words'
    encodings without encoding each, and bytes.split splits where str.split does (the
    only whitespace left in a spaced ASCII text is " ")."""
    if last.isascii():
        head_words = spaced_last[:512].split(None, HASH_WORDS)[:HASH_WORDS]
        tail_words = spaced_last[-512:].rsplit(None, HASH_WORDS)[-HASH_WORDS:]
    else:
        head, tail = spaced(last[:512].lower()), spaced(last[-512:].lower())
        # Strict UTF-8: a lone surrogate in a hashed word raises.
        head_words = [word.encode() for word in head.split(None, HASH_WORDS)[:HASH_WORDS]]
        tail_words = [word.encode() for word in tail.rsplit(None, HASH_WORDS)[-HASH_WORDS:]]
    hashes = [0.0] * (2 * HASH_BUCKETS)
    for word in head_words:
        hashes[zlib.crc32(word) % HASH_BUCKETS] += 1.0
    for word in tail_words:
        hashes[HASH_BUCKETS + zlib.crc32(word) % HASH_BUCKETS] += 1.0
    return hashes


_AT = {name: i for i, name in enumerate(REQUEST_FEATURES)}
# What `_area_demand` reads, each group taken in one C-level call.
_LANGS = operator.itemgetter(*(_AT[f"lang_{name}"] for name in LANGUAGES))
_CODE_TASKS = operator.itemgetter(
    *(_AT[f"task_{name}"] for name in ("fix", "refactor", "test", "complete"))
)
_INSTRUCTION_TASKS = operator.itemgetter(
    *(_AT[f"task_{name}"] for name in ("summarize", "translate", "generate"))
)
_SCALARS = operator.itemgetter(
    *(
        _AT[name]
        for name in (
            "lines",
            "code_fences",
            "code_char_ratio",
            "fim",
            "math",
            "numbers",
            "multiple_choice",
            "task_explain",
            "questions",
            "log_last_user_chars",
            "format_json",
            "format_schema",
            "tools",
            "has_system",
        )
    )
)
_LONG_PROMPT = math.log1p(150)  # log_last_user_chars where a prompt starts to be long
_DEMAND_BASE = 0.2  # what each area gets with no evidence: no hint says "this area only"
# `_area_demand` gives its evidence in `AREAS` order.
assert AREAS == ("knowledge", "reasoning", "math", "code", "instruction")


def _area_demand(f: Sequence[float]) -> list[float]:
    """demand_*: what share of the request each of `AREAS` is, estimated from the
    request features already computed (a few arithmetic operations): evidence per area,
    plus `_DEMAND_BASE`, normalised to sum to 1. Rough by design; the selector weighs it
    against the candidates' area scores."""
    (
        lines,
        fences,
        code_ratio,
        fim,
        maths_hints,
        numbers,
        choice,
        explain,
        questions,
        log_last,
        json_format,
        schema,
        tools,
        system,
    ) = _SCALARS(f)
    # A language hinted in a text of many lines is a program to read or complete (a
    # function stub with its docstring): its arithmetic words ("sum", "integer") are
    # what the code computes, not a maths question, so it weighs up to twice.
    code = (
        max(_LANGS(f)) * (1.0 + min(lines / 10.0, 1.0))
        + min(fences, 3.0) / 3.0
        + min(code_ratio * 10.0, 1.0)
        + fim
        + 0.5 * max(_CODE_TASKS(f))
    )
    # Numbers with a question ask for a computation (a word problem), as `kind_of` reads it.
    maths = (
        2.0 * min(maths_hints, 5.0) / 5.0
        + 0.5 * min(numbers / 20.0, 1.0)
        + 0.5 * min(numbers / 8.0, 1.0) * min(questions, 1.0)
    )
    knowledge = choice + 0.5 * explain + 0.25 * min(questions, 2.0)
    reasoning = min(max(log_last - _LONG_PROMPT, 0.0) / 3.0, 1.0) + 0.5 * (
        choice * min(maths_hints, 1.0)
    )
    instruction = json_format + schema + tools + 0.5 * system + 0.5 * max(_INSTRUCTION_TASKS(f))
    evidence = [knowledge, reasoning, maths, code, instruction]
    total = sum(evidence) + _DEMAND_BASE * len(evidence)
    return [(_DEMAND_BASE + e) / total for e in evidence]

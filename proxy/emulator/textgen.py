"""Deterministic "model output": the same (model, input) always yields the same tokens.

Nothing here sleeps or touches HTTP: `plan()` decides up front what a request will
produce (thinking tokens, content tokens, tool calls, why it stops) and the engine then
paces that plan onto the wire. Made-up prose (`Prose`) is decided by its seed and length
alone, its tokens made as the engine takes them: a request for a hundred thousand
tokens holds one token at a time, however long its answer.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from proxy.go_deep import unread

from .catalog import ModelSpec

_VOCAB = (
    "the model reads your request and answers with a short clear reply about data "
    "systems networks latency routing tokens queues caching memory threads requests "
    "responses streaming servers clients load balance throughput graphs vectors layers "
    "weights gradients context prompt output value signal measure result example simple "
    "careful fast stable local remote small large first next final each every other"
).split()
_THINK_VOCAB = (
    "okay let me think about what the user wants here first check the question then "
    "consider the options and pick the best answer carefully step by step"
).split()


# The characters of Ollama's tool call ids (toolCallId's letterBytes).
TAG_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def drawn_call_id() -> str:
    """ChatHandler's toolCallId(): "call_" and 8 characters drawn at random."""
    return "call_" + "".join(random.choices(TAG_ALPHABET, k=8))


def seeded(*parts: str, prefix: Any = None) -> Any:
    """sha256 of the parts joined with NULs (after `prefix`, a `seeded(..., "")` whose
    digest is not taken), each part hashed as it is encoded: a part as long as a prompt
    is neither joined to the others nor, with a prefix, hashed again."""
    digest = prefix.copy() if prefix is not None else hashlib.sha256()
    for i, part in enumerate(parts):
        if i:
            digest.update(b"\0")
        digest.update(part.encode())
    return digest


class Rng:
    """A byte stream from sha256(seed, counter): portable and reproducible."""

    def __init__(self, *seed: str, prefix: Any = None) -> None:
        self._seed = seeded(*seed, prefix=prefix).digest()
        self._counter = 0

    def copy(self) -> Rng:
        """An Rng that draws what this one draws next, independently of it."""
        twin = Rng.__new__(Rng)
        twin._seed, twin._counter = self._seed, self._counter
        return twin

    def next(self, modulo: int) -> int:
        self._counter += 1
        block = hashlib.sha256(self._seed + self._counter.to_bytes(8, "little")).digest()
        return int.from_bytes(block[:8], "little") % max(modulo, 1)

    def word(self, vocab: tuple[str, ...] | list[str] = _VOCAB) -> str:
        return vocab[self.next(len(vocab))]

    def tag(self, length: int) -> str:
        return "".join(TAG_ALPHABET[self.next(len(TAG_ALPHABET))] for _ in range(length))


def count_tokens(text: str) -> int:
    """Rough tokenizer: about four characters a token, at least one for non-empty text."""
    return (len(text) + 3) // 4 if text else 0


class Prose:
    """`n` tokens of sentence-shaped text drawn from `rng` (from where it stands now):
    capitalised starts, periods now and then, a period on the last. A sequence whose
    tokens are made as it is iterated, and `[:k]` of it the first k of the same text."""

    def __init__(
        self, rng: Rng, n: int, vocab: list[str] | tuple[str, ...] = _VOCAB, take: int | None = None
    ) -> None:
        self._rng = rng.copy()
        self._n = n
        self._vocab = vocab
        self._take = n if take is None else max(min(take, n), 0)

    def __len__(self) -> int:
        return self._take

    def __iter__(self) -> Iterator[str]:
        rng, n = self._rng.copy(), self._n
        start = True
        for i in range(self._take):
            w = rng.word(self._vocab)
            if start:
                w = w.capitalize()
            start = rng.next(9) == 0 or i == n - 1
            if start:
                w += "."
            yield w if i == 0 else " " + w

    def __getitem__(self, index: slice) -> Prose:
        if index.start not in (None, 0) or index.step not in (None, 1):
            raise ValueError("only a leading slice of prose is taken")
        stop = self._take if index.stop is None else index.stop
        if stop < 0:
            stop += self._take
        return Prose(self._rng, self._n, self._vocab, min(stop, self._take))


def chunk_text(text: str) -> list[str]:
    """Split literal text (JSON, tool calls) into token-sized pieces."""
    return re.findall(r"\s*\S{1,5}", text) or ([text] if text else [])


# How deep `sample_value` follows a schema: a schema may nest as deep as Go reads
# (10,000 levels), far past Python's stack; below this, a value is a word.
_SAMPLE_DEPTH = 32


def _holds_unread(value: Any) -> bool:
    """Whether `value` holds a value nested deeper than the body's reading goes
    (`go_deep.unread`): thousands of levels, which as a tool call's arguments or an
    answer would be thousands of tokens to make up; not a value to pick. A loop."""
    pending = [value]
    while pending:
        item = pending.pop()
        if unread(item):
            return True
        if isinstance(item, dict):
            pending += item.values()
        elif isinstance(item, list):
            pending += item
    return False


def sample_value(schema: Any, rng: Rng, name: str = "", depth: int = 0) -> Any:
    """A plausible value for a JSON-schema node (enough for format and tool args)."""
    if not isinstance(schema, dict) or depth >= _SAMPLE_DEPTH:
        return rng.word()
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        choice = schema["enum"][rng.next(len(schema["enum"]))]
        if not _holds_unread(choice):
            return choice
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            return {"value": rng.word()}
        return {k: sample_value(v, rng, k, depth + 1) for k, v in props.items()}
    if kind == "array":
        return [sample_value(schema.get("items", {}), rng, name, depth + 1)]
    if kind == "integer":
        return 1 + rng.next(99)
    if kind == "number":
        # Always a fraction: Go prints a whole float64 without ".0", Python would not.
        return rng.next(1000) + 0.25
    if kind == "boolean":
        return rng.next(2) == 1
    if name.lower() in ("city", "location", "place"):
        return ("Paris", "Tokyo", "Lima", "Oslo", "Cairo")[rng.next(5)]
    return rng.word() + " " + rng.word()


def format_text(fmt: Any, rng: Rng) -> str:
    """Valid JSON text for `format: "json"` or a JSON-schema format."""
    if isinstance(fmt, dict):
        value = sample_value(fmt if fmt.get("type") else {"type": "object", **fmt}, rng)
    else:
        value = {"answer": " ".join(rng.word() for _ in range(4)), "confidence": 0.87}
    return json.dumps(value)


def tool_call(tools: list[Any], rng: Rng) -> dict[str, Any] | None:
    """Pick one tool and fill its arguments (an object, in schema order)."""
    usable = [
        t
        for t in tools
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name")
    ]
    if not usable:
        return None
    fn = usable[rng.next(len(usable))]["function"]
    params: dict[str, Any] = fn["parameters"] if isinstance(fn.get("parameters"), dict) else {}
    props: dict[str, Any] = (
        params["properties"] if isinstance(params.get("properties"), dict) else {}
    )
    required: list[Any] = params["required"] if isinstance(params.get("required"), list) else []
    names = [k for k in props if k in required] or list(props)
    args = {k: sample_value(props[k], rng, k) for k in names}
    return {
        "id": "call_" + rng.tag(8),
        "function": {"index": 0, "name": fn["name"], "arguments": args},
    }


@dataclass
class Plan:
    """What one completion will emit, decided before any pacing."""

    prompt_tokens: int
    thinking: list[str] | Prose = field(default_factory=list)
    # Made-up prose is made as the engine sends it (`Prose`).
    content: list[str] | Prose = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # Tokens the model "spends" writing tool calls: paced, but not streamed as text.
    tool_tokens: int = 0
    done_reason: str = "stop"

    @property
    def eval_count(self) -> int:
        return len(self.thinking) + len(self.content) + self.tool_tokens

    @property
    def text(self) -> str:
        return "".join(self.content)


def plan(
    spec: ModelSpec,
    key: str,
    *,
    prompt_tokens: int,
    default_tokens: int,
    num_predict: int | None = None,
    think: bool = False,
    fmt: Any = None,
    tools: list[Any] | None = None,
    last_role: str = "user",
    limit_is_cap: bool = False,
    answer: str | None = None,
) -> Plan:
    """Decide the output for (model, key). `key` is a canonical rendering of the input.

    An explicit num_predict is normally *reached* (the model rambles until cut, answer
    "length"), which lets tests and benchmarks choose output lengths. With
    `limit_is_cap` (Anthropic's mandatory max_tokens) it only caps the natural
    default_tokens-long answer. `answer`: the text of a reply decided elsewhere (the
    profiling hook, skills.py), of its natural length, only capped by num_predict."""
    rng = Rng(spec.name, key)
    limit = num_predict if num_predict is not None and num_predict > 0 else None
    out = Plan(prompt_tokens=prompt_tokens)
    if think:
        out.thinking = Prose(
            Rng(spec.name, key, "think"), max(3, default_tokens // 2), _THINK_VOCAB
        )
    call = tool_call(tools, rng) if tools and last_role != "tool" else None
    raw_call = ""
    if call is not None:
        raw_call = json.dumps(
            {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}
        )
        out.tool_calls, out.tool_tokens = [call], len(chunk_text(raw_call))
    elif fmt not in (None, "", "null"):
        out.content = chunk_text(format_text(fmt, rng))
    elif answer is not None:
        out.content = chunk_text(answer)
    else:
        exact = limit is not None and not limit_is_cap
        out.content = Prose(rng, limit if exact and limit else default_tokens)
        if exact:
            out.done_reason = "length"
    if limit is not None and out.eval_count > limit:
        out.done_reason = "length"
        out.thinking = out.thinking[:limit]
        room = limit - len(out.thinking)
        if out.tool_calls:
            # The call JSON was cut off mid-way: the tool parser gives up and the
            # partial text surfaces as content.
            out.content = chunk_text(raw_call)[:room]
            out.tool_calls, out.tool_tokens = [], 0
        else:
            out.content = out.content[:room]
    return out


def logprob_prefix(key: str) -> Any:
    """What `token_logprob` seeds every position of the answer to `key` from: the key
    (a whole prompt) is hashed once per answer, not once per token."""
    return seeded("logprob", key, "")


def token_logprob(
    key: str, position: int, token: str, top: int, prefix: Any = None
) -> dict[str, Any]:
    """An api.Logprob for the token at `position` of the answer to `key`: its log
    probability and, when `top` > 0, the `top` likeliest tokens there (it among them,
    first, as the sampler took the likeliest), each with its UTF-8 bytes as
    toAPILogprobs gives them. `prefix`: `logprob_prefix(key)`, when already made."""
    rng = Rng(str(position), prefix=prefix or logprob_prefix(key))

    def entry(text: str, logprob: float) -> dict[str, Any]:
        out: dict[str, Any] = {"token": text, "logprob": logprob}
        if text:
            out["bytes"] = list(text.encode())
        return out

    chosen = -rng.next(2000) / 1000.0
    result = entry(token, chosen)
    if top > 0:
        others = sorted(chosen - (1 + rng.next(6000)) / 1000.0 for _ in range(top - 1))
        alternatives = [entry(" " + rng.word(), lp) for lp in reversed(others)]
        result["top_logprobs"] = [entry(token, chosen), *alternatives]
    return result


def context_tokens(key: str, count: int) -> Iterator[int]:
    """Token ids for /api/generate's deprecated `context` field, made as taken."""
    rng = Rng("context", key)
    return (rng.next(151_000) for _ in range(count))


def embedding_f32(spec: ModelSpec, text: str, dims: int | None = None) -> Any:
    """A unit vector derived from (model, text), float32, optionally truncated to `dims`
    and renormalised (what /api/embed does with `dimensions`); every magnitude at least
    1e-4, so every value prints in plain decimal, as Go's float32 formatting does for
    this range."""
    size = spec.embedding_length
    seed = seeded(spec.name, text).digest()
    gen = np.random.default_rng(int.from_bytes(seed[:8], "little"))
    vec = gen.standard_normal(size).astype(np.float32)
    vec /= np.float32(max(float(np.linalg.norm(vec)), 1e-12))
    if dims is not None and 0 < dims < size:
        vec = vec[:dims]
        vec /= np.float32(max(float(np.linalg.norm(vec)), 1e-12))
    return np.where(np.abs(vec) < 1e-4, np.copysign(np.float32(1e-4), vec), vec)


def embedding(
    spec: ModelSpec, text: str, dims: int | None = None, *, widen: bool = False
) -> list[float]:
    """`embedding_f32` as Python floats that print as Go prints the vector.

    /api/embed marshals []float32 (shortest float32 digits); the legacy
    /api/embeddings converts to float64 first, so `widen` keeps the float32 value's
    full double expansion (0.1f prints as 0.10000000149011612 there)."""
    vec = embedding_f32(spec, text, dims)
    if widen:
        return [float(v) for v in vec]
    # float(repr(np.float32)) is Go's shortest form.
    return [float(str(v)) for v in vec]


def vector_json(vec: Any) -> bytes:
    """An `embedding_f32` vector as json.Marshal writes a []float32: orjson writes a
    float32 array in its shortest digits, as Go does, and Go writes a whole value (a
    vector of one value is 1 or -1) without a fraction, where orjson writes one."""
    if np.any(vec == np.trunc(vec)):
        values = (float(str(v)) for v in vec)
        return orjson.dumps([int(v) if v.is_integer() else v for v in values])
    return orjson.dumps(vec, option=orjson.OPT_SERIALIZE_NUMPY)

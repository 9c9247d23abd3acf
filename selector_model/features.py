"""The one feature definition: serving scores with it and training builds rows with it.

If training and serving ever computed a feature differently, the selector would be
silently wrong, so nothing else may compute these. A row is

    request features ⊕ candidate features

Candidate features describe a model by what is known of it (size, quantization, the
catalogue's per-area scores and specialities, release date, how uncertain that
knowledge is), never by its name: a model the selector never saw is scored from the
same columns as one it was trained on, so its P(success) on a coding prompt follows
its coding ability.

Request features read only what a decision needs and bound their work: of a long
conversation only the first and last `SCAN_CHARS` characters are scanned (keyword
hints only the first and last `HINT_CHARS`), so a 1 MB chat costs what a 4 KB one
does. Bump `SCHEMA_VERSION` whenever a name, an order or a computation changes: the
proxy refuses an artifact built on another schema.
"""

from __future__ import annotations

import functools
import math
import operator
import re
import string
import zlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from selector_model import request_body

SCHEMA_VERSION = 2
SCAN_CHARS = 2048
HINT_CHARS = 768
HASH_BUCKETS = 16
HASH_WORDS = 12

LANGUAGES = ("python", "javascript", "typescript", "go", "rust", "java", "cpp", "sql", "shell")
TASKS = ("fix", "explain", "refactor", "test", "generate", "complete", "summarize", "translate")
FAMILIES = ("llama", "qwen", "gemma", "mistral", "mixtral", "phi", "deepseek", "nemotron", "other")
CAPABILITIES = ("tools", "vision", "thinking", "insert")
# The catalogue's capability areas, each a score in [0, 1], and the specialities it
# records (selector_model.catalog); a request's "area demand" uses the same areas.
AREAS = ("knowledge", "reasoning", "math", "code", "instruction")
SPECIALTIES = ("code", "math", "vision", "reasoning", "tools")
# What a candidate without catalogue knowledge is taken to have: middling scores,
# fully uncertain, released at the start of the training data's era.
UNKNOWN_AREA = 0.5
DEFAULT_RELEASE = 2024.0
RELEASE_ORIGIN = 2023.0

# Keyword hints, read from lower-cased text: a hint word counts when it is one of the
# text's words, a symbol when it is in the text. A regular expression per hint would
# cost ~0.5 ms each on 8 KB. Approximate by design; what matters is that training and
# serving read them the same way, here (see "How the definitions above are read fast").
_LANGUAGE_HINTS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "python": (frozenset({"def", "elif", "self", "none", "import"}), ("```python", "print(")),
    "javascript": (frozenset({"function", "const", "console", "var"}), ("```js", "=> ")),
    "typescript": (frozenset({"interface", "typescript"}), ("```ts", ": string", ": number")),
    "go": (frozenset({"func", "golang", "goroutine"}), ("```go", ":= ", "package main")),
    "rust": (frozenset({"fn", "impl", "cargo", "rust"}), ("```rust", "let mut ")),
    "java": (frozenset({"public", "java", "void"}), ("```java", "system.out")),
    "cpp": (frozenset({"std", "cpp", "include"}), ("```cpp", "```c++", "#include")),
    "sql": (frozenset({"select", "from", "where", "join", "sql"}), ("```sql",)),
    "shell": (frozenset({"bash", "sudo", "grep", "chmod", "echo"}), ("```sh", "```bash")),
}
_TASK_HINTS: dict[str, frozenset[str]] = {
    "fix": frozenset({"fix", "bug", "error", "exception", "traceback", "debug", "broken", "fails"}),
    "explain": frozenset({"explain", "why", "meaning", "describe", "understand"}),
    "refactor": frozenset({"refactor", "cleanup", "simplify", "rewrite", "improve"}),
    "test": frozenset({"test", "tests", "pytest", "jest", "assert", "unittest"}),
    "generate": frozenset({"write", "implement", "create", "generate", "build"}),
    "complete": frozenset({"complete", "continue", "finish"}),
    "summarize": frozenset({"summarize", "summarise", "summary", "tldr"}),
    "translate": frozenset({"translate", "translation"}),
}
_MATH_WORDS = frozenset(
    {"solve", "equation", "probability", "integer", "calculate", "sum", "product", "remainder"}
)
_MATH_SYMBOLS = (" + ", " - ", " * ", " / ", " = ", "^", "\\frac", "\\sqrt")
_SEPARATORS = string.punctuation + string.digits + "\n\t"

# How the definitions above are read fast, with the same results (tests/test_features.py
# pins them):
# - Words are what is left between whitespace and the separators, all ASCII. They are
#   made spaces on the UTF-8 bytes (`_spaced`: a table lookup per byte, where
#   str.translate with a dict looks each character up in the dict), with every other
#   ASCII whitespace (a no-op for str.split). In an ASCII text a word w is then present
#   exactly when " w " is in " " + spaced + " ", which one regex finds for all hint
#   words at once (no word objects, no hashing); other texts split and look words up.
# - Counts of ASCII characters (digits, code characters) are taken on the UTF-8 bytes,
#   where an ASCII byte is always that character: one pass deletes all but the
#   characters counted, for two counts at once ("\n" and code characters; "?" and
#   digits).
# - A symbol is looked for only where a character it cannot occur without is (found
#   with memchr); code fence symbols all at once, by one regex over the text's "```"s;
#   symbols that start with the same punctuation all at once too, by one regex that
#   skips to that character (`in` compares at almost every position of prose: on 2 KB,
#   0.5 µs for the three symbols that start with ":", where `in` took 2.6).
# - Which language or task a hint word found stands for is looked up, word by word.
_TO_SPACE_BYTES = bytes(
    0x20 if chr(i) in _SEPARATORS or chr(i).isspace() else i for i in range(128)
) + bytes(range(128, 256))
_DIGITS = b"0123456789"
_CODE_CHARS = b"{}();=<>[]"


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate must not raise here (it never did before).
    return text.encode("utf-8", "surrogatepass")


def _spaced_utf8(text: str) -> bytes:
    return _utf8(text).translate(_TO_SPACE_BYTES)


def _spaced(text: str) -> str:
    return _spaced_utf8(text).decode("utf-8", "surrogatepass")


def _all_but(chars: bytes) -> bytes:
    """What `bytes.translate` deletes to keep only `chars`."""
    return bytes(byte for byte in range(256) if byte not in chars)


_ALL_BUT_CODE_OR_NEWLINE = _all_but(_CODE_CHARS + b"\n")
_ALL_BUT_DIGITS_OR_QUESTION = _all_but(_DIGITS + b"?")
# "```" as str.count counts it (non-overlapping, left to right), where the search skips
# to each "`": str.count compares at every position (twice the time on 2 KB).
_FENCE_MARK = re.compile("```")


def _word_pattern(words: Iterable[str]) -> re.Pattern[str]:
    """Which of `words` a padded spaced ASCII text has: " (w1|w2|...)(?= )", the
    alternatives as a trie (a plain alternation tries every word at every space: twice
    the cost)."""

    def trie(suffixes: list[str]) -> str:
        ends = "" in suffixes
        by_first: dict[str, list[str]] = {}
        for suffix in sorted(s for s in suffixes if s):
            by_first.setdefault(suffix[0], []).append(suffix[1:])
        branches = [re.escape(first) + trie(rest) for first, rest in by_first.items()]
        if not branches:
            return ""
        if len(branches) == 1 and not ends:
            return branches[0]
        return "(?:" + "|".join(branches) + ")" + ("?" if ends else "")

    return re.compile(" (" + trie(sorted(set(words))) + ")(?= )")


def _probe(symbol: str) -> str | None:
    """A punctuation character the symbol cannot occur without (a one-character search
    is a memchr), or None."""
    return next((c for c in symbol if c in string.punctuation), None)


def _led(symbol: str) -> bool:
    """Whether a (non-fence) symbol starts with punctuation: see `_FIND_LED_SYMBOLS`."""
    return not symbol.startswith("```") and symbol[0] in string.punctuation


# Per language: its hint words, the tags of its code fences ("```python" -> "python"),
# its other symbols that do not start with punctuation, with their probes.
_LANGUAGE_CHECKS = tuple(
    (
        words,
        tuple(s[3:] for s in symbols if s.startswith("```")),
        tuple((s, _probe(s)) for s in symbols if not s.startswith("```") and not _led(s)),
    )
    for words, symbols in (_LANGUAGE_HINTS[name] for name in LANGUAGES)
)
# Which language a hint word or a fence tag stands for: each stands for one.
_WORD_LANGUAGE = {word: i for i, (words, _, _) in enumerate(_LANGUAGE_CHECKS) for word in words}
_TAG_LANGUAGE = {tag: i for i, (_, tags, _) in enumerate(_LANGUAGE_CHECKS) for tag in tags}
assert len(_WORD_LANGUAGE) == sum(len(words) for words, _, _ in _LANGUAGE_CHECKS)
# "```tag" is in a text iff this finds tag there: no tag has a "`" (a match cannot hide
# another "```") nor starts another (the match names the one tag that is there).
_FIND_FENCE = re.compile("```(" + "|".join(re.escape(tag) for tag in _TAG_LANGUAGE) + ")")
assert not any("`" in tag for tag in _TAG_LANGUAGE)
assert not any(a != b and b.startswith(a) for a in _TAG_LANGUAGE for b in _TAG_LANGUAGE)
# Which language a symbol that starts with punctuation stands for: each stands for one.
_LED_LANGUAGE = {
    symbol: i
    for i, (_, symbols) in enumerate(_LANGUAGE_HINTS[name] for name in LANGUAGES)
    for symbol in symbols
    if _led(symbol)
}
# Per first character, the symbols that start with it, found by one regex: its literal
# first character is what the regex engine skips to fast (a set of first characters is
# tested character by character: 10x slower). A symbol is in a text iff the regex finds
# it there: no symbol contains another, and none ends with the start of another (a
# match cannot hide another's occurrence).
_FIND_LED_SYMBOLS = {
    lead: re.compile(
        re.escape(lead)
        + "(?:"
        + "|".join(re.escape(s[1:]) for s in _LED_LANGUAGE if s[0] == lead)
        + ")"
    )
    for lead in sorted({symbol[0] for symbol in _LED_LANGUAGE})
}
assert not any(
    a != b and (b in a or any(b.startswith(a[k:]) for k in range(1, len(a))))
    for a in _LED_LANGUAGE
    for b in _LED_LANGUAGE
)
_TASK_CHECKS = tuple(_TASK_HINTS[name] for name in TASKS)
# Which task a hint word stands for: each stands for one.
_WORD_TASK = {word: i for i, words in enumerate(_TASK_CHECKS) for word in words}
assert len(_WORD_TASK) == sum(len(words) for words in _TASK_CHECKS)
_MATH_PROBES = tuple((symbol, _probe(symbol) or symbol) for symbol in _MATH_SYMBOLS)
_LANGUAGE_WORDS = frozenset().union(*(words for words, _ in _LANGUAGE_HINTS.values()))
_LAST_WORDS = frozenset().union(*_TASK_CHECKS, _MATH_WORDS)
_BOTH_WORDS = _LANGUAGE_WORDS | _LAST_WORDS
_FIND_LANGUAGE_WORDS = _word_pattern(_LANGUAGE_WORDS)
_FIND_LAST_WORDS = _word_pattern(_LAST_WORDS)
_FIND_BOTH_WORDS = _word_pattern(_BOTH_WORDS)
# A line that opens like a multiple-choice option, as `_choices` defines it, in "\n" + text.
_CHOICE_LINE = re.compile(r"\n[ (]*[a-e][).:] ")

REQUEST_FEATURES: tuple[str, ...] = (
    "log_chars",
    "log_est_tokens",
    "messages",
    "user_turns",
    "has_system",
    "log_system_chars",
    "log_last_user_chars",
    "code_fences",
    "code_char_ratio",
    "lines",
    "questions",
    "numbers",
    *(f"lang_{name}" for name in LANGUAGES),
    *(f"task_{name}" for name in TASKS),
    "multiple_choice",
    "math",
    "tools",
    "log_tools",
    "images",
    "format_json",
    "format_schema",
    "think",
    "fim",
    "raw",
    "temperature",
    "log_num_ctx",
    "log_num_predict",
    "endpoint_chat",
    "endpoint_openai",
    *(f"head_hash_{i}" for i in range(HASH_BUCKETS)),
    *(f"tail_hash_{i}" for i in range(HASH_BUCKETS)),
    *(f"demand_{area}" for area in AREAS),
)

CANDIDATE_FEATURES: tuple[str, ...] = (
    "log_params_b",
    "log_active_params_b",
    "quant_bits",
    "log2_context",
    *(f"area_{name}" for name in AREAS),
    *(f"spec_{name}" for name in SPECIALTIES),
    "release_years",
    "uncertainty",
    "is_instruct",
    "loaded",
    *(f"cap_{name}" for name in CAPABILITIES),
)


@dataclass(frozen=True)
class Candidate:
    """What the registry knows about one model, as the selector sees it.

    `family` and `name` identify it for people (explain, usage events); the selector
    reads neither. `areas` are the catalogue's scores in `AREAS` order (empty: not
    known, scored as `UNKNOWN_AREA` with uncertainty 1); `active_params_b` is the
    parameters used per token (a mixture of experts uses fewer than it has; 0: all)."""

    name: str
    family: str = "other"
    params_b: float = 7.0
    quant_bits: float = 4.0
    context_length: int = 8192
    capabilities: frozenset[str] = field(default_factory=frozenset)
    is_code: bool = False
    is_instruct: bool = True
    loaded: bool = False
    active_params_b: float = 0.0
    areas: tuple[float, ...] = ()
    specialties: frozenset[str] = field(default_factory=frozenset)
    release: float = DEFAULT_RELEASE  # year, fractional (2024.5: mid 2024)
    uncertainty: float = 1.0  # 0: measured scores; 1: nothing known beyond the details

    @property
    def active_b(self) -> float:
        """Billions of parameters each token runs through: what an answer costs."""
        return self.active_params_b if self.active_params_b > 0 else self.params_b

    def to_record(self) -> dict[str, Any]:
        """The JSON shape usage events store and training reads back."""
        return {
            "name": self.name,
            "family": self.family,
            "params_b": self.params_b,
            "quant_bits": self.quant_bits,
            "context_length": self.context_length,
            "capabilities": sorted(self.capabilities),
            "is_code": self.is_code,
            "is_instruct": self.is_instruct,
            "loaded": self.loaded,
            "active_params_b": self.active_params_b,
            "areas": list(self.areas),
            "specialties": sorted(self.specialties),
            "release": self.release,
            "uncertainty": self.uncertainty,
        }

    @classmethod
    def from_record(cls, raw: Mapping[str, Any]) -> Candidate:
        return cls(
            name=str(raw["name"]),
            family=str(raw.get("family", "other")),
            params_b=float(raw.get("params_b", 7.0)),
            quant_bits=float(raw.get("quant_bits", 4.0)),
            context_length=int(raw.get("context_length", 8192)),
            capabilities=frozenset(str(c) for c in raw.get("capabilities", ())),
            is_code=bool(raw.get("is_code", False)),
            is_instruct=bool(raw.get("is_instruct", True)),
            loaded=bool(raw.get("loaded", False)),
            active_params_b=float(raw.get("active_params_b", 0.0)),
            areas=tuple(float(a) for a in raw.get("areas", ())),
            specialties=frozenset(str(c) for c in raw.get("specialties", ())),
            release=float(raw.get("release", DEFAULT_RELEASE)),
            uncertainty=float(raw.get("uncertainty", 1.0)),
        )


def feature_names() -> list[str]:
    return [*REQUEST_FEATURES, *CANDIDATE_FEATURES]


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


def _window(text: str) -> str:
    return text if len(text) <= 2 * HINT_CHARS else text[:HINT_CHARS] + "\n" + text[-HINT_CHARS:]


def _choices(low: str) -> int:
    """Lines that open like a multiple-choice option: "a)", "(b)", "c.", "d:" (a line
    that, leading spaces and "(" stripped, has [a-e], one of ").:" and a space)."""
    return len(_CHOICE_LINE.findall("\n" + low))


def _hash_words(words: Iterable[bytes], out: list[float]) -> None:
    """Count each word (UTF-8) in its bucket."""
    for word in words:
        out[zlib.crc32(word) % HASH_BUCKETS] += 1.0


def _hint_words(
    low: str, spaced: str, hint_words: frozenset[str], find: re.Pattern[str]
) -> frozenset[str]:
    """Which `hint_words` are among the words of `low` (lower-cased text; `spaced`,
    `_spaced(low)`)."""
    if low.isascii():
        return frozenset(find.findall(" " + spaced + " "))
    return hint_words.intersection(spaced.split())


def _language_hints(low: str, hits: frozenset[str], out: list[float]) -> None:
    """lang_* of the sample's window (`low`, lower-cased; `hits`, hint words among its
    words): one of the language's hint words, else one of its symbols in it."""
    found = [False] * len(LANGUAGES)
    for word in hits:  # a few words, where asking each language costs a set operation
        index = _WORD_LANGUAGE.get(word)
        if index is not None:
            found[index] = True
    if "```" in low:  # one scan for every fence tag, however many fences
        for tag in _FIND_FENCE.findall(low):
            found[_TAG_LANGUAGE[tag]] = True
    for lead, find in _FIND_LED_SYMBOLS.items():
        if lead in low:  # a memchr; then one scan for the symbols that start with it
            for symbol in find.findall(low):
                found[_LED_LANGUAGE[symbol]] = True
    for index, (_, _, symbols) in enumerate(_LANGUAGE_CHECKS):
        if not found[index]:
            for symbol, probe in symbols:
                if (probe is None or probe in low) and symbol in low:
                    found[index] = True
                    break
    out += [1.0 if hinted else 0.0 for hinted in found]


def request_features(path: str, body: Mapping[str, Any]) -> list[float]:
    """Features of one request body (any shape `request_body` reads), in
    `REQUEST_FEATURES` order."""
    scan = _Scan()
    n_messages = request_body.entry_count(body) or 0
    user_turns = 0
    system_chars = 0
    last_user = ""
    images = False
    for role, text, has_images in request_body.turns(body):
        if role == "system":
            system_chars += len(text)
        elif role == "user":
            user_turns += 1
            last_user = text
        images = images or has_images
        scan.add(text)
    for kind, text in request_body.fields(body):
        if kind == "system":
            system_chars += len(text)
        elif kind == "prompt":
            last_user = text
            user_turns = max(user_turns, 1)
        scan.add(text)
    images = images or bool(body.get("images"))
    sample = scan.sample()
    last = (
        last_user[:SCAN_CHARS] + last_user[-SCAN_CHARS:]
        if len(last_user) > 2 * SCAN_CHARS
        else last_user
    )

    # Keyword hints read a narrower window: instructions sit at the start and the end.
    # Words: those of the lower-cased window with the separators made spaces.
    # When the sample's window is the last turn's (one short message, or one long one),
    # it is read once.
    window = _window(sample)
    window_last = _window(last)
    low_last = window_last.lower()
    spaced_last_utf8 = _spaced_utf8(low_last)  # kept: hashed words are cut from it
    spaced_last = spaced_last_utf8.decode("utf-8", "surrogatepass")
    if window == window_last:
        low_sample = low_last
        sample_hits = last_hits = _hint_words(low_last, spaced_last, _BOTH_WORDS, _FIND_BOTH_WORDS)
    else:
        low_sample = window.lower()
        sample_hits = _hint_words(
            low_sample, _spaced(low_sample), _LANGUAGE_WORDS, _FIND_LANGUAGE_WORDS
        )
        last_hits = _hint_words(low_last, spaced_last, _LAST_WORDS, _FIND_LAST_WORDS)
    math_count = len(last_hits & _MATH_WORDS)
    for symbol, probe in _MATH_PROBES:
        if probe in low_last:
            math_count += low_last.count(symbol)

    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    assert isinstance(options, dict)
    fmt = body.get("format") or body.get("response_format")
    tools = request_body.tool_count(body)
    temperature = options.get("temperature", body.get("temperature"))
    num_ctx = options.get("num_ctx")
    num_predict = request_body.max_output_tokens(body)

    # Each text's counted characters, in one pass each (see `_all_but`).
    sample_kept = _utf8(sample).translate(None, _ALL_BUT_CODE_OR_NEWLINE)
    newlines = sample_kept.count(b"\n")
    last_kept = _utf8(last).translate(None, _ALL_BUT_DIGITS_OR_QUESTION)
    questions = last_kept.count(b"?")
    fences = len(_FENCE_MARK.findall(sample)) if "`" in sample else 0
    features = [
        math.log1p(scan.total),
        math.log1p(scan.total / 4.0),
        float(n_messages),
        float(user_turns),
        1.0 if system_chars else 0.0,
        math.log1p(system_chars),
        math.log1p(len(last_user)),
        float(fences // 2),
        (len(sample_kept) - newlines) / len(sample) if sample else 0.0,
        float(newlines),
        float(questions),
        float(len(last_kept) - questions),
    ]
    _language_hints(low_sample, sample_hits, features)
    tasks = [0.0] * len(TASKS)
    for word in last_hits:  # a few words, where asking each task costs a set operation
        task = _WORD_TASK.get(word)
        if task is not None:
            tasks[task] = 1.0
    features += tasks
    features += (
        1.0 if _choices(low_last) >= 2 else 0.0,
        float(math_count),
        1.0 if tools else 0.0,
        math.log1p(tools),
        1.0 if images else 0.0,
        1.0
        if fmt == "json" or (isinstance(fmt, dict) and fmt.get("type") == "json_object")
        else 0.0,
        1.0 if isinstance(fmt, dict) and fmt.get("type") != "json_object" else 0.0,
        1.0 if request_body.thinks(body) else 0.0,
        1.0 if request_body.suffix(body) else 0.0,
        1.0 if body.get("raw") is True else 0.0,
        float(temperature) if isinstance(temperature, int | float) else -1.0,
        math.log2(num_ctx) if isinstance(num_ctx, int | float) and num_ctx > 0 else 0.0,
        math.log1p(num_predict) if num_predict else 0.0,
        1.0 if path.endswith("/chat") or path.endswith("/chat/completions") else 0.0,
        1.0 if path.startswith("/v1/") else 0.0,
    )
    # Hashes of the first and the last words of the last user turn's first and last 512
    # characters, lower-cased. Where lower-casing kept every character (ASCII), those are
    # slices of the window already spaced (512 < HINT_CHARS), taken as UTF-8 bytes: the
    # words' encodings without encoding each, and bytes.split splits where str.split does
    # (the only whitespace left in a spaced ASCII text is " ").
    head_hash = [0.0] * HASH_BUCKETS
    tail_hash = [0.0] * HASH_BUCKETS
    if last.isascii():
        head_words = spaced_last_utf8[:512].split(None, HASH_WORDS)[:HASH_WORDS]
        tail_words = spaced_last_utf8[-512:].rsplit(None, HASH_WORDS)[-HASH_WORDS:]
    else:
        head, tail = _spaced(last[:512].lower()), _spaced(last[-512:].lower())
        # Strict UTF-8: a lone surrogate in a hashed word raises, as it always did.
        head_words = [word.encode() for word in head.split(None, HASH_WORDS)[:HASH_WORDS]]
        tail_words = [word.encode() for word in tail.rsplit(None, HASH_WORDS)[-HASH_WORDS:]]
    _hash_words(head_words, head_hash)
    _hash_words(tail_words, tail_hash)
    features += head_hash
    features += tail_hash
    features += _area_demand(features)
    return features


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


def _area_demand(f: Sequence[float]) -> list[float]:
    """What share of the request each of `AREAS` is, estimated from the request
    features already computed (a few arithmetic operations): evidence per area, plus
    `_DEMAND_BASE`, normalised to sum to 1. Rough by design; the selector weighs it
    against the candidates' area scores."""
    (
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
    code = (
        max(_LANGS(f))
        + min(fences, 3.0) / 3.0
        + min(code_ratio * 10.0, 1.0)
        + fim
        + 0.5 * max(_CODE_TASKS(f))
    )
    maths = 2.0 * min(maths_hints, 5.0) / 5.0 + 0.5 * min(numbers / 20.0, 1.0)
    knowledge = choice + 0.5 * explain + 0.25 * min(questions, 2.0)
    reasoning = min(max(log_last - _LONG_PROMPT, 0.0) / 3.0, 1.0) + 0.5 * (
        choice * min(maths_hints, 1.0)
    )
    instruction = json_format + schema + tools + 0.5 * system + 0.5 * max(_INSTRUCTION_TASKS(f))
    evidence = [knowledge, reasoning, maths, code, instruction]
    total = sum(evidence) + _DEMAND_BASE * len(evidence)
    return [(_DEMAND_BASE + e) / total for e in evidence]


def candidate_features(candidate: Candidate) -> list[float]:
    areas = candidate.areas if len(candidate.areas) == len(AREAS) else (UNKNOWN_AREA,) * len(AREAS)
    uncertainty = candidate.uncertainty if len(candidate.areas) == len(AREAS) else 1.0
    specialties = candidate.specialties | ({"code"} if candidate.is_code else set())
    return [
        math.log(max(candidate.params_b, 0.01)),
        math.log(max(candidate.active_b, 0.01)),
        float(candidate.quant_bits),
        math.log2(max(candidate.context_length, 1)),
        *(float(a) for a in areas),
        *(1.0 if name in specialties else 0.0 for name in SPECIALTIES),
        candidate.release - RELEASE_ORIGIN,
        float(uncertainty),
        1.0 if candidate.is_instruct else 0.0,
        1.0 if candidate.loaded else 0.0,
        *(1.0 if name in candidate.capabilities else 0.0 for name in CAPABILITIES),
    ]


def rows(request: Sequence[float], candidates: Sequence[Candidate]) -> list[list[float]]:
    """One row per candidate, in `feature_names()` order."""
    return [[*request, *candidate_block(c)] for c in candidates]


@functools.lru_cache(maxsize=4096)
def candidate_block(candidate: Candidate) -> tuple[float, ...]:
    """The candidate's part of a row: it depends on the candidate alone, so serving
    computes it once per model and loaded state."""
    return tuple(candidate_features(candidate))


def family_of(name: str, declared: str = "") -> str:
    """A family from Ollama's `details.family` or, failing that, the model name."""
    for text in (declared.lower(), name.lower()):
        for family in FAMILIES[:-1]:
            if family in text:
                return family
    return "other"


def params_from(size: str) -> float:
    """Billions of parameters from Ollama's `parameter_size` ("7.6B", "137M", "8x7B")."""
    match = re.fullmatch(r"\s*(?:(\d+)x)?(\d+(?:\.\d+)?)\s*([BMK]?)\s*", size or "", re.I)
    if not match:
        return 0.0
    count = float(match.group(2)) * float(match.group(1) or 1)
    scale = {"B": 1.0, "M": 1e-3, "K": 1e-6, "": 1.0}[match.group(3).upper()]
    return count * scale


def quant_bits_from(level: str) -> float:
    """Bits per weight from Ollama's `quantization_level` ("Q4_K_M", "F16", "Q8_0")."""
    level = (level or "").upper()
    match = re.match(r"I?Q(\d)", level)
    if match:
        return float(match.group(1))
    if level.startswith(("F16", "BF16")):
        return 16.0
    if level.startswith("F32"):
        return 32.0
    return 4.0

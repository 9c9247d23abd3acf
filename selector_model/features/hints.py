"""Keyword hints: which languages, tasks, multiple-choice options and maths a request shows.

Read from lower-cased text: a hint word counts when it is one of the text's words
(`selector_model.features.words`), a symbol when it is in the text; a few words that
prose uses too count only in a request for code, some only beside another
(`_PHRASE_LANGUAGES`, `_ASKED_WORDS`). Instructions sit at the start and the end, so
hints read a narrower window than the rest of the request features: the first and
last `HINT_CHARS` characters. Languages are read from the conversation's sample, tasks,
options and maths from the last user turn.

A regular expression per hint would scan the text once per hint; how the definitions
are read fast instead, with the same results (tests/test_features.py pins them):

- In an ASCII text a word w is present exactly when " w " is in " " + spaced + " ",
  which one regex finds for all hint words at once (no word objects, no hashing);
  other texts split and look words up. Words of a text that a separator splits in two
  are the words of either part: the text both windows hold (the last user turn, which
  a conversation's sample ends with; its start too, after a short conversation before
  it), cut between separators, is read once, for the hint words of both. Where it
  stands in either window follows from where the scan put the turn and joined its
  head and tail; each part is compared before it is taken as shared.
- A symbol is looked for only where a character it cannot occur without is (found
  with memchr); code fence symbols all at once, by one regex over the text's "```"s;
  symbols that start with the same punctuation all at once too, by one regex that
  skips to that character (`in` compares at almost every position of prose).
- Which language or task a hint word found stands for is looked up, word by word.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from typing import NamedTuple

from selector_model.features.schema import HINT_CHARS, LANGUAGES, TASKS
from selector_model.features.words import spaced, spaced_utf8

# A hint word is one prose seldom uses: "select", "from", "where" (SQL), "none", "self"
# (Python), "public", "include", "echo" or "cargo" would make a history or law question
# read as code; so would "function" ("the function of the liver", "f is a function
# with f(2) = 5"), which counts only in a request for code (`_ASKED_WORDS`).
# '"""' and ">>> " are a docstring's; '"""' not in a grid's rows, where a maze's walls
# are quotes (`_grid_row`).
# A language without a column of its own is hinted as its nearest kin, so that a
# request in it reads as code, with the demand for code it has: Kotlin, Scala
# and C# as Java (managed, class-based); PHP, Perl, Lua and Ruby as Python (dynamic
# scripting); C and CUDA as C++; Swift as Rust (compiled, with ownership and
# optionals); PowerShell and zsh as shell.
_LANGUAGE_HINTS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "python": (
        frozenset({"python", "def", "elif", "import", "numpy", "php", "perl", "lua"}),
        ("```python", "print(", "(self", '"""', ">>> "),
    ),
    "javascript": (
        frozenset({"javascript", "const", "console", "var"}),
        ("```js", "=> "),
    ),
    "typescript": (frozenset({"interface", "typescript"}), ("```ts", ": string", ": number")),
    "go": (frozenset({"func", "golang", "goroutine"}), ("```go", ":= ", "package main")),
    "rust": (frozenset({"fn", "impl", "rust", "rustc", "swiftui"}), ("```rust", "let mut ")),
    "java": (
        frozenset({"java", "jvm", "kotlin", "scala", "csharp", "dotnet"}),
        ("```java", "system.out", "public static", "public class", "c#"),
    ),
    "cpp": (frozenset({"cpp", "std", "cuda"}), ("```cpp", "```c++", "#include", "std::", "c++")),
    "sql": (
        frozenset({"sql", "sqlite", "mysql", "postgresql"}),
        ("```sql", "select *", "create table", "insert into"),
    ),
    "shell": (
        frozenset({"bash", "sudo", "grep", "chmod", "powershell", "zsh"}),
        ("```sh", "```bash"),
    ),
}
# Languages and libraries whose names are everyday words or names ("go", "c", "swift",
# "ruby", "react") count only as "in <name>" ("write a quicksort in Go") or, but for C,
# "<name> <a program's part>" ("a Ruby method"; "C. method" is a lettered option), and
# only in a request that asks for code to be written, fixed, refactored or tested: "the
# reaction results in C" is chemistry, "Ruby is 6 times older than Sam" arithmetic, "a
# ruby laser" physics, "how the crowd would react" prose.
_PHRASE_LANGUAGES = {
    "go": "go",
    "c": "cpp",
    "swift": "rust",
    "ruby": "python",
    "react": "javascript",
}
_PHRASE_NOUNS = frozenset(
    {
        *("code", "program", "function", "method", "script", "class", "struct", "module"),
        *("library", "component", "components", "hook", "app"),
    }
)
_NAMED_WITH_NOUNS = ("go", "swift", "ruby", "react")
# What to write named by its markup, framework or tool, not by a language: in such a
# request, the language it is written in. Alone they hint nothing ("What is HTML?" asks
# for no code, "flask" and "pandas" are a lab's and a zoo's too). "Write a function
# that ..." names no language either, and hints JavaScript's column as code in no
# named language where the request governs it (`_FUNCTION_VERBS`); a function in
# biology, maths or history is not asked to be written.
_ASKED_WORDS = {
    **dict.fromkeys(("function", "html", "css", "jquery", "nodejs", "vue"), "javascript"),
    "svelte": "javascript",
    **dict.fromkeys(("django", "fastapi"), "python"),
    **dict.fromkeys(("dockerfile", "kubernetes"), "shell"),
}
# A function a maths word names is maths' ("the exponential function", "a quadratic
# function", "the probability density function"), also in a request to write: "Write
# the quadratic function with roots 2 and 3", an integral's "write 7*X**2 ... use exp(x)
# for the exponential function".
_MATH_FUNCTION_WORDS = frozenset(
    {
        *("exponential", "logarithmic", "logistic", "linear", "quadratic", "cubic"),
        *("polynomial", "rational", "trigonometric", "sine", "cosine", "periodic"),
        *("continuous", "differentiable", "invertible", "inverse", "analytic", "piecewise"),
        *("density", "distribution", "likelihood", "partition", "generating", "gamma"),
    }
)
_PHRASE_TASKS = ("generate", "fix", "refactor", "test")
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
# "function" asks for code where a verb that asks for one governs it: a verb of writing
# or mending code, or of asking for a thing ("need", "want", "give", "make", "define"),
# among the words of its sentence before it, five at most: "Write a function", "Can you
# write me a small helper function", "I need a function that", "fix this function". It
# asks so with no other word of a request ("Give me a function that flattens a list").
# A request's words elsewhere in the text do not: a question whose options hold
# "thyroid function tests" or "error" asks to test or fix no program, nor does one about
# "the function of the liver", "a function of size" or one to "list and define the
# types according to their function". "test" and "improve" are no such verbs ("test
# nerve function", "improve cognitive function"). A sentence ends at a line's end and
# at ".", "?" or "!" before whitespace: a lettered option starts one. Nor does a
# function a letter names, the word after it ("Define the function $g(x)=3x+2$", "a
# function f: A -> B": maths' way; "function(s)" is no name), nor the verb after "to"
# ("What would need electrical energy to function?").
_FUNCTION_VERBS = _TASK_HINTS["generate"] | {
    *("fix", "debug", "refactor", "rewrite"),
    *("need", "want", "give", "make", "define"),
}
_FUNCTION_REACH = 5
_SENTENCE_END = re.compile(r"[.?!]\s")
_LETTER_NAME = re.compile(r"\s+\S(?!\S)")
_MATH_WORDS = frozenset({"equation", "probability", "integer", "calculate"})
# Maths words prose uses too ("how can I solve a conflict", "a product manager", "the
# remainder of the trip", "the sum of all fears") count only beside a digit, a maths
# symbol or another maths word in the window: "Find the product of 6 and 7", "solve
# x^2 = 4", "calculate the sum of the series".
_MATH_WORDS_WITH_NUMBERS = frozenset({"solve", "sum", "product", "remainder"})
# The Unicode operators (multiplication and division signs, square root, the
# comparisons, plus-minus, sum and integral) count as LaTeX's do: "2 times 3" written
# with the multiplication sign is maths wherever it stands ("Find the prime
# factorization of 280. Write the factors separated by" that sign has no other maths
# word, and would read as writing).
_MATH_SYMBOLS = (
    *(" + ", " - ", " * ", " / ", " = ", "^", "$"),
    *("\\frac", "\\sqrt", "\\cdot", "\\times", "\\pi"),
    *("\u00d7", "\u00f7", "\u221a", "\u2264", "\u2265", "\u2260", "\u00b1", "\u2211", "\u222b"),
)
# A line that opens like a multiple-choice option, as `_choices` defines it, in "\n" + text.
_CHOICE_LINE = re.compile(r"\n[ (]*[a-e][).:] ")


class Hints(NamedTuple):
    """What `read_hints` read, and the spaced window the word hashes reuse."""

    values: list[float]  # lang_*, task_*, multiple_choice, math: `REQUEST_FEATURES` order
    spaced_last: bytes  # the last turn's window, lower-cased, `spaced_utf8`


def read_hints(sample: str, last: str, join: int = -1, last_at: int = -1) -> Hints:
    """The hints of a request whose scanned text is `sample` and whose last user turn
    (its scanned ends) is `last`; `join`, where in `sample` the scan joined its head
    and tail (-1: nowhere), `last_at`, where the last turn starts in its head (-1: not
    there). When the sample's window is the last turn's (one short message, or one
    long one), it is read once; else the text both windows hold (`_aligned`) is."""
    window = _window(sample)
    window_last = _window(last)
    low_last = window_last.lower()
    spaced_last = spaced_utf8(low_last)
    spaced_last_text = spaced_last.decode("utf-8", "surrogatepass")
    if window == window_last:
        low_sample = low_last
        sample_hits = last_hits = _hint_words(
            low_last, spaced_last_text, _BOTH_WORDS, _FIND_BOTH_WORDS
        )
        spaced_sample = spaced_last_text
    else:
        low_sample = window.lower()
        spaced_sample = spaced(low_sample)
        # Lower-casing and spacing keep an ASCII text's positions, which `_aligned` gives.
        aligned = (
            _aligned(sample, last, join, last_at) if window.isascii() and last.isascii() else []
        )
        shared, sample_rest, last_rest = _cut(spaced_sample, spaced_last_text, aligned)
        both = _FIND_BOTH_WORDS.findall(" " + shared + " ") if shared else ()
        sample_hits = _LANGUAGE_WORDS.intersection(both).union(
            _hint_words(low_sample, sample_rest, _LANGUAGE_WORDS, _FIND_LANGUAGE_WORDS)
        )
        last_hits = _LAST_WORDS.intersection(both).union(
            _hint_words(low_last, last_rest, _LAST_WORDS, _FIND_LAST_WORDS)
        )
    return Hints(
        [
            *_language_hints(low_sample, sample_hits, spaced_sample, last_hits),
            *_task_hints(last_hits),
            1.0 if _choices(low_last) >= 2 else 0.0,
            float(_math_count(low_last, last_hits)),
        ],
        spaced_last,
    )


def _window(text: str) -> str:
    """What hints read of a text: all of it, or its first and last `HINT_CHARS`."""
    return text if len(text) <= 2 * HINT_CHARS else text[:HINT_CHARS] + "\n" + text[-HINT_CHARS:]


def _pieces(text: str) -> list[tuple[int, int, int]]:
    """The parts of `text` its window (`_window`) holds: (start, end, where start
    stands in the window)."""
    if len(text) <= 2 * HINT_CHARS:
        return [(0, len(text), 0)]
    return [(0, HINT_CHARS, 0), (len(text) - HINT_CHARS, len(text), HINT_CHARS + 1)]


def _aligned(sample: str, last: str, join: int, last_at: int) -> list[tuple[int, int, int]]:
    """Where the sample's window and the last turn's would hold the same text: the
    last turn read from `last_at` in the sample's head (up to the scan's `join`), and
    from the sample's end back in its tail, as the sample ends with it when nothing
    follows it. (start in the sample's window, start in the last turn's, length), in
    the order of both. A guess from positions alone, which `_cut` checks."""
    if join < 0:
        join = len(sample)  # all head
    # The sample's window's parts, cut at the join: (start, end) in the last turn's
    # positions, and where start stands in the window.
    parts = []
    for start, end, placed in _pieces(sample):
        if start < join and last_at >= 0:
            parts.append((start - last_at, (join if join < end else end) - last_at, placed))
        if join + 1 < end:
            lo = join + 1 if join >= start else start
            at = len(sample) - len(last)
            parts.append((lo - at, end - at, placed + lo - start))
    last_pieces = _pieces(last)
    aligned = []
    for lo, hi, placed in parts:
        for start, end, placed_last in last_pieces:
            common_lo = lo if lo > start else start
            common_hi = hi if hi < end else end
            if common_lo < common_hi:
                aligned.append(
                    (
                        placed + common_lo - lo,
                        placed_last + common_lo - start,
                        common_hi - common_lo,
                    )
                )
    return aligned


def _cut(a: str, b: str, aligned: list[tuple[int, int, int]]) -> tuple[str, str, str]:
    """(shared, a_rest, b_rest): spaced texts a and b cut, where `aligned` (a's start,
    b's start, length; in the order of both) finds the same text in both, between its
    first and last space. A word never spans a space, so the words of a are those of
    shared and a_rest, the words of b those of shared and b_rest."""
    shared: list[str] = []
    a_rest: list[str] = []
    b_rest: list[str] = []
    a_at = b_at = 0  # each is cut up to here
    for a_start, b_start, length in aligned:
        piece = b[b_start : b_start + length]
        first, last = piece.find(" "), piece.rfind(" ")
        if first == last or not a.startswith(piece, a_start):
            continue  # no words between two spaces, or not the same text
        shared.append(piece[first : last + 1])
        a_rest.append(a[a_at : a_start + first])
        b_rest.append(b[b_at : b_start + first])
        a_at, b_at = a_start + last + 1, b_start + last + 1
    if not shared:
        return "", a, b
    a_rest.append(a[a_at:])
    b_rest.append(b[b_at:])
    return " ".join(shared), " ".join(a_rest), " ".join(b_rest)


def _choices(low: str) -> int:
    """Lines that open like a multiple-choice option: "a)", "(b)", "c.", "d:" (a line
    that, leading spaces and "(" stripped, has [a-e], one of ").:" and a space)."""
    return len(_CHOICE_LINE.findall("\n" + low))


def _hint_words(
    low: str, spaced_low: str, hint_words: frozenset[str], find: re.Pattern[str]
) -> frozenset[str]:
    """Which `hint_words` are among the words of `spaced_low`: `spaced(low)` of a
    lower-cased text, or parts of it joined by spaces (`find`,
    `_word_pattern(hint_words)`)."""
    if low.isascii():
        return frozenset(find.findall(" " + spaced_low + " "))
    return hint_words.intersection(spaced_low.split())


def _language_hints(
    low: str, hits: frozenset[str], spaced_low: str, last_hits: frozenset[str]
) -> list[float]:
    """lang_* of the sample's window (`low`, lower-cased; `hits`, hint words among its
    words; `spaced_low`, `spaced(low)`): one of the language's hint words, else one of
    its symbols in it, else a "function" a verb that asks for one governs
    (`_asked_function`), else, when the last turn's hint words (`last_hits`) ask for
    code, another word of what to write (`_ASKED_WORDS`), or "in" and its name, or its
    name and a program's part, as two words in a row (`_PHRASE_LANGUAGES`)."""
    found = [False] * len(LANGUAGES)
    for word in hits:  # a few words, where asking each language costs a set operation
        index = _WORD_LANGUAGE.get(word)
        if index is not None:
            found[index] = True
    if "function" in hits and _asked_function(low, spaced_low):
        found[_ASKED_LANGUAGE["function"]] = True
    if not last_hits.isdisjoint(_PHRASE_TASK_WORDS):
        for word in hits.intersection(_ASKED_WORDS):
            if word != "function":
                found[_ASKED_LANGUAGE[word]] = True
        # Only for a name among the words (found with the hint words, where a scan for
        # every name would cost each request for code); each regex opens with a literal
        # the engine skips to, and whether a match starts a word is asked of the
        # character before it (a lookbehind would be tried at every position).
        for name in hits.intersection(_PHRASE_LANGUAGES):
            for find in _FIND_PHRASES[name]:
                for match in find.finditer(spaced_low):
                    at = match.start()
                    if at == 0 or spaced_low[at - 1].isspace():
                        found[_PHRASE_LANGUAGE[name]] = True
    if "```" in low:  # one scan for every fence tag, however many fences
        for tag in _FIND_FENCE.findall(low):
            found[_TAG_LANGUAGE[tag]] = True
    for lead, find in _FIND_LED_SYMBOLS.items():
        if lead in low:  # a memchr; then one scan for the symbols that start with it
            for symbol in find.findall(low):
                found[_LED_LANGUAGE[symbol]] = True
    if not found[_PYTHON] and _DOCSTRING in low and _docstring(low):
        found[_PYTHON] = True
    for index, (_, _, symbols) in enumerate(_LANGUAGE_CHECKS):
        if not found[index]:
            for symbol, probe in symbols:
                if (probe is None or probe in low) and symbol in low:
                    found[index] = True
                    break
    return [1.0 if hinted else 0.0 for hinted in found]


def _asked_function(low: str, spaced_low: str) -> bool:
    """Whether a "function" among the words of `low` (a lower-cased text; `spaced_low`,
    `spaced(low)`, whose characters stand where low's do) is one a request for code
    governs: a verb that asks for one (`_FUNCTION_VERBS`) among the `_FUNCTION_REACH`
    words of its sentence before it, neither a maths word (`_MATH_FUNCTION_WORDS`) nor
    "to" the word before it, and no letter, after whitespace, the word after it."""
    for match in _FIND_FUNCTION.finditer(spaced_low):
        at = match.start()
        if at == 0 or spaced_low[at - 1].isspace():
            start = low.rfind("\n", 0, at) + 1
            for end in _SENTENCE_END.finditer(low, start, at):
                start = end.end()
            before = spaced_low[start:at].split()[-_FUNCTION_REACH:]
            after = match.end()
            if (
                before
                and before[-1] not in _MATH_FUNCTION_WORDS
                and before[-1] != "to"
                and not _FUNCTION_VERBS.isdisjoint(before)
                and not (
                    after < len(low)
                    and low[after].isspace()
                    and _LETTER_NAME.match(spaced_low, after)
                )
            ):
                return True
    return False


def _docstring(low: str) -> bool:
    """Whether a docstring's quotes in `low` stand outside a grid's rows (`_grid_row`)."""
    at = low.find(_DOCSTRING)
    while at >= 0:
        start = low.rfind("\n", 0, at) + 1
        end = low.find("\n", at)
        if end < 0:
            end = len(low)
        if not _grid_row(low, start, end):
            return True
        at = low.find(_DOCSTRING, end)
    return False


def _grid_row(low: str, start: int, end: int) -> bool:
    """Whether the line low[start:end] is a row of a grid: a line without whitespace
    that, with a neighbouring line without whitespace, is made of the same few
    characters (`_GRID_CHARACTERS` at most), as a maze's rows of walls and passages
    are. Their lengths are not compared: hints read a window, which may cut a row."""
    line = low[start:end]
    if len(line) < len(_DOCSTRING) or any(c.isspace() for c in line):
        return False
    neighbours = []
    if start > 0:
        neighbours.append(low[low.rfind("\n", 0, start - 1) + 1 : start - 1])
    if end < len(low):
        after = low.find("\n", end + 1)
        neighbours.append(low[end + 1 : after if after >= 0 else len(low)])
    return any(
        len(other) >= len(_DOCSTRING) and len(set(line + other)) <= _GRID_CHARACTERS
        for other in neighbours
        if not any(c.isspace() for c in other)
    )


def _task_hints(hits: frozenset[str]) -> list[float]:
    """task_* of the last turn's window (`hits`, hint words among its words)."""
    tasks = [0.0] * len(TASKS)
    for word in hits:  # a few words, where asking each task costs a set operation
        task = _WORD_TASK.get(word)
        if task is not None:
            tasks[task] = 1.0
    return tasks


def _math_count(low: str, hits: frozenset[str]) -> int:
    """Maths words among the last turn's window's words (`hits`), plus each occurrence
    of a maths symbol in it (`low`, lower-cased); the words prose uses too
    (`_MATH_WORDS_WITH_NUMBERS`) only beside a digit, a symbol or another maths word."""
    count = len(hits & _MATH_WORDS)
    for symbol, probe in _MATH_PROBES:
        if probe in low:
            count += low.count(symbol)
    shared = hits & _MATH_WORDS_WITH_NUMBERS
    if shared and (count or _DIGIT.search(low)):
        count += len(shared)
    return count


# The tables the fast reading above uses, built from the definitions ----------------


def _word_pattern(words: Iterable[str]) -> re.Pattern[str]:
    """Which of `words` a padded spaced ASCII text has: " (w1|w2|...)(?= )", the
    alternatives as a trie (a plain alternation tries every word at every space)."""

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
# A docstring's quotes are looked for apart, as a grid's rows may hold them too.
_DOCSTRING = '"""'
_PYTHON = LANGUAGES.index("python")
_GRID_CHARACTERS = 4
_LED_LANGUAGE = {
    symbol: i
    for i, (_, symbols) in enumerate(_LANGUAGE_HINTS[name] for name in LANGUAGES)
    for symbol in symbols
    if _led(symbol) and symbol != _DOCSTRING
}
assert _DOCSTRING in _LANGUAGE_HINTS["python"][1]
# Per first character, the symbols that start with it, found by one regex: its literal
# first character is what the regex engine skips to fast (a set of first characters is
# tested character by character). A symbol is in a text iff the regex finds it there:
# no symbol contains another, and none ends with the start of another (a match cannot
# hide another's occurrence).
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
# Per name: "in" then the name, and the name then a program's part, each as a word and
# the next (words are split at whitespace as str.split splits, which is what \s
# matches). No part starts with a name it follows, so a match refused for what is before
# it hides no other.
_NOUNS = "(?:" + "|".join(sorted(_PHRASE_NOUNS)) + ")"
_FIND_PHRASES = {
    name: (
        re.compile(r"in\s+" + name + r"(?!\S)"),
        *((re.compile(name + r"\s+" + _NOUNS + r"(?!\S)"),) if name in _NAMED_WITH_NOUNS else ()),
    )
    for name in _PHRASE_LANGUAGES
}
assert not any(noun.startswith(name) for noun in _PHRASE_NOUNS for name in _NAMED_WITH_NOUNS)
# "function" as a word: the regex asks what follows it, `_asked_function` what precedes it.
_FIND_FUNCTION = re.compile(r"function(?!\S)")
_PHRASE_LANGUAGE = {name: LANGUAGES.index(lang) for name, lang in _PHRASE_LANGUAGES.items()}
_ASKED_LANGUAGE = {word: LANGUAGES.index(lang) for word, lang in _ASKED_WORDS.items()}
_TASK_CHECKS = tuple(_TASK_HINTS[name] for name in TASKS)
# Which task a hint word stands for: each stands for one.
_WORD_TASK = {word: i for i, words in enumerate(_TASK_CHECKS) for word in words}
assert len(_WORD_TASK) == sum(len(words) for words in _TASK_CHECKS)
_MATH_PROBES = tuple((symbol, _probe(symbol) or symbol) for symbol in _MATH_SYMBOLS)
# The hint words each window is searched for: the sample's languages; the last turn's
# tasks and maths; both, when the two windows are one.
_LANGUAGE_WORDS = frozenset().union(
    *(words for words, _ in _LANGUAGE_HINTS.values()), _PHRASE_LANGUAGES, _ASKED_WORDS
)
_LAST_WORDS = frozenset().union(*_TASK_CHECKS, _MATH_WORDS, _MATH_WORDS_WITH_NUMBERS)
_DIGIT = re.compile("[0-9]")
_PHRASE_TASK_WORDS = frozenset().union(*(_TASK_HINTS[name] for name in _PHRASE_TASKS))
_BOTH_WORDS = _LANGUAGE_WORDS | _LAST_WORDS
_FIND_LANGUAGE_WORDS = _word_pattern(_LANGUAGE_WORDS)
_FIND_LAST_WORDS = _word_pattern(_LAST_WORDS)
_FIND_BOTH_WORDS = _word_pattern(_BOTH_WORDS)

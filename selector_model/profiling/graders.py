"""Grading one answer to one suite item: 1.0 when it is right, 0.0 otherwise.

Every grader is a function of (item, answer text) alone. The code grader runs the answer
against the item's asserts in a sandboxed subprocess (sandbox.py); the others only read
the text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from .sandbox import run_tests
from .suite import Item


@dataclass(frozen=True)
class Grade:
    score: float  # 1.0 right, 0.0 wrong
    detail: str = ""  # why, for a wrong answer

    @property
    def passed(self) -> bool:
        return self.score >= 1.0


RIGHT = Grade(1.0)


def _wrong(why: str) -> Grade:
    return Grade(0.0, why)


# Answers -------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
# "Answer:", "answer =", "the answer is": not the bare word, which prose uses too.
_MARK = r"answer(?:\s*is)?\s*[:=]|answer\s+is\b"
_ANSWER_MARK = re.compile(_MARK, re.I)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def visible(text: str) -> str:
    """The answer without reasoning a model printed inside <think> tags."""
    return _THINK.sub("", text).strip()


def _to_number(token: str) -> float | None:
    token = token.replace(",", "").replace(" ", "")
    try:
        if "/" in token:
            num, den = token.split("/", 1)
            return float(Fraction(int(num), int(den))) if int(den) else None
        return float(token)
    except ValueError:
        return None


def extract_number(text: str) -> float | None:
    """The final number of an answer: the first after the last "Answer:" mark, else the
    last \\boxed{...}, else the last number in the text. Thousands separators, a leading
    currency sign, a Unicode minus and simple fractions (3/28) are understood."""
    text = visible(text).replace("\u2212", "-").replace("$", "")
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        found = _NUMBER.search(text, marks[-1].end())
        if found:
            return _to_number(found.group())
    boxed = _BOXED.findall(text)
    if boxed:
        inside = _NUMBER.search(boxed[-1])
        if inside:
            return _to_number(inside.group())
    numbers = _NUMBER.findall(text)
    return _to_number(numbers[-1]) if numbers else None


_LETTER_AFTER_MARK = re.compile(rf"(?:{_MARK})\s*\**\s*\(?([A-J])\b\)?", re.I)
_LONE_LETTER = re.compile(r"^\W*\(?([A-J])\)?[.):]?\W*$", re.I)
_LETTER_LINE = re.compile(r"^\s*\**\(?([A-J])[).:]", re.M)


def extract_choice(text: str) -> str | None:
    """The option letter of an answer: after the last "Answer:" mark, else a reply that
    is only a letter, else the letter of the last line shaped like "C)" or "(C)"."""
    text = visible(text)
    marks = [m for m in _LETTER_AFTER_MARK.finditer(text) if m.group(1).isupper()]
    if marks:
        return marks[-1].group(1)
    lone = _LONE_LETTER.match(text)
    if lone:
        return lone.group(1).upper()
    lines = _LETTER_LINE.findall(text)
    return lines[-1] if lines else None


_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)


def extract_code(text: str, entry: str) -> str | None:
    """The code of an answer that defines `entry`: a fenced block defining it (the
    first), else any fenced block, else the whole reply when it defines it unfenced."""
    text = visible(text)
    blocks = [str(m.group(1)) for m in _FENCE.finditer(text)]
    defines = re.compile(rf"^\s*def\s+{re.escape(entry)}\s*\(", re.M)
    for body in blocks:
        if defines.search(body):
            return body
    if blocks:
        return blocks[0]
    return text if defines.search(text) else None


# Instruction checks ----------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
_BULLET = re.compile(r"^\s*(?:[-*\u2022])\s+\S")


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def _json_object(text: str, spec: Any) -> bool:
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    if not isinstance(doc, dict) or not isinstance(spec, Mapping) or set(doc) != set(spec):
        return False
    kinds: dict[str, Callable[[Any], bool]] = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    return all(kinds[str(kind)](doc[key]) for key, kind in spec.items())


# name -> (text, the check's value) -> met; the text is the visible answer, stripped.
CHECKS: dict[str, Callable[[str, Any], bool]] = {
    "bullets": lambda t, n: sum(bool(_BULLET.match(line)) for line in _lines(t)) == int(n),
    "only_bullets": lambda t, on: not on or all(_BULLET.match(line) for line in _lines(t)),
    "lowercase": lambda t, on: not on or (any(c.isalpha() for c in t) and t == t.lower()),
    "uppercase": lambda t, on: not on or (any(c.isalpha() for c in t) and t == t.upper()),
    "min_words": lambda t, n: len(_WORD.findall(t)) >= int(n),
    "max_words": lambda t, n: len(_WORD.findall(t)) <= int(n),
    "include": lambda t, words: all(re.search(rf"\b{re.escape(str(w))}\b", t, re.I) for w in words),
    "exclude_letters": lambda t, letters: not (set(t.lower()) & set(str(letters).lower())),
    "json_object": _json_object,
    "lines": lambda t, n: len(_lines(t)) == int(n),
    "comma_items": lambda t, n: len([p for p in t.split(",") if p.strip()]) == int(n),
    "pattern": lambda t, regex: re.fullmatch(str(regex), t) is not None,
    "paragraphs": lambda t, n: len(_paragraphs(t)) == int(n),
    "last_paragraph_starts_with": lambda t, word: (
        bool(_paragraphs(t))
        and re.match(rf"{re.escape(str(word))}\b", _paragraphs(t)[-1]) is not None
    ),
    "ends_with": lambda t, phrase: t.endswith(str(phrase)),
}


def check_names() -> frozenset[str]:
    return frozenset(CHECKS)


# Graders -------------------------------------------------------------------------


def grade_choice(item: Item, text: str) -> Grade:
    letter = extract_choice(text)
    if letter is None:
        return _wrong("no option letter found")
    return RIGHT if letter == item.answer.upper() else _wrong(f"chose {letter}")


def grade_number(item: Item, text: str) -> Grade:
    value = extract_number(text)
    if value is None:
        return _wrong("no number found")
    expected = float(item.answer)
    if abs(value - expected) <= item.tolerance:
        return RIGHT
    return _wrong(f"answered {value:g}")


def grade_code(item: Item, text: str, timeout: float = 10.0) -> Grade:
    code = extract_code(text, item.entry)
    if code is None:
        return _wrong(f"no code defining {item.entry}")
    outcome = run_tests(code, item.tests, timeout=timeout)
    return RIGHT if outcome.passed else _wrong(outcome.detail)


def grade_instruction(item: Item, text: str) -> Grade:
    answer = visible(text)
    failed = [name for name, value in item.checks.items() if not CHECKS[name](answer, value)]
    return _wrong("failed " + ", ".join(failed)) if failed else RIGHT


GRADERS: dict[str, Callable[[Item, str], Grade]] = {
    "choice": grade_choice,
    "number": grade_number,
    "code": grade_code,
    "instruction": grade_instruction,
}


def grade(item: Item, text: str) -> Grade:
    """Grade `text` as the answer to `item`."""
    return GRADERS[item.kind](item, text)

"""The kind of a prompt: a coarse task area that online evidence is kept per.

Evidence about (kind, model) must carry over to new prompts of the same kind, so a
kind is a handful of broad areas read from the request features alone (nothing from
the prompt's words beyond what `selector_model.features` already hints), in this
order of precedence:

- code: a programming language hinted, a code fence, fill-in-the-middle;
- math: math words or operators, or several numbers with a question, a lettered
  question's options among them: numeric options mark a computation more often than
  a history question's years do, and which model answers best follows the computation
  (docs/evaluation.md, "Kinds of prompt");
- code again: many code characters without any math, in a text that is not a
  multiple-choice question (whose options' "A)" and "(b)" are code characters too,
  many of them beside short options);
- reasoning: a multiple-choice question, or thinking asked for;
- writing: summarise, translate, or generate in prose;
- knowledge: one short user turn (a question or a sentence to complete);
- chat: a conversation (several user turns) or a system prompt;
- other: the rest (long single texts without any of these signals).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

from selector_model.features import LANGUAGES, REQUEST_FEATURES

KINDS = ("code", "math", "reasoning", "knowledge", "writing", "chat", "other")

_I = {name: i for i, name in enumerate(REQUEST_FEATURES)}
# Groups read in one C-level call each (any() over a generator is an object and a
# frame of its own, for every decision).
_LANG = operator.itemgetter(*(_I[f"lang_{name}"] for name in LANGUAGES))
_FENCES = _I["code_fences"]
_CODE_RATIO = _I["code_char_ratio"]
_FIM = _I["fim"]
_MATH = _I["math"]
_NUMBERS = _I["numbers"]
_QUESTIONS = _I["questions"]
_CHOICE = _I["multiple_choice"]
_THINK = _I["think"]
_USER_TURNS = _I["user_turns"]
_HAS_SYSTEM = _I["has_system"]
_LAST_USER = _I["log_last_user_chars"]
_WRITING = operator.itemgetter(
    *(_I[f"task_{name}"] for name in ("summarize", "translate", "generate"))
)
# A question of at most this many characters in its last turn is "short".
_SHORT = math.log1p(400)
# Code characters ({}();=<>[]) per character above which a text reads as code.
_CODE_SHARE = 0.04


def kind_of(request: Sequence[float]) -> str:
    """The kind of a request, from its `REQUEST_FEATURES` vector."""
    if any(_LANG(request)) or request[_FENCES] > 0 or request[_FIM] > 0:
        return "code"
    if request[_MATH] >= 1 or (request[_NUMBERS] >= 2 and request[_QUESTIONS] >= 1):
        return "math"
    if request[_CODE_RATIO] > _CODE_SHARE and request[_CHOICE] == 0:
        return "code"
    if request[_CHOICE] > 0 or request[_THINK] > 0:
        return "reasoning"
    if any(_WRITING(request)):
        return "writing"
    if request[_USER_TURNS] <= 1 and request[_LAST_USER] <= _SHORT:
        return "knowledge"
    if request[_USER_TURNS] >= 2 or request[_HAS_SYSTEM] > 0:
        return "chat"
    return "other"

"""The profiling hook: how an emulated model answers the profiling suite's prompts.

Real Ollama knows nothing of this; it exists so that `autoroute profile` (and the
selector's use of measured results) can be tested and demonstrated without a GPU. A
prompt whose text is exactly one of the shipped suite's prompts (selector_model/
profiling/suite_v*.yaml) is answered, by a model with `skills` in its catalogue entry,
with the item's reference answer or else ordinary emulated prose (which every grader
rejects). Which items a model gets right is decided by a hash of (model, prompt): the
area's items are ranked by it, and the first round(skill * items in the area) are right.
So the same model always answers the same way, different models miss different items,
and profiling measures each area's skill exactly (to the nearest 1/n). Any other
prompt, or a model without skills, is answered exactly as before.
"""

from __future__ import annotations

import hashlib

from selector_model.profiling.suite import Item, Suite, by_prompt

from .catalog import ModelSpec
from .textgen import Prose, Rng

# Length of a wrong answer: a short reply, not a ramble to num_predict.
_WRONG_TOKENS = 24


def _draw(spec: ModelSpec, item: Item) -> bytes:
    return hashlib.sha256(f"profiling\0{spec.name}\0{item.prompt}".encode()).digest()


def correct(spec: ModelSpec, suite: Suite, item: Item, skill: float) -> bool:
    """Whether the model gets `item` right: its rank among the area's items, ordered by
    the (model, prompt) hash, is within the skill's share of them."""
    area = [other for other in suite.items if other.area == item.area]
    ranked = sorted(area, key=lambda other: _draw(spec, other))
    return ranked.index(item) < round(skill * len(area))


def suite_answer(spec: ModelSpec, prompt: str) -> str | None:
    """The answer to a suite prompt, or None for any other prompt (or a model without
    skills in the item's area)."""
    if not spec.skills:
        return None
    found = by_prompt().get(prompt)
    if found is None:
        return None
    suite, item = found
    skill = dict(spec.skills).get(item.area)
    if skill is None:
        return None
    if correct(spec, suite, item, skill):
        return item.reference_answer()
    return "".join(Prose(Rng(spec.name, prompt, "wrong"), _WRONG_TOKENS))

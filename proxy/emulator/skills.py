"""The profiling hook: how an emulated model answers the profiling suite's prompts.

Real Ollama knows nothing of this; it exists so that `autoroute profile` (and the
selector's use of measured results) can be tested and demonstrated without a GPU. A
prompt whose text is exactly one of the shipped suite's prompts (selector_model/
profiling/suite_v*.yaml) is answered, by a model with `skills` in its catalogue entry,
correctly with probability = its skill in the item's area: the item's reference answer,
else ordinary emulated prose (which every grader rejects). The draw is a hash of
(model, prompt), so the same model always gets the same items right. Any other prompt,
or a model without skills, is answered exactly as before.
"""

from __future__ import annotations

import hashlib

from selector_model.profiling.suite import by_prompt

from .catalog import ModelSpec
from .textgen import Rng, prose

# Length of a wrong answer: a short reply, not a ramble to num_predict.
_WRONG_TOKENS = 24


def correct(spec: ModelSpec, prompt: str, skill: float) -> bool:
    """The deterministic draw: u(model, prompt) in [0, 1) below the skill."""
    digest = hashlib.sha256(f"profiling\0{spec.name}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64 < skill


def suite_answer(spec: ModelSpec, prompt: str) -> str | None:
    """The answer to a suite prompt, or None for any other prompt (or a model without
    skills in the item's area)."""
    if not spec.skills:
        return None
    item = by_prompt().get(prompt)
    if item is None:
        return None
    skill = dict(spec.skills).get(item.area)
    if skill is None:
        return None
    if correct(spec, prompt, skill):
        return item.reference_answer()
    return "".join(prose(Rng(spec.name, prompt, "wrong"), _WRONG_TOKENS))

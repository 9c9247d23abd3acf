"""Reasoning Gym per-item outcomes of 2025's open models, as replay prompts and fleet.

A fourth per-prompt outcome source beside LLMRouter's, MMLU-Pro's and ZeroEval's, with
newer models and other tasks: the Reasoning Gym paper's committed zero-shot evaluations
(github.com/open-thought/reasoning-gym-eval, Apache-2.0) of procedurally generated
items of about a hundred tasks (algebra, arithmetic, algorithmic puzzles, logic, graphs,
games, ARC grids, ...) at two levels of difficulty, each answer scored by the task's own
verifier (`data/reasoning_gym/README.md`; built by `training.reasoning_gym_build`).

Each item becomes one `Prompt`: the item's question as a client would send it (the
evaluation's system prompt, which asks for the answer in `<answer>` tags, is left out),
scored per model by the mean of its answers' scores, in [0, 1] (partial credit in some
tasks).

Models are mapped to the Ollama tag a user would pull (`MODELS`), with details from
`selector_model/catalog/models.yaml`. The paper's API models (Claude, o3-mini, Grok)
have no Ollama tag and are left out. No prices: replay these fleets with the `params`
cost only.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from training import outcome_files
from training.data import Prompt
from training.models import ModelSpec, _spec

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "reasoning_gym" / "outcomes.jsonl.gz"
LEVELS = ("easy", "hard")

# (OpenRouter id of the run, Ollama name, family, params B, context, price,
# capabilities). Price 0: the source has none; use the `params` cost. Llama 4 and
# DeepSeek-R1 are mixtures of experts: the catalogue gives their active parameters.
MODELS: tuple[ModelSpec, ...] = (
    _spec("google/gemma-3-27b-it", "gemma3:27b", "gemma3", 27.4, 131072, 0.0, ("vision",)),
    _spec(
        "meta-llama/llama-3.3-70b-instruct", "llama3.3:70b", "llama", 70.6, 131072, 0.0, ("tools",)
    ),
    _spec(
        "meta-llama/llama-4-scout",
        "llama4:16x17b",
        "llama4",
        109.0,
        10000000,
        0.0,
        ("tools", "vision"),
    ),
    _spec(
        "meta-llama/llama-4-maverick",
        "llama4:128x17b",
        "llama4",
        400.0,
        1000000,
        0.0,
        ("tools", "vision"),
    ),
    _spec(
        "mistralai/mistral-small-3.1-24b-instruct",
        "mistral-small3.1:24b",
        "mistral3",
        24.0,
        131072,
        0.0,
        ("tools", "vision"),
    ),
    _spec("qwen/qwq-32b", "qwq:32b", "qwen2", 32.8, 40960, 0.0, ("tools", "thinking")),
    # The runs are of the January 2025 DeepSeek-R1, which Ollama's 671b tag no longer serves.
    _spec(
        "deepseek/deepseek-r1",
        "deepseek-r1:671b-0120",
        "deepseek2",
        671.0,
        163840,
        0.0,
        ("tools", "thinking"),
    ),
)
BY_OLLAMA_NAME: dict[str, ModelSpec] = {m.ollama_name: m for m in MODELS}


def load_prompts(
    models: Sequence[ModelSpec],
    levels: Collection[str] = LEVELS,
    limit: int | None = None,
    seed: int = 0,
    path: Path = DATA_FILE,
) -> list[Prompt]:
    """The items of `levels` every model of `models` was asked, each scored per model
    (by its run's OpenRouter id); `limit` of them drawn with `seed` when given, in file
    order (level, task, then item)."""
    names = [m.dataset_name for m in models]
    return outcome_files.prompts(path, names, "level", "score", levels, limit, seed, "category")


def levels_of(models: Sequence[ModelSpec], path: Path = DATA_FILE) -> list[str]:
    """The levels with items every model of `models` was asked."""
    names = [m.dataset_name for m in models]
    return outcome_files.groups_scored(path, names, "level", "score", LEVELS)


def fleet(ollama_names: Iterable[str]) -> list[ModelSpec]:
    return [BY_OLLAMA_NAME[n] for n in ollama_names]

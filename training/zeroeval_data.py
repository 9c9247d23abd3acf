"""ZeroEval per-item outcomes of many open models, as replay prompts and fleet.

A third per-prompt outcome source beside LLMRouter's and MMLU-Pro's, on other tasks:
ZeroEval's committed zero-shot greedy outputs (github.com/yuchenlin/ZeroEval,
Apache-2.0) on GSM8K (math word problems), MATH level 5 (competition math) and
CRUXEval-O (predict a Python function's output), graded by ZeroEval's own rules
(`data/zeroeval/README.md`; built by `training.zeroeval_build`).

Each item becomes one `Prompt`: the task's question as a client would send it (ZeroEval
wraps it in a template asking for a JSON answer; the template is left out), scored 1.0
for a model whose answer ZeroEval's rule counts right and 0.0 otherwise (no answer
found included).

Models are mapped to the Ollama tag a user would pull (`MODELS`), with details from
`selector_model/catalog/models.yaml`. The API models of the source (GPT, Claude,
Gemini, Reka, Yi-Large, o1) have no Ollama tag and are left out, as are a few open runs
whose files the snapshot does not hold. No prices: replay these fleets with the
`params` cost only.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from training import outcome_files
from training.data import Prompt
from training.models import ModelSpec, _spec

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "zeroeval" / "outcomes.jsonl.gz"
TASKS = ("gsm", "math-l5", "crux")

# (ZeroEval run name, Ollama name, family, params B, context, price, capabilities).
# Price 0: the source has none; use the `params` cost.
MODELS: tuple[ModelSpec, ...] = (
    _spec("Meta-Llama-3-8B-Instruct", "llama3:8b", "llama", 8.0, 8192, 0.0),
    _spec("Meta-Llama-3-70B-Instruct", "llama3:70b", "llama", 70.6, 8192, 0.0),
    _spec("Meta-Llama-3.1-8B-Instruct", "llama3.1:8b", "llama", 8.0, 131072, 0.0, ("tools",)),
    _spec("Meta-Llama-3.1-70B-Instruct", "llama3.1:70b", "llama", 70.6, 131072, 0.0, ("tools",)),
    _spec(
        "Llama-3.1-405B-Inst@hyperbolic", "llama3.1:405b", "llama", 405.0, 131072, 0.0, ("tools",)
    ),
    _spec("Mistral-Large-2", "mistral-large:123b", "llama", 123.0, 131072, 0.0, ("tools",)),
    _spec("Mistral-Nemo-Instruct-2407", "mistral-nemo:12b", "llama", 12.2, 131072, 0.0, ("tools",)),
    _spec("Mixtral-8x7B-Instruct-v0.1", "mixtral:8x7b", "llama", 46.7, 32768, 0.0),
    _spec("Phi-3-mini-4k-instruct", "phi3:3.8b", "phi3", 3.8, 4096, 0.0),
    _spec("Phi-3.5-mini-instruct", "phi3.5:3.8b", "phi3", 3.8, 131072, 0.0),
    _spec("Qwen2-7B-Instruct", "qwen2:7b", "qwen2", 7.6, 32768, 0.0, ("tools",)),
    _spec("Qwen2-72B-Instruct", "qwen2:72b", "qwen2", 72.7, 32768, 0.0, ("tools",)),
    _spec("Qwen2.5-3B-Instruct", "qwen2.5:3b", "qwen2", 3.09, 32768, 0.0, ("tools",)),
    _spec("Qwen2.5-7B-Instruct", "qwen2.5:7b", "qwen2", 7.6, 32768, 0.0, ("tools",)),
    _spec("Qwen2.5-32B-Instruct", "qwen2.5:32b", "qwen2", 32.8, 32768, 0.0, ("tools",)),
    _spec("Qwen2.5-72B-Instruct", "qwen2.5:72b", "qwen2", 72.7, 32768, 0.0, ("tools",)),
    # Ollama's `yi:9b` and `yi:34b` serve Yi-1.5, the catalogue's entries of those tags.
    _spec("Yi-1.5-9B-Chat", "yi:9b", "llama", 8.8, 4096, 0.0),
    _spec("Yi-1.5-34B-Chat", "yi:34b", "llama", 34.4, 4096, 0.0),
    _spec("gemma-2-2b-it", "gemma2:2b", "gemma2", 2.6, 8192, 0.0),
    _spec("gemma-2-9b-it", "gemma2:9b", "gemma2", 9.2, 8192, 0.0),
    _spec("gemma-2-27b-it", "gemma2:27b", "gemma2", 27.2, 8192, 0.0),
    _spec("deepseek-v2.5-0908", "deepseek-v2.5:236b", "deepseek2", 236.0, 131072, 0.0),
    # Cohere's API models as ZeroEval called them (mid-2024; the version behind the
    # alias is not recorded), mapped to the library's tags of the same names.
    _spec("command-r", "command-r:35b", "command-r", 32.3, 131072, 0.0, ("tools",)),
    _spec("command-r-plus", "command-r-plus:104b", "command-r", 104.0, 131072, 0.0, ("tools",)),
)
BY_OLLAMA_NAME: dict[str, ModelSpec] = {m.ollama_name: m for m in MODELS}


def load_prompts(
    models: Sequence[ModelSpec],
    tasks: Collection[str] = TASKS,
    limit: int | None = None,
    seed: int = 0,
    path: Path = DATA_FILE,
) -> list[Prompt]:
    """The items of `tasks` every model of `models` was run on, each scored per model
    (by its ZeroEval run name); `limit` of them drawn with `seed` when given, in file
    order (task, then item)."""
    names = [m.dataset_name for m in models]
    return outcome_files.prompts(path, names, "task", "correct", tasks, limit, seed, "task")


def tasks_of(models: Sequence[ModelSpec], path: Path = DATA_FILE) -> list[str]:
    """The tasks on which every model of `models` has outcomes."""
    names = [m.dataset_name for m in models]
    return outcome_files.groups_scored(path, names, "task", "correct", TASKS)


def fleet(ollama_names: Iterable[str]) -> list[ModelSpec]:
    return [BY_OLLAMA_NAME[n] for n in ollama_names]

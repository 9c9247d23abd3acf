"""MMLU-Pro per-question outcomes of many open models, as replay prompts and fleet.

A second per-prompt outcome source beside LLMRouter's, with other models and another
grader: TIGER-AI-Lab/MMLU-Pro's committed 5-shot chain-of-thought outputs (Apache-2.0),
where a model's answer is right iff the letter MMLU-Pro's regex extracted from its
reasoning equals the gold letter (`data/mmlu_pro/README.md`; built by
`training.mmlu_pro_build`).

Each question becomes one `Prompt`: the zero-shot form of MMLU-Pro's own evaluation
prompt (its instruction, the question and the lettered options; the five worked
examples are left out, a client would not send them), scored 1.0 for a model whose
extracted letter is the gold one and 0.0 otherwise (no extracted letter included).

Models are mapped to the Ollama tag a user would pull (`MODELS`): instruct and chat
runs to the library's default chat tag, base runs to the `-text` tags (which the
proxy reads as not instruct). Details come from `selector_model/catalog/models.yaml`
where the model is listed there, else from its model card (see the README). The API
models of the source (Gemini 1.5 Flash/Pro, Jamba 1.5 Large) have no Ollama tag and
are left out. No prices: replay these fleets with the `params` cost only.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from training import outcome_files
from training.data import Prompt
from training.models import ModelSpec, _spec

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "mmlu_pro" / "outcomes.jsonl.gz"

INSTRUCTION = (
    "The following is a multiple choice question about {subject}. Think step by step "
    'and then finish your answer with "the answer is (X)" where X is the correct letter '
    "choice."
)

# (MMLU-Pro model name, Ollama name, family, params B, context, capabilities, code).
# Price 0: the source has none; use the `params` cost.
MODELS: tuple[ModelSpec, ...] = (
    # instruct / chat runs
    _spec("Meta-Llama-3_1-8B-Instruct", "llama3.1:8b", "llama", 8.0, 131072, 0.0, ("tools",)),
    _spec("Meta-Llama-3_1-70B-Instruct", "llama3.1:70b", "llama", 70.6, 131072, 0.0, ("tools",)),
    _spec("Mistral-7B-Instruct-v0.1", "mistral:7b-instruct-v0.1", "llama", 7.2, 32768, 0.0),
    _spec("Mistral-7B-Instruct-v0.2", "mistral:7b-instruct-v0.2", "llama", 7.2, 32768, 0.0),
    _spec("Mixtral-8x7B-Instruct-v0.1", "mixtral:8x7b", "llama", 46.7, 32768, 0.0),
    _spec("Phi-3-mini-4k-instruct", "phi3:3.8b", "phi3", 3.8, 4096, 0.0),
    _spec("Qwen1.5-7B-Chat", "qwen:7b", "qwen2", 7.7, 32768, 0.0),
    _spec("Qwen1.5-72B-Chat", "qwen:72b", "qwen2", 72.3, 32768, 0.0),
    _spec("Yi-6b-Chat", "yi:6b-chat-q4_0", "llama", 6.1, 4096, 0.0),
    _spec("c4ai-command-r-v01", "command-r:35b-v0.1", "command-r", 32.3, 131072, 0.0, ("tools",)),
    _spec(
        "DeepSeek-Coder-V2",
        "deepseek-coder-v2:236b",
        "deepseek2",
        236.0,
        163840,
        0.0,
        is_code=True,
    ),
    _spec("mathstral-7B", "mathstral:7b", "llama", 7.2, 32768, 0.0),
    # base runs (5-shot prompting), as Ollama's `-text` tags
    _spec("gemma-7b", "gemma:7b-text", "gemma", 8.5, 8192, 0.0, is_instruct=False),
    _spec("Llama-2-7b-hf", "llama2:7b-text", "llama", 7.0, 4096, 0.0, is_instruct=False),
    _spec("Llama-2-13b-hf", "llama2:13b-text", "llama", 13.0, 4096, 0.0, is_instruct=False),
    _spec("Llama-2-70b-hf", "llama2:70b-text", "llama", 70.0, 4096, 0.0, is_instruct=False),
    _spec("Meta-Llama-3-8B", "llama3:8b-text", "llama", 8.0, 8192, 0.0, is_instruct=False),
    _spec("Meta-Llama-3-70B", "llama3:70b-text", "llama", 70.6, 8192, 0.0, is_instruct=False),
    _spec("Meta-Llama-3_1-8B", "llama3.1:8b-text", "llama", 8.0, 131072, 0.0, is_instruct=False),
    _spec("Meta-Llama-3_1-70B", "llama3.1:70b-text", "llama", 70.6, 131072, 0.0, is_instruct=False),
    _spec("Mistral-7B-v0.1", "mistral:7b-text-v0.1", "llama", 7.2, 32768, 0.0, is_instruct=False),
    _spec(
        "Mistral-7B-v0.2-hf", "mistral:7b-text-v0.2", "llama", 7.2, 32768, 0.0, is_instruct=False
    ),
    _spec(
        "Mixtral-8x7B-v0.1", "mixtral:8x7b-text-v0.1", "llama", 46.7, 32768, 0.0, is_instruct=False
    ),
    _spec("Qwen1.5-110B", "qwen:110b-text", "qwen2", 111.0, 32768, 0.0, is_instruct=False),
    _spec("Yi-6B", "yi:6b-text", "llama", 6.1, 4096, 0.0, is_instruct=False),
    _spec("Yi-34B", "yi:34b-text", "llama", 34.4, 4096, 0.0, is_instruct=False),
)
BY_OLLAMA_NAME: dict[str, ModelSpec] = {m.ollama_name: m for m in MODELS}
# MMLU-Pro's categories, each question's `category` (a prompt's label).
CATEGORIES = (
    "biology",
    "business",
    "chemistry",
    "computer science",
    "economics",
    "engineering",
    "health",
    "history",
    "law",
    "math",
    "other",
    "philosophy",
    "physics",
    "psychology",
)


def prompt_text(row: dict[str, Any]) -> str:
    """A question as a client would send it: MMLU-Pro's instruction, zero-shot."""
    subject = str(row["category"])
    letters = string.ascii_uppercase
    options = "\n".join(f"{letters[i]}. {o}" for i, o in enumerate(row["options"]))
    head = INSTRUCTION.format(subject=subject)
    return f"{head}\n\nQuestion: {row['question']}\nOptions:\n{options}"


def load_prompts(
    models: Sequence[ModelSpec] = MODELS,
    limit: int | None = None,
    seed: int = 0,
    path: Path = DATA_FILE,
) -> list[Prompt]:
    """The questions every model of `models` answered, each scored per model (by its
    MMLU-Pro name); `limit` of them drawn with `seed` when given, in id order."""
    names = [m.dataset_name for m in models]
    prompts: list[Prompt] = []
    for row in outcome_files.rows(path):
        preds: dict[str, str | None] = row["pred"]
        if not all(n in preds for n in names):
            continue
        scores = {n: float(preds[n] == row["answer"]) for n in names}
        prompts.append(Prompt(prompt_text(row), scores, str(row["category"])))
    return outcome_files.drawn(prompts, limit, seed)


def fleet(ollama_names: Iterable[str]) -> list[ModelSpec]:
    return [BY_OLLAMA_NAME[n] for n in ollama_names]

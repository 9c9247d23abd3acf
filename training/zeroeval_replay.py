"""Replays ZeroEval items (GSM8K, MATH level 5, CRUXEval-O) through `auto` on fleets.

    PYTHONPATH=. python -m training.zeroeval_replay [--limit N] [--passes 3]
        [--seed 0 | --seeds 0,1,2]
        [--fleet LABEL-WORD] [--models qwen2:72b,phi3.5:3.8b,...] [--tasks gsm,crux]
        [--profiled N [--profile-only all|unseen|uncertain|random]]

Each fleet is replayed on the items of its tasks that every one of its models was run
on (`--limit`: that many of them, drawn with `--seed`); per fleet `replay.table` prints
auto's three profiles against best single / always-largest / random / oracle, with cost
= active parameters, and the feedback curves of the proxy's own online learner
(`replay.online_learner`). `--models`: one fleet of your choice among `MODELS`' Ollama
names, on the tasks they were all run on (or `--tasks`).
`--profiled N`: as if every model had been profiled on N items per area of the
half learned from (`AREAS` maps the items' labels to areas), `auto` shown on the
other half without and with the profiles (`fleet_replay.PROFILED_CAVEAT`);
`--profile-only`: only some models profiled (`profiled_replay.profiled_models`).
"""

from __future__ import annotations

import sys

from training import fleet_replay
from training.zeroeval_data import MODELS, TASKS, load_prompts, tasks_of

ALL_TASKS = TASKS
# Every open model ZeroEval ran on all three tasks.
OPEN = (
    "llama3:8b",
    "llama3:70b",
    "llama3.1:8b",
    "llama3.1:70b",
    "llama3.1:405b",
    "mistral-large:123b",
    "phi3.5:3.8b",
    "qwen2:7b",
    "qwen2:72b",
    "yi:9b",
    "yi:34b",
    "gemma2:2b",
    "gemma2:9b",
    "gemma2:27b",
    "deepseek-v2.5:236b",
)
SMALL = ("llama3:8b", "llama3.1:8b", "phi3.5:3.8b", "qwen2:7b", "yi:9b", "gemma2:2b", "gemma2:9b")
# None of the models the shipped artifact was trained on, and none above 72B.
UNSEEN_MID = (
    "llama3:8b",
    "llama3:70b",
    "llama3.1:70b",
    "phi3.5:3.8b",
    "qwen2:7b",
    "qwen2:72b",
    "yi:9b",
    "yi:34b",
    "gemma2:2b",
    "gemma2:27b",
)
QWEN25 = (
    "qwen2.5:3b",
    "qwen2.5:7b",
    "qwen2.5:32b",
    "qwen2.5:72b",
    "phi3:3.8b",
    "llama3.1:70b",
    "gemma2:27b",
    "mistral-large:123b",
    "deepseek-v2.5:236b",
)
GSM = (
    "mistral-nemo:12b",
    "mixtral:8x7b",
    "llama3:8b",
    "llama3:70b",
    "gemma2:2b",
    "qwen2:7b",
    "phi3.5:3.8b",
)
# Cohere's runs are API models of an unrecorded version (see zeroeval_data.MODELS), so
# their fleet is apart from the others.
GSM_COHERE = (*GSM, "command-r:35b", "command-r-plus:104b")
# The area each task counts for when a fleet is profiled (`--profiled`): CRUXEval-O
# asks what a piece of code outputs, the others are math problems.
AREAS = {"gsm": "math", "math-l5": "math", "crux": "code"}
FLEETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ZeroEval open fleet (gsm, math-l5, crux)": (OPEN, ALL_TASKS),
    "ZeroEval small fleet (<=9B; gsm, math-l5, crux)": (SMALL, ALL_TASKS),
    "ZeroEval unseen fleet (<=72B; gsm, math-l5, crux)": (UNSEEN_MID, ALL_TASKS),
    "ZeroEval Qwen2.5 fleet (math-l5, crux)": (QWEN25, ("math-l5", "crux")),
    "ZeroEval GSM8K fleet (gsm)": (GSM, ("gsm",)),
    "ZeroEval GSM8K fleet with Cohere's API runs (gsm)": (GSM_COHERE, ("gsm",)),
}


def main(argv: list[str] | None = None) -> int:
    return fleet_replay.grouped_main(
        "training.zeroeval_replay",
        argv,
        dataset="ZeroEval",
        word="tasks",
        groups=TASKS,
        models=MODELS,
        fleets=FLEETS,
        groups_of=tasks_of,
        load_prompts=load_prompts,
        labels=AREAS,
    )


if __name__ == "__main__":
    sys.exit(main())

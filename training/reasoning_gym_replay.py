"""Replays Reasoning Gym items (easy and hard levels) through `auto` on fleets of 2025's
open models.

    PYTHONPATH=. python -m training.reasoning_gym_replay [--limit N] [--passes 3]
        [--seed 0 | --seeds 0,1,2]
        [--fleet LABEL-WORD] [--models gemma3:27b,qwq:32b,...] [--levels easy,hard]
        [--profiled N [--profile-only all|unseen|uncertain|random]]

Each fleet is replayed on the items of its levels that every one of its models was
asked (`--limit`: that many of them, drawn with `--seed`); per fleet `replay.table`
prints auto's three profiles against best single / always-largest / random / oracle,
with cost = active parameters, and the feedback curves of the proxy's own online
learner (`replay.online_learner`). `--models`: one fleet of your choice among
`MODELS`' Ollama names, on the levels they were all asked (or `--levels`).
`--profiled N`: as if every model had been profiled on N items per area of the
half learned from (`AREAS` maps the items' labels to areas), `auto` shown on the
other half without and with the profiles (`fleet_replay.PROFILED_CAVEAT`);
`--profile-only`: only some models profiled (`profiled_replay.profiled_models`).
"""

from __future__ import annotations

import sys

from training import fleet_replay
from training.reasoning_gym_data import LEVELS, MODELS, levels_of, load_prompts

# Every open model the paper evaluated on both levels.
OPEN = tuple(m.ollama_name for m in MODELS)
# Without the two models that think before answering (QwQ, DeepSeek-R1).
NO_THINKING = (
    "gemma3:27b",
    "llama3.3:70b",
    "llama4:16x17b",
    "llama4:128x17b",
    "mistral-small3.1:24b",
)
# Dense models of at most 32B: what one 24-32 GB GPU holds at Q4.
ONE_GPU = ("gemma3:27b", "mistral-small3.1:24b", "qwq:32b")
LLAMA = ("llama3.3:70b", "llama4:16x17b", "llama4:128x17b")
# The area each of Reasoning Gym's categories of tasks counts for when a fleet is
# profiled (`--profiled`): computation (algebra, arithmetic, geometry) is math, its one
# code task (running a Brainf*ck program) code, every puzzle and game reasoning.
AREAS = dict.fromkeys(("algebra", "arithmetic", "geometry"), "math") | {"code": "code"}
AREAS |= dict.fromkeys(
    ("algorithmic", "arc", "cognition", "games", "graphs", "induction", "logic"), "reasoning"
)
FLEETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Reasoning Gym open fleet (easy, hard)": (OPEN, LEVELS),
    "Reasoning Gym fleet without thinking models (easy, hard)": (NO_THINKING, LEVELS),
    "Reasoning Gym one-GPU fleet (<=32B dense; easy, hard)": (ONE_GPU, LEVELS),
    "Reasoning Gym Llama fleet (easy, hard)": (LLAMA, LEVELS),
}


def main(argv: list[str] | None = None) -> int:
    return fleet_replay.grouped_main(
        "training.reasoning_gym_replay",
        argv,
        dataset="Reasoning Gym",
        word="levels",
        groups=LEVELS,
        models=MODELS,
        fleets=FLEETS,
        groups_of=levels_of,
        load_prompts=load_prompts,
        labels=AREAS,
    )


if __name__ == "__main__":
    sys.exit(main())

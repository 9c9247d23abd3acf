"""Replays MMLU-Pro questions through `auto` on fleets the shipped selector never saw.

    PYTHONPATH=. python -m training.mmlu_pro_replay [--limit 1500] [--passes 3]
        [--seed 0 | --seeds 0,1,2]
        [--fleet LABEL-WORD] [--models qwen:72b,phi3:3.8b,...]
        [--profiled N [--profile-only all|unseen|uncertain|random]]

The same questions (drawn with `--seed` among those every model of `MODELS` answered)
go to each fleet (`--models`: one fleet of your choice among `MODELS`' Ollama names,
the questions those models all answered); per fleet `replay.table` prints auto's
three profiles against best
single / always-largest / random / oracle, with cost = active parameters, and the
feedback curves of the proxy's own online learner (`replay.online_learner`).
`--profiled N`: as if every model had been profiled on N items per area of the
half learned from (`AREAS` maps the items' labels to areas), `auto` shown on the
other half without and with the profiles (`fleet_replay.PROFILED_CAVEAT`);
`--profile-only`: only some models profiled (`profiled_replay.profiled_models`).
"""

from __future__ import annotations

import sys

from training import fleet_replay
from training.data import Prompt
from training.mmlu_pro_data import BY_OLLAMA_NAME, CATEGORIES, MODELS, fleet, load_prompts

INSTRUCT = (
    "llama3.1:8b",
    "llama3.1:70b",
    "mistral:7b-instruct-v0.1",
    "mistral:7b-instruct-v0.2",
    "mixtral:8x7b",
    "phi3:3.8b",
    "qwen:7b",
    "qwen:72b",
    "yi:6b-chat-q4_0",
    "command-r:35b-v0.1",
    "deepseek-coder-v2:236b",
    "mathstral:7b",
)
SMALL = (
    "phi3:3.8b",
    "llama3.1:8b",
    "mistral:7b-instruct-v0.2",
    "qwen:7b",
    "yi:6b-chat-q4_0",
    "mathstral:7b",
    "gemma:7b-text",
    "llama2:13b-text",
    "llama3:8b-text",
    "llama3.1:8b-text",
    "mistral:7b-text-v0.1",
    "yi:6b-text",
)
NO_LLAMA = (
    "qwen:7b",
    "qwen:72b",
    "qwen:110b-text",
    "yi:6b-chat-q4_0",
    "yi:34b-text",
    "phi3:3.8b",
    "command-r:35b-v0.1",
    "deepseek-coder-v2:236b",
    "mixtral:8x7b",
    "mathstral:7b",
    "gemma:7b-text",
)
MIXED = tuple(
    m.ollama_name for m in MODELS if m.ollama_name not in ("llama2:7b-text", "mistral:7b-text-v0.2")
)
# The area each MMLU-Pro category counts for when a fleet is profiled (`--profiled`):
# its math questions are computations; every other category is a multiple-choice
# question of a subject, what the catalogue's knowledge area (MMLU-Pro itself) scores.
AREAS = {category: "knowledge" for category in CATEGORIES} | {"math": "math"}
FLEETS: dict[str, tuple[str, ...]] = {
    "MMLU-Pro instruct fleet": INSTRUCT,
    "MMLU-Pro small fleet (<=14B, chat and base)": SMALL,
    "MMLU-Pro fleet without Llama/Mistral 7B": NO_LLAMA,
    "MMLU-Pro mixed fleet": MIXED,
}


def main(argv: list[str] | None = None) -> int:
    parser = fleet_replay.parser("training.mmlu_pro_replay", MODELS, limit=1500)
    args = parser.parse_args(argv)
    fleets = FLEETS
    if args.models:
        names = fleet_replay.chosen(parser, args.models, BY_OLLAMA_NAME)
        fleets = {"MMLU-Pro fleet of your choice": names}
    shipped = fleet_replay.Shipped.load(args.artifact, args.feedback)
    profiled = fleet_replay.profiled_of(parser, args)
    drawn: dict[int, list[Prompt]] = {}

    def prompts_of(seed: int) -> list[Prompt]:
        """The questions of `seed`'s draw, the same for every fleet."""
        if seed not in drawn:
            drawn[seed] = load_prompts(
                fleet(next(iter(fleets.values()))) if args.models else MODELS,
                limit=args.limit,
                seed=seed,
            )
        return drawn[seed]

    print(shipped.header())
    if profiled:
        print(fleet_replay.PROFILED_CAVEAT)
    for label, names in fleets.items():
        if fleet_replay.wanted(label, args.fleet):
            shipped.print_fleet(
                label,
                fleet(names),
                prompts_of,
                args.passes,
                fleet_replay.seeds_of(args),
                profiled,
                AREAS,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

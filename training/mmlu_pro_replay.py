"""Replays MMLU-Pro questions through `auto` on fleets the shipped selector never saw.

    PYTHONPATH=. python -m training.mmlu_pro_replay [--limit 1500] [--seed 0] [--passes 3]
        [--fleet LABEL-WORD] [--models qwen:72b,phi3:3.8b,...]

The same questions (drawn with `--seed` among those every model of `MODELS` answered)
go to each fleet (`--models`: one fleet of your choice among `MODELS`' Ollama names,
the questions those models all answered); per fleet `replay.table` prints auto's
three profiles against best
single / always-largest / random / oracle, with cost = active parameters, and the
feedback curves of the proxy's own online learner (`replay.online_learner`).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

from proxy.config import load as load_config
from selector_model import artifact
from training import replay
from training.mmlu_pro_data import BY_OLLAMA_NAME, MODELS, fleet, load_prompts

INSTRUCT = (
    "llama3.1:8b",
    "llama3.1:70b",
    "mistral:7b-instruct-v0.1",
    "mistral:7b-instruct-v0.2",
    "mixtral:8x7b",
    "phi3:3.8b",
    "qwen:7b",
    "qwen:72b",
    "yi:6b",
    "command-r:35b-v0.1",
    "deepseek-coder-v2:236b",
    "mathstral:7b",
)
SMALL = (
    "phi3:3.8b",
    "llama3.1:8b",
    "mistral:7b-instruct-v0.2",
    "qwen:7b",
    "yi:6b",
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
    "yi:6b",
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
FLEETS: dict[str, tuple[str, ...]] = {
    "MMLU-Pro instruct fleet": INSTRUCT,
    "MMLU-Pro small fleet (<=14B, chat and base)": SMALL,
    "MMLU-Pro fleet without Llama/Mistral 7B": NO_LLAMA,
    "MMLU-Pro mixed fleet": MIXED,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.mmlu_pro_replay")
    parser.add_argument("--limit", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--fleet", action="append", help="only the fleets whose label has this")
    parser.add_argument(
        "--models",
        help="comma-separated Ollama names of MODELS: replay that fleet instead "
        f"(one of: {', '.join(m.ollama_name for m in MODELS)})",
    )
    args = parser.parse_args(argv)
    fleets = FLEETS
    if args.models:
        names = tuple(n.strip() for n in args.models.split(",") if n.strip())
        unknown = [n for n in names if n not in BY_OLLAMA_NAME]
        if unknown or len(names) < 2:
            parser.error(f"--models: two or more of MODELS' names, not {unknown or names}")
        fleets = {"MMLU-Pro fleet of your choice": names}
    selector = load_config(None).selector
    profiles = replay.profiles_of(selector)
    meta = json.loads(artifact.SHIPPED.with_name("selector.json").read_text())
    trained_on: list[str] = meta["trained_on"]
    prompts = load_prompts(
        fleet(next(iter(fleets.values()))) if args.models else MODELS,
        limit=args.limit,
        seed=args.seed,
    )
    print(replay.COST_DEFINITIONS["params"])
    print(f"artifact trained on: {', '.join(trained_on)}")
    for label, names in fleets.items():
        if args.fleet and not any(f in label for f in args.fleet):
            continue
        models = fleet(names)
        start = time.monotonic()
        result = replay.in_loop(
            functools.partial(
                replay.replay_fleet,
                label,
                artifact.SHIPPED.parent,
                prompts,
                models,
                profiles,
                trained_on=trained_on,
                feedback=replay.online_learner,
                passes=args.passes,
                seed=args.seed,
                selector=selector,
            )
        )
        print(f"fleet: {', '.join(names)}")
        print(replay.table(result))
        picks = {p: o.picks for p, o in result.profiles.items()}
        print(f"  picks: {json.dumps(picks)}")
        print(f"  ({time.monotonic() - start:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

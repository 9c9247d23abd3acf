"""Replays ZeroEval items (GSM8K, MATH level 5, CRUXEval-O) through `auto` on fleets.

    PYTHONPATH=. python -m training.zeroeval_replay [--limit N] [--seed 0] [--passes 3]
        [--fleet LABEL-WORD] [--models qwen2:72b,phi3.5:3.8b,...] [--tasks gsm,crux]

Each fleet is replayed on the items of its tasks that every one of its models was run
on (`--limit`: that many of them, drawn with `--seed`); per fleet `replay.table` prints
auto's three profiles against best single / always-largest / random / oracle, with cost
= active parameters, and the feedback curves of the proxy's own online learner
(`replay.online_learner`). `--models`: one fleet of your choice among `MODELS`' Ollama
names, on the tasks they were all run on (or `--tasks`).
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
from training.zeroeval_data import BY_OLLAMA_NAME, MODELS, TASKS, fleet, load_prompts, tasks_of

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
FLEETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ZeroEval open fleet (gsm, math-l5, crux)": (OPEN, ALL_TASKS),
    "ZeroEval small fleet (<=9B; gsm, math-l5, crux)": (SMALL, ALL_TASKS),
    "ZeroEval unseen fleet (<=72B; gsm, math-l5, crux)": (UNSEEN_MID, ALL_TASKS),
    "ZeroEval Qwen2.5 fleet (math-l5, crux)": (QWEN25, ("math-l5", "crux")),
    "ZeroEval GSM8K fleet (gsm)": (GSM, ("gsm",)),
    "ZeroEval GSM8K fleet with Cohere's API runs (gsm)": (GSM_COHERE, ("gsm",)),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.zeroeval_replay")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--fleet", action="append", help="only the fleets whose label has this")
    parser.add_argument(
        "--models",
        help="comma-separated Ollama names of MODELS: replay that fleet instead "
        f"(one of: {', '.join(m.ollama_name for m in MODELS)})",
    )
    parser.add_argument("--tasks", help=f"with --models: comma-separated, of {', '.join(TASKS)}")
    args = parser.parse_args(argv)
    fleets = FLEETS
    if args.models:
        names = tuple(n.strip() for n in args.models.split(",") if n.strip())
        unknown = [n for n in names if n not in BY_OLLAMA_NAME]
        if unknown or len(names) < 2:
            parser.error(f"--models: two or more of MODELS' names, not {unknown or names}")
        tasks = tuple(t.strip() for t in (args.tasks or "").split(",") if t.strip()) or tuple(
            tasks_of(fleet(names))
        )
        if not tasks or any(t not in TASKS for t in tasks):
            parser.error(f"--tasks: of {', '.join(TASKS)}; these models share {tasks or 'none'}")
        fleets = {f"ZeroEval fleet of your choice ({', '.join(tasks)})": (names, tasks)}
    selector = load_config(None).selector
    profiles = replay.profiles_of(selector)
    meta = json.loads(artifact.SHIPPED.with_name("selector.json").read_text())
    trained_on: list[str] = meta["trained_on"]
    print(replay.COST_DEFINITIONS["params"])
    print(f"artifact trained on: {', '.join(trained_on)}")
    for label, (names, tasks) in fleets.items():
        if args.fleet and not any(f in label for f in args.fleet):
            continue
        models = fleet(names)
        prompts = load_prompts(models, tasks, limit=args.limit, seed=args.seed)
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

"""Builds `data/reasoning_gym/outcomes.jsonl.gz` from Reasoning Gym's committed evaluations.

open-thought/reasoning-gym-eval (Apache-2.0) commits, under
`reasoninggym-paper-experiments/zero-shot/{easy,hard}/<run>/`, one JSON file per
Reasoning Gym task (`<category>/<task>.json`) for each model the paper evaluated: 50
procedurally generated items (seed 45) with the model's zero-shot answers and each
answer's score by the task's own verifier (`score_answer` of the Reasoning Gym version
the run used; in [0, 1], partial credit in some tasks). A run's `summary.json` records
the model, the API provider, the sampling (temperature 0.6, top-p 0.95) and how many
answers each item got (3 or 1). The score kept per item is the file's `mean_score`, the
mean over the item's answers, as the paper reports it; `check` compares every file's
mean with the `average_mean_score` it records.

Runs kept (`RUNS`): the open-weight models with an Ollama tag, on both levels. The API
models (Claude, o3-mini, Grok) are left out. Tasks left out (`EXCLUDED`): `acre` (built
from the ACRE dataset, GPL-3.0) and `codeio` (items drawn from the CodeI/O corpus, whose
licence Reasoning Gym's NOTICE does not record).

The runs were made at different Reasoning Gym versions, and for some tasks a generator
changed between them, so item `i` of a task need not be the same question in two runs.
Items are therefore matched by their text (level, task, question and expected answer),
not their position: a question a run did not ask has no score of that run. A question a
run asked twice (a generator repeating itself) gets the mean of its scores.

Run against a local snapshot (the `fetch` tool's mirror, a bare git directory):

    python -m training.reasoning_gym_build /work/.mirror/open-thought+reasoning-gym-eval/repo

Output, one JSON line per distinct item, in level, task, then first-seen order:
`{"level", "category", "task", "question", "answer", "score": {model: mean score}}`, a
model being the OpenRouter id its run's summary gives (`RUNS`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training import outcome_files

OUT = Path(__file__).resolve().parent.parent / "data" / "reasoning_gym" / "outcomes.jsonl.gz"
BASE = "reasoninggym-paper-experiments/zero-shot"
LEVELS = ("easy", "hard")
# Open-weight models with an Ollama tag, by the id their runs' summaries give; a run's
# folder is the id with `/` as `_`, then the run's timestamp.
RUNS: tuple[str, ...] = (
    "google/gemma-3-27b-it",
    "meta-llama/llama-3.3-70b-instruct",
    "meta-llama/llama-4-scout",
    "meta-llama/llama-4-maverick",
    "mistralai/mistral-small-3.1-24b-instruct",
    "qwen/qwq-32b",
    "deepseek/deepseek-r1",
)
EXCLUDED = frozenset({"acre", "codeio"})
DIGITS = 4


@dataclass
class Item:
    level: str
    category: str
    task: str
    question: str
    answer: str
    scores: dict[str, list[float]] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "category": self.category,
            "task": self.task,
            "question": self.question,
            "answer": self.answer,
            "score": {
                run: round(sum(s) / len(s), DIGITS) for run, s in sorted(self.scores.items())
            },
        }


@dataclass(frozen=True)
class Run:
    """One model's run on one level, as its summary describes it."""

    level: str
    model: str
    folder: str
    provider: str
    temperature: float
    answers_per_item: int


def run_folder(repo: Path, level: str, model: str) -> str:
    """The one folder of `model`'s run on `level`."""
    prefix = model.replace("/", "_") + "_"
    folders = outcome_files.git(repo, "ls-tree", "--name-only", f"HEAD:{BASE}/{level}")
    found = [f for f in folders.decode().split() if f.startswith(prefix)]
    if len(found) != 1:
        raise ValueError(f"{level}: {len(found)} runs of {model}")
    return found[0]


def task_files(repo: Path, folder: str) -> Iterator[tuple[str, str | None]]:
    """(category/task path, blob id or None when the snapshot lacks it) of a run."""
    listing = outcome_files.git(repo, "ls-tree", "-r", "-l", f"HEAD:{folder}").decode()
    for line in listing.splitlines():
        meta, _, path = line.partition("\t")
        if "/" not in path or not path.endswith(".json"):
            continue  # the run's summary and checkpoint
        _mode, _kind, blob, size = meta.split()
        yield path, (blob if size.isdigit() else None)


def build(repo: Path, out: Path = OUT) -> list[tuple[Run, str, float, float]]:
    """Writes `out`; returns, per run and task, the mean of the items' scores read here
    and the `average_mean_score` the task's file records."""
    items: dict[tuple[str, str, str, str], Item] = {}
    checked: list[tuple[Run, str, float, float]] = []
    for level in LEVELS:
        for model in RUNS:
            folder = f"{BASE}/{level}/{run_folder(repo, level, model)}"
            summary = json.loads(outcome_files.git(repo, "show", f"HEAD:{folder}/summary.json"))
            if summary["model"] != model:
                raise ValueError(f"{folder}: a run of {summary['model']}")
            run = Run(
                level,
                model,
                folder,
                str(summary["provider"]),
                float(summary["temperature"]),
                int(summary["completions_per_prompt"]),
            )
            for path, blob in task_files(repo, folder):
                category, task = path.removesuffix(".json").split("/")
                if task in EXCLUDED:
                    continue
                if blob is None:
                    print(f"{level} {model}: {path} absent from the snapshot", file=sys.stderr)
                    continue
                doc = json.loads(outcome_files.git(repo, "cat-file", "blob", blob))
                results: list[dict[str, Any]] = doc["results"]
                for result in results:
                    question = str(result["question"])
                    answer = str(result["expected_answer"])
                    key = (level, task, question, answer)
                    if key not in items:
                        items[key] = Item(level, category, task, question, answer)
                    score = float(result["mean_score"])
                    items[key].scores.setdefault(model, []).append(score)
                mean = sum(float(r["mean_score"]) for r in results) / len(results)
                checked.append((run, task, mean, float(doc["average_mean_score"])))
    order = sorted(items.values(), key=lambda i: (LEVELS.index(i.level), i.category, i.task))
    outcome_files.write_rows(out, (item.row() for item in order))
    return checked


def check(checked: list[tuple[Run, str, float, float]]) -> int:
    """Prints each run's mean score beside the one its files record; returns how many
    task files differ from their own record."""
    differ = 0
    runs: dict[Run, list[tuple[float, float]]] = {}
    for run, task, ours, theirs in checked:
        if abs(ours - theirs) > 1e-9:
            differ += 1
            print(f"{run.level} {run.model} {task}: ours {ours:.4f}, recorded {theirs:.4f}")
        runs.setdefault(run, []).append((ours, theirs))
    for run, means in runs.items():
        ours = sum(m for m, _ in means) / len(means)
        theirs = sum(t for _, t in means) / len(means)
        print(
            f"{run.level:4} {run.model:42} {len(means):3} tasks  mean {ours:.4f} "
            f"(recorded {theirs:.4f})  {run.provider}, t={run.temperature}, "
            f"{run.answers_per_item} answer(s) per item"
        )
    return differ


if __name__ == "__main__":
    mirror = Path(sys.argv[1])
    print(check(build(mirror)), "task files differ from their recorded mean")

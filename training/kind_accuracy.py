"""How often `selector_model.kind.kind_of` gives a labelled prompt the kind its source
says it is.

    PYTHONPATH=. python -m training.kind_accuracy [--examples N]

Reads the prompts the project already holds, each as the replays send it (one user
message on /api/chat; MMLU-Pro's as `training.mmlu_pro_data.prompt_text` words it):
LLMRouter's train and test queries (by `task_name`), MMLU-Pro's questions (by
`category`) and ZeroEval's items (by `task`). `EXPECTED` says which kinds are right for
each source, the first one the source's own; prints, per source, how many prompts got
each kind, and the accuracy (the share whose kind is one of the right ones) per dataset
and over all. `--examples N`: also N prompts per source whose kind is wrong.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterator

from selector_model.kind import KINDS, kind_of
from training import outcome_files
from training.data import DATA_DIR, prompt_request
from training.mmlu_pro_data import DATA_FILE as MMLU_PRO_FILE
from training.mmlu_pro_data import prompt_text
from training.zeroeval_data import DATA_FILE as ZEROEVAL_FILE

# The kinds right for each source, the first the one it is. `kind_of`'s own areas
# (its docstring): a lettered question is "reasoning" unless it computes, so MMLU-Pro's
# history or law is "reasoning", not "knowledge", and its maths is "math". Physics,
# chemistry, engineering, business and economics mix calculations (a stem with
# quantities to compute) with questions of fact: "math" and "reasoning" both count.
# A short open question (trivia, Natural Questions) is "knowledge"; CommonGen (write a
# sentence from given words) is "writing"; predicting a function's output (CRUXEval) is
# "code". LLMRouter holds its multiple-choice sets' questions without their options: a
# short question, "knowledge", or "reasoning" as a lettered one would be.
MC_COMPUTING = ("reasoning", "math")
NO_OPTIONS = ("knowledge", "reasoning")
EXPECTED: dict[str, tuple[str, ...]] = {
    # LLMRouter, by task_name
    "llmrouter/math": ("math",),
    "llmrouter/gsm8k": ("math",),
    "llmrouter/agentverse-mgsm": ("math",),
    "llmrouter/mbpp": ("code",),
    "llmrouter/human_eval": ("code",),
    "llmrouter/mmlu": (*NO_OPTIONS, "math"),  # MMLU's subjects include its maths
    "llmrouter/gpqa": (*NO_OPTIONS, "math"),  # as do GPQA's physics and chemistry
    "llmrouter/commonsense_qa": NO_OPTIONS,
    "llmrouter/openbook_qa": NO_OPTIONS,
    "llmrouter/arc_challenge": NO_OPTIONS,
    "llmrouter/agentverse-logicgrid": ("reasoning",),
    "llmrouter/natural_qa": ("knowledge",),
    "llmrouter/trivia_qa": ("knowledge",),
    "llmrouter/commongen": ("writing",),
    # MMLU-Pro, by category
    "mmlu_pro/math": ("math",),
    "mmlu_pro/physics": MC_COMPUTING,
    "mmlu_pro/chemistry": MC_COMPUTING,
    "mmlu_pro/engineering": MC_COMPUTING,
    "mmlu_pro/business": MC_COMPUTING,
    "mmlu_pro/economics": MC_COMPUTING,
    "mmlu_pro/computer science": ("reasoning", "code"),
    "mmlu_pro/history": ("reasoning",),
    "mmlu_pro/law": ("reasoning",),
    "mmlu_pro/psychology": ("reasoning",),
    "mmlu_pro/philosophy": ("reasoning",),
    "mmlu_pro/health": ("reasoning",),
    "mmlu_pro/biology": ("reasoning",),
    "mmlu_pro/other": ("reasoning",),
    # ZeroEval, by task
    "zeroeval/gsm": ("math",),
    "zeroeval/math-l5": ("math",),
    "zeroeval/crux": ("code",),
}


def labelled() -> Iterator[tuple[str, str]]:
    """(source, prompt text) of every labelled prompt, LLMRouter's test queries that
    also occur in train once."""
    seen: set[str] = set()
    for name in ("default_query_train.jsonl", "default_query_test.jsonl"):
        for line in (DATA_DIR / name).read_text(encoding="utf-8").split("\n"):
            if not line:
                continue
            row = json.loads(line)
            if row["query"] not in seen:
                seen.add(row["query"])
                yield f"llmrouter/{row['task_name']}", str(row["query"])
    for row in outcome_files.rows(MMLU_PRO_FILE):
        yield f"mmlu_pro/{row['category']}", prompt_text(row)
    for row in outcome_files.rows(ZEROEVAL_FILE):
        yield f"zeroeval/{row['task']}", str(row["question"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.kind_accuracy")
    parser.add_argument("--examples", type=int, default=0)
    args = parser.parse_args(argv)
    counts: dict[str, Counter[str]] = {}
    wrong: dict[str, list[tuple[str, str]]] = {}
    for source, text in labelled():
        kind = kind_of(prompt_request(text))
        counts.setdefault(source, Counter())[kind] += 1
        if kind not in EXPECTED[source] and len(wrong.setdefault(source, [])) < args.examples:
            wrong[source].append((kind, text))
    width = max(len(s) for s in counts)
    rights = max(len(",".join(kinds)) for kinds in EXPECTED.values())
    head = f"{'source':<{width}} {'right':<{rights}} {'n':>6} "
    print(head + " ".join(f"{k:>9}" for k in KINDS) + "  accuracy")
    totals: dict[str, list[int]] = {}
    for source in sorted(counts):
        row = counts[source]
        n = sum(row.values())
        right = sum(row[k] for k in EXPECTED[source])
        dataset = source.split("/")[0]
        total = totals.setdefault(dataset, [0, 0])
        total[0] += right
        total[1] += n
        cells = " ".join(f"{row[k]:>9}" for k in KINDS)
        kinds = ",".join(EXPECTED[source])
        print(f"{source:<{width}} {kinds:<{rights}} {n:>6} {cells}  {right / n:.3f}")
    print()
    for dataset, (right, n) in totals.items():
        print(f"accuracy {dataset}: {right / n:.3f} ({right}/{n})")
    right = sum(r for r, _ in totals.values())
    n = sum(n for _, n in totals.values())
    print(f"accuracy, all: {right / n:.3f} ({right}/{n})")
    for source, examples in sorted(wrong.items()):
        for kind, text in examples:
            print(f"\n--- {source} as {kind}:\n{text[:600]}")


if __name__ == "__main__":
    main()

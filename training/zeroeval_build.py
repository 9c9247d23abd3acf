"""Builds `data/zeroeval/outcomes.jsonl.gz` from WildEval/ZeroEval's committed outputs.

ZeroEval (github.com/yuchenlin/ZeroEval, Apache-2.0) commits, under `result_dirs/<task>/`,
one JSON file per model: every test item of the task with the model's greedy, zero-shot
output, which its prompt asks to end in a JSON object `{"reasoning": ..., "answer": ...}`.
Three tasks are used here, those whose files the snapshot holds for many open models:

- `gsm`: GSM8K test (1,319 grade-school math word problems), answer a number;
- `math-l5`: the level-5 problems of MATH's test set (721), answer a number or expression;
- `crux`: CRUXEval-O (800 short Python functions with an input; predict the output).

Each output is graded here the way ZeroEval's `src/evaluation/{math,crux}_eval.py`
grade it (reimplemented, not copied), so the per-model accuracies match its committed
`result_dirs/<task>.summary.json`; `check` compares them:

- the answer is the `answer` of the first complete `{...}` in the output that parses as
  JSON (newlines removed); failing that, the first `"answer": "..."` (or unquoted
  `answer: x`) the output holds; failing that, for Llama 3.1 runs, `\\boxed{x}` when the
  output ends with one; none of these is a wrong answer ("no answer");
- math (gsm, math-l5): `$` and `,` removed, a fraction `a/b` turned into its decimal,
  then the first number of the model's answer must equal the first number of the gold
  answer (a crude rule: MATH answers that are not numbers are compared by their first
  number only; this is ZeroEval's published metric);
- crux: the answer string, quotes stripped at both ends and newlines escaped, must equal
  the gold output string exactly.

Run against a local snapshot (the `fetch` tool's mirror, a bare git directory):

    python -m training.zeroeval_build /work/.mirror/yuchenlin+ZeroEval/repo

Output, one JSON line per item, in task then item order:
`{"task", "id", "question", "answer", "correct": {run: 0|1}}`, where a run is ZeroEval's
model name (`RUN_NAMES`); a run whose file for that task is absent from the snapshot, or that
ZeroEval never ran on it, is absent from `correct`.
"""

from __future__ import annotations

import ast
import json
import operator
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training import outcome_files

OUT = Path(__file__).resolve().parent.parent / "data" / "zeroeval" / "outcomes.jsonl.gz"
TASKS = ("gsm", "math-l5", "crux")

# Open-weight runs with an Ollama tag, by the name ZeroEval's summaries give them. A
# run's file in a task's folder has the same name unless `FILES` says otherwise
# (several runs were served by providers, named `@provider`; one serving is kept).
RUN_NAMES: tuple[str, ...] = (
    "Meta-Llama-3-8B-Instruct",
    "Meta-Llama-3-70B-Instruct",
    "Meta-Llama-3.1-8B-Instruct",
    "Meta-Llama-3.1-70B-Instruct",
    "Llama-3.1-405B-Inst@hyperbolic",
    "Mistral-Large-2",
    "Mistral-Nemo-Instruct-2407",
    "Mixtral-8x7B-Instruct-v0.1",
    "Phi-3-mini-4k-instruct",
    "Phi-3.5-mini-instruct",
    "Qwen2-7B-Instruct",
    "Qwen2-72B-Instruct",
    "Qwen2.5-3B-Instruct",
    "Qwen2.5-7B-Instruct",
    "Qwen2.5-32B-Instruct",
    "Qwen2.5-72B-Instruct",
    "Yi-1.5-9B-Chat",
    "Yi-1.5-34B-Chat",
    "gemma-2-2b-it",
    "gemma-2-9b-it",
    "gemma-2-27b-it",
    "deepseek-v2.5-0908",
    "command-r",
    "command-r-plus",
)
FILES: dict[tuple[str, str], str] = {
    **{
        (task, "Llama-3.1-405B-Inst@hyperbolic"): "Meta-Llama-3.1-405B-Instruct@hyperbolic"
        for task in TASKS
    },
    ("gsm", "gemma-2-27b-it"): "gemma-2-27b-it@together",
}


def present(repo: Path, task: str) -> dict[str, str]:
    """File stem -> blob id, for the files of a task's folder the snapshot holds."""
    found: dict[str, str] = {}
    listing = outcome_files.git(repo, "ls-tree", "-l", "HEAD", f"result_dirs/{task}/").decode()
    for line in listing.splitlines():
        meta, _, path = line.partition("\t")
        _mode, kind, blob, size = meta.split()
        if kind == "blob" and path.endswith(".json") and size.isdigit():
            found[Path(path).stem] = blob
    return found


def file_of(task: str, run: str) -> str:
    return FILES.get((task, run), run)


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first complete top-level `{...}`, parsed with newlines removed; None when
    that one does not parse (later objects are not tried)."""
    depth = 0
    start = -1
    for i, char in enumerate(text):
        if char == "{":
            if depth == 0:
                start = i
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                try:
                    value = json.loads(text[start : i + 1].replace("\n", ""))
                except json.JSONDecodeError:
                    return None
                return value if isinstance(value, dict) else None
    return None


def answer_field(text: str) -> str | None:
    """An `answer` written in the output, quoted or not, when it is no parseable JSON."""
    for pattern, flags in (
        (r'"answer"\s*:\s*"([^"]*?)"', 0),
        (r'"answer"\s*:\s*"(.*?)"', re.DOTALL),
        (r'"answer"\s*:\s*([^,\s]*)', 0),
        (r"answer\s*:\s*([^,\s]*)", 0),
    ):
        match = re.search(pattern, text, flags)
        if match:
            return match.group(1)
    return None


def extract(run: str, text: str) -> str | None:
    parsed = first_json_object(text)
    if parsed is not None and "answer" in parsed:
        return str(parsed["answer"])
    found = answer_field(text)
    if found is not None:
        return found
    if "Llama-3.1" in run and "boxed" in text[-30:]:
        boxed = re.search(r"\\boxed{([\w\d]+)}", text)
        if boxed:
            return boxed.group(1)
    return None


_OPS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _arith(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _arith(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_arith(node.left), _arith(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_arith(node.operand)))
    raise ValueError("not arithmetic")


def sanitize_math(answer: str) -> str:
    answer = answer.replace("$", "").strip().replace(",", "")
    if "/" in answer:
        try:
            return str(_arith(ast.parse(answer, mode="eval")))
        except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
            pass
    return answer


_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def math_correct(answer: str | None, gold: str) -> bool:
    if answer is None:
        return False
    mine = _NUMBER.search(sanitize_math(answer))
    theirs = _NUMBER.search(sanitize_math(gold.replace("#", "").strip()))
    return bool(mine and theirs and float(mine.group()) == float(theirs.group()))


def crux_correct(answer: str | None, gold: str, as_summarised: bool = False) -> bool:
    """ZeroEval's rule; `as_summarised`: the rule before its two fixes of 2024-09-22
    (newlines escaped, an empty output predicted as empty is right), by which its
    committed `crux.summary.json` was computed."""
    if answer is None:
        return False
    gold = str(gold).strip("'\"")
    if as_summarised:
        mine = answer.strip("'\"")
        return bool(mine and gold and mine == gold)
    return answer.strip("'\"").replace("\n", "\\n") == gold


def grade(task: str, run: str, item: dict[str, Any], as_summarised: bool = False) -> bool:
    output = item["output"]
    answer = extract(run, output[0] if output else "")
    if task == "crux":
        return crux_correct(answer, item["answer"], as_summarised)
    return math_correct(answer, str(item["answer"]))


def question_of(task: str, item: dict[str, Any]) -> str:
    return str(item["problem"] if task == "math-l5" else item["question"])


def build(repo: Path, out: Path = OUT) -> dict[str, dict[str, tuple[float, float]]]:
    """Writes `out`; returns each task's accuracy per run as graded here, and as graded
    by the rule ZeroEval's committed summary was computed with."""
    items: dict[tuple[str, str], dict[str, Any]] = {}
    order: list[tuple[str, str]] = []
    accuracy: dict[str, dict[str, tuple[float, float]]] = {}
    for task in TASKS:
        files = present(repo, task)
        accuracy[task] = {}
        for run in RUN_NAMES:
            blob = files.get(file_of(task, run))
            if blob is None:
                print(f"{task}: no file for {run}", file=sys.stderr)
                continue
            rows: list[dict[str, Any]] = json.loads(
                outcome_files.git(repo, "cat-file", "blob", blob)
            )
            right = summarised = 0
            for item in rows:
                key = (task, str(item["id"]))
                if key not in items:
                    items[key] = {
                        "task": task,
                        "id": str(item["id"]),
                        "question": question_of(task, item),
                        "answer": str(item["answer"]),
                        "correct": {},
                    }
                    order.append(key)
                ok = grade(task, run, item)
                right += ok
                summarised += grade(task, run, item, as_summarised=True)
                items[key]["correct"][run] = int(ok)
            accuracy[task][run] = (right / len(rows), summarised / len(rows))
    outcome_files.write_rows(out, (items[key] for key in order))
    return accuracy


def published(repo: Path, task: str) -> dict[str, float]:
    """ZeroEval's own accuracy per model name, from its committed summary."""
    rows = json.loads(outcome_files.git(repo, "show", f"HEAD:result_dirs/{task}.summary.json"))
    return {r["Model"]: float(r["Acc"]) / 100 for r in rows if r["Mode"] == "greedy"}


def check(repo: Path, accuracy: dict[str, dict[str, tuple[float, float]]]) -> int:
    """Prints ours against ZeroEval's summaries per task and run (the summary rounds to
    0.01%); returns how many differ."""
    differ = 0
    for task, runs in accuracy.items():
        theirs = published(repo, task)
        for run, (ours, summarised) in runs.items():
            pub = theirs.get(run)
            mark = "" if pub is not None and abs(pub - summarised) <= 0.0001 else "  <- differs"
            differ += bool(mark)
            shown = "n/a" if pub is None else f"{pub:.4f}"
            print(
                f"{task:8} {run:32} ours {ours:.4f}  by the summary's rule "
                f"{summarised:.4f}  ZeroEval {shown}{mark}"
            )
    return differ


if __name__ == "__main__":
    mirror = Path(sys.argv[1])
    print(check(mirror, build(mirror)), "runs differ from ZeroEval's summaries")

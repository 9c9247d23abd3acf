"""Builds `data/mmlu_pro/outcomes.jsonl.gz` from TIGER-AI-Lab/MMLU-Pro's per-question outputs.

The repository (Apache-2.0) commits, under `eval_results/`, one zip per model holding
`model_outputs_<model>_5shots.json`: the 12,032 test questions with the model's
extracted answer (`pred`) next to the gold letter (`answer`). Some zips are absent from
the snapshot (git-lfs or oversized blobs); they are skipped and listed.

Run against a local snapshot (the `fetch` tool's mirror, a bare git directory):

    python -m training.mmlu_pro_build /work/.mirror/TIGER-AI-Lab+MMLU-Pro/repo

Output, one JSON line per question, sorted by question id:
`{"id", "category", "src", "question", "options", "answer", "pred": {model: letter|null}}`:
each model's extracted answer letter, null when MMLU-Pro's extraction found none (its
own accuracy script then credits a random guess). A model that has no row for a
question (DeepSeek-Coder-V2 and the Gemini runs cover part of the set) is absent from
that question's `pred`; rows that are not objects (a few stray strings) are skipped.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

from training import outcome_files

OUT = Path(__file__).resolve().parent.parent / "data" / "mmlu_pro" / "outcomes.jsonl.gz"
PREFIX = "eval_results/model_outputs_"
SUFFIX = "_5shots.zip"


def zips(repo: Path) -> dict[str, str]:
    """Model name -> blob id of its outputs zip, for the blobs the snapshot holds."""
    found: dict[str, str] = {}
    listing = outcome_files.git(repo, "ls-tree", "-r", "-l", "HEAD", "eval_results/").decode()
    for line in listing.splitlines():
        meta, _, path = line.partition("\t")
        _mode, _kind, blob, size = meta.split()
        if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
            continue
        model = path[len(PREFIX) : -len(SUFFIX)]
        if size.isdigit():
            found[model] = blob
        else:
            print(f"absent from the snapshot: {path}", file=sys.stderr)
    return found


def outputs(repo: Path, blob: str) -> list[Any]:
    with zipfile.ZipFile(io.BytesIO(outcome_files.git(repo, "cat-file", "blob", blob))) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".json")]
        rows: list[Any] = json.loads(archive.read(name))
    return rows


def build(repo: Path, out: Path = OUT) -> int:
    questions: dict[int, dict[str, Any]] = {}
    for model, blob in sorted(zips(repo).items()):
        rows = outputs(repo, blob)
        for row in rows:
            if not isinstance(row, dict):
                continue
            qid = int(row["question_id"])
            entry = questions.setdefault(
                qid,
                {
                    "id": qid,
                    "category": row["category"],
                    "src": row["src"],
                    "question": row["question"],
                    "options": row["options"],
                    "answer": row["answer"],
                    "pred": {},
                },
            )
            pred = row.get("pred")
            entry["pred"][model] = pred if isinstance(pred, str) else None
        print(f"{model}: {len(rows)} questions", file=sys.stderr)
    outcome_files.write_rows(out, (questions[qid] for qid in sorted(questions)))
    return len(questions)


if __name__ == "__main__":
    print(build(Path(sys.argv[1])), "questions")

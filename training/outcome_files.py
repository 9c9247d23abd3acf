"""What the builders and loaders of other datasets' per-prompt outcomes share
(`training.mmlu_pro_*`, `training.zeroeval_*`, `training.reasoning_gym_*`): reading the
source's snapshot (the `fetch` tool's mirror, a bare git directory), their gzipped
JSON-lines files, the rows a fleet can be replayed on, and a seeded draw of the prompts
a replay uses."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from training.data import Prompt


def git(repo: Path, *args: str) -> bytes:
    """The output of a git command run on the bare git directory `repo`."""
    return subprocess.run(
        ["git", f"--git-dir={repo}", *args], check=True, capture_output=True
    ).stdout


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Writes `rows` to a gzipped JSON-lines file, one object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a gzipped JSON-lines file, one object per line."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row: dict[str, Any] = json.loads(line)
            yield row


def scored(
    path: Path, names: Sequence[str], group_key: str, scores_key: str, groups: Collection[str]
) -> Iterator[tuple[dict[str, Any], dict[str, float]]]:
    """The rows of `groups` (a row's group is its `group_key`) that score every one of
    `names` (in the row's `scores_key` map), each with those scores."""
    for row in rows(path):
        scores: dict[str, Any] = row[scores_key]
        if row[group_key] in groups and all(n in scores for n in names):
            yield row, {n: float(scores[n]) for n in names}


def groups_scored(
    path: Path, names: Sequence[str], group_key: str, scores_key: str, order: Sequence[str]
) -> list[str]:
    """The groups of `order` with at least one row that scores every one of `names`."""
    found = {str(row[group_key]) for row, _ in scored(path, names, group_key, scores_key, order)}
    return [g for g in order if g in found]


def prompts(
    path: Path,
    names: Sequence[str],
    group_key: str,
    scores_key: str,
    groups: Collection[str],
    limit: int | None,
    seed: int,
    label_key: str = "",
) -> list[Prompt]:
    """The questions of the rows `scored` gives, each with its scores and its
    `label_key` as its label; `limit` of them `drawn` with `seed` when given, in file
    order."""
    found = [
        Prompt(str(row["question"]), scores, str(row[label_key]) if label_key else "")
        for row, scores in scored(path, names, group_key, scores_key, groups)
    ]
    return drawn(found, limit, seed)


def drawn(prompts: list[Prompt], limit: int | None, seed: int) -> list[Prompt]:
    """`limit` of `prompts` drawn with `seed`, in their order; all of them without a
    limit or when there are no more."""
    if limit is None or limit >= len(prompts):
        return prompts
    keep = sorted(random.Random(seed).sample(range(len(prompts)), limit))
    return [prompts[i] for i in keep]

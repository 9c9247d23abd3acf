"""What the builders and loaders of other datasets' per-prompt outcomes share
(`training.mmlu_pro_*`, `training.zeroeval_*`): reading the
source's snapshot (the `fetch` tool's mirror, a bare git directory), their gzipped
JSON-lines files, and a seeded draw of the prompts a replay uses."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
from collections.abc import Iterable, Iterator
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


def drawn(prompts: list[Prompt], limit: int | None, seed: int) -> list[Prompt]:
    """`limit` of `prompts` drawn with `seed`, in their order; all of them without a
    limit or when there are no more."""
    if limit is None or limit >= len(prompts):
        return prompts
    keep = sorted(random.Random(seed).sample(range(len(prompts)), limit))
    return [prompts[i] for i in keep]

"""What the loaders of other datasets' per-prompt outcomes share (`training.mmlu_pro_data`,
`training.zeroeval_data`): their gzipped JSON-lines files, and a seeded draw of the
prompts a replay uses."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.data import Prompt


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

"""Training data: the bundled LLMRouter scores and the proxy's own usage events.

Both sources become `Example`s, each one (request, candidate model) pair with a label
in [0, 1] and a weight, whose features come from `selector_model.features` only.

LLMRouter: each prompt's score per model is the label; test prompts whose text also
occurs in train are dropped.

Usage events (`selector_model.usage_event`, read from the proxy's usage file with
the ratings beside it, from an exported file or from PostgreSQL): the request's
feature vector as the proxy computed it, the model that answered as the selector saw
it, and as label the event's outcome by the one definition of success
(`selector_model.outcome`: a rating wins, else error, cancellation, the same prompt
sent again soon, truncation, or a completed answer as a weak success), weighted by
1/propensity when the decision recorded one (exploration). Events recorded under
another feature schema, malformed ones, duplicates (delivery is at least once),
requests no model answered (a 4xx) and answers that are no evidence of the model
chosen (a replay, a cloud provider's: `outcome.no_evidence`) are skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from proxy.usage.export import file_events
from selector_model import features, outcome
from selector_model.usage_event import UsageEvent
from training.models import BY_DATASET_NAME, ModelSpec

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "llmrouter"
DATASET_FILES = ("train.json", "test.json", "default_llm.json")


def normalize(text: str) -> str:
    """Prompt text compared for leaks: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def prompt_request(text: str) -> list[float]:
    """A dataset prompt as the proxy would see it: one user message on /api/chat."""
    return features.request_features("/api/chat", {"messages": [{"role": "user", "content": text}]})


@dataclass(frozen=True)
class Prompt:
    """One LLMRouter prompt and each model's score on it (by LLMRouter name)."""

    text: str
    scores: dict[str, float]
    # The dataset's own task or category of the prompt where it has one (ZeroEval's
    # task, MMLU-Pro's category, Reasoning Gym's category), which a profiled replay
    # maps to a capability area (`training.profiled_replay.measured_areas`).
    label: str = ""


@dataclass(frozen=True)
class Dataset:
    train: list[Prompt]
    test: list[Prompt]
    dropped_test: int
    models: tuple[ModelSpec, ...]
    hashes: dict[str, str]


@dataclass(frozen=True)
class Example:
    """One training or evaluation row: a request and a candidate, with its label."""

    group: str
    request: list[float] = field(repr=False)
    candidate: features.Candidate
    label: float
    weight: float = 1.0


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prompts(path: Path) -> list[Prompt]:
    raw = json.loads(path.read_text())
    return [
        Prompt(text=r["question"], scores={k: float(v) for k, v in r["scores"].items()})
        for r in raw
    ]


def load_llmrouter(data_dir: Path = DATA_DIR) -> Dataset:
    """Train and test prompts; test prompts whose normalized text occurs in train are
    dropped (119 of 500 in the shipped data)."""
    train = _prompts(data_dir / "train.json")
    test = _prompts(data_dir / "test.json")
    seen = {normalize(p.text) for p in train}
    kept = [p for p in test if normalize(p.text) not in seen]
    names = sorted(set(train[0].scores))
    unknown = [n for n in names if n not in BY_DATASET_NAME]
    if unknown:
        raise ValueError(f"models without an entry in training.models: {unknown}")
    models = tuple(BY_DATASET_NAME[n] for n in names)
    hashes = {name: sha256(data_dir / name) for name in DATASET_FILES}
    return Dataset(train, kept, len(test) - len(kept), models, hashes)


def prompt_group(text: str) -> str:
    return hashlib.sha1(normalize(text).encode()).hexdigest()[:16]


def dataset_examples(
    prompts: Sequence[Prompt],
    models: Sequence[ModelSpec],
    uniform_weight: float = 1.0,
) -> list[Example]:
    """One example per (prompt, model). Prompts on which every model scored the same
    say nothing about which model to pick; `uniform_weight` (< 1) down-weights them."""
    out: list[Example] = []
    for prompt in prompts:
        request = prompt_request(prompt.text)
        group = prompt_group(prompt.text)
        values = [prompt.scores[m.dataset_name] for m in models]
        weight = uniform_weight if max(values) == min(values) else 1.0
        for spec, value in zip(models, values, strict=True):
            out.append(Example(group, request, spec.candidate(), value, weight))
    return out


def score_matrix(prompts: Sequence[Prompt], models: Sequence[ModelSpec]) -> npt.NDArray[np.float64]:
    """[prompts, models] scores."""
    return np.array([[p.scores[m.dataset_name] for m in models] for p in prompts], dtype=np.float64)


# ---------------------------------------------------------------- usage events


@dataclass
class UsageStats:
    read: int = 0
    used: int = 0
    skipped_schema: int = 0
    skipped_malformed: int = 0
    # Delivery is at least once (spool replays, Kafka retries): a request id seen
    # before is the same event again.
    skipped_duplicate: int = 0
    # Requests no model answered (a 4xx), or whose answer is no evidence of the model
    # chosen (`outcome.no_evidence`: a replay, a cloud provider's): no outcome to learn
    # from.
    skipped_unanswered: int = 0


def usage_weight(event: UsageEvent) -> float:
    propensity = (event.decision or {}).get("propensity")
    if isinstance(propensity, int | float) and propensity > 0 and math.isfinite(propensity):
        return 1.0 / float(propensity)
    return 1.0


def usage_example(event: UsageEvent, result: outcome.Result) -> Example:
    """One event as an example; raises KeyError/TypeError/ValueError when malformed."""
    if event.features is None or event.candidate is None:
        raise ValueError("the event has no request features or no candidate")
    request = event.features.request
    if len(request) != len(features.REQUEST_FEATURES):
        raise ValueError("request vector length differs from REQUEST_FEATURES")
    # Group by the request vector: the same prompt asked twice never straddles a split.
    group = hashlib.sha1(np.asarray(request, dtype=np.float32).tobytes()).hexdigest()[:16]
    return Example(
        group,
        request,
        features.Candidate.from_record(event.candidate),
        result.value,
        result.weight * usage_weight(event),
    )


def load_usage(paths: Iterable[Path]) -> tuple[list[Example], UsageStats]:
    """Examples from usage JSON Lines files: the proxy's usage file, read as every
    reader of it reads it (`proxy.usage.export.file_events`: its rotated files too, and
    each request's rating from the feedback file beside it), or an exported file (the
    ratings in its lines)."""
    paths = list(paths)
    for path in paths:
        # The proxy's readers take a usage file not yet written as no events; a file
        # named for training that is not there is a wrong name.
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such usage file")
    return usage_examples(e for path in paths for e in file_events(path))


def usage_examples(events: Iterable[UsageEvent | None]) -> tuple[list[Example], UsageStats]:
    """Examples from usage events, wherever they were stored (files, PostgreSQL); None
    stands for an event that could not be read."""
    stats = UsageStats()
    out: list[Example] = []
    seen: set[str] = set()
    listed = list(events)
    # `outcome` grades the events' JSON objects. The retry signal is read across all
    # events (a later event says an earlier failed).
    documents = [e.document() if e is not None else None for e in listed]
    retried = outcome.retried_ids(d for d in documents if d is not None)
    for event, document in zip(listed, documents, strict=True):
        stats.read += 1
        if event is None or document is None:
            stats.skipped_malformed += 1
            continue
        request_id = event.request_id
        if request_id and request_id in seen:
            stats.skipped_duplicate += 1
            continue
        if event.features is None:
            stats.skipped_malformed += 1
            continue
        if event.features.schema_version != features.SCHEMA_VERSION:
            stats.skipped_schema += 1
            continue
        result = (
            None
            if outcome.no_evidence(document)
            else outcome.of_event(document, request_id in retried)
        )
        if result is None:
            stats.skipped_unanswered += 1
            continue
        try:
            out.append(usage_example(event, result))
        except (KeyError, TypeError, ValueError, AttributeError):
            stats.skipped_malformed += 1
            continue
        if request_id:
            seen.add(request_id)
        stats.used += 1
    return out, stats


# ---------------------------------------------------------------- matrices and splits


@dataclass(frozen=True)
class Matrix:
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]
    w: npt.NDArray[np.float32]
    groups: list[str]
    names: list[str]

    def rows(self, idx: npt.NDArray[np.int64]) -> Matrix:
        """The rows at `idx`, in that order."""
        return Matrix(
            self.x[idx],
            self.y[idx],
            self.w[idx],
            [self.groups[i] for i in idx],
            [self.names[i] for i in idx],
        )


def matrix(examples: Sequence[Example]) -> Matrix:
    """Rows in `features.feature_names()` order."""
    width = len(features.feature_names())
    x = np.empty((len(examples), width), dtype=np.float32)
    for i, ex in enumerate(examples):
        x[i] = features.rows(ex.request, [ex.candidate])[0]
    return Matrix(
        x=x,
        y=np.array([ex.label for ex in examples], dtype=np.float32),
        w=np.array([ex.weight for ex in examples], dtype=np.float32),
        groups=[ex.group for ex in examples],
        names=[ex.candidate.name for ex in examples],
    )


def grouped_split(
    groups: Sequence[str], val_fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Row indices (train, validation): every group lies wholly on one side."""
    unique = sorted(set(groups))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    n_val = max(1, round(len(unique) * val_fraction)) if len(unique) > 1 else 0
    val_groups = {unique[i] for i in order[:n_val]}
    is_val = np.array([g in val_groups for g in groups], dtype=bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)

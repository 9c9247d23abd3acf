"""Train → export → parity → evaluate → artifact and report, as one call each."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from proxy.usage.export import usage_files
from selector_model import artifact, features, onnx_session
from selector_model.usage_event import UsageEvent
from training import (
    evaluate,
    export,
    mmlu_pro_data,
    outcome_files,
    report,
    zeroeval_data,
    zeroeval_replay,
)
from training.data import (
    DATA_DIR,
    Dataset,
    Example,
    Prompt,
    UsageStats,
    dataset_examples,
    load_llmrouter,
    load_usage,
    normalize,
    sha256,
    usage_examples,
)
from training.models import BY_OLLAMA_NAME, ModelSpec
from training.train import Progress, TrainConfig, train

POLICY = evaluate.Policy(unseen_margin=0.0)
Bars = Callable[[str], Progress | None]


class SchemaError(RuntimeError):
    """The artifact was built on a feature schema this code does not compute."""


@dataclass(frozen=True)
class Source:
    # "dataset" (LLMRouter's), the name of an `OUTCOME_SETS` entry, "usage" (the
    # proxy's usage file or an exported one, `training.data.load_usage`) or "postgres"
    kind: str
    path: Path | None = None
    dsn: str = ""
    # Of an `OUTCOME_SETS` entry: how many of its prompts (drawn with the training
    # seed); None: all.
    limit: int | None = None


@dataclass(frozen=True)
class OutcomeSet:
    """Another dataset's per-prompt outcomes that training can add to LLMRouter's: its
    file, the models it scores (as its replay maps them to Ollama tags, so a row's
    candidate is built as serving builds it) and its prompts."""

    path: Path
    models: tuple[ModelSpec, ...]
    load: Callable[[], list[Prompt]]


OUTCOME_SETS: dict[str, OutcomeSet] = {
    "mmlu-pro": OutcomeSet(
        mmlu_pro_data.DATA_FILE, mmlu_pro_data.MODELS, lambda: mmlu_pro_data.load_prompts()
    ),
    # The 15 open models ZeroEval ran on all three of its tasks.
    "zeroeval": OutcomeSet(
        zeroeval_data.DATA_FILE,
        tuple(zeroeval_data.fleet(zeroeval_replay.OPEN)),
        lambda: zeroeval_data.load_prompts(zeroeval_data.fleet(zeroeval_replay.OPEN)),
    ),
}


def parse_source(text: str) -> Source:
    """`dataset`, `NAME` or `NAME:LIMIT` of `OUTCOME_SETS`, a DSN or a usage file."""
    name, _, limit = text.partition(":")
    if text == "dataset" or text in OUTCOME_SETS:
        return Source(text)
    if name in OUTCOME_SETS:
        if not limit.isdigit() or int(limit) < 1:
            raise ValueError(f"{text}: {name}:N takes a number of prompts, at least 1")
        return Source(name, limit=int(limit))
    if text.startswith(("postgres://", "postgresql://")):
        return Source("postgres", dsn=text)
    if "://" in text:
        named = ", ".join(f"'{n}[:N]'" for n in OUTCOME_SETS)
        raise ValueError(f"{text}: use 'dataset', {named}, a usage JSON Lines file or postgres://…")
    return Source("usage", Path(text))


def outcome_examples(
    source: Source,
    uniform_weight: float,
    test: Sequence[Prompt],
    seed: int,
    without: Collection[str] = (),
) -> tuple[list[Example], list[ModelSpec], int]:
    """The rows (`dataset_examples`) of `source`, an `OUTCOME_SETS` entry, for its
    models but those named in `without` (Ollama names, the models a held-out
    evaluation keeps unseen), the models used, and how many prompts
    (`outcome_prompts`)."""
    prompts = outcome_prompts(source, test, seed)
    models = _models_but(source, without)
    return dataset_examples(prompts, models, uniform_weight), models, len(prompts)


def outcome_prompts(source: Source, test: Sequence[Prompt], seed: int) -> list[Prompt]:
    """The prompts of `source`, an `OUTCOME_SETS` entry, trained on: a prompt that holds
    the text of one of `test` (LLMRouter's test split: MMLU-Pro rewrites MMLU questions
    LLMRouter also asks) is left out, so the test split stays unseen; then
    `source.limit` of them are drawn with `seed`."""
    held = [normalize(p.text) for p in test]
    kept = [p for p in OUTCOME_SETS[source.kind].load() if not _holds_any(normalize(p.text), held)]
    return outcome_files.drawn(kept, source.limit, seed)


def rows_without(
    sources: Sequence[Source], uniform_weight: float, test: Sequence[Prompt], seed: int
) -> Callable[[Collection[str]], list[Example]]:
    """The rows of `sources` (`OUTCOME_SETS` entries) without the models a held-out
    evaluation names (`outcome_examples`' `without`): what each of its folds trains on
    beside LLMRouter's kept models. The prompts are read, filtered and drawn once, not
    again for each fold: only the models differ between folds."""
    prompts = [(source, outcome_prompts(source, test, seed)) for source in sources]

    def rows(held: Collection[str]) -> list[Example]:
        out: list[Example] = []
        for source, drawn in prompts:
            out += dataset_examples(drawn, _models_but(source, held), uniform_weight)
        return out

    return rows


def _models_but(source: Source, without: Collection[str]) -> list[ModelSpec]:
    """The models of `source`, an `OUTCOME_SETS` entry, but those named in `without`."""
    return [m for m in OUTCOME_SETS[source.kind].models if m.ollama_name not in without]


def _holds_any(text: str, parts: Sequence[str]) -> bool:
    return any(part in text for part in parts)


def outcome_sources(meta: dict[str, Any]) -> list[Source]:
    """The `OUTCOME_SETS` entries an artifact's metadata says it was trained on."""
    return [
        Source(s["kind"], limit=s.get("limit"))
        for s in meta["training"]["sources"]
        if s["kind"] in OUTCOME_SETS
    ]


def postgres_events(dsn: str) -> list[UsageEvent]:
    """Every usage event the proxy wrote to PostgreSQL, with feedback ratings joined."""
    from proxy.usage.export import from_postgres

    return asyncio.run(from_postgres(dsn, datetime.fromtimestamp(0, UTC)))


def _subsample(data: Dataset, max_prompts: int | None, seed: int) -> Dataset:
    if max_prompts is None or max_prompts >= len(data.train):
        return data
    order = np.random.default_rng(seed).permutation(len(data.train))[:max_prompts]
    return replace(data, train=[data.train[i] for i in sorted(order)])


def _model_table(
    known: Sequence[str], usage: Sequence[Example], specs: dict[str, ModelSpec]
) -> list[dict[str, Any]]:
    """The artifact's models: each its `Candidate` record (`Candidate.from_record` reads
    a row back), with the dataset's name, the tag's quantization and the price of a
    model of the bundled data or of an `OUTCOME_SETS` entry (`specs`, by Ollama name;
    None for a model only usage events describe)."""
    by_name = {ex.candidate.name: ex.candidate for ex in usage}
    table = []
    for name in known:
        spec = specs.get(name)
        # Loaded is the state of one decision, not a property of the model.
        candidate = spec.candidate() if spec else replace(by_name[name], loaded=False)
        table.append(
            {
                **candidate.to_record(),
                "dataset_name": spec.dataset_name if spec else None,
                "quantization": spec.quantization if spec else None,
                "price_per_m": spec.price_per_m if spec else None,
            }
        )
    return table


def full_report(
    meta: dict[str, Any], evaluation: dict[str, Any], lomo: list[dict[str, Any]] | None
) -> dict[str, Any]:
    return {
        "artifact_version": meta["artifact_version"],
        "created": meta["created"],
        "trained_on": meta["trained_on"],
        "policy": meta["policy"],
        "targets": report.targets(evaluation, lomo),
        "evaluation": evaluation,
        "lomo": lomo,
        "definitions": list(evaluate.DEFINITIONS),
        "tried": list(report.TRIED),
        "training": meta["training"],
    }


def build(
    sources: Sequence[Source],
    out_dir: Path,
    report_dir: Path | None,
    report_name: str,
    config: TrainConfig,
    *,
    data_dir: Path = DATA_DIR,
    max_prompts: int | None = None,
    run_lomo: bool = True,
    bars: Bars | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Train an artifact into `out_dir`; returns its metadata (and writes a report)."""
    started = time.perf_counter()
    data = _subsample(load_llmrouter(data_dir), max_prompts, config.seed)
    examples: list[Example] = []
    usage: list[Example] = []
    hashes: dict[str, str] = {}
    source_meta: list[dict[str, Any]] = []
    known: list[str] = []
    specs: dict[str, ModelSpec] = dict(BY_OLLAMA_NAME)
    if any(s.kind == "dataset" for s in sources):
        examples += dataset_examples(data.train, data.models, config.uniform_weight)
        known += [m.ollama_name for m in data.models]
        hashes.update({f"llmrouter/{k}": v for k, v in data.hashes.items()})
        source_meta.append(
            {
                "kind": "dataset",
                "prompts": len(data.train),
                "rows": len(examples),
                "test_prompts": len(data.test),
                "dropped_test_prompts": data.dropped_test,
            }
        )
    outcomes = [s for s in dict.fromkeys(sources) if s.kind in OUTCOME_SETS]
    for source in outcomes:
        rows, models, prompts = outcome_examples(
            source, config.uniform_weight, data.test, config.seed
        )
        examples += rows
        known += [m.ollama_name for m in models if m.ollama_name not in known]
        # A model LLMRouter also scores keeps LLMRouter's details and price.
        specs = {m.ollama_name: m for m in models} | specs
        path = OUTCOME_SETS[source.kind].path
        hashes[f"{source.kind}/{path.name}"] = sha256(path)
        source_meta.append(
            {"kind": source.kind, "limit": source.limit, "prompts": prompts, "rows": len(rows)}
        )
    usage_paths = [s.path for s in sources if s.kind == "usage" and s.path is not None]
    if usage_paths:
        usage, stats = load_usage(usage_paths)
        examples += usage
        for path in usage_paths:
            for read in usage_files(path):
                hashes[f"usage/{read.name}"] = sha256(read)
        source_meta.append(
            {"kind": "usage", "files": [str(p) for p in usage_paths], **stats_dict(stats)}
        )
    for source in (s for s in sources if s.kind == "postgres"):
        events = postgres_events(source.dsn)
        from_db, stats = usage_examples(events)
        usage += from_db
        examples += from_db
        digest = hashlib.sha256(b"".join(e.line() + b"\n" for e in events))
        hashes[f"postgres/{urlsplit(source.dsn).path.lstrip('/')}"] = digest.hexdigest()
        source_meta.append({"kind": "postgres", **stats_dict(stats)})
    for used in source_meta:
        if used["kind"] in ("usage", "postgres"):
            log(
                f"usage events ({used['kind']}): {used['used']} used, "
                f"{used['skipped_schema']} other schema, "
                f"{used['skipped_malformed']} malformed, "
                f"{used['skipped_duplicate']} duplicates, "
                f"{used['skipped_unanswered']} unanswered"
            )
    if usage:
        for ex in usage:
            if ex.candidate.name not in known:
                known.append(ex.candidate.name)
    if not examples:
        raise ValueError("no training rows")
    if len({ex.label >= 0.5 for ex in examples}) < 2:
        # One outcome class teaches a classifier nothing (and XGBoost's intercept then
        # sits at the boundary of the logit, where the ONNX export cannot follow it).
        raise ValueError(
            f"all {len(examples)} training rows have the same outcome: a selector needs "
            "successes and failures (add --from dataset, or collect failures and ratings)"
        )

    log(f"training on {len(examples)} rows from {len(known)} models")
    bar = bars("training the selector") if bars else None
    result = train(examples, config, bar)
    n_features = len(features.feature_names())
    onnx_bytes = export.to_onnx(result.booster, n_features)
    diff = export.parity(onnx_bytes, result.booster, result.val.x)
    log(f"parity: max |onnx - xgboost| = {diff:.2e} on {len(result.val.y)} validation rows")

    sess = onnx_session.session(onnx_bytes)
    evaluation = evaluate.evaluate_scorer(lambda x: export.onnx_predict(sess, x), data, config.seed)
    # From the booster that chose the tree count: a refitted one has seen these rows.
    val_labels = (result.val.y >= 0.5).astype(np.float64)
    val_auc = evaluate.auc(result.val_p[:, None].astype(np.float64), val_labels[:, None])
    created = datetime.now(UTC).replace(microsecond=0)
    onnx_sha = hashlib.sha256(onnx_bytes).hexdigest()
    meta: dict[str, Any] = {
        "artifact_version": f"s{features.SCHEMA_VERSION}-{created:%Y%m%dT%H%M%SZ}-{onnx_sha[:12]}",
        "created": created.isoformat(),
        "schema_version": features.SCHEMA_VERSION,
        "onnx_file": export.ONNX_FILE,
        "onnx_sha256": onnx_sha,
        "opset": export.TARGET_OPSET,
        "input_name": export.INPUT_NAME,
        "input_shape": [None, n_features],
        "output_name": export.OUTPUT_NAME,
        "output_shape": [None, 2],
        "success_column": export.SUCCESS_COLUMN,
        "label_output_name": "label",
        "feature_names": features.feature_names(),
        # Models the artifact tells apart by name: none; it scores every candidate from
        # what is known of it. `trained_on` lists the models its rows came from.
        "known_models": [],
        "trained_on": known,
        "models": _model_table(known, usage, specs),
        "policy": POLICY.to_json(),
        "training": {
            "config": config.to_json(),
            "sources": source_meta,
            "max_prompts": max_prompts,
            "rows": result.rows,
            "trees": result.best_iteration + 1,
            "seconds": round(result.seconds, 3),
            "reproducibility_tolerance": 1e-6,
        },
        "training_data_hashes": hashes,
        "parity": {
            "max_abs_diff": diff,
            "tolerance": export.PARITY_TOLERANCE,
            "rows": len(result.val.y),
        },
        "metrics": {
            "validation": {"logloss": result.val_logloss, "auc": val_auc},
            "test": headline(evaluation),
        },
        "library_versions": export.library_versions(),
    }
    lomo = None
    if run_lomo and any(s.kind == "dataset" for s in sources):
        extra = rows_without(outcomes, config.uniform_weight, data.test, config.seed)
        lomo = evaluate.lomo(data, config, POLICY, bars, extra)
        meta["metrics"]["lomo"] = [
            {
                "held_out": f["held_out"],
                "quality": f["policy"]["quality"],
                "best_known_quality": f["best_known_quality"],
                "meets_target": f["policy"]["meets_target"],
            }
            for f in lomo
        ]
    meta["training"]["total_seconds"] = round(time.perf_counter() - started, 3)
    export.write_artifact(out_dir, onnx_bytes, meta)
    if report_dir is not None:
        paths = report.write(full_report(meta, evaluation, lomo), report_dir, report_name)
        log(f"report: {paths['md']}")
    return meta


def headline(evaluation: dict[str, Any]) -> dict[str, Any]:
    price = evaluation["price"]
    return {
        "prompts": evaluation["prompts"],
        "auc": evaluation["auc"],
        "best_single": price["best_single"],
        "quality_at_best_cost": price["quality_at_best_cost"],
        "match_cost_share": price["match_cost_share"],
        "apgr": price["apgr"],
        "gain_over_best": price["gain_over_best"],
        "gain_ci95": price["gain_ci95"],
        "router_lambda0": price["router_lambda0"],
    }


def stats_dict(stats: UsageStats) -> dict[str, int]:
    return {
        "events": stats.read,
        "used": stats.used,
        "skipped_schema": stats.skipped_schema,
        "skipped_malformed": stats.skipped_malformed,
        "skipped_duplicate": stats.skipped_duplicate,
        "skipped_unanswered": stats.skipped_unanswered,
    }


def evaluate_artifact(
    path: Path,
    report_dir: Path,
    report_name: str,
    *,
    data_dir: Path = DATA_DIR,
    run_lomo: bool = True,
    bars: Bars | None = None,
) -> dict[str, Any]:
    """Re-evaluate a written artifact with onnxruntime; LOMO retrains with its config."""
    onnx_bytes, meta = export.read_artifact(path)
    if meta.get("schema_version") != features.SCHEMA_VERSION:
        raise SchemaError(
            f"artifact schema {meta.get('schema_version')} != {features.SCHEMA_VERSION}"
        )
    if meta["feature_names"] != features.feature_names():
        raise SchemaError("artifact feature names differ from selector_model.features")
    sess = onnx_session.session(onnx_bytes)
    config = TrainConfig.from_json(meta["training"]["config"])
    data = _subsample(load_llmrouter(data_dir), meta["training"].get("max_prompts"), config.seed)
    # Its models as it learned them, whatever the catalogue says of them now.
    learned = artifact.learned({str(m["name"]): m for m in meta.get("models") or ()})
    evaluation = evaluate.evaluate_scorer(
        lambda x: export.onnx_predict(sess, x), data, config.seed, learned
    )
    policy = evaluate.Policy(unseen_margin=float(meta["policy"]["unseen_margin"]))
    extra = rows_without(outcome_sources(meta), config.uniform_weight, data.test, config.seed)
    lomo = evaluate.lomo(data, config, policy, bars, extra) if run_lomo else None
    out = full_report(meta, evaluation, lomo)
    report.write(out, report_dir, report_name)
    return out

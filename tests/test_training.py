"""The offline training pipeline on small slices: data, usage events, parity, artifact,
evaluation metrics and reproducibility. The full-size training is not run here."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from proxy.cli import main as autoroute
from proxy.config_selector import Profile, Selector
from proxy.usage.file_sink import FileSink
from proxy.usage.runner import Record
from selector_model import features, onnx_session, outcome, usage_event
from selector_model.kind import kind_of
from selector_model.onnx_session import ort
from training import cli, evaluate, export, mmlu_pro_data, pipeline, replay, zeroeval_replay
from training.data import (
    DATA_DIR,
    Dataset,
    Prompt,
    dataset_examples,
    grouped_split,
    load_llmrouter,
    load_usage,
    normalize,
    prompt_group,
    sha256,
)
from training.models import BY_DATASET_NAME, MODELS
from training.train import QUICK, TrainConfig, predict, train

SLICE = 300


@pytest.fixture(scope="module")
def data() -> Any:
    return load_llmrouter()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("pipeline")
    out, reports = root / "artifact", root / "reports"
    meta = pipeline.build(
        [pipeline.Source("dataset")], out, reports, "quick", QUICK, max_prompts=SLICE
    )
    return out, reports, meta


def _parse(add: Any, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


# ---------------------------------------------------------------- data


def test_model_table_covers_the_scored_models_with_their_prices() -> None:
    train_rows = json.loads((DATA_DIR / "train.json").read_text())
    scored = set(train_rows[0]["scores"])
    assert scored == set(BY_DATASET_NAME)
    assert len(MODELS) == 9
    prices = json.loads((DATA_DIR / "default_llm.json").read_text())
    for spec in MODELS:
        assert spec.price_per_m == prices[spec.dataset_name]["input_price"]
        assert spec.price_per_m == prices[spec.dataset_name]["output_price"]
        assert spec.family in features.FAMILIES
        assert spec.quant_bits == features.quant_bits_from(spec.quantization) == 4.0
        candidate = spec.candidate()
        assert candidate.name == spec.ollama_name and candidate.loaded is False
        # Built as serving builds it, with the catalogue's knowledge of the model.
        assert candidate.params_b == spec.params_b
        assert candidate.context_length == spec.context_length
        assert len(candidate.areas) == len(features.AREAS)
    assert len({m.ollama_name for m in MODELS}) == 9


def test_bundled_copy_carries_license_and_source() -> None:
    assert "MIT" in (DATA_DIR / "LICENSE").read_text()
    assert "LLMRouter" in (DATA_DIR / "SOURCE.txt").read_text()


def test_test_split_is_deduplicated_against_train(data: Any) -> None:
    assert data.dropped_test == 119
    assert len(data.test) == 381
    train_texts = {normalize(p.text) for p in data.train}
    assert not any(normalize(p.text) in train_texts for p in data.test)
    assert normalize("  Hello\n\tWORLD ") == normalize("hello world")


def test_grouped_split_never_splits_a_prompt(data: Any) -> None:
    examples = dataset_examples(data.train[:200], data.models)
    groups = [ex.group for ex in examples]
    tr, va = grouped_split(groups, 0.2, seed=3)
    assert len(tr) + len(va) == len(groups) and len(va) > 0
    assert not {groups[i] for i in tr} & {groups[i] for i in va}
    assert len(va) % len(data.models) == 0  # whole prompts: all 9 models of each


def test_uniform_prompts_are_down_weighted(data: Any) -> None:
    examples = dataset_examples(data.train[:100], data.models, uniform_weight=0.3)
    for start in range(0, len(examples), 9):
        group = examples[start : start + 9]
        labels = {ex.label for ex in group}
        assert {ex.weight for ex in group} == ({0.3} if len(labels) == 1 else {1.0})


# ---------------------------------------------------------------- usage events


def _event(
    text: str,
    model: str,
    params_b: float,
    *,
    status: int = 200,
    error: str | None = None,
    done_reason: str | None = "stop",
    rating: int | None = None,
    propensity: float | None = None,
    schema: int = features.SCHEMA_VERSION,
) -> dict[str, Any]:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    return {
        "request_id": f"r-{abs(hash((text, model))) % 10**9}",
        "endpoint": "/api/chat",
        "served_model": model,
        "features": {
            "schema_version": schema,
            "request": features.request_features("/api/chat", body),
        },
        "candidate": {
            "name": model,
            "family": features.family_of(model),
            "params_b": params_b,
            "quant_bits": 4.0,
            "context_length": 8192,
            "capabilities": [],
            "is_code": False,
            "is_instruct": True,
            "loaded": True,
        },
        "decision": {"propensity": propensity},
        "outcome": {"status": status, "error": error, "done_reason": done_reason},
        "rating": rating,
    }


def _write_jsonl(path: Path, events: list[dict[str, Any]], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + extra)
    return path


def test_usage_events_give_labels_weights_and_skips(tmp_path: Path) -> None:
    events = [
        _event("a", "llama3.1:8b", 8.0),
        _event("b", "llama3.1:8b", 8.0, done_reason="length", propensity=0.25),
        _event("c", "llama3.1:8b", 8.0, status=500),
        _event("d", "llama3.1:8b", 8.0, error="upstream closed"),
        _event("e", "llama3.1:8b", 8.0, done_reason=None),
        _event("f", "llama3.1:8b", 8.0, rating=-1),
        _event("g", "llama3.1:8b", 8.0, rating=1),
        _event("h", "llama3.1:8b", 8.0, schema=features.SCHEMA_VERSION + 1),
    ]
    # The first event delivered twice (at-least-once delivery) counts once.
    path = _write_jsonl(tmp_path / "usage.jsonl", [*events, events[0]], "not json\n\n")
    examples, stats = load_usage([path])
    assert (stats.read, stats.used, stats.skipped_schema, stats.skipped_malformed) == (10, 7, 1, 1)
    assert stats.skipped_duplicate == 1
    # By `selector_model.outcome`: a completed answer is a weak success, a truncated one
    # mostly a failure, errors fail, and a rating (a thumbs-down below 0 counts as 0)
    # wins with full weight; exploration's 1/propensity multiplies the weight.
    out = outcome
    assert [ex.label for ex in examples] == [1.0, out.TRUNCATED_VALUE, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert [ex.weight for ex in examples] == pytest.approx(
        [out.COMPLETED, out.TRUNCATED_WEIGHT * 4, 1.0, 1.0, out.COMPLETED, 1.0, 1.0]
    )
    assert examples[0].candidate == features.Candidate(
        "llama3.1:8b", "llama", 8.0, 4.0, 8192, frozenset(), False, True, True
    )
    assert examples[0].request == events[0]["features"]["request"]


def _train_from_usage(tmp_path: Path, events: list[dict[str, Any]]) -> argparse.Namespace:
    """`autoroute train --quick` arguments for these events alone, in `tmp_path`."""
    return _train_from(_write_jsonl(tmp_path / "usage.jsonl", events), tmp_path)


def _train_from(usage: Path, tmp_path: Path) -> argparse.Namespace:
    """`autoroute train --quick --from usage`, its artifact and report in `tmp_path`."""
    return _parse(
        cli.add_train_arguments,
        [
            "--from",
            str(usage),
            "--out",
            str(tmp_path / "art"),
            "--report-dir",
            str(tmp_path / "rep"),
            "--quick",
            "--no-progress",
            "--no-lomo",
        ],
    )


def _math_or_poems() -> list[tuple[bool, str]]:
    """120 prompts, every other one math (True), the others poems."""
    return [
        (True, f"Solve the equation {i} + x = {i * 3} and calculate the remainder")
        if i % 2 == 0
        else (False, f"Write a short poem about the colour number {i}")
        for i in range(120)
    ]


def _on_math(onnx_bytes: bytes) -> tuple[float, float]:
    """The artifact's success of tiny:1b and of big:70b on a math request."""
    sess = onnx_session.session(onnx_bytes)
    request = features.request_features(
        "/api/chat", {"messages": [{"role": "user", "content": "Solve 7 + x = 12, calculate"}]}
    )
    tiny = features.Candidate("tiny:1b", params_b=1.0, loaded=True)
    big = features.Candidate("big:70b", params_b=70.0, loaded=True)
    x = np.array(features.rows(request, [tiny, big]), dtype=np.float32)
    p_tiny, p_big = export.onnx_predict(sess, x)
    return float(p_tiny), float(p_big)


def test_train_from_a_usage_file(tmp_path: Path) -> None:
    """A selector trained only on usage events learns which model served which kind of
    request well, and its artifact describes the models from the events."""
    events = []
    for math_prompt, text in _math_or_poems():
        events.append(_event(text, "tiny:1b", 1.0, status=500 if math_prompt else 200))
        events.append(_event(text, "big:70b", 70.0, propensity=0.5))
    args = _train_from_usage(tmp_path, events)
    assert cli.run_train(args) == 0
    onnx_bytes, meta = export.read_artifact(tmp_path / "art")
    assert meta["known_models"] == [] and meta["trained_on"] == ["tiny:1b", "big:70b"]
    assert [m["params_b"] for m in meta["models"]] == [1.0, 70.0]
    assert meta["training"]["sources"][0]["used"] == 240
    assert "usage/usage.jsonl" in meta["training_data_hashes"]
    p_tiny, p_big = _on_math(onnx_bytes)
    assert p_big > p_tiny


def _written_by_the_file_sink(
    path: Path, events: list[dict[str, Any]], ratings: list[usage_event.Feedback]
) -> None:
    """The events and then the ratings, as the proxy writes its usage file (`FileSink`:
    the ratings in `events.feedback.jsonl` beside it), rotated every few events."""

    async def write() -> None:
        sink = FileSink(str(path), max_bytes=16_000, backups=100)
        for event in events:
            read = usage_event.read(event)
            await sink.write([Record(read, read.line())])
        for rating in ratings:
            await sink.write([Record(rating, orjson.dumps(rating.document()))])
        await sink.close()

    asyncio.run(write())


def _rating(event: dict[str, Any], rating: float, second: int) -> usage_event.Feedback:
    return usage_event.Feedback(
        feedback_id=f"f-{event['request_id']}-{second}",
        request_id=event["request_id"],
        rating=rating,
        ts=f"2026-01-01T00:00:{second:02d}.000000Z",
    )


def _rated_usage(path: Path) -> tuple[list[dict[str, Any]], list[usage_event.Feedback]]:
    """Answers that all completed, where only the users' ratings tell the models apart:
    on math, the small model's are rated down (after a thumbs-up they changed their
    mind about: the latest rating counts), the large one's up."""
    events, ratings = [], []
    for i, (math_prompt, text) in enumerate(_math_or_poems()):
        arrived = {"ts": f"2026-01-01T00:00:00.{i:06d}Z"}  # as the proxy writes
        tiny = _event(text, "tiny:1b", 1.0) | arrived
        big = _event(text, "big:70b", 70.0, propensity=0.5) | arrived
        events += [tiny, big]
        if math_prompt:
            ratings += [_rating(tiny, 1.0, 1), _rating(big, 1.0, 1), _rating(tiny, 0.0, 2)]
    _written_by_the_file_sink(path, events, ratings)
    return events, ratings


def test_train_from_the_proxys_usage_file_learns_from_its_ratings(tmp_path: Path) -> None:
    """`--from` the usage file the proxy writes (README: `train --from .../events.jsonl`)
    reads its rotated files with it and joins each request's rating from the feedback
    file beside it, by the rule every reader of the files applies
    (`proxy.usage.export`): the ratings are the labels that tell the models apart."""
    usage = tmp_path / "usage" / "events.jsonl"
    _rated_usage(usage)
    assert usage.with_name("events.jsonl.2").exists()  # rotated
    assert cli.run_train(_train_from(usage, tmp_path)) == 0
    onnx_bytes, meta = export.read_artifact(tmp_path / "art")
    assert meta["training"]["sources"][0]["used"] == 240
    hashed = meta["training_data_hashes"]
    assert {"usage/events.jsonl", "usage/events.jsonl.1", "usage/events.feedback.jsonl"} <= set(
        hashed
    )
    p_tiny, p_big = _on_math(onnx_bytes)
    assert p_big > p_tiny


def test_the_usage_file_and_its_export_give_the_same_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An exported file (`autoroute usage export`, the ratings in its lines) reads as it
    always has, and as the usage file it was exported from; a rotated file named alone
    has its ratings joined too."""
    usage = tmp_path / "usage" / "events.jsonl"
    _, ratings = _rated_usage(usage)
    config = tmp_path / "c.yaml"
    config.write_text(f"usage: {{file_path: {usage}}}\n")
    exported = tmp_path / "export.jsonl"
    argv = ["--config", str(config), "usage", "export", "--since", "2025-01-01"]
    assert autoroute([*argv, "-o", str(exported)]) == 0
    assert "exported 240 usage events" in capsys.readouterr().err
    from_usage, stats = load_usage([usage])
    assert stats.used == 240
    assert load_usage([exported])[0] == from_usage
    # Each of the 60 requests rated down, then up, then down again counts as rated down.
    assert len({r.request_id for r in ratings if r.rating == 0.0}) == 60
    assert sum(ex.label == 0.0 for ex in from_usage) == 60
    rotated, _ = load_usage([usage.with_name("events.jsonl.1")])
    assert rotated and all(ex in from_usage for ex in rotated)
    assert any(ex.label == 0.0 for ex in rotated)
    with pytest.raises(FileNotFoundError, match="no such usage file"):
        load_usage([usage, usage.with_name("event.jsonl")])


def test_training_on_one_outcome_class_is_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = [_event(f"Write a poem number {i}", "tiny:1b", 1.0) for i in range(40)]
    args = _train_from_usage(tmp_path, events)
    assert cli.run_train(args) != 0
    assert "same outcome" in capsys.readouterr().err
    assert not (tmp_path / "art").exists()


def test_sources_parse() -> None:
    assert pipeline.parse_source("dataset").kind == "dataset"
    assert pipeline.parse_source("postgresql://postgres@127.0.0.1/usage").kind == "postgres"
    assert pipeline.parse_source("usage.jsonl").path == Path("usage.jsonl")
    assert pipeline.parse_source("mmlu-pro") == pipeline.Source("mmlu-pro")
    assert pipeline.parse_source("mmlu-pro:300") == pipeline.Source("mmlu-pro", limit=300)
    for wrong in ("mmlu-pro:0", "mmlu-pro:some"):
        with pytest.raises(ValueError, match="number of prompts"):
            pipeline.parse_source(wrong)
    with pytest.raises(ValueError, match="postgres"):
        pipeline.parse_source("kafka://broker/topic")


def test_another_datasets_outcomes_leave_out_held_models_and_llmrouters_test_prompts(
    data: Any,
) -> None:
    """MMLU-Pro's rows are built as LLMRouter's (a candidate as serving describes its
    Ollama tag), without the models a held-out split keeps unseen, and without the
    questions LLMRouter's test split also asks."""
    source = pipeline.Source("mmlu-pro", limit=40)
    rows, models, prompts = pipeline.outcome_examples(source, 1.0, data.test, seed=3)
    assert prompts == 40 and len(models) == 26 and len(rows) == 40 * 26
    assert {r.candidate for r in rows} == {m.candidate() for m in mmlu_pro_data.MODELS}
    assert rows == pipeline.outcome_examples(source, 1.0, data.test, seed=3)[0]
    held = ["llama3.1:70b", "qwen:72b"]
    rows, models, _ = pipeline.outcome_examples(source, 1.0, data.test, seed=3, without=held)
    assert len(models) == 24 and len(rows) == 40 * 24
    assert not {r.candidate.name for r in rows} & set(held)
    # A question of LLMRouter's test split that MMLU-Pro rewrites stays out of training.
    temple = "largest hindu temple complex"
    asked = next(p for p in mmlu_pro_data.load_prompts() if temple in normalize(p.text))
    test = [p for p in data.test if temple in normalize(p.text)]
    assert len(test) == 1
    everything = pipeline.Source("mmlu-pro")
    kept, _, n = pipeline.outcome_examples(everything, 1.0, test, seed=0, without=held)
    assert n == len(mmlu_pro_data.load_prompts()) - 1
    assert prompt_group(asked.text) not in {r.group for r in kept}


def test_zeroevals_open_models_train_without_the_items_llmrouters_test_split_asks(
    data: Any,
) -> None:
    """`--from zeroeval`: the 15 open models ZeroEval ran on all three tasks, without
    the GSM8K items LLMRouter's test split also asks."""
    assert pipeline.parse_source("zeroeval:100") == pipeline.Source("zeroeval", limit=100)
    rows, models, n = pipeline.outcome_examples(pipeline.Source("zeroeval"), 1.0, data.test, 0)
    assert [m.ollama_name for m in models] == list(zeroeval_replay.OPEN)
    items = [normalize(p.text) for p in pipeline.OUTCOME_SETS["zeroeval"].load()]
    asked = [normalize(p.text) for p in data.test]
    shared = [t for t in items if any(a in t for a in asked)]
    assert shared and n == len(items) - len(shared) and len(rows) == n * 15


def test_training_on_llmrouter_and_mmlu_pro(tmp_path: Path, data: Any) -> None:
    """`--from dataset --from mmlu-pro:N`: one artifact fitted on both, whose table
    describes every model it was fitted on, and whose held-out evaluation trains each
    split on both without the split's held-out models."""
    args = _parse(
        cli.add_train_arguments,
        [
            "--from",
            "dataset",
            "--from",
            "mmlu-pro:60",
            "--out",
            str(tmp_path / "art"),
            "--quick",
            "--no-progress",
            "--no-lomo",
        ],
    )
    assert cli.run_train(args) == 0
    _, meta = export.read_artifact(tmp_path / "art")
    mmlu = [m.ollama_name for m in mmlu_pro_data.MODELS]
    llmrouter = [m.ollama_name for m in data.models]
    assert meta["trained_on"] == llmrouter + [n for n in mmlu if n not in llmrouter]
    rows = {m["name"]: m for m in meta["models"]}
    assert rows["qwen:72b"]["dataset_name"] == "Qwen1.5-72B-Chat"
    assert rows["llama3.1:8b"]["dataset_name"] == "llama-3.1-8b-instruct"  # LLMRouter's
    used = meta["training"]["sources"][1]
    assert used == {"kind": "mmlu-pro", "limit": 60, "prompts": 60, "rows": 60 * 26}
    assert meta["training"]["rows"]["train"] == SLICE * 9 + 60 * 26
    assert "mmlu-pro/outcomes.jsonl.gz" in meta["training_data_hashes"]
    assert pipeline.outcome_sources(meta) == [pipeline.Source("mmlu-pro", limit=60)]


def test_leave_one_model_out_trains_on_the_other_datasets_rows_but_the_held_model(
    tmp_path: Path, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An artifact trained on MMLU-Pro too is judged by folds trained on it too, when
    built and when evaluated again: each fold without every row of its held-out model
    (llama3.1:8b's MMLU-Pro rows included)."""
    folds: list[set[str]] = []
    fit = evaluate.train

    def recorded(examples: Any, config: Any, progress: Any = None) -> Any:
        folds.append({e.candidate.name for e in examples})
        return fit(examples, config, progress)

    monkeypatch.setattr(evaluate, "train", recorded)
    sources = [pipeline.Source("dataset"), pipeline.Source("mmlu-pro", limit=20)]
    out = tmp_path / "art"
    pipeline.build(sources, out, None, "quick", QUICK, max_prompts=100)
    pipeline.evaluate_artifact(out, tmp_path / "reports", "again")
    mmlu = {m.ollama_name for m in mmlu_pro_data.MODELS}
    everything = {m.ollama_name for m in data.models} | mmlu
    assert folds == [everything - {m.ollama_name} for m in data.models] * 2


def test_a_held_out_split_trains_on_the_other_datasets_rows_but_its_held_models(
    data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = Dataset(data.train[:200], data.test[:30], 0, data.models, {})
    extra, _, _ = pipeline.outcome_examples(
        pipeline.Source("mmlu-pro", limit=30), 1.0, data.test, seed=0
    )
    asked: list[set[str]] = []
    trained: list[list[str]] = []
    fold = replay.fold_artifact

    def rows_without(held: Any) -> list[Any]:
        asked.append(set(held))
        return [r for r in extra if r.candidate.name not in held]

    def recorded(*args: Any) -> Path:
        out = fold(*args)
        trained.append(json.loads((out / "selector.json").read_text())["trained_on"])
        return out

    monkeypatch.setattr(replay, "fold_artifact", recorded)
    results = replay.in_loop(
        lambda: replay.leave_k_out(
            small,
            QUICK,
            {"best": Profile(cost_weight=0.0)},
            k=3,
            splits=1,
            seed=1,
            extra=rows_without,
        )
    )
    held = set(results[1].fleet)
    assert asked == [held]
    (names,) = trained
    assert not set(names) & held
    assert {"qwen:72b", "llama3.1:70b"} <= set(names)


# ---------------------------------------------------------------- training and export


def test_onnx_parity_and_its_failure(data: Any) -> None:
    examples = dataset_examples(data.train[:200], data.models)
    a = train(examples, QUICK)
    b = train(examples, TrainConfig.from_json({**QUICK.to_json(), "seed": 7}))
    n_features = len(features.feature_names())
    onnx_a = export.to_onnx(a.booster, n_features)
    assert export.parity(onnx_a, a.booster, a.val.x) <= export.PARITY_TOLERANCE
    with pytest.raises(export.ParityError):
        export.parity(onnx_a, b.booster, b.val.x)


def test_same_seed_same_predictions(data: Any) -> None:
    examples = dataset_examples(data.train[:250], data.models)
    config = TrainConfig.from_json({**QUICK.to_json(), "max_depth": 6})
    first = train(examples, config)
    second = train(examples, config)
    assert first.best_iteration == second.best_iteration
    p1 = predict(first.booster, first.val.x)
    p2 = predict(second.booster, first.val.x)
    assert np.array_equal(p1, p2)
    n_features = len(features.feature_names())
    assert export.to_onnx(first.booster, n_features) == export.to_onnx(second.booster, n_features)


def test_the_refit_learns_every_row_with_the_tree_count_the_split_chose(data: Any) -> None:
    examples = dataset_examples(data.train[:250], data.models)
    split = train(examples, TrainConfig.from_json({**QUICK.to_json(), "refit": False}))
    refit = train(examples, QUICK)
    assert QUICK.refit and refit.best_iteration == split.best_iteration
    assert refit.booster.num_boosted_rounds() == split.booster.num_boosted_rounds()
    assert split.booster.num_boosted_rounds() == split.best_iteration + 1
    assert refit.rows == {"train": len(examples), "validation": split.rows["validation"]}
    assert split.rows["train"] == len(examples) - split.rows["validation"]
    # The held-out figures come from the booster that had not seen the validation rows.
    assert np.array_equal(refit.val_p, predict(split.booster, split.val.x))
    assert not np.array_equal(predict(refit.booster, refit.val.x), refit.val_p)


def test_a_config_without_refit_reads_as_fitted_on_its_training_part() -> None:
    raw = {k: v for k, v in TrainConfig().to_json().items() if k != "refit"}
    assert TrainConfig.from_json(raw).refit is False
    assert TrainConfig.from_json(TrainConfig().to_json()).refit is True


def test_artifact_metadata_and_schema(built: tuple[Path, Path, dict[str, Any]], data: Any) -> None:
    out, _, meta = built
    onnx_bytes, on_disk = export.read_artifact(out / "selector.json")
    assert on_disk == meta
    assert meta["schema_version"] == features.SCHEMA_VERSION
    known = meta["trained_on"]
    assert meta["known_models"] == []  # no model is known by name
    assert known == [m.ollama_name for m in data.models]
    assert meta["feature_names"] == features.feature_names()
    assert [m["name"] for m in meta["models"]] == known
    for row in meta["models"]:
        spec = BY_DATASET_NAME[row["dataset_name"]]
        assert row["params_b"] == spec.params_b and row["price_per_m"] == spec.price_per_m
        assert features.Candidate.from_record(row) == spec.candidate()
    assert meta["onnx_sha256"] == sha256(out / "selector.onnx")
    assert meta["training_data_hashes"]["llmrouter/train.json"] == sha256(DATA_DIR / "train.json")
    assert meta["opset"] == 15
    assert meta["parity"]["max_abs_diff"] <= 1e-5
    assert meta["policy"]["unseen_margin"] >= 0
    assert meta["artifact_version"].startswith(f"s{features.SCHEMA_VERSION}-")
    assert {"xgboost-cpu", "onnxmltools", "onnxruntime"} <= set(meta["library_versions"])
    assert meta["training"]["seconds"] > 0 and meta["metrics"]["test"]["prompts"] == 381

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == meta["input_name"] and inp.shape[1] == len(meta["feature_names"])
    outputs = {o.name for o in sess.get_outputs()}
    assert meta["output_name"] in outputs
    request = features.request_features(
        "/api/chat", {"messages": [{"role": "user", "content": "2+2?"}]}
    )
    candidates = [features.Candidate.from_record(m) for m in meta["models"]]
    x = np.array(features.rows(request, candidates), dtype=np.float32)
    (probs,) = sess.run([meta["output_name"]], {meta["input_name"]: x})
    assert probs.shape == (len(known), 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert ((probs[:, meta["success_column"]] >= 0) & (probs[:, meta["success_column"]] <= 1)).all()


def test_report_files_and_contents(built: tuple[Path, Path, dict[str, Any]]) -> None:
    _, reports, meta = built
    report = json.loads((reports / "quick.json").read_text())
    assert report["artifact_version"] == meta["artifact_version"]
    assert len(report["targets"]) == 3
    price = report["evaluation"]["price"]
    assert price["best_single"]["model"] == "nemotron:51b"
    assert abs(price["best_single"]["quality"] - 0.5966) < 1e-3
    assert price["oracle"]["quality"] >= max(s["quality"] for s in price["singles"])
    assert 0 <= price["quality_at_best_cost"] <= 1
    assert len(report["lomo"]) == 9
    assert {f["held_out"] for f in report["lomo"]} == set(meta["trained_on"])
    md = (reports / "quick.md").read_text()
    assert "APGR" in md and "Leave one model out" in md
    assert (reports / "quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_cli_on_the_artifact(
    built: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _, meta = built
    args = _parse(
        cli.add_evaluate_arguments,
        [
            str(out),
            "--report-dir",
            str(tmp_path),
            "--report-name",
            "again",
            "--no-lomo",
            "--no-progress",
        ],
    )
    assert cli.run_evaluate(args) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["evaluation"]["price"]["quality_at_best_cost"] == pytest.approx(
        meta["metrics"]["test"]["quality_at_best_cost"]
    )
    # An artifact from another feature schema is refused.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "selector.onnx").write_bytes((out / "selector.onnx").read_bytes())
    (broken / "selector.json").write_text(json.dumps({**meta, "schema_version": -1}))
    args.artifact = broken
    assert cli.run_evaluate(args) == 1


# ---------------------------------------------------------------- metrics


def test_metric_definitions_on_a_hand_made_case() -> None:
    y = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    cost = np.array([1.0, 3.0])
    assert evaluate.oracle(y, cost) == (1.5, 0.75)  # cheapest correct; ties to the cheaper
    points = [
        evaluate.Point(0.0, 3.0, 0.5),
        evaluate.Point(1.0, 2.0, 0.5),
        evaluate.Point(2.0, 1.0, 0.25),
    ]
    # Q(c) = 0.25 on [1, 2), 0.5 on [2, 3]: area above q0 = 0.25 over (0.5-0.25)*(3-1).
    assert evaluate.apgr(points, 1.0, 0.25, 3.0, 0.5) == pytest.approx(0.5)
    p = np.array([[0.9, 0.8], [0.2, 0.9], [0.5, 0.4], [0.9, 0.1]])
    summary = evaluate.summarize(p, y, cost, ["a", "b"], np.tile([0.0, 1.0], (4, 1)), seed=0)
    assert summary["best_single"]["model"] == "a"  # 0.5 each: the cheaper wins the tie
    assert summary["router_lambda0"]["quality"] == 1.0 - 0.25  # picks a, b, a, a
    assert summary["random"] == {"cost": 2.0, "quality": 0.5}


# ---------------------------------------------------------------- replay (autoroute evaluate)


def test_evaluate_replays_through_the_proxy_decision_code(
    built: tuple[Path, Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, _ = built
    args = _parse(
        cli.add_evaluate_arguments,
        [str(out), "--report-dir", str(tmp_path), "--no-lomo", "--no-progress", "--hold-out", "0"],
    )
    assert cli.run_evaluate(args) == 0
    printed = capsys.readouterr().out
    assert replay.COST_DEFINITIONS["params"] in printed
    for row in ("auto:fast", "auto:balanced", "auto:best", "best single", "always-largest"):
        assert row in printed
    saved = json.loads((tmp_path / "evaluation-replay.json").read_text())
    (fleet,) = saved["fleets"]
    rows = fleet["rows"]
    assert rows["best single"]["quality"] == pytest.approx(0.5966, abs=1e-3)
    assert rows["oracle"]["quality"] >= max(r["quality"] for r in rows.values())
    # Every pick is one of the fleet's models and every prompt got one.
    for profile in ("auto:fast", "auto:balanced", "auto:best"):
        assert set(rows[profile]["picks"]) <= set(fleet["fleet"])
        assert sum(rows[profile]["picks"].values()) == fleet["prompts"] == 381
    assert (tmp_path / "evaluation-replay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_feedback_hook_sees_every_decision_of_the_learning_half(
    built: tuple[Path, Path, dict[str, Any]], data: Any
) -> None:
    out, _, _ = built
    calls: list[tuple[str, str, float]] = []

    def factory(router: Any) -> replay.Feedback:
        def hook(body: Any, model: str, outcome: float) -> None:
            calls.append((body["messages"][0]["content"], model, outcome))

        return hook

    prompts = data.test[:40]
    result = replay.in_loop(
        lambda: replay.replay_fleet(
            "slice",
            out,
            prompts,
            data.models,
            {"best": Profile(cost_weight=0.0)},
            feedback=factory,
            passes=2,
        )
    )
    assert len(result.curves["best"]) == 3  # before feedback, after each pass
    assert len(calls) == 2 * 20
    by_model = {m.ollama_name: m for m in data.models}
    texts = {p.text: p for p in prompts}
    for text, model, score in calls:
        assert score == texts[text].scores[by_model[model].dataset_name]


def test_the_replay_decides_with_the_configured_selector_settings(
    built: tuple[Path, Path, dict[str, Any]], data: Any
) -> None:
    """`--config` reaches every setting the decision reads, not only the profiles: a
    min_gain no lead can pass keeps every prompt on the profile's default model."""
    out, _, _ = built
    best = {"best": Profile(cost_weight=0.0, default_model="mistral:7b")}

    def picks(selector: Selector | None) -> dict[str, int]:
        result = replay.in_loop(
            lambda: replay.replay_fleet(
                "slice", out, data.test[:60], data.models, best, selector=selector
            )
        )
        return result.profiles["best"].picks

    # Without the setting the replay leaves the default model (which model it picks
    # instead rests on the quick fit); with it every prompt stays there.
    assert picks(None) != {"mistral:7b": 60}
    assert picks(replace(Selector(), min_gain=1.0)) == {"mistral:7b": 60}


def test_leave_k_out_holds_models_out_of_training(data: Any) -> None:
    splits = replay.held_out_splits(data.models, 3, 4, seed=1)
    assert len(splits) == 4 and len({tuple(s) for s in splits}) == 4
    assert all(len(s) == 3 for s in splits)
    small = Dataset(data.train[:300], data.test[:60], 0, data.models, {})
    results = replay.in_loop(
        lambda: replay.leave_k_out(
            small, QUICK, {"best": Profile(cost_weight=0.0)}, k=3, splits=1, seed=1
        )
    )
    everything, held = results
    assert len(everything.fleet) == 9 and len(everything.unseen) == 3
    assert sorted(held.fleet) == sorted(held.unseen) == sorted(everything.unseen)


def test_train_writes_to_the_user_directory_and_installs_only_when_asked(
    tmp_path: Path,
) -> None:
    """Without --out the artifact goes to the user's state directory (the test run's
    XDG_STATE_HOME), never over the shipped one; --install copies it to the configured
    selector.artifact, where a running proxy reads it."""
    shipped = cli.SHIPPED / export.ONNX_FILE
    before = shipped.read_bytes()
    events = [
        _event(f"Write a short poem about the colour number {i}", model, size, status=status)
        for i in range(60)
        for model, size, status in (("tiny:1b", 1.0, 500), ("big:70b", 70.0, 200))
    ]
    usage = _write_jsonl(tmp_path / "usage.jsonl", events)
    target = tmp_path / "installed" / "selector.onnx"
    config = tmp_path / "config.yaml"
    config.write_text(f"selector:\n  artifact: {target}\n")
    common = ["--from", str(usage), "--quick", "--no-progress", "--no-lomo"]

    assert cli.run_train(_parse(cli.add_train_arguments, common)) == 0
    out = cli.user_out()
    assert str(out).startswith(os.environ["XDG_STATE_HOME"])
    assert (out / export.ONNX_FILE).exists() and (out / "reports").is_dir()
    assert not target.exists()

    args = _parse(cli.add_train_arguments, [*common, "--install", "--config", str(config)])
    assert cli.run_train(args) == 0
    assert target.read_bytes() == (out / export.ONNX_FILE).read_bytes()
    meta = json.loads(target.with_suffix(".json").read_bytes())
    assert meta == json.loads((out / export.META_FILE).read_bytes())
    assert shipped.read_bytes() == before


def _fleet(
    unseen: list[str], best: float, balanced: tuple[float, float], largest: float
) -> replay.FleetResult:
    """A fleet's replay with the best single model at quality 0.60 and cost 10."""
    return replay.FleetResult(
        label="fleet",
        fleet=["a:7b", "b:70b"],
        unseen=unseen,
        prompts=100,
        profiles={
            "balanced": replay.Outcome(balanced[0], balanced[1] * 10.0),
            "best": replay.Outcome(best, 8.0),
        },
        baselines={
            "best single": replay.Outcome(0.60, 10.0),
            "always-largest": replay.Outcome(largest, 20.0),
            "random": replay.Outcome(0.40, 15.0),
            "oracle": replay.Outcome(0.80, 5.0),
        },
    )


def test_the_issues_targets_are_judged_per_fleet() -> None:
    met = replay.targets(_fleet(["a:7b"], 0.585, (0.575, 0.5), 0.55))
    assert [t.met for t in met] == [True, True, True]
    missed = replay.targets(_fleet(["a:7b"], 0.575, (0.565, 0.7), 0.58))
    assert [t.met for t in missed] == [False, False, False]
    assert missed[0][:2] == ("auto:best >= best single - 2p", "-2.5p")
    # After feedback, on the other half: within 1 point of the best single model there,
    # and 5 points gained where it started more than 5 below.
    learned = _fleet(["a:7b"], 0.585, (0.575, 0.5), 0.55)
    learned.curves = {"best": [0.52, 0.56, 0.585]}
    learned.half_best = 0.60
    assert [t.met for t in replay.targets(learned)[3:]] == [False, True]
    # The trained-on fleet has its own: auto:best >= 0.62 at no more than its cost.
    assert replay.targets(_fleet([], 0.625, (0.6, 0.5), 0.3)) == [
        ("auto:best >= 0.620 at <= 1.00x", "0.625 at 0.80x", True)
    ]
    text = replay.table(learned)
    assert "target MISSED auto:best after feedback >= best single - 1p: -1.5p" in text
    assert "target met    auto:best gains >= 5p with feedback: +6.5p" in text
    short = _fleet(["a:7b"], 0.575, (0.565, 0.7), 0.58)
    short.curves, short.half_best = {"best": [0.52, 0.54, 0.55]}, 0.60
    tally = replay.summary([learned, short], "fleet")
    assert "target auto:best >= best single - 2p: met in 1 of 2 fleets" in tally
    assert "target auto:best gains >= 5p with feedback: met in 1 of 2 fleets" in tally


def test_the_ceiling_applies_each_kinds_best_model_of_one_half_to_the_other() -> None:
    """What a learner per kind of prompt can reach on the held half: each kind's best
    model on the learning half (a kind it lacks: that half's best single model), that
    half's best single model, and each kind's best on the held half itself."""
    a, b = MODELS[0], MODELS[1]

    def prompt(text: str, score_a: float) -> Prompt:
        return Prompt(text, {a.dataset_name: score_a, b.dataset_name: 1.0 - score_a})

    code = "```python\nprint(sum([1, 2]))\n```\nWhat does this print?"
    maths = "What is 12 + 30? And 7 * 6?"
    trivia = "Who wrote Hamlet?"
    kinds = [
        kind_of(features.request_features("/api/chat", replay.body_of(prompt(t, 1.0), "best")))
        for t in (code, maths, trivia)
    ]
    assert kinds == ["code", "math", "knowledge"]
    # a leads code, b leads maths; a is the learning half's best single model.
    learn = [prompt(code, 1.0)] * 3 + [prompt(maths, 0.0)] * 2
    held = [prompt(code, 1.0)] * 2 + [prompt(maths, 0.0)] * 2 + [prompt(trivia, 0.0)]
    got = replay.ceilings(learn, held, [a, b], {a.ollama_name: 1.0, b.ollama_name: 1.0})
    assert got == {
        "kind": pytest.approx(0.8),
        "single": pytest.approx(0.4),
        "kind-there": pytest.approx(1.0),
    }
    result = _fleet(["a:7b"], 0.585, (0.575, 0.5), 0.55)
    result.curves, result.half_best, result.ceilings = {"best": [0.5, 0.55]}, 0.6, got
    text = replay.table(result)
    assert "ceiling on the 2nd half: the best model of each kind on the 1st half 0.800 " in text
    assert "the best single model of the 1st half 0.400 (-20.0p)" in text
    tally = replay.summary([result, result], "fleet")
    assert "the best model of each kind on the 1st half: +20.0p (worst +20.0p)" in tally


def test_an_artifact_path_that_does_not_exist_is_named_as_given(tmp_path: Path) -> None:
    """`autoroute evaluate /no/such.onnx` said `No such file or directory:
    '/no/selector.json'`: the file it looked for beside the path, not the path given."""
    missing = tmp_path / "nowhere" / "selector.onnx"
    with pytest.raises(FileNotFoundError) as caught:
        export.read_artifact(missing)
    assert caught.value.filename == str(missing)

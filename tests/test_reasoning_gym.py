"""The Reasoning Gym per-item outcomes (`data/reasoning_gym`) as a replay dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selector_model.catalog import Catalog
from training import outcome_files, reasoning_gym_build, reasoning_gym_replay
from training.reasoning_gym_data import (
    BY_OLLAMA_NAME,
    DATA_FILE,
    LEVELS,
    MODELS,
    fleet,
    levels_of,
    load_prompts,
)


def test_the_bundled_outcomes_carry_their_source_and_licence() -> None:
    readme = (DATA_FILE.parent / "README.md").read_text()
    assert "https://github.com/open-thought/reasoning-gym-eval" in readme
    assert "Apache License 2.0" in readme
    assert 500_000 < DATA_FILE.stat().st_size < 3_000_000


def test_every_item_is_a_level_s_task_with_each_run_s_score_in_range() -> None:
    runs = {m.dataset_name for m in MODELS}
    counts = dict.fromkeys(LEVELS, 0)
    tasks: set[str] = set()
    for row in outcome_files.rows(DATA_FILE):
        counts[row["level"]] += 1
        tasks.add(row["task"])
        assert row["score"] and set(row["score"]) <= runs
        assert all(0.0 <= s <= 1.0 for s in row["score"].values())
    # Items are matched by text across runs, so a task a generator changed between
    # runs holds more than its 50 items per level.
    assert counts["easy"] > 99 * 50 and counts["hard"] > 98 * 50
    assert not tasks & reasoning_gym_build.EXCLUDED
    assert len(tasks) == 99


def test_each_item_scores_every_model_of_the_fleet() -> None:
    models = fleet(reasoning_gym_replay.OPEN)
    prompts = load_prompts(models, limit=60, seed=1)
    assert len(prompts) == 60
    assert prompts == load_prompts(models, limit=60, seed=1)  # the same draw for a seed
    names = {m.dataset_name for m in models}
    for prompt in prompts:
        assert set(prompt.scores) == names
        assert prompt.text and "<answer>" not in prompt.text.split("\n")[0]
    # The models differ: a dataset where every model scored alike would route nothing.
    everything = load_prompts(models)
    means = [sum(p.scores[m.dataset_name] for p in everything) / len(everything) for m in models]
    assert max(means) - min(means) > 0.3
    assert levels_of(models) == ["easy", "hard"]
    assert len(everything) == len(load_prompts(models, ("easy",))) + len(
        load_prompts(models, ("hard",))
    )


def test_the_fleet_maps_to_ollama_names_the_catalogue_knows() -> None:
    catalog = Catalog.load()
    assert len(MODELS) == len(BY_OLLAMA_NAME) == 7
    for spec in MODELS:
        knowledge = catalog.lookup(spec.ollama_name, spec.tag()["details"])
        assert knowledge.params_b > 0, spec.ollama_name
        assert spec.model_info().candidate.is_instruct
    # Mixtures of experts cost their active parameters, not their total.
    assert BY_OLLAMA_NAME["llama4:128x17b"].candidate().active_b == pytest.approx(17.0)
    assert BY_OLLAMA_NAME["deepseek-r1:671b-0120"].candidate().active_b == pytest.approx(37.0)


def test_the_replay_runs_a_fleet_of_the_users_choice(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--models", "gemma3:27b,qwq:32b", "--levels", "hard", "--limit", "20"]
    assert reasoning_gym_replay.main([*argv, "--passes", "1"]) == 0
    out = capsys.readouterr().out
    assert "Reasoning Gym fleet of your choice (hard): 2 models (2 unseen in training), 20" in out
    assert "auto:best with feedback" in out
    for bad in (
        ["--models", "gemma3:27b,no-such:1b"],
        ["--models", "gemma3:27b,qwq:32b", "--levels", "medium"],
    ):
        with pytest.raises(SystemExit) as exited:
            reasoning_gym_replay.main(bad)
        assert exited.value.code == 2


def _task_file(results: list[dict[str, object]], mean: float) -> bytes:
    return json.dumps({"results": results, "average_mean_score": mean}).encode()


def test_runs_are_matched_by_question_not_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs whose generator changed between them: the question they share is one
    item scored by both, the others are items of one run each, and a question one run
    asked twice gets the mean of its scores."""
    a, b = reasoning_gym_build.RUNS[:2]
    files = {
        ("easy", a): [
            {"question": "1+1?", "expected_answer": "2", "mean_score": 1.0},
            {"question": "2+2?", "expected_answer": "4", "mean_score": 0.0},
        ],
        ("easy", b): [
            {"question": "3+3?", "expected_answer": "6", "mean_score": 1.0},
            {"question": "1+1?", "expected_answer": "2", "mean_score": 0.0},
            {"question": "1+1?", "expected_answer": "2", "mean_score": 1.0},
        ],
    }
    monkeypatch.setattr(reasoning_gym_build, "LEVELS", ("easy",))
    monkeypatch.setattr(reasoning_gym_build, "RUNS", (a, b))
    monkeypatch.setattr(reasoning_gym_build, "run_folder", lambda _r, level, m: f"{level}-{m}")

    def task_files(_repo: Path, folder: str) -> list[tuple[str, str | None]]:
        return [("arithmetic/sums.json", folder), ("induction/acre.json", "excluded")]

    def git(_repo: Path, *args: str) -> bytes:
        ref = args[-1]
        if ref.endswith("summary.json"):
            model = next(m for m in (a, b) if m in ref)
            summary = {"model": model, "provider": "p", "temperature": 0.6}
            return json.dumps({**summary, "completions_per_prompt": 1}).encode()
        results = next(r for (_level, model), r in files.items() if model in ref)
        mean = sum(float(str(r["mean_score"])) for r in results) / len(results)
        return _task_file(results, mean)

    monkeypatch.setattr(reasoning_gym_build, "task_files", task_files)
    monkeypatch.setattr(outcome_files, "git", git)
    out = tmp_path / "outcomes.jsonl.gz"
    checked = reasoning_gym_build.build(tmp_path, out)
    rows = {r["question"]: r["score"] for r in outcome_files.rows(out)}
    assert rows == {"1+1?": {a: 1.0, b: 0.5}, "2+2?": {a: 0.0}, "3+3?": {b: 1.0}}
    assert reasoning_gym_build.check(checked) == 0

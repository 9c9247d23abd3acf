"""The ZeroEval per-item outcomes (`data/zeroeval`) as a replay dataset."""

from __future__ import annotations

import pytest

from training import outcome_files, zeroeval_build, zeroeval_replay
from training.zeroeval_data import (
    DATA_FILE,
    MODELS,
    TASKS,
    fleet,
    load_prompts,
    tasks_of,
)


def test_the_bundled_outcomes_carry_their_source_and_licence() -> None:
    readme = (DATA_FILE.parent / "README.md").read_text()
    assert "https://github.com/yuchenlin/ZeroEval" in readme
    assert "Apache License 2.0" in readme
    assert 100_000 < DATA_FILE.stat().st_size < 3_000_000


def test_every_item_of_the_three_tasks_is_there_with_each_runs_outcome() -> None:
    counts = dict.fromkeys(TASKS, 0)
    runs = {m.dataset_name for m in MODELS}
    for row in outcome_files.rows(DATA_FILE):
        counts[row["task"]] += 1
        assert set(row["correct"]) <= runs
        assert set(row["correct"].values()) <= {0, 1}
    assert counts == {"gsm": 1319, "math-l5": 721, "crux": 800}


def test_each_item_scores_every_model_of_the_fleet() -> None:
    models = fleet(zeroeval_replay.OPEN)
    prompts = load_prompts(models, limit=60, seed=1)
    assert len(prompts) == 60
    assert prompts == load_prompts(models, limit=60, seed=1)  # the same draw for a seed
    names = {m.dataset_name for m in models}
    for prompt in prompts:
        assert set(prompt.scores) == names
        assert set(prompt.scores.values()) <= {0.0, 1.0}
        assert prompt.text and "## Question" not in prompt.text  # ZeroEval's template is not sent
    # The models differ: a dataset where every model scored alike would route nothing.
    means = [sum(p.scores[m.dataset_name] for p in prompts) / 60 for m in models]
    assert max(means) - min(means) > 0.2


def test_a_fleet_replays_only_on_the_tasks_all_its_models_ran() -> None:
    assert tasks_of(fleet(zeroeval_replay.OPEN)) == ["gsm", "math-l5", "crux"]
    assert tasks_of(fleet(["qwen2.5:7b", "phi3:3.8b"])) == ["math-l5", "crux"]
    assert tasks_of(fleet(["mistral-nemo:12b", "qwen2.5:7b"])) == []
    assert len(load_prompts(fleet(["mistral-nemo:12b", "llama3:8b"]))) == 1319
    assert len(load_prompts(fleet(["llama3:8b", "qwen2:7b"]), tasks=("crux",))) == 800


@pytest.mark.parametrize(
    ("answer", "gold", "right"),
    [
        ("18", "# 18", True),
        ("$1,080", "# 1080", True),
        ("18 dollars", "# 18", True),
        ("3/4", "0.75", True),
        ("\\frac{3}{4}", "\\frac{3}{4}", True),  # first numbers compared: 3 and 3
        ("17", "# 18", False),
        (None, "# 18", False),
    ],
)
def test_math_answers_are_compared_by_their_first_number(
    answer: str | None, gold: str, right: bool
) -> None:
    assert zeroeval_build.math_correct(answer, gold) is right


def test_an_answer_is_read_from_the_first_json_object_or_the_answer_field() -> None:
    extract = zeroeval_build.extract
    assert extract("x", '```json\n{\n "reasoning": "r",\n "answer": 42\n}\n```') == "42"
    assert extract("x", '{"reasoning": "a "quoted" word", "answer": "7"}') == "7"
    assert extract("x", "so the answer: 12, done") == "12"
    assert extract("x", "it is $\\boxed{36}$") is None
    assert extract("Meta-Llama-3.1-8B-Instruct", "it is $\\boxed{36}$") == "36"
    assert zeroeval_build.crux_correct("'a\nb'", "a\\nb")
    assert not zeroeval_build.crux_correct("[1, 2]", "[1,2]")


def test_the_replay_runs_a_fleet_of_the_users_choice(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--models", "llama3:70b,qwen2.5:3b", "--limit", "20", "--passes", "1"]
    assert zeroeval_replay.main(argv) == 0
    out = capsys.readouterr().out
    assert (
        "fleet of your choice (math-l5, crux): 2 models (2 unseen in training), 20 prompts" in out
    )
    assert "auto:best with feedback" in out
    for bad in (["--models", "llama3:70b,no-such:1b"], ["--models", "mistral-nemo:12b,qwen2.5:7b"]):
        with pytest.raises(SystemExit) as exited:
            zeroeval_replay.main(bad)
        assert exited.value.code == 2

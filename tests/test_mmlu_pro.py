"""The MMLU-Pro per-question outcomes (`data/mmlu_pro`) as a replay dataset."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import Config
from selector_model import artifact
from selector_model.catalog import Catalog
from training import mmlu_pro_data, mmlu_pro_replay, reasoning_gym_data, replay, zeroeval_data
from training.mmlu_pro_data import DATA_FILE, MODELS, load_prompts


def test_the_bundled_outcomes_carry_their_source_and_licence() -> None:
    readme = (DATA_FILE.parent / "README.md").read_text()
    assert "https://github.com/TIGER-AI-Lab/MMLU-Pro" in readme
    assert "Apache License 2.0" in readme
    assert DATA_FILE.stat().st_size > 1_000_000


def test_each_question_scores_every_model_right_or_wrong() -> None:
    prompts = load_prompts(limit=40, seed=1)
    assert len(prompts) == 40
    assert prompts == load_prompts(limit=40, seed=1)  # the same draw for a seed
    names = {m.dataset_name for m in MODELS}
    for prompt in prompts:
        assert set(prompt.scores) == names
        assert set(prompt.scores.values()) <= {0.0, 1.0}
        assert "Options:\nA. " in prompt.text and "the answer is (X)" in prompt.text
    # The models differ: a dataset where every model scored alike would route nothing.
    means = [sum(p.scores[m.dataset_name] for p in prompts) / 40 for m in MODELS]
    assert max(means) - min(means) > 0.2


@pytest.mark.parametrize(("data", "has_base_runs"), [(mmlu_pro_data, True), (zeroeval_data, False)])
def test_the_fleet_maps_to_ollama_names_the_catalogue_knows(data: Any, has_base_runs: bool) -> None:
    catalog = Catalog.load()
    assert len(data.MODELS) == len(data.BY_OLLAMA_NAME) >= 20
    # Base runs are `-text` tags, which the proxy reads as not instruct; the others are
    # instruct runs.
    text_tag = ("-text", "-text-v0.1", "-text-v0.2")
    for spec in data.MODELS:
        knowledge = catalog.lookup(spec.ollama_name, spec.tag()["details"])
        assert knowledge.params_b > 0
        is_base = spec.ollama_name.endswith(text_tag)
        assert spec.model_info().candidate.is_instruct is not is_base, spec.ollama_name
    assert any(m.ollama_name.endswith(text_tag) for m in data.MODELS) is has_base_runs


@pytest.mark.parametrize(
    ("dataset", "names"),
    [
        ("mmlu-pro", ["llama3.1:70b", "phi3:3.8b", "qwen:7b", "mixtral:8x7b"]),
        ("zeroeval", ["llama3:70b", "phi3.5:3.8b", "qwen2:7b", "gemma2:27b"]),
        (
            "reasoning-gym",
            ["gemma3:27b", "mistral-small3.1:24b", "qwq:32b", "llama4:16x17b"],
        ),
    ],
)
def test_a_fleet_of_unseen_models_replays_through_the_decision_code(
    dataset: str, names: list[str]
) -> None:
    """Each replay dataset's fleet, all unseen by the artifact, through `auto:best`."""
    data = {
        "mmlu-pro": mmlu_pro_data,
        "zeroeval": zeroeval_data,
        "reasoning-gym": reasoning_gym_data,
    }[dataset]
    models = data.fleet(names)
    prompts = data.load_prompts(models, limit=30, seed=0)
    profiles = {"best": Config().selector.profiles["best"]}
    result = replay.in_loop(
        lambda: replay.replay_fleet(dataset, artifact.SHIPPED.parent, prompts, models, profiles)
    )
    assert set(result.unseen) == {m.ollama_name for m in models}
    chosen = result.profiles["best"]
    assert sum(chosen.picks.values()) == 30
    assert set(chosen.picks) <= set(result.fleet)
    assert 0.0 <= chosen.quality <= result.baselines["oracle"].quality <= 1.0


def test_the_replay_runs_a_fleet_of_the_users_choice(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--models", "llama3.1:70b,phi3:3.8b", "--limit", "20", "--passes", "1"]
    assert mmlu_pro_replay.main(argv) == 0
    out = capsys.readouterr().out
    assert "MMLU-Pro fleet of your choice: 2 models (2 unseen in training), 20 prompts" in out
    assert "auto:best with feedback" in out
    with pytest.raises(SystemExit) as exited:
        mmlu_pro_replay.main(["--models", "llama3.1:70b,no-such:1b"])
    assert exited.value.code == 2


def test_the_replay_sums_up_a_fleet_over_several_seeds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--models", "llama3.1:70b,phi3:3.8b", "--limit", "20", "--passes", "1"]
    assert mmlu_pro_replay.main([*argv, "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert out.count("MMLU-Pro fleet of your choice: 2 models") == 2
    assert "mean over 2 replays (seeds 0,1) (MMLU-Pro fleet of your choice):" in out
    assert "target auto:best >= best single - 2p: met in " in out
    assert " of 2 replays" in out
    assert "auto:best vs best single on the 2nd half: no feedback" in out
    # Each seed is its own draw of questions: the two replays are not one replay twice.
    tables = [part.split("  picks:")[0] for part in out.split("fleet: ")[1:]]
    assert len(tables) == 2 and tables[0] != tables[1]
    with pytest.raises(SystemExit) as exited:
        mmlu_pro_replay.main([*argv, "--seeds", "0,x"])
    assert exited.value.code == 2

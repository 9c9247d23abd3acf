"""Replays of fleets as if every model had been profiled (`--profiled N`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.config_selector import Profile
from selector_model import artifact
from selector_model.catalog import Catalog, Measured
from selector_model.profiling import store
from training import fleet_replay, profiled_replay, replay, zeroeval_replay
from training.data import Prompt
from training.zeroeval_data import fleet

CODE = "```python\nprint(sum([1, 2]))\n```\nWhat does this print?"
MATHS = "What is 12 + 30? And 7 * 6?"
# Two models the shipped artifact was not fitted on, so that their areas place them.
A, B = fleet(["llama3:8b", "qwen2:7b"])
PROFILES = {"best": Profile(cost_weight=0.0)}


def _prompts(learn_a: float, held_a: float, count: int) -> tuple[list[Prompt], list[Prompt]]:
    """`count` labelled prompts of each area whose halves (`replay.halves`, seed 0)
    score A `learn_a` on the learning half and `held_a` on the held one (B the
    opposite), with the learning half's draw found by its text."""
    prompts = [
        Prompt(f"{text}\n#{i}", {A.dataset_name: 0.0, B.dataset_name: 0.0}, label)
        for i in range(count)
        for text, label in ((CODE, "crux"), (MATHS, "gsm"))
    ]
    learn, _ = replay.halves(prompts, 0)
    texts = {p.text for p in learn}
    for p in prompts:
        a = learn_a if p.text in texts else held_a
        p.scores.update({A.dataset_name: a, B.dataset_name: 1.0 - a})
    return prompts, learn


def test_the_measured_areas_are_the_learning_halfs_means_on_n_of_each_area() -> None:
    _, learn = _prompts(learn_a=1.0, held_a=0.0, count=20)
    # The dataset's labels name the areas; `gsm` and `crux` as the replay maps them.
    measured = profiled_replay.measured_areas(learn, [A, B], 4, 0, zeroeval_replay.AREAS)
    assert set(measured) == {A.ollama_name, B.ollama_name}
    for model, score in ((A.ollama_name, 1.0), (B.ollama_name, 0.0)):
        assert {area: (r.score, r.n) for area, r in measured[model].items()} == {
            "math": (score, 4),
            "code": (score, 4),
        }
    # All of an area's prompts where it has fewer than N, never one of the held half.
    whole = profiled_replay.measured_areas(learn, [A], 100, 0, zeroeval_replay.AREAS)
    assert {area: r.n for area, r in whole[A.ollama_name].items()} == {
        "math": sum(p.label == "gsm" for p in learn),
        "code": sum(p.label == "crux" for p in learn),
    }
    # Without a label the area is the prompt's kind's, and a kind without one is none.
    assert profiled_replay.area_of(Prompt("Who wrote Hamlet?", {}), {}) == "knowledge"
    assert profiled_replay.area_of(Prompt(CODE, {}), {}) == "code"
    assert profiled_replay.area_of(Prompt("Summarize this text: the cat sat.", {}), {}) is None
    assert profiled_replay.area_of(Prompt(MATHS, {}, "crux"), zeroeval_replay.AREAS) == "code"


def test_the_profiles_reach_auto_through_the_store_the_registry_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A profile store written by the profiler's own writer and read by the registry
    (`Catalog.with_measured` on what it read), and `auto` held to the held half
    alone: the same half the unprofiled replay's feedback curves are held to."""
    prompts, learn = _prompts(learn_a=0.0, held_a=1.0, count=12)
    read: list[dict[str, dict[str, Measured]]] = []
    stored: list[dict[str, Any]] = []
    with_measured = Catalog.with_measured

    def spy(self: Catalog, results: Any) -> Catalog:
        read.append({m: dict(areas) for m, areas in results.items()})
        return with_measured(self, results)

    save = store.save

    def saved(path: Any, model: str, results: Any) -> Any:
        out = save(path, model, results)
        stored.append(json.loads(Path(path).read_text()))
        return out

    monkeypatch.setattr(Catalog, "with_measured", spy)
    monkeypatch.setattr(store, "save", saved)
    result = replay.in_loop(
        lambda: profiled_replay.replay_profiled(
            "two",
            artifact.SHIPPED.parent,
            prompts,
            [A, B],
            PROFILES,
            n=3,
            labels=zeroeval_replay.AREAS,
            trained_on=(),
            seed=0,
        )
    )
    # Measured on the learning half, where A scored nothing and B everything.
    expected = {
        A.ollama_name: {"math": 0.0, "code": 0.0},
        B.ollama_name: {"math": 1.0, "code": 1.0},
    }
    assert {
        m: {area: r.score for area, r in areas.items()} for m, areas in result.measured.items()
    } == expected
    entry = {"n": 3, "suite_version": "replay-3", "date": "", "backend": "replay"}
    assert stored[-1] == {
        m: {area: {"score": score, **entry} for area, score in areas.items()}
        for m, areas in expected.items()
    }
    # What the registry read from that file: each score with its number of items.
    assert {
        m: {a: Measured(s, 3) for a, s in areas.items()} for m, areas in expected.items()
    } in read
    # Beside them, each model's mean on every held-half item of each area.
    assert {m: {a: r.score for a, r in areas.items()} for m, areas in result.held.items()} == {
        A.ollama_name: {"math": 1.0, "code": 1.0},
        B.ollama_name: {"math": 0.0, "code": 0.0},
    }
    table = profiled_replay.measured_table(result, ())
    assert f"  code: the held half's best ({A.ollama_name}, 1.00 on " in table
    assert "placed 2 of 2 by the measured areas" in table
    assert "measured - held half's mean: 1.000 on average" in table
    # Both held to the held half, which only B was right on, never to the other half.
    held = replay.halves(prompts, 0)[1]
    for shown in (result.unprofiled, result.profiled):
        assert shown.prompts == len(held) == len(prompts) - len(learn)
        assert shown.baselines["best single"].picks == {A.ollama_name: 1}
        assert shown.baselines["best single"].quality == 1.0
    # The profiles say B is right on both areas: auto then sends every prompt to B.
    assert result.profiled.profiles["best"].picks == {B.ollama_name: len(held)}
    assert result.profiled.profiles["best"].quality == 0.0
    assert "held half, profiled (3 per area)" in result.profiled.label


def test_the_held_half_is_the_one_the_feedback_curves_are_held_to() -> None:
    prompts, _ = _prompts(learn_a=0.5, held_a=1.0, count=12)

    def run(**kwargs: Any) -> replay.FleetResult:
        return replay.in_loop(
            lambda: replay.replay_fleet(
                "two", artifact.SHIPPED.parent, prompts, [A, B], PROFILES, seed=0, **kwargs
            )
        )

    curves = run(feedback=replay.online_learner, passes=0)
    held = run(held_only=True)
    assert held.profiles["best"].quality == curves.curves["best"][0]
    assert held.baselines["best single"].quality == curves.half_best


def test_the_replay_prints_the_held_half_without_and_with_profiles(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--models", "llama3:8b,qwen2:7b", "--limit", "40", "--passes", "1", "--profiled", "5"]
    assert zeroeval_replay.main(argv) == 0
    out = capsys.readouterr().out
    assert "closer to an upper bound of what the shipped 50-prompt suite gives" in out
    assert "profiled areas, measured (catalogue's):" in out
    assert "    llama3:8b: math " in out
    label = "ZeroEval fleet of your choice (gsm, math-l5, crux), held half"
    assert f"{label}, unprofiled: 2 models (2 unseen in training), 20 prompts" in out
    assert f"{label}, profiled (5 per area): 2 models (2 unseen in training), 20 prompts" in out
    assert "auto:best with feedback (2nd half, passes 0..1)" in out
    for bad in ("0", "-3", "ten"):
        with pytest.raises(SystemExit) as exited:
            zeroeval_replay.main([*argv[:-1], bad])
        assert exited.value.code == 2


def test_an_area_the_held_half_lacks_is_left_out_of_the_placements() -> None:
    """A small draw can put every item of an area in the learning half: the measured
    areas then have it and the held half's means do not."""
    empty = replay.FleetResult("two", [], [], 0, {}, {})

    def areas(**scores: float) -> dict[str, store.AreaResult]:
        return {a: store.AreaResult(s, 1, "replay-1", "", "replay") for a, s in scores.items()}

    result = profiled_replay.ProfiledResult(
        empty,
        empty,
        measured={"a:7b": areas(math=1.0, code=0.0), "b:7b": areas(math=0.0, code=1.0)},
        published={"a:7b": {"math": 0.5, "code": 0.5}, "b:7b": {"math": 0.4, "code": 0.6}},
        held={"a:7b": areas(math=1.0), "b:7b": areas(math=0.0)},
    )
    table = profiled_replay.measured_table(result, ())
    assert "  math: the held half's best (a:7b, 1.00 on 1 items) placed 1 of 2" in table
    assert "  code:" not in table


def test_the_rules_choose_which_models_of_a_fleet_are_profiled() -> None:
    fleet_ = fleet(["llama3:8b", "qwen2:7b", "gemma2:9b", "yi:9b", "phi3.5:3.8b"])
    names = [spec.ollama_name for spec in fleet_]
    trained_on = ("qwen2:7b", "gemma2:9b")
    doubt = {"llama3:8b": 0.1, "qwen2:7b": 0.0, "gemma2:9b": 0.5, "yi:9b": 0.5, "phi3.5:3.8b": 0.3}

    def chosen(which: str, seed: int = 0) -> tuple[str, ...]:
        return profiled_replay.profiled_models(which, fleet_, trained_on, doubt, seed)

    assert chosen("all") == tuple(names)
    assert chosen("unseen") == ("llama3:8b", "yi:9b", "phi3.5:3.8b")
    # The half rounded up with the highest uncertainty, in the fleet's order.
    assert chosen("uncertain") == ("gemma2:9b", "yi:9b", "phi3.5:3.8b")
    drawn = {chosen("random", seed) for seed in range(8)}
    assert all(len(d) == 3 and set(d) <= set(names) for d in drawn)
    assert len(drawn) > 1
    assert chosen("random", 3) == chosen("random", 3)
    with pytest.raises(ValueError, match="'some'"):
        chosen("some")


def test_only_the_chosen_models_profiles_reach_the_catalogue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With A trained on and only the unseen profiled, the store holds B's areas alone:
    the catalogue `auto` places by blends B's areas with its measured shares and
    leaves A's as published, though both were measured."""
    prompts, _ = _prompts(learn_a=0.0, held_a=1.0, count=12)
    blended: list[tuple[Catalog, Catalog]] = []
    with_measured = Catalog.with_measured

    def spy(self: Catalog, results: Any) -> Catalog:
        out = with_measured(self, results)
        if results:
            blended.append((self, out))
        return out

    monkeypatch.setattr(Catalog, "with_measured", spy)
    result = replay.in_loop(
        lambda: profiled_replay.replay_profiled(
            "two",
            artifact.SHIPPED.parent,
            prompts,
            [A, B],
            PROFILES,
            n=3,
            labels=zeroeval_replay.AREAS,
            trained_on=(A.ollama_name,),
            seed=0,
            which="unseen",
        )
    )
    assert result.profiled_models == (B.ollama_name,)
    assert set(result.measured) == {A.ollama_name, B.ollama_name}
    assert blended
    for base, out in blended:
        assert out.lookup(A.ollama_name).areas == base.lookup(A.ollama_name).areas
        assert out.lookup(B.ollama_name).areas != base.lookup(B.ollama_name).areas
    assert "unseen models only" in result.profiled.label
    table = profiled_replay.measured_table(result, (A.ollama_name,))
    rows = {
        line.split(": ")[0].strip(): line for line in table.splitlines() if line.startswith("    ")
    }
    assert rows[A.ollama_name].endswith("[artifact trained on it] [not profiled]")
    assert rows[B.ollama_name].startswith(f"    {B.ollama_name}: math 1.00")
    assert "[" not in rows[B.ollama_name]


def test_profile_only_is_one_option_of_every_replay() -> None:
    parsed = fleet_replay.parser("replay", [A, B], limit=None)
    args = parsed.parse_args(["--profiled", "10", "--profile-only", "uncertain"])
    assert fleet_replay.profiled_of(parsed, args) == fleet_replay.Profiling(10, "uncertain")
    assert fleet_replay.profiled_of(parsed, parsed.parse_args(["--profiled", "10"])) == (
        fleet_replay.Profiling(10, "all")
    )
    assert fleet_replay.profiled_of(parsed, parsed.parse_args([])) is None
    with pytest.raises(SystemExit):
        parsed.parse_args(["--profiled", "10", "--profile-only", "some"])


def test_profile_only_without_profiled_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    parsed = fleet_replay.parser("replay", [A, B], limit=None)
    with pytest.raises(SystemExit):
        fleet_replay.profiled_of(parsed, parsed.parse_args(["--profile-only", "unseen"]))
    assert "--profile-only: only with --profiled N" in capsys.readouterr().err


def test_a_replay_scores_with_the_artifact_it_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--artifact DIR`: the replay's `auto` scores with that artifact, and its fleet's
    unseen models are those that artifact was not fitted on."""
    parsed = fleet_replay.parser("replay", [A, B], limit=None)
    assert parsed.parse_args([]).artifact == artifact.SHIPPED.parent
    assert parsed.parse_args(["--artifact", str(tmp_path)]).artifact == tmp_path
    meta = json.loads(artifact.SHIPPED.with_suffix(".json").read_text())
    (tmp_path / "selector.json").write_text(json.dumps({**meta, "trained_on": [A.ollama_name]}))
    (tmp_path / "selector.onnx").write_bytes(artifact.SHIPPED.read_bytes())
    given = fleet_replay.Shipped.load(tmp_path)
    assert given.trained_on == [A.ollama_name]
    assert f"artifact ({tmp_path}) trained on: {A.ollama_name}" in given.header()
    prompts, _ = _prompts(learn_a=1.0, held_a=1.0, count=4)
    result = given.print_replay("two", [A, B], prompts, passes=0, seed=0)
    assert result.unseen == [B.ollama_name]
    assert "1 unseen in training" in capsys.readouterr().out
    # Its scores are the given artifact's: one that cannot be loaded is refused.
    (tmp_path / "selector.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=str(tmp_path)):
        given.print_replay("two", [A, B], prompts, passes=0, seed=0)

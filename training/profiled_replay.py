"""A fleet replayed as if its operator had profiled every model of it (`--profiled N`),
or only some of them (`--profile-only`, `profiled_models`).

Per model and capability area, the measured score is its mean outcome on N items of
that area drawn from the half a feedback replay learns from (`replay.halves`), written
with the profile store's own writer and read by the registry as an operator's profiles
are; `auto` is then shown on the other half, without and with the profiles. The items
stand in for the profiling suite and come from the held half's distribution, so this is
closer to an upper bound of what the shipped suite gives than a measurement of it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from proxy.backends import BackendPool
from proxy.config_selector import Profile, Selector
from proxy.registry import Registry
from selector_model.catalog.knowledge import AREAS
from selector_model.profiling import store
from training.data import Prompt
from training.models import ModelSpec
from training.replay import (
    FeedbackFactory,
    FleetResult,
    fleet_models,
    halves,
    prompt_kind,
    replay_config,
    replay_fleet,
)

# The capability area a prompt's kind stands for where its dataset's label names none;
# prompts of the other kinds (writing, chat, other) leave every area unmeasured.
AREA_OF_KIND = {"code": "code", "math": "math", "reasoning": "reasoning", "knowledge": "knowledge"}


def area_of(prompt: Prompt, labels: Mapping[str, str]) -> str | None:
    """The capability area `prompt` counts for when a fleet is profiled: the one its
    dataset's label maps to in `labels`, else its kind's (`AREA_OF_KIND`), else none."""
    if prompt.label in labels:
        return labels[prompt.label]
    return AREA_OF_KIND.get(prompt_kind(prompt))


def measured_areas(
    learn: Sequence[Prompt],
    fleet: Sequence[ModelSpec],
    n: int,
    seed: int,
    labels: Mapping[str, str],
) -> dict[str, dict[str, store.AreaResult]]:
    """What profiling each model of `fleet` would store, with `learn` standing in for
    the suite: per area (`area_of`), `n` of `learn`'s prompts of that area drawn with
    `seed` (all of them where there are fewer), the same ones for every model as the
    suite's are, and each model's mean score on them."""
    by_area: dict[str, list[Prompt]] = {}
    for prompt in learn:
        area = area_of(prompt, labels)
        if area is not None:
            by_area.setdefault(area, []).append(prompt)
    rng = np.random.default_rng(seed)
    suite: dict[str, list[Prompt]] = {}
    for area in (a for a in AREAS if a in by_area):
        found = by_area[area]
        picked = rng.choice(len(found), size=min(n, len(found)), replace=False)
        suite[area] = [found[i] for i in sorted(picked)]
    return {
        spec.ollama_name: {
            area: store.AreaResult(
                score=float(np.mean([p.scores[spec.dataset_name] for p in drawn])),
                n=len(drawn),
                suite_version=f"replay-{n}",
                date="",
                backend="replay",
            )
            for area, drawn in suite.items()
        }
        for spec in fleet
    }


# Which models of a fleet its operator profiles (`--profile-only`; `profiled_models`).
WHICH = ("all", "unseen", "uncertain", "random")


def profiled_models(
    which: str,
    fleet: Sequence[ModelSpec],
    trained_on: Sequence[str],
    uncertainty: Mapping[str, float],
    seed: int,
) -> tuple[str, ...]:
    """The Ollama names of `fleet`'s models profiled under `which` (`WHICH`), in the
    fleet's order: every one ("all"); those the artifact was not fitted on ("unseen"),
    the models an operator has just pulled and the catalogue knows least; the half
    (rounded up) with the highest catalogue `uncertainty`, ties kept in the fleet's
    order ("uncertain"): those it places from details alone or imputes most; or a
    half (rounded up) drawn with `seed` ("random")."""
    names = [spec.ollama_name for spec in fleet]
    half = (len(names) + 1) // 2
    if which == "all":
        chosen = set(names)
    elif which == "unseen":
        chosen = set(names) - set(trained_on)
    elif which == "uncertain":
        chosen = set(sorted(names, key=lambda name: -uncertainty[name])[:half])
    elif which == "random":
        picked = np.random.default_rng(seed).choice(len(names), size=half, replace=False)
        chosen = {names[i] for i in picked}
    else:
        raise ValueError(f"{which!r}: one of {', '.join(WHICH)}")
    return tuple(name for name in names if name in chosen)


def profiled_selector(
    selector: Selector | None,
    measured: Mapping[str, Mapping[str, store.AreaResult]],
    directory: Path,
) -> Selector:
    """`selector` with its profile store a new file in `directory` holding `measured`,
    written by the profiler's own writer (`store.save`): the registry reads it as it
    reads an operator's profiled models, and the catalogue it places models by takes
    the measured areas over the published ones (`Registry.catalogue`)."""
    path = directory / "profiles.json"
    for model, areas in measured.items():
        store.save(path, model, areas)
    return replace(selector or Selector(), profiles_path=str(path))


@dataclass
class ProfiledResult:
    """One fleet replayed as if its operator had profiled every model of it: `auto`
    on the held half without the profiles and with them, and what was measured."""

    unprofiled: FleetResult
    profiled: FleetResult
    # What profiling would measure for every model of the fleet; only those of
    # `profiled_models` reach the store.
    measured: dict[str, dict[str, store.AreaResult]]
    # Each model's areas as the configured catalogue places it (what the profiles
    # replace), and its mean on every held-half item of each measured area (what the
    # measured areas estimate).
    published: dict[str, dict[str, float]]
    held: dict[str, dict[str, store.AreaResult]]
    profiled_models: tuple[str, ...] | None = None


def replay_profiled(
    label: str,
    artifact_dir: Path,
    prompts: Sequence[Prompt],
    fleet: Sequence[ModelSpec],
    profiles: Mapping[str, Profile],
    *,
    n: int,
    labels: Mapping[str, str],
    cost_kind: str = "params",
    trained_on: Sequence[str] = (),
    feedback: FeedbackFactory | None = None,
    passes: int = 3,
    seed: int = 0,
    selector: Selector | None = None,
    which: str = "all",
) -> ProfiledResult:
    """`replay_fleet` on the held half of `prompts` (`halves` with `seed`: the one the
    unprofiled replay's feedback curves are held to), once as configured (no feedback)
    and once with the models `which` names (`profiled_models`) profiled on `n` prompts
    per area of the learning half (`measured_areas`; with `feedback`'s curves), so the
    held half stays unseen; the others keep the catalogue's areas."""
    learn, held = halves(prompts, seed)
    measured = measured_areas(learn, fleet, n, seed, labels)
    common: dict[str, Any] = {
        "cost_kind": cost_kind,
        "trained_on": trained_on,
        "passes": passes,
        "seed": seed,
        "held_only": True,
    }
    unprofiled = replay_fleet(
        f"{label}, held half, unprofiled",
        artifact_dir,
        prompts,
        fleet,
        profiles,
        selector=selector,
        **common,
    )
    described = fleet_models(
        Registry(BackendPool(replay_config(artifact_dir, profiles, selector))), fleet
    )
    published = {
        name: dict(zip(AREAS, info.candidate.areas, strict=True)) if info.candidate.areas else {}
        for name, info in described.items()
    }
    chosen = profiled_models(
        which,
        fleet,
        trained_on,
        {name: info.candidate.uncertainty for name, info in described.items()},
        seed,
    )
    only = "" if which == "all" else f", {which} models only"
    with tempfile.TemporaryDirectory() as tmp:
        profiled = replay_fleet(
            f"{label}, held half, profiled ({n} per area{only})",
            artifact_dir,
            prompts,
            fleet,
            profiles,
            selector=profiled_selector(selector, {m: measured[m] for m in chosen}, Path(tmp)),
            feedback=feedback,
            **common,
        )
    everything = measured_areas(held, fleet, len(held), seed, labels)
    return ProfiledResult(unprofiled, profiled, measured, published, everything, chosen)


def measured_table(result: ProfiledResult, trained_on: Sequence[str]) -> str:
    """Each model's measured areas beside the catalogue's (published or imputed); then
    per area how the measured areas and the catalogue's place the model with the best
    mean on the held half's items of that area (`auto:best` follows the top one), and
    how far the measured areas are from those means."""
    lines = ["  profiled areas, measured (catalogue's):"]
    for model, areas in result.measured.items():
        known = result.published[model]
        shown = ", ".join(
            f"{a} {r.score:.2f} ({known[a]:.2f})" if a in known else f"{a} {r.score:.2f} (-)"
            for a, r in areas.items()
        )
        seen = " [artifact trained on it]" if model in trained_on else ""
        left = result.profiled_models is not None and model not in result.profiled_models
        lines.append(f"    {model}: {shown}{seen}{' [not profiled]' if left else ''}")
    models = list(result.measured)
    # An area whose every item fell in the learning half has no mean on the held half.
    for area in (
        a for a in next(iter(result.measured.values()), {}) if a in result.held[models[0]]
    ):
        held = {m: result.held[m][area].score for m in models}
        top = max(models, key=lambda m: held[m])
        measured = {m: result.measured[m][area].score for m in models}
        published = {m: result.published[m].get(area, 0.0) for m in models}
        error = np.mean([abs(measured[m] - held[m]) for m in models])
        lines.append(
            f"  {area}: the held half's best ({top}, {held[top]:.2f} on "
            f"{result.held[top][area].n} items) placed {_place(top, measured)} of "
            f"{len(models)} by the measured areas, {_place(top, published)} by the "
            f"catalogue's; measured - held half's mean: {error:.3f} on average"
        )
    return "\n".join(lines)


def _place(model: str, scores: Mapping[str, float]) -> int:
    """Where `scores` rank `model`: 1 + the models scored above it (a tie is not)."""
    return 1 + sum(score > scores[model] for score in scores.values())

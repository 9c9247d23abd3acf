"""`autoroute evaluate`: a dataset replayed through the proxy's own decision code.

Each prompt is sent, as `/api/chat` with `"model": "auto:<profile>"`, to the proxy's
`AutoRouter.decide` over a fleet of models described as Ollama describes them
(`/api/tags` details and `/api/show`, turned into candidates by `proxy.registry`, the
catalogue's knowledge attached as in serving); the score the dataset recorded for the
chosen model on that prompt is what the client got. Nothing is re-implemented here:
features, hard filters, scoring, expected seconds and the policy are the proxy's.

Against the same fleet and prompts:

- best single: the one model with the best mean score (ties: the cheaper);
- always-largest: the model with the most parameters (ties: the better);
- random: a uniform choice among the fleet (its expected score and cost);
- oracle: per prompt the cheapest model among those with the prompt's best score.

Cost of an answer (`COST_DEFINITIONS`): by default the chosen model's active
parameters in billions (what each generated token runs through, so roughly its GPU
time); `price` uses the dataset's $ per million tokens where it has them.

With a feedback hook (`Feedback`), the prompts are halved: passes over the first half
call the hook with (request body, chosen model, outcome) after each decision, and after
every pass the second half is replayed without feedback, giving the learning curve;
beside it, what learning per kind of prompt from every outcome of the first half could
reach on the second (`ceilings`), which tells a learner's shortfall from the halves'.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import math
import random
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import orjson

from proxy.auto import AutoRouter
from proxy.backends import BackendPool
from proxy.config import Config
from proxy.config_selector import Profile, Selector
from proxy.config_serving import Backend
from proxy.registry import ModelInfo, Registry
from selector_model import features
from selector_model.kind import kind_of
from selector_model.policy import margin_of, top_two
from training import export
from training.data import Dataset, Example, Prompt, dataset_examples
from training.models import ModelSpec
from training.train import TrainConfig, train

T = TypeVar("T")
PROFILES = ("fast", "balanced", "best")
COST_DEFINITIONS = {
    "params": "cost of an answer = the chosen model's active parameters in billions "
    "(what each generated token runs through); shares are relative to the best single "
    "model's",
    "price": "cost of an answer = the chosen model's price in $ per million tokens "
    "(LLMRouter's default_llm.json); shares are relative to the best single model's",
}
# Called after each decision of a feedback pass with the request body, the model the
# decision chose and the outcome (the dataset's score for it, in [0, 1]).
Feedback = Callable[[Mapping[str, Any], str, float], None]
# Makes a `Feedback` for one AutoRouter (whatever store the router learns from).
FeedbackFactory = Callable[[AutoRouter], Feedback]


@dataclass(frozen=True)
class FleetModel:
    """One model of a fleet: what Ollama reports of it, its dataset column, its cost."""

    spec: ModelSpec

    @property
    def name(self) -> str:
        return self.spec.ollama_name


def in_loop(run: Callable[[], T]) -> T:
    """`run()` inside an event loop: the proxy's backend pool belongs to one (its
    connections are never opened here)."""

    async def call() -> T:
        return run()

    return asyncio.run(call())


def body_of(prompt: Prompt, profile: str) -> dict[str, Any]:
    """A dataset prompt as a client sends it (the request training reads, see
    `training.data.prompt_request`)."""
    return {
        "model": f"auto:{profile}",
        "messages": [{"role": "user", "content": prompt.text}],
    }


def profiles_of(selector: Selector) -> dict[str, Profile]:
    """The profiles a replay reports: the three documented ones first, in this order,
    when configured, then every other the configuration names."""
    profiles = selector.profiles
    ordered = [p for p in PROFILES if p in profiles]
    return {p: profiles[p] for p in ordered + [p for p in profiles if p not in ordered]}


def replay_config(
    artifact_dir: Path, profiles: Mapping[str, Profile], selector: Selector | None = None
) -> Config:
    """A proxy's configuration with `artifact_dir`'s artifact, `profiles`, one backend
    that is never contacted, and the rest of `selector` (a configuration's: learning,
    min_gain, the catalogue, the user's model descriptions and profiled results) but
    its experiments and idle-time profiling."""
    base = Config(backends=(Backend(url="http://127.0.0.1:9"),))
    return replace(
        base,
        selector=replace(
            selector or base.selector,
            artifact=str(artifact_dir / export.ONNX_FILE),
            profiles=dict(profiles),
            experiments={},
            profile_models=(),
        ),
    )


def fleet_models(registry: Registry, fleet: Sequence[ModelSpec]) -> dict[str, ModelInfo]:
    """`fleet` as `registry` describes it: placed by the catalogue the proxy reads under
    the registry's configuration (`Registry.catalogue`)."""
    catalog = registry.catalogue()
    return {spec.ollama_name: spec.model_info(catalog) for spec in fleet}


def router_for(
    artifact_dir: Path,
    fleet: Sequence[ModelSpec],
    profiles: Mapping[str, Profile],
    seed: int,
    selector: Selector | None = None,
) -> AutoRouter:
    """The proxy's AutoRouter under `replay_config`, with the fleet as its one
    backend's models, all loaded (a warm fleet: no load time in expected seconds)."""
    config = replay_config(artifact_dir, profiles, selector)
    pool = BackendPool(config)
    registry = Registry(pool)
    models = fleet_models(registry, fleet)
    registry.set_models(models)
    pool.states[0].models = frozenset(models)
    pool.states[0].loaded = frozenset(models)
    router = AutoRouter(config, pool, registry)
    if not router.scorer.reload():
        raise ValueError(f"artifact {artifact_dir}: {router.scorer.error}")
    router.rng = np.random.default_rng(seed)
    return router


@dataclass
class Outcome:
    quality: float
    cost: float
    picks: dict[str, int] = field(default_factory=dict)


def mean_outcome(
    prompts: Sequence[Prompt], chosen: Sequence[ModelSpec], cost: Mapping[str, float]
) -> Outcome:
    picks: dict[str, int] = {}
    for spec in chosen:
        picks[spec.ollama_name] = picks.get(spec.ollama_name, 0) + 1
    return Outcome(
        quality=float(
            np.mean([p.scores[s.dataset_name] for p, s in zip(prompts, chosen, strict=True)])
        ),
        cost=float(np.mean([cost[s.ollama_name] for s in chosen])),
        picks=picks,
    )


def halves(prompts: Sequence[Prompt], seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """The prompts a feedback replay learns on and the ones it is then held to: a
    random half each, drawn with `seed`."""
    order = np.random.default_rng(seed).permutation(len(prompts))
    return (
        [prompts[i] for i in order[: len(prompts) // 2]],
        [prompts[i] for i in order[len(prompts) // 2 :]],
    )


def prompt_kind(prompt: Prompt) -> str:
    """The kind (`selector_model.kind`) of `prompt` as a client sends it."""
    return kind_of(features.request_features("/api/chat", body_of(prompt, "best")))


def decide_all(
    router: AutoRouter,
    prompts: Sequence[Prompt],
    fleet: Sequence[ModelSpec],
    profile: str,
    feedback: Feedback | None = None,
) -> list[ModelSpec]:
    """The model `auto:<profile>` chooses for each prompt (and the outcome fed back)."""
    by_name = {spec.ollama_name: spec for spec in fleet}
    chosen = []
    for prompt in prompts:
        body = body_of(prompt, profile)
        spec = by_name[router.decide("/api/chat", body, profile).decision.chosen]
        if feedback is not None:
            feedback(body, spec.ollama_name, prompt.scores[spec.dataset_name])
        chosen.append(spec)
    return chosen


def costs(
    fleet: Sequence[ModelSpec], kind: str, described: Mapping[str, ModelInfo]
) -> dict[str, float]:
    """Each model's cost of an answer (`COST_DEFINITIONS`); `described`: the fleet as
    the replay's router has it (`fleet_models`)."""
    if kind == "price":
        return {s.ollama_name: s.price_per_m for s in fleet}
    return {s.ollama_name: described[s.ollama_name].candidate.active_b for s in fleet}


def baselines(
    prompts: Sequence[Prompt],
    fleet: Sequence[ModelSpec],
    cost: Mapping[str, float],
    described: Mapping[str, ModelInfo],
) -> dict[str, Outcome]:
    y = np.array([[p.scores[s.dataset_name] for s in fleet] for p in prompts])
    c = np.array([cost[s.ollama_name] for s in fleet])
    means = y.mean(axis=0)
    best = min(range(len(fleet)), key=lambda i: (-means[i], c[i]))
    params = [described[s.ollama_name].candidate.params_b for s in fleet]
    largest = min(range(len(fleet)), key=lambda i: (-params[i], -means[i]))
    top = y.max(axis=1, keepdims=True)
    oracle = np.where(y >= top - 1e-12, c[None, :], np.inf).argmin(axis=1)
    return {
        "best single": Outcome(float(means[best]), float(c[best]), {fleet[best].ollama_name: 1}),
        "always-largest": Outcome(
            float(means[largest]), float(c[largest]), {fleet[largest].ollama_name: 1}
        ),
        "random": Outcome(float(y.mean()), float(c.mean())),
        "oracle": Outcome(float(top.mean()), float(c[oracle].mean())),
    }


@dataclass
class FleetResult:
    """One fleet's replay: every profile and baseline, and the learning curves."""

    label: str
    fleet: list[str]
    unseen: list[str]
    prompts: int
    profiles: dict[str, Outcome]
    baselines: dict[str, Outcome]
    # Per profile: quality on the evaluation half after 0, 1, ... feedback passes.
    curves: dict[str, list[float]] = field(default_factory=dict)
    # The best single model's quality on that half (what the curves are held to).
    half_best: float | None = None
    # What learning from the first half can reach on the second (`ceilings`).
    ceilings: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, Outcome]]:
        return [*((f"auto:{p}", o) for p, o in self.profiles.items()), *self.baselines.items()]


def replay_fleet(
    label: str,
    artifact_dir: Path,
    prompts: Sequence[Prompt],
    fleet: Sequence[ModelSpec],
    profiles: Mapping[str, Profile],
    *,
    cost_kind: str = "params",
    trained_on: Sequence[str] = (),
    feedback: FeedbackFactory | None = None,
    passes: int = 3,
    seed: int = 0,
    selector: Selector | None = None,
    held_only: bool = False,
) -> FleetResult:
    """`auto`'s profiles and the baselines on `prompts`, or with `held_only` on the
    half of them a feedback replay is held to (`halves` with `seed`), and with
    `feedback` its curves on that half."""
    described = fleet_models(
        Registry(BackendPool(replay_config(artifact_dir, profiles, selector))), fleet
    )
    cost = costs(fleet, cost_kind, described)
    learn, held = halves(prompts, seed)
    shown = held if held_only else prompts
    result = FleetResult(
        label=label,
        fleet=[s.ollama_name for s in fleet],
        unseen=[s.ollama_name for s in fleet if s.ollama_name not in trained_on],
        prompts=len(shown),
        profiles={},
        baselines=baselines(shown, fleet, cost, described),
    )
    for profile in profiles:
        router = router_for(artifact_dir, fleet, profiles, seed, selector)
        chosen = decide_all(router, shown, fleet, profile)
        result.profiles[profile] = mean_outcome(shown, chosen, cost)
        if feedback is None:
            continue
        result.half_best = baselines(held, fleet, cost, described)["best single"].quality
        result.ceilings = result.ceilings or ceilings(learn, held, fleet, cost)
        router = router_for(artifact_dir, fleet, profiles, seed, selector)
        hook = feedback(router)
        curve = [mean_outcome(held, decide_all(router, held, fleet, profile), cost).quality]
        for _ in range(passes):
            decide_all(router, learn, fleet, profile, hook)
            curve.append(mean_outcome(held, decide_all(router, held, fleet, profile), cost).quality)
        result.curves[profile] = curve
    return result


CEILINGS = {
    "kind": "the best model of each kind on the 1st half",
    "single": "the best single model of the 1st half",
    "kind-there": "the best model of each kind on the 2nd half itself",
}


def ceilings(
    learn: Sequence[Prompt],
    held: Sequence[Prompt],
    fleet: Sequence[ModelSpec],
    cost: Mapping[str, float],
) -> dict[str, float]:
    """What learning per kind of prompt can reach on the `held` half from every
    outcome of every model on the `learn` half (more than feedback gives: a rating for
    the chosen model alone), by `CEILINGS`' key: for each kind (`selector_model.kind`,
    read from the prompt as sent), the model with the best mean score on `learn`
    (ties: the cheaper; a kind `learn` lacks: the best single model of `learn`)
    applied to `held`; the best single model of `learn` applied to `held`; and for
    each kind the best model on `held` itself, the most any one model per kind gets.
    Where the first is below the best single model of `held`, the halves differ by
    more than a per-kind learner can make up."""
    c = np.array([cost[s.ollama_name] for s in fleet])

    def best(prompts: Sequence[Prompt]) -> int:
        means = np.array([[p.scores[s.dataset_name] for s in fleet] for p in prompts]).mean(0)
        return min(range(len(fleet)), key=lambda i: (-means[i], c[i]))

    def kinds(prompts: Sequence[Prompt]) -> dict[str, list[Prompt]]:
        out: dict[str, list[Prompt]] = {}
        for p in prompts:
            out.setdefault(prompt_kind(p), []).append(p)
        return out

    single = best(learn)
    learned = {kind: best(ps) for kind, ps in kinds(learn).items()}
    by_kind = kinds(held)

    def quality(pick: Callable[[str, list[Prompt]], int]) -> float:
        total = sum(
            p.scores[fleet[pick(kind, ps)].dataset_name] for kind, ps in by_kind.items() for p in ps
        )
        return float(total / len(held))

    return {
        "kind": quality(lambda kind, _: learned.get(kind, single)),
        "single": quality(lambda _, __: single),
        "kind-there": quality(lambda _, ps: best(ps)),
    }


def online_learner(router: AutoRouter) -> Feedback:
    """The proxy's own online learning as the feedback: each recorded score is a rating
    (`POST /api/autoroute/feedback`) of the answer, counted into the router's evidence
    for the prompt's kind beside the P(success) the selector gave that model and its
    margin over the best other candidate's, as `proxy.learning` counts a rating."""

    def feed(body: Mapping[str, Any], model: str, score: float) -> None:
        rating = rating_of(router, body, model, score)
        if rating is not None:
            rating.add_to(router)

    return feed


# The share of the evidence's corrections `safe_learner`'s choices discount against the
# choice without evidence (`learning.baseline_discount`).
SAFE_DISCOUNT = 0.5


def safe_learner(router: AutoRouter) -> Feedback:
    """`online_learner`, with `router` leaving the choice without evidence only where
    the evidence, its corrections worth `1 - SAFE_DISCOUNT` of themselves, says the
    learned choice beats it (`learning.baseline_discount`, `posterior._improves`)."""
    learning = replace(router.config.learning, baseline_discount=SAFE_DISCOUNT)
    router.config = replace(router.config, learning=learning)
    return online_learner(router)


def once_per_prompt_learner(router: AutoRouter) -> Feedback:
    """`online_learner`, but an answer of a model to a prompt counts once: a later
    outcome of the same (prompt, model) replaces the earlier one in the evidence's sums
    rather than adding to them. Why: a prompt asked again (another feedback pass, an
    editor's repeated completion) and answered by the same model is no new evidence of
    how the model does on its kind; counted each time, it narrows the posterior as if
    it were."""
    counted: dict[tuple[bytes, str], Rating] = {}

    def feed(body: Mapping[str, Any], model: str, score: float) -> None:
        rating = rating_of(router, body, model, score)
        if rating is None:
            return
        key = (orjson.dumps(body["messages"]), model)
        previous = counted.get(key)
        if previous is not None:
            previous.add_to(router, weight=-1.0)
        rating.add_to(router)
        counted[key] = rating

    return feed


class Rating(NamedTuple):
    """One rated answer as `proxy.learning` counts it into the evidence."""

    kind: str
    model: str
    value: float
    prior: float
    margin: float

    def add_to(self, router: AutoRouter, weight: float = 1.0) -> None:
        """Adds the rating to `router`'s evidence (a negative weight takes it back)."""
        router.evidence.update(
            self.kind, self.model, self.value, self.prior, weight=weight, margin=self.margin
        )


def rating_of(
    router: AutoRouter, body: Mapping[str, Any], model: str, score: float
) -> Rating | None:
    """The rating `score` of `model`'s answer to `body`: the prompt's kind, the
    P(success) the selector gave the model and its margin over the best other
    candidate's, as `router` decides `body` now (None: a prompt of no kind)."""
    profile = str(body["model"]).partition(":")[2] or router.config.default_profile
    choice = router.decide("/api/chat", body, profile)
    ranking = choice.decision.ranking
    prior = next(s.p_success for s in ranking if s.name == model)
    kind = choice.decision.kind
    if kind is None:
        return None
    return Rating(kind, model, score, prior, margin_of(prior, top_two(ranking)))


def load_feedback(spec: str) -> FeedbackFactory:
    """`module:function`, a `FeedbackFactory` (e.g. the online learner's)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--feedback {spec!r}: expected module:function")
    factory: FeedbackFactory = getattr(importlib.import_module(module), name)
    return factory


def checked_feedback(spec: str) -> str:
    """`spec` when it loads (`load_feedback`), else an argparse error: a --feedback is
    checked before the replay's minutes, not after."""
    try:
        load_feedback(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{spec!r}: {exc}") from None
    return spec


# ---------------------------------------------------------------- held-out models


def fold_artifact(
    data: Dataset,
    kept: Sequence[ModelSpec],
    config: TrainConfig,
    out_dir: Path,
    extra: Sequence[Example] = (),
) -> Path:
    """Train on `kept`'s scores and `extra`'s rows only and write an artifact the proxy
    loads."""
    examples = dataset_examples(data.train, kept, config.uniform_weight) + list(extra)
    result = train(examples, config)
    n_features = len(features.feature_names())
    onnx_bytes = export.to_onnx(result.booster, n_features)
    export.parity(onnx_bytes, result.booster, result.val.x)
    learned = {m.ollama_name: m.candidate() for m in kept}
    for row in extra:
        learned.setdefault(row.candidate.name, row.candidate)
    created = datetime.now(UTC).replace(microsecond=0)
    meta = {
        "artifact_version": f"s{features.SCHEMA_VERSION}-fold-{created:%Y%m%dT%H%M%SZ}",
        "created": created.isoformat(),
        "schema_version": features.SCHEMA_VERSION,
        "onnx_file": export.ONNX_FILE,
        "input_name": export.INPUT_NAME,
        "output_name": export.OUTPUT_NAME,
        "success_column": export.SUCCESS_COLUMN,
        "feature_names": features.feature_names(),
        "known_models": [],
        "trained_on": list(learned),
        # Each model as training described it, as the shipped artifact records them
        # (serving scores them from it, `Artifact.as_learned`).
        "models": [c.to_record() for c in learned.values()],
        "policy": {"unseen_margin": 0.0},
    }
    export.write_artifact(out_dir, onnx_bytes, meta)
    return out_dir


def held_out_splits(models: Sequence[ModelSpec], k: int, splits: int, seed: int) -> list[list[int]]:
    """`splits` distinct random sets of `k` model indices."""
    rng = random.Random(seed)
    out: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    limit = math.comb(len(models), k)
    while len(out) < min(splits, limit):
        pick = tuple(sorted(rng.sample(range(len(models)), k)))
        if pick not in seen:
            seen.add(pick)
            out.append(list(pick))
    return out


def leave_k_out(
    data: Dataset,
    config: TrainConfig,
    profiles: Mapping[str, Profile],
    *,
    k: int,
    splits: int,
    seed: int = 0,
    cost_kind: str = "params",
    feedback: FeedbackFactory | None = None,
    passes: int = 3,
    log: Callable[[str], None] = lambda _: None,
    selector: Selector | None = None,
    extra: Callable[[Collection[str]], Sequence[Example]] = lambda _: (),
) -> list[FleetResult]:
    """Per split: an artifact trained without `k` models, replayed on the whole fleet
    (those `k` unseen) and on the held-out models alone (every candidate unseen).
    `extra(held)`: rows of other datasets trained on too, without the models named in
    `held` (the Ollama names of the split's held-out models)."""
    results = []
    for n, held in enumerate(held_out_splits(data.models, k, splits, seed)):
        kept = [m for i, m in enumerate(data.models) if i not in held]
        out = [m for i, m in enumerate(data.models) if i in held]
        names = ", ".join(m.ollama_name for m in out)
        log(f"split {n + 1}: training without {names}")
        with tempfile.TemporaryDirectory() as tmp:
            art = fold_artifact(data, kept, config, Path(tmp), extra({m.ollama_name for m in out}))
            trained = [m.ollama_name for m in kept]
            for label, fleet in (
                (f"split {n + 1}: all 9", data.models),
                (f"split {n + 1}: held-out {k}", out),
            ):
                results.append(
                    replay_fleet(
                        label,
                        art,
                        data.test,
                        fleet,
                        profiles,
                        cost_kind=cost_kind,
                        trained_on=trained,
                        feedback=feedback,
                        passes=passes,
                        seed=seed,
                        selector=selector,
                    )
                )
    return results


# ---------------------------------------------------------------- printing and plot


def table(result: FleetResult) -> str:
    best = result.baselines["best single"]
    head = (
        f"{result.label}: {len(result.fleet)} models ({len(result.unseen)} unseen in "
        f"training), {result.prompts} prompts"
    )
    lines = [head, f"  {'':<16}{'quality':>8}{'cost':>9}{'cost/best':>10}{'vs best':>9}"]
    for name, o in result.rows():
        share = _share(o, best)
        lines.append(
            f"  {name:<16}{o.quality:>8.3f}{o.cost:>9.2f}{share:>10.2f}"
            f"{(o.quality - best.quality) * 100:>+8.1f}p"
        )
    for profile, curve in result.curves.items():
        lines.append(
            f"  auto:{profile} with feedback (2nd half, passes 0..{len(curve) - 1}): "
            + " ".join(f"{q:.3f}" for q in curve)
            + f" (best single there {result.half_best:.3f})"
        )
    if result.ceilings and result.half_best is not None:
        lines.append(
            "  ceiling on the 2nd half: "
            + ", ".join(
                f"{CEILINGS[k]} {q:.3f} ({(q - result.half_best) * 100:+.1f}p)"
                for k, q in result.ceilings.items()
            )
        )
    lines += [
        f"  target {'met   ' if t.met else 'MISSED'} {t.target}: {t.measured}"
        for t in targets(result)
    ]
    return "\n".join(lines)


class Target(NamedTuple):
    """One of issue 14's targets on one fleet: what it asks, what was measured, met."""

    target: str
    measured: str
    met: bool


def _share(o: Outcome, best: Outcome) -> float:
    """`o`'s cost as a multiple of the best single model's."""
    return o.cost / best.cost if best.cost else float("nan")


def targets(result: FleetResult) -> list[Target]:
    """Issue 14's targets for `auto` on one fleet: on the fleet the artifact was trained
    on, `auto:best` >= 0.62 at no more than the best single model's cost; on a fleet
    with models it never saw, without feedback `auto:best` >= best single - 2 points
    and >= always-largest, plain `auto` (balanced) >= best single - 3 points at <= 60%
    of its cost; after feedback, on the other half, `auto:best` >= best single there -
    1 point, and 5 points above its no-feedback figure there where that was more than 5
    below."""
    best = result.baselines["best single"]
    out: list[Target] = []
    top = result.profiles.get("best")
    if top is None:
        return out
    if not result.unseen:
        share = _share(top, best)
        out.append(
            Target(
                "auto:best >= 0.620 at <= 1.00x",
                f"{top.quality:.3f} at {share:.2f}x",
                top.quality >= 0.62 and share <= 1.0,
            )
        )
        return out
    largest = result.baselines["always-largest"]
    gap = (top.quality - best.quality) * 100
    out.append(Target("auto:best >= best single - 2p", f"{gap:+.1f}p", gap >= -2.0 - 1e-9))
    out.append(
        Target(
            "auto:best >= always-largest",
            f"{top.quality:.3f} vs {largest.quality:.3f}",
            top.quality >= largest.quality - 1e-9,
        )
    )
    plain = result.profiles.get("balanced")
    if plain is not None:
        gap = (plain.quality - best.quality) * 100
        share = _share(plain, best)
        out.append(
            Target(
                "auto >= best single - 3p at <= 0.60x",
                f"{gap:+.1f}p at {share:.2f}x",
                gap >= -3.0 - 1e-9 and share <= 0.60,
            )
        )
    curve = result.curves.get("best")
    if curve and result.half_best is not None:
        before = (curve[0] - result.half_best) * 100
        after = (curve[-1] - result.half_best) * 100
        out.append(
            Target(
                "auto:best after feedback >= best single - 1p",
                f"{after:+.1f}p",
                after >= -1.0 - 1e-9,
            )
        )
        if before < -5.0:
            gain = after - before
            out.append(
                Target("auto:best gains >= 5p with feedback", f"{gain:+.1f}p", gain >= 5.0 - 1e-9)
            )
    return out


def summary(results: Sequence[FleetResult], kind: str, over: str = "") -> str:
    """Means over the fleets whose label contains `kind`, with the worst gap; `over`
    names what they differ in when they are one fleet replayed several times (its
    seeds), else they are counted as fleets."""
    chosen = [r for r in results if kind in r.label]
    if not chosen:
        return ""
    names = [name for name, _ in chosen[0].rows()]
    unit = "replays" if over else "fleets"
    runs = f"{len(chosen)} {unit}" + (f" ({over})" if over else "")
    lines = [
        f"mean over {runs} ({kind}):",
        f"  {'':<16}{'quality':>8}{'cost/best':>10}{'vs best':>9}{'worst':>8}",
    ]
    for name in names:
        q, s, gap = [], [], []
        for r in chosen:
            o = dict(r.rows())[name]
            best = r.baselines["best single"]
            q.append(o.quality)
            s.append(_share(o, best))
            gap.append((o.quality - best.quality) * 100)
        lines.append(
            f"  {name:<16}{np.mean(q):>8.3f}{np.mean(s):>10.2f}{np.mean(gap):>+8.1f}p"
            f"{min(gap):>+7.1f}p"
        )
    met: dict[str, list[bool]] = {}
    for r in chosen:
        for t in targets(r):
            met.setdefault(t.target, []).append(t.met)
    for target, oks in met.items():
        lines.append(f"  target {target}: met in {sum(oks)} of {len(oks)} {unit}")
    for profile in chosen[0].curves:
        # On the evaluation half, against that half's best single model.
        before = [(r.curves[profile][0] - (r.half_best or 0.0)) * 100 for r in chosen]
        after = [(r.curves[profile][-1] - (r.half_best or 0.0)) * 100 for r in chosen]
        lines.append(
            f"  auto:{profile} vs best single on the 2nd half: no feedback "
            f"{np.mean(before):+.1f}p (worst {min(before):+.1f}p), after feedback "
            f"{np.mean(after):+.1f}p (worst {min(after):+.1f}p)"
        )
    for key, what in CEILINGS.items():
        reach = [(r.ceilings[key] - (r.half_best or 0.0)) * 100 for r in chosen if r.ceilings]
        if reach:
            lines.append(
                f"  ceiling vs best single on the 2nd half, {what}: "
                f"{np.mean(reach):+.1f}p (worst {min(reach):+.1f}p)"
            )
    return "\n".join(lines)


def to_json(results: Sequence[FleetResult], cost_kind: str) -> dict[str, Any]:
    return {
        "cost": COST_DEFINITIONS[cost_kind],
        "fleets": [
            {
                "label": r.label,
                "fleet": r.fleet,
                "unseen": r.unseen,
                "prompts": r.prompts,
                "rows": {n: o.__dict__ for n, o in r.rows()},
                "curves": r.curves,
                "curve_best_single": r.half_best,
            }
            for r in results
        ],
    }


def plot(results: Sequence[FleetResult], path: Path) -> Path:
    """Quality against cost share of each fleet (one panel per fleet, at most 6), and
    the learning curves when there are any; every element is in a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(results)[:6]
    curves = any(r.curves for r in shown)
    cols = len(shown) + (1 if curves else 0)
    fig, axes = plt.subplots(1, cols, figsize=(4.2 * cols, 4.0), squeeze=False)
    markers = {"auto:fast": "v", "auto:balanced": "o", "auto:best": "^"}
    for ax, r in zip(axes[0], shown, strict=False):  # the last axis holds the curves
        best = r.baselines["best single"]
        for name, o in r.rows():
            share = o.cost / best.cost if best.cost else 0.0
            ax.scatter(share, o.quality, marker=markers.get(name, "s"), label=name, s=40)
        ax.set_title(r.label, fontsize=9)
        ax.set_xlabel("cost / best single model's cost")
        ax.set_ylabel("quality (mean score)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")  # placed where it hides no point
    if curves:
        ax = axes[0][-1]
        for r in shown:
            for profile, curve in r.curves.items():
                ax.plot(range(len(curve)), curve, marker="o", label=f"{r.label} auto:{profile}")
        ax.set_title("with feedback: quality on the other half", fontsize=9)
        ax.set_xlabel("feedback passes")
        ax.set_ylabel("quality (mean score)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_json(results: Sequence[FleetResult], cost_kind: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(to_json(results, cost_kind), option=orjson.OPT_INDENT_2))
    return path

"""Quality against cost on the deduplicated LLMRouter test split, and leave-one-model-out.

The router picks, per prompt, argmax over candidates of

    utility(m) = P(success | prompt, m) - λ · cost(m) / max cost - margin · [m unseen]

for a sweep of λ. Quality is the mean score of the chosen models, cost the mean cost of
the choices (price in $/M tokens, or parameter count in billions). Definitions used in
the report:

- best single model: the one model with the highest test quality (ties: the cheaper);
- quality at the best single model's cost: the highest router quality among λ points
  whose mean cost is ≤ that model's cost;
- match cost: the lowest router cost among λ points whose quality is ≥ the best single
  model's quality, as a share of that model's cost;
- APGR: the area under the router's quality-cost step curve Q(c) (the best quality at
  cost ≤ c) between the cheapest single model's cost c₀ and the best single model's
  cost c₁, above the cheapest model's quality q₀, over the rectangle (q₁ - q₀)(c₁ - c₀):
  1 means the router is as good as the best model at the cheapest model's cost, 0 that
  it is no better than the cheapest model anywhere;
- AUC: ROC AUC of P(success) against score ≥ 0.5 over all test (prompt, model) rows;
- gain CI: a prompt bootstrap (2,000 resamples) of the router's quality at its best
  point within the best single model's cost minus that model's quality.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

from selector_model import artifact, features
from training.data import Dataset, Example, dataset_examples, prompt_request, score_matrix
from training.models import ModelSpec
from training.train import Progress, TrainConfig, predict, train

Array = npt.NDArray[np.float64]
Scorer = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]

LAMBDAS: tuple[float, ...] = (0.0, *(float(v) for v in np.geomspace(1e-3, 10.0, 120)))
BOOTSTRAP = 2000
LOMO_TOLERANCE = 0.01


@dataclass(frozen=True)
class Policy:
    """How serving turns P(success) into a choice. `unseen_margin` is subtracted from
    the utility of every candidate whose name is not among the artifact's known
    models (the safety rule for models the selector never saw); an artifact without
    names (schema 2) knows none, so it is 0: every candidate is scored alike."""

    unseen_margin: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "utility": "p_success - lambda * cost / max_cost - unseen_margin * unseen",
            "unseen_margin": self.unseen_margin,
            "unseen": "a candidate whose name is not in known_models (none since schema 2)",
            "lambda_units": "probability per max-cost among the candidates",
        }


# ---------------------------------------------------------------- scoring


def score_prompts(
    scorer: Scorer,
    requests: Sequence[list[float]],
    candidates: Sequence[features.Candidate],
) -> Array:
    """P(success) [prompts, candidates]."""
    width = len(features.feature_names())
    x = np.empty((len(requests) * len(candidates), width), dtype=np.float32)
    i = 0
    for request in requests:
        for row in features.rows(request, candidates):
            x[i] = row
            i += 1
    return scorer(x).astype(np.float64).reshape(len(requests), len(candidates))


def choose(p: Array, cost: Array, lam: float, penalty: Array) -> npt.NDArray[np.int64]:
    utility = p - lam * cost / cost.max() - penalty
    return np.asarray(np.argmax(utility, axis=1), dtype=np.int64)


@dataclass(frozen=True)
class Point:
    lam: float
    cost: float
    quality: float


def curve(p: Array, y: Array, cost: Array, penalty: Array | None = None) -> list[Point]:
    pen = np.zeros(p.shape[1]) if penalty is None else penalty
    rows = np.arange(len(y))
    out = []
    for lam in LAMBDAS:
        pick = choose(p, cost, lam, pen)
        out.append(Point(lam, float(cost[pick].mean()), float(y[rows, pick].mean())))
    return out


def step_quality(points: Sequence[Point], c: float, floor: float) -> float:
    best = [pt.quality for pt in points if pt.cost <= c + 1e-12]
    return max([floor, *best])


def apgr(points: Sequence[Point], c0: float, q0: float, c1: float, q1: float) -> float:
    if c1 <= c0 or q1 <= q0:
        return float("nan")
    knots = sorted({c0, c1, *(pt.cost for pt in points if c0 < pt.cost < c1)})
    area = 0.0
    for left, right in itertools.pairwise(knots):
        area += (step_quality(points, left, q0) - q0) * (right - left)
    return area / ((q1 - q0) * (c1 - c0))


def oracle(y: Array, cost: Array) -> tuple[float, float]:
    """Cheapest model among those with the prompt's best score."""
    best = y.max(axis=1, keepdims=True)
    masked = np.where(y >= best - 1e-12, cost[None, :], np.inf)
    pick = masked.argmin(axis=1)
    return float(cost[pick].mean()), float(best.mean())


def _bootstrap(gains: Array, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(gains), size=(BOOTSTRAP, len(gains)))
    means = gains[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def sign_test(differences: Array) -> dict[str, Any]:
    """Two-sided exact sign test of paired per-prompt differences (scores with partial
    credit, so not McNemar's 0/1 table): if neither side is better, a prompt on which
    they differ favours either with probability 1/2. Ties say nothing and are left out."""
    wins = int((differences > 1e-12).sum())
    losses = int((differences < -1e-12).sum())
    differing = wins + losses
    tail = sum(math.comb(differing, i) for i in range(min(wins, losses) + 1))
    p_value = min(1.0, 2 * tail / 2**differing) if differing else 1.0
    return {
        "test": "two-sided exact sign test over prompts",
        "wins": wins,
        "losses": losses,
        "ties": len(differences) - differing,
        "p_value": p_value,
    }


def _finite(v: float) -> float | None:
    return None if math.isnan(v) or math.isinf(v) else round(v, 6)


def summarize(
    p: Array, y: Array, cost: Array, names: Sequence[str], prior: Array, seed: int
) -> dict[str, Any]:
    """Router against every single model, random, size-only and the oracle."""
    singles = [
        {"model": n, "cost": float(c), "quality": float(q)}
        for n, c, q in zip(names, cost, y.mean(axis=0), strict=True)
    ]
    best_i = min(range(len(names)), key=lambda i: (-y[:, i].mean(), cost[i]))
    cheap_i = min(range(len(names)), key=lambda i: (cost[i], -y[:, i].mean()))
    q1, c1 = float(y[:, best_i].mean()), float(cost[best_i])
    q0, c0 = float(y[:, cheap_i].mean()), float(cost[cheap_i])
    points = curve(p, y, cost)
    within = [pt for pt in points if pt.cost <= c1 + 1e-12]
    at_best = max(within, key=lambda pt: (pt.quality, -pt.cost))
    matched = [pt.cost for pt in points if pt.quality >= q1 - 1e-12]
    rows = np.arange(len(y))
    pick = choose(p, cost, at_best.lam, np.zeros(len(names)))
    gains = y[rows, pick] - y[:, best_i]
    lo, hi = _bootstrap(gains, seed)
    # λ = 0 is how the auto:best profile chooses (cost weight 0): against the best
    # single model prompt by prompt.
    gains0 = y[rows, choose(p, cost, 0.0, np.zeros(len(names)))] - y[:, best_i]
    oc, oq = oracle(y, cost)
    return {
        "best_single": {"model": names[best_i], "cost": c1, "quality": q1},
        "cheapest_single": {"model": names[cheap_i], "cost": c0, "quality": q0},
        "router_lambda0": {"cost": points[0].cost, "quality": points[0].quality},
        "lambda0_vs_best": {
            "gain": float(gains0.mean()),
            "cost_share": points[0].cost / c1,
            **sign_test(gains0),
        },
        "quality_at_best_cost": at_best.quality,
        "lambda_at_best_cost": at_best.lam,
        "cost_at_best_cost_point": at_best.cost,
        "match_cost": min(matched) if matched else None,
        "match_cost_share": (min(matched) / c1) if matched else None,
        "apgr": _finite(apgr(points, c0, q0, c1, q1)),
        "gain_over_best": float(gains.mean()),
        "gain_ci95": [lo, hi],
        "singles": singles,
        "random": {"cost": float(cost.mean()), "quality": float(y.mean())},
        "size_only": [pt.__dict__ for pt in curve(prior, y, cost)],
        "oracle": {"cost": oc, "quality": oq, "cost_share": oc / c1},
        "router_curve": [pt.__dict__ for pt in points],
    }


def auc(p: Array, y: Array) -> float | None:
    labels = (y.ravel() >= 0.5).astype(int)
    if labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, p.ravel()))


def size_prior(models: Sequence[ModelSpec]) -> Array:
    """The size-only rule's score: log parameters scaled to [0, 1] (bigger is better)."""
    logs = np.log([m.params_b for m in models])
    span = logs.max() - logs.min()
    return (logs - logs.min()) / span if span > 0 else np.zeros(len(models))


def evaluate_scorer(
    scorer: Scorer,
    data: Dataset,
    seed: int = 0,
    learned: Mapping[str, features.Candidate] | None = None,
) -> dict[str, Any]:
    """`learned`: the models as a written artifact recorded them (`artifact.learned`),
    scored as serving scores them; None for an artifact trained on the catalogue now."""
    models = data.models
    candidates = [artifact.learned_description(m.candidate(), learned or {}) for m in models]
    requests = [prompt_request(p.text) for p in data.test]
    p = score_prompts(scorer, requests, candidates)
    y = score_matrix(data.test, models)
    names = [m.ollama_name for m in models]
    prior = np.tile(size_prior(models), (len(y), 1))
    price = np.array([m.price_per_m for m in models])
    params = np.array([m.params_b for m in models])
    return {
        "prompts": len(y),
        "dropped_test_prompts": data.dropped_test,
        "auc": auc(p, y),
        "price": summarize(p, y, price, names, prior, seed),
        "params": summarize(p, y, params, names, prior, seed),
    }


# ---------------------------------------------------------------- leave one model out


def lomo_fold(
    data: Dataset,
    held_out: ModelSpec,
    config: TrainConfig,
    policy: Policy,
    progress: Progress | None = None,
    extra: Callable[[Collection[str]], Sequence[Example]] = lambda _: (),
) -> dict[str, Any]:
    """Train without `held_out`'s rows (`extra(held)`: other datasets' rows, without the
    held-out model's); evaluate with it as an unseen candidate among all models, at
    λ = 0, with and without the safety margin."""
    kept = [m for m in data.models if m != held_out]
    examples = dataset_examples(data.train, kept, config.uniform_weight)
    result = train([*examples, *extra({held_out.ollama_name})], config, progress)
    models = data.models
    candidates = [m.candidate() for m in models]
    requests = [prompt_request(t.text) for t in data.test]
    p = score_prompts(lambda x: predict(result.booster, x), requests, candidates)
    y = score_matrix(data.test, models)
    price = np.array([m.price_per_m for m in models])
    unseen = np.array([m == held_out for m in models], dtype=np.float64)
    quality_known = {
        m.ollama_name: float(y[:, i].mean()) for i, m in enumerate(models) if m != held_out
    }
    best_known = max(quality_known, key=lambda n: quality_known[n])
    best_q = quality_known[best_known]
    rows = np.arange(len(y))
    out: dict[str, Any] = {
        "held_out": held_out.ollama_name,
        "held_out_quality": float(y[:, models.index(held_out)].mean()),
        "best_known": best_known,
        "best_known_quality": best_q,
        "best_known_cost": float(price[[m.ollama_name for m in models].index(best_known)]),
        "trees": result.best_iteration + 1,
    }
    for label, margin in (("raw", 0.0), ("policy", policy.unseen_margin)):
        pick = choose(p, price, 0.0, unseen * margin)
        quality = float(y[rows, pick].mean())
        out[label] = {
            "quality": quality,
            "cost": float(price[pick].mean()),
            "unseen_share": float(unseen[pick].mean()),
            "delta_vs_best_known": quality - best_q,
            "meets_target": quality >= best_q - LOMO_TOLERANCE - 1e-12,
        }
    return out


def lomo(
    data: Dataset,
    config: TrainConfig,
    policy: Policy,
    fold_progress: Callable[[str], Progress | None] | None = None,
    extra: Callable[[Collection[str]], Sequence[Example]] = lambda _: (),
) -> list[dict[str, Any]]:
    folds = []
    for number, model in enumerate(data.models, 1):
        label = f"leave-one-model-out fold {number}/{len(data.models)}: without {model.ollama_name}"
        bar = fold_progress(label) if fold_progress else None
        folds.append(lomo_fold(data, model, config, policy, bar, extra))
    return folds


DEFINITIONS = (
    "utility(m) = P(success) - λ·cost(m)/max cost - margin·[m unseen]; the router picks the "
    "argmax per prompt; λ sweeps 0 and 120 values from 1e-3 to 10",
    "quality: mean score (0-1, some tasks give partial credit) of the chosen models",
    "best single model: highest test quality (ties: cheaper); cheapest: lowest cost",
    "quality at best cost: highest router quality among λ points with mean cost ≤ the best "
    "single model's cost",
    "match cost share: lowest router cost among λ points with quality ≥ the best single "
    "model's, over that model's cost",
    "APGR: ∫ (Q(c) - q_cheapest) dc over [c_cheapest, c_best] / ((q_best - q_cheapest)"
    "·(c_best - c_cheapest)), Q(c) = best router quality at mean cost ≤ c (step curve); "
    "above 1 when the router beats the best single model below its cost",
    "AUC: ROC AUC of P(success) vs score ≥ 0.5 over all test (prompt, model) rows",
    "gain CI: 2,000-resample prompt bootstrap of (router at its quality-at-best-cost point - "
    "best single model), 2.5% and 97.5% quantiles",
    "auto:best vs the best single model (the summary): the router at λ = 0, as the auto:best "
    "profile chooses, against that model prompt by prompt; significance by a two-sided exact "
    "sign test over the prompts where their scores differ, at the 5% level",
    "oracle: per prompt the cheapest model among those with the prompt's best score",
    "random: uniform choice among the 9 models (expected values)",
    "size-only rule: the router's utility with P replaced by log(parameters) scaled to [0, 1]",
    "LOMO: retrain without one model's rows; test with all 9 candidates, the held-out one "
    "unseen (scored from its catalogue knowledge); λ = 0; target ≥ best known single "
    "model's quality - 0.01",
)

"""XGBoost binary classifier: P(success | request features ⊕ candidate features).

No column names a model: a candidate is its knowledge (size, area scores,
specialities...), so the booster cannot memorise the training models by name, and
P(success) is constrained to rise with a candidate's size and its area scores
(`TrainConfig.monotone`): a model the data never had is placed by what it can do.

Validation is a grouped split (no prompt on both sides) used for early stopping: it
chooses how many trees, and with `TrainConfig.refit` the booster is then fitted again
with that many on every row, the validation prompts included. Seeds
and `nthread` are fixed and the `hist` method is deterministic for a fixed thread
count, so a rerun on the same data and machine reproduces the booster bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from selector_model import features
from training.data import Example, Matrix, grouped_split, matrix


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the booster. Chosen on grouped 4-fold validation over
    the train prompts (never on the test split), 5 seeds each, under a budget on the
    time to score a request's candidates, which grows with trees x depth: shallow trees
    and a cap on their number. `training.report.TRIED` lists the alternatives and what
    they measured; the report (training/reports/selector.md) prints it."""

    max_depth: int = 5
    eta: float = 0.1
    min_child_weight: float = 2.0
    reg_lambda: float = 10.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    # A cap on trees, not only a budget for early stopping: it bounds scoring latency.
    num_rounds: int = 280
    early_stopping_rounds: int = 100
    val_fraction: float = 0.125
    # Fit again on all rows with the early-stopped tree count: the split decides how
    # many trees, not which prompts the booster learns from (on grouped validation this
    # keeps routing quality, lowers log loss and makes the picks depend less on the seed).
    refit: bool = True
    seed: int = 0
    nthread: int = 2
    # Prompts on which every model scored the same are weighted by this (dataset only).
    uniform_weight: float = 0.1
    # Features P(success) may only rise with: with 9 training models, each area score
    # takes 9 values, and without the constraint a split between two of them says
    # "this model" rather than "more ability".
    monotone: tuple[str, ...] = (
        "log_params_b",
        "log_active_params_b",
        *(f"area_{a}" for a in features.AREAS),
    )

    def xgb_params(self) -> dict[str, Any]:
        return {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "max_depth": self.max_depth,
            "eta": self.eta,
            "min_child_weight": self.min_child_weight,
            "lambda": self.reg_lambda,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "seed": self.seed,
            "nthread": self.nthread,
            "verbosity": 0,
            "monotone_constraints": "("
            + ",".join("1" if n in self.monotone else "0" for n in features.feature_names())
            + ")",
        }

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "monotone": list(self.monotone)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TrainConfig:
        fields = set(cls.__dataclass_fields__)
        values = {k: v for k, v in raw.items() if k in fields}
        # A config without the field describes a booster fitted on its training part only.
        values.setdefault("refit", False)
        if "monotone" in values:
            values["monotone"] = tuple(values["monotone"])
        return cls(**values)


QUICK = TrainConfig(max_depth=4, eta=0.3, num_rounds=20, early_stopping_rounds=5)


@dataclass
class TrainResult:
    booster: xgb.Booster
    best_iteration: int
    seconds: float
    val: Matrix
    val_logloss: float
    # P(success) on the validation rows from the booster that had not seen them (before
    # a refit): the held-out figures come from these.
    val_p: npt.NDArray[np.float32]
    rows: dict[str, int] = field(default_factory=dict)


Progress = Callable[[int, int], None]


class _ProgressCallback(xgb.callback.TrainingCallback):
    def __init__(self, report: Progress, total: int, done: int = 0) -> None:
        self.report = report
        self.total = total
        self.done = done

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        self.report(self.done + epoch + 1, self.total)
        return False


def train(
    examples: Sequence[Example],
    config: TrainConfig,
    progress: Progress | None = None,
) -> TrainResult:
    started = time.perf_counter()
    data = matrix(examples)
    train_idx, val_idx = grouped_split(data.groups, config.val_fraction, config.seed)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ValueError("need at least two distinct prompts for a grouped split")
    part = data.rows(train_idx)
    val = data.rows(val_idx)
    x, y, w = part.x, part.y, part.w
    dtrain = xgb.DMatrix(x, label=y, weight=w, nthread=config.nthread)
    dval = xgb.DMatrix(val.x, label=val.y, weight=val.w, nthread=config.nthread)
    callbacks: list[xgb.callback.TrainingCallback] = []
    if progress is not None:
        callbacks.append(_ProgressCallback(progress, config.num_rounds))
    log: dict[str, Any] = {}
    booster = xgb.train(
        config.xgb_params(),
        dtrain,
        num_boost_round=config.num_rounds,
        evals=[(dval, "val")],
        early_stopping_rounds=config.early_stopping_rounds,
        evals_result=log,
        verbose_eval=False,
        callbacks=callbacks,
    )
    best = int(booster.best_iteration)
    booster = booster[: best + 1]  # keep only the trees early stopping chose
    val_p = predict(booster, val.x)
    rows = {"train": len(y), "validation": len(val.y)}
    if config.refit:
        ran = len(log["val"]["logloss"])  # rounds the first fit ran, for the progress bar
        refit_callbacks: list[xgb.callback.TrainingCallback] = []
        if progress is not None:
            refit_callbacks.append(_ProgressCallback(progress, ran + best + 1, ran))
        dall = xgb.DMatrix(data.x, label=data.y, weight=data.w, nthread=config.nthread)
        booster = xgb.train(
            config.xgb_params(), dall, num_boost_round=best + 1, callbacks=refit_callbacks
        )
        rows["train"] = len(data.y)
    return TrainResult(
        booster=booster,
        best_iteration=best,
        seconds=time.perf_counter() - started,
        val=val,
        val_logloss=float(log["val"]["logloss"][best]),
        val_p=val_p,
        rows=rows,
    )


def predict(booster: xgb.Booster, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.asarray(booster.predict(xgb.DMatrix(x)), dtype=np.float32)

"""`autoroute train` and `autoroute evaluate`: argument parsers and runners.

`proxy.cli` adds these arguments to its `train` and `evaluate` subcommands when the
training extra is installed. `train` builds a selector from the bundled dataset and/or
recorded usage into the user's state directory and, with `--install`, copies it to where
the proxy reads it; `evaluate` reports an artifact's quality and replays it through
`AutoRouter.decide` on the configured profiles. `python -m training.cli train|evaluate`
runs the same without the proxy's CLI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from proxy.cli import at_least
from proxy.config import Config, ConfigError
from proxy.config_loading import load as load_config
from proxy.config_loading import named
from proxy.config_selector import Selector
from proxy.registry import catalog_for
from proxy.state_dir import state_dir
from selector_model import artifact as artifact_module
from training import pipeline, replay, report
from training.data import DATA_DIR, load_llmrouter
from training.export import META_FILE, ONNX_FILE, ParityError
from training.train import QUICK, TrainConfig

REPO = Path(__file__).resolve().parent.parent
# The artifact the proxy ships with (what `evaluate` reads by default).
SHIPPED = REPO / "selector_model" / "artifacts"
DEFAULT_REPORTS = REPO / "training" / "reports"


def user_out() -> Path:
    """Where `train` writes unless told: the user's state directory, never over the
    shipped artifact (`--install` puts it where the proxy reads)."""
    return state_dir() / "selector"


QUICK_PROMPTS = 300


def _log(message: str, file: TextIO | None = None) -> None:
    """One line on stderr. Through tqdm: a progress bar being drawn is cleared, the line
    written and the bar drawn again below it, so no bar overwrites a log line."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    tqdm.write(message, file=file or sys.stderr)


class _Bars:
    """One tqdm bar per training run, labelled with what is being trained; opening the
    next closes the last. Drawn only on a terminal: in a log file, carriage-return
    redraws are noise, and the log lines say what ran."""

    def __init__(self, file: TextIO | None = None) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._file = file or sys.stderr
        self._bar: Any = None

    def __call__(self, label: str) -> Callable[[int, int], None]:
        self.close()
        bar = self._tqdm(desc=label, unit="tree", file=self._file, mininterval=0.5, disable=None)
        self._bar = bar

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return update

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _bars(enabled: bool) -> _Bars | None:
    return _Bars() if enabled else None


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="sources",
        action="append",
        metavar="dataset|mmlu-pro[:N]|zeroeval[:N]|FILE.jsonl|postgres://...",
        help="training data: 'dataset' (the bundled LLMRouter scores), 'mmlu-pro' or "
        "'zeroeval' (the bundled MMLU-Pro outcomes of 26 open models, ZeroEval's of 15; "
        "':N' draws N of the questions with the seed), the proxy's usage file (its "
        "rotated files and the ratings in the feedback file beside it read with it), a "
        "file 'autoroute usage export' wrote, or a PostgreSQL DSN (the usage events "
        "stored there, with their ratings); repeat to combine (default: dataset)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="artifact directory (default: $XDG_STATE_HOME/autoroute/selector, "
        "~/.local/state when unset)",
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help="also copy the artifact to where the proxy reads it (selector.artifact of "
        "--config, else the shipped artifact); a running proxy reloads it by itself",
    )
    # SUPPRESS: a --config given before the subcommand is kept.
    parser.add_argument(
        "--config", default=argparse.SUPPRESS, help="config.yaml naming selector.artifact"
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="report directory (default: reports/ in the artifact directory)",
    )
    parser.add_argument("--report-name", default="selector")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="LLMRouter data directory")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_PROMPTS} prompts and a few shallow trees (a smoke run)",
    )
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-lomo", action="store_true", help="skip leave-one-model-out")
    parser.add_argument("--no-progress", action="store_true")


def run_train(args: argparse.Namespace) -> int:
    try:
        sources = [pipeline.parse_source(s) for s in (args.sources or ["dataset"])]
    except ValueError as exc:
        _log(f"autoroute train: {exc}")
        return 2
    config: TrainConfig = QUICK if args.quick else TrainConfig()
    if args.seed is not None:
        config = TrainConfig.from_json({**config.to_json(), "seed": args.seed})
    max_prompts = args.max_prompts or (QUICK_PROMPTS if args.quick else None)
    out: Path = args.out or user_out()
    report_dir: Path = args.report_dir or out / "reports"
    bars = _bars(not args.no_progress)
    try:
        meta = pipeline.build(
            sources,
            out,
            report_dir,
            args.report_name,
            config,
            data_dir=args.data,
            max_prompts=max_prompts,
            run_lomo=not args.no_lomo,
            bars=bars,
            log=_log,
        )
    except ParityError as exc:
        _log(f"autoroute train: {exc}; no artifact written")
        return 1
    except (OSError, ValueError) as exc:
        _log(f"autoroute train: {exc}")
        return 1
    finally:
        if bars is not None:
            bars.close()
    test = meta["metrics"]["test"]
    _log(
        f"artifact {meta['artifact_version']} in {out} (report in {report_dir}): quality "
        f"{test['quality_at_best_cost']:.3f} at <= best single model's cost "
        f"({test['best_single']['quality']:.3f}), match share {test['match_cost_share']}"
    )
    if args.install:
        try:
            config_file = getattr(args, "config", None)
            target = install(out, Path(config_file) if config_file else None)
        except (OSError, ConfigError) as exc:
            _log(f"autoroute train: --install: {exc}")
            return 1
        _log(f"installed as {target} (a running proxy reloads it)")
    else:
        _log(
            "not installed: the proxy keeps its artifact; run again with --install, or set "
            f"selector.artifact: {out / ONNX_FILE}"
        )
    return 0


def install(out: Path, config_path: Path | None) -> Path:
    """Copy the artifact in `out` to where the proxy reads it: the metadata first and the
    model last, each replaced atomically, so a proxy watching the model file reads the
    pair it belongs with."""
    configured = load_config(config_path).selector.artifact if config_path else ""
    target = artifact_module.resolve(configured)
    target.parent.mkdir(parents=True, exist_ok=True)
    for name, dest in ((META_FILE, target.with_suffix(".json")), (ONNX_FILE, target)):
        staging = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(out / name, staging)
        os.replace(staging, dest)
    return target


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "artifact",
        type=Path,
        nargs="?",
        default=SHIPPED,
        help=f"artifact directory, or its selector.json / selector.onnx (default: {SHIPPED})",
    )
    parser.add_argument("--report-dir", type=Path, default=DEFAULT_REPORTS)
    parser.add_argument("--report-name", default="evaluation")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    # SUPPRESS: a --config given before the subcommand is kept, as for `train`.
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="config.yaml whose selector settings (profiles, learning, min_gain, catalogue, "
        "model descriptions) are replayed (default: $AUTOROUTE_CONFIG, else ./config.yaml, else "
        "the built-ins)",
    )
    parser.add_argument(
        "--hold-out",
        type=at_least(0),
        default=3,
        metavar="K",
        help="also train without K models per split and replay fleets where they are "
        "unseen (0: only the artifact on the models it was trained on; default 3)",
    )
    parser.add_argument("--splits", type=at_least(1), default=3, help="held-out splits (default 3)")
    parser.add_argument("--cost", choices=sorted(replay.COST_DEFINITIONS), default="params")
    parser.add_argument(
        "--feedback",
        metavar="MODULE:FUNCTION",
        type=replay.checked_feedback,
        default=None,
        help="a function called with the AutoRouter that returns a hook "
        "(request body, chosen model, outcome) -> None, fed during feedback passes; "
        "training.replay:online_learner is the proxy's own online learning",
    )
    parser.add_argument("--passes", type=at_least(0), default=3, help="feedback passes (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-lomo", action="store_true")
    parser.add_argument("--no-progress", action="store_true")


def run_evaluate(args: argparse.Namespace) -> int:
    # The configuration and the catalogue it names are read first: a mistake in them
    # is refused now, not once the artifact's evaluation is done.
    config_file = getattr(args, "config", None)
    try:
        selector = load_config(config_file).selector
        catalog_for(Config(selector=selector))
    except ConfigError as exc:
        _log(f"autoroute evaluate: configuration error: {named(exc, config_file)}")
        return 2
    bars = _bars(not args.no_progress)
    try:
        out = pipeline.evaluate_artifact(
            args.artifact,
            args.report_dir,
            args.report_name,
            data_dir=args.data,
            run_lomo=not args.no_lomo,
            bars=bars,
        )
        if bars is not None:
            bars.close()
        results = replay.in_loop(lambda: _replay(args, out, selector))
    except (OSError, ValueError, KeyError, pipeline.SchemaError, ConfigError) as exc:
        _log(f"autoroute evaluate: {exc}")
        return 1
    finally:
        if bars is not None:
            bars.close()
    _log(report.summary(out["evaluation"]["price"]))
    for t in out["targets"]:
        _log(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']} (gap {t['gap']})")
    print(replay.COST_DEFINITIONS[args.cost])
    for result in results:
        print(replay.table(result))
    for kind in ("all 9", "held-out"):
        text = replay.summary(results, kind)
        if text:
            print(text)
    base = args.report_dir / f"{args.report_name}-replay"
    replay.write_json(results, args.cost, base.with_suffix(".json"))
    replay.plot(results, base.with_suffix(".png"))
    _log(f"report: {args.report_dir / args.report_name}.md, {base}.json, {base}.png")
    return 0


def _replay(
    args: argparse.Namespace, evaluated: dict[str, Any], selector: Selector
) -> list[replay.FleetResult]:
    profiles = replay.profiles_of(selector)
    directory = args.artifact if args.artifact.is_dir() else args.artifact.parent
    data = load_llmrouter(args.data)
    feedback = replay.load_feedback(args.feedback) if args.feedback else None
    results = [
        replay.replay_fleet(
            "trained-on fleet (LLMRouter test split)",
            directory,
            data.test,
            data.models,
            profiles,
            cost_kind=args.cost,
            trained_on=evaluated["trained_on"],
            feedback=feedback,
            passes=args.passes,
            seed=args.seed,
            selector=selector,
        )
    ]
    if args.hold_out > 0:
        config = TrainConfig.from_json(evaluated["training"]["config"])
        # Trained on other datasets' outcomes too: each split is, without its held-out
        # models' rows there.
        extra = pipeline.rows_without(
            pipeline.outcome_sources(evaluated), config.uniform_weight, data.test, config.seed
        )
        results += replay.leave_k_out(
            data,
            config,
            profiles,
            k=args.hold_out,
            splits=args.splits,
            seed=args.seed,
            cost_kind=args.cost,
            feedback=feedback,
            passes=args.passes,
            log=_log,
            selector=selector,
            extra=extra,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(sub.add_parser("train", help="train, export and evaluate a selector"))
    add_evaluate_arguments(sub.add_parser("evaluate", help="evaluate an artifact"))
    args = parser.parse_args(argv)
    return run_train(args) if args.command == "train" else run_evaluate(args)


if __name__ == "__main__":
    sys.exit(main())

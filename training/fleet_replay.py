"""What the replays of other datasets' outcomes share (`training.mmlu_pro_replay`,
`training.zeroeval_replay`, `training.reasoning_gym_replay`): their command line, the
shipped artifact and settings, one fleet replayed through `auto` and printed, and the
whole run of a dataset whose items fall in groups not every model ran
(`grouped_main`)."""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from proxy.config_loading import load as load_config
from proxy.config_selector import Profile, Selector
from selector_model import artifact
from training import export, profiled_replay, replay
from training.data import Prompt
from training.models import ModelSpec

T = TypeVar("T")


def parser(prog: str, models: Sequence[ModelSpec], limit: int | None) -> argparse.ArgumentParser:
    """The options every dataset replay takes; `models`: those `--models` may name."""
    parsed = argparse.ArgumentParser(prog=f"python -m {prog}")
    parsed.add_argument("--limit", type=int, default=limit)
    parsed.add_argument("--seed", type=int, default=0)
    parsed.add_argument(
        "--seeds",
        type=_seeds,
        help="comma-separated seeds (e.g. 0,1,2,3), in place of --seed: each fleet is "
        "replayed once per seed (another draw of prompts where --limit draws them, "
        "another half to learn from), then summed up over them",
    )
    parsed.add_argument("--passes", type=int, default=3)
    parsed.add_argument(
        "--feedback",
        metavar="MODULE:FUNCTION",
        type=replay.checked_feedback,
        default="training.replay:online_learner",
        help="the feedback of the passes (`autoroute evaluate --feedback`); default "
        "training.replay:online_learner, the proxy's own online learning",
    )
    parsed.add_argument(
        "--profiled",
        type=_per_area,
        default=0,
        metavar="N",
        help="replay each fleet as if every model of it (or those --profile-only names) had "
        "been profiled (`autoroute profile`): per area, its mean score on N prompts of "
        "that area drawn from the half learned from, read from a profile store as the "
        "proxy reads one; auto is then shown on the other half, without and with the "
        "profiles",
    )
    parsed.add_argument(
        "--profile-only",
        choices=profiled_replay.WHICH,
        help="with --profiled: which models of each fleet are profiled, the others keeping "
        "the catalogue's areas: all; those the shipped artifact was not trained on "
        "(unseen); the half with the highest catalogue uncertainty (uncertain); a half "
        "drawn with the seed (random); all when not given",
    )
    parsed.add_argument(
        "--artifact",
        type=Path,
        default=artifact.SHIPPED.parent,
        help="the artifact directory replayed (default: the shipped artifact's)",
    )
    parsed.add_argument("--fleet", action="append", help="only the fleets whose label has this")
    parsed.add_argument(
        "--models",
        help="comma-separated Ollama names of MODELS: replay that fleet instead "
        f"(one of: {', '.join(m.ollama_name for m in models)})",
    )
    return parsed


def _seeds(raw: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r}: comma-separated integers") from None
    if not seeds:
        raise argparse.ArgumentTypeError("no seed given")
    return seeds


def seeds_of(args: argparse.Namespace) -> tuple[int, ...]:
    """The seeds a replay runs with: `--seeds`, else `--seed` alone."""
    seeds: tuple[int, ...] | None = args.seeds
    return seeds if seeds else (int(args.seed),)


@dataclass(frozen=True)
class Profiling:
    """`--profiled`'s N and `--profile-only`'s choice of models
    (`profiled_replay.profiled_models`)."""

    n: int
    which: str = "all"


def profiled_of(parsed: argparse.ArgumentParser, args: argparse.Namespace) -> Profiling | None:
    """How `--profiled` and `--profile-only` profile each fleet (None: not profiled);
    `--profile-only` alone is an error of `parsed`, not a replay left unprofiled."""
    which: str | None = args.profile_only
    if not args.profiled:
        if which is not None:
            parsed.error("--profile-only: only with --profiled N")
        return None
    return Profiling(int(args.profiled), which or "all")


def _per_area(raw: str) -> int:
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{raw!r}: a number of prompts per area, at least 1")
    return n


# Printed once above profiled replays: what their measured areas are and are not.
PROFILED_CAVEAT = (
    "profiled (N per area): each model's area is its mean score on N items of that area "
    "drawn from the half learned from, standing in for the profiling suite; they come "
    "from the same distribution as the held half, so this is closer to an upper bound "
    "of what the shipped 50-prompt suite gives than a measurement of it"
)


def chosen(parsed: argparse.ArgumentParser, raw: str, known: Collection[str]) -> tuple[str, ...]:
    """The Ollama names `--models` gives: two or more of `known`, else a usage error."""
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or len(names) < 2:
        parsed.error(f"--models: two or more of MODELS' names, not {unknown or names}")
    return names


def wanted(label: str, only: Sequence[str] | None) -> bool:
    """Whether `--fleet` (any of its words) asks for the fleet of `label`."""
    return not only or any(word in label for word in only)


@dataclass(frozen=True)
class Shipped:
    """An artifact (the shipped one unless `--artifact` names another) and its training
    fleet, and the configuration's selector settings and profiles, as a replay uses
    them."""

    selector: Selector
    profiles: dict[str, Profile]
    trained_on: list[str]
    directory: Path = artifact.SHIPPED.parent
    # The feedback of the passes (`--feedback`).
    feedback: replay.FeedbackFactory = replay.online_learner

    @classmethod
    def load(
        cls, directory: Path = artifact.SHIPPED.parent, feedback: str | None = None
    ) -> Shipped:
        """The configuration's settings with the artifact in `directory`, and the
        feedback `feedback` names (`--feedback`), the proxy's learner when None."""
        selector = load_config(None).selector
        meta = json.loads((directory / export.META_FILE).read_text())
        learner = replay.online_learner if feedback is None else replay.load_feedback(feedback)
        trained_on = list(meta["trained_on"])
        return cls(selector, replay.profiles_of(selector), trained_on, directory, learner)

    def header(self) -> str:
        shown = "" if self.directory == artifact.SHIPPED.parent else f" ({self.directory})"
        return (
            f"{replay.COST_DEFINITIONS['params']}\n"
            f"artifact{shown} trained on: {', '.join(self.trained_on)}"
        )

    def print_fleet(
        self,
        label: str,
        models: Sequence[ModelSpec],
        prompts_of: Callable[[int], Sequence[Prompt]],
        passes: int,
        seeds: Sequence[int],
        profiled: Profiling | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Replays the prompts `prompts_of(seed)` gives through `auto` on `models`, with
        the proxy's own online learner as feedback, once per seed, and prints each
        (`print_replay`, or with `profiled` `print_profiled`, `labels` mapping the
        dataset's labels to areas); with several seeds, then `replay.summary` over them:
        one seed's figures after feedback move by points with the half learned from, so
        a change to the learner is judged on their mean."""
        results = [
            self.print_profiled(label, models, prompts_of(seed), passes, seed, profiled, labels)
            if profiled
            else self.print_replay(label, models, prompts_of(seed), passes, seed)
            for seed in seeds
        ]
        if len(results) > 1:
            print(
                replay.summary(results, results[0].label, over=f"seeds {','.join(map(str, seeds))}")
            )

    def print_replay(
        self,
        label: str,
        models: Sequence[ModelSpec],
        prompts: Sequence[Prompt],
        passes: int,
        seed: int,
    ) -> replay.FleetResult:
        """Replays `prompts` through `auto` on `models`, with the proxy's own online
        learner as feedback, and prints the fleet, `replay.table`, the picks and the
        time taken."""
        start = time.monotonic()
        result = self._replayed(replay.replay_fleet, label, models, prompts, passes, seed)
        print(f"fleet: {', '.join(m.ollama_name for m in models)}")
        print(replay.table(result))
        _print_picks(result)
        print(f"  ({time.monotonic() - start:.0f}s)", flush=True)
        return result

    def print_profiled(
        self,
        label: str,
        models: Sequence[ModelSpec],
        prompts: Sequence[Prompt],
        passes: int,
        seed: int,
        profiling: Profiling,
        labels: Mapping[str, str] | None,
    ) -> replay.FleetResult:
        """Replays `prompts` through `auto` on `models` as if each of those `profiling`
        chooses had been profiled on its N prompts per area of the half learned from
        (`profiled_replay.replay_profiled`), and prints the measured areas, then
        `replay.table` on the held half without the profiles and with them (and the
        online learner's curves); returns the latter."""
        start = time.monotonic()
        result = self._replayed(
            profiled_replay.replay_profiled,
            label,
            models,
            prompts,
            passes,
            seed,
            n=profiling.n,
            labels=labels or {},
            which=profiling.which,
        )
        print(f"fleet: {', '.join(m.ollama_name for m in models)}")
        print(profiled_replay.measured_table(result, self.trained_on))
        for shown in (result.unprofiled, result.profiled):
            print(replay.table(shown))
            _print_picks(shown)
        print(f"  ({time.monotonic() - start:.0f}s)", flush=True)
        return result.profiled

    def _replayed(
        self,
        run: Callable[..., T],
        label: str,
        models: Sequence[ModelSpec],
        prompts: Sequence[Prompt],
        passes: int,
        seed: int,
        **options: Any,
    ) -> T:
        """`run` (`replay.replay_fleet` or `profiled_replay.replay_profiled`) on the
        shipped artifact with these settings and profiles, the proxy's own online learner
        as feedback, and `options`."""
        return replay.in_loop(
            functools.partial(
                run,
                label,
                self.directory,
                prompts,
                models,
                self.profiles,
                trained_on=self.trained_on,
                feedback=self.feedback,
                passes=passes,
                seed=seed,
                selector=self.selector,
                **options,
            )
        )


def _print_picks(result: replay.FleetResult) -> None:
    picks = {p: o.picks for p, o in result.profiles.items()}
    print(f"  picks: {json.dumps(picks)}")


def grouped_main(
    prog: str,
    argv: list[str] | None,
    *,
    dataset: str,
    word: str,
    groups: tuple[str, ...],
    models: Sequence[ModelSpec],
    fleets: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]],
    groups_of: Callable[[Sequence[ModelSpec]], list[str]],
    load_prompts: Callable[[Sequence[ModelSpec], Collection[str], int | None, int], list[Prompt]],
    labels: Mapping[str, str],
    limit: int | None = None,
) -> int:
    """Replays `fleets` (label -> Ollama names and the groups of items replayed), each on
    the items of its groups every one of its models has outcomes on (`load_prompts(models,
    groups, limit, seed)`), and prints them. `--models` replaces them with one fleet of
    the user's choice, on the groups `--<word>` names or else on all those its models
    share (`groups_of`); `dataset` labels it. `labels`: the area each of the items'
    labels stands for when `--profiled` (`profiled_replay.area_of`)."""
    by_name = {m.ollama_name: m for m in models}
    parsed = parser(prog, models, limit=limit)
    parsed.add_argument(f"--{word}", help=f"with --models: comma-separated, of {', '.join(groups)}")
    args = parsed.parse_args(argv)
    if args.models:
        names = chosen(parsed, args.models, by_name)
        raw: str = getattr(args, word) or ""
        picked = tuple(g.strip() for g in raw.split(",") if g.strip()) or tuple(
            groups_of([by_name[n] for n in names])
        )
        if not picked or any(g not in groups for g in picked):
            parsed.error(f"--{word}: of {', '.join(groups)}; these models share {picked or 'none'}")
        fleets = {f"{dataset} fleet of your choice ({', '.join(picked)})": (names, picked)}
    shipped = Shipped.load(args.artifact, args.feedback)
    profiled = profiled_of(parsed, args)
    print(shipped.header())
    if profiled:
        print(PROFILED_CAVEAT)
    for label, (names, picked) in fleets.items():
        if wanted(label, args.fleet):
            fleet = [by_name[n] for n in names]
            shipped.print_fleet(
                label,
                fleet,
                functools.partial(load_prompts, fleet, picked, args.limit),
                args.passes,
                seeds_of(args),
                profiled,
                labels,
            )
    return 0

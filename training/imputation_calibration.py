"""How far the catalogue's imputation misses, per unit of the uncertainty it states, when
several areas are missing at once.

`UNSEEN_SPREAD` is measured imputing one published area score at a time, as if
unpublished, from the other entries (tests/test_policy_rules.py). A model of 2026 often
publishes only knowledge and reasoning results the catalogue accepts: its code, maths and
instruction areas are all imputed, and so are its neighbours'. This prints, per area
and per set of areas removed together (from the entry alone, then from a share of the
entries too): how many scores, rmse over rms uncertainty (what `UNSEEN_SPREAD` is),
`rms z` the root mean square of (imputed - published) / (UNSEEN_SPREAD x uncertainty)
(1.0: the spread is calibrated), `mean z` its mean (the bias), the mean uncertainty, and
`z overall` the rms z against the entry's overall `uncertainty` (what `spreads` reads):

    PYTHONPATH=$PWD .venv/bin/python -m training.imputation_calibration
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Iterable, Mapping

from selector_model.catalog.catalog import Catalog
from selector_model.catalog.knowledge import AREAS
from selector_model.catalog.placement import Neighbourhood, probe_of
from selector_model.catalogue_prior import UNSEEN_SPREAD

# Sets of areas removed together: one area at a time is the test's measurement.
REMOVED = {
    "code+math": ("math", "code"),
    "all but knowl., reasoning": ("math", "code", "instruction"),
    "all but knowledge": ("reasoning", "math", "code", "instruction"),
    "all five": AREAS,
}


def _row(label: str, errors: list[float], stated: list[float], overall: list[float]) -> str:
    if not errors:
        return f"{label:29s} n=0"
    z = [e / (UNSEEN_SPREAD * u) for e, u in zip(errors, stated, strict=True)]
    zo = [e / (UNSEEN_SPREAD * max(u, 1e-9)) for e, u in zip(errors, overall, strict=True)]
    rms_ratio = math.sqrt(sum(e * e for e in errors) / sum(u * u for u in stated))
    return (
        f"{label:29s} {len(errors):4d} {rms_ratio:10.3f} "
        f"{math.sqrt(sum(x * x for x in z) / len(z)):6.2f} {sum(z) / len(z):+7.2f} "
        f"{sum(stated) / len(stated):6.2f} {math.sqrt(sum(x * x for x in zo) / len(zo)):10.2f}"
    )


def misses(
    catalog: Catalog,
    removed: Iterable[str],
    whose: set[str] | None,
    neighbours_too: bool,
) -> tuple[list[float], list[float], list[float]]:
    """Errors, stated uncertainties and the entries' overall uncertainties of the
    `removed` areas of every entry publishing all of them (of `whose` if given), each
    imputed from the other entries; with `neighbours_too`, from the other entries with
    the same areas removed from those of `whose`. One area at a time, of every entry,
    is what `UNSEEN_SPREAD` is measured on (tests/test_policy_rules.py)."""
    base = catalog.neighbourhood
    removed = tuple(removed)
    published = base.published
    targets = [
        e
        for e in catalog.entries()
        if all(a in published.get(e.name, {}) for a in removed)
        and (whose is None or e.name in whose)
    ]
    hood = base
    if neighbours_too:
        gone = {e.name for e in targets}
        kept: dict[str, Mapping[str, float]] = {
            name: (
                {a: v for a, v in scores.items() if a not in removed} if name in gone else scores
            )
            for name, scores in published.items()
        }
        hood = Neighbourhood(base.entries, kept, base.slopes, base.floors)
    errors: list[float] = []
    stated: list[float] = []
    overall: list[float] = []
    for entry in targets:
        spread = dict(entry.area_uncertainty)
        rows = []
        for area in removed:
            imputed, uncertainty, near = hood.impute(probe_of(entry), area, entry.name)
            if near:
                rows.append((area, imputed - published[entry.name][area], uncertainty))
                spread[area] = uncertainty
        entry_overall = sum(spread.get(a, 0.0) for a in AREAS) / len(AREAS)
        for _, error, uncertainty in rows:
            errors.append(error)
            stated.append(uncertainty)
            overall.append(entry_overall)
    return errors, stated, overall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, nargs="*", default=[0.25, 0.5])
    parser.add_argument("--seeds", default="0,1,2,3")
    args = parser.parse_args(argv)
    catalog = Catalog.load()
    print(f"UNSEEN_SPREAD {UNSEEN_SPREAD}")
    print(f"{'removed':29s} {'n':>4s} rmse/rms-u  rms z  mean z mean u  z overall")
    errors: list[float] = []
    stated: list[float] = []
    overall: list[float] = []
    for area in AREAS:
        e, s, o = misses(catalog, (area,), None, False)
        print(_row(f"{area} alone", e, s, o))
        errors += e
        stated += s
        overall += o
    print(_row("one area at a time (the test)", errors, stated, overall))
    # Each area is imputed from the other entries alone: removing more of an entry's own
    # areas changes none of its imputations, only which entries are counted.
    print("-- the entry's areas removed, its neighbours' kept")
    for label, removed in REMOVED.items():
        print(_row(label, *misses(catalog, removed, None, False)))
    names = sorted(e.name for e in catalog.entries())
    seeds = [int(s) for s in args.seeds.split(",")]
    for fraction in args.fraction:
        print(f"-- the same areas removed from {fraction:.0%} of the entries, seeds {args.seeds}")
        for label, removed in (("one area at a time", ()), *REMOVED.items()):
            pooled: tuple[list[float], list[float], list[float]] = ([], [], [])
            for seed in seeds:
                whose = set(random.Random(seed).sample(names, round(fraction * len(names))))
                for areas in [(a,) for a in AREAS] if not removed else [removed]:
                    got = misses(catalog, areas, whose, True)
                    for into, part in zip(pooled, got, strict=True):
                        into += part
            print(_row(label, *pooled))


if __name__ == "__main__":
    main()

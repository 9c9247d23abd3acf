"""Published results on one scale per area, and how scores grow with size.

Model cards report different benchmarks for the same ability (MMLU, MMLU-Redux or
MMLU-Pro for knowledge; GPQA, BBH or ARC-C for reasoning; GSM8K or MATH for math; ...).
Each area keeps the scale of its first benchmark; another benchmark is mapped onto it by
a line fitted over the models that report both, and only where it predicts that scale;
beyond the results it was fitted on, the line bends toward a perfect score (or chance)
on both rather than reaching the scale's end before the benchmark does.
A model's area is the mean of all its results there, each on the area's scale: one
benchmark is one kind of item under one maker's protocol (MATH's competition problems,
GSM8K's word problems), and two models a maker's MATH calls equal can stand 10 points
apart on GSM8K; a user's prompts of an area mix such items. A benchmark marked
`fallback` (the Open LLM Leaderboard's, measured by log-likelihood where the makers
generate answers) counts only where the model has no other result of the area. A
multiple-choice scale has a chance level: no model is expected below it, so a mapped or
imputed score is floored there (a published one is kept as it is).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from selector_model.catalog.knowledge import AREAS, ModelKnowledge

# Uncertainty of an area score mapped from another benchmark of the area, before the
# mapping's own error is added.
MAPPED_UNCERTAINTY = 0.05
# A benchmark is mapped onto its area's scale only when it explains this share of the
# scale's variance over the models that report both, and at least this many report both.
MIN_FIT = 0.3
MIN_PAIRS = 3
# The score of guessing on multiple-choice benchmarks (four options; MMLU-Pro has ten).
# Benchmarks graded on generated answers (MATH, HumanEval, IFEval, ...) have none.
CHANCE = {"MMLU": 0.25, "MMLU-Redux": 0.25, "MMLU-Pro": 0.1, "GPQA": 0.25, "ARC-C": 0.25}


@dataclass(frozen=True)
class _Line:
    """How one benchmark maps onto its area's scale, and how far off that mapping was
    on the models that report both (root-mean-square residual); `count`, `mean` and
    `spread` (sum of squared deviations) describe the values it was fitted on, `low`
    and `high` their range, and `chance` and `floor` the benchmark's and the scale's
    chance levels."""

    intercept: float
    slope: float
    error: float
    count: int = 0
    mean: float = 0.0
    spread: float = 0.0
    low: float = 0.0
    high: float = 1.0
    chance: float = 0.0
    floor: float = 0.0

    def __call__(self, value: float) -> float:
        """The line read at `value`, on the scale. The pairs it was fitted on say how
        the two benchmarks move together between `low` and `high` only; near the ends
        of the scales they bend, as one saturates or falls to guessing before the
        other, and a line carried on reaches a perfect score (or chance) on the scale
        while the benchmark is far from it. So beyond its fitted values the line runs
        no steeper than the straight path from its last fitted point to the point both
        benchmarks share at that end: a perfect score on both above, chance on both
        below. A result short of perfect then reads short of perfect, and a higher
        result never reads lower."""
        if value > self.high:
            edge = self.intercept + self.slope * self.high
            path = (1.0 - edge) / (1.0 - self.high) if self.high < 1.0 else 0.0
            read = edge + min(self.slope, max(0.0, path)) * (value - self.high)
        elif value < self.low:
            edge = self.intercept + self.slope * self.low
            path = (edge - self.floor) / (self.low - self.chance) if self.low > self.chance else 0.0
            read = edge - min(self.slope, max(0.0, path)) * (self.low - value)
        else:
            read = self.intercept + self.slope * value
        return min(1.0, max(0.0, read))

    def error_at(self, value: float) -> float:
        """The standard error of the line's prediction at `value`: the residual error,
        growing with the distance from the values it was fitted on, so that a value
        read off the line beyond them is less certain than one within."""
        if self.count == 0 or self.spread <= 0:
            return self.error
        leverage = 1.0 / self.count + (value - self.mean) ** 2 / self.spread
        return self.error * math.sqrt(1.0 + leverage)


def calibrate(
    scores: Mapping[str, Mapping[str, float]],
    benchmarks: Mapping[str, str],
    same_scale: Mapping[str, str],
    fallback: AbstractSet[str] = frozenset(),
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, set[str]]]:
    """Per entry, one score per area on the area's scale (its first benchmark): the
    mean of its results there, the scale's own as published and the area's other
    benchmarks mapped onto it by a line fitted over the entries that report both, or
    taken as they are when declared on the same scale (a subset of it); a `fallback`
    benchmark only where the entry has no other result of the area. A benchmark that
    predicts the scale poorly is not mapped (nor counted). A mapped score is no lower
    than the scale's chance level. Also returns, per entry, the uncertainty of each
    area without the scale's own result: the lines' prediction error where they are
    read, plus what the chance floor had to lift; and the benchmarks its areas take."""
    scale = scales_of(benchmarks)
    floor = floors(benchmarks)
    lines = _lines(scores, benchmarks, same_scale)
    areas: dict[str, dict[str, float]] = {}
    mapped: dict[str, dict[str, float]] = {}
    taken: dict[str, set[str]] = {}
    for name, own in scores.items():
        areas[name], mapped[name], taken[name] = {}, {}, set()
        for area, canonical in scale.items():
            others = [b for b in own if benchmarks[b] == area and b in lines]
            if canonical in own or any(b not in fallback for b in others):
                others = [b for b in others if b not in fallback]
            used = [(lines[b], own[b]) for b in others]
            values = [max(floor[area], line(v)) for line, v in used]
            taken[name].update(others)
            if canonical in own:
                taken[name].add(canonical)
                values = [own[canonical], *values]
                areas[name][area] = sum(values) / len(values)
                continue
            if used:
                lifted = sum(value - line(v) for value, (line, v) in zip(values, used, strict=True))
                error = 2.0 * sum(line.error_at(v) for line, v in used) + lifted
                areas[name][area] = sum(values) / len(values)
                mapped[name][area] = min(0.5, MAPPED_UNCERTAINTY + error / len(used))
    return areas, mapped, taken


def _lines(
    scores: Mapping[str, Mapping[str, float]],
    benchmarks: Mapping[str, str],
    same_scale: Mapping[str, str],
) -> dict[str, _Line]:
    """Per benchmark that is not its area's scale, the line mapping it onto the scale:
    fitted over the entries that report both (none where it predicts the scale
    poorly), the identity for a benchmark declared on the same scale."""
    scale = scales_of(benchmarks)
    floor = floors(benchmarks)
    lines: dict[str, _Line] = {}
    for bench, area in benchmarks.items():
        if bench == scale[area]:
            continue
        if same_scale.get(bench) == scale[area]:
            lines[bench] = _Line(0.0, 1.0, 0.0)
            continue
        pairs = [
            (s[bench], s[scale[area]]) for s in scores.values() if bench in s and scale[area] in s
        ]
        line = fit(pairs, CHANCE.get(bench, 0.0), floor[area])
        if line is not None:
            lines[bench] = line
    return lines


def transfer_spread(
    scores: Mapping[str, Mapping[str, float]],
    benchmarks: Mapping[str, str],
    same_scale: Mapping[str, str],
) -> float:
    """How far one published set of items of an area places a model from another set of
    items of the same area, beyond their scales: the root mean square residual of the
    fitted lines (`_lines`) over all the pairs they were fitted on. A user's prompts of
    an area are one more such set; 0 when no line is fitted."""
    fitted = [line for line in _lines(scores, benchmarks, same_scale).values() if line.count]
    count = sum(line.count for line in fitted)
    if not count:
        return 0.0
    return math.sqrt(sum(line.error**2 * line.count for line in fitted) / count)


def scale_spread(
    scores: Mapping[str, Mapping[str, float]], benchmarks: Mapping[str, str]
) -> dict[str, float]:
    """Per area, how far apart the scales of its benchmarks lie before mapping: the root
    mean square, over the area's benchmarks other than its scale with at least
    `MIN_PAIRS` entries reporting both, of the mean gap between the scale's result and
    the benchmark's on those entries (0 for an area with no such benchmark). A user's
    prompts of an area are one more set of items, on a scale that far from the area's
    before anything measures it: the prior spread of a measured share's offset
    (`Catalog.offsets`)."""
    scale = scales_of(benchmarks)
    gaps: dict[str, list[float]] = {area: [] for area in AREAS}
    for bench, area in benchmarks.items():
        if bench == scale[area]:
            continue
        pairs = [
            s[scale[area]] - s[bench] for s in scores.values() if bench in s and scale[area] in s
        ]
        if len(pairs) >= MIN_PAIRS:
            gaps[area].append(sum(pairs) / len(pairs))
    return {
        area: math.sqrt(sum(g * g for g in found) / len(found)) if found else 0.0
        for area, found in gaps.items()
    }


def scales_of(benchmarks: Mapping[str, str]) -> dict[str, str]:
    """Per area, the benchmark whose scale it keeps: the first listed for it."""
    scale: dict[str, str] = {}
    for bench, area in benchmarks.items():
        scale.setdefault(area, bench)
    return scale


def floors(benchmarks: Mapping[str, str]) -> dict[str, float]:
    """Per area, the chance level of its scale (0 where answers are generated)."""
    return {area: CHANCE.get(bench, 0.0) for area, bench in scales_of(benchmarks).items()}


def fit(pairs: list[tuple[float, float]], chance: float = 0.0, floor: float = 0.0) -> _Line | None:
    """The least-squares line of y on x, read beyond the x it was fitted on toward a
    perfect score or toward (`chance`, `floor`), the chance levels of x and y; or None
    when there are fewer than `MIN_PAIRS` pairs or x explains less than MIN_FIT of y's
    variance."""
    if len(pairs) < MIN_PAIRS:
        return None
    mean_x = sum(x for x, _ in pairs) / len(pairs)
    mean_y = sum(y for _, y in pairs) / len(pairs)
    var_x = sum((x - mean_x) ** 2 for x, _ in pairs)
    var_y = sum((y - mean_y) ** 2 for _, y in pairs)
    if var_x <= 1e-9 or var_y <= 1e-9:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in pairs) / var_x
    intercept = mean_y - slope * mean_x
    residual = sum((y - intercept - slope * x) ** 2 for x, y in pairs)
    if slope <= 0 or 1.0 - residual / var_y < MIN_FIT:
        return None
    xs = [x for x, _ in pairs]
    error = math.sqrt(residual / len(pairs))
    return _Line(
        intercept, slope, error, len(pairs), mean_x, var_x, min(xs), max(xs), chance, floor
    )


def size_slopes(
    entries: Mapping[str, ModelKnowledge], areas: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """Per area, how much the score rises per doubling of size within a family (pooled
    over families, bounded to [0, 0.12])."""
    slopes: dict[str, float] = {}
    for area in AREAS:
        by_family: dict[str, list[tuple[float, float]]] = {}
        for name, entry in entries.items():
            if area in areas[name]:
                by_family.setdefault(entry.family, []).append(
                    (math.log2(entry.effective_params_b), areas[name][area])
                )
        sxy = sxx = 0.0
        for points in by_family.values():
            if len(points) < 2:
                continue
            mx = sum(x for x, _ in points) / len(points)
            my = sum(y for _, y in points) / len(points)
            sxy += sum((x - mx) * (y - my) for x, y in points)
            sxx += sum((x - mx) ** 2 for x, _ in points)
        slopes[area] = min(0.12, max(0.0, sxy / sxx)) if sxx > 0 else 0.0
    return slopes

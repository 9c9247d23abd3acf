"""A/B experiments: sticky assignment of users to variants, and the report.

Assignment hashes (experiment, user) with SHA-256, so a user stays in one variant
across requests, restarts and replicas of the proxy. The report reads usage events,
grades each with the one definition of success (`selector_model.outcome`: a rating
wins over implicit signals), and compares every variant with the control (the one
configured as `control`, else the first configured): outcomes, ratings, latency and
tokens with the Mann-Whitney U test, success counts with Fisher's exact test; both
hold for binary and constant samples. A winner is named only when its lead in
outcome is significant at `alpha`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config_selector import Experiment, Variant
from proxy.config_services import Usage
from proxy.header_values import utf8
from selector_model import outcome
from selector_model.features import REQUEST_FEATURES, TASKS
from selector_model.usage_event import UsageEvent

_TASK_INDEX = {task: REQUEST_FEATURES.index(f"task_{task}") for task in TASKS}


def _unit(*parts: str) -> float:
    # utf8: a user header with bytes that are not UTF-8 hashes as the bytes it has.
    digest = hashlib.sha256(utf8("\x1f".join(parts))).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True, slots=True)
class Assignment:
    """The experiment a request takes part in, and its variant."""

    name: str
    variant: str
    experiment: Experiment

    @property
    def config(self) -> Variant:
        return self.experiment.variants[self.variant]


def _active(experiment: Experiment, now: dt.datetime) -> bool:
    def parse(text: str) -> dt.datetime:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))

    if experiment.start and now < parse(experiment.start):
        return False
    return not (experiment.end and now >= parse(experiment.end))


def assign(
    experiments: Mapping[str, Experiment],
    user: str,
    endpoint: str,
    profile: str,
    request_features: list[float],
    now: dt.datetime | None = None,
) -> Assignment | None:
    """The experiment and variant of this request, or None."""
    now = now or dt.datetime.now(dt.UTC)
    for name, experiment in experiments.items():
        if not experiment.variants or not _active(experiment, now):
            continue
        if experiment.endpoints and endpoint not in experiment.endpoints:
            continue
        if experiment.profiles and profile not in experiment.profiles:
            continue
        if experiment.tasks and not any(
            request_features[_TASK_INDEX[t]] for t in experiment.tasks if t in _TASK_INDEX
        ):
            continue
        if _unit(name, "share", user) >= experiment.share:
            continue
        total = sum(max(v.weight, 0.0) for v in experiment.variants.values())
        point = _unit(name, "variant", user) * total
        for variant, config in experiment.variants.items():
            point -= max(config.weight, 0.0)
            if point < 0:
                return Assignment(name, variant, experiment)
        return Assignment(name, variant, experiment)
    return None


# Statistics ---------------------------------------------------------------------------
# Tests that hold for binary and for constant samples (ratings are often all 0 or all 1
# in a variant): Fisher's exact test for success counts, the Mann-Whitney U test with
# the tie correction for outcomes, ratings, latency and tokens. Both use math alone.


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def two_proportion_p(success_a: int, n_a: int, success_b: int, n_b: int) -> float:
    """The two-proportion z-test: for large samples, where Fisher's sum is long."""
    if n_a == 0 or n_b == 0:
        return 1.0
    pooled = (success_a + success_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 1.0  # both all successes or all failures: no difference to find
    z = (success_a / n_a - success_b / n_b) / se
    return 2 * _normal_sf(abs(z))


def fisher_exact_p(success_a: int, n_a: int, success_b: int, n_b: int) -> float:
    """Two-sided Fisher exact test of the 2x2 table (successes, failures) x (a, b): the
    probability, with the margins fixed, of a table at most as likely as this one."""
    if n_a == 0 or n_b == 0:
        return 1.0
    successes, total = success_a + success_b, n_a + n_b

    def log_p(k: int) -> float:  # hypergeometric: k of a's n_a are successes
        return _log_choose(n_a, k) + _log_choose(n_b, successes - k) - _log_choose(total, successes)

    observed = log_p(success_a)
    low, high = max(0, successes - n_b), min(n_a, successes)
    # Tables as likely as the observed one, up to rounding, count as "at most as likely".
    limit = observed + 1e-7
    p = sum(math.exp(lp) for k in range(low, high + 1) if (lp := log_p(k)) <= limit)
    return min(1.0, p)


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


# Above this many requests the z-test stands in for Fisher's sum (one term per count).
_FISHER_MAX = 20_000


def proportion_p(success_a: int, n_a: int, success_b: int, n_b: int) -> float:
    if n_a + n_b <= _FISHER_MAX:
        return fisher_exact_p(success_a, n_a, success_b, n_b)
    return two_proportion_p(success_a, n_a, success_b, n_b)


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided Mann-Whitney U test, normal approximation with the tie correction and
    a continuity correction. Samples that are each constant but differ are as far
    apart as samples can be (a small p when they are large enough); samples that are
    all one value are no different (p = 1)."""
    n_a, n_b = len(a), len(b)
    if n_a == 0 or n_b == 0:
        return 1.0
    pooled = sorted([(x, 0) for x in a] + [(y, 1) for y in b])
    n = n_a + n_b
    rank_sum_a = 0.0
    ties = 0.0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        mid_rank = (i + j) / 2 + 1
        count = j - i + 1
        ties += count**3 - count
        rank_sum_a += mid_rank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 0)
        i = j + 1
    u = rank_sum_a - n_a * (n_a + 1) / 2
    mean = n_a * n_b / 2
    variance = n_a * n_b / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return 1.0
    z = max(abs(u - mean) - 0.5, 0.0) / math.sqrt(variance)
    return min(1.0, 2 * _normal_sf(z))


# Report -------------------------------------------------------------------------------


def _metric(event: UsageEvent, name: str) -> float | None:
    value: float | None
    if name == "rating":
        value = event.rating
    elif name == "tokens":
        value = event.outcome.eval_count
    elif name == "total_ms":
        value = event.outcome.total_ms
    else:
        value = event.outcome.ttfc_ms
    return None if value is None else float(value)


def report(
    events: Iterable[UsageEvent],
    name: str,
    alpha: float = 0.05,
    control: str = "",
    order: Iterable[str] = (),
) -> dict[str, Any]:
    """Per variant: requests, the outcome (`selector_model.outcome`: its mean, and the
    share of successes), latency, tokens, rating; each other variant against the
    control (`control`, else the first of `order`, the configured variants, present
    in the events). The winner: the variant with the best mean outcome among those
    whose outcome differs from the control's at `alpha` (Mann-Whitney), or the
    control when every other is significantly worse."""
    listed = list(events)
    # `outcome` grades the events' JSON objects together, as online learning sees them:
    # a retry fails the answer it retries whichever variant (or none) either went to.
    graded = outcome.grade(e.document() for e in listed)
    groups: dict[str, list[UsageEvent]] = {}
    answered: dict[str, list[outcome.Result]] = {}
    for event, result in zip(listed, graded, strict=True):
        decision = event.decision or {}
        if decision.get("experiment") == name and decision.get("variant"):
            variant = str(decision["variant"])
            groups.setdefault(variant, []).append(event)
            if result is not None:
                answered.setdefault(variant, []).append(result)
    outcomes: dict[str, list[float]] = {}
    variants: dict[str, dict[str, Any]] = {}
    for variant, members in groups.items():
        results = answered.get(variant, [])
        values = outcomes[variant] = [r.value for r in results]
        weight = sum(r.weight for r in results)
        wins = sum(1 for r in results if r.success)
        row: dict[str, Any] = {
            "requests": len(members),
            "answered": len(results),
            "successes": wins,
            "success_rate": wins / len(results) if results else None,
            "outcome": {
                "n": len(values),
                "mean": sum(r.value * r.weight for r in results) / weight if weight else None,
            },
        }
        for metric in ("total_ms", "ttfc_ms", "tokens", "rating"):
            got = [v for e in members if (v := _metric(e, metric)) is not None]
            row[metric] = {"n": len(got), "mean": sum(got) / len(got) if got else None}
        variants[variant] = row
    configured = [v for v in order if v in variants]
    rest = sorted(v for v in variants if v not in configured)
    names = [*configured, *rest]
    base = control if control in variants else (names[0] if names else None)
    comparisons = []
    better: list[str] = []
    worse = 0
    for other in names:
        if other == base or base is None:
            continue
        a, b = variants[base], variants[other]
        p_outcome = mann_whitney_p(outcomes[base], outcomes[other])
        entry: dict[str, Any] = {
            "baseline": base,
            "variant": other,
            "outcome_p": p_outcome,
            "success_rate_p": proportion_p(
                a["successes"], a["answered"], b["successes"], b["answered"]
            ),
        }
        for metric in ("total_ms", "tokens", "rating"):
            xs = [v for e in groups[base] if (v := _metric(e, metric)) is not None]
            ys = [v for e in groups[other] if (v := _metric(e, metric)) is not None]
            entry[f"{metric}_p"] = mann_whitney_p(xs, ys)
        comparisons.append(entry)
        if p_outcome < alpha:
            if _mean(outcomes[other]) > _mean(outcomes[base]):
                better.append(other)
            else:
                worse += 1
    winner = None
    if better:
        winner = max(better, key=lambda v: _mean(outcomes[v]))
    elif base is not None and comparisons and worse == len(comparisons):
        winner = base
    return {
        "experiment": name,
        "alpha": alpha,
        "control": base,
        "variants": variants,
        "comparisons": comparisons,
        "winner": winner,
    }


def configured_report(
    events: Iterable[UsageEvent], name: str, experiment: Experiment
) -> dict[str, Any]:
    """`report` with the experiment's configured control and variant order."""
    return report(events, name, control=experiment.control, order=experiment.variants)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


async def load_events(settings: Usage, since: str = "90d") -> list[UsageEvent]:
    """Usage events for a report: PostgreSQL when configured, else the local files."""
    from proxy.usage.export import from_files, from_postgres, parse_since

    start = parse_since(since)
    if settings.postgres_dsn:
        return await from_postgres(settings.postgres_dsn, start)
    return await asyncio.to_thread(from_files, settings.file_path, start)

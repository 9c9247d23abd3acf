"""A/B experiments: sticky assignment of users to variants, and the report.

Assignment hashes (experiment, user) with SHA-256, so a user stays in one variant
across requests, restarts and replicas of the proxy. The report reads usage events
and compares variants pairwise against the first: success rate with a two-proportion
z-test, latency, tokens and rating with Welch's t-test. A winner is named only when
its lead is significant at `alpha`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from proxy.config import Experiment, Usage
from proxy.header_values import utf8
from selector_model.features import REQUEST_FEATURES, TASKS

_TASK_INDEX = {task: REQUEST_FEATURES.index(f"task_{task}") for task in TASKS}


def _unit(*parts: str) -> float:
    # utf8: a user header with bytes that are not UTF-8 hashes as the bytes it has.
    digest = hashlib.sha256(utf8("\x1f".join(parts))).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


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
) -> tuple[str, str, Experiment] | None:
    """(experiment, variant, its config) for this request, or None."""
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
                return name, variant, experiment
        return name, variant, experiment
    return None


# Statistics ---------------------------------------------------------------------------


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def _betacf(a: float, b: float, x: float) -> float:
    # Continued fraction for the regularised incomplete beta (Numerical Recipes 6.4).
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return h


def _t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| > |t|) for Student's t with `df` degrees of freedom."""
    x = df / (df + t * t)
    a, b = df / 2.0, 0.5
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def two_proportion_p(success_a: int, n_a: int, success_b: int, n_b: int) -> float:
    if n_a == 0 or n_b == 0:
        return 1.0
    pooled = (success_a + success_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 1.0
    z = (success_a / n_a - success_b / n_b) / se
    return 2 * _normal_sf(abs(z))


def welch_p(a: list[float], b: list[float]) -> float:
    if len(a) < 2 or len(b) < 2:
        return 1.0
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    var_a = sum((x - mean_a) ** 2 for x in a) / (len(a) - 1)
    var_b = sum((x - mean_b) ** 2 for x in b) / (len(b) - 1)
    se2 = var_a / len(a) + var_b / len(b)
    if se2 == 0:
        return 1.0
    df = se2**2 / ((var_a / len(a)) ** 2 / (len(a) - 1) + (var_b / len(b)) ** 2 / (len(b) - 1))
    return _t_sf_two_sided((mean_a - mean_b) / math.sqrt(se2), df)


# Report -------------------------------------------------------------------------------


def _success(event: Mapping[str, Any]) -> bool:
    outcome = event.get("outcome") or {}
    return (
        outcome.get("status") == 200
        and not outcome.get("error")
        and outcome.get("done_reason") in (None, "stop", "length")
        and not outcome.get("cancelled")
    )


def _metric(event: Mapping[str, Any], name: str) -> float | None:
    outcome = event.get("outcome") or {}
    if name == "rating":
        value = event.get("rating")
    elif name == "tokens":
        value = outcome.get("eval_count")
    else:
        value = outcome.get(name)
    return float(value) if isinstance(value, int | float) else None


def report(events: Iterable[Mapping[str, Any]], name: str, alpha: float = 0.05) -> dict[str, Any]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        decision = event.get("decision") or {}
        if decision.get("experiment") == name and decision.get("variant"):
            groups.setdefault(str(decision["variant"]), []).append(event)
    variants: dict[str, dict[str, Any]] = {}
    for variant, members in groups.items():
        wins = sum(1 for e in members if _success(e))
        row: dict[str, Any] = {
            "requests": len(members),
            "successes": wins,
            "success_rate": wins / len(members),
        }
        for metric in ("total_ms", "ttfc_ms", "tokens", "rating"):
            values = [v for e in members if (v := _metric(e, metric)) is not None]
            row[metric] = {"n": len(values), "mean": sum(values) / len(values) if values else None}
        variants[variant] = row
    names = sorted(variants)
    comparisons = []
    winner = None
    if len(names) >= 2:
        base = names[0]
        for other in names[1:]:
            a, b = variants[base], variants[other]
            p_success = two_proportion_p(
                a["successes"], a["requests"], b["successes"], b["requests"]
            )
            entry: dict[str, Any] = {
                "baseline": base,
                "variant": other,
                "success_rate_p": p_success,
            }
            for metric in ("total_ms", "tokens", "rating"):
                xs = [v for e in groups[base] if (v := _metric(e, metric)) is not None]
                ys = [v for e in groups[other] if (v := _metric(e, metric)) is not None]
                entry[f"{metric}_p"] = welch_p(xs, ys)
            comparisons.append(entry)
            if p_success < alpha:
                leader = other if b["success_rate"] > a["success_rate"] else base
                if (
                    winner is None
                    or variants[leader]["success_rate"] > variants[winner]["success_rate"]
                ):
                    winner = leader
    return {
        "experiment": name,
        "alpha": alpha,
        "variants": variants,
        "comparisons": comparisons,
        "winner": winner,
    }


async def load_events(settings: Usage, since: str = "90d") -> list[dict[str, Any]]:
    """Usage events for a report: PostgreSQL when configured, else the local files."""
    from proxy.usage.export import from_files, from_postgres, parse_since

    start = parse_since(since)
    if settings.postgres_dsn:
        return await from_postgres(settings.postgres_dsn, start)
    return await asyncio.to_thread(from_files, settings.file_path, start)

"""What the status page draws over time: requests, errors, refusals and time to first
chunk in 10-second buckets over the last minutes, and `auto`'s choices per profile.
Errors and refusals are as `selector_model.outcome` reads an answer (`failed`,
`refusal`): a request refused for what it says or who sent it is no failure of the
proxy or a backend, and a client that left before its answer began is neither.

`Recent.finished` is a completion hook, run once per request: a bucket index, a few
list stores, and a dict lookup for an `auto` decision. The buckets are a ring of
preallocated lists that a new period overwrites in place, so nothing grows with
traffic. Times are `perf_counter` readings (the handler's clock); the snapshot turns
them into wall-clock times.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from proxy.routes import METRICS_PATH, OWN_PREFIX
from selector_model.outcome import FAILURE, REFUSAL, judged

if TYPE_CHECKING:
    from aiohttp import web

    from proxy.outcome import Outcome

BUCKET_SECONDS = 10
BUCKETS = 60  # ten minutes
# (profile, model, reason) keys kept: profiles and reasons are few and models are the
# backends' candidates, so this is only a guard.
_MAX_CHOICES = 1024


class Recent:
    def __init__(self) -> None:
        self.period = [-1] * BUCKETS  # the bucket number each slot holds
        self.requests = [0] * BUCKETS
        self.errors = [0] * BUCKETS
        self.refused = [0] * BUCKETS
        self.ttfc_count = [0] * BUCKETS
        self.ttfc_sum = [0.0] * BUCKETS
        self.ttfc_max = [0.0] * BUCKETS
        # (profile, model, reason): [count, perf_counter of the latest]
        self.choices: dict[tuple[str, str, str], list[float]] = {}
        # profile: (perf_counter, the latest decision's record, as the usage event has it)
        self.latest: dict[str, tuple[float, dict[str, Any]]] = {}

    def finished(self, request: web.Request, outcome: Outcome) -> None:
        """The completion hook. Only client traffic counts: not the proxy's own
        endpoints (the page's own refreshes among them) nor Prometheus' scrapes."""
        path = request.path
        if path.startswith(OWN_PREFIX) or path == METRICS_PATH:
            return
        decided, served = outcome.decided, outcome.served
        started, ended = decided.started, served.ended
        number = int(ended // BUCKET_SECONDS)
        slot = number % BUCKETS
        if self.period[slot] != number:
            self.period[slot] = number
            self.requests[slot] = self.errors[slot] = self.refused[slot] = 0
            self.ttfc_count[slot] = 0
            self.ttfc_sum[slot] = self.ttfc_max[slot] = 0.0
        self.requests[slot] += 1
        verdict = judged(served.status, served.error, served.cancelled)
        if verdict is FAILURE:
            self.errors[slot] += 1
        elif verdict is REFUSAL:
            self.refused[slot] += 1
        if served.first_byte_at:
            ttfc = served.first_byte_at - started
            self.ttfc_count[slot] += 1
            self.ttfc_sum[slot] += ttfc
            if ttfc > self.ttfc_max[slot]:
                self.ttfc_max[slot] = ttfc
        decision = decided.decision
        if decision:
            key = (decision["profile"], decision["chosen"], decision["reason"])
            seen = self.choices.get(key)
            if seen is not None:
                seen[0] += 1
                seen[1] = ended
            elif len(self.choices) < _MAX_CHOICES:
                self.choices[key] = [1, ended]
            self.latest[decision["profile"]] = (ended, decision)

    def snapshot(self) -> dict[str, Any]:
        """The buckets oldest first (wall-clock start, in seconds), the choices most
        frequent first, and the latest decision per profile."""
        now, wall = time.perf_counter(), time.time()
        current = int(now // BUCKET_SECONDS)
        start: list[float] = []
        requests: list[int] = []
        errors: list[int] = []
        refused: list[int] = []
        ttfc_mean: list[float | None] = []
        ttfc_max: list[float | None] = []
        for number in range(current - BUCKETS + 1, current + 1):
            slot = number % BUCKETS
            start.append(round(wall - (now - number * BUCKET_SECONDS), 3))
            held = self.period[slot] == number
            requests.append(self.requests[slot] if held else 0)
            errors.append(self.errors[slot] if held else 0)
            refused.append(self.refused[slot] if held else 0)
            count = self.ttfc_count[slot] if held else 0
            ttfc_mean.append(round(self.ttfc_sum[slot] / count * 1000, 3) if count else None)
            ttfc_max.append(round(self.ttfc_max[slot] * 1000, 3) if count else None)
        order = sorted(self.choices.items(), key=lambda kv: (kv[0][0], -kv[1][0], kv[0][1]))
        choices = [
            {
                "profile": profile,
                "model": model,
                "reason": reason,
                "count": int(seen[0]),
                "seconds_ago": round(now - seen[1], 1),
            }
            for (profile, model, reason), seen in order
        ]
        latest = {
            profile: {**_latest_fields(decision), "seconds_ago": round(now - at, 1)}
            for profile, (at, decision) in sorted(self.latest.items())
        }
        return {
            "bucket_seconds": BUCKET_SECONDS,
            "series": {
                "start": start,
                "requests": requests,
                "errors": errors,
                "refused": refused,
                "ttfc_ms_mean": ttfc_mean,
                "ttfc_ms_max": ttfc_max,
            },
            "choices": choices,
            "latest": latest,
        }


_LATEST_FIELDS = (
    "chosen",
    "reason",
    "kind",
    "p_success",
    "utility",
    "runner_up",
    "runner_up_p_success",
    "runner_up_utility",
    "experiment",
    "variant",
)


def _latest_fields(decision: dict[str, Any]) -> dict[str, Any]:
    return {name: decision.get(name) for name in _LATEST_FIELDS}

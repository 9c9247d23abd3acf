"""Per served model and backend: requests, errors, refusals, p50/p95 time to first chunk
and total time, tokens/s, ratings. Errors are failures as `selector_model.outcome.failed`
reads them (in SQL, `failed_sql`), refusals as `refusal` reads them (`refusal_sql`): a
refusal is no error, and a request its client left before its answer began is neither.
From PostgreSQL when configured, else from in-memory windows
fed by the background writer (never by the handler). Over every key's requests, or over
one API key's own (`whose`): what a key with a model list reads, since a row over every
key's would show it other tenants' traffic on a model they share.

A model is named as Ollama reads its name (`backends.normalize_model`, as the metrics
label it): the events keep the client's spelling, and every spelling of one model
(case, registry and namespace) is one row, not one each. A cloud model's name is the
provider's, which Ollama never reads: kept as it is."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from proxy.backends import normalize_model
from selector_model import usage_event
from selector_model.outcome import FAILURE, REFUSAL, failed_sql, judged, refusal_sql
from selector_model.usage_event import UsageEvent

Key = tuple[str | None, str | None]
# An API key as usage events name it: (`api_key_id`, `api_key_hash`).
ApiKeyRef = tuple[str | None, str | None]


def model_name(served_model: str | None, provider: str | None) -> str | None:
    """The row's model name: as Ollama reads it, unless a cloud provider served it."""
    if not served_model or provider:
        return served_model
    return normalize_model(served_model)


# Feedback names a request by the proxy's id or by the client's X-Request-Id (what the
# client saw in the answer): a rating by a client id a client reused rates each request
# that carried it; with API keys, only a rating given with the request's own key counts
# (`usage_event.rating_counts`: by the key's hash; by name only where neither row has
# one). Of those, the latest given replaces the earlier ones (`usage_event.rating_of`,
# whose order this is: the time given, then the feedback id as text). `u` is
# usage_events; `f.rating` the request's rating, or NULL.
FEEDBACK_JOIN = """
LEFT JOIN LATERAL (SELECT fb.rating FROM feedback fb
                   WHERE (fb.request_id = u.request_id OR fb.request_id = u.client_request_id)
                     AND (fb.api_key_id IS NULL
                          OR fb.api_key_hash = u.api_key_hash
                          OR (fb.api_key_hash IS NULL AND u.api_key_hash IS NULL
                              AND fb.api_key_id = u.api_key_id))
                   ORDER BY fb.ts DESC, fb.feedback_id COLLATE "C" DESC
                   LIMIT 1
                  ) f ON true
"""

# The names served by local backends in the window, to be named as Ollama reads them.
_NAMES = """
SELECT DISTINCT served_model FROM usage_events
WHERE ts >= now() - make_interval(secs => $1) AND served_model IS NOT NULL AND provider IS NULL
"""

# $2 and $3: those names and how Ollama reads them; a name not among them (written
# since, or a cloud model's) is its row's as it is. $4 and $5: the API key (name, hash)
# whose requests alone count, or NULL for every request; the same key as a rating's in
# FEEDBACK_JOIN (`usage_event.rating_counts`): by hash, by name only where neither has
# one.
_QUERY = f"""
SELECT coalesce(n.normal, u.served_model) AS served_model, u.backend,
       count(*) AS requests,
       count(*) FILTER (WHERE {failed_sql("u")}) AS errors,
       count(*) FILTER (WHERE {refusal_sql("u")}) AS refusals,
       count(*) FILTER (WHERE u.cancelled) AS cancelled,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY u.ttfc_ms) AS ttfc_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY u.ttfc_ms) AS ttfc_p95,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY u.total_ms) AS total_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY u.total_ms) AS total_p95,
       sum(u.eval_count) FILTER (WHERE u.eval_duration > 0) AS tokens,
       sum(u.eval_duration) FILTER (WHERE u.eval_duration > 0) AS eval_ns,
       count(f.rating) AS ratings,
       avg(f.rating) AS rating_mean
FROM usage_events u
LEFT JOIN unnest($2::text[], $3::text[]) AS n(name, normal)
       ON n.name = u.served_model AND u.provider IS NULL
{FEEDBACK_JOIN}
WHERE u.ts >= now() - make_interval(secs => $1)
  AND ($4::text IS NULL
       OR u.api_key_hash = $5::text
       OR ($5::text IS NULL AND u.api_key_hash IS NULL AND u.api_key_id = $4::text))
GROUP BY 1, u.backend
ORDER BY requests DESC
"""


def _entry(
    key: Key,
    *,
    requests: int,
    errors: int,
    refusals: int,
    cancelled: int,
    ttfc: tuple[float | None, float | None],
    total: tuple[float | None, float | None],
    tokens: int,
    eval_ns: int,
    ratings: int,
    rating_mean: float | None,
) -> dict[str, Any]:
    return {
        "served_model": key[0],
        "backend": key[1],
        "requests": requests,
        "errors": errors,
        "refusals": refusals,
        "cancelled": cancelled,
        "ttfc_ms": {"p50": ttfc[0], "p95": ttfc[1]},
        "total_ms": {"p50": total[0], "p95": total[1]},
        "tokens_per_s": round(tokens / eval_ns * 1e9, 3) if eval_ns else None,
        "ratings": {"count": ratings, "mean": rating_mean},
    }


async def from_postgres(
    pool: asyncpg.Pool,
    window_seconds: float,
    seconds: float = 2.0,
    *,
    whose: ApiKeyRef | None = None,
) -> list[dict[str, Any]]:
    """Per model and backend over the window, of the requests made with the API key
    `whose` (None: of every request; a model and backend it made none on has no row);
    TimeoutError after about `seconds` (each step's) when the database does not answer.
    The connection's release has its own timeout: a query cancelled on a silent server
    leaves a release that waits for the server, and would hold the caller (and the
    pool's connection) as long."""
    conn = await pool.acquire(timeout=seconds)
    window = float(window_seconds)
    try:
        # No transaction around both (its BEGIN would have no timeout): a name written
        # between them is its row's as sent until the next call.
        names = [r[0] for r in await conn.fetch(_NAMES, window, timeout=seconds)]
        normals = [model_name(name, None) for name in names]
        key_id, key_hash = whose if whose is not None else (None, None)
        rows = await conn.fetch(_QUERY, window, names, normals, key_id, key_hash, timeout=seconds)
    finally:
        await pool.release(conn, timeout=seconds)
    return [
        _entry(
            (r["served_model"], r["backend"]),
            requests=r["requests"],
            errors=r["errors"],
            refusals=r["refusals"],
            cancelled=r["cancelled"],
            ttfc=(r["ttfc_p50"], r["ttfc_p95"]),
            total=(r["total_p50"], r["total_p95"]),
            tokens=int(r["tokens"] or 0),
            eval_ns=int(r["eval_ns"] or 0),
            ratings=r["ratings"],
            rating_mean=r["rating_mean"],
        )
        for r in rows
    ]


def _percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks, as PostgreSQL's percentile_cont."""
    if not values:
        return None
    values = sorted(values)
    pos = (len(values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


@dataclass(slots=True)
class Sample:
    """What the stats keep of one usage event. Never changed once made; not a frozen
    dataclass, which costs several times as much to build, and one is built per event."""

    request_id: str
    # The API key it was made with: a key's own view counts only its own requests.
    api_key: ApiKeyRef
    ttfc_ms: float | None
    total_ms: float
    failed: bool  # `selector_model.outcome.failed`
    refused: bool  # `selector_model.outcome.refusal`
    cancelled: bool
    eval_count: int | None
    eval_duration: int | None

    @classmethod
    def of(cls, event: UsageEvent, api_key: ApiKeyRef) -> Sample:
        o = event.outcome
        verdict = judged(o.status, o.error, o.cancelled)
        return cls(
            event.request_id,
            api_key,
            o.ttfc_ms,
            o.total_ms,
            verdict is FAILURE,
            verdict is REFUSAL,
            o.cancelled,
            o.eval_count,
            o.eval_duration,
        )


# Keys (served model, backend) held at once: the model is the client's own name for a
# request no backend knows, so without a cap a client naming a new model each time
# would add a window per request.
MAX_KEYS = 64


class MemoryStats:
    """The last `window` events per (served model, backend), and the ratings of the
    most recent requests (by id) so feedback can be attributed to a model.

    Bounded: at most MAX_KEYS keys and `window * 4` events in all. Past either, the
    key used least recently gives up its oldest events (all of them, for a new key),
    so busy models keep full windows while names seen once drop out."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.total = window * 4
        self.size = 0  # events in all windows
        # Windows ordered from the least recently used key.
        self.events: OrderedDict[Key, deque[Sample]] = OrderedDict()
        # The ids of the latest requests, oldest first, to the API key each was made
        # with (id, hash): a rating is kept only for these (`usage_event.rating_counts`).
        self.recent: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        self.ratings: dict[str, float] = {}
        # Client ids of recent requests, to the proxy ids of the requests that carried
        # them (feedback may name either; see FEEDBACK_JOIN).
        self.client_ids: OrderedDict[str, list[str]] = OrderedDict()

    def add(self, event: UsageEvent) -> None:
        key: Key = (model_name(event.served_model, event.provider), event.backend)
        events = self.events
        window = events.get(key)
        if window is None:
            while len(events) >= MAX_KEYS:
                self._drop(next(iter(events)), self.window)
            window = events[key] = deque(maxlen=self.window)
        else:
            events.move_to_end(key)
        if len(window) == window.maxlen:
            self.ratings.pop(window.popleft().request_id, None)
            self.size -= 1
        elif self.size >= self.total:
            self._drop(next(iter(events)), 1)
        rid = event.request_id
        client = event.client
        # One tuple for the sample and `recent`: the key costs the sample a reference.
        api_key = (client.api_key_id, client.api_key_hash)
        window.append(Sample.of(event, api_key))
        self.size += 1
        recent = self.recent
        recent[rid] = api_key
        while len(recent) > self.total:
            self.ratings.pop(recent.popitem(last=False)[0], None)
        client_id = event.client_request_id
        if client_id:
            carried = self.client_ids.pop(client_id, [])
            if len(carried) >= self.window:
                # The oldest of this key's (else the oldest): no key sending many
                # requests with another's id pushes that key's own out.
                key = recent[rid]
                del carried[next((i for i, r in enumerate(carried) if recent.get(r) == key), 0)]
            carried.append(rid)
            self.client_ids[client_id] = carried
            while len(self.client_ids) > self.total:
                self.client_ids.popitem(last=False)

    def _drop(self, key: Key, count: int) -> None:
        """The oldest `count` events of `key`'s window; the key too once it is empty."""
        window = self.events[key]
        for _ in range(min(count, len(window))):
            self.ratings.pop(window.popleft().request_id, None)
            self.size -= 1
        if not window:
            del self.events[key]

    def rate(
        self, request_id: str, rating: float, rater: str | None, rater_hash: str | None = None
    ) -> None:
        recent = self.recent
        for rid in (request_id, *self.client_ids.get(request_id, ())):
            key = recent.get(rid)
            if key is not None and usage_event.rating_counts(rater, key[0], rater_hash, key[1]):
                # Seen in the order given: the latest replaces the one before
                # (`usage_event.rating_of`).
                self.ratings[rid] = rating

    def summary(self, whose: ApiKeyRef | None = None) -> list[dict[str, Any]]:
        """Per model and backend, of the requests in its window made with the API key
        `whose` (None: of all of them; a window without one of its requests has no
        row). The windows are shared: of a key's requests, those among the latest
        `window` of their model and backend."""
        out = []
        by, by_hash = whose if whose is not None else (None, None)
        for key, every in self.events.items():
            window: Sequence[Sample] = every
            if whose is not None:
                # The same key as a rating's (`usage_event.rating_counts`).
                window = [
                    e
                    for e in every
                    if usage_event.rating_counts(by, e.api_key[0], by_hash, e.api_key[1])
                ]
                if not window:
                    continue
            ttfc = [e.ttfc_ms for e in window if e.ttfc_ms is not None]
            total = [e.total_ms for e in window]
            timed = [e for e in window if (e.eval_duration or 0) > 0]
            rated = [self.ratings[e.request_id] for e in window if e.request_id in self.ratings]
            out.append(
                _entry(
                    key,
                    requests=len(window),
                    errors=sum(1 for e in window if e.failed),
                    refusals=sum(1 for e in window if e.refused),
                    cancelled=sum(1 for e in window if e.cancelled),
                    ttfc=(_percentile(ttfc, 0.5), _percentile(ttfc, 0.95)),
                    total=(_percentile(total, 0.5), _percentile(total, 0.95)),
                    tokens=sum(e.eval_count or 0 for e in timed),
                    eval_ns=sum(e.eval_duration or 0 for e in timed),
                    ratings=len(rated),
                    rating_mean=sum(rated) / len(rated) if rated else None,
                )
            )
        out.sort(key=lambda e: -int(e["requests"]))
        return out

"""`GET /metrics` in Prometheus' text format (prometheus-client), one registry per proxy.

On the request path only in-memory counters and histograms move (a dict lookup for
the labelled child, then `inc`/`observe`): no I/O, no await. Backend health, circuit
state, requests in flight and the usage sinks' counters are read when Prometheus
scrapes, by a collector, so they cost nothing between scrapes.

Label values are bounded: a route is labelled as the route table (`proxy.routes`)
names it and a path outside the table counts as `other`; a model label is only a model
some backend lists (or an `auto` name), as Ollama reads it (lower case, with its tag),
and anything else a client sends counts as `other`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.backends import normalize_model
from proxy.memory import used_bytes
from proxy.routes import route_label

if TYPE_CHECKING:
    from aiohttp import web

    from proxy.auth_store import KeyStore
    from proxy.backends import BackendPool
    from proxy.outcome import Outcome
    from proxy.usage import UsagePipeline

CIRCUIT_STATES = ("closed", "half_open", "open")
# Seconds: a first chunk arrives within milliseconds (loaded model) or minutes (a model
# loading); a whole answer can take minutes.
STREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_MAX_MODEL_LABELS = 4096


class Metrics:
    def __init__(
        self,
        backends: BackendPool,
        usage: UsagePipeline,
        key_store: KeyStore | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.backends = backends
        self.in_flight = 0
        r = self.registry
        self.requests = Counter(
            "autoroute_requests",
            "Requests answered, by route, HTTP status and served model",
            ("route", "status", "model"),
            registry=r,
        )
        self.ttfc = Histogram(
            "autoroute_time_to_first_chunk_seconds",
            "From the request's arrival to its first body byte sent to the client",
            ("route",),
            buckets=STREAM_BUCKETS,
            registry=r,
        )
        self.total = Histogram(
            "autoroute_request_duration_seconds",
            "From the request's arrival to the end of its answer",
            ("route",),
            buckets=STREAM_BUCKETS,
            registry=r,
        )
        self.decision = Histogram(
            "autoroute_decision_seconds",
            "Time to choose a model for `model: auto` (filters, scoring, policy)",
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.selections = Counter(
            "autoroute_selections",
            "Models chosen by `model: auto`, by model and reason",
            ("model", "reason"),
            registry=r,
        )
        self.denied = Counter(
            "autoroute_auth_denied",
            "Requests refused by access control, by reason",
            ("reason",),
            registry=r,
        )
        r.register(_StateCollector(self, backends, usage, key_store))
        self._request_children: dict[tuple[str, int, str], Any] = {}
        self._route_children: dict[str, tuple[Any, Any]] = {}
        self._selection_children: dict[tuple[str, str], Any] = {}
        self._denied_children: dict[str, Any] = {}
        self._model_labels: dict[str, str] = {}

    def model_label(self, name: str | None) -> str:
        if not name:
            return ""
        label = self._model_labels.get(name)
        if label is not None:
            return label
        normal = normalize_model(name)
        if normal.startswith("auto:") or any(
            s.models and normal in s.models for s in self.backends.states
        ):
            # Ollama's reading of the name, not the client's spelling of it: every case
            # mix and registry prefix of one model is one series, not one each.
            label = normal
            if len(self._model_labels) < _MAX_MODEL_LABELS:
                self._model_labels[name] = label
            return label
        return "other"  # not cached: the model may appear on a backend later

    def finished(self, request: web.Request, outcome: Outcome) -> None:
        """The completion hook: the request's counters and durations."""
        decided, answer = outcome.decided, outcome.served
        route = route_label(decided.route)
        started = decided.started
        status = answer.final_status
        decision = decided.decision
        served = answer.model
        key = (route, status, served or "")
        child = self._request_children.get(key)
        if child is None:
            child = self.requests.labels(route, str(status), self.model_label(served))
            if len(self._request_children) < _MAX_MODEL_LABELS * 4:
                self._request_children[key] = child
        child.inc()
        pair = self._route_children.get(route)
        if pair is None:
            pair = self._route_children[route] = (
                self.ttfc.labels(route),
                self.total.labels(route),
            )
        if answer.first_byte_at:
            pair[0].observe(answer.first_byte_at - started)
        pair[1].observe(answer.ended - started)
        if decision:
            # No model chosen (the cloud answering in a profile's name) is counted
            # under its reason with the model label empty.
            sel_key = (decision["chosen"] or "", decision["reason"])
            sel = self._selection_children.get(sel_key)
            if sel is None:
                sel = self._selection_children[sel_key] = self.selections.labels(*sel_key)
            sel.inc()

    def deny(self, reason: str) -> None:
        child = self._denied_children.get(reason)
        if child is None:
            child = self._denied_children[reason] = self.denied.labels(reason)
        child.inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StateCollector(Collector):
    """What is read at scrape time: backends, requests in flight, usage sinks."""

    def __init__(
        self,
        metrics: Metrics,
        backends: BackendPool,
        usage: UsagePipeline,
        key_store: KeyStore | None,
    ) -> None:
        self.metrics = metrics
        self.backends = backends
        self.usage = usage
        self.key_store = key_store

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand only: the families depend on the sinks

    def collect(self) -> Iterable[Metric]:
        in_flight = GaugeMetricFamily(
            "autoroute_requests_in_flight", "Requests the proxy is handling now"
        )
        in_flight.add_metric([], self.metrics.in_flight)
        yield in_flight
        healthy = GaugeMetricFamily(
            "autoroute_backend_healthy",
            "1 when the backend's circuit lets requests in and its last check succeeded",
            labels=["backend"],
        )
        busy = GaugeMetricFamily(
            "autoroute_backend_in_flight", "Requests in flight on the backend", labels=["backend"]
        )
        circuit = GaugeMetricFamily(
            "autoroute_backend_circuit_state",
            "1 for the circuit breaker's current state (closed, half_open, open)",
            labels=["backend", "state"],
        )
        failures = GaugeMetricFamily(
            "autoroute_backend_consecutive_failures",
            "Consecutive failures counted by the circuit breaker",
            labels=["backend"],
        )
        memory = GaugeMetricFamily(
            "autoroute_backend_memory_used_bytes",
            "GPU memory the backend's loaded models hold (its last /api/ps)",
            labels=["backend"],
        )
        for state in self.backends.states:
            now = state.pool.loop.time()
            current = state.breaker.state(now)
            label = state.label
            healthy.add_metric([label], float(current != "open" and not state.last_error))
            busy.add_metric([label], state.in_flight)
            for name in CIRCUIT_STATES:
                circuit.add_metric([label, name], float(current == name))
            failures.add_metric([label], state.breaker.failures)
            memory.add_metric([label], used_bytes(state))
        yield from (healthy, busy, circuit, failures, memory)

        counters = self.usage.counters()
        queue = GaugeMetricFamily(
            "autoroute_usage_queue_length", "Usage events waiting for the background writer"
        )
        queue.add_metric([], counters["queue"])
        overflowed = CounterMetricFamily(
            "autoroute_usage_overflowed",
            "Usage events spilled straight to disk because the queue was full",
        )
        overflowed.add_metric([], counters["overflowed"])
        invalid = CounterMetricFamily(
            "autoroute_usage_invalid",
            "Usage events that could not be built (logged), so never reached a sink",
        )
        invalid.add_metric([], counters["invalid"])
        events = CounterMetricFamily(
            "autoroute_usage_events",
            "Usage records per sink: queued, written, spilled, replayed, dropped",
            labels=["sink", "outcome"],
        )
        sink_failures = CounterMetricFamily(
            "autoroute_usage_sink_failures", "Failed sink writes", labels=["sink"]
        )
        pending = GaugeMetricFamily(
            "autoroute_usage_spool_pending", "Records waiting in the sink's spool", labels=["sink"]
        )
        for sink, snap in counters["sinks"].items():
            for outcome in ("queued", "written", "spilled", "replayed", "dropped"):
                events.add_metric([sink, outcome], snap[outcome])
            sink_failures.add_metric([sink], snap["failures"])
            pending.add_metric([sink], snap["spool_pending"])
        yield from (queue, overflowed, invalid, events, sink_failures, pending)
        if self.key_store is not None:
            yield from _key_store_metrics(self.key_store)


def _key_store_metrics(store: KeyStore) -> Iterable[Metric]:
    """The API-key table's reachability: during an outage the proxy keeps the last keys
    it read, which only an alert on these can tell an operator."""
    up = GaugeMetricFamily(
        "autoroute_api_key_store_up", "1 when the last read of the API-key table worked"
    )
    up.add_metric([], float(store.refreshes > 0 and not store.failing))
    keys = GaugeMetricFamily(
        "autoroute_api_keys", "API keys the proxy accepts now (configured and stored)"
    )
    keys.add_metric([], len(store.access.keys))
    reads = CounterMetricFamily(
        "autoroute_api_key_store_reads",
        "Reads of the API-key table, by result",
        labels=["result"],
    )
    reads.add_metric(["ok"], store.refreshes)
    reads.add_metric(["failed"], store.failures)
    last = GaugeMetricFamily(
        "autoroute_api_key_store_last_success_timestamp_seconds",
        "Unix time of the last read of the API-key table that worked (0: none yet)",
    )
    last.add_metric([], store.last_success)
    yield from (up, keys, reads, last)

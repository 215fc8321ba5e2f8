"""Prometheus metrics of the service (``GET /metrics``), in a registry of its own so several
services in one process (tests) never share counters."""
from __future__ import annotations

from collections.abc import Callable

from rerank.extras import missing_extra
from rerank.serve.batcher import BatchStats

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.core import GaugeMetricFamily
except ImportError as error:
    raise missing_extra("serve", "the service's Prometheus metrics", error) from error

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class ServiceMetrics:
    """Counters and histograms of requests, model batches, latency and errors, each labelled
    with the served model (and requests with the API key's name, never the key)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rerank_requests", "Rerank requests answered, by model, request shape, HTTP status "
                                "and API key name", ["model", "shape", "status", "key"], registry=r)
        self.errors = Counter("rerank_errors", "Requests refused or failed, by model and error type",
                              ["model", "error_type"], registry=r)
        self.latency = Histogram("rerank_request_duration_seconds", "Time from request body read to response",
                                 ["model"], buckets=_LATENCY, registry=r)
        self.queue_wait = Histogram("rerank_queue_wait_seconds", "Time a request waited for the model",
                                    ["model"], buckets=_LATENCY, registry=r)
        self.model_time = Histogram("rerank_batch_duration_seconds", "Wall time of one model call (pipeline run)",
                                    ["model"], buckets=_LATENCY, registry=r)
        self.batch_requests = Histogram("rerank_batch_requests", "Requests merged into one model call",
                                        ["model"], buckets=_SIZES, registry=r)
        self.batch_pairs = Histogram("rerank_batch_pairs", "(query, document) pairs in one model call",
                                     ["model"], buckets=_SIZES, registry=r)
        self.documents = Histogram("rerank_request_documents", "Documents per accepted request",
                                   ["model"], buckets=_SIZES, registry=r)
        self.cutoffs = Counter("rerank_cutoff_chosen", "Cut-off values chosen per request under a latency budget",
                               ["model", "variable", "value"], registry=r)
        self.budget = Counter("rerank_budget_requests", "Requests with a latency budget, by outcome: within or over "
                              "the budget (measured), and unfit (even the cheapest cut-offs were predicted over)",
                              ["model", "outcome"], registry=r)
        self.cache = Counter("rerank_score_cache_lookups", "Score cache lookups of (query, document) pairs, by stage "
                             "and outcome (hit or miss)", ["model", "stage", "outcome"], registry=r)
        self.loads = Counter("rerank_model_loads", "Times a model was loaded, by model", ["model"], registry=r)
        self.unloads = Counter("rerank_model_unloads", "Times a model was unloaded (least recently used), by model",
                               ["model"], registry=r)
        self.in_flight = Gauge("rerank_in_flight_requests", "Requests being handled", registry=r)
        self._gauges: list[tuple[str, str, Callable[[], dict[str, float]]]] = []
        r.register(_Gauges(self._gauges))

    def gauge(self, name: str, documentation: str, values: Callable[[], dict[str, float]]) -> None:
        """A gauge labelled by model, read from ``values()`` (model → value) at each scrape."""
        self._gauges.append((name, documentation, values))

    def record_batch(self, model: str, stats: BatchStats) -> None:
        """Account one model call of ``model``."""
        self.batch_requests.labels(model).observe(stats.requests)
        self.batch_pairs.labels(model).observe(stats.pairs)
        self.model_time.labels(model).observe(stats.model_seconds)
        for wait in stats.waits:
            self.queue_wait.labels(model).observe(wait)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _Gauges:
    """Per-model gauges computed at scrape time (queue depth, loaded, cost scale)."""

    def __init__(self, gauges: list[tuple[str, str, Callable[[], dict[str, float]]]]) -> None:
        self.gauges = gauges

    def collect(self):
        for name, documentation, values in self.gauges:
            family = GaugeMetricFamily(name, documentation, labels=["model"])
            for model, value in values().items():
                family.add_metric([model], value)
            yield family

"""Prometheus metrics of the service (``GET /metrics``), in a registry of its own so several
services in one process (tests) never share counters."""
from __future__ import annotations

from rerank.extras import missing_extra
from rerank.serve.batcher import BatchStats

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
except ImportError as error:
    raise missing_extra("serve", "the service's Prometheus metrics", error) from error

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class ServiceMetrics:
    """Counters and histograms of requests, model batches, latency and errors."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rerank_requests", "Rerank requests answered, by request shape and HTTP status",
                                ["shape", "status"], registry=r)
        self.errors = Counter("rerank_errors", "Requests refused or failed, by error type", ["error_type"], registry=r)
        self.latency = Histogram("rerank_request_duration_seconds", "Time from request body read to response",
                                 buckets=_LATENCY, registry=r)
        self.queue_wait = Histogram("rerank_queue_wait_seconds", "Time a request waited for the model",
                                    buckets=_LATENCY, registry=r)
        self.model_time = Histogram("rerank_batch_duration_seconds", "Wall time of one model call (pipeline run)",
                                    buckets=_LATENCY, registry=r)
        self.batch_requests = Histogram("rerank_batch_requests", "Requests merged into one model call",
                                        buckets=_SIZES, registry=r)
        self.batch_pairs = Histogram("rerank_batch_pairs", "(query, document) pairs in one model call",
                                     buckets=_SIZES, registry=r)
        self.documents = Histogram("rerank_request_documents", "Documents per accepted request",
                                   buckets=_SIZES, registry=r)
        self.cutoffs = Counter("rerank_cutoff_chosen", "Cut-off values chosen per request under a latency budget",
                               ["variable", "value"], registry=r)
        self.budget = Counter("rerank_budget_requests", "Requests with a latency budget, by outcome: within or over "
                              "the budget (measured), and unfit (even the cheapest cut-offs were predicted over)",
                              ["outcome"], registry=r)
        self.cache = Counter("rerank_score_cache_lookups", "Score cache lookups of (query, document) pairs, by stage "
                             "and outcome (hit or miss)", ["stage", "outcome"], registry=r)
        self.queue_depth = Gauge("rerank_queue_depth", "Requests waiting for the model", registry=r)
        self.cost_scale = Gauge("rerank_budget_cost_scale", "Factor on the start-up stage costs: how much slower (>1) "
                                "or faster the last requests ran than predicted", registry=r)
        self.in_flight = Gauge("rerank_in_flight_requests", "Requests being handled", registry=r)

    def record_batch(self, stats: BatchStats) -> None:
        """Account one model call."""
        self.batch_requests.observe(stats.requests)
        self.batch_pairs.observe(stats.pairs)
        self.model_time.observe(stats.model_seconds)
        for wait in stats.waits:
            self.queue_wait.observe(wait)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

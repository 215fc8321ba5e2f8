"""What a running service allows and how it batches: the ``[serve]`` table of a pipeline config."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Annotated, Any, Optional

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

from rerank.errors import RerankError
from rerank.precision import CHOICES

Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]


class SettingsError(RerankError, ValueError):
    """A ``[serve]`` setting that is unknown or out of range."""


MODEL_SETTINGS = ("batching", "max_batch_size", "max_wait_ms", "max_queue", "precision", "budget_ms",
                  "budget_headroom", "budget_follow_drift", "cutoff_values", "warmup_sizes", "normalize",
                  "min_relevance", "batch_invariance")
"""Settings one served model may set for itself (its own pipeline config's ``[serve]`` table);
the rest belong to the whole service."""


@dataclass(frozen=True, config=ConfigDict(strict=True, extra="forbid"))
class ServeSettings:
    """Limits and batching of the HTTP service; every field can be set in the pipeline config's
    ``[serve]`` table and overridden on the ``rerank serve`` command line.

    Micro-batching: while the model is busy, requests queue; the next model call takes every
    queued request in arrival order until ``max_batch_size`` (query, document) pairs, waiting at
    most ``max_wait_ms`` for more when the queue runs dry. ``batching = false`` scores each request
    in a model call of its own (same queue, same worker), the baseline the benchmark compares.

    Types and ranges are checked by pydantic when the settings are made; :meth:`from_table`
    turns its errors into one-line :class:`SettingsError` messages.
    """

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    """0 picks a free port."""
    batching: bool = True
    max_batch_size: PositiveInt = 512
    """Most (query, document) pairs in one merged model call; a larger request runs alone."""
    max_wait_ms: NonNegative = 2.0
    """How long an idle worker waits for more requests to join a batch, while some are still
    arriving (a lone request never waits)."""
    max_queue: PositiveInt = 256
    """Requests waiting for the model beyond this are refused with 503 (back-pressure)."""
    max_documents: PositiveInt = 1000
    """Documents per request."""
    max_document_chars: PositiveInt = 20_000
    """Characters per document (and per query)."""
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    """Bytes of one request body."""
    request_timeout_s: Positive = 30.0
    """A request not answered by then gets 504 (and is dropped from the queue)."""
    shutdown_timeout_s: NonNegative = 30.0
    """On SIGTERM/SIGINT, how long in-flight requests get to finish."""
    precision: Optional[str] = None
    """Precision of every model stage of the served pipeline (``None``: each stage's own,
    ``auto`` by default; see :mod:`rerank.precision`)."""
    budget_ms: Optional[Positive] = None
    """Latency budget per request (ms; a request's own ``budget_ms`` overrides it). Needed by a
    pipeline with cut-off variables (``student % k1 >> ce``): each request gets the cut-offs
    predicted to fit (see :mod:`rerank.serve.budget`)."""
    budget_headroom: Annotated[float, Field(ge=0, lt=1)] = 0.1
    """Share of each budget kept back for what the cost model does not see (HTTP, JSON, noise)."""
    budget_follow_drift: bool = True
    """Scale the start-up costs by how much slower or faster the last requests ran than predicted
    (the median of the last 16; see :class:`rerank.serve.budget.DriftScale`)."""
    cutoff_values: Optional[dict[str, list[PositiveInt]]] = None
    """Each cut-off variable's candidate values (the config's ``[tune]`` table)."""
    warmup_sizes: Optional[list[PositiveInt]] = None
    """Document counts the stages are timed at on start-up (default: 10, 50, 100, 200, within
    ``max_documents``)."""
    normalize: bool = True
    """Answer ``sigmoid(score)`` as ``relevance_score`` (the ranking is the same; a calibrated
    pipeline answers its probability of relevance instead); a request's ``raw_scores = true``
    asks for the pipeline's own scores."""
    min_relevance: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    """Drop results whose ``relevance_score`` is below this (a request's own ``min_relevance``
    overrides it); nothing left is an empty list. One threshold means the same for every model
    only where each is calibrated (``rerank calibrate``)."""
    batch_invariance: bool = True
    """At load, check that each model's scores do not depend on the batch (alone, 8 and 64
    merged requests) and keep the fastest path within 1e-5 (:mod:`rerank.serve.invariance`)."""
    default_model: Optional[str] = None
    """The model a request without ``model`` (and every TEI-shaped request) gets; default: the first."""
    preload: bool = True
    """Load every model at start (``/ready`` answers 200 once all are loaded and warmed); false:
    each loads on its first request."""
    max_loaded_models: Optional[PositiveInt] = None
    """At most this many models in memory; the least recently used idle one is unloaded first."""
    max_memory_mb: Optional[Positive] = None
    """Unload least recently used idle models while the process's resident memory is above this."""
    api_keys: Optional[str] = None
    """Key file (``name:sha256[:requests-per-minute]`` a line; :mod:`rerank.serve.auth`)."""
    insecure: bool = False
    """Allow listening on a non-loopback address without API keys."""
    access_log: bool = True
    """One JSON line per request on the ``rerank.access`` logger."""
    tracing: bool = False
    """OpenTelemetry spans per request and stage (the ``otel`` extra; the process's tracer provider)."""
    score_cache: Optional[str] = None
    """A score cache file (:mod:`rerank.cache`) for every served pipeline config that names none."""

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in CHOICES:
            raise SettingsError(f"serve setting precision must be one of {', '.join(CHOICES)}, got {self.precision!r}")

    @classmethod
    def from_table(cls, table: dict[str, Any] | None, where: str = "[serve]") -> ServeSettings:
        """Settings from a config's ``[serve]`` table; an unknown key gets a did-you-mean."""
        return _validated(cls, dict(table or {}), where)

    def override(self, **changes: Any) -> ServeSettings:
        """A copy with the given settings changed (``None`` values are ignored)."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _validated(type(self), {**current, **{k: v for k, v in changes.items() if v is not None}}, "serve")


def _validated(cls: type[ServeSettings], values: dict[str, Any], where: str) -> ServeSettings:
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SettingsError(f"{where}: unknown serve setting {key!r}{hint}")
    try:
        return cls(**values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        name = ".".join(map(str, error["loc"]))
        rule = {"greater_than": "must be a positive number", "greater_than_equal": "must be a number >= 0",
                "less_than_equal": "is too large"}.get(error["type"], error["msg"][0].lower() + error["msg"][1:])
        raise SettingsError(f"{where}: serve setting {name} {rule}, got {error.get('input')!r}") from None

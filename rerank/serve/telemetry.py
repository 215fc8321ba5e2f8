"""What a service tells its operators about each request: one JSON access-log line, and
OpenTelemetry spans (the ``otel`` extra) in the tracing system a team already runs.

The access log goes to the ``rerank.access`` logger (``rerank serve`` prints it to stderr):
request id, model, API key *name*, shape, documents, tokens, milliseconds and status. Spans: one
``rerank`` span per request (server kind) with the same attributes, and a child per pipeline stage
carrying its trace counters; stage spans are laid end to end, ending when the answer was ready.
No key, query or document text ever reaches either.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from rerank.extras import require
from rerank.types import StageCost

access_log = logging.getLogger("rerank.access")


def log_access(**fields: Any) -> None:
    """One JSON line on the ``rerank.access`` logger."""
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(json.dumps(fields, separators=(",", ":"), default=str))


class Tracing:
    """OpenTelemetry spans of requests and stages, from ``provider`` (default: the process's
    global tracer provider, which the team's OpenTelemetry set-up configures)."""

    def __init__(self, provider: Any = None) -> None:
        trace = require("opentelemetry.trace", "otel", "tracing the service")
        self._trace = trace
        self.tracer = trace.get_tracer("rerank.serve", tracer_provider=provider)

    def request(self, attributes: dict[str, Any]) -> AbstractContextManager:
        """The span of one request (current while the request runs)."""
        return self.tracer.start_as_current_span("rerank", kind=self._trace.SpanKind.SERVER, attributes=attributes)

    def stages(self, trace: Sequence[StageCost]) -> None:
        """A child span of the current span per stage of ``trace``, ending now."""
        end = time.time_ns()
        start = end - int(sum(cost.seconds for cost in trace) * 1e9)
        for cost in trace:
            finish = start + int(cost.seconds * 1e9)
            attributes: dict[str, Any] = {"rerank.stage": cost.stage, "rerank.passages_scored": cost.passages_scored}
            attributes.update({f"rerank.{k}": v for k, v in (cost.counters or {}).items()
                               if isinstance(v, (int, float, str, bool))})
            span = self.tracer.start_span(f"stage {cost.stage}", start_time=start, attributes=attributes)
            span.end(end_time=finish)
            start = finish


def no_span() -> AbstractContextManager:
    """The context of a request when tracing is off."""
    return nullcontext()

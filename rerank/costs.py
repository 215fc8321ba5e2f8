"""The one place a stage's cost enters the trace: time a block of work, then give each query of
the batch its share and append it to that query's trace.

Wall time and model calls spent on a whole batch are shared among its queries in proportion to
their candidates (evenly when no query has candidates, as in retrieval); tokens, passages and
stage-specific counters are per query. A stage that works query by query passes its exact
per-query figures instead.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType

from rerank.types import Candidates, StageCost


class Stopwatch:
    """Wall time of a block: ``with Stopwatch() as watch: ...`` then ``watch.seconds``."""

    def __init__(self) -> None:
        self.began = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self.began = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.seconds = time.perf_counter() - self.began


def _per_query(value, n: int, default) -> list:
    if value is None:
        return [default] * n
    if isinstance(value, (int, float, dict)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{len(values)} per-query figures for {n} queries")
    return values


def shares(sizes: Sequence[int]) -> list[float]:
    """Each query's share of a batch's time: proportional to ``sizes`` (its candidates), or
    even when they are all zero."""
    total = sum(sizes)
    return [size / total for size in sizes] if total else [1.0 / len(sizes)] * len(sizes) if sizes else []


def record_costs(stage: str, inputs: Sequence[Candidates], outputs: Sequence[Candidates], seconds: float | Sequence[float],
                 *, model_calls: float | Sequence[float] = 0.0, passages_scored: int | Sequence[int] | None = None,
                 tokens: Sequence[int] | None = None, counters: dict | Sequence[dict] | None = None,
                 shared_by: Sequence[int] | None = None, settings: dict[str, str] | None = None) -> list[Candidates]:
    """``outputs`` (one per query, in the order of ``inputs``) with traces that continue their
    input's: ``inputs[i].trace`` plus one :class:`StageCost` for ``stage``.

    ``seconds`` and ``model_calls``: a total for the batch, shared by ``shared_by`` (default:
    each input's number of candidates), or a sequence giving each query's own figure.
    ``passages_scored`` defaults to each input's candidates; ``tokens`` and ``counters`` are per
    query (a single dict of counters applies to every query); ``settings`` (how the stage ran:
    precision, threads) is the same for every query.
    """
    n = len(inputs)
    if len(outputs) != n:
        raise ValueError(f"{len(outputs)} results for {n} queries")
    weights = shares(list(shared_by) if shared_by is not None else [len(c) for c in inputs])
    per_seconds = [seconds * w for w in weights] if isinstance(seconds, (int, float)) else _per_query(seconds, n, 0.0)
    per_calls = [model_calls * w for w in weights] if isinstance(model_calls, (int, float)) else \
        _per_query(model_calls, n, 0.0)
    scored = _per_query(passages_scored, n, None)
    per_tokens = _per_query(tokens, n, 0)
    per_counters = _per_query(counters, n, {})
    out = []
    for i, (source, result) in enumerate(zip(inputs, outputs)):
        cost = StageCost(stage, per_seconds[i], passages_scored=len(source) if scored[i] is None else scored[i],
                         model_calls=per_calls[i], tokens=per_tokens[i], counters=dict(per_counters[i]),
                         settings=dict(settings or {}))
        out.append(Candidates(result.query, result.passages, result.scores, [*source.trace, cost]))
    return out

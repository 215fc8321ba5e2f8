"""Per-stage cost reports: what each stage of a pipeline spent, summed over a batch of queries."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rerank.types import Candidates, StageCost


@dataclass
class StageSummary:
    """One stage's costs over many queries."""

    stage: str
    queries: int = 0
    seconds: float = 0.0
    passages_scored: int = 0
    model_calls: float = 0.0
    tokens: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    per_query_seconds: list[float] = field(default_factory=list, repr=False)

    @property
    def mean_ms(self) -> float:
        """Mean milliseconds per query."""
        return 1000 * self.seconds / self.queries if self.queries else 0.0

    @property
    def p95_ms(self) -> float:
        """95th-percentile milliseconds per query."""
        return 1000 * float(np.percentile(self.per_query_seconds, 95)) if self.per_query_seconds else 0.0


def summarize(batch: Iterable[Candidates | Sequence[StageCost]]) -> list[StageSummary]:
    """Sum each stage's trace entries over the queries (each a :class:`Candidates` or its trace),
    stages in the order they ran. A stage that appears twice in one trace is summed."""
    stages: dict[str, StageSummary] = {}
    for item in batch:
        trace = item.trace if isinstance(item, Candidates) else item
        seen: dict[str, float] = {}
        for cost in trace:
            s = stages.setdefault(cost.stage, StageSummary(cost.stage))
            s.seconds += cost.seconds
            s.passages_scored += cost.passages_scored
            s.model_calls += cost.model_calls
            s.tokens += cost.tokens
            for key, value in cost.counters.items():
                s.counters[key] = s.counters.get(key, 0) + value
            s.settings.update(cost.settings)
            seen[cost.stage] = seen.get(cost.stage, 0.0) + cost.seconds
        for name, seconds in seen.items():
            stages[name].queries += 1
            stages[name].per_query_seconds.append(seconds)
    return list(stages.values())


def total_seconds_per_query(batch: Sequence[Candidates]) -> list[float]:
    """Each query's summed stage time (its latency when queries run one at a time)."""
    return [sum(cost.seconds for cost in c.trace) for c in batch]


def format_costs(summaries: Sequence[StageSummary], *, markdown: bool = True) -> str:
    """A table with one row per stage plus a total: queries, mean and p95 ms per query,
    passages scored, model forward calls and tokens; then a line per stage with counters."""
    header = ["stage", "queries", "mean ms/q", "p95 ms/q", "passages", "model calls", "tokens"]
    rows = [[s.stage, str(s.queries), f"{s.mean_ms:.1f}", f"{s.p95_ms:.1f}", str(s.passages_scored),
             f"{s.model_calls:.0f}", str(s.tokens)] for s in summaries]
    if summaries:
        queries = max(s.queries for s in summaries)
        total = sum(s.seconds for s in summaries)
        rows.append(["total", str(queries), f"{1000 * total / max(queries, 1):.1f}", "",
                     str(sum(s.passages_scored for s in summaries)),
                     f"{sum(s.model_calls for s in summaries):.0f}", str(sum(s.tokens for s in summaries))])
    notes = [f"{s.stage}: " + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in s.counters.items())
             for s in summaries if s.counters]
    notes += [f"{s.stage}: " + ", ".join(f"{key} {s.settings[key]}" for key in ("precision", "threads") if key in s.settings)
              for s in summaries if any(key in s.settings for key in ("precision", "threads"))]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines + notes)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), *map(fmt, rows), *notes])

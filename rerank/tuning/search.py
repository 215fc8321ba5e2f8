"""Choose a pipeline's cut-offs from a latency budget: predict every combination's latency from
measured stage costs, evaluate every combination by re-sorting cached scores, keep the best that
fits.

::

    pipe = bm25 % 100 >> student % "k1" >> ce
    result = tune(pipe, dev_queries, qrels, grid={"k1": [10, 20, 30, 50]}, budget_ms=150)
    result.choice.values            # {"k1": 30}
    result.choice.pipeline          # bm25 % 100 >> student % 30 >> ce, ready to run
    result.choose(80).values        # another budget, from the same table
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from rerank.cache import with_score_cache
from rerank.errors import RerankError
from rerank.evaluate import evaluate
from rerank.pipeline import Stage, bind, leaves
from rerank.significance import paired_test
from rerank.tuning.cost_model import STATISTICS, CostModel, measure_costs
from rerank.tuning.grid import check_grid, combinations, label
from rerank.tuning.replay import with_cached_stages
from rerank.types import Candidates, Qrels, Query

if TYPE_CHECKING:
    from rerank.cache import ScoreCache


class TuneError(RerankError, ValueError):
    """A tuning run that cannot go ahead (no queries, no judgments, an unknown statistic)."""


@dataclass
class GridRow:
    """One combination of cut-offs: predicted latency per query (mean and p95, each stage's
    mean share) and effectiveness on the tuning queries (``None``: not evaluated, because a
    set-dependent stage would have had to run and the prediction was over every budget)."""

    values: dict[str, int]
    predicted_ms: float
    predicted_p95_ms: float
    stage_ms: dict[str, float]
    score: float | None = None
    per_query: dict[str, float] = field(default_factory=dict, repr=False)

    def predicted(self, statistic: str) -> float:
        """The predicted latency under ``statistic`` (``mean`` or ``p95``)."""
        return self.predicted_p95_ms if statistic == "p95" else self.predicted_ms


@dataclass
class TuneChoice:
    """The cut-offs chosen for a budget: the bound pipeline, its predicted latency and score.
    ``fits`` is False when no combination fits the budget (the cheapest one is chosen then)."""

    values: dict[str, int]
    pipeline: Stage
    predicted_ms: float
    score: float | None
    budget_ms: float
    statistic: str
    fits: bool

    def describe(self, measure: str = "nDCG@10") -> str:
        """One line for people."""
        verdict = "fits" if self.fits else "does NOT fit (nothing does; the cheapest is chosen)"
        score = f"{self.score:.4f}" if self.score is not None else "n/a"
        return (f"{label(self.values)}: predicted {self.statistic} {self.predicted_ms:.1f} ms against a "
                f"{self.budget_ms:g} ms budget ({verdict}); {measure} {score}")


@dataclass
class TuneResult:
    """Every combination's prediction and score, the cost model behind them, what tuning spent,
    and (when a budget was given) the choice."""

    template: Stage
    grid: dict[str, list[int]]
    measure: str
    rows: list[GridRow]
    cost_model: CostModel
    queries: int
    seconds: dict[str, float] = field(default_factory=dict)
    pairs_scored: dict[str, int] = field(default_factory=dict)
    choice: TuneChoice | None = None
    fit_errors: list[float] = field(default_factory=list)

    def choose(self, budget_ms: float, statistic: str = "mean", tie_alpha: float | None = 0.05) -> TuneChoice:
        """The best-scoring combination whose predicted latency fits ``budget_ms``, or the cheapest
        if none fits.

        ``tie_alpha``: a costlier fitting combination whose score is not significantly below the
        best one's on the tuning queries (paired t-test, p >= ``tie_alpha``) is preferred, the
        costliest such: a difference the tuning queries cannot tell from noise should not cut the
        candidates the expensive stage sees, and the budget allows them. ``None``: strictly the
        best score (ties: the faster)."""
        if statistic not in STATISTICS:
            raise TuneError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        if not budget_ms > 0:
            raise TuneError(f"the budget must be a positive number of milliseconds, got {budget_ms!r}")
        fitting = [r for r in self.rows if r.score is not None and r.predicted(statistic) <= budget_ms]
        if fitting:
            best, fits = max(fitting, key=lambda r: (r.score, -r.predicted(statistic))), True
            if tie_alpha is not None and best.per_query:
                queries = sorted(best.per_query)
                tied = [r for r in fitting if r.predicted(statistic) > best.predicted(statistic) and r.per_query
                        and paired_test([best.per_query[q] for q in queries],
                                        [r.per_query.get(q, 0.0) for q in queries])[1] >= tie_alpha]
                if tied:
                    best = max(tied, key=lambda r: r.predicted(statistic))
        else:
            best, fits = min(self.rows, key=lambda r: r.predicted(statistic)), False
        return TuneChoice(dict(best.values), bind(self.template, best.values), best.predicted(statistic), best.score,
                          budget_ms, statistic, fits)

    def table(self) -> str:
        """A Markdown table of every combination, fastest first."""
        names = list(self.grid)
        head = "| " + " | ".join(names) + f" | predicted ms | p95 ms | {self.measure} |"
        lines = [head, "|" + "---:|" * (len(names) + 3)]
        for r in sorted(self.rows, key=lambda r: r.predicted_ms):
            score = f"{r.score:.4f}" if r.score is not None else "not run"
            lines.append("| " + " | ".join(str(r.values[n]) for n in names)
                         + f" | {r.predicted_ms:.1f} | {r.predicted_p95_ms:.1f} | {score} |")
        return "\n".join(lines)


def tune(pipeline: Stage, inputs: Sequence[Query] | Sequence[Candidates], qrels: Qrels, *,
         grid: Mapping[str, Sequence[int]], budget_ms: float | None = None, statistic: str = "mean",
         measure: str = "nDCG@10", cost_model: CostModel | None = None, warmup_queries: int = 24,
         repeats: int = 1, evaluate_within_ms: float | None = None, tie_alpha: float | None = 0.05,
         remeasure_above: float | None = 0.12, progress: bool = True,
         score_cache: ScoreCache | str | Path | None = None) -> TuneResult:
    """Tune the cut-off variables of ``pipeline`` on ``inputs`` (queries, or candidates to
    re-rank) judged by ``qrels``.

    1. Cost: every combination runs once on the first input (not kept: it sets up kernels), then
       ``repeats`` times on the first ``warmup_queries`` inputs, one query per call, the
       combinations taking turns ten queries at a time; each stage's cost is fitted to its trace
       entries (``cost_model`` skips this; see :func:`rerank.tuning.cost_model.fit_stage_cost`), and
       every combination's latency per query is predicted from the fitted stage costs. Timing
       many queries once each, as the check or a user's traffic meets them, predicts a new
       query set better than timing a few several times: the time depends on the query's
       candidates (their lengths), and a repeated query has already met its input shapes.
       A reference workload timed between turns corrects for the machine's drift during the
       warm-up (``measure_costs(reference=True)``); when a stage's fit error still exceeds
       ``remeasure_above``, the warm-up is disturbed beyond that correction and runs once more,
       and the model with the smaller largest fit error is kept (``TuneResult.fit_errors``
       lists each attempt's).
    2. Effectiveness: pointwise stages score every pair they can meet once (cached); each
       combination is evaluated by re-sorting those scores. Pipelines with set-dependent stages
       (PRP, listwise, IDCM) run those stages per combination, only for combinations predicted
       within ``evaluate_within_ms`` (default: ``budget_ms``; every combination when neither).
       ``score_cache`` (a :class:`rerank.cache.ScoreCache`) keeps those scores across runs; the
       stages are still timed without it.
    3. With ``budget_ms``: :meth:`TuneResult.choose` picks the best that fits (with
       ``tie_alpha``, the costliest fitting one not significantly worse than the best).
    """
    if statistic not in STATISTICS:
        raise TuneError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    grid = check_grid(pipeline, grid)
    batch = [x if isinstance(x, Candidates) else Candidates(x, [], []) for x in inputs]
    batch = [c for c in batch if c.query.id in qrels]
    if not batch:
        raise TuneError("none of the tuning queries has judgments; tuning needs judged queries (check the split)")
    qrels = {c.query.id: qrels[c.query.id] for c in batch}
    retrieving = any(leaf.retrieves for leaf in leaves(pipeline))
    if not retrieving and not all(len(c) for c in batch):
        empty = [c.query.id for c in batch if not len(c)][:3]
        raise TuneError(f"queries {empty} have no candidates and the pipeline does not retrieve any")
    seconds: dict[str, float] = {}
    largest = {name: max(values) for name, values in grid.items()}
    if score_cache is not None:
        cached, stand_ins = with_cached_stages(with_score_cache(pipeline, score_cache))
    else:
        cached, stand_ins = with_cached_stages(pipeline)

    began = time.perf_counter()
    warm = batch[:warmup_queries]
    fit_errors: list[float] = []
    if cost_model is None:
        for attempt in range(2 if remeasure_above is not None else 1):
            measured = measure_costs(pipeline, grid, warm, repeats=repeats, discard=1, turn=10, reference=True,
                                     progress=_bar("timing stages" + (" again" if attempt else ""), progress))
            fit_errors.append(measured.largest_fit_error)
            if cost_model is None or measured.largest_fit_error < cost_model.largest_fit_error:
                cost_model = measured
            if remeasure_above is None or measured.largest_fit_error <= remeasure_above:
                break
    if cost_model is None:
        raise TuneError("no cost model was measured")
    seconds["cost_model"] = time.perf_counter() - began

    began = time.perf_counter()
    sizes = sorted({len(c) for c in batch}) if not retrieving else [0]
    rows = []
    for values in combinations(grid):
        bound = bind(pipeline, values)
        mean_ms = sum(cost_model.predict(bound, n).ms for n in sizes) / len(sizes)
        p95_ms = max(cost_model.predict(bound, n, "p95").ms for n in sizes)
        stage_ms = cost_model.predict(bound, max(sizes)).stages
        rows.append(GridRow(values, mean_ms, p95_ms, stage_ms))
    seconds["predict"] = time.perf_counter() - began

    began = time.perf_counter()
    set_dependent = [leaf.name for leaf in leaves(pipeline) if not (leaf.pointwise or leaf.retrieves)]
    limit = evaluate_within_ms if evaluate_within_ms is not None else budget_ms
    to_run = [r for r in rows if not set_dependent or limit is None or r.predicted(statistic) <= limit]
    chunks = [batch[i:i + 64] for i in range(0, len(batch), 64)]
    for chunk in _bar("scoring at the largest cut-offs", progress)(chunks):
        bind(cached, largest)(chunk)  # fill the caches in large model calls
    for row in _bar("evaluating combinations", progress)(to_run):
        runner = bind(cached, row.values)
        ranked = [c for chunk in chunks for c in runner(chunk)]
        evaluation = evaluate(ranked, qrels, [measure])
        row.score = float(evaluation.aggregate[measure])
        row.per_query = {q: next(iter(values.values()), 0.0) for q, values in evaluation.per_query.items()}
    seconds["evaluate"] = time.perf_counter() - began
    pairs = {s.name: getattr(s, "computed", 0) for s in stand_ins if hasattr(s, "computed")}
    result = TuneResult(pipeline, grid, measure, rows, cost_model, len(batch), seconds, pairs, fit_errors=fit_errors)
    if budget_ms is not None:
        result.choice = result.choose(budget_ms, statistic, tie_alpha)
    return result


def _bar(description: str, enabled: bool):
    def wrap(items):
        if not enabled:
            return items

        return tqdm(items, desc=description, leave=False)

    return wrap


__all__ = ["GridRow", "TuneChoice", "TuneError", "TuneResult", "tune"]

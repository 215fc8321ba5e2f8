"""A latency budget per request: the served pipeline's cut-off variables chosen request by request
from a cost model and the request's document count.

The service times its own stages at start-up (on bundled SciFact abstracts, at the document
counts requests may bring), then, each time the model is free, takes the next request and gives
it the most work that fits its allowance: its cheapest cost plus a fair share of the slack left
once every request queued behind it is sure to meet its own budget at its cheapest cut-offs
(:func:`allowance_ms`). More work is the
proxy for quality here (a larger cut-off lets more candidates reach the expensive stage); among
combinations predicted alike the smaller wins. A request that cannot fit even at the cheapest
cut-offs runs at the cheapest and says so.

The costs timed at start-up describe the machine as it ran then; a shared machine runs tens of
percent slower or faster from one quarter-hour to the next. So every served request's measured
model time is compared with what its costs predicted, and predictions are scaled by the median
ratio of the last requests (:class:`DriftScale`): a slow spell makes the service choose cheaper
cut-offs within a few requests, and its end gives them back.
"""
from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import median

from rerank.data import open_dataset
from rerank.pipeline import Stage, bind, variables
from rerank.tuning.cost_model import CostModel, measure_costs
from rerank.tuning.grid import check_grid, combinations
from rerank.types import Candidates, Passage, Query


@dataclass(frozen=True)
class Plan:
    """The cut-offs chosen for one request and what they are predicted to cost."""

    values: dict[str, int]
    pipeline: Stage
    predicted_ms: float
    allowed_ms: float
    fits: bool
    model_ms: float = 0.0
    """The cost model's own prediction, before the drift scale."""


class DriftScale:
    """How much slower (above 1) or faster the served stages run now than their cost model says:
    the median of measured over predicted time of the last ``window`` requests, within
    ``bounds``; 1.0 until ``least`` requests have been measured."""

    def __init__(self, window: int = 16, least: int = 3, bounds: tuple[float, float] = (0.5, 3.0)) -> None:
        self.ratios: deque[float] = deque(maxlen=window)
        self.least, self.bounds = least, bounds

    def observe(self, predicted_ms: float, measured_ms: float) -> None:
        """Account one request: the cost model's prediction for it and its measured model time."""
        if predicted_ms > 0 and measured_ms > 0:
            self.ratios.append(measured_ms / predicted_ms)

    @property
    def value(self) -> float:
        """The factor predictions are multiplied by now."""
        if len(self.ratios) < self.least:
            return 1.0
        low, high = self.bounds
        return min(high, max(low, median(self.ratios)))


class BudgetPlanner:
    """Chooses cut-offs per request for ``template`` (a pipeline with cut-off variables) from
    ``grid`` (each variable's values) and ``costs`` (fitted at batch size 1), scaled by
    ``scale`` (see :class:`DriftScale`; ``None``: the costs as fitted)."""

    def __init__(self, template: Stage, grid: Mapping[str, Sequence[int]], costs: CostModel,
                 scale: DriftScale | None = None) -> None:
        self.grid = check_grid(template, grid)
        self.template = template
        self.costs = costs
        self.scale = scale
        self.options = [(values, bind(template, values)) for values in combinations(self.grid)]
        self._predicted: dict[int, list[float]] = {}

    def model_predictions(self, documents: int) -> list[float]:
        """The cost model's milliseconds for each combination (in :attr:`options` order) on a
        request of ``documents`` documents."""
        if documents not in self._predicted:
            if len(self._predicted) > 4096:
                self._predicted.clear()
            self._predicted[documents] = [self.costs.predict(p, documents).ms for _, p in self.options]
        return self._predicted[documents]

    def predictions(self, documents: int) -> list[float]:
        """Predicted milliseconds of each combination (in :attr:`options` order) for a request
        of ``documents`` documents, at the machine's current drift."""
        factor = self.scale.value if self.scale is not None else 1.0
        return [ms * factor for ms in self.model_predictions(documents)]

    def cheapest_ms(self, documents: int) -> float:
        """The least any combination is predicted to take on ``documents`` documents."""
        return min(self.predictions(documents))

    def plan(self, documents: int, allowed_ms: float) -> Plan:
        """The combination with the most predicted work within ``allowed_ms`` (among equals, the
        smaller cut-offs), or the cheapest, flagged, when none fits."""
        predicted = self.predictions(documents)
        order = range(len(self.options))
        fitting = [i for i in order if predicted[i] <= allowed_ms]
        if fitting:
            best = max(fitting, key=lambda i: (round(predicted[i], 6), [-v for v in self.options[i][0].values()]))
            fits = True
        else:
            best = min(order, key=lambda i: predicted[i])
            fits = False
        values, pipeline = self.options[best]
        return Plan(dict(values), pipeline, predicted[best], allowed_ms, fits, self.model_predictions(documents)[best])

    def plan_head(self, head: tuple[float, int], behind: Sequence[tuple[float, int]]) -> Plan:
        """The plan for the request at the head of the queue, given ``(milliseconds left of its
        budget, documents)`` for it and for each request queued behind it, in order: the most
        work within its :func:`allowance_ms`."""
        left, documents = head
        allowed = allowance_ms(left, self.cheapest_ms(documents),
                               [(ms, self.cheapest_ms(n)) for ms, n in behind])
        return self.plan(documents, allowed)


def allowance_ms(own_left_ms: float, own_cheapest_ms: float, behind: Sequence[tuple[float, float]]) -> float:
    """What the request at the head of the queue may spend: its cheapest cost plus a fair share
    of the slack. Every request behind it (``(time left, cheapest predicted ms)`` each, in queue
    order) must still finish at its cheapest within its own budget; the slack it would have
    after that is shared evenly among it and the requests ahead of it, so the head does not spend
    what the queue behind it could use."""
    share = own_left_ms - own_cheapest_ms
    needed = own_cheapest_ms
    for position, (left, cheapest) in enumerate(behind, start=2):
        needed += cheapest
        share = min(share, (left - needed) / position)
    return own_cheapest_ms + share


def warmup_candidates(queries: int = 4, documents: int = 200, seed: int = 0) -> list[Candidates]:
    """Request-shaped warm-up input from the bundled SciFact abstracts: each query is one
    abstract's title, its documents ``documents`` other abstracts."""
    corpus = list(open_dataset("scifact").corpus().values())
    rng = random.Random(seed)
    out = []
    for q in range(queries):
        picked = rng.sample(corpus, documents + 1)
        query = Query(f"warmup-{q}", picked[0].title or picked[0].text[:120])
        passages = [Passage(f"warmup-{q}-{i}", p.full_text) for i, p in enumerate(picked[1:])]
        out.append(Candidates(query, passages, [float(len(passages) - i) for i in range(len(passages))]))
    return out


def fit_service_costs(template: Stage, grid: Mapping[str, Sequence[int]], sizes: Sequence[int], *,
                      queries: int = 3, repeats: int = 2) -> CostModel:
    """Time every stage of ``template``, one request at a time, running every combination of
    ``grid`` on warm-up requests of each document count in ``sizes``."""
    grid = check_grid(template, grid)
    return measure_costs(template, grid, warmup_candidates(queries, max(sizes)), sizes=sizes, repeats=repeats)


def has_variables(pipeline: Stage) -> bool:
    """Whether ``pipeline`` has cut-off variables to choose per request."""
    return bool(variables(pipeline))

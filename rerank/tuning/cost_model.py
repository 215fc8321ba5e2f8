"""A latency model per stage, fitted from the stage's own traces, and the latency it predicts for a
whole pipeline.

Each stage's time per call takes one of two shapes: the line ``fixed + per_passage x passages``
(non-negative least squares over all calls), which averages timing noise over every size, or
the mean at each size measured, interpolated between sizes, which follows a cost that grows
faster than the passage count (a stage that pads each call to its longest passage). The shape
kept is the one that better predicts the inner measured sizes' means from the other sizes alone;
the largest such error is the fit error printed with each model.

A model holds the batch size (queries per call) and the threads and precision the stage ran
with, and is only used for a stage that runs the same way: time measured one query at a time
says nothing about batches of 8. A pipeline's latency is the sum of
its stages' predictions, with the number of candidates each stage receives followed through its
cut-offs.

A shared machine's speed drifts by tens of percent within minutes, and a slow spell during
part of the warm-up would bend the fitted costs. So :func:`measure_costs` can time a fixed
reference workload (the cheapest combination on the first warm-up input) between every piece
of work and divide each piece's timings by how slow the machine ran around it, relative to the
median over the warm-up (``reference=True``, which :func:`rerank.tune` uses).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from rerank.errors import RerankError
from rerank.pipeline import Cutoff, Fusion, Identity, Pipeline, Stage, leaves, rebuild
from rerank.tuning.grid import combinations
from rerank.types import Candidates

STATISTICS = ("mean", "p95")
"""Which latency a budget holds: the mean over queries, or the 95th percentile."""


class CostModelError(RerankError):
    """A pipeline the cost model cannot predict (a stage never measured, or measured differently)."""


@dataclass
class StageCostModel:
    """Time per call of one stage, in one of two shapes (``shape``): ``line``, ``fixed_ms +
    per_passage_ms x passages`` (least squares through all calls), or ``interpolated``,
    ``mean_ms`` (the mean measured at each of ``sizes``) interpolated between the sizes measured.

    ``batch_size``, ``threads`` and ``precision`` are how the stage ran when measured;
    ``fit_error`` is the largest relative error in predicting an inner measured size's mean from
    the other sizes alone (with under three sizes, the line's error at the sizes measured);
    ``residual_p95_ms`` the 95th percentile of (measured - predicted) over single calls (the tail
    above the mean).
    """

    stage: str
    fixed_ms: float
    per_passage_ms: float
    batch_size: int = 1
    threads: str = ""
    precision: str = ""
    fit_error: float = 0.0
    residual_p95_ms: float = 0.0
    sizes: list[int] = field(default_factory=list)
    calls: int = 0
    mean_ms: list[float] = field(default_factory=list)
    shape: str = "line"

    def predict_ms(self, passages: int, statistic: str = "mean") -> float:
        """Predicted milliseconds of one call on ``passages`` candidates (``statistic``: ``mean``,
        or ``p95``, which adds the 95th-percentile residual)."""
        if self.shape == "interpolated" and len(self.mean_ms) == len(self.sizes):
            mean = interpolate(self.sizes, self.mean_ms, passages)
        else:
            mean = self.fixed_ms + self.per_passage_ms * passages
        return mean + (self.residual_p95_ms if statistic == "p95" else 0.0)

    def describe(self) -> str:
        """One line: the fitted line, how it ran and how well it fits."""
        how = ", ".join(x for x in (f"batch {self.batch_size}", self.precision, f"{self.threads} threads"
                                    if self.threads else "") if x)
        measured = ", ".join(f"{n}: {ms:.1f}" for n, ms in zip(self.sizes, self.mean_ms))
        shape = f"mean ms by size {{{measured}}}, {'interpolated' if self.shape == 'interpolated' else 'line kept'}; "
        return (f"{self.stage}: {self.fixed_ms:.2f} ms + {self.per_passage_ms:.3f} ms/passage ({how}; "
                + (shape if measured else "")
                + f"fit error {self.fit_error:.1%} over sizes {self.sizes}, p95 residual {self.residual_p95_ms:.1f} ms)")


def interpolate(sizes: Sequence[int], means: Sequence[float], n: float) -> float:
    """The mean time at ``n`` passages from the means measured at ``sizes`` (ascending): linear
    between neighbours, along the nearest segment beyond them (never below zero), constant when
    only one size was measured."""
    if len(sizes) == 1:
        return float(means[0])
    i = int(np.clip(np.searchsorted(sizes, n), 1, len(sizes) - 1))
    (n0, m0), (n1, m1) = (sizes[i - 1], means[i - 1]), (sizes[i], means[i])
    return max(0.0, float(m0 + (m1 - m0) * (n - n0) / (n1 - n0)))


def _line(sizes: np.ndarray, ms: np.ndarray) -> tuple[float, float]:
    """``(fixed, per_passage)`` by non-negative least squares; a constant for one size."""
    from scipy.optimize import nnls  # deferred: scipy takes long to import

    if len(set(sizes.tolist())) == 1:
        return float(ms.mean()), 0.0
    (fixed, per), _ = nnls(np.stack([np.ones_like(sizes), sizes], axis=1), ms)
    return float(fixed), float(per)


def fit_stage_cost(stage: str, samples: Sequence[tuple[int, float]], *, batch_size: int = 1,
                   settings: Mapping[str, str] | None = None) -> StageCostModel:
    """Model one stage from ``samples`` ((passages, seconds) per call).

    Two shapes are fitted: the line ``fixed + per_passage x n`` through all calls (both
    coefficients non-negative), and the mean at each size interpolated between sizes. With three
    or more sizes, each inner size is predicted by both from the other sizes alone, and the
    shape with the smaller mean relative error is kept: interpolation follows a cost that grows faster
    than the passage count, the line averages timing noise over every size. One measured size
    gives a constant."""
    if not samples:
        raise CostModelError(f"no timings for stage {stage}")
    sizes = np.array([n for n, _ in samples], dtype=float)
    ms = np.array([1000 * s for _, s in samples], dtype=float)
    distinct = sorted({int(n) for n in sizes})
    fixed, per = _line(sizes, ms)
    means = [float(ms[sizes == n].mean()) for n in distinct]
    shape, errors = "line", [abs(fixed + per * n - m) / m if m > 0 else 0.0 for n, m in zip(distinct, means)]
    if len(distinct) >= 3:
        line_errors, interpolated_errors = [], []
        for i in range(1, len(distinct) - 1):  # inner sizes: neither shape extrapolates
            n, measured = distinct[i], means[i]
            keep = sizes != n
            f, p = _line(sizes[keep], ms[keep])
            others = [j for j in range(len(distinct)) if j != i]
            guess = interpolate([distinct[j] for j in others], [means[j] for j in others], n)
            line_errors.append(abs(f + p * n - measured) / measured if measured > 0 else 0.0)
            interpolated_errors.append(abs(guess - measured) / measured if measured > 0 else 0.0)
        shape = "interpolated" if np.mean(interpolated_errors) < np.mean(line_errors) else "line"
        errors = interpolated_errors if shape == "interpolated" else line_errors
    model = StageCostModel(stage, fixed, per, batch_size=batch_size, sizes=distinct, calls=len(samples),
                           mean_ms=means, shape=shape, fit_error=float(max(errors)))
    predicted = np.array([model.predict_ms(int(n)) for n in sizes])
    model.residual_p95_ms = float(max(0.0, np.percentile(ms - predicted, 95)))
    settings = dict(settings or {})
    model.threads, model.precision = str(settings.get("threads", "")), str(settings.get("precision", ""))
    return model


@dataclass
class Prediction:
    """A pipeline's predicted time per call, each stage's share, and the candidates it returns."""

    ms: float
    stages: dict[str, float]
    passages_out: int


@dataclass
class CostModel:
    """Stage cost models by stage name, for pipelines run ``batch_size`` queries per call.

    ``reference_ms``: the median time of the warm-up's reference workload (0 when none was
    timed); ``drift``: the machine's slowness around each piece of warm-up work, relative to that
    median (1.0: as fast as usual; each piece's timings were divided by it).
    """

    stages: dict[str, StageCostModel]
    batch_size: int = 1
    reference_ms: float = 0.0
    drift: list[float] = field(default_factory=list)

    @property
    def largest_fit_error(self) -> float:
        """The largest fit error over the stages (0 when none was measured at several sizes)."""
        return max((m.fit_error for m in self.stages.values()), default=0.0)

    def predict(self, pipeline: Stage, passages_in: int = 0, statistic: str = "mean", *,
                batch_size: int = 1) -> Prediction:
        """The predicted time per call of ``pipeline`` (cut-off variables bound) given
        ``passages_in`` candidates per query (0 when it starts by retrieving), ``batch_size``
        queries per call: the sum of its stages', with each stage's input size followed through
        the cut-offs (a fusion passes on the most any branch returns)."""
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be 'mean' or 'p95', got {statistic!r}")
        if batch_size != self.batch_size:
            raise CostModelError(f"the stage costs were measured at {self.batch_size} quer"
                                 f"{'y' if self.batch_size == 1 else 'ies'} per call, not {batch_size}; measure them "
                                 f"at batch size {batch_size}")
        per_stage: dict[str, float] = {}

        def flow(node: Stage, n: int) -> int:
            if isinstance(node, Pipeline):
                for inner in node.stages:
                    n = flow(inner, n)
                return n
            if isinstance(node, Cutoff):
                if node.variable:
                    raise CostModelError(f"bind the cut-off variable {node.variable} before predicting")
                return min(flow(node.stage, n), node.size())
            if isinstance(node, Fusion):
                return max(flow(branch, n) for branch in node.branches)
            if isinstance(node, Identity):
                return n
            model = self.model_for(node)
            size = node.k if node.retrieves else n
            per_stage[node.name] = per_stage.get(node.name, 0.0) + model.predict_ms(size, statistic)
            return size

        out = flow(pipeline, passages_in)
        return Prediction(sum(per_stage.values()), per_stage, out)

    def model_for(self, stage: Stage) -> StageCostModel:
        """The model of ``stage``; an error if it was never measured or ran differently then."""
        model = self.stages.get(stage.name)
        if model is None:
            raise CostModelError(f"no cost model for stage {stage.name} (measured: {', '.join(self.stages) or 'none'})")
        now = stage.runtime_settings() if hasattr(stage, "runtime_settings") else {}
        for key in ("threads", "precision"):
            then = getattr(model, key)
            if then and key in now and str(now[key]) != then:
                raise CostModelError(f"stage {stage.name} was measured with {key} {then} but now runs with {now[key]}; "
                                     "measure it again")
        return model

    def to_tables(self) -> list[dict]:
        """The models as TOML-ready tables (``[[tuned.cost]]``)."""
        return [{k: v for k, v in asdict(m).items()} for m in self.stages.values()]

    @classmethod
    def from_tables(cls, tables: Iterable[Mapping]) -> CostModel:
        """Read :meth:`to_tables`' output back."""
        models = {t["stage"]: StageCostModel(**dict(t)) for t in tables}
        sizes = {m.batch_size for m in models.values()}
        if len(sizes) > 1:
            raise CostModelError(f"stage cost models measured at different batch sizes {sorted(sizes)}")
        return cls(models, sizes.pop() if sizes else 1)

    def describe(self) -> str:
        """One line per stage, and one on the machine's drift during the warm-up when a reference
        was timed."""
        lines = [m.describe() for m in self.stages.values()]
        if self.drift:
            lines.append(f"reference workload {self.reference_ms:.1f} ms (median of {len(self.drift) + 1}); machine "
                         f"speed drifted {min(self.drift):.2f}-{max(self.drift):.2f}x of it during the warm-up, "
                         "corrected")
        return "\n".join(lines)


def measure_costs(template: Stage, grid: Mapping[str, Sequence[int]], inputs: Sequence[Candidates], *,
                  sizes: Iterable[int] | None = None, batch_size: int = 1, repeats: int = 1,
                  discard: int | None = None, turn: int | None = None, reference: bool = False,
                  progress: Callable[[Iterable], Iterable] | None = None) -> CostModel:
    """Fit a :class:`CostModel` for every leaf of ``template`` from its own traces.

    Every combination of ``grid`` runs on the warm-up ``inputs`` (queries, or queries with
    candidates), ``batch_size`` queries per call, ``repeats`` times, so each stage is timed on
    what it really receives at every size the cut-offs give it. ``sizes``: also cut each input's
    candidates to these counts (a service timing the document counts requests bring). Each trace
    entry is one sample: (passages the stage received, or a retriever's depth; seconds).

    Each combination first runs on ``discard`` calls' worth of inputs (``None``: all of them) without
    keeping the times: a model's first calls at new input shapes set up kernels and run several
    times slower than later ones. ``discard=1`` with ``repeats=1`` times every input once, as a
    new query meets the pipeline; ``discard=None`` times inputs the pipeline has seen (a service
    timing fixed warm-up requests). ``turn``: combinations take turns every ``turn`` calls, so
    a slow spell of a shared machine falls on all of them alike (``None``: one after another).

    ``reference``: before the first piece of timed work and after each one (a combination on a
    turn's inputs), time a fixed workload, the cheapest combination on the first input (once
    untimed first); each piece's timings are divided by the mean of the two reference times
    around it over their median, so a slow spell during part of the warm-up does not bend the
    costs. The median and each piece's factor are kept in the model (``reference_ms``, ``drift``).
    """
    if not inputs:
        raise CostModelError("no warm-up queries to time the stages on")
    if repeats < 1 or (discard is not None and discard < 0) or (turn is not None and turn < 1):
        raise CostModelError(f"repeats and turn must be at least 1 and discard at least 0 (got repeats={repeats}, "
                             f"discard={discard}, turn={turn})")
    sizes = sorted(set(sizes)) if sizes is not None else []
    runs: list[tuple[dict[str, int], int | None]] = [
        (values, n) for values in (combinations(grid) if grid else [{}]) for n in (sizes or [None])]  # type: ignore[list-item]
    chunks = [list(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
    samples: dict[str, list[tuple[int, float]]] = {}
    settings: dict[str, dict] = {}
    prepared = []
    for values, n in runs:
        pipeline = rebuild(template, values=values)
        depth = {leaf.name: leaf.k for leaf in leaves(pipeline) if leaf.retrieves}
        for leaf in leaves(pipeline):
            settings[leaf.name] = leaf.runtime_settings() if hasattr(leaf, "runtime_settings") else {}
        batches = [[c.top(n) if n else c for c in chunk] for chunk in chunks]
        prepared.append((pipeline, depth, batches))
    kept = list(range(len(chunks))) * repeats
    step = turn or len(kept)
    work = [(None, item) for item in prepared] + [(kept[i:i + step], item) for i in range(0, len(kept), step)
                                                  for item in prepared]
    if reference:
        cheapest = rebuild(template, values={name: min(values) for name, values in grid.items()})
        reference_batch = [c.top(max(sizes)) if sizes else c for c in chunks[0]]
        cheapest(reference_batch)  # untimed: sets up its shapes
    references: list[float] = []
    pieces: list[list[tuple[str, int, float]]] = []
    for which, (pipeline, depth, batches) in (progress(work) if progress else work):
        if which is None:  # not kept: first calls at new input shapes set up kernels
            for batch in batches[:discard]:
                pipeline(batch)
            continue
        if reference and not references:
            references.append(traced_seconds(cheapest, reference_batch))
        piece: list[tuple[str, int, float]] = []
        for batch in (batches[i] for i in which):
            per_stage: dict[str, list[float]] = {}
            for source, c in zip(batch, pipeline(batch)):
                for cost in c.trace[len(source.trace):]:
                    size = depth.get(cost.stage, cost.passages_scored)
                    entry = per_stage.setdefault(cost.stage, [size, 0.0])
                    entry[0] = max(entry[0], size)
                    entry[1] += cost.seconds
            piece += [(stage, int(size), seconds) for stage, (size, seconds) in per_stage.items()]
        pieces.append(piece)
        if reference:
            references.append(traced_seconds(cheapest, reference_batch))
    usual = float(np.median(references)) if references else 0.0
    drift = [(before + after) / 2 / usual for before, after in zip(references, references[1:])] if usual > 0 else []
    for i, piece in enumerate(pieces):
        factor = drift[i] if drift else 1.0
        for stage, size, seconds in piece:
            samples.setdefault(stage, []).append((size, seconds / factor))
    known = {leaf.name for leaf in leaves(template)}
    models = {name: fit_stage_cost(name, timed, batch_size=batch_size, settings=settings.get(name))
              for name, timed in samples.items() if name in known}
    return CostModel(models, batch_size, reference_ms=1000 * usual, drift=[round(d, 4) for d in drift])


def traced_seconds(pipeline: Stage, batch: Sequence[Candidates]) -> float:
    """Run ``pipeline`` on ``batch`` and return the seconds its stages recorded in the trace (the
    same clock the stage costs are fitted from)."""
    return float(sum(cost.seconds for source, c in zip(batch, pipeline(list(batch)))
                     for cost in c.trace[len(source.trace):]))

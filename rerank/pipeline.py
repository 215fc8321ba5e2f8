"""The stage algebra: every part of a cascade is a :class:`Stage` over a batch of queries.

A stage maps a batch (one :class:`~rerank.types.Candidates` per query) to a new batch. Stages
compose with operators, as in PyTerrier::

    pipe = bm25 % 100 >> student % 30 >> cross_encoder   # retrieve 100, prune to 30, re-rank
    hybrid = bm25 % 100 | dense % 100                      # reciprocal rank fusion
    hybrid = fuse(bm25 % 100, dense % 100, method="zscore")

``%`` binds tighter than ``>>``, which binds tighter than ``|`` (Python's own precedence).
``str(pipe)`` prints the expression, and :mod:`rerank.config` turns it into TOML and back, so
the CLI, the service and experiments build the same objects.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rerank.types import Candidates, Query, StageCost


class Stage(ABC):
    """One step of a pipeline: takes a batch of candidates per query, returns a new batch.

    Stages never modify their input; each returns new :class:`Candidates` whose ``trace`` is
    the input's trace plus what this stage spent. ``name`` labels the stage in printed
    pipelines, traces and TOML configs.
    """

    name: str = "stage"

    @abstractmethod
    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        """Re-score (or retrieve) and re-sort each query's candidates."""

    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this stage through :mod:`rerank.config`, plus
        ``kind``; a stage without a config kind cannot be written to TOML."""
        raise NotImplementedError(f"{type(self).__name__} cannot be written to a config")

    def search(self, queries: Iterable[Query]) -> list[Candidates]:
        """Run the stage from scratch: start every query with no candidates."""
        return self([Candidates(q, [], []) for q in queries])

    def __rshift__(self, other: "Stage") -> "Pipeline":
        return Pipeline([self, other])

    def __mod__(self, k: int) -> "Stage":
        return Cutoff(self, k)

    def __or__(self, other: "Stage") -> "Fusion":
        return Fusion([self, other])

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self}>"


class Pipeline(Stage):
    """Stages run one after the other (``a >> b``)."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        flat: list[Stage] = []
        for stage in stages:
            if not isinstance(stage, Stage):
                raise TypeError(f"cannot compose {type(stage).__name__} into a pipeline; expected a Stage")
            flat.extend(stage.stages if isinstance(stage, Pipeline) else [stage])
        self.stages = flat

    @property
    def name(self) -> str:  # type: ignore[override]
        return render(self)

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        out = list(batch)
        for stage in self.stages:
            out = stage(out)
        return out

    def leaves(self) -> list[Stage]:
        """Every non-composite stage, in order."""
        return [leaf for s in self.stages for leaf in leaves(s)]


class Cutoff(Stage):
    """Keep the top ``k`` candidates after ``stage`` (``stage % k``)."""

    def __init__(self, stage: Stage, k: int) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"a cut-off must be a positive integer, got {k!r}")
        self.stage = stage
        self.k = k

    @property
    def name(self) -> str:  # type: ignore[override]
        return render(self)

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        return [c.top(self.k) for c in self.stage(batch)]


class Fusion(Stage):
    """Run several pipelines on the same input and fuse their rankings (``a | b`` is RRF).

    ``method`` is ``rrf``, ``zscore``, ``minmax`` or ``sum`` (see :func:`rerank.fusion.fuse`).
    """

    def __init__(self, branches: Sequence[Stage], method: str = "rrf", **options: Any) -> None:
        from rerank.fusion import fuse

        flat: list[Stage] = []
        for branch in branches:
            same = isinstance(branch, Fusion) and branch.method == method and branch.options == options
            flat.extend(branch.branches if same else [branch])
        if len(flat) < 2:
            raise ValueError("fusion needs at least two branches")
        fuse(*([[]] * 2), method=method, **options)  # reject an unknown method or option now
        self.branches = flat
        self.method = method
        self.options = options

    @property
    def name(self) -> str:  # type: ignore[override]
        return render(self)

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        return self.combine(batch, [branch(batch) for branch in self.branches])

    def combine(self, batch: Sequence[Candidates], results: Sequence[Sequence[Candidates]]) -> list[Candidates]:
        """Fuse the branches' outputs for ``batch`` (one list per branch, in branch order); the
        experiment runner calls this directly when the branches were computed once and shared."""
        from rerank.fusion import fuse

        began = time.perf_counter()
        fused = fuse(*results, method=self.method, **self.options)
        fusion_seconds = (time.perf_counter() - began) / max(len(batch), 1)
        out = []
        for i, (source, result) in enumerate(zip(batch, fused)):
            # Each branch's trace starts with the input's; keep that once, then every branch's own costs.
            trace = list(source.trace)
            for branch_result in results:
                trace.extend(branch_result[i].trace[len(source.trace):])
            trace.append(StageCost(f"fuse[{self.method}]", fusion_seconds))
            out.append(Candidates(result.query, result.passages, result.scores, trace))
        return out


def _precedence(stage: Stage) -> int:
    if isinstance(stage, Fusion):
        return 0 if stage.method == "rrf" and not stage.options else 3  # ``fuse(...)`` is atomic
    return {Pipeline: 1, Cutoff: 2}.get(type(stage), 3)


def render(stage: Stage, label: Callable[[Stage], str] = lambda s: s.name) -> str:
    """The expression that builds ``stage``, e.g. ``bm25 % 100 >> cross``; leaves are written
    as ``label(leaf)``. Parentheses appear only where Python's precedence needs them."""

    def operand(inner: Stage, context: int) -> str:
        text = render(inner, label)
        return f"({text})" if _precedence(inner) < context else text

    if isinstance(stage, Pipeline):
        return " >> ".join(operand(s, 2) if isinstance(s, Pipeline) else operand(s, 1) for s in stage.stages)
    if isinstance(stage, Cutoff):
        return f"{operand(stage.stage, 2)} % {stage.k}"
    if isinstance(stage, Fusion):
        if _precedence(stage) == 0:
            return " | ".join(operand(b, 1) for b in stage.branches)
        extra = "".join(f", {key}={value!r}" for key, value in stage.options.items())
        return f"fuse({', '.join(render(b, label) for b in stage.branches)}, method={stage.method!r}{extra})"
    return label(stage)


def leaves(stage: Stage) -> list[Stage]:
    """The non-composite stages inside ``stage``, in the order they first run."""
    if isinstance(stage, Pipeline):
        return stage.leaves()
    if isinstance(stage, Cutoff):
        return leaves(stage.stage)
    if isinstance(stage, Fusion):
        return [leaf for b in stage.branches for leaf in leaves(b)]
    return [stage]


def fuse_stages(*branches: Stage, method: str = "rrf", **options: Any) -> Fusion:
    """Fuse pipelines: ``fuse_stages(bm25 % 100, dense % 100, method="zscore")``."""
    return Fusion(branches, method=method, **options)


class Scorer(Stage):
    """A stage that re-scores the candidates it is given and re-sorts them.

    Subclasses implement :meth:`score_pairs`; this base class times the call, re-sorts, and
    shares wall time and model calls among the queries in proportion to their candidates
    (tokens are counted exactly per query).
    """

    def score(self, query: Query, passages: Sequence) -> list[float]:
        """Scores of ``passages`` for one query, in the given order (no re-sorting)."""
        scores, _ = self.score_pairs([Candidates(query, list(passages), [0.0] * len(passages))])
        return [float(s) for s in scores[0]]

    @abstractmethod
    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[list[Sequence[float]], "Work"]:
        """New scores for every (query, passage) pair of the batch, in the input order, and the
        work spent."""

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        from rerank.types import sort_candidates

        from rerank.errors import EmptyQueryError

        batch = list(batch)
        for c in batch:
            if len(c) and not c.query.text.strip():
                raise EmptyQueryError(f"query {c.query.id!r} has empty text; cannot score its {len(c)} candidates")
        began = time.perf_counter()
        scores, work = self.score_pairs(batch) if any(len(c) for c in batch) else ([[] for _ in batch], Work())
        seconds = time.perf_counter() - began
        total = sum(len(c) for c in batch)
        out = []
        for i, (cands, new) in enumerate(zip(batch, scores)):
            share = len(cands) / total if total else 1.0 / max(len(batch), 1)
            ranked = sort_candidates(cands.query, list(cands.passages), [float(s) for s in new])
            tokens = work.tokens_per_query[i] if work.tokens_per_query else 0
            ranked.trace = list(cands.trace) + [StageCost(
                self.name, seconds * share, passages_scored=len(cands),
                model_calls=work.model_calls * share, tokens=tokens)]
            out.append(ranked)
        return out


class Work:
    """What a scorer spent on a batch: model forward calls in all, tokens per query."""

    __slots__ = ("model_calls", "tokens_per_query")

    def __init__(self, model_calls: float = 0, tokens_per_query: Sequence[int] = ()) -> None:
        self.model_calls = model_calls
        self.tokens_per_query = list(tokens_per_query)


class Identity(Stage):
    """Pass the batch through unchanged (the neutral element of ``>>``)."""

    def __init__(self, name: str = "identity") -> None:
        self.name = name

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        return list(batch)

    def config(self) -> dict[str, Any]:
        return {"kind": "identity"}

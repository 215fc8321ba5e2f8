"""Score once, re-sort many times: stand-ins for a pipeline's pointwise stages that remember every
(query, passage) score, so each combination of cut-offs is evaluated by re-sorting.

A pointwise stage (``Stage.pointwise``: a pair's score ignores the other candidates) gives the
same score to a pair whichever candidates surround it, so the pipeline run with these stand-ins
ranks exactly as the pipeline itself would, under the same tie rule (the stand-ins re-sort with
the same code). Scores are computed on first need, many queries per model call; the stand-ins
count what they computed. A retriever's results are kept per query at the largest depth asked
and cut for smaller ones (an index's ranking of its top 50 is the top 50 of its ranking of 100).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from rerank.pipeline import Cutoff, Scorer, Stage, Work, rebuild
from rerank.types import Candidates


class CachedScorer(Scorer):
    """``inner``'s scores, computed once per (query id, passage id)."""

    pointwise = True

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.name = inner.name
        self.scores: dict[tuple[str, str], float] = {}
        self.computed = 0
        """Pairs scored by ``inner`` so far."""

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        missing = []
        for c in batch:
            needed = [p for p in dict.fromkeys(c.passages) if (c.query.id, p.id) not in self.scores]
            if needed:
                missing.append(Candidates(c.query, needed, [0.0] * len(needed)))
        if missing:
            scored, _ = self.inner.score_pairs(missing)
            for c, values in zip(missing, scored):
                for p, s in zip(c.passages, values):
                    self.scores[c.query.id, p.id] = float(s)
                self.computed += len(c.passages)
        return [[self.scores[c.query.id, p.id] for p in c.passages] for c in batch], Work()


class CachedRetriever(Stage):
    """``inner``'s results (a retriever), searched once per query at the largest depth asked."""

    retrieves = True
    pointwise = True

    def __init__(self, inner: Stage) -> None:
        self.inner = inner
        self.name = inner.name
        self.k = getattr(inner, "k", 1000)
        self.results: dict[str, tuple[int, Candidates]] = {}
        """Shared by every copy a cut-off makes: query id -> (depth searched, its candidates)."""

    def __mod__(self, k: int | str) -> Stage:
        if isinstance(k, str):
            return Cutoff(self, k)
        pushed = copy.copy(self)
        pushed.k = k
        return Cutoff(pushed, k)

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        todo = [c for c in batch if self.results.get(c.query.id, (0, None))[0] < self.k]
        if todo:
            searcher = copy.copy(self.inner)
            searcher.k = self.k
            for found in searcher([Candidates(c.query, [], []) for c in todo]):
                self.results[found.query.id] = (self.k, found)
        out = []
        for c in batch:
            found = self.results[c.query.id][1]
            out.append(Candidates(c.query, found.passages[: self.k], found.scores[: self.k], list(c.trace)))
        return out


def with_cached_stages(pipeline: Stage) -> tuple[Stage, list[Stage]]:
    """``pipeline`` with each pointwise leaf (and retriever) replaced by a caching stand-in (one
    per distinct leaf object), and the stand-ins. Other leaves (PRP, listwise, IDCM) stay."""
    stand_ins: dict[int, Stage] = {}

    def wrap(leaf: Stage) -> Stage:
        if id(leaf) not in stand_ins:
            if leaf.retrieves:
                stand_ins[id(leaf)] = CachedRetriever(leaf)
            elif leaf.pointwise and isinstance(leaf, Scorer):
                stand_ins[id(leaf)] = CachedScorer(leaf)
            else:
                stand_ins[id(leaf)] = leaf
        return stand_ins[id(leaf)]

    cached = rebuild(pipeline, leaf=wrap)
    return cached, [s for s in stand_ins.values() if isinstance(s, (CachedScorer, CachedRetriever))]

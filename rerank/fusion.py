"""Rank fusion of result lists: reciprocal rank fusion and normalized score combination.

:func:`fuse_results` is the entry point; :func:`reciprocal_rank_fusion` and
:func:`score_fusion` are the two kernels it dispatches to.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from rerank.registry import Registry
from rerank.types import Candidates, Passage, StageCost, sort_candidates

NORMALIZATIONS = ("minmax", "zscore", "none")


DEFAULT_METHOD = "rrf"
"""The fusion method when none is named: reciprocal rank fusion."""

FUSION_METHODS: Registry[Callable[..., list[Candidates]]] = Registry("fusion method", "fusion_methods")
"""The result-list fusion methods :func:`fuse_results` takes, each a function of the result lists
and its options; other packages add methods through the ``rerank.fusion_methods`` entry-point group."""


def _normalize(scores: list[float], how: str) -> list[float]:
    if how == "none" or not scores:
        return list(scores)
    if how == "minmax":
        low, high = min(scores), max(scores)
        return [1.0 if high == low else (s - low) / (high - low) for s in scores]
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    return [0.0 if std == 0 else (s - mean) / std for s in scores]


def _check_aligned(runs: Sequence[Sequence[Candidates]]) -> None:
    if len(runs) < 2:
        raise ValueError("fusion needs at least two result lists")
    first = [c.query.id for c in runs[0]]
    for other in runs[1:]:
        if [c.query.id for c in other] != first:
            raise ValueError("result lists to fuse must cover the same queries in the same order")


def _fuse(runs: Sequence[Sequence[Candidates]], contribution, name: str) -> list[Candidates]:
    """Sum per-list contributions; ``contribution(i, cands)`` gives ``({id: value}, value_if_absent)``."""
    _check_aligned(runs)
    out = []
    for per_query in zip(*runs):
        parts = [contribution(i, cands) for i, cands in enumerate(per_query)]
        passages: dict[str, Passage] = {}
        for cands in per_query:
            for p in cands.passages:
                passages.setdefault(p.id, p)
        scores = [sum(values.get(d, absent) for values, absent in parts) for d in passages]
        result = sort_candidates(per_query[0].query, list(passages.values()), scores)
        result.trace = [cost for cands in per_query for cost in cands.trace] + [StageCost(name)]
        out.append(result)
    return out


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    weights = list(weights or [1.0] * n)
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} result lists")
    return weights


def reciprocal_rank_fusion(*runs: Sequence[Candidates], k: int = 60, weights: Sequence[float] | None = None) -> list[Candidates]:
    """RRF (Cormack et al. 2009): score = sum of ``weight / (k + rank)`` over the lists, ranks from 1."""
    w = _weights(weights, len(runs))

    def contribution(i: int, cands: Candidates) -> tuple[dict[str, float], float]:
        return {p.id: w[i] / (k + rank) for rank, p in enumerate(cands.passages, start=1)}, 0.0

    return _fuse(runs, contribution, f"rrf(k={k})")


def score_fusion(*runs: Sequence[Candidates], normalization: str = "zscore",
                 weights: Sequence[float] | None = None) -> list[Candidates]:
    """Weighted sum of per-query normalized scores (CombSUM); a passage missing from a list gets
    that list's lowest normalized score, so it is neither rewarded nor dropped."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    w = _weights(weights, len(runs))

    def contribution(i: int, cands: Candidates) -> tuple[dict[str, float], float]:
        normalized = _normalize(list(cands.scores), normalization)
        floor = w[i] * min(normalized) if normalized else 0.0
        return {p.id: w[i] * s for p, s in zip(cands.passages, normalized)}, floor

    return _fuse(runs, contribution, f"fusion({normalization})")


def fuse_results(*results: Sequence[Candidates], method: str = DEFAULT_METHOD, **options: Any) -> list[Candidates]:
    """Fuse result lists (one list of :class:`Candidates` per system, same queries in the same
    order): ``rrf`` (options ``k``, ``weights``), or score fusion after ``zscore`` or ``minmax``
    normalization or none (``sum``; option ``weights``). To fuse pipeline *stages*, use
    :func:`rerank.pipeline.fuse` (or ``a | b``), which calls this on their outputs."""
    return FUSION_METHODS.get(method)(*results, **options)


FUSION_METHODS.add(DEFAULT_METHOD, reciprocal_rank_fusion)


@FUSION_METHODS.register("zscore")
def zscore_fusion(*runs: Sequence[Candidates], weights: Sequence[float] | None = None) -> list[Candidates]:
    """Score fusion after z-score normalization per query."""
    return score_fusion(*runs, normalization="zscore", weights=weights)


@FUSION_METHODS.register("minmax")
def minmax_fusion(*runs: Sequence[Candidates], weights: Sequence[float] | None = None) -> list[Candidates]:
    """Score fusion after min-max normalization per query."""
    return score_fusion(*runs, normalization="minmax", weights=weights)


@FUSION_METHODS.register("sum")
def sum_fusion(*runs: Sequence[Candidates], weights: Sequence[float] | None = None) -> list[Candidates]:
    """Score fusion of the raw scores (CombSUM)."""
    return score_fusion(*runs, normalization="none", weights=weights)

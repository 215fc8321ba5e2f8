"""Rank fusion: the formulas on hand-checked lists, and input checks."""
from __future__ import annotations

import pytest

from rerank.fusion import fuse_results as fuse
from rerank.fusion import reciprocal_rank_fusion, score_fusion
from rerank.types import Candidates, Passage, Query

Q = Query("q", "x")


def ranked(*pairs):
    return [Candidates(Q, [Passage(d, d) for d, _ in pairs], [s for _, s in pairs])]


def test_rrf_formula():
    (fused,) = reciprocal_rank_fusion(ranked(("a", 9), ("b", 5)), ranked(("b", 0.9), ("c", 0.1)), k=60)
    assert fused.ids == ["b", "a", "c"]
    assert fused.scores == pytest.approx([1 / 62 + 1 / 61, 1 / 61, 1 / 62])
    assert fused.trace[-1].stage == "rrf(k=60)"


def test_zscore_fusion_gives_absent_passages_the_list_floor():
    (fused,) = score_fusion(ranked(("a", 3.0), ("b", 1.0)), ranked(("b", 10.0), ("c", 0.0)), normalization="zscore")
    # list 1 normalizes to a=+1, b=-1; list 2 to b=+1, c=-1; absent entries get the list minimum (-1)
    assert dict(zip(fused.ids, fused.scores)) == pytest.approx({"a": 0.0, "b": 0.0, "c": -2.0})
    (minmax,) = fuse(ranked(("a", 3.0), ("b", 1.0)), ranked(("b", 10.0), ("c", 0.0)), method="minmax", weights=[1, 2])
    assert dict(zip(minmax.ids, minmax.scores)) == pytest.approx({"a": 1.0, "b": 2.0, "c": 0.0})


def test_fusion_rejects_misaligned_inputs():
    other = [Candidates(Query("other", "y"), [], [])]
    with pytest.raises(ValueError, match="same queries"):
        fuse(ranked(("a", 1)), other)
    with pytest.raises(ValueError, match="at least two"):
        fuse(ranked(("a", 1)))
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse(ranked(("a", 1)), ranked(("a", 1)), method="borda")
    with pytest.raises(ValueError, match="2 weights for 3"):
        fuse(ranked(("a", 1)), ranked(("a", 1)), ranked(("a", 1)), weights=[1, 2])

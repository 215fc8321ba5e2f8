"""BM25 re-scoring of given candidates with an index's statistics (IDF, average length)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rerank.pipeline import Scorer, Work
from rerank.retrieve import BM25Index
from rerank.types import Candidates


class BM25Scorer(Scorer, kind="bm25"):
    """Re-score candidates with BM25 against a :class:`~rerank.retrieve.BM25Index` (or its folder).

    Every candidate must be in the index; its score is exactly what a BM25 search would give.
    """

    path_arguments = ("index",)

    pointwise = True  # a pair's score ignores the other candidates (cacheable)

    def __init__(self, index: BM25Index | str | Path, *, name: str | None = None) -> None:
        self.index = BM25Index.load(index) if isinstance(index, (str, Path)) else index
        self.name = name or "bm25-rescore"

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """BM25 score of every candidate, query by query."""
        return [self.index.score(c.query, c.ids) if len(c) else [] for c in batch], Work()

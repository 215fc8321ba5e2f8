"""BM25 re-scoring of given candidates with an index's statistics (IDF, average length)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rerank.pipeline import Scorer, Work
from rerank.types import Candidates


class BM25Scorer(Scorer):
    """Re-score candidates with BM25 against a :class:`~rerank.retrieve.BM25Index` (or its folder).

    Every candidate must be in the index; its score is exactly what a BM25 search would give.
    """

    def __init__(self, index, *, name: str | None = None) -> None:
        from rerank.retrieve import BM25Index

        self.index = BM25Index.load(index) if isinstance(index, (str, Path)) else index
        self.name = name or "bm25-rescore"

    def config(self) -> dict[str, Any]:
        """``kind`` and the arguments that rebuild this scorer (needs a saved index)."""
        if self.index.folder is None:
            raise NotImplementedError("save the BM25 index first: a config refers to it by folder")
        return {"kind": "bm25", "index": str(self.index.folder)}

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[list[Sequence[float]], Work]:
        """BM25 score of every candidate, query by query."""
        return [self.index.score(c.query, c.ids) if len(c) else [] for c in batch], Work()

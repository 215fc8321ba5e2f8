"""PyTerrier: ``RerankTransformer``, a re-ranking transformer (the ``pyterrier`` extra).

    from rerank.integrations.pyterrier import RerankTransformer
    pipeline = bm25 >> pt.text.get_text(dataset, "text") >> RerankTransformer("minilm-l6") % 10

Input: a result frame with ``qid``, ``query``, ``docno`` and the ``text`` column (``text_field``);
output: the same rows with ``score`` set to the re-ranker's and ``rank`` from 0, best first per
query (PyTerrier's convention), so ``% k``, ``>>`` and ``pt.Experiment`` work as with its own.
"""
from __future__ import annotations

from typing import Any

from rerank.extras import missing_extra
from rerank.integrations import resolve_reranker

try:
    import pandas as pd
    import pyterrier as pt
except ImportError as error:
    raise missing_extra("pyterrier", "the PyTerrier transformer", error) from error


class RerankTransformer(pt.Transformer):
    """Re-score each query's rows with any engine stage or pipeline (``reranker``: a stage, a
    model for :func:`rerank.load`, or a pipeline ``.toml``), reading ``text_field``."""

    def __init__(self, reranker: Any, *, text_field: str = "text", verbose: bool = False) -> None:
        self.reranker = reranker
        self.text_field = text_field
        self.verbose = verbose
        self._stage = resolve_reranker(reranker)

    def __repr__(self) -> str:
        return f"RerankTransformer({self._stage.name})"

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Scores and ranks for every row, rows sorted best first within each query."""
        missing = [c for c in ("qid", "query", "docno", self.text_field) if c not in inp.columns]
        if missing:
            raise ValueError(f"RerankTransformer needs the columns qid, query, docno and {self.text_field}; "
                             f"missing {missing} (add the text with pt.text.get_text)")
        if inp.empty:
            return inp.assign(score=pd.Series(dtype=float), rank=pd.Series(dtype=int))
        frames = []
        for _, rows in inp.groupby("qid", sort=False):
            rows = rows.reset_index(drop=True)
            results = self._stage.rank(str(rows["query"].iloc[0]), rows[self.text_field].astype(str).tolist())
            order = [r.index for r in results]
            ranked = rows.iloc[order].reset_index(drop=True)
            ranked["score"] = [r.score for r in results]
            ranked["rank"] = range(len(ranked))
            frames.append(ranked)
        return pd.concat(frames, ignore_index=True)

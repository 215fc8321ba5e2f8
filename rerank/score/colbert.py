"""Late interaction (ColBERT) as a stage: :class:`ColBERT` re-ranks from text, or from passage
token embeddings computed once and stored (:class:`~rerank.retrieve.tokens.TokenEmbeddingIndex`,
flat and memory-mapped), so that in ``bm25 % 100 >> colbert % 20 >> cross_encoder`` only the
queries are encoded at search time. The encoder and MaxSim are :mod:`rerank.encoders.tokens`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rerank.encoders.tokens import COLBERT, ColBERTEncoder, maxsim_windows
from rerank.recipes import Recipe, RecipeError
from rerank.recipes import recipe as find_recipe
from rerank.retrieve.tokens import TokenEmbeddingIndex
from rerank.score.stored import StoredVectorScorer


class ColBERT(StoredVectorScorer, kind="colbert"):
    """Re-rank with a ColBERT checkpoint by MaxSim (see the module docstring).

    ``model``: a Hugging Face id or folder (Stanford or PyLate layout). ``index``: a
    :class:`~rerank.retrieve.tokens.TokenEmbeddingIndex` (or its folder) holding the passages'
    token vectors, computed once; passages it lacks are encoded on the fly. Other options go to
    :class:`ColBERTEncoder` (this scorer's own: an index's encoder is not reused, since these
    options may differ from its). The trace counts the passages encoded now.
    """

    index_class = TokenEmbeddingIndex

    def __init__(self, model: str, *, index: TokenEmbeddingIndex | str | Path | None = None,
                 recipe: str | Recipe | None = None, query_length: int | None = None,
                 document_length: int | None = None, batch_size: int = 32, precision: str = "auto",
                 threads: int | None = None, device: str = "cpu", windows: str = "first", stride: int | None = None,
                 name: str | None = None) -> None:
        chosen = find_recipe(recipe) if recipe is not None else COLBERT
        if chosen.stage != "colbert":
            raise RecipeError(f"recipe {chosen.name} is run by the {chosen.stage} stage, not colbert")
        self.attach(model, index, precision, ColBERTEncoder, lambda: ColBERTEncoder(
            model, recipe=chosen, query_length=query_length, document_length=document_length, batch_size=batch_size,
            precision=precision, threads=threads, device=device, windows=windows, stride=stride),
            reuse_index_encoder=False)
        stored = getattr(self.index, "windows", "first") if self.index is not None else None
        if stored is not None and stored != windows:
            raise ValueError(f"the index holds {stored!r} windows of each passage but windows={windows!r} was asked; "
                             "rebuild the index with --colbert-windows or ask for the same")
        self.name = name or f"colbert({os.path.basename(str(model).rstrip('/')) or model})"

    def encode_queries(self, texts: list[str]) -> Sequence[Any]:
        return self.encoder.encode_queries(texts)

    def encode_passages(self, texts: list[str]) -> Sequence[Any]:
        return self.encoder.encode_document_windows(texts)

    def stored_vectors(self, ids: list[str]) -> dict[str, Any]:
        return self.index.window_vectors(ids) if self.index is not None else {}

    def similarities(self, query: Any, passages: list[Any]) -> np.ndarray:
        """MaxSim of the query's token vectors against each passage's windows (the best window)."""
        return np.array([maxsim_windows(query, windows) for windows in passages], dtype=np.float32)

    def passage_budget(self, query: str) -> int:
        """Passage tokens one window holds (the query is encoded apart)."""
        return max(1, self.encoder.document_length - 3)  # [CLS], the document marker and [SEP]

    def runtime_settings(self) -> dict[str, str]:
        settings = self.encoder.runtime_settings()
        if self.index is not None:
            settings["stored_embeddings"] = str(getattr(self.index, "folder", "in memory"))
        return settings

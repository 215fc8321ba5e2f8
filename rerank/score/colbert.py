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
from rerank.pipeline import Scorer, Work
from rerank.recipes import Recipe, RecipeError
from rerank.recipes import recipe as find_recipe
from rerank.retrieve.tokens import TokenEmbeddingIndex
from rerank.types import Candidates


class ColBERT(Scorer, kind="colbert"):
    """Re-rank with a ColBERT checkpoint by MaxSim (see the module docstring).

    ``model``: a Hugging Face id or folder (Stanford or PyLate layout). ``index``: a
    :class:`~rerank.retrieve.tokens.TokenEmbeddingIndex` (or its folder) holding the passages'
    token vectors, computed once; passages it lacks are encoded on the fly. Other options go to
    :class:`ColBERTEncoder`. The trace counts query tokens and the passages encoded now.
    """

    pointwise = True
    loads_model = True
    path_arguments = ("index",)

    def __init__(self, model: str, *, index: TokenEmbeddingIndex | str | Path | None = None, recipe: str | Recipe | None = None,
                 query_length: int | None = None, document_length: int | None = None, batch_size: int = 32,
                 precision: str = "auto", threads: int | None = None, device: str = "cpu",
                 windows: str = "first", stride: int | None = None, name: str | None = None) -> None:
        chosen = find_recipe(recipe) if recipe is not None else COLBERT
        if chosen.stage != "colbert":
            raise RecipeError(f"recipe {chosen.name} is run by the {chosen.stage} stage, not colbert")
        if isinstance(index, (str, Path)):
            index = TokenEmbeddingIndex.load(index)
        stored = getattr(index, "windows", "first") if index is not None else None
        if stored is not None and stored != windows:
            raise ValueError(f"the index holds {stored!r} windows of each passage but windows={windows!r} was asked; "
                             "rebuild the index with --colbert-windows or ask for the same")
        self.index = index
        self.encoder = ColBERTEncoder(model, recipe=chosen, query_length=query_length,
                                      document_length=document_length, batch_size=batch_size, precision=precision,
                                      threads=threads, device=device, windows=windows, stride=stride)
        self.name = name or f"colbert({os.path.basename(str(model).rstrip('/')) or model})"

    def runtime_settings(self) -> dict[str, str]:
        settings = self.encoder.runtime_settings()
        if self.index is not None:
            settings["stored_embeddings"] = str(getattr(self.index, "folder", "in memory"))
        return settings

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """MaxSim of every candidate: stored passage vectors where the index has them."""
        queries = list(dict.fromkeys(c.query.text for c in batch))
        encoded = dict(zip(queries, self.encoder.encode_queries(queries)))
        ids = [p.id for c in batch for p in c.passages]
        stored = self.index.window_vectors(ids) if self.index is not None else {}
        fresh = list(dict.fromkeys(p.id for c in batch for p in c.passages if p.id not in stored))
        encoded_now = set(fresh)
        texts = {p.id: p.full_text for c in batch for p in c.passages}
        windows = dict(stored)
        windows.update(zip(fresh, self.encoder.encode_document_windows([texts[i] for i in fresh])))
        scores, tokens, counters = [], [], []
        for c in batch:
            query = encoded[c.query.text]
            scores.append(np.array([maxsim_windows(query, windows[p.id]) for p in c.passages], dtype=np.float32))
            tokens.append(self.encoder.query_length)
            counters.append({"documents": len(c), "encoded_now": sum(1 for p in c.passages if p.id in encoded_now)})
        calls = -(-len(queries) // self.encoder.batch_size) + -(-len(fresh) // self.encoder.batch_size)
        return scores, Work(calls, tokens, counters_per_query=counters)

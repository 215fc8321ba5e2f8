"""Bi-encoder scoring: the dot product of a query vector and passage vectors, computed at query
time from raw text or read from a dense index's stored passage vectors."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rerank.encoders.dense import BiEncoder
from rerank.models import MINILM_L6
from rerank.retrieve.dense import DenseIndex
from rerank.score.detect import Detection, ModelFiles, family_rule
from rerank.score.stored import StoredVectorScorer


class BiEncoderScorer(StoredVectorScorer, kind="bi-encoder"):
    """Score candidates by the similarity of bi-encoder vectors (a cheap student for pruning).

    ``model``: a short name, Hugging Face id or path, or a loaded :class:`~rerank.encoders.dense.BiEncoder`.
    ``index``: a :class:`~rerank.retrieve.DenseIndex` (or its folder) built with the same
    model; passages found in it are scored from their stored vectors, so only the query is
    encoded. Passages missing from it are encoded on the fly (and counted in the trace).
    ``precision``: ``auto`` (default), ``fp32``, ``bf16`` or ``int8`` for the encoder this scorer
    loads (see :mod:`rerank.precision`); a loaded encoder or index object keeps its own.
    ``max_length``: the tokens a text is read to by the encoder this scorer loads (default: the
    model's own limit); a loaded encoder or an index's encoder keeps its own.
    """

    model_family = "bi-encoder"

    index_class = DenseIndex

    def __init__(self, model: str | BiEncoder = MINILM_L6, *, index: DenseIndex | str | Path | None = None,
                 precision: str = "auto", batch_size: int = 64, max_length: int | None = None, name: str | None = None) -> None:
        self.attach(model, index, precision, BiEncoder,
                    lambda: BiEncoder(model, precision=precision, max_length=max_length))  # type: ignore[arg-type]
        if self.index is not None and self.index.embeddings.shape[1] != self.encoder.dim:
            raise ValueError(f"index vectors have {self.index.embeddings.shape[1]} dimensions, the model "
                             f"{self.encoder.dim}")
        self.precision = self.encoder.precision
        self.batch_size = batch_size
        self.name = name or self.default_name()

    def encode_queries(self, texts: list[str]) -> Sequence[Any]:
        return self.encoder.encode_queries(texts, batch_size=self.batch_size)

    def encode_passages(self, texts: list[str]) -> Sequence[Any]:
        return self.encoder.encode_passages(texts, batch_size=self.batch_size)

    def stored_vector(self, row: int) -> Any:
        return self.index.embeddings[row]

    def similarities(self, query: Any, passages: list[Any]) -> np.ndarray:
        """Query vector · passage vectors."""
        return np.stack(passages) @ query


@family_rule("sentence-transformers", order=60)
def _sentence_transformers(files: ModelFiles) -> Detection | None:
    """Sentence-transformers modules (other than SPLADE's): a bi-encoder."""
    if files.module_types:
        return Detection(BiEncoderScorer.model_family or "", reason="sentence-transformers modules")
    return None


@family_rule("bare-encoder", order=80)
def _bare_encoder(files: ModelFiles) -> Detection | None:
    """A bare encoder (``BertModel`` and the like): mean-pooled, a bi-encoder."""
    if any(a.endswith("Model") for a in files.architectures):
        return Detection(BiEncoderScorer.model_family or "", reason="a bare encoder")
    return None

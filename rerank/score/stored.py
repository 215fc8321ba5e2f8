"""What the index-backed scorers share (bi-encoder, SPLADE and ColBERT): a scorer that reads
passage vectors from an index built with its model where the index has them, reuses the index's
encoder when the models agree, and encodes the rest on the fly, each distinct query and passage
once.

A subclass names its index class and encoder class and says how to encode queries and passages,
how to read stored vectors, and how a query's vectors meet passage vectors."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rerank.pipeline import Scorer, Work
from rerank.types import Candidates

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class StoredVectorScorer(Scorer):
    """A pointwise scorer over stored passage vectors (see the module docstring)."""

    path_arguments = ("index",)
    pointwise = True  # a pair's score ignores the other candidates (cacheable)
    loads_model = True
    index: Any
    encoder: Any
    model_name: str

    index_class: Any
    """The index kind this scorer reads (its ``load`` opens a folder)."""

    def attach(self, model: Any, index: Any, precision: str, encoder_class: type,
               make_encoder: Callable[[], Any], *, reuse_index_encoder: bool = True) -> None:
        """Set ``index`` (an index object or its folder, loaded in ``precision``) and ``encoder``:
        ``model`` itself when it is an encoder, the index's when it was built with ``model`` (and
        ``reuse_index_encoder``), else ``make_encoder()``."""
        if isinstance(index, (str, Path)):
            index = self.index_class.load(index, precision=precision)
        self.index = index
        if isinstance(model, encoder_class):
            self.encoder = model
        elif reuse_index_encoder and index is not None and index.model_name == model:
            self.encoder = index.encoder
        else:
            self.encoder = make_encoder()
        self.model_name = model if isinstance(model, str) else model.name

    def default_name(self) -> str:
        """``kind(model)``, with ``, cached`` when an index supplies stored vectors."""
        return f"{self.kind}({self.model_name}{', cached' if self.index is not None else ''})"

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The encoder's tokenizer."""
        return self.encoder.tokenizer

    def passage_budget(self, query: str) -> int:
        """Passage tokens the encoder reads (the query is encoded apart)."""
        return max(1, self.encoder.max_length - self.encoder.tokenizer.num_special_tokens_to_add(pair=False))

    # -- what a family says ---------------------------------------------------------------------
    def encode_queries(self, texts: list[str]) -> Sequence[Any]:
        """One vector per query text."""
        raise NotImplementedError

    def encode_passages(self, texts: list[str]) -> Sequence[Any]:
        """One vector per passage text."""
        raise NotImplementedError

    def stored_vector(self, row: int) -> Any:
        """The index's vector of the passage at ``row``."""
        raise NotImplementedError

    def stored_vectors(self, ids: list[str]) -> dict[str, Any]:
        """The index's vectors of those of ``ids`` it holds (by id)."""
        if self.index is None:
            return {}
        return {pid: self.stored_vector(row) for pid, row in self.index.positions(ids).items()}

    def similarities(self, query: Any, passages: list[Any]) -> np.ndarray:
        """The scores of ``passages``' vectors against ``query``'s."""
        raise NotImplementedError

    # -- the shared scoring ---------------------------------------------------------------------
    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """Every candidate scored from its stored vector, or from one encoded now; each distinct
        query and passage is encoded once, its tokens counted for the first query that has it."""
        calls_before = self.encoder.forward_calls
        texts = list(dict.fromkeys(c.query.text for c in batch))
        query_vectors = dict(zip(texts, self.encode_queries(texts)))
        query_tokens = dict(zip(texts, self.encoder.last_lengths))
        vectors = self.stored_vectors(list(dict.fromkeys(p.id for c in batch for p in c.passages)))
        fresh: dict[str, str] = {}
        for c in batch:
            for p in c.passages:
                if p.id not in vectors:
                    fresh.setdefault(p.id, p.full_text)
        if fresh:
            vectors.update(zip(fresh, self.encode_passages(list(fresh.values()))))
        lengths = dict(zip(fresh, self.encoder.last_lengths)) if fresh else {}
        scores, tokens, counters = [], [], []
        for c in batch:
            if len(c):
                scores.append(self.similarities(query_vectors[c.query.text], [vectors[p.id] for p in c.passages]))
            else:
                scores.append(np.zeros(0, dtype=np.float32))
            tokens.append(query_tokens.pop(c.query.text, 0) + sum(lengths.pop(p.id, 0) for p in c.passages))
            counters.append({"documents": len(c), "encoded_now": sum(1 for p in c.passages if p.id in fresh)})
        return scores, Work(self.encoder.forward_calls - calls_before, tokens, counters_per_query=counters)

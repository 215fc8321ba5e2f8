"""Ranking plain strings in one line: ``stage.rank(query, documents)`` for any re-ranking stage."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rerank.errors import EmptyQueryError
from rerank.types import Candidates, Passage, Query


@dataclass(frozen=True, slots=True)
class RankedDocument:
    """One document of a ranking: its position in the input list, its score and its text."""

    index: int
    score: float
    document: str


def rank_documents(stage: Callable[[list[Candidates]], list[Candidates]], query: str, documents: Sequence[str],
                   top_k: int | None = None) -> list[RankedDocument]:
    """Run ``stage`` (a re-ranking :class:`~rerank.pipeline.Stage`) on one query and its documents
    (strings) and return them best first.

    Documents enter in the given order, so equal scores keep that order (:mod:`rerank.order`).
    An empty query, an empty document list or a document that is not a string is an error.
    """
    if not isinstance(query, str) or not query.strip():
        raise EmptyQueryError("the query is empty; rank() needs a query to score the documents against")
    if isinstance(documents, str) or not isinstance(documents, Sequence):
        raise TypeError("documents must be a list of strings")
    if not documents:
        raise ValueError("no documents to rank")
    for i, text in enumerate(documents):
        if not isinstance(text, str):
            raise TypeError(f"documents[{i}] is a {type(text).__name__}, not a string")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    passages = [Passage(str(i), text) for i, text in enumerate(documents)]
    [result] = stage([Candidates(Query("query", query), passages, [0.0] * len(passages))])
    ranked = [RankedDocument(int(p.id), float(s), documents[int(p.id)]) for p, s in zip(result.passages, result.scores)]
    return ranked[:top_k] if top_k else ranked

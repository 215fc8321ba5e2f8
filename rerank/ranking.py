"""Ranking plain strings in one line: ``stage.rank(query, documents)`` for any re-ranking stage,
with the caller's own ids and metadata carried through to the results."""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rerank.errors import EmptyQueryError
from rerank.types import Candidates, Passage, Query


@dataclass(frozen=True, slots=True)
class RankedDocument:
    """One document of a ranking: its position in the input list, its score, its text, and the
    caller's ``id`` and ``metadata`` for it (None where none were given)."""

    index: int
    score: float
    document: str
    id: Hashable | None = None
    metadata: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready where the metadata is)."""
        return {"index": self.index, "id": self.id, "score": self.score, "document": self.document,
                "metadata": dict(self.metadata) if self.metadata is not None else None}


class RankedResults(list):
    """The documents of one query, best first: a list of :class:`RankedDocument` that also knows
    its ``query``, looks documents up by the caller's id (:meth:`by_id`), cuts to the best n
    (:meth:`top_k`) and exports plain dicts (:meth:`to_dict`)."""

    def __init__(self, query: str, documents: Sequence[RankedDocument] = ()) -> None:
        super().__init__(documents)
        self.query = query
        self._by_id = {d.id: d for d in documents if d.id is not None}

    def top_k(self, n: int) -> RankedResults:
        """The best ``n`` documents (all of them when there are fewer)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"top_k needs a positive integer, got {n!r}")
        return RankedResults(self.query, self[:n])

    def by_id(self, doc_id: Hashable) -> RankedDocument:
        """The document the caller gave ``doc_id``; KeyError naming it where there is none."""
        try:
            return self._by_id[doc_id]
        except KeyError:
            raise KeyError(f"no document with id {doc_id!r} in these results") from None

    def rank_of(self, doc_id: Hashable) -> int:
        """The 1-based rank of the document the caller gave ``doc_id``."""
        return self.index(self.by_id(doc_id)) + 1

    @property
    def ids(self) -> list[Hashable | None]:
        """The caller's ids, best first."""
        return [d.id for d in self]

    @property
    def scores(self) -> list[float]:
        """The scores, best first."""
        return [d.score for d in self]

    def to_dict(self) -> dict[str, Any]:
        """``{"query": ..., "results": [RankedDocument.to_dict(), ...]}``."""
        return {"query": self.query, "results": [d.to_dict() for d in self]}

    def __repr__(self) -> str:
        return f"RankedResults(query={self.query!r}, {len(self)} documents)"


@dataclass(frozen=True)
class _Inputs:
    ids: list[Hashable | None] = field(default_factory=list)
    metadata: list[Mapping[str, Any] | None] = field(default_factory=list)


def _caller_inputs(n: int, ids: Sequence[Hashable] | None, metadata: Sequence[Mapping[str, Any] | None] | None) -> _Inputs:
    if ids is not None:
        if isinstance(ids, str) or len(ids) != n:
            raise ValueError(f"ids must be a list with one id per document ({n}), got "
                             f"{len(ids) if not isinstance(ids, str) else 'a string'}")
        seen: dict[Hashable, int] = {}
        for i, doc_id in enumerate(ids):
            if doc_id is None or not isinstance(doc_id, Hashable):
                raise TypeError(f"ids[{i}] is {doc_id!r}: ids must be hashable and not None")
            if doc_id in seen:
                raise ValueError(f"duplicate id {doc_id!r} at positions {seen[doc_id]} and {i}")
            seen[doc_id] = i
    if metadata is not None:
        if isinstance(metadata, (str, Mapping)) or len(metadata) != n:
            raise ValueError(f"metadata must be a list with one mapping (or None) per document ({n})")
        for i, item in enumerate(metadata):
            if item is not None and not isinstance(item, Mapping):
                raise TypeError(f"metadata[{i}] is a {type(item).__name__}, not a mapping")
    return _Inputs(list(ids) if ids is not None else [None] * n,
                   list(metadata) if metadata is not None else [None] * n)


def rank_documents(stage: Callable[[list[Candidates]], list[Candidates]], query: str, documents: Sequence[str],
                   top_k: int | None = None, *, ids: Sequence[Hashable] | None = None,
                   metadata: Sequence[Mapping[str, Any] | None] | None = None,
                   min_relevance: float | None = None) -> RankedResults:
    """Run ``stage`` (a re-ranking :class:`~rerank.pipeline.Stage`) on one query and its documents
    (strings) and return them best first as :class:`RankedResults`, each document carrying its
    input position, score, text and, where given, the caller's ``ids[i]`` and ``metadata[i]``.

    Documents enter in the given order, so equal scores keep that order (:mod:`rerank.order`).
    An empty query, an empty document list, a document that is not a string, ids or metadata
    of the wrong length, or a duplicate id is an error. ``min_relevance`` drops documents whose
    probability of relevance (:func:`relevance_of`) is below it (all of them: an empty list).
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
    given = _caller_inputs(len(documents), ids, metadata)
    passages = [Passage(str(i), text) for i, text in enumerate(documents)]
    [result] = stage([Candidates(Query("query", query), passages, [0.0] * len(passages))])
    if min_relevance is not None and not 0 <= min_relevance <= 1:
        raise ValueError(f"min_relevance is a probability in [0, 1], got {min_relevance!r}")
    probability = relevance_of(stage)
    ranked = []
    for p, s in zip(result.passages, result.scores):
        i = int(p.id)
        if min_relevance is not None and probability(float(s)) < min_relevance:
            continue
        ranked.append(RankedDocument(i, float(s), documents[i], given.ids[i], given.metadata[i]))
    return RankedResults(query, ranked[:top_k] if top_k else ranked)


def relevance_of(stage: Any) -> Callable[[float], float]:
    """How a stage's score becomes a probability of relevance: its calibration
    (:mod:`rerank.relevance`, ``rerank calibrate``) where it has one, else the sigmoid of the
    score (which means something different for every model)."""
    calibration = getattr(stage, "calibration", None)
    if calibration is not None:
        return calibration.probability
    return lambda score: float(1.0 / (1.0 + math.exp(-max(min(score, 700.0), -700.0))))

"""Haystack: ``RerankRanker``, a ranker component (the ``haystack`` extra).

    from rerank.integrations.haystack import RerankRanker
    pipeline.add_component("ranker", RerankRanker(reranker="minilm-l6", top_k=5))
    pipeline.connect("retriever.documents", "ranker.documents")

Each returned document is a copy whose ``score`` is the re-ranker's, best first.

Saved pipelines: ``to_dict`` writes a re-ranker given by name or path as that string, and one
given as a stage object as its TOML (``{"pipeline_toml": ...}``), which ``from_dict`` builds back.
Haystack 3 loads only components from modules it is told to trust:
``Pipeline.loads(text, allowed_modules=["rerank.integrations.haystack"])``.
"""
from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from rerank.extras import missing_extra
from rerank.integrations import check_limits, kept, resolve_reranker, saved_reranker

try:
    from haystack import Document, component
except ImportError as error:
    raise missing_extra("haystack", "the Haystack ranker component", error) from error


@component
class RerankRanker:
    """Re-rank Haystack documents with any engine stage or pipeline (``reranker``: a stage, a
    model for :func:`rerank.load`, or a pipeline ``.toml``); keep the best ``top_k`` (None: all)
    scoring at least ``score_threshold`` (both overridable per run)."""

    def __init__(self, reranker: Any, top_k: int | None = 10, score_threshold: float | None = None) -> None:
        check_limits(top_k, score_threshold)
        self.reranker = reranker
        self.top_k = top_k
        self.score_threshold = score_threshold
        self._stage = resolve_reranker(reranker)

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None,
            score_threshold: float | None = None) -> dict[str, list[Document]]:
        """``{"documents": [...]}`` best first for ``query``."""
        top_k = self.top_k if top_k is None else top_k
        threshold = self.score_threshold if score_threshold is None else score_threshold
        check_limits(top_k, threshold)
        if not documents:
            return {"documents": []}
        results = self._stage.rank(query, [d.content or "" for d in documents])
        return {"documents": [dataclasses.replace(documents[r.index], score=r.score)
                              for r in kept(results, top_k, threshold)]}

    @component.output_types(documents=list[Document])
    async def run_async(self, query: str, documents: list[Document], top_k: int | None = None,
                        score_threshold: float | None = None) -> dict[str, list[Document]]:
        """:meth:`run` in a worker thread (for Haystack's async pipelines)."""
        return await asyncio.to_thread(self.run, query, documents, top_k, score_threshold)

    def to_dict(self) -> dict[str, Any]:
        """Haystack's serialisation (a stage object is written by its config, as rerank TOML)."""
        from haystack import default_to_dict  # optional: the 'haystack' extra

        reranker = self.reranker if isinstance(self.reranker, (str, dict)) else saved_reranker(self._stage)
        return default_to_dict(self, reranker=reranker, top_k=self.top_k, score_threshold=self.score_threshold)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RerankRanker:
        """The component :meth:`to_dict` wrote (Haystack's deserialisation)."""
        from haystack import default_from_dict  # optional: the 'haystack' extra

        return default_from_dict(cls, data)
